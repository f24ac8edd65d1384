//! [`GuildService`]: the async side of the guild layer. It owns the sync driver, feeds gossip and
//! join requests to the engine, writes queued key-agreement output to the logs, keeps each
//! log's members in step with the guild document, and offers the operations the control API
//! exposes (all return JSON values, the shape scripts see).
//!
//! Locking: the engine sits behind a `std::sync::Mutex` that is only ever taken inside the sync
//! driver's lock ([`SyncPeer::with_db`] or the apply hook), never across an `await`, and no
//! `SyncPeer` method is called while it is held.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::gossipsub::MessageAcceptance;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::InboundRequestId;
use libp2p::{Multiaddr, PeerId};
use rusqlite::OptionalExtension;
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::perms::Permissions;
use securecomm_crdt::schema::{ChannelId, ChannelKind, GuildId};
use securecomm_noise::codec::{Decode, Encode};
use securecomm_noise::keys::{DevicePublicKey, DeviceSigningKey, RootPublicKey, RootSigningKey};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

use super::GuildError;
use super::dm::{self, DM_VERSION, DmKeys, DmPayload, DmRequest, DmResponse, StoredDm};
use super::engine::{
    self, Engine, Keys, StoredMessage, Verdict, new_role, parse_perms, perm_names, resolve_channel,
    resolve_role, resolve_user, text_channel, voice_channel,
};
use super::history::{self, HISTORY_VERSION, HistoryRequest, HistoryResponse};
use super::wire::{
    Body, DIRECT_VERSION, DirectRequest, DirectResponse, InviteLink, MAX_LINK_ADDRS,
};
use crate::net::{Client, Event, EventStream, NetError};
use crate::store::db::WalSync;
use crate::store::{Db, LocalProfile};
use crate::sync::peer::{ApplyHook, author_of};
use crate::sync::{Delivery, GroupId, SyncConfig, SyncError, SyncPeer};

pub(crate) mod assets;
pub mod emoji;
pub mod files;
pub mod manage;
pub mod messages;
pub mod search;
pub mod sound;

/// Guild events for subscribers (the control API's `events` stream).
#[derive(Debug, Clone)]
pub enum GuildEvent {
    /// A message was stored (received, or sent here).
    Message(StoredMessage),
    /// The guild document or key agreement changed.
    Changed {
        /// Guild id (hex).
        guild: String,
    },
    /// A direct message arrived.
    Dm(StoredDm),
    /// A stored message mentions this member (sent after the `Message` event of the same
    /// message): what desktop notifications are raised for.
    Mention(StoredMessage),
    /// A member is typing in a channel (shown for a few seconds; see `messages`).
    Typing {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Who (hex root key).
        user: String,
        /// Their nickname in the guild.
        nickname: String,
    },
    /// A file fetch made progress (at most every half second per file).
    FileProgress(files::Progress),
    /// A file fetch ended: complete, or paused by an error.
    FileDone {
        /// The file (hex root).
        root: String,
        /// Its name.
        name: String,
        /// Complete.
        ok: bool,
        /// Why it paused.
        error: Option<String>,
        /// Chunks that failed their check during the fetch (fetched again elsewhere).
        rejected: u64,
    },
    /// Messages were erased (deleted, or their timer ran out).
    Erased {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Message id (hex).
        id: String,
    },
}

/// How many guild events a slow subscriber may fall behind.
pub const GUILD_EVENT_BUFFER: usize = 1024;
/// Longest wait for an inviter to answer (including dialling it).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest wait after a join for key agreement to welcome us.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(45);
/// How often queued key-agreement output and pending gossip are retried regardless of events,
/// and disconnected members are considered for a re-dial.
pub const TICK: Duration = Duration::from_secs(1);
/// Most stored addresses per peer.
pub const MAX_PEER_ADDRS: usize = 8;
/// Most peers whose addresses are stored.
pub const MAX_PEERS_STORED: usize = 4096;

/// Group commit for sends: each send commits without waiting for the disk, then waits until
/// one fsync of the write-ahead log started after its commit has completed; sends that commit
/// while an fsync runs share the next one. The fsync runs on a blocking thread, without the
/// database lock.
struct GroupCommit {
    wal: WalSync,
    /// Relaxed commits counted so far (each counted after it returned).
    committed: AtomicU64,
    /// Every commit up to this count is on disk.
    durable: AtomicU64,
    syncing: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    /// Counts a commit that has just returned; returns its number.
    fn committed(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Waits until commit number `n` is durable.
    async fn durable(&self, n: u64) -> Result<(), GuildError> {
        if self.durable.load(Ordering::SeqCst) >= n {
            return Ok(());
        }
        let _one = self.syncing.lock().await;
        if self.durable.load(Ordering::SeqCst) >= n {
            return Ok(());
        }
        let upto = self.committed.load(Ordering::SeqCst);
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || wal.sync())
            .await
            .map_err(|_| GuildError::Invalid("the disk sync task failed".into()))?
            .map_err(SyncError::from)?;
        self.durable.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }
}

struct Inner {
    commit: GroupCommit,
    net: Client,
    sync: SyncPeer,
    engine: Arc<Mutex<Engine>>,
    events: broadcast::Sender<GuildEvent>,
    drain: tokio::sync::Mutex<()>,
    tasks: Mutex<JoinSet<()>>,
    history: Mutex<HistoryState>,
    dm: DmKeys,
    dm_flush: tokio::sync::Mutex<()>,
    /// This device's mailbox key (see [`super::mailbox`]).
    mailbox_key: libp2p::identity::ed25519::Keypair,
    /// The relays this node holds reservations on and picks mail up from.
    relays: Mutex<Vec<Multiaddr>>,
    mailbox_busy: tokio::sync::Mutex<()>,
    /// Guilds whose deposits must be (re)considered: a local send, or a refused or failed
    /// deposit.
    deposit_due: Mutex<HashSet<GuildId>>,
    /// Peers whose last connection closed (they were reachable a moment ago): redialled through
    /// relays at once, whichever side of the pair we are (bounded by [`MAX_LOST_PEERS`]).
    lost: Mutex<HashSet<PeerId>>,
    /// This device's recent sends (guild, sequence number, when), for the repair round
    /// (bounded by [`MAX_RECENT_SENDS`]).
    recent_sends: Mutex<std::collections::VecDeque<(GuildId, u64, tokio::time::Instant)>>,
    /// When each (guild, member) was last nudged.
    nudged: Mutex<HashMap<(GuildId, PeerId), tokio::time::Instant>>,
    /// Typing notices: when we last sent one per (guild, channel), and when each peer's last
    /// one was shown (both bounded, see `messages`).
    typing: Mutex<messages::TypingState>,
    /// File sharing: the encrypted file store, running fetches, serving bounds.
    files: files::FileState,
}

/// How often files of erased messages are removed from the file store.
pub const FILES_GC_EVERY: Duration = Duration::from_secs(10);
/// How often the node picks up mail and deposits for offline members.
pub const MAILBOX_EVERY: Duration = Duration::from_secs(3);
/// Own messages per guild considered for mailbox deposits (the most recent ones).
const DEPOSIT_WINDOW: usize = 256;

/// Which guilds want a history session, and which have one running.
#[derive(Default)]
struct HistoryState {
    /// Guilds due for a session, with a peer to try first.
    due: HashMap<GuildId, Option<PeerId>>,
    /// Guilds with a session running.
    running: HashSet<GuildId>,
    /// When each guild's last session started.
    last: HashMap<GuildId, tokio::time::Instant>,
    /// Everything every session did since start.
    totals: HistoryStats,
    /// Senders owed a delivery receipt (bounded by [`MAX_RECEIPTS_DUE`]).
    receipts_due: HashSet<(GuildId, DevicePublicKey)>,
}

type Secret32Pair = (GuildId, securecomm_noise::secret::Secret32);

/// Most senders owed a receipt at once.
const MAX_RECEIPTS_DUE: usize = 4096;

/// How often every guild runs a history session even without a trigger.
pub const HISTORY_EVERY: Duration = Duration::from_secs(60);
/// Shortest gap between two history sessions of a guild triggered by key agreement.
pub const HISTORY_MIN_GAP: Duration = Duration::from_secs(10);
/// Items validated per engine lock while applying a history page.
const HISTORY_CHUNK: usize = 128;

/// What one history session did (`history sync` in the CLI).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct HistoryStats {
    /// Pages fetched.
    pub pages: usize,
    /// Items received.
    pub items: usize,
    /// New messages stored.
    pub stored: usize,
    /// Items this node already had.
    pub duplicates: usize,
    /// Items that did not decrypt yet (key agreement behind; fetched again next session).
    pub undecryptable: usize,
    /// Bytes of responses received.
    pub bytes: usize,
    /// Bytes of requests sent.
    pub sent_bytes: usize,
    /// Time spent, in milliseconds.
    pub millis: u64,
}

impl HistoryStats {
    fn add(&mut self, o: &HistoryStats) {
        self.pages += o.pages;
        self.items += o.items;
        self.stored += o.stored;
        self.duplicates += o.duplicates;
        self.undecryptable += o.undecryptable;
        self.bytes += o.bytes;
        self.sent_bytes += o.sent_bytes;
        self.millis += o.millis;
    }
}

/// The guild layer of a running node. Cheap to clone.
#[derive(Clone)]
pub struct GuildService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GuildService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuildService").finish_non_exhaustive()
    }
}

fn hex_array(s: &str) -> Option<[u8; 32]> {
    hex::decode(s)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
}

/// A member is redialled through at most this many of our reserved relays per round.
const MAX_RELAYS_PER_REDIAL: usize = 2;
/// Most own sends remembered for the repair round.
const MAX_RECENT_SENDS: usize = 4096;
/// A member whose receipt does not cover a message this old is nudged...
const REPAIR_AFTER: Duration = Duration::from_secs(3);
/// ... unless the message is older than this (history rounds cover the rest).
const REPAIR_WINDOW: Duration = Duration::from_secs(60);
/// Shortest gap between two nudges of one member in one guild.
const NUDGE_EVERY: Duration = Duration::from_secs(5);
/// Most peers remembered as just lost.
const MAX_LOST_PEERS: usize = 4096;
/// Most relay circuits one reconnect round dials. libp2p's relay client opens at most 10 at a
/// time over one relay connection and drops the rest (each drop a failed dial and a doubled
/// backoff): netsim's 20-member chaos run, where a NAT flush cut every connection of one
/// member, lost seconds to it.
const MAX_CIRCUIT_DIALS_PER_ROUND: usize = 8;
/// The larger peer id of a pair dials through a relay too once its backoff reaches this.
const RELAY_DIAL_FALLBACK: Duration = Duration::from_secs(8);

pub(crate) fn peer_of(device: &DevicePublicKey) -> Option<PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(device.as_bytes()).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

pub(crate) fn device_of(peer: &PeerId) -> Option<DevicePublicKey> {
    author_of(peer).and_then(|a| DevicePublicKey::from_bytes(&a.0).ok())
}

fn group(gid: &GuildId) -> GroupId {
    GroupId(gid.0)
}

