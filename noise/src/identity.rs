//! Users, devices, device certificates and the hash-chained device list.
//!
//! * A **user** is a [`RootSigningKey`]. The root key signs exactly two kinds of statement:
//!   device certificates and device-list entries, each under its own [`SigLabel`].
//! * A **device** holds [`DeviceKeys`]: an Ed25519 [`DeviceSigningKey`] (its libp2p identity)
//!   and an X25519 [`DhSecret`].
//! * A [`DeviceCertificate`] is the root's statement "this device key and this X25519 key belong
//!   to me, the device is called `name`, created at `created_at`".
//! * A [`DeviceList`] is the user's signed history of devices: an append-only chain of entries,
//!   each adding a certificate or revoking a device, each carrying its sequence number, the hash
//!   of the previous entry and the root's signature. Peers gossip the list; a peer that already
//!   holds a verified list accepts a new one only if it extends what it has
//!   ([`DeviceList::accept_update`]), so a relay cannot roll a user back to a revoked device or
//!   fork the history without the fork being detected.
//!
//! # Wire formats (all integers big-endian)
//!
//! ```text
//! DeviceCertificate = 0x01 | root(32) | device(32) | dh(32) | created_at u64
//!                   | name_len u16 (<= 64) | name (UTF-8) | signature(64)
//!     signature = root.sign(CERT_LABEL, every byte before the signature)
//!
//! DeviceList        = 0x01 | root(32) | count u16 (<= 1024) | entry * count
//! entry             = seq u32 | prev(32) | op | signature(64)
//! op                = 0x01 DeviceCertificate      (add)
//!                   | 0x02 device(32)             (revoke)
//!     signature = root.sign(LIST_ENTRY_LABEL, root(32) | seq | prev | op)
//!     prev      = SHA-256(ENTRY_HASH_LABEL | 0x00 | previous entry's full encoding),
//!                 or SHA-256(GENESIS_LABEL | 0x00 | root) for entry 0
//!
//! UserIdentity secret encoding (only ever stored sealed, see `keystore`)
//!                   = 0x01 | root seed(32) | device seed(32) | X25519 secret(32)
//!                   | DeviceCertificate
//! ```
//!
//! # What verification guarantees
//!
//! A [`DeviceCertificate`] or [`DeviceList`] value only exists after its signatures were
//! checked: decoding verifies, and there is no way to build one around an unchecked signature.
//! A verified list has consecutive sequence numbers from 0, an unbroken hash chain, every entry
//! signed by the list's root, every certificate issued by that same root, no device added twice
//! (a revoked device stays revoked; a re-installed device gets a new key), revocations only of
//! active devices, at most [`MAX_LIST_ENTRIES`] entries and at most [`MAX_ACTIVE_DEVICES`] active
//! devices at any point.

use std::collections::BTreeSet;

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::keys::{
    DevicePublicKey, DeviceSigningKey, DhPublic, DhSecret, RootPublicKey, RootSigningKey, SigLabel,
    Signature, SignatureError, hex_prefix,
};

/// Label of the root's signature on a device certificate.
pub const CERT_LABEL: SigLabel = SigLabel("SecureComm/identity/device-certificate v1");
/// Label of the root's signature on a device-list entry.
pub const LIST_ENTRY_LABEL: SigLabel = SigLabel("SecureComm/identity/device-list-entry v1");
/// Domain label of the hash that chains device-list entries.
const ENTRY_HASH_LABEL: &[u8] = b"SecureComm/identity/device-list-entry-hash v1";
/// Domain label of the `prev` value of a list's first entry.
const GENESIS_LABEL: &[u8] = b"SecureComm/identity/device-list-genesis v1";

/// Longest device name, in bytes of UTF-8.
pub const MAX_DEVICE_NAME_LEN: usize = 64;
/// Most entries a device list may hold.
pub const MAX_LIST_ENTRIES: usize = 1024;
/// Most devices a user may have active at once.
pub const MAX_ACTIVE_DEVICES: usize = 16;

const CERT_VERSION: u8 = 1;
const LIST_VERSION: u8 = 1;
const SECRET_VERSION: u8 = 1;
const OP_ADD: u8 = 1;
const OP_REVOKE: u8 = 2;

/// Why an identity object was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    /// The bytes are not a well-formed encoding.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A signature does not verify, or a key is not a valid point.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A device name is longer than [`MAX_DEVICE_NAME_LEN`] bytes.
    #[error("device name too long: at most {max} bytes, got {got}")]
    NameTooLong {
        /// The bound.
        max: usize,
        /// The name's length.
        got: usize,
    },
    /// A key belongs to a different user than the one expected.
    #[error(
        "root key mismatch: expected {}.., got {}..",
        hex_prefix(expected),
        hex_prefix(got)
    )]
    RootMismatch {
        /// The root the object should belong to (its 32-byte encoding).
        expected: [u8; 32],
        /// The root it names or was signed with.
        got: [u8; 32],
    },
    /// An entry's sequence number is not the next one.
    #[error("device list entry out of sequence: expected {expected}, got {got}")]
    BadSequence {
        /// The next sequence number.
        expected: u32,
        /// The number found.
        got: u32,
    },
    /// An entry's `prev` is not the hash of the entry before it.
    #[error("device list entry {seq}: previous-entry hash does not match")]
    BadPrevHash {
        /// The entry's sequence number.
        seq: u32,
    },
    /// A device that was added before (and maybe revoked since) is added again.
    #[error(
        "device list entry {seq}: device {}.. was already added",
        hex_prefix(device)
    )]
    DuplicateAdd {
        /// The entry's sequence number.
        seq: u32,
        /// The device key's 32-byte encoding.
        device: [u8; 32],
    },
    /// A revocation names a device that is not active.
    #[error(
        "device list entry {seq}: revoked device {}.. is not active",
        hex_prefix(device)
    )]
    RevokeUnknown {
        /// The entry's sequence number.
        seq: u32,
        /// The device key's 32-byte encoding.
        device: [u8; 32],
    },
    /// The list would exceed [`MAX_LIST_ENTRIES`].
    #[error("device list full: at most {max} entries")]
    TooManyEntries {
        /// The bound.
        max: usize,
    },
    /// The user would have more than [`MAX_ACTIVE_DEVICES`] active devices.
    #[error("too many active devices: at most {max}")]
    TooManyActiveDevices {
        /// The bound.
        max: usize,
    },
    /// Two lists of the same user disagree on an entry: one of them is not an extension of the
    /// other.
    #[error("device lists diverge at entry {at}")]
    Fork {
        /// The first sequence number at which they differ.
        at: usize,
    },
    /// The parts of a stored identity do not belong together.
    #[error("identity parts do not match: {0}")]
    Inconsistent(&'static str),
}

