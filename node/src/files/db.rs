//! The file tables of the encrypted database (migration 14; see `store::db`): what this node
//! knows of each file, which guild messages announced it, and how far a fetch got.

use rusqlite::{Connection, OptionalExtension, params};
use securecomm_crdt::schema::GuildId;
use securecomm_noise::codec::{Decode, Encode};
use securecomm_noise::file::{FileHeader, FileKey};

use super::wire::{Attachment, Thumbnail};
use super::{FileInfo, state};

fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Records the files a stored message (`owner`) announced: the file rows (kept if already
/// known, e.g. our own upload, which is complete) and the message's references.
pub fn attach(
    conn: &Connection,
    gid: &GuildId,
    owner: &[u8],
    files: &[Attachment],
) -> Result<(), rusqlite::Error> {
    for (i, a) in files.iter().enumerate() {
        register(conn, a, state::REMOTE)?;
        conn.prepare_cached(
            "INSERT OR IGNORE INTO guild_files (guild, owner, idx, kind, root, name, mime, thumb,
                thumb_w, thumb_h) VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            &gid.0[..],
            owner,
            i as i64,
            &a.root[..],
            a.name,
            a.mime,
            a.thumbnail.as_ref().map(|t| t.jpeg.clone()),
            a.thumbnail.as_ref().map(|t| i64::from(t.width)),
            a.thumbnail.as_ref().map(|t| i64::from(t.height)),
        ])?;
    }
    Ok(())
}

/// Records a file (with its key) in `state` unless it is already known.
pub fn register(conn: &Connection, a: &Attachment, st: i64) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO files (root, key, header, size, sha256, state, added_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        &a.root[..],
        &a.key.expose()[..],
        a.header.to_bytes(),
        sql(a.size),
        &a.sha256[..],
        st,
        sql(crate::guild::engine::now_ms()),
    ])?;
    Ok(())
}

/// A file as this node knows it.
#[derive(Debug, Clone)]
pub struct FileRow {
    /// The announcement (name and type from one message that carries it).
    pub attachment: Attachment,
    /// Transfer state ([`state`]).
    pub state: i64,
    /// Chunks held, while fetching.
    pub have: Option<Vec<u8>>,
    /// How many chunks are held.
    pub have_count: u64,
    /// The last error of a stopped fetch.
    pub error: Option<String>,
}

/// Loads what is known of `root`.
pub fn load(conn: &Connection, root: &[u8; 32]) -> Result<Option<FileRow>, rusqlite::Error> {
    let row = conn
        .prepare_cached(
            "SELECT f.key, f.header, f.size, f.sha256, f.state, f.have, f.have_count, f.error,
                g.name, g.mime
             FROM files f LEFT JOIN guild_files g ON g.root = f.root
             WHERE f.root = ?1 LIMIT 1",
        )?
        .query_row([&root[..]], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<Vec<u8>>>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<String>>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        })
        .optional()?;
    let Some((key, header, size, sha, st, have, have_count, error, name, mime)) = row else {
        return Ok(None);
    };
    let (Ok(key), Ok(header), Ok(sha256)) = (
        <[u8; 32]>::try_from(key.as_slice()),
        FileHeader::from_bytes(&header),
        <[u8; 32]>::try_from(sha.as_slice()),
    ) else {
        return Ok(None);
    };
    Ok(Some(FileRow {
        attachment: Attachment {
            name: name.unwrap_or_else(|| hex::encode(&root[..8])),
            mime: mime.unwrap_or_else(|| "application/octet-stream".into()),
            size: unsql(size),
            sha256,
            root: *root,
            header,
            key: FileKey::from_bytes(key),
            thumbnail: None,
        },
        state: st,
        have,
        have_count: unsql(have_count),
        error,
    }))
}

/// The guilds whose messages (or libraries) announced `root`.
pub fn guilds_of(conn: &Connection, root: &[u8; 32]) -> Result<Vec<GuildId>, rusqlite::Error> {
    let rows: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT DISTINCT guild FROM guild_files WHERE root = ?1")?
        .query_map([&root[..]], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|g| <[u8; 32]>::try_from(g.as_slice()).ok().map(GuildId))
        .collect())
}

