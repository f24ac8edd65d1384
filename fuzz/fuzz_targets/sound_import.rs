//! Soundboard clip import: any bytes, under any extension hint, import to a clip within the
//! limits (at most 5.2 s, peak at -1 dBFS, an asset that decodes back to the same length) or
//! give a typed error. Never a panic, never a clip over the limits. Also feeds the bytes to the
//! clip asset decoder and the play-event parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_node::sound::{MAX_CLIP_SAMPLES, decode_asset, import};
use securecomm_node::voice::soundboard::split_ext;

const HINTS: [Option<&str>; 6] = [None, Some("mp3"), Some("ogg"), Some("opus"), Some("flac"), Some("wav")];

fuzz_target!(|data: &[u8]| {
    let hint = HINTS[usize::from(data.first().copied().unwrap_or(0)) % HINTS.len()];
    if let Ok(clip) = import(data, hint) {
        assert!(!clip.pcm.is_empty() && clip.pcm.len() <= MAX_CLIP_SAMPLES);
        let back = decode_asset(&clip.asset_bytes()).expect("an imported clip's asset decodes");
        assert_eq!(back.len(), clip.pcm.len());
    }
    let _ = decode_asset(data);
    let _ = split_ext(data);
});
