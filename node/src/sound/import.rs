//! Clip import: any supported audio file to a normalized 48 kHz mono clip and its Opus asset.
//!
//! Order of checks, cheapest first, so bad input costs as little as possible:
//!
//! 1. input size ([`MAX_INPUT_BYTES`]), before any parsing;
//! 2. metadata the decoders must not parse is neutralized or checked (see
//!    `sound::sanitize`: symphonia trusts some length fields);
//! 3. probing by content (the extension hint is only compared afterwards);
//! 4. the container's declared length, if it has one, against the duration limit;
//! 5. decoding packet by packet, stopping as soon as the decoded length passes the limit plus
//!    [`DURATION_MARGIN_MS`], or the packet count passes [`MAX_PACKETS`] (a stream of packets
//!    that decode to nothing);
//! 6. downmix, resample (rubato), peak normalization, Opus encoding.
//!
//! symphonia is memory-safe Rust but has had panics on malformed input; the decoding step runs
//! under `catch_unwind` so such a panic becomes [`ImportError::Corrupt`] instead of taking the
//! node down (the fuzz target sees the same entry point).

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use opus::Channels;
use rubato::{FftFixedIn, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{
    CODEC_TYPE_FLAC, CODEC_TYPE_MP3, CODEC_TYPE_NULL, CODEC_TYPE_OPUS, CODEC_TYPE_VORBIS,
    CodecParameters, DecoderOptions,
};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader, Packet};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;
use thiserror::Error;

use super::asset::{AssetError, ClipAsset, encode_asset};
use super::{
    CLIP_RATE, DURATION_MARGIN_MS, MAX_CLIP_MS, MAX_CLIP_SAMPLES, MAX_INPUT_BYTES, TARGET_PEAK,
};

/// Most packets read from one file (a 5.2 s clip needs a few hundred; this bounds the work on
/// a stream of packets that decode to no audio).
pub const MAX_PACKETS: usize = 20_000;
/// Lowest source sample rate accepted, in Hz.
pub const MIN_RATE: u32 = 8_000;
/// Highest source sample rate accepted, in Hz.
pub const MAX_RATE: u32 = 192_000;
/// Most source channels accepted.
pub const MAX_CHANNELS: usize = 8;
/// A clip whose peak is below this (about -80 dBFS) is silent: normalizing it would only
/// amplify noise.
pub const SILENCE_PEAK: f32 = 1.0e-4;
/// Largest Opus packet duration at 48 kHz (120 ms, RFC 6716).
const MAX_OPUS_PACKET_SAMPLES: usize = 5_760;
/// Tolerance for a container's declared length against what was decoded before the data ran
/// out, in source-rate milliseconds.
const TRUNCATION_SLACK_MS: u64 = 40;

/// The audio formats a clip may be uploaded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// MPEG-1/2 Layer III.
    Mp3,
    /// Vorbis in Ogg.
    Vorbis,
    /// Opus in Ogg.
    Opus,
    /// FLAC (native or in Ogg).
    Flac,
    /// PCM in a RIFF WAVE file.
    Wav,
}

impl SourceFormat {
    /// The formats a file extension (without the dot, any case) names, if it names any.
    pub fn for_extension(ext: &str) -> Option<&'static [SourceFormat]> {
        match ext.trim_start_matches('.').to_ascii_lowercase().as_str() {
            "mp3" => Some(&[Self::Mp3]),
            "ogg" | "oga" => Some(&[Self::Vorbis, Self::Opus, Self::Flac]),
            "opus" => Some(&[Self::Opus]),
            "flac" => Some(&[Self::Flac]),
            "wav" | "wave" => Some(&[Self::Wav]),
            _ => None,
        }
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mp3 => "MP3",
            Self::Vorbis => "Ogg Vorbis",
            Self::Opus => "Ogg Opus",
            Self::Flac => "FLAC",
            Self::Wav => "WAV",
        }
    }
}

/// A file whose extension names another format than its content; imported by content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mislabelled {
    /// The extension given.
    pub extension: String,
    /// What the content is.
    pub actual: SourceFormat,
}

