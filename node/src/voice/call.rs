//! One call's media engine: a thread that owns the call's UDP socket, its audio devices, the
//! local [`VoiceSender`] and one [`VoiceReceiver`] per remote participant.
//!
//! # One thread, one clock
//!
//! Every 20 ms the engine reads a frame from the input, encodes and encrypts it once and sends
//! it to every participant on that participant's current path; then it pulls one frame from
//! every participant's jitter buffer, mixes them (per-user gain, saturating) and writes the mix
//! to the output. Between frames it blocks on the socket with a timeout that ends at the next
//! deadline, so packets are taken as they arrive and timestamped for the jitter buffers. The
//! thread never waits on the async side: commands arrive on a bounded channel it polls, and
//! statistics go out through a shared snapshot.
//!
//! # Paths
//!
//! A participant announces UDP candidates. The engine probes all of them (every 200 ms for the
//! first 10 s after a change, then every second) while the other side does the same, which
//! opens both NATs' mappings at about the same time (simultaneous hole punching, as DCUtR does
//! for TCP). The first authenticated acknowledgement makes that address the participant's
//! direct path; an authenticated probe from a new source address is also a candidate (a NAT
//! rebinding, or a symmetric NAT's fresh mapping). A direct path with no acknowledgement for
//! [`PATH_TIMEOUT`] is dropped. Without a direct path, media goes through the media relay
//! when both have an allocation on the same relay; probing goes on, so a relayed call moves to
//! direct as soon as a probe gets through, without a gap (the receiver takes each frame once,
//! whichever path it came by).

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use rand_core::{OsRng, RngCore};
use securecomm_noise::frame::{BaseKey, FrameReceiver, FrameSender};
use securecomm_noise::secret::Secret32;
use securecomm_rendezvous::media::wire as relay_wire;
use serde::Serialize;

use super::codec::CodecConfig;
use super::device::{
    AudioSink, AudioSource, CpalInput, CpalOutput, DeviceError, NullSink, NullSource, WavSink,
    WavSource,
};
use super::jitter::{JitterConfig, JitterStats};
use super::pipeline::{
    Concealment, HalfPlayout, MAX_RED_PACKET, MAX_VOICE_PACKET, VoiceReceiver, VoiceSender,
};
use super::process::{ProcessConfig, Processor};
use super::soundboard::{
    ActiveClip, ClipCache, ClipEvent, EVENT_REPEATS, MAX_ACTIVE_CLIPS, RemoteClips,
};
use super::wire::{self, PROBE, PROBE_ACK, PeerPacket};
use super::{FRAME_SAMPLES, Frame, HALF_SAMPLES, HALF_US, SILENCE};

/// A direct path without an acknowledgement for this long is dropped.
pub const PATH_TIMEOUT: Duration = Duration::from_secs(4);
/// Fast probing lasts this long after a participant's candidates change.
const FAST_PROBING: Duration = Duration::from_secs(10);
const FAST_PROBE_EVERY: Duration = Duration::from_millis(200);
const SLOW_PROBE_EVERY: Duration = Duration::from_secs(1);
/// Keepalive and reflexive-address refresh towards the media relay.
const RELAY_BIND_EVERY: Duration = Duration::from_secs(10);
const RELAY_BIND_FAST: Duration = Duration::from_millis(500);
/// Most remote participants in one call.
pub const MAX_REMOTES: usize = 64;
/// Rooms larger than this send once to the media relay (fan-out) instead of one copy per
/// participant, when an allocation exists: see `docs/voice.md`.
pub const MESH_MAX: usize = 5;
/// Most copies of each frame sent through the media relay (one per relayed participant, or
/// one fan-out) with which redundant copies stay on. A relay's default allowance is 40,000
/// bytes a second per allocation; a stream with copies is up to about 19,000, so two relayed
/// copies of it would reach the allowance and the relay would drop packets, which the
/// receivers would report as loss: more copies, more drops.
pub const RED_MAX_RELAYED_SENDS: usize = 1;
// A packet with copies (type and stream id in front) fits what a media relay forwards.
const _: () = assert!(1 + 4 + MAX_RED_PACKET <= relay_wire::MAX_MEDIA_PAYLOAD);
/// Bound of the command channel.
pub const COMMAND_BOUND: usize = 64;
/// Probes remembered per participant (for round-trip times).
const MAX_OUTSTANDING_PROBES: usize = 16;
/// A frame louder than this (RMS of 16-bit samples) counts as speech for the indicators.
const SPEAKING_RMS: f64 = 300.0;
const SPEAKING_HOLD: Duration = Duration::from_millis(300);
/// Clips remembered as lacked by a participant (see `Engine::lacked`).
const MAX_LACKED: usize = 64;
/// How often the statistics snapshot is refreshed.
const STATS_EVERY: Duration = Duration::from_millis(200);
/// A receiver report counts this long (they come every second).
const REPORT_FRESH: Duration = Duration::from_secs(5);

/// Where the engine's audio comes from or goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// Silence in, nothing out.
    Null,
    /// A 48 kHz WAV file (read, or written).
    Wav(PathBuf),
    /// A sound card through cpal (`None`: the default device).
    Cpal(Option<String>),
}

/// An allocation this node holds on a relay's UDP media relay.
#[derive(Clone)]
pub struct OwnAllocation {
    /// The relay's libp2p peer id (bytes), to match participants' allocations.
    pub relay: Vec<u8>,
    /// The relay's UDP media address.
    pub addr: SocketAddr,
    /// Our allocation id there.
    pub alloc_id: u32,
    /// The allocation's secret token.
    pub token: [u8; 16],
}

impl Drop for OwnAllocation {
    fn drop(&mut self) {
        // The token is a credential: whoever holds it can send as this allocation.
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

impl std::fmt::Debug for OwnAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnAllocation")
            .field("addr", &self.addr)
            .field("alloc_id", &self.alloc_id)
            .finish_non_exhaustive()
    }
}

/// A remote participant as the engine needs it.
#[derive(Debug, Clone)]
pub struct RemoteSetup {
    /// Its libp2p peer id (for statistics).
    pub peer: PeerId,
    /// Its stream id.
    pub ssrc: u32,
    /// Its UDP candidates.
    pub candidates: Vec<SocketAddr>,
    /// Key for packets we send it (it chose it).
    pub out_key: Secret32,
    /// Key for packets it sends us (we chose it).
    pub in_key: Secret32,
    /// Its allocations on media relays.
    pub relays: Vec<wire::RelayEndpoint>,
    /// Whether its frames are decoded (it may speak).
    pub may_speak: bool,
    /// Whether its soundboard play events are taken (Speak and Use Soundboard).
    pub may_soundboard: bool,
}

