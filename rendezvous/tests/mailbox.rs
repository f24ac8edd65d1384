//! The mailbox and prekey directory end to end: a real relay started through the library on
//! 127.0.0.1 (TCP, Noise, Yamux) with its SQLite database in a temporary data directory, and
//! real libp2p client swarms speaking `/securecomm/mailbox/1.0.0` with the library's codec (and
//! a raw-bytes codec on the same protocol for malformed input).

// Test helpers outside `#[test]` functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder,
    identity::{Keypair, ed25519},
    noise,
    request_response::{self, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};
use securecomm_rendezvous::{
    Relay, RelayConfig, RelayHandle, RelayOptions,
    config::MailboxLimits,
    mailbox::{
        AuthFailure, Deposit, ItemState, MailboxCodec, MailboxOptions, PROTOCOL, PickupAuth, Quota,
        Refusal, Request, Response, Tag, codec::frame, service::unix_now, store::DB_FILE, tag_for,
    },
};

const STEP: Duration = Duration::from_secs(20);
static NEXT: AtomicU32 = AtomicU32::new(0);

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "securecomm-mailbox-test-{}-{}-{tag}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(mailbox: MailboxLimits) -> RelayConfig {
    RelayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        mailbox,
        ..RelayConfig::default()
    }
}

fn small_limits() -> MailboxLimits {
    MailboxLimits {
        max_item_bytes: 1024,
        max_bytes_per_recipient: 2048,
        max_bytes_per_sender: 64 << 10,
        max_total_bytes: 1 << 20,
        ..MailboxLimits::default()
    }
}

