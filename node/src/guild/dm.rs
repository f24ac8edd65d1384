//! Direct messages between users who share a guild: X3DH and the Double Ratchet from
//! `securecomm_noise::dm`, delivered directly when the peer is online and queued (then handed to
//! a mailbox relay) when it is not.
//!
//! # Who may DM whom
//!
//! A DM goes to a *user*; it is encrypted separately to each of their devices, as the guild
//! documents this node holds list them (certified by the user's root key). Incoming DMs are
//! accepted only from a device of a member of a guild this node is in.
//!
//! # Prekeys
//!
//! Each device keeps a [`PrekeyStore`] (sealed in the database, `kv` key `dm_prekeys`) with a
//! signed prekey and one-time prekeys. Its bundle reaches others two ways:
//! * **directly**: a connected peer asks ([`DmRequest::Bundle`]) and gets a bundle with a fresh
//!   one-time prekey;
//! * **through the guild logs**: every device writes its bundle (signed prekey only) into the
//!   causal log of each guild it is in ([`super::wire::LogPayload::DmBundle`]); members store
//!   the newest verified bundle per device (`dm_bundles`), so they can start a session with a
//!   device that is offline.
//!
//! # Sessions
//!
//! Up to two sessions per peer device (`dm_sessions`): the one this device initiated (role 0)
//! and the one the peer initiated (role 1), because both may start at once. Sending uses the
//! session most recently used; receiving tries both, and an initial message that neither
//! decrypts starts (replaces) the peer-initiated one. Every state change is committed in the
//! same transaction as the message it belongs to.
//!
//! # Delivery
//!
//! `dm send` encrypts to every device and, in one transaction, stores the message, the
//! advanced sessions and one `dm_outbox` row per device (state `queued`). A background pass
//! delivers queued rows: over the direct protocol ([`DmRequest::Deliver`], answered
//! [`DmResponse::Delivered`] once the receiver has committed it) when the device is connected,
//! else deposited on the device's mailbox relay (`deposited`; the sender later asks the relay
//! and marks it `picked-up`, or queues it again if it expired), else retried with a backoff.
//! The ciphertext is dropped from the row once delivered or picked up. A receiver answers
//! `Delivered` to a message it already holds (a retry after a lost answer).
//!
//! Wire: first byte [`DM_VERSION`] on the direct protocol; payloads versioned and strict.

use std::collections::BTreeSet;

use rand_core::OsRng;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use securecomm_noise::dm::{DmError, DmIdentity, DmMessage, PrekeyBundle, PrekeyStore, Session};
use securecomm_noise::keys::DevicePublicKey;
use serde::Serialize;

use super::GuildError;
use crate::store::Db;
use crate::sync::SyncError;

/// First byte of DM requests and responses on the direct protocol.
pub const DM_VERSION: u8 = 0x49;
/// Version byte of [`DmPayload`].
pub const DM_PAYLOAD_VERSION: u8 = 1;
/// Longest DM text, in bytes.
pub const MAX_DM_TEXT: usize = 16 * 1024;
/// Largest encoded DM ratchet message accepted.
pub const MAX_DM_MESSAGE: usize = 64 * 1024;
/// Longest refusal reason.
pub const MAX_REASON: usize = 256;
/// Most queued (undelivered) DM ciphertexts.
pub const MAX_DM_OUTBOX: usize = 4096;
/// One-time prekeys below which a bundle request tops the stock up.
pub const ONE_TIME_LOW: usize = 16;
/// One-time prekeys added per top-up.
pub const ONE_TIME_BATCH: usize = 32;
/// Longest backoff between delivery attempts, in ms.
pub const MAX_BACKOFF_MS: u64 = 60_000;

const KV_PREKEYS: &str = "dm_prekeys";

/// The plaintext of a DM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmPayload {
    /// Random id, the same for every device of the recipient.
    pub msg_id: [u8; 16],
    /// The sender's clock, ms since the Unix epoch.
    pub sent_at: u64,
    /// The text (UTF-8).
    pub text: String,
}

impl Encode for DmPayload {
    fn encode(&self, w: &mut Writer) {
        w.u8(DM_PAYLOAD_VERSION);
        w.put(&self.msg_id);
        w.u64(self.sent_at);
        w.bytes32(self.text.as_bytes());
    }
}

