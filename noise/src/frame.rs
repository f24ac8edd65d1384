//! Media frame encryption shaped after SFrame (RFC 9605).
//!
//! # Wire format
//!
//! An encrypted frame is `header || ciphertext || tag`, exactly as RFC 9605 §4.3 and §4.4.3
//! describe:
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! +-+-+-+-+-+-+-+-+------------+------------+----------------------+-----------+
//! |X|  K  |Y|  C  |   KID...   |   CTR...   | ChaCha20 ciphertext  | tag (16)  |
//! +-+-+-+-+-+-+-+-+------------+------------+----------------------+-----------+
//! ```
//!
//! `KID` and `CTR` are unsigned integers. A value below 8 sits in the config byte's 3-bit field
//! (flag 0); a larger one follows the config byte big-endian in the fewest bytes that hold it,
//! and the field holds that length minus one (flag 1). The decoder accepts only this minimal
//! form, so every `(KID, CTR)` pair has exactly one header.
//!
//! # Cipher suite
//!
//! [`CIPHER_SUITE`] = `0xF5C1`, from the private-use range `0xF000..=0xFFFF` of the IANA
//! "SFrame Cipher Suites" registry: ChaCha20-Poly1305 (RFC 8439) with HKDF-SHA256, `Nh = 32`,
//! `Nk = 32`, `Nn = 12`, `Nt = 16`.
//!
//! # Keys
//!
//! RFC 9605 §4.4.2, with the suite above:
//!
//! ```text
//! sframe_secret = HKDF-Extract("", base_key)
//! sframe_key    = HKDF-Expand(sframe_secret, "SFrame 1.0 Secret key "  || KID_u64be || suite_u16be, Nk)
//! sframe_salt   = HKDF-Expand(sframe_secret, "SFrame 1.0 Secret salt " || KID_u64be || suite_u16be, Nn)
//! nonce         = sframe_salt XOR CTR (CTR as a big-endian Nn-byte integer)
//! aad           = header || metadata
//! ```
//!
//! Provisioning of `base_key` is ours (the RFC leaves it open). Each call epoch has a 32-byte
//! epoch secret shared by the participants (from group key agreement). Every sender in the epoch
//! has its own base key, so no two senders ever share a (key, nonce) pair:
//!
//! ```text
//! base_key = HKDF-SHA256(salt = none, ikm = epoch_secret,
//!                        info = "SecureComm/frame/sender-base-key v1" || epoch_u64be || sender_index_u8)
//! KID      = (epoch mod 256) << 8 | sender_index        (see [`frame_kid`])
//! ```
//!
//! The KID therefore takes two bytes on the wire (one when it is below 8). The counter starts at
//! 0 for every new key; a new epoch starts on every join and leave, so counters stay small: with
//! counters below 2^24 (93 hours of 20 ms audio frames) the header is at most 6 bytes and the
//! overhead at most 22 bytes per frame. The base key binds the full 64-bit epoch, so when the
//! 8-bit epoch in the KID wraps the receiver simply replaces the key stored under that KID.
//!
//! # What each side stores
//!
//! * [`FrameSender`]: its KID, the derived key and salt, and the next counter. It refuses to
//!   reuse a counter.
//! * [`FrameReceiver`]: for at most `max_keys` KIDs, the derived key and salt and a replay
//!   window of [`REPLAY_WINDOW`] counters. A frame is rejected if its counter is older than the
//!   window or was already accepted; the window moves only after the frame authenticated, so a
//!   forged frame cannot advance it and cause real frames to be dropped.
//!
//! # Guarantees
//!
//! Confidentiality and integrity of the frame, integrity of header and metadata; replay
//! rejection within a sender key. A relay sees the KID (epoch low byte and sender index), the
//! counter and the frame length.

use std::collections::HashMap;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::secret::{Secret32, hkdf_secret};

/// Our private-use SFrame cipher suite id: ChaCha20-Poly1305 with HKDF-SHA256.
pub const CIPHER_SUITE: u16 = 0xF5C1;
/// Key size of the suite's AEAD (`AEAD.Nk`).
pub const NK: usize = 32;
/// Nonce size of the suite's AEAD (`AEAD.Nn`).
pub const NN: usize = 12;
/// Tag size of the suite's AEAD (`AEAD.Nt`).
pub const NT: usize = 16;
/// Longest possible header: config byte, 8-byte KID, 8-byte CTR.
pub const MAX_HEADER_LEN: usize = 17;
/// Number of counters the receiver's replay window covers.
pub const REPLAY_WINDOW: u64 = 128;
/// Largest plaintext frame accepted (a 4K video key frame fits with room to spare).
pub const MAX_FRAME_LEN: usize = 8 * 1024 * 1024;
/// Default bound on the number of KIDs a receiver holds keys for.
pub const DEFAULT_MAX_KEYS: usize = 512;

