//! The UDP media relay end to end: a real relay started through the library on 127.0.0.1
//! (TCP, Noise, Yamux, its media socket on 127.0.0.1 port 0), real libp2p client swarms that
//! allocate with `/securecomm/media/1.0.0` and the library's codec, and plain UDP sockets that
//! speak the packet format from `securecomm_rendezvous::media::wire`.

// Test helpers outside `#[test]` functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder,
    identity::Keypair,
    multiaddr::Protocol,
    noise,
    request_response::{self, ProtocolSupport},
    swarm::SwarmEvent,
    tcp, yamux,
};
use securecomm_rendezvous::{
    Relay, RelayConfig, RelayHandle, RelayOptions,
    config::MediaLimits,
    media::{
        FANOUT, MEDIA_PROTOCOL, MediaCodec, MediaRequest, MediaResponse, RelayPacket, RoomId,
        Token, encode_bind, encode_send, parse_relay_packet, wire::SEND_HEADER,
    },
};

const STEP: Duration = Duration::from_secs(20);
/// How long a socket waits for a packet that should arrive.
const ARRIVE: Duration = Duration::from_secs(3);
/// How long a socket listens for a packet that should not arrive.
const QUIET: Duration = Duration::from_millis(300);

async fn relay(media: MediaLimits) -> RelayHandle {
    let cfg = RelayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        media,
        ..RelayConfig::default()
    };
    Relay::spawn(
        cfg,
        Keypair::generate_ed25519(),
        RelayOptions {
            metrics: Some("127.0.0.1:0".parse().unwrap()),
            ..RelayOptions::default()
        },
    )
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The allocation client (libp2p)

struct Client {
    swarm: Swarm<request_response::Behaviour<MediaCodec>>,
    relay: PeerId,
}

impl Client {
    fn new(relay: &RelayHandle) -> Self {
        let mut swarm = SwarmBuilder::with_existing_identity(Keypair::generate_ed25519())
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    MediaCodec::default(),
                    [(MEDIA_PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default(),
                )
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
            .build();
        for a in relay.listen_addrs() {
            let a: Multiaddr = a
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            swarm.add_peer_address(relay.peer_id(), a);
        }
        Self {
            swarm,
            relay: relay.peer_id(),
        }
    }

    /// The answer, or `Err` when the request failed (e.g. the protocol is not served).
    async fn try_call(&mut self, request: MediaRequest) -> Result<MediaResponse, String> {
        let id = self
            .swarm
            .behaviour_mut()
            .send_request(&self.relay, request);
        let fut = async {
            loop {
                match self.swarm.select_next_some().await {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message:
                            request_response::Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    }) if request_id == id => return Ok(response),
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        request_id,
                        error,
                        ..
                    }) if request_id == id => return Err(error.to_string()),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(STEP, fut)
            .await
            .expect("no media answer in time")
    }

    async fn call(&mut self, request: MediaRequest) -> MediaResponse {
        self.try_call(request).await.unwrap()
    }

    async fn allocate(&mut self, room: RoomId) -> Alloc {
        match self.call(MediaRequest::Allocate { room }).await {
            MediaResponse::Allocated {
                token,
                alloc_id,
                udp_port,
                lifetime_secs,
            } => {
                assert_ne!(alloc_id, FANOUT);
                assert!(lifetime_secs > 0);
                Alloc {
                    token,
                    id: alloc_id,
                    relay: SocketAddr::from(([127, 0, 0, 1], udp_port)),
                    socket: udp(),
                }
            }
            other => panic!("expected Allocated, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The media side (UDP)

fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(ARRIVE)).unwrap();
    s
}

/// One allocation with its own UDP socket.
struct Alloc {
    token: Token,
    id: u32,
    relay: SocketAddr,
    socket: UdpSocket,
}

impl Alloc {
    /// BIND and wait for BOUND; returns the observed address.
    fn bind(&self) -> SocketAddr {
        let txid: [u8; 8] = rand_txid();
        let mut out = Vec::new();
        encode_bind(self.token, txid, &mut out);
        self.socket.send_to(&out, self.relay).unwrap();
        let deadline = Instant::now() + ARRIVE;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let Ok((n, _)) = self.socket.recv_from(&mut buf) else {
                break;
            };
            if let Ok(RelayPacket::Bound { txid: t, observed }) = parse_relay_packet(&buf[..n])
                && t == txid
            {
                return observed;
            }
        }
        panic!("no BOUND answer");
    }

    fn send(&self, dest: u32, payload: &[u8]) {
        let mut out = Vec::new();
        encode_send(self.token, dest, payload, &mut out);
        self.socket.send_to(&out, self.relay).unwrap();
    }

    /// The next DATA packet: (from, payload).
    fn recv(&self) -> (u32, Vec<u8>) {
        self.try_recv(ARRIVE).expect("no DATA packet arrived")
    }

    fn try_recv(&self, wait: Duration) -> Option<(u32, Vec<u8>)> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 2048];
        let got = match self.socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(from, self.relay);
                match parse_relay_packet(&buf[..n]).unwrap() {
                    RelayPacket::Data { from, payload } => Some((from, payload.to_vec())),
                    other => panic!("expected DATA, got {other:?}"),
                }
            }
            Err(_) => None,
        };
        self.socket.set_read_timeout(Some(ARRIVE)).unwrap();
        got
    }

    fn assert_nothing(&self) {
        assert_eq!(self.try_recv(QUIET), None);
    }
}

