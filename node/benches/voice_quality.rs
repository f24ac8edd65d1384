//! Voice quality harness (issue 9): speech through the whole media pipeline and an impaired
//! channel, scored with PESQ wideband, against a no-FEC baseline in the same run.
//!
//! ```text
//! speech WAV (espeak-ng, resampled to 48 kHz by sox)
//!   -> VoiceSender (Opus 64 kbit/s, SFrame encryption)
//!   -> channel: loss (random, or Gilbert-Elliott bursts of mean 60 ms), uniform jitter,
//!      40 ms fixed delay; seeded, identical for both variants of a cell
//!   -> VoiceReceiver (decryption + replay check, jitter buffer, Opus decoding) ticking every
//!      20 ms on its own clock
//!   -> WAV out -> 16 kHz (sox) -> PESQ-WB (P.862.2, the `pesq` crate) against the input
//! ```
//!
//! *Ours*: the sender adds redundant copies of its earlier frames once the receiver's reports
//! (one a second, delivered at once) show loss (see `pipeline`'s module docs: RED), in-band
//! FEC tuned to the reported loss, a jitter buffer that waits for the farthest copy (or one
//! frame for FEC) while loss is seen, and libopus' deep PLC for what is still missing. *No
//! RED*: ours without the copies. *+DRED*: no RED plus DRED (100 ms) and a steady lookahead of
//! 3 frames while loss is seen (experimental). *Baseline*: the same encoder without FEC,
//! classic PLC, the same jitter buffer without the extra frames. The last column is the real
//! bit rate on the wire (Opus, copies and crypto overhead) of each.
//!
//! Also printed: pipeline delay capture-to-playback excluding the network (measured by
//! cross-correlating output with input, per device tick phase), jitter-buffer delay against the
//! observed p95 jitter with late packets, crypto overhead per frame, CPU per sent and per
//! received frame.
//!
//! Last run (3 seeds, 0 / 30 ms jitter), PESQ-WB ours / no RED / baseline: none 4.42; 5%
//! random 4.24 / 4.08 / 2.80; 10% random 4.04 / 3.81 / 1.96 (4.02 at 30 ms); 20% random
//! 3.86 / 2.94 / 1.35 (3.80); 10% bursty 3.65 / 2.84 / 2.21 (3.71); 20% bursty 3.07 / 1.89 /
//! 1.44. Runs repeat exactly (sox resamples with repeatable dither). Wire 60 kbit/s without
//! loss, 112-164 with copies. Delay 31.4-40.4 ms by tick phase (mean 35.9); CPU 0.218 ms per
//! sent frame, 0.053-0.058 ms per received frame. README has the full table.
//!
//! Run: `cargo bench -p securecomm-node --bench voice_quality`. Needs `espeak-ng` and `sox`
//! (`scripts/install-deps.sh`). Env: `SEEDS` (runs per cell, default 3), `VOICE_WAV` (use this
//! 48 kHz mono WAV instead of generated speech), `VOICE_OUT` (directory for the WAV files; a
//! temporary one by default), `COMPLEXITY` (Opus encoder complexity, default the pipeline's).
//! `EXPERIMENT` runs only a sweep of variants instead, each `name:key=value,...` separated by
//! `;`, keys `fec`, `deep`, `dred` (10 ms units), `la`/`lamin` (most/fewest lookahead frames),
//! `hint` (factor on the reported loss), `br` (bitrate), `red` (0: no copies), `lal` (the
//! jitter buffer's loss threshold for its FEC lookahead), over `CELLS` (e.g. `n0,r10,b10j30`:
//! none, 10% random, 10% bursty at 30 ms jitter); it prints PESQ-WB and Opus kbit/s per cell.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use securecomm_node::voice::codec::CodecConfig;
use securecomm_node::voice::device::{AudioSink, AudioSource, WavSink, WavSource};
use securecomm_node::voice::jitter::{JitterConfig, JitterStats};
use securecomm_node::voice::pipeline::{
    Concealment, HalfPlayout, ReceiverStats, SenderStats, VoiceReceiver, VoiceSender,
};
use securecomm_node::voice::{FRAME_SAMPLES, FRAME_US, Frame, HALF_SAMPLES, HALF_US, SAMPLE_RATE};
use securecomm_noise::frame::{BaseKey, FrameReceiver, FrameSender, frame_kid};
use securecomm_noise::secret::Secret32;

