//! Relays find each other and nodes survive losing one (issue 6, item 4).
//!
//! * In process: a node configured with relay R1 only discovers R2 (which joined the relay DHT
//!   through R1), holds reservations on both, and when R1 stops, keeps R2, drops R1's circuit
//!   address and tells a connected peer its new addresses at once (identify push).
//! * Multi-process, real binaries on loopback: three nodes that listen only through relays,
//!   configured with R1 only, form a guild; R1 is SIGKILLed; every node ends with its
//!   reservation on R2, the members reconnect through R2 and messages sent after the kill
//!   reach everybody.
//!
//! Every wait polls with a generous deadline; nothing asserts on a fixed sleep.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod procs;

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use procs::*;
use securecomm_node::net::{Client, Event, EventLoop, NetConfig, RelayInfo, RelayState};
use securecomm_rendezvous::config::RelayConfig;
use securecomm_rendezvous::server::{Relay, RelayHandle, RelayOptions};
use serde_json::Value;

#[test]
fn nodes_and_relays_speak_the_same_dht() {
    assert_eq!(
        securecomm_node::net::KAD_PROTOCOL,
        securecomm_rendezvous::server::KAD_PROTOCOL
    );
}

async fn relay(peers: Vec<String>) -> RelayHandle {
    let cfg = RelayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        peers,
        ..RelayConfig::default()
    };
    Relay::spawn(cfg, Keypair::generate_ed25519(), RelayOptions::default())
        .await
        .unwrap()
}

fn node(listen: Vec<Multiaddr>, relays: Vec<Multiaddr>) -> Client {
    let cfg = NetConfig {
        listen,
        relays,
        hole_punching: false,
        mdns: false,
        ..NetConfig::default()
    };
    let (lp, client) = EventLoop::new(Keypair::generate_ed25519(), &cfg).unwrap();
    tokio::spawn(lp.run());
    client
}

async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_of(relays: &[RelayInfo], peer: PeerId) -> Option<RelayState> {
    relays.iter().find(|r| r.peer == peer).map(|r| r.state)
}

