//! Small secret containers and the crate's key-derivation helpers.
//!
//! Every secret is its own type, zeroized on drop, with a `Debug` that never prints key bytes.

use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// 32 secret bytes: a symmetric key, chain key or seed. Zeroized on drop; `Debug` is redacted.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Secret32([u8; 32]);

impl Secret32 {
    /// Wraps bytes that are already secret.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Fresh random bytes.
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        Self(b)
    }

    /// The secret bytes. Callers must not copy them anywhere that outlives this value.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

/// HKDF-SHA256 extract-and-expand into a fixed-size secret. `info` must be a domain-separation
/// label unique to its use (all labels start with `SecureComm/`).
pub fn hkdf_sha256<const N: usize>(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> [u8; N] {
    let hk = Hkdf::<Sha256>::new(salt, ikm);
    let mut out = [0u8; N];
    // HKDF-SHA256 can emit up to 255 * 32 bytes; every N in this crate is far below that, and a
    // failure would leave a zero key, which no test vector accepts.
    if hk.expand(info, &mut out).is_err() {
        out.zeroize();
    }
    out
}

/// HKDF-SHA256 into a [`Secret32`].
pub fn hkdf_secret(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> Secret32 {
    Secret32(hkdf_sha256::<32>(salt, ikm, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret32::from_bytes([0xAB; 32]);
        let d = format!("{s:?}");
        assert!(!d.to_lowercase().contains("ab, ab") && !d.contains("171"));
        assert_eq!(d, "Secret32(<redacted>)");
    }

    /// RFC 5869 Appendix A.1 (SHA-256, basic test case).
    #[test]
    fn hkdf_rfc5869_case1() {
        let ikm = [0x0bu8; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let okm: [u8; 42] = hkdf_sha256(Some(&salt), &ikm, &info);
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    /// RFC 5869 Appendix A.3 (SHA-256, zero-length salt and info).
    #[test]
    fn hkdf_rfc5869_case3() {
        let ikm = [0x0bu8; 22];
        let okm: [u8; 42] = hkdf_sha256(None, &ikm, &[]);
        assert_eq!(
            hex::encode(okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }
}
