//! What guild messages do to the store beyond "a post appears": replies, threads, reactions,
//! edits, deletes, pins, disappearing timers, mentions and slow mode.
//!
//! # Model
//!
//! Every kind of content is a guild message ([`Body`]): sealed by the guild's group encryption,
//! numbered in its sender's sequence (so history sync and mailboxes carry it to members who were
//! offline), and judged twice:
//!
//! 1. **When it decrypts** ([`judge`], against the guild document as this member sees it): the
//!    sender may view the channel; a post needs Send Messages; a reaction Add Reactions; a pin
//!    Manage Messages; `@everyone`/`@here` notify only with Mention Everyone, a role mention only
//!    when the role is mentionable (or with Mention Everyone). The result is a
//!    [`StoredMessage`] with an [`Op`] for everything that is not a post.
//! 2. **When it is stored** ([`apply`], in the receiving transaction, against the store): an edit
//!    must come from the target's author; a delete from its author or from a member who had
//!    Manage Messages; a post is dropped if slow mode forbids it or its timer already ran out.
//!
//! Operations may arrive before their target (a moderator's delete fetched before the post it
//! deletes, an edit from the author's other device): deletes leave a tombstone that the target
//! meets when it arrives; reactions, edits and pins wait in `guild_pending_ops` (bounded per
//! guild).
//! Reactions, pins and thread settings are last-writer-wins per key, ordered by
//! (sender's time, device, sequence number), so every member converges whatever the order.
//!
//! # Erasing
//!
//! A delete or an expired timer **erases**: the message row goes (and with it the full-text
//! index entry, by trigger), its reactions, pins, local edit history and pending operations go,
//! and the sealed envelopes of the message and of every operation that targets it (an edit's
//! envelope holds text too) are emptied, so history sync never serves them again. The rows of
//! those envelopes stay, empty, so sequence ranges stay whole. The database runs with
//! `secure_delete`, so freed pages are zeroed. What erasing cannot reach: a copy a member
//! already made (a screenshot, another client), said plainly in the app.
//!
//! # Bounds
//!
//! Texts at most [`super::wire::MAX_TEXT_CHARS`] characters; at most [`MAX_PENDING_OPS`] waiting
//! operations per guild, and as many deletes of messages not seen yet (oldest dropped); at
//! most [`MAX_REACTION_KINDS`] emoji per user on one message (and [`MAX_REACTION_ROWS`]
//! remembered); at most [`MAX_EDIT_HISTORY`] kept versions per message; [`MAX_ERASE_BATCH`]
//! expired messages erased per sweep.

use rusqlite::{OptionalExtension, Transaction, params};
use securecomm_crdt::GuildView;
use securecomm_crdt::perms::Permissions;
use securecomm_crdt::schema::{ChannelId, ChannelKind, GuildId, RoleId, UserId};
use serde::Serialize;

use super::GuildError;
use super::engine::{StoredMessage, now_ms, sql, sql_channel};
use super::wire::{AppPayload, Body, MsgId};
use crate::markdown::{self, Mention};
use crate::sync::SyncError;

/// Most operations waiting for their target, per guild.
pub const MAX_PENDING_OPS: i64 = 10_000;
/// How far past [`MAX_PENDING_OPS`] a waiting list may grow before it is cut back to it.
pub const PRUNE_SLACK: i64 = 256;
/// Most reaction emoji one user has on one message at once.
pub const MAX_REACTION_KINDS: i64 = 20;
/// Most reaction rows (added or removed) remembered per user and message.
pub const MAX_REACTION_ROWS: i64 = 64;
/// Most earlier versions of a message kept locally.
pub const MAX_EDIT_HISTORY: i64 = 50;
/// Most expired messages erased in one sweep.
pub const MAX_ERASE_BATCH: usize = 1_000;

/// A non-post message, as judged on arrival.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Op {
    /// A reaction added or removed.
    React {
        /// Target message id (hex).
        target: String,
        /// The emoji.
        emoji: String,
        /// Added or removed.
        add: bool,
    },
    /// New text for the author's message.
    Edit {
        /// Target message id (hex).
        target: String,
        /// The new text.
        text: String,
    },
    /// A delete.
    Delete {
        /// Target message id (hex).
        target: String,
        /// Whether the sender had Manage Messages in the channel (may delete anyone's).
        moderator: bool,
    },
    /// A pin or unpin.
    Pin {
        /// Target message id (hex).
        target: String,
        /// Pinned or not.
        pinned: bool,
    },
    /// A thread created or updated.
    Thread {
        /// The thread (hex; for a create, the message's own id).
        thread: String,
        /// Created by this message.
        create: bool,
        /// The message it starts from (hex), on create.
        starter: Option<String>,
        /// The name, if set by this message.
        name: Option<String>,
        /// Archived or not, if set by this message.
        archived: Option<bool>,
        /// Whether the sender had Manage Messages (may change threads of others).
        moderator: bool,
    },
}

/// What [`judge`] adds to a message beyond sender and time.
#[derive(Debug, Clone, Default)]
pub struct Judged {
    /// Post text (empty for operations).
    pub text: String,
    /// What is replied to (hex).
    pub reply_to: Option<String>,
    /// The thread posted in (hex).
    pub thread: Option<String>,
    /// When it disappears, ms since the Unix epoch.
    pub expires_at: Option<u64>,
    /// Whether it notifies this member.
    pub mentions_me: bool,
    /// The operation, for everything that is not a post.
    pub op: Option<Op>,
    /// Slow mode of the channel in ms, when it applies to the sender (0: does not).
    pub slow_ms: u64,
    /// Attached files (posts).
    pub attachments: Vec<crate::files::wire::Attachment>,
}

/// The shortest non-zero timer of a message, its channel and its guild, in seconds.
pub fn effective_ttl(view: &GuildView, channel: &ChannelId, message_ttl: u32) -> u32 {
    let ch = view
        .channels()
        .get(channel)
        .map_or(0, |c| c.disappearing_secs);
    [message_ttl, ch, view.settings().default_disappearing_secs]
        .into_iter()
        .filter(|&s| s > 0)
        .min()
        .unwrap_or(0)
}

/// Whether `text` notifies `me` when `author` posts it in `channel`.
pub fn notifies(
    view: &GuildView,
    author: &UserId,
    channel: &ChannelId,
    me: &UserId,
    text: &str,
    live: bool,
) -> bool {
    if author == me {
        return false;
    }
    let everyone_allowed = view
        .channel_permissions(author, channel)
        .contains(Permissions::MENTION_EVERYONE);
    let my_roles = view.member(me).map(|m| m.roles.clone()).unwrap_or_default();
    let me_hex = hex::encode(me.as_bytes());
    markdown::mentions(text).into_iter().any(|m| match m {
        Mention::User(u) => u == me_hex,
        Mention::Role(r) => {
            my_roles.contains(&RoleId(r))
                && (everyone_allowed || view.roles().get(&RoleId(r)).is_some_and(|r| r.mentionable))
        }
        Mention::Everyone => everyone_allowed,
        // `@here` means "whoever is online now": a message fetched later does not ring.
        Mention::Here => everyone_allowed && live,
    })
}

