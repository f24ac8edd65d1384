//! Voice channels in the app: joining and leaving, who is in which channel and who speaks,
//! mute, deafen, push-to-talk, devices, per-user volume and connection quality.
//!
//! * **Node side.** The node's [`VoiceService`] runs calls; this module only drives it. A task
//!   started with the node ([`poll`]) reads `status()` every [`STATUS_EVERY`] (not every
//!   frame) and the presence of the voice channels the UI watches every [`PRESENCE_EVERY`],
//!   and sends what changed as [`VoiceEvent`]s through the backend's event channel (which
//!   wakes the window). Commands ([`VoiceCommand`]) run as tasks on the node's runtime, never
//!   on the UI thread.
//! * **State.** [`VoiceState`] holds the last snapshot and the user's own choices (muted,
//!   deafened, volumes). The mute and deafen buttons change the choice; [`VoiceState::on_frame`]
//!   reconciles the node with it once per frame and sends a command only when the wanted state
//!   differs from what was last sent. That is also how push-to-talk works: muted unless the key
//!   is held, which egui can only see while the window has focus (a global hotkey would need
//!   an OS-level hook, which this app does not install).
//! * **Devices.** Choices are kept in the preferences file ([`VoicePrefs`]) and applied at the
//!   next join. A device that cannot be opened fails the join with the engine's reason, shown
//!   once; "None" joins without a sound card (silence in, nothing out).
//! * **Quality.** The panel's colour is the worst participant's: a direct path with little
//!   round-trip time and loss is green, a relayed path or moderate loss yellow, a path still
//!   connecting or heavy loss red ([`Quality::of`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use securecomm_crdt::schema::{ChannelId, GuildId};
use securecomm_node::guild::GuildService;
use securecomm_node::voice::call::Device;
use securecomm_node::voice::service::{JoinOptions, VoiceService};
use serde::{Deserialize, Serialize};

use crate::backend::{Command, Event};

/// How often the call's status is read while in a call.
pub const STATUS_EVERY: Duration = Duration::from_millis(300);
/// How often the presence in watched voice channels is read.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(1);
/// Voice channels watched for presence at most.
pub const MAX_WATCHED: usize = 256;
/// The default push-to-talk key (the key left of 1 on US keyboards).
pub const DEFAULT_PTT_KEY: &str = "Backtick";

/// An audio device choice.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AudioDevice {
    /// The system's default device.
    #[default]
    Default,
    /// No device: silence in, nothing out.
    None,
    /// A device by its name (as `cpal_device_names` lists it).
    Named(String),
}

impl AudioDevice {
    /// The name shown in the device lists.
    pub fn label(&self) -> &str {
        match self {
            Self::Default => "Default",
            Self::None => "None",
            Self::Named(n) => n,
        }
    }

    fn device(&self) -> Device {
        match self {
            Self::Default => Device::Cpal(None),
            Self::None => Device::Null,
            Self::Named(n) => Device::Cpal(Some(n.clone())),
        }
    }
}

/// How the microphone is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum InputMode {
    /// Sent whenever not muted (the engine detects speech).
    #[default]
    VoiceActivity,
    /// Sent only while the push-to-talk key is held (in the window).
    PushToTalk,
}

/// Voice preferences, kept with the others in the preferences file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VoicePrefs {
    /// Microphone.
    pub input: AudioDevice,
    /// Speakers or headphones.
    pub output: AudioDevice,
    /// Voice activity or push-to-talk.
    pub mode: InputMode,
    /// The push-to-talk key, by its egui name (`egui::Key::name`).
    pub ptt_key: String,
}

impl Default for VoicePrefs {
    fn default() -> Self {
        Self {
            input: AudioDevice::Default,
            output: AudioDevice::Default,
            mode: InputMode::VoiceActivity,
            ptt_key: DEFAULT_PTT_KEY.to_owned(),
        }
    }
}

impl VoicePrefs {
    /// The push-to-talk key (the default if the stored name is unknown).
    pub fn key(&self) -> egui::Key {
        egui::Key::from_name(&self.ptt_key).unwrap_or(egui::Key::Backtick)
    }
}