impl Decode for DmPayload {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("DM payload", DM_PAYLOAD_VERSION)?;
        let msg_id = r.array()?;
        let sent_at = r.u64()?;
        let text = String::from_utf8(r.bytes32("DM text", MAX_DM_TEXT)?.to_vec())
            .map_err(|_| DecodeError::Invalid("DM text (not UTF-8)"))?;
        Ok(Self {
            msg_id,
            sent_at,
            text,
        })
    }
}

/// A DM request on the direct protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmRequest {
    /// "Give me a bundle to start a session with you."
    Bundle,
    /// An encrypted DM (an encoded `DmMessage`) from the requesting device.
    Deliver(Vec<u8>),
}

/// The answer to a [`DmRequest`].
#[allow(clippy::large_enum_variant)] // one per request
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmResponse {
    /// A bundle, with a one-time prekey when one was available.
    Bundle(PrekeyBundle),
    /// The DM is stored (or was already).
    Delivered,
    /// Refused, and why.
    Refused(String),
}

impl Encode for DmRequest {
    fn encode(&self, w: &mut Writer) {
        w.u8(DM_VERSION);
        match self {
            Self::Bundle => w.u8(1),
            Self::Deliver(m) => {
                w.u8(2);
                w.bytes32(m);
            }
        }
    }
}

impl Decode for DmRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("DM request", DM_VERSION)?;
        match r.u8()? {
            1 => Ok(Self::Bundle),
            2 => Ok(Self::Deliver(
                r.bytes32("DM message", MAX_DM_MESSAGE)?.to_vec(),
            )),
            got => Err(DecodeError::UnknownTag {
                what: "DM request",
                got: u64::from(got),
            }),
        }
    }
}

impl Encode for DmResponse {
    fn encode(&self, w: &mut Writer) {
        w.u8(DM_VERSION);
        match self {
            Self::Bundle(b) => {
                w.u8(1);
                w.bytes16(&b.to_bytes());
            }
            Self::Delivered => w.u8(2),
            Self::Refused(reason) => {
                w.u8(3);
                super::wire::put_reason(w, reason, MAX_REASON);
            }
        }
    }
}

impl Decode for DmResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("DM response", DM_VERSION)?;
        match r.u8()? {
            1 => {
                let b = r.bytes16("prekey bundle", super::wire::MAX_BUNDLE)?;
                Ok(Self::Bundle(
                    PrekeyBundle::from_bytes(b)
                        .map_err(|_| DecodeError::Invalid("prekey bundle"))?,
                ))
            }
            2 => Ok(Self::Delivered),
            3 => Ok(Self::Refused(super::wire::get_reason(r, MAX_REASON)?)),
            got => Err(DecodeError::UnknownTag {
                what: "DM response",
                got: u64::from(got),
            }),
        }
    }
}

/// A DM as stored and shown.
#[derive(Clone, Debug, Serialize)]
pub struct StoredDm {
    /// Message id (hex).
    pub id: String,
    /// The other user (hex root key).
    pub peer: String,
    /// The other device (hex; empty for outgoing messages, which go to every device).
    pub peer_device: String,
    /// Whether this device sent it.
    pub outgoing: bool,
    /// Sender's clock, ms.
    pub sent_at: u64,
    /// Our clock when stored, ms.
    pub received_at: u64,
    /// The text.
    pub text: String,
    /// For outgoing messages: per recipient device, `queued`, `delivered`, `deposited` or
    /// `picked-up`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delivery: Vec<Delivery>,
}

/// Delivery state of an outgoing DM to one device.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    /// The device (hex).
    pub device: String,
    /// `queued`, `delivered` (a connected device confirmed it), `deposited` (held by a
    /// mailbox relay) or `picked-up` (the relay says the device acknowledged it).
    pub state: String,
}

fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn device_from(b: &[u8]) -> Option<DevicePublicKey> {
    <[u8; 32]>::try_from(b)
        .ok()
        .and_then(|a| DevicePublicKey::from_bytes(&a).ok())
}

fn dm_err(e: DmError) -> GuildError {
    GuildError::Invalid(format!("direct message: {e}"))
}

