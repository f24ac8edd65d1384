//! The ZIP-215 verifier of version-2 envelopes (`securecomm_crdt::verify`): single and batch
//! verification agree on every crafted edge case (torsion in `R` or in the key, small-order `R`,
//! non-canonical encodings, non-canonical `S`, points off the curve), agree with the reference
//! ZIP-215 implementation (`ed25519-zebra`), and a forged signature is found inside a batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT as B, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use securecomm_crdt::verify::{
    BATCH_CHUNK, SigItem, verify_batch, verify_each, verify_each_threads,
};
use securecomm_noise::keys::{DevicePublicKey, DeviceSigningKey, SigLabel, Signature};
use sha2::{Digest, Sha512};

const L: SigLabel = SigLabel("SecureComm/test/zip215 v1");

/// One crafted case: key bytes, signature, payload (signed as `label ‖ 0 ‖ payload`).
#[derive(Clone)]
struct Case {
    name: &'static str,
    key: [u8; 32],
    sig: [u8; 64],
    payload: Vec<u8>,
}

impl Case {
    fn message(&self) -> Vec<u8> {
        let mut m = L.0.as_bytes().to_vec();
        m.push(0);
        m.extend_from_slice(&self.payload);
        m
    }
    fn item(&self) -> SigItem {
        let k = DevicePublicKey::from_bytes(&self.key).unwrap();
        SigItem::device(&k, L, &[&self.payload], &Signature(self.sig))
    }
    fn zebra(&self) -> bool {
        let vk = ed25519_zebra::VerificationKey::try_from(self.key).unwrap();
        vk.verify(
            &ed25519_zebra::Signature::from_bytes(&self.sig),
            &self.message(),
        )
        .is_ok()
    }
    fn dalek_strict(&self) -> bool {
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&self.key).unwrap();
        vk.verify_strict(
            &self.message(),
            &ed25519_dalek::Signature::from_bytes(&self.sig),
        )
        .is_ok()
    }
}

fn scalar(seed: u8) -> Scalar {
    Scalar::from_bytes_mod_order_wide(&Sha512::digest([seed; 7]).into())
}

#[allow(clippy::too_many_arguments)]
/// Signs `payload` with secret scalar `a` for key point `aB + key_torsion`, nonce point
/// `rB + r_torsion` encoded as `r_bytes` (or canonically), and `S` adjusted by `s_delta`.
fn craft(
    name: &'static str,
    a: Scalar,
    key_torsion: EdwardsPoint,
    r: Scalar,
    r_torsion: EdwardsPoint,
    r_bytes: Option<[u8; 32]>,
    s_delta: Scalar,
    payload: &[u8],
) -> Case {
    let key = (a * B + key_torsion).compress().to_bytes();
    let r_bytes = r_bytes.unwrap_or_else(|| (r * B + r_torsion).compress().to_bytes());
    let mut c = Case {
        name,
        key,
        sig: [0; 64],
        payload: payload.to_vec(),
    };
    let k = Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update(r_bytes)
            .chain_update(key)
            .chain_update(c.message())
            .finalize()
            .into(),
    );
    let s = r + k * a + s_delta;
    c.sig[..32].copy_from_slice(&r_bytes);
    c.sig[32..].copy_from_slice(s.as_bytes());
    c
}

