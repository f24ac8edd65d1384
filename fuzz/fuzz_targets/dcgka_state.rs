//! Fuzzes the DCGKA whole-state decoder (and re-encoding of whatever decodes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::dcgka::Group;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = Group::from_bytes(data) {
        let again = g.to_bytes();
        let _ = Group::from_bytes(&again);
    }
});
