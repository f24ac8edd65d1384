//! [`SyncPeer`]: connects causal logs and the outbox to the network.
//!
//! The caller says which groups exist and which peers belong to each ([`SyncPeer::set_members`]);
//! the guild layer will drive this from the guild document. A member is a libp2p `PeerId`, which
//! for SecureComm is the device's Ed25519 key, so the same set also says whose entries are
//! accepted: an entry whose author is not a member (or this device) is dropped.
//!
//! What happens when:
//! * **a member connects** (and every [`SyncConfig::anti_entropy`]): pull from it with our
//!   frontier until it says nothing more is missing, then push our entries it has not
//!   acknowledged. Both sides do this, so a reconnect exchanges everything in both directions.
//! * **a local insert**: the entry is delivered locally and pushed to every connected member.
//! * **a push arrives**: entries are taken in (the causal log verifies, parks and releases), the
//!   answer is our frontier (the ack). If something stays parked, we pull from the sender.
//! * **a pull arrives**: its frontier is recorded as an ack; the answer is one page of what the
//!   requester lacks, in causal order.
//! * every [`SyncConfig::retransmit`]: own entries a connected member has not acknowledged are
//!   pushed again.
//! * the outbox task publishes due gossip publications ([`SyncPeer::publish`]).
//!
//! Deliveries (remote and local entries alike) reach the application on a bounded channel in
//! delivery order. An optional hook runs inside the delivering database transaction, for
//! applications that need their own writes to commit atomically with the delivered flag.
//!
//! Concurrency: all database work happens under one lock and never across an `await`; at most
//! one pull and one push run per (group, peer), and a request made while one runs is folded into
//! a rerun. [`SyncPeer::stop`] aborts every task and refuses new ones; the tasks hold the
//! driver, so call it before dropping the last handle, or the driver keeps running.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use libp2p::PeerId;
use rusqlite::Transaction;
use securecomm_noise::codec::{Decode, Encode};
use securecomm_noise::keys::DeviceSigningKey;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use super::outbox::Outbox;
use super::wire::{Author, Entry, GroupId, MAX_BATCH, SyncRequest, SyncResponse};
use super::{CausalLog, Received, SyncError};
use crate::net::{Client, Event, NetError};
use crate::store::Db;

/// Most pull rounds in one anti-entropy exchange (each at most one page).
pub const MAX_PULL_ROUNDS: usize = 64;
/// Most groups one node syncs.
pub const MAX_GROUPS: usize = 1024;
/// Most members per group.
pub const MAX_MEMBERS: usize = super::MAX_AUTHORS;

/// Timing and buffer sizes.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// How often to run anti-entropy with every connected member.
    pub anti_entropy: Duration,
    /// How often to push unacknowledged own entries again.
    pub retransmit: Duration,
    /// Longest wait between outbox flushes.
    pub outbox_poll: Duration,
    /// Deliveries buffered for a slow application (back-pressure beyond).
    pub delivery_buffer: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            anti_entropy: Duration::from_secs(30),
            retransmit: Duration::from_secs(5),
            outbox_poll: Duration::from_secs(1),
            delivery_buffer: 1024,
        }
    }
}

/// An entry delivered at this node.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its group.
    pub group: GroupId,
    /// The entry.
    pub entry: Entry,
    /// Written by this device.
    pub local: bool,
}

/// The application hook run inside the delivering transaction (see [`super::Apply`]).
pub type ApplyHook =
    Box<dyn FnMut(&Transaction<'_>, GroupId, &Entry) -> Result<(), SyncError> + Send>;

struct Group {
    log: CausalLog,
    members: HashSet<PeerId>,
    authors: HashSet<Author>,
}

struct State {
    db: Db,
    groups: HashMap<GroupId, Group>,
    connected: HashSet<PeerId>,
    apply: Option<ApplyHook>,
    running: HashSet<(Job, GroupId, PeerId)>,
    again: HashSet<(Job, GroupId, PeerId)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Job {
    Pull,
    Push,
}

struct Inner {
    client: Client,
    signer: DeviceSigningKey,
    me: Author,
    config: SyncConfig,
    state: Mutex<State>,
    /// Serialises "deliver, then hand to the application" so the channel sees delivery order.
    order: tokio::sync::Mutex<()>,
    deliveries: mpsc::Sender<Delivery>,
    tasks: Mutex<JoinSet<()>>,
    stopped: AtomicBool,
    outbox_wake: Notify,
}

/// The network driver for causal logs and the outbox. Cheap to clone.
#[derive(Clone)]
pub struct SyncPeer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SyncPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncPeer")
            .field("me", &self.inner.me)
            .finish_non_exhaustive()
    }
}