impl GuildService {
    /// Starts the guild layer on `net` with `db`: opens every stored guild, starts the sync
    /// driver with the engine's apply hook, subscribes to every guild topic.
    pub async fn start(
        net: Client,
        db: Db,
        profile: &LocalProfile,
        config: SyncConfig,
    ) -> Result<Self, GuildError> {
        let id = &profile.identity;
        let signer = id.device().signing();
        let keys = Keys::new(
            DeviceSigningKey::from_seed(&signer.seed()),
            RootSigningKey::from_seed(&id.root().seed()),
            profile.display_name.clone(),
        );
        let dm_keys = DmKeys {
            me: securecomm_noise::dm::DmIdentity::new(
                DeviceSigningKey::from_seed(&signer.seed()),
                id.device().dh().clone(),
            ),
        };
        let mailbox_key = super::mailbox::mailbox_keypair(&signer.seed());
        let engine = Arc::new(Mutex::new(Engine::new(keys)));
        let hook_engine = engine.clone();
        let hook: ApplyHook = Box::new(move |tx, group, entry| {
            let mut e = hook_engine.lock().map_err(|_| SyncError::Poisoned)?;
            e.apply_entry(tx, group, entry)
        });
        // Subscribe to network events before anything can arrive.
        let net_events = net.events();
        let wal = db.wal_sync();
        let files_dir = db.dir().map(|d| d.join("files"));
        let (sync, deliveries) = SyncPeer::start(
            net.clone(),
            db,
            DeviceSigningKey::from_seed(&signer.seed()),
            config,
            Some(hook),
        );
        let (events, _) = broadcast::channel(GUILD_EVENT_BUFFER);
        let svc = Self {
            inner: Arc::new(Inner {
                commit: GroupCommit {
                    wal,
                    committed: AtomicU64::new(0),
                    durable: AtomicU64::new(0),
                    syncing: tokio::sync::Mutex::new(()),
                },
                net,
                sync,
                engine,
                events,
                drain: tokio::sync::Mutex::new(()),
                tasks: Mutex::new(JoinSet::new()),
                history: Mutex::new(HistoryState::default()),
                dm: dm_keys,
                dm_flush: tokio::sync::Mutex::new(()),
                mailbox_key,
                relays: Mutex::new(Vec::new()),
                mailbox_busy: tokio::sync::Mutex::new(()),
                deposit_due: Mutex::new(HashSet::new()),
                lost: Mutex::new(HashSet::new()),
                recent_sends: Mutex::new(std::collections::VecDeque::new()),
                nudged: Mutex::new(HashMap::new()),
                typing: Mutex::new(messages::TypingState::default()),
                files: files::FileState::new(files_dir),
            }),
        };
        svc.with_engine(|e, db| e.load_all(db.conn()))??;
        let ids: Vec<GuildId> = svc.with_engine(|e, _| e.guilds.keys().copied().collect())?;
        for gid in &ids {
            svc.refresh_members(gid)?;
            svc.subscribe(gid).await?;
            svc.history_due(*gid, None, Duration::ZERO);
        }
        for gid in &ids {
            svc.publish_bundle(gid).await;
        }
        svc.spawn(run_deliveries(svc.clone(), deliveries));
        svc.spawn(run_net_events(svc.clone(), net_events));
        svc.spawn(svc.clone().serve_file_streams());
        svc.spawn(run_ticks(svc.clone()));
        svc.resume_fetches();
        svc.drain_outq().await;
        Ok(svc)
    }

    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.spawn(fut);
        }
    }

    /// Stops the service's tasks and the sync driver.
    pub fn stop(&self) {
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.abort_all();
        }
        self.inner.sync.stop();
    }

    /// Subscribes to guild events.
    pub fn events(&self) -> broadcast::Receiver<GuildEvent> {
        self.inner.events.subscribe()
    }

    /// The sync driver (for tests and tools).
    pub fn sync(&self) -> &SyncPeer {
        &self.inner.sync
    }

    fn emit(&self, e: GuildEvent) {
        if let GuildEvent::Message(m) = &e
            && let Some(gid) = hex_array(&m.guild).map(GuildId)
            && let Some(sender) =
                hex_array(&m.sender_device).and_then(|b| DevicePublicKey::from_bytes(&b).ok())
            && let Ok(mut h) = self.inner.history.lock()
            && h.receipts_due.len() < MAX_RECEIPTS_DUE
        {
            h.receipts_due.insert((gid, sender));
        }
        let mention = match &e {
            GuildEvent::Message(m) if m.mentions_me => Some(GuildEvent::Mention(m.clone())),
            _ => None,
        };
        let _ = self.inner.events.send(e);
        if let Some(m) = mention {
            let _ = self.inner.events.send(m);
        }
    }

    /// Runs `f` on the engine and the database, under the sync driver's lock.
    fn with_engine<R>(&self, f: impl FnOnce(&mut Engine, &mut Db) -> R) -> Result<R, GuildError> {
        self.inner
            .sync
            .with_db(|db| {
                let mut e = self.inner.engine.lock().map_err(|_| GuildError::Poisoned)?;
                Ok(f(&mut e, db))
            })
            .map_err(GuildError::from)?
    }

    async fn subscribe(&self, gid: &GuildId) -> Result<(), GuildError> {
        let topic = self.with_engine(|e, _| e.guild_mut(gid).map(|g| g.topic.clone()))??;
        self.inner.net.subscribe(&topic).await?;
        Ok(())
    }

    /// Sets the log's sync members to the document's member devices (minus this one) and its
    /// accepted authors to every device ever seen as a member.
    fn refresh_members(&self, gid: &GuildId) -> Result<(), GuildError> {
        let (members, authors) = self.with_engine(|e, _| {
            let me = e.keys.me;
            let g = e.guild_mut(gid)?;
            let members: HashSet<PeerId> = g
                .member_devices()
                .iter()
                .filter(|d| **d != me)
                .filter_map(peer_of)
                .collect();
            let authors: HashSet<PeerId> = g.authors.iter().filter_map(peer_of).collect();
            Ok::<_, GuildError>((members, authors))
        })??;
        self.inner
            .sync
            .set_members_with_authors(group(gid), members, authors)?;
        Ok(())
    }

    /// Writes queued key-agreement output to the logs, oldest first per guild. One drainer at a
    /// time. A guild whose log refuses an insert is skipped until the next call (its order is
    /// kept); rows of a guild that is gone are dropped.
    async fn drain_outq(&self) {
        let _one = self.inner.drain.lock().await;
        let mut blocked: BTreeSet<Vec<u8>> = BTreeSet::new();
        for _ in 0..10_000 {
            let next = self.with_engine(|_, db| -> rusqlite::Result<_> {
                let mut st = db.conn().prepare_cached(
                    "SELECT id, guild, payload FROM guild_outq ORDER BY id LIMIT 64",
                )?;
                let rows = st.query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })?;
                let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = rows.collect::<Result<_, _>>()?;
                Ok(rows.into_iter().find(|(_, g, _)| !blocked.contains(g)))
            });
            let Ok(Ok(Some((row, gid_bytes, payload)))) = next else {
                return;
            };
            let delete = |svc: &Self| {
                let _ = svc.with_engine(|_, db| {
                    db.conn()
                        .execute("DELETE FROM guild_outq WHERE id = ?1", [row])
                });
            };
            let Ok(gid) = <[u8; 32]>::try_from(gid_bytes.as_slice()) else {
                delete(self);
                continue;
            };
            match self.inner.sync.insert(GroupId(gid), payload).await {
                // The hook removed the row with the entry; make sure, so a mismatch can never
                // loop.
                Ok(_) => delete(self),
                Err(SyncError::UnknownGroup(_)) => delete(self),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write key-agreement output to the log yet");
                    blocked.insert(gid_bytes);
                }
            }
        }
    }

    /// After deliveries in `groups`: queued output, members, pending gossip, events.
    async fn after_apply(&self, groups: BTreeSet<GroupId>) {
        self.drain_outq().await;
        for g in groups {
            let gid = GuildId(g.0);
            if let Err(e) = self.refresh_members(&gid) {
                tracing::debug!(error = %e, "refreshing sync members failed");
            }
            self.retry_pending(&gid);
            self.history_due(gid, None, HISTORY_MIN_GAP);
            self.emit(GuildEvent::Changed {
                guild: hex::encode(gid.0),
            });
        }
    }

    fn retry_pending(&self, gid: &GuildId) {
        match self.with_engine(|e, db| e.retry_pending(db.conn_mut(), gid)) {
            Ok(Ok(msgs)) => msgs
                .into_iter()
                .for_each(|m| self.emit(GuildEvent::Message(m))),
            Ok(Err(e)) => tracing::warn!(error = %e, "retrying pending messages failed"),
            Err(e) => tracing::warn!(error = %e, "retrying pending messages failed"),
        }
    }

    /// Handles a batch of gossip messages (those queued while the previous batch ran): all
    /// are validated and decrypted under one lock, gossipsub is told at once (so valid
    /// messages are forwarded before this node touches its disk), then the accepted messages
    /// and the receiving chains they moved are stored in one transaction.
    async fn on_gossip_batch(&self, batch: Vec<Gossip>) {
        let verdicts = self.with_engine(|e, db| {
            batch
                .iter()
                .map(|g| match e.validate_gossip(db.conn(), &g.topic, &g.data) {
                    Ok(v) => v,
                    Err(err) => {
                        tracing::warn!(error = %err, "gossip validation failed");
                        Verdict::Ignore("internal error")
                    }
                })
                .collect::<Vec<_>>()
        });
        let verdicts = match verdicts {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "gossip validation failed");
                batch
                    .iter()
                    .map(|_| Verdict::Ignore("internal error"))
                    .collect()
            }
        };
        let mut accepted = Vec::new();
        for (g, verdict) in batch.into_iter().zip(verdicts) {
            let source = g.source;
            let acceptance = match verdict {
                Verdict::Accept(m) => {
                    accepted.extend(m);
                    MessageAcceptance::Accept
                }
                Verdict::Reject(why) => {
                    tracing::info!(%source, reason = why, "gossip message rejected");
                    MessageAcceptance::Reject
                }
                Verdict::Ignore(why) => {
                    tracing::debug!(%source, reason = why, "gossip message ignored");
                    MessageAcceptance::Ignore
                }
            };
            let _ = self
                .inner
                .net
                .report_validation(g.id, source, acceptance)
                .await;
        }
        // Runs even with no message: a rejected payload may still have moved a chain.
        match self.with_engine(|e, db| e.store_received(db.conn_mut(), accepted)) {
            Ok(Ok(new)) => new
                .into_iter()
                .for_each(|m| self.emit(GuildEvent::Message(m))),
            Ok(Err(e)) => tracing::warn!(error = %e, "storing received messages failed"),
            Err(e) => tracing::warn!(error = %e, "storing received messages failed"),
        }
    }

    async fn on_direct(&self, peer: PeerId, id: InboundRequestId, data: Vec<u8>) {
        let resp = self.answer_direct(peer, &data).await;
        let _ = self.inner.net.respond(id, resp.to_bytes()).await;
    }

    async fn answer_direct(&self, peer: PeerId, data: &[u8]) -> DirectResponse {
        let refused = |s: &str| DirectResponse::Refused(s.to_owned());
        let Some(device) = device_of(&peer) else {
            return refused("unsupported peer key");
        };
        let req = match DirectRequest::from_bytes(data) {
            Ok(r) => r,
            Err(_) => return refused("malformed request"),
        };
        match &req {
            DirectRequest::Hello { .. } => {
                match self.with_engine(|e, db| e.on_hello(db.conn(), &device, &req)) {
                    Ok(Ok(r)) => r,
                    _ => refused("internal error"),
                }
            }
            DirectRequest::Redeem { .. } => {
                let (gid, payload) =
                    match self.with_engine(|e, db| e.on_redeem(db.conn(), &device, &req)) {
                        Ok(Ok(Ok(x))) => x,
                        Ok(Ok(Err(refusal))) => return refusal,
                        _ => return refused("internal error"),
                    };
                if let Err(e) = self.inner.sync.insert(group(&gid), payload).await {
                    tracing::warn!(error = %e, "cannot write a redemption to the log");
                    return refused("internal error");
                }
                let member = self
                    .with_engine(|e, _| {
                        e.guild_mut(&gid)
                            .map(|g| g.crdt.view().user_of_device(&device).is_some())
                    })
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(false);
                if !member {
                    return refused("the guild refused the redemption");
                }
                if self.refresh_members(&gid).is_err() {
                    return refused("internal error");
                }
                self.drain_outq().await;
                DirectResponse::Welcome
            }
        }
    }

    // ------------------------------------------------------------------ operations

    async fn write(&self, gid: &GuildId, payload: Vec<u8>) -> Result<(), GuildError> {
        let r = self.inner.sync.insert(group(gid), payload).await;
        if r.is_err() {
            let _ = self.with_engine(|e, _| {
                if let Ok(g) = e.guild_mut(gid) {
                    g.dirty = true;
                }
            });
        }
        r?;
        self.drain_outq().await;
        Ok(())
    }

    async fn change(&self, gid: &GuildId, ops: Vec<GuildOp>) -> Result<(), GuildError> {
        let payload = self.with_engine(|e, _| e.local_change(gid, ops))??;
        self.write(gid, payload).await
    }

    fn resolve(&self, guild: &str) -> Result<GuildId, GuildError> {
        self.with_engine(|e, _| e.resolve_guild(guild))?
    }

    /// `guild create NAME`.
    pub async fn create_guild(&self, name: &str) -> Result<Value, GuildError> {
        let name = name.trim();
        if name.is_empty() || name.len() > securecomm_crdt::schema::MAX_NAME {
            return Err(GuildError::Invalid(format!(
                "a guild name has 1 to {} bytes",
                securecomm_crdt::schema::MAX_NAME
            )));
        }
        let (gid, payloads) = self.with_engine(|e, db| e.create_guild(db.conn(), name))??;
        self.refresh_members(&gid)?;
        self.subscribe(&gid).await?;
        for p in payloads {
            self.inner.sync.insert(group(&gid), p).await?;
        }
        self.drain_outq().await;
        self.publish_bundle(&gid).await;
        Ok(json!({"id": hex::encode(gid.0), "name": name}))
    }

    /// The guild's gossip topic (opaque; for tests and diagnostics).
    pub fn topic(&self, guild: &str) -> Result<String, GuildError> {
        let gid = self.resolve(guild)?;
        self.with_engine(|e, _| e.guild_mut(&gid).map(|g| g.topic.clone()))?
    }

    /// `guild list`.
    pub fn list_guilds(&self) -> Result<Value, GuildError> {
        self.with_engine(|e, _| {
            let v: Vec<Value> = e
                .guilds
                .values_mut()
                .map(|g| {
                    let ready = g.keyed();
                    let undecryptable = g.undecryptable();
                    let rejected = g.rejected();
                    let view = g.crdt.view();
                    json!({
                        "id": hex::encode(g.id.0),
                        "name": view.name(),
                        "members": view.members().len(),
                        "channels": view.channels().len(),
                        "ready": ready,
                        "undecryptable": undecryptable,
                        "rejected": rejected,
                    })
                })
                .collect();
            Value::Array(v)
        })
    }

    /// `invite create GUILD [--expires SECS] [--uses N]`.
    pub async fn create_invite(
        &self,
        guild: &str,
        expires: Option<u64>,
        uses: u32,
    ) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        let addrs = self.my_addrs().await?;
        if addrs.is_empty() {
            return Err(GuildError::Invalid(
                "this node has no address to put in the invite yet (no listener, no relay \
                 reservation)"
                    .into(),
            ));
        }
        let (payload, mut link) =
            self.with_engine(|e, db| e.create_invite(db.conn(), &gid, expires, uses))??;
        self.write(&gid, payload).await?;
        link.addrs = addrs;
        Ok(json!({
            "code": link.to_text(),
            "guild": hex::encode(gid.0),
            "expires_at": link.expires_at,
            "uses": uses,
            "addrs": link.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        }))
    }

    /// Our addresses for an invite: direct ones first, then relay circuits, each with
    /// `/p2p/<us>`, at most [`MAX_LINK_ADDRS`].
    async fn my_addrs(&self) -> Result<Vec<Multiaddr>, GuildError> {
        let me = self.inner.net.peer_id();
        let mut direct = Vec::new();
        let mut relayed = Vec::new();
        for a in self.inner.net.listen_addrs().await? {
            let unspecified = a.iter().any(|p| {
                matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())
                    || matches!(p, Protocol::Ip6(ip) if ip.is_unspecified())
            });
            if unspecified {
                continue;
            }
            let a = if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                a
            } else {
                a.with(Protocol::P2p(me))
            };
            if a.iter().any(|p| p == Protocol::P2pCircuit) {
                relayed.push(a);
            } else {
                direct.push(a);
            }
        }
        // Loopback last among direct ones: other machines cannot use it.
        direct.sort_by_key(|a| {
            a.iter()
                .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback()))
        });
        let mut out: Vec<Multiaddr> = Vec::new();
        // Keep room for relayed addresses: they are what works across NATs.
        let room_direct = MAX_LINK_ADDRS.saturating_sub(relayed.len().min(MAX_LINK_ADDRS / 2));
        for a in direct.into_iter().take(room_direct).chain(relayed) {
            if out.len() < MAX_LINK_ADDRS && !out.contains(&a) {
                out.push(a);
            }
        }
        Ok(out)
    }

    async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<DirectResponse, GuildError> {
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            match self.inner.net.request(peer, data.clone()).await {
                Ok(r) => return Ok(DirectResponse::from_bytes(&r)?),
                Err(NetError::Closed) => return Err(NetError::Closed.into()),
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        Err(GuildError::Join(format!(
            "the inviter did not answer: {}",
            last.map_or_else(|| "timeout".into(), |e| e.to_string())
        )))
    }

    /// `guild join CODE`.
    pub async fn join(&self, code: &str) -> Result<Value, GuildError> {
        let link = InviteLink::from_text(code)
            .map_err(|e| GuildError::Join(format!("not a valid invite code: {e}")))?;
        let inviter = link
            .inviter()
            .ok_or_else(|| GuildError::Join("the invite carries no inviter address".into()))?;
        if link.expires_at != 0 && link.expires_at <= engine::now_ms() / 1000 {
            return Err(GuildError::Join("the invite has expired".into()));
        }
        for a in &link.addrs {
            let _ = self.inner.net.add_address(inviter, a.clone()).await;
        }
        self.remember_addrs(inviter, link.addrs.clone());
        for a in &link.addrs {
            let _ = self.inner.net.dial(a.clone()).await;
        }
        let (dcgka, hello) = self.with_engine(|e, _| e.join_hello(&link))??;
        let offer = self.request(inviter, hello.to_bytes()).await?;
        let redeem = self.with_engine(|e, db| e.join_offer(db.conn(), &link, dcgka, offer))??;
        let gid = link.guild;
        match self.request(inviter, redeem.to_bytes()).await {
            Ok(DirectResponse::Welcome) => {}
            Ok(DirectResponse::Refused(why)) => {
                let _ = self.with_engine(|e, db| e.abandon(db.conn(), &gid));
                return Err(GuildError::Join(why));
            }
            Ok(DirectResponse::Offer { .. }) => {
                let _ = self.with_engine(|e, db| e.abandon(db.conn(), &gid));
                return Err(GuildError::Join(
                    "unexpected answer to the redemption".into(),
                ));
            }
            Err(e) => {
                // The inviter may have taken the redemption: keep the guild and let the log
                // tell.
                tracing::warn!(error = %e, "no answer to the redemption; waiting for the log");
            }
        }
        self.refresh_members(&gid)?;
        self.subscribe(&gid).await?;
        let deadline = tokio::time::Instant::now() + WELCOME_TIMEOUT;
        let mut ready = false;
        while tokio::time::Instant::now() < deadline {
            ready = self.with_engine(|e, _| e.guild_mut(&gid).map(|g| g.keyed()))??;
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let name =
            self.with_engine(|e, _| e.guild_mut(&gid).map(|g| g.crdt.view().name().to_owned()))??;
        self.publish_bundle(&gid).await;
        Ok(json!({"id": hex::encode(gid.0), "name": name, "ready": ready}))
    }

    /// `channel create GUILD NAME [--voice]`.
    pub async fn create_channel(
        &self,
        guild: &str,
        name: &str,
        voice: bool,
    ) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        let name = name.trim().trim_start_matches('#');
        if name.is_empty() || name.len() > securecomm_crdt::schema::MAX_NAME {
            return Err(GuildError::Invalid(format!(
                "a channel name has 1 to {} bytes",
                securecomm_crdt::schema::MAX_NAME
            )));
        }
        let id = ChannelId(rand_core::RngCore::next_u64(&mut rand_core::OsRng));
        let ch = if voice {
            voice_channel(name)
        } else {
            text_channel(name)
        };
        self.change(&gid, vec![GuildOp::PutChannel(id, ch)]).await?;
        Ok(json!({"id": id.0, "name": name, "kind": if voice { "voice" } else { "text" }}))
    }

    /// `channel list GUILD`.
    pub fn list_channels(&self, guild: &str) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        self.with_engine(|e, _| {
            let user = e.keys.user;
            let g = e.guild_mut(&gid)?;
            let view = g.crdt.view();
            let v: Vec<Value> = view
                .channels()
                .iter()
                .map(|(id, c)| {
                    json!({
                        "id": id.0,
                        "name": c.name,
                        "kind": match c.kind {
                            ChannelKind::Text => "text",
                            ChannelKind::Voice => "voice",
                            ChannelKind::Category => "category",
                        },
                        "topic": c.topic,
                        "slow_mode_secs": c.slow_mode_secs,
                        "disappearing_secs": c.disappearing_secs,
                        "my_permissions": perm_names(view.channel_permissions(&user, id)),
                    })
                })
                .collect();
            Ok(Value::Array(v))
        })?
    }

    /// `send GUILD CHANNEL TEXT`. Returns once the message is stored durably (and published,
    /// or queued in the outbox).
    ///
    /// The ciphertext is published before the message is stored: its ratchet index was
    /// reserved durably first (`Engine::prepare_send`), so a crash in between loses only
    /// this unacknowledged message and never reuses a key. If gossipsub refuses (no peer
    /// subscribed yet), or older publications still wait, the outbox takes it in the same
    /// transaction as the message. That transaction commits without an fsync; the send
    /// returns after the next group commit (`GroupCommit`) made it durable.
    pub async fn send(&self, guild: &str, channel: &str, text: &str) -> Result<Value, GuildError> {
        self.post(guild, channel, text, &messages::PostOptions::default())
            .await
    }

    /// Sends any kind of guild message ([`Body`]) in `channel` of `guild`; see [`Self::send`].
    pub(crate) async fn send_body(
        &self,
        guild: &str,
        channel: &str,
        body: impl FnOnce(&mut Engine, &mut Db, &GuildId, ChannelId) -> Result<Body, GuildError>,
    ) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        let (p, alone) = self.with_engine(|e, db| {
            let me = e.keys.me;
            let g = e.guild_mut(&gid)?;
            // With no other member device there is nobody to publish to: nothing waits in the
            // outbox (members who join later get history by history sync, if the guild's
            // settings let them).
            let alone = g.member_devices().iter().all(|d| *d == me);
            let ch = resolve_channel(g.crdt.view(), channel)?;
            let body = body(e, db, &gid, ch)?;
            Ok::<_, GuildError>((e.prepare_send(db.conn_mut(), &gid, ch, body)?, alone))
        })??;
        let published = alone
            || (!p.queued
                && self
                    .inner
                    .net
                    .publish(&p.topic, p.sealed.clone())
                    .await
                    .is_ok());
        let unpublished = (!published).then_some((p.topic.as_str(), p.sealed.as_slice()));
        self.with_engine(|e, db| e.commit_send(db.conn_mut(), &gid, &p.message, unpublished))??;
        let n = self.inner.commit.committed();
        self.inner.commit.durable(n).await?;
        if !published {
            self.inner.sync.wake_outbox();
        }
        if let Ok(mut r) = self.inner.recent_sends.lock() {
            if r.len() >= MAX_RECENT_SENDS {
                r.pop_front();
            }
            r.push_back((gid, p.message.seq, tokio::time::Instant::now()));
        }
        let value = serde_json::to_value(&p.message).unwrap_or(Value::Null);
        self.emit(GuildEvent::Message(p.message));
        if let Ok(mut d) = self.inner.deposit_due.lock() {
            d.insert(gid);
        }
        let s = self.clone();
        self.spawn(async move { s.mailbox_round().await });
        Ok(value)
    }

    /// `history GUILD CHANNEL [--limit N]`: oldest first.
    pub fn history(&self, guild: &str, channel: &str, limit: usize) -> Result<Value, GuildError> {
        self.history_page(guild, channel, None, limit)
    }

    /// One page of a channel's own timeline; see [`Self::history_in`].
    pub fn history_page(
        &self,
        guild: &str,
        channel: &str,
        before: Option<&engine::HistoryCursor>,
        limit: usize,
    ) -> Result<Value, GuildError> {
        self.history_in(guild, channel, None, before, limit)
    }

    /// One page of a channel's history (its own timeline, or one of its threads): the newest
    /// `limit` (at most 10,000) messages older than `before` (the oldest message of the page
    /// shown so far), oldest first, with their reactions, pins and edit marks. Paging back from
    /// `None` visits every stored message exactly once.
    pub fn history_in(
        &self,
        guild: &str,
        channel: &str,
        thread: Option<&str>,
        before: Option<&engine::HistoryCursor>,
        limit: usize,
    ) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        self.with_engine(|e, db| {
            let me = hex::encode(e.keys.me.as_bytes());
            let g = e.guild_mut(&gid)?;
            let view = g.crdt.view();
            let ch = resolve_channel(view, channel)?;
            let thread = match thread {
                Some(t) => Some(messages::resolve_thread(db.conn(), &gid, ch, t)?),
                None => None,
            };
            let mut msgs = engine::history(
                db.conn(),
                &gid,
                ch,
                thread.as_ref(),
                before,
                limit.clamp(1, 10_000),
            )?;
            super::content::decorate(db.conn(), &gid, &mut msgs)?;
            for m in &mut msgs {
                if let Some(b) = hex_array(&m.sender)
                    && let Ok(u) = RootPublicKey::from_bytes(&b)
                    && let Some(member) = view.member(&u)
                {
                    m.nickname.clone_from(&member.nickname);
                }
            }
            // Delivery state of this device's own messages, from members' receipts.
            let others: Vec<(DevicePublicKey, String)> = view
                .members()
                .values()
                .flat_map(|m| m.devices.iter().map(|d| (*d, m.nickname.clone())))
                .filter(|(d, _)| hex::encode(d.as_bytes()) != me)
                .collect();
            let receipts = history::receipts(db.conn(), &gid)?;
            let mut out = serde_json::to_value(&msgs).unwrap_or(Value::Null);
            if let Some(arr) = out.as_array_mut() {
                for (v, m) in arr.iter_mut().zip(&msgs) {
                    if m.sender_device != me {
                        continue;
                    }
                    let mut pending: Vec<Value> = Vec::new();
                    for (d, nick) in &others {
                        if receipts.get(d).is_some_and(|r| r.contains(m.seq)) {
                            continue;
                        }
                        let deposited: i64 = db.conn().query_row(
                            "SELECT COUNT(*) FROM guild_deposits WHERE guild = ?1 AND seq = ?2 AND device = ?3",
                            rusqlite::params![&gid.0[..], i64::try_from(m.seq).unwrap_or(0), &d.as_bytes()[..]],
                            |r| r.get(0),
                        )?;
                        pending.push(json!({
                            "device": hex::encode(d.as_bytes()),
                            "nickname": nick,
                            "state": if deposited > 0 { "deposited" } else { "sent" },
                        }));
                    }
                    if let Some(o) = v.as_object_mut() {
                        o.insert(
                            "delivery".into(),
                            json!({
                                "delivered": others.len() - pending.len(),
                                "members": others.len(),
                                "pending": pending,
                            }),
                        );
                    }
                }
            }
            Ok(out)
        })?
    }

    /// `members GUILD`.
    pub fn members(&self, guild: &str) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        self.with_engine(|e, _| {
            let g = e.guild_mut(&gid)?;
            let keyed = g.dcgka.members();
            let view = g.crdt.view();
            let v: Vec<Value> = view
                .members()
                .iter()
                .map(|(u, m)| {
                    let roles: Vec<&str> = m
                        .roles
                        .iter()
                        .filter_map(|r| view.roles().get(r).map(|r| r.name.as_str()))
                        .collect();
                    json!({
                        "user": hex::encode(u.as_bytes()),
                        "nickname": m.nickname,
                        "owner": view.is_owner(u),
                        "roles": roles,
                        "devices": m.devices.iter().map(|d| hex::encode(d.as_bytes())).collect::<Vec<_>>(),
                        "keyed": m.devices.iter().all(|d| keyed.contains(d)),
                        "voice_muted": m.voice_muted,
                        "permissions": perm_names(view.base_permissions(u)),
                    })
                })
                .collect();
            Ok(Value::Array(v))
        })?
    }

    /// `role create GUILD NAME --perms LIST`.
    pub async fn create_role(
        &self,
        guild: &str,
        name: &str,
        perms: &str,
    ) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        let perms = parse_perms(perms)?;
        let name = name.trim();
        if name.is_empty() || name.len() > securecomm_crdt::schema::MAX_NAME {
            return Err(GuildError::Invalid("a role name has 1 to 100 bytes".into()));
        }
        let id = securecomm_crdt::schema::RoleId(
            rand_core::RngCore::next_u64(&mut rand_core::OsRng) | 1,
        );
        let role = self.with_engine(|e, _| {
            let user = e.keys.user;
            let g = e.guild_mut(&gid)?;
            let view = g.crdt.view();
            Ok::<_, GuildError>(new_role(view, view.rank(&user), name, perms))
        })??;
        let position = role.position;
        self.change(&gid, vec![GuildOp::PutRole(id, role)]).await?;
        Ok(
            json!({"id": id.0, "name": name, "position": position, "permissions": perm_names(perms)}),
        )
    }

    /// `role grant GUILD USER ROLE`.
    pub async fn grant_role(
        &self,
        guild: &str,
        user: &str,
        role: &str,
    ) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        let (u, r) = self.with_engine(|e, _| {
            let g = e.guild_mut(&gid)?;
            let view = g.crdt.view();
            Ok::<_, GuildError>((resolve_user(view, user)?, resolve_role(view, role)?))
        })??;
        self.change(&gid, vec![GuildOp::GrantRole(u, r)]).await?;
        Ok(json!({"user": hex::encode(u.as_bytes()), "role": r.0}))
    }

    /// `kick GUILD USER`.
    pub async fn kick(&self, guild: &str, user: &str) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        let u = self.with_engine(|e, _| resolve_user(e.guild_mut(&gid)?.crdt.view(), user))??;
        self.change(&gid, vec![GuildOp::Kick(u)]).await?;
        Ok(json!({"kicked": hex::encode(u.as_bytes())}))
    }

    /// `ban GUILD USER`.
    pub async fn ban(&self, guild: &str, user: &str, reason: &str) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        let u = self.with_engine(|e, _| resolve_user(e.guild_mut(&gid)?.crdt.view(), user))??;
        self.change(&gid, vec![GuildOp::Ban(u, reason.to_owned())])
            .await?;
        Ok(json!({"banned": hex::encode(u.as_bytes())}))
    }

    /// Every device of every guild's members but this one.
    fn member_peers(&self) -> HashSet<PeerId> {
        self.with_engine(|e, _| {
            let me = e.keys.me;
            let mut out = HashSet::new();
            for g in e.guilds.values_mut() {
                out.extend(
                    g.member_devices()
                        .iter()
                        .filter(|d| **d != me)
                        .filter_map(peer_of),
                );
            }
            out
        })
        .unwrap_or_default()
    }

    /// Stores where a peer listens (from identify, or from an invite), so this node can dial it
    /// again after either side restarts if it is (or becomes) a guild member. At most
    /// [`MAX_PEERS_STORED`] peers are kept, the least recently seen are dropped.
    fn remember_addrs(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let mut w = securecomm_noise::codec::Writer::new();
        let usable: Vec<&Multiaddr> = addrs
            .iter()
            .filter(|a| {
                !a.iter().any(|p| {
                    matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())
                        || matches!(p, Protocol::Ip6(ip) if ip.is_unspecified())
                })
            })
            .take(MAX_PEER_ADDRS)
            .collect();
        if usable.is_empty() {
            return;
        }
        w.u8(u8::try_from(usable.len()).unwrap_or(0));
        for a in usable {
            w.bytes16(&a.to_vec());
        }
        let blob = w.into_bytes();
        let _ = self.with_engine(|_, db| {
            db.conn().execute(
                "INSERT INTO peer_addrs (peer, addrs, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(peer) DO UPDATE SET addrs = excluded.addrs, updated_at = excluded.updated_at",
                rusqlite::params![peer.to_bytes(), blob, i64::try_from(engine::now_ms()).unwrap_or(0)],
            )?;
            db.conn().execute(
                "DELETE FROM peer_addrs WHERE peer NOT IN
                 (SELECT peer FROM peer_addrs ORDER BY updated_at DESC LIMIT ?1)",
                [i64::try_from(MAX_PEERS_STORED).unwrap_or(i64::MAX)],
            )
        });
    }

    fn stored_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let blob: Option<Vec<u8>> = self
            .with_engine(|_, db| {
                db.conn()
                    .query_row(
                        "SELECT addrs FROM peer_addrs WHERE peer = ?1",
                        [peer.to_bytes()],
                        |r| r.get(0),
                    )
                    .optional()
            })
            .ok()
            .and_then(Result::ok)
            .flatten();
        let Some(blob) = blob else { return Vec::new() };
        let mut r = securecomm_noise::codec::Reader::new(&blob);
        let n = r.u8().map(usize::from).unwrap_or(0).min(MAX_PEER_ADDRS);
        (0..n)
            .map_while(|_| r.bytes16("address", 512).ok())
            .filter_map(|b| Multiaddr::try_from(b.to_vec()).ok())
            .collect()
    }

    /// Dials guild members that are not connected, at their stored addresses and through every
    /// relay this node holds a reservation on, with a backoff per peer (from [`TICK`] doubling
    /// to a minute).
    ///
    /// The relays matter for members who never met: a joiner learns only the inviter's
    /// addresses, so without them every member was connected to the inviter alone (netsim
    /// showed it), the inviter a single point of failure and no pair of other members ever
    /// went direct. Through a shared relay the pair connects relayed, and hole punching then
    /// upgrades it where the NATs allow.
    async fn reconnect(&self, backoff: &mut HashMap<PeerId, (tokio::time::Instant, Duration)>) {
        let Ok(connected) = self.inner.net.peers().await else {
            return;
        };
        let me = self.inner.net.peer_id();
        // One address per reserved relay, ending in `/p2p/<relay>`.
        let via: Vec<Multiaddr> = self
            .inner
            .net
            .relays()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.state == crate::net::RelayState::Reserved)
            .filter_map(|r| r.addrs.into_iter().next())
            .take(MAX_RELAYS_PER_REDIAL)
            .collect();
        let connected: HashSet<PeerId> = connected.into_iter().map(|p| p.peer).collect();
        let now = tokio::time::Instant::now();
        backoff.retain(|p, _| !connected.contains(p));
        if let Ok(mut lost) = self.inner.lost.lock() {
            lost.retain(|p| !connected.contains(p));
        }
        let mut circuit_budget = MAX_CIRCUIT_DIALS_PER_ROUND;
        for peer in self.member_peers() {
            if connected.contains(&peer) {
                continue;
            }
            let (next, delay) = backoff.get(&peer).copied().unwrap_or((now, TICK));
            if next > now {
                continue;
            }
            backoff.insert(
                peer,
                (now + delay, (delay * 2).min(Duration::from_secs(60))),
            );
            // Through a relay only one side of a pair dials at first (the smaller peer id), so a
            // pair holds one circuit, not two: a member without UDP is relayed to everyone and
            // the relay's per-peer circuit limit (16) was reached in a guild of 16. The other
            // side joins in once its backoff shows the first never got through.
            // A pair that was connected a moment ago reconnects from both sides at once.
            let was_connected = self.inner.lost.lock().is_ok_and(|l| l.contains(&peer));
            let relay_turn = me < peer || delay >= RELAY_DIAL_FALLBACK || was_connected;
            // One attempt over the direct addresses (tried together), one over the relay
            // circuits (one at a time, so a pair holds one circuit, not one per address: a
            // member reachable only through a relay was denied circuits once every peer
            // dialled its three circuit addresses).
            let (mut direct, mut circuits) = (Vec::new(), Vec::new());
            for a in self.stored_addrs(&peer) {
                let a = if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                    a
                } else {
                    a.with(Protocol::P2p(peer))
                };
                if a.iter().any(|p| p == Protocol::P2pCircuit) {
                    circuits.push(a);
                } else {
                    let _ = self.inner.net.add_address(peer, a.clone()).await;
                    direct.push(a);
                }
            }
            for relay in &via {
                let a = relay
                    .clone()
                    .with(Protocol::P2pCircuit)
                    .with(Protocol::P2p(peer));
                if !circuits.contains(&a) {
                    circuits.insert(0, a);
                }
            }
            if !direct.is_empty() {
                let _ = self.inner.net.dial_peer(peer, direct, 8).await;
            }
            if relay_turn && !circuits.is_empty() {
                if circuit_budget == 0 {
                    // Over budget: this peer's circuit waits for the next round, its backoff
                    // not grown.
                    backoff.insert(peer, (now + TICK, delay));
                    continue;
                }
                circuit_budget -= 1;
                let _ = self.inner.net.dial_peer(peer, circuits, 1).await;
            }
        }
    }

    // ------------------------------------------------------------------ history sync

    /// Marks `gid` due for a history session, with `peer` to ask first, unless its last session
    /// started less than `gap` ago.
    fn history_due(&self, gid: GuildId, peer: Option<PeerId>, gap: Duration) {
        if let Ok(mut h) = self.inner.history.lock() {
            if h.last.get(&gid).is_some_and(|t| t.elapsed() < gap) {
                return;
            }
            let slot = h.due.entry(gid).or_insert(None);
            if peer.is_some() {
                *slot = peer;
            }
        }
    }

    fn on_peer_connected(&self, peer: PeerId) {
        let Some(device) = device_of(&peer) else {
            return;
        };
        let gids: Vec<GuildId> = self
            .with_engine(|e, _| {
                let ids: Vec<GuildId> = e.guilds.keys().copied().collect();
                ids.into_iter()
                    .filter(|g| e.is_member_device(g, &device))
                    .collect()
            })
            .unwrap_or_default();
        for gid in gids {
            self.history_due(gid, Some(peer), Duration::ZERO);
        }
    }

    /// Starts a session for every due guild that is keyed and has a member connected.
    async fn start_history(&self) {
        let due: Vec<(GuildId, Option<PeerId>)> = match self.inner.history.lock() {
            Ok(h) => h
                .due
                .iter()
                .filter(|(g, _)| !h.running.contains(g))
                .map(|(g, p)| (*g, *p))
                .collect(),
            Err(_) => return,
        };
        if due.is_empty() {
            return;
        }
        let Ok(connected) = self.inner.net.peers().await else {
            return;
        };
        let connected: HashSet<PeerId> = connected.into_iter().map(|p| p.peer).collect();
        for (gid, hint) in due {
            let candidates: Vec<PeerId> = self
                .with_engine(|e, _| {
                    let me = e.keys.me;
                    match e.guilds.get_mut(&gid) {
                        Some(g) if g.keyed() => g
                            .member_devices()
                            .iter()
                            .filter(|d| **d != me)
                            .filter_map(peer_of)
                            .filter(|p| connected.contains(p))
                            .collect(),
                        _ => Vec::new(),
                    }
                })
                .unwrap_or_default();
            let Some(peer) = hint
                .filter(|p| candidates.contains(p))
                .or_else(|| candidates.first().copied())
            else {
                continue;
            };
            if let Ok(mut h) = self.inner.history.lock() {
                h.due.remove(&gid);
                h.running.insert(gid);
                h.last.insert(gid, tokio::time::Instant::now());
            }
            let s = self.clone();
            self.spawn(async move {
                let r = s.sync_history(&gid, peer).await;
                match &r {
                    Ok(st) if st.stored > 0 => {
                        tracing::info!(stored = st.stored, pages = st.pages, "history caught up")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::info!(%peer, error = %e, "history session failed"),
                }
                if let Ok(mut h) = s.inner.history.lock() {
                    h.running.remove(&gid);
                    if let Ok(st) = &r {
                        h.totals.add(st);
                    }
                }
            });
        }
    }

    /// What every history session of this service did, summed.
    pub fn history_totals(&self) -> HistoryStats {
        self.inner
            .history
            .lock()
            .map(|h| h.totals.clone())
            .unwrap_or_default()
    }

    /// Sends owed delivery receipts to connected senders.
    /// Nudges every connected member whose receipt does not cover one of this device's
    /// messages published [`REPAIR_AFTER`] to [`REPAIR_WINDOW`] ago (each member at most once
    /// per [`NUDGE_EVERY`] and guild): gossip can lose a message into a connection that died
    /// without either end knowing yet, and without this the member found out only at the
    /// next history round (up to a minute; netsim's chaos runs saw 5-36 s).
    async fn repair_round(&self) {
        let now = tokio::time::Instant::now();
        let mut due: BTreeMap<GuildId, Vec<u64>> = BTreeMap::new();
        if let Ok(mut r) = self.inner.recent_sends.lock() {
            while r.front().is_some_and(|(_, _, t)| now - *t > REPAIR_WINDOW) {
                r.pop_front();
            }
            for (gid, seq, t) in r.iter() {
                if now - *t >= REPAIR_AFTER {
                    due.entry(*gid).or_default().push(*seq);
                }
            }
        }
        if due.is_empty() {
            return;
        }
        let connected = self.connected().await;
        for (gid, seqs) in due {
            let Ok(Ok((devices, receipts))) = self.with_engine(|e, db| {
                let me = e.keys.me;
                let devices: Vec<DevicePublicKey> = match e.guilds.get_mut(&gid) {
                    Some(g) => g
                        .member_devices()
                        .into_iter()
                        .filter(|d| *d != me)
                        .collect(),
                    None => Vec::new(),
                };
                history::receipts(db.conn(), &gid).map(|r| (devices, r))
            }) else {
                continue;
            };
            for d in devices {
                let Some(peer) = peer_of(&d).filter(|p| connected.contains(p)) else {
                    continue;
                };
                let held = receipts.get(&d);
                if seqs.iter().all(|s| held.is_some_and(|r| r.contains(*s))) {
                    continue;
                }
                let fresh = match self.inner.nudged.lock() {
                    Ok(mut n) => {
                        n.retain(|_, t| now - *t < NUDGE_EVERY);
                        if n.contains_key(&(gid, peer)) || n.len() >= MAX_RECEIPTS_DUE {
                            false
                        } else {
                            n.insert((gid, peer), now);
                            true
                        }
                    }
                    Err(_) => false,
                };
                if fresh {
                    tracing::debug!(%peer, "nudging a member that has not confirmed recent messages");
                    let net = self.inner.net.clone();
                    let bytes = history::Nudge { guild: gid }.to_bytes();
                    self.spawn(async move {
                        let _ = net.request(peer, bytes).await;
                    });
                }
            }
        }
    }

    async fn send_receipts(&self) {
        let due: Vec<(GuildId, DevicePublicKey)> = match self.inner.history.lock() {
            Ok(mut h) => h.receipts_due.drain().collect(),
            Err(_) => return,
        };
        if due.is_empty() {
            return;
        }
        let connected = self.connected().await;
        for (gid, sender) in due {
            let Some(peer) = peer_of(&sender).filter(|p| connected.contains(p)) else {
                continue;
            };
            let Ok(Ok(held)) =
                self.with_engine(|_, db| history::held_from(db.conn(), &gid, &sender))
            else {
                continue;
            };
            let r = history::Receipt {
                guild: gid,
                held: held.to_wire(),
            };
            let _ = self.inner.net.request(peer, r.to_bytes()).await;
        }
    }

    /// The responder's side of history sync (requests and receipts).
    fn answer_history(&self, peer: PeerId, data: &[u8]) -> HistoryResponse {
        let refused = |s: &str| HistoryResponse::Refused(s.to_owned());
        let Some(device) = device_of(&peer) else {
            return refused("unsupported peer key");
        };
        if data.get(1) == Some(&5) {
            let Ok(n) = history::Nudge::from_bytes(data) else {
                return refused("malformed nudge");
            };
            return match self.with_engine(|e, _| e.is_member_device(&n.guild, &device)) {
                Ok(true) => {
                    self.history_due(n.guild, Some(peer), Duration::ZERO);
                    HistoryResponse::Page {
                        items: Vec::new(),
                        more: false,
                    }
                }
                _ => refused("not a member of that guild"),
            };
        }
        if data.get(1) == Some(&4) {
            let Ok(r) = history::Receipt::from_bytes(data) else {
                return refused("malformed receipt");
            };
            let ok = self.with_engine(|e, db| {
                e.is_member_device(&r.guild, &device)
                    && history::record_receipt(
                        db.conn(),
                        &r.guild,
                        &device,
                        &r.held,
                        engine::now_ms(),
                    )
                    .is_ok()
            });
            return match ok {
                Ok(true) => HistoryResponse::Page {
                    items: Vec::new(),
                    more: false,
                },
                _ => refused("not a member of that guild"),
            };
        }
        let Ok(req) = HistoryRequest::from_bytes(data) else {
            return refused("malformed request");
        };
        match self.with_engine(|e, db| {
            if e.is_member_device(&req.guild, &device) {
                history::serve(db.conn(), &req).map_err(|e| e.to_string())
            } else {
                Ok(refused("not a member of that guild"))
            }
        }) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "serving history failed");
                refused("internal error")
            }
            Err(_) => refused("internal error"),
        }
    }

    /// Fetches from `peer` the messages of `gid` this node lacks, page by page, validating each
    /// like live gossip. Returns what it did.
    pub async fn sync_history(
        &self,
        gid: &GuildId,
        peer: PeerId,
    ) -> Result<HistoryStats, GuildError> {
        let (since, mut held) = self.with_engine(|_, db| {
            Ok::<_, SyncError>((
                history::since(db.conn(), gid)?,
                history::held(db.conn(), gid)?,
            ))
        })??;
        let mut st = HistoryStats::default();
        let t0 = std::time::Instant::now();
        for _ in 0..history::MAX_PAGES {
            let req = history::request(*gid, since, &held).to_bytes();
            st.sent_bytes += req.len();
            let resp = self
                .inner
                .net
                .request(peer, req)
                .await
                .map_err(GuildError::Net)?;
            st.bytes += resp.len();
            let (items, more) = match HistoryResponse::from_bytes(&resp) {
                Ok(HistoryResponse::Page { items, more }) => (items, more),
                Ok(HistoryResponse::Refused(r)) => {
                    return Err(GuildError::Invalid(format!(
                        "history refused by {peer}: {r}"
                    )));
                }
                Err(e) => return Err(GuildError::Invalid(format!("bad history page: {e}"))),
            };
            st.pages += 1;
            st.items += items.len();
            for chunk in items.chunks(HISTORY_CHUNK) {
                let (msgs, bad) = self.with_engine(|e, db| {
                    let mut fresh: Vec<(DevicePublicKey, u64, &[u8])> = Vec::new();
                    for it in chunk {
                        held.entry(it.sender).or_default().insert(it.seq);
                        if history::holds(db.conn(), gid, &it.sender, it.seq)? {
                            st.duplicates += 1;
                        } else {
                            fresh.push((it.sender, it.seq, &it.envelope));
                        }
                    }
                    let mut msgs = Vec::new();
                    let mut bad = None;
                    for v in e.on_history_items(db.conn_mut(), gid, &fresh)? {
                        match v {
                            Verdict::Accept(Some(m)) => {
                                st.stored += 1;
                                msgs.push(m);
                            }
                            Verdict::Accept(None) => st.duplicates += 1,
                            Verdict::Ignore(_) => st.undecryptable += 1,
                            Verdict::Reject(why) => bad = bad.or(Some(why)),
                        }
                    }
                    Ok::<_, SyncError>((msgs, bad))
                })??;
                for m in msgs {
                    self.emit(GuildEvent::Message(m));
                }
                if let Some(why) = bad {
                    return Err(GuildError::Invalid(format!(
                        "peer {peer} served a bad history item: {why}"
                    )));
                }
            }
            if !more {
                break;
            }
        }
        st.millis = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(st)
    }

    // ------------------------------------------------------------------ direct messages

    /// Writes this device's DM prekey bundle and mailbox announcement into `gid`'s log unless
    /// they are there already.
    async fn publish_bundle(&self, gid: &GuildId) {
        self.publish_dm_bundle(gid).await;
        self.announce_mailbox(gid).await;
    }

    async fn publish_dm_bundle(&self, gid: &GuildId) {
        let key = format!("dm_published:{}", hex::encode(gid.0));
        let r = self.with_engine(|_, db| -> Result<Option<Vec<u8>>, GuildError> {
            let b = dm::published_bundle(db, &self.inner.dm.me)?;
            let spk = b.signed_prekey_id.to_be_bytes();
            let done = db
                .get(&key)
                .map_err(|e| GuildError::Invalid(e.to_string()))?
                .is_some_and(|v| v == spk);
            Ok((!done).then(|| super::wire::LogPayload::DmBundle(b).to_bytes()))
        });
        let payload = match r {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => return,
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "cannot prepare the DM prekey bundle");
                return;
            }
        };
        let spk = super::wire::LogPayload::from_bytes(&payload)
            .ok()
            .and_then(|p| match p {
                super::wire::LogPayload::DmBundle(b) => Some(b.signed_prekey_id),
                _ => None,
            });
        match self.inner.sync.insert(group(gid), payload).await {
            Ok(_) => {
                if let Some(spk) = spk {
                    let _ = self.with_engine(|_, db| db.put(&key, &spk.to_be_bytes()));
                }
            }
            Err(e) => tracing::debug!(error = %e, "DM prekey bundle not published yet"),
        }
    }

    /// The devices of `user` in every guild this node is in.
    fn devices_of_user(
        &self,
        user: &RootPublicKey,
    ) -> Result<BTreeSet<DevicePublicKey>, GuildError> {
        self.with_engine(|e, _| {
            let mut out = BTreeSet::new();
            for g in e.guilds.values_mut() {
                if let Some(m) = g.crdt.view().member(user) {
                    out.extend(m.devices.iter().copied());
                }
            }
            out
        })
    }

    /// The user a device belongs to, in any guild this node is in.
    fn user_of_device(&self, device: &DevicePublicKey) -> Option<RootPublicKey> {
        self.with_engine(|e, _| {
            e.guilds
                .values_mut()
                .find_map(|g| g.crdt.view().user_of_device(device).copied())
        })
        .ok()
        .flatten()
    }

    /// `dm send USER TEXT`: encrypts to every device of `user` and queues delivery.
    pub async fn dm_send(&self, user: &str, text: &str) -> Result<Value, GuildError> {
        if text.len() > dm::MAX_DM_TEXT {
            return Err(GuildError::Invalid(format!(
                "message too long: at most {} bytes, got {}",
                dm::MAX_DM_TEXT,
                text.len()
            )));
        }
        let target = self.find_user(user)?;
        let me_user = self.with_engine(|e, _| e.keys.user)?;
        if target == me_user {
            return Err(GuildError::Invalid(
                "that is you: direct messages go to other users".into(),
            ));
        }
        let devices = self.devices_of_user(&target)?;
        let with_session = self.with_engine(|_, db| dm::devices_with_sessions(db.conn()))??;
        let connected = self.connected().await;
        let mut targets = Vec::new();
        for d in devices {
            if with_session.contains(&d) {
                targets.push((d, None));
                continue;
            }
            let mut bundle = None;
            if let Some(peer) = peer_of(&d).filter(|p| connected.contains(p)) {
                match self
                    .inner
                    .net
                    .request(peer, DmRequest::Bundle.to_bytes())
                    .await
                    .map(|b| DmResponse::from_bytes(&b))
                {
                    Ok(Ok(DmResponse::Bundle(b)))
                        if b.identity.signing == d && b.verify().is_ok() =>
                    {
                        bundle = Some(b)
                    }
                    _ => tracing::debug!(%peer, "no DM bundle from a connected device"),
                }
            }
            if bundle.is_none() {
                bundle = self.with_engine(|_, db| dm::stored_bundle(db.conn(), &d))??;
            }
            targets.push((d, bundle));
        }
        let mut msg_id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut msg_id);
        let now = engine::now_ms();
        let payload = DmPayload {
            msg_id,
            sent_at: now,
            text: text.to_owned(),
        };
        let peer_user = target.to_bytes();
        self.with_engine(|_, db| {
            dm::send(db, &self.inner.dm.me, &peer_user, &targets, &payload, now)
        })??;
        self.flush_dms().await;
        let h = self.with_engine(|_, db| dm::history(db.conn(), &peer_user, 1))??;
        let m = h
            .into_iter()
            .find(|m| m.id == hex::encode(msg_id))
            .ok_or_else(|| GuildError::Invalid("the message vanished".into()))?;
        Ok(serde_json::to_value(m).unwrap_or(Value::Null))
    }

    /// `dm history USER`: the latest `limit` DMs with `user`, oldest first.
    pub fn dm_history(&self, user: &str, limit: usize) -> Result<Value, GuildError> {
        let target = self.find_user(user)?;
        let h = self.with_engine(|_, db| dm::history(db.conn(), &target.to_bytes(), limit))??;
        Ok(serde_json::to_value(h).unwrap_or(Value::Null))
    }

    /// Delivers due DMs to connected devices; the others wait with a backoff.
    async fn flush_dms(&self) {
        let Ok(_guard) = self.inner.dm_flush.try_lock() else {
            return;
        };
        let now = engine::now_ms();
        let Ok(Ok(due)) = self.with_engine(|_, db| dm::due(db.conn(), now, 256)) else {
            return;
        };
        if due.is_empty() {
            return;
        }
        let connected = self.connected().await;
        for d in due {
            let state = match peer_of(&d.device).filter(|p| connected.contains(p)) {
                Some(peer) => matches!(
                    self.inner
                        .net
                        .request(peer, DmRequest::Deliver(d.message.clone()).to_bytes())
                        .await
                        .map(|b| DmResponse::from_bytes(&b)),
                    Ok(Ok(DmResponse::Delivered))
                )
                .then_some("delivered"),
                None => match self.deposit_dm(&d.device, &d.message).await {
                    Some((relay, item)) => {
                        let _ = self.with_engine(|_, db| {
                            dm::mark_deposited(db.conn(), d.id, &relay.to_vec(), item)
                        });
                        continue;
                    }
                    None => None,
                },
            };
            let _ = self.with_engine(|_, db| match state {
                Some(st) => dm::mark(db.conn(), d.id, st),
                None => dm::backoff(db.conn(), &d, engine::now_ms()),
            });
        }
    }

    // ------------------------------------------------------------------ mailboxes

    /// Sets the relays this node picks mail up from (its reservation relays) and announces
    /// them in every guild.
    pub async fn set_relays(&self, relays: Vec<Multiaddr>) {
        if let Ok(mut r) = self.inner.relays.lock() {
            *r = relays
                .into_iter()
                .filter(|a| matches!(a.iter().last(), Some(Protocol::P2p(_))))
                .take(super::mailbox::MAX_ANNOUNCED_RELAYS)
                .collect();
        }
        let ids: Vec<GuildId> = self
            .with_engine(|e, _| e.guilds.keys().copied().collect())
            .unwrap_or_default();
        for gid in ids {
            self.announce_mailbox(&gid).await;
        }
    }

    fn own_relays(&self) -> Vec<Multiaddr> {
        self.inner
            .relays
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    async fn announce_mailbox(&self, gid: &GuildId) {
        let relays = self.own_relays();
        if relays.is_empty() {
            return;
        }
        let a = super::mailbox::Announcement {
            tag: securecomm_rendezvous::mailbox::tag_for(
                &self.inner.mailbox_key.public().to_bytes(),
            ),
            relays: relays.iter().map(|r| r.to_vec()).collect(),
        };
        let key = format!("mb_announced:{}", hex::encode(gid.0));
        let bytes = a.to_bytes();
        let done = self
            .with_engine(|_, db| db.get(&key).ok().flatten())
            .ok()
            .flatten()
            .is_some_and(|v| v == bytes);
        if done {
            return;
        }
        let payload = super::wire::LogPayload::Mailbox(a).to_bytes();
        match self.inner.sync.insert(group(gid), payload).await {
            Ok(_) => {
                let _ = self.with_engine(|_, db| db.put(&key, &bytes));
            }
            Err(e) => tracing::debug!(error = %e, "mailbox announcement not published yet"),
        }
    }

    /// Dials `addr`'s relay unless connected; returns its peer id once connected.
    async fn relay_peer(&self, addr: &Multiaddr, connected: &HashSet<PeerId>) -> Option<PeerId> {
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            return None;
        };
        if connected.contains(&peer) {
            return Some(peer);
        }
        let _ = self.inner.net.add_address(peer, addr.clone()).await;
        let _ = self.inner.net.dial(addr.clone()).await;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(p) = self.inner.net.peers().await
                && p.iter().any(|x| x.peer == peer)
            {
                return Some(peer);
            }
        }
        None
    }

    /// Users (hex ids) with a device connected to this node right now, across every guild,
    /// this node's own user included: the member list's presence.
    pub async fn online_users(&self) -> HashSet<String> {
        let devices: HashSet<DevicePublicKey> = self
            .connected()
            .await
            .iter()
            .filter_map(device_of)
            .collect();
        self.with_engine(|e, _| {
            let mut out = HashSet::from([hex::encode(e.keys.user.as_bytes())]);
            for g in e.guilds.values_mut() {
                for (u, m) in g.crdt.view().members() {
                    if m.devices.iter().any(|d| devices.contains(d)) {
                        out.insert(hex::encode(u.as_bytes()));
                    }
                }
            }
            out
        })
        .unwrap_or_default()
    }

    async fn connected(&self) -> HashSet<PeerId> {
        self.inner
            .net
            .peers()
            .await
            .map(|v| v.into_iter().map(|p| p.peer).collect())
            .unwrap_or_default()
    }

    /// Deposits this device's recent messages of `gid` for members that are offline, hold no
    /// copy (by their receipts) and have no deposit yet, one deposit per relay. Returns whether
    /// everything that should be deposited was.
    async fn deposit_guild(&self, gid: &GuildId) -> bool {
        let connected = self.connected().await;
        type Plan = Vec<(
            u64,
            Vec<u8>,
            Option<u32>,
            Vec<(DevicePublicKey, [u8; 32], Multiaddr)>,
        )>;
        let plan: Result<Result<Plan, SyncError>, GuildError> = self.with_engine(|e, db| {
            let me = e.keys.me;
            let Some(g) = e.guilds.get_mut(gid) else {
                return Ok(Vec::new());
            };
            let others: Vec<DevicePublicKey> = g
                .member_devices()
                .into_iter()
                .filter(|d| *d != me && !peer_of(d).is_some_and(|p| connected.contains(&p)))
                .collect();
            if others.is_empty() {
                return Ok(Vec::new());
            }
            let receipts = history::receipts(db.conn(), gid)?;
            // With the timer of the message (or of the message an operation targets), so the
            // relay drops a disappearing message's deposit when the message disappears.
            let mine: Vec<(i64, Vec<u8>, Option<i64>)> = db
                .conn()
                .prepare_cached(
                    "SELECT e.seq, e.envelope,
                        (SELECT MIN(m.expires_at) FROM guild_messages m WHERE m.guild = e.guild
                            AND (m.msg_id = e.msg_id OR m.msg_id = e.target))
                     FROM guild_envelopes e WHERE e.guild = ?1 AND e.sender = ?2
                        AND length(e.envelope) > 0
                     ORDER BY e.seq DESC LIMIT ?3",
                )?
                .query_map(
                    rusqlite::params![
                        &gid.0[..],
                        &me.as_bytes()[..],
                        i64::try_from(DEPOSIT_WINDOW).unwrap_or(0)
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect::<Result<_, _>>()?;
            let mut plan = Vec::new();
            let now = engine::now_ms();
            for (seq, env, expires_at) in mine {
                let seq = u64::try_from(seq).unwrap_or(0);
                let ttl = expires_at.map(|t| {
                    let left = u64::try_from(t).unwrap_or(0).saturating_sub(now);
                    u32::try_from(left.div_ceil(1000)).unwrap_or(u32::MAX)
                });
                if ttl == Some(0) {
                    continue;
                }
                let mut who = Vec::new();
                for d in &others {
                    if receipts.get(d).is_some_and(|r| r.contains(seq)) {
                        continue;
                    }
                    let done: i64 = db
                        .conn()
                        .prepare_cached(
                            "SELECT COUNT(*) FROM guild_deposits WHERE guild = ?1 AND seq = ?2 AND device = ?3",
                        )?
                        .query_row(
                            rusqlite::params![&gid.0[..], i64::try_from(seq).unwrap_or(0), &d.as_bytes()[..]],
                            |r| r.get(0),
                        )?;
                    if done > 0 {
                        continue;
                    }
                    let Some(a) = super::mailbox::announcement(db.conn(), d)? else {
                        continue;
                    };
                    let Some(relay) = a
                        .relays
                        .iter()
                        .find_map(|b| Multiaddr::try_from(b.clone()).ok())
                    else {
                        continue;
                    };
                    who.push((*d, a.tag, relay));
                }
                if !who.is_empty() {
                    let blob = super::mailbox::seal(
                        &g.secret,
                        &super::mailbox::BlobBody::Guild {
                            guild: *gid,
                            sender: me,
                            seq,
                            envelope: env,
                        },
                    );
                    plan.push((seq, blob, ttl, who));
                }
            }
            Ok(plan)
        });
        let plan = match plan {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "planning mailbox deposits failed");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "planning mailbox deposits failed");
                return false;
            }
        };
        let mut complete = true;
        for (seq, blob, ttl, who) in plan {
            let mut by_relay: HashMap<Multiaddr, Vec<(DevicePublicKey, [u8; 32])>> = HashMap::new();
            for (d, tag, relay) in who {
                by_relay.entry(relay).or_default().push((d, tag));
            }
            for (relay, targets) in by_relay {
                let Some(peer) = self.relay_peer(&relay, &connected).await else {
                    complete = false;
                    continue;
                };
                for chunk in targets.chunks(securecomm_rendezvous::mailbox::wire::MAX_TAGS) {
                    let Ok(dep) = securecomm_rendezvous::mailbox::wire::Deposit::new(
                        chunk.iter().map(|(_, t)| *t),
                        blob.clone(),
                    ) else {
                        continue;
                    };
                    let dep = match ttl {
                        Some(t) => dep.with_ttl(t),
                        None => dep,
                    };
                    match self
                        .inner
                        .net
                        .mailbox(
                            peer,
                            securecomm_rendezvous::mailbox::wire::Request::Deposit(dep),
                        )
                        .await
                    {
                        Ok(securecomm_rendezvous::mailbox::wire::Response::Stored { .. }) => {
                            let _ = self.with_engine(|_, db| -> rusqlite::Result<()> {
                                for (d, _) in chunk {
                                    db.conn().execute(
                                        "INSERT OR IGNORE INTO guild_deposits (guild, seq, device) VALUES (?1, ?2, ?3)",
                                        rusqlite::params![&gid.0[..], i64::try_from(seq).unwrap_or(0), &d.as_bytes()[..]],
                                    )?;
                                }
                                Ok(())
                            });
                        }
                        Ok(other) => {
                            complete = false;
                            tracing::info!(%peer, answer = ?other, "mailbox deposit refused; retrying later")
                        }
                        Err(e) => {
                            complete = false;
                            tracing::info!(%peer, error = %e, "mailbox deposit failed")
                        }
                    }
                }
            }
        }
        complete
    }

    /// Deposits a queued DM for `device` on its mailbox; the relay and item id once stored.
    async fn deposit_dm(
        &self,
        device: &DevicePublicKey,
        message: &[u8],
    ) -> Option<(Multiaddr, u64)> {
        let found = self.with_engine(|e, db| {
            let me = e.keys.me;
            let secret = e.guilds.values_mut().find_map(|g| {
                let members = g.member_devices();
                (members.contains(device) && members.contains(&me))
                    .then(|| (g.id, g.secret.clone()))
            });
            let a = super::mailbox::announcement(db.conn(), device)
                .ok()
                .flatten();
            (me, secret, a)
        });
        let Ok((me, Some((gid, secret)), Some(a))) = found else {
            return None;
        };
        let relay = a
            .relays
            .iter()
            .find_map(|b| Multiaddr::try_from(b.clone()).ok())?;
        let connected = self.connected().await;
        let peer = self.relay_peer(&relay, &connected).await?;
        let blob = super::mailbox::seal(
            &secret,
            &super::mailbox::BlobBody::Dm {
                guild: gid,
                sender: me,
                message: message.to_vec(),
            },
        );
        let dep = securecomm_rendezvous::mailbox::wire::Deposit::new([a.tag], blob).ok()?;
        match self
            .inner
            .net
            .mailbox(
                peer,
                securecomm_rendezvous::mailbox::wire::Request::Deposit(dep),
            )
            .await
        {
            Ok(securecomm_rendezvous::mailbox::wire::Response::Stored { id, .. }) => {
                Some((relay, id))
            }
            _ => None,
        }
    }

    /// Asks relays about deposited DMs: picked up (every recipient acknowledged) becomes
    /// `picked-up`; expired or forgotten goes back to the queue to be sent again.
    async fn dm_pickup_status(&self) {
        use securecomm_rendezvous::mailbox::wire::{ItemState, Request, Response};
        let Ok(Ok(rows)) = self.with_engine(|_, db| dm::deposited(db.conn(), 512)) else {
            return;
        };
        let mut by_relay: HashMap<Vec<u8>, Vec<(i64, u64)>> = HashMap::new();
        for (id, relay, item) in rows {
            by_relay.entry(relay).or_default().push((id, item));
        }
        let connected = self.connected().await;
        for (relay, rows) in by_relay {
            let Ok(addr) = Multiaddr::try_from(relay) else {
                continue;
            };
            let Some(peer) = self.relay_peer(&addr, &connected).await else {
                continue;
            };
            let ids: Vec<u64> = rows.iter().map(|(_, item)| *item).collect();
            let Ok(Response::Status { entries }) =
                self.inner.net.mailbox(peer, Request::Status { ids }).await
            else {
                continue;
            };
            let _ = self.with_engine(|_, db| -> Result<(), GuildError> {
                for ((row, _), (_, state)) in rows.iter().zip(&entries) {
                    match state {
                        ItemState::Remaining(0) => dm::mark(db.conn(), *row, "picked-up")?,
                        ItemState::Expired(_) | ItemState::Unknown => dm::requeue(db.conn(), *row)?,
                        ItemState::Remaining(_) => {}
                    }
                }
                Ok(())
            });
        }
    }

    /// One mailbox round: deposit for offline members of every guild, then pick up and
    /// acknowledge this device's mail on each of its relays.
    async fn mailbox_round(&self) {
        let Ok(_guard) = self.inner.mailbox_busy.try_lock() else {
            return;
        };
        let due: Vec<GuildId> = self
            .inner
            .deposit_due
            .lock()
            .map(|mut d| d.drain().collect())
            .unwrap_or_default();
        for gid in &due {
            if !self.deposit_guild(gid).await
                && let Ok(mut d) = self.inner.deposit_due.lock()
            {
                d.insert(*gid);
            }
        }
        self.dm_pickup_status().await;
        let connected = self.connected().await;
        for relay in self.own_relays() {
            let Some(peer) = self.relay_peer(&relay, &connected).await else {
                continue;
            };
            let mut after = 0;
            for _ in 0..16 {
                match self.pickup_page(peer, after).await {
                    Some(last) => after = last,
                    None => break,
                }
            }
        }
    }

    /// Picks up one page from `relay` after item `after`, stores what it can, acknowledges it;
    /// returns the last item id when more wait.
    async fn pickup_page(&self, relay: PeerId, after: u64) -> Option<u64> {
        use securecomm_rendezvous::mailbox::wire::{PickupAuth, Request, Response};
        let now = engine::now_ms() / 1000;
        let auth = PickupAuth::sign(&self.inner.mailbox_key, &relay, now);
        let req = Request::Pickup {
            auth,
            after,
            max_items: 256,
            max_bytes: 8 << 20,
        };
        let (items, more) = match self.inner.net.mailbox(relay, req).await {
            Ok(Response::Page { items, more }) => (items, more),
            Ok(other) => {
                tracing::debug!(%relay, answer = ?other, "mailbox pickup refused");
                return None;
            }
            Err(e) => {
                tracing::debug!(%relay, error = %e, "mailbox pickup failed");
                return None;
            }
        };
        let last = items.last().map(|i| i.id)?;
        let mut acks = Vec::new();
        for it in &items {
            let secrets: Vec<Secret32Pair> = self
                .with_engine(|e, _| {
                    e.guilds
                        .values()
                        .map(|g| (g.id, g.secret.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let body = secrets
                .iter()
                .find_map(|(_, s)| super::mailbox::open(s, &it.blob));
            let done = match body {
                None => true, // not for any guild of ours: nothing will ever open it
                Some(super::mailbox::BlobBody::Guild {
                    guild,
                    sender,
                    seq,
                    envelope,
                }) => {
                    let r = self.with_engine(|e, db| -> Result<Verdict, SyncError> {
                        if history::holds(db.conn(), &guild, &sender, seq)? {
                            return Ok(Verdict::Accept(None));
                        }
                        Ok(e.on_history_items(
                            db.conn_mut(),
                            &guild,
                            &[(sender, seq, envelope.as_slice())],
                        )?
                        .pop()
                        .unwrap_or(Verdict::Ignore("no verdict")))
                    });
                    match r {
                        Ok(Ok(Verdict::Accept(Some(m)))) => {
                            self.emit(GuildEvent::Message(m));
                            true
                        }
                        Ok(Ok(Verdict::Accept(None) | Verdict::Reject(_))) => true,
                        _ => false,
                    }
                }
                Some(super::mailbox::BlobBody::Dm {
                    sender, message, ..
                }) => match self.user_of_device(&sender) {
                    None => true,
                    // Stored, already held, or never readable: done with it either way.
                    Some(user) => self.take_dm(&sender, &user, &message).is_ok(),
                },
            };
            if done {
                acks.push(it.id);
            }
        }
        if !acks.is_empty() {
            let auth = PickupAuth::sign(&self.inner.mailbox_key, &relay, now);
            let _ = self
                .inner
                .net
                .mailbox(relay, Request::Ack { auth, ids: acks })
                .await;
        }
        more.then_some(last)
    }

    /// Decrypts and stores a DM from `device` of `user` and announces it if new. The outer
    /// error is this node's (database, lock); the inner one says the DM itself was refused.
    fn take_dm(
        &self,
        device: &DevicePublicKey,
        user: &RootPublicKey,
        bytes: &[u8],
    ) -> Result<Result<(), GuildError>, GuildError> {
        let r = self.with_engine(|_, db| {
            dm::receive(
                db,
                &self.inner.dm.me,
                device,
                &user.to_bytes(),
                bytes,
                engine::now_ms(),
            )
        })?;
        Ok(match r {
            Ok(dm::Received::New(m)) => {
                self.emit(GuildEvent::Dm(m));
                Ok(())
            }
            Ok(dm::Received::Duplicate) => Ok(()),
            Err(e) => Err(e),
        })
    }

    /// Answers a DM request from a connected device.
    fn answer_dm(&self, peer: PeerId, data: &[u8]) -> DmResponse {
        let refused = |s: &str| DmResponse::Refused(s.to_owned());
        let Some(device) = device_of(&peer) else {
            return refused("unsupported peer key");
        };
        let Some(user) = self.user_of_device(&device) else {
            return refused("direct messages are accepted from guild members only");
        };
        let req = match DmRequest::from_bytes(data) {
            Ok(r) => r,
            Err(_) => return refused("malformed request"),
        };
        match req {
            DmRequest::Bundle => {
                match self.with_engine(|_, db| dm::bundle_for_peer(db, &self.inner.dm.me)) {
                    Ok(Ok(b)) => DmResponse::Bundle(b),
                    _ => refused("internal error"),
                }
            }
            DmRequest::Deliver(bytes) => match self.take_dm(&device, &user, &bytes) {
                Ok(Ok(())) => DmResponse::Delivered,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "direct message refused");
                    refused("does not decrypt")
                }
                Err(_) => refused("internal error"),
            },
        }
    }

    /// A user's root key by id or nickname, searched in every guild (for `safety-number`).
    pub fn find_user(&self, user: &str) -> Result<RootPublicKey, GuildError> {
        self.with_engine(|e, _| {
            let mut found = BTreeSet::new();
            for g in e.guilds.values_mut() {
                if let Ok(u) = resolve_user(g.crdt.view(), user) {
                    found.insert(u.to_bytes());
                }
            }
            let mut it = found.into_iter();
            match (it.next(), it.next()) {
                (Some(b), None) => RootPublicKey::from_bytes(&b)
                    .map_err(|_| GuildError::UnknownUser(user.to_owned())),
                (None, _) => Err(GuildError::UnknownUser(user.to_owned())),
                _ => Err(GuildError::Ambiguous(format!("user {user:?}"))),
            }
        })?
    }
}

async fn run_deliveries(svc: GuildService, mut rx: mpsc::Receiver<Delivery>) {
    while let Some(d) = rx.recv().await {
        let mut groups = BTreeSet::from([d.group]);
        while let Ok(d) = rx.try_recv() {
            groups.insert(d.group);
        }
        svc.after_apply(groups).await;
    }
}

/// A gossip message waiting for validation.
struct Gossip {
    topic: String,
    source: PeerId,
    id: libp2p::gossipsub::MessageId,
    data: Vec<u8>,
}

/// Most gossip messages handled as one batch.
pub const GOSSIP_BATCH: usize = 64;

/// Validates gossip in batches of what queued up meanwhile (see
/// [`GuildService::on_gossip_batch`]).
async fn run_gossip(svc: GuildService, mut rx: mpsc::Receiver<Gossip>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < GOSSIP_BATCH {
            match rx.try_recv() {
                Ok(g) => batch.push(g),
                Err(_) => break,
            }
        }
        svc.on_gossip_batch(batch).await;
    }
}

