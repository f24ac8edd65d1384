//! The allocation table: who holds which allocation in which room, where each is bound, and
//! each one's rate budget. Pure bookkeeping with the time passed in (no I/O, no clock reads),
//! shared by the swarm task (allocate, refresh, release) and the UDP thread (route, bind,
//! sweep) behind one mutex held only for lookups.
//!
//! Bounds: at most `max_allocations` entries, `max_allocations_per_peer` per libp2p peer and
//! `max_room_size` per room; every map below is keyed by something an entry owns, so none
//! outgrows the entry count.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use libp2p::PeerId;
use rand_core::{OsRng, RngCore};

use super::wire::{FANOUT, RoomId, Token};
use crate::config::MediaLimits;

/// An allocation never bound by a UDP packet expires this long after creation (or after the
/// idle timeout, whichever is longer): the client gets time to send its first BIND.
pub const UNBOUND_GRACE: Duration = Duration::from_secs(60);

/// Rate budgets hold one second of traffic: a client may send a second's worth at once (after
/// a stall), not more.
pub const BURST: Duration = Duration::from_secs(1);

/// Why an allocation request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The relay holds `max_allocations`.
    RelayFull,
    /// The peer holds `max_allocations_per_peer`.
    PeerQuota,
    /// The room holds `max_room_size`.
    RoomFull,
    /// No allocation has this token (never existed, released or expired).
    Unknown,
    /// The allocation belongs to another peer.
    NotOwner,
}

impl Refusal {
    /// The reason sent to the client and the metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::RelayFull => "relay_full",
            Self::PeerQuota => "peer_quota",
            Self::RoomFull => "room_full",
            Self::Unknown => "unknown_allocation",
            Self::NotOwner => "not_owner",
        }
    }
}

/// Why a UDP packet was dropped (the `reason` label of `securecomm_media_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Over the allocation's packet or byte budget.
    RateLimit,
    /// No live allocation has this token.
    UnknownToken,
    /// Not a SEND or BIND, or cut short.
    Malformed,
    /// The destination is unknown, in another room, not bound, or the sender itself; or a
    /// fan-out found no other bound allocation.
    NoDestination,
    /// Longer than a full SEND.
    Oversize,
    /// The socket refused to send a copy.
    SendError,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 6] = [
        Self::RateLimit,
        Self::UnknownToken,
        Self::Malformed,
        Self::NoDestination,
        Self::Oversize,
        Self::SendError,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::RateLimit => "rate_limit",
            Self::UnknownToken => "unknown_token",
            Self::Malformed => "malformed",
            Self::NoDestination => "no_destination",
            Self::Oversize => "oversize",
            Self::SendError => "send_error",
        }
    }
}

/// A granted allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// Its secret.
    pub token: Token,
    /// Its id in the room.
    pub alloc_id: u32,
    /// How long it lives unless refreshed.
    pub lifetime: Duration,
}

impl std::fmt::Debug for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Granted")
            .field("token", &format_args!("<secret>"))
            .field("alloc_id", &self.alloc_id)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// A token bucket in units of packets or bytes.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            level: burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * rate).min(burst);
        self.last = now;
    }
}

struct Alloc {
    token: Token,
    room: RoomId,
    owner: PeerId,
    created: Instant,
    expires: Instant,
    last_packet: Option<Instant>,
    addr: Option<SocketAddr>,
    packets: Bucket,
    bytes: Bucket,
}

/// The table. See the module docs.
pub struct Table {
    max_allocations: usize,
    max_per_peer: u32,
    max_room_size: usize,
    lifetime: Duration,
    idle_timeout: Duration,
    unbound_timeout: Duration,
    pps: f64,
    bps: f64,
    pps_burst: f64,
    bps_burst: f64,
    allocs: HashMap<u32, Alloc>,
    by_token: HashMap<Token, u32>,
    rooms: HashMap<RoomId, Vec<u32>>,
    per_peer: HashMap<PeerId, u32>,
    next_id: u32,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("allocations", &self.allocs.len())
            .field("rooms", &self.rooms.len())
            .finish_non_exhaustive()
    }
}