const KEY_LABEL: &[u8] = b"SFrame 1.0 Secret key ";
const SALT_LABEL: &[u8] = b"SFrame 1.0 Secret salt ";
const BASE_KEY_LABEL: &[u8] = b"SecureComm/frame/sender-base-key v1";

/// Why a frame could not be encrypted or decrypted, or a key not added.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The SFrame header is malformed or not minimally encoded.
    #[error("invalid SFrame header: {0}")]
    Header(#[from] DecodeError),
    /// The frame is shorter than header plus tag.
    #[error("frame too short: expected at least {expected} bytes after the header, got {got}")]
    Truncated {
        /// Bytes needed after the header (the tag).
        expected: usize,
        /// Bytes present after the header.
        got: usize,
    },
    /// The plaintext or ciphertext exceeds [`MAX_FRAME_LEN`].
    #[error("frame too long: at most {max} bytes, got {got}")]
    TooLong {
        /// The bound.
        max: usize,
        /// The length found.
        got: usize,
    },
    /// No key is known for the frame's KID.
    #[error("unknown KID {0:#x}")]
    UnknownKid(u64),
    /// The counter was already accepted for this KID.
    #[error("replayed frame: KID {kid:#x} counter {ctr} already accepted")]
    Replayed {
        /// The frame's KID.
        kid: u64,
        /// The frame's counter.
        ctr: u64,
    },
    /// The counter is older than the replay window.
    #[error("frame too old: KID {kid:#x} counter {ctr}, window starts after {highest} - {window}")]
    TooOld {
        /// The frame's KID.
        kid: u64,
        /// The frame's counter.
        ctr: u64,
        /// The highest counter accepted so far.
        highest: u64,
        /// The window size.
        window: u64,
    },
    /// The tag does not verify: the frame, header or metadata were altered, or the key is wrong.
    #[error("frame authentication failed for KID {kid:#x} counter {ctr}")]
    Authentication {
        /// The frame's KID.
        kid: u64,
        /// The frame's counter.
        ctr: u64,
    },
    /// The sender used every counter value; a new key is needed.
    #[error("frame counter exhausted for KID {0:#x}")]
    CounterExhausted(u64),
    /// The receiver already holds keys for its maximum number of KIDs.
    #[error("too many frame keys: at most {0}")]
    TooManyKeys(usize),
}

/// An SFrame header: key id and counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SframeHeader {
    /// Key id: selects the sender key.
    pub kid: u64,
    /// Per-key frame counter: makes the nonce unique.
    pub ctr: u64,
}

/// Bytes needed to hold `v` big-endian without leading zero bytes (at least 1).
fn min_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    bits.div_ceil(8).max(1)
}

/// Appends the last `len` bytes of `v`'s big-endian form.
fn put_be(out: &mut [u8; MAX_HEADER_LEN], pos: &mut usize, v: u64, len: usize) {
    let be = v.to_be_bytes();
    for (dst, src) in out.iter_mut().skip(*pos).zip(be.iter().skip(8 - len)) {
        *dst = *src;
    }
    *pos += len;
}

/// Reads one KID or CTR field given its flag and 3-bit config value.
fn read_field(
    r: &mut Reader<'_>,
    extended: bool,
    bits: u8,
    what: &'static str,
) -> Result<u64, DecodeError> {
    if !extended {
        return Ok(u64::from(bits));
    }
    let len = usize::from(bits) + 1;
    let bytes = r.take(len)?;
    let value = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    // Minimal encoding: values below 8 live in the config byte, and no leading zero bytes.
    if value < 8 || min_len(value) != len {
        return Err(DecodeError::Invalid(what));
    }
    Ok(value)
}

impl SframeHeader {
    /// Writes the header into `out` and returns its length.
    pub fn encode_to(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        let mut config = 0u8;
        let mut pos = 1;
        if self.kid < 8 {
            config |= (self.kid as u8) << 4;
        } else {
            let len = min_len(self.kid);
            config |= 0x80 | (((len - 1) as u8) << 4);
            put_be(out, &mut pos, self.kid, len);
        }
        if self.ctr < 8 {
            config |= self.ctr as u8;
        } else {
            let len = min_len(self.ctr);
            config |= 0x08 | ((len - 1) as u8);
            put_be(out, &mut pos, self.ctr, len);
        }
        out[0] = config;
        pos
    }

    /// Encoded length of this header.
    pub fn encoded_len(&self) -> usize {
        let field = |v: u64| if v < 8 { 0 } else { min_len(v) };
        1 + field(self.kid) + field(self.ctr)
    }

