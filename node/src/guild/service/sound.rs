//! The guild's soundboard library on [`GuildService`]: upload, list, find and delete sounds.
//!
//! Uploading imports the file ([`crate::sound::import`]: decoded, limited to 5.2 s and
//! 512 KiB, normalized, encoded as an Opus clip asset), hands the asset to [`store_asset`] for
//! encryption and distribution, and records the sound (name, emoji, volume and the asset's
//! reference) with a `PutSound` op, which the crdt accepts only from members with Manage Guild
//! and only while the library holds fewer than 48 sounds. Names are unique within a guild here
//! (so `sound play GUILD NAME` means one sound); the crdt itself does not require it.

use rand_core::{OsRng, RngCore};
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::schema::{
    MAX_SOUND_EMOJI, MAX_SOUND_NAME_CHARS, MAX_SOUND_VOLUME, Sound, SoundAsset, SoundId,
};
use securecomm_crdt::view::GuildView;
use serde::Serialize;
use sha2::Digest;

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

/// Stores a clip asset and returns its reference in the guild state.
///
/// TODO(files): this is where the encrypted file store plugs in: encrypt `asset` under a fresh
/// random file key with the chunked cipher (`securecomm_noise`'s file encryption), store and
/// announce the chunks so members fetch them ahead of time, and return the real content
/// address (`root`) and ciphertext size. Until then the key is fresh and random but unused,
/// the root is a labelled SHA-256 of the plaintext asset, and the size is the asset's own.
pub fn store_asset(asset: &[u8], duration_ms: u32) -> SoundAsset {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let mut h = sha2::Sha256::new();
    h.update(b"SecureComm/sound-asset placeholder v1");
    h.update(asset);
    SoundAsset {
        root: h.finalize().into(),
        key,
        size: asset.len() as u64,
        duration_ms,
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
        let reference = store_asset(&asset, clip.duration_ms().max(1));
        let id = SoundId(OsRng.next_u64());
        let s = Sound {
            name: name.to_owned(),
            emoji: emoji.map(str::to_owned),
            volume,
            asset: reference,
        };
        self.checked_change(&gid, vec![GuildOp::PutSound(id, s.clone())])
            .await?;
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