impl Table {
    /// An empty table with the operator's limits.
    pub fn new(limits: &MediaLimits) -> Self {
        let idle_timeout = Duration::from_secs(limits.idle_timeout_secs);
        let pps = f64::from(limits.packets_per_second);
        let bps = f64::from(limits.bytes_per_second);
        Self {
            max_allocations: limits.max_allocations as usize,
            max_per_peer: limits.max_allocations_per_peer,
            max_room_size: limits.max_room_size as usize,
            lifetime: Duration::from_secs(limits.lifetime_secs),
            idle_timeout,
            unbound_timeout: idle_timeout.max(UNBOUND_GRACE),
            pps,
            bps,
            pps_burst: pps * BURST.as_secs_f64(),
            bps_burst: bps * BURST.as_secs_f64(),
            allocs: HashMap::new(),
            by_token: HashMap::new(),
            rooms: HashMap::new(),
            per_peer: HashMap::new(),
            next_id: 1,
        }
    }

    /// Allocations held.
    pub fn len(&self) -> usize {
        self.allocs.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.allocs.is_empty()
    }

    /// Creates an allocation for `owner` in `room`, if every quota allows.
    pub fn allocate(
        &mut self,
        owner: PeerId,
        room: RoomId,
        now: Instant,
    ) -> Result<Granted, Refusal> {
        if self.allocs.len() >= self.max_allocations {
            return Err(Refusal::RelayFull);
        }
        if self.per_peer.get(&owner).copied().unwrap_or(0) >= self.max_per_peer {
            return Err(Refusal::PeerQuota);
        }
        if self.rooms.get(&room).map_or(0, Vec::len) >= self.max_room_size {
            return Err(Refusal::RoomFull);
        }
        let mut token = [0u8; 16];
        loop {
            OsRng.fill_bytes(&mut token);
            if !self.by_token.contains_key(&token) {
                break;
            }
        }
        let alloc_id = self.fresh_id();
        self.allocs.insert(
            alloc_id,
            Alloc {
                token,
                room,
                owner,
                created: now,
                expires: now + self.lifetime,
                last_packet: None,
                addr: None,
                packets: Bucket::full(self.pps_burst, now),
                bytes: Bucket::full(self.bps_burst, now),
            },
        );
        self.by_token.insert(token, alloc_id);
        self.rooms.entry(room).or_default().push(alloc_id);
        *self.per_peer.entry(owner).or_default() += 1;
        Ok(Granted {
            token,
            alloc_id,
            lifetime: self.lifetime,
        })
    }

