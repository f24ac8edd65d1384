//! The passphrase-sealed key store: how a device keeps its [`crate::identity::UserIdentity`]
//! (or any other secret bytes) on disk.
//!
//! # Format (all integers big-endian)
//!
//! ```text
//! header   = 0x01 (version) | 0x01 (KDF: Argon2id v1.3)
//!          | m_cost u32 (KiB) | t_cost u32 | p_cost u32 | salt (16)
//!          | check (16) | nonce (12)
//! blob     = header | ciphertext (secret length + 16-byte tag) | checksum (32)
//!
//! master   = Argon2id(passphrase, salt, m_cost, t_cost, p_cost) -> 32 bytes
//! aead key = HKDF-SHA256(ikm = master, info = "SecureComm/keystore/aead-key v1")
//! check    = HKDF-SHA256(ikm = master, info = "SecureComm/keystore/passphrase-check v1")[..16]
//! ciphertext = ChaCha20-Poly1305(aead key, nonce, aad = header, secret)
//! checksum = SHA-256("SecureComm/keystore/checksum v1" | 0x00 | header | ciphertext)
//! ```
//!
//! Salt and nonce are fresh random values for every seal.
//!
//! # Why three checks
//!
//! [`open`] tells the three failures a user can meet apart:
//! * the **checksum** is a plain hash, not a secret: a mismatch means the file was damaged
//!   (a bit flip, a truncated copy) and is reported as [`KeystoreError::Corrupt`] before any
//!   expensive work;
//! * the **check** value is derived from the passphrase: a mismatch means the passphrase is
//!   wrong ([`KeystoreError::WrongPassphrase`]). It lets an attacker test a guess no faster than
//!   the AEAD tag would: each guess still costs a full Argon2id run;
//! * the **AEAD tag** authenticates header and ciphertext under the key: a failure after the
//!   check matched means a deliberate edit that also fixed the checksum (`Corrupt`). An edit of
//!   the salt or KDF parameters that fixes the checksum is indistinguishable from a wrong
//!   passphrase; that is inherent.
//!
//! # Parameter bounds
//!
//! The KDF parameters come from the file, so a malicious file could ask for terabytes of memory
//! or hours of work, or a damaged one for a trivially weak KDF. [`open`] enforces
//! [`KdfLimits::STANDARD`]: memory 19 MiB to 1 GiB, 2 to 10 passes, 1 to 4 lanes, and at most
//! 4 GiB-passes of work (memory times passes) in total. The default for new stores is
//! [`KdfParams::DEFAULT`]: 64 MiB, 3 passes, 1 lane. Tests and fuzzers use
//! [`KdfParams::insecure_for_tests_only`] with [`open_with_limits`] and
//! [`KdfLimits::INSECURE_TEST_ONLY`], which allows at most 1 MiB and 2 passes.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{DecodeError, Reader, Writer};
use crate::secret::{hkdf_secret, hkdf_sha256};

/// Version byte of the key store format.
pub const KEYSTORE_VERSION: u8 = 1;
/// KDF identifier: Argon2id, version 0x13.
const KDF_ARGON2ID_13: u8 = 1;
/// Length of the random salt.
pub const SALT_LEN: usize = 16;
/// Length of the random nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the passphrase check value.
pub const CHECK_LEN: usize = 16;
/// Length of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// Length of the trailing checksum.
pub const CHECKSUM_LEN: usize = 32;
/// Length of the header (the associated data).
pub const HEADER_LEN: usize = 1 + 1 + 3 * 4 + SALT_LEN + CHECK_LEN + NONCE_LEN;
/// Largest secret that can be sealed.
pub const MAX_SECRET_LEN: usize = 64 * 1024;

const AEAD_KEY_INFO: &[u8] = b"SecureComm/keystore/aead-key v1";
const CHECK_INFO: &[u8] = b"SecureComm/keystore/passphrase-check v1";
const CHECKSUM_LABEL: &[u8] = b"SecureComm/keystore/checksum v1";

