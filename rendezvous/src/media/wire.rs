//! The media relay's messages and packets (no I/O), shared by the relay and the node.
//!
//! Two formats live here:
//! * the allocation protocol on libp2p ([`MediaRequest`], [`MediaResponse`]): a version byte
//!   ([`WIRE_VERSION`]), a variant tag, then fixed fields; integers big-endian; the refusal
//!   reason is UTF-8 behind a u16 length, at most [`MAX_REASON`] bytes. Decoding rejects unknown
//!   versions and tags, over-long reasons and trailing bytes, so every accepted message has
//!   exactly one encoding (the fuzz target `media_wire` re-encodes and compares);
//! * the UDP packets (no version byte: the first byte is the packet type, and a new layout
//!   gets a new type). Client to relay: [`PACKET_SEND`] `[type][token:16][dest:u32][payload]`
//!   and [`PACKET_BIND`] `[type][token:16][txid:8]`; relay to client: [`PACKET_DATA`]
//!   `[type][from:u32][payload]` and [`PACKET_BOUND`]
//!   `[type][txid:8][family:u8 4|6][ip:4|16][port:u16]`. A payload is at most
//!   [`MAX_MEDIA_PAYLOAD`] bytes. The relay parses with [`parse_client_packet`], the node with
//!   [`parse_relay_packet`]; both are total (any bytes give a packet or an error).
//!
//! A [`Token`] is a credential (whoever holds it sends as that allocation), so nothing here
//! prints one: `Debug` of every type holding a token is written by hand.

use std::{
    borrow::Borrow,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use thiserror::Error;

/// Version byte of every allocation request and response.
pub const WIRE_VERSION: u8 = 1;
/// A room: opaque 32 bytes chosen by the clients (a hash only the call's members can compute).
pub type RoomId = [u8; 32];
/// An allocation's 128-bit secret: whoever holds it may send as that allocation.
pub type Token = [u8; 16];
/// A BIND transaction id, echoed in the BOUND answer.
pub type TxId = [u8; 8];
/// Largest payload of a SEND or DATA packet.
pub const MAX_MEDIA_PAYLOAD: usize = 1200;
/// The SEND destination meaning "every other bound allocation in my room".
pub const FANOUT: u32 = u32::MAX;
/// Longest refusal reason on the wire, in bytes (longer ones are cut when encoded).
pub const MAX_REASON: usize = 256;

/// Client to relay: media for one allocation or the whole room.
pub const PACKET_SEND: u8 = 0x01;
/// Relay to client: media from another allocation of the room.
pub const PACKET_DATA: u8 = 0x02;
/// Client to relay: bind my source address to my allocation (and tell me what you see).
pub const PACKET_BIND: u8 = 0x03;
/// Relay to client: the source address the relay observed for a BIND.
pub const PACKET_BOUND: u8 = 0x04;

/// Bytes of a SEND packet before its payload.
pub const SEND_HEADER: usize = 1 + 16 + 4;
/// Bytes of a DATA packet before its payload.
pub const DATA_HEADER: usize = 1 + 4;
/// Length of a BIND packet.
pub const BIND_LEN: usize = 1 + 16 + 8;
/// Largest datagram either side sends (a SEND with a full payload).
pub const MAX_PACKET: usize = SEND_HEADER + MAX_MEDIA_PAYLOAD;

// ---------------------------------------------------------------------------------------------
// Allocation protocol

/// A client's request to a relay, on [`super::MEDIA_PROTOCOL`].
#[derive(Clone, PartialEq, Eq)]
pub enum MediaRequest {
    /// Create an allocation in `room`, owned by the requesting peer.
    Allocate {
        /// The room the allocation joins.
        room: RoomId,
    },
    /// Extend the lifetime of the requesting peer's allocation.
    Refresh {
        /// The allocation's token.
        token: Token,
    },
    /// End the requesting peer's allocation now.
    Release {
        /// The allocation's token.
        token: Token,
    },
}

/// The relay's answer to a [`MediaRequest`].
#[derive(Clone, PartialEq, Eq)]
pub enum MediaResponse {
    /// The allocation exists: send UDP packets with `token` to the relay's `udp_port`.
    Allocated {
        /// The allocation's secret.
        token: Token,
        /// The allocation's id in its room: DATA packets from it carry this id, and other
        /// members address it with this id.
        alloc_id: u32,
        /// The relay's UDP port (same IP address as the libp2p connection).
        udp_port: u16,
        /// Seconds until it expires unless refreshed.
        lifetime_secs: u32,
    },
    /// The allocation lives `lifetime_secs` more seconds.
    Refreshed {
        /// Seconds until it expires unless refreshed again.
        lifetime_secs: u32,
    },
    /// The allocation is gone.
    Released,
    /// The request was not granted; `reason` is for logs, at most [`MAX_REASON`] bytes.
    Refused {
        /// Why, in words.
        reason: String,
    },
}

impl MediaResponse {
    /// A refusal, its reason cut to [`MAX_REASON`] bytes on a character boundary.
    pub fn refused(reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        truncate(&mut reason);
        Self::Refused { reason }
    }
}

fn truncate(s: &mut String) {
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

impl fmt::Debug for MediaRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allocate { .. } => f.write_str("Allocate { room: .. }"),
            Self::Refresh { .. } => f.write_str("Refresh { token: <secret> }"),
            Self::Release { .. } => f.write_str("Release { token: <secret> }"),
        }
    }
}

