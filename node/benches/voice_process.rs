//! CPU cost of capture processing (issue 9, item 2) per 20 ms frame, in release.
//!
//! Runs 10 s of a synthetic call (far-end talk through an echo path, a near-end talker and
//! noise at the microphone) through [`Processor`] in several configurations, and prints the
//! mean microseconds of this thread's CPU time per 20 ms frame (best of 5 runs) next to two
//! baselines measured in the same run: a plain copy of the frame, and the Opus encode the
//! engine does anyway.
//!
//! Run: `cargo bench -p securecomm-node --bench voice_process`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use securecomm_node::voice::codec::{CodecConfig, VoiceEncoder};
use securecomm_node::voice::process::{ProcessConfig, Processor};
use securecomm_node::voice::{FRAME_SAMPLES, Frame};

const SECONDS: usize = 10;
const RUNS: usize = 5;

fn signals() -> (Vec<Frame>, Vec<Frame>) {
    let len = SECONDS * 48_000;
    let mut seed = 7u32;
    let mut rnd = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    };
    let talk = |i: usize, f0: f32, period: usize, on: usize| -> f32 {
        if i % period >= on {
            return 0.0;
        }
        let t = i as f32 / 48_000.0;
        (1..30)
            .map(|h| {
                let f = h as f32 * f0;
                let g = 1.0 / (1.0 + ((f - 700.0) / 200.0).powi(2))
                    + 0.3 / (1.0 + ((f - 1500.0) / 300.0).powi(2));
                g * (t * f * std::f32::consts::TAU).sin()
            })
            .sum::<f32>()
    };
    let far: Vec<f32> = (0..len)
        .map(|i| 4000.0 * talk(i, 140.0, 96_000, 60_000) + 100.0 * rnd())
        .collect();
    let near: Vec<f32> = (0..len)
        .map(|i| 3000.0 * talk(i, 210.0, 120_000, 30_000) + 150.0 * rnd())
        .collect();
    let mut mic = near;
    for (d, g) in [
        (1440usize, 0.4f32),
        (1700, -0.2),
        (2100, 0.12),
        (2900, -0.06),
        (3800, 0.03),
    ] {
        for i in d..len {
            mic[i] += g * far[i - d];
        }
    }
    let to_frames = |x: &[f32]| -> Vec<Frame> {
        x.chunks_exact(FRAME_SAMPLES)
            .map(|c| std::array::from_fn(|i| c[i].clamp(-32768.0, 32767.0) as i16))
            .collect()
    };
    (to_frames(&far), to_frames(&mic))
}

fn best_of<F: FnMut() -> f64>(mut f: F) -> f64 {
    (0..RUNS).map(|_| f()).fold(f64::MAX, f64::min)
}

/// CPU time of this thread, s, from `/proc/thread-self/schedstat` (Linux; the machines here
/// are shared, so wall time also counts other processes' turns). `None` elsewhere.
fn thread_cpu() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// Seconds spent in `f`: thread CPU time where available, wall time otherwise.
fn timed(f: impl FnOnce()) -> f64 {
    let (c0, t0) = (thread_cpu(), Instant::now());
    f();
    match (c0, thread_cpu()) {
        (Some(a), Some(b)) => b - a,
        _ => t0.elapsed().as_secs_f64(),
    }
}

fn main() {
    let (far, mic) = signals();
    let n = mic.len() as f64;
    let copy = best_of(|| {
        timed(|| {
            for m in &mic {
                let mut f = *black_box(m);
                black_box(&mut f);
            }
        }) * 1e6
            / n
    });
    println!("{:<38} {:>8.2} us/frame", "baseline: copy", copy);
    let opus = best_of(|| {
        let mut enc = VoiceEncoder::new(CodecConfig::default()).unwrap();
        let mut out = Vec::with_capacity(1500);
        timed(|| {
            for m in &mic {
                out.clear();
                enc.encode(black_box(m), &mut out).unwrap();
            }
        }) * 1e6
            / n
    });
    println!(
        "{:<38} {:>8.2} us/frame",
        "baseline: Opus encode (default)", opus
    );

    let base = ProcessConfig {
        echo_cancel: false,
        noise_suppress: false,
        vad: false,
        ..ProcessConfig::default()
    };
    let cases: Vec<(&str, ProcessConfig)> = vec![
        (
            "NS (RNNoise)",
            ProcessConfig {
                noise_suppress: true,
                ..base.clone()
            },
        ),
        (
            "VAD (RNNoise probability, no NS)",
            ProcessConfig {
                vad: true,
                ..base.clone()
            },
        ),
        (
            "NS + VAD",
            ProcessConfig {
                noise_suppress: true,
                vad: true,
                ..base.clone()
            },
        ),
        (
            "AEC, 80 ms tail",
            ProcessConfig {
                echo_cancel: true,
                echo_tail_ms: 80,
                ..base.clone()
            },
        ),
        (
            "AEC, 160 ms tail (default)",
            ProcessConfig {
                echo_cancel: true,
                ..base.clone()
            },
        ),
        (
            "AEC, 320 ms tail",
            ProcessConfig {
                echo_cancel: true,
                echo_tail_ms: 320,
                ..base.clone()
            },
        ),
        (
            "all (AEC 160 ms + NS + VAD, default)",
            ProcessConfig::default(),
        ),
    ];
    let mut all = 0.0;
    for (name, cfg) in cases {
        let us = best_of(|| {
            let mut p = Processor::new(cfg.clone()).unwrap();
            timed(|| {
                for (i, m) in mic.iter().enumerate() {
                    let mut f = *m;
                    black_box(p.capture(&mut f));
                    black_box(&f);
                    if let Some(next) = far.get(i + 1) {
                        p.far_end(next);
                    }
                }
            }) * 1e6
                / n
        });
        println!(
            "{:<38} {:>8.2} us/frame  (+{:.2} over copy)",
            name,
            us,
            us - copy
        );
        all = us;
    }
    println!(
        "send path per frame: Opus {:.0} us + processing {:.0} us = {:.0} us (issue 9 budget: 300 us)",
        opus,
        all,
        opus + all
    );
}
