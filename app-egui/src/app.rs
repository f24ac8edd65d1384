//! The window: [`App::frame`] drains backend events into [`AppState`] (the one place state
//! changes), then draws it. Drawing functions only read the state and collect the user's
//! actions as [`Command`]s, sent after drawing.

use egui::text::LayoutJob;
use egui::{Color32, FontId, Key, RichText, TextFormat, TextStyle};
use securecomm_node::markdown::{LineKind, Span};

use crate::backend::{Backend, BackendConfig, Command};
use crate::state::{AppState, PREFETCH_ROWS, Phase, Row, View, short};

/// Most events folded per frame (the rest wait for the next frame, which is requested).
pub const EVENTS_PER_FRAME: usize = 2000;

/// The desktop app: state plus the node handle.
#[derive(Debug)]
pub struct App {
    /// Everything shown.
    pub state: AppState,
    backend: Backend,
}

impl App {
    /// Starts the node thread for `cfg.data_dir`; the node itself starts after login.
    pub fn new(cfg: BackendConfig) -> std::io::Result<Self> {
        let mut state = AppState::new(cfg.data_dir.display().to_string(), cfg.has_identity());
        state.settings.prefs = crate::settings::Prefs::load(&cfg.data_dir);
        Ok(Self {
            state,
            backend: Backend::spawn(cfg)?,
        })
    }

    /// Sends commands to the node; a full queue becomes an error shown once.
    pub fn dispatch(&mut self, cmds: Vec<Command>) {
        for c in cmds {
            if let Err(e) = self.backend.send(c) {
                self.state.error(e);
            }
        }
    }

    /// One frame: fold events, then draw.
    pub fn frame(&mut self, ctx: &egui::Context) {
        self.backend.set_context(ctx);
        crate::ui::settings::apply_theme(ctx, &self.state);
        let events = self.backend.drain(EVENTS_PER_FRAME);
        if events.len() == EVENTS_PER_FRAME {
            ctx.request_repaint();
        }
        for ev in events {
            let cmds = self.state.apply(ev);
            self.dispatch(cmds);
        }
        if self.state.phase == Phase::Main {
            // Push-to-talk: egui sees keys only while the window has focus.
            let prefs = &self.state.settings.prefs.voice;
            let key = prefs.key();
            let held = ctx.input(|i| i.focused && i.key_down(key));
            let cmds = self.state.voice.on_frame(prefs, held);
            self.dispatch(cmds);
        }
        let mut cmds = Vec::new();
        match self.state.phase {
            Phase::Login | Phase::Starting => login_ui(ctx, &mut self.state, &mut cmds),
            Phase::Main => main_ui(ctx, &mut self.state, &mut cmds),
        }
        self.dispatch(cmds);
    }
}

impl eframe::App for App {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.frame(ctx);
    }
}

fn labelled_edit(ui: &mut egui::Ui, label: &str, edit: egui::TextEdit<'_>) -> egui::Response {
    ui.horizontal(|ui| {
        let l = ui.label(label);
        ui.add(edit).labelled_by(l.id)
    })
    .inner
}

fn login_ui(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    egui::CentralPanel::default().show(ctx, |ui| {
        ui.vertical_centered(|ui| {
            ui.add_space(40.0);
            ui.heading("SecureComm");
            ui.label(format!("Data folder: {}", s.data_dir));
            ui.add_space(12.0);
        });
        let starting = s.phase == Phase::Starting;
        ui.add_enabled_ui(!starting, |ui| {
            if !s.has_identity && crate::ui::settings::restore_ui(ui, s, cmds) {
                return;
            }
            if !s.has_identity {
                ui.label("Create your identity. It never leaves this device unencrypted.");
                labelled_edit(
                    ui,
                    "Display name",
                    egui::TextEdit::singleline(&mut s.login.name),
                );
            } else {
                ui.label("Unlock your identity.");
            }
            let pass = labelled_edit(
                ui,
                "Passphrase",
                egui::TextEdit::singleline(&mut s.login.passphrase).password(true),
            );
            let enter = pass.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter));
            let button = if s.has_identity {
                "Unlock"
            } else {
                "Create identity"
            };
            if ui.button(button).clicked() || enter {
                cmds.extend(s.on_login());
            }
            if !s.has_identity {
                crate::ui::settings::restore_button_ui(ui, s);
            }
        });
        if starting {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Opening the identity and starting the node...");
            });
        }
        if let Some(e) = &s.login.error {
            ui.colored_label(Color32::from_rgb(230, 80, 80), e);
        }
    });
}

