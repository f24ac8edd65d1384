//! A guild replica: the Automerge document, the accepted-change DAG, validation and the fold.
//!
//! See the crate docs for the rules. This module holds the mechanics:
//!
//! * [`Guild::receive`] opens envelopes (signatures verified in batches, [`crate::verify`];
//!   certificates of redemptions pre-verified in batches, [`crate::authz::SigChecks`]), parks
//!   changes whose dependencies are missing (bounded), validates ready ones against their causal
//!   past and only then applies them to the document.
//! * Accepted changes are kept compactly (module `store`): keys interned once per replica,
//!   the fold applies the compact ops exactly as the decoded ones.
//! * Sync messages also ask peers for the missing dependencies of parked changes, which
//!   Automerge itself cannot know about (they are not in the document).
//! * The state of a causal past is a [`GuildView`] folded from exactly the change's ancestors.
//!   One folded view is cached with the head set it was computed for; a change whose
//!   dependencies equal that head set (the common case: linear history, or the next change of
//!   a branch being replayed) is validated in O(its ops) and advances the cache. Otherwise the
//!   ancestors are folded from scratch (O(ancestors)).
//! * Concurrency between two changes is decided on the DAG: `x` is an ancestor of `y` if a
//!   backward walk from `y` reaches it. The walk prunes changes that arrived before `x`, and
//!   stops early at any change that was *full* on arrival (its dependencies covered all heads
//!   known then, so everything that arrived earlier is its ancestor). In linear history every
//!   change is full and the test is O(1).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};

use std::num::NonZeroU64;
use std::sync::Arc;