fn cases() -> Vec<Case> {
    let id = EdwardsPoint::identity();
    let zero = Scalar::ZERO;
    let (a, r) = (scalar(1), scalar(2));
    // The identity with a non-canonical y (p + 1) and with the sign bit set on x = 0.
    let mut y_p_plus_1 = [0xffu8; 32];
    y_p_plus_1[0] = 0xee;
    y_p_plus_1[31] = 0x7f;
    let mut minus_zero = [0u8; 32];
    minus_zero[0] = 1;
    minus_zero[31] = 0x80;
    let mut v = vec![
        craft("honest", a, id, r, id, None, zero, b"m1"),
        craft(
            "torsion R (order 8)",
            a,
            id,
            r,
            EIGHT_TORSION[1],
            None,
            zero,
            b"m2",
        ),
        craft(
            "torsion R (order 2)",
            a,
            id,
            r,
            EIGHT_TORSION[4],
            None,
            zero,
            b"m3",
        ),
        craft(
            "mixed-order key",
            a,
            EIGHT_TORSION[3],
            r,
            id,
            None,
            zero,
            b"m4",
        ),
        craft(
            "mixed key, torsion R",
            a,
            EIGHT_TORSION[2],
            r,
            EIGHT_TORSION[5],
            None,
            zero,
            b"m5",
        ),
        craft(
            "small-order R",
            a,
            id,
            zero,
            EIGHT_TORSION[2],
            None,
            zero,
            b"m6",
        ),
        craft("R = identity", a, id, zero, id, None, zero, b"m7"),
        craft(
            "R = identity, y = p+1",
            a,
            id,
            zero,
            id,
            Some(y_p_plus_1),
            zero,
            b"m8",
        ),
        craft(
            "R = identity, x = -0",
            a,
            id,
            zero,
            id,
            Some(minus_zero),
            zero,
            b"m9",
        ),
        craft("S off by one", a, id, r, id, None, Scalar::ONE, b"m10"),
        craft(
            "torsion R, S off by one",
            a,
            id,
            r,
            EIGHT_TORSION[1],
            None,
            Scalar::ONE,
            b"m11",
        ),
    ];
    // S + l: the same S non-canonically encoded.
    let mut noncanon_s = craft("S + l", a, id, r, id, None, zero, b"m12");
    let l: [u8; 32] =
        hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
            .unwrap()
            .try_into()
            .unwrap();
    let mut carry = 0u16;
    for (i, li) in l.iter().enumerate() {
        let x = u16::from(noncanon_s.sig[32 + i]) + u16::from(*li) + carry;
        noncanon_s.sig[32 + i] = x as u8;
        carry = x >> 8;
    }
    v.push(noncanon_s);
    // R bytes that are not a point.
    let mut off_curve = craft("R off the curve", a, id, r, id, None, zero, b"m13");
    let bad_r = (2u8..)
        .map(|y| {
            let mut b = [0u8; 32];
            b[0] = y;
            b
        })
        .find(|b| CompressedEdwardsY(*b).decompress().is_none())
        .unwrap();
    off_curve.sig[..32].copy_from_slice(&bad_r);
    v.push(off_curve);
    // A wrong message.
    let mut wrong = craft("wrong message", a, id, r, id, None, zero, b"m14");
    wrong.payload = b"m14'".to_vec();
    v.push(wrong);
    v
}

#[test]
fn single_verification_matches_the_reference_zip215_on_every_crafted_case() {
    let expect_valid = [
        "honest",
        "torsion R (order 8)",
        "torsion R (order 2)",
        "mixed-order key",
        "mixed key, torsion R",
        "small-order R",
        "R = identity",
        "R = identity, y = p+1",
        "R = identity, x = -0",
    ];
    for c in cases() {
        let ours = c.item().verify();
        assert_eq!(ours, c.zebra(), "{}: disagrees with ed25519-zebra", c.name);
        assert_eq!(ours, expect_valid.contains(&c.name), "{}", c.name);
    }
}

#[test]
fn crafted_torsion_cases_are_exactly_where_strict_verification_differs() {
    // Why version 2 carries its own version byte: cofactorless strict verification refuses
    // these, ZIP-215 accepts them. Honest signatures verify under both.
    for c in cases() {
        let (ours, strict) = (c.item().verify(), c.dalek_strict());
        if c.name == "honest" {
            assert!(ours && strict);
        }
        if strict {
            assert!(ours, "{}: strict accepts but ZIP-215 refuses", c.name);
        }
    }
    let differ: Vec<&str> = cases()
        .iter()
        .filter(|c| c.item().verify() != c.dalek_strict())
        .map(|c| c.name)
        .collect();
    assert!(differ.contains(&"torsion R (order 8)") && differ.contains(&"small-order R"));
}

#[test]
fn batch_and_single_agree_on_every_subset_of_crafted_cases() {
    let cs = cases();
    let items: Vec<SigItem> = cs.iter().map(Case::item).collect();
    let single: Vec<bool> = items.iter().map(SigItem::verify).collect();
    // Every subset given by a bit mask (2^14 subsets is too many; use masks over windows).
    for start in 0..items.len() {
        for len in 1..=(items.len() - start).min(6) {
            let sub = &items[start..start + len];
            let all_ok = single[start..start + len].iter().all(|b| *b);
            assert_eq!(verify_batch(sub), all_ok, "batch {start}+{len}");
            assert_eq!(verify_each(sub), single[start..start + len].to_vec());
        }
    }
    // The valid ones together, also against the reference batch verifier.
    let valid: Vec<SigItem> = items
        .iter()
        .zip(&single)
        .filter(|(_, ok)| **ok)
        .map(|(i, _)| i.clone())
        .collect();
    assert!(valid.len() >= 9 && verify_batch(&valid));
    let mut zb = ed25519_zebra::batch::Verifier::new();
    for c in cs.iter().filter(|c| c.zebra()) {
        let m = c.message();
        zb.queue((
            ed25519_zebra::VerificationKeyBytes::from(c.key),
            ed25519_zebra::Signature::from_bytes(&c.sig),
            &m[..],
        ));
    }
    assert!(zb.verify(rand::thread_rng()).is_ok());
}

