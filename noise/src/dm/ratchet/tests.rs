use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

struct Setup {
    bob_id: DmIdentity,
    store: PrekeyStore,
    alice: Session,
    bob: Session,
}

fn establish_with(rng: &mut StdRng, one_time: bool) -> Setup {
    let alice_id = DmIdentity::generate(rng);
    let bob_id = DmIdentity::generate(rng);
    let mut store = PrekeyStore::new();
    store.rotate_signed_prekey(rng, &bob_id).unwrap();
    let otks = store.generate_one_time_prekeys(rng, 2).unwrap();
    let bundle = store.bundle(&bob_id, one_time.then(|| otks[0].0)).unwrap();
    let mut alice = Session::initiate(rng, &alice_id, &bundle).unwrap();
    let first = alice.encrypt(rng, b"hello bob").unwrap();
    assert!(matches!(first, DmMessage::Initial { .. }));
    let (bob, pt) = Session::accept(&mut store, &bob_id, &first).unwrap();
    assert_eq!(&pt[..], b"hello bob");
    assert_eq!(bob.remote_identity(), &alice_id.public());
    assert_eq!(alice.remote_identity(), &bob_id.public());
    Setup {
        bob_id,
        store,
        alice,
        bob,
    }
}

fn establish() -> (Session, Session, StdRng) {
    let mut rng = StdRng::from_entropy();
    let s = establish_with(&mut rng, true);
    (s.alice, s.bob, rng)
}

fn wire(m: &DmMessage) -> DmMessage {
    DmMessage::from_bytes(&m.to_bytes()).unwrap()
}

/// Every 32-byte secret in a session, read from its serialized state.
fn secrets_of(s: &Session) -> Vec<[u8; 32]> {
    let mut out = vec![*s.dhs.to_bytes(), *s.rk.expose()];
    out.extend(s.cks.iter().map(|k| *k.expose()));
    out.extend(s.ckr.iter().map(|k| *k.expose()));
    out.extend(s.skipped.map.values().map(|k| *k.expose()));
    out
}

/// RFC 4231 test case 1 pins the padded-block HMAC keying used by `KDF_CK`.
#[test]
fn hmac_block_keying_matches_rfc4231() {
    let mut mac = hmac_sha256(&[0x0b; 20]);
    mac.update(b"Hi There");
    assert_eq!(
        hex::encode(mac.finalize().into_bytes()),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    );
}

/// `KDF_CK` and `KDF_RK` are the functions the module docs name (checked against direct
/// HMAC / HKDF calls), and their outputs are distinct.
#[test]
fn kdfs_match_their_definitions() {
    let ck = Secret32::from_bytes([7; 32]);
    let (mk, next) = kdf_ck(&ck);
    for (constant, out) in [(1u8, &mk), (2u8, &next)] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&[7; 32]).unwrap();
        m.update(&[constant]);
        assert_eq!(&m.finalize().into_bytes()[..], out.expose());
    }
    assert_ne!(mk.expose(), next.expose());
    let rk = Secret32::from_bytes([1; 32]);
    let dh = Secret32::from_bytes([2; 32]);
    let (rk2, ck2) = kdf_rk(&rk, &dh);
    let okm: [u8; 64] = hkdf_sha256(Some(&[1; 32]), &[2; 32], b"SecureComm/dm/root-chain v1");
    assert_eq!(rk2.expose(), &okm[..32]);
    assert_eq!(ck2.expose(), &okm[32..]);
}

