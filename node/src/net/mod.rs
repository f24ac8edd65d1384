//! The node's libp2p stack.
//!
//! One [`EventLoop`] owns the `Swarm`; any number of cloneable [`Client`] handles talk to it over a
//! bounded command channel and get answers on one-shot channels (the shape of libp2p's
//! file-sharing example). Events go out on a bounded broadcast channel: a subscriber that falls
//! more than [`EVENT_BUFFER`] events behind loses the oldest ones and is told how many.
//!
//! Protocols: TCP and QUIC, Noise, Yamux, identify (with pushes when our addresses change),
//! ping, AutoNAT, a rendezvous client, a relay client, Kademlia in client mode, DCUtR hole
//! punching, mDNS, gossipsub and our own request-response protocol `/securecomm/direct/1` with
//! bounded frames ([`codec`]).
//!
//! # Relays: discovery, reservations, failover
//! *Directory.* Relays run Kademlia in server mode on [`KAD_PROTOCOL`] (SecureComm's own DHT,
//! never the public IPFS one) and know each other (a relay joins through the relays in its
//! `peers` configuration; see `securecomm_rendezvous::server`). Nodes run Kademlia in client
//! mode: they ask and never answer, so they never enter anyone's routing table, and every
//! server-mode peer of the DHT is a relay. Being in the routing table *is* the announcement:
//! no record or provider entry is published, nothing expires, and a dead relay drops out of the
//! answers because it stops answering. (If nodes ever run the DHT in server mode, relays will
//! need an explicit announcement, such as a provider record under a well-known key.)
//!
//! *Discovery.* The configured relays (`NetConfig::relays`, the `--relay` flags) seed the
//! node's routing table. Every minute (every 5 s while the node is short of reservations and
//! has no relay left to try) it asks for the peers closest to a random key; each relay in the
//! answer, and each peer Kademlia adds to the routing table, goes into the [`relays::RelayBook`]
//! (at most [`relays::MAX_KNOWN_RELAYS`], [`relays::MAX_RELAY_ADDRS`] addresses each;
//! configured relays are never evicted). Discovered relays are not persisted: a restart starts
//! again from the configured ones.
//!
//! *Reservations.* The node holds reservations on `NetConfig::relay_target` relays (default
//! [`DEFAULT_RELAY_TARGET`]), configured ones first. A reservation is a relay-client listener on
//! `<relay>/p2p-circuit`; when it closes (the relay died, the connection dropped, a renewal was
//! refused) or a request gets no answer within [`relays::RESERVE_TIMEOUT`], the relay backs off
//! (2, 4, ... up to 60 s) and the node reserves on the next candidate at once. Events:
//! [`Event::RelayReserved`], [`Event::RelayLost`], [`Event::RelayDiscovered`];
//! [`Client::relays`] lists the book.
//!
//! *Being found again.* Each reservation adds a `<relay>/p2p-circuit` listen address; a lost one
//! removes it. Identify pushes the new list to every connected peer at once
//! (`push_listen_addr_updates`), and the guild layer stores the latest list per peer and
//! re-dials members at every stored address. With two reservations, members already know a
//! second circuit address when one relay dies, so they reconnect through the survivor.
//!
//! Gossipsub runs with `MessageAuthenticity::Anonymous`: no author, sequence number or signature
//! at the gossip layer, since that would tell every forwarder who wrote each message. Authorship
//! is proven inside the encrypted envelope instead. Message ids are content hashes, and every
//! message is held until the application validates it ([`Client::report_validation`]) so invalid
//! messages stop at the first honest peer. Peer scoring is on ([`topic_score_params`]): peers
//! that forward messages the application rejects lose score and are graylisted.

pub mod codec;
mod event_loop;
pub mod relays;

use std::time::Duration;

use libp2p::gossipsub::{
    self, MessageAuthenticity, PeerScoreParams, PeerScoreThresholds, TopicScoreParams,
    ValidationMode,
};
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, dcutr, identify, kad, mdns, noise, ping,
    relay, rendezvous, request_response, tcp, yamux,
};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use event_loop::{Client, Event, EventLoop, EventStream, PeerInfo, PeerPath};
pub use relays::{RelayInfo, RelayState};

