//! The mailbox protocol's messages and their byte encoding (no I/O).
//!
//! Every message is one [`Request`] or [`Response`] whose first byte is [`WIRE_VERSION`] and
//! whose second byte names the variant. Integers are big-endian; blobs carry a u32 length
//! prefix, peer ids a u8 one; every count and length has a bound checked before anything is
//! allocated, and decoding rejects unknown versions and tags, duplicate recipient tags,
//! non-canonical peer ids and trailing bytes, so every accepted message has exactly one
//! encoding (the fuzz target `mailbox_wire` re-encodes and compares).
//!
//! The libp2p stream framing around a message (a u32 length prefix) lives in
//! [`super::codec`]; this module is pure so the node and the fuzzer use it without a network.
//!
//! # Pickup authentication
//! Pickup and ack name a recipient by its mailbox public key and prove possession with a
//! [`PickupAuth`]: an Ed25519 signature over
//! `"SecureComm/mailbox-pickup v1" || len(relay) || relay peer id bytes || tag || timestamp || nonce`
//! (`len` one byte, timestamp u64 big-endian unix seconds, nonce 16 random bytes). The relay
//! peer id binds the proof to one relay; the timestamp must be within [`AUTH_WINDOW_SECS`] of
//! the relay's clock; the nonce makes every proof distinct (Ed25519 signatures are
//! deterministic, so without it two requests in the same second would look like a replay) and
//! the relay refuses a signature it has already seen inside the window.

use libp2p::{PeerId, identity::ed25519};
use rand_core::{OsRng, RngCore};
use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use sha2::{Digest, Sha256};

/// Version byte of every request and response.
pub const WIRE_VERSION: u8 = 1;
/// Domain-separation label of recipient tags.
pub const TAG_LABEL: &[u8] = b"SecureComm/mailbox-tag v1";
/// Domain-separation label of pickup and ack signatures.
pub const PICKUP_LABEL: &[u8] = b"SecureComm/mailbox-pickup v1";
/// Most recipient tags in one deposit.
pub const MAX_TAGS: usize = 64;
/// Largest blob the wire format carries (the relay's configured limit is at most this).
pub const MAX_BLOB: usize = 64 << 20;
/// Largest prekey bundle the directory stores.
pub const MAX_PREKEY_BUNDLE: usize = 4096;
/// Most item ids in one ack or status request (and entries in a status answer).
pub const MAX_IDS: usize = 1024;
/// Most items in one pickup page.
pub const MAX_PAGE_ITEMS: usize = 256;
/// Most blob bytes in one pickup page, unless a single item is larger (it then comes alone).
pub const MAX_PAGE_BYTES: usize = 8 << 20;
/// How far a pickup timestamp may be from the relay's clock, in seconds, either way.
pub const AUTH_WINDOW_SECS: u64 = 300;
/// Longest encoded peer id accepted (an Ed25519 peer id is 38 bytes).
pub const MAX_PEER_ID: usize = 64;

/// An opaque recipient address: SHA-256 of [`TAG_LABEL`] and the recipient's mailbox key.
pub type Tag = [u8; 32];

/// The tag under which items for the holder of `mailbox_pubkey` are stored.
pub fn tag_for(mailbox_pubkey: &[u8; 32]) -> Tag {
    let mut h = Sha256::new();
    h.update(TAG_LABEL);
    h.update(mailbox_pubkey);
    h.finalize().into()
}

/// A client's request to a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Store a blob for one or more recipients.
    Deposit(Deposit),
    /// Fetch a page of the items stored for the authenticated recipient, oldest first.
    Pickup {
        /// Proof that the caller holds the recipient's mailbox key.
        auth: PickupAuth,
        /// Return only items with an id greater than this (0 from the start).
        after: u64,
        /// Most items wanted (the relay caps it at [`MAX_PAGE_ITEMS`]).
        max_items: u16,
        /// Most blob bytes wanted (the relay caps it at [`MAX_PAGE_BYTES`]).
        max_bytes: u32,
    },
    /// The recipient has durably stored these items: drop its claim on them.
    Ack {
        /// Proof that the caller holds the recipient's mailbox key.
        auth: PickupAuth,
        /// Item ids, at most [`MAX_IDS`].
        ids: Vec<u64>,
    },
    /// How far delivery of items this peer deposited has come.
    Status {
        /// Item ids, at most [`MAX_IDS`].
        ids: Vec<u64>,
    },
    /// Publish or replace the caller's prekey bundle.
    PublishPrekeys {
        /// The publishing device; must be the connection's peer id.
        peer: PeerId,
        /// Publication time (unix seconds); the newest wins.
        published_at: u64,
        /// The signed bundle, opaque to the relay, 1..=[`MAX_PREKEY_BUNDLE`] bytes.
        bundle: Vec<u8>,
    },
    /// Fetch a device's prekey bundle.
    FetchPrekeys {
        /// The device.
        peer: PeerId,
    },
}

