//! The safety-number screen, the verified badge and the key-change banner.

use egui::{Color32, RichText};

use super::{ALARM, GOOD, NOTICE};
use crate::backend::Command;
use crate::state::{AppState, View, short};
use crate::verify::{QrModules, WarningInfo};

/// The badge shown next to a verified contact's name.
pub const BADGE: &str = "✔";

/// A member's name, clickable to open the safety number, with the verified badge.
pub fn member_name_ui(
    ui: &mut egui::Ui,
    s: &AppState,
    user: &str,
    text: RichText,
) -> egui::Response {
    ui.horizontal(|ui| {
        let r = ui.add(egui::Label::new(text).sense(egui::Sense::click()));
        if s.verify.is_verified(user) {
            ui.colored_label(GOOD, BADGE)
                .on_hover_text("Verified: you compared safety numbers");
        }
        r
    })
    .inner
}

/// Above a DM: the verified badge and the "Safety number" button.
pub fn dm_header_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    let View::Dm { user } = s.view.clone() else {
        return;
    };
    ui.horizontal(|ui| {
        if s.verify.is_verified(&user) {
            ui.colored_label(GOOD, format!("{BADGE} Verified"));
        } else {
            ui.label(RichText::new("Not verified").weak());
        }
        if ui.button("Safety number").clicked() {
            let name = s
                .verify
                .contacts
                .get(&user)
                .map(|c| c.name.clone())
                .unwrap_or_default();
            cmds.extend(s.verify.on_open(&user, &name));
        }
    });
}

/// The banner for key changes (alarms) and device changes (notices).
pub fn banner_ui(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    let alarms: Vec<WarningInfo> = s.verify.alarms().cloned().collect();
    let notices: Vec<WarningInfo> = s.verify.notices().cloned().collect();
    if alarms.is_empty() && notices.is_empty() {
        return;
    }
    egui::TopBottomPanel::top("verify_banner").show(ctx, |ui| {
        for w in alarms.iter().take(4) {
            if let WarningInfo::KeyChanged {
                name,
                verified,
                current,
            } = w
            {
                ui.horizontal_wrapped(|ui| {
                    ui.colored_label(
                        ALARM,
                        RichText::new(format!(
                            "⚠ Key changed: \"{name}\" now appears with key {} instead of the key \
                             {} you verified. It may be someone else; compare safety numbers \
                             before trusting it.",
                            short(current),
                            short(verified)
                        ))
                        .strong(),
                    );
                    if ui.button("Compare safety numbers").clicked() {
                        cmds.extend(s.verify.on_open(current, name));
                    }
                });
            }
        }
        for w in notices.iter().take(4) {
            if let WarningInfo::DevicesChanged {
                name,
                added,
                removed,
                ..
            } = w
            {
                ui.horizontal_wrapped(|ui| {
                    ui.colored_label(
                        NOTICE,
                        format!(
                            "ℹ {name}'s devices changed since you verified them ({added} new, \
                             {removed} gone). Their key signs every device; ask them if you did \
                             not expect this."
                        ),
                    );
                    if ui.small_button("Dismiss").clicked() {
                        s.verify.dismissed.push(w.clone());
                    }
                });
            }
        }
        let more = alarms.len().saturating_sub(4) + notices.len().saturating_sub(4);
        if more > 0 {
            ui.label(format!("and {more} more"));
        }
    });
}

/// The safety-number window, when open.
pub fn safety_window_ui(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    let Some(v) = s.verify.safety.clone() else {
        return;
    };
    let verified = s.verify.is_verified(&v.user);
    let name = if v.name.is_empty() {
        short(&v.user)
    } else {
        v.name.clone()
    };
    let mut open = true;
    egui::Window::new("Safety number")
        .id(egui::Id::new("safety_number"))
        .open(&mut open)
        .collapsible(false)
        .resizable(false)
        .show(ctx, |ui| {
            ui.heading(format!("You and {name}"));
            ui.label(
                RichText::new(format!("user {}", v.user))
                    .small()
                    .monospace(),
            );
            ui.add_space(6.0);
            for row in v.groups().chunks(4) {
                ui.label(RichText::new(row.join("  ")).monospace().size(18.0));
            }
            ui.add_space(6.0);
            qr_ui(ui, &v.qr, 4.0);
            ui.add_space(6.0);
            ui.label(format!(
                "Compare these 60 digits with {name} in person or on a call you trust (or scan \
                 each other's code). If they match, nobody is in between."
            ));
            ui.add_space(6.0);
            ui.horizontal(|ui| {
                if verified {
                    ui.colored_label(GOOD, format!("{BADGE} Verified"));
                    if ui.button("Clear verification").clicked() {
                        cmds.extend(s.verify.on_mark(false));
                    }
                } else if ui.button("Mark as verified").clicked() {
                    cmds.extend(s.verify.on_mark(true));
                }
            });
        });
    if !open {
        s.verify.on_close();
    }
}

/// Paints a QR code (with its 4-module quiet zone) at `scale` points per module.
pub fn qr_ui(ui: &mut egui::Ui, qr: &QrModules, scale: f32) {
    if qr.width == 0 {
        ui.label("(no QR code)");
        return;
    }
    let side = (qr.width + 8) as f32 * scale;
    let (rect, _) = ui.allocate_exact_size(egui::vec2(side, side), egui::Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 0.0, Color32::WHITE);
    let origin = rect.min + egui::vec2(4.0 * scale, 4.0 * scale);
    for (i, dark) in qr.dark.iter().enumerate() {
        if !dark {
            continue;
        }
        let (x, y) = ((i % qr.width) as f32, (i / qr.width) as f32);
        let min = origin + egui::vec2(x * scale, y * scale);
        painter.rect_filled(
            egui::Rect::from_min_size(min, egui::vec2(scale, scale)),
            0.0,
            Color32::BLACK,
        );
    }
}
