//! Guild custom emoji on the control API: `emoji-upload {guild, file, name}` (`file` is a path
//! the node reads: PNG, JPEG, GIF or WebP, made into a PNG of at most 128 x 128 pixels),
//! `emoji-list {guild}`, `emoji-delete {guild, emoji}` and `emoji-save {guild, emoji, out}`
//! (writes the image once it is here; never overwrites). EMOJI is a name, `:name:` or an id.
//! React with one as `:name:`.

use serde_json::{Value, json};

use super::{Context, arg};
use crate::files::emoji::MAX_SOURCE_BYTES;

/// Answers an emoji command, or `None` if `cmd` is not one.
pub(super) async fn handle(ctx: &Context, cmd: &str, a: &Value) -> Option<Result<Value, String>> {
    if !matches!(
        cmd,
        "emoji-upload" | "emoji-list" | "emoji-delete" | "emoji-save"
    ) {
        return None;
    }
    Some(answer(ctx, cmd, a).await)
}

async fn answer(ctx: &Context, cmd: &str, a: &Value) -> Result<Value, String> {
    let guilds = ctx.guilds.as_ref().ok_or("this node runs no guild layer")?;
    let guild = arg(a, "guild")?;
    match cmd {
        "emoji-upload" => {
            let path = std::path::PathBuf::from(arg(a, "file")?);
            // The size is checked before the file is read.
            let len = tokio::fs::metadata(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len();
            if len > MAX_SOURCE_BYTES as u64 {
                return Err(format!(
                    "file too large: an emoji is made from at most {MAX_SOURCE_BYTES} bytes, got {len}"
                ));
            }
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let info = guilds
                .upload_emoji(guild, &bytes, arg(a, "name")?)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::to_value(info).map_err(|e| e.to_string())
        }
        "emoji-list" => guilds
            .list_emojis(guild)
            .map_err(|e| e.to_string())
            .and_then(|l| serde_json::to_value(l).map_err(|e| e.to_string())),
        "emoji-delete" => guilds
            .delete_emoji(guild, arg(a, "emoji")?)
            .await
            .map_err(|e| e.to_string())
            .and_then(|i| serde_json::to_value(i).map_err(|e| e.to_string())),
        "emoji-save" => {
            let png = guilds
                .emoji_image(guild, arg(a, "emoji")?)
                .map_err(|e| e.to_string())?;
            let out = std::path::PathBuf::from(arg(a, "out")?);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&out)
                .map_err(|e| format!("{}: {e}", out.display()))?;
            std::io::Write::write_all(&mut f, &png)
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("{}: {e}", out.display()))?;
            Ok(json!({"path": out.display().to_string(), "bytes": png.len()}))
        }
        other => Err(format!("unknown command {other:?}")),
    }
}