/// Stores a verified bundle from the guild log if it is newer than the one held.
pub(crate) fn store_bundle(tx: &Transaction<'_>, b: &PrekeyBundle) -> Result<(), SyncError> {
    tx.prepare_cached(
        "INSERT INTO dm_bundles (device, spk_id, bundle) VALUES (?1, ?2, ?3)
         ON CONFLICT(device) DO UPDATE SET spk_id = excluded.spk_id, bundle = excluded.bundle
         WHERE excluded.spk_id > dm_bundles.spk_id",
    )?
    .execute(params![
        &b.identity.signing.as_bytes()[..],
        i64::from(b.signed_prekey_id),
        b.to_bytes()
    ])?;
    Ok(())
}

/// The newest bundle from the guild logs for `device`.
pub(crate) fn stored_bundle(
    conn: &Connection,
    device: &DevicePublicKey,
) -> Result<Option<PrekeyBundle>, SyncError> {
    let b: Option<Vec<u8>> = conn
        .prepare_cached("SELECT bundle FROM dm_bundles WHERE device = ?1")?
        .query_row([&device.as_bytes()[..]], |r| r.get(0))
        .optional()?;
    Ok(b.and_then(|b| PrekeyBundle::from_bytes(&b).ok())
        .filter(|b| b.identity.signing == *device && b.verify().is_ok()))
}

/// This device's DM keys: identity and prekey store.
pub(crate) struct DmKeys {
    pub me: DmIdentity,
}

impl std::fmt::Debug for DmKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmKeys")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// Loads the prekey store, creating (and saving) one with a signed prekey and a stock of
/// one-time prekeys on first use.
pub(crate) fn prekeys(db: &Db, me: &DmIdentity) -> Result<PrekeyStore, GuildError> {
    if let Some(b) = db
        .get(KV_PREKEYS)
        .map_err(|e| GuildError::Invalid(e.to_string()))?
    {
        return PrekeyStore::from_bytes(&b).map_err(GuildError::Decode);
    }
    let mut store = PrekeyStore::new();
    store.rotate_signed_prekey(&mut OsRng, me).map_err(dm_err)?;
    store
        .generate_one_time_prekeys(&mut OsRng, ONE_TIME_BATCH)
        .map_err(dm_err)?;
    save_prekeys(db.conn(), &store)?;
    Ok(store)
}