/// Judges a decrypted payload from `author` against `view`: `Err` is a rejection reason.
pub fn judge(
    view: &GuildView,
    author: &UserId,
    me: &UserId,
    p: &AppPayload,
    live: bool,
) -> Result<Judged, &'static str> {
    let channel = ChannelId(p.channel);
    let Some(ch) = view.channels().get(&channel) else {
        return Err("unknown channel");
    };
    if ch.kind != ChannelKind::Text {
        return Err("not a text channel");
    }
    let perms = view.channel_permissions(author, &channel);
    if !perms.contains(Permissions::VIEW_CHANNEL) {
        return Err("sender may not view that channel");
    }
    let moderator = perms.contains(Permissions::MANAGE_MESSAGES);
    let id = |t: &MsgId| hex::encode(t);
    let mut j = Judged::default();
    match &p.body {
        Body::Post(post) => {
            if !perms.contains(Permissions::SEND_MESSAGES) {
                return Err("sender may not post in that channel");
            }
            let ttl = effective_ttl(view, &channel, post.ttl_secs);
            j.expires_at = (ttl > 0).then(|| {
                p.sent_at
                    .saturating_add(u64::from(ttl).saturating_mul(1000))
            });
            j.mentions_me = notifies(view, author, &channel, me, &post.text, live);
            j.reply_to = post.reply_to.as_ref().map(id);
            j.thread = post.thread.as_ref().map(id);
            j.text.clone_from(&post.text);
            if !post.files.is_empty() {
                if !perms.contains(Permissions::ATTACH_FILES) {
                    return Err("sender may not attach files in that channel");
                }
                let max = view.settings().max_upload_bytes;
                if max > 0 && post.files.iter().any(|f| f.size > max) {
                    return Err("attached file larger than the guild allows");
                }
                j.attachments.clone_from(&post.files);
            }
            let exempt = moderator || perms.contains(Permissions::MANAGE_CHANNELS);
            if !exempt {
                j.slow_ms = u64::from(ch.slow_mode_secs).saturating_mul(1000);
            }
        }
        Body::React { target, emoji, add } => {
            if !perms.contains(Permissions::ADD_REACTIONS) {
                return Err("sender may not react in that channel");
            }
            j.op = Some(Op::React {
                target: id(target),
                emoji: emoji.clone(),
                add: *add,
            });
        }
        Body::Edit { target, text } => {
            j.op = Some(Op::Edit {
                target: id(target),
                text: text.clone(),
            });
        }
        Body::Delete { target } => {
            j.op = Some(Op::Delete {
                target: id(target),
                moderator,
            });
        }
        Body::Pin { target, pinned } => {
            if !moderator {
                return Err("sender may not pin in that channel");
            }
            j.op = Some(Op::Pin {
                target: id(target),
                pinned: *pinned,
            });
        }
        Body::Thread {
            thread,
            starter,
            name,
            archived,
        } => {
            if thread.is_none() && !perms.contains(Permissions::SEND_MESSAGES) {
                return Err("sender may not start threads in that channel");
            }
            j.op = Some(Op::Thread {
                thread: id(thread.as_ref().unwrap_or(&p.msg_id)),
                create: thread.is_none(),
                starter: starter.as_ref().map(id),
                name: name.clone(),
                archived: *archived,
                moderator,
            });
        }
    }
    Ok(j)
}

fn unsql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn bytes(h: &str) -> Vec<u8> {
    hex::decode(h).unwrap_or_default()
}

/// What the sender's own store says against sending `p` (judged as `j`): the target of an
/// edit, delete, pin, reaction or reply must be here (and, for an edit, ours; for a delete,
/// ours unless we may manage messages), a thread must be known and open, and slow mode must
/// have passed. Members check the same on arrival; this gives the sender a clear error.
pub(crate) fn check_local(
    conn: &rusqlite::Connection,
    gid: &GuildId,
    me: &UserId,
    p: &AppPayload,
    j: &Judged,
) -> Result<(), GuildError> {
    let me_b = me.as_bytes().to_vec();
    let target_in_channel = |t: &MsgId| -> Result<(Vec<u8>, Option<Vec<u8>>), GuildError> {
        match message_meta(conn, gid, t)? {
            Some((author, ch, thread)) if ch == p.channel => Ok((author, thread)),
            _ => Err(GuildError::Invalid(format!(
                "no message {} in this channel",
                hex::encode(t)
            ))),
        }
    };
    match &p.body {
        Body::Post(post) => {
            if let Some(r) = &post.reply_to {
                target_in_channel(r)?;
            }
            let thread = match &post.thread {
                Some(t) => match thread(conn, gid, t)? {
                    Some((ch, _, _)) if ch != p.channel => {
                        return Err(GuildError::Invalid(
                            "that thread is in another channel".into(),
                        ));
                    }
                    Some((_, true, _)) => {
                        return Err(GuildError::Invalid(
                            "that thread is archived; unarchive it first".into(),
                        ));
                    }
                    Some(_) => Some(t.to_vec()),
                    None => {
                        return Err(GuildError::Invalid(format!(
                            "no thread {} in this channel",
                            hex::encode(t)
                        )));
                    }
                },
                None => None,
            };
            if j.slow_ms > 0
                && let Some(last) = last_post_at(conn, gid, p.channel, thread.as_deref(), &me_b)?
            {
                let ready = last.saturating_add(j.slow_ms);
                if p.sent_at < ready {
                    let wait = (ready - p.sent_at).div_ceil(1000);
                    return Err(GuildError::Invalid(format!(
                        "slow mode: you may post here again in {wait} s"
                    )));
                }
            }
        }
        Body::React { target, .. } | Body::Pin { target, .. } => {
            target_in_channel(target)?;
        }
        Body::Edit { target, .. } => {
            if target_in_channel(target)?.0 != me_b {
                return Err(GuildError::NotPermitted(
                    "you can only edit your own messages".into(),
                ));
            }
        }
        Body::Delete { target } => {
            let moderator = matches!(
                j.op,
                Some(Op::Delete {
                    moderator: true,
                    ..
                })
            );
            if target_in_channel(target)?.0 != me_b && !moderator {
                return Err(GuildError::NotPermitted(
                    "you may delete only your own messages here (Manage Messages deletes others')"
                        .into(),
                ));
            }
        }
        Body::Thread {
            thread: Some(t), ..
        } => {
            let moderator = matches!(
                j.op,
                Some(Op::Thread {
                    moderator: true,
                    ..
                })
            );
            match thread(conn, gid, t)? {
                Some((ch, _, creator)) if ch == p.channel => {
                    if creator != me_b && !moderator {
                        return Err(GuildError::NotPermitted(
                            "only the thread's creator or Manage Messages may change it".into(),
                        ));
                    }
                }
                _ => {
                    return Err(GuildError::Invalid(format!(
                        "no thread {} in this channel",
                        hex::encode(t)
                    )));
                }
            }
        }
        Body::Thread {
            thread: None,
            starter: Some(s),
            ..
        } => {
            target_in_channel(s)?;
        }
        Body::Thread { .. } => {}
    }
    Ok(())
}