async fn run_net_events(svc: GuildService, mut events: EventStream) {
    // Bounded: when validation falls behind, this loop waits, and the event stream's own
    // bound applies.
    let (gossip, rx) = mpsc::channel(4 * GOSSIP_BATCH);
    svc.spawn(run_gossip(svc.clone(), rx));
    while let Some(e) = events.next().await {
        match e {
            Event::Gossip {
                topic,
                source,
                id,
                data,
            } => {
                let g = Gossip {
                    topic,
                    source,
                    id,
                    data,
                };
                if gossip.send(g).await.is_err() {
                    return;
                }
            }
            Event::Identified { peer, listen_addrs } => svc.remember_addrs(peer, listen_addrs),
            Event::DirectRequest { peer, id, data } if data.first() == Some(&DIRECT_VERSION) => {
                let s = svc.clone();
                svc.spawn(async move { s.on_direct(peer, id, data).await });
            }
            Event::DirectRequest { peer, id, data } if data.first() == Some(&HISTORY_VERSION) => {
                let resp = svc.answer_history(peer, &data).to_bytes();
                let _ = svc.inner.net.respond(id, resp).await;
            }
            Event::DirectRequest { peer, id, data }
                if data.first() == Some(&messages::TYPING_VERSION) =>
            {
                svc.on_typing(peer, &data);
                let _ = svc
                    .inner
                    .net
                    .respond(id, vec![messages::TYPING_VERSION])
                    .await;
            }
            Event::DirectRequest { peer, id, data }
                if data.first() == Some(&crate::files::wire::FILE_PROTO_VERSION) =>
            {
                let s = svc.clone();
                svc.spawn(async move { s.serve_file(peer, id, data).await });
            }
            Event::DirectRequest { peer, id, data } if data.first() == Some(&DM_VERSION) => {
                let s = svc.clone();
                svc.spawn(async move {
                    let resp = s.answer_dm(peer, &data).to_bytes();
                    let _ = s.inner.net.respond(id, resp).await;
                });
            }
            // A connection that closed while another remains may have swallowed gossip sent
            // into it: ask that peer for what we missed, as on a new connection.
            // A new connection beside an existing one (the other may be dead without knowing it
            // yet) is as good a moment.
            Event::ConnectionLost(peer) | Event::ConnectionAdded(peer) => {
                svc.on_peer_connected(peer)
            }
            Event::PeerDisconnected(peer) => {
                if device_of(&peer).is_some()
                    && let Ok(mut lost) = svc.inner.lost.lock()
                    && lost.len() < MAX_LOST_PEERS
                {
                    lost.insert(peer);
                }
            }
            Event::PeerConnected(peer, _) => {
                svc.on_peer_connected(peer);
                if let Some(d) = device_of(&peer)
                    && svc.with_engine(|_, db| dm::wake(db.conn(), &d)).is_ok()
                {
                    let s = svc.clone();
                    svc.spawn(async move { s.flush_dms().await });
                }
            }
            _ => {}
        }
    }
}

