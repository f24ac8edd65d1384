//! Safety numbers: Signal's numeric fingerprint, computed exactly as libsignal computes it.
//!
//! # The algorithm (libsignal's fingerprint version 0, "displayable" part)
//!
//! For each party, with `key` the party's public key bytes and `id` its stable identifier:
//!
//! ```text
//! h = SHA-512(0x00 0x00 | key | id | key)          (0x0000: libsignal's hash version)
//! repeat iterations - 1 times:  h = SHA-512(h | key)
//! ```
//!
//! The first 30 bytes of `h` are read as six 5-byte big-endian integers, each taken modulo
//! 100 000 and printed as 5 digits: 30 digits per party. The two halves are ordered (the smaller
//! first) and concatenated into the 60-digit safety number, so both parties see the same digits.
//! The first 32 bytes of `h` are the party's "scannable" fingerprint.
//!
//! [`SafetyNumber::compute`] is this algorithm over raw bytes; with libsignal's inputs (keys
//! with the `0x05` type prefix, ids `+14152222222` / `+14153333333`, 5200 iterations) it
//! reproduces libsignal's published digits and fingerprints byte for byte (see the tests).
//!
//! # SecureComm's inputs
//!
//! [`SafetyNumber::for_roots`] feeds, per party, `key = ROOT_KEY_TYPE (0xED) | the 32 bytes of
//! the Ed25519 root public key` (33 bytes, like libsignal's typed keys; the distinct type byte
//! means a SecureComm number can never equal a Signal number over the same 32 bytes) and
//! `id = the user id bytes` the caller supplies (at most [`MAX_STABLE_ID_LEN`] bytes), with
//! [`ITERATIONS`] = 5200 like Signal.
//!
//! # QR payload
//!
//! ```text
//! QR = 0x01 (version) | local fingerprint (32) | remote fingerprint (32)     = 65 bytes
//! ```
//!
//! The scanning side checks that the scanned payload's `local` equals its own `remote` and the
//! scanned `remote` its own `local`, in constant time ([`SafetyNumber::compare_scanned`]).

use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::keys::RootPublicKey;

/// Hash iterations SecureComm uses (Signal's value).
pub const ITERATIONS: u32 = 5200;
/// The type byte SecureComm prefixes to an Ed25519 root key before hashing.
pub const ROOT_KEY_TYPE: u8 = 0xED;
/// Longest stable id accepted, in bytes.
pub const MAX_STABLE_ID_LEN: usize = 256;
/// Version byte of the QR payload.
pub const QR_VERSION: u8 = 1;
/// Length of the QR payload.
pub const QR_LEN: usize = 1 + 32 + 32;
/// libsignal's fingerprint hash version, hashed first.
const HASH_VERSION: [u8; 2] = [0, 0];
/// libsignal's accepted iteration range (exclusive lower, inclusive upper bound).
const MAX_ITERATIONS: u32 = 1_000_000;

/// Why a safety number could not be computed or a scanned code not compared.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FingerprintError {
    /// The iteration count is outside libsignal's range `2..=1_000_000`.
    #[error("fingerprint iterations out of range: expected 2..=1000000, got {0}")]
    Iterations(u32),
    /// A stable id is longer than [`MAX_STABLE_ID_LEN`].
    #[error("stable id too long: at most {max} bytes, got {got}")]
    StableIdTooLong {
        /// The bound.
        max: usize,
        /// The id's length.
        got: usize,
    },
    /// The scanned code was made by a different version of the format.
    #[error("scanned safety number has version {got}, expected {expected}")]
    VersionMismatch {
        /// The version this build produces.
        expected: u8,
        /// The version scanned.
        got: u8,
    },
    /// The scanned bytes are not a well-formed payload.
    #[error("scanned safety number is malformed: {0}")]
    Decode(#[from] DecodeError),
}

/// Result of comparing a scanned QR code with our own safety number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOutcome {
    /// Both sides computed the same fingerprints: the keys are verified.
    Match,
    /// The fingerprints differ: a different key (or a different id) on one side.
    Mismatch,
}

