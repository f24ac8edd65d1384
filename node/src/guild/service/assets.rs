//! Guild assets: files the guild document refers to rather than a message (soundboard clips,
//! custom emoji images). They travel like shared files (encrypted into the file store under a
//! fresh key, fetched chunk by chunk from members, each chunk checked), but every member
//! fetches them **ahead of time**, on the service's tick, so that playing a sound or showing a
//! reaction never waits for a download. The reference in the guild document (root, key, size,
//! header, SHA-256) is what the fetch protocol needs; `guild_files` rows of the asset's kind
//! record it locally, so members are served it and it is kept while referenced.

use securecomm_crdt::schema::{Emoji, GuildId, Sound};
use securecomm_noise::codec::Decode;
use securecomm_noise::file::{FileHeader, FileKey};

use super::GuildService;
use crate::files::db::{self, kind};
use crate::files::state;
use crate::files::wire::{Attachment, check_attachments};
use crate::guild::GuildError;

/// One asset a guild document refers to.
pub(crate) struct AssetRef {
    /// `guild_files.kind`.
    pub kind: i64,
    /// The sound's or emoji's id, big-endian.
    pub owner: Vec<u8>,
    /// The file, if its reference is one the fetch protocol can carry.
    pub file: Option<Attachment>,
}

/// The file an asset reference describes, if it is one the fetch protocol can carry.
pub(crate) fn attachment(
    name: &str,
    mime: &str,
    size: u64,
    sha256: [u8; 32],
    root: [u8; 32],
    header: &[u8; 12],
    key: [u8; 32],
) -> Option<Attachment> {
    let a = Attachment {
        name: name.into(),
        mime: mime.into(),
        size,
        sha256,
        root,
        header: FileHeader::from_bytes(header).ok()?,
        key: FileKey::from_bytes(key),
        thumbnail: None,
    };
    check_attachments(std::slice::from_ref(&a)).ok()?;
    Some(a)
}

/// Every asset of a guild's document: its sounds, then its emoji.
fn assets_of<'a>(
    sounds: impl Iterator<Item = (u64, &'a Sound)>,
    emojis: impl Iterator<Item = (u64, &'a Emoji)>,
) -> Vec<AssetRef> {
    let mut out = Vec::new();
    for (id, s) in sounds {
        out.push(AssetRef {
            kind: kind::SOUND,
            owner: id.to_be_bytes().to_vec(),
            file: super::sound::attachment_of(s),
        });
    }
    for (id, e) in emojis {
        out.push(AssetRef {
            kind: kind::EMOJI,
            owner: id.to_be_bytes().to_vec(),
            file: super::emoji::attachment_of(e),
        });
    }
    out
}

impl GuildService {
    /// Encrypts `bytes` into the file store (fresh key, like any shared file) as a complete
    /// asset of `kind` owned by `owner` in guild `gid`, and returns the file (whose root, key,
    /// header and hashes go into the guild document).
    pub(crate) async fn store_guild_asset(
        &self,
        gid: &GuildId,
        kind: i64,
        owner: &[u8],
        bytes: &[u8],
        (name, mime): (&str, &str),
        max: u64,
    ) -> Result<Attachment, GuildError> {
        let store = self.file_store()?.clone();
        let (bytes, name2, mime2) = (bytes.to_vec(), name.to_owned(), mime.to_owned());
        let a = tokio::task::spawn_blocking(move || store.import(&bytes[..], &name2, &mime2, max))
            .await
            .map_err(|_| GuildError::Invalid(format!("storing the {name} stopped unexpectedly")))?
            .map_err(|e| GuildError::Invalid(format!("storing the {name}: {e}")))?
            .attachment;
        self.with_engine(|_, db| {
            db::register_asset(db.conn(), gid, kind, owner, &a, state::COMPLETE)
        })?
        .map_err(|e| GuildError::Invalid(e.to_string()))?;
        Ok(a)
    }

    /// Forgets this guild's references to assets of `kind` that its document no longer names
    /// (after a failed upload, say); the files go at the next collection.
    pub(crate) fn retain_guild_assets(&self, gid: &GuildId, kind: i64) {
        let owners: Vec<Vec<u8>> = self
            .with_engine(|e, _| {
                e.guilds
                    .get_mut(gid)
                    .map(|g| {
                        let v = g.crdt.view();
                        assets_of(
                            v.sounds().iter().map(|(id, s)| (id.0, s)),
                            v.emojis().iter().map(|(id, e)| (id.0, e)),
                        )
                        .into_iter()
                        .filter(|a| a.kind == kind)
                        .map(|a| a.owner)
                        .collect()
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let _ = self.with_engine(|_, db| db::retain_assets(db.conn(), gid, kind, &owners));
    }

    /// Fetches every guild's assets ahead of time: each sound's clip and each emoji's image is
    /// recorded as a guild asset and fetched from members unless it is here; assets gone from
    /// a document lose their reference (the file goes at the next collection). Runs on the
    /// service's tick.
    pub(crate) fn sync_guild_assets(&self) {
        let Ok(guilds) = self.with_engine(|e, _| {
            e.guilds
                .iter_mut()
                .map(|(gid, g)| {
                    let v = g.crdt.view();
                    let assets = assets_of(
                        v.sounds().iter().map(|(id, s)| (id.0, s)),
                        v.emojis().iter().map(|(id, e)| (id.0, e)),
                    );
                    (*gid, assets)
                })
                .collect::<Vec<_>>()
        }) else {
            return;
        };
        for (gid, assets) in guilds {
            for a in &assets {
                let Some(file) = &a.file else {
                    continue;
                };
                let st = self.with_engine(|_, db| {
                    db::register_asset(db.conn(), &gid, a.kind, &a.owner, file, state::FETCHING)?;
                    db::load(db.conn(), &file.root).map(|r| r.map(|r| r.state))
                });
                match st {
                    Ok(Ok(Some(state::COMPLETE))) => {}
                    Ok(Ok(Some(_))) => self.start_fetch(file.root),
                    _ => {}
                }
            }
            for k in [kind::SOUND, kind::EMOJI] {
                let keep: Vec<Vec<u8>> = assets
                    .iter()
                    .filter(|a| a.kind == k)
                    .map(|a| a.owner.clone())
                    .collect();
                let _ = self.with_engine(|_, db| db::retain_assets(db.conn(), &gid, k, &keep));
            }
        }
    }

    /// The plaintext of an asset of `kind` whose file is here and complete, if `root` is one.
    pub(crate) fn asset_bytes(&self, root: &[u8; 32], kind: i64, max: u64) -> Option<Vec<u8>> {
        let is_asset = self
            .with_engine(|_, db| {
                db.conn()
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM guild_files g JOIN files f ON f.root = g.root
                         WHERE g.root = ?1 AND g.kind = ?2 AND f.state = ?3)",
                        rusqlite::params![&root[..], kind, state::COMPLETE],
                        |r| r.get::<_, bool>(0),
                    )
                    .unwrap_or(false)
            })
            .unwrap_or(false);
        if !is_asset {
            return None;
        }
        self.read_small_file(root, max).ok()
    }
}