/// The device key inside an Ed25519 PeerId.
pub fn author_of(peer: &PeerId) -> Option<Author> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(Author(pk.try_into_ed25519().ok()?.to_bytes()))
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, SyncError> {
    m.lock().map_err(|_| SyncError::Poisoned)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl SyncPeer {
    /// Starts the driver on `client` with `db`, writing as `signer` (this device). Returns the
    /// handle and the delivery stream.
    pub fn start(
        client: Client,
        db: Db,
        signer: DeviceSigningKey,
        config: SyncConfig,
        apply: Option<ApplyHook>,
    ) -> (Self, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(config.delivery_buffer.max(1));
        let me = Author::from(&signer.public());
        let inner = Arc::new(Inner {
            client,
            signer,
            me,
            config,
            state: Mutex::new(State {
                db,
                groups: HashMap::new(),
                connected: HashSet::new(),
                apply,
                running: HashSet::new(),
                again: HashSet::new(),
            }),
            order: tokio::sync::Mutex::new(()),
            deliveries: tx,
            tasks: Mutex::new(JoinSet::new()),
            stopped: AtomicBool::new(false),
            outbox_wake: Notify::new(),
        });
        let peer = Self { inner };
        // Subscribe before anything can connect, then learn who is already connected.
        let events = peer.inner.client.events();
        peer.spawn(run_events(peer.inner.clone(), events));
        peer.spawn(run_outbox(peer.inner.clone()));
        (peer, rx)
    }

    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        spawn_on(&self.inner, fut);
    }

    /// Joins `group` (opening its log) or updates its members.
    pub fn set_members(&self, group: GroupId, members: HashSet<PeerId>) -> Result<(), SyncError> {
        let authors = members.clone();
        self.set_members_with_authors(group, members, authors)
    }

    /// Like [`SyncPeer::set_members`], with a wider set of accepted entry authors: `members`
    /// are the peers this node syncs with, `authors` (which should include them) the devices
    /// whose entries it accepts. A guild passes every device that was ever a member as authors,
    /// so entries written before a member left still reach replicas that have not seen them.
    pub fn set_members_with_authors(
        &self,
        group: GroupId,
        members: HashSet<PeerId>,
        authors: HashSet<PeerId>,
    ) -> Result<(), SyncError> {
        if members.len() > MAX_MEMBERS || authors.len() > MAX_MEMBERS {
            return Err(SyncError::TooManyAuthors { max: MAX_MEMBERS });
        }
        let authors = authors
            .iter()
            .chain(members.iter())
            .filter_map(author_of)
            .collect();
        let connected: Vec<PeerId> = {
            let mut st = lock(&self.inner.state)?;
            let st = &mut *st;
            match st.groups.get_mut(&group) {
                Some(g) => {
                    g.members = members;
                    g.authors = authors;
                }
                None => {
                    if st.groups.len() >= MAX_GROUPS {
                        return Err(SyncError::TooManyAuthors { max: MAX_GROUPS });
                    }
                    let log = CausalLog::open(&st.db, group, self.inner.me)?;
                    st.groups.insert(
                        group,
                        Group {
                            log,
                            members,
                            authors,
                        },
                    );
                }
            }
            let g = st.groups.get(&group);
            st.connected
                .iter()
                .filter(|p| g.is_some_and(|g| g.members.contains(p)))
                .copied()
                .collect()
        };
        for p in connected {
            schedule(&self.inner, Job::Pull, group, p);
            schedule(&self.inner, Job::Push, group, p);
        }
        Ok(())
    }

    /// Writes a local entry to `group`, delivers it locally and pushes it to connected members.
    pub async fn insert(&self, group: GroupId, payload: Vec<u8>) -> Result<Entry, SyncError> {
        let _order = self.inner.order.lock().await;
        let (entry, targets) = {
            let mut st = lock(&self.inner.state)?;
            let st = &mut *st;
            let g = st
                .groups
                .get_mut(&group)
                .ok_or(SyncError::UnknownGroup(group))?;
            let entry = match st.apply.as_mut() {
                Some(hook) => g.log.insert_local_with(
                    &mut st.db,
                    &self.inner.signer,
                    payload,
                    &mut |tx, e| hook(tx, group, e),
                )?,
                None => g
                    .log
                    .insert_local(&mut st.db, &self.inner.signer, payload)?,
            };
            let targets: Vec<PeerId> = st
                .connected
                .iter()
                .filter(|p| g.members.contains(p))
                .copied()
                .collect();
            (entry, targets)
        };
        let _ = self
            .inner
            .deliveries
            .send(Delivery {
                group,
                entry: entry.clone(),
                local: true,
            })
            .await;
        drop(_order);
        for p in targets {
            schedule(&self.inner, Job::Push, group, p);
        }
        Ok(entry)
    }

    /// The delivered frontier of `group`.
    pub fn frontier(&self, group: GroupId) -> Result<super::Frontier, SyncError> {
        let st = lock(&self.inner.state)?;
        st.groups
            .get(&group)
            .map(|g| g.log.frontier().clone())
            .ok_or(SyncError::UnknownGroup(group))
    }

    /// The highest own sequence number `peer` acknowledged in `group`.
    pub fn acked(&self, group: GroupId, peer: &PeerId) -> Result<u64, SyncError> {
        let st = lock(&self.inner.state)?;
        let g = st
            .groups
            .get(&group)
            .ok_or(SyncError::UnknownGroup(group))?;
        match author_of(peer) {
            Some(a) => g.log.acked(&st.db, a),
            None => Ok(0),
        }
    }

    /// Queues a gossip publication in the durable outbox; it is published once gossipsub
    /// accepts it.
    pub fn publish(&self, topic: &str, data: &[u8]) -> Result<i64, SyncError> {
        let id = {
            let st = lock(&self.inner.state)?;
            Outbox::enqueue(&st.db, topic, data, now_ms())?
        };
        self.inner.outbox_wake.notify_one();
        Ok(id)
    }

    /// Runs `f` on the database under the driver's lock, so the caller's transaction is
    /// serialised with deliveries (and their application hook). `f` must not call back into
    /// this `SyncPeer`: the lock is not re-entrant.
    pub fn with_db<R>(&self, f: impl FnOnce(&mut Db) -> R) -> Result<R, SyncError> {
        let mut st = lock(&self.inner.state)?;
        Ok(f(&mut st.db))
    }

    /// Wakes the outbox task, after publications were queued with
    /// [`Outbox::enqueue_in`](super::Outbox::enqueue_in) inside [`SyncPeer::with_db`].
    pub fn wake_outbox(&self) {
        self.inner.outbox_wake.notify_one();
    }

    /// Publications still waiting in the outbox.
    pub fn outbox_len(&self) -> Result<usize, SyncError> {
        let st = lock(&self.inner.state)?;
        Outbox::len(&st.db)
    }

    /// Stops every task of this driver. The database closes when the last handle is dropped.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.abort_all();
        }
    }
}

