//! The UDP side of the media relay: one socket, one thread, a hot loop.
//!
//! The thread blocks in `recv_from` (with a [`TICK`] timeout so it notices a stop request and
//! sweeps expired allocations even without traffic), parses each datagram once, takes the
//! table's mutex for the lookups only (authenticate the token, charge the rate budget, bind
//! the source address, collect the destination addresses into a reused buffer), releases it,
//! and sends one DATA copy per destination with plain `send_to`. Nothing is allocated per
//! packet. The swarm task calls [`MediaRelay::handle`] for allocation requests, which takes the
//! same mutex briefly.
//!
//! One `recvfrom` and one `sendto` per packet measured enough for issue 9's load on one core
//! (see `benches/media_relay.rs`), so there is no `recvmmsg`/`sendmmsg` and no `unsafe`. The
//! socket asks for [`SOCKET_BUFFER`] bytes of receive and send buffer (the kernel caps it at
//! `net.core.rmem_max`/`wmem_max`) so a scheduling hiccup of a few milliseconds does not
//! overflow it at tens of thousands of packets per second.
//!
//! Nothing here logs a payload, a token or a room id; drops are counted by reason
//! ([`MediaMetrics`]), never logged per packet.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use libp2p::PeerId;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use socket2::{Domain, Protocol, Socket, Type};

use super::{
    table::{DropReason, Table},
    wire::{
        ClientPacket, MAX_PACKET, MediaRequest, MediaResponse, MediaWireError, encode_bound,
        encode_data, parse_client_packet,
    },
};
use crate::config::MediaLimits;

/// How long `recv_from` waits before the loop checks for a stop request and sweeps.
pub const TICK: Duration = Duration::from_millis(100);
/// How often expired allocations are removed (packets from or to an expired allocation are
/// refused at once anyway).
pub const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// Receive and send buffer asked of the kernel.
pub const SOCKET_BUFFER: usize = 4 << 20;
/// Name of the UDP thread (what `top -H` and `/proc/self/task/*/comm` show).
pub const THREAD_NAME: &str = "media-relay";

type Labels = [(&'static str, &'static str); 1];

/// Media relay counters in the relay's Prometheus registry: counts only, no peer ids,
/// addresses, rooms or tokens.
#[derive(Debug, Clone, Default)]
pub struct MediaMetrics {
    allocations: Gauge,
    packets_in: Counter,
    packets_forwarded: Counter,
    bytes_forwarded: Counter,
    dropped: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
}

impl MediaMetrics {
    /// Registers the counters under `securecomm_media_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("securecomm_media");
        r.register("allocations", "Allocations held", m.allocations.clone());
        r.register("packets_in", "UDP datagrams received", m.packets_in.clone());
        r.register(
            "packets_forwarded",
            "DATA copies sent (a fan-out counts once per destination)",
            m.packets_forwarded.clone(),
        );
        r.register(
            "bytes_forwarded",
            "Bytes of DATA copies sent",
            m.bytes_forwarded.clone(),
        );
        r.register(
            "dropped",
            "UDP datagrams dropped, by reason",
            m.dropped.clone(),
        );
        r.register(
            "requests",
            "Allocation requests served, by kind",
            m.requests.clone(),
        );
        r.register(
            "refusals",
            "Allocation requests refused, by reason",
            m.refusals.clone(),
        );
        for reason in DropReason::ALL {
            let _ = m.dropped.get_or_create(&[("reason", reason.label())]);
        }
        m
    }

    /// The counter of allocation requests that could not be decoded or were cut off.
    pub fn malformed(&self) -> Counter {
        self.refusals
            .get_or_create(&[("reason", "malformed")])
            .clone()
    }

    fn dropped(&self, reason: DropReason) -> Counter {
        self.dropped
            .get_or_create(&[("reason", reason.label())])
            .clone()
    }
}

