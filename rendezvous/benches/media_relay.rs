//! The UDP media relay under issue 9's load: "at least 1,000 concurrent 50-packet-per-second
//! streams on one core without loss on loopback".
//!
//! ```sh
//! cargo bench -p securecomm-rendezvous --bench media_relay
//! MEDIA_BENCH_SECS=20 MEDIA_BENCH_STREAMS=1000,2000 cargo bench -p securecomm-rendezvous --bench media_relay
//! ```
//!
//! The relay's UDP thread ([`MediaRelay`], the code the relay runs) is pinned to CPU 0 with
//! `taskset`; the load generator runs on CPU 1: one sender thread paces every stream (50
//! packets per second each, 180-byte payloads like a 64 kbit/s Opus frame with SFrame
//! overhead, phases spread evenly) from one UDP socket per stream, and one receiver thread
//! (a single-threaded tokio runtime, one task per socket) counts what arrives by the stream id
//! and sequence number inside each payload. Streams come in rooms of two, each sending to its
//! partner's allocation id. Allocations are made through [`MediaRelay::handle`] (the code path
//! the swarm task calls), then every socket BINDs.
//!
//! The reference machine is shared with other builds (load averages of 8 to 14 on 2 cores are
//! common), so by default the forwarding thread and the two generator threads run under
//! `SCHED_FIFO` (`chrt -f 10`, as root): that stands in for the dedicated core a production
//! relay has, and keeps compilers from preempting the measurement. They block in `recv` or
//! sleep between bursts, so they leave the CPUs to others when idle. `MEDIA_BENCH_RT=0` runs
//! them at normal priority instead.
//!
//! In the same run, a baseline forwarder with the same socket API and buffers (`recv_from`,
//! copy into a DATA packet, `send_to` the partner's address from a plain array) but no token
//! lookup, no lock and no rate limiting carries the same load. Each run reports offered and
//! forwarded packets per second, loss (sent minus received, counted by the receivers), the
//! forwarding thread's CPU time (from `/proc/self/task/<tid>/schedstat`) and CPU per packet,
//! and the ratio to the baseline.
//!
//! # Results
//! 2-core reference machine shared with other builds (load average 10-11 from other
//! compilations during the run), release profile, 10 s per run, real-time priority on
//! (2026-11-27). "ns/packet" is the forwarding thread's CPU time per packet forwarded (one
//! `recvfrom` and one `sendto`, kernel time included, which dominates); "gen cpu%" is the
//! load generator's two threads, on the other core.
//!
//! ```text
//!  streams      mode   offered/s   forwarded/s       lost    loss%    fwd cpu%    ns/packet    gen cpu%     ratio
//!     1000  baseline       49986         49986          0   0.000%       18.7%         3741       28.4%
//!     1000     relay       49975         49975          0   0.000%       22.0%         4403       29.5%     1.18x
//!     2000  baseline       99937         99937          0   0.000%       31.0%         3098       49.0%
//!     2000     relay       99963         99963          0   0.000%       35.2%         3521       47.9%     1.14x
//!     4000  baseline      199906        199906          0   0.000%       55.1%         2758       90.7%
//!     4000     relay      199909        199909          0   0.000%       63.7%         3186       88.8%     1.16x
//! ```
//!
//! Issue 9's goal (1,000 streams, one core, no loss) is met with the relay thread at 22% of
//! its core; 4,000 streams (200,000 packets per second in and out) still lose nothing at 64%.
//! Beyond that the generator, not the relay, is the limit (89% of its core at 4,000). The
//! table lookup, lock and rate limiting cost 14-18% over the bare forwarder. With
//! `MEDIA_BENCH_RT=0` results depend on the other builds: one run at 1,000 streams lost
//! nothing (19% CPU); an earlier one while three compilations shared CPU 0 lost 42% (baseline)
//! and 51% (relay), both from the forwarder's socket buffer, because the forwarding thread got
//! only about 9% of the core, less than the 17-22% it needs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use libp2p::PeerId;
use prometheus_client::{encoding::text::encode, registry::Registry};
use securecomm_rendezvous::{
    config::MediaLimits,
    media::{
        MediaMetrics, MediaRelay, MediaRequest, MediaResponse, RelayPacket, Token, encode_bind,
        encode_send, parse_relay_packet,
        service::{SOCKET_BUFFER, THREAD_NAME},
        wire::{DATA_HEADER, SEND_HEADER, encode_data},
    },
};
use socket2::{Domain, Socket, Type};