/// Sentences spoken for the test signal (IEEE/Harvard sentence style, written for this bench).
const SENTENCES: &[&str] = &[
    "The quiet harbour woke to the sound of gulls and distant engines.",
    "Bring seven small boxes of dry rice to the kitchen before noon.",
    "A thin wire held the old lamp above the wooden table.",
    "Her voice carried clearly across the crowded station platform.",
];
/// One-way network delay of the simulated path.
const NETWORK_DELAY_US: u64 = 40_000;
/// Mean burst length of the bursty loss model, in frames (60 ms).
const MEAN_BURST_FRAMES: f64 = 3.0;

/// What the table compares, all through the same channel: name, concealment, whether the
/// sender may add redundant copies.
const VARIANTS: [(&str, Concealment, bool); 4] = [
    (
        "ours",
        Concealment {
            fec: true,
            deep_plc: true,
            dred: false,
        },
        true,
    ),
    (
        "dred",
        Concealment {
            fec: true,
            deep_plc: true,
            dred: true,
        },
        false,
    ),
    (
        "nored",
        Concealment {
            fec: true,
            deep_plc: true,
            dred: false,
        },
        false,
    ),
    (
        "baseline",
        Concealment {
            fec: false,
            deep_plc: false,
            dred: false,
        },
        false,
    ),
];

/// SplitMix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy)]
enum Loss {
    None,
    Random(f64),
    /// Gilbert-Elliott: every packet lost in the bad state, none in the good one; the bad
    /// state lasts `MEAN_BURST_FRAMES` on average and holds `loss` of the time.
    Bursty(f64),
}

impl Loss {
    fn label(self) -> String {
        match self {
            Loss::None => "none".into(),
            Loss::Random(p) => format!("{:.0}% random", p * 100.0),
            Loss::Bursty(p) => format!("{:.0}% bursty", p * 100.0),
        }
    }

    fn pattern(self, n: usize, rng: &mut Rng) -> Vec<bool> {
        match self {
            Loss::None => vec![false; n],
            Loss::Random(p) => (0..n).map(|_| rng.unit() < p).collect(),
            Loss::Bursty(p) => {
                let p_bg = 1.0 / MEAN_BURST_FRAMES;
                let p_gb = p * p_bg / (1.0 - p);
                let mut bad = rng.unit() < p;
                (0..n)
                    .map(|_| {
                        let lost = bad;
                        bad = if bad {
                            rng.unit() >= p_bg
                        } else {
                            rng.unit() < p_gb
                        };
                        lost
                    })
                    .collect()
            }
        }
    }
}

/// The impairment of one run: per frame, lost or its extra delay.
struct Channel {
    lost: Vec<bool>,
    jitter_us: Vec<u64>,
}

impl Channel {
    fn new(loss: Loss, jitter_ms: u64, n: usize, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let lost = loss.pattern(n, &mut rng);
        let jitter_us = (0..n)
            .map(|_| {
                if jitter_ms == 0 {
                    0
                } else {
                    rng.next_u64() % (jitter_ms * 1000 + 1)
                }
            })
            .collect();
        Self { lost, jitter_us }
    }
}

struct RunResult {
    /// Output aligned to the input's clock plus the pipeline delay (network delay removed).
    output: Vec<i16>,
    sender: SenderStats,
    receiver: ReceiverStats,
    jitter: JitterStats,
    p95_us: u64,
    target_us: u64,
    send_cpu: Duration,
    recv_cpu: Duration,
    ticks: u64,
    lookahead: usize,
}

/// CPU time this thread has run, in nanoseconds (`/proc/thread-self/schedstat`), or `None`
/// where that file does not exist.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Receives `packets` (every `loss_every`-th one lost, 0: none) and plays a frame per packet.
fn receive_pass(
    packets: &[(u8, Vec<u8>)],
    secret: &Secret32,
    loss_every: usize,
    concealment: Concealment,
) {
    let mut keys = FrameReceiver::default();
    keys.add_key(frame_kid(1, 0), &BaseKey::for_sender(secret, 1, 0))
        .unwrap();
    let mut rx = VoiceReceiver::new(keys, JitterConfig::default(), concealment).unwrap();
    let mut out = [0i16; FRAME_SAMPLES];
    // Packet i arrives at i * 20 ms and the device ticks 5 ms later, so the jitter buffer
    // plays what its target says is due then (with the extra frame held under loss, the packet
    // after a lost one is there, as on a real path).
    for (i, (kind, p)) in packets.iter().enumerate() {
        let now = i as u64 * FRAME_US;
        if loss_every == 0 || i % loss_every != 3 {
            rx.receive_typed(p, now, *kind).unwrap();
        }
        rx.play(now + 5_000, &mut out).unwrap();
    }
}

