//! Snapshot-style check across the crate: every secret type's `Debug` output is free of its secret
//! bytes. Secrets are made from a constant byte (0xC3) so any rendering of them (hex, decimal
//! array) is easy to spot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rand_core::{CryptoRng, RngCore};
use securecomm_noise::dcgka::Group;
use securecomm_noise::dm::ratchet::Session;
use securecomm_noise::dm::x3dh::{DmIdentity, PrekeyStore as DmPrekeyStore};
use securecomm_noise::file::FileKey;
use securecomm_noise::frame::BaseKey;
use securecomm_noise::identity::{DeviceKeys, UserIdentity};
use securecomm_noise::keys::{DeviceSigningKey, DhSecret, RootSigningKey};
use securecomm_noise::link::LinkQr;
use securecomm_noise::oneshot::{Prekey, PrekeyStore};
use securecomm_noise::secret::Secret32;

/// An "RNG" that only ever returns 0xC3, so generated secrets are recognisable.
struct ConstRng;

impl RngCore for ConstRng {
    fn next_u32(&mut self) -> u32 {
        0xC3C3_C3C3
    }
    fn next_u64(&mut self) -> u64 {
        0xC3C3_C3C3_C3C3_C3C3
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0xC3);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        dest.fill(0xC3);
        Ok(())
    }
}

impl CryptoRng for ConstRng {}

fn assert_redacted(what: &str, debug: String) {
    let lower = debug.to_lowercase();
    for needle in ["c3c3", "c3, c3", "0xc3", "195, 195", "195,195"] {
        assert!(
            !lower.contains(needle),
            "{what} Debug leaks secret bytes ({needle}): {debug}"
        );
    }
}

#[test]
fn no_secret_type_prints_its_secret() {
    let mut rng = ConstRng;
    let seed = [0xC3u8; 32];
    assert_redacted("Secret32", format!("{:?}", Secret32::from_bytes(seed)));
    assert_redacted(
        "RootSigningKey",
        format!("{:?}", RootSigningKey::from_seed(&seed)),
    );
    assert_redacted(
        "DeviceSigningKey",
        format!("{:?}", DeviceSigningKey::from_seed(&seed)),
    );
    assert_redacted("DhSecret", format!("{:?}", DhSecret::from_bytes(seed)));
    assert_redacted(
        "DeviceKeys",
        format!("{:?}", DeviceKeys::generate(&mut rng)),
    );
    assert_redacted(
        "UserIdentity",
        format!(
            "{:?}",
            UserIdentity::generate(&mut rng, "laptop", 1).unwrap()
        ),
    );
    assert_redacted("FileKey", format!("{:?}", FileKey::from_bytes(seed)));
    assert_redacted("BaseKey", format!("{:?}", BaseKey::from_bytes(seed)));
    assert_redacted("Prekey", format!("{:?}", Prekey::generate(&mut rng, 1, 1)));
    assert_redacted(
        "PrekeyStore",
        format!("{:?}", PrekeyStore::new(&mut rng, 1)),
    );
    let device = DeviceSigningKey::from_seed(&[1; 32]).public();
    let bob = DmIdentity::generate(&mut rng);
    let mut store = DmPrekeyStore::new();
    store.rotate_signed_prekey(&mut rng, &bob).unwrap();
    let bundle = store.bundle(&bob, None).unwrap();
    assert_redacted("DmIdentity", format!("{bob:?}"));
    assert_redacted("dm::PrekeyStore", format!("{store:?}"));
    let alice = DmIdentity::generate(&mut rng);
    let session = Session::initiate(&mut rng, &alice, &bundle).unwrap();
    assert_redacted("Session", format!("{session:?}"));
    let signer = DeviceSigningKey::from_seed(&seed);
    let mut group = Group::new([9; 32], signer.public(), PrekeyStore::new(&mut rng, 1));
    let me = group.member_key(&signer);
    group.create(&signer, &mut rng, me, &[]).unwrap();
    assert_redacted("dcgka::Group", format!("{group:?}"));
    assert_redacted(
        "LinkQr",
        format!("{:?}", LinkQr::generate(&mut rng, device, b"hint").unwrap()),
    );
}

/// The checker itself must catch a leak, or the test above proves nothing.
#[test]
fn checker_catches_a_leak() {
    let leaky = format!("{:?}", [0xC3u8; 4]);
    assert!(std::panic::catch_unwind(|| assert_redacted("leaky", leaky)).is_err());
    let hex_leak = "key=c3c3c3".to_string();
    assert!(std::panic::catch_unwind(|| assert_redacted("hex", hex_leak)).is_err());
}