/// The per-party iterated hash; returns the full 64-byte SHA-512 output.
pub fn iterated_hash(
    iterations: u32,
    key: &[u8],
    stable_id: &[u8],
) -> Result<[u8; 64], FingerprintError> {
    if iterations <= 1 || iterations > MAX_ITERATIONS {
        return Err(FingerprintError::Iterations(iterations));
    }
    if stable_id.len() > MAX_STABLE_ID_LEN {
        return Err(FingerprintError::StableIdTooLong {
            max: MAX_STABLE_ID_LEN,
            got: stable_id.len(),
        });
    }
    let mut h = Sha512::new();
    h.update(HASH_VERSION);
    h.update(key);
    h.update(stable_id);
    h.update(key);
    let mut out: [u8; 64] = h.finalize().into();
    for _ in 1..iterations {
        let mut h = Sha512::new();
        h.update(out);
        h.update(key);
        out = h.finalize().into();
    }
    Ok(out)
}

/// The 30 displayed digits of one party's hash.
fn thirty_digits(hash: &[u8; 64]) -> String {
    let mut s = String::with_capacity(30);
    for chunk in hash.chunks_exact(5).take(6) {
        let n = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        s.push_str(&format!("{:05}", n % 100_000));
    }
    s
}

fn first32(hash: &[u8; 64]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.iter_mut().zip(hash.iter()).for_each(|(o, h)| *o = *h);
    out
}

/// A safety number from one party's point of view: both fingerprints and the 60 digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    local: [u8; 32],
    remote: [u8; 32],
    digits: String,
}

impl SafetyNumber {
    /// libsignal's algorithm over raw key and id bytes (the generic core).
    pub fn compute(
        iterations: u32,
        local_key: &[u8],
        local_id: &[u8],
        remote_key: &[u8],
        remote_id: &[u8],
    ) -> Result<Self, FingerprintError> {
        let l = iterated_hash(iterations, local_key, local_id)?;
        let r = iterated_hash(iterations, remote_key, remote_id)?;
        let (ld, rd) = (thirty_digits(&l), thirty_digits(&r));
        let digits = if ld < rd { ld + &rd } else { rd + &ld };
        Ok(Self {
            local: first32(&l),
            remote: first32(&r),
            digits,
        })
    }

    /// SecureComm's safety number between our root key and theirs (see the module docs for the
    /// exact bytes hashed).
    pub fn for_roots(
        local: &RootPublicKey,
        local_id: &[u8],
        remote: &RootPublicKey,
        remote_id: &[u8],
    ) -> Result<Self, FingerprintError> {
        Self::compute(
            ITERATIONS,
            &typed_key(local),
            local_id,
            &typed_key(remote),
            remote_id,
        )
    }

    /// The 60 digits, both parties' halves in the same order.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The 60 digits in twelve groups of five separated by spaces, as shown on screen.
    pub fn grouped(&self) -> String {
        let mut out = String::with_capacity(71);
        for (i, c) in self.digits.chars().enumerate() {
            if i > 0 && i % 5 == 0 {
                out.push(' ');
            }
            out.push(c);
        }
        out
    }

    /// Our 32-byte scannable fingerprint.
    pub fn local_fingerprint(&self) -> &[u8; 32] {
        &self.local
    }

    /// The other party's 32-byte scannable fingerprint, as we computed it.
    pub fn remote_fingerprint(&self) -> &[u8; 32] {
        &self.remote
    }

    /// The bytes our QR code carries.
    pub fn qr_payload(&self) -> Vec<u8> {
        QrPayload {
            local: self.local,
            remote: self.remote,
        }
        .to_bytes()
    }