fn spawn_on(inner: &Arc<Inner>, fut: impl std::future::Future<Output = ()> + Send + 'static) {
    if inner.stopped.load(Ordering::SeqCst) {
        return;
    }
    if let Ok(mut t) = inner.tasks.lock() {
        // Reap finished tasks so the set only holds live ones.
        while t.try_join_next().is_some() {}
        t.spawn(fut);
    }
}

/// Runs `job` for (group, peer) unless it is running, in which case it reruns once it ends.
fn schedule(inner: &Arc<Inner>, job: Job, group: GroupId, peer: PeerId) {
    let key = (job, group, peer);
    {
        let Ok(mut st) = inner.state.lock() else {
            return;
        };
        if !st.running.insert(key) {
            st.again.insert(key);
            return;
        }
    }
    let inner2 = inner.clone();
    spawn_on(inner, async move {
        loop {
            let r = match job {
                Job::Pull => pull(&inner2, group, peer).await,
                Job::Push => push(&inner2, group, peer).await,
            };
            if let Err(e) = r {
                tracing::debug!(%peer, ?job, error = %e, "sync exchange failed; will retry");
            }
            let Ok(mut st) = inner2.state.lock() else {
                return;
            };
            if !st.again.remove(&key) {
                st.running.remove(&key);
                return;
            }
        }
    });
}

/// Takes in entries from `peer` and hands deliveries to the application in order. Returns the
/// frontier afterwards and whether anything is still parked.
async fn take_in(
    inner: &Arc<Inner>,
    group: GroupId,
    entries: Vec<Entry>,
) -> Result<(super::Frontier, bool), SyncError> {
    let _order = inner.order.lock().await;
    let (received, frontier, parked): (Received, _, _) = {
        let mut st = lock(&inner.state)?;
        let st = &mut *st;
        let g = st
            .groups
            .get_mut(&group)
            .ok_or(SyncError::UnknownGroup(group))?;
        let me = inner.me;
        let (ok, foreign): (Vec<Entry>, Vec<Entry>) = entries
            .into_iter()
            .partition(|e| e.author() == me || g.authors.contains(&e.author()));
        if !foreign.is_empty() {
            tracing::debug!(count = foreign.len(), "dropping entries by non-members");
        }
        let r = match st.apply.as_mut() {
            Some(hook) => g
                .log
                .receive_batch(&mut st.db, ok, &mut |tx, e| hook(tx, group, e))?,
            None => g.log.receive_batch(&mut st.db, ok, &mut |_, _| Ok(()))?,
        };
        for (id, err) in &r.rejected {
            tracing::debug!(?id, error = %err, "entry refused");
        }
        let parked = g.log.parked().next().is_some();
        (r, g.log.frontier().clone(), parked)
    };
    for entry in received.delivered {
        let _ = inner
            .deliveries
            .send(Delivery {
                group,
                entry,
                local: false,
            })
            .await;
    }
    Ok((frontier, parked))
}