    /// Parses the header at the start of `frame`; returns it and its encoded length.
    pub fn parse_prefix(frame: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(frame);
        let header = Self::decode(&mut r)?;
        Ok((header, frame.len() - r.remaining()))
    }
}

impl Encode for SframeHeader {
    fn encode(&self, w: &mut Writer) {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let len = self.encode_to(&mut buf);
        w.put(buf.get(..len).unwrap_or(&buf));
    }
}

impl Decode for SframeHeader {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let config = r.u8()?;
        let kid = read_field(
            r,
            config & 0x80 != 0,
            (config >> 4) & 0x07,
            "SFrame KID encoding",
        )?;
        let ctr = read_field(r, config & 0x08 != 0, config & 0x07, "SFrame CTR encoding")?;
        Ok(Self { kid, ctr })
    }
}

/// RFC 9605 §4.4.2 `derive_key_salt` with HKDF-SHA256, generic over the AEAD's `Nk` and `Nn`
/// so the RFC's vectors for other HKDF-SHA256 suites check the same code.
pub(crate) fn derive_key_salt<const K: usize, const N: usize>(
    suite: u16,
    kid: u64,
    base_key: &[u8],
) -> (Zeroizing<[u8; K]>, Zeroizing<[u8; N]>) {
    let hk = Hkdf::<Sha256>::new(None, base_key);
    let mut key = Zeroizing::new([0u8; K]);
    let mut salt = Zeroizing::new([0u8; N]);
    // K and N are at most a few dozen bytes, far below HKDF-SHA256's 255 * 32 limit; a failure
    // would leave zero output, which no test vector accepts.
    if hk
        .expand(&sframe_label(KEY_LABEL, kid, suite), &mut key[..])
        .is_err()
    {
        key.zeroize();
    }
    if hk
        .expand(&sframe_label(SALT_LABEL, kid, suite), &mut salt[..])
        .is_err()
    {
        salt.zeroize();
    }
    (key, salt)
}

/// `prefix || KID as u64 big-endian || cipher suite as u16 big-endian`.
fn sframe_label(prefix: &[u8], kid: u64, suite: u16) -> Vec<u8> {
    let mut label = Vec::with_capacity(prefix.len() + 10);
    label.extend_from_slice(prefix);
    label.extend_from_slice(&kid.to_be_bytes());
    label.extend_from_slice(&suite.to_be_bytes());
    label
}

/// `salt XOR CTR`, with CTR as a big-endian `Nn`-byte integer.
fn frame_nonce(salt: &[u8; NN], ctr: u64) -> Nonce {
    let mut n = *salt;
    for (b, c) in n.iter_mut().skip(NN - 8).zip(ctr.to_be_bytes()) {
        *b ^= c;
    }
    Nonce::from(n)
}

/// The KID for `sender_index` in call epoch `epoch`: `(epoch mod 256) << 8 | sender_index`.
pub fn frame_kid(epoch: u64, sender_index: u8) -> u64 {
    ((epoch & 0xff) << 8) | u64::from(sender_index)
}

/// A sender's SFrame `base_key`. Zeroized on drop; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseKey(Secret32);

impl BaseKey {
    /// Wraps 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Secret32::from_bytes(bytes))
    }

    /// The base key of `sender_index` in call epoch `epoch`, derived from the epoch secret.
    pub fn for_sender(epoch_secret: &Secret32, epoch: u64, sender_index: u8) -> Self {
        let mut info = Vec::with_capacity(BASE_KEY_LABEL.len() + 9);
        info.extend_from_slice(BASE_KEY_LABEL);
        info.extend_from_slice(&epoch.to_be_bytes());
        info.push(sender_index);
        Self(hkdf_secret(None, epoch_secret.expose(), &info))
    }

    fn derive(&self, kid: u64) -> (ChaCha20Poly1305, Zeroizing<[u8; NN]>) {
        let (key, salt) = derive_key_salt::<NK, NN>(CIPHER_SUITE, kid, self.0.expose());
        (ChaCha20Poly1305::new(&(*key).into()), salt)
    }
}

impl std::fmt::Debug for BaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BaseKey(<redacted>)")
    }
}

/// Encrypts one sender's frames under one KID.
pub struct FrameSender {
    kid: u64,
    cipher: ChaCha20Poly1305,
    salt: Zeroizing<[u8; NN]>,
    next_ctr: u64,
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender")
            .field("kid", &self.kid)
            .field("next_ctr", &self.next_ctr)
            .finish_non_exhaustive()
    }
}

impl FrameSender {
    /// A sender for `kid` whose first frame has counter 0. The caller must make sure no other
    /// sender encrypts with the same `base_key`.
    pub fn new(kid: u64, base_key: &BaseKey) -> Self {
        let (cipher, salt) = base_key.derive(kid);
        Self {
            kid,
            cipher,
            salt,
            next_ctr: 0,
        }
    }

