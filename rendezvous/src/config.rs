//! Relay configuration: a TOML file an operator edits, with limits that suit voice and files.
//!
//! libp2p's circuit-relay defaults (2 minutes and 128 KiB per circuit) would cut a call after two
//! minutes and a file after 128 KiB, so SecureComm relays default to long circuits with byte
//! limits the community sets. Every limit is bounded; a zero or absurd value is a clear error.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use libp2p::{Multiaddr, multiaddr::Protocol};
use serde::Deserialize;
use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid relay configuration: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is outside its allowed range.
    #[error("{field} must be between {min} and {max}, got {got}")]
    OutOfRange {
        /// The offending key.
        field: &'static str,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
        /// The value found.
        got: u64,
    },
    /// No listen address was given.
    #[error("at least one listen address is required")]
    NoListenAddress,
    /// A listen or external address is not a valid multiaddr.
    #[error("expected a multiaddr such as /ip4/0.0.0.0/tcp/4001, got {addr:?}: {reason}")]
    BadAddress {
        /// The text as given.
        addr: String,
        /// Why the parser refused it.
        reason: String,
    },
    /// A UDP listen address is not an `IP:port` socket address.
    #[error("{field}: expected an address such as 0.0.0.0:3478, got {addr:?}: {reason}")]
    BadSocketAddress {
        /// The offending key.
        field: &'static str,
        /// The text as given.
        addr: String,
        /// Why the parser refused it.
        reason: String,
    },
}

/// The whole relay configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Multiaddrs to listen on, e.g. `/ip4/0.0.0.0/tcp/4001` and `/ip4/0.0.0.0/udp/4001/quic-v1`.
    pub listen: Vec<String>,
    /// Public multiaddrs this relay announces in reservations (e.g. `/dns4/relay.example/tcp/4001`
    /// or `/ip4/203.0.113.7/tcp/4001`). When empty, the addresses the listeners actually bound are
    /// announced, which is right on loopback and on a host with a public interface address.
    pub external: Vec<String>,
    /// Other relays to join SecureComm's relay DHT through (multiaddrs ending in
    /// `/p2p/<peer id>`, at most [`MAX_PEERS`]). A relay started with one peer is soon known to
    /// every relay that knows that peer, and clients that know any of them learn it.
    pub peers: Vec<String>,
    /// Circuit relay limits.
    pub circuit: CircuitLimits,
    /// Connection limits.
    pub connections: ConnectionLimits,
    /// Rendezvous server limits.
    pub rendezvous: RendezvousLimits,
    /// Mailbox (store-and-forward of ciphertext) limits.
    pub mailbox: MailboxLimits,
    /// UDP media relay settings and limits.
    pub media: MediaLimits,
}

/// Limits on relayed connections.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitLimits {
    /// Longest a single relayed circuit may stay open, in seconds.
    pub max_duration_secs: u64,
    /// Most bytes a single circuit may carry, both directions counted together.
    pub max_bytes: u64,
    /// Most reservations held at once.
    pub max_reservations: u32,
    /// Most reservations per peer.
    pub max_reservations_per_peer: u32,
    /// Most circuits open at once.
    pub max_circuits: u32,
    /// Most circuits per peer.
    pub max_circuits_per_peer: u32,
    /// How long a reservation lasts before the client must renew it, in seconds.
    pub reservation_duration_secs: u64,
    /// Reservations one peer may make in a burst; one more is allowed every
    /// `rate_interval_secs` (a token bucket).
    pub reservation_rate_per_peer: u32,
    /// Reservations one IP address may make in a burst (same refill interval).
    pub reservation_rate_per_ip: u32,
    /// Circuits one source peer may open in a burst (same refill interval).
    pub circuit_rate_per_peer: u32,
    /// Circuits one source IP address may open in a burst (same refill interval).
    pub circuit_rate_per_ip: u32,
    /// Refill interval of every rate limiter above, in seconds.
    pub rate_interval_secs: u64,
}

/// Limits on connections, counted before any protocol runs.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Most established connections in total.
    pub max_established: u32,
    /// Most established connections with one peer.
    pub max_established_per_peer: u32,
    /// Most incoming connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Seconds a connection with no open stream is kept.
    pub idle_timeout_secs: u64,
}

/// Limits on the rendezvous server's registrations.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RendezvousLimits {
    /// Most registrations one peer holds (across namespaces).
    pub max_registrations_per_peer: u32,
    /// Most registrations held in total.
    pub max_registrations: u32,
    /// Longest registration TTL granted, in seconds.
    pub max_ttl_secs: u64,
}