fn main_ui(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    if s.prepare_emoji(ctx) {
        ctx.request_repaint();
    }
    crate::ui::verify::banner_ui(ctx, s, cmds);
    crate::ui::verify::safety_window_ui(ctx, s, cmds);
    crate::ui::settings::settings_window_ui(ctx, s, cmds);
    status_ui(ctx, s, cmds);
    guild_bar_ui(ctx, s, cmds);
    sidebar_ui(ctx, s, cmds);
    if s.guild.is_some()
        && let Some((user, name)) = members_ui(ctx, s)
    {
        cmds.extend(s.verify.on_open(&user, &name));
    }
    egui::CentralPanel::default().show(ctx, |ui| {
        egui::TopBottomPanel::bottom("composer").show_inside(ui, |ui| composer_ui(ui, s, cmds));
        crate::ui::verify::dm_header_ui(ui, s, cmds);
        messages_ui(ui, s, cmds);
    });
    crate::ui::channels::new_channel_dialog(ctx, s, cmds);
    crate::ui::guild_settings::settings_window(ctx, s, cmds);
    link_confirm_ui(ctx, s);
    crate::ui::messages::confirm_delete_ui(ctx, s, cmds);
    crate::ui::messages::threads_windows_ui(ctx, s, cmds);
    crate::ui::messages::pins_window_ui(ctx, s);
    crate::ui::messages::search_window_ui(ctx, s, cmds);
    crate::ui::files::attach_window_ui(ctx, s);
    crate::ui::files::save_window_ui(ctx, s, cmds);
    crate::ui::files::drop_ui(ctx, s);
}

/// The window a clicked link opens: its full real target, and the user's choice. The app never
/// fetches a link; "Open" hands it to the browser.
fn link_confirm_ui(ctx: &egui::Context, s: &mut AppState) {
    let Some(url) = s.link_confirm.clone() else {
        return;
    };
    let mut close = false;
    egui::Window::new("Open link?")
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
        .show(ctx, |ui| {
            ui.label("This link leads to:");
            ui.add(egui::Label::new(RichText::new(&url).monospace().strong()).wrap());
            ui.label(
                RichText::new(
                    "SecureComm never opens links by itself: Open hands it to your browser.",
                )
                .small()
                .weak(),
            );
            ui.horizontal(|ui| {
                if ui.button("Open").clicked() {
                    ctx.open_url(egui::OpenUrl::new_tab(&url));
                    close = true;
                }
                if ui.button("Copy").clicked() {
                    ctx.copy_text(url.clone());
                    close = true;
                }
                if ui.button("Cancel").clicked() || ui.input(|i| i.key_pressed(Key::Escape)) {
                    close = true;
                }
            });
        });
    if close {
        s.link_confirm = None;
    }
}

