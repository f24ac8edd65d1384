//! The guild settings window: Overview, Roles, Members, Channel settings, Invites and Emoji
//! tabs.
//! Every button the user may not use is disabled and says why on hover.

use egui::RichText;
use securecomm_node::guild::engine::PERMISSION_NAMES;
use securecomm_node::guild::{GuildOverview, OverwriteFor, RoleInfo};

use super::{guarded_button, role_colour};
use crate::backend::{Command, GuildData};
use crate::state::manage::{Expiry, SLOW_MODE_CHOICES, Tab, Tri, USES_CHOICES, perm, perm_label};
use crate::state::{AppState, format_time, short};

/// Draws the window if it is open.
pub fn settings_window(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    if !s.manage.settings.open {
        return;
    }
    let mut open = true;
    egui::Window::new("Guild settings")
        .open(&mut open)
        .default_size([640.0, 700.0])
        .show(ctx, |ui| {
            let Some(data) = s.guild_data().cloned() else {
                ui.spinner();
                ui.label("Loading the guild…");
                return;
            };
            ui.horizontal(|ui| {
                let t = &mut s.manage.settings.tab;
                ui.selectable_value(t, Tab::Overview, "Overview");
                ui.selectable_value(t, Tab::Roles, "Roles");
                ui.selectable_value(t, Tab::Members, "Members");
                ui.selectable_value(t, Tab::Channels, "Channel settings");
                ui.selectable_value(t, Tab::Invites, "Invites");
                ui.selectable_value(t, Tab::Emoji, "Emoji");
            });
            ui.separator();
            egui::ScrollArea::vertical().show(ui, |ui| match s.manage.settings.tab {
                Tab::Overview => overview_tab(ui, s, &data, cmds),
                Tab::Roles => roles_tab(ui, s, &data, cmds),
                Tab::Members => members_tab(ui, s, &data, cmds),
                Tab::Channels => channels_tab(ui, s, &data, cmds),
                Tab::Invites => invites_tab(ui, s, &data, cmds),
                Tab::Emoji => emoji_tab(ui, s, cmds),
            });
        });
    if !open {
        s.manage.settings.open = false;
    }
}

fn overview_tab(ui: &mut egui::Ui, s: &mut AppState, _d: &GuildData, cmds: &mut Vec<Command>) {
    let why = s.lacks(perm("manage_guild"));
    ui.add_enabled_ui(why.is_none(), |ui| {
        let f = &mut s.manage.settings;
        ui.horizontal(|ui| {
            let l = ui.label("Name of this guild");
            ui.text_edit_singleline(&mut f.guild_name).labelled_by(l.id);
        });
        ui.checkbox(
            &mut f.history_visible,
            "New members can read messages sent before they joined",
        );
        ui.label(
            RichText::new(
                "On: newcomers see the conversation so far, but older messages then stay \
                 readable with keys handed to every future member, so they lose forward \
                 secrecy. Off: newcomers start empty, and a key stolen later never opens \
                 what was said before.",
            )
            .weak(),
        );
        ui.label(
            RichText::new(
                "Not in effect yet: this release stores the choice in the guild, but \
                 newcomers always get history only from when they joined, as with Off.",
            )
            .small()
            .color(egui::Color32::from_rgb(230, 180, 60)),
        );
    });
    if guarded_button(ui, "Save overview", why.as_deref()) {
        cmds.extend(s.on_save_overview());
    }
}

fn my_role_ceiling(o: &GuildOverview) -> u16 {
    if o.i_am_owner {
        u16::MAX
    } else {
        u16::try_from(o.my_rank.saturating_sub(1)).unwrap_or(u16::MAX)
    }
}

