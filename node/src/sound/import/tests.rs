//! Import tests against small fixture files made with sox, lame and opusenc (see
//! `node/src/sound/testdata/README.md`).

use std::time::{Duration, Instant};

use super::*;
use crate::sound::decode_asset;

const WAV: &[u8] = include_bytes!("../testdata/clip.wav");
const FLAC: &[u8] = include_bytes!("../testdata/clip.flac");
const VORBIS: &[u8] = include_bytes!("../testdata/clip.ogg");
const MP3: &[u8] = include_bytes!("../testdata/clip.mp3");
const OPUS: &[u8] = include_bytes!("../testdata/clip.opus");
const LONG: &[u8] = include_bytes!("../testdata/long.ogg");
const SILENT: &[u8] = include_bytes!("../testdata/silent.wav");

fn peak_dbfs(pcm: &[i16]) -> f64 {
    let peak = pcm
        .iter()
        .map(|s| f64::from(s.unsigned_abs()))
        .fold(0.0, f64::max);
    20.0 * (peak / 32_767.0).log10()
}

fn check_format(bytes: &[u8], ext: &str, format: SourceFormat, duration_ms: u32) {
    let clip = import(bytes, Some(ext)).unwrap_or_else(|e| panic!("{ext}: {e}"));
    assert_eq!(clip.format, format, "{ext}");
    assert_eq!(clip.mislabelled, None, "{ext}");
    let got = clip.duration_ms();
    assert!(
        got.abs_diff(duration_ms) <= 20,
        "{ext}: expected {duration_ms} ms, got {got} ms"
    );
    let peak = peak_dbfs(&clip.pcm);
    assert!((peak + 1.0).abs() <= 0.1, "{ext}: peak {peak:.3} dBFS");
    // What receivers play: the asset decodes to the same length, and Opus' overshoot was
    // corrected so it does not peak above -1 dBFS (+0.1 dB).
    let decoded = decode_asset(&clip.asset_bytes()).unwrap();
    assert_eq!(decoded.len(), clip.pcm.len());
    let decoded_peak = peak_dbfs(&decoded);
    assert!(
        decoded_peak <= -0.9,
        "{ext}: decoded peak {decoded_peak:.3} dBFS"
    );
    assert!(
        decoded_peak >= -2.0,
        "{ext}: decoded peak {decoded_peak:.3} dBFS"
    );
}

#[test]
fn wav_imports() {
    check_format(WAV, "wav", SourceFormat::Wav, 1000);
}

#[test]
fn flac_imports() {
    check_format(FLAC, "flac", SourceFormat::Flac, 1500);
}

#[test]
fn ogg_vorbis_imports() {
    check_format(VORBIS, "ogg", SourceFormat::Vorbis, 1200);
}

#[test]
fn mp3_imports() {
    check_format(MP3, "mp3", SourceFormat::Mp3, 1000);
}

#[test]
fn ogg_opus_imports() {
    check_format(OPUS, "opus", SourceFormat::Opus, 800);
    check_format(OPUS, "ogg", SourceFormat::Opus, 800);
}

#[test]
fn resampled_tone_keeps_its_pitch() {
    // clip.ogg is a 523 Hz sine at 44.1 kHz: count zero crossings at 48 kHz.
    let clip = import(VORBIS, Some("ogg")).unwrap();
    let mid = &clip.pcm[4_800..clip.pcm.len() - 4_800];
    let crossings = mid.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    let hz = crossings as f64 / 2.0 / (mid.len() as f64 / 48_000.0);
    assert!((hz - 523.0).abs() < 3.0, "{hz} Hz");
}

#[test]
fn a_six_second_clip_is_refused() {
    let err = import(LONG, Some("ogg")).unwrap_err();
    assert!(
        matches!(err, ImportError::TooLong { max_ms: 5_200, got_ms } if got_ms >= 5_900),
        "{err}"
    );
}

#[test]
fn a_file_over_512_kib_is_refused_before_decoding() {
    let mut big = WAV.to_vec();
    big.resize(MAX_INPUT_BYTES + 1, 0);
    assert_eq!(
        import(&big, Some("wav")).unwrap_err(),
        ImportError::TooLarge {
            max: MAX_INPUT_BYTES,
            got: MAX_INPUT_BYTES + 1
        }
    );
}