/// A running media relay: the UDP thread and the allocation table it shares with the swarm.
/// Dropping it asks the thread to stop (it exits within [`TICK`]); [`MediaRelay::stop`] also
/// waits for it.
#[derive(Debug)]
pub struct MediaRelay {
    table: Arc<Mutex<Table>>,
    local_addr: SocketAddr,
    lifetime_secs: u32,
    metrics: MediaMetrics,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    // The table stays consistent between calls, so a panic elsewhere does not poison it.
    table.lock().unwrap_or_else(|e| e.into_inner())
}

fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps both at its sysctl maximum.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(TICK))?;
    Ok(socket)
}

impl MediaRelay {
    /// Binds `listen` and starts the UDP thread.
    pub fn start(
        limits: &MediaLimits,
        listen: SocketAddr,
        metrics: MediaMetrics,
    ) -> io::Result<Self> {
        let socket = bind(listen)?;
        let local_addr = socket.local_addr()?;
        let table = Arc::new(Mutex::new(Table::new(limits)));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            socket,
            table: Arc::clone(&table),
            stop: Arc::clone(&stop),
            metrics: metrics.clone(),
            counters: Counters::new(&metrics),
        };
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || worker.run())?;
        tracing::info!(addr = %local_addr, "media relay listening");
        Ok(Self {
            table,
            local_addr,
            lifetime_secs: u32::try_from(limits.lifetime_secs).unwrap_or(u32::MAX),
            metrics,
            stop,
            thread: Some(thread),
        })
    }

    /// The relay's counters (shared with the UDP thread).
    pub fn metrics(&self) -> MediaMetrics {
        self.metrics.clone()
    }

    /// The bound UDP address (its port is what allocations report).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Answers one allocation request from `peer` (the libp2p connection's peer id).
    pub fn handle(&self, peer: PeerId, request: MediaRequest) -> MediaResponse {
        let now = Instant::now();
        let kind = match request {
            MediaRequest::Allocate { .. } => "allocate",
            MediaRequest::Refresh { .. } => "refresh",
            MediaRequest::Release { .. } => "release",
        };
        self.metrics.requests.get_or_create(&[("kind", kind)]).inc();
        let mut table = lock(&self.table);
        let result = match request {
            MediaRequest::Allocate { room } => {
                table
                    .allocate(peer, room, now)
                    .map(|g| MediaResponse::Allocated {
                        token: g.token,
                        alloc_id: g.alloc_id,
                        udp_port: self.local_addr.port(),
                        lifetime_secs: self.lifetime_secs,
                    })
            }
            MediaRequest::Refresh { token } => {
                table
                    .refresh(&peer, &token, now)
                    .map(|_| MediaResponse::Refreshed {
                        lifetime_secs: self.lifetime_secs,
                    })
            }
            MediaRequest::Release { token } => table
                .release(&peer, &token, now)
                .map(|()| MediaResponse::Released),
        };
        self.metrics.allocations.set(table.len() as i64);
        drop(table);
        match result {
            Ok(response) => {
                tracing::debug!(%peer, kind, "media request served");
                response
            }
            Err(refusal) => {
                tracing::debug!(%peer, kind, reason = refusal.reason(), "media request refused");
                self.metrics
                    .refusals
                    .get_or_create(&[("reason", refusal.reason())])
                    .inc();
                MediaResponse::refused(refusal.reason())
            }
        }
    }

    /// Stops the UDP thread and waits for it (at most about [`TICK`]).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the thread now rather than at its next tick.
        let wake = match self.local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let any: SocketAddr = match wake {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        if let Ok(s) = UdpSocket::bind(any) {
            let _ = s.send_to(&[], SocketAddr::new(wake, self.local_addr.port()));
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("media relay thread panicked");
        }
    }
}

impl Drop for MediaRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Counter handles resolved once, so the hot loop never looks up a label.
struct Counters {
    packets_in: Counter,
    forwarded: Counter,
    bytes: Counter,
    dropped: [Counter; DropReason::ALL.len()],
}

