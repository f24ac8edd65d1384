//! The member list: grouped by hoisted roles, names in the colour of their top coloured role.

use egui::{Color32, RichText};

use super::role_colour;
use crate::state::manage::member_groups;
use crate::state::{AppState, short};

/// One member: a presence dot (green: a device of theirs is connected to us), the name with
/// its verified badge, and the hover details. Returns whether the name was clicked (which
/// opens the safety-number screen; not for ourselves).
fn member_row(
    ui: &mut egui::Ui,
    s: &AppState,
    user: &str,
    text: RichText,
    mut hover: String,
) -> bool {
    let online = s.online.contains(user);
    let text = if online { text } else { text.weak() };
    let r = ui
        .horizontal(|ui| {
            let dot = if online {
                Color32::from_rgb(70, 190, 110)
            } else {
                Color32::GRAY
            };
            let (rect, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
            ui.painter().circle_filled(rect.center(), 4.0, dot);
            super::verify::member_name_ui(ui, s, user, text)
        })
        .inner;
    hover.push_str(if online { "\nonline" } else { "\noffline" });
    let mine = s.me.as_ref().is_some_and(|me| me.user_id == user);
    if !mine {
        hover.push_str("\nclick: safety number");
    }
    r.on_hover_text(hover).clicked() && !mine
}

/// Draws the selected guild's members; returns the one whose name was clicked (user, name).
pub fn member_list(ui: &mut egui::Ui, s: &AppState) -> Option<(String, String)> {
    let gid = s.guild.as_ref()?;
    let mut clicked = None;
    let Some(data) = s.manage.data.get(gid) else {
        ui.heading("Members");
        ui.separator();
        for m in s.members.get(gid).map(Vec::as_slice).unwrap_or_default() {
            let name = if m.nickname.is_empty() {
                short(&m.user)
            } else {
                m.nickname.clone()
            };
            if member_row(
                ui,
                s,
                &m.user,
                RichText::new(name),
                format!("user {}", m.user),
            ) {
                clicked = Some((m.user.clone(), m.nickname.clone()));
            }
        }
        return clicked;
    };
    ui.heading(format!("Members ({})", data.members.len()));
    ui.separator();
    for group in member_groups(&data.members, &data.roles) {
        ui.label(
            RichText::new(format!(
                "{} — {}",
                group.title.to_uppercase(),
                group.members.len()
            ))
            .small()
            .weak(),
        );
        for (m, colour) in group.members {
            let name = if m.nickname.is_empty() {
                short(&m.user)
            } else {
                m.nickname.clone()
            };
            let mut text = RichText::new(name);
            if let Some(c) = role_colour(colour) {
                text = text.color(c);
            }
            if m.owner {
                text = text.strong();
            }
            let roles: Vec<&str> = m
                .roles
                .iter()
                .filter_map(|r| data.roles.iter().find(|x| x.id == *r))
                .map(|r| r.name.as_str())
                .collect();
            let mut hover = format!("user {}", m.user);
            if m.owner {
                hover.push_str("\nowner");
            }
            if !roles.is_empty() {
                hover.push_str(&format!("\nroles: {}", roles.join(", ")));
            }
            if member_row(ui, s, &m.user, text, hover) {
                clicked = Some((m.user.clone(), m.nickname.clone()));
            }
        }
        ui.add_space(6.0);
    }
    clicked
}
