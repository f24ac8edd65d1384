//! Causal, durable delivery for a group's control plane (DCGKA control messages, guild-document
//! changes), and a durable gossip outbox.
//!
//! The module does not look inside payloads: it moves signed, numbered [`Entry`]s between the
//! members of a group so that every member delivers every entry exactly once, after everything
//! its author had delivered when writing it, across crashes, restarts and disconnections.
//!
//! * [`wire`]: the signed [`Entry`], the [`Frontier`] (version vector) and the
//!   [`SyncRequest`]/[`SyncResponse`] messages of the anti-entropy protocol, with strict codecs.
//! * [`causal`]: [`CausalLog`], one group's log in the SQLCipher database: parking, causal
//!   release, exactly-once delivery, paged `missing_since` for anti-entropy, acknowledgements.
//! * [`outbox`]: [`Outbox`], gossip publications retried with backoff until gossipsub takes them.
//! * [`peer`]: [`SyncPeer`], the glue to the network: anti-entropy with each group member on
//!   connect and periodically, pushes of new entries, retransmission until acknowledged.
//!
//! How the pieces meet on the wire: new entries are pushed to connected members over the direct
//! request-response protocol; the answer is the receiver's frontier, which acknowledges them. On
//! every (re)connection, and periodically, each side pulls with its own frontier, which both
//! fetches what it lacks and acknowledges what it has. Unacknowledged own entries are pushed again
//! until acknowledged.

pub mod causal;
pub mod outbox;
pub mod peer;
pub mod wire;

use securecomm_noise::codec::DecodeError;
use thiserror::Error;

pub use causal::{Apply, CausalLog, MAX_PARKED, Received};
pub use outbox::{FlushReport, Outbox, Publication};
pub use peer::{Delivery, SyncConfig, SyncPeer};
pub use wire::{
    Author, Entry, EntryError, EntryId, Frontier, GroupId, MAX_AUTHORS, MAX_BATCH, MAX_BATCH_BYTES,
    MAX_DEPS, MAX_PAYLOAD, SyncRequest, SyncResponse,
};

use crate::net::NetError;
use crate::store::DbError;

/// Why a sync operation failed.
#[derive(Debug, Error)]
pub enum SyncError {
    /// Bytes from the network are not a valid encoding.
    #[error("malformed sync message: {0}")]
    Decode(#[from] DecodeError),
    /// An entry could not be built.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// The signature does not verify under the entry's author key.
    #[error("entry {id:?} is not validly signed by its author")]
    BadSignature {
        /// The entry.
        id: EntryId,
    },
    /// The entry belongs to another group.
    #[error("entry of the wrong group: expected {expected:?}, got {got:?}")]
    WrongGroup {
        /// This log's group.
        expected: GroupId,
        /// The entry's group.
        got: GroupId,
    },
    /// The author signed two different entries at one sequence number (equivocation).
    #[error("two different entries at {id:?}: the author equivocated; keeping the first")]
    Conflict {
        /// The contested id.
        id: EntryId,
    },
    /// The entry is too far ahead of its author's delivered entries to be worth parking.
    #[error("entry {id:?} is too far ahead: expected seq at most {max}")]
    TooFarAhead {
        /// The entry.
        id: EntryId,
        /// The highest sequence number that may be parked now.
        max: u64,
    },
    /// The park buffer is full and this entry is the farthest from deliverable.
    #[error("park buffer full ({max} entries wait for dependencies); entry {id:?} refused")]
    ParkFull {
        /// The refused entry.
        id: EntryId,
        /// The bound.
        max: usize,
    },
    /// The group reached its author (or acknowledging peer) bound.
    #[error("too many authors or peers in one group: at most {max}")]
    TooManyAuthors {
        /// The bound.
        max: usize,
    },
    /// More concurrent heads than one entry can depend on.
    #[error("too many concurrent heads: at most {max}, got {got}")]
    TooManyHeads {
        /// The bound.
        max: usize,
        /// Heads present.
        got: usize,
    },
    /// `insert_local` was given a key other than the log's local author.
    #[error("the signing key is not this log's local author")]
    NotLocalAuthor,
    /// The application's hook refused a delivery; nothing of the batch was stored.
    #[error("the application refused a delivery: {0}")]
    Apply(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Stored data does not parse (a bug or a damaged database).
    #[error("stored sync data is corrupt: {0}")]
    Corrupt(&'static str),
    /// The outbox holds its maximum.
    #[error("outbox full: at most {max} publications may wait")]
    OutboxFull {
        /// The bound.
        max: usize,
    },
    /// A publication exceeds the topic or message bound.
    #[error(
        "publication too large: expected topic <= {max_topic} and data <= {max_data} bytes, got {topic} and {data}"
    )]
    PublicationTooLarge {
        /// Topic bound.
        max_topic: usize,
        /// Data bound.
        max_data: usize,
        /// Topic length.
        topic: usize,
        /// Data length.
        data: usize,
    },
    /// The group is not joined.
    #[error("group {0:?} is not joined")]
    UnknownGroup(GroupId),
    /// A lock was poisoned by a panic elsewhere.
    #[error("sync state lock poisoned")]
    Poisoned,
    /// The network failed.
    #[error(transparent)]
    Net(#[from] NetError),
}

impl From<rusqlite::Error> for SyncError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Db(DbError::Sqlite(e))
    }
}

impl SyncError {
    /// Errors that abort a whole batch (as opposed to refusing one entry).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Db(_) | Self::Corrupt(_) | Self::Apply(_) | Self::Poisoned | Self::Net(_)
        )
    }
}
