//! Multi-process tests of the real `securecomm-relay` binary on loopback (127.0.0.1 only).
//!
//! Each test starts its own relay process with port 0 listeners, parses the multiaddrs it
//! prints, and talks to it with test libp2p clients built here (TCP, Noise, Yamux, relay
//! client, identify, ping, rendezvous client and a tiny request-response protocol).

// Test helpers outside `#[test]` functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, identify,
    identity::Keypair,
    multiaddr::Protocol,
    noise, ping, relay, rendezvous,
    request_response::{self, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};
use securecomm_rendezvous::capture::{Layer, read_capture};
use tokio::sync::mpsc;

const STARTUP: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(20);
static NEXT: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------------------------
// The relay process

struct RelayProc {
    child: Child,
    addrs: Vec<Multiaddr>,
    peer_id: PeerId,
    metrics: Option<SocketAddr>,
    dir: PathBuf,
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "securecomm-relay-test-{}-{}-{tag}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl RelayProc {
    /// Starts the relay with a TCP and a QUIC listener on 127.0.0.1 port 0.
    fn start(dir: PathBuf, config: &str, extra: &[&str]) -> Self {
        std::fs::write(dir.join("relay.toml"), config).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let with_metrics = extra.contains(&"--metrics");
        let mut child = Command::new(env!("CARGO_BIN_EXE_securecomm-relay"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--config")
            .arg(dir.join("relay.toml"))
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut addrs = Vec::new();
        let mut metrics = None;
        let deadline = Instant::now() + STARTUP;
        while addrs.len() < 2 || (with_metrics && metrics.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                panic!("relay printed no addresses in time; stderr:\n{log}")
            });
            if let Some(url) = line.strip_prefix("metrics http://") {
                metrics = Some(url.trim_end_matches("/metrics").parse().unwrap());
            } else {
                addrs.push(line.parse::<Multiaddr>().unwrap());
            }
        }
        let peer_id = match addrs[0].iter().last() {
            Some(Protocol::P2p(p)) => p,
            other => panic!(
                "expected /p2p/<id> at the end of {}, got {other:?}",
                addrs[0]
            ),
        };
        for a in &addrs {
            assert_eq!(a.iter().last(), Some(Protocol::P2p(peer_id)), "{a}");
            // Loopback only.
            assert_eq!(a.iter().next(), Some(Protocol::Ip4([127, 0, 0, 1].into())));
        }
        Self {
            child,
            addrs,
            peer_id,
            metrics,
            dir,
        }
    }

    fn tcp_addr(&self) -> Multiaddr {
        self.addrs
            .iter()
            .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
            .unwrap()
            .clone()
    }

    fn quic_addr(&self) -> Multiaddr {
        self.addrs
            .iter()
            .find(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)))
            .unwrap()
            .clone()
    }

    fn tcp_socket(&self) -> SocketAddr {
        socket_of(&self.tcp_addr())
    }

    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("relay exited with {status}; stderr:\n{}", self.stderr());
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "relay ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("relay stderr ({}):\n{}", self.dir.display(), self.stderr());
        }
    }
}

fn socket_of(addr: &Multiaddr) -> SocketAddr {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a),
            Protocol::Tcp(p) | Protocol::Udp(p) => port = Some(p),
            _ => {}
        }
    }
    SocketAddr::from((ip.unwrap(), port.unwrap()))
}

// ---------------------------------------------------------------------------------------------
// The test client

/// A request-response codec that sends raw bytes (at most 4 MiB).
#[derive(Clone, Default)]
struct Bytes;

const ECHO: StreamProtocol = StreamProtocol::new("/securecomm-test/bytes/1");

