//! Messaging beyond plain posts on [`GuildService`]: replies, threads, reactions, edits,
//! deletes, pins, disappearing timers, mentions and read state. The rules live in
//! [`crate::guild::content`]; this file resolves names and ids, sends, and lists.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use securecomm_crdt::perms::Permissions;
use serde_json::{Value, json};

use super::GuildService;
use crate::guild::GuildError;
use crate::guild::content::{self, Thread};
use crate::guild::engine::{self, now_ms, resolve_channel};
use crate::guild::wire::{Body, MsgId, Post, check_emoji, check_thread_name};
use securecomm_crdt::schema::{ChannelId, GuildId};

/// Options of a post.
#[derive(Debug, Clone, Default)]
pub struct PostOptions {
    /// Message replied to (hex id or a unique prefix of at least 6 digits).
    pub reply_to: Option<String>,
    /// Thread posted in (hex id, unique prefix, or exact name).
    pub thread: Option<String>,
    /// Disappearing timer in seconds (the channel's and the guild's defaults still apply: the
    /// shortest non-zero one wins).
    pub ttl_secs: Option<u32>,
    /// Files to attach (paths readable by the node).
    pub files: Vec<std::path::PathBuf>,
}

/// First byte of a typing notice on the direct protocol. A notice is `[TYPING_VERSION] ||
/// guild id (32) || channel (u64, big-endian)`: it travels only inside the libp2p connection's
/// Noise channel to members' devices (a relay on the path sees ciphertext), and the connection
/// itself says who sends it, so it needs no signature. The answer is one byte.
pub const TYPING_VERSION: u8 = 0x54;
/// At most one notice per channel this often (the app shows one for [`TYPING_SHOWN`]).
pub const TYPING_EVERY: Duration = Duration::from_secs(4);
/// How long a notice is shown (the app's business; here for reference).
pub const TYPING_SHOWN: Duration = Duration::from_secs(8);
/// Most member devices a notice goes to (large guilds show typing only among those connected).
pub const MAX_TYPING_PEERS: usize = 64;
/// Entries kept in each of the typing maps before they are cleared.
const MAX_TYPING_ENTRIES: usize = 1024;

/// Typing notices sent and received, by when.
#[derive(Default)]
pub(crate) struct TypingState {
    sent: HashMap<(GuildId, u64), Instant>,
    seen: HashMap<(PeerId, GuildId, u64), Instant>,
}

fn typing_notice(gid: &GuildId, channel: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(41);
    v.push(TYPING_VERSION);
    v.extend_from_slice(&gid.0);
    v.extend_from_slice(&channel.to_be_bytes());
    v
}

fn parse_typing(data: &[u8]) -> Option<(GuildId, u64)> {
    if data.len() != 41 || data[0] != TYPING_VERSION {
        return None;
    }
    let gid = <[u8; 32]>::try_from(&data[1..33]).ok()?;
    let ch = <[u8; 8]>::try_from(&data[33..41]).ok()?;
    Some((GuildId(gid), u64::from_be_bytes(ch)))
}

/// Longest disappearing timer: 4 weeks, as Signal's longest preset.
pub const MAX_TTL_SECS: u32 = 28 * 24 * 3600;

fn parse_hex_prefix(s: &str) -> Result<String, GuildError> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() < 6 || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(GuildError::Invalid(format!(
            "{s:?} is not a message id (6 to 32 hex digits)"
        )));
    }
    Ok(s)
}

