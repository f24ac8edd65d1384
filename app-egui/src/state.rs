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

use crate::backend::{
    ChannelInfo, Command, DmMessage, Event, GuildInfo, Me, MemberInfo, Message, Passphrase,
};
use crate::markdown::{self, Block, Span};

pub mod manage;

/// A new author header starts after this much silence from the same author (ms).
pub const GROUP_GAP_MS: u64 = 7 * 60 * 1000;
/// Errors kept for display; older ones are dropped.
pub const MAX_ERRORS: usize = 8;
/// Messages kept per channel or DM conversation (the oldest are dropped beyond it).
pub const MAX_TIMELINE: usize = 200_000;
/// Messages requested when a channel is opened.
pub const HISTORY_LIMIT: usize = 10_000;

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
        /// Its styled spans.
        spans: Vec<Span>,
        /// Whether it is a `> quote`.
        quote: bool,
    },
    /// One line of a code block.
    Code(String),
}

/// A message in a timeline, whatever its source (guild channel or DM).
#[derive(Debug, Clone, PartialEq, Eq)]
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
        }
    }
}

/// Messages of one channel or conversation, oldest first, with their display rows.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    entries: Vec<Entry>,
    ids: HashSet<String>,
    rows: Vec<Row>,
}

impl Timeline {
    /// The messages, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The display rows.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Adds one message (ignored if already there). Appending is O(rows of the message);
    /// a message older than the newest rebuilds the rows.
    pub fn insert(&mut self, e: Entry) {
        if self.ids.contains(&e.id) {
            return;
        }
        self.ids.insert(e.id.clone());
        let in_order = self.entries.last().is_none_or(|l| l.sent_at <= e.sent_at);
        if in_order {
            let prev = self.entries.last().cloned();
            push_rows(&mut self.rows, prev.as_ref(), &e);
            self.entries.push(e);
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

    /// Adds many messages (history), rebuilding the rows once.
    pub fn extend(&mut self, es: impl IntoIterator<Item = Entry>) {
        for e in es {
            if self.ids.insert(e.id.clone()) {
                self.entries.push(e);
            }
        }
        self.entries.sort_by_key(|e| e.sent_at);
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
        let mut prev: Option<&Entry> = None;
        for e in &self.entries {
            push_rows(&mut self.rows, prev, e);
            prev = Some(e);
        }
    }
}

fn push_rows(rows: &mut Vec<Row>, prev: Option<&Entry>, e: &Entry) {
    let grouped = prev.is_some_and(|p| {
        p.sender == e.sender && e.sent_at.saturating_sub(p.sent_at) <= GROUP_GAP_MS
    });
    if !grouped {
        rows.push(Row::Header {
            author: e.author.clone(),
            time: format_time(e.sent_at),
        });
    }
    for block in markdown::parse(&e.text) {
        match block {
            Block::Line(spans) => rows.push(Row::Line {
                spans,
                quote: false,
            }),
            Block::Quote(spans) => rows.push(Row::Line { spans, quote: true }),
            Block::Code { text, .. } => {
                rows.extend(text.split('\n').map(|l| Row::Code(l.to_owned())));
            }
        }
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
    /// Guild management: data, dialogs, the settings window (see [`manage`]).
    pub manage: manage::ManageState,
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
            manage: manage::ManageState::default(),
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
                let mut cmds = Vec::new();
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
                self.timelines
                    .entry((guild, channel))
                    .or_default()
                    .extend(messages.into_iter().map(Entry::from));
                Vec::new()
            }
            Event::Message(m) => {
                self.timelines
                    .entry((m.guild.clone(), m.channel))
                    .or_default()
                    .insert(Entry::from(m));
                Vec::new()
            }
            Event::DmHistory { user, messages } => {
                let me = self.my_name();
                self.dms
                    .entry(user)
                    .or_default()
                    .extend(messages.into_iter().map(|m| dm_entry(m, &me)));
                Vec::new()
            }
            Event::Dm(m) => {
                let me = self.my_name();
                self.dms
                    .entry(m.peer.clone())
                    .or_default()
                    .insert(dm_entry(m, &me));
                Vec::new()
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
            Event::Error(e) => {
                self.error(e);
                Vec::new()
            }
            Event::Manage(m) => self.apply_manage(m),
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
        self.view = View::Channel {
            guild: guild.to_owned(),
            channel,
        };
        vec![Command::LoadHistory {
            guild: guild.to_owned(),
            channel,
        }]
    }

    /// Opens a DM conversation.
    pub fn on_select_dm(&mut self, user: &str) -> Vec<Command> {
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
        if text.trim().is_empty() {
            return Vec::new();
        }
        let cmd = match &self.view {
            View::Channel { guild, channel } => Command::Send {
                guild: guild.clone(),
                channel: *channel,
                text,
            },
            View::Dm { user } => Command::DmSend {
                user: user.clone(),
                text,
            },
            View::Empty => {
                self.error("pick a channel first");
                return Vec::new();
            }
        };
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

fn dm_entry(m: DmMessage, me: &str) -> Entry {
    let (sender, author) = if m.outgoing {
        ("me".to_owned(), me.to_owned())
    } else {
        (m.peer.clone(), short(&m.peer))
    };
    Entry {
        id: m.id,
        sender,
        author,
        sent_at: m.sent_at,
        text: m.text,
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
        }
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
            t.rows().get(2..),
            Some(&[Row::Code("fn a() {}".into()), Row::Code("fn b() {}".into())][..])
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