impl std::fmt::Display for Mislabelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the file is named .{} but contains {}; imported as {}",
            self.extension,
            self.actual.name(),
            self.actual.name()
        )
    }
}

/// Why a file could not be imported as a clip.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ImportError {
    /// The file is larger than a clip's source may be (checked before decoding).
    #[error("file too large: at most {max} bytes, got {got}")]
    TooLarge {
        /// The limit.
        max: usize,
        /// The file's size.
        got: usize,
    },
    /// The audio is longer than a clip may be.
    #[error("clip too long: at most {max_ms} ms, got at least {got_ms} ms")]
    TooLong {
        /// The limit.
        max_ms: u32,
        /// The length declared or decoded when it was refused (a lower bound).
        got_ms: u64,
    },
    /// The content is not an audio format this build reads.
    #[error("unrecognized audio format{}: expected MP3, Ogg Vorbis, Ogg Opus, FLAC or WAV", .claimed.as_ref().map(|e| format!(" (named .{e}, but the content is not that)")).unwrap_or_default())]
    Unrecognized {
        /// The extension given, if any.
        claimed: Option<String>,
    },
    /// The format is recognised but this variant of it is not supported.
    #[error("unsupported audio: {0}")]
    Unsupported(String),
    /// The data is damaged.
    #[error("corrupt audio data: {0}")]
    Corrupt(String),
    /// The data ends before the length its container declares.
    #[error("truncated audio: the file declares {declared_ms} ms but holds only {got_ms} ms")]
    Truncated {
        /// Length the container declares.
        declared_ms: u64,
        /// Length decoded before the data ran out.
        got_ms: u64,
    },
    /// The file holds no audio samples.
    #[error("the file holds no audio")]
    Empty,
    /// The audio is silent (peak below about -80 dBFS), nothing to normalize.
    #[error("the clip is silent")]
    Silent,
    /// The Opus asset could not be made.
    #[error("encoding the clip: {0}")]
    Encode(#[from] AssetError),
}

/// An imported clip.
#[derive(Clone)]
pub struct Clip {
    /// The format the content was decoded as.
    pub format: SourceFormat,
    /// Set when the extension hint named another format.
    pub mislabelled: Option<Mislabelled>,
    /// 48 kHz mono PCM, peak-normalized to -1 dBFS (before Opus).
    pub pcm: Vec<i16>,
    /// The clip as an Opus asset (what is stored, encrypted, and distributed).
    pub asset: ClipAsset,
}

impl std::fmt::Debug for Clip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clip")
            .field("format", &self.format)
            .field("mislabelled", &self.mislabelled)
            .field("duration_ms", &self.duration_ms())
            .field("asset", &self.asset)
            .finish()
    }
}

impl Clip {
    /// Length of the clip in milliseconds.
    pub fn duration_ms(&self) -> u32 {
        (self.pcm.len() as u64 * 1000 / u64::from(CLIP_RATE)) as u32
    }

    /// The asset's bytes.
    pub fn asset_bytes(&self) -> Vec<u8> {
        self.asset.to_asset_bytes()
    }
}

/// Decoded source audio, downmixed to mono at its own rate.
struct Decoded {
    format: SourceFormat,
    rate: u32,
    mono: Vec<f32>,
}

/// Imports a clip from a file's bytes. `hint` is the file's extension (without the dot), used
/// only to say when the content is something else.
pub fn import(bytes: &[u8], hint: Option<&str>) -> Result<Clip, ImportError> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(ImportError::TooLarge {
            max: MAX_INPUT_BYTES,
            got: bytes.len(),
        });
    }
    if bytes.is_empty() {
        return Err(ImportError::Empty);
    }
    let decoded = match catch_unwind(AssertUnwindSafe(|| decode_source(bytes, hint))) {
        Ok(r) => r?,
        Err(_) => {
            return Err(ImportError::Corrupt(
                "the decoder failed on this input".into(),
            ));
        }
    };
    let mislabelled = hint.and_then(|ext| {
        let named = SourceFormat::for_extension(ext)?;
        (!named.contains(&decoded.format)).then(|| Mislabelled {
            extension: ext.trim_start_matches('.').to_ascii_lowercase(),
            actual: decoded.format,
        })
    });
    let mut mono = resample(&decoded.mono, decoded.rate)?;
    if mono.is_empty() {
        return Err(ImportError::Empty);
    }
    mono.truncate(MAX_CLIP_SAMPLES);
    let pcm = normalize(&mono)?;
    let asset = encode_checked(pcm.clone())?;
    Ok(Clip {
        format: decoded.format,
        mislabelled,
        pcm,
        asset,
    })
}