#[test]
fn truncated_files_give_clear_errors() {
    for (bytes, ext) in [
        (WAV, "wav"),
        (FLAC, "flac"),
        (VORBIS, "ogg"),
        (MP3, "mp3"),
        (OPUS, "opus"),
    ] {
        let cut = &bytes[..bytes.len() / 2];
        let err = import(cut, Some(ext)).unwrap_err();
        assert!(
            matches!(err, ImportError::Truncated { .. } | ImportError::Corrupt(_)),
            "{ext}: {err}"
        );
        // Cut inside the header: not recognisable at all, or corrupt.
        assert!(import(&bytes[..20], Some(ext)).is_err(), "{ext} header");
    }
}

#[test]
fn truncated_wav_says_how_much_is_missing() {
    let err = import(&WAV[..WAV.len() / 2], Some("wav")).unwrap_err();
    assert!(
        matches!(err, ImportError::Truncated { declared_ms: 1000, got_ms } if (480..=520).contains(&got_ms)),
        "{err}"
    );
}

/// A small xorshift generator, so the garbage is the same on every run.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn random_garbage_is_refused() {
    for seed in 1..=20 {
        let bytes = garbage(seed, 4_096);
        let err = import(&bytes, Some("mp3")).unwrap_err();
        assert!(
            matches!(
                err,
                ImportError::Unrecognized { .. }
                    | ImportError::Corrupt(_)
                    | ImportError::Unsupported(_)
                    | ImportError::Silent
                    | ImportError::Empty
            ),
            "seed {seed}: {err}"
        );
    }
}

#[test]
fn text_named_mp3_is_unrecognized_and_says_so() {
    let err = import(
        b"this is not audio at all, just some text in a file",
        Some("mp3"),
    )
    .unwrap_err();
    assert_eq!(
        err,
        ImportError::Unrecognized {
            claimed: Some("mp3".into())
        }
    );
    assert!(err.to_string().contains(".mp3"), "{err}");
}

#[test]
fn a_wav_named_mp3_imports_by_content_and_says_so() {
    let clip = import(WAV, Some("mp3")).unwrap();
    assert_eq!(clip.format, SourceFormat::Wav);
    let note = clip.mislabelled.clone().unwrap();
    assert_eq!(
        note,
        Mislabelled {
            extension: "mp3".into(),
            actual: SourceFormat::Wav
        }
    );
    assert!(note.to_string().contains("contains WAV"), "{note}");
    assert!((clip.duration_ms() as i64 - 1000).abs() <= 20);
}

#[test]
fn empty_and_silent_clips_are_refused() {
    assert_eq!(import(&[], None).unwrap_err(), ImportError::Empty);
    assert_eq!(
        import(SILENT, Some("wav")).unwrap_err(),
        ImportError::Silent
    );
}

/// A WAV header claiming about 74 hours of 8 kHz audio over a few bytes of data.
fn wav_claiming_hours() -> Vec<u8> {
    let data_len: u32 = 0xFFFF_0000;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(data_len.wrapping_add(36)).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&8_000u32.to_le_bytes());
    b.extend_from_slice(&16_000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    b.extend(garbage(7, 1_000));
    b
}

/// The smallest MP3 frames there are (MPEG 2.5 Layer III, 8 kHz, 8 kbit/s, mono: 72 bytes for
/// 72 ms each) repeated to fill the size limit: about 8.7 minutes of audio in 512 KiB, with no
/// header declaring a length.
fn mp3_frame_run() -> Vec<u8> {
    let mut frame = vec![0u8; 72];
    frame[..4].copy_from_slice(&[0xFF, 0xE3, 0x18, 0xC4]);
    let mut b = Vec::new();
    while b.len() + frame.len() <= MAX_INPUT_BYTES {
        b.extend_from_slice(&frame);
    }
    b
}

#[test]
fn decoder_bombs_are_refused_quickly() {
    for (name, bytes, ext) in [
        ("wav header claiming hours", wav_claiming_hours(), "wav"),
        ("run of tiny mp3 frames", mp3_frame_run(), "mp3"),
    ] {
        let start = Instant::now();
        let err = import(&bytes, Some(ext)).unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(err, ImportError::TooLong { max_ms: 5_200, .. }),
            "{name}: {err}"
        );
        eprintln!("{name}: refused in {took:?}");
        assert!(took < Duration::from_millis(500), "{name}: took {took:?}");
    }
}

#[test]
fn every_prefix_of_a_fixture_is_handled_without_panicking() {
    for bytes in [WAV, MP3, OPUS] {
        for cut in (0..bytes.len()).step_by(97) {
            let _ = import(&bytes[..cut], None);
        }
    }
}
