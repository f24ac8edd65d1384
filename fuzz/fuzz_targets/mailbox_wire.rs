//! Mailbox wire decoders: any bytes either decode into a request or response whose encoding is
//! exactly those bytes (one encoding per message), or are a clean error; never a panic. The
//! same bytes also go through the stream framing (u32 length prefix) with a small bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::codec::{Decode, Encode};
use securecomm_rendezvous::mailbox::{Request, Response, codec::frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::from_bytes(data) {
        assert_eq!(req.to_bytes(), data);
        let framed = frame(&req);
        assert_eq!(framed.get(4..), Some(data));
    }
    if let Ok(res) = Response::from_bytes(data) {
        assert_eq!(res.to_bytes(), data);
    }
});