/// What the async side tells the engine.
#[derive(Debug)]
pub enum Command {
    /// Add a participant, or update one (same ssrc): candidates, relays, permission.
    Upsert(RemoteSetup),
    /// A sender key of participant `ssrc`.
    AddKey {
        /// The participant's stream.
        ssrc: u32,
        /// The key id.
        kid: u64,
        /// The base key.
        base: Secret32,
    },
    /// A participant left.
    Remove(u32),
    /// Start sending under a new key.
    Rekey(u64, Secret32),
    /// Our allocation on a media relay (or none).
    SetAllocation(Option<OwnAllocation>),
    /// Self-mute (send silence) and self-deafen (play nothing).
    SetMuted(bool),
    /// See [`Command::SetMuted`].
    SetDeafened(bool),
    /// Per-participant playback gain (0.0 ..= 2.0).
    SetGain(u32, f32),
    /// Stop probing for direct paths (relay only, which hides our address) or start again.
    SetRelayOnly(bool),
    /// Push-to-talk: whether the key is down (only used in push-to-talk mode).
    SetTransmit(bool),
    /// Play a cached clip (the caller checked Use Soundboard): announce it in our frames and
    /// play it to ourselves.
    PlayClip {
        /// The play's id (random).
        id: u32,
        /// The clip's asset root (must be in the clip cache).
        root: [u8; 32],
        /// Its volume, percent (0..=100).
        volume: u8,
    },
    /// A participant lacks the clip of our play `id`: mix the rest into our stream.
    MixInStream(u32),
    /// Gain of every soundboard clip we hear (0.0 ..= 2.0).
    SetSoundboardGain(f32),
    /// End the call: flush the output and stop the thread.
    Stop,
}

/// One participant's numbers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RemoteStats {
    /// Peer id.
    pub peer: String,
    /// Stream id.
    pub ssrc: u32,
    /// `direct`, `relayed` or `connecting`.
    pub path: &'static str,
    /// The direct address in use, if any.
    pub addr: Option<String>,
    /// Last measured round trip on the direct path, ms.
    pub rtt_ms: Option<f64>,
    /// The jitter buffer's target delay, ms.
    pub jitter_buffer_ms: f64,
    /// Frames waiting in the jitter buffer.
    pub buffered: usize,
    /// Estimated loss (0..1) after reordering.
    pub loss: f32,
    /// Fraction of packets that came too late to play.
    pub late: f64,
    /// Packets that came after their frame was played or skipped.
    pub late_packets: u64,
    /// Frames skipped to shrink the jitter buffer.
    pub skipped: u64,
    /// Incoming bitrate over the last second, kbit/s.
    pub bitrate_kbps: f64,
    /// Media packets accepted (authentic and fresh).
    pub accepted: u64,
    /// Media packets rejected (forged, replayed, malformed).
    pub rejected: u64,
    /// Frames played from packets, FEC and concealment.
    pub decoded: u64,
    /// Frames recovered by FEC.
    pub fec: u64,
    /// Frames played from a redundant copy in a later packet (their own packet was lost).
    pub redundant: u64,
    /// Frames concealed.
    pub concealed: u64,
    /// Frames that came through the media relay.
    pub via_relay: u64,
    /// Frames that came directly.
    pub via_direct: u64,
    /// Packets of any kind known to come from it (authentic frames and probes; frames of a
    /// participant whose frames are not decoded are counted unchecked): its liveness.
    pub heard: u64,
    /// Currently speaking.
    pub speaking: bool,
    /// Whether its frames are decoded at all.
    pub may_speak: bool,
    /// Playback volume set for it, percent (100: unchanged).
    pub volume_percent: u32,
    /// The loss (0..1) it last reported on our stream, if within the last few seconds.
    pub reported_loss: Option<f32>,
    /// Receiver reports accepted from it.
    pub reports: u64,
    /// Soundboard play events dropped because it may not use the soundboard.
    pub clips_refused: u64,
    /// Its soundboard clips being mixed here now.
    pub clips_playing: usize,
}

/// The engine's numbers, refreshed every 200 ms.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct EngineStats {
    /// Whether the engine thread is running.
    pub running: bool,
    /// Why it stopped, if it failed.
    pub error: Option<String>,
    /// Our UDP port.
    pub port: u16,
    /// Frames sent.
    pub frames_sent: u64,
    /// Soundboard clips we played.
    pub clips_played: u64,
    /// Of those, clips mixed into our stream because a participant lacked them.
    pub clips_in_stream: u64,
    /// Bytes sent (all copies).
    pub bytes_sent: u64,
    /// Outgoing bitrate per copy, kbit/s, over the last second.
    pub bitrate_kbps: f64,
    /// We are speaking.
    pub speaking: bool,
    /// Self-muted.
    pub muted: bool,
    /// Self-deafened.
    pub deafened: bool,
    /// Sending by fan-out through the media relay.
    pub fanout: bool,
    /// The media relay's view of our address (server reflexive), once bound.
    pub reflexive: Option<String>,
    /// Packets dropped before decryption (malformed, unknown stream, bad MAC).
    pub dropped: u64,
    /// The loss (0..1) our encoder's FEC is tuned to.
    pub fec_loss: f32,
    /// Where that loss comes from: `reports` (the worst receiver report of the last few
    /// seconds), `incoming` (no reports: the worst loss we see from the others) or `none`.
    pub fec_tuned_by: &'static str,
    /// The expected-loss percentage our Opus encoder was given for it (0 without FEC, or
    /// while copies for bursts of loss are sent).
    pub fec_expected_percent: u8,
    /// Distances (frames back) of the redundant copies our packets carry now; empty: none.
    pub redundancy: Vec<u8>,
    /// Mean run of lost frames behind `fec_loss` (1.0: isolated losses).
    pub loss_burst: f32,
    /// Remote participants.
    pub remotes: Vec<RemoteStats>,
}

/// The async side's handle on a running engine.
#[derive(Debug)]
pub struct EngineHandle {
    commands: SyncSender<Command>,
    stats: Arc<Mutex<EngineStats>>,
    thread: Option<std::thread::JoinHandle<()>>,
    port: u16,
}

impl EngineHandle {
    /// Sends a command (fails only if the engine stopped or is hopelessly behind).
    pub fn command(&self, c: Command) -> Result<(), String> {
        self.commands
            .try_send(c)
            .map_err(|e| format!("voice engine: {e}"))
    }

