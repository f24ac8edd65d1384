//! Capture processing (issue 9, item 2): echo cancellation, noise suppression and voice
//! activity detection for the 20 ms frames the engine sends. Push-to-talk is the engine's gate,
//! not this module's: it simply does not send while the key is up.
//!
//! # How the engine calls it
//!
//! One [`Processor`] per call, owned by the engine thread. In every 20 ms tick:
//!
//! ```text
//! read the captured frame f
//! let c = processor.capture(&mut f);   // AEC, then NS, in place; c.speech for VAD mode
//! encode f (or DTX / nothing when VAD mode is on and !c.speech, or push-to-talk is up)
//! mix the remote frames into `out`
//! processor.far_end(&out);             // exactly what is written to the output device
//! write `out`
//! ```
//!
//! So the far-end frame handed over in tick `n` is used for the capture of tick `n + 1`:
//! `far_end` pushes 960 samples into a FIFO and `capture` takes 960 from it (silence when the
//! FIFO is short, e.g. when deafened the engine should still pass the silence it plays). The
//! far-end samples are lined up sample for sample with that next capture frame, after an
//! optional extra delay [`ProcessConfig::far_end_delay_ms`]. The echo canceller then models
//! what is left: the output device's buffering, the input device's buffering and the
//! acoustic path, which must together fit in [`ProcessConfig::echo_tail_ms`] (default 160 ms,
//! of which the room's impulse response takes some tens of ms on a laptop). An engine that
//! knows its device latencies (cpal reports buffer sizes) can move the bulk of it into
//! `far_end_delay_ms` and keep the tail short, which is cheaper. An echo that arrives *before*
//! its far-end frame (negative delay) cannot be cancelled: never hand the far end over late.
//!
//! Output delay: noise suppression (RNNoise) delays the frame by 10 ms (480 samples, its
//! overlap-add window); the echo canceller adds none. With NS off, nothing is delayed.
//!
//! # Library choices (searched November 2026; all build offline here, from crates.io)
//!
//! * Noise suppression and the voice probability: [`nnnoiseless`] 0.5, the pure-Rust port of
//!   Xiph's RNNoise (48 kHz, 480-sample frames, `f32` samples in the `i16` range, a VAD
//!   probability per frame), built with `default-features = false` so its command-line tool's
//!   dependencies (clap, hound, dasp) stay out.
//! * Echo cancellation: written here, on [`realfft`]. What was tried:
//!   - `aec3` 0.4 (pure-Rust port of WebRTC AEC3, with its own NS and AGC): builds, and in a
//!     throwaway probe (30 ms delay, 50 ms random decaying response, noise-and-tone far end,
//!     no near end) its echo-cancel-only pipeline reached 40-60 dB of ERLE, but it cost about
//!     0.41 ms per 10 ms of audio on this machine in release (0.83 ms per 20 ms frame, nearly
//!     three times the whole send budget of issue 9), and its API is declared unstable (a
//!     graph runtime, reworked in each minor release). The strongest candidate if the budget
//!     is ever relaxed.
//!   - `aec-rs` 1.0 (speexdsp's MDF through `aec-rs-sys`): its build script runs bindgen, which
//!     needs libclang, not installed here; rejected for the system dependency.
//!   - `sonora-aec3` 0.2 (another AEC3 port): needs Rust 1.91, above the workspace's 1.90, and
//!     only the echo core (the 48 kHz band splitting lives in other crates of its family).
//!   - `speexdsp` 0.1.2 (a c2rust translation of speexdsp): last released in 2022, machine
//!     translated C with raw pointers; not maintained.
//!   - `webrtc-audio-processing`: builds the C++ WebRTC library with meson and abseil; too heavy
//!     (not tried).
//!
//!   The canceller here is a partitioned-block frequency-domain adaptive filter (the
//!   multidelay filter, MDF, of Soo and Pang, with the step size controlled from the estimated
//!   residual-echo leakage as Valin describes for Speex) plus a residual echo suppressor. See
//!   [`EchoCanceller`] for the details and the trade-offs.
//!
//! # Measured (November 2026, this 2-core machine)
//!
//! From the unit tests (synthetic voiced signals; no recorded speech is committed):
//! noise suppression lowers a white-noise floor 20 dB under the voice by 24 dB with the
//! voice's level unchanged (correlation 0.998); VAD finds 112 of 112 speech frames, flags 2 of
//! 240 idle frames (syllable onsets) and no frame of steady noise or silence; the echo
//! canceller (30 ms delay, 60 ms of reflections, -6 dB) passes 20 dB of ERLE after 1.2 s of
//! far-end talk and averages 30 dB, keeps the near-end talker during double talk
//! (correlation 0.97), and after an echo path change is back above 20 dB in 3.1 s.
//! CPU per 20 ms frame, release, thread CPU time (`benches/voice_process.rs`): RNNoise (NS
//! and/or VAD) 117 us, echo canceller 55 / 67 / 91 us for 80 / 160 / 320 ms tails, all
//! together 186 us. With Opus' ~270 us that is ~455 us per sent frame, over issue 9's 300 us:
//! RNNoise is the larger part (nnnoiseless has no SIMD), and VAD needs it too: there is no
//! energy-only VAD mode yet.
//!
//! # Voice activity
//!
//! A frame is speech when RNNoise's voice probability (the larger of the two halves) is at
//! least [`ProcessConfig::vad_threshold`] *and* the processed frame is louder than
//! [`ProcessConfig::vad_min_dbfs`] (an energy gate, so faint background voices do not open it).
//! Speech is then held for [`ProcessConfig::hangover_ms`] after the last speech frame, so
//! word endings and short pauses are not clipped. With `vad: false` nothing is computed and
//! every frame is reported as speech.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use nnnoiseless::DenoiseState;
use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use thiserror::Error;

use super::{FRAME_MS, FRAME_SAMPLES, Frame, SAMPLE_RATE};

/// Samples per processing block: half a frame (10 ms), RNNoise's frame size and the echo
/// canceller's block.
pub const BLOCK: usize = FRAME_SAMPLES / 2;
const FFT_LEN: usize = 2 * BLOCK;
const BINS: usize = BLOCK + 1;
/// Most far-end frames waiting in the FIFO before the oldest are dropped (a `far_end` called
/// without matching `capture` calls must not grow memory).
const MAX_FAR_FRAMES: usize = 8;
/// Longest echo tail accepted.
pub const MAX_ECHO_TAIL_MS: u32 = 500;
/// Largest extra far-end delay accepted.
pub const MAX_FAR_END_DELAY_MS: u32 = 500;
/// Frames (20 ms) after creation during which a frame needs [`WARMUP_THRESHOLD`] to count as
/// speech.
const WARMUP_FRAMES: u32 = 15;
const WARMUP_THRESHOLD: f32 = 0.9;
/// Level reported for digital silence.
pub const SILENCE_DBFS: f32 = -120.0;