/// One blob for several recipients, stored once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    tags: Vec<Tag>,
    blob: Vec<u8>,
    /// Seconds the depositor wants the item kept at most (a disappearing message): the relay
    /// keeps it for the shorter of this and its own TTL. `None`: the relay's TTL.
    ttl_secs: Option<u32>,
}

/// Why a [`Deposit`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepositError {
    /// No tag, or more than [`MAX_TAGS`] distinct ones.
    #[error("expected 1 to {MAX_TAGS} distinct recipient tags, got {0}")]
    TagCount(usize),
    /// The blob is empty or longer than [`MAX_BLOB`].
    #[error("expected a blob of 1 to {MAX_BLOB} bytes, got {0}")]
    BlobSize(usize),
}

impl Deposit {
    /// A deposit for `tags` (duplicates removed, order kept).
    pub fn new(tags: impl IntoIterator<Item = Tag>, blob: Vec<u8>) -> Result<Self, DepositError> {
        let mut seen = std::collections::HashSet::new();
        let tags: Vec<Tag> = tags.into_iter().filter(|t| seen.insert(*t)).collect();
        if tags.is_empty() || tags.len() > MAX_TAGS {
            return Err(DepositError::TagCount(tags.len()));
        }
        if blob.is_empty() || blob.len() > MAX_BLOB {
            return Err(DepositError::BlobSize(blob.len()));
        }
        Ok(Self {
            tags,
            blob,
            ttl_secs: None,
        })
    }

    /// The same deposit, to be dropped by the relay after at most `secs` (at least 1) seconds.
    /// Relays older than this request kind refuse it as malformed.
    #[must_use]
    pub fn with_ttl(mut self, secs: u32) -> Self {
        self.ttl_secs = Some(secs.max(1));
        self
    }

    /// The depositor's own time limit, if any.
    pub fn ttl_secs(&self) -> Option<u32> {
        self.ttl_secs
    }

    /// The distinct recipient tags.
    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }

    /// The opaque blob.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }
}

/// Proof of holding a mailbox key, bound to one relay and a moment (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct PickupAuth {
    /// The recipient's Ed25519 mailbox public key.
    pub mailbox_key: [u8; 32],
    /// Unix seconds when the proof was made.
    pub timestamp: u64,
    /// Random bytes that make every proof distinct.
    pub nonce: [u8; 16],
    /// Ed25519 signature over [`PickupAuth::signed_message`].
    pub signature: [u8; 64],
}

impl std::fmt::Debug for PickupAuth {
    // Prints neither the key nor the tag it leads to (logs must not link tags to requests).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PickupAuth")
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

/// Why a [`PickupAuth`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The timestamp is more than [`AUTH_WINDOW_SECS`] away from the relay's clock.
    #[error("expected a timestamp within {AUTH_WINDOW_SECS} s of {now}, got {got}")]
    ClockSkew {
        /// The verifier's clock.
        now: u64,
        /// The timestamp in the proof.
        got: u64,
    },
    /// The key is not a valid Ed25519 key or the signature does not verify.
    #[error("pickup signature does not verify under the mailbox key")]
    BadSignature,
}

impl PickupAuth {
    /// Signs a proof for `relay` at `now` (unix seconds) with a fresh random nonce.
    pub fn sign(mailbox_signing_key: &ed25519::Keypair, relay: &PeerId, now: u64) -> Self {
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        Self::sign_with_nonce(mailbox_signing_key, relay, now, nonce)
    }

    /// Signs a proof with a caller-chosen nonce (deterministic; tests and known answers).
    pub fn sign_with_nonce(
        mailbox_signing_key: &ed25519::Keypair,
        relay: &PeerId,
        now: u64,
        nonce: [u8; 16],
    ) -> Self {
        let mailbox_key = mailbox_signing_key.public().to_bytes();
        let msg = Self::signed_message(relay, &tag_for(&mailbox_key), now, &nonce);
        let sig = mailbox_signing_key.sign(&msg);
        let mut signature = [0u8; 64];
        if let Some(s) = sig.get(..64) {
            signature.copy_from_slice(s);
        }
        Self {
            mailbox_key,
            timestamp: now,
            nonce,
            signature,
        }
    }

    /// The bytes the signature covers.
    pub fn signed_message(relay: &PeerId, tag: &Tag, timestamp: u64, nonce: &[u8; 16]) -> Vec<u8> {
        let relay = relay.to_bytes();
        let mut m = Vec::with_capacity(PICKUP_LABEL.len() + 1 + relay.len() + 32 + 8 + 16);
        m.extend_from_slice(PICKUP_LABEL);
        m.push(u8::try_from(relay.len()).unwrap_or(u8::MAX));
        m.extend_from_slice(&relay);
        m.extend_from_slice(tag);
        m.extend_from_slice(&timestamp.to_be_bytes());
        m.extend_from_slice(nonce);
        m
    }