    /// The latest statistics.
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The UDP port the engine listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the engine and waits for it (the output is flushed).
    pub fn stop(mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.commands.send(Command::Stop);
            let _ = t.join();
        }
    }
}

/// What an engine starts with.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Our stream id.
    pub ssrc: u32,
    /// Our first sender key.
    pub key: (u64, Secret32),
    /// Encoder settings (bitrate from the voice channel).
    pub codec: CodecConfig,
    /// Input.
    pub input: Device,
    /// Output.
    pub output: Device,
    /// Address to bind the UDP socket to (port 0: any).
    pub bind: SocketAddr,
    /// Start relay-only.
    pub relay_only: bool,
    /// Capture processing (echo cancellation, noise suppression, voice activity); `None`: none.
    pub process: Option<ProcessConfig>,
    /// Push-to-talk: send only while [`Command::SetTransmit`] says the key is down.
    pub push_to_talk: bool,
    /// Start muted.
    pub muted: bool,
    /// Decoded soundboard clips by asset root, shared with the voice service.
    pub clips: Arc<Mutex<ClipCache>>,
    /// Where the engine reports a participant's play event whose clip is not cached
    /// (`(ssrc, event)`; bounded, dropped when full).
    pub clip_needed: Option<tokio::sync::mpsc::Sender<(u32, ClipEvent)>>,
}

/// Starts the engine thread. The socket is bound and the devices opened before this returns,
/// so their errors come back here.
pub fn start(cfg: EngineConfig) -> Result<EngineHandle, String> {
    let socket =
        UdpSocket::bind(cfg.bind).map_err(|e| format!("voice socket {}: {e}", cfg.bind))?;
    let port = socket.local_addr().map_err(|e| e.to_string())?.port();
    let (tx, rx) = std::sync::mpsc::sync_channel(COMMAND_BOUND);
    let stats = Arc::new(Mutex::new(EngineStats {
        running: true,
        port,
        ..EngineStats::default()
    }));
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let shared = stats.clone();
    let thread = std::thread::Builder::new()
        .name("voice-engine".into())
        .spawn(move || {
            realtime_priority();
            // Devices are opened on this thread: cpal streams may not move between threads.
            let opened = open_input(&cfg.input).and_then(|i| Ok((i, open_output(&cfg.output)?)));
            let (input, output) = match opened {
                Ok(d) => {
                    let _ = ready_tx.send(Ok(()));
                    d
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let result = Engine::new(cfg, socket, input, output, rx, shared.clone())
                .and_then(|mut e| e.run());
            if let Ok(mut s) = shared.lock() {
                s.running = false;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "voice engine stopped");
                    s.error = Some(e);
                }
            }
        })
        .map_err(|e| format!("voice engine thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(EngineHandle {
            commands: tx,
            stats,
            thread: Some(thread),
            port,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err("voice engine failed to start".into())
        }
    }
}

/// Asks for real-time scheduling (round robin, middle priority) for the engine thread, as audio
/// software does: a 20 ms clock starved by a busy machine means gaps in what everyone hears.
/// Needs root or `CAP_SYS_NICE` (or an `rtprio` limit); without it the thread stays normal.
fn realtime_priority() {
    use thread_priority::{
        RealtimeThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let result = 50u8.try_into().map_err(|e| format!("{e:?}")).and_then(|v| {
        set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Crossplatform(v),
            ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::RoundRobin),
        )
        .map_err(|e| format!("{e:?}"))
    });
    match result {
        Ok(()) => tracing::debug!("voice engine runs with real-time priority"),
        Err(e) => tracing::debug!(error = %e, "voice engine keeps normal priority"),
    }
}

fn open_input(d: &Device) -> Result<Box<dyn AudioSource>, DeviceError> {
    Ok(match d {
        Device::Null => Box::new(NullSource::endless()),
        Device::Wav(p) => Box::new(WavSource::open(p)?),
        Device::Cpal(name) => Box::new(CpalInput::open(name.as_deref())?),
    })
}

fn open_output(d: &Device) -> Result<Box<dyn AudioSink>, DeviceError> {
    Ok(match d {
        Device::Null => Box::new(NullSink::default()),
        Device::Wav(p) => Box::new(WavSink::create(p)?),
        Device::Cpal(name) => Box::new(CpalOutput::open(name.as_deref())?),
    })
}

struct Remote {
    setup: RemoteSetup,
    rx: Option<VoiceReceiver>,
    direct: Option<SocketAddr>,
    last_ack: Option<Instant>,
    /// A source address its authenticated probes came from.
    learned: Option<SocketAddr>,
    probes: VecDeque<(u64, Instant)>,
    fast_until: Instant,
    next_probe: Instant,
    rtt: Option<Duration>,
    gain: f32,
    speaking_until: Option<Instant>,
    bytes_window: u64,
    bitrate_kbps: f64,
    via_relay: u64,
    via_direct: u64,
    heard: u64,
    /// Its play events and the clips of them being mixed.
    clips: RemoteClips,
    /// Play events dropped because it may not use the soundboard.
    clip_refused: u64,
    /// Nonce of the last receiver report accepted from it (reports must grow).
    report_nonce: u64,
    /// The loss it last reported on our stream, and when.
    /// Its last report on our stream: loss, mean run of lost frames, when.
    reported: Option<(f32, f32, Instant)>,
    /// Receiver reports accepted from it.
    reports: u64,
    /// Its frames, played 10 ms at a time.
    playout: HalfPlayout,
}

/// One of our own plays.
struct OwnPlay {
    event: ClipEvent,
    pcm: Arc<[i16]>,
    /// Frames of the clip sent so far (index of the next one).
    frame: u64,
    /// What we hear of it ourselves.
    monitor: ActiveClip,
    /// Frame from which we mix it into our stream (a participant lacked it).
    in_stream_since: Option<u64>,
}

impl OwnPlay {
    fn done(&self) -> bool {
        self.frame.saturating_mul(FRAME_SAMPLES as u64) >= self.pcm.len() as u64
            && self.monitor.done()
    }
}

impl Remote {
    fn relay_route(&self, own: Option<&OwnAllocation>) -> Option<u32> {
        let own = own?;
        self.setup
            .relays
            .iter()
            .find(|r| r.relay == own.relay)
            .map(|r| r.alloc_id)
    }