/// Saves fetch progress.
pub fn set_have(
    conn: &Connection,
    root: &[u8; 32],
    have: &[u8],
    count: u64,
) -> Result<(), rusqlite::Error> {
    conn.prepare_cached("UPDATE files SET have = ?2, have_count = ?3 WHERE root = ?1")?
        .execute(params![&root[..], have, sql(count)])?;
    Ok(())
}

/// Sets a file's transfer state (and the error that stopped it, if any). A complete file
/// forgets its bitmap.
pub fn set_state(
    conn: &Connection,
    root: &[u8; 32],
    st: i64,
    error: Option<&str>,
) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "UPDATE files SET state = ?2, error = ?3,
            have = CASE WHEN ?2 = 2 THEN NULL ELSE have END WHERE root = ?1",
    )?
    .execute(params![&root[..], st, error])?;
    Ok(())
}

/// Files whose fetch was running when the node stopped.
pub fn fetching(conn: &Connection) -> Result<Vec<[u8; 32]>, rusqlite::Error> {
    let rows: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT root FROM files WHERE state = 1")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|r| <[u8; 32]>::try_from(r.as_slice()).ok())
        .collect())
}

/// Forgets files no message or library refers to any more (deleted or expired messages);
/// returns their roots so their ciphertext can be removed from the store.
pub fn collect_orphans(conn: &Connection) -> Result<Vec<[u8; 32]>, rusqlite::Error> {
    let rows: Vec<Vec<u8>> = conn
        .prepare_cached(
            "SELECT root FROM files f WHERE NOT EXISTS
                (SELECT 1 FROM guild_files g WHERE g.root = f.root) LIMIT 1000",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        conn.prepare_cached("DELETE FROM files WHERE root = ?1")?
            .execute([&r])?;
        if let Ok(r) = <[u8; 32]>::try_from(r.as_slice()) {
            out.push(r);
        }
    }
    Ok(out)
}

/// The files of a message, in order, as shown.
pub fn infos(
    conn: &Connection,
    gid: &GuildId,
    owner: &[u8],
) -> Result<Vec<FileInfo>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT g.root, g.name, g.mime, g.thumb, g.thumb_w, g.thumb_h, f.size, f.state,
            f.have_count, f.header
         FROM guild_files g JOIN files f ON f.root = g.root
         WHERE g.guild = ?1 AND g.owner = ?2 AND g.kind = 0 ORDER BY g.idx",
    )?;
    let rows = stmt.query_map(params![&gid.0[..], owner], |r| {
        let thumb = match (
            r.get::<_, Option<Vec<u8>>>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, Option<i64>>(5)?,
        ) {
            (Some(jpeg), Some(w), Some(h)) => Some(Thumbnail {
                width: u16::try_from(w).unwrap_or(0),
                height: u16::try_from(h).unwrap_or(0),
                jpeg,
            }),
            _ => None,
        };
        let size = unsql(r.get(6)?);
        let st: i64 = r.get(7)?;
        let have_chunks = unsql(r.get(8)?);
        let chunk = FileHeader::from_bytes(&r.get::<_, Vec<u8>>(9)?)
            .map(|h| u64::from(h.chunk_size()))
            .unwrap_or(1);
        Ok(FileInfo {
            root: hex::encode(r.get::<_, Vec<u8>>(0)?),
            name: r.get(1)?,
            mime: r.get(2)?,
            size,
            state: state::name(st).to_owned(),
            have: if st == state::COMPLETE {
                size
            } else {
                (have_chunks * chunk).min(size)
            },
            thumbnail: thumb.as_ref().map(|t| (t.width, t.height)),
            thumb,
        })
    })?;
    rows.collect()
}

/// A file as `files list` shows it: with the message that announced it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    /// The message (hex id).
    pub msg: String,
    /// Its channel.
    pub channel: u64,
    /// Its author (hex root key).
    pub sender: String,
    /// When it was sent (sender's clock, ms).
    pub sent_at: u64,
    /// The file.
    pub file: FileInfo,
}