impl request_response::Codec for Bytes {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let mut v = Vec::new();
        io.take(4 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let mut v = Vec::new();
        io.take(4 << 20).read_to_end(&mut v).await?;
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
struct Client {
    relay: relay::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    rendezvous: rendezvous::client::Behaviour,
    bytes: request_response::Behaviour<Bytes>,
}

fn client(key: Keypair, agent: &str) -> Swarm<Client> {
    let agent = agent.to_string();
    SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key, relay| Client {
            relay,
            identify: identify::Behaviour::new(
                identify::Config::new("/securecomm/0.1.0".into(), key.public())
                    .with_agent_version(agent),
            ),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(1))),
            rendezvous: rendezvous::client::Behaviour::new(key.clone()),
            bytes: request_response::Behaviour::with_codec(
                Bytes,
                [(ECHO, ProtocolSupport::Full)],
                request_response::Config::default(),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

/// Drives `swarm` until `f` returns `Some`, failing after [`STEP`].
async fn until<T>(
    swarm: &mut Swarm<Client>,
    what: &str,
    mut f: impl FnMut(&mut Swarm<Client>, SwarmEvent<ClientEvent>) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
        if let Some(t) = f(swarm, event) {
            return t;
        }
    }
}

/// Makes a reservation on the relay and returns its outcome: `Ok` when accepted, `Err(reason)`
/// when the relay refused.
async fn reserve(swarm: &mut Swarm<Client>, relay: &RelayProc) -> Result<(), String> {
    let circuit = relay.tcp_addr().with(Protocol::P2pCircuit);
    let id = swarm.listen_on(circuit).unwrap();
    until(swarm, "reservation outcome", |_, e| match e {
        SwarmEvent::Behaviour(ClientEvent::Relay(
            relay::client::Event::ReservationReqAccepted { .. },
        )) => Some(Ok(())),
        SwarmEvent::ListenerClosed {
            listener_id,
            reason,
            ..
        } if listener_id == id => Some(Err(format!("{reason:?}"))),
        SwarmEvent::ListenerError { listener_id, error } if listener_id == id => {
            Some(Err(format!("{error:?}")))
        }
        _ => None,
    })
    .await
}

/// Runs a passive peer in the background: answers every request with `reply`, reports notable
/// events as strings.
fn spawn_passive(
    mut swarm: Swarm<Client>,
    reply: Vec<u8>,
) -> (mpsc::Receiver<String>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(async move {
        loop {
            let event = swarm.select_next_some().await;
            let note = match event {
                SwarmEvent::Behaviour(ClientEvent::Bytes(request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                })) => {
                    let _ = swarm
                        .behaviour_mut()
                        .bytes
                        .send_response(channel, reply.clone());
                    format!("request:{}", String::from_utf8_lossy(&request))
                }
                SwarmEvent::ConnectionEstablished { endpoint, .. } => {
                    format!("connected:{}", endpoint.get_remote_address())
                }
                SwarmEvent::Behaviour(ClientEvent::Relay(e)) => format!("relay:{e:?}"),
                _ => continue,
            };
            let _ = tx.try_send(note);
        }
    });
    (rx, task)
}

async fn expect_note(rx: &mut mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let note = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for a note starting with {prefix}"))
            .unwrap();
        if note.starts_with(prefix) {
            return note;
        }
    }
}

/// Dials `target` through the relay's circuit and exchanges one request and response.
async fn exchange_over_circuit(
    a: &mut Swarm<Client>,
    relay: &RelayProc,
    target: PeerId,
    request: &[u8],
) -> (Vec<u8>, Multiaddr) {
    let addr = relay
        .tcp_addr()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(target));
    a.dial(addr).unwrap();
    let remote = until(a, "relayed connection", |_, e| match e {
        SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } if peer_id == target => Some(endpoint.get_remote_address().clone()),
        SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
        _ => None,
    })
    .await;
    a.behaviour_mut()
        .bytes
        .send_request(&target, request.to_vec());
    let response = until(a, "response", |_, e| match e {
        SwarmEvent::Behaviour(ClientEvent::Bytes(request_response::Event::Message {
            message: request_response::Message::Response { response, .. },
            ..
        })) => Some(response),
        SwarmEvent::Behaviour(ClientEvent::Bytes(request_response::Event::OutboundFailure {
            error,
            ..
        })) => panic!("request failed: {error}"),
        _ => None,
    })
    .await;
    (response, remote)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

const DEFAULT_CONFIG: &str = "";

// ---------------------------------------------------------------------------------------------
// Tests

