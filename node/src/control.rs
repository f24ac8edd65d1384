//! The local control API: JSON lines over a Unix socket in the data directory.
//!
//! Scripts, bots, the CLI and netsim drive a running node through it. The socket file is created
//! with mode 0600 inside the user's data directory, so only the user who runs the node can talk
//! to it. Each line is one request; each answer is one line:
//!
//! ```text
//! -> {"id": 1, "cmd": "peers"}
//! <- {"id": 1, "ok": true, "result": [{"peer": "12D3Koo...", "path": "direct", "addrs": [...]}]}
//! -> {"id": 2, "cmd": "dial", "args": {"addr": "/ip4/127.0.0.1/tcp/4001/p2p/12D3Koo..."}}
//! <- {"id": 2, "ok": false, "error": "cannot dial ..."}
//! -> {"id": 3, "cmd": "send", "args": {"guild": "Friends", "channel": "general", "text": "hi"}}
//! <- {"id": 3, "ok": true, "result": {"id": "9f2c...", "sent_at": 1718000000000, ...}}
//! -> {"id": 4, "cmd": "events"}
//! <- {"event": "peer-connected", "peer": "12D3Koo...", "path": "relayed"}     (one per line, until closed)
//! ```
//!
//! Guild commands (when the node runs its guild layer; arguments by name, GUILD and CHANNEL by
//! name or id): `guild-create {name}`, `guild-list`, `guild-join {code}`, `invite-create {guild,
//! expires?, uses?}`, `channel-create {guild, name, voice?}`, `channel-list {guild}`, `send
//! {guild, channel, text}`, `history {guild, channel, limit?}`, `members {guild}`, `role-create
//! {guild, name, perms}`, `role-grant {guild, user, role}`, `kick {guild, user}`, `ban {guild,
//! user, reason?}`, `find-user {user}`, `search {text?, guild?, channel?, author?, after?, before?,
//! has_file?, order?, limit?, offset?}` (local full-text search, see `store::search`), and the management commands of `control/manage.rs`
//! (channel details and moves, role list/revoke/delete, bans, unban, invite list/revoke, guild
//! settings), and the messaging commands of `control/messages.rs` (replies, threads, reactions,
//! edits, deletes, pins, timers, mentions, read state), and the soundboard commands of
//! `control/sound.rs` (upload, list, play, delete, volume), and the custom emoji commands of
//! `control/emoji.rs` (upload, list, delete, save). `events` adds `{"event": "message",
//! ...}` for every stored guild message or operation (`op` set), `{"event": "mention", ...}`
//! when one mentions this member, `{"event": "erased", ...}` when a message is deleted or its
//! timer runs out, and `{"event": "guild-changed", "guild": ...}` after log deliveries.
//!
//! Bounds: a request line is at most [`MAX_LINE`] bytes, at most [`MAX_CLIENTS`] connections are
//! served at once, and a slow `events` reader loses old events rather than growing a queue.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::guild::{GuildEvent, GuildService};
use crate::voice::call::Device;
use crate::voice::process::ProcessConfig;
use crate::voice::service::{JoinOptions, VoiceService};

mod emoji;
mod manage;
mod messages;
mod sound;
use crate::net::{Client, Event};

/// Longest request line.
pub const MAX_LINE: usize = 1 << 20;
/// Most control connections served at once.
pub const MAX_CLIENTS: usize = 16;
/// The socket's file name inside the data directory.
pub const SOCKET_NAME: &str = "control.sock";

/// A request.
#[derive(Debug, Deserialize, Serialize)]
pub struct Request {
    /// Echoed in the answer.
    #[serde(default)]
    pub id: u64,
    /// The command.
    pub cmd: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Value,
}

/// What a command handler needs.
#[derive(Debug, Clone)]
pub struct Context {
    /// The network.
    pub net: Client,
    /// Public facts about this node, returned by `whoami`.
    pub whoami: Value,
    /// The guild layer, when the node runs one.
    pub guilds: Option<GuildService>,
    /// The voice layer, when the node runs one.
    pub voice: Option<VoiceService>,
}

/// The socket path for a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Serves the control socket until the node shuts down.
pub async fn serve(path: PathBuf, ctx: Context) -> std::io::Result<()> {
    // A stale socket from a crashed run would make bind fail; only remove it if nobody answers.
    if path.exists() && UnixStream::connect(&path).await.is_err() {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let (stream, _) = listener.accept().await?;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let mut s = stream;
            let _ = s
                .write_all(b"{\"ok\":false,\"error\":\"too many control connections\"}\n")
                .await;
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, ctx).await {
                tracing::debug!(error = %e, "control connection ended");
            }
            drop(permit);
        });
    }
}