/// CPU per sent and per received frame, counted in this thread's own CPU time (not wall
/// clock, so other processes on the machine do not inflate it); best of three passes.
fn cpu_report(input: &[i16]) {
    let frames = input.len().div_ceil(FRAME_SAMPLES);
    let secret = Secret32::from_bytes([0x11; 32]);
    let measure = |f: &mut dyn FnMut()| -> f64 {
        (0..3)
            .filter_map(|_| {
                let start = thread_cpu_ns()?;
                f();
                Some((thread_cpu_ns()? - start) as f64 / 1e6)
            })
            .fold(f64::INFINITY, f64::min)
    };
    let new_sender = || {
        let mut tx = VoiceSender::new(
            CodecConfig {
                complexity: encoder_complexity(),
                ..CodecConfig::default()
            },
            FrameSender::for_call(&secret, 1, 0),
        )
        .unwrap();
        // 10% random loss reported: a copy of the previous frame in every packet.
        tx.receiver_report(0.1, 1.0).unwrap();
        tx
    };
    // Packets to receive, made once.
    let mut tx = new_sender();
    let packets: Vec<(u8, Vec<u8>)> = (0..frames)
        .map(|f| tx.send_typed(&frame_of(input, f)).unwrap())
        .collect();
    let send_ms = measure(&mut || {
        let mut tx = new_sender();
        let mut out = Vec::new();
        for f in 0..frames {
            tx.send_into(&frame_of(input, f), &mut out).unwrap();
        }
    });
    let recv_clean = measure(&mut || receive_pass(&packets, &secret, 0, Concealment::default()));
    let recv_lossy = measure(&mut || receive_pass(&packets, &secret, 10, Concealment::default()));
    let recv_plain = measure(&mut || receive_pass(&packets, &secret, 10, Concealment::plain()));
    let per = |ms: f64| ms / frames as f64;
    println!(
        "CPU, thread CPU time, best of 3 (encoder complexity {}): {:.3} ms per sent frame (Opus encode + a redundant copy + encrypt); per received frame {:.3} ms without loss, {:.3} ms with 10% loss (copies, FEC, deep PLC), {:.3} ms with 10% loss and classic PLC",
        encoder_complexity(),
        per(send_ms),
        per(recv_clean),
        per(recv_lossy),
        per(recv_plain),
    );
}

/// Opus encoder complexity (env `COMPLEXITY`, default the pipeline's).
fn encoder_complexity() -> u8 {
    std::env::var("COMPLEXITY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CodecConfig::default().complexity)
}

fn frame_of(pcm: &[i16], f: usize) -> Frame {
    let mut frame = [0; FRAME_SAMPLES];
    let start = (f * FRAME_SAMPLES).min(pcm.len());
    let end = ((f + 1) * FRAME_SAMPLES).min(pcm.len());
    frame[..end - start].copy_from_slice(&pcm[start..end]);
    frame
}

fn samples_at(us: u64) -> usize {
    (us * u64::from(SAMPLE_RATE) / 1_000_000) as usize
}

/// One pass of `input` through sender, channel and receiver. Frame `f` is captured during
/// `[f, f+1) * 20 ms` and sent at its end; the receiver's device ticks at `k * 10 ms + phase`
/// (10 ms of audio per tick, as the call engine plays).
fn run(
    input: &[i16],
    channel: &Channel,
    concealment: Concealment,
    red: bool,
    phase_us: u64,
) -> RunResult {
    // +DRED holds a steady 3 frames under loss (not the burst-following lookahead, whose
    // changes of target cost a stretch or a skip each).
    let exp = Exp {
        concealment,
        dred: if concealment.dred { 10 } else { 0 },
        lookahead: if concealment.dred { 3 } else { 1 },
        lookahead_min: if concealment.dred { 3 } else { 1 },
        hint: 1.0,
        bitrate: 64_000,
        red,
        lookahead_loss: -1.0,
    };
    run_exp(input, channel, &exp, phase_us)
}

/// An experimental variant (env `EXPERIMENT`).
#[derive(Debug, Clone, Copy)]
struct Exp {
    concealment: Concealment,
    dred: u8,
    lookahead: u64,
    lookahead_min: u64,
    hint: f32,
    bitrate: u32,
    /// Whether the sender may add redundant copies.
    red: bool,
    /// The jitter buffer's `fec_lookahead_loss` (negative: its default).
    lookahead_loss: f32,
}

fn parse_exp(spec: &str) -> (String, Exp) {
    let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let mut e = Exp {
        concealment: Concealment::default(),
        dred: 0,
        lookahead: 1,
        lookahead_min: 1,
        hint: 1.0,
        bitrate: 64_000,
        red: true,
        lookahead_loss: -1.0,
    };
    for kv in rest.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap();
        match k {
            "fec" => e.concealment.fec = v == "1",
            "deep" => e.concealment.deep_plc = v == "1",
            "dred" => {
                e.dred = v.parse().unwrap();
                e.concealment.dred = e.dred > 0;
            }
            "la" => e.lookahead = v.parse().unwrap(),
            "lamin" => e.lookahead_min = v.parse().unwrap(),
            "br" => e.bitrate = v.parse().unwrap(),
            "hint" => e.hint = v.parse().unwrap(),
            "lal" => e.lookahead_loss = v.parse().unwrap(),
            "red" => e.red = v == "1",
            _ => panic!("unknown key {k}"),
        }
    }
    (name.to_string(), e)
}