async fn pull(inner: &Arc<Inner>, group: GroupId, peer: PeerId) -> Result<(), SyncError> {
    for _ in 0..MAX_PULL_ROUNDS {
        let frontier = {
            let st = lock(&inner.state)?;
            let g = st
                .groups
                .get(&group)
                .ok_or(SyncError::UnknownGroup(group))?;
            if !g.members.contains(&peer) {
                return Ok(());
            }
            g.log.frontier().clone()
        };
        let req = SyncRequest::Pull {
            group,
            frontier: frontier.clone(),
        }
        .to_bytes();
        let resp = SyncResponse::from_bytes(&inner.client.request(peer, req).await?)?;
        match resp {
            SyncResponse::Entries {
                group: g,
                more,
                entries,
            } if g == group => {
                let before = frontier.total();
                let (after, _) = take_in(inner, group, entries).await?;
                // No progress (everything refused or parked): stop rather than loop on one page.
                if !more || after.total() <= before {
                    return Ok(());
                }
            }
            SyncResponse::Refused { .. } => return Ok(()),
            _ => {
                return Err(SyncError::Decode(
                    securecomm_noise::codec::DecodeError::Invalid("unexpected answer to a pull"),
                ));
            }
        }
    }
    Ok(())
}

async fn push(inner: &Arc<Inner>, group: GroupId, peer: PeerId) -> Result<(), SyncError> {
    let Some(peer_author) = author_of(&peer) else {
        return Ok(());
    };
    // Each round sends one page of what the peer has not acknowledged; stop when none is left
    // or the peer makes no progress (it will be retried by the retransmit timer).
    for _ in 0..MAX_PULL_ROUNDS {
        let (entries, acked_before) = {
            let st = lock(&inner.state)?;
            let g = st
                .groups
                .get(&group)
                .ok_or(SyncError::UnknownGroup(group))?;
            if !g.members.contains(&peer) {
                return Ok(());
            }
            (
                g.log.pending_for(&st.db, peer_author, MAX_BATCH)?,
                g.log.acked(&st.db, peer_author)?,
            )
        };
        if entries.is_empty() {
            return Ok(());
        }
        let req = SyncRequest::Push { group, entries }.to_bytes();
        let resp = SyncResponse::from_bytes(&inner.client.request(peer, req).await?)?;
        match resp {
            SyncResponse::Ack { group: g, frontier } if g == group => {
                let st = lock(&inner.state)?;
                let g = st
                    .groups
                    .get(&group)
                    .ok_or(SyncError::UnknownGroup(group))?;
                g.log.ack(&st.db, peer_author, &frontier)?;
                if g.log.acked(&st.db, peer_author)? <= acked_before {
                    return Ok(());
                }
            }
            SyncResponse::Refused { .. } => return Ok(()),
            _ => {
                return Err(SyncError::Decode(
                    securecomm_noise::codec::DecodeError::Invalid("unexpected answer to a push"),
                ));
            }
        }
    }
    Ok(())
}

/// Answers one sync request from `peer`.
async fn answer(
    inner: &Arc<Inner>,
    peer: PeerId,
    req: SyncRequest,
) -> Result<SyncResponse, SyncError> {
    let group = match &req {
        SyncRequest::Pull { group, .. } | SyncRequest::Push { group, .. } => *group,
    };
    let member = {
        let st = lock(&inner.state)?;
        st.groups
            .get(&group)
            .is_some_and(|g| g.members.contains(&peer))
    };
    let Some(peer_author) = author_of(&peer).filter(|_| member) else {
        return Ok(SyncResponse::Refused { group });
    };
    match req {
        SyncRequest::Pull { frontier, .. } => {
            let st = lock(&inner.state)?;
            let g = st
                .groups
                .get(&group)
                .ok_or(SyncError::UnknownGroup(group))?;
            g.log.ack(&st.db, peer_author, &frontier)?;
            let (entries, more) = g.log.missing_since(&st.db, &frontier, MAX_BATCH)?;
            Ok(SyncResponse::Entries {
                group,
                more,
                entries,
            })
        }
        SyncRequest::Push { entries, .. } => {
            let (frontier, parked) = take_in(inner, group, entries).await?;
            if parked {
                schedule(inner, Job::Pull, group, peer);
            }
            Ok(SyncResponse::Ack { group, frontier })
        }
    }
}