/// What the UI asks of the voice layer.
#[derive(Debug, Clone)]
pub enum VoiceCommand {
    /// Join a voice channel (leaving any call first).
    Join {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Microphone.
        input: AudioDevice,
        /// Speakers.
        output: AudioDevice,
        /// Join muted (push-to-talk key up, or the mute button on).
        muted: bool,
    },
    /// Call a user directly, or answer their call (leaving any call first).
    Call {
        /// User id (hex) or nickname.
        user: String,
        /// Microphone.
        input: AudioDevice,
        /// Speakers.
        output: AudioDevice,
        /// Join muted.
        muted: bool,
    },
    /// Leave the call.
    Leave,
    /// Self-mute on or off.
    SetMuted(bool),
    /// Self-deafen on or off.
    SetDeafened(bool),
    /// A participant's playback volume.
    SetVolume {
        /// Their peer id.
        peer: String,
        /// 0 to 200.
        percent: u32,
    },
    /// The voice channels whose presence the UI shows: (guild hex, channel).
    Watch(Vec<(String, u64)>),
    /// List the sound cards.
    ListDevices,
    /// List a guild's soundboard library.
    Sounds {
        /// Guild id (hex).
        guild: String,
    },
    /// Play a sound of the library in the current call.
    PlaySound {
        /// Guild id (hex).
        guild: String,
        /// Sound id.
        sound: u64,
    },
    /// Import an audio file into a guild's library (Manage Guild).
    UploadSound {
        /// Guild id (hex).
        guild: String,
        /// The audio file (MP3, Ogg Vorbis or Opus, WAV, FLAC; up to 5.2 s and 512 KB).
        path: std::path::PathBuf,
        /// The sound's name.
        name: String,
    },
    /// How loud the soundboard clips others play are, percent (0 to 200).
    SoundboardVolume(u32),
}

/// What the voice layer tells the UI.
#[derive(Debug, Clone, PartialEq)]
pub enum VoiceEvent {
    /// The call as the node sees it.
    Status(VoiceStatus),
    /// Who is in each watched voice channel (guild hex, channel).
    Present(BTreeMap<(String, u64), Vec<VoiceMember>>),
    /// A join succeeded: the new call's status.
    Joined(VoiceStatus),
    /// A join failed.
    JoinFailed(String),
    /// A guild's soundboard library.
    Sounds {
        /// Guild id (hex).
        guild: String,
        /// Its sounds, by name.
        sounds: Vec<SoundEntry>,
    },
    /// A sound was played (its name).
    SoundPlayed(String),
    /// The sound cards: input and output names, or why they could not be listed.
    Devices {
        /// Microphones.
        inputs: Result<Vec<String>, String>,
        /// Speakers.
        outputs: Result<Vec<String>, String>,
    },
}

/// A sound of a guild's library, as the soundboard panel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoundEntry {
    /// Sound id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Emoji, if any.
    pub emoji: Option<String>,
    /// Length in milliseconds.
    pub duration_ms: u32,
}

/// The soundboard panel's state.
#[derive(Debug, Clone)]
pub struct Soundboard {
    /// The panel is open.
    pub open: bool,
    /// The guild the sounds are of, and the sounds.
    pub sounds: Option<(String, Vec<SoundEntry>)>,
    /// The upload dialog: file path and name.
    pub upload_path: String,
    /// The name for the uploaded sound.
    pub upload_name: String,
    /// An upload is running.
    pub uploading: bool,
    /// Volume of the clips others play, percent.
    pub volume: u32,
    /// The last sound played here (shown under the buttons).
    pub last_played: Option<String>,
}

impl Default for Soundboard {
    fn default() -> Self {
        Self {
            open: false,
            sounds: None,
            upload_path: String::new(),
            upload_name: String::new(),
            uploading: false,
            volume: 100,
            last_played: None,
        }
    }
}

/// Someone seen in a voice channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceMember {
    /// Peer id.
    pub peer: String,
    /// Their nickname, if the guild knows it.
    pub name: String,
}

/// The node's view of the call (`VoiceService::status`), the parts the app shows.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct VoiceStatus {
    /// In a call.
    pub in_call: bool,
    /// Guild id (hex).
    pub guild: String,
    /// Channel id.
    pub channel: u64,
    /// Channel name.
    pub channel_name: String,
    /// Self-muted (as the node applies it).
    pub muted: bool,
    /// Self-deafened.
    pub deafened: bool,
    /// Media only through a relay.
    pub relay_only: bool,
    /// The media engine.
    pub engine: EngineStatus,
    /// The others in the call.
    pub participants: Vec<Participant>,
    /// Whether we may speak here (`Some(false)`: server-muted, or no Speak permission).
    pub may_speak: Option<bool>,
    /// Direct calls ringing (users in a call with us that we have not joined).
    pub ringing: Vec<Ringing>,
}

