//! Drawing beyond the main layout in [`crate::app`]: the grouped channel list and the
//! new-channel dialog ([`channels`]), the member list grouped by hoisted roles ([`members`]),
//! the guild settings window ([`guild_settings`]), verification ([`verify`]) and the app's
//! settings window ([`settings`]). Like [`crate::app`], these functions only read the state,
//! call its `on_*` actions and collect the returned commands.

pub mod channels;
pub mod files;
pub mod guild_settings;
pub mod members;
pub mod messages;
pub mod settings;
pub mod verify;
pub mod voice;

/// An egui colour for a role colour (`0x00RRGGBB`); `None` for 0 (no colour).
pub fn role_colour(c: u32) -> Option<egui::Color32> {
    let [_, r, g, b] = c.to_be_bytes();
    (c != 0).then_some(egui::Color32::from_rgb(r, g, b))
}

/// A button that is disabled, with `why` on hover, when `why` is `Some`.
pub fn guarded_button(ui: &mut egui::Ui, text: &str, why: Option<&str>) -> bool {
    let r = ui.add_enabled(why.is_none(), egui::Button::new(text));
    let r = match why {
        Some(w) => r.on_disabled_hover_text(w),
        None => r,
    };
    r.clicked()
}

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