impl IdentityError {
    /// A static description, for the [`Decode`] impls whose error type has no room for detail.
    fn as_decode_error(&self) -> DecodeError {
        match self {
            Self::Decode(e) => e.clone(),
            Self::Signature(_) => DecodeError::Invalid("signature"),
            Self::NameTooLong { .. } => DecodeError::Invalid("device name"),
            Self::RootMismatch { .. } => DecodeError::Invalid("certificate root"),
            Self::BadSequence { .. } => DecodeError::Invalid("device list sequence"),
            Self::BadPrevHash { .. } => DecodeError::Invalid("device list hash chain"),
            Self::DuplicateAdd { .. } => DecodeError::Invalid("device list duplicate add"),
            Self::RevokeUnknown { .. } => DecodeError::Invalid("device list revocation"),
            Self::TooManyEntries { .. } => DecodeError::Invalid("device list length"),
            Self::TooManyActiveDevices { .. } => DecodeError::Invalid("device list active count"),
            Self::Fork { .. } => DecodeError::Invalid("device list fork"),
            Self::Inconsistent(what) => DecodeError::Invalid(what),
        }
    }
}

/// One device's secret keys: Ed25519 for signing, X25519 for key agreement.
///
/// Zeroized on drop (both keys zeroize themselves); `Debug` shows only the public keys.
#[derive(Clone)]
pub struct DeviceKeys {
    signing: DeviceSigningKey,
    dh: DhSecret,
}

impl DeviceKeys {
    /// Fresh keys from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self {
            signing: DeviceSigningKey::generate(rng),
            dh: DhSecret::generate(rng),
        }
    }

    /// Bundles existing keys.
    pub fn from_parts(signing: DeviceSigningKey, dh: DhSecret) -> Self {
        Self { signing, dh }
    }

    /// The Ed25519 signing key.
    pub fn signing(&self) -> &DeviceSigningKey {
        &self.signing
    }

    /// The X25519 secret.
    pub fn dh(&self) -> &DhSecret {
        &self.dh
    }

    /// The Ed25519 public key.
    pub fn public(&self) -> DevicePublicKey {
        self.signing.public()
    }

    /// The X25519 public key.
    pub fn dh_public(&self) -> DhPublic {
        self.dh.public()
    }
}

impl ZeroizeOnDrop for DeviceKeys {}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("device", &self.public())
            .field("dh", &self.dh_public())
            .finish()
    }
}

/// The root key's signed statement that a device belongs to the user. Only exists verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    root: RootPublicKey,
    device: DevicePublicKey,
    dh: DhPublic,
    created_at: u64,
    name: String,
    signature: Signature,
}

impl DeviceCertificate {
    /// Signs a certificate for `device` / `dh` with the user's root key. `created_at` is a Unix
    /// timestamp in seconds supplied by the caller.
    pub fn issue(
        root: &RootSigningKey,
        device: &DevicePublicKey,
        dh: &DhPublic,
        name: &str,
        created_at: u64,
    ) -> Result<Self, IdentityError> {
        check_name(name)?;
        let mut cert = Self {
            root: root.public(),
            device: *device,
            dh: *dh,
            created_at,
            name: name.to_owned(),
            signature: Signature([0; 64]),
        };
        cert.signature = root.sign(CERT_LABEL, &cert.signed_bytes());
        Ok(cert)
    }

    /// The user's root key that issued this certificate.
    pub fn root(&self) -> &RootPublicKey {
        &self.root
    }

    /// The device's Ed25519 key.
    pub fn device(&self) -> &DevicePublicKey {
        &self.device
    }

    /// The device's X25519 key.
    pub fn dh(&self) -> &DhPublic {
        &self.dh
    }

    /// When the certificate was issued (Unix seconds, as claimed by the issuer).
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// The device's display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the root's signature (and the name bound) again.
    pub fn verify(&self) -> Result<(), IdentityError> {
        check_name(&self.name)?;
        self.root
            .verify(CERT_LABEL, &self.signed_bytes(), &self.signature)?;
        Ok(())
    }

    /// Parses and verifies a certificate, with a precise error.
    pub fn parse(bytes: &[u8]) -> Result<Self, IdentityError> {
        let mut r = Reader::new(bytes);
        let cert = Self::decode_unverified(&mut r)?;
        r.finish()?;
        cert.verify()?;
        Ok(cert)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(1 + 96 + 8 + 2 + self.name.len());
        self.encode_unsigned(&mut w);
        w.into_bytes()
    }

    fn encode_unsigned(&self, w: &mut Writer) {
        w.u8(CERT_VERSION);
        self.root.encode(w);
        self.device.encode(w);
        self.dh.encode(w);
        w.u64(self.created_at);
        w.bytes16(self.name.as_bytes());
    }