/// A direct call ringing here.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct Ringing {
    /// The caller's device (peer id).
    pub peer: String,
    /// The caller's user id (hex), if known.
    pub user: Option<String>,
    /// The caller's nickname, if known.
    pub nickname: Option<String>,
}

impl Ringing {
    /// The name shown.
    pub fn name(&self) -> String {
        self.nickname
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| self.user.as_deref().map(crate::state::short))
            .unwrap_or_else(|| crate::state::short(&self.peer))
    }
}

/// The media engine's part of the status.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct EngineStatus {
    /// The engine thread runs.
    pub running: bool,
    /// Why it stopped.
    pub error: Option<String>,
    /// We are speaking.
    pub speaking: bool,
    /// Outgoing bitrate, kbit/s.
    pub bitrate_kbps: f64,
}

/// Another participant of the call.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Participant {
    /// Peer id.
    pub peer: String,
    /// Nickname in the guild.
    pub nickname: Option<String>,
    /// `direct`, `relayed` or `connecting` (empty before the engine knows them).
    pub path: String,
    /// Round trip on the direct path, ms.
    pub rtt_ms: Option<f64>,
    /// Jitter buffer target, ms.
    pub jitter_buffer_ms: f64,
    /// Estimated loss, 0..1.
    pub loss: f64,
    /// Late packets, 0..1.
    pub late: f64,
    /// Incoming bitrate, kbit/s.
    pub bitrate_kbps: f64,
    /// Speaking now.
    pub speaking: bool,
    /// Self-muted.
    pub muted: bool,
    /// Self-deafened.
    pub deafened: bool,
}

impl Participant {
    /// The name shown.
    pub fn name(&self) -> String {
        self.nickname
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| crate::state::short(&self.peer))
    }

    /// One line of numbers for the quality breakdown.
    pub fn breakdown(&self) -> String {
        let path = if self.path.is_empty() {
            "connecting"
        } else {
            self.path.as_str()
        };
        let rtt = self
            .rtt_ms
            .map_or_else(|| "rtt -".to_owned(), |r| format!("rtt {r:.0} ms"));
        format!(
            "{}: {path} · {rtt} · jitter buffer {:.0} ms · loss {:.1}% · {:.0} kbit/s",
            self.name(),
            self.jitter_buffer_ms,
            self.loss * 100.0,
            self.bitrate_kbps
        )
    }
}

/// Connection quality, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Quality {
    /// Connecting, failed, or heavy loss or delay.
    Poor,
    /// Relayed, or some loss or delay.
    Fair,
    /// Direct, little loss and delay.
    Good,
}

impl Quality {
    /// One participant's quality.
    pub fn of(p: &Participant) -> Self {
        let rtt = p.rtt_ms.unwrap_or(0.0);
        if p.path.is_empty() || p.path == "connecting" || p.loss > 0.08 || rtt > 300.0 {
            Self::Poor
        } else if p.path == "relayed" || p.loss > 0.02 || rtt > 150.0 {
            Self::Fair
        } else {
            Self::Good
        }
    }

    /// The panel's colour.
    pub fn colour(self) -> egui::Color32 {
        match self {
            Self::Good => egui::Color32::from_rgb(80, 200, 120),
            Self::Fair => egui::Color32::from_rgb(230, 180, 60),
            Self::Poor => egui::Color32::from_rgb(230, 80, 80),
        }
    }
}

/// One name under a voice channel in the channel list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceRow {
    /// Peer id (empty for ourselves).
    pub peer: String,
    /// Name shown.
    pub name: String,
    /// Speaking now (green ring).
    pub speaking: bool,
    /// Self-muted.
    pub muted: bool,
    /// Self-deafened.
    pub deafened: bool,
    /// This is us.
    pub me: bool,
}

