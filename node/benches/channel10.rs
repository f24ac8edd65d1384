//! Ten nodes on loopback, one channel: latency from send to delivered on every member (p50, p99)
//! and sustained messages per second.
//!
//! Ours: ten `GuildService`s (real libp2p on loopback, each with its own SQLCipher database),
//! one guild, every member joined by invite and keyed; latency runs from the sender's `send`
//! call to the `Message` event each member emits after decrypting, verifying and storing.
//! Baseline: the same payloads over bare gossipsub (our libp2p stack, validation answered
//! `Accept` at once, no encryption, no storage), measured in the same run, same topology
//! (each node dials the next three and node 0).
//!
//! Run: `cargo bench -p securecomm-node --bench channel10` (env `MESSAGES`, `BURST`, `WINDOW`,
//! `PAYLOAD`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::MessageAcceptance;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use securecomm_node::guild::GuildEvent;
use securecomm_node::net::{Client, Event, EventLoop, NetConfig};
use tokio::time::{sleep, timeout};

#[path = "../tests/common/mod.rs"]
mod common;

const NODES: usize = 10;
const TOPIC: &str = "bench-channel";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Receive times per (message, receiver), keyed by the message's sequence number.
type Arrivals = Arc<Mutex<HashMap<u64, Vec<Instant>>>>;

struct Bare {
    clients: Vec<Client>,
    arrivals: Arrivals,
}

async fn listen_addr(c: &Client) -> libp2p::Multiaddr {
    for _ in 0..200 {
        if let Some(a) = c.listen_addrs().await.unwrap().into_iter().next() {
            return a.with(Protocol::P2p(c.peer_id()));
        }
        sleep(Duration::from_millis(20)).await;
    }
    panic!("no listen address");
}

