//! Voice rooms on the network: who is in the call, their keys, their paths.
//!
//! # Joining and keys
//!
//! `join` checks Connect (and the channel's user limit against the presence this node has
//! seen), starts the media engine ([`super::call`]) with a fresh sender key, and sends a
//! keyless [`Announce`] ("I am in this room") to every connected member of the guild. A member
//! in the same room answers with its own `Announce`, including a sender key **made new for this
//! join**: every participant rotates its own key whenever someone joins or leaves, hands the
//! new key to the current participants over libp2p (Noise, end to end through relays), and
//! starts sending under it once they all took it (or after [`ROTATE_WAIT`]). So a joiner cannot
//! decrypt what was said before it came, and a leaver cannot decrypt what is said after it
//! left. Announces that do not carry a key never give one away: presence rounds to members
//! outside the call tell them nothing they could decrypt with. Sender keys are per participant
//! and random (not derived from one call secret): nobody has to elect a leader or agree on an
//! epoch, and each rotation is a participant's own business.
//!
//! # Authorization
//!
//! Every announce is checked against the guild state: the peer must be a member device with
//! View Channel and Connect in that voice channel; frames of a participant without Speak are
//! not decoded. Rights are checked again every second, so a kick, a ban or a role change
//! removes a participant (and rotates the keys) without waiting for it to leave.
//!
//! # Soundboard
//!
//! [`VoiceService::cache_clip`] fills the clip cache the engines mix from (the guild layer
//! calls it with each downloaded library asset, decoded by `sound::decode_asset`);
//! [`VoiceService::play_clip`] checks Speak and Use Soundboard in the call's channel against
//! the guild state as it is now and has the engine announce the play in our frames. Each
//! participant's soundboard right is refreshed with its other rights, and the engine drops
//! play events of participants without it. A receiver that lacks a clip sends
//! `VoiceRequest::NeedClip` to its player, who mixes it into its stream (see
//! [`super::soundboard`]).
//!
//! # Paths
//!
//! Candidates are this node's interface addresses (from libp2p's listeners) with the call's
//! UDP port, plus the address the media relay observed. The engine punches holes and falls
//! back to a media-relay allocation that this node takes on one of its reserved relays; the
//! allocation is announced with the candidates.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use libp2p::PeerId;
use libp2p::multiaddr::Protocol;
use rand_core::{OsRng, RngCore};
use securecomm_crdt::schema::{ChannelId, GuildId};
use securecomm_noise::codec::{Decode, Encode};
use securecomm_noise::secret::Secret32;
use securecomm_rendezvous::media::{MediaRequest, MediaResponse};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::call::{self, Command, Device, EngineConfig, EngineHandle, OwnAllocation, RemoteSetup};
use super::codec::CodecConfig;
use super::process::ProcessConfig;
use super::soundboard::{ClipCache, ClipEvent};
use super::wire::{Announce, RelayEndpoint, SenderKey, VOICE_VERSION, VoiceRequest, VoiceResponse};
use crate::guild::GuildService;
use crate::guild::service::VoiceRoom;
use crate::net::{Client, Event};

/// How long a rotation waits for every participant to take the new key before switching.
pub const ROTATE_WAIT: Duration = Duration::from_secs(3);
/// A participant silent this long (no UDP packet and no answer to a presence announce) is gone.
pub const SILENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A participant not heard on UDP for this long is asked over libp2p whether it is still here.
const UDP_QUIET: Duration = Duration::from_secs(3);
/// How often members outside the call are told about it (and asked whether they are in it).
const PRESENCE_EVERY: Duration = Duration::from_secs(5);
/// A member's presence in a voice channel is remembered this long after its last announce.
const PRESENCE_TTL: Duration = Duration::from_secs(20);
/// Most presence records kept.
const MAX_PRESENCE: usize = 1024;
/// Timeout of one signalling request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of the engine's queue of play events whose clip is not cached.
const CLIP_NEEDED_BOUND: usize = 16;

/// Options of a join.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// Input device.
    pub input: Device,
    /// Output device.
    pub output: Device,
    /// Never send media directly (hides this node's address from the others; needs a relay).
    pub relay_only: bool,
    /// Address for the call's UDP socket (port 0 for any).
    pub bind: SocketAddr,
    /// Capture processing. `None`: on (defaults: echo cancellation, noise suppression, voice
    /// activity) for a sound card, off for WAV and null input (files are clean already, and
    /// tests and bots want their audio untouched).
    pub process: Option<Option<ProcessConfig>>,
    /// Push-to-talk instead of voice activity: nothing is sent until [`VoiceService::set_transmit`].
    pub push_to_talk: bool,
    /// Join muted (an app whose push-to-talk key is up, or whose mute button is on).
    pub muted: bool,
}

impl Default for JoinOptions {
    fn default() -> Self {
        Self {
            input: Device::Null,
            output: Device::Null,
            relay_only: false,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            process: None,
            push_to_talk: false,
            muted: false,
        }
    }
}

struct Participant {
    ssrc: u32,
    theirs: Announce,
    may_speak: bool,
    may_soundboard: bool,
    last_heard: Instant,
    last_packets: u64,
    last_accepted: u64,
    last_rejected: u64,
}

