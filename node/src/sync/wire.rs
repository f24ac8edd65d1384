//! Wire formats of the causal log: [`Entry`], [`Frontier`], and the [`SyncRequest`] /
//! [`SyncResponse`] pair spoken on the direct request-response protocol.
//!
//! Every type starts with a version byte, is written with `securecomm_noise::codec`, and is decoded
//! strictly: trailing bytes, unknown versions and tags, over-long fields, and non-canonical
//! orderings (unsorted or repeated authors, zero sequence numbers) are all errors, so each value
//! has exactly one encoding.
//!
//! ```text
//! Entry      = 0x01 | group[32] | author[32] | seq u64 | n u16 | n * (author[32] | seq u64)
//!              | len u32 | payload[len] | signature[64]
//! Frontier   = n u16 | n * (author[32] | seq u64)            (authors strictly increasing, seq >= 1)
//! SyncRequest  = 0x01 | 0x10 | group[32] | Frontier           Pull: "send me what I lack"
//!              | 0x01 | 0x11 | group[32] | n u16 | n * Entry  Push: "here are entries for you"
//! SyncResponse = 0x01 | 0x20 | group[32] | more u8 | n u16 | n * Entry   answer to Pull
//!              | 0x01 | 0x21 | group[32] | Frontier                       answer to Push (the ack)
//!              | 0x01 | 0x22 | group[32]                                 not a member / unknown group
//! ```
//!
//! The entry signature is the author's device key over `"SecureComm/sync/entry v1" || 0x00 ||`
//! the entry's encoding without the signature, so group, author, sequence number, dependencies
//! and payload are all bound: nobody can write into another device's sequence, move an entry to
//! another group, or change what it depends on.

use std::collections::BTreeMap;
use std::fmt;

use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use securecomm_noise::keys::{DevicePublicKey, DeviceSigningKey, SigLabel, Signature};

/// Version byte of every sync wire type.
pub const WIRE_VERSION: u8 = 1;
/// Largest payload of one entry (the same as one gossip message, so an entry fits either path).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most dependencies one entry names (its author's view of the group's heads).
pub const MAX_DEPS: usize = 256;
/// Most authors one group's log (and so one frontier) may hold.
pub const MAX_AUTHORS: usize = 4096;
/// Most entries in one push or one pull answer.
pub const MAX_BATCH: usize = 256;
/// Most encoded bytes of entries in one push or pull answer (below the 1 MiB frame limit, and
/// always room for one entry of the largest size).
pub const MAX_BATCH_BYTES: usize = 768 * 1024;
/// Largest sequence number: sequence numbers are stored as SQLite integers.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// What entry signatures are made for.
pub const ENTRY_LABEL: SigLabel = SigLabel("SecureComm/sync/entry v1");

const TAG_PULL: u8 = 0x10;
const TAG_PUSH: u8 = 0x11;
const TAG_ENTRIES: u8 = 0x20;
const TAG_ACK: u8 = 0x21;
const TAG_REFUSED: u8 = 0x22;

macro_rules! id32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({}..)"), hex::encode(self.0.get(..4).unwrap_or(&[])))
            }
        }

        impl Encode for $name {
            fn encode(&self, w: &mut Writer) {
                w.put(&self.0);
            }
        }

        impl Decode for $name {
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(Self(r.array()?))
            }
        }
    };
}

id32!(
    /// An opaque group id (for example a hash of a guild's id); one causal log per group.
    GroupId
);
id32!(
    /// The 32-byte Ed25519 device key that wrote an entry (not parsed as a point until a
    /// signature is checked, so frontiers stay cheap to decode).
    Author
);

impl From<&DevicePublicKey> for Author {
    fn from(k: &DevicePublicKey) -> Self {
        Self(k.to_bytes())
    }
}

/// Names one entry: its author and the author's sequence number (from 1, without gaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    /// Who wrote it.
    pub author: Author,
    /// Its position in the author's sequence.
    pub seq: u64,
}

impl Encode for EntryId {
    fn encode(&self, w: &mut Writer) {
        self.author.encode(w);
        w.u64(self.seq);
    }
}