    /// The loss it reported on our stream and the mean run of lost frames, if the report is
    /// fresh.
    fn fresh_report(&self, now: Instant) -> Option<(f32, f32)> {
        self.reported
            .filter(|(_, _, at)| now.saturating_duration_since(*at) <= REPORT_FRESH)
            .map(|(loss, burst, _)| (loss, burst))
    }

    fn path(&self, own: Option<&OwnAllocation>) -> &'static str {
        if self.direct.is_some() {
            "direct"
        } else if self.relay_route(own).is_some() {
            "relayed"
        } else {
            "connecting"
        }
    }
}

struct Engine {
    socket: UdpSocket,
    input: Box<dyn AudioSource>,
    output: Box<dyn AudioSink>,
    input_done: bool,
    commands: Receiver<Command>,
    shared: Arc<Mutex<EngineStats>>,
    ssrc: u32,
    sender: VoiceSender,
    remotes: HashMap<u32, Remote>,
    own: Option<OwnAllocation>,
    next_bind: Instant,
    reflexive: Option<SocketAddr>,
    relay_only: bool,
    muted: bool,
    deafened: bool,
    processor: Option<Processor>,
    push_to_talk: bool,
    transmit: bool,
    speaking_until: Option<Instant>,
    start: Instant,
    frames: u64,
    bytes_sent: u64,
    bytes_window: u64,
    bitrate_kbps: f64,
    dropped: u64,
    next_stats: Instant,
    next_second: Instant,
    packet: Vec<u8>,
    wrapped: Vec<u8>,
    frame: Frame,
    /// The next 20 ms of soundboard clips, laid out at the start of each frame period.
    clip_mix: Vec<i32>,
    /// What was played in the current 20 ms (the echo canceller's reference).
    played: Frame,
    /// Whether the next 10 ms step is the second half of a frame period.
    second_half: bool,
    clips: Arc<Mutex<ClipCache>>,
    clip_needed: Option<tokio::sync::mpsc::Sender<(u32, ClipEvent)>>,
    own_plays: Vec<OwnPlay>,
    soundboard_gain: f32,
    clips_played: u64,
    clips_in_stream: u64,
    /// Clips a participant lacked in this call: later plays of them go into our stream from
    /// their first frame (bounded; forgotten when someone leaves).
    lacked: VecDeque<[u8; 32]>,
    /// Nonce of our last receiver report (one counter for all recipients).
    report_nonce: u64,
    /// The loss our encoder's FEC is tuned to, and where it came from.
    fec_loss: f32,
    fec_tuned_by: &'static str,
    /// Mean run of lost frames behind `fec_loss`.
    loss_burst: f32,
}

fn rms(f: &[i16]) -> f64 {
    let sum: f64 = f.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / f.len() as f64).sqrt()
}

fn new_receiver() -> Result<VoiceReceiver, String> {
    VoiceReceiver::new(
        FrameReceiver::new(8),
        JitterConfig::default(),
        Concealment::default(),
    )
    .map_err(|e| e.to_string())
}

impl Engine {
    fn new(
        cfg: EngineConfig,
        socket: UdpSocket,
        input: Box<dyn AudioSource>,
        output: Box<dyn AudioSink>,
        commands: Receiver<Command>,
        shared: Arc<Mutex<EngineStats>>,
    ) -> Result<Self, String> {
        let frames = FrameSender::new(cfg.key.0, &BaseKey::from_bytes(*cfg.key.1.expose()));
        let sender = VoiceSender::new(cfg.codec, frames).map_err(|e| e.to_string())?;
        let processor = match cfg.process {
            Some(p) => Some(Processor::new(p).map_err(|e| e.to_string())?),
            None => None,
        };
        let now = Instant::now();
        Ok(Self {
            socket,
            input,
            output,
            input_done: false,
            commands,
            shared,
            ssrc: cfg.ssrc,
            sender,
            remotes: HashMap::new(),
            own: None,
            next_bind: now,
            reflexive: None,
            relay_only: cfg.relay_only,
            muted: cfg.muted,
            deafened: false,
            processor,
            push_to_talk: cfg.push_to_talk,
            transmit: false,
            speaking_until: None,
            start: now,
            frames: 0,
            bytes_sent: 0,
            bytes_window: 0,
            bitrate_kbps: 0.0,
            dropped: 0,
            next_stats: now,
            next_second: now + Duration::from_secs(1),
            packet: Vec::with_capacity(MAX_VOICE_PACKET + 8),
            wrapped: Vec::with_capacity(MAX_VOICE_PACKET + 32),
            frame: SILENCE,
            clip_mix: vec![0; FRAME_SAMPLES],
            played: SILENCE,
            second_half: false,
            clips: cfg.clips,
            clip_needed: cfg.clip_needed,
            own_plays: Vec::new(),
            soundboard_gain: 1.0,
            clips_played: 0,
            clips_in_stream: 0,
            lacked: VecDeque::new(),
            report_nonce: 0,
            fec_loss: 0.0,
            fec_tuned_by: "none",
            loss_burst: 1.0,
        })
    }

