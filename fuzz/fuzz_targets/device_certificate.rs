//! Device certificates: decoding verifies the root's signature; it must never panic, and an
//! accepted certificate must re-encode to the same bytes. Also feeds the user-identity secret
//! decoder, whose tail is a certificate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_noise::identity::{DeviceCertificate, UserIdentity};
use securecomm_noise::{Decode, Encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = DeviceCertificate::from_bytes(data) {
        assert_eq!(cert.to_bytes(), data);
        assert!(cert.verify().is_ok());
    }
    let _ = DeviceCertificate::parse(data);
    if let Ok(id) = UserIdentity::from_secret_bytes(data) {
        assert_eq!(id.to_secret_bytes().as_slice(), data);
    }
});