/// The voice part of the UI state.
#[derive(Debug, Default)]
pub struct VoiceState {
    /// The last status from the node.
    pub status: VoiceStatus,
    /// Presence in watched voice channels.
    pub present: BTreeMap<(String, u64), Vec<VoiceMember>>,
    /// A join asked for and not answered yet.
    pub joining: Option<(String, u64)>,
    /// The user's mute choice (the button).
    pub muted: bool,
    /// The user's deafen choice.
    pub deafened: bool,
    /// The push-to-talk key was held (in the window) on the last frame.
    pub ptt_held: bool,
    /// Volumes set here, per peer (the node does not report them back).
    pub volumes: HashMap<String, u32>,
    /// Input device names, or why they could not be listed (`None`: not asked yet).
    pub inputs: Option<Result<Vec<String>, String>>,
    /// Output device names.
    pub outputs: Option<Result<Vec<String>, String>>,
    /// The settings window waits for a key to bind to push-to-talk.
    pub capturing_key: bool,
    /// The device lists were asked for and have not arrived.
    pub listing: bool,
    /// The soundboard panel.
    pub soundboard: Soundboard,
    sent_mute: Option<bool>,
    sent_deafen: Option<bool>,
    watched: Vec<(String, u64)>,
}

impl VoiceState {
    /// Folds an event.
    pub fn apply(&mut self, ev: VoiceEvent) {
        match ev {
            VoiceEvent::Status(s) => {
                let new_call = s.in_call
                    && !(self.status.in_call
                        && s.guild == self.status.guild
                        && s.channel == self.status.channel);
                self.set_status(s, new_call);
            }
            VoiceEvent::Joined(s) => self.set_status(s, true),
            VoiceEvent::Present(p) => self.present = p,
            // Shown as an error by the caller ([`crate::state::AppState::apply`]).
            VoiceEvent::JoinFailed(_) => self.joining = None,
            VoiceEvent::Sounds { guild, sounds } => {
                self.soundboard.uploading = false;
                self.soundboard.sounds = Some((guild, sounds));
            }
            VoiceEvent::SoundPlayed(name) => self.soundboard.last_played = Some(name),
            VoiceEvent::Devices { inputs, outputs } => {
                self.listing = false;
                self.inputs = Some(inputs);
                self.outputs = Some(outputs);
            }
        }
    }

    fn set_status(&mut self, s: VoiceStatus, new_call: bool) {
        if new_call {
            // A new call starts unmuted in the node: send the user's choices again.
            self.sent_mute = None;
            self.sent_deafen = None;
        }
        if s.in_call
            && self
                .joining
                .as_ref()
                .is_some_and(|(g, c)| (*g == s.guild && *c == s.channel) || g.starts_with("call:"))
        {
            self.joining = None;
        }
        if !s.in_call {
            self.volumes.clear();
        }
        self.status = s;
    }

    /// Whether we are in (guild, channel)'s call.
    pub fn in_channel(&self, guild: &str, channel: u64) -> bool {
        self.status.in_call && self.status.guild == guild && self.status.channel == channel
    }

    /// A click on a voice channel: join it (leaving another call). Nothing if already there.
    pub fn on_join(&mut self, guild: &str, channel: u64, prefs: &VoicePrefs) -> Vec<Command> {
        if self.in_channel(guild, channel)
            || self
                .joining
                .as_ref()
                .is_some_and(|(g, c)| g == guild && *c == channel)
        {
            return Vec::new();
        }
        self.joining = Some((guild.to_owned(), channel));
        vec![Command::Voice(VoiceCommand::Join {
            guild: guild.to_owned(),
            channel,
            input: prefs.input.clone(),
            output: prefs.output.clone(),
            muted: self.wanted_mute(prefs),
        })]
    }

    /// "Call" in a direct conversation, or "Answer" on a ringing call: a two-person call with
    /// `user` (hex id).
    pub fn on_call(&mut self, user: &str, prefs: &VoicePrefs) -> Vec<Command> {
        self.joining = Some((format!("call:{user}"), 0));
        vec![Command::Voice(VoiceCommand::Call {
            user: user.to_owned(),
            input: prefs.input.clone(),
            output: prefs.output.clone(),
            muted: self.wanted_mute(prefs),
        })]
    }

    /// "Disconnect".
    pub fn on_leave(&mut self) -> Vec<Command> {
        self.joining = None;
        vec![Command::Voice(VoiceCommand::Leave)]
    }

    /// Leave and join the same channel again (to apply new devices).
    pub fn on_rejoin(&mut self, prefs: &VoicePrefs) -> Vec<Command> {
        if !self.status.in_call {
            return Vec::new();
        }
        let (guild, channel) = (self.status.guild.clone(), self.status.channel);
        self.joining = Some((guild.clone(), channel));
        vec![Command::Voice(VoiceCommand::Join {
            guild,
            channel,
            input: prefs.input.clone(),
            output: prefs.output.clone(),
            muted: self.wanted_mute(prefs),
        })]
    }

