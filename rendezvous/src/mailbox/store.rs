//! The mailbox's state: items, recipient claims and prekey bundles in SQLite, and the
//! in-memory quota counters and replay cache that go with them.
//!
//! [`Store`] is synchronous and single-owner: one worker thread ([`super::service`]) holds it,
//! so every request is applied alone and quotas are checked and charged without races. Each
//! change is one SQLite transaction; the in-memory counters are updated only after it commits
//! and are rebuilt from the tables when the store is opened.
//!
//! # Tables
//! * `items`: one row per deposit: sender peer id, times, size, the blob exactly as received,
//!   the number of recipients that have not acked (`claims`) and a state (live, delivered,
//!   expired). When the last recipient acks, or the item expires, the blob is set to NULL and
//!   the row stays as a small delivery record for [`TOMBSTONE_SECS`] so the sender can ask
//!   about it; at most `max_items` such records are kept (oldest dropped first).
//! * `claims`: (tag, item) for each recipient that has not acked.
//! * `prekeys`: (peer id, published_at, expires_at, bundle).
//!
//! `PRAGMA secure_delete` makes SQLite overwrite freed content with zeros, so a delivered or
//! expired blob does not linger in the file's free pages. Nothing in the database is derived
//! from a blob: it holds the bytes as deposited and their length.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::Path,
    time::Duration,
};

use libp2p::PeerId;
use rusqlite::{Connection, OptionalExtension, params};
use thiserror::Error;

use super::wire::{
    AUTH_WINDOW_SECS, AuthError, AuthFailure, Deposit, Item, ItemState, MAX_IDS, MAX_PAGE_BYTES,
    MAX_PAGE_ITEMS, PickupAuth, Quota, Refusal, Request, Response, Tag,
};
use crate::config::MailboxLimits;

/// File name of the mailbox database inside the relay's data directory.
pub const DB_FILE: &str = "mailbox.sqlite3";
/// How long a delivery record outlives its blob (for [`Request::Status`]).
pub const TOMBSTONE_SECS: u64 = 7 * 24 * 3600;
/// Most pickup signatures remembered to refuse replays. When full of signatures that are still
/// inside the time window, authenticated requests are refused as busy rather than forgetting.
pub const MAX_SEEN_SIGNATURES: usize = 1 << 16;
/// Expired items handled per sweep transaction.
const SWEEP_BATCH: i64 = 512;
const SCHEMA_VERSION: i64 = 1;

const STATE_LIVE: i64 = 0;
const STATE_DELIVERED: i64 = 1;
const STATE_EXPIRED: i64 = 2;

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("mailbox database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer relay.
    #[error("mailbox database schema: expected version {SCHEMA_VERSION}, got {0}")]
    Schema(i64),
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    bytes: u64,
    items: u64,
}

impl Usage {
    fn add(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
        self.items = self.items.saturating_add(1);
    }

    fn sub(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_sub(bytes);
        self.items = self.items.saturating_sub(1);
    }

    fn fits(&self, bytes: u64, max_bytes: u64, max_items: u64) -> bool {
        self.bytes.saturating_add(bytes) <= max_bytes && self.items < max_items
    }
}

/// Recently used pickup signatures (bounded; see [`MAX_SEEN_SIGNATURES`]).
#[derive(Debug, Default)]
struct ReplayCache {
    seen: HashSet<[u8; 64]>,
    order: VecDeque<([u8; 64], u64)>,
}

impl ReplayCache {
    /// A signature inserted at `t` verified a timestamp of at most `t + window`, which is stale
    /// once the clock passes `t + 2 * window`.
    fn prune(&mut self, now: u64) {
        while let Some((sig, at)) = self.order.front() {
            if at.saturating_add(2 * AUTH_WINDOW_SECS) >= now {
                break;
            }
            self.seen.remove(sig);
            self.order.pop_front();
        }
    }

    fn insert(&mut self, sig: [u8; 64], now: u64) -> Result<(), Refusal> {
        self.prune(now);
        if self.seen.contains(&sig) {
            return Err(Refusal::Unauthorized(AuthFailure::Replayed));
        }
        if self.seen.len() >= MAX_SEEN_SIGNATURES {
            return Err(Refusal::Busy {
                retry_after_secs: 10,
            });
        }
        self.seen.insert(sig);
        self.order.push_back((sig, now));
        Ok(())
    }
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Items that expired with recipients left.
    pub expired: u64,
    /// Prekey bundles dropped.
    pub prekeys_expired: u64,
}