    fn decode_unverified(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("device certificate", CERT_VERSION)?;
        let root = RootPublicKey::decode(r)?;
        let device = DevicePublicKey::decode(r)?;
        let dh = DhPublic::decode(r)?;
        let created_at = r.u64()?;
        let name = r.bytes16("device name", MAX_DEVICE_NAME_LEN)?;
        let name = std::str::from_utf8(name)
            .map_err(|_| DecodeError::Invalid("device name (not UTF-8)"))?
            .to_owned();
        let signature = Signature::decode(r)?;
        Ok(Self {
            root,
            device,
            dh,
            created_at,
            name,
            signature,
        })
    }
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    if name.len() > MAX_DEVICE_NAME_LEN {
        return Err(IdentityError::NameTooLong {
            max: MAX_DEVICE_NAME_LEN,
            got: name.len(),
        });
    }
    Ok(())
}

impl Encode for DeviceCertificate {
    fn encode(&self, w: &mut Writer) {
        self.encode_unsigned(w);
        self.signature.encode(w);
    }
}

impl Decode for DeviceCertificate {
    /// Decodes and verifies the signature.
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let cert = Self::decode_unverified(r)?;
        cert.verify().map_err(|e| e.as_decode_error())?;
        Ok(cert)
    }
}

/// What a device-list entry does.
// `Add` is larger than `Revoke`; entries live in a Vec bounded by MAX_LIST_ENTRIES, so the
// padding costs at most a few hundred KiB and boxing would only complicate matching.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceOp {
    /// Adds a device, with its certificate.
    Add(DeviceCertificate),
    /// Revokes an active device for good.
    Revoke(DevicePublicKey),
}

impl Encode for DeviceOp {
    fn encode(&self, w: &mut Writer) {
        match self {
            Self::Add(cert) => {
                w.u8(OP_ADD);
                cert.encode(w);
            }
            Self::Revoke(device) => {
                w.u8(OP_REVOKE);
                device.encode(w);
            }
        }
    }
}

impl DeviceOp {
    fn decode_unverified(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            OP_ADD => Ok(Self::Add(DeviceCertificate::decode_unverified(r)?)),
            OP_REVOKE => Ok(Self::Revoke(DevicePublicKey::decode(r)?)),
            got => Err(DecodeError::UnknownTag {
                what: "device list operation",
                got: u64::from(got),
            }),
        }
    }
}

/// One signed link of a [`DeviceList`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    seq: u32,
    prev: [u8; 32],
    op: DeviceOp,
    signature: Signature,
}

impl ListEntry {
    /// The entry's position in the list, from 0.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// The hash of the entry before it (or the genesis value).
    pub fn prev(&self) -> &[u8; 32] {
        &self.prev
    }

    /// What the entry does.
    pub fn op(&self) -> &DeviceOp {
        &self.op
    }

    fn signed_bytes(&self, root: &RootPublicKey) -> Vec<u8> {
        let mut w = Writer::new();
        root.encode(&mut w);
        self.encode_unsigned(&mut w);
        w.into_bytes()
    }

    fn encode_unsigned(&self, w: &mut Writer) {
        w.u32(self.seq);
        w.put(&self.prev);
        self.op.encode(w);
    }

    /// The chaining hash of this entry: what the next entry's `prev` must be.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(ENTRY_HASH_LABEL);
        h.update([0u8]);
        h.update(self.to_bytes());
        h.finalize().into()
    }

    fn decode_unverified(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let seq = r.u32()?;
        let prev = r.array()?;
        let op = DeviceOp::decode_unverified(r)?;
        let signature = Signature::decode(r)?;
        Ok(Self {
            seq,
            prev,
            op,
            signature,
        })
    }
}

impl Encode for ListEntry {
    fn encode(&self, w: &mut Writer) {
        self.encode_unsigned(w);
        self.signature.encode(w);
    }
}

/// The `prev` value of a list's first entry: binds the chain to its root from the start.
pub fn genesis_hash(root: &RootPublicKey) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(GENESIS_LABEL);
    h.update([0u8]);
    h.update(root.as_bytes());
    h.finalize().into()
}

/// How [`DeviceList::accept_update`] changed the local list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListUpdate {
    /// The offered list is the one we hold.
    Unchanged,
    /// The offered list extends ours; we now hold it.
    Extended {
        /// Entries that are new to us.
        new_entries: usize,
    },
    /// The offered list is a strict prefix of ours (the sender is behind); we keep ours.
    Stale,
}

/// A user's verified, hash-chained, root-signed device history. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList {
    root: RootPublicKey,
    entries: Vec<ListEntry>,
    /// `hashes[i]` is `entries[i].hash()`.
    hashes: Vec<[u8; 32]>,
    /// Indices into `entries` of the `Add` entries of currently active devices, in list order.
    active: Vec<usize>,
    /// Every device ever added.
    seen: BTreeSet<DevicePublicKey>,
}

impl DeviceList {
    /// An empty list for `root`.
    pub fn new(root: RootPublicKey) -> Self {
        Self {
            root,
            entries: Vec::new(),
            hashes: Vec::new(),
            active: Vec::new(),
            seen: BTreeSet::new(),
        }
    }

    /// Verifies `entries` as the complete list of `root` and builds the list from them.
    pub fn from_entries(
        root: RootPublicKey,
        entries: Vec<ListEntry>,
    ) -> Result<Self, IdentityError> {
        if entries.len() > MAX_LIST_ENTRIES {
            return Err(IdentityError::TooManyEntries {
                max: MAX_LIST_ENTRIES,
            });
        }
        let mut list = Self::new(root);
        for entry in entries {
            list.apply(entry)?;
        }
        Ok(list)
    }

    /// Parses and verifies a list, with a precise error.
    pub fn parse(bytes: &[u8]) -> Result<Self, IdentityError> {
        let mut r = Reader::new(bytes);
        let (root, entries) = Self::decode_unverified(&mut r)?;
        r.finish()?;
        Self::from_entries(root, entries)
    }

