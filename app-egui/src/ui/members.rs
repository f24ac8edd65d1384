//! The member list: grouped by hoisted roles, names in the colour of their top coloured role.

use egui::RichText;

use super::role_colour;
use crate::state::manage::member_groups;
use crate::state::{AppState, short};

/// Draws the selected guild's members.
pub fn member_list(ui: &mut egui::Ui, s: &AppState) {
    let Some(gid) = &s.guild else { return };
    let Some(data) = s.manage.data.get(gid) else {
        ui.heading("Members");
        ui.separator();
        for m in s.members.get(gid).map(Vec::as_slice).unwrap_or_default() {
            let name = if m.nickname.is_empty() {
                short(&m.user)
            } else {
                m.nickname.clone()
            };
            ui.label(name).on_hover_text(format!("user {}", m.user));
        }
        return;
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
            ui.label(text).on_hover_text(hover);
        }
        ui.add_space(6.0);
    }
}