/// The Edwards-form X25519 equals the RFC 7748 ladder on curve points and rejects small-order
/// and twist inputs.
#[test]
fn ratchet_dh_equals_x25519() {
    let a = DhSecret::from_bytes(
        hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap()
            .try_into()
            .unwrap(),
    );
    let b_pub = DhPublic(
        hex::decode("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
            .unwrap()
            .try_into()
            .unwrap(),
    );
    assert_eq!(
        hex::encode(ratchet_dh(&a, &b_pub).unwrap().expose()),
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    );
    let mut rng = StdRng::from_entropy();
    for _ in 0..200 {
        let x = DhSecret::generate(&mut rng);
        let y = DhSecret::generate(&mut rng);
        assert_eq!(
            ratchet_dh(&x, &y.public()).unwrap().expose(),
            x.diffie_hellman(&y.public()).unwrap().expose()
        );
    }
    // Small-order points: u = 0 and u = 1.
    let mut one = [0u8; 32];
    one[0] = 1;
    for u in [[0u8; 32], one] {
        assert!(ratchet_dh(&a, &DhPublic(u)).is_err());
    }
    // u = 2 is on the twist, not the curve.
    let mut two = [0u8; 32];
    two[0] = 2;
    assert_eq!(
        ratchet_dh(&a, &DhPublic(two)).unwrap_err(),
        DmError::InvalidRatchetKey
    );
}

/// The hand-rolled HKDF-Expand equals the `hkdf` crate's.
#[test]
fn message_key_expansion_is_hkdf_expand() {
    let mk = Secret32::from_bytes([9; 32]);
    let (_, okm) = aead(&mk);
    let hk = hkdf::Hkdf::<Sha256>::from_prk(&[9; 32]).unwrap();
    let mut want = [0u8; 44];
    hk.expand(b"SecureComm/dm/mk v1", &mut want).unwrap();
    assert_eq!(*okm, want);
}

#[test]
fn handshake_and_conversation_with_and_without_one_time_prekey() {
    let mut rng = StdRng::from_entropy();
    for one_time in [false, true] {
        let mut s = establish_with(&mut rng, one_time);
        // Alice keeps sending initial messages until she hears back.
        let m = s.alice.encrypt(&mut rng, b"second").unwrap();
        assert!(matches!(m, DmMessage::Initial { .. }));
        assert_eq!(&s.bob.decrypt(&wire(&m)).unwrap()[..], b"second");
        let r = s.bob.encrypt(&mut rng, b"hi alice").unwrap();
        assert!(matches!(r, DmMessage::Normal(_)));
        assert!(!s.alice.is_established());
        assert_eq!(&s.alice.decrypt(&wire(&r)).unwrap()[..], b"hi alice");
        assert!(s.alice.is_established());
        let m = s.alice.encrypt(&mut rng, b"third").unwrap();
        assert!(matches!(m, DmMessage::Normal(_)));
        assert_eq!(&s.bob.decrypt(&wire(&m)).unwrap()[..], b"third");
        // Bob's session is bound to Alice's identity: Mallory cannot send on it.
        assert_eq!(s.store.one_time_count(), if one_time { 1 } else { 2 });
        let _ = &s.bob_id;
    }
}

#[test]
fn initial_message_replay_is_rejected() {
    let mut rng = StdRng::from_entropy();
    for one_time in [false, true] {
        let alice_id = DmIdentity::generate(&mut rng);
        let bob_id = DmIdentity::generate(&mut rng);
        let mut store = PrekeyStore::new();
        store.rotate_signed_prekey(&mut rng, &bob_id).unwrap();
        let otk = store.generate_one_time_prekeys(&mut rng, 1).unwrap()[0].0;
        let bundle = store.bundle(&bob_id, one_time.then_some(otk)).unwrap();
        let mut alice = Session::initiate(&mut rng, &alice_id, &bundle).unwrap();
        let first = alice.encrypt(&mut rng, b"once").unwrap();
        let (mut bob, _) = Session::accept(&mut store, &bob_id, &first).unwrap();
        let again = Session::accept(&mut store, &bob_id, &first).unwrap_err();
        if one_time {
            assert_eq!(again, DmError::UnknownOneTimePrekey(otk));
        } else {
            assert_eq!(again, DmError::ReplayedInitial);
        }
        // Replayed into the existing session, it is a duplicate.
        assert_eq!(
            bob.decrypt(&first).unwrap_err(),
            DmError::DuplicateOrExpired { n: 0 }
        );
        assert_eq!(
            Session::accept(
                &mut store,
                &bob_id,
                &DmMessage::Normal(first.ratchet().clone())
            )
            .unwrap_err(),
            DmError::NotInitial
        );
    }
}

#[test]
fn forged_initial_message_does_not_burn_the_one_time_prekey() {
    let mut rng = StdRng::from_entropy();
    let alice_id = DmIdentity::generate(&mut rng);
    let bob_id = DmIdentity::generate(&mut rng);
    let mallory_id = DmIdentity::generate(&mut rng);
    let mut store = PrekeyStore::new();
    store.rotate_signed_prekey(&mut rng, &bob_id).unwrap();
    let otk = store.generate_one_time_prekeys(&mut rng, 1).unwrap()[0].0;
    let bundle = store.bundle(&bob_id, Some(otk)).unwrap();
    let mut alice = Session::initiate(&mut rng, &alice_id, &bundle).unwrap();
    let first = alice.encrypt(&mut rng, b"real").unwrap();
    // Mallory claims Alice's signing key with her own DH identity: different SK, rejected.
    let DmMessage::Initial { x3dh, message } = first.clone() else {
        panic!()
    };
    let mut forged_header = x3dh;
    forged_header.initiator.dh = mallory_id.public().dh;
    let forged = DmMessage::Initial {
        x3dh: forged_header,
        message,
    };
    assert_eq!(
        Session::accept(&mut store, &bob_id, &forged).unwrap_err(),
        DmError::AuthenticationFailed
    );
    assert_eq!(store.one_time_count(), 1);
    let (_, pt) = Session::accept(&mut store, &bob_id, &first).unwrap();
    assert_eq!(&pt[..], b"real");
    assert_eq!(store.one_time_count(), 0);
}

/// Every single-bit flip of an encoded initial message, a normal message and an out-of-order
/// message is rejected, and the receiver's state (and prekey store) is unchanged afterwards.
#[test]
fn every_bit_flip_is_rejected_and_state_survives() {
    let mut rng = StdRng::from_entropy();
    let alice_id = DmIdentity::generate(&mut rng);
    let bob_id = DmIdentity::generate(&mut rng);
    let mut store = PrekeyStore::new();
    store.rotate_signed_prekey(&mut rng, &bob_id).unwrap();
    let otk = store.generate_one_time_prekeys(&mut rng, 1).unwrap()[0].0;
    let bundle = store.bundle(&bob_id, Some(otk)).unwrap();
    let mut alice = Session::initiate(&mut rng, &alice_id, &bundle).unwrap();

    let first = alice
        .encrypt(&mut rng, b"initial message")
        .unwrap()
        .to_bytes();
    let store_before = store.to_bytes();
    for bit in 0..first.len() * 8 {
        let mut b = first.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        if let Ok(m) = DmMessage::from_bytes(&b) {
            assert!(
                Session::accept(&mut store, &bob_id, &m).is_err(),
                "bit {bit}"
            );
        }
        assert_eq!(*store.to_bytes(), *store_before);
    }
    let (mut bob, _) =
        Session::accept(&mut store, &bob_id, &DmMessage::from_bytes(&first).unwrap()).unwrap();

    let reply = bob.encrypt(&mut rng, b"reply").unwrap();
    alice.decrypt(&reply).unwrap();
    let skipped = alice.encrypt(&mut rng, b"arrives late").unwrap().to_bytes();
    let normal = alice
        .encrypt(&mut rng, b"normal message")
        .unwrap()
        .to_bytes();
    for msg in [normal, skipped] {
        let before = bob.to_bytes();
        for bit in 0..msg.len() * 8 {
            let mut b = msg.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            if let Ok(m) = DmMessage::from_bytes(&b) {
                assert!(bob.decrypt(&m).is_err(), "bit {bit}");
            }
            assert_eq!(*bob.to_bytes(), *before, "state changed by bit {bit}");
        }
        bob.decrypt(&DmMessage::from_bytes(&msg).unwrap()).unwrap();
    }
    // Truncations are rejected too.
    let m = alice.encrypt(&mut rng, b"cut").unwrap().to_bytes();
    for cut in 0..m.len() {
        assert!(DmMessage::from_bytes(&m[..cut]).is_err());
    }
    bob.decrypt(&DmMessage::from_bytes(&m).unwrap()).unwrap();
}

#[test]
fn replays_are_rejected() {
    let (mut alice, mut bob, mut rng) = establish();
    let r = bob.encrypt(&mut rng, b"r").unwrap();
    alice.decrypt(&r).unwrap();
    let m1 = alice.encrypt(&mut rng, b"1").unwrap();
    let m2 = alice.encrypt(&mut rng, b"2").unwrap();
    // In order, then replayed.
    bob.decrypt(&m2).unwrap();
    assert_eq!(
        bob.decrypt(&m2).unwrap_err(),
        DmError::DuplicateOrExpired { n: 1 }
    );
    // Out of order (from the skipped store), then replayed.
    bob.decrypt(&m1).unwrap();
    assert_eq!(
        bob.decrypt(&m1).unwrap_err(),
        DmError::DuplicateOrExpired { n: 0 }
    );
    // On an old chain after a DH ratchet step.
    let r2 = bob.encrypt(&mut rng, b"r2").unwrap();
    alice.decrypt(&r2).unwrap();
    let m3 = alice.encrypt(&mut rng, b"3").unwrap();
    bob.decrypt(&m3).unwrap();
    assert_eq!(
        bob.decrypt(&m2).unwrap_err(),
        DmError::DuplicateOrExpired { n: 1 }
    );
    assert_eq!(
        alice.decrypt(&r).unwrap_err(),
        DmError::DuplicateOrExpired { n: 0 }
    );
}

#[test]
fn max_skip_is_enforced_without_corrupting_state() {
    let (mut alice, mut bob, mut rng) = establish();
    // Bob has decrypted n = 0. Message n = MAX_SKIP + 2 would skip MAX_SKIP + 1 keys.
    let msgs: Vec<_> = (1..=MAX_SKIP + 2)
        .map(|i| alice.encrypt(&mut rng, &i.to_be_bytes()).unwrap())
        .collect();
    let before = bob.to_bytes();
    let last = msgs.last().unwrap();
    assert_eq!(
        bob.decrypt(last).unwrap_err(),
        DmError::TooManySkipped {
            max: MAX_SKIP,
            got: u64::from(MAX_SKIP) + 1
        }
    );
    assert_eq!(*bob.to_bytes(), *before);
    // Exactly MAX_SKIP is allowed; then the skipped ones arrive late.
    bob.decrypt(&msgs[msgs.len() - 2]).unwrap();
    assert_eq!(bob.skipped.map.len(), MAX_SKIP as usize);
    bob.decrypt(last).unwrap();
    assert_eq!(&bob.decrypt(&msgs[0]).unwrap()[..], &1u32.to_be_bytes());
    // PN is bounded the same way when a chain ends.
    let (mut alice, mut bob, mut rng) = establish();
    for _ in 0..=MAX_SKIP + 1 {
        alice.encrypt(&mut rng, b"lost").unwrap();
    }
    let r = bob.encrypt(&mut rng, b"r").unwrap();
    alice.decrypt(&r).unwrap();
    let next_chain = alice.encrypt(&mut rng, b"new chain").unwrap();
    assert!(matches!(
        bob.decrypt(&next_chain),
        Err(DmError::TooManySkipped { .. })
    ));
}

#[test]
fn skipped_key_store_is_bounded_oldest_evicted() {
    let (mut alice, mut bob, mut rng) = establish();
    let msgs: Vec<_> = (1..=3 * MAX_SKIP + 3)
        .map(|_| alice.encrypt(&mut rng, b"x").unwrap())
        .collect();
    // Jumps of exactly MAX_SKIP: n = 1001, 2002, 3003.
    for k in 1..=3 {
        bob.decrypt(&msgs[(k * (MAX_SKIP + 1)) as usize - 1])
            .unwrap();
    }
    assert_eq!(bob.skipped.map.len(), MAX_SKIPPED_KEYS);
    assert_eq!(bob.skipped.order.len(), MAX_SKIPPED_KEYS);
    assert_eq!(
        bob.decrypt(&msgs[0]).unwrap_err(),
        DmError::DuplicateOrExpired { n: 1 }
    );
    bob.decrypt(&msgs[msgs.len() - 2]).unwrap();
    assert_eq!(bob.skipped.map.len(), MAX_SKIPPED_KEYS - 1);
}

/// A state captured after message k cannot decrypt any earlier message, in the same chain or
/// in earlier chains; it can decrypt the messages after k (so the capture is a real state).
#[test]
fn forward_secrecy() {
    let (mut alice, mut bob, mut rng) = establish();
    let mut sent = Vec::new();
    for round in 0..4 {
        for i in 0..5 {
            let m = alice.encrypt(&mut rng, &[round, i]).unwrap();
            bob.decrypt(&m).unwrap();
            sent.push(m);
        }
        let r = bob.encrypt(&mut rng, &[round]).unwrap();
        alice.decrypt(&r).unwrap();
    }
    let captured = bob.to_bytes();
    let later = alice.encrypt(&mut rng, b"later").unwrap();
    let mut thief = Session::from_bytes(&captured).unwrap();
    for m in &sent {
        assert!(thief.decrypt(m).is_err());
    }
    assert_eq!(&thief.decrypt(&later).unwrap()[..], b"later");
    // Also in the middle of a chain: capture after message 2 of 5.
    let msgs: Vec<_> = (0..5u8)
        .map(|i| alice.encrypt(&mut rng, &[i]).unwrap())
        .collect();
    for m in &msgs[..3] {
        bob.decrypt(m).unwrap();
    }
    let mut thief = Session::from_bytes(&bob.to_bytes()).unwrap();
    for m in &msgs[..3] {
        assert!(thief.decrypt(m).is_err());
    }
    for m in &msgs[3..] {
        thief.decrypt(m).unwrap();
    }
}

/// An attacker holding a leaked state keeps decrypting until one DH round trip completes after
/// the leak (both parties sent), then stops, for either party's leak.
#[test]
fn post_compromise_security() {
    for alice_leaks in [true, false] {
        let (mut alice, mut bob, mut rng) = establish();
        for i in 0..3u8 {
            let r = bob.encrypt(&mut rng, &[i]).unwrap();
            alice.decrypt(&r).unwrap();
            let m = alice.encrypt(&mut rng, &[i]).unwrap();
            bob.decrypt(&m).unwrap();
        }
        let (victim, peer) = if alice_leaks {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        let mut attacker = Session::from_bytes(&victim.to_bytes()).unwrap();
        // The peer sends: the leaked state still reads it (the leak is real).
        let p1 = peer.encrypt(&mut rng, b"p1").unwrap();
        assert_eq!(&attacker.decrypt(&p1).unwrap()[..], b"p1");
        victim.decrypt(&p1).unwrap();
        // The victim replies with a fresh ratchet key, the peer answers: healed.
        let v1 = victim.encrypt(&mut rng, b"v1").unwrap();
        peer.decrypt(&v1).unwrap();
        for i in 0..3u8 {
            let p = peer.encrypt(&mut rng, &[i]).unwrap();
            assert!(attacker.decrypt(&p).is_err());
            victim.decrypt(&p).unwrap();
        }
    }
}

#[test]
fn serialization_round_trip_resumes_the_conversation() {
    let (mut alice, mut bob, mut rng) = establish();
    let m1 = alice.encrypt(&mut rng, b"1").unwrap();
    let m2 = alice.encrypt(&mut rng, b"2").unwrap();
    bob.decrypt(&m2).unwrap(); // m1's key is now skipped.
    let pending = alice.to_bytes();
    let restored = Session::from_bytes(&pending).unwrap();
    assert_eq!(*restored.to_bytes(), *pending);
    assert!(!restored.is_established());
    let bytes = bob.to_bytes();
    let mut bob = Session::from_bytes(&bytes).unwrap();
    assert_eq!(*bob.to_bytes(), *bytes);
    assert_eq!(&bob.decrypt(&m1).unwrap()[..], b"1");
    let r = bob.encrypt(&mut rng, b"r").unwrap();
    let mut alice = Session::from_bytes(&alice.to_bytes()).unwrap();
    alice.decrypt(&r).unwrap();
    let m3 = alice.encrypt(&mut rng, b"3").unwrap();
    assert_eq!(&bob.decrypt(&m3).unwrap()[..], b"3");
    // Strict decoding.
    let bytes = bob.to_bytes();
    let mut long = bytes.to_vec();
    long.push(0);
    assert!(Session::from_bytes(&long).is_err());
    for cut in 0..bytes.len() {
        assert!(Session::from_bytes(&bytes[..cut]).is_err());
    }
    let mut v = bytes.to_vec();
    v[0] = 2;
    assert!(matches!(
        Session::from_bytes(&v),
        Err(DecodeError::UnknownVersion { .. })
    ));
}

#[test]
fn plaintext_bound() {
    let (mut alice, _, mut rng) = establish();
    assert!(matches!(
        alice.encrypt(&mut rng, &vec![0; MAX_PLAINTEXT + 1]),
        Err(DmError::PlaintextTooLong { .. })
    ));
    let m = alice.encrypt(&mut rng, &vec![0; MAX_PLAINTEXT]).unwrap();
    DmMessage::from_bytes(&m.to_bytes()).unwrap();
}

#[test]
fn debug_shows_no_secret_bytes() {
    let (mut alice, mut bob, mut rng) = establish();
    let r = bob.encrypt(&mut rng, b"r").unwrap();
    alice.decrypt(&r).unwrap();
    let _lost = alice.encrypt(&mut rng, b"lost").unwrap();
    let m = alice.encrypt(&mut rng, b"m").unwrap();
    bob.decrypt(&m).unwrap(); // leaves a skipped key
    for s in [&alice, &bob] {
        let d = format!("{s:?}");
        assert!(d.contains("Session"));
        let secrets = secrets_of(s);
        assert!(secrets.len() >= 4);
        for secret in secrets {
            assert!(!d.contains(&hex::encode(&secret[..4])), "{d}");
            assert!(!d.contains(&format!("{:?}", &secret[..4])), "{d}");
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Alice (true) or Bob (false) sends a message.
    Send(bool),
    /// Deliver one pending message to Alice (true) or Bob (false), chosen by index.
    Deliver(bool, usize),
    /// Serialize and restore Alice (true) or Bob (false).
    Restore(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<bool>().prop_map(Op::Send),
        3 => (any::<bool>(), any::<usize>()).prop_map(|(a, i)| Op::Deliver(a, i)),
        1 => any::<bool>().prop_map(Op::Restore),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Long conversations with random interleaving, out-of-order delivery, and state
    /// save/restore: every message decrypts exactly once to what was sent.
    #[test]
    fn random_conversations_deliver_everything(seed: u64, ops in proptest::collection::vec(op(), 1..120)) {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = establish_with(&mut rng, seed % 2 == 0);
        let (mut alice, mut bob) = (s.alice, s.bob);
        // Messages in flight to Alice and to Bob.
        let mut to_alice: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut to_bob: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut counter = 0u32;
        for op in ops {
            match op {
                Op::Send(from_alice) => {
                    counter += 1;
                    let len = rng.gen_range(0..64);
                    let mut pt = counter.to_be_bytes().to_vec();
                    pt.extend((0..len).map(|_| rng.r#gen::<u8>()));
                    let (sender, queue) = if from_alice { (&mut alice, &mut to_bob) } else { (&mut bob, &mut to_alice) };
                    let m = sender.encrypt(&mut rng, &pt).unwrap();
                    queue.push((m.to_bytes(), pt));
                }
                Op::Deliver(to_a, i) => {
                    let (receiver, queue) = if to_a { (&mut alice, &mut to_alice) } else { (&mut bob, &mut to_bob) };
                    if !queue.is_empty() {
                        let (bytes, pt) = queue.remove(i % queue.len());
                        let m = DmMessage::from_bytes(&bytes).unwrap();
                        prop_assert_eq!(&receiver.decrypt(&m).unwrap()[..], &pt[..]);
                        prop_assert!(receiver.decrypt(&m).is_err());
                    }
                }
                Op::Restore(a) => {
                    let s = if a { &mut alice } else { &mut bob };
                    let bytes = s.to_bytes();
                    *s = Session::from_bytes(&bytes).unwrap();
                    prop_assert_eq!(&*s.to_bytes(), &*bytes);
                }
            }
        }
        // Drain everything left, in random order.
        while !to_alice.is_empty() || !to_bob.is_empty() {
            let to_a = to_bob.is_empty() || (!to_alice.is_empty() && rng.r#gen());
            let (receiver, queue) = if to_a { (&mut alice, &mut to_alice) } else { (&mut bob, &mut to_bob) };
            let i = rng.gen_range(0..queue.len());
            let (bytes, pt) = queue.remove(i);
            let m = DmMessage::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&receiver.decrypt(&m).unwrap()[..], &pt[..]);
        }
    }

    #[test]
    fn dm_message_codec_round_trips(
        initial: bool,
        dh: [u8; 32],
        pn: u32,
        n: u32,
        ct in proptest::collection::vec(any::<u8>(), 16..200),
        seed: [u8; 32],
        spk_id: u32,
        otk: Option<u32>,
    ) {
        let id = DmIdentity::new(
            crate::keys::DeviceSigningKey::from_seed(&seed),
            DhSecret::from_bytes(seed),
        );
        let message = RatchetMessage { header: RatchetHeader { dh: DhPublic(dh), pn, n }, ciphertext: ct };
        let m = if initial {
            DmMessage::Initial {
                x3dh: Box::new(InitialHeader { initiator: id.public(), ephemeral: DhPublic(dh), signed_prekey_id: spk_id, one_time_prekey_id: otk }),
                message,
            }
        } else {
            DmMessage::Normal(message)
        };
        let bytes = m.to_bytes();
        prop_assert_eq!(DmMessage::from_bytes(&bytes).unwrap(), m);
        let mut long = bytes.clone();
        long.push(0);
        prop_assert!(DmMessage::from_bytes(&long).is_err());
        prop_assert!(DmMessage::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut v = bytes.clone();
        v[1] = 2;
        prop_assert!(DmMessage::from_bytes(&v).is_err());
    }

    #[test]
    fn session_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Session::from_bytes(&bytes);
        let _ = DmMessage::from_bytes(&bytes);
    }
}
