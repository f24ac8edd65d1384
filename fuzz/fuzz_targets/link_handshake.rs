//! Bytes fed to every receiving step of device linking: the responder (as msg1, then msg3),
//! the initiator (as msg2) and an established channel (as a transport message). Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand_core::{CryptoRng, RngCore, impls};
use securecomm_noise::keys::{DeviceSigningKey, DhSecret};
use securecomm_noise::link::{LinkInitiator, LinkQr, LinkResponder};

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
    let mut rng = FuzzRng(7);
    let old_sig = DeviceSigningKey::from_seed(&[1; 32]);
    let old_dh = DhSecret::from_bytes([2; 32]);
    let new_sig = DeviceSigningKey::from_seed(&[3; 32]);
    let new_dh = DhSecret::from_bytes([4; 32]);
    let Ok(qr) = LinkQr::generate(&mut rng, old_sig.public(), b"fuzz") else {
        return;
    };

    // Responder: data as msg1, and (if that passes) as msg3.
    if let Ok((_, confirming)) = LinkResponder::read_request(&mut rng, &qr, &old_dh, &old_sig, data)
    {
        let _ = confirming.read_confirmation(data);
    }

    // Initiator: data as msg2.
    if let Ok((_, awaiting)) = LinkInitiator::start(&mut rng, &qr, &new_dh, &new_sig) {
        let _ = awaiting.read_response(data);
    }

    // A genuine handshake, then data as a transport message on both sides.
    let Ok((msg1, awaiting)) = LinkInitiator::start(&mut rng, &qr, &new_dh, &new_sig) else {
        return;
    };
    let Ok((msg2, confirming)) =
        LinkResponder::read_request(&mut rng, &qr, &old_dh, &old_sig, &msg1)
    else {
        return;
    };
    let Ok((msg3, mut new_ch)) = awaiting.read_response(&msg2) else {
        return;
    };
    let _ = new_ch.decrypt(data);
    if let Ok(mut old_ch) = confirming.read_confirmation(&msg3) {
        let _ = old_ch.decrypt(data);
    }
});