    /// Compares a payload scanned from the other party's screen with ours. Parses strictly
    /// (exact length, known version) and compares in constant time.
    pub fn compare_scanned(&self, scanned: &[u8]) -> Result<ScanOutcome, FingerprintError> {
        match scanned.first() {
            None => {
                return Err(FingerprintError::Decode(DecodeError::Truncated {
                    needed: QR_LEN,
                    remaining: 0,
                }));
            }
            Some(&got) if got != QR_VERSION => {
                return Err(FingerprintError::VersionMismatch {
                    expected: QR_VERSION,
                    got,
                });
            }
            Some(_) => {}
        }
        let theirs = QrPayload::from_bytes(scanned)?;
        // Their "local" is our "remote" and the other way round.
        let same = theirs.local.ct_eq(&self.remote) & theirs.remote.ct_eq(&self.local);
        Ok(if bool::from(same) {
            ScanOutcome::Match
        } else {
            ScanOutcome::Mismatch
        })
    }
}

fn typed_key(key: &RootPublicKey) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = ROOT_KEY_TYPE;
    out.iter_mut()
        .skip(1)
        .zip(key.as_bytes())
        .for_each(|(o, k)| *o = *k);
    out
}

/// The QR code's content: the sender's own fingerprint first, then the other party's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QrPayload {
    /// The fingerprint of the party showing the code.
    pub local: [u8; 32],
    /// The fingerprint the showing party computed for the scanning party.
    pub remote: [u8; 32],
}

impl Encode for QrPayload {
    fn encode(&self, w: &mut Writer) {
        w.u8(QR_VERSION);
        w.put(&self.local);
        w.put(&self.remote);
    }
}