use automerge::legacy::{Key, ObjectId, OpId, OpType};
use automerge::sync::{Message, State as SyncState, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{Automerge, ChangeHash, ExpandedChange, ObjId, ROOT, ReadDoc, ScalarValue};
use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use securecomm_noise::keys::{DevicePublicKey, DeviceSigningKey, RootSigningKey, Signature};
use thiserror::Error;

use crate::authz::{AuthzError, Effects, SigChecks, authorize_with};
use crate::envelope::{
    EnvelopeError, MAX_CHANGE_BYTES, OpenedChange, SignedChange, actor_for, open_all_with,
    parse_change,
};
use crate::ops::{GuildOp, MAX_OPS_PER_CHANGE};
use crate::schema::{DeviceCert, GuildId, KeyCache, KeySource, UserId};
use crate::store::{Ad, Interner, KnownKeys, NodeFx, Rs, StoredOp};
use crate::verify::{SigItem, verify_each, verify_each_threads};
use crate::view::{ApplyCtx, GuildView, MembershipEvent, membership_events};

/// Most changes parked while waiting for their dependencies.
pub const MAX_PENDING: usize = 65_536;
/// Most envelopes in one sync message.
pub const MAX_SYNC_CHANGES: usize = 1 << 20;
/// Largest encoded Automerge sync message (without changes) we accept.
pub const MAX_SYNC_CONTROL: usize = 1 << 20;
/// Most missing dependencies requested in one sync message.
pub const MAX_SYNC_NEEDS: usize = 1024;
/// Envelopes per window when [`Guild::receive`] pipelines a large batch over two threads (see
/// [`Guild::set_verify_threads`]).
/// Smaller than [`crate::verify::BATCH_CHUNK`]: the pipeline overlaps one window's verification
/// with the previous window's authorization, so its windows are kept short.
pub const PIPELINE_WINDOW: usize = 1024;
/// Largest saved Automerge document we load.
pub const MAX_SAVED_DOC: usize = 1 << 30;

/// Version 2: the signatures are version-2 (ZIP-215) envelope signatures.
const SAVE_VERSION: u8 = 2;
const SYNC_VERSION: u8 = 1;

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RejectReason {
    /// The envelope failed its checks.
    #[error("{0}")]
    Envelope(#[from] EnvelopeError),
    /// The change is not authorized in its causal past.
    #[error("{0}")]
    Unauthorized(#[from] AuthzError),
    /// A change with no dependencies that is not this guild's genesis.
    #[error("expected the genesis change {expected:?}, got another root change")]
    NotGenesis {
        /// The guild id (= genesis hash).
        expected: GuildId,
    },
    /// The author device's changes are not one linear chain (a repeated or skipped sequence
    /// number, or a change that does not descend from the device's previous change).
    #[error("device sequence {got} does not extend its chain at {last}")]
    Chain {
        /// The device's last accepted sequence number.
        last: u64,
        /// The change's sequence number.
        got: u64,
    },
    /// The change's time is negative or earlier than one of its dependencies.
    #[error("change time {got} is before its causal past ({floor})")]
    Time {
        /// Latest time among its dependencies.
        floor: i64,
        /// Its time.
        got: i64,
    },
    /// Depends on a change that was rejected.
    #[error("depends on a rejected change")]
    RejectedDependency,
    /// Too many changes are waiting for dependencies.
    #[error("pending buffer full ({MAX_PENDING})")]
    PendingFull,
    /// Automerge refused the change.
    #[error("document refused the change: {0}")]
    Document(String),
}

/// Errors of local operations (creating changes, sync, load).
#[derive(Debug, Error)]
pub enum GuildError {
    /// The local change would not be authorized.
    #[error("{0}")]
    Rejected(#[from] RejectReason),
    /// Bytes did not decode.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// Automerge failed.
    #[error("automerge: {0}")]
    Automerge(String),
    /// A peer's sync message carried changes outside signed envelopes.
    #[error("sync message carried unsigned changes")]
    UnsignedChanges,
    /// Too many or no ops in a local change.
    #[error("expected 1 to {MAX_OPS_PER_CHANGE} ops, got {0}")]
    OpCount(usize),
}

/// What happened to a batch of received changes.
#[derive(Debug, Default)]
pub struct ReceiveReport {
    /// Hashes accepted into the document.
    pub accepted: Vec<ChangeHash>,
    /// Changes refused, with why; the peer that sent them may be penalised.
    pub rejected: Vec<(Option<ChangeHash>, RejectReason)>,
    /// Changes already known.
    pub duplicates: usize,
    /// Changes parked until their dependencies arrive.
    pub pending: usize,
}

#[derive(Debug)]
struct Node {
    hash: ChangeHash,
    deps: Vec<u32>,
    children: Vec<u32>,
    full: bool,
    /// The authoring device, in [`Guild::keys`].
    author: u32,
    sig: Signature,
    time: u64,
    ops: Box<[StoredOp]>,
    fx: NodeFx,
}

/// One replica of a guild.
#[derive(Debug)]
pub struct Guild {
    id: GuildId,
    doc: Automerge,
    nodes: Vec<Node>,
    index: HashMap<ChangeHash, u32>,
    heads: BTreeSet<u32>,
    /// Per device (index in `keys`): its last sequence number and node.
    actor_last: HashMap<u32, (u64, u32)>,
    /// Every user and device key the accepted changes name, once (see [`crate::store`]).
    keys: Interner,
    pending: HashMap<ChangeHash, OpenedChange>,
    missing: HashMap<ChangeHash, usize>,
    waiting_on: HashMap<ChangeHash, Vec<ChangeHash>>,
    rejected: HashSet<ChangeHash>,
    cache_heads: Vec<u32>,
    cache_view: GuildView,
    last_membership: (BTreeMap<UserId, Vec<DevicePublicKey>>, BTreeSet<UserId>),
    /// Signature checks (remembers verified invite tokens).
    sigs: SigChecks,
    /// Largest Automerge op counter of any accepted change (= the document's).
    max_op: u64,
    /// Threads signature batches may use (1 unless [`Guild::set_verify_threads`]).
    verify_threads: usize,
    /// Envelopes per window of a pipelined receive ([`PIPELINE_WINDOW`]; smaller in tests).
    window: usize,
}

/// What undoes one [`Guild::commit`]: the author's previous chain entry.
type Undo = Option<(u64, u32)>;

/// Changes recorded in the DAG but not yet in the document (see [`Guild::begin_pass`]), and
/// what undoes them.
struct Pass {
    start: usize,
    accepted_before: usize,
    heads_before: BTreeSet<u32>,
    max_op_before: u64,
    undo: Vec<Undo>,
    batch: Vec<automerge::Change>,
}

/// Per-peer sync state.
#[derive(Debug, Default)]
pub struct PeerSync {
    state: SyncState,
}

impl PeerSync {
    /// Fresh state for a peer we have not synced with in this session.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Guild {
    /// An empty replica of guild `id`, to be filled by sync (it accepts only the genesis whose
    /// hash is `id` as its first change).
    pub fn join(id: GuildId) -> Self {
        Self {
            id,
            doc: Automerge::new(),
            nodes: Vec::new(),
            index: HashMap::new(),
            heads: BTreeSet::new(),
            actor_last: HashMap::new(),
            keys: Interner::default(),
            pending: HashMap::new(),
            missing: HashMap::new(),
            waiting_on: HashMap::new(),
            rejected: HashSet::new(),
            cache_heads: Vec::new(),
            cache_view: GuildView::empty(id),
            last_membership: Default::default(),
            sigs: SigChecks::new(),
            max_op: 0,
            verify_threads: 1,
            window: PIPELINE_WINDOW,
        }
    }

    /// Creates a guild owned by `owner`, whose first device is `device`. Returns the replica
    /// and the genesis envelope (which other replicas receive first).
    pub fn create(
        owner: &RootSigningKey,
        device: &DeviceSigningKey,
        name: &str,
        time: u64,
        nonce: [u8; 16],
    ) -> Result<(Self, SignedChange), GuildError> {
        let op = GuildOp::Genesis {
            name: name.to_owned(),
            owner: DeviceCert::issue(owner, device.public()),
            nonce,
        };
        let mut scratch = Automerge::new().with_actor(actor_for(&device.public()));
        let mut tx = scratch.transaction();
        tx.put(ROOT, op.slot(), ScalarValue::Bytes(op.to_bytes()))
            .map_err(|e| GuildError::Automerge(e.to_string()))?;
        let (hash, _) = tx.commit_with(CommitOptions::default().with_time(to_i64(time)));
        let hash = hash.ok_or_else(|| GuildError::Automerge("empty genesis".into()))?;
        let change = scratch
            .get_change_by_hash(&hash)
            .ok_or_else(|| GuildError::Automerge("genesis vanished".into()))?;
        let id = GuildId(hash.0);
        let env = SignedChange::sign(device, id, change.raw_bytes().to_vec());
        let mut g = Self::join(id);
        let report = g.receive(vec![env.clone()]);
        if let Some((_, why)) = report.rejected.into_iter().next() {
            return Err(GuildError::Rejected(why));
        }
        Ok((g, env))
    }

    /// Lets [`Guild::receive`] use up to `threads` threads (at most
    /// [`crate::verify::MAX_VERIFY_THREADS`]; default 1, the calling thread only). With two or
    /// more, a batch of more than [`PIPELINE_WINDOW`] envelopes is pipelined: a worker thread
    /// verifies the signatures of the next window (on `threads - 1` threads) and decodes it
    /// while the calling thread authorizes and applies the current one; a smaller batch has
    /// its signature batches spread over the threads. The verdict on every change is the same
    /// for any thread count; only the wall time changes. The caller decides, because `receive`
    /// runs wherever the caller runs it.
    pub fn set_verify_threads(&mut self, threads: usize) {
        self.verify_threads = threads.clamp(1, crate::verify::MAX_VERIFY_THREADS);
        self.sigs.set_threads(self.verify_threads);
    }

    /// The guild's id.
    pub fn id(&self) -> GuildId {
        self.id
    }

    /// Number of accepted changes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no change (not even the genesis) is accepted yet.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Hashes of the current heads.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.heads
            .iter()
            .filter_map(|i| self.node(*i).map(|n| n.hash))
            .collect()
    }

    /// The underlying Automerge document (read-only).
    pub fn doc(&self) -> &Automerge {
        &self.doc
    }

    /// Every accepted change, as envelopes, in an order where dependencies come first.
    pub fn envelopes(&self) -> Vec<SignedChange> {
        (0..self.nodes.len())
            .filter_map(|i| self.envelope_at(i))
            .collect()
    }

    /// The envelope of an accepted change.
    pub fn envelope(&self, hash: &ChangeHash) -> Option<SignedChange> {
        let i = *self.index.get(hash)?;
        self.envelope_at(i as usize)
    }

    fn envelope_at(&self, i: usize) -> Option<SignedChange> {
        let n = self.nodes.get(i)?;
        let change = self.doc.get_change_by_hash(&n.hash)?;
        Some(SignedChange {
            guild: self.id,
            author: *self.keys.get_device(n.author)?,
            change: change.raw_bytes().to_vec(),
            sig: n.sig,
        })
    }

    fn node(&self, i: u32) -> Option<&Node> {
        self.nodes.get(i as usize)
    }

    // ---- receiving -----------------------------------------------------------------------

    /// Checks and applies received envelopes. Each is opened (signature, actor binding, ops),
    /// parked until its dependencies are known, then validated against its causal past; only
    /// accepted changes reach the document.
    pub fn receive(&mut self, envelopes: Vec<SignedChange>) -> ReceiveReport {
        let mut report = ReceiveReport::default();
        // The rejected set only short-circuits re-delivery; forgetting it is safe.
        if self.rejected.len() > MAX_PENDING {
            self.rejected.clear();
        }
        if self.verify_threads >= 2 && envelopes.len() > self.window && !self.sigs.is_trusted() {
            self.receive_pipelined(envelopes, &mut report);
        } else {
            // Signatures are verified in batches (crate::verify): first the envelopes', then the
            // certificates of the redemptions among them. Each result equals single
            // verification.
            let mut cache = KeyCache::new();
            let opened_all = open_all_with(
                envelopes,
                &self.id,
                &mut KnownKeys {
                    known: &self.keys,
                    cache: &mut cache,
                },
                self.verify_threads,
            );
            self.sigs.preverify(
                opened_all
                    .iter()
                    .flatten()
                    .map(|o| (&o.envelope.author, o.ops.as_slice())),
            );
            let mut ready = Vec::new();
            for opened in opened_all {
                self.admit(opened, &mut ready, &mut report);
            }
            self.drain(ready, &mut report);
        }
        self.sigs.end_batch();
        report.pending = self.pending.len();
        report
    }

    /// [`Guild::receive`] of a large batch on two threads. Window by window (of
    /// [`PIPELINE_WINDOW`] envelopes), this thread parses the changes and decodes their ops and
    /// prepares the signature items (envelopes, and the certificates authorization will check),
    /// and a worker thread verifies them in batches; meanwhile this thread authorizes the
    /// previous window, whose verdicts are in. The queues hold at most two windows each way.
    /// Accepted changes go to the document in one Automerge call at the end, as on one thread.
    ///
    /// Each change gets exactly the verdict [`SignedChange::open`] and authorization give it:
    /// a wrong guild, then a bad signature, then a parse or ops error, whichever comes first in
    /// that order, although here the change is parsed before its signature verdict is known.
    /// Certificates are verified only for changes whose envelope signature passed. Nothing
    /// reaches the DAG or the document before both verdicts are in. If the worker cannot be
    /// started or stops, this thread verifies the rest itself.
    fn receive_pipelined(&mut self, envelopes: Vec<SignedChange>, report: &mut ReceiveReport) {
        let window = self.window.max(1);
        let threads = self.verify_threads.saturating_sub(1).max(1);
        let mut rest = envelopes.into_iter().peekable();
        let mut cache = KeyCache::new();
        let mut pass = self.begin_pass(report);
        std::thread::scope(|scope| {
            let (to_worker, worker_in) = std::sync::mpsc::sync_channel::<Arc<SigJob>>(2);
            let (worker_out, from_worker) = std::sync::mpsc::sync_channel::<SigVerdict>(2);
            let worker = std::thread::Builder::new()
                .name("crdt-verify".into())
                .spawn_scoped(scope, move || {
                    while let Ok(job) = worker_in.recv() {
                        if worker_out.send(job.run(threads)).is_err() {
                            break;
                        }
                    }
                })
                .ok();
            let mut worker_ok = worker.is_some();
            let mut in_flight: std::collections::VecDeque<(Arc<SigJob>, Window)> =
                std::collections::VecDeque::new();
            loop {
                // Prepare the next window while the worker verifies the ones in flight.
                if rest.peek().is_some() {
                    let envs: Vec<SignedChange> = rest.by_ref().take(window).collect();
                    let (job, win) = self.prepare_window(envs, &mut cache);
                    let job = Arc::new(job);
                    if worker_ok && to_worker.send(Arc::clone(&job)).is_err() {
                        worker_ok = false;
                    }
                    in_flight.push_back((job, win));
                    // Keep up to two windows in flight before authorizing.
                    if in_flight.len() < 2 && rest.peek().is_some() {
                        continue;
                    }
                }
                let Some((job, win)) = in_flight.pop_front() else {
                    break;
                };
                let verdict = match worker_ok.then(|| from_worker.recv()) {
                    Some(Ok(v)) => v,
                    _ => {
                        worker_ok = false;
                        job.run(self.verify_threads)
                    }
                };
                self.take_window(win, &verdict, report, &mut pass);
            }
            drop(to_worker);
            if let Some(h) = worker {
                // A panic there is not propagated: its windows were verified here.
                let _ = h.join();
            }
        });
        self.finish_pass(pass, report);
    }

    /// The first half of a pipelined window: each envelope parsed and its ops decoded, and its
    /// signature and the certificate authorization will check as items to verify.
    fn prepare_window(&self, envs: Vec<SignedChange>, cache: &mut KeyCache) -> (SigJob, Window) {
        let mut job = SigJob::default();
        let mut entries = Vec::with_capacity(envs.len());
        let mut keys = KnownKeys {
            known: &self.keys,
            cache,
        };
        for envelope in envs {
            if envelope.guild != self.id {
                let got = envelope.guild;
                entries.push((
                    None,
                    Err(EnvelopeError::WrongGuild {
                        expected: self.id,
                        got,
                    }),
                ));
                continue;
            }
            let slot = job.envelopes.len();
            job.envelopes.push(envelope.sig_item());
            let opened = envelope.open_unverified(&mut keys);
            if let Ok(o) = &opened
                && let Some(cert) = crate::authz::checked_cert(&o.envelope.author, &o.ops)
                && !self.sigs.remembers_cert(cert)
            {
                job.certs.push((slot, cert.sig_item(), cert.cache_key()));
            }
            entries.push((Some(slot), opened));
        }
        (job, Window { entries })
    }

    /// The second half of a pipelined window: the verdicts applied in `open`'s order, then
    /// every surviving change admitted and the ready ones authorized and recorded.
    fn take_window(
        &mut self,
        win: Window,
        verdict: &SigVerdict,
        report: &mut ReceiveReport,
        pass: &mut Pass,
    ) {
        self.sigs.remember_certs(
            verdict
                .certs
                .iter()
                .filter(|(_, ok)| *ok)
                .map(|(key, _)| *key)
                .collect(),
        );
        let mut ready = Vec::new();
        for (slot, opened) in win.entries {
            let opened = match slot {
                Some(i) if !verdict.envelopes.get(i).copied().unwrap_or(false) => {
                    Err(EnvelopeError::BadSignature)
                }
                _ => opened,
            };
            self.admit(opened, &mut ready, report);
        }
        self.validate_ready(ready, report, pass);
    }

    /// Takes one opened (or refused) envelope: refused, duplicate, parked until its
    /// dependencies are known, or pushed onto `ready`.
    fn admit(
        &mut self,
        opened: Result<OpenedChange, EnvelopeError>,
        ready: &mut Vec<ChangeHash>,
        report: &mut ReceiveReport,
    ) {
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                report.rejected.push((None, e.into()));
                return;
            }
        };
        let hash = opened.hash();
        if self.index.contains_key(&hash) || self.pending.contains_key(&hash) {
            report.duplicates += 1;
            return;
        }
        let deps = opened.change.deps();
        if self.rejected.contains(&hash) || deps.iter().any(|d| self.rejected.contains(d)) {
            self.rejected.insert(hash);
            report
                .rejected
                .push((Some(hash), RejectReason::RejectedDependency));
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            report
                .rejected
                .push((Some(hash), RejectReason::PendingFull));
            return;
        }
        let missing: Vec<ChangeHash> = deps
            .iter()
            .filter(|d| !self.index.contains_key(d))
            .copied()
            .collect();
        if missing.is_empty() {
            ready.push(hash);
        } else {
            for d in &missing {
                self.waiting_on.entry(*d).or_default().push(hash);
            }
        }
        self.missing.insert(hash, missing.len());
        self.pending.insert(hash, opened);
    }

    /// Processes ready changes; each acceptance may make parked dependents ready, each
    /// rejection rejects them.
    fn drain(&mut self, ready: Vec<ChangeHash>, report: &mut ReceiveReport) {
        let mut pass = self.begin_pass(report);
        self.validate_ready(ready, report, &mut pass);
        self.finish_pass(pass, report);
    }

    /// Starts recording accepted changes for one Automerge batch.
    ///
    /// Automerge applies a batch far faster than the same changes one by one (and adding
    /// actors to a document that already holds ops costs a pass over its columns per actor),
    /// so accepted changes are recorded in the DAG as they are validated and applied to the
    /// document together by [`Guild::finish_pass`]. If Automerge refuses the batch, the DAG is
    /// rolled back to where it was and the batch replayed one change at a time, each applied to
    /// the document before it is recorded: the DAG and the document never disagree.
    fn begin_pass(&self, report: &ReceiveReport) -> Pass {
        Pass {
            start: self.nodes.len(),
            accepted_before: report.accepted.len(),
            heads_before: self.heads.clone(),
            max_op_before: self.max_op,
            undo: Vec::new(),
            batch: Vec::new(),
        }
    }

    /// Validates and records (in the DAG) the ready changes and every parked change they make
    /// ready; rejections reject their parked dependents.
    fn validate_ready(
        &mut self,
        mut ready: Vec<ChangeHash>,
        report: &mut ReceiveReport,
        pass: &mut Pass,
    ) {
        while let Some(h) = ready.pop() {
            self.missing.remove(&h);
            let Some(o) = self.pending.remove(&h) else {
                continue;
            };
            let outcome = self.validate(&o).map(|checked| self.commit(o, checked));
            let dependents = self.waiting_on.remove(&h).unwrap_or_default();
            match outcome {
                Ok((change, prev)) => {
                    pass.batch.push(change);
                    pass.undo.push(prev);
                    report.accepted.push(h);
                    for d in dependents {
                        if let Some(m) = self.missing.get_mut(&d) {
                            *m = m.saturating_sub(1);
                            if *m == 0 {
                                ready.push(d);
                            }
                        }
                    }
                }
                Err(e) => self.reject_with_dependents(h, e, dependents, report),
            }
        }
    }

    /// Applies the changes recorded since [`Guild::begin_pass`] to the document in one call.
    fn finish_pass(&mut self, pass: Pass, report: &mut ReceiveReport) {
        if !pass.batch.is_empty()
            && let Err(e) = self.doc.apply_changes(pass.batch.iter().cloned())
        {
            // Every change was validated and its dependencies are present, so Automerge should
            // not refuse (its refusals, a repeated sequence number or author, are excluded by
            // the chain rule and by `ops_of`); if it does anyway, undo and replay.
            let replay = self.rollback(
                pass.start,
                pass.heads_before,
                pass.max_op_before,
                pass.undo,
                pass.batch,
            );
            report.accepted.truncate(pass.accepted_before);
            self.replay_one_by_one(replay, &e.to_string(), report);
        }
        // Give back the memory of a large receive once nothing waits.
        if self.pending.is_empty() && self.pending.capacity() > 64 {
            self.pending = HashMap::new();
            self.missing = HashMap::new();
            self.waiting_on = HashMap::new();
        }
    }

    fn reject_with_dependents(
        &mut self,
        h: ChangeHash,
        e: RejectReason,
        dependents: Vec<ChangeHash>,
        report: &mut ReceiveReport,
    ) {
        self.rejected.insert(h);
        report.rejected.push((Some(h), e));
        let mut stack = dependents;
        while let Some(d) = stack.pop() {
            if self.pending.remove(&d).is_some() {
                self.missing.remove(&d);
                self.rejected.insert(d);
                report
                    .rejected
                    .push((Some(d), RejectReason::RejectedDependency));
                stack.extend(self.waiting_on.remove(&d).unwrap_or_default());
            }
        }
    }

    /// Forgets the nodes from `start` on (recorded by the batch Automerge refused) and returns
    /// them as opened changes, in the order they were accepted.
    fn rollback(
        &mut self,
        start: usize,
        heads_before: BTreeSet<u32>,
        max_op_before: u64,
        undo: Vec<Undo>,
        batch: Vec<automerge::Change>,
    ) -> Vec<(ChangeHash, Result<OpenedChange, RejectReason>)> {
        let removed: Vec<Node> = self.nodes.drain(start..).collect();
        let start32 = u32::try_from(start).unwrap_or(u32::MAX);
        for n in &mut self.nodes {
            n.children.retain(|c| *c < start32);
        }
        for (n, prev) in removed.iter().zip(undo).rev() {
            self.index.remove(&n.hash);
            match prev {
                Some(p) => self.actor_last.insert(n.author, p),
                None => self.actor_last.remove(&n.author),
            };
        }
        self.heads = heads_before;
        self.max_op = max_op_before;
        // The cache may hold a view that includes removed changes.
        self.cache_heads = vec![u32::MAX];
        // The nodes keep compact ops: decode the changes again (they decoded before).
        let mut keys = KeyCache::new();
        removed
            .into_iter()
            .zip(batch)
            .map(|(n, change)| {
                let opened = match self.keys.get_device(n.author) {
                    Some(author) => SignedChange {
                        guild: self.id,
                        author: *author,
                        change: change.raw_bytes().to_vec(),
                        sig: n.sig,
                    }
                    .open_parsed_trusted(&self.id, change, &mut keys)
                    .map_err(RejectReason::from),
                    None => Err(RejectReason::Document("unknown author".into())),
                };
                (n.hash, opened)
            })
            .collect()
    }

    /// The slow path after Automerge refused a batch: each change is re-validated, applied to
    /// the document alone, and recorded only if the document took it.
    fn replay_one_by_one(
        &mut self,
        changes: Vec<(ChangeHash, Result<OpenedChange, RejectReason>)>,
        batch_error: &str,
        report: &mut ReceiveReport,
    ) {
        for (h, o) in changes {
            let o = match o {
                Ok(o) => o,
                Err(e) => {
                    self.rejected.insert(h);
                    report.rejected.push((Some(h), e));
                    continue;
                }
            };
            let outcome = if o.change.deps().iter().any(|d| !self.index.contains_key(d)) {
                Err(RejectReason::RejectedDependency)
            } else {
                self.validate(&o).and_then(|checked| {
                    self.doc
                        .apply_changes(std::iter::once(o.change.clone()))
                        .map_err(|e| RejectReason::Document(format!("{batch_error}; {e}")))?;
                    self.commit(o, checked);
                    Ok(())
                })
            };
            match outcome {
                Ok(()) => report.accepted.push(h),
                Err(e) => {
                    self.rejected.insert(h);
                    report.rejected.push((Some(h), e));
                }
            }
        }
    }

    fn validate(&mut self, o: &OpenedChange) -> Result<Checked, RejectReason> {
        let change = &o.change;
        let deps: Vec<u32> = {
            let mut d: Vec<u32> = change
                .deps()
                .iter()
                .filter_map(|h| self.index.get(h).copied())
                .collect();
            d.sort_unstable();
            d.dedup();
            d
        };
        let genesis = deps.is_empty();
        if genesis && o.hash().0 != self.id.0 {
            return Err(RejectReason::NotGenesis { expected: self.id });
        }
        // The device's changes form one chain: seq n must descend from seq n-1.
        let seq = change.seq();
        let last = self
            .keys
            .device_index(&o.envelope.author)
            .and_then(|d| self.actor_last.get(&d));
        match last {
            None if seq == 1 => {}
            Some((last, prev)) if *last + 1 == seq && self.reaches(*prev, &deps) => {}
            other => {
                return Err(RejectReason::Chain {
                    last: other.map_or(0, |(l, _)| *l),
                    got: seq,
                });
            }
        }
        let time = change.timestamp();
        let floor = deps
            .iter()
            .filter_map(|d| self.node(*d))
            .map(|n| to_i64(n.time))
            .max()
            .unwrap_or(0);
        if time < floor || time < 0 {
            return Err(RejectReason::Time { floor, got: time });
        }
        let time = u64::try_from(time).unwrap_or(0);
        self.prepare_cache(&deps);
        let fx = authorize_with(
            &self.cache_view,
            &o.envelope.author,
            time,
            &o.ops,
            genesis,
            &mut self.sigs,
        )?;
        Ok(Checked { deps, time, fx })
    }

    /// Makes the cache hold the view of exactly the ancestors of `deps`.
    fn prepare_cache(&mut self, deps: &[u32]) -> &GuildView {
        if self.cache_heads != deps {
            self.cache_view = if deps.is_empty() {
                GuildView::empty(self.id)
            } else {
                self.fold(Some(deps))
            };
            self.cache_heads = deps.to_vec();
        }
        &self.cache_view
    }

    /// Records a validated change in the DAG (not in the document). Returns the Automerge change
    /// and what undoes the record.
    fn commit(&mut self, o: OpenedChange, checked: Checked) -> (automerge::Change, Undo) {
        let hash = o.hash();
        let idx = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        let full = self.heads.iter().all(|h| checked.deps.contains(h));
        for d in &checked.deps {
            if let Some(n) = self.nodes.get_mut(*d as usize) {
                n.children.push(idx);
            }
            self.heads.remove(d);
        }
        self.heads.insert(idx);
        let author = self.keys.device(&o.envelope.author);
        let prev = self.actor_last.insert(author, (o.change.seq(), idx));
        self.index.insert(hash, idx);
        self.max_op = self.max_op.max(o.change.max_op());
        // The cache held the view of this change's causal past; the change is the last in the
        // canonical order of its past plus itself and concurrent with nothing there, so it
        // applies directly.
        let advance = self.cache_heads == checked.deps;
        if advance && let Some(author) = checked.fx.author {
            let ctx = ApplyCtx {
                author,
                time: checked.time,
            };
            for op in &o.ops {
                self.cache_view.apply(op, ctx);
            }
        }
        if advance {
            self.cache_heads = vec![idx];
        }
        let node = Node {
            hash,
            deps: checked.deps,
            children: Vec::new(),
            full,
            author,
            sig: o.envelope.sig,
            time: checked.time,
            fx: NodeFx::new(&checked.fx, &mut self.keys),
            ops: o
                .ops
                .into_iter()
                .map(|op| StoredOp::new(op, &mut self.keys))
                .collect(),
        };
        self.nodes.push(node);
        (o.change, prev)
    }

    // ---- local changes -------------------------------------------------------------------

    /// Authors a change made of `ops` with `device` at `time` (seconds since the Unix epoch),
    /// after checking locally that every replica will accept it. Returns the envelope to send.
    pub fn change(
        &mut self,
        device: &DeviceSigningKey,
        time: u64,
        ops: Vec<GuildOp>,
    ) -> Result<SignedChange, GuildError> {
        if ops.is_empty() || ops.len() > MAX_OPS_PER_CHANGE {
            return Err(GuildError::OpCount(ops.len()));
        }
        let author = device.public();
        let deps: Vec<u32> = self.heads.iter().copied().collect();
        let floor = deps
            .iter()
            .filter_map(|d| self.node(*d))
            .map(|n| n.time)
            .max()
            .unwrap_or(0);
        if time < floor {
            return Err(RejectReason::Time {
                floor: to_i64(floor),
                got: to_i64(time),
            }
            .into());
        }
        self.prepare_cache(&deps);
        authorize_with(&self.cache_view, &author, time, &ops, false, &mut self.sigs)
            .map_err(RejectReason::from)?;
        let mut seen = BTreeSet::new();
        for op in &ops {
            if !seen.insert(op.slot()) {
                return Err(RejectReason::Envelope(EnvelopeError::Ops(
                    crate::ops::OpsError::DuplicateSlot(op.slot()),
                ))
                .into());
            }
        }
        // Nothing touches the document or the DAG until the change has passed exactly the checks
        // every other replica will make (envelope size, signature, actor, ops, authorization).
        let change = self.build_change(&author, time, &ops)?;
        if change.raw_bytes().len() > MAX_CHANGE_BYTES {
            return Err(GuildError::Rejected(RejectReason::Envelope(
                EnvelopeError::Decode(DecodeError::TooLong {
                    what: "change",
                    max: MAX_CHANGE_BYTES,
                    got: change.raw_bytes().len(),
                }),
            )));
        }
        let env = SignedChange::sign(device, self.id, change.raw_bytes().to_vec());
        let opened = env
            .clone()
            .open(&self.id)
            .map_err(|e| GuildError::Rejected(e.into()))?;
        let checked = self.validate(&opened)?;
        self.doc
            .apply_changes(std::iter::once(opened.change.clone()))
            .map_err(|e| GuildError::Rejected(RejectReason::Document(e.to_string())))?;
        self.commit(opened, checked);
        Ok(env)
    }

    /// The Automerge change a transaction on the current heads would produce for `ops` by
    /// `author` at `time`, built without touching the document: one put per op on the root
    /// map, overwriting whatever the slot holds now.
    fn build_change(
        &self,
        author: &DevicePublicKey,
        time: u64,
        ops: &[GuildOp],
    ) -> Result<automerge::Change, GuildError> {
        let seq = self
            .keys
            .device_index(author)
            .and_then(|d| self.actor_last.get(&d))
            .map_or(1, |(last, _)| last + 1);
        let start_op = NonZeroU64::new(self.max_op.saturating_add(1))
            .ok_or_else(|| GuildError::Automerge("op counter overflow".into()))?;
        let mut deps: Vec<ChangeHash> = self.heads().into_iter().collect();
        deps.sort_unstable();
        let mut operations = Vec::with_capacity(ops.len());
        for op in ops {
            let slot = op.slot();
            let pred: Vec<OpId> = self
                .doc
                .get_all(ROOT, slot.as_str())
                .map_err(|e| GuildError::Automerge(e.to_string()))?
                .into_iter()
                .filter_map(|(_, id)| match id {
                    ObjId::Id(counter, actor, _) => Some(OpId(counter, actor)),
                    ObjId::Root => None,
                })
                .collect();
            operations.push(automerge::legacy::Op {
                action: OpType::Put(ScalarValue::Bytes(op.to_bytes())),
                obj: ObjectId::Root,
                key: Key::Map(slot.into()),
                pred: pred.into(),
                insert: false,
            });
        }
        let expanded = ExpandedChange {
            operations,
            actor_id: actor_for(author),
            hash: None,
            seq,
            start_op,
            time: to_i64(time),
            message: None,
            deps,
            extra_bytes: Vec::new(),
            author: None,
        };
        std::panic::catch_unwind(move || automerge::Change::from(expanded))
            .map_err(|_| GuildError::Automerge("change encoder panicked".into()))
    }

    /// Builds and signs a change of `ops` on the current heads **without** authorizing it and
    /// without recording it here: for adversarial tests and simulations of misbehaving peers.
    #[doc(hidden)]
    pub fn forge_change(
        &self,
        device: &DeviceSigningKey,
        time: u64,
        ops: &[GuildOp],
    ) -> Result<SignedChange, GuildError> {
        let change = self.build_change(&device.public(), time, ops)?;
        Ok(SignedChange::sign(
            device,
            self.id,
            change.raw_bytes().to_vec(),
        ))
    }

    // ---- resolved view -------------------------------------------------------------------

    /// The resolved view of every accepted change.
    pub fn view(&mut self) -> &GuildView {
        let heads: Vec<u32> = self.heads.iter().copied().collect();
        self.prepare_cache(&heads)
    }

    /// Recomputes the resolved view from scratch (the cache is ignored), for benchmarks and
    /// tests of determinism.
    pub fn resolve_from_scratch(&self) -> GuildView {
        if self.nodes.is_empty() {
            return GuildView::empty(self.id);
        }
        self.fold(None)
    }

    /// Membership changes since the last call, for the key-agreement layer.
    pub fn take_membership_events(&mut self) -> Vec<MembershipEvent> {
        let now = self.view().membership();
        let events = membership_events(&self.last_membership, &now);
        self.last_membership = now;
        events
    }

    /// Folds the ancestors of `deps` (or everything) in canonical order with the conflict rules.
    fn fold(&self, deps: Option<&[u32]>) -> GuildView {
        let n = self.nodes.len();
        let in_set: Vec<bool> = match deps {
            None => vec![true; n],
            Some(d) => {
                let mut s = vec![false; n];
                let mut stack: Vec<u32> = d.to_vec();
                while let Some(i) = stack.pop() {
                    if let Some(slot) = s.get_mut(i as usize)
                        && !*slot
                    {
                        *slot = true;
                        if let Some(node) = self.node(i) {
                            stack.extend_from_slice(&node.deps);
                        }
                    }
                }
                s
            }
        };
        let order = self.canonical_order(&in_set);
        let idx = RestrictionIndex::build(&self.nodes, &order);
        let mut view = GuildView::empty(self.id);
        for i in order {
            let Some(node) = self.node(i) else { continue };
            if !self.is_void(i, node, &view, &idx) {
                apply_node(&mut view, node, &self.keys);
            }
        }
        view
    }

    /// Kahn's algorithm over the set, always taking the ready change with the smallest hash.
    fn canonical_order(&self, in_set: &[bool]) -> Vec<u32> {
        let mut indeg: Vec<u32> = vec![0; self.nodes.len()];
        let mut heap = BinaryHeap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if in_set.get(i).copied().unwrap_or(false) {
                let d = u32::try_from(node.deps.len()).unwrap_or(u32::MAX);
                if let Some(x) = indeg.get_mut(i) {
                    *x = d;
                }
                if d == 0 {
                    heap.push(Reverse((node.hash, i as u32)));
                }
            }
        }
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(Reverse((_, i))) = heap.pop() {
            order.push(i);
            let Some(node) = self.node(i) else { continue };
            for c in &node.children {
                if !in_set.get(*c as usize).copied().unwrap_or(false) {
                    continue;
                }
                if let Some(x) = indeg.get_mut(*c as usize) {
                    *x = x.saturating_sub(1);
                    if *x == 0
                        && let Some(cn) = self.node(*c)
                    {
                        heap.push(Reverse((cn.hash, *c)));
                    }
                }
            }
        }
        order
    }

    /// The conflict rules (crate docs, "Conflict rules").
    fn is_void(&self, i: u32, a: &Node, view: &GuildView, idx: &RestrictionIndex) -> bool {
        let Some(au) = a.fx.author else { return false };
        // Rule 1: an action concurrent with its author's removal or demotion is void.
        let held: Vec<crate::schema::RoleId> = self
            .keys
            .get_user(au)
            .and_then(|u| view.member(u))
            .map(|m| m.roles.iter().copied().collect())
            .unwrap_or_default();
        let mut candidates: Vec<u32> = idx.by_user.get(&au).cloned().unwrap_or_default();
        if !a.fx.author_is_owner {
            for r in &held {
                if let Some(v) = idx.by_role.get(r) {
                    candidates.extend_from_slice(v);
                }
            }
        }
        for r in candidates {
            if r == i {
                continue;
            }
            let Some(rn) = self.node(r) else { continue };
            let hits_author = rn.fx.restricts.iter().any(|x| match x {
                Rs::Remove(u) | Rs::RevokeRole(u, _) | Rs::Ownership(u) => *u == au,
                Rs::ReduceRole(role) => !a.fx.author_is_owner && held.contains(role),
                Rs::RevokeInvite(_) => false,
            });
            if !hits_author || !self.concurrent(i, r) {
                continue;
            }
            // Mutual removals remove both: removing exactly the one who removes you stands.
            if a.fx.only_restricts.is_some() && a.fx.only_restricts == rn.fx.author {
                continue;
            }
            // Racing ownership transfers: the smaller change hash wins.
            if a.fx.transfers_ownership && rn.fx.transfers_ownership && a.hash < rn.hash {
                continue;
            }
            return true;
        }
        // Rule 2: a (re-)addition racing the matching removal loses, unless the owner adds and
        // a non-owner removes.
        for add in a.fx.adds.iter() {
            let list = match add {
                Ad::Member(v) | Ad::Role(v, _) => idx.by_user.get(v),
                Ad::Redeem(code) => idx.by_invite.get(code),
            };
            for r in list.into_iter().flatten() {
                let Some(rn) = self.node(*r) else { continue };
                if *r == i
                    || !rn.fx.restricts.iter().any(|x| undoes(add, x))
                    || !self.concurrent(i, *r)
                {
                    continue;
                }
                if a.fx.author_is_owner && !rn.fx.author_is_owner {
                    continue;
                }
                return true;
            }
        }
        // Rule 3: the owner outranks all: a non-owner's removal racing the owner's (re-)addition
        // of the same member or role is void.
        if !a.fx.author_is_owner {
            for x in a.fx.restricts.iter() {
                let (Rs::Remove(v) | Rs::RevokeRole(v, _)) = x else {
                    continue;
                };
                for o in idx.owner_adds.get(v).into_iter().flatten() {
                    let Some(on) = self.node(*o) else { continue };
                    if *o != i
                        && on.fx.adds.iter().any(|ad| undoes(ad, x))
                        && self.concurrent(i, *o)
                    {
                        return true;
                    }
                }
            }
        }
        false
    }

    fn concurrent(&self, a: u32, b: u32) -> bool {
        a != b && !self.is_ancestor(a, b) && !self.is_ancestor(b, a)
    }

    /// Whether `x` is a proper ancestor of `y`.
    fn is_ancestor(&self, x: u32, y: u32) -> bool {
        if x >= y {
            return false; // ancestors always arrive first
        }
        let Some(yn) = self.node(y) else { return false };
        if yn.full {
            return true;
        }
        let mut seen = HashSet::new();
        let mut stack: Vec<u32> = yn.deps.clone();
        while let Some(z) = stack.pop() {
            if z == x {
                return true;
            }
            if z < x || !seen.insert(z) {
                continue;
            }
            let Some(zn) = self.node(z) else { continue };
            if zn.full {
                return true; // z > x arrived later and covers everything before it
            }
            stack.extend_from_slice(&zn.deps);
        }
        false
    }

    /// Whether `x` is `deps` or an ancestor of one of them.
    fn reaches(&self, x: u32, deps: &[u32]) -> bool {
        deps.iter().any(|d| *d == x || self.is_ancestor(x, *d))
    }

    // ---- persistence -----------------------------------------------------------------------

    /// Saves the document and the signatures, to be sealed by the caller.
    pub fn save(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(SAVE_VERSION);
        self.id.encode(&mut w);
        w.bytes32(&self.doc.save());
        w.u32(u32::try_from(self.nodes.len()).unwrap_or(u32::MAX));
        for n in &self.nodes {
            w.put(&n.hash.0);
            n.sig.encode(&mut w);
        }
        w.into_bytes()
    }

    /// Loads a saved replica, re-checking every signature and re-validating every change. Use
    /// this for bytes from anywhere but this replica's own sealed storage.
    pub fn load(bytes: &[u8]) -> Result<Self, GuildError> {
        Self::load_inner(bytes, SigChecks::new())
    }

    /// Loads a replica that **this node saved itself** into its encrypted, authenticated store,
    /// re-validating every change (DAG, chains, times, authorization, conflict rules) but
    /// skipping the Ed25519 checks (change envelopes, device certificates, invite tokens).
    ///
    /// Why this is safe: [`Guild::save`] only ever contains changes this replica accepted after
    /// full verification, with the signatures it verified, and the node keeps those bytes in
    /// its SQLCipher database (encrypted and authenticated with a key from the sealed profile),
    /// so nobody without that key can have altered them: re-verifying the signatures would
    /// re-establish a fact the storage already guarantees. Everything that is not a signature
    /// is still checked, so a replica built this way is the same as one built by [`Guild::load`].
    /// Never use it for bytes received from a peer, a backup of unknown origin or any other
    /// source that is not this node's own sealed storage: use [`Guild::load`].
    pub fn load_trusted(bytes: &[u8]) -> Result<Self, GuildError> {
        Self::load_inner(bytes, SigChecks::trusted())
    }

    fn load_inner(bytes: &[u8], checks: SigChecks) -> Result<Self, GuildError> {
        let mut r = Reader::new(bytes);
        r.version("saved guild", SAVE_VERSION)?;
        let id = GuildId::decode(&mut r)?;
        let doc_bytes = r.bytes32("saved document", MAX_SAVED_DOC)?;
        let count = r.u32()? as usize;
        if count > r.remaining() / 96 {
            return Err(DecodeError::TooLong {
                what: "saved signatures",
                max: r.remaining() / 96,
                got: count,
            }
            .into());
        }
        let mut sigs = HashMap::with_capacity(count);
        for _ in 0..count {
            let h = ChangeHash(r.array()?);
            sigs.insert(h, Signature::decode(&mut r)?);
        }
        r.finish()?;
        let doc = std::panic::catch_unwind(|| Automerge::load(doc_bytes))
            .map_err(|_| GuildError::Automerge("document parser panicked".into()))?
            .map_err(|e| GuildError::Automerge(e.to_string()))?;
        let mut g = Self::join(id);
        g.sigs = checks;
        // get_changes lists dependencies first.
        let mut keys = KeyCache::new();
        let mut envs = Vec::new();
        for change in doc.get_changes(&[]) {
            let change: automerge::Change = change;
            let sig = sigs
                .get(&change.hash())
                .copied()
                .ok_or(GuildError::UnsignedChanges)?;
            let author = {
                let mut r = Reader::new(change.actor_id().to_bytes());
                let k = keys
                    .device(&mut r)
                    .map_err(|_| DecodeError::Invalid("actor id"))?;
                r.finish().map_err(|_| DecodeError::Invalid("actor id"))?;
                k
            };
            let env = SignedChange {
                guild: id,
                author,
                change: change.raw_bytes().to_vec(),
                sig,
            };
            envs.push((env, change));
        }
        // Signatures in batches (crate::verify), then every other check change by change.
        if !g.sigs.is_trusted() {
            let items: Vec<_> = envs.iter().map(|(e, _)| e.sig_item()).collect();
            if verify_each(&items).contains(&false) {
                return Err(GuildError::Rejected(EnvelopeError::BadSignature.into()));
            }
        }
        let opened = envs
            .into_iter()
            .map(|(env, change)| env.open_parsed_trusted(&id, change, &mut keys))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| GuildError::Rejected(e.into()))?;
        g.sigs.preverify(
            opened
                .iter()
                .map(|o| (&o.envelope.author, o.ops.as_slice())),
        );
        for o in opened {
            let checked = g.validate(&o)?;
            g.commit(o, checked);
        }
        g.doc = doc;
        // From here on the replica takes network input: verify every signature again.
        g.sigs = SigChecks::new();
        Ok(g)
    }

    // ---- sync ------------------------------------------------------------------------------

    /// The next sync message for `peer`, or `None` if there is nothing to say. The Automerge
    /// sync protocol decides what to send; every change goes out in its signed envelope.
    pub fn generate_sync_message(&mut self, peer: &mut PeerSync) -> Option<Vec<u8>> {
        // Never let Automerge ship a whole document: we need per-change envelopes.
        peer.state.their_capabilities = None;
        let mut msg = self.doc.generate_sync_message(&mut peer.state)?;
        // Changes parked for missing dependencies are not in the document, so Automerge does not
        // know to ask for those dependencies, and a false positive in the peer's view of our
        // Bloom filter would leave them parked for ever: ask for them explicitly. (Peers ignore
        // needs they cannot serve.)
        for h in self.waiting_on.keys().take(MAX_SYNC_NEEDS) {
            if !self.index.contains_key(h) {
                msg.need.push(*h);
            }
        }
        // The encoding requires them sorted and distinct.
        msg.need.sort_unstable();
        msg.need.dedup();
        let mut envs = Vec::new();
        for chunk in msg.changes.iter() {
            if let Ok(c) = parse_change(chunk)
                && let Some(e) = self.envelope(&c.hash())
            {
                envs.push(e);
            }
        }
        msg.changes = automerge::sync::ChunkList::empty();
        let mut w = Writer::new();
        w.u8(SYNC_VERSION);
        w.bytes32(&msg.encode());
        w.u32(u32::try_from(envs.len()).unwrap_or(u32::MAX));
        for e in &envs {
            let b = e.to_bytes();
            w.bytes32(&b);
        }
        Some(w.into_bytes())
    }

    /// Receives a sync message from `peer`: every change is opened and validated like any
    /// received change; then Automerge's sync bookkeeping is updated.
    pub fn receive_sync_message(
        &mut self,
        peer: &mut PeerSync,
        bytes: &[u8],
    ) -> Result<ReceiveReport, GuildError> {
        let (control, envs) = decode_sync(bytes)?;
        let msg = std::panic::catch_unwind(|| Message::decode(&control))
            .map_err(|_| GuildError::Automerge("sync message parser panicked".into()))?
            .map_err(|e| GuildError::Automerge(e.to_string()))?;
        if !msg.changes.is_empty() {
            return Err(GuildError::UnsignedChanges);
        }
        let report = self.receive(envs);
        self.doc
            .receive_sync_message(&mut peer.state, msg)
            .map_err(|e| GuildError::Automerge(e.to_string()))?;
        Ok(report)
    }
}