fn rand_txid() -> [u8; 8] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish().to_be_bytes()
}

// ---------------------------------------------------------------------------------------------
// Metrics

fn scrape(relay: &RelayHandle) -> String {
    let mut s = TcpStream::connect(relay.metrics_addr().unwrap()).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of one sample, e.g. `securecomm_media_dropped_total{reason="malformed"}`.
fn metric(body: &str, sample: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{body}"))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

fn dropped(body: &str, reason: &str) -> u64 {
    metric(
        body,
        &format!("securecomm_media_dropped_total{{reason=\"{reason}\"}}"),
    )
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Two clients, three allocations in one room and one in another: BIND reports the observed
/// address; SEND to one id reaches exactly that allocation; FANOUT reaches every other member
/// of the room and not the sender; nothing crosses into the other room; metrics count it all
/// without peer ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_fanout_stay_in_the_room() {
    let relay = relay(MediaLimits::default()).await;
    let mut ann = Client::new(&relay);
    let mut ben = Client::new(&relay);
    let room = [1u8; 32];
    let a = ann.allocate(room).await;
    let b1 = ben.allocate(room).await;
    let b2 = ben.allocate(room).await;
    let other = ben.allocate([2u8; 32]).await;
    assert_eq!(a.relay, relay.media_addr().unwrap());
    let ids = [a.id, b1.id, b2.id, other.id];
    for (i, x) in ids.iter().enumerate() {
        assert!(!ids[..i].contains(x), "ids are distinct");
    }
    for x in [&a, &b1, &b2, &other] {
        assert_eq!(x.bind(), x.socket.local_addr().unwrap());
    }

    a.send(b1.id, b"to b1");
    assert_eq!(b1.recv(), (a.id, b"to b1".to_vec()));
    b2.assert_nothing();
    a.assert_nothing();

    b2.send(FANOUT, b"to all");
    assert_eq!(a.recv(), (b2.id, b"to all".to_vec()));
    assert_eq!(b1.recv(), (b2.id, b"to all".to_vec()));
    b2.assert_nothing();
    other.assert_nothing();

    // Into another room, or to oneself: dropped.
    a.send(other.id, b"wrong room");
    a.send(a.id, b"myself");
    other.send(FANOUT, b"alone");
    other.assert_nothing();
    a.assert_nothing();
    b1.assert_nothing();

    let body = scrape(&relay);
    assert_eq!(metric(&body, "securecomm_media_allocations"), 4);
    // 4 binds, 5 sends.
    assert_eq!(metric(&body, "securecomm_media_packets_in_total"), 9);
    assert_eq!(metric(&body, "securecomm_media_packets_forwarded_total"), 3);
    assert_eq!(
        metric(&body, "securecomm_media_bytes_forwarded_total"),
        (5 + 5) + 2 * (5 + 6)
    );
    assert_eq!(dropped(&body, "no_destination"), 3);
    assert!(!body.contains(&ann.swarm.local_peer_id().to_string()));
    relay.shutdown().await;
}

/// Refresh and Release work only for the peer that allocated; a released token is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_and_release_by_another_peer_are_refused() {
    let relay = relay(MediaLimits::default()).await;
    let mut ann = Client::new(&relay);
    let mut eve = Client::new(&relay);
    let a = ann.allocate([1; 32]).await;
    let b = ann.allocate([1; 32]).await;
    for req in [
        MediaRequest::Refresh { token: a.token },
        MediaRequest::Release { token: a.token },
    ] {
        assert_eq!(
            eve.call(req).await,
            MediaResponse::Refused {
                reason: "not_owner".into()
            }
        );
    }
    assert_eq!(
        ann.call(MediaRequest::Refresh { token: a.token }).await,
        MediaResponse::Refreshed { lifetime_secs: 300 }
    );
    assert_eq!(
        ann.call(MediaRequest::Release { token: a.token }).await,
        MediaResponse::Released
    );
    assert_eq!(
        ann.call(MediaRequest::Release { token: a.token }).await,
        MediaResponse::Refused {
            reason: "unknown_allocation".into()
        }
    );
    // The released token no longer sends; the other allocation still works.
    b.bind();
    a.send(b.id, b"ghost");
    b.assert_nothing();
    let body = scrape(&relay);
    assert_eq!(dropped(&body, "unknown_token"), 1);
    assert_eq!(metric(&body, "securecomm_media_allocations"), 1);
    relay.shutdown().await;
}

/// `max_allocations_per_peer` and `max_room_size` are exact: the configured number is granted,
/// one more is refused, and releasing one makes room for exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_and_room_quotas_are_exact() {
    let relay = relay(MediaLimits {
        max_allocations_per_peer: 3,
        max_room_size: 4,
        ..MediaLimits::default()
    })
    .await;
    let mut ann = Client::new(&relay);
    let mut ben = Client::new(&relay);
    let mut held = Vec::new();
    for i in 0..3u8 {
        held.push(ann.allocate([i; 32]).await);
    }
    let refused = MediaResponse::Refused {
        reason: "peer_quota".into(),
    };
    assert_eq!(
        ann.call(MediaRequest::Allocate { room: [9; 32] }).await,
        refused
    );
    // Another peer is not affected.
    let b = ben.allocate([9; 32]).await;
    ann.call(MediaRequest::Release {
        token: held[0].token,
    })
    .await;
    let _again = ann.allocate([9; 32]).await;
    assert_eq!(
        ann.call(MediaRequest::Allocate { room: [9; 32] }).await,
        refused
    );
    // Room 9 now holds 2; fill it to 4 with a third peer, the fifth is refused.
    let mut cy = Client::new(&relay);
    cy.allocate([9; 32]).await;
    cy.allocate([9; 32]).await;
    assert_eq!(
        cy.call(MediaRequest::Allocate { room: [9; 32] }).await,
        MediaResponse::Refused {
            reason: "room_full".into()
        }
    );
    let body = scrape(&relay);
    assert_eq!(
        metric(
            &body,
            "securecomm_media_refusals_total{reason=\"peer_quota\"}"
        ),
        2
    );
    assert_eq!(metric(&body, "securecomm_media_allocations"), 6);
    drop(b);
    relay.shutdown().await;
}

