//! Voice on the wire: call signalling over libp2p and the UDP packets between participants.
//!
//! # Signalling (direct protocol, first byte [`VOICE_VERSION`])
//!
//! A participant tells each other participant who it is in the room with an [`Announce`]:
//! its stream id (`ssrc`), its UDP candidates, a probe key chosen **for that recipient**, its
//! current sender key and its media-relay allocations. The answer to an `Announce` is the
//! recipient's own `Announce` (if it is in the same room), [`VoiceResponse::NotInRoom`] or a
//! refusal. `Announce` is idempotent: it is also how a participant hands over a new sender key
//! (after every join and leave) or new candidates. [`VoiceRequest::Leave`] says goodbye.
//! Requests travel in the libp2p connection (Noise, end to end even through a circuit relay),
//! so sender keys and probe keys are never visible to a relay.
//!
//! # UDP between participants
//!
//! ```text
//! MEDIA      0x10 | ssrc u32 | SFrame frame (header, ChaCha20-Poly1305(Opus), tag)
//! PROBE      0x11 | ssrc u32 | nonce u64 | mac 16     mac under the recipient's probe key
//! PROBE_ACK  0x12 | ssrc u32 | nonce u64 | mac 16     mac under the prober's probe key
//! MEDIA_EXT  0x13 | ssrc u32 | SFrame frame of (play event | Opus), type byte as AAD
//! REPORT     0x14 | ssrc u32 | nonce u64 | loss u16 | burst u8 | mac 16
//!                                                  mac under the recipient's probe key
//! MEDIA_RED  0x15 | ssrc u32 | SFrame frame of (copy table | copies of earlier Opus
//!                              packets | Opus), type byte as AAD (see `pipeline`)
//! ```
//!
//! `ssrc` is the sender's stream id. A probe's MAC is HMAC-SHA-256 (truncated to 16 bytes)
//! under the probe key the recipient gave this sender alone, over the type byte, `ssrc` and
//! `nonce`: a probe or an acknowledgement proves the pair, so only the two peers can steer each
//! other's media to a new address (how a NAT rebinding is followed). A receiver report tells a
//! sender the loss its receiver sees on the sender's stream (basis points, at most 10,000) and
//! the mean length of its runs of lost frames (tenths of a frame, 10 = isolated losses), so
//! the sender tunes its FEC and redundant copies to the path its packets actually take; it is
//! MACed like a probe (with the loss and the burst in the MAC) and its nonce only grows, so a
//! replayed or forged report cannot push a sender's FEC or copies up or down. Reports say
//! nothing a relay could not already guess from the traffic, so they are authenticated, not
//! encrypted. Media frames need no MAC
//! of their own: they are authenticated by their sender key, and a frame is never used to
//! change a path. Through a media relay the same packets travel inside the relay's `SEND` and
//! `DATA` framing ([`securecomm_rendezvous::media`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use securecomm_crdt::schema::{ChannelId, GuildId};
use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use securecomm_noise::secret::Secret32;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::guild::wire::{get_reason, put_reason};

/// First byte of every voice request and answer on the direct protocol.
pub const VOICE_VERSION: u8 = 0x56;
/// Most candidates one participant announces.
pub const MAX_CANDIDATES: usize = 16;
/// Most media-relay allocations one participant announces.
pub const MAX_RELAYS: usize = 4;
/// Longest relay peer id (bytes of its multihash).
const MAX_PEER_BYTES: usize = 64;
/// Longest refusal reason.
const MAX_REASON: usize = 200;

/// UDP packet type: a media frame.
pub const MEDIA: u8 = 0x10;
/// UDP packet type: a path probe.
pub const PROBE: u8 = 0x11;
/// UDP packet type: a media frame carrying a soundboard play event (see
/// [`super::soundboard`]); the type byte is the frame's associated data.
pub const MEDIA_EXT: u8 = 0x13;
/// UDP packet type: a probe's acknowledgement.
pub const PROBE_ACK: u8 = 0x12;
/// Length of a probe or acknowledgement.
pub const PROBE_LEN: usize = 1 + 4 + 8 + 16;
/// UDP packet type: a receiver report (the loss seen on the recipient's stream).
pub const REPORT: u8 = 0x14;
/// Length of a receiver report.
pub const REPORT_LEN: usize = 1 + 4 + 8 + 2 + 1 + 16;
/// UDP packet type: a media frame carrying redundant copies of earlier frames; the type byte
/// is the frame's associated data.
pub const MEDIA_RED: u8 = 0x15;
/// Largest loss a report can carry, in basis points (100%).
pub const MAX_REPORT_LOSS: u16 = 10_000;

