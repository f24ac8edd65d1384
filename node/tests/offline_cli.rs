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
    let mut a: Vec<_> = want.clone();
    let mut c: Vec<_> = got.clone();
    a.sort();
    c.sort();
    assert_eq!(a, c, "carol and alice hold different histories");
    for n in &mut nodes {
        n.stop();
    }
}
