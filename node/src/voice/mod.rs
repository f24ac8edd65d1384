//! The voice engine's media pipeline (issue 9, first slice: no network yet).
//!
//! ```text
//! sender:   AudioSource -> 20 ms PCM frame -> Opus (codec) -> SFrame encryption -> bytes
//! receiver: bytes -> replay check + decryption -> jitter buffer -> Opus decode (FEC / PLC)
//!           -> 20 ms PCM frame -> AudioSink
//! ```
//!
//! * [`device`]: one trait pair for audio input and output, with WAV files, a null device and
//!   cpal (ALSA here) behind it.
//! * [`codec`]: the Opus encoder and decoder as the pipeline uses them (bitrate, in-band FEC
//!   tuned to measured loss, DTX, FEC and loss concealment on the decoding side).
//! * [`jitter`]: the adaptive jitter buffer (target near the 95th percentile of observed jitter
//!   plus a margin, reordering, late-packet accounting, concealment instead of gaps).
//! * [`soundboard`]: soundboard play events in media frames, the clip cache and clip mixing.
//! * [`pipeline`]: [`pipeline::VoiceSender`] and [`pipeline::VoiceReceiver`], which join the
//!   parts above with `securecomm_noise::frame` (SFrame-shaped frame encryption).
//!
//! Audio format everywhere: 48 kHz, mono, signed 16-bit, 20 ms frames ([`FRAME_SAMPLES`]).
//! Time is passed in as microseconds on the caller's clock (the pipeline reads no clock), so
//! the quality harness (`node/benches/voice_quality.rs`) can run a simulated network.

pub mod call;
pub mod codec;
pub mod device;
pub mod jitter;
mod opus_ffi;
pub mod pipeline;
pub mod process;
pub mod service;
pub mod soundboard;
pub mod wire;

/// Sample rate of every voice signal, in Hz.
pub const SAMPLE_RATE: u32 = 48_000;
/// Length of one frame in milliseconds.
pub const FRAME_MS: u32 = 20;
/// Length of one frame in microseconds (the jitter buffer's time unit is the microsecond).
pub const FRAME_US: u64 = FRAME_MS as u64 * 1000;
/// Samples in one 20 ms mono frame at 48 kHz.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE / 1000 * FRAME_MS) as usize;

/// One 20 ms mono frame of 16-bit PCM at 48 kHz.
pub type Frame = [i16; FRAME_SAMPLES];

/// Playback runs in 10 ms steps (half a frame), so a stream starts playing at most 10 ms after
/// its first frame is due instead of up to 20 ms (see [`pipeline::HalfPlayout`]).
pub const HALF_US: u64 = FRAME_US / 2;
/// Samples in 10 ms.
pub const HALF_SAMPLES: usize = FRAME_SAMPLES / 2;
/// Ten milliseconds of 16-bit PCM.
pub type Half = [i16; HALF_SAMPLES];

/// A frame of silence.
pub const SILENCE: Frame = [0; FRAME_SAMPLES];