/// Limits on stored ciphertext for offline members.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MailboxLimits {
    /// Whether this relay offers a mailbox at all.
    pub enabled: bool,
    /// How long an undelivered item is kept, in seconds.
    pub ttl_secs: u64,
    /// Bytes stored for one recipient tag.
    pub max_bytes_per_recipient: u64,
    /// Bytes one sender may have stored at once.
    pub max_bytes_per_sender: u64,
    /// Bytes stored in total.
    pub max_total_bytes: u64,
    /// Largest single item.
    pub max_item_bytes: u64,
    /// Items stored for one recipient tag.
    pub max_items_per_recipient: u64,
    /// Items one sender may have stored at once.
    pub max_items_per_sender: u64,
    /// Items stored in total (also the bound on delivery records kept for status queries).
    pub max_items: u64,
    /// How long a published prekey bundle is kept unless republished, in seconds.
    pub prekey_ttl_secs: u64,
    /// Prekey bundles held in total (one per device).
    pub max_prekey_entries: u64,
}

/// The UDP media relay (see [`crate::media`]): allocations over libp2p, media over one UDP
/// socket.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MediaLimits {
    /// Whether this relay offers the media relay at all (when false, the protocol is not
    /// advertised and no UDP socket is opened).
    pub enabled: bool,
    /// UDP socket address to bind, e.g. `0.0.0.0:3478`. When absent: the IP address of the
    /// first `listen` multiaddr, port [`MEDIA_PORT`], or port 0 (any free port) when that
    /// multiaddr uses port 0. Clients learn the bound port in every allocation.
    pub listen: Option<String>,
    /// Most allocations held at once.
    pub max_allocations: u32,
    /// Most allocations one peer holds at once.
    pub max_allocations_per_peer: u32,
    /// Most allocations in one room.
    pub max_room_size: u32,
    /// Seconds an allocation lives unless refreshed.
    pub lifetime_secs: u64,
    /// Seconds without a UDP packet after which a bound allocation expires (an allocation never
    /// bound expires after this or 60 s, whichever is longer).
    pub idle_timeout_secs: u64,
    /// Packets one allocation may send per second (its burst is one second's worth).
    pub packets_per_second: u32,
    /// Bytes (whole UDP payloads as sent in) one allocation may send per second (burst: one
    /// second's worth).
    pub bytes_per_second: u32,
}

/// Default UDP port of the media relay (the STUN/TURN port, which firewalls often allow).
pub const MEDIA_PORT: u16 = 3478;

impl Default for MediaLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            max_allocations: 4096,
            max_allocations_per_peer: 4,
            max_room_size: 64,
            lifetime_secs: 300,
            idle_timeout_secs: 60,
            packets_per_second: 200,
            bytes_per_second: 40_000,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".into(),
                "/ip4/0.0.0.0/udp/4001/quic-v1".into(),
            ],
            external: Vec::new(),
            peers: Vec::new(),
            circuit: CircuitLimits::default(),
            connections: ConnectionLimits::default(),
            rendezvous: RendezvousLimits::default(),
            mailbox: MailboxLimits::default(),
            media: MediaLimits::default(),
        }
    }
}

impl Default for CircuitLimits {
    fn default() -> Self {
        Self {
            max_duration_secs: 4 * 3600,
            max_bytes: 4 << 30,
            max_reservations: 1024,
            max_reservations_per_peer: 4,
            max_circuits: 512,
            // A member that can only be reached through a relay (no UDP, TCP 443 only) holds
            // one circuit per guild member it talks to: 16 cut a 16-member guild short
            // (netsim's NAT matrix).
            max_circuits_per_peer: 64,
            reservation_duration_secs: 3600,
            reservation_rate_per_peer: 30,
            reservation_rate_per_ip: 60,
            circuit_rate_per_peer: 60,
            circuit_rate_per_ip: 120,
            rate_interval_secs: 60,
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_established: 4096,
            max_established_per_peer: 8,
            max_pending_incoming: 256,
            idle_timeout_secs: 60,
        }
    }
}

impl Default for RendezvousLimits {
    fn default() -> Self {
        Self {
            max_registrations_per_peer: 32,
            max_registrations: 10_000,
            max_ttl_secs: 72 * 3600,
        }
    }
}

