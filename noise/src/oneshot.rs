//! One-shot encryption from one device to another device's current prekey (Noise `X`).
//!
//! This is the two-party channel that key distribution and DCGKA's direct messages use: a
//! sender who knows only a recipient's *signed prekey* sends one message, with no round trip,
//! and the recipient learns and authenticates the sender's static X25519 device key.
//!
//! # Protocol
//!
//! `Noise_X_25519_ChaChaPoly_SHA256` with the recipient's prekey as the pre-known responder
//! static key (`<- s`) and the sender's X25519 device key as initiator static:
//!
//! ```text
//! <- s                      (recipient prekey, from a verified SignedPrekey)
//! ...
//! -> e, es, s, ss           (payload encrypted after ss)
//! ```
//!
//! SHA-256 rather than BLAKE2s: the rest of the crate (HKDF, hash chains, safety numbers) is
//! built on SHA-256, so using it here keeps one hash function in the trusted base, and the hash
//! is negligible next to the three X25519 operations a one-shot message costs.
//!
//! The Noise *prologue* is `"SecureComm/oneshot/X v1" || 0x00 || version || prekey id ||
//! u32 len(context) || context`. The caller's `context` names the sender and recipient (for
//! example both device ids and the purpose); a message sealed for one context fails to open in
//! any other, so it cannot be replayed into another conversation or role.
//!
//! # Wire format ([`OneShotMessage`])
//!
//! `version (1 byte = 1) || recipient prekey id (u32 BE) || u16 length || Noise message`. The
//! Noise message is `e (32) || encrypted s (48) || encrypted payload (len + 16)`, so the
//! overhead is 7 + 96 bytes and the plaintext is at most [`MAX_PLAINTEXT`] bytes.
//!
//! # What each side stores
//!
//! The recipient keeps a [`PrekeyStore`]: the current prekey secret and at most
//! [`MAX_PREVIOUS_PREKEYS`] previous ones, so messages sealed to a prekey just before a
//! rotation still open. [`PrekeyStore::expire`] deletes previous secrets that were retired more
//! than `max_age` ago; once deleted, nothing the recipient holds opens messages sealed to that
//! prekey: that is the forward secrecy this scheme gives (per prekey rotation period, not per
//! message). The sender stores nothing.
//!
//! # Guarantees and limits
//!
//! * Confidentiality to the holder of the prekey secret; the sender's static key is encrypted.
//! * Sender authentication: [`PrekeyStore::open`] returns the sender's static X25519 key, proven
//!   by the `ss` DH. Mapping that key to a device is the caller's job (device certificates);
//!   [`PrekeyStore::open_from`] checks it against an expected key.
//! * Small-order keys are refused: every DH inside the handshake fails on an all-zero result.
//! * **Replays are not prevented.** Opening is stateless, so the same message opens again as
//!   long as its prekey is held. Every bit of the encoding is authenticated (bit flips are
//!   rejected), so [`OneShotMessage::message_id`] identifies a message uniquely: a caller that
//!   must not act twice keeps the ids it has seen for each prekey id until that prekey expires.
//! * Sender key-compromise impersonation: like every `X`-pattern message, anyone holding the
//!   recipient's prekey secret can forge messages *to that recipient* from any sender.
//! * Randomness comes from the caller's RNG: snow's own OS RNG is never used (see
//!   [`CallerResolver`]), so sealing is deterministic for a seeded RNG.
//! * snow 0.10 does not zeroize its symmetric state; the DH secrets it holds live in this
//!   module's zeroizing [`Dh`](snow::types::Dh) implementation.

use std::cell::Cell;
use std::collections::VecDeque;

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::keys::{DevicePublicKey, DeviceSigningKey, DhPublic, DhSecret, SigLabel, Signature};

/// The Noise protocol name used for one-shot messages.
pub const ONESHOT_PATTERN: &str = "Noise_X_25519_ChaChaPoly_SHA256";
/// Wire version of [`OneShotMessage`].
pub const ONESHOT_VERSION: u8 = 1;
/// Wire version of [`SignedPrekey`].
pub const SIGNED_PREKEY_VERSION: u8 = 1;
/// Encoding version of [`PrekeyStore`].
pub const PREKEY_STORE_VERSION: u8 = 1;
/// How many retired prekeys a [`PrekeyStore`] keeps for late messages.
pub const MAX_PREVIOUS_PREKEYS: usize = 3;
/// Largest Noise message snow accepts.
pub const MAX_NOISE_MESSAGE: usize = 65_535;
/// Noise `X` overhead: ephemeral key, encrypted static key with tag, payload tag.
pub const NOISE_X_OVERHEAD: usize = 32 + 48 + 16;
/// Largest plaintext one message can carry.
pub const MAX_PLAINTEXT: usize = MAX_NOISE_MESSAGE - NOISE_X_OVERHEAD;

const PROLOGUE_LABEL: &[u8] = b"SecureComm/oneshot/X v1";
const PREKEY_SIG: SigLabel = SigLabel("SecureComm/oneshot/prekey v1");
const MESSAGE_ID_LABEL: &[u8] = b"SecureComm/oneshot/message-id v1";