/// A stored message's author (root key), channel and thread.
pub(crate) type Meta = (Vec<u8>, u64, Option<Vec<u8>>);

/// A message row as an edit sees it: author, text, and the stamp of the edit applied last.
type EditRow = (Vec<u8>, String, Option<i64>, Option<Vec<u8>>, Option<i64>);

/// Last-writer-wins order of an operation: sender's time, device, sequence number.
type Stamp = (i64, Vec<u8>, i64);

fn stamp_of(m: &StoredMessage) -> Stamp {
    (sql(m.sent_at), bytes(&m.sender_device), sql(m.seq))
}

/// Stores a judged message (post or operation) in `tx`. `new_envelope` says whether its
/// envelope was new here (a duplicate changes nothing). Returns whether a post was stored, or
/// an operation took effect, so the caller tells the user.
pub(crate) fn apply(
    tx: &Transaction<'_>,
    gid: &GuildId,
    m: &StoredMessage,
    new_envelope: bool,
) -> Result<bool, SyncError> {
    if !new_envelope {
        return Ok(false);
    }
    let g = &gid.0[..];
    let Some(op) = &m.op else {
        return store_post(tx, gid, m);
    };
    let author = bytes(&m.sender);
    let s = stamp_of(m);
    match op {
        Op::React { target, .. } => {
            let t = bytes(target);
            if erased(tx, gid, &t)? {
                return Ok(false);
            }
            match message_meta(tx, gid, &t)? {
                Some((_, ch, _)) if ch != m.channel => Ok(false),
                Some(_) => apply_to_present(tx, gid, m),
                None => {
                    park(tx, gid, &t, m)?;
                    Ok(false)
                }
            }
        }
        Op::Delete { target, moderator } => {
            let t = bytes(target);
            tx.execute(
                "INSERT OR IGNORE INTO guild_tombstones
                    (guild, target, channel, deleted_by, moderator, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![g, t, sql_channel(m.channel), author, *moderator, s.0],
            )?;
            // Deletes of messages this member never saw wait, bounded: past the bound plus a
            // slack (so the pruning sort runs once per PRUNE_SLACK inserts), the oldest go.
            let waiting: i64 = tx.query_row(
                "SELECT COUNT(*) FROM guild_tombstones WHERE guild = ?1 AND NOT erased",
                params![g],
                |r| r.get(0),
            )?;
            if waiting > MAX_PENDING_OPS + PRUNE_SLACK {
                tx.execute(
                    "DELETE FROM guild_tombstones WHERE guild = ?1 AND NOT erased
                        AND (target, deleted_by) IN (
                            SELECT target, deleted_by FROM guild_tombstones
                            WHERE guild = ?1 AND NOT erased ORDER BY at DESC LIMIT -1 OFFSET ?2)",
                    params![g, MAX_PENDING_OPS],
                )?;
            }
            match message_meta(tx, gid, &t)? {
                Some((a, ch, _)) if ch == m.channel && (*moderator || a == author) => {
                    erase(tx, gid, &t)?;
                    tx.execute(
                        "UPDATE guild_tombstones SET erased = 1 WHERE guild = ?1 AND target = ?2",
                        params![g, t],
                    )?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        }
        Op::Edit { .. } | Op::Pin { .. } => {
            let target = match op {
                Op::Edit { target, .. } | Op::Pin { target, .. } => bytes(target),
                _ => Vec::new(),
            };
            if erased(tx, gid, &target)? {
                return Ok(false);
            }
            let present: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM guild_messages WHERE guild = ?1 AND msg_id = ?2)",
                params![g, target],
                |r| r.get(0),
            )?;
            if present {
                apply_to_present(tx, gid, m)
            } else {
                park(tx, gid, &target, m)?;
                Ok(false)
            }
        }
        Op::Thread {
            thread,
            create,
            starter,
            name,
            archived,
            moderator,
        } => {
            let t = bytes(thread);
            if *create {
                let n = tx.execute(
                    "INSERT OR IGNORE INTO guild_threads
                        (guild, thread, channel, starter, name, archived, created_by, created_at,
                         at, device, seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?7, ?8, ?9)",
                    params![
                        g,
                        t,
                        sql_channel(m.channel),
                        starter.as_deref().map(bytes),
                        name.clone().unwrap_or_default(),
                        author,
                        s.0,
                        s.1,
                        s.2
                    ],
                )?;
                if n > 0 {
                    replay_parked(tx, gid, &t, m.channel)?;
                }
                return Ok(n > 0);
            }
            let creator: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT created_by FROM guild_threads WHERE guild = ?1 AND thread = ?2",
                    params![g, t],
                    |r| r.get(0),
                )
                .optional()?;
            match creator {
                Some(c) if *moderator || c == author => {
                    let n = tx.execute(
                        "UPDATE guild_threads SET name = coalesce(?3, name),
                            archived = coalesce(?4, archived), at = ?5, device = ?6, seq = ?7
                         WHERE guild = ?1 AND thread = ?2 AND (?5, ?6, ?7) > (at, device, seq)",
                        params![g, t, name, archived, s.0, s.1, s.2],
                    )?;
                    Ok(n > 0)
                }
                Some(_) => Ok(false),
                None => {
                    park(tx, gid, &t, m)?;
                    Ok(false)
                }
            }
        }
    }
}

