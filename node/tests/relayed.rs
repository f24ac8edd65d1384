//! Two nodes that share no reachable listen address talk through a real SecureComm relay, and
//! both see the path as relayed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use securecomm_node::net::{Client, Event, EventLoop, EventStream, NetConfig, PeerPath};
use securecomm_rendezvous::config::RelayConfig;
use securecomm_rendezvous::server::{Relay, RelayHandle, RelayOptions};
use tokio::time::timeout;

/// Starts a relay and two nodes: B reachable only through the relay, A listening nowhere, and A
/// connected to B through the relay circuit. Returns once a direct request has round-tripped.
async fn relayed_pair(hole_punching: bool) -> (RelayHandle, Client, Client, EventStream) {
    let cfg = RelayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        ..RelayConfig::default()
    };
    let relay = Relay::spawn(cfg, Keypair::generate_ed25519(), RelayOptions::default())
        .await
        .unwrap();
    let relay_addr = relay.listen_addrs()[0].clone();

    // B listens nowhere but on the relay; A listens nowhere at all.
    let b_cfg = NetConfig {
        listen: vec![],
        relays: vec![relay_addr.clone()],
        hole_punching,
        ..NetConfig::default()
    };
    let (b_loop, b) = EventLoop::new(Keypair::generate_ed25519(), &b_cfg).unwrap();
    let mut b_events = b.events();
    tokio::spawn(b_loop.run());
    timeout(Duration::from_secs(20), async {
        loop {
            if let Some(Event::RelayReserved(_)) = b_events.next().await {
                break;
            }
        }
    })
    .await
    .expect("B never got a reservation");

    let a_cfg = NetConfig {
        listen: vec![],
        hole_punching,
        ..NetConfig::default()
    };
    let (a_loop, a) = EventLoop::new(Keypair::generate_ed25519(), &a_cfg).unwrap();
    tokio::spawn(a_loop.run());
    let via_relay = relay_addr
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(b.peer_id()));
    a.dial(via_relay).await.unwrap();

    // A direct request over the relayed connection.
    let responder = b.clone();
    let mut b_requests = b.events();
    tokio::spawn(async move {
        while let Some(e) = b_requests.next().await {
            if let Event::DirectRequest { id, data, .. } = e {
                responder
                    .respond(id, [b"re:".as_slice(), &data].concat())
                    .await
                    .unwrap();
            }
        }
    });
    let answer = timeout(Duration::from_secs(20), async {
        loop {
            match a.request(b.peer_id(), b"hello over relay".to_vec()).await {
                Ok(r) => return r,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(answer, b"re:hello over relay");
    (relay, a, b, b_events)
}

/// With hole punching off (the situation of two peers behind NATs that cannot be punched), the
/// connection stays on the relay and both ends report it as relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_shared_addresses_talk_through_the_relay() {
    // Hole punching is exercised behind real NATs by netsim; here it is off so the path must stay
    // on the relay.
    let (relay, a, b, _) = relayed_pair(false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peers = a.peers().await.unwrap();
    let pb = peers
        .iter()
        .find(|p| p.peer == b.peer_id())
        .expect("B not among A's peers");
    assert_eq!(pb.path, PeerPath::Relayed, "{peers:?}");
    let pa = b.peers().await.unwrap();
    assert_eq!(
        pa.iter().find(|p| p.peer == a.peer_id()).unwrap().path,
        PeerPath::Relayed
    );
    relay.shutdown().await;
}
