//! Contacts and their verification: who the user has compared safety numbers with.
//!
//! # What a "key change" means here
//!
//! In SecureComm the user id *is* the Ed25519 root key. So, unlike Signal (where a phone number
//! stays and the identity key behind it changes), a known contact's key cannot change: a
//! different root key is a different user, and every device, DM session and guild membership of
//! the old key stays bound to the old key. What an attacker (or a user who lost their key) can
//! do instead is show up as *someone else with the same name*. This store therefore detects:
//!
//! * **Key changed (alarm).** A user the local user has verified is remembered with the name
//!   they had when verified (`verified_name`). Any other root key that appears (in a guild's
//!   member list or as a DM peer) under the same name, compared case-insensitively after
//!   trimming, is reported as [`Warning::KeyChanged`]: "Ann's key changed; the Ann you see now is
//!   not the Ann you verified". It stays until the user verifies the new key (which is then a
//!   verified contact of its own), or clears the old verification.
//! * **Devices changed (notice).** A verified contact's device set is remembered at verification
//!   time. Devices are certified by the root key, so a new device is *not* an attack on the
//!   verification (it cannot be forged without the root key); it is still shown as
//!   [`Warning::DevicesChanged`] so the user can ask about a device they did not expect.
//!   Verifying again takes the new set as the reference; a contact verified before any of
//!   their devices was seen (a DM peer known only by key) takes the first set seen.
//!
//! Not detected (be honest): a lookalike name that differs by a character or by Unicode
//! confusables; a name change of an unverified contact; anything before the user verified
//! someone (an impostor met first *is* the contact). DMs are keyed by root key, so a DM
//! conversation can never silently move to another key: a new key is a new conversation.
//!
//! # Storage
//!
//! Table `contacts` (migration 10 in [`super::db`]), in the encrypted database: one row per
//! user (root key), the last seen name and device set, and, when verified, the verified key,
//! time, name and device set. At most [`MAX_CONTACTS`] rows: the least recently seen unverified
//! contact makes room; verified contacts are never evicted. Device sets are capped at
//! [`MAX_DEVICES`] and names at [`MAX_NAME`] bytes.

use rusqlite::{Connection, OptionalExtension, params};
use securecomm_noise::fingerprint::{FingerprintError, SafetyNumber};
use securecomm_noise::keys::RootPublicKey;
use thiserror::Error;

/// Most contacts stored.
pub const MAX_CONTACTS: usize = 10_000;
/// Most devices remembered per contact.
pub const MAX_DEVICES: usize = 64;
/// Longest stored name, in bytes (longer names are cut at a character boundary).
pub const MAX_NAME: usize = 64;
/// Most warnings reported at once.
pub const MAX_WARNINGS: usize = 64;

/// Why the contact store failed.
#[derive(Debug, Error)]
pub enum ContactError {
    /// SQLite reported an error.
    #[error("contact store: {0}")]
    Db(#[from] rusqlite::Error),
    /// The store is full of verified contacts.
    #[error("contact store is full: at most {MAX_CONTACTS} contacts, all verified")]
    Full,
    /// A stored row is malformed.
    #[error("contact store row is damaged: expected {expected}, got {got}")]
    Corrupt {
        /// What was expected.
        expected: &'static str,
        /// What was found.
        got: String,
    },
    /// The user is not a contact (never seen and not being verified).
    #[error("unknown contact {0}")]
    Unknown(String),
}

/// The reference kept when a contact is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The root key that was verified.
    pub key: [u8; 32],
    /// When (ms since the Unix epoch).
    pub at: u64,
    /// Their name at that time.
    pub name: String,
    /// Their devices at that time.
    pub devices: Vec<[u8; 32]>,
}

/// One contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Their user id (root key).
    pub user: [u8; 32],
    /// The name last seen.
    pub name: String,
    /// Devices last seen (sorted).
    pub devices: Vec<[u8; 32]>,
    /// First seen (ms).
    pub first_seen: u64,
    /// Last seen (ms).
    pub updated_at: u64,
    /// Set when the user verified them.
    pub verified: Option<Verification>,
}

