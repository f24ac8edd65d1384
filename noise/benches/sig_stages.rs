//! Where a guild message's signature time goes, and what the per-sender verification table
//! (`keys::PrecomputedDeviceKey`) costs and saves: sign, strict verify, table verify, table
//! build, and the curve operations behind them.
//!
//! Run: `cargo bench -p securecomm-noise --bench sig_stages -- --warm-up-time 1 --measurement-time 3`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use securecomm_noise::keys::{DeviceSigningKey, PrecomputedDeviceKey, SigLabel};
use std::hint::black_box;

const L: SigLabel = SigLabel("SecureComm/bench/sig v1");

fn bench(c: &mut Criterion) {
    let sk = DeviceSigningKey::from_seed(&[3; 32]);
    let pk = sk.public();
    let msg = [0x42u8; 300];
    let sig = sk.sign(L, &msg);
    let table = PrecomputedDeviceKey::new(&pk);
    let s = Scalar::from_bytes_mod_order([9; 32]);
    let minus_a = -pk.to_edwards();
    c.bench_function("sign 300B", |b| b.iter(|| sk.sign(L, black_box(&msg))));
    c.bench_function("verify 300B (strict, dalek double-base)", |b| {
        b.iter(|| pk.verify(L, black_box(&msg), &sig).unwrap())
    });
    c.bench_function("verify 300B (strict, per-sender table)", |b| {
        b.iter(|| table.verify(L, black_box(&msg), &sig).unwrap())
    });
    c.bench_function("build per-sender table", |b| {
        b.iter(|| PrecomputedDeviceKey::new(black_box(&pk)))
    });
    c.bench_function("curve: mul_base (radix-16 table)", |b| {
        b.iter(|| EdwardsPoint::mul_base(black_box(&s)))
    });
    c.bench_function("curve: vartime double-base", |b| {
        b.iter(|| EdwardsPoint::vartime_double_scalar_mul_basepoint(black_box(&s), &minus_a, &s))
    });
    {
        use securecomm_noise::envelope::{self, EnvelopeHeader};
        use securecomm_noise::secret::{Secret32, hkdf_sha256};
        let key = Secret32::from_bytes([5; 32]);
        let header = EnvelopeHeader {
            epoch: 1,
            sender_tag: [2; 16],
            generation: 3,
        };
        let sealed = envelope::seal(&key, &header, &[7; 32], &sk, &[0x42; 200]).unwrap();
        c.bench_function("envelope seal 200B", |b| {
            b.iter(|| {
                envelope::seal(&key, &header, &[7; 32], &sk, black_box(&[0x42; 200])).unwrap()
            })
        });
        c.bench_function("envelope open_from 200B", |b| {
            b.iter(|| envelope::open_from(&key, &[7; 32], black_box(&sealed), &pk).unwrap())
        });
        c.bench_function("hkdf 44B", |b| {
            b.iter(|| {
                hkdf_sha256::<44>(
                    Some(&sealed[..29]),
                    black_box(key.expose()),
                    b"SecureComm/envelope/aead v1",
                )
            })
        });
    }
    c.bench_function("curve: compress", |b| {
        b.iter(|| black_box(minus_a).compress())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