/// Why a key store could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeystoreError {
    /// The blob is not a key store file this build understands (truncated, unknown version or
    /// KDF, over-long).
    #[error("not a valid key store: {0}")]
    Decode(#[from] DecodeError),
    /// The file is damaged or was edited.
    #[error("key store is corrupt: {0}")]
    Corrupt(&'static str),
    /// The passphrase does not open this key store.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// A KDF parameter is outside the accepted range.
    #[error("key store KDF parameter {what} out of range: expected {min}..={max}, got {got}")]
    ParamOutOfRange {
        /// The parameter.
        what: &'static str,
        /// The smallest accepted value.
        min: u64,
        /// The largest accepted value.
        max: u64,
        /// The value found.
        got: u64,
    },
    /// The secret to seal is larger than [`MAX_SECRET_LEN`].
    #[error("secret too long: at most {max} bytes, got {got}")]
    SecretTooLong {
        /// The bound.
        max: usize,
        /// The secret's length.
        got: usize,
    },
    /// Argon2 refused the parameters.
    #[error("argon2 failed: {0}")]
    Kdf(argon2::Error),
    /// Encryption failed.
    #[error("encryption failed")]
    Encrypt,
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
}

impl KdfParams {
    /// The default for new key stores: 64 MiB, 3 passes, 1 lane.
    pub const DEFAULT: Self = Self {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };

    /// Parameters within [`KdfLimits::STANDARD`].
    pub fn new(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> Result<Self, KeystoreError> {
        let p = Self {
            m_cost_kib,
            t_cost,
            p_cost,
        };
        KdfLimits::STANDARD.check(&p)?;
        Ok(p)
    }

    /// Parameters below the production floor, for tests and fuzzing only. A store sealed with
    /// them opens only through [`open_with_limits`] with limits that allow them.
    pub const fn insecure_for_tests_only(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> Self {
        Self {
            m_cost_kib,
            t_cost,
            p_cost,
        }
    }

    /// Memory cost in KiB.
    pub fn m_cost_kib(&self) -> u32 {
        self.m_cost_kib
    }

    /// Number of passes.
    pub fn t_cost(&self) -> u32 {
        self.t_cost
    }

    /// Number of lanes.
    pub fn p_cost(&self) -> u32 {
        self.p_cost
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The range of KDF parameters [`open_with_limits`] accepts from a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfLimits {
    /// Least memory, KiB.
    pub min_m_cost_kib: u32,
    /// Most memory, KiB.
    pub max_m_cost_kib: u32,
    /// Fewest passes.
    pub min_t_cost: u32,
    /// Most passes.
    pub max_t_cost: u32,
    /// Most lanes.
    pub max_p_cost: u32,
    /// Most total work: memory (KiB) times passes.
    pub max_work: u64,
}

impl KdfLimits {
    /// What [`open`] accepts: 19 MiB (OWASP's Argon2id floor) to 1 GiB, 2 to 10 passes, at
    /// most 4 lanes and 4 GiB-passes of work.
    pub const STANDARD: Self = Self {
        min_m_cost_kib: 19 * 1024,
        max_m_cost_kib: 1024 * 1024,
        min_t_cost: 2,
        max_t_cost: 10,
        max_p_cost: 4,
        max_work: 4 * 1024 * 1024,
    };

    /// For tests and fuzzing only: weak parameters allowed, at most 1 MiB and 2 passes, so a
    /// hostile input costs at most a couple of milliseconds.
    pub const INSECURE_TEST_ONLY: Self = Self {
        min_m_cost_kib: 8,
        max_m_cost_kib: 1024,
        min_t_cost: 1,
        max_t_cost: 2,
        max_p_cost: 1,
        max_work: 2048,
    };

    /// Checks `p` against these limits (and Argon2's own rule of 8 KiB per lane).
    pub fn check(&self, p: &KdfParams) -> Result<(), KeystoreError> {
        range("p_cost", p.p_cost, 1, self.max_p_cost)?;
        let min_m = self.min_m_cost_kib.max(p.p_cost.saturating_mul(8));
        range("m_cost_kib", p.m_cost_kib, min_m, self.max_m_cost_kib)?;
        range("t_cost", p.t_cost, self.min_t_cost, self.max_t_cost)?;
        let work = u64::from(p.m_cost_kib) * u64::from(p.t_cost);
        if work > self.max_work {
            return Err(KeystoreError::ParamOutOfRange {
                what: "m_cost_kib * t_cost",
                min: 0,
                max: self.max_work,
                got: work,
            });
        }
        Ok(())
    }
}

fn range(what: &'static str, got: u32, min: u32, max: u32) -> Result<(), KeystoreError> {
    if got < min || got > max {
        return Err(KeystoreError::ParamOutOfRange {
            what,
            min: u64::from(min),
            max: u64::from(max),
            got: u64::from(got),
        });
    }
    Ok(())
}

/// The integrity checksum over header and ciphertext (a plain hash, not a MAC). Public so that
/// fuzzers can build blobs that get past it.
pub fn checksum(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CHECKSUM_LABEL);
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

/// Keys derived from the passphrase. Both secret parts are zeroized on drop.
struct Derived {
    aead: ChaCha20Poly1305,
    check: Zeroizing<[u8; CHECK_LEN]>,
}

fn derive(
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    p: &KdfParams,
) -> Result<Derived, KeystoreError> {
    let params =
        Params::new(p.m_cost_kib, p.t_cost, p.p_cost, Some(32)).map_err(KeystoreError::Kdf)?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut master = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, master.as_mut())
        .map_err(KeystoreError::Kdf)?;
    let key = hkdf_secret(None, master.as_ref(), AEAD_KEY_INFO);
    let check = Zeroizing::new(hkdf_sha256::<CHECK_LEN>(None, master.as_ref(), CHECK_INFO));
    Ok(Derived {
        aead: ChaCha20Poly1305::new(Key::from_slice(key.expose())),
        check,
    })
}

/// Parsed header fields.
struct Header {
    params: KdfParams,
    salt: [u8; SALT_LEN],
    check: [u8; CHECK_LEN],
    nonce: [u8; NONCE_LEN],
}

impl Header {
    fn encode(&self, w: &mut Writer) {
        w.u8(KEYSTORE_VERSION);
        w.u8(KDF_ARGON2ID_13);
        w.u32(self.params.m_cost_kib);
        w.u32(self.params.t_cost);
        w.u32(self.params.p_cost);
        w.put(&self.salt);
        w.put(&self.check);
        w.put(&self.nonce);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("key store", KEYSTORE_VERSION)?;
        let kdf = r.u8()?;
        if kdf != KDF_ARGON2ID_13 {
            return Err(DecodeError::UnknownTag {
                what: "key store KDF",
                got: u64::from(kdf),
            });
        }
        let params = KdfParams {
            m_cost_kib: r.u32()?,
            t_cost: r.u32()?,
            p_cost: r.u32()?,
        };
        Ok(Self {
            params,
            salt: r.array()?,
            check: r.array()?,
            nonce: r.array()?,
        })
    }
}

/// Seals `secret` under `passphrase`. Takes as long as one Argon2id run with `params`.
pub fn seal<R: RngCore + CryptoRng>(
    rng: &mut R,
    passphrase: &[u8],
    secret: &[u8],
    params: &KdfParams,
) -> Result<Vec<u8>, KeystoreError> {
    if secret.len() > MAX_SECRET_LEN {
        return Err(KeystoreError::SecretTooLong {
            max: MAX_SECRET_LEN,
            got: secret.len(),
        });
    }
    let mut salt = [0u8; SALT_LEN];
    rng.fill_bytes(&mut salt);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let keys = derive(passphrase, &salt, params)?;
    let header = Header {
        params: *params,
        salt,
        check: *keys.check,
        nonce,
    };
    let mut w = Writer::with_capacity(HEADER_LEN + secret.len() + TAG_LEN + CHECKSUM_LEN);
    header.encode(&mut w);
    let aad = w.clone().into_bytes();
    // Encrypt in a buffer of final size, so no plaintext copy is left by a reallocation.
    let mut buf = Zeroizing::new(Vec::with_capacity(secret.len()));
    buf.extend_from_slice(secret);
    let tag = keys
        .aead
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, buf.as_mut_slice())
        .map_err(|_| KeystoreError::Encrypt)?;
    w.put(&buf);
    w.put(&tag);
    let mut blob = w.into_bytes();
    let sum = checksum(&blob);
    blob.extend_from_slice(&sum);
    Ok(blob)
}

/// Opens a blob made by [`seal`], accepting only [`KdfLimits::STANDARD`] parameters.
pub fn open(passphrase: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    open_with_limits(passphrase, blob, &KdfLimits::STANDARD)
}

/// Opens a blob made by [`seal`], accepting KDF parameters within `limits`. Cheap checks
/// (structure, checksum, bounds) all run before the KDF.
pub fn open_with_limits(
    passphrase: &[u8],
    blob: &[u8],
    limits: &KdfLimits,
) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let min = HEADER_LEN + TAG_LEN + CHECKSUM_LEN;
    let max = min + MAX_SECRET_LEN;
    if blob.len() < min {
        return Err(DecodeError::Truncated {
            needed: min,
            remaining: blob.len(),
        }
        .into());
    }
    if blob.len() > max {
        return Err(DecodeError::TooLong {
            what: "key store",
            max,
            got: blob.len(),
        }
        .into());
    }
    let (body, sum) = blob
        .split_at_checked(blob.len() - CHECKSUM_LEN)
        .ok_or(DecodeError::Invalid("key store length"))?;
    let mut r = Reader::new(body);
    let header = Header::decode(&mut r)?;
    let aad = body
        .get(..HEADER_LEN)
        .ok_or(DecodeError::Invalid("key store header"))?;
    let ciphertext = r.rest();
    let (ct, tag) = ciphertext
        .split_at_checked(ciphertext.len().saturating_sub(TAG_LEN))
        .ok_or(DecodeError::Invalid("key store ciphertext"))?;
    if tag.len() != TAG_LEN {
        return Err(DecodeError::Invalid("key store tag").into());
    }
    if checksum(body).as_slice() != sum {
        return Err(KeystoreError::Corrupt("checksum mismatch"));
    }
    limits.check(&header.params)?;

    let keys = derive(passphrase, &header.salt, &header.params)?;
    if !bool::from(keys.check.ct_eq(&header.check)) {
        return Err(KeystoreError::WrongPassphrase);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(ct.len()));
    out.extend_from_slice(ct);
    keys.aead
        .decrypt_in_place_detached(
            Nonce::from_slice(&header.nonce),
            aad,
            out.as_mut_slice(),
            Tag::from_slice(tag),
        )
        .map_err(|_| KeystoreError::Corrupt("authentication failed"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::UserIdentity;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const LIGHT: KdfParams = KdfParams::insecure_for_tests_only(64, 1, 1);
    const TEST: KdfLimits = KdfLimits::INSECURE_TEST_ONLY;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(11)
    }

    fn sealed() -> Vec<u8> {
        seal(&mut rng(), b"correct horse", b"the secret bytes", &LIGHT).unwrap()
    }

    /// Rewrites the trailing checksum, as a deliberate editor would.
    fn fix_checksum(blob: &mut [u8]) {
        let n = blob.len() - CHECKSUM_LEN;
        let sum = checksum(&blob[..n]);
        blob[n..].copy_from_slice(&sum);
    }

    #[test]
    fn round_trip_and_layout() {
        let blob = sealed();
        assert_eq!(blob.len(), HEADER_LEN + 16 + TAG_LEN + CHECKSUM_LEN);
        assert_eq!(blob[0], KEYSTORE_VERSION);
        assert!(!blob.windows(6).any(|w| w == b"secret"));
        let out = open_with_limits(b"correct horse", &blob, &TEST).unwrap();
        assert_eq!(out.as_slice(), b"the secret bytes");
        // Fresh salt and nonce every time.
        let again = seal(
            &mut StdRng::seed_from_u64(12),
            b"correct horse",
            b"the secret bytes",
            &LIGHT,
        )
        .unwrap();
        assert_ne!(blob, again);
    }

    #[test]
    fn wrong_passphrase_is_reported_as_such() {
        let blob = sealed();
        assert_eq!(
            open_with_limits(b"correct horsf", &blob, &TEST),
            Err(KeystoreError::WrongPassphrase)
        );
        assert_eq!(
            open_with_limits(b"", &blob, &TEST),
            Err(KeystoreError::WrongPassphrase)
        );
    }

    #[test]
    fn every_bit_flip_is_an_error_and_never_wrong_passphrase() {
        let blob = sealed();
        for i in 0..blob.len() * 8 {
            let mut b = blob.clone();
            b[i / 8] ^= 1 << (i % 8);
            match open_with_limits(b"correct horse", &b, &TEST) {
                Err(KeystoreError::Corrupt(_)) | Err(KeystoreError::Decode(_)) => {}
                other => panic!("bit {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn edits_with_fixed_checksum_are_caught() {
        let blob = sealed();
        // Ciphertext edit: the AEAD catches it.
        let mut b = blob.clone();
        b[HEADER_LEN] ^= 1;
        fix_checksum(&mut b);
        assert_eq!(
            open_with_limits(b"correct horse", &b, &TEST),
            Err(KeystoreError::Corrupt("authentication failed"))
        );
        // Nonce edit (header, bound as associated data).
        let mut b = blob.clone();
        b[HEADER_LEN - 1] ^= 1;
        fix_checksum(&mut b);
        assert_eq!(
            open_with_limits(b"correct horse", &b, &TEST),
            Err(KeystoreError::Corrupt("authentication failed"))
        );
        // Salt edit: indistinguishable from a wrong passphrase (documented).
        let mut b = blob.clone();
        b[14] ^= 1;
        fix_checksum(&mut b);
        assert_eq!(
            open_with_limits(b"correct horse", &b, &TEST),
            Err(KeystoreError::WrongPassphrase)
        );
    }

    #[test]
    fn truncated_and_extended_blobs_are_errors() {
        let blob = sealed();
        for n in 0..blob.len() {
            assert!(open_with_limits(b"correct horse", &blob[..n], &TEST).is_err());
        }
        let mut long = blob.clone();
        long.push(0);
        assert!(matches!(
            open_with_limits(b"correct horse", &long, &TEST),
            Err(KeystoreError::Corrupt("checksum mismatch"))
        ));
    }

    #[test]
    fn parameter_bounds_are_enforced_before_the_kdf() {
        // Weak parameters: refused by the standard limits even with the right passphrase.
        let blob = sealed();
        assert!(matches!(
            open(b"correct horse", &blob),
            Err(KeystoreError::ParamOutOfRange {
                what: "m_cost_kib",
                got: 64,
                ..
            })
        ));
        // Absurd parameters from a hostile file: refused instantly, no 4 TiB allocation.
        for (offset, what) in [(2, "m_cost_kib"), (6, "t_cost"), (10, "p_cost")] {
            let mut b = blob.clone();
            // Start from the default parameters, then make one of them absurd.
            b[2..6].copy_from_slice(&(64u32 * 1024).to_be_bytes());
            b[6..10].copy_from_slice(&3u32.to_be_bytes());
            b[10..14].copy_from_slice(&1u32.to_be_bytes());
            b[offset..offset + 4].copy_from_slice(&u32::MAX.to_be_bytes());
            fix_checksum(&mut b);
            let start = std::time::Instant::now();
            match open(b"correct horse", &b) {
                Err(KeystoreError::ParamOutOfRange { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{what}: {other:?}"),
            }
            assert!(start.elapsed().as_millis() < 500);
        }
        // 1 GiB with 10 passes is within each bound but over the total work bound.
        let heavy = KdfParams::insecure_for_tests_only(1024 * 1024, 10, 1);
        assert!(matches!(
            KdfLimits::STANDARD.check(&heavy),
            Err(KeystoreError::ParamOutOfRange {
                what: "m_cost_kib * t_cost",
                ..
            })
        ));
        assert!(KdfParams::new(64, 1, 1).is_err());
        assert_eq!(KdfParams::new(64 * 1024, 3, 1), Ok(KdfParams::DEFAULT));
        KdfLimits::STANDARD.check(&KdfParams::DEFAULT).unwrap();
        // Unknown KDF id.
        let mut b = blob.clone();
        b[1] = 2;
        fix_checksum(&mut b);
        assert!(matches!(
            open_with_limits(b"correct horse", &b, &TEST),
            Err(KeystoreError::Decode(DecodeError::UnknownTag { .. }))
        ));
    }

    #[test]
    fn default_params_seal_a_user_identity() {
        let mut rng = rng();
        let id = UserIdentity::generate(&mut rng, "laptop", 1).unwrap();
        let start = std::time::Instant::now();
        let blob = seal(
            &mut rng,
            b"pass phrase",
            &id.to_secret_bytes(),
            &KdfParams::DEFAULT,
        )
        .unwrap();
        let sealed_in = start.elapsed();
        let opened = open(b"pass phrase", &blob).unwrap();
        let back = UserIdentity::from_secret_bytes(&opened).unwrap();
        assert_eq!(back.root_public(), id.root_public());
        assert_eq!(back.certificate(), id.certificate());
        eprintln!("Argon2id 64 MiB t=3 seal: {sealed_in:?}");
    }

    #[test]
    fn oversized_secret_is_refused() {
        let big = vec![0u8; MAX_SECRET_LEN + 1];
        assert_eq!(
            seal(&mut rng(), b"p", &big, &LIGHT),
            Err(KeystoreError::SecretTooLong {
                max: MAX_SECRET_LEN,
                got: MAX_SECRET_LEN + 1
            })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn prop_round_trip(seed: u64, pass in proptest::collection::vec(any::<u8>(), 0..40), secret in proptest::collection::vec(any::<u8>(), 0..300)) {
            let blob = seal(&mut StdRng::seed_from_u64(seed), &pass, &secret, &LIGHT).unwrap();
            let out = open_with_limits(&pass, &blob, &TEST).unwrap();
            prop_assert_eq!(out.as_slice(), &secret[..]);
        }

        #[test]
        fn prop_open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), fix: bool) {
            let mut b = bytes;
            if fix && b.len() >= CHECKSUM_LEN {
                fix_checksum(&mut b);
            }
            let _ = open_with_limits(b"p", &b, &TEST);
        }
    }
}
