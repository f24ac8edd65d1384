//! Files in the window: the composer's "Attach" button and attachment chips, the attach and
//! save dialogs (a typed path: no native file dialog, see [`attach_window_ui`]), the overlay
//! while files are dragged over the window, and the file card and preview rows of the
//! message list.
//!
//! Like the rest of the UI these only read the state and report clicks; the state decides
//! ([`crate::state::files`]).

use std::fmt::Write as _;

use egui::{Color32, RichText, TextStyle};

use crate::backend::Command;
use crate::state::files::{CardState, human_duration, human_size, type_icon};
use crate::state::{AppState, View};

/// What a click on a file row asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileAction {
    /// Start or resume the fetch of this root.
    Download(String),
    /// Open "Save as" for (root, name).
    Save(String, String),
    /// A preview row of (message, root) is on screen and not decoded yet.
    Visible(String, String),
}

/// "Attach" and the attached files as removable chips, above the composer.
pub fn attachments_ui(ui: &mut egui::Ui, s: &mut AppState) {
    if !matches!(s.view, View::Channel { .. }) {
        return;
    }
    let mut remove = None;
    ui.horizontal_wrapped(|ui| {
        if ui
            .button("📎 Attach")
            .on_hover_text("Attach files (or drop them on the window)")
            .clicked()
        {
            s.files.attach_open = !s.files.attach_open;
        }
        for (i, a) in s.files.attached.iter().enumerate() {
            let chip = ui
                .add(
                    egui::Button::new(
                        RichText::new(format!(
                            "{} {} · {}  ✕",
                            type_icon(securecomm_node::files::mime_for(&a.name)),
                            a.name,
                            human_size(a.size)
                        ))
                        .small(),
                    )
                    .corner_radius(8.0),
                )
                .on_hover_text(format!("{}\nClick to remove", a.path.display()));
            let label = format!("Remove {}", a.name);
            chip.widget_info(|| egui::WidgetInfo::labeled(egui::WidgetType::Button, true, &label));
            if chip.clicked() {
                remove = Some(i);
            }
        }
        if !s.files.attached.is_empty() {
            ui.label(
                RichText::new(format!(
                    "{} of {} files; Enter sends them",
                    s.files.attached.len(),
                    crate::state::files::MAX_ATTACHMENTS
                ))
                .small()
                .weak(),
            );
        }
    });
    if let Some(i) = remove {
        s.on_remove_attachment(i);
    }
}

/// The "Attach a file" dialog: a typed path. A native file dialog (`rfd`) would need GTK or
/// an XDG portal at run time and new crates to build; a path entry works everywhere,
/// headless CI included, and dropping files on the window covers the mouse case.
pub fn attach_window_ui(ctx: &egui::Context, s: &mut AppState) {
    if !s.files.attach_open {
        return;
    }
    let mut open = true;
    let mut add = false;
    egui::Window::new("Attach a file")
        .open(&mut open)
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_BOTTOM, [0.0, -120.0])
        .show(ctx, |ui| {
            ui.horizontal(|ui| {
                let l = ui.label("File path");
                let r = ui
                    .add(
                        egui::TextEdit::singleline(&mut s.files.attach_path)
                            .hint_text("/home/me/photo.png")
                            .desired_width(360.0),
                    )
                    .labelled_by(l.id);
                add |= r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            });
            ui.label(
                RichText::new(
                    "Encrypted on this device before it leaves it; members fetch it from \
                     each other. You can also drop files on the window.",
                )
                .small()
                .weak(),
            );
            ui.horizontal(|ui| {
                add |= ui.button("Add file").clicked();
                if ui.button("Cancel").clicked() {
                    s.files.attach_open = false;
                }
            });
        });
    if add {
        s.on_attach_typed();
    }
    if !open {
        s.files.attach_open = false;
    }
}

