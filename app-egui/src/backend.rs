//! The node side of the app: a tokio runtime on its own thread that owns the node.
//!
//! The UI sends [`Command`]s over a bounded channel (`try_send`: a full queue is reported, the
//! UI never blocks); every command runs as its own task and answers with [`Event`]s on a second
//! bounded channel, followed by `request_repaint` on the window's context. Node events (guild
//! messages, document changes, DMs) and a connection poll feed the same channel. The UI drains
//! it at the start of each frame. Failures become [`Event::Error`] or [`Event::LoginFailed`];
//! nothing here panics.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use securecomm_node::files::FileInfo;
use securecomm_node::files::wire::Thumbnail;
use securecomm_node::guild::{GuildEvent, GuildService, HistoryCursor};
use securecomm_node::net::{Client, NetConfig, PeerPath, RelayState};
use securecomm_node::runtime::Node;
use securecomm_node::store::{IdentityStore, LocalProfile, StoreError};
use securecomm_node::voice::call::Device;
use securecomm_noise::keystore::{KdfLimits, KdfParams};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::state::{HISTORY_LIMIT, NetStatus, OLDER_PAGE};

pub mod manage;
pub use manage::{GuildData, ManageCmd, ManageEvent};

/// Queued commands before the UI is told the node is busy.
pub const COMMAND_BUFFER: usize = 256;
/// Queued events before producers wait for the UI.
pub const EVENT_BUFFER: usize = 4096;
/// How often the connection indicator is refreshed.
pub const NET_POLL: Duration = Duration::from_secs(2);

/// A passphrase on its way to the identity store: zeroized on drop, redacted in `Debug`.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase.
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The passphrase, for the identity store.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// What the UI asks of the node.
#[derive(Debug)]
pub enum Command {
    /// Create an identity in the data folder and start the node.
    Create {
        /// Display name.
        name: String,
        /// Passphrase sealing the identity.
        passphrase: Passphrase,
    },
    /// Unlock the data folder's identity and start the node.
    Unlock {
        /// The passphrase.
        passphrase: Passphrase,
    },
    /// Restore an identity from an encrypted backup (sealed here under the same passphrase)
    /// and start the node.
    Restore {
        /// The backup file.
        path: String,
        /// The backup's passphrase.
        passphrase: Passphrase,
    },
    /// Safety numbers and verification ([`crate::verify`]).
    Verify(crate::verify::VerifyCommand),
    /// The settings window ([`crate::settings`]).
    Settings(crate::settings::SettingsCommand),
    /// Reload the guild list (and each guild's channels and members).
    Refresh,
    /// Reload one guild's channels and members.
    LoadGuild {
        /// Guild id (hex).
        guild: String,
    },
    /// Load a channel's recent history.
    LoadHistory {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
    },
    /// Load the page of a channel's history just older than `before`.
    LoadOlder {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// The oldest message shown so far.
        before: Before,
    },
    /// Create a guild.
    CreateGuild {
        /// Its name.
        name: String,
    },
    /// Create a text channel.
    CreateChannel {
        /// Guild id (hex).
        guild: String,
        /// Channel name.
        name: String,
    },
    /// Send a message.
    Send {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// The text.
        text: String,
        /// The UI's id for the pending message, answered by [`Event::Sent`] or
        /// [`Event::SendFailed`].
        local: u64,
        /// The message it replies to (hex).
        reply_to: Option<String>,
        /// Files to attach (encrypted into the node's store before the message goes out).
        files: Vec<PathBuf>,
    },
    /// Start (or resume) fetching an attached file; answered by [`Event::Transfer`]s.
    FetchFile {
        /// The file (hex root).
        root: String,
    },
    /// Decrypt a fetched file to a path (the node never overwrites); answered by
    /// [`Event::FileSaved`] or [`Event::Error`].
    SaveFile {
        /// The file (hex root).
        root: String,
        /// Its name, for the messages.
        name: String,
        /// Where to write it.
        path: PathBuf,
    },
    /// Add or remove our reaction to a message.
    React {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Message id (hex).
        msg: String,
        /// The emoji.
        emoji: String,
        /// Add (true) or remove.
        add: bool,
    },
    /// Replace the text of one of our messages.
    Edit {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Message id (hex).
        msg: String,
        /// The new text.
        text: String,
    },
    /// Delete a message (ours, or anyone's with Manage Messages).
    Delete {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Message id (hex).
        msg: String,
    },
    /// Search the local store.
    Search {
        /// What the user typed.
        text: String,
        /// Only this guild (hex).
        guild: Option<String>,
        /// Only this channel (needs `guild`).
        channel: Option<u64>,
        /// Only this author (user id or nickname).
        author: Option<String>,
    },
    /// List a channel's pinned messages.
    LoadPins {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
    },
    /// Mark a channel read on this device (the node keeps per-device read state).
    MarkRead {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
    },
    /// List a channel's threads.
    LoadThreads {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
    },
    /// Load a thread's messages.
    LoadThread {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Thread id (hex).
        thread: String,
    },
    /// Start a thread, from a message or on its own.
    CreateThread {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Its name.
        name: String,
        /// The message it starts from (hex).
        from: Option<String>,
    },
    /// Post in a thread.
    ThreadPost {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Thread id (hex).
        thread: String,
        /// The text.
        text: String,
    },
    /// Archive or unarchive a thread.
    ArchiveThread {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Thread id (hex).
        thread: String,
        /// Archived or not.
        archived: bool,
    },
    /// Tell connected members we are typing in a channel (the node throttles).
    Typing {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
    },
    /// Pin or unpin a message.
    Pin {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Message id (hex).
        msg: String,
        /// Pin (true) or unpin.
        pinned: bool,
    },
    /// Create an invite (no expiry, unlimited uses).
    CreateInvite {
        /// Guild id (hex).
        guild: String,
    },
    /// Join with an invite code.
    Join {
        /// The code.
        code: String,
    },
    /// Send a direct message.
    DmSend {
        /// The user (hex id or a prefix the node resolves).
        user: String,
        /// The text.
        text: String,
        /// The UI's id for the pending message.
        local: u64,
    },
    /// Load DM history with a user.
    DmHistory {
        /// The user.
        user: String,
    },
    /// Guild management (see [`manage`]).
    Manage(ManageCmd),
    /// Voice channels ([`crate::voice`]).
    Voice(crate::voice::VoiceCommand),
}

