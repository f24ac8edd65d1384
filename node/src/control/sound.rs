//! The soundboard on the control API: `sound-upload {guild, file, name, emoji?, volume?}`
//! (`file` is a path the node reads; the clip is also put in this node's clip cache),
//! `sound-list {guild}`, `sound-play {guild, sound}` (in the current call), `sound-delete
//! {guild, sound}` and `sound-volume {percent}` (every clip this node hears, 0 to 200).
//! SOUND is a name or an id.

use serde_json::{Value, json};

use super::{Context, arg, opt_u64};
use crate::sound::{MAX_INPUT_BYTES, decode_asset};

/// Answers a soundboard command, or `None` if `cmd` is not one.
pub(super) async fn handle(ctx: &Context, cmd: &str, a: &Value) -> Option<Result<Value, String>> {
    if !matches!(
        cmd,
        "sound-upload" | "sound-list" | "sound-play" | "sound-delete" | "sound-volume"
    ) {
        return None;
    }
    Some(answer(ctx, cmd, a).await)
}

async fn answer(ctx: &Context, cmd: &str, a: &Value) -> Result<Value, String> {
    if cmd == "sound-volume" {
        let voice = ctx.voice.as_ref().ok_or("this node runs no voice layer")?;
        let p = opt_u64(a, "percent")?.ok_or("missing argument: percent")?;
        return voice.set_soundboard_volume(p.min(200) as u32);
    }
    let guilds = ctx.guilds.as_ref().ok_or("this node runs no guild layer")?;
    let guild = arg(a, "guild")?;
    match cmd {
        "sound-upload" => {
            let path = std::path::PathBuf::from(arg(a, "file")?);
            // The size is checked before the file is read: a clip's source is small.
            let len = tokio::fs::metadata(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len();
            if len > MAX_INPUT_BYTES as u64 {
                return Err(format!(
                    "file too large: at most {MAX_INPUT_BYTES} bytes, got {len}"
                ));
            }
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let ext = path.extension().and_then(|e| e.to_str());
            let name = arg(a, "name")?;
            let emoji = a.get("emoji").and_then(Value::as_str);
            let volume = opt_u64(a, "volume")?.unwrap_or(100).min(255) as u8;
            let up = guilds
                .upload_sound(guild, &bytes, ext, name, emoji, volume)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(v) = &ctx.voice {
                let pcm = decode_asset(&up.asset).map_err(|e| e.to_string())?;
                v.cache_clip(up.root, pcm.into());
            }
            serde_json::to_value(&up).map_err(|e| e.to_string())
        }
        "sound-list" => guilds
            .list_sounds(guild)
            .map_err(|e| e.to_string())
            .and_then(|l| serde_json::to_value(l).map_err(|e| e.to_string())),
        "sound-play" => {
            let voice = ctx.voice.as_ref().ok_or("this node runs no voice layer")?;
            let (info, asset) = guilds
                .find_sound(guild, arg(a, "sound")?)
                .map_err(|e| e.to_string())?;
            let mut v = voice.play_clip(asset.root, info.volume)?;
            v["sound"] = json!(info.name);
            Ok(v)
        }
        "sound-delete" => {
            let info = guilds
                .delete_sound(guild, arg(a, "sound")?)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(v) = &ctx.voice
                && let Ok(root) = hex::decode(&info.root)
                && let Ok(root) = <[u8; 32]>::try_from(root.as_slice())
            {
                v.uncache_clip(&root);
            }
            serde_json::to_value(info).map_err(|e| e.to_string())
        }
        other => Err(format!("unknown command {other:?}")),
    }
}