/// Identify protocol string: names the application, not the user.
pub const PROTOCOL_VERSION: &str = "/securecomm/1.0.0";
/// Kademlia protocol name of SecureComm's DHT: the same as the relays'
/// (`securecomm_rendezvous::KAD_PROTOCOL`), never the public IPFS DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/securecomm/kad/1.0.0");
/// How many relay reservations a node holds by default.
pub const DEFAULT_RELAY_TARGET: usize = 2;
/// Our request-response protocol for two-party messages.
pub const DIRECT_PROTOCOL: StreamProtocol = StreamProtocol::new("/securecomm/direct/1");
/// Our stream protocol for file chunks: long-lived streams with pipelined fetch-protocol
/// requests ([`crate::files::stream`]), so bulk bytes do not pass through the event loop.
pub const FILES_PROTOCOL: StreamProtocol = StreamProtocol::new("/securecomm/files/1");
/// Largest gossip message (an envelope is at most 61,485 bytes).
pub const MAX_GOSSIP_MESSAGE: usize = 64 * 1024;
/// How many events a slow subscriber may fall behind before losing the oldest.
pub const EVENT_BUFFER: usize = 1024;
/// Commands waiting for the event loop.
pub const COMMAND_BUFFER: usize = 256;

/// Errors from the network layer.
#[derive(Debug, Error)]
pub enum NetError {
    /// A multiaddr could not be used to listen.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The transport stack could not be built.
    #[error("building the transport failed: {0}")]
    Transport(String),
    /// A dial failed immediately.
    #[error("cannot dial {0}")]
    Dial(String),
    /// Publishing failed (for example no peer is subscribed yet).
    #[error("publish failed: {0}")]
    Publish(String),
    /// A direct request failed or timed out.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer does not speak the protocol asked for.
    #[error("{0} does not speak this protocol")]
    Unsupported(PeerId),
    /// The event loop has stopped.
    #[error("the node has shut down")]
    Closed,
}

/// How the node connects.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on (TCP and/or QUIC).
    pub listen: Vec<Multiaddr>,
    /// Relays to start from (full multiaddrs with `/p2p/`): the node bootstraps discovery from
    /// them and prefers them for its reservations.
    pub relays: Vec<Multiaddr>,
    /// How many relays to hold a reservation on at once (configured and discovered ones).
    pub relay_target: usize,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Upgrade relayed connections to direct ones with DCUtR hole punching.
    pub hole_punching: bool,
    /// How long an idle connection stays open.
    pub idle_timeout: Duration,
    /// How long gossipsub remembers message ids to drop duplicates before the application sees
    /// them (gossipsub's default is a minute; tests shorten it to exercise replays).
    pub gossip_duplicate_cache: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
            ],
            relays: Vec::new(),
            relay_target: DEFAULT_RELAY_TARGET,
            mdns: false,
            hole_punching: true,
            idle_timeout: Duration::from_secs(300),
            gossip_duplicate_cache: Duration::from_secs(60),
        }
    }
}

/// Every protocol the node speaks. (libp2p behaviours do not implement `Debug`.)
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    relay_client: relay::client::Behaviour,
    dcutr: Toggle<dcutr::Behaviour>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    autonat: autonat::Behaviour,
    rendezvous: rendezvous::client::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    gossipsub: gossipsub::Behaviour,
    direct: request_response::Behaviour<codec::FrameCodec>,
    /// Plain streams ([`FILES_PROTOCOL`]), driven outside the event loop through a
    /// [`libp2p_stream::Control`].
    streams: libp2p_stream::Behaviour,
    /// The relays' mailbox protocol (client side only).
    mailbox: request_response::Behaviour<securecomm_rendezvous::mailbox::MailboxCodec>,
    /// The relays' UDP media relay allocations (client side only).
    media: request_response::Behaviour<securecomm_rendezvous::media::MediaCodec>,
}

/// Content-addressed gossip message ids, so the same envelope is deduplicated whoever forwards it.
fn message_id(msg: &gossipsub::Message) -> gossipsub::MessageId {
    gossipsub::MessageId::from(Sha256::digest(&msg.data).to_vec())
}

/// Gossipsub peer scoring: on, with the IP colocation penalty off (members often share a LAN
/// or a relay's address). Per-topic parameters come from [`topic_score_params`].
pub fn peer_score_params() -> PeerScoreParams {
    PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..PeerScoreParams::default()
    }
}

/// Score parameters for a guild topic. Only two components count: a small bonus for time in the
/// mesh and first deliveries, and the **invalid-message penalty** (P4): every message our
/// application rejects adds one to the forwarding peer's counter, which costs
/// `-10 x counter^2` and decays by 10 % a second. Three rejected messages in a row put a peer
/// below gossipsub's graylist threshold (-80), so its traffic is ignored until the counter
/// decays. Mesh-delivery-rate penalties (P3, P3b) are off: a quiet guild is normal, not a
/// misbehaving peer.
pub fn topic_score_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.5,
        first_message_deliveries_cap: 20.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..TopicScoreParams::default()
    }
}