async fn run_ticks(svc: GuildService) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff: HashMap<PeerId, (tokio::time::Instant, Duration)> = HashMap::new();
    let mut every = tokio::time::Instant::now();
    let mut mail = tokio::time::Instant::now();
    let mut files_gc = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if mail.elapsed() >= MAILBOX_EVERY {
            mail = tokio::time::Instant::now();
            let s = svc.clone();
            svc.spawn(async move { s.mailbox_round().await });
        }
        svc.reconnect(&mut backoff).await;
        if every.elapsed() >= HISTORY_EVERY {
            every = tokio::time::Instant::now();
            let ids: Vec<GuildId> = svc
                .with_engine(|e, _| e.guilds.keys().copied().collect())
                .unwrap_or_default();
            for gid in ids {
                svc.history_due(gid, None, Duration::ZERO);
            }
        }
        svc.expire_due();
        if files_gc.elapsed() >= FILES_GC_EVERY {
            files_gc = tokio::time::Instant::now();
            svc.sync_guild_assets();
            svc.collect_files();
        }
        svc.start_history().await;
        svc.send_receipts().await;
        svc.repair_round().await;
        svc.flush_dms().await;
        svc.drain_outq().await;
        let ids: Vec<GuildId> = svc
            .with_engine(|e, _| e.guilds.keys().copied().collect())
            .unwrap_or_default();
        for gid in ids {
            svc.retry_pending(&gid);
        }
    }
}

