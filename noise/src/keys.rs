//! Key types. Each kind of key is its own Rust type, so a device key can never be passed where
//! a root key is wanted, and an X25519 key never where an Ed25519 key is.
//!
//! * A **user** is an Ed25519 root key ([`RootSigningKey`] / [`RootPublicKey`]).
//! * A **device** has an Ed25519 signing key ([`DeviceSigningKey`] / [`DevicePublicKey`]), which
//!   is also its libp2p identity, and X25519 keys ([`DhSecret`] / [`DhPublic`]) for key agreement.
//!
//! Every signature is made over `label || 0x00 || message`, where `label` is a fixed ASCII
//! string naming what is signed ([`SigLabel`]); a signature made for one purpose therefore never
//! verifies for another. Verification is strict (RFC 8032 §5.1.7 with canonical `S` and
//! rejection of small-order keys and `R`), so signatures are not malleable.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};

/// A signature's purpose. The label is prepended to what is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigLabel(pub &'static str);

impl SigLabel {
    fn message(self, msg: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.0.len() + 1 + msg.len());
        m.extend_from_slice(self.0.as_bytes());
        m.push(0);
        m.extend_from_slice(msg);
        m
    }
}

/// Why a signature or key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// The signature does not verify under the claimed key for this purpose.
    #[error("signature does not verify for {0}")]
    BadSignature(&'static str),
    /// The public key bytes are not a valid, non-degenerate Ed25519 point.
    #[error("invalid Ed25519 public key")]
    InvalidKey,
}

/// A 64-byte Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({}..)", hex_prefix(&self.0))
    }
}

impl Encode for Signature {
    fn encode(&self, w: &mut Writer) {
        w.put(&self.0);
    }
}

impl Decode for Signature {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.array()?))
    }
}

pub(crate) fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

fn verifying_key(bytes: &[u8; 32]) -> Result<VerifyingKey, SignatureError> {
    let vk = VerifyingKey::from_bytes(bytes).map_err(|_| SignatureError::InvalidKey)?;
    if vk.is_weak() {
        return Err(SignatureError::InvalidKey);
    }
    Ok(vk)
}

/// Canonical encodings of the eight points of order dividing 8 (the torsion subgroup E\[8\]).
/// A test decompresses each, checks it is canonical, of small order and distinct, which proves
/// the list complete (E\[8\] has exactly eight points).
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 8] = {
    const fn enc(last: u8, body: [u8; 31]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut i = 0;
        while i < 31 {
            out[i] = body[i];
            i += 1;
        }
        out[31] = last;
        out
    }
    const ORDER8_Y: [u8; 31] = [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03,
    ];
    const ORDER8_NEG_Y: [u8; 31] = [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc,
    ];
    let mut one = [0u8; 31];
    one[0] = 1;
    let mut minus_one = [0xffu8; 31];
    minus_one[0] = 0xec;
    [
        enc(0x00, one),          // identity (0, 1)
        enc(0x7f, minus_one),    // (0, -1), order 2
        enc(0x00, [0u8; 31]),    // (sqrt(-1), 0), order 4
        enc(0x80, [0u8; 31]),    // (-sqrt(-1), 0), order 4
        enc(0x7a, ORDER8_Y),     // order 8
        enc(0xfa, ORDER8_Y),     // order 8
        enc(0x05, ORDER8_NEG_Y), // order 8
        enc(0x85, ORDER8_NEG_Y), // order 8
    ]
};

/// Strict verification, as `ed25519_dalek::VerifyingKey::verify_strict` defines it, without its
/// decompression of `R`.
///
/// `verify_strict` decompresses `R` only to reject small-order `R` (and rejects small-order
/// keys), then compares the recomputed `R` with the signature's bytes exactly as `verify` does.
/// The recomputed `R` is always a canonical encoding, so a signature can pass only if its `R`
/// is canonical; for a canonical `R`, "small order" is "one of the eight encodings above". The
/// acceptance set is therefore identical (a property test checks the two agree, including on
/// crafted small-order `R`), and a verification costs one field inversion less (measured: about
/// 20% of a verify on this machine).
fn verify(
    vk: &VerifyingKey,
    label: SigLabel,
    msg: &[u8],
    sig: &Signature,
) -> Result<(), SignatureError> {
    use ed25519_dalek::Verifier;
    let bad = || SignatureError::BadSignature(label.0);
    let r = sig.0.get(..32).ok_or_else(bad)?;
    // `verify_strict` also rejects small-order keys. Ours never are: the only ways to build a
    // public key type are `from_bytes` (which refuses them, see `verifying_key`) and `public()`
    // of a secret key ([a]B for a clamped `a`, never of small order), so the check is made once,
    // at construction, not on every signature.
    if SMALL_ORDER_ENCODINGS.iter().any(|e| e[..] == *r) {
        return Err(bad());
    }
    let s = ed25519_dalek::Signature::from_bytes(&sig.0);
    vk.verify(&label.message(msg), &s).map_err(|_| bad())
}