    /// The sender for `sender_index` in call epoch `epoch` (see the module docs).
    pub fn for_call(epoch_secret: &Secret32, epoch: u64, sender_index: u8) -> Self {
        let base = BaseKey::for_sender(epoch_secret, epoch, sender_index);
        Self::new(frame_kid(epoch, sender_index), &base)
    }

    /// This sender's KID.
    pub fn kid(&self) -> u64 {
        self.kid
    }

    /// The counter the next frame will carry.
    pub fn next_counter(&self) -> u64 {
        self.next_ctr
    }

    /// Encrypts a frame; `metadata` is authenticated but not sent.
    pub fn encrypt(&mut self, plaintext: &[u8], metadata: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.encrypt_into(plaintext, metadata, &mut out)?;
        Ok(out)
    }

    /// Encrypts a frame into `out` (cleared first), reusing its allocation.
    pub fn encrypt_into(
        &mut self,
        plaintext: &[u8],
        metadata: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        out.clear();
        if plaintext.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLong {
                max: MAX_FRAME_LEN,
                got: plaintext.len(),
            });
        }
        let ctr = self.next_ctr;
        let next = ctr
            .checked_add(1)
            .ok_or(FrameError::CounterExhausted(self.kid))?;
        let header = SframeHeader { kid: self.kid, ctr };
        let mut hbuf = [0u8; MAX_HEADER_LEN];
        let hlen = header.encode_to(&mut hbuf);
        let aad_len = hlen + metadata.len();
        out.reserve(aad_len + plaintext.len() + NT);
        out.extend_from_slice(hbuf.get(..hlen).unwrap_or(&hbuf));
        out.extend_from_slice(metadata);
        out.extend_from_slice(plaintext);
        let (aad, body) = out.split_at_mut(aad_len);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&frame_nonce(&self.salt, ctr), aad, body)
            .map_err(|_| FrameError::TooLong {
                max: MAX_FRAME_LEN,
                got: plaintext.len(),
            })?;
        if !metadata.is_empty() {
            // The metadata was only needed contiguous with the header as AAD; drop it.
            out.copy_within(aad_len.., hlen);
            out.truncate(hlen + plaintext.len());
        }
        out.extend_from_slice(&tag);
        self.next_ctr = next;
        Ok(())
    }
}

/// A sliding window over the last [`REPLAY_WINDOW`] counters of one KID.
#[derive(Debug, Clone, Default)]
struct ReplayWindow {
    /// Highest counter accepted, if any.
    highest: Option<u64>,
    /// Bit `i` set: counter `highest - i` was accepted.
    seen: u128,
}

impl ReplayWindow {
    fn check(&self, kid: u64, ctr: u64) -> Result<(), FrameError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if ctr > highest {
            return Ok(());
        }
        let age = highest - ctr;
        if age >= REPLAY_WINDOW {
            return Err(FrameError::TooOld {
                kid,
                ctr,
                highest,
                window: REPLAY_WINDOW,
            });
        }
        if self.seen & (1u128 << age) != 0 {
            return Err(FrameError::Replayed { kid, ctr });
        }
        Ok(())
    }

    /// Marks `ctr` as accepted; call only after [`Self::check`] passed and the frame verified.
    fn accept(&mut self, ctr: u64) {
        match self.highest {
            Some(highest) if ctr <= highest => {
                let age = highest - ctr;
                if age < REPLAY_WINDOW {
                    self.seen |= 1u128 << age;
                }
            }
            Some(highest) => {
                let shift = ctr - highest;
                self.seen = if shift >= REPLAY_WINDOW {
                    0
                } else {
                    self.seen << shift
                };
                self.seen |= 1;
                self.highest = Some(ctr);
            }
            None => {
                self.seen = 1;
                self.highest = Some(ctr);
            }
        }
    }
}

struct ReceiveKey {
    cipher: ChaCha20Poly1305,
    salt: Zeroizing<[u8; NN]>,
    window: ReplayWindow,
}

/// A decrypted frame and where it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct DecryptedFrame {
    /// The KID the frame was encrypted under.
    pub kid: u64,
    /// The frame's counter (a sequence number for the jitter buffer).
    pub ctr: u64,
    /// The media payload.
    pub plaintext: Vec<u8>,
}

impl std::fmt::Debug for DecryptedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptedFrame")
            .field("kid", &self.kid)
            .field("ctr", &self.ctr)
            .field("len", &self.plaintext.len())
            .finish()
    }
}