/// Who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    /// Display name.
    pub display_name: String,
    /// User id (hex root key).
    pub user_id: String,
    /// libp2p peer id.
    pub peer_id: String,
}

/// A guild in the guild bar.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GuildInfo {
    /// Guild id (hex).
    pub id: String,
    /// Name.
    pub name: String,
    /// Whether key agreement has welcomed this device.
    #[serde(default)]
    pub ready: bool,
}

/// A channel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelInfo {
    /// Channel id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// `text`, `voice` or `category`.
    pub kind: String,
    /// Our permissions in it, by name (`manage_messages`, ...).
    #[serde(default)]
    pub my_permissions: Vec<String>,
}

/// A guild member.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemberInfo {
    /// User id (hex).
    pub user: String,
    /// Nickname.
    pub nickname: String,
    /// Whether they own the guild.
    #[serde(default)]
    pub owner: bool,
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Device keys (hex), for verification.
    #[serde(default)]
    pub devices: Vec<String>,
}

/// A guild message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct Message {
    /// Guild id (hex).
    pub guild: String,
    /// Channel id.
    pub channel: u64,
    /// Message id (hex).
    pub id: String,
    /// Sending user (hex).
    pub sender: String,
    /// Sender's nickname.
    #[serde(default)]
    pub nickname: String,
    /// Sender's clock, ms.
    pub sent_at: u64,
    /// The text.
    pub text: String,
    /// Sending device (hex): with `seq`, where a page of older history starts.
    #[serde(default)]
    pub sender_device: String,
    /// The sending device's sequence number in the guild.
    #[serde(default)]
    pub seq: u64,
    /// For this device's own messages: how many other members' devices confirmed receipt.
    #[serde(default)]
    pub delivery: Option<Delivery>,
    /// The message it replies to (hex).
    #[serde(default)]
    pub reply_to: Option<String>,
    /// When the author last edited it (their clock, ms).
    #[serde(default)]
    pub edited_at: Option<u64>,
    /// Reactions, per emoji, with who reacted.
    #[serde(default)]
    pub reactions: Vec<ReactionInfo>,
    /// Pinned in its channel.
    #[serde(default)]
    pub pinned: bool,
    /// Whether the node judged that it notifies us (mention of us, of a role of ours, or an
    /// allowed `@everyone`/`@here`).
    #[serde(default)]
    pub mentions_me: bool,
    /// Attached files.
    #[serde(default)]
    pub files: Vec<FileCard>,
}

/// A file attached to a message, as the message list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct FileCard {
    /// Content address (hex): what fetch and save take.
    pub root: String,
    /// File name.
    pub name: String,
    /// Media type.
    #[serde(default)]
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
    /// `remote`, `fetching`, `paused` or `complete`, when the message was loaded (live
    /// changes arrive as [`Event::Transfer`]).
    #[serde(default)]
    pub state: String,
    /// Bytes held when the message was loaded.
    #[serde(default)]
    pub have: u64,
    /// Thumbnail size in pixels, when the sender made one.
    #[serde(default)]
    pub thumbnail: Option<(u16, u16)>,
    /// The thumbnail's JPEG bytes, as received inside the encrypted message: decoded only
    /// when the app shows it (see [`crate::state::files`]).
    #[serde(skip)]
    pub thumb: Option<Arc<Thumbnail>>,
}

impl From<FileInfo> for FileCard {
    fn from(f: FileInfo) -> Self {
        Self {
            root: f.root,
            name: f.name,
            mime: f.mime,
            size: f.size,
            state: f.state,
            have: f.have,
            thumbnail: f.thumbnail,
            thumb: f.thumb.map(Arc::new),
        }
    }
}

/// A file transfer's state: from fetch progress events, the end of a fetch, or a status query.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
pub struct Transfer {
    /// The file (hex root).
    pub root: String,
    /// Its size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Bytes held.
    #[serde(default)]
    pub have: u64,
    /// `have / size` in percent.
    #[serde(default)]
    pub percent: f64,
    /// Recent speed, bytes per second.
    #[serde(default)]
    pub bytes_per_sec: u64,
    /// Seconds left at that speed.
    #[serde(default)]
    pub eta_secs: Option<u64>,
    /// `queued`, `waiting` (no member with the file connected), `fetching`, `paused` or
    /// `complete`.
    pub state: String,
    /// Why it paused.
    #[serde(default)]
    pub error: Option<String>,
}

impl From<securecomm_node::guild::service::files::Progress> for Transfer {
    fn from(p: securecomm_node::guild::service::files::Progress) -> Self {
        Self {
            root: p.root,
            size: p.size,
            have: p.have,
            percent: p.percent,
            bytes_per_sec: p.bytes_per_sec,
            eta_secs: p.eta_secs,
            state: p.state,
            error: None,
        }
    }
}

/// A search result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SearchHit {
    /// Guild id (hex).
    pub guild: String,
    /// Guild name.
    #[serde(default)]
    pub guild_name: String,
    /// Channel id.
    pub channel: u64,
    /// Channel name.
    #[serde(default)]
    pub channel_name: String,
    /// Message id (hex).
    pub id: String,
    /// Author (hex).
    pub sender: String,
    /// Author's nickname.
    #[serde(default)]
    pub nickname: String,
    /// Author's clock, ms.
    pub sent_at: u64,
    /// The matching words in context, between U+0002 and U+0003.
    #[serde(default)]
    pub snippet: String,
}