/// What a voice room needs to know about its guild and channel.
#[derive(Debug, Clone)]
pub struct VoiceRoom {
    /// The guild.
    pub guild: GuildId,
    /// The voice channel.
    pub channel: ChannelId,
    /// The channel's name.
    pub name: String,
    /// Bitrate set on the channel, bits per second.
    pub bitrate: u32,
    /// Most participants (0: no limit).
    pub user_limit: u16,
    /// Whether this node's user may speak there.
    pub may_speak: bool,
    /// Whether this node's user may play soundboard clips there (Speak and Use Soundboard).
    pub may_use_soundboard: bool,
    /// The media-relay room id: `SHA-256("SecureComm/voice-room v1" | guild secret | channel)`,
    /// which only members can compute and which says nothing about the guild or channel.
    pub room_id: [u8; 32],
    /// The other member devices of the guild, as peer ids.
    pub member_peers: Vec<PeerId>,
}

/// What a peer may do in a voice channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoiceRights {
    /// View and connect.
    pub connect: bool,
    /// Speak.
    pub speak: bool,
    /// Play soundboard clips: Speak and Use Soundboard.
    pub soundboard: bool,
}

/// The voice "guild" id of a call between two users: `SHA-256("SecureComm/dm-call v1" | the
/// smaller user id | the larger)`, the same on both sides; its one channel is 0. It never
/// collides with a real guild id (random), and a call's signalling names it like a guild.
pub fn dm_call_id(a: &RootPublicKey, b: &RootPublicKey) -> GuildId {
    let (x, y) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, b"SecureComm/dm-call v1");
    sha2::Digest::update(&mut h, x.as_bytes());
    sha2::Digest::update(&mut h, y.as_bytes());
    GuildId(sha2::Digest::finalize(h).into())
}

