//! The node's database: SQLite encrypted as a whole with SQLCipher.
//!
//! The database key is 32 random bytes kept inside the passphrase-sealed identity file, so the
//! passphrase unlocks both and changing it never re-encrypts the database. Nothing is readable on
//! a stolen disk without the passphrase: pages, indexes, the WAL and the schema are all encrypted.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a transaction that has returned is on
//! disk and survives `kill -9` or a power cut. Schema changes are numbered migrations tracked in
//! `PRAGMA user_version`; each runs in its own transaction.
//!
//! One exception, [`relaxed`]: storing live gossip messages we received (a batch at a time, with
//! the receiving chains they moved) commits without waiting for the disk (`synchronous =
//! NORMAL` for that transaction). It still survives `kill -9` (the WAL frames are in the OS's
//! page cache before the commit returns, and the WAL keeps every transaction atomic); a power
//! cut may lose the last few such receipts, which were acknowledged to nobody, and roll back
//! the receiving ratchet with them, so the same ciphertext decrypts again when history sync
//! brings it back. The next ordinary commit makes them durable too (its fsync covers the whole
//! WAL). Measured on the ten-node channel bench: one fsync per receipt was 75% of the
//! send-to-stored latency (p50 9.8 ms vs 2.5 ms). Sends, key agreement, the causal log and
//! anything acknowledged to a peer stay fully synchronous. A sender's ratchet must never roll
//! back, or a key and nonce would be used twice: its indices are reserved in blocks by a
//! synchronous write before any of them is used (`guild::engine::RESERVE_BLOCK`), and a sent
//! message is acknowledged only after its own synchronous commit.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use securecomm_noise::secret::Secret32;
use thiserror::Error;
use zeroize::Zeroizing;

/// Runs `f` with `synchronous = NORMAL` (see the module docs for when this is allowed), then
/// restores `FULL` whatever `f` returned.
pub fn relaxed<T>(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> T,
) -> Result<T, rusqlite::Error> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let out = f(conn);
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(out)
}

/// Makes relaxed commits durable without holding the connection: an fsync of the database's
/// write-ahead log, which may run on another thread while the connection keeps working. It
/// covers every transaction whose commit returned before the call (in WAL mode a commit has
/// written its frames to the log file when it returns; `synchronous = NORMAL` only skips the
/// fsync; frames moved into the main file by a checkpoint were synced by that checkpoint).
/// Several relaxed commits followed by one `sync` are one group commit.
#[derive(Debug, Clone)]
pub struct WalSync {
    wal: Option<PathBuf>,
}

impl WalSync {
    /// Flushes the write-ahead log to the disk. Blocking (an fsync): call it from a blocking
    /// thread. A no-op for in-memory databases.
    pub fn sync(&self) -> Result<(), rusqlite::Error> {
        let Some(path) = &self.wal else {
            return Ok(());
        };
        let io = |e: std::io::Error| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
                Some(format!("syncing the write-ahead log: {e}")),
            )
        };
        match std::fs::File::open(path) {
            Ok(f) => f.sync_data().map_err(io),
            // No log: everything is in the main file, synced when the log was checkpointed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }
}

