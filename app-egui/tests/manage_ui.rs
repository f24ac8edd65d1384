//! Click-and-type tests of guild management in the real app (real nodes on loopback, headless
//! egui via kittest): categories and channels in them, the roles editor and granting a role to
//! a second instance's user, kicking from the members tab, and invites with expiry and max
//! uses. Each asserts on the state the node sent back, not only on pixels.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use securecomm_app::App;
use securecomm_app::state::manage::Tab;
use securecomm_app::state::{AppState, View};

fn harness(dir: &Path) -> Harness<'static, App> {
    harness_sized(dir, 1400.0, 1000.0)
}

/// Creates a guild and waits for its management data; returns its id.
fn create_guild(h: &mut Harness<'_, App>, name: &str) -> String {
    type_into(h, "Guild name", name);
    h.get_by_label("Create guild").click();
    wait_for(h, "the guild and its data", |s| {
        s.guilds.iter().any(|g| g.name == name) && s.guild_data().is_some()
    });
    h.state().state.guild.clone().unwrap()
}

fn open_settings(h: &mut Harness<'_, App>, tab: &str) {
    click(h, "Guild settings");
    wait_for(h, "the settings window", |s| {
        s.manage.settings.open && s.guild_data().is_some()
    });
    click(h, tab);
}

#[test]
fn create_a_category_and_a_channel_in_it_then_collapse_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    create_identity(&mut h, "Cat", "pass");
    let guild = create_guild(&mut h, "Orgs");

    click(&mut h, "New channel…");
    type_into(&mut h, "Name of the new channel", "Projects");
    click(&mut h, "Category");
    click(&mut h, "Add channel");
    wait_for(&mut h, "the category", |s| {
        s.guild_data().is_some_and(|d| {
            d.channels
                .iter()
                .any(|c| c.name == "Projects" && c.kind == "category")
        })
    });
    let cat = h
        .state()
        .state
        .guild_data()
        .unwrap()
        .channels
        .iter()
        .find(|c| c.name == "Projects")
        .unwrap()
        .id;
    assert!(!h.state().state.manage.new_channel.open, "dialog closed");
    assert!(
        h.query_by_label("▼ PROJECTS").is_some(),
        "category header drawn"
    );

    // The category's "+" opens the dialog with the category chosen.
    click(&mut h, "+");
    assert_eq!(h.state().state.manage.new_channel.parent, Some(cat));
    type_into(&mut h, "Name of the new channel", "rust");
    click(&mut h, "Add channel");
    wait_for(&mut h, "the channel in the category", |s| {
        s.guild_data().is_some_and(|d| {
            d.channels
                .iter()
                .any(|c| c.name == "rust" && c.kind == "text" && c.parent == Some(cat))
        })
    });
    wait_for(&mut h, "the new channel to open", |s| {
        matches!(&s.view, View::Channel { guild: g, channel }
            if *g == guild && s.guild_data().unwrap().channels.iter().any(|c| c.id == *channel && c.name == "rust"))
    });
    // In the list and as the message view's title.
    assert_eq!(h.query_all_by_label("# rust").count(), 2);

    // A voice channel at the top level.
    click(&mut h, "New channel…");
    type_into(&mut h, "Name of the new channel", "hangout");
    click(&mut h, "Voice");
    click(&mut h, "Add channel");
    wait_for(&mut h, "the voice channel", |s| {
        s.guild_data().is_some_and(|d| {
            d.channels
                .iter()
                .any(|c| c.name == "hangout" && c.kind == "voice" && c.parent.is_none())
        })
    });
    settle(&mut h);
    assert!(h.query_by_label("🔊 hangout").is_some());

    // Collapsing hides the category's channels.
    click(&mut h, "▼ PROJECTS");
    assert!(h.state().state.manage.collapsed.contains(&cat));
    assert_eq!(
        h.query_all_by_label("# rust").count(),
        1,
        "only the title is left"
    );
    assert!(h.query_by_label("▶ PROJECTS").is_some());
    assert!(
        h.state().state.errors.is_empty(),
        "{:?}",
        h.state().state.errors
    );
}

