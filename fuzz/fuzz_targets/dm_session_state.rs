//! Decodes serialized DM session state (and prekey store state). Must never panic; whatever
//! decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::dm::{PrekeyStore, Session};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Session::from_bytes(data) {
        assert_eq!(&s.to_bytes()[..], data);
    }
    if let Ok(s) = PrekeyStore::from_bytes(data) {
        assert_eq!(&s.to_bytes()[..], data);
    }
});