impl fmt::Debug for MediaResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allocated {
                alloc_id,
                udp_port,
                lifetime_secs,
                ..
            } => f
                .debug_struct("Allocated")
                .field("token", &format_args!("<secret>"))
                .field("alloc_id", alloc_id)
                .field("udp_port", udp_port)
                .field("lifetime_secs", lifetime_secs)
                .finish(),
            Self::Refreshed { lifetime_secs } => f
                .debug_struct("Refreshed")
                .field("lifetime_secs", lifetime_secs)
                .finish(),
            Self::Released => f.write_str("Released"),
            Self::Refused { reason } => f.debug_struct("Refused").field("reason", reason).finish(),
        }
    }
}

mod tag {
    pub const ALLOCATE: u8 = 1;
    pub const REFRESH: u8 = 2;
    pub const RELEASE: u8 = 3;

    pub const ALLOCATED: u8 = 1;
    pub const REFRESHED: u8 = 2;
    pub const RELEASED: u8 = 3;
    pub const REFUSED: u8 = 4;
}

impl Encode for MediaRequest {
    fn encode(&self, w: &mut Writer) {
        w.u8(WIRE_VERSION);
        match self {
            Self::Allocate { room } => {
                w.u8(tag::ALLOCATE);
                w.put(room);
            }
            Self::Refresh { token } => {
                w.u8(tag::REFRESH);
                w.put(token);
            }
            Self::Release { token } => {
                w.u8(tag::RELEASE);
                w.put(token);
            }
        }
    }
}

impl Decode for MediaRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("media request", WIRE_VERSION)?;
        match r.u8()? {
            tag::ALLOCATE => Ok(Self::Allocate { room: r.array()? }),
            tag::REFRESH => Ok(Self::Refresh { token: r.array()? }),
            tag::RELEASE => Ok(Self::Release { token: r.array()? }),
            got => Err(DecodeError::UnknownTag {
                what: "media request",
                got: u64::from(got),
            }),
        }
    }
}

impl Encode for MediaResponse {
    fn encode(&self, w: &mut Writer) {
        w.u8(WIRE_VERSION);
        match self {
            Self::Allocated {
                token,
                alloc_id,
                udp_port,
                lifetime_secs,
            } => {
                w.u8(tag::ALLOCATED);
                w.put(token);
                w.u32(*alloc_id);
                w.u16(*udp_port);
                w.u32(*lifetime_secs);
            }
            Self::Refreshed { lifetime_secs } => {
                w.u8(tag::REFRESHED);
                w.u32(*lifetime_secs);
            }
            Self::Released => w.u8(tag::RELEASED),
            Self::Refused { reason } => {
                w.u8(tag::REFUSED);
                let mut reason = reason.clone();
                truncate(&mut reason);
                w.bytes16(reason.as_bytes());
            }
        }
    }
}