fn status_ui(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    egui::TopBottomPanel::bottom("status").show(ctx, |ui| {
        let mut dismiss = None;
        for (i, e) in s.errors.iter().enumerate() {
            ui.horizontal(|ui| {
                ui.colored_label(Color32::from_rgb(230, 80, 80), e);
                if ui.small_button("Dismiss").clicked() {
                    dismiss = Some(i);
                }
            });
        }
        if let Some(i) = dismiss {
            s.errors.remove(i);
        }
        ui.horizontal(|ui| {
            let n = s.net;
            let (dot, colour) = match (n.direct, n.relayed) {
                (0, 0) => ("offline", Color32::GRAY),
                (_, 0) => ("direct", Color32::from_rgb(80, 200, 120)),
                (0, _) => ("relayed", Color32::from_rgb(230, 180, 60)),
                _ => ("direct + relayed", Color32::from_rgb(80, 200, 120)),
            };
            // A painted dot: the default fonts have no filled circle glyph.
            let (rect, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
            ui.painter().circle_filled(rect.center(), 4.5, colour);
            ui.label(format!(
                "{} peers ({} direct, {} relayed) · {dot} · relays: {} of {} reserved",
                n.direct + n.relayed,
                n.direct,
                n.relayed,
                n.relays_reserved,
                n.relays_known
            ));
            if let Some(me) = &s.me {
                ui.separator();
                ui.label(format!("{} · {}", me.display_name, short(&me.user_id)))
                    .on_hover_text(format!("user {}\npeer {}", me.user_id, me.peer_id));
                if ui.small_button("Copy my id").clicked() {
                    ui.ctx().copy_text(me.user_id.clone());
                }
            }
            ui.separator();
            if ui.small_button("Settings").clicked() {
                cmds.extend(s.settings.on_open());
            }
            if let Some(n) = s.settings.notices.back() {
                ui.label(format!("🔔 {n}"));
            }
        });
    });
}

fn guild_bar_ui(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    egui::SidePanel::left("guild_bar")
        .resizable(false)
        .exact_width(120.0)
        .show(ctx, |ui| {
            if ui
                .selectable_label(s.guild.is_none(), "Direct messages")
                .clicked()
            {
                cmds.extend(s.on_select_guild(None));
            }
            ui.separator();
            let mut pick = None;
            for g in &s.guilds {
                let text = if g.ready {
                    g.name.clone()
                } else {
                    format!("{} (joining)", g.name)
                };
                let text = unread_text(text, s.unread_guild(&g.id));
                if ui
                    .selectable_label(s.guild.as_deref() == Some(g.id.as_str()), text)
                    .clicked()
                {
                    pick = Some(g.id.clone());
                }
            }
            if let Some(g) = pick {
                cmds.extend(s.on_select_guild(Some(g)));
            }
            ui.separator();
            let l = ui.label("Guild name");
            let r = ui
                .add(egui::TextEdit::singleline(&mut s.new_guild).desired_width(110.0))
                .labelled_by(l.id);
            let enter = r.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter));
            if ui.button("Create guild").clicked() || enter {
                cmds.extend(s.on_create_guild());
            }
        });
}

fn sidebar_ui(ctx: &egui::Context, s: &mut AppState, cmds: &mut Vec<Command>) {
    egui::SidePanel::left("channels")
        .resizable(true)
        .default_width(200.0)
        .show(ctx, |ui| {
            if crate::ui::voice::panel_shown(s) {
                egui::TopBottomPanel::bottom("voice_panel")
                    .show_inside(ui, |ui| crate::ui::voice::panel_ui(ui, s, cmds));
            }
            match s.guild.clone() {
                Some(gid) => channels_ui(ui, s, &gid, cmds),
                None => dm_list_ui(ui, s, cmds),
            }
        });
}