/// Two clients with no shared listen address (B listens only on a relay circuit, A listens
/// nowhere) connect through the relay, exchange bytes, and the relay's capture of every TCP
/// byte, on the wire and after its own Noise decryption, holds neither message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_relays_bytes_and_relay_sees_no_plaintext() {
    let dir = temp_dir("circuit");
    let capture = dir.join("capture.bin");
    let mut relay = RelayProc::start(
        dir,
        DEFAULT_CONFIG,
        &["--capture", capture.to_str().unwrap()],
    );
    const TO_B: &[u8] = b"PLAINTEXT-MARKER guild=\"Secret Garden\" text=\"meet at noon\"";
    const TO_A: &[u8] = b"PLAINTEXT-REPLY nickname=\"bob-the-builder\"";
    const AGENT: &str = "securecomm-test-agent-visible-to-relay";

    let b_key = Keypair::generate_ed25519();
    let b_id = b_key.public().to_peer_id();
    let mut b = client(b_key, AGENT);
    reserve(&mut b, &relay).await.unwrap();
    let (mut b_notes, b_task) = spawn_passive(b, TO_A.to_vec());

    let mut a = client(Keypair::generate_ed25519(), AGENT);
    let (response, remote) = exchange_over_circuit(&mut a, &relay, b_id, TO_B).await;
    assert_eq!(response, TO_A);
    assert!(
        remote.iter().any(|p| p == Protocol::P2pCircuit),
        "expected a relayed connection, got {remote}"
    );
    let note = expect_note(&mut b_notes, "request:").await;
    assert_eq!(note.as_bytes(), [b"request:".as_slice(), TO_B].concat());
    // The relayed connection stays usable: a ping round-trips over it.
    until(&mut a, "ping over the circuit", |_, e| match e {
        SwarmEvent::Behaviour(ClientEvent::Ping(ping::Event {
            peer,
            result: Ok(_),
            ..
        })) if peer == b_id => Some(()),
        _ => None,
    })
    .await;
    relay.assert_alive();
    b_task.abort();
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let data = std::fs::read(&capture).unwrap();
    let streams = read_capture(&data).unwrap();
    let wire: usize = streams
        .iter()
        .filter(|((_, l, _), _)| *l == Layer::Wire)
        .map(|(_, v)| v.len())
        .sum();
    let inner: usize = streams
        .iter()
        .filter(|((_, l, _), _)| *l == Layer::Relay)
        .map(|(_, v)| v.len())
        .sum();
    eprintln!(
        "capture: {} bytes in file, {wire} wire bytes, {inner} bytes above the relay's Noise, {} streams",
        data.len(),
        streams.len()
    );
    for ((conn, layer, dir), bytes) in &streams {
        for secret in [
            TO_B,
            TO_A,
            b"PLAINTEXT".as_slice(),
            b"Secret Garden",
            b"bob-the-builder",
        ] {
            assert!(
                !contains(bytes, secret),
                "{:?} found in {layer:?} {dir:?} stream of connection {conn}",
                String::from_utf8_lossy(secret)
            );
        }
    }
    // Controls, so the search above can fail: the wire layer holds the cleartext handshake
    // negotiation, and the relay layer holds what the clients sent the relay itself (their
    // identify agent string, relay hop messages) while the wire layer does not.
    let any = |layer: Layer, needle: &[u8]| {
        streams
            .iter()
            .any(|((_, l, _), v)| *l == layer && contains(v, needle))
    };
    assert!(any(Layer::Wire, b"/noise"));
    assert!(any(Layer::Relay, AGENT.as_bytes()));
    assert!(!any(Layer::Wire, AGENT.as_bytes()));
    assert!(any(Layer::Relay, b"/libp2p/circuit/relay/0.2.0/hop"));
    // The circuit carried at least the clients' end-to-end Noise handshake and the messages.
    assert!(inner > TO_A.len() + TO_B.len());
}

