//! Relay configuration: a TOML file an operator edits, with limits that suit voice and files.
//!
//! libp2p's circuit-relay defaults (2 minutes and 128 KiB per circuit) would cut a call after two
//! minutes and a file after 128 KiB, so SecureComm relays default to long circuits with byte
//! limits the community sets. Every limit is bounded; a zero or absurd value is a clear error.

use std::time::Duration;

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
}

/// The whole relay configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Multiaddrs to listen on, e.g. `/ip4/0.0.0.0/tcp/4001` and `/ip4/0.0.0.0/udp/4001/quic-v1`.
    pub listen: Vec<String>,
    /// Circuit relay limits.
    pub circuit: CircuitLimits,
    /// Mailbox (store-and-forward of ciphertext) limits.
    pub mailbox: MailboxLimits,
}

/// Limits on relayed connections.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitLimits {
    /// Longest a single relayed circuit may stay open, in seconds.
    pub max_duration_secs: u64,
    /// Most bytes a single circuit may carry in each direction.
    pub max_bytes: u64,
    /// Most reservations held at once.
    pub max_reservations: u32,
    /// Most reservations per peer.
    pub max_reservations_per_peer: u32,
    /// Most circuits open at once.
    pub max_circuits: u32,
    /// Most circuits per peer.
    pub max_circuits_per_peer: u32,
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
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".into(),
                "/ip4/0.0.0.0/udp/4001/quic-v1".into(),
            ],
            circuit: CircuitLimits::default(),
            mailbox: MailboxLimits::default(),
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
            max_circuits_per_peer: 16,
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
        Ok(())
    }

    /// The circuit duration limit as a [`Duration`].
    pub fn circuit_duration(&self) -> Duration {
        Duration::from_secs(self.circuit.max_duration_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