/// Inserts a post unless a tombstone, slow mode or its timer says otherwise, then applies the
/// operations that waited for it.
fn store_post(tx: &Transaction<'_>, gid: &GuildId, m: &StoredMessage) -> Result<bool, SyncError> {
    let g = &gid.0[..];
    let id = bytes(&m.id);
    let author = bytes(&m.sender);
    // Deleted before it arrived, by its author or a moderator of its channel.
    let tomb: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM guild_tombstones WHERE guild = ?1 AND target = ?2
            AND channel = ?3 AND (moderator OR deleted_by = ?4))",
        params![g, id, sql_channel(m.channel), author],
        |r| r.get(0),
    )?;
    if tomb {
        tx.execute(
            "UPDATE guild_tombstones SET erased = 1 WHERE guild = ?1 AND target = ?2",
            params![g, id],
        )?;
    }
    if tomb {
        erase(tx, gid, &id)?;
        return Ok(false);
    }
    if m.expires_at.is_some_and(|t| t <= now_ms()) {
        erase(tx, gid, &id)?;
        mark_erased(tx, gid, &id, m.channel)?;
        return Ok(false);
    }
    if m.slow_ms > 0 {
        // Slow mode: of two posts by one author in one place less than the interval apart (by
        // the author's clock), the later one is dropped, whichever arrives first, so members
        // agree.
        let place = params![
            g,
            sql_channel(m.channel),
            author,
            m.thread.as_deref().map(bytes),
            sql(m.sent_at),
            sql(m.slow_ms),
            id
        ];
        let earlier: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM guild_messages WHERE guild = ?1 AND channel = ?2
                AND author = ?3 AND thread IS ?4 AND sent_at <= ?5 AND sent_at > ?5 - ?6
                AND msg_id != ?7)",
            place,
            |r| r.get(0),
        )?;
        if earlier {
            return Ok(false);
        }
        let later: Vec<Vec<u8>> = tx
            .prepare_cached(
                "SELECT msg_id FROM guild_messages WHERE guild = ?1 AND channel = ?2
                    AND author = ?3 AND thread IS ?4 AND sent_at > ?5 AND sent_at < ?5 + ?6
                    AND msg_id != ?7",
            )?
            .query_map(place, |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for l in later {
            erase(tx, gid, &l)?;
        }
    }
    let n = tx.execute(
        "INSERT OR IGNORE INTO guild_messages (guild, channel, msg_id, sender, author, sent_at,
            received_at, text, seq, reply_to, thread, expires_at, mentions_me, has_file)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            g,
            sql_channel(m.channel),
            id,
            bytes(&m.sender_device),
            author,
            sql(m.sent_at),
            sql(m.received_at),
            m.text,
            sql(m.seq),
            m.reply_to.as_deref().map(bytes),
            m.thread.as_deref().map(bytes),
            m.expires_at.map(sql),
            m.mentions_me,
            !m.attachments.is_empty()
        ],
    )?;
    if n == 0 {
        return Ok(false);
    }
    crate::files::db::attach(tx, gid, &id, &m.attachments)?;
    replay_parked(tx, gid, &id, m.channel)?;
    Ok(true)
}

