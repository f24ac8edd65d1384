//! Scanned safety-number QR payloads: strict parse and constant-time compare, never a panic;
//! only our peer's exact payload may match.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use securecomm_noise::fingerprint::{QrPayload, SafetyNumber, ScanOutcome};
use securecomm_noise::{Decode, Encode};

fn ours() -> &'static (SafetyNumber, Vec<u8>) {
    static N: OnceLock<(SafetyNumber, Vec<u8>)> = OnceLock::new();
    N.get_or_init(|| {
        let ours = SafetyNumber::compute(5200, b"alice key", b"alice", b"bob key", b"bob")
            .unwrap_or_else(|_| std::process::abort());
        let theirs = SafetyNumber::compute(5200, b"bob key", b"bob", b"alice key", b"alice")
            .unwrap_or_else(|_| std::process::abort());
        (ours, theirs.qr_payload())
    })
}

fuzz_target!(|data: &[u8]| {
    let (n, peer) = ours();
    if let Ok(ScanOutcome::Match) = n.compare_scanned(data) {
        assert_eq!(data, peer.as_slice());
    }
    if let Ok(p) = QrPayload::from_bytes(data) {
        assert_eq!(p.to_bytes(), data);
    }
});
