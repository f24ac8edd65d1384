//! The settings window and the first-run "Restore from backup" form.

use egui::RichText;

use super::{ALARM, GOOD, NOTICE, labelled};
use crate::backend::Command;
use crate::settings::{SettingsTab, human_size};
use crate::state::{AppState, Phase};

/// Applies the theme from the preferences (only when it differs).
pub fn apply_theme(ctx: &egui::Context, s: &AppState) {
    let want = if s.settings.prefs.dark {
        egui::Theme::Dark
    } else {
        egui::Theme::Light
    };
    if ctx.theme() != want {
        ctx.set_theme(want);
    }
}

/// The "Restore from backup" button under the create form.
pub fn restore_button_ui(ui: &mut egui::Ui, s: &mut AppState) {
    ui.add_space(8.0);
    if ui.button("Restore from backup").clicked() {
        s.restore.active = true;
        s.login.error = None;
    }
}

/// The restore form, when the user chose it; returns whether it was drawn (instead of the
/// create form).
pub fn restore_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) -> bool {
    if !s.restore.active {
        return false;
    }
    ui.label(
        "Restore your identity from an encrypted backup. It is sealed on this device under the \
         backup's passphrase.",
    );
    labelled(
        ui,
        "Backup file",
        egui::TextEdit::singleline(&mut s.restore.path),
    );
    let pass = labelled(
        ui,
        "Backup passphrase",
        egui::TextEdit::singleline(&mut s.restore.passphrase).password(true),
    );
    let enter = pass.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
    if ui.button("Restore identity").clicked() || enter {
        match s.restore.on_restore() {
            Ok(cmd) => {
                s.login.error = None;
                s.phase = Phase::Starting;
                cmds.push(cmd);
            }
            Err(e) => s.login.error = Some(e),
        }
    }
    if ui.button("Create a new identity instead").clicked() {
        s.restore.active = false;
        s.login.error = None;
    }
    true
}

/// The settings window, when open.
pub fn settings_window_ui(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    if !s.settings.open {
        return;
    }
    let mut open = true;
    egui::Window::new("Settings")
        .id(egui::Id::new("settings_window"))
        .open(&mut open)
        .default_width(520.0)
        .show(ctx, |ui| {
            ui.horizontal(|ui| {
                for tab in SettingsTab::ALL {
                    if ui
                        .selectable_label(s.settings.tab == tab, tab.title())
                        .clicked()
                    {
                        s.settings.tab = tab;
                    }
                }
            });
            ui.separator();
            egui::ScrollArea::vertical().show(ui, |ui| match s.settings.tab {
                SettingsTab::Relays => relays_ui(ui, s, cmds),
                SettingsTab::Theme => appearance_ui(ui, s, cmds),
                SettingsTab::Notifications => notifications_ui(ui, s, cmds),
                SettingsTab::Data => data_ui(ui, s),
                SettingsTab::Audio => crate::ui::voice::audio_ui(ui, s, cmds),
                SettingsTab::Identity => identity_ui(ui, s, cmds),
            });
        });
    if !open {
        s.settings.open = false;
    }
}

fn relays_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    ui.label(
        "Relays help peers reach you behind NAT and keep encrypted mail while you are offline. \
         On a LAN none is needed.",
    );
    let mut remove = None;
    if s.settings.saved.is_empty() {
        ui.label(RichText::new("No relay added.").weak());
    }
    for addr in &s.settings.saved {
        let health = s
            .settings
            .health
            .iter()
            .find(|h| addr.ends_with(&format!("/p2p/{}", h.peer)));
        ui.horizontal(|ui| {
            let (text, colour) = match health {
                Some(h) if h.state == "reserved" => ("reserved".to_owned(), GOOD),
                Some(h) if h.state == "reserving" => ("connecting".to_owned(), NOTICE),
                Some(h) if h.failures > 0 => {
                    (format!("unreachable ({} failures)", h.failures), ALARM)
                }
                Some(_) => ("idle".to_owned(), NOTICE),
                None => ("not in use".to_owned(), ALARM),
            };
            ui.colored_label(colour, "●").on_hover_text(text.clone());
            ui.label(RichText::new(text).small());
            ui.label(RichText::new(addr).monospace().small());
            if ui.small_button("Remove").clicked() {
                remove = Some(addr.clone());
            }
        });
    }
    if let Some(a) = remove {
        cmds.extend(s.settings.on_remove_relay(&a));
    }
    let discovered: Vec<_> = s
        .settings
        .health
        .iter()
        .filter(|h| {
            !s.settings
                .saved
                .iter()
                .any(|a| a.ends_with(&format!("/p2p/{}", h.peer)))
        })
        .take(8)
        .collect();
    if !discovered.is_empty() {
        ui.label(RichText::new("Also known (configured at start or discovered):").weak());
        for h in discovered {
            ui.label(
                RichText::new(format!(
                    "{} · {} · {}",
                    crate::state::short(&h.peer),
                    h.state,
                    if h.configured {
                        "configured"
                    } else {
                        "discovered"
                    }
                ))
                .small(),
            );
        }
    }
    let r = labelled(
        ui,
        "Relay address",
        egui::TextEdit::singleline(&mut s.settings.new_relay)
            .hint_text("/ip4/203.0.113.7/tcp/4001/p2p/12D3KooW...")
            .desired_width(360.0),
    );
    let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
    if ui.button("Add relay").clicked() || enter {
        cmds.extend(s.settings.on_add_relay());
    }
    if let Some(e) = &s.settings.relay_error {
        ui.colored_label(ALARM, e);
    }
}