fn save_prekeys(conn: &Connection, store: &PrekeyStore) -> Result<(), GuildError> {
    conn.prepare_cached(
        "INSERT INTO kv (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![KV_PREKEYS, &store.to_bytes()[..]])?;
    Ok(())
}

/// A bundle for a connected peer, with a fresh one-time prekey (topped up when low).
pub(crate) fn bundle_for_peer(db: &Db, me: &DmIdentity) -> Result<PrekeyBundle, GuildError> {
    let mut store = prekeys(db, me)?;
    // The store does not list one-time prekey ids; mint one for this request (bounded by the
    // store's own maximum; without room the bundle goes out without one).
    let one = store
        .generate_one_time_prekeys(&mut OsRng, 1)
        .ok()
        .and_then(|v| v.first().map(|(id, _)| *id));
    save_prekeys(db.conn(), &store)?;
    store.bundle(me, one).map_err(dm_err)
}

/// The bundle this device publishes in guild logs (signed prekey only).
pub(crate) fn published_bundle(db: &Db, me: &DmIdentity) -> Result<PrekeyBundle, GuildError> {
    prekeys(db, me)?.bundle(me, None).map_err(dm_err)
}

fn load_session(
    conn: &Connection,
    device: &DevicePublicKey,
    role: u8,
) -> Result<Option<Session>, GuildError> {
    let b: Option<Vec<u8>> = conn
        .prepare_cached("SELECT state FROM dm_sessions WHERE device = ?1 AND role = ?2")?
        .query_row(params![&device.as_bytes()[..], role], |r| r.get(0))
        .optional()?;
    b.map(|b| Session::from_bytes(&b).map_err(GuildError::Decode))
        .transpose()
}

fn save_session(
    tx: &Transaction<'_>,
    device: &DevicePublicKey,
    role: u8,
    s: &Session,
    now: u64,
) -> Result<(), GuildError> {
    tx.prepare_cached(
        "INSERT INTO dm_sessions (device, role, state, used_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(device, role) DO UPDATE SET state = excluded.state, used_at = excluded.used_at",
    )?
    .execute(params![
        &device.as_bytes()[..],
        role,
        &s.to_bytes()[..],
        sql(now)
    ])?;
    Ok(())
}

/// Which session to send on: the most recently used one.
fn send_role(conn: &Connection, device: &DevicePublicKey) -> Result<Option<u8>, GuildError> {
    Ok(conn
        .prepare_cached(
            "SELECT role FROM dm_sessions WHERE device = ?1 ORDER BY used_at DESC, role DESC LIMIT 1",
        )?
        .query_row([&device.as_bytes()[..]], |r| r.get(0))
        .optional()?)
}

/// Devices that have a session with this device.
pub(crate) fn devices_with_sessions(
    conn: &Connection,
) -> Result<BTreeSet<DevicePublicKey>, GuildError> {
    let rows: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT DISTINCT device FROM dm_sessions")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(rows.iter().filter_map(|b| device_from(b)).collect())
}

/// Encrypts `payload` to every device in `targets` (each with a session already, or a bundle
/// to start one) and, in one transaction, stores the message, the sessions and the outbox rows.
pub(crate) fn send(
    db: &mut Db,
    me: &DmIdentity,
    peer_user: &[u8; 32],
    targets: &[(DevicePublicKey, Option<PrekeyBundle>)],
    payload: &DmPayload,
    now: u64,
) -> Result<(), GuildError> {
    let queued: i64 = db
        .conn()
        .prepare_cached("SELECT COUNT(*) FROM dm_outbox WHERE state = 'queued'")?
        .query_row([], |r| r.get(0))?;
    if usize::try_from(queued).unwrap_or(usize::MAX) >= MAX_DM_OUTBOX {
        return Err(GuildError::Invalid(format!(
            "too many undelivered direct messages (at most {MAX_DM_OUTBOX}); try again later"
        )));
    }
    let plain = payload.to_bytes();
    let mut sealed = Vec::with_capacity(targets.len());
    for (device, bundle) in targets {
        let (role, mut session) = match send_role(db.conn(), device)? {
            Some(role) => match load_session(db.conn(), device, role)? {
                Some(s) => (role, s),
                None => continue,
            },
            None => match bundle {
                Some(b) => (0, Session::initiate(&mut OsRng, me, b).map_err(dm_err)?),
                None => continue,
            },
        };
        let msg = session.encrypt(&mut OsRng, &plain).map_err(dm_err)?;
        sealed.push((*device, role, session, msg.to_bytes()));
    }
    if sealed.is_empty() {
        return Err(GuildError::Invalid(
            "no device of that user can be reached yet: it has published no prekeys here; \
             try again when it is online"
                .into(),
        ));
    }
    let tx = db.conn_mut().transaction()?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO dm_messages (peer_user, peer_device, outgoing, msg_id, sent_at, received_at, text)
         VALUES (?1, x'', 1, ?2, ?3, ?3, ?4)",
    )?
    .execute(params![
        &peer_user[..],
        &payload.msg_id[..],
        sql(payload.sent_at),
        payload.text
    ])?;
    for (device, role, session, msg) in &sealed {
        save_session(&tx, device, *role, session, now)?;
        tx.prepare_cached(
            "INSERT INTO dm_outbox (device, msg_id, message, created_at, next_attempt_at, state)
             VALUES (?1, ?2, ?3, ?4, ?4, 'queued')",
        )?
        .execute(params![
            &device.as_bytes()[..],
            &payload.msg_id[..],
            msg,
            sql(now)
        ])?;
    }
    tx.commit()?;
    Ok(())
}

/// What receiving a DM did.
#[derive(Debug)]
pub(crate) enum Received {
    /// New: stored.
    New(StoredDm),
    /// Already held (a retry).
    Duplicate,
}

