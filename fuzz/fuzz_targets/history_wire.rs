//! Fuzzes history sync's wire decoders (`securecomm-node::guild::history`): requests with their
//! per-sender ranges, receipts, nudges and response pages. Whatever decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_node::guild::history::{HistoryRequest, HistoryResponse, Nudge, Receipt};
use securecomm_noise::codec::{Decode, Encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = HistoryRequest::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(r) = Receipt::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(r) = Nudge::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    if let Ok(r) = HistoryResponse::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
});