/// The signatures of one pipelined window, for the worker.
#[derive(Default)]
struct SigJob {
    /// Each envelope's signature.
    envelopes: Vec<SigItem>,
    /// Certificates: the envelope they depend on, the signature, and the cache key.
    certs: Vec<(usize, SigItem, [u8; 128])>,
}

/// What [`SigJob::run`] found.
struct SigVerdict {
    envelopes: Vec<bool>,
    /// Each certificate's cache key and whether it verified.
    certs: Vec<([u8; 128], bool)>,
}

impl SigJob {
    /// Verifies the envelopes in batches, then (in batches) the certificates of the envelopes
    /// that passed; certificates of envelopes that failed are not verified (reported false).
    fn run(&self, threads: usize) -> SigVerdict {
        let envelopes = verify_each_threads(&self.envelopes, threads);
        let wanted: Vec<&(usize, SigItem, [u8; 128])> = self
            .certs
            .iter()
            .filter(|(slot, _, _)| envelopes.get(*slot).copied().unwrap_or(false))
            .collect();
        let items: Vec<SigItem> = wanted.iter().map(|(_, item, _)| item.clone()).collect();
        let certs = wanted
            .iter()
            .zip(verify_each_threads(&items, threads))
            .map(|((_, _, key), ok)| (*key, ok))
            .collect();
        SigVerdict { envelopes, certs }
    }
}