/// A device public key with a precomputed table of multiples of `-A`, for a receiver that
/// verifies many signatures from the same device (a guild member's messages).
///
/// Verification computes `R' = [s]B + [k](-A)` and compares its encoding with the signature's
/// `R`, exactly as [`DevicePublicKey::verify`] does (same canonical-`s` check, same rejection of
/// the eight small-order `R` encodings, same cofactorless equation, same labelled message). Only
/// how the point is computed differs: `verify` uses dalek's variable-time double-base
/// multiplication (about 253 doublings), this type two fixed-base radix-16 tables (`[s]B` with
/// dalek's static basepoint table, `[k](-A)` with this key's table; 64 additions each, no
/// doublings). The two compute the same group element, so the verdicts are identical; the tests
/// below compare them on crafted and random inputs.
///
/// Building the table costs about as much as 25 to 30 verifications (256 affine conversions,
/// one field inversion each) and the table takes 30 KiB, so a caller builds it only for keys it
/// verifies often, and bounds how many it keeps (see `dcgka::Group`). Cloning shares the table.
#[derive(Clone)]
pub struct PrecomputedDeviceKey {
    key: DevicePublicKey,
    minus_a: std::sync::Arc<curve25519_dalek::edwards::EdwardsBasepointTable>,
}

impl PrecomputedDeviceKey {
    /// Builds the table for `key` (see the type's docs for the cost).
    pub fn new(key: &DevicePublicKey) -> Self {
        use curve25519_dalek::traits::BasepointTable;
        Self {
            key: *key,
            minus_a: std::sync::Arc::new(curve25519_dalek::edwards::EdwardsBasepointTable::create(
                &-key.to_edwards(),
            )),
        }
    }

    /// The key this table belongs to.
    pub fn key(&self) -> &DevicePublicKey {
        &self.key
    }

    /// Strictly verifies a signature, with the same verdict as [`DevicePublicKey::verify`].
    pub fn verify(
        &self,
        label: SigLabel,
        msg: &[u8],
        sig: &Signature,
    ) -> Result<(), SignatureError> {
        use curve25519_dalek::edwards::EdwardsPoint;
        use curve25519_dalek::scalar::Scalar;
        use curve25519_dalek::traits::BasepointTable;
        use sha2::{Digest, Sha512};
        let bad = || SignatureError::BadSignature(label.0);
        let (r, s) = sig.0.split_first_chunk::<32>().ok_or_else(bad)?;
        let s: &[u8; 32] = s.try_into().map_err(|_| bad())?;
        if SMALL_ORDER_ENCODINGS.iter().any(|e| e == r) {
            return Err(bad());
        }
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(*s)).ok_or_else(bad)?;
        // k = SHA-512(R || A || label || 0x00 || msg), the labelled message of `SigLabel`
        // hashed in place instead of copied.
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r)
                .chain_update(self.key.as_bytes())
                .chain_update(label.0.as_bytes())
                .chain_update([0u8])
                .chain_update(msg)
                .finalize()
                .into(),
        );
        let r_prime = EdwardsPoint::mul_base(&s) + self.minus_a.mul_base(&k);
        if r_prime.compress().as_bytes() == r {
            Ok(())
        } else {
            Err(bad())
        }
    }
}

impl std::fmt::Debug for PrecomputedDeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrecomputedDeviceKey({:?})", self.key)
    }
}

