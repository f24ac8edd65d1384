//! The mailbox: store-and-forward of end-to-end ciphertext for members who are offline, and a
//! small directory of prekey bundles, served on [`PROTOCOL`] (`/securecomm/mailbox/1.0.0`).
//!
//! # What is on the wire
//! One request and one response per libp2p stream ([`MailboxCodec`]: a u32 length, then a
//! versioned message from [`wire`]):
//! * `Deposit { tags, blob }`: one opaque blob for 1 to 64 recipients, stored once. A recipient
//!   is an opaque [`Tag`], SHA-256 of `"SecureComm/mailbox-tag v1"` and the recipient device's
//!   Ed25519 *mailbox key* ([`tag_for`]). Answer `Stored { id, expires_at }` or an explicit
//!   [`Refusal`] (quota with a retry hint, too large, disabled, busy) so the sender retries.
//! * `Pickup { auth, after, max_items, max_bytes }`: the recipient proves it holds the mailbox
//!   key ([`PickupAuth`], bound to this relay's peer id, a timestamp within five minutes and a
//!   random nonce; replays refused) and gets a page of `(id, deposited_at, blob)`, oldest
//!   first, with `more`. Pickup deletes nothing.
//! * `Ack { auth, ids }`: the recipient has stored these items durably; its claims go, and a
//!   blob with no claim left is deleted. A crash between pickup and ack loses nothing; the
//!   client deduplicates what it sees twice.
//! * `Status { ids }`: the depositor (same peer id) asks how many recipients have not acked
//!   each item (0: everyone picked it up) or whether it expired.
//! * `PublishPrekeys { peer, published_at, bundle }` / `FetchPrekeys { peer }`: a device stores
//!   its own signed prekey bundle (at most 4 KiB, opaque to the relay; only the connection's
//!   own peer id may publish, the newest `published_at` wins); anyone fetches it by peer id and
//!   verifies the signature inside it.
//!
//! # What the relay stores and learns
//! A SQLite file `mailbox.sqlite3` in the relay's data directory ([`store`]): each blob exactly
//! as deposited, its size and times, the sender's peer id (for the sender quota and status),
//! and the opaque tags still owed it; prekey bundles by peer id. No key, no plaintext, nothing
//! derived from a blob. The relay learns sizes, times, the depositor's peer id and which tags
//! a pickup connection proves, nothing more. Logs carry neither blobs nor tags; metrics are
//! counts ([`service::MailboxMetrics`]).
//!
//! # What it guarantees
//! Every quota (bytes and items per recipient and per sender, relay totals, item size) is
//! checked and charged in one transaction by a single writer, so concurrent deposits cannot
//! overshoot; refusals say which quota and roughly when space frees up. Items expire after the
//! configured TTL (swept periodically, and never returned once expired even before the sweep).
//! Undelivered items survive a relay restart.
//!
//! # For the node
//! Add `request_response::Behaviour::with_codec(MailboxCodec::default(), [(PROTOCOL,
//! ProtocolSupport::Outbound)], ..)` to the swarm, send [`Request`]s to a relay, build
//! deposits with [`Deposit::new`] and pickup proofs with [`PickupAuth::sign`].

pub mod codec;
pub mod service;
pub mod store;
pub mod wire;

use std::time::Duration;

pub use codec::{MailboxCodec, PROTOCOL};
pub use wire::{
    AuthFailure, Deposit, DepositError, Item, ItemState, PickupAuth, Quota, Refusal, Request,
    Response, Tag, tag_for,
};

/// Library-only mailbox settings (not in the operator's TOML file).
#[derive(Debug, Clone)]
pub struct MailboxOptions {
    /// Replaces `mailbox.ttl_secs` (whose TOML minimum is 60 s); for tests of expiry.
    pub ttl_override: Option<Duration>,
    /// How often expired items are swept.
    pub sweep_interval: Duration,
}

impl Default for MailboxOptions {
    fn default() -> Self {
        Self {
            ttl_override: None,
            sweep_interval: Duration::from_secs(60),
        }
    }
}