/// The opened envelopes of one pipelined window, waiting for their signature verdicts: each
/// with its slot in [`SigJob::envelopes`] (none if refused before that).
struct Window {
    entries: Vec<(Option<usize>, Result<OpenedChange, EnvelopeError>)>,
}

/// Decodes a sync message into the Automerge control part and the envelopes.
pub fn decode_sync(bytes: &[u8]) -> Result<(Vec<u8>, Vec<SignedChange>), DecodeError> {
    let mut r = Reader::new(bytes);
    r.version("sync message", SYNC_VERSION)?;
    let control = r.bytes32("sync control", MAX_SYNC_CONTROL)?.to_vec();
    let n = r.u32()? as usize;
    if n > MAX_SYNC_CHANGES || n > r.remaining() / 4 {
        return Err(DecodeError::TooLong {
            what: "sync changes",
            max: MAX_SYNC_CHANGES.min(r.remaining() / 4),
            got: n,
        });
    }
    let mut envs = Vec::with_capacity(n);
    for _ in 0..n {
        let b = r.bytes32("sync envelope", crate::envelope::MAX_CHANGE_BYTES + 256)?;
        envs.push(SignedChange::from_bytes(b)?);
    }
    r.finish()?;
    Ok((control, envs))
}

#[derive(Debug)]
struct Checked {
    deps: Vec<u32>,
    time: u64,
    fx: Effects,
}