/// Finds a stored message of `channel` by id or unique prefix.
pub(crate) fn resolve_message(
    conn: &rusqlite::Connection,
    gid: &GuildId,
    channel: ChannelId,
    s: &str,
) -> Result<MsgId, GuildError> {
    let prefix = parse_hex_prefix(s)?;
    let like = format!("{}%", prefix.to_ascii_uppercase());
    let found: Vec<Vec<u8>> = conn
        .prepare_cached(
            "SELECT msg_id FROM guild_messages WHERE guild = ?1 AND channel = ?2
             AND hex(msg_id) LIKE ?3 LIMIT 2",
        )?
        .query_map(
            rusqlite::params![&gid.0[..], engine::sql_channel(channel.0), like],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    match found.as_slice() {
        [one] => <[u8; 16]>::try_from(one.as_slice())
            .map_err(|_| GuildError::Invalid("malformed message id in the store".into())),
        [] => Err(GuildError::Invalid(format!(
            "no message {prefix} in this channel"
        ))),
        _ => Err(GuildError::Ambiguous(format!("message {prefix}"))),
    }
}

/// Finds a thread of `channel` by id, unique prefix or exact name.
pub(crate) fn resolve_thread(
    conn: &rusqlite::Connection,
    gid: &GuildId,
    channel: ChannelId,
    s: &str,
) -> Result<MsgId, GuildError> {
    let all = content::threads(conn, gid, channel.0)?;
    let lower = s.trim().to_ascii_lowercase();
    let by_name: Vec<&Thread> = all.iter().filter(|t| t.name == s.trim()).collect();
    let by_id: Vec<&Thread> = all
        .iter()
        .filter(|t| lower.len() >= 6 && t.id.starts_with(&lower))
        .collect();
    let pick = match (by_id.as_slice(), by_name.as_slice()) {
        ([one], _) | ([], [one]) => one,
        ([], []) => {
            return Err(GuildError::Invalid(format!(
                "no thread {s:?} in this channel (see `thread list`)"
            )));
        }
        _ => return Err(GuildError::Ambiguous(format!("thread {s:?}"))),
    };
    hex::decode(&pick.id)
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| GuildError::Invalid("malformed thread id in the store".into()))
}

impl GuildService {
    /// `send GUILD CHANNEL TEXT [--reply-to MSG] [--thread THREAD] [--expires SECS]`.
    pub async fn post(
        &self,
        guild: &str,
        channel: &str,
        text: &str,
        opts: &PostOptions,
    ) -> Result<Value, GuildError> {
        if let Some(t) = opts.ttl_secs
            && (t == 0 || t > MAX_TTL_SECS)
        {
            return Err(GuildError::Invalid(format!(
                "a disappearing timer is 1 s to {MAX_TTL_SECS} s (4 weeks)"
            )));
        }
        let gid = self.resolve(guild)?;
        let files = self.attach_paths(&gid, channel, &opts.files).await?;
        let text = text.to_owned();
        let opts = opts.clone();
        self.send_body(guild, channel, move |_, db, gid, ch| {
            let reply_to = match &opts.reply_to {
                Some(r) => Some(resolve_message(db.conn(), gid, ch, r)?),
                None => None,
            };
            let thread = match &opts.thread {
                Some(t) => Some(resolve_thread(db.conn(), gid, ch, t)?),
                None => None,
            };
            Ok(Body::Post(Post {
                text,
                reply_to,
                thread,
                ttl_secs: opts.ttl_secs.unwrap_or(0),
                files,
            }))
        })
        .await
    }

    /// `react GUILD CHANNEL MSG EMOJI [--remove]`.
    pub async fn react(
        &self,
        guild: &str,
        channel: &str,
        msg: &str,
        emoji: &str,
        add: bool,
    ) -> Result<Value, GuildError> {
        check_emoji(emoji).map_err(GuildError::Invalid)?;
        if add {
            // A custom `:name:` must name one of the guild's emoji; removing one that was
            // deleted since is fine.
            let gid = self.resolve(guild)?;
            self.check_reaction(&gid, emoji)?;
        }
        let (msg, emoji) = (msg.to_owned(), emoji.to_owned());
        self.send_body(guild, channel, move |_, db, gid, ch| {
            Ok(Body::React {
                target: resolve_message(db.conn(), gid, ch, &msg)?,
                emoji,
                add,
            })
        })
        .await
    }