struct Call {
    room: VoiceRoom,
    ssrc: u32,
    engine: EngineHandle,
    kid: u64,
    key: Secret32,
    /// Probe keys we chose, per peer (what their probes to us are MACed with).
    probe_keys: HashMap<PeerId, Secret32>,
    participants: HashMap<PeerId, Participant>,
    candidates: Vec<SocketAddr>,
    relay_only: bool,
    muted: bool,
    deafened: bool,
    alloc: Option<(PeerId, OwnAllocation, Instant)>,
    rotating: bool,
    rotate_again: bool,
    /// Our own join round is over: from now on an unknown participant is a joiner (and we
    /// rotate); before, it is someone who was here before us (our key is new anyway).
    settled: bool,
}

impl Call {
    fn probe_key(&mut self, peer: PeerId) -> Secret32 {
        self.probe_keys
            .entry(peer)
            .or_insert_with(|| Secret32::random(&mut OsRng))
            .clone()
    }

    fn announce_for(&mut self, peer: PeerId, with_key: bool) -> Announce {
        let relays = self
            .alloc
            .as_ref()
            .map(|(_, a, _)| {
                vec![RelayEndpoint {
                    relay: a.relay.clone(),
                    addr: a.addr,
                    alloc_id: a.alloc_id,
                }]
            })
            .unwrap_or_default();
        Announce {
            guild: self.room.guild,
            channel: self.room.channel,
            ssrc: self.ssrc,
            candidates: if self.relay_only {
                Vec::new()
            } else {
                self.candidates.clone()
            },
            probe_key: self.probe_key(peer),
            key: (with_key && self.room.may_speak).then(|| SenderKey {
                kid: self.kid,
                base: self.key.clone(),
            }),
            relays,
            muted: self.muted,
            deafened: self.deafened,
        }
    }

    fn setup_for(
        &mut self,
        peer: PeerId,
        a: &Announce,
        may_speak: bool,
        may_soundboard: bool,
    ) -> RemoteSetup {
        RemoteSetup {
            peer,
            ssrc: a.ssrc,
            candidates: a.candidates.clone(),
            out_key: a.probe_key.clone(),
            in_key: self.probe_key(peer),
            relays: a.relays.clone(),
            may_speak,
            may_soundboard,
        }
    }

    fn is_room(&self, guild: &GuildId, channel: &ChannelId) -> bool {
        self.room.guild == *guild && self.room.channel == *channel
    }
}

struct Inner {
    net: Client,
    guilds: GuildService,
    call: Mutex<Option<Call>>,
    presence: Mutex<HashMap<(GuildId, ChannelId, PeerId), Instant>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Decoded soundboard clips, shared with every call's engine.
    clips: Arc<Mutex<ClipCache>>,
    /// Gain of the soundboard clips we hear, kept across calls.
    soundboard_gain: Mutex<f32>,
}

/// The voice layer of a node (one call at a time). Cheap to clone.
#[derive(Clone)]
pub struct VoiceService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for VoiceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceService").finish_non_exhaustive()
    }
}