    /// The recipient tag this proof speaks for.
    pub fn tag(&self) -> Tag {
        tag_for(&self.mailbox_key)
    }

    /// Checks the proof for `relay` at `now`; returns the tag it authorises. Replays are the
    /// verifier's business (it must remember signatures seen within the window).
    pub fn verify(&self, relay: &PeerId, now: u64) -> Result<Tag, AuthError> {
        if self.timestamp.abs_diff(now) > AUTH_WINDOW_SECS {
            return Err(AuthError::ClockSkew {
                now,
                got: self.timestamp,
            });
        }
        let key = ed25519::PublicKey::try_from_bytes(&self.mailbox_key)
            .map_err(|_| AuthError::BadSignature)?;
        let tag = self.tag();
        let msg = Self::signed_message(relay, &tag, self.timestamp, &self.nonce);
        if key.verify(&msg, &self.signature) {
            Ok(tag)
        } else {
            Err(AuthError::BadSignature)
        }
    }
}

/// A relay's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The deposit is stored.
    Stored {
        /// The item's id on this relay (for [`Request::Status`]).
        id: u64,
        /// Unix seconds after which the relay drops it.
        expires_at: u64,
    },
    /// The request was refused; nothing changed.
    Refused(Refusal),
    /// A page of stored items, oldest first.
    Page {
        /// The items.
        items: Vec<Item>,
        /// Whether more items follow the last one (ask again with `after` = its id).
        more: bool,
    },
    /// The ack was applied.
    Acked {
        /// How many of the acked ids held a claim of this recipient (the rest were unknown,
        /// already acked or expired).
        removed: u16,
    },
    /// Delivery state of the asked ids, in the order asked.
    Status {
        /// One entry per asked id.
        entries: Vec<(u64, ItemState)>,
    },
    /// The prekey bundle is stored.
    PrekeysPublished {
        /// Unix seconds after which the relay drops it unless republished.
        expires_at: u64,
    },
    /// A device's prekey bundle.
    Prekeys {
        /// When the device published it.
        published_at: u64,
        /// The bundle, as published.
        bundle: Vec<u8>,
    },
    /// The relay has no prekey bundle for that device.
    PrekeysNotFound,
}

/// One stored item in a pickup page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Id on this relay (ack with it).
    pub id: u64,
    /// Unix seconds of the deposit.
    pub deposited_at: u64,
    /// The opaque blob, exactly as deposited.
    pub blob: Vec<u8>,
}

/// Delivery state of one deposited item, as its depositor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemState {
    /// This many recipients have not acked yet; 0 means every recipient picked it up.
    Remaining(u16),
    /// The item expired with this many recipients not having picked it up.
    Expired(u16),
    /// Not an item this peer deposited here, or forgotten (the relay keeps delivery records
    /// for a while after delivery or expiry, not forever).
    Unknown,
}

/// Why a request was refused. A client retries quota and busy refusals later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Storing the item would exceed a quota.
    QuotaExceeded {
        /// Which quota.
        which: Quota,
        /// Seconds until the oldest item counted in that quota expires (an upper bound on the
        /// wait; acks may free space sooner).
        retry_after_secs: u64,
    },
    /// The blob is larger than this relay stores.
    TooLarge {
        /// The relay's largest item, in bytes.
        max: u64,
    },
    /// This relay does not store mailbox items.
    Disabled,
    /// The pickup proof is not valid.
    Unauthorized(AuthFailure),
    /// A timestamp is too far from the relay's clock.
    ClockSkew {
        /// The relay's clock, unix seconds.
        relay_time: u64,
    },
    /// The relay is overloaded; retry after this many seconds.
    Busy {
        /// Suggested wait.
        retry_after_secs: u64,
    },
    /// A device may publish only its own prekey bundle.
    Forbidden,
    /// A newer prekey bundle is already stored.
    Outdated {
        /// Publication time of the stored bundle.
        current_published_at: u64,
    },
    /// The relay failed to serve the request (storage error); retry later or elsewhere.
    Internal,
}

/// Which quota a deposit would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Bytes or items stored for this recipient.
    Recipient(Tag),
    /// Bytes or items this sender has stored.
    Sender,
    /// The relay's total bytes or items (or prekey entries).
    Relay,
}

/// Why a pickup proof was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// The signature does not verify under the key (or the key is invalid).
    BadSignature,
    /// This exact proof was already used.
    Replayed,
}

// ---------------------------------------------------------------------------------------------
// Encoding

