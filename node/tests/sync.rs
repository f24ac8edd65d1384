//! Three real nodes on loopback sync a causal log through `SyncPeer`: one node is stopped, the
//! others keep writing, it writes while offline, restarts on the same database, reconnects to one
//! peer only, and every node ends with every entry exactly once, in causal order. Plus the gossip
//! outbox publishing once a subscriber appears.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::gossipsub::MessageAcceptance;
use libp2p::{Multiaddr, PeerId};
use securecomm_node::net::{self, Client, Event, EventLoop, NetConfig};
use securecomm_node::store::Db;
use securecomm_node::sync::{Delivery, Entry, EntryId, GroupId, SyncConfig, SyncPeer};
use securecomm_noise::keys::DeviceSigningKey;
use securecomm_noise::secret::Secret32;
use tokio::time::{sleep, timeout};

const G: GroupId = GroupId([0x42; 32]);

fn signer(seed: u8) -> DeviceSigningKey {
    DeviceSigningKey::from_seed(&[seed; 32])
}

fn peer_id(seed: u8) -> PeerId {
    net::device_keypair(&signer(seed))
        .unwrap()
        .public()
        .to_peer_id()
}

struct Node {
    client: Client,
    sync: SyncPeer,
}

fn config() -> SyncConfig {
    SyncConfig {
        anti_entropy: Duration::from_millis(700),
        retransmit: Duration::from_millis(400),
        outbox_poll: Duration::from_millis(100),
        delivery_buffer: 64,
    }
}

/// Starts a node on `dir`, collecting its deliveries into `log`.
fn start(seed: u8, dir: &Path, members: &[u8], log: Arc<Mutex<Vec<Delivery>>>) -> Node {
    let cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..NetConfig::default()
    };
    let (lp, client) = EventLoop::new(net::device_keypair(&signer(seed)).unwrap(), &cfg).unwrap();
    tokio::spawn(lp.run());
    let db = Db::open(&dir.join("node.db"), &Secret32::from_bytes([seed; 32])).unwrap();
    let (sync, mut rx) = SyncPeer::start(client.clone(), db, signer(seed), config(), None);
    sync.set_members(G, members.iter().map(|&s| peer_id(s)).collect())
        .unwrap();
    tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            log.lock().unwrap().push(d);
        }
    });
    Node { client, sync }
}

async fn listen_addr(c: &Client) -> Multiaddr {
    for _ in 0..100 {
        if let Some(a) = c.listen_addrs().await.unwrap().into_iter().next() {
            return a.with(libp2p::multiaddr::Protocol::P2p(c.peer_id()));
        }
        sleep(Duration::from_millis(20)).await;
    }
    panic!("no listen address");
}

fn assert_exactly_once_causal(name: &str, log: &[Delivery], expected: &HashSet<EntryId>) {
    let mut pos: HashMap<EntryId, usize> = HashMap::new();
    for (i, d) in log.iter().enumerate() {
        assert_eq!(d.group, G);
        assert!(
            pos.insert(d.entry.id(), i).is_none(),
            "{name}: {:?} delivered twice",
            d.entry.id()
        );
    }
    let got: HashSet<EntryId> = pos.keys().copied().collect();
    assert_eq!(&got, expected, "{name}: wrong set of entries");
    for (i, d) in log.iter().enumerate() {
        let e: &Entry = &d.entry;
        if e.seq() > 1 {
            let prev = EntryId {
                author: e.author(),
                seq: e.seq() - 1,
            };
            assert!(
                pos[&prev] < i,
                "{name}: {:?} before its predecessor",
                e.id()
            );
        }
        for dep in e.deps() {
            assert!(pos[dep] < i, "{name}: {:?} before its dependency", e.id());
        }
    }
}