/// A pinned message, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PinInfo {
    /// Message id (hex).
    pub id: String,
    /// Author (hex).
    pub sender: String,
    /// Author's clock, ms.
    pub sent_at: u64,
    /// The text.
    pub text: String,
}

/// A thread of a channel, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ThreadInfo {
    /// Its id (hex).
    pub id: String,
    /// The message it started from (hex), if any.
    #[serde(default)]
    pub starter: Option<String>,
    /// Its name.
    pub name: String,
    /// Archived (no new posts).
    pub archived: bool,
    /// Who created it (hex).
    pub created_by: String,
    /// Messages in it.
    pub messages: u64,
    /// The newest message's time, ms.
    pub last_at: u64,
}

/// One emoji's reactions on a message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReactionInfo {
    /// The emoji.
    pub emoji: String,
    /// Users who reacted (hex).
    #[serde(default)]
    pub users: Vec<String>,
}

/// Something one message did to another, as the timeline applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOp {
    /// `user` added or removed a reaction.
    React {
        /// Target message (hex).
        target: String,
        /// Who (hex).
        user: String,
        /// The emoji.
        emoji: String,
        /// Added or removed.
        add: bool,
    },
    /// The author edited the text.
    Edit {
        /// Target message (hex).
        target: String,
        /// New text.
        text: String,
        /// The edit's time, ms.
        at: u64,
    },
    /// Pinned or unpinned.
    Pin {
        /// Target message (hex).
        target: String,
        /// Pinned or not.
        pinned: bool,
    },
}

/// Receipts for one of our own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Delivery {
    /// Devices that confirmed it.
    pub delivered: u64,
    /// Devices of other members.
    pub members: u64,
}

/// Where a page of older channel history starts (the oldest message shown so far).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Before {
    /// Its sender's clock, ms.
    pub sent_at: u64,
    /// Its sending device (hex).
    pub device: String,
    /// Its seq.
    pub seq: u64,
}

/// A direct message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DmMessage {
    /// Message id (hex).
    pub id: String,
    /// The other user (hex).
    pub peer: String,
    /// Whether we sent it.
    pub outgoing: bool,
    /// Sender's clock, ms.
    pub sent_at: u64,
    /// The text.
    pub text: String,
}

/// What the node tells the UI.
#[derive(Debug, Clone)]
pub enum Event {
    /// The node runs with this identity.
    Started(Me),
    /// Create or unlock failed; the identity file is untouched.
    LoginFailed(String),
    /// The guild list.
    Guilds(Vec<GuildInfo>),
    /// A guild's channels.
    Channels {
        /// Guild id (hex).
        guild: String,
        /// Its channels.
        channels: Vec<ChannelInfo>,
    },
    /// A guild's members.
    Members {
        /// Guild id (hex).
        guild: String,
        /// Its members.
        members: Vec<MemberInfo>,
    },
    /// A channel's history, oldest first.
    History {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Messages.
        messages: Vec<Message>,
    },
    /// An older page of a channel's history, oldest first.
    Older {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Messages.
        messages: Vec<Message>,
        /// Whether the node has nothing older.
        exhausted: bool,
    },
    /// A message was stored (sent here or received).
    Message(Message),
    /// A file transfer moved on (progress, done, paused).
    Transfer(Transfer),
    /// A file was saved where the user asked.
    FileSaved {
        /// The file (hex root).
        root: String,
        /// Its name.
        name: String,
        /// Where it was written.
        path: String,
    },
    /// A message changed another (reaction, edit, pin).
    Op {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// What it did.
        op: MessageOp,
    },
    /// Search results, best first.
    SearchResults {
        /// The text searched.
        text: String,
        /// Hits.
        hits: Vec<SearchHit>,
    },
    /// A channel's pinned messages, most recently pinned first.
    Pins {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// The messages.
        pins: Vec<PinInfo>,
    },
    /// A channel's threads.
    Threads {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Newest activity first.
        threads: Vec<ThreadInfo>,
    },
    /// A thread's messages, oldest first.
    ThreadHistory {
        /// Thread id (hex).
        thread: String,
        /// Messages.
        messages: Vec<Message>,
    },
    /// A message was posted in a thread.
    ThreadMessage {
        /// Thread id (hex).
        thread: String,
        /// The message.
        message: Message,
    },
    /// A thread was created or changed: reload the channel's list.
    ThreadsChanged {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
    },
    /// A member is typing in a channel.
    Typing {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Who (hex).
        user: String,
        /// Their nickname.
        nickname: String,
    },
    /// A message was erased (deleted, or its timer ran out).
    Erased {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Message id (hex).
        id: String,
    },
    /// A pending message was stored and handed to the network (it also arrives as
    /// [`Event::Message`] or [`Event::Dm`]).
    Sent {
        /// The UI's id for it.
        local: u64,
    },
    /// A pending message could not be sent; it stays in the outbox for a retry.
    SendFailed {
        /// The UI's id for it.
        local: u64,
        /// Why.
        why: String,
    },
    /// DM history with a user.
    DmHistory {
        /// The user.
        user: String,
        /// Messages, oldest first.
        messages: Vec<DmMessage>,
    },
    /// A DM arrived or was sent.
    Dm(DmMessage),
    /// A guild was created here.
    GuildCreated {
        /// Its id (hex).
        id: String,
    },
    /// A channel was created here.
    ChannelCreated {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        id: u64,
    },
    /// An invite was created.
    Invite {
        /// Guild id (hex).
        guild: String,
        /// The code to share.
        code: String,
    },
    /// A join succeeded.
    Joined {
        /// The code used.
        code: String,
        /// The guild joined (hex).
        guild: String,
    },
    /// A join failed.
    JoinFailed {
        /// The code used.
        code: String,
        /// Why.
        why: String,
    },
    /// Connection indicator.
    Net(NetStatus),
    /// Users (hex ids) with a device connected right now.
    Presence(std::collections::HashSet<String>),
    /// Verification ([`crate::verify`]).
    Verify(crate::verify::VerifyEvent),
    /// The settings window ([`crate::settings`]).
    Settings(crate::settings::SettingsEvent),
    /// A command failed.
    Error(String),
    /// Guild management data (see [`manage`]).
    Manage(ManageEvent),
    /// Voice channels ([`crate::voice`]).
    Voice(crate::voice::VoiceEvent),
    /// A guild's custom emoji (the whole list), with the images that are here.
    Emojis {
        /// Guild id (hex).
        guild: String,
        /// By name.
        list: Vec<crate::state::emoji::CustomEmoji>,
    },
}

