//! Parses arbitrary bytes as an SFrame header; anything that parses must re-encode to the
//! same bytes (the decoder accepts only the minimal encoding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::frame::SframeHeader;
use securecomm_noise::{Decode, Encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = SframeHeader::from_bytes(data) {
        assert_eq!(h.to_bytes(), data);
    }
    if let Ok((h, len)) = SframeHeader::parse_prefix(data) {
        assert_eq!(h.encoded_len(), len);
    }
});