fn roles_tab(ui: &mut egui::Ui, s: &mut AppState, d: &GuildData, cmds: &mut Vec<Command>) {
    let manage_roles = s.lacks(perm("manage_roles"));
    ui.horizontal(|ui| {
        let l = ui.label("New role name");
        ui.add_enabled(
            manage_roles.is_none(),
            egui::TextEdit::singleline(&mut s.manage.settings.new_role_name),
        )
        .labelled_by(l.id);
        if guarded_button(ui, "Create role", manage_roles.as_deref()) {
            cmds.extend(s.on_create_role());
        }
    });
    ui.separator();
    ui.columns(2, |cols| {
        let [left, right] = cols else { return };
        left.label(RichText::new("Roles, highest first").small().weak());
        let mut pick = None;
        for r in &d.roles {
            let mut text = RichText::new(format!("{} ({})", r.name, r.members));
            if let Some(c) = role_colour(r.colour) {
                text = text.color(c);
            }
            let selected = s.manage.settings.role.role == Some(r.id);
            if left
                .selectable_label(selected, text)
                .on_hover_text(format!("position {}", r.position))
                .clicked()
            {
                pick = Some(r.id);
            }
        }
        if let Some(id) = pick {
            s.on_select_role(id);
        }
        let Some(role) = s
            .manage
            .settings
            .role
            .role
            .and_then(|id| d.roles.iter().find(|r| r.id == id))
            .cloned()
        else {
            right.label("Pick a role to edit it.");
            return;
        };
        role_editor(right, s, d, &role, cmds);
    });
}

fn role_editor(
    ui: &mut egui::Ui,
    s: &mut AppState,
    d: &GuildData,
    role: &RoleInfo,
    cmds: &mut Vec<Command>,
) {
    let why = s.cannot_manage_role(role);
    let everyone = role.id == 0;
    let mine = d.overview.my_permissions;
    let ceiling = my_role_ceiling(&d.overview);
    ui.horizontal(|ui| {
        if guarded_button(ui, "Save role", why.as_deref()) {
            cmds.extend(s.on_save_role());
        }
        let del_why = if everyone {
            Some("@everyone cannot be deleted".to_owned())
        } else {
            why.clone()
        };
        if guarded_button(ui, "Delete role", del_why.as_deref()) {
            cmds.extend(s.on_delete_role());
        }
    });
    ui.add_enabled_ui(why.is_none(), |ui| {
        let f = &mut s.manage.settings.role;
        ui.horizontal(|ui| {
            let l = ui.label("Role name");
            ui.add_enabled(!everyone, egui::TextEdit::singleline(&mut f.name))
                .labelled_by(l.id);
        });
        ui.horizontal(|ui| {
            ui.label("Colour");
            ui.color_edit_button_srgb(&mut f.colour);
            if ui.small_button("No colour").clicked() {
                f.colour = [0, 0, 0];
            }
        });
        if !everyone {
            ui.horizontal(|ui| {
                let l = ui.label("Position");
                ui.add(egui::DragValue::new(&mut f.position).range(1..=ceiling.max(1)))
                    .labelled_by(l.id)
                    .on_hover_text("Higher outranks lower; you can place it below your own role");
            });
        }
        ui.checkbox(&mut f.hoisted, "Show members separately");
        ui.checkbox(&mut f.mentionable, "Anyone can mention this role");
        ui.label(RichText::new("Permissions").strong());
        for (name, p) in PERMISSION_NAMES {
            let bit = p.bits();
            let mut on = f.permissions & bit != 0;
            let holds = mine & bit == bit;
            let r = ui.add_enabled(holds || on, egui::Checkbox::new(&mut on, perm_label(name)));
            let r = r.on_disabled_hover_text("You can only grant permissions you have");
            if r.changed() {
                if on {
                    f.permissions |= bit;
                } else {
                    f.permissions &= !bit;
                }
            }
        }
    });
}

