//! Guilds on the network: the guild document (`securecomm-crdt`), key agreement (DCGKA from
//! `securecomm-noise`), one causal log per guild ([`crate::sync`]) and one opaque gossip topic.
//!
//! # A guild at this node
//!
//! * **Guild document**: the crdt `Guild` (members, roles, channels, invites, bans), with the
//!   resolved view every permission check reads.
//! * **Key agreement**: a DCGKA `Group` whose group id is the guild id. Every member device
//!   derives per-sender message keys from it; messages are sealed envelopes with the sender's
//!   signature inside.
//! * **Causal log**: the sync layer's log with `GroupId = guild id`. Its entries
//!   ([`wire::LogPayload`]) are guild changes and DCGKA control messages with their per-recipient
//!   two-party messages embedded (encrypted to their recipients and signed; every member
//!   stores them all, which costs space, not secrecy). The log gives what both need: durable,
//!   causal, exactly-once delivery, retransmitted until acknowledged and exchanged again on
//!   every reconnection.
//! * **Topic**: `hex(SHA-256("SecureComm/guild-topic v1" | guild secret))`. The 32-byte guild
//!   secret is random, created with the guild, handed to a joiner inside the join answer (which
//!   travels in the libp2p connection's Noise channel, end to end even through a relay) and never
//!   sent in clear. The relay and other observers see an opaque topic only.
//!
//! # The apply hook (engine)
//!
//! The log calls the engine's `apply_entry` for every delivered entry, local or remote,
//! in causal order, **inside the transaction that marks it delivered**:
//!
//! 1. a guild change goes to the document (which checks its signature and its authorization
//!    against its causal past, and rejects it otherwise);
//! 2. a control message goes to DCGKA with the direct message addressed to this device. Before
//!    this device has been welcomed, control messages are parked (by reference into the log)
//!    and replayed right after the welcome; those in the add's causal past are skipped;
//! 3. the document's membership is compared with key agreement: a member device missing from
//!    key agreement is **added by the device that holds its member key**, the inviter that
//!    accepted its redemption; when an entry removed members (kick, ban, leave), **the entry's
//!    author removes their devices**, or the owner's device if the author cannot (it is the
//!    one who left, or not in key agreement);
//! 4. DCGKA output (acks, adds, removes) is written to the `guild_outq` table, and the guild's
//!    state (document, DCGKA state, applied-entry counter) to its `guilds` row.
//!
//! All of it commits with the delivered flag, so a crash never applies an entry twice or loses
//! its effects. The service then writes queued DCGKA output to the log in order (the hook
//! deletes the queue row in the same transaction as the entry that carries it).
//!
//! # Messages
//!
//! `send` checks `VIEW_CHANNEL | SEND_MESSAGES` in a text channel on the resolved view, refuses
//! while key agreement still holds a device the document removed (a removal is in flight),
//! encrypts a [`wire::AppPayload`] with `Group::encrypt` under a ratchet index reserved
//! durably beforehand (in blocks, see `engine::RESERVE_BLOCK`), publishes it, and then stores
//! the message in one synchronous transaction (with the publication in the outbox if
//! gossipsub refused it). Once `send` returns, the message survives `kill -9` and a power cut
//! and is published, or will be when gossipsub accepts it.
//!
//! Receivers validate before gossipsub forwards: decrypt and verify (sender, epoch, signature
//! inside the envelope), decode, and re-check that the sender's user may post in that channel.
//! Malformed, forged, replayed or unauthorized messages are **rejected** (gossipsub drops them and
//! scores the forwarding peer down); messages under a key epoch this node does not have yet are
//! **ignored** and kept (bounded, [`engine::MAX_PENDING_GOSSIP`] for
//! [`engine::PENDING_GOSSIP_TTL`]) to retry after the next control message. Gossip is handled
//! in batches of what queued up: all are validated first and reported to gossipsub (valid ones
//! are forwarded before this node writes anything), then the accepted messages are stored in
//! `guild_messages` (unique per guild and message id) with the receiving chains they moved, in
//! one transaction per batch.
//!
//! # Joining
//!
//! `invite create` records an invite in the document, keeps a random one-time secret and prints
//! an [`wire::InviteLink`]: guild id, invite id, secret, expiry, rendezvous namespace and the
//! inviter's addresses (direct and relayed, each with `/p2p/`). `guild join` dials the inviter
//! and runs two requests on the direct protocol:
//!
//! 1. `Hello` (certificate, DCGKA member key, HMAC proof of the secret): the inviter checks the
//!    proof, that the certificate's device is the connected peer, expiry/uses/revocation and
//!    bans, and answers with the document, a signed invite token and the guild secret;
//! 2. `Redeem` (the joiner's redemption change, authored on the offered document, and the proof
//!    again): the inviter stores the member key, writes the redemption to the log (its own
//!    entry carries the joiner's signed change), which adds the joiner to the document and, in
//!    the same hook, to key agreement; it answers `Welcome` once the joiner is a sync member.
//!
//! The joiner then pulls the log from the inviter and is keyed once the add (with its welcome)
//! is delivered. History before the join is not readable (DCGKA's default).
//!
//! # Offline members, DMs
//!
//! * [`history`]: every message carries its sender's sequence number; members keep the sealed
//!   envelopes and a member that was offline fetches what it missed from an online member, in
//!   pages, validating each like live gossip; members send senders receipts of what they hold.
//! * [`mailbox`]: members announce a mailbox tag and relays in the log; a sender deposits its
//!   messages for offline members on their relays (sealed under a guild-derived key) and every
//!   node picks up and acknowledges its own mail.
//! * [`dm`]: X3DH + Double Ratchet direct messages between users who share a guild, with
//!   prekey bundles from the peer or from the guild log, a durable outbox, and mailbox delivery.
//!
//! # Costs (measured shapes)
//!
//! * A message moves one sender's chains: stored as a small `guild_chains` row (the whole
//!   DCGKA state is written only when key agreement changes); a send's indices and sequence
//!   numbers are reserved durably in blocks, so sends wait for one shared WAL fsync only.
//! * A local guild change is taken from the log like a remote one: the guild is rebuilt from its
//!   row first (`load_trusted`, which re-validates every change without signatures), so local
//!   changes cost a fold of the document. Remote entries cost only their own validation.
//! * A join offer carries the whole document and must fit one direct-protocol frame (1 MiB).
//!
//! # Limits and what is not here
//!
//! * Joiners reach the inviter at the addresses in the code (direct or relayed); the rendezvous
//!   namespace is carried but discovery through rendezvous is not implemented yet.
//! * A member that is not yet in key agreement, or a removal voided later by the document's
//!   conflict rules, can leave key agreement and the document briefly out of step until the
//!   owner acts; a removed member's device stops being a sync member at once and its later
//!   messages are unreadable to the others.
//! * The topic is not rotated after a removal: a removed member can still see ciphertext on
//!   the topic (and cannot read any sent after the removal was processed).

