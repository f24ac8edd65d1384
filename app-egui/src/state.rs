//! Everything the window shows, and the one place it changes.
//!
//! [`AppState::apply`] folds a backend [`Event`] into the state; the `on_*` methods are the
//! user's actions. Both return the [`Command`]s to send to the node, so this module needs no
//! node, no window and no runtime: it is plain data a test can drive.
//!
//! Messages of a channel live in a [`Timeline`] that keeps, next to the messages, their
//! pre-laid-out display [`Row`]s (author header, one row per line, code lines). Every row has the
//! same height, which is what lets the view lay out only the visible ones.

use std::collections::{HashMap, HashSet, VecDeque};

use securecomm_node::markdown::{self, Block, LineKind, Mention, Span};

use crate::backend::{
    Before, ChannelInfo, Command, Delivery, DmMessage, Event, FileCard, GuildInfo, Me, MemberInfo,
    Message, Passphrase,
};

pub mod emoji;
pub mod files;
pub mod manage;
pub mod messages;

/// A new author header starts after this much silence from the same author (ms).
pub const GROUP_GAP_MS: u64 = 7 * 60 * 1000;
/// Spoilers kept revealed; beyond it further clicks reveal nothing more (a bound, not a
/// limit anyone reaches by reading).
pub const MAX_REVEALED: usize = 10_000;
/// Errors kept for display; older ones are dropped.
pub const MAX_ERRORS: usize = 8;
/// Messages kept per channel or DM conversation (the oldest are dropped beyond it).
pub const MAX_TIMELINE: usize = 200_000;
/// Messages requested when a channel is opened: many screens' worth, and small enough that
/// opening a channel stays well under a second (frame bench: the 10,000 this was took 1.4 s
/// from unlock to the first frame showing them, most of it loading and laying out the page).
pub const HISTORY_LIMIT: usize = 2_000;
/// Messages per page of older history, requested when the view nears the oldest row loaded
/// (laid out on the UI thread in one frame: 5,000 made that frame take about 20 ms).
pub const OLDER_PAGE: usize = 1_000;
/// A page of older history is requested when fewer rows than this are above the view.
pub const PREFETCH_ROWS: usize = 500;
/// Messages waiting to be sent (or failed, waiting for a retry) before the composer refuses.
pub const MAX_OUTBOX: usize = 100;
/// Conversations with an unread marker (beyond it, new conversations get none).
pub const MAX_UNREAD: usize = 4096;
/// Largest preview, in points: thumbnails are scaled down to fit.
pub const PREVIEW_MAX: (f32, f32) = (320.0, 160.0);
/// Preview rows are counted at this row height (the body text's row plus spacing in the
/// default style); the view fits the image to the rows it gets.
const NOMINAL_ROW_STEP: f32 = 20.0;

/// Which screen is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Create or unlock an identity.
    Login,
    /// The identity is being created or unlocked and the node started.
    Starting,
    /// The node runs.
    Main,
}

/// One display row of a timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// Author and time, at the start of a group of messages.
    Header {
        /// The author's name.
        author: String,
        /// Formatted time.
        time: String,
    },
    /// One line of text.
    Line {
        /// The message's id (`outbox N` for one not yet sent), which with a span's spoiler number
        /// names a spoiler the user revealed.
        msg: String,
        /// Header, list item, subtext or plain text.
        kind: LineKind,
        /// Its styled spans.
        spans: Vec<Span>,
        /// Whether it is a `> quote`.
        quote: bool,
    },
    /// Space below a header line, whose text is taller than one row: rows keep one height so
    /// the view can lay out only the visible ones, and a header takes two.
    Gap,
    /// One line of a code block.
    Code(String),
    /// Above a reply: who and what it answers (or that the original is gone).
    Reply {
        /// The reply's id.
        msg: String,
        /// "author: first words", or a note that the original is not here.
        quote: String,
    },
    /// Below a message with any: its reactions (emoji, count, whether ours), the edited mark
    /// and the pin mark.
    Meta {
        /// The message's id.
        msg: String,
        /// Reactions in the order they came.
        reactions: Vec<(String, usize, bool)>,
        /// Edited by its author.
        edited: bool,
        /// Pinned in its channel.
        pinned: bool,
    },
    /// One attached file: type icon, name, size, and its state and action (Download, the
    /// progress, Save as).
    File {
        /// The message's id (`outbox N` while sending).
        msg: String,
        /// The file (hex root; empty while sending).
        root: String,
        /// Its name.
        name: String,
        /// Its media type.
        mime: String,
        /// Its size in bytes.
        size: u64,
        /// Its state when the message was loaded (`sending` or `unsent` in the outbox).
        state: String,
    },
    /// One strip of an image's preview: a preview spans `parts` rows, each drawing its own
    /// slice, so every row keeps one height and the view still lays out only visible rows.
    Preview {
        /// The message's id.
        msg: String,
        /// The file (hex root).
        root: String,
        /// Its name.
        name: String,
        /// Which strip, from 0.
        part: u8,
        /// Strips in all.
        parts: u8,
        /// The thumbnail's size in pixels.
        size: (u16, u16),
    },
    /// The header of one of our messages not yet sent (or failed, with `why`).
    Pending {
        /// The outbox id.
        local: u64,
        /// Why the last attempt failed; `None` while sending.
        failed: Option<String>,
    },
}

/// A message typed here and not yet confirmed by the node: shown below the timeline as
/// "sending", or "failed" with Retry and Discard. Nothing typed is lost on a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The UI's id for it.
    pub local: u64,
    /// Where it goes.
    pub view: View,
    /// The text.
    pub text: String,
    /// Why the last attempt failed.
    pub failed: Option<String>,
    /// The message it replies to.
    pub reply_to: Option<String>,
    /// Files sent with it.
    pub files: Vec<files::Attached>,
}

impl Outgoing {
    /// Its display rows: a pending header, then the text's rows.
    pub fn rows(&self) -> Vec<Row> {
        let e = Entry {
            id: format!("outbox {}", self.local),
            sender: String::new(),
            author: String::new(),
            sent_at: 0,
            text: self.text.clone(),
            device: String::new(),
            seq: 0,
            delivery: None,
            ..Default::default()
        };
        let mut rows = vec![Row::Pending {
            local: self.local,
            failed: self.failed.clone(),
        }];
        // `prev == e` groups it, so no author header: the pending header stands in.
        push_rows(&mut rows, Some(&e), &e, |_| None, false);
        rows.extend(self.files.iter().map(|f| {
            Row::File {
                msg: e.id.clone(),
                root: String::new(),
                name: f.name.clone(),
                mime: securecomm_node::files::mime_for(&f.name).to_owned(),
                size: f.size,
                state: if self.failed.is_some() {
                    "unsent"
                } else {
                    "sending"
                }
                .into(),
            }
        }));
        rows
    }

    fn command(&self) -> Option<Command> {
        match &self.view {
            View::Channel { guild, channel } => Some(Command::Send {
                guild: guild.clone(),
                channel: *channel,
                text: self.text.clone(),
                local: self.local,
                reply_to: self.reply_to.clone(),
                files: self.files.iter().map(|f| f.path.clone()).collect(),
            }),
            View::Dm { user } => Some(Command::DmSend {
                user: user.clone(),
                text: self.text.clone(),
                local: self.local,
            }),
            View::Empty => None,
        }
    }
}