/// Decrypts frames from every sender of a call, with a replay window per KID.
pub struct FrameReceiver {
    keys: HashMap<u64, ReceiveKey>,
    max_keys: usize,
}

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().copied().collect();
        kids.sort_unstable();
        f.debug_struct("FrameReceiver")
            .field("kids", &kids)
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

impl Default for FrameReceiver {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_KEYS)
    }
}

impl FrameReceiver {
    /// A receiver holding keys for at most `max_keys` KIDs.
    pub fn new(max_keys: usize) -> Self {
        Self {
            keys: HashMap::new(),
            max_keys,
        }
    }

    /// Installs (or replaces, with a fresh replay window) the key for `kid`.
    pub fn add_key(&mut self, kid: u64, base_key: &BaseKey) -> Result<(), FrameError> {
        if !self.keys.contains_key(&kid) && self.keys.len() >= self.max_keys {
            return Err(FrameError::TooManyKeys(self.max_keys));
        }
        let (cipher, salt) = base_key.derive(kid);
        self.keys.insert(
            kid,
            ReceiveKey {
                cipher,
                salt,
                window: ReplayWindow::default(),
            },
        );
        Ok(())
    }

    /// Forgets the key for `kid`; returns whether there was one.
    pub fn remove_key(&mut self, kid: u64) -> bool {
        self.keys.remove(&kid).is_some()
    }

    /// Keeps only the KIDs for which `keep` returns true (for example, the current epoch's).
    pub fn retain_keys(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.keys.retain(|kid, _| keep(*kid));
    }

    /// Number of KIDs with a key.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Decrypts a frame; `metadata` must equal what the sender authenticated.
    pub fn decrypt(&mut self, frame: &[u8], metadata: &[u8]) -> Result<DecryptedFrame, FrameError> {
        let mut plaintext = Vec::new();
        let header = self.decrypt_into(frame, metadata, &mut plaintext)?;
        Ok(DecryptedFrame {
            kid: header.kid,
            ctr: header.ctr,
            plaintext,
        })
    }

