//! Soundboard playback in a call: the play event, the clip cache and the clip mixer.
//!
//! # Where the play event travels, and why there
//!
//! A play event rides **inside the sender's media frames**: a frame that carries one is sent
//! as a `MEDIA_EXT` packet whose SFrame plaintext is `event | Opus` (see
//! [`super::wire::MEDIA_EXT`]), encrypted and authenticated with the frame under the sender's
//! key, with the packet type bound as associated data (so a relay cannot turn one kind into
//! the other). Receivers start the clip when their jitter buffer **plays** the frame the event
//! names, so the clip lines up with the sender's voice exactly as the sender heard it, whatever
//! each receiver's buffering; a control message over libp2p would arrive on another path with
//! another delay and need a clock mapping between the two. The event is repeated in the
//! [`EVENT_REPEATS`] frames after its start (each saying how many frames ago the clip started),
//! so one lost packet does not lose the clip; receivers keep the event ids they have seen.
//!
//! The cost: a relay sees that a frame's type byte is `MEDIA_EXT` (that *something* was
//! attached, not what). The content, the clip, and who may play stay end to end.
//!
//! # Cached clips and the fallback
//!
//! Clips are distributed ahead of time (the guild layer downloads every library asset and
//! hands the decoded PCM to [`ClipCache`] through `VoiceService::cache_clip`), so a receiver
//! normally mixes the clip itself from its cache. A receiver without it tells the sender
//! (`VoiceRequest::NeedClip` over the encrypted signalling); the sender then mixes the rest of
//! the clip into its own outgoing stream and marks the event [`ClipEvent::in_stream`] in the
//! frames that follow: from the frame so marked, receivers that were mixing the clip locally
//! stop (the stream now carries it), so nobody hears it twice. The first play of such a clip
//! misses its first frames at that receiver (the time the request takes); the sender remembers
//! clips someone lacked in this call and puts later plays of them in its stream from the
//! first frame.
//!
//! # Permission
//!
//! Playing needs Speak and Use Soundboard in the voice channel. The sender checks its own
//! rights before playing; every receiver drops events from a participant whose rights (from the
//! guild state, refreshed every second) do not include both.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};

use super::{FRAME_SAMPLES, Frame};

/// Version byte of an encoded [`ClipEvent`].
pub const EVENT_VERSION: u8 = 1;
/// Length of an encoded [`ClipEvent`].
pub const EVENT_LEN: usize = 1 + 4 + 32 + 1 + 1 + 1;
/// Frames after the first that repeat a play event.
pub const EVENT_REPEATS: u8 = 4;
/// Most clips the cache holds (a full guild library is 48).
pub const MAX_CACHED_CLIPS: usize = 64;
/// Most clips mixing at once (per sender, and for our own plays).
pub const MAX_ACTIVE_CLIPS: usize = 8;
/// Event ids remembered per sender, to take each event once.
const SEEN_EVENTS: usize = 32;

/// A play event, as carried in a media frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClipEvent {
    /// The sender's id for this play (random), to take repeats once.
    pub id: u32,
    /// The clip's asset root (its content address in the guild's sound library).
    pub root: [u8; 32],
    /// The clip's volume, percent (0..=100).
    pub volume: u8,
    /// How many frames before this one the clip started (0 in the first frame).
    pub frames_ago: u8,
    /// The sender mixes the clip into its stream from this frame on: do not mix it locally.
    pub in_stream: bool,
}

impl Encode for ClipEvent {
    fn encode(&self, w: &mut Writer) {
        w.u8(EVENT_VERSION);
        w.u32(self.id);
        w.put(&self.root);
        w.u8(self.volume);
        w.u8(self.frames_ago);
        w.bool(self.in_stream);
    }
}

impl Decode for ClipEvent {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("clip event", EVENT_VERSION)?;
        let id = r.u32()?;
        let root = r.array()?;
        let volume = r.u8()?;
        if volume > 100 {
            return Err(DecodeError::Invalid("clip event volume"));
        }
        let frames_ago = r.u8()?;
        if frames_ago > EVENT_REPEATS {
            return Err(DecodeError::Invalid("clip event frame offset"));
        }
        Ok(Self {
            id,
            root,
            volume,
            frames_ago,
            in_stream: r.bool()?,
        })
    }
}

/// Splits a `MEDIA_EXT` plaintext into its event and its Opus packet.
pub fn split_ext(plaintext: &[u8]) -> Result<(ClipEvent, &[u8]), DecodeError> {
    let mut r = Reader::new(plaintext);
    let event = ClipEvent::decode(&mut r)?;
    let opus = r.rest();
    if opus.is_empty() {
        return Err(DecodeError::Invalid("clip event without a frame"));
    }
    Ok((event, opus))
}

/// Decoded clips by asset root, bounded (oldest inserted leaves first).
#[derive(Debug, Default)]
pub struct ClipCache {
    clips: HashMap<[u8; 32], Arc<[i16]>>,
    order: VecDeque<[u8; 32]>,
}