/// A sender key: one epoch of one participant's stream.
#[derive(Clone, PartialEq, Eq)]
pub struct SenderKey {
    /// The SFrame key id (the sender's epoch counter).
    pub kid: u64,
    /// The SFrame base key.
    pub base: Secret32,
}

impl std::fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A participant's allocation on a relay's UDP media relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayEndpoint {
    /// The relay's libp2p peer id (bytes).
    pub relay: Vec<u8>,
    /// The relay's UDP media address.
    pub addr: SocketAddr,
    /// The allocation's id at that relay (what others address it by).
    pub alloc_id: u32,
}

/// "I am in this room, and this is how to reach and decrypt me."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    /// The guild.
    pub guild: GuildId,
    /// The voice channel.
    pub channel: ChannelId,
    /// The announcer's stream id.
    pub ssrc: u32,
    /// UDP addresses to try, best first.
    pub candidates: Vec<SocketAddr>,
    /// The key the recipient must MAC its probes to the announcer with (for this pair only).
    pub probe_key: Secret32,
    /// The announcer's current sender key (`None`: it does not speak).
    pub key: Option<SenderKey>,
    /// The announcer's media-relay allocations.
    pub relays: Vec<RelayEndpoint>,
    /// Self-muted.
    pub muted: bool,
    /// Self-deafened.
    pub deafened: bool,
}

/// A voice request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoiceRequest {
    /// Join, update or rekey (see the module doc).
    Announce(Announce),
    /// The sender left the room.
    Leave {
        /// The guild.
        guild: GuildId,
        /// The voice channel.
        channel: ChannelId,
    },
    /// The sender does not have the clip of the recipient's play event `event` cached: the
    /// recipient should mix it into its own stream (see [`super::soundboard`]).
    NeedClip {
        /// The guild.
        guild: GuildId,
        /// The voice channel.
        channel: ChannelId,
        /// The play event's id.
        event: u32,
    },
}

/// An answer to a voice request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoiceResponse {
    /// The answerer is in the room too: its own state.
    Announce(Announce),
    /// The answerer is not in that room (it noted the sender's presence).
    NotInRoom,
    /// Taken.
    Ok,
    /// Refused, and why (not a member, no Connect permission, the room is full).
    Refused(String),
}

fn put_addr(w: &mut Writer, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            w.u8(4);
            w.put(&ip.octets());
        }
        IpAddr::V6(ip) => {
            w.u8(6);
            w.put(&ip.octets());
        }
    }
    w.u16(a.port());
}

fn get_addr(r: &mut Reader<'_>) -> Result<SocketAddr, DecodeError> {
    let ip = match r.u8()? {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
        got => {
            return Err(DecodeError::UnknownTag {
                what: "address family",
                got: u64::from(got),
            });
        }
    };
    Ok(SocketAddr::new(ip, r.u16()?))
}

impl Encode for Announce {
    fn encode(&self, w: &mut Writer) {
        w.put(&self.guild.0);
        w.u64(self.channel.0);
        w.u32(self.ssrc);
        let cands = &self.candidates[..self.candidates.len().min(MAX_CANDIDATES)];
        w.u8(cands.len() as u8);
        for c in cands {
            put_addr(w, c);
        }
        w.put(self.probe_key.expose());
        match &self.key {
            None => w.u8(0),
            Some(k) => {
                w.u8(1);
                w.u64(k.kid);
                w.put(k.base.expose());
            }
        }
        let relays = &self.relays[..self.relays.len().min(MAX_RELAYS)];
        w.u8(relays.len() as u8);
        for r in relays {
            w.bytes16(&r.relay[..r.relay.len().min(MAX_PEER_BYTES)]);
            put_addr(w, &r.addr);
            w.u32(r.alloc_id);
        }
        w.u8(u8::from(self.muted) | (u8::from(self.deafened) << 1));
    }
}

