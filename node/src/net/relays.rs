//! The node's book of relays: which ones it knows, which ones it holds a reservation on, and
//! when it may try a failed one again. Pure bookkeeping, no I/O: the event loop feeds it what
//! the swarm reports and asks it what to do next, so every rule here is unit-tested.
//!
//! Rules:
//! * relays come from the configuration (`--relay`, never evicted) and from discovery (the
//!   Kademlia routing table of SecureComm's DHT, where only relays run in server mode);
//! * at most [`MAX_KNOWN_RELAYS`] relays, each with at most [`MAX_RELAY_ADDRS`] addresses; when
//!   full, a newly discovered relay replaces the discovered, idle relay that failed most, or is
//!   dropped if there is none;
//! * the node holds (or is requesting) reservations on `target` relays; candidates are tried
//!   configured first, then by fewest failures, then by peer id;
//! * a relay whose reservation fails, expires or whose connection closes waits
//!   `min(2^failures s, 60 s)` before it is tried again, except that a reservation that was
//!   held is asked for again at once if no other relay can take its place; a request that
//!   gets no answer in
//!   [`RESERVE_TIMEOUT`] is cancelled and counted as a failure.

use std::collections::BTreeMap;
use std::time::Duration;

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

/// Most relays the node remembers (configured ones included).
pub const MAX_KNOWN_RELAYS: usize = 32;
/// Most addresses remembered per relay.
pub const MAX_RELAY_ADDRS: usize = 4;
/// How long a reservation request may stay unanswered.
pub const RESERVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait before a failed relay is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where the node stands with one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayState {
    /// Known, no reservation (possibly waiting out a backoff).
    Idle,
    /// A reservation was requested and is not answered yet.
    Reserving,
    /// The relay accepted our reservation: we are reachable through it.
    Reserved,
}

/// One relay as [`Client::relays`](super::Client::relays) reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayInfo {
    /// The relay.
    #[serde(serialize_with = "super::event_loop::ser_display")]
    pub peer: PeerId,
    /// Its known addresses (each ending in `/p2p/<relay>`).
    #[serde(serialize_with = "super::event_loop::ser_display_vec")]
    pub addrs: Vec<Multiaddr>,
    /// Our reservation state with it.
    pub state: RelayState,
    /// Whether it came from the configuration (else from discovery).
    pub configured: bool,
    /// Failures since its last accepted reservation.
    pub failures: u32,
}

#[derive(Debug)]
struct Entry {
    addrs: Vec<Multiaddr>,
    configured: bool,
    failures: u32,
    retry_at: Instant,
    /// Which address to try next (rotates on failure).
    next_addr: usize,
    state: Slot,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Idle,
    Reserving(ListenerId, Instant),
    Reserved(ListenerId),
}

impl Entry {
    fn active(&self) -> bool {
        !matches!(self.state, Slot::Idle)
    }
}

/// The relays a node knows and its reservations on them.
#[derive(Debug)]
pub struct RelayBook {
    me: PeerId,
    target: usize,
    relays: BTreeMap<PeerId, Entry>,
}

/// The relay's peer id, if the address ends in `/p2p/<id>`.
pub fn relay_peer(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

/// `addr` usable as a relay address: no circuit in it, ending in `/p2p/<peer>`.
fn normalize(peer: PeerId, addr: &Multiaddr) -> Option<Multiaddr> {
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return None;
    }
    match relay_peer(addr) {
        Some(p) if p == peer => Some(addr.clone()),
        Some(_) => None,
        None => Some(addr.clone().with(Protocol::P2p(peer))),
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF)
}

impl RelayBook {
    /// A book for node `me` that wants `target` reservations (at least one), starting from the
    /// configured relay addresses (those without `/p2p/<id>` are skipped and returned).
    pub fn new(
        me: PeerId,
        target: usize,
        configured: &[Multiaddr],
        now: Instant,
    ) -> (Self, Vec<Multiaddr>) {
        let mut book = Self {
            me,
            target: target.max(1),
            relays: BTreeMap::new(),
        };
        let mut skipped = Vec::new();
        for addr in configured {
            match relay_peer(addr) {
                Some(peer) if peer != me && book.relays.len() < MAX_KNOWN_RELAYS => {
                    book.add(peer, std::slice::from_ref(addr), true, now);
                }
                _ => skipped.push(addr.clone()),
            }
        }
        (book, skipped)
    }