fn members_tab(ui: &mut egui::Ui, s: &mut AppState, d: &GuildData, cmds: &mut Vec<Command>) {
    let mut pick = None;
    for m in &d.members {
        let name = if m.nickname.is_empty() {
            short(&m.user)
        } else {
            m.nickname.clone()
        };
        let selected = s.manage.settings.member.as_deref() == Some(m.user.as_str());
        if ui
            .selectable_label(selected, format!("{name} ({})", short(&m.user)))
            .clicked()
        {
            pick = Some(m.user.clone());
        }
    }
    if let Some(u) = pick {
        s.manage.settings.member = Some(u);
    }
    ui.separator();
    if let Some(m) = s
        .manage
        .settings
        .member
        .as_ref()
        .and_then(|u| d.members.iter().find(|m| m.user == *u))
        .cloned()
    {
        ui.label(RichText::new("Roles held").strong());
        for r in d.roles.iter().filter(|r| r.id != 0) {
            let held = m.roles.contains(&r.id);
            let mut on = held;
            let why = s.cannot_manage_role(r);
            let resp = ui.add_enabled(why.is_none(), egui::Checkbox::new(&mut on, &r.name));
            let _ = resp.on_disabled_hover_text(why.as_deref().unwrap_or_default());
            if on != held {
                cmds.extend(s.on_set_member_role(&m.user, r.id, on));
            }
        }
        ui.separator();
        let kick_why = s.cannot_act_on(&m, perm("kick_members"));
        let ban_why = s.cannot_act_on(&m, perm("ban_members"));
        if guarded_button(ui, "Kick", kick_why.as_deref()) {
            cmds.extend(s.on_kick(&m.user));
        }
        let mute_why = s.cannot_act_on(&m, perm("mute_members"));
        let (mute_label, mute) = if m.voice_muted {
            ("Server unmute", false)
        } else {
            ("Server mute", true)
        };
        if guarded_button(ui, mute_label, mute_why.as_deref()) {
            cmds.extend(s.on_server_mute(&m.user, mute));
        }
        ui.horizontal(|ui| {
            let l = ui.label("Ban reason");
            ui.text_edit_singleline(&mut s.manage.settings.ban_reason)
                .labelled_by(l.id);
            if guarded_button(ui, "Ban", ban_why.as_deref()) {
                cmds.extend(s.on_ban(&m.user));
            }
        });
    } else {
        ui.label("Pick a member to manage their roles, mute, kick or ban them.");
    }
    ui.separator();
    ui.label(RichText::new(format!("Bans ({})", d.bans.len())).strong());
    let unban_why = s.lacks(perm("ban_members"));
    for b in &d.bans {
        ui.horizontal(|ui| {
            let reason = if b.reason.is_empty() {
                "no reason given"
            } else {
                b.reason.as_str()
            };
            ui.label(format!("{} — {reason}", short(&b.user)))
                .on_hover_text(format!("user {}\nbanned by {}", b.user, b.by));
            if guarded_button(ui, "Unban", unban_why.as_deref()) {
                cmds.extend(s.on_unban(&b.user));
            }
        });
    }
}

fn target_name(d: &GuildData, t: &OverwriteFor) -> String {
    match t {
        OverwriteFor::Role(r) => d
            .roles
            .iter()
            .find(|x| x.id == *r)
            .map_or_else(|| format!("role {r}"), |x| format!("role {}", x.name)),
        OverwriteFor::Member(u) => d
            .members
            .iter()
            .find(|m| m.user == *u)
            .map_or_else(|| short(u), |m| format!("member {}", m.nickname)),
    }
}

