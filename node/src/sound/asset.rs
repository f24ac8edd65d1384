//! The clip asset: a soundboard clip as stored and distributed (inside the encrypted file
//! layer), a small self-describing container of 20 ms Opus packets.
//!
//! ```text
//! magic     4 bytes  "SCLP"
//! version   u8       1
//! pre_skip  u16      encoder lookahead in samples, dropped from the decoded start (<= 960)
//! samples   u32      clip length in 48 kHz mono samples (1..=MAX_CLIP_SAMPLES)
//! frames    u16      number of packets; must be ceil((pre_skip + samples) / 960)
//! frames x  bytes16  one Opus packet (1..=1275 bytes) each, exactly one 20 ms mono frame
//! ```
//!
//! Everything is big-endian through `securecomm_noise::codec`, every length is bounded before
//! anything is allocated, the frame count is tied to the sample count (so a small asset cannot
//! claim more audio than it carries, nor carry more than it claims), and trailing bytes are an
//! error. The largest valid asset is about 334 KB (261 maximal packets).

use opus::{Application, Bitrate, Channels};
use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use thiserror::Error;

use super::{CLIP_RATE, MAX_CLIP_SAMPLES};
use crate::voice::FRAME_SAMPLES;
use crate::voice::codec::MAX_PACKET;

/// The asset's first four bytes.
pub const ASSET_MAGIC: [u8; 4] = *b"SCLP";
/// The asset format version this build writes and reads.
pub const ASSET_VERSION: u8 = 1;
/// Bitrate of clip assets, in bits per second (Opus at 64 kbit/s is transparent enough for
/// effects and music played through a voice channel, which carries 64 kbit/s itself).
pub const ASSET_BITRATE: i32 = 64_000;
/// Largest encoder lookahead an asset may declare, in samples.
pub const MAX_PRE_SKIP: usize = FRAME_SAMPLES;
/// Most packets an asset may hold.
pub const MAX_FRAMES: usize = (MAX_PRE_SKIP + MAX_CLIP_SAMPLES).div_ceil(FRAME_SAMPLES);

/// Why asset bytes are not a valid clip, or a clip could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AssetError {
    /// The bytes are not a well-formed asset.
    #[error("malformed clip asset: {0}")]
    Malformed(#[from] DecodeError),
    /// The bytes do not start with the asset magic.
    #[error("not a clip asset: expected magic {expected:?}, got {got:?}")]
    Magic {
        /// The magic this build expects.
        expected: [u8; 4],
        /// The bytes found.
        got: [u8; 4],
    },
    /// The frame count does not match the declared length.
    #[error("clip asset frame count: expected {expected} for its length, got {got}")]
    FrameCount {
        /// Frames the declared length needs.
        expected: usize,
        /// Frames present.
        got: usize,
    },
    /// An Opus packet failed to decode, or is not one 20 ms frame.
    #[error("clip asset packet {index}: {reason}")]
    Packet {
        /// Index of the packet.
        index: usize,
        /// libopus' or our reason.
        reason: String,
    },
    /// The clip to encode is empty or longer than a clip may be.
    #[error("clip length: expected 1..={MAX_CLIP_SAMPLES} samples, got {0}")]
    Length(usize),
    /// libopus refused to set up or encode.
    #[error("Opus encoder: {0}")]
    Encoder(String),
}

/// A parsed clip asset (packets not yet decoded).
#[derive(Clone, PartialEq, Eq)]
pub struct ClipAsset {
    /// Encoder lookahead to drop from the decoded start, in samples.
    pub pre_skip: u16,
    /// Clip length in 48 kHz mono samples.
    pub samples: u32,
    /// One Opus packet per 20 ms frame.
    pub packets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ClipAsset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipAsset")
            .field("pre_skip", &self.pre_skip)
            .field("samples", &self.samples)
            .field("packets", &self.packets.len())
            .finish()
    }
}

/// Frames needed to carry `samples` after `pre_skip` samples of lookahead.
fn frames_for(pre_skip: usize, samples: usize) -> usize {
    (pre_skip + samples).div_ceil(FRAME_SAMPLES)
}

impl ClipAsset {
    /// Length of the clip in milliseconds.
    pub fn duration_ms(&self) -> u32 {
        (u64::from(self.samples) * 1000 / u64::from(CLIP_RATE)) as u32
    }

    /// Checks the invariants the decoder enforces (used by both sides).
    fn check(&self) -> Result<(), AssetError> {
        let samples = self.samples as usize;
        if samples == 0 || samples > MAX_CLIP_SAMPLES {
            return Err(AssetError::Length(samples));
        }
        let expected = frames_for(usize::from(self.pre_skip), samples);
        if self.packets.len() != expected {
            return Err(AssetError::FrameCount {
                expected,
                got: self.packets.len(),
            });
        }
        Ok(())
    }

