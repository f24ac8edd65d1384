//! The UDP media relay: the fallback path for voice when two peers cannot hole-punch.
//!
//! The voice engine sends Opus frames that are already end-to-end encrypted (SFrame-shaped)
//! over its own UDP socket. When no direct path works, each member of a call takes an
//! *allocation* on a relay and sends its frames there; the relay copies them to the other
//! allocations of the same *room*. The relay sees room ids (opaque hashes), allocation ids,
//! addresses, sizes and timing; never a key or a frame's content.
//!
//! # Allocation, over libp2p
//! Request-response on [`MEDIA_PROTOCOL`] (`/securecomm/media/1.0.0`) with [`MediaCodec`]
//! (u32 length, then a versioned [`wire`] message, at most [`codec::MAX_MEDIA_FRAME`] bytes):
//! * `Allocate { room }` answers `Allocated { token, alloc_id, udp_port, lifetime_secs }`: a
//!   128-bit [`Token`] that authenticates UDP packets, the id other members address, the UDP
//!   port (on the IP address the client already reaches the relay at) and the lifetime;
//! * `Refresh { token }` renews the lifetime, `Release { token }` ends it; both only from the
//!   peer id that allocated (another peer is `Refused`);
//! * `Refused { reason }` when a quota is hit: `max_allocations` on the relay,
//!   `max_allocations_per_peer`, `max_room_size`.
//!
//! # Media, over UDP
//! SEND `[0x01][token:16][dest:u32][payload]` goes to allocation `dest` of the sender's room,
//! or to every other bound allocation of the room with [`FANOUT`]; receivers get DATA
//! `[0x02][from:u32][payload]`. BIND `[0x03][token:16][txid:8]` is answered with BOUND
//! `[0x04][txid:8][family][ip][port]`, the source address the relay saw (a server-reflexive
//! candidate); clients send it every ~15 s as a keepalive. Any authenticated packet binds the
//! allocation to its source address, latest wins, so a client whose NAT mapping changes keeps
//! receiving after its next packet. Payloads are at most [`MAX_MEDIA_PAYLOAD`] bytes.
//!
//! Each allocation has token buckets for packets and bytes per second (counted on what it
//! sends in, one second of burst). An allocation expires at the end of its lifetime, or after
//! `idle_timeout_secs` without a packet once bound (if never bound: 60 s, or the idle timeout
//! if longer, after creation).
//! Everything else (unknown type, short, unknown or expired token, oversized, over budget, no
//! destination) is dropped silently and counted in `securecomm_media_dropped_total{reason}`.
//!
//! # Known limits
//! * One UDP thread: a relay forwards on one core (about 4x issue 9's load there, see
//!   `benches/media_relay.rs`); more would need several sockets with `SO_REUSEPORT`.
//! * Bound to `0.0.0.0`, replies leave with the source address the routing table picks; on a
//!   host with several public addresses set `[media] listen` to the one clients use.
//! * `udp_port` is the bound port: behind a port-mapping (Docker) map it to the same number.
//! * An allocation outlives its libp2p connection until its lifetime or idle timeout ends.
//! * Tokens are looked up in a hash map keyed with a random SipHash key, not compared in
//!   constant time; a remote timing attack would have to guess 128 bits through it.
//!
//! # Structure
//! [`wire`] (shared with the node: messages, packet encoders and parsers, no I/O), [`codec`]
//! (libp2p framing), [`table`] (allocations, quotas, budgets; time passed in), [`service`]
//! (the UDP thread and [`MediaRelay::handle`], called by the relay's swarm task).
//!
//! # For the node
//! Add `request_response::Behaviour::with_codec(MediaCodec::default(), [(MEDIA_PROTOCOL,
//! ProtocolSupport::Outbound)], ..)` to the swarm, allocate, then send [`wire::encode_bind`]
//! and [`wire::encode_send`] packets to the relay's IP and `udp_port` from the voice socket
//! and read what comes back with [`wire::parse_relay_packet`]. Refresh before
//! `lifetime_secs` runs out.

pub mod codec;
pub mod service;
pub mod table;
pub mod wire;

pub use codec::{MEDIA_PROTOCOL, MediaCodec};
pub use service::{MediaMetrics, MediaRelay};
pub use wire::{
    ClientPacket, FANOUT, MAX_MEDIA_PAYLOAD, MediaRequest, MediaResponse, MediaWireError,
    PACKET_BIND, PACKET_BOUND, PACKET_DATA, PACKET_SEND, RelayPacket, RoomId, Token, TxId,
    encode_bind, encode_send, parse_client_packet, parse_relay_packet,
};
