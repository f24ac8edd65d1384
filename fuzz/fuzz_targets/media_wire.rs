//! Media relay decoders: the allocation messages either decode into a request or response
//! whose encoding is exactly the input (one encoding per message) or are a clean error; the
//! UDP packet parsers of both sides accept or refuse any bytes without panicking, and what they
//! accept re-encodes to the same bytes. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_rendezvous::media::{
    ClientPacket, MediaRequest, MediaResponse, RelayPacket,
    codec::media_frame,
    parse_client_packet, parse_relay_packet,
    wire::{encode_bind, encode_bound, encode_data, encode_send},
};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = MediaRequest::from_bytes(data) {
        assert_eq!(req.to_bytes(), data);
        assert_eq!(media_frame(&req).get(4..), Some(data));
    }
    if let Ok(res) = MediaResponse::from_bytes(data) {
        assert_eq!(res.to_bytes(), data);
    }
    let mut out = Vec::new();
    match parse_client_packet(data) {
        Ok(ClientPacket::Send {
            token,
            dest,
            payload,
        }) => {
            encode_send(token, dest, payload, &mut out);
            assert_eq!(out, data);
        }
        Ok(ClientPacket::Bind { token, txid }) => {
            encode_bind(token, txid, &mut out);
            assert_eq!(out, data);
        }
        Err(_) => {}
    }
    match parse_relay_packet(data) {
        Ok(RelayPacket::Data { from, payload }) => {
            encode_data(from, payload, &mut out);
            assert_eq!(out, data);
        }
        Ok(RelayPacket::Bound { txid, observed }) => {
            encode_bound(&txid, observed, &mut out);
            // An IPv4-mapped IPv6 address is re-encoded as IPv4: the only non-identity case.
            if !matches!(observed.ip(), std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) {
                assert_eq!(out, data);
            }
        }
        Err(_) => {}
    }
});