fn channels_ui(ui: &mut egui::Ui, s: &mut AppState, gid: &str, cmds: &mut Vec<Command>) {
    let name = s
        .guilds
        .iter()
        .find(|g| g.id == gid)
        .map_or_else(|| short(gid), |g| g.name.clone());
    ui.heading(name);
    crate::ui::channels::header_buttons(ui, s, cmds);
    ui.separator();
    crate::ui::channels::channel_list(ui, s, gid, cmds);
    ui.separator();
    let r = labelled_edit(
        ui,
        "Channel name",
        egui::TextEdit::singleline(&mut s.new_channel).desired_width(110.0),
    );
    let enter = r.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter));
    // Disabled only once the guild's data says so (the node refuses clearly anyway).
    let why = s
        .guild_data()
        .and_then(|_| s.lacks(crate::state::manage::perm("manage_channels")));
    if crate::ui::guarded_button(ui, "Create channel", why.as_deref()) || (enter && why.is_none()) {
        cmds.extend(s.on_create_channel());
    }
    ui.separator();
    let why = s
        .guild_data()
        .and_then(|_| s.lacks(crate::state::manage::perm("create_invite")));
    if crate::ui::guarded_button(ui, "Create invite", why.as_deref()) {
        cmds.extend(s.on_create_invite());
    }
    if let Some(code) = s.invites.get(gid) {
        ui.label("Invite code:");
        ui.add(
            egui::Label::new(RichText::new(short_code(code)).monospace())
                .sense(egui::Sense::hover()),
        )
        .on_hover_text(code.as_str());
        if ui.button("Copy invite code").clicked() {
            ui.ctx().copy_text(code.clone());
        }
    }
    ui.separator();
    join_ui(ui, s, cmds);
}

/// A name with its unread marker: bold with the count, red when one mentions us.
pub(crate) fn unread_text(name: String, (count, mention): (u32, bool)) -> RichText {
    match (count, mention) {
        (0, _) => RichText::new(name),
        (n, false) => RichText::new(format!("{name}  {n}")).strong(),
        (n, true) => RichText::new(format!("{name}  @{n}"))
            .strong()
            .color(Color32::from_rgb(240, 90, 90)),
    }
}

fn short_code(code: &str) -> String {
    if code.chars().count() > 24 {
        let head: String = code.chars().take(24).collect();
        format!("{head}…")
    } else {
        code.to_owned()
    }
}

fn join_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    labelled_edit(
        ui,
        "Invite code",
        egui::TextEdit::singleline(&mut s.join_code).desired_width(110.0),
    );
    if ui.button("Join guild").clicked() {
        cmds.extend(s.on_join());
    }
    if !s.joining.is_empty() {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(format!(
                "Joining {}: waiting for the inviter...",
                s.joining.len()
            ));
        });
    }
}

fn dm_list_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    ui.heading("Direct messages");
    ui.separator();
    let mut users: Vec<&String> = s.dms.keys().collect();
    users.sort();
    let mut pick = None;
    for u in users {
        let selected = matches!(&s.view, View::Dm { user } if user == u);
        let label = unread_text(s.name_of(u), (s.unread_dm(u), false));
        if ui.selectable_label(selected, label).clicked() {
            pick = Some(u.clone());
        }
    }
    if let Some(u) = pick {
        cmds.extend(s.on_select_dm(&u));
    }
    ui.separator();
    labelled_edit(
        ui,
        "User id",
        egui::TextEdit::singleline(&mut s.new_dm).desired_width(110.0),
    );
    if ui.button("Open DM").clicked() {
        cmds.extend(s.on_new_dm());
    }
    ui.separator();
    join_ui(ui, s, cmds);
}

/// Draws the member list; returns the member whose name was clicked (user, name).
fn members_ui(ctx: &egui::Context, s: &AppState) -> Option<(String, String)> {
    let mut clicked = None;
    egui::SidePanel::right("members")
        .resizable(true)
        .default_width(180.0)
        .show(ctx, |ui| clicked = crate::ui::members::member_list(ui, s));
    clicked
}