/// Applies, in their order, the operations that waited for `target` (a post or a thread).
fn replay_parked(
    tx: &Transaction<'_>,
    gid: &GuildId,
    target: &[u8],
    channel: u64,
) -> Result<(), SyncError> {
    let parked: Vec<(i64, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT rowid, op FROM guild_pending_ops WHERE guild = ?1 AND target = ?2
             ORDER BY at, device, seq",
        )?
        .query_map(params![&gid.0[..], target], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (rowid, op) in parked {
        tx.execute("DELETE FROM guild_pending_ops WHERE rowid = ?1", [rowid])?;
        if let Ok(pm) = serde_json::from_slice::<ParkedOp>(&op) {
            apply_to_present(tx, gid, &pm.into_message(gid, target, channel))?;
        }
    }
    Ok(())
}

/// An operation waiting for its target, as kept in `guild_pending_ops` (inside the encrypted
/// store).
#[derive(Serialize, serde::Deserialize)]
struct ParkedOp {
    sender: String,
    sender_device: String,
    seq: u64,
    sent_at: u64,
    op: ParkedKind,
}

#[derive(Serialize, serde::Deserialize)]
enum ParkedKind {
    React(String, bool),
    Edit(String),
    Pin(bool),
    Thread {
        name: Option<String>,
        archived: Option<bool>,
        moderator: bool,
    },
}

impl ParkedOp {
    fn into_message(self, gid: &GuildId, target: &[u8], channel: u64) -> StoredMessage {
        let t = hex::encode(target);
        let op = match self.op {
            ParkedKind::React(emoji, add) => Op::React {
                target: t,
                emoji,
                add,
            },
            ParkedKind::Edit(text) => Op::Edit { target: t, text },
            ParkedKind::Pin(pinned) => Op::Pin { target: t, pinned },
            ParkedKind::Thread {
                name,
                archived,
                moderator,
            } => Op::Thread {
                thread: t,
                create: false,
                starter: None,
                name,
                archived,
                moderator,
            },
        };
        StoredMessage {
            guild: hex::encode(gid.0),
            channel,
            sender: self.sender,
            sender_device: self.sender_device,
            seq: self.seq,
            sent_at: self.sent_at,
            op: Some(op),
            ..StoredMessage::default()
        }
    }
}

/// Keeps an operation until its target arrives (bounded: the oldest go first).
fn park(
    tx: &Transaction<'_>,
    gid: &GuildId,
    target: &[u8],
    m: &StoredMessage,
) -> Result<(), SyncError> {
    let kind = match &m.op {
        Some(Op::React { emoji, add, .. }) => ParkedKind::React(emoji.clone(), *add),
        Some(Op::Edit { text, .. }) => ParkedKind::Edit(text.clone()),
        Some(Op::Pin { pinned, .. }) => ParkedKind::Pin(*pinned),
        Some(Op::Thread {
            name,
            archived,
            moderator,
            ..
        }) => ParkedKind::Thread {
            name: name.clone(),
            archived: *archived,
            moderator: *moderator,
        },
        _ => return Ok(()),
    };
    let p = ParkedOp {
        sender: m.sender.clone(),
        sender_device: m.sender_device.clone(),
        seq: m.seq,
        sent_at: m.sent_at,
        op: kind,
    };
    let s = stamp_of(m);
    let json = serde_json::to_vec(&p).unwrap_or_default();
    tx.execute(
        "INSERT INTO guild_pending_ops (guild, target, at, device, seq, op)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![&gid.0[..], target, s.0, s.1, s.2, json],
    )?;
    let waiting: i64 = tx.query_row(
        "SELECT COUNT(*) FROM guild_pending_ops WHERE guild = ?1",
        params![&gid.0[..]],
        |r| r.get(0),
    )?;
    if waiting > MAX_PENDING_OPS + PRUNE_SLACK {
        tx.execute(
            "DELETE FROM guild_pending_ops WHERE guild = ?1 AND rowid NOT IN
                (SELECT rowid FROM guild_pending_ops WHERE guild = ?1 ORDER BY rowid DESC LIMIT ?2)",
            params![&gid.0[..], MAX_PENDING_OPS],
        )?;
    }
    Ok(())
}

/// Applies an edit, pin or thread update whose target is present.
fn apply_to_present(
    tx: &Transaction<'_>,
    gid: &GuildId,
    m: &StoredMessage,
) -> Result<bool, SyncError> {
    let g = &gid.0[..];
    let author = bytes(&m.sender);
    let s = stamp_of(m);
    match &m.op {
        Some(Op::React { target, emoji, add }) => {
            let t = bytes(target);
            // Per user and message: at most MAX_REACTION_KINDS emoji on, and at most
            // MAX_REACTION_ROWS remembered (removed ones too, for last-writer-wins). Only a
            // user past these bounds can see members disagree, about that user's reactions.
            let (on, rows): (i64, i64) = tx.query_row(
                "SELECT COUNT(*) FILTER (WHERE added), COUNT(*) FROM guild_reactions
                 WHERE guild = ?1 AND target = ?2 AND user = ?3 AND emoji != ?4",
                params![g, t, author, emoji],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if (*add && on >= MAX_REACTION_KINDS) || rows >= MAX_REACTION_ROWS {
                return Ok(false);
            }
            let n = tx.execute(
                "INSERT INTO guild_reactions (guild, target, user, emoji, added, at, device, seq,
                    channel)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (guild, target, user, emoji) DO UPDATE SET
                    added = excluded.added, at = excluded.at, device = excluded.device,
                    seq = excluded.seq
                 WHERE (excluded.at, excluded.device, excluded.seq) > (at, device, seq)",
                params![
                    g,
                    t,
                    author,
                    emoji,
                    *add,
                    s.0,
                    s.1,
                    s.2,
                    sql_channel(m.channel)
                ],
            )?;
            Ok(n > 0)
        }
        Some(Op::Edit { target, text }) => {
            let t = bytes(target);
            let row: Option<EditRow> = tx
                .query_row(
                    "SELECT author, text, edited_at, edit_device, edit_seq FROM guild_messages
                     WHERE guild = ?1 AND msg_id = ?2",
                    params![g, t],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((target_author, old, at, dev, seq)) = row else {
                return Ok(false);
            };
            if target_author != author {
                return Ok(false);
            }
            let newer = match (at, dev, seq) {
                (Some(a), Some(d), Some(q)) => s > (a, d, q),
                _ => true,
            };
            if !newer {
                // An older edit that arrived late: history only.
                tx.execute(
                    "INSERT INTO guild_message_edits (guild, msg_id, replaced_at, text)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![g, t, s.0, text],
                )?;
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO guild_message_edits (guild, msg_id, replaced_at, text)
                 VALUES (?1, ?2, ?3, ?4)",
                params![g, t, s.0, old],
            )?;
            tx.execute(
                "DELETE FROM guild_message_edits WHERE guild = ?1 AND msg_id = ?2 AND rowid NOT IN
                    (SELECT rowid FROM guild_message_edits WHERE guild = ?1 AND msg_id = ?2
                     ORDER BY rowid DESC LIMIT ?3)",
                params![g, t, MAX_EDIT_HISTORY],
            )?;
            tx.execute(
                "UPDATE guild_messages SET text = ?3, edited_at = ?4, edit_device = ?5,
                    edit_seq = ?6 WHERE guild = ?1 AND msg_id = ?2",
                params![g, t, text, s.0, s.1, s.2],
            )?;
            Ok(true)
        }
        Some(Op::Pin { target, pinned }) => {
            let t = bytes(target);
            let n = tx.execute(
                "INSERT INTO guild_pins (guild, target, channel, pinned, by, at, device, seq)
                 SELECT ?1, ?2, channel, ?3, ?4, ?5, ?6, ?7 FROM guild_messages
                 WHERE guild = ?1 AND msg_id = ?2 AND channel = ?8
                 ON CONFLICT (guild, target) DO UPDATE SET pinned = excluded.pinned,
                    by = excluded.by, at = excluded.at, device = excluded.device, seq = excluded.seq
                 WHERE (excluded.at, excluded.device, excluded.seq) > (at, device, seq)",
                params![g, t, *pinned, author, s.0, s.1, s.2, sql_channel(m.channel)],
            )?;
            Ok(n > 0)
        }
        Some(Op::Thread {
            thread,
            name,
            archived,
            moderator,
            ..
        }) => {
            let t = bytes(thread);
            let n = tx.execute(
                "UPDATE guild_threads SET name = coalesce(?3, name),
                    archived = coalesce(?4, archived), at = ?5, device = ?6, seq = ?7
                 WHERE guild = ?1 AND thread = ?2 AND (?5, ?6, ?7) > (at, device, seq)
                    AND (?8 OR created_by = ?9)",
                params![g, t, name, archived, s.0, s.1, s.2, *moderator, author],
            )?;
            Ok(n > 0)
        }
        _ => Ok(false),
    }
}

/// Whether `target` was erased here (deleted or expired): operations on it are dropped.
fn erased(tx: &Transaction<'_>, gid: &GuildId, target: &[u8]) -> Result<bool, SyncError> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM guild_tombstones WHERE guild = ?1 AND target = ?2
            AND erased)",
        params![&gid.0[..], target],
        |r| r.get(0),
    )?)
}

/// Remembers that an expired message was erased (by nobody: `deleted_by` empty), so a copy
/// fetched later, and operations on it, are dropped.
fn mark_erased(
    tx: &Transaction<'_>,
    gid: &GuildId,
    target: &[u8],
    channel: u64,
) -> Result<(), SyncError> {
    tx.execute(
        "INSERT OR IGNORE INTO guild_tombstones (guild, target, deleted_by, channel, moderator,
            at, erased) VALUES (?1, ?2, x'', ?3, 1, 0, 1)",
        params![&gid.0[..], target, sql_channel(channel)],
    )?;
    Ok(())
}

/// Empties the envelopes of `target` and of every operation on it.
fn erase_envelopes(tx: &Transaction<'_>, gid: &GuildId, target: &[u8]) -> Result<(), SyncError> {
    tx.execute(
        "UPDATE guild_envelopes SET envelope = x'' WHERE guild = ?1 AND (msg_id = ?2 OR target = ?2)
            AND length(envelope) > 0",
        params![&gid.0[..], target],
    )?;
    Ok(())
}

