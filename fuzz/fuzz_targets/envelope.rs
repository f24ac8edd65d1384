//! Sealed envelopes from the network: header peek and full open must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::envelope;
use securecomm_noise::secret::Secret32;

fuzz_target!(|data: &[u8]| {
    let _ = envelope::peek_header(data);
    let _ = envelope::open(&Secret32::from_bytes([7; 32]), b"fuzz", data);
});