    /// Parses and validates asset bytes (the packets are not decoded).
    pub fn parse(bytes: &[u8]) -> Result<Self, AssetError> {
        let mut r = Reader::new(bytes);
        let magic = r.array::<4>()?;
        if magic != ASSET_MAGIC {
            return Err(AssetError::Magic {
                expected: ASSET_MAGIC,
                got: magic,
            });
        }
        let asset = Self::decode(&mut r)?;
        r.finish()?;
        asset.check()?;
        Ok(asset)
    }

    /// The asset's bytes, magic included.
    pub fn to_asset_bytes(&self) -> Vec<u8> {
        let mut w =
            Writer::with_capacity(16 + self.packets.iter().map(|p| p.len() + 2).sum::<usize>());
        w.put(&ASSET_MAGIC);
        self.encode(&mut w);
        w.into_bytes()
    }

    /// Decodes the packets to the clip's 48 kHz mono PCM.
    pub fn decode_pcm(&self) -> Result<Vec<i16>, AssetError> {
        self.check()?;
        let mut dec = opus::Decoder::new(CLIP_RATE, Channels::Mono)
            .map_err(|e| AssetError::Encoder(e.to_string()))?;
        let skip = usize::from(self.pre_skip);
        let mut pcm = Vec::with_capacity(self.packets.len() * FRAME_SAMPLES);
        let mut frame = [0i16; FRAME_SAMPLES];
        for (index, packet) in self.packets.iter().enumerate() {
            // A packet longer than one frame would overflow `frame`; libopus reports that as an
            // error rather than writing past it, and the sample count is checked as well.
            let n = dec
                .decode(packet, &mut frame, false)
                .map_err(|e| AssetError::Packet {
                    index,
                    reason: e.to_string(),
                })?;
            if n != FRAME_SAMPLES {
                return Err(AssetError::Packet {
                    index,
                    reason: format!("expected {FRAME_SAMPLES} samples, got {n}"),
                });
            }
            pcm.extend_from_slice(&frame);
        }
        pcm.drain(..skip.min(pcm.len()));
        pcm.truncate(self.samples as usize);
        Ok(pcm)
    }
}

impl Encode for ClipAsset {
    fn encode(&self, w: &mut Writer) {
        w.u8(ASSET_VERSION);
        w.u16(self.pre_skip);
        w.u32(self.samples);
        // The count fits: `check` bounds it to MAX_FRAMES (261); encode is only reached with
        // packets made by `encode_asset` or parsed by `parse`.
        w.u16(u16::try_from(self.packets.len()).unwrap_or(u16::MAX));
        for p in &self.packets {
            w.bytes16(p);
        }
    }
}

impl Decode for ClipAsset {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("clip asset", ASSET_VERSION)?;
        let pre_skip = r.u16()?;
        if usize::from(pre_skip) > MAX_PRE_SKIP {
            return Err(DecodeError::TooLong {
                what: "clip asset pre-skip",
                max: MAX_PRE_SKIP,
                got: usize::from(pre_skip),
            });
        }
        let samples = r.u32()?;
        if samples as usize > MAX_CLIP_SAMPLES {
            return Err(DecodeError::TooLong {
                what: "clip asset samples",
                max: MAX_CLIP_SAMPLES,
                got: samples as usize,
            });
        }
        let count = r.count16("clip asset frames", MAX_FRAMES)?;
        let mut packets = Vec::with_capacity(count);
        for _ in 0..count {
            let p = r.bytes16("clip asset packet", MAX_PACKET)?;
            if p.is_empty() {
                return Err(DecodeError::Invalid("empty clip asset packet"));
            }
            packets.push(p.to_vec());
        }
        Ok(Self {
            pre_skip,
            samples,
            packets,
        })
    }
}