/// A client registers under a namespace and another discovers it, over TCP and over QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_register_and_discover() {
    let relay = RelayProc::start(temp_dir("rdv"), DEFAULT_CONFIG, &[]);
    let ns = rendezvous::Namespace::new("guild-3f9a1c".to_string()).unwrap();

    let a_key = Keypair::generate_ed25519();
    let a_id = a_key.public().to_peer_id();
    let mut a = client(a_key, "a");
    let announced: Multiaddr = "/ip4/127.0.0.1/tcp/45555".parse().unwrap();
    a.add_external_address(announced.clone());
    a.dial(relay.tcp_addr()).unwrap();
    until(&mut a, "connection to relay", |_, e| {
        matches!(e, SwarmEvent::ConnectionEstablished { .. }).then_some(())
    })
    .await;
    a.behaviour_mut()
        .rendezvous
        .register(ns.clone(), relay.peer_id, Some(7200))
        .unwrap();
    let ttl = until(&mut a, "registration", |_, e| match e {
        SwarmEvent::Behaviour(ClientEvent::Rendezvous(rendezvous::client::Event::Registered {
            ttl,
            ..
        })) => Some(ttl),
        SwarmEvent::Behaviour(ClientEvent::Rendezvous(
            rendezvous::client::Event::RegisterFailed { error, .. },
        )) => panic!("register failed: {error:?}"),
        _ => None,
    })
    .await;
    assert_eq!(ttl, 7200);
    let (_a_notes, a_task) = spawn_passive(a, Vec::new());

    let mut b = client(Keypair::generate_ed25519(), "b");
    b.dial(relay.quic_addr()).unwrap();
    until(&mut b, "connection to relay over QUIC", |_, e| {
        matches!(e, SwarmEvent::ConnectionEstablished { .. }).then_some(())
    })
    .await;
    b.behaviour_mut()
        .rendezvous
        .discover(Some(ns), None, None, relay.peer_id);
    let found = until(&mut b, "discovery", |_, e| match e {
        SwarmEvent::Behaviour(ClientEvent::Rendezvous(rendezvous::client::Event::Discovered {
            registrations,
            ..
        })) => Some(registrations),
        SwarmEvent::Behaviour(ClientEvent::Rendezvous(
            rendezvous::client::Event::DiscoverFailed { error, .. },
        )) => panic!("discover failed: {error:?}"),
        _ => None,
    })
    .await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].record.peer_id(), a_id);
    assert_eq!(found[0].record.addresses(), [announced]);
    a_task.abort();
}

/// With `max_reservations_per_peer = 2`, a peer (three connections under one identity) gets
/// exactly two reservations and the third is refused with RESOURCE_LIMIT_EXCEEDED, while
/// another peer can still reserve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_reservation_limit_is_exact() {
    let mut relay = RelayProc::start(
        temp_dir("limit"),
        "[circuit]\nmax_reservations_per_peer = 2\n",
        &[],
    );
    let key = Keypair::generate_ed25519();
    let mut held = Vec::new();
    for i in 0..2 {
        let mut c = client(key.clone(), "same-peer");
        reserve(&mut c, &relay)
            .await
            .unwrap_or_else(|e| panic!("reservation {i} refused: {e}"));
        held.push(spawn_passive(c, Vec::new()));
    }
    let mut third = client(key.clone(), "same-peer");
    let refused = reserve(&mut third, &relay).await.unwrap_err();
    assert!(
        refused.contains("ResourceLimitExceeded"),
        "expected ResourceLimitExceeded, got {refused}"
    );
    let mut other = client(Keypair::generate_ed25519(), "other-peer");
    reserve(&mut other, &relay).await.unwrap();
    relay.assert_alive();
    assert!(relay.stderr().contains("reservation denied"));
    for (_, task) in held {
        task.abort();
    }
}

