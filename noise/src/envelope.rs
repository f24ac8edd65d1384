//! The sealed envelope: how every guild message travels.
//!
//! A guild message is *signed, then encrypted*: the sender's device signature sits inside the
//! ciphertext, so forwarders (gossipsub peers, relays) learn neither who wrote it nor what it
//! says, while every member who decrypts it can check that the claimed member wrote exactly these
//! bytes for exactly this guild, epoch and ratchet position.
//!
//! ```text
//! wire   = version(1) || header || ciphertext
//! header = epoch(u64) || sender_tag([16]) || generation(u32)            -- in clear, 28 bytes
//! plain  = sender device key(32) || signature(64) || payload_len(u32) || payload || zero padding
//! ```
//!
//! * `epoch` and `generation` tell a receiver which key to use (the DCGKA epoch and the position
//!   in the sender's message ratchet); `sender_tag` is an opaque per-epoch tag for the sender
//!   that only members can map to a device (for example a keyed hash of the sender under the
//!   epoch secret). None of them identifies a user to an outsider.
//! * The signature covers a label, the caller's `context` (for example the guild and channel
//!   ids, which never travel in clear), the header and the payload, so an envelope cannot be
//!   replayed into another guild, epoch or position, nor re-wrapped by another member.
//! * The AEAD key is a **one-time** key from the sender's ratchet. The ChaCha20-Poly1305 key and
//!   nonce are derived from it and the header with HKDF, so a key reused by mistake with another
//!   header still never repeats a (key, nonce) pair. The header is the associated data.
//! * The plaintext is padded with zeros to a size bucket ([`padded_len`]), so ciphertext sizes
//!   reveal only a coarse length class. The decoder insists that padding is all zeros.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{DecodeError, Reader, Writer};
use crate::keys::{
    DevicePublicKey, DeviceSigningKey, PrecomputedDeviceKey, SigLabel, Signature, SignatureError,
};
use crate::secret::{Secret32, hkdf_sha256};

/// Envelope wire version.
pub const VERSION: u8 = 1;
/// Largest payload an envelope carries: the plaintext then pads to exactly 60 KiB, so the whole
/// envelope (61,485 bytes) stays well inside gossipsub's default 64 KiB message limit.
pub const MAX_PAYLOAD: usize = 60 * 1024 - INNER_FIXED;
/// Header bytes after the version byte.
pub const HEADER_LEN: usize = 8 + 16 + 4;
const TAG_LEN: usize = 16;
const INNER_FIXED: usize = 32 + 64 + 4;
const SIG_LABEL: SigLabel = SigLabel("SecureComm/envelope/sign v1");
const KDF_LABEL: &[u8] = b"SecureComm/envelope/aead v1";
const SMALLEST_BUCKET: usize = 256;

/// The clear part of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// Key-agreement epoch the message key belongs to.
    pub epoch: u64,
    /// Opaque per-epoch tag of the sender, meaningful to members only.
    pub sender_tag: [u8; 16],
    /// Position in the sender's message ratchet.
    pub generation: u32,
}

impl EnvelopeHeader {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.epoch);
        w.put(&self.sender_tag);
        w.u32(self.generation);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            epoch: r.u64()?,
            sender_tag: r.array()?,
            generation: r.u32()?,
        })
    }
}

