//! The synchronous heart of the guild layer: guild document + DCGKA state per guild, the causal
//! log's apply hook, gossip validation, sending, and the join protocol's checks.
//!
//! Every method that writes takes the database connection (or an open transaction) the caller
//! holds under the sync driver's lock, so the engine's writes commit together with whatever
//! the caller commits (a delivered log entry, a stored message, a queued publication). The
//! engine never awaits and never touches the network; [`super::GuildService`] does both.
//!
//! Memory and disk agree by construction: every change to a guild's in-memory state is written
//! to its `guilds` row in the same transaction, and a counter of applied log entries (`applied`)
//! is kept in both. Before applying an entry the hook compares the two; if a transaction rolled
//! back after the engine had changed memory (or a local operation marked the guild `dirty`), the
//! guild is reloaded from the row first.
//!
//! Message chains are the exception to "the whole row": application messages move only the
//! sending or receiving chain of one member, so those are written to small `guild_chains` rows
//! (one per guild and sender) and laid over the whole DCGKA state when it is loaded. Every
//! write of the whole state deletes the guild's chain rows in the same transaction, so a row
//! is always newer than the state it is laid over. Received messages move the sender's row
//! (in the receipt's relaxed transaction, see `store::db`); this device's own row is written
//! durably once per [`RESERVE_BLOCK`] sends, holding the chain as it will be at the end of the
//! block (`Engine::prepare_send`), so a crash can skip indices but never reuse one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use securecomm_crdt::envelope::SignedChange;
use securecomm_crdt::invite::InviteToken;
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::perms::Permissions;
use securecomm_crdt::schema::{
    Channel, ChannelId, ChannelKind, DeviceCert, GuildId, Invite, InviteCode, Role, RoleId, UserId,
};
use securecomm_crdt::{Guild, GuildView, MembershipEvent, RejectReason};
use securecomm_noise::codec::{Decode, Encode};
use securecomm_noise::dcgka::ratchet::RatchetError;
use securecomm_noise::dcgka::{
    AppMessage, ControlBody, ControlMessage, DirectMessage, Group, GroupError, MemberKey, Output,
};
use securecomm_noise::keys::{DevicePublicKey, DeviceSigningKey, RootSigningKey};
use securecomm_noise::oneshot::PrekeyStore;
use securecomm_noise::secret::Secret32;
use serde::Serialize;
use zeroize::Zeroizing;

use super::GuildError;
use super::content;
use super::wire::{
    AppPayload, Body, DirectRequest, DirectResponse, InviteLink, LogPayload, MAX_TEXT, check_proof,
    join_proof, rendezvous_namespace, topic_for,
};
use crate::sync::outbox::Outbox;
use crate::sync::{Entry, GroupId, SyncError};

/// Undecryptable gossip kept per guild for a retry once key agreement catches up.
pub const MAX_PENDING_GOSSIP: usize = 1024;
/// How long undecryptable gossip is kept.
pub const PENDING_GOSSIP_TTL: Duration = Duration::from_secs(300);
/// Largest gossip payload the guild layer looks at (a sealed envelope is at most 61,485 bytes).
pub const MAX_GOSSIP_PAYLOAD: usize = 62 * 1024;
/// Most control messages parked before this device is welcomed into key agreement.
pub const MAX_PREJOIN: usize = 1 << 16;
/// Most guilds per node.
pub const MAX_GUILDS: usize = 256;
/// Message indices reserved per durable write of this device's sending chain (see
/// `Engine::prepare_send`). A crash skips at most this many indices, which receivers bridge
/// with skipped keys: well inside the ratchet's `MAX_SKIP` (1024).
pub const RESERVE_BLOCK: u32 = 64;

/// What gossip validation decided.
#[derive(Debug)]
pub enum Verdict<M = StoredMessage> {
    /// Valid: forward it. Carries the message if it was new.
    Accept(Option<M>),
    /// Invalid: drop it and penalise the peer that forwarded it.
    Reject(&'static str),
    /// Cannot judge (unknown key epoch, not ours): drop without penalty.
    Ignore(&'static str),
}

/// A decrypted guild message as stored (a post), or an operation on one (`op`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoredMessage {
    /// Guild id (hex).
    pub guild: String,
    /// Channel id.
    pub channel: u64,
    /// Message id (hex).
    pub id: String,
    /// Sending device (hex).
    pub sender_device: String,
    /// The sending device's sequence number in this guild (1, 2, 3, ...; 0 when unknown, for
    /// messages stored before history sync existed).
    pub seq: u64,
    /// Sending user (hex root key).
    pub sender: String,
    /// The sender's nickname in the guild when received.
    pub nickname: String,
    /// Sender's clock, ms since the Unix epoch.
    pub sent_at: u64,
    /// Our clock when stored, ms.
    pub received_at: u64,
    /// The text (current: an edit replaces it; empty for operations).
    pub text: String,
    /// The message this replies to (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The thread it is in (hex), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// When it disappears from every member's store, ms since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Whether it mentions this member (and the author was allowed to).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mentions_me: bool,
    /// For everything that is not a post: what it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<content::Op>,
    /// When the author last edited it (their clock, ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    /// Reactions, per emoji.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<content::Reaction>,
    /// Pinned in its channel.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
    /// Attached files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::files::FileInfo>,
    /// The attachments with their keys, while the message is being stored (not shown).
    #[serde(skip)]
    pub attachments: Vec<crate::files::wire::Attachment>,
    /// Slow mode interval that applies to its author here, ms (0: none; not shown).
    #[serde(skip)]
    pub slow_ms: u64,
    /// The sealed envelope as received or published (kept for history sync; not shown).
    #[serde(skip)]
    pub envelope: Vec<u8>,
}

struct PendingGossip {
    data: Vec<u8>,
    since: Instant,
}

/// A message encrypted by `Engine::prepare_send`, not stored yet.
#[derive(Debug)]
pub struct PreparedSend {
    /// The message as it will be stored.
    pub message: StoredMessage,
    /// The sealed envelope to publish.
    pub sealed: Vec<u8>,
    /// The guild's gossip topic.
    pub topic: String,
    /// Whether earlier publications still wait in the outbox (publish through it, in order).
    pub queued: bool,
}

/// One guild's state.
pub(crate) struct GuildState {
    pub id: GuildId,
    pub secret: Secret32,
    pub topic: String,
    pub crdt: Guild,
    pub dcgka: Group,
    pub applied: u64,
    pub authors: BTreeSet<DevicePublicKey>,
    pub dirty: bool,
    /// This device's sending indices reserved on disk: (epoch, first index not reserved).
    reserved: Option<(u32, u32)>,
    /// This device's next history sequence number in this guild, and the last one reserved on
    /// disk (`guild_seq_reserved`): like message indices, sequence numbers are reserved in
    /// blocks of [`RESERVE_BLOCK`] before use, so a message published before a crash never
    /// shares its number with a later one.
    next_seq: Option<(u64, u64)>,
    /// Senders whose receiving chains moved since their `guild_chains` row was written.
    moved: BTreeSet<DevicePublicKey>,
    pending: VecDeque<PendingGossip>,
    unreadable: u64,
    rejected: u64,
}

impl std::fmt::Debug for GuildState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuildState")
            .field("id", &self.id)
            .field("applied", &self.applied)
            .field("dcgka", &self.dcgka)
            .finish_non_exhaustive()
    }
}

impl GuildState {
    /// Whether this device takes part in key agreement (welcomed or creator, not removed).
    pub fn keyed(&self) -> bool {
        !self.dcgka.members().is_empty()
    }

    /// Gossip messages this device received and had no key for, since it started (held for a
    /// retry while key agreement may still catch up; a removed member's count just grows).
    pub fn undecryptable(&self) -> u64 {
        self.unreadable
    }

    /// Gossip messages this device rejected (malformed, forged, replayed, unauthorized) since
    /// it started.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Every device of every member in the resolved view.
    pub fn member_devices(&mut self) -> BTreeSet<DevicePublicKey> {
        self.crdt
            .view()
            .members()
            .values()
            .flat_map(|m| m.devices.iter().copied())
            .collect()
    }
}

