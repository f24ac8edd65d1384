//! The relay node: one task that owns a libp2p [`Swarm`] and serves until told to stop.
//!
//! # What runs
//! One `#[derive(NetworkBehaviour)]` composes, in this order:
//! * connection limits (total, per peer, pending handshakes), checked before anything else;
//! * circuit relay v2 (hop side) with the community's limits from [`RelayConfig`]: long circuits
//!   with byte caps that suit voice and files, reservation and circuit caps, and token-bucket
//!   rate limits per peer and per IP address;
//! * a rendezvous server, so members of a guild find each other under an opaque namespace;
//! * identify (so clients learn their observed address and our protocols), an AutoNAT v2
//!   server (clients ask us to dial them back to learn whether they are reachable), ping, and
//!   Kademlia in server mode on SecureComm's own protocol name ([`KAD_PROTOCOL`]), never the
//!   public IPFS DHT.
//! * when `[mailbox] enabled`, the mailbox and prekey directory ([`crate::mailbox`]) on
//!   `/securecomm/mailbox/1.0.0`: requests are decoded here and applied by a worker thread
//!   that owns the SQLite database in [`RelayOptions::data_dir`], answers come back to this task.
//! * when `[media] enabled`, the media relay's allocation protocol ([`crate::media`]) on
//!   `/securecomm/media/1.0.0`: requests are answered here from the allocation table the UDP
//!   thread ([`MediaRelay`]) shares; the UDP socket itself never touches this task.
//!
//! # Relays find each other
//! Only relays run that DHT in server mode (nodes are clients), so its routing tables hold
//! exactly the relays: that is the relay directory. A relay joins through the relays in its
//! `peers` list (added to its routing table, then a bootstrap query, repeated every
//! [`PEER_BOOTSTRAP_EVERY`]); a relay that identifies a peer speaking [`KAD_PROTOCOL`] adds it
//! (at most [`MAX_KAD_ADDRS`] of its listen addresses), which is how the relay dialled learns the
//! one that dialled it. A client that knows one relay asks it for closest peers and so learns
//! the others with their addresses.
//!
//! Transports are TCP and QUIC, Noise and Yamux on TCP. The TCP socket can be wrapped by a
//! [`crate::capture`] tap below Noise, so an audit sees exactly the bytes on the wire.
//!
//! # What it sees and logs
//! The relay forwards Noise-encrypted circuits whose inner connection is encrypted again end to
//! end between the two clients; it learns peer ids, addresses, timing and volumes, never
//! content. Logs are structured `tracing` events carrying peer ids, addresses and event kinds;
//! no payload, rendezvous namespace or registration record is ever logged. Metrics are counters
//! and histograms without peer ids ([`crate::metrics`]).
//!
//! # libp2p quirks
//! libp2p-tcp 0.45 sets `SO_REUSEPORT` on listening sockets (for hole punching), so a second
//! relay started on the same TCP port by the same user binds too and the kernel splits incoming
//! connections between them; run one relay per port (the systemd unit does).
//!
//! ## Compensated here
//! libp2p-relay 0.22 denies a new reservation only when the peer *already holds more than*
//! `max_reservations_per_peer` (and the same for circuits), so it lets one more through than
//! configured. [`relay_config`] passes `limit - 1`, so the limit in the TOML file is the exact
//! number a peer may hold; the multi-process test `per_peer_reservation_limit_is_exact` checks it.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    num::NonZeroU32,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, future::Either};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport, autonat,
    connection_limits::{self, ConnectionLimits},
    core::{
        muxing::StreamMuxerBox,
        transport::{ListenerId, upgrade::Version},
    },
    identify,
    identity::Keypair,
    kad,
    metrics::{BandwidthTransport, Metrics, Recorder},
    multiaddr::Protocol,
    noise, ping, quic, relay, rendezvous,
    request_response::{self, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle},
    tcp, yamux,
};
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    capture::{self, CaptureSink, Layer, TappedNoise},
    config::{ConfigError, RelayConfig},
    mailbox::{
        MailboxCodec, MailboxOptions, PROTOCOL as MAILBOX_PROTOCOL, Refusal, Response,
        codec::FRAME_OVERHEAD,
        service::{Job, MailboxMetrics, Reply, Service},
        store::{DB_FILE, Store, StoreError},
    },
    media::{MEDIA_PROTOCOL, MediaCodec, MediaMetrics, MediaRelay, MediaRequest, MediaResponse},
    metrics::MetricsServer,
};