impl Decode for QrPayload {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("safety number QR payload", QR_VERSION)?;
        Ok(Self {
            local: r.array()?,
            remote: r.array()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RootSigningKey;
    use proptest::prelude::*;

    // libsignal rust/protocol/src/fingerprint.rs, fingerprint_test_v1 / _v2.
    const ALICE_IDENTITY: &str =
        "0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868";
    const BOB_IDENTITY: &str = "05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b";
    const ALICE_STABLE_ID: &[u8] = b"+14152222222";
    const BOB_STABLE_ID: &[u8] = b"+14153333333";
    const DISPLAYABLE: &str = "300354477692869396892869876765458257569162576843440918079131";
    // The 32-byte fingerprints inside libsignal's scannable (protobuf) vectors.
    const ALICE_FP: &str = "1e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df";
    const BOB_FP: &str = "d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d";

    fn libsignal_pair() -> (SafetyNumber, SafetyNumber) {
        let a = hex::decode(ALICE_IDENTITY).unwrap();
        let b = hex::decode(BOB_IDENTITY).unwrap();
        let alice = SafetyNumber::compute(5200, &a, ALICE_STABLE_ID, &b, BOB_STABLE_ID).unwrap();
        let bob = SafetyNumber::compute(5200, &b, BOB_STABLE_ID, &a, ALICE_STABLE_ID).unwrap();
        (alice, bob)
    }

    #[test]
    fn libsignal_vector_matches_byte_for_byte() {
        let (alice, bob) = libsignal_pair();
        assert_eq!(alice.digits(), DISPLAYABLE);
        assert_eq!(bob.digits(), DISPLAYABLE);
        assert_eq!(hex::encode(alice.local_fingerprint()), ALICE_FP);
        assert_eq!(hex::encode(alice.remote_fingerprint()), BOB_FP);
        assert_eq!(hex::encode(bob.local_fingerprint()), BOB_FP);
        assert_eq!(hex::encode(bob.remote_fingerprint()), ALICE_FP);
        assert_eq!(
            alice.grouped(),
            "30035 44776 92869 39689 28698 76765 45825 75691 62576 84344 09180 79131"
        );
    }

    #[test]
    fn scanned_codes_match_only_the_right_peer() {
        let (alice, bob) = libsignal_pair();
        let qr = alice.qr_payload();
        assert_eq!(qr.len(), QR_LEN);
        assert_eq!(qr[0], QR_VERSION);
        assert_eq!(bob.compare_scanned(&qr), Ok(ScanOutcome::Match));
        assert_eq!(
            alice.compare_scanned(&bob.qr_payload()),
            Ok(ScanOutcome::Match)
        );
        // Scanning one's own code is not a match (the halves are swapped).
        assert_eq!(alice.compare_scanned(&qr), Ok(ScanOutcome::Mismatch));
        // Every single-bit flip of the fingerprints is a mismatch or an error, never a match.
        for i in 8..qr.len() * 8 {
            let mut q = qr.clone();
            q[i / 8] ^= 1 << (i % 8);
            assert_eq!(bob.compare_scanned(&q), Ok(ScanOutcome::Mismatch));
        }
    }

    #[test]
    fn scanned_payload_is_parsed_strictly() {
        let (alice, bob) = libsignal_pair();
        let qr = alice.qr_payload();
        let mut v2 = qr.clone();
        v2[0] = 2;
        assert_eq!(
            bob.compare_scanned(&v2),
            Err(FingerprintError::VersionMismatch {
                expected: 1,
                got: 2
            })
        );
        let mut long = qr.clone();
        long.push(0);
        assert_eq!(
            bob.compare_scanned(&long),
            Err(FingerprintError::Decode(DecodeError::TrailingBytes(1)))
        );
        for n in 0..qr.len() {
            assert!(bob.compare_scanned(&qr[..n]).is_err());
        }
    }

    #[test]
    fn mismatching_keys_or_ids_give_different_numbers() {
        let a = RootSigningKey::from_seed(&[1; 32]).public();
        let b = RootSigningKey::from_seed(&[2; 32]).public();
        let m = RootSigningKey::from_seed(&[3; 32]).public();
        let alice = SafetyNumber::for_roots(&a, b"alice", &b, b"bob").unwrap();
        let bob = SafetyNumber::for_roots(&b, b"bob", &a, b"alice").unwrap();
        assert_eq!(alice.digits(), bob.digits());
        assert_eq!(alice.digits().len(), 60);
        assert!(alice.digits().bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(
            bob.compare_scanned(&alice.qr_payload()),
            Ok(ScanOutcome::Match)
        );

        // Alice sees a man in the middle's key instead of Bob's.
        let alice_mitm = SafetyNumber::for_roots(&a, b"alice", &m, b"bob").unwrap();
        assert_ne!(alice_mitm.digits(), bob.digits());
        assert_eq!(
            bob.compare_scanned(&alice_mitm.qr_payload()),
            Ok(ScanOutcome::Mismatch)
        );
        // Same keys, different id.
        let alice_other_id = SafetyNumber::for_roots(&a, b"alice2", &b, b"bob").unwrap();
        assert_ne!(alice_other_id.digits(), bob.digits());
        assert_eq!(
            bob.compare_scanned(&alice_other_id.qr_payload()),
            Ok(ScanOutcome::Mismatch)
        );
        // SecureComm's type byte keeps numbers distinct from a 0x05-typed computation.
        let mut a05 = vec![0x05];
        a05.extend_from_slice(a.as_bytes());
        let mut b05 = vec![0x05];
        b05.extend_from_slice(b.as_bytes());
        let signal = SafetyNumber::compute(5200, &a05, b"alice", &b05, b"bob").unwrap();
        assert_ne!(signal.digits(), alice.digits());
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert_eq!(
            iterated_hash(1, b"k", b"i"),
            Err(FingerprintError::Iterations(1))
        );
        assert_eq!(
            iterated_hash(1_000_001, b"k", b"i"),
            Err(FingerprintError::Iterations(1_000_001))
        );
        assert_eq!(
            iterated_hash(2, b"k", &[0; 257]),
            Err(FingerprintError::StableIdTooLong { max: 256, got: 257 })
        );
    }

    proptest! {
        #[test]
        fn prop_qr_round_trip(local in any::<[u8; 32]>(), remote in any::<[u8; 32]>()) {
            let p = QrPayload { local, remote };
            prop_assert_eq!(QrPayload::from_bytes(&p.to_bytes()).unwrap(), p);
        }

        #[test]
        fn prop_compare_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let n = SafetyNumber::compute(2, b"a", b"1", b"b", b"2").unwrap();
            let _ = n.compare_scanned(&bytes);
        }
    }
}