macro_rules! ed25519_pair {
    ($(#[$sdoc:meta])* $secret:ident, $(#[$pdoc:meta])* $public:ident, $what:literal) => {
        $(#[$sdoc])*
        ///
        /// Zeroized on drop; `Debug` shows only the public key.
        #[derive(Clone)]
        pub struct $secret(SigningKey);

        impl $secret {
            /// A fresh key from `rng`.
            pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
                Self(SigningKey::generate(rng))
            }

            /// Restores a key from its 32-byte seed.
            pub fn from_seed(seed: &[u8; 32]) -> Self {
                Self(SigningKey::from_bytes(seed))
            }

            /// The 32-byte seed, for sealed storage only.
            pub fn seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
                zeroize::Zeroizing::new(self.0.to_bytes())
            }

            /// The matching public key.
            pub fn public(&self) -> $public {
                $public(self.0.verifying_key())
            }

            /// Signs `msg` for the purpose named by `label`.
            pub fn sign(&self, label: SigLabel, msg: &[u8]) -> Signature {
                Signature(self.0.sign(&label.message(msg)).to_bytes())
            }
        }

        impl std::fmt::Debug for $secret {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($secret), "(public: {:?})"), self.public())
            }
        }

        impl ZeroizeOnDrop for $secret {}

        $(#[$pdoc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $public(VerifyingKey);

        impl $public {
            /// Parses 32 bytes, rejecting non-canonical and small-order points.
            pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SignatureError> {
                verifying_key(bytes).map(Self)
            }

            /// The 32-byte encoding.
            pub fn to_bytes(&self) -> [u8; 32] {
                self.0.to_bytes()
            }

            /// The 32-byte encoding, borrowed.
            pub fn as_bytes(&self) -> &[u8; 32] {
                self.0.as_bytes()
            }

            /// Strictly verifies a signature made with the matching secret for `label`.
            pub fn verify(&self, label: SigLabel, msg: &[u8], sig: &Signature) -> Result<(), SignatureError> {
                verify(&self.0, label, msg, sig)
            }

            /// The key's (already decompressed) Edwards point, for verifiers that need the
            /// point itself, such as the crdt crate's batch verification.
            pub fn to_edwards(&self) -> curve25519_dalek::edwards::EdwardsPoint {
                self.0.to_edwards()
            }
        }

        impl std::fmt::Debug for $public {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($public), "({}..)"), hex_prefix(self.0.as_bytes()))
            }
        }

        impl PartialOrd for $public {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $public {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.as_bytes().cmp(other.as_bytes())
            }
        }

        impl Encode for $public {
            fn encode(&self, w: &mut Writer) {
                w.put(self.as_bytes());
            }
        }

        impl Decode for $public {
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Self::from_bytes(&r.array()?).map_err(|_| DecodeError::Invalid($what))
            }
        }
    };
}

ed25519_pair!(
    /// A user's Ed25519 root key: the user's identity. It signs device certificates only.
    RootSigningKey,
    /// A user's Ed25519 root public key: what safety numbers are computed over.
    RootPublicKey,
    "root public key"
);

ed25519_pair!(
    /// A device's Ed25519 signing key: its libp2p identity; signs prekeys, messages and changes.
    DeviceSigningKey,
    /// A device's Ed25519 public key (its libp2p PeerId is derived from it).
    DevicePublicKey,
    "device public key"
);

/// An X25519 secret key. Zeroized on drop; `Debug` shows only the public key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DhSecret(x25519_dalek::StaticSecret);

impl DhSecret {
    /// A fresh key from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut b = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill_bytes(b.as_mut());
        Self(x25519_dalek::StaticSecret::from(*b))
    }

    /// Restores a key from its 32 bytes (clamped on use, per RFC 7748).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(x25519_dalek::StaticSecret::from(bytes))
    }

    /// The 32 secret bytes, for sealed storage or a Noise handshake only.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public(&self) -> DhPublic {
        DhPublic(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// X25519 with `their` public key. Fails if the result is all zeros (a small-order input),
    /// which would make the shared secret predictable.
    pub fn diffie_hellman(&self, their: &DhPublic) -> Result<crate::secret::Secret32, DhError> {
        let shared = self
            .0
            .diffie_hellman(&x25519_dalek::PublicKey::from(their.0));
        if !shared.was_contributory() {
            return Err(DhError::NonContributory);
        }
        Ok(crate::secret::Secret32::from_bytes(shared.to_bytes()))
    }
}

impl std::fmt::Debug for DhSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DhSecret(public: {:?})", self.public())
    }
}