    /// The Audio settings are on screen: list the devices once.
    pub fn on_audio_shown(&mut self) -> Vec<Command> {
        if self.inputs.is_some() || self.listing {
            return Vec::new();
        }
        self.on_refresh_devices()
    }

    /// "Refresh devices".
    pub fn on_refresh_devices(&mut self) -> Vec<Command> {
        self.listing = true;
        vec![Command::Voice(VoiceCommand::ListDevices)]
    }

    /// The mute button.
    pub fn on_toggle_mute(&mut self) {
        self.muted = !self.muted;
    }

    /// The deafen button.
    pub fn on_toggle_deafen(&mut self) {
        self.deafened = !self.deafened;
    }

    /// A participant's volume slider moved.
    pub fn on_volume(&mut self, peer: &str, percent: u32) -> Vec<Command> {
        let percent = percent.min(200);
        self.volumes.insert(peer.to_owned(), percent);
        vec![Command::Voice(VoiceCommand::SetVolume {
            peer: peer.to_owned(),
            percent,
        })]
    }

    /// Whether the microphone should be muted now: by the button, or by push-to-talk while
    /// its key is not held.
    pub fn wanted_mute(&self, prefs: &VoicePrefs) -> bool {
        self.muted || (prefs.mode == InputMode::PushToTalk && !self.ptt_held)
    }

    /// Once per frame: notes whether the push-to-talk key is held (only seen while the window
    /// has focus) and brings the node's mute and deafen in line with the user's choices,
    /// sending only what changed.
    pub fn on_frame(&mut self, prefs: &VoicePrefs, key_held: bool) -> Vec<Command> {
        self.ptt_held = key_held && !self.capturing_key;
        let mut cmds = Vec::new();
        if !self.status.in_call {
            return cmds;
        }
        let mute = self.wanted_mute(prefs);
        if self.sent_mute != Some(mute) {
            self.sent_mute = Some(mute);
            cmds.push(Command::Voice(VoiceCommand::SetMuted(mute)));
        }
        if self.sent_deafen != Some(self.deafened) {
            self.sent_deafen = Some(self.deafened);
            cmds.push(Command::Voice(VoiceCommand::SetDeafened(self.deafened)));
        }
        cmds
    }

    /// The voice channels the channel list shows changed: watch them for presence.
    pub fn on_channels(&mut self, mut voice: Vec<(String, u64)>) -> Vec<Command> {
        voice.sort();
        voice.truncate(MAX_WATCHED);
        if voice == self.watched {
            return Vec::new();
        }
        self.watched.clone_from(&voice);
        vec![Command::Voice(VoiceCommand::Watch(voice))]
    }

