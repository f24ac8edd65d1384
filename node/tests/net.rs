//! Two real libp2p nodes on loopback: gossip with application validation, and the direct
//! request-response protocol.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use libp2p::gossipsub::MessageAcceptance;
use libp2p::identity::Keypair;
use securecomm_node::net::{Client, Event, EventLoop, NetConfig, PeerPath};
use tokio::time::{sleep, timeout};

fn spawn() -> Client {
    let cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..NetConfig::default()
    };
    let (lp, client) = EventLoop::new(Keypair::generate_ed25519(), &cfg).unwrap();
    tokio::spawn(lp.run());
    client
}

async fn listen_addr(c: &Client) -> libp2p::Multiaddr {
    for _ in 0..100 {
        if let Some(a) = c.listen_addrs().await.unwrap().into_iter().next() {
            return a.with(libp2p::multiaddr::Protocol::P2p(c.peer_id()));
        }
        sleep(Duration::from_millis(20)).await;
    }
    panic!("no listen address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_is_validated_and_direct_requests_answered() {
    let a = spawn();
    let b = spawn();
    let mut b_events = b.events();
    a.dial(listen_addr(&b).await).await.unwrap();
    a.subscribe("topic-x").await.unwrap();
    b.subscribe("topic-x").await.unwrap();

    // Publishing before the subscription reaches us fails; retry like the outbox will.
    let payload = b"opaque envelope bytes".to_vec();
    let published = timeout(Duration::from_secs(10), async {
        loop {
            if a.publish("topic-x", payload.clone()).await.is_ok() {
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(published.is_ok(), "publish never succeeded");

    let got = timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Event::Gossip {
                data, id, source, ..
            }) = b_events.next().await
            {
                b.report_validation(id, source, MessageAcceptance::Accept)
                    .await
                    .unwrap();
                return data;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, payload);

    let peers = a.peers().await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].path, PeerPath::Direct);

    // Direct request-response.
    let responder = b.clone();
    let mut ev = b.events();
    tokio::spawn(async move {
        while let Some(e) = ev.next().await {
            if let Event::DirectRequest { id, data, .. } = e {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&data);
                responder.respond(id, reply).await.unwrap();
            }
        }
    });
    let answer = timeout(
        Duration::from_secs(10),
        a.request(b.peer_id(), b"ping".to_vec()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(answer, b"echo:ping");

    // An unknown peer is a clear error, not a hang or a panic.
    let stranger = Keypair::generate_ed25519().public().to_peer_id();
    let err = timeout(Duration::from_secs(30), a.request(stranger, b"x".to_vec()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("failed"), "{err}");
    a.shutdown().await;
    b.shutdown().await;
}
