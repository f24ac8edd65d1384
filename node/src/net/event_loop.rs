//! The event loop that owns the swarm, and the [`Client`] handle that drives it.
//!
//! Cancellation: every [`Client`] method is safe to cancel; a dropped reply channel is ignored by
//! the loop. Bounds: commands queue up to [`COMMAND_BUFFER`](super::COMMAND_BUFFER), events up to
//! [`EVENT_BUFFER`](super::EVENT_BUFFER), pending direct requests up to [`MAX_PENDING`].

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::kad::{self, QueryId};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};
use securecomm_rendezvous::mailbox::wire::{
    Request as MailboxRequest, Response as MailboxResponse,
};
use securecomm_rendezvous::media::{MediaRequest, MediaResponse};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::relays::{RelayBook, RelayInfo};
use super::{Behaviour, BehaviourEvent, COMMAND_BUFFER, EVENT_BUFFER, NetConfig, NetError};

/// Most inbound direct requests awaiting our answer, and outbound ones awaiting theirs.
pub const MAX_PENDING: usize = 1024;
/// How often the loop checks its relay reservations.
const RELAY_TICK: Duration = Duration::from_secs(1);
/// At most this many peers found by mDNS are remembered (and redialled while disconnected).
const MAX_LAN_PEERS: usize = 64;
/// At most this many addresses per LAN peer.
const MAX_LAN_ADDRS: usize = 8;
/// The first redial of a disconnected LAN peer waits this long; each failure doubles it.
const LAN_REDIAL_FIRST: Duration = Duration::from_secs(2);
/// ... up to this.
const LAN_REDIAL_MAX: Duration = Duration::from_secs(60);
/// Discovery query interval while the node has all the reservations it wants.
const DISCOVER_EVERY: Duration = Duration::from_secs(60);
/// Discovery query interval while it is short of relays and has none left to try.
const DISCOVER_SHORT: Duration = Duration::from_secs(5);

/// How a connection to a peer travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerPath {
    /// A direct connection (possibly hole-punched).
    Direct,
    /// Through a relay circuit.
    Relayed,
}

/// A connected peer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerInfo {
    /// The peer.
    #[serde(serialize_with = "ser_display")]
    pub peer: PeerId,
    /// Best path among its open connections (direct wins).
    pub path: PeerPath,
    /// Remote addresses of its open connections.
    #[serde(serialize_with = "ser_display_vec")]
    pub addrs: Vec<Multiaddr>,
    /// Its gossipsub score at this node (negative after invalid messages).
    pub gossip_score: Option<f64>,
}

pub(super) fn ser_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub(super) fn ser_display_vec<S: serde::Serializer, T: std::fmt::Display>(
    v: &[T],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.to_string()))
}

/// Something that happened on the network.
#[derive(Debug, Clone)]
pub enum Event {
    /// A listener is up.
    Listening(Multiaddr),
    /// A relay accepted our reservation: we are reachable through it.
    RelayReserved(PeerId),
    /// A reservation ended (the relay died, refused or expired it); the node looks for another.
    RelayLost(PeerId),
    /// Discovery found a relay the node did not know.
    RelayDiscovered(PeerId),
    /// A peer connected.
    PeerConnected(PeerId, PeerPath),
    /// A peer's last connection closed.
    PeerDisconnected(PeerId),
    /// One of several connections to a peer closed (others remain). Whatever was in flight on
    /// it is lost, so the guild layer asks the peer what it missed.
    ConnectionLost(PeerId),
    /// Another connection to an already connected peer opened (a hole punch, a redial while
    /// the old path may be dead without knowing it yet).
    ConnectionAdded(PeerId),
    /// A direct connection replaced a relayed one (DCUtR).
    HolePunched(PeerId),
    /// A gossip message arrived and awaits validation ([`Client::report_validation`]).
    Gossip {
        /// The topic it came on.
        topic: String,
        /// The peer that forwarded it (not necessarily its author).
        source: PeerId,
        /// Its content id.
        id: MessageId,
        /// The payload (an encrypted envelope).
        data: Vec<u8>,
    },
    /// A peer asked us something on the direct protocol; answer with [`Client::respond`].
    DirectRequest {
        /// The asking peer.
        peer: PeerId,
        /// The id to answer.
        id: InboundRequestId,
        /// The request bytes.
        data: Vec<u8>,
    },
    /// A peer subscribed to a gossip topic (a publication that found nobody can go now).
    Subscribed {
        /// The peer.
        peer: PeerId,
        /// The topic.
        topic: String,
    },
    /// A peer told us (identify) where it listens.
    Identified {
        /// The peer.
        peer: PeerId,
        /// Its listen addresses (at most 16).
        listen_addrs: Vec<Multiaddr>,
    },
    /// The subscriber missed this many events.
    Lagged(u64),
}

enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), NetError>>),
    DialPeer(
        PeerId,
        Vec<Multiaddr>,
        u8,
        oneshot::Sender<Result<(), NetError>>,
    ),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Subscribe(String, oneshot::Sender<Result<(), NetError>>),
    Publish(
        String,
        Vec<u8>,
        oneshot::Sender<Result<MessageId, NetError>>,
    ),
    TopicPeers(String, oneshot::Sender<usize>),
    Validate(MessageId, PeerId, MessageAcceptance),
    Request(PeerId, Vec<u8>, oneshot::Sender<Result<Vec<u8>, NetError>>),
    Mailbox(
        PeerId,
        MailboxRequest,
        oneshot::Sender<Result<MailboxResponse, NetError>>,
    ),
    Media(
        PeerId,
        MediaRequest,
        oneshot::Sender<Result<MediaResponse, NetError>>,
    ),
    Respond(InboundRequestId, Vec<u8>),
    AddAddress(PeerId, Multiaddr),
    Relays(oneshot::Sender<Vec<RelayInfo>>),
    AddRelay(Multiaddr, oneshot::Sender<bool>),
    RemoveRelay(PeerId),
    Shutdown,
}

/// A cloneable handle to the node's network.
#[derive(Clone, Debug)]
pub struct Client {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    streams: Streams,
}

/// Opens and accepts plain streams without the event loop (libp2p-stream's control).
#[derive(Clone)]
struct Streams(libp2p_stream::Control);

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Streams")
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Payloads are ciphertext, but keep them out of logs anyway.
        f.write_str(match self {
            Command::ListenAddrs(_) => "ListenAddrs",
            Command::Dial(..) => "Dial",
            Command::DialPeer(..) => "DialPeer",
            Command::Peers(_) => "Peers",
            Command::Subscribe(..) => "Subscribe",
            Command::Publish(..) => "Publish",
            Command::TopicPeers(..) => "TopicPeers",
            Command::Validate(..) => "Validate",
            Command::Request(..) => "Request",
            Command::Mailbox(..) => "Mailbox",
            Command::Media(..) => "Media",
            Command::Respond(..) => "Respond",
            Command::AddAddress(..) => "AddAddress",
            Command::Relays(_) => "Relays",
            Command::AddRelay(..) => "AddRelay",
            Command::RemoveRelay(_) => "RemoveRelay",
            Command::Shutdown => "Shutdown",
        })
    }
}

/// Receives events; see [`Client::events`].
#[derive(Debug)]
pub struct EventStream(broadcast::Receiver<Event>);

impl EventStream {
    /// The next event, or `None` once the node has shut down.
    pub async fn next(&mut self) -> Option<Event> {
        match self.0.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Event::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Client {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Subscribes to events from now on.
    pub fn events(&self) -> EventStream {
        EventStream(self.events.subscribe())
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Closed)?;
        rx.await.map_err(|_| NetError::Closed)
    }

    /// Addresses we listen on, including relayed `/p2p-circuit` ones.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.ask(Command::ListenAddrs).await
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Dials `peer` unless connected: one attempt over `addrs`, tried `concurrency` at a time
    /// (the first that connects ends the attempt), so a peer gets one new connection, not one
    /// per address.
    pub async fn dial_peer(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        concurrency: u8,
    ) -> Result<(), NetError> {
        self.ask(|tx| Command::DialPeer(peer, addrs, concurrency, tx))
            .await?
    }

    /// Connected peers and how we reach them.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.ask(Command::Peers).await
    }

    /// Subscribes to a gossip topic.
    pub async fn subscribe(&self, topic: &str) -> Result<(), NetError> {
        self.ask(|tx| Command::Subscribe(topic.to_owned(), tx))
            .await?
    }

