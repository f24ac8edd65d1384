//! The signed envelope every guild change travels in.
//!
//! Wire format (version 2), through the shared codec:
//!
//! ```text
//! u8 version = 2 | guild id (32) | author device public key (32)
//! | u32 length + Automerge change bytes (at most MAX_CHANGE_BYTES) | Ed25519 signature (64)
//! ```
//!
//! The signature is the author device's, under [`CHANGE_LABEL`], over everything before it.
//! [`SignedChange::open`] checks, before the change can touch any document: strict decoding,
//! the signature, that the Automerge change parses (which also checks its hash), and that the
//! change's Automerge actor id is exactly the author's device public key ([`actor_for`]), so a
//! device cannot author changes under another device's actor id and an actor id names one device.
//! Only then are the ops decoded ([`crate::ops::ops_of`]). [`open_all`] does the same for many
//! envelopes, verifying their signatures in batches.
//!
//! # Version 2: ZIP-215 signatures
//!
//! Version 1 verified with `ed25519-dalek`'s `verify_strict` (cofactorless). Version 2 verifies
//! the envelope signature, and every device certificate and invite token inside its ops, under
//! the ZIP-215 rules of [`crate::verify`] (cofactored, canonical `S`, keys never of small order),
//! because only with those rules does batch verification always agree with single verification.
//! The two rules agree on every honestly made signature; they differ only on signatures crafted
//! with torsion components (for example a small-order `R`, or a key with a torsion component),
//! which version 2 accepts when the cofactored equation holds. So that no two replicas can judge
//! such a signature differently, the rule is bound to the version byte, which the signature
//! covers: a version-2 replica refuses version-1 envelopes (unknown version) and a version-1
//! replica refuses version-2 envelopes, rather than silently disagreeing.
use automerge::{ActorId, Change, ChangeHash};
use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use securecomm_noise::keys::{DevicePublicKey, DeviceSigningKey, SigLabel, Signature};
use thiserror::Error;

use crate::ops::{GuildOp, OpsError, ops_of_with};
use crate::schema::{GuildId, KeyCache, KeySource};
use crate::verify::{SigItem, verify_each_threads};

/// Signature label for guild changes.
pub const CHANGE_LABEL: SigLabel = SigLabel("SecureComm/crdt/change v1");
/// Version byte of [`SignedChange`].
pub const ENVELOPE_VERSION: u8 = 2;
/// Largest Automerge change accepted, in bytes.
pub const MAX_CHANGE_BYTES: usize = 256 * 1024;

/// The Automerge actor id bound to a device: its public key's 32 bytes.
pub fn actor_for(device: &DevicePublicKey) -> ActorId {
    ActorId::from(device.as_bytes())
}

/// Parses Automerge change bytes, turning a panic inside Automerge into an error.
///
/// Automerge 0.12's parser panics on some malformed inputs (found by the `crdt_envelope` fuzz
/// target: a 21-byte bundle chunk). Anyone can sign garbage with their own device key, so the
/// parse must not be able to take the replica down.
///
/// Only uncompressed change chunks (chunk type 1) are accepted: a guild change is never a
/// document, compressed or bundle chunk, and Automerge's bundle parser can be made to allocate
/// gigabytes from a few bytes (also a fuzz finding).
pub fn parse_change(bytes: &[u8]) -> Result<Change, String> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    if bytes.get(..4) != Some(&MAGIC[..]) || bytes.get(8) != Some(&1) {
        return Err("expected an uncompressed Automerge change chunk".into());
    }
    let owned = bytes.to_vec();
    match std::panic::catch_unwind(move || Change::from_bytes(owned)) {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("Automerge parser panicked".into()),
    }
}

/// A guild change with its author's signature.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedChange {
    /// The guild it belongs to.
    pub guild: GuildId,
    /// The authoring device.
    pub author: DevicePublicKey,
    /// The raw Automerge change.
    pub change: Vec<u8>,
    /// The author's signature.
    pub sig: Signature,
}

impl std::fmt::Debug for SignedChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedChange")
            .field("guild", &self.guild)
            .field("author", &self.author)
            .field("change_len", &self.change.len())
            .finish()
    }
}

