//! Voice calls in a scenario: generated speech, turn-taking, recordings scored with PESQ-WB.
//!
//! A `call` step puts its hosts in one voice channel. Each host speaks a different sentence
//! (espeak-ng, a different voice each) in its own turn, after a lead-in of silence while the
//! call connects, and records what it hears. Because only one host speaks per turn, the
//! listener's recording during that turn is that speaker's voice alone, after Opus, encryption,
//! the network (direct or through the media relay) and the jitter buffer. Each such segment is
//! found in the recording (energy envelopes at 1 ms, correlated around where the turn should
//! be) and scored with PESQ-WB (P.862.2, the `pesq` crate) against the speaker's own 16 kHz
//! reference; both go through the same resampler (sox).

use std::path::{Path, PathBuf};
use std::process::Command;

use securecomm_node::voice::device::{AudioSink, AudioSource, WavSink, WavSource};
use securecomm_node::voice::{FRAME_SAMPLES, Frame, SILENCE};
use serde::Serialize;

use crate::error::{NetsimError, Result};

/// Sentences the hosts say, one each, in turn.
const SENTENCES: [&str; 8] = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please bring the blue folder to the meeting room before noon today.",
    "A gentle breeze moved the tall grass across the quiet summer field.",
    "We will need seven more chairs and a long table for the dinner.",
    "The train to the coast leaves at half past nine from platform four.",
    "Remember to water the plants and feed the cat while I am away.",
    "Her old radio still plays the evening news every single night.",
    "Count the boxes twice before you sign for the delivery at the door.",
];
/// espeak-ng voices, one per host.
const VOICES: [&str; 8] = [
    "en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+m5", "en-gb+f2", "en-us+f4", "en-gb+m7",
];

