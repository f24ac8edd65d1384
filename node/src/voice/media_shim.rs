//! TEMPORARY: the media-relay wire as specified for `securecomm_rendezvous::media`, until that
//! module lands; replaced by it on merge.
#![allow(dead_code, missing_docs)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub type RoomId = [u8; 32];
pub type Token = [u8; 16];
pub const FANOUT: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub enum MediaRequest {
    Allocate { room: RoomId },
    Refresh { token: Token },
    Release { token: Token },
}

#[derive(Debug, Clone)]
pub enum MediaResponse {
    Allocated {
        token: Token,
        alloc_id: u32,
        udp_port: u16,
        lifetime_secs: u32,
    },
    Refreshed {
        lifetime_secs: u32,
    },
    Released,
    Refused {
        reason: String,
    },
}

pub enum RelayPacket<'a> {
    Data { from: u32, payload: &'a [u8] },
    Bound { txid: [u8; 8], addr: SocketAddr },
}

pub fn encode_send(token: &Token, dest: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(0x01);
    out.extend_from_slice(token);
    out.extend_from_slice(&dest.to_be_bytes());
    out.extend_from_slice(payload);
}

pub fn encode_bind(token: &Token, txid: [u8; 8], out: &mut Vec<u8>) {
    out.clear();
    out.push(0x03);
    out.extend_from_slice(token);
    out.extend_from_slice(&txid);
}

pub fn parse_relay_packet(b: &[u8]) -> Result<RelayPacket<'_>, ()> {
    match b.first() {
        Some(0x02) if b.len() > 5 => Ok(RelayPacket::Data {
            from: u32::from_be_bytes(b[1..5].try_into().map_err(|_| ())?),
            payload: &b[5..],
        }),
        Some(0x04) if b.len() >= 10 => {
            let txid: [u8; 8] = b[1..9].try_into().map_err(|_| ())?;
            let (ip, rest) = match b[9] {
                4 if b.len() == 10 + 4 + 2 => {
                    let o: [u8; 4] = b[10..14].try_into().map_err(|_| ())?;
                    (IpAddr::V4(Ipv4Addr::from(o)), &b[14..])
                }
                6 if b.len() == 10 + 16 + 2 => {
                    let o: [u8; 16] = b[10..26].try_into().map_err(|_| ())?;
                    (IpAddr::V6(Ipv6Addr::from(o)), &b[26..])
                }
                _ => return Err(()),
            };
            let port = u16::from_be_bytes(rest.try_into().map_err(|_| ())?);
            Ok(RelayPacket::Bound {
                txid,
                addr: SocketAddr::new(ip, port),
            })
        }
        _ => Err(()),
    }
}