/// Why the database failed.
#[derive(Debug, Error)]
pub enum DbError {
    /// The key does not open this database (or the file is not a database).
    #[error(
        "the database does not open with this key (wrong identity, or not a SecureComm database)"
    )]
    WrongKey,
    /// The database was written by a newer SecureComm.
    #[error(
        "database schema version {found} is newer than this build's {supported}; upgrade SecureComm"
    )]
    TooNew {
        /// Version in the file.
        found: u32,
        /// Newest this build knows.
        supported: u32,
    },
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Migrations in order; entry `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: key-value settings, the outbox, and stored messages.
    "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
     CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        data BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
     ) STRICT;
     CREATE TABLE messages (
        guild BLOB NOT NULL,
        channel BLOB NOT NULL,
        sender BLOB NOT NULL,
        seq INTEGER NOT NULL,
        sent_at INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        body BLOB NOT NULL,
        state INTEGER NOT NULL,
        PRIMARY KEY (guild, channel, sender, seq)
     ) STRICT;
     CREATE INDEX messages_by_time ON messages (guild, channel, sent_at);",
    // 2: the causal log of each group (`sync::causal`), acknowledgements of own entries, and the
    // outbox's retry schedule (`sync::outbox`).
    "CREATE TABLE sync_entries (
        grp BLOB NOT NULL,
        author BLOB NOT NULL,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        delivered INTEGER NOT NULL,
        dorder INTEGER,
        head INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (grp, author, seq)
     ) STRICT;
     CREATE INDEX sync_entries_by_order ON sync_entries (grp, dorder);
     CREATE TABLE sync_acks (
        grp BLOB NOT NULL,
        peer BLOB NOT NULL,
        acked INTEGER NOT NULL,
        PRIMARY KEY (grp, peer)
     ) STRICT;
     ALTER TABLE outbox ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX outbox_by_due ON outbox (next_attempt_at);",
    // 3: guilds (`guild`): per-guild state (secret, guild document, key-agreement state), key
    // agreement output waiting to enter the causal log, member keys for pending adds, control
    // messages parked until this device is welcomed, invites this device issued, decrypted guild
    // messages, and where guild members' devices listen (to reconnect after restarts).
    "CREATE TABLE guilds (
        id BLOB PRIMARY KEY,
        secret BLOB NOT NULL,
        crdt BLOB NOT NULL,
        dcgka BLOB NOT NULL,
        applied INTEGER NOT NULL,
        authors BLOB NOT NULL,
        joined_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE guild_outq (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        guild BLOB NOT NULL,
        payload BLOB NOT NULL
     ) STRICT;
     CREATE TABLE guild_member_keys (
        guild BLOB NOT NULL,
        device BLOB NOT NULL,
        member_key BLOB NOT NULL,
        PRIMARY KEY (guild, device)
     ) STRICT;
     CREATE TABLE guild_prejoin (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        guild BLOB NOT NULL,
        author BLOB NOT NULL,
        seq INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE guild_invites (
        code BLOB PRIMARY KEY,
        guild BLOB NOT NULL,
        secret BLOB NOT NULL,
        token BLOB NOT NULL,
        created_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE guild_messages (
        rorder INTEGER PRIMARY KEY AUTOINCREMENT,
        guild BLOB NOT NULL,
        channel INTEGER NOT NULL,
        msg_id BLOB NOT NULL,
        sender BLOB NOT NULL,
        author BLOB NOT NULL,
        sent_at INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        text TEXT NOT NULL,
        UNIQUE (guild, msg_id)
     ) STRICT;
     CREATE INDEX guild_messages_by_channel ON guild_messages (guild, channel, sent_at);
     CREATE TABLE peer_addrs (
        peer BLOB PRIMARY KEY,
        addrs BLOB NOT NULL,
        updated_at INTEGER NOT NULL
     ) STRICT;",
    // 4: the sealed envelope of every guild message, by sender device and sequence number, so
    // members that were offline can fetch what they missed (`guild::history`).
    "CREATE TABLE guild_envelopes (
        guild BLOB NOT NULL,
        sender BLOB NOT NULL,
        seq INTEGER NOT NULL,
        sent_at INTEGER NOT NULL,
        envelope BLOB NOT NULL,
        PRIMARY KEY (guild, sender, seq)
     ) STRICT, WITHOUT ROWID;
     ALTER TABLE guild_messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;",
    // 5: direct messages (`guild::dm`): Double Ratchet sessions per peer device and role,
    // messages, the outbox of ciphertexts with their delivery state, and peers' prekey bundles.
    "CREATE TABLE dm_sessions (
        device BLOB NOT NULL,
        role INTEGER NOT NULL,
        state BLOB NOT NULL,
        used_at INTEGER NOT NULL,
        PRIMARY KEY (device, role)
     ) STRICT;
     CREATE TABLE dm_messages (
        rorder INTEGER PRIMARY KEY AUTOINCREMENT,
        peer_user BLOB NOT NULL,
        peer_device BLOB NOT NULL,
        outgoing INTEGER NOT NULL,
        msg_id BLOB NOT NULL,
        sent_at INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        text TEXT NOT NULL,
        UNIQUE (msg_id, peer_device, outgoing)
     ) STRICT;
     CREATE INDEX dm_messages_by_user ON dm_messages (peer_user, sent_at);
     CREATE TABLE dm_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device BLOB NOT NULL,
        msg_id BLOB NOT NULL,
        message BLOB,
        created_at INTEGER NOT NULL,
        next_attempt_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL
     ) STRICT;
     CREATE INDEX dm_outbox_by_msg ON dm_outbox (msg_id);
     CREATE TABLE dm_bundles (
        device BLOB PRIMARY KEY,
        spk_id INTEGER NOT NULL,
        bundle BLOB NOT NULL
     ) STRICT;",
    // 6: delivery receipts (`guild::history`): which of this device's guild messages each
    // member holds, as sequence-number ranges.
    "CREATE TABLE guild_receipts (
        guild BLOB NOT NULL,
        member BLOB NOT NULL,
        held BLOB NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (guild, member)
     ) STRICT;",
    // 7: mailboxes (`guild::mailbox`): members' announced mailbox tags and relays, and which
    // of this device's guild messages were deposited for which member.
    "CREATE TABLE member_mailboxes (
        device BLOB PRIMARY KEY,
        announcement BLOB NOT NULL
     ) STRICT;
     CREATE TABLE guild_deposits (
        guild BLOB NOT NULL,
        seq INTEGER NOT NULL,
        device BLOB NOT NULL,
        PRIMARY KEY (guild, seq, device)
     ) STRICT, WITHOUT ROWID;",
    // 8: message chains of one guild sender (`guild::engine`), stored apart from the whole
    // key-agreement state in `guilds.dcgka` so a message moves a small row, not the whole state;
    // rows are always newer than the whole state (writing it deletes them). This device's own
    // row holds its sending chain at the end of a block of reserved message indices, and
    // `guild_seq_reserved` the history sequence numbers reserved with it.
    "CREATE TABLE guild_chains (
        guild BLOB NOT NULL,
        sender BLOB NOT NULL,
        chains BLOB NOT NULL,
        PRIMARY KEY (guild, sender)
     ) STRICT;
     CREATE TABLE guild_seq_reserved (
        guild BLOB PRIMARY KEY,
        upto INTEGER NOT NULL
     ) STRICT;",
    // 9: where a deposited DM waits (relay address and item id), so the sender can ask the
    // relay whether it was picked up, and queue it again if it expired.
    "ALTER TABLE dm_outbox ADD COLUMN relay BLOB;
     ALTER TABLE dm_outbox ADD COLUMN relay_item INTEGER;",
    // 10: contacts and their verification (`store::contacts`): last seen name and devices per
    // user (root key), and the reference kept when the user verified them.
    "CREATE TABLE contacts (
        user BLOB PRIMARY KEY,
        name TEXT NOT NULL,
        name_key TEXT NOT NULL,
        devices BLOB NOT NULL,
        first_seen INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        verified_key BLOB,
        verified_at INTEGER,
        verified_name TEXT,
        verified_devices BLOB
     ) STRICT;
     CREATE INDEX contacts_by_name ON contacts (name_key);",
    // 11: a channel's messages in the order history reads them (newest first: time, sender,
    // seq, then the row id every index ends with), so opening a channel reads one page off
    // the index instead of sorting every message of the guild (measured: 2 s for the first
    // 2,000 of 100,000 messages, the planner picking the guild's unique index and a full sort).
    "CREATE INDEX guild_messages_in_order ON guild_messages (guild, channel, sent_at, sender, seq);
     DROP INDEX guild_messages_by_channel;",
    // 12: what messages say about messages (`guild::content`): replies, threads, timers,
    // mentions and edit marks on posts; reactions, tombstones of deletes, pins, threads,
    // operations waiting for their target, local edit history, per-device read state; and
    // which message (and which target) each sealed envelope belongs to, so erasing a message
    // empties its envelopes too.
    "ALTER TABLE guild_messages ADD COLUMN reply_to BLOB;
     ALTER TABLE guild_messages ADD COLUMN thread BLOB;
     ALTER TABLE guild_messages ADD COLUMN expires_at INTEGER;
     ALTER TABLE guild_messages ADD COLUMN mentions_me INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE guild_messages ADD COLUMN edited_at INTEGER;
     ALTER TABLE guild_messages ADD COLUMN edit_device BLOB;
     ALTER TABLE guild_messages ADD COLUMN edit_seq INTEGER;
     CREATE INDEX guild_messages_expiry ON guild_messages (expires_at)
        WHERE expires_at IS NOT NULL;
     CREATE INDEX guild_messages_by_thread ON guild_messages (guild, thread, sent_at, sender, seq)
        WHERE thread IS NOT NULL;
     CREATE INDEX guild_messages_mentions ON guild_messages (guild, channel, sent_at)
        WHERE mentions_me;
     ALTER TABLE guild_envelopes ADD COLUMN msg_id BLOB;
     ALTER TABLE guild_envelopes ADD COLUMN target BLOB;
     CREATE INDEX guild_envelopes_by_msg ON guild_envelopes (guild, msg_id)
        WHERE msg_id IS NOT NULL;
     CREATE INDEX guild_envelopes_by_target ON guild_envelopes (guild, target)
        WHERE target IS NOT NULL;
     CREATE TABLE guild_reactions (
        guild BLOB NOT NULL,
        target BLOB NOT NULL,
        user BLOB NOT NULL,
        emoji TEXT NOT NULL,
        channel INTEGER NOT NULL,
        added INTEGER NOT NULL,
        at INTEGER NOT NULL,
        device BLOB NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (guild, target, user, emoji)
     ) STRICT, WITHOUT ROWID;
     CREATE TABLE guild_tombstones (
        guild BLOB NOT NULL,
        target BLOB NOT NULL,
        deleted_by BLOB NOT NULL,
        channel INTEGER NOT NULL,
        moderator INTEGER NOT NULL,
        at INTEGER NOT NULL,
        erased INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (guild, target, deleted_by)
     ) STRICT, WITHOUT ROWID;
     CREATE TABLE guild_pins (
        guild BLOB NOT NULL,
        target BLOB NOT NULL,
        channel INTEGER NOT NULL,
        pinned INTEGER NOT NULL,
        by BLOB NOT NULL,
        at INTEGER NOT NULL,
        device BLOB NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (guild, target)
     ) STRICT, WITHOUT ROWID;
     CREATE TABLE guild_threads (
        guild BLOB NOT NULL,
        thread BLOB NOT NULL,
        channel INTEGER NOT NULL,
        starter BLOB,
        name TEXT NOT NULL,
        archived INTEGER NOT NULL,
        created_by BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        at INTEGER NOT NULL,
        device BLOB NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (guild, thread)
     ) STRICT, WITHOUT ROWID;
     CREATE INDEX guild_threads_by_channel ON guild_threads (guild, channel);
     CREATE TABLE guild_pending_ops (
        guild BLOB NOT NULL,
        target BLOB NOT NULL,
        at INTEGER NOT NULL,
        device BLOB NOT NULL,
        seq INTEGER NOT NULL,
        op BLOB NOT NULL
     ) STRICT;
     CREATE INDEX guild_pending_ops_by_target ON guild_pending_ops (guild, target);
     CREATE TABLE guild_message_edits (
        guild BLOB NOT NULL,
        msg_id BLOB NOT NULL,
        replaced_at INTEGER NOT NULL,
        text TEXT NOT NULL
     ) STRICT;
     CREATE INDEX guild_message_edits_by_msg ON guild_message_edits (guild, msg_id);
     CREATE TABLE guild_read_state (
        guild BLOB NOT NULL,
        channel INTEGER NOT NULL,
        read_at INTEGER NOT NULL,
        PRIMARY KEY (guild, channel)
     ) STRICT, WITHOUT ROWID;",
    // 13: local full-text search (`store::search`): an FTS5 index with external content (the
    // text is stored once, in `guild_messages`) over two columns of the view
    // `guild_messages_search`: the text, and `meta`, tokens for the search filters (guild,
    // channel, author, author in a channel, author in a guild, day, week, has_file), so filters
    // are doclist intersections inside the index rather than a row lookup per match. Triggers keep it in step with INSERT, UPDATE
    // (of the text or a filtered column) and DELETE, so code that edits or deletes messages
    // needs no extra call (`INSERT OR REPLACE` would bypass the DELETE trigger unless
    // `recursive_triggers` is on: use INSERT OR IGNORE or an UPSERT's DO UPDATE, as now). The
    // tokenizer folds case and removes diacritics ("cafe" finds "Café"); prefix indexes of 2, 3
    // and 4 characters serve search-as-you-type (measured in `benches/search.rs`: a 4-letter
    // prefix over 1,000,000 messages took p50 141 ms merging the lists of every word with
    // it). FTS5's `secure-delete`
    // (SQLite >= 3.44; the bundled SQLCipher 4.20 is SQLite 3.54.1) is on, so deleted or
    // edited text is removed from the index pages instead of lingering as dead entries until
    // a merge. The backfill ends with `optimize`, so the first messages stored afterwards do
    // not pay for the rebuild's pending merges (measured at 1,000,000 messages: 1,066 us per
    // insert before, 281 us after; the optimize took 14 s). `has_file` marks messages with an
    // attachment; issue 11 (files) sets it.
    // `store::search::meta_token` must build the same tokens as `meta` here.
    "ALTER TABLE guild_messages ADD COLUMN has_file INTEGER NOT NULL DEFAULT 0;
     CREATE VIEW guild_messages_search (rorder, text, meta) AS
        SELECT m.rorder, m.text, 'g' || hex(m.guild) || ' c' || hex(m.channel) || ' a' || hex(m.author)
            || ' p' || hex(m.channel) || hex(m.author) || ' q' || hex(m.guild) || hex(m.author)
            || ' d' || (m.sent_at / 86400000) || ' w' || (m.sent_at / 604800000)
            || ' f' || m.has_file
        FROM guild_messages m;
     CREATE VIRTUAL TABLE guild_messages_fts USING fts5(
        text,
        meta,
        content = 'guild_messages_search',
        content_rowid = 'rorder',
        tokenize = 'unicode61 remove_diacritics 2',
        prefix = '2 3 4'
     );
     INSERT INTO guild_messages_fts (guild_messages_fts, rank) VALUES ('secure-delete', 1);
     CREATE TRIGGER guild_messages_fts_insert AFTER INSERT ON guild_messages BEGIN
        INSERT INTO guild_messages_fts (rowid, text, meta) VALUES (new.rorder, new.text,
            'g' || hex(new.guild) || ' c' || hex(new.channel) || ' a' || hex(new.author)
            || ' p' || hex(new.channel) || hex(new.author) || ' q' || hex(new.guild) || hex(new.author)
            || ' d' || (new.sent_at / 86400000) || ' w' || (new.sent_at / 604800000)
            || ' f' || new.has_file);
     END;
     CREATE TRIGGER guild_messages_fts_delete AFTER DELETE ON guild_messages BEGIN
        INSERT INTO guild_messages_fts (guild_messages_fts, rowid, text, meta)
            VALUES ('delete', old.rorder, old.text,
            'g' || hex(old.guild) || ' c' || hex(old.channel) || ' a' || hex(old.author)
            || ' p' || hex(old.channel) || hex(old.author) || ' q' || hex(old.guild) || hex(old.author)
            || ' d' || (old.sent_at / 86400000) || ' w' || (old.sent_at / 604800000)
            || ' f' || old.has_file);
     END;
     CREATE TRIGGER guild_messages_fts_update
     AFTER UPDATE OF rorder, text, guild, channel, author, sent_at, has_file ON guild_messages
     BEGIN
        INSERT INTO guild_messages_fts (guild_messages_fts, rowid, text, meta)
            VALUES ('delete', old.rorder, old.text,
            'g' || hex(old.guild) || ' c' || hex(old.channel) || ' a' || hex(old.author)
            || ' p' || hex(old.channel) || hex(old.author) || ' q' || hex(old.guild) || hex(old.author)
            || ' d' || (old.sent_at / 86400000) || ' w' || (old.sent_at / 604800000)
            || ' f' || old.has_file);
        INSERT INTO guild_messages_fts (rowid, text, meta) VALUES (new.rorder, new.text,
            'g' || hex(new.guild) || ' c' || hex(new.channel) || ' a' || hex(new.author)
            || ' p' || hex(new.channel) || hex(new.author) || ' q' || hex(new.guild) || hex(new.author)
            || ' d' || (new.sent_at / 86400000) || ' w' || (new.sent_at / 604800000)
            || ' f' || new.has_file);
     END;
     INSERT INTO guild_messages_fts (guild_messages_fts) VALUES ('rebuild');
     INSERT INTO guild_messages_fts (guild_messages_fts) VALUES ('optimize');",
    // 14: file sharing (`crate::files`). `files`: one row per file known here (by content
    // address), with its key (this database is encrypted), header, size, plaintext hash and
    // transfer state; `have` is the bitmap of chunks held while fetching (written after the
    // part file is synced, so a restart resumes from it). `guild_files`: which guild message
    // (or other owner, `kind`) announced which file, with its name, type and thumbnail; a
    // file stays while one owner does, and members are served a file only if it belongs to
    // one of their guilds.
    "CREATE TABLE files (
        root BLOB PRIMARY KEY,
        key BLOB NOT NULL,
        header BLOB NOT NULL,
        size INTEGER NOT NULL,
        sha256 BLOB NOT NULL,
        state INTEGER NOT NULL DEFAULT 0,
        have BLOB,
        have_count INTEGER NOT NULL DEFAULT 0,
        added_at INTEGER NOT NULL,
        error TEXT
     ) STRICT;
     CREATE TABLE guild_files (
        guild BLOB NOT NULL,
        owner BLOB NOT NULL,
        idx INTEGER NOT NULL,
        kind INTEGER NOT NULL DEFAULT 0,
        root BLOB NOT NULL,
        name TEXT NOT NULL,
        mime TEXT NOT NULL,
        thumb BLOB,
        thumb_w INTEGER,
        thumb_h INTEGER,
        PRIMARY KEY (guild, owner, idx)
     ) STRICT;
     CREATE INDEX guild_files_root ON guild_files (root, guild);",
];

/// The newest schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// An open, unlocked database.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    wal: Option<PathBuf>,
    dir: Option<PathBuf>,
}

impl Db {
    /// Opens (creating if needed) the database at `path` with `key`, and migrates it.
    pub fn open(path: &Path, key: &Secret32) -> Result<Self, DbError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mut db = Self::unlock(conn, key)?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        db.wal = Some(PathBuf::from(wal));
        db.dir = path.parent().map(Path::to_path_buf);
        Ok(db)
    }

    /// The directory the database file is in (`None` in memory): where the node keeps its
    /// other stores (the encrypted file store).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// An encrypted in-memory database (tests).
    pub fn open_in_memory(key: &Secret32) -> Result<Self, DbError> {
        Self::unlock(Connection::open_in_memory()?, key)
    }

    fn unlock(conn: Connection, key: &Secret32) -> Result<Self, DbError> {
        // A raw 256-bit key (x'..') skips SQLCipher's own PBKDF2: the key is already random.
        let pragma = Zeroizing::new(format!("x'{}'", hex::encode(key.expose())));
        conn.pragma_update(None, "key", pragma.as_str())?;
        // The first read fails if the key is wrong.
        let probe: Result<i64, _> =
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0));
        if let Err(e) = probe {
            return Err(match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::NotADatabase =>
                {
                    DbError::WrongKey
                }
                other => DbError::Sqlite(other),
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted content (erased messages, expired timers) is overwritten in the file, not
        // left in free pages.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut db = Self {
            conn,
            wal: None,
            dir: None,
        };
        db.migrate()?;
        Ok(db)
    }

    fn migrate(&mut self) -> Result<(), DbError> {
        let found: u32 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(DbError::TooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as u32 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The schema version in the file.
    pub fn schema_version(&self) -> Result<u32, DbError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Reads a setting.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Writes a setting durably.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// A handle that makes relaxed commits durable from another thread (group commit).
    pub fn wal_sync(&self) -> WalSync {
        WalSync {
            wal: self.wal.clone(),
        }
    }

    /// The underlying connection, for the modules that own their tables.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Mutable access, for transactions.
    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_wrong_key_and_nothing_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let key = Secret32::from_bytes([7; 32]);
        {
            let db = Db::open(&path, &key).unwrap();
            assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
            db.put("greeting", b"a very recognisable plaintext marker")
                .unwrap();
        }
        {
            let db = Db::open(&path, &key).unwrap();
            assert_eq!(
                db.get("greeting").unwrap().unwrap(),
                b"a very recognisable plaintext marker"
            );
            assert_eq!(db.get("missing").unwrap(), None);
        }
        assert!(matches!(
            Db::open(&path, &Secret32::from_bytes([8; 32])).unwrap_err(),
            DbError::WrongKey
        ));
        // Neither the main file nor the WAL holds the plaintext, the table names or SQLite's header.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            for needle in [
                &b"recognisable plaintext"[..],
                b"greeting",
                b"CREATE TABLE",
                b"SQLite format 3",
            ] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{needle:?} on disk in clear"
                );
            }
        }
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
        assert!(matches!(
            Db::open(&path, &Secret32::from_bytes([7; 32])).unwrap_err(),
            DbError::WrongKey
        ));
    }

    #[test]
    fn newer_schema_is_refused() {
        let key = Secret32::from_bytes([1; 32]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        {
            let db = Db::open(&path, &key).unwrap();
            db.conn()
                .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        assert!(matches!(
            Db::open(&path, &key).unwrap_err(),
            DbError::TooNew { .. }
        ));
    }
}