#[test]
fn errors_that_cancel_in_an_unweighted_sum_do_not_pass_a_batch() {
    // Two invalid signatures whose errors are +B and -B: a plain sum of the two equations
    // would cancel; the batch's coefficients do not.
    let id = EdwardsPoint::identity();
    let plus = craft("+1", scalar(3), id, scalar(4), id, None, Scalar::ONE, b"x");
    let minus = craft("-1", scalar(5), id, scalar(6), id, None, -Scalar::ONE, b"y");
    let items = [plus.item(), minus.item()];
    assert!(!items[0].verify() && !items[1].verify());
    assert!(!verify_batch(&items));
    assert_eq!(verify_each(&items), vec![false, false]);
}

#[test]
fn a_forged_signature_is_found_inside_large_batches() {
    let mut rng = rand::thread_rng();
    let keys: Vec<DeviceSigningKey> = (0..40)
        .map(|_| DeviceSigningKey::generate(&mut rng))
        .collect();
    let n = BATCH_CHUNK + 37;
    let mut items = Vec::new();
    let mut msgs = Vec::new();
    for i in 0..n {
        let k = &keys[i % keys.len()];
        let m = format!("change {i}").into_bytes();
        let mut sig = k.sign(L, &m);
        if i == 7 || i == BATCH_CHUNK + 5 {
            sig.0[40] ^= 1; // forged
        }
        if i == 100 {
            // signed by another key than the one it claims
            sig = keys[(i + 1) % keys.len()].sign(L, &m);
        }
        items.push(SigItem::device(&k.public(), L, &[&m], &sig));
        msgs.push(m);
    }
    let res = verify_each(&items);
    for (i, ok) in res.iter().enumerate() {
        assert_eq!(
            *ok,
            !(i == 7 || i == 100 || i == BATCH_CHUNK + 5),
            "item {i}"
        );
    }
    // Spread over threads: the same answer, whatever the count.
    for threads in [0, 1, 2, 3, 64] {
        assert_eq!(
            verify_each_threads(&items, threads),
            res,
            "{threads} threads"
        );
    }
    // Without the forgeries everything passes, in one batch (keys repeat: coalesced terms).
    let good: Vec<SigItem> = items
        .iter()
        .enumerate()
        .filter(|(i, _)| !(*i == 7 || *i == 100 || *i == BATCH_CHUNK + 5))
        .map(|(_, it)| it.clone())
        .collect();
    assert!(verify_batch(&good));
    assert!(verify_each(&good).iter().all(|b| *b));
}

#[test]
fn the_message_parts_are_the_signed_message() {
    let k = DeviceSigningKey::from_seed(&[9; 32]);
    let sig = k.sign(L, b"hello world");
    assert!(SigItem::device(&k.public(), L, &[b"hello ", b"world"], &sig).verify());
    assert!(!SigItem::device(&k.public(), L, &[b"hello world!"], &sig).verify());
    assert!(
        !SigItem::device(
            &k.public(),
            SigLabel("SecureComm/other"),
            &[b"hello world"],
            &sig
        )
        .verify()
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, .. Default::default() })]
    /// What the `crdt_batch_verify` fuzz target checks: valid signatures by a few keys, mutated
    /// at random (bit flips, replaced `R` or `S`, wrong message, wrong key); batch and single
    /// verification agree on every item.
    #[test]
    fn batch_agrees_with_single_on_mutated_items(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..(44 * 24))
    ) {
        let keys: Vec<DeviceSigningKey> =
            (1u8..=4).map(|i| DeviceSigningKey::from_seed(&[i; 32])).collect();
        let mut items = Vec::new();
        for chunk in data.chunks_exact(44) {
            let (head, rest) = chunk.split_at(11);
            let (pos, repl) = rest.split_at(1);
            let key = &keys[usize::from(head[0]) % keys.len()];
            let mode = if head[1] & 0x80 == 0 { 0 } else { head[1] };
            let msg = &head[3..11];
            let mut sig = key.sign(L, msg);
            if mode & 1 != 0 {
                sig.0[usize::from(pos[0]) % 64] ^= head[2] | 1;
            }
            if mode & 2 != 0 {
                sig.0[..32].copy_from_slice(repl);
            }
            if mode & 4 != 0 {
                sig.0[32..].copy_from_slice(repl);
            }
            let signed_msg: &[u8] = if mode & 8 != 0 { &head[2..10] } else { msg };
            let public = if mode & 16 != 0 {
                keys[(usize::from(head[0]) + 1) % keys.len()].public()
            } else {
                key.public()
            };
            items.push(SigItem::device(&public, L, &[signed_msg], &sig));
        }
        let single: Vec<bool> = items.iter().map(SigItem::verify).collect();
        proptest::prop_assert_eq!(verify_each(&items), single.clone());
        proptest::prop_assert_eq!(verify_batch(&items), single.iter().all(|b| *b));
    }
}