/// Waits until every node has at least three peers on `topic`, then lets the mesh settle
/// (GRAFTs follow subscriptions by a heartbeat).
async fn wait_mesh(clients: &[Client], topic: &str) {
    timeout(Duration::from_secs(60), async {
        loop {
            let mut ready = true;
            for c in clients {
                if c.topic_peers(topic).await.unwrap() < 3 {
                    ready = false;
                }
            }
            if ready {
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("gossip mesh did not form");
    sleep(Duration::from_secs(2)).await;
}

/// Each node dials the next three and node 0.
async fn connect(clients: &[Client], addrs: &[libp2p::Multiaddr]) {
    for (i, c) in clients.iter().enumerate() {
        for k in 1..=3 {
            c.dial(addrs[(i + k) % NODES].clone()).await.unwrap();
        }
        if i > 3 && i < NODES - 3 {
            c.dial(addrs[0].clone()).await.unwrap();
        }
    }
}

impl Bare {
    async fn start() -> Self {
        let mut clients = Vec::new();
        for _ in 0..NODES {
            let cfg = NetConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                hole_punching: false,
                ..NetConfig::default()
            };
            let (lp, client) = EventLoop::new(Keypair::generate_ed25519(), &cfg).unwrap();
            tokio::spawn(lp.run());
            clients.push(client);
        }
        let arrivals: Arrivals = Arc::default();
        for c in &clients {
            c.subscribe(TOPIC).await.unwrap();
            let mut events = c.events();
            let client = c.clone();
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                while let Some(e) = events.next().await {
                    if let Event::Gossip {
                        id, source, data, ..
                    } = e
                    {
                        let _ = client
                            .report_validation(id, source, MessageAcceptance::Accept)
                            .await;
                        if let Some(seq) = data.get(..8) {
                            let seq = u64::from_be_bytes(seq.try_into().unwrap());
                            arrivals
                                .lock()
                                .unwrap()
                                .entry(seq)
                                .or_default()
                                .push(Instant::now());
                        }
                    }
                }
            });
        }
        // Each node dials the next three: a connected graph with room for gossipsub's mesh.
        let mut addrs = Vec::new();
        for c in &clients {
            addrs.push(listen_addr(c).await);
        }
        connect(&clients, &addrs).await;
        wait_mesh(&clients, TOPIC).await;
        Self { clients, arrivals }
    }

    async fn send(&self, from: usize, seq: u64, payload: &[u8]) {
        let mut data = seq.to_be_bytes().to_vec();
        data.extend_from_slice(payload);
        loop {
            match self.clients[from].publish(TOPIC, data.clone()).await {
                Ok(_) => return,
                Err(_) => sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Report {
    p50_ms: f64,
    p99_ms: f64,
    delivered: usize,
    expected: usize,
    msgs_per_sec: f64,
    pipelined_per_sec: f64,
}

/// Latency phase: `messages` sends, rotating senders, paced at one every 20 ms; then a burst
/// of `burst` messages from one sender as fast as publishing allows, each send waiting for the
/// previous one, timed until every member has every message (or 60 s pass); then the same
/// with up to `window` sends in flight.
trait Channel {
    async fn send(&self, from: usize, seq: u64, payload: &[u8]);
    fn arrivals(&self) -> &Arrivals;
}

impl Channel for Bare {
    async fn send(&self, from: usize, seq: u64, payload: &[u8]) {
        Bare::send(self, from, seq, payload).await
    }
    fn arrivals(&self) -> &Arrivals {
        &self.arrivals
    }
}

async fn run(
    b: &impl Channel,
    messages: usize,
    burst: usize,
    window: usize,
    payload: &[u8],
) -> Report {
    let mut sent = HashMap::new();
    for i in 0..messages {
        let seq = i as u64;
        sent.insert(seq, Instant::now());
        b.send(i % NODES, seq, payload).await;
        sleep(Duration::from_millis(20)).await;
    }
    let want = NODES - 1;
    let _ = timeout(Duration::from_secs(20), async {
        loop {
            let done = {
                let a = b.arrivals().lock().unwrap();
                (0..messages as u64).all(|s| a.get(&s).map(|v| v.len()).unwrap_or(0) >= want)
            };
            if done {
                break;
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut lat = Vec::new();
    {
        let a = b.arrivals().lock().unwrap();
        for (seq, t0) in &sent {
            for t in a.get(seq).into_iter().flatten() {
                lat.push(t.duration_since(*t0).as_secs_f64() * 1e3);
            }
        }
    }
    lat.sort_by(|x, y| x.total_cmp(y));

    let base = 1_000_000u64;
    let start = Instant::now();
    for i in 0..burst {
        b.send(0, base + i as u64, payload).await;
    }
    wait_all(b, base, burst).await;
    let sequential = burst as f64 / start.elapsed().as_secs_f64();

    // The same burst with up to `window` sends in flight: what the channel sustains when the
    // sender does not wait for each acknowledgement before the next send (several senders, or
    // an app that pipelines). The sequential figure above is bounded by one fsync per send.
    let base = 2_000_000u64;
    let start = Instant::now();
    futures::stream::iter(0..burst)
        .for_each_concurrent(window, |i| b.send(0, base + i as u64, payload))
        .await;
    wait_all(b, base, burst).await;
    let pipelined = burst as f64 / start.elapsed().as_secs_f64();
    Report {
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        delivered: lat.len(),
        expected: messages * want,
        msgs_per_sec: sequential,
        pipelined_per_sec: pipelined,
    }
}

/// Waits until every member has messages `base..base + n` (or 60 s pass).
async fn wait_all(b: &impl Channel, base: u64, n: usize) {
    let want = NODES - 1;
    let _ = timeout(Duration::from_secs(60), async {
        loop {
            let done = {
                let a = b.arrivals().lock().unwrap();
                (base..base + n as u64).all(|s| a.get(&s).map(|v| v.len()).unwrap_or(0) >= want)
            };
            if done {
                break;
            }
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

fn print(name: &str, r: &Report) {
    println!(
        "{name:>14}: latency p50 {:7.2} ms  p99 {:7.2} ms  ({} of {} deliveries)  burst {:6.0} msg/s  pipelined {:6.0} msg/s",
        r.p50_ms, r.p99_ms, r.delivered, r.expected, r.msgs_per_sec, r.pipelined_per_sec
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let messages = env("MESSAGES", 200);
    let burst = env("BURST", 1000);
    let window = env("WINDOW", 32).max(1);
    let payload = vec![b'x'; env("PAYLOAD", 200)];
    println!(
        "{NODES} nodes on loopback, {messages} paced messages, bursts of {burst} (sequential, then {window} in flight), {} B payloads",
        payload.len()
    );
    let ours = Guild::start().await;
    let r_ours = run(&ours, messages, burst, window, &payload).await;
    for n in &ours.nodes {
        n.guilds.stop();
        n.net.shutdown().await;
    }
    let bare = Bare::start().await;
    let r_bare = run(&bare, messages, burst, window, &payload).await;
    for c in &bare.clients {
        c.shutdown().await;
    }
    print("securecomm", &r_ours);
    print("bare gossipsub", &r_bare);
    println!(
        "ours / bare: p50 {:.2}x  p99 {:.2}x  throughput {:.2}x sequential, {:.2}x pipelined (bare / ours)",
        r_ours.p50_ms / r_bare.p50_ms,
        r_ours.p99_ms / r_bare.p99_ms,
        r_bare.msgs_per_sec / r_ours.msgs_per_sec,
        r_bare.pipelined_per_sec / r_ours.pipelined_per_sec
    );
}

/// Ten guild members.
struct Guild {
    nodes: Vec<common::TestNode>,
    gid: String,
    arrivals: Arrivals,
}

impl Guild {
    async fn start() -> Self {
        let mut nodes = Vec::new();
        for i in 0..NODES {
            nodes.push(common::start(&format!("member{i}")).await);
        }
        let others: Vec<&common::TestNode> = nodes[1..].iter().collect();
        let t0 = Instant::now();
        let gid = common::guild_of("Bench Guild", &nodes[0], &others).await;
        println!(
            "guild of {NODES}: every member joined and keyed in {:?}",
            t0.elapsed()
        );
        let clients: Vec<Client> = nodes.iter().map(|n| n.net.clone()).collect();
        let mut addrs = Vec::new();
        for n in &nodes {
            addrs.push(n.addr().await);
        }
        connect(&clients, &addrs).await;
        let topic = nodes[0].guilds.topic(&gid).unwrap();
        wait_mesh(&clients, &topic).await;
        let arrivals: Arrivals = Arc::default();
        for n in &nodes {
            let mut events = n.guilds.events();
            let arrivals = arrivals.clone();
            let me = n.user.clone();
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(GuildEvent::Message(m)) if m.sender != me => {
                            if let Some(seq) = m
                                .text
                                .get(..16)
                                .and_then(|h| u64::from_str_radix(h, 16).ok())
                            {
                                arrivals
                                    .lock()
                                    .unwrap()
                                    .entry(seq)
                                    .or_default()
                                    .push(Instant::now());
                            }
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            eprintln!("event receiver lagged by {n}");
                        }
                        Err(_) => break,
                    }
                }
            });
        }
        Self {
            nodes,
            gid,
            arrivals,
        }
    }
}

impl Channel for Guild {
    async fn send(&self, from: usize, seq: u64, payload: &[u8]) {
        // The same number of bytes as the bare payload: 8 bytes of sequence number there are
        // 16 hex digits here, and the rest is the payload as text.
        let mut text = format!("{seq:016x}");
        text.push_str(&String::from_utf8_lossy(payload));
        loop {
            match self.nodes[from]
                .guilds
                .send(&self.gid, "general", &text)
                .await
            {
                Ok(_) => return,
                Err(e) if e.to_string().contains("try again") => {
                    sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("send failed: {e}"),
            }
        }
    }
    fn arrivals(&self) -> &Arrivals {
        &self.arrivals
    }
}
