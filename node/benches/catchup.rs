//! Catch-up after being offline: how long a member returning to N missed messages (default
//! 10,000) takes to hold all of them, and how many bytes history sync exchanged per message.
//!
//! Three `GuildService`s on loopback (real libp2p, SQLCipher databases): A owns the guild, B and
//! C joined and keyed. B shuts down; A sends N messages (C stays online so they are published);
//! B starts again from its data directory. Timed: from B's restart to B having stored all N
//! (through reconnection, key agreement catch-up and history pages), and the history sessions'
//! own time.
//!
//! Run: `cargo bench -p securecomm-node --bench catchup` (env `MESSAGES`, `PAYLOAD`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use rand_core::OsRng;
use securecomm_node::guild::GuildService;
use securecomm_node::net::{self, Client, EventLoop, NetConfig};
use securecomm_node::runtime::sync_config;
use securecomm_node::store::{Db, LocalProfile};
use securecomm_noise::identity::UserIdentity;
use securecomm_noise::secret::Secret32;
use tokio::time::sleep;

#[path = "../tests/common/mod.rs"]
mod common;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Returning {
    profile: LocalProfile,
    dir: tempfile::TempDir,
}

async fn start(r: &Returning) -> (Client, GuildService) {
    let cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        hole_punching: false,
        ..NetConfig::default()
    };
    let keypair = net::device_keypair(r.profile.identity.device().signing()).unwrap();
    let (lp, client) = EventLoop::new(keypair, &cfg).unwrap();
    tokio::spawn(lp.run());
    let db = Db::open(&r.dir.path().join("node.db"), &r.profile.db_key).unwrap();
    let svc = GuildService::start(client.clone(), db, &r.profile, sync_config())
        .await
        .unwrap();
    (client, svc)
}

fn main() {
    let n = env("MESSAGES", 10_000);
    let payload = env("PAYLOAD", 200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let a = common::start("owner").await;
        let c = common::start("witness").await;
        let b = Returning {
            profile: LocalProfile {
                display_name: "returning".into(),
                identity: UserIdentity::generate(&mut OsRng, "bench", 0).unwrap(),
                db_key: Secret32::random(&mut OsRng),
            },
            dir: tempfile::tempdir().unwrap(),
        };
        let (b_net, b_svc) = start(&b).await;
        let gid = a.guilds.create_guild("Catch-up").await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        for (name, svc) in [("witness", &c.guilds), ("returning", &b_svc)] {
            let inv = a.guilds.create_invite(&gid, Some(3600), 1).await.unwrap();
            let j = svc.join(inv["code"].as_str().unwrap()).await.unwrap();
            assert_eq!(j["ready"], true, "{name}: {j}");
        }
        for svc in [&a.guilds, &c.guilds, &b_svc] {
            common::until("three keyed members", 60, || {
                let m = svc.members(&gid).unwrap();
                let m = m.as_array().unwrap();
                (m.len() == 3 && m.iter().all(|x| x["keyed"] == true)).then_some(())
            })
            .await;
        }
        b_svc.stop();
        b_net.shutdown().await;
        drop(b_svc);
        sleep(Duration::from_secs(1)).await;

        let text = "x".repeat(payload);
        let t_send = Instant::now();
        for _ in 0..n {
            a.send(&gid, &text).await;
        }
        let send_secs = t_send.elapsed().as_secs_f64();
        common::until("the witness to have every message", 600, || {
            let h = c.guilds.history(&gid, "general", n + 10).unwrap();
            (h.as_array().unwrap().len() == n).then_some(())
        })
        .await;
        eprintln!("setup: {n} messages sent in {send_secs:.1} s");

        let t0 = Instant::now();
        let (b_net, b_svc) = start(&b).await;
        let mut last = 0;
        loop {
            let t = b_svc.history_totals();
            if t.stored >= n {
                break;
            }
            if t.stored != last {
                last = t.stored;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "catch-up stalled at {last} of {n}"
            );
            sleep(Duration::from_millis(20)).await;
        }
        let total = t0.elapsed();
        let t = b_svc.history_totals();
        let stored = b_svc.history(&gid, "general", n + 10).unwrap();
        assert_eq!(stored.as_array().unwrap().len(), n, "wrong number stored");

        println!("catch-up of {n} missed messages ({payload}-byte text) on loopback");
        println!(
            "  from restart to all stored: {:.2} s ({:.0} msg/s)",
            total.as_secs_f64(),
            n as f64 / total.as_secs_f64()
        );
        println!(
            "  history sessions: {:.2} s, {} pages, {} items, {} duplicates",
            t.millis as f64 / 1000.0,
            t.pages,
            t.items,
            t.duplicates
        );
        println!(
            "  bytes: {} received + {} sent = {:.0} bytes per missed message (text {payload} B)",
            t.bytes,
            t.sent_bytes,
            (t.bytes + t.sent_bytes) as f64 / n as f64
        );
        println!("  goal: under 10 s");
        b_svc.stop();
        b_net.shutdown().await;
        a.guilds.stop();
        c.guilds.stop();
    });
}