/// Encodes the clip; if Opus' reconstruction overshoots the target peak by more than 0.1 dB,
/// scales the input down by the overshoot and encodes once more.
fn encode_checked(pcm: Vec<i16>) -> Result<ClipAsset, ImportError> {
    let asset = encode_asset(&pcm)?;
    let decoded_peak = peak_i16(&asset.decode_pcm()?);
    let target = TARGET_PEAK * 32_767.0;
    if decoded_peak <= target * 1.011_6 {
        return Ok(asset);
    }
    let scale = target / decoded_peak;
    let scaled: Vec<i16> = pcm
        .iter()
        .map(|&s| (f32::from(s) * scale).round() as i16)
        .collect();
    Ok(encode_asset(&scaled)?)
}

fn peak_i16(pcm: &[i16]) -> f32 {
    pcm.iter()
        .map(|s| f32::from(s.unsigned_abs()))
        .fold(0.0, f32::max)
}

/// Scales mono audio so its peak is exactly [`TARGET_PEAK`] and converts it to 16-bit.
fn normalize(mono: &[f32]) -> Result<Vec<i16>, ImportError> {
    let peak = mono.iter().map(|s| s.abs()).fold(0.0f32, f32::max);
    if !peak.is_finite() {
        return Err(ImportError::Corrupt("non-finite samples".into()));
    }
    if peak < SILENCE_PEAK {
        return Err(ImportError::Silent);
    }
    let gain = TARGET_PEAK / peak * 32_767.0;
    Ok(mono
        .iter()
        .map(|&s| (s * gain).round().clamp(-32_767.0, 32_767.0) as i16)
        .collect())
}

/// Resamples mono audio to 48 kHz with rubato's FFT resampler, compensating its delay so the
/// output is aligned with the input and exactly as long as the input's duration.
fn resample(mono: &[f32], rate: u32) -> Result<Vec<f32>, ImportError> {
    if rate == CLIP_RATE {
        return Ok(mono.to_vec());
    }
    let err = |e: &dyn std::fmt::Display| ImportError::Unsupported(format!("resampling: {e}"));
    const CHUNK: usize = 1024;
    let mut r = FftFixedIn::<f32>::new(rate as usize, CLIP_RATE as usize, CHUNK, 2, 1)
        .map_err(|e| err(&e))?;
    let delay = r.output_delay();
    let expected = (mono.len() as u64 * u64::from(CLIP_RATE) / u64::from(rate)) as usize;
    let mut out = Vec::with_capacity(expected + delay + 2 * CHUNK);
    let mut pos = 0;
    while mono.len() - pos >= r.input_frames_next() {
        let n = r.input_frames_next();
        let chunk = r
            .process(&[&mono[pos..pos + n]], None)
            .map_err(|e| err(&e))?;
        out.extend_from_slice(chunk.first().map(Vec::as_slice).unwrap_or_default());
        pos += n;
    }
    let tail = r
        .process_partial(Some(&[&mono[pos..]]), None)
        .map_err(|e| err(&e))?;
    out.extend_from_slice(tail.first().map(Vec::as_slice).unwrap_or_default());
    // Flush the resampler's delay line; bounded by the number of calls, not by the output.
    for _ in 0..8 {
        if out.len() >= expected + delay {
            break;
        }
        let tail = r
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| err(&e))?;
        out.extend_from_slice(tail.first().map(Vec::as_slice).unwrap_or_default());
    }
    out.drain(..delay.min(out.len()));
    out.truncate(expected);
    Ok(out)
}

fn ms(frames: u64, rate: u32) -> u64 {
    frames * 1000 / u64::from(rate.max(1))
}