/// Erases a message and everything about it (see the module documentation).
pub(crate) fn erase(tx: &Transaction<'_>, gid: &GuildId, target: &[u8]) -> Result<(), SyncError> {
    let g = &gid.0[..];
    tx.execute(
        "DELETE FROM guild_messages WHERE guild = ?1 AND msg_id = ?2",
        params![g, target],
    )?;
    for table in [
        "DELETE FROM guild_reactions WHERE guild = ?1 AND target = ?2",
        "DELETE FROM guild_pins WHERE guild = ?1 AND target = ?2",
        "DELETE FROM guild_message_edits WHERE guild = ?1 AND msg_id = ?2",
        "DELETE FROM guild_pending_ops WHERE guild = ?1 AND target = ?2",
        "DELETE FROM guild_files WHERE guild = ?1 AND owner = ?2",
    ] {
        tx.execute(table, params![g, target])?;
    }
    erase_envelopes(tx, gid, target)
}

/// Erases every message whose timer ran out by `now` (at most [`MAX_ERASE_BATCH`]); returns
/// them as (guild, channel, message id), for events.
pub(crate) fn expire(
    tx: &Transaction<'_>,
    now: u64,
) -> Result<Vec<(GuildId, u64, String)>, SyncError> {
    let due: Vec<(Vec<u8>, i64, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT guild, channel, msg_id FROM guild_messages
             WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2",
        )?
        .query_map(params![sql(now), sql(MAX_ERASE_BATCH as u64)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(due.len());
    for (g, ch, id) in due {
        let Ok(g) = <[u8; 32]>::try_from(g.as_slice()) else {
            continue;
        };
        let gid = GuildId(g);
        let channel = u64::from_ne_bytes(ch.to_ne_bytes());
        erase(tx, &gid, &id)?;
        mark_erased(tx, &gid, &id, channel)?;
        out.push((gid, u64::from_ne_bytes(ch.to_ne_bytes()), hex::encode(id)));
    }
    Ok(out)
}

/// The soonest timer still running, ms since the Unix epoch.
pub(crate) fn next_expiry(conn: &rusqlite::Connection) -> Result<Option<u64>, SyncError> {
    let t: Option<i64> = conn
        .prepare_cached("SELECT MIN(expires_at) FROM guild_messages WHERE expires_at IS NOT NULL")?
        .query_row([], |r| r.get(0))?;
    Ok(t.map(unsql))
}

/// Reactions on a message: per emoji, how many and who.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// How many users.
    pub count: usize,
    /// Users (hex root keys), in the order they reacted.
    pub users: Vec<String>,
}

/// Fills in what other messages say about `msgs`: reactions, pins, edit marks.
pub(crate) fn decorate(
    conn: &rusqlite::Connection,
    gid: &GuildId,
    msgs: &mut [StoredMessage],
) -> Result<(), SyncError> {
    let g = &gid.0[..];
    let mut reactions = conn.prepare_cached(
        "SELECT emoji, user FROM guild_reactions WHERE guild = ?1 AND target = ?2
            AND channel = ?3 AND added
         ORDER BY at, device, seq",
    )?;
    let mut pinned =
        conn.prepare_cached("SELECT pinned FROM guild_pins WHERE guild = ?1 AND target = ?2")?;
    let mut edited = conn
        .prepare_cached("SELECT edited_at FROM guild_messages WHERE guild = ?1 AND msg_id = ?2")?;
    for m in msgs {
        let id = bytes(&m.id);
        let mut by: Vec<Reaction> = Vec::new();
        for row in reactions.query_map(params![g, id, sql_channel(m.channel)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })? {
            let (emoji, user) = row?;
            let user = hex::encode(user);
            match by.iter_mut().find(|r| r.emoji == emoji) {
                Some(r) => {
                    r.count += 1;
                    r.users.push(user);
                }
                None => by.push(Reaction {
                    emoji,
                    count: 1,
                    users: vec![user],
                }),
            }
        }
        m.reactions = by;
        m.files = crate::files::db::infos(conn, gid, &id)?;
        m.pinned = pinned
            .query_row(params![g, id], |r| r.get::<_, bool>(0))
            .optional()?
            .unwrap_or(false);
        m.edited_at = edited
            .query_row(params![g, id], |r| r.get::<_, Option<i64>>(0))
            .optional()?
            .flatten()
            .map(unsql);
    }
    Ok(())
}

/// A thread as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Thread {
    /// Its id (hex).
    pub id: String,
    /// The parent channel.
    pub channel: u64,
    /// The message it started from (hex), if any.
    pub starter: Option<String>,
    /// Its name.
    pub name: String,
    /// Archived.
    pub archived: bool,
    /// Creator (hex root key).
    pub created_by: String,
    /// Creator's time, ms.
    pub created_at: u64,
    /// Messages in it.
    pub messages: u64,
    /// The newest message's time, ms (0 if none).
    pub last_at: u64,
}