fn composer_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    let id = egui::Id::new("composer");
    let focused = ui.ctx().memory(|m| m.has_focus(id));
    // Enter sends; Shift+Enter falls through to the text edit as a new line.
    let send = focused
        && ui.input_mut(|i| {
            let before = i.events.len();
            i.events.retain(|e| {
                !matches!(
                    e,
                    egui::Event::Key {
                        key: Key::Enter,
                        pressed: true,
                        modifiers,
                        ..
                    } if !modifiers.shift
                )
            });
            i.events.len() != before
        });
    let hint = match &s.view {
        View::Empty => "Pick a channel".to_owned(),
        View::Channel { .. } => "Message (Enter sends, Shift+Enter new line)".to_owned(),
        View::Dm { user } => format!("Message {}", s.name_of(user)),
    };
    ui.add_space(4.0);
    if let Some(t) = s.typing_line() {
        ui.label(egui::RichText::new(t).small().weak());
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_secs(1));
    }
    crate::ui::messages::action_bar_ui(ui, s, cmds);
    crate::ui::files::attachments_ui(ui, s);
    ui.horizontal(|ui| {
        let l = ui.label("Message");
        let edit = ui
            .add(
                egui::TextEdit::multiline(&mut s.composer)
                    .id(id)
                    .return_key(egui::KeyboardShortcut::new(
                        egui::Modifiers::SHIFT,
                        Key::Enter,
                    ))
                    .hint_text(hint)
                    .desired_rows(2)
                    .desired_width(f32::INFINITY),
            )
            .labelled_by(l.id);
        if edit.changed() {
            cmds.extend(s.on_composer_changed());
        }
    });
    if send {
        cmds.extend(s.on_send());
    }
}

fn messages_ui(ui: &mut egui::Ui, s: &mut AppState, cmds: &mut Vec<Command>) {
    let title = match &s.view {
        View::Empty => "No channel selected".to_owned(),
        View::Channel { guild, channel } => s
            .channels
            .get(guild)
            .and_then(|cs| cs.iter().find(|c| c.id == *channel))
            .map_or_else(|| "#?".to_owned(), |c| format!("# {}", c.name)),
        View::Dm { user } => format!("@ {}", s.name_of(user)),
    };
    ui.horizontal(|ui| {
        ui.heading(title);
        crate::ui::messages::threads_button_ui(ui, s, cmds);
        if let View::Dm { user } = s.view.clone()
            && ui
                .button("📞 Call")
                .on_hover_text("A voice call with this user, end to end encrypted")
                .clicked()
        {
            cmds.extend(s.voice.on_call(&user, &s.settings.prefs.voice));
        }
    });
    ui.separator();
    let pending = s.pending_rows();
    let key = match &s.view {
        View::Channel { guild, channel } => Some((guild.clone(), *channel)),
        _ => None,
    };
    // Rows laid in front since the last frame push the scroll offset down by as many rows.
    let previews = s.settings.prefs.show_previews;
    let (added, settled) =
        key.as_ref()
            .and_then(|k| s.timelines.get_mut(k))
            .map_or((0, false), |t| {
                t.frames_shown = t.frames_shown.saturating_add(1);
                t.set_previews(previews);
                (std::mem::take(&mut t.rows_added_front), t.frames_shown > 3)
            });
    let Some(t) = s.current_timeline() else {
        if pending.is_empty() {
            ui.label("No messages yet.");
        }
        let mut actions = Vec::new();
        for row in &pending {
            row_ui(ui, s, row, &mut actions);
        }
        apply_row_actions(ui.ctx(), s, actions, cmds);
        return;
    };
    let loading = t.loading_older;
    let rows = t.rows();
    let mut jumped: Option<String> = None;
    let total = rows.len() + pending.len();
    let row_height = ui.text_style_height(&TextStyle::Body);
    let step = row_height + ui.spacing().item_spacing.y;
    // One scroll state per conversation (ScrollArea's own id: the salt, made persistent).
    let salt = format!("messages {:?}", s.view);
    let mut area = egui::ScrollArea::vertical()
        .id_salt(&salt)
        .auto_shrink([false, false])
        .stick_to_bottom(true);
    if added > 0
        && let Some(state) =
            egui::scroll_area::State::load(ui.ctx(), ui.make_persistent_id(egui::Id::new(&salt)))
    {
        #[allow(clippy::cast_precision_loss)] // row counts far below 2^24
        let shift = added as f32 * step;
        area = area.vertical_scroll_offset(state.offset.y + shift);
    }
    // A search result's "Jump": once the timeline holds the message, scroll to its first row
    // and select it.
    if let Some(id) = s.messages.jump_to.clone()
        && let Some(at) = rows.iter().position(|r| match r {
            Row::Line { msg, .. }
            | Row::Reply { msg, .. }
            | Row::Meta { msg, .. }
            | Row::File { msg, .. } => *msg == id,
            _ => false,
        })
    {
        #[allow(clippy::cast_precision_loss)] // row counts far below 2^24
        let y = (at.saturating_sub(2)) as f32 * step;
        area = area.vertical_scroll_offset(y).stick_to_bottom(false);
        jumped = Some(id);
    }
    let mut actions = Vec::new();
    let mut near_top = false;
    area.show_rows(ui, row_height, total, |ui, range| {
        near_top = settled && range.start < PREFETCH_ROWS;
        if range.start == 0 && loading {
            ui.label(RichText::new("Loading older messages...").weak());
        }
        for i in range {
            match rows.get(i).or_else(|| pending.get(i - rows.len())) {
                Some(row) => row_ui(ui, s, row, &mut actions),
                None => break,
            }
        }
    });
    apply_row_actions(ui.ctx(), s, actions, cmds);
    if let Some(id) = jumped {
        s.messages.jump_to = None;
        s.messages.selected = Some(id);
    }
    if near_top {
        cmds.extend(s.on_near_top());
    }
}

