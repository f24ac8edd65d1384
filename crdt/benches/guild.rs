//! Guild benchmark: 10,000 members, 250 roles, 500 channels.
//!
//! Prints: build time, validated changes applied per second (one thread, and pipelined over
//! two threads, also from wire bytes) next to plain Automerge `apply_changes` of the same
//! changes (same run, alternating rounds), load time from bytes (verified, trusted
//! local storage, and plain Automerge), time to resolve the view from scratch, effective-permission queries per second,
//! saved size and live heap. Run with
//! `cargo bench -p securecomm-crdt --bench guild -- --warm-up-time 1 --measurement-time 3`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

mod common;
use common::{CHANNELS, build};

use automerge::{Automerge, Change};
use criterion::{Criterion, criterion_group, criterion_main};
use securecomm_crdt::envelope::SignedChange;
use securecomm_crdt::guild::Guild;
use securecomm_crdt::schema::ChannelId;
use securecomm_noise::codec::{Decode, Encode};

/// Counts live heap bytes, to report memory.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards to the system allocator unchanged and only keeps a counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Measurement rounds of the ingest comparison.
const ROUNDS: usize = 5;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// CPU time of the whole process (all threads, including finished ones), in seconds, from
/// `/proc/self/stat` (10 ms ticks): user + system.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the file; `after` starts at field 3.
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn mib(b: isize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn report(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut built = build();
    println!(
        "built guild: {} members, {} roles, {} channels, {} changes in {:.2?}",
        built.guild.view().members().len(),
        built.guild.view().roles().len(),
        built.guild.view().channels().len(),
        built.envs.len(),
        t0.elapsed()
    );
    let id = built.guild.id();
    let n = built.envs.len() as f64;

    // Validated ingest vs plain Automerge `apply_changes`: the same changes into the same
    // starting document (empty), all measured in this run, inputs copied before the clock
    // starts. Plain Automerge parses each change from its bytes and applies them in one call
    // (its fastest way); a replica receives the same changes in their signed envelopes in one
    // `receive` call. Rounds alternate, so a busy machine hurts both sides alike.
    let raw: Vec<Vec<u8>> = built.envs.iter().map(|e| e.change.clone()).collect();
    let wire: Vec<Vec<u8>> = built.envs.iter().map(|e| e.to_bytes()).collect();
    let mut live_guild = 0;
    let mut live_plain = 0;
    let mut fresh = None;
    let (mut plain_t, mut plain_cpu, mut one_t, mut one_cpu, mut two_t, mut two_cpu, mut wire_t) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        // Live heap is counted from before the input copy: the input moves into the result.
        let live1 = LIVE.load(Ordering::Relaxed);
        let input = raw.clone();
        let (t, c) = (Instant::now(), cpu_secs());
        let mut plain = Automerge::new();
        plain
            .apply_changes(input.into_iter().map(|b| Change::from_bytes(b).unwrap()))
            .unwrap();
        plain_t.push(t.elapsed().as_secs_f64());
        plain_cpu.push(cpu_secs() - c);
        if round == 0 {
            live_plain = LIVE.load(Ordering::Relaxed) - live1;
        }
        drop(plain);

        let live0 = LIVE.load(Ordering::Relaxed);
        let input = built.envs.clone();
        let (t, c) = (Instant::now(), cpu_secs());
        let mut g = Guild::join(id);
        let rep = g.receive(input);
        one_t.push(t.elapsed().as_secs_f64());
        one_cpu.push(cpu_secs() - c);
        assert!(rep.rejected.is_empty() && rep.accepted.len() == built.envs.len());
        if round == 0 {
            live_guild = LIVE.load(Ordering::Relaxed) - live0;
            fresh = Some(g);
        } else {
            drop(g);
        }

        let input = built.envs.clone();
        let (t, c) = (Instant::now(), cpu_secs());
        let mut g = Guild::join(id);
        g.set_verify_threads(2);
        let rep = g.receive(input);
        two_t.push(t.elapsed().as_secs_f64());
        two_cpu.push(cpu_secs() - c);
        assert!(rep.rejected.is_empty() && rep.accepted.len() == built.envs.len());
        drop(g);

        // From wire bytes: envelope decoding (the author key's decompression) included.
        let input = wire.clone();
        let t = Instant::now();
        let envs: Vec<SignedChange> = input
            .iter()
            .map(|b| SignedChange::from_bytes(b).unwrap())
            .collect();
        let mut g = Guild::join(id);
        g.set_verify_threads(2);
        let rep = g.receive(envs);
        wire_t.push(t.elapsed().as_secs_f64());
        assert!(rep.rejected.is_empty() && rep.accepted.len() == built.envs.len());
        drop(g);
        println!(
            "round {round}: plain {:.1} ms (CPU {:.0} ms) | validated, 1 thread {:.1} ms (CPU {:.0} ms; {:.2}x wall, {:.2}x CPU) | pipelined on 2 threads {:.1} ms (CPU {:.0} ms; {:.2}x wall, {:.2}x CPU) | pipelined from wire bytes {:.1} ms ({:.2}x wall)",
            plain_t[round] * 1e3,
            plain_cpu[round] * 1e3,
            one_t[round] * 1e3,
            one_cpu[round] * 1e3,
            one_t[round] / plain_t[round],
            one_cpu[round] / plain_cpu[round],
            two_t[round] * 1e3,
            two_cpu[round] * 1e3,
            two_t[round] / plain_t[round],
            two_cpu[round] / plain_cpu[round],
            wire_t[round] * 1e3,
            wire_t[round] / plain_t[round],
        );
    }
    let fresh = fresh.unwrap();
    let us = |v: &[f64]| median(v) * 1e6 / n;
    // Ratios per round (each side against plain Automerge of the same round), then median,
    // min and max over the rounds.
    let ratios = |v: &[f64], base: &[f64]| {
        let r: Vec<f64> = v.iter().zip(base).map(|(a, b)| a / b).collect();
        (
            median(&r),
            r.iter().copied().fold(f64::MAX, f64::min),
            r.iter().copied().fold(0.0, f64::max),
        )
    };
    let show = |(m, lo, hi): (f64, f64, f64)| format!("{m:.2}x (rounds {lo:.2}-{hi:.2})");
    println!(
        "plain Automerge apply_changes (parse + one call): wall {:.1} us/change = {:.0} changes/s, CPU {:.1} us/change",
        us(&plain_t),
        n / median(&plain_t),
        us(&plain_cpu)
    );
    println!(
        "validated apply, 1 thread: wall {:.1} us/change = {:.0} changes/s, ratio {}; CPU {:.1} us/change, ratio {}",
        us(&one_t),
        n / median(&one_t),
        show(ratios(&one_t, &plain_t)),
        us(&one_cpu),
        show(ratios(&one_cpu, &plain_cpu)),
    );
    println!(
        "validated apply, pipelined on 2 threads (Guild::set_verify_threads(2)): wall {:.1} us/change = {:.0} changes/s, ratio {}; process CPU {:.1} us/change, ratio {}",
        us(&two_t),
        n / median(&two_t),
        show(ratios(&two_t, &plain_t)),
        us(&two_cpu),
        show(ratios(&two_cpu, &plain_cpu)),
    );
    println!(
        "validated apply from wire bytes (envelope decoding included), pipelined: wall {:.1} us/change = {:.0} changes/s, ratio {}",
        us(&wire_t),
        n / median(&wire_t),
        show(ratios(&wire_t, &plain_t)),
    );
    let plain_batch = {
        let mut d = Automerge::new();
        d.apply_changes(raw.iter().map(|b| Change::from_bytes(b.clone()).unwrap()))
            .unwrap();
        d
    };

    // Load from bytes.
    let saved = fresh.save();
    let doc_bytes = plain_batch.save();
    let t = Instant::now();
    let loaded = Guild::load(&saved).unwrap();
    let load = t.elapsed();
    assert_eq!(loaded.len(), fresh.len());
    let t = Instant::now();
    let trusted = Guild::load_trusted(&saved).unwrap();
    let load_trusted = t.elapsed();
    assert_eq!(trusted.len(), fresh.len());
    drop((loaded, trusted));
    let t = Instant::now();
    let _ = Automerge::load(&doc_bytes).unwrap();
    let plain_load = t.elapsed();
    println!(
        "load from bytes ({:.2} MiB saved, of which Automerge doc {:.2} MiB): verified {:.2?} | load_trusted (own sealed storage) {:.2?} | plain Automerge::load {:.2?} (ratios {:.2}x, {:.2}x)",
        mib(saved.len() as isize),
        mib(doc_bytes.len() as isize),
        load,
        load_trusted,
        plain_load,
        load.as_secs_f64() / plain_load.as_secs_f64(),
        load_trusted.as_secs_f64() / plain_load.as_secs_f64(),
    );

    // Resolve from scratch.
    let t = Instant::now();
    let v = fresh.resolve_from_scratch();
    println!("resolve view from scratch: {:.2?}", t.elapsed());
    assert_eq!(&v, built.guild.view());
    println!(
        "memory: live heap of a replica after ingest {:.1} MiB (plain Automerge doc of the same changes {:.1} MiB); saved {:.2} MiB",
        mib(live_guild),
        mib(live_plain),
        mib(saved.len() as isize)
    );

    // Effective permission queries.
    let view = built.guild.view().clone();
    let users = built.users.clone();
    let q = 200_000usize;
    let t = Instant::now();
    let mut acc = 0u64;
    for i in 0..q {
        let u = &users[(i * 7919) % users.len()];
        let ch = ChannelId((i as u64 * 31) % CHANNELS + 1);
        acc ^= view.channel_permissions(u, &ch).bits();
    }
    let el = t.elapsed();
    println!(
        "effective-permission queries: {:.0}/s ({} queries, {:.2?}, checksum {acc:x})",
        q as f64 / el.as_secs_f64(),
        q,
        el
    );

    let mut group = c.benchmark_group("guild_10k");
    group.sample_size(10);
    group.bench_function("resolve_view_from_scratch", |b| {
        b.iter(|| fresh.resolve_from_scratch())
    });
    group.bench_function("channel_permissions_query", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = i.wrapping_add(1);
            view.channel_permissions(
                &users[(i * 7919) % users.len()],
                &ChannelId((i as u64 * 31) % CHANNELS + 1),
            )
        })
    });
    group.finish();
    drop(built);
}

criterion_group!(benches, report);
criterion_main!(benches);
