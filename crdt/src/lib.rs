//! Guild state: an Automerge document of signed, authorized, typed changes, and the resolved
//! view every honest replica computes from it. No I/O, no clock (time is passed in), no global
//! RNG.
//!
//! # What is on the wire
//!
//! Every Automerge change is wrapped in a [`envelope::SignedChange`]: version (2), guild id,
//! author device key, raw change bytes, and the device's Ed25519 signature under
//! `"SecureComm/crdt/change v1"` over all of that. Version 2 verifies this signature, and the
//! device certificates and invite tokens inside ops, under the ZIP-215 rules ([`verify`]:
//! cofactored equation, canonical `S`, keys never of small order), so that signatures can be
//! verified in batches whose verdict always equals one-by-one verification; the rule is bound
//! to the signed version byte (see [`envelope`]). The change's Automerge **actor id is the author device's public
//! key** (32 bytes), so a change names exactly one device and nobody can write under another
//! device's actor. A change's content is a list of typed guild operations ([`ops::GuildOp`]):
//! each is one Automerge `put` on the root map whose key is the op's *slot* (the path it touches,
//! e.g. `role/7` or `member/<user>/role/7`) and whose value is the op's versioned encoding. A
//! change that is anything else is refused whole. Sync messages ([`Guild::generate_sync_message`])
//! are Automerge's sync protocol with its change payload replaced by envelopes.
//!
//! The guild id is the hash of the genesis change, so a replica joining by id accepts exactly one
//! root change; every other change must descend from it.
//!
//! # What a replica stores
//!
//! The Automerge document of accepted changes only (nothing touches it before its signature, actor
//! binding, op decoding and authorization pass), the signature of each change, a DAG index of
//! accepted changes with their ops and conflict-relevant effects ([`authz::Effects`]) in a
//! compact form (every user and device key stored once, role grants and redemptions reduced to
//! what the fold applies), a bounded buffer of changes waiting for dependencies, and one cached
//! folded view.
//! The DAG and the document always hold the same changes: a local change is validated like a
//! received one before either is touched, and a received batch that Automerge refuses is rolled
//! back out of the DAG and replayed one change at a time. [`Guild::load`] re-verifies a saved
//! replica completely; [`Guild::load_trusted`] skips only the signature checks and is for the
//! node's own encrypted, authenticated storage, never for bytes from elsewhere.
//!
//! # Authorization against the causal past
//!
//! A change is accepted only if its author was allowed to make **all** of it in the resolved
//! view of its causal past (the view folded from its dependencies and their ancestors, exactly
//! as defined below, so the definition is recursive and the same everywhere). The judgement is by
//! what the ops touch: `MANAGE_CHANNELS` lets you edit channels, not roles; `MANAGE_ROLES` lets
//! you create, edit, grant and revoke roles strictly below your own rank and never add bits you
//! lack; kicks and bans need the bit and a strictly higher rank than the target; only the owner
//! transfers ownership; nobody acts on the owner. Permissions are Discord's ([`perms`]). The
//! decision is a pure function of the change and its ancestors, so once made it never changes
//! and every replica makes it the same way. Rejected changes never enter the document, and the
//! peer that sent them is reported ([`ReceiveReport::rejected`]).
//!
//! # The resolved view
//!
//! [`GuildView`] = fold of the accepted changes in the **canonical order**: a topological order
//! of the DAG (Kahn's algorithm) that, among the changes ready at each step, takes the one with
//! the smallest change hash. Each change is applied whole unless the conflict rules void it
//! (whole). Ops whose target vanished concurrently are no-ops. Nothing else enters the fold
//! (not arrival order, not local time), so the view is a pure function of the set of accepted
//! changes; the tests check this by delivering the same changes in every order and by comparing
//! against a from-scratch fold.
//!
//! # Conflict rules
//!
//! For two concurrent changes (neither is an ancestor of the other):
//!
//! 1. **An action concurrent with its author's removal or demotion is void.** Removal is a kick
//!    or ban of the author; demotion is revoking one of its roles, lowering the permissions or
//!    position of (or deleting) a role it holds, or ownership being handed away from it.
//! 2. **Mutual removals remove both.** Exception to rule 1: a change consisting only of removals
//!    or demotions of exactly the member who concurrently removes/demotes its author stands.
//!    (Under the rank rule this can only happen when the two judged different causal pasts,
//!    e.g. one was promoted in a branch the other had not seen.)
//! 3. **A re-add racing a removal loses.** A redemption, unban or role grant concurrent with
//!    the removal/ban of the same user (or the revocation of the same role, or of the invite)
//!    is void.
//! 4. **The owner outranks all.** The owner's actions are never void by rule 1 through a role
//!    change (its rights do not come from roles). An addition by the owner beats a concurrent
//!    removal by a non-owner: the addition stands and that removal is void.
//! 5. **Ties by change hash.** Everything else concurrent is last-writer-wins in the canonical
//!    order, whose ties are broken by change hash; of concurrent ownership transfers the one with
//!    the smallest hash wins. Redemptions beyond an invite's `max_uses` in canonical order are
//!    void.
//!
//! Rule 1 consults the *validity* (not the effectiveness) of the concurrent restriction, so the
//! rules need no fixpoint; this errs towards voiding.
//!
//! # Limits on backdating
//!
//! A removed admin could invent changes that claim an old causal past (dependencies from before
//! its removal). This is limited by:
//!
//! * **Per-device chains.** A device's changes must form one linear chain: the change with
//!   Automerge sequence number `n` must descend from the device's change `n-1`. A device can
//!   therefore never claim a causal past older than its own last change (a second change on old
//!   dependencies repeats a sequence number or skips its predecessor and is rejected), and a
//!   device cannot fork its history to show different replicas different pasts.
//! * **Causal authorization.** Anything that descends from the removal is judged in a state where
//!   the author is gone, and is rejected.
//! * **Rule 1.** Anything concurrent with the removal is void, except the one mutual-removal
//!   case (which cannot target the owner). So a removed member's backdated changes can at most
//!   remove the member who removed it, and only if it outranked that member in its past.
//! * **Time.** A change's time may not be earlier than any dependency's; invite expiry is judged
//!   against the redemption's own time, so an invitee cannot both use a fresh causal past and
//!   claim an early time.
//!
//! What remains (documented, not solved here): a member that has been silent since before its
//! removal can still author changes on its last seen state; they are void, but they are
//! accepted into the document (they are valid in their causal past) and cost storage.
//! Requiring periodic acknowledgements would close this at the cost of liveness.
//!
//! # Membership events
//!
//! [`Guild::take_membership_events`] diffs the resolved membership (members, devices, bans)
//! against the last call and reports added, removed, banned and device-changed members, which
//! the node turns into DCGKA add/remove operations. Because rules can void earlier changes
//! retroactively, events come from the view, not from individual changes.
//!
//! # Cost
//!
//! Signatures dominate: a join carries two (its envelope, by the joining device; its device
//! certificate, by the user's root key). [`Guild::receive`] verifies all envelope signatures of a
//! call in batches of up to [`verify::BATCH_CHUNK`], then the certificates of the redemptions
//! among them, each batch costing about a quarter of one-by-one verification; a batch that
//! fails is re-checked one by one, so the verdict per change never depends on the batching.
//! Keys are decoded (a point decompression each) once per replica or per received batch.
//!
//! Measured on the benchmark guild (10,000 joins of the 10,217 changes; `benches/stages.rs`,
//! `STAGES_SPLIT` for CPU time and `STAGES_CG` under callgrind), per change, one thread: plain
//! Automerge (parse and `apply_changes`) about 21-28 µs; the signature work of a join alone
//! about 31 µs (two batch verifications of about 11.7 µs, each mostly the decompression of `R`
//! and the multiscalar multiplication, the joining user's root key decompressed once, 4.9 µs,
//! and the SHA-512 of both signed messages, 3 µs). Everything else validation adds (op
//! decoding, authorization, the DAG) is about 10 % of the instructions. So on one thread a
//! validated receive of joins cannot come within 2x of plain Automerge with these signatures:
//! the signature work alone is more than plain Automerge's whole cost. With two threads
//! ([`Guild::set_verify_threads`]) the signature batches run beside the rest.
//!
//! Validating a change whose dependencies are the current heads (or the previous change of a
//! branch being replayed) is O(its ops); a change on another head set costs a fold of its
//! ancestors. Resolving the view after concurrent changes arrive costs one fold, O(changes ·
//! log changes) plus the conflict checks, which are O(1) per pair in linear history.

pub mod authz;
pub mod envelope;
pub mod guild;
pub mod invite;
pub mod ops;
pub mod perms;
pub mod schema;
mod store;
pub mod verify;
pub mod view;

pub use guild::{Guild, GuildError, PeerSync, ReceiveReport, RejectReason};
pub use view::{GuildView, MembershipEvent};
