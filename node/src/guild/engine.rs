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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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

use super::GuildError;
use super::wire::{
    AppPayload, DirectRequest, DirectResponse, InviteLink, LogPayload, MAX_TEXT, check_proof,
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

/// What gossip validation decided.
#[derive(Debug)]
pub enum Verdict {
    /// Valid: forward it. Carries the message if it was new.
    Accept(Option<StoredMessage>),
    /// Invalid: drop it and penalise the peer that forwarded it.
    Reject(&'static str),
    /// Cannot judge (unknown key epoch, not ours): drop without penalty.
    Ignore(&'static str),
}

/// A decrypted guild message as stored.
#[derive(Debug, Clone, Serialize)]
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
    /// The text.
    pub text: String,
}

struct PendingGossip {
    data: Vec<u8>,
    since: Instant,
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
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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
    let dcgka = Group::from_bytes(&dcgka).map_err(|_| SyncError::Corrupt("stored DCGKA state"))?;
    Ok(GuildState {
        id: *id,
        topic: topic_for(&secret),
        secret,
        crdt,
        dcgka,
        applied: u64::try_from(applied).unwrap_or(0),
        authors: decode_authors(&authors),
        dirty: false,
        pending: VecDeque::new(),
        unreadable: 0,
        rejected: 0,
    })
}

fn save_row(conn: &Connection, g: &GuildState, crdt: bool) -> Result<(), SyncError> {
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

fn insert_row(conn: &Connection, g: &GuildState) -> Result<(), SyncError> {
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
    fn fresh(conn: &Connection, g: &mut GuildState) -> Result<(), SyncError> {
        let db: Option<i64> = conn
            .query_row(
                "SELECT applied FROM guilds WHERE id = ?1",
                [&g.id.0[..]],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if g.dirty || db != Some(sql(g.applied)) {
            let pending = std::mem::take(&mut g.pending);
            let (unreadable, rejected) = (g.unreadable, g.rejected);
            *g = load_row(conn, &g.id)?;
            g.pending = pending;
            g.unreadable = unreadable;
            g.rejected = rejected;
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

    /// Validates, decrypts and stores one gossip message.
    pub fn on_gossip(
        &mut self,
        conn: &mut Connection,
        topic: &str,
        data: &[u8],
    ) -> Result<Verdict, SyncError> {
        let Some(gid) = self.guild_of_topic(topic) else {
            return Ok(Verdict::Ignore("not a topic of ours"));
        };
        let Some(g) = self.guilds.get_mut(&gid) else {
            return Ok(Verdict::Ignore("not a topic of ours"));
        };
        Self::fresh(conn, g)?;
        let v = if data.len() > MAX_GOSSIP_PAYLOAD {
            Verdict::Reject("oversized")
        } else {
            Self::decrypt_store(conn, g, data, None)?
        };
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
        Ok(v)
    }

    /// Retries undecryptable gossip of `gid` after key agreement moved; returns new messages.
    pub fn retry_pending(
        &mut self,
        conn: &mut Connection,
        gid: &GuildId,
    ) -> Result<Vec<StoredMessage>, SyncError> {
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
            match Self::decrypt_store(conn, g, &p.data, None)? {
                Verdict::Accept(Some(m)) => out.push(m),
                Verdict::Ignore("unknown key epoch") if p.since.elapsed() < PENDING_GOSSIP_TTL => {
                    g.pending.push_back(p);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// History sync: validates and stores one fetched envelope exactly like live gossip, and
    /// also checks that it is what the serving peer claimed (sending device and sequence
    /// number); a mismatch is a rejection.
    pub(crate) fn on_history_item(
        &mut self,
        conn: &mut Connection,
        gid: &GuildId,
        sender: DevicePublicKey,
        seq: u64,
        data: &[u8],
    ) -> Result<Verdict, SyncError> {
        let Some(g) = self.guilds.get_mut(gid) else {
            return Ok(Verdict::Ignore("not a guild of ours"));
        };
        Self::fresh(conn, g)?;
        if data.len() > MAX_GOSSIP_PAYLOAD {
            return Ok(Verdict::Reject("oversized"));
        }
        Self::decrypt_store(conn, g, data, Some((sender, seq)))
    }

    /// Whether `device` is a member device of `gid` in the resolved view now.
    pub(crate) fn is_member_device(&mut self, gid: &GuildId, device: &DevicePublicKey) -> bool {
        self.guilds
            .get_mut(gid)
            .is_some_and(|g| g.crdt.view().user_of_device(device).is_some())
    }

    fn decrypt_store(
        conn: &mut Connection,
        g: &mut GuildState,
        data: &[u8],
        claim: Option<(DevicePublicKey, u64)>,
    ) -> Result<Verdict, SyncError> {
        let d = match g.dcgka.decrypt(&AppMessage(data.to_vec())) {
            Ok(d) => d,
            Err(GroupError::UnknownTag | GroupError::Ratchet(RatchetError::UnknownEpoch(_))) => {
                return Ok(Verdict::Ignore("unknown key epoch"));
            }
            Err(GroupError::NotJoined) => return Ok(Verdict::Ignore("unknown key epoch")),
            Err(GroupError::Removed) => return Ok(Verdict::Ignore("removed from the guild")),
            Err(GroupError::Ratchet(RatchetError::Replay { .. })) => {
                return Ok(Verdict::Reject("replayed"));
            }
            Err(_) => return Ok(Verdict::Reject("does not decrypt or verify")),
        };
        // The ratchet moved: persist it whatever the payload turns out to be.
        let verdict = match AppPayload::from_bytes(&d.plaintext) {
            Err(_) => Verdict::Reject("malformed payload"),
            Ok(p) if claim.is_some_and(|c| c != (d.sender, p.seq)) => {
                Verdict::Reject("history item is not what it claims")
            }
            Ok(p) => {
                let view = g.crdt.view();
                match view.user_of_device(&d.sender).copied() {
                    None => Verdict::Reject("sender is not a member"),
                    Some(user) => {
                        let perms = view.channel_permissions(&user, &ChannelId(p.channel));
                        let text_channel = view
                            .channels()
                            .get(&ChannelId(p.channel))
                            .is_some_and(|c| c.kind == ChannelKind::Text);
                        if !text_channel
                            || !perms.contains(
                                Permissions::VIEW_CHANNEL.union(Permissions::SEND_MESSAGES),
                            )
                        {
                            Verdict::Reject("sender may not post in that channel")
                        } else {
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
                                text: p.text,
                            }))
                        }
                    }
                }
            }
        };
        // A live receipt, acknowledged to nobody: committed without an fsync (see
        // `store::db::relaxed` for why that is safe and what a power cut may cost).
        let r = crate::store::db::relaxed(conn, |conn| -> Result<Verdict, SyncError> {
            let tx = conn.transaction().map_err(db_err)?;
            let verdict = match verdict {
                Verdict::Accept(Some(m)) => {
                    let new = store_message(&tx, &g.id, &m)?;
                    store_envelope(&tx, &g.id, &m, data)?;
                    Verdict::Accept(new.then_some(m))
                }
                v => v,
            };
            tx.prepare_cached("UPDATE guilds SET dcgka = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![&g.id.0[..], &g.dcgka.to_bytes()[..]]))
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(verdict)
        })
        .map_err(db_err)
        .and_then(|r| r);
        if r.is_err() {
            g.dirty = true;
        }
        r
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
        let g = GuildState {
            id,
            topic: topic_for(&secret),
            secret,
            crdt: Guild::join(id),
            dcgka,
            applied: 0,
            authors: BTreeSet::from([keys.me]),
            dirty: false,
            pending: VecDeque::new(),
            unreadable: 0,
            rejected: 0,
        };
        insert_row(conn, &g)?;
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

    /// Encrypts and stores a message, and queues its publication, in one transaction.
    pub fn send(
        &mut self,
        conn: &mut Connection,
        gid: &GuildId,
        channel: ChannelId,
        text: &str,
    ) -> Result<StoredMessage, GuildError> {
        if text.len() > MAX_TEXT {
            return Err(GuildError::Invalid(format!(
                "message too long: at most {MAX_TEXT} bytes, got {}",
                text.len()
            )));
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
        let perms = view.channel_permissions(&keys.user, &channel);
        if !perms.contains(Permissions::VIEW_CHANNEL.union(Permissions::SEND_MESSAGES)) {
            return Err(GuildError::NotPermitted(
                "you may not send messages in this channel".into(),
            ));
        }
        let nickname = view
            .member(&keys.user)
            .map(|m| m.nickname.clone())
            .unwrap_or_default();
        let mut msg_id = [0u8; 16];
        keys.rng.fill_bytes(&mut msg_id);
        let now = now_ms();
        let seq = last_seq(conn, gid, &keys.me)?.saturating_add(1);
        let payload = AppPayload {
            channel: channel.0,
            msg_id,
            seq,
            sent_at: now,
            text: text.to_owned(),
        };
        let sealed = g.dcgka.encrypt(&keys.signer, &payload.to_bytes())?;
        let m = StoredMessage {
            guild: hex::encode(gid.0),
            channel: channel.0,
            id: hex::encode(msg_id),
            sender_device: hex::encode(keys.me.as_bytes()),
            seq,
            sender: hex::encode(keys.user.as_bytes()),
            nickname,
            sent_at: now,
            received_at: now,
            text: text.to_owned(),
        };
        let r = (|| -> Result<(), SyncError> {
            let tx = conn.transaction().map_err(db_err)?;
            store_message(&tx, gid, &m)?;
            store_envelope(&tx, gid, &m, &sealed.0)?;
            tx.prepare_cached("UPDATE guilds SET dcgka = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![&gid.0[..], &g.dcgka.to_bytes()[..]]))
                .map_err(db_err)?;
            Outbox::enqueue_in(&tx, &g.topic, &sealed.0, now)?;
            tx.commit().map_err(db_err)?;
            Ok(())
        })();
        if let Err(e) = r {
            // The ciphertext never left; reloading discards the advanced chain with it.
            g.dirty = true;
            return Err(e.into());
        }
        Ok(m)
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
        insert_row(conn, &g)?;
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
        for table in ["guilds", "guild_outq", "guild_prejoin", "guild_member_keys"] {
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

/// Stores a message once; returns whether it was new.
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
                sql(m.channel),
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

/// Keeps a message's sealed envelope for history sync (once per sender and sequence number).
fn store_envelope(
    tx: &Transaction<'_>,
    gid: &GuildId,
    m: &StoredMessage,
    envelope: &[u8],
) -> Result<(), SyncError> {
    let sender = hex::decode(&m.sender_device).unwrap_or_default();
    tx.prepare_cached(
        "INSERT OR IGNORE INTO guild_envelopes (guild, sender, seq, sent_at, envelope)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            &gid.0[..],
            sender,
            sql(m.seq),
            sql(m.sent_at),
            envelope
        ])
    })
    .map_err(db_err)?;
    Ok(())
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
pub fn history(
    conn: &Connection,
    gid: &GuildId,
    channel: ChannelId,
    limit: usize,
) -> Result<Vec<StoredMessage>, SyncError> {
    let mut st = conn
        .prepare_cached(
            "SELECT msg_id, sender, author, sent_at, received_at, text, seq FROM guild_messages
             WHERE guild = ?1 AND channel = ?2
             ORDER BY sent_at DESC, sender DESC, seq DESC, rorder DESC LIMIT ?3",
        )
        .map_err(db_err)?;
    let rows = st
        .query_map(
            params![&gid.0[..], sql(channel.0), sql(limit as u64)],
            |r| {
                Ok(StoredMessage {
                    guild: hex::encode(gid.0),
                    channel: channel.0,
                    id: hex::encode(r.get::<_, Vec<u8>>(0)?),
                    sender_device: hex::encode(r.get::<_, Vec<u8>>(1)?),
                    seq: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                    sender: hex::encode(r.get::<_, Vec<u8>>(2)?),
                    nickname: String::new(),
                    sent_at: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                    received_at: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                    text: r.get(5)?,
                })
            },
        )
        .map_err(db_err)?;
    let mut v: Vec<StoredMessage> = rows.collect::<Result<_, _>>().map_err(db_err)?;
    v.reverse();
    Ok(v)
}