    /// Decrypts a frame into `out` (cleared first, left empty on error), reusing its
    /// allocation; returns the frame's header.
    pub fn decrypt_into(
        &mut self,
        frame: &[u8],
        metadata: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<SframeHeader, FrameError> {
        out.clear();
        let (header, hlen) = SframeHeader::parse_prefix(frame)?;
        let (header_bytes, body) = frame.split_at(hlen);
        if body.len() < NT {
            return Err(FrameError::Truncated {
                expected: NT,
                got: body.len(),
            });
        }
        if body.len() - NT > MAX_FRAME_LEN {
            return Err(FrameError::TooLong {
                max: MAX_FRAME_LEN,
                got: body.len() - NT,
            });
        }
        let (ct, tag) = body.split_at(body.len() - NT);
        let SframeHeader { kid, ctr } = header;
        let key = self.keys.get_mut(&kid).ok_or(FrameError::UnknownKid(kid))?;
        key.window.check(kid, ctr)?;

        let aad_len = hlen + metadata.len();
        out.reserve(aad_len + ct.len());
        out.extend_from_slice(header_bytes);
        out.extend_from_slice(metadata);
        out.extend_from_slice(ct);
        let (aad, buf) = out.split_at_mut(aad_len);
        let verified = key.cipher.decrypt_in_place_detached(
            &frame_nonce(&key.salt, ctr),
            aad,
            buf,
            Tag::from_slice(tag),
        );
        if verified.is_err() {
            out.clear();
            return Err(FrameError::Authentication { kid, ctr });
        }
        key.window.accept(ctr);
        out.drain(..aad_len);
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 9605 Appendix C.1, every case: `kid ctr header`, hex.
    const RFC9605_HEADERS: &str = include_str!("../testdata/rfc9605_headers.txt");

    fn rfc_header_vectors() -> Vec<(u64, u64, Vec<u8>)> {
        RFC9605_HEADERS
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    u64::from_str_radix(f[0], 16).unwrap(),
                    u64::from_str_radix(f[1], 16).unwrap(),
                    hex::decode(f[2]).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn rfc9605_header_vectors_encode_and_decode() {
        let vectors = rfc_header_vectors();
        assert_eq!(vectors.len(), 17 * 17, "the appendix has 289 header cases");
        for (kid, ctr, expected) in vectors {
            let h = SframeHeader { kid, ctr };
            assert_eq!(h.to_bytes(), expected, "encode kid {kid:#x} ctr {ctr:#x}");
            assert_eq!(h.encoded_len(), expected.len());
            assert_eq!(SframeHeader::from_bytes(&expected).unwrap(), h);
        }
    }

    #[test]
    fn non_minimal_headers_are_rejected() {
        // KID 5 in an extension byte, CTR 0x00ff in two bytes, KID with a leading zero byte.
        for bad in ["8005", "09_00ff", "9000ff"] {
            let bytes = hex::decode(bad.replace('_', "")).unwrap();
            assert!(SframeHeader::from_bytes(&bytes).is_err(), "{bad}");
        }
        // Truncated extension fields.
        for bad in ["", "08", "0a0100", "90ff"] {
            assert!(SframeHeader::from_bytes(&hex::decode(bad).unwrap()).is_err());
        }
    }

    struct DerivationVector {
        suite: u16,
        key_label: &'static str,
        salt_label: &'static str,
        key: &'static str,
        salt: &'static str,
        nonce: &'static str,
    }

    /// RFC 9605 Appendix C.3, the cases whose KDF is HKDF-SHA256 (suites 0x0001..=0x0004):
    /// kid 0x123, ctr 0x4567, base_key 000102..0f. The AES encryptions of those cases are not
    /// checked: this crate has no AES; only the key schedule, nonce and header are shared.
    const DERIVATIONS: [DerivationVector; 4] = [
        DerivationVector {
            suite: 0x0001,
            key_label: "534672616d6520312e3020536563726574206b65792000000000000001230001",
            salt_label: "534672616d6520312e30205365637265742073616c742000000000000001230001",
            key: "3f7d9a7c83ae8e1c8a11ae695ab59314b367e359fadac7b9c46b2bc6f81f46e16b96f0811868d59402b7e870102720b3",
            salt: "50b29329a04dc0f184ac3168",
            nonce: "50b29329a04dc0f184ac740f",
        },
        DerivationVector {
            suite: 0x0002,
            key_label: "534672616d6520312e3020536563726574206b65792000000000000001230002",
            salt_label: "534672616d6520312e30205365637265742073616c742000000000000001230002",
            key: "e2ec5c797540310483b16bf6e7a570d2a27d192fe869c7ccd8584a8d9dab91549fbe553f5113461ec6aa83bf3865553e",
            salt: "e68ac8dd3d02fbcd368c5577",
            nonce: "e68ac8dd3d02fbcd368c1010",
        },
        DerivationVector {
            suite: 0x0003,
            key_label: "534672616d6520312e3020536563726574206b65792000000000000001230003",
            salt_label: "534672616d6520312e30205365637265742073616c742000000000000001230003",
            key: "2c5703089cbb8c583475e4fc461d97d18809df79b6d550f78eb6d50ffa80d89211d57909934f46f5405e38cd583c69fe",
            salt: "38c16e4f5159700c00c7f350",
            nonce: "38c16e4f5159700c00c7b637",
        },
        DerivationVector {
            suite: 0x0004,
            key_label: "534672616d6520312e3020536563726574206b65792000000000000001230004",
            salt_label: "534672616d6520312e30205365637265742073616c742000000000000001230004",
            key: "d34f547f4ca4f9a7447006fe7fcbf768",
            salt: "75234edefe07819026751816",
            nonce: "75234edefe07819026755d71",
        },
    ];

    #[test]
    fn rfc9605_key_derivation_vectors() {
        let base_key = hex::decode("000102030405060708090a0b0c0d0e0f").unwrap();
        let (kid, ctr) = (0x123, 0x4567);
        let (secret, _) = Hkdf::<Sha256>::extract(None, &base_key);
        assert_eq!(
            hex::encode(secret),
            "d926952ca8b7ec4a95941d1ada3a5203ceff8cceee34f574d23909eb314c40c0"
        );
        for v in &DERIVATIONS {
            assert_eq!(
                hex::encode(sframe_label(KEY_LABEL, kid, v.suite)),
                v.key_label
            );
            assert_eq!(
                hex::encode(sframe_label(SALT_LABEL, kid, v.suite)),
                v.salt_label
            );
            let salt = if v.suite == 0x0004 {
                let (key, salt) = derive_key_salt::<16, 12>(v.suite, kid, &base_key);
                assert_eq!(hex::encode(*key), v.key, "suite {:#06x}", v.suite);
                salt
            } else {
                let (key, salt) = derive_key_salt::<48, 12>(v.suite, kid, &base_key);
                assert_eq!(hex::encode(*key), v.key, "suite {:#06x}", v.suite);
                salt
            };
            assert_eq!(hex::encode(*salt), v.salt, "suite {:#06x}", v.suite);
            assert_eq!(hex::encode(frame_nonce(&salt, ctr)), v.nonce);
        }
        // The AAD (and ciphertext prefix) of these cases starts with this header.
        assert_eq!(
            hex::encode(SframeHeader { kid, ctr }.to_bytes()),
            "9901234567"
        );
    }

    fn pair(epoch: u64, sender: u8) -> (FrameSender, FrameReceiver) {
        let epoch_secret = Secret32::from_bytes([0x42; 32]);
        let sender_tx = FrameSender::for_call(&epoch_secret, epoch, sender);
        let mut rx = FrameReceiver::default();
        rx.add_key(
            frame_kid(epoch, sender),
            &BaseKey::for_sender(&epoch_secret, epoch, sender),
        )
        .unwrap();
        (sender_tx, rx)
    }

    #[test]
    fn round_trip_with_and_without_metadata() {
        let (mut tx, mut rx) = pair(7, 3);
        for (i, meta) in [&b""[..], b"rtp-ext", b""].iter().enumerate() {
            let pt = vec![i as u8; 160];
            let frame = tx.encrypt(&pt, meta).unwrap();
            assert_eq!(frame.len(), 160 + 3 + NT, "KID 0x703 (2 bytes), CTR < 8");
            let got = rx.decrypt(&frame, meta).unwrap();
            assert_eq!(got.plaintext, pt);
            assert_eq!((got.kid, got.ctr), (0x703, i as u64));
        }
    }

    #[test]
    fn wrong_metadata_is_rejected() {
        let (mut tx, mut rx) = pair(1, 1);
        let frame = tx.encrypt(b"voice", b"meta").unwrap();
        assert!(matches!(
            rx.decrypt(&frame, b"metb"),
            Err(FrameError::Authentication { .. })
        ));
        assert!(rx.decrypt(&frame, b"meta").is_ok());
    }

    #[test]
    fn overhead_is_at_most_22_bytes_for_realistic_sizes() {
        let base = BaseKey::from_bytes([9; 32]);
        // Largest KID our layout makes (epoch byte 0xff, sender 0xff); counter just below 2^24.
        for (kid, ctr) in [(0xffff, (1u64 << 24) - 1), (0x0100, 1 << 16), (0x0001, 0)] {
            let mut tx = FrameSender::new(kid, &base);
            tx.next_ctr = ctr;
            let frame = tx.encrypt(&[0u8; 160], b"").unwrap();
            assert!(
                frame.len() - 160 <= 22,
                "overhead {} bytes",
                frame.len() - 160
            );
        }
        // The bound is tight at the top of that range.
        let mut tx = FrameSender::new(0xffff, &base);
        tx.next_ctr = (1 << 24) - 1;
        assert_eq!(tx.encrypt(&[0u8; 160], b"").unwrap().len() - 160, 22);
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let (mut tx, mut rx) = pair(300, 9);
        tx.next_ctr = 1000; // a two-byte counter, so the header has KID and CTR bytes
        let frame = tx.encrypt(&[0x5a; 40], b"md").unwrap();
        for i in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(rx.decrypt(&bad, b"md").is_err(), "bit {i} flip accepted");
        }
        // The window did not move: the real frame still decrypts.
        assert_eq!(rx.decrypt(&frame, b"md").unwrap().plaintext, vec![0x5a; 40]);
    }

    #[test]
    fn replayed_and_too_old_frames_are_rejected() {
        let (mut tx, mut rx) = pair(2, 0);
        let frames: Vec<Vec<u8>> = (0..200).map(|_| tx.encrypt(b"x", b"").unwrap()).collect();
        // Deliver out of order: 5, then 3, then 5 again.
        rx.decrypt(&frames[5], b"").unwrap();
        rx.decrypt(&frames[3], b"").unwrap();
        assert!(matches!(
            rx.decrypt(&frames[5], b""),
            Err(FrameError::Replayed { ctr: 5, .. })
        ));
        assert!(matches!(
            rx.decrypt(&frames[3], b""),
            Err(FrameError::Replayed { ctr: 3, .. })
        ));
        // Jump ahead: 199 accepted, so 71 (age 128) is too old and 72 (age 127) still fine.
        rx.decrypt(&frames[199], b"").unwrap();
        assert!(matches!(
            rx.decrypt(&frames[71], b""),
            Err(FrameError::TooOld { ctr: 71, .. })
        ));
        rx.decrypt(&frames[72], b"").unwrap();
        assert!(matches!(
            rx.decrypt(&frames[72], b""),
            Err(FrameError::Replayed { .. })
        ));
        assert!(matches!(
            rx.decrypt(&frames[199], b""),
            Err(FrameError::Replayed { .. })
        ));
    }

    #[test]
    fn forged_frame_does_not_move_the_window() {
        let (mut tx, mut rx) = pair(2, 0);
        let f0 = tx.encrypt(b"a", b"").unwrap();
        // Forge a frame with a huge counter: header only plus garbage tag.
        let mut forged = SframeHeader {
            kid: tx.kid(),
            ctr: 1 << 40,
        }
        .to_bytes();
        forged.extend_from_slice(&[0u8; 20]);
        assert!(rx.decrypt(&forged, b"").is_err());
        assert!(
            rx.decrypt(&f0, b"").is_ok(),
            "window moved on a forged frame"
        );
    }

    #[test]
    fn unknown_kid_and_wrong_epoch_are_rejected() {
        let (mut tx, mut rx) = pair(4, 1);
        let frame = tx.encrypt(b"hello", b"").unwrap();
        rx.remove_key(tx.kid());
        assert_eq!(
            rx.decrypt(&frame, b""),
            Err(FrameError::UnknownKid(frame_kid(4, 1)))
        );
        // Epoch 260 has the same KID as epoch 4 but a different base key.
        let secret = Secret32::from_bytes([0x42; 32]);
        rx.add_key(frame_kid(260, 1), &BaseKey::for_sender(&secret, 260, 1))
            .unwrap();
        assert!(matches!(
            rx.decrypt(&frame, b""),
            Err(FrameError::Authentication { .. })
        ));
    }

    #[test]
    fn key_store_is_bounded() {
        let mut rx = FrameReceiver::new(2);
        let k = BaseKey::from_bytes([1; 32]);
        rx.add_key(1, &k).unwrap();
        rx.add_key(2, &k).unwrap();
        rx.add_key(2, &k).unwrap(); // replacing is fine
        assert_eq!(rx.add_key(3, &k), Err(FrameError::TooManyKeys(2)));
        rx.retain_keys(|kid| kid != 1);
        rx.add_key(3, &k).unwrap();
        assert_eq!(rx.key_count(), 2);
    }

    #[test]
    fn truncated_frames_are_rejected() {
        let (mut tx, mut rx) = pair(0, 1);
        let frame = tx.encrypt(b"", b"").unwrap();
        assert_eq!(frame.len(), 1 + NT);
        for n in 0..frame.len() {
            assert!(rx.decrypt(&frame[..n], b"").is_err());
        }
        assert!(rx.decrypt(&frame, b"").unwrap().plaintext.is_empty());
    }

    #[test]
    fn debug_shows_no_secrets() {
        let base = BaseKey::from_bytes([0xAB; 32]);
        let tx = FrameSender::new(0x102, &base);
        let mut rx = FrameReceiver::default();
        rx.add_key(0x102, &base).unwrap();
        let (key, salt) = derive_key_salt::<NK, NN>(CIPHER_SUITE, 0x102, &[0xAB; 32]);
        let dbg = format!("{base:?} {tx:?} {rx:?}");
        assert!(
            !dbg.contains("171") && !dbg.to_lowercase().contains("ab"),
            "{dbg}"
        );
        for secret in [&key[..], &salt[..]] {
            assert!(!dbg.contains(&hex::encode(secret)));
            assert!(!dbg.contains(&format!("{:?}", &secret[..4])));
        }
        assert_eq!(format!("{base:?}"), "BaseKey(<redacted>)");
    }

    proptest! {
        #[test]
        fn header_round_trips(kid: u64, ctr: u64, kid_small in 0u64..300, ctr_small in 0u64..300) {
            for h in [
                SframeHeader { kid, ctr },
                SframeHeader { kid: kid_small, ctr: ctr_small },
                SframeHeader { kid: kid_small, ctr },
            ] {
                let bytes = h.to_bytes();
                prop_assert!(bytes.len() <= MAX_HEADER_LEN);
                prop_assert_eq!(bytes.len(), h.encoded_len());
                prop_assert_eq!(SframeHeader::from_bytes(&bytes).unwrap(), h);
                let mut extended = bytes.clone();
                extended.push(0);
                prop_assert!(SframeHeader::from_bytes(&extended).is_err());
                prop_assert_eq!(SframeHeader::parse_prefix(&extended).unwrap(), (h, bytes.len()));
            }
        }

        #[test]
        fn header_decode_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            // Anything that decodes re-encodes to the same bytes.
            if let Ok(h) = SframeHeader::from_bytes(&bytes) {
                prop_assert_eq!(h.to_bytes(), bytes);
            }
        }

        #[test]
        fn frames_round_trip(pt in proptest::collection::vec(any::<u8>(), 0..2000),
                             meta in proptest::collection::vec(any::<u8>(), 0..40),
                             ctr in 0u64..1 << 40) {
            let base = BaseKey::from_bytes([3; 32]);
            let mut tx = FrameSender::new(0x1234, &base);
            tx.next_ctr = ctr;
            let mut rx = FrameReceiver::default();
            rx.add_key(0x1234, &base).unwrap();
            let frame = tx.encrypt(&pt, &meta).unwrap();
            let got = rx.decrypt(&frame, &meta).unwrap();
            prop_assert_eq!(got.plaintext, pt);
            prop_assert_eq!(got.ctr, ctr);
        }
    }
}