/// Why a one-shot operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OneShotError {
    /// The bytes are not a valid encoding.
    #[error("malformed one-shot data: {0}")]
    Decode(#[from] DecodeError),
    /// No prekey with this id is held: never issued, rotated out, or expired.
    #[error("no prekey with id {0}: never issued, rotated out or expired")]
    UnknownPrekey(u32),
    /// The prekey's signature does not verify under the claimed device key.
    #[error("prekey signature does not verify under the device key")]
    BadPrekeySignature,
    /// A public key is of small order, so a DH with it would be predictable.
    #[error("{0} is a small-order X25519 key")]
    SmallOrderKey(&'static str),
    /// A Diffie-Hellman inside the handshake gave all zeros (a small-order key in the message).
    #[error("a Diffie-Hellman result was all zeros: the message carries a small-order key")]
    NonContributory,
    /// The plaintext is larger than one message can carry.
    #[error("plaintext too long: at most {max} bytes, got {got}")]
    PlaintextTooLong {
        /// The bound.
        max: usize,
        /// The length given.
        got: usize,
    },
    /// Authenticated decryption failed: wrong prekey, wrong context, or a tampered message.
    #[error("message does not open: wrong prekey, wrong context or tampered")]
    Decrypt,
    /// The message opened but was sent by another static key than the one expected.
    #[error("unexpected sender: expected {expected:?}, got {got:?}")]
    UnexpectedSender {
        /// The key the caller expected.
        expected: DhPublic,
        /// The key that actually sent the message.
        got: DhPublic,
    },
    /// snow refused an operation this module should never ask for (a bug, not an attack).
    #[error("internal Noise error: {0}")]
    Internal(&'static str),
}

/// Maps a snow error to ours without leaking detail to a peer.
pub(crate) fn snow_error(e: snow::Error) -> OneShotError {
    match e {
        snow::Error::Decrypt => OneShotError::Decrypt,
        snow::Error::Dh => OneShotError::NonContributory,
        snow::Error::Input => OneShotError::Decrypt,
        snow::Error::Rng => OneShotError::Internal("caller RNG pool exhausted"),
        _ => OneShotError::Internal("snow state"),
    }
}

/// Whether an X25519 public key is of small order (its product with any clamped scalar is 0).
pub(crate) fn is_small_order(key: &DhPublic) -> bool {
    // Clamped scalars are multiples of 8, which kills exactly the small-order points.
    let out = x25519_dalek::x25519([1u8; 32], key.0);
    bool::from(out.ct_eq(&[0u8; 32]))
}

// ---------------------------------------------------------------------------------------------
// snow glue: the caller's randomness and a zeroizing, contributory-checking X25519.

/// A [`CryptoResolver`] that hands snow randomness drawn from the caller's RNG and this
/// module's X25519, and delegates hashes and ciphers to snow's [`DefaultResolver`].
///
/// snow resolves its RNG once per handshake; the pool holds enough bytes for the one
/// ephemeral key a handshake generates (and a spare). A second resolution gets nothing, so
/// randomness is never reused.
pub(crate) struct CallerResolver {
    pool: Cell<Option<Zeroizing<Vec<u8>>>>,
}

const RNG_POOL: usize = 64;

impl CallerResolver {
    pub(crate) fn new<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut pool = Zeroizing::new(vec![0u8; RNG_POOL]);
        rng.fill_bytes(&mut pool);
        Self {
            pool: Cell::new(Some(pool)),
        }
    }
}

impl CryptoResolver for CallerResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        let pool = self.pool.take()?;
        Some(Box::new(PoolRandom { pool, used: 0 }))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(CheckedX25519::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// Bytes drawn from the caller's RNG, handed out once each.
struct PoolRandom {
    pool: Zeroizing<Vec<u8>>,
    used: usize,
}

impl Random for PoolRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        let end = self.used.checked_add(dest.len()).ok_or(snow::Error::Rng)?;
        let src = self.pool.get(self.used..end).ok_or(snow::Error::Rng)?;
        dest.copy_from_slice(src);
        if let Some(spent) = self.pool.get_mut(self.used..end) {
            spent.zeroize();
        }
        self.used = end;
        Ok(())
    }
}

/// X25519 for snow that zeroizes its secret and fails on an all-zero (small-order) result.
#[derive(Default)]
struct CheckedX25519 {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl CheckedX25519 {
    fn set_secret(&mut self, secret: [u8; 32]) {
        *self.secret = secret;
        self.public = curve25519_dalek::MontgomeryPoint::mul_base_clamped(secret).to_bytes();
    }
}

impl Dh for CheckedX25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut k = Zeroizing::new([0u8; 32]);
        if let Some(src) = privkey.get(..32) {
            k.copy_from_slice(src);
        }
        self.set_secret(*k);
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.try_fill_bytes(k.as_mut())?;
        self.set_secret(*k);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        self.secret.as_ref()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let mut their = [0u8; 32];
        their.copy_from_slice(pubkey.get(..32).ok_or(snow::Error::Dh)?);
        let shared = Zeroizing::new(x25519_dalek::x25519(*self.secret, their));
        if bool::from(shared.ct_eq(&[0u8; 32])) {
            return Err(snow::Error::Dh);
        }
        out.get_mut(..32)
            .ok_or(snow::Error::Dh)?
            .copy_from_slice(shared.as_ref());
        Ok(())
    }
}

pub(crate) fn params(pattern: &str) -> Result<NoiseParams, OneShotError> {
    pattern
        .parse()
        .map_err(|_| OneShotError::Internal("Noise pattern"))
}

// ---------------------------------------------------------------------------------------------
// Prekeys.