/// Builds the swarm for a device key.
pub fn build_swarm(keypair: Keypair, cfg: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let t = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    let mdns_enabled = cfg.mdns;
    let hole_punching = cfg.hole_punching;
    let duplicate_cache = cfg.gossip_duplicate_cache;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| t(&e))?
        // libp2p's QUIC notices a dead path after 10 s of silence (keep-alive every 5 s). A
        // path dies silently when a NAT forgets its mapping or the host's public address
        // changes, and gossip sent into it is lost until the connection closes, which is what
        // starts the repair (a history session with that peer): netsim's chaos scenario
        // measured 11-15 s. Keep-alive every second and 5 s of silence bound it; the cost is
        // one small packet per connection per second.
        .with_quic_config(|mut c| {
            c.keep_alive_interval = Duration::from_secs(1);
            c.max_idle_timeout = 5_000;
            c
        })
        // In-process only (`/memory/N`): many nodes in one test process without sockets
        // (netsim's in-process tier). Nothing outside the process can reach it.
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                use libp2p::core::Transport as _;
                Ok(libp2p::core::transport::MemoryTransport::default()
                    .upgrade(libp2p::core::upgrade::Version::V1)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default()))
            },
        )
        .map_err(|e| t(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| t(&e))?
        .with_behaviour(
            |key, relay_client| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let peer_id = key.public().to_peer_id();
                let gossip_cfg = gossipsub::ConfigBuilder::default()
                    .validation_mode(ValidationMode::Anonymous)
                    .message_id_fn(message_id)
                    .validate_messages()
                    .max_transmit_size(MAX_GOSSIP_MESSAGE + 1024)
                    .heartbeat_interval(Duration::from_millis(500))
                    .duplicate_cache_time(duplicate_cache)
                    .build()?;
                let mut gossipsub =
                    gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gossip_cfg)?;
                gossipsub.with_peer_score(peer_score_params(), PeerScoreThresholds::default())?;
                let mdns = if mdns_enabled {
                    Some(mdns::tokio::Behaviour::new(
                        // libp2p's default asks every 5 minutes: a query sent before the
                        // interface was up (or lost) left LAN peers unfound for that long (a
                        // CI run of the LAN test timed out at 60 s). 15 s costs one small
                        // multicast packet.
                        mdns::Config {
                            query_interval: Duration::from_secs(15),
                            ..mdns::Config::default()
                        },
                        peer_id,
                    )?)
                } else {
                    None
                };
                Ok(Behaviour {
                    relay_client,
                    dcutr: Toggle::from(hole_punching.then(|| dcutr::Behaviour::new(peer_id))),
                    identify: identify::Behaviour::new(
                        identify::Config::new(PROTOCOL_VERSION.into(), key.public())
                            .with_agent_version(format!("securecomm/{}", env!("CARGO_PKG_VERSION")))
                            // A new or lost relay circuit changes where we can be reached: tell
                            // connected peers at once, not at the next periodic identify.
                            .with_push_listen_addr_updates(true),
                    ),
                    ping: ping::Behaviour::new(ping::Config::new()),
                    autonat: autonat::Behaviour::new(peer_id, autonat::Config::default()),
                    rendezvous: rendezvous::client::Behaviour::new(key.clone()),
                    kad: {
                        let mut kad = kad::Behaviour::with_config(
                            peer_id,
                            kad::store::MemoryStore::new(peer_id),
                            kad::Config::new(KAD_PROTOCOL),
                        );
                        // Nodes only ask; only relays answer (and so only relays fill the
                        // routing tables, which is what makes them discoverable).
                        kad.set_mode(Some(kad::Mode::Client));
                        kad
                    },
                    mdns: Toggle::from(mdns),
                    gossipsub,
                    direct: request_response::Behaviour::new(
                        [(DIRECT_PROTOCOL, request_response::ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(20))
                            .with_max_concurrent_streams(64),
                    ),
                    streams: libp2p_stream::Behaviour::new(),
                    mailbox: request_response::Behaviour::with_codec(
                        securecomm_rendezvous::mailbox::MailboxCodec::default(),
                        [(
                            securecomm_rendezvous::mailbox::PROTOCOL,
                            request_response::ProtocolSupport::Outbound,
                        )],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(30))
                            .with_max_concurrent_streams(16),
                    ),
                    media: request_response::Behaviour::with_codec(
                        securecomm_rendezvous::media::MediaCodec::default(),
                        [(
                            securecomm_rendezvous::media::MEDIA_PROTOCOL,
                            request_response::ProtocolSupport::Outbound,
                        )],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(10))
                            .with_max_concurrent_streams(16),
                    ),
                })
            },
        )
        .map_err(|e| t(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(cfg.idle_timeout))
        .build();
    Ok(swarm)
}

/// The libp2p keypair of a device: its Ed25519 device key, so the PeerId is derived from it.
pub fn device_keypair(
    device: &securecomm_noise::keys::DeviceSigningKey,
) -> Result<Keypair, NetError> {
    let mut seed = *device.seed();
    Keypair::ed25519_from_bytes(&mut seed).map_err(|e| NetError::Transport(e.to_string()))
}
