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
//! -> {"id": 3, "cmd": "events"}
//! <- {"event": "peer-connected", "peer": "12D3Koo...", "path": "relayed"}     (one per line, until closed)
//! ```
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
    while let Some(e) = events.next().await {
        let v = event_json(&e);
        if v.is_null() {
            continue;
        }
        let mut out = serde_json::to_vec(&v).unwrap_or_default();
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

/// The JSON form of an event, or null for events scripts do not see (raw gossip and requests,
/// which the node itself consumes).
pub fn event_json(e: &Event) -> Value {
    match e {
        Event::Listening(a) => json!({"event": "listening", "addr": a.to_string()}),
        Event::RelayReserved(p) => json!({"event": "relay-reserved", "relay": p.to_string()}),
        Event::PeerConnected(p, path) => {
            json!({"event": "peer-connected", "peer": p.to_string(), "path": path})
        }
        Event::PeerDisconnected(p) => json!({"event": "peer-disconnected", "peer": p.to_string()}),
        Event::HolePunched(p) => json!({"event": "hole-punched", "peer": p.to_string()}),
        Event::Lagged(n) => json!({"event": "lagged", "missed": n}),
        Event::Gossip { .. } | Event::DirectRequest { .. } => Value::Null,
    }
}

fn arg<'a>(args: &'a Value, name: &str) -> Result<&'a str, String> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string argument {name:?}"))
}

async fn handle(ctx: &Context, req: Request) -> Result<Value, String> {
    let net = &ctx.net;
    match req.cmd.as_str() {
        "whoami" => Ok(ctx.whoami.clone()),
        "peers" => Ok(
            serde_json::to_value(net.peers().await.map_err(|e| e.to_string())?).unwrap_or_default(),
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