/// A client over its packet budget loses exactly the packets beyond it, and /metrics counts
/// them; the budget refills with time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_drops_beyond_the_budget() {
    let relay = relay(MediaLimits {
        packets_per_second: 50,
        ..MediaLimits::default()
    })
    .await;
    let mut ann = Client::new(&relay);
    let a = ann.allocate([1; 32]).await;
    let b = ann.allocate([1; 32]).await;
    a.bind();
    b.bind();
    let sent = 200u32;
    let started = Instant::now();
    for i in 0..sent {
        a.send(b.id, &i.to_be_bytes());
    }
    let mut received = 0u64;
    let mut last = started;
    while b.try_recv(QUIET).is_some() {
        received += 1;
        last = Instant::now();
    }
    // The bind took one packet of a's burst of 50; refill is 50 per second, over at most the
    // time until the last packet arrived.
    let allowed = 49.0 + 50.0 * (last - started).as_secs_f64();
    assert!(received >= 49, "received {received}");
    assert!(received as f64 <= allowed + 2.0, "received {received}");
    let body = scrape(&relay);
    assert_eq!(dropped(&body, "rate_limit"), u64::from(sent) - received);
    // After a second the budget is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.send(b.id, b"later");
    assert_eq!(b.recv().1, b"later");
    relay.shutdown().await;
}