    /// Publishes on a topic. Fails with [`NetError::Publish`] while no peer is subscribed.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<MessageId, NetError> {
        self.ask(|tx| Command::Publish(topic.to_owned(), data, tx))
            .await?
    }

    /// How many connected peers are subscribed to `topic`.
    pub async fn topic_peers(&self, topic: &str) -> Result<usize, NetError> {
        self.ask(|tx| Command::TopicPeers(topic.to_owned(), tx))
            .await
    }

    /// Tells gossipsub whether a received message is valid: accepted messages are forwarded,
    /// rejected ones are dropped and their sender penalised.
    pub async fn report_validation(
        &self,
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    ) -> Result<(), NetError> {
        self.commands
            .send(Command::Validate(id, source, acceptance))
            .await
            .map_err(|_| NetError::Closed)
    }

    /// Sends a request on the direct protocol and waits for the answer.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        self.ask(|tx| Command::Request(peer, data, tx)).await?
    }

    /// Opens a stream of our file protocol ([`super::FILES_PROTOCOL`]) to a connected peer.
    /// Its bytes travel between the connection's task and the caller, not through the event
    /// loop. Fails with [`NetError::Unsupported`] when the peer does not speak the protocol.
    pub async fn open_files_stream(&self, peer: PeerId) -> Result<libp2p::Stream, NetError> {
        let mut control = self.streams.0.clone();
        control
            .open_stream(peer, super::FILES_PROTOCOL)
            .await
            .map_err(|e| match e {
                libp2p_stream::OpenStreamError::UnsupportedProtocol(_) => {
                    NetError::Unsupported(peer)
                }
                e => NetError::Request {
                    peer,
                    reason: e.to_string(),
                },
            })
    }

    /// Streams peers open on our file protocol. Only one taker: a second call fails.
    pub fn accept_files_streams(&self) -> Result<libp2p_stream::IncomingStreams, NetError> {
        self.streams
            .0
            .clone()
            .accept(super::FILES_PROTOCOL)
            .map_err(|e| NetError::Transport(e.to_string()))
    }

    /// Sends a request to a relay's mailbox and waits for its answer.
    pub async fn mailbox(
        &self,
        relay: PeerId,
        req: MailboxRequest,
    ) -> Result<MailboxResponse, NetError> {
        self.ask(|tx| Command::Mailbox(relay, req, tx)).await?
    }

    /// Sends a request to a relay's UDP media relay (allocations for voice) and waits.
    pub async fn media(&self, relay: PeerId, req: MediaRequest) -> Result<MediaResponse, NetError> {
        self.ask(|tx| Command::Media(relay, req, tx)).await?
    }

    /// Answers an inbound direct request.
    pub async fn respond(&self, id: InboundRequestId, data: Vec<u8>) -> Result<(), NetError> {
        self.commands
            .send(Command::Respond(id, data))
            .await
            .map_err(|_| NetError::Closed)
    }

    /// Records an address for a peer (for example from an invite).
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), NetError> {
        self.commands
            .send(Command::AddAddress(peer, addr))
            .await
            .map_err(|_| NetError::Closed)
    }

    /// Every relay the node knows (configured and discovered), reserved ones first, with its
    /// reservation state.
    pub async fn relays(&self) -> Result<Vec<RelayInfo>, NetError> {
        self.ask(Command::Relays).await
    }

    /// Adds a relay while running (a full multiaddr ending in `/p2p/<relay>`), as preferred as
    /// a configured one; a reservation is tried at once if the node is short of relays.
    /// Returns whether the relay book took it (not: ours, no peer id, or the book is full of
    /// configured relays).
    pub async fn add_relay(&self, addr: Multiaddr) -> Result<bool, NetError> {
        self.ask(|tx| Command::AddRelay(addr, tx)).await
    }

    /// Forgets a relay, closing its reservation if it holds one.
    pub async fn remove_relay(&self, relay: PeerId) -> Result<(), NetError> {
        self.commands
            .send(Command::RemoveRelay(relay))
            .await
            .map_err(|_| NetError::Closed)
    }

    /// Stops the event loop.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }
}

/// Owns the swarm; run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    relays: RelayBook,
    /// The discovery query in flight, and when the next one may start.
    discovery: (Option<QueryId>, tokio::time::Instant),
    pending_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetError>>>,
    pending_mailbox: HashMap<OutboundRequestId, oneshot::Sender<Result<MailboxResponse, NetError>>>,
    pending_media: HashMap<OutboundRequestId, oneshot::Sender<Result<MediaResponse, NetError>>>,
    inbound: HashMap<InboundRequestId, ResponseChannel<Vec<u8>>>,
    connections: HashMap<PeerId, Vec<(ConnectionId, PeerPath, Multiaddr)>>,
    /// Peers mDNS found on the LAN and has not expired: dialled on discovery and again (with
    /// backoff) whenever no connection to them is open.
    lan: HashMap<PeerId, LanPeer>,
    /// Each open connection's rank (see [`connection_rank`]) and when it opened.
    conn_rank: HashMap<ConnectionId, (ConnRank, tokio::time::Instant)>,
}

/// Connections to one peer opened further apart than this are told apart by age (both ends
/// see the same order); closer ones by rank alone.
const SAME_MOMENT: Duration = Duration::from_secs(2);

/// How good a connection is; both ends of it compute the same rank.
type ConnRank = (u8, u8, std::cmp::Reverse<Vec<u8>>);

/// A connection's rank, equal at both ends: whether it is direct, then whether the smaller peer
/// id dialled it, then (relayed) the smaller relay id first.
fn connection_rank(me: &PeerId, peer: &PeerId, endpoint: &ConnectedPoint) -> ConnRank {
    let (addr, we_dialled) = match endpoint {
        ConnectedPoint::Dialer { address, .. } => (address, true),
        ConnectedPoint::Listener { local_addr, .. } => (local_addr, false),
    };
    let relay = {
        let mut last_peer = None;
        let mut relay = None;
        for p in addr.iter() {
            match p {
                Protocol::P2p(id) => last_peer = Some(id),
                Protocol::P2pCircuit => {
                    relay = last_peer;
                    break;
                }
                _ => {}
            }
        }
        relay
    };
    let dialer = if we_dialled { me } else { peer };
    (
        u8::from(relay.is_none() && path_of(endpoint) == PeerPath::Direct),
        u8::from(dialer == me.min(peer)),
        std::cmp::Reverse(relay.map(|r| r.to_bytes()).unwrap_or_default()),
    )
}

/// Connections to one peer that a follower (the end with the larger peer id) closes on its own:
/// only those this much older than a connection at least as direct. The leader's
/// [`SAME_MOMENT`] window plus any skew between the two ends' clocks of one handshake must stay
/// well under it.
const FOLLOWER_STALE: Duration = Duration::from_secs(6);