/// How the backend runs.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// The data folder (identity file, database, control socket).
    pub data_dir: PathBuf,
    /// Network settings.
    pub net: NetConfig,
    /// Argon2id parameters and limits for the identity file (`None`: the strong defaults).
    pub kdf: Option<(KdfParams, KdfLimits)>,
    /// Input and output devices for every call, whatever the audio settings say (`None`: the
    /// settings). Tests and the screenshot tour use the null devices: no sound card there.
    pub voice_devices: Option<(Device, Device)>,
}

impl BackendConfig {
    /// Loopback only, no mDNS, and Argon2id parameters weak enough for a test to create an
    /// identity in milliseconds: for tests, benchmarks and the screenshot tour's throwaway
    /// identities, never for a real one.
    pub fn loopback_for_tests(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            net: NetConfig {
                listen: "/ip4/127.0.0.1/tcp/0".parse().into_iter().collect(),
                mdns: false,
                ..NetConfig::default()
            },
            kdf: Some((
                KdfParams::insecure_for_tests_only(64, 1, 1),
                KdfLimits::INSECURE_TEST_ONLY,
            )),
            voice_devices: Some((Device::Null, Device::Null)),
        }
    }

    /// The desktop defaults: listen on every interface, find LAN peers with mDNS.
    pub fn desktop(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            net: NetConfig {
                mdns: true,
                ..NetConfig::default()
            },
            kdf: None,
            voice_devices: None,
        }
    }

    fn store(&self) -> IdentityStore {
        match self.kdf {
            Some((p, l)) => IdentityStore::with_params(&self.data_dir, p, l),
            None => IdentityStore::new(&self.data_dir),
        }
    }

    /// Whether the data folder already holds an identity.
    pub fn has_identity(&self) -> bool {
        self.store().exists()
    }
}

/// Who to wake when an event is queued.
type Waker = Arc<Mutex<Option<egui::Context>>>;

/// The UI's handle on the node thread.
#[derive(Debug)]
pub struct Backend {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts the node thread (the node itself starts on `Create` / `Unlock`).
    pub fn spawn(cfg: BackendConfig) -> std::io::Result<Self> {
        let (ctx_tx, ctx_rx) = mpsc::channel(COMMAND_BUFFER);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_BUFFER);
        let waker: Waker = Arc::new(Mutex::new(None));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("securecomm-node")
            .build()?;
        let emit = Emitter {
            tx: ev_tx,
            waker: waker.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("securecomm-backend".into())
            .spawn(move || {
                rt.block_on(run(cfg, ctx_rx, emit));
                rt.shutdown_timeout(Duration::from_secs(2));
            })?;
        Ok(Self {
            commands: ctx_tx,
            events: ev_rx,
            waker,
            thread: Some(thread),
        })
    }

    /// Tells the backend which context to repaint when events arrive.
    pub fn set_context(&self, ctx: &egui::Context) {
        if let Ok(mut w) = self.waker.lock()
            && w.is_none()
        {
            *w = Some(ctx.clone());
        }
    }

