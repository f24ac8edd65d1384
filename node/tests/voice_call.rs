//! Voice calls with the real `securecomm-node` binary on loopback: each node speaks a WAV file
//! and records what it hears; the recordings are checked by correlation against what the
//! others said.
//!
//! Each speaker's signal is a tone at its own frequency, switched on and off by its own
//! pseudo-random pattern of 100 ms slots. In a recording, the energy at a speaker's frequency
//! (Goertzel, per 20 ms frame) must follow that speaker's pattern (Pearson correlation at the
//! best lag), and a node must not hear itself. Measured: 0.75 to 0.84 for the others, 0.16 to
//! 0.24 for oneself (the best of about 700 lags of an unrelated signal); the test asks more
//! than 0.55 and less than 0.4.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod procs;

use std::path::{Path, PathBuf};

use procs::*;
use serde_json::Value;

const RATE: u32 = 48_000;
const FRAME: usize = 960;
/// Frames of 20 ms per pattern slot (100 ms).
const SLOT: usize = 5;

struct Speaker {
    freq: f64,
    /// On/off per 20 ms frame, after the lead-in.
    gate: Vec<bool>,
}

fn pattern(seed: u64, slots: usize) -> Vec<bool> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(slots * SLOT);
    for _ in 0..slots {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let on = x & 1 == 1;
        out.extend(std::iter::repeat_n(on, SLOT));
    }
    out
}

/// Writes `lead_frames` of silence then the speaker's gated tone.
fn write_wav(path: &Path, s: &Speaker, lead_frames: usize) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for _ in 0..lead_frames * FRAME {
        w.write_sample(0i16).unwrap();
    }
    let mut n = 0u64;
    for &on in &s.gate {
        for _ in 0..FRAME {
            let v = if on {
                (std::f64::consts::TAU * s.freq * n as f64 / f64::from(RATE)).sin() * 8000.0
            } else {
                0.0
            };
            w.write_sample(v as i16).unwrap();
            n += 1;
        }
    }
    w.finalize().unwrap();
}

fn read_wav(path: &Path) -> Vec<i16> {
    let r = hound::WavReader::open(path).unwrap();
    assert_eq!(r.spec().sample_rate, RATE);
    r.into_samples::<i16>().map(|s| s.unwrap()).collect()
}

/// Energy at `freq` in each 20 ms frame (Goertzel).
fn envelope(samples: &[i16], freq: f64) -> Vec<f64> {
    let k = 2.0 * (std::f64::consts::TAU * freq / f64::from(RATE)).cos();
    samples
        .chunks_exact(FRAME)
        .map(|f| {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for &x in f {
                let s0 = f64::from(x) + k * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            (s1 * s1 + s2 * s2 - k * s1 * s2).max(0.0).sqrt()
        })
        .collect()
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

/// Best correlation of the speaker's gate with the recording's energy at its frequency, over
/// every lag that keeps the whole pattern inside the recording.
fn heard(recording: &[i16], s: &Speaker) -> f64 {
    let env = envelope(recording, s.freq);
    let gate: Vec<f64> = s.gate.iter().map(|&g| if g { 1.0 } else { 0.0 }).collect();
    if env.len() < gate.len() {
        return 0.0;
    }
    (0..=env.len() - gate.len())
        .map(|lag| pearson(&env[lag..lag + gate.len()], &gate))
        .fold(f64::MIN, f64::max)
}

fn participants(n: &Node) -> Vec<Value> {
    n.cli(&["voice", "status"])["participants"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `n` is in a call with `count` others, each on `path` and decoding its frames.
fn wait_call(n: &Node, count: usize, path: &str) {
    until(
        &format!("{} to hear {count} participants over {path} paths", n.name),
        || {
            let p = participants(n);
            (p.len() == count
                && p.iter()
                    .all(|x| x["path"] == path && x["accepted"].as_u64().unwrap_or(0) > 0))
            .then_some(())
        },
    );
}

fn speakers() -> Vec<Speaker> {
    // 8 s of pattern each; frequencies apart and not harmonics of each other.
    [(500.0, 11), (850.0, 23), (1330.0, 37)]
        .into_iter()
        .map(|(freq, seed)| Speaker {
            freq,
            gate: pattern(seed, 80),
        })
        .collect()
}

/// The acceptance test: a three-node call on loopback where each node plays a different WAV
/// and records; each recording contains the other two speakers and not its own.
#[test]
fn three_node_call_each_hears_the_other_two() {
    let relay = TestRelay::start(None);
    let mut nodes: Vec<Node> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| Node::new(n))
        .collect();
    for n in &mut nodes {
        n.start(&["--listen", "/ip4/127.0.0.1/tcp/0", "--relay", &relay.addr]);
    }
    let (a, rest) = nodes.split_first().unwrap();
    let (gid, code) = create_and_invite(a, "Voice Club", 2);
    a.cli(&["channel", "create", &gid, "Lounge", "--voice"]);
    for n in rest {
        let j = n.cli(&["guild", "join", &code]);
        assert_eq!(j["ready"], true, "{j}");
    }
    for n in &nodes {
        wait_keyed(n, &gid, 3);
    }
    for n in &nodes {
        until(&format!("{} to see the voice channel", n.name), || {
            let ch = n.cli(&["channel", "list", &gid]);
            ch.as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "Lounge")
                .then_some(())
        });
    }
    let sp = speakers();
    let dir = tempfile::tempdir().unwrap();
    let wav = |i: usize, what: &str| -> PathBuf { dir.path().join(format!("{i}-{what}.wav")) };
    // A lead-in of silence while the call connects: 6 s.
    for (i, s) in sp.iter().enumerate() {
        write_wav(&wav(i, "in"), s, 300);
    }
    for (i, n) in nodes.iter().enumerate() {
        let input = wav(i, "in");
        let output = wav(i, "out");
        let j = n.cli(&[
            "voice",
            "join",
            &gid,
            "Lounge",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ]);
        assert_eq!(j["in_call"], true, "{j}");
    }
    for n in &nodes {
        wait_call(n, 2, "direct");
    }
    // Everyone's pattern ends 6 + 8 s after their join; wait for the last plus playout.
    std::thread::sleep(std::time::Duration::from_secs(15));
    let status: Vec<Value> = nodes.iter().map(|n| n.cli(&["voice", "status"])).collect();
    for n in &nodes {
        n.cli(&["voice", "leave"]);
    }
    for (i, n) in nodes.iter().enumerate() {
        let rec = read_wav(&wav(i, "out"));
        for (j, s) in sp.iter().enumerate() {
            let c = heard(&rec, s);
            eprintln!("{} hears speaker {j} ({} Hz): r = {c:.2}", n.name, s.freq);
            if i == j {
                assert!(c < 0.4, "{} hears itself (r = {c:.2})", n.name);
            } else {
                assert!(
                    c > 0.55,
                    "{} does not hear speaker {j} (r = {c:.2}); status {}",
                    n.name,
                    status[i]
                );
            }
        }
    }
    for n in &mut nodes {
        n.stop();
    }
}