/// A message in a timeline, whatever its source (guild channel or DM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Message id.
    pub id: String,
    /// Who wrote it (user id hex; "me" for own DMs).
    pub sender: String,
    /// The name shown.
    pub author: String,
    /// Sender's clock, ms.
    pub sent_at: u64,
    /// The text.
    pub text: String,
    /// Sending device (hex; empty for DMs).
    pub device: String,
    /// The device's sequence number (0 for DMs).
    pub seq: u64,
    /// Receipts, for our own messages loaded from history.
    pub delivery: Option<Delivery>,
    /// The message it replies to.
    pub reply_to: Option<String>,
    /// Edited by its author.
    pub edited: bool,
    /// Reactions: emoji and who, in the order they came.
    pub reactions: Vec<(String, Vec<String>)>,
    /// Pinned in its channel.
    pub pinned: bool,
    /// The node says it notifies us.
    pub mentions_me: bool,
    /// Our own user id (hex), when known: marks our reactions.
    pub me: Option<String>,
    /// Attached files.
    pub files: Vec<FileCard>,
}

impl From<Message> for Entry {
    fn from(m: Message) -> Self {
        let author = if m.nickname.is_empty() {
            short(&m.sender)
        } else {
            m.nickname
        };
        Self {
            id: m.id,
            sender: m.sender,
            author,
            sent_at: m.sent_at,
            text: m.text,
            device: m.sender_device,
            seq: m.seq,
            delivery: m.delivery,
            reply_to: m.reply_to,
            edited: m.edited_at.is_some(),
            reactions: m
                .reactions
                .into_iter()
                .map(|r| (r.emoji, r.users))
                .collect(),
            pinned: m.pinned,
            mentions_me: m.mentions_me,
            me: None,
            files: m.files,
        }
    }
}

/// Messages of one channel or conversation, oldest first, with their display rows.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    entries: VecDeque<Entry>,
    ids: HashSet<String>,
    rows: VecDeque<Row>,
    /// The node has nothing older than the first entry.
    pub exhausted: bool,
    /// A page of older history was requested and has not arrived.
    pub loading_older: bool,
    /// Rows put in front of the first row since the view last looked: it moves its scroll
    /// offset down by as many rows, so what the user reads stays in place.
    pub rows_added_front: usize,
    /// Frames this timeline has been drawn (saturating): older pages are fetched only once the
    /// view has settled at the bottom, not on the first frame, which starts at the top.
    pub frames_shown: u32,
    /// Image previews are not laid out ("Show image previews" is off).
    hide_previews: bool,
}

impl Timeline {
    /// The messages, oldest first.
    pub fn entries(&self) -> &VecDeque<Entry> {
        &self.entries
    }

    /// The display rows.
    pub fn rows(&self) -> &VecDeque<Row> {
        &self.rows
    }

    /// Lays out image previews or not (the "Show image previews" setting); rebuilds the rows
    /// when that changes.
    pub fn set_previews(&mut self, on: bool) {
        if self.hide_previews == on {
            self.hide_previews = !on;
            self.rebuild();
        }
    }

    /// Adds one message (ignored if already there). Appending is O(rows of the message);
    /// a message older than the newest rebuilds the rows.
    pub fn insert(&mut self, e: Entry) {
        if self.ids.contains(&e.id) {
            return;
        }
        self.ids.insert(e.id.clone());
        let in_order = self.entries.back().is_none_or(|l| l.sent_at <= e.sent_at);
        if in_order {
            let prev = self.entries.back().cloned();
            let original = |id: &str| self.find(id).cloned();
            let mut rows = Vec::new();
            push_rows(&mut rows, prev.as_ref(), &e, original, !self.hide_previews);
            self.rows.extend(rows);
            self.entries.push_back(e);
        } else {
            let at = self.entries.partition_point(|x| x.sent_at <= e.sent_at);
            self.entries.insert(at, e);
        }
        if self.entries.len() > MAX_TIMELINE {
            let drop = self.entries.len() - MAX_TIMELINE;
            for gone in self.entries.drain(..drop) {
                self.ids.remove(&gone.id);
            }
            self.rebuild();
        } else if !in_order {
            self.rebuild();
        }
    }

    /// Where the next page of older history starts.
    pub fn before(&self) -> Option<Before> {
        self.entries.front().map(|e| Before {
            sent_at: e.sent_at,
            device: e.device.clone(),
            seq: e.seq,
        })
    }

    /// Puts a page of older messages (oldest first, all older than the first entry) in
    /// front, laying out only the new rows: O(page + rows) however long the timeline.
    pub fn prepend(&mut self, page: Vec<Entry>) {
        let mut fresh: Vec<Entry> = page
            .into_iter()
            .filter(|e| !self.ids.contains(&e.id))
            .collect();
        fresh.sort_by_key(|e| e.sent_at);
        if fresh.is_empty() {
            return;
        }
        if self.entries.len() + fresh.len() > MAX_TIMELINE {
            // The bound on what a window holds: paging stops here (taking the page would drop
            // it again at once, as the oldest, and the view would ask for it forever).
            self.exhausted = true;
            return;
        }
        if self
            .entries
            .front()
            .zip(fresh.last())
            .is_some_and(|(first, last)| last.sent_at > first.sent_at)
        {
            // Not strictly older: the general (rebuilding) path.
            self.extend(fresh);
            return;
        }
        let mut rows = Vec::new();
        let mut prev: Option<&Entry> = None;
        for e in &fresh {
            let original = |id: &str| {
                fresh
                    .iter()
                    .find(|x| x.id == id)
                    .or_else(|| self.find(id))
                    .cloned()
            };
            push_rows(&mut rows, prev, e, original, !self.hide_previews);
            prev = Some(e);
        }
        let mut added = rows.len();
        if let (Some(last), Some(first)) = (fresh.last(), self.entries.front())
            && grouped(last, first)
            && matches!(self.rows.front(), Some(Row::Header { .. }))
        {
            // The old first message now continues the page's last group.
            self.rows.pop_front();
            added -= 1;
        }
        // Front insertion in O(page): both are ring buffers (a Vec moved every row, about
        // 24 MB per page at 100,000 messages, and made the page's frame take 14-26 ms).
        for r in rows.into_iter().rev() {
            self.rows.push_front(r);
        }
        self.rows_added_front += added;
        for e in &fresh {
            self.ids.insert(e.id.clone());
        }
        for e in fresh.into_iter().rev() {
            self.entries.push_front(e);
        }
    }

    /// Adds many messages (history), rebuilding the rows once.
    pub fn extend(&mut self, es: impl IntoIterator<Item = Entry>) {
        for e in es {
            if self.ids.insert(e.id.clone()) {
                self.entries.push_back(e);
            }
        }
        self.entries.make_contiguous().sort_by_key(|e| e.sent_at);
        if self.entries.len() > MAX_TIMELINE {
            let drop = self.entries.len() - MAX_TIMELINE;
            for gone in self.entries.drain(..drop) {
                self.ids.remove(&gone.id);
            }
        }
        self.rebuild();
    }

    fn rebuild(&mut self) {
        self.rows.clear();
        let by_id: HashMap<&str, &Entry> =
            self.entries.iter().map(|e| (e.id.as_str(), e)).collect();
        let mut prev: Option<&Entry> = None;
        for e in &self.entries {
            push_rows(
                &mut self.rows,
                prev,
                e,
                |id| by_id.get(id).copied().cloned(),
                !self.hide_previews,
            );
            prev = Some(e);
        }
    }

    /// A message by id.
    pub fn find(&self, id: &str) -> Option<&Entry> {
        if !self.ids.contains(id) {
            return None;
        }
        self.entries.iter().rev().find(|e| e.id == id)
    }