async fn connection(stream: UnixStream, ctx: Context) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_LINE {
            write
                .write_all(b"{\"ok\":false,\"error\":\"request line too long\"}\n")
                .await?;
            return Ok(());
        }
        let answer = match serde_json::from_slice::<Request>(&line) {
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
            Ok(req) if req.cmd == "events" => {
                return stream_events(&ctx, &mut write).await;
            }
            Ok(req) => {
                let id = req.id;
                match handle(&ctx, req).await {
                    Ok(result) => json!({"id": id, "ok": true, "result": result}),
                    Err(error) => json!({"id": id, "ok": false, "error": error}),
                }
            }
        };
        let mut out = serde_json::to_vec(&answer).unwrap_or_default();
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

async fn stream_events(
    ctx: &Context,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    let mut events = ctx.net.events();
    let mut guild_events = ctx.guilds.as_ref().map(GuildService::events);
    loop {
        let v = tokio::select! {
            e = events.next() => match e {
                Some(e) => event_json(&e),
                None => return Ok(()),
            },
            e = async {
                match guild_events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match e {
                Ok(e) => guild_event_json(&e),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    json!({"event": "lagged", "missed": n})
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    guild_events = None;
                    Value::Null
                }
            },
        };
        if v.is_null() {
            continue;
        }
        let mut out = serde_json::to_vec(&v).unwrap_or_default();
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

/// The JSON form of a guild event.
pub fn guild_event_json(e: &GuildEvent) -> Value {
    match e {
        GuildEvent::Message(m) => {
            let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("event".into(), json!("message"));
            }
            v
        }
        GuildEvent::Changed { guild } => json!({"event": "guild-changed", "guild": guild}),
        GuildEvent::Dm(m) => {
            let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("event".into(), json!("dm"));
            }
            v
        }
        GuildEvent::Mention(m) => json!({
            "event": "mention",
            "guild": m.guild,
            "channel": m.channel,
            "id": m.id,
            "sender": m.sender,
            "nickname": m.nickname,
            "thread": m.thread,
        }),
        GuildEvent::Typing {
            guild,
            channel,
            user,
            nickname,
        } => json!({"event": "typing", "guild": guild, "channel": channel, "user": user,
                    "nickname": nickname}),
        GuildEvent::Erased { guild, channel, id } => {
            json!({"event": "erased", "guild": guild, "channel": channel, "id": id})
        }
        GuildEvent::FileProgress(p) => {
            let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("event".into(), json!("file-progress"));
            }
            v
        }
        GuildEvent::FileDone {
            root,
            name,
            ok,
            error,
            rejected,
        } => json!({"event": "file-done", "root": root, "name": name, "ok": ok,
                    "error": error, "rejected": rejected}),
    }
}

/// The JSON form of an event, or null for events scripts do not see (raw gossip and requests,
/// which the node itself consumes).
pub fn event_json(e: &Event) -> Value {
    match e {
        Event::Listening(a) => json!({"event": "listening", "addr": a.to_string()}),
        Event::RelayReserved(p) => json!({"event": "relay-reserved", "relay": p.to_string()}),
        Event::RelayLost(p) => json!({"event": "relay-lost", "relay": p.to_string()}),
        Event::RelayDiscovered(p) => json!({"event": "relay-discovered", "relay": p.to_string()}),
        Event::PeerConnected(p, path) => {
            json!({"event": "peer-connected", "peer": p.to_string(), "path": path})
        }
        Event::PeerDisconnected(p) => json!({"event": "peer-disconnected", "peer": p.to_string()}),
        Event::ConnectionLost(p) => json!({"event": "connection-lost", "peer": p.to_string()}),
        Event::ConnectionAdded(p) => json!({"event": "connection-added", "peer": p.to_string()}),
        Event::HolePunched(p) => json!({"event": "hole-punched", "peer": p.to_string()}),
        Event::Lagged(n) => json!({"event": "lagged", "missed": n}),
        Event::Gossip { .. }
        | Event::DirectRequest { .. }
        | Event::Identified { .. }
        | Event::Subscribed { .. } => Value::Null,
    }
}

fn arg<'a>(args: &'a Value, name: &str) -> Result<&'a str, String> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string argument {name:?}"))
}

