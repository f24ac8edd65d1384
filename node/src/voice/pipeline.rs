//! Sender and receiver of one voice stream: PCM -> Opus -> SFrame bytes, and back.
//!
//! # Wire
//!
//! A voice packet is exactly one `securecomm_noise::frame` frame whose plaintext is one Opus
//! packet of 20 ms: `SFrame header (KID, CTR) || ChaCha20-Poly1305(opus) || tag`. There is no
//! other header: the SFrame counter is the stream's sequence number (the frame module starts
//! every key's counter at 0 and never reuses one), so the crypto overhead is the whole
//! overhead: 1 + 2 (KID) + 0..3 (CTR) + 16 = at most 22 bytes for calls under 93 hours per
//! epoch. DTX frames (1-3 bytes of Opus in silence) are still sent, which keeps the sequence
//! contiguous for the jitter buffer at about 1 kbit/s of cost.
//!
//! A frame that carries a soundboard play event (see [`super::soundboard`]) has the plaintext
//! `event (39 bytes) || opus` and the packet type `MEDIA_EXT` as associated data
//! ([`VoiceSender::send_event_into`], [`VoiceReceiver::receive_typed`]); plain frames keep empty
//! associated data, so neither kind decrypts as the other.
//!
//! # Redundancy (RED)
//!
//! Opus' in-band FEC rebuilds a lost frame from a low-bitrate copy in the next packet, and the
//! harness measured its limit: PESQ-WB 3.9 at 10% random loss, 2.9 at 20%, 2.7 at 10% bursty
//! (mean burst 60 ms). So, as WebRTC's `opus/red` does (RFC 2198's idea), a sender whose
//! receivers report loss also carries copies of its own earlier Opus packets, at full quality:
//!
//! ```text
//! MEDIA_RED frame plaintext = n u8 (1..=2) | n x (distance u8, length u16) | copies | opus
//! ```
//!
//! in a frame whose associated data is the packet type `MEDIA_RED` (so it never decrypts as a
//! plain frame). Distance `d` is a copy of frame `seq - d`. The sender picks the distances from
//! the worst receiver report ([`VoiceSender::receiver_report`]), with hysteresis on each
//! threshold; more or farther copies apply at once, fewer or nearer ones after three reports:
//!
//! | reported                                  | copies      | FEC          | wire  | waits  |
//! |-------------------------------------------|-------------|--------------|-------|--------|
//! | under 2% loss (off again under 1%)        | none        | to the loss  | 1x    | 20 ms* |
//! | isolated losses, under 14% (10%)          | 1 back      | to the loss  | 2x    | 20 ms  |
//! | isolated losses, 14% or more              | 1 and 2 back| to the loss  | 3x    | 40 ms  |
//! | bursts (mean run of 2 frames, 1.5 to end) | 3 and 6 back| off          | 3x    | 120 ms |
//!
//! (*the FEC lookahead, only while loss is seen.) "Waits" is what the receiver's jitter buffer
//! adds for the farthest copy while copies come. A burst takes a frame's neighbours with it, so
//! copies in bursts sit far back, and FEC's bits in the next packet would mostly be lost with
//! it. Measured in the quality harness (PESQ-WB, 2 seeds; see `benches/voice_quality.rs`): at
//! 20% random loss one copy gave 3.1 and two 3.9; at 10% random loss both gave 4.1, but a
//! second copy from 10% on had the 10% cell switching between them (each switch a stretch:
//! 3.93), hence 14%. At 10% bursty loss copies 2 and 4 back gave 3.2, 3 and 6 back 3.5 (as
//! good as 2, 4 and 6 back, for one copy less), 1 and 3 back 3.3. FEC: off in bursts gave
//! 3.51 against 3.41 with it; on for random loss 4.07 / 3.90 against 4.00 / 3.82 without.
//! Waiting for two reports in both directions, copies came 3.5 s into the 10% bursty run and
//! moved back 6.3 s in (3.39); applying more copies at once and fewer after three reports,
//! with the receiver's early-loss and burst estimates of `jitter`, gives 3.65 (3 seeds).
//! The price is bandwidth and, in bursts, delay: only while loss is reported. A sender whose
//! loss comes from congestion makes it worse with copies; there is no bandwidth estimation yet
//! to tell the two apart. Copies never make a packet's plaintext exceed [`RED_BUDGET`] bytes
//! (the farthest is left out first).
//!
//! # Epochs
//!
//! A new epoch (join or leave) gives the sender a new [`FrameSender`] (new KID, counter from
//! 0): [`VoiceSender::rekey`]. The receiver holds the keys it was given in its
//! [`FrameReceiver`]; a frame under any other key is rejected, so a member who left and does
//! not get the next epoch secret cannot decrypt what follows. When a new KID appears the
//! receiver continues the sequence after the highest one seen, so playout goes on without a
//! reset.
//!
//! # Untrusted input
//!
//! [`VoiceReceiver::receive`] takes bytes from the network. It returns an error (and changes
//! nothing) for anything that is not an authentic, fresh frame of a known key carrying a
//! well-formed 20 ms Opus packet: truncated or altered bytes, unknown keys, replays, frames
//! older than the replay window, oversized or wrong-duration payloads. It never panics.

use securecomm_noise::frame::{FrameError, FrameReceiver, FrameSender, MAX_HEADER_LEN, NT};
use thiserror::Error;

use super::codec::{CodecConfig, CodecError, Decoded, MAX_PACKET, VoiceDecoder, VoiceEncoder};
use super::jitter::{Action, JitterBuffer, JitterConfig};
use super::soundboard::{ClipEvent, split_ext};
use super::wire::{MEDIA, MEDIA_EXT, MEDIA_RED};
use super::{FRAME_SAMPLES, Frame, HALF_SAMPLES, Half, SILENCE};
use securecomm_noise::codec::Encode;

/// Longest voice packet on the wire: largest header, largest Opus packet, tag.
pub const MAX_VOICE_PACKET: usize = MAX_HEADER_LEN + MAX_PACKET + NT;
/// Samples cross-faded when the jitter buffer skips a frame (2.5 ms).
const CROSSFADE: usize = 120;
/// KIDs whose sequence offset the receiver remembers (current epoch and a few before).
const MAX_STREAM_KEYS: usize = 4;
/// Largest plaintext of a frame with redundant copies (keeps the UDP datagram, with the relay's
/// framing, well under a 1,280-byte path MTU).
pub const RED_BUDGET: usize = 1_100;
/// Longest packet with redundant copies on the wire.
pub const MAX_RED_PACKET: usize = MAX_HEADER_LEN + RED_BUDGET + NT;
/// Most copies in one packet.
const MAX_COPIES: usize = 2;
/// Farthest copy (frames back).
const MAX_DISTANCE: u8 = 6;
/// Reported loss at which copies start, and below which they stop.
const RED_ON_LOSS: f32 = 0.02;
const RED_OFF_LOSS: f32 = 0.01;
/// Reported mean burst (frames) at which copies move to 3 and 6 frames back, and below which
/// they return to the previous frame.
const BURSTY_ON: f32 = 2.0;
const BURSTY_OFF: f32 = 1.5;
/// Reported random loss at which a second copy (two frames back) is added, and below which it
/// is dropped again.
const HEAVY_ON_LOSS: f32 = 0.14;
const HEAVY_OFF_LOSS: f32 = 0.10;
/// Reports in a row that must ask for fewer or nearer copies before the sender drops them
/// (more or farther copies apply at the first report that asks).
const WEAKER_REPORTS: u8 = 3;