/// Why an envelope could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("payload too large: at most {MAX_PAYLOAD} bytes, got {0}")]
    PayloadTooLarge(usize),
    /// The bytes are not a well-formed envelope.
    #[error("malformed envelope: {0}")]
    Decode(#[from] DecodeError),
    /// Authentication failed: wrong key, or the ciphertext or header was altered.
    #[error("envelope does not decrypt under this key (tampered or wrong key)")]
    Decrypt,
    /// The plaintext decrypted but its padding was not all zeros.
    #[error("envelope padding is not canonical")]
    BadPadding,
    /// The inner signature does not verify for the claimed sender.
    #[error("envelope signature invalid: {0}")]
    Signature(#[from] SignatureError),
    /// The envelope names another signing device than the one the caller expected
    /// ([`open_from`]).
    #[error("envelope signed by another device than expected")]
    WrongSender,
}

/// A decrypted, verified envelope.
#[derive(Debug)]
pub struct Opened {
    /// The clear header it came with.
    pub header: EnvelopeHeader,
    /// The device that signed it. Callers must still check that this device is the member the
    /// header's `sender_tag` and epoch stand for, and that it may post where it posted.
    pub sender: DevicePublicKey,
    /// The payload. Zeroized on drop.
    pub payload: Zeroizing<Vec<u8>>,
}

/// The size the plaintext is padded to: the next power of two from 256 bytes up to 16 KiB, then
/// the next multiple of 4 KiB. Padding overhead is below 2x for small messages and below 25% above
/// 16 KiB.
pub fn padded_len(inner_len: usize) -> usize {
    if inner_len <= SMALLEST_BUCKET {
        SMALLEST_BUCKET
    } else if inner_len <= 16 * 1024 {
        inner_len.next_power_of_two()
    } else {
        inner_len.div_ceil(4096) * 4096
    }
}

fn aead_for(key: &Secret32, header_bytes: &[u8]) -> (ChaCha20Poly1305, Nonce) {
    let okm = Zeroizing::new(hkdf_sha256::<44>(
        Some(header_bytes),
        key.expose(),
        KDF_LABEL,
    ));
    let (k, n) = okm.split_at(32);
    (
        ChaCha20Poly1305::new(Key::from_slice(k)),
        *Nonce::from_slice(n),
    )
}

fn signed_message(context: &[u8], header_bytes: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(context.len() + header_bytes.len() + payload.len() + 8);
    w.bytes32(context);
    w.put(header_bytes);
    w.bytes32(payload);
    w.into_bytes()
}

/// Seals `payload` from `signer` under the one-time `key`.
///
/// `context` is signed but not sent: the receiver must pass the same bytes to [`open`].
pub fn seal(
    key: &Secret32,
    header: &EnvelopeHeader,
    context: &[u8],
    signer: &DeviceSigningKey,
    payload: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(EnvelopeError::PayloadTooLarge(payload.len()));
    }
    let mut hw = Writer::with_capacity(1 + HEADER_LEN);
    hw.u8(VERSION);
    header.encode(&mut hw);
    let header_bytes = hw.into_bytes();
    let sig = signer.sign(SIG_LABEL, &signed_message(context, &header_bytes, payload));

    let inner_len = INNER_FIXED + payload.len();
    let padded = padded_len(inner_len);
    let mut out = Vec::with_capacity(header_bytes.len() + padded + TAG_LEN);
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(signer.public().as_bytes());
    out.extend_from_slice(&sig.0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(header_bytes.len() + padded, 0);

    let (aead, nonce) = aead_for(key, &header_bytes);
    let (head, body) = out.split_at_mut(header_bytes.len());
    let tag = aead
        .encrypt_in_place_detached(&nonce, head, body)
        .map_err(|_| EnvelopeError::Decrypt)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Reads the clear header so the receiver can find the key, without decrypting.
pub fn peek_header(bytes: &[u8]) -> Result<EnvelopeHeader, EnvelopeError> {
    let mut r = Reader::new(bytes);
    r.version("envelope", VERSION)?;
    Ok(EnvelopeHeader::decode(&mut r)?)
}

/// Decrypts and verifies an envelope. Any change to any byte is rejected.
///
/// The sender's device key is parsed (point decompression, small-order check) from the
/// plaintext. A receiver that already knows who must have sent it should call [`open_from`].
pub fn open(key: &Secret32, context: &[u8], bytes: &[u8]) -> Result<Opened, EnvelopeError> {
    open_inner(key, context, bytes, Expected::Any)
}

/// Like [`open`], for a receiver that already knows which device must have signed the envelope
/// (for example from the sender tag): the 32 key bytes inside the ciphertext are compared with
/// `expected` in constant time ([`EnvelopeError::WrongSender`] if they differ), and the
/// signature is verified strictly under `expected`, so the key is not parsed again.
pub fn open_from(
    key: &Secret32,
    context: &[u8],
    bytes: &[u8],
    expected: &DevicePublicKey,
) -> Result<Opened, EnvelopeError> {
    open_inner(key, context, bytes, Expected::Key(expected))
}

/// Like [`open_from`], verifying with the expected device's precomputed table
/// ([`PrecomputedDeviceKey`]): the same checks and the same verdict, faster for a receiver that
/// opens many envelopes from that device.
pub fn open_from_precomputed(
    key: &Secret32,
    context: &[u8],
    bytes: &[u8],
    expected: &PrecomputedDeviceKey,
) -> Result<Opened, EnvelopeError> {
    open_inner(key, context, bytes, Expected::Table(expected))
}

/// Who must have signed an envelope, and how to verify it.
#[derive(Clone, Copy)]
enum Expected<'a> {
    /// Anyone: parse the key from the plaintext.
    Any,
    /// This device.
    Key(&'a DevicePublicKey),
    /// This device, verified with its table.
    Table(&'a PrecomputedDeviceKey),
}

fn open_inner(
    key: &Secret32,
    context: &[u8],
    bytes: &[u8],
    expected: Expected<'_>,
) -> Result<Opened, EnvelopeError> {
    let header = peek_header(bytes)?;
    let header_len = 1 + HEADER_LEN;
    let body_len = bytes.len().saturating_sub(header_len + TAG_LEN);
    if body_len < SMALLEST_BUCKET {
        return Err(DecodeError::Truncated {
            needed: header_len + SMALLEST_BUCKET + TAG_LEN,
            remaining: bytes.len(),
        }
        .into());
    }
    if body_len > padded_len(INNER_FIXED + MAX_PAYLOAD) {
        return Err(DecodeError::TooLong {
            what: "envelope",
            max: padded_len(INNER_FIXED + MAX_PAYLOAD),
            got: body_len,
        }
        .into());
    }
    let mut r = Reader::new(bytes);
    let header_bytes = r.take(header_len)?;
    let mut body = Zeroizing::new(r.take(body_len)?.to_vec());
    let tag: [u8; TAG_LEN] = r.array()?;
    r.finish()?;

    let (aead, nonce) = aead_for(key, header_bytes);
    aead.decrypt_in_place_detached(&nonce, header_bytes, &mut body, Tag::from_slice(&tag))
        .map_err(|_| EnvelopeError::Decrypt)?;

    let mut ir = Reader::new(&body);
    let sender_bytes: [u8; 32] = ir.array()?;
    let sender = match expected {
        Expected::Key(e) => *e,
        Expected::Table(t) => *t.key(),
        Expected::Any => DevicePublicKey::from_bytes(&sender_bytes)?,
    };
    if !bool::from(sender.as_bytes().ct_eq(&sender_bytes)) {
        return Err(EnvelopeError::WrongSender);
    }
    let sig = Signature(ir.array()?);
    let payload = ir.bytes32("payload", MAX_PAYLOAD)?;
    let padding = ir.rest();
    if padding.iter().any(|&b| b != 0) || padded_len(INNER_FIXED + payload.len()) != body.len() {
        return Err(EnvelopeError::BadPadding);
    }
    let signed = signed_message(context, header_bytes, payload);
    match expected {
        Expected::Table(t) => t.verify(SIG_LABEL, &signed, &sig)?,
        Expected::Key(_) | Expected::Any => sender.verify(SIG_LABEL, &signed, &sig)?,
    }
    Ok(Opened {
        header,
        sender,
        payload: Zeroizing::new(payload.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fixture() -> (Secret32, EnvelopeHeader, DeviceSigningKey) {
        let key = Secret32::from_bytes([9; 32]);
        let header = EnvelopeHeader {
            epoch: 7,
            sender_tag: [3; 16],
            generation: 42,
        };
        (key, header, DeviceSigningKey::from_seed(&[1; 32]))
    }

    #[test]
    fn round_trip_and_size_buckets() {
        let (key, header, signer) = fixture();
        let sealed = seal(&key, &header, b"guild/chan", &signer, b"hello").unwrap();
        assert_eq!(sealed.len(), 1 + HEADER_LEN + 256 + TAG_LEN);
        let opened = open(&key, b"guild/chan", &sealed).unwrap();
        assert_eq!(&opened.payload[..], b"hello");
        assert_eq!(opened.sender, signer.public());
        assert_eq!(opened.header, header);
        // Two payloads in the same bucket have the same ciphertext length.
        let other = seal(&key, &header, b"guild/chan", &signer, &[0u8; 100]).unwrap();
        assert_eq!(other.len(), sealed.len());
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let (key, header, signer) = fixture();
        let sealed = seal(&key, &header, b"ctx", &signer, b"attack at dawn").unwrap();
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                open(&key, b"ctx", &bad).is_err(),
                "flip of bit {i} accepted"
            );
        }
    }

    #[test]
    fn wrong_key_context_truncation_and_extension_rejected() {
        let (key, header, signer) = fixture();
        let sealed = seal(&key, &header, b"ctx", &signer, b"x").unwrap();
        assert_eq!(
            open(&Secret32::from_bytes([8; 32]), b"ctx", &sealed).unwrap_err(),
            EnvelopeError::Decrypt
        );
        assert!(matches!(
            open(&key, b"other", &sealed).unwrap_err(),
            EnvelopeError::Signature(_)
        ));
        assert!(open(&key, b"ctx", &sealed[..sealed.len() - 1]).is_err());
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open(&key, b"ctx", &longer).is_err());
        assert!(open(&key, b"ctx", &[]).is_err());
    }

    /// An envelope that names `claimed` as sender but carries `signer`'s signature over "ctx",
    /// encrypted correctly: what a member who holds the key could build by hand.
    fn forge_in_slot(
        key: &Secret32,
        header: &EnvelopeHeader,
        claimed: &DeviceSigningKey,
        signer: &DeviceSigningKey,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut hw = Writer::new();
        hw.u8(VERSION);
        header.encode(&mut hw);
        let header_bytes = hw.into_bytes();
        let sig = signer.sign(SIG_LABEL, &signed_message(b"ctx", &header_bytes, payload));
        let mut body = Vec::new();
        body.extend_from_slice(claimed.public().as_bytes());
        body.extend_from_slice(&sig.0);
        body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        body.extend_from_slice(payload);
        body.resize(256, 0);
        let (aead, nonce) = aead_for(key, &header_bytes);
        let tag = aead
            .encrypt_in_place_detached(&nonce, &header_bytes, &mut body)
            .unwrap();
        let mut forged = header_bytes;
        forged.extend_from_slice(&body);
        forged.extend_from_slice(&tag);
        forged
    }

    /// A member who can decrypt must not be able to re-sign or re-wrap another member's message:
    /// replacing the sender key inside the ciphertext breaks the signature.
    #[test]
    fn impersonation_by_a_member_is_rejected() {
        let (key, header, alice) = fixture();
        let mallory = DeviceSigningKey::from_seed(&[2; 32]);
        // Mallory signs her text but claims Alice as the sender: build the inner by hand.
        let forged = forge_in_slot(&key, &header, &alice, &mallory, b"pay me");
        assert!(matches!(
            open(&key, b"ctx", &forged).unwrap_err(),
            EnvelopeError::Signature(_)
        ));
    }

    #[test]
    fn open_from_accepts_the_expected_sender_only() {
        let (key, header, signer) = fixture();
        let sealed = seal(&key, &header, b"ctx", &signer, b"hello").unwrap();
        let opened = open_from(&key, b"ctx", &sealed, &signer.public()).unwrap();
        assert_eq!(&opened.payload[..], b"hello");
        assert_eq!(opened.sender, signer.public());
        assert_eq!(opened.header, header);
        let other = DeviceSigningKey::from_seed(&[2; 32]).public();
        assert_eq!(
            open_from(&key, b"ctx", &sealed, &other).unwrap_err(),
            EnvelopeError::WrongSender
        );
        // Still authenticated and context-bound.
        assert_eq!(
            open_from(
                &Secret32::from_bytes([8; 32]),
                b"ctx",
                &sealed,
                &signer.public()
            )
            .unwrap_err(),
            EnvelopeError::Decrypt
        );
        assert!(matches!(
            open_from(&key, b"other", &sealed, &signer.public()).unwrap_err(),
            EnvelopeError::Signature(_)
        ));
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                open_from(&key, b"ctx", &bad, &signer.public()).is_err(),
                "flip of bit {i} accepted"
            );
        }
    }

    /// `open_from_precomputed` gives `open_from`'s result on the honest envelope, on every
    /// single-bit flip, on a wrong expected sender, a wrong key and a wrong context, and on a
    /// member signing in another's slot.
    #[test]
    fn open_from_precomputed_matches_open_from() {
        let (key, header, signer) = fixture();
        let table = PrecomputedDeviceKey::new(&signer.public());
        let sealed = seal(&key, &header, b"ctx", &signer, b"hello").unwrap();
        let opened = open_from_precomputed(&key, b"ctx", &sealed, &table).unwrap();
        assert_eq!(&opened.payload[..], b"hello");
        assert_eq!(opened.sender, signer.public());
        assert_eq!(opened.header, header);
        let same = |k: &Secret32, ctx: &[u8], bytes: &[u8]| {
            let a = open_from(k, ctx, bytes, &signer.public()).map(|o| o.payload.to_vec());
            let b = open_from_precomputed(k, ctx, bytes, &table).map(|o| o.payload.to_vec());
            assert_eq!(a, b);
            a.is_ok()
        };
        assert!(same(&key, b"ctx", &sealed));
        assert!(!same(&key, b"other", &sealed));
        assert!(!same(&Secret32::from_bytes([8; 32]), b"ctx", &sealed));
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(!same(&key, b"ctx", &bad), "flip of bit {i} accepted");
        }
        let mallory = DeviceSigningKey::from_seed(&[2; 32]);
        let theirs = seal(&key, &header, b"ctx", &mallory, b"pay me").unwrap();
        assert_eq!(
            open_from_precomputed(&key, b"ctx", &theirs, &table).unwrap_err(),
            EnvelopeError::WrongSender
        );
        let forged = forge_in_slot(&key, &header, &signer, &mallory, b"pay me");
        assert!(matches!(
            open_from_precomputed(&key, b"ctx", &forged, &table).unwrap_err(),
            EnvelopeError::Signature(_)
        ));
    }

    /// Mallory, who can decrypt, writes her own key and signature inside: `open` would accept
    /// it as Mallory's message, `open_from` with the expected sender refuses it. With Alice's key
    /// bytes and Mallory's signature, the signature check under Alice's key refuses it.
    #[test]
    fn open_from_rejects_a_member_signing_in_anothers_slot() {
        let (key, header, alice) = fixture();
        let mallory = DeviceSigningKey::from_seed(&[2; 32]);
        let sealed = seal(&key, &header, b"ctx", &mallory, b"pay me").unwrap();
        assert_eq!(
            open(&key, b"ctx", &sealed).unwrap().sender,
            mallory.public()
        );
        assert_eq!(
            open_from(&key, b"ctx", &sealed, &alice.public()).unwrap_err(),
            EnvelopeError::WrongSender
        );
        let forged = forge_in_slot(&key, &header, &alice, &mallory, b"pay me");
        assert!(matches!(
            open_from(&key, b"ctx", &forged, &alice.public()).unwrap_err(),
            EnvelopeError::Signature(_)
        ));
    }

    #[test]
    fn oversized_payload_refused() {
        let (key, header, signer) = fixture();
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert_eq!(
            seal(&key, &header, b"", &signer, &big).unwrap_err(),
            EnvelopeError::PayloadTooLarge(MAX_PAYLOAD + 1)
        );
        let max = vec![0u8; MAX_PAYLOAD];
        let sealed = seal(&key, &header, b"", &signer, &max).unwrap();
        assert!(sealed.len() <= 64 * 1024);
        assert_eq!(open(&key, b"", &sealed).unwrap().payload.len(), MAX_PAYLOAD);
    }

    #[test]
    fn padding_buckets() {
        assert_eq!(padded_len(1), 256);
        assert_eq!(padded_len(257), 512);
        assert_eq!(padded_len(16 * 1024), 16 * 1024);
        assert_eq!(padded_len(16 * 1024 + 1), 20 * 1024);
    }

    proptest! {
        #[test]
        fn round_trips(payload in proptest::collection::vec(any::<u8>(), 0..3000), epoch: u64, generation: u32, tag: [u8; 16]) {
            let key = Secret32::from_bytes([5; 32]);
            let signer = DeviceSigningKey::from_seed(&[4; 32]);
            let header = EnvelopeHeader { epoch, sender_tag: tag, generation };
            let sealed = seal(&key, &header, b"c", &signer, &payload).unwrap();
            prop_assert_eq!(peek_header(&sealed).unwrap(), header);
            let opened = open(&key, b"c", &sealed).unwrap();
            prop_assert_eq!(&opened.payload[..], &payload[..]);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = open(&Secret32::from_bytes([5; 32]), b"c", &bytes);
            let who = DeviceSigningKey::from_seed(&[4; 32]).public();
            let _ = open_from(&Secret32::from_bytes([5; 32]), b"c", &bytes, &who);
        }
    }
}
