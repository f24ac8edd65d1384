//! Fuzzes DCGKA control- and direct-message decoding and processing on a fixed 3-member group:
//! input = u16 length || control message bytes || direct message bytes (optional).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rand_core::{CryptoRng, RngCore};
use securecomm_noise::codec::Decode;
use securecomm_noise::dcgka::{ControlMessage, DirectMessage, Group};
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

fn fixture() -> &'static (DeviceSigningKey, Group) {
    static F: OnceLock<(DeviceSigningKey, Group)> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = FixedRng(1);
        let keys: Vec<_> = (1u8..=3).map(|i| DeviceSigningKey::from_seed(&[i; 32])).collect();
        let mut groups: Vec<_> = keys
            .iter()
            .map(|k| Group::new([7; 32], k.public(), PrekeyStore::new(&mut rng, 0)))
            .collect();
        let mks: Vec<_> = groups.iter().zip(&keys).map(|(g, k)| g.member_key(k)).collect();
        let out = groups[0].create(&keys[0], &mut rng, mks[0], &mks[1..]).ok();
        if let Some(out) = out {
            let create = out.broadcast;
            let dm = out.direct.iter().find(|(r, _)| *r == keys[1].public()).map(|(_, d)| d.clone());
            if let Some(c) = create {
                let _ = groups[1].process(&keys[1], &mut rng, &c, dm.as_ref());
            }
        }
        (keys[1].clone(), groups.swap_remove(1))
    })
}

fuzz_target!(|data: &[u8]| {
    let (key, group) = fixture();
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (c, d) = rest.split_at(len);
    let Ok(control) = ControlMessage::from_bytes(c) else {
        return;
    };
    let direct = DirectMessage::from_bytes(d).ok();
    let mut g = group.clone();
    let mut rng = FixedRng(2);
    let _ = g.process(key, &mut rng, &control, direct.as_ref());
});
