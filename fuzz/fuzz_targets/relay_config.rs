//! Relay configuration: any text either parses into a configuration that passes validation
//! (and whose limits libp2p accepts without panicking) or is a clear error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_rendezvous::{RelayConfig, server::relay_config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = RelayConfig::from_toml(text) {
        assert!(cfg.validate().is_ok());
        let _ = relay_config(&cfg);
    }
});