/// What a click on a row asks for.
enum RowAction {
    Retry(u64),
    Discard(u64),
    /// Show spoiler `.1` of message `.0`.
    Reveal(String, u32),
    /// Ask whether to open this link.
    Link(String),
    /// Select (or unselect) a message.
    Select(String),
    /// Toggle our reaction `.1` on message `.0`.
    React(String, String),
    /// A file card or preview asks for something.
    File(crate::ui::files::FileAction),
}

fn apply_row_actions(
    ctx: &egui::Context,
    s: &mut AppState,
    actions: Vec<RowAction>,
    cmds: &mut Vec<Command>,
) {
    use crate::ui::files::FileAction;
    let mut decoded = 0;
    for a in actions {
        match a {
            RowAction::Retry(local) => cmds.extend(s.on_retry(local)),
            RowAction::Discard(local) => s.on_discard(local),
            RowAction::Reveal(msg, n) => s.on_reveal_spoiler(&msg, n),
            RowAction::Link(url) => s.on_link_clicked(&url),
            RowAction::Select(msg) => s.on_select_message(&msg),
            RowAction::React(msg, emoji) => cmds.extend(s.on_react(&msg, &emoji)),
            RowAction::File(FileAction::Download(root)) => cmds.extend(s.on_download(&root)),
            RowAction::File(FileAction::Save(root, name)) => s.on_open_save(&root, &name),
            RowAction::File(FileAction::Visible(msg, root)) => {
                // A few per frame; the rest ask again next frame.
                if decoded >= crate::state::files::DECODES_PER_FRAME {
                    ctx.request_repaint();
                } else if s.on_preview_visible(ctx, &msg, &root) {
                    decoded += 1;
                    ctx.request_repaint();
                }
            }
        }
    }
}