/// Random bytes, truncated packets, a wrong token, unknown types, an empty and an oversized
/// datagram: all dropped and counted by reason, and the relay keeps forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_counted_and_the_relay_stays_up() {
    let relay = relay(MediaLimits::default()).await;
    let mut ann = Client::new(&relay);
    let a = ann.allocate([1; 32]).await;
    let b = ann.allocate([1; 32]).await;
    a.bind();
    b.bind();
    let junk = udp();
    let to = a.relay;
    let mut malformed = 0;
    // Random datagrams (xorshift, fixed seed), never starting with a valid SEND or BIND.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..500 {
        let len = (i * 7) % 200;
        let mut p = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            p.push(x as u8);
        }
        if let Some(first) = p.first_mut()
            && (*first == 1 || *first == 3)
        {
            *first = 0x7F;
        }
        junk.send_to(&p, to).unwrap();
        malformed += 1;
    }
    // Truncated SEND and BIND, BIND with a trailing byte, relay-to-client types sent in.
    let mut out = Vec::new();
    encode_send(a.token, b.id, b"", &mut out);
    junk.send_to(&out[..SEND_HEADER - 1], to).unwrap();
    encode_bind(a.token, [0; 8], &mut out);
    junk.send_to(&out[..10], to).unwrap();
    out.push(0);
    junk.send_to(&out, to).unwrap();
    junk.send_to(&[2, 0, 0, 0, 1, 9], to).unwrap();
    junk.send_to(&[4; 16], to).unwrap();
    malformed += 5;
    // Wrong tokens.
    encode_send([0xAA; 16], b.id, b"x", &mut out);
    junk.send_to(&out, to).unwrap();
    encode_bind([0xAA; 16], [0; 8], &mut out);
    junk.send_to(&out, to).unwrap();
    // Oversized: a full-size payload plus one byte, and a datagram far over any packet.
    encode_send(a.token, b.id, &[0; 1201], &mut out);
    junk.send_to(&out, to).unwrap();
    junk.send_to(&[1; 4000], to).unwrap();
    // Nothing reached b; the relay still works (and has processed all of the above, since
    // one thread handles packets in order).
    b.assert_nothing();
    a.send(b.id, b"still here");
    assert_eq!(b.recv(), (a.id, b"still here".to_vec()));
    let body = scrape(&relay);
    assert_eq!(dropped(&body, "malformed"), malformed);
    assert_eq!(dropped(&body, "unknown_token"), 2);
    assert_eq!(dropped(&body, "oversize"), 2);
    assert_eq!(
        metric(&body, "securecomm_media_packets_in_total"),
        malformed + 2 + 2 + 2 + 1
    );
    relay.shutdown().await;
}

/// A client whose source port changes (a NAT rebinding) keeps receiving once it sends its
/// next packet from the new port; the old port gets nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_rebinding_follows_the_latest_source() {
    let relay = relay(MediaLimits::default()).await;
    let mut ann = Client::new(&relay);
    let a = ann.allocate([1; 32]).await;
    let mut b = ann.allocate([1; 32]).await;
    a.bind();
    b.bind();
    a.send(b.id, b"one");
    assert_eq!(b.recv().1, b"one");
    // The "NAT" gives b a new port; it sends media (not even a BIND) from there.
    let old = std::mem::replace(&mut b.socket, udp());
    b.send(a.id, b"from the new port");
    assert_eq!(a.recv().1, b"from the new port");
    a.send(b.id, b"two");
    assert_eq!(b.recv().1, b"two");
    old.set_read_timeout(Some(QUIET)).unwrap();
    assert!(old.recv_from(&mut [0u8; 64]).is_err(), "old port got data");
    // BIND reports the new address.
    assert_eq!(b.bind(), b.socket.local_addr().unwrap());
    relay.shutdown().await;
}

/// A bound allocation that sends nothing for `idle_timeout_secs` expires: it no longer
/// receives, its token no longer sends, and its owner cannot refresh it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_allocation_expires() {
    let relay = relay(MediaLimits {
        idle_timeout_secs: 2,
        ..MediaLimits::default()
    })
    .await;
    let mut ann = Client::new(&relay);
    let mut ben = Client::new(&relay);
    let a = ann.allocate([1; 32]).await;
    let b = ben.allocate([1; 32]).await;
    a.bind();
    b.bind();
    a.send(b.id, b"hi");
    assert_eq!(b.recv().1, b"hi");
    // a keeps alive with BIND every 300 ms; b goes quiet.
    let until = Instant::now() + Duration::from_millis(3000);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.bind();
    }
    a.send(b.id, b"anyone?");
    b.assert_nothing();
    b.send(a.id, b"me");
    a.assert_nothing();
    assert_eq!(
        ben.call(MediaRequest::Refresh { token: b.token }).await,
        MediaResponse::Refused {
            reason: "unknown_allocation".into()
        }
    );
    assert_eq!(
        ann.call(MediaRequest::Refresh { token: a.token }).await,
        MediaResponse::Refreshed { lifetime_secs: 300 }
    );
    let body = scrape(&relay);
    assert_eq!(metric(&body, "securecomm_media_allocations"), 1);
    assert_eq!(dropped(&body, "no_destination"), 1);
    assert_eq!(dropped(&body, "unknown_token"), 1);
    relay.shutdown().await;
}

/// With `[media] enabled = false` there is no UDP socket and the protocol is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_media_is_not_served() {
    let relay = relay(MediaLimits {
        enabled: false,
        ..MediaLimits::default()
    })
    .await;
    assert_eq!(relay.media_addr(), None);
    let mut ann = Client::new(&relay);
    let err = ann
        .try_call(MediaRequest::Allocate { room: [1; 32] })
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("protocol"), "{err}");
    assert!(!scrape(&relay).contains("securecomm_media_"));
    relay.shutdown().await;
}
