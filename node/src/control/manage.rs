//! Guild management on the control API (see [`crate::guild::GuildService`]'s management
//! methods): `channel-details {guild}`, `channel-edit {guild, channel, name?, topic?,
//! slow_mode_secs?, disappearing_secs?}`, `channel-move {guild, channel, up}`, `role-list
//! {guild}`, `role-revoke {guild, user, role}`, `role-delete {guild, role}`, `ban-list
//! {guild}`, `unban {guild, user}`, `server-mute {guild, user, on}`, `invite-list {guild}`, `invite-revoke {guild, invite}`,
//! `guild-settings {guild}`. Results are the typed structs as JSON.

use serde::Serialize;
use serde_json::Value;

use super::{arg, opt_u64};
use crate::guild::{GuildError, GuildService};

fn j<T: Serialize>(r: Result<T, GuildError>) -> Result<Value, String> {
    r.map_err(|e| e.to_string())
        .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
}

fn opt_u32(a: &Value, name: &str) -> Option<u32> {
    a.get(name)
        .and_then(Value::as_u64)
        .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
}

fn id(a: &Value, name: &str) -> Result<u64, String> {
    opt_u64(a, name)?.ok_or_else(|| format!("missing integer argument {name:?}"))
}

/// Answers a management command, or `None` if `cmd` is not one.
pub(super) async fn handle(
    g: &GuildService,
    cmd: &str,
    a: &Value,
) -> Option<Result<Value, String>> {
    let guild = match arg(a, "guild") {
        Ok(x) => x,
        Err(e) => {
            return matches!(
                cmd,
                "channel-details"
                    | "channel-edit"
                    | "channel-move"
                    | "role-list"
                    | "role-revoke"
                    | "role-delete"
                    | "ban-list"
                    | "unban"
                    | "server-mute"
                    | "invite-list"
                    | "invite-revoke"
                    | "guild-settings"
                    | "guild-update"
            )
            .then_some(Err(e));
        }
    };
    Some(match cmd {
        "channel-details" => j(g.channel_details(guild)),
        "channel-edit" => match id(a, "channel") {
            Ok(c) => {
                let edit = crate::guild::service::manage::ChannelEdit {
                    name: a.get("name").and_then(Value::as_str).map(str::to_owned),
                    topic: a.get("topic").and_then(Value::as_str).map(str::to_owned),
                    slow_mode_secs: opt_u32(a, "slow_mode_secs"),
                    disappearing_secs: opt_u32(a, "disappearing_secs"),
                    parent: None,
                };
                j(g.edit_channel(guild, c, edit).await)
            }
            Err(e) => Err(e),
        },
        "channel-move" => match id(a, "channel") {
            Ok(c) => {
                let up = a.get("up").and_then(Value::as_bool).unwrap_or(true);
                j(g.move_channel(guild, c, up).await)
            }
            Err(e) => Err(e),
        },
        "role-list" => j(g.list_roles(guild)),
        "role-revoke" => match (arg(a, "user"), id(a, "role")) {
            (Ok(u), Ok(r)) => j(g.revoke_role(guild, u, r).await),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        "role-delete" => match id(a, "role") {
            Ok(r) => j(g.delete_role(guild, r).await),
            Err(e) => Err(e),
        },
        "ban-list" => j(g.list_bans(guild)),
        "unban" => match arg(a, "user") {
            Ok(u) => j(g.unban(guild, u).await),
            Err(e) => Err(e),
        },
        "server-mute" => match (arg(a, "user"), a.get("on").and_then(Value::as_bool)) {
            (Ok(u), Some(on)) => j(g
                .set_voice_mute(guild, u, on)
                .await
                .map(|()| serde_json::json!({"user": u, "voice_muted": on}))),
            (Err(e), _) => Err(e),
            (_, None) => Err("missing boolean argument \"on\"".into()),
        },
        "invite-list" => j(g.list_invites(guild).await),
        "invite-revoke" => match arg(a, "invite") {
            Ok(i) => j(g.revoke_invite(guild, i).await),
            Err(e) => Err(e),
        },
        "guild-settings" => j(g.guild_overview(guild)),
        "guild-update" => match opt_u64(a, "max_upload") {
            Ok(max_upload) => {
                let edit = crate::guild::service::manage::SettingsEdit {
                    name: a.get("name").and_then(Value::as_str).map(str::to_owned),
                    history_visible_to_new_members: a
                        .get("history_visible")
                        .and_then(Value::as_bool),
                    max_upload_bytes: max_upload,
                };
                j(g.update_settings(guild, edit).await)
            }
            Err(e) => Err(e),
        },
        _ => return None,
    })
}
