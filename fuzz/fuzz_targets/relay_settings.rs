//! Fuzzes the app's relay settings in `securecomm-node::store::settings`: the stored relay list
//! decoder (whatever decodes re-encodes to a list that decodes to the same relays; the
//! multiaddr crate may re-encode an address's bytes differently) and the parser of relay addresses
//! typed by the user (never panics; whatever it accepts ends in `/p2p/<peer>`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_node::store::settings::{decode_relays, encode_relays, parse_relay};

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = decode_relays(data) {
        assert_eq!(decode_relays(&encode_relays(&list)).ok(), Some(list));
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(a) = parse_relay(s)
    {
        assert!(a.to_string().contains("/p2p/"));
    }
});