/// Why a Diffie-Hellman computation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DhError {
    /// The peer's public key is of small order, so the shared secret would be known to anyone.
    #[error("X25519 result is all zeros: the peer's public key has small order")]
    NonContributory,
}

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DhPublic(pub [u8; 32]);

impl DhPublic {
    /// The 32-byte encoding.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DhPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DhPublic({}..)", hex_prefix(&self.0))
    }
}

impl Encode for DhPublic {
    fn encode(&self, w: &mut Writer) {
        w.put(&self.0);
    }
}

impl Decode for DhPublic {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: SigLabel = SigLabel("SecureComm/test");

    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use ed25519_dalek::Verifier;
    use sha2::{Digest, Sha512};

    /// The table of small-order encodings is complete: eight distinct, canonical points of order
    /// dividing 8 (E[8] has exactly eight).
    #[test]
    fn small_order_table_is_the_whole_torsion_subgroup() {
        let mut seen = std::collections::BTreeSet::new();
        for e in SMALL_ORDER_ENCODINGS {
            let p = CompressedEdwardsY(e).decompress().unwrap();
            assert!(p.is_small_order(), "{}", hex::encode(e));
            assert_eq!(p.compress().0, e, "not canonical");
            seen.insert(e);
        }
        assert_eq!(seen.len(), 8);
    }

