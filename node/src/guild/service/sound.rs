//! The guild's soundboard library on [`GuildService`]: upload, list, find and delete sounds.
//!
//! Uploading imports the file ([`crate::sound::import`]: decoded, limited to 5.2 s and
//! 512 KiB, normalized, encoded as an Opus clip asset), encrypts the asset into the file store
//! like any shared file ([`GuildService::store_asset`]), and records the sound (name, emoji, volume and the asset's
//! reference) with a `PutSound` op, which the crdt accepts only from members with Manage Guild
//! and only while the library holds fewer than 48 sounds. Names are unique within a guild here
//! (so `sound play GUILD NAME` means one sound); the crdt itself does not require it.

use rand_core::{OsRng, RngCore};
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::schema::{
    MAX_SOUND_ASSET_BYTES, MAX_SOUND_EMOJI, MAX_SOUND_NAME_CHARS, MAX_SOUND_VOLUME, Sound,
    SoundAsset, SoundId,
};
use securecomm_crdt::view::GuildView;
use serde::Serialize;

use super::GuildService;
use crate::guild::GuildError;
use crate::sound;

/// A sound as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SoundInfo {
    /// Sound id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Emoji, if any.
    pub emoji: Option<String>,
    /// Volume, percent.
    pub volume: u8,
    /// Length, milliseconds.
    pub duration_ms: u32,
    /// Size of the encrypted asset, bytes.
    pub size: u64,
    /// The asset's content address (hex): what the voice engine's clip cache is keyed by.
    pub root: String,
}

/// What an upload made.
#[derive(Clone, Serialize)]
pub struct UploadedSound {
    /// The sound as recorded in the library.
    pub sound: SoundInfo,
    /// Set when the file's extension named another format than its content.
    pub note: Option<String>,
    /// The clip asset's bytes (for the local clip cache; not in JSON output).
    #[serde(skip)]
    pub asset: Vec<u8>,
    /// The asset's content address.
    #[serde(skip)]
    pub root: [u8; 32],
}

impl std::fmt::Debug for UploadedSound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadedSound")
            .field("sound", &self.sound)
            .field("note", &self.note)
            .field("asset_len", &self.asset.len())
            .finish()
    }
}

fn info(id: SoundId, s: &Sound) -> SoundInfo {
    SoundInfo {
        id: id.0,
        name: s.name.clone(),
        emoji: s.emoji.clone(),
        volume: s.volume,
        duration_ms: s.asset.duration_ms,
        size: s.asset.size,
        root: hex::encode(s.asset.root),
    }
}

/// The sound named `name` (or with id `name`), if exactly one.
fn find(v: &GuildView, name: &str) -> Result<(SoundId, Sound), GuildError> {
    let name = name.trim();
    if let Ok(n) = name.parse::<u64>()
        && let Some(s) = v.sounds().get(&SoundId(n))
    {
        return Ok((SoundId(n), s.clone()));
    }
    let found: Vec<(&SoundId, &Sound)> =
        v.sounds().iter().filter(|(_, s)| s.name == name).collect();
    match found.as_slice() {
        [(id, s)] => Ok((**id, (*s).clone())),
        [] => Err(GuildError::Invalid(format!("no sound named {name:?}"))),
        _ => Err(GuildError::Ambiguous(format!(
            "several sounds are named {name:?}; use the id"
        ))),
    }
}

impl GuildService {
    /// Imports an audio file and adds it to the guild's sound library (Manage Guild).
    /// `extension` is the file's (a hint: the content decides the format).
    pub async fn upload_sound(
        &self,
        guild: &str,
        file: &[u8],
        extension: Option<&str>,
        name: &str,
        emoji: Option<&str>,
        volume: u8,
    ) -> Result<UploadedSound, GuildError> {
        let gid = self.resolve(guild)?;
        let name = name.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_SOUND_NAME_CHARS {
            return Err(GuildError::Invalid(format!(
                "a sound name has 1 to {MAX_SOUND_NAME_CHARS} characters, got {chars}"
            )));
        }
        let emoji = emoji.map(str::trim).filter(|e| !e.is_empty());
        if let Some(e) = emoji
            && e.len() > MAX_SOUND_EMOJI
        {
            return Err(GuildError::Invalid(format!(
                "a sound's emoji has at most {MAX_SOUND_EMOJI} bytes"
            )));
        }
        if volume > MAX_SOUND_VOLUME {
            return Err(GuildError::Invalid(format!(
                "volume is 0 to {MAX_SOUND_VOLUME} percent, got {volume}"
            )));
        }
        self.on_view(&gid, |v, _| match find(v, name) {
            Ok(_) => Err(GuildError::Invalid(format!(
                "a sound named {name:?} exists already"
            ))),
            Err(_) => Ok(()),
        })?;
        // Decoding and encoding take up to a few hundred milliseconds of CPU: off the runtime.
        let (bytes, ext) = (file.to_vec(), extension.map(str::to_owned));
        let clip = tokio::task::spawn_blocking(move || sound::import(&bytes, ext.as_deref()))
            .await
            .map_err(|e| GuildError::Invalid(format!("importing the sound: {e}")))?
            .map_err(|e| GuildError::Invalid(e.to_string()))?;
        let asset = clip.asset_bytes();
        let id = SoundId(OsRng.next_u64());
        let reference = self
            .store_asset(&gid, id, &asset, clip.duration_ms().max(1))
            .await?;
        let s = Sound {
            name: name.to_owned(),
            emoji: emoji.map(str::to_owned),
            volume,
            asset: reference,
        };
        if let Err(e) = self
            .checked_change(&gid, vec![GuildOp::PutSound(id, s.clone())])
            .await
        {
            // Not in the library: its stored asset goes at the next collection.
            self.retain_guild_assets(&gid, crate::files::db::kind::SOUND);
            return Err(e);
        }
        Ok(UploadedSound {
            sound: info(id, &s),
            note: clip.mislabelled.map(|m| m.to_string()),
            asset,
            root: reference.root,
        })
    }