fn opt_u64(args: &Value, name: &str) -> Result<Option<u64>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("argument {name:?} must be a non-negative integer")),
    }
}

fn opt_str(args: &Value, name: &str) -> Result<Option<String>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("argument {name:?} must be a string")),
    }
}

/// A time argument: ms since the Unix epoch, or a string `store::search::parse_time_ms` reads
/// (YYYY-MM-DD or RFC 3339).
fn opt_time(args: &Value, name: &str) -> Result<Option<u64>, String> {
    match args.get(name) {
        Some(Value::String(s)) => crate::store::search::parse_time_ms(s)
            .map(Some)
            .map_err(|e| format!("argument {name:?}: {e}")),
        _ => opt_u64(args, name),
    }
}

/// The arguments of `search`: `{text?, guild?, channel?, author?, after?, before?, has_file?,
/// order? ("relevance" | "newest"), limit?, offset?}`.
fn search_request(a: &Value) -> Result<crate::guild::service::search::SearchRequest, String> {
    use crate::store::search::Order;
    let order = match a.get("order").and_then(Value::as_str) {
        None | Some("relevance") => Order::Relevance,
        Some("newest") => Order::Newest,
        Some(other) => {
            return Err(format!(
                "argument \"order\" must be \"relevance\" or \"newest\", got {other:?}"
            ));
        }
    };
    let has_file = match a.get("has_file") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err("argument \"has_file\" must be true or false".into()),
    };
    let size = |v: Option<u64>, default: usize| {
        v.map_or(default, |v| usize::try_from(v).unwrap_or(usize::MAX))
    };
    Ok(crate::guild::service::search::SearchRequest {
        text: opt_str(a, "text")?.unwrap_or_default(),
        guild: opt_str(a, "guild")?,
        channel: opt_str(a, "channel")?,
        author: opt_str(a, "author")?,
        after: opt_time(a, "after")?,
        before: opt_time(a, "before")?,
        has_file,
        order,
        limit: size(opt_u64(a, "limit")?, 50),
        offset: size(opt_u64(a, "offset")?, 0),
    })
}

async fn handle_guild(g: &GuildService, cmd: &str, a: &Value) -> Option<Result<Value, String>> {
    let e = |r: Result<Value, crate::guild::GuildError>| r.map_err(|e| e.to_string());
    Some(match cmd {
        "guild-create" => match arg(a, "name") {
            Ok(n) => e(g.create_guild(n).await),
            Err(x) => Err(x),
        },
        "guild-list" => e(g.list_guilds()),
        "guild-join" => match arg(a, "code") {
            Ok(c) => e(g.join(c).await),
            Err(x) => Err(x),
        },
        "invite-create" => {
            let (guild, expires, uses) =
                match (arg(a, "guild"), opt_u64(a, "expires"), opt_u64(a, "uses")) {
                    (Ok(g), Ok(x), Ok(u)) => (g, x, u),
                    (Err(x), _, _) | (_, Err(x), _) | (_, _, Err(x)) => return Some(Err(x)),
                };
            let uses = u32::try_from(uses.unwrap_or(0)).unwrap_or(u32::MAX);
            e(g.create_invite(guild, expires, uses).await)
        }
        "channel-create" => match (arg(a, "guild"), arg(a, "name")) {
            (Ok(guild), Ok(name)) => {
                let voice = a.get("voice").and_then(Value::as_bool).unwrap_or(false);
                e(g.create_channel(guild, name, voice).await)
            }
            (Err(x), _) | (_, Err(x)) => Err(x),
        },
        "channel-list" => match arg(a, "guild") {
            Ok(guild) => e(g.list_channels(guild)),
            Err(x) => Err(x),
        },
        "send" => match (arg(a, "guild"), arg(a, "channel"), arg(a, "text")) {
            (Ok(guild), Ok(ch), Ok(text)) => e(g.send(guild, ch, text).await),
            (Err(x), _, _) | (_, Err(x), _) | (_, _, Err(x)) => Err(x),
        },
        "history" => match (arg(a, "guild"), arg(a, "channel"), opt_u64(a, "limit")) {
            (Ok(guild), Ok(ch), Ok(limit)) => {
                let limit = usize::try_from(limit.unwrap_or(50)).unwrap_or(usize::MAX);
                e(g.history(guild, ch, limit))
            }
            (Err(x), _, _) | (_, Err(x), _) | (_, _, Err(x)) => Err(x),
        },
        "search" => search_request(a).and_then(|r| e(g.search(&r))),
        "members" => match arg(a, "guild") {
            Ok(guild) => e(g.members(guild)),
            Err(x) => Err(x),
        },
        "role-create" => match (arg(a, "guild"), arg(a, "name"), arg(a, "perms")) {
            (Ok(guild), Ok(name), Ok(perms)) => e(g.create_role(guild, name, perms).await),
            (Err(x), _, _) | (_, Err(x), _) | (_, _, Err(x)) => Err(x),
        },
        "role-grant" => match (arg(a, "guild"), arg(a, "user"), arg(a, "role")) {
            (Ok(guild), Ok(user), Ok(role)) => e(g.grant_role(guild, user, role).await),
            (Err(x), _, _) | (_, Err(x), _) | (_, _, Err(x)) => Err(x),
        },
        "kick" => match (arg(a, "guild"), arg(a, "user")) {
            (Ok(guild), Ok(user)) => e(g.kick(guild, user).await),
            (Err(x), _) | (_, Err(x)) => Err(x),
        },
        "ban" => match (arg(a, "guild"), arg(a, "user")) {
            (Ok(guild), Ok(user)) => {
                let reason = a.get("reason").and_then(Value::as_str).unwrap_or("");
                e(g.ban(guild, user, reason).await)
            }
            (Err(x), _) | (_, Err(x)) => Err(x),
        },
        "dm-send" => match (arg(a, "user"), arg(a, "text")) {
            (Ok(user), Ok(text)) => e(g.dm_send(user, text).await),
            (Err(x), _) | (_, Err(x)) => Err(x),
        },
        "dm-history" => match (arg(a, "user"), opt_u64(a, "limit")) {
            (Ok(user), Ok(limit)) => {
                let limit = usize::try_from(limit.unwrap_or(50)).unwrap_or(usize::MAX);
                e(g.dm_history(user, limit))
            }
            (Err(x), _) | (_, Err(x)) => Err(x),
        },
        "find-user" => match arg(a, "user") {
            Ok(user) => g
                .find_user(user)
                .map(|u| json!(hex::encode(u.as_bytes())))
                .map_err(|e| e.to_string()),
            Err(x) => Err(x),
        },
        _ => match messages::handle(g, cmd, a).await {
            Some(r) => r,
            None => return manage::handle(g, cmd, a).await,
        },
    })
}

