//! Key store files: opening must never panic and never cost more than a millisecond or so.
//!
//! Each input is tried twice: as is (almost always stopped by the checksum), and with a valid
//! checksum appended, so the header, bounds, KDF, passphrase check and AEAD paths are reached.
//! The limits allow at most 64 KiB and 1 pass of Argon2id, so no input can spend real time in
//! the KDF; anything heavier is refused by the bounds check before the KDF runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::keystore::{self, KdfLimits};

const LIMITS: KdfLimits = KdfLimits {
    min_m_cost_kib: 8,
    max_m_cost_kib: 64,
    min_t_cost: 1,
    max_t_cost: 1,
    max_p_cost: 1,
    max_work: 64,
};

fuzz_target!(|data: &[u8]| {
    let _ = keystore::open_with_limits(b"fuzz passphrase", data, &LIMITS);
    let mut blob = data.to_vec();
    blob.extend_from_slice(&keystore::checksum(data));
    let _ = keystore::open_with_limits(b"fuzz passphrase", &blob, &LIMITS);
    // Not `keystore::open` here: its standard limits allow up to 1 GiB of Argon2id, which is
    // right for a user's file and wrong for a fuzzer's throughput.
});
