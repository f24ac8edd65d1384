//! DM benchmarks: our X3DH + Double Ratchet against vodozemac's Olm session, in the same run.
//!
//! * `dm_steady/*`: one message in one direction on an established chain, encrypt then decrypt
//!   (no DH ratchet step). `ours_wire` also encodes and strictly decodes the message.
//! * `dm_round_trip/*`: A sends, B replies, A receives; each direction change is a DH ratchet
//!   step (key generation plus X25519 on both sides).
//!
//! Run: `cargo bench -p securecomm-noise --bench dm -- --warm-up-time 1 --measurement-time 3`.

// Benchmark setup, like test code, may abort on a broken invariant.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use securecomm_noise::dm::{DmIdentity, DmMessage, PrekeyStore, Session};
use securecomm_noise::{Decode, Encode};
use vodozemac::olm::{Account, OlmMessage, SessionConfig};

const SIZES: [usize; 2] = [100, 1024];

fn ours() -> (Session, Session) {
    let mut rng = rand::thread_rng();
    let alice_id = DmIdentity::generate(&mut rng);
    let bob_id = DmIdentity::generate(&mut rng);
    let mut store = PrekeyStore::new();
    store.rotate_signed_prekey(&mut rng, &bob_id).unwrap();
    let otk = store.generate_one_time_prekeys(&mut rng, 1).unwrap()[0].0;
    let bundle = store.bundle(&bob_id, Some(otk)).unwrap();
    let mut alice = Session::initiate(&mut rng, &alice_id, &bundle).unwrap();
    let first = alice.encrypt(&mut rng, b"hello").unwrap();
    let (mut bob, _) = Session::accept(&mut store, &bob_id, &first).unwrap();
    let reply = bob.encrypt(&mut rng, b"hi").unwrap();
    alice.decrypt(&reply).unwrap();
    (alice, bob)
}

fn olm() -> (vodozemac::olm::Session, vodozemac::olm::Session) {
    let alice_acc = Account::new();
    let mut bob_acc = Account::new();
    bob_acc.generate_one_time_keys(1);
    let otk = *bob_acc.one_time_keys().values().next().unwrap();
    bob_acc.mark_keys_as_published();
    let mut alice = alice_acc.create_outbound_session(
        SessionConfig::version_2(),
        bob_acc.curve25519_key(),
        otk,
    );
    let OlmMessage::PreKey(first) = alice.encrypt(b"hello") else {
        panic!("expected a pre-key message")
    };
    let mut bob = bob_acc
        .create_inbound_session(alice_acc.curve25519_key(), &first)
        .unwrap()
        .session;
    let reply = bob.encrypt(b"hi");
    alice.decrypt(&reply).unwrap();
    (alice, bob)
}

fn steady(c: &mut Criterion) {
    let mut g = c.benchmark_group("dm_steady");
    for size in SIZES {
        let pt = vec![0x42u8; size];
        g.throughput(Throughput::Elements(1));
        let (mut a, mut b) = ours();
        let mut rng = rand::thread_rng();
        g.bench_function(format!("ours/{size}"), |bench| {
            bench.iter(|| {
                let m = a.encrypt(&mut rng, black_box(&pt)).unwrap();
                black_box(b.decrypt(&m).unwrap());
            })
        });
        let (mut a, mut b) = ours();
        g.bench_function(format!("ours_wire/{size}"), |bench| {
            bench.iter(|| {
                let bytes = a.encrypt(&mut rng, black_box(&pt)).unwrap().to_bytes();
                let m = DmMessage::from_bytes(black_box(&bytes)).unwrap();
                black_box(b.decrypt(&m).unwrap());
            })
        });
        let (mut a, mut b) = olm();
        g.bench_function(format!("vodozemac/{size}"), |bench| {
            bench.iter(|| {
                let m = a.encrypt(black_box(&pt));
                black_box(b.decrypt(&m).unwrap());
            })
        });
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("dm_round_trip");
    let pt = vec![0x42u8; 100];
    let (mut a, mut b) = ours();
    let mut rng = rand::thread_rng();
    g.bench_function("ours", |bench| {
        bench.iter(|| {
            let m = a.encrypt(&mut rng, black_box(&pt)).unwrap();
            b.decrypt(&m).unwrap();
            let r = b.encrypt(&mut rng, black_box(&pt)).unwrap();
            black_box(a.decrypt(&r).unwrap());
        })
    });
    let (mut a, mut b) = olm();
    g.bench_function("vodozemac", |bench| {
        bench.iter(|| {
            let m = a.encrypt(black_box(&pt));
            b.decrypt(&m).unwrap();
            let r = b.encrypt(black_box(&pt));
            black_box(a.decrypt(&r).unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, steady, round_trip);
criterion_main!(benches);