mod tag {
    pub const DEPOSIT: u8 = 1;
    pub const PICKUP: u8 = 2;
    pub const ACK: u8 = 3;
    pub const STATUS: u8 = 4;
    pub const PUBLISH: u8 = 5;
    pub const FETCH: u8 = 6;
    pub const DEPOSIT_TTL: u8 = 7;

    pub const STORED: u8 = 1;
    pub const REFUSED: u8 = 2;
    pub const PAGE: u8 = 3;
    pub const ACKED: u8 = 4;
    pub const STATUS_ANSWER: u8 = 5;
    pub const PUBLISHED: u8 = 6;
    pub const PREKEYS: u8 = 7;
    pub const NOT_FOUND: u8 = 8;
}

fn put_peer(w: &mut Writer, peer: &PeerId) {
    let bytes = peer.to_bytes();
    w.u8(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    w.put(&bytes);
}

fn peer(r: &mut Reader<'_>) -> Result<PeerId, DecodeError> {
    let len = usize::from(r.u8()?);
    if len > MAX_PEER_ID {
        return Err(DecodeError::TooLong {
            what: "peer id",
            max: MAX_PEER_ID,
            got: len,
        });
    }
    let raw = r.take(len)?;
    let peer = PeerId::from_bytes(raw).map_err(|_| DecodeError::Invalid("peer id"))?;
    if peer.to_bytes() != raw {
        return Err(DecodeError::Invalid("peer id encoding"));
    }
    Ok(peer)
}

fn put_ids(w: &mut Writer, ids: &[u64]) {
    w.u16(u16::try_from(ids.len()).unwrap_or(u16::MAX));
    for id in ids.iter().take(usize::from(u16::MAX)) {
        w.u64(*id);
    }
}

fn ids(r: &mut Reader<'_>) -> Result<Vec<u64>, DecodeError> {
    let n = r.count16("item ids", MAX_IDS)?;
    (0..n).map(|_| r.u64()).collect()
}

fn blob<'a>(r: &mut Reader<'a>, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
    let b = r.bytes32(what, max)?;
    if b.is_empty() {
        return Err(DecodeError::Invalid(what));
    }
    Ok(b)
}

impl Encode for PickupAuth {
    fn encode(&self, w: &mut Writer) {
        w.put(&self.mailbox_key);
        w.u64(self.timestamp);
        w.put(&self.nonce);
        w.put(&self.signature);
    }
}

impl Decode for PickupAuth {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            mailbox_key: r.array()?,
            timestamp: r.u64()?,
            nonce: r.array()?,
            signature: r.array()?,
        })
    }
}

impl Encode for Request {
    fn encode(&self, w: &mut Writer) {
        w.u8(WIRE_VERSION);
        match self {
            Self::Deposit(d) => {
                match d.ttl_secs {
                    None => w.u8(tag::DEPOSIT),
                    Some(t) => {
                        w.u8(tag::DEPOSIT_TTL);
                        w.u32(t);
                    }
                }
                w.u8(u8::try_from(d.tags.len()).unwrap_or(u8::MAX));
                for t in &d.tags {
                    w.put(t);
                }
                w.bytes32(&d.blob);
            }
            Self::Pickup {
                auth,
                after,
                max_items,
                max_bytes,
            } => {
                w.u8(tag::PICKUP);
                auth.encode(w);
                w.u64(*after);
                w.u16(*max_items);
                w.u32(*max_bytes);
            }
            Self::Ack { auth, ids } => {
                w.u8(tag::ACK);
                auth.encode(w);
                put_ids(w, ids);
            }
            Self::Status { ids } => {
                w.u8(tag::STATUS);
                put_ids(w, ids);
            }
            Self::PublishPrekeys {
                peer,
                published_at,
                bundle,
            } => {
                w.u8(tag::PUBLISH);
                put_peer(w, peer);
                w.u64(*published_at);
                w.bytes32(bundle);
            }
            Self::FetchPrekeys { peer } => {
                w.u8(tag::FETCH);
                put_peer(w, peer);
            }
        }
    }
}