fn appearance_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    let before = s.settings.prefs.dark;
    ui.horizontal(|ui| {
        ui.radio_value(&mut s.settings.prefs.dark, true, "Dark");
        ui.radio_value(&mut s.settings.prefs.dark, false, "Light");
    });
    if s.settings.prefs.dark != before {
        cmds.extend(s.settings.on_prefs_changed());
    }
}

fn notifications_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    if ui
        .checkbox(
            &mut s.settings.prefs.notifications,
            "Notify me of mentions and direct messages",
        )
        .changed()
    {
        cmds.extend(s.settings.on_prefs_changed());
    }
    if ui
        .checkbox(
            &mut s.settings.prefs.typing_indicators,
            "Typing indicators (send mine, show others')",
        )
        .changed()
    {
        cmds.extend(s.settings.on_prefs_changed());
    }
    if ui
        .checkbox(
            &mut s.settings.prefs.show_previews,
            "Show image previews (the sender's small copy, decoded only when shown)",
        )
        .changed()
    {
        cmds.extend(s.settings.on_prefs_changed());
    }
    if let Some(e) = &s.settings.notify_error {
        ui.colored_label(NOTICE, e);
    }
    if !s.settings.notices.is_empty() {
        for n in s.settings.notices.iter().rev() {
            ui.label(RichText::new(n).small());
        }
        if ui.small_button("Clear notices").clicked() {
            s.settings.notices.clear();
        }
    }
}

fn data_ui(ui: &mut egui::Ui, s: &AppState) {
    ui.horizontal(|ui| {
        ui.label(RichText::new(&s.data_dir).monospace());
        if ui.small_button("Copy path").clicked() {
            ui.ctx().copy_text(s.data_dir.clone());
        }
    });
    match s.settings.data_size {
        Some(n) => ui.label(format!("Size: {}", human_size(n))),
        None => ui.label("Size: measuring..."),
    };
    ui.label(
        RichText::new(
            "Everything in it is encrypted: the identity under your passphrase, the database \
             under a key inside the identity.",
        )
        .small()
        .weak(),
    );
}

fn identity_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    if let Some(me) = &s.me {
        ui.label(format!("Display name: {}", me.display_name));
        ui.horizontal(|ui| {
            ui.label("User id:");
            ui.label(RichText::new(&me.user_id).monospace().small());
            if ui.small_button("Copy user id").clicked() {
                ui.ctx().copy_text(me.user_id.clone());
            }
        });
    }
    ui.add_space(4.0);
    ui.label(RichText::new("Encrypted backup").strong());
    ui.label(
        "Writes your identity to a file sealed under a backup passphrase. Keep both safe: \
         with them, anyone can be you.",
    );
    let b = &mut s.settings.backup;
    labelled(ui, "Backup file", egui::TextEdit::singleline(&mut b.path));
    labelled(
        ui,
        "Current passphrase",
        egui::TextEdit::singleline(&mut b.passphrase).password(true),
    );
    labelled(
        ui,
        "Backup passphrase",
        egui::TextEdit::singleline(&mut b.backup_passphrase).password(true),
    );
    let busy = b.busy;
    ui.horizontal(|ui| {
        if ui
            .add_enabled(!busy, egui::Button::new("Export backup"))
            .clicked()
        {
            cmds.extend(s.settings.on_export());
        }
        if busy {
            ui.spinner();
        }
    });
    match &s.settings.backup.result {
        Some(Ok(path)) => {
            ui.colored_label(GOOD, format!("Backup written to {path}"));
        }
        Some(Err(e)) => {
            ui.colored_label(ALARM, e);
        }
        None => {}
    }
}