fn device(a: &Value, name: &str) -> Result<Device, String> {
    match a.get(name) {
        None | Some(Value::Null) => Ok(Device::Null),
        Some(Value::String(s)) if s == "default" => Ok(Device::Cpal(None)),
        Some(Value::String(s)) if s.starts_with("device:") => {
            Ok(Device::Cpal(Some(s["device:".len()..].to_owned())))
        }
        Some(Value::String(s)) => Ok(Device::Wav(PathBuf::from(s))),
        Some(_) => Err(format!(
            "{name}: a WAV path, \"default\" or \"device:NAME\""
        )),
    }
}

/// `process`: absent for the default (on for sound cards, off for files), `true` or `false`.
fn process(a: &Value) -> Result<Option<Option<ProcessConfig>>, String> {
    match a.get("process") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(Some(ProcessConfig::default()))),
        Some(Value::Bool(false)) => Ok(Some(None)),
        Some(_) => Err("process must be true or false".into()),
    }
}

fn flag(a: &Value, name: &str) -> Result<bool, String> {
    match a.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("{name} must be true or false")),
    }
}

/// The options of `voice-join` and `voice-call`: `input`, `output`, `relay_only`,
/// `push_to_talk`, `process`.
fn join_options(a: &Value) -> Result<JoinOptions, String> {
    Ok(JoinOptions {
        input: device(a, "input")?,
        output: device(a, "output")?,
        relay_only: flag(a, "relay_only")?,
        push_to_talk: flag(a, "push_to_talk")?,
        process: process(a)?,
        ..JoinOptions::default()
    })
}