fn symphonia_error(e: SymError) -> ImportError {
    match e {
        SymError::Unsupported(what) => ImportError::Unsupported(what.to_string()),
        SymError::LimitError(what) => ImportError::Unsupported(format!("limit: {what}")),
        other => ImportError::Corrupt(other.to_string()),
    }
}

fn format_of(params: &CodecParameters) -> SourceFormat {
    match params.codec {
        CODEC_TYPE_MP3 => SourceFormat::Mp3,
        CODEC_TYPE_VORBIS => SourceFormat::Vorbis,
        CODEC_TYPE_OPUS => SourceFormat::Opus,
        CODEC_TYPE_FLAC => SourceFormat::Flac,
        // The only other codec compiled in is PCM, which comes only in WAV here.
        _ => SourceFormat::Wav,
    }
}

/// Probes by content and decodes to mono at the source rate, with every limit enforced.
fn decode_source(bytes: &[u8], hint: Option<&str>) -> Result<Decoded, ImportError> {
    let clean = super::sanitize::sanitize(bytes, hint)?.into_owned();
    let mss = MediaSourceStream::new(Box::new(Cursor::new(clean)), Default::default());
    let format_opts = FormatOptions {
        enable_gapless: true,
        ..Default::default()
    };
    let probed = symphonia::default::get_probe()
        .format(&Hint::new(), mss, &format_opts, &MetadataOptions::default())
        .map_err(|e| match e {
            // No reader recognised the content.
            SymError::Unsupported(_) => ImportError::Unrecognized {
                claimed: hint.map(|h| h.trim_start_matches('.').to_ascii_lowercase()),
            },
            // A reader recognised it, then ran out of data reading its headers (or, for Ogg,
            // looking for the last page that gives the length).
            SymError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                ImportError::Corrupt("the data ends early (a truncated file?)".into())
            }
            other => symphonia_error(other),
        })?;
    let mut reader = probed.format;
    let track = reader
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| ImportError::Unsupported("no audio track".into()))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let format = format_of(&params);
    let rate = params
        .sample_rate
        .ok_or_else(|| ImportError::Unsupported("unknown sample rate".into()))?;
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(ImportError::Unsupported(format!(
            "sample rate: expected {MIN_RATE}..={MAX_RATE} Hz, got {rate}"
        )));
    }
    let max_frames = u64::from(rate) * u64::from(MAX_CLIP_MS + DURATION_MARGIN_MS) / 1000;
    // A declared length past the limit is refused before a single packet is decoded.
    if let Some(declared) = params.n_frames
        && declared > max_frames
    {
        return Err(ImportError::TooLong {
            max_ms: MAX_CLIP_MS,
            got_ms: ms(declared, rate),
        });
    }
    let mut sink = MonoSink {
        rate,
        max_frames,
        mono: Vec::new(),
    };
    let ended_early = if format == SourceFormat::Opus {
        decode_opus(reader.as_mut(), track_id, &params, &mut sink)?
    } else {
        let mut decoder = symphonia::default::get_codecs()
            .make(&params, &DecoderOptions::default())
            .map_err(symphonia_error)?;
        let mut buf: Option<SampleBuffer<f32>> = None;
        read_packets(reader.as_mut(), track_id, |packet| {
            let audio = decoder.decode(packet).map_err(symphonia_error)?;
            let spec = *audio.spec();
            if spec.rate != rate {
                return Err(ImportError::Unsupported(format!(
                    "sample rate changes mid-stream ({rate} to {} Hz)",
                    spec.rate
                )));
            }
            let channels = spec.channels.count();
            if channels == 0 || channels > MAX_CHANNELS {
                return Err(ImportError::Unsupported(format!(
                    "channels: expected 1..={MAX_CHANNELS}, got {channels}"
                )));
            }
            let needed = audio.capacity() * channels;
            if buf.as_ref().is_none_or(|b| b.capacity() < needed) {
                buf = Some(SampleBuffer::new(audio.capacity() as u64, spec));
            }
            if let Some(b) = buf.as_mut() {
                b.copy_interleaved_ref(audio);
                sink.push_interleaved(b.samples(), channels)?;
            }
            Ok(())
        })?
    };
    if let Some(declared) = params.n_frames {
        let got = sink.mono.len() as u64;
        let slack = u64::from(rate) * TRUNCATION_SLACK_MS / 1000;
        if ended_early && got + slack < declared {
            return Err(ImportError::Truncated {
                declared_ms: ms(declared, rate),
                got_ms: ms(got, rate),
            });
        }
    }
    if ended_early && params.n_frames.is_none() && sink.mono.is_empty() {
        return Err(ImportError::Corrupt(
            "the data ends before any audio".into(),
        ));
    }
    if sink.mono.is_empty() {
        return Err(ImportError::Empty);
    }
    Ok(Decoded {
        format,
        rate,
        mono: sink.mono,
    })
}

