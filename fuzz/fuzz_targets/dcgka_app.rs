//! Fuzzes DCGKA application-message decryption on a member of a fixed 2-member group.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rand_core::{CryptoRng, RngCore};
use securecomm_noise::dcgka::{AppMessage, Group};
use securecomm_noise::keys::DeviceSigningKey;
use securecomm_noise::oneshot::PrekeyStore;

/// A deterministic counter RNG (splitmix64): fuzzing needs reproducible runs, not secrecy.
struct FixedRng(u64);

impl RngCore for FixedRng {
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
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FixedRng {}

fn fixture() -> &'static Group {
    static F: OnceLock<Group> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = FixedRng(1);
        let a = DeviceSigningKey::from_seed(&[1; 32]);
        let b = DeviceSigningKey::from_seed(&[2; 32]);
        let mut ga = Group::new([7; 32], a.public(), PrekeyStore::new(&mut rng, 0));
        let mut gb = Group::new([7; 32], b.public(), PrekeyStore::new(&mut rng, 0));
        let (ma, mb) = (ga.member_key(&a), gb.member_key(&b));
        if let Ok(out) = ga.create(&a, &mut rng, ma, &[mb]) {
            let dm = out.direct.first().map(|(_, d)| d.clone());
            if let Some(c) = out.broadcast {
                let _ = gb.process(&b, &mut rng, &c, dm.as_ref());
            }
        }
        gb
    })
}

fuzz_target!(|data: &[u8]| {
    let mut g = fixture().clone();
    let _ = g.decrypt(&AppMessage(data.to_vec()));
});