impl Contact {
    /// Verified, and for this very key.
    pub fn is_verified(&self) -> bool {
        self.verified.as_ref().is_some_and(|v| v.key == self.user)
    }
}

/// Something the user should see about their verified contacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// Another key now appears under the name of a verified contact (alarm).
    KeyChanged {
        /// The shared name (as verified).
        name: String,
        /// The key that was verified.
        verified: [u8; 32],
        /// The other key using that name now.
        current: [u8; 32],
    },
    /// A verified contact's device set differs from the one verified (notice).
    DevicesChanged {
        /// The contact.
        user: [u8; 32],
        /// Their name.
        name: String,
        /// Devices now present that were not verified.
        added: usize,
        /// Verified devices no longer present.
        removed: usize,
    },
}

/// The name as compared: trimmed, lowercase.
fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

fn cut(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.get(..end).unwrap_or_default().to_owned()
}

fn device_blob(devices: &[[u8; 32]]) -> Vec<u8> {
    let mut d: Vec<[u8; 32]> = devices.to_vec();
    d.sort_unstable();
    d.dedup();
    d.truncate(MAX_DEVICES);
    d.concat()
}

fn devices_of(blob: &[u8]) -> Result<Vec<[u8; 32]>, ContactError> {
    if !blob.len().is_multiple_of(32) || blob.len() > 32 * MAX_DEVICES {
        return Err(ContactError::Corrupt {
            expected: "a list of 32-byte device keys",
            got: format!("{} bytes", blob.len()),
        });
    }
    Ok(blob
        .chunks_exact(32)
        .filter_map(|c| <[u8; 32]>::try_from(c).ok())
        .collect())
}

fn key_of(blob: &[u8]) -> Result<[u8; 32], ContactError> {
    <[u8; 32]>::try_from(blob).map_err(|_| ContactError::Corrupt {
        expected: "a 32-byte root key",
        got: format!("{} bytes", blob.len()),
    })
}

const COLUMNS: &str = "user, name, devices, first_seen, updated_at, verified_key, verified_at, \
                       verified_name, verified_devices";

type RawRow = (
    Vec<u8>,
    String,
    Vec<u8>,
    i64,
    i64,
    Option<Vec<u8>>,
    Option<i64>,
    Option<String>,
    Option<Vec<u8>>,
);

fn raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

fn contact(row: RawRow) -> Result<Contact, ContactError> {
    let (user, name, devices, first, updated, vkey, vat, vname, vdevices) = row;
    let verified = match vkey {
        Some(k) => Some(Verification {
            key: key_of(&k)?,
            at: u64::try_from(vat.unwrap_or(0)).unwrap_or(0),
            name: vname.unwrap_or_default(),
            devices: devices_of(&vdevices.unwrap_or_default())?,
        }),
        None => None,
    };
    Ok(Contact {
        user: key_of(&user)?,
        name,
        devices: devices_of(&devices)?,
        first_seen: u64::try_from(first).unwrap_or(0),
        updated_at: u64::try_from(updated).unwrap_or(0),
        verified,
    })
}

fn ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// How stale a contact's last-seen time may get before an unchanged observation rewrites it.
pub const SEEN_REFRESH_MS: u64 = 24 * 60 * 60 * 1000;

