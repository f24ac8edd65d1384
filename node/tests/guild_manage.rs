//! Guild management through `GuildService` in one process (real nodes on loopback): categories,
//! channel edits and ordering, overwrites, the role editor, settings, invites, bans, and the
//! crdt's refusals coming back as clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{guild_of, start, until};
use securecomm_node::guild::engine::PERMISSION_NAMES;
use securecomm_node::guild::{ChannelEdit, NewChannelKind, OverwriteFor, RoleEdit, SettingsEdit};
use tokio::time::sleep;

fn bit(name: &str) -> u64 {
    PERMISSION_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| p.bits())
        .unwrap()
}

/// Retries a local change while key agreement settles (a fresh guild is not keyed at once).
macro_rules! settled {
    ($e:expr) => {{
        let mut out = None;
        for _ in 0..300 {
            match $e {
                Ok(v) => {
                    out = Some(v);
                    break;
                }
                Err(e) if e.to_string().contains("try again") => {
                    sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        out.expect("never settled")
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_manages_categories_channels_roles_settings_and_invites() {
    let a = start("alice").await;
    let g = a.guilds.create_guild("Workshop").await.unwrap();
    let gid = g["id"].as_str().unwrap().to_owned();
    let s = &a.guilds;

    // Categories and channels in them, positions appended.
    let cat = settled!(
        s.create_channel_in(&gid, "Projects", NewChannelKind::Category, None)
            .await
    );
    assert_eq!(cat.kind, "category");
    let c1 = s
        .create_channel_in(&gid, "#rust", NewChannelKind::Text, Some(cat.id))
        .await
        .unwrap();
    let c2 = s
        .create_channel_in(&gid, "pairing", NewChannelKind::Voice, Some(cat.id))
        .await
        .unwrap();
    assert_eq!(
        (c1.name.as_str(), c1.parent, c1.position),
        ("rust", Some(cat.id), 0)
    );
    assert_eq!((c2.kind.as_str(), c2.position), ("voice", 1));
    let err = s
        .create_channel_in(&gid, "nested", NewChannelKind::Category, Some(cat.id))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("category"), "{err}");

    // Edit: name, topic, slow mode; out-of-range slow mode refused.
    let e = s
        .edit_channel(
            &gid,
            c1.id,
            ChannelEdit {
                name: Some("rustaceans".into()),
                topic: Some("crabs only".into()),
                slow_mode_secs: Some(30),
                disappearing_secs: None,
                parent: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (e.name.as_str(), e.topic.as_str(), e.slow_mode_secs),
        ("rustaceans", "crabs only", 30)
    );
    assert!(
        s.edit_channel(
            &gid,
            c1.id,
            ChannelEdit {
                slow_mode_secs: Some(999_999),
                ..ChannelEdit::default()
            }
        )
        .await
        .is_err()
    );

    // Reorder: voice channel up, then it is first; moving the first up again is a no-op.
    s.move_channel(&gid, c2.id, true).await.unwrap();
    let order = |list: &[securecomm_node::guild::ChannelDetail]| {
        let mut v: Vec<(u16, String)> = list
            .iter()
            .filter(|c| c.parent == Some(cat.id))
            .map(|c| (c.position, c.name.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect::<Vec<_>>()
    };
    assert_eq!(
        order(&s.channel_details(&gid).unwrap()),
        ["pairing", "rustaceans"]
    );
    s.move_channel(&gid, c2.id, true).await.unwrap();
    assert_eq!(
        order(&s.channel_details(&gid).unwrap()),
        ["pairing", "rustaceans"]
    );
    s.move_channel(&gid, c2.id, false).await.unwrap();
    assert_eq!(
        order(&s.channel_details(&gid).unwrap()),
        ["rustaceans", "pairing"]
    );

    // Roles: create, edit every field, list order, delete.
    let mod_role = s
        .create_role_with(
            &gid,
            RoleEdit {
                name: Some("Moderator".into()),
                colour: Some(0x3498db),
                permissions: Some(bit("kick_members") | bit("manage_messages")),
                hoisted: Some(true),
                ..RoleEdit::default()
            },
        )
        .await
        .unwrap();
    assert!(mod_role.hoisted && mod_role.colour == 0x3498db && mod_role.position >= 1);
    let helper = s
        .create_role_with(
            &gid,
            RoleEdit {
                name: Some("Helper".into()),
                position: Some(1),
                ..RoleEdit::default()
            },
        )
        .await
        .unwrap();
    let edited = s
        .edit_role(
            &gid,
            mod_role.id,
            RoleEdit {
                name: Some("Mods".into()),
                colour: Some(0xe74c3c),
                permissions: Some(bit("ban_members")),
                position: Some(40),
                hoisted: Some(false),
                mentionable: Some(true),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (
            edited.name.as_str(),
            edited.colour,
            edited.permissions,
            edited.position,
            edited.hoisted,
            edited.mentionable
        ),
        ("Mods", 0xe74c3c, bit("ban_members"), 40, false, true)
    );
    let roles = s.list_roles(&gid).unwrap();
    let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["Mods", "Helper", "@everyone"], "highest first");
    let err = s
        .edit_role(
            &gid,
            helper.id,
            RoleEdit {
                position: Some(0),
                ..RoleEdit::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reserved for @everyone"), "{err}");
    s.delete_role(&gid, helper.id).await.unwrap();
    assert_eq!(s.list_roles(&gid).unwrap().len(), 2);

    // Overwrites: deny @everyone sending in the channel, allow the role; remove one.
    let send = bit("send_messages");
    s.set_overwrite(&gid, c1.id, OverwriteFor::Role(0), 0, send)
        .await
        .unwrap();
    let d = s
        .set_overwrite(&gid, c1.id, OverwriteFor::Role(mod_role.id), send, 0)
        .await
        .unwrap();
    assert_eq!(d.overwrites.len(), 2);
    assert!(
        d.overwrites
            .iter()
            .any(|o| o.target == OverwriteFor::Role(0) && o.deny == send && o.allow == 0)
    );
    let d = s
        .set_overwrite(&gid, c1.id, OverwriteFor::Member(a.user.clone()), send, 0)
        .await
        .unwrap();
    assert_eq!(d.overwrites.len(), 3);
    let d = s
        .set_overwrite(&gid, c1.id, OverwriteFor::Role(mod_role.id), 0, 0)
        .await
        .unwrap();
    assert_eq!(d.overwrites.len(), 2, "neutral everywhere removes it");
    assert!(
        s.set_overwrite(&gid, c1.id, OverwriteFor::Role(0), send, send)
            .await
            .is_err(),
        "allow and deny overlap"
    );

    // Settings.
    let o = s.guild_overview(&gid).unwrap();
    assert!(o.i_am_owner && !o.history_visible_to_new_members);
    let o = s
        .update_settings(
            &gid,
            SettingsEdit {
                name: Some("Workshop 2".into()),
                history_visible_to_new_members: Some(true),
                max_upload_bytes: Some(8 << 20),
            },
        )
        .await
        .unwrap();
    assert_eq!(o.name, "Workshop 2");
    assert!(o.history_visible_to_new_members);
    assert_eq!(o.max_upload_bytes, 8 << 20);

    // Invites: listed with expiry, max uses and their code; revoked.
    let inv = s.create_invite(&gid, Some(3600), 5).await.unwrap();
    let list = s.list_invites(&gid).await.unwrap();
    assert_eq!(list.len(), 1);
    let i = &list[0];
    assert_eq!(
        (i.max_uses, i.uses, i.revoked, i.usable),
        (5, 0, false, true)
    );
    assert_eq!(i.expires_at, inv["expires_at"].as_u64().unwrap());
    assert!(i.code.as_deref().is_some_and(|c| c.starts_with("sc1")));
    s.revoke_invite(&gid, &i.id).await.unwrap();
    let list = s.list_invites(&gid).await.unwrap();
    assert!(list[0].revoked && !list[0].usable);

    // Deleting a category moves its channels to the top level.
    s.delete_channel(&gid, cat.id).await.unwrap();
    let all = s.channel_details(&gid).unwrap();
    assert!(all.iter().all(|c| c.id != cat.id && c.parent.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_refusals_revoke_kick_ban_and_unban() {
    let a = start("alice").await;
    let b = start("bob").await;
    let gid = guild_of("Club", &a, &[&b]).await;

    let role = a
        .guilds
        .create_role_with(
            &gid,
            RoleEdit {
                name: Some("Greeter".into()),
                permissions: Some(bit("create_invite")),
                ..RoleEdit::default()
            },
        )
        .await
        .unwrap();
    a.guilds
        .grant_role_id(&gid, &b.user, role.id)
        .await
        .unwrap();
    until("Bob sees his role", 60, || {
        b.guilds
            .member_list(&gid)
            .unwrap()
            .iter()
            .any(|m| m.user == b.user && m.roles == [role.id])
            .then_some(())
    })
    .await;

    // Bob lacks Manage Roles: editing, creating and granting are refused, clearly.
    let err = b
        .guilds
        .edit_role(
            &gid,
            role.id,
            RoleEdit {
                name: Some("Boss".into()),
                ..RoleEdit::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "not permitted: you need the Manage Roles permission for this"
    );
    let err = b
        .guilds
        .create_role_with(
            &gid,
            RoleEdit {
                name: Some("Mine".into()),
                ..RoleEdit::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Manage Roles"), "{err}");
    let err = b.guilds.kick_member(&gid, &a.user).await.unwrap_err();
    assert!(err.to_string().starts_with("not permitted"), "{err}");
    let err = b
        .guilds
        .update_settings(
            &gid,
            SettingsEdit {
                name: Some("Mine now".into()),
                ..SettingsEdit::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Manage Guild"), "{err}");
    assert_eq!(b.guilds.list_roles(&gid).unwrap()[0].name, "Greeter");

    // The owner revokes the role; Bob's view follows.
    a.guilds.revoke_role(&gid, &b.user, role.id).await.unwrap();
    until("Bob loses his role", 60, || {
        b.guilds
            .member_list(&gid)
            .unwrap()
            .iter()
            .any(|m| m.user == b.user && m.roles.is_empty())
            .then_some(())
    })
    .await;

    // A member overwrite for Bob.
    let ch = a.guilds.channel_details(&gid).unwrap()[0].id;
    let d = a
        .guilds
        .set_overwrite(
            &gid,
            ch,
            OverwriteFor::Member(b.user.clone()),
            0,
            bit("send_messages"),
        )
        .await
        .unwrap();
    assert_eq!(d.overwrites[0].target, OverwriteFor::Member(b.user.clone()));

    // Kick, then ban by id with a reason, then unban.
    a.guilds.kick_member(&gid, &b.user).await.unwrap();
    assert!(
        a.guilds
            .member_list(&gid)
            .unwrap()
            .iter()
            .all(|m| m.user != b.user)
    );
    a.guilds.ban_member(&gid, &b.user, "spam").await.unwrap();
    let bans = a.guilds.list_bans(&gid).unwrap();
    assert_eq!(bans.len(), 1);
    assert_eq!(
        (bans[0].user.as_str(), bans[0].reason.as_str()),
        (b.user.as_str(), "spam")
    );
    assert_eq!(bans[0].by, a.user);
    a.guilds.unban(&gid, &b.user).await.unwrap();
    assert!(a.guilds.list_bans(&gid).unwrap().is_empty());
    let err = a.guilds.unban(&gid, &b.user).await.unwrap_err();
    assert!(err.to_string().contains("not banned"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_commands_on_the_control_socket() {
    use securecomm_node::control::{self, Context};
    let a = start("alice").await;
    let g = a.guilds.create_guild("Ctl").await.unwrap();
    let gid = g["id"].as_str().unwrap().to_owned();
    let ctx = Context {
        net: a.net.clone(),
        whoami: serde_json::json!({}),
        guilds: Some(a.guilds.clone()),
        voice: None,
    };
    tokio::spawn(control::serve(control::socket_path(a.dir.path()), ctx));
    let mut c = until_connected(a.dir.path()).await;
    let args = serde_json::json!({ "guild": gid });
    let roles = c.call("role-list", args.clone()).await.unwrap();
    assert_eq!(roles[0]["name"], "@everyone");
    let o = c.call("guild-settings", args.clone()).await.unwrap();
    assert_eq!(o["name"], "Ctl");
    assert_eq!(o["i_am_owner"], true);
    let chans = c.call("channel-details", args.clone()).await.unwrap();
    assert_eq!(chans[0]["name"], "general");
    assert_eq!(
        c.call("ban-list", args.clone()).await.unwrap(),
        serde_json::json!([])
    );
    assert_eq!(
        c.call("invite-list", args).await.unwrap(),
        serde_json::json!([])
    );
    let err = c
        .call("role-delete", serde_json::json!({ "guild": gid }))
        .await
        .unwrap_err();
    assert!(err.contains("role"), "{err}");
    let err = c.call("unban", serde_json::json!({})).await.unwrap_err();
    assert!(err.contains("guild"), "{err}");
}

async fn until_connected(dir: &std::path::Path) -> securecomm_node::control::ControlClient {
    for _ in 0..100 {
        if let Ok(c) = securecomm_node::control::ControlClient::connect(dir).await {
            return c;
        }
        sleep(Duration::from_millis(50)).await;
    }
    panic!("control socket never came up");
}
