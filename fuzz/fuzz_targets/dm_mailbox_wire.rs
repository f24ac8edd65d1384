//! Fuzzes the node's DM and mailbox decoders: DM payloads, DM requests and answers on the
//! direct protocol, mailbox announcements, opened mailbox blob bodies, and opening arbitrary
//! bytes as a sealed mailbox blob. Whatever decodes must re-encode to the same bytes (the
//! announcement encoder is canonical; the others are exact).
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_node::guild::dm::{DmPayload, DmRequest, DmResponse};
use securecomm_node::guild::mailbox::{Announcement, BlobBody, open};
use securecomm_noise::codec::{Decode, Encode};
use securecomm_noise::secret::Secret32;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = DmPayload::from_bytes(data) {
        assert_eq!(p.to_bytes(), data);
    }
    if let Ok(r) = DmRequest::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(r) = DmResponse::from_bytes(data) {
        assert_eq!(DmResponse::from_bytes(&r.to_bytes()).ok(), Some(r));
    }
    if let Ok(a) = Announcement::from_bytes(data) {
        assert_eq!(a.to_bytes(), data);
    }
    if let Ok(b) = BlobBody::from_bytes(data) {
        assert_eq!(b.to_bytes(), data);
    }
    let _ = open(&Secret32::from_bytes([7; 32]), data);
});