/// This device's keys, split from the guild map so both can be borrowed at once.
pub(crate) struct Keys {
    pub me: DevicePublicKey,
    pub user: UserId,
    pub signer: DeviceSigningKey,
    pub root: RootSigningKey,
    pub cert: DeviceCert,
    pub display_name: String,
    rng: OsRng,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// All guilds of this node.
#[derive(Debug)]
pub(crate) struct Engine {
    pub keys: Keys,
    pub guilds: BTreeMap<GuildId, GuildState>,
    topics: HashMap<String, GuildId>,
    /// Digests of the last [`MAX_FROM_HISTORY`] messages taken from history sessions: the same
    /// message arriving by gossip afterwards (the sender's outbox publishing it once the
    /// connection is back) is an honest duplicate, ignored, not a replay to penalise.
    from_history: (HashSet<[u8; 32]>, VecDeque<[u8; 32]>),
}

/// Most history-delivered message digests remembered (see [`Engine`]).
const MAX_FROM_HISTORY: usize = 4096;

fn digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A channel id as SQLite stores it: the same 64 bits as a signed integer. Channel ids are
/// random `u64`s, so half of them are above `i64::MAX`; saturating them (as [`sql`] does for
/// counts and times) made every such channel share one history.
pub(crate) fn sql_channel(c: u64) -> i64 {
    i64::from_ne_bytes(c.to_ne_bytes())
}

fn db_err(e: rusqlite::Error) -> SyncError {
    SyncError::from(e)
}

fn encode_authors(a: &BTreeSet<DevicePublicKey>) -> Vec<u8> {
    a.iter().flat_map(|d| d.to_bytes()).collect()
}

fn decode_authors(b: &[u8]) -> BTreeSet<DevicePublicKey> {
    b.chunks_exact(32)
        .filter_map(|c| <[u8; 32]>::try_from(c).ok())
        .filter_map(|c| DevicePublicKey::from_bytes(&c).ok())
        .collect()
}

/// A `guilds` row: secret, document, DCGKA state, applied count, authors.
type Row = (Vec<u8>, Vec<u8>, Vec<u8>, i64, Vec<u8>);

fn load_row(conn: &Connection, id: &GuildId) -> Result<GuildState, SyncError> {
    let row: Option<Row> = conn
        .query_row(
            "SELECT secret, crdt, dcgka, applied, authors FROM guilds WHERE id = ?1",
            [&id.0[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()
        .map_err(db_err)?;
    let (secret, crdt, dcgka, applied, authors) =
        row.ok_or(SyncError::Corrupt("guild row vanished"))?;
    let secret: [u8; 32] = secret
        .try_into()
        .map_err(|_| SyncError::Corrupt("guild secret is not 32 bytes"))?;
    let secret = Secret32::from_bytes(secret);
    let mut crdt =
        Guild::load_trusted(&crdt).map_err(|_| SyncError::Corrupt("stored guild document"))?;
    // Prime the membership diff: events are about changes from now on.
    let _ = crdt.take_membership_events();
    let mut dcgka =
        Group::from_bytes(&dcgka).map_err(|_| SyncError::Corrupt("stored DCGKA state"))?;
    // Chain rows are newer than the whole state (writing it deletes them): lay them over it.
    let rows: Vec<(Vec<u8>, Vec<u8>)> = {
        let mut st = conn
            .prepare_cached("SELECT sender, chains FROM guild_chains WHERE guild = ?1")
            .map_err(db_err)?;
        let rows = st
            .query_map([&id.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    for (sender, chains) in rows {
        let sender = <[u8; 32]>::try_from(sender.as_slice())
            .ok()
            .and_then(|b| DevicePublicKey::from_bytes(&b).ok())
            .ok_or(SyncError::Corrupt("stored chain row sender"))?;
        let chains = Zeroizing::new(chains);
        dcgka
            .restore_chains(&sender, &chains)
            .map_err(|_| SyncError::Corrupt("stored message chains"))?;
    }
    Ok(GuildState {
        id: *id,
        topic: topic_for(&secret),
        secret,
        crdt,
        dcgka,
        applied: u64::try_from(applied).unwrap_or(0),
        authors: decode_authors(&authors),
        dirty: false,
        reserved: None,
        next_seq: None,
        moved: BTreeSet::new(),
        pending: VecDeque::new(),
        unreadable: 0,
        rejected: 0,
    })
}

/// Deletes a guild's chain rows: called wherever the whole DCGKA state is written, in the same
/// transaction, so the rows left are always newer than the whole state. This device's sending
/// position in the whole state accounts for every index it used, so it must reserve again.
fn clear_chain_rows(conn: &Connection, g: &mut GuildState) -> Result<(), SyncError> {
    conn.prepare_cached("DELETE FROM guild_chains WHERE guild = ?1")
        .and_then(|mut s| s.execute([&g.id.0[..]]))
        .map_err(db_err)?;
    g.reserved = None;
    g.moved.clear();
    Ok(())
}

fn save_row(conn: &Connection, g: &mut GuildState, crdt: bool) -> Result<(), SyncError> {
    clear_chain_rows(conn, g)?;
    let dcgka = g.dcgka.to_bytes();
    if crdt {
        conn.prepare_cached(
            "UPDATE guilds SET crdt = ?2, dcgka = ?3, applied = ?4, authors = ?5 WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                &g.id.0[..],
                g.crdt.save(),
                &dcgka[..],
                sql(g.applied),
                encode_authors(&g.authors)
            ])
        })
        .map_err(db_err)?;
    } else {
        conn.prepare_cached(
            "UPDATE guilds SET dcgka = ?2, applied = ?3, authors = ?4 WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                &g.id.0[..],
                &dcgka[..],
                sql(g.applied),
                encode_authors(&g.authors)
            ])
        })
        .map_err(db_err)?;
    }
    Ok(())
}

fn insert_row(conn: &Connection, g: &mut GuildState) -> Result<(), SyncError> {
    clear_chain_rows(conn, g)?;
    conn.execute(
        "INSERT INTO guilds (id, secret, crdt, dcgka, applied, authors, joined_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            &g.id.0[..],
            &g.secret.expose()[..],
            g.crdt.save(),
            &g.dcgka.to_bytes()[..],
            sql(g.applied),
            encode_authors(&g.authors),
            sql(now_ms())
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Queues key-agreement output for the causal log (the service drains the queue in order).
fn push_out(conn: &Connection, gid: &GuildId, out: Output) -> Result<(), SyncError> {
    let Some(control) = out.broadcast else {
        return Ok(());
    };
    let payload = LogPayload::Dcgka {
        control,
        directs: out.direct.into_iter().map(|(_, d)| d).collect(),
    }
    .to_bytes();
    if payload.len() > crate::sync::MAX_PAYLOAD {
        tracing::error!(
            len = payload.len(),
            "key-agreement message exceeds the log's entry bound; the group cannot progress"
        );
        return Ok(());
    }
    conn.prepare_cached("INSERT INTO guild_outq (guild, payload) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![&gid.0[..], payload]))
        .map_err(db_err)?;
    Ok(())
}

fn stamp(t_ms: u64) -> u64 {
    t_ms / 1000
}

impl Keys {
    pub fn new(signer: DeviceSigningKey, root: RootSigningKey, display_name: String) -> Self {
        let me = signer.public();
        let cert = DeviceCert::issue(&root, me);
        Self {
            me,
            user: root.public(),
            signer,
            root,
            cert,
            display_name,
            rng: OsRng,
        }
    }
}

/// Authors a guild change, retrying once at the document's latest time if our clock is behind
/// one of its dependencies (clocks differ between members).
fn change(
    g: &mut GuildState,
    signer: &DeviceSigningKey,
    ops: Vec<GuildOp>,
) -> Result<SignedChange, GuildError> {
    let now = stamp(now_ms());
    match g.crdt.change(signer, now, ops.clone()) {
        Err(securecomm_crdt::GuildError::Rejected(RejectReason::Time { floor, .. })) => {
            let t = u64::try_from(floor).unwrap_or(now);
            Ok(g.crdt.change(signer, t, ops)?)
        }
        r => Ok(r?),
    }
}

impl Engine {
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            guilds: BTreeMap::new(),
            topics: HashMap::new(),
            from_history: (HashSet::new(), VecDeque::new()),
        }
    }

    /// Loads every guild row.
    pub fn load_all(&mut self, conn: &Connection) -> Result<(), SyncError> {
        let ids: Vec<Vec<u8>> = {
            let mut st = conn.prepare("SELECT id FROM guilds").map_err(db_err)?;
            let rows = st.query_map([], |r| r.get(0)).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)?
        };
        for id in ids {
            let id: [u8; 32] = id
                .try_into()
                .map_err(|_| SyncError::Corrupt("guild id is not 32 bytes"))?;
            let g = load_row(conn, &GuildId(id))?;
            self.insert(g);
        }
        Ok(())
    }

    fn insert(&mut self, g: GuildState) {
        self.topics.insert(g.topic.clone(), g.id);
        self.guilds.insert(g.id, g);
    }

    /// Drops a guild from memory (its rows stay unless the caller deletes them).
    pub fn forget(&mut self, id: &GuildId) {
        if let Some(g) = self.guilds.remove(id) {
            self.topics.remove(&g.topic);
        }
    }

    pub fn guild_mut(&mut self, id: &GuildId) -> Result<&mut GuildState, GuildError> {
        self.guilds
            .get_mut(id)
            .ok_or_else(|| GuildError::UnknownGuild(hex::encode(id.0)))
    }

    /// Reloads a guild from its row if memory may be ahead of it.
    ///
    /// The reloaded sending chain sits at the end of the last reserved block. If memory's
    /// sending chain is the same chain, behind it (checked by stepping memory's chain forward
    /// and comparing the bytes), memory's position is kept with the rest of the block still
    /// reserved, so a reload does not make receivers skip keys.
    fn fresh(conn: &Connection, g: &mut GuildState) -> Result<(), SyncError> {
        let db: Option<i64> = conn
            .prepare_cached("SELECT applied FROM guilds WHERE id = ?1")
            .and_then(|mut s| s.query_row([&g.id.0[..]], |r| r.get(0)).optional())
            .map_err(db_err)?;
        if g.dirty || db != Some(sql(g.applied)) {
            let mut loaded = load_row(conn, &g.id)?;
            let me = loaded.dcgka.me();
            if let (Some((e0, p)), Some((e1, r))) =
                (g.dcgka.send_position(), loaded.dcgka.send_position())
                && e0 == e1
                && p <= r
                && let Ok((_, _, ahead)) = g.dcgka.reserve_sends(r - p)
                && loaded.dcgka.chains_to_bytes(&me) == Some(ahead)
                && let Some(mine) = g.dcgka.chains_to_bytes(&me)
                && loaded.dcgka.restore_chains(&me, &mine).is_ok()
            {
                loaded.reserved = Some((e1, r));
            }
            loaded.next_seq = g.next_seq;
            loaded.pending = std::mem::take(&mut g.pending);
            loaded.unreadable = g.unreadable;
            loaded.rejected = g.rejected;
            *g = loaded;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ the apply hook

    /// Applies one delivered log entry of `group`, inside the delivering transaction.
    pub fn apply_entry(
        &mut self,
        tx: &Transaction<'_>,
        group: GroupId,
        entry: &Entry,
    ) -> Result<(), SyncError> {
        let gid = GuildId(group.0);
        let keys = &mut self.keys;
        let Some(g) = self.guilds.get_mut(&gid) else {
            return Ok(());
        };
        Self::fresh(tx, g)?;
        let author = DevicePublicKey::from_bytes(&entry.author().0).ok();
        let mut crdt_changed = false;
        match LogPayload::from_bytes(entry.payload()) {
            Err(e) => tracing::debug!(error = %e, "undecodable guild log entry skipped"),
            Ok(LogPayload::CrdtChange(sc)) => {
                let r = g.crdt.receive(vec![sc]);
                for (_, why) in &r.rejected {
                    tracing::debug!(reason = %why, "guild change rejected");
                }
                crdt_changed = !r.accepted.is_empty();
            }
            Ok(LogPayload::Dcgka { control, directs }) => {
                if Some(control.sender) != author {
                    tracing::debug!("control message carried by another device than its sender");
                } else if control.sender == keys.me {
                    // Our own message entered the log: it leaves the queue in the same transaction.
                    tx.prepare_cached(
                        "DELETE FROM guild_outq WHERE id = (SELECT min(id) FROM guild_outq WHERE guild = ?1 AND payload = ?2)",
                    )
                    .and_then(|mut s| s.execute(params![&gid.0[..], entry.payload()]))
                    .map_err(db_err)?;
                } else {
                    let direct = directs.iter().find(|d| d.recipient == keys.me);
                    Self::process_control(tx, keys, g, entry, &control, direct)?;
                }
            }
            Ok(LogPayload::DmBundle(b)) => {
                let member = g.crdt.view().user_of_device(&b.identity.signing).is_some();
                if Some(b.identity.signing) != author || !member || b.verify().is_err() {
                    tracing::debug!("DM prekey bundle not from a member's own device skipped");
                } else {
                    super::dm::store_bundle(tx, &b)?;
                }
            }
            Ok(LogPayload::Mailbox(a)) => {
                match author.filter(|d| g.crdt.view().user_of_device(d).is_some()) {
                    Some(d) => super::mailbox::store_announcement(tx, &d, &a)?,
                    None => tracing::debug!("mailbox announcement not from a member skipped"),
                }
            }
        }
        let events = g.crdt.take_membership_events();
        Self::reconcile(tx, keys, g, author, &events)?;
        g.applied += 1;
        save_row(tx, g, crdt_changed)
    }

    fn process_control(
        tx: &Transaction<'_>,
        keys: &mut Keys,
        g: &mut GuildState,
        entry: &Entry,
        control: &ControlMessage,
        direct: Option<&DirectMessage>,
    ) -> Result<(), SyncError> {
        if g.dcgka.is_removed() {
            return Ok(());
        }
        if g.keyed() {
            match g
                .dcgka
                .process(&keys.signer, &mut keys.rng, control, direct)
            {
                Ok(out) => push_out(tx, &g.id, out)?,
                Err(e) => tracing::debug!(error = %e, "control message refused"),
            }
            return Ok(());
        }
        let for_me = match &control.body {
            ControlBody::Create { members } => members.iter().any(|m| m.device == keys.me),
            ControlBody::Add { member } => member.device == keys.me,
            _ => false,
        };
        if !for_me {
            // Not welcomed yet: park a reference (the body stays in the log) to replay later.
            let n: i64 = tx
                .query_row(
                    "SELECT count(*) FROM guild_prejoin WHERE guild = ?1",
                    [&g.id.0[..]],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if usize::try_from(n).unwrap_or(usize::MAX) < MAX_PREJOIN {
                tx.execute(
                    "INSERT INTO guild_prejoin (guild, author, seq) VALUES (?1, ?2, ?3)",
                    params![&g.id.0[..], &entry.author().0[..], sql(entry.seq())],
                )
                .map_err(db_err)?;
            }
            return Ok(());
        }
        match g
            .dcgka
            .process(&keys.signer, &mut keys.rng, control, direct)
        {
            Ok(out) => push_out(tx, &g.id, out)?,
            Err(e) => {
                tracing::warn!(error = %e, "welcome refused");
                return Ok(());
            }
        }
        tracing::info!(guild = ?g.id, "welcomed into key agreement");
        // Replay what arrived before the welcome; messages in the add's causal past are already
        // reflected in the welcome (their sequence numbers are not above what it records).
        let parked: Vec<(Vec<u8>, i64)> = {
            let mut st = tx
                .prepare("SELECT author, seq FROM guild_prejoin WHERE guild = ?1 ORDER BY id")
                .map_err(db_err)?;
            let rows = st
                .query_map([&g.id.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)?
        };
        for (author, seq) in parked {
            let body: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT body FROM sync_entries WHERE grp = ?1 AND author = ?2 AND seq = ?3",
                    params![&g.id.0[..], author, seq],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let Some(e) = body.and_then(|b| Entry::from_bytes(&b).ok()) else {
                continue;
            };
            let Ok(LogPayload::Dcgka { control, directs }) = LogPayload::from_bytes(e.payload())
            else {
                continue;
            };
            if control.seq <= g.dcgka.last_seq(&control.sender).unwrap_or(0) {
                continue;
            }
            let direct = directs.iter().find(|d| d.recipient == keys.me);
            match g
                .dcgka
                .process(&keys.signer, &mut keys.rng, &control, direct)
            {
                Ok(out) => push_out(tx, &g.id, out)?,
                Err(e) => tracing::debug!(error = %e, "parked control message refused"),
            }
        }
        tx.execute("DELETE FROM guild_prejoin WHERE guild = ?1", [&g.id.0[..]])
            .map_err(db_err)?;
        Ok(())
    }

    /// Brings key agreement in line with the guild document after an entry:
    /// * a device that is a member but not in key agreement is added by the device holding its
    ///   member key (the inviter that accepted its redemption);
    /// * when the entry removed members (kick, ban, leave, device removal), the entry's author
    ///   removes their devices from key agreement, or the owner's device if the author cannot
    ///   (it left, or is not in key agreement).
    fn reconcile(
        tx: &Transaction<'_>,
        keys: &mut Keys,
        g: &mut GuildState,
        author: Option<DevicePublicKey>,
        events: &[MembershipEvent],
    ) -> Result<(), SyncError> {
        let desired = g.member_devices();
        g.authors.extend(desired.iter().copied());
        if !g.keyed() {
            return Ok(());
        }
        let current = g.dcgka.members();
        for d in desired.difference(&current) {
            if *d == keys.me {
                continue;
            }
            let mk: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT member_key FROM guild_member_keys WHERE guild = ?1 AND device = ?2",
                    params![&g.id.0[..], &d.as_bytes()[..]],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let Some(mk) = mk.and_then(|b| MemberKey::from_bytes(&b).ok()) else {
                continue;
            };
            match g.dcgka.add(&keys.signer, &mut keys.rng, mk) {
                Ok(out) => push_out(tx, &g.id, out)?,
                Err(e) => tracing::warn!(error = %e, "adding a member to key agreement failed"),
            }
            tx.execute(
                "DELETE FROM guild_member_keys WHERE guild = ?1 AND device = ?2",
                params![&g.id.0[..], &d.as_bytes()[..]],
            )
            .map_err(db_err)?;
        }
        let shrunk = events.iter().any(|e| {
            matches!(
                e,
                MembershipEvent::Removed { .. }
                    | MembershipEvent::Banned { .. }
                    | MembershipEvent::DevicesChanged { .. }
            )
        });
        let gone: Vec<DevicePublicKey> = current
            .difference(&desired)
            .filter(|d| **d != keys.me)
            .copied()
            .collect();
        if !shrunk || gone.is_empty() {
            return Ok(());
        }
        let responsible = match author {
            Some(a) if current.contains(&a) && desired.contains(&a) => Some(a),
            _ => {
                let view = g.crdt.view();
                view.owner()
                    .and_then(|o| view.member(o))
                    .and_then(|m| m.devices.iter().find(|d| current.contains(d)).copied())
            }
        };
        if responsible == Some(keys.me) {
            for d in gone {
                match g.dcgka.remove(&keys.signer, &mut keys.rng, d) {
                    Ok(out) => push_out(tx, &g.id, out)?,
                    Err(e) => {
                        tracing::warn!(error = %e, "removing a device from key agreement failed")
                    }
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ gossip

    /// The guild a topic belongs to.
    pub fn guild_of_topic(&self, topic: &str) -> Option<GuildId> {
        self.topics.get(topic).copied()
    }

    /// Validates and decrypts one gossip message without storing it: an accepted message is
    /// returned for `Engine::store_received`, and the receiving chain it moved is written by
    /// that call (or by the next write of the whole state, whichever comes first). So the
    /// caller can tell gossipsub to forward before it touches the disk.
    pub fn validate_gossip(
        &mut self,
        conn: &Connection,
        topic: &str,
        data: &[u8],
    ) -> Result<Verdict<(GuildId, StoredMessage)>, SyncError> {
        let Some(gid) = self.guild_of_topic(topic) else {
            return Ok(Verdict::Ignore("not a topic of ours"));
        };
        let me = self.keys.user;
        let Some(g) = self.guilds.get_mut(&gid) else {
            return Ok(Verdict::Ignore("not a topic of ours"));
        };
        Self::fresh(conn, g)?;
        let mut v = if data.len() > MAX_GOSSIP_PAYLOAD {
            Verdict::Reject("oversized")
        } else {
            Self::decrypt_check(g, data, None, &me, true)
        };
        if let Verdict::Reject("replayed") = v
            && self.from_history.0.contains(&digest(data))
        {
            v = Verdict::Ignore("already delivered by history");
        }
        if let Verdict::Reject(_) = v {
            g.rejected = g.rejected.saturating_add(1);
        }
        if let Verdict::Ignore("unknown key epoch" | "removed from the guild") = v {
            g.unreadable = g.unreadable.saturating_add(1);
        }
        if let Verdict::Ignore("unknown key epoch") = v {
            if g.pending.len() >= MAX_PENDING_GOSSIP {
                g.pending.pop_front();
            }
            g.pending.push_back(PendingGossip {
                data: data.to_vec(),
                since: Instant::now(),
            });
        }
        Ok(match v {
            Verdict::Accept(m) => Verdict::Accept(m.map(|m| (gid, m))),
            Verdict::Reject(why) => Verdict::Reject(why),
            Verdict::Ignore(why) => Verdict::Ignore(why),
        })
    }

    /// Stores received messages and every receiving chain that moved, in one transaction
    /// committed without waiting for the disk (see `store::db::relaxed`). Returns the messages
    /// that were new.
    pub fn store_received(
        &mut self,
        conn: &mut Connection,
        msgs: Vec<(GuildId, StoredMessage)>,
    ) -> Result<Vec<StoredMessage>, SyncError> {
        let me = self.keys.me;
        let guilds = &mut self.guilds;
        let touched: Vec<GuildId> = guilds
            .iter()
            .filter(|(_, g)| !g.moved.is_empty())
            .map(|(id, _)| *id)
            .collect();
        let r = crate::store::db::relaxed(conn, |conn| -> Result<_, SyncError> {
            let tx = conn.transaction().map_err(db_err)?;
            let mut new = Vec::with_capacity(msgs.len());
            for (gid, m) in msgs {
                let new_envelope = store_envelope(&tx, &gid, &m, &m.envelope)?;
                if content::apply(&tx, &gid, &m, new_envelope)? {
                    new.push(m);
                }
            }
            for gid in &touched {
                let Some(g) = guilds.get_mut(gid) else {
                    continue;
                };
                for sender in std::mem::take(&mut g.moved) {
                    if sender == me {
                        continue;
                    }
                    if let Some(chains) = g.dcgka.chains_to_bytes(&sender) {
                        tx.prepare_cached(
                            "INSERT INTO guild_chains (guild, sender, chains) VALUES (?1, ?2, ?3)
                             ON CONFLICT(guild, sender) DO UPDATE SET chains = excluded.chains",
                        )
                        .and_then(|mut s| {
                            s.execute(params![&gid.0[..], &sender.as_bytes()[..], &chains[..]])
                        })
                        .map_err(db_err)?;
                    }
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(new)
        })
        .map_err(db_err)
        .and_then(|r| r);
        if r.is_err() {
            // Memory is ahead of the rows: reload before the next use.
            for gid in &touched {
                if let Some(g) = guilds.get_mut(gid) {
                    g.dirty = true;
                }
            }
        }
        r
    }

    /// Retries undecryptable gossip of `gid` after key agreement moved; returns new messages.
    pub fn retry_pending(
        &mut self,
        conn: &mut Connection,
        gid: &GuildId,
    ) -> Result<Vec<StoredMessage>, SyncError> {
        let me = self.keys.user;
        let Some(g) = self.guilds.get_mut(gid) else {
            return Ok(Vec::new());
        };
        if g.pending.is_empty() {
            return Ok(Vec::new());
        }
        Self::fresh(conn, g)?;
        let mut out = Vec::new();
        let items: Vec<PendingGossip> = g.pending.drain(..).collect();
        for p in items {
            match Self::decrypt_check(g, &p.data, None, &me, true) {
                Verdict::Accept(Some(m)) => out.push((*gid, m)),
                Verdict::Ignore("unknown key epoch") if p.since.elapsed() < PENDING_GOSSIP_TTL => {
                    g.pending.push_back(p);
                }
                _ => {}
            }
        }
        self.store_received(conn, out)
    }

    /// History sync and mailbox pickup: validates fetched envelopes exactly like live gossip,
    /// also checking that each is what the serving peer claimed (sending device and sequence
    /// number; a mismatch is a rejection), and stores the accepted ones in one transaction.
    /// Returns one verdict per item, in order.
    pub(crate) fn on_history_items(
        &mut self,
        conn: &mut Connection,
        gid: &GuildId,
        items: &[(DevicePublicKey, u64, &[u8])],
    ) -> Result<Vec<Verdict>, SyncError> {
        let me = self.keys.user;
        let Some(g) = self.guilds.get_mut(gid) else {
            return Ok(items
                .iter()
                .map(|_| Verdict::Ignore("not a guild of ours"))
                .collect());
        };
        Self::fresh(conn, g)?;
        let mut verdicts = Vec::with_capacity(items.len());
        let mut accepted = Vec::new();
        for (sender, seq, data) in items {
            let v = if data.len() > MAX_GOSSIP_PAYLOAD {
                Verdict::Reject("oversized")
            } else {
                Self::decrypt_check(g, data, Some((*sender, *seq)), &me, false)
            };
            if let Verdict::Accept(Some(m)) = v {
                let (set, order) = &mut self.from_history;
                let d = digest(data);
                if set.insert(d) {
                    order.push_back(d);
                    if order.len() > MAX_FROM_HISTORY
                        && let Some(old) = order.pop_front()
                    {
                        set.remove(&old);
                    }
                }
                accepted.push((*gid, m));
                verdicts.push(Verdict::Accept(None));
            } else {
                verdicts.push(v);
            }
        }
        let new = self.store_received(conn, accepted)?;
        // Hand each newly stored message back in its item's place.
        for m in new {
            if let Some(v) = verdicts.iter_mut().zip(items).find_map(|(v, (s, q, _))| {
                (matches!(v, Verdict::Accept(None))
                    && hex::encode(s.as_bytes()) == m.sender_device
                    && *q == m.seq)
                    .then_some(v)
            }) {
                *v = Verdict::Accept(Some(m));
            }
        }
        Ok(verdicts)
    }

    /// Whether `device` is a member device of `gid` in the resolved view now.
    pub(crate) fn is_member_device(&mut self, gid: &GuildId, device: &DevicePublicKey) -> bool {
        self.guilds
            .get_mut(gid)
            .is_some_and(|g| g.crdt.view().user_of_device(device).is_some())
    }

    /// Decrypts, verifies and authorizes one message (in memory; the moved chain is noted in
    /// `g.moved`). With `claim`, the message must come from that device with that sequence
    /// number.
    fn decrypt_check(
        g: &mut GuildState,
        data: &[u8],
        claim: Option<(DevicePublicKey, u64)>,
        me: &UserId,
        live: bool,
    ) -> Verdict {
        let d = match g.dcgka.decrypt(&AppMessage(data.to_vec())) {
            Ok(d) => d,
            Err(GroupError::UnknownTag | GroupError::Ratchet(RatchetError::UnknownEpoch(_))) => {
                return Verdict::Ignore("unknown key epoch");
            }
            Err(GroupError::NotJoined) => return Verdict::Ignore("unknown key epoch"),
            Err(GroupError::Removed) => return Verdict::Ignore("removed from the guild"),
            Err(GroupError::Ratchet(RatchetError::Replay { .. })) => {
                return Verdict::Reject("replayed");
            }
            Err(_) => return Verdict::Reject("does not decrypt or verify"),
        };
        // The ratchet moved: persist it whatever the payload turns out to be.
        g.moved.insert(d.sender);
        let p = match AppPayload::from_bytes(&d.plaintext) {
            Err(_) => return Verdict::Reject("malformed payload"),
            Ok(p) => p,
        };
        if claim.is_some_and(|c| c != (d.sender, p.seq)) {
            return Verdict::Reject("history item is not what it claims");
        }
        let view = g.crdt.view();
        let Some(user) = view.user_of_device(&d.sender).copied() else {
            return Verdict::Reject("sender is not a member");
        };
        let j = match content::judge(view, &user, me, &p, live) {
            Ok(j) => j,
            Err(why) => return Verdict::Reject(why),
        };
        let nickname = view
            .member(&user)
            .map(|m| m.nickname.clone())
            .unwrap_or_default();
        Verdict::Accept(Some(StoredMessage {
            guild: hex::encode(g.id.0),
            channel: p.channel,
            id: hex::encode(p.msg_id),
            sender_device: hex::encode(d.sender.as_bytes()),
            seq: p.seq,
            sender: hex::encode(user.as_bytes()),
            nickname,
            sent_at: p.sent_at,
            received_at: now_ms(),
            text: j.text,
            reply_to: j.reply_to,
            thread: j.thread,
            expires_at: j.expires_at,
            mentions_me: j.mentions_me,
            op: j.op,
            slow_ms: j.slow_ms,
            envelope: data.to_vec(),
            files: j
                .attachments
                .iter()
                .map(|a| crate::files::FileInfo::of(a, "remote"))
                .collect(),
            attachments: j.attachments,
            ..StoredMessage::default()
        }))
    }

    // ------------------------------------------------------------------ local operations

    /// Creates a guild: the genesis and a `general` channel with our nickname as guild
    /// changes, and the DCGKA create in the queue. Returns the guild and the change payloads to
    /// write to its log, in order.
    pub fn create_guild(
        &mut self,
        conn: &Connection,
        name: &str,
    ) -> Result<(GuildId, Vec<Vec<u8>>), GuildError> {
        if self.guilds.len() >= MAX_GUILDS {
            return Err(GuildError::Invalid(format!("at most {MAX_GUILDS} guilds")));
        }
        let keys = &mut self.keys;
        let mut nonce = [0u8; 16];
        keys.rng.fill_bytes(&mut nonce);
        let now = stamp(now_ms());
        let (mut crdt, genesis) = Guild::create(&keys.root, &keys.signer, name, now, nonce)?;
        let id = crdt.id();
        let mut ops = vec![GuildOp::PutChannel(
            ChannelId(keys.rng.next_u64()),
            text_channel("general"),
        )];
        if !keys.display_name.is_empty() {
            ops.push(GuildOp::SetNickname(keys.user, keys.display_name.clone()));
        }
        let second = crdt.change(&keys.signer, now, ops)?;
        let mut dcgka = Group::new(id.0, keys.me, PrekeyStore::new(&mut keys.rng, now));
        let mk = dcgka.member_key(&keys.signer);
        let out = dcgka.create(&keys.signer, &mut keys.rng, mk, &[])?;
        let secret = Secret32::random(&mut keys.rng);
        // The row starts with an empty document; the log entries below fill it, so the
        // document on disk only ever holds changes that are in the log.
        let mut g = GuildState {
            id,
            topic: topic_for(&secret),
            secret,
            crdt: Guild::join(id),
            dcgka,
            applied: 0,
            authors: BTreeSet::from([keys.me]),
            dirty: false,
            reserved: None,
            next_seq: None,
            moved: BTreeSet::new(),
            pending: VecDeque::new(),
            unreadable: 0,
            rejected: 0,
        };
        insert_row(conn, &mut g)?;
        push_out(conn, &id, out)?;
        self.insert(g);
        Ok((
            id,
            vec![
                LogPayload::CrdtChange(genesis).to_bytes(),
                LogPayload::CrdtChange(second).to_bytes(),
            ],
        ))
    }

    /// Authors a guild change on `gid` (checked locally against the view: refused here if any
    /// replica would refuse it). Returns the log payload. The guild is marked dirty so the
    /// apply hook rebuilds it from disk and takes the change from the log like any other.
    pub fn local_change(
        &mut self,
        gid: &GuildId,
        ops: Vec<GuildOp>,
    ) -> Result<Vec<u8>, GuildError> {
        let keys = &self.keys;
        let g = self
            .guilds
            .get_mut(gid)
            .ok_or_else(|| GuildError::UnknownGuild(hex::encode(gid.0)))?;
        if !g.keyed() {
            return Err(GuildError::NotReady);
        }
        let sc = change(g, &keys.signer, ops).map_err(|e| match e {
            GuildError::Crdt(securecomm_crdt::GuildError::Rejected(r)) => {
                GuildError::NotPermitted(r.to_string())
            }
            other => other,
        })?;
        g.dirty = true;
        Ok(LogPayload::CrdtChange(sc).to_bytes())
    }

    /// The first half of a send: checks, reserves ratchet indices if the reserved block is used
    /// up, and encrypts. Nothing of the message is stored yet.
    ///
    /// Reservation: before an index of this device's sending chain is used, the chain as it
    /// will be [`RESERVE_BLOCK`] sends later is written to its `guild_chains` row, durably
    /// (`synchronous = FULL`), so one send in [`RESERVE_BLOCK`] waits for the disk here.
    /// After a crash the chain restarts from that row: no index, key or nonce is ever used
    /// twice, whatever was published before the crash, and receivers bridge the unused rest of
    /// the block with skipped keys. So the caller may publish the ciphertext before the
    /// message itself is durable, and acknowledges it only after [`Engine::commit_send`].
    pub fn prepare_send(
        &mut self,
        conn: &mut Connection,
        gid: &GuildId,
        channel: ChannelId,
        body: Body,
    ) -> Result<PreparedSend, GuildError> {
        if let Body::Post(super::wire::Post { text, .. }) | Body::Edit { text, .. } = &body {
            super::wire::check_text(text).map_err(GuildError::Invalid)?;
            if text.len() > MAX_TEXT {
                return Err(GuildError::Invalid(format!(
                    "message too long: at most {MAX_TEXT} bytes, got {}",
                    text.len()
                )));
            }
        }
        let keys = &mut self.keys;
        let g = self
            .guilds
            .get_mut(gid)
            .ok_or_else(|| GuildError::UnknownGuild(hex::encode(gid.0)))?;
        Self::fresh(conn, g)?;
        if !g.keyed() {
            return Err(GuildError::NotReady);
        }
        let desired = g.member_devices();
        if !g.dcgka.members().is_subset(&desired) {
            return Err(GuildError::KeyRotationPending);
        }
        let view = g.crdt.view();
        let ch = view
            .channels()
            .get(&channel)
            .ok_or_else(|| GuildError::UnknownChannel(channel.0.to_string()))?;
        if ch.kind != ChannelKind::Text {
            return Err(GuildError::Invalid("not a text channel".into()));
        }
        let mut msg_id = [0u8; 16];
        keys.rng.fill_bytes(&mut msg_id);
        let now = now_ms();
        let mut payload = AppPayload {
            channel: channel.0,
            msg_id,
            seq: 1,
            sent_at: now,
            body,
        };
        // The same judgement every member makes on arrival, then what only the store knows.
        let judged =
            content::judge(view, &keys.user, &keys.user, &payload, true).map_err(|why| {
                GuildError::NotPermitted(match why {
                    "sender may not post in that channel" => {
                        "you may not send messages in this channel".to_owned()
                    }
                    other => other.replace("sender", "you"),
                })
            })?;
        content::check_local(conn, gid, &keys.user, &payload, &judged)?;
        let nickname = view
            .member(&keys.user)
            .map(|m| m.nickname.clone())
            .unwrap_or_default();
        let covered = matches!(
            (g.dcgka.send_position(), g.reserved),
            (Some((e, next)), Some((re, upto))) if e == re && next < upto
        );
        if !covered {
            let (epoch, upto, chains) = g.dcgka.reserve_sends(RESERVE_BLOCK)?;
            conn.prepare_cached(
                "INSERT INTO guild_chains (guild, sender, chains) VALUES (?1, ?2, ?3)
                 ON CONFLICT(guild, sender) DO UPDATE SET chains = excluded.chains",
            )
            .and_then(|mut s| s.execute(params![&gid.0[..], &keys.me.as_bytes()[..], &chains[..]]))
            .map_err(db_err)?;
            g.reserved = Some((epoch, upto));
        }
        let (seq, upto) = match g.next_seq {
            Some(x) => x,
            None => {
                // After a restart: past everything stored and everything reserved before.
                let reserved: Option<i64> = conn
                    .prepare_cached("SELECT upto FROM guild_seq_reserved WHERE guild = ?1")
                    .and_then(|mut s| s.query_row([&gid.0[..]], |r| r.get(0)).optional())
                    .map_err(db_err)?;
                let reserved = reserved.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
                let next = last_seq(conn, gid, &keys.me)?
                    .max(reserved)
                    .saturating_add(1);
                (next, next.saturating_sub(1))
            }
        };
        let upto = if seq > upto {
            let upto = seq.saturating_add(u64::from(RESERVE_BLOCK) - 1);
            conn.prepare_cached(
                "INSERT INTO guild_seq_reserved (guild, upto) VALUES (?1, ?2)
                 ON CONFLICT(guild) DO UPDATE SET upto = excluded.upto",
            )
            .and_then(|mut s| s.execute(params![&gid.0[..], sql(upto)]))
            .map_err(db_err)?;
            upto
        } else {
            upto
        };
        g.next_seq = Some((seq.saturating_add(1), upto));
        payload.seq = seq;
        let sealed = g.dcgka.encrypt(&keys.signer, &payload.to_bytes())?;
        // Publications still queued go first (the outbox keeps their order).
        let queued: i64 = conn
            .prepare_cached("SELECT count(*) FROM outbox")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(db_err)?;
        Ok(PreparedSend {
            message: StoredMessage {
                guild: hex::encode(gid.0),
                channel: channel.0,
                id: hex::encode(msg_id),
                sender_device: hex::encode(keys.me.as_bytes()),
                seq,
                sender: hex::encode(keys.user.as_bytes()),
                nickname,
                sent_at: now,
                received_at: now,
                text: judged.text,
                reply_to: judged.reply_to,
                thread: judged.thread,
                expires_at: judged.expires_at,
                op: judged.op,
                envelope: sealed.0.clone(),
                files: judged
                    .attachments
                    .iter()
                    .map(|a| crate::files::FileInfo::of(a, "complete"))
                    .collect(),
                attachments: judged.attachments,
                ..StoredMessage::default()
            },
            sealed: sealed.0,
            topic: g.topic.clone(),
            queued: queued > 0,
        })
    }

    /// The second half of a send: stores the message, with its publication in the outbox if
    /// `unpublished` (topic, bytes) is given, in one transaction committed without waiting for
    /// the disk. The message may be acknowledged once a [`crate::store::db::WalSync`] started
    /// after this returned has completed (concurrent sends share that fsync: group commit).
    pub fn commit_send(
        &mut self,
        conn: &mut Connection,
        gid: &GuildId,
        m: &StoredMessage,
        unpublished: Option<(&str, &[u8])>,
    ) -> Result<(), GuildError> {
        crate::store::db::relaxed(conn, |conn| -> Result<(), GuildError> {
            let tx = conn.transaction().map_err(db_err)?;
            let new_envelope = store_envelope(&tx, gid, m, &m.envelope)?;
            content::apply(&tx, gid, m, new_envelope)?;
            if let Some((topic, data)) = unpublished {
                Outbox::enqueue_in(&tx, topic, data, m.sent_at)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(())
        })
        .map_err(db_err)?
    }

    /// Records an invite in the guild and returns the change payload and the link (without
    /// addresses, which the service adds).
    pub fn create_invite(
        &mut self,
        conn: &Connection,
        gid: &GuildId,
        expires_in: Option<u64>,
        uses: u32,
    ) -> Result<(Vec<u8>, InviteLink), GuildError> {
        let mut code = [0u8; 16];
        self.keys.rng.fill_bytes(&mut code);
        let code = InviteCode(code);
        let secret = Secret32::random(&mut self.keys.rng);
        let expires_at = expires_in.map_or(0, |s| stamp(now_ms()).saturating_add(s));
        let invite = Invite {
            creator: self.keys.user,
            expires_at,
            max_uses: uses,
        };
        let token = InviteToken::issue(&self.keys.signer, *gid, code, invite);
        let payload = self.local_change(gid, vec![GuildOp::CreateInvite(code, invite)])?;
        conn.execute(
            "INSERT INTO guild_invites (code, guild, secret, token, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![&code.0[..], &gid.0[..], &secret.expose()[..], token.to_bytes(), sql(now_ms())],
        )
        .map_err(SyncError::from)?;
        Ok((
            payload,
            InviteLink {
                guild: *gid,
                invite: code,
                secret,
                expires_at,
                namespace: rendezvous_namespace(gid),
                addrs: Vec::new(),
            },
        ))
    }

    // ------------------------------------------------------------------ joining (joiner)

    /// A fresh key-agreement state and the hello for `link`.
    pub fn join_hello(&mut self, link: &InviteLink) -> Result<(Group, DirectRequest), GuildError> {
        if self.guilds.contains_key(&link.guild) {
            return Err(GuildError::Invalid("already a member of this guild".into()));
        }
        let keys = &mut self.keys;
        let dcgka = Group::new(
            link.guild.0,
            keys.me,
            PrekeyStore::new(&mut keys.rng, stamp(now_ms())),
        );
        let member_key = dcgka.member_key(&keys.signer);
        let proof = join_proof(
            &link.secret,
            &link.guild,
            &link.invite,
            &keys.me,
            &member_key,
        );
        Ok((
            dcgka,
            DirectRequest::Hello {
                guild: link.guild,
                invite: link.invite,
                cert: keys.cert,
                member_key,
                proof,
            },
        ))
    }

    /// Takes an offer: builds the guild document, authors the redemption, stores the guild
    /// (not yet welcomed) and returns the redeem request.
    pub fn join_offer(
        &mut self,
        conn: &Connection,
        link: &InviteLink,
        dcgka: Group,
        offer: DirectResponse,
    ) -> Result<DirectRequest, GuildError> {
        let (token, secret, changes) = match offer {
            DirectResponse::Offer {
                token,
                secret,
                changes,
            } => (token, secret, changes),
            DirectResponse::Refused(why) => return Err(GuildError::Join(why)),
            DirectResponse::Welcome => {
                return Err(GuildError::Join("unexpected answer to the hello".into()));
            }
        };
        if token.guild != link.guild || token.code != link.invite {
            return Err(GuildError::Join("the offer is for another invite".into()));
        }
        let keys = &mut self.keys;
        let mut crdt = Guild::join(link.guild);
        let report = crdt.receive(changes);
        if let Some((_, why)) = report.rejected.first() {
            return Err(GuildError::Join(format!(
                "the offered guild has an invalid change: {why}"
            )));
        }
        let mut g = GuildState {
            id: link.guild,
            topic: topic_for(&secret),
            secret,
            crdt,
            dcgka,
            applied: 0,
            authors: BTreeSet::new(),
            dirty: false,
            reserved: None,
            next_seq: None,
            moved: BTreeSet::new(),
            pending: VecDeque::new(),
            unreadable: 0,
            rejected: 0,
        };
        let redeem = change(
            &mut g,
            &keys.signer,
            vec![GuildOp::Redeem {
                token,
                cert: keys.cert,
                nickname: keys.display_name.clone(),
            }],
        )?;
        g.authors = g.member_devices();
        let _ = g.crdt.take_membership_events();
        let member_key = g.dcgka.member_key(&keys.signer);
        let proof = join_proof(
            &link.secret,
            &link.guild,
            &link.invite,
            &keys.me,
            &member_key,
        );
        // The stored document holds the offered changes and our redemption: all of them reach
        // the log (the offered ones are in the inviter's, the redemption is carried by it), and
        // the join is abandoned, with this row, if the inviter refuses the redemption.
        insert_row(conn, &mut g)?;
        self.insert(g);
        Ok(DirectRequest::Redeem {
            guild: link.guild,
            invite: link.invite,
            member_key,
            change: redeem,
            proof,
        })
    }

    /// Forgets a guild whose join failed, with its rows.
    pub fn abandon(&mut self, conn: &Connection, gid: &GuildId) -> Result<(), SyncError> {
        self.forget(gid);
        for table in [
            "guilds",
            "guild_outq",
            "guild_prejoin",
            "guild_member_keys",
            "guild_chains",
        ] {
            let column = if table == "guilds" { "id" } else { "guild" };
            conn.execute(
                &format!("DELETE FROM {table} WHERE {column} = ?1"),
                [&gid.0[..]],
            )
            .map_err(db_err)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ joining (inviter)

    fn invite_secret(
        conn: &Connection,
        gid: &GuildId,
        code: &InviteCode,
    ) -> Result<Option<(Secret32, InviteToken)>, SyncError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = conn
            .query_row(
                "SELECT secret, token FROM guild_invites WHERE code = ?1 AND guild = ?2",
                params![&code.0[..], &gid.0[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        let Some((s, t)) = row else { return Ok(None) };
        let s: [u8; 32] = s
            .try_into()
            .map_err(|_| SyncError::Corrupt("invite secret is not 32 bytes"))?;
        let t =
            InviteToken::from_bytes(&t).map_err(|_| SyncError::Corrupt("stored invite token"))?;
        Ok(Some((Secret32::from_bytes(s), t)))
    }

    /// Answers a hello from `peer_device`.
    pub fn on_hello(
        &mut self,
        conn: &Connection,
        peer_device: &DevicePublicKey,
        req: &DirectRequest,
    ) -> Result<DirectResponse, SyncError> {
        let DirectRequest::Hello {
            guild,
            invite,
            cert,
            member_key,
            proof,
        } = req
        else {
            return Ok(DirectResponse::Refused("expected a hello".into()));
        };
        let refuse = |s: &str| Ok(DirectResponse::Refused(s.to_owned()));
        let Some(g) = self.guilds.get_mut(guild) else {
            return refuse("unknown invite");
        };
        let Some((secret, token)) = Self::invite_secret(conn, guild, invite)? else {
            return refuse("unknown invite");
        };
        let expected = join_proof(&secret, guild, invite, &cert.device, member_key);
        if !check_proof(&expected, proof) {
            return refuse("unknown invite");
        }
        if cert.device != *peer_device || member_key.device != cert.device || !cert.verify() {
            return refuse("the certificate does not match the connection");
        }
        if member_key.verify().is_err() {
            return refuse("invalid member key");
        }
        if !g.keyed() {
            return refuse("the inviter is not ready");
        }
        let view = g.crdt.view();
        if view.bans().contains_key(&cert.user) {
            return refuse("banned from this guild");
        }
        if view.members().contains_key(&cert.user) {
            return refuse("already a member");
        }
        match view.invites().get(invite) {
            Some(s) if s.usable_at(stamp(now_ms())) => {}
            _ => return refuse("the invite expired, was used up or was revoked"),
        }
        Ok(DirectResponse::Offer {
            token,
            secret: g.secret.clone(),
            changes: g.crdt.envelopes(),
        })
    }

    /// Checks a redeem from `peer_device` and remembers its member key for the add. Returns
    /// the log payload carrying the redemption, or the refusal.
    pub fn on_redeem(
        &mut self,
        conn: &Connection,
        peer_device: &DevicePublicKey,
        req: &DirectRequest,
    ) -> Result<Result<(GuildId, Vec<u8>), DirectResponse>, SyncError> {
        let DirectRequest::Redeem {
            guild,
            invite,
            member_key,
            change,
            proof,
        } = req
        else {
            return Ok(Err(DirectResponse::Refused("expected a redemption".into())));
        };
        let refuse = |s: &str| Ok(Err(DirectResponse::Refused(s.to_owned())));
        if !self.guilds.contains_key(guild) {
            return refuse("unknown invite");
        }
        let Some((secret, _)) = Self::invite_secret(conn, guild, invite)? else {
            return refuse("unknown invite");
        };
        let expected = join_proof(&secret, guild, invite, peer_device, member_key);
        if !check_proof(&expected, proof)
            || change.author != *peer_device
            || member_key.device != *peer_device
        {
            return refuse("unknown invite");
        }
        let Ok(opened) = change.clone().open(guild) else {
            return refuse("the redemption does not verify");
        };
        let ok = matches!(
            opened.ops.as_slice(),
            [GuildOp::Redeem { token, cert, .. }] if token.code == *invite && cert.device == *peer_device
        );
        if !ok || member_key.verify().is_err() {
            return refuse("not a redemption of this invite");
        }
        conn.execute(
            "INSERT OR REPLACE INTO guild_member_keys (guild, device, member_key) VALUES (?1, ?2, ?3)",
            params![&guild.0[..], &peer_device.as_bytes()[..], member_key.to_bytes()],
        )
        .map_err(db_err)?;
        Ok(Ok((
            *guild,
            LogPayload::CrdtChange(change.clone()).to_bytes(),
        )))
    }

    // ------------------------------------------------------------------ reading

    /// Finds a guild by id (hex, or a unique prefix of at least 6 digits) or exact name.
    pub fn resolve_guild(&mut self, s: &str) -> Result<GuildId, GuildError> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        let mut by_name = Vec::new();
        let mut by_prefix = Vec::new();
        for (id, g) in self.guilds.iter_mut() {
            let h = hex::encode(id.0);
            if h == lower {
                return Ok(*id);
            }
            if g.crdt.view().name() == s {
                by_name.push(*id);
            }
            if lower.len() >= 6 && h.starts_with(&lower) {
                by_prefix.push(*id);
            }
        }
        match (by_name.as_slice(), by_prefix.as_slice()) {
            ([one], _) | ([], [one]) => Ok(*one),
            ([], []) => Err(GuildError::UnknownGuild(s.to_owned())),
            _ => Err(GuildError::Ambiguous(format!("guild {s:?}"))),
        }
    }
}

/// Stores a plain post once (tests); returns whether it was new.
#[cfg(test)]
fn store_message(
    tx: &Transaction<'_>,
    gid: &GuildId,
    m: &StoredMessage,
) -> Result<bool, SyncError> {
    let id = hex::decode(&m.id).unwrap_or_default();
    let sender = hex::decode(&m.sender_device).unwrap_or_default();
    let author = hex::decode(&m.sender).unwrap_or_default();
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO guild_messages (guild, channel, msg_id, sender, author, sent_at, received_at, text, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut s| {
            s.execute(params![
                &gid.0[..],
                sql_channel(m.channel),
                id,
                sender,
                author,
                sql(m.sent_at),
                sql(m.received_at),
                m.text,
                sql(m.seq)
            ])
        })
        .map_err(db_err)?;
    Ok(n == 1)
}

/// Keeps a message's sealed envelope for history sync (once per sender and sequence number),
/// with the message it is and the message it targets, so erasing one empties both. Returns
/// whether it was new.
fn store_envelope(
    tx: &Transaction<'_>,
    gid: &GuildId,
    m: &StoredMessage,
    envelope: &[u8],
) -> Result<bool, SyncError> {
    let sender = hex::decode(&m.sender_device).unwrap_or_default();
    // A delete's envelope is not tied to its target: erasing the target must not erase the
    // delete, which members who were offline still need.
    let target = match &m.op {
        Some(
            content::Op::React { target, .. }
            | content::Op::Edit { target, .. }
            | content::Op::Pin { target, .. },
        ) => hex::decode(target).ok(),
        Some(content::Op::Delete { .. } | content::Op::Thread { .. }) | None => None,
    };
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO guild_envelopes (guild, sender, seq, sent_at, envelope, msg_id,
                target)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![
                &gid.0[..],
                sender,
                sql(m.seq),
                sql(m.sent_at),
                envelope,
                hex::decode(&m.id).ok(),
                target
            ])
        })
        .map_err(db_err)?;
    Ok(n == 1)
}

/// The highest sequence number `device` used in `gid` that this node holds (0 if none).
pub(crate) fn last_seq(
    conn: &Connection,
    gid: &GuildId,
    device: &DevicePublicKey,
) -> Result<u64, SyncError> {
    let n: Option<i64> = conn
        .prepare_cached("SELECT MAX(seq) FROM guild_envelopes WHERE guild = ?1 AND sender = ?2")
        .and_then(|mut s| s.query_row(params![&gid.0[..], &device.as_bytes()[..]], |r| r.get(0)))
        .map_err(db_err)?;
    Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

/// A text channel with default settings.
pub fn text_channel(name: &str) -> Channel {
    Channel {
        kind: ChannelKind::Text,
        name: name.to_owned(),
        topic: String::new(),
        parent: None,
        position: 0,
        overwrites: Vec::new(),
        slow_mode_secs: 0,
        bitrate: 0,
        user_limit: 0,
        disappearing_secs: 0,
    }
}

/// A voice channel with default settings.
pub fn voice_channel(name: &str) -> Channel {
    Channel {
        kind: ChannelKind::Voice,
        bitrate: 64_000,
        ..text_channel(name)
    }
}

/// Finds a channel by numeric id or name (a leading `#` is ignored).
pub fn resolve_channel(view: &GuildView, s: &str) -> Result<ChannelId, GuildError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>()
        && view.channels().contains_key(&ChannelId(n))
    {
        return Ok(ChannelId(n));
    }
    let name = s.strip_prefix('#').unwrap_or(s);
    let found: Vec<ChannelId> = view
        .channels()
        .iter()
        .filter(|(_, c)| c.name == name)
        .map(|(id, _)| *id)
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(GuildError::UnknownChannel(s.to_owned())),
        _ => Err(GuildError::Ambiguous(format!("channel {s:?}"))),
    }
}

/// Finds a member by user id (hex or unique prefix of at least 6 digits) or nickname; banned
/// non-members are found by id too.
pub fn resolve_user(view: &GuildView, s: &str) -> Result<UserId, GuildError> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    let mut found = BTreeSet::new();
    for (u, m) in view.members() {
        let h = hex::encode(u.as_bytes());
        if h == lower {
            return Ok(*u);
        }
        if m.nickname == s || (lower.len() >= 6 && h.starts_with(&lower)) {
            found.insert(*u);
        }
    }
    if found.is_empty()
        && let Some(b) = hex::decode(&lower)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        && let Ok(u) = UserId::from_bytes(&b)
    {
        return Ok(u);
    }
    let mut it = found.into_iter();
    match (it.next(), it.next()) {
        (Some(u), None) => Ok(u),
        (None, _) => Err(GuildError::UnknownUser(s.to_owned())),
        _ => Err(GuildError::Ambiguous(format!("user {s:?}"))),
    }
}

/// Finds a role by numeric id or name.
pub fn resolve_role(view: &GuildView, s: &str) -> Result<RoleId, GuildError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>()
        && view.roles().contains_key(&RoleId(n))
    {
        return Ok(RoleId(n));
    }
    let found: Vec<RoleId> = view
        .roles()
        .iter()
        .filter(|(_, r)| r.name == s)
        .map(|(id, _)| *id)
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(GuildError::UnknownRole(s.to_owned())),
        _ => Err(GuildError::Ambiguous(format!("role {s:?}"))),
    }
}

/// Permission names accepted by `role create --perms`.
pub const PERMISSION_NAMES: &[(&str, Permissions)] = &[
    ("create_invite", Permissions::CREATE_INSTANT_INVITE),
    ("kick_members", Permissions::KICK_MEMBERS),
    ("ban_members", Permissions::BAN_MEMBERS),
    ("administrator", Permissions::ADMINISTRATOR),
    ("manage_channels", Permissions::MANAGE_CHANNELS),
    ("manage_guild", Permissions::MANAGE_GUILD),
    ("add_reactions", Permissions::ADD_REACTIONS),
    ("priority_speaker", Permissions::PRIORITY_SPEAKER),
    ("view_channel", Permissions::VIEW_CHANNEL),
    ("send_messages", Permissions::SEND_MESSAGES),
    ("manage_messages", Permissions::MANAGE_MESSAGES),
    ("attach_files", Permissions::ATTACH_FILES),
    ("mention_everyone", Permissions::MENTION_EVERYONE),
    ("connect", Permissions::CONNECT),
    ("speak", Permissions::SPEAK),
    ("mute_members", Permissions::MUTE_MEMBERS),
    ("move_members", Permissions::MOVE_MEMBERS),
    ("manage_roles", Permissions::MANAGE_ROLES),
    ("use_soundboard", Permissions::USE_SOUNDBOARD),
];

/// Parses a comma-separated permission list (names from [`PERMISSION_NAMES`], `-` and `_`
/// alike, case-insensitive; or a decimal bit mask).
pub fn parse_perms(list: &str) -> Result<Permissions, GuildError> {
    let mut p = Permissions::NONE;
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let norm = item.to_ascii_lowercase().replace('-', "_");
        if let Ok(bits) = norm.parse::<u64>() {
            p = p.union(
                Permissions::from_wire(bits)
                    .map_err(|_| GuildError::Invalid(format!("unknown permission bits {bits}")))?,
            );
            continue;
        }
        let found = PERMISSION_NAMES
            .iter()
            .find(|(n, _)| *n == norm)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                GuildError::Invalid(format!(
                    "unknown permission {item:?}; expected one of {}",
                    PERMISSION_NAMES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        p = p.union(found);
    }
    Ok(p)
}

/// Names of the bits set in `p`.
pub fn perm_names(p: Permissions) -> Vec<&'static str> {
    PERMISSION_NAMES
        .iter()
        .filter(|(_, v)| p.contains(*v))
        .map(|(n, _)| *n)
        .collect()
}

/// A role named `name` with `perms`, placed just below `author_rank` (above every other role
/// the author may manage).
pub fn new_role(view: &GuildView, author_rank: u32, name: &str, perms: Permissions) -> Role {
    let below = author_rank.saturating_sub(1).min(u32::from(u16::MAX));
    let top = view
        .roles()
        .values()
        .map(|r| u32::from(r.position))
        .filter(|p| *p <= below)
        .max()
        .unwrap_or(0);
    let position = u16::try_from((top + 1).min(below).max(1)).unwrap_or(1);
    Role {
        name: name.to_owned(),
        colour: 0,
        position,
        permissions: perms,
        mentionable: false,
        hoisted: false,
    }
}

/// Message history of a channel, oldest first, at most `limit` (the latest ones).
/// Where a page of history ends: the oldest message of the previous page, as (sent_at, sending
/// device, seq), the order [`history`] sorts by (newest first). A page "before" it holds only
/// messages strictly older in that order, so pages never overlap or skip a message, even when
/// many share one millisecond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCursor {
    /// Sender's clock of the oldest message already shown, ms.
    pub sent_at: u64,
    /// Its sending device.
    pub device: [u8; 32],
    /// Its seq.
    pub seq: u64,
}

/// A channel's newest `limit` messages (older than `before`, when given), oldest first: the
/// channel's own timeline (`thread` `None`) or one of its threads.
pub fn history(
    conn: &Connection,
    gid: &GuildId,
    channel: ChannelId,
    thread: Option<&[u8; 16]>,
    before: Option<&HistoryCursor>,
    limit: usize,
) -> Result<Vec<StoredMessage>, SyncError> {
    const COLUMNS: &str = "SELECT msg_id, sender, author, sent_at, received_at, text, seq,
        reply_to, thread, expires_at, mentions_me, edited_at FROM guild_messages";
    const ORDER: &str = "ORDER BY sent_at DESC, sender DESC, seq DESC, rorder DESC LIMIT ?3";
    let row = |r: &rusqlite::Row<'_>| {
        Ok(StoredMessage {
            guild: hex::encode(gid.0),
            channel: channel.0,
            id: hex::encode(r.get::<_, Vec<u8>>(0)?),
            sender_device: hex::encode(r.get::<_, Vec<u8>>(1)?),
            seq: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
            sender: hex::encode(r.get::<_, Vec<u8>>(2)?),
            sent_at: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
            received_at: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
            text: r.get(5)?,
            reply_to: r.get::<_, Option<Vec<u8>>>(7)?.map(hex::encode),
            thread: r.get::<_, Option<Vec<u8>>>(8)?.map(hex::encode),
            expires_at: r
                .get::<_, Option<i64>>(9)?
                .map(|t| u64::try_from(t).unwrap_or(0)),
            mentions_me: r.get(10)?,
            edited_at: r
                .get::<_, Option<i64>>(11)?
                .map(|t| u64::try_from(t).unwrap_or(0)),
            ..StoredMessage::default()
        })
    };
    let place = if thread.is_some() {
        "thread = ?7"
    } else {
        "thread IS NULL AND ?7 IS NULL"
    };
    let thread = thread.map(|t| t.to_vec());
    let (cursor_at, cursor_dev, cursor_seq, cond) = match before {
        None => (0, Vec::new(), 0, ""),
        Some(c) => (
            sql(c.sent_at),
            c.device.to_vec(),
            sql(c.seq),
            "AND sent_at <= ?4 AND (sent_at, sender, seq) < (?4, ?5, ?6)",
        ),
    };
    let mut st = conn
        .prepare_cached(&format!(
            "{COLUMNS} WHERE guild = ?1 AND channel = ?2 AND {place} {cond} {ORDER}"
        ))
        .map_err(db_err)?;
    let mut v: Vec<StoredMessage> = st
        .query_map(
            params![
                &gid.0[..],
                sql_channel(channel.0),
                sql(limit as u64),
                cursor_at,
                cursor_dev,
                cursor_seq,
                thread
            ],
            row,
        )
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    v.reverse();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Db;
    use securecomm_noise::envelope::peek_header;

    fn post(text: &str) -> Body {
        Body::Post(super::super::wire::Post {
            text: text.to_owned(),
            ..Default::default()
        })
    }

    fn engine() -> Engine {
        Engine::new(Keys::new(
            DeviceSigningKey::from_seed(&[3; 32]),
            RootSigningKey::from_seed(&[4; 32]),
            "ann".into(),
        ))
    }

    /// A one-member guild ready to send. The log is not simulated: its two document changes go
    /// straight into the document, which is saved with the row.
    fn guild(e: &mut Engine, db: &Db) -> (GuildId, ChannelId) {
        let (gid, payloads) = e.create_guild(db.conn(), "crash test").unwrap();
        let g = e.guilds.get_mut(&gid).unwrap();
        for p in payloads {
            let LogPayload::CrdtChange(sc) = LogPayload::from_bytes(&p).unwrap() else {
                panic!("expected a document change");
            };
            assert!(g.crdt.receive(vec![sc]).rejected.is_empty());
        }
        save_row(db.conn(), g, true).unwrap();
        let ch = resolve_channel(g.crdt.view(), "general").unwrap();
        (gid, ch)
    }

    /// Paging back from the newest message visits every stored message exactly once and in the
    /// same order as one big page, even when many messages share a millisecond across pages
    /// and senders.
    #[test]
    fn history_pages_cover_every_message_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("node.db"), &Secret32::from_bytes([6; 32])).unwrap();
        let gid = GuildId([9; 32]);
        let ch = ChannelId(3);
        let tx = db.conn_mut().transaction().unwrap();
        for i in 0..2_000u64 {
            let dev = [u8::try_from(i % 3).unwrap(); 32];
            let m = StoredMessage {
                guild: hex::encode(gid.0),
                channel: ch.0,
                id: hex::encode((i * 7919 % 2_003).to_be_bytes()),
                sender_device: hex::encode(dev),
                seq: i / 3 + 1,
                sender: hex::encode([1u8; 32]),
                nickname: String::new(),
                // Bursts: up to 40 messages in one millisecond.
                sent_at: 1_000 + i / 40,
                received_at: 0,
                text: format!("m{i}"),
                envelope: Vec::new(),
                ..StoredMessage::default()
            };
            assert!(store_message(&tx, &gid, &m).unwrap());
        }
        // Another channel's messages never leak into the pages.
        let mut other = history_row(&gid, 4);
        other.id = "ff".repeat(8);
        store_message(&tx, &gid, &other).unwrap();
        tx.commit().unwrap();
        let all: Vec<String> = history(db.conn(), &gid, ch, None, None, 10_000)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(all.len(), 2_000);
        for page in [1usize, 7, 40, 99, 1_000, 5_000] {
            let mut got: Vec<String> = Vec::new();
            let mut cursor: Option<HistoryCursor> = None;
            loop {
                let p = history(db.conn(), &gid, ch, None, cursor.as_ref(), page).unwrap();
                let Some(oldest) = p.first() else { break };
                assert!(p.len() <= page);
                cursor = Some(HistoryCursor {
                    sent_at: oldest.sent_at,
                    device: hex::decode(&oldest.sender_device)
                        .unwrap()
                        .try_into()
                        .unwrap(),
                    seq: oldest.seq,
                });
                let mut ids: Vec<String> = p.into_iter().map(|m| m.id).collect();
                ids.extend(got);
                got = ids;
            }
            assert_eq!(got, all, "page size {page}");
        }
    }

    /// Channels whose random ids are above `i64::MAX` keep separate histories (they all
    /// landed in one when the id was saturated into SQLite's integer).
    #[test]
    fn channels_with_high_ids_keep_their_own_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("node.db"), &Secret32::from_bytes([7; 32])).unwrap();
        let gid = GuildId([3; 32]);
        let ids = [u64::MAX, 1 << 63, (1 << 63) + 12_345, 42];
        let tx = db.conn_mut().transaction().unwrap();
        for (i, c) in ids.iter().enumerate() {
            let mut m = history_row(&gid, *c);
            m.id = format!("{i:016x}");
            m.text = format!("in {c}");
            store_message(&tx, &gid, &m).unwrap();
        }
        tx.commit().unwrap();
        for c in ids {
            let h = history(db.conn(), &gid, ChannelId(c), None, None, 100).unwrap();
            let texts: Vec<&str> = h.iter().map(|m| m.text.as_str()).collect();
            assert_eq!(texts, [format!("in {c}")], "channel {c}");
            assert_eq!(h[0].channel, c);
        }
    }

    fn history_row(gid: &GuildId, channel: u64) -> StoredMessage {
        StoredMessage {
            guild: hex::encode(gid.0),
            channel,
            id: String::new(),
            sender_device: hex::encode([0u8; 32]),
            seq: 1,
            sender: hex::encode([1u8; 32]),
            nickname: String::new(),
            sent_at: 1_010,
            received_at: 0,
            text: "elsewhere".into(),
            envelope: Vec::new(),
            ..StoredMessage::default()
        }
    }

    /// Sends with crashes (the engine and the connection dropped, the database reopened) at
    /// every point of a send: after the ciphertext exists but before the message is stored (it
    /// may have been published), right after it was acknowledged, and reloads of a dirty guild
    /// in between. No (epoch, index) is ever used twice, every acknowledged message is in the
    /// history, a crash skips at most one reserved block (receivers can bridge it), a reload
    /// skips nothing, and the disk is written synchronously only once per block.
    #[test]
    fn crash_at_any_step_never_reuses_an_index_nor_loses_an_acknowledged_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let key = Secret32::from_bytes([5; 32]);
        let mut db = Db::open(&path, &key).unwrap();
        let mut e = engine();
        let (gid, ch) = guild(&mut e, &db);
        let mut used: BTreeMap<(u64, u32), usize> = BTreeMap::new();
        let mut seqs: BTreeMap<u64, usize> = BTreeMap::new();
        let mut acked = Vec::new();
        let mut last: Option<(u64, u32)> = None;
        let (mut crashes, mut reserves, mut reloads) = (0, 0, 0);
        for i in 0..400usize {
            let before = e.guilds[&gid].reserved;
            let p = e
                .prepare_send(db.conn_mut(), &gid, ch, post(&format!("m{i}")))
                .unwrap();
            if e.guilds[&gid].reserved != before {
                reserves += 1;
            }
            let h = peek_header(&p.sealed).unwrap();
            let at = (h.epoch, h.generation);
            if let Some(prev) = used.insert(at, i) {
                panic!("send {i} reused the index of send {prev}: {at:?}");
            }
            // History sequence numbers are never reused either (a crash may skip some).
            if let Some(prev) = seqs.insert(p.message.seq, i) {
                panic!("send {i} reused the sequence number of send {prev}");
            }
            if let Some((pe, pg)) = last {
                assert_eq!(pe, h.epoch);
                assert!(h.generation > pg);
                assert!(
                    h.generation - pg <= RESERVE_BLOCK,
                    "gap {} after a crash",
                    h.generation - pg
                );
            }
            last = Some(at);
            let crash = match i % 13 {
                // Encrypted (perhaps published), never stored, never acknowledged.
                3 | 9 => true,
                // Acknowledged, then the process dies.
                6 => {
                    e.commit_send(db.conn_mut(), &gid, &p.message, None)
                        .unwrap();
                    db.wal_sync().sync().unwrap();
                    acked.push(p.message.id.clone());
                    true
                }
                _ => {
                    e.commit_send(db.conn_mut(), &gid, &p.message, None)
                        .unwrap();
                    db.wal_sync().sync().unwrap();
                    acked.push(p.message.id.clone());
                    false
                }
            };
            if crash {
                crashes += 1;
                drop(e);
                drop(db);
                db = Db::open(&path, &key).unwrap();
                e = engine();
                e.load_all(db.conn()).unwrap();
            } else if i % 5 == 0 {
                // A reload from disk (as after a local change or a rolled-back transaction)
                // keeps the position: the next index follows this one.
                reloads += 1;
                e.guilds.get_mut(&gid).unwrap().dirty = true;
                let p = e
                    .prepare_send(db.conn_mut(), &gid, ch, post("after reload"))
                    .unwrap();
                let h = peek_header(&p.sealed).unwrap();
                assert_eq!((h.epoch, h.generation), (at.0, at.1 + 1), "send {i}");
                assert!(used.insert((h.epoch, h.generation), i).is_none());
                assert!(
                    seqs.insert(p.message.seq, i).is_none(),
                    "seq reused after a reload"
                );
                last = Some((h.epoch, h.generation));
                e.commit_send(db.conn_mut(), &gid, &p.message, None)
                    .unwrap();
                db.wal_sync().sync().unwrap();
                acked.push(p.message.id.clone());
            }
        }
        drop(e);
        drop(db);
        let db = Db::open(&path, &key).unwrap();
        let stored: BTreeSet<String> = history(db.conn(), &gid, ch, None, None, 10_000)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        for id in &acked {
            assert!(stored.contains(id), "acknowledged message {id} lost");
        }
        assert!(crashes > 80 && reloads > 20);
        // One synchronous reservation per block, plus one after each crash.
        assert!(
            reserves <= crashes + used.len() / RESERVE_BLOCK as usize + 1,
            "{reserves} reservations for {} sends and {crashes} crashes",
            used.len()
        );
    }

    /// Cost floor per message, one piece at a time, for a ten-member group on a file database
    /// (the numbers in the README's performance notes). Run with
    /// `cargo test -p securecomm-node --lib cost_breakdown -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_breakdown() {
        use securecomm_noise::dcgka::ControlMessage;
        let time = |n: u32, f: &mut dyn FnMut(u32)| {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        };
        let mut rng = OsRng;
        let keys: Vec<DeviceSigningKey> = (0..10)
            .map(|_| DeviceSigningKey::generate(&mut rng))
            .collect();
        let mut gs: Vec<Group> = keys
            .iter()
            .map(|k| Group::new([7; 32], k.public(), PrekeyStore::new(&mut rng, 0)))
            .collect();
        let mks: Vec<MemberKey> = gs.iter().zip(&keys).map(|(g, k)| g.member_key(k)).collect();
        let out = gs[0].create(&keys[0], &mut rng, mks[0], &mks[1..]).unwrap();
        let create = out.broadcast.unwrap();
        let mut acks: Vec<ControlMessage> = Vec::new();
        for i in 1..10 {
            let dm = out
                .direct
                .iter()
                .find(|(r, _)| *r == keys[i].public())
                .map(|(_, d)| d.clone());
            let o = gs[i]
                .process(&keys[i], &mut rng, &create, dm.as_ref())
                .unwrap();
            acks.extend(o.broadcast);
        }
        for ack in &acks {
            for (i, g) in gs.iter_mut().enumerate().take(2) {
                if ack.sender != keys[i].public() {
                    g.process(&keys[i], &mut rng, ack, None).unwrap();
                }
            }
        }
        let (mut g0, mut g1) = (gs.remove(0), gs.remove(0));
        let payload = AppPayload {
            channel: 1,
            msg_id: [1; 16],
            seq: 1,
            sent_at: 1,
            body: post(&"x".repeat(200)),
        }
        .to_bytes();
        let n = 2000;
        let mut sealed = Vec::new();
        let enc = time(n, &mut |_| {
            sealed.push(g0.encrypt(&keys[0], &payload).unwrap())
        });
        let mut it = sealed.iter();
        let dec = time(n, &mut |_| {
            g1.decrypt(it.next().unwrap()).unwrap();
        });
        let whole = g1.to_bytes().len();
        let ser_whole = time(n, &mut |_| drop(g1.to_bytes()));
        let me0 = keys[0].public();
        let row = g1.chains_to_bytes(&me0).unwrap().len();
        let ser_row = time(n, &mut |_| drop(g1.chains_to_bytes(&me0)));

        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("node.db"), &Secret32::from_bytes([1; 32])).unwrap();
        let gid = GuildId([7; 32]);
        db.conn()
            .execute(
                "INSERT INTO guilds (id, secret, crdt, dcgka, applied, authors, joined_at) VALUES (?1, x'00', x'00', ?2, 0, x'', 0)",
                params![&gid.0[..], &g1.to_bytes()[..]],
            )
            .unwrap();
        let msg = |i: u32| StoredMessage {
            guild: String::new(),
            channel: 1,
            id: hex::encode(i.to_be_bytes()),
            sender_device: hex::encode([2; 32]),
            seq: u64::from(i),
            sender: hex::encode([3; 32]),
            nickname: String::new(),
            sent_at: u64::from(i),
            received_at: u64::from(i),
            text: "x".repeat(200),
            envelope: Vec::new(),
            ..StoredMessage::default()
        };
        let whole_bytes = g1.to_bytes();
        let chains = g1.chains_to_bytes(&me0).unwrap();
        let conn = db.conn_mut();
        let old_recv = time(n, &mut |i| {
            crate::store::db::relaxed(conn, |c| {
                let tx = c.transaction().unwrap();
                store_message(&tx, &gid, &msg(i)).unwrap();
                tx.execute(
                    "UPDATE guilds SET dcgka = ?2 WHERE id = ?1",
                    params![&gid.0[..], &whole_bytes[..]],
                )
                .unwrap();
                tx.commit().unwrap();
            })
            .unwrap();
        });
        let upsert = "INSERT INTO guild_chains (guild, sender, chains) VALUES (?1, ?2, ?3)
             ON CONFLICT(guild, sender) DO UPDATE SET chains = excluded.chains";
        let new_recv = time(n, &mut |i| {
            crate::store::db::relaxed(conn, |c| {
                let tx = c.transaction().unwrap();
                store_message(&tx, &gid, &msg(n + i)).unwrap();
                tx.execute(
                    upsert,
                    params![&gid.0[..], &me0.as_bytes()[..], &chains[..]],
                )
                .unwrap();
                tx.commit().unwrap();
            })
            .unwrap();
        });
        let batch = 16;
        let batched = time(n / batch, &mut |b| {
            crate::store::db::relaxed(conn, |c| {
                let tx = c.transaction().unwrap();
                for i in 0..batch {
                    store_message(&tx, &gid, &msg(3 * n + b * batch + i)).unwrap();
                }
                tx.execute(
                    upsert,
                    params![&gid.0[..], &me0.as_bytes()[..], &chains[..]],
                )
                .unwrap();
                tx.commit().unwrap();
            })
            .unwrap();
        }) / f64::from(batch);
        let m = 300;
        let sync_send = time(m, &mut |i| {
            let tx = conn.transaction().unwrap();
            store_message(&tx, &gid, &msg(5 * n + i)).unwrap();
            tx.commit().unwrap();
        });
        let old_send = time(m, &mut |i| {
            let tx = conn.transaction().unwrap();
            store_message(&tx, &gid, &msg(6 * n + i)).unwrap();
            tx.execute(
                "UPDATE guilds SET dcgka = ?2 WHERE id = ?1",
                params![&gid.0[..], &whole_bytes[..]],
            )
            .unwrap();
            Outbox::enqueue_in(&tx, "t", &sealed[0].0, 0).unwrap();
            tx.commit().unwrap();
        });
        println!("per message, ten-member group, 200-byte text (us):");
        println!("  encrypt + sign (sender)            {enc:8.1}");
        println!("  decrypt + verify (each receiver)   {dec:8.1}");
        println!("  whole DCGKA state: {whole} B, serialize {ser_whole:.1}");
        println!("  one sender's chains: {row} B, serialize {ser_row:.1}");
        println!("  receipt, old (msg + whole state, relaxed)   {old_recv:8.1}");
        println!("  receipt, new (msg + chain row, relaxed)     {new_recv:8.1}");
        println!("  receipt, new, batches of {batch}              {batched:8.1}");
        println!("  send commit, old (msg + state + outbox, FULL) {old_send:8.1}");
        println!("  send commit, new (msg, FULL)                  {sync_send:8.1}");
    }
}
