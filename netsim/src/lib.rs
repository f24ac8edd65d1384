//! `securecomm-netsim`: network simulation for SecureComm.
//!
//! A scenario file (TOML) describes an "internet" segment with public relays and sites behind NAT
//! routers, link impairments, and a timeline of actions and faults. The harness builds that
//! topology in Linux network namespaces ([`topology`]), configures each router's NAT with
//! nftables ([`nat`]), proves each router behaves as labelled with UDP/TCP probes from two public
//! probe hosts ([`probe`]), runs the real `securecomm-relay` and `securecomm-node` binaries in it,
//! plays the timeline and audits every message ([`runner`]), and reports ([`report`]).
//! [`matrix`] runs a scenario several times and judges every pair of NAT kinds. [`inproc`] is
//! the in-process tier: many real nodes in one process over libp2p's memory transport.
//!
//! Cleanup: every namespace is named with a unique per-run prefix and registered before it is
//! created; dropping the [`topology::Topology`] or receiving SIGINT/SIGTERM removes them with
//! every process inside; `securecomm-netsim cleanup` removes leftovers of crashed runs.
//!
//! Link impairment (delay, jitter, random and bursty loss, rate) runs in user space on site
//! uplinks ([`impair`]).

pub mod error;
pub mod impair;
pub mod inproc;
pub mod linktest;
pub mod matrix;
pub mod nat;
pub mod plot;
pub mod probe;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sys;
pub mod topology;
pub mod voice;