/// Files dragged over the window: an overlay; dropped: attached (in a channel).
pub fn drop_ui(ctx: &egui::Context, s: &mut AppState) {
    let (hovered, dropped) =
        ctx.input(|i| (!i.raw.hovered_files.is_empty(), i.raw.dropped_files.clone()));
    s.files.drop_hover = hovered;
    if hovered {
        let painter = ctx.layer_painter(egui::LayerId::new(
            egui::Order::Foreground,
            egui::Id::new("file drop overlay"),
        ));
        let rect = ctx.content_rect();
        painter.rect_filled(rect, 0.0, Color32::from_black_alpha(170));
        let text = if matches!(s.view, View::Channel { .. }) {
            "Drop files to attach them"
        } else {
            "Open a guild channel to attach files"
        };
        painter.text(
            rect.center(),
            egui::Align2::CENTER_CENTER,
            text,
            TextStyle::Heading.resolve(&ctx.style()),
            Color32::WHITE,
        );
    }
    if dropped.is_empty() {
        return;
    }
    let mut paths = Vec::new();
    for f in dropped {
        match f.path {
            Some(p) => paths.push(p),
            None => s.error(format!(
                "{} came without a path; drop files from a file manager",
                f.name
            )),
        }
    }
    s.on_dropped(paths);
}

/// One file card row: icon, name, size, and the state with its action.
#[allow(clippy::too_many_arguments)]
pub fn file_row_ui(
    ui: &mut egui::Ui,
    s: &AppState,
    root: &str,
    name: &str,
    mime: &str,
    size: u64,
    loaded: &str,
    actions: &mut Vec<FileAction>,
) {
    let row_height = ui.text_style_height(&TextStyle::Body);
    let (rect, _) = ui.allocate_exact_size(
        egui::vec2(ui.available_width(), row_height),
        egui::Sense::hover(),
    );
    let mut row = ui.new_child(
        egui::UiBuilder::new()
            .max_rect(rect)
            .layout(egui::Layout::left_to_right(egui::Align::Center)),
    );
    let ui = &mut row;
    ui.style_mut().wrap_mode = Some(egui::TextWrapMode::Truncate);
    ui.add_space(8.0);
    ui.label(RichText::new(format!("{} {name}", type_icon(mime))).strong());
    ui.label(RichText::new(human_size(size)).small().weak());
    match loaded {
        "sending" => {
            ui.label(RichText::new("encrypting and sending…").small().weak());
            return;
        }
        "unsent" => {
            ui.label(RichText::new("not sent (see above)").small().weak());
            return;
        }
        _ => {}
    }
    let transfer = s.files.transfers.get(root);
    match s.card_state(root, loaded) {
        CardState::Remote | CardState::Paused => {
            let b = ui.small_button("⬇ Download");
            let label = format!("Download {name}");
            b.widget_info(|| egui::WidgetInfo::labeled(egui::WidgetType::Button, true, &label));
            if b.clicked() {
                actions.push(FileAction::Download(root.to_owned()));
            }
            if let Some(why) = transfer.and_then(|t| t.error.as_deref()) {
                ui.label(
                    RichText::new(format!("paused: {why}"))
                        .small()
                        .color(Color32::from_rgb(230, 80, 80)),
                )
                .on_hover_text(why);
            }
        }
        CardState::Fetching => {
            let (have, total) = transfer.map_or((0, size), |t| {
                (t.have, if t.size > 0 { t.size } else { size })
            });
            #[allow(clippy::cast_precision_loss)] // a fraction for a bar
            let frac = if total == 0 {
                0.0
            } else {
                have as f32 / total as f32
            };
            let text = match transfer.map(|t| t.state.as_str()) {
                Some("waiting") => "waiting for a member who has it…".to_owned(),
                Some("fetching") => {
                    let t = transfer.map(|t| (t.percent, t.bytes_per_sec, t.eta_secs));
                    let (pct, speed, eta) = t.unwrap_or_default();
                    let mut line = format!("{pct:.0}% · {}/s", human_size(speed));
                    if let Some(e) = eta {
                        let _ = write!(line, " · {} left", human_duration(e));
                    }
                    line
                }
                _ => "queued…".to_owned(),
            };
            ui.add(
                egui::ProgressBar::new(frac)
                    .desired_width(260.0)
                    .desired_height(row_height * 0.9)
                    .text(RichText::new(text).small()),
            );
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(250));
        }
        CardState::Complete => {
            let b = ui.small_button("💾 Save as…");
            let label = format!("Save {name}");
            b.widget_info(|| egui::WidgetInfo::labeled(egui::WidgetType::Button, true, &label));
            if b.clicked() {
                actions.push(FileAction::Save(root.to_owned(), name.to_owned()));
            }
            if let Some(p) = s.files.saved.get(root) {
                ui.label(RichText::new(format!("saved to {p}")).small().weak());
            }
        }
    }
}