/// Why a packet was rejected or a frame could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VoiceError {
    /// Frame decryption failed: malformed, unknown key, replayed, too old or forged.
    #[error("voice frame rejected: {0}")]
    Frame(#[from] FrameError),
    /// Encoding or decoding failed, or the payload is not a 20 ms Opus packet.
    #[error("voice codec: {0}")]
    Codec(#[from] CodecError),
    /// The packet is longer than any voice packet can be.
    #[error("voice packet too long: at most {MAX_VOICE_PACKET} bytes, got {0}")]
    TooLong(usize),
    /// A `MEDIA_EXT` frame whose play event does not parse.
    #[error("malformed soundboard event in a voice frame")]
    Event,
    /// A `MEDIA_RED` frame whose copies do not parse.
    #[error("malformed redundant copies in a voice frame")]
    Redundancy,
}

/// Counters of a sender.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Frames sent.
    pub frames: u64,
    /// Opus bytes sent.
    pub opus_bytes: u64,
    /// Bytes on the wire (Opus plus crypto overhead).
    pub wire_bytes: u64,
    /// Largest crypto overhead of one frame (header and tag), bytes.
    pub max_overhead: usize,
    /// Frames sent with redundant copies.
    pub red_frames: u64,
    /// Bytes of redundant copies sent (with their framing).
    pub red_bytes: u64,
}

/// Encodes and encrypts one outgoing voice stream.
#[derive(Debug)]
pub struct VoiceSender {
    encoder: VoiceEncoder,
    frames: FrameSender,
    opus: Vec<u8>,
    /// The last [`MAX_DISTANCE`] Opus packets sent, newest last (copies come from here).
    history: std::collections::VecDeque<Vec<u8>>,
    /// Distances of the copies each packet carries now (empty: none).
    red: Vec<u8>,
    /// Whether copies may be sent at all.
    red_allowed: bool,
    bursty: bool,
    /// Reports in a row that asked for fewer or nearer copies than are sent now.
    weaker_reports: u8,
    plain: Vec<u8>,
    stats: SenderStats,
}

impl VoiceSender {
    /// A sender with `config`, encrypting with `frames` (the current epoch's key).
    pub fn new(config: CodecConfig, frames: FrameSender) -> Result<Self, VoiceError> {
        Ok(Self {
            encoder: VoiceEncoder::new(config)?,
            frames,
            opus: Vec::with_capacity(MAX_PACKET),
            history: std::collections::VecDeque::with_capacity(usize::from(MAX_DISTANCE)),
            red: Vec::with_capacity(MAX_COPIES),
            red_allowed: true,
            bursty: false,
            weaker_reports: 0,
            plain: Vec::with_capacity(RED_BUDGET),
            stats: SenderStats::default(),
        })
    }

    /// Encodes and encrypts one frame into `out` (cleared first). Returns the UDP packet type
    /// it must travel as: `MEDIA`, or `MEDIA_RED` when it carries redundant copies.
    pub fn send_into(&mut self, pcm: &Frame, out: &mut Vec<u8>) -> Result<u8, VoiceError> {
        self.encoder.encode(pcm, &mut self.opus)?;
        let kind = if self.red_plaintext() {
            self.frames.encrypt_into(&self.plain, &[MEDIA_RED], out)?;
            self.stats.red_frames += 1;
            self.stats.red_bytes += (self.plain.len() - self.opus.len()) as u64;
            MEDIA_RED
        } else {
            self.frames.encrypt_into(&self.opus, b"", out)?;
            self.stats.max_overhead = self
                .stats
                .max_overhead
                .max(out.len().saturating_sub(self.opus.len()));
            MEDIA
        };
        self.stats.frames += 1;
        self.stats.opus_bytes += self.opus.len() as u64;
        self.stats.wire_bytes += out.len() as u64;
        self.remember();
        Ok(kind)
    }

    /// Keeps the packet just sent for later copies.
    fn remember(&mut self) {
        if self.history.len() == usize::from(MAX_DISTANCE)
            && let Some(mut old) = self.history.pop_front()
        {
            old.clear();
            old.extend_from_slice(&self.opus);
            self.history.push_back(old);
            return;
        }
        self.history.push_back(self.opus.clone());
    }

    /// Builds the `MEDIA_RED` plaintext for the packet in `self.opus` into `self.plain`, if
    /// copies are on and at least one fits; returns whether it did.
    fn red_plaintext(&mut self) -> bool {
        // A fixed array: this runs for every frame sent.
        let mut copies: [(u8, &[u8]); MAX_COPIES] = [(0, &[]); MAX_COPIES];
        let mut n = 0;
        let mut size = 1 + self.opus.len();
        for &d in self.red.iter().take(MAX_COPIES) {
            let Some(i) = self.history.len().checked_sub(usize::from(d)) else {
                continue;
            };
            let Some(copy) = self.history.get(i) else {
                continue;
            };
            if size + 3 + copy.len() > RED_BUDGET {
                break;
            }
            size += 3 + copy.len();
            copies[n] = (d, copy);
            n += 1;
        }
        if n == 0 {
            return false;
        }
        let copies = &copies[..n];
        self.plain.clear();
        self.plain.push(n as u8);
        for (d, c) in copies {
            self.plain.push(*d);
            self.plain
                .extend_from_slice(&(c.len() as u16).to_be_bytes());
        }
        for (_, c) in copies {
            self.plain.extend_from_slice(c);
        }
        self.plain.extend_from_slice(&self.opus);
        true
    }

    /// Encodes and encrypts one frame carrying a play event (a `MEDIA_EXT` packet's frame).
    pub fn send_event_into(
        &mut self,
        pcm: &Frame,
        event: &ClipEvent,
        out: &mut Vec<u8>,
    ) -> Result<(), VoiceError> {
        self.encoder.encode(pcm, &mut self.opus)?;
        let mut plain = event.to_bytes();
        plain.extend_from_slice(&self.opus);
        self.frames.encrypt_into(&plain, &[MEDIA_EXT], out)?;
        self.stats.frames += 1;
        self.stats.opus_bytes += self.opus.len() as u64;
        self.stats.wire_bytes += out.len() as u64;
        // Its audio still goes into later packets' copies (the event does not).
        self.remember();
        Ok(())
    }

    /// Encodes and encrypts one frame; returns it with its UDP packet type.
    pub fn send_typed(&mut self, pcm: &Frame) -> Result<(u8, Vec<u8>), VoiceError> {
        let mut out = Vec::with_capacity(MAX_RED_PACKET);
        let kind = self.send_into(pcm, &mut out)?;
        Ok((kind, out))
    }

    /// Encodes and encrypts one frame (with redundancy off, always a `MEDIA` frame).
    pub fn send(&mut self, pcm: &Frame) -> Result<Vec<u8>, VoiceError> {
        self.send_typed(pcm).map(|(_, p)| p)
    }