/// Decrypts a DM from `device` (of user `peer_user`) and stores it with the session state, in
/// one transaction. Refusals leave every session as it was.
pub(crate) fn receive(
    db: &mut Db,
    me: &DmIdentity,
    device: &DevicePublicKey,
    peer_user: &[u8; 32],
    bytes: &[u8],
    now: u64,
) -> Result<Received, GuildError> {
    let msg = DmMessage::from_bytes(bytes).map_err(GuildError::Decode)?;
    let mut opened: Option<(u8, Session, Vec<u8>, Option<PrekeyStore>)> = None;
    let mut duplicate = false;
    for role in [1u8, 0] {
        if let Some(mut s) = load_session(db.conn(), device, role)? {
            match s.decrypt(&msg) {
                Ok(p) => {
                    opened = Some((role, s, p.to_vec(), None));
                    break;
                }
                Err(DmError::DuplicateOrExpired { .. }) => duplicate = true,
                Err(_) => {}
            }
        }
    }
    if opened.is_none() && matches!(msg, DmMessage::Initial { .. }) {
        let mut store = prekeys(db, me)?;
        match Session::accept(&mut store, me, &msg) {
            Ok((s, p)) => {
                if s.remote_identity().signing != *device {
                    return Err(GuildError::NotPermitted(
                        "a DM session claimed another device than the sender".into(),
                    ));
                }
                opened = Some((1, s, p.to_vec(), Some(store)));
            }
            Err(DmError::ReplayedInitial | DmError::UnknownOneTimePrekey(_)) => duplicate = true,
            Err(e) => return Err(dm_err(e)),
        }
    }
    let Some((role, session, plain, store)) = opened else {
        if duplicate {
            return Ok(Received::Duplicate);
        }
        return Err(GuildError::Invalid(
            "direct message does not decrypt under any session with that device".into(),
        ));
    };
    let p = DmPayload::from_bytes(&plain).map_err(GuildError::Decode)?;
    let tx = db.conn_mut().transaction()?;
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO dm_messages (peer_user, peer_device, outgoing, msg_id, sent_at, received_at, text)
             VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            &peer_user[..],
            &device.as_bytes()[..],
            &p.msg_id[..],
            sql(p.sent_at),
            sql(now),
            p.text
        ])?;
    save_session(&tx, device, role, &session, now)?;
    if let Some(store) = &store {
        save_prekeys(&tx, store)?;
    }
    tx.commit()?;
    if n == 0 {
        return Ok(Received::Duplicate);
    }
    Ok(Received::New(StoredDm {
        id: hex::encode(p.msg_id),
        peer: hex::encode(peer_user),
        peer_device: hex::encode(device.as_bytes()),
        outgoing: false,
        sent_at: p.sent_at,
        received_at: now,
        text: p.text,
        delivery: Vec::new(),
    }))
}

/// An outbox row due for delivery.
#[derive(Debug)]
pub(crate) struct Due {
    pub id: i64,
    pub device: DevicePublicKey,
    pub message: Vec<u8>,
    pub attempts: u32,
}

/// Queued rows whose next attempt is due, oldest first (at most `limit`).
pub(crate) fn due(conn: &Connection, now: u64, limit: usize) -> Result<Vec<Due>, GuildError> {
    let rows = conn
        .prepare_cached(
            "SELECT id, device, message, attempts FROM dm_outbox
             WHERE state = 'queued' AND next_attempt_at <= ?1 AND message IS NOT NULL
             ORDER BY id LIMIT ?2",
        )?
        .query_map(params![sql(now), sql(limit as u64)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, d, message, attempts)| {
            Some(Due {
                id,
                device: device_from(&d)?,
                message,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            })
        })
        .collect())
}

/// Marks a row delivered (`delivered` or `deposited`) and drops its ciphertext.
pub(crate) fn mark(conn: &Connection, id: i64, state: &str) -> Result<(), GuildError> {
    conn.prepare_cached("UPDATE dm_outbox SET state = ?2, message = NULL WHERE id = ?1")?
        .execute(params![id, state])?;
    Ok(())
}

/// Marks a row deposited on `relay` (multiaddr bytes) as item `item`; the ciphertext stays until
/// the relay says it was picked up, so an expired deposit can be sent again.
pub(crate) fn mark_deposited(
    conn: &Connection,
    id: i64,
    relay: &[u8],
    item: u64,
) -> Result<(), GuildError> {
    conn.prepare_cached(
        "UPDATE dm_outbox SET state = 'deposited', relay = ?2, relay_item = ?3 WHERE id = ?1",
    )?
    .execute(params![id, relay, sql(item)])?;
    Ok(())
}