impl Decode for EntryId {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let author = Author::decode(r)?;
        let seq = r.u64()?;
        if seq == 0 || seq > MAX_SEQ {
            return Err(DecodeError::Invalid(
                "sequence number (expected 1..=i64::MAX)",
            ));
        }
        Ok(Self { author, seq })
    }
}

/// Reads `n` ids with strictly increasing authors (so at most one per author).
fn decode_ids(
    r: &mut Reader<'_>,
    what: &'static str,
    max: usize,
) -> Result<Vec<EntryId>, DecodeError> {
    let n = r.count16(what, max)?;
    let mut out: Vec<EntryId> = Vec::with_capacity(n);
    for _ in 0..n {
        let id = EntryId::decode(r)?;
        if out.last().is_some_and(|prev| prev.author >= id.author) {
            return Err(DecodeError::Invalid(
                "author order (expected strictly increasing)",
            ));
        }
        out.push(id);
    }
    Ok(out)
}

fn encode_ids<'a>(w: &mut Writer, ids: impl ExactSizeIterator<Item = EntryId> + 'a) {
    w.u16(u16::try_from(ids.len()).unwrap_or(u16::MAX));
    for id in ids {
        id.encode(w);
    }
}

/// A version vector: for each author, the highest sequence number delivered (everything below it
/// is delivered too, since delivery is causal and per-author gapless). Authors absent mean 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier(BTreeMap<Author, u64>);

impl Frontier {
    /// The empty frontier.
    pub fn new() -> Self {
        Self::default()
    }

    /// Highest delivered sequence number of `author` (0 if none).
    pub fn get(&self, author: &Author) -> u64 {
        self.0.get(author).copied().unwrap_or(0)
    }

    /// Whether the entry `id` is covered.
    pub fn contains(&self, id: &EntryId) -> bool {
        self.get(&id.author) >= id.seq
    }

    /// Sets `author`'s sequence number (0 removes it).
    pub fn set(&mut self, author: Author, seq: u64) {
        if seq == 0 {
            self.0.remove(&author);
        } else {
            self.0.insert(author, seq);
        }
    }

    /// Number of authors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no author is present.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (author, seq) pairs in author order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Author, &u64)> {
        self.0.iter()
    }

    /// Total number of entries covered (the sum of the sequence numbers).
    pub fn total(&self) -> u128 {
        self.0.values().map(|&s| u128::from(s)).sum()
    }
}

impl Encode for Frontier {
    fn encode(&self, w: &mut Writer) {
        encode_ids(
            w,
            self.0.iter().map(|(&author, &seq)| EntryId { author, seq }),
        );
    }
}

impl Decode for Frontier {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let ids = decode_ids(r, "frontier", MAX_AUTHORS)?;
        Ok(Self(
            ids.into_iter().map(|id| (id.author, id.seq)).collect(),
        ))
    }
}

/// One signed entry of a group's causal log.
///
/// Decoding checks structure only; [`Entry::verify`] checks the signature (the causal log does so
/// before storing anything).
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    group: GroupId,
    id: EntryId,
    deps: Vec<EntryId>,
    payload: Vec<u8>,
    signature: Signature,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload is the caller's business (usually ciphertext): show only its length.
        f.debug_struct("Entry")
            .field("group", &self.group)
            .field("id", &self.id)
            .field("deps", &self.deps)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why an entry could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("payload too long: at most {MAX_PAYLOAD} bytes, got {0}")]
    PayloadTooLong(usize),
    /// More dependencies than [`MAX_DEPS`].
    #[error("too many dependencies: at most {MAX_DEPS}, got {0}")]
    TooManyDeps(usize),
    /// Dependencies are not canonical (sorted, one per author, not the author itself, seq >= 1).
    #[error("dependencies must name distinct other authors in increasing order with seq >= 1")]
    BadDeps,
    /// Sequence number outside `1..=MAX_SEQ`.
    #[error("sequence number out of range: expected 1..={MAX_SEQ}, got {0}")]
    BadSeq(u64),
}