/// Accumulates downmixed audio and enforces the duration limit as it grows.
struct MonoSink {
    rate: u32,
    max_frames: u64,
    mono: Vec<f32>,
}

impl MonoSink {
    fn check(&self, adding: usize) -> Result<(), ImportError> {
        let total = self.mono.len() as u64 + adding as u64;
        if total > self.max_frames {
            return Err(ImportError::TooLong {
                max_ms: MAX_CLIP_MS,
                got_ms: ms(total, self.rate),
            });
        }
        Ok(())
    }

    fn push_interleaved(&mut self, samples: &[f32], channels: usize) -> Result<(), ImportError> {
        self.check(samples.len() / channels.max(1))?;
        let scale = 1.0 / channels as f32;
        self.mono.extend(
            samples
                .chunks_exact(channels)
                .map(|frame| frame.iter().sum::<f32>() * scale),
        );
        Ok(())
    }
}

/// Reads the track's packets into `on_packet`. Returns whether the data ended in the middle of
/// something (an unexpected end of file) rather than cleanly.
fn read_packets(
    reader: &mut dyn FormatReader,
    track_id: u32,
    mut on_packet: impl FnMut(&Packet) -> Result<(), ImportError>,
) -> Result<bool, ImportError> {
    for _ in 0..MAX_PACKETS {
        let packet = match reader.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(true);
            }
            Err(SymError::ResetRequired) => {
                return Err(ImportError::Unsupported("chained streams".into()));
            }
            Err(e) => return Err(symphonia_error(e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        on_packet(&packet)?;
    }
    Err(ImportError::Corrupt(format!(
        "more than {MAX_PACKETS} packets"
    )))
}

/// Decodes the Opus packets symphonia's Ogg reader hands out with libopus, honouring the
/// pre-skip and end trimming the reader computes from the granule positions.
fn decode_opus(
    reader: &mut dyn FormatReader,
    track_id: u32,
    params: &CodecParameters,
    sink: &mut MonoSink,
) -> Result<bool, ImportError> {
    // OpusHead: "OpusHead", version, channels, pre-skip (2), rate (4), gain (2), mapping family.
    let head = params.extra_data.as_deref().unwrap_or_default();
    let family = head.get(18).copied().unwrap_or(0);
    if family != 0 {
        return Err(ImportError::Unsupported(format!(
            "multichannel Opus (channel mapping family {family})"
        )));
    }
    // A mono decoder takes both mono and stereo packets; libopus downmixes stereo itself.
    let mut dec = opus::Decoder::new(CLIP_RATE, Channels::Mono)
        .map_err(|e| ImportError::Unsupported(format!("Opus decoder: {e}")))?;
    let mut frame = vec![0i16; MAX_OPUS_PACKET_SAMPLES];
    read_packets(reader, track_id, |packet| {
        let n = dec
            .decode(&packet.data, &mut frame, false)
            .map_err(|e| ImportError::Corrupt(format!("Opus packet: {e}")))?;
        let start = (packet.trim_start() as usize).min(n);
        let end = n.saturating_sub(packet.trim_end() as usize).max(start);
        let samples: Vec<f32> = frame[start..end]
            .iter()
            .map(|&s| f32::from(s) / 32_768.0)
            .collect();
        sink.push_interleaved(&samples, 1)
    })
}

#[cfg(test)]
mod tests;
