//! Bad gossip: a raw libp2p gossipsub peer (not a SecureComm node, no keys) subscribes to a
//! guild's topic and publishes malformed, oversized, tampered, replayed and gossip-signed
//! messages to a member. Each is dropped (nothing stored, nothing forwarded to the other
//! member), the peer's gossipsub score at the member goes negative, and both members keep
//! working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{guild_of, start, start_with, until, until_async};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, noise, tcp, yamux};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Every publication gets a fresh id at the raw peer, so it never refuses to re-publish bytes
/// it has seen (the member computes its own, content-based ids).
fn unique_id(_: &gossipsub::Message) -> gossipsub::MessageId {
    gossipsub::MessageId::from(
        NEXT_ID
            .fetch_add(1, Ordering::Relaxed)
            .to_be_bytes()
            .to_vec(),
    )
}

enum Cmd {
    Publish(Vec<u8>, oneshot::Sender<Result<(), String>>),
}

struct Raw {
    id: PeerId,
    cmds: mpsc::Sender<Cmd>,
    got: mpsc::Receiver<Vec<u8>>,
}

impl Raw {
    async fn publish(&self, data: Vec<u8>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Publish(data, tx)).await.unwrap();
        rx.await.unwrap()
    }

    /// Publishes, retrying while the member's subscription has not reached us yet.
    async fn publish_when_ready(&self, data: Vec<u8>) {
        until_async("the raw peer to be able to publish", 30, || {
            let d = data.clone();
            async move { self.publish(d).await.ok() }
        })
        .await;
    }
}

/// A bare gossipsub swarm dialled to `target`, subscribed to `topic`.
fn raw_peer(target: Multiaddr, topic: &str, signed: bool) -> Raw {
    let key = Keypair::generate_ed25519();
    let id = key.public().to_peer_id();
    let auth = if signed {
        MessageAuthenticity::Signed(key.clone())
    } else {
        MessageAuthenticity::Anonymous
    };
    let cfg = gossipsub::ConfigBuilder::default()
        .validation_mode(if signed {
            ValidationMode::Strict
        } else {
            ValidationMode::None
        })
        .message_id_fn(unique_id)
        .max_transmit_size(1 << 20)
        .heartbeat_interval(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut swarm: Swarm<gossipsub::Behaviour> = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| gossipsub::Behaviour::new(auth, cfg).unwrap())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    let topic = IdentTopic::new(topic);
    swarm.behaviour_mut().subscribe(&topic).unwrap();
    swarm.dial(target).unwrap();
    let (ctx, mut crx) = mpsc::channel::<Cmd>(16);
    let (gtx, grx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) = ev {
                        let _ = gtx.try_send(message.data);
                    }
                }
                cmd = crx.recv() => match cmd {
                    None => return,
                    Some(Cmd::Publish(d, tx)) => {
                        let r = swarm
                            .behaviour_mut()
                            .publish(topic.clone(), d)
                            .map(|_| ())
                            .map_err(|e| e.to_string());
                        let _ = tx.send(r);
                    }
                },
            }
        }
    });
    Raw {
        id,
        cmds: ctx,
        got: grx,
    }
}

fn rejected(n: &common::TestNode) -> u64 {
    n.guilds.list_guilds().unwrap()[0]["rejected"]
        .as_u64()
        .unwrap()
}

