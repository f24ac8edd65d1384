//! Guild channel encryption: decentralized continuous group key agreement (DCGKA).
//!
//! This follows Weidner, Kleppmann, Hugenroth and Beresford, *Key Agreement for Decentralized
//! Secure Group Messaging with Strong Security Guarantees* (CCS 2021, IACR ePrint 2020/1281):
//! only **causal delivery** of control messages is needed, no server orders anything, and every
//! member derives a sequence of *update secrets* per member that seed that member's message
//! ratchet. The algorithms below are the paper's (`create`, `add`, `remove`, `update`,
//! `process_create/add/remove/update`, `process_seed`, `process_ack`, `process_add_ack`,
//! `process_welcome`, `update_ratchet`, `member_view`), with the deviations listed at the end.
//!
//! # What travels
//!
//! * **Control messages** ([`ControlMessage`]): broadcast, in clear, signed by the sender's
//!   device key (`"SecureComm/dcgka/control v1"`). Id = (sender, seq), seq = 1, 2, 3, ... per
//!   sender and group. Kinds: `create(member keys)`, `add(member key)`, `remove(device)`,
//!   `update`, `ack(op id, refresh)`, `add-ack(op id)`, `history-export(device)`. A *member key*
//!   is a device key plus its signed one-shot prekey ([`crate::oneshot::SignedPrekey`]), to which
//!   each peer's first 2SM message is sealed.
//! * **Direct messages** ([`DirectMessage`]): for one recipient, travelling with one control
//!   message (their `op` field is that message's id), signed (`"SecureComm/dcgka/direct v1"`),
//!   payload encrypted with the 2SM channel of [`twoparty`]. Kinds: *seed* (32-byte seed of a
//!   create/update/remove/refreshing ack), *welcome* (the adder's outer ratchet state, the
//!   membership history with who-has-seen-what, per-member sequence numbers and prekeys),
//!   *forward* (a member secret forwarded to a concurrently added member with an ack),
//!   *add-ack state* (the acknowledger's outer ratchet state for the new member), *history*.
//! * **Application messages** ([`AppMessage`]): a sealed envelope ([`crate::envelope`]): header
//!   `epoch, sender_tag, generation` in clear (the tag is an opaque per-(sender, epoch) value
//!   only members can map to a device), then ChaCha20-Poly1305 under a one-time key from the
//!   sender's message ratchet ([`ratchet`]), with the sender's Ed25519 signature over the group
//!   id, header and payload *inside* the ciphertext, so no member can impersonate another.
//!
//! # The protocol as built
//!
//! * `update` / `remove` / `create`: the initiator draws a fresh 32-byte seed and sends it to
//!   every other member of its current view (minus the removed device) by 2SM. Every recipient
//!   derives `member_secret(op, X) = HKDF(seed, "SecureComm/dcgka/member-secret v1" || op || X)`
//!   for every recipient X and for the sender, ratchets the sender's outer ratchet with the
//!   sender's member secret, keeps the others (deleting the seed), and broadcasts `ack(op)`.
//!   Processing `ack(op)` from X (everyone, including X itself) ratchets X's outer ratchet with
//!   `member_secret(op, X)` and deletes it.
//! * `update_ratchet(X, input)`: `HKDF(salt = chain_X, ikm = input,
//!   "SecureComm/dcgka/update-secret v1" || X)` → (update secret, next chain_X). Each update
//!   secret starts a new epoch of X's message chain.
//! * `add(E)`: the adder sends E a welcome; everyone ratchets the adder's outer ratchet twice with
//!   the constants *welcome* and *add*: the first output is E's first member secret, the second
//!   the adder's update secret. Every other member broadcasts `add-ack` and sends E its own outer
//!   ratchet state by 2SM; processing an add-ack ratchets the acknowledger with *add*. E
//!   initialises from the welcome, makes the same two ratchet steps, and broadcasts `ack(add)`,
//!   which everyone processes like any ack (using E's first member secret). E thus learns no
//!   update secret from before its addition.
//! * **Concurrency** (the paper's §6): a member that processes a seed op whose sender did not
//!   yet know of a member M it has added since forwards its own member secret of that op to M
//!   with its ack (*forward*), so M can follow its ratchet. Add-acks and adds are skipped by
//!   members the sender did not know of; they get the sender's state later, by add-ack.
//!   `member_view` is computed from acknowledgements: see [`dgm`] for the membership rules
//!   (removal wins and is final; an add concurrent with its adder's removal is undone).
//! * **Removal secrecy under concurrency.** A member added concurrently with a removal was not a
//!   recipient of the removal's seed, and its own first member secret came from a ratchet the
//!   removed device tracked. Its ack of that removal therefore carries a fresh seed
//!   (`ack(op, refresh = true)`, processed by everyone like an update): after every remaining
//!   member has processed the removal, every remaining member's outer ratchet has absorbed a
//!   secret the removed device never saw.
//!
//! # What each member stores ([`Group`], serialised by [`Group::to_bytes`])
//!
//! Its device key (public) and prekey secret; its sequence number and the last one processed per
//! sender; prekeys of known devices; the membership history; outstanding member secrets
//! (deleted on use); each member's outer ratchet (chain secret, epoch); 2SM state per peer; the
//! last [`ratchet::MAX_EPOCHS`] message epochs per sender with bounded skipped keys; the history
//! archive if switched on. No seed outlives the call that used it.
//!
//! # What the caller (network layer) must do
//!
//! * Deliver control messages to [`Group::process`] in **causal order**, each with the direct
//!   message addressed to this device that has `op == control.id()`, if any. Sequence numbers
//!   per sender must be contiguous ([`Group::last_seq`] tells the last one processed); own
//!   messages are already processed when returned.
//! * A new member is given the add with its welcome first, then every control message that is
//!   not in the causal past of the add (the welcome's per-member sequence numbers say where each
//!   sender's stream continues).
//! * Publish `broadcast` and deliver `direct` after every call that returns them.
//!
//! # Guarantees
//!
//! * **Forward secrecy**: seeds, member secrets, chain keys and message keys are deleted after
//!   use; 2SM deletes each receiving key after one message. A state captured now opens no message
//!   whose key was already used (history archive off).
//! * **Post-compromise security**: after `update` by a compromised member, once processed by
//!   the others, its ratchet and theirs absorb a seed the attacker never saw (2SM heals through
//!   receiver-announced keys).
//! * **Removal**: messages sent after every remaining member processed a removal are unreadable
//!   by the removed device. **Join**: a new member reads nothing sent before its addition unless
//!   history is exported ([`history`]).
//! * **Authenticity**: control and direct messages are signed; application messages carry the
//!   sender's signature inside the ciphertext and are bound to the group id.
//!
//! # Not guaranteed / deviations from the paper
//!
//! * The first 2SM message from each peer is sealed (Noise `X`, [`crate::oneshot`]) to the
//!   prekey in this device's member key, so its forward secrecy lasts as long as that prekey is
//!   kept in the [`crate::oneshot::PrekeyStore`] ([`Group::prekey_store_mut`] rotates and
//!   expires it; members learn a device's prekey only from its create/add, so rotate only after
//!   every peer has sent its first message). Every later 2SM message uses a fresh per-message
//!   key (Noise-`N`-shaped step in [`twoparty`]), not the one-shot module.
//! * Refreshing acks (above) are an addition to the paper. Removal is final per device key, and
//!   adding the same device twice concurrently is not supported (the second add is processed but
//!   is not a tested path). The membership rules are this implementation's DGM, not the paper's
//!   exact function.
//! * Control messages are signed but not encrypted: the membership (device keys) is visible to
//!   whoever relays them. Messages from removed members' concurrent updates are still processed
//!   (every member must make the same ratchet steps) but never start a chain for the removed
//!   device.
//! * Messages sent in an epoch more than [`ratchet::MAX_EPOCHS`] updates old, or more than
//!   [`ratchet::MAX_SKIP`] ahead, are rejected; the sender's own messages cannot be decrypted by
//!   itself.
//! * Nothing here depends on time; no timestamps are used.

pub mod dgm;
pub mod group;
pub mod history;
pub mod ratchet;
pub mod twoparty;
pub mod wire;

pub use group::{AppMessage, Decrypted, Group, GroupError, Output, UpdateEvent};
pub use wire::{ControlBody, ControlMessage, DirectKind, DirectMessage, MemberKey, OpId};