/// Why an envelope was rejected before reaching the document.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    /// The bytes are not a valid envelope encoding.
    #[error("malformed envelope: {0}")]
    Decode(#[from] DecodeError),
    /// The envelope is for another guild.
    #[error("envelope for guild {got:?}, expected {expected:?}")]
    WrongGuild {
        /// This guild.
        expected: GuildId,
        /// The envelope's.
        got: GuildId,
    },
    /// The signature does not verify under the author's key.
    #[error("change signature does not verify")]
    BadSignature,
    /// The Automerge bytes are not a valid change.
    #[error("invalid Automerge change: {0}")]
    BadChange(String),
    /// The change's actor id is not the author device's.
    #[error("actor id does not belong to the author device")]
    ActorMismatch,
    /// The change is not a well-formed list of guild ops.
    #[error("{0}")]
    Ops(#[from] OpsError),
}

/// An envelope whose signature, change and ops have been checked.
#[derive(Debug, Clone)]
pub struct OpenedChange {
    /// The envelope as received.
    pub envelope: SignedChange,
    /// The parsed Automerge change.
    pub change: Change,
    /// Its decoded guild ops.
    pub ops: Vec<GuildOp>,
}

impl OpenedChange {
    /// The change's hash.
    pub fn hash(&self) -> ChangeHash {
        self.change.hash()
    }
}

impl SignedChange {
    fn signed_part(guild: &GuildId, author: &DevicePublicKey, change: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(change.len() + 80);
        w.u8(ENVELOPE_VERSION);
        guild.encode(&mut w);
        author.encode(&mut w);
        w.bytes32(change);
        w.into_bytes()
    }

    /// Signs raw change bytes with the author's device key.
    pub fn sign(device: &DeviceSigningKey, guild: GuildId, change: Vec<u8>) -> Self {
        let author = device.public();
        let sig = device.sign(CHANGE_LABEL, &Self::signed_part(&guild, &author, &change));
        Self {
            guild,
            author,
            change,
            sig,
        }
    }

    /// Verifies the signature and the actor binding, parses the change and decodes its ops.
    pub fn open(self, guild: &GuildId) -> Result<OpenedChange, EnvelopeError> {
        if &self.guild != guild {
            return Err(EnvelopeError::WrongGuild {
                expected: *guild,
                got: self.guild,
            });
        }
        if !self.sig_item().verify() {
            return Err(EnvelopeError::BadSignature);
        }
        self.open_verified(&mut KeyCache::new())
    }

    /// The envelope's signature as a [`SigItem`] (ZIP-215, see [`crate::verify`]).
    pub fn sig_item(&self) -> SigItem {
        // The signed bytes are `signed_part`: this fixed-size header, then the change bytes
        // exactly as `Writer::bytes32` writes them. Hashed in two parts, without copying the
        // change into one buffer.
        let len = u32::try_from(self.change.len()).unwrap_or(u32::MAX);
        let mut w = Writer::with_capacity(69);
        w.u8(ENVELOPE_VERSION);
        self.guild.encode(&mut w);
        self.author.encode(&mut w);
        w.u32(len);
        let header = w.into_bytes();
        let body = self.change.get(..len as usize).unwrap_or(&self.change);
        SigItem::device(&self.author, CHANGE_LABEL, &[&header, body], &self.sig)
    }

    /// The checks of [`SignedChange::open`] after the guild and signature checks.
    fn open_verified(self, keys: &mut impl KeySource) -> Result<OpenedChange, EnvelopeError> {
        let (change, ops) = self.check_verified(keys)?;
        Ok(OpenedChange {
            envelope: self,
            change,
            ops,
        })
    }

    /// The checks of [`SignedChange::open`] after the guild and signature checks, made
    /// **before** the signature verdict is known: the caller must refuse the result with
    /// [`EnvelopeError::BadSignature`] if the signature fails, whatever this returned (the
    /// pipelined [`crate::Guild::receive`] does).
    pub(crate) fn open_unverified(
        self,
        keys: &mut impl KeySource,
    ) -> Result<OpenedChange, EnvelopeError> {
        self.open_verified(keys)
    }

    /// [`SignedChange::open_verified`] by reference: the parsed change and its ops.
    fn check_verified(
        &self,
        keys: &mut impl KeySource,
    ) -> Result<(Change, Vec<GuildOp>), EnvelopeError> {
        let change = parse_change(&self.change).map_err(EnvelopeError::BadChange)?;
        let ops = self.check_parsed(&change, keys)?;
        Ok((change, ops))
    }

    /// Like [`SignedChange::open`] for a change already parsed from `self.change` (when loading
    /// a saved document): checks the signature, the actor binding and the ops.
    pub fn open_parsed(
        self,
        guild: &GuildId,
        change: Change,
    ) -> Result<OpenedChange, EnvelopeError> {
        self.open_parsed_inner(guild, change, true, &mut KeyCache::new())
    }

    /// [`SignedChange::open_parsed`] without the signature check, for
    /// [`crate::Guild::load_trusted`] only (changes this replica verified before storing them).
    pub(crate) fn open_parsed_trusted(
        self,
        guild: &GuildId,
        change: Change,
        keys: &mut impl KeySource,
    ) -> Result<OpenedChange, EnvelopeError> {
        self.open_parsed_inner(guild, change, false, keys)
    }

    fn open_parsed_inner(
        self,
        guild: &GuildId,
        change: Change,
        check_sig: bool,
        keys: &mut impl KeySource,
    ) -> Result<OpenedChange, EnvelopeError> {
        if &self.guild != guild {
            return Err(EnvelopeError::WrongGuild {
                expected: *guild,
                got: self.guild,
            });
        }
        if change.raw_bytes() != self.change.as_slice() {
            return Err(EnvelopeError::BadChange(
                "parsed change differs from envelope".into(),
            ));
        }
        if check_sig && !self.sig_item().verify() {
            return Err(EnvelopeError::BadSignature);
        }
        self.finish_open(change, keys)
    }

    fn finish_open(
        self,
        change: Change,
        keys: &mut impl KeySource,
    ) -> Result<OpenedChange, EnvelopeError> {
        let ops = self.check_parsed(&change, keys)?;
        Ok(OpenedChange {
            envelope: self,
            change,
            ops,
        })
    }

    /// The actor binding, then the ops.
    fn check_parsed(
        &self,
        change: &Change,
        keys: &mut impl KeySource,
    ) -> Result<Vec<GuildOp>, EnvelopeError> {
        if change.actor_id() != &actor_for(&self.author) {
            return Err(EnvelopeError::ActorMismatch);
        }
        // The author's key is already decoded: a redemption's certificate names it again.
        keys.note_device(self.author);
        Ok(ops_of_with(change, keys)?)
    }
}

/// [`SignedChange::open`] for many envelopes: the same checks in the same order, with the
/// signatures verified in batches ([`crate::verify::verify_each`]), so each result is exactly what `open` would
/// have returned for that envelope.
pub fn open_all(
    envelopes: Vec<SignedChange>,
    guild: &GuildId,
) -> Vec<Result<OpenedChange, EnvelopeError>> {
    open_all_with(envelopes, guild, &mut KeyCache::new(), 1)
}

/// [`open_all`] decoding keys through `keys`, verifying on up to `threads` threads.
pub(crate) fn open_all_with(
    envelopes: Vec<SignedChange>,
    guild: &GuildId,
    keys: &mut impl KeySource,
    threads: usize,
) -> Vec<Result<OpenedChange, EnvelopeError>> {
    // Window by window (a few batches' worth), so each envelope is still in cache when it is
    // parsed right after its signature is checked.
    let window = crate::verify::BATCH_CHUNK * threads.clamp(1, crate::verify::MAX_VERIFY_THREADS);
    let mut out = Vec::with_capacity(envelopes.len());
    let mut rest = envelopes.into_iter().peekable();
    while rest.peek().is_some() {
        let envs: Vec<SignedChange> = rest.by_ref().take(window).collect();
        let mut items = Vec::with_capacity(envs.len());
        let mut slots = Vec::with_capacity(envs.len());
        for e in &envs {
            if &e.guild == guild {
                slots.push(Some(items.len()));
                items.push(e.sig_item());
            } else {
                slots.push(None);
            }
        }
        let ok = verify_each_threads(&items, threads);
        out.extend(envs.into_iter().zip(slots).map(|(e, slot)| match slot {
            None => Err(EnvelopeError::WrongGuild {
                expected: *guild,
                got: e.guild,
            }),
            Some(i) if ok.get(i).copied().unwrap_or(false) => e.open_verified(keys),
            Some(_) => Err(EnvelopeError::BadSignature),
        }));
    }
    out
}

impl Encode for SignedChange {
    fn encode(&self, w: &mut Writer) {
        w.u8(ENVELOPE_VERSION);
        self.guild.encode(w);
        self.author.encode(w);
        w.bytes32(&self.change);
        self.sig.encode(w);
    }
}

impl Decode for SignedChange {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("signed change", ENVELOPE_VERSION)?;
        Ok(Self {
            guild: GuildId::decode(r)?,
            author: DevicePublicKey::decode(r)?,
            change: r.bytes32("change", MAX_CHANGE_BYTES)?.to_vec(),
            sig: Signature::decode(r)?,
        })
    }
}
