//! Local full-text search on [`GuildService`]: resolves guild, channel and user names the way
//! `history` does, runs `store::search` on the encrypted store under the engine's lock, and
//! names the hits (guild and channel names, authors' nicknames) from the guild documents.
//! No network I/O; the query text is never logged.

use securecomm_crdt::schema::{ChannelId, GuildId};
use serde_json::{Value, json};

use super::GuildService;
use crate::guild::GuildError;
use crate::guild::engine::{resolve_channel, resolve_user};
use crate::store::search::{self, MAX_LIMIT, MAX_OFFSET, Order, Query, SearchError};

/// A search as the CLI and the control API ask for it: names instead of ids.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    /// What the user typed (`store::search` explains how it is read).
    pub text: String,
    /// Guild name or id.
    pub guild: Option<String>,
    /// Channel name or id (needs `guild`).
    pub channel: Option<String>,
    /// User id or nickname (in `guild` when given, else in any guild).
    pub author: Option<String>,
    /// Sent at or after, ms since the Unix epoch.
    pub after: Option<u64>,
    /// Sent before, ms since the Unix epoch.
    pub before: Option<u64>,
    /// Only messages with (or without) a file.
    pub has_file: Option<bool>,
    /// Best match first, or newest first.
    pub order: Order,
    /// Hits per page (1 to `MAX_LIMIT`).
    pub limit: usize,
    /// Hits to skip.
    pub offset: usize,
}

impl GuildService {
    /// `search TEXT [--guild G] [--channel C] [--author U] [--after T] [--before T]
    /// [--has-file] [--limit N] [--offset N] [--newest]`: messages in the local store.
    ///
    /// Returns `{"hits": [...], "next_offset": N | null}`; each hit has the message's `guild`,
    /// `guild_name`, `channel`, `channel_name`, `id`, `sender_device`, `seq`, `sender` (user),
    /// `nickname`, `sent_at`, `has_file`, `snippet` (matched words between `\u0002` and
    /// `\u0003`) and `rank` (BM25, lower is better).
    pub fn search(&self, r: &SearchRequest) -> Result<Value, GuildError> {
        if r.channel.is_some() && r.guild.is_none() {
            return Err(GuildError::Invalid(
                "a channel is searched within a guild: give the guild too".into(),
            ));
        }
        let gid = r.guild.as_deref().map(|g| self.resolve(g)).transpose()?;
        let author_anywhere = match (&r.author, gid) {
            (Some(a), None) => Some(self.find_user(a)?),
            _ => None,
        };
        self.with_engine(|e, db| {
            let mut channel = None;
            let mut author = author_anywhere.map(|u| u.to_bytes());
            if let Some(gid) = gid {
                let view = e.guild_mut(&gid)?.crdt.view();
                channel = r
                    .channel
                    .as_deref()
                    .map(|c| resolve_channel(view, c))
                    .transpose()?;
                if let Some(a) = r.author.as_deref() {
                    author = Some(resolve_user(view, a)?.to_bytes());
                }
            }
            let q = Query {
                text: r.text.clone(),
                guild: gid.map(|g| g.0),
                channel: channel.map(|c: ChannelId| c.0),
                author,
                after: r.after,
                before: r.before,
                has_file: r.has_file,
                order: r.order,
                limit: r.limit.clamp(1, MAX_LIMIT),
                offset: r.offset.min(MAX_OFFSET),
            };
            let hits = search::search(db.conn(), &q).map_err(|e| match e {
                SearchError::Db(e) => GuildError::from(e),
            })?;
            let full = hits.len() == q.limit;
            let out: Vec<Value> = hits
                .into_iter()
                .map(|h| {
                    let (mut guild_name, mut channel_name, mut nickname) =
                        (None, None, None::<String>);
                    if let Ok(g) = <[u8; 32]>::try_from(h.guild.as_slice())
                        && let Ok(state) = e.guild_mut(&GuildId(g))
                    {
                        let view = state.crdt.view();
                        guild_name = Some(view.name().to_owned());
                        channel_name = view
                            .channels()
                            .get(&ChannelId(h.channel))
                            .map(|c| c.name.clone());
                        nickname = <[u8; 32]>::try_from(h.author.as_slice())
                            .ok()
                            .and_then(|b| {
                                securecomm_noise::keys::RootPublicKey::from_bytes(&b).ok()
                            })
                            .and_then(|u| view.member(&u).map(|m| m.nickname.clone()));
                    }
                    json!({
                        "guild": hex::encode(&h.guild),
                        "guild_name": guild_name,
                        "channel": h.channel,
                        "channel_name": channel_name,
                        "id": hex::encode(&h.msg_id),
                        "sender_device": hex::encode(&h.device),
                        "seq": h.seq,
                        "sender": hex::encode(&h.author),
                        "nickname": nickname,
                        "sent_at": h.sent_at,
                        "has_file": h.has_file,
                        "snippet": h.snippet,
                        "rank": h.rank,
                    })
                })
                .collect();
            let next = (full && q.offset + q.limit <= MAX_OFFSET).then_some(q.offset + q.limit);
            Ok(json!({"hits": out, "next_offset": next}))
        })?
    }
}