const PAYLOAD: usize = 180;
const PPS_PER_STREAM: u64 = 50;
const RELAY_CPU: &str = "0";
const GEN_CPU: &str = "1";
const BASELINE_THREAD: &str = "media-baseline";
/// How long receivers keep counting after the senders stop.
const DRAIN: Duration = Duration::from_millis(500);

fn main() {
    let secs: u64 = std::env::var("MEDIA_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let streams: Vec<usize> = std::env::var("MEDIA_BENCH_STREAMS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 2000, 4000]);
    // Everything started from here on inherits CPU 1; the forwarding thread moves to CPU 0.
    pin(std::process::id(), GEN_CPU);
    let rt = std::env::var("MEDIA_BENCH_RT").map_or(true, |v| v != "0");
    println!(
        "media relay: {PAYLOAD}-byte payloads, {PPS_PER_STREAM} packets/s per stream, {secs} s per run, \
         forwarder on CPU {RELAY_CPU}, load generator on CPU {GEN_CPU}, \
         real-time priority: {rt}"
    );
    println!(
        "{:>8} {:>9} {:>11} {:>13} {:>10} {:>8} {:>11} {:>12} {:>11} {:>9}",
        "streams",
        "mode",
        "offered/s",
        "forwarded/s",
        "lost",
        "loss%",
        "fwd cpu%",
        "ns/packet",
        "gen cpu%",
        "ratio"
    );
    for &n in &streams {
        let base = run(n, secs, Mode::Baseline, rt);
        let relay = run(n, secs, Mode::Relay, rt);
        base.print(None);
        relay.print(Some(&base));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Relay,
    Baseline,
}

struct Outcome {
    streams: usize,
    mode: Mode,
    secs: f64,
    sent: u64,
    received: u64,
    fwd_cpu: Duration,
    gen_cpu: Duration,
    dropped: String,
}

impl Outcome {
    fn ns_per_packet(&self) -> f64 {
        self.fwd_cpu.as_nanos() as f64 / self.received.max(1) as f64
    }

    fn print(&self, baseline: Option<&Outcome>) {
        let lost = self.sent.saturating_sub(self.received);
        println!(
            "{:>8} {:>9} {:>11.0} {:>13.0} {:>10} {:>7.3}% {:>10.1}% {:>12.0} {:>10.1}% {:>9}",
            self.streams,
            match self.mode {
                Mode::Relay => "relay",
                Mode::Baseline => "baseline",
            },
            self.sent as f64 / self.secs,
            self.received as f64 / self.secs,
            lost,
            100.0 * lost as f64 / self.sent.max(1) as f64,
            100.0 * self.fwd_cpu.as_secs_f64() / self.secs,
            self.ns_per_packet(),
            100.0 * self.gen_cpu.as_secs_f64() / self.secs,
            baseline
                .map(|b| format!("{:.2}x", self.ns_per_packet() / b.ns_per_packet()))
                .unwrap_or_default(),
        );
        if !self.dropped.is_empty() {
            println!("{:>8} relay drops: {}", "", self.dropped);
        }
    }
}

/// One stream's client: its socket, allocation token and partner's id.
struct Stream {
    socket: UdpSocket,
    token: Token,
    partner: u32,
}

fn big_socket() -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.into()
}