/// The circuit byte cap comes from the config: with `max_bytes = 1 MiB`, a 512 KiB message
/// crosses (libp2p's default cap of 128 KiB would have cut it), and a circuit that goes on to
/// carry more than 1 MiB in total is closed by the relay, which keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_byte_limit_from_config_is_enforced() {
    let mut relay = RelayProc::start(temp_dir("bytes"), "[circuit]\nmax_bytes = 1048576\n", &[]);
    let b_key = Keypair::generate_ed25519();
    let b_id = b_key.public().to_peer_id();
    let mut b = client(b_key, "b");
    reserve(&mut b, &relay).await.unwrap();
    let (_notes, b_task) = spawn_passive(b, b"ok".to_vec());
    let mut a = client(Keypair::generate_ed25519(), "a");
    let (response, _) = exchange_over_circuit(&mut a, &relay, b_id, &vec![7u8; 512 << 10]).await;
    assert_eq!(response, b"ok");

    a.behaviour_mut()
        .bytes
        .send_request(&b_id, vec![9u8; 1 << 20]);
    until(&mut a, "the relay to cut the circuit", |_, e| match e {
        SwarmEvent::Behaviour(ClientEvent::Bytes(request_response::Event::OutboundFailure {
            ..
        })) => Some(()),
        SwarmEvent::Behaviour(ClientEvent::Bytes(request_response::Event::Message {
            message: request_response::Message::Response { .. },
            ..
        })) => panic!("1.5 MiB crossed a circuit capped at 1 MiB"),
        _ => None,
    })
    .await;
    relay.assert_alive();
    b_task.abort();
    // The client can see the failure before the relay has written its log line.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !relay.stderr().contains("circuit closed") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(relay.stderr().contains("circuit closed"));
}

/// Garbage on the TCP and QUIC ports, half handshakes, a burst of connections dropped at once
/// and a client vanishing while holding a reservation leave the relay up: it still serves a new
/// client, and the capture shows the garbage (so capture does record plaintext when there is
/// any).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_abrupt_disconnects_leave_relay_up() {
    let dir = temp_dir("garbage");
    let capture = dir.join("capture.bin");
    let mut relay = RelayProc::start(
        dir,
        DEFAULT_CONFIG,
        &["--capture", capture.to_str().unwrap()],
    );
    let tcp = relay.tcp_socket();
    let quic = socket_of(&relay.quic_addr());

    // Pseudo-random garbage (xorshift, fixed seed) with a readable marker in it.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut garbage: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    garbage.splice(100..100, b"GARBAGE-MARKER".iter().copied());
    let inputs: Vec<Vec<u8>> = vec![
        garbage.clone(),
        b"/multistream/1.0.0\n".to_vec(),
        b"\x13/multistream/1.0.0\n\x07/noise\n".to_vec(),
        b"\x13/multistream/1.0.0\n\x07/noise\n\xff\xff\xff\xff".to_vec(),
        vec![0xff; 70_000],
        b"GET /metrics HTTP/1.1\r\n\r\n".to_vec(),
        Vec::new(),
    ];
    for input in &inputs {
        let mut s = TcpStream::connect(tcp).unwrap();
        let _ = s.write_all(input);
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = s.read(&mut [0u8; 256]);
    }
    // A burst of connections dropped at once.
    let burst: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(tcp).unwrap()).collect();
    drop(burst);
    // UDP garbage at the QUIC port.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for chunk in garbage.chunks(1200).take(50) {
        let _ = udp.send_to(chunk, quic);
    }
    // A client holding a reservation vanishes without closing (its task is aborted).
    let mut ghost = client(Keypair::generate_ed25519(), "ghost");
    reserve(&mut ghost, &relay).await.unwrap();
    drop(ghost);
    // A client that disappears mid-dial through a circuit to a peer that does not exist.
    let mut dialer = client(Keypair::generate_ed25519(), "dialer");
    let nobody = PeerId::random();
    dialer
        .dial(
            relay
                .tcp_addr()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(nobody)),
        )
        .unwrap();
    until(&mut dialer, "refused circuit", |_, e| match e {
        SwarmEvent::OutgoingConnectionError { .. } => Some(()),
        SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == nobody => {
            panic!("circuit to a peer without reservation was accepted")
        }
        _ => None,
    })
    .await;
    drop(dialer);
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.assert_alive();

    // Still serving: a new pair relays a circuit.
    let b_key = Keypair::generate_ed25519();
    let b_id = b_key.public().to_peer_id();
    let mut b = client(b_key, "b");
    reserve(&mut b, &relay).await.unwrap();
    let (_notes, b_task) = spawn_passive(b, b"still up".to_vec());
    let mut a = client(Keypair::generate_ed25519(), "a");
    let (response, _) = exchange_over_circuit(&mut a, &relay, b_id, b"hello").await;
    assert_eq!(response, b"still up");
    b_task.abort();
    relay.assert_alive();

    let streams = read_capture(&std::fs::read(&capture).unwrap()).unwrap();
    assert!(
        streams
            .iter()
            .any(|((_, l, _), v)| *l == Layer::Wire && contains(v, b"GARBAGE-MARKER")),
        "the capture must record plaintext sent in the clear"
    );
}