/// One strip of an image preview. The image sits at the top of its first strip and each
/// strip paints the part of it that falls in its own rectangle, so it shows whole however the
/// list is scrolled. A click downloads the full file (or, once here, offers to save it).
#[allow(clippy::too_many_arguments)]
pub fn preview_row_ui(
    ui: &mut egui::Ui,
    s: &AppState,
    msg: &str,
    root: &str,
    name: &str,
    part: u8,
    parts: u8,
    size: (u16, u16),
    actions: &mut Vec<FileAction>,
) {
    let row_height = ui.text_style_height(&TextStyle::Body);
    let step = row_height + ui.spacing().item_spacing.y;
    let (rect, _) = ui.allocate_exact_size(
        egui::vec2(ui.available_width(), row_height),
        egui::Sense::hover(),
    );
    let (w, h) = crate::state::preview_size(size);
    let k = (f32::from(parts) * step / h).min(1.0);
    let (w, h) = (w * k, h * k);
    let top = rect.top() - f32::from(part) * step;
    let image = egui::Rect::from_min_size(egui::pos2(rect.left() + 8.0, top), egui::vec2(w, h));
    // This strip's share of the image (the spacing below a row belongs to the strip above).
    let strip = egui::Rect::from_x_y_ranges(
        image.x_range(),
        rect.top()..=(rect.top() + step).min(image.bottom()),
    );
    if strip.height() <= 0.0 {
        return;
    }
    let resp = ui
        .interact(
            strip,
            ui.id().with(("preview", root, part)),
            egui::Sense::click(),
        )
        .on_hover_cursor(egui::CursorIcon::PointingHand);
    if part == 0 {
        let label = format!("Image preview {name}");
        resp.widget_info(|| egui::WidgetInfo::labeled(egui::WidgetType::Button, true, &label));
    }
    let painter = ui.painter().with_clip_rect(strip);
    match s.files.previews.get(root) {
        Some(Some(t)) => {
            painter.image(
                t.id(),
                image,
                egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                Color32::WHITE,
            );
        }
        Some(None) => {
            painter.rect_filled(image, 4.0, ui.visuals().extreme_bg_color);
            if part == 0 {
                painter.text(
                    image.left_top() + egui::vec2(6.0, 2.0),
                    egui::Align2::LEFT_TOP,
                    "preview unavailable",
                    TextStyle::Small.resolve(ui.style()),
                    ui.visuals().weak_text_color(),
                );
            }
        }
        None => {
            painter.rect_filled(image, 4.0, ui.visuals().extreme_bg_color);
            actions.push(FileAction::Visible(msg.to_owned(), root.to_owned()));
        }
    }
    if resp.clicked() {
        if s.card_state(root, "remote") == CardState::Complete {
            actions.push(FileAction::Save(root.to_owned(), name.to_owned()));
        } else {
            actions.push(FileAction::Download(root.to_owned()));
        }
    }
}

/// The "Save as" dialog: where to write the decrypted file (never over an existing one).
pub fn save_window_ui(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    let Some(name) = s.files.save.as_ref().map(|d| d.name.clone()) else {
        return;
    };
    let mut open = true;
    let mut save = false;
    let mut cancel = false;
    egui::Window::new(format!("Save {name}"))
        .id(egui::Id::new("save file window"))
        .open(&mut open)
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
        .show(ctx, |ui| {
            let Some(d) = s.files.save.as_mut() else {
                return;
            };
            ui.horizontal(|ui| {
                let l = ui.label("Save to");
                let r = ui
                    .add(egui::TextEdit::singleline(&mut d.path).desired_width(420.0))
                    .labelled_by(l.id);
                save |= r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            });
            ui.label(
                RichText::new(
                    "Decrypted and checked against the sender's hash as it is written; an \
                     existing file is never overwritten.",
                )
                .small()
                .weak(),
            );
            ui.horizontal(|ui| {
                save |= ui.button("Save").clicked();
                cancel = ui.button("Cancel").clicked();
            });
        });
    if save {
        cmds.extend(s.on_save());
    }
    if cancel || !open {
        s.files.save = None;
    }
}
