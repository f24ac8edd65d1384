//! Capture files: the reader joins records into streams or returns an error; never a panic,
//! and the streams never hold more bytes than the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_rendezvous::capture::read_capture;

fuzz_target!(|data: &[u8]| {
    if let Ok(streams) = read_capture(data) {
        let total: usize = streams.values().map(Vec::len).sum();
        assert!(total <= data.len());
    }
});