    /// Queues a command; a full queue or a stopped node is an error to show.
    pub fn send(&self, cmd: Command) -> Result<(), String> {
        self.commands.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => "the node is busy; try again".to_owned(),
            mpsc::error::TrySendError::Closed(_) => "the node has stopped".to_owned(),
        })
    }

    /// Takes up to `max` queued events.
    pub fn drain(&mut self, max: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.events.try_recv() {
                Ok(e) => out.push(e),
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Closing the command channel ends `run`, which stops the node.
        let (dead, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.commands, dead));
        self.events.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends events to the UI and wakes it.
#[derive(Clone)]
pub(crate) struct Emitter {
    tx: mpsc::Sender<Event>,
    waker: Waker,
}

impl Emitter {
    pub(crate) async fn emit(&self, e: Event) {
        let _ = self.tx.send(e).await;
        if let Ok(w) = self.waker.lock()
            && let Some(ctx) = w.as_ref()
        {
            ctx.request_repaint();
        }
    }
}

async fn run(cfg: BackendConfig, mut commands: mpsc::Receiver<Command>, emit: Emitter) {
    let mut node: Option<Node> = None;
    let mut ext: Option<Arc<Ext>> = None;
    while let Some(cmd) = commands.recv().await {
        match (cmd, &node) {
            (Command::Create { name, passphrase }, None) => {
                let store = cfg.store();
                let opened = tokio::task::spawn_blocking(move || {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    store.create(
                        &mut rand_core::OsRng,
                        passphrase.0.as_bytes(),
                        &name,
                        "desktop",
                        now,
                    )
                })
                .await;
                (node, ext) = started(start(&cfg, opened, &emit).await, &cfg, &emit);
            }
            (Command::Unlock { passphrase }, None) => {
                let store = cfg.store();
                let opened =
                    tokio::task::spawn_blocking(move || store.unlock(passphrase.0.as_bytes()))
                        .await;
                (node, ext) = started(start(&cfg, opened, &emit).await, &cfg, &emit);
            }
            (Command::Restore { path, passphrase }, None) => {
                let store = cfg.store();
                let restored = tokio::task::spawn_blocking(move || {
                    let p = passphrase.0.as_bytes();
                    store.import_backup(&mut rand_core::OsRng, std::path::Path::new(&path), p, p)
                })
                .await;
                match restored {
                    Ok(Err(e)) => {
                        emit.emit(Event::LoginFailed(crate::settings::restore_error(&e)))
                            .await;
                    }
                    opened => {
                        (node, ext) = started(start(&cfg, opened, &emit).await, &cfg, &emit);
                    }
                }
            }
            (Command::Verify(cmd), Some(_)) => {
                if let Some(x) = ext.clone() {
                    let emit = emit.clone();
                    tokio::spawn(async move {
                        let evs = match tokio::task::spawn_blocking(move || {
                            crate::verify::execute(&x.node.guilds, &x.me, cmd)
                        })
                        .await
                        {
                            Ok(Ok(evs)) => evs,
                            Ok(Err(e)) => vec![Event::Error(e)],
                            Err(e) => vec![Event::Error(format!("verification task failed: {e}"))],
                        };
                        for ev in evs {
                            emit.emit(ev).await;
                        }
                    });
                }
            }
            (Command::Settings(cmd), Some(_)) => {
                if let Some(x) = ext.clone() {
                    let emit = emit.clone();
                    tokio::spawn(async move {
                        for ev in crate::settings::execute(&x.node, cmd).await {
                            emit.emit(ev).await;
                        }
                    });
                }
            }
            (Command::Voice(cmd), Some(_)) => {
                if let Some(x) = &ext
                    && x.voice.try_send(cmd).is_err()
                {
                    emit.emit(Event::Error("voice is busy; try again".into()))
                        .await;
                }
            }
            (
                Command::Create { .. } | Command::Unlock { .. } | Command::Restore { .. },
                Some(_),
            ) => {
                emit.emit(Event::Error("already unlocked".into())).await;
            }
            (_, None) => {
                emit.emit(Event::Error("unlock first".into())).await;
            }
            (cmd, Some(n)) => {
                let g = n.guilds.clone();
                let emit = emit.clone();
                tokio::spawn(async move { execute(&g, cmd, &emit).await });
            }
        }
    }
    if let Some(n) = node {
        n.stop().await;
    }
}

/// What the verification and settings commands need of a started node.
struct Ext {
    node: crate::settings::NodeCtx,
    me: securecomm_noise::keys::RootPublicKey,
    /// The voice worker's queue (commands run in order: a mute after a join applies to it).
    voice: mpsc::Sender<crate::voice::VoiceCommand>,
}

/// After a start: the node, and the context for the extra commands, whose start-up work
/// (saved relays, contacts) runs in the background.
fn started(
    s: Option<(Node, securecomm_noise::keys::RootPublicKey)>,
    cfg: &BackendConfig,
    emit: &Emitter,
) -> (Option<Node>, Option<Arc<Ext>>) {
    let Some((node, me)) = s else {
        return (None, None);
    };
    let x = Arc::new(Ext {
        node: crate::settings::NodeCtx {
            data_dir: cfg.data_dir.clone(),
            store: cfg.store(),
            base_relays: cfg.net.relays.iter().map(ToString::to_string).collect(),
            guilds: node.guilds.clone(),
            net: node.net.clone(),
            prefs: Default::default(),
        },
        me,
        voice: crate::voice::spawn(
            crate::voice::VoiceCtx::new(
                node.voice.clone(),
                node.guilds.clone(),
                cfg.voice_devices.clone(),
            ),
            emit.clone(),
        ),
    });
    let (x2, emit) = (x.clone(), emit.clone());
    tokio::spawn(async move {
        for ev in crate::settings::on_started(&x2.node).await {
            emit.emit(ev).await;
        }
        let g = x2.node.guilds.clone();
        match tokio::task::spawn_blocking(move || crate::verify::load(&g)).await {
            Ok(Ok(ev)) => emit.emit(ev).await,
            Ok(Err(e)) => emit.emit(Event::Error(e)).await,
            Err(_) => {}
        }
    });
    (Some(node), Some(x))
}

async fn start(
    cfg: &BackendConfig,
    opened: Result<Result<LocalProfile, StoreError>, tokio::task::JoinError>,
    emit: &Emitter,
) -> Option<(Node, securecomm_noise::keys::RootPublicKey)> {
    let profile = match opened {
        Ok(Ok(p)) => p,
        Ok(Err(StoreError::WrongPassphrase)) => {
            emit.emit(Event::LoginFailed(
                "Wrong passphrase. Nothing was changed; try again.".into(),
            ))
            .await;
            return None;
        }
        Ok(Err(e)) => {
            emit.emit(Event::LoginFailed(e.to_string())).await;
            return None;
        }
        Err(e) => {
            emit.emit(Event::LoginFailed(format!("identity task failed: {e}")))
                .await;
            return None;
        }
    };
    let node = match Node::start(cfg.data_dir.clone(), &profile, cfg.net.clone()).await {
        Ok(n) => n,
        Err(e) => {
            emit.emit(Event::LoginFailed(format!("the node did not start: {e}")))
                .await;
            return None;
        }
    };
    let me = Me {
        display_name: profile.display_name.clone(),
        user_id: hex::encode(profile.identity.root_public().as_bytes()),
        peer_id: node.net.peer_id().to_string(),
    };
    tokio::spawn(forward_events(node.guilds.clone(), emit.clone()));
    tokio::spawn(poll_net(
        node.net.clone(),
        node.guilds.clone(),
        emit.clone(),
    ));
    emit.emit(Event::Started(me)).await;
    Some((node, profile.identity.root_public()))
}

async fn forward_events(g: GuildService, emit: Emitter) {
    let mut rx = g.events();
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Missed events: reload everything visible.
                refresh(&g, &emit).await;
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        match ev {
            GuildEvent::Message(m) => {
                use securecomm_node::guild::content::Op;
                let (guild, channel) = (m.guild.clone(), m.channel);
                if m.op.is_none()
                    && let Some(thread) = m.thread.clone()
                {
                    let message = Message {
                        guild: m.guild,
                        channel: m.channel,
                        id: m.id,
                        sender: m.sender,
                        nickname: m.nickname,
                        sent_at: m.sent_at,
                        text: m.text,
                        sender_device: m.sender_device,
                        seq: m.seq,
                        reply_to: m.reply_to,
                        mentions_me: m.mentions_me,
                        ..Message::default()
                    };
                    emit.emit(Event::ThreadMessage { thread, message }).await;
                    emit.emit(Event::ThreadsChanged { guild, channel }).await;
                    continue;
                }
                let op = match m.op {
                    None => None,
                    Some(Op::React { target, emoji, add }) => Some(MessageOp::React {
                        target,
                        user: m.sender.clone(),
                        emoji,
                        add,
                    }),
                    Some(Op::Edit { target, text }) => Some(MessageOp::Edit {
                        target,
                        text,
                        at: m.sent_at,
                    }),
                    Some(Op::Pin { target, pinned }) => Some(MessageOp::Pin { target, pinned }),
                    Some(Op::Thread { .. }) => {
                        emit.emit(Event::ThreadsChanged { guild, channel }).await;
                        continue;
                    }
                    // Deletes arrive as `Erased`.
                    Some(Op::Delete { .. }) => continue,
                };
                let ev = match op {
                    Some(op) => Event::Op { guild, channel, op },
                    None => Event::Message(Message {
                        guild: m.guild,
                        channel: m.channel,
                        id: m.id,
                        sender: m.sender,
                        nickname: m.nickname,
                        sent_at: m.sent_at,
                        text: m.text,
                        sender_device: m.sender_device,
                        seq: m.seq,
                        delivery: None,
                        reply_to: m.reply_to,
                        edited_at: m.edited_at,
                        reactions: Vec::new(),
                        pinned: m.pinned,
                        mentions_me: m.mentions_me,
                        files: m.files.into_iter().map(FileCard::from).collect(),
                    }),
                };
                emit.emit(ev).await;
            }
            GuildEvent::Erased { guild, channel, id } => {
                emit.emit(Event::Erased { guild, channel, id }).await;
            }
            // Notifications come from `Message` (its `mentions_me`).
            GuildEvent::Mention(_) => {}
            GuildEvent::FileProgress(p) => emit.emit(Event::Transfer(p.into())).await,
            GuildEvent::FileDone {
                root, ok, error, ..
            } => {
                if ok {
                    // A custom emoji's image fetched ahead of time: show it.
                    manage::on_file_done(&g, &root, &emit).await;
                }
                // The size and bytes held come from the card; only the state changes here.
                let t = Transfer {
                    root,
                    state: if ok { "complete" } else { "paused" }.into(),
                    percent: if ok { 100.0 } else { 0.0 },
                    error,
                    ..Transfer::default()
                };
                emit.emit(Event::Transfer(t)).await;
            }
            GuildEvent::Typing {
                guild,
                channel,
                user,
                nickname,
            } => {
                emit.emit(Event::Typing {
                    guild,
                    channel,
                    user,
                    nickname,
                })
                .await;
            }
            GuildEvent::Changed { guild } => {
                refresh_guild_list(&g, &emit).await;
                load_guild(&g, &guild, &emit).await;
            }
            GuildEvent::Dm(m) => {
                emit.emit(Event::Dm(DmMessage {
                    id: m.id,
                    peer: m.peer,
                    outgoing: m.outgoing,
                    sent_at: m.sent_at,
                    text: m.text,
                }))
                .await;
            }
        }
    }
}