    /// `edit GUILD CHANNEL MSG TEXT`: only the author's own messages.
    pub async fn edit(
        &self,
        guild: &str,
        channel: &str,
        msg: &str,
        text: &str,
    ) -> Result<Value, GuildError> {
        let (msg, text) = (msg.to_owned(), text.to_owned());
        self.send_body(guild, channel, move |_, db, gid, ch| {
            Ok(Body::Edit {
                target: resolve_message(db.conn(), gid, ch, &msg)?,
                text,
            })
        })
        .await
    }

    /// `delete GUILD CHANNEL MSG`: the author's own, or anyone's with Manage Messages. Erases
    /// the message from this store at once and from every member's store that receives the
    /// delete; a member who already saw it may have kept a copy.
    pub async fn delete(&self, guild: &str, channel: &str, msg: &str) -> Result<Value, GuildError> {
        let msg = msg.to_owned();
        let gid = self.resolve(guild)?;
        let v = self
            .send_body(guild, channel, move |_, db, gid, ch| {
                Ok(Body::Delete {
                    target: resolve_message(db.conn(), gid, ch, &msg)?,
                })
            })
            .await?;
        self.emit_erased(&gid, &v);
        Ok(v)
    }

    /// `pin GUILD CHANNEL MSG [--unpin]` (Manage Messages).
    pub async fn pin(
        &self,
        guild: &str,
        channel: &str,
        msg: &str,
        pinned: bool,
    ) -> Result<Value, GuildError> {
        let msg = msg.to_owned();
        self.send_body(guild, channel, move |_, db, gid, ch| {
            Ok(Body::Pin {
                target: resolve_message(db.conn(), gid, ch, &msg)?,
                pinned,
            })
        })
        .await
    }

    /// `thread create GUILD CHANNEL NAME [--from MSG]`: a thread's id is its creating message's.
    pub async fn thread_create(
        &self,
        guild: &str,
        channel: &str,
        name: &str,
        from: Option<&str>,
    ) -> Result<Value, GuildError> {
        check_thread_name(name).map_err(GuildError::Invalid)?;
        let (name, from) = (name.to_owned(), from.map(str::to_owned));
        self.send_body(guild, channel, move |_, db, gid, ch| {
            let starter = match &from {
                Some(m) => Some(resolve_message(db.conn(), gid, ch, m)?),
                None => None,
            };
            Ok(Body::Thread {
                thread: None,
                starter,
                name: Some(name),
                archived: None,
            })
        })
        .await
    }

    /// `thread rename|archive|unarchive GUILD CHANNEL THREAD`: the creator or Manage Messages.
    pub async fn thread_update(
        &self,
        guild: &str,
        channel: &str,
        thread: &str,
        name: Option<&str>,
        archived: Option<bool>,
    ) -> Result<Value, GuildError> {
        if let Some(n) = name {
            check_thread_name(n).map_err(GuildError::Invalid)?;
        }
        if name.is_none() && archived.is_none() {
            return Err(GuildError::Invalid("nothing to change".into()));
        }
        let (thread, name) = (thread.to_owned(), name.map(str::to_owned));
        self.send_body(guild, channel, move |_, db, gid, ch| {
            Ok(Body::Thread {
                thread: Some(resolve_thread(db.conn(), gid, ch, &thread)?),
                starter: None,
                name,
                archived,
            })
        })
        .await
    }

