//! Drawing for the verification and settings features (the rest of the window is in
//! [`crate::app`]). Like there, these functions only read the state and collect the user's
//! actions as commands.

pub mod settings;
pub mod verify;

/// A text field with a label that screen readers (and tests) find it by.
fn labelled(ui: &mut egui::Ui, label: &str, edit: egui::TextEdit<'_>) -> egui::Response {
    ui.horizontal(|ui| {
        let l = ui.label(label);
        ui.add(edit).labelled_by(l.id)
    })
    .inner
}

/// Red, for errors and alarms.
const ALARM: egui::Color32 = egui::Color32::from_rgb(230, 80, 80);
/// Green, for verified and healthy.
const GOOD: egui::Color32 = egui::Color32::from_rgb(80, 200, 120);
/// Amber, for notices.
const NOTICE: egui::Color32 = egui::Color32::from_rgb(230, 180, 60);