async fn on_connected(inner: &Arc<Inner>, peer: PeerId) {
    let groups: Vec<GroupId> = {
        let Ok(mut st) = inner.state.lock() else {
            return;
        };
        st.connected.insert(peer);
        st.groups
            .iter()
            .filter(|(_, g)| g.members.contains(&peer))
            .map(|(id, _)| *id)
            .collect()
    };
    for g in groups {
        schedule(inner, Job::Pull, g, peer);
        schedule(inner, Job::Push, g, peer);
    }
}

/// Every connected member of every group, for the periodic timers.
fn connected_members(inner: &Arc<Inner>) -> Vec<(GroupId, PeerId)> {
    let Ok(st) = inner.state.lock() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (id, g) in &st.groups {
        for p in st.connected.iter().filter(|p| g.members.contains(p)) {
            out.push((*id, *p));
        }
    }
    out
}

async fn refresh_connected(inner: &Arc<Inner>) {
    if let Ok(peers) = inner.client.peers().await {
        for p in peers {
            on_connected(inner, p.peer).await;
        }
    }
}

async fn run_events(inner: Arc<Inner>, mut events: crate::net::EventStream) {
    refresh_connected(&inner).await;
    let mut anti_entropy = tokio::time::interval(inner.config.anti_entropy);
    let mut retransmit = tokio::time::interval(inner.config.retransmit);
    anti_entropy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    retransmit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                None => return,
                Some(Event::PeerConnected(peer, _)) => on_connected(&inner, peer).await,
                Some(Event::PeerDisconnected(peer)) => {
                    if let Ok(mut st) = inner.state.lock() {
                        st.connected.remove(&peer);
                    }
                }
                Some(Event::DirectRequest { peer, id, data }) => {
                    // Not a sync request: another protocol's handler answers it.
                    let Ok(req) = SyncRequest::from_bytes(&data) else { continue };
                    let inner2 = inner.clone();
                    spawn_on(&inner, async move {
                        let resp = match answer(&inner2, peer, req).await {
                            Ok(r) => r,
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "sync request failed");
                                return;
                            }
                        };
                        let _ = inner2.client.respond(id, resp.to_bytes()).await;
                    });
                }
                Some(Event::Lagged(_)) => refresh_connected(&inner).await,
                // Publications that found no subscriber back off up to 30 s; one just appeared.
                Some(Event::Subscribed { topic, .. }) => {
                    let hurried = lock(&inner.state)
                        .and_then(|st| Outbox::hurry(&st.db, &topic, now_ms()))
                        .unwrap_or(0);
                    if hurried > 0 {
                        inner.outbox_wake.notify_one();
                    }
                }
                Some(_) => {}
            },
            _ = anti_entropy.tick() => {
                for (g, p) in connected_members(&inner) {
                    schedule(&inner, Job::Pull, g, p);
                }
            }
            _ = retransmit.tick() => {
                for (g, p) in connected_members(&inner) {
                    schedule(&inner, Job::Push, g, p);
                }
            }
        }
    }
}

async fn run_outbox(inner: Arc<Inner>) {
    loop {
        let db = &inner.state;
        // Outbox::flush wants a Mutex<Db>; our Db lives inside the state lock, so flush here
        // with the same never-across-await discipline.
        let due = match lock(db)
            .and_then(|st| Outbox::due(&st.db, now_ms(), super::outbox::FLUSH_BATCH))
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "outbox read failed");
                Vec::new()
            }
        };
        for p in due {
            let result = inner.client.publish(&p.topic, p.data.clone()).await;
            if matches!(result, Err(NetError::Closed)) {
                return;
            }
            let Ok(st) = lock(db) else { return };
            if let Err(e) = Outbox::settle(&st.db, &p, result, now_ms()) {
                tracing::warn!(error = %e, "outbox update failed");
            }
        }
        let wait = lock(db)
            .ok()
            .and_then(|st| Outbox::next_due_ms(&st.db).ok().flatten())
            .map(|due| Duration::from_millis(due.saturating_sub(now_ms())))
            .unwrap_or(inner.config.outbox_poll)
            .min(inner.config.outbox_poll);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = inner.outbox_wake.notified() => {}
        }
    }
}
