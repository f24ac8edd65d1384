//! The channel list, grouped by collapsible categories, and the new-channel dialog.

use egui::RichText;
use securecomm_node::guild::NewChannelKind;

use super::guarded_button;
use super::voice::{VoiceAction, apply_actions, channel_members_ui as voice_members_ui};
use crate::backend::Command;
use crate::state::manage::{channel_tree, perm};
use crate::state::{AppState, View};

enum Action {
    Open(u64),
    Toggle(u64),
    NewIn(Option<u64>),
    Move(u64, bool),
}

fn channel_label(kind: &str, name: &str) -> String {
    match kind {
        "voice" => format!("🔊 {name}"),
        "category" => name.to_uppercase(),
        _ => format!("# {name}"),
    }
}

/// The "Guild settings" and "New channel…" buttons under the guild's name.
pub fn header_buttons(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        if ui.button("Guild settings").clicked() {
            cmds.extend(s.on_open_settings());
        }
        let why = s.lacks(perm("manage_channels"));
        if guarded_button(ui, "New channel…", why.as_deref()) {
            s.on_open_new_channel(None);
        }
    });
}

/// The guild's channels: top-level ones, then each category (click its name to collapse it),
/// text channels selectable, the selected one movable up and down.
pub fn channel_list(ui: &mut egui::Ui, s: &mut AppState, gid: &str, cmds: &mut Vec<Command>) {
    let Some(data) = s.manage.data.get(gid) else {
        flat_list(ui, s, gid, cmds);
        return;
    };
    let manage = s.lacks(perm("manage_channels"));
    let mut actions = Vec::new();
    let mut voice = Vec::new();
    for group in channel_tree(&data.channels) {
        if let Some(cat) = group.category {
            let collapsed = s.manage.collapsed.contains(&cat.id);
            ui.horizontal(|ui| {
                let arrow = if collapsed { "▶" } else { "▼" };
                let r = ui.add(
                    egui::Label::new(
                        RichText::new(format!("{arrow} {}", channel_label(&cat.kind, &cat.name)))
                            .small()
                            .strong(),
                    )
                    .sense(egui::Sense::click()),
                );
                if r.on_hover_text("Collapse or expand").clicked() {
                    actions.push(Action::Toggle(cat.id));
                }
                let r = ui.add_enabled(manage.is_none(), egui::Button::new("+").small());
                let r = match &manage {
                    Some(w) => r.on_disabled_hover_text(w.as_str()),
                    None => r.on_hover_text(format!("New channel in {}", cat.name)),
                };
                if r.clicked() {
                    actions.push(Action::NewIn(Some(cat.id)));
                }
            });
            if collapsed {
                continue;
            }
        }
        for c in group.channels {
            let viewing = matches!(&s.view, View::Channel { guild, channel }
                if guild == gid && *channel == c.id);
            let selected = viewing || (c.kind == "voice" && s.voice.in_channel(gid, c.id));
            let indent = if group.category.is_some() { 10.0 } else { 0.0 };
            ui.horizontal(|ui| {
                ui.add_space(indent);
                let r = ui.selectable_label(
                    selected,
                    crate::app::unread_text(
                        channel_label(&c.kind, &c.name),
                        s.unread_channel(gid, c.id),
                    ),
                );
                let r = if c.topic.is_empty() {
                    r
                } else {
                    r.on_hover_text(&c.topic)
                };
                let r = if c.kind == "voice" {
                    r.on_hover_text("Join voice")
                } else {
                    r
                };
                if r.clicked() && c.kind == "text" {
                    actions.push(Action::Open(c.id));
                }
                if r.clicked() && c.kind == "voice" {
                    voice.push(VoiceAction::Join(c.id));
                }
                if viewing && manage.is_none() {
                    if ui.small_button("⬆").on_hover_text("Move up").clicked() {
                        actions.push(Action::Move(c.id, true));
                    }
                    if ui.small_button("⬇").on_hover_text("Move down").clicked() {
                        actions.push(Action::Move(c.id, false));
                    }
                }
            });
            if c.kind == "voice" {
                voice_members_ui(ui, s, gid, c.id, indent, &mut voice);
            }
        }
    }
    cmds.extend(apply_actions(s, gid, voice));
    for a in actions {
        match a {
            Action::Open(id) => cmds.extend(s.on_select_channel(gid, id)),
            Action::Toggle(id) => s.on_toggle_category(id),
            Action::NewIn(p) => s.on_open_new_channel(p),
            Action::Move(id, up) => cmds.extend(s.on_move_channel(id, up)),
        }
    }
}

/// The list before management data arrived: channels as the node listed them.
fn flat_list(ui: &mut egui::Ui, s: &mut AppState, gid: &str, cmds: &mut Vec<Command>) {
    let mut pick = None;
    let mut voice = Vec::new();
    for c in s.channels.get(gid).map(Vec::as_slice).unwrap_or_default() {
        let selected = matches!(&s.view, View::Channel { guild, channel } if guild == gid && *channel == c.id)
            || (c.kind == "voice" && s.voice.in_channel(gid, c.id));
        let clicked = ui
            .selectable_label(
                selected,
                crate::app::unread_text(
                    channel_label(&c.kind, &c.name),
                    s.unread_channel(gid, c.id),
                ),
            )
            .clicked();
        match c.kind.as_str() {
            "text" if clicked => pick = Some(c.id),
            "voice" => {
                if clicked {
                    voice.push(VoiceAction::Join(c.id));
                }
                voice_members_ui(ui, s, gid, c.id, 0.0, &mut voice);
            }
            _ => {}
        }
    }
    if let Some(c) = pick {
        cmds.extend(s.on_select_channel(gid, c));
    }
    cmds.extend(apply_actions(s, gid, voice));
}

/// The "New channel" window: name, kind, category.
pub fn new_channel_dialog(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    if !s.manage.new_channel.open {
        return;
    }
    let mut open = true;
    let cats: Vec<(u64, String)> = s
        .guild_data()
        .map(|d| {
            channel_tree(&d.channels)
                .iter()
                .filter_map(|g| g.category.map(|c| (c.id, c.name.clone())))
                .collect()
        })
        .unwrap_or_default();
    let why = s.lacks(perm("manage_channels"));
    egui::Window::new("New channel")
        .open(&mut open)
        .collapsible(false)
        .show(ctx, |ui| {
            let f = &mut s.manage.new_channel;
            let l = ui.label("Name of the new channel");
            let r = ui.text_edit_singleline(&mut f.name).labelled_by(l.id);
            ui.horizontal(|ui| {
                ui.radio_value(&mut f.kind, NewChannelKind::Text, "Text");
                ui.radio_value(&mut f.kind, NewChannelKind::Voice, "Voice");
                ui.radio_value(&mut f.kind, NewChannelKind::Category, "Category");
            });
            if f.kind != NewChannelKind::Category {
                let current = f
                    .parent
                    .and_then(|p| cats.iter().find(|(id, _)| *id == p))
                    .map_or("(none)", |(_, n)| n.as_str())
                    .to_owned();
                egui::ComboBox::from_label("In category")
                    .selected_text(current)
                    .show_ui(ui, |ui| {
                        ui.selectable_value(&mut f.parent, None, "(none)");
                        for (id, name) in &cats {
                            ui.selectable_value(&mut f.parent, Some(*id), name);
                        }
                    });
            }
            let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if guarded_button(ui, "Add channel", why.as_deref()) || (enter && why.is_none()) {
                cmds.extend(s.on_add_channel());
            }
        });
    if !open {
        s.manage.new_channel.open = false;
    }
}
