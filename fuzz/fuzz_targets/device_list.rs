//! Device lists from gossip: decoding verifies the whole chain; it must never panic, and an
//! accepted list must re-encode to the same bytes and verify again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::identity::DeviceList;
use securecomm_noise::{Decode, Encode};

fuzz_target!(|data: &[u8]| {
    let parsed = DeviceList::parse(data);
    let decoded = DeviceList::from_bytes(data);
    assert_eq!(parsed.is_ok(), decoded.is_ok());
    if let Ok(list) = parsed {
        assert_eq!(list.to_bytes(), data);
        assert!(list.verify().is_ok());
        let _ = list.active_devices().count();
    }
});