    /// Applies what another message did to one of ours (reaction, edit, pin); returns whether
    /// anything changed. The node stores the truth; this keeps the open view in step.
    pub fn apply_op(&mut self, op: &crate::backend::MessageOp) -> bool {
        use crate::backend::MessageOp;
        let target = match op {
            MessageOp::React { target, .. }
            | MessageOp::Edit { target, .. }
            | MessageOp::Pin { target, .. } => target,
        };
        if !self.ids.contains(target) {
            return false;
        }
        let Some(e) = self.entries.iter_mut().rev().find(|e| &e.id == target) else {
            return false;
        };
        match op {
            MessageOp::React {
                user, emoji, add, ..
            } => {
                let at = e.reactions.iter().position(|(x, _)| x == emoji);
                match (at, *add) {
                    (Some(i), true) => {
                        if !e.reactions[i].1.contains(user) {
                            e.reactions[i].1.push(user.clone());
                        }
                    }
                    (None, true) => e.reactions.push((emoji.clone(), vec![user.clone()])),
                    (Some(i), false) => {
                        e.reactions[i].1.retain(|u| u != user);
                        if e.reactions[i].1.is_empty() {
                            e.reactions.remove(i);
                        }
                    }
                    (None, false) => return false,
                }
            }
            MessageOp::Edit { text, .. } => {
                e.text.clone_from(text);
                e.edited = true;
            }
            MessageOp::Pin { pinned, .. } => e.pinned = *pinned,
        }
        self.rebuild();
        true
    }

    /// Removes an erased message; returns whether it was here.
    pub fn remove(&mut self, id: &str) -> bool {
        if !self.ids.remove(id) {
            return false;
        }
        self.entries.retain(|e| e.id != id);
        self.rebuild();
        true
    }
}

/// Whether `e` continues `prev`'s group (same author, little silence).
fn grouped(prev: &Entry, e: &Entry) -> bool {
    prev.sender == e.sender && e.sent_at.saturating_sub(prev.sent_at) <= GROUP_GAP_MS
}

/// The quote shown above a reply: "author: first words" of `original`, or why it is missing.
pub(crate) fn quote_of(original: Option<&Entry>) -> String {
    match original {
        Some(o) => {
            let first: String = o
                .text
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(80)
                .collect();
            format!("{}: {first}", o.author)
        }
        None => "the original message is not here (deleted, or older than what is loaded)".into(),
    }
}

fn push_rows(
    rows: &mut impl Extend<Row>,
    prev: Option<&Entry>,
    e: &Entry,
    original: impl FnOnce(&str) -> Option<Entry>,
    previews: bool,
) {
    if !prev.is_some_and(|p| grouped(p, e)) {
        rows.extend(std::iter::once(Row::Header {
            author: e.author.clone(),
            time: format_time(e.sent_at),
        }));
    }
    if let Some(r) = &e.reply_to {
        rows.extend(std::iter::once(Row::Reply {
            msg: e.id.clone(),
            quote: quote_of(original(r).as_ref()),
        }));
    }
    for block in markdown::parse(&e.text) {
        match block {
            Block::Line(line) => {
                let header = matches!(line.kind, LineKind::Header(1 | 2));
                rows.extend(std::iter::once(Row::Line {
                    msg: e.id.clone(),
                    kind: line.kind,
                    spans: line.spans,
                    quote: line.quote,
                }));
                if header {
                    rows.extend(std::iter::once(Row::Gap));
                }
            }
            Block::Code { text, .. } => {
                rows.extend(text.split('\n').map(|l| Row::Code(l.to_owned())));
            }
        }
    }
    for f in &e.files {
        rows.extend(std::iter::once(Row::File {
            msg: e.id.clone(),
            root: f.root.clone(),
            name: f.name.clone(),
            mime: f.mime.clone(),
            size: f.size,
            state: f.state.clone(),
        }));
        if let Some(size) = f.thumbnail.filter(|_| previews && f.thumb.is_some()) {
            let parts = preview_rows(size);
            rows.extend((0..parts).map(|part| Row::Preview {
                msg: e.id.clone(),
                root: f.root.clone(),
                name: f.name.clone(),
                part,
                parts,
                size,
            }));
        }
    }
    if e.edited || e.pinned || !e.reactions.is_empty() {
        rows.extend(std::iter::once(Row::Meta {
            msg: e.id.clone(),
            reactions: e
                .reactions
                .iter()
                .map(|(emoji, users)| (emoji.clone(), users.len(), e.mine_reacted(users)))
                .collect(),
            edited: e.edited,
            pinned: e.pinned,
        }));
    }
}

/// A preview's size in points: the thumbnail scaled down to fit [`PREVIEW_MAX`].
pub fn preview_size((w, h): (u16, u16)) -> (f32, f32) {
    let (w, h) = (f32::from(w.max(1)), f32::from(h.max(1)));
    let k = (PREVIEW_MAX.0 / w).min(PREVIEW_MAX.1 / h).min(1.0);
    (w * k, h * k)
}

/// Rows a preview of a thumbnail this size spans.
fn preview_rows(size: (u16, u16)) -> u8 {
    let (_, h) = preview_size(size);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 1..=8
    let n = (h / NOMINAL_ROW_STEP).ceil().clamp(1.0, 8.0) as u8;
    n
}

impl Entry {
    /// Whether our user is among `users` (set through [`Entry::me`]).
    fn mine_reacted(&self, users: &[String]) -> bool {
        self.me
            .as_ref()
            .is_some_and(|me| users.iter().any(|u| u == me))
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) for a time in ms since the Unix epoch.
pub fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's days-to-civil, unsigned).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The first 8 hex digits of an id, for display.
pub fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

/// The connection indicator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStatus {
    /// Peers over a direct connection.
    pub direct: usize,
    /// Peers reached only through a relay.
    pub relayed: usize,
    /// Relays holding a reservation for us (we are reachable through them).
    pub relays_reserved: usize,
    /// Relays known (configured or discovered).
    pub relays_known: usize,
}

/// What is selected in the middle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Nothing yet.
    Empty,
    /// A guild channel.
    Channel {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
    },
    /// A DM conversation.
    Dm {
        /// The other user (hex).
        user: String,
    },
}

/// Where unread messages wait.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Unread {
    /// A guild channel.
    Channel(String, u64),
    /// A DM conversation.
    Dm(String),
}

/// The login form. Its `Debug` never shows the passphrase.
#[derive(Default)]
pub struct LoginForm {
    /// Display name (create only).
    pub name: String,
    /// Passphrase (cleared after each attempt).
    pub passphrase: String,
    /// The last failure, shown under the form.
    pub error: Option<String>,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginForm")
            .field("name", &self.name)
            .field("passphrase", &"<redacted>")
            .field("error", &self.error)
            .finish()
    }
}

impl Drop for LoginForm {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.passphrase);
    }
}

