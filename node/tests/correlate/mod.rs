//! Finding a played clip in a recording, for the soundboard tests: normalized
//! cross-correlation of the clip with the recording, searched coarsely on 20 ms energy
//! envelopes and then sample by sample around the best lags.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

/// Samples per 20 ms frame at 48 kHz.
pub const FRAME: usize = 960;

pub fn read_wav(path: &Path) -> Vec<i16> {
    let r = hound::WavReader::open(path).unwrap();
    r.into_samples::<i16>().map(|s| s.unwrap()).collect()
}

/// Normalized cross-correlation of `template` with `signal` at offset `lag`.
pub fn ncc_at(signal: &[i16], template: &[i16], lag: usize) -> f64 {
    let Some(window) = signal.get(lag..lag + template.len()) else {
        return 0.0;
    };
    let (mut xy, mut xx, mut yy) = (0f64, 0f64, 0f64);
    for (&a, &b) in window.iter().zip(template) {
        let (a, b) = (f64::from(a), f64::from(b));
        xy += a * b;
        xx += a * a;
        yy += b * b;
    }
    if xx == 0.0 || yy == 0.0 {
        0.0
    } else {
        xy / (xx * yy).sqrt()
    }
}

/// Energy per 20 ms frame.
pub fn envelope(s: &[i16]) -> Vec<f64> {
    s.chunks_exact(FRAME)
        .map(|f| f.iter().map(|&x| f64::from(x).abs()).sum::<f64>())
        .collect()
}

/// Best normalized cross-correlation of `template` anywhere in `signal`: a coarse search on
/// 20 ms energy envelopes, then every sample lag within two frames of the best few.
pub fn best_ncc(signal: &[i16], template: &[i16]) -> f64 {
    let (es, et) = (envelope(signal), envelope(template));
    if es.len() < et.len() {
        return 0.0;
    }
    let mut coarse: Vec<(f64, usize)> = (0..=es.len() - et.len())
        .map(|lag| {
            let w = &es[lag..lag + et.len()];
            let dot: f64 = w.iter().zip(&et).map(|(a, b)| a * b).sum();
            let n: f64 = w.iter().map(|a| a * a).sum::<f64>().sqrt()
                * et.iter().map(|b| b * b).sum::<f64>().sqrt();
            (if n == 0.0 { 0.0 } else { dot / n }, lag)
        })
        .collect();
    coarse.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut best = 0f64;
    for &(_, lag) in coarse.iter().take(3) {
        let centre = lag * FRAME;
        for l in centre.saturating_sub(2 * FRAME)..=centre + 2 * FRAME {
            best = best.max(ncc_at(signal, template, l));
        }
    }
    best
}