impl Counters {
    fn new(m: &MediaMetrics) -> Self {
        Self {
            packets_in: m.packets_in.clone(),
            forwarded: m.packets_forwarded.clone(),
            bytes: m.bytes_forwarded.clone(),
            dropped: DropReason::ALL.map(|r| m.dropped(r)),
        }
    }

    fn dropped(&self, reason: DropReason) {
        if let Some(c) = self.dropped.get(reason as usize) {
            c.inc();
        }
    }
}

struct Worker {
    socket: UdpSocket,
    table: Arc<Mutex<Table>>,
    stop: Arc<AtomicBool>,
    metrics: MediaMetrics,
    counters: Counters,
}

impl Worker {
    fn run(self) {
        // Larger than any valid packet, so an oversized datagram is seen as such.
        let mut buf = vec![0u8; 2048];
        let mut out = Vec::with_capacity(MAX_PACKET);
        let mut dests = Vec::with_capacity(64);
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        loop {
            let received = self.socket.recv_from(&mut buf);
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let now = Instant::now();
            match received {
                Ok((n, src)) => {
                    let packet = buf.get(..n).unwrap_or_default();
                    self.packet(packet, src, now, &mut out, &mut dests);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "media socket receive failed");
                }
            }
            if now >= next_sweep {
                let mut table = lock(&self.table);
                let removed = table.sweep(now);
                self.metrics.allocations.set(table.len() as i64);
                drop(table);
                if removed > 0 {
                    tracing::debug!(removed, "media allocations expired");
                }
                next_sweep = now + SWEEP_EVERY;
            }
        }
        tracing::debug!("media relay thread stopped");
    }

    fn packet(
        &self,
        packet: &[u8],
        src: SocketAddr,
        now: Instant,
        out: &mut Vec<u8>,
        dests: &mut Vec<SocketAddr>,
    ) {
        let c = &self.counters;
        c.packets_in.inc();
        match parse_client_packet(packet) {
            Err(MediaWireError::Oversize(_)) => c.dropped(DropReason::Oversize),
            Err(_) => c.dropped(DropReason::Malformed),
            Ok(ClientPacket::Send {
                token,
                dest,
                payload,
            }) => {
                let routed = lock(&self.table).route(&token, dest, src, packet.len(), now, dests);
                let from = match routed {
                    Ok(from) => from,
                    Err(reason) => return c.dropped(reason),
                };
                encode_data(from, payload, out);
                for d in dests.iter() {
                    match self.socket.send_to(out, *d) {
                        Ok(n) => {
                            c.forwarded.inc();
                            c.bytes.inc_by(n as u64);
                        }
                        Err(_) => c.dropped(DropReason::SendError),
                    }
                }
            }
            Ok(ClientPacket::Bind { token, txid }) => {
                let admitted = lock(&self.table).admit(&token, src, packet.len(), now);
                if let Err(reason) = admitted {
                    return c.dropped(reason);
                }
                encode_bound(&txid, src, out);
                if self.socket.send_to(out, src).is_err() {
                    c.dropped(DropReason::SendError);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn drop_reason_index_matches_its_position() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn starts_answers_and_stops() {
        let mut registry = Registry::default();
        let metrics = MediaMetrics::register(&mut registry);
        let relay = MediaRelay::start(
            &MediaLimits::default(),
            "127.0.0.1:0".parse().unwrap(),
            metrics,
        )
        .unwrap();
        assert_ne!(relay.local_addr().port(), 0);
        let peer = PeerId::random();
        let MediaResponse::Allocated {
            token, udp_port, ..
        } = relay.handle(peer, MediaRequest::Allocate { room: [1; 32] })
        else {
            panic!("not allocated")
        };
        assert_eq!(udp_port, relay.local_addr().port());
        assert_eq!(
            relay.handle(PeerId::random(), MediaRequest::Release { token }),
            MediaResponse::refused("not_owner")
        );
        assert_eq!(
            relay.handle(peer, MediaRequest::Release { token }),
            MediaResponse::Released
        );
        let started = Instant::now();
        relay.stop();
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