    /// The next id that is not in use and not [`FANOUT`] (ids are not secret; the token is).
    fn fresh_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if id != FANOUT && id != 0 && !self.allocs.contains_key(&id) {
                return id;
            }
        }
    }

    fn owned(&self, owner: &PeerId, token: &Token, now: Instant) -> Result<u32, Refusal> {
        let id = *self.by_token.get(token).ok_or(Refusal::Unknown)?;
        let a = self.allocs.get(&id).ok_or(Refusal::Unknown)?;
        if !self.live(a, now) {
            return Err(Refusal::Unknown);
        }
        if a.owner != *owner {
            return Err(Refusal::NotOwner);
        }
        Ok(id)
    }

    /// Extends `owner`'s allocation to a full lifetime from now.
    pub fn refresh(
        &mut self,
        owner: &PeerId,
        token: &Token,
        now: Instant,
    ) -> Result<Duration, Refusal> {
        let id = self.owned(owner, token, now)?;
        let lifetime = self.lifetime;
        if let Some(a) = self.allocs.get_mut(&id) {
            a.expires = now + lifetime;
        }
        Ok(lifetime)
    }

    /// Ends `owner`'s allocation.
    pub fn release(&mut self, owner: &PeerId, token: &Token, now: Instant) -> Result<(), Refusal> {
        let id = self.owned(owner, token, now)?;
        self.remove(id);
        Ok(())
    }

    fn live(&self, a: &Alloc, now: Instant) -> bool {
        let idle_deadline = match a.last_packet {
            Some(t) => t + self.idle_timeout,
            None => a.created + self.unbound_timeout,
        };
        now < a.expires && now < idle_deadline
    }

    fn remove(&mut self, id: u32) {
        let Some(a) = self.allocs.remove(&id) else {
            return;
        };
        self.by_token.remove(&a.token);
        if let Some(members) = self.rooms.get_mut(&a.room) {
            members.retain(|m| *m != id);
            if members.is_empty() {
                self.rooms.remove(&a.room);
            }
        }
        if let Some(n) = self.per_peer.get_mut(&a.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(&a.owner);
            }
        }
    }

    /// Removes every allocation past its lifetime or idle timeout; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let dead: Vec<u32> = self
            .allocs
            .iter()
            .filter(|(_, a)| !self.live(a, now))
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            self.remove(*id);
        }
        dead.len()
    }

    /// Authenticates a packet of `len` bytes by its token, charges the rate budget, and binds
    /// the allocation to `src` (the latest source wins). Returns the allocation id.
    pub fn admit(
        &mut self,
        token: &Token,
        src: SocketAddr,
        len: usize,
        now: Instant,
    ) -> Result<u32, DropReason> {
        let id = *self.by_token.get(token).ok_or(DropReason::UnknownToken)?;
        let (pps, bps, pps_burst, bps_burst) = (self.pps, self.bps, self.pps_burst, self.bps_burst);
        let live = match self.allocs.get(&id) {
            Some(a) => self.live(a, now),
            None => false,
        };
        let a = self.allocs.get_mut(&id).ok_or(DropReason::UnknownToken)?;
        if !live {
            return Err(DropReason::UnknownToken);
        }
        a.packets.refill(pps, pps_burst, now);
        a.bytes.refill(bps, bps_burst, now);
        let bytes = len as f64;
        if a.packets.level < 1.0 || a.bytes.level < bytes {
            return Err(DropReason::RateLimit);
        }
        a.packets.level -= 1.0;
        a.bytes.level -= bytes;
        a.addr = Some(src);
        a.last_packet = Some(now);
        Ok(id)
    }

    /// Admits a SEND from `src` and fills `out` with the addresses to forward it to: `dest`
    /// if it is another live, bound allocation of the sender's room, or with [`FANOUT`] every
    /// such allocation. Returns the sender's id.
    pub fn route(
        &mut self,
        token: &Token,
        dest: u32,
        src: SocketAddr,
        len: usize,
        now: Instant,
        out: &mut Vec<SocketAddr>,
    ) -> Result<u32, DropReason> {
        out.clear();
        let from = self.admit(token, src, len, now)?;
        let room = match self.allocs.get(&from) {
            Some(a) => a.room,
            None => return Err(DropReason::UnknownToken),
        };
        let mut push = |id: u32| {
            if id == from {
                return;
            }
            if let Some(a) = self.allocs.get(&id)
                && a.room == room
                && let Some(addr) = a.addr
                && self.live(a, now)
            {
                out.push(addr);
            }
        };
        if dest == FANOUT {
            if let Some(members) = self.rooms.get(&room) {
                for id in members {
                    push(*id);
                }
            }
        } else {
            push(dest);
        }
        if out.is_empty() {
            return Err(DropReason::NoDestination);
        }
        Ok(from)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits() -> MediaLimits {
        MediaLimits {
            max_allocations: 5,
            max_allocations_per_peer: 2,
            max_room_size: 3,
            lifetime_secs: 100,
            idle_timeout_secs: 10,
            packets_per_second: 10,
            bytes_per_second: 10_000,
            ..MediaLimits::default()
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn quotas_are_exact() {
        let mut t = Table::new(&limits());
        let now = Instant::now();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        t.allocate(a, [1; 32], now).unwrap();
        t.allocate(a, [1; 32], now).unwrap();
        assert_eq!(t.allocate(a, [2; 32], now), Err(Refusal::PeerQuota));
        t.allocate(b, [1; 32], now).unwrap();
        assert_eq!(t.allocate(b, [1; 32], now), Err(Refusal::RoomFull));
        t.allocate(b, [2; 32], now).unwrap();
        t.allocate(c, [2; 32], now).unwrap();
        assert_eq!(t.allocate(c, [3; 32], now), Err(Refusal::RelayFull));
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn refresh_and_release_only_by_the_owner() {
        let mut t = Table::new(&limits());
        let now = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        let g = t.allocate(a, [1; 32], now).unwrap();
        assert_eq!(t.refresh(&b, &g.token, now), Err(Refusal::NotOwner));
        assert_eq!(t.release(&b, &g.token, now), Err(Refusal::NotOwner));
        assert_eq!(t.refresh(&a, &[0; 16], now), Err(Refusal::Unknown));
        // Refreshing moves the end of the lifetime.
        let later = now + Duration::from_secs(90);
        for s in (0..90).step_by(5).chain([89]) {
            t.admit(&g.token, addr(1), 10, now + Duration::from_secs(s))
                .unwrap();
        }
        assert_eq!(t.refresh(&a, &g.token, later), Ok(Duration::from_secs(100)));
        // Past the first lifetime (100 s), within the idle timeout of the last packet.
        t.admit(&g.token, addr(1), 10, later + Duration::from_secs(5))
            .unwrap();
        t.admit(&g.token, addr(1), 10, later + Duration::from_secs(14))
            .unwrap();
        assert_eq!(t.sweep(later + Duration::from_secs(14)), 0);
        t.release(&a, &g.token, now).unwrap();
        assert!(t.is_empty());
        assert!(t.rooms.is_empty() && t.per_peer.is_empty() && t.by_token.is_empty());
        assert_eq!(
            t.admit(&g.token, addr(1), 10, now),
            Err(DropReason::UnknownToken)
        );
    }

    #[test]
    fn routing_stays_in_the_room_and_needs_a_binding() {
        let mut t = Table::new(&limits());
        let now = Instant::now();
        let x = t.allocate(PeerId::random(), [1; 32], now).unwrap();
        let y = t.allocate(PeerId::random(), [1; 32], now).unwrap();
        let z = t.allocate(PeerId::random(), [2; 32], now).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            t.route(&x.token, y.alloc_id, addr(1), 10, now, &mut out),
            Err(DropReason::NoDestination)
        );
        t.admit(&y.token, addr(2), 10, now).unwrap();
        t.admit(&z.token, addr(3), 10, now).unwrap();
        assert_eq!(
            t.route(&x.token, y.alloc_id, addr(1), 10, now, &mut out),
            Ok(x.alloc_id)
        );
        assert_eq!(out, vec![addr(2)]);
        assert_eq!(
            t.route(&x.token, z.alloc_id, addr(1), 10, now, &mut out),
            Err(DropReason::NoDestination)
        );
        assert_eq!(
            t.route(&x.token, x.alloc_id, addr(1), 10, now, &mut out),
            Err(DropReason::NoDestination)
        );
        t.route(&x.token, FANOUT, addr(1), 10, now, &mut out)
            .unwrap();
        assert_eq!(out, vec![addr(2)]);
        // Latest source wins.
        t.admit(&y.token, addr(9), 10, now).unwrap();
        t.route(&x.token, FANOUT, addr(1), 10, now, &mut out)
            .unwrap();
        assert_eq!(out, vec![addr(9)]);
    }

    #[test]
    fn rate_limits_and_refill() {
        let mut t = Table::new(&limits());
        let now = Instant::now();
        let g = t.allocate(PeerId::random(), [1; 32], now).unwrap();
        for _ in 0..10 {
            t.admit(&g.token, addr(1), 10, now).unwrap();
        }
        assert_eq!(
            t.admit(&g.token, addr(1), 10, now),
            Err(DropReason::RateLimit)
        );
        let later = now + Duration::from_millis(100);
        t.admit(&g.token, addr(1), 10, later).unwrap();
        assert_eq!(
            t.admit(&g.token, addr(1), 10, later),
            Err(DropReason::RateLimit)
        );
        // Bytes: 10 000 per second; a fresh allocation can send 10 000 bytes at once, no more.
        let g = t.allocate(PeerId::random(), [1; 32], now).unwrap();
        t.admit(&g.token, addr(2), 6_000, now).unwrap();
        assert_eq!(
            t.admit(&g.token, addr(2), 6_000, now),
            Err(DropReason::RateLimit)
        );
        t.admit(&g.token, addr(2), 4_000, now).unwrap();
    }

    #[test]
    fn idle_and_lifetime_expiry() {
        let mut t = Table::new(&limits());
        let now = Instant::now();
        let unbound = t.allocate(PeerId::random(), [1; 32], now).unwrap();
        let bound = t.allocate(PeerId::random(), [1; 32], now).unwrap();
        t.admit(&bound.token, addr(1), 10, now).unwrap();
        // Bound: idle after 10 s. Unbound: only after the 60 s grace.
        assert_eq!(t.sweep(now + Duration::from_secs(10)), 1);
        assert_eq!(
            t.admit(&bound.token, addr(1), 10, now),
            Err(DropReason::UnknownToken)
        );
        assert_eq!(t.sweep(now + Duration::from_secs(59)), 0);
        assert_eq!(t.sweep(now + Duration::from_secs(60)), 1);
        let _ = unbound;
        // Lifetime ends even with traffic.
        let g = t.allocate(PeerId::random(), [1; 32], now).unwrap();
        for s in (0..100).step_by(5) {
            t.admit(&g.token, addr(1), 10, now + Duration::from_secs(s))
                .unwrap();
        }
        assert_eq!(
            t.admit(&g.token, addr(1), 10, now + Duration::from_secs(100)),
            Err(DropReason::UnknownToken)
        );
        assert_eq!(t.sweep(now + Duration::from_secs(100)), 1);
        assert!(t.is_empty());
    }
}