fn channels_tab(ui: &mut egui::Ui, s: &mut AppState, d: &GuildData, cmds: &mut Vec<Command>) {
    let current = s.manage.settings.channel.channel;
    let label = current
        .and_then(|id| d.channels.iter().find(|c| c.id == id))
        .map_or("(pick one)".to_owned(), |c| c.name.clone());
    let mut pick = None;
    egui::ComboBox::from_label("Channel to edit")
        .selected_text(label)
        .show_ui(ui, |ui| {
            for c in &d.channels {
                if ui
                    .selectable_label(current == Some(c.id), format!("{} ({})", c.name, c.kind))
                    .clicked()
                {
                    pick = Some(c.id);
                }
            }
        });
    if let Some(id) = pick {
        s.on_select_settings_channel(id);
    }
    let Some(ch) = current.and_then(|id| d.channels.iter().find(|c| c.id == id).cloned()) else {
        return;
    };
    let here = ch.my_permissions;
    let mc = perm("manage_channels");
    let why = (here & mc != mc).then(|| "You need Manage Channels in this channel".to_owned());
    ui.add_enabled_ui(why.is_none(), |ui| {
        let f = &mut s.manage.settings.channel;
        ui.horizontal(|ui| {
            let l = ui.label("Rename to");
            ui.text_edit_singleline(&mut f.name).labelled_by(l.id);
        });
        if ch.kind == "text" {
            ui.horizontal(|ui| {
                let l = ui.label("Topic");
                ui.text_edit_singleline(&mut f.topic).labelled_by(l.id);
            });
            egui::ComboBox::from_label("Slow mode")
                .selected_text(slow_label(f.slow_mode_secs))
                .show_ui(ui, |ui| {
                    for secs in SLOW_MODE_CHOICES {
                        ui.selectable_value(&mut f.slow_mode_secs, secs, slow_label(secs));
                    }
                });
            egui::ComboBox::from_label("Disappearing messages")
                .selected_text(slow_label(f.disappearing_secs))
                .show_ui(ui, |ui| {
                    for secs in DISAPPEARING_CHOICES {
                        ui.selectable_value(&mut f.disappearing_secs, secs, slow_label(secs));
                    }
                });
            ui.label(
                egui::RichText::new(
                    "New messages here are erased from every member's device after this time \
                     (the guild's default, if shorter, still applies).",
                )
                .small()
                .weak(),
            );
        }
    });
    ui.horizontal(|ui| {
        if guarded_button(ui, "Save channel", why.as_deref()) {
            cmds.extend(s.on_save_channel());
        }
        if guarded_button(ui, "Move up", why.as_deref()) {
            cmds.extend(s.on_move_channel(ch.id, true));
        }
        if guarded_button(ui, "Move down", why.as_deref()) {
            cmds.extend(s.on_move_channel(ch.id, false));
        }
    });
    ui.separator();
    ui.label(RichText::new("Permission overwrites").strong());
    for o in &ch.overwrites {
        ui.label(format!(
            "{}: allows {}, denies {}",
            target_name(d, &o.target),
            names(o.allow),
            names(o.deny)
        ));
    }
    let mr = perm("manage_roles");
    let ow_why = why
        .clone()
        .or_else(|| (here & mr != mr).then(|| "You need Manage Roles in this channel".to_owned()));
    let target = s.manage.settings.channel.target.clone();
    let mut pick = None;
    egui::ComboBox::from_label("Overwrite for")
        .selected_text(
            target
                .as_ref()
                .map_or("(pick a role or member)".to_owned(), |t| target_name(d, t)),
        )
        .show_ui(ui, |ui| {
            for r in &d.roles {
                let t = OverwriteFor::Role(r.id);
                if ui
                    .selectable_label(target.as_ref() == Some(&t), format!("role {}", r.name))
                    .clicked()
                {
                    pick = Some(t);
                }
            }
            for m in &d.members {
                let t = OverwriteFor::Member(m.user.clone());
                if ui
                    .selectable_label(
                        target.as_ref() == Some(&t),
                        format!("member {}", m.nickname),
                    )
                    .clicked()
                {
                    pick = Some(t);
                }
            }
        });
    if let Some(t) = pick {
        s.on_select_overwrite_target(t);
    }
    if target.is_none() {
        return;
    }
    ui.add_enabled_ui(ow_why.is_none(), |ui| {
        let f = &mut s.manage.settings.channel;
        egui::Grid::new("overwrite_grid")
            .striped(true)
            .show(ui, |ui| {
                for (name, p) in PERMISSION_NAMES {
                    let bit = p.bits();
                    ui.label(perm_label(name));
                    let mut t = f.tri(bit);
                    let before = t;
                    ui.radio_value(&mut t, Tri::Allow, "Allow");
                    ui.radio_value(&mut t, Tri::Neutral, "Inherit");
                    ui.radio_value(&mut t, Tri::Deny, "Deny");
                    if t != before {
                        f.set_tri(bit, t);
                    }
                    ui.end_row();
                }
            });
    });
    if guarded_button(ui, "Save overwrite", ow_why.as_deref()) {
        cmds.extend(s.on_save_overwrite());
    }
}

/// Channel disappearing-message timers offered (seconds; 0: off), as Signal's presets.
const DISAPPEARING_CHOICES: [u32; 7] = [0, 30, 300, 3600, 8 * 3600, 86_400, 7 * 86_400];

