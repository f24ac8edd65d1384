//! The SecureComm relay node, run by communities.
//!
//! A relay helps peers find each other (rendezvous), reach each other through NATs (circuit relay
//! v2, a UDP media relay) and holds ciphertext for offline members (mailbox). It never holds a
//! key: everything it forwards or stores is end-to-end encrypted by the clients.
//!
//! This crate is a library with a thin binary. The operator's configuration, with the limits that
//! keep a relay fair and alive, is [`config::RelayConfig`].

pub mod config;