/// Every file announced in a guild (optionally one channel), newest first.
pub fn list(
    conn: &Connection,
    gid: &GuildId,
    channel: Option<u64>,
    limit: usize,
) -> Result<Vec<Listed>, rusqlite::Error> {
    let owners: Vec<(Vec<u8>, i64, Vec<u8>, i64)> = conn
        .prepare_cached(
            "SELECT DISTINCT m.msg_id, m.channel, m.author, m.sent_at FROM guild_files g
             JOIN guild_messages m ON m.guild = g.guild AND m.msg_id = g.owner
             WHERE g.guild = ?1 AND g.kind = 0 AND (?2 IS NULL OR m.channel = ?2)
             ORDER BY m.sent_at DESC LIMIT ?3",
        )?
        .query_map(
            params![
                &gid.0[..],
                channel.map(|c| i64::from_ne_bytes(c.to_ne_bytes())),
                sql(limit as u64)
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (id, ch, author, at) in owners {
        for file in infos(conn, gid, &id)? {
            out.push(Listed {
                msg: hex::encode(&id),
                channel: u64::from_ne_bytes(ch.to_ne_bytes()),
                sender: hex::encode(&author),
                sent_at: unsql(at),
                file,
            });
        }
    }
    Ok(out)
}

/// Resolves a file given as a hex root or a unique prefix of at least 6 hex digits.
pub fn resolve(conn: &Connection, s: &str) -> Result<Option<[u8; 32]>, String> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() < 6 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not a file id (hex, at least 6 digits)"));
    }
    let rows: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT root FROM files WHERE hex(root) LIKE ?1 || '%' LIMIT 2")
        .and_then(|mut st| {
            st.query_map([s.to_ascii_uppercase()], |r| r.get(0))?
                .collect::<Result<_, _>>()
        })
        .map_err(|e| e.to_string())?;
    match rows.as_slice() {
        [one] => Ok(<[u8; 32]>::try_from(one.as_slice()).ok()),
        [] => Ok(None),
        _ => Err(format!("file id {s:?} is ambiguous")),
    }
}

/// What `guild_files.kind` says a reference is.
pub mod kind {
    /// An attachment of a message (`owner` = message id).
    pub const MESSAGE: i64 = 0;
    /// A soundboard clip of the guild's library (`owner` = sound id, big-endian).
    pub const SOUND: i64 = 1;
    /// A custom emoji's image (`owner` = emoji id, big-endian).
    pub const EMOJI: i64 = 2;
}

/// Records a guild asset of kind `kind` (a soundboard clip, a custom emoji image): the file
/// (in `st`, unless known) and the guild's reference to it, so members are served it and it
/// is kept while referenced.
pub fn register_asset(
    conn: &Connection,
    gid: &GuildId,
    kind: i64,
    owner: &[u8],
    a: &Attachment,
    st: i64,
) -> Result<(), rusqlite::Error> {
    register(conn, a, st)?;
    conn.prepare_cached(
        "INSERT INTO guild_files (guild, owner, idx, kind, root, name, mime)
         VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6)
         ON CONFLICT (guild, owner, idx) DO UPDATE SET root = excluded.root, name = excluded.name",
    )?
    .execute(params![
        &gid.0[..],
        &asset_owner(kind, owner)[..],
        kind,
        &a.root[..],
        a.name,
        a.mime
    ])?;
    Ok(())
}

/// Drops a guild's asset references of kind `kind` whose owner is not in `keep` (sounds
/// removed from the library, emoji deleted); the files themselves go at the next collection if
/// nothing else refers to them.
pub fn retain_assets(
    conn: &Connection,
    gid: &GuildId,
    kind: i64,
    keep: &[Vec<u8>],
) -> Result<(), rusqlite::Error> {
    let keep: Vec<Vec<u8>> = keep.iter().map(|o| asset_owner(kind, o)).collect();
    let owners: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT owner FROM guild_files WHERE guild = ?1 AND kind = ?2")?
        .query_map(params![&gid.0[..], kind], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for o in owners {
        if !keep.contains(&o) {
            conn.prepare_cached(
                "DELETE FROM guild_files WHERE guild = ?1 AND kind = ?2 AND owner = ?3",
            )?
            .execute(params![&gid.0[..], kind, o])?;
        }
    }
    Ok(())
}

/// The `owner` column of a guild asset reference. Rows are keyed by (guild, owner, index), so
/// owners of different kinds must not collide: a sound keeps its bare id (as stored since
/// migration 14), other kinds prefix theirs with the kind.
fn asset_owner(kind: i64, owner: &[u8]) -> Vec<u8> {
    if kind == self::kind::SOUND {
        return owner.to_vec();
    }
    let mut o = Vec::with_capacity(owner.len() + 8);
    o.extend_from_slice(&kind.to_be_bytes());
    o.extend_from_slice(owner);
    o
}