/// The mailbox and prekey directory of one relay.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    limits: MailboxLimits,
    ttl_secs: u64,
    relay: PeerId,
    recipients: HashMap<Tag, Usage>,
    senders: HashMap<Vec<u8>, Usage>,
    total: Usage,
    prekeys: u64,
    seen: ReplayCache,
}

fn sql(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

fn unsql(x: i64) -> u64 {
    u64::try_from(x).unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the database at `path`, or an in-memory one when `None`.
    /// Items live `ttl_secs`; pickup proofs must name `relay`.
    pub fn open(
        path: Option<&Path>,
        limits: &MailboxLimits,
        ttl_secs: u64,
        relay: PeerId,
    ) -> Result<Self, StoreError> {
        let conn = match path {
            Some(p) => Connection::open(p)?,
            None => Connection::open_in_memory()?,
        };
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA secure_delete = ON; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        match version {
            0 => conn.execute_batch(
                "BEGIN;
                 CREATE TABLE items(
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    sender BLOB NOT NULL,
                    deposited_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL,
                    size INTEGER NOT NULL,
                    blob BLOB,
                    claims INTEGER NOT NULL,
                    state INTEGER NOT NULL,
                    keep_until INTEGER NOT NULL);
                 CREATE INDEX items_sender ON items(sender, state);
                 CREATE INDEX items_expiry ON items(state, expires_at);
                 CREATE TABLE claims(
                    tag BLOB NOT NULL,
                    item INTEGER NOT NULL REFERENCES items(id),
                    PRIMARY KEY(tag, item)) WITHOUT ROWID;
                 CREATE INDEX claims_item ON claims(item);
                 CREATE TABLE prekeys(
                    peer BLOB PRIMARY KEY,
                    published_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL,
                    bundle BLOB NOT NULL) WITHOUT ROWID;
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?,
            SCHEMA_VERSION => {}
            other => return Err(StoreError::Schema(other)),
        }
        let mut store = Self {
            conn,
            limits: limits.clone(),
            ttl_secs: ttl_secs.max(1),
            relay,
            recipients: HashMap::new(),
            senders: HashMap::new(),
            total: Usage::default(),
            prekeys: 0,
            seen: ReplayCache::default(),
        };
        store.recount()?;
        Ok(store)
    }

    fn recount(&mut self) -> Result<(), StoreError> {
        self.recipients.clear();
        self.senders.clear();
        let mut q = self.conn.prepare(
            "SELECT c.tag, COUNT(*), SUM(i.size) FROM claims c JOIN items i ON i.id = c.item
             GROUP BY c.tag",
        )?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (tag, items, bytes) = row?;
            if let Ok(tag) = Tag::try_from(tag.as_slice()) {
                self.recipients.insert(
                    tag,
                    Usage {
                        bytes: unsql(bytes),
                        items: unsql(items),
                    },
                );
            }
        }
        drop(q);
        let mut q = self.conn.prepare(
            "SELECT sender, COUNT(*), SUM(size) FROM items WHERE state = 0 GROUP BY sender",
        )?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut total = Usage::default();
        for row in rows {
            let (sender, items, bytes) = row?;
            let u = Usage {
                bytes: unsql(bytes),
                items: unsql(items),
            };
            total.bytes = total.bytes.saturating_add(u.bytes);
            total.items = total.items.saturating_add(u.items);
            self.senders.insert(sender, u);
        }
        drop(q);
        self.total = total;
        self.prekeys = unsql(
            self.conn
                .query_row("SELECT COUNT(*) FROM prekeys", [], |r| r.get(0))?,
        );
        Ok(())
    }

    /// Blob bytes currently stored (each blob once).
    pub fn bytes_stored(&self) -> u64 {
        self.total.bytes
    }

    /// Items currently stored (not yet delivered to every recipient nor expired).
    pub fn items_stored(&self) -> u64 {
        self.total.items
    }

    /// Serves one request from `peer` (the connection's authenticated peer id) at `now` (unix
    /// seconds). Storage failures become [`Refusal::Internal`] and are logged without content.
    pub fn handle(&mut self, peer: &PeerId, request: Request, now: u64) -> Response {
        let result = match request {
            Request::Deposit(d) => self.deposit(peer, &d, now),
            Request::Pickup {
                auth,
                after,
                max_items,
                max_bytes,
            } => self.pickup(&auth, after, max_items, max_bytes, now),
            Request::Ack { auth, ids } => self.ack(&auth, &ids, now),
            Request::Status { ids } => self.status(peer, &ids, now),
            Request::PublishPrekeys {
                peer: owner,
                published_at,
                bundle,
            } => self.publish(peer, &owner, published_at, &bundle, now),
            Request::FetchPrekeys { peer: owner } => self.fetch(&owner, now),
        };
        match result {
            Ok(Ok(response)) => response,
            Ok(Err(refusal)) => Response::Refused(refusal),
            Err(e) => {
                tracing::warn!(error = %e, "mailbox storage failure");
                Response::Refused(Refusal::Internal)
            }
        }
    }

    fn quota(&self, which: Quota, now: u64) -> Result<Refusal, StoreError> {
        let earliest: Option<i64> = match &which {
            Quota::Recipient(tag) => self.conn.query_row(
                "SELECT MIN(i.expires_at) FROM claims c JOIN items i ON i.id = c.item
                 WHERE c.tag = ?1",
                [tag.as_slice()],
                |r| r.get(0),
            )?,
            Quota::Sender => None,
            Quota::Relay => self.conn.query_row(
                "SELECT MIN(expires_at) FROM items WHERE state = 0",
                [],
                |r| r.get(0),
            )?,
        };
        let earliest = earliest
            .map(unsql)
            .unwrap_or(now.saturating_add(self.ttl_secs));
        Ok(Refusal::QuotaExceeded {
            which,
            retry_after_secs: earliest.saturating_sub(now).clamp(1, self.ttl_secs),
        })
    }

    fn sender_quota(&self, sender: &[u8], now: u64) -> Result<Refusal, StoreError> {
        let earliest: Option<i64> = self.conn.query_row(
            "SELECT MIN(expires_at) FROM items WHERE sender = ?1 AND state = 0",
            [sender],
            |r| r.get(0),
        )?;
        let earliest = earliest
            .map(unsql)
            .unwrap_or(now.saturating_add(self.ttl_secs));
        Ok(Refusal::QuotaExceeded {
            which: Quota::Sender,
            retry_after_secs: earliest.saturating_sub(now).clamp(1, self.ttl_secs),
        })
    }

    fn deposit(
        &mut self,
        peer: &PeerId,
        d: &Deposit,
        now: u64,
    ) -> Result<Result<Response, Refusal>, StoreError> {
        let l = &self.limits;
        if !l.enabled {
            return Ok(Err(Refusal::Disabled));
        }
        let size = d.blob().len() as u64;
        if size > l.max_item_bytes {
            return Ok(Err(Refusal::TooLarge {
                max: l.max_item_bytes,
            }));
        }
        if !self.total.fits(size, l.max_total_bytes, l.max_items) {
            return self.quota(Quota::Relay, now).map(Err);
        }
        let sender = peer.to_bytes();
        let su = self.senders.get(&sender).copied().unwrap_or_default();
        if !su.fits(size, l.max_bytes_per_sender, l.max_items_per_sender) {
            return self.sender_quota(&sender, now).map(Err);
        }
        for tag in d.tags() {
            let ru = self.recipients.get(tag).copied().unwrap_or_default();
            if !ru.fits(size, l.max_bytes_per_recipient, l.max_items_per_recipient) {
                return self.quota(Quota::Recipient(*tag), now).map(Err);
            }
        }
        // A disappearing message asks to go sooner; nobody may ask to stay longer.
        let ttl = d
            .ttl_secs()
            .map_or(self.ttl_secs, |t| u64::from(t).min(self.ttl_secs));
        let expires_at = now.saturating_add(ttl);
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO items(sender, deposited_at, expires_at, size, blob, claims, state,
                keep_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
            params![
                sender,
                sql(now),
                sql(expires_at),
                sql(size),
                d.blob(),
                d.tags().len() as i64,
                sql(expires_at.saturating_add(TOMBSTONE_SECS)),
            ],
        )?;
        let id = tx.last_insert_rowid();
        {
            let mut ins = tx.prepare("INSERT INTO claims(tag, item) VALUES (?1, ?2)")?;
            for tag in d.tags() {
                ins.execute(params![tag.as_slice(), id])?;
            }
        }
        tx.commit()?;
        self.total.add(size);
        self.senders.entry(sender).or_default().add(size);
        for tag in d.tags() {
            self.recipients.entry(*tag).or_default().add(size);
        }
        Ok(Ok(Response::Stored {
            id: unsql(id),
            expires_at,
        }))
    }

    fn authenticate(&mut self, auth: &PickupAuth, now: u64) -> Result<Tag, Refusal> {
        let tag = auth.verify(&self.relay, now).map_err(|e| match e {
            AuthError::ClockSkew { .. } => Refusal::ClockSkew { relay_time: now },
            AuthError::BadSignature => Refusal::Unauthorized(AuthFailure::BadSignature),
        })?;
        self.seen.insert(auth.signature, now)?;
        Ok(tag)
    }

    fn pickup(
        &mut self,
        auth: &PickupAuth,
        after: u64,
        max_items: u16,
        max_bytes: u32,
        now: u64,
    ) -> Result<Result<Response, Refusal>, StoreError> {
        let tag = match self.authenticate(auth, now) {
            Ok(t) => t,
            Err(r) => return Ok(Err(r)),
        };
        let max_items = usize::from(max_items).clamp(1, MAX_PAGE_ITEMS);
        let max_bytes = u64::from(max_bytes).clamp(1, MAX_PAGE_BYTES as u64);
        // Heads first, so the blob of an item that does not fit is never read.
        let mut q = self.conn.prepare_cached(
            "SELECT i.id, i.deposited_at, i.size FROM claims c JOIN items i ON i.id = c.item
             WHERE c.tag = ?1 AND c.item > ?2 AND i.state = 0 AND i.expires_at > ?3
             ORDER BY c.item LIMIT ?4",
        )?;
        let heads = q
            .query_map(
                params![tag.as_slice(), sql(after), sql(now), (max_items + 1) as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        drop(q);
        let mut chosen = Vec::new();
        let mut bytes = 0u64;
        let mut more = false;
        for (id, at, size) in heads {
            let size = unsql(size);
            if chosen.len() == max_items || (!chosen.is_empty() && bytes + size > max_bytes) {
                more = true;
                break;
            }
            bytes += size;
            chosen.push((id, at));
        }
        let mut get = self
            .conn
            .prepare_cached("SELECT blob FROM items WHERE id = ?1")?;
        let mut items = Vec::with_capacity(chosen.len());
        for (id, at) in chosen {
            let blob: Option<Vec<u8>> = get.query_row([id], |r| r.get(0))?;
            if let Some(blob) = blob {
                items.push(Item {
                    id: unsql(id),
                    deposited_at: unsql(at),
                    blob,
                });
            }
        }
        Ok(Ok(Response::Page { items, more }))
    }

    fn ack(
        &mut self,
        auth: &PickupAuth,
        ids: &[u64],
        now: u64,
    ) -> Result<Result<Response, Refusal>, StoreError> {
        let tag = match self.authenticate(auth, now) {
            Ok(t) => t,
            Err(r) => return Ok(Err(r)),
        };
        let mut ids: Vec<u64> = ids.iter().copied().take(MAX_IDS).collect();
        ids.sort_unstable();
        ids.dedup();
        let tx = self.conn.transaction()?;
        // (sender, size, delivered to everyone)
        let mut freed: Vec<(Vec<u8>, u64, bool)> = Vec::new();
        {
            let mut del = tx.prepare("DELETE FROM claims WHERE tag = ?1 AND item = ?2")?;
            let mut get = tx.prepare("SELECT sender, size, claims FROM items WHERE id = ?1")?;
            let mut dec = tx.prepare("UPDATE items SET claims = claims - 1 WHERE id = ?1")?;
            let mut done = tx.prepare(
                "UPDATE items SET claims = 0, state = ?2, blob = NULL, keep_until = ?3
                 WHERE id = ?1",
            )?;
            for id in ids {
                let id = sql(id);
                if del.execute(params![tag.as_slice(), id])? == 0 {
                    continue;
                }
                let (sender, size, claims): (Vec<u8>, i64, i64) =
                    get.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                let delivered = claims <= 1;
                if delivered {
                    done.execute(params![
                        id,
                        STATE_DELIVERED,
                        sql(now.saturating_add(TOMBSTONE_SECS))
                    ])?;
                } else {
                    dec.execute([id])?;
                }
                freed.push((sender, unsql(size), delivered));
            }
        }
        tx.commit()?;
        let removed = u16::try_from(freed.len()).unwrap_or(u16::MAX);
        for (sender, size, delivered) in freed {
            self.release_claim(&tag, size);
            if delivered {
                self.release_item(&sender, size);
            }
        }
        Ok(Ok(Response::Acked { removed }))
    }

    fn release_claim(&mut self, tag: &Tag, size: u64) {
        if let Some(u) = self.recipients.get_mut(tag) {
            u.sub(size);
            if u.items == 0 {
                self.recipients.remove(tag);
            }
        }
    }

    fn release_item(&mut self, sender: &[u8], size: u64) {
        self.total.sub(size);
        if let Some(u) = self.senders.get_mut(sender) {
            u.sub(size);
            if u.items == 0 {
                self.senders.remove(sender);
            }
        }
    }

    fn status(
        &mut self,
        peer: &PeerId,
        ids: &[u64],
        now: u64,
    ) -> Result<Result<Response, Refusal>, StoreError> {
        let sender = peer.to_bytes();
        let mut q = self.conn.prepare_cached(
            "SELECT state, claims, expires_at FROM items WHERE id = ?1 AND sender = ?2",
        )?;
        let mut entries = Vec::with_capacity(ids.len().min(MAX_IDS));
        for &id in ids.iter().take(MAX_IDS) {
            let row: Option<(i64, i64, i64)> = q
                .query_row(params![sql(id), sender], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let state = match row {
                None => ItemState::Unknown,
                Some((state, claims, expires_at)) => {
                    let claims = u16::try_from(claims).unwrap_or(u16::MAX);
                    match state {
                        STATE_LIVE if unsql(expires_at) <= now => ItemState::Expired(claims),
                        STATE_LIVE => ItemState::Remaining(claims),
                        STATE_DELIVERED => ItemState::Remaining(0),
                        _ => ItemState::Expired(claims),
                    }
                }
            };
            entries.push((id, state));
        }
        Ok(Ok(Response::Status { entries }))
    }

    fn publish(
        &mut self,
        conn_peer: &PeerId,
        owner: &PeerId,
        published_at: u64,
        bundle: &[u8],
        now: u64,
    ) -> Result<Result<Response, Refusal>, StoreError> {
        if owner != conn_peer {
            return Ok(Err(Refusal::Forbidden));
        }
        if published_at > now.saturating_add(AUTH_WINDOW_SECS) {
            return Ok(Err(Refusal::ClockSkew { relay_time: now }));
        }
        let key = owner.to_bytes();
        let existing: Option<(i64, i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT published_at, expires_at, bundle FROM prekeys WHERE peer = ?1",
                [&key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match &existing {
            Some((current, expires_at, stored)) if unsql(*expires_at) > now => {
                let current = unsql(*current);
                if current > published_at || (current == published_at && stored != bundle) {
                    return Ok(Err(Refusal::Outdated {
                        current_published_at: current,
                    }));
                }
            }
            Some(_) => {}
            None => {
                if self.prekeys >= self.limits.max_prekey_entries {
                    return Ok(Err(Refusal::QuotaExceeded {
                        which: Quota::Relay,
                        retry_after_secs: 3600,
                    }));
                }
            }
        }
        let expires_at = now.saturating_add(self.limits.prekey_ttl_secs);
        self.conn.execute(
            "INSERT OR REPLACE INTO prekeys(peer, published_at, expires_at, bundle)
             VALUES (?1, ?2, ?3, ?4)",
            params![key, sql(published_at), sql(expires_at), bundle],
        )?;
        if existing.is_none() {
            self.prekeys += 1;
        }
        Ok(Ok(Response::PrekeysPublished { expires_at }))
    }

    fn fetch(&mut self, owner: &PeerId, now: u64) -> Result<Result<Response, Refusal>, StoreError> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT published_at, bundle FROM prekeys WHERE peer = ?1 AND expires_at > ?2",
                params![owner.to_bytes(), sql(now)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(Ok(match row {
            Some((published_at, bundle)) => Response::Prekeys {
                published_at: unsql(published_at),
                bundle,
            },
            None => Response::PrekeysNotFound,
        }))
    }

    /// Expires items and prekey bundles whose time has come, drops old delivery records and
    /// forgets stale pickup signatures.
    pub fn sweep(&mut self, now: u64) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        loop {
            let tx = self.conn.transaction()?;
            let mut expired: Vec<(Vec<u8>, u64, Vec<Tag>)> = Vec::new();
            {
                let mut q = tx.prepare(
                    "SELECT id, sender, size FROM items WHERE state = 0 AND expires_at <= ?1
                     ORDER BY expires_at LIMIT ?2",
                )?;
                let rows = q
                    .query_map(params![sql(now), SWEEP_BATCH], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let mut tags_of = tx.prepare("SELECT tag FROM claims WHERE item = ?1")?;
                let mut del = tx.prepare("DELETE FROM claims WHERE item = ?1")?;
                let mut mark = tx.prepare(
                    "UPDATE items SET state = ?2, blob = NULL, keep_until = ?3 WHERE id = ?1",
                )?;
                for (id, sender, size) in rows {
                    let tags = tags_of
                        .query_map([id], |r| r.get::<_, Vec<u8>>(0))?
                        .filter_map(|t| t.ok().and_then(|t| Tag::try_from(t.as_slice()).ok()))
                        .collect();
                    del.execute([id])?;
                    mark.execute(params![
                        id,
                        STATE_EXPIRED,
                        sql(now.saturating_add(TOMBSTONE_SECS))
                    ])?;
                    expired.push((sender, unsql(size), tags));
                }
            }
            tx.commit()?;
            if expired.is_empty() {
                break;
            }
            report.expired += expired.len() as u64;
            for (sender, size, tags) in expired {
                for tag in &tags {
                    self.release_claim(tag, size);
                }
                self.release_item(&sender, size);
            }
        }
        self.conn.execute(
            "DELETE FROM items WHERE state != 0 AND keep_until <= ?1",
            [sql(now)],
        )?;
        let records: i64 =
            self.conn
                .query_row("SELECT COUNT(*) FROM items WHERE state != 0", [], |r| {
                    r.get(0)
                })?;
        let excess = records.saturating_sub(sql(self.limits.max_items));
        if excess > 0 {
            self.conn.execute(
                "DELETE FROM items WHERE id IN
                   (SELECT id FROM items WHERE state != 0 ORDER BY id LIMIT ?1)",
                [excess],
            )?;
        }
        report.prekeys_expired = self
            .conn
            .execute("DELETE FROM prekeys WHERE expires_at <= ?1", [sql(now)])?
            as u64;
        self.prekeys = self.prekeys.saturating_sub(report.prekeys_expired);
        self.seen.prune(now);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use libp2p::identity::ed25519;

    use super::*;
    use crate::mailbox::wire::tag_for;

    fn limits() -> MailboxLimits {
        MailboxLimits {
            max_item_bytes: 1024,
            max_bytes_per_recipient: 4096,
            max_bytes_per_sender: 8192,
            max_total_bytes: 16384,
            ..MailboxLimits::default()
        }
    }

    fn mailbox_key(seed: u8) -> ed25519::Keypair {
        ed25519::Keypair::from(ed25519::SecretKey::try_from_bytes([seed; 32]).unwrap())
    }

    fn tag(kp: &ed25519::Keypair) -> Tag {
        tag_for(&kp.public().to_bytes())
    }

    fn deposit(tags: &[Tag], len: usize) -> Request {
        Request::Deposit(Deposit::new(tags.iter().copied(), vec![0x5A; len]).unwrap())
    }

    fn pickup(store: &mut Store, kp: &ed25519::Keypair, now: u64) -> (Vec<Item>, bool) {
        let auth = PickupAuth::sign(kp, &store.relay, now);
        match store.handle(
            &PeerId::random(),
            Request::Pickup {
                auth,
                after: 0,
                max_items: 100,
                max_bytes: 1 << 20,
            },
            now,
        ) {
            Response::Page { items, more } => (items, more),
            other => panic!("expected a page, got {other:?}"),
        }
    }

    fn ack(store: &mut Store, kp: &ed25519::Keypair, ids: Vec<u64>, now: u64) -> Response {
        let auth = PickupAuth::sign(kp, &store.relay, now);
        store.handle(&PeerId::random(), Request::Ack { auth, ids }, now)
    }

    #[test]
    fn quotas_are_exact_and_released() {
        let mut s = Store::open(None, &limits(), 1000, PeerId::random()).unwrap();
        let sender = PeerId::random();
        let a = mailbox_key(1);
        // Four 1 KiB items fill the recipient quota exactly; the fifth is refused.
        let mut ids = Vec::new();
        for _ in 0..4 {
            match s.handle(&sender, deposit(&[tag(&a)], 1024), 10) {
                Response::Stored { id, expires_at } => {
                    assert_eq!(expires_at, 1010);
                    ids.push(id);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            s.handle(&sender, deposit(&[tag(&a)], 1), 20),
            Response::Refused(Refusal::QuotaExceeded {
                which: Quota::Recipient(tag(&a)),
                retry_after_secs: 990
            })
        );
        assert_eq!(
            s.handle(&sender, deposit(&[tag(&a)], 1025), 20),
            Response::Refused(Refusal::TooLarge { max: 1024 })
        );
        assert_eq!(
            ack(&mut s, &a, vec![ids[0], ids[0], 999], 20),
            Response::Acked { removed: 1 }
        );
        assert!(matches!(
            s.handle(&sender, deposit(&[tag(&a)], 1024), 21),
            Response::Stored { .. }
        ));
        // Sender quota: 8 KiB. Already 4 KiB live for this sender; other recipients fill it.
        let b = mailbox_key(2);
        let c = mailbox_key(3);
        for _ in 0..4 {
            assert!(matches!(
                s.handle(&sender, deposit(&[tag(&b), tag(&c)], 1024), 22),
                Response::Stored { .. }
            ));
        }
        assert!(matches!(
            s.handle(&sender, deposit(&[tag(&mailbox_key(4))], 1), 22),
            Response::Refused(Refusal::QuotaExceeded {
                which: Quota::Sender,
                ..
            })
        ));
        assert_eq!(s.bytes_stored(), 8192);
        // Reopening rebuilds the same counters.
        s.recount().unwrap();
        assert_eq!(s.bytes_stored(), 8192);
        assert_eq!(s.items_stored(), 8);
    }

    #[test]
    fn replay_and_skew_and_wrong_relay_are_refused() {
        let relay = PeerId::random();
        let mut s = Store::open(None, &limits(), 1000, relay).unwrap();
        let a = mailbox_key(1);
        let auth = PickupAuth::sign(&a, &relay, 500);
        let req = Request::Pickup {
            auth: auth.clone(),
            after: 0,
            max_items: 1,
            max_bytes: 1,
        };
        assert!(matches!(
            s.handle(&PeerId::random(), req.clone(), 500),
            Response::Page { .. }
        ));
        assert_eq!(
            s.handle(&PeerId::random(), req.clone(), 501),
            Response::Refused(Refusal::Unauthorized(AuthFailure::Replayed))
        );
        // Still refused late in the window, then too old anyway.
        assert_eq!(
            s.handle(&PeerId::random(), req.clone(), 800),
            Response::Refused(Refusal::Unauthorized(AuthFailure::Replayed))
        );
        assert_eq!(
            s.handle(&PeerId::random(), req, 801),
            Response::Refused(Refusal::ClockSkew { relay_time: 801 })
        );
        let other = PickupAuth::sign(&a, &PeerId::random(), 900);
        assert_eq!(
            s.handle(
                &PeerId::random(),
                Request::Ack {
                    auth: other,
                    ids: vec![1]
                },
                900
            ),
            Response::Refused(Refusal::Unauthorized(AuthFailure::BadSignature))
        );
    }

    #[test]
    fn paging_is_ordered_bounded_and_resumable() {
        let mut s = Store::open(None, &limits(), 1000, PeerId::random()).unwrap();
        let a = mailbox_key(1);
        let sender = PeerId::random();
        for len in [100usize, 200, 300, 400] {
            s.handle(&sender, deposit(&[tag(&a)], len), 1);
        }
        let relay = s.relay;
        let page = |s: &mut Store, after, max_items, max_bytes, now| {
            let auth = PickupAuth::sign(&a, &relay, now);
            match s.handle(
                &sender,
                Request::Pickup {
                    auth,
                    after,
                    max_items,
                    max_bytes,
                },
                now,
            ) {
                Response::Page { items, more } => (
                    items.iter().map(|i| i.blob.len()).collect::<Vec<_>>(),
                    items.last().map(|i| i.id).unwrap_or(0),
                    more,
                ),
                other => panic!("{other:?}"),
            }
        };
        let (lens, last, more) = page(&mut s, 0, 10, 350, 2);
        assert_eq!((lens, more), (vec![100, 200], true));
        let (lens, last, more) = page(&mut s, last, 1, 10, 3);
        // A single item larger than max_bytes still comes, alone.
        assert_eq!((lens, more), (vec![300], true));
        let (lens, _, more) = page(&mut s, last, 10, 1 << 20, 4);
        assert_eq!((lens, more), (vec![400], false));
    }

    #[test]
    fn a_deposit_with_a_shorter_time_limit_goes_sooner_and_a_longer_one_is_capped() {
        let mut s = Store::open(None, &limits(), 100, PeerId::random()).unwrap();
        let a = mailbox_key(1);
        let short = Request::Deposit(Deposit::new([tag(&a)], vec![1; 10]).unwrap().with_ttl(5));
        let long = Request::Deposit(
            Deposit::new([tag(&a)], vec![2; 10])
                .unwrap()
                .with_ttl(10_000),
        );
        let Response::Stored { expires_at, .. } = s.handle(&PeerId::random(), short, 1_000) else {
            panic!()
        };
        assert_eq!(expires_at, 1_005);
        let Response::Stored { expires_at, .. } = s.handle(&PeerId::random(), long, 1_000) else {
            panic!()
        };
        assert_eq!(expires_at, 1_100);
        // Past the short limit only the long one is picked up, and the sweep drops the short.
        assert_eq!(pickup(&mut s, &a, 1_006).0.len(), 1);
        assert_eq!(s.sweep(1_006).unwrap().expired, 1);
    }

    #[test]
    fn expiry_keeps_a_record_and_frees_quota() {
        let mut s = Store::open(None, &limits(), 10, PeerId::random()).unwrap();
        let a = mailbox_key(1);
        let sender = PeerId::random();
        let Response::Stored { id, .. } = s.handle(&sender, deposit(&[tag(&a)], 1000), 100) else {
            panic!()
        };
        let status = |s: &mut Store, peer: &PeerId, now| {
            s.handle(peer, Request::Status { ids: vec![id] }, now)
        };
        assert_eq!(
            status(&mut s, &sender, 105),
            Response::Status {
                entries: vec![(id, ItemState::Remaining(1))]
            }
        );
        // Another peer learns nothing about it.
        assert_eq!(
            status(&mut s, &PeerId::random(), 105),
            Response::Status {
                entries: vec![(id, ItemState::Unknown)]
            }
        );
        // Past expiry, before the sweep: invisible to pickup, reported expired.
        assert_eq!(pickup(&mut s, &a, 110).0, vec![]);
        assert_eq!(s.sweep(110).unwrap().expired, 1);
        assert_eq!(s.bytes_stored(), 0);
        assert!(s.recipients.is_empty() && s.senders.is_empty());
        assert_eq!(
            status(&mut s, &sender, 111),
            Response::Status {
                entries: vec![(id, ItemState::Expired(1))]
            }
        );
        s.sweep(110 + TOMBSTONE_SECS).unwrap();
        assert_eq!(
            status(&mut s, &sender, 111 + TOMBSTONE_SECS),
            Response::Status {
                entries: vec![(id, ItemState::Unknown)]
            }
        );
    }

    #[test]
    fn prekeys_newest_wins_and_owner_only() {
        let mut s = Store::open(None, &limits(), 10, PeerId::random()).unwrap();
        let me = PeerId::random();
        let publish = |s: &mut Store, conn: &PeerId, owner: PeerId, at, b: &[u8], now| {
            s.handle(
                conn,
                Request::PublishPrekeys {
                    peer: owner,
                    published_at: at,
                    bundle: b.to_vec(),
                },
                now,
            )
        };
        assert!(matches!(
            publish(&mut s, &me, me, 100, b"one", 100),
            Response::PrekeysPublished { .. }
        ));
        assert_eq!(
            publish(&mut s, &PeerId::random(), me, 200, b"evil", 200),
            Response::Refused(Refusal::Forbidden)
        );
        assert_eq!(
            publish(&mut s, &me, me, 99, b"old", 200),
            Response::Refused(Refusal::Outdated {
                current_published_at: 100
            })
        );
        assert!(matches!(
            publish(&mut s, &me, me, 100, b"one", 200),
            Response::PrekeysPublished { .. }
        ));
        assert_eq!(
            publish(&mut s, &me, me, 10_000, b"future", 200),
            Response::Refused(Refusal::ClockSkew { relay_time: 200 })
        );
        assert!(matches!(
            publish(&mut s, &me, me, 150, b"two", 200),
            Response::PrekeysPublished { .. }
        ));
        assert_eq!(
            s.handle(&PeerId::random(), Request::FetchPrekeys { peer: me }, 201),
            Response::Prekeys {
                published_at: 150,
                bundle: b"two".to_vec()
            }
        );
        let ttl = limits().prekey_ttl_secs;
        assert_eq!(
            s.handle(&me, Request::FetchPrekeys { peer: me }, 200 + ttl),
            Response::PrekeysNotFound
        );
        assert_eq!(s.sweep(200 + ttl).unwrap().prekeys_expired, 1);
        assert_eq!(s.prekeys, 0);
    }

    #[test]
    fn prekey_directory_is_bounded() {
        let l = MailboxLimits {
            max_prekey_entries: 2,
            ..limits()
        };
        let mut s = Store::open(None, &l, 10, PeerId::random()).unwrap();
        for i in 0..3 {
            let p = PeerId::random();
            let r = s.handle(
                &p,
                Request::PublishPrekeys {
                    peer: p,
                    published_at: 1,
                    bundle: vec![1],
                },
                1,
            );
            if i < 2 {
                assert!(matches!(r, Response::PrekeysPublished { .. }));
            } else {
                assert!(matches!(
                    r,
                    Response::Refused(Refusal::QuotaExceeded {
                        which: Quota::Relay,
                        ..
                    })
                ));
            }
        }
    }
}