/// Which of one peer's open connections to close, given each one's rank and when it opened.
///
/// gossipsub queues a peer's messages once for all its connections and any of them may take
/// the next one: with a second path that had died silently (a killed relay's circuit, noticed
/// only after QUIC's idle timeout) messages vanished into it, and netsim's chaos runs saw
/// deliveries 5-15 s late. Keeping the old connection instead of the new one made it worse: a
/// pair that had just reconnected through the other relay was cut again. So one connection is
/// kept: a direct one if there is one; among those the newest (a new connection is evidence of
/// a live path, an old one may have died without either end knowing yet); among connections
/// opened within [`SAME_MOMENT`] of that one, the best ranked.
///
/// Only the leader (the smaller peer id, `leads`) applies that rule in full. Each end times a
/// connection by its own clock, and when two connections opened about [`SAME_MOMENT`] apart
/// one end could judge them the same moment (keep the better ranked) and the other not (keep
/// the newer): each closed the one the other kept, the pair lost both, redialled, and could do
/// it again (one chaos run in three ended with a pair flapping like this). The follower only
/// closes connections [`FOLLOWER_STALE`] older than another at least as direct, which the
/// leader never keeps either; the leader's closes reach it like any remote close.
fn redundant_connections<Id: Copy + Eq>(
    leads: bool,
    conns: &[(Id, ConnRank, tokio::time::Instant)],
) -> Vec<Id> {
    let Some(direct) = conns.iter().map(|(_, r, _)| r.0).max() else {
        return Vec::new();
    };
    if !leads {
        return conns
            .iter()
            .filter(|(_, r, t)| {
                conns
                    .iter()
                    .any(|(_, r2, t2)| r2.0 >= r.0 && t2.duration_since(*t) > FOLLOWER_STALE)
            })
            .map(|(id, _, _)| *id)
            .collect();
    }
    let class = || conns.iter().filter(|(_, r, _)| r.0 == direct);
    let Some(newest) = class().map(|(_, _, t)| *t).max() else {
        return Vec::new();
    };
    let Some(keep) = class()
        .filter(|(_, _, t)| newest.duration_since(*t) < SAME_MOMENT)
        .max_by(|a, b| a.1.cmp(&b.1))
        .map(|(id, _, _)| *id)
    else {
        return Vec::new();
    };
    conns
        .iter()
        .filter(|(id, _, _)| *id != keep)
        .map(|(id, _, _)| *id)
        .collect()
}

/// A peer on the LAN, as mDNS last reported it.
#[derive(Debug)]
struct LanPeer {
    addrs: Vec<Multiaddr>,
    next_dial: tokio::time::Instant,
    backoff: Duration,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer_id", self.swarm.local_peer_id())
            .finish_non_exhaustive()
    }
}

/// The private IPv4 network (/24) an address is on, if it is a private IPv4 address.
fn private_net(a: &Multiaddr) -> Option<[u8; 3]> {
    match a.iter().next() {
        Some(Protocol::Ip4(ip)) if ip.is_private() => {
            let o = ip.octets();
            Some([o[0], o[1], o[2]])
        }
        _ => None,
    }
}

/// Of `theirs`, the direct addresses on a private network (/24) one of `ours` is on: a peer
/// behind the same NAT, reachable without the relay.
fn same_lan(ours: &[Multiaddr], theirs: &[Multiaddr]) -> Vec<Multiaddr> {
    let nets: Vec<[u8; 3]> = ours.iter().filter_map(private_net).collect();
    theirs
        .iter()
        .filter(|a| !a.iter().any(|p| p == Protocol::P2pCircuit))
        .filter(|a| private_net(a).is_some_and(|n| nets.contains(&n)))
        .take(MAX_LAN_ADDRS)
        .cloned()
        .collect()
}

fn path_of(endpoint: &ConnectedPoint) -> PeerPath {
    // An inbound relayed connection has the circuit in its local (listen) address; its
    // send-back address is only `/p2p/<peer>`. An outbound one has it in the dialled address.
    let circuit = |a: &Multiaddr| a.iter().any(|p| p == Protocol::P2pCircuit);
    let relayed = match endpoint {
        ConnectedPoint::Dialer { address, .. } => circuit(address),
        ConnectedPoint::Listener {
            local_addr,
            send_back_addr,
        } => circuit(local_addr) || circuit(send_back_addr),
    };
    if relayed {
        PeerPath::Relayed
    } else {
        PeerPath::Direct
    }
}

impl EventLoop {
    /// Builds the swarm, starts listening and returns the loop with its client.
    pub fn new(
        keypair: libp2p::identity::Keypair,
        cfg: &NetConfig,
    ) -> Result<(Self, Client), NetError> {
        let mut swarm = super::build_swarm(keypair, cfg)?;
        for addr in &cfg.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        let me = *swarm.local_peer_id();
        let now = tokio::time::Instant::now();
        let (relays, skipped) = RelayBook::new(me, cfg.relay_target, &cfg.relays, now);
        for addr in skipped {
            tracing::warn!(%addr, "relay address has no /p2p/<peer id> (or is ours); ignored");
        }
        for r in relays.snapshot() {
            for a in r.addrs {
                swarm.behaviour_mut().kad.add_address(&r.peer, a);
            }
        }
        let (ctx, crx) = mpsc::channel(COMMAND_BUFFER);
        let (etx, _) = broadcast::channel(EVENT_BUFFER);
        let client = Client {
            peer_id: *swarm.local_peer_id(),
            commands: ctx,
            events: etx.clone(),
            streams: Streams(swarm.behaviour().streams.new_control()),
        };
        let lp = Self {
            swarm,
            commands: crx,
            events: etx,
            relays,
            discovery: (None, now),
            pending_requests: HashMap::new(),
            pending_mailbox: HashMap::new(),
            pending_media: HashMap::new(),
            inbound: HashMap::new(),
            connections: HashMap::new(),
            lan: HashMap::new(),
            conn_rank: HashMap::new(),
        };
        Ok((lp, client))
    }