/// How long a mailbox request or response may take on the wire (large blobs on slow links).
const MAILBOX_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a media allocation request may take on the wire.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(10);

/// Kademlia protocol name of SecureComm's DHT (kept apart from the public IPFS DHT).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/securecomm/kad/1.0.0");

/// How often a relay with configured `peers` re-runs its DHT bootstrap.
pub const PEER_BOOTSTRAP_EVERY: Duration = Duration::from_secs(300);

/// Most listen addresses of another relay put in the routing table.
pub const MAX_KAD_ADDRS: usize = 8;

/// Identify protocol version string announced by the relay.
pub const IDENTIFY_PROTOCOL: &str = "/securecomm/0.1.0";

/// How long [`Relay::spawn`] waits for every listener to report its first address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// After every listener has an address, how long to keep collecting more (an unspecified
/// address such as `0.0.0.0` reports one address per interface, one after another).
const LISTEN_SETTLE: Duration = Duration::from_millis(100);

/// Why the relay could not start.
#[derive(Debug, Error)]
pub enum RelayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Noise configuration could not be built from the identity key.
    #[error("noise setup failed: {0}")]
    Noise(#[from] noise::Error),
    /// A listen address was refused by every transport or failed to bind.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// Listeners did not report an address in time.
    #[error("expected every listener to report an address within {0:?}, got none")]
    ListenTimeout(Duration),
    /// The mailbox database could not be opened.
    #[error(transparent)]
    Mailbox(#[from] StoreError),
    /// The capture file or metrics socket could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being opened.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Options that are not part of the operator's TOML file.
#[derive(Debug, Clone, Default)]
pub struct RelayOptions {
    /// Append every raw TCP byte read and written to this file (see [`crate::capture`]).
    pub capture: Option<PathBuf>,
    /// Serve Prometheus metrics over plain HTTP at `GET /metrics` on this address.
    pub metrics: Option<SocketAddr>,
    /// Directory holding the mailbox database (`mailbox.sqlite3`). Without one the mailbox
    /// lives in memory and is lost when the relay stops (tests, throwaway relays).
    pub data_dir: Option<PathBuf>,
    /// Mailbox settings that are not the operator's (test TTLs, sweep interval).
    pub mailbox: MailboxOptions,
}

/// The composed behaviour of a relay node (private: [`Relay::spawn`] is the interface).
#[derive(NetworkBehaviour)]
struct RelayBehaviour {
    limits: connection_limits::Behaviour,
    relay: relay::Behaviour,
    rendezvous: rendezvous::server::Behaviour,
    identify: identify::Behaviour,
    autonat: autonat::v2::server::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mailbox: Toggle<request_response::Behaviour<MailboxCodec>>,
    media: Toggle<request_response::Behaviour<MediaCodec>>,
}

/// Entry point of the relay library.
#[derive(Debug)]
pub struct Relay;

/// A running relay. Dropping it without [`RelayHandle::shutdown`] aborts the relay task.
#[derive(Debug)]
pub struct RelayHandle {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    metrics_addr: Option<SocketAddr>,
    media_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    metrics_task: Option<JoinHandle<()>>,
}

impl RelayHandle {
    /// The relay's peer id, stable across restarts with the same data directory.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Every address the listeners bound at start, each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// The bound metrics address, if metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The bound UDP address of the media relay, if it is enabled.
    pub fn media_addr(&self) -> Option<SocketAddr> {
        self.media_addr
    }

    /// Stops accepting, closes every connection and waits for the relay task to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(m) = self.metrics_task.take() {
            m.abort();
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "relay task ended abnormally");
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(m) = self.metrics_task.take() {
            m.abort();
        }
    }
}

/// Builds the libp2p relay configuration from the operator's limits (see the module docs for
/// why the per-peer limits are passed minus one).
pub fn relay_config(config: &RelayConfig) -> relay::Config {
    let c = &config.circuit;
    let interval = Duration::from_secs(c.rate_interval_secs.max(1));
    let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    let mut rc = relay::Config {
        max_reservations: c.max_reservations as usize,
        max_reservations_per_peer: (c.max_reservations_per_peer as usize).saturating_sub(1),
        reservation_duration: Duration::from_secs(c.reservation_duration_secs),
        max_circuits: c.max_circuits as usize,
        max_circuits_per_peer: (c.max_circuits_per_peer as usize).saturating_sub(1),
        // libp2p requires the duration in seconds to fit a u32 (validated: at most a week).
        max_circuit_duration: config.circuit_duration(),
        max_circuit_bytes: c.max_bytes,
        ..relay::Config::default()
    };
    rc.reservation_rate_limiters.clear();
    rc.circuit_src_rate_limiters.clear();
    rc.reservation_rate_per_peer(nz(c.reservation_rate_per_peer), interval)
        .reservation_rate_per_ip(nz(c.reservation_rate_per_ip), interval)
        .circuit_src_per_peer(nz(c.circuit_rate_per_peer), interval)
        .circuit_src_per_ip(nz(c.circuit_rate_per_ip), interval)
}