fn circuit_via(addrs: &[Multiaddr], relay: PeerId) -> bool {
    addrs.iter().any(|a| {
        let v: Vec<Protocol> = a.iter().collect();
        v.windows(2)
            .any(|w| w[0] == Protocol::P2p(relay) && w[1] == Protocol::P2pCircuit)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_knows_one_relay_learns_another_and_moves_there_when_it_dies() {
    let r1 = relay(vec![]).await;
    let r1_addr = r1.listen_addrs()[0].clone();
    let r2 = relay(vec![r1_addr.to_string()]).await;
    let (p1, p2) = (r1.peer_id(), r2.peer_id());

    // A: reachable only through relays, told about R1 only. B: a plain listener A connects to.
    let a = node(vec![], vec![r1_addr]);
    let b = node(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], vec![]);
    let mut b_events = b.events();

    let relays = wait_for("A to reserve on R1 and on the discovered R2", || async {
        let r = a.relays().await.unwrap();
        (state_of(&r, p1) == Some(RelayState::Reserved)
            && state_of(&r, p2) == Some(RelayState::Reserved))
        .then_some(r)
    })
    .await;
    let r2_info = relays.iter().find(|r| r.peer == p2).unwrap();
    assert!(!r2_info.configured, "R2 came from discovery: {relays:?}");
    assert!(
        r2_info
            .addrs
            .iter()
            .all(|x| x.iter().last() == Some(Protocol::P2p(p2)))
    );
    let addrs = a.listen_addrs().await.unwrap();
    assert!(
        circuit_via(&addrs, p1) && circuit_via(&addrs, p2),
        "{addrs:?}"
    );

    let b_addr = wait_for("B to listen", || async {
        b.listen_addrs().await.unwrap().into_iter().next()
    })
    .await;
    a.dial(b_addr.with(Protocol::P2p(b.peer_id())))
        .await
        .unwrap();
    wait_for("B to connect to A", || async {
        b.peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.peer == a.peer_id())
            .then_some(())
    })
    .await;

    r1.shutdown().await;
    wait_for("A to drop R1 and keep R2", || async {
        let r = a.relays().await.unwrap();
        (state_of(&r, p2) == Some(RelayState::Reserved)
            && state_of(&r, p1) != Some(RelayState::Reserved))
        .then_some(())
    })
    .await;
    let addrs = a.listen_addrs().await.unwrap();
    assert!(
        !circuit_via(&addrs, p1) && circuit_via(&addrs, p2),
        "{addrs:?}"
    );

    // B hears about it from A's identify push, without asking.
    let pushed = tokio::time::timeout(WAIT, async {
        loop {
            match b_events.next().await {
                Some(Event::Identified { peer, listen_addrs })
                    if peer == a.peer_id()
                        && !circuit_via(&listen_addrs, p1)
                        && circuit_via(&listen_addrs, p2) =>
                {
                    return listen_addrs;
                }
                Some(_) => {}
                None => panic!("B's event stream ended"),
            }
        }
    })
    .await
    .expect("B never heard A's new addresses");
    assert!(!pushed.is_empty());
    a.shutdown().await;
    b.shutdown().await;
    r2.shutdown().await;
}

fn relay_state(n: &Node, relay: &str) -> Option<String> {
    let r = n.cli(&["relays"]);
    r.as_array()
        .unwrap()
        .iter()
        .find(|x| x["peer"] == relay)
        .map(|x| x["state"].as_str().unwrap().to_owned())
}

fn peer_id(n: &Node) -> String {
    n.cli(&["whoami"])["peer_id"].as_str().unwrap().to_owned()
}

/// The acceptance test: killing one of two relays mid-run, nodes move to the other and delivery
/// continues.
#[test]
fn killing_one_of_two_relays_nodes_move_to_the_other_and_delivery_continues() {
    let mut r1 = TestRelay::start(None);
    let r2 = TestRelay::start_with(None, None, &["--peer", &r1.addr]);
    let (p1, p2) = (r1.peer_id(), r2.peer_id());
    let mut nodes: Vec<Node> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| Node::new(n))
        .collect();
    // Only R1 is configured: R2 must come from discovery.
    let args = ["--no-listen", "--relay", &r1.addr, "--no-hole-punching"];
    for n in &mut nodes {
        n.start(&args);
    }
    for n in &nodes {
        until(&format!("{} to reserve on R1 and R2", n.name), || {
            (relay_state(n, &p1).as_deref() == Some("reserved")
                && relay_state(n, &p2).as_deref() == Some("reserved"))
            .then_some(())
        });
    }
    let (a, rest) = nodes.split_first().unwrap();
    let (gid, code) = create_and_invite(a, "Failover Club", 2);
    for n in rest {
        let j = n.cli(&["guild", "join", &code]);
        assert_eq!(j["ready"], true, "{j}");
    }
    for n in &nodes {
        wait_keyed(n, &gid, 3);
    }
    for n in &nodes {
        n.send(&gid, "general", &format!("{} before", n.name));
    }
    for n in &nodes {
        until(&format!("{} to have the first 3 messages", n.name), || {
            (n.texts(&gid, "general").len() == 3).then_some(())
        });
    }

    // Which members are connected to which (the guild layer may connect joiners only through
    // the inviter): every one of these links must come back after the kill, through R2. The
    // reconnect may add links (members redial every member they can reach through a relay they
    // hold), so more links afterwards is fine; fewer is the failure.
    let ids: Vec<String> = nodes.iter().map(peer_id).collect();
    let links = |n: &Node, through_r1_ok: bool| -> Vec<String> {
        let peers = n.cli(&["peers"]);
        let mut v: Vec<String> = peers
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| ids.iter().any(|id| p["peer"] == id.as_str()))
            .filter(|p| {
                through_r1_ok
                    || p["addrs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(Value::as_str)
                        .all(|x| !x.contains(&p1))
            })
            .map(|p| p["peer"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let before: Vec<Vec<String>> = nodes.iter().map(|n| links(n, true)).collect();
    assert!(
        before.iter().all(|l| !l.is_empty()),
        "every member talks to someone: {before:?}"
    );

    r1.kill9();
    for n in &nodes {
        until(&format!("{} to hold R2 and not R1", n.name), || {
            (relay_state(n, &p2).as_deref() == Some("reserved")
                && relay_state(n, &p1).as_deref() != Some("reserved"))
            .then_some(())
        });
    }
    for (n, want) in nodes.iter().zip(&before) {
        let mut last = Vec::new();
        let ok = holds_within(|| {
            last = links(n, false);
            want.iter().all(|p| last.contains(p))
        });
        assert!(
            ok,
            "{} did not get back {want:?} via R2; links now {last:?}, peers: {}",
            n.name,
            n.cli(&["peers"])
        );
    }
    for n in &nodes {
        n.send(&gid, "general", &format!("{} after", n.name));
    }
    for n in &nodes {
        let got = until(&format!("{} to have all 6 messages", n.name), || {
            let t = n.texts(&gid, "general");
            (t.len() == 6).then_some(t)
        });
        for s in &nodes {
            let theirs: Vec<&str> = got
                .iter()
                .filter(|(nick, _)| *nick == s.name)
                .map(|(_, t)| t.as_str())
                .collect();
            assert_eq!(
                theirs,
                vec![format!("{} before", s.name), format!("{} after", s.name)],
                "{} sees {}'s messages",
                n.name,
                s.name
            );
        }
    }
    for n in &mut nodes {
        n.stop();
    }
}

/// A relay's `peers` entries must name the peer: without `/p2p/<id>` the relay could not put
/// it in its routing table, so the configuration is refused with a clear error.
#[test]
fn relay_peers_must_end_in_a_peer_id() {
    let id = Keypair::generate_ed25519().public().to_peer_id();
    let ok =
        RelayConfig::from_toml(&format!("peers = [\"/ip4/192.0.2.1/tcp/4001/p2p/{id}\"]")).unwrap();
    assert_eq!(ok.peer_addresses().unwrap()[0].0, id);
    let err = RelayConfig::from_toml("peers = [\"/ip4/192.0.2.1/tcp/4001\"]").unwrap_err();
    assert!(err.to_string().contains("/p2p/<peer id>"), "{err}");
    let many: Vec<String> = (0..=securecomm_rendezvous::config::MAX_PEERS)
        .map(|i| format!("\"/ip4/192.0.2.1/tcp/{}/p2p/{id}\"", 4000 + i))
        .collect();
    let err = RelayConfig::from_toml(&format!("peers = [{}]", many.join(","))).unwrap_err();
    assert!(err.to_string().contains("peers"), "{err}");
}