impl Entry {
    /// Builds and signs an entry. `deps` must be canonical (see [`EntryError::BadDeps`]).
    pub fn sign(
        signer: &DeviceSigningKey,
        group: GroupId,
        seq: u64,
        deps: Vec<EntryId>,
        payload: Vec<u8>,
    ) -> Result<Self, EntryError> {
        let author = Author::from(&signer.public());
        if payload.len() > MAX_PAYLOAD {
            return Err(EntryError::PayloadTooLong(payload.len()));
        }
        if deps.len() > MAX_DEPS {
            return Err(EntryError::TooManyDeps(deps.len()));
        }
        if seq == 0 || seq > MAX_SEQ {
            return Err(EntryError::BadSeq(seq));
        }
        if !deps_canonical(author, &deps) {
            return Err(EntryError::BadDeps);
        }
        let mut e = Self {
            group,
            id: EntryId { author, seq },
            deps,
            payload,
            signature: Signature([0; 64]),
        };
        e.signature = signer.sign(ENTRY_LABEL, &e.signed_part());
        Ok(e)
    }

    /// The group this entry belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Its id.
    pub fn id(&self) -> EntryId {
        self.id
    }

    /// Its author.
    pub fn author(&self) -> Author {
        self.id.author
    }

    /// Its sequence number.
    pub fn seq(&self) -> u64 {
        self.id.seq
    }

    /// What it depends on besides its author's previous entry (`seq - 1`).
    pub fn deps(&self) -> &[EntryId] {
        &self.deps
    }

    /// The caller's bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Checks the author's signature.
    pub fn verify(&self) -> bool {
        DevicePublicKey::from_bytes(&self.id.author.0)
            .and_then(|k| k.verify(ENTRY_LABEL, &self.signed_part(), &self.signature))
            .is_ok()
    }

    fn signed_part(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(96 + self.deps.len() * 40 + self.payload.len());
        self.encode_unsigned(&mut w);
        w.into_bytes()
    }

    fn encode_unsigned(&self, w: &mut Writer) {
        w.u8(WIRE_VERSION);
        self.group.encode(w);
        self.id.encode(w);
        encode_ids(w, self.deps.iter().copied());
        w.bytes32(&self.payload);
    }

    /// Size of the encoding, without encoding.
    pub fn encoded_len(&self) -> usize {
        1 + 32 + 40 + 2 + self.deps.len() * 40 + 4 + self.payload.len() + 64
    }
}

fn deps_canonical(author: Author, deps: &[EntryId]) -> bool {
    deps.iter()
        .all(|d| d.author != author && d.seq >= 1 && d.seq <= MAX_SEQ)
        && deps
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.author < b.author))
}

impl Encode for Entry {
    fn encode(&self, w: &mut Writer) {
        self.encode_unsigned(w);
        w.put(&self.signature.0);
    }
}

impl Decode for Entry {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("sync entry", WIRE_VERSION)?;
        let group = GroupId::decode(r)?;
        let id = EntryId::decode(r)?;
        let deps = decode_ids(r, "entry dependencies", MAX_DEPS)?;
        if deps.iter().any(|d| d.author == id.author) {
            return Err(DecodeError::Invalid("dependency on the entry's own author"));
        }
        let payload = r.bytes32("entry payload", MAX_PAYLOAD)?.to_vec();
        let signature = Signature(r.array()?);
        Ok(Self {
            group,
            id,
            deps,
            payload,
            signature,
        })
    }
}

fn encode_entries(w: &mut Writer, entries: &[Entry]) {
    w.u16(u16::try_from(entries.len()).unwrap_or(u16::MAX));
    for e in entries {
        e.encode(w);
    }
}

fn decode_entries(r: &mut Reader<'_>, group: GroupId) -> Result<Vec<Entry>, DecodeError> {
    let n = r.count16("sync batch", MAX_BATCH)?;
    let mut out = Vec::with_capacity(n);
    let mut bytes = 0usize;
    for _ in 0..n {
        let e = Entry::decode(r)?;
        if e.group != group {
            return Err(DecodeError::Invalid("entry of another group in a batch"));
        }
        bytes = bytes.saturating_add(e.encoded_len());
        if bytes > MAX_BATCH_BYTES {
            return Err(DecodeError::TooLong {
                what: "sync batch bytes",
                max: MAX_BATCH_BYTES,
                got: bytes,
            });
        }
        out.push(e);
    }
    Ok(out)
}