fn row_ui(ui: &mut egui::Ui, s: &AppState, row: &Row, actions: &mut Vec<RowAction>) {
    match row {
        Row::Pending { local, failed } => {
            ui.horizontal(|ui| {
                ui.label(
                    RichText::new("You")
                        .strong()
                        .color(ui.visuals().strong_text_color()),
                );
                match failed {
                    None => {
                        ui.label(RichText::new("sending...").small().weak());
                    }
                    Some(why) => {
                        ui.colored_label(
                            Color32::from_rgb(230, 80, 80),
                            RichText::new(format!("not sent: {why}")).small(),
                        );
                        if ui.small_button("Retry").clicked() {
                            actions.push(RowAction::Retry(*local));
                        }
                        if ui.small_button("Discard").clicked() {
                            actions.push(RowAction::Discard(*local));
                        }
                    }
                }
            });
        }
        Row::Header { author, time } => {
            ui.horizontal(|ui| {
                ui.label(
                    RichText::new(author)
                        .strong()
                        .color(ui.visuals().strong_text_color()),
                );
                ui.label(RichText::new(time).small().weak());
            });
        }
        Row::Line {
            msg,
            kind,
            spans,
            quote,
        } => line_ui(ui, s, msg, *kind, spans, *quote, actions),
        Row::Reply { quote, .. } => crate::ui::messages::reply_row_ui(ui, quote),
        Row::Meta {
            msg,
            reactions,
            edited,
            pinned,
        } => {
            if let Some(emoji) =
                crate::ui::messages::meta_row_ui(ui, s, reactions, *edited, *pinned)
            {
                actions.push(RowAction::React(msg.clone(), emoji));
            }
        }
        Row::File {
            root,
            name,
            mime,
            size,
            state,
            ..
        } => {
            let mut fa = Vec::new();
            crate::ui::files::file_row_ui(ui, s, root, name, mime, *size, state, &mut fa);
            actions.extend(fa.into_iter().map(RowAction::File));
        }
        Row::Preview {
            msg,
            root,
            name,
            part,
            parts,
            size,
        } => {
            let mut fa = Vec::new();
            crate::ui::files::preview_row_ui(ui, s, msg, root, name, *part, *parts, *size, &mut fa);
            actions.extend(fa.into_iter().map(RowAction::File));
        }
        Row::Gap => {
            let h = ui.text_style_height(&TextStyle::Body);
            ui.allocate_exact_size(egui::vec2(0.0, h), egui::Sense::hover());
        }
        Row::Code(text) => {
            ui.add(
                egui::Label::new(
                    RichText::new(if text.is_empty() { " " } else { text.as_str() })
                        .monospace()
                        .background_color(ui.visuals().code_bg_color),
                )
                .truncate(),
            );
        }
    }
}