impl Decode for Request {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("mailbox request", WIRE_VERSION)?;
        match r.u8()? {
            t @ (tag::DEPOSIT | tag::DEPOSIT_TTL) => {
                let ttl_secs = if t == tag::DEPOSIT_TTL {
                    match r.u32()? {
                        0 => return Err(DecodeError::Invalid("deposit time limit 0")),
                        s => Some(s),
                    }
                } else {
                    None
                };
                let n = usize::from(r.u8()?);
                if n == 0 || n > MAX_TAGS {
                    return Err(DecodeError::TooLong {
                        what: "recipient tags (1 or more)",
                        max: MAX_TAGS,
                        got: n,
                    });
                }
                let mut tags = Vec::with_capacity(n);
                for _ in 0..n {
                    let t: Tag = r.array()?;
                    if tags.contains(&t) {
                        return Err(DecodeError::Invalid("duplicate recipient tag"));
                    }
                    tags.push(t);
                }
                let blob = blob(r, "blob", MAX_BLOB)?.to_vec();
                Ok(Self::Deposit(Deposit {
                    tags,
                    blob,
                    ttl_secs,
                }))
            }
            tag::PICKUP => Ok(Self::Pickup {
                auth: PickupAuth::decode(r)?,
                after: r.u64()?,
                max_items: r.u16()?,
                max_bytes: r.u32()?,
            }),
            tag::ACK => Ok(Self::Ack {
                auth: PickupAuth::decode(r)?,
                ids: ids(r)?,
            }),
            tag::STATUS => Ok(Self::Status { ids: ids(r)? }),
            tag::PUBLISH => Ok(Self::PublishPrekeys {
                peer: peer(r)?,
                published_at: r.u64()?,
                bundle: blob(r, "prekey bundle", MAX_PREKEY_BUNDLE)?.to_vec(),
            }),
            tag::FETCH => Ok(Self::FetchPrekeys { peer: peer(r)? }),
            got => Err(DecodeError::UnknownTag {
                what: "mailbox request",
                got: u64::from(got),
            }),
        }
    }
}

impl Encode for Refusal {
    fn encode(&self, w: &mut Writer) {
        match self {
            Self::QuotaExceeded {
                which,
                retry_after_secs,
            } => {
                w.u8(1);
                match which {
                    Quota::Recipient(t) => {
                        w.u8(1);
                        w.put(t);
                    }
                    Quota::Sender => w.u8(2),
                    Quota::Relay => w.u8(3),
                }
                w.u64(*retry_after_secs);
            }
            Self::TooLarge { max } => {
                w.u8(2);
                w.u64(*max);
            }
            Self::Disabled => w.u8(3),
            Self::Unauthorized(f) => {
                w.u8(4);
                w.u8(match f {
                    AuthFailure::BadSignature => 1,
                    AuthFailure::Replayed => 2,
                });
            }
            Self::ClockSkew { relay_time } => {
                w.u8(5);
                w.u64(*relay_time);
            }
            Self::Busy { retry_after_secs } => {
                w.u8(6);
                w.u64(*retry_after_secs);
            }
            Self::Forbidden => w.u8(7),
            Self::Outdated {
                current_published_at,
            } => {
                w.u8(8);
                w.u64(*current_published_at);
            }
            Self::Internal => w.u8(9),
        }
    }
}

impl Decode for Refusal {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            1 => {
                let which = match r.u8()? {
                    1 => Quota::Recipient(r.array()?),
                    2 => Quota::Sender,
                    3 => Quota::Relay,
                    got => {
                        return Err(DecodeError::UnknownTag {
                            what: "quota",
                            got: u64::from(got),
                        });
                    }
                };
                Self::QuotaExceeded {
                    which,
                    retry_after_secs: r.u64()?,
                }
            }
            2 => Self::TooLarge { max: r.u64()? },
            3 => Self::Disabled,
            4 => Self::Unauthorized(match r.u8()? {
                1 => AuthFailure::BadSignature,
                2 => AuthFailure::Replayed,
                got => {
                    return Err(DecodeError::UnknownTag {
                        what: "auth failure",
                        got: u64::from(got),
                    });
                }
            }),
            5 => Self::ClockSkew {
                relay_time: r.u64()?,
            },
            6 => Self::Busy {
                retry_after_secs: r.u64()?,
            },
            7 => Self::Forbidden,
            8 => Self::Outdated {
                current_published_at: r.u64()?,
            },
            9 => Self::Internal,
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "refusal",
                    got: u64::from(got),
                });
            }
        })
    }
}

impl Encode for Response {
    fn encode(&self, w: &mut Writer) {
        w.u8(WIRE_VERSION);
        match self {
            Self::Stored { id, expires_at } => {
                w.u8(tag::STORED);
                w.u64(*id);
                w.u64(*expires_at);
            }
            Self::Refused(refusal) => {
                w.u8(tag::REFUSED);
                refusal.encode(w);
            }
            Self::Page { items, more } => {
                w.u8(tag::PAGE);
                w.u16(u16::try_from(items.len()).unwrap_or(u16::MAX));
                for item in items.iter().take(usize::from(u16::MAX)) {
                    w.u64(item.id);
                    w.u64(item.deposited_at);
                    w.bytes32(&item.blob);
                }
                w.bool(*more);
            }
            Self::Acked { removed } => {
                w.u8(tag::ACKED);
                w.u16(*removed);
            }
            Self::Status { entries } => {
                w.u8(tag::STATUS_ANSWER);
                w.u16(u16::try_from(entries.len()).unwrap_or(u16::MAX));
                for (id, state) in entries.iter().take(usize::from(u16::MAX)) {
                    w.u64(*id);
                    match state {
                        ItemState::Remaining(n) => {
                            w.u8(1);
                            w.u16(*n);
                        }
                        ItemState::Expired(n) => {
                            w.u8(2);
                            w.u16(*n);
                        }
                        ItemState::Unknown => w.u8(3),
                    }
                }
            }
            Self::PrekeysPublished { expires_at } => {
                w.u8(tag::PUBLISHED);
                w.u64(*expires_at);
            }
            Self::Prekeys {
                published_at,
                bundle,
            } => {
                w.u8(tag::PREKEYS);
                w.u64(*published_at);
                w.bytes32(bundle);
            }
            Self::PrekeysNotFound => w.u8(tag::NOT_FOUND),
        }
    }
}