/// A prekey secret held by its device. Zeroized on drop; `Debug` shows only public data.
#[derive(Clone)]
pub struct Prekey {
    id: u32,
    secret: DhSecret,
    created_at: u64,
}

impl Prekey {
    /// A fresh prekey with this id, created at `now`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R, id: u32, now: u64) -> Self {
        Self {
            id,
            secret: DhSecret::generate(rng),
            created_at: now,
        }
    }

    /// The prekey id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The public half.
    pub fn public(&self) -> DhPublic {
        self.secret.public()
    }

    /// When the prekey was made (caller's clock, seconds).
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// The public prekey, signed by the device that owns it.
    pub fn sign(&self, device: &DeviceSigningKey) -> SignedPrekey {
        let public = self.public();
        let signature = device.sign(PREKEY_SIG, &signed_bytes(self.id, &public, self.created_at));
        SignedPrekey {
            id: self.id,
            public,
            created_at: self.created_at,
            signature,
        }
    }

    fn encode_secret(&self, w: &mut Writer) {
        w.u32(self.id);
        w.put(self.secret.to_bytes().as_ref());
        w.u64(self.created_at);
    }

    fn decode_secret(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let id = r.u32()?;
        let bytes = Zeroizing::new(r.array::<32>()?);
        let created_at = r.u64()?;
        Ok(Self {
            id,
            secret: DhSecret::from_bytes(*bytes),
            created_at,
        })
    }
}

impl std::fmt::Debug for Prekey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prekey")
            .field("id", &self.id)
            .field("public", &self.public())
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

fn signed_bytes(id: u32, public: &DhPublic, created_at: u64) -> Vec<u8> {
    let mut w = Writer::with_capacity(45);
    w.u8(SIGNED_PREKEY_VERSION);
    w.u32(id);
    public.encode(&mut w);
    w.u64(created_at);
    w.into_bytes()
}

/// A device's public prekey and the device's signature over it, as published.
///
/// Wire: `version (1) || id (u32) || X25519 public (32) || created_at (u64) || signature (64)`.
/// The signature covers everything before it, under the label
/// `"SecureComm/oneshot/prekey v1"`. Decoding rejects small-order keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedPrekey {
    /// The prekey id, echoed in every message sealed to it.
    pub id: u32,
    /// The X25519 prekey.
    pub public: DhPublic,
    /// When the owner made it (its clock, seconds).
    pub created_at: u64,
    /// The owning device's signature.
    pub signature: Signature,
}

impl SignedPrekey {
    /// Checks the signature under the device key it claims to belong to and that the key is
    /// usable. Only a [`VerifiedPrekey`] can be sealed to.
    pub fn verify(&self, device: &DevicePublicKey) -> Result<VerifiedPrekey, OneShotError> {
        if is_small_order(&self.public) {
            return Err(OneShotError::SmallOrderKey("prekey"));
        }
        device
            .verify(
                PREKEY_SIG,
                &signed_bytes(self.id, &self.public, self.created_at),
                &self.signature,
            )
            .map_err(|_| OneShotError::BadPrekeySignature)?;
        Ok(VerifiedPrekey {
            id: self.id,
            public: self.public,
            created_at: self.created_at,
        })
    }
}

impl Encode for SignedPrekey {
    fn encode(&self, w: &mut Writer) {
        w.put(&signed_bytes(self.id, &self.public, self.created_at));
        self.signature.encode(w);
    }
}

impl Decode for SignedPrekey {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("signed prekey", SIGNED_PREKEY_VERSION)?;
        let id = r.u32()?;
        let public = DhPublic::decode(r)?;
        if is_small_order(&public) {
            return Err(DecodeError::Invalid("prekey public key (small order)"));
        }
        let created_at = r.u64()?;
        let signature = Signature::decode(r)?;
        Ok(Self {
            id,
            public,
            created_at,
            signature,
        })
    }
}

/// A prekey whose signature has been checked: what [`seal`] encrypts to. Verify each peer's
/// prekey once and reuse the result for every message to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedPrekey {
    id: u32,
    public: DhPublic,
    created_at: u64,
}

impl VerifiedPrekey {
    /// The prekey id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The X25519 prekey.
    pub fn public(&self) -> DhPublic {
        self.public
    }

    /// When the owner made it; senders may refuse prekeys older than their policy allows.
    pub fn created_at(&self) -> u64 {
        self.created_at
    }
}

/// A retired prekey and when it stopped being current.
#[derive(Clone)]
struct Retired {
    prekey: Prekey,
    retired_at: u64,
}

/// The recipient's prekey secrets: one current, at most [`MAX_PREVIOUS_PREKEYS`] previous.
///
/// Serializable with [`PrekeyStore::to_bytes`] (zeroizing buffer) and
/// [`PrekeyStore::from_bytes`]: `version (1) || next id (u32) || current (id u32, secret 32,
/// created_at u64) || count (u8, at most 3) || count x (id, secret, created_at, retired_at u64)`,
/// newest previous first. Ids must be distinct.
#[derive(Clone)]
pub struct PrekeyStore {
    next_id: u32,
    current: Prekey,
    previous: VecDeque<Retired>,
}