fn slow_label(secs: u32) -> String {
    match secs {
        0 => "Off".into(),
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 || s % 86_400 != 0 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

fn names(bits: u64) -> String {
    let v: Vec<String> = PERMISSION_NAMES
        .iter()
        .filter(|(_, p)| bits & p.bits() != 0)
        .map(|(n, _)| perm_label(n))
        .collect();
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}

fn uses_label(n: u32) -> String {
    if n == 0 {
        "No limit".into()
    } else {
        n.to_string()
    }
}

fn emoji_tab(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    let why = s.lacks(perm("manage_guild"));
    ui.label(
        RichText::new(
            "Members write a custom emoji as :name: and react with it. Its image (PNG, JPEG, \
             GIF or WebP, made into a 128 x 128 PNG without the original's metadata) is \
             encrypted like any file and fetched by every member ahead of time.",
        )
        .weak(),
    );
    ui.add_enabled_ui(why.is_none(), |ui| {
        let f = &mut s.emoji.upload;
        super::labelled(
            ui,
            "Image file",
            egui::TextEdit::singleline(&mut f.path).hint_text("/path/to/image.png"),
        );
        super::labelled(
            ui,
            "Emoji name",
            egui::TextEdit::singleline(&mut f.name).hint_text("letters, digits, _"),
        );
    });
    if guarded_button(ui, "Upload emoji", why.as_deref()) {
        cmds.extend(s.on_upload_emoji());
    }
    ui.separator();
    let guild = s.guild.clone().unwrap_or_default();
    let list = s.current_emojis().to_vec();
    if list.is_empty() {
        ui.label(RichText::new("No custom emoji yet.").weak());
    }
    ui.label(format!(
        "{} of {} emoji",
        list.len(),
        securecomm_crdt::schema::MAX_EMOJIS
    ));
    for e in list {
        ui.horizontal(|ui| {
            match s.emoji.texture(&guild, &e.name) {
                Some(t) => {
                    ui.add(egui::Image::new(t).fit_to_exact_size(egui::vec2(32.0, 32.0)));
                }
                None if e.png.is_none() => {
                    ui.spinner()
                        .on_hover_text("Fetching the image from members");
                }
                None => {
                    ui.label("?").on_hover_text("The image did not decode");
                }
            }
            ui.label(format!(":{}:", e.name));
            if guarded_button(ui, &format!("Delete :{}:", e.name), why.as_deref()) {
                cmds.extend(s.on_delete_emoji(e.id));
            }
        });
    }
}

fn invites_tab(ui: &mut egui::Ui, s: &mut AppState, d: &GuildData, cmds: &mut Vec<Command>) {
    let why = s.lacks(perm("create_invite"));
    {
        let f = &mut s.manage.settings;
        egui::ComboBox::from_label("Expire after")
            .selected_text(f.expiry.label())
            .show_ui(ui, |ui| {
                for e in Expiry::ALL {
                    ui.selectable_value(&mut f.expiry, e, e.label());
                }
            });
        egui::ComboBox::from_label("Max uses")
            .selected_text(uses_label(f.uses))
            .show_ui(ui, |ui| {
                for n in USES_CHOICES {
                    ui.selectable_value(&mut f.uses, n, uses_label(n));
                }
            });
    }
    if guarded_button(ui, "Create this invite", why.as_deref()) {
        cmds.extend(s.on_create_invite_with_options());
    }
    ui.separator();
    let me = s.me.as_ref().map(|m| m.user_id.clone()).unwrap_or_default();
    let manage_guild = s.lacks(perm("manage_guild"));
    for inv in &d.invites {
        ui.horizontal(|ui| {
            let uses = if inv.max_uses == 0 {
                format!("{} uses", inv.uses)
            } else {
                format!("{}/{} uses", inv.uses, inv.max_uses)
            };
            let expires = if inv.expires_at == 0 {
                "never expires".to_owned()
            } else {
                format!(
                    "expires {}",
                    format_time(inv.expires_at.saturating_mul(1000))
                )
            };
            let state = if inv.revoked {
                " · revoked"
            } else if !inv.usable {
                " · used up or expired"
            } else {
                ""
            };
            ui.label(format!("{} · {uses} · {expires}{state}", short(&inv.id)));
            if let Some(code) = &inv.code
                && ui
                    .small_button("Copy code")
                    .on_hover_text(code.as_str())
                    .clicked()
            {
                ui.ctx().copy_text(code.clone());
            }
            let revoke_why = if inv.revoked {
                Some("Already revoked".to_owned())
            } else if inv.creator == me {
                None
            } else {
                manage_guild.clone()
            };
            if guarded_button(ui, "Revoke", revoke_why.as_deref()) {
                cmds.extend(s.on_revoke_invite(&inv.id));
            }
        });
    }
    if d.invites.is_empty() {
        ui.label("No invites yet.");
    }
}
