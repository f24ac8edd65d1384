//! Soundboard clips (issue 11): import, normalize and store short sounds as Opus assets.
//!
//! ```text
//! upload:  file bytes -> import::import (probe by content, decode, downmix, resample to 48 kHz,
//!          peak-normalize to -1 dBFS) -> Clip { pcm, asset } -> asset bytes (encrypted and
//!          distributed by the file layer)
//! play:    asset bytes -> asset::decode_asset -> 48 kHz mono PCM -> voice engine's clip cache
//! ```
//!
//! Everything here is pure computation: no network, no disk, no clock. The limits follow
//! Discord's soundboard: at most [`MAX_INPUT_BYTES`] of input (checked before anything is
//! decoded) and [`MAX_CLIP_MS`] of audio (checked against the container's declared length up
//! front, and again while decoding, so a small file that decodes to hours is refused after
//! decoding at most [`MAX_CLIP_MS`] + [`DURATION_MARGIN_MS`] of it).
//!
//! # Loudness: peak, not LUFS
//!
//! Clips are scaled (up or down) so their sample peak is exactly -1 dBFS ([`TARGET_PEAK`]).
//! The issue asks that no clip peaks above -1 dBFS, which is a statement about peaks; a
//! loudness (LUFS, EBU R128) target would need a true-peak limiter as well to keep that
//! promise, and for clips of a few seconds the gated integrated loudness of R128 is dominated
//! by one or two 400 ms blocks, so it is a poor measure anyway. Per-clip and per-listener
//! volume (in the guild's sound library and the voice engine) handle the rest. After the Opus
//! round trip the decoded peak is measured again and the clip re-encoded once, scaled down,
//! if Opus' overshoot put it more than 0.1 dB above the target.
//!
//! # Formats
//!
//! MP3, Ogg Vorbis, FLAC and WAV (PCM) are decoded by symphonia; Ogg Opus is demuxed by
//! symphonia's Ogg reader (which hands out Opus packets and their trimming) and decoded by
//! libopus through the `opus` crate, the same library the voice engine links. The file
//! extension is only a hint: the format is found by content, and a clip whose content does not
//! match its extension still imports, with [`Clip::mislabelled`] saying so.

pub mod asset;
pub mod import;
mod sanitize;

pub use asset::{AssetError, ClipAsset, decode_asset, encode_asset};
pub use import::{Clip, ImportError, Mislabelled, SourceFormat, import};

/// Largest input file accepted, in bytes (512 KiB, Discord's limit).
pub const MAX_INPUT_BYTES: usize = 512 * 1024;
/// Longest clip accepted, in milliseconds (Discord's 5.2 s).
pub const MAX_CLIP_MS: u32 = 5_200;
/// Slack over [`MAX_CLIP_MS`] tolerated while decoding (encoders pad the last frame); the clip
/// is cut to [`MAX_CLIP_MS`]. Anything longer is refused.
pub const DURATION_MARGIN_MS: u32 = 30;
/// Sample rate of every imported clip, in Hz (the voice engine's rate).
pub const CLIP_RATE: u32 = 48_000;
/// Most samples an imported clip holds (48 kHz mono, [`MAX_CLIP_MS`]).
pub const MAX_CLIP_SAMPLES: usize = (CLIP_RATE as usize / 1000) * MAX_CLIP_MS as usize;
/// Peak every clip is normalized to, as a linear amplitude of full scale (-1 dBFS).
pub const TARGET_PEAK: f32 = 0.891_250_9;