impl Decode for Announce {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let guild = GuildId(r.array()?);
        let channel = ChannelId(r.u64()?);
        let ssrc = r.u32()?;
        let n = usize::from(r.u8()?);
        if n > MAX_CANDIDATES {
            return Err(DecodeError::TooLong {
                what: "voice candidates",
                max: MAX_CANDIDATES,
                got: n,
            });
        }
        let candidates = (0..n).map(|_| get_addr(r)).collect::<Result<_, _>>()?;
        let probe_key = Secret32::from_bytes(r.array()?);
        let key = match r.u8()? {
            0 => None,
            1 => Some(SenderKey {
                kid: r.u64()?,
                base: Secret32::from_bytes(r.array()?),
            }),
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "sender key",
                    got: u64::from(got),
                });
            }
        };
        let n = usize::from(r.u8()?);
        if n > MAX_RELAYS {
            return Err(DecodeError::TooLong {
                what: "voice relays",
                max: MAX_RELAYS,
                got: n,
            });
        }
        let mut relays = Vec::with_capacity(n);
        for _ in 0..n {
            relays.push(RelayEndpoint {
                relay: r.bytes16("relay peer id", MAX_PEER_BYTES)?.to_vec(),
                addr: get_addr(r)?,
                alloc_id: r.u32()?,
            });
        }
        let flags = r.u8()?;
        if flags > 3 {
            return Err(DecodeError::Invalid("voice flags"));
        }
        Ok(Self {
            guild,
            channel,
            ssrc,
            candidates,
            probe_key,
            key,
            relays,
            muted: flags & 1 != 0,
            deafened: flags & 2 != 0,
        })
    }
}

impl Encode for VoiceRequest {
    fn encode(&self, w: &mut Writer) {
        w.u8(VOICE_VERSION);
        match self {
            Self::Announce(a) => {
                w.u8(1);
                a.encode(w);
            }
            Self::Leave { guild, channel } => {
                w.u8(2);
                w.put(&guild.0);
                w.u64(channel.0);
            }
            Self::NeedClip {
                guild,
                channel,
                event,
            } => {
                w.u8(3);
                w.put(&guild.0);
                w.u64(channel.0);
                w.u32(*event);
            }
        }
    }
}

impl Decode for VoiceRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("voice request", VOICE_VERSION)?;
        match r.u8()? {
            1 => Ok(Self::Announce(Announce::decode(r)?)),
            2 => Ok(Self::Leave {
                guild: GuildId(r.array()?),
                channel: ChannelId(r.u64()?),
            }),
            3 => Ok(Self::NeedClip {
                guild: GuildId(r.array()?),
                channel: ChannelId(r.u64()?),
                event: r.u32()?,
            }),
            got => Err(DecodeError::UnknownTag {
                what: "voice request",
                got: u64::from(got),
            }),
        }
    }
}

impl Encode for VoiceResponse {
    fn encode(&self, w: &mut Writer) {
        w.u8(VOICE_VERSION);
        match self {
            Self::Announce(a) => {
                w.u8(1);
                a.encode(w);
            }
            Self::NotInRoom => w.u8(2),
            Self::Ok => w.u8(3),
            Self::Refused(reason) => {
                w.u8(4);
                put_reason(w, reason, MAX_REASON);
            }
        }
    }
}

impl Decode for VoiceResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("voice response", VOICE_VERSION)?;
        match r.u8()? {
            1 => Ok(Self::Announce(Announce::decode(r)?)),
            2 => Ok(Self::NotInRoom),
            3 => Ok(Self::Ok),
            4 => Ok(Self::Refused(get_reason(r, MAX_REASON)?)),
            got => Err(DecodeError::UnknownTag {
                what: "voice response",
                got: u64::from(got),
            }),
        }
    }
}

// ------------------------------------------------------------------------------------- UDP

