//! Messaging commands on the control API (see [`crate::guild::service::messages`]):
//! `post {guild, channel, text, reply_to?, thread?, ttl_secs?}`, `react {guild, channel, msg,
//! emoji, remove?}`, `edit {guild, channel, msg, text}`, `delete {guild, channel, msg}`, `pin
//! {guild, channel, msg, unpin?}`, `pins {guild, channel}`, `edits {guild, channel, msg}`,
//! `thread-create {guild, channel, name, from?}`, `thread-update {guild, channel, thread,
//! name?, archived?}`, `thread-list {guild, channel}`, `thread-history {guild, channel, thread,
//! limit?}`, `mentions {guild}`, `mark-read {guild, channel}`, `typing {guild, channel}`;
//! files: `post {.., files: [PATH..]}`, `files-fetch {file}`, `files-status {file?}`,
//! `files-save {file, path}`, `files-list {guild, channel?}`.

use serde_json::Value;

use super::{arg, opt_u64};
use crate::guild::GuildService;
use crate::guild::service::messages::PostOptions;

fn s(a: &Value, name: &str) -> Option<String> {
    a.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn flag(a: &Value, name: &str) -> bool {
    a.get(name).and_then(Value::as_bool).unwrap_or(false)
}

/// Answers a messaging command, or `None` if `cmd` is not one.
pub(super) async fn handle(
    g: &GuildService,
    cmd: &str,
    a: &Value,
) -> Option<Result<Value, String>> {
    const CMDS: [&str; 13] = [
        "typing",
        "post",
        "react",
        "edit",
        "delete",
        "pin",
        "pins",
        "edits",
        "thread-create",
        "thread-update",
        "thread-list",
        "thread-history",
        "mark-read",
    ];
    match cmd {
        "files-fetch" => {
            return Some(match arg(a, "file") {
                Ok(f) => g.fetch_file(f).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            });
        }
        "files-status" => {
            return Some(
                g.file_status(s(a, "file").as_deref())
                    .map_err(|e| e.to_string()),
            );
        }
        "files-save" => {
            return Some(match (arg(a, "file"), arg(a, "path")) {
                (Ok(f), Ok(p)) => g
                    .save_file(f, std::path::Path::new(p))
                    .await
                    .map_err(|e| e.to_string()),
                (Err(e), _) | (_, Err(e)) => Err(e),
            });
        }
        "files-list" => {
            return Some(match arg(a, "guild") {
                Ok(guild) => g
                    .list_files(guild, s(a, "channel").as_deref())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            });
        }
        _ => {}
    }
    if cmd == "mentions" {
        return Some(match arg(a, "guild") {
            Ok(guild) => g.mentions(guild).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        });
    }
    if !CMDS.contains(&cmd) {
        return None;
    }
    let (guild, channel) = match (arg(a, "guild"), arg(a, "channel")) {
        (Ok(g), Ok(c)) => (g, c),
        (Err(e), _) | (_, Err(e)) => return Some(Err(e)),
    };
    let msg = arg(a, "msg");
    let r = match cmd {
        "post" => match (arg(a, "text"), opt_u64(a, "ttl_secs")) {
            (Ok(text), Ok(ttl)) => {
                let opts = PostOptions {
                    reply_to: s(a, "reply_to"),
                    thread: s(a, "thread"),
                    ttl_secs: ttl.map(|t| u32::try_from(t).unwrap_or(u32::MAX)),
                    files: a
                        .get("files")
                        .and_then(Value::as_array)
                        .map(|v| {
                            v.iter()
                                .filter_map(Value::as_str)
                                .map(std::path::PathBuf::from)
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                g.post(guild, channel, text, &opts).await
            }
            (Err(e), _) | (_, Err(e)) => return Some(Err(e)),
        },
        "react" => match (msg, arg(a, "emoji")) {
            (Ok(m), Ok(e)) => g.react(guild, channel, m, e, !flag(a, "remove")).await,
            (Err(e), _) | (_, Err(e)) => return Some(Err(e)),
        },
        "edit" => match (msg, arg(a, "text")) {
            (Ok(m), Ok(t)) => g.edit(guild, channel, m, t).await,
            (Err(e), _) | (_, Err(e)) => return Some(Err(e)),
        },
        "delete" => match msg {
            Ok(m) => g.delete(guild, channel, m).await,
            Err(e) => return Some(Err(e)),
        },
        "pin" => match msg {
            Ok(m) => g.pin(guild, channel, m, !flag(a, "unpin")).await,
            Err(e) => return Some(Err(e)),
        },
        "pins" => g.pins(guild, channel),
        "edits" => match msg {
            Ok(m) => g.edits(guild, channel, m),
            Err(e) => return Some(Err(e)),
        },
        "thread-create" => match arg(a, "name") {
            Ok(n) => {
                g.thread_create(guild, channel, n, s(a, "from").as_deref())
                    .await
            }
            Err(e) => return Some(Err(e)),
        },
        "thread-update" => match arg(a, "thread") {
            Ok(t) => {
                let archived = a.get("archived").and_then(Value::as_bool);
                g.thread_update(guild, channel, t, s(a, "name").as_deref(), archived)
                    .await
            }
            Err(e) => return Some(Err(e)),
        },
        "thread-list" => g.threads(guild, channel),
        "thread-history" => match (arg(a, "thread"), opt_u64(a, "limit")) {
            (Ok(t), Ok(limit)) => {
                let limit = usize::try_from(limit.unwrap_or(50)).unwrap_or(usize::MAX);
                g.history_in(guild, channel, Some(t), None, limit)
            }
            (Err(e), _) | (_, Err(e)) => return Some(Err(e)),
        },
        "mark-read" => g.mark_read(guild, channel),
        "typing" => g.typing(guild, channel).await,
        _ => return None,
    };
    Some(r.map_err(|e| e.to_string()))
}