    /// Switches to the next epoch's key. Copies start again with the new key's packets (a
    /// receiver places a new key's frames after the highest it saw, which need not be where
    /// the old key's last frames were).
    pub fn rekey(&mut self, frames: FrameSender) {
        self.frames = frames;
        self.history.clear();
    }

    /// Applies the worst receiver report (one a second): `loss` (fraction 0.0..=1.0) and the
    /// mean length of its runs of lost frames (`burst`, 1.0 for isolated losses). Picks the
    /// redundant copies (see the module docs) and tunes FEC. More or farther copies apply at
    /// once: every second without them is loss heard. Fewer or nearer copies wait until
    /// [`WEAKER_REPORTS`] reports in a row ask for them: loss comes and goes (bursty loss
    /// leaves seconds without any), and each change moves every receiver's playout (a stretch
    /// or a skip).
    pub fn receiver_report(&mut self, loss: f32, burst: f32) -> Result<(), VoiceError> {
        let loss = if loss.is_nan() { 0.0 } else { loss };
        let on = self.red_allowed
            && if self.red.is_empty() {
                loss >= RED_ON_LOSS
            } else {
                loss >= RED_OFF_LOSS
            };
        self.bursty = if self.bursty {
            burst >= BURSTY_OFF
        } else {
            burst >= BURSTY_ON
        };
        let heavy = if self.red.as_slice() == [1, 2] {
            loss >= HEAVY_OFF_LOSS
        } else {
            loss >= HEAVY_ON_LOSS
        };
        let wanted: &[u8] = match (on, self.bursty, heavy) {
            (false, _, _) => &[],
            (true, true, _) => &[3, MAX_DISTANCE],
            (true, false, true) => &[1, 2],
            (true, false, false) => &[1],
        };
        let current = self.red.as_slice();
        let stronger = wanted.len() > current.len() || wanted.last() > current.last();
        if wanted == current {
            self.weaker_reports = 0;
        } else if stronger {
            self.weaker_reports = 0;
            self.red.clear();
            self.red.extend_from_slice(wanted);
        } else {
            self.weaker_reports += 1;
            if self.weaker_reports >= WEAKER_REPORTS {
                self.weaker_reports = 0;
                self.red.clear();
                self.red.extend_from_slice(wanted);
            }
        }
        // In bursts the next packet is mostly lost too, so FEC's bits in it would be wasted.
        let in_bursts = self.red.first() == Some(&3);
        let fec = if in_bursts { 0.0 } else { loss };
        Ok(self.encoder.set_measured_loss(fec)?)
    }

    /// Allows or forbids redundant copies (on by default; off, loss reports tune FEC only).
    pub fn allow_redundancy(&mut self, allowed: bool) {
        self.red_allowed = allowed;
        if !allowed {
            self.red.clear();
            self.weaker_reports = 0;
        }
    }

    /// Distances of the copies each packet carries now (frames back; empty: none).
    pub fn redundancy(&self) -> &[u8] {
        &self.red
    }

    /// The encoder's settings (expected loss, bitrate).
    pub fn encoder(&self) -> &VoiceEncoder {
        &self.encoder
    }

    /// The encoder (bitrate changes, lookahead).
    pub fn encoder_mut(&mut self) -> &mut VoiceEncoder {
        &mut self.encoder
    }

    /// Counters so far.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }
}

/// What one played frame was made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Played {
    /// Nothing to play yet: silence.
    Silence,
    /// Decoded from its packet.
    Packet,
    /// Decoded from a redundant copy in a later packet.
    Redundant,
    /// Rebuilt from the next packet's FEC.
    Fec,
    /// Rebuilt from a later packet's deep redundancy (DRED).
    Dred,
    /// Concealed (lost frame without FEC, or a stretch to grow the buffer).
    Concealed,
}

/// How a receiver fills frames that were not there in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concealment {
    /// Rebuild a lost frame from the next packet's in-band FEC when it is there.
    pub fec: bool,
    /// libopus' neural PLC instead of the classic one.
    pub deep_plc: bool,
    /// Rebuild lost frames from the deep redundancy (DRED) of a later packet (needs
    /// `deep_plc`; off by default, see `codec`'s module docs).
    pub dred: bool,
}

impl Default for Concealment {
    fn default() -> Self {
        Self {
            fec: true,
            deep_plc: true,
            dred: false,
        }
    }
}

impl Concealment {
    /// Classic PLC only, no FEC (the harness's baseline).
    pub fn plain() -> Self {
        Self {
            fec: false,
            deep_plc: false,
            dred: false,
        }
    }
}

/// Counters of a receiver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Packets accepted into the jitter buffer.
    pub accepted: u64,
    /// Packets rejected by [`VoiceReceiver::receive`].
    pub rejected: u64,
    /// Frames decoded from their packet.
    pub decoded: u64,
    /// Frames decoded from a redundant copy.
    pub redundant: u64,
    /// Frames rebuilt from FEC.
    pub fec: u64,
    /// Frames rebuilt from DRED.
    pub dred: u64,
    /// Frames concealed.
    pub concealed: u64,
}

/// Decrypts, buffers and decodes one incoming voice stream.
#[derive(Debug)]
pub struct VoiceReceiver {
    frames: FrameReceiver,
    jitter: JitterBuffer,
    decoder: VoiceDecoder,
    use_fec: bool,
    /// `(KID, offset)`: sequence number = counter + offset.
    offsets: Vec<(u64, u64)>,
    highest_seq: Option<u64>,
    /// Sequence number of the frame the last [`VoiceReceiver::play`] played or concealed.
    last_played: Option<u64>,
    /// Whether the last frame played was a stretch (concealment inserted to grow the buffer).
    stretched: bool,
    plaintext: Vec<u8>,
    skipped: Frame,
    stats: ReceiverStats,
}

impl VoiceReceiver {
    /// A receiver decrypting with `frames`, filling gaps as `concealment` says.
    pub fn new(
        frames: FrameReceiver,
        jitter: JitterConfig,
        concealment: Concealment,
    ) -> Result<Self, VoiceError> {
        Ok(Self {
            frames,
            jitter: JitterBuffer::new(jitter),
            decoder: {
                let mut d = VoiceDecoder::with_deep_plc(concealment.deep_plc)?;
                if concealment.dred && concealment.deep_plc {
                    d.enable_dred()?;
                }
                d
            },
            use_fec: concealment.fec,
            offsets: Vec::with_capacity(MAX_STREAM_KEYS),
            highest_seq: None,
            last_played: None,
            stretched: false,
            plaintext: Vec::with_capacity(MAX_PACKET),
            skipped: [0; FRAME_SAMPLES],
            stats: ReceiverStats::default(),
        })
    }

    /// The frame keys (add the next epoch's, drop the old ones).
    pub fn keys_mut(&mut self) -> &mut FrameReceiver {
        &mut self.frames
    }

    /// The jitter buffer (statistics, target).
    pub fn jitter(&self) -> &JitterBuffer {
        &self.jitter
    }

    /// Counters so far.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// The loss to report to the sender (fraction of recent frames missing at playout).
    pub fn loss_report(&self) -> f32 {
        self.jitter.effective_loss()
    }

    /// Takes one packet from the network, received at `now_us`.
    pub fn receive(&mut self, packet: &[u8], now_us: u64) -> Result<(), VoiceError> {
        let result = self.accept(packet, now_us);
        if result.is_err() {
            self.stats.rejected += 1;
        }
        result
    }