fn experiment(spec: &str, input: &[i16], reference: &[i16], dir: &Path, seeds: u64) {
    let variants: Vec<(String, Exp)> = spec.split(';').map(parse_exp).collect();
    let cells = std::env::var("CELLS").unwrap_or_else(|_| "r10,r20,b10".into());
    let frames = input.len().div_ceil(FRAME_SAMPLES);
    print!("{:<8} {:>3}", "cell", "jit");
    for (n, _) in &variants {
        print!(" | {n:>14}");
    }
    println!();
    for cell in cells.split(',') {
        let (kind, rest) = cell.split_at(1);
        let (pct, jit) = rest.split_once('j').unwrap_or((rest, "0"));
        let p: f64 = pct.parse::<f64>().unwrap() / 100.0;
        let loss = match kind {
            "r" => Loss::Random(p),
            "b" => Loss::Bursty(p),
            _ => Loss::None,
        };
        let jitter_ms: u64 = jit.parse().unwrap();
        print!("{cell:<8} {jitter_ms:>3}");
        for (name, e) in &variants {
            let (mut score, mut kbps) = (0.0, 0.0);
            for seed in 0..seeds {
                let channel = Channel::new(loss, jitter_ms, frames, 1000 + seed * 7919);
                let phase = (seed * 7_000 + 3_000) % FRAME_US;
                let r = run_exp(input, &channel, e, phase);
                let degraded = to_16k(dir, &format!("exp_{name}_{cell}_{seed}"), &r.output);
                score += f64::from(pesq::pesq_wb(reference, &degraded).unwrap());
                if std::env::var("EXP_DEBUG").is_ok() {
                    eprintln!("{name} {cell}: {:?} {:?}", r.receiver, r.jitter);
                }
                kbps += r.sender.opus_bytes as f64 * 8.0 / (r.sender.frames as f64 * 0.02) / 1000.0;
            }
            print!(
                " | {:>5.2} {:>5.1}kb",
                score / seeds as f64,
                kbps / seeds as f64
            );
        }
        println!();
    }
}