/// Encodes 48 kHz mono PCM (at most [`MAX_CLIP_SAMPLES`]) as a clip asset.
pub fn encode_asset(pcm: &[i16]) -> Result<ClipAsset, AssetError> {
    if pcm.is_empty() || pcm.len() > MAX_CLIP_SAMPLES {
        return Err(AssetError::Length(pcm.len()));
    }
    let enc_err = |e: opus::Error| AssetError::Encoder(e.to_string());
    // Application::Audio, not VoIP: clips are effects and music as often as speech.
    let mut enc =
        opus::Encoder::new(CLIP_RATE, Channels::Mono, Application::Audio).map_err(enc_err)?;
    enc.set_bitrate(Bitrate::Bits(ASSET_BITRATE))
        .map_err(enc_err)?;
    let lookahead = usize::try_from(enc.get_lookahead().map_err(enc_err)?).unwrap_or(0);
    let pre_skip = lookahead.min(MAX_PRE_SKIP);
    let frames = frames_for(pre_skip, pcm.len());
    // The encoder's output lags its input by `pre_skip`: feed that much silence at the end so
    // the last samples come out, and the decoder drops as much from the start.
    let mut padded = pcm.to_vec();
    padded.resize(frames * FRAME_SAMPLES, 0);
    let mut packets = Vec::with_capacity(frames);
    let mut out = vec![0u8; MAX_PACKET];
    for chunk in padded.chunks_exact(FRAME_SAMPLES) {
        let n = enc.encode(chunk, &mut out).map_err(enc_err)?;
        packets.push(out[..n].to_vec());
    }
    Ok(ClipAsset {
        pre_skip: pre_skip as u16,
        samples: pcm.len() as u32,
        packets,
    })
}

/// Parses asset bytes and decodes them to 48 kHz mono PCM, ready for the voice engine's mixer.
pub fn decode_asset(bytes: &[u8]) -> Result<Vec<i16>, AssetError> {
    ClipAsset::parse(bytes)?.decode_pcm()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tone(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                ((i as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin() * 20_000.0) as i16
            })
            .collect()
    }

    #[test]
    fn tone_round_trips_through_opus_with_the_right_length_and_alignment() {
        let pcm = tone(48_000);
        let asset = encode_asset(&pcm).unwrap();
        let bytes = asset.to_asset_bytes();
        let back = decode_asset(&bytes).unwrap();
        assert_eq!(back.len(), pcm.len());
        // Aligned (pre-skip dropped): the waveforms match closely sample by sample.
        let (mut num, mut den) = (0f64, 0f64);
        for (a, b) in pcm[960..47_000].iter().zip(&back[960..47_000]) {
            num += f64::from(*a) * f64::from(*b);
            den += f64::from(*a).powi(2);
        }
        assert!(num / den > 0.95, "correlation {}", num / den);
        assert!(
            bytes.len() < 12_000,
            "1 s at 64 kbit/s: {} bytes",
            bytes.len()
        );
    }

    #[test]
    fn refuses_empty_and_too_long_clips() {
        assert_eq!(encode_asset(&[]), Err(AssetError::Length(0)));
        assert_eq!(
            encode_asset(&vec![0; MAX_CLIP_SAMPLES + 1]),
            Err(AssetError::Length(MAX_CLIP_SAMPLES + 1))
        );
    }

    #[test]
    fn a_frame_count_that_does_not_match_the_length_is_refused() {
        let mut asset = encode_asset(&tone(4_800)).unwrap();
        asset.samples = 48_000;
        assert!(matches!(
            ClipAsset::parse(&asset.to_asset_bytes()),
            Err(AssetError::FrameCount { .. })
        ));
    }

    #[test]
    fn wrong_magic_and_trailing_bytes_are_refused() {
        let mut bytes = encode_asset(&tone(960)).unwrap().to_asset_bytes();
        bytes.push(0);
        assert!(matches!(
            decode_asset(&bytes),
            Err(AssetError::Malformed(DecodeError::TrailingBytes(1)))
        ));
        bytes.pop();
        bytes[0] = b'X';
        assert!(matches!(
            decode_asset(&bytes),
            Err(AssetError::Magic { .. })
        ));
    }

    fn arb_asset() -> impl Strategy<Value = ClipAsset> {
        (0..=MAX_PRE_SKIP as u16, 1..=20_000u32).prop_flat_map(|(pre_skip, samples)| {
            let n = frames_for(usize::from(pre_skip), samples as usize);
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), n).prop_map(
                move |packets| ClipAsset {
                    pre_skip,
                    samples,
                    packets,
                },
            )
        })
    }

    proptest! {
        #[test]
        fn asset_codec_round_trips(asset in arb_asset()) {
            let bytes = asset.to_asset_bytes();
            prop_assert_eq!(ClipAsset::parse(&bytes).unwrap(), asset);
        }

        #[test]
        fn every_truncation_is_refused(asset in arb_asset()) {
            let bytes = asset.to_asset_bytes();
            for cut in 0..bytes.len() {
                prop_assert!(ClipAsset::parse(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut with_magic = ASSET_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode_asset(&bytes);
            let _ = decode_asset(&with_magic);
        }
    }
}