async fn spawn(
    cfg: RelayConfig,
    key: Keypair,
    dir: &Path,
    mailbox: MailboxOptions,
    metrics: bool,
) -> RelayHandle {
    Relay::spawn(
        cfg,
        key,
        RelayOptions {
            data_dir: Some(dir.to_path_buf()),
            mailbox,
            metrics: metrics.then(|| "127.0.0.1:0".parse().unwrap()),
            ..RelayOptions::default()
        },
    )
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The client

/// Sends raw bytes on the mailbox protocol (for malformed and oversized input).
#[derive(Clone, Default)]
struct Raw;

impl request_response::Codec for Raw {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        if v.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(v)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        io.write_all(&res).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct ClientBehaviour {
    mailbox: request_response::Behaviour<MailboxCodec>,
    raw: request_response::Behaviour<Raw>,
}

struct Client {
    swarm: Swarm<ClientBehaviour>,
    relay: PeerId,
}

impl Client {
    fn new(relay: &RelayHandle) -> Self {
        Self::with_key(relay, Keypair::generate_ed25519())
    }

    fn with_key(relay: &RelayHandle, key: Keypair) -> Self {
        let mut swarm = SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| ClientBehaviour {
                mailbox: request_response::Behaviour::with_codec(
                    MailboxCodec::default(),
                    [(PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default(),
                ),
                raw: request_response::Behaviour::with_codec(
                    Raw,
                    [(PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default(),
                ),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
            .build();
        Self::point_at(&mut swarm, relay);
        Self {
            swarm,
            relay: relay.peer_id(),
        }
    }

    fn point_at(swarm: &mut Swarm<ClientBehaviour>, relay: &RelayHandle) {
        for a in relay.listen_addrs() {
            let a: Multiaddr = a
                .iter()
                .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                .collect();
            swarm.add_peer_address(relay.peer_id(), a);
        }
    }

    fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    async fn call(&mut self, request: Request) -> Response {
        let id = self
            .swarm
            .behaviour_mut()
            .mailbox
            .send_request(&self.relay, request);
        let fut = async {
            loop {
                match self.swarm.select_next_some().await {
                    SwarmEvent::Behaviour(ClientBehaviourEvent::Mailbox(
                        request_response::Event::Message {
                            message:
                                request_response::Message::Response {
                                    request_id,
                                    response,
                                },
                            ..
                        },
                    )) if request_id == id => return response,
                    SwarmEvent::Behaviour(ClientBehaviourEvent::Mailbox(
                        request_response::Event::OutboundFailure {
                            request_id, error, ..
                        },
                    )) if request_id == id => panic!("mailbox request failed: {error}"),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(STEP, fut)
            .await
            .expect("no mailbox answer in time")
    }

    /// Sends raw bytes; `Err` when the relay closed the stream without an answer.
    async fn raw(&mut self, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        let id = self
            .swarm
            .behaviour_mut()
            .raw
            .send_request(&self.relay, bytes);
        let fut = async {
            loop {
                match self.swarm.select_next_some().await {
                    SwarmEvent::Behaviour(ClientBehaviourEvent::Raw(
                        request_response::Event::Message {
                            message:
                                request_response::Message::Response {
                                    request_id,
                                    response,
                                },
                            ..
                        },
                    )) if request_id == id => return Ok(response),
                    SwarmEvent::Behaviour(ClientBehaviourEvent::Raw(
                        request_response::Event::OutboundFailure {
                            request_id, error, ..
                        },
                    )) if request_id == id => return Err(error.to_string()),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(STEP, fut)
            .await
            .expect("no raw answer in time")
    }

    async fn deposit(&mut self, tags: &[Tag], blob: Vec<u8>) -> Response {
        self.call(Request::Deposit(
            Deposit::new(tags.iter().copied(), blob).unwrap(),
        ))
        .await
    }

    async fn stored(&mut self, tags: &[Tag], blob: Vec<u8>) -> u64 {
        match self.deposit(tags, blob).await {
            Response::Stored { id, .. } => id,
            other => panic!("expected Stored, got {other:?}"),
        }
    }

    async fn pickup_with(&mut self, auth: PickupAuth) -> Response {
        self.call(Request::Pickup {
            auth,
            after: 0,
            max_items: 100,
            max_bytes: 1 << 20,
        })
        .await
    }

    async fn pickup(&mut self, key: &ed25519::Keypair) -> Vec<(u64, Vec<u8>)> {
        let auth = PickupAuth::sign(key, &self.relay, unix_now());
        match self.pickup_with(auth).await {
            Response::Page { items, more } => {
                assert!(!more);
                items.into_iter().map(|i| (i.id, i.blob)).collect()
            }
            other => panic!("expected a page, got {other:?}"),
        }
    }

    async fn ack(&mut self, key: &ed25519::Keypair, ids: Vec<u64>) -> Response {
        let auth = PickupAuth::sign(key, &self.relay, unix_now());
        self.call(Request::Ack { auth, ids }).await
    }

    async fn status(&mut self, ids: Vec<u64>) -> Vec<ItemState> {
        match self.call(Request::Status { ids }).await {
            Response::Status { entries } => entries.into_iter().map(|(_, s)| s).collect(),
            other => panic!("expected status, got {other:?}"),
        }
    }
}

fn mailbox_key() -> ed25519::Keypair {
    ed25519::Keypair::generate()
}

fn tag(key: &ed25519::Keypair) -> Tag {
    tag_for(&key.public().to_bytes())
}

/// A blob with a random marker, so its bytes can be searched for in files.
fn blob(len: usize) -> Vec<u8> {
    let mut b: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    let marker = ed25519::Keypair::generate().public().to_bytes();
    b[..32].copy_from_slice(&marker);
    b
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Deposit once for two recipients; each picks up with its own key; wrong keys, replays and
/// stale proofs are refused; acks delete claims and the blob goes when both acked; the sender
/// follows delivery with status; the database holds exactly the deposited bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposit_pickup_ack_for_two_recipients() {
    let dir = temp_dir("lifecycle");
    let relay = spawn(
        config(MailboxLimits::default()),
        Keypair::generate_ed25519(),
        &dir,
        MailboxOptions::default(),
        true,
    )
    .await;
    let (a, b) = (mailbox_key(), mailbox_key());
    let mut sender = Client::new(&relay);
    let shared = blob(3000);
    let only_a = blob(500);
    let id1 = sender.stored(&[tag(&a), tag(&b)], shared.clone()).await;
    let id2 = sender.stored(&[tag(&a)], only_a.clone()).await;
    assert!(id2 > id1);

    // The database holds the blobs exactly as deposited, the sender's peer id and the tags.
    let db = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>, i64)> = db
        .prepare("SELECT blob, sender, size FROM items ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let sender_id = sender.peer_id().to_bytes();
    assert_eq!(
        rows,
        vec![
            (shared.clone(), sender_id.clone(), 3000),
            (only_a.clone(), sender_id, 500)
        ]
    );
    let mut tags: Vec<Vec<u8>> = db
        .prepare("SELECT tag FROM claims")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tags.sort();
    let mut want = vec![tag(&a).to_vec(), tag(&a).to_vec(), tag(&b).to_vec()];
    want.sort();
    assert_eq!(tags, want);
    let file = std::fs::read(dir.join(DB_FILE)).unwrap();
    assert!(contains(&file, &shared[..64]));

    // Each recipient sees its items, oldest first; pickup deletes nothing.
    let mut ra = Client::new(&relay);
    let mut rb = Client::new(&relay);
    assert_eq!(
        ra.pickup(&a).await,
        vec![(id1, shared.clone()), (id2, only_a.clone())]
    );
    assert_eq!(ra.pickup(&a).await.len(), 2);
    assert_eq!(rb.pickup(&b).await, vec![(id1, shared.clone())]);

    // A proof made with another key for a's mailbox key: refused.
    let mut forged = PickupAuth::sign(&b, &relay.peer_id(), unix_now());
    forged.mailbox_key = a.public().to_bytes();
    assert_eq!(
        rb.pickup_with(forged).await,
        Response::Refused(Refusal::Unauthorized(AuthFailure::BadSignature))
    );
    // A proof for another relay: refused.
    let elsewhere = PickupAuth::sign(&a, &PeerId::random(), unix_now());
    assert_eq!(
        rb.pickup_with(elsewhere).await,
        Response::Refused(Refusal::Unauthorized(AuthFailure::BadSignature))
    );
    // The same proof twice (even from another connection): the second is a replay.
    let once = PickupAuth::sign(&a, &relay.peer_id(), unix_now());
    assert!(matches!(
        ra.pickup_with(once.clone()).await,
        Response::Page { .. }
    ));
    assert_eq!(
        rb.pickup_with(once).await,
        Response::Refused(Refusal::Unauthorized(AuthFailure::Replayed))
    );
    // Stale and future timestamps.
    for skew in [-1000i64, 1000] {
        let stale = PickupAuth::sign(&a, &relay.peer_id(), unix_now().saturating_add_signed(skew));
        assert!(matches!(
            ra.pickup_with(stale).await,
            Response::Refused(Refusal::ClockSkew { .. })
        ));
    }

    assert_eq!(
        sender.status(vec![id1, id2, 9999]).await,
        vec![
            ItemState::Remaining(2),
            ItemState::Remaining(1),
            ItemState::Unknown
        ]
    );
    // Another peer cannot ask about the sender's items.
    assert_eq!(ra.status(vec![id1]).await, vec![ItemState::Unknown]);

    // b acks the shared item; a still has both; b's mailbox is empty.
    assert_eq!(rb.ack(&b, vec![id1]).await, Response::Acked { removed: 1 });
    assert_eq!(rb.ack(&b, vec![id1]).await, Response::Acked { removed: 0 });
    assert!(rb.pickup(&b).await.is_empty());
    assert_eq!(ra.pickup(&a).await.len(), 2);
    assert_eq!(
        sender.status(vec![id1]).await,
        vec![ItemState::Remaining(1)]
    );
    // b cannot ack a's claim on id2 away.
    assert_eq!(rb.ack(&b, vec![id2]).await, Response::Acked { removed: 0 });

    // a acks both: the blobs are gone from the database and from the file.
    assert_eq!(
        ra.ack(&a, vec![id1, id2]).await,
        Response::Acked { removed: 2 }
    );
    assert!(ra.pickup(&a).await.is_empty());
    assert_eq!(
        sender.status(vec![id1, id2]).await,
        vec![ItemState::Remaining(0), ItemState::Remaining(0)]
    );
    let left: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM items WHERE blob IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
    let claims: i64 = db
        .query_row("SELECT COUNT(*) FROM claims", [], |r| r.get(0))
        .unwrap();
    assert_eq!(claims, 0);
    drop(db);
    let file = std::fs::read(dir.join(DB_FILE)).unwrap();
    assert!(
        !contains(&file, &shared[..32]),
        "deleted blob still in the file"
    );
    assert!(
        !contains(&file, &only_a[..32]),
        "deleted blob still in the file"
    );

    // Metrics count, without tags.
    let text = scrape(relay.metrics_addr().unwrap());
    assert!(
        text.contains("securecomm_mailbox_deposits_total 2"),
        "{text}"
    );
    assert!(
        text.contains("securecomm_mailbox_claims_acked_total 3"),
        "{text}"
    );
    assert!(text.contains("reason=\"replayed\""), "{text}");
    assert!(text.contains("securecomm_mailbox_bytes_stored 0"), "{text}");
    let hex_a: String = tag(&a).iter().map(|b| format!("{b:02x}")).collect();
    assert!(!text.contains(&hex_a[..16]));

    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A full recipient mailbox refuses with which quota and a retry hint; after the recipient
/// acks, the same deposit succeeds. Oversized items are refused as too large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_refusal_is_explicit_and_clears_after_ack() {
    let dir = temp_dir("quota");
    let relay = spawn(
        config(small_limits()),
        Keypair::generate_ed25519(),
        &dir,
        MailboxOptions::default(),
        false,
    )
    .await;
    let a = mailbox_key();
    let mut sender = Client::new(&relay);
    let first = sender.stored(&[tag(&a)], blob(1024)).await;
    sender.stored(&[tag(&a)], blob(1024)).await;
    match sender
        .deposit(&[tag(&mailbox_key()), tag(&a)], blob(100))
        .await
    {
        Response::Refused(Refusal::QuotaExceeded {
            which: Quota::Recipient(t),
            retry_after_secs,
        }) => {
            assert_eq!(t, tag(&a));
            assert!(retry_after_secs > 0 && retry_after_secs <= small_limits().ttl_secs);
        }
        other => panic!("expected a recipient quota refusal, got {other:?}"),
    }
    assert_eq!(
        sender.deposit(&[tag(&mailbox_key())], blob(1025)).await,
        Response::Refused(Refusal::TooLarge { max: 1024 })
    );
    let mut ra = Client::new(&relay);
    assert_eq!(ra.pickup(&a).await.len(), 2);
    assert_eq!(
        ra.ack(&a, vec![first]).await,
        Response::Acked { removed: 1 }
    );
    assert!(matches!(
        sender.deposit(&[tag(&a)], blob(100)).await,
        Response::Stored { .. }
    ));
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a one-second TTL (library option; the TOML minimum is 60 s) items disappear: pickup no
/// longer returns them and the sender sees them expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_items_disappear() {
    let dir = temp_dir("ttl");
    let relay = spawn(
        config(small_limits()),
        Keypair::generate_ed25519(),
        &dir,
        MailboxOptions {
            ttl_override: Some(Duration::from_secs(1)),
            sweep_interval: Duration::from_millis(200),
        },
        false,
    )
    .await;
    let a = mailbox_key();
    let mut sender = Client::new(&relay);
    let id = sender.stored(&[tag(&a)], blob(100)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut ra = Client::new(&relay);
    assert!(ra.pickup(&a).await.is_empty());
    assert_eq!(sender.status(vec![id]).await, vec![ItemState::Expired(1)]);
    // The sweep removed the blob from the database, and the quota is free again.
    let db = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    let blobs: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM items WHERE blob IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(blobs, 0);
    for _ in 0..2 {
        sender.stored(&[tag(&a)], blob(1024)).await;
    }
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Undelivered items (and prekey bundles) survive a relay restart with the same data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_items_survive_restart() {
    let dir = temp_dir("restart");
    let key = Keypair::generate_ed25519();
    let relay = spawn(
        config(small_limits()),
        key.clone(),
        &dir,
        MailboxOptions::default(),
        false,
    )
    .await;
    let a = mailbox_key();
    let data = blob(700);
    let mut sender = Client::new(&relay);
    let id = sender.stored(&[tag(&a)], data.clone()).await;
    let me = sender.peer_id();
    assert!(matches!(
        sender
            .call(Request::PublishPrekeys {
                peer: me,
                published_at: unix_now(),
                bundle: b"bundle".to_vec(),
            })
            .await,
        Response::PrekeysPublished { .. }
    ));
    relay.shutdown().await;

    let relay = spawn(
        config(small_limits()),
        key,
        &dir,
        MailboxOptions::default(),
        false,
    )
    .await;
    let mut ra = Client::new(&relay);
    assert_eq!(ra.pickup(&a).await, vec![(id, data)]);
    assert!(matches!(
        ra.call(Request::FetchPrekeys { peer: me }).await,
        Response::Prekeys { bundle, .. } if bundle == b"bundle"
    ));
    // Quotas were rebuilt from the database: one more 1 KiB item would overflow 2 KiB.
    sender = Client::new(&relay);
    sender.stored(&[tag(&a)], blob(1024)).await;
    assert!(matches!(
        sender.deposit(&[tag(&a)], blob(1024)).await,
        Response::Refused(Refusal::QuotaExceeded { .. })
    ));
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Garbage, truncated, unknown-version and oversized frames get no answer (the stream is
/// dropped) and the relay keeps serving the same client afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_requests_fail_and_relay_stays_up() {
    let dir = temp_dir("garbage");
    let relay = spawn(
        config(small_limits()),
        Keypair::generate_ed25519(),
        &dir,
        MailboxOptions::default(),
        true,
    )
    .await;
    let mut c = Client::new(&relay);
    let good = frame(&Request::Status { ids: vec![1] });
    // The raw client speaks the real framing: a valid frame gets a valid answer.
    let answer = c.raw(good.clone()).await.unwrap();
    assert_eq!(
        answer,
        frame(&Response::Status {
            entries: vec![(1, ItemState::Unknown)]
        })
    );
    let mut bad_version = good.clone();
    bad_version[4] = 2;
    let mut trailing = good.clone();
    trailing[3] += 1;
    trailing.push(0);
    let mut oversized = (200u32 << 20).to_be_bytes().to_vec();
    oversized.extend_from_slice(&[1; 1000]);
    // A deposit just over the relay's frame bound (1 KiB items plus overhead).
    let big = frame(&Request::Deposit(
        Deposit::new([[1; 32]], vec![0; 16 << 10]).unwrap(),
    ));
    for bytes in [
        vec![],
        vec![0xFF; 3],
        b"\x00\x00\x00\x05hello".to_vec(),
        good[..good.len() - 1].to_vec(),
        bad_version,
        trailing,
        oversized,
        big,
    ] {
        assert!(c.raw(bytes).await.is_err());
    }
    assert_eq!(c.status(vec![1]).await, vec![ItemState::Unknown]);
    let text = scrape(relay.metrics_addr().unwrap());
    assert!(text.contains("reason=\"malformed\""), "{text}");
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prekey bundles: a device publishes, anyone fetches, the device replaces it with a newer
/// one, an older one is refused, and nobody can publish under another device's peer id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prekeys_publish_fetch_replace_and_owner_only() {
    let dir = temp_dir("prekeys");
    let relay = spawn(
        config(small_limits()),
        Keypair::generate_ed25519(),
        &dir,
        MailboxOptions::default(),
        false,
    )
    .await;
    let mut dev = Client::new(&relay);
    let mut other = Client::new(&relay);
    let me = dev.peer_id();
    let now = unix_now();
    let publish = |peer, at, bundle: &[u8]| Request::PublishPrekeys {
        peer,
        published_at: at,
        bundle: bundle.to_vec(),
    };
    assert_eq!(
        other.call(Request::FetchPrekeys { peer: me }).await,
        Response::PrekeysNotFound
    );
    assert!(matches!(
        dev.call(publish(me, now - 10, b"first")).await,
        Response::PrekeysPublished { .. }
    ));
    assert_eq!(
        other.call(Request::FetchPrekeys { peer: me }).await,
        Response::Prekeys {
            published_at: now - 10,
            bundle: b"first".to_vec()
        }
    );
    // Another peer cannot replace it, even with a newer timestamp.
    assert_eq!(
        other.call(publish(me, now, b"forged")).await,
        Response::Refused(Refusal::Forbidden)
    );
    assert_eq!(
        dev.call(publish(me, now - 20, b"older")).await,
        Response::Refused(Refusal::Outdated {
            current_published_at: now - 10
        })
    );
    assert!(matches!(
        dev.call(publish(me, now, b"second")).await,
        Response::PrekeysPublished { .. }
    ));
    assert_eq!(
        other.call(Request::FetchPrekeys { peer: me }).await,
        Response::Prekeys {
            published_at: now,
            bundle: b"second".to_vec()
        }
    );
    // Oversized bundles do not decode: the relay drops the stream.
    let huge = frame(&Request::PublishPrekeys {
        peer: me,
        published_at: now + 1,
        bundle: vec![1; 4097],
    });
    assert!(dev.raw(huge).await.is_err());
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `[mailbox] enabled = false` the protocol is not served at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_mailbox_is_not_served() {
    let dir = temp_dir("disabled");
    let relay = spawn(
        config(MailboxLimits {
            enabled: false,
            ..small_limits()
        }),
        Keypair::generate_ed25519(),
        &dir,
        MailboxOptions::default(),
        false,
    )
    .await;
    let mut c = Client::new(&relay);
    let err = c
        .raw(frame(&Request::Status { ids: vec![] }))
        .await
        .unwrap_err();
    assert!(
        err.contains("supports none of the requested protocols"),
        "{err}"
    );
    assert!(!dir.join(DB_FILE).exists());
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Throughput over loopback (run with `--ignored --nocapture`): 500 deposits of 1 KiB, then
/// pickup in pages and one ack per page, against the on-disk database (`synchronous = FULL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, prints timings"]
async fn throughput_500_items() {
    let dir = temp_dir("throughput");
    let relay = spawn(
        config(MailboxLimits::default()),
        Keypair::generate_ed25519(),
        &dir,
        MailboxOptions::default(),
        false,
    )
    .await;
    let a = mailbox_key();
    let mut sender = Client::new(&relay);
    sender.stored(&[tag(&a)], blob(1024)).await;
    let start = std::time::Instant::now();
    for _ in 0..499 {
        sender.stored(&[tag(&a)], blob(1024)).await;
    }
    let deposit = start.elapsed();
    let mut r = Client::new(&relay);
    let start = std::time::Instant::now();
    let (mut after, mut got) = (0, 0);
    loop {
        let auth = PickupAuth::sign(&a, &relay.peer_id(), unix_now());
        let Response::Page { items, more } = r
            .call(Request::Pickup {
                auth,
                after,
                max_items: 256,
                max_bytes: 1 << 20,
            })
            .await
        else {
            panic!()
        };
        got += items.len();
        after = items.last().unwrap().id;
        let ids = items.iter().map(|i| i.id).collect::<Vec<_>>();
        assert!(matches!(r.ack(&a, ids).await, Response::Acked { .. }));
        if !more {
            break;
        }
    }
    let pickup = start.elapsed();
    assert_eq!(got, 500);
    println!(
        "499 sequential deposits: {:?} ({:.2} ms each); pickup+ack of 500 in pages: {:?}",
        deposit,
        deposit.as_secs_f64() * 1000.0 / 499.0,
        pickup
    );
    relay.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