/// The whole UI state.
#[derive(Debug)]
pub struct AppState {
    /// Current screen.
    pub phase: Phase,
    /// Whether the data folder holds an identity (unlock rather than create).
    pub has_identity: bool,
    /// The data folder shown on the login screen.
    pub data_dir: String,
    /// Login form.
    pub login: LoginForm,
    /// Who we are, once started.
    pub me: Option<Me>,
    /// Guilds, in the node's order.
    pub guilds: Vec<GuildInfo>,
    /// Selected guild (hex id); `None` shows the DM list.
    pub guild: Option<String>,
    /// Channels per guild.
    pub channels: HashMap<String, Vec<ChannelInfo>>,
    /// Members per guild.
    pub members: HashMap<String, Vec<MemberInfo>>,
    /// Channel timelines by (guild, channel).
    pub timelines: HashMap<(String, u64), Timeline>,
    /// DM timelines by user.
    pub dms: HashMap<String, Timeline>,
    /// What the middle shows.
    pub view: View,
    /// The composer's text.
    pub composer: String,
    /// Name typed for a new guild.
    pub new_guild: String,
    /// Name typed for a new channel.
    pub new_channel: String,
    /// Invite code typed to join.
    pub join_code: String,
    /// User id typed to start a DM.
    pub new_dm: String,
    /// The last invite created, per guild.
    pub invites: HashMap<String, String>,
    /// Joins in flight (codes), shown as pending.
    pub joining: Vec<String>,
    /// Errors not yet dismissed, each shown once.
    pub errors: VecDeque<String>,
    /// Connection indicator.
    pub net: NetStatus,
    /// Users with a device connected right now (presence).
    pub online: HashSet<String>,
    /// Messages arrived in channels and DMs not on screen since they were last opened:
    /// (count, whether one mentions us), per channel (`guild`, `channel`) and per DM user.
    pub unread: HashMap<Unread, (u32, bool)>,
    /// Our messages not yet confirmed by the node, oldest first (at most [`MAX_OUTBOX`]).
    pub outbox: Vec<Outgoing>,
    next_local: u64,
    /// Contacts, safety numbers and warnings.
    pub verify: crate::verify::VerifyState,
    /// The settings window.
    pub settings: crate::settings::SettingsState,
    /// The first-run "Restore from backup" form.
    pub restore: crate::settings::RestoreForm,
    /// Guild management: data, dialogs, the settings window (see [`manage`]).
    pub manage: manage::ManageState,
    /// Voice channels and the call.
    pub voice: crate::voice::VoiceState,
    /// Spoilers the user clicked open: (message id, spoiler number in the message).
    pub revealed: HashSet<(String, u32)>,
    /// A clicked link waiting for the user to open, copy or cancel it: its full real target.
    pub link_confirm: Option<String>,
    /// Message actions: the selected message, a reply or edit in progress, a delete to
    /// confirm (see [`messages`]).
    pub messages: messages::MessageActions,
    /// Attachments, transfers and previews (see [`files`]).
    pub files: files::FilesState,
    /// Guild custom emoji and their textures (see [`emoji`]).
    pub emoji: emoji::EmojiState,
}

impl AppState {
    /// A fresh state for a data folder.
    pub fn new(data_dir: String, has_identity: bool) -> Self {
        Self {
            phase: Phase::Login,
            has_identity,
            data_dir,
            login: LoginForm::default(),
            me: None,
            guilds: Vec::new(),
            guild: None,
            channels: HashMap::new(),
            members: HashMap::new(),
            timelines: HashMap::new(),
            dms: HashMap::new(),
            view: View::Empty,
            composer: String::new(),
            new_guild: String::new(),
            new_channel: String::new(),
            join_code: String::new(),
            new_dm: String::new(),
            invites: HashMap::new(),
            joining: Vec::new(),
            errors: VecDeque::new(),
            net: NetStatus::default(),
            online: HashSet::new(),
            unread: HashMap::new(),
            outbox: Vec::new(),
            next_local: 1,
            verify: crate::verify::VerifyState::default(),
            settings: crate::settings::SettingsState::default(),
            restore: crate::settings::RestoreForm::default(),
            manage: manage::ManageState::default(),
            voice: crate::voice::VoiceState::default(),
            revealed: HashSet::new(),
            link_confirm: None,
            messages: messages::MessageActions::default(),
            files: files::FilesState::default(),
            emoji: emoji::EmojiState::default(),
        }
    }

    /// A click on a hidden spoiler: it stays revealed (for this session).
    pub fn on_reveal_spoiler(&mut self, msg: &str, spoiler: u32) {
        if self.revealed.len() < MAX_REVEALED {
            self.revealed.insert((msg.to_owned(), spoiler));
        }
    }

    /// Whether spoiler `spoiler` of message `msg` was revealed.
    pub fn is_revealed(&self, msg: &str, spoiler: u32) -> bool {
        self.revealed.contains(&(msg.to_owned(), spoiler))
    }

    /// A click on a link: nothing opens until the user confirms its real target.
    pub fn on_link_clicked(&mut self, url: &str) {
        self.link_confirm = Some(url.to_owned());
    }

    /// How a mention is shown: `@nickname` of a member of the current guild (else
    /// `@unknown-user`), `@rolename` (else `@unknown-role`), `@everyone`, `@here`.
    pub fn mention_label(&self, m: &Mention) -> String {
        match m {
            Mention::User(key) => self
                .guild
                .as_ref()
                .and_then(|g| self.members.get(g))
                .and_then(|ms| ms.iter().find(|m| m.user == *key))
                .map_or_else(
                    || "@unknown-user".to_owned(),
                    |m| {
                        if m.nickname.is_empty() {
                            format!("@{}", short(&m.user))
                        } else {
                            format!("@{}", m.nickname)
                        }
                    },
                ),
            Mention::Role(id) => self
                .guild_data()
                .and_then(|d| d.roles.iter().find(|r| r.id == *id))
                .map_or_else(|| "@unknown-role".to_owned(), |r| format!("@{}", r.name)),
            Mention::Everyone => "@everyone".to_owned(),
            Mention::Here => "@here".to_owned(),
        }
    }

    /// Whether `text` mentions us: `@everyone`, `@here`, `<@our key>`, or `@` and our display
    /// name (as a whole word).
    pub fn mentions_me(&self, text: &str) -> bool {
        let lower = text.to_lowercase();
        if lower.contains("@everyone") || lower.contains("@here") {
            return true;
        }
        self.me.as_ref().is_some_and(|me| {
            crate::settings::mentions(text, &me.display_name)
                || (text.contains("<@")
                    && markdown::mentions(text).contains(&Mention::User(me.user_id.clone())))
        })
    }

    fn mark_unread(&mut self, at: Unread, mention: bool) {
        if self.unread.len() >= MAX_UNREAD && !self.unread.contains_key(&at) {
            return;
        }
        let e = self.unread.entry(at).or_insert((0, false));
        e.0 = e.0.saturating_add(1);
        e.1 |= mention;
    }

    /// Unread count and mention flag of a channel.
    pub fn unread_channel(&self, guild: &str, channel: u64) -> (u32, bool) {
        self.unread
            .get(&Unread::Channel(guild.to_owned(), channel))
            .copied()
            .unwrap_or_default()
    }

    /// Unread messages in a guild's channels (for the guild bar), and whether one mentions us.
    pub fn unread_guild(&self, guild: &str) -> (u32, bool) {
        self.unread
            .iter()
            .filter(|(k, _)| matches!(k, Unread::Channel(g, _) if g == guild))
            .fold((0, false), |(n, m), (_, (c, x))| {
                (n.saturating_add(*c), m || *x)
            })
    }

    /// Unread count of a DM conversation.
    pub fn unread_dm(&self, user: &str) -> u32 {
        self.unread
            .get(&Unread::Dm(user.to_owned()))
            .map_or(0, |u| u.0)
    }

    /// A user's name: their nickname in any guild we share, else the start of their id.
    pub fn name_of(&self, user: &str) -> String {
        self.members
            .values()
            .flat_map(|ms| ms.iter())
            .find(|m| m.user == user && !m.nickname.is_empty())
            .map_or_else(|| short(user), |m| m.nickname.clone())
    }