    /// `verify_strict`'s verdict, on the same labelled message.
    fn dalek_strict(pk: &[u8; 32], label: SigLabel, msg: &[u8], sig: &Signature) -> bool {
        match VerifyingKey::from_bytes(pk) {
            Ok(vk) => vk
                .verify_strict(
                    &label.message(msg),
                    &ed25519_dalek::Signature::from_bytes(&sig.0),
                )
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Our verdict, with the key built as every public key type builds it (`verifying_key`).
    fn ours(pk: &[u8; 32], label: SigLabel, msg: &[u8], sig: &Signature) -> bool {
        match verifying_key(pk) {
            Ok(vk) => verify(&vk, label, msg, sig).is_ok(),
            Err(_) => false,
        }
    }

    /// A signature by secret scalar `a` with a chosen `R` point and nonce scalar `r` such that
    /// `R = [r]B + torsion` is whatever the caller wants (raw Ed25519 equation, our label).
    fn forge(a: Scalar, pk: [u8; 32], r_point: [u8; 32], r: Scalar, msg: &[u8]) -> Signature {
        let mut h = Sha512::new();
        h.update(r_point);
        h.update(pk);
        h.update(L.message(msg));
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let s = r + k * a;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&r_point);
        out[32..].copy_from_slice(s.as_bytes());
        Signature(out)
    }

    /// Crafted signatures the cofactorless equation accepts but strict verification must refuse
    /// (`R` = identity, of small order), and mixed-order keys both accept: ours agrees with
    /// `verify_strict` on each.
    #[test]
    fn fast_strict_verification_agrees_with_dalek_on_crafted_signatures() {
        let a = Scalar::from(0x1234_5678_9abc_u64);
        let pk = EdwardsPoint::mul_base(&a).compress().0;
        // R = identity, s = k·a: [s]B - [k]A = identity = R, so the plain equation holds.
        let sig = forge(a, pk, SMALL_ORDER_ENCODINGS[0], Scalar::ZERO, b"m");
        let vk = VerifyingKey::from_bytes(&pk).unwrap();
        assert!(
            vk.verify(
                &L.message(b"m"),
                &ed25519_dalek::Signature::from_bytes(&sig.0)
            )
            .is_ok(),
            "the crafted signature must pass the cofactorless equation"
        );
        assert!(!dalek_strict(&pk, L, b"m", &sig));
        assert!(!ours(&pk, L, b"m", &sig));
        // An honest signature with R = [r]B passes both.
        let r = Scalar::from(99u64);
        let sig = forge(a, pk, EdwardsPoint::mul_base(&r).compress().0, r, b"m");
        assert!(dalek_strict(&pk, L, b"m", &sig));
        assert!(ours(&pk, L, b"m", &sig));
        // A key with a torsion component (A = [a]B + T8): both accept when the hash happens to
        // be a multiple of 8, both refuse otherwise.
        let t8 = CompressedEdwardsY(SMALL_ORDER_ENCODINGS[4])
            .decompress()
            .unwrap();
        let mixed = (EdwardsPoint::mul_base(&a) + t8).compress().0;
        let mut agreed = [0usize; 2];
        for i in 0u64..64 {
            let r = Scalar::from(1000 + i);
            let sig = forge(a, mixed, EdwardsPoint::mul_base(&r).compress().0, r, b"x");
            let (d, o) = (
                dalek_strict(&mixed, L, b"x", &sig),
                ours(&mixed, L, b"x", &sig),
            );
            assert_eq!(d, o, "disagreement at {i}");
            agreed[usize::from(d)] += 1;
        }
        assert!(agreed[0] > 0 && agreed[1] > 0, "{agreed:?}");
        // Every small-order R with an honest key: refused by both.
        for e in SMALL_ORDER_ENCODINGS {
            let sig = forge(a, pk, e, Scalar::ZERO, b"m");
            assert!(!dalek_strict(&pk, L, b"m", &sig));
            assert!(!ours(&pk, L, b"m", &sig));
        }
    }

    proptest::proptest! {
        /// Random keys, messages and single-byte corruptions of signature and key: ours and
        /// `verify_strict` give the same verdict.
        #[test]
        fn fast_strict_verification_agrees_with_dalek(
            seed: [u8; 32],
            msg: Vec<u8>,
            pos in 0usize..96,
            xor: u8,
        ) {
            let sk = SigningKey::from_bytes(&seed);
            let mut pk = sk.verifying_key().to_bytes();
            let mut sig = Signature(sk.sign(&L.message(&msg)).to_bytes());
            if pos < 64 {
                sig.0[pos] ^= xor;
            } else {
                pk[pos - 64] ^= xor;
            }
            proptest::prop_assert_eq!(dalek_strict(&pk, L, &msg, &sig), ours(&pk, L, &msg, &sig));
        }
    }

    /// The precomputed-table verdict for a key given as bytes (false if the key is refused).
    fn table(pk: &[u8; 32], label: SigLabel, msg: &[u8], sig: &Signature) -> bool {
        match DevicePublicKey::from_bytes(pk) {
            Ok(k) => PrecomputedDeviceKey::new(&k)
                .verify(label, msg, sig)
                .is_ok(),
            Err(_) => false,
        }
    }

    /// All three verdicts (dalek `verify_strict`, `verify`, the precomputed table) agree; returns
    /// the common verdict.
    fn agree(pk: &[u8; 32], label: SigLabel, msg: &[u8], sig: &Signature) -> bool {
        let d = dalek_strict(pk, label, msg, sig);
        assert_eq!(d, ours(pk, label, msg, sig), "verify vs verify_strict");
        assert_eq!(d, table(pk, label, msg, sig), "table vs verify_strict");
        d
    }

    /// The group order `l` (RFC 8032), little-endian.
    const ORDER: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    /// `s + l` as bytes: the same scalar mod `l`, non-canonical.
    fn plus_l(s: &[u8]) -> [u8; 32] {
        let l = ORDER;
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(s[i]) + u16::from(l[i]) + carry;
            out[i] = v as u8;
            carry = v >> 8;
        }
        out
    }

