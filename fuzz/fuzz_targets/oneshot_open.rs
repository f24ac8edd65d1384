//! One-shot messages, signed prekeys and prekey stores from untrusted bytes: decoding and
//! opening with a fixed store must never panic, and whatever decodes re-encodes identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand_core::{CryptoRng, RngCore, impls};
use securecomm_noise::oneshot::{OneShotMessage, PrekeyStore, SignedPrekey};
use securecomm_noise::{Decode, Encode};

/// A deterministic stand-in RNG (fuzzing only: not cryptographically secure).
struct FuzzRng(u64);

impl RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        impls::fill_bytes_via_next(self, dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FuzzRng {}

fuzz_target!(|data: &[u8]| {
    let mut rng = FuzzRng(1);
    let mut store = PrekeyStore::new(&mut rng, 0);
    store.rotate(&mut rng, 1);
    if let Ok(msg) = OneShotMessage::from_bytes(data) {
        assert_eq!(msg.to_bytes(), data);
        let _ = msg.message_id();
        let _ = store.open(&msg, b"fuzz context");
    }
    if let Ok(sp) = SignedPrekey::from_bytes(data) {
        assert_eq!(sp.to_bytes(), data);
    }
    if let Ok(s) = PrekeyStore::from_bytes(data) {
        assert_eq!(&s.to_bytes()[..], data);
    }
});
