//! One-shot Noise `X` encryption: seal and open of a 200-byte payload (a DCGKA direct message
//! is about that size), plus encode/decode of the wire message.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use securecomm_noise::keys::{DeviceSigningKey, DhSecret};
use securecomm_noise::oneshot::{OneShotMessage, PrekeyStore, seal};
use securecomm_noise::{Decode, Encode};

fn oneshot(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let sender = DhSecret::generate(&mut rng);
    let device = DeviceSigningKey::generate(&mut rng);
    let store = PrekeyStore::new(&mut rng, 0);
    let prekey = store
        .signed_current(&device)
        .verify(&device.public())
        .unwrap_or_else(|e| unreachable!("{e}"));
    let ctx = b"bench: device A -> device B";
    let payload = [0x5au8; 200];

    c.bench_function("oneshot seal 200 B", |b| {
        b.iter(|| seal(&mut rng, &sender, &prekey, ctx, black_box(&payload)))
    });
    let msg =
        seal(&mut rng, &sender, &prekey, ctx, &payload).unwrap_or_else(|e| unreachable!("{e}"));
    let wire = msg.to_bytes();
    c.bench_function("oneshot open 200 B (decode + open)", |b| {
        b.iter(|| {
            let m = OneShotMessage::from_bytes(black_box(&wire))
                .unwrap_or_else(|e| unreachable!("{e}"));
            store.open(&m, ctx)
        })
    });
    c.bench_function("oneshot verify signed prekey", |b| {
        let sp = store.signed_current(&device);
        let pk = device.public();
        b.iter(|| black_box(&sp).verify(&pk))
    });
}

criterion_group!(benches, oneshot);
criterion_main!(benches);