    /// Adds addresses for a relay, creating it if needed. Returns whether the relay is new.
    fn add(&mut self, peer: PeerId, addrs: &[Multiaddr], configured: bool, now: Instant) -> bool {
        let usable: Vec<Multiaddr> = addrs.iter().filter_map(|a| normalize(peer, a)).collect();
        if usable.is_empty() {
            return false;
        }
        let is_new = !self.relays.contains_key(&peer);
        let e = self.relays.entry(peer).or_insert_with(|| Entry {
            addrs: Vec::new(),
            configured,
            failures: 0,
            retry_at: now,
            next_addr: 0,
            state: Slot::Idle,
        });
        e.configured |= configured;
        for a in usable {
            if e.addrs.len() >= MAX_RELAY_ADDRS {
                break;
            }
            if !e.addrs.contains(&a) {
                e.addrs.push(a);
            }
        }
        is_new
    }

    /// Records a relay found by discovery. Returns whether it was new to the book.
    pub fn learn(&mut self, peer: PeerId, addrs: &[Multiaddr], now: Instant) -> bool {
        if peer == self.me {
            return false;
        }
        if !self.relays.contains_key(&peer) && self.relays.len() >= MAX_KNOWN_RELAYS {
            // Evict the discovered idle relay that failed most (ties: the one that waits longest).
            let victim = self
                .relays
                .iter()
                .filter(|(_, e)| !e.configured && !e.active() && e.failures > 0)
                .max_by_key(|(_, e)| (e.failures, e.retry_at))
                .map(|(p, _)| *p);
            match victim {
                Some(v) => {
                    self.relays.remove(&v);
                }
                None => return false,
            }
        }
        self.add(peer, addrs, false, now)
    }

    /// Adds a relay the user configured at run time (the app's settings): like a relay from
    /// the configuration, it is preferred and never evicted. When the book is full, the
    /// discovered idle relay that failed most makes room. Returns whether it is in the book.
    pub fn configure(&mut self, addr: &Multiaddr, now: Instant) -> bool {
        let Some(peer) = relay_peer(addr).filter(|p| *p != self.me) else {
            return false;
        };
        if !self.relays.contains_key(&peer) && self.relays.len() >= MAX_KNOWN_RELAYS {
            let victim = self
                .relays
                .iter()
                .filter(|(_, e)| !e.configured && !e.active())
                .max_by_key(|(_, e)| (e.failures, e.retry_at))
                .map(|(p, _)| *p);
            match victim {
                Some(v) => {
                    self.relays.remove(&v);
                }
                None => return false,
            }
        }
        self.add(peer, std::slice::from_ref(addr), true, now);
        self.relays.contains_key(&peer)
    }

    /// Forgets a relay (the user removed it). Returns the listener of its reservation or
    /// request, for the caller to close.
    pub fn forget(&mut self, peer: &PeerId) -> Option<ListenerId> {
        match self.relays.remove(peer)?.state {
            Slot::Idle => None,
            Slot::Reserving(l, _) | Slot::Reserved(l) => Some(l),
        }
    }

    /// The relays we hold or are requesting a reservation on.
    fn active(&self) -> usize {
        self.relays.values().filter(|e| e.active()).count()
    }

    /// Whether the node has fewer reservations (held or requested) than it wants.
    pub fn short(&self) -> bool {
        self.active() < self.target
    }

    /// Whether some relay could be tried now or soon (none known, or all waiting: discover more).
    pub fn has_candidate(&self, now: Instant) -> bool {
        self.relays
            .values()
            .any(|e| !e.active() && e.retry_at <= now)
    }

    /// The next relay to request a reservation on, with the address to use, if the node is
    /// short of its target and some relay is not waiting out a backoff. The caller must answer
    /// with [`started`](Self::started) or [`failed`](Self::failed).
    pub fn next_attempt(&mut self, now: Instant) -> Option<(PeerId, Multiaddr)> {
        if !self.short() {
            return None;
        }
        let (peer, e) = self
            .relays
            .iter()
            .filter(|(_, e)| !e.active() && e.retry_at <= now)
            .min_by_key(|(p, e)| (!e.configured, e.failures, p.to_bytes()))?;
        let addr = e.addrs.get(e.next_addr % e.addrs.len().max(1))?.clone();
        Some((*peer, addr))
    }