pub mod content;
pub mod dm;
pub mod engine;
pub mod history;
pub mod mailbox;
pub mod service;
pub mod wire;

use securecomm_noise::codec::DecodeError;
use securecomm_noise::dcgka::GroupError;
use thiserror::Error;

pub use engine::{HistoryCursor, StoredMessage, Verdict};
pub use service::manage::{
    BanInfo, ChannelDetail, ChannelEdit, GuildOverview, InviteInfo, MemberDetail, NewChannelKind,
    OverwriteFor, OverwriteInfo, RoleEdit, RoleInfo, SettingsEdit,
};
pub use service::{GuildEvent, GuildService, HistoryStats};

use crate::net::NetError;
use crate::sync::SyncError;

/// Why a guild operation failed.
#[derive(Debug, Error)]
pub enum GuildError {
    /// No guild by that name or id.
    #[error("no guild {0:?} (expected a guild name or id from `guild list`)")]
    UnknownGuild(String),
    /// No channel by that name or id.
    #[error("no channel {0:?} in this guild (see `channel list`)")]
    UnknownChannel(String),
    /// No member by that name or id.
    #[error("no member {0:?} in this guild (see `members`)")]
    UnknownUser(String),
    /// No role by that name or id.
    #[error("no role {0:?} in this guild")]
    UnknownRole(String),
    /// A name matches several things.
    #[error("{0} is ambiguous; use the id")]
    Ambiguous(String),
    /// The local view says this is not allowed.
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// The device has not been welcomed into the guild's key agreement yet.
    #[error("still joining: key agreement has not welcomed this device yet; try again shortly")]
    NotReady,
    /// A removal is being applied to key agreement; sending now could reach the removed member.
    #[error("a member removal is still being applied to the guild keys; try again shortly")]
    KeyRotationPending,
    /// An argument is out of range.
    #[error("{0}")]
    Invalid(String),
    /// Joining failed.
    #[error("join failed: {0}")]
    Join(String),
    /// The guild document refused the operation.
    #[error(transparent)]
    Crdt(#[from] securecomm_crdt::GuildError),
    /// Key agreement refused the operation.
    #[error("key agreement: {0}")]
    Dcgka(#[from] GroupError),
    /// Bytes did not decode.
    #[error("malformed: {0}")]
    Decode(#[from] DecodeError),
    /// The sync layer or the database failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A lock was poisoned by a panic elsewhere.
    #[error("guild state lock poisoned")]
    Poisoned,
}

impl From<rusqlite::Error> for GuildError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sync(SyncError::from(e))
    }
}