fn behaviour(
    config: &RelayConfig,
    key: &Keypair,
    mailbox: Option<&MailboxMetrics>,
    media: Option<&MediaMetrics>,
) -> RelayBehaviour {
    let peer_id = key.public().to_peer_id();
    let n = &config.connections;
    let limits = ConnectionLimits::default()
        .with_max_established(Some(n.max_established))
        .with_max_established_per_peer(Some(n.max_established_per_peer))
        .with_max_pending_incoming(Some(n.max_pending_incoming));
    let r = &config.rendezvous;
    let rendezvous = rendezvous::server::Config::default()
        .with_max_ttl(r.max_ttl_secs)
        .with_max_registration_per_peer(r.max_registrations_per_peer as usize)
        .with_max_registration_total(r.max_registrations as usize);
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config.set_record_ttl(Some(Duration::from_secs(24 * 3600)));
    // A relay is a well-known entry point that others bootstrap from; it asks only the relays
    // it was told about (see `peers`).
    kad_config.set_periodic_bootstrap_interval(
        (!config.peers.is_empty()).then_some(PEER_BOOTSTRAP_EVERY),
    );
    let mut kad =
        kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
    kad.set_mode(Some(kad::Mode::Server));
    let mut relay = relay::Behaviour::new(peer_id, relay_config(config));
    // Serving circuits is this node's purpose: advertise the hop protocol from the start
    // rather than waiting for an external address to be confirmed.
    relay.set_status(Some(relay::Status::Enable));
    RelayBehaviour {
        limits: connection_limits::Behaviour::new(limits),
        relay,
        rendezvous: rendezvous::server::Behaviour::new(rendezvous),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                .with_agent_version(format!("securecomm-relay/{}", env!("CARGO_PKG_VERSION"))),
        ),
        autonat: autonat::v2::server::Behaviour::default(),
        ping: ping::Behaviour::default(),
        kad,
        mailbox: Toggle::from(mailbox.map(|m| mailbox_behaviour(config, m))),
        media: Toggle::from(media.map(|m| {
            request_response::Behaviour::with_codec(
                MediaCodec::default().counting_malformed(m.malformed()),
                [(MEDIA_PROTOCOL, ProtocolSupport::Inbound)],
                request_response::Config::default().with_request_timeout(MEDIA_TIMEOUT),
            )
        })),
    }
}

