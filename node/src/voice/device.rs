//! Audio input and output behind one trait pair: WAV files, a null device, and cpal.
//!
//! The pipeline pulls 20 ms frames from an [`AudioSource`] and pushes 20 ms frames into an
//! [`AudioSink`]. Tests, bots and headless nodes use [`WavSource`]/[`WavSink`] or
//! [`NullSource`]/[`NullSink`]; the desktop uses [`CpalInput`]/[`CpalOutput`].
//!
//! # cpal
//!
//! cpal 0.15 on Linux talks to ALSA (hence `libasound2-dev` and `pkg-config` in
//! `scripts/install-deps.sh`). The streams are opened as mono, 48 kHz, `f32` (ALSA's `plug`
//! layer converts when the card differs); a device that refuses that configuration is reported
//! as [`DeviceError::Backend`], not resampled (yet). Opening fails with an error, never a panic,
//! when there is no sound card, as on the development and CI machines. If a device disappears
//! mid-stream, cpal's error callback is recorded and the next `read_frame`/`write_frame`
//! returns [`DeviceError::Disconnected`]; the caller reopens (possibly another device).

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use thiserror::Error;

use super::{FRAME_SAMPLES, Frame, SAMPLE_RATE};

/// Why an audio device could not be opened, read or written.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// A WAV file could not be opened, read or written.
    #[error("WAV file {path}: {message}")]
    Wav {
        /// The file.
        path: String,
        /// What hound reported.
        message: String,
    },
    /// The audio format is not one the pipeline takes.
    #[error("unsupported audio format: expected {expected}, got {got}")]
    Format {
        /// What is accepted.
        expected: &'static str,
        /// What was found.
        got: String,
    },
    /// No device of that direction (and name, if one was asked for) exists.
    #[error("no {direction} audio device{}", .name.as_ref().map(|n| format!(" named {n:?}")).unwrap_or_default())]
    NoDevice {
        /// "input" or "output".
        direction: &'static str,
        /// The name asked for, if any.
        name: Option<String>,
    },
    /// The audio backend (ALSA through cpal) refused an operation.
    #[error("audio backend: {0}")]
    Backend(String),
    /// The device reported an error or vanished while streaming; reopen it.
    #[error("audio device disconnected: {0}")]
    Disconnected(String),
}

/// Where 20 ms frames of captured audio come from.
pub trait AudioSource {
    /// Fills `frame` with the next 20 ms. Returns `false` when the source has ended (then
    /// `frame` is silence); a last partial frame is padded with silence and returns `true`.
    fn read_frame(&mut self, frame: &mut Frame) -> Result<bool, DeviceError>;
}

/// Where audio to play goes (the call engine writes 10 ms at a time).
pub trait AudioSink {
    /// Plays (or stores) the next samples (48 kHz mono).
    fn write_samples(&mut self, samples: &[i16]) -> Result<(), DeviceError>;
    /// Plays (or stores) one 20 ms frame.
    fn write_frame(&mut self, frame: &Frame) -> Result<(), DeviceError> {
        self.write_samples(frame)
    }
    /// Pushes out whatever is buffered (a WAV file's header and data).
    fn flush(&mut self) -> Result<(), DeviceError>;
}

// ---------------------------------------------------------------------------------------------
// WAV files