    /// Takes one packet's frame as its UDP packet type `kind` says: `MEDIA_EXT` (it carries a
    /// play event: returned with the sequence number of its frame), `MEDIA_RED` (it carries
    /// redundant copies), anything else a plain frame.
    pub fn receive_typed(
        &mut self,
        packet: &[u8],
        now_us: u64,
        kind: u8,
    ) -> Result<Option<(ClipEvent, u64)>, VoiceError> {
        let result = match kind {
            MEDIA_EXT => self.accept_ext(packet, now_us).map(Some),
            MEDIA_RED => self.accept_red(packet, now_us).map(|()| None),
            _ => self.accept(packet, now_us).map(|()| None),
        };
        if result.is_err() {
            self.stats.rejected += 1;
        }
        result
    }

    fn accept_red(&mut self, packet: &[u8], now_us: u64) -> Result<(), VoiceError> {
        if packet.len() > MAX_RED_PACKET {
            return Err(VoiceError::TooLong(packet.len()));
        }
        let mut plain = std::mem::take(&mut self.plaintext);
        let result = self
            .frames
            .decrypt_into(packet, &[MEDIA_RED], &mut plain)
            .map_err(VoiceError::from)
            .and_then(|header| {
                let (copies, opus) = split_red(&plain)?;
                VoiceDecoder::check_packet(opus)?;
                for (_, c) in &copies {
                    VoiceDecoder::check_packet(c)?;
                }
                let seq = self.sequence(header.kid, header.ctr);
                self.highest_seq = Some(self.highest_seq.map_or(seq, |h| h.max(seq)));
                self.jitter.push(seq, opus.to_vec(), now_us);
                let mut farthest = 0;
                for (d, c) in copies {
                    if let Some(at) = seq.checked_sub(u64::from(d)) {
                        self.jitter.push_redundant(at, c.to_vec(), now_us);
                    }
                    farthest = farthest.max(u64::from(d));
                }
                self.jitter.note_redundancy(seq, farthest);
                self.stats.accepted += 1;
                Ok(())
            });
        self.plaintext = plain;
        result
    }

    fn accept_ext(&mut self, packet: &[u8], now_us: u64) -> Result<(ClipEvent, u64), VoiceError> {
        if packet.len() > MAX_VOICE_PACKET + super::soundboard::EVENT_LEN {
            return Err(VoiceError::TooLong(packet.len()));
        }
        let mut plain = Vec::with_capacity(packet.len());
        let header = self.frames.decrypt_into(packet, &[MEDIA_EXT], &mut plain)?;
        let (event, opus) = split_ext(&plain).map_err(|_| VoiceError::Event)?;
        VoiceDecoder::check_packet(opus)?;
        let seq = self.sequence(header.kid, header.ctr);
        self.highest_seq = Some(self.highest_seq.map_or(seq, |h| h.max(seq)));
        self.jitter.push(seq, opus.to_vec(), now_us);
        self.stats.accepted += 1;
        Ok((event, seq))
    }

    /// The sequence number of the frame the last [`VoiceReceiver::play`] played or concealed
    /// (`None` before the first, and after a tick that played nothing of the stream).
    pub fn last_played(&self) -> Option<u64> {
        self.last_played
    }

    fn accept(&mut self, packet: &[u8], now_us: u64) -> Result<(), VoiceError> {
        if packet.len() > MAX_VOICE_PACKET {
            return Err(VoiceError::TooLong(packet.len()));
        }
        let header = self.frames.decrypt_into(packet, b"", &mut self.plaintext)?;
        VoiceDecoder::check_packet(&self.plaintext)?;
        let seq = self.sequence(header.kid, header.ctr);
        self.highest_seq = Some(self.highest_seq.map_or(seq, |h| h.max(seq)));
        self.jitter.push(seq, self.plaintext.clone(), now_us);
        self.stats.accepted += 1;
        Ok(())
    }

    /// The stream sequence number of counter `ctr` under `kid`.
    fn sequence(&mut self, kid: u64, ctr: u64) -> u64 {
        let offset = match self.offsets.iter().find(|(k, _)| *k == kid) {
            Some((_, off)) => *off,
            None => {
                // A new key continues the stream after the highest frame seen; its counters
                // start at 0. If frames were missed in between (a whole epoch whose key never
                // arrived), playout has moved on meanwhile: continue from where it is, or every
                // frame of the new key would count as late.
                let after = self.highest_seq.map_or(0, |h| h.saturating_add(1));
                let off = after.max(self.jitter.next_seq().unwrap_or(0));
                if self.offsets.len() == MAX_STREAM_KEYS {
                    self.offsets.remove(0);
                }
                self.offsets.push((kid, off));
                off
            }
        };
        ctr.saturating_add(offset)
    }

    /// Produces the 20 ms frame to play at `now_us` (call once per 20 ms of playback).
    pub fn play(&mut self, now_us: u64, out: &mut Frame) -> Result<Played, VoiceError> {
        let playout = self.jitter.pop(now_us);
        self.stretched = playout.action == Action::Stretch;
        self.last_played = match &playout.action {
            Action::Packet { seq, .. }
            | Action::Recovered { seq, .. }
            | Action::Missing { seq, .. } => Some(*seq),
            Action::Idle | Action::Stretch => None,
        };
        let crossfade = match &playout.skipped {
            Some(p) => {
                if self.decoder.decode(p, &mut self.skipped).is_err() {
                    self.decoder.conceal(None, &mut self.skipped)?;
                }
                true
            }
            None => false,
        };
        let played = match playout.action {
            Action::Recovered { payload, .. } => match self.decoder.decode(&payload, out) {
                Ok(()) => Played::Redundant,
                Err(_) => {
                    self.decoder.conceal(None, out)?;
                    Played::Concealed
                }
            },
            Action::Idle => {
                out.fill(0);
                Played::Silence
            }
            Action::Packet { payload, .. } => match self.decoder.decode(&payload, out) {
                Ok(()) => Played::Packet,
                // Checked on arrival, so not expected; conceal rather than fail the call.
                Err(_) => {
                    self.decoder.conceal(None, out)?;
                    Played::Concealed
                }
            },
            Action::Missing { seq, next, later } => {
                let how = match (next, later) {
                    (Some(next), _) if self.use_fec => self.decoder.conceal(Some(&next), out)?,
                    (_, Some((later_seq, later))) => self.decoder.conceal_from_later(
                        &later,
                        later_seq,
                        later_seq.saturating_sub(seq),
                        out,
                    )?,
                    _ => self.decoder.conceal(None, out)?,
                };
                match how {
                    Decoded::Fec => Played::Fec,
                    Decoded::Dred => Played::Dred,
                    _ => Played::Concealed,
                }
            }
            Action::Stretch => {
                self.decoder.conceal(None, out)?;
                Played::Concealed
            }
        };
        if crossfade {
            for (i, (o, s)) in out
                .iter_mut()
                .zip(self.skipped.iter())
                .take(CROSSFADE)
                .enumerate()
            {
                let w = (i as f32 + 0.5) / CROSSFADE as f32;
                *o = (f32::from(*o) * w + f32::from(*s) * (1.0 - w)).round() as i16;
            }
        }
        match played {
            Played::Packet => self.stats.decoded += 1,
            Played::Redundant => self.stats.redundant += 1,
            Played::Fec => self.stats.fec += 1,
            Played::Dred => self.stats.dred += 1,
            Played::Concealed => self.stats.concealed += 1,
            Played::Silence => {}
        }
        Ok(played)
    }
}