impl Decode for MediaResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("media response", WIRE_VERSION)?;
        match r.u8()? {
            tag::ALLOCATED => Ok(Self::Allocated {
                token: r.array()?,
                alloc_id: r.u32()?,
                udp_port: r.u16()?,
                lifetime_secs: r.u32()?,
            }),
            tag::REFRESHED => Ok(Self::Refreshed {
                lifetime_secs: r.u32()?,
            }),
            tag::RELEASED => Ok(Self::Released),
            tag::REFUSED => {
                let raw = r.bytes16("refusal reason", MAX_REASON)?;
                let reason = std::str::from_utf8(raw)
                    .map_err(|_| DecodeError::Invalid("refusal reason (not UTF-8)"))?;
                Ok(Self::Refused {
                    reason: reason.to_owned(),
                })
            }
            got => Err(DecodeError::UnknownTag {
                what: "media response",
                got: u64::from(got),
            }),
        }
    }
}

impl MediaRequest {
    /// The versioned encoding (the same as [`Encode::to_bytes`], without importing the trait).
    pub fn to_bytes(&self) -> Vec<u8> {
        Encode::to_bytes(self)
    }

    /// Parses exactly one request: unknown versions or tags and trailing bytes are errors.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        <Self as Decode>::from_bytes(bytes)
    }
}

impl MediaResponse {
    /// The versioned encoding (the same as [`Encode::to_bytes`], without importing the trait).
    pub fn to_bytes(&self) -> Vec<u8> {
        Encode::to_bytes(self)
    }

    /// Parses exactly one response: unknown versions or tags, a reason longer than
    /// [`MAX_REASON`] or not UTF-8, and trailing bytes are errors.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        <Self as Decode>::from_bytes(bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// UDP packets

/// Why a UDP packet was not parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MediaWireError {
    /// The packet is empty.
    #[error("empty packet")]
    Empty,
    /// The first byte is not a packet type this side accepts.
    #[error("unexpected packet type {0:#04x}")]
    UnknownType(u8),
    /// The packet ended before its header did.
    #[error("packet too short: expected at least {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the packet type needs.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A fixed-length packet has bytes after its end.
    #[error("packet too long: expected {expected} bytes, got {got}")]
    TrailingBytes {
        /// Length of this packet type.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// The payload exceeds [`MAX_MEDIA_PAYLOAD`].
    #[error("payload too long: at most 1200 bytes, got {0}")]
    Oversize(usize),
    /// The BOUND address family is neither 4 nor 6.
    #[error("invalid address family {0}")]
    BadFamily(u8),
}

/// A packet a client sends to the relay, borrowed from the datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClientPacket<'a> {
    /// Media for `dest` (an allocation id in the sender's room, or [`FANOUT`]).
    Send {
        /// The sender's allocation token.
        token: Token,
        /// The destination allocation id, or [`FANOUT`].
        dest: u32,
        /// The (end-to-end encrypted) media, at most [`MAX_MEDIA_PAYLOAD`] bytes.
        payload: &'a [u8],
    },
    /// Bind the source address to the allocation and report it.
    Bind {
        /// The sender's allocation token.
        token: Token,
        /// Echoed in the answer.
        txid: TxId,
    },
}

impl fmt::Debug for ClientPacket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Send { dest, payload, .. } => f
                .debug_struct("Send")
                .field("token", &format_args!("<secret>"))
                .field("dest", dest)
                .field("payload_len", &payload.len())
                .finish(),
            Self::Bind { txid, .. } => f
                .debug_struct("Bind")
                .field("token", &format_args!("<secret>"))
                .field("txid", txid)
                .finish(),
        }
    }
}

/// A packet the relay sends to a client, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPacket<'a> {
    /// Media from another allocation of the room.
    Data {
        /// The sending allocation's id.
        from: u32,
        /// The media as the sender sent it.
        payload: &'a [u8],
    },
    /// The answer to a BIND: the client's address as the relay sees it (a server-reflexive
    /// candidate).
    Bound {
        /// The BIND's transaction id.
        txid: TxId,
        /// The observed source address.
        observed: SocketAddr,
    },
}