fn wav_err(path: &Path, e: hound::Error) -> DeviceError {
    DeviceError::Wav {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Reads a 48 kHz WAV file (mono or stereo, 16-bit integer or 32-bit float) as mono frames.
#[derive(Debug)]
pub struct WavSource {
    samples: std::vec::IntoIter<i16>,
}

impl WavSource {
    /// Opens `path`; other sample rates and sample formats are refused with
    /// [`DeviceError::Format`] (resample with `sox in.wav -r 48000 -c 1 -b 16 out.wav`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DeviceError> {
        let path = path.as_ref();
        let reader = hound::WavReader::open(path).map_err(|e| wav_err(path, e))?;
        let spec = reader.spec();
        if spec.sample_rate != SAMPLE_RATE {
            return Err(DeviceError::Format {
                expected: "48000 Hz",
                got: format!("{} Hz", spec.sample_rate),
            });
        }
        let channels = usize::from(spec.channels);
        if !(1..=2).contains(&channels) {
            return Err(DeviceError::Format {
                expected: "1 or 2 channels",
                got: format!("{channels} channels"),
            });
        }
        let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Int, 16) => reader
                .into_samples::<i16>()
                .map(|s| s.map(f32::from))
                .collect::<Result<_, _>>()
                .map_err(|e| wav_err(path, e))?,
            (hound::SampleFormat::Float, 32) => reader
                .into_samples::<f32>()
                .map(|s| s.map(|v| v * 32768.0))
                .collect::<Result<_, _>>()
                .map_err(|e| wav_err(path, e))?,
            (format, bits) => {
                return Err(DeviceError::Format {
                    expected: "16-bit integer or 32-bit float samples",
                    got: format!("{bits}-bit {format:?}"),
                });
            }
        };
        let mono: Vec<i16> = interleaved
            .chunks(channels)
            .map(|c| to_i16(c.iter().sum::<f32>() / c.len() as f32))
            .collect();
        Ok(Self::from_samples(mono))
    }

    /// A source over samples already in memory (48 kHz mono).
    pub fn from_samples(samples: Vec<i16>) -> Self {
        Self {
            samples: samples.into_iter(),
        }
    }
}

fn to_i16(v: f32) -> i16 {
    v.round().clamp(-32768.0, 32767.0) as i16
}

impl AudioSource for WavSource {
    fn read_frame(&mut self, frame: &mut Frame) -> Result<bool, DeviceError> {
        let mut n = 0;
        for (dst, src) in frame.iter_mut().zip(&mut self.samples) {
            *dst = src;
            n += 1;
        }
        frame[n..].fill(0);
        Ok(n > 0)
    }
}

/// Writes frames to a 48 kHz mono 16-bit WAV file.
pub struct WavSink {
    path: String,
    writer: Option<hound::WavWriter<BufWriter<File>>>,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink")
            .field("path", &self.path)
            .field("open", &self.writer.is_some())
            .finish()
    }
}