#[test]
fn create_an_invite_with_expiry_and_max_uses() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    create_identity(&mut h, "Ivy", "pass");
    let _guild = create_guild(&mut h, "Party");
    open_settings(&mut h, "Invites");
    assert_eq!(h.state().state.manage.settings.tab, Tab::Invites);

    click(&mut h, "Expire after");
    click(&mut h, "1 day");
    click(&mut h, "Max uses");
    click(&mut h, "10");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    click(&mut h, "Create this invite");
    wait_for(&mut h, "the invite in the node's list", |s| {
        s.guild_data().is_some_and(|d| !d.invites.is_empty())
    });
    let inv = h.state().state.guild_data().unwrap().invites[0].clone();
    assert_eq!(inv.max_uses, 10);
    assert_eq!(inv.uses, 0);
    assert!(
        inv.expires_at >= before + 86_400 && inv.expires_at <= before + 86_400 + 120,
        "expires_at {} vs now {before}",
        inv.expires_at
    );
    assert!(inv.usable && !inv.revoked);
    assert!(inv.code.as_deref().is_some_and(|c| c.starts_with("sc1")));
    settle(&mut h);
    assert!(h.query_by_label_contains("0/10 uses").is_some());
    assert!(h.query_by_label("Copy code").is_some());

    click(&mut h, "Revoke");
    wait_for(&mut h, "the revocation", |s| {
        s.guild_data()
            .is_some_and(|d| d.invites.first().is_some_and(|i| i.revoked))
    });
    assert!(
        h.state().state.errors.is_empty(),
        "{:?}",
        h.state().state.errors
    );
}

#[test]
fn create_a_role_grant_it_to_a_second_instance_then_kick_them() {
    let (_dir_a, _dir_b, mut a, mut b) = ann_and_ben(harness);
    let guild = create_guild(&mut a, "Club");
    a.get_by_label("Create invite").click();
    wait_for(&mut a, "the invite", |s| s.invites.contains_key(&guild));
    let code = a.state().state.invites[&guild].clone();
    type_into(&mut b, "Invite code", &code);
    b.get_by_label("Join guild").click();
    let g = guild.clone();
    wait_all(&mut [&mut b, &mut a], "Ben to join", move |s| {
        s.guild.as_deref() == Some(g.as_str()) && s.joining.is_empty()
    });
    let ben = b.state().state.me.as_ref().unwrap().user_id.clone();
    let ben2 = ben.clone();
    wait_all(&mut [&mut a, &mut b], "Ann to list Ben", move |s| {
        s.guild_data()
            .is_some_and(|d| d.members.iter().any(|m| m.user == ben2))
    });

    // Ann creates a role in the Roles tab.
    open_settings(&mut a, "Roles");
    type_into(&mut a, "New role name", "Helpers");
    click(&mut a, "Create role");
    wait_all(&mut [&mut a, &mut b], "the role", |s| {
        s.guild_data()
            .is_some_and(|d| d.roles.iter().any(|r| r.name == "Helpers"))
    });
    let role = a
        .state()
        .state
        .guild_data()
        .unwrap()
        .roles
        .iter()
        .find(|r| r.name == "Helpers")
        .unwrap()
        .clone();
    assert!(role.position >= 1);
    // Edit it: hoisted, with a permission.
    a.get_by_label_contains("Helpers (").click();
    settle(&mut a);
    assert_eq!(a.state().state.manage.settings.role.role, Some(role.id));
    click(&mut a, "Show members separately");
    click(&mut a, "Kick Members");
    click(&mut a, "Save role");
    let rid = role.id;
    wait_all(&mut [&mut a, &mut b], "the edited role", move |s| {
        s.guild_data().is_some_and(|d| {
            d.roles.iter().any(|r| {
                r.id == rid
                    && r.hoisted
                    && r.permissions & securecomm_app::state::manage::perm("kick_members") != 0
            })
        })
    });

    // Ann grants it to Ben in the Members tab.
    click(&mut a, "Members");
    a.get_by_label_contains("Ben (").click();
    settle(&mut a);
    click(&mut a, "Helpers");
    let ben3 = ben.clone();
    wait_all(
        &mut [&mut b, &mut a],
        "Ben's own instance to show his role",
        move |s| {
            s.guild_data()
                .is_some_and(|d| d.members.iter().any(|m| m.user == ben3 && m.roles == [rid]))
        },
    );
    // Ben's member list groups him under the hoisted role.
    settle(&mut b);
    assert!(b.query_by_label_contains("HELPERS — 1").is_some());
    // Ben may not edit roles: the editor's buttons are disabled for him.
    open_settings(&mut b, "Roles");
    b.get_by_label_contains("Helpers (").click();
    settle(&mut b);
    assert!(b.get_by_label("Save role").accesskit_node().is_disabled());

    // Ann kicks Ben.
    let ben4 = ben.clone();
    wait_all(&mut [&mut a, &mut b], "Ann to see Ben's role", move |s| {
        s.guild_data()
            .is_some_and(|d| d.members.iter().any(|m| m.user == ben4 && m.roles == [rid]))
    });
    click(&mut a, "Kick");
    let ben5 = ben.clone();
    wait_all(&mut [&mut a, &mut b], "Ben to be gone", move |s| {
        s.guild_data()
            .is_some_and(|d| d.members.iter().all(|m| m.user != ben5))
    });
    assert!(
        a.state().state.errors.is_empty(),
        "{:?}",
        a.state().state.errors
    );
}

