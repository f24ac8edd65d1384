//! Fuzzes DCGKA application-message decryption on a member of a fixed 2-member group.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use securecomm_noise::dcgka::{AppMessage, Group};
use securecomm_noise::keys::DeviceSigningKey;
use securecomm_noise::oneshot::PrekeyStore;

#[path = "common/fixed_rng.rs"]
mod fixed_rng;
use fixed_rng::FixedRng;

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