/// Writes a SEND packet into `out` (cleared first). `token` and `dest` may be passed by value
/// or by reference. A payload over [`MAX_MEDIA_PAYLOAD`] is written as is, and the relay drops
/// it (counted as oversize).
pub fn encode_send(
    token: impl Borrow<Token>,
    dest: impl Borrow<u32>,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.reserve(SEND_HEADER + payload.len());
    out.push(PACKET_SEND);
    out.extend_from_slice(token.borrow());
    out.extend_from_slice(&dest.borrow().to_be_bytes());
    out.extend_from_slice(payload);
}

/// Writes a BIND packet into `out` (cleared first).
pub fn encode_bind(token: impl Borrow<Token>, txid: impl Borrow<TxId>, out: &mut Vec<u8>) {
    out.clear();
    out.push(PACKET_BIND);
    out.extend_from_slice(token.borrow());
    out.extend_from_slice(txid.borrow());
}

/// Writes a DATA packet into `out` (cleared first).
pub fn encode_data(from: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(DATA_HEADER + payload.len());
    out.push(PACKET_DATA);
    out.extend_from_slice(&from.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Writes a BOUND packet into `out` (cleared first). An IPv4-mapped IPv6 address (what a
/// dual-stack socket reports for an IPv4 peer) is written as IPv4.
pub fn encode_bound(txid: &TxId, observed: SocketAddr, out: &mut Vec<u8>) {
    out.clear();
    out.push(PACKET_BOUND);
    out.extend_from_slice(txid);
    match observed.ip().to_canonical() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&observed.port().to_be_bytes());
}

fn payload(rest: &[u8]) -> Result<&[u8], MediaWireError> {
    if rest.len() > MAX_MEDIA_PAYLOAD {
        return Err(MediaWireError::Oversize(rest.len()));
    }
    Ok(rest)
}

fn exact(packet: &[u8], expected: usize) -> Result<(), MediaWireError> {
    match packet.len() {
        got if got < expected => Err(MediaWireError::Truncated { expected, got }),
        got if got > expected => Err(MediaWireError::TrailingBytes { expected, got }),
        _ => Ok(()),
    }
}

fn at_least(packet: &[u8], expected: usize) -> Result<(), MediaWireError> {
    if packet.len() < expected {
        return Err(MediaWireError::Truncated {
            expected,
            got: packet.len(),
        });
    }
    Ok(())
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Parses a packet a client sent to the relay (SEND or BIND); the relay's side.
pub fn parse_client_packet(packet: &[u8]) -> Result<ClientPacket<'_>, MediaWireError> {
    match packet.first() {
        None => Err(MediaWireError::Empty),
        Some(&PACKET_SEND) => {
            at_least(packet, SEND_HEADER)?;
            Ok(ClientPacket::Send {
                token: array(packet, 1),
                dest: u32::from_be_bytes(array(packet, 17)),
                payload: payload(packet.get(SEND_HEADER..).unwrap_or_default())?,
            })
        }
        Some(&PACKET_BIND) => {
            exact(packet, BIND_LEN)?;
            Ok(ClientPacket::Bind {
                token: array(packet, 1),
                txid: array(packet, 17),
            })
        }
        Some(&other) => Err(MediaWireError::UnknownType(other)),
    }
}

/// Parses a packet the relay sent to a client (DATA or BOUND); the node's side.
pub fn parse_relay_packet(packet: &[u8]) -> Result<RelayPacket<'_>, MediaWireError> {
    match packet.first() {
        None => Err(MediaWireError::Empty),
        Some(&PACKET_DATA) => {
            at_least(packet, DATA_HEADER)?;
            Ok(RelayPacket::Data {
                from: u32::from_be_bytes(array(packet, 1)),
                payload: payload(packet.get(DATA_HEADER..).unwrap_or_default())?,
            })
        }
        Some(&PACKET_BOUND) => {
            at_least(packet, 10)?;
            let txid = array(packet, 1);
            let ip = match packet.get(9).copied().unwrap_or_default() {
                4 => {
                    exact(packet, 10 + 4 + 2)?;
                    IpAddr::V4(Ipv4Addr::from(array::<4>(packet, 10)))
                }
                6 => {
                    exact(packet, 10 + 16 + 2)?;
                    IpAddr::V6(Ipv6Addr::from(array::<16>(packet, 10)))
                }
                other => return Err(MediaWireError::BadFamily(other)),
            };
            let port = u16::from_be_bytes(array(packet, packet.len() - 2));
            Ok(RelayPacket::Bound {
                txid,
                observed: SocketAddr::new(ip, port),
            })
        }
        Some(&other) => Err(MediaWireError::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_and_response_bytes_are_pinned() {
        let mut want = vec![1, 1];
        want.extend_from_slice(&[0xAB; 32]);
        assert_eq!(MediaRequest::Allocate { room: [0xAB; 32] }.to_bytes(), want);
        let mut want = vec![1, 3];
        want.extend_from_slice(&[7; 16]);
        assert_eq!(MediaRequest::Release { token: [7; 16] }.to_bytes(), want);
        let mut want = vec![1, 1];
        want.extend_from_slice(&[9; 16]);
        want.extend_from_slice(&[0, 0, 1, 2, 0x0D, 0x96, 0, 0, 1, 0x2C]);
        let allocated = MediaResponse::Allocated {
            token: [9; 16],
            alloc_id: 258,
            udp_port: 3478,
            lifetime_secs: 300,
        };
        assert_eq!(allocated.to_bytes(), want);
        assert_eq!(
            MediaResponse::refused("full").to_bytes(),
            vec![1, 4, 0, 4, b'f', b'u', b'l', b'l']
        );
        assert_eq!(MediaResponse::Released.to_bytes(), vec![1, 3]);
    }

    #[test]
    fn strict_decoding() {
        let bytes = MediaRequest::Refresh { token: [1; 16] }.to_bytes();
        assert!(MediaRequest::from_bytes(&bytes).is_ok());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            MediaRequest::from_bytes(&trailing),
            Err(DecodeError::TrailingBytes(1))
        );
        for cut in 0..bytes.len() {
            assert!(
                MediaRequest::from_bytes(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        assert!(matches!(
            MediaRequest::from_bytes(&[2, 2]),
            Err(DecodeError::UnknownVersion { got: 2, .. })
        ));
        assert!(matches!(
            MediaRequest::from_bytes(&[1, 9]),
            Err(DecodeError::UnknownTag { got: 9, .. })
        ));
        // A reason over the bound, or not UTF-8.
        let mut long = vec![1, 4, 1, 1];
        long.extend_from_slice(&[b'a'; 257]);
        assert!(matches!(
            MediaResponse::from_bytes(&long),
            Err(DecodeError::TooLong { .. })
        ));
        assert!(MediaResponse::from_bytes(&[1, 4, 0, 1, 0xFF]).is_err());
        // The encoder cuts an over-long reason on a character boundary, so it still decodes.
        let res = MediaResponse::Refused {
            reason: "é".repeat(200),
        };
        let back = MediaResponse::from_bytes(&res.to_bytes()).unwrap();
        assert_eq!(back, MediaResponse::refused("é".repeat(128)));
    }

    // Tokens, ids and txids go in by value or by reference (both are the API).
    #[allow(clippy::needless_borrows_for_generic_args)]
    #[test]
    fn debug_never_prints_a_token() {
        let token = [0x5A; 16];
        let shown = [
            format!("{:?}", MediaRequest::Refresh { token }),
            format!("{:?}", MediaRequest::Release { token }),
            format!(
                "{:?}",
                MediaResponse::Allocated {
                    token,
                    alloc_id: 1,
                    udp_port: 2,
                    lifetime_secs: 3
                }
            ),
            format!(
                "{:?}",
                parse_client_packet(&{
                    let mut v = Vec::new();
                    encode_send(token, 5u32, b"x", &mut v);
                    v
                })
                .unwrap()
            ),
            format!(
                "{:?}",
                parse_client_packet(&{
                    let mut v = Vec::new();
                    encode_bind(&token, [1; 8], &mut v);
                    v
                })
                .unwrap()
            ),
        ];
        for s in shown {
            assert!(!s.contains("90"), "{s}"); // 0x5A = 90
            assert!(!s.contains("5a") && !s.contains("5A"), "{s}");
            assert!(s.contains("<secret>"), "{s}");
        }
    }

    #[allow(clippy::needless_borrows_for_generic_args)]
    #[test]
    fn packet_bytes_are_pinned() {
        let mut out = vec![0xEE; 3];
        encode_send(&[1; 16], &0x0102_0304u32, b"hi", &mut out);
        let mut want = vec![1];
        want.extend_from_slice(&[1; 16]);
        want.extend_from_slice(&[1, 2, 3, 4, b'h', b'i']);
        assert_eq!(out, want);
        encode_bind([2; 16], &[3; 8], &mut out);
        let mut want = vec![3];
        want.extend_from_slice(&[2; 16]);
        want.extend_from_slice(&[3; 8]);
        assert_eq!(out, want);
        encode_data(7, b"ab", &mut out);
        assert_eq!(out, vec![2, 0, 0, 0, 7, b'a', b'b']);
        encode_bound(&[4; 8], "127.0.0.1:3478".parse().unwrap(), &mut out);
        assert_eq!(
            out,
            vec![4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 127, 0, 0, 1, 0x0D, 0x96]
        );
        // A v4-mapped v6 source is reported as IPv4.
        encode_bound(&[4; 8], "[::ffff:10.0.0.1]:9".parse().unwrap(), &mut out);
        assert_eq!(
            parse_relay_packet(&out).unwrap(),
            RelayPacket::Bound {
                txid: [4; 8],
                observed: "10.0.0.1:9".parse().unwrap()
            }
        );
        encode_bound(&[4; 8], "[2001:db8::1]:443".parse().unwrap(), &mut out);
        assert_eq!(out.len(), 28);
        assert_eq!(
            parse_relay_packet(&out).unwrap(),
            RelayPacket::Bound {
                txid: [4; 8],
                observed: "[2001:db8::1]:443".parse().unwrap()
            }
        );
    }

    #[test]
    fn packet_parsers_are_strict() {
        assert_eq!(parse_client_packet(&[]), Err(MediaWireError::Empty));
        assert_eq!(
            parse_client_packet(&[2, 0, 0, 0, 0]),
            Err(MediaWireError::UnknownType(2))
        );
        assert_eq!(
            parse_relay_packet(&[1; 30]),
            Err(MediaWireError::UnknownType(1))
        );
        let mut send = Vec::new();
        encode_send([1; 16], FANOUT, &[0; MAX_MEDIA_PAYLOAD], &mut send);
        assert!(parse_client_packet(&send).is_ok());
        send.push(0);
        assert_eq!(
            parse_client_packet(&send),
            Err(MediaWireError::Oversize(MAX_MEDIA_PAYLOAD + 1))
        );
        assert!(matches!(
            parse_client_packet(&send[..SEND_HEADER - 1]),
            Err(MediaWireError::Truncated { .. })
        ));
        // An empty payload is a valid (if useless) SEND.
        assert!(parse_client_packet(&send[..SEND_HEADER]).is_ok());
        let mut bind = Vec::new();
        encode_bind([1; 16], [2; 8], &mut bind);
        bind.push(0);
        assert!(matches!(
            parse_client_packet(&bind),
            Err(MediaWireError::TrailingBytes { .. })
        ));
        assert!(matches!(
            parse_client_packet(&bind[..BIND_LEN - 1]),
            Err(MediaWireError::Truncated { .. })
        ));
        let mut bound = Vec::new();
        encode_bound(&[1; 8], "1.2.3.4:5".parse().unwrap(), &mut bound);
        bound[9] = 5;
        assert_eq!(
            parse_relay_packet(&bound),
            Err(MediaWireError::BadFamily(5))
        );
        bound[9] = 6;
        assert!(matches!(
            parse_relay_packet(&bound),
            Err(MediaWireError::Truncated { .. })
        ));
        let mut data = Vec::new();
        encode_data(1, &[0; MAX_MEDIA_PAYLOAD + 1], &mut data);
        assert!(matches!(
            parse_relay_packet(&data),
            Err(MediaWireError::Oversize(_))
        ));
        assert!(parse_relay_packet(&data[..4]).is_err());
    }

    fn arb_request() -> impl Strategy<Value = MediaRequest> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(|room| MediaRequest::Allocate { room }),
            any::<[u8; 16]>().prop_map(|token| MediaRequest::Refresh { token }),
            any::<[u8; 16]>().prop_map(|token| MediaRequest::Release { token }),
        ]
    }

    fn arb_response() -> impl Strategy<Value = MediaResponse> {
        prop_oneof![
            (any::<[u8; 16]>(), any::<u32>(), any::<u16>(), any::<u32>()).prop_map(
                |(token, alloc_id, udp_port, lifetime_secs)| MediaResponse::Allocated {
                    token,
                    alloc_id,
                    udp_port,
                    lifetime_secs
                }
            ),
            any::<u32>().prop_map(|lifetime_secs| MediaResponse::Refreshed { lifetime_secs }),
            Just(MediaResponse::Released),
            "\\PC{0,60}".prop_map(|reason| MediaResponse::Refused { reason }),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(req in arb_request(), res in arb_response()) {
            prop_assert_eq!(MediaRequest::from_bytes(&req.to_bytes()).unwrap(), req);
            prop_assert_eq!(MediaResponse::from_bytes(&res.to_bytes()).unwrap(), res);
        }

        #[test]
        fn packets_round_trip(token in any::<[u8; 16]>(), dest in any::<u32>(),
                              payload in proptest::collection::vec(any::<u8>(), 0..=MAX_MEDIA_PAYLOAD),
                              txid in any::<[u8; 8]>()) {
            let mut out = Vec::new();
            encode_send(token, dest, &payload, &mut out);
            prop_assert_eq!(parse_client_packet(&out).unwrap(),
                ClientPacket::Send { token, dest, payload: &payload });
            encode_bind(token, txid, &mut out);
            prop_assert_eq!(parse_client_packet(&out).unwrap(), ClientPacket::Bind { token, txid });
            encode_data(dest, &payload, &mut out);
            prop_assert_eq!(parse_relay_packet(&out).unwrap(),
                RelayPacket::Data { from: dest, payload: &payload });
        }

        #[test]
        fn decoders_never_panic_and_accept_only_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
            if let Ok(req) = MediaRequest::from_bytes(&bytes) {
                prop_assert_eq!(req.to_bytes(), bytes.clone());
            }
            if let Ok(res) = MediaResponse::from_bytes(&bytes) {
                prop_assert_eq!(res.to_bytes(), bytes.clone());
            }
            // What the packet parsers accept re-encodes to the same bytes (as the fuzz target
            // `media_wire` checks), except a v4-mapped BOUND address, written back as IPv4.
            let mut out = Vec::new();
            match parse_client_packet(&bytes) {
                Ok(ClientPacket::Send { token, dest, payload }) => {
                    encode_send(token, dest, payload, &mut out);
                    prop_assert_eq!(&out, &bytes);
                }
                Ok(ClientPacket::Bind { token, txid }) => {
                    encode_bind(token, txid, &mut out);
                    prop_assert_eq!(&out, &bytes);
                }
                Err(_) => {}
            }
            match parse_relay_packet(&bytes) {
                Ok(RelayPacket::Data { from, payload }) => {
                    encode_data(from, payload, &mut out);
                    prop_assert_eq!(&out, &bytes);
                }
                Ok(RelayPacket::Bound { txid, observed }) => {
                    encode_bound(&txid, observed, &mut out);
                    if !matches!(observed.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) {
                        prop_assert_eq!(&out, &bytes);
                    }
                }
                Err(_) => {}
            }
        }

        #[test]
        fn typed_packets_survive_random_tails(kind in prop::sample::select(vec![1u8, 2, 3, 4]),
                                              tail in proptest::collection::vec(any::<u8>(), 0..40)) {
            // Random bytes behind a valid type byte reach the deeper branches of both parsers.
            let mut bytes = vec![kind];
            bytes.extend_from_slice(&tail);
            let _ = parse_client_packet(&bytes);
            let _ = parse_relay_packet(&bytes);
        }
    }
}