impl GuildService {
    /// The voice room of a direct call with `user` (a nickname or user id from a guild both
    /// share): two participants, 64 kbit/s, everyone may speak, no soundboard (it belongs to
    /// guilds). Both sides compute the same room ([`dm_call_id`]), so calling back answers.
    ///
    /// Its media-relay room id is derived from the two public user ids, so anyone who knows
    /// both could join that relay room; it would receive ciphertext it cannot decrypt and
    /// nothing the relay itself does not already see (sizes and timing), and frames it sends
    /// fail authentication.
    pub fn dm_voice_room(&self, user: &str) -> Result<VoiceRoom, GuildError> {
        let target = self.find_user(user)?;
        let me = self.with_engine(|e, _| e.keys.user)?;
        if target == me {
            return Err(GuildError::Invalid(
                "that is you: calls go to other users".into(),
            ));
        }
        let nickname = self
            .with_engine(|e, _| {
                e.guilds
                    .values_mut()
                    .find_map(|g| g.crdt.view().member(&target).map(|m| m.nickname.clone()))
            })?
            .unwrap_or_else(|| user.to_owned());
        let member_peers = self
            .devices_of_user(&target)?
            .iter()
            .filter_map(peer_of)
            .collect();
        let gid = dm_call_id(&me, &target);
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, b"SecureComm/dm-call-room v1");
        sha2::Digest::update(&mut h, gid.0);
        Ok(VoiceRoom {
            guild: gid,
            channel: ChannelId(0),
            name: format!("call with {nickname}"),
            bitrate: 64_000,
            user_limit: 2,
            may_speak: true,
            may_use_soundboard: false,
            room_id: sha2::Digest::finalize(h).into(),
            member_peers,
        })
    }

    /// The user (hex id) a peer's device belongs to, in any guild this node is in.
    pub fn user_of_peer(&self, peer: &PeerId) -> Option<String> {
        let device = device_of(peer)?;
        self.user_of_device(&device)
            .map(|u| hex::encode(u.as_bytes()))
    }

    /// Whether `guild` is one of this node's guilds (not, say, a direct call's room).
    pub fn is_guild(&self, guild: &GuildId) -> bool {
        self.with_engine(|e, _| e.guilds.contains_key(guild))
            .unwrap_or(false)
    }

    /// Whether `peer` is a device of the user this node shares the direct call `guild`
    /// ([`dm_call_id`]) with, on channel 0.
    fn is_dm_call_peer(&self, guild: &GuildId, channel: &ChannelId, peer: &PeerId) -> bool {
        if channel.0 != 0 {
            return false;
        }
        let Some(device) = device_of(peer) else {
            return false;
        };
        let Some(user) = self.user_of_device(&device) else {
            return false;
        };
        self.with_engine(|e, _| dm_call_id(&e.keys.user, &user) == *guild)
            .unwrap_or(false)
    }

    /// The voice room of `channel` in `guild` (names or ids), if this node's user may connect.
    pub fn voice_room(&self, guild: &str, channel: &str) -> Result<VoiceRoom, GuildError> {
        let gid = self.resolve(guild)?;
        self.with_engine(|e, _| {
            let me = e.keys.me;
            let user = e.keys.user;
            let g = e
                .guilds
                .get_mut(&gid)
                .ok_or_else(|| GuildError::UnknownGuild(guild.to_owned()))?;
            let view = g.crdt.view();
            let cid = super::engine::resolve_channel(view, channel)?;
            let ch = view
                .channels()
                .get(&cid)
                .ok_or_else(|| GuildError::UnknownChannel(channel.to_owned()))?;
            if ch.kind != ChannelKind::Voice {
                return Err(GuildError::Invalid(format!(
                    "#{} is not a voice channel",
                    ch.name
                )));
            }
            let perms = view.channel_permissions(&user, &cid);
            if !perms.contains(Permissions::VIEW_CHANNEL.union(Permissions::CONNECT)) {
                return Err(GuildError::NotPermitted(format!(
                    "you may not connect to #{}",
                    ch.name
                )));
            }
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            sha2::Digest::update(&mut h, b"SecureComm/voice-room v1");
            sha2::Digest::update(&mut h, g.secret.expose());
            sha2::Digest::update(&mut h, cid.0.to_be_bytes());
            let room_id: [u8; 32] = sha2::Digest::finalize(h).into();
            let (name, bitrate, user_limit) = (ch.name.clone(), ch.bitrate, ch.user_limit);
            let muted = view.member(&user).is_some_and(|m| m.voice_muted);
            let member_peers = g
                .member_devices()
                .iter()
                .filter(|d| **d != me)
                .filter_map(peer_of)
                .collect();
            Ok(VoiceRoom {
                guild: gid,
                channel: cid,
                name,
                bitrate,
                user_limit,
                may_speak: !muted && perms.contains(Permissions::SPEAK),
                may_use_soundboard: !muted
                    && perms.contains(Permissions::SPEAK.union(Permissions::USE_SOUNDBOARD)),
                room_id,
                member_peers,
            })
        })?
    }

    /// What `peer` (a member device) may do in voice channel `channel` of `guild`; `None` if
    /// the peer is no member device of the guild or the channel is no voice channel. For a
    /// direct call ([`dm_call_id`]), the other user's devices and ours may do all but the
    /// soundboard.
    pub fn voice_rights(
        &self,
        guild: &GuildId,
        channel: &ChannelId,
        peer: &PeerId,
    ) -> Option<VoiceRights> {
        let device = device_of(peer)?;
        let is_guild = self
            .with_engine(|e, _| e.guilds.contains_key(guild))
            .unwrap_or(false);
        if !is_guild {
            // A direct call: its other user (any of their devices, and ours) may do
            // everything but the soundboard.
            let me = self.with_engine(|e, _| e.keys.me).ok()?;
            let ok = self.is_dm_call_peer(guild, channel, peer) || device == me;
            return ok.then_some(VoiceRights {
                connect: true,
                speak: true,
                soundboard: false,
            });
        }
        self.with_engine(|e, _| {
            let g = e.guilds.get_mut(guild)?;
            if !g.member_devices().contains(&device) {
                return None;
            }
            let view = g.crdt.view();
            if view.channels().get(channel)?.kind != ChannelKind::Voice {
                return None;
            }
            let user = *view.user_of_device(&device)?;
            let perms = view.channel_permissions(&user, channel);
            // A server-muted member keeps Connect but loses Speak (and so the soundboard).
            let muted = view.member(&user).is_some_and(|m| m.voice_muted);
            Some(VoiceRights {
                connect: perms.contains(Permissions::VIEW_CHANNEL.union(Permissions::CONNECT)),
                speak: !muted && perms.contains(Permissions::SPEAK),
                soundboard: !muted
                    && perms.contains(Permissions::SPEAK.union(Permissions::USE_SOUNDBOARD)),
            })
        })
        .ok()
        .flatten()
    }

    /// The nickname of the member whose device is `peer`, if any.
    pub fn nickname_of(&self, guild: &GuildId, peer: &PeerId) -> Option<String> {
        let device = device_of(peer)?;
        self.with_engine(|e, _| {
            // A direct call's "guild" is no guild: the nickname from any guild shared.
            let views: Vec<&mut super::engine::GuildState> = match e.guilds.get_mut(guild) {
                Some(_) => e.guilds.get_mut(guild).into_iter().collect(),
                None => e.guilds.values_mut().collect(),
            };
            views.into_iter().find_map(|g| {
                let view = g.crdt.view();
                let user = *view.user_of_device(&device)?;
                view.member(&user).map(|m| m.nickname.clone())
            })
        })
        .ok()
        .flatten()
    }
}
