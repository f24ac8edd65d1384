//! Decodes a prekey bundle and verifies its signature. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::dm::PrekeyBundle;
use securecomm_noise::{Decode, Encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = PrekeyBundle::from_bytes(data) {
        let _ = bundle.verify();
        // Strict decoding means the encoding is canonical.
        assert_eq!(bundle.to_bytes(), data);
    }
});