/// Records that `user` was seen as `name` with `devices` (a guild member list or a DM).
/// An empty name (a DM peer known only by key) keeps the stored one; `None` devices keep the
/// stored set.
pub fn observe(
    conn: &Connection,
    user: &[u8; 32],
    name: &str,
    devices: Option<&[[u8; 32]]>,
    now: u64,
) -> Result<(), ContactError> {
    let name = cut(name.trim());
    let existing = get(conn, user)?;
    if existing.is_none() {
        make_room(conn)?;
    }
    let name = match (&existing, name.is_empty()) {
        (Some(c), true) => c.name.clone(),
        _ => name,
    };
    let devices = match (devices, &existing) {
        (Some(d), _) => device_blob(d),
        (None, Some(c)) => device_blob(&c.devices),
        (None, None) => Vec::new(),
    };
    // Member lists are observed on every guild refresh: write only what changed (and the
    // last-seen time at most once a day), or every refresh of a big guild costs a
    // synchronous write per member. Measured: with the database busy, one refresh held back
    // the first channel page by 2.5 s.
    if let Some(c) = &existing
        && c.name == name
        && device_blob(&c.devices) == devices
        && now.saturating_sub(c.updated_at) < SEEN_REFRESH_MS
        // A verification still waiting for its first device set takes this one below.
        && c.verified.as_ref().is_none_or(|v| !v.devices.is_empty() || devices.is_empty())
    {
        return Ok(());
    }
    conn.execute(
        "INSERT INTO contacts (user, name, name_key, devices, first_seen, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT(user) DO UPDATE SET name = excluded.name, name_key = excluded.name_key,
            devices = excluded.devices, updated_at = excluded.updated_at",
        params![user.as_slice(), name, name_key(&name), devices, ms(now)],
    )?;
    // Verified before any device was known (a DM peer): the first device set seen becomes the
    // reference (devices are certified by the verified root key).
    conn.execute(
        "UPDATE contacts SET verified_devices = devices
         WHERE user = ?1 AND verified_key IS NOT NULL AND verified_devices = x''",
        [user.as_slice()],
    )?;
    Ok(())
}

/// Evicts the least recently seen unverified contact if the store is full.
fn make_room(conn: &Connection) -> Result<(), ContactError> {
    let n: i64 = conn.query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))?;
    if usize::try_from(n).unwrap_or(usize::MAX) < MAX_CONTACTS {
        return Ok(());
    }
    let gone = conn.execute(
        "DELETE FROM contacts WHERE user = (SELECT user FROM contacts
           WHERE verified_key IS NULL ORDER BY updated_at ASC LIMIT 1)",
        [],
    )?;
    if gone == 0 {
        return Err(ContactError::Full);
    }
    Ok(())
}

/// One contact, if known.
pub fn get(conn: &Connection, user: &[u8; 32]) -> Result<Option<Contact>, ContactError> {
    let row = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM contacts WHERE user = ?1"),
            [user.as_slice()],
            raw,
        )
        .optional()?;
    row.map(contact).transpose()
}

/// Every contact, most recently seen first (at most [`MAX_CONTACTS`]).
pub fn list(conn: &Connection) -> Result<Vec<Contact>, ContactError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM contacts ORDER BY updated_at DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([MAX_CONTACTS as i64], raw)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(contact(r?)?);
    }
    Ok(out)
}

/// Marks `user` verified now, with their current name and devices as the reference. A user
/// never seen is recorded first (with no name), so a key compared out of band can be verified.
pub fn mark_verified(conn: &Connection, user: &[u8; 32], now: u64) -> Result<(), ContactError> {
    if get(conn, user)?.is_none() {
        observe(conn, user, "", None, now)?;
    }
    let c = get(conn, user)?.ok_or_else(|| ContactError::Unknown(hex::encode(user)))?;
    conn.execute(
        "UPDATE contacts SET verified_key = ?2, verified_at = ?3, verified_name = ?4,
            verified_devices = ?5 WHERE user = ?1",
        params![
            user.as_slice(),
            user.as_slice(),
            ms(now),
            c.name,
            device_blob(&c.devices)
        ],
    )?;
    Ok(())
}

/// Forgets that `user` was verified.
pub fn clear_verified(conn: &Connection, user: &[u8; 32]) -> Result<(), ContactError> {
    conn.execute(
        "UPDATE contacts SET verified_key = NULL, verified_at = NULL, verified_name = NULL,
            verified_devices = NULL WHERE user = ?1",
        [user.as_slice()],
    )?;
    Ok(())
}

