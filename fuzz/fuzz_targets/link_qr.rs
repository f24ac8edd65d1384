//! Link QR payloads from a camera: decoding must never panic, and whatever decodes re-encodes
//! to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::Decode;
use securecomm_noise::link::LinkQr;

fuzz_target!(|data: &[u8]| {
    if let Ok(qr) = LinkQr::from_bytes(data) {
        assert_eq!(&qr.to_bytes()[..], data);
    }
});