    /// A reservation request on `peer` started as listener `listener`.
    pub fn started(&mut self, peer: PeerId, listener: ListenerId, now: Instant) {
        if let Some(e) = self.relays.get_mut(&peer) {
            e.state = Slot::Reserving(listener, now);
        }
    }

    /// A reservation attempt on `peer` failed before it started, or its listener closed.
    pub fn failed(&mut self, peer: PeerId, now: Instant) {
        if let Some(e) = self.relays.get_mut(&peer) {
            e.state = Slot::Idle;
            e.failures = e.failures.saturating_add(1);
            e.retry_at = now + backoff(e.failures);
            e.next_addr = e.next_addr.wrapping_add(1);
        }
    }

    /// The relay accepted (or renewed) our reservation. Returns whether it was not already
    /// counted as reserved.
    pub fn accepted(&mut self, peer: PeerId) -> bool {
        match self.relays.get_mut(&peer) {
            Some(e) => match e.state {
                Slot::Reserving(l, _) => {
                    e.state = Slot::Reserved(l);
                    e.failures = 0;
                    true
                }
                Slot::Reserved(_) | Slot::Idle => false,
            },
            None => false,
        }
    }

    /// A listener closed; if it was one of our reservations, the relay goes back to idle with a
    /// backoff. Returns the relay and whether it had been reserved.
    pub fn listener_closed(
        &mut self,
        listener: ListenerId,
        now: Instant,
    ) -> Option<(PeerId, bool)> {
        let (peer, was_reserved) = self.relays.iter().find_map(|(p, e)| match e.state {
            Slot::Reserving(l, _) if l == listener => Some((*p, false)),
            Slot::Reserved(l) if l == listener => Some((*p, true)),
            _ => None,
        })?;
        self.failed(peer, now);
        // A reservation that worked and then ended (its connection died with a NAT mapping or
        // an address change) is asked for again at once when no other relay could take its
        // place now: the relay is most likely fine, and every member that reaches us through
        // it waits meanwhile (netsim: 2.7 s of a 20-member guild's repair after a NAT flush).
        // If it is gone, that attempt fails and the backoff applies.
        let alternative = self
            .relays
            .iter()
            .any(|(p, e)| *p != peer && !e.active() && e.retry_at <= now);
        if was_reserved
            && !alternative
            && let Some(e) = self.relays.get_mut(&peer)
        {
            e.retry_at = now;
        }
        Some((peer, was_reserved))
    }

    /// Listeners of reservation requests unanswered for [`RESERVE_TIMEOUT`]: the caller removes
    /// them, and their closing counts as a failure.
    pub fn timed_out(&self, now: Instant) -> Vec<ListenerId> {
        self.relays
            .values()
            .filter_map(|e| match e.state {
                Slot::Reserving(l, since) if now.duration_since(since) >= RESERVE_TIMEOUT => {
                    Some(l)
                }
                _ => None,
            })
            .collect()
    }