impl Default for MailboxLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_secs: 14 * 24 * 3600,
            max_bytes_per_recipient: 64 << 20,
            max_bytes_per_sender: 64 << 20,
            max_total_bytes: 8 << 30,
            max_item_bytes: 1 << 20,
            max_items_per_recipient: 10_000,
            max_items_per_sender: 100_000,
            max_items: 1_000_000,
            prekey_ttl_secs: 30 * 24 * 3600,
            max_prekey_entries: 100_000,
        }
    }
}

fn range(field: &'static str, got: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if got < min || got > max {
        return Err(ConfigError::OutOfRange {
            field,
            min,
            max,
            got,
        });
    }
    Ok(())
}

impl RelayConfig {
    /// Parses and validates a TOML configuration. Missing keys take their defaults.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every limit against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::NoListenAddress);
        }
        self.addresses()?;
        range(
            "peers (count)",
            self.peers.len() as u64,
            0,
            MAX_PEERS as u64,
        )?;
        self.peer_addresses()?;
        let c = &self.circuit;
        range(
            "circuit.max_duration_secs",
            c.max_duration_secs,
            60,
            7 * 24 * 3600,
        )?;
        range("circuit.max_bytes", c.max_bytes, 1 << 20, 1 << 40)?;
        range(
            "circuit.max_reservations",
            c.max_reservations.into(),
            1,
            1 << 20,
        )?;
        range(
            "circuit.max_reservations_per_peer",
            c.max_reservations_per_peer.into(),
            1,
            64,
        )?;
        range("circuit.max_circuits", c.max_circuits.into(), 1, 1 << 20)?;
        range(
            "circuit.max_circuits_per_peer",
            c.max_circuits_per_peer.into(),
            1,
            1024,
        )?;
        range(
            "circuit.reservation_duration_secs",
            c.reservation_duration_secs,
            60,
            24 * 3600,
        )?;
        for (field, got) in [
            (
                "circuit.reservation_rate_per_peer",
                c.reservation_rate_per_peer,
            ),
            ("circuit.reservation_rate_per_ip", c.reservation_rate_per_ip),
            ("circuit.circuit_rate_per_peer", c.circuit_rate_per_peer),
            ("circuit.circuit_rate_per_ip", c.circuit_rate_per_ip),
        ] {
            range(field, got.into(), 1, 1 << 20)?;
        }
        range("circuit.rate_interval_secs", c.rate_interval_secs, 1, 3600)?;
        let n = &self.connections;
        range(
            "connections.max_established",
            n.max_established.into(),
            1,
            1 << 20,
        )?;
        // A peer holding its allowed reservations needs one connection for each.
        range(
            "connections.max_established_per_peer",
            n.max_established_per_peer.into(),
            c.max_reservations_per_peer.into(),
            1024,
        )?;
        range(
            "connections.max_pending_incoming",
            n.max_pending_incoming.into(),
            1,
            1 << 16,
        )?;
        range(
            "connections.idle_timeout_secs",
            n.idle_timeout_secs,
            1,
            3600,
        )?;
        let r = &self.rendezvous;
        range(
            "rendezvous.max_registrations_per_peer",
            r.max_registrations_per_peer.into(),
            1,
            1024,
        )?;
        range(
            "rendezvous.max_registrations",
            r.max_registrations.into(),
            r.max_registrations_per_peer.into(),
            1 << 24,
        )?;
        // libp2p's rendezvous protocol caps a TTL at 72 hours and floors it at 2 hours.
        range(
            "rendezvous.max_ttl_secs",
            r.max_ttl_secs,
            2 * 3600,
            72 * 3600,
        )?;
        let m = &self.mailbox;
        range("mailbox.ttl_secs", m.ttl_secs, 60, 365 * 24 * 3600)?;
        range("mailbox.max_item_bytes", m.max_item_bytes, 1024, 64 << 20)?;
        range(
            "mailbox.max_bytes_per_recipient",
            m.max_bytes_per_recipient,
            m.max_item_bytes,
            1 << 40,
        )?;
        range(
            "mailbox.max_bytes_per_sender",
            m.max_bytes_per_sender,
            m.max_item_bytes,
            1 << 40,
        )?;
        range(
            "mailbox.max_total_bytes",
            m.max_total_bytes,
            m.max_bytes_per_recipient,
            1 << 44,
        )?;
        range(
            "mailbox.max_items_per_recipient",
            m.max_items_per_recipient,
            1,
            1 << 24,
        )?;
        range(
            "mailbox.max_items_per_sender",
            m.max_items_per_sender,
            1,
            1 << 24,
        )?;
        range(
            "mailbox.max_items",
            m.max_items,
            m.max_items_per_recipient.max(m.max_items_per_sender),
            1 << 28,
        )?;
        range(
            "mailbox.prekey_ttl_secs",
            m.prekey_ttl_secs,
            3600,
            365 * 24 * 3600,
        )?;
        range(
            "mailbox.max_prekey_entries",
            m.max_prekey_entries,
            1,
            1 << 24,
        )?;
        let d = &self.media;
        self.media_listen()?;
        range(
            "media.max_allocations",
            d.max_allocations.into(),
            1,
            1 << 20,
        )?;
        range(
            "media.max_allocations_per_peer",
            d.max_allocations_per_peer.into(),
            1,
            d.max_allocations.min(1024).into(),
        )?;
        range("media.max_room_size", d.max_room_size.into(), 2, 1024)?;
        range("media.lifetime_secs", d.lifetime_secs, 30, 24 * 3600)?;
        range("media.idle_timeout_secs", d.idle_timeout_secs, 1, 3600)?;
        range(
            "media.packets_per_second",
            d.packets_per_second.into(),
            1,
            100_000,
        )?;
        // One full-size packet must fit in the one-second burst.
        range(
            "media.bytes_per_second",
            d.bytes_per_second.into(),
            crate::media::wire::MAX_PACKET as u64,
            1 << 30,
        )?;
        Ok(())
    }

    /// The UDP address the media relay binds: `[media] listen`, or derived from the first
    /// libp2p listen address (its IP; port [`MEDIA_PORT`], or 0 when that address uses port 0).
    pub fn media_listen(&self) -> Result<SocketAddr, ConfigError> {
        if let Some(text) = &self.media.listen {
            return text.parse().map_err(|e: std::net::AddrParseError| {
                ConfigError::BadSocketAddress {
                    field: "media.listen",
                    addr: text.clone(),
                    reason: e.to_string(),
                }
            });
        }
        let first = self.addresses()?.0.into_iter().next();
        let mut ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let mut port = MEDIA_PORT;
        for p in first.iter().flat_map(|a| a.iter()) {
            match p {
                Protocol::Ip4(a) => ip = a.into(),
                Protocol::Ip6(a) => ip = a.into(),
                Protocol::Tcp(0) | Protocol::Udp(0) => port = 0,
                _ => {}
            }
        }
        Ok(SocketAddr::new(ip, port))
    }

    /// The circuit duration limit as a [`Duration`].
    pub fn circuit_duration(&self) -> Duration {
        Duration::from_secs(self.circuit.max_duration_secs)
    }

    /// Parses the listen and external addresses, naming the first one that is not a multiaddr.
    pub fn addresses(&self) -> Result<(Vec<Multiaddr>, Vec<Multiaddr>), ConfigError> {
        let parse = |list: &[String]| {
            list.iter()
                .map(|a| {
                    a.parse::<Multiaddr>().map_err(|e| ConfigError::BadAddress {
                        addr: a.clone(),
                        reason: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok((parse(&self.listen)?, parse(&self.external)?))
    }

    /// Parses the `peers` list: each must be a multiaddr ending in `/p2p/<peer id>`.
    pub fn peer_addresses(&self) -> Result<Vec<(libp2p::PeerId, Multiaddr)>, ConfigError> {
        self.peers
            .iter()
            .map(|a| {
                let bad = |reason: String| ConfigError::BadAddress {
                    addr: a.clone(),
                    reason,
                };
                let addr: Multiaddr = a.parse().map_err(|e| bad(format!("{e}")))?;
                match addr.iter().last() {
                    Some(libp2p::multiaddr::Protocol::P2p(peer)) => Ok((peer, addr)),
                    _ => Err(bad("a relay peer needs /p2p/<peer id> at the end".into())),
                }
            })
            .collect()
    }
}

/// Most relay peers in the `peers` list.
pub const MAX_PEERS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_is_valid() {
        let cfg = RelayConfig::from_toml(include_str!("../../examples/relay.toml")).unwrap();
        assert!(cfg.mailbox.enabled);
        assert_eq!(cfg.mailbox.max_items_per_recipient, 20_000);
    }

    #[test]
    fn defaults_are_valid_and_suit_voice() {
        let cfg = RelayConfig::from_toml("").unwrap();
        assert_eq!(cfg, RelayConfig::default());
        // A one-hour call at 64 kbit/s must fit in one circuit.
        assert!(cfg.circuit_duration() >= Duration::from_secs(3600));
        assert!(cfg.circuit.max_bytes >= 3600 * 64_000 / 8);
    }

    #[test]
    fn partial_file_overrides_only_what_it_names() {
        let cfg = RelayConfig::from_toml("[circuit]\nmax_duration_secs = 600\n").unwrap();
        assert_eq!(cfg.circuit.max_duration_secs, 600);
        assert_eq!(cfg.mailbox, MailboxLimits::default());
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = RelayConfig::from_toml("[circuit]\nmax_duration_secs = 0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "circuit.max_duration_secs must be between 60 and 604800, got 0"
        );
        assert!(matches!(
            RelayConfig::from_toml("listen = []").unwrap_err(),
            ConfigError::NoListenAddress
        ));
        assert!(matches!(
            RelayConfig::from_toml("[circuit]\nmax_bytez = 5\n").unwrap_err(),
            ConfigError::Parse(_)
        ));
        assert!(matches!(
            RelayConfig::from_toml("\u{0}garbage").unwrap_err(),
            ConfigError::Parse(_)
        ));
        let err = RelayConfig::from_toml(
            "[mailbox]\nmax_item_bytes = 2048\nmax_bytes_per_recipient = 1024\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("mailbox.max_bytes_per_recipient")
        );
        assert!(matches!(
            RelayConfig::from_toml("listen = [\"/ip4/1.2.3.4/tcpx/1\"]").unwrap_err(),
            ConfigError::BadAddress { .. }
        ));
        let err = RelayConfig::from_toml(
            "[circuit]\nmax_reservations_per_peer = 8\n[connections]\nmax_established_per_peer = 4\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "connections.max_established_per_peer must be between 8 and 1024, got 4"
        );
        let err = RelayConfig::from_toml("[mailbox]\nmax_items = 10\nmax_items_per_sender = 11\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "mailbox.max_items must be between 10000 and 268435456, got 10"
        );
        let err = RelayConfig::from_toml("[mailbox]\nmax_item_bytes = 67108865\n").unwrap_err();
        assert!(err.to_string().starts_with("mailbox.max_item_bytes"));
        let err = RelayConfig::from_toml("[circuit]\nrate_interval_secs = 0\n").unwrap_err();
        assert!(err.to_string().starts_with("circuit.rate_interval_secs"));
    }

    #[test]
    fn media_section_defaults_and_validation() {
        let cfg = RelayConfig::default();
        assert!(cfg.media.enabled);
        assert_eq!(cfg.media.max_allocations, 4096);
        assert_eq!(cfg.media.max_allocations_per_peer, 4);
        assert_eq!(cfg.media.max_room_size, 64);
        assert_eq!(cfg.media_listen().unwrap(), "0.0.0.0:3478".parse().unwrap());
        // Derived from the first listen address: its IP, and port 0 when it uses port 0.
        let cfg = RelayConfig::from_toml("listen = [\"/ip4/127.0.0.1/tcp/0\"]").unwrap();
        assert_eq!(cfg.media_listen().unwrap(), "127.0.0.1:0".parse().unwrap());
        let cfg = RelayConfig::from_toml("listen = [\"/ip6/::1/tcp/4001\"]").unwrap();
        assert_eq!(cfg.media_listen().unwrap(), "[::1]:3478".parse().unwrap());
        let cfg = RelayConfig::from_toml("[media]\nlisten = \"127.0.0.1:5000\"\n").unwrap();
        assert_eq!(
            cfg.media_listen().unwrap(),
            "127.0.0.1:5000".parse().unwrap()
        );
        let err = RelayConfig::from_toml("[media]\nlisten = \"/ip4/1.2.3.4/udp/1\"\n").unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::BadSocketAddress {
                    field: "media.listen",
                    ..
                }
            ),
            "{err}"
        );
        let err = RelayConfig::from_toml("[media]\nmax_room_size = 1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "media.max_room_size must be between 2 and 1024, got 1"
        );
        let err =
            RelayConfig::from_toml("[media]\nmax_allocations = 2\nmax_allocations_per_peer = 3\n")
                .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("media.max_allocations_per_peer")
        );
        let err = RelayConfig::from_toml("[media]\nbytes_per_second = 1000\n").unwrap_err();
        assert!(err.to_string().starts_with("media.bytes_per_second"));
        assert!(matches!(
            RelayConfig::from_toml("[media]\nport = 1\n").unwrap_err(),
            ConfigError::Parse(_)
        ));
    }
}