/// The threads of a channel, newest activity first.
pub(crate) fn threads(
    conn: &rusqlite::Connection,
    gid: &GuildId,
    channel: u64,
) -> Result<Vec<Thread>, SyncError> {
    let g = &gid.0[..];
    let rows = conn
        .prepare_cached(
            "SELECT t.thread, t.starter, t.name, t.archived, t.created_by, t.created_at,
                (SELECT COUNT(*) FROM guild_messages m WHERE m.guild = t.guild AND m.thread = t.thread),
                (SELECT MAX(sent_at) FROM guild_messages m WHERE m.guild = t.guild AND m.thread = t.thread)
             FROM guild_threads t WHERE t.guild = ?1 AND t.channel = ?2",
        )?
        .query_map(params![g, sql_channel(channel)], |r| {
            Ok(Thread {
                id: hex::encode(r.get::<_, Vec<u8>>(0)?),
                channel,
                starter: r.get::<_, Option<Vec<u8>>>(1)?.map(hex::encode),
                name: r.get(2)?,
                archived: r.get(3)?,
                created_by: hex::encode(r.get::<_, Vec<u8>>(4)?),
                created_at: unsql(r.get(5)?),
                messages: unsql(r.get(6)?),
                last_at: r.get::<_, Option<i64>>(7)?.map_or(0, unsql),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = rows;
    rows.sort_by_key(|t| std::cmp::Reverse(t.last_at.max(t.created_at)));
    Ok(rows)
}

/// A thread's id, channel and state, if this member knows it.
pub(crate) fn thread(
    conn: &rusqlite::Connection,
    gid: &GuildId,
    thread: &[u8],
) -> Result<Option<(u64, bool, Vec<u8>)>, SyncError> {
    Ok(conn
        .prepare_cached(
            "SELECT channel, archived, created_by FROM guild_threads WHERE guild = ?1 AND thread = ?2",
        )?
        .query_row(params![&gid.0[..], thread], |r| {
            Ok((
                u64::from_ne_bytes(r.get::<_, i64>(0)?.to_ne_bytes()),
                r.get(1)?,
                r.get(2)?,
            ))
        })
        .optional()?)
}

/// The pinned messages' ids of a channel, most recently pinned first.
pub(crate) fn pins(
    conn: &rusqlite::Connection,
    gid: &GuildId,
    channel: u64,
) -> Result<Vec<Vec<u8>>, SyncError> {
    Ok(conn
        .prepare_cached(
            "SELECT target FROM guild_pins WHERE guild = ?1 AND channel = ?2 AND pinned
             ORDER BY at DESC",
        )?
        .query_map(params![&gid.0[..], sql_channel(channel)], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// The author (root key), channel and thread of a stored message.
pub(crate) fn message_meta(
    conn: &rusqlite::Connection,
    gid: &GuildId,
    msg: &[u8],
) -> Result<Option<Meta>, SyncError> {
    Ok(conn
        .prepare_cached(
            "SELECT author, channel, thread FROM guild_messages WHERE guild = ?1 AND msg_id = ?2",
        )?
        .query_row(params![&gid.0[..], msg], |r| {
            Ok((
                r.get(0)?,
                u64::from_ne_bytes(r.get::<_, i64>(1)?.to_ne_bytes()),
                r.get(2)?,
            ))
        })
        .optional()?)
}

/// When `author` last posted in `channel` (and `thread`), by their clock, ms.
pub(crate) fn last_post_at(
    conn: &rusqlite::Connection,
    gid: &GuildId,
    channel: u64,
    thread: Option<&[u8]>,
    author: &[u8],
) -> Result<Option<u64>, SyncError> {
    let t: Option<i64> = conn
        .prepare_cached(
            "SELECT MAX(sent_at) FROM guild_messages WHERE guild = ?1 AND channel = ?2
             AND author = ?3 AND thread IS ?4",
        )?
        .query_row(
            params![&gid.0[..], sql_channel(channel), author, thread],
            |r| r.get(0),
        )?;
    Ok(t.map(unsql))
}

/// Mentions of this member not read yet, per channel: read state is per device
/// (`guild_read_state`).
pub(crate) fn unread_mentions(
    conn: &rusqlite::Connection,
    gid: &GuildId,
) -> Result<Vec<(u64, u64)>, SyncError> {
    Ok(conn
        .prepare_cached(
            "SELECT m.channel, COUNT(*) FROM guild_messages m
             LEFT JOIN guild_read_state r ON r.guild = m.guild AND r.channel = m.channel
             WHERE m.guild = ?1 AND m.mentions_me AND m.sent_at > coalesce(r.read_at, 0)
             GROUP BY m.channel",
        )?
        .query_map(params![&gid.0[..]], |r| {
            Ok((
                u64::from_ne_bytes(r.get::<_, i64>(0)?.to_ne_bytes()),
                unsql(r.get(1)?),
            ))
        })?
        .collect::<Result<_, _>>()?)
}

/// Marks a channel read up to `at` (ms) on this device.
pub(crate) fn mark_read(
    conn: &rusqlite::Connection,
    gid: &GuildId,
    channel: u64,
    at: u64,
) -> Result<(), SyncError> {
    conn.execute(
        "INSERT INTO guild_read_state (guild, channel, read_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (guild, channel) DO UPDATE SET read_at = max(read_at, excluded.read_at)",
        params![&gid.0[..], sql_channel(channel), sql(at)],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::store::Db;
    use proptest::prelude::*;
    use securecomm_noise::secret::Secret32;

    #[test]
    fn stamps_order_by_time_then_device_then_seq() {
        let a: Stamp = (5, vec![1], 9);
        let b: Stamp = (5, vec![2], 1);
        let c: Stamp = (6, vec![0], 0);
        assert!(a < b && b < c);
    }

    const G: GuildId = GuildId([7; 32]);

    /// A message from `user` (1..=3; user 1 moderates) with `seq` on that user's one device.
    fn msg(user: u8, seq: u64, at: u64, op: Option<Op>, text: &str) -> StoredMessage {
        StoredMessage {
            guild: hex::encode(G.0),
            channel: 9,
            id: hex::encode([user, seq as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            sender_device: hex::encode([user + 100; 32]),
            seq,
            sender: hex::encode([user; 32]),
            sent_at: at,
            received_at: at,
            text: text.to_owned(),
            op,
            ..StoredMessage::default()
        }
    }

    fn id(user: u8, seq: u64) -> String {
        hex::encode([user, seq as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    }

    /// Applies `msgs` in order to a fresh store (each with its own envelope) and returns what a
    /// member sees: posts with text and edit mark, reactions, pins, threads.
    fn state(msgs: &[StoredMessage]) -> Vec<String> {
        let mut db = Db::open_in_memory(&Secret32::from_bytes([1; 32])).unwrap();
        let tx = db.conn_mut().transaction().unwrap();
        for m in msgs {
            tx.execute(
                "INSERT OR IGNORE INTO guild_envelopes (guild, sender, seq, sent_at, envelope,
                    msg_id) VALUES (?1, ?2, ?3, ?4, x'01', ?5)",
                params![
                    &G.0[..],
                    bytes(&m.sender_device),
                    sql(m.seq),
                    sql(m.sent_at),
                    bytes(&m.id)
                ],
            )
            .unwrap();
            apply(&tx, &G, m, true).unwrap();
        }
        tx.commit().unwrap();
        let c = db.conn();
        let mut out = Vec::new();
        let mut q = c
            .prepare("SELECT hex(msg_id), text, edited_at IS NOT NULL FROM guild_messages ORDER BY msg_id")
            .unwrap();
        for r in q
            .query_map([], |r| {
                Ok(format!(
                    "post {} {:?} {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?
                ))
            })
            .unwrap()
        {
            out.push(r.unwrap());
        }
        let mut q = c
            .prepare("SELECT hex(target), hex(user), emoji FROM guild_reactions WHERE added ORDER BY 1, 2, 3")
            .unwrap();
        for r in q
            .query_map([], |r| {
                Ok(format!(
                    "react {} {} {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?
                ))
            })
            .unwrap()
        {
            out.push(r.unwrap());
        }
        let mut q = c
            .prepare("SELECT hex(target) FROM guild_pins WHERE pinned ORDER BY 1")
            .unwrap();
        for r in q.query_map([], |r| r.get::<_, String>(0)).unwrap() {
            out.push(format!("pin {}", r.unwrap()));
        }
        let mut q = c
            .prepare("SELECT hex(thread), name, archived FROM guild_threads ORDER BY 1")
            .unwrap();
        for r in q
            .query_map([], |r| {
                Ok(format!(
                    "thread {} {:?} {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?
                ))
            })
            .unwrap()
        {
            out.push(r.unwrap());
        }
        out
    }

    /// A random history: three users post, react, edit, delete, pin and run a thread.
    fn history() -> impl Strategy<Value = Vec<StoredMessage>> {
        proptest::collection::vec((1u8..=3, 0u8..8, 0u8..4, any::<bool>()), 1..40).prop_map(|ops| {
            let mut seqs = [0u64; 4];
            let mut out: Vec<StoredMessage> = Vec::new();
            for (i, (user, kind, pick, flag)) in ops.into_iter().enumerate() {
                let u = usize::from(user);
                seqs[u] += 1;
                let seq = seqs[u];
                let at = 1_000 + (i as u64 / 2) * 10; // ties on purpose
                let posts: Vec<&StoredMessage> = out.iter().filter(|m| m.op.is_none()).collect();
                let target = posts
                    .get(usize::from(pick) % posts.len().max(1))
                    .map(|m| m.id.clone());
                let op = match (kind, target) {
                    (0 | 1, _) | (_, None) => None,
                    (2, Some(t)) => Some(Op::React {
                        target: t,
                        emoji: ["👍", "🎉"][usize::from(pick % 2)].into(),
                        add: flag,
                    }),
                    (3, Some(t)) => Some(Op::Edit {
                        target: t,
                        text: format!("edit {i}"),
                    }),
                    (4, Some(t)) => Some(Op::Delete {
                        target: t,
                        moderator: user == 1,
                    }),
                    (5, Some(t)) => Some(Op::Pin {
                        target: t,
                        pinned: flag,
                    }),
                    (6, _) => Some(Op::Thread {
                        thread: id(1, 1),
                        create: false,
                        starter: None,
                        name: Some(format!("renamed {i}")),
                        archived: Some(flag),
                        moderator: user == 1,
                    }),
                    (_, Some(_)) => Some(Op::Thread {
                        thread: id(user, seq),
                        create: true,
                        starter: None,
                        name: Some(format!("thread {i}")),
                        archived: None,
                        moderator: user == 1,
                    }),
                };
                let text = if op.is_none() {
                    format!("post {i}")
                } else {
                    String::new()
                };
                out.push(msg(user, seq, at, op, &text));
            }
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every member ends in the same state whatever order the messages arrive in.
        #[test]
        fn members_converge_whatever_the_delivery_order(
            h in history(),
            perm in any::<proptest::sample::Index>(),
            seed in any::<u64>(),
        ) {
            let reference = state(&h);
            // A few reorderings: reversed, rotated, and a seeded shuffle.
            let mut rev = h.clone();
            rev.reverse();
            prop_assert_eq!(&state(&rev), &reference);
            let mut rot = h.clone();
            rot.rotate_left(perm.index(h.len()));
            prop_assert_eq!(&state(&rot), &reference);
            let mut shuf = h.clone();
            let mut s = seed | 1;
            for i in (1..shuf.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuf.swap(i, (s % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(&state(&shuf), &reference);
        }
    }

    #[test]
    fn deletes_by_others_need_manage_messages_and_erase_everything() {
        let post = msg(2, 1, 10, None, "secret");
        let edit = msg(
            2,
            2,
            11,
            Some(Op::Edit {
                target: id(2, 1),
                text: "more secret".into(),
            }),
            "",
        );
        let react = msg(
            3,
            1,
            12,
            Some(Op::React {
                target: id(2, 1),
                emoji: "👍".into(),
                add: true,
            }),
            "",
        );
        let by_user = msg(
            3,
            2,
            13,
            Some(Op::Delete {
                target: id(2, 1),
                moderator: false,
            }),
            "",
        );
        let by_mod = msg(
            1,
            1,
            14,
            Some(Op::Delete {
                target: id(2, 1),
                moderator: true,
            }),
            "",
        );
        // A non-moderator's delete of someone else's message does nothing.
        let s = state(&[post.clone(), edit.clone(), react.clone(), by_user.clone()]);
        assert!(s.iter().any(|l| l.contains("more secret")), "{s:?}");
        // A moderator's delete erases the post, its reactions and its edit history, in any order.
        for order in [
            vec![post.clone(), edit.clone(), react.clone(), by_mod.clone()],
            vec![by_mod.clone(), react.clone(), edit.clone(), post.clone()],
        ] {
            assert!(state(&order).is_empty(), "{:?}", state(&order));
        }
    }

    #[test]
    fn reactions_and_waiting_deletes_are_bounded() {
        let mut ops = vec![msg(2, 1, 10, None, "react to me")];
        for i in 0..25u8 {
            ops.push(msg(
                3,
                u64::from(i) + 1,
                20 + u64::from(i),
                Some(Op::React {
                    target: id(2, 1),
                    emoji: format!("e{i}"),
                    add: true,
                }),
                "",
            ));
        }
        let s = state(&ops);
        assert_eq!(
            s.iter().filter(|l| l.starts_with("react")).count(),
            20,
            "{s:?}"
        );

        let mut db = Db::open_in_memory(&Secret32::from_bytes([1; 32])).unwrap();
        let tx = db.conn_mut().transaction().unwrap();
        for i in 0..(MAX_PENDING_OPS + PRUNE_SLACK + 50) as u64 {
            let mut target = [9u8; 16];
            target[..8].copy_from_slice(&i.to_be_bytes());
            let m = StoredMessage {
                seq: i + 1,
                sent_at: i,
                ..msg(
                    1,
                    1,
                    i,
                    Some(Op::Delete {
                        target: hex::encode(target),
                        moderator: true,
                    }),
                    "",
                )
            };
            apply(&tx, &G, &m, true).unwrap();
        }
        let n: i64 = tx
            .query_row("SELECT COUNT(*) FROM guild_tombstones", [], |r| r.get(0))
            .unwrap();
        assert!(
            (MAX_PENDING_OPS..=MAX_PENDING_OPS + PRUNE_SLACK).contains(&n),
            "{n}"
        );
    }

    #[test]
    fn edits_only_from_the_author_and_the_newest_wins() {
        let post = msg(2, 1, 10, None, "v1");
        let forged = msg(
            3,
            1,
            20,
            Some(Op::Edit {
                target: id(2, 1),
                text: "forged".into(),
            }),
            "",
        );
        let older = msg(
            2,
            2,
            11,
            Some(Op::Edit {
                target: id(2, 1),
                text: "v2".into(),
            }),
            "",
        );
        let newer = msg(
            2,
            3,
            12,
            Some(Op::Edit {
                target: id(2, 1),
                text: "v3".into(),
            }),
            "",
        );
        for order in [
            vec![post.clone(), forged.clone(), older.clone(), newer.clone()],
            vec![newer.clone(), older.clone(), forged.clone(), post.clone()],
        ] {
            let s = state(&order);
            assert_eq!(s.len(), 1);
            assert!(s[0].contains("\"v3\" true"), "{s:?}");
        }
    }
}
