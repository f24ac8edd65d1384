//! Guild custom emoji on [`GuildService`]: upload, list, delete, and the image of one.
//!
//! Uploading turns the file into the canonical emoji image ([`crate::files::emoji`]: a PNG of
//! at most 128 x 128 pixels, re-encoded from pixels), encrypts it into the file store like any
//! shared file ([`GuildService::store_guild_asset`]) and records name and reference with a
//! `PutEmoji` op, which the crdt accepts only from members with Manage Guild, under a name no
//! other emoji of the guild has, while the guild holds fewer than 50. Every member fetches the
//! images ahead of time ([`GuildService::sync_guild_assets`]), so a reaction `:name:` shows its
//! image without a download. Nothing about an emoji (name or image) ever leaves the encrypted
//! guild document and the encrypted file transfer.

use rand_core::{OsRng, RngCore};
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::schema::{
    Emoji, EmojiId, EmojiImage, MAX_EMOJI_IMAGE_BYTES, MAX_EMOJIS, check_emoji_name,
};
use securecomm_crdt::view::GuildView;
use serde::Serialize;

use super::GuildService;
use crate::files::db::kind;
use crate::files::emoji::{self as image, EMOJI_MIME};
use crate::guild::GuildError;

/// A custom emoji as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmojiInfo {
    /// Emoji id.
    pub id: u64,
    /// Name (written `:name:`).
    pub name: String,
    /// Size of the image, bytes.
    pub size: u64,
    /// The image's content address (hex).
    pub root: String,
    /// Whether the image is here (fetched ahead of time; false while it is on its way).
    pub here: bool,
}

fn info(id: EmojiId, e: &Emoji, here: bool) -> EmojiInfo {
    EmojiInfo {
        id: id.0,
        name: e.name.clone(),
        size: e.image.size,
        root: hex::encode(e.image.root),
        here,
    }
}

/// The emoji named `name` (with or without colons) or with id `name`.
fn find(v: &GuildView, name: &str) -> Result<(EmojiId, Emoji), GuildError> {
    let name = name.trim().trim_matches(':');
    if let Ok(n) = name.parse::<u64>()
        && let Some(e) = v.emojis().get(&EmojiId(n))
    {
        return Ok((EmojiId(n), e.clone()));
    }
    v.emoji_named(name)
        .map(|(id, e)| (id, e.clone()))
        .ok_or_else(|| GuildError::Invalid(format!("no emoji named :{name}: in this guild")))
}

/// The custom emoji name a reaction `:name:` refers to, if it is written that way.
pub fn custom_reaction_name(reaction: &str) -> Option<&str> {
    let inner = reaction.strip_prefix(':')?.strip_suffix(':')?;
    check_emoji_name(inner).ok().map(|()| inner)
}

/// The file an emoji's image reference describes, if it is one the fetch protocol can carry.
pub(crate) fn attachment_of(e: &Emoji) -> Option<crate::files::wire::Attachment> {
    super::assets::attachment(
        "emoji.png",
        EMOJI_MIME,
        e.image.size,
        e.image.sha256,
        e.image.root,
        &e.image.header,
        e.image.key,
    )
}

impl GuildService {
    /// Makes an emoji from an image file and adds it to the guild under `name` (Manage Guild).
    pub async fn upload_emoji(
        &self,
        guild: &str,
        file: &[u8],
        name: &str,
    ) -> Result<EmojiInfo, GuildError> {
        let gid = self.resolve(guild)?;
        let name = name.trim().trim_matches(':');
        check_emoji_name(name).map_err(|e| GuildError::Invalid(e.into()))?;
        self.on_view(&gid, |v, _| {
            if v.emoji_named(name).is_some() {
                return Err(GuildError::Invalid(format!(
                    "an emoji named :{name}: exists already"
                )));
            }
            if v.emojis().len() >= MAX_EMOJIS {
                return Err(GuildError::Invalid(format!(
                    "this guild has {MAX_EMOJIS} emoji, the most it may hold; delete one first"
                )));
            }
            Ok(())
        })?;
        let src = file.to_vec();
        let png = tokio::task::spawn_blocking(move || image::normalize(&src))
            .await
            .map_err(|_| GuildError::Invalid("converting the image stopped unexpectedly".into()))?
            .map_err(|e| GuildError::Invalid(e.to_string()))?;
        let id = EmojiId(OsRng.next_u64());
        let a = self
            .store_guild_asset(
                &gid,
                kind::EMOJI,
                &id.0.to_be_bytes(),
                &png,
                ("emoji.png", EMOJI_MIME),
                MAX_EMOJI_IMAGE_BYTES,
            )
            .await?;
        let e = Emoji {
            name: name.to_owned(),
            image: EmojiImage {
                root: a.root,
                key: *a.key.expose(),
                size: a.size,
                header: a.header.to_array(),
                sha256: a.sha256,
            },
        };
        if let Err(err) = self
            .checked_change(&gid, vec![GuildOp::PutEmoji(id, e.clone())])
            .await
        {
            // Not in the guild: its stored image goes at the next collection.
            self.retain_guild_assets(&gid, kind::EMOJI);
            return Err(err);
        }
        Ok(info(id, &e, true))
    }

