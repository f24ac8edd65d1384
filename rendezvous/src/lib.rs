//! The SecureComm relay node, run by communities.
//!
//! A relay helps peers find each other (rendezvous), reach each other through NATs (circuit relay
//! v2, a UDP media relay) and holds ciphertext for offline members (mailbox). It never holds a
//! key: everything it forwards or stores is end-to-end encrypted by the clients.
//!
//! This crate is a library with a thin binary (`securecomm-relay`, `src/main.rs`, which only
//! parses flags). The operator's configuration, with the limits that keep a relay fair and
//! alive, is [`config::RelayConfig`]; [`server::Relay::spawn`] runs a relay and returns a
//! [`server::RelayHandle`]; [`identity`] keeps the relay's peer id stable across restarts;
//! [`mailbox`] stores ciphertext for offline members and prekey bundles; [`media`] relays
//! end-to-end encrypted voice over UDP for peers that cannot hole-punch; [`capture`] records
//! raw socket bytes so audits can check that no plaintext crosses the relay;
//! [`metrics`] serves counts to Prometheus.

pub mod capture;
pub mod config;
pub mod identity;
pub mod mailbox;
pub mod media;
pub mod metrics;
pub mod server;

pub use config::RelayConfig;
pub use server::{Relay, RelayError, RelayHandle, RelayOptions};
