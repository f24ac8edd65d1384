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
//! **What this was checked against.** Function by function, against: the paper's DCGKA and
//! 2SM algorithms (`init`, `encrypt-to`, `decrypt-from`, `update-ratchet`, `member-view`,
//! `generate-seed`, `create`, `process-seed`, `process-create`, `process-ack`, `update`,
//! `remove`, `process-remove`, `add`, `process-add`, `process-add-ack`, `process-welcome`,
//! `2SM-Init/Send/Receive`) as transcribed, with their line-by-line explanation, in Vac's RFC
//! *Decentralized Key and Session Setup for Secure Messaging over Ethereum* (which cites ePrint
//! 2020/1281); the paper's own §6.2 wording on concurrency (an add concurrent with an update,
//! remove or add; forwarding member secrets; concurrent additions) as quoted verbatim in
//! p2panda-encryption's DCGKA; and the authors' prototype (`trvedata/key-agreement`:
//! `FullDcgkaProtocol`, `StrongRemoveDgm`, `TwoPartyProtocol`). The paper's PDF itself (the
//! October 2020 ePrint text and the CCS 2021 text) was reachable only up to its introduction,
//! so its security definitions and proofs, and its construction of the full messaging protocol
//! from DCGKA, were not checked line by line.
//!
//! # What travels
//!
//! * **Control messages** ([`ControlMessage`]): broadcast, in clear, signed by the sender's
//!   device key (`"SecureComm/dcgka/control v1"`). Id = (sender, seq), seq = 1, 2, 3, ... per
//!   sender and group. Kinds: `create(member keys)`, `add(member key)`, `remove(device)`,
//!   `update`, `ack(op id, refresh)` (refresh: see "Removal secrecy under concurrency"),
//!   `add-ack(op id)`, `history-export(device)`. A *member key*
//!   is a device key plus its signed one-shot prekey ([`crate::oneshot::SignedPrekey`]), to which
//!   each peer's first 2SM message is sealed.
//! * **Direct messages** ([`DirectMessage`]): for one recipient, travelling with one control
//!   message (their `op` field is that message's id), signed (`"SecureComm/dcgka/direct v1"`),
//!   payload encrypted with the 2SM channel of [`twoparty`]. Kinds: *seed* (32-byte seed of a
//!   create/update/remove/refreshing ack), *welcome* (the adder's outer ratchet state, the
//!   membership history with who-has-seen-what, per-member sequence numbers and prekeys),
//!   *forward* (a member secret forwarded to a concurrently added member with an ack),
//!   *seed+forward* (both, when a refreshing ack also forwards to the same member),
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
//! * **Removal secrecy under concurrency.** Normally a member's ack of a removal makes its
//!   outer ratchet absorb a member secret that no removed device knows. Two cases break that,
//!   and in both the ack is a *refreshing* ack (`ack(op, refresh = true)`) carrying a fresh seed
//!   to every other current member, from which everyone derives one more update secret for the
//!   acknowledger only (`member_secret(seed, ack id, acknowledger)`; a refresh is not itself
//!   acknowledged, and a member added concurrently with it gets the result in the
//!   acknowledger's add-ack state):
//!   1. the acknowledger was not a recipient of the removal's seed (it was added concurrently),
//!      and its own first member secret came from a ratchet the removed device tracked;
//!   2. the removal's seed reached a device that is not a member for the acknowledger: its
//!      sender's view still held a device removed by a concurrent removal (or a device whose
//!      add a concurrent removal undid), or the sender itself was removed concurrently. Without the refresh, two
//!      concurrently removed devices together (one knows each removal's seed) read what the
//!      remaining members send after processing both (test
//!      `colluding_concurrently_removed_members_are_locked_out`). The authors' prototype sends
//!      an ack-with-update on the same condition.
//!
//!   Argument: take the last removal a remaining member M processes. Either its seed reached
//!   only devices M still counts as members, so M's ack absorbs a secret no removed device
//!   knows, or M refreshes with a seed sent only to its current members; either way M's ratchet
//!   is clean from then on (later inputs are mixed into an unknown chain), and so is the chain
//!   of anyone M adds afterwards. A refresh costs its sender one 2SM message per other member
//!   and each receiver one 2SM decryption and one ratchet step, and refreshes happen only
//!   with concurrency: never for a lone removal, nor for two removals of the same device
//!   (`plain_removals_do_not_refresh`).
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
//!   by the removed device, also when several devices are removed concurrently and pool their
//!   states. **Join**: a new member reads nothing sent before its addition unless
//!   history is exported ([`history`]).
//! * **Authenticity**: control and direct messages are signed; application messages carry the
//!   sender's signature inside the ciphertext and are bound to the group id.
//!
//! # Deviations from the paper (checked as above), and why
//!
//! * **Refreshing acks** (above). Trigger 1 is this implementation's addition (neither the
//!   paper's pseudocode nor the prototype refreshes there); trigger 2 is the prototype's
//!   ack-with-update condition, but where the prototype sends a full update (acknowledged by
//!   everyone: n seeds and n acks per refresher), only the refresher's own ratchet moves here,
//!   which is all the removal guarantee needs: every remaining member refreshes itself.
//! * **DGM.** The paper leaves the membership function abstract. [`dgm`] implements the
//!   prototype's "strong remove" rules: an add by a removed device that its remover had not
//!   seen is undone (transitively), a new member inherits its adder's acknowledgements (the
//!   paper's `member-view(new member)` would otherwise contain only its own add), and a device
//!   key is added at most once, so removal is final (re-adding needs a new device key; adding
//!   the same device twice concurrently is processed but not a tested path).
//! * **Add-ack state only to members.** `process-add` in the paper sends the acknowledger's
//!   ratchet state to the added device unconditionally; here only if the add stands in the
//!   acknowledger's view, so a device added by a member removed concurrently never receives a
//!   ratchet state (it would otherwise learn the acknowledger's chain).
//! * **Removed members' ratchets** are deleted and never ratcheted again (the paper keeps
//!   updating them; nobody uses them). Messages from removed members' concurrent operations are
//!   still processed, so every member makes the same ratchet steps for everyone else.
//! * **Secrets are bound to context.** `member_secret = HKDF(seed, label || op id || member)`
//!   and `update_ratchet` uses `HKDF(salt = chain, ikm = input, label || member)`; the paper's
//!   `HKDF(seed, ID)` and `HKDF(ratchet, input)` without op id or label. The paper's empty
//!   initial ratchet is the all-zero salt (what HKDF uses for an empty salt).
//! * **Welcome.** Carries the adder's DGM state (operations with who has seen them) rather than
//!   the raw operation list, plus per-sender sequence numbers, prekeys and the adder's epoch
//!   count, all inside the 2SM ciphertext (the paper sends the history next to it, in clear).
//!   The new member records the add itself.
//! * **2SM** ([`twoparty`]) is the paper's construction (a fresh key pair for the peer's next
//!   message sent inside each message, receiver-announced keys for healing, used keys deleted)
//!   with three changes: the first message goes to the signed prekey in the recipient's member
//!   key (Noise `X`, [`crate::oneshot`]), not a one-time prekey, so its forward secrecy lasts
//!   as long as that prekey is kept ([`Group::prekey_store_mut`] rotates and expires it;
//!   members learn a device's prekey only from its create/add, so rotate only after every peer
//!   has sent its first message); that first message carries a bulk key and the payload
//!   follows under it (a welcome exceeds the one-shot plaintext limit); and at most
//!   [`twoparty::MAX_ANNOUNCED`] announced keys are outstanding (the newest is announced again
//!   instead of growing without bound, which delays healing of that direction by one round
//!   trip when a peer has not replied for that long).
//! * **Messaging layer.** Per-sender epochs named by opaque tags, bounded out-of-order and
//!   skipped-key handling, the last [`ratchet::MAX_EPOCHS`] epochs per sender kept, and the
//!   sender's signature inside the ciphertext; the prototype's ratchet is an in-order hash
//!   chain. History export ([`history`]) is not in the paper.
//!
//! # Not guaranteed
//!
//! * Control messages are signed but not encrypted: the membership (device keys) is visible to
//!   whoever relays them.
//! * Causality is the caller's: a removed device that keeps sending (without processing its own
//!   removal) produces operations that look concurrent with its removal. Its adds are undone
//!   and its updates are harmless, but its removals of others stand, as every concurrent
//!   removal does. The network layer's causal metadata is what can tell such messages apart.
//! * Messages sent in an epoch more than [`ratchet::MAX_EPOCHS`] updates old, or more than
//!   [`ratchet::MAX_SKIP`] ahead, are rejected; the sender's own messages cannot be decrypted by
//!   itself.
//! * Nothing here depends on time; no timestamps are used.

pub mod dgm;
pub mod group;
pub mod history;
pub mod ratchet;
pub mod twoparty;
pub mod verifiers;
pub mod wire;

pub use group::{AppMessage, Decrypted, Group, GroupError, Output, UpdateEvent};
pub use wire::{ControlBody, ControlMessage, DirectKind, DirectMessage, MemberKey, OpId};