/// A parsed UDP packet between participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerPacket<'a> {
    /// A media frame of stream `ssrc`.
    Media {
        /// The sender's stream id.
        ssrc: u32,
        /// The SFrame frame.
        frame: &'a [u8],
        /// Its packet type: `MEDIA`, `MEDIA_EXT` (the frame carries a soundboard play event)
        /// or `MEDIA_RED` (it carries redundant copies).
        kind: u8,
    },
    /// A probe from stream `ssrc`.
    Probe {
        /// The prober's stream id.
        ssrc: u32,
        /// The probe's nonce.
        nonce: u64,
        /// Its MAC.
        mac: [u8; 16],
    },
    /// An acknowledgement from stream `ssrc` of our probe `nonce`.
    ProbeAck {
        /// The acknowledger's stream id.
        ssrc: u32,
        /// Our probe's nonce.
        nonce: u64,
        /// Its MAC.
        mac: [u8; 16],
    },
    /// A receiver report from stream `ssrc`: the loss it sees on our stream.
    Report {
        /// The reporter's stream id.
        ssrc: u32,
        /// The report's nonce (grows with every report of this reporter).
        nonce: u64,
        /// Loss in basis points (at most [`MAX_REPORT_LOSS`]).
        loss: u16,
        /// Mean run of lost frames, in tenths of a frame.
        burst: u8,
        /// Its MAC.
        mac: [u8; 16],
    },
}

/// Why a UDP packet was dropped before any cryptography.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than its type needs, or a probe of the wrong length.
    #[error("malformed voice packet")]
    Malformed,
    /// Not a voice packet type.
    #[error("unknown voice packet type {0:#04x}")]
    UnknownType(u8),
}

/// Parses a UDP packet (untrusted bytes; never panics).
pub fn parse_packet(b: &[u8]) -> Result<PeerPacket<'_>, PacketError> {
    let (&t, rest) = b.split_first().ok_or(PacketError::Malformed)?;
    let ssrc = u32::from_be_bytes(
        rest.get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or(PacketError::Malformed)?,
    );
    match t {
        MEDIA | MEDIA_EXT | MEDIA_RED => {
            let frame = &rest[4..];
            if frame.is_empty() {
                return Err(PacketError::Malformed);
            }
            Ok(PeerPacket::Media {
                ssrc,
                frame,
                kind: t,
            })
        }
        PROBE | PROBE_ACK => {
            if b.len() != PROBE_LEN {
                return Err(PacketError::Malformed);
            }
            let nonce =
                u64::from_be_bytes(rest[4..12].try_into().map_err(|_| PacketError::Malformed)?);
            let mac: [u8; 16] = rest[12..28]
                .try_into()
                .map_err(|_| PacketError::Malformed)?;
            Ok(if t == PROBE {
                PeerPacket::Probe { ssrc, nonce, mac }
            } else {
                PeerPacket::ProbeAck { ssrc, nonce, mac }
            })
        }
        REPORT => {
            if b.len() != REPORT_LEN {
                return Err(PacketError::Malformed);
            }
            let nonce =
                u64::from_be_bytes(rest[4..12].try_into().map_err(|_| PacketError::Malformed)?);
            let loss = u16::from_be_bytes(
                rest[12..14]
                    .try_into()
                    .map_err(|_| PacketError::Malformed)?,
            );
            if loss > MAX_REPORT_LOSS {
                return Err(PacketError::Malformed);
            }
            let burst = rest[14];
            let mac: [u8; 16] = rest[15..31]
                .try_into()
                .map_err(|_| PacketError::Malformed)?;
            Ok(PeerPacket::Report {
                ssrc,
                nonce,
                loss,
                burst,
                mac,
            })
        }
        other => Err(PacketError::UnknownType(other)),
    }
}

/// Writes a media packet header (`MEDIA | ssrc`) into `out` (cleared first); append the frame.
pub fn media_header(ssrc: u32, out: &mut Vec<u8>) {
    out.clear();
    out.push(MEDIA);
    out.extend_from_slice(&ssrc.to_be_bytes());
}

fn probe_mac(key: &Secret32, kind: u8, ssrc: u32, nonce: u64) -> [u8; 16] {
    packet_mac(key, kind, ssrc, nonce, &[])
}