async fn handle_voice(v: &VoiceService, cmd: &str, a: &Value) -> Option<Result<Value, String>> {
    Some(match cmd {
        "voice-join" => match (arg(a, "guild"), arg(a, "channel"), join_options(a)) {
            (Ok(guild), Ok(channel), Ok(opts)) => v.join(guild, channel, opts).await,
            (Err(x), ..) | (_, Err(x), _) | (.., Err(x)) => Err(x),
        },
        "voice-call" => match (arg(a, "user"), join_options(a)) {
            (Ok(user), Ok(opts)) => v.call(user, opts).await,
            (Err(x), _) | (_, Err(x)) => Err(x),
        },
        "voice-leave" => v.leave().await,
        "voice-status" => Ok(v.status()),
        "voice-mute" => flag(a, "on").and_then(|on| v.set_muted(on)),
        "voice-deafen" => flag(a, "on").and_then(|on| v.set_deafened(on)),
        "voice-transmit" => flag(a, "on").and_then(|on| v.set_transmit(on)),
        "voice-relay-only" => match flag(a, "on") {
            Ok(on) => v.set_relay_only(on).await,
            Err(x) => Err(x),
        },
        "voice-volume" => match (arg(a, "user"), opt_u64(a, "percent")) {
            (Ok(user), Ok(Some(p))) => v.set_volume(user, p.min(200) as u32),
            (Ok(_), Ok(None)) => Err("missing argument: percent".into()),
            (Err(x), _) | (_, Err(x)) => Err(x),
        },
        _ => return None,
    })
}

async fn handle(ctx: &Context, req: Request) -> Result<Value, String> {
    let net = &ctx.net;
    if let Some(r) = sound::handle(ctx, req.cmd.as_str(), &req.args).await {
        return r;
    }
    if let Some(r) = emoji::handle(ctx, req.cmd.as_str(), &req.args).await {
        return r;
    }
    if let Some(v) = &ctx.voice
        && let Some(r) = handle_voice(v, req.cmd.as_str(), &req.args).await
    {
        return r;
    }
    if let Some(g) = &ctx.guilds
        && let Some(r) = handle_guild(g, req.cmd.as_str(), &req.args).await
    {
        return r;
    }
    match req.cmd.as_str() {
        "whoami" => Ok(ctx.whoami.clone()),
        "peers" => Ok(
            serde_json::to_value(net.peers().await.map_err(|e| e.to_string())?).unwrap_or_default(),
        ),
        "relays" => Ok(
            serde_json::to_value(net.relays().await.map_err(|e| e.to_string())?)
                .unwrap_or_default(),
        ),
        "listen-addrs" => {
            let addrs = net.listen_addrs().await.map_err(|e| e.to_string())?;
            let me = net.peer_id();
            Ok(json!(
                addrs
                    .iter()
                    .map(|a| format!("{a}/p2p/{me}"))
                    .collect::<Vec<_>>()
            ))
        }
        "dial" => {
            let addr = arg(&req.args, "addr")?
                .parse()
                .map_err(|e| format!("bad multiaddr: {e}"))?;
            net.dial(addr).await.map_err(|e| e.to_string())?;
            Ok(Value::Null)
        }
        "shutdown" => {
            // Say goodbye to a call while the network is still up.
            if let Some(v) = &ctx.voice {
                let _ = v.leave().await;
            }
            net.shutdown().await;
            Ok(Value::Null)
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

/// A client for the control socket (what the CLI uses).
#[derive(Debug)]
pub struct ControlClient {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
}

impl ControlClient {
    /// Connects to the node serving `data_dir`.
    pub async fn connect(data_dir: &Path) -> std::io::Result<Self> {
        let (r, w) = UnixStream::connect(socket_path(data_dir))
            .await?
            .into_split();
        Ok(Self {
            lines: BufReader::new(r).lines(),
            write: w,
            next_id: 1,
        })
    }

    /// Sends a command and waits for its answer.
    pub async fn call(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&Request {
            id,
            cmd: cmd.into(),
            args,
        })
        .map_err(|e| e.to_string())?;
        line.push(b'\n');
        self.write
            .write_all(&line)
            .await
            .map_err(|e| format!("node connection: {e}"))?;
        let answer = self
            .lines
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the node closed the connection")?;
        let v: Value =
            serde_json::from_str(&answer).map_err(|e| format!("bad answer from node: {e}"))?;
        if v.get("ok").and_then(Value::as_bool) == Some(true) {
            Ok(v.get("result").cloned().unwrap_or(Value::Null))
        } else {
            Err(v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_owned())
        }
    }

    /// Subscribes to events; returns the line stream.
    pub async fn events(
        mut self,
    ) -> Result<tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>, String> {
        let mut line = serde_json::to_vec(&Request {
            id: 0,
            cmd: "events".into(),
            args: Value::Null,
        })
        .map_err(|e| e.to_string())?;
        line.push(b'\n');
        self.write
            .write_all(&line)
            .await
            .map_err(|e| e.to_string())?;
        Ok(self.lines)
    }
}