    /// Checks the whole chain again: sequence numbers, hashes, signatures, certificate roots,
    /// no double add, revocations of active devices only, bounds.
    pub fn verify(&self) -> Result<(), IdentityError> {
        Self::from_entries(self.root, self.entries.clone()).map(|_| ())
    }

    /// The user this list belongs to.
    pub fn root(&self) -> &RootPublicKey {
        &self.root
    }

    /// All entries, oldest first.
    pub fn entries(&self) -> &[ListEntry] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The hash the next entry must chain to: the last entry's hash, or the genesis value.
    pub fn head_hash(&self) -> [u8; 32] {
        self.hashes
            .last()
            .copied()
            .unwrap_or_else(|| genesis_hash(&self.root))
    }

    /// The certificates of the active devices, in the order they were added.
    pub fn active_devices(&self) -> impl Iterator<Item = &DeviceCertificate> + '_ {
        self.active
            .iter()
            .filter_map(|&i| match self.entries.get(i).map(ListEntry::op) {
                Some(DeviceOp::Add(cert)) => Some(cert),
                _ => None,
            })
    }

    /// The certificate of `device` if it is active.
    pub fn active_certificate(&self, device: &DevicePublicKey) -> Option<&DeviceCertificate> {
        self.active_devices().find(|c| c.device() == device)
    }

    /// Appends an entry adding `cert`, signed with `root`.
    pub fn add_device(
        &mut self,
        root: &RootSigningKey,
        cert: DeviceCertificate,
    ) -> Result<&ListEntry, IdentityError> {
        self.append(root, DeviceOp::Add(cert))
    }

    /// Appends an entry revoking `device`, signed with `root`.
    pub fn revoke_device(
        &mut self,
        root: &RootSigningKey,
        device: DevicePublicKey,
    ) -> Result<&ListEntry, IdentityError> {
        self.append(root, DeviceOp::Revoke(device))
    }

    /// Replaces this list by `newer` if `newer` extends it (same root, this list is a prefix of
    /// it). A shorter list that is a prefix of ours is reported as [`ListUpdate::Stale`] and
    /// ignored; any disagreement is a [`IdentityError::Fork`] and ours is kept.
    pub fn accept_update(&mut self, newer: DeviceList) -> Result<ListUpdate, IdentityError> {
        if newer.root != self.root {
            return Err(IdentityError::RootMismatch {
                expected: self.root.to_bytes(),
                got: newer.root.to_bytes(),
            });
        }
        if let Some(at) = self
            .hashes
            .iter()
            .zip(&newer.hashes)
            .position(|(a, b)| a != b)
        {
            return Err(IdentityError::Fork { at });
        }
        let ours = self.len();
        let theirs = newer.len();
        Ok(match theirs.cmp(&ours) {
            std::cmp::Ordering::Equal => ListUpdate::Unchanged,
            std::cmp::Ordering::Less => ListUpdate::Stale,
            std::cmp::Ordering::Greater => {
                *self = newer;
                ListUpdate::Extended {
                    new_entries: theirs - ours,
                }
            }
        })
    }

    fn append(&mut self, root: &RootSigningKey, op: DeviceOp) -> Result<&ListEntry, IdentityError> {
        if root.public() != self.root {
            return Err(IdentityError::RootMismatch {
                expected: self.root.to_bytes(),
                got: root.public().to_bytes(),
            });
        }
        let seq = self.next_seq()?;
        let mut entry = ListEntry {
            seq,
            prev: self.head_hash(),
            op,
            signature: Signature([0; 64]),
        };
        entry.signature = root.sign(LIST_ENTRY_LABEL, &entry.signed_bytes(&self.root));
        self.apply(entry)?;
        self.entries.last().ok_or(IdentityError::TooManyEntries {
            max: MAX_LIST_ENTRIES,
        })
    }

    fn next_seq(&self) -> Result<u32, IdentityError> {
        if self.entries.len() >= MAX_LIST_ENTRIES {
            return Err(IdentityError::TooManyEntries {
                max: MAX_LIST_ENTRIES,
            });
        }
        u32::try_from(self.entries.len()).map_err(|_| IdentityError::TooManyEntries {
            max: MAX_LIST_ENTRIES,
        })
    }

    /// Checks `entry` against the current state and appends it. The only way entries get in.
    fn apply(&mut self, entry: ListEntry) -> Result<(), IdentityError> {
        let expected = self.next_seq()?;
        if entry.seq != expected {
            return Err(IdentityError::BadSequence {
                expected,
                got: entry.seq,
            });
        }
        if entry.prev != self.head_hash() {
            return Err(IdentityError::BadPrevHash { seq: entry.seq });
        }
        self.root.verify(
            LIST_ENTRY_LABEL,
            &entry.signed_bytes(&self.root),
            &entry.signature,
        )?;
        let index = self.entries.len();
        match &entry.op {
            DeviceOp::Add(cert) => {
                if cert.root != self.root {
                    return Err(IdentityError::RootMismatch {
                        expected: self.root.to_bytes(),
                        got: cert.root.to_bytes(),
                    });
                }
                cert.verify()?;
                if self.seen.contains(&cert.device) {
                    return Err(IdentityError::DuplicateAdd {
                        seq: entry.seq,
                        device: cert.device.to_bytes(),
                    });
                }
                if self.active.len() >= MAX_ACTIVE_DEVICES {
                    return Err(IdentityError::TooManyActiveDevices {
                        max: MAX_ACTIVE_DEVICES,
                    });
                }
                self.seen.insert(cert.device);
                self.active.push(index);
            }
            DeviceOp::Revoke(device) => {
                let entries = &self.entries;
                let pos = self.active.iter().position(|&i| {
                    matches!(entries.get(i).map(ListEntry::op),
                        Some(DeviceOp::Add(c)) if c.device == *device)
                });
                match pos {
                    Some(pos) => {
                        self.active.remove(pos);
                    }
                    None => {
                        return Err(IdentityError::RevokeUnknown {
                            seq: entry.seq,
                            device: device.to_bytes(),
                        });
                    }
                }
            }
        }
        self.hashes.push(entry.hash());
        self.entries.push(entry);
        Ok(())
    }

    fn decode_unverified(
        r: &mut Reader<'_>,
    ) -> Result<(RootPublicKey, Vec<ListEntry>), DecodeError> {
        r.version("device list", LIST_VERSION)?;
        let root = RootPublicKey::decode(r)?;
        let n = r.count16("device list entries", MAX_LIST_ENTRIES)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(ListEntry::decode_unverified(r)?);
        }
        Ok((root, entries))
    }
}