/// A `MEDIA_RED` plaintext's copies (distance, Opus packet) and its own Opus packet.
type SplitRed<'a> = (Vec<(u8, &'a [u8])>, &'a [u8]);

/// Splits a `MEDIA_RED` plaintext into its copies (distance, Opus packet) and its own Opus
/// packet (untrusted bytes; never panics). Distances must grow, within 1..=[`MAX_DISTANCE`].
fn split_red(plain: &[u8]) -> Result<SplitRed<'_>, VoiceError> {
    let (&n, rest) = plain.split_first().ok_or(VoiceError::Redundancy)?;
    let n = usize::from(n);
    if n == 0 || n > MAX_COPIES {
        return Err(VoiceError::Redundancy);
    }
    let table = rest.get(..3 * n).ok_or(VoiceError::Redundancy)?;
    let mut body = &rest[3 * n..];
    let mut copies = Vec::with_capacity(n);
    let mut last = 0u8;
    for entry in table.chunks_exact(3) {
        let d = entry[0];
        if d <= last || d > MAX_DISTANCE {
            return Err(VoiceError::Redundancy);
        }
        last = d;
        let len = usize::from(u16::from_be_bytes([entry[1], entry[2]]));
        if len == 0 || len >= body.len() {
            // Each copy needs at least one byte, and the frame's own packet must follow.
            return Err(VoiceError::Redundancy);
        }
        let (copy, after) = body.split_at(len);
        copies.push((d, copy));
        body = after;
    }
    Ok((copies, body))
}

/// Plays a receiver's 20 ms frames in 10 ms steps.
///
/// Playback hands out audio in fixed blocks, and a frame can only start at a block boundary:
/// with 20 ms blocks a stream waits up to 20 ms after its first frame is due, depending on
/// how its arrivals fall against the device's clock (the quality harness measured 31.4 ms to
/// 46.4 ms of pipeline delay across that phase, over issue 9's 45 ms). Ticking every 10 ms,
/// a stream that has not started asks the jitter buffer again 10 ms later, so it starts within
/// 10 ms of being due and keeps that phase: each 20 ms frame is decoded once and played as two
/// halves. Every other decision (loss, FEC, stretches, skips) stays per 20 ms frame.
#[derive(Debug)]
pub struct HalfPlayout {
    /// The frame being played.
    frame: Frame,
    /// Whether its second half is still to play.
    pending: bool,
}

impl Default for HalfPlayout {
    fn default() -> Self {
        Self::new()
    }
}

impl HalfPlayout {
    /// A playout that has not started.
    pub fn new() -> Self {
        Self {
            frame: SILENCE,
            pending: false,
        }
    }

