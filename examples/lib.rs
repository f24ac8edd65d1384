//! SecureComm examples. Each program in `examples/` opens with a header saying what it shows and
//! how to run it; the sample files (`relay.toml`, `scenarios/*.toml`) are parsed by this crate's
//! tests so they never drift from the code.

#[cfg(test)]
mod tests {
    #[test]
    fn sample_relay_config_is_valid() {
        let text = include_str!("relay.toml");
        let cfg = securecomm_rendezvous::config::RelayConfig::from_toml(text).unwrap();
        assert_eq!(cfg.circuit.max_duration_secs, 6 * 3600);
    }

    #[test]
    fn sample_scenarios_are_valid() {
        let text = include_str!("scenarios/two-sites.toml");
        securecomm_netsim::scenario::Scenario::from_toml(text).unwrap();
    }
}