/// The relay's side of the mailbox protocol: inbound only, requests bounded by the largest
/// item this relay stores.
fn mailbox_behaviour(
    config: &RelayConfig,
    metrics: &MailboxMetrics,
) -> request_response::Behaviour<MailboxCodec> {
    let max_request = usize::try_from(config.mailbox.max_item_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(FRAME_OVERHEAD);
    request_response::Behaviour::with_codec(
        MailboxCodec::with_limits(max_request, 0).counting_malformed(metrics.malformed()),
        [(MAILBOX_PROTOCOL, ProtocolSupport::Inbound)],
        request_response::Config::default().with_request_timeout(MAILBOX_TIMEOUT),
    )
}

fn build_swarm(
    config: &RelayConfig,
    key: &Keypair,
    capture: Option<Arc<CaptureSink>>,
    registry: &mut Registry,
    mailbox: Option<&MailboxMetrics>,
    media: Option<&MediaMetrics>,
) -> Result<Swarm<RelayBehaviour>, RelayError> {
    let noise = TappedNoise::new(key, capture.clone())?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(move |stream, _| capture::tap(capture.as_ref(), Layer::Wire, stream))
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let quic = quic::tokio::Transport::new(quic::Config::new(key))
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let transport = quic.or_transport(tcp).map(|either, _| match either {
        Either::Left(out) | Either::Right(out) => out,
    });
    let transport = BandwidthTransport::new(transport, registry)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed();
    let swarm_config = libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(Duration::from_secs(config.connections.idle_timeout_secs));
    Ok(Swarm::new(
        transport,
        behaviour(config, key, mailbox, media),
        key.public().to_peer_id(),
        swarm_config,
    ))
}

impl Relay {
    /// Starts a relay: binds every listen address, waits until each listener reports its
    /// addresses, starts the metrics endpoint, and returns a handle while the relay serves in
    /// a background task. Must be called inside a tokio runtime.
    pub async fn spawn(
        config: RelayConfig,
        key: Keypair,
        options: RelayOptions,
    ) -> Result<RelayHandle, RelayError> {
        config.validate()?;
        let (listen, external) = config.addresses()?;
        let capture = match &options.capture {
            Some(path) => Some(CaptureSink::create(path).map_err(|source| RelayError::Io {
                what: format!("capture file {}", path.display()),
                source,
            })?),
            None => None,
        };
        let mut registry = Registry::default();
        let mailbox_metrics = config
            .mailbox
            .enabled
            .then(|| MailboxMetrics::register(&mut registry));
        let media = if config.media.enabled {
            let listen = config.media_listen()?;
            let metrics = MediaMetrics::register(&mut registry);
            Some(
                MediaRelay::start(&config.media, listen, metrics).map_err(|source| {
                    RelayError::Io {
                        what: format!("media relay UDP socket {listen}"),
                        source,
                    }
                })?,
            )
        } else {
            None
        };
        let media_metrics = media.as_ref().map(MediaRelay::metrics);
        let mut swarm = build_swarm(
            &config,
            &key,
            capture,
            &mut registry,
            mailbox_metrics.as_ref(),
            media_metrics.as_ref(),
        )?;
        let media_addr = media.as_ref().map(MediaRelay::local_addr);
        let metrics = Metrics::new(&mut registry);
        let peer_id = *swarm.local_peer_id();
        let (mailbox, replies) = if let Some(mailbox_metrics) = mailbox_metrics {
            let ttl = options
                .mailbox
                .ttl_override
                .map(|d| d.as_secs().max(1))
                .unwrap_or(config.mailbox.ttl_secs);
            let path = options.data_dir.as_ref().map(|d| d.join(DB_FILE));
            let store = Store::open(path.as_deref(), &config.mailbox, ttl, peer_id)?;
            let mut service =
                Service::start(store, mailbox_metrics, options.mailbox.sweep_interval).map_err(
                    |source| RelayError::Io {
                        what: "mailbox worker thread".into(),
                        source,
                    },
                )?;
            let replies = service.take_replies();
            (Some(service), replies)
        } else {
            (None, None)
        };

        for addr in &external {
            swarm.add_external_address(addr.clone());
        }
        let peers = config.peer_addresses()?;
        for (peer, addr) in &peers {
            swarm.behaviour_mut().kad.add_address(peer, addr.clone());
        }
        if !peers.is_empty() {
            // Dials them; failures are logged and retried by the periodic bootstrap.
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
        let mut pending: HashSet<ListenerId> = HashSet::new();
        let mut listeners = HashMap::new();
        for addr in &listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| RelayError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            pending.insert(id);
            listeners.insert(addr.clone(), id);
        }

        let mut state = EventLoop {
            metrics,
            announce_listen_addrs: external.is_empty(),
            listen_addrs: Vec::new(),
            listeners,
            mailbox,
            media,
        };
        let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
        while !pending.is_empty() {
            let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .map_err(|_| RelayError::ListenTimeout(LISTEN_TIMEOUT))?;
            match &event {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    pending.remove(listener_id);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } => {
                    let addr = state.listener_addr(*listener_id);
                    return Err(RelayError::Listen {
                        addr,
                        reason: format!("{reason:?}"),
                    });
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    let addr = state.listener_addr(*listener_id);
                    return Err(RelayError::Listen {
                        addr,
                        reason: error.to_string(),
                    });
                }
                _ => {}
            }
            state.handle(&mut swarm, event);
        }
        let settle = tokio::time::Instant::now() + LISTEN_SETTLE;
        while let Ok(event) = tokio::time::timeout_at(settle, swarm.select_next_some()).await {
            state.handle(&mut swarm, event);
        }
        let listen_addrs = state
            .listen_addrs
            .iter()
            .map(|a| a.clone().with(Protocol::P2p(peer_id)))
            .collect();

        let (metrics_addr, metrics_task) = match options.metrics {
            Some(addr) => {
                let server = MetricsServer::bind(addr, registry)
                    .await
                    .map_err(|source| RelayError::Io {
                        what: format!("metrics endpoint {addr}"),
                        source,
                    })?;
                let bound = server.local_addr();
                (Some(bound), Some(tokio::spawn(server.serve())))
            }
            None => (None, None),
        };

        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(state.run(swarm, shutdown_rx, replies));
        tracing::info!(%peer_id, "relay started");
        Ok(RelayHandle {
            peer_id,
            listen_addrs,
            metrics_addr,
            media_addr,
            shutdown: Some(shutdown_tx),
            task: Some(task),
            metrics_task,
        })
    }
}

