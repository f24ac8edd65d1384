//! Decodes a DM message and decrypts it on a fixed, established session (both directions of the
//! initial exchange done), then checks the session still works. Must never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use securecomm_noise::Decode;
use securecomm_noise::dm::{DmIdentity, DmMessage, PrekeyStore, Session};

#[path = "common/fixed_rng.rs"]
mod fixed_rng;
use fixed_rng::FixedRng;

/// Serialized Alice, Bob and Bob's prekey store after the initial exchange, built once.
struct Fixture {
    alice: Vec<u8>,
    bob: Vec<u8>,
    store: Vec<u8>,
    bob_id: DmIdentity,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = FixedRng(7);
        let alice_id = DmIdentity::generate(&mut rng);
        let bob_id = DmIdentity::generate(&mut rng);
        let mut store = PrekeyStore::new();
        store.rotate_signed_prekey(&mut rng, &bob_id).unwrap();
        store.generate_one_time_prekeys(&mut rng, 1).unwrap();
        let bundle = store.bundle(&bob_id, None).unwrap();
        let mut alice = Session::initiate(&mut rng, &alice_id, &bundle).unwrap();
        let first = alice.encrypt(&mut rng, b"hello").unwrap();
        let (mut bob, _) = Session::accept(&mut store, &bob_id, &first).unwrap();
        let reply = bob.encrypt(&mut rng, b"hi").unwrap();
        alice.decrypt(&reply).unwrap();
        // Alice's next chain is open, so the liveness check below needs no DH.
        let m = alice.encrypt(&mut rng, b"open").unwrap();
        bob.decrypt(&m).unwrap();
        Fixture {
            alice: alice.to_bytes().to_vec(),
            bob: bob.to_bytes().to_vec(),
            store: store.to_bytes().to_vec(),
            bob_id,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut alice = Session::from_bytes(&f.alice).unwrap();
    let mut bob = Session::from_bytes(&f.bob).unwrap();
    if let Ok(m) = DmMessage::from_bytes(data) {
        let _ = bob.decrypt(&m);
        let _ = alice.decrypt(&m);
        let mut store = PrekeyStore::from_bytes(&f.store).unwrap();
        let _ = Session::accept(&mut store, &f.bob_id, &m);
    }
    // A fuzzed message never breaks the session.
    let mut rng = FixedRng(9);
    let m = alice.encrypt(&mut rng, b"still works").unwrap();
    assert_eq!(&bob.decrypt(&m).unwrap()[..], b"still works");
});