async fn score_of(n: &common::TestNode, peer: PeerId) -> Option<f64> {
    n.net
        .peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.peer == peer)
        .and_then(|p| p.gossip_score)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gossip_is_dropped_and_its_sender_penalised() {
    // A forgets message ids after a second, so a replay reaches its application.
    let a = start_with("alice", |c| {
        c.gossip_duplicate_cache = Duration::from_secs(1)
    })
    .await;
    let b = start("bob").await;
    let gid = guild_of("Gossip Lab", &a, &[&b]).await;
    let topic = a.guilds.topic(&gid).unwrap();

    let mut raw = raw_peer(a.addr().await, &topic, false);
    until_async("A to see the raw peer on the topic", 30, || async {
        (a.net.topic_peers(&topic).await.unwrap() >= 2).then_some(())
    })
    .await;

    // A valid message from B reaches A, and A forwards it to the raw peer, which keeps a copy.
    b.send(&gid, "hello from bob").await;
    let captured = timeout(Duration::from_secs(30), raw.got.recv())
        .await
        .expect("the raw peer never got B's message")
        .unwrap();
    until("A to store B's message", 30, || {
        (a.texts(&gid).len() == 1).then_some(())
    })
    .await;
    assert!(score_of(&a, raw.id).await.unwrap_or(0.0) >= 0.0);

    // 1. Malformed: not an envelope (unknown version byte).
    raw.publish_when_ready(b"\xff this is not an envelope".repeat(8))
        .await;
    // 2. Oversized for a guild message (under gossipsub's own frame limit).
    raw.publish(vec![0x42; 63 * 1024]).await.unwrap();
    // 3. Forged: B's envelope moved to the next ratchet position (the clear generation field),
    //    so it claims a key nobody used yet; the AEAD and the signature inside do not verify.
    let mut forged = captured.clone();
    let g = 1 + 8 + 16;
    let next = u32::from_be_bytes(forged[g..g + 4].try_into().unwrap()) + 1;
    forged[g..g + 4].copy_from_slice(&next.to_be_bytes());
    raw.publish(forged).await.unwrap();
    let score = until_async("the raw peer's score at A to go negative", 30, || async {
        score_of(&a, raw.id).await.filter(|s| *s < -50.0)
    })
    .await;
    eprintln!("raw peer's gossipsub score at A after three bad messages: {score:.1}");
    until("A to count three rejected messages", 30, || {
        (rejected(&a) == 3).then_some(())
    })
    .await;

    // 4. Replayed: B's envelope again, after A's duplicate cache forgot its id, so A's
    //    application sees it and its ratchet refuses the used key. (Gossipsub does not score a
    //    rejection of an id it once validated, so this one shows in A's count, not the score.)
    sleep(Duration::from_millis(2500)).await;
    raw.publish(captured.clone()).await.unwrap();
    until("A to reject the replay", 30, || {
        (rejected(&a) == 4).then_some(())
    })
    .await;

    // 5. Signed at the gossip layer: guild topics carry no author signatures, so gossipsub at
    //    A refuses such messages outright, and penalises the peer too.
    let signed = raw_peer(a.addr().await, &topic, true);
    signed
        .publish_when_ready(b"signed by a gossip author".to_vec())
        .await;
    let s2 = until_async(
        "the signing peer's score at A to go negative",
        30,
        || async { score_of(&a, signed.id).await.filter(|s| *s < 0.0) },
    )
    .await;
    eprintln!("signing peer's score at A: {s2:.1}");

    // 6. Over gossipsub's frame limit: dropped by A's codec.
    let _ = raw.publish(vec![0x17; 200 * 1024]).await;

    // Nothing of it was stored or forwarded to B; A and B keep working in both directions.
    b.send(&gid, "still here, says bob").await;
    a.send(&gid, "still here, says alice").await;
    for n in [&a, &b] {
        let t = until("both members to have the three real messages", 30, || {
            let t = n.texts(&gid);
            (t.len() == 3).then_some(t)
        })
        .await;
        let texts: Vec<&str> = t.iter().map(|x| x.1.as_str()).collect();
        assert!(texts.contains(&"hello from bob"), "{texts:?}");
        assert!(texts.contains(&"still here, says bob"), "{texts:?}");
        assert!(texts.contains(&"still here, says alice"), "{texts:?}");
    }
    sleep(Duration::from_millis(500)).await;
    assert_eq!(a.texts(&gid).len(), 3, "a bad message was stored at A");
    assert_eq!(b.texts(&gid).len(), 3, "a bad message was forwarded to B");
    // B never heard from the raw peers.
    assert!(score_of(&b, raw.id).await.is_none());
    a.guilds.stop();
    b.guilds.stop();
}