/// What the user should be told about their verified contacts (see the module docs), at most
/// [`MAX_WARNINGS`], key changes first.
pub fn warnings(conn: &Connection) -> Result<Vec<Warning>, ContactError> {
    let mut out = Vec::new();
    // Alarms: another key under a verified contact's verified name (names compared in Rust:
    // SQLite's lower() only folds ASCII).
    let mut verified = conn.prepare(
        "SELECT user, verified_name FROM contacts
         WHERE verified_key IS NOT NULL AND verified_name != '' LIMIT ?1",
    )?;
    let mut others = conn.prepare(
        "SELECT user FROM contacts WHERE name_key = ?1 AND user != ?2
           AND verified_key IS NULL ORDER BY updated_at DESC LIMIT ?3",
    )?;
    let rows = verified.query_map([MAX_CONTACTS as i64], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
    })?;
    for r in rows {
        let (v, name) = r?;
        let found = others.query_map(params![name_key(&name), v, MAX_WARNINGS as i64], |r| {
            r.get::<_, Vec<u8>>(0)
        })?;
        for o in found {
            if out.len() >= MAX_WARNINGS {
                break;
            }
            out.push(Warning::KeyChanged {
                name: name.clone(),
                verified: key_of(&v)?,
                current: key_of(&o?)?,
            });
        }
    }
    // Notices: device sets that moved since verification.
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM contacts WHERE verified_key IS NOT NULL
           AND devices != verified_devices ORDER BY updated_at DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([MAX_WARNINGS as i64], raw)?;
    for r in rows {
        let c = contact(r?)?;
        let Some(v) = &c.verified else { continue };
        let added = c.devices.iter().filter(|d| !v.devices.contains(d)).count();
        let removed = v.devices.iter().filter(|d| !c.devices.contains(d)).count();
        out.push(Warning::DevicesChanged {
            user: c.user,
            name: c.name,
            added,
            removed,
        });
    }
    out.truncate(MAX_WARNINGS);
    Ok(out)
}