/// One line of a message. It takes exactly one row's height whatever its font (a header's
/// larger text spills into the [`Row::Gap`] below it), so every row has the same height.
/// Plain runs of spans are one label; links, mentions and hidden spoilers are widgets of their
/// own, to be clicked or highlighted.
fn line_ui(
    ui: &mut egui::Ui,
    s: &AppState,
    msg: &str,
    kind: LineKind,
    spans: &[Span],
    quote: bool,
    actions: &mut Vec<RowAction>,
) {
    let row_height = ui.text_style_height(&TextStyle::Body);
    // The whole row selects its message (message actions); spoilers and links drawn on it
    // below sit on top and take their own clicks.
    let (rect, row) = ui.allocate_exact_size(
        egui::vec2(ui.available_width(), row_height),
        egui::Sense::click(),
    );
    // Named by the message's id, not its text: the text is read from the line itself, and a
    // label must not carry a spoiler's hidden words.
    row.widget_info(|| {
        egui::WidgetInfo::labeled(
            egui::WidgetType::Button,
            true,
            format!("Select message {}", msg.get(..8).unwrap_or(msg)),
        )
    });
    if row.clicked() {
        actions.push(RowAction::Select(msg.to_owned()));
    }
    if s.messages.selected.as_deref() == Some(msg) {
        ui.painter().rect_filled(
            rect,
            2.0,
            ui.visuals().selection.bg_fill.gamma_multiply(0.35),
        );
    }
    let mut line = ui.new_child(
        egui::UiBuilder::new()
            .max_rect(rect)
            .layout(egui::Layout::left_to_right(egui::Align::Min)),
    );
    let ui = &mut line;
    ui.spacing_mut().item_spacing.x = 0.0;
    ui.style_mut().wrap_mode = Some(egui::TextWrapMode::Truncate);
    let body = TextStyle::Body.resolve(ui.style());
    let weak = ui.visuals().weak_text_color();
    let (size, color) = match kind {
        LineKind::Header(1) => (body.size * 1.7, ui.visuals().strong_text_color()),
        LineKind::Header(2) => (body.size * 1.4, ui.visuals().strong_text_color()),
        LineKind::Header(_) => (body.size * 1.15, ui.visuals().strong_text_color()),
        LineKind::Subtext => (body.size * 0.8, weak),
        LineKind::Text | LineKind::Item { .. } => (body.size, ui.visuals().text_color()),
    };
    let font = FontId::new(size, body.family.clone());
    let mono = FontId::monospace(size);
    if quote {
        // The quote bar from the monospace font (Hack has box drawing; the proportional
        // default font does not).
        ui.label(RichText::new("\u{2502} ").font(mono.clone()).color(weak));
    }
    if let LineKind::Item { depth, number } = kind {
        ui.add_space(8.0 + 16.0 * f32::from(depth));
        let marker = number.map_or_else(|| "\u{2022} ".to_owned(), |n| format!("{n}. "));
        ui.label(RichText::new(marker).font(font.clone()).color(weak));
    }
    let header = matches!(kind, LineKind::Header(_));
    let fmt = |ui: &egui::Ui, sp: &Span| {
        let mut f = TextFormat::simple(font.clone(), color);
        if sp.style.bold || header {
            f.color = ui.visuals().strong_text_color();
        }
        f.italics = sp.style.italic;
        if sp.style.strike {
            f.strikethrough = egui::Stroke::new(1.0, color);
        }
        if sp.style.underline {
            f.underline = egui::Stroke::new(1.0, color);
        }
        if sp.style.code {
            f.font_id = mono.clone();
            f.background = ui.visuals().code_bg_color;
        }
        f
    };
    let mut plain = LayoutJob::default();
    let flush = |ui: &mut egui::Ui, job: &mut LayoutJob| {
        if !job.is_empty() {
            ui.add(egui::Label::new(std::mem::take(job)));
        }
    };
    for sp in spans {
        let hidden = sp.spoiler.filter(|&n| !s.is_revealed(msg, n));
        if hidden.is_none() && sp.link.is_none() && sp.mention.is_none() {
            plain.append(&sp.text, 0.0, fmt(ui, sp));
            continue;
        }
        flush(ui, &mut plain);
        let mut f = fmt(ui, sp);
        if let Some(n) = hidden {
            // A dark box as wide as the hidden text; the text itself is never laid out where
            // a screen reader could read it.
            let galley = ui
                .painter()
                .layout_job(LayoutJob::single_section(sp.text.clone(), f));
            let (rect, resp) = ui.allocate_exact_size(galley.size(), egui::Sense::click());
            // Darker than text, lighter than a dark theme's background: visible on both.
            let gray = if resp.hovered() { 84 } else { 64 };
            ui.painter()
                .rect_filled(rect, 3.0, Color32::from_gray(gray));
            resp.widget_info(|| {
                egui::WidgetInfo::labeled(egui::WidgetType::Button, true, "spoiler")
            });
            if resp.on_hover_text("Spoiler: click to show").clicked() {
                actions.push(RowAction::Reveal(msg.to_owned(), n));
            }
            continue;
        }
        if let Some(m) = &sp.mention {
            let accent = ui.visuals().hyperlink_color;
            f.color = accent;
            f.background = accent.gamma_multiply(0.2);
            ui.label(LayoutJob::single_section(s.mention_label(m), f));
            continue;
        }
        if let Some(url) = &sp.link {
            // Shown, never fetched; a click asks first, showing the real target.
            let accent = ui.visuals().hyperlink_color;
            f.color = accent;
            f.underline = egui::Stroke::new(1.0, accent);
            let resp = ui
                .add(
                    egui::Label::new(LayoutJob::single_section(sp.text.clone(), f))
                        .sense(egui::Sense::click()),
                )
                .on_hover_cursor(egui::CursorIcon::PointingHand)
                .on_hover_text(url.as_str());
            resp.widget_info(|| egui::WidgetInfo::labeled(egui::WidgetType::Link, true, &sp.text));
            if resp.clicked() {
                actions.push(RowAction::Link(url.clone()));
            }
        }
    }
    flush(ui, &mut plain);
}