fn run(n: usize, secs: u64, mode: Mode, rt: bool) -> Outcome {
    assert!(n.is_multiple_of(2), "streams come in pairs");
    let sockets: Vec<UdpSocket> = (0..n).map(|_| big_socket()).collect();
    let mut registry = Registry::default();
    let (forwarder, relay_addr, streams) = match mode {
        Mode::Relay => {
            let limits = MediaLimits {
                max_allocations: u32::try_from(n).unwrap().max(4096),
                ..MediaLimits::default()
            };
            let relay = MediaRelay::start(
                &limits,
                "127.0.0.1:0".parse().unwrap(),
                MediaMetrics::register(&mut registry),
            )
            .unwrap();
            let addr = relay.local_addr();
            let mut grants = Vec::with_capacity(n);
            for i in 0..n {
                let mut room = [0u8; 32];
                room[..8].copy_from_slice(&((i / 2) as u64).to_be_bytes());
                match relay.handle(PeerId::random(), MediaRequest::Allocate { room }) {
                    MediaResponse::Allocated {
                        token, alloc_id, ..
                    } => grants.push((token, alloc_id)),
                    other => panic!("allocation {i} refused: {other:?}"),
                }
            }
            let streams = sockets
                .into_iter()
                .enumerate()
                .map(|(i, socket)| Stream {
                    socket,
                    token: grants[i].0,
                    partner: grants[i ^ 1].1,
                })
                .collect::<Vec<_>>();
            for s in &streams {
                bind(s, addr);
            }
            (Forwarder::Relay(relay), addr, streams)
        }
        Mode::Baseline => {
            let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
            let base = Baseline::start(addrs);
            let addr = base.addr;
            let streams = sockets
                .into_iter()
                .enumerate()
                .map(|(i, socket)| Stream {
                    socket,
                    token: [0; 16],
                    partner: (i ^ 1) as u32,
                })
                .collect();
            (Forwarder::Baseline(base), addr, streams)
        }
    };
    let fwd_tid = tid_of(match mode {
        Mode::Relay => THREAD_NAME,
        Mode::Baseline => BASELINE_THREAD,
    });
    pin(fwd_tid, RELAY_CPU);
    if rt {
        realtime(fwd_tid);
    }

    // Receiver: one tokio task per socket on a single-threaded runtime, on CPU 1.
    let receivers: Vec<UdpSocket> = streams
        .iter()
        .map(|s| s.socket.try_clone().unwrap())
        .collect();
    let stop_rx = Arc::new(AtomicBool::new(false));
    let receiver = {
        let stop = Arc::clone(&stop_rx);
        std::thread::Builder::new()
            .name("media-gen-rx".into())
            .spawn(move || receive(receivers, stop))
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(200));
    let rx_tid = tid_of("media-gen-rx");
    if rt {
        realtime(rx_tid);
    }

    let fwd_before = cpu_of(fwd_tid);
    let rx_before = cpu_of(rx_tid);
    let started = Instant::now();
    let sender = std::thread::Builder::new()
        .name("media-gen-tx".into())
        .spawn(move || {
            let tx_tid = tid_of_self();
            if rt {
                realtime(tx_tid);
            }
            let before = cpu_of(tx_tid);
            let sent = send(&streams, relay_addr, Duration::from_secs(secs), mode);
            (sent, cpu_of(tx_tid) - before)
        })
        .unwrap();
    let (sent, tx_cpu) = sender.join().unwrap();
    let elapsed = started.elapsed();
    std::thread::sleep(DRAIN);
    let fwd_cpu = cpu_of(fwd_tid) - fwd_before;
    let rx_cpu = cpu_of(rx_tid) - rx_before;
    stop_rx.store(true, Ordering::Relaxed);
    let received = receiver.join().unwrap();
    let dropped = match forwarder {
        Forwarder::Relay(relay) => {
            relay.stop();
            let mut text = String::new();
            encode(&mut text, &registry).unwrap();
            text.lines()
                .filter(|l| l.starts_with("securecomm_media_dropped_total{") && !l.ends_with(" 0"))
                .map(|l| l.trim_start_matches("securecomm_media_dropped_total"))
                .collect::<Vec<_>>()
                .join(", ")
        }
        Forwarder::Baseline(base) => {
            base.stop();
            String::new()
        }
    };
    Outcome {
        streams: n,
        mode,
        secs: elapsed.as_secs_f64(),
        sent,
        received,
        fwd_cpu,
        gen_cpu: tx_cpu + rx_cpu,
        dropped,
    }
}

enum Forwarder {
    Relay(MediaRelay),
    Baseline(Baseline),
}

fn bind(s: &Stream, relay: SocketAddr) {
    let mut out = Vec::new();
    encode_bind(s.token, [7; 8], &mut out);
    s.socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..3 {
        s.socket.send_to(&out, relay).unwrap();
        if let Ok((n, _)) = s.socket.recv_from(&mut buf)
            && matches!(parse_relay_packet(&buf[..n]), Ok(RelayPacket::Bound { .. }))
        {
            return;
        }
    }
    panic!("no BOUND");
}

