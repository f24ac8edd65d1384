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
//! ([`VoiceSender::send_event_into`], [`VoiceReceiver::receive_ext`]); plain frames keep empty
//! associated data, so neither kind decrypts as the other.
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
use super::wire::MEDIA_EXT;
use super::{FRAME_SAMPLES, Frame, HALF_SAMPLES, Half, SILENCE};
use securecomm_noise::codec::Encode;

/// Longest voice packet on the wire: largest header, largest Opus packet, tag.
pub const MAX_VOICE_PACKET: usize = MAX_HEADER_LEN + MAX_PACKET + NT;
/// Samples cross-faded when the jitter buffer skips a frame (2.5 ms).
const CROSSFADE: usize = 120;
/// KIDs whose sequence offset the receiver remembers (current epoch and a few before).
const MAX_STREAM_KEYS: usize = 4;

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
}

/// Encodes and encrypts one outgoing voice stream.
#[derive(Debug)]
pub struct VoiceSender {
    encoder: VoiceEncoder,
    frames: FrameSender,
    opus: Vec<u8>,
    stats: SenderStats,
}

impl VoiceSender {
    /// A sender with `config`, encrypting with `frames` (the current epoch's key).
    pub fn new(config: CodecConfig, frames: FrameSender) -> Result<Self, VoiceError> {
        Ok(Self {
            encoder: VoiceEncoder::new(config)?,
            frames,
            opus: Vec::with_capacity(MAX_PACKET),
            stats: SenderStats::default(),
        })
    }

    /// Encodes and encrypts one frame into `out` (cleared first).
    pub fn send_into(&mut self, pcm: &Frame, out: &mut Vec<u8>) -> Result<(), VoiceError> {
        self.encoder.encode(pcm, &mut self.opus)?;
        self.frames.encrypt_into(&self.opus, b"", out)?;
        self.stats.frames += 1;
        self.stats.opus_bytes += self.opus.len() as u64;
        self.stats.wire_bytes += out.len() as u64;
        self.stats.max_overhead = self
            .stats
            .max_overhead
            .max(out.len().saturating_sub(self.opus.len()));
        Ok(())
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
        Ok(())
    }

    /// Encodes and encrypts one frame.
    pub fn send(&mut self, pcm: &Frame) -> Result<Vec<u8>, VoiceError> {
        let mut out = Vec::with_capacity(MAX_VOICE_PACKET);
        self.send_into(pcm, &mut out)?;
        Ok(out)
    }

    /// Switches to the next epoch's key.
    pub fn rekey(&mut self, frames: FrameSender) {
        self.frames = frames;
    }

    /// Applies a receiver's loss report (fraction 0.0..=1.0): tunes FEC.
    pub fn receiver_report(&mut self, loss: f32) -> Result<(), VoiceError> {
        Ok(self.encoder.set_measured_loss(loss)?)
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

    /// Takes one packet's frame that may carry a play event (`ext`: it came as `MEDIA_EXT`).
    /// Returns the event and the sequence number of its frame.
    pub fn receive_ext(
        &mut self,
        packet: &[u8],
        now_us: u64,
        ext: bool,
    ) -> Result<Option<(ClipEvent, u64)>, VoiceError> {
        if !ext {
            return self.receive(packet, now_us).map(|()| None);
        }
        let result = self.accept_ext(packet, now_us);
        if result.is_err() {
            self.stats.rejected += 1;
        }
        result.map(Some)
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
            Action::Packet { seq, .. } | Action::Missing { seq, .. } => Some(*seq),
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
            Played::Fec => self.stats.fec += 1,
            Played::Dred => self.stats.dred += 1,
            Played::Concealed => self.stats.concealed += 1,
            Played::Silence => {}
        }
        Ok(played)
    }
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
        assert!(rx.receive_ext(&with_event, 0, false).is_err());
        assert!(rx.receive_ext(&plain, 0, true).is_err());
        assert_eq!(
            rx.receive_ext(&with_event, 0, true).unwrap(),
            Some((event, 0))
        );
        assert_eq!(rx.receive_ext(&plain, 20_000, false).unwrap(), None);
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
        tx.receiver_report(0.1).unwrap();
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

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let (_, mut rx) = pair();
            prop_assert!(rx.receive(&bytes, 0).is_err());
            let mut out = [0; FRAME_SAMPLES];
            prop_assert_eq!(rx.play(100_000, &mut out).unwrap(), Played::Silence);
        }
    }
}
