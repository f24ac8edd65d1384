//! Guild benchmark: 10,000 members, 250 roles, 500 channels.
//!
//! Prints: build time, validated changes applied per second next to plain Automerge
//! `apply_changes` of the same changes (same run), load time from bytes (verified, trusted
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
use securecomm_crdt::guild::Guild;
use securecomm_crdt::schema::ChannelId;

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

    // Validated ingest vs plain Automerge, same changes, same run.
    let live0 = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut fresh = Guild::join(id);
    let rep = fresh.receive(built.envs.clone());
    let ours = t.elapsed();
    assert!(rep.rejected.is_empty() && rep.accepted.len() == built.envs.len());
    let live_guild = LIVE.load(Ordering::Relaxed) - live0;
    let raw: Vec<Vec<u8>> = built.envs.iter().map(|e| e.change.clone()).collect();
    // One by one on a tenth of the changes (Automerge 0.12 is slow per call), extrapolated.
    let tenth = raw.len() / 10;
    let t = Instant::now();
    let mut plain_some = Automerge::new();
    for b in &raw[..tenth] {
        plain_some
            .apply_changes(std::iter::once(Change::from_bytes(b.clone()).unwrap()))
            .unwrap();
    }
    let plain_each = t.elapsed().mul_f64(raw.len() as f64 / tenth as f64);
    drop(plain_some);
    let live1 = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut plain_batch = Automerge::new();
    plain_batch
        .apply_changes(raw.iter().map(|b| Change::from_bytes(b.clone()).unwrap()))
        .unwrap();
    let plain_all = t.elapsed();
    let live_plain = LIVE.load(Ordering::Relaxed) - live1;
    println!(
        "validated apply (one receive call): {:.2?} = {:.0} changes/s | plain Automerge apply_changes one change per call (first 10%, extrapolated): {:.2?} = {:.0}/s (ratio {:.2}x) | all in one call: {:.2?} = {:.0}/s (ratio {:.2}x)",
        ours,
        n / ours.as_secs_f64(),
        plain_each,
        n / plain_each.as_secs_f64(),
        ours.as_secs_f64() / plain_each.as_secs_f64(),
        plain_all,
        n / plain_all.as_secs_f64(),
        ours.as_secs_f64() / plain_all.as_secs_f64(),
    );

    // The same ingest with signature batches spread over two threads (opt-in).
    let t = Instant::now();
    let mut fresh2 = Guild::join(id);
    fresh2.set_verify_threads(2);
    let rep2 = fresh2.receive(built.envs.clone());
    let ours2 = t.elapsed();
    assert!(rep2.rejected.is_empty() && rep2.accepted.len() == built.envs.len());
    drop(fresh2);
    println!(
        "validated apply with 2 verification threads (Guild::set_verify_threads): {:.2?} = {:.0} changes/s (ratio {:.2}x to all-in-one plain apply)",
        ours2,
        n / ours2.as_secs_f64(),
        ours2.as_secs_f64() / plain_all.as_secs_f64(),
    );

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
