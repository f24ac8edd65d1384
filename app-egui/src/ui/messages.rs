//! Message actions in the open channel: the bar over the composer for the selected message
//! (reply, quick reactions, edit, delete, pin), the reply/edit banner, the delete
//! confirmation, and the reply-quote and reaction rows of the timeline.

use egui::RichText;

use crate::backend::Command;
use crate::state::messages::QUICK_REACTIONS;
use crate::state::{AppState, View};

/// The bar above the composer: actions on the selected message, or the reply/edit in progress.
pub fn action_bar_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    if !matches!(s.view, View::Channel { .. }) {
        return;
    }
    if let Some((view, _, quote)) = s.messages.replying.clone()
        && view == s.view
    {
        ui.horizontal(|ui| {
            ui.label(RichText::new(format!("Replying to {quote}")).small().weak());
            if ui.small_button("Cancel reply").clicked() {
                s.on_cancel_compose();
            }
        });
    }
    if let Some((view, _)) = s.messages.editing.clone()
        && view == s.view
    {
        ui.horizontal(|ui| {
            ui.label(
                RichText::new("Editing your message (Enter saves; members see it marked edited)")
                    .small()
                    .weak(),
            );
            if ui.small_button("Cancel edit").clicked() {
                s.on_cancel_compose();
            }
        });
    }
    let Some(selected) = s.messages.selected.clone() else {
        return;
    };
    if s.current_timeline()
        .and_then(|t| t.find(&selected))
        .is_none()
    {
        s.messages.selected = None;
        return;
    }
    let mine = s.selected_is_mine();
    let manage = s.may_manage_messages();
    let pinned = s
        .current_timeline()
        .and_then(|t| t.find(&selected))
        .is_some_and(|e| e.pinned);
    ui.horizontal(|ui| {
        ui.label(RichText::new("Selected message:").small().weak());
        if ui.small_button("Reply").clicked() {
            s.on_reply();
        }
        for emoji in QUICK_REACTIONS {
            if ui.small_button(emoji).on_hover_text("React").clicked() {
                cmds.extend(s.on_react(&selected, emoji));
            }
        }
        if mine && ui.small_button("Edit").clicked() {
            s.on_edit();
        }
        if (mine || manage) && ui.small_button("Delete").clicked() {
            s.on_delete();
        }
        if manage
            && ui
                .small_button(if pinned { "Unpin" } else { "Pin" })
                .clicked()
        {
            cmds.extend(s.on_pin());
        }
        if ui.small_button("Close").clicked() {
            s.messages.selected = None;
        }
    });
}

/// Asks before a delete, and says what a delete can and cannot do.
pub fn confirm_delete_ui(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    if s.messages.confirm_delete.is_none() {
        return;
    }
    let mut answer = None;
    egui::Window::new("Delete message?")
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
        .show(ctx, |ui| {
            ui.label(
                "It is erased from your devices and from the store of every member who \
                 receives the delete, members offline now included when they come back.",
            );
            ui.label(
                RichText::new(
                    "Anyone who already saw it may have kept a copy (a screenshot, another app): \
                     no delete can reach that.",
                )
                .small()
                .weak(),
            );
            ui.horizontal(|ui| {
                if ui.button("Delete").clicked() {
                    answer = Some(true);
                }
                if ui.button("Cancel").clicked() || ui.input(|i| i.key_pressed(egui::Key::Escape)) {
                    answer = Some(false);
                }
            });
        });
    if let Some(yes) = answer {
        cmds.extend(s.on_confirm_delete(yes));
    }
}

/// The quote row above a reply.
pub fn reply_row_ui(ui: &mut egui::Ui, quote: &str) {
    ui.add(egui::Label::new(RichText::new(format!("↪ {quote}")).small().weak()).truncate());
}

/// The row below a message: reaction chips (click: toggle ours), edited and pinned marks.
/// Returns the emoji clicked, if any.
pub fn meta_row_ui(
    ui: &mut egui::Ui,
    reactions: &[(String, usize, bool)],
    edited: bool,
    pinned: bool,
) -> Option<String> {
    let mut clicked = None;
    ui.horizontal(|ui| {
        for (emoji, count, mine) in reactions {
            let chip = egui::Button::new(RichText::new(format!("{emoji} {count}")).small())
                .selected(*mine);
            if ui
                .add(chip)
                .on_hover_text(if *mine {
                    "Remove your reaction"
                } else {
                    "React too"
                })
                .clicked()
            {
                clicked = Some(emoji.clone());
            }
        }
        if edited {
            ui.label(RichText::new("(edited)").small().weak());
        }
        if pinned {
            ui.label(RichText::new("📌 pinned").small().weak());
        }
    });
    clicked
}