/// Deposited rows: (row id, relay multiaddr bytes, item id), at most `limit`.
pub(crate) fn deposited(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<(i64, Vec<u8>, u64)>, GuildError> {
    let rows = conn
        .prepare_cached(
            "SELECT id, relay, relay_item FROM dm_outbox
             WHERE state = 'deposited' AND relay IS NOT NULL ORDER BY id LIMIT ?1",
        )?
        .query_map([sql(limit as u64)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(id, relay, item)| (id, relay, u64::try_from(item).unwrap_or(0)))
        .collect())
}

/// Puts a deposited row back in the queue (its deposit expired before pickup).
pub(crate) fn requeue(conn: &Connection, id: i64) -> Result<(), GuildError> {
    conn.prepare_cached(
        "UPDATE dm_outbox SET state = 'queued', next_attempt_at = 0, relay = NULL, relay_item = NULL
         WHERE id = ?1 AND message IS NOT NULL",
    )?
    .execute([id])?;
    Ok(())
}

/// Schedules the next attempt of a row with exponential backoff.
pub(crate) fn backoff(conn: &Connection, d: &Due, now: u64) -> Result<(), GuildError> {
    let delay = 1000u64
        .saturating_mul(1u64 << d.attempts.min(6))
        .min(MAX_BACKOFF_MS);
    conn.prepare_cached(
        "UPDATE dm_outbox SET attempts = attempts + 1, next_attempt_at = ?2 WHERE id = ?1",
    )?
    .execute(params![d.id, sql(now.saturating_add(delay))])?;
    Ok(())
}

/// Makes every queued row for `device` due now (it just connected).
pub(crate) fn wake(conn: &Connection, device: &DevicePublicKey) -> Result<usize, GuildError> {
    Ok(conn
        .prepare_cached(
            "UPDATE dm_outbox SET next_attempt_at = 0 WHERE device = ?1 AND state = 'queued'",
        )?
        .execute([&device.as_bytes()[..]])?)
}

/// DM history with a user, oldest first, the latest `limit`, with delivery states.
pub(crate) fn history(
    conn: &Connection,
    peer_user: &[u8; 32],
    limit: usize,
) -> Result<Vec<StoredDm>, GuildError> {
    let mut v: Vec<StoredDm> = conn
        .prepare_cached(
            "SELECT msg_id, peer_device, outgoing, sent_at, received_at, text FROM dm_messages
             WHERE peer_user = ?1 ORDER BY sent_at DESC, rorder DESC LIMIT ?2",
        )?
        .query_map(params![&peer_user[..], sql(limit as u64)], |r| {
            Ok(StoredDm {
                id: hex::encode(r.get::<_, Vec<u8>>(0)?),
                peer: hex::encode(peer_user),
                peer_device: hex::encode(r.get::<_, Vec<u8>>(1)?),
                outgoing: r.get::<_, i64>(2)? == 1,
                sent_at: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                received_at: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                text: r.get(5)?,
                delivery: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut st = conn
        .prepare_cached("SELECT device, state FROM dm_outbox WHERE msg_id = ?1 ORDER BY device")?;
    for m in v.iter_mut().filter(|m| m.outgoing) {
        let id = hex::decode(&m.id).unwrap_or_default();
        m.delivery = st
            .query_map([id], |r| {
                Ok(Delivery {
                    device: hex::encode(r.get::<_, Vec<u8>>(0)?),
                    state: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
    }
    v.reverse();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn payload_round_trips(id in any::<[u8; 16]>(), at in any::<u64>(), text in ".{0,100}") {
            let p = DmPayload { msg_id: id, sent_at: at, text };
            prop_assert_eq!(DmPayload::from_bytes(&p.to_bytes()).unwrap(), p);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = DmPayload::from_bytes(&bytes);
            let _ = DmRequest::from_bytes(&bytes);
            let _ = DmResponse::from_bytes(&bytes);
        }
    }

    #[test]
    fn requests_and_responses_round_trip() {
        for r in [DmRequest::Bundle, DmRequest::Deliver(vec![1, 2, 3])] {
            assert_eq!(DmRequest::from_bytes(&r.to_bytes()).unwrap(), r);
        }
        let me = DmIdentity::generate(&mut OsRng);
        let mut store = PrekeyStore::new();
        store.rotate_signed_prekey(&mut OsRng, &me).unwrap();
        let b = store.bundle(&me, None).unwrap();
        for r in [
            DmResponse::Bundle(b),
            DmResponse::Delivered,
            DmResponse::Refused("no".into()),
        ] {
            assert_eq!(DmResponse::from_bytes(&r.to_bytes()).unwrap(), r);
        }
        let mut long = DmRequest::Deliver(vec![0; 4]).to_bytes();
        long.push(0);
        assert!(DmRequest::from_bytes(&long).is_err(), "trailing byte");
    }
}