    /// The rows of the outbox messages for the current view.
    pub fn pending_rows(&self) -> Vec<Row> {
        self.outbox
            .iter()
            .filter(|o| o.view == self.view)
            .flat_map(Outgoing::rows)
            .collect()
    }

    /// The view scrolled near the oldest row loaded: ask for the page before it, once.
    pub fn on_near_top(&mut self) -> Vec<Command> {
        let View::Channel { guild, channel } = self.view.clone() else {
            return Vec::new();
        };
        let Some(t) = self.timelines.get_mut(&(guild.clone(), channel)) else {
            return Vec::new();
        };
        if t.exhausted || t.loading_older {
            return Vec::new();
        }
        let Some(before) = t.before() else {
            return Vec::new();
        };
        t.loading_older = true;
        vec![Command::LoadOlder {
            guild,
            channel,
            before,
        }]
    }

    /// "Retry" on a failed message.
    pub fn on_retry(&mut self, local: u64) -> Vec<Command> {
        let Some(o) = self.outbox.iter_mut().find(|o| o.local == local) else {
            return Vec::new();
        };
        o.failed = None;
        o.command().into_iter().collect()
    }

    /// "Discard" on a failed message: it leaves the outbox, and its text returns to an empty
    /// composer so nothing typed is lost by accident.
    pub fn on_discard(&mut self, local: u64) {
        if let Some(at) = self.outbox.iter().position(|o| o.local == local) {
            let o = self.outbox.remove(at);
            if self.composer.trim().is_empty() {
                self.composer = o.text;
            }
            if self.files.attached.is_empty() {
                self.files.attached = o.files;
            }
        }
    }

    /// Records an error for display.
    pub fn error(&mut self, msg: impl Into<String>) {
        self.errors.push_back(msg.into());
        while self.errors.len() > MAX_ERRORS {
            self.errors.pop_front();
        }
    }

    /// The timeline the middle shows, if any.
    pub fn current_timeline(&self) -> Option<&Timeline> {
        match &self.view {
            View::Empty => None,
            View::Channel { guild, channel } => self.timelines.get(&(guild.clone(), *channel)),
            View::Dm { user } => self.dms.get(user),
        }
    }

    /// Folds one backend event into the state; returns follow-up commands.
    pub fn apply(&mut self, ev: Event) -> Vec<Command> {
        match ev {
            Event::Started(me) => {
                self.phase = Phase::Main;
                self.has_identity = true;
                self.login = LoginForm::default();
                self.restore = crate::settings::RestoreForm::default();
                self.me = Some(me);
                vec![Command::Refresh]
            }
            Event::LoginFailed(why) => {
                self.phase = Phase::Login;
                self.login.error = Some(why);
                Vec::new()
            }
            Event::Guilds(gs) => {
                self.guilds = gs;
                let cmds: Vec<Command> = self
                    .guilds
                    .iter()
                    .map(|g| Command::LoadGuild {
                        guild: g.id.clone(),
                    })
                    .collect();
                if self.guild.is_none()
                    && let Some(g) = self.guilds.first()
                {
                    self.guild = Some(g.id.clone());
                }
                cmds
            }
            Event::Channels { guild, channels } => {
                let first_text = channels.iter().find(|c| c.kind == "text").map(|c| c.id);
                self.channels.insert(guild.clone(), channels);
                let voice = self
                    .channels
                    .iter()
                    .flat_map(|(g, cs)| {
                        cs.iter()
                            .filter(|c| c.kind == "voice")
                            .map(move |c| (g.clone(), c.id))
                    })
                    .collect();
                let mut cmds = self.voice.on_channels(voice);
                if self.guild.as_deref() == Some(guild.as_str())
                    && !matches!(&self.view, View::Channel { guild: g, .. } if *g == guild)
                    && let Some(ch) = first_text
                {
                    cmds.extend(self.on_select_channel(&guild, ch));
                }
                cmds
            }
            Event::Members { guild, members } => {
                self.members.insert(guild, members);
                Vec::new()
            }
            Event::History {
                guild,
                channel,
                messages,
            } => {
                let t = self.timelines.entry((guild, channel)).or_default();
                // A first page shorter than asked for is the whole channel.
                t.exhausted = t.entries().is_empty() && messages.len() < HISTORY_LIMIT;
                let me = self.me.as_ref().map(|m| m.user_id.clone());
                t.extend(messages.into_iter().map(|m| Entry {
                    me: me.clone(),
                    ..Entry::from(m)
                }));
                Vec::new()
            }
            Event::Older {
                guild,
                channel,
                messages,
                exhausted,
            } => {
                let t = self.timelines.entry((guild, channel)).or_default();
                t.loading_older = false;
                t.exhausted = exhausted;
                // May set `exhausted` too, at the bound.
                let me = self.me.as_ref().map(|m| m.user_id.clone());
                t.prepend(
                    messages
                        .into_iter()
                        .map(|m| Entry {
                            me: me.clone(),
                            ..Entry::from(m)
                        })
                        .collect(),
                );
                Vec::new()
            }
            Event::Op { guild, channel, op } => {
                if let Some(t) = self.timelines.get_mut(&(guild.clone(), channel)) {
                    t.apply_op(&op);
                }
                if self.messages.pins_open && matches!(op, crate::backend::MessageOp::Pin { .. }) {
                    vec![Command::LoadPins { guild, channel }]
                } else {
                    Vec::new()
                }
            }
            Event::SearchResults { text, hits } => {
                self.messages.search.results = Some((text, hits));
                Vec::new()
            }
            Event::Pins {
                guild,
                channel,
                pins,
            } => {
                self.messages.pins.insert((guild, channel), pins);
                Vec::new()
            }
            Event::Threads {
                guild,
                channel,
                threads,
            } => {
                self.messages
                    .threads
                    .lists
                    .insert((guild, channel), threads);
                Vec::new()
            }
            Event::ThreadHistory { thread, messages } => {
                let me = self.me.as_ref().map(|m| m.user_id.clone());
                let t = &mut self.messages.threads;
                if t.open.as_ref().is_some_and(|(_, _, id)| *id == thread) {
                    t.messages = messages
                        .into_iter()
                        .map(|m| Entry {
                            me: me.clone(),
                            ..Entry::from(m)
                        })
                        .collect();
                }
                Vec::new()
            }
            Event::ThreadMessage { thread, message } => {
                let me = self.me.as_ref().map(|m| m.user_id.clone());
                self.on_thread_message(
                    thread,
                    Entry {
                        me,
                        ..Entry::from(message)
                    },
                );
                Vec::new()
            }
            Event::ThreadsChanged { guild, channel } => {
                let shown = self.messages.threads.list_open
                    || self
                        .messages
                        .threads
                        .open
                        .as_ref()
                        .is_some_and(|(g, c, _)| *g == guild && *c == channel);
                if shown {
                    vec![Command::LoadThreads { guild, channel }]
                } else {
                    Vec::new()
                }
            }
            Event::Typing {
                guild,
                channel,
                user,
                nickname,
            } => {
                let name = if nickname.is_empty() {
                    self.name_of(&user)
                } else {
                    nickname
                };
                self.on_typing(guild, channel, user, name);
                Vec::new()
            }
            Event::Erased { guild, channel, id } => {
                if let Some(t) = self.timelines.get_mut(&(guild, channel)) {
                    t.remove(&id);
                }
                self.messages.forget(&id);
                Vec::new()
            }
            Event::Transfer(t) => {
                self.on_transfer(t);
                Vec::new()
            }
            Event::FileSaved { root, name, path } => {
                self.settings
                    .notices
                    .push_back(format!("Saved {name} to {path}"));
                while self.settings.notices.len() > crate::settings::MAX_NOTICES {
                    self.settings.notices.pop_front();
                }
                self.files.saved.insert(root, path);
                Vec::new()
            }
            Event::Sent { local } => {
                self.outbox.retain(|o| o.local != local);
                Vec::new()
            }
            Event::SendFailed { local, why } => {
                if let Some(o) = self.outbox.iter_mut().find(|o| o.local == local) {
                    o.failed = Some(why);
                }
                Vec::new()
            }
            Event::Message(m) => {
                let here = matches!(&self.view, View::Channel { guild, channel }
                    if *guild == m.guild && *channel == m.channel);
                let mine = self.me.as_ref().is_some_and(|me| me.user_id == m.sender);
                if !here && !mine {
                    let mention = m.mentions_me || self.mentions_me(&m.text);
                    self.mark_unread(Unread::Channel(m.guild.clone(), m.channel), mention);
                }
                let mut cmds = Vec::new();
                if let Some(me) = &self.me
                    && m.sender != me.user_id
                    && (m.mentions_me || crate::settings::mentions(&m.text, &me.display_name))
                {
                    let who = if m.nickname.is_empty() {
                        short(&m.sender)
                    } else {
                        m.nickname.clone()
                    };
                    cmds = self
                        .settings
                        .on_incoming(format!("{who} mentioned you"), &m.text);
                }
                if let Some(list) = self.messages.typing.get_mut(&(m.guild.clone(), m.channel)) {
                    list.retain(|(u, _, _)| *u != m.sender);
                }
                let me = self.me.as_ref().map(|m| m.user_id.clone());
                self.timelines
                    .entry((m.guild.clone(), m.channel))
                    .or_default()
                    .insert(Entry {
                        me,
                        ..Entry::from(m)
                    });
                cmds
            }
            Event::DmHistory { user, messages } => {
                let me = self.my_name();
                let them = self.name_of(&user);
                self.dms
                    .entry(user)
                    .or_default()
                    .extend(messages.into_iter().map(|m| dm_entry(m, &me, &them)));
                Vec::new()
            }
            Event::Dm(m) => {
                let here = matches!(&self.view, View::Dm { user } if *user == m.peer);
                if !here && !m.outgoing {
                    self.mark_unread(Unread::Dm(m.peer.clone()), true);
                }
                let cmds = if m.outgoing {
                    Vec::new()
                } else {
                    let who = self
                        .verify
                        .contacts
                        .get(&m.peer)
                        .filter(|c| !c.name.is_empty())
                        .map_or_else(|| short(&m.peer), |c| c.name.clone());
                    self.settings
                        .on_incoming(format!("Message from {who}"), &m.text)
                };
                let me = self.my_name();
                let them = self.name_of(&m.peer);
                self.dms
                    .entry(m.peer.clone())
                    .or_default()
                    .insert(dm_entry(m, &me, &them));
                cmds
            }
            Event::GuildCreated { id } => {
                self.guild = Some(id);
                self.view = View::Empty;
                vec![Command::Refresh]
            }
            Event::ChannelCreated { guild, id } => {
                let mut cmds = self.on_select_channel(&guild, id);
                cmds.push(Command::LoadGuild { guild });
                cmds
            }
            Event::Invite { guild, code } => {
                self.invites.insert(guild, code);
                Vec::new()
            }
            Event::Joined { code, guild } => {
                self.joining.retain(|c| *c != code);
                self.guild = Some(guild);
                self.view = View::Empty;
                vec![Command::Refresh]
            }
            Event::JoinFailed { code, why } => {
                self.joining.retain(|c| *c != code);
                self.error(format!("could not join: {why}"));
                Vec::new()
            }
            Event::Net(n) => {
                self.net = n;
                Vec::new()
            }
            Event::Presence(online) => {
                self.online = online;
                Vec::new()
            }
            Event::Verify(e) => self.verify.apply(e),
            Event::Settings(e) => self.settings.apply(e),
            Event::Error(e) => {
                self.error(e);
                Vec::new()
            }
            Event::Manage(m) => self.apply_manage(m),
            Event::Emojis { guild, list } => {
                self.on_emojis(guild, list);
                Vec::new()
            }
            Event::Voice(v) => {
                if let crate::voice::VoiceEvent::JoinFailed(why) = &v {
                    self.error(format!("could not join the voice channel: {why}"));
                }
                self.voice.apply(v);
                Vec::new()
            }
        }
    }