impl ClipCache {
    /// Adds or replaces a clip.
    pub fn insert(&mut self, root: [u8; 32], pcm: Arc<[i16]>) {
        if self.clips.insert(root, pcm).is_none() {
            self.order.push_back(root);
            while self.order.len() > MAX_CACHED_CLIPS {
                if let Some(old) = self.order.pop_front() {
                    self.clips.remove(&old);
                }
            }
        }
    }

    /// Removes a clip (deleted from the library).
    pub fn remove(&mut self, root: &[u8; 32]) {
        if self.clips.remove(root).is_some() {
            self.order.retain(|r| r != root);
        }
    }

    /// A clip, if cached.
    pub fn get(&self, root: &[u8; 32]) -> Option<Arc<[i16]>> {
        self.clips.get(root).cloned()
    }

    /// How many clips are cached.
    pub fn len(&self) -> usize {
        self.clips.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.clips.is_empty()
    }
}

/// One clip being mixed.
#[derive(Debug, Clone)]
pub struct ActiveClip {
    /// The event it came from.
    pub event: ClipEvent,
    pcm: Arc<[i16]>,
    /// Next sample to mix.
    pos: usize,
    gain: f32,
}

impl ActiveClip {
    /// A clip starting `frames_in` frames into its audio, at `volume` percent times `master`.
    pub fn new(event: ClipEvent, pcm: Arc<[i16]>, frames_in: u64, master: f32) -> Self {
        let pos = usize::try_from(frames_in)
            .unwrap_or(usize::MAX)
            .saturating_mul(FRAME_SAMPLES);
        Self {
            event,
            pcm,
            pos,
            gain: f32::from(event.volume) / 100.0 * master,
        }
    }

    /// Whether all of it was mixed.
    pub fn done(&self) -> bool {
        self.pos >= self.pcm.len()
    }

    /// Adds the next 20 ms of the clip into `mix` (i32 accumulators) and advances.
    pub fn mix_into(&mut self, mix: &mut [i32]) {
        let end = (self.pos + FRAME_SAMPLES).min(self.pcm.len());
        if let Some(src) = self.pcm.get(self.pos..end) {
            for (m, &s) in mix.iter_mut().zip(src) {
                *m += (f32::from(s) * self.gain) as i32;
            }
        }
        self.pos = self.pos.saturating_add(FRAME_SAMPLES);
    }
}

/// Adds the clips' next frame into `frame` (saturating) and drops the finished ones.
pub fn mix_clips(clips: &mut Vec<ActiveClip>, frame: &mut Frame) {
    if clips.is_empty() {
        return;
    }
    let mut acc = [0i32; FRAME_SAMPLES];
    for (a, &s) in acc.iter_mut().zip(frame.iter()) {
        *a = i32::from(s);
    }
    for c in clips.iter_mut() {
        c.mix_into(&mut acc);
    }
    for (o, a) in frame.iter_mut().zip(acc.iter()) {
        *o = (*a).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
    }
    clips.retain(|c| !c.done());
}

/// A clip a receiver must start when it plays the sender's frame `start_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingClip {
    /// The sender's stream sequence number of the clip's first frame.
    pub start_seq: u64,
    /// The event.
    pub event: ClipEvent,
}

/// What a receiver knows about one sender's play events.
#[derive(Debug, Default)]
pub struct RemoteClips {
    seen: VecDeque<u32>,
    /// Events waiting for their frame to play.
    pub pending: VecDeque<PendingClip>,
    /// Clips being mixed locally.
    pub active: Vec<ActiveClip>,
    /// Event ids the sender now carries in its stream, from that sequence number on.
    in_stream: VecDeque<(u32, u64)>,
}

/// What the engine should do about an event taken from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Nothing new (a repeat, or a clip the sender already carries).
    Nothing,
    /// A new event, queued for its frame.
    Queued,
}

impl RemoteClips {
    /// Takes an event found in frame `seq`. New events are queued to start at their frame;
    /// an event now carried in the stream stops local mixing from `seq` on.
    pub fn on_event(&mut self, event: ClipEvent, seq: u64) -> EventOutcome {
        if event.in_stream {
            if !self.in_stream.iter().any(|(id, _)| *id == event.id) {
                if self.in_stream.len() == SEEN_EVENTS {
                    self.in_stream.pop_front();
                }
                self.in_stream.push_back((event.id, seq));
            }
            // Not yet started locally: never start it.
            self.pending.retain(|p| p.event.id != event.id);
            self.remember(event.id);
            return EventOutcome::Nothing;
        }
        if self.seen.contains(&event.id) {
            return EventOutcome::Nothing;
        }
        self.remember(event.id);
        if self.pending.len() >= MAX_ACTIVE_CLIPS {
            self.pending.pop_front();
        }
        self.pending.push_back(PendingClip {
            start_seq: seq.saturating_sub(u64::from(event.frames_ago)),
            event,
        });
        EventOutcome::Queued
    }

