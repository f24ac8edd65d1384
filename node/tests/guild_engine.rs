//! The guild layer in one process: three real libp2p nodes on loopback, each with its own
//! encrypted database and `GuildService`. A creates a guild and invites B and C (C joins through
//! A, and never connects to B), everybody ends up in the document and in key agreement, and
//! messages flow in every direction, in order per sender.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use rand_core::OsRng;
use securecomm_node::guild::{GuildEvent, GuildService};
use securecomm_node::net::{self, EventLoop, NetConfig};
use securecomm_node::runtime::sync_config;
use securecomm_node::store::{Db, LocalProfile};
use securecomm_noise::identity::UserIdentity;
use securecomm_noise::secret::Secret32;
use serde_json::Value;
use tokio::time::{Instant, sleep};

struct TestNode {
    guilds: GuildService,
    _dir: tempfile::TempDir,
}

async fn start(name: &str) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let profile = LocalProfile {
        display_name: name.to_owned(),
        identity: UserIdentity::generate(&mut OsRng, "test", 0).unwrap(),
        db_key: Secret32::random(&mut OsRng),
    };
    let cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        hole_punching: false,
        ..NetConfig::default()
    };
    let keypair = net::device_keypair(profile.identity.device().signing()).unwrap();
    let (lp, client) = EventLoop::new(keypair, &cfg).unwrap();
    tokio::spawn(lp.run());
    let db = Db::open(&dir.path().join("node.db"), &profile.db_key).unwrap();
    let guilds = GuildService::start(client, db, &profile, sync_config())
        .await
        .unwrap();
    TestNode { guilds, _dir: dir }
}

async fn until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(100)).await;
    }
}

fn all_keyed(n: &TestNode, guild: &str, count: usize) -> bool {
    let m = n.guilds.members(guild).unwrap();
    let m = m.as_array().unwrap();
    m.len() == count && m.iter().all(|x| x["keyed"] == Value::Bool(true))
}

fn texts(n: &TestNode, guild: &str) -> Vec<(String, String)> {
    let h = n.guilds.history(guild, "general", 1000).unwrap();
    h.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["nickname"].as_str().unwrap().to_owned(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_create_invite_join_and_talk() {
    let a = start("alice").await;
    let b = start("bob").await;
    let c = start("carol").await;
    let mut a_events = a.guilds.events();

    let g = a.guilds.create_guild("Book Club").await.unwrap();
    let gid = g["id"].as_str().unwrap().to_owned();
    let invite = a
        .guilds
        .create_invite("Book Club", Some(3600), 5)
        .await
        .unwrap();
    let code = invite["code"].as_str().unwrap().to_owned();

    let jb = b.guilds.join(&code).await.unwrap();
    assert_eq!(jb["name"], "Book Club");
    assert_eq!(jb["ready"], true, "{jb}");
    let jc = c.guilds.join(&code).await.unwrap();
    assert_eq!(jc["ready"], true, "{jc}");

    for n in [&a, &b, &c] {
        until("three keyed members everywhere", 60, || {
            all_keyed(n, &gid, 3).then_some(())
        })
        .await;
    }
    // A wrong or reused-elsewhere code is refused cleanly.
    let mut bad = code.clone();
    bad.push('a');
    assert!(c.guilds.join(&bad).await.is_err());

    const PER: usize = 4;
    for i in 0..PER {
        for (n, who) in [(&a, "alice"), (&b, "bob"), (&c, "carol")] {
            let mut tries = 0;
            loop {
                match n.guilds.send(&gid, "general", &format!("{who} {i}")).await {
                    Ok(_) => break,
                    Err(e) if tries < 100 => {
                        tries += 1;
                        eprintln!("send by {who} not yet possible: {e}");
                        sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("{who} cannot send: {e}"),
                }
            }
        }
    }
    for (n, name) in [(&a, "alice"), (&b, "bob"), (&c, "carol")] {
        let got = until("every message everywhere", 60, || {
            let t = texts(n, &gid);
            (t.len() == 3 * PER).then_some(t)
        })
        .await;
        for who in ["alice", "bob", "carol"] {
            let mine: Vec<&str> = got
                .iter()
                .filter(|(nick, _)| nick == who)
                .map(|(_, t)| t.as_str())
                .collect();
            let want: Vec<String> = (0..PER).map(|i| format!("{who} {i}")).collect();
            assert_eq!(mine, want, "{name} sees {who}'s messages out of order");
        }
    }
    // A saw message events for the others' messages.
    let mut seen = 0;
    while let Ok(e) = a_events.try_recv() {
        if let GuildEvent::Message(m) = e
            && m.nickname != "alice"
        {
            seen += 1;
        }
    }
    assert!(seen >= 2 * PER, "only {seen} message events at A");
    for n in [&a, &b, &c] {
        n.guilds.stop();
    }
}