    /// The guild's sounds, by name.
    pub fn list_sounds(&self, guild: &str) -> Result<Vec<SoundInfo>, GuildError> {
        let gid = self.resolve(guild)?;
        self.on_view(&gid, |v, _| {
            let mut out: Vec<SoundInfo> = v.sounds().iter().map(|(id, s)| info(*id, s)).collect();
            out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            Ok(out)
        })
    }

    /// One sound by name or id: its listing and its asset reference (for playing it).
    pub fn find_sound(
        &self,
        guild: &str,
        sound: &str,
    ) -> Result<(SoundInfo, SoundAsset), GuildError> {
        let gid = self.resolve(guild)?;
        self.on_view(&gid, |v, _| {
            let (id, s) = find(v, sound)?;
            Ok((info(id, &s), s.asset))
        })
    }

    /// Deletes a sound by name or id (Manage Guild).
    pub async fn delete_sound(&self, guild: &str, sound: &str) -> Result<SoundInfo, GuildError> {
        let gid = self.resolve(guild)?;
        let (id, s) = self.on_view(&gid, |v, _| find(v, sound))?;
        self.checked_change(&gid, vec![GuildOp::DeleteSound(id)])
            .await?;
        Ok(info(id, &s))
    }
}

impl GuildService {
    /// Encrypts a clip asset into the file store (fresh key, like any shared file) as the asset
    /// of sound `id` in `gid`, and returns its reference for the guild state. Members fetch it
    /// ahead of time ([`GuildService::sync_guild_assets`]).
    pub(crate) async fn store_asset(
        &self,
        gid: &securecomm_crdt::schema::GuildId,
        id: SoundId,
        asset: &[u8],
        duration_ms: u32,
    ) -> Result<SoundAsset, GuildError> {
        let a = self
            .store_guild_asset(
                gid,
                crate::files::db::kind::SOUND,
                &id.0.to_be_bytes(),
                asset,
                ("sound.sclp", SOUND_MIME),
                MAX_SOUND_ASSET_BYTES,
            )
            .await?;
        Ok(SoundAsset {
            root: a.root,
            key: *a.key.expose(),
            size: a.size,
            duration_ms,
            header: a.header.to_array(),
            sha256: a.sha256,
        })
    }

    /// The decoded clip (48 kHz mono) of a library sound whose asset is here, if `root` is one.
    pub fn sound_clip(&self, root: &[u8; 32]) -> Option<Vec<i16>> {
        let bytes = self.asset_bytes(root, crate::files::db::kind::SOUND, MAX_SOUND_ASSET_BYTES)?;
        crate::sound::decode_asset(&bytes).ok()
    }

    /// The asset roots of every library sound (all guilds) that is here, complete.
    pub fn sound_roots_here(&self) -> Vec<[u8; 32]> {
        self.with_engine(|_, db| -> Vec<[u8; 32]> {
            let Ok(mut st) = db.conn().prepare(
                "SELECT DISTINCT g.root FROM guild_files g JOIN files f ON f.root = g.root
                 WHERE g.kind = ?1 AND f.state = ?2",
            ) else {
                return Vec::new();
            };
            st.query_map(
                rusqlite::params![crate::files::db::kind::SOUND, crate::files::state::COMPLETE],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .map(|rows| {
                rows.filter_map(Result::ok)
                    .filter_map(|r| <[u8; 32]>::try_from(r.as_slice()).ok())
                    .collect()
            })
            .unwrap_or_default()
        })
        .unwrap_or_default()
    }
}

/// Media type of a clip asset file.
pub const SOUND_MIME: &str = "application/x-securecomm-clip";

/// The file a sound's asset reference describes, if it is one the fetch protocol can carry.
pub(crate) fn attachment_of(s: &Sound) -> Option<crate::files::wire::Attachment> {
    super::assets::attachment(
        "sound.sclp",
        SOUND_MIME,
        s.asset.size,
        s.asset.sha256,
        s.asset.root,
        &s.asset.header,
        s.asset.key,
    )
}