/// What went wrong with a voice command.
pub type VoiceResult<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl VoiceService {
    /// Starts the voice layer: it answers voice requests and runs its timers.
    pub fn start(net: Client, guilds: GuildService) -> Self {
        let svc = Self {
            inner: Arc::new(Inner {
                net,
                guilds,
                call: Mutex::new(None),
                presence: Mutex::new(HashMap::new()),
                tasks: Mutex::new(Vec::new()),
                clips: Arc::new(Mutex::new(ClipCache::default())),
                soundboard_gain: Mutex::new(1.0),
            }),
        };
        let events = tokio::spawn(svc.clone().run_events());
        let ticks = tokio::spawn(svc.clone().run_ticks());
        let clips = tokio::spawn(svc.clone().load_library_clips());
        if let Ok(mut t) = svc.inner.tasks.lock() {
            t.push(events);
            t.push(ticks);
            t.push(clips);
        }
        svc
    }

    /// Keeps the clip cache filled with every guild library sound whose asset is here (the
    /// guild layer fetches them ahead of time), so playing one needs no download.
    async fn load_library_clips(self) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let guilds = self.inner.guilds.clone();
            let roots = guilds.sound_roots_here();
            // At most what the cache keeps, so a large library is not decoded over and over.
            for root in roots.into_iter().take(super::soundboard::MAX_CACHED_CLIPS) {
                if self.has_clip(&root) {
                    continue;
                }
                let g = guilds.clone();
                let pcm = tokio::task::spawn_blocking(move || g.sound_clip(&root))
                    .await
                    .ok()
                    .flatten();
                if let Some(pcm) = pcm {
                    self.cache_clip(root, pcm.into());
                }
            }
        }
    }

    /// Leaves any call and stops the voice layer's tasks.
    pub async fn stop(&self) {
        let _ = self.leave().await;
        if let Ok(mut t) = self.inner.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
    }

    fn with_call<R>(&self, f: impl FnOnce(&mut Call) -> R) -> Option<R> {
        let mut g = self.inner.call.lock().ok()?;
        g.as_mut().map(f)
    }

    /// Joins voice channel `channel` of `guild` (leaving any other call first).
    pub async fn join(&self, guild: &str, channel: &str, opts: JoinOptions) -> VoiceResult<Value> {
        let room = self.inner.guilds.voice_room(guild, channel).map_err(err)?;
        self.join_room(room, opts).await
    }

    /// Calls `user` directly (a nickname or user id from a guild both share), or answers
    /// their call: both sides join the same two-person room. The other side sees the call
    /// ringing in `voice status` until it calls back.
    pub async fn call(&self, user: &str, opts: JoinOptions) -> VoiceResult<Value> {
        let room = self.inner.guilds.dm_voice_room(user).map_err(err)?;
        self.join_room(room, opts).await
    }

    /// Direct calls ringing here: users in a call with this node's user whom it has not
    /// joined (from their announces of the last few seconds).
    pub fn ringing(&self) -> Vec<Value> {
        let now = Instant::now();
        let in_call = self.with_call(|c| (c.room.guild, c.room.channel));
        let Ok(mut p) = self.inner.presence.lock() else {
            return Vec::new();
        };
        p.retain(|_, at| now.saturating_duration_since(*at) < PRESENCE_TTL);
        let guilds = &self.inner.guilds;
        p.keys()
            .filter(|(g, c, _)| in_call != Some((*g, *c)) && !guilds.is_guild(g))
            .map(|(g, _, peer)| {
                json!({
                    "peer": peer.to_string(),
                    "user": guilds.user_of_peer(peer),
                    "nickname": guilds.nickname_of(g, peer),
                })
            })
            .collect()
    }

    async fn join_room(&self, room: VoiceRoom, opts: JoinOptions) -> VoiceResult<Value> {
        if self.with_call(|c| c.is_room(&room.guild, &room.channel)) == Some(true) {
            return Err(format!("already in #{}", room.name));
        }
        self.leave().await?;
        let present = self.present(&room.guild, &room.channel).len();
        if room.user_limit > 0 && present + 1 > usize::from(room.user_limit) {
            return Err(format!(
                "#{} is full ({} of {})",
                room.name, present, room.user_limit
            ));
        }
        let ssrc = OsRng.next_u32();
        let key = Secret32::random(&mut OsRng);
        let codec = CodecConfig {
            bitrate: room.bitrate.clamp(8_000, 96_000),
            ..CodecConfig::default()
        };
        let process = match opts.process {
            Some(p) => p,
            None => matches!(opts.input, Device::Cpal(_)).then(ProcessConfig::default),
        };
        // Play events whose clip we lack, reported by the engine; each becomes a NeedClip
        // request to the participant who played it.
        let (clip_tx, clip_rx) = tokio::sync::mpsc::channel(CLIP_NEEDED_BOUND);
        let engine = call::start(EngineConfig {
            clips: self.inner.clips.clone(),
            clip_needed: Some(clip_tx),
            ssrc,
            key: (0, key.clone()),
            codec,
            process,
            push_to_talk: opts.push_to_talk,
            // A member without Speak (or server-muted) sends nothing at all.
            muted: opts.muted || !room.may_speak,
            input: opts.input,
            output: opts.output,
            bind: opts.bind,
            relay_only: opts.relay_only,
        })?;
        let mut candidates = self.candidates(engine.port()).await;
        // A socket bound to one address is reachable there (and maybe only there).
        if !opts.bind.ip().is_unspecified() {
            let own = SocketAddr::new(opts.bind.ip(), engine.port());
            candidates.retain(|c| *c != own);
            candidates.insert(0, own);
        }
        let gain = self.inner.soundboard_gain.lock().map(|g| *g).unwrap_or(1.0);
        let _ = engine.command(Command::SetSoundboardGain(gain));
        let needs = tokio::spawn(self.clone().run_clip_needs(clip_rx));
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.retain(|h| !h.is_finished());
            t.push(needs);
        }
        let name = room.name.clone();
        *self.inner.call.lock().map_err(err)? = Some(Call {
            room,
            ssrc,
            engine,
            kid: 0,
            key,
            probe_keys: HashMap::new(),
            participants: HashMap::new(),
            candidates,
            relay_only: opts.relay_only,
            muted: opts.muted,
            deafened: false,
            alloc: None,
            rotating: false,
            rotate_again: false,
            settled: false,
        });
        self.allocate().await;
        self.presence_round().await;
        self.with_call(|c| c.settled = true);
        let mut v = self.status();
        v["joined"] = json!(name);
        Ok(v)
    }

    /// Leaves the current call (no call: nothing to do).
    pub async fn leave(&self) -> VoiceResult<Value> {
        let Some(call) = self.inner.call.lock().map_err(err)?.take() else {
            return Ok(json!({"left": null}));
        };
        let (guild, channel) = (call.room.guild, call.room.channel);
        let peers: Vec<PeerId> = call.participants.keys().copied().collect();
        let alloc = call.alloc.clone();
        let name = call.room.name.clone();
        let engine = call.engine;
        tokio::task::spawn_blocking(move || engine.stop())
            .await
            .map_err(err)?;
        let bye = VoiceRequest::Leave { guild, channel }.to_bytes();
        join_all(peers.into_iter().map(|p| self.request(p, bye.clone()))).await;
        if let Some((relay, a, _)) = alloc {
            let _ = tokio::time::timeout(
                REQUEST_TIMEOUT,
                self.inner
                    .net
                    .media(relay, MediaRequest::Release { token: a.token }),
            )
            .await;
        }
        Ok(json!({"left": name}))
    }

    /// Self-mute.
    pub fn set_muted(&self, muted: bool) -> VoiceResult<Value> {
        self.with_call(|c| {
            c.muted = muted;
            c.engine
                .command(Command::SetMuted(muted || !c.room.may_speak))
        })
        .ok_or("not in a call")??;
        Ok(self.status())
    }

    /// Push-to-talk key down (`true`) or up; only matters when joined with push-to-talk.
    pub fn set_transmit(&self, down: bool) -> VoiceResult<Value> {
        self.with_call(|c| c.engine.command(Command::SetTransmit(down)))
            .ok_or("not in a call")??;
        Ok(json!({"transmit": down}))
    }

    /// Self-deafen.
    pub fn set_deafened(&self, deafened: bool) -> VoiceResult<Value> {
        self.with_call(|c| {
            c.deafened = deafened;
            c.engine.command(Command::SetDeafened(deafened))
        })
        .ok_or("not in a call")??;
        Ok(self.status())
    }

    /// Playback volume of one participant (by peer id or nickname), 0 to 200 percent.
    pub fn set_volume(&self, who: &str, percent: u32) -> VoiceResult<Value> {
        let guilds = self.inner.guilds.clone();
        self.with_call(|c| {
            let gid = c.room.guild;
            let found = c.participants.iter().find(|(p, _)| {
                p.to_string() == who || guilds.nickname_of(&gid, p).as_deref() == Some(who)
            });
            let (_, part) = found.ok_or_else(|| format!("{who} is not in the call"))?;
            c.engine
                .command(Command::SetGain(part.ssrc, percent.min(200) as f32 / 100.0))
        })
        .ok_or("not in a call")??;
        Ok(self.status())
    }

    /// Relay-only on or off during a call (off: the engine starts probing for direct paths).
    pub async fn set_relay_only(&self, on: bool) -> VoiceResult<Value> {
        self.with_call(|c| {
            c.relay_only = on;
            c.engine.command(Command::SetRelayOnly(on))
        })
        .ok_or("not in a call")??;
        self.reannounce().await;
        Ok(self.status())
    }

    /// The call as JSON: room, own state, participants with path, jitter buffer, loss, bitrate.
    pub fn status(&self) -> Value {
        let guilds = &self.inner.guilds;
        let v = self.with_call(|c| {
            let s = c.engine.stats();
            let by_peer: HashMap<String, &super::call::RemoteStats> =
                s.remotes.iter().map(|r| (r.peer.clone(), r)).collect();
            let participants: Vec<Value> = c
                .participants
                .iter()
                .map(|(p, part)| {
                    let mut v = json!({
                        "peer": p.to_string(),
                        "nickname": guilds.nickname_of(&c.room.guild, p),
                        "muted": part.theirs.muted,
                        "deafened": part.theirs.deafened,
                        "may_speak": part.may_speak,
                        "may_soundboard": part.may_soundboard,
                    });
                    if let Some(r) = by_peer.get(&p.to_string()) {
                        let extra = serde_json::to_value(r).unwrap_or(Value::Null);
                        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
                            o.extend(e);
                        }
                    }
                    v
                })
                .collect();
            json!({
                "in_call": true,
                "guild": hex::encode(c.room.guild.0),
                "channel": c.room.channel.0,
                "channel_name": c.room.name,
                "bitrate": c.room.bitrate,
                "relay_only": c.relay_only,
                "relay": c.alloc.as_ref().map(|(p, a, _)| json!({"relay": p.to_string(), "addr": a.addr.to_string()})),
                // What the others are told: nothing while relay-only.
                "candidates": if c.relay_only { Vec::new() } else {
                    c.candidates.iter().map(|a| a.to_string()).collect::<Vec<_>>()
                },
                "epoch": c.kid,
                "engine": {
                    "running": s.running,
                    "error": s.error,
                    "port": s.port,
                    "frames_sent": s.frames_sent,
                    "clips_played": s.clips_played,
                    "clips_in_stream": s.clips_in_stream,
                    "bytes_sent": s.bytes_sent,
                    "bitrate_kbps": s.bitrate_kbps,
                    "speaking": s.speaking,
                    "fanout": s.fanout,
                    "reflexive": s.reflexive,
                    "dropped": s.dropped,
                    "fec_loss": s.fec_loss,
                    "fec_tuned_by": s.fec_tuned_by,
                    "fec_expected_percent": s.fec_expected_percent,
                    "redundancy": s.redundancy,
                    "loss_burst": s.loss_burst,
                },
                "muted": c.muted,
                "may_speak": c.room.may_speak,
                "deafened": c.deafened,
                "participants": participants,
            })
        });
        let mut v = v.unwrap_or_else(|| json!({"in_call": false}));
        v["ringing"] = Value::Array(self.ringing());
        v
    }

    /// Members seen in a voice channel recently (from their announces).
    pub fn present(&self, guild: &GuildId, channel: &ChannelId) -> Vec<PeerId> {
        let now = Instant::now();
        let Ok(mut p) = self.inner.presence.lock() else {
            return Vec::new();
        };
        p.retain(|_, at| now.saturating_duration_since(*at) < PRESENCE_TTL);
        p.keys()
            .filter(|(g, c, _)| g == guild && c == channel)
            .map(|(_, _, peer)| *peer)
            .collect()
    }

    fn note_presence(&self, guild: GuildId, channel: ChannelId, peer: PeerId, here: bool) {
        if let Ok(mut p) = self.inner.presence.lock() {
            // One channel per peer at a time.
            p.retain(|(_, _, q), _| *q != peer);
            if here && p.len() < MAX_PRESENCE {
                p.insert((guild, channel, peer), Instant::now());
            }
        }
    }

    async fn candidates(&self, port: u16) -> Vec<SocketAddr> {
        let addrs = self.inner.net.listen_addrs().await.unwrap_or_default();
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in addrs {
            if a.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
                continue;
            }
            let ip = a.iter().find_map(|p| match p {
                Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
                _ => None,
            });
            if let Some(ip) = ip
                && !ip.is_unspecified()
            {
                let s = SocketAddr::new(ip, port);
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        out.truncate(super::wire::MAX_CANDIDATES - 1);
        out
    }

    async fn request(&self, peer: PeerId, bytes: Vec<u8>) -> Option<VoiceResponse> {
        let r = tokio::time::timeout(REQUEST_TIMEOUT, self.inner.net.request(peer, bytes)).await;
        match r {
            Ok(Ok(b)) => VoiceResponse::from_bytes(&b).ok(),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "voice request failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "voice request timed out");
                None
            }
        }
    }

    /// Tells every connected member outside the call that we are in it, and learns who is.
    async fn presence_round(&self) {
        let Some((peers, me)) = self.with_call(|c| {
            let members = c.room.member_peers.clone();
            // Members outside the call, and participants we have not heard on UDP lately
            // (no path yet, or a dead one): their answer says whether they are still here.
            let now = Instant::now();
            let outside: Vec<PeerId> = members
                .into_iter()
                .filter(|p| {
                    c.participants.get(p).is_none_or(|part| {
                        now.saturating_duration_since(part.last_heard) > UDP_QUIET
                    })
                })
                .collect();
            let hellos: Vec<(PeerId, Vec<u8>)> = outside
                .into_iter()
                .map(|p| {
                    (
                        p,
                        VoiceRequest::Announce(c.announce_for(p, false)).to_bytes(),
                    )
                })
                .collect();
            (hellos, (c.room.guild, c.room.channel))
        }) else {
            return;
        };
        let connected: std::collections::HashSet<PeerId> = self
            .inner
            .net
            .peers()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.peer)
            .collect();
        let asks = peers
            .into_iter()
            .filter(|(p, _)| connected.contains(p))
            .map(|(p, b)| async move { (p, self.request(p, b).await) });
        for (peer, resp) in join_all(asks).await {
            tracing::debug!(%peer, ?resp, "voice presence answer");
            match resp {
                Some(VoiceResponse::Announce(a))
                    if (a.guild, a.channel) == me
                        && self.on_announce(peer, a.clone(), false).is_ok() =>
                {
                    {
                        // It knows us only by a keyless hello: now hand it our key.
                        let full = self.with_call(|c| {
                            VoiceRequest::Announce(c.announce_for(peer, true)).to_bytes()
                        });
                        if let Some(b) = full {
                            let s = self.clone();
                            tokio::spawn(async move {
                                let _ = s.request(peer, b).await;
                            });
                        }
                    }
                }
                Some(VoiceResponse::NotInRoom) => self.on_leave(peer, me.0, me.1),
                _ => {}
            }
        }
    }

    /// Sends every participant our current announce (candidates, relay, flags; no new key).
    async fn reannounce(&self) {
        let Some(reqs) = self.with_call(|c| {
            let peers: Vec<PeerId> = c.participants.keys().copied().collect();
            peers
                .into_iter()
                .map(|p| {
                    (
                        p,
                        VoiceRequest::Announce(c.announce_for(p, false)).to_bytes(),
                    )
                })
                .collect::<Vec<_>>()
        }) else {
            return;
        };
        join_all(reqs.into_iter().map(|(p, b)| self.request(p, b))).await;
    }

    /// Takes an announce from `peer` (a request, or an answer to ours). Adds or updates the
    /// participant; returns whether it is new. `join` says the peer is joining (an inbound
    /// announce): that rotates our key.
    fn on_announce(&self, peer: PeerId, a: Announce, join: bool) -> Result<bool, String> {
        let rights = self
            .inner
            .guilds
            .voice_rights(&a.guild, &a.channel, &peer)
            .filter(|r| r.connect)
            .ok_or("not allowed to connect to that channel")?;
        self.note_presence(a.guild, a.channel, peer, true);
        let new = self
            .with_call(|c| -> Result<(bool, bool), String> {
                if !c.is_room(&a.guild, &a.channel) {
                    return Err("not in that room".into());
                }
                let new = !c.participants.contains_key(&peer);
                if new
                    && c.room.user_limit > 0
                    && c.participants.len() + 2 > usize::from(c.room.user_limit)
                {
                    return Err("the channel is full".into());
                }
                let setup = c.setup_for(peer, &a, rights.speak, rights.soundboard);
                c.engine.command(Command::Upsert(setup))?;
                if rights.speak
                    && let Some(k) = &a.key
                {
                    c.engine.command(Command::AddKey {
                        ssrc: a.ssrc,
                        kid: k.kid,
                        base: k.base.clone(),
                    })?;
                }
                let now = Instant::now();
                let part = c.participants.entry(peer).or_insert(Participant {
                    ssrc: a.ssrc,
                    theirs: a.clone(),
                    may_speak: rights.speak,
                    may_soundboard: rights.soundboard,
                    last_heard: now,
                    last_packets: 0,
                    last_accepted: 0,
                    last_rejected: 0,
                });
                let rejoined = part.ssrc != a.ssrc;
                if rejoined {
                    // A new stream (it rejoined, perhaps after a restart): forget the old one.
                    let old = part.ssrc;
                    part.ssrc = a.ssrc;
                    let _ = c.engine.command(Command::Remove(old));
                }
                let mut a = a;
                if a.key.is_none() && !rejoined {
                    // A keyless announce (presence) keeps the key we have.
                    a.key = part.theirs.key.clone();
                }
                part.theirs = a;
                part.may_speak = rights.speak;
                part.may_soundboard = rights.soundboard;
                part.last_heard = now;
                Ok((new || rejoined, c.settled))
            })
            .ok_or("not in a call")??;
        let (new, settled) = new;
        if new {
            tracing::info!(%peer, join, "voice participant added");
        }
        if new && join && settled {
            self.rotate("join");
        }
        Ok(new)
    }

    fn on_leave(&self, peer: PeerId, guild: GuildId, channel: ChannelId) {
        self.note_presence(guild, channel, peer, false);
        let removed = self.with_call(|c| {
            if !c.is_room(&guild, &channel) {
                return false;
            }
            match c.participants.remove(&peer) {
                Some(p) => {
                    let _ = c.engine.command(Command::Remove(p.ssrc));
                    true
                }
                None => false,
            }
        });
        if removed == Some(true) {
            tracing::info!(%peer, "voice participant left");
            self.rotate("leave");
        }
    }

    /// Starts a key rotation (or queues one if a rotation is running): a new sender key goes to
    /// every current participant; the engine switches once they took it or after
    /// [`ROTATE_WAIT`].
    fn rotate(&self, why: &str) {
        tracing::debug!(why, "voice key rotation");
        let start = self.with_call(|c| {
            if c.rotating {
                c.rotate_again = true;
                false
            } else {
                c.rotating = true;
                true
            }
        });
        if start != Some(true) {
            return;
        }
        let s = self.clone();
        tokio::spawn(async move {
            loop {
                let Some((kid, key, reqs)) = s.with_call(|c| {
                    c.rotate_again = false;
                    c.kid += 1;
                    c.key = Secret32::random(&mut OsRng);
                    let peers: Vec<PeerId> = c.participants.keys().copied().collect();
                    let reqs: Vec<(PeerId, Vec<u8>)> = peers
                        .into_iter()
                        .map(|p| {
                            (
                                p,
                                VoiceRequest::Announce(c.announce_for(p, true)).to_bytes(),
                            )
                        })
                        .collect();
                    (c.kid, c.key.clone(), reqs)
                }) else {
                    return;
                };
                // One retry for a request that failed (a connection replaced mid-request);
                // a participant that still misses the key asks for it (check_participants).
                let _ = tokio::time::timeout(
                    ROTATE_WAIT,
                    join_all(reqs.into_iter().map(|(p, b)| {
                        let s = &s;
                        async move {
                            if s.request(p, b.clone()).await.is_none() {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                let _ = s.request(p, b).await;
                            }
                        }
                    })),
                )
                .await;
                let again = s.with_call(|c| {
                    let _ = c.engine.command(Command::Rekey(kid, key.clone()));
                    if !c.rotate_again {
                        c.rotating = false;
                    }
                    c.rotate_again
                });
                if again != Some(true) {
                    return;
                }
            }
        });
    }

    /// Answers one voice request.
    fn answer(&self, peer: PeerId, data: &[u8]) -> VoiceResponse {
        let req = match VoiceRequest::from_bytes(data) {
            Ok(r) => r,
            Err(e) => return VoiceResponse::Refused(format!("malformed voice request: {e}")),
        };
        match req {
            VoiceRequest::Announce(a) => {
                let (guild, channel) = (a.guild, a.channel);
                let in_room = self.with_call(|c| c.is_room(&guild, &channel)) == Some(true);
                if !in_room {
                    let ok = self
                        .inner
                        .guilds
                        .voice_rights(&guild, &channel, &peer)
                        .is_some_and(|r| r.connect);
                    if !ok {
                        return VoiceResponse::Refused("not allowed to connect".into());
                    }
                    self.note_presence(guild, channel, peer, true);
                    return VoiceResponse::NotInRoom;
                }
                match self.on_announce(peer, a, true) {
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "voice announce refused");
                        VoiceResponse::Refused(e)
                    }
                    Ok(_) => self
                        .with_call(|c| VoiceResponse::Announce(c.announce_for(peer, true)))
                        .unwrap_or(VoiceResponse::NotInRoom),
                }
            }
            VoiceRequest::Leave { guild, channel } => {
                self.on_leave(peer, guild, channel);
                VoiceResponse::Ok
            }
            VoiceRequest::NeedClip {
                guild,
                channel,
                event,
            } => {
                let done = self.with_call(|c| {
                    if !c.is_room(&guild, &channel) || !c.participants.contains_key(&peer) {
                        return Err("not a participant of this call".to_string());
                    }
                    c.engine.command(Command::MixInStream(event))
                });
                match done {
                    Some(Ok(())) => VoiceResponse::Ok,
                    Some(Err(e)) => VoiceResponse::Refused(e),
                    None => VoiceResponse::NotInRoom,
                }
            }
        }
    }

    /// Sends a `NeedClip` to the player of each event whose clip the engine lacked.
    async fn run_clip_needs(self, mut rx: tokio::sync::mpsc::Receiver<(u32, ClipEvent)>) {
        while let Some((ssrc, event)) = rx.recv().await {
            let Some((peer, req)) = self
                .with_call(|c| {
                    let peer = c
                        .participants
                        .iter()
                        .find(|(_, p)| p.ssrc == ssrc)
                        .map(|(peer, _)| *peer)?;
                    let req = VoiceRequest::NeedClip {
                        guild: c.room.guild,
                        channel: c.room.channel,
                        event: event.id,
                    };
                    Some((peer, req.to_bytes()))
                })
                .flatten()
            else {
                continue;
            };
            tracing::debug!(%peer, "soundboard clip not cached; asking its player to mix it");
            let s = self.clone();
            tokio::spawn(async move { s.request(peer, req).await });
        }
    }

    /// Adds a decoded clip (48 kHz mono, as `sound::decode_asset` gives) to the clip cache,
    /// under its asset root. The guild layer calls this once a library asset is downloaded,
    /// so that playing it needs no download. The cache keeps the newest
    /// [`super::soundboard::MAX_CACHED_CLIPS`].
    pub fn cache_clip(&self, root: [u8; 32], pcm: Arc<[i16]>) {
        if let Ok(mut c) = self.inner.clips.lock() {
            c.insert(root, pcm);
        }
    }

    /// Forgets a cached clip (its sound was deleted from the library).
    pub fn uncache_clip(&self, root: &[u8; 32]) {
        if let Ok(mut c) = self.inner.clips.lock() {
            c.remove(root);
        }
    }

    /// Whether a clip is cached.
    pub fn has_clip(&self, root: &[u8; 32]) -> bool {
        self.inner
            .clips
            .lock()
            .map(|c| c.get(root).is_some())
            .unwrap_or(false)
    }

    /// Plays a cached clip in the current call at `volume` percent (the sound's own volume):
    /// every participant hears it in time with our voice. Needs Speak and Use Soundboard in
    /// the call's channel.
    pub fn play_clip(&self, root: [u8; 32], volume: u8) -> VoiceResult<Value> {
        if !self.has_clip(&root) {
            return Err("that sound is not downloaded yet".into());
        }
        let id = OsRng.next_u32();
        let (guild, channel) = self
            .with_call(|c| (c.room.guild, c.room.channel))
            .ok_or("not in a call")?;
        // The rights as they are now (a role change since the join counts).
        let room = self
            .inner
            .guilds
            .voice_room(&hex::encode(guild.0), &channel.0.to_string())
            .map_err(err)?;
        if !room.may_use_soundboard {
            return Err(format!(
                "you may not use the soundboard in #{} (needs Speak and Use Soundboard)",
                room.name
            ));
        }
        self.with_call(|c| {
            c.engine.command(Command::PlayClip {
                id,
                root,
                volume: volume.min(100),
            })
        })
        .ok_or("not in a call")??;
        Ok(json!({"played": hex::encode(root), "event": id}))
    }

    /// Volume of every soundboard clip this node plays to its user, 0 to 200 percent.
    pub fn set_soundboard_volume(&self, percent: u32) -> VoiceResult<Value> {
        let gain = percent.min(200) as f32 / 100.0;
        if let Ok(mut g) = self.inner.soundboard_gain.lock() {
            *g = gain;
        }
        if let Some(r) = self.with_call(|c| c.engine.command(Command::SetSoundboardGain(gain))) {
            r?;
        }
        Ok(json!({"soundboard_volume": percent.min(200)}))
    }

    async fn run_events(self) {
        let mut events = self.inner.net.events();
        while let Some(e) = events.next().await {
            match e {
                Event::DirectRequest { peer, id, data } if data.first() == Some(&VOICE_VERSION) => {
                    let resp = self.answer(peer, &data).to_bytes();
                    let _ = self.inner.net.respond(id, resp).await;
                }
                Event::PeerConnected(peer, _) => {
                    let member = self
                        .with_call(|c| c.room.member_peers.contains(&peer))
                        .unwrap_or(false);
                    if member {
                        let s = self.clone();
                        tokio::spawn(async move { s.presence_round().await });
                    }
                }
                _ => {}
            }
        }
    }

    async fn run_ticks(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_presence = Instant::now();
        loop {
            tick.tick().await;
            self.check_participants();
            self.allocate().await;
            self.follow_reflexive().await;
            if last_presence.elapsed() >= PRESENCE_EVERY {
                last_presence = Instant::now();
                self.presence_round().await;
            }
        }
    }

    /// Drops participants that went silent or lost their rights; rotates if any did.
    fn check_participants(&self) {
        let guilds = self.inner.guilds.clone();
        let changed = self.with_call(|c| {
            let stats = c.engine.stats();
            let now = Instant::now();
            let mut gone = Vec::new();
            let mut upserts = Vec::new();
            let mut ask_key = Vec::new();
            for (peer, part) in c.participants.iter_mut() {
                let (packets, accepted, rejected) = stats
                    .remotes
                    .iter()
                    .find(|r| r.ssrc == part.ssrc)
                    .map(|r| (r.heard, r.accepted, r.rejected))
                    .unwrap_or_default();
                if packets != part.last_packets {
                    part.last_packets = packets;
                    part.last_heard = now;
                }
                // Frames we cannot decrypt and none we can: we missed its key (a lost request
                // during a rotation). Asking again gets the current one.
                if rejected > part.last_rejected && accepted == part.last_accepted {
                    ask_key.push(*peer);
                }
                part.last_rejected = rejected;
                part.last_accepted = accepted;
                let rights = guilds.voice_rights(&c.room.guild, &c.room.channel, peer);
                let silent = now.saturating_duration_since(part.last_heard) > SILENT_TIMEOUT;
                if silent || !rights.is_some_and(|r| r.connect) {
                    gone.push(*peer);
                } else if let Some(r) = rights
                    && (r.speak != part.may_speak || r.soundboard != part.may_soundboard)
                {
                    part.may_speak = r.speak;
                    part.may_soundboard = r.soundboard;
                    upserts.push((*peer, part.theirs.clone(), r.speak, r.soundboard));
                }
            }
            for (peer, a, speak, soundboard) in upserts {
                let setup = c.setup_for(peer, &a, speak, soundboard);
                let _ = c.engine.command(Command::Upsert(setup));
                if speak && let Some(k) = &a.key {
                    let _ = c.engine.command(Command::AddKey {
                        ssrc: a.ssrc,
                        kid: k.kid,
                        base: k.base.clone(),
                    });
                }
            }
            for p in &gone {
                if let Some(part) = c.participants.remove(p) {
                    let _ = c.engine.command(Command::Remove(part.ssrc));
                }
            }
            let asks: Vec<(PeerId, Vec<u8>)> = ask_key
                .into_iter()
                .map(|p| {
                    (
                        p,
                        VoiceRequest::Announce(c.announce_for(p, false)).to_bytes(),
                    )
                })
                .collect();
            let me = guilds.voice_rights(&c.room.guild, &c.room.channel, &self.inner.net.peer_id());
            // Our own Speak right changed (server mute, a role, an overwrite): stop or start
            // sending; others enforce it on their side anyway.
            let may_speak = me.is_some_and(|r| r.speak);
            let may_speak_again = may_speak && !c.room.may_speak;
            if may_speak != c.room.may_speak {
                c.room.may_speak = may_speak;
                c.room.may_use_soundboard = me.is_some_and(|r| r.soundboard);
                let _ = c.engine.command(Command::SetMuted(c.muted || !may_speak));
            }
            (
                !gone.is_empty() || may_speak_again,
                asks,
                me.is_some_and(|r| r.connect),
                (c.room.guild, c.room.channel),
            )
        });
        let Some((changed, asks, still_allowed, room)) = changed else {
            return;
        };
        if !still_allowed {
            // Kicked, banned, or Connect taken away: the call ends here.
            tracing::info!("no longer allowed in the voice channel; leaving");
            let s = self.clone();
            tokio::spawn(async move {
                let _ = s.leave().await;
            });
            return;
        }
        if changed {
            self.rotate("gone");
        }
        for (peer, req) in asks {
            let s = self.clone();
            tokio::spawn(async move {
                if let Some(VoiceResponse::Announce(a)) = s.request(peer, req).await
                    && (a.guild, a.channel) == room
                {
                    let _ = s.on_announce(peer, a, false);
                }
            });
        }
    }

    /// Takes a media-relay allocation on a reserved relay if the call has none.
    async fn allocate(&self) {
        let Some((room, has)) = self.with_call(|c| (c.room.room_id, c.alloc.is_some())) else {
            return;
        };
        if has {
            return;
        }
        let relays = self.inner.net.relays().await.unwrap_or_default();
        for r in relays
            .iter()
            .filter(|r| matches!(r.state, crate::net::RelayState::Reserved))
        {
            let Some(ip) = r.addrs.iter().find_map(|a| {
                a.iter().find_map(|p| match p {
                    Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
                    Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
                    _ => None,
                })
            }) else {
                continue;
            };
            let resp = tokio::time::timeout(
                REQUEST_TIMEOUT,
                self.inner
                    .net
                    .media(r.peer, MediaRequest::Allocate { room }),
            )
            .await;
            if let Ok(Ok(MediaResponse::Allocated {
                token,
                alloc_id,
                udp_port,
                ..
            })) = resp
            {
                let own = OwnAllocation {
                    relay: r.peer.to_bytes(),
                    addr: SocketAddr::new(ip, udp_port),
                    alloc_id,
                    token,
                };
                let stored = self.with_call(|c| {
                    let _ = c.engine.command(Command::SetAllocation(Some(own.clone())));
                    c.alloc = Some((r.peer, own, Instant::now()));
                });
                if stored.is_some() {
                    self.reannounce().await;
                }
                return;
            }
        }
    }

    /// Adds the media relay's view of our address to the candidates once it is known.
    async fn follow_reflexive(&self) {
        let changed = self.with_call(|c| {
            let Some(r) = c.engine.stats().reflexive else {
                return false;
            };
            let Ok(addr) = r.parse::<SocketAddr>() else {
                return false;
            };
            if c.candidates.contains(&addr) || !addr.is_ipv4() {
                return false;
            }
            c.candidates.push(addr);
            c.candidates.truncate(super::wire::MAX_CANDIDATES);
            true
        });
        if changed == Some(true) {
            self.reannounce().await;
        }
    }
}
