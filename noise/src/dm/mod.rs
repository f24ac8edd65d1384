//! Direct messages: an X3DH-shaped handshake ([`x3dh`]) followed by the Double Ratchet
//! ([`ratchet`]), as Signal specifies them, with SecureComm's keys, labels and codec.
//!
//! # Flow
//!
//! 1. Bob keeps a [`PrekeyStore`] and publishes a [`PrekeyBundle`] (signed prekey, optionally a
//!    one-time prekey) through whatever channel the application uses.
//! 2. Alice calls [`Session::initiate`] with Bob's bundle, then [`Session::encrypt`]. Until she
//!    has decrypted a reply from Bob, every message she sends is a [`DmMessage::Initial`]: the
//!    X3DH [`InitialHeader`] followed by a ratchet message, so Bob can start the session from
//!    whichever of them arrives first.
//! 3. Bob calls [`Session::accept`] on the first initial message: it runs X3DH, decrypts, and
//!    only then deletes the one-time prekey (or records the message for replay detection). He
//!    must check that the initiator's [`PublicIdentity`] is a device of the user he believes
//!    he is talking to. Later messages, initial or not, go to [`Session::decrypt`].
//!
//! # Wire (`DmMessage`, version 1)
//!
//! `0x01 || tag` then, for tag 1 (initial), the [`InitialHeader`]; then the ratchet header
//! (`0x01 || ratchet DH public (32) || PN (u32) || N (u32)`) and the ciphertext behind a u32
//! length prefix (plaintext plus a 16-byte Poly1305 tag, at most [`MAX_PLAINTEXT`] + 16).
//! The AEAD associated data is `session AD || [encoded InitialHeader] || encoded ratchet
//! header`, so every bit of every header is authenticated.
//!
//! # Guarantees
//!
//! Confidentiality and authenticity to the two identities of the X3DH handshake; forward
//! secrecy per message (a used message key and an old chain key are gone); post-compromise
//! security after one DH round trip; out-of-order delivery within [`ratchet::MAX_SKIP`] per
//! chain and [`ratchet::MAX_SKIPPED_KEYS`] in total; replays rejected. A message that fails to
//! decrypt leaves the session unchanged. See the caveat on prekey reuse in [`x3dh`].

pub mod ratchet;
pub mod x3dh;

use thiserror::Error;

pub use ratchet::{DmMessage, RatchetHeader, RatchetMessage, Session};
pub use x3dh::{DmIdentity, InitialHeader, PrekeyBundle, PrekeyStore, PublicIdentity};

use crate::codec::DecodeError;
use crate::keys::{DhError, SignatureError};

/// Largest plaintext a DM may carry.
pub const MAX_PLAINTEXT: usize = 256 * 1024;

/// Why a DM operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DmError {
    /// The prekey bundle's signed prekey signature does not verify.
    #[error("prekey bundle signature: {0}")]
    BadBundleSignature(SignatureError),
    /// A peer's X25519 key has small order.
    #[error(transparent)]
    Dh(#[from] DhError),
    /// A peer ratchet key is not a point on Curve25519 (an honest peer never sends one).
    #[error("ratchet key is not on Curve25519")]
    InvalidRatchetKey,
    /// The initial message names a signed prekey this store does not hold (never existed or
    /// rotated out).
    #[error("unknown signed prekey id {0}")]
    UnknownSignedPrekey(u32),
    /// The initial message names a one-time prekey this store does not hold (already used).
    #[error("unknown or already used one-time prekey id {0}")]
    UnknownOneTimePrekey(u32),
    /// The store has no signed prekey yet.
    #[error("no signed prekey: rotate one in first")]
    NoSignedPrekey,
    /// More one-time prekeys were requested than the store may hold.
    #[error("too many one-time prekeys: at most {max}, got {got}")]
    TooManyOneTimePrekeys {
        /// The bound.
        max: usize,
        /// How many there would have been.
        got: usize,
    },
    /// The prekey id counter ran out.
    #[error("prekey ids exhausted")]
    PrekeyIdsExhausted,
    /// This initial message (without a one-time prekey) was already accepted.
    #[error("replayed initial message")]
    ReplayedInitial,
    /// [`Session::accept`] was given a message that is not an initial message.
    #[error("expected an initial message, got a normal message")]
    NotInitial,
    /// Decryption failed: wrong key, forged or corrupted message.
    #[error("message authentication failed")]
    AuthenticationFailed,
    /// The message key is gone: the message was already decrypted (a replay) or its skipped key
    /// was evicted.
    #[error("message {n} already decrypted or its key expired (replay?)")]
    DuplicateOrExpired {
        /// The message number in its chain.
        n: u32,
    },
    /// The message would need more skipped message keys than allowed.
    #[error("too many skipped messages: at most {max}, got {got}")]
    TooManySkipped {
        /// The bound ([`ratchet::MAX_SKIP`]).
        max: u32,
        /// The skip the message would need.
        got: u64,
    },
    /// The plaintext exceeds [`MAX_PLAINTEXT`].
    #[error("plaintext too long: at most {max}, got {got}")]
    PlaintextTooLong {
        /// The bound.
        max: usize,
        /// The length given.
        got: usize,
    },
    /// A chain reached 2^32 messages.
    #[error("message counter exhausted")]
    CounterExhausted,
    /// The session cannot send (corrupt state: no sending chain and no peer ratchet key).
    #[error("session has no sending chain")]
    NoSendingChain,
    /// A wire value failed to decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}