fn top_level_order(s: &AppState) -> Vec<String> {
    s.guild_data()
        .map(|d| {
            securecomm_app::state::manage::channel_tree(&d.channels)[0]
                .channels
                .iter()
                .map(|c| c.name.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn edit_a_channel_topic_slow_mode_order_and_overwrite() {
    use securecomm_app::state::manage::perm;
    use securecomm_node::guild::OverwriteFor;
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    create_identity(&mut h, "Ed", "pass");
    let _guild = create_guild(&mut h, "Chan");
    type_into(&mut h, "Channel name", "random");
    click(&mut h, "Create channel");
    wait_for(&mut h, "two channels", |s| top_level_order(s).len() == 2);
    let before = top_level_order(&h.state().state);

    open_settings(&mut h, "Channel settings");
    click(&mut h, "Channel to edit");
    click(&mut h, "general (text)");
    type_into(&mut h, "Topic", "welcome");
    click(&mut h, "Slow mode");
    click(&mut h, "30 s");
    click(&mut h, "Disappearing messages");
    click(&mut h, "1 d");
    click(&mut h, "Save channel");
    wait_for(&mut h, "the edited channel", |s| {
        s.guild_data().is_some_and(|d| {
            d.channels.iter().any(|c| {
                c.name == "general"
                    && c.topic == "welcome"
                    && c.slow_mode_secs == 30
                    && c.disappearing_secs == 86_400
            })
        })
    });

    // Move general past random (whichever way that is).
    let general_first = before[0] == "general";
    click(
        &mut h,
        if general_first {
            "Move down"
        } else {
            "Move up"
        },
    );
    let expected: Vec<String> = before.iter().rev().cloned().collect();
    wait_for(&mut h, "the new order", |s| top_level_order(s) == expected);

    // Deny @everyone sending messages in general.
    click(&mut h, "Overwrite for");
    click(&mut h, "role @everyone");
    let send_index = securecomm_node::guild::engine::PERMISSION_NAMES
        .iter()
        .position(|(n, _)| *n == "send_messages")
        .unwrap();
    h.get_all_by_label("Deny")
        .nth(send_index)
        .unwrap()
        .scroll_to_me();
    settle(&mut h);
    h.get_all_by_label("Deny").nth(send_index).unwrap().click();
    settle(&mut h);
    assert_eq!(
        h.state().state.manage.settings.channel.deny,
        perm("send_messages")
    );
    click(&mut h, "Save overwrite");
    wait_for(&mut h, "the overwrite", |s| {
        s.guild_data().is_some_and(|d| {
            d.channels.iter().any(|c| {
                c.name == "general"
                    && c.overwrites.iter().any(|o| {
                        o.target == OverwriteFor::Role(0)
                            && o.deny == perm("send_messages")
                            && o.allow == 0
                    })
            })
        })
    });
    assert!(
        h.state().state.errors.is_empty(),
        "{:?}",
        h.state().state.errors
    );
}