impl Decode for Response {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("mailbox response", WIRE_VERSION)?;
        match r.u8()? {
            tag::STORED => Ok(Self::Stored {
                id: r.u64()?,
                expires_at: r.u64()?,
            }),
            tag::REFUSED => Ok(Self::Refused(Refusal::decode(r)?)),
            tag::PAGE => {
                let n = r.count16("page items", MAX_PAGE_ITEMS)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(Item {
                        id: r.u64()?,
                        deposited_at: r.u64()?,
                        blob: blob(r, "blob", MAX_BLOB)?.to_vec(),
                    });
                }
                Ok(Self::Page {
                    items,
                    more: r.bool()?,
                })
            }
            tag::ACKED => Ok(Self::Acked { removed: r.u16()? }),
            tag::STATUS_ANSWER => {
                let n = r.count16("status entries", MAX_IDS)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.u64()?;
                    let state = match r.u8()? {
                        1 => ItemState::Remaining(r.u16()?),
                        2 => ItemState::Expired(r.u16()?),
                        3 => ItemState::Unknown,
                        got => {
                            return Err(DecodeError::UnknownTag {
                                what: "item state",
                                got: u64::from(got),
                            });
                        }
                    };
                    entries.push((id, state));
                }
                Ok(Self::Status { entries })
            }
            tag::PUBLISHED => Ok(Self::PrekeysPublished {
                expires_at: r.u64()?,
            }),
            tag::PREKEYS => Ok(Self::Prekeys {
                published_at: r.u64()?,
                bundle: blob(r, "prekey bundle", MAX_PREKEY_BUNDLE)?.to_vec(),
            }),
            tag::NOT_FOUND => Ok(Self::PrekeysNotFound),
            got => Err(DecodeError::UnknownTag {
                what: "mailbox response",
                got: u64::from(got),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn keypair(seed: u8) -> ed25519::Keypair {
        let secret = ed25519::SecretKey::try_from_bytes([seed; 32]).unwrap();
        ed25519::Keypair::from(secret)
    }

    #[test]
    fn tag_is_labelled_sha256_of_the_key() {
        // Independent computation: SHA-256 over the concatenation.
        let key = [7u8; 32];
        let mut input = TAG_LABEL.to_vec();
        input.extend_from_slice(&key);
        let want: [u8; 32] = Sha256::digest(&input).into();
        assert_eq!(tag_for(&key), want);
        assert_ne!(tag_for(&key), tag_for(&[8u8; 32]));
    }

    #[test]
    fn deposit_bytes_are_pinned() {
        let d = Deposit::new([[0xAA; 32], [0xAA; 32], [0xBB; 32]], vec![1, 2, 3]).unwrap();
        assert_eq!(d.tags().len(), 2);
        let bytes = Request::Deposit(d).to_bytes();
        let mut want = vec![1, 1, 2];
        want.extend_from_slice(&[0xAA; 32]);
        want.extend_from_slice(&[0xBB; 32]);
        want.extend_from_slice(&[0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(bytes, want);
        assert_eq!(
            Response::Refused(Refusal::QuotaExceeded {
                which: Quota::Sender,
                retry_after_secs: 5
            })
            .to_bytes(),
            vec![1, 2, 1, 2, 0, 0, 0, 0, 0, 0, 0, 5]
        );
    }

    #[test]
    fn strict_decoding() {
        let d = Request::Deposit(Deposit::new([[1; 32]], vec![9]).unwrap()).to_bytes();
        assert!(Request::from_bytes(&d).is_ok());
        let mut trailing = d.clone();
        trailing.push(0);
        assert_eq!(
            Request::from_bytes(&trailing),
            Err(DecodeError::TrailingBytes(1))
        );
        let mut v2 = d.clone();
        v2[0] = 2;
        assert!(matches!(
            Request::from_bytes(&v2),
            Err(DecodeError::UnknownVersion { got: 2, .. })
        ));
        let mut unknown = d.clone();
        unknown[1] = 99;
        assert!(matches!(
            Request::from_bytes(&unknown),
            Err(DecodeError::UnknownTag { got: 99, .. })
        ));
        for cut in 0..d.len() {
            assert!(Request::from_bytes(&d[..cut]).is_err(), "cut {cut}");
        }
        // Duplicate tags and an empty blob are refused.
        let mut dup = vec![1, 1, 2];
        dup.extend_from_slice(&[5; 32]);
        dup.extend_from_slice(&[5; 32]);
        dup.extend_from_slice(&[0, 0, 0, 1, 0]);
        assert_eq!(
            Request::from_bytes(&dup),
            Err(DecodeError::Invalid("duplicate recipient tag"))
        );
        let mut empty = vec![1, 1, 1];
        empty.extend_from_slice(&[5; 32]);
        empty.extend_from_slice(&[0, 0, 0, 0]);
        assert!(Request::from_bytes(&empty).is_err());
        // No tags, or too many.
        assert!(Request::from_bytes(&[1, 1, 0, 0, 0, 0, 1, 0]).is_err());
        assert!(Request::from_bytes(&[1, 1, 65]).is_err());
        // A huge blob length is refused before anything is allocated.
        let mut huge = vec![1, 1, 1];
        huge.extend_from_slice(&[5; 32]);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Request::from_bytes(&huge),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn a_deposit_with_a_time_limit_round_trips_and_zero_is_refused() {
        let d = Deposit::new([[1; 32]], vec![9]).unwrap().with_ttl(30);
        let bytes = Request::Deposit(d.clone()).to_bytes();
        assert_eq!(&bytes[..6], &[1, 7, 0, 0, 0, 30]);
        assert_eq!(Request::from_bytes(&bytes).unwrap(), Request::Deposit(d));
        let mut zero = bytes.clone();
        zero[5] = 0;
        assert!(Request::from_bytes(&zero).is_err());
    }

    #[test]
    fn deposit_constructor_bounds() {
        assert_eq!(Deposit::new([], vec![1]), Err(DepositError::TagCount(0)));
        let many = (0..=64u8).map(|i| [i; 32]);
        assert_eq!(Deposit::new(many, vec![1]), Err(DepositError::TagCount(65)));
        assert_eq!(
            Deposit::new([[0; 32]], vec![]),
            Err(DepositError::BlobSize(0))
        );
    }

    #[test]
    fn pickup_auth_verifies_and_binds() {
        let kp = keypair(3);
        let relay = PeerId::random();
        let auth = PickupAuth::sign_with_nonce(&kp, &relay, 1_000, [4; 16]);
        assert_eq!(
            auth.verify(&relay, 1_000),
            Ok(tag_for(&kp.public().to_bytes()))
        );
        assert_eq!(auth.verify(&relay, 1_300), Ok(auth.tag()));
        assert_eq!(
            auth.verify(&relay, 1_301),
            Err(AuthError::ClockSkew {
                now: 1_301,
                got: 1_000
            })
        );
        // Another relay, a flipped bit anywhere, another key: refused.
        assert_eq!(
            auth.verify(&PeerId::random(), 1_000),
            Err(AuthError::BadSignature)
        );
        for i in 0..64 {
            let mut bad = auth.clone();
            bad.signature[i] ^= 1;
            assert_eq!(bad.verify(&relay, 1_000), Err(AuthError::BadSignature));
        }
        let mut bad = auth.clone();
        bad.nonce[0] ^= 1;
        assert_eq!(bad.verify(&relay, 1_000), Err(AuthError::BadSignature));
        let mut bad = auth.clone();
        bad.mailbox_key = keypair(4).public().to_bytes();
        assert_eq!(bad.verify(&relay, 1_000), Err(AuthError::BadSignature));
        // Fresh nonces make distinct proofs.
        let a = PickupAuth::sign(&kp, &relay, 5);
        let b = PickupAuth::sign(&kp, &relay, 5);
        assert_ne!(a.signature, b.signature);
        // Debug shows no key.
        let dbg = format!("{auth:?}");
        assert!(!dbg.contains(&format!("{:?}", auth.mailbox_key)));
        assert!(!dbg.contains("mailbox_key"));
    }

    fn arb_tag() -> impl Strategy<Value = Tag> {
        any::<[u8; 32]>()
    }

    fn arb_auth() -> impl Strategy<Value = PickupAuth> {
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<[u8; 16]>(),
            proptest::collection::vec(any::<u8>(), 64),
        )
            .prop_map(|(k, t, n, s)| PickupAuth {
                mailbox_key: k,
                timestamp: t,
                nonce: n,
                signature: s.try_into().unwrap(),
            })
    }

    fn arb_blob(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 1..max)
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (proptest::collection::vec(arb_tag(), 1..5), arb_blob(300))
                .prop_map(|(t, b)| Request::Deposit(Deposit::new(t, b).unwrap())),
            (
                any::<u32>(),
                proptest::collection::vec(any::<[u8; 32]>(), 1..4),
                proptest::collection::vec(any::<u8>(), 1..40)
            )
                .prop_map(|(ttl, t, b)| Request::Deposit(
                    Deposit::new(t, b).unwrap().with_ttl(ttl)
                )),
            (arb_auth(), any::<u64>(), any::<u16>(), any::<u32>()).prop_map(
                |(auth, after, max_items, max_bytes)| Request::Pickup {
                    auth,
                    after,
                    max_items,
                    max_bytes
                }
            ),
            (arb_auth(), proptest::collection::vec(any::<u64>(), 0..20))
                .prop_map(|(auth, ids)| Request::Ack { auth, ids }),
            proptest::collection::vec(any::<u64>(), 0..20).prop_map(|ids| Request::Status { ids }),
            (any::<u64>(), arb_blob(200)).prop_map(|(published_at, bundle)| {
                Request::PublishPrekeys {
                    peer: PeerId::random(),
                    published_at,
                    bundle,
                }
            }),
            Just(()).prop_map(|_| Request::FetchPrekeys {
                peer: PeerId::random()
            }),
        ]
    }

    fn arb_refusal() -> impl Strategy<Value = Refusal> {
        prop_oneof![
            (arb_tag(), any::<u64>()).prop_map(|(t, r)| Refusal::QuotaExceeded {
                which: Quota::Recipient(t),
                retry_after_secs: r
            }),
            any::<u64>().prop_map(|r| Refusal::QuotaExceeded {
                which: Quota::Sender,
                retry_after_secs: r
            }),
            any::<u64>().prop_map(|r| Refusal::QuotaExceeded {
                which: Quota::Relay,
                retry_after_secs: r
            }),
            any::<u64>().prop_map(|max| Refusal::TooLarge { max }),
            Just(Refusal::Disabled),
            Just(Refusal::Unauthorized(AuthFailure::BadSignature)),
            Just(Refusal::Unauthorized(AuthFailure::Replayed)),
            any::<u64>().prop_map(|relay_time| Refusal::ClockSkew { relay_time }),
            any::<u64>().prop_map(|retry_after_secs| Refusal::Busy { retry_after_secs }),
            Just(Refusal::Forbidden),
            any::<u64>().prop_map(|current_published_at| Refusal::Outdated {
                current_published_at
            }),
            Just(Refusal::Internal),
        ]
    }

    fn arb_state() -> impl Strategy<Value = ItemState> {
        prop_oneof![
            any::<u16>().prop_map(ItemState::Remaining),
            any::<u16>().prop_map(ItemState::Expired),
            Just(ItemState::Unknown),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (any::<u64>(), any::<u64>())
                .prop_map(|(id, expires_at)| Response::Stored { id, expires_at }),
            arb_refusal().prop_map(Response::Refused),
            (
                proptest::collection::vec(
                    (any::<u64>(), any::<u64>(), arb_blob(100)).prop_map(
                        |(id, deposited_at, blob)| {
                            Item {
                                id,
                                deposited_at,
                                blob,
                            }
                        }
                    ),
                    0..8
                ),
                any::<bool>()
            )
                .prop_map(|(items, more)| Response::Page { items, more }),
            any::<u16>().prop_map(|removed| Response::Acked { removed }),
            proptest::collection::vec((any::<u64>(), arb_state()), 0..10)
                .prop_map(|entries| Response::Status { entries }),
            any::<u64>().prop_map(|expires_at| Response::PrekeysPublished { expires_at }),
            (any::<u64>(), arb_blob(200)).prop_map(|(published_at, bundle)| Response::Prekeys {
                published_at,
                bundle
            }),
            Just(Response::PrekeysNotFound),
        ]
    }

    proptest! {
        #[test]
        fn request_round_trips(req in arb_request()) {
            let bytes = req.to_bytes();
            prop_assert_eq!(Request::from_bytes(&bytes).unwrap(), req);
        }

        #[test]
        fn response_round_trips(res in arb_response()) {
            let bytes = res.to_bytes();
            prop_assert_eq!(Response::from_bytes(&bytes).unwrap(), res);
        }

        #[test]
        fn decoders_never_panic_and_accept_only_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(req) = Request::from_bytes(&bytes) {
                prop_assert_eq!(req.to_bytes(), bytes.clone());
            }
            if let Ok(res) = Response::from_bytes(&bytes) {
                prop_assert_eq!(res.to_bytes(), bytes);
            }
        }

        #[test]
        fn bit_flips_never_panic(req in arb_request(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = req.to_bytes();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(other) = Request::from_bytes(&bytes) {
                prop_assert_eq!(other.to_bytes(), bytes);
            }
        }
    }
}
