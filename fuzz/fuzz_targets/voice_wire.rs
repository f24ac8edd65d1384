//! Voice signalling and the UDP packets between participants: any bytes either decode into a
//! request or answer whose encoding is exactly the input (one encoding per message), or are a
//! clean error; the packet parser accepts or refuses any bytes without panicking. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_node::voice::wire::{VoiceRequest, VoiceResponse, parse_packet};
use securecomm_noise::codec::{Decode, Encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = VoiceRequest::from_bytes(data) {
        assert_eq!(req.to_bytes(), data);
    }
    if let Ok(res) = VoiceResponse::from_bytes(data) {
        assert_eq!(res.to_bytes(), data);
    }
    let _ = parse_packet(data);
});