    fn my_name(&self) -> String {
        self.me
            .as_ref()
            .map_or_else(|| "me".to_owned(), |m| m.display_name.clone())
    }

    /// The "Create identity" / "Unlock" button.
    pub fn on_login(&mut self) -> Vec<Command> {
        let passphrase = Passphrase::new(std::mem::take(&mut self.login.passphrase));
        if passphrase.is_empty() {
            self.login.error = Some("enter a passphrase".into());
            return Vec::new();
        }
        let cmd = if self.has_identity {
            Command::Unlock { passphrase }
        } else {
            let name = self.login.name.trim().to_owned();
            if name.is_empty() {
                self.login.error = Some("enter a display name".into());
                return Vec::new();
            }
            Command::Create { name, passphrase }
        };
        self.login.error = None;
        self.phase = Phase::Starting;
        vec![cmd]
    }

    /// Selects a guild in the guild bar (`None`: the DM list).
    pub fn on_select_guild(&mut self, guild: Option<String>) -> Vec<Command> {
        self.guild.clone_from(&guild);
        let Some(g) = guild else {
            // The DM list: a channel no longer shows (its messages count as unread again).
            if matches!(self.view, View::Channel { .. }) {
                self.view = View::Empty;
            }
            return Vec::new();
        };
        let first_text = self
            .channels
            .get(&g)
            .and_then(|cs| cs.iter().find(|c| c.kind == "text"))
            .map(|c| c.id);
        let mut cmds = vec![Command::LoadGuild { guild: g.clone() }];
        match first_text {
            Some(ch) => cmds.extend(self.on_select_channel(&g, ch)),
            None => self.view = View::Empty,
        }
        cmds
    }

    /// Opens a channel.
    pub fn on_select_channel(&mut self, guild: &str, channel: u64) -> Vec<Command> {
        self.unread
            .remove(&Unread::Channel(guild.to_owned(), channel));
        self.view = View::Channel {
            guild: guild.to_owned(),
            channel,
        };
        self.messages.selected = None;
        self.messages.threads.list_open = false;
        self.messages.pins_open = false;
        vec![
            Command::LoadHistory {
                guild: guild.to_owned(),
                channel,
            },
            // Read state is per device and kept by the node (unread mention counts).
            Command::MarkRead {
                guild: guild.to_owned(),
                channel,
            },
        ]
    }

    /// Opens a DM conversation.
    pub fn on_select_dm(&mut self, user: &str) -> Vec<Command> {
        self.unread.remove(&Unread::Dm(user.to_owned()));
        self.guild = None;
        self.view = View::Dm {
            user: user.to_owned(),
        };
        vec![Command::DmHistory {
            user: user.to_owned(),
        }]
    }