impl PrekeyStore {
    /// A store with a fresh current prekey. The first id is random so ids do not reveal how
    /// often the device rotated.
    pub fn new<R: RngCore + CryptoRng>(rng: &mut R, now: u64) -> Self {
        let id = rng.next_u32();
        let current = Prekey::generate(rng, id, now);
        Self {
            next_id: id.wrapping_add(1),
            current,
            previous: VecDeque::with_capacity(MAX_PREVIOUS_PREKEYS),
        }
    }

    /// The current prekey.
    pub fn current(&self) -> &Prekey {
        &self.current
    }

    /// The current prekey signed by `device`, to publish.
    pub fn signed_current(&self, device: &DeviceSigningKey) -> SignedPrekey {
        self.current.sign(device)
    }

    /// Ids of every prekey held, current first.
    pub fn ids(&self) -> Vec<u32> {
        std::iter::once(self.current.id)
            .chain(self.previous.iter().map(|r| r.prekey.id))
            .collect()
    }

    /// Makes a new current prekey; the old one is kept for late messages. The oldest previous
    /// prekey beyond [`MAX_PREVIOUS_PREKEYS`] is deleted.
    pub fn rotate<R: RngCore + CryptoRng>(&mut self, rng: &mut R, now: u64) {
        let id = self.next_id;
        self.next_id = id.wrapping_add(1);
        let old = std::mem::replace(&mut self.current, Prekey::generate(rng, id, now));
        self.previous.push_front(Retired {
            prekey: old,
            retired_at: now,
        });
        self.previous.truncate(MAX_PREVIOUS_PREKEYS);
    }

    /// Deletes previous prekeys retired at least `max_age` before `now`; returns how many.
    /// Messages sealed to them can no longer be opened (forward secrecy).
    pub fn expire(&mut self, now: u64, max_age: u64) -> usize {
        let before = self.previous.len();
        self.previous
            .retain(|r| r.retired_at.saturating_add(max_age) > now);
        before - self.previous.len()
    }

    fn prekey(&self, id: u32) -> Option<&Prekey> {
        if self.current.id == id {
            return Some(&self.current);
        }
        self.previous.iter().map(|r| &r.prekey).find(|p| p.id == id)
    }

    /// Opens a message sealed to one of this store's prekeys under `context` (which must equal
    /// the sender's). Returns the sender's static X25519 key and the plaintext.
    ///
    /// Stateless: the same message opens again (see the module docs on replay).
    pub fn open(
        &self,
        msg: &OneShotMessage,
        context: &[u8],
    ) -> Result<(DhPublic, Zeroizing<Vec<u8>>), OneShotError> {
        let prekey = self
            .prekey(msg.prekey_id)
            .ok_or(OneShotError::UnknownPrekey(msg.prekey_id))?;
        // A small-order ephemeral or sender static key makes `es` or `ss` all zeros, which
        // `CheckedX25519` refuses (`NonContributory`), so no separate check is needed here.
        let prologue = prologue(msg.prekey_id, context);
        let secret = prekey.secret.to_bytes();
        let resolver = CallerResolver::empty();
        let mut hs = snow::Builder::with_resolver(params(ONESHOT_PATTERN)?, Box::new(resolver))
            .local_private_key(secret.as_ref())
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_responder())
            .map_err(snow_error)?;
        let mut out = Zeroizing::new(vec![0u8; msg.noise.len()]);
        let n = hs.read_message(&msg.noise, &mut out).map_err(snow_error)?;
        out.truncate(n);
        let sender = hs
            .get_remote_static()
            .and_then(|s| s.first_chunk::<32>())
            .map(|s| DhPublic(*s))
            .ok_or(OneShotError::Internal("remote static missing"))?;
        Ok((sender, out))
    }

    /// [`open`](Self::open), then checks that `expected_sender` sent it.
    pub fn open_from(
        &self,
        msg: &OneShotMessage,
        context: &[u8],
        expected_sender: &DhPublic,
    ) -> Result<Zeroizing<Vec<u8>>, OneShotError> {
        let (got, plaintext) = self.open(msg, context)?;
        if !bool::from(got.0.ct_eq(&expected_sender.0)) {
            return Err(OneShotError::UnexpectedSender {
                expected: *expected_sender,
                got,
            });
        }
        Ok(plaintext)
    }

    /// The encoding, in a buffer zeroized on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::with_capacity(1 + 4 + 44 + 1 + MAX_PREVIOUS_PREKEYS * 52);
        w.u8(PREKEY_STORE_VERSION);
        w.u32(self.next_id);
        self.current.encode_secret(&mut w);
        // At most MAX_PREVIOUS_PREKEYS, by construction.
        w.u8(self.previous.len().min(MAX_PREVIOUS_PREKEYS) as u8);
        for r in self.previous.iter().take(MAX_PREVIOUS_PREKEYS) {
            r.prekey.encode_secret(&mut w);
            w.u64(r.retired_at);
        }
        Zeroizing::new(w.into_bytes())
    }

    /// Restores a store from [`to_bytes`](Self::to_bytes), strictly.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("prekey store", PREKEY_STORE_VERSION)?;
        let next_id = r.u32()?;
        let current = Prekey::decode_secret(&mut r)?;
        let n = usize::from(r.u8()?);
        if n > MAX_PREVIOUS_PREKEYS {
            return Err(DecodeError::TooLong {
                what: "previous prekeys",
                max: MAX_PREVIOUS_PREKEYS,
                got: n,
            });
        }
        let mut previous = VecDeque::with_capacity(MAX_PREVIOUS_PREKEYS);
        for _ in 0..n {
            let prekey = Prekey::decode_secret(&mut r)?;
            let retired_at = r.u64()?;
            previous.push_back(Retired { prekey, retired_at });
        }
        r.finish()?;
        let store = Self {
            next_id,
            current,
            previous,
        };
        let mut ids = store.ids();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != n + 1 {
            return Err(DecodeError::Invalid("prekey store (duplicate prekey ids)"));
        }
        Ok(store)
    }
}

