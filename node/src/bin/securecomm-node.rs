//! `securecomm-node`: the headless SecureComm node. Thin: parses arguments and calls the library.
//!
//! ```text
//! securecomm-node                          # create an identity on first run, then show it
//! securecomm-node whoami
//! securecomm-node safety-number <their root key (hex)> [--their-id ID]
//! securecomm-node backup export FILE | backup import FILE
//! securecomm-node passphrase
//! securecomm-node run [--listen MULTIADDR]... [--relay MULTIADDR]... [--mdns]
//! securecomm-node peers | listen-addrs | relays | dial MULTIADDR | events | stop     (against a running node)
//! securecomm-node guild create NAME | guild list | guild join CODE
//! securecomm-node invite create GUILD [--expires SECS] [--uses N]
//! securecomm-node channel create GUILD NAME [--voice] | channel list GUILD
//! securecomm-node send GUILD CHANNEL TEXT | history GUILD CHANNEL [--limit N] | members GUILD
//! securecomm-node role create GUILD NAME --perms LIST | role grant GUILD USER ROLE
//! securecomm-node kick GUILD USER | ban GUILD USER [--reason TEXT]
//! securecomm-node sound upload GUILD FILE --name N [--emoji E] [--volume P] | sound list GUILD
//! securecomm-node sound play GUILD SOUND | sound delete GUILD SOUND | sound volume PERCENT
//! securecomm-node emoji upload GUILD FILE --name N | emoji list GUILD | emoji delete GUILD EMOJI
//! securecomm-node emoji save GUILD EMOJI OUT.png
//! securecomm-node search TEXT [--guild G] [--channel C] [--author USER] [--after DATE]
//!                 [--before DATE] [--has-file] [--newest] [--limit N] [--offset N]
//! ```
//! Every command takes `--json` for machine-readable output.
//! The passphrase is read from the terminal, or from `SECURECOMM_PASSPHRASE` for scripts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use rand_core::OsRng;
use securecomm_node::control::ControlClient;
use securecomm_node::net::{Event, NetConfig};
use securecomm_node::runtime::Node;
use securecomm_node::store::{IdentityStore, LocalProfile, StoreError};
use securecomm_noise::fingerprint::SafetyNumber;
use securecomm_noise::keys::RootPublicKey;
use serde_json::{Value, json};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(
    name = "securecomm-node",
    version,
    about = "The SecureComm headless node"
)]
struct Cli {
    /// Data directory (default: $XDG_DATA_HOME/securecomm or ~/.local/share/securecomm).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new identity (refuses to overwrite one).
    Init {
        /// The name others see.
        #[arg(long)]
        name: String,
        /// This device's name.
        #[arg(long, default_value = "desktop")]
        device: String,
    },
    /// Unlock the identity and show its public keys.
    Whoami,
    /// The safety number between you and another user, to compare in person.
    SafetyNumber {
        /// Their root public key, 64 hex digits (from their `whoami`), or, with a running
        /// node, their nickname or user id in one of your guilds.
        their_key: String,
        /// Their user id (by default their root key in hex).
        #[arg(long)]
        their_id: Option<String>,
    },
    /// Encrypted backups of the identity.
    Backup {
        #[command(subcommand)]
        action: BackupAction,
    },
    /// Change the passphrase.
    Passphrase,
    /// Run the node: join the network and serve the control socket in the data directory.
    Run {
        /// Address to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/4001 or /ip4/0.0.0.0/udp/4001/quic-v1.
        #[arg(long)]
        listen: Vec<String>,
        /// Relay to start from (repeatable): a full multiaddr with /p2p/. The node learns more
        /// relays from it and holds reservations on two, moving to another when one dies.
        #[arg(long)]
        relay: Vec<String>,
        /// Find peers on the local network with mDNS.
        #[arg(long)]
        mdns: bool,
        /// Listen on no address (reachable only through relays).
        #[arg(long, conflicts_with = "listen")]
        no_listen: bool,
        /// Do not upgrade relayed connections with hole punching (DCUtR).
        #[arg(long)]
        no_hole_punching: bool,
    },
    /// Connected peers and whether each path is direct or relayed (running node).
    Peers,
    /// The running node's addresses.
    ListenAddrs,
    /// Relays the running node knows (configured and discovered) and its reservations on them.
    Relays,
    /// Connect to a peer or relay (running node).
    Dial {
        /// A multiaddr.
        addr: String,
    },
    /// Stream the running node's events as JSON lines.
    Events,
    /// Stop the running node.
    Stop,
    /// Guilds: create, list, join (running node).
    Guild {
        #[command(subcommand)]
        action: GuildAction,
    },
    /// Invites (running node).
    Invite {
        #[command(subcommand)]
        action: InviteAction,
    },
    /// Channels (running node).
    Channel {
        #[command(subcommand)]
        action: ChannelAction,
    },
    /// Voice channels: join, leave, status, mute, deafen, volume (running node).
    Voice {
        #[command(subcommand)]
        action: VoiceAction,
    },
    /// The guild's soundboard: upload, list, play, delete (running node).
    Sound {
        #[command(subcommand)]
        action: SoundAction,
    },
    /// The guild's custom emoji: upload, list, delete, save (running node). React with one
    /// as `:name:`.
    Emoji {
        #[command(subcommand)]
        action: EmojiAction,
    },
    /// Send a message to a guild channel (running node). Returns once it is stored durably.
    /// At most 4,000 characters; Discord's markdown; mentions as `<@USER_ID>`, `<@&ROLE_ID>`,
    /// `@everyone`, `@here`.
    Send {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
        /// The text.
        text: String,
        /// Reply to this message (id or a unique prefix of at least 6 hex digits).
        #[arg(long)]
        reply_to: Option<String>,
        /// Post in this thread of the channel (id, prefix or name).
        #[arg(long)]
        thread: Option<String>,
        /// Disappear after this many seconds (from every member's store).
        #[arg(long)]
        expires: Option<u32>,
        /// Attach a file (encrypted before it leaves this device; repeat for several).
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<std::path::PathBuf>,
    },
    /// Shared files: fetch, follow, save, list (running node).
    Files {
        #[command(subcommand)]
        action: FilesAction,
    },
    /// React to a message with an emoji, or remove your reaction (running node).
    React {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
        /// Message id or prefix.
        msg: String,
        /// The emoji.
        emoji: String,
        /// Remove your reaction instead.
        #[arg(long)]
        remove: bool,
    },
    /// Edit one of your messages (running node).
    Edit {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
        /// Message id or prefix.
        msg: String,
        /// The new text.
        text: String,
    },
    /// Earlier versions of a message, as this device saw them (running node).
    Edits {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
        /// Message id or prefix.
        msg: String,
    },
    /// Delete a message: yours, or anyone's with Manage Messages. It is erased from every
    /// member's store that receives the delete; anyone who already read it may have kept a copy.
    Delete {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
        /// Message id or prefix.
        msg: String,
    },
    /// Pin a message in its channel, or unpin it (Manage Messages; running node).
    Pin {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
        /// Message id or prefix.
        msg: String,
        /// Unpin instead.
        #[arg(long)]
        unpin: bool,
    },
    /// Pinned messages of a channel (running node).
    Pins {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
    },
    /// Threads of a channel (running node).
    Thread {
        #[command(subcommand)]
        action: ThreadAction,
    },
    /// Unread mentions of you, per channel (running node).
    Mentions {
        /// Guild name or id.
        guild: String,
    },
    /// Tell the members connected now that you are typing in a channel (running node; at
    /// most once every 4 seconds per channel).
    Typing {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
    },
    /// Mark a channel read on this device (running node).
    Read {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
    },
    /// Messages of a guild channel, oldest first (running node).
    History {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
        /// How many of the latest messages.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Search the messages stored on this device (running node). TEXT is plain words (no
    /// operators; the last word also matches as a prefix); an empty TEXT lists the newest
    /// messages that pass the filters.
    Search {
        /// Words to find.
        #[arg(default_value = "")]
        text: String,
        /// Only this guild (name or id).
        #[arg(long)]
        guild: Option<String>,
        /// Only this channel (name or id; needs --guild).
        #[arg(long)]
        channel: Option<String>,
        /// Only messages by this user (id or nickname).
        #[arg(long)]
        author: Option<String>,
        /// Sent at or after: YYYY-MM-DD (UTC) or RFC 3339.
        #[arg(long)]
        after: Option<String>,
        /// Sent before: YYYY-MM-DD (UTC) or RFC 3339.
        #[arg(long)]
        before: Option<String>,
        /// Only messages with a file.
        #[arg(long)]
        has_file: bool,
        /// Newest first instead of best match first.
        #[arg(long)]
        newest: bool,
        /// Hits per page (at most 200).
        #[arg(long, default_value_t = 20)]
        limit: u64,
        /// Hits to skip (the previous page's `next_offset`).
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Direct messages with users you share a guild with (running node).
    Dm {
        #[command(subcommand)]
        action: DmAction,
    },
    /// Members of a guild with their roles (running node).
    Members {
        /// Guild name or id.
        guild: String,
    },
    /// Roles (running node).
    Role {
        #[command(subcommand)]
        action: RoleAction,
    },
    /// Remove a member from a guild (running node).
    Kick {
        /// Guild name or id.
        guild: String,
        /// The member's nickname or user id.
        user: String,
    },
    /// Ban a user from a guild (running node).
    Ban {
        /// Guild name or id.
        guild: String,
        /// The member's nickname or user id.
        user: String,
        /// Why (visible to members).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum GuildAction {
    /// Create a guild you own, with a #general channel.
    Create {
        /// Its name.
        name: String,
    },
    /// Guilds this node is in.
    List,
    /// Join with an invite code (`sc1...`).
    Join {
        /// The code.
        code: String,
    },
    /// Show a guild's settings, or change them (Manage Guild).
    Settings {
        /// Guild name or id.
        guild: String,
        /// Rename the guild.
        #[arg(long)]
        name: Option<String>,
        /// Whether new members may read history from before they joined.
        #[arg(long)]
        history_visible: Option<bool>,
        /// Largest attachment in bytes (0: no guild limit).
        #[arg(long)]
        max_upload: Option<u64>,
    },
}

#[derive(Subcommand)]
enum InviteAction {
    /// Create an invite code for a guild.
    Create {
        /// Guild name or id.
        guild: String,
        /// Seconds until it expires (default: never).
        #[arg(long)]
        expires: Option<u64>,
        /// How many joins it admits (default: unlimited).
        #[arg(long)]
        uses: Option<u64>,
    },
}

#[derive(Subcommand)]
enum ChannelAction {
    /// Create a channel.
    Create {
        /// Guild name or id.
        guild: String,
        /// Channel name.
        name: String,
        /// A voice channel instead of a text channel.
        #[arg(long)]
        voice: bool,
    },
    /// Channels of a guild.
    List {
        /// Guild name or id.
        guild: String,
    },
    /// Change a channel's settings (Manage Channels).
    Edit {
        /// Guild name or id.
        guild: String,
        /// Channel id (see `channel list`).
        channel: u64,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New topic.
        #[arg(long)]
        topic: Option<String>,
        /// Slow mode: seconds a member waits between messages (0: off).
        #[arg(long)]
        slow_mode: Option<u32>,
        /// Default disappearing-message timer in seconds (0: off).
        #[arg(long)]
        disappearing: Option<u32>,
    },
}

#[derive(Subcommand)]
enum ThreadAction {
    /// Start a thread in a channel, from a message or on its own.
    Create {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
        /// The thread's name (1 to 100 characters).
        name: String,
        /// Start it from this message.
        #[arg(long)]
        from: Option<String>,
    },
    /// Threads of a channel, newest activity first.
    List {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
    },
    /// Messages of a thread, oldest first.
    History {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
        /// Thread id, prefix or name.
        thread: String,
        /// How many of the latest messages.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Rename a thread (its creator or Manage Messages).
    Rename {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
        /// Thread id, prefix or name.
        thread: String,
        /// The new name.
        name: String,
    },
    /// Archive a thread (no new posts until unarchived).
    Archive {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
        /// Thread id, prefix or name.
        thread: String,
    },
    /// Unarchive a thread.
    Unarchive {
        /// Guild name or id.
        guild: String,
        /// Channel name or id.
        channel: String,
        /// Thread id, prefix or name.
        thread: String,
    },
}

#[derive(Subcommand)]
enum VoiceAction {
    /// Join a voice channel (leaving any other call).
    Join {
        /// Guild name or id.
        guild: String,
        /// Voice channel name or id.
        channel: String,
        #[command(flatten)]
        opts: CallOpts,
    },
    /// Call a user directly (nickname or user id from a guild you share), or answer their
    /// call (`voice status` shows calls ringing). Leaves any other call.
    Call {
        /// Nickname or user id.
        user: String,
        #[command(flatten)]
        opts: CallOpts,
    },
    /// Push-to-talk key down (`on`) or up (`off`).
    Transmit {
        /// `on` or `off`.
        state: OnOff,
    },
    /// Leave the call.
    Leave,
    /// Participants, paths (direct or relayed), jitter buffer, loss and bitrate.
    Status,
    /// Mute or unmute yourself.
    Mute {
        /// `on` or `off`.
        state: OnOff,
    },
    /// Deafen or undeafen yourself.
    Deafen {
        /// `on` or `off`.
        state: OnOff,
    },
    /// Relay-only during a call (`off` lets the call find a direct path).
    RelayOnly {
        /// `on` or `off`.
        state: OnOff,
    },
    /// A participant's playback volume, 0 to 200 percent.
    Volume {
        /// Nickname or peer id.
        user: String,
        /// Percent.
        percent: u32,
    },
    /// Server-mute (`on`) or unmute a member in every voice channel of a guild (Mute
    /// Members, and a higher role than theirs). Needs no call.
    ServerMute {
        /// Guild name or id.
        guild: String,
        /// Nickname or user id.
        user: String,
        /// `on` or `off`.
        state: OnOff,
    },
}

/// How a node takes part in a call (`voice join`, `voice call`).
#[derive(clap::Args)]
struct CallOpts {
    /// Speak from a 48 kHz WAV file (then silence), `default` for the default microphone,
    /// or `device:NAME`. Without it the node sends silence.
    #[arg(long)]
    input: Option<String>,
    /// Record what you hear to a WAV file, `default` for the default speakers, or
    /// `device:NAME`. Without it nothing is played.
    #[arg(long)]
    output: Option<String>,
    /// Send media only through a relay, never directly (peers never learn your address).
    #[arg(long)]
    relay_only: bool,
    /// Push-to-talk: send nothing until `voice transmit on` (else voice activity).
    #[arg(long)]
    push_to_talk: bool,
    /// Echo cancellation, noise suppression and voice activity detection on the input
    /// (default: on for a sound card, off for a WAV file).
    #[arg(long, conflicts_with = "no_processing")]
    processing: bool,
    /// No capture processing.
    #[arg(long)]
    no_processing: bool,
}

impl CallOpts {
    /// The control request's arguments (paths resolved here: the node runs elsewhere).
    fn to_json(&self) -> Value {
        let abs = |p: &Option<String>| {
            p.clone().map(|p| {
                if p == "default" || p.starts_with("device:") {
                    p
                } else {
                    std::path::absolute(&p)
                        .map(|a| a.display().to_string())
                        .unwrap_or(p)
                }
            })
        };
        let process = if self.processing {
            Some(true)
        } else if self.no_processing {
            Some(false)
        } else {
            None
        };
        json!({"input": abs(&self.input), "output": abs(&self.output),
               "relay_only": self.relay_only, "push_to_talk": self.push_to_talk,
               "process": process})
    }
}

#[derive(Subcommand)]
enum SoundAction {
    /// Add a sound to the guild's library (Manage Guild): MP3, Ogg (Vorbis, Opus), FLAC or
    /// WAV, at most 5.2 s and 512 KiB; normalized to a -1 dBFS peak.
    Upload {
        /// Guild name or id.
        guild: String,
        /// The audio file.
        file: PathBuf,
        /// The sound's name (1 to 32 characters).
        #[arg(long)]
        name: String,
        /// An emoji shown with it.
        #[arg(long)]
        emoji: Option<String>,
        /// Its volume, 0 to 100 percent.
        #[arg(long, default_value_t = 100)]
        volume: u8,
    },
    /// The guild's sounds.
    List {
        /// Guild name or id.
        guild: String,
    },
    /// Play a sound in the current call (Use Soundboard).
    Play {
        /// Guild name or id.
        guild: String,
        /// Sound name or id.
        sound: String,
    },
    /// Remove a sound from the library (Manage Guild).
    Delete {
        /// Guild name or id.
        guild: String,
        /// Sound name or id.
        sound: String,
    },
    /// Volume of every sound you hear, 0 to 200 percent.
    Volume {
        /// Percent.
        percent: u32,
    },
}

#[derive(Subcommand)]
enum EmojiAction {
    /// Add a custom emoji (Manage Guild): a PNG, JPEG, GIF or WebP image (at most 8 MiB),
    /// made into a PNG of at most 128 x 128 pixels without the original's metadata.
    Upload {
        /// Guild name or id.
        guild: String,
        /// The image file.
        file: PathBuf,
        /// The emoji's name: 2 to 32 letters, digits or underscores (written `:name:`).
        #[arg(long)]
        name: String,
    },
    /// The guild's custom emoji, and whether each image is here yet.
    List {
        /// Guild name or id.
        guild: String,
    },
    /// Remove a custom emoji (Manage Guild).
    Delete {
        /// Guild name or id.
        guild: String,
        /// Emoji name or id.
        emoji: String,
    },
    /// Write an emoji's image (PNG) to a new file.
    Save {
        /// Guild name or id.
        guild: String,
        /// Emoji name or id.
        emoji: String,
        /// Where to write it (must not exist).
        out: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl OnOff {
    fn on(self) -> bool {
        matches!(self, Self::On)
    }
}

#[derive(Subcommand)]
enum DmAction {
    /// Send a direct message (delivered when the user's device is reachable).
    Send {
        /// User id or nickname.
        user: String,
        /// The text.
        text: String,
    },
    /// Direct messages with a user, oldest first, with delivery state for yours.
    History {
        /// User id or nickname.
        user: String,
        /// How many of the latest messages.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
}

#[derive(Subcommand)]
enum FilesAction {
    /// Start (or resume) fetching a file from the members who have it.
    Fetch {
        /// File id (hex, or a unique prefix of at least 6 digits; see `files list`).
        file: String,
        /// Wait until it is complete (or paused), printing progress to stderr.
        #[arg(long)]
        wait: bool,
    },
    /// Running fetches, or one file's state.
    Status {
        /// File id or prefix.
        file: Option<String>,
    },
    /// Decrypt a fetched file to PATH (checked against its announced hash; never overwrites).
    Save {
        /// File id or prefix.
        file: String,
        /// Where to write it.
        path: std::path::PathBuf,
    },
    /// Files posted in a guild (or one channel), newest first.
    List {
        /// Guild name or id.
        guild: String,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
    },
}

#[derive(Subcommand)]
enum RoleAction {
    /// Create a role.
    Create {
        /// Guild name or id.
        guild: String,
        /// Role name.
        name: String,
        /// Comma-separated permissions, e.g. manage_channels,kick_members.
        #[arg(long)]
        perms: String,
    },
    /// Give a member a role.
    Grant {
        /// Guild name or id.
        guild: String,
        /// The member's nickname or user id.
        user: String,
        /// Role name or id.
        role: String,
    },
}

#[derive(Subcommand)]
enum BackupAction {
    /// Write an encrypted backup, sealed under a backup passphrase you choose.
    Export {
        /// Destination file (must not exist).
        file: PathBuf,
    },
    /// Restore from an encrypted backup into an empty data directory.
    Import {
        /// The backup file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SECURECOMM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn data_dir(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(d) = explicit {
        return Ok(d);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("securecomm"));
    }
    let home = std::env::var_os("HOME").ok_or("HOME is not set; pass --data-dir")?;
    Ok(PathBuf::from(home).join(".local/share/securecomm"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn passphrase(prompt: &str, confirm: bool) -> Result<Zeroizing<String>, String> {
    if let Some(p) = std::env::var_os("SECURECOMM_PASSPHRASE") {
        return p
            .into_string()
            .map(Zeroizing::new)
            .map_err(|_| "SECURECOMM_PASSPHRASE is not UTF-8".into());
    }
    let p = Zeroizing::new(
        rpassword::prompt_password(prompt).map_err(|e| format!("reading passphrase: {e}"))?,
    );
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat it: ")
                .map_err(|e| format!("reading passphrase: {e}"))?,
        );
        if *again != *p {
            return Err("the passphrases differ; nothing was changed".into());
        }
        if p.len() < 8 {
            return Err("use a passphrase of at least 8 characters".into());
        }
    }
    Ok(p)
}

fn unlock(store: &IdentityStore) -> Result<LocalProfile, String> {
    let p = passphrase("Passphrase: ", false)?;
    store.unlock(p.as_bytes()).map_err(|e| match e {
        StoreError::WrongPassphrase => {
            "wrong passphrase (the identity file was not changed)".to_string()
        }
        other => other.to_string(),
    })
}

fn show(profile: &LocalProfile) {
    let id = &profile.identity;
    println!("display name : {}", profile.display_name);
    println!(
        "user id      : {}",
        hex::encode(id.root_public().as_bytes())
    );
    println!(
        "device       : {} ({})",
        hex::encode(id.device().public().as_bytes()),
        id.certificate().name()
    );
    println!(
        "device since : {} (unix seconds)",
        id.certificate().created_at()
    );
}

async fn run(cli: Cli) -> Result<(), String> {
    let dir = data_dir(cli.data_dir)?;
    let json = cli.json;
    let store = IdentityStore::new(dir.clone());
    let mut rng = OsRng;
    match cli.command {
        None if !store.exists() => {
            println!(
                "No identity yet in {}. Creating one.",
                store.path().display()
            );
            let name = prompt_line("Display name: ")?;
            let p = passphrase("Choose a passphrase: ", true)?;
            let profile = store
                .create(&mut rng, p.as_bytes(), &name, "desktop", now())
                .map_err(|e| e.to_string())?;
            show(&profile);
            println!(
                "\nBack it up with `securecomm-node backup export FILE`: without the passphrase or a backup, a lost device means a lost identity."
            );
        }
        None | Some(Command::Whoami) => match ControlClient::connect(&dir).await {
            Ok(mut c) => print_value(json, &c.call("whoami", Value::Null).await?),
            Err(_) if json => print_value(true, &whoami_json(&unlock(&store)?)),
            Err(_) => show(&unlock(&store)?),
        },
        Some(Command::Run {
            listen,
            relay,
            mdns,
            no_listen,
            no_hole_punching,
        }) => {
            let profile = unlock(&store)?;
            let parse = |v: Vec<String>| -> Result<Vec<Multiaddr>, String> {
                v.iter()
                    .map(|a| a.parse().map_err(|e| format!("bad multiaddr {a}: {e}")))
                    .collect()
            };
            let mut cfg = NetConfig {
                relays: parse(relay)?,
                mdns,
                hole_punching: !no_hole_punching,
                ..NetConfig::default()
            };
            if !listen.is_empty() {
                cfg.listen = parse(listen)?;
            }
            if no_listen {
                cfg.listen.clear();
            }
            let listen_count = cfg.listen.len();
            let node = Node::start(dir.clone(), &profile, cfg)
                .await
                .map_err(|e| e.to_string())?;
            // Listeners may report before anyone subscribes, so print what the swarm already
            // has, then whatever events add (relay circuits, late listeners), each once.
            let mut events = node.net.events();
            let me = node.net.peer_id();
            let wanted = listen_count;
            let net = node.net.clone();
            let printer = tokio::spawn(async move {
                use std::io::Write;
                let mut printed = std::collections::HashSet::new();
                let mut print = |a: &Multiaddr| {
                    if printed.insert(a.clone()) {
                        println!("listening {a}/p2p/{me}");
                        let _ = std::io::stdout().flush();
                    }
                };
                for _ in 0..250 {
                    let addrs = net.listen_addrs().await.unwrap_or_default();
                    addrs.iter().for_each(&mut print);
                    if addrs.len() >= wanted {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                while let Some(e) = events.next().await {
                    if let Event::Listening(a) = &e {
                        print(a);
                    }
                }
            });
            let net = node.net.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                net.shutdown().await;
            });
            node.wait().await;
            printer.abort();
        }
        Some(Command::Peers) => remote(&dir, json, "peers", Value::Null).await?,
        Some(Command::ListenAddrs) => remote(&dir, json, "listen-addrs", Value::Null).await?,
        Some(Command::Relays) => remote(&dir, json, "relays", Value::Null).await?,
        Some(Command::Dial { addr }) => {
            remote(&dir, json, "dial", serde_json::json!({"addr": addr})).await?
        }
        Some(Command::Stop) => remote(&dir, json, "shutdown", Value::Null).await?,
        Some(Command::Guild { action }) => {
            let (cmd, args) = match action {
                GuildAction::Create { name } => ("guild-create", json!({"name": name})),
                GuildAction::List => ("guild-list", Value::Null),
                GuildAction::Join { code } => ("guild-join", json!({"code": code})),
                GuildAction::Settings {
                    guild,
                    name,
                    history_visible,
                    max_upload,
                } => {
                    if name.is_none() && history_visible.is_none() && max_upload.is_none() {
                        ("guild-settings", json!({"guild": guild}))
                    } else {
                        (
                            "guild-update",
                            json!({"guild": guild, "name": name,
                                   "history_visible": history_visible, "max_upload": max_upload}),
                        )
                    }
                }
            };
            remote(&dir, json, cmd, args).await?
        }
        Some(Command::Invite {
            action:
                InviteAction::Create {
                    guild,
                    expires,
                    uses,
                },
        }) => {
            let args = json!({"guild": guild, "expires": expires, "uses": uses});
            remote(&dir, json, "invite-create", args).await?
        }
        Some(Command::Channel { action }) => {
            let (cmd, args) = match action {
                ChannelAction::Create { guild, name, voice } => (
                    "channel-create",
                    json!({"guild": guild, "name": name, "voice": voice}),
                ),
                ChannelAction::List { guild } => ("channel-list", json!({"guild": guild})),
                ChannelAction::Edit {
                    guild,
                    channel,
                    name,
                    topic,
                    slow_mode,
                    disappearing,
                } => (
                    "channel-edit",
                    json!({"guild": guild, "channel": channel, "name": name, "topic": topic,
                           "slow_mode_secs": slow_mode, "disappearing_secs": disappearing}),
                ),
            };
            remote(&dir, json, cmd, args).await?
        }
        Some(Command::Voice { action }) => {
            let (cmd, args) = match action {
                VoiceAction::Join {
                    guild,
                    channel,
                    opts,
                } => {
                    let mut args = opts.to_json();
                    args["guild"] = json!(guild);
                    args["channel"] = json!(channel);
                    ("voice-join", args)
                }
                VoiceAction::Call { user, opts } => {
                    let mut args = opts.to_json();
                    args["user"] = json!(user);
                    ("voice-call", args)
                }
                VoiceAction::Leave => ("voice-leave", Value::Null),
                VoiceAction::Transmit { state } => ("voice-transmit", json!({"on": state.on()})),
                VoiceAction::Status => ("voice-status", Value::Null),
                VoiceAction::Mute { state } => ("voice-mute", json!({"on": state.on()})),
                VoiceAction::Deafen { state } => ("voice-deafen", json!({"on": state.on()})),
                VoiceAction::RelayOnly { state } => ("voice-relay-only", json!({"on": state.on()})),
                VoiceAction::Volume { user, percent } => {
                    ("voice-volume", json!({"user": user, "percent": percent}))
                }
                VoiceAction::ServerMute { guild, user, state } => (
                    "server-mute",
                    json!({"guild": guild, "user": user, "on": state.on()}),
                ),
            };
            remote(&dir, json, cmd, args).await?
        }
        Some(Command::Sound { action }) => {
            let (cmd, args) = match action {
                SoundAction::Upload {
                    guild,
                    file,
                    name,
                    emoji,
                    volume,
                } => {
                    // The path is resolved here: the node runs elsewhere.
                    let file = std::path::absolute(&file).unwrap_or(file);
                    (
                        "sound-upload",
                        json!({"guild": guild, "file": file.display().to_string(), "name": name,
                               "emoji": emoji, "volume": volume}),
                    )
                }
                SoundAction::List { guild } => ("sound-list", json!({"guild": guild})),
                SoundAction::Play { guild, sound } => {
                    ("sound-play", json!({"guild": guild, "sound": sound}))
                }
                SoundAction::Delete { guild, sound } => {
                    ("sound-delete", json!({"guild": guild, "sound": sound}))
                }
                SoundAction::Volume { percent } => ("sound-volume", json!({"percent": percent})),
            };
            remote(&dir, json, cmd, args).await?
        }
        Some(Command::Emoji { action }) => {
            let (cmd, args) = match action {
                EmojiAction::Upload { guild, file, name } => {
                    // Paths are resolved here: the node runs elsewhere.
                    let file = std::path::absolute(&file).unwrap_or(file);
                    (
                        "emoji-upload",
                        json!({"guild": guild, "file": file.display().to_string(), "name": name}),
                    )
                }
                EmojiAction::List { guild } => ("emoji-list", json!({"guild": guild})),
                EmojiAction::Delete { guild, emoji } => {
                    ("emoji-delete", json!({"guild": guild, "emoji": emoji}))
                }
                EmojiAction::Save { guild, emoji, out } => {
                    let out = std::path::absolute(&out).unwrap_or(out);
                    (
                        "emoji-save",
                        json!({"guild": guild, "emoji": emoji, "out": out.display().to_string()}),
                    )
                }
            };
            remote(&dir, json, cmd, args).await?
        }
        Some(Command::Send {
            guild,
            channel,
            text,
            reply_to,
            thread,
            expires,
            files,
        }) => {
            let files = files
                .iter()
                .map(|p| {
                    std::path::absolute(p)
                        .map(|p| p.display().to_string())
                        .map_err(|e| format!("{}: {e}", p.display()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let args = json!({"guild": guild, "channel": channel, "text": text,
                              "reply_to": reply_to, "thread": thread, "ttl_secs": expires,
                              "files": files});
            remote(&dir, json, "post", args).await?
        }
        Some(Command::Files { action }) => files_command(&dir, json, action).await?,
        Some(Command::React {
            guild,
            channel,
            msg,
            emoji,
            remove,
        }) => {
            let args = json!({"guild": guild, "channel": channel, "msg": msg, "emoji": emoji,
                              "remove": remove});
            remote(&dir, json, "react", args).await?
        }
        Some(Command::Edit {
            guild,
            channel,
            msg,
            text,
        }) => {
            let args = json!({"guild": guild, "channel": channel, "msg": msg, "text": text});
            remote(&dir, json, "edit", args).await?
        }
        Some(Command::Edits {
            guild,
            channel,
            msg,
        }) => {
            let args = json!({"guild": guild, "channel": channel, "msg": msg});
            remote(&dir, json, "edits", args).await?
        }
        Some(Command::Delete {
            guild,
            channel,
            msg,
        }) => {
            let args = json!({"guild": guild, "channel": channel, "msg": msg});
            remote(&dir, json, "delete", args).await?
        }
        Some(Command::Pin {
            guild,
            channel,
            msg,
            unpin,
        }) => {
            let args = json!({"guild": guild, "channel": channel, "msg": msg, "unpin": unpin});
            remote(&dir, json, "pin", args).await?
        }
        Some(Command::Pins { guild, channel }) => {
            remote(
                &dir,
                json,
                "pins",
                json!({"guild": guild, "channel": channel}),
            )
            .await?
        }
        Some(Command::Mentions { guild }) => {
            remote(&dir, json, "mentions", json!({"guild": guild})).await?
        }
        Some(Command::Typing { guild, channel }) => {
            remote(
                &dir,
                json,
                "typing",
                json!({"guild": guild, "channel": channel}),
            )
            .await?
        }
        Some(Command::Read { guild, channel }) => {
            remote(
                &dir,
                json,
                "mark-read",
                json!({"guild": guild, "channel": channel}),
            )
            .await?
        }
        Some(Command::Thread { action }) => {
            let (cmd, args) = match action {
                ThreadAction::Create {
                    guild,
                    channel,
                    name,
                    from,
                } => (
                    "thread-create",
                    json!({"guild": guild, "channel": channel, "name": name, "from": from}),
                ),
                ThreadAction::List { guild, channel } => {
                    ("thread-list", json!({"guild": guild, "channel": channel}))
                }
                ThreadAction::History {
                    guild,
                    channel,
                    thread,
                    limit,
                } => (
                    "thread-history",
                    json!({"guild": guild, "channel": channel, "thread": thread, "limit": limit}),
                ),
                ThreadAction::Rename {
                    guild,
                    channel,
                    thread,
                    name,
                } => (
                    "thread-update",
                    json!({"guild": guild, "channel": channel, "thread": thread, "name": name}),
                ),
                ThreadAction::Archive {
                    guild,
                    channel,
                    thread,
                } => (
                    "thread-update",
                    json!({"guild": guild, "channel": channel, "thread": thread,
                           "archived": true}),
                ),
                ThreadAction::Unarchive {
                    guild,
                    channel,
                    thread,
                } => (
                    "thread-update",
                    json!({"guild": guild, "channel": channel, "thread": thread,
                           "archived": false}),
                ),
            };
            remote(&dir, json, cmd, args).await?
        }
        Some(Command::History {
            guild,
            channel,
            limit,
        }) => {
            let args = json!({"guild": guild, "channel": channel, "limit": limit});
            let mut c = ControlClient::connect(&dir)
                .await
                .map_err(|e| no_node(&dir, e))?;
            let v = c.call("history", args).await?;
            if json {
                println!("{v}");
            } else {
                for m in v.as_array().into_iter().flatten() {
                    let who = m
                        .get("nickname")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .or_else(|| {
                            m.get("sender")
                                .and_then(Value::as_str)
                                .map(|s| s.get(..12).unwrap_or(s))
                        })
                        .unwrap_or("?");
                    let text = m.get("text").and_then(Value::as_str).unwrap_or("");
                    let at = m.get("sent_at").and_then(Value::as_u64).unwrap_or(0);
                    println!("[{at}] {who}: {text}");
                }
            }
        }
        Some(Command::Search {
            text,
            guild,
            channel,
            author,
            after,
            before,
            has_file,
            newest,
            limit,
            offset,
        }) => {
            let time = |t: Option<String>| {
                t.map(|t| securecomm_node::store::search::parse_time_ms(&t))
                    .transpose()
            };
            let args = json!({
                "text": text,
                "guild": guild,
                "channel": channel,
                "author": author,
                "after": time(after)?,
                "before": time(before)?,
                "has_file": has_file.then_some(true),
                "order": if newest { "newest" } else { "relevance" },
                "limit": limit,
                "offset": offset,
            });
            let mut c = ControlClient::connect(&dir)
                .await
                .map_err(|e| no_node(&dir, e))?;
            let v = c.call("search", args).await?;
            if json {
                println!("{v}");
            } else {
                print_hits(&v);
            }
        }
        Some(Command::Dm { action }) => {
            let (cmd, args) = match action {
                DmAction::Send { user, text } => ("dm-send", json!({"user": user, "text": text})),
                DmAction::History { user, limit } => {
                    ("dm-history", json!({"user": user, "limit": limit}))
                }
            };
            remote(&dir, json, cmd, args).await?
        }
        Some(Command::Members { guild }) => {
            remote(&dir, json, "members", json!({"guild": guild})).await?
        }
        Some(Command::Role { action }) => {
            let (cmd, args) = match action {
                RoleAction::Create { guild, name, perms } => (
                    "role-create",
                    json!({"guild": guild, "name": name, "perms": perms}),
                ),
                RoleAction::Grant { guild, user, role } => (
                    "role-grant",
                    json!({"guild": guild, "user": user, "role": role}),
                ),
            };
            remote(&dir, json, cmd, args).await?
        }
        Some(Command::Kick { guild, user }) => {
            remote(&dir, json, "kick", json!({"guild": guild, "user": user})).await?
        }
        Some(Command::Ban {
            guild,
            user,
            reason,
        }) => {
            let args = json!({"guild": guild, "user": user, "reason": reason});
            remote(&dir, json, "ban", args).await?
        }
        Some(Command::Events) => {
            let c = ControlClient::connect(&dir)
                .await
                .map_err(|e| no_node(&dir, e))?;
            let mut lines = c.events().await?;
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{line}");
            }
        }
        Some(Command::Init { name, device }) => {
            let p = passphrase("Choose a passphrase: ", true)?;
            show(
                &store
                    .create(&mut rng, p.as_bytes(), &name, &device, now())
                    .map_err(|e| e.to_string())?,
            );
        }
        Some(Command::SafetyNumber {
            their_key,
            their_id,
        }) => {
            let parsed: Option<[u8; 32]> = hex::decode(their_key.trim())
                .ok()
                .and_then(|b| b.try_into().ok());
            let bytes: [u8; 32] = match parsed {
                Some(b) => b,
                // Not a key: ask the running node to find the user in our guilds.
                None => match ControlClient::connect(&dir).await {
                    Ok(mut c) => {
                        let v = c
                            .call("find-user", json!({"user": their_key}))
                            .await
                            .map_err(|e| format!("their key must be 64 hex digits ({e})"))?;
                        v.as_str()
                            .and_then(|h| hex::decode(h).ok())
                            .and_then(|b| b.try_into().ok())
                            .ok_or("their key must be 64 hex digits")?
                    }
                    Err(_) => return Err("their key must be 64 hex digits".into()),
                },
            };
            let theirs =
                RootPublicKey::from_bytes(&bytes).map_err(|e| format!("their key: {e}"))?;
            let me = unlock(&store)?;
            let mine = me.identity.root_public();
            let my_id = hex::encode(mine.as_bytes());
            let their_id = their_id.unwrap_or_else(|| hex::encode(bytes));
            let sn = SafetyNumber::for_roots(&mine, my_id.as_bytes(), &theirs, their_id.as_bytes())
                .map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    json!({"user": hex::encode(bytes), "safety_number": sn.digits(), "grouped": sn.grouped()})
                );
            } else {
                println!("{}", sn.grouped());
            }
        }
        Some(Command::Backup {
            action: BackupAction::Export { file },
        }) => {
            let p = passphrase("Passphrase: ", false)?;
            let b = passphrase("Backup passphrase: ", true)?;
            store
                .export_backup(&mut rng, p.as_bytes(), b.as_bytes(), &file)
                .map_err(|e| e.to_string())?;
            println!("encrypted backup written to {}", file.display());
        }
        Some(Command::Backup {
            action: BackupAction::Import { file },
        }) => {
            let b = passphrase("Backup passphrase: ", false)?;
            let p = passphrase("New passphrase for this device: ", true)?;
            show(
                &store
                    .import_backup(&mut rng, &file, b.as_bytes(), p.as_bytes())
                    .map_err(|e| e.to_string())?,
            );
        }
        Some(Command::Passphrase) => {
            let old = passphrase("Current passphrase: ", false)?;
            let new = passphrase("New passphrase: ", true)?;
            store
                .change_passphrase(&mut rng, old.as_bytes(), new.as_bytes())
                .map_err(|e| e.to_string())?;
            println!("passphrase changed");
        }
    }
    Ok(())
}

fn whoami_json(p: &LocalProfile) -> Value {
    let id = &p.identity;
    serde_json::json!({
        "display_name": p.display_name,
        "user_id": hex::encode(id.root_public().as_bytes()),
        "device_id": hex::encode(id.device().public().as_bytes()),
        "device_name": id.certificate().name(),
    })
}

fn print_value(json: bool, v: &Value) {
    if json {
        println!("{v}");
        return;
    }
    match v {
        Value::Null => println!("ok"),
        Value::Array(items) => items.iter().for_each(|i| println!("{}", plain(i))),
        Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| println!("{k:<13}: {}", plain(v))),
        other => println!("{}", plain(other)),
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn no_node(dir: &std::path::Path, e: std::io::Error) -> String {
    format!(
        "no running node in {} ({e}); start one with `securecomm-node run`",
        dir.display()
    )
}

async fn remote(dir: &std::path::Path, json: bool, cmd: &str, args: Value) -> Result<(), String> {
    let mut c = ControlClient::connect(dir)
        .await
        .map_err(|e| no_node(dir, e))?;
    print_value(json, &c.call(cmd, args).await?);
    Ok(())
}

async fn files_command(
    dir: &std::path::Path,
    json: bool,
    action: FilesAction,
) -> Result<(), String> {
    match action {
        FilesAction::Fetch { file, wait } => {
            let mut c = ControlClient::connect(dir)
                .await
                .map_err(|e| no_node(dir, e))?;
            let mut v = c.call("files-fetch", json!({"file": file})).await?;
            loop {
                let st = v["state"].as_str().unwrap_or_default().to_owned();
                if !wait || st == "complete" || st == "paused" {
                    break;
                }
                eprintln!(
                    "{} {:.1}% {} B/s eta {} s ({} sources, {} rejected)",
                    v["name"].as_str().unwrap_or_default(),
                    v["percent"].as_f64().unwrap_or(0.0),
                    v["bytes_per_sec"].as_u64().unwrap_or(0),
                    v["eta_secs"].as_u64().map_or("?".into(), |s| s.to_string()),
                    v["sources"].as_u64().unwrap_or(0),
                    v["rejected"].as_u64().unwrap_or(0),
                );
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                v = c.call("files-status", json!({"file": file})).await?;
            }
            if wait && v["state"] == "paused" {
                return Err(format!(
                    "fetch paused: {}",
                    v["error"].as_str().unwrap_or("unknown error")
                ));
            }
            print_value(json, &v);
            Ok(())
        }
        FilesAction::Status { file } => {
            remote(dir, json, "files-status", json!({"file": file})).await
        }
        FilesAction::Save { file, path } => {
            let path =
                std::path::absolute(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            remote(
                dir,
                json,
                "files-save",
                json!({"file": file, "path": path.display().to_string()}),
            )
            .await
        }
        FilesAction::List { guild, channel } => {
            remote(
                dir,
                json,
                "files-list",
                json!({"guild": guild, "channel": channel}),
            )
            .await
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn prompt_line(prompt: &str) -> Result<String, String> {
    use std::io::Write;
    print!("{prompt}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim().to_owned())
}

/// Search hits as `[time] #channel (guild) who: snippet`, matched words in brackets.
fn print_hits(v: &Value) {
    let hits = v.get("hits").and_then(Value::as_array);
    if hits.is_none_or(Vec::is_empty) {
        println!("no messages found");
    }
    for h in hits.into_iter().flatten() {
        let s = |k: &str| h.get(k).and_then(Value::as_str).filter(|n| !n.is_empty());
        let who = s("nickname")
            .or_else(|| s("sender").map(|x| x.get(..12).unwrap_or(x)))
            .unwrap_or("?");
        let channel = s("channel_name").map_or_else(
            || h.get("channel").map(Value::to_string).unwrap_or_default(),
            str::to_owned,
        );
        let guild = s("guild_name").or_else(|| s("guild")).unwrap_or("?");
        let snippet: String = s("snippet")
            .unwrap_or("")
            .chars()
            .map(|c| match c {
                '\u{2}' => '[',
                '\u{3}' => ']',
                c if c.is_control() => ' ',
                c => c,
            })
            .collect();
        let at = h.get("sent_at").and_then(Value::as_u64).unwrap_or(0);
        println!("[{at}] #{channel} ({guild}) {who}: {snippet}");
    }
    if let Some(n) = v.get("next_offset").and_then(Value::as_u64) {
        println!("more: --offset {n}");
    }
}
