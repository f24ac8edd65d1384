//! Per-message cost of guild channel encryption against Megolm (vodozemac 0.9.0), interleaved.
//!
//! Criterion measures each function in its own time window; on a shared, loaded machine the load
//! changes between windows and a 10% difference drowns in it. This binary alternates the two
//! contenders in short rounds (a batch of ours, a batch of Megolm, ...) so both see the same
//! load, alternating which goes first, and reports the median of the per-round times and of the
//! per-round ratios.
//!
//! Measured per 200-byte message: encrypt, decrypt (a fresh message each time, so the receiver's
//! ratchet moves as in real traffic), and both together. Megolm is vodozemac as shipped, whose
//! signature check is dalek's `verify` (it accepts small-order `R`); ours is strict (see
//! `noise::keys`), which costs nothing extra since the check works on `R`'s encoding.
//!
//! Run: `cargo bench -p securecomm-noise --bench group_vs_megolm` (env `ROUNDS`, `BATCH`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rand::SeedableRng;
use rand::rngs::StdRng;
use securecomm_noise::dcgka::{Group, MemberKey};
use securecomm_noise::keys::DeviceSigningKey;
use securecomm_noise::oneshot::PrekeyStore;
use std::hint::black_box;
use std::time::Instant;
use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig};

const GROUP: [u8; 32] = [7; 32];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn device(i: u64) -> (DeviceSigningKey, PrekeyStore, MemberKey) {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i + 1).to_be_bytes());
    let k = DeviceSigningKey::from_seed(&seed);
    let p = PrekeyStore::new(&mut StdRng::seed_from_u64(i), 0);
    let mk = MemberKey::new(&k, &p);
    (k, p, mk)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds = env("ROUNDS", 41);
    let batch = env("BATCH", 300);
    let mut rng = StdRng::seed_from_u64(1);
    let (k0, p0, m0) = device(0);
    let (k1, p1, m1) = device(1);
    let mut g0 = Group::new(GROUP, k0.public(), p0);
    let mut g1 = Group::new(GROUP, k1.public(), p1);
    let out = g0.create(&k0, &mut rng, m0, &[m1]).unwrap();
    let create = out.broadcast.unwrap();
    let dm = out.direct.into_iter().next().map(|(_, d)| d);
    let ack = g1.process(&k1, &mut rng, &create, dm.as_ref()).unwrap();
    g0.process(&k0, &mut rng, &ack.broadcast.unwrap(), None)
        .unwrap();

    let mut out = GroupSession::new(SessionConfig::version_1());
    let mut inbound = InboundGroupSession::new(&out.session_key(), SessionConfig::version_1());
    let text = [0x42u8; 200];

    // [ours_enc, ours_dec, megolm_enc, megolm_dec] per round, in µs per message.
    let mut t: [Vec<f64>; 4] = Default::default();
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / batch as f64;
    for round in 0..rounds + 1 {
        // Alternate who goes first (ABBA), so neither always runs on a cache or a frequency
        // state the other left behind.
        let mut run_ours = || {
            let s = Instant::now();
            let ours: Vec<_> = (0..batch)
                .map(|_| g0.encrypt(&k0, &text).unwrap())
                .collect();
            let e = per(s.elapsed());
            let s = Instant::now();
            for m in &ours {
                black_box(g1.decrypt(m).unwrap());
            }
            (e, per(s.elapsed()))
        };
        let mut run_megolm = || {
            let s = Instant::now();
            let theirs: Vec<_> = (0..batch).map(|_| out.encrypt(text)).collect();
            let e = per(s.elapsed());
            let s = Instant::now();
            for m in &theirs {
                black_box(inbound.decrypt(m).unwrap());
            }
            (e, per(s.elapsed()))
        };
        let ((oe, od), (me, md)) = if round % 2 == 0 {
            let o = run_ours();
            (o, run_megolm())
        } else {
            let m = run_megolm();
            (run_ours(), m)
        };
        if round > 0 {
            // Round 0 warms caches and is not counted.
            for (v, x) in t.iter_mut().zip([oe, od, me, md]) {
                v.push(x);
            }
        }
    }
    let mut ratio_sum: Vec<f64> = (0..rounds)
        .map(|i| (t[0][i] + t[1][i]) / (t[2][i] + t[3][i]))
        .collect();
    let mut ratio_dec: Vec<f64> = (0..rounds).map(|i| t[1][i] / t[3][i]).collect();
    let [oe, od, me, md] = t.each_mut().map(|v| median(v));
    println!("per 200-byte message, median of {rounds} interleaved rounds of {batch}:");
    println!(
        "  ours   encrypt {oe:7.2} µs  decrypt {od:7.2} µs  sum {:7.2} µs",
        oe + od
    );
    println!(
        "  megolm encrypt {me:7.2} µs  decrypt {md:7.2} µs  sum {:7.2} µs",
        me + md
    );
    println!(
        "  ours / megolm: encrypt+decrypt {:.3} (median per-round ratio), decrypt {:.3}",
        median(&mut ratio_sum),
        median(&mut ratio_dec)
    );
}
