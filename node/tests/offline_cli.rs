//! Nothing lost while offline, with the real binaries: a member that was down while others
//! talked fetches everything it missed from an online member (history sync), exactly once and in
//! order per sender.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod procs;

use std::collections::HashSet;

use procs::*;

/// C is offline while A and B send 100 messages between them; C comes back and ends with all
/// 100, each once, in each sender's order, the same as A has.
#[test]
fn an_offline_member_catches_up_on_100_messages() {
    let relay = TestRelay::start(None);
    let mut nodes: Vec<Node> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| Node::new(n))
        .collect();
    for n in &mut nodes {
        n.start(&["--listen", "/ip4/127.0.0.1/tcp/0", "--relay", &relay.addr]);
    }
    let (gid, code) = create_and_invite(&nodes[0], "Night Owls", 2);
    for n in &nodes[1..] {
        let j = n.cli(&["guild", "join", &code]);
        assert_eq!(j["ready"], true, "{j}");
    }
    for n in &nodes {
        wait_keyed(n, &gid, 3);
    }
    nodes[1].send(&gid, "general", "before the outage");
    until("carol to have the first message", || {
        (nodes[2].texts(&gid, "general").len() == 1).then_some(())
    });

    nodes[2].stop();
    const PER: usize = 50;
    for i in 0..PER {
        nodes[0].send(&gid, "general", &format!("alice {i}"));
        nodes[1].send(&gid, "general", &format!("bob {i}"));
    }
    let want = until("alice to have every message", || {
        let t = nodes[0].texts(&gid, "general");
        (t.len() == 2 * PER + 1).then_some(t)
    });

    // Alice's own messages say who holds them: bob (receipts), not carol.
    until("bob's receipts to reach alice", || {
        let h = nodes[0].cli(&["history", &gid, "general", "--limit", "1000"]);
        let mine: Vec<&serde_json::Value> = h
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["nickname"] == "alice")
            .collect();
        assert_eq!(mine.len(), PER);
        mine.iter()
            .all(|m| {
                m["delivery"]["delivered"] == 1
                    && m["delivery"]["members"] == 2
                    && m["delivery"]["pending"][0]["nickname"] == "carol"
            })
            .then_some(())
    });

    nodes[2].restart();
    let got = until("carol to catch up", || {
        let t = nodes[2].texts(&gid, "general");
        (t.len() > 2 * PER).then_some(t)
    });
    // Give any duplicate a chance to show up, then look again.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let got_again = nodes[2].texts(&gid, "general");
    assert_eq!(got, got_again, "carol's history changed after catching up");
    assert_eq!(got.len(), 2 * PER + 1, "duplicates or extra messages");
    let distinct: HashSet<&(String, String)> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "a message was stored twice");
    for who in ["alice", "bob"] {
        let theirs: Vec<&str> = got
            .iter()
            .filter(|(n, t)| n == who && t != "before the outage")
            .map(|(_, t)| t.as_str())
            .collect();
        let expect: Vec<String> = (0..PER).map(|i| format!("{who} {i}")).collect();
        assert_eq!(theirs, expect, "carol sees {who}'s messages out of order");
    }
    until("carol's receipts to reach alice", || {
        let h = nodes[0].cli(&["history", &gid, "general", "--limit", "1000"]);
        h.as_array()
            .unwrap()
            .iter()
            .filter(|m| m["nickname"] == "alice")
            .all(|m| m["delivery"]["delivered"] == 2)
            .then_some(())
    });
    let mut a: Vec<_> = want.clone();
    let mut c: Vec<_> = got.clone();
    a.sort();
    c.sort();
    assert_eq!(a, c, "carol and alice hold different histories");
    for n in &mut nodes {
        n.stop();
    }
}