    /// Who to list under a voice channel: the call's participants (and us) when we are in
    /// it, else whoever the node has seen there.
    pub fn rows(&self, guild: &str, channel: u64, me: &str) -> Vec<VoiceRow> {
        if self.in_channel(guild, channel) {
            let mut rows = vec![VoiceRow {
                peer: String::new(),
                name: me.to_owned(),
                speaking: self.status.engine.speaking && !self.status.muted,
                muted: self.status.muted,
                deafened: self.status.deafened,
                me: true,
            }];
            let mut others: Vec<VoiceRow> = self
                .status
                .participants
                .iter()
                .map(|p| VoiceRow {
                    peer: p.peer.clone(),
                    name: p.name(),
                    speaking: p.speaking,
                    muted: p.muted,
                    deafened: p.deafened,
                    me: false,
                })
                .collect();
            others.sort_by(|a, b| a.name.cmp(&b.name).then(a.peer.cmp(&b.peer)));
            rows.extend(others);
            return rows;
        }
        self.present
            .get(&(guild.to_owned(), channel))
            .map(|ms| {
                ms.iter()
                    .map(|m| VoiceRow {
                        peer: m.peer.clone(),
                        name: m.name.clone(),
                        speaking: false,
                        muted: false,
                        deafened: false,
                        me: false,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The call's quality: the worst participant's (good when alone; poor if the engine
    /// stopped).
    pub fn quality(&self) -> Quality {
        if self.status.engine.error.is_some() {
            return Quality::Poor;
        }
        self.status
            .participants
            .iter()
            .map(Quality::of)
            .min()
            .unwrap_or(Quality::Good)
    }
}

/// What the voice commands need of a started node.
#[derive(Debug, Clone)]
pub struct VoiceCtx {
    /// The voice layer.
    pub voice: VoiceService,
    /// The guild layer (nicknames).
    pub guilds: GuildService,
    /// Devices used for every call whatever the preferences say (tests: no sound card).
    pub devices: Option<(Device, Device)>,
    /// Voice channels watched for presence.
    watched: Arc<Mutex<Vec<(String, u64)>>>,
}

impl VoiceCtx {
    /// The context for a started node.
    pub fn new(
        voice: VoiceService,
        guilds: GuildService,
        devices: Option<(Device, Device)>,
    ) -> Self {
        Self {
            voice,
            guilds,
            devices,
            watched: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

fn status_of(v: &VoiceService) -> VoiceStatus {
    serde_json::from_value(v.status()).unwrap_or_default()
}

/// Voice commands queued before the UI is told voice is busy.
pub const VOICE_QUEUE: usize = 64;

/// Starts the voice worker (commands run one after the other, in order) and the status poll;
/// returns the worker's queue.
pub(crate) fn spawn(
    ctx: VoiceCtx,
    emit: crate::backend::Emitter,
) -> tokio::sync::mpsc::Sender<VoiceCommand> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(VOICE_QUEUE);
    tokio::spawn(poll(ctx.clone(), emit.clone()));
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            for ev in execute(&ctx, cmd).await {
                emit.emit(ev).await;
            }
        }
    });
    tx
}

/// Runs a voice command; returns the events to show its outcome.
pub async fn execute(ctx: &VoiceCtx, cmd: VoiceCommand) -> Vec<Event> {
    let v = &ctx.voice;
    let status = |r: Result<serde_json::Value, String>| match r {
        Ok(_) => vec![Event::Voice(VoiceEvent::Status(status_of(v)))],
        Err(e) => vec![Event::Error(e)],
    };
    match cmd {
        VoiceCommand::Join {
            guild,
            channel,
            input,
            output,
            muted,
        } => {
            let opts = enter_options(v, ctx, input, output, muted).await;
            match opts {
                Ok(opts) => entered(v, v.join(&guild, &channel.to_string(), opts).await),
                Err(e) => e,
            }
        }
        VoiceCommand::Call {
            user,
            input,
            output,
            muted,
        } => match enter_options(v, ctx, input, output, muted).await {
            Ok(opts) => entered(v, v.call(&user, opts).await),
            Err(e) => e,
        },
        VoiceCommand::Leave => status(v.leave().await),
        VoiceCommand::SetMuted(on) => quiet(v.set_muted(on), v),
        VoiceCommand::SetDeafened(on) => quiet(v.set_deafened(on), v),
        VoiceCommand::SetVolume { peer, percent } => status(v.set_volume(&peer, percent)),
        VoiceCommand::Watch(list) => {
            if let Ok(mut w) = ctx.watched.lock() {
                *w = list;
            }
            Vec::new()
        }
        VoiceCommand::Sounds { guild } => sounds_event(ctx, &guild),
        VoiceCommand::PlaySound { guild, sound } => {
            let found = ctx
                .guilds
                .find_sound(&guild, &sound.to_string())
                .map_err(|e| e.to_string());
            match found
                .and_then(|(info, asset)| v.play_clip(asset.root, info.volume).map(|_| info.name))
            {
                Ok(name) => vec![Event::Voice(VoiceEvent::SoundPlayed(name))],
                Err(e) => vec![Event::Error(e)],
            }
        }
        VoiceCommand::UploadSound { guild, path, name } => {
            let up = async {
                let len = tokio::fs::metadata(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .len();
                if len > securecomm_node::sound::MAX_INPUT_BYTES as u64 {
                    return Err(format!(
                        "{} is too large for a sound: at most {} bytes",
                        path.display(),
                        securecomm_node::sound::MAX_INPUT_BYTES
                    ));
                }
                let bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let ext = path.extension().and_then(|e| e.to_str());
                let up = ctx
                    .guilds
                    .upload_sound(&guild, &bytes, ext, &name, None, 100)
                    .await
                    .map_err(|e| e.to_string())?;
                let pcm =
                    securecomm_node::sound::decode_asset(&up.asset).map_err(|e| e.to_string())?;
                v.cache_clip(up.root, pcm.into());
                Ok::<_, String>(())
            };
            match up.await {
                Ok(()) => sounds_event(ctx, &guild),
                Err(e) => {
                    let mut out = vec![Event::Error(e)];
                    out.extend(sounds_event(ctx, &guild));
                    out
                }
            }
        }
        VoiceCommand::SoundboardVolume(p) => match v.set_soundboard_volume(p.min(200)) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Event::Error(e)],
        },
        VoiceCommand::ListDevices => {
            let listed = tokio::task::spawn_blocking(|| {
                let names = |input| {
                    securecomm_node::voice::device::cpal_device_names(input)
                        .map_err(|e| e.to_string())
                };
                (names(true), names(false))
            })
            .await;
            let (inputs, outputs) = listed.unwrap_or_else(|e| {
                let why = format!("listing devices failed: {e}");
                (Err(why.clone()), Err(why))
            });
            vec![Event::Voice(VoiceEvent::Devices { inputs, outputs })]
        }
    }
}

/// The library of `guild` as an event (or the error that kept it from being read).
fn sounds_event(ctx: &VoiceCtx, guild: &str) -> Vec<Event> {
    match ctx.guilds.list_sounds(guild) {
        Ok(list) => vec![Event::Voice(VoiceEvent::Sounds {
            guild: guild.to_owned(),
            sounds: list
                .into_iter()
                .map(|s| SoundEntry {
                    id: s.id,
                    name: s.name,
                    emoji: s.emoji,
                    duration_ms: s.duration_ms,
                })
                .collect(),
        })],
        Err(e) => vec![Event::Error(e.to_string())],
    }
}

/// Mute and deafen race with a leave: "not in a call" then is no news to the user.
fn quiet(r: Result<serde_json::Value, String>, v: &VoiceService) -> Vec<Event> {
    match r {
        Ok(_) => vec![Event::Voice(VoiceEvent::Status(status_of(v)))],
        Err(e) if e == "not in a call" => Vec::new(),
        Err(e) => vec![Event::Error(e)],
    }
}

fn presence(ctx: &VoiceCtx) -> BTreeMap<(String, u64), Vec<VoiceMember>> {
    let watched = ctx.watched.lock().map(|w| w.clone()).unwrap_or_default();
    let mut out = BTreeMap::new();
    for (g, c) in watched {
        let Some(gid) = hex::decode(&g)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(GuildId)
        else {
            continue;
        };
        let mut members: Vec<VoiceMember> = ctx
            .voice
            .present(&gid, &ChannelId(c))
            .into_iter()
            .map(|p| VoiceMember {
                peer: p.to_string(),
                name: ctx
                    .guilds
                    .nickname_of(&gid, &p)
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| crate::state::short(&p.to_string())),
            })
            .collect();
        if !members.is_empty() {
            members.sort_by(|a, b| a.name.cmp(&b.name).then(a.peer.cmp(&b.peer)));
            out.insert((g, c), members);
        }
    }
    out
}

/// Reads the call's status and the watched channels' presence, and sends what changed.
/// Before joining a channel or a call: leaves any call (which also makes "rejoin the same
/// channel" possible) and picks the devices. Push-to-talk up (or the mute button on) applies
/// from the first frame: the microphone is never live while the join runs.
async fn enter_options(
    v: &VoiceService,
    ctx: &VoiceCtx,
    input: AudioDevice,
    output: AudioDevice,
    muted: bool,
) -> Result<JoinOptions, Vec<Event>> {
    let (input, output) = ctx
        .devices
        .clone()
        .unwrap_or_else(|| (input.device(), output.device()));
    v.leave()
        .await
        .map_err(|e| vec![Event::Voice(VoiceEvent::JoinFailed(e))])?;
    Ok(JoinOptions {
        input,
        output,
        muted,
        ..JoinOptions::default()
    })
}

/// The events after joining a channel or a call.
fn entered(v: &VoiceService, r: Result<serde_json::Value, String>) -> Vec<Event> {
    match r {
        Ok(_) => vec![Event::Voice(VoiceEvent::Joined(status_of(v)))],
        Err(e) => vec![
            Event::Voice(VoiceEvent::JoinFailed(e)),
            Event::Voice(VoiceEvent::Status(status_of(v))),
        ],
    }
}

async fn poll(ctx: VoiceCtx, emit: crate::backend::Emitter) {
    let mut last_status: Option<VoiceStatus> = None;
    let mut last_present = None;
    let mut since_presence = PRESENCE_EVERY;
    loop {
        let s = status_of(&ctx.voice);
        if last_status.as_ref() != Some(&s) {
            last_status = Some(s.clone());
            emit.emit(Event::Voice(VoiceEvent::Status(s))).await;
        }
        if since_presence >= PRESENCE_EVERY {
            since_presence = Duration::ZERO;
            let p = presence(&ctx);
            if last_present.as_ref() != Some(&p) {
                last_present = Some(p.clone());
                emit.emit(Event::Voice(VoiceEvent::Present(p))).await;
            }
        }
        tokio::time::sleep(STATUS_EVERY).await;
        since_presence += STATUS_EVERY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(path: &str, rtt: Option<f64>, loss: f64) -> Participant {
        Participant {
            peer: "p".into(),
            path: path.into(),
            rtt_ms: rtt,
            loss,
            ..Participant::default()
        }
    }

    #[test]
    fn quality_is_the_worst_participants() {
        let mut v = VoiceState::default();
        assert_eq!(v.quality(), Quality::Good, "alone");
        v.status.participants = vec![participant("direct", Some(20.0), 0.0)];
        assert_eq!(v.quality(), Quality::Good);
        v.status
            .participants
            .push(participant("relayed", None, 0.0));
        assert_eq!(v.quality(), Quality::Fair);
        v.status
            .participants
            .push(participant("direct", Some(20.0), 0.2));
        assert_eq!(v.quality(), Quality::Poor);
        assert_eq!(
            Quality::of(&participant("connecting", None, 0.0)),
            Quality::Poor
        );
    }

    #[test]
    fn status_json_from_the_node_parses() {
        let s: VoiceStatus = serde_json::from_value(serde_json::json!({
            "in_call": true, "guild": "ab", "channel": 7, "channel_name": "Lounge",
            "muted": true, "deafened": false, "epoch": 3,
            "engine": {"running": true, "speaking": true, "error": null, "bitrate_kbps": 31.5},
            "participants": [{"peer": "12D", "nickname": null, "path": "direct", "rtt_ms": 1.5,
                "jitter_buffer_ms": 40.0, "loss": 0.01, "late": 0.0, "bitrate_kbps": 30.0,
                "speaking": true, "muted": false, "deafened": true, "ssrc": 5}]
        }))
        .unwrap();
        assert!(s.in_call && s.muted && s.engine.speaking);
        assert_eq!(s.participants[0].name(), "12D");
        assert!(s.participants[0].deafened);
        let none: VoiceStatus =
            serde_json::from_value(serde_json::json!({"in_call": false})).unwrap();
        assert!(!none.in_call);
    }

    /// Push-to-talk: muted unless the key is held; the node hears only changes.
    #[test]
    fn push_to_talk_sends_only_changes() {
        let prefs = VoicePrefs {
            mode: InputMode::PushToTalk,
            ..VoicePrefs::default()
        };
        let mut v = VoiceState::default();
        assert!(v.on_frame(&prefs, false).is_empty(), "not in a call");
        v.apply(VoiceEvent::Status(VoiceStatus {
            in_call: true,
            guild: "g".into(),
            channel: 1,
            ..VoiceStatus::default()
        }));
        let first = v.on_frame(&prefs, false);
        assert!(matches!(
            first.as_slice(),
            [
                Command::Voice(VoiceCommand::SetMuted(true)),
                Command::Voice(VoiceCommand::SetDeafened(false))
            ]
        ));
        assert!(v.on_frame(&prefs, false).is_empty());
        assert!(matches!(
            v.on_frame(&prefs, true).as_slice(),
            [Command::Voice(VoiceCommand::SetMuted(false))]
        ));
        assert!(v.on_frame(&prefs, true).is_empty());
        v.on_toggle_mute();
        assert!(
            matches!(
                v.on_frame(&prefs, true).as_slice(),
                [Command::Voice(VoiceCommand::SetMuted(true))]
            ),
            "the mute button wins over the key"
        );
    }

    #[test]
    fn prefs_round_trip_and_unknown_key_falls_back() {
        let p = VoicePrefs {
            input: AudioDevice::Named("USB mic".into()),
            output: AudioDevice::None,
            mode: InputMode::PushToTalk,
            ptt_key: "F".into(),
        };
        let back: VoicePrefs = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.key(), egui::Key::F);
        let odd = VoicePrefs {
            ptt_key: "NoSuchKey".into(),
            ..VoicePrefs::default()
        };
        assert_eq!(odd.key(), egui::Key::Backtick);
    }
}
