//! `securecomm-netsim`: network simulation for SecureComm.
//!
//! A scenario file (TOML) describes an "internet" segment with public relays and sites behind NAT
//! routers, link impairments, and a timeline of actions and faults. The harness builds that
//! topology in Linux network namespaces and runs the real `securecomm-relay` and
//! `securecomm-node` binaries in it. This module holds the scenario model and its validation;
//! the namespace builder and runner build on it.

pub mod scenario;