/// A request on the direct protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRequest {
    /// "This is what I have of `group`; send me what I lack." Also acknowledges everything the
    /// frontier covers.
    Pull {
        /// The group.
        group: GroupId,
        /// The requester's delivered frontier.
        frontier: Frontier,
    },
    /// "Here are entries of `group` for you" (new local entries, or retransmissions).
    Push {
        /// The group.
        group: GroupId,
        /// At most [`MAX_BATCH`] entries, [`MAX_BATCH_BYTES`] in all, in causal order.
        entries: Vec<Entry>,
    },
}

/// The answer to a [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResponse {
    /// Answer to a pull: entries the requester lacks, in causal order.
    Entries {
        /// The group.
        group: GroupId,
        /// Whether more are missing (pull again with the new frontier).
        more: bool,
        /// The entries.
        entries: Vec<Entry>,
    },
    /// Answer to a push: the responder's frontier after taking the entries in (an ack).
    Ack {
        /// The group.
        group: GroupId,
        /// The responder's delivered frontier.
        frontier: Frontier,
    },
    /// The responder does not sync this group with the requester.
    Refused {
        /// The group.
        group: GroupId,
    },
}

impl Encode for SyncRequest {
    fn encode(&self, w: &mut Writer) {
        w.u8(WIRE_VERSION);
        match self {
            Self::Pull { group, frontier } => {
                w.u8(TAG_PULL);
                group.encode(w);
                frontier.encode(w);
            }
            Self::Push { group, entries } => {
                w.u8(TAG_PUSH);
                group.encode(w);
                encode_entries(w, entries);
            }
        }
    }
}

impl Decode for SyncRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("sync request", WIRE_VERSION)?;
        match r.u8()? {
            TAG_PULL => Ok(Self::Pull {
                group: GroupId::decode(r)?,
                frontier: Frontier::decode(r)?,
            }),
            TAG_PUSH => {
                let group = GroupId::decode(r)?;
                let entries = decode_entries(r, group)?;
                Ok(Self::Push { group, entries })
            }
            got => Err(DecodeError::UnknownTag {
                what: "sync request",
                got: u64::from(got),
            }),
        }
    }
}

impl Encode for SyncResponse {
    fn encode(&self, w: &mut Writer) {
        w.u8(WIRE_VERSION);
        match self {
            Self::Entries {
                group,
                more,
                entries,
            } => {
                w.u8(TAG_ENTRIES);
                group.encode(w);
                w.bool(*more);
                encode_entries(w, entries);
            }
            Self::Ack { group, frontier } => {
                w.u8(TAG_ACK);
                group.encode(w);
                frontier.encode(w);
            }
            Self::Refused { group } => {
                w.u8(TAG_REFUSED);
                group.encode(w);
            }
        }
    }
}