    /// The guild's custom emoji, by name.
    pub fn list_emojis(&self, guild: &str) -> Result<Vec<EmojiInfo>, GuildError> {
        let gid = self.resolve(guild)?;
        let emojis: Vec<(EmojiId, Emoji)> = self.on_view(&gid, |v, _| {
            Ok(v.emojis().iter().map(|(id, e)| (*id, e.clone())).collect())
        })?;
        let mut out: Vec<EmojiInfo> = emojis
            .iter()
            .map(|(id, e)| info(*id, e, self.emoji_here(&e.image.root)))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes a custom emoji by name or id (Manage Guild). Reactions that used it stay, shown
    /// as their `:name:` text.
    pub async fn delete_emoji(&self, guild: &str, emoji: &str) -> Result<EmojiInfo, GuildError> {
        let gid = self.resolve(guild)?;
        let (id, e) = self.on_view(&gid, |v, _| find(v, emoji))?;
        self.checked_change(&gid, vec![GuildOp::DeleteEmoji(id)])
            .await?;
        Ok(info(id, &e, false))
    }

    /// The canonical PNG of the guild's emoji `emoji` (name, `:name:` or id), once its image is
    /// here; checked to decode as an emoji image.
    pub fn emoji_image(&self, guild: &str, emoji: &str) -> Result<Vec<u8>, GuildError> {
        let gid = self.resolve(guild)?;
        let (_, e) = self.on_view(&gid, |v, _| find(v, emoji))?;
        let png = self
            .asset_bytes(&e.image.root, kind::EMOJI, MAX_EMOJI_IMAGE_BYTES)
            .ok_or_else(|| {
                GuildError::Invalid(format!(
                    "the image of :{}: is not here yet (members fetch it from each other)",
                    e.name
                ))
            })?;
        image::decode(&png).map_err(|err| GuildError::Invalid(err.to_string()))?;
        Ok(png)
    }

    /// Checks a reaction before sending it: a `:name:` reaction must name one of the guild's
    /// emoji (a Unicode emoji passes as it is).
    pub(super) fn check_reaction(
        &self,
        gid: &securecomm_crdt::schema::GuildId,
        reaction: &str,
    ) -> Result<(), GuildError> {
        let Some(name) = custom_reaction_name(reaction) else {
            return Ok(());
        };
        self.on_view(gid, |v, _| {
            v.emoji_named(name).map(|_| ()).ok_or_else(|| {
                GuildError::Invalid(format!("no emoji named :{name}: in this guild"))
            })
        })
    }

    /// The guilds (hex ids) with an emoji whose image is `root` (hex).
    pub fn guilds_with_emoji_image(&self, root: &str) -> Vec<String> {
        self.with_engine(|e, _| {
            let mut out = Vec::new();
            for (gid, g) in &mut e.guilds {
                if g.crdt
                    .view()
                    .emojis()
                    .values()
                    .any(|e| hex::encode(e.image.root) == root)
                {
                    out.push(hex::encode(gid.0));
                }
            }
            out
        })
        .unwrap_or_default()
    }

    fn emoji_here(&self, root: &[u8; 32]) -> bool {
        self.with_engine(|_, db| {
            crate::files::db::load(db.conn(), root)
                .ok()
                .flatten()
                .is_some_and(|r| r.state == crate::files::state::COMPLETE)
        })
        .unwrap_or(false)
    }
}