fn run_exp(input: &[i16], channel: &Channel, exp: &Exp, phase_us: u64) -> RunResult {
    let concealment = exp.concealment;
    let fec = concealment.fec;
    let secret = Secret32::from_bytes([0x5a; 32]);
    let mut keys = FrameReceiver::default();
    keys.add_key(frame_kid(1, 0), &BaseKey::for_sender(&secret, 1, 0))
        .unwrap();
    let base = CodecConfig {
        complexity: encoder_complexity(),
        ..CodecConfig::default()
    };
    let codec = CodecConfig {
        fec,
        dred_duration: exp.dred,
        bitrate: exp.bitrate,
        ..base
    };
    let mut tx = VoiceSender::new(codec, FrameSender::for_call(&secret, 1, 0)).unwrap();
    tx.allow_redundancy(exp.red);
    let jitter = JitterConfig {
        fec_lookahead: fec || exp.dred > 0,
        // Waiting past the next packet only pays with DRED.
        max_lookahead_frames: exp.lookahead,
        min_lookahead_frames: exp.lookahead_min,
        fec_lookahead_loss: if exp.lookahead_loss < 0.0 {
            JitterConfig::default().fec_lookahead_loss
        } else {
            exp.lookahead_loss
        },
        ..JitterConfig::default()
    };
    let mut rx = VoiceReceiver::new(keys, jitter, concealment).unwrap();

    let frames = channel.lost.len();
    let end_us = (frames as u64 + 15) * FRAME_US + NETWORK_DELAY_US;
    let mut output = vec![0i16; samples_at(end_us + FRAME_US) + FRAME_SAMPLES];
    // (arrival, frame, packet type, packet), earliest first.
    type InFlight = Reverse<(u64, usize, u8, Vec<u8>)>;
    let mut in_flight: BinaryHeap<InFlight> = BinaryHeap::new();
    let (mut send_cpu, mut recv_cpu) = (Duration::ZERO, Duration::ZERO);
    let mut next_frame = 0;
    let mut ticks = 0u64;
    let mut packet = Vec::new();
    // The device ticks every 10 ms, as the call engine does (`HalfPlayout`).
    let mut half = [0i16; HALF_SAMPLES];
    let mut playout = HalfPlayout::new();
    let mut k = 0u64;
    loop {
        let now = k * HALF_US + phase_us;
        if now > end_us {
            break;
        }
        while next_frame < frames && (next_frame as u64 + 1) * FRAME_US <= now {
            let pcm = frame_of(input, next_frame);
            let t = Instant::now();
            let kind = tx.send_into(&pcm, &mut packet).unwrap();
            send_cpu += t.elapsed();
            if !channel.lost[next_frame] {
                let arrival = (next_frame as u64 + 1) * FRAME_US
                    + NETWORK_DELAY_US
                    + channel.jitter_us[next_frame];
                in_flight.push(Reverse((arrival, next_frame, kind, packet.clone())));
            }
            next_frame += 1;
        }
        let t = Instant::now();
        while let Some(Reverse((arrival, _, _, _))) = in_flight.peek() {
            if *arrival > now {
                break;
            }
            let Some(Reverse((arrival, _, kind, p))) = in_flight.pop() else {
                break;
            };
            rx.receive_typed(&p, arrival, kind).unwrap();
        }
        let decoded = playout.play(&mut rx, now, &mut half).unwrap();
        recv_cpu += t.elapsed();
        ticks += u64::from(decoded.is_some());
        let pos = samples_at(now);
        output[pos..pos + HALF_SAMPLES].copy_from_slice(&half);
        if (fec || exp.dred > 0) && k % 100 == 99 {
            tx.receiver_report(rx.loss_report() * exp.hint, rx.jitter().mean_burst())
                .unwrap();
        }
        k += 1;
        // Stop once everything sent was played: ticks after the end would count as losses.
        if next_frame == frames && in_flight.is_empty() && rx.jitter().is_empty() {
            break;
        }
    }
    let shift = samples_at(NETWORK_DELAY_US);
    let mut aligned = output[shift..].to_vec();
    aligned.truncate(input.len());
    aligned.resize(input.len(), 0);
    let lookahead = tx.encoder_mut().lookahead().unwrap();
    RunResult {
        output: aligned,
        sender: tx.stats(),
        receiver: rx.stats(),
        jitter: rx.jitter().stats(),
        p95_us: rx.jitter().p95_jitter_us(),
        target_us: rx.jitter().target_us(),
        send_cpu,
        recv_cpu,
        ticks,
        lookahead,
    }
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (run scripts/install-deps.sh for espeak-ng and sox)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_wav(path: &Path) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).unwrap();
    r.samples::<i16>().map(Result::unwrap).collect()
}