struct EventLoop {
    metrics: Metrics,
    /// With no configured external address, announce the bound listen addresses.
    announce_listen_addrs: bool,
    listen_addrs: Vec<Multiaddr>,
    listeners: HashMap<Multiaddr, ListenerId>,
    /// The mailbox worker, when the mailbox is enabled.
    mailbox: Option<Service>,
    /// The UDP media relay, when enabled.
    media: Option<MediaRelay>,
}

/// The next answer from the mailbox worker; pending forever without one.
async fn next_reply(replies: &mut Option<mpsc::Receiver<Reply>>) -> Option<Reply> {
    match replies {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl EventLoop {
    fn listener_addr(&self, id: ListenerId) -> Multiaddr {
        self.listeners
            .iter()
            .find(|(_, l)| **l == id)
            .map(|(a, _)| a.clone())
            .unwrap_or_else(Multiaddr::empty)
    }

    async fn run(
        mut self,
        mut swarm: Swarm<RelayBehaviour>,
        mut shutdown: oneshot::Receiver<()>,
        mut replies: Option<mpsc::Receiver<Reply>>,
    ) {
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                event = swarm.select_next_some() => self.handle(&mut swarm, event),
                reply = next_reply(&mut replies) => match reply {
                    Some((channel, response)) => {
                        if let Some(b) = swarm.behaviour_mut().mailbox.as_mut() {
                            // Fails only when the peer gave up waiting; nothing to do then.
                            let _ = b.send_response(channel, response);
                        }
                    }
                    None => {
                        tracing::error!("mailbox worker stopped; mailbox requests now fail");
                        replies = None;
                        self.mailbox = None;
                    }
                },
            }
        }
        if let Some(mailbox) = self.mailbox.take() {
            mailbox.stop().await;
        }
        if let Some(media) = self.media.take() {
            media.stop();
        }
        let listeners: Vec<ListenerId> = self.listeners.values().copied().collect();
        for id in listeners {
            swarm.remove_listener(id);
        }
        let peers: Vec<PeerId> = swarm.connected_peers().copied().collect();
        tracing::info!(connected = peers.len(), "relay shutting down");
        for peer in peers {
            let _ = swarm.disconnect_peer_id(peer);
        }
        // Let the close frames go out, bounded so a stuck peer cannot hold the shutdown.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while swarm.connected_peers().next().is_some() {
                let _ = swarm.select_next_some().await;
            }
        })
        .await;
        tracing::info!("relay stopped");
    }

    fn handle(
        &mut self,
        swarm: &mut Swarm<RelayBehaviour>,
        event: SwarmEvent<RelayBehaviourEvent>,
    ) {
        self.metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(RelayBehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                ref info,
                ..
            })) if info.protocols.contains(&KAD_PROTOCOL) => {
                // Another relay: put it in the routing table so clients can learn it from us.
                for addr in info.listen_addrs.iter().take(MAX_KAD_ADDRS) {
                    swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, addr.clone());
                }
                if let SwarmEvent::Behaviour(e) = event {
                    self.behaviour_event(swarm, e);
                }
            }
            SwarmEvent::Behaviour(event) => self.behaviour_event(swarm, event),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if self.announce_listen_addrs {
                    swarm.add_external_address(address.clone());
                }
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "listen address expired");
                if self.announce_listen_addrs {
                    swarm.remove_external_address(&address);
                }
                self.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::debug!(%peer_id, remote = %endpoint.get_remote_address(), "connection established");
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                tracing::debug!(%peer_id, cause = ?cause.map(|c| c.to_string()), "connection closed");
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::debug!(remote = %send_back_addr, %error, "incoming connection failed");
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            _ => {}
        }
    }

    fn behaviour_event(&mut self, swarm: &mut Swarm<RelayBehaviour>, event: RelayBehaviourEvent) {
        match event {
            RelayBehaviourEvent::Mailbox(e) => self.mailbox_event(swarm, e),
            RelayBehaviourEvent::Media(e) => self.media_event(swarm, e),
            RelayBehaviourEvent::Relay(e) => {
                self.metrics.record(&e);
                relay_log(&e);
            }
            RelayBehaviourEvent::Identify(e) => {
                self.metrics.record(&e);
                if let identify::Event::Error { peer_id, error, .. } = &e {
                    tracing::debug!(%peer_id, %error, "identify failed");
                }
            }
            RelayBehaviourEvent::Ping(e) => self.metrics.record(&e),
            RelayBehaviourEvent::Kad(e) => self.metrics.record(&e),
            RelayBehaviourEvent::Rendezvous(e) => match e {
                rendezvous::server::Event::PeerRegistered { peer, .. } => {
                    tracing::debug!(%peer, "rendezvous registration");
                }
                rendezvous::server::Event::PeerNotRegistered { peer, error, .. } => {
                    tracing::info!(%peer, ?error, "rendezvous registration refused");
                }
                rendezvous::server::Event::DiscoverNotServed { enquirer, error } => {
                    tracing::debug!(%enquirer, ?error, "rendezvous discover refused");
                }
                _ => {}
            },
            RelayBehaviourEvent::Autonat(e) => {
                tracing::debug!(peer = %e.client, tested = %e.tested_addr, ok = e.result.is_ok(),
                    "autonat dial-back");
            }
            RelayBehaviourEvent::Limits(never) => match never {},
        }
    }
}