/// Speech of one host.
#[derive(Debug, Clone)]
pub struct Speech {
    /// 48 kHz mono, what the host's node reads.
    pub samples48: Vec<i16>,
    /// The same at 16 kHz, the PESQ reference.
    pub reference16: Vec<i16>,
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().map_err(|e| NetsimError::Command {
        cmd: format!("{cmd:?}"),
        status: e.to_string(),
        output: "is it installed? scripts/install-deps.sh installs espeak-ng and sox".into(),
    })?;
    if !out.status.success() {
        return Err(NetsimError::Command {
            cmd: format!("{cmd:?}"),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Reads a 16-bit mono WAV of any rate (for the 16 kHz files; `WavSource` takes 48 kHz only).
fn read_pcm(path: &Path) -> Result<Vec<i16>> {
    let bytes = std::fs::read(path).map_err(|e| NetsimError::io(path.display().to_string(), e))?;
    // sox writes a canonical 44-byte header for `-b 16 -c 1 -e signed` WAV; find "data".
    let at =
        bytes
            .windows(4)
            .position(|w| w == b"data")
            .ok_or_else(|| NetsimError::Unexpected {
                what: format!("WAV {}", path.display()),
                expected: "a data chunk".into(),
                got: "none".into(),
            })?;
    let data = bytes.get(at + 8..).unwrap_or_default();
    Ok(data
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect())
}

fn read_wav48(path: &Path) -> Result<Vec<i16>> {
    let mut src = WavSource::open(path).map_err(|e| NetsimError::Unexpected {
        what: format!("WAV {}", path.display()),
        expected: "48 kHz audio".into(),
        got: e.to_string(),
    })?;
    let mut out = Vec::new();
    let mut f: Frame = SILENCE;
    while src.read_frame(&mut f).unwrap_or(false) {
        out.extend_from_slice(&f);
    }
    Ok(out)
}

/// Resamples a WAV to 16 kHz mono 16-bit with sox and reads it.
fn to16k(input: &Path, out: &Path) -> Result<Vec<i16>> {
    run(Command::new("sox")
        // Repeatable dither: random dither made every run score differently.
        .arg("-R")
        .arg(input)
        .args(["-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer"])
        .arg(out))?;
    read_pcm(out)
}

/// Generates host `i`'s speech in `dir`, at most `max_ms` long (cut with a 10 ms fade; the
/// reference is exactly what is spoken).
pub fn speech(dir: &Path, i: usize, max_ms: u64) -> Result<Speech> {
    let raw = dir.join(format!("speech-{i}-raw.wav"));
    let full = dir.join(format!("speech-{i}-full.wav"));
    let s48 = dir.join(format!("speech-{i}-48k.wav"));
    let s16 = dir.join(format!("speech-{i}-16k.wav"));
    run(Command::new("espeak-ng")
        .args(["-v", VOICES[i % VOICES.len()], "-s", "160", "-w"])
        .arg(&raw)
        .arg(SENTENCES[i % SENTENCES.len()]))?;
    run(Command::new("sox")
        // Repeatable dither: random dither made every run score differently.
        .arg("-R")
        .arg(&raw)
        .args(["-r", "48000", "-c", "1", "-b", "16", "-e", "signed-integer"])
        .arg(&full))?;
    let mut samples48 = read_wav48(&full)?;
    let max = max_ms as usize * (FRAME_SAMPLES / 20);
    if samples48.len() > max {
        samples48.truncate(max);
        let fade = 480.min(max);
        let n = samples48.len();
        for (k, s) in samples48[n - fade..].iter_mut().enumerate() {
            *s = (f64::from(*s) * (fade - k) as f64 / fade as f64) as i16;
        }
    }
    write_wav48(&s48, &samples48)?;
    let reference16 = to16k(&s48, &s16)?;
    Ok(Speech {
        samples48,
        reference16,
    })
}

fn write_wav48(path: &Path, pcm: &[i16]) -> Result<()> {
    let mut sink = WavSink::create(path).map_err(|e| NetsimError::Unexpected {
        what: format!("writing {}", path.display()),
        expected: "a WAV file".into(),
        got: e.to_string(),
    })?;
    for c in pcm.chunks(FRAME_SAMPLES) {
        let mut f: Frame = SILENCE;
        f[..c.len()].copy_from_slice(c);
        sink.write_frame(&f).map_err(|e| NetsimError::Unexpected {
            what: format!("writing {}", path.display()),
            expected: "a WAV file".into(),
            got: e.to_string(),
        })?;
    }
    sink.flush().map_err(|e| NetsimError::Unexpected {
        what: format!("writing {}", path.display()),
        expected: "a WAV file".into(),
        got: e.to_string(),
    })
}

/// Writes a host's input: `lead_ms` of silence, then `turns` turns of `turn_ms`, speaking (at
/// most one turn long) in turn `mine` only, then one second of silence.
pub fn compose(
    path: &Path,
    speech: &Speech,
    lead_ms: u64,
    turn_ms: u64,
    mine: usize,
    turns: usize,
) -> Result<()> {
    let per_ms = FRAME_SAMPLES / 20;
    let turn = turn_ms as usize * per_ms;
    let mut pcm = vec![0i16; lead_ms as usize * per_ms + turns * turn + 1000 * per_ms];
    let start = lead_ms as usize * per_ms + mine * turn;
    let n = speech.samples48.len().min(turn);
    pcm[start..start + n].copy_from_slice(&speech.samples48[..n]);
    write_wav48(path, &pcm)
}

/// Energy per millisecond (16 samples at 16 kHz).
fn envelope(x: &[i16]) -> Vec<f64> {
    x.chunks(16)
        .map(|c| c.iter().map(|&s| f64::from(s).abs()).sum::<f64>() / c.len() as f64)
        .collect()
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    let (mut c, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        c += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    if va <= 0.0 || vb <= 0.0 {
        0.0
    } else {
        c / (va * vb).sqrt()
    }
}

/// One speaker as one listener heard it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Heard {
    /// PESQ-WB (MOS-LQO, 1.0 to 4.64); `None` if the speech was not found at all.
    pub pesq: Option<f64>,
    /// Where the speech began in the recording, ms (its delay relative to the expected place).
    pub offset_ms: Option<i64>,
    /// Envelope correlation at that place (how clearly the speech is there).
    pub match_r: f64,
}

/// Finds `speech` in a 48 kHz recording around `expected_ms` (± `search_ms`) and scores it.
pub fn score(
    recording: &Path,
    speech: &Speech,
    expected_ms: i64,
    search_ms: i64,
    scratch: &Path,
) -> Result<Heard> {
    let rec16 = to16k(recording, scratch)?;
    let (er, es) = (envelope(&rec16), envelope(&speech.reference16));
    let mut best = (f64::MIN, 0i64);
    for lag in (expected_ms - search_ms).max(0)..=expected_ms + search_ms {
        let Some(window) = er.get(lag as usize..(lag as usize + es.len()).min(er.len())) else {
            break;
        };
        if window.len() < es.len() / 2 {
            break;
        }
        let r = correlation(window, &es);
        if r > best.0 {
            best = (r, lag);
        }
    }
    let (r, lag) = best;
    if r < 0.3 {
        return Ok(Heard {
            pesq: None,
            offset_ms: None,
            match_r: r.max(0.0),
        });
    }
    let from = lag as usize * 16;
    let mut degraded: Vec<i16> = rec16
        .get(from..(from + speech.reference16.len()).min(rec16.len()))
        .unwrap_or_default()
        .to_vec();
    degraded.resize(speech.reference16.len(), 0);
    let pesq = pesq::pesq_wb(&speech.reference16, &degraded)
        .ok()
        .map(f64::from);
    Ok(Heard {
        pesq,
        offset_ms: Some(lag - expected_ms),
        match_r: r,
    })
}

/// Where a call step keeps its files.
pub fn call_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join(format!("call-{step}"))
}