impl std::fmt::Debug for PrekeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrekeyStore")
            .field("current", &self.current)
            .field(
                "previous",
                &self.previous.iter().map(|r| &r.prekey).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl CallerResolver {
    /// A resolver with no randomness, for the responder side, which generates no keys.
    pub(crate) fn empty() -> Self {
        Self {
            pool: Cell::new(Some(Zeroizing::new(Vec::new()))),
        }
    }
}

fn prologue(prekey_id: u32, context: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(PROLOGUE_LABEL.len() + 10 + context.len());
    w.put(PROLOGUE_LABEL);
    w.u8(0);
    w.u8(ONESHOT_VERSION);
    w.u32(prekey_id);
    w.bytes32(context);
    w.into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Sealing and the wire message.

/// One sealed message.
#[derive(Clone, PartialEq, Eq)]
pub struct OneShotMessage {
    /// The id of the recipient prekey it was sealed to.
    pub prekey_id: u32,
    /// The Noise `X` handshake message.
    pub noise: Vec<u8>,
}

impl OneShotMessage {
    /// A 32-byte id for deduplication: SHA-256 over a label and the encoding. Since every bit
    /// of the encoding is authenticated, two messages that open are the same message exactly
    /// when their ids are equal.
    pub fn message_id(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(MESSAGE_ID_LABEL);
        h.update([0u8]);
        h.update(self.to_bytes());
        h.finalize().into()
    }
}

impl std::fmt::Debug for OneShotMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneShotMessage")
            .field("prekey_id", &self.prekey_id)
            .field("noise_len", &self.noise.len())
            .finish()
    }
}

impl Encode for OneShotMessage {
    fn encode(&self, w: &mut Writer) {
        w.u8(ONESHOT_VERSION);
        w.u32(self.prekey_id);
        w.bytes16(&self.noise);
    }
}

impl Decode for OneShotMessage {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("one-shot message", ONESHOT_VERSION)?;
        let prekey_id = r.u32()?;
        let noise = r.bytes16("one-shot Noise message", MAX_NOISE_MESSAGE)?;
        if noise.len() < NOISE_X_OVERHEAD {
            return Err(DecodeError::Invalid(
                "one-shot Noise message (shorter than the X overhead)",
            ));
        }
        Ok(Self {
            prekey_id,
            noise: noise.to_vec(),
        })
    }
}

