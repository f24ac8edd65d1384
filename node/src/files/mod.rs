//! File sharing, end to end encrypted.
//!
//! # Design
//! * **Sending** (`send --file`): the file is encrypted while it is read
//!   ([`store::FileStore::import`], `noise::file`'s STREAM construction, 128 KiB chunks, a fresh
//!   random key per file) into the node's encrypted file store; the SHA-256 of every sealed
//!   chunk forms the *manifest*, whose SHA-256 is the file's *root* (content address). The
//!   message announces an [`wire::Attachment`]: name, size, media type, plaintext SHA-256, root,
//!   header and key, plus a sender-made JPEG thumbnail for images ([`thumb`]), all inside the
//!   guild's encrypted message, so relays and non-members learn none of it.
//! * **Fetching** (`files fetch`, or a click in the app; nothing is fetched or decoded before
//!   the user's client asks): the manifest is fetched first and checked against the root, then
//!   sealed chunks are requested from every connected member who may hold them, several at
//!   once (the fetch protocol, [`wire::FileRequest`], pipelined on one long-lived stream per
//!   member: [`stream`]), each chunk checked against its manifest hash before it is written at its offset in a part
//!   file. A chunk that fails is counted, the member who sent it is avoided for that chunk (and
//!   dropped after three failures), and the chunk is asked of another. Members that are still
//!   fetching serve the chunks they hold. Which chunks are held is a bitmap kept in the
//!   encrypted database, saved every second without syncing the part file; a resumed fetch
//!   re-checks the chunks the bitmap claims and fetches again those a crash lost. Progress
//!   (percentage, speed, time left) goes out as events.
//! * **Saving** ([`store::FileStore::export`]): decryption, chunk by chunk, into the path the
//!   user chose; the whole-file SHA-256 must match the announcement before the file appears.
//! * **Erasing**: a deleted or expired message's files leave the store (rows and ciphertext).
//!
//! Memory stays bounded whatever the size: one chunk per open stream, at most
//! [`MAX_INFLIGHT`] requests of at most [`wire::MAX_CHUNKS_PER_REQUEST`] chunks in flight per
//! fetch, and 32 bytes of manifest per chunk.

pub mod db;
pub mod emoji;
pub mod store;
pub mod stream;
pub mod thumb;
pub mod wire;

/// Most chunk requests in flight for one fetch (across all sources).
pub const MAX_INFLIGHT: usize = 16;
/// Most requests in flight to one source.
pub const MAX_INFLIGHT_PER_PEER: usize = 8;
/// Most fetches running at once; more wait.
pub const MAX_ACTIVE_FETCHES: usize = 4;
/// Most fetch-protocol requests (on the direct protocol) and file streams served at once; more
/// are answered `Busy`.
pub const MAX_SERVING: usize = 32;
/// Failed chunks after which a source is dropped for the rest of a fetch.
pub const MAX_STRIKES: u32 = 3;

/// A media type for a file name, from its extension (`application/octet-stream` otherwise).
pub fn mime_for(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "txt" | "md" | "log" => "text/plain",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

/// A file attached to a message, as shown (to the app, and as JSON): never the key.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileInfo {
    /// Content address (hex): what `files fetch` and `files save` take.
    pub root: String,
    /// File name.
    pub name: String,
    /// Media type.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
    /// `remote` (not fetched), `fetching`, `paused` (waiting for a member who has it, or
    /// stopped by an error) or `complete` (here, encrypted, ready to save).
    pub state: String,
    /// Bytes held so far.
    pub have: u64,
    /// Thumbnail size in pixels, when the sender made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<(u16, u16)>,
    /// The thumbnail's JPEG bytes (decoded only when the client chooses to).
    #[serde(skip)]
    pub thumb: Option<wire::Thumbnail>,
}

impl FileInfo {
    /// What a fresh announcement shows (`state` as given).
    pub fn of(a: &wire::Attachment, state: &str) -> Self {
        Self {
            root: hex::encode(a.root),
            name: a.name.clone(),
            mime: a.mime.clone(),
            size: a.size,
            state: state.to_owned(),
            have: if state == "complete" { a.size } else { 0 },
            thumbnail: a.thumbnail.as_ref().map(|t| (t.width, t.height)),
            thumb: a.thumbnail.clone(),
        }
    }
}

/// Transfer states as stored in the `files` table.
pub mod state {
    /// Announced, not fetched.
    pub const REMOTE: i64 = 0;
    /// Being fetched (resumed after a restart).
    pub const FETCHING: i64 = 1;
    /// Complete: `<root>.enc` is here.
    pub const COMPLETE: i64 = 2;
    /// Fetch stopped (no member had it, or an error); `files fetch` starts it again.
    pub const PAUSED: i64 = 3;

    /// The name of a state.
    pub fn name(s: i64) -> &'static str {
        match s {
            FETCHING => "fetching",
            COMPLETE => "complete",
            PAUSED => "paused",
            _ => "remote",
        }
    }
}