/// The WAV format the pipeline writes.
pub fn wav_spec() -> hound::WavSpec {
    hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

impl WavSink {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, DeviceError> {
        let path = path.as_ref();
        let writer = hound::WavWriter::create(path, wav_spec()).map_err(|e| wav_err(path, e))?;
        Ok(Self {
            path: path.display().to_string(),
            writer: Some(writer),
        })
    }

    /// Completes the file's header; further writes fail.
    pub fn finish(&mut self) -> Result<(), DeviceError> {
        match self.writer.take() {
            Some(w) => w.finalize().map_err(|e| wav_err(Path::new(&self.path), e)),
            None => Ok(()),
        }
    }
}

impl AudioSink for WavSink {
    fn write_samples(&mut self, samples: &[i16]) -> Result<(), DeviceError> {
        let path = Path::new(&self.path);
        let w = self.writer.as_mut().ok_or_else(|| DeviceError::Wav {
            path: self.path.clone(),
            message: "already finished".into(),
        })?;
        for s in samples {
            w.write_sample(*s).map_err(|e| wav_err(path, e))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        match self.writer.as_mut() {
            Some(w) => w.flush().map_err(|e| wav_err(Path::new(&self.path), e)),
            None => Ok(()),
        }
    }
}

impl Drop for WavSink {
    fn drop(&mut self) {
        // Best effort: a sink dropped without `finish` still leaves a readable file.
        let _ = self.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// Null device

/// Silence, for a given number of frames or forever.
#[derive(Debug, Clone)]
pub struct NullSource {
    remaining: Option<u64>,
}

impl NullSource {
    /// Silence that never ends.
    pub fn endless() -> Self {
        Self { remaining: None }
    }

    /// `frames` frames of silence, then the end.
    pub fn frames(frames: u64) -> Self {
        Self {
            remaining: Some(frames),
        }
    }
}

impl AudioSource for NullSource {
    fn read_frame(&mut self, frame: &mut Frame) -> Result<bool, DeviceError> {
        frame.fill(0);
        match &mut self.remaining {
            None => Ok(true),
            Some(0) => Ok(false),
            Some(n) => {
                *n -= 1;
                Ok(true)
            }
        }
    }
}

/// Discards audio, counting frames.
#[derive(Debug, Clone, Default)]
pub struct NullSink {
    /// Whole 20 ms frames written so far.
    pub frames: u64,
    /// Samples written so far.
    pub samples: u64,
}

impl AudioSink for NullSink {
    fn write_samples(&mut self, samples: &[i16]) -> Result<(), DeviceError> {
        self.samples += samples.len() as u64;
        self.frames = self.samples / FRAME_SAMPLES as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// cpal

/// Frames queued between the audio thread and the pipeline (200 ms).
const CPAL_QUEUE_FRAMES: usize = 10;
/// How long `read_frame` waits for the device before calling it stalled.
const CPAL_READ_TIMEOUT: Duration = Duration::from_millis(500);

fn stream_config() -> cpal::StreamConfig {
    cpal::StreamConfig {
        channels: 1,
        sample_rate: cpal::SampleRate(SAMPLE_RATE),
        buffer_size: cpal::BufferSize::Default,
    }
}

/// Names of the input (`input == true`) or output devices of the default host.
pub fn cpal_device_names(input: bool) -> Result<Vec<String>, DeviceError> {
    let host = cpal::default_host();
    let devices: Vec<cpal::Device> = if input {
        host.input_devices()
            .map_err(|e| DeviceError::Backend(e.to_string()))?
            .collect()
    } else {
        host.output_devices()
            .map_err(|e| DeviceError::Backend(e.to_string()))?
            .collect()
    };
    Ok(devices.iter().filter_map(|d| d.name().ok()).collect())
}

fn find_device(input: bool, name: Option<&str>) -> Result<cpal::Device, DeviceError> {
    let direction = if input { "input" } else { "output" };
    let host = cpal::default_host();
    let found = match name {
        None if input => host.default_input_device(),
        None => host.default_output_device(),
        Some(wanted) => {
            let mut devices = if input {
                host.input_devices()
            } else {
                host.output_devices()
            }
            .map_err(|e| DeviceError::Backend(e.to_string()))?;
            devices.find(|d| d.name().is_ok_and(|n| n == wanted))
        }
    };
    found.ok_or_else(|| DeviceError::NoDevice {
        direction,
        name: name.map(str::to_owned),
    })
}

/// The first error cpal's error callback reported, shared with the audio thread.
type StreamFault = Arc<Mutex<Option<String>>>;

fn record_fault(fault: &StreamFault, err: cpal::StreamError) {
    if let Ok(mut f) = fault.lock() {
        f.get_or_insert_with(|| err.to_string());
    }
}

fn take_fault(fault: &StreamFault) -> Option<String> {
    fault.lock().ok().and_then(|f| f.clone())
}

/// Microphone input through cpal.
pub struct CpalInput {
    _stream: cpal::Stream,
    rx: Receiver<Vec<f32>>,
    pending: VecDeque<f32>,
    fault: StreamFault,
    name: String,
}

impl std::fmt::Debug for CpalInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpalInput")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CpalInput {
    /// Opens the input device called `name`, or the default one, and starts capturing.
    pub fn open(name: Option<&str>) -> Result<Self, DeviceError> {
        let device = find_device(true, name)?;
        let name = device.name().unwrap_or_else(|_| "<unnamed>".into());
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<f32>>(CPAL_QUEUE_FRAMES * 4);
        let fault: StreamFault = Arc::default();
        let cb_fault = fault.clone();
        let stream = device
            .build_input_stream(
                &stream_config(),
                move |data: &[f32], _: &cpal::InputCallbackInfo| {
                    // A full queue means the pipeline stalled; dropping audio is all the audio
                    // thread can do without blocking.
                    let _ = tx.try_send(data.to_vec());
                },
                move |err| record_fault(&cb_fault, err),
                None,
            )
            .map_err(|e| DeviceError::Backend(format!("input {name:?}: {e}")))?;
        stream
            .play()
            .map_err(|e| DeviceError::Backend(format!("input {name:?}: {e}")))?;
        Ok(Self {
            _stream: stream,
            rx,
            pending: VecDeque::new(),
            fault,
            name,
        })
    }
}

impl AudioSource for CpalInput {
    fn read_frame(&mut self, frame: &mut Frame) -> Result<bool, DeviceError> {
        while self.pending.len() < FRAME_SAMPLES {
            if let Some(f) = take_fault(&self.fault) {
                return Err(DeviceError::Disconnected(f));
            }
            match self.rx.recv_timeout(CPAL_READ_TIMEOUT) {
                Ok(chunk) => self.pending.extend(chunk),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(DeviceError::Disconnected(format!(
                        "input {:?} delivered no audio for {CPAL_READ_TIMEOUT:?}",
                        self.name
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(DeviceError::Disconnected(format!(
                        "input {:?} stream closed",
                        self.name
                    )));
                }
            }
        }
        for (dst, src) in frame.iter_mut().zip(self.pending.drain(..FRAME_SAMPLES)) {
            *dst = to_i16(src * 32768.0);
        }
        Ok(true)
    }
}

/// Speaker output through cpal.
pub struct CpalOutput {
    _stream: cpal::Stream,
    tx: SyncSender<Vec<f32>>,
    fault: StreamFault,
    name: String,
}

impl std::fmt::Debug for CpalOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpalOutput")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CpalOutput {
    /// Opens the output device called `name`, or the default one, and starts playing
    /// (silence until frames arrive).
    pub fn open(name: Option<&str>) -> Result<Self, DeviceError> {
        let device = find_device(false, name)?;
        let name = device.name().unwrap_or_else(|_| "<unnamed>".into());
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<f32>>(CPAL_QUEUE_FRAMES);
        let fault: StreamFault = Arc::default();
        let cb_fault = fault.clone();
        let mut left = VecDeque::<f32>::new();
        let stream = device
            .build_output_stream(
                &stream_config(),
                move |out: &mut [f32], _: &cpal::OutputCallbackInfo| {
                    while left.len() < out.len() {
                        match rx.try_recv() {
                            Ok(chunk) => left.extend(chunk),
                            Err(_) => break,
                        }
                    }
                    for o in out.iter_mut() {
                        // Underflow plays silence.
                        *o = left.pop_front().unwrap_or(0.0);
                    }
                },
                move |err| record_fault(&cb_fault, err),
                None,
            )
            .map_err(|e| DeviceError::Backend(format!("output {name:?}: {e}")))?;
        stream
            .play()
            .map_err(|e| DeviceError::Backend(format!("output {name:?}: {e}")))?;
        Ok(Self {
            _stream: stream,
            tx,
            fault,
            name,
        })
    }
}

impl AudioSink for CpalOutput {
    fn write_samples(&mut self, samples: &[i16]) -> Result<(), DeviceError> {
        if let Some(f) = take_fault(&self.fault) {
            return Err(DeviceError::Disconnected(f));
        }
        let chunk: Vec<f32> = samples.iter().map(|s| f32::from(*s) / 32768.0).collect();
        match self.tx.try_send(chunk) {
            Ok(()) => Ok(()),
            // The device plays slower than we write (or not at all): drop, as a real-time
            // path must not block. The jitter buffer upstream absorbs the difference.
            Err(TrySendError::Full(_)) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(DeviceError::Disconnected(format!(
                "output {:?} stream closed",
                self.name
            ))),
        }
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<i16> {
        (0..n).map(|i| ((i % 2000) as i16 - 1000) * 7).collect()
    }

    #[test]
    fn wav_round_trip_through_sink_and_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let input = ramp(FRAME_SAMPLES * 3 + 100);
        let mut src = WavSource::from_samples(input.clone());
        let mut sink = WavSink::create(&path).unwrap();
        let mut frame = [0i16; FRAME_SAMPLES];
        let mut frames = 0;
        while src.read_frame(&mut frame).unwrap() {
            sink.write_frame(&frame).unwrap();
            frames += 1;
        }
        assert_eq!(frames, 4, "the partial last frame counts");
        sink.finish().unwrap();

        let mut back = WavSource::open(&path).unwrap();
        let mut got = Vec::new();
        while back.read_frame(&mut frame).unwrap() {
            got.extend_from_slice(&frame);
        }
        assert_eq!(got.len(), FRAME_SAMPLES * 4);
        assert_eq!(&got[..input.len()], &input[..]);
        assert!(
            got[input.len()..].iter().all(|s| *s == 0),
            "padded with silence"
        );
    }

    #[test]
    fn wav_stereo_is_downmixed_and_wrong_rate_refused() {
        let dir = tempfile::tempdir().unwrap();
        let stereo = dir.path().join("s.wav");
        let mut spec = wav_spec();
        spec.channels = 2;
        let mut w = hound::WavWriter::create(&stereo, spec).unwrap();
        for i in 0..FRAME_SAMPLES as i16 {
            w.write_sample(i).unwrap();
            w.write_sample(i + 2).unwrap();
        }
        w.finalize().unwrap();
        let mut frame = [0; FRAME_SAMPLES];
        assert!(
            WavSource::open(&stereo)
                .unwrap()
                .read_frame(&mut frame)
                .unwrap()
        );
        assert_eq!(frame[10], 11);

        let slow = dir.path().join("r.wav");
        spec.channels = 1;
        spec.sample_rate = 16_000;
        hound::WavWriter::create(&slow, spec)
            .unwrap()
            .finalize()
            .unwrap();
        let err = WavSource::open(&slow).unwrap_err();
        assert!(
            err.to_string().contains("expected 48000 Hz, got 16000 Hz"),
            "{err}"
        );
        assert!(matches!(
            WavSource::open(dir.path().join("missing.wav")),
            Err(DeviceError::Wav { .. })
        ));
    }

    #[test]
    fn null_devices() {
        let mut src = NullSource::frames(2);
        let mut frame = [1; FRAME_SAMPLES];
        assert!(src.read_frame(&mut frame).unwrap());
        assert_eq!(frame, [0; FRAME_SAMPLES]);
        assert!(src.read_frame(&mut frame).unwrap());
        assert!(!src.read_frame(&mut frame).unwrap());
        let mut sink = NullSink::default();
        sink.write_frame(&frame).unwrap();
        assert_eq!(sink.frames, 1);
    }

    /// Without a sound card (this machine, CI) opening cpal devices is an error, not a panic.
    #[test]
    fn cpal_without_a_sound_card_is_an_error() {
        let no_card = std::fs::read_to_string("/proc/asound/cards")
            .map(|c| c.contains("no soundcards") || c.trim().is_empty())
            .unwrap_or(true);
        let input = CpalInput::open(None);
        let output = CpalOutput::open(None);
        let named = CpalInput::open(Some("no such device"));
        assert!(matches!(
            named,
            Err(DeviceError::NoDevice { .. }) | Err(DeviceError::Backend(_))
        ));
        if no_card {
            let e = input.expect_err("input opened without a sound card");
            assert!(!e.to_string().is_empty());
            assert!(output.is_err(), "output opened without a sound card");
        }
    }
}