impl EventLoop {
    /// Hands a mailbox request to the worker, or answers at once when it cannot take it.
    /// Logs carry the peer id and the failure kind, never a request's content.
    fn mailbox_event(
        &mut self,
        swarm: &mut Swarm<RelayBehaviour>,
        event: request_response::Event<crate::mailbox::Request, Response>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let job = Job {
                    peer,
                    request,
                    channel,
                };
                let refused = match &self.mailbox {
                    Some(service) => match service.submit(job) {
                        Ok(()) => None,
                        Err(job) => {
                            let refusal = Refusal::Busy {
                                retry_after_secs: 5,
                            };
                            service.metrics().refused(&refusal);
                            Some((job.channel, refusal))
                        }
                    },
                    None => Some((job.channel, Refusal::Internal)),
                };
                if let Some((channel, refusal)) = refused
                    && let Some(b) = swarm.behaviour_mut().mailbox.as_mut()
                {
                    let _ = b.send_response(channel, Response::Refused(refusal));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, error = %error, "mailbox request failed");
            }
            _ => {}
        }
    }
}

impl EventLoop {
    /// Answers a media allocation request at once from the shared table (a short lock, no
    /// I/O). Logs carry the peer id and the request kind, never a token or room.
    fn media_event(
        &mut self,
        swarm: &mut Swarm<RelayBehaviour>,
        event: request_response::Event<MediaRequest, MediaResponse>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let response = match &self.media {
                    Some(media) => media.handle(peer, request),
                    None => MediaResponse::refused("disabled"),
                };
                if let Some(b) = swarm.behaviour_mut().media.as_mut() {
                    // Fails only when the peer gave up waiting; nothing to do then.
                    let _ = b.send_response(channel, response);
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, error = %error, "media request failed");
            }
            _ => {}
        }
    }
}

#[allow(deprecated)] // libp2p keeps several failure variants only until it logs them itself.
fn relay_log(event: &relay::Event) {
    use relay::Event as E;
    match event {
        E::ReservationReqAccepted {
            src_peer_id,
            renewed,
        } => tracing::info!(peer = %src_peer_id, renewed, "reservation accepted"),
        E::ReservationReqDenied {
            src_peer_id,
            status,
        } => tracing::info!(peer = %src_peer_id, ?status, "reservation denied"),
        E::CircuitReqAccepted {
            src_peer_id,
            dst_peer_id,
        } => tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "circuit opened"),
        E::CircuitReqDenied {
            src_peer_id,
            dst_peer_id,
            status,
        } => tracing::info!(src = %src_peer_id, dst = %dst_peer_id, ?status, "circuit denied"),
        E::CircuitClosed {
            src_peer_id,
            dst_peer_id,
            error,
        } => tracing::info!(src = %src_peer_id, dst = %dst_peer_id,
            error = ?error.as_ref().map(|e| e.to_string()), "circuit closed"),
        E::ReservationTimedOut { src_peer_id } | E::ReservationClosed { src_peer_id } => {
            tracing::debug!(peer = %src_peer_id, "reservation ended");
        }
        other => tracing::debug!(event = ?other, "relay event"),
    }
}