    /// Crafted edge cases for the precomputed-table verifier: honest signatures, every
    /// small-order `R` (including ones for which the cofactorless equation holds), non-canonical
    /// encodings of small-order `R`, non-canonical and out-of-range `s`, mixed-order keys (both
    /// verdicts), wrong message and label, and every single-bit flip of a valid signature.
    #[test]
    fn precomputed_verification_agrees_on_crafted_signatures() {
        let a = Scalar::from(0x0123_4567_89ab_cdef_u64);
        let pk = EdwardsPoint::mul_base(&a).compress().0;
        let r = Scalar::from(4242u64);
        let honest = forge(a, pk, EdwardsPoint::mul_base(&r).compress().0, r, b"m");
        assert!(agree(&pk, L, b"m", &honest));
        assert!(!agree(&pk, L, b"n", &honest));
        assert!(!agree(&pk, SigLabel("SecureComm/other"), b"m", &honest));
        // Every small-order R, with s = k·a so that [s]B - [k]A = identity, and with s = 0.
        for e in SMALL_ORDER_ENCODINGS {
            assert!(!agree(&pk, L, b"m", &forge(a, pk, e, Scalar::ZERO, b"m")));
            let mut zero_s = forge(a, pk, e, Scalar::ZERO, b"m");
            zero_s.0[32..].fill(0);
            assert!(!agree(&pk, L, b"m", &zero_s));
        }
        // Non-canonical encodings of small-order points: the identity and (0, -1) with the sign
        // bit set (x = 0 "negative"), and y + p for y = 1 (identity) where it fits in 255 bits.
        let mut neg_identity = SMALL_ORDER_ENCODINGS[0];
        neg_identity[31] |= 0x80;
        let mut neg_minus_one = SMALL_ORDER_ENCODINGS[1];
        neg_minus_one[31] |= 0x80;
        let mut one_plus_p = [0xffu8; 32];
        one_plus_p[0] = 0xee; // p + 1 = 2^255 - 18
        one_plus_p[31] = 0x7f;
        for e in [neg_identity, neg_minus_one, one_plus_p] {
            assert!(!agree(&pk, L, b"m", &forge(a, pk, e, Scalar::ZERO, b"m")));
        }
        // s + l (same scalar, non-canonical), s with the top bits set, s = l, s = 0.
        let mut bad = honest;
        bad.0[32..].copy_from_slice(&plus_l(&honest.0[32..]));
        assert!(!agree(&pk, L, b"m", &bad));
        let mut bad = honest;
        bad.0[63] |= 0xe0;
        assert!(!agree(&pk, L, b"m", &bad));
        let mut bad = honest;
        bad.0[32..].copy_from_slice(&ORDER);
        assert!(!agree(&pk, L, b"m", &bad));
        let mut bad = honest;
        bad.0[32..].fill(0);
        assert!(!agree(&pk, L, b"m", &bad));
        // Mixed-order key A = [a]B + T8: accepted exactly when the torsion part cancels, by all
        // three; both outcomes occur.
        let t8 = CompressedEdwardsY(SMALL_ORDER_ENCODINGS[4])
            .decompress()
            .unwrap();
        let mixed = (EdwardsPoint::mul_base(&a) + t8).compress().0;
        let mut seen = [0usize; 2];
        for i in 0u64..64 {
            let r = Scalar::from(7000 + i);
            let sig = forge(a, mixed, EdwardsPoint::mul_base(&r).compress().0, r, b"x");
            seen[usize::from(agree(&mixed, L, b"x", &sig))] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
        // Every single-bit flip of the honest signature is refused by all three.
        for bit in 0..512 {
            let mut flipped = honest;
            flipped.0[bit / 8] ^= 1 << (bit % 8);
            assert!(!agree(&pk, L, b"m", &flipped), "bit {bit}");
        }
    }

    /// The table verifies real signatures from `DeviceSigningKey::sign`, and its `Debug` shows
    /// only the key.
    #[test]
    fn precomputed_key_verifies_device_signatures() {
        let k = DeviceSigningKey::from_seed(&[0x33; 32]);
        let p = PrecomputedDeviceKey::new(&k.public());
        assert_eq!(p.key(), &k.public());
        for i in 0..20u8 {
            let msg = vec![i; usize::from(i) * 13];
            let sig = k.sign(L, &msg);
            p.verify(L, &msg, &sig).unwrap();
            assert!(p.verify(L, &[msg.as_slice(), b"!"].concat(), &sig).is_err());
        }
        let other = DeviceSigningKey::from_seed(&[0x34; 32]).sign(L, b"m");
        assert!(p.verify(L, b"m", &other).is_err());
        assert_eq!(
            format!("{p:?}"),
            format!("PrecomputedDeviceKey({:?})", k.public())
        );
    }

    proptest::proptest! {
        /// Random keys and messages, honest signatures mutated at random (byte XOR, `s + l`,
        /// `R` replaced by a small-order encoding, message changed): the precomputed table,
        /// `verify` and dalek's `verify_strict` give the same verdict.
        #[test]
        fn precomputed_verification_agrees_with_dalek(
            seed: [u8; 32],
            msg: Vec<u8>,
            mutation in 0u8..5,
            pos in 0usize..64,
            xor in 1u8..,
            which in 0usize..8,
        ) {
            let sk = SigningKey::from_bytes(&seed);
            let pk = sk.verifying_key().to_bytes();
            let mut sig = Signature(sk.sign(&L.message(&msg)).to_bytes());
            let mut m = msg.clone();
            match mutation {
                0 => {}
                1 => sig.0[pos] ^= xor,
                2 => {
                    let s = plus_l(&sig.0[32..]);
                    sig.0[32..].copy_from_slice(&s);
                }
                3 => sig.0[..32].copy_from_slice(&SMALL_ORDER_ENCODINGS[which]),
                _ => m.push(xor),
            }
            let verdict = agree(&pk, L, &m, &sig);
            proptest::prop_assert_eq!(verdict, mutation == 0);
        }
    }

    /// RFC 7748 §5.2, first X25519 test vector.
    #[test]
    fn x25519_rfc7748_vector() {
        let k = hex::decode("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
            .unwrap();
        let u = hex::decode("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
            .unwrap();
        let secret = DhSecret::from_bytes(k.try_into().unwrap());
        let out = secret
            .diffie_hellman(&DhPublic(u.try_into().unwrap()))
            .unwrap();
        assert_eq!(
            hex::encode(out.expose()),
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
        );
    }

    /// RFC 7748 §6.1: Alice and Bob's key pair and shared secret.
    #[test]
    fn x25519_rfc7748_dh() {
        let a = DhSecret::from_bytes(
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let b = DhSecret::from_bytes(
            hex::decode("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert_eq!(
            hex::encode(a.public().0),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert_eq!(
            hex::encode(b.public().0),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        );
        let k = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
        assert_eq!(
            hex::encode(a.diffie_hellman(&b.public()).unwrap().expose()),
            k
        );
        assert_eq!(
            hex::encode(b.diffie_hellman(&a.public()).unwrap().expose()),
            k
        );
    }

    #[test]
    fn x25519_rejects_small_order() {
        let a = DhSecret::from_bytes([7; 32]);
        assert_eq!(
            a.diffie_hellman(&DhPublic([0; 32])).unwrap_err(),
            DhError::NonContributory
        );
    }

    /// RFC 8032 §7.1, TEST 1 (empty message) and TEST 2 (one byte), raw Ed25519 without our label.
    #[test]
    fn ed25519_rfc8032_vectors() {
        let cases = [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ];
        for (sk, pk, msg, sig) in cases {
            let sk = SigningKey::from_bytes(&hex::decode(sk).unwrap().try_into().unwrap());
            assert_eq!(hex::encode(sk.verifying_key().to_bytes()), pk);
            let msg = hex::decode(msg).unwrap();
            let s = sk.sign(&msg);
            assert_eq!(hex::encode(s.to_bytes()), sig);
            sk.verifying_key().verify_strict(&msg, &s).unwrap();
        }
    }

    #[test]
    fn labels_separate_domains_and_verification_is_strict() {
        let mut rng = rand::thread_rng();
        let k = DeviceSigningKey::generate(&mut rng);
        let sig = k.sign(L, b"hello");
        k.public().verify(L, b"hello", &sig).unwrap();
        assert!(
            k.public()
                .verify(SigLabel("SecureComm/other"), b"hello", &sig)
                .is_err()
        );
        assert!(k.public().verify(L, b"hellp", &sig).is_err());
        // Non-canonical S (S + l) must be rejected by strict verification.
        let mut bad = sig;
        let l: [u8; 32] =
            hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
                .unwrap()
                .try_into()
                .unwrap();
        let mut carry = 0u16;
        for (i, li) in l.iter().enumerate() {
            let v = u16::from(bad.0[32 + i]) + u16::from(*li) + carry;
            bad.0[32 + i] = v as u8;
            carry = v >> 8;
        }
        assert!(k.public().verify(L, b"hello", &bad).is_err());
    }

    #[test]
    fn weak_public_keys_are_rejected() {
        // The identity point encodes as 0x01 followed by zeros: small order.
        let mut id = [0u8; 32];
        id[0] = 1;
        assert_eq!(
            DevicePublicKey::from_bytes(&id),
            Err(SignatureError::InvalidKey)
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let seed = [0x5au8; 32];
        let k = RootSigningKey::from_seed(&seed);
        let d = format!("{k:?}");
        assert!(d.starts_with("RootSigningKey(public: RootPublicKey("));
        assert!(!d.contains("5a5a"));
        let dh = DhSecret::from_bytes(seed);
        assert!(!format!("{dh:?}").contains("5a5a"));
    }
}