async fn wait_for_total(nodes: &[&Node], total: u128) {
    let r = timeout(Duration::from_secs(60), async {
        loop {
            if nodes
                .iter()
                .all(|n| n.sync.frontier(G).unwrap().total() == total)
            {
                return;
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if r.is_err() {
        let totals: Vec<u128> = nodes
            .iter()
            .map(|n| n.sync.frontier(G).unwrap().total())
            .collect();
        panic!("not converged: totals {totals:?}, expected {total}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_restarted_all_entries_once_in_causal_order() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_owned()).collect();
    let logs: Vec<Arc<Mutex<Vec<Delivery>>>> = (0..3).map(|_| Arc::default()).collect();
    let members = [1u8, 2, 3];
    let a = start(1, &paths[0], &members, logs[0].clone());
    let b = start(2, &paths[1], &members, logs[1].clone());
    let c = start(3, &paths[2], &members, logs[2].clone());
    a.client.dial(listen_addr(&b.client).await).await.unwrap();
    a.client.dial(listen_addr(&c.client).await).await.unwrap();
    b.client.dial(listen_addr(&c.client).await).await.unwrap();

    let mut expected = HashSet::new();
    // Phase 1: everyone writes, interleaved, so entries depend on each other across authors.
    for round in 0..3 {
        for (i, n) in [&a, &b, &c].into_iter().enumerate() {
            let e = n
                .sync
                .insert(G, format!("p1 r{round} n{i}").into_bytes())
                .await
                .unwrap();
            expected.insert(e.id());
            sleep(Duration::from_millis(30)).await;
        }
    }
    wait_for_total(&[&a, &b, &c], 9).await;

    // Stop C (network and sync driver; its database closes with them).
    c.sync.stop();
    c.client.shutdown().await;
    drop(c);
    sleep(Duration::from_millis(300)).await;

    // Phase 2: A and B keep writing while C is down.
    for round in 0..4 {
        for (i, n) in [&a, &b].into_iter().enumerate() {
            let e = n
                .sync
                .insert(G, format!("p2 r{round} n{i}").into_bytes())
                .await
                .unwrap();
            expected.insert(e.id());
        }
    }
    wait_for_total(&[&a, &b], 17).await;

    // Restart C on the same database, write while still unconnected, then reconnect to A only:
    // B must get C's offline entries through A, and C everything it missed.
    let c = start(3, &paths[2], &members, logs[2].clone());
    assert_eq!(c.sync.frontier(G).unwrap().total(), 9, "C's log survived");
    for i in 0..2 {
        let e = c
            .sync
            .insert(G, format!("p3 offline {i}").into_bytes())
            .await
            .unwrap();
        expected.insert(e.id());
    }
    c.client.dial(listen_addr(&a.client).await).await.unwrap();
    wait_for_total(&[&a, &b, &c], 19).await;

    // Acknowledgements: A and B have everything C wrote (C learns it from pushes and pulls).
    let ack = timeout(Duration::from_secs(20), async {
        loop {
            if c.sync.acked(G, &peer_id(1)).unwrap() == 5 {
                return;
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ack.is_ok(), "A never acknowledged C's entries");

    sleep(Duration::from_millis(500)).await;
    for (name, log) in ["A", "B", "C"].iter().zip(&logs) {
        let log = log.lock().unwrap();
        assert_exactly_once_causal(name, &log, &expected);
    }
    for n in [&a, &b, &c] {
        n.sync.stop();
        n.client.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_publishes_once_a_peer_subscribes() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(11, dirs[0].path(), &[11, 12], Arc::default());
    let b = start(12, dirs[1].path(), &[11, 12], Arc::default());
    let mut b_events = b.client.events();
    a.client.subscribe("topic-o").await.unwrap();
    // Queued before any peer is connected, let alone subscribed: it must wait, not fail.
    a.sync.publish("topic-o", b"queued early").unwrap();
    sleep(Duration::from_millis(300)).await;
    assert_eq!(a.sync.outbox_len().unwrap(), 1);

    b.client.subscribe("topic-o").await.unwrap();
    a.client.dial(listen_addr(&b.client).await).await.unwrap();
    let got = timeout(Duration::from_secs(20), async {
        loop {
            if let Some(Event::Gossip {
                data, id, source, ..
            }) = b_events.next().await
            {
                b.client
                    .report_validation(id, source, MessageAcceptance::Accept)
                    .await
                    .unwrap();
                return data;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, b"queued early");
    let drained = timeout(Duration::from_secs(5), async {
        while a.sync.outbox_len().unwrap() != 0 {
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(drained.is_ok());
    for n in [&a, &b] {
        n.sync.stop();
        n.client.shutdown().await;
    }
}