/// HMAC-SHA-256, truncated to 16 bytes, over a packet's type, stream id, nonce and `extra`.
fn packet_mac(key: &Secret32, kind: u8, ssrc: u32, nonce: u64, extra: &[u8]) -> [u8; 16] {
    // HMAC takes keys of any length, so this never fails; an all-zero MAC would only fail
    // verification.
    let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(key.expose()) else {
        return [0; 16];
    };
    m.update(b"SecureComm/voice-probe v1");
    m.update(&[kind]);
    m.update(&ssrc.to_be_bytes());
    m.update(&nonce.to_be_bytes());
    m.update(extra);
    let full = m.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// A probe or acknowledgement of `kind` from stream `ssrc`, MACed under `key`.
pub fn probe_packet(kind: u8, key: &Secret32, ssrc: u32, nonce: u64) -> [u8; PROBE_LEN] {
    let mut p = [0u8; PROBE_LEN];
    p[0] = kind;
    p[1..5].copy_from_slice(&ssrc.to_be_bytes());
    p[5..13].copy_from_slice(&nonce.to_be_bytes());
    p[13..].copy_from_slice(&probe_mac(key, kind, ssrc, nonce));
    p
}

/// Whether `mac` is right for a probe or acknowledgement of `kind` (constant time).
pub fn probe_ok(kind: u8, key: &Secret32, ssrc: u32, nonce: u64, mac: &[u8; 16]) -> bool {
    probe_mac(key, kind, ssrc, nonce).ct_eq(mac).into()
}

/// A receiver report from stream `ssrc`: `loss` (0.0..=1.0, clamped) seen on the recipient's
/// stream and the mean run of lost frames `burst` (frames, clamped to 0.0..=25.5), MACed under
/// the probe key the recipient gave us.
pub fn report_packet(
    key: &Secret32,
    ssrc: u32,
    nonce: u64,
    loss: f32,
    burst: f32,
) -> [u8; REPORT_LEN] {
    let bp = (loss.clamp(0.0, 1.0) * f32::from(MAX_REPORT_LOSS)).round() as u16;
    let bp = bp.min(MAX_REPORT_LOSS);
    let tenths = (burst.clamp(0.0, 25.5) * 10.0).round() as u8;
    let mut p = [0u8; REPORT_LEN];
    p[0] = REPORT;
    p[1..5].copy_from_slice(&ssrc.to_be_bytes());
    p[5..13].copy_from_slice(&nonce.to_be_bytes());
    p[13..15].copy_from_slice(&bp.to_be_bytes());
    p[15] = tenths;
    p[16..].copy_from_slice(&report_mac(key, ssrc, nonce, bp, tenths));
    p
}

fn report_mac(key: &Secret32, ssrc: u32, nonce: u64, loss: u16, burst: u8) -> [u8; 16] {
    let [a, b] = loss.to_be_bytes();
    packet_mac(key, REPORT, ssrc, nonce, &[a, b, burst])
}

/// Whether `mac` is right for a receiver report (constant time).
pub fn report_ok(
    key: &Secret32,
    ssrc: u32,
    nonce: u64,
    loss: u16,
    burst: u8,
    mac: &[u8; 16],
) -> bool {
    report_mac(key, ssrc, nonce, loss, burst).ct_eq(mac).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn announce() -> Announce {
        Announce {
            guild: GuildId([7; 32]),
            channel: ChannelId(42),
            ssrc: 0xdead_beef,
            candidates: vec![
                "127.0.0.1:4000".parse().unwrap(),
                "[::1]:5000".parse().unwrap(),
            ],
            probe_key: Secret32::from_bytes([1; 32]),
            key: Some(SenderKey {
                kid: 3,
                base: Secret32::from_bytes([2; 32]),
            }),
            relays: vec![RelayEndpoint {
                relay: vec![0, 36, 8, 1],
                addr: "10.0.0.1:3478".parse().unwrap(),
                alloc_id: 9,
            }],
            muted: true,
            deafened: false,
        }
    }

    #[test]
    fn signalling_round_trips() {
        for req in [
            VoiceRequest::Announce(announce()),
            VoiceRequest::Leave {
                guild: GuildId([3; 32]),
                channel: ChannelId(1),
            },
            VoiceRequest::NeedClip {
                guild: GuildId([3; 32]),
                channel: ChannelId(1),
                event: 0xdead_beef,
            },
        ] {
            assert_eq!(VoiceRequest::from_bytes(&req.to_bytes()).unwrap(), req);
        }
        for resp in [
            VoiceResponse::Announce(announce()),
            VoiceResponse::NotInRoom,
            VoiceResponse::Ok,
            VoiceResponse::Refused("room full".into()),
        ] {
            assert_eq!(VoiceResponse::from_bytes(&resp.to_bytes()).unwrap(), resp);
        }
    }

    #[test]
    fn debug_hides_keys() {
        let s = format!("{:?}", announce());
        assert!(!s.contains("[2, 2") && !s.contains("0202"), "{s}");
        assert!(!s.contains("[1, 1") && !s.contains("0101"), "{s}");
    }

    #[test]
    fn probes_verify_only_under_their_key_and_kind() {
        let k = Secret32::from_bytes([5; 32]);
        let p = probe_packet(PROBE, &k, 77, 123);
        let PeerPacket::Probe { ssrc, nonce, mac } = parse_packet(&p).unwrap() else {
            panic!("not a probe");
        };
        assert!(probe_ok(PROBE, &k, ssrc, nonce, &mac));
        assert!(!probe_ok(PROBE_ACK, &k, ssrc, nonce, &mac));
        assert!(!probe_ok(
            PROBE,
            &Secret32::from_bytes([6; 32]),
            ssrc,
            nonce,
            &mac
        ));
        assert!(!probe_ok(PROBE, &k, ssrc + 1, nonce, &mac));
        assert!(!probe_ok(PROBE, &k, ssrc, nonce + 1, &mac));
    }

    #[test]
    fn reports_carry_the_loss_and_verify_only_under_their_key() {
        let k = Secret32::random(&mut rand_core::OsRng);
        let p = report_packet(&k, 9, 41, 0.237, 2.94);
        let Ok(PeerPacket::Report {
            ssrc,
            nonce,
            loss,
            burst,
            mac,
        }) = parse_packet(&p)
        else {
            panic!("not a report");
        };
        assert_eq!((ssrc, nonce, loss, burst), (9, 41, 2370, 29));
        assert!(report_ok(&k, ssrc, nonce, loss, burst, &mac));
        // Another key, stream, nonce, loss or burst: refused.
        let other = Secret32::random(&mut rand_core::OsRng);
        assert!(!report_ok(&other, ssrc, nonce, loss, burst, &mac));
        assert!(!report_ok(&k, ssrc + 1, nonce, loss, burst, &mac));
        assert!(!report_ok(&k, ssrc, nonce + 1, loss, burst, &mac));
        assert!(!report_ok(&k, ssrc, nonce, loss + 1, burst, &mac));
        assert!(!report_ok(&k, ssrc, nonce, loss, burst - 1, &mac));
        // A probe's MAC over the same fields is not a report's.
        assert!(!report_ok(
            &k,
            ssrc,
            nonce,
            0,
            0,
            &probe_mac(&k, PROBE, ssrc, nonce)
        ));
        // Out of range and wrong lengths.
        assert_eq!(
            report_packet(&k, 1, 1, 7.0, 1.0)[13..15],
            10_000u16.to_be_bytes()
        );
        assert_eq!(
            report_packet(&k, 1, 1, f32::NAN, f32::NAN)[13..16],
            [0, 0, 0]
        );
        assert_eq!(report_packet(&k, 1, 1, 0.1, 1e9)[15], 255);
        let mut big = p;
        big[13..15].copy_from_slice(&10_001u16.to_be_bytes());
        assert_eq!(parse_packet(&big), Err(PacketError::Malformed));
        assert_eq!(
            parse_packet(&p[..REPORT_LEN - 1]),
            Err(PacketError::Malformed)
        );
        let mut long = p.to_vec();
        long.push(0);
        assert_eq!(parse_packet(&long), Err(PacketError::Malformed));
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_what_decodes_is_canonical(
            b in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            let _ = parse_packet(&b);
            if let Ok(r) = VoiceRequest::from_bytes(&b) {
                prop_assert_eq!(r.to_bytes(), b.clone());
            }
            if let Ok(r) = VoiceResponse::from_bytes(&b) {
                prop_assert_eq!(r.to_bytes(), b.clone());
            }
        }

        #[test]
        fn mutated_announces_never_panic(i in 0usize..200, x in any::<u8>()) {
            let mut b = VoiceRequest::Announce(announce()).to_bytes();
            let n = b.len();
            b[i % n] ^= x;
            if let Ok(r) = VoiceRequest::from_bytes(&b) {
                prop_assert_eq!(r.to_bytes(), b);
            }
        }

        #[test]
        fn truncated_announces_are_errors(cut in 0usize..150) {
            let b = VoiceRequest::Announce(announce()).to_bytes();
            prop_assume!(cut < b.len());
            prop_assert!(VoiceRequest::from_bytes(&b[..cut]).is_err());
        }
    }
}