/// The metrics endpoint serves counts (and no peer ids); other paths get 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_returns_counts() {
    let relay = RelayProc::start(
        temp_dir("metrics"),
        DEFAULT_CONFIG,
        &["--metrics", "127.0.0.1:0"],
    );
    let key = Keypair::generate_ed25519();
    let id = key.public().to_peer_id();
    let mut c = client(key, "m");
    reserve(&mut c, &relay).await.unwrap();
    until(&mut c, "a ping", |_, e| {
        matches!(
            e,
            SwarmEvent::Behaviour(ClientEvent::Ping(ping::Event { result: Ok(_), .. }))
        )
        .then_some(())
    })
    .await;
    let get = |path: &str| {
        let mut s = TcpStream::connect(relay.metrics.unwrap()).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let body = get("/metrics");
    assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("libp2p_relay_events_total") && l.contains("ReservationReqAccepted")
        })
        .unwrap_or_else(|| panic!("no reservation counter in:\n{body}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("libp2p_swarm_connections_established_total")),
        "{body}"
    );
    assert!(!body.contains(&id.to_string()));
    assert!(!body.contains(&relay.peer_id.to_string()));
    // No addresses either: labels are protocol stacks and event kinds.
    assert!(!body.contains("127.0.0.1"));
    assert!(get("/other").starts_with("HTTP/1.1 404"));
}

/// The library API in-process: a relay spawns on loopback, serves a reservation, shuts down
/// cleanly; an address no transport serves is a clear `Listen` error, not a panic or a hang.
/// (A TCP port already in use is *not* an error: libp2p-tcp sets SO_REUSEPORT on listeners.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_spawn_serve_shutdown_and_bind_error() {
    use securecomm_rendezvous::{Relay, RelayConfig, RelayError, RelayOptions};
    let config = RelayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        ..RelayConfig::default()
    };
    let key = Keypair::generate_ed25519();
    let handle = Relay::spawn(config, key.clone(), RelayOptions::default())
        .await
        .unwrap();
    assert_eq!(handle.peer_id(), key.public().to_peer_id());
    assert_eq!(handle.listen_addrs().len(), 1);
    let taken = socket_of(&handle.listen_addrs()[0]);
    let mut c = client(Keypair::generate_ed25519(), "lib");
    let circuit = handle.listen_addrs()[0].clone().with(Protocol::P2pCircuit);
    c.listen_on(circuit).unwrap();
    until(&mut c, "reservation", |_, e| {
        matches!(
            e,
            SwarmEvent::Behaviour(ClientEvent::Relay(
                relay::client::Event::ReservationReqAccepted { .. }
            ))
        )
        .then_some(())
    })
    .await;

    let clash = RelayConfig {
        listen: vec![format!("/ip4/127.0.0.1/udp/{}", taken.port())],
        ..RelayConfig::default()
    };
    let err = Relay::spawn(clash, Keypair::generate_ed25519(), RelayOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, RelayError::Listen { .. }), "{err}");

    tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
        .await
        .unwrap();
    // The client sees its relay connection close.
    until(&mut c, "relay connection closed", |_, e| {
        matches!(e, SwarmEvent::ConnectionClosed { .. }).then_some(())
    })
    .await;
}

/// The identity key persists: a restart with the same data directory keeps the peer id, and
/// SIGTERM stops the relay cleanly.
#[test]
fn identity_survives_restart_and_sigterm_is_clean() {
    let dir = temp_dir("restart");
    let first = RelayProc::start(dir.clone(), DEFAULT_CONFIG, &[]);
    let id = first.peer_id;
    // Keep the data directory for the second start.
    let status = {
        let mut first = first;
        first.dir = temp_dir("restart-scratch");
        first.terminate()
    };
    assert!(status.success(), "exit status {status}");
    let second = RelayProc::start(dir, DEFAULT_CONFIG, &[]);
    assert_eq!(second.peer_id, id);
    let status = second.terminate();
    assert!(status.success());
}