async fn poll_net(net: Client, guilds: GuildService, emit: Emitter) {
    let mut last = None;
    let mut last_online = None;
    let mut last_relays = None;
    loop {
        let online = guilds.online_users().await;
        if last_online.as_ref() != Some(&online) {
            last_online = Some(online.clone());
            emit.emit(Event::Presence(online)).await;
        }
        if let Ok(relays) = net.relays().await {
            let rows: Vec<crate::settings::RelayRow> = relays.into_iter().map(Into::into).collect();
            if last_relays.as_ref() != Some(&rows) {
                last_relays = Some(rows.clone());
                emit.emit(Event::Settings(crate::settings::SettingsEvent::Health(
                    rows,
                )))
                .await;
            }
        }
        if let Ok(peers) = net.peers().await {
            let relays = net.relays().await.unwrap_or_default();
            let relay_peers: std::collections::HashSet<_> = relays.iter().map(|r| r.peer).collect();
            // Relays are infrastructure, not people: counted apart.
            let people: Vec<_> = peers
                .iter()
                .filter(|p| !relay_peers.contains(&p.peer))
                .collect();
            let direct = people.iter().filter(|p| p.path == PeerPath::Direct).count();
            let s = NetStatus {
                direct,
                relayed: people.len() - direct,
                relays_reserved: relays
                    .iter()
                    .filter(|r| r.state == RelayState::Reserved)
                    .count(),
                relays_known: relays.len(),
            };
            if last != Some(s) {
                last = Some(s);
                emit.emit(Event::Net(s)).await;
            }
        }
        tokio::time::sleep(NET_POLL).await;
    }
}