fn dm_texts(n: &Node, user: &str) -> Vec<(bool, String)> {
    n.cli(&["dm", "history", user, "--limit", "100"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["outgoing"].as_bool().unwrap(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// DMs between two members: delivered directly while both run, queued while the recipient is
/// down and delivered when it returns, and sessions survive restarts of either side.
#[test]
fn dms_are_delivered_queued_and_survive_restarts() {
    let mut a = Node::new("ann");
    let mut b = Node::new("ben");
    a.start(&["--listen", "/ip4/127.0.0.1/tcp/0"]);
    b.start(&["--listen", "/ip4/127.0.0.1/tcp/0"]);
    let (gid, code) = create_and_invite(&a, "Pen Pals", 1);
    b.cli(&["guild", "join", &code]);
    wait_keyed(&a, &gid, 2);
    wait_keyed(&b, &gid, 2);
    let (ua, ub) = (a.user_id(), b.user_id());
    // Nicknames work as well as ids; a DM to oneself is refused.
    let sent = a.cli(&["dm", "send", "ben", "hello ben"]);
    assert_eq!(sent["outgoing"], true, "{sent}");
    let err = a.cli_err(&["dm", "send", &ua, "me"]);
    assert!(err.contains("that is you"), "{err}");
    until("ben to get the first DM", || {
        (dm_texts(&b, &ua) == vec![(false, "hello ben".to_owned())]).then_some(())
    });
    until("ann to see it delivered", || {
        let h = a.cli(&["dm", "history", &ub]);
        (h[0]["delivery"][0]["state"] == "delivered").then_some(())
    });
    b.cli(&["dm", "send", &ua, "hi ann"]);
    until("ann to get the reply", || {
        (dm_texts(&a, &ub).len() == 2).then_some(())
    });

    // Ben goes down; Ann's DM waits and arrives when he is back.
    b.stop();
    a.cli(&["dm", "send", &ub, "are you there?"]);
    let h = a.cli(&["dm", "history", &ub]);
    assert_eq!(h[2]["delivery"][0]["state"], "queued", "{h}");
    b.restart();
    until("ben to get the queued DM after his restart", || {
        (dm_texts(&b, &ua).len() == 3).then_some(())
    });
    // Ann restarts; the session continues both ways.
    a.stop();
    a.restart();
    b.cli(&["dm", "send", &ua, "back again"]);
    a.cli(&["dm", "send", &ub, "welcome back"]);
    let want = vec![
        (true, "hello ben".to_owned()),
        (false, "hi ann".to_owned()),
        (true, "are you there?".to_owned()),
        (false, "back again".to_owned()),
        (true, "welcome back".to_owned()),
    ];
    let got = until("both to hold the whole conversation", || {
        let t = dm_texts(&a, &ub);
        (t.len() == 5).then_some(t)
    });
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    assert_eq!(sorted_got, sorted_want);
    until("ben to hold it too", || {
        (dm_texts(&b, &ua).len() == 5).then_some(())
    });
    // The databases hold no DM text in clear.
    for n in [&a, &b] {
        let raw = std::fs::read(n.path().join("node.db")).unwrap_or_default();
        assert!(
            !raw.windows(9).any(|w| w == b"hello ben"),
            "plaintext DM in {}'s database file",
            n.name
        );
    }
    a.stop();
    b.stop();
}

/// Everyone but the sender is offline: the sender's guild message and DM go to the mailbox
/// relay, the sender goes offline too, and a member that returns gets both from the relay.
/// The relay's database and log hold none of the texts, names or nicknames.
#[test]
fn mailbox_relay_delivers_when_everyone_else_is_offline() {
    let relay = TestRelay::start(None);
    let mut nodes: Vec<Node> = ["amy", "bea", "cal"].iter().map(|n| Node::new(n)).collect();
    for n in &mut nodes {
        n.start(&["--listen", "/ip4/127.0.0.1/tcp/0", "--relay", &relay.addr]);
    }
    let (gid, code) = create_and_invite(&nodes[0], "Lantern Society", 2);
    for n in &nodes[1..] {
        let j = n.cli(&["guild", "join", &code]);
        assert_eq!(j["ready"], true, "{j}");
    }
    for n in &nodes {
        wait_keyed(n, &gid, 3);
    }
    for n in &nodes[1..] {
        n.send(&gid, "general", &format!("{} is here", n.name));
    }
    until("amy to hear from both", || {
        (nodes[0].texts(&gid, "general").len() == 2).then_some(())
    });
    let bea = nodes[1].user_id();
    nodes[1].stop();
    nodes[2].stop();

    nodes[0].send(&gid, "general", "a lantern in the window");
    nodes[0].cli(&["dm", "send", &bea, "meet at the old mill"]);
    until("amy's message to be deposited for both", || {
        let h = nodes[0].cli(&["history", &gid, "general"]);
        let last = h.as_array().unwrap().last().unwrap().clone();
        let p = last["delivery"]["pending"].as_array().unwrap().clone();
        (p.len() == 2 && p.iter().all(|x| x["state"] == "deposited")).then_some(())
    });
    until("amy's DM to be deposited", || {
        let h = nodes[0].cli(&["dm", "history", &bea]);
        (h[0]["delivery"][0]["state"] == "deposited").then_some(())
    });
    nodes[0].stop();

    nodes[1].restart();
    until("bea to pick up the guild message", || {
        nodes[1]
            .texts(&gid, "general")
            .iter()
            .any(|(_, t)| t == "a lantern in the window")
            .then_some(())
    });
    let amy = nodes[0].user_id();
    until("bea to pick up the DM", || {
        let h = nodes[1].cli(&["dm", "history", &amy]);
        (h[0]["text"] == "meet at the old mill").then_some(())
    });
    nodes[1].stop();
    let mut seen = Vec::new();
    for entry in walk(relay.dir.path()) {
        seen.extend(std::fs::read(&entry).unwrap_or_default());
    }
    assert!(!seen.is_empty(), "the relay wrote nothing");
    for secret in [
        "a lantern in the window",
        "meet at the old mill",
        "Lantern Society",
        "is here",
        "amy",
        "bea",
    ] {
        assert!(
            !seen.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret:?} appears in the relay's files"
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A relay whose mailbox holds little: DMs to an offline user beyond its quota are refused
/// there, stay queued at the sender (nothing lost) and are retried; when the user returns,
/// every DM arrives exactly once.
#[test]
fn a_full_mailbox_refuses_and_the_sender_retries_later() {
    let relay = TestRelay::start_with(
        None,
        Some("[mailbox]\nmax_item_bytes = 1024\nmax_bytes_per_recipient = 1200\n"),
        &[],
    );
    let mut a = Node::new("ida");
    let mut b = Node::new("joe");
    a.start(&["--listen", "/ip4/127.0.0.1/tcp/0", "--relay", &relay.addr]);
    b.start(&["--listen", "/ip4/127.0.0.1/tcp/0", "--relay", &relay.addr]);
    let (gid, code) = create_and_invite(&a, "Tiny Box", 1);
    b.cli(&["guild", "join", &code]);
    wait_keyed(&a, &gid, 2);
    wait_keyed(&b, &gid, 2);
    b.send(&gid, "general", "joe was here");
    until("ida to hear from joe", || {
        (a.texts(&gid, "general").len() == 1).then_some(())
    });
    let (ui, uj) = (a.user_id(), b.user_id());
    b.stop();
    const N: usize = 8;
    for i in 0..N {
        a.cli(&["dm", "send", &uj, &format!("note {i}")]);
    }
    let states = until("the mailbox to take some and refuse the rest", || {
        let h = a.cli(&["dm", "history", &uj, "--limit", "100"]);
        let states: Vec<String> = h
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["delivery"][0]["state"].as_str().unwrap().to_owned())
            .collect();
        let deposited = states.iter().filter(|s| *s == "deposited").count();
        (deposited >= 1 && deposited + states.iter().filter(|s| *s == "queued").count() == N)
            .then_some(states)
    });
    assert!(
        states.iter().any(|s| s == "queued"),
        "the quota never refused anything: {states:?}"
    );
    b.restart();
    let got = until("joe to get every DM", || {
        let h = b.cli(&["dm", "history", &ui, "--limit", "100"]);
        let t: Vec<String> = h
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect();
        (t.len() >= N).then_some(t)
    });
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), N, "duplicates or losses: {got:?}");
    let states = until("ida to see every DM delivered or picked up", || {
        let h = a.cli(&["dm", "history", &uj, "--limit", "100"]);
        let states: Vec<String> = h
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["delivery"][0]["state"].as_str().unwrap().to_owned())
            .collect();
        states
            .iter()
            .all(|s| s == "delivered" || s == "picked-up")
            .then_some(states)
    });
    assert!(
        states.iter().any(|s| s == "picked-up"),
        "the relay never reported a pickup: {states:?}"
    );
    a.stop();
    b.stop();
}