impl Encode for DeviceList {
    fn encode(&self, w: &mut Writer) {
        w.u8(LIST_VERSION);
        self.root.encode(w);
        // A verified list never has more than MAX_LIST_ENTRIES (< u16::MAX) entries.
        w.u16(u16::try_from(self.entries.len()).unwrap_or(u16::MAX));
        for e in &self.entries {
            e.encode(w);
        }
    }
}

impl Decode for DeviceList {
    /// Decodes and verifies the whole chain.
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let (root, entries) = Self::decode_unverified(r)?;
        Self::from_entries(root, entries).map_err(|e| e.as_decode_error())
    }
}

/// Everything secret a device holds about its user: the root key, this device's keys and the
/// certificate binding them. Stored only sealed under the passphrase (see `keystore`).
///
/// Zeroized on drop; `Debug` shows only public keys.
#[derive(Clone)]
pub struct UserIdentity {
    root: RootSigningKey,
    device: DeviceKeys,
    certificate: DeviceCertificate,
}

impl UserIdentity {
    /// A new user with one device named `device_name`, created at `created_at` (Unix seconds).
    pub fn generate<R: RngCore + CryptoRng>(
        rng: &mut R,
        device_name: &str,
        created_at: u64,
    ) -> Result<Self, IdentityError> {
        let root = RootSigningKey::generate(rng);
        let device = DeviceKeys::generate(rng);
        let certificate = DeviceCertificate::issue(
            &root,
            &device.public(),
            &device.dh_public(),
            device_name,
            created_at,
        )?;
        Ok(Self {
            root,
            device,
            certificate,
        })
    }

    /// Bundles existing parts, checking that the certificate is the root's, for this device.
    pub fn from_parts(
        root: RootSigningKey,
        device: DeviceKeys,
        certificate: DeviceCertificate,
    ) -> Result<Self, IdentityError> {
        certificate.verify()?;
        if certificate.root != root.public() {
            return Err(IdentityError::RootMismatch {
                expected: root.public().to_bytes(),
                got: certificate.root.to_bytes(),
            });
        }
        if certificate.device != device.public() {
            return Err(IdentityError::Inconsistent(
                "certificate names another device key",
            ));
        }
        if certificate.dh != device.dh_public() {
            return Err(IdentityError::Inconsistent(
                "certificate names another X25519 key",
            ));
        }
        Ok(Self {
            root,
            device,
            certificate,
        })
    }

    /// The user's root key.
    pub fn root(&self) -> &RootSigningKey {
        &self.root
    }

    /// The user's root public key.
    pub fn root_public(&self) -> RootPublicKey {
        self.root.public()
    }

    /// This device's keys.
    pub fn device(&self) -> &DeviceKeys {
        &self.device
    }

    /// This device's certificate.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.certificate
    }

    /// A new device list whose only entry adds this device.
    pub fn genesis_list(&self) -> Result<DeviceList, IdentityError> {
        let mut list = DeviceList::new(self.root.public());
        list.add_device(&self.root, self.certificate.clone())?;
        Ok(list)
    }

    /// The versioned secret encoding, for [`crate::keystore::seal`] only. The buffer is
    /// allocated once at its final size, so no partial copy is left behind by a reallocation.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let cert = self.certificate.to_bytes();
        let mut out = Zeroizing::new(Vec::with_capacity(1 + 3 * 32 + cert.len()));
        out.push(SECRET_VERSION);
        out.extend_from_slice(self.root.seed().as_ref());
        out.extend_from_slice(self.device.signing.seed().as_ref());
        out.extend_from_slice(self.device.dh.to_bytes().as_ref());
        out.extend_from_slice(&cert);
        out
    }

    /// Parses [`Self::to_secret_bytes`], checking that the parts belong together.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let mut r = Reader::new(bytes);
        r.version("user identity secret", SECRET_VERSION)?;
        let root_seed = Zeroizing::new(r.array::<32>()?);
        let device_seed = Zeroizing::new(r.array::<32>()?);
        let dh = Zeroizing::new(r.array::<32>()?);
        let certificate = DeviceCertificate::decode_unverified(&mut r)?;
        r.finish()?;
        let root = RootSigningKey::from_seed(&root_seed);
        let device = DeviceKeys {
            signing: DeviceSigningKey::from_seed(&device_seed),
            dh: DhSecret::from_bytes(*dh),
        };
        Self::from_parts(root, device, certificate)
    }
}

impl ZeroizeOnDrop for UserIdentity {}