    fn now_us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_micros() as u64
    }

    fn run(&mut self) -> Result<(), String> {
        let mut next_frame = Instant::now();
        let mut buf = vec![0u8; 2048];
        loop {
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Stop) | Err(TryRecvError::Disconnected) => {
                        self.output.flush().map_err(|e| e.to_string())?;
                        return Ok(());
                    }
                    Ok(c) => self.apply(c)?,
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            if now >= next_frame {
                self.tick(now)?;
                next_frame += Duration::from_micros(HALF_US);
                // Far behind (the machine stalled): skip ahead rather than burst.
                if now.saturating_duration_since(next_frame) > Duration::from_millis(200) {
                    next_frame = now + Duration::from_micros(HALF_US);
                }
            }
            self.housekeeping(now);
            let wait = next_frame
                .saturating_duration_since(Instant::now())
                .max(Duration::from_micros(500));
            self.socket
                .set_read_timeout(Some(wait))
                .map_err(|e| e.to_string())?;
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let at = Instant::now();
                    self.on_packet(&buf[..n], from, at);
                    // Take whatever else is queued without waiting.
                    self.socket
                        .set_nonblocking(true)
                        .map_err(|e| e.to_string())?;
                    while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
                        self.on_packet(&buf[..n], from, Instant::now());
                    }
                    self.socket
                        .set_nonblocking(false)
                        .map_err(|e| e.to_string())?;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                            // An ICMP port unreachable from an earlier send.
                            | std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => return Err(format!("voice socket: {e}")),
            }
        }
    }

    fn apply(&mut self, c: Command) -> Result<(), String> {
        match c {
            Command::Upsert(setup) => {
                let now = Instant::now();
                let room = self.remotes.len() < MAX_REMOTES;
                match self.remotes.get_mut(&setup.ssrc) {
                    Some(r) => {
                        if r.setup.candidates != setup.candidates {
                            r.fast_until = now + FAST_PROBING;
                            r.next_probe = now;
                        }
                        if !setup.may_speak {
                            r.rx = None;
                        } else if r.rx.is_none() {
                            r.rx = Some(new_receiver()?);
                        }
                        r.setup = setup;
                    }
                    None if room => {
                        let rx = if setup.may_speak {
                            Some(new_receiver()?)
                        } else {
                            None
                        };
                        self.remotes.insert(
                            setup.ssrc,
                            Remote {
                                setup,
                                rx,
                                direct: None,
                                last_ack: None,
                                learned: None,
                                probes: VecDeque::new(),
                                fast_until: now + FAST_PROBING,
                                next_probe: now,
                                rtt: None,
                                gain: 1.0,
                                speaking_until: None,
                                bytes_window: 0,
                                bitrate_kbps: 0.0,
                                via_relay: 0,
                                via_direct: 0,
                                heard: 0,
                                clips: RemoteClips::default(),
                                clip_refused: 0,
                                report_nonce: 0,
                                reported: None,
                                reports: 0,
                                playout: HalfPlayout::new(),
                            },
                        );
                    }
                    None => {}
                }
            }
            Command::AddKey { ssrc, kid, base } => {
                if let Some(rx) = self.remotes.get_mut(&ssrc).and_then(|r| r.rx.as_mut()) {
                    let keys = rx.keys_mut();
                    // Keep the newest few epochs of this sender (late frames of the last one).
                    keys.retain_keys(|k| k + 3 > kid);
                    let _ = keys.add_key(kid, &BaseKey::from_bytes(*base.expose()));
                }
            }
            Command::Remove(ssrc) => {
                self.remotes.remove(&ssrc);
                // Whoever lacked a clip may be the one who left.
                self.lacked.clear();
            }
            Command::Rekey(kid, base) => {
                self.sender
                    .rekey(FrameSender::new(kid, &BaseKey::from_bytes(*base.expose())));
            }
            Command::SetAllocation(a) => {
                self.own = a;
                self.reflexive = None;
                self.next_bind = Instant::now();
            }
            Command::SetMuted(m) => self.muted = m,
            Command::SetTransmit(t) => self.transmit = t,
            Command::SetDeafened(d) => self.deafened = d,
            Command::SetGain(ssrc, g) => {
                if let Some(r) = self.remotes.get_mut(&ssrc) {
                    r.gain = if g.is_finite() {
                        g.clamp(0.0, 2.0)
                    } else {
                        1.0
                    };
                }
            }
            Command::SetRelayOnly(on) => {
                self.relay_only = on;
                let now = Instant::now();
                for r in self.remotes.values_mut() {
                    if on {
                        r.direct = None;
                        r.learned = None;
                    } else {
                        r.fast_until = now + FAST_PROBING;
                        r.next_probe = now;
                    }
                }
            }
            Command::PlayClip { id, root, volume } => {
                let pcm = self.clips.lock().ok().and_then(|c| c.get(&root));
                if let Some(pcm) = pcm
                    && self.own_plays.len() < MAX_ACTIVE_CLIPS
                {
                    let event = ClipEvent {
                        id,
                        root,
                        volume: volume.min(100),
                        frames_ago: 0,
                        in_stream: false,
                    };
                    self.clips_played += 1;
                    let lacked = self.lacked.contains(&root);
                    if lacked {
                        self.clips_in_stream += 1;
                    }
                    self.own_plays.push(OwnPlay {
                        event,
                        monitor: ActiveClip::new(event, pcm.clone(), 0, self.soundboard_gain),
                        pcm,
                        frame: 0,
                        in_stream_since: lacked.then_some(0),
                    });
                }
            }
            Command::MixInStream(id) => {
                if let Some(p) = self.own_plays.iter_mut().find(|p| p.event.id == id)
                    && p.in_stream_since.is_none()
                {
                    p.in_stream_since = Some(p.frame);
                    self.clips_in_stream += 1;
                    if !self.lacked.contains(&p.event.root) {
                        if self.lacked.len() >= MAX_LACKED {
                            self.lacked.pop_front();
                        }
                        self.lacked.push_back(p.event.root);
                    }
                }
            }
            Command::SetSoundboardGain(g) => {
                self.soundboard_gain = if g.is_finite() {
                    g.clamp(0.0, 2.0)
                } else {
                    1.0
                };
            }
            Command::Stop => {}
        }
        Ok(())
    }

    /// Our plays' part of the outgoing frame: mixes the clips that go in our stream into
    /// `self.frame`, and returns the play event this frame carries, if any (a new play's first
    /// frames, or a play just moved into the stream).
    fn own_plays_frame(&mut self) -> Option<ClipEvent> {
        let mut attach: Option<(u64, ClipEvent)> = None;
        let mut acc: Option<Vec<i32>> = None;
        for p in &mut self.own_plays {
            let idx = p.frame;
            p.frame += 1;
            let start = usize::try_from(idx)
                .unwrap_or(usize::MAX)
                .saturating_mul(FRAME_SAMPLES);
            let candidate = match p.in_stream_since {
                Some(since) => {
                    if let Some(src) = p.pcm.get(start..(start + FRAME_SAMPLES).min(p.pcm.len())) {
                        let acc = acc.get_or_insert_with(|| {
                            self.frame.iter().map(|&s| i32::from(s)).collect()
                        });
                        let g = f32::from(p.event.volume) / 100.0;
                        for (a, &s) in acc.iter_mut().zip(src) {
                            *a += (f32::from(s) * g) as i32;
                        }
                    }
                    (idx - since <= u64::from(EVENT_REPEATS)).then_some((
                        idx - since,
                        ClipEvent {
                            in_stream: true,
                            frames_ago: 0,
                            ..p.event
                        },
                    ))
                }
                None => (idx <= u64::from(EVENT_REPEATS)).then_some((
                    idx,
                    ClipEvent {
                        frames_ago: idx as u8,
                        ..p.event
                    },
                )),
            };
            // The newest need first (a play's first frame before another's repeat).
            if let Some((age, e)) = candidate
                && attach.is_none_or(|(a, _)| age < a)
            {
                attach = Some((age, e));
            }
        }
        if let Some(acc) = acc {
            for (o, a) in self.frame.iter_mut().zip(acc) {
                *o = a.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
            }
        }
        attach.map(|(_, e)| e)
    }

    /// One 10 ms step: every other step captures, encodes and sends a 20 ms frame (and lays
    /// out the next 20 ms of soundboard clips); every step plays 10 ms of each participant
    /// ([`HalfPlayout`]) and mixes them.
    fn tick(&mut self, now: Instant) -> Result<(), String> {
        let first = !self.second_half;
        self.second_half = first;
        if first {
            self.capture_and_send(now)?;
        }
        self.play_half(now, first);
        Ok(())
    }

    /// Captures, encodes and sends one 20 ms frame.
    fn capture_and_send(&mut self, now: Instant) -> Result<(), String> {
        if !self.input_done {
            match self.input.read_frame(&mut self.frame) {
                Ok(true) => {}
                Ok(false) => self.input_done = true,
                Err(e) => {
                    // A vanished device: go on with silence (the app can pick another one).
                    tracing::warn!(error = %e, "voice input failed; sending silence");
                    self.input_done = true;
                }
            }
        }
        // Push-to-talk up or muted: silence (Opus sends it as DTX, the stream stays contiguous).
        let gated = self.muted || (self.push_to_talk && !self.transmit);
        if self.input_done || gated {
            self.frame = SILENCE;
        }
        if let Some(p) = self.processor.as_mut() {
            // Always run (the echo canceller keeps adapting); voice activity gates what is sent.
            let c = p.capture(&mut self.frame);
            if !c.speech {
                self.frame = SILENCE;
            }
        }
        if !gated && rms(&self.frame) > SPEAKING_RMS {
            self.speaking_until = Some(now + SPEAKING_HOLD);
        }
        let event = self.own_plays_frame();
        wire::media_header(self.ssrc, &mut self.packet);
        let mut frame = Vec::with_capacity(MAX_VOICE_PACKET);
        let kind = match &event {
            Some(e) => {
                self.sender
                    .send_event_into(&self.frame, e, &mut frame)
                    .map_err(|e| e.to_string())?;
                wire::MEDIA_EXT
            }
            None => self
                .sender
                .send_into(&self.frame, &mut frame)
                .map_err(|e| e.to_string())?,
        };
        if let Some(t) = self.packet.first_mut() {
            *t = kind;
        }
        self.packet.extend_from_slice(&frame);
        self.frames += 1;
        self.send_media();
        Ok(())
    }

    /// Plays 10 ms (`first`: the first half of a 20 ms frame period): each participant's
    /// next half frame and the soundboard clips, mixed.
    fn play_half(&mut self, now: Instant, first: bool) {
        let now_us = self.now_us(now);
        let mut mix = [0i32; HALF_SAMPLES];
        let mut half = [0i16; HALF_SAMPLES];
        let mut needed: Vec<(u32, ClipEvent)> = Vec::new();
        for (ssrc, r) in self.remotes.iter_mut() {
            let Some(rx) = r.rx.as_mut() else { continue };
            let Ok(decoded) = r.playout.play(rx, now_us, &mut half) else {
                continue;
            };
            if rms(&half) > SPEAKING_RMS {
                r.speaking_until = Some(now + SPEAKING_HOLD);
            }
            let g = r.gain;
            for (m, &s) in mix.iter_mut().zip(half.iter()) {
                *m += (f32::from(s) * g) as i32;
            }
            // Clips whose frame was just decoded start with it, in time with the voice.
            if decoded.is_some()
                && let Some(seq) = rx.last_played()
            {
                for (event, frames_in) in r.clips.due(seq) {
                    let pcm = self.clips.lock().ok().and_then(|c| c.get(&event.root));
                    match pcm {
                        Some(pcm) if r.clips.active.len() < MAX_ACTIVE_CLIPS => r
                            .clips
                            .active
                            .push(ActiveClip::new(event, pcm, frames_in, self.soundboard_gain)),
                        Some(_) => {}
                        None => needed.push((*ssrc, event)),
                    }
                }
            }
        }
        if first {
            // Clips advance 20 ms at a time: lay out the next 20 ms of all of them now.
            self.clip_mix.iter_mut().for_each(|m| *m = 0);
            for r in self.remotes.values_mut() {
                for c in r.clips.active.iter_mut() {
                    c.mix_into(&mut self.clip_mix);
                }
                r.clips.active.retain(|c| !c.done());
            }
            for p in self.own_plays.iter_mut() {
                p.monitor.mix_into(&mut self.clip_mix);
            }
            self.own_plays.retain(|p| !p.done());
        }
        let offset = if first { 0 } else { HALF_SAMPLES };
        let clips = self
            .clip_mix
            .get(offset..offset + HALF_SAMPLES)
            .unwrap_or_default();
        for (m, &c) in mix.iter_mut().zip(clips) {
            *m += c;
        }
        if let Some(tx) = &self.clip_needed {
            for n in needed {
                let _ = tx.try_send(n);
            }
        }
        let mut out = [0i16; HALF_SAMPLES];
        if !self.deafened {
            for (o, &m) in out.iter_mut().zip(mix.iter()) {
                *o = m.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
            }
        }
        // Exactly what the speakers play is what can echo back into the microphone: the
        // echo canceller gets it per 20 ms, once both halves are out.
        self.played[offset..offset + HALF_SAMPLES].copy_from_slice(&out);
        if !first && let Some(p) = self.processor.as_mut() {
            p.far_end(&self.played);
        }
        if let Err(e) = self.output.write_samples(&out) {
            tracing::warn!(error = %e, "voice output failed; playing nothing");
            self.output = Box::new(NullSink::default());
        }
    }

    /// Tells every participant whose frames we decode the loss we see on its stream, on the
    /// path its media comes by (directly, or through our media relay).
    fn send_reports(&mut self) {
        let own = self.own.clone();
        let mut out: Vec<([u8; wire::REPORT_LEN], Option<SocketAddr>, Option<u32>)> = Vec::new();
        for r in self.remotes.values() {
            let Some(rx) = &r.rx else { continue };
            if rx.stats().accepted == 0 {
                continue;
            }
            self.report_nonce += 1;
            let p = wire::report_packet(
                &r.setup.out_key,
                self.ssrc,
                self.report_nonce,
                rx.loss_report(),
                rx.jitter().mean_burst(),
            );
            out.push((p, r.direct, r.relay_route(own.as_ref())));
        }
        for (p, direct, relayed) in out {
            self.send_on_path(&p, direct, relayed, own.as_ref());
        }
    }

    /// Sends `bytes` to a participant: to its direct address if it has one, else through our
    /// media-relay allocation to its allocation `relayed`; nowhere without either.
    fn send_on_path(
        &mut self,
        bytes: &[u8],
        direct: Option<SocketAddr>,
        relayed: Option<u32>,
        own: Option<&OwnAllocation>,
    ) {
        match (direct, relayed, own) {
            (Some(addr), _, _) => self.send_to(bytes, addr),
            (None, Some(dest), Some(own)) => self.send_via_relay(bytes, dest, own),
            _ => {}
        }
    }

    /// Sends `bytes` through our allocation to `dest` (an allocation id, or `FANOUT`).
    fn send_via_relay(&mut self, bytes: &[u8], dest: u32, own: &OwnAllocation) {
        self.wrapped.clear();
        relay_wire::encode_send(own.token, dest, bytes, &mut self.wrapped);
        let w = std::mem::take(&mut self.wrapped);
        self.send_to(&w, own.addr);
        self.wrapped = w;
    }

    fn send_to(&mut self, bytes: &[u8], to: SocketAddr) {
        if self.socket.send_to(bytes, to).is_ok() {
            self.bytes_sent += bytes.len() as u64;
        }
    }

    fn send_media(&mut self) {
        let packet = std::mem::take(&mut self.packet);
        self.bytes_window += packet.len() as u64;
        let own = self.own.clone();
        let fanout = own.is_some() && self.remotes.len() > MESH_MAX;
        if let (true, Some(own)) = (fanout, own.as_ref()) {
            self.send_via_relay(&packet, relay_wire::FANOUT, own);
        } else {
            let targets: Vec<(Option<SocketAddr>, Option<u32>)> = self
                .remotes
                .values()
                .map(|r| (r.direct, r.relay_route(own.as_ref())))
                .collect();
            for (direct, relayed) in targets {
                self.send_on_path(&packet, direct, relayed, own.as_ref());
            }
        }
        self.packet = packet;
    }

    fn housekeeping(&mut self, now: Instant) {
        // Probes.
        let mut sends: Vec<([u8; wire::PROBE_LEN], SocketAddr)> = Vec::new();
        if !self.relay_only {
            for r in self.remotes.values_mut() {
                if let Some(at) = r.last_ack
                    && now.saturating_duration_since(at) > PATH_TIMEOUT
                    && r.direct.is_some()
                {
                    r.direct = None;
                    r.fast_until = now + FAST_PROBING;
                }
                if now < r.next_probe {
                    continue;
                }
                let fast = r.direct.is_none() && now < r.fast_until;
                r.next_probe = now
                    + if fast {
                        FAST_PROBE_EVERY
                    } else {
                        SLOW_PROBE_EVERY
                    };
                let nonce = OsRng.next_u64();
                if r.probes.len() >= MAX_OUTSTANDING_PROBES {
                    r.probes.pop_front();
                }
                r.probes.push_back((nonce, now));
                let p = wire::probe_packet(PROBE, &r.setup.out_key, self.ssrc, nonce);
                match r.direct {
                    Some(a) => sends.push((p, a)),
                    None => {
                        for a in r.setup.candidates.iter().chain(r.learned.iter()) {
                            sends.push((p, *a));
                        }
                    }
                }
            }
        }
        for (p, a) in sends {
            self.send_to(&p, a);
        }
        // Relay keepalive and reflexive address.
        if let Some(own) = self.own.clone()
            && now >= self.next_bind
        {
            self.next_bind = now
                + if self.reflexive.is_some() {
                    RELAY_BIND_EVERY
                } else {
                    RELAY_BIND_FAST
                };
            let mut b = Vec::with_capacity(32);
            relay_wire::encode_bind(own.token, OsRng.next_u64().to_be_bytes(), &mut b);
            self.send_to(&b, own.addr);
        }
        if now >= self.next_second {
            self.next_second = now + Duration::from_secs(1);
            self.bitrate_kbps = self.bytes_window as f64 * 8.0 / 1000.0;
            self.bytes_window = 0;
            let worse = |a: (f32, f32), b: (f32, f32)| if b.0 > a.0 { b } else { a };
            let (mut reported, mut incoming) = (None::<(f32, f32)>, (0.0f32, 1.0f32));
            for r in self.remotes.values_mut() {
                r.bitrate_kbps = r.bytes_window as f64 * 8.0 / 1000.0;
                r.bytes_window = 0;
                if let Some(rx) = &r.rx {
                    incoming = worse(incoming, (rx.loss_report(), rx.jitter().mean_burst()));
                }
                if let Some(report) = r.fresh_report(now) {
                    reported = Some(reported.map_or(report, |w| worse(w, report)));
                }
            }
            // FEC protects the receiver that loses most of our stream, as its reports say.
            // Until anyone reports (a peer of an older version), the loss we see from the others
            // stands in for the loss on our own uplink (paths are mostly symmetric).
            let ((loss, burst), by) = match reported {
                Some(l) => (l, "reports"),
                None if self.remotes.values().any(|r| r.rx.is_some()) => (incoming, "incoming"),
                None => ((0.0, 1.0), "none"),
            };
            (self.fec_loss, self.loss_burst, self.fec_tuned_by) = (loss, burst, by);
            let own = self.own.as_ref();
            let relayed_sends = if own.is_some() && self.remotes.len() > MESH_MAX {
                1
            } else {
                self.remotes
                    .values()
                    .filter(|r| r.direct.is_none() && r.relay_route(own).is_some())
                    .count()
            };
            self.sender
                .allow_redundancy(relayed_sends <= RED_MAX_RELAYED_SENDS);
            let _ = self.sender.receiver_report(loss, burst);
            self.send_reports();
        }
        if now >= self.next_stats {
            self.next_stats = now + STATS_EVERY;
            self.publish(now);
        }
    }

    fn publish(&self, now: Instant) {
        let own = self.own.as_ref();
        let remotes = self
            .remotes
            .values()
            .map(|r| {
                let (jb, buffered, loss, j, s) = match &r.rx {
                    Some(rx) => (
                        rx.jitter().target_us() as f64 / 1000.0,
                        rx.jitter().len(),
                        rx.loss_report(),
                        rx.jitter().stats(),
                        rx.stats(),
                    ),
                    None => (0.0, 0, 0.0, JitterStats::default(), Default::default()),
                };
                RemoteStats {
                    peer: r.setup.peer.to_string(),
                    ssrc: r.setup.ssrc,
                    path: r.path(own),
                    addr: r.direct.map(|a| a.to_string()),
                    rtt_ms: r.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    jitter_buffer_ms: jb,
                    buffered,
                    loss,
                    late: j.late_fraction(),
                    late_packets: j.late,
                    skipped: j.skipped,
                    bitrate_kbps: r.bitrate_kbps,
                    accepted: s.accepted,
                    rejected: s.rejected,
                    decoded: s.decoded,
                    fec: s.fec,
                    redundant: s.redundant,
                    concealed: s.concealed,
                    via_relay: r.via_relay,
                    via_direct: r.via_direct,
                    heard: r.heard,
                    speaking: r.speaking_until.is_some_and(|t| t > now),
                    may_speak: r.setup.may_speak,
                    volume_percent: (r.gain * 100.0).round() as u32,
                    reported_loss: r.fresh_report(now).map(|(loss, _)| loss),
                    reports: r.reports,
                    clips_refused: r.clip_refused,
                    clips_playing: r.clips.active.len(),
                }
            })
            .collect();
        let s = EngineStats {
            running: true,
            error: None,
            port: self.socket.local_addr().map(|a| a.port()).unwrap_or(0),
            frames_sent: self.frames,
            clips_played: self.clips_played,
            clips_in_stream: self.clips_in_stream,
            bytes_sent: self.bytes_sent,
            bitrate_kbps: self.bitrate_kbps,
            speaking: self.speaking_until.is_some_and(|t| t > now),
            muted: self.muted,
            deafened: self.deafened,
            fanout: own.is_some() && self.remotes.len() > MESH_MAX,
            reflexive: self.reflexive.map(|a| a.to_string()),
            dropped: self.dropped,
            fec_loss: self.fec_loss,
            fec_tuned_by: self.fec_tuned_by,
            fec_expected_percent: self.sender.encoder().expected_loss(),
            redundancy: self.sender.redundancy().to_vec(),
            loss_burst: self.loss_burst,
            remotes,
        };
        if let Ok(mut shared) = self.shared.lock() {
            *shared = s;
        }
    }

    fn on_packet(&mut self, bytes: &[u8], from: SocketAddr, at: Instant) {
        if let Some(own) = &self.own
            && from == own.addr
        {
            match relay_wire::parse_relay_packet(bytes) {
                Ok(relay_wire::RelayPacket::Data { from: _, payload }) => {
                    self.on_peer_packet(payload, None, at)
                }
                Ok(relay_wire::RelayPacket::Bound { observed, .. }) => {
                    self.reflexive = Some(observed)
                }
                Err(_) => self.dropped += 1,
            }
            return;
        }
        self.on_peer_packet(bytes, Some(from), at);
    }

    /// A packet from a participant: `from` is its source address (`None`: through the relay).
    fn on_peer_packet(&mut self, bytes: &[u8], from: Option<SocketAddr>, at: Instant) {
        let now_us = self.now_us(at);
        let Ok(p) = wire::parse_packet(bytes) else {
            self.dropped += 1;
            return;
        };
        match p {
            PeerPacket::Media { ssrc, frame, kind } => {
                let Some(r) = self.remotes.get_mut(&ssrc) else {
                    self.dropped += 1;
                    return;
                };
                let Some(rx) = r.rx.as_mut() else {
                    r.heard += 1;
                    return;
                };
                if let Ok(event) = rx.receive_typed(frame, now_us, kind) {
                    if let Some((event, seq)) = event {
                        // Receivers check the right too: an event from a participant without
                        // Use Soundboard (or Speak) is dropped, the frame's voice is kept.
                        if r.setup.may_soundboard {
                            r.clips.on_event(event, seq);
                        } else {
                            r.clip_refused += 1;
                        }
                    }
                    r.heard += 1;
                    r.bytes_window += bytes.len() as u64;
                    if from.is_some() {
                        r.via_direct += 1;
                    } else {
                        r.via_relay += 1;
                    }
                }
            }
            PeerPacket::Probe { ssrc, nonce, mac } => {
                let (Some(from), false) = (from, self.relay_only) else {
                    return;
                };
                let Some(r) = self.remotes.get_mut(&ssrc) else {
                    self.dropped += 1;
                    return;
                };
                if !wire::probe_ok(PROBE, &r.setup.in_key, ssrc, nonce, &mac) {
                    self.dropped += 1;
                    return;
                }
                r.heard += 1;
                // An authentic probe from a new address: the peer's NAT mapping towards us.
                if r.direct != Some(from) && !r.setup.candidates.contains(&from) {
                    r.learned = Some(from);
                    if r.direct.is_some() {
                        // Rebinding: answer there, and let its acknowledgement move the path.
                        r.next_probe = at;
                    }
                }
                let ack = wire::probe_packet(PROBE_ACK, &r.setup.out_key, self.ssrc, nonce);
                self.send_to(&ack, from);
            }
            PeerPacket::ProbeAck { ssrc, nonce, mac } => {
                let (Some(from), false) = (from, self.relay_only) else {
                    return;
                };
                let Some(r) = self.remotes.get_mut(&ssrc) else {
                    self.dropped += 1;
                    return;
                };
                let Some(pos) = r.probes.iter().position(|(n, _)| *n == nonce) else {
                    self.dropped += 1;
                    return;
                };
                if !wire::probe_ok(PROBE_ACK, &r.setup.in_key, ssrc, nonce, &mac) {
                    self.dropped += 1;
                    return;
                }
                r.heard += 1;
                let (_, sent) = r.probes.remove(pos).unwrap_or((nonce, at));
                r.rtt = Some(at.saturating_duration_since(sent));
                r.last_ack = Some(at);
                r.direct = Some(from);
            }
            PeerPacket::Report {
                ssrc,
                nonce,
                loss,
                burst,
                mac,
            } => {
                let Some(r) = self.remotes.get_mut(&ssrc) else {
                    self.dropped += 1;
                    return;
                };
                if nonce <= r.report_nonce
                    || !wire::report_ok(&r.setup.in_key, ssrc, nonce, loss, burst, &mac)
                {
                    self.dropped += 1;
                    return;
                }
                r.heard += 1;
                r.report_nonce = nonce;
                r.reports += 1;
                r.reported = Some((
                    f32::from(loss) / f32::from(wire::MAX_REPORT_LOSS),
                    f32::from(burst) / 10.0,
                    at,
                ));
            }
        }
    }
}