    /// The composer's send (Enter).
    pub fn on_send(&mut self) -> Vec<Command> {
        let text = self.composer.trim_end().to_owned();
        let with_files = !self.files.attached.is_empty() && self.messages.editing.is_none();
        if text.trim().is_empty() && !with_files {
            return Vec::new();
        }
        if let Some(cmds) = self.send_edit(&text) {
            return cmds;
        }
        if with_files && !matches!(self.view, View::Channel { .. }) {
            self.error("files can be sent in guild channels only; remove them to send here");
            return Vec::new();
        }
        let chars = text.chars().count();
        if chars > securecomm_node::guild::wire::MAX_TEXT_CHARS {
            self.error(format!(
                "a message is at most {} characters; this one has {chars}",
                securecomm_node::guild::wire::MAX_TEXT_CHARS
            ));
            return Vec::new();
        }
        if self.outbox.len() >= MAX_OUTBOX {
            self.error("too many messages waiting to be sent; retry or discard the failed ones");
            return Vec::new();
        }
        let o = Outgoing {
            local: self.next_local,
            view: self.view.clone(),
            text,
            failed: None,
            reply_to: self.messages.take_reply(&self.view),
            files: std::mem::take(&mut self.files.attached),
        };
        let Some(cmd) = o.command() else {
            self.files.attached = o.files;
            self.error("pick a channel first");
            return Vec::new();
        };
        self.next_local += 1;
        self.outbox.push(o);
        self.composer.clear();
        vec![cmd]
    }

    /// "Create guild".
    pub fn on_create_guild(&mut self) -> Vec<Command> {
        let name = self.new_guild.trim().to_owned();
        if name.is_empty() {
            self.error("a guild needs a name");
            return Vec::new();
        }
        self.new_guild.clear();
        vec![Command::CreateGuild { name }]
    }

    /// "Create channel" in the selected guild.
    pub fn on_create_channel(&mut self) -> Vec<Command> {
        let name = self.new_channel.trim().to_owned();
        let Some(guild) = self.guild.clone() else {
            self.error("pick a guild first");
            return Vec::new();
        };
        if name.is_empty() {
            self.error("a channel needs a name");
            return Vec::new();
        }
        self.new_channel.clear();
        vec![Command::CreateChannel { guild, name }]
    }

    /// "Create invite" for the selected guild.
    pub fn on_create_invite(&mut self) -> Vec<Command> {
        match self.guild.clone() {
            Some(guild) => vec![Command::CreateInvite { guild }],
            None => {
                self.error("pick a guild first");
                Vec::new()
            }
        }
    }

    /// "Join" with the pasted code.
    pub fn on_join(&mut self) -> Vec<Command> {
        let code = self.join_code.trim().to_owned();
        if code.is_empty() {
            self.error("paste an invite code first");
            return Vec::new();
        }
        self.join_code.clear();
        self.joining.push(code.clone());
        vec![Command::Join { code }]
    }

    /// "Message" a user id typed in the DM list.
    pub fn on_new_dm(&mut self) -> Vec<Command> {
        let user = self.new_dm.trim().to_owned();
        if user.is_empty() {
            return Vec::new();
        }
        self.new_dm.clear();
        self.on_select_dm(&user)
    }
}

