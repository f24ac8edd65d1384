//! Guild custom emoji in the app: each guild's list (from the node, with each image once its
//! node has fetched it ahead of time), their textures, and the upload form of the guild
//! settings window.
//!
//! Images are decoded on the UI thread before the timeline is drawn
//! ([`AppState::prepare_emoji`]), at most [`DECODES_PER_FRAME`] a frame, each a PNG of at most
//! 128 x 128 pixels checked by the node's decoder; a reaction `:name:` whose emoji has a
//! texture shows the image, any other shows its text.

use std::collections::HashMap;
use std::sync::Arc;

use super::AppState;
use crate::backend::{Command, ManageCmd};

/// Textures kept; beyond it the cache is cleared and the current guild's decode again.
pub const MAX_TEXTURES: usize = 512;
/// Images decoded per frame at most.
pub const DECODES_PER_FRAME: usize = 8;
/// Longest image file the upload form sends (the node refuses larger ones too).
pub const MAX_UPLOAD_SOURCE: u64 = securecomm_node::files::emoji::MAX_SOURCE_BYTES as u64;

/// One custom emoji of a guild.
#[derive(Clone, PartialEq, Eq)]
pub struct CustomEmoji {
    /// Its id.
    pub id: u64,
    /// Its name (written `:name:`).
    pub name: String,
    /// The image's content address (hex).
    pub root: String,
    /// The image (PNG) once it is here.
    pub png: Option<Arc<Vec<u8>>>,
}

impl std::fmt::Debug for CustomEmoji {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomEmoji")
            .field("name", &self.name)
            .field("here", &self.png.is_some())
            .finish_non_exhaustive()
    }
}

/// The upload form in the guild settings window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadForm {
    /// Path of the image file.
    pub path: String,
    /// The name to give it.
    pub name: String,
}

/// Custom emoji of every guild, and their textures.
#[derive(Default)]
pub struct EmojiState {
    /// Per guild (hex id), by name.
    pub by_guild: HashMap<String, Vec<CustomEmoji>>,
    /// Decoded images by root: `None` when it did not decode.
    textures: HashMap<String, Option<egui::TextureHandle>>,
    /// Images decoded so far.
    pub decoded: u64,
    /// The upload form.
    pub upload: UploadForm,
}

impl std::fmt::Debug for EmojiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmojiState")
            .field("guilds", &self.by_guild.len())
            .field("textures", &self.textures.len())
            .field("decoded", &self.decoded)
            .finish()
    }
}

impl EmojiState {
    /// The texture of `:name:` in `guild`, if its image is here and decoded.
    pub fn texture(&self, guild: &str, name: &str) -> Option<&egui::TextureHandle> {
        let e = self.by_guild.get(guild)?.iter().find(|e| e.name == name)?;
        self.textures.get(&e.root)?.as_ref()
    }
}

/// The emoji name of a reaction written `:name:`, if it is.
pub fn custom_name(reaction: &str) -> Option<&str> {
    securecomm_node::guild::service::emoji::custom_reaction_name(reaction)
}

impl AppState {
    /// The node's list of a guild's emoji replaced what we had.
    pub fn on_emojis(&mut self, guild: String, list: Vec<CustomEmoji>) {
        // A changed image (same name, new root) decodes again: drop textures no guild uses.
        self.emoji.by_guild.insert(guild, list);
        let used: std::collections::HashSet<&String> = self
            .emoji
            .by_guild
            .values()
            .flatten()
            .map(|e| &e.root)
            .collect();
        self.emoji.textures.retain(|root, _| used.contains(root));
    }

    /// The current guild's emoji.
    pub fn current_emojis(&self) -> &[CustomEmoji] {
        self.guild
            .as_ref()
            .and_then(|g| self.emoji.by_guild.get(g))
            .map_or(&[], Vec::as_slice)
    }

    /// Decodes the current guild's emoji images not decoded yet (a few per frame); returns
    /// whether some wait for the next frame.
    pub fn prepare_emoji(&mut self, ctx: &egui::Context) -> bool {
        let Some(guild) = self.guild.clone() else {
            return false;
        };
        let todo: Vec<(String, Arc<Vec<u8>>)> = self
            .emoji
            .by_guild
            .get(&guild)
            .into_iter()
            .flatten()
            .filter(|e| !self.emoji.textures.contains_key(&e.root))
            .filter_map(|e| Some((e.root.clone(), e.png.clone()?)))
            .collect();
        if self.emoji.textures.len() + todo.len() > MAX_TEXTURES {
            self.emoji.textures.clear();
        }
        let more = todo.len() > DECODES_PER_FRAME;
        for (root, png) in todo.into_iter().take(DECODES_PER_FRAME) {
            let texture =
                securecomm_node::files::emoji::decode(&png)
                    .ok()
                    .and_then(|(w, h, rgba)| {
                        let size = [usize::try_from(w).ok()?, usize::try_from(h).ok()?];
                        let image = egui::ColorImage::from_rgba_unmultiplied(size, &rgba);
                        Some(ctx.load_texture(
                            format!("emoji {root}"),
                            image,
                            egui::TextureOptions::LINEAR,
                        ))
                    });
            self.emoji.decoded += 1;
            self.emoji.textures.insert(root, texture);
        }
        more
    }

    /// "Upload" in the emoji section of the guild settings.
    pub fn on_upload_emoji(&mut self) -> Vec<Command> {
        let Some(guild) = self.guild.clone() else {
            return Vec::new();
        };
        let name = self.emoji.upload.name.trim().trim_matches(':').to_owned();
        if let Err(e) = securecomm_crdt::schema::check_emoji_name(&name) {
            self.error(e);
            return Vec::new();
        }
        let path = std::path::PathBuf::from(self.emoji.upload.path.trim());
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() <= MAX_UPLOAD_SOURCE => {}
            Ok(m) if m.is_file() => {
                self.error(format!(
                    "{} is too large: an emoji is made from at most 8 MiB",
                    path.display()
                ));
                return Vec::new();
            }
            Ok(_) => {
                self.error(format!("{} is not a file", path.display()));
                return Vec::new();
            }
            Err(e) => {
                self.error(format!("{}: {e}", path.display()));
                return Vec::new();
            }
        }
        self.emoji.upload = UploadForm::default();
        vec![Command::Manage(ManageCmd::UploadEmoji {
            guild,
            path,
            name,
        })]
    }

    /// "Delete" next to an emoji in the guild settings.
    pub fn on_delete_emoji(&mut self, id: u64) -> Vec<Command> {
        let Some(guild) = self.guild.clone() else {
            return Vec::new();
        };
        vec![Command::Manage(ManageCmd::DeleteEmoji { guild, id })]
    }
}