/// Paces every stream at 50 packets per second with evenly spread phases; returns the number
/// of packets sent.
fn send(streams: &[Stream], relay: SocketAddr, duration: Duration, mode: Mode) -> u64 {
    let n = streams.len() as u64;
    let interval = Duration::from_nanos(1_000_000_000 / (PPS_PER_STREAM * n));
    let total = PPS_PER_STREAM * n * duration.as_secs();
    let mut seqs = vec![0u32; streams.len()];
    let mut payload = [0u8; PAYLOAD];
    let mut out = Vec::with_capacity(SEND_HEADER + PAYLOAD);
    let started = Instant::now();
    let mut j = 0u64;
    let mut failed = 0u64;
    while j < total {
        let now = started.elapsed();
        let due = (now.as_nanos() / interval.as_nanos()).min(u128::from(total)) as u64;
        while j < due {
            let i = (j % n) as usize;
            let s = &streams[i];
            payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
            payload[4..8].copy_from_slice(&seqs[i].to_be_bytes());
            seqs[i] += 1;
            match mode {
                Mode::Relay => encode_send(s.token, s.partner, &payload, &mut out),
                Mode::Baseline => encode_send([0; 16], s.partner, &payload, &mut out),
            }
            if s.socket.send_to(&out, relay).is_err() {
                failed += 1;
            }
            j += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    if failed > 0 {
        println!("generator: {failed} sends failed");
    }
    total - failed
}

/// Counts DATA packets per stream until `stop`; returns the number of distinct (stream,
/// sequence) pairs received.
fn receive(sockets: Vec<UdpSocket>, stop: Arc<AtomicBool>) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for s in sockets {
            s.set_nonblocking(true).unwrap();
            let s = tokio::net::UdpSocket::from_std(s).unwrap();
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let mut seen: Vec<u64> = Vec::new();
                let mut count = 0u64;
                loop {
                    let got =
                        tokio::time::timeout(Duration::from_millis(100), s.recv(&mut buf)).await;
                    match got {
                        Ok(Ok(len)) => {
                            let Ok(RelayPacket::Data { payload, .. }) =
                                parse_relay_packet(&buf[..len])
                            else {
                                continue;
                            };
                            let seq = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                            let (word, bit) = ((seq / 64) as usize, seq % 64);
                            if seen.len() <= word {
                                seen.resize(word + 1, 0);
                            }
                            if seen[word] & (1 << bit) == 0 {
                                seen[word] |= 1 << bit;
                                count += 1;
                            }
                        }
                        Ok(Err(_)) => {}
                        Err(_) => {
                            if stop.load(Ordering::Relaxed) {
                                return count;
                            }
                        }
                    }
                }
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    })
}

/// The baseline: the same socket and loop shape, forwarding by index into an address array.
struct Baseline {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Baseline {
    fn start(addrs: Vec<SocketAddr>) -> Self {
        let socket = big_socket();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(BASELINE_THREAD.into())
            .spawn(move || {
                let mut buf = vec![0u8; 2048];
                let mut out = Vec::with_capacity(2048);
                while !flag.load(Ordering::Relaxed) {
                    let Ok((len, _)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if len < SEND_HEADER {
                        continue;
                    }
                    let dest = u32::from_be_bytes(buf[17..21].try_into().unwrap()) as usize;
                    let Some(to) = addrs.get(dest) else { continue };
                    encode_data(dest as u32, &buf[SEND_HEADER..len], &mut out);
                    debug_assert_eq!(out.len(), DATA_HEADER + len - SEND_HEADER);
                    let _ = socket.send_to(&out, to);
                }
            })
            .unwrap();
        Self { addr, stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Threads and CPUs (Linux /proc and util-linux `taskset`)

fn pin(tid: u32, cpu: &str) {
    let ok = Command::new("taskset")
        .args(["-p", "-c", cpu, &tid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        println!("warning: could not pin thread {tid} to CPU {cpu} (taskset missing?)");
    }
}

fn realtime(tid: u32) {
    let ok = Command::new("chrt")
        .args(["-f", "-p", "10", &tid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        println!("warning: could not give thread {tid} real-time priority (not root?)");
    }
}

fn tid_of(name: &str) -> u32 {
    for _ in 0..50 {
        for entry in std::fs::read_dir("/proc/self/task").unwrap() {
            let entry = entry.unwrap();
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                return entry.file_name().to_string_lossy().parse().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no thread named {name}");
}

fn tid_of_self() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .parse()
        .unwrap()
}

/// Time the thread has spent on a CPU (first field of schedstat, nanoseconds).
fn cpu_of(tid: u32) -> Duration {
    let text =
        std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap_or_default();
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}