/// What to run on the captured audio.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessConfig {
    /// Cancel the echo of the far end (needs [`Processor::far_end`]).
    pub echo_cancel: bool,
    /// Suppress stationary and non-stationary noise (RNNoise).
    pub noise_suppress: bool,
    /// Decide speech / not speech per frame (RNNoise's probability and an energy gate).
    pub vad: bool,
    /// Length of echo path the canceller models, ms (device buffering plus room), 10 ..= 500.
    /// The cost is linear in it.
    pub echo_tail_ms: u32,
    /// Extra delay applied to the far end before the canceller, ms (known device latency).
    pub far_end_delay_ms: u32,
    /// RNNoise voice probability at or above which a frame may be speech (0..1).
    pub vad_threshold: f32,
    /// Frames quieter than this (after processing, dBFS) are never speech.
    pub vad_min_dbfs: f32,
    /// How long speech is held after the last speech frame, ms.
    pub hangover_ms: u32,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            echo_cancel: true,
            noise_suppress: true,
            vad: true,
            echo_tail_ms: 160,
            far_end_delay_ms: 0,
            vad_threshold: 0.7,
            vad_min_dbfs: -55.0,
            hangover_ms: 240,
        }
    }
}

/// Why a [`Processor`] could not be built.
#[derive(Debug, Error, PartialEq)]
pub enum ProcessError {
    /// A configuration value is out of range.
    #[error("{field}: expected {expected}, got {got}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is accepted.
        expected: &'static str,
        /// What was given.
        got: String,
    },
}

/// What [`Processor::capture`] found in one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capture {
    /// The frame holds speech (after hangover). Always `true` when VAD is off.
    pub speech: bool,
    /// RNNoise's voice probability for this frame (larger of its two halves), when it ran.
    pub voice_probability: Option<f32>,
    /// RMS level of the processed frame, dBFS ([`SILENCE_DBFS`] for digital silence).
    pub level_dbfs: f32,
    /// Smoothed echo return loss enhancement of the canceller's linear filter, dB: microphone
    /// power over the canceller's output power, measured only while the far end is active.
    /// `None` when echo cancellation is off or the far end has not been active yet. It
    /// underestimates during double talk (the near-end voice counts as residual).
    pub echo_return_loss_enhancement_db: Option<f32>,
}

/// Capture processing for one call. See the module documentation for how to call it.
pub struct Processor {
    cfg: ProcessConfig,
    far: VecDeque<i16>,
    aec: Option<EchoCanceller>,
    rnnoise: Option<Box<DenoiseState<'static>>>,
    hangover_frames: u32,
    hold: u32,
    frames: u32,
    block_in: [f32; BLOCK],
    block_out: [f32; BLOCK],
    far_block: [f32; BLOCK],
}

impl fmt::Debug for Processor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processor")
            .field("cfg", &self.cfg)
            .field("far_buffered", &self.far.len())
            .field("hold", &self.hold)
            .finish_non_exhaustive()
    }
}