/// History as JSON leaves out thumbnail bytes: they are read from the local store for the
/// messages whose files have one (reading is not decoding; that waits for the view).
fn fill_thumbs(g: &GuildService, guild: &str, messages: &mut [Message]) {
    for m in messages.iter_mut() {
        if !m
            .files
            .iter()
            .any(|f| f.thumbnail.is_some() && f.thumb.is_none())
        {
            continue;
        }
        let Ok(infos) = g.message_files(guild, &m.id) else {
            continue;
        };
        for info in infos {
            if let Some(card) = m.files.iter_mut().find(|c| c.root == info.root) {
                card.thumb = info.thumb.map(Arc::new);
            }
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(v: Value, what: &str) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("unexpected {what} from the node: {e}"))
}

async fn refresh_guild_list(g: &GuildService, emit: &Emitter) -> Vec<GuildInfo> {
    match g
        .list_guilds()
        .map_err(|e| e.to_string())
        .and_then(|v| parse::<Vec<GuildInfo>>(v, "guild list"))
    {
        Ok(gs) => {
            emit.emit(Event::Guilds(gs.clone())).await;
            gs
        }
        Err(e) => {
            emit.emit(Event::Error(e)).await;
            Vec::new()
        }
    }
}

async fn refresh(g: &GuildService, emit: &Emitter) {
    for gi in refresh_guild_list(g, emit).await {
        load_guild(g, &gi.id, emit).await;
    }
}

async fn load_guild(g: &GuildService, guild: &str, emit: &Emitter) {
    let channels = g
        .list_channels(guild)
        .map_err(|e| e.to_string())
        .and_then(|v| parse::<Vec<ChannelInfo>>(v, "channel list"));
    let members = g
        .members(guild)
        .map_err(|e| e.to_string())
        .and_then(|v| parse::<Vec<MemberInfo>>(v, "member list"));
    match channels {
        Ok(mut channels) => {
            channels.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            emit.emit(Event::Channels {
                guild: guild.to_owned(),
                channels,
            })
            .await;
        }
        Err(e) => emit.emit(Event::Error(e)).await,
    }
    match members {
        Ok(members) => {
            // Verification: remember names and devices; a change may raise a warning.
            let (g2, m2) = (g.clone(), members.clone());
            let contacts = tokio::task::spawn_blocking(move || {
                crate::verify::observe_members(&g2, &m2).and_then(|()| crate::verify::load(&g2))
            })
            .await;
            match contacts {
                Ok(Ok(ev)) => emit.emit(ev).await,
                Ok(Err(e)) => emit.emit(Event::Error(e)).await,
                Err(_) => {}
            }
            emit.emit(Event::Members {
                guild: guild.to_owned(),
                members,
            })
            .await;
        }
        Err(e) => emit.emit(Event::Error(e)).await,
    }
    manage::load(g, guild, emit).await;
}

async fn execute(g: &GuildService, cmd: Command, emit: &Emitter) {
    let result: Result<(), String> = async {
        match cmd {
            Command::Create { .. }
            | Command::Unlock { .. }
            | Command::Restore { .. }
            | Command::Verify(_)
            | Command::Settings(_)
            | Command::Voice(_) => Ok(()),
            Command::Refresh => {
                refresh(g, emit).await;
                Ok(())
            }
            Command::LoadGuild { guild } => {
                load_guild(g, &guild, emit).await;
                Ok(())
            }
            Command::LoadHistory { guild, channel } => {
                let v = g
                    .history(&guild, &channel.to_string(), HISTORY_LIMIT)
                    .map_err(|e| e.to_string())?;
                let mut messages = parse::<Vec<Message>>(v, "history")?;
                fill_thumbs(g, &guild, &mut messages);
                emit.emit(Event::History {
                    guild,
                    channel,
                    messages,
                })
                .await;
                Ok(())
            }
            Command::CreateGuild { name } => {
                let v = g.create_guild(&name).await.map_err(|e| e.to_string())?;
                let id = v
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or("the node returned no guild id")?
                    .to_owned();
                emit.emit(Event::GuildCreated { id }).await;
                Ok(())
            }
            Command::CreateChannel { guild, name } => {
                let v = g
                    .create_channel(&guild, &name, false)
                    .await
                    .map_err(|e| e.to_string())?;
                let id = v
                    .get("id")
                    .and_then(Value::as_u64)
                    .ok_or("the node returned no channel id")?;
                emit.emit(Event::ChannelCreated { guild, id }).await;
                Ok(())
            }
            Command::LoadOlder {
                guild,
                channel,
                before,
            } => {
                let device = hex::decode(&before.device)
                    .ok()
                    .and_then(|d| <[u8; 32]>::try_from(d).ok())
                    .ok_or("bad history cursor")?;
                let cursor = HistoryCursor {
                    sent_at: before.sent_at,
                    device,
                    seq: before.seq,
                };
                let v = g
                    .history_page(&guild, &channel.to_string(), Some(&cursor), OLDER_PAGE)
                    .map_err(|e| e.to_string())?;
                let mut messages = parse::<Vec<Message>>(v, "history")?;
                fill_thumbs(g, &guild, &mut messages);
                emit.emit(Event::Older {
                    guild,
                    channel,
                    exhausted: messages.len() < OLDER_PAGE,
                    messages,
                })
                .await;
                Ok(())
            }
            Command::Send {
                guild,
                channel,
                text,
                local,
                reply_to,
                files,
            } => {
                // The node emits the stored message as a guild event.
                let opts = securecomm_node::guild::service::messages::PostOptions {
                    reply_to,
                    files,
                    ..Default::default()
                };
                match g.post(&guild, &channel.to_string(), &text, &opts).await {
                    Ok(_) => emit.emit(Event::Sent { local }).await,
                    Err(e) => {
                        emit.emit(Event::SendFailed {
                            local,
                            why: e.to_string(),
                        })
                        .await;
                    }
                }
                Ok(())
            }
            Command::FetchFile { root } => {
                let v = match g.fetch_file(&root).await {
                    Ok(v) => v,
                    Err(e) => {
                        // The card leaves "queued" (the app set it on the click).
                        let why = format!("could not fetch the file: {e}");
                        emit.emit(Event::Transfer(Transfer {
                            root,
                            state: "paused".into(),
                            error: Some(why.clone()),
                            ..Transfer::default()
                        }))
                        .await;
                        return Err(why);
                    }
                };
                let mut t = parse::<Transfer>(v, "file status")?;
                // An already running fetch reports `queued` until its first progress.
                if t.state == "remote" {
                    t.state = "queued".into();
                }
                emit.emit(Event::Transfer(t)).await;
                Ok(())
            }
            Command::SaveFile { root, name, path } => {
                if path.exists() {
                    return Err(format!(
                        "{} already exists: files are never overwritten; choose another name",
                        path.display()
                    ));
                }
                g.save_file(&root, &path)
                    .await
                    .map_err(|e| format!("could not save {name}: {e}"))?;
                emit.emit(Event::FileSaved {
                    root,
                    name,
                    path: path.display().to_string(),
                })
                .await;
                Ok(())
            }
            Command::React {
                guild,
                channel,
                msg,
                emoji,
                add,
            } => g
                .react(&guild, &channel.to_string(), &msg, &emoji, add)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Command::Edit {
                guild,
                channel,
                msg,
                text,
            } => g
                .edit(&guild, &channel.to_string(), &msg, &text)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Command::Delete {
                guild,
                channel,
                msg,
            } => g
                .delete(&guild, &channel.to_string(), &msg)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Command::Search {
                text,
                guild,
                channel,
                author,
            } => {
                let req = securecomm_node::guild::service::search::SearchRequest {
                    text: text.clone(),
                    guild,
                    channel: channel.map(|c| c.to_string()),
                    author,
                    after: None,
                    before: None,
                    has_file: None,
                    order: Default::default(),
                    limit: 50,
                    offset: 0,
                };
                let v = g.search(&req).map_err(|e| e.to_string())?;
                let hits = parse::<Vec<SearchHit>>(
                    v.get("hits").cloned().unwrap_or(Value::Null),
                    "search results",
                )?;
                emit.emit(Event::SearchResults { text, hits }).await;
                Ok(())
            }
            Command::LoadPins { guild, channel } => {
                let v = g
                    .pins(&guild, &channel.to_string())
                    .map_err(|e| e.to_string())?;
                let pins = parse::<Vec<PinInfo>>(v, "pins")?;
                emit.emit(Event::Pins {
                    guild,
                    channel,
                    pins,
                })
                .await;
                Ok(())
            }
            Command::MarkRead { guild, channel } => g
                .mark_read(&guild, &channel.to_string())
                .map(drop)
                .map_err(|e| e.to_string()),
            Command::LoadThreads { guild, channel } => {
                let v = g
                    .threads(&guild, &channel.to_string())
                    .map_err(|e| e.to_string())?;
                let threads = parse::<Vec<ThreadInfo>>(v, "thread list")?;
                emit.emit(Event::Threads {
                    guild,
                    channel,
                    threads,
                })
                .await;
                Ok(())
            }
            Command::LoadThread {
                guild,
                channel,
                thread,
            } => {
                let v = g
                    .history_in(&guild, &channel.to_string(), Some(&thread), None, 500)
                    .map_err(|e| e.to_string())?;
                let messages = parse::<Vec<Message>>(v, "thread history")?;
                emit.emit(Event::ThreadHistory { thread, messages }).await;
                Ok(())
            }
            Command::CreateThread {
                guild,
                channel,
                name,
                from,
            } => g
                .thread_create(&guild, &channel.to_string(), &name, from.as_deref())
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Command::ThreadPost {
                guild,
                channel,
                thread,
                text,
            } => {
                let opts = securecomm_node::guild::service::messages::PostOptions {
                    thread: Some(thread),
                    ..Default::default()
                };
                g.post(&guild, &channel.to_string(), &text, &opts)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Command::ArchiveThread {
                guild,
                channel,
                thread,
                archived,
            } => g
                .thread_update(&guild, &channel.to_string(), &thread, None, Some(archived))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Command::Typing { guild, channel } => g
                .typing(&guild, &channel.to_string())
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Command::Pin {
                guild,
                channel,
                msg,
                pinned,
            } => g
                .pin(&guild, &channel.to_string(), &msg, pinned)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Command::CreateInvite { guild } => {
                let v = g
                    .create_invite(&guild, None, 0)
                    .await
                    .map_err(|e| e.to_string())?;
                let code = v
                    .get("code")
                    .and_then(Value::as_str)
                    .ok_or("the node returned no invite code")?
                    .to_owned();
                emit.emit(Event::Invite { guild, code }).await;
                Ok(())
            }
            Command::Join { code } => {
                match g.join(&code).await {
                    Ok(v) => {
                        let guild = v
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        emit.emit(Event::Joined { code, guild }).await;
                    }
                    Err(e) => {
                        emit.emit(Event::JoinFailed {
                            code,
                            why: e.to_string(),
                        })
                        .await;
                    }
                }
                Ok(())
            }
            Command::DmSend { user, text, local } => {
                let sent = g
                    .dm_send(&user, &text)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|v| parse::<DmMessage>(v, "direct message"));
                match sent {
                    Ok(m) => {
                        emit.emit(Event::Dm(m)).await;
                        emit.emit(Event::Sent { local }).await;
                    }
                    Err(why) => emit.emit(Event::SendFailed { local, why }).await,
                }
                Ok(())
            }
            Command::DmHistory { user } => {
                let v = g
                    .dm_history(&user, HISTORY_LIMIT)
                    .map_err(|e| e.to_string())?;
                let messages = parse::<Vec<DmMessage>>(v, "DM history")?;
                emit.emit(Event::DmHistory { user, messages }).await;
                Ok(())
            }
            Command::Manage(m) => {
                manage::execute(g, m, emit).await;
                Ok(())
            }
        }
    }
    .await;
    if let Err(e) = result {
        emit.emit(Event::Error(e)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_debug_is_redacted() {
        let cmd = Command::Unlock {
            passphrase: Passphrase::new("hunter2-secret".into()),
        };
        let s = format!("{cmd:?}");
        assert!(!s.contains("hunter2"), "{s}");
    }
}
