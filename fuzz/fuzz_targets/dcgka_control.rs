//! Fuzzes DCGKA control- and direct-message decoding and processing on a fixed 3-member group:
//! input = u16 length || control message bytes || direct message bytes (optional).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use securecomm_noise::codec::Decode;
use securecomm_noise::dcgka::{ControlMessage, DirectMessage, Group};
use securecomm_noise::keys::DeviceSigningKey;
use securecomm_noise::oneshot::PrekeyStore;

#[path = "common/fixed_rng.rs"]
mod fixed_rng;
use fixed_rng::FixedRng;

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
