//! The guild layer in one process: three real libp2p nodes on loopback, each with its own
//! encrypted database and `GuildService`. A creates a guild and invites B and C (C joins through
//! A, and never connects to B), everybody ends up in the document and in key agreement, and
//! messages flow in every direction, in order per sender.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{TestNode, start, until};
use securecomm_node::guild::GuildEvent;
use tokio::time::sleep;

fn all_keyed(n: &TestNode, guild: &str, count: usize) -> bool {
    n.all_keyed(guild, count)
}

fn texts(n: &TestNode, guild: &str) -> Vec<(String, String)> {
    n.texts(guild)
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

    let t0 = std::time::Instant::now();
    let jb = b.guilds.join(&code).await.unwrap();
    eprintln!("b joined in {:?}", t0.elapsed());
    assert_eq!(jb["name"], "Book Club");
    assert_eq!(jb["ready"], true, "{jb}");
    let t0 = std::time::Instant::now();
    let jc = c.guilds.join(&code).await.unwrap();
    eprintln!("c joined in {:?}", t0.elapsed());
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
    eprintln!("bad join refused at {:?}", t0.elapsed());

    eprintln!("all keyed in {:?}", t0.elapsed());
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
    eprintln!("sent at {:?}", t0.elapsed());
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
    eprintln!("received at {:?}", t0.elapsed());
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

/// The inviter refuses what it must: a wrong secret, a used-up invite, a banned user; the
/// joiner refuses an expired code itself. Refusals leave no guild behind at the joiner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_refused_for_bad_secrets_used_up_invites_bans_and_expiry() {
    use securecomm_node::guild::wire::InviteLink;
    use securecomm_noise::secret::Secret32;
    let a = start("owner").await;
    let b = start("banned").await;
    let c = start("late").await;
    let g = a.guilds.create_guild("Strict").await.unwrap();
    let gid = g["id"].as_str().unwrap().to_owned();

    // Wrong secret: the proof does not verify.
    let inv = a.guilds.create_invite(&gid, None, 1).await.unwrap();
    let code = inv["code"].as_str().unwrap();
    let mut forged = InviteLink::from_text(code).unwrap();
    forged.secret = Secret32::from_bytes([0x55; 32]);
    let err = c
        .guilds
        .join(&forged.to_text())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown invite"), "{err}");
    assert_eq!(c.guilds.list_guilds().unwrap(), serde_json::json!([]));

    // Banned before joining: refused.
    a.guilds.ban(&gid, &b.user, "no").await.unwrap();
    let err = b.guilds.join(code).await.unwrap_err().to_string();
    assert!(err.contains("banned"), "{err}");
    assert_eq!(b.guilds.list_guilds().unwrap(), serde_json::json!([]));

    // One use: C joins, then the same code is used up.
    let j = c.guilds.join(code).await.unwrap();
    assert_eq!(j["ready"], true);
    let d = start("fourth").await;
    let err = d.guilds.join(code).await.unwrap_err().to_string();
    assert!(err.contains("used up") || err.contains("expired"), "{err}");

    // Expired: the joiner does not even try.
    let inv = a.guilds.create_invite(&gid, Some(0), 0).await.unwrap();
    let err = d
        .guilds
        .join(inv["code"].as_str().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("expired"), "{err}");
    for n in [&a, &b, &c, &d] {
        n.guilds.stop();
    }
}