    /// `thread list GUILD CHANNEL`: newest activity first.
    pub fn threads(&self, guild: &str, channel: &str) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        self.with_engine(|e, db| {
            let g = e.guild_mut(&gid)?;
            let ch = resolve_channel(g.crdt.view(), channel)?;
            let t = content::threads(db.conn(), &gid, ch.0)?;
            Ok(serde_json::to_value(t).unwrap_or(Value::Null))
        })?
    }

    /// `pins GUILD CHANNEL`: the pinned messages, most recently pinned first.
    pub fn pins(&self, guild: &str, channel: &str) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        self.with_engine(|e, db| {
            let g = e.guild_mut(&gid)?;
            let ch = resolve_channel(g.crdt.view(), channel)?;
            let ids = content::pins(db.conn(), &gid, ch.0)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let row = db
                    .conn()
                    .query_row(
                        "SELECT author, sent_at, text FROM guild_messages
                         WHERE guild = ?1 AND msg_id = ?2",
                        rusqlite::params![&gid.0[..], id],
                        |r| {
                            Ok((
                                r.get::<_, Vec<u8>>(0)?,
                                r.get::<_, i64>(1)?,
                                r.get::<_, String>(2)?,
                            ))
                        },
                    )
                    .ok();
                if let Some((author, at, text)) = row {
                    out.push(json!({
                        "id": hex::encode(&id),
                        "sender": hex::encode(author),
                        "sent_at": at,
                        "text": text,
                    }));
                }
            }
            Ok(Value::Array(out))
        })?
    }

    /// The earlier versions of a message this device saw (local only), oldest first.
    pub fn edits(&self, guild: &str, channel: &str, msg: &str) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        self.with_engine(|e, db| {
            let g = e.guild_mut(&gid)?;
            let ch = resolve_channel(g.crdt.view(), channel)?;
            let id = resolve_message(db.conn(), &gid, ch, msg)?;
            let rows: Vec<(i64, String)> = db
                .conn()
                .prepare_cached(
                    "SELECT replaced_at, text FROM guild_message_edits WHERE guild = ?1
                     AND msg_id = ?2 ORDER BY replaced_at, rowid",
                )?
                .query_map(rusqlite::params![&gid.0[..], &id[..]], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            Ok(Value::Array(
                rows.into_iter()
                    .map(|(at, text)| json!({"replaced_at": at, "text": text}))
                    .collect(),
            ))
        })?
    }

    /// Marks `channel` read on this device (up to now); returns unread mention counts left.
    pub fn mark_read(&self, guild: &str, channel: &str) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        self.with_engine(|e, db| {
            let g = e.guild_mut(&gid)?;
            let ch = resolve_channel(g.crdt.view(), channel)?;
            content::mark_read(db.conn(), &gid, ch.0, now_ms())?;
            Ok::<(), GuildError>(())
        })??;
        self.mentions(guild)
    }

    /// `mentions GUILD`: unread mentions of this member per channel (read state is per device).
    pub fn mentions(&self, guild: &str) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        self.with_engine(|_, db| {
            let m = content::unread_mentions(db.conn(), &gid)?;
            Ok(Value::Array(
                m.into_iter()
                    .map(|(ch, n)| json!({"channel": ch, "unread_mentions": n}))
                    .collect(),
            ))
        })?
    }

    /// Erases messages whose timer ran out (called every tick and at start).
    pub(crate) fn expire_due(&self) {
        let r = self.with_engine(|_, db| -> Result<_, GuildError> {
            let next = content::next_expiry(db.conn())?;
            if next.is_none_or(|t| t > now_ms()) {
                return Ok(Vec::new());
            }
            let tx = db.conn_mut().transaction()?;
            let gone = content::expire(&tx, now_ms())?;
            tx.commit()?;
            Ok(gone)
        });
        match r {
            Ok(Ok(gone)) => {
                for (gid, channel, id) in gone {
                    self.emit(super::GuildEvent::Erased {
                        guild: hex::encode(gid.0),
                        channel,
                        id,
                    });
                }
            }
            Ok(Err(e)) | Err(e) => tracing::warn!(error = %e, "erasing expired messages failed"),
        }
    }

    /// `typing GUILD CHANNEL`: tells the connected member devices who may view the channel
    /// that we are typing (at most once per [`TYPING_EVERY`] per channel; later calls within
    /// that time do nothing). Returns how many devices were told.
    pub async fn typing(&self, guild: &str, channel: &str) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        let connected: std::collections::HashSet<PeerId> = self
            .inner
            .net
            .peers()
            .await
            .map(|v| v.into_iter().map(|p| p.peer).collect())
            .unwrap_or_default();
        let (ch, peers) = self.with_engine(|e, _| {
            let me = e.keys.me;
            let g = e.guild_mut(&gid)?;
            let view = g.crdt.view();
            let ch = resolve_channel(view, channel)?;
            let peers: Vec<PeerId> = view
                .members()
                .iter()
                .filter(|(u, _)| {
                    view.channel_permissions(u, &ch)
                        .contains(Permissions::VIEW_CHANNEL)
                })
                .flat_map(|(_, m)| m.devices.iter().copied())
                .filter(|d| *d != me)
                .filter_map(|d| super::peer_of(&d))
                .filter(|p| connected.contains(p))
                .take(MAX_TYPING_PEERS)
                .collect();
            Ok::<_, GuildError>((ch, peers))
        })??;
        {
            let mut t = self.inner.typing.lock().map_err(|_| GuildError::Poisoned)?;
            let now = Instant::now();
            if t.sent
                .get(&(gid, ch.0))
                .is_some_and(|at| now.duration_since(*at) < TYPING_EVERY)
            {
                return Ok(json!({"sent_to": 0, "throttled": true}));
            }
            if t.sent.len() >= MAX_TYPING_ENTRIES {
                t.sent.clear();
            }
            t.sent.insert((gid, ch.0), now);
        }
        let notice = typing_notice(&gid, ch.0);
        let n = peers.len();
        for p in peers {
            let (net, notice) = (self.inner.net.clone(), notice.clone());
            self.spawn(async move {
                let _ = net.request(p, notice).await;
            });
        }
        Ok(json!({"sent_to": n, "throttled": false}))
    }

    /// A typing notice from `peer`: shown if it is a member device that may view the channel,
    /// at most once per [`TYPING_EVERY`] per peer and channel.
    pub(crate) fn on_typing(&self, peer: PeerId, data: &[u8]) {
        let Some((gid, channel)) = parse_typing(data) else {
            return;
        };
        let Some(device) = super::device_of(&peer) else {
            return;
        };
        if let Ok(mut t) = self.inner.typing.lock() {
            let now = Instant::now();
            let key = (peer, gid, channel);
            if t.seen
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < TYPING_EVERY / 2)
            {
                return;
            }
            if t.seen.len() >= MAX_TYPING_ENTRIES {
                t.seen.clear();
            }
            t.seen.insert(key, now);
        }
        let who = self.with_engine(|e, _| {
            let g = e.guild_mut(&gid).ok()?;
            let view = g.crdt.view();
            let user = *view.user_of_device(&device)?;
            let perms = view.channel_permissions(&user, &ChannelId(channel));
            perms
                .contains(Permissions::VIEW_CHANNEL.union(Permissions::SEND_MESSAGES))
                .then(|| {
                    (
                        hex::encode(user.as_bytes()),
                        view.member(&user)
                            .map(|m| m.nickname.clone())
                            .unwrap_or_default(),
                    )
                })
        });
        if let Ok(Some((user, nickname))) = who {
            self.emit(super::GuildEvent::Typing {
                guild: hex::encode(gid.0),
                channel,
                user,
                nickname,
            });
        }
    }

    fn emit_erased(&self, gid: &GuildId, v: &Value) {
        if let (Some(target), Some(channel)) = (
            v.pointer("/op/target").and_then(Value::as_str),
            v.get("channel").and_then(Value::as_u64),
        ) {
            self.emit(super::GuildEvent::Erased {
                guild: hex::encode(gid.0),
                channel,
                id: target.to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_notices_round_trip_and_anything_else_is_ignored() {
        let n = typing_notice(&GuildId([3; 32]), u64::MAX - 1);
        assert_eq!(parse_typing(&n), Some((GuildId([3; 32]), u64::MAX - 1)));
        assert_eq!(parse_typing(&n[..40]), None);
        let mut longer = n.clone();
        longer.push(0);
        assert_eq!(parse_typing(&longer), None);
        let mut other = n;
        other[0] = 0x55;
        assert_eq!(parse_typing(&other), None);
    }
}