#[derive(Default)]
struct RestrictionIndex {
    by_user: HashMap<u32, Vec<u32>>,
    by_role: HashMap<crate::schema::RoleId, Vec<u32>>,
    by_invite: HashMap<crate::schema::InviteCode, Vec<u32>>,
    owner_adds: HashMap<u32, Vec<u32>>,
}

impl RestrictionIndex {
    fn build(nodes: &[Node], order: &[u32]) -> Self {
        let mut idx = Self::default();
        for i in order {
            let Some(n) = nodes.get(*i as usize) else {
                continue;
            };
            for r in n.fx.restricts.iter() {
                match r {
                    Rs::Remove(u) | Rs::RevokeRole(u, _) | Rs::Ownership(u) => {
                        idx.by_user.entry(*u).or_default().push(*i)
                    }
                    Rs::ReduceRole(role) => idx.by_role.entry(*role).or_default().push(*i),
                    Rs::RevokeInvite(c) => idx.by_invite.entry(*c).or_default().push(*i),
                }
            }
            if n.fx.author_is_owner {
                for a in n.fx.adds.iter() {
                    if let Ad::Member(u) | Ad::Role(u, _) = a {
                        idx.owner_adds.entry(*u).or_default().push(*i);
                    }
                }
            }
        }
        for v in idx
            .by_user
            .values_mut()
            .chain(idx.by_role.values_mut())
            .chain(idx.by_invite.values_mut())
            .chain(idx.owner_adds.values_mut())
        {
            v.dedup();
        }
        idx
    }
}