impl Decode for SyncResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("sync response", WIRE_VERSION)?;
        match r.u8()? {
            TAG_ENTRIES => {
                let group = GroupId::decode(r)?;
                let more = r.bool()?;
                let entries = decode_entries(r, group)?;
                Ok(Self::Entries {
                    group,
                    more,
                    entries,
                })
            }
            TAG_ACK => Ok(Self::Ack {
                group: GroupId::decode(r)?,
                frontier: Frontier::decode(r)?,
            }),
            TAG_REFUSED => Ok(Self::Refused {
                group: GroupId::decode(r)?,
            }),
            got => Err(DecodeError::UnknownTag {
                what: "sync response",
                got: u64::from(got),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u8) -> DeviceSigningKey {
        DeviceSigningKey::from_seed(&[i; 32])
    }

    fn entry(i: u8, seq: u64, deps: Vec<EntryId>, payload: &[u8]) -> Entry {
        Entry::sign(&key(i), GroupId([9; 32]), seq, deps, payload.to_vec()).unwrap()
    }

    #[test]
    fn entry_round_trips_and_verifies() {
        let other = Author::from(&key(2).public());
        let e = entry(
            1,
            3,
            vec![EntryId {
                author: other,
                seq: 7,
            }],
            b"hello",
        );
        let bytes = e.to_bytes();
        assert_eq!(bytes.len(), e.encoded_len());
        let d = Entry::from_bytes(&bytes).unwrap();
        assert_eq!(d, e);
        assert!(d.verify());
        assert!(!format!("{d:?}").contains("hello"));
    }

    #[test]
    fn every_bit_flip_breaks_the_signature_or_the_decoding() {
        let other = Author::from(&key(2).public());
        let e = entry(
            1,
            3,
            vec![EntryId {
                author: other,
                seq: 7,
            }],
            b"hi",
        );
        let bytes = e.to_bytes();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            if let Some(x) = b.get_mut(i / 8) {
                *x ^= 1 << (i % 8);
            }
            if let Ok(d) = Entry::from_bytes(&b) {
                assert!(!d.verify(), "bit {i} flipped and still verifies");
            }
        }
    }

    #[test]
    fn strictness() {
        let e = entry(1, 1, vec![], b"x");
        let mut bytes = e.to_bytes();
        // Trailing byte.
        bytes.push(0);
        assert_eq!(
            Entry::from_bytes(&bytes),
            Err(DecodeError::TrailingBytes(1))
        );
        bytes.pop();
        // Truncation at every length.
        for n in 0..bytes.len() {
            assert!(Entry::from_bytes(bytes.get(..n).unwrap()).is_err());
        }
        // Unknown version.
        let mut v = bytes.clone();
        v[0] = 2;
        assert!(matches!(
            Entry::from_bytes(&v),
            Err(DecodeError::UnknownVersion { .. })
        ));
        // Sequence number zero.
        let mut z = bytes.clone();
        z[65..73].copy_from_slice(&0u64.to_be_bytes());
        assert!(matches!(
            Entry::from_bytes(&z),
            Err(DecodeError::Invalid(_))
        ));
        // Over-long payload length prefix.
        let mut w = Writer::new();
        w.u8(1);
        w.put(&[0; 32]);
        w.put(&[1; 32]);
        w.u64(1);
        w.u16(0);
        w.u32(MAX_PAYLOAD as u32 + 1);
        assert!(matches!(
            Entry::from_bytes(&w.into_bytes()),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn non_canonical_deps_are_rejected() {
        let a = Author([1; 32]);
        let b = Author([2; 32]);
        let signer = key(3);
        let me = Author::from(&signer.public());
        let g = GroupId([0; 32]);
        for deps in [
            vec![EntryId { author: b, seq: 1 }, EntryId { author: a, seq: 1 }],
            vec![EntryId { author: a, seq: 1 }, EntryId { author: a, seq: 2 }],
            vec![EntryId { author: me, seq: 1 }],
        ] {
            assert_eq!(
                Entry::sign(&signer, g, 1, deps.clone(), vec![]),
                Err(EntryError::BadDeps)
            );
            // Hand-encode the same thing: the decoder refuses it too.
            let mut w = Writer::new();
            w.u8(1);
            g.encode(&mut w);
            EntryId { author: me, seq: 1 }.encode(&mut w);
            encode_ids(&mut w, deps.into_iter());
            w.bytes32(&[]);
            w.put(&[0; 64]);
            assert!(matches!(
                Entry::from_bytes(&w.into_bytes()),
                Err(DecodeError::Invalid(_))
            ));
        }
        assert_eq!(
            Entry::sign(&signer, g, 1, vec![], vec![0; MAX_PAYLOAD + 1]),
            Err(EntryError::PayloadTooLong(MAX_PAYLOAD + 1))
        );
        assert_eq!(
            Entry::sign(&signer, g, 0, vec![], vec![]),
            Err(EntryError::BadSeq(0))
        );
    }

    #[test]
    fn batches_refuse_foreign_groups_and_too_many_entries() {
        let e = entry(1, 1, vec![], b"x");
        let wrong = SyncRequest::Push {
            group: GroupId([1; 32]),
            entries: vec![e.clone()],
        };
        assert!(matches!(
            SyncRequest::from_bytes(&wrong.to_bytes()),
            Err(DecodeError::Invalid(_))
        ));
        let too_many = SyncRequest::Push {
            group: e.group(),
            entries: vec![e; MAX_BATCH + 1],
        };
        assert!(matches!(
            SyncRequest::from_bytes(&too_many.to_bytes()),
            Err(DecodeError::TooLong { .. })
        ));
        // Unknown tags.
        assert!(matches!(
            SyncRequest::from_bytes(&[1, 0x12]),
            Err(DecodeError::UnknownTag { .. })
        ));
        assert!(matches!(
            SyncResponse::from_bytes(&[1, 0x23]),
            Err(DecodeError::UnknownTag { .. })
        ));
    }

    #[test]
    fn batch_byte_bound_is_enforced() {
        let big = entry(1, 1, vec![], &vec![0u8; MAX_PAYLOAD]);
        let n = MAX_BATCH_BYTES / big.encoded_len() + 1;
        let msg = SyncResponse::Entries {
            group: big.group(),
            more: false,
            entries: vec![big; n],
        };
        assert!(matches!(
            SyncResponse::from_bytes(&msg.to_bytes()),
            Err(DecodeError::TooLong {
                what: "sync batch bytes",
                ..
            })
        ));
    }

    #[test]
    fn frontier_is_canonical() {
        let mut f = Frontier::new();
        f.set(Author([2; 32]), 5);
        f.set(Author([1; 32]), 3);
        let bytes = f.to_bytes();
        assert_eq!(Frontier::from_bytes(&bytes).unwrap(), f);
        // Swap the two records: unsorted is refused.
        let mut w = Writer::new();
        w.u16(2);
        EntryId {
            author: Author([2; 32]),
            seq: 5,
        }
        .encode(&mut w);
        EntryId {
            author: Author([1; 32]),
            seq: 3,
        }
        .encode(&mut w);
        assert!(Frontier::from_bytes(&w.into_bytes()).is_err());
        // A zero sequence number is refused (absent means zero).
        let mut w = Writer::new();
        w.u16(1);
        w.put(&[1; 32]);
        w.u64(0);
        assert!(Frontier::from_bytes(&w.into_bytes()).is_err());
    }

    fn arb_author() -> impl Strategy<Value = Author> {
        any::<[u8; 32]>().prop_map(Author)
    }

    fn arb_frontier() -> impl Strategy<Value = Frontier> {
        proptest::collection::btree_map(arb_author(), 1..=MAX_SEQ, 0..8).prop_map(Frontier)
    }

    prop_compose! {
        fn arb_entry()(seed in 1u8..5, seq in 1..=MAX_SEQ, deps in proptest::collection::btree_map(arb_author(), 1..=MAX_SEQ, 0..5), payload in proptest::collection::vec(any::<u8>(), 0..200)) -> Entry {
            let signer = key(seed);
            let me = Author::from(&signer.public());
            let deps = deps.into_iter().filter(|(a, _)| *a != me).map(|(author, seq)| EntryId { author, seq }).collect();
            Entry::sign(&signer, GroupId([7; 32]), seq, deps, payload).unwrap()
        }
    }

    proptest! {
        #[test]
        fn entries_round_trip(e in arb_entry()) {
            let d = Entry::from_bytes(&e.to_bytes()).unwrap();
            prop_assert!(d.verify());
            prop_assert_eq!(d, e);
        }

        #[test]
        fn requests_round_trip(f in arb_frontier(), es in proptest::collection::vec(arb_entry(), 0..4)) {
            let g = GroupId([7; 32]);
            for m in [SyncRequest::Pull { group: g, frontier: f.clone() }, SyncRequest::Push { group: g, entries: es.clone() }] {
                prop_assert_eq!(SyncRequest::from_bytes(&m.to_bytes()).unwrap(), m);
            }
            for m in [
                SyncResponse::Entries { group: g, more: true, entries: es.clone() },
                SyncResponse::Ack { group: g, frontier: f.clone() },
                SyncResponse::Refused { group: g },
            ] {
                prop_assert_eq!(SyncResponse::from_bytes(&m.to_bytes()).unwrap(), m);
            }
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Entry::from_bytes(&bytes);
            let _ = SyncRequest::from_bytes(&bytes);
            let _ = SyncResponse::from_bytes(&bytes);
            let _ = Frontier::from_bytes(&bytes);
        }
    }
}