    /// Fills `out` with the next 10 ms of `rx` at `now_us` (call every 10 ms). Returns what
    /// the frame was made of when one was decoded on this call, `None` when this was the
    /// second half of the previous one.
    pub fn play(
        &mut self,
        rx: &mut VoiceReceiver,
        now_us: u64,
        out: &mut Half,
    ) -> Result<Option<Played>, VoiceError> {
        if self.pending {
            self.pending = false;
            out.copy_from_slice(&self.frame[HALF_SAMPLES..]);
            return Ok(None);
        }
        let played = rx.play(now_us, &mut self.frame)?;
        out.copy_from_slice(&self.frame[..HALF_SAMPLES]);
        // Not started yet, or a stretch (the next frame is not due): only 10 ms is played and
        // the next call asks again 10 ms later, so the buffer grows by 10 ms steps where it
        // would otherwise grow by a whole frame.
        self.pending = played != Played::Silence && !rx.stretched;
        Ok(Some(played))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::codec::tests::{best_correlation, speechlike};
    use crate::voice::{FRAME_US, HALF_US};
    use proptest::prelude::*;
    use securecomm_noise::frame::{BaseKey, frame_kid};
    use securecomm_noise::secret::Secret32;

    fn keyed(epoch: u64, secret: [u8; 32], sender: u8) -> (FrameSender, FrameReceiver) {
        let s = Secret32::from_bytes(secret);
        let tx = FrameSender::for_call(&s, epoch, sender);
        let mut rx = FrameReceiver::default();
        rx.add_key(
            frame_kid(epoch, sender),
            &BaseKey::for_sender(&s, epoch, sender),
        )
        .unwrap();
        (tx, rx)
    }

    fn pair() -> (VoiceSender, VoiceReceiver) {
        let (tx, rx) = keyed(1, [7; 32], 2);
        (
            VoiceSender::new(CodecConfig::default(), tx).unwrap(),
            VoiceReceiver::new(rx, JitterConfig::default(), Concealment::default()).unwrap(),
        )
    }

    fn frame_at(pcm: &[i16], i: usize) -> Frame {
        let mut f = [0; FRAME_SAMPLES];
        let start = (i * FRAME_SAMPLES).min(pcm.len());
        let end = ((i + 1) * FRAME_SAMPLES).min(pcm.len());
        f[..end - start].copy_from_slice(&pcm[start..end]);
        f
    }

    /// Frames arrive 3 ms after each 20 ms boundary and are due 5 ms later: with 10 ms steps
    /// the stream starts at 10 ms instead of 20 ms, and from then on plays exactly what a
    /// receiver ticking every 20 ms at that phase plays, each frame in two halves.
    #[test]
    fn half_playout_starts_within_ten_ms_and_plays_every_frame_whole() {
        let pcm = speechlike(0.6);
        let (mut tx, mut rx) = pair();
        let (_, mut reference) = pair();
        let packets: Vec<Vec<u8>> = (0..30)
            .map(|i| tx.send(&frame_at(&pcm, i)).unwrap())
            .collect();
        let mut playout = HalfPlayout::new();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let mut first_sound = None;
        let mut half = [0i16; HALF_SAMPLES];
        let mut frame = [0i16; FRAME_SAMPLES];
        for k in 0..64u64 {
            let now = k * HALF_US;
            for (i, p) in packets.iter().enumerate() {
                let arrival = i as u64 * FRAME_US + 3_000;
                if arrival <= now && arrival + HALF_US > now {
                    rx.receive(p, arrival).unwrap();
                    reference.receive(p, arrival).unwrap();
                }
            }
            let decoded = playout.play(&mut rx, now, &mut half).unwrap();
            if first_sound.is_none() && decoded.is_some_and(|d| d != Played::Silence) {
                first_sound = Some(now);
            }
            if first_sound.is_some() {
                ours.extend_from_slice(&half);
            }
            // The reference ticks every 20 ms at the phase playout settled on (10 ms).
            if k % 2 == 1 {
                let played = reference.play(now, &mut frame).unwrap();
                if played != Played::Silence || !theirs.is_empty() {
                    theirs.extend_from_slice(&frame);
                }
            }
        }
        assert_eq!(first_sound, Some(HALF_US), "started at {first_sound:?}");
        let n = ours.len().min(theirs.len());
        assert!(n >= 25 * FRAME_SAMPLES, "{n}");
        assert_eq!(ours[..n], theirs[..n], "not the same audio");
        assert_eq!(rx.stats().decoded, reference.stats().decoded);
    }

    #[test]
    fn a_play_event_rides_in_its_frame_and_cannot_be_relabelled() {
        use crate::voice::soundboard::ClipEvent;
        let (mut tx, mut rx) = pair();
        let pcm = speechlike(0.2);
        let event = ClipEvent {
            id: 42,
            root: [9; 32],
            volume: 70,
            frames_ago: 0,
            in_stream: false,
        };
        let mut with_event = Vec::new();
        tx.send_event_into(&frame_at(&pcm, 0), &event, &mut with_event)
            .unwrap();
        let plain = tx.send(&frame_at(&pcm, 1)).unwrap();
        // Relabelled (MEDIA_EXT sent as MEDIA and the reverse): the associated data differs, so
        // neither decrypts; nothing is buffered.
        assert!(rx.receive_typed(&with_event, 0, MEDIA).is_err());
        assert!(rx.receive_typed(&plain, 0, MEDIA_EXT).is_err());
        assert_eq!(
            rx.receive_typed(&with_event, 0, MEDIA_EXT).unwrap(),
            Some((event, 0))
        );
        assert_eq!(rx.receive_typed(&plain, 20_000, MEDIA).unwrap(), None);
        assert_eq!(rx.stats().accepted, 2);
        assert_eq!(rx.stats().rejected, 2);
        // The frame itself plays as voice, and playout names its sequence number.
        let mut out = [0; FRAME_SAMPLES];
        let mut played = Vec::new();
        for k in 0..20u64 {
            rx.play(k * FRAME_US, &mut out).unwrap();
            played.extend(rx.last_played());
        }
        assert_eq!(played.first(), Some(&0));
    }

    #[test]
    fn speech_survives_the_pipeline() {
        let (mut tx, mut rx) = pair();
        let input = speechlike(3.0);
        let n = input.len().div_ceil(FRAME_SAMPLES);
        let mut output = Vec::new();
        let mut out = [0; FRAME_SAMPLES];
        for i in 0..n + 5 {
            let now = i as u64 * FRAME_US;
            if i < n {
                let p = tx.send(&frame_at(&input, i)).unwrap();
                rx.receive(&p, now + 30_000).unwrap();
            }
            rx.play(now + 45_000, &mut out).unwrap();
            output.extend_from_slice(&out);
        }
        let (corr, lag) = best_correlation(&input, &output, 4 * FRAME_SAMPLES);
        assert!(corr > 0.8, "correlation {corr} at lag {lag}");
        let s = rx.stats();
        // Every frame decoded from its packet; only the 5 ticks after the end conceal.
        assert_eq!(
            (s.decoded, s.fec, s.concealed, s.rejected),
            (n as u64, 0, 5, 0)
        );
        let st = tx.stats();
        assert!(st.wire_bytes - st.opus_bytes <= 22 * st.frames);
    }

    #[test]
    fn replayed_packets_are_rejected() {
        let (mut tx, mut rx) = pair();
        let p0 = tx.send(&frame_at(&speechlike(0.1), 0)).unwrap();
        let p1 = tx.send(&[0; FRAME_SAMPLES]).unwrap();
        rx.receive(&p1, 0).unwrap();
        rx.receive(&p0, 0).unwrap();
        assert!(matches!(
            rx.receive(&p0, 1),
            Err(VoiceError::Frame(FrameError::Replayed { ctr: 0, .. }))
        ));
        assert!(matches!(
            rx.receive(&p1, 1),
            Err(VoiceError::Frame(FrameError::Replayed { ctr: 1, .. }))
        ));
        assert_eq!(rx.stats().accepted, 2);
        assert_eq!(rx.stats().rejected, 2);
        assert_eq!(
            rx.jitter().stats().duplicate,
            0,
            "stopped before the buffer"
        );
    }

    #[test]
    fn malformed_packets_are_rejected() {
        let (mut tx, mut rx) = pair();
        let good = tx.send(&frame_at(&speechlike(0.1), 0)).unwrap();
        for n in 0..good.len() {
            assert!(rx.receive(&good[..n], 0).is_err(), "truncated to {n}");
        }
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x40;
        assert!(matches!(
            rx.receive(&flipped, 0),
            Err(VoiceError::Frame(FrameError::Authentication { .. }))
        ));
        assert!(matches!(
            rx.receive(&vec![0u8; MAX_VOICE_PACKET + 1], 0),
            Err(VoiceError::TooLong(_))
        ));
        rx.receive(&good, 0).unwrap();
    }

    #[test]
    fn authentic_frames_with_a_bad_payload_are_rejected() {
        // An insider with the key sends what is not a 20 ms Opus packet.
        let (mut raw, rx) = keyed(1, [7; 32], 2);
        let mut rx =
            VoiceReceiver::new(rx, JitterConfig::default(), Concealment::default()).unwrap();
        for payload in [
            &[][..],
            &[18 << 3, 0, 0][..],
            &[0x03, 0x30][..],
            &[0xfc; 1300][..],
        ] {
            let p = raw.encrypt(payload, b"").unwrap();
            assert!(
                matches!(
                    rx.receive(&p, 0),
                    Err(VoiceError::Codec(_)) | Err(VoiceError::TooLong(_))
                ),
                "payload {:?} accepted",
                &payload[..payload.len().min(4)]
            );
        }
        assert_eq!(rx.jitter().len(), 0);
    }

    #[test]
    fn a_missed_epoch_does_not_make_the_next_one_late() {
        // Epoch 1 plays; the key of epoch 2 never arrives (its frames are rejected while
        // playout conceals); epoch 3's frames must play at once, not count as late.
        let (mut tx, mut rx) = pair();
        let pcm = frame_at(&speechlike(0.5), 3);
        let mut out = [0; FRAME_SAMPLES];
        let mut t = 0u64;
        for _ in 0..20 {
            rx.receive(&tx.send(&pcm).unwrap(), t).unwrap();
            rx.play(t, &mut out).unwrap();
            t += FRAME_US;
        }
        let e2 = Secret32::from_bytes([2; 32]);
        tx.rekey(FrameSender::for_call(&e2, 2, 2));
        for _ in 0..100 {
            assert!(rx.receive(&tx.send(&pcm).unwrap(), t).is_err());
            rx.play(t, &mut out).unwrap();
            t += FRAME_US;
        }
        let e3 = Secret32::from_bytes([3; 32]);
        tx.rekey(FrameSender::for_call(&e3, 3, 2));
        rx.keys_mut()
            .add_key(frame_kid(3, 2), &BaseKey::for_sender(&e3, 3, 2))
            .unwrap();
        let late_before = rx.jitter().stats().late;
        let mut played = Vec::new();
        for _ in 0..30 {
            rx.receive(&tx.send(&pcm).unwrap(), t).unwrap();
            played.push(rx.play(t, &mut out).unwrap());
            t += FRAME_US;
        }
        assert_eq!(
            rx.jitter().stats().late,
            late_before,
            "frames of epoch 3 came late"
        );
        let from_packets = played.iter().filter(|p| **p == Played::Packet).count();
        assert!(from_packets >= 25, "{played:?}");
    }

    #[test]
    fn a_receiver_without_the_next_epoch_key_cannot_decrypt() {
        let (mut tx, mut stayer) = pair();
        let (_, mut leaver) = pair();
        let pcm = frame_at(&speechlike(0.5), 3);
        stayer.receive(&tx.send(&pcm).unwrap(), 0).unwrap();
        leaver.receive(&tx.send(&pcm).unwrap(), 0).unwrap();

        // Epoch 2 after the leaver left: a fresh epoch secret the leaver does not get.
        let epoch2 = Secret32::from_bytes([9; 32]);
        tx.rekey(FrameSender::for_call(&epoch2, 2, 2));
        stayer
            .keys_mut()
            .add_key(frame_kid(2, 2), &BaseKey::for_sender(&epoch2, 2, 2))
            .unwrap();
        // The leaver guesses the KID and derives a key from the old secret: still no.
        let old = Secret32::from_bytes([7; 32]);
        leaver
            .keys_mut()
            .add_key(frame_kid(2, 2), &BaseKey::for_sender(&old, 2, 2))
            .unwrap();
        let (_, mut outsider) = keyed(1, [7; 32], 2);
        outsider.remove_key(frame_kid(1, 2));
        let mut outsider =
            VoiceReceiver::new(outsider, JitterConfig::default(), Concealment::default()).unwrap();

        for _ in 0..3 {
            let p = tx.send(&pcm).unwrap();
            stayer.receive(&p, FRAME_US).unwrap();
            assert!(matches!(
                leaver.receive(&p, FRAME_US),
                Err(VoiceError::Frame(FrameError::Authentication { .. }))
            ));
            assert!(matches!(
                outsider.receive(&p, FRAME_US),
                Err(VoiceError::Frame(FrameError::UnknownKid(_)))
            ));
        }
        // The stayer's stream continues after the last frame of epoch 1: 1 + 3 frames in one
        // contiguous sequence, all played from their packets.
        let mut out = [0; FRAME_SAMPLES];
        let kinds: Vec<Played> = (0..4u64)
            .map(|i| stayer.play(FRAME_US * (i + 2), &mut out).unwrap())
            .collect();
        assert_eq!(kinds, vec![Played::Packet; 4]);
    }

    #[test]
    fn lost_frames_are_rebuilt_from_fec() {
        let (mut tx, mut rx) = pair();
        tx.allow_redundancy(false);
        tx.receiver_report(0.1, 1.0).unwrap();
        assert_eq!(tx.encoder().expected_loss(), 12);
        let input = speechlike(2.0);
        let n = input.len() / FRAME_SAMPLES;
        let mut out = [0; FRAME_SAMPLES];
        // The receiver plays 40 ms after arrival, so the packet after a lost one is there.
        for i in 0..n {
            let p = tx.send(&frame_at(&input, i)).unwrap();
            if i % 10 != 5 {
                rx.receive(&p, i as u64 * FRAME_US).unwrap();
            }
            if i >= 2 {
                rx.play((i as u64 - 2) * FRAME_US + 10_000, &mut out)
                    .unwrap();
            }
        }
        let s = rx.stats();
        assert!(s.fec >= 7, "{s:?}");
        assert!(s.concealed <= 1, "{s:?}");
    }

    /// Sends 2 s of speech through `tx` and `rx`, dropping the packets `lost` says, ticking
    /// playout every 20 ms; returns the receiver's counters and the packet types sent.
    fn lossy_run(
        tx: &mut VoiceSender,
        rx: &mut VoiceReceiver,
        lost: impl Fn(usize) -> bool,
    ) -> (ReceiverStats, Vec<u8>) {
        let input = speechlike(2.0);
        let n = input.len() / FRAME_SAMPLES;
        let packets: Vec<(u8, Vec<u8>)> = (0..n)
            .map(|i| tx.send_typed(&frame_at(&input, i)).unwrap())
            .collect();
        let mut out = [0; FRAME_SAMPLES];
        for k in 0..n as u64 + 10 {
            let now = k * FRAME_US + 10_000;
            for (i, (kind, p)) in packets.iter().enumerate() {
                let arrival = i as u64 * FRAME_US;
                if arrival <= now && arrival + FRAME_US > now && !lost(i) {
                    rx.receive_typed(p, arrival, *kind).unwrap();
                }
            }
            // Stop once everything that arrived was played (later ticks would be losses).
            if arrival_done(k, n) && rx.jitter().is_empty() {
                break;
            }
            rx.play(now, &mut out).unwrap();
        }
        (rx.stats(), packets.iter().map(|(k, _)| *k).collect())
    }

    fn arrival_done(tick: u64, n: usize) -> bool {
        tick >= n as u64
    }

    /// Lost frames a copy `distances` back can bring, of `n` frames.
    fn recoverable(n: usize, lost: impl Fn(usize) -> bool, distances: &[usize]) -> u64 {
        (0..n)
            .filter(|&i| lost(i) && distances.iter().any(|d| i + d < n && !lost(i + d)))
            .count() as u64
    }

    #[test]
    fn copies_of_the_previous_frame_fill_random_losses_and_the_loss_is_still_reported() {
        let (mut tx, mut rx) = pair();
        tx.receiver_report(0.05, 1.1).unwrap();
        assert_eq!(
            tx.redundancy(),
            &[1],
            "copies start at the first report of loss"
        );
        assert_eq!(
            tx.encoder().expected_loss(),
            7,
            "FEC stays on for random loss"
        );
        // Every other packet lost (after the first few, while the buffer makes room): each
        // lost frame's copy rides in the next packet.
        let lost = |i: usize| i >= 8 && i % 2 == 1;
        let (s, kinds) = lossy_run(&mut tx, &mut rx, lost);
        let n = kinds.len() as u64;
        assert_eq!(kinds[0], MEDIA, "nothing to copy yet");
        assert!(kinds[1..].iter().all(|k| *k == MEDIA_RED));
        let brought = recoverable(kinds.len(), lost, &[1]);
        assert_eq!(s.redundant, brought, "{s:?}");
        assert_eq!(s.decoded, n / 2 + 4, "{s:?}");
        // Concealment only for the stretch that made room for the copies, and the last frame.
        assert!(s.concealed <= 2, "{s:?}");
        // The receiver reports the path's loss, not what the copies hid.
        assert!(rx.loss_report() > 0.25, "{}", rx.loss_report());
        assert!(
            rx.jitter().mean_burst() < 1.2,
            "{}",
            rx.jitter().mean_burst()
        );
        let stats = tx.stats();
        assert_eq!(stats.red_frames, n - 1);
        assert!(stats.red_bytes > stats.opus_bytes / 2, "{stats:?}");
    }

    #[test]
    fn copies_three_and_six_back_fill_bursts_of_three() {
        let (mut tx, mut rx) = pair();
        tx.receiver_report(0.25, 3.0).unwrap();
        tx.receiver_report(0.25, 3.0).unwrap();
        assert_eq!(tx.redundancy(), &[3, 6]);
        assert_eq!(tx.encoder().expected_loss(), 0, "no FEC in bursts");
        let burst = |i: usize| i >= 16 && (3..=5).contains(&(i % 8));
        let (s, kinds) = lossy_run(&mut tx, &mut rx, burst);
        let n = kinds.len();
        let lost = (0..n).filter(|&i| burst(i)).count() as u64;
        assert_eq!(s.redundant, recoverable(n, burst, &[3, 6]), "{s:?}");
        assert!(s.redundant + 3 >= lost, "{s:?}");
        assert_eq!(s.decoded, n as u64 - lost, "{s:?}");
        assert_eq!(rx.jitter().redundancy_frames(), 6);
        assert!(
            rx.jitter().mean_burst() > 2.0,
            "{}",
            rx.jitter().mean_burst()
        );
        // The six stretches that grew the buffer by 120 ms, and the last burst.
        assert!(s.concealed <= 9, "{s:?}");
        // Without copies the same bursts are concealed.
        let (mut tx, mut rx) = pair();
        tx.allow_redundancy(false);
        tx.receiver_report(0.25, 3.0).unwrap();
        tx.receiver_report(0.25, 3.0).unwrap();
        let (s, kinds) = lossy_run(&mut tx, &mut rx, burst);
        assert!(kinds.iter().all(|k| *k == MEDIA));
        assert_eq!(s.redundant, 0);
        assert!(s.fec + s.concealed >= lost - 2, "{s:?}");
    }

    #[test]
    fn the_report_picks_copies_with_hysteresis() {
        let (mut tx, _) = pair();
        // Each row: a report, whether it applies at once (more or farther copies) or only
        // after `WEAKER_REPORTS` reports in a row, and the copies then.
        for (loss, burst, at_once, want) in [
            (0.015, 1.0, true, &[][..]),
            (0.02, 1.0, true, &[1][..]),
            (0.012, 1.0, true, &[1][..]),
            (0.13, 1.9, true, &[1][..]),
            (0.14, 1.9, true, &[1, 2][..]),
            (0.11, 1.0, true, &[1, 2][..]),
            (0.09, 1.0, false, &[1][..]),
            (0.2, 2.0, true, &[3, 6][..]),
            (0.2, 1.6, true, &[3, 6][..]),
            (0.2, 1.4, false, &[1, 2][..]),
            (0.009, 1.0, false, &[][..]),
            (f32::NAN, f32::NAN, true, &[][..]),
        ] {
            let before = tx.redundancy().to_vec();
            tx.receiver_report(loss, burst).unwrap();
            if at_once {
                assert_eq!(tx.redundancy(), want, "loss {loss} burst {burst}");
                continue;
            }
            for _ in 1..WEAKER_REPORTS {
                assert_eq!(
                    tx.redundancy(),
                    before,
                    "loss {loss} burst {burst} too soon"
                );
                tx.receiver_report(loss, burst).unwrap();
            }
            assert_eq!(tx.redundancy(), want, "loss {loss} burst {burst}");
        }
        // Loss heard switches copies on at once; reports that keep changing their mind never
        // take them away.
        tx.receiver_report(0.05, 1.0).unwrap();
        assert_eq!(tx.redundancy(), &[1]);
        for (loss, burst) in [(0.0, 1.0), (0.0, 1.0), (0.05, 1.0), (0.0, 1.0), (0.0, 1.0)] {
            tx.receiver_report(loss, burst).unwrap();
            assert_eq!(tx.redundancy(), &[1], "loss {loss} burst {burst}");
        }
        tx.receiver_report(0.0, 1.0).unwrap();
        assert_eq!(tx.redundancy(), &[] as &[u8]);
        // Bursts move copies back at once, without waiting for the way down.
        tx.receiver_report(0.1, 3.0).unwrap();
        assert_eq!(tx.redundancy(), &[3, 6]);
    }

    #[test]
    fn malformed_copies_are_rejected() {
        let mut enc = VoiceEncoder::new(CodecConfig::default()).unwrap();
        let mut opus = Vec::new();
        enc.encode(&frame_at(&speechlike(0.1), 0), &mut opus)
            .unwrap();
        let l = (opus.len() as u16).to_be_bytes();
        let with = |head: &[u8], copies: &[&[u8]], own: &[u8]| {
            let mut p = head.to_vec();
            for c in copies {
                p.extend_from_slice(c);
            }
            p.extend_from_slice(own);
            p
        };
        let good = with(&[1, 1, l[0], l[1]], &[&opus], &opus);
        let bad = [
            with(&[], &[], &[]),
            with(&[0], &[], &opus),
            with(
                &[3, 1, l[0], l[1], 2, l[0], l[1], 3, l[0], l[1]],
                &[&opus, &opus, &opus],
                &opus,
            ),
            with(&[1, 0, l[0], l[1]], &[&opus], &opus),
            with(&[1, 7, l[0], l[1]], &[&opus], &opus),
            with(&[2, 2, l[0], l[1], 2, l[0], l[1]], &[&opus, &opus], &opus),
            with(&[2, 2, l[0], l[1], 1, l[0], l[1]], &[&opus, &opus], &opus),
            with(&[1, 1, 0, 0], &[], &opus),
            // The copy's length runs to the end: no packet of its own.
            with(&[1, 1, l[0], l[1]], &[&opus], &[]),
            with(&[1, 1, 0xff, 0xff], &[&opus], &opus),
            // A copy that is not a 20 ms Opus packet.
            with(&[1, 1, 0, 1], &[&[0xff]], &opus),
            // The table is cut short.
            vec![2, 1, l[0]],
        ];
        let sealed = |plain: &[u8]| {
            let (mut tx, rx) = keyed(1, [7; 32], 2);
            let mut packet = Vec::new();
            tx.encrypt_into(plain, &[MEDIA_RED], &mut packet).unwrap();
            let r = VoiceReceiver::new(rx, JitterConfig::default(), Concealment::default());
            (packet, r.unwrap())
        };
        for (i, plain) in bad.iter().enumerate() {
            let (packet, mut r) = sealed(plain);
            assert!(
                r.receive_typed(&packet, 0, MEDIA_RED).is_err(),
                "bad plaintext #{i} accepted"
            );
            assert_eq!(r.stats().rejected, 1);
            assert!(r.jitter().is_empty());
        }
        // As a plain frame (other associated data) a good one does not decrypt.
        let (packet, mut r) = sealed(&good);
        assert!(r.receive_typed(&packet, 0, MEDIA).is_err());
        let (packet, mut r) = sealed(&good);
        r.receive_typed(&packet, 0, MEDIA_RED).unwrap();
        assert_eq!(r.jitter().len(), 1, "frame 0 has no frame 1 back to fill");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let (_, mut rx) = pair();
            prop_assert!(rx.receive(&bytes, 0).is_err());
            prop_assert!(rx.receive_typed(&bytes, 0, MEDIA_RED).is_err());
            let mut out = [0; FRAME_SAMPLES];
            prop_assert_eq!(rx.play(100_000, &mut out).unwrap(), Played::Silence);
        }

        #[test]
        fn any_redundancy_plaintext_splits_without_panic(
            plain in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            if let Ok((copies, own)) = split_red(&plain) {
                prop_assert!(!own.is_empty());
                prop_assert!((1..=MAX_COPIES).contains(&copies.len()));
                let total: usize = copies.iter().map(|(_, c)| 3 + c.len()).sum::<usize>()
                    + 1 + own.len();
                prop_assert_eq!(total, plain.len());
            }
        }
    }
}