/// Whether removal `r` undoes addition `add` (same member, same role, same invite).
fn undoes(add: &Ad, r: &Rs) -> bool {
    match (add, r) {
        (Ad::Member(v) | Ad::Role(v, _), Rs::Remove(u)) => u == v,
        (Ad::Role(v, role), Rs::RevokeRole(u, r)) => u == v && r == role,
        (Ad::Redeem(c), Rs::RevokeInvite(d)) => c == d,
        _ => false,
    }
}

fn apply_node(view: &mut GuildView, node: &Node, keys: &Interner) {
    let Some(author) = node.fx.author.and_then(|a| keys.get_user(a)) else {
        return;
    };
    let ctx = ApplyCtx {
        author: *author,
        time: node.time,
    };
    for op in node.ops.iter() {
        op.apply(view, keys, ctx);
    }
}

fn to_i64(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_automerge_refuses_is_rolled_back_and_replayed() {
        let root = RootSigningKey::from_seed(&[1; 32]);
        let dev = DeviceSigningKey::from_seed(&[2; 32]);
        let dev2 = DeviceSigningKey::from_seed(&[3; 32]);
        let (mut g, genesis) = Guild::create(&root, &dev, "g", 1000, [0; 16]).unwrap();
        let e1 = g
            .change(
                &dev,
                1001,
                vec![GuildOp::AddDevice(DeviceCert::issue(&root, dev2.public()))],
            )
            .unwrap();
        let mut side = Guild::join(g.id());
        assert!(
            side.receive(vec![genesis.clone(), e1.clone()])
                .rejected
                .is_empty()
        );
        let e2 = g
            .change(&dev, 1002, vec![GuildOp::SetName("b".into())])
            .unwrap();
        let e3 = g
            .change(&dev, 1003, vec![GuildOp::SetName("c".into())])
            .unwrap();
        let e4 = side
            .change(
                &dev2,
                1002,
                vec![GuildOp::SetNickname(root.public(), "nick".into())],
            )
            .unwrap();
        let mut r = Guild::join(g.id());
        assert!(r.receive(vec![genesis, e1]).rejected.is_empty());
        // Behind the DAG's back, r's document gets another change with e2's actor and
        // sequence number, so Automerge refuses any batch holding e2.
        let intruder = r
            .forge_change(&dev, 1002, &[GuildOp::SetName("x".into())])
            .unwrap();
        r.doc
            .apply_changes(std::iter::once(parse_change(&intruder.change).unwrap()))
            .unwrap();
        let (h2, h3, h4) = (
            parse_change(&e2.change).unwrap().hash(),
            parse_change(&e3.change).unwrap().hash(),
            parse_change(&e4.change).unwrap().hash(),
        );
        let rep = r.receive(vec![e2, e3, e4]);
        assert_eq!(rep.accepted, vec![h4]);
        assert_eq!(rep.rejected.len(), 2, "{:?}", rep.rejected);
        for (h, why) in &rep.rejected {
            match why {
                RejectReason::Document(_) => assert_eq!(*h, Some(h2)),
                RejectReason::RejectedDependency => assert_eq!(*h, Some(h3)),
                other => panic!("unexpected {other:?}"),
            }
        }
        // Every change in the DAG is in the document, the DAG holds none of the refused ones,
        // and the cached view is the fold of what was accepted.
        assert_eq!(r.len(), 3);
        assert_eq!(r.envelopes().len(), 3);
        assert!(r.envelope(&h2).is_none() && r.envelope(&h3).is_none());
        let scratch = r.resolve_from_scratch();
        assert_eq!(r.view(), &scratch);
        assert_eq!(r.view().name(), "g");
        assert_eq!(
            r.view().member(&root.public()).unwrap().nickname,
            "nick".to_string()
        );
        // The device chain was restored: dev's next change after e1 is accepted (seq 3 again
        // from the DAG's point of view is what it expects).
        let d = r.keys.device_index(&dev.public()).unwrap();
        assert_eq!(r.actor_last.get(&d).map(|x| x.0), Some(2));
    }

    use crate::invite::InviteToken;
    use crate::schema::{Invite, InviteCode, RoleId};

    /// Owner, an open invite, `n` joiners, and role grants to them: the envelopes in order.
    fn history(n: u8) -> (Guild, Vec<SignedChange>, InviteToken) {
        let root = RootSigningKey::from_seed(&[1; 32]);
        let dev = DeviceSigningKey::from_seed(&[2; 32]);
        let (mut g, genesis) = Guild::create(&root, &dev, "g", 1000, [0; 16]).unwrap();
        let mut envs = vec![genesis];
        let (code, inv) = (
            InviteCode([5; 16]),
            Invite {
                creator: root.public(),
                expires_at: 0,
                max_uses: 0,
            },
        );
        envs.push(
            g.change(&dev, 1001, vec![GuildOp::CreateInvite(code, inv)])
                .unwrap(),
        );
        envs.push(
            g.change(
                &dev,
                1001,
                vec![GuildOp::PutRole(
                    RoleId(1),
                    crate::schema::Role {
                        name: "r".into(),
                        colour: 0,
                        position: 1,
                        permissions: crate::perms::Permissions::NONE,
                        mentionable: false,
                        hoisted: false,
                    },
                )],
            )
            .unwrap(),
        );
        let token = InviteToken::issue(&dev, g.id(), code, inv);
        for i in 0..n {
            let r = RootSigningKey::from_seed(&[100 + i; 32]);
            let d = DeviceSigningKey::from_seed(&[200 - i; 32]);
            let op = GuildOp::Redeem {
                token: token.clone(),
                cert: DeviceCert::issue(&r, d.public()),
                nickname: format!("m{i}"),
            };
            envs.push(g.change(&d, 1003, vec![op]).unwrap());
            if i % 3 == 0 {
                envs.push(
                    g.change(&dev, 1003, vec![GuildOp::GrantRole(r.public(), RoleId(1))])
                        .unwrap(),
                );
            }
        }
        (g, envs, token)
    }

    fn outcome(g: &mut Guild, batch: Vec<SignedChange>) -> (BTreeSet<ChangeHash>, Vec<String>) {
        let rep = g.receive(batch);
        let mut rejected: Vec<String> = rep.rejected.iter().map(|r| format!("{r:?}")).collect();
        rejected.sort();
        (rep.accepted.into_iter().collect(), rejected)
    }

    #[test]
    fn pipelined_receive_gives_every_change_the_single_thread_verdict() {
        let (mut origin, envs, token) = history(14);
        let mut batch = envs.clone();
        // A bad envelope signature mid-batch (on a copy of a genuine redemption that also
        // arrives intact later): rejected alone, and its certificate is not remembered.
        let mut flipped = envs[9].clone();
        flipped.sig.0[3] ^= 0x10;
        batch.insert(6, flipped);
        // A forged certificate mid-batch: the victim's certificate signature claimed for
        // another device.
        let victim = RootSigningKey::from_seed(&[90; 32]);
        let vdev = DeviceSigningKey::from_seed(&[91; 32]);
        let thief = DeviceSigningKey::from_seed(&[92; 32]);
        let real = DeviceCert::issue(&victim, vdev.public());
        let forged = origin
            .forge_change(
                &thief,
                1004,
                &[GuildOp::Redeem {
                    token: token.clone(),
                    cert: DeviceCert {
                        user: victim.public(),
                        device: thief.public(),
                        sig: real.sig,
                    },
                    nickname: "x".into(),
                }],
            )
            .unwrap();
        batch.insert(13, forged.clone());
        // An envelope of another guild, and a change delivered a window before its
        // dependency.
        let mut other = envs[4].clone();
        other.guild.0[0] ^= 1;
        batch.insert(2, other);
        let late = batch.remove(3);
        batch.push(late);
        let early = batch.remove(20);
        batch.insert(1, early);

        let mut one = Guild::join(origin.id());
        let (acc1, rej1) = outcome(&mut one, batch.clone());
        for window in [1, 3, 4, 7] {
            let mut two = Guild::join(origin.id());
            two.set_verify_threads(2);
            two.window = window;
            let (acc2, rej2) = outcome(&mut two, batch.clone());
            assert_eq!(acc1, acc2, "window {window}");
            assert_eq!(rej1, rej2, "window {window}");
            assert_eq!(two.view(), one.view());
            assert_eq!(two.doc.get_heads(), one.doc.get_heads());
            assert_eq!(two.len(), two.doc.get_changes(&[]).len());
        }
        // Every genuine change accepted, exactly the three bad ones refused.
        assert_eq!(acc1.len(), envs.len());
        assert_eq!(rej1.len(), 3, "{rej1:?}");
        assert!(rej1.iter().any(|r| r.contains("BadSignature")));
        assert!(rej1.iter().any(|r| r.contains("WrongGuild")));
        assert!(rej1.iter().any(|r| r.contains("certified")));
        assert_eq!(one.view(), origin.view());
        assert_eq!(one.view().user_of_device(&thief.public()), None);
    }

    #[test]
    fn a_certificate_behind_a_bad_envelope_signature_is_not_remembered() {
        let (origin, envs, _) = history(4);
        let mut two = Guild::join(origin.id());
        two.set_verify_threads(2);
        two.window = 2;
        let mut batch = envs.clone();
        let mut bad = envs[5].clone();
        bad.sig.0[40] ^= 1;
        batch.insert(4, bad.clone());
        let opened = bad.clone().open_unverified(&mut KeyCache::new()).unwrap();
        let cert = *crate::authz::checked_cert(&opened.envelope.author, &opened.ops).unwrap();
        let (mut job, _) = two.prepare_window(vec![bad], &mut KeyCache::new());
        assert_eq!(job.certs.len(), 1);
        let verdict = job.run(1);
        assert_eq!(verdict.envelopes, vec![false]);
        assert!(
            verdict.certs.is_empty(),
            "certificate verified behind a bad signature"
        );
        job.certs.clear();
        let rep = two.receive(batch);
        assert_eq!(rep.accepted.len(), envs.len());
        assert_eq!(rep.rejected.len(), 1);
        // The receive call's certificate memory is gone afterwards.
        assert!(!two.sigs.remembers_cert(&cert));
    }
}