fn write_wav(path: &Path, pcm: &[i16], rate: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in pcm {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
}

/// Speech at 48 kHz mono: espeak-ng per sentence, resampled by sox, joined with pauses.
fn make_speech(dir: &Path) -> Vec<i16> {
    if let Ok(path) = std::env::var("VOICE_WAV") {
        let mut src = WavSource::open(&path).unwrap();
        let mut pcm = Vec::new();
        let mut f = [0; FRAME_SAMPLES];
        while src.read_frame(&mut f).unwrap() {
            pcm.extend_from_slice(&f);
        }
        return pcm;
    }
    let pause = vec![0i16; SAMPLE_RATE as usize * 6 / 10];
    let mut pcm = pause.clone();
    for (i, sentence) in SENTENCES.iter().enumerate() {
        let raw = dir.join(format!("s{i}.wav"));
        let wide = dir.join(format!("s{i}_48k.wav"));
        let voice = if i % 2 == 0 { "en-us" } else { "en-gb" };
        sh(Command::new("espeak-ng")
            .args(["-v", voice, "-s", "150", "-w"])
            .arg(&raw)
            .arg(sentence));
        sh(Command::new("sox")
            // Repeatable dither: random dither made every run score differently.
            .arg("-R")
            .arg(&raw)
            .args(["-r", "48000", "-c", "1", "-b", "16"])
            .arg(&wide));
        pcm.extend(read_wav(&wide));
        pcm.extend_from_slice(&pause);
    }
    pcm
}

/// 48 kHz -> 16 kHz through sox (the same path for reference and degraded signals).
fn to_16k(dir: &Path, name: &str, pcm: &[i16]) -> Vec<i16> {
    let wide = dir.join(format!("{name}_48k.wav"));
    let narrow = dir.join(format!("{name}_16k.wav"));
    write_wav(&wide, pcm, SAMPLE_RATE);
    sh(Command::new("sox")
        // Repeatable dither: random dither made every run score differently.
        .arg("-R")
        .arg(&wide)
        .args(["-r", "16000"])
        .arg(&narrow));
    read_wav(&narrow)
}

/// Lag (samples at 48 kHz, within `max_lag`) where `out` best matches `input`.
fn delay_lag(input: &[i16], out: &[i16], max_lag: usize) -> usize {
    let n = input
        .len()
        .min(out.len())
        .saturating_sub(max_lag)
        .min(SAMPLE_RATE as usize * 6);
    let corr = |lag: usize| -> f64 {
        (0..n)
            .map(|i| f64::from(input[i]) * f64::from(out[i + lag]))
            .sum()
    };
    let coarse = (0..max_lag)
        .step_by(8)
        .max_by(|a, b| corr(*a).total_cmp(&corr(*b)))
        .unwrap_or(0);
    (coarse.saturating_sub(8)..(coarse + 8).min(max_lag))
        .max_by(|a, b| corr(*a).total_cmp(&corr(*b)))
        .unwrap_or(coarse)
}

fn main() {
    let seeds: u64 = std::env::var("SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = match std::env::var("VOICE_OUT") {
        Ok(d) => PathBuf::from(d),
        Err(_) => std::env::temp_dir().join(format!("securecomm-voice-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let input = make_speech(&dir);
    let reference = to_16k(&dir, "reference", &input);
    let frames = input.len().div_ceil(FRAME_SAMPLES);
    println!(
        "voice_quality: {:.1} s of speech ({} frames), 64 kbit/s, {} seed(s) per cell, network delay {} ms, files in {}",
        input.len() as f64 / f64::from(SAMPLE_RATE),
        frames,
        seeds,
        NETWORK_DELAY_US / 1000,
        dir.display()
    );

    if let Ok(spec) = std::env::var("EXPERIMENT") {
        experiment(&spec, &input, &reference, &dir, seeds);
        return;
    }
    // Sanity: PESQ of the reference against itself.
    let self_score = pesq::pesq_wb(&reference, &reference).unwrap();
    println!("PESQ-WB of the reference against itself: {self_score:.2}");

    let losses = [
        Loss::None,
        Loss::Random(0.05),
        Loss::Random(0.10),
        Loss::Random(0.20),
        Loss::Bursty(0.10),
        Loss::Bursty(0.20),
    ];
    let jitters = [0u64, 30];

    let mut send_cpu = Duration::ZERO;
    let mut sent = 0u64;
    let mut recv_cpu = Duration::ZERO;
    let mut ticks = 0u64;
    let mut overhead_sum = 0u64;
    let mut overhead_frames = 0u64;
    let mut overhead_max = 0usize;
    let mut opus_bytes = 0u64;

    println!();
    println!(
        "PESQ-WB (P.862.2 MOS-LQO) at 64 kbit/s, mean of {seeds} seed(s). ours = redundant copies under loss (RED) + FEC + deep PLC; +DRED = FEC + deep PLC + DRED (10 x 10 ms, lookahead 3 frames; experimental, off by default); no RED = FEC + deep PLC; baseline = no FEC, classic PLC; diff = ours - baseline; kbit/s on the wire (Opus, copies, crypto)"
    );
    println!(
        "{:<13} {:>6} | {:>6} {:>8} {:>8} {:>8} {:>6} | {:>9} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7} {:>27}",
        "loss",
        "jitter",
        "ours",
        "+DRED",
        "no RED",
        "baseline",
        "diff",
        "loss seen",
        "p95 jit",
        "JB delay",
        "late%",
        "RED",
        "FEC",
        "DRED",
        "PLC",
        "stretch",
        "kbit/s ours/+DRED/noRED/base"
    );
    let mut jb_rows = Vec::new();
    for loss in losses {
        for jitter_ms in jitters {
            let (mut ours, mut deep, mut nored, mut base) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            let mut red_frames = 0u64;
            // Wire bit rate (Opus + crypto overhead) per variant, kbit/s.
            let mut kbps = [0.0f64; VARIANTS.len()];
            let mut stats = (
                0.0f64, 0.0f64, 0.0f64, 0.0f64, 0u64, 0u64, 0u64, 0.0f64, 0u64,
            );
            for seed in 0..seeds {
                let channel = Channel::new(loss, jitter_ms, frames, 1000 + seed * 7919);
                let phase = (seed * 7_000 + 3_000) % FRAME_US;
                for (v, (variant, concealment, red)) in VARIANTS.into_iter().enumerate() {
                    let r = run(&input, &channel, concealment, red, phase);
                    kbps[v] += r.sender.wire_bytes as f64 * 8.0
                        / (r.sender.frames as f64 * FRAME_US as f64 / 1e6)
                        / 1000.0
                        / seeds as f64;
                    let name = format!(
                        "{}_{}ms_seed{}_{}",
                        loss.label().replace([' ', '%'], ""),
                        jitter_ms,
                        seed,
                        variant
                    );
                    let degraded = to_16k(&dir, &name, &r.output);
                    let score = f64::from(pesq::pesq_wb(&reference, &degraded).unwrap());
                    if variant == "dred" {
                        deep += score;
                        stats.8 += r.receiver.dred;
                    } else if variant == "nored" {
                        nored += score;
                    } else if variant == "ours" {
                        ours += score;
                        send_cpu += r.send_cpu;
                        sent += r.sender.frames;
                        recv_cpu += r.recv_cpu;
                        ticks += r.ticks;
                        overhead_sum +=
                            r.sender.wire_bytes - r.sender.opus_bytes - r.sender.red_bytes;
                        red_frames += r.receiver.redundant;
                        overhead_frames += r.sender.frames;
                        overhead_max = overhead_max.max(r.sender.max_overhead);
                        opus_bytes += r.sender.opus_bytes;
                        let lost_frac =
                            channel.lost.iter().filter(|l| **l).count() as f64 / frames as f64;
                        stats.0 += lost_frac;
                        stats.1 += r.p95_us as f64 / 1000.0;
                        stats.2 += r.jitter.mean_buffer_delay_ms();
                        stats.3 += r.jitter.late_fraction() * 100.0;
                        stats.4 += r.receiver.fec;
                        stats.5 += r.receiver.concealed;
                        stats.6 += r.jitter.stretched;
                        stats.7 += r.target_us as f64 / 1000.0;
                        if seed == 0 {
                            jb_rows.push((loss, jitter_ms, r.jitter, r.p95_us, r.target_us));
                        }
                    } else {
                        base += score;
                    }
                }
            }
            let s = seeds as f64;
            ours /= s;
            deep /= s;
            nored /= s;
            base /= s;
            println!(
                "{:<13} {:>3} ms | {:>6.2} {:>8.2} {:>8.2} {:>8.2} {:>+6.2} | {:>8.1}% {:>5.1} ms {:>5.1} ms {:>5.2}% {:>6} {:>6} {:>6} {:>6} {:>7} {:>27}",
                loss.label(),
                jitter_ms,
                ours,
                deep,
                nored,
                base,
                ours - base,
                stats.0 / s * 100.0,
                stats.1 / s,
                stats.2 / s,
                stats.3 / s,
                red_frames / seeds,
                stats.4 / seeds,
                stats.8 / seeds,
                stats.5 / seeds,
                stats.6 / seeds,
                format!(
                    "{:.1}/{:.1}/{:.1}/{:.1}",
                    kbps[0], kbps[1], kbps[2], kbps[3]
                ),
            );
        }
    }
    println!(
        "(ours columns: loss seen = channel loss; JB delay = mean playout time minus earliest possible arrival; RED/FEC/PLC/stretch = frames per run played from a copy, rebuilt by FEC, concealed, inserted; DRED = frames rebuilt by DRED in the +DRED run)"
    );

    // Pipeline delay, capture to playback, without network delay or jitter, per tick phase.
    println!();
    println!(
        "Pipeline delay capture -> playback excluding the network (no loss, no jitter), by cross-correlation:"
    );
    let clean = Channel::new(Loss::None, 0, frames, 1);
    let mut lags = Vec::new();
    let mut lookahead = 0;
    // The device ticks every 10 ms, so phases repeat after 10 ms; 1 ms steps cover them.
    for phase_us in (0..HALF_US).step_by(1_000) {
        let r = run(&input, &clean, Concealment::default(), true, phase_us);
        lookahead = r.lookahead;
        let lag = delay_lag(&input, &r.output, samples_at(120_000));
        let ms = lag as f64 * 1000.0 / f64::from(SAMPLE_RATE);
        println!(
            "  device tick phase {:>4.1} ms: {ms:5.1} ms (jitter-buffer delay {:.1} ms)",
            phase_us as f64 / 1000.0,
            r.jitter.mean_buffer_delay_ms()
        );
        lags.push(ms);
    }
    println!(
        "  over phases: mean {:.1} ms, worst {:.1} ms  (= 20 ms frame + {:.1} ms Opus lookahead + jitter buffer margin + device phase)",
        lags.iter().sum::<f64>() / lags.len() as f64,
        lags.iter().copied().fold(0.0, f64::max),
        lookahead as f64 * 1000.0 / f64::from(SAMPLE_RATE)
    );

    println!();
    println!(
        "Jitter buffer, ours, seed 0 (target = p95 jitter + 5 ms margin, + 20 ms while loss > 1%, or + the farthest copy's distance while copies come):"
    );
    for (loss, jitter_ms, j, p95, target) in &jb_rows {
        println!(
            "  {:<13} {:>2} ms jitter: p95 {:>5.1} ms, final target {:>5.1} ms, mean JB delay {:>5.1} ms (p95 + {:>5.1} ms), mean residence {:>5.1} ms, late {:>5.2}%, skipped {}, stretched {}",
            loss.label(),
            jitter_ms,
            *p95 as f64 / 1000.0,
            *target as f64 / 1000.0,
            j.mean_buffer_delay_ms(),
            j.mean_buffer_delay_ms() - *p95 as f64 / 1000.0,
            j.mean_residence_ms(),
            j.late_fraction() * 100.0,
            j.skipped,
            j.stretched
        );
    }

    println!();
    println!(
        "Crypto overhead: mean {:.2} bytes/frame, max {} bytes/frame (SFrame header + 16-byte tag); Opus mean {:.1} kbit/s",
        overhead_sum as f64 / overhead_frames as f64,
        overhead_max,
        opus_bytes as f64 * 8.0 / (overhead_frames as f64 * 0.02) / 1000.0
    );
    println!(
        "CPU, wall clock inside the table's runs (inflated when the machine is shared): {:.3} ms per sent frame, {:.3} ms per received frame, {} and {} frames",
        send_cpu.as_secs_f64() * 1000.0 / sent as f64,
        recv_cpu.as_secs_f64() * 1000.0 / ticks as f64,
        sent,
        ticks
    );
    cpu_report(&input);

    // Keep one pair of recordings to listen to.
    let listen = Channel::new(Loss::Bursty(0.10), 30, frames, 1000);
    for (variant, concealment, red) in VARIANTS {
        let r = run(&input, &listen, concealment, red, 3_000);
        let path = dir.join(format!("listen_bursty10_jitter30_{variant}.wav"));
        let mut sink = WavSink::create(&path).unwrap();
        for f in 0..frames {
            sink.write_frame(&frame_of(&r.output, f)).unwrap();
        }
        sink.finish().unwrap();
    }
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
}