fn dm_entry(m: DmMessage, me: &str, them: &str) -> Entry {
    let (sender, author) = if m.outgoing {
        ("me".to_owned(), me.to_owned())
    } else {
        (m.peer.clone(), them.to_owned())
    };
    Entry {
        id: m.id,
        sender,
        author,
        sent_at: m.sent_at,
        text: m.text,
        device: String::new(),
        seq: 0,
        delivery: None,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, sender: &str, at: u64, text: &str) -> Entry {
        Entry {
            id: id.to_string(),
            sender: sender.into(),
            author: sender.into(),
            sent_at: at,
            text: text.into(),
            device: "00".repeat(32),
            seq: u64::from(id),
            delivery: None,
            ..Default::default()
        }
    }

    /// Message rows carry the line kind and message id; headers take two rows; spoilers stay
    /// revealed per message; mentions show nicknames of the current guild only.
    #[test]
    fn markdown_rows_spoilers_and_mention_names() {
        let mut t = Timeline::default();
        t.extend(vec![entry(1, "ann", 0, "# Title\n- ||secret|| <@&9>")]);
        let rows = t.rows();
        assert!(matches!(&rows[1], Row::Line { kind: LineKind::Header(1), msg, .. } if msg == "1"));
        assert_eq!(rows[2], Row::Gap);
        let Row::Line { kind, spans, .. } = &rows[3] else {
            panic!("{:?}", rows[3])
        };
        assert_eq!(
            *kind,
            LineKind::Item {
                depth: 0,
                number: None
            }
        );
        assert_eq!(spans[0].spoiler, Some(0));

        let mut s = AppState::new("/tmp/x".into(), true);
        assert!(!s.is_revealed("1", 0));
        s.on_reveal_spoiler("1", 0);
        assert!(s.is_revealed("1", 0) && !s.is_revealed("2", 0));

        let key = "ab".repeat(32);
        let member = MemberInfo {
            user: key.clone(),
            nickname: "Ann".into(),
            owner: false,
            roles: Vec::new(),
            devices: Vec::new(),
        };
        s.members.insert("g1".into(), vec![member]);
        let user = Mention::User(key);
        assert_eq!(s.mention_label(&user), "@unknown-user", "no guild selected");
        s.guild = Some("g1".into());
        assert_eq!(s.mention_label(&user), "@Ann");
        assert_eq!(
            s.mention_label(&Mention::User("cd".repeat(32))),
            "@unknown-user"
        );
        assert_eq!(s.mention_label(&Mention::Role(9)), "@unknown-role");
        assert_eq!(s.mention_label(&Mention::Here), "@here");

        s.on_link_clicked("https://example.org/x");
        assert_eq!(s.link_confirm.as_deref(), Some("https://example.org/x"));
    }

    /// Prepending pages lays out the same rows as building the whole timeline at once,
    /// including a group that spans the page boundary, and counts the rows it added.
    #[test]
    fn prepended_pages_match_one_build() {
        let all: Vec<Entry> = (0..300u32)
            .map(|i| {
                let who = if (i / 7) % 2 == 0 { "ann" } else { "bob" };
                entry(i, who, u64::from(i) * 1000, &format!("line {i}\nsecond"))
            })
            .collect();
        let mut whole = Timeline::default();
        whole.extend(all.clone());
        let mut paged = Timeline::default();
        paged.extend(all[250..].to_vec());
        let mut start = 250;
        for size in [13usize, 1, 60, 100, 76] {
            let before = paged.rows().len();
            paged.prepend(all[start - size..start].to_vec());
            assert_eq!(paged.rows().len() - before, paged.rows_added_front);
            paged.rows_added_front = 0;
            start -= size;
        }
        assert_eq!(start, 0);
        assert_eq!(paged.rows(), whole.rows());
        assert_eq!(paged.entries(), whole.entries());
        // A duplicate page changes nothing.
        paged.prepend(all[..10].to_vec());
        assert_eq!(paged.rows(), whole.rows());
        assert_eq!(paged.before().unwrap().seq, 0);
    }

    /// At the bound on a timeline, paging stops instead of taking a page only to drop it.
    #[test]
    fn paging_stops_at_the_timeline_bound() {
        let mut t = Timeline::default();
        let newest = (MAX_TIMELINE as u32 - 5..MAX_TIMELINE as u32)
            .map(|i| entry(i, "ann", u64::from(i) + 1_000_000, "x"));
        t.extend(newest);
        let mut big = Timeline::default();
        big.extend((0..MAX_TIMELINE as u32).map(|i| entry(i, "ann", u64::from(i) + 10, "x")));
        big.prepend(vec![entry(MAX_TIMELINE as u32 + 1, "bob", 1, "older")]);
        assert!(big.exhausted);
        assert_eq!(big.entries().len(), MAX_TIMELINE);
        assert_eq!(
            big.entries().front().unwrap().sent_at,
            10,
            "nothing dropped"
        );
        t.prepend(vec![entry(1, "bob", 1, "older")]);
        assert!(!t.exhausted);
        assert_eq!(t.entries().len(), 6);
    }

    #[test]
    fn near_top_asks_for_one_older_page_until_exhausted() {
        let mut s = AppState::new("/tmp/x".into(), true);
        s.view = View::Channel {
            guild: "g".into(),
            channel: 1,
        };
        let page: Vec<Message> = (0..HISTORY_LIMIT as u64)
            .map(|i| Message {
                guild: "g".into(),
                channel: 1,
                id: format!("{i}"),
                sender: "ann".into(),
                nickname: String::new(),
                sent_at: 10_000 + i,
                text: "x".into(),
                sender_device: "ab".repeat(32),
                seq: i + 1,
                delivery: None,
                ..Default::default()
            })
            .collect();
        s.apply(Event::History {
            guild: "g".into(),
            channel: 1,
            messages: page,
        });
        let cmds = s.on_near_top();
        assert!(
            matches!(cmds.as_slice(), [Command::LoadOlder { before, .. }] if before.seq == 1 && before.sent_at == 10_000)
        );
        assert!(
            s.on_near_top().is_empty(),
            "one request in flight at a time"
        );
        s.apply(Event::Older {
            guild: "g".into(),
            channel: 1,
            messages: Vec::new(),
            exhausted: true,
        });
        assert!(s.on_near_top().is_empty(), "nothing older");
    }

    #[test]
    fn unread_counts_mentions_and_clears_on_open() {
        let mut s = AppState::new("/tmp/x".into(), true);
        s.me = Some(Me {
            display_name: "Alice".into(),
            user_id: "aa".into(),
            peer_id: String::new(),
        });
        s.view = View::Channel {
            guild: "g".into(),
            channel: 1,
        };
        let msg = |channel: u64, sender: &str, text: &str| {
            Event::Message(Message {
                guild: "g".into(),
                channel,
                id: format!("{channel}{sender}{text}"),
                sender: sender.into(),
                nickname: String::new(),
                sent_at: 1,
                text: text.into(),
                sender_device: String::new(),
                seq: 1,
                delivery: None,
                ..Default::default()
            })
        };
        s.apply(msg(1, "bb", "on screen"));
        s.apply(msg(2, "bb", "elsewhere"));
        s.apply(msg(2, "aa", "my own, from another device"));
        assert_eq!(s.unread_channel("g", 1), (0, false));
        assert_eq!(s.unread_channel("g", 2), (1, false));
        s.apply(msg(2, "bb", "hey @alice look"));
        assert_eq!(s.unread_channel("g", 2), (2, true));
        assert_eq!(s.unread_guild("g"), (2, true));
        s.on_select_channel("g", 2);
        assert_eq!(s.unread_guild("g"), (0, false));
        s.apply(Event::Dm(DmMessage {
            id: "d".into(),
            peer: "bb".into(),
            outgoing: false,
            sent_at: 1,
            text: "psst".into(),
        }));
        assert_eq!(s.unread_dm("bb"), 1);
        s.on_select_dm("bb");
        assert_eq!(s.unread_dm("bb"), 0);
    }

    #[test]
    fn failed_send_stays_for_retry_and_discard_returns_the_text() {
        let mut s = AppState::new("/tmp/x".into(), true);
        s.view = View::Dm { user: "bob".into() };
        s.composer = "hello *bob*".into();
        let cmds = s.on_send();
        let local = match cmds.as_slice() {
            [Command::DmSend { local, text, .. }] if text == "hello *bob*" => *local,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            s.pending_rows().first(),
            Some(Row::Pending { failed: None, .. })
        ));
        s.apply(Event::SendFailed {
            local,
            why: "bob has no prekeys".into(),
        });
        assert!(s.errors.is_empty(), "shown inline, once");
        assert!(matches!(
            s.pending_rows().first(),
            Some(Row::Pending { failed: Some(w), .. }) if w == "bob has no prekeys"
        ));
        assert!(matches!(
            s.on_retry(local).as_slice(),
            [Command::DmSend { .. }]
        ));
        s.apply(Event::SendFailed {
            local,
            why: "still no".into(),
        });
        s.on_discard(local);
        assert!(s.outbox.is_empty());
        assert_eq!(s.composer, "hello *bob*");
        // A confirmed send leaves the outbox.
        s.composer = "again".into();
        let [Command::DmSend { local, .. }] = s.on_send()[..] else {
            panic!()
        };
        s.apply(Event::Sent { local });
        assert!(s.outbox.is_empty() && s.pending_rows().is_empty());
    }

    #[test]
    fn grouping_by_author_and_gap() {
        let mut t = Timeline::default();
        t.insert(entry(1, "ann", 1000, "hi"));
        t.insert(entry(2, "ann", 2000, "again"));
        t.insert(entry(3, "bob", 3000, "yo"));
        t.insert(entry(4, "bob", 3000 + GROUP_GAP_MS + 1, "later"));
        let headers = t
            .rows()
            .iter()
            .filter(|r| matches!(r, Row::Header { .. }))
            .count();
        assert_eq!(headers, 3);
        assert_eq!(t.rows().len(), 7);
    }

    #[test]
    fn duplicates_ignored_and_out_of_order_sorted() {
        let mut t = Timeline::default();
        t.insert(entry(1, "ann", 5000, "late"));
        t.insert(entry(2, "ann", 1000, "early"));
        t.insert(entry(1, "ann", 5000, "late"));
        let texts: Vec<&str> = t.entries().iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["early", "late"]);
        assert_eq!(t.rows().len(), 3);
    }

    #[test]
    fn code_blocks_become_rows() {
        let mut t = Timeline::default();
        t.insert(entry(
            1,
            "ann",
            0,
            "look:\n```rust\nfn a() {}\nfn b() {}\n```",
        ));
        assert_eq!(
            t.rows().iter().skip(2).cloned().collect::<Vec<_>>(),
            [Row::Code("fn a() {}".into()), Row::Code("fn b() {}".into())]
        );
    }

    #[test]
    fn times_format_as_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00");
        // 2024-02-29 12:34 UTC
        assert_eq!(format_time(1_709_210_040_000), "2024-02-29 12:34");
    }

    #[test]
    fn wrong_passphrase_returns_to_login_with_message() {
        let mut s = AppState::new("/tmp/x".into(), true);
        s.login.passphrase = "nope".into();
        let cmds = s.on_login();
        assert!(matches!(cmds.as_slice(), [Command::Unlock { .. }]));
        assert_eq!(s.phase, Phase::Starting);
        assert!(s.login.passphrase.is_empty());
        s.apply(Event::LoginFailed("wrong passphrase".into()));
        assert_eq!(s.phase, Phase::Login);
        assert_eq!(s.login.error.as_deref(), Some("wrong passphrase"));
    }

    #[test]
    fn empty_composer_sends_nothing() {
        let mut s = AppState::new("/tmp/x".into(), true);
        s.view = View::Channel {
            guild: "g".into(),
            channel: 1,
        };
        s.composer = "  \n ".into();
        assert!(s.on_send().is_empty());
        s.composer = "hello\n".into();
        assert!(matches!(s.on_send().as_slice(), [Command::Send { text, .. }] if text == "hello"));
        assert!(s.composer.is_empty());
    }
}