    fn remember(&mut self, id: u32) {
        if !self.seen.contains(&id) {
            if self.seen.len() == SEEN_EVENTS {
                self.seen.pop_front();
            }
            self.seen.push_back(id);
        }
    }

    /// Called when the sender's frame `seq` is played: returns the events due now (with how
    /// many frames into the clip they start), and stops clips the stream carries from here.
    pub fn due(&mut self, seq: u64) -> Vec<(ClipEvent, u64)> {
        let in_stream = &self.in_stream;
        self.active.retain(|c| {
            !in_stream
                .iter()
                .any(|(id, from)| *id == c.event.id && seq >= *from)
        });
        let mut out = Vec::new();
        self.pending.retain(|p| {
            if seq >= p.start_seq {
                out.push((p.event, seq - p.start_seq));
                false
            } else {
                true
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(id: u32) -> ClipEvent {
        ClipEvent {
            id,
            root: [3; 32],
            volume: 50,
            frames_ago: 0,
            in_stream: false,
        }
    }

    proptest! {
        #[test]
        fn events_round_trip(id in any::<u32>(), root in any::<[u8; 32]>(), volume in 0u8..=100,
                             frames_ago in 0..=EVENT_REPEATS, in_stream in any::<bool>()) {
            let e = ClipEvent { id, root, volume, frames_ago, in_stream };
            let b = e.to_bytes();
            prop_assert_eq!(b.len(), EVENT_LEN);
            prop_assert_eq!(ClipEvent::from_bytes(&b).unwrap(), e);
            for n in 0..b.len() {
                prop_assert!(ClipEvent::from_bytes(&b[..n]).is_err());
            }
        }

        #[test]
        fn split_ext_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = split_ext(&bytes);
        }
    }

    #[test]
    fn split_ext_takes_the_event_and_leaves_the_frame() {
        let mut b = event(1).to_bytes();
        b.extend_from_slice(&[0xfc, 1, 2]);
        let (e, opus) = split_ext(&b).unwrap();
        assert_eq!(e, event(1));
        assert_eq!(opus, &[0xfc, 1, 2]);
        assert!(split_ext(&event(1).to_bytes()).is_err());
    }

    #[test]
    fn cache_is_bounded_and_forgets_the_oldest() {
        let mut c = ClipCache::default();
        for i in 0..=MAX_CACHED_CLIPS {
            c.insert([i as u8; 32], Arc::from(vec![1i16; 10]));
        }
        assert_eq!(c.len(), MAX_CACHED_CLIPS);
        assert!(c.get(&[0; 32]).is_none());
        assert!(c.get(&[MAX_CACHED_CLIPS as u8; 32]).is_some());
    }

    #[test]
    fn a_repeated_event_starts_once_at_its_first_frame() {
        let mut r = RemoteClips::default();
        assert_eq!(r.on_event(event(7), 100), EventOutcome::Queued);
        let mut again = event(7);
        again.frames_ago = 1;
        assert_eq!(r.on_event(again, 101), EventOutcome::Nothing);
        assert!(r.due(99).is_empty());
        assert_eq!(r.due(100), vec![(event(7), 0)]);
        assert!(r.due(101).is_empty());
    }

    #[test]
    fn a_lost_first_frame_starts_the_clip_late_but_aligned() {
        let mut r = RemoteClips::default();
        let mut e = event(9);
        e.frames_ago = 2;
        r.on_event(e, 52);
        // Frame 50 was lost and 51 already played: start two frames into the clip at 52.
        assert_eq!(r.due(52), vec![(e, 2)]);
    }

    #[test]
    fn an_event_carried_in_the_stream_stops_local_mixing_from_its_frame() {
        let mut r = RemoteClips::default();
        r.on_event(event(5), 10);
        let (e, at) = r.due(10)[0];
        r.active.push(ActiveClip::new(
            e,
            Arc::from(vec![100i16; 960 * 10]),
            at,
            1.0,
        ));
        let mut s = event(5);
        s.in_stream = true;
        r.on_event(s, 14);
        r.due(13);
        assert_eq!(r.active.len(), 1);
        r.due(14);
        assert!(r.active.is_empty());
    }

    #[test]
    fn clips_mix_with_volume_and_saturate() {
        let mut clips = vec![ActiveClip::new(
            event(1),
            Arc::from(vec![10_000i16; FRAME_SAMPLES + 10]),
            0,
            1.0,
        )];
        let mut f = [30_000i16; FRAME_SAMPLES];
        mix_clips(&mut clips, &mut f);
        assert!(f.iter().all(|&s| s == i16::MAX));
        assert_eq!(clips.len(), 1);
        let mut f = [0i16; FRAME_SAMPLES];
        mix_clips(&mut clips, &mut f);
        // Volume 50 %: half of 10 000, for the 10 samples that were left.
        assert_eq!(f[0], 5_000);
        assert_eq!(f[10], 0);
        assert!(clips.is_empty());
    }
}
