//! Feeds arbitrary frames to a receiver holding fixed keys for a few KIDs. Nothing forged may
//! decrypt, and nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::frame::{BaseKey, FrameReceiver};

fuzz_target!(|data: &[u8]| {
    let mut rx = FrameReceiver::new(4);
    for kid in [0u64, 5, 0x2a03, u64::MAX] {
        let _ = rx.add_key(kid, &BaseKey::from_bytes([0x17; 32]));
    }
    // Split the input into a metadata length byte, metadata and frame.
    let (meta, frame) = match data.split_first() {
        Some((&n, rest)) if usize::from(n) <= rest.len() => rest.split_at(usize::from(n)),
        _ => (&[][..], data),
    };
    let mut out = Vec::new();
    let _ = rx.decrypt_into(frame, meta, &mut out);
    let _ = rx.decrypt(frame, meta);
});