    /// The relays we hold a reservation on.
    pub fn reserved(&self) -> Vec<PeerId> {
        self.relays
            .iter()
            .filter(|(_, e)| matches!(e.state, Slot::Reserved(_)))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether `peer` is in the book.
    pub fn knows(&self, peer: &PeerId) -> bool {
        self.relays.contains_key(peer)
    }

    /// Every known relay, reserved ones first.
    pub fn snapshot(&self) -> Vec<RelayInfo> {
        let mut v: Vec<RelayInfo> = self
            .relays
            .iter()
            .map(|(p, e)| RelayInfo {
                peer: *p,
                addrs: e.addrs.clone(),
                state: match e.state {
                    Slot::Idle => RelayState::Idle,
                    Slot::Reserving(..) => RelayState::Reserving,
                    Slot::Reserved(_) => RelayState::Reserved,
                },
                configured: e.configured,
                failures: e.failures,
            })
            .collect();
        v.sort_by_key(|r| match r.state {
            RelayState::Reserved => 0,
            RelayState::Reserving => 1,
            RelayState::Idle => 2,
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16, peer: PeerId) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
            .parse()
            .unwrap()
    }

    fn bare(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn relays_configured_at_run_time_are_preferred_kept_and_forgotten() {
        let now = Instant::now();
        let me = PeerId::random();
        let (mut b, _) = RelayBook::new(me, 1, &[], now);
        let found: Vec<PeerId> = (0..MAX_KNOWN_RELAYS).map(|_| PeerId::random()).collect();
        for (i, p) in found.iter().enumerate() {
            assert!(b.learn(*p, &[bare(i as u16)], now));
            b.failed(*p, now);
        }
        let user = PeerId::random();
        assert!(
            b.configure(&addr(9, user), now),
            "a failed discovered relay makes room"
        );
        assert_eq!(b.snapshot().len(), MAX_KNOWN_RELAYS);
        assert!(!b.configure(&bare(9), now), "no peer id");
        assert!(!b.configure(&addr(9, me), now), "ourselves");
        let (p, a) = b.next_attempt(now).unwrap();
        assert_eq!((p, a), (user, addr(9, user)), "configured first");
        let l = ListenerId::next();
        b.started(user, l, now);
        assert!(b.accepted(user));
        assert!(b.snapshot().iter().any(|r| r.peer == user && r.configured));
        assert_eq!(b.forget(&user), Some(l), "its reservation is to be closed");
        assert!(!b.knows(&user));
        assert_eq!(b.forget(&user), None);
    }

    #[test]
    fn holds_target_reservations_configured_first_and_moves_on_failure() {
        let now = Instant::now();
        let (r1, r2, r3) = (PeerId::random(), PeerId::random(), PeerId::random());
        let (mut b, skipped) = RelayBook::new(PeerId::random(), 2, &[addr(1, r1), bare(9)], now);
        assert_eq!(
            skipped,
            vec![bare(9)],
            "an address without /p2p/ cannot be a relay"
        );
        assert!(b.learn(r2, &[bare(2)], now));
        assert!(b.learn(r3, &[bare(3)], now));
        assert!(!b.learn(r3, &[bare(3)], now), "not new the second time");

        let (p, a) = b.next_attempt(now).unwrap();
        assert_eq!((p, a), (r1, addr(1, r1)), "configured relays come first");
        let l1 = ListenerId::next();
        b.started(r1, l1, now);
        let (p2, a2) = b.next_attempt(now).unwrap();
        assert!(p2 == r2 || p2 == r3);
        assert_eq!(a2, addr(if p2 == r2 { 2 } else { 3 }, p2), "/p2p/ appended");
        let l2 = ListenerId::next();
        b.started(p2, l2, now);
        assert!(b.next_attempt(now).is_none(), "target reached");
        assert!(b.accepted(r1));
        assert!(!b.accepted(r1), "a renewal is not new");
        assert!(b.accepted(p2));
        assert_eq!(b.reserved().len(), 2);

        // r1 dies: its slot goes to the third relay, and r1 waits out a backoff.
        assert_eq!(b.listener_closed(l1, now), Some((r1, true)));
        assert!(
            b.listener_closed(l1, now).is_none(),
            "closing twice is ignored"
        );
        let (p3, _) = b.next_attempt(now).unwrap();
        let other = if p2 == r2 { r3 } else { r2 };
        assert_eq!(p3, other);
        b.started(p3, ListenerId::next(), now);
        assert!(b.next_attempt(now + Duration::from_secs(5)).is_none());
        let info = b.snapshot();
        let r1_info = info.iter().find(|i| i.peer == r1).unwrap();
        assert_eq!(r1_info.state, RelayState::Idle);
        assert_eq!(r1_info.failures, 1);
        assert!(r1_info.configured);
    }

    #[test]
    fn a_held_reservation_that_ends_is_asked_again_at_once_then_backs_off() {
        let now = Instant::now();
        let r1 = PeerId::random();
        let (mut b, _) = RelayBook::new(PeerId::random(), 1, &[addr(1, r1)], now);
        let (p, _) = b.next_attempt(now).unwrap();
        let l = ListenerId::next();
        b.started(p, l, now);
        assert!(b.accepted(r1));
        // Its connection dies: asked again right away.
        assert_eq!(b.listener_closed(l, now), Some((r1, true)));
        let (p, _) = b.next_attempt(now).expect("retried at once");
        let l = ListenerId::next();
        b.started(p, l, now);
        // That attempt fails too: now the backoff applies.
        assert_eq!(b.listener_closed(l, now), Some((r1, false)));
        assert!(
            b.next_attempt(now + backoff(2) - Duration::from_millis(1))
                .is_none()
        );
        assert!(b.next_attempt(now + backoff(2)).is_some());
    }

    #[test]
    fn backoff_doubles_to_a_minute_and_timeouts_are_reported() {
        let t0 = Instant::now();
        let r1 = PeerId::random();
        let (mut b, _) = RelayBook::new(PeerId::random(), 2, &[addr(1, r1)], t0);
        let mut now = t0;
        for failures in 1..=10u32 {
            let (p, _) = b.next_attempt(now).unwrap();
            b.started(p, ListenerId::next(), now);
            b.failed(p, now);
            let wait = backoff(failures);
            assert!(
                b.next_attempt(now + wait - Duration::from_millis(1))
                    .is_none()
            );
            now += wait;
        }
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(1), Duration::from_secs(2));

        let (p, _) = b.next_attempt(now).unwrap();
        let l = ListenerId::next();
        b.started(p, l, now);
        assert!(
            b.timed_out(now + RESERVE_TIMEOUT - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(b.timed_out(now + RESERVE_TIMEOUT), vec![l]);
        assert_eq!(b.listener_closed(l, now), Some((r1, false)));
        assert!(!b.accepted(r1), "an idle relay cannot be accepted");
    }

    #[test]
    fn the_book_is_bounded_and_keeps_configured_relays() {
        let now = Instant::now();
        let me = PeerId::random();
        let configured: Vec<Multiaddr> = (0..3).map(|i| addr(i, PeerId::random())).collect();
        let (mut b, _) = RelayBook::new(me, 2, &configured, now);
        assert!(!b.learn(me, &[bare(1)], now), "never our own id");
        let mut discovered = Vec::new();
        for i in 0..100u16 {
            let p = PeerId::random();
            let many: Vec<Multiaddr> = (0..10).map(|j| bare(1000 + i * 10 + j)).collect();
            if b.learn(p, &many, now) {
                discovered.push(p);
            }
        }
        let snap = b.snapshot();
        assert_eq!(snap.len(), MAX_KNOWN_RELAYS);
        assert!(snap.iter().all(|r| r.addrs.len() <= MAX_RELAY_ADDRS));
        // Nothing failed yet, so nothing was evicted: the first ones stay.
        assert_eq!(discovered.len(), MAX_KNOWN_RELAYS - 3);
        // A discovered relay that failed makes room; configured ones never do.
        for c in &configured {
            let p = relay_peer(c).unwrap();
            b.started(p, ListenerId::next(), now);
            b.failed(p, now);
        }
        let newcomer = PeerId::random();
        assert!(
            !b.learn(newcomer, &[bare(5)], now),
            "no discovered relay failed"
        );
        let loser = discovered[7];
        b.started(loser, ListenerId::next(), now);
        b.failed(loser, now);
        assert!(b.learn(newcomer, &[bare(5)], now));
        assert!(!b.knows(&loser));
        assert!(configured.iter().all(|c| b.knows(&relay_peer(c).unwrap())));
    }

    #[test]
    fn circuit_and_foreign_addresses_are_not_relay_addresses() {
        let now = Instant::now();
        let (r, other) = (PeerId::random(), PeerId::random());
        let (mut b, _) = RelayBook::new(PeerId::random(), 1, &[], now);
        let circuit = addr(1, other).with(Protocol::P2pCircuit);
        assert!(!b.learn(r, &[circuit, addr(2, other)], now));
        assert!(!b.knows(&r));
        assert!(b.learn(r, &[bare(3)], now));
        let (_, a) = b.next_attempt(now).unwrap();
        assert_eq!(a, addr(3, r));
        assert!(b.has_candidate(now));
    }
}