/// Seals `plaintext` from `sender` (its static X25519 device key) to `recipient`'s prekey,
/// bound to `context` (which the recipient must pass to [`PrekeyStore::open`] unchanged).
///
/// `rng` supplies the ephemeral key. Cost: three X25519 operations and one key generation.
pub fn seal<R: RngCore + CryptoRng>(
    rng: &mut R,
    sender: &DhSecret,
    recipient: &VerifiedPrekey,
    context: &[u8],
    plaintext: &[u8],
) -> Result<OneShotMessage, OneShotError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(OneShotError::PlaintextTooLong {
            max: MAX_PLAINTEXT,
            got: plaintext.len(),
        });
    }
    let prologue = prologue(recipient.id, context);
    let secret = sender.to_bytes();
    let mut hs =
        snow::Builder::with_resolver(params(ONESHOT_PATTERN)?, Box::new(CallerResolver::new(rng)))
            .local_private_key(secret.as_ref())
            .and_then(|b| b.remote_public_key(recipient.public.as_bytes()))
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_initiator())
            .map_err(snow_error)?;
    let mut noise = vec![0u8; plaintext.len() + NOISE_X_OVERHEAD];
    let n = hs
        .write_message(plaintext, &mut noise)
        .map_err(snow_error)?;
    noise.truncate(n);
    Ok(OneShotMessage {
        prekey_id: recipient.id,
        noise,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const CTX: &[u8] = b"from device A to device B: dcgka";

    struct Party {
        device: DeviceSigningKey,
        dh: DhSecret,
        store: PrekeyStore,
    }

    fn party(rng: &mut StdRng) -> Party {
        Party {
            device: DeviceSigningKey::generate(rng),
            dh: DhSecret::generate(rng),
            store: PrekeyStore::new(rng, 1000),
        }
    }

    fn verified(p: &Party) -> VerifiedPrekey {
        p.store
            .signed_current(&p.device)
            .verify(&p.device.public())
            .unwrap()
    }

    fn sealed(rng: &mut StdRng, from: &Party, to: &Party, pt: &[u8]) -> OneShotMessage {
        seal(rng, &from.dh, &verified(to), CTX, pt).unwrap()
    }

    /// A small-order X25519 point (order 8).
    const SMALL: [u8; 32] = [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ];

    #[test]
    fn round_trip_authenticates_sender() {
        let mut rng = StdRng::seed_from_u64(1);
        let (a, b) = (party(&mut rng), party(&mut rng));
        let msg = sealed(&mut rng, &a, &b, b"hello B");
        let wire = msg.to_bytes();
        assert_eq!(wire.len(), 7 + NOISE_X_OVERHEAD + 7);
        let msg = OneShotMessage::from_bytes(&wire).unwrap();
        let (sender, pt) = b.store.open(&msg, CTX).unwrap();
        assert_eq!(sender, a.dh.public());
        assert_eq!(&pt[..], b"hello B");
        assert_eq!(
            &b.store.open_from(&msg, CTX, &a.dh.public()).unwrap()[..],
            b"hello B"
        );
        let c = party(&mut rng);
        assert!(matches!(
            b.store.open_from(&msg, CTX, &c.dh.public()),
            Err(OneShotError::UnexpectedSender { .. })
        ));
        // Empty and maximal plaintexts.
        for len in [0, MAX_PLAINTEXT] {
            let pt = vec![0x42; len];
            let msg = sealed(&mut rng, &a, &b, &pt);
            let msg = OneShotMessage::from_bytes(&msg.to_bytes()).unwrap();
            assert_eq!(&b.store.open(&msg, CTX).unwrap().1[..], &pt[..]);
        }
        assert_eq!(
            seal(
                &mut rng,
                &a.dh,
                &verified(&b),
                CTX,
                &vec![0; MAX_PLAINTEXT + 1]
            ),
            Err(OneShotError::PlaintextTooLong {
                max: MAX_PLAINTEXT,
                got: MAX_PLAINTEXT + 1
            })
        );
    }

    #[test]
    fn randomness_comes_only_from_the_caller() {
        let mut rng = StdRng::seed_from_u64(2);
        let (a, b) = (party(&mut rng), party(&mut rng));
        let pk = verified(&b);
        let m1 = seal(&mut StdRng::seed_from_u64(9), &a.dh, &pk, CTX, b"x").unwrap();
        let m2 = seal(&mut StdRng::seed_from_u64(9), &a.dh, &pk, CTX, b"x").unwrap();
        let m3 = seal(&mut StdRng::seed_from_u64(10), &a.dh, &pk, CTX, b"x").unwrap();
        assert_eq!(m1, m2);
        assert_ne!(m1, m3);
    }

    #[test]
    fn wrong_recipient_cannot_open() {
        let mut rng = StdRng::seed_from_u64(3);
        let (a, b, c) = (party(&mut rng), party(&mut rng), party(&mut rng));
        let mut msg = sealed(&mut rng, &a, &b, b"for B only");
        assert_eq!(
            c.store.open(&msg, CTX),
            Err(OneShotError::UnknownPrekey(msg.prekey_id))
        );
        // Even if C's prekey happens to carry the same id, it cannot open.
        msg.prekey_id = c.store.current().id();
        assert_eq!(c.store.open(&msg, CTX), Err(OneShotError::Decrypt));
    }

    #[test]
    fn rotation_keeps_late_messages_and_expiry_gives_forward_secrecy() {
        let mut rng = StdRng::seed_from_u64(4);
        let (a, mut b) = (party(&mut rng), party(&mut rng));
        let early = sealed(&mut rng, &a, &b, b"sent before rotation");
        b.store.rotate(&mut rng, 2000);
        assert_eq!(b.store.ids().len(), 2);
        // Still opens after one rotation ...
        assert!(b.store.open(&early, CTX).is_ok());
        // ... until the retired prekey expires.
        assert_eq!(b.store.expire(2000 + 99, 100), 0);
        assert!(b.store.open(&early, CTX).is_ok());
        assert_eq!(b.store.expire(2000 + 100, 100), 1);
        assert_eq!(
            b.store.open(&early, CTX),
            Err(OneShotError::UnknownPrekey(early.prekey_id))
        );
        // The serialized store no longer contains the old secret either.
        let restored = PrekeyStore::from_bytes(&b.store.to_bytes()).unwrap();
        assert!(restored.open(&early, CTX).is_err());
        // Messages to the new current prekey open.
        let late = sealed(&mut rng, &a, &b, b"after");
        assert_eq!(&restored.open(&late, CTX).unwrap().1[..], b"after");
    }

    #[test]
    fn at_most_three_previous_prekeys_are_kept() {
        let mut rng = StdRng::seed_from_u64(5);
        let (a, mut b) = (party(&mut rng), party(&mut rng));
        let msgs: Vec<_> = (0..5u64)
            .map(|i| {
                let m = sealed(&mut rng, &a, &b, b"m");
                b.store.rotate(&mut rng, 1000 + i);
                m
            })
            .collect();
        assert_eq!(b.store.ids().len(), 1 + MAX_PREVIOUS_PREKEYS);
        assert!(b.store.open(&msgs[0], CTX).is_err());
        assert!(b.store.open(&msgs[1], CTX).is_err());
        for m in &msgs[2..] {
            assert!(b.store.open(m, CTX).is_ok());
        }
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let mut rng = StdRng::seed_from_u64(6);
        let (a, b) = (party(&mut rng), party(&mut rng));
        let wire = sealed(&mut rng, &a, &b, b"twenty bytes of data").to_bytes();
        for i in 0..wire.len() * 8 {
            let mut bad = wire.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let res = OneShotMessage::from_bytes(&bad)
                .map_err(OneShotError::from)
                .and_then(|m| b.store.open(&m, CTX));
            assert!(res.is_err(), "bit {i} flip accepted");
        }
        // Truncation and extension too.
        for cut in 0..wire.len() {
            let res = OneShotMessage::from_bytes(&wire[..cut])
                .map_err(OneShotError::from)
                .and_then(|m| b.store.open(&m, CTX));
            assert!(res.is_err(), "truncation to {cut} accepted");
        }
        let mut long = wire.clone();
        long.push(0);
        assert!(OneShotMessage::from_bytes(&long).is_err());
    }

    #[test]
    fn wrong_context_is_rejected() {
        let mut rng = StdRng::seed_from_u64(7);
        let (a, b) = (party(&mut rng), party(&mut rng));
        let msg = sealed(&mut rng, &a, &b, b"ctx");
        assert_eq!(
            b.store.open(&msg, b"from device C to device B: dcgka"),
            Err(OneShotError::Decrypt)
        );
        assert_eq!(b.store.open(&msg, b""), Err(OneShotError::Decrypt));
    }

    #[test]
    fn replay_is_detectable_by_message_id() {
        let mut rng = StdRng::seed_from_u64(8);
        let (a, b) = (party(&mut rng), party(&mut rng));
        let m1 = sealed(&mut rng, &a, &b, b"same");
        let m2 = sealed(&mut rng, &a, &b, b"same");
        // Opening is stateless: a replay opens again; the id is what callers dedupe on.
        assert!(b.store.open(&m1, CTX).is_ok() && b.store.open(&m1, CTX).is_ok());
        let again = OneShotMessage::from_bytes(&m1.to_bytes()).unwrap();
        assert_eq!(m1.message_id(), again.message_id());
        assert_ne!(m1.message_id(), m2.message_id());
    }

    #[test]
    fn forged_prekey_signature_is_rejected() {
        let mut rng = StdRng::seed_from_u64(11);
        let (b, mallory) = (party(&mut rng), party(&mut rng));
        let signed = b.store.signed_current(&b.device);
        // Signed by someone else.
        let forged = b.store.current().sign(&mallory.device);
        assert_eq!(
            forged.verify(&b.device.public()),
            Err(OneShotError::BadPrekeySignature)
        );
        // Key swapped under a genuine signature.
        let mut swapped = signed;
        swapped.public = mallory.store.current().public();
        assert_eq!(
            swapped.verify(&b.device.public()),
            Err(OneShotError::BadPrekeySignature)
        );
        // Id or timestamp changed.
        let mut re_id = signed;
        re_id.id ^= 1;
        assert!(re_id.verify(&b.device.public()).is_err());
        let mut re_time = signed;
        re_time.created_at += 1;
        assert!(re_time.verify(&b.device.public()).is_err());
        // Every bit flip of the encoding fails to decode or to verify.
        let wire = signed.to_bytes();
        for i in 0..wire.len() * 8 {
            let mut bad = wire.clone();
            bad[i / 8] ^= 1 << (i % 8);
            if let Ok(sp) = SignedPrekey::from_bytes(&bad) {
                assert!(sp.verify(&b.device.public()).is_err(), "bit {i}");
            }
        }
        assert_eq!(SignedPrekey::from_bytes(&wire).unwrap(), signed);
    }

    #[test]
    fn small_order_keys_are_rejected() {
        let mut rng = StdRng::seed_from_u64(12);
        let (a, b) = (party(&mut rng), party(&mut rng));
        assert!(is_small_order(&DhPublic(SMALL)));
        assert!(is_small_order(&DhPublic([0; 32])));
        assert!(!is_small_order(&a.dh.public()));
        // A small-order prekey, even validly signed, cannot be verified or decoded.
        let mut sp = b.store.signed_current(&b.device);
        sp.public = DhPublic(SMALL);
        sp.signature = b
            .device
            .sign(PREKEY_SIG, &signed_bytes(sp.id, &sp.public, sp.created_at));
        assert_eq!(
            sp.verify(&b.device.public()),
            Err(OneShotError::SmallOrderKey("prekey"))
        );
        assert!(SignedPrekey::from_bytes(&sp.to_bytes()).is_err());
        // A small-order ephemeral in a message is refused by the first DH (`es`).
        for bad in [SMALL, [0; 32]] {
            let mut msg = sealed(&mut rng, &a, &b, b"x");
            msg.noise[..32].copy_from_slice(&bad);
            assert_eq!(b.store.open(&msg, CTX), Err(OneShotError::NonContributory));
        }
        // The DH used inside snow refuses all-zero results.
        let mut dh = CheckedX25519::default();
        dh.set(&[7; 32]);
        let mut out = [0u8; 32];
        assert_eq!(dh.dh(&SMALL, &mut out), Err(snow::Error::Dh));
        assert!(dh.dh(&a.dh.public().0, &mut out).is_ok());
    }

    /// A sender whose static key is a small-order point, built with snow and a lying DH, must
    /// fail cleanly at the recipient (its `ss` DH is all zeros).
    #[test]
    fn small_order_sender_static_is_rejected() {
        struct EvilResolver;
        #[derive(Default)]
        struct EvilDh {
            inner: CheckedX25519,
            evil: bool,
        }
        impl Dh for EvilDh {
            fn name(&self) -> &'static str {
                "25519"
            }
            fn pub_len(&self) -> usize {
                32
            }
            fn priv_len(&self) -> usize {
                32
            }
            fn set(&mut self, _: &[u8]) {
                self.evil = true;
            }
            fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
                self.inner.generate(rng)
            }
            fn pubkey(&self) -> &[u8] {
                if self.evil {
                    &SMALL
                } else {
                    self.inner.pubkey()
                }
            }
            fn privkey(&self) -> &[u8] {
                self.inner.privkey()
            }
            fn dh(&self, pk: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
                if self.evil {
                    out[..32].fill(0);
                    Ok(())
                } else {
                    self.inner.dh(pk, out)
                }
            }
        }
        impl CryptoResolver for EvilResolver {
            fn resolve_rng(&self) -> Option<Box<dyn Random>> {
                CallerResolver::new(&mut StdRng::seed_from_u64(1)).resolve_rng()
            }
            fn resolve_dh(&self, _: &DHChoice) -> Option<Box<dyn Dh>> {
                Some(Box::new(EvilDh::default()))
            }
            fn resolve_hash(&self, c: &HashChoice) -> Option<Box<dyn Hash>> {
                DefaultResolver.resolve_hash(c)
            }
            fn resolve_cipher(&self, c: &CipherChoice) -> Option<Box<dyn Cipher>> {
                DefaultResolver.resolve_cipher(c)
            }
        }
        let mut rng = StdRng::seed_from_u64(13);
        let b = party(&mut rng);
        let pk = verified(&b);
        let mut hs =
            snow::Builder::with_resolver(params(ONESHOT_PATTERN).unwrap(), Box::new(EvilResolver))
                .local_private_key(&[1; 32])
                .unwrap()
                .remote_public_key(pk.public().as_bytes())
                .unwrap()
                .prologue(&prologue(pk.id(), CTX))
                .unwrap()
                .build_initiator()
                .unwrap();
        let mut noise = vec![0u8; 200];
        let n = hs.write_message(b"forged", &mut noise).unwrap();
        noise.truncate(n);
        let msg = OneShotMessage {
            prekey_id: pk.id(),
            noise,
        };
        assert_eq!(b.store.open(&msg, CTX), Err(OneShotError::NonContributory));
    }

    #[test]
    fn store_codec_is_strict() {
        let mut rng = StdRng::seed_from_u64(14);
        let mut b = party(&mut rng);
        for t in 0..3 {
            b.store.rotate(&mut rng, 2000 + t);
        }
        let bytes = b.store.to_bytes();
        let back = PrekeyStore::from_bytes(&bytes).unwrap();
        assert_eq!(back.ids(), b.store.ids());
        assert_eq!(&back.to_bytes()[..], &bytes[..]);
        let mut bad = bytes.to_vec();
        bad[0] = 2;
        assert!(matches!(
            PrekeyStore::from_bytes(&bad),
            Err(DecodeError::UnknownVersion { .. })
        ));
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(
            PrekeyStore::from_bytes(&long).err(),
            Some(DecodeError::TrailingBytes(1))
        );
        // Count above the bound.
        let mut over = bytes.to_vec();
        over[1 + 4 + 44] = 4;
        assert!(matches!(
            PrekeyStore::from_bytes(&over),
            Err(DecodeError::TooLong { .. })
        ));
        // Duplicate ids: make the first previous prekey reuse the current id.
        let mut dup = bytes.to_vec();
        let cur_id = dup[5..9].to_vec();
        dup[50..54].copy_from_slice(&cur_id);
        assert!(matches!(
            PrekeyStore::from_bytes(&dup),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn debug_shows_no_secrets() {
        let mut rng = StdRng::seed_from_u64(15);
        let b = party(&mut rng);
        let secret = b.store.current().secret.to_bytes();
        let hex_secret = hex::encode(&secret[..]);
        let d = format!("{:?} {:?}", b.store, b.store.current());
        assert!(d.contains("PrekeyStore") && d.contains("DhPublic("));
        assert!(!d.contains(&hex_secret[..8]));
        let decimal = format!("{:?}", &secret[..4]);
        assert!(!d.contains(decimal.trim_matches(['[', ']'])));
    }

    fn arb_message() -> impl Strategy<Value = OneShotMessage> {
        (
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), NOISE_X_OVERHEAD..400),
        )
            .prop_map(|(prekey_id, noise)| OneShotMessage { prekey_id, noise })
    }

    proptest! {
        #[test]
        fn message_codec_round_trips(m in arb_message()) {
            let bytes = m.to_bytes();
            prop_assert_eq!(OneShotMessage::from_bytes(&bytes).unwrap(), m);
        }

        #[test]
        fn signed_prekey_codec_round_trips(seed: u64, id: u32, t: u64) {
            let mut rng = StdRng::seed_from_u64(seed);
            let device = DeviceSigningKey::generate(&mut rng);
            let sp = Prekey::generate(&mut rng, id, t).sign(&device);
            let back = SignedPrekey::from_bytes(&sp.to_bytes()).unwrap();
            prop_assert_eq!(back, sp);
            prop_assert!(back.verify(&device.public()).is_ok());
        }

        #[test]
        fn store_codec_round_trips(seed: u64, rotations in 0usize..6) {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = PrekeyStore::new(&mut rng, 0);
            for t in 0..rotations {
                s.rotate(&mut rng, t as u64);
            }
            let bytes = s.to_bytes();
            let back = PrekeyStore::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back.to_bytes()[..], &bytes[..]);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = OneShotMessage::from_bytes(&bytes);
            let _ = SignedPrekey::from_bytes(&bytes);
            let _ = PrekeyStore::from_bytes(&bytes);
        }
    }
}
