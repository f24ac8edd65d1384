//! Where validated ingest spends its time: one criterion sub-benchmark per stage, each on the
//! join changes of the 10,000-member benchmark guild (the bulk of its changes).
//!
//! Run with
//! `cargo bench -p securecomm-crdt --bench stages -- --warm-up-time 1 --measurement-time 3`.
//! With `STAGES_PROFILE=<n>` it only ingests the guild `n` times and exits (for `perf record`);
//! `STAGES_THREADS=<t>` sets `Guild::set_verify_threads` for those ingests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use automerge::Automerge;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use securecomm_crdt::envelope::{CHANGE_LABEL, SignedChange, parse_change};
use securecomm_crdt::guild::Guild;
use securecomm_crdt::ops::{GuildOp, ops_of};
use securecomm_noise::codec::{Decode, Encode};
use securecomm_noise::keys::DevicePublicKey;

mod common;

fn report(c: &mut Criterion) {
    let t = Instant::now();
    let (envs, _users) = common::cached_envelopes();
    println!("fixture: {} envelopes in {:.2?}", envs.len(), t.elapsed());
    let id = securecomm_crdt::schema::GuildId(parse_change(&envs[0].change).unwrap().hash().0);

    if let Ok(n) = std::env::var("STAGES_PROFILE") {
        for _ in 0..n.parse::<usize>().unwrap() {
            let t = Instant::now();
            let mut g = Guild::join(id);
            if let Ok(t) = std::env::var("STAGES_THREADS") {
                g.set_verify_threads(t.parse().unwrap());
            }
            let rep = g.receive(envs.clone());
            assert_eq!(rep.accepted.len(), envs.len());
            println!("ingest {:.2?}", t.elapsed());
        }
        std::process::exit(0);
    }

    if std::env::var("STAGES_CG").is_ok() {
        // For `valgrind --tool=callgrind`: compare the inclusive instruction counts of
        // `stages::plain_ingest` and `stages::guild_ingest` (same changes, same run).
        let raw: Vec<Vec<u8>> = envs.iter().map(|e| e.change.clone()).collect();
        let doc = plain_ingest(raw);
        let g = guild_ingest(id, envs.clone());
        println!("{} {}", doc.get_heads().len(), g.len());
        std::process::exit(0);
    }
    if std::env::var("STAGES_SPLIT").is_ok() {
        split(&envs, id);
        std::process::exit(0);
    }

    // The join envelopes.
    let joins: Vec<&SignedChange> = envs
        .iter()
        .filter(|e| {
            matches!(
                ops_of(&parse_change(&e.change).unwrap())
                    .unwrap()
                    .as_slice(),
                [GuildOp::Redeem { .. }]
            )
        })
        .collect();
    let wire: Vec<Vec<u8>> = joins.iter().map(|e| e.to_bytes()).collect();
    let parsed: Vec<automerge::Change> = joins
        .iter()
        .map(|e| parse_change(&e.change).unwrap())
        .collect();
    let ops: Vec<Vec<GuildOp>> = parsed.iter().map(|c| ops_of(c).unwrap()).collect();
    let n = joins.len();
    let mut i = 0usize;
    let mut next = || {
        i = (i + 1) % n;
        i
    };

    let mut g = c.benchmark_group("ingest_stage_per_join");
    g.sample_size(20);
    g.bench_function("envelope_decode", |b| {
        b.iter(|| SignedChange::from_bytes(&wire[next()]).unwrap())
    });
    g.bench_function("device_key_decode", |b| {
        b.iter(|| DevicePublicKey::from_bytes(joins[next()].author.as_bytes()).unwrap())
    });
    g.bench_function("envelope_sig_verify", |b| {
        b.iter(|| {
            let k = next();
            let w = &wire[k];
            let signed = &w[..w.len() - 64];
            joins[k]
                .author
                .verify(CHANGE_LABEL, signed, &joins[k].sig)
                .unwrap()
        })
    });
    g.bench_function("envelope_open_total", |b| {
        b.iter_batched(
            || joins[next()].clone(),
            |e| e.open(&id).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("automerge_parse_change", |b| {
        b.iter(|| parse_change(&joins[next()].change).unwrap())
    });
    g.bench_function("ops_decode", |b| {
        b.iter(|| ops_of(&parsed[next()]).unwrap())
    });
    g.bench_function("cert_verify", |b| {
        b.iter(|| {
            let [GuildOp::Redeem { cert, .. }] = ops[next()].as_slice() else {
                panic!()
            };
            assert!(cert.verify())
        })
    });
    g.bench_function("zebra_single_verify", |b| {
        let items: Vec<_> = joins
            .iter()
            .zip(&wire)
            .map(|(e, w)| {
                let mut m = CHANGE_LABEL.0.as_bytes().to_vec();
                m.push(0);
                m.extend_from_slice(&w[..w.len() - 64]);
                (
                    ed25519_zebra::VerificationKey::try_from(e.author.to_bytes()).unwrap(),
                    ed25519_zebra::Signature::from_bytes(&e.sig.0),
                    m,
                )
            })
            .collect();
        b.iter(|| {
            let (vk, s, m) = &items[next()];
            vk.verify(s, m).unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("crdt_verify_batch");
    g.sample_size(10);
    let ours: Vec<securecomm_crdt::verify::SigItem> = joins.iter().map(|e| e.sig_item()).collect();
    g.bench_function("single", |b| b.iter(|| assert!(ours[next()].verify())));
    for size in [16usize, 64, 256, 1024, 4096] {
        g.throughput(criterion::Throughput::Elements(size as u64));
        g.bench_function(format!("batch_{size}"), |b| {
            b.iter(|| assert!(securecomm_crdt::verify::verify_batch(&ours[..size])))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("zebra_batch_verify");
    g.sample_size(10);
    let items: Vec<(
        ed25519_zebra::VerificationKeyBytes,
        ed25519_zebra::Signature,
        Vec<u8>,
    )> = joins
        .iter()
        .zip(&wire)
        .map(|(e, w)| {
            let mut m = CHANGE_LABEL.0.as_bytes().to_vec();
            m.push(0);
            m.extend_from_slice(&w[..w.len() - 64]);
            (
                e.author.to_bytes().into(),
                ed25519_zebra::Signature::from_bytes(&e.sig.0),
                m,
            )
        })
        .collect();
    for size in [16usize, 64, 256, 1024, 4096] {
        g.throughput(criterion::Throughput::Elements(size as u64));
        g.bench_function(format!("batch_{size}"), |b| {
            b.iter(|| {
                let mut v = ed25519_zebra::batch::Verifier::new();
                for (k, s, m) in items.iter().take(size) {
                    v.queue((*k, *s, m.as_slice()));
                }
                v.verify(rand::thread_rng()).unwrap()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("ingest_whole");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Elements(envs.len() as u64));
    g.bench_function("automerge_apply_changes_batch", |b| {
        let all: Vec<automerge::Change> = envs
            .iter()
            .map(|e| parse_change(&e.change).unwrap())
            .collect();
        b.iter_batched(
            || all.clone(),
            |all| {
                let mut d = Automerge::new();
                d.apply_changes(all).unwrap();
                d
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("guild_receive", |b| {
        b.iter_batched(
            || envs.clone(),
            |envs| {
                let mut g = Guild::join(id);
                g.receive(envs);
                g
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Plain Automerge: parse each change, apply all in one call (the guild bench's baseline).
#[inline(never)]
fn plain_ingest(raw: Vec<Vec<u8>>) -> Automerge {
    let mut d = Automerge::new();
    d.apply_changes(
        raw.into_iter()
            .map(|b| automerge::Change::from_bytes(b).unwrap()),
    )
    .unwrap();
    d
}

/// Validated ingest of the same changes in their envelopes, one thread.
#[inline(never)]
fn guild_ingest(id: securecomm_crdt::schema::GuildId, envs: Vec<SignedChange>) -> Guild {
    let mut g = Guild::join(id);
    let rep = g.receive(envs);
    assert!(rep.rejected.is_empty());
    g
}

/// CPU seconds of this process (10 ms ticks).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// `STAGES_SPLIT`: CPU time per change of each stage of validated ingest, next to plain
/// Automerge, `STAGES_SPLIT` rounds (default 5) alternating.
fn split(envs: &[SignedChange], id: securecomm_crdt::schema::GuildId) {
    use securecomm_crdt::verify::{SigItem, verify_each};
    let rounds: usize = std::env::var("STAGES_SPLIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let n = envs.len() as f64;
    let parsed: Vec<automerge::Change> = envs
        .iter()
        .map(|e| parse_change(&e.change).unwrap())
        .collect();
    let certs: Vec<securecomm_crdt::schema::DeviceCert> = parsed
        .iter()
        .filter_map(|c| match ops_of(c).unwrap().as_slice() {
            [GuildOp::Redeem { cert, .. }] => Some(*cert),
            _ => None,
        })
        .collect();
    let mut t: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let mut time = |name: &'static str, f: &mut dyn FnMut()| {
        let c = cpu_secs();
        f();
        t.entry(name).or_default().push((cpu_secs() - c) * 1e6 / n);
    };
    for _ in 0..rounds {
        let raw: Vec<Vec<u8>> = envs.iter().map(|e| e.change.clone()).collect();
        time("a plain parse+apply", &mut || {
            let mut d = Automerge::new();
            d.apply_changes(
                raw.clone()
                    .into_iter()
                    .map(|b| automerge::Change::from_bytes(b).unwrap()),
            )
            .unwrap();
        });
        let input = envs.to_vec();
        time("b guild receive", &mut || {
            let mut g = Guild::join(id);
            let rep = g.receive(input.clone());
            assert_eq!(rep.accepted.len(), envs.len());
        });
        let mut items = vec![];
        time("c envelope sig items (sha512)", &mut || {
            items = envs.iter().map(|e| e.sig_item()).collect::<Vec<SigItem>>();
        });
        time("d envelope verify_each", &mut || {
            assert!(verify_each(&items).iter().all(|x| *x));
        });
        let mut citems = vec![];
        time("e cert sig items (sha512)", &mut || {
            citems = certs.iter().map(|c| c.sig_item()).collect::<Vec<SigItem>>();
        });
        time("f cert verify_each", &mut || {
            assert!(verify_each(&citems).iter().all(|x| *x));
        });
        time("g root key decompress", &mut || {
            for c in &certs {
                std::hint::black_box(
                    securecomm_noise::keys::RootPublicKey::from_bytes(c.user.as_bytes()).unwrap(),
                );
            }
        });
        time("h parse_change", &mut || {
            for e in envs {
                std::hint::black_box(parse_change(&e.change).unwrap());
            }
        });
        time("i ops_of (decompresses all keys)", &mut || {
            for c in &parsed {
                std::hint::black_box(ops_of(c).unwrap());
            }
        });
        time("j legacy decode", &mut || {
            for c in &parsed {
                std::hint::black_box(c.decode());
            }
        });
    }
    for (k, v) in &t {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        println!(
            "{k:40} median {:6.1} us/change  (min {:.1})",
            v[v.len() / 2],
            v[0]
        );
    }
}

criterion_group!(benches, report);
criterion_main!(benches);