impl Processor {
    /// Builds a processor. Fails only on out-of-range configuration values.
    pub fn new(cfg: ProcessConfig) -> Result<Self, ProcessError> {
        if !(10..=MAX_ECHO_TAIL_MS).contains(&cfg.echo_tail_ms) {
            return Err(ProcessError::Config {
                field: "echo_tail_ms",
                expected: "10 ..= 500",
                got: cfg.echo_tail_ms.to_string(),
            });
        }
        if cfg.far_end_delay_ms > MAX_FAR_END_DELAY_MS {
            return Err(ProcessError::Config {
                field: "far_end_delay_ms",
                expected: "0 ..= 500",
                got: cfg.far_end_delay_ms.to_string(),
            });
        }
        if !(0.0..=1.0).contains(&cfg.vad_threshold) {
            return Err(ProcessError::Config {
                field: "vad_threshold",
                expected: "0.0 ..= 1.0",
                got: cfg.vad_threshold.to_string(),
            });
        }
        if !cfg.vad_min_dbfs.is_finite() {
            return Err(ProcessError::Config {
                field: "vad_min_dbfs",
                expected: "a finite level",
                got: cfg.vad_min_dbfs.to_string(),
            });
        }
        let delay = (cfg.far_end_delay_ms * SAMPLE_RATE / 1000) as usize;
        let mut far = VecDeque::with_capacity(delay + (MAX_FAR_FRAMES + 1) * FRAME_SAMPLES);
        far.extend(std::iter::repeat_n(0i16, delay));
        let partitions = (cfg.echo_tail_ms as usize).div_ceil(10);
        let aec = cfg.echo_cancel.then(|| EchoCanceller::new(partitions));
        let rnnoise = (cfg.noise_suppress || cfg.vad).then(DenoiseState::new);
        Ok(Processor {
            hangover_frames: cfg.hangover_ms.div_ceil(FRAME_MS),
            cfg,
            far,
            aec,
            rnnoise,
            hold: 0,
            frames: 0,
            block_in: [0.0; BLOCK],
            block_out: [0.0; BLOCK],
            far_block: [0.0; BLOCK],
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &ProcessConfig {
        &self.cfg
    }

    /// The frame about to be played (the far end, after mixing and gain), handed over after
    /// this tick's capture and before the next one. Cheap: a copy into a FIFO.
    pub fn far_end(&mut self, played: &Frame) {
        if self.aec.is_none() {
            return;
        }
        let delay = (self.cfg.far_end_delay_ms * SAMPLE_RATE / 1000) as usize;
        let max = delay + MAX_FAR_FRAMES * FRAME_SAMPLES;
        self.far.extend(played.iter().copied());
        while self.far.len() > max {
            self.far.pop_front();
        }
    }

    /// Cleans one captured frame in place (echo cancellation, then noise suppression) and
    /// says whether it holds speech. Never panics; the output is always finite and clamped.
    pub fn capture(&mut self, frame: &mut Frame) -> Capture {
        let mut prob: Option<f32> = None;
        for half in 0..2 {
            let range = half * BLOCK..(half + 1) * BLOCK;
            for (b, &s) in self.block_in.iter_mut().zip(frame[range.clone()].iter()) {
                *b = f32::from(s);
            }
            if let Some(aec) = self.aec.as_mut() {
                for f in self.far_block.iter_mut() {
                    *f = self.far.pop_front().map_or(0.0, f32::from);
                }
                aec.process(&self.far_block, &mut self.block_in);
            }
            if let Some(rn) = self.rnnoise.as_mut() {
                let p = rn.process_frame(&mut self.block_out, &self.block_in);
                let p = if p.is_finite() { p } else { 0.0 };
                prob = Some(prob.map_or(p, |q: f32| q.max(p)));
                if self.cfg.noise_suppress {
                    self.block_in.copy_from_slice(&self.block_out);
                }
            }
            for (s, &b) in frame[range].iter_mut().zip(self.block_in.iter()) {
                *s = to_i16(b);
            }
        }
        let level_dbfs = level_dbfs(frame);
        let speech = if self.cfg.vad {
            // RNNoise starts from an empty state and rates the first few hundred ms of any
            // sound as possible voice (about 0.6 for steady noise): be strict meanwhile.
            let threshold = if self.frames < WARMUP_FRAMES {
                self.cfg.vad_threshold.max(WARMUP_THRESHOLD)
            } else {
                self.cfg.vad_threshold
            };
            self.frames = self.frames.saturating_add(1);
            let now = prob.unwrap_or(0.0) >= threshold && level_dbfs >= self.cfg.vad_min_dbfs;
            if now {
                self.hold = self.hangover_frames;
                true
            } else if self.hold > 0 {
                self.hold -= 1;
                true
            } else {
                false
            }
        } else {
            true
        };
        Capture {
            speech,
            voice_probability: prob,
            level_dbfs,
            echo_return_loss_enhancement_db: self.aec.as_ref().and_then(EchoCanceller::erle_db),
        }
    }
}

fn to_i16(x: f32) -> i16 {
    if x.is_finite() {
        x.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
    } else {
        0
    }
}

/// RMS level of a frame in dBFS (full scale = 32768).
pub fn level_dbfs(frame: &[i16]) -> f32 {
    let sum: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    if sum == 0.0 || frame.is_empty() {
        return SILENCE_DBFS;
    }
    let rms = (sum / frame.len() as f64).sqrt() / 32768.0;
    (20.0 * rms.log10()).max(f64::from(SILENCE_DBFS)) as f32
}

// ---------------------------------------------------------------------------------------------
// Echo canceller

/// Far-end block power (mean square, i16 units) under which the far end counts as silent:
/// about -66 dBFS.
const FAR_ACTIVE_POWER: f32 = 0.25;
/// Step of the background filter's normalised LMS update.
const MU: f32 = 0.8;
/// Gradient constraints (two FFTs each) per block, partitions taken in turn.
const CONSTRAIN_PER_BLOCK: usize = 2;
/// Background copied to foreground when its error power is below this share of the
/// foreground's ...
const COPY_BETTER: f32 = 0.7;
/// ... for this many far-end-active blocks in a row.
const COPY_AFTER: u32 = 3;
/// Background reset to the foreground when its error power exceeds the foreground's this many
/// times (disturbed by double talk).
const RESET_WORSE: f32 = 4.0;
/// Residual echo suppressor: over-subtraction and floor (linear gain).
const RES_OVER: f32 = 2.0;
const RES_FLOOR: f32 = 0.1;
/// Per-block rise of the residual-echo ratio estimate (it falls at once): +0.2 dB.
const LEAK_RISE: f32 = 1.047;

/// A partitioned-block frequency-domain adaptive filter (MDF) in a foreground/background pair,
/// with a residual echo suppressor.
///
/// * Blocks of [`BLOCK`] = 480 samples (10 ms), FFTs of 960 (overlap-save), `P` partitions of
///   10 ms each, so the filter is `P * 10` ms long ([`ProcessConfig::echo_tail_ms`]). The
///   echo estimate for a block is available at once: no added delay.
/// * The *background* filter adapts on every block where the far end plays: normalised LMS
///   per frequency bin, normalised by the far-end power summed over the partitions, step 0.8,
///   with the gradient constraint (zeroing the wrapped half in the time domain) applied to two
///   partitions per block in turn instead of all of them (Speex does the same; it saves FFTs at
///   the price of slightly slower convergence).
/// * The *foreground* filter makes the output and never adapts; it takes the background's
///   coefficients when the background's error has been clearly lower (under 70 %) for three
///   blocks in a row. That is the double-talk guard: near-end speech disturbs the background
///   (its error grows, it is not copied, and when its error exceeds four times the
///   foreground's it is reset to the foreground), while the foreground keeps cancelling. After
///   an echo path change the background, always adapting, soon beats the stale foreground and
///   is copied. The cost is a second filtering pass (one more inverse FFT and `P` complex
///   multiply-adds per bin).
/// * Safety: a block whose output would carry more power than twice the microphone input (a
///   diverged filter) is passed through unchanged, and both filters are reset when that lasts.
/// * Residual echo suppressor: a spectral gain `max(0.1, 1 - 2 * rho * |Y_k|^2 / |E_k|^2)`,
///   where `Y` is the foreground's echo estimate and `rho` tracks the *smallest* recent ratio of
///   output to echo-estimate power (falls at once, rises 0.2 dB per block), i.e. the residual
///   echo level seen in single talk, so that double talk, where the ratio is high, does not
///   make the suppressor eat the near-end voice. The gain is smoothed over neighbouring bins
///   and applied by overlap-add on zero-padded blocks (no added delay); it runs only while the
///   far end plays.
pub struct EchoCanceller {
    partitions: usize,
    fft: Arc<dyn RealToComplex<f32>>,
    ifft: Arc<dyn ComplexToReal<f32>>,
    scratch_fwd: Vec<Complex<f32>>,
    scratch_inv: Vec<Complex<f32>>,
    /// Far-end spectra, newest at `head`, ring of `partitions`.
    x_spec: Vec<Vec<Complex<f32>>>,
    head: usize,
    /// Background filter (adapts), one spectrum per partition (partition 0 applies to the
    /// newest far-end block).
    bg: Vec<Vec<Complex<f32>>>,
    /// Foreground filter (makes the output).
    fg: Vec<Vec<Complex<f32>>>,
    /// Sum over partitions of |X|^2 per bin.
    x_pow: Vec<f32>,
    x_prev: [f32; BLOCK],
    time: Vec<f32>,
    spec: Vec<Complex<f32>>,
    acc: Vec<Complex<f32>>,
    e_spec: Vec<Complex<f32>>,
    step: Vec<f32>,
    gain: Vec<f32>,
    raw_gain: Vec<f32>,
    res_tail: [f32; BLOCK],
    fg_err_avg: f32,
    bg_err_avg: f32,
    better_blocks: u32,
    bad_blocks: u32,
    constrain_next: usize,
    rho: f32,
    mic_pow_avg: f32,
    out_pow_avg: f32,
    erle_seen: bool,
    blocks: u64,
}

impl fmt::Debug for EchoCanceller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EchoCanceller")
            .field("partitions", &self.partitions)
            .field("rho", &self.rho)
            .field("erle_db", &self.erle_db())
            .finish_non_exhaustive()
    }
}

impl EchoCanceller {
    /// A canceller with `partitions` blocks of 10 ms of filter (at least one).
    pub fn new(partitions: usize) -> Self {
        let partitions = partitions.max(1);
        let mut planner = RealFftPlanner::<f32>::new();
        let fft = planner.plan_fft_forward(FFT_LEN);
        let ifft = planner.plan_fft_inverse(FFT_LEN);
        let zero = Complex::new(0.0, 0.0);
        EchoCanceller {
            partitions,
            scratch_fwd: fft.make_scratch_vec(),
            scratch_inv: ifft.make_scratch_vec(),
            fft,
            ifft,
            x_spec: vec![vec![zero; BINS]; partitions],
            head: 0,
            bg: vec![vec![zero; BINS]; partitions],
            fg: vec![vec![zero; BINS]; partitions],
            x_pow: vec![0.0; BINS],
            x_prev: [0.0; BLOCK],
            time: vec![0.0; FFT_LEN],
            spec: vec![zero; BINS],
            acc: vec![zero; BINS],
            e_spec: vec![zero; BINS],
            step: vec![0.0; BINS],
            gain: vec![1.0; BINS],
            raw_gain: vec![1.0; BINS],
            res_tail: [0.0; BLOCK],
            fg_err_avg: 0.0,
            bg_err_avg: 0.0,
            better_blocks: 0,
            bad_blocks: 0,
            constrain_next: 0,
            rho: 1.0,
            mic_pow_avg: 0.0,
            out_pow_avg: 0.0,
            erle_seen: false,
            blocks: 0,
        }
    }

