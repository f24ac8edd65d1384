//! Fuzzes the causal-log wire decoders of `securecomm-node::sync`: entries, frontiers and the
//! sync request/response messages. Whatever decodes must re-encode to the same bytes (one
//! encoding per value), and signature checks must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_node::sync::{Entry, Frontier, SyncRequest, SyncResponse};
use securecomm_noise::codec::{Decode, Encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Entry::from_bytes(data) {
        assert_eq!(e.to_bytes(), data);
        let _ = e.verify();
    }
    if let Ok(f) = Frontier::from_bytes(data) {
        assert_eq!(f.to_bytes(), data);
    }
    if let Ok(r) = SyncRequest::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(r) = SyncResponse::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
});