/// The safety number between our root key and theirs, with each user id being the hex of the
/// root key: the same inputs as `securecomm-node safety-number`, so the app, the CLI and the
/// other party all show the same 60 digits.
pub fn safety_number(
    mine: &RootPublicKey,
    theirs: &RootPublicKey,
) -> Result<SafetyNumber, FingerprintError> {
    let my_id = hex::encode(mine.as_bytes());
    let their_id = hex::encode(theirs.as_bytes());
    SafetyNumber::for_roots(mine, my_id.as_bytes(), theirs, their_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Db;
    use securecomm_noise::keys::RootSigningKey;
    use securecomm_noise::secret::Secret32;

    fn db() -> Db {
        Db::open_in_memory(&Secret32::from_bytes([7; 32])).unwrap()
    }

    /// An unchanged member list writes nothing (guild refreshes observe every member); a new
    /// name, a new device or a day without a write does.
    #[test]
    fn unchanged_observations_do_not_write() {
        let db = db();
        let c = db.conn();
        observe(c, &[1; 32], "Ann", Some(&[[9; 32]]), 10).unwrap();
        let writes = c.total_changes();
        observe(c, &[1; 32], "Ann", Some(&[[9; 32]]), 20).unwrap();
        observe(c, &[1; 32], "", None, 30).unwrap();
        assert_eq!(
            c.total_changes(),
            writes,
            "nothing changed, nothing written"
        );
        observe(c, &[1; 32], "Ann", Some(&[[9; 32], [8; 32]]), 40).unwrap();
        assert!(c.total_changes() > writes, "a new device is written");
        let writes = c.total_changes();
        observe(c, &[1; 32], "Annie", Some(&[[9; 32], [8; 32]]), 50).unwrap();
        assert!(c.total_changes() > writes, "a new name is written");
        let writes = c.total_changes();
        observe(
            c,
            &[1; 32],
            "Annie",
            Some(&[[8; 32], [9; 32]]),
            50 + SEEN_REFRESH_MS,
        )
        .unwrap();
        assert!(
            c.total_changes() > writes,
            "last seen refreshed after a day"
        );
        assert_eq!(
            get(c, &[1; 32]).unwrap().unwrap().updated_at,
            50 + SEEN_REFRESH_MS
        );
    }

    #[test]
    fn observe_then_verify_persists_reference() {
        let db = db();
        let c = db.conn();
        observe(c, &[1; 32], "Ann", Some(&[[9; 32]]), 10).unwrap();
        assert!(!get(c, &[1; 32]).unwrap().unwrap().is_verified());
        mark_verified(c, &[1; 32], 20).unwrap();
        let got = get(c, &[1; 32]).unwrap().unwrap();
        assert!(got.is_verified());
        let v = got.verified.unwrap();
        assert_eq!((v.key, v.at, v.name.as_str()), ([1; 32], 20, "Ann"));
        assert_eq!(v.devices, vec![[9; 32]]);
        assert!(warnings(c).unwrap().is_empty());
        clear_verified(c, &[1; 32]).unwrap();
        assert!(!get(c, &[1; 32]).unwrap().unwrap().is_verified());
    }

    #[test]
    fn same_name_with_another_key_is_a_key_change_alarm() {
        let db = db();
        let c = db.conn();
        observe(c, &[1; 32], "Ann", Some(&[[9; 32]]), 10).unwrap();
        // Before any verification, two Anns are not an alarm (nothing to compare against).
        observe(c, &[2; 32], "ann ", Some(&[[8; 32]]), 11).unwrap();
        observe(c, &[4; 32], "Émile", None, 11).unwrap();
        observe(c, &[5; 32], "émile", None, 11).unwrap();
        assert!(warnings(c).unwrap().is_empty());
        mark_verified(c, &[1; 32], 12).unwrap();
        assert_eq!(
            warnings(c).unwrap(),
            vec![Warning::KeyChanged {
                name: "Ann".into(),
                verified: [1; 32],
                current: [2; 32],
            }]
        );
        // Non-ASCII names compare case-insensitively too.
        mark_verified(c, &[4; 32], 12).unwrap();
        assert!(warnings(c).unwrap().contains(&Warning::KeyChanged {
            name: "Émile".into(),
            verified: [4; 32],
            current: [5; 32],
        }));
        clear_verified(c, &[4; 32]).unwrap();
        // The verified Ann renaming herself does not hide the impostor.
        observe(c, &[1; 32], "Annie", Some(&[[9; 32]]), 13).unwrap();
        assert_eq!(warnings(c).unwrap().len(), 1);
        // Verifying the new key too (after comparing numbers) ends the alarm.
        mark_verified(c, &[2; 32], 14).unwrap();
        assert!(warnings(c).unwrap().is_empty());
    }

    #[test]
    fn device_set_change_is_a_notice_and_reverifying_accepts_it() {
        let db = db();
        let c = db.conn();
        observe(c, &[1; 32], "Ann", Some(&[[9; 32]]), 10).unwrap();
        mark_verified(c, &[1; 32], 11).unwrap();
        observe(c, &[1; 32], "Ann", Some(&[[9; 32], [5; 32]]), 12).unwrap();
        assert_eq!(
            warnings(c).unwrap(),
            vec![Warning::DevicesChanged {
                user: [1; 32],
                name: "Ann".into(),
                added: 1,
                removed: 0
            }]
        );
        mark_verified(c, &[1; 32], 13).unwrap();
        assert!(warnings(c).unwrap().is_empty());
        // Unknown devices (a DM peer) keep the stored set.
        observe(c, &[1; 32], "", None, 14).unwrap();
        let got = get(c, &[1; 32]).unwrap().unwrap();
        assert_eq!(got.name, "Ann");
        assert_eq!(got.devices.len(), 2);
    }

    #[test]
    fn verifying_an_unseen_key_records_it() {
        let db = db();
        mark_verified(db.conn(), &[3; 32], 5).unwrap();
        let got = get(db.conn(), &[3; 32]).unwrap().unwrap();
        assert!(got.is_verified());
        assert_eq!(got.name, "");
        assert!(warnings(db.conn()).unwrap().is_empty());
        // Its first device set becomes the reference; a later change is a notice.
        observe(db.conn(), &[3; 32], "Cy", Some(&[[1; 32]]), 6).unwrap();
        assert!(warnings(db.conn()).unwrap().is_empty());
        observe(db.conn(), &[3; 32], "Cy", Some(&[[2; 32]]), 7).unwrap();
        assert_eq!(warnings(db.conn()).unwrap().len(), 1);
    }

    #[test]
    fn names_and_device_sets_are_bounded() {
        let db = db();
        let c = db.conn();
        let long = "é".repeat(100);
        let many: Vec<[u8; 32]> = (0..200u8).map(|i| [i; 32]).collect();
        observe(c, &[1; 32], &long, Some(&many), 1).unwrap();
        let got = get(c, &[1; 32]).unwrap().unwrap();
        assert!(got.name.len() <= MAX_NAME);
        assert!(got.name.chars().all(|ch| ch == 'é'));
        assert_eq!(got.devices.len(), MAX_DEVICES);
    }

    #[test]
    fn a_damaged_row_is_an_error_not_a_panic() {
        let db = db();
        db.conn()
            .execute(
                "INSERT INTO contacts (user, name, name_key, devices, first_seen, updated_at)
                 VALUES (x'01', 'x', 'x', x'0102', 0, 0)",
                [],
            )
            .unwrap();
        assert!(matches!(
            list(db.conn()).unwrap_err(),
            ContactError::Corrupt { .. }
        ));
    }

    #[test]
    fn eviction_spares_verified_contacts() {
        let db = db();
        let c = db.conn();
        // Fill the table directly (MAX_CONTACTS rows through `observe` would be slow in debug).
        c.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {MAX_CONTACTS})
             INSERT INTO contacts (user, name, name_key, devices, first_seen, updated_at,
                verified_key, verified_name, verified_devices, verified_at)
             SELECT randomblob(32), 'v', 'v', x'', i, i,
                    NULL, NULL, NULL, NULL FROM n;"
        ))
        .unwrap();
        c.execute_batch("UPDATE contacts SET verified_key = user, verified_name = 'v', verified_devices = x'', verified_at = 0").unwrap();
        assert!(matches!(
            observe(c, &[1; 32], "new", None, 1).unwrap_err(),
            ContactError::Full
        ));
        clear_verified(c, &list(c).unwrap()[0].user).unwrap();
        observe(c, &[1; 32], "new", None, 1).unwrap();
        assert_eq!(list(c).unwrap().len(), MAX_CONTACTS);
    }

    #[test]
    fn safety_number_is_symmetric_and_matches_the_cli_inputs() {
        let mut rng = rand_core::OsRng;
        let a = RootSigningKey::generate(&mut rng).public();
        let b = RootSigningKey::generate(&mut rng).public();
        let ab = safety_number(&a, &b).unwrap();
        let ba = safety_number(&b, &a).unwrap();
        assert_eq!(ab.digits(), ba.digits());
        assert_eq!(ab.digits().len(), 60);
        let cli = SafetyNumber::for_roots(
            &a,
            hex::encode(a.as_bytes()).as_bytes(),
            &b,
            hex::encode(b.as_bytes()).as_bytes(),
        )
        .unwrap();
        assert_eq!(ab.digits(), cli.digits());
        assert_eq!(
            ab.compare_scanned(&ba.qr_payload()).unwrap(),
            securecomm_noise::fingerprint::ScanOutcome::Match
        );
    }
}
