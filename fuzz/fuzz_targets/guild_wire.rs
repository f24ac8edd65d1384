//! Fuzzes the guild layer's wire decoders in `securecomm-node::guild::wire`: causal-log
//! payloads, message plaintexts, the join protocol's requests and answers, and invite links
//! (binary and text). Whatever decodes must re-encode to a value that decodes to the same
//! thing; all but invite links (whose multiaddrs are re-encoded by the multiaddr crate) must
//! re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_node::guild::wire::{AppPayload, DirectRequest, DirectResponse, InviteLink, LogPayload};
use securecomm_noise::codec::{Decode, Encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = LogPayload::from_bytes(data) {
        assert_eq!(p.to_bytes(), data);
    }
    if let Ok(p) = AppPayload::from_bytes(data) {
        assert_eq!(p.to_bytes(), data);
    }
    if let Ok(r) = DirectRequest::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(r) = DirectResponse::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(l) = InviteLink::from_bytes(data) {
        assert_eq!(InviteLink::from_bytes(&l.to_bytes()).ok(), Some(l.clone()));
        assert_eq!(InviteLink::from_text(&l.to_text()).ok(), Some(l));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = InviteLink::from_text(s);
    }
});