impl std::fmt::Debug for UserIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserIdentity")
            .field("root", &self.root.public())
            .field("device", &self.device)
            .field("certificate", &self.certificate)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn cert_for(root: &RootSigningKey, dev: &DeviceKeys, name: &str) -> DeviceCertificate {
        DeviceCertificate::issue(root, &dev.public(), &dev.dh_public(), name, 1_700_000_000)
            .unwrap()
    }

    /// A list with three adds and one revoke, plus its root and device keys.
    fn sample_list() -> (RootSigningKey, Vec<DeviceKeys>, DeviceList) {
        let mut rng = rng();
        let root = RootSigningKey::generate(&mut rng);
        let devs: Vec<_> = (0..3).map(|_| DeviceKeys::generate(&mut rng)).collect();
        let mut list = DeviceList::new(root.public());
        for (i, d) in devs.iter().enumerate() {
            list.add_device(&root, cert_for(&root, d, &format!("device {i}")))
                .unwrap();
        }
        list.revoke_device(&root, devs[1].public()).unwrap();
        (root, devs, list)
    }

    /// Signs an arbitrary entry, bypassing `apply`'s checks, to build adversarial chains.
    fn forge_entry(
        root: &RootSigningKey,
        list_root: &RootPublicKey,
        seq: u32,
        prev: [u8; 32],
        op: DeviceOp,
    ) -> ListEntry {
        let mut e = ListEntry {
            seq,
            prev,
            op,
            signature: Signature([0; 64]),
        };
        e.signature = root.sign(LIST_ENTRY_LABEL, &e.signed_bytes(list_root));
        e
    }

    #[test]
    fn certificate_round_trips_and_verifies() {
        let mut rng = rng();
        let root = RootSigningKey::generate(&mut rng);
        let dev = DeviceKeys::generate(&mut rng);
        let cert = cert_for(&root, &dev, "laptop ☕");
        let bytes = cert.to_bytes();
        assert_eq!(bytes[0], CERT_VERSION);
        assert_eq!(DeviceCertificate::from_bytes(&bytes).unwrap(), cert);
        assert_eq!(DeviceCertificate::parse(&bytes).unwrap(), cert);
    }

    #[test]
    fn certificate_every_bit_flip_is_rejected() {
        let mut rng = rng();
        let root = RootSigningKey::generate(&mut rng);
        let dev = DeviceKeys::generate(&mut rng);
        let bytes = cert_for(&root, &dev, "phone").to_bytes();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(
                DeviceCertificate::from_bytes(&b).is_err(),
                "bit {i} accepted"
            );
        }
    }

    #[test]
    fn certificate_signed_by_other_root_or_label_is_rejected() {
        let mut rng = rng();
        let root = RootSigningKey::generate(&mut rng);
        let mallory = RootSigningKey::generate(&mut rng);
        let dev = DeviceKeys::generate(&mut rng);
        // Claims `root` but is signed by Mallory.
        let mut forged = cert_for(&root, &dev, "x");
        forged.signature = mallory.sign(CERT_LABEL, &forged.signed_bytes());
        assert!(matches!(
            DeviceCertificate::parse(&forged.to_bytes()),
            Err(IdentityError::Signature(SignatureError::BadSignature(_)))
        ));
        // Right key, wrong purpose: a list-entry signature over the certificate bytes.
        let mut wrong_label = cert_for(&root, &dev, "x");
        wrong_label.signature = root.sign(LIST_ENTRY_LABEL, &wrong_label.signed_bytes());
        assert!(wrong_label.verify().is_err());
    }

    #[test]
    fn certificate_bounds_and_strictness() {
        let mut rng = rng();
        let root = RootSigningKey::generate(&mut rng);
        let dev = DeviceKeys::generate(&mut rng);
        assert_eq!(
            DeviceCertificate::issue(&root, &dev.public(), &dev.dh_public(), &"a".repeat(65), 0),
            Err(IdentityError::NameTooLong { max: 64, got: 65 })
        );
        let ok = cert_for(&root, &dev, &"a".repeat(64)).to_bytes();
        let mut trailing = ok.clone();
        trailing.push(0);
        assert_eq!(
            DeviceCertificate::parse(&trailing),
            Err(IdentityError::Decode(DecodeError::TrailingBytes(1)))
        );
        let mut v2 = ok.clone();
        v2[0] = 2;
        assert!(matches!(
            DeviceCertificate::parse(&v2),
            Err(IdentityError::Decode(DecodeError::UnknownVersion {
                got: 2,
                ..
            }))
        ));
        for n in 0..ok.len() {
            assert!(DeviceCertificate::parse(&ok[..n]).is_err());
        }
    }

    #[test]
    fn list_round_trips_and_tracks_active_devices() {
        let (root, devs, list) = sample_list();
        let active: Vec<_> = list.active_devices().map(|c| *c.device()).collect();
        assert_eq!(active, vec![devs[0].public(), devs[2].public()]);
        assert!(list.active_certificate(&devs[1].public()).is_none());
        let bytes = list.to_bytes();
        let back = DeviceList::from_bytes(&bytes).unwrap();
        assert_eq!(back, list);
        assert_eq!(back.head_hash(), list.entries().last().unwrap().hash());
        back.verify().unwrap();
        assert_eq!(
            DeviceList::new(root.public()).head_hash(),
            genesis_hash(&root.public())
        );
        assert_eq!(list.entries()[0].prev(), &genesis_hash(&root.public()));
    }

    #[test]
    fn list_every_bit_flip_is_rejected() {
        let (_, _, list) = sample_list();
        let bytes = list.to_bytes();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(DeviceList::from_bytes(&b).is_err(), "bit {i} accepted");
        }
    }

    #[test]
    fn list_reordered_entries_are_rejected() {
        let (_, _, list) = sample_list();
        let mut e = list.entries().to_vec();
        e.swap(0, 1);
        assert!(matches!(
            DeviceList::from_entries(*list.root(), e),
            Err(IdentityError::BadSequence {
                expected: 0,
                got: 1
            })
        ));
    }

    #[test]
    fn list_dropped_middle_entry_is_rejected() {
        let (_, _, list) = sample_list();
        let mut e = list.entries().to_vec();
        e.remove(1);
        assert!(matches!(
            DeviceList::from_entries(*list.root(), e),
            Err(IdentityError::BadSequence {
                expected: 1,
                got: 2
            })
        ));
    }

    #[test]
    fn list_wrong_prev_hash_is_rejected_even_if_signed() {
        let (root, devs, list) = sample_list();
        let mut e = list.entries().to_vec();
        // Re-sign entry 2 with a wrong prev: the signature is valid, the chain is not.
        let op = e[2].op.clone();
        e[2] = forge_entry(&root, list.root(), 2, [0xAA; 32], op);
        assert_eq!(
            DeviceList::from_entries(*list.root(), e),
            Err(IdentityError::BadPrevHash { seq: 2 })
        );
        let _ = devs;
    }

    #[test]
    fn list_entry_signed_by_other_key_is_rejected() {
        let (_, devs, list) = sample_list();
        let mut rng = StdRng::seed_from_u64(99);
        let mallory = RootSigningKey::generate(&mut rng);
        let mut e = list.entries().to_vec();
        let op = DeviceOp::Revoke(devs[0].public());
        e.push(forge_entry(&mallory, list.root(), 4, list.head_hash(), op));
        assert!(matches!(
            DeviceList::from_entries(*list.root(), e),
            Err(IdentityError::Signature(SignatureError::BadSignature(_)))
        ));
    }

    #[test]
    fn list_rejects_foreign_cert_double_add_and_unknown_revoke() {
        let (root, devs, list) = sample_list();
        let mut rng = StdRng::seed_from_u64(5);
        let other_root = RootSigningKey::generate(&mut rng);
        let newdev = DeviceKeys::generate(&mut rng);

        // A certificate from another user, even in an entry our root signed.
        let foreign = cert_for(&other_root, &newdev, "foreign");
        let mut l = list.clone();
        assert!(matches!(
            l.add_device(&root, foreign.clone()),
            Err(IdentityError::RootMismatch { .. })
        ));
        let mut e = list.entries().to_vec();
        e.push(forge_entry(
            &root,
            list.root(),
            4,
            list.head_hash(),
            DeviceOp::Add(foreign),
        ));
        assert!(matches!(
            DeviceList::from_entries(*list.root(), e),
            Err(IdentityError::RootMismatch { .. })
        ));

        // Re-adding a revoked device, and adding an active one again.
        for d in [&devs[1], &devs[0]] {
            let mut l = list.clone();
            assert!(matches!(
                l.add_device(&root, cert_for(&root, d, "again")),
                Err(IdentityError::DuplicateAdd { seq: 4, .. })
            ));
            assert_eq!(l, list, "a refused append leaves the list unchanged");
        }

        // Revoking a revoked or unknown device.
        let mut l = list.clone();
        assert!(matches!(
            l.revoke_device(&root, devs[1].public()),
            Err(IdentityError::RevokeUnknown { seq: 4, .. })
        ));
        assert!(matches!(
            l.revoke_device(&root, newdev.public()),
            Err(IdentityError::RevokeUnknown { .. })
        ));

        // Appending with the wrong root key.
        assert!(matches!(
            l.revoke_device(&other_root, devs[0].public()),
            Err(IdentityError::RootMismatch { .. })
        ));
    }

    #[test]
    fn list_bounds_active_devices() {
        let mut rng = rng();
        let root = RootSigningKey::generate(&mut rng);
        let mut list = DeviceList::new(root.public());
        for _ in 0..MAX_ACTIVE_DEVICES {
            let d = DeviceKeys::generate(&mut rng);
            list.add_device(&root, cert_for(&root, &d, "d")).unwrap();
        }
        let d = DeviceKeys::generate(&mut rng);
        assert_eq!(
            list.add_device(&root, cert_for(&root, &d, "d"))
                .unwrap_err(),
            IdentityError::TooManyActiveDevices { max: 16 }
        );
        let first = *list.active_devices().next().unwrap().device();
        list.revoke_device(&root, first).unwrap();
        list.add_device(&root, cert_for(&root, &d, "d")).unwrap();
        assert_eq!(list.active_devices().count(), MAX_ACTIVE_DEVICES);
    }

    #[test]
    fn list_bounds_entries() {
        // A count above the bound is refused before any entry is read.
        let root = RootSigningKey::from_seed(&[1; 32]);
        let mut w = Writer::new();
        w.u8(LIST_VERSION);
        root.public().encode(&mut w);
        w.u16(MAX_LIST_ENTRIES as u16 + 1);
        assert!(matches!(
            DeviceList::parse(&w.into_bytes()),
            Err(IdentityError::Decode(DecodeError::TooLong {
                max: 1024,
                got: 1025,
                ..
            }))
        ));
        // Filling a list to the bound (add/revoke pairs) then appending fails.
        let mut rng = rng();
        let mut list = DeviceList::new(root.public());
        while list.len() + 2 <= MAX_LIST_ENTRIES {
            let d = DeviceKeys::generate(&mut rng);
            list.add_device(&root, cert_for(&root, &d, "")).unwrap();
            list.revoke_device(&root, d.public()).unwrap();
        }
        assert_eq!(list.len(), MAX_LIST_ENTRIES);
        let d = DeviceKeys::generate(&mut rng);
        assert_eq!(
            list.add_device(&root, cert_for(&root, &d, "")).unwrap_err(),
            IdentityError::TooManyEntries { max: 1024 }
        );
        assert_eq!(DeviceList::from_bytes(&list.to_bytes()).unwrap(), list);
    }

    #[test]
    fn update_accepts_only_extensions() {
        let (root, devs, full) = sample_list();
        let prefix = DeviceList::from_entries(*full.root(), full.entries()[..2].to_vec()).unwrap();

        let mut held = prefix.clone();
        assert_eq!(
            held.accept_update(prefix.clone()),
            Ok(ListUpdate::Unchanged)
        );
        assert_eq!(
            held.accept_update(full.clone()),
            Ok(ListUpdate::Extended { new_entries: 2 })
        );
        assert_eq!(held, full);
        // An older list offered later is stale, not a rollback.
        assert_eq!(held.accept_update(prefix.clone()), Ok(ListUpdate::Stale));
        assert_eq!(held, full);

        // A fork: same first two entries, then a different third one.
        let mut fork = prefix.clone();
        fork.revoke_device(&root, devs[0].public()).unwrap();
        let mut held = full.clone();
        assert_eq!(
            held.accept_update(fork.clone()),
            Err(IdentityError::Fork { at: 2 })
        );
        assert_eq!(held, full);
        let mut held = fork.clone();
        assert_eq!(
            held.accept_update(full.clone()),
            Err(IdentityError::Fork { at: 2 })
        );

        // Another user's list.
        let mut rng = StdRng::seed_from_u64(3);
        let other = DeviceList::new(RootSigningKey::generate(&mut rng).public());
        let mut held = full.clone();
        assert!(matches!(
            held.accept_update(other),
            Err(IdentityError::RootMismatch { .. })
        ));
    }

    #[test]
    fn user_identity_secret_round_trip_and_consistency() {
        let mut rng = rng();
        let id = UserIdentity::generate(&mut rng, "desktop", 42).unwrap();
        let bytes = id.to_secret_bytes();
        let back = UserIdentity::from_secret_bytes(&bytes).unwrap();
        assert_eq!(back.root_public(), id.root_public());
        assert_eq!(back.device().public(), id.device().public());
        assert_eq!(back.device().dh_public(), id.device().dh_public());
        assert_eq!(back.certificate(), id.certificate());
        assert_eq!(*back.to_secret_bytes(), *bytes);
        let list = id.genesis_list().unwrap();
        assert_eq!(list.active_devices().next(), Some(id.certificate()));

        // A certificate for another device does not fit these keys.
        let other = DeviceKeys::generate(&mut rng);
        let cert = cert_for(id.root(), &other, "x");
        assert!(matches!(
            UserIdentity::from_parts(id.root().clone(), id.device().clone(), cert),
            Err(IdentityError::Inconsistent(_))
        ));
        // Flipping a bit of the root seed breaks the certificate binding.
        let mut b = bytes.to_vec();
        b[1] ^= 1;
        assert!(UserIdentity::from_secret_bytes(&b).is_err());
        for n in 0..bytes.len() {
            assert!(UserIdentity::from_secret_bytes(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn debug_shows_no_secret_bytes() {
        let id = UserIdentity::from_parts(
            RootSigningKey::from_seed(&[0x11; 32]),
            DeviceKeys::from_parts(
                DeviceSigningKey::from_seed(&[0x22; 32]),
                DhSecret::from_bytes([0x33; 32]),
            ),
            {
                let root = RootSigningKey::from_seed(&[0x11; 32]);
                let dev = DeviceKeys::from_parts(
                    DeviceSigningKey::from_seed(&[0x22; 32]),
                    DhSecret::from_bytes([0x33; 32]),
                );
                cert_for(&root, &dev, "n")
            },
        )
        .unwrap();
        let d = format!("{id:?} {:?}", id.device());
        for secret in ["1111", "2222", "3333", "17, 17", "34, 34", "51, 51"] {
            assert!(!d.contains(secret), "Debug leaks {secret}: {d}");
        }
        assert!(d.starts_with("UserIdentity { root: RootPublicKey("));
        let secret_hex = hex::encode(id.to_secret_bytes().as_slice());
        assert!(!d.contains(&secret_hex[2..10]));
    }

    fn arb_name() -> impl Strategy<Value = String> {
        ".{0,20}".prop_filter("name fits", |s| s.len() <= MAX_DEVICE_NAME_LEN)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn prop_certificate_round_trip(root in any::<[u8; 32]>(), dev in any::<[u8; 32]>(), dh in any::<[u8; 32]>(), t: u64, name in arb_name()) {
            let root = RootSigningKey::from_seed(&root);
            let dev = DeviceSigningKey::from_seed(&dev);
            let cert = DeviceCertificate::issue(&root, &dev.public(), &DhPublic(dh), &name, t).unwrap();
            let back = DeviceCertificate::from_bytes(&cert.to_bytes()).unwrap();
            prop_assert_eq!(&back, &cert);
            prop_assert_eq!(back.name(), name.as_str());
            prop_assert_eq!(back.created_at(), t);
        }

        #[test]
        fn prop_list_round_trip(seed: u64, ops in proptest::collection::vec(any::<(bool, u8)>(), 0..24)) {
            let mut rng = StdRng::seed_from_u64(seed);
            let root = RootSigningKey::generate(&mut rng);
            let mut list = DeviceList::new(root.public());
            for (add, pick) in ops {
                let active: Vec<_> = list.active_devices().map(|c| *c.device()).collect();
                if add || active.is_empty() {
                    let d = DeviceKeys::generate(&mut rng);
                    let r = list.add_device(&root, cert_for(&root, &d, "p"));
                    prop_assert!(r.is_ok() || active.len() == MAX_ACTIVE_DEVICES);
                } else {
                    let victim = active[usize::from(pick) % active.len()];
                    list.revoke_device(&root, victim).unwrap();
                }
            }
            let back = DeviceList::from_bytes(&list.to_bytes()).unwrap();
            prop_assert_eq!(&back, &list);
            prop_assert_eq!(back.head_hash(), list.head_hash());
        }

        #[test]
        fn prop_list_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = DeviceList::parse(&bytes);
            let _ = DeviceCertificate::parse(&bytes);
            let _ = UserIdentity::from_secret_bytes(&bytes);
        }
    }
}