    /// Forgets both filters (divergence).
    pub fn reset(&mut self) {
        let zero = Complex::new(0.0, 0.0);
        for w in self.bg.iter_mut().chain(self.fg.iter_mut()) {
            w.iter_mut().for_each(|c| *c = zero);
        }
        self.fg_err_avg = 0.0;
        self.bg_err_avg = 0.0;
        self.better_blocks = 0;
        self.bad_blocks = 0;
        self.rho = 1.0;
    }

    /// Smoothed ERLE of the foreground filter, dB (see [`Capture`]).
    pub fn erle_db(&self) -> Option<f32> {
        if !self.erle_seen {
            return None;
        }
        let r = 10.0 * ((self.mic_pow_avg + 1e-3) / (self.out_pow_avg + 1e-3)).log10();
        r.is_finite().then_some(r)
    }

    fn forward(&mut self) {
        // realfft only fails on wrong buffer lengths, which are fixed here; on a failure the
        // spectrum is zeroed (the block then passes through unchanged).
        if self
            .fft
            .process_with_scratch(&mut self.time, &mut self.spec, &mut self.scratch_fwd)
            .is_err()
        {
            self.spec
                .iter_mut()
                .for_each(|c| *c = Complex::new(0.0, 0.0));
        }
    }

    fn inverse(&mut self) {
        // The DC and Nyquist bins of a real signal's spectrum have no imaginary part; realfft
        // checks that, so clear them first.
        self.spec[0].im = 0.0;
        self.spec[BINS - 1].im = 0.0;
        if self
            .ifft
            .process_with_scratch(&mut self.spec, &mut self.time, &mut self.scratch_inv)
            .is_err()
        {
            self.time.iter_mut().for_each(|t| *t = 0.0);
        }
    }

    /// The echo estimate of `filter` for the current block (last half of the inverse FFT), in
    /// `self.time[BLOCK..]` (scaled), and its spectrum in `self.acc`.
    fn estimate(&mut self, foreground: bool) {
        let p_count = self.partitions;
        self.acc
            .iter_mut()
            .for_each(|c| *c = Complex::new(0.0, 0.0));
        let filter = if foreground { &self.fg } else { &self.bg };
        for (p, w) in filter.iter().enumerate() {
            let x = &self.x_spec[(self.head + p) % p_count];
            for ((a, w), x) in self.acc.iter_mut().zip(w).zip(x) {
                *a += w * x;
            }
        }
        self.spec.copy_from_slice(&self.acc);
        self.inverse();
    }

