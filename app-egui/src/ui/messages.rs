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
    ui.horizontal_wrapped(|ui| {
        ui.label(RichText::new("Selected message:").small().weak());
        if ui.small_button("Reply").clicked() {
            s.on_reply();
        }
        for emoji in QUICK_REACTIONS {
            if ui.small_button(emoji).on_hover_text("React").clicked() {
                cmds.extend(s.on_react(&selected, emoji));
            }
        }
        if let Some(reaction) = custom_emoji_picker(ui, s) {
            cmds.extend(s.on_react(&selected, &reaction));
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
        if ui.small_button("Start thread").clicked() {
            cmds.extend(s.on_create_thread(true));
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

/// Custom emoji shown inline in the action bar; the rest are under "More emoji".
pub const INLINE_CUSTOM: usize = 8;

/// The current guild's custom emoji whose images are here, as reaction buttons (each named
/// `:name:` for screen readers and tests). Returns the reaction clicked.
fn custom_emoji_picker(ui: &mut egui::Ui, s: &AppState) -> Option<String> {
    let guild = s.guild.clone()?;
    let ready: Vec<(String, egui::TextureHandle)> = s
        .current_emojis()
        .iter()
        .filter_map(|e| Some((e.name.clone(), s.emoji.texture(&guild, &e.name)?.clone())))
        .collect();
    let mut clicked = None;
    let mut button = |ui: &mut egui::Ui, name: &str, t: &egui::TextureHandle| {
        let label = format!(":{name}:");
        let img = egui::Image::new(t)
            .fit_to_exact_size(egui::vec2(18.0, 18.0))
            .alt_text(label.clone());
        if ui
            .add(egui::Button::image(img))
            .on_hover_text(format!("React with {label}"))
            .clicked()
        {
            clicked = Some(label);
        }
    };
    for (name, t) in ready.iter().take(INLINE_CUSTOM) {
        button(ui, name, t);
    }
    if ready.len() > INLINE_CUSTOM {
        ui.menu_button("More emoji", |ui| {
            ui.horizontal_wrapped(|ui| {
                for (name, t) in &ready[INLINE_CUSTOM..] {
                    button(ui, name, t);
                }
            });
        });
    }
    clicked
}

/// The row below a message: reaction chips (click: toggle ours), edited and pinned marks. A
/// custom emoji `:name:` of the current guild whose image is here shows the image and the
/// count (its hover text names it); any other shows its text.
/// Returns the emoji clicked, if any.
pub fn meta_row_ui(
    ui: &mut egui::Ui,
    s: &AppState,
    reactions: &[(String, usize, bool)],
    edited: bool,
    pinned: bool,
) -> Option<String> {
    let mut clicked = None;
    let guild = s.guild.clone().unwrap_or_default();
    ui.horizontal(|ui| {
        for (emoji, count, mine) in reactions {
            let texture = crate::state::emoji::custom_name(emoji)
                .and_then(|name| s.emoji.texture(&guild, name));
            let chip = match texture {
                Some(t) => egui::Button::image_and_text(
                    egui::Image::new(t).fit_to_exact_size(egui::vec2(16.0, 16.0)),
                    RichText::new(count.to_string()).small(),
                ),
                None => egui::Button::new(RichText::new(format!("{emoji} {count}")).small()),
            }
            .selected(*mine);
            if ui
                .add(chip)
                .on_hover_text(if *mine {
                    format!("{emoji}: remove your reaction")
                } else {
                    format!("{emoji}: react too")
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

/// The button next to a channel's title: its threads, with unread counts.
pub fn threads_button_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    if !matches!(s.view, View::Channel { .. }) {
        return;
    }
    let unread: u32 = s.messages.threads.unread.values().sum();
    let label = if unread > 0 {
        format!("Threads ({unread} new)")
    } else {
        "Threads".to_owned()
    };
    if ui.button(label).clicked() {
        cmds.extend(s.on_toggle_threads());
    }
    if ui.button("Pins").clicked() {
        cmds.extend(s.on_toggle_pins());
    }
    if ui.button("Find messages").clicked() {
        s.on_toggle_search();
    }
}

/// The open channel's pinned messages.
pub fn pins_window_ui(ctx: &egui::Context, s: &mut AppState) {
    if !s.messages.pins_open {
        return;
    }
    let View::Channel { guild, channel } = s.view.clone() else {
        return;
    };
    let pins = s
        .messages
        .pins
        .get(&(guild, channel))
        .cloned()
        .unwrap_or_default();
    let mut open = true;
    // Kept at the right, clear of the channel's title bar and its messages' start.
    egui::Window::new("Pinned messages")
        .open(&mut open)
        .default_width(300.0)
        .anchor(egui::Align2::RIGHT_BOTTOM, [-12.0, -120.0])
        .show(ctx, |ui| {
            if pins.is_empty() {
                ui.label(RichText::new("Nothing pinned in this channel.").weak());
            }
            for p in &pins {
                ui.horizontal_wrapped(|ui| {
                    ui.label(RichText::new(s.name_of(&p.sender)).strong());
                    ui.label(
                        RichText::new(crate::state::format_time(p.sent_at))
                            .small()
                            .weak(),
                    );
                });
                ui.label(&p.text);
                ui.separator();
            }
        });
    if !open {
        s.messages.pins_open = false;
    }
}

/// The thread list of the open channel, and the open thread.
pub fn threads_windows_ui(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    let key = match &s.view {
        View::Channel { guild, channel } => Some((guild.clone(), *channel)),
        _ => None,
    };
    if s.messages.threads.list_open
        && let Some(key) = key
    {
        let mut open = true;
        egui::Window::new("Threads")
            .open(&mut open)
            .default_width(320.0)
            .show(ctx, |ui| {
                let list = s
                    .messages
                    .threads
                    .lists
                    .get(&key)
                    .cloned()
                    .unwrap_or_default();
                if list.is_empty() {
                    ui.label(RichText::new("No threads in this channel yet.").weak());
                }
                for t in list {
                    ui.horizontal(|ui| {
                        let unread = s.messages.threads.unread.get(&t.id).copied().unwrap_or(0);
                        let mut name = format!("🧵 {}", t.name);
                        if t.archived {
                            name.push_str(" (archived)");
                        }
                        ui.label(name);
                        ui.label(
                            RichText::new(format!("{} messages", t.messages))
                                .small()
                                .weak(),
                        );
                        if unread > 0 {
                            ui.label(RichText::new(format!("{unread} new")).small().strong());
                        }
                        if ui.small_button(format!("Open {}", t.name)).clicked() {
                            cmds.extend(s.on_open_thread(&t.id));
                        }
                    });
                }
                ui.separator();
                ui.horizontal(|ui| {
                    let l = ui.label("Thread name");
                    ui.text_edit_singleline(&mut s.messages.threads.new_name)
                        .labelled_by(l.id);
                    if ui.button("Create thread").clicked() {
                        cmds.extend(s.on_create_thread(false));
                    }
                });
            });
        if !open {
            s.messages.threads.list_open = false;
        }
    }
    if s.messages.threads.open.is_none() {
        return;
    }
    let info = s.open_thread().cloned();
    let title = info
        .as_ref()
        .map_or_else(|| "Thread".to_owned(), |t| format!("🧵 {}", t.name));
    let mut open = true;
    egui::Window::new("Thread")
        .id(egui::Id::new("thread window"))
        .title_bar(true)
        .open(&mut open)
        .default_width(420.0)
        .show(ctx, |ui| {
            ui.heading(title);
            let archived = info.as_ref().is_some_and(|t| t.archived);
            if ui
                .small_button(if archived { "Unarchive" } else { "Archive" })
                .clicked()
            {
                cmds.extend(s.on_archive_thread());
            }
            ui.separator();
            egui::ScrollArea::vertical()
                .max_height(320.0)
                .stick_to_bottom(true)
                .show(ui, |ui| {
                    for m in &s.messages.threads.messages {
                        ui.horizontal_wrapped(|ui| {
                            ui.label(RichText::new(&m.author).strong());
                            ui.label(&m.text);
                        });
                    }
                });
            ui.separator();
            if archived {
                ui.label(RichText::new("Archived: unarchive to post.").small().weak());
            }
            ui.horizontal(|ui| {
                let l = ui.label("Thread message");
                let r = ui
                    .text_edit_singleline(&mut s.messages.threads.composer)
                    .labelled_by(l.id);
                let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                if ui.button("Send to thread").clicked() || enter {
                    cmds.extend(s.on_thread_send());
                }
            });
        });
    if !open {
        s.on_close_thread();
    }
}

/// The search window: words, "only this channel", an author, and results with "Jump".
pub fn search_window_ui(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    if !s.messages.search.open {
        return;
    }
    let mut open = true;
    let mut jump = None;
    egui::Window::new("Search messages")
        .open(&mut open)
        .default_width(420.0)
        .anchor(egui::Align2::RIGHT_TOP, [-12.0, 60.0])
        .show(ctx, |ui| {
            let q = &mut s.messages.search;
            let mut go = false;
            ui.horizontal(|ui| {
                let l = ui.label("Search text");
                let r = ui.text_edit_singleline(&mut q.text).labelled_by(l.id);
                go |= r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            });
            ui.horizontal(|ui| {
                let l = ui.label("From");
                ui.text_edit_singleline(&mut q.author).labelled_by(l.id);
            });
            ui.checkbox(&mut q.this_channel, "Only this channel");
            go |= ui.button("Search").clicked();
            if go {
                cmds.extend(s.on_search());
            }
            ui.label(
                RichText::new("Searches the messages stored on this device; nothing leaves it.")
                    .small()
                    .weak(),
            );
            ui.separator();
            let Some((text, hits)) = s.messages.search.results.clone() else {
                return;
            };
            if hits.is_empty() {
                ui.label(RichText::new(format!("Nothing found for {text:?}.")).weak());
            }
            egui::ScrollArea::vertical()
                .max_height(360.0)
                .show(ui, |ui| {
                    for h in &hits {
                        ui.horizontal_wrapped(|ui| {
                            let who = if h.nickname.is_empty() {
                                crate::state::short(&h.sender)
                            } else {
                                h.nickname.clone()
                            };
                            ui.label(
                                RichText::new(format!(
                                    "#{} · {who} · {}",
                                    h.channel_name,
                                    crate::state::format_time(h.sent_at)
                                ))
                                .small()
                                .weak(),
                            );
                            if ui
                                .small_button(format!("Jump to {}", &h.id[..8.min(h.id.len())]))
                                .clicked()
                            {
                                jump = Some(h.clone());
                            }
                        });
                        ui.label(snippet_job(ui, &h.snippet));
                        ui.separator();
                    }
                });
        });
    if let Some(h) = jump {
        cmds.extend(s.on_jump(&h));
    }
    if !open {
        s.messages.search.open = false;
    }
}

/// A snippet with its matched words (between U+0002 and U+0003) in the strong colour.
fn snippet_job(ui: &egui::Ui, snippet: &str) -> egui::text::LayoutJob {
    let mut job = egui::text::LayoutJob::default();
    let font = egui::TextStyle::Body.resolve(ui.style());
    let (plain, strong) = (ui.visuals().text_color(), ui.visuals().strong_text_color());
    let mut matched = false;
    for part in snippet.split(['\u{2}', '\u{3}']) {
        job.append(
            part,
            0.0,
            egui::TextFormat::simple(font.clone(), if matched { strong } else { plain }),
        );
        matched = !matched;
    }
    job
}