    fn emit(&self, e: Event) {
        // No subscriber is fine: events are informational.
        let _ = self.events.send(e);
    }

    /// Runs until [`Client::shutdown`] or until every client is dropped.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(RELAY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tick.tick() => {
                    self.maintain_relays();
                    self.redial_lan_peers();
                }
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(cmd) => self.on_command(cmd),
                },
            }
        }
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self
            .connections
            .iter()
            .map(|(peer, conns)| PeerInfo {
                peer: *peer,
                path: if conns.iter().any(|c| c.1 == PeerPath::Direct) {
                    PeerPath::Direct
                } else {
                    PeerPath::Relayed
                },
                addrs: conns.iter().map(|c| c.2.clone()).collect(),
                gossip_score: self.swarm.behaviour().gossipsub.peer_score(peer),
            })
            .collect();
        v.sort_by_key(|p| p.peer.to_bytes());
        v
    }

    fn on_command(&mut self, cmd: Command) {
        let b = self.swarm.behaviour_mut();
        match cmd {
            Command::ListenAddrs(tx) => {
                let _ = tx.send(
                    self.swarm
                        .listeners()
                        .cloned()
                        .chain(self.swarm.external_addresses().cloned())
                        .collect(),
                );
            }
            Command::DialPeer(peer, addrs, concurrency, tx) => {
                let opts = DialOpts::peer_id(peer)
                    .condition(PeerCondition::Disconnected)
                    .addresses(addrs.into_iter().take(32).collect())
                    .override_dial_concurrency_factor(
                        std::num::NonZeroU8::new(concurrency).unwrap_or(std::num::NonZeroU8::MIN),
                    )
                    .build();
                let _ = tx.send(
                    self.swarm
                        .dial(opts)
                        .map_err(|e| NetError::Dial(format!("{peer}: {e}"))),
                );
            }
            Command::Dial(addr, tx) => {
                let _ = tx.send(
                    self.swarm
                        .dial(addr.clone())
                        .map_err(|e| NetError::Dial(format!("{addr}: {e}"))),
                );
            }
            Command::Peers(tx) => {
                let _ = tx.send(self.peers());
            }
            Command::Subscribe(topic, tx) => {
                let t = IdentTopic::new(topic);
                if let Err(e) = b
                    .gossipsub
                    .set_topic_params(t.clone(), super::topic_score_params())
                {
                    tracing::warn!(error = e, "topic scoring not set");
                }
                let r = b
                    .gossipsub
                    .subscribe(&t)
                    .map(|_| ())
                    .map_err(|e| NetError::Publish(e.to_string()));
                let _ = tx.send(r);
            }
            Command::Publish(topic, data, tx) => {
                let r = b
                    .gossipsub
                    .publish(IdentTopic::new(topic), data)
                    .map_err(|e| NetError::Publish(e.to_string()));
                let _ = tx.send(r);
            }
            Command::TopicPeers(topic, tx) => {
                let hash = IdentTopic::new(topic).hash();
                let n = b
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&hash))
                    .count();
                let _ = tx.send(n);
            }
            Command::Validate(id, source, acceptance) => {
                b.gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Request(peer, data, tx) => {
                if self.pending_requests.len() >= MAX_PENDING {
                    let _ = tx.send(Err(NetError::Request {
                        peer,
                        reason: "too many requests in flight".into(),
                    }));
                    return;
                }
                let id = b.direct.send_request(&peer, data);
                self.pending_requests.insert(id, tx);
            }
            Command::Mailbox(peer, req, tx) => {
                if self.pending_mailbox.len() >= MAX_PENDING {
                    let _ = tx.send(Err(NetError::Request {
                        peer,
                        reason: "too many mailbox requests in flight".into(),
                    }));
                    return;
                }
                let id = b.mailbox.send_request(&peer, req);
                self.pending_mailbox.insert(id, tx);
            }
            Command::Media(peer, req, tx) => {
                if self.pending_media.len() >= MAX_PENDING {
                    let _ = tx.send(Err(NetError::Request {
                        peer,
                        reason: "too many media requests in flight".into(),
                    }));
                    return;
                }
                let id = b.media.send_request(&peer, req);
                self.pending_media.insert(id, tx);
            }
            Command::Respond(id, data) => {
                if let Some(ch) = self.inbound.remove(&id) {
                    let _ = b.direct.send_response(ch, data);
                }
            }
            Command::AddAddress(peer, addr) => {
                self.swarm.add_peer_address(peer, addr);
            }
            Command::Relays(tx) => {
                let _ = tx.send(self.relays.snapshot());
            }
            Command::AddRelay(addr, tx) => {
                let added = self.relays.configure(&addr, tokio::time::Instant::now());
                if added && let Some(peer) = super::relays::relay_peer(&addr) {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
                let _ = tx.send(added);
                self.maintain_relays();
            }
            Command::RemoveRelay(peer) => {
                if let Some(listener) = self.relays.forget(&peer) {
                    self.swarm.remove_listener(listener);
                }
            }
            Command::Shutdown => {}
        }
    }

    /// Keeps `relay_target` reservations: cancels requests that got no answer, starts new
    /// ones on the best candidates, and asks the DHT for more relays when short of them.
    /// Dials a LAN peer found by mDNS unless a connection to it is open or being dialled.
    ///
    /// Two peers usually discover each other at the same moment. A TCP dial reuses the listen
    /// port by default, so both dials would carry the same address pair and meet as one TCP
    /// simultaneous open, which the libp2p handshake cannot complete: both dials failed and,
    /// since mDNS reports an address only once, nobody tried again (the LAN test timed out
    /// about one run in five). The dial therefore takes a fresh port, and a peer still
    /// disconnected is dialled again with backoff.
    fn dial_lan_peer(&mut self, peer: PeerId, now: tokio::time::Instant) {
        if self.connections.contains_key(&peer) {
            return;
        }
        let Some(entry) = self.lan.get_mut(&peer) else {
            return;
        };
        if entry.next_dial > now {
            return;
        }
        entry.next_dial = now + entry.backoff;
        entry.backoff = (entry.backoff * 2).min(LAN_REDIAL_MAX);
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .addresses(entry.addrs.clone())
            .allocate_new_port()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "LAN dial not started");
        }
    }

    /// A peer reached only through a relay that listens on our own private network (a member
    /// behind the same NAT: the same home, office or carrier-grade NAT) is dialled there too,
    /// and the one-connection rule then keeps the direct connection. Hole punching cannot do
    /// this (a NAT rarely forwards its own public address back inside), and without it two
    /// members on one LAN talked through a relay, so a relay's death cut them apart (netsim's
    /// chaos run, four hosts per site).
    fn upgrade_to_lan(&mut self, peer: PeerId, theirs: &[Multiaddr]) {
        let relayed_only = self
            .connections
            .get(&peer)
            .is_some_and(|c| !c.is_empty() && c.iter().all(|(_, p, _)| *p == PeerPath::Relayed));
        if !relayed_only {
            return;
        }
        let ours: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        let lan = same_lan(&ours, theirs);
        if lan.is_empty() {
            return;
        }
        tracing::debug!(%peer, addrs = ?lan, "dialling a relayed peer on our LAN");
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::NotDialing)
            .addresses(lan)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "LAN upgrade not started");
        }
    }

    /// Closes the connections to `peer` that [`redundant_connections`] picks (see there why).
    fn keep_best_connection(&mut self, peer: PeerId) {
        // Relays carry our reservations and mailbox requests, not guild gossip: a second
        // connection to one is harmless, and closing the older one could drop a reservation.
        if self.relays.knows(&peer) {
            return;
        }
        let Some(conns) = self.connections.get(&peer) else {
            return;
        };
        let ranked: Vec<(ConnectionId, ConnRank, tokio::time::Instant)> = conns
            .iter()
            .filter_map(|c| self.conn_rank.get(&c.0).map(|(r, t)| (c.0, r.clone(), *t)))
            .collect();
        let leads = *self.swarm.local_peer_id() < peer;
        for id in redundant_connections(leads, &ranked) {
            tracing::debug!(%peer, ?id, leads, "closing a redundant connection");
            self.swarm.close_connection(id);
        }
    }

    /// Redials LAN peers that have no open connection (each on its own backoff).
    fn redial_lan_peers(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<PeerId> = self
            .lan
            .iter()
            .filter(|(p, e)| e.next_dial <= now && !self.connections.contains_key(p))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            self.dial_lan_peer(peer, now);
        }
    }

    fn maintain_relays(&mut self) {
        let now = tokio::time::Instant::now();
        for listener in self.relays.timed_out(now) {
            // Its ListenerClosed event records the failure.
            self.swarm.remove_listener(listener);
        }
        // Each round either starts a request or backs the relay off, so this ends after at
        // most `relay_target` + known-relay rounds.
        while let Some((relay, addr)) = self.relays.next_attempt(now) {
            match self
                .swarm
                .listen_on(addr.clone().with(Protocol::P2pCircuit))
            {
                Ok(listener) => {
                    tracing::debug!(%relay, %addr, "requesting a relay reservation");
                    self.relays.started(relay, listener, now);
                }
                Err(e) => {
                    tracing::warn!(%relay, %addr, error = %e, "cannot use relay");
                    self.relays.failed(relay, now);
                }
            }
        }
        let (in_flight, next) = self.discovery;
        if in_flight.is_none() && now >= next {
            let short = self.relays.short() && !self.relays.has_candidate(now);
            // A random key walks a different part of the (small) relay DHT each time.
            let id = self
                .swarm
                .behaviour_mut()
                .kad
                .get_closest_peers(PeerId::random());
            let wait = if short {
                DISCOVER_SHORT
            } else {
                DISCOVER_EVERY
            };
            self.discovery = (Some(id), now + wait);
        }
    }

    /// Feeds the relay book from the DHT: every server-mode peer of SecureComm's DHT is a relay.
    fn on_kad_event(&mut self, event: kad::Event) {
        let now = tokio::time::Instant::now();
        let found: Vec<(PeerId, Vec<Multiaddr>)> = match event {
            kad::Event::RoutingUpdated {
                peer, addresses, ..
            } => vec![(peer, addresses.into_vec())],
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => {
                if self.discovery.0 == Some(id) && step.last {
                    self.discovery.0 = None;
                }
                match result {
                    kad::QueryResult::GetClosestPeers(Ok(ok)) => {
                        ok.peers.into_iter().map(|p| (p.peer_id, p.addrs)).collect()
                    }
                    kad::QueryResult::GetClosestPeers(Err(
                        kad::GetClosestPeersError::Timeout { peers, .. },
                    )) => peers.into_iter().map(|p| (p.peer_id, p.addrs)).collect(),
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        let mut learned = false;
        for (peer, addrs) in found.into_iter().take(super::relays::MAX_KNOWN_RELAYS) {
            if self.relays.learn(peer, &addrs, now) {
                tracing::info!(relay = %peer, "discovered a relay");
                self.emit(Event::RelayDiscovered(peer));
                learned = true;
            }
        }
        if learned {
            self.maintain_relays();
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.emit(Event::Listening(address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let path = path_of(&endpoint);
                self.connections.entry(peer_id).or_default().push((
                    connection_id,
                    path,
                    endpoint.get_remote_address().clone(),
                ));
                let me = *self.swarm.local_peer_id();
                self.conn_rank.insert(
                    connection_id,
                    (
                        connection_rank(&me, &peer_id, &endpoint),
                        tokio::time::Instant::now(),
                    ),
                );
                self.keep_best_connection(peer_id);
                if num_established.get() == 1 {
                    self.emit(Event::PeerConnected(peer_id, path));
                } else {
                    self.emit(Event::ConnectionAdded(peer_id));
                }
                if let Some(lan) = self.lan.get_mut(&peer_id) {
                    lan.backoff = LAN_REDIAL_FIRST;
                    lan.next_dial = tokio::time::Instant::now() + LAN_REDIAL_FIRST;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.retain(|c| c.0 != connection_id);
                }
                self.conn_rank.remove(&connection_id);
                if num_established == 0 {
                    self.connections.remove(&peer_id);
                    self.emit(Event::PeerDisconnected(peer_id));
                } else {
                    self.emit(Event::ConnectionLost(peer_id));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                libp2p::relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                if self.relays.accepted(relay_peer_id) {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                }
                self.emit(Event::RelayReserved(relay_peer_id));
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let now = tokio::time::Instant::now();
                if let Some((relay, was_reserved)) = self.relays.listener_closed(listener_id, now) {
                    tracing::info!(%relay, ?reason, was_reserved, "relay reservation ended");
                    if was_reserved {
                        self.emit(Event::RelayLost(relay));
                    }
                    self.maintain_relays();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(libp2p::dcutr::Event {
                remote_peer_id,
                result: Ok(_),
            })) => {
                self.emit(Event::HolePunched(remote_peer_id));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(
                libp2p::identify::Event::Received { peer_id, info, .. },
            )) => {
                // Remember where a peer listens so later dials (and gossip) can find it.
                let addrs: Vec<Multiaddr> = info.listen_addrs.into_iter().take(16).collect();
                for addr in &addrs {
                    self.swarm.add_peer_address(peer_id, addr.clone());
                }
                self.upgrade_to_lan(peer_id, &addrs);
                self.emit(Event::Identified {
                    peer: peer_id,
                    listen_addrs: addrs,
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(list))) => {
                let now = tokio::time::Instant::now();
                let mut found = Vec::new();
                for (peer, addr) in list.into_iter().take(MAX_LAN_PEERS * MAX_LAN_ADDRS) {
                    if !self.lan.contains_key(&peer) && self.lan.len() >= MAX_LAN_PEERS {
                        continue;
                    }
                    self.swarm.add_peer_address(peer, addr.clone());
                    let entry = self.lan.entry(peer).or_insert_with(|| LanPeer {
                        addrs: Vec::new(),
                        next_dial: now,
                        backoff: LAN_REDIAL_FIRST,
                    });
                    if !entry.addrs.contains(&addr) && entry.addrs.len() < MAX_LAN_ADDRS {
                        entry.addrs.push(addr);
                    }
                    if !found.contains(&peer) {
                        found.push(peer);
                    }
                }
                for peer in found {
                    self.dial_lan_peer(peer, now);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Expired(list))) => {
                for (peer, addr) in list {
                    if let Some(entry) = self.lan.get_mut(&peer) {
                        entry.addrs.retain(|a| *a != addr);
                        if entry.addrs.is_empty() {
                            self.lan.remove(&peer);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                peer_id,
                topic,
            })) => {
                self.emit(Event::Subscribed {
                    peer: peer_id,
                    topic: topic.to_string(),
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                self.emit(Event::Gossip {
                    topic: message.topic.to_string(),
                    source: propagation_source,
                    id: message_id,
                    data: message.data,
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Direct(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => {
                    if self.inbound.len() >= MAX_PENDING {
                        tracing::warn!(%peer, "too many unanswered direct requests; dropping one");
                        return;
                    }
                    self.inbound.insert(request_id, channel);
                    self.emit(Event::DirectRequest {
                        peer,
                        id: request_id,
                        data: request,
                    });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(tx) = self.pending_requests.remove(&request_id) {
                        let _ = tx.send(Ok(response));
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Direct(
                request_response::Event::OutboundFailure {
                    peer,
                    request_id,
                    error,
                    ..
                },
            )) => {
                if let Some(tx) = self.pending_requests.remove(&request_id) {
                    let _ = tx.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Direct(
                request_response::Event::InboundFailure { request_id, .. },
            )) => {
                self.inbound.remove(&request_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mailbox(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            })) => {
                if let Some(tx) = self.pending_mailbox.remove(&request_id) {
                    let _ = tx.send(Ok(response));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mailbox(
                request_response::Event::OutboundFailure {
                    peer,
                    request_id,
                    error,
                    ..
                },
            )) => {
                if let Some(tx) = self.pending_mailbox.remove(&request_id) {
                    let _ = tx.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Media(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            })) => {
                if let Some(tx) = self.pending_media.remove(&request_id) {
                    let _ = tx.send(Ok(response));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Media(
                request_response::Event::OutboundFailure {
                    peer,
                    request_id,
                    error,
                    ..
                },
            )) => {
                if let Some(tx) = self.pending_media.remove(&request_id) {
                    let _ = tx.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One end's view in [`connection_choice_never_leaves_a_pair_without_a_connection`].
    #[derive(Default)]
    struct End {
        open: Vec<(usize, ConnRank, tokio::time::Instant)>,
        gone: std::collections::HashSet<usize>,
    }

    proptest::proptest! {
        /// Both ends run [`redundant_connections`] on every new connection, each by its own
        /// clock (a handshake completes up to a second apart at the two ends) and learn of the
        /// other's closes up to 300 ms later: at least one connection always survives at both.
        /// With both ends applying the leader's rule this failed (two connections opened about
        /// `SAME_MOMENT` apart, each end closing the one the other kept).
        #[test]
        fn connection_choice_never_leaves_a_pair_without_a_connection(
            conns in proptest::collection::vec(
                (0u64..8_000, 0u64..1_000, 0u64..1_000, 0u8..2, 0u8..2, 0u8..3, 0u64..300),
                1..6,
            ),
        ) {
            let base = tokio::time::Instant::now();
            let at = |ms: u64| base + Duration::from_millis(ms);
            // (global time in ms, end 0 = leader / 1 = follower, what): an arrival of connection
            // i, or the close of connection i by the other end.
            let mut events: Vec<(u64, usize, usize, bool)> = Vec::new();
            for (i, c) in conns.iter().enumerate() {
                events.push((c.0 + c.1, 0, i, false));
                events.push((c.0 + c.2, 1, i, false));
            }
            let rank = |i: usize| -> ConnRank {
                let c = conns[i];
                (c.3, c.4, std::cmp::Reverse(vec![c.5]))
            };
            let mut ends = [End::default(), End::default()];
            while !events.is_empty() {
                events.sort_by_key(|e| (e.0, e.1, e.2));
                let (now, side, i, is_close) = events.remove(0);
                let end = &mut ends[side];
                if is_close {
                    end.gone.insert(i);
                    end.open.retain(|c| c.0 != i);
                    continue;
                }
                if end.gone.contains(&i) {
                    continue;
                }
                end.open.push((i, rank(i), at(now)));
                for id in redundant_connections(side == 0, &end.open) {
                    end.open.retain(|c| c.0 != id);
                    end.gone.insert(id);
                    events.push((now + conns[id].6, 1 - side, id, true));
                }
            }
            let alive: Vec<usize> = ends[0]
                .open
                .iter()
                .map(|c| c.0)
                .filter(|i| ends[1].open.iter().any(|c| c.0 == *i))
                .collect();
            proptest::prop_assert!(!alive.is_empty(), "no connection survives: {conns:?}");
        }
    }

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn same_lan_keeps_direct_private_addresses_on_our_networks_only() {
        let ours = [
            a("/ip4/127.0.0.1/tcp/4001"),
            a("/ip4/10.4.0.10/tcp/4001"),
            a("/ip4/10.4.0.10/udp/4001/quic-v1"),
            a("/ip4/198.18.0.10/tcp/4001/p2p-circuit"),
        ];
        let theirs = [
            a("/ip4/10.4.0.11/udp/4001/quic-v1"),
            a("/ip4/10.4.0.11/tcp/4001"),
            // Another private network, loopback, public, a circuit through a relay on our
            // network, IPv6: none of these.
            a("/ip4/10.5.0.11/tcp/4001"),
            a("/ip4/127.0.0.1/tcp/4001"),
            a("/ip4/198.18.4.1/tcp/4001"),
            a(
                "/ip4/10.4.0.1/tcp/4001/p2p/12D3KooWEi1Vx8vpXH5wTpvaiEyMSUkYW5aitf8QiMBDB3H4KmxT/p2p-circuit",
            ),
            a("/ip6/fd00::1/tcp/4001"),
        ];
        assert_eq!(
            same_lan(&ours, &theirs),
            vec![
                a("/ip4/10.4.0.11/udp/4001/quic-v1"),
                a("/ip4/10.4.0.11/tcp/4001")
            ]
        );
        // Listening only on loopback or public addresses: no LAN to share.
        assert!(same_lan(&ours[..1], &theirs).is_empty());
        assert!(same_lan(&[a("/ip4/0.0.0.0/tcp/4001")], &theirs).is_empty());
    }
}
