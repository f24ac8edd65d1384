//! DCGKA costs for groups of 10, 100 and 1000 members, and Megolm (vodozemac 0.9.0) for
//! comparison. Prints bytes sent per operation; criterion prints the CPU times.
//!
//! Run: `cargo bench -p securecomm-noise --bench dcgka -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use securecomm_noise::codec::Encode;
use securecomm_noise::dcgka::{ControlBody, ControlMessage, Group, MemberKey, Output};
use securecomm_noise::keys::DeviceSigningKey;
use securecomm_noise::oneshot::PrekeyStore;
use std::hint::black_box;

const GROUP: [u8; 32] = [9; 32];

struct Setup {
    keys: Vec<DeviceSigningKey>,
    /// The initiator (member 0) and one receiver (member 1), with every ack processed.
    g0: Group,
    g1: Group,
    new_member: MemberKey,
}

fn device(i: usize) -> (DeviceSigningKey, PrekeyStore, MemberKey) {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    let k = DeviceSigningKey::from_seed(&seed);
    let p = PrekeyStore::new(&mut StdRng::seed_from_u64(i as u64), 0);
    let mk = MemberKey::new(&k, &p);
    (k, p, mk)
}

fn setup(n: usize) -> Setup {
    let mut rng = StdRng::seed_from_u64(n as u64);
    let mut keys = Vec::new();
    let mut mks = Vec::new();
    let mut prekeys = Vec::new();
    for i in 0..n {
        let (k, p, mk) = device(i);
        keys.push(k);
        mks.push(mk);
        prekeys.push(p);
    }
    let mut g0 = Group::new(GROUP, keys[0].public(), prekeys[0].clone());
    let mut g1 = Group::new(GROUP, keys[1].public(), prekeys[1].clone());
    let out = g0.create(&keys[0], &mut rng, mks[0], &mks[1..]).unwrap();
    let create = out.broadcast.unwrap();
    let dm1 = out
        .direct
        .iter()
        .find(|(r, _)| *r == keys[1].public())
        .map(|(_, d)| d.clone());
    let ack1 = g1
        .process(&keys[1], &mut rng, &create, dm1.as_ref())
        .unwrap()
        .broadcast
        .unwrap();
    g0.process(&keys[0], &mut rng, &ack1, None).unwrap();
    // Members 2.. are not simulated: their acks carry no secret, so they are built directly.
    for k in &keys[2..] {
        let ack = ControlMessage::sign(
            k,
            GROUP,
            1,
            ControlBody::Ack {
                of: create.id(),
                refresh: false,
            },
        );
        g0.process(&keys[0], &mut rng, &ack, None).unwrap();
        g1.process(&keys[1], &mut rng, &ack, None).unwrap();
    }
    let (_, _, new_member) = device(n + 10);
    Setup {
        keys,
        g0,
        g1,
        new_member,
    }
}

fn bytes(out: &Output) -> (usize, usize) {
    let b = out
        .broadcast
        .as_ref()
        .map(|m| m.to_bytes().len())
        .unwrap_or(0);
    let d: usize = out.direct.iter().map(|(_, m)| m.to_bytes().len()).sum();
    (b, d)
}