    /// Cancels the echo of `far` (aligned with `mic`) from `mic`, in place. Both hold
    /// [`BLOCK`] samples in the `i16` range.
    pub fn process(&mut self, far: &[f32; BLOCK], mic: &mut [f32; BLOCK]) {
        let p_count = self.partitions;
        let scale = 1.0 / FFT_LEN as f32;
        let far_pow = far.iter().map(|x| x * x).sum::<f32>() / BLOCK as f32;
        let mic_pow = mic.iter().map(|x| x * x).sum::<f32>() / BLOCK as f32;
        let far_active = far_pow > FAR_ACTIVE_POWER;
        self.blocks += 1;

        // Newest far-end spectrum: FFT of [previous block, this block].
        self.time[..BLOCK].copy_from_slice(&self.x_prev);
        self.time[BLOCK..].copy_from_slice(far);
        self.x_prev.copy_from_slice(far);
        self.forward();
        self.head = (self.head + p_count - 1) % p_count;
        for ((pow, new), old) in self
            .x_pow
            .iter_mut()
            .zip(&self.spec)
            .zip(&self.x_spec[self.head])
        {
            *pow = (*pow + new.norm_sqr() - old.norm_sqr()).max(0.0);
        }
        self.x_spec[self.head].copy_from_slice(&self.spec);
        if self.blocks.is_multiple_of(256) {
            // Re-sum now and then so rounding in the running sum cannot drift.
            self.x_pow.iter_mut().for_each(|p| *p = 0.0);
            for x in &self.x_spec {
                for (pow, c) in self.x_pow.iter_mut().zip(x) {
                    *pow += c.norm_sqr();
                }
            }
        }

        // Foreground: the output and its spectrum.
        self.estimate(true);
        let mut out = [0.0f32; BLOCK];
        let mut y_block = [0.0f32; BLOCK];
        for i in 0..BLOCK {
            y_block[i] = self.time[BLOCK + i] * scale;
            out[i] = mic[i] - y_block[i];
        }
        let out_pow = out.iter().map(|x| x * x).sum::<f32>() / BLOCK as f32;

        if far_active {
            // Background: its error, the NLMS update, the constraint.
            self.estimate(false);
            let mut bg_err = 0.0f32;
            self.time.copy_within(BLOCK.., 0);
            for (i, &m) in mic.iter().enumerate() {
                let e = m - self.time[i] * scale;
                bg_err += e * e;
                self.time[i] = 0.0;
                self.time[BLOCK + i] = e;
            }
            bg_err /= BLOCK as f32;
            self.forward();
            self.e_spec.copy_from_slice(&self.spec);
            let mean_x = self.x_pow.iter().sum::<f32>() / BINS as f32;
            let delta = 1e-2 * mean_x + 1.0;
            for (s, &xp) in self.step.iter_mut().zip(&self.x_pow) {
                *s = MU / (xp + delta);
            }
            for p in 0..p_count {
                let x = &self.x_spec[(self.head + p) % p_count];
                for (((w, x), e), s) in self.bg[p]
                    .iter_mut()
                    .zip(x)
                    .zip(&self.e_spec)
                    .zip(&self.step)
                {
                    *w += x.conj() * e * *s;
                }
            }
            for _ in 0..CONSTRAIN_PER_BLOCK.min(p_count) {
                let p = self.constrain_next;
                self.constrain_next = (self.constrain_next + 1) % p_count;
                self.spec.copy_from_slice(&self.bg[p]);
                self.inverse();
                for (i, t) in self.time.iter_mut().enumerate() {
                    *t = if i < BLOCK { *t * scale } else { 0.0 };
                }
                self.forward();
                self.bg[p].copy_from_slice(&self.spec);
            }

            // Foreground / background decision.
            self.fg_err_avg = 0.7 * self.fg_err_avg + 0.3 * out_pow;
            self.bg_err_avg = 0.7 * self.bg_err_avg + 0.3 * bg_err;
            if self.bg_err_avg < COPY_BETTER * self.fg_err_avg {
                self.better_blocks += 1;
                if self.better_blocks >= COPY_AFTER {
                    for (f, b) in self.fg.iter_mut().zip(&self.bg) {
                        f.copy_from_slice(b);
                    }
                    self.fg_err_avg = self.bg_err_avg;
                    self.better_blocks = 0;
                }
            } else {
                self.better_blocks = 0;
                if !bg_err.is_finite() || self.bg_err_avg > RESET_WORSE * self.fg_err_avg + 1.0 {
                    for (b, f) in self.bg.iter_mut().zip(&self.fg) {
                        b.copy_from_slice(f);
                    }
                    self.bg_err_avg = self.fg_err_avg;
                }
            }
        }

        // Divergence guard.
        if !out_pow.is_finite() || out_pow > 2.0 * mic_pow + 1e4 {
            self.bad_blocks += 1;
            if self.bad_blocks > 50 || !out_pow.is_finite() {
                self.reset();
            }
            self.res_tail = [0.0; BLOCK];
            return; // mic passes through unchanged
        }
        self.bad_blocks = 0;

        if !far_active {
            for (m, (o, t)) in mic.iter_mut().zip(out.iter().zip(&self.res_tail)) {
                *m = o + t;
            }
            self.res_tail = [0.0; BLOCK];
            return;
        }
        self.mic_pow_avg = 0.95 * self.mic_pow_avg + 0.05 * mic_pow;
        self.out_pow_avg = 0.95 * self.out_pow_avg + 0.05 * out_pow;
        self.erle_seen = true;

        // Residual echo suppression, on spectra of zero-padded blocks: [y, 0] for the echo
        // estimate, [out, 0] for the output.
        self.time[..BLOCK].copy_from_slice(&y_block);
        self.time[BLOCK..].iter_mut().for_each(|t| *t = 0.0);
        self.forward();
        self.acc.copy_from_slice(&self.spec);
        let y_pow_total: f32 = self.acc.iter().map(Complex::norm_sqr).sum();
        self.time[..BLOCK].copy_from_slice(&out);
        self.time[BLOCK..].iter_mut().for_each(|t| *t = 0.0);
        self.forward();
        let e_pow_total: f32 = self.spec.iter().map(Complex::norm_sqr).sum();
        let ratio = if y_pow_total > 0.0 {
            e_pow_total / y_pow_total
        } else {
            1.0
        };
        self.rho = if ratio.is_finite() && ratio < self.rho {
            ratio
        } else {
            (self.rho * LEAK_RISE).min(1.0)
        };
        for (k, g) in self.raw_gain.iter_mut().enumerate() {
            let y = self.acc[k].norm_sqr();
            let e = self.spec[k].norm_sqr() + 1.0;
            *g = (1.0 - RES_OVER * self.rho * y / e).clamp(RES_FLOOR, 1.0);
        }
        for k in 0..BINS {
            let lo = k.saturating_sub(1);
            let hi = (k + 1).min(BINS - 1);
            let g = (self.raw_gain[lo] + 2.0 * self.raw_gain[k] + self.raw_gain[hi]) / 4.0;
            // Fast attack, slower release.
            self.gain[k] = if g < self.gain[k] {
                g
            } else {
                0.6 * self.gain[k] + 0.4 * g
            };
        }
        for (c, g) in self.spec.iter_mut().zip(&self.gain) {
            *c *= *g;
        }
        self.inverse();
        for (i, m) in mic.iter_mut().enumerate() {
            *m = self.time[i] * scale + self.res_tail[i];
            self.res_tail[i] = self.time[BLOCK + i] * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FS: f32 = SAMPLE_RATE as f32;

    /// A deterministic generator (LCG), uniform in [-1, 1).
    struct Lcg(u32);

    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (self.0 >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        }
    }

    /// Gain of three formant resonances (vowel-like spectral envelope) at `f` Hz.
    fn formants(f: f32, shift: f32) -> f32 {
        let peaks = [
            (700.0 * shift, 130.0),
            (1220.0 * shift, 150.0),
            (2600.0 * shift, 250.0),
        ];
        let mut g = 0.0;
        for (i, (fc, bw)) in peaks.iter().enumerate() {
            let x = (f - fc) / bw;
            g += (1.0 / (1.0 + x * x)) / (1.0 + i as f32);
        }
        g + 0.02
    }

    /// A voiced, speech-like signal: harmonics of a pitch with vibrato and declination, shaped
    /// by formants that move from syllable to syllable, under a syllabic envelope. `on` gives
    /// the envelope (0..1) per sample.
    fn voice(len: usize, f0: f32, peak: f32, on: impl Fn(usize) -> f32) -> Vec<f32> {
        let mut out = vec![0.0f32; len];
        let mut phase = 0.0f32;
        let mut rng = Lcg(f0 as u32);
        for (i, o) in out.iter_mut().enumerate() {
            let t = i as f32 / FS;
            let env = on(i);
            if env <= 0.0 {
                continue;
            }
            let f = f0 * (1.0 + 0.03 * (t * 5.0 * std::f32::consts::TAU).sin() - 0.05 * (t % 0.6));
            phase = (phase + f / FS) % 1.0;
            let shift = 1.0 + 0.15 * (t * 2.3 * std::f32::consts::TAU).sin();
            let mut s = 0.0;
            let mut h = 1;
            while (h as f32) * f < 5000.0 {
                let hf = h as f32 * f;
                s += formants(hf, shift) * (phase * h as f32 * std::f32::consts::TAU).sin();
                h += 1;
            }
            *o = peak * env * (0.45 * s + 0.02 * rng.next());
        }
        out
    }

    /// Syllables of `on_ms`, then `off_ms` of pause, with 20 ms ramps.
    fn bursts(on_ms: usize, off_ms: usize) -> impl Fn(usize) -> f32 {
        move |i| {
            let per = (on_ms + off_ms) * 48;
            let j = i % per;
            if j >= on_ms * 48 {
                return 0.0;
            }
            let ramp = 960.0;
            let a = (j as f32 / ramp).min(1.0);
            let b = ((on_ms * 48 - j) as f32 / ramp).min(1.0);
            a.min(b)
        }
    }

    fn white(len: usize, seed: u32, rms: f32) -> Vec<f32> {
        let mut rng = Lcg(seed);
        // Uniform in [-1, 1) has RMS 1/sqrt(3).
        (0..len).map(|_| rng.next() * rms * 3f32.sqrt()).collect()
    }

    fn power(x: &[f32]) -> f32 {
        x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32
    }

    fn db(x: f32) -> f32 {
        10.0 * x.max(1e-12).log10()
    }

    fn frames(x: &[f32]) -> Vec<Frame> {
        x.chunks(FRAME_SAMPLES)
            .map(|c| {
                let mut f = [0i16; FRAME_SAMPLES];
                for (o, &v) in f.iter_mut().zip(c) {
                    *o = to_i16(v);
                }
                f
            })
            .collect()
    }

    fn run(p: &mut Processor, far: Option<&[f32]>, mic: &[f32]) -> (Vec<f32>, Vec<Capture>) {
        let mic = frames(mic);
        let far = far.map(frames);
        let mut out = Vec::with_capacity(mic.len() * FRAME_SAMPLES);
        let mut caps = Vec::with_capacity(mic.len());
        if let Some(first) = far.as_ref().and_then(|f| f.first()) {
            p.far_end(first);
        }
        for (n, m) in mic.iter().enumerate() {
            let mut f = *m;
            caps.push(p.capture(&mut f));
            out.extend(f.iter().map(|&s| f32::from(s)));
            if let Some(far) = &far {
                // The frame played in this tick; its echo is in the next captures.
                if let Some(next) = far.get(n + 1) {
                    p.far_end(next);
                }
            }
        }
        (out, caps)
    }

    fn correlation(a: &[f32], b: &[f32]) -> f32 {
        let ab: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let aa: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
        let bb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum();
        (ab / (aa * bb).sqrt().max(1e-9)) as f32
    }

    fn only(echo_cancel: bool, noise_suppress: bool, vad: bool) -> ProcessConfig {
        ProcessConfig {
            echo_cancel,
            noise_suppress,
            vad,
            ..ProcessConfig::default()
        }
    }

    #[test]
    fn noise_suppression_lowers_the_noise_floor_and_keeps_the_voice() {
        let len = 4 * 48_000;
        let clean = voice(len, 130.0, 9000.0, bursts(400, 400));
        let noise = white(len, 7, 300.0); // about -41 dBFS, ~20 dB under the voice
        let mic: Vec<f32> = clean.iter().zip(&noise).map(|(s, n)| s + n).collect();
        let mut p = Processor::new(only(false, true, false)).unwrap();
        let (out, _) = run(&mut p, None, &mic);
        // RNNoise delays by one 480-sample block; compare pauses and syllables after 1 s.
        let delay = BLOCK;
        let mut pause_in = Vec::new();
        let mut pause_out = Vec::new();
        let mut talk_clean = Vec::new();
        let mut talk_out = Vec::new();
        let env = bursts(400, 400);
        for i in 48_000..len - delay {
            if env(i) == 0.0 && env(i.saturating_sub(4800)) == 0.0 {
                pause_in.push(mic[i]);
                pause_out.push(out[i + delay]);
            } else if env(i) == 1.0 {
                talk_clean.push(clean[i]);
                talk_out.push(out[i + delay]);
            }
        }
        let floor_reduction = db(power(&pause_in)) - db(power(&pause_out));
        let talk_change = db(power(&talk_out)) - db(power(&talk_clean));
        let corr = correlation(&talk_clean, &talk_out);
        println!(
            "NS: noise floor lowered by {floor_reduction:.1} dB, voice level changed by \
             {talk_change:.1} dB, correlation with the clean voice {corr:.3}"
        );
        assert!(
            floor_reduction >= 15.0,
            "noise floor lowered by {floor_reduction} dB"
        );
        assert!(
            talk_change.abs() <= 3.0,
            "voice level changed by {talk_change} dB"
        );
        assert!(corr >= 0.9, "correlation {corr}");
    }

    #[test]
    fn vad_detects_bursts_not_silence_or_steady_noise_and_holds_for_the_hangover() {
        let cfg = ProcessConfig {
            hangover_ms: 200,
            ..only(false, true, true)
        };
        let hang = (cfg.hangover_ms / FRAME_MS) as usize;

        // Silence: never speech.
        let mut p = Processor::new(cfg.clone()).unwrap();
        let (_, caps) = run(&mut p, None, &vec![0.0; 2 * 48_000]);
        assert!(caps.iter().all(|c| !c.speech), "silence counted as speech");

        // Steady white noise at -35 dBFS: (almost) never speech.
        let mut p = Processor::new(cfg.clone()).unwrap();
        let (_, caps) = run(&mut p, None, &white(4 * 48_000, 3, 600.0));
        let noisy = caps.iter().filter(|c| c.speech).count();
        println!("VAD: steady noise, {noisy} of {} frames speech", caps.len());
        assert!(
            noisy * 20 <= caps.len(),
            "{noisy} noise frames counted as speech"
        );

        // Bursts of 600 ms every 2 s over faint noise.
        let len = 8 * 48_000;
        let env = bursts(600, 1400);
        let clean = voice(len, 110.0, 8000.0, &env);
        let noise = white(len, 5, 60.0);
        let mic: Vec<f32> = clean.iter().zip(&noise).map(|(s, n)| s + n).collect();
        let mut p = Processor::new(cfg.clone()).unwrap();
        let (_, caps) = run(&mut p, None, &mic);
        let truth: Vec<bool> = (0..caps.len())
            .map(|n| env(n * FRAME_SAMPLES + 480) > 0.5)
            .collect();
        let talk = truth.iter().filter(|t| **t).count();
        let detected = caps
            .iter()
            .zip(&truth)
            .filter(|(c, t)| **t && c.speech)
            .count();
        // Outside speech and its hangover (plus one frame of RNNoise delay).
        let mut idle = 0;
        let mut false_alarm = 0;
        for (n, cap) in caps.iter().enumerate() {
            let recent = (n.saturating_sub(hang + 2)..=n).any(|m| truth[m]);
            if !recent {
                idle += 1;
                false_alarm += usize::from(cap.speech);
            }
        }
        println!(
            "VAD: {detected} of {talk} speech frames detected, {false_alarm} of {idle} idle \
             frames flagged"
        );
        assert!(detected * 100 >= talk * 95, "detected {detected} of {talk}");
        assert!(
            false_alarm * 100 <= idle * 2,
            "false alarms {false_alarm} of {idle}"
        );

        // Hangover: after each burst, speech lasts hangover (+/- a frame) after the last
        // raw speech decision, and ends then.
        for burst in 0..4 {
            let end = (burst * 2000 + 600) / 20; // first frame after the syllable
            let last_speech = (end..end + 40).take_while(|&n| caps[n].speech).last();
            let held = last_speech.map_or(0, |l| l + 1 - end);
            println!("VAD: burst {burst} held {held} frames after it ended (hangover {hang})");
            assert!(
                held >= hang && held <= hang + 3,
                "held {held}, hangover {hang}"
            );
        }

        // With VAD off every frame is speech and RNNoise's probability is still reported only
        // when it runs.
        let mut p = Processor::new(only(false, false, false)).unwrap();
        let mut f = [0i16; FRAME_SAMPLES];
        let c = p.capture(&mut f);
        assert!(c.speech);
        assert_eq!(c.voice_probability, None);
    }

    /// A room-like echo path: `delay_ms` of bulk delay, then reflections decaying over
    /// `tail_ms`, scaled to `gain_db` of power gain for white input.
    fn echo_path(delay_ms: usize, tail_ms: usize, gain_db: f32, seed: u32) -> Vec<(usize, f32)> {
        let mut rng = Lcg(seed);
        let mut taps = vec![(delay_ms * 48, 1.0f32)];
        for i in 1..80 {
            let at = delay_ms * 48 + ((rng.next() + 1.0) * 0.5 * (tail_ms * 48) as f32) as usize;
            let decay = (-(((at - delay_ms * 48) as f32) / (tail_ms as f32 * 48.0 / 4.0))).exp();
            taps.push((at + i % 3, rng.next() * 0.8 * decay));
        }
        let energy: f32 = taps.iter().map(|(_, g)| g * g).sum();
        let norm = (10f32.powf(gain_db / 10.0) / energy).sqrt();
        taps.iter().map(|&(d, g)| (d, g * norm)).collect()
    }

    fn convolve(x: &[f32], path: &[(usize, f32)]) -> Vec<f32> {
        let mut y = vec![0.0f32; x.len()];
        for &(d, g) in path {
            for i in d..x.len() {
                y[i] += g * x[i - d];
            }
        }
        y
    }

    /// ERLE per 100 ms window over `range` (samples), dB.
    fn erle_windows(echo: &[f32], out: &[f32], range: std::ops::Range<usize>) -> Vec<f32> {
        let w = 4800;
        range
            .step_by(w)
            .filter(|s| s + w <= out.len())
            .map(|s| db(power(&echo[s..s + w])) - db(power(&out[s..s + w])))
            .collect()
    }

    /// Far end: continuous speech-like talk (two talkers alternating), with faint noise.
    fn far_talk(len: usize) -> Vec<f32> {
        let a = voice(len, 140.0, 7000.0, bursts(900, 100));
        let n = white(len, 11, 150.0);
        a.iter().zip(&n).map(|(a, n)| a + n).collect()
    }

    #[test]
    fn aec_converges_keeps_the_near_end_and_reconverges_after_a_path_change() {
        let secs = 10;
        let len = secs * 48_000;
        let far = far_talk(len);
        // Echo path: 30 ms delay, 60 ms of reflections, -6 dB; changes at 6 s to 45 ms, 80 ms.
        let change = 6 * 48_000;
        let path_a = echo_path(30, 60, -6.0, 1);
        let path_b = echo_path(45, 80, -6.0, 2);
        let echo_a = convolve(&far, &path_a);
        let echo_b = convolve(&far, &path_b);
        let echo: Vec<f32> = (0..len)
            .map(|i| if i < change { echo_a[i] } else { echo_b[i] })
            .collect();
        // Near-end talker from 3.0 to 4.5 s (double talk), and microphone noise (-70 dBFS).
        let near = voice(len, 210.0, 6000.0, |i| {
            if (3 * 48_000..4 * 48_000 + 24_000).contains(&i) {
                1.0
            } else {
                0.0
            }
        });
        let noise = white(len, 9, 10.0);
        let mic: Vec<f32> = (0..len).map(|i| echo[i] + near[i] + noise[i]).collect();

        let mut p = Processor::new(only(true, false, false)).unwrap();
        let (out, caps) = run(&mut p, Some(&far), &mic);

        // Convergence: the first 100 ms window from which ERLE stays >= 20 dB until 3 s.
        let before_dt = erle_windows(&echo, &out, 0..3 * 48_000);
        let converged = (0..before_dt.len())
            .find(|&w| before_dt[w..].iter().all(|&e| e >= 20.0))
            .map(|w| w as f32 * 0.1);
        let steady: f32 = before_dt[15..].iter().sum::<f32>() / (before_dt.len() - 15) as f32;
        println!(
            "AEC: converged (ERLE >= 20 dB) after {converged:?} s; mean ERLE 1.5-3 s {steady:.1} dB"
        );
        assert!(
            converged.is_some_and(|t| t <= 1.5),
            "no convergence by 1.5 s: {before_dt:?}"
        );

        // Double talk: the output follows the near-end talker, echo still removed.
        let dt = 3 * 48_000 + 4800..4 * 48_000 + 24_000;
        let residual: Vec<f32> = dt.clone().map(|i| out[i] - near[i]).collect();
        let corr = correlation(&near[dt.clone()], &out[dt.clone()]);
        let erle_dt = db(power(&echo[dt.clone()])) - db(power(&residual));
        println!("AEC: double talk: correlation with the near end {corr:.3}, ERLE {erle_dt:.1} dB");
        assert!(corr >= 0.9, "near-end correlation {corr}");
        // After double talk the filter has not been destroyed.
        let after_dt = erle_windows(&echo, &out, 4 * 48_000 + 28_800..change);
        let worst = after_dt.iter().copied().fold(f32::MAX, f32::min);
        println!("AEC: worst 100 ms ERLE after double talk {worst:.1} dB");
        assert!(worst >= 15.0, "after double talk: {after_dt:?}");

        // Echo path change at 6 s: back to >= 20 dB.
        let after_change = erle_windows(&echo, &out, change..len);
        let reconverged = (0..after_change.len())
            .find(|&w| after_change[w..].iter().all(|&e| e >= 20.0))
            .map(|w| w as f32 * 0.1);
        let end: f32 = after_change[after_change.len() - 10..].iter().sum::<f32>() / 10.0;
        println!(
            "AEC: re-converged after {reconverged:?} s of the new path; last second {end:.1} dB"
        );
        assert!(
            reconverged.is_some_and(|t| t <= 4.0),
            "after change: {after_change:?}"
        );
        let reported = caps.last().and_then(|c| c.echo_return_loss_enhancement_db);
        println!("AEC: reported ERLE at the end {reported:?}");
        assert!(reported.is_some_and(|e| e > 10.0));
    }

    #[test]
    fn extreme_input_never_panics_and_stays_finite() {
        let mut p = Processor::new(ProcessConfig::default()).unwrap();
        let mut rng = Lcg(42);
        let patterns: Vec<Frame> = vec![
            [0; FRAME_SAMPLES],
            [i16::MAX; FRAME_SAMPLES],
            [i16::MIN; FRAME_SAMPLES],
            std::array::from_fn(|i| if i % 2 == 0 { i16::MAX } else { i16::MIN }),
            std::array::from_fn(|i| {
                if (i / 48) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            }),
            std::array::from_fn(|_| (rng.next() * 32767.0) as i16),
        ];
        for round in 0..200 {
            let far = patterns[(round * 7) % patterns.len()];
            let mut mic = patterns[(round * 5 + 1) % patterns.len()];
            if round % 3 != 0 {
                p.far_end(&far);
            }
            if round % 11 == 0 {
                // far_end without capture, many times: bounded FIFO.
                for _ in 0..20 {
                    p.far_end(&far);
                }
            }
            let c = p.capture(&mut mic);
            assert!(c.level_dbfs.is_finite());
            assert!(c.voice_probability.is_none_or(|v| v.is_finite()));
            assert!(c.echo_return_loss_enhancement_db.is_none_or(f32::is_finite));
        }
        assert!(p.far.len() <= MAX_FAR_FRAMES * FRAME_SAMPLES);
        // And it still works on ordinary input afterwards: silence in, near silence out.
        let mut quiet = [0i16; FRAME_SAMPLES];
        for _ in 0..100 {
            p.far_end(&[0; FRAME_SAMPLES]);
            quiet = [0; FRAME_SAMPLES];
            p.capture(&mut quiet);
        }
        assert!(level_dbfs(&quiet) < -60.0, "level {}", level_dbfs(&quiet));
        // All-zero input with everything on gives exact silence and no speech.
        let mut p = Processor::new(ProcessConfig::default()).unwrap();
        for _ in 0..50 {
            p.far_end(&[0; FRAME_SAMPLES]);
            let mut z = [0i16; FRAME_SAMPLES];
            let c = p.capture(&mut z);
            assert!(!c.speech);
            assert_eq!(z, [0; FRAME_SAMPLES]);
        }
    }

    #[test]
    fn processor_can_move_to_the_engine_thread() {
        fn send<T: Send>() {}
        send::<Processor>();
    }

    #[test]
    fn bad_configuration_is_rejected() {
        for cfg in [
            ProcessConfig {
                echo_tail_ms: 0,
                ..ProcessConfig::default()
            },
            ProcessConfig {
                echo_tail_ms: 501,
                ..ProcessConfig::default()
            },
            ProcessConfig {
                far_end_delay_ms: 501,
                ..ProcessConfig::default()
            },
            ProcessConfig {
                vad_threshold: 1.5,
                ..ProcessConfig::default()
            },
            ProcessConfig {
                vad_threshold: f32::NAN,
                ..ProcessConfig::default()
            },
            ProcessConfig {
                vad_min_dbfs: f32::NAN,
                ..ProcessConfig::default()
            },
        ] {
            assert!(matches!(
                Processor::new(cfg),
                Err(ProcessError::Config { .. })
            ));
        }
    }

    #[test]
    fn far_end_delay_shifts_the_reference() {
        // With a 100 ms far-end delay and a 60 ms tail, an echo 110-150 ms late is cancelled.
        let cfg = ProcessConfig {
            far_end_delay_ms: 100,
            echo_tail_ms: 60,
            ..only(true, false, false)
        };
        let len = 4 * 48_000;
        let far = far_talk(len);
        let echo = convolve(&far, &echo_path(110, 30, -6.0, 3));
        let mut p = Processor::new(cfg).unwrap();
        let (out, _) = run(&mut p, Some(&far), &echo);
        let tail = erle_windows(&echo, &out, 2 * 48_000..len);
        let mean = tail.iter().sum::<f32>() / tail.len() as f32;
        println!("AEC with 100 ms far-end delay: mean ERLE 2-4 s {mean:.1} dB");
        assert!(mean >= 20.0, "{tail:?}");
    }
}