/// Each operation runs on a clone of a prepared state; the routine hands the state back so
/// criterion drops it outside the timed region (a receiver keeps its state; freeing and
/// zeroizing a 1000-member state is not part of processing a message).
fn bench(c: &mut Criterion) {
    // `DCGKA_BENCH_SIZES=10,100` limits the group sizes (setting up 1000 members takes a while).
    let sizes: Vec<usize> = std::env::var("DCGKA_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 1000]);
    for n in sizes {
        let s = setup(n);
        let mut group = c.benchmark_group(format!("dcgka_{n}"));
        if n >= 1000 {
            group.sample_size(10);
        }
        let mut rng = StdRng::seed_from_u64(1);
        let k0 = &s.keys[0];
        let k1 = &s.keys[1];
        let victim = s.keys[n - 1].public();

        // Bytes sent by the initiator, and the receiver's inputs.
        let up = s.g0.clone().update(k0, &mut rng).unwrap();
        let rm = s.g0.clone().remove(k0, &mut rng, victim).unwrap();
        let add = s.g0.clone().add(k0, &mut rng, s.new_member).unwrap();
        for (name, out) in [("update", &up), ("remove", &rm), ("add", &add)] {
            let (b, d) = bytes(out);
            println!(
                "dcgka n={n} {name}: initiator sends {b} B broadcast + {d} B in {} direct messages = {} B",
                out.direct.len(),
                b + d
            );
        }
        let dm = |out: &Output| {
            out.direct
                .iter()
                .find(|(r, _)| *r == k1.public())
                .map(|(_, d)| d.clone())
        };

        group.bench_function(BenchmarkId::new("update_initiator", n), |b| {
            b.iter_batched(
                || s.g0.clone(),
                |mut g| {
                    let out = g.update(k0, &mut rng).unwrap();
                    black_box((g, out))
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_function(BenchmarkId::new("remove_initiator", n), |b| {
            b.iter_batched(
                || s.g0.clone(),
                |mut g| {
                    let out = g.remove(k0, &mut rng, victim).unwrap();
                    black_box((g, out))
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_function(BenchmarkId::new("add_initiator", n), |b| {
            b.iter_batched(
                || s.g0.clone(),
                |mut g| {
                    let out = g.add(k0, &mut rng, s.new_member).unwrap();
                    black_box((g, out))
                },
                BatchSize::LargeInput,
            )
        });
        for (name, out) in [("update", &up), ("remove", &rm), ("add", &add)] {
            let msg = out.broadcast.clone().unwrap();
            let d = dm(out);
            group.bench_function(BenchmarkId::new(format!("{name}_receiver"), n), |b| {
                b.iter_batched(
                    || s.g1.clone(),
                    |mut g| {
                        let out = g.process(k1, &mut rng, &msg, d.as_ref()).unwrap();
                        black_box((g, out))
                    },
                    BatchSize::LargeInput,
                )
            });
        }

        // Application messages: 200 bytes, member 0 to member 1.
        let text = [0x42u8; 200];
        let mut g0 = s.g0.clone();
        let mut g1 = s.g1.clone();
        group.bench_function(BenchmarkId::new("encrypt_200B", n), |b| {
            b.iter(|| black_box(g0.encrypt(k0, &text).unwrap()))
        });
        let mut g0 = s.g0.clone();
        group.bench_function(BenchmarkId::new("decrypt_200B", n), |b| {
            b.iter_custom(|iters| {
                let msgs: Vec<_> = (0..iters).map(|_| g0.encrypt(k0, &text).unwrap()).collect();
                let start = std::time::Instant::now();
                for m in &msgs {
                    black_box(g1.decrypt(m).unwrap());
                }
                start.elapsed()
            })
        });
        let m = s.g0.clone().encrypt(k0, &text).unwrap();
        println!(
            "dcgka n={n} app message of 200 B: {} B on the wire",
            m.0.len()
        );
        group.finish();
    }

    // Megolm in the same run.
    use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig};
    let mut out = GroupSession::new(SessionConfig::version_1());
    let mut inbound = InboundGroupSession::new(&out.session_key(), SessionConfig::version_1());
    let text = [0x42u8; 200];
    let mut group = c.benchmark_group("megolm");
    group.bench_function("encrypt_200B", |b| b.iter(|| black_box(out.encrypt(text))));
    group.bench_function("decrypt_200B", |b| {
        b.iter_custom(|iters| {
            let msgs: Vec<_> = (0..iters).map(|_| out.encrypt(text)).collect();
            let start = std::time::Instant::now();
            for m in &msgs {
                black_box(inbound.decrypt(m).unwrap());
            }
            start.elapsed()
        })
    });
    println!(
        "megolm app message of 200 B: {} B on the wire",
        out.encrypt(text).to_bytes().len()
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
