//! Local full-text search over the guild messages in the encrypted store (issue 10, point 7).
//!
//! The index is an FTS5 table, `guild_messages_fts`, with external content: it holds only the
//! inverted index and reads the text from `guild_messages` (migration 13 in `store::db`).
//! Triggers keep it in step with every INSERT, UPDATE of the text and DELETE, so nothing else
//! calls into this module to index or unindex. Like every other page of the database, the index
//! is encrypted by SQLCipher; FTS5's `secure-delete` is on, so the terms of a deleted or edited
//! message are erased from the index pages rather than left as dead entries until a merge.
//!
//! # Query syntax
//!
//! The user's text is never passed to FTS5 as a query expression. It is cut to
//! [`MAX_QUERY_CHARS`] characters and split into words (runs of letters and digits, everything
//! else separates); the first [`MAX_TERMS`] words become quoted FTS5 strings joined by AND, so
//! `"`, `*`, `NEAR(`, `OR`, `-`, `^` and unbalanced quotes are plain separators or words, and no
//! input is an FTS5 syntax error. The last word matches as a prefix (search-as-you-type) when
//! the text does not end with a separator and the word has at least [`MIN_PREFIX_CHARS`]
//! characters. Matching folds case and removes diacritics on both sides (`cafe` finds `Café`).
//! Text with no word at all (`"!!"`) matches nothing; empty text lists the newest messages that
//! pass the filters.
//!
//! # Filters and order, inside the index
//!
//! The index has a second column, `meta`, of tokens for the filters: guild, channel, author,
//! author within a channel, author within a guild (the whole stored values in hex, so exact),
//! `has_file`, and the day and week of `sent_at`.
//! A filter is one more term ANDed into the FTS5 expression, so FTS5 intersects doclists and no
//! message row is read for a message the filters reject. A time range becomes the day (or week)
//! buckets it covers, ORed, when there are at most [`MAX_TIME_TOKENS`] of them; the exact bounds
//! are then checked on the rows of those candidates only.
//!
//! Hits are walked newest-stored first (descending row id, which FTS5 serves from its doclists
//! without sorting), so a page of 50 stops after 50 matches. Relevance is BM25 over the newest
//! [`MAX_RANKED`] matches (an explicit bound: ranking all 300,000 matches of a common word costs
//! hundreds of milliseconds); older matches are reached by narrowing the query or by
//! [`Order::Newest`] paging.
//!
//! # Bounds
//!
//! At most [`MAX_LIMIT`] hits per page, pages at most [`MAX_OFFSET`] hits deep, at most
//! [`MAX_RANKED`] matches ranked, snippets of at most [`SNIPPET_TOKENS`] words computed for the
//! page only.
//!
//! Not indexed: direct messages (their own table, no index yet), file names and contents
//! (issue 11), nicknames and channel names (resolved from the guild document, not stored with
//! the message).

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params, params_from_iter};
use thiserror::Error;

/// Longest query text considered, in characters; the rest is ignored.
pub const MAX_QUERY_CHARS: usize = 256;
/// Most words of a query; the rest are ignored.
pub const MAX_TERMS: usize = 16;
/// Shortest last word that matches as a prefix (a one-letter prefix would merge the lists of
/// thousands of words).
pub const MIN_PREFIX_CHARS: usize = 2;
/// Most hits per page.
pub const MAX_LIMIT: usize = 200;
/// Deepest page start.
pub const MAX_OFFSET: usize = 10_000;
/// Most words in a snippet (FTS5 allows up to 64).
pub const SNIPPET_TOKENS: i64 = 24;
/// Characters of a message shown when the query has no words (no snippet to compute).
pub const PREVIEW_CHARS: i64 = 160;
/// Relevance ranks the newest this many matches (BM25 for every match of a word found in a
/// third of a million messages would take longer than the search is allowed to).
pub const MAX_RANKED: usize = 5_000;
/// Most day (then week) buckets a time range is turned into as index tokens; wider ranges are
/// checked on the rows only.
pub const MAX_TIME_TOKENS: u64 = 64;
const DAY_MS: u64 = 86_400_000;
/// Marks the start of a matched word in [`Hit::snippet`].
pub const MARK_OPEN: char = '\u{2}';
/// Marks the end of a matched word in [`Hit::snippet`].
pub const MARK_CLOSE: char = '\u{3}';
/// Marks text left out of a snippet.
pub const ELLIPSIS: &str = "\u{2026}";

/// Why a search failed. Never the query text: every input is a valid query.
#[derive(Debug, Error)]
pub enum SearchError {
    /// SQLite failed reading the index or the messages.
    #[error("search failed in the database: {0}")]
    Db(#[from] rusqlite::Error),
}

/// Order of the hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Best match first (FTS5's BM25 over the text) among the newest [`MAX_RANKED`] matches;
    /// the newest first when the query has no words.
    #[default]
    Relevance,
    /// Most recently stored first. For messages received live that is the order they were
    /// sent in; messages fetched later by history sync count as new when they arrive (storage
    /// order is what the index walks without reading rows; see the module docs).
    Newest,
}

/// A search. Every filter is optional; filters combine with AND.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// What the user typed (see the module docs for how it is read).
    pub text: String,
    /// Only this guild.
    pub guild: Option<[u8; 32]>,
    /// Only this channel (its id as stored).
    pub channel: Option<u64>,
    /// Only messages by this user (root key).
    pub author: Option<[u8; 32]>,
    /// Only messages sent at or after this time, ms since the Unix epoch.
    pub after: Option<u64>,
    /// Only messages sent before this time, ms since the Unix epoch.
    pub before: Option<u64>,
    /// Only messages with (true) or without (false) a file. Issue 11 (files) sets the flag;
    /// until then no message has one.
    pub has_file: Option<bool>,
    /// Order of the hits.
    pub order: Order,
    /// Hits per page, clamped to 1..=[`MAX_LIMIT`].
    pub limit: usize,
    /// Hits to skip (paging), clamped to [`MAX_OFFSET`].
    pub offset: usize,
}

/// One message found.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Guild id.
    pub guild: Vec<u8>,
    /// Channel id.
    pub channel: u64,
    /// Message id.
    pub msg_id: Vec<u8>,
    /// Sending device.
    pub device: Vec<u8>,
    /// The sending device's sequence number in the guild (with `sent_at` and `device`, a
    /// history cursor that opens the channel at this message).
    pub seq: u64,
    /// Author (user root key).
    pub author: Vec<u8>,
    /// Sender's clock, ms since the Unix epoch.
    pub sent_at: u64,
    /// Whether the message carries a file.
    pub has_file: bool,
    /// The best part of the text, matched words between [`MARK_OPEN`] and [`MARK_CLOSE`],
    /// cuts marked with [`ELLIPSIS`]; the start of the text when the query has no words.
    pub snippet: String,
    /// BM25 score (lower is better; 0 when the query has no words).
    pub rank: f64,
}

/// The FTS5 expression for `text`: its words, quoted, ANDed, the last one a prefix (see the
/// module docs). `None` when the text has no word.
pub fn fts_expression(text: &str) -> Option<String> {
    let bounded: String = text.chars().take(MAX_QUERY_CHARS).collect();
    let mut all = bounded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty());
    let words: Vec<&str> = all.by_ref().take(MAX_TERMS).collect();
    let last = words.len().checked_sub(1)?;
    // Typing "foo" may go on to "food"; "foo " (or a word followed by ignored ones) is finished.
    let open_end =
        all.next().is_none() && bounded.chars().last().is_some_and(char::is_alphanumeric);
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        // Words hold letters and digits only; doubling quotes keeps that safe if it changes.
        out.push('"');
        out.push_str(&w.replace('"', "\"\""));
        out.push('"');
        if i == last && open_end && w.chars().count() >= MIN_PREFIX_CHARS {
            out.push('*');
        }
    }
    Some(out)
}

/// The `meta` token for a filter, as migration 13 builds it: a tag letter, then the hex of
/// the stored value (SQLite's `hex()` of a blob, or of an integer's decimal text), or the
/// number itself for days and weeks.
fn meta_token(tag: char, value: &[u8]) -> String {
    format!("{tag}{}", hex::encode_upper(value))
}

/// The day or week buckets covering `[after, before)`, as `meta` tokens ORed, when there are
/// at most [`MAX_TIME_TOKENS`] of them.
fn time_tokens(after: u64, before: u64) -> Option<String> {
    let last = before.checked_sub(1)?;
    for (tag, span) in [('d', DAY_MS), ('w', 7 * DAY_MS)] {
        let (first, end) = (after / span, last / span);
        if end < first {
            return None;
        }
        if end - first < MAX_TIME_TOKENS {
            let terms: Vec<String> = (first..=end).map(|n| format!("\"{tag}{n}\"")).collect();
            return Some(format!("meta : ({})", terms.join(" OR ")));
        }
    }
    None
}

/// Runs `q` against the store. See the module docs for the query syntax and bounds.
pub fn search(conn: &Connection, q: &Query) -> Result<Vec<Hit>, SearchError> {
    let limit = q.limit.clamp(1, MAX_LIMIT);
    let offset = q.offset.min(MAX_OFFSET);
    let words = if q.text.trim().is_empty() {
        None
    } else {
        match fts_expression(&q.text) {
            Some(e) => Some(e),
            None => return Ok(Vec::new()),
        }
    };
    if let (Some(a), Some(b)) = (q.after, q.before)
        && a >= b
    {
        return Ok(Vec::new());
    }

    // Filters as index tokens (exact: whole values, not prefixes), times as day or week
    // buckets (coarse: the exact bounds are checked on the rows).
    let mut expr: Vec<String> = Vec::new();
    if let Some(w) = &words {
        expr.push(format!("text : ({w})"));
    }
    // A guild's token lists half the store in a two-guild store; with a channel (random ids,
    // in practice one guild's) the guild is checked on the few rows left instead.
    let mut exact = String::new();
    let mut args: Vec<SqlValue> = Vec::new();
    if let Some(g) = q.guild {
        if q.channel.is_some() {
            args.push(SqlValue::Blob(g.to_vec()));
            exact.push_str(&format!(" AND m.guild = ?{}", args.len()));
        } else {
            expr.push(format!("meta : \"{}\"", meta_token('g', &g)));
        }
    }
    // An author within a channel (or a guild) is one token with a short list, rather than
    // two long lists to intersect (measured: p50 57 ms for a common word in one channel by one
    // author over 1,000,000 messages).
    let channel = q
        .channel
        .map(|c| i64::from_ne_bytes(c.to_ne_bytes()).to_string().into_bytes());
    match (channel, q.author, q.guild) {
        (Some(c), Some(a), _) => {
            expr.push(format!(
                "meta : \"{}\"",
                meta_token('p', &[&c[..], &a[..]].concat())
            ));
        }
        (Some(c), None, _) => expr.push(format!("meta : \"{}\"", meta_token('c', &c))),
        (None, Some(a), Some(g)) => {
            expr.retain(|t| !t.starts_with("meta : \"g"));
            expr.push(format!(
                "meta : \"{}\"",
                meta_token('q', &[&g[..], &a[..]].concat())
            ));
        }
        (None, Some(a), None) => expr.push(format!("meta : \"{}\"", meta_token('a', &a))),
        (None, None, _) => {}
    }
    if let Some(f) = q.has_file {
        expr.push(format!("meta : \"f{}\"", u8::from(f)));
    }
    if let (Some(a), Some(b)) = (q.after, q.before)
        && let Some(t) = time_tokens(a, b)
    {
        expr.push(t);
    }

    let mut times = exact;
    if let Some(t) = q.after {
        args.push(SqlValue::Integer(sql_time(t)));
        times.push_str(&format!(" AND m.sent_at >= ?{}", args.len()));
    }
    if let Some(t) = q.before {
        args.push(SqlValue::Integer(sql_time(t)));
        times.push_str(&format!(" AND m.sent_at < ?{}", args.len()));
    }
    // Rows are read only to check exact times (and the guild, with a channel).
    let join = if times.is_empty() {
        ""
    } else {
        "JOIN guild_messages m ON m.rorder = guild_messages_fts.rowid"
    };
    args.push(SqlValue::Integer(limit as i64));
    let lim = args.len();
    args.push(SqlValue::Integer(offset as i64));
    let off = args.len();
    let expr = (!expr.is_empty()).then(|| expr.join(" AND "));
    if let Some(e) = &expr {
        args.push(SqlValue::Text(e.clone()));
    }
    let m = args.len();
    // BM25 over the text only (weight 0 for the filter tokens).
    let score = if words.is_some() {
        "bm25(guild_messages_fts, 1.0, 0.0)"
    } else {
        "0.0"
    };
    let sql = match (&expr, q.order) {
        (Some(_), Order::Relevance) if words.is_some() => format!(
            "SELECT r, score FROM (
                SELECT guild_messages_fts.rowid AS r, {score} AS score FROM guild_messages_fts {join}
                WHERE guild_messages_fts MATCH ?{m}{times}
                ORDER BY guild_messages_fts.rowid DESC LIMIT {MAX_RANKED})
             ORDER BY score, r DESC LIMIT ?{lim} OFFSET ?{off}"
        ),
        (Some(_), _) => format!(
            "SELECT guild_messages_fts.rowid, {score} FROM guild_messages_fts {join}
             WHERE guild_messages_fts MATCH ?{m}{times}
             ORDER BY guild_messages_fts.rowid DESC LIMIT ?{lim} OFFSET ?{off}"
        ),
        (None, _) => format!(
            "SELECT m.rorder, 0.0 FROM guild_messages m WHERE 1{times}
             ORDER BY m.rorder DESC LIMIT ?{lim} OFFSET ?{off}"
        ),
    };
    let page: Vec<(i64, f64)> = conn
        .prepare_cached(&sql)?
        .query_map(params_from_iter(args.iter()), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;

    // The rows and snippets of this page only.
    const COLUMNS: &str =
        "m.guild, m.channel, m.msg_id, m.sender, m.seq, m.author, m.sent_at, m.has_file";
    let mut hits = Vec::with_capacity(page.len());
    for (rorder, rank) in page {
        let row = |r: &rusqlite::Row<'_>| {
            Ok(Hit {
                guild: r.get(0)?,
                channel: u64::from_ne_bytes(r.get::<_, i64>(1)?.to_ne_bytes()),
                msg_id: r.get(2)?,
                device: r.get(3)?,
                seq: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                author: r.get(5)?,
                sent_at: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                has_file: r.get::<_, i64>(7)? != 0,
                snippet: r.get(8)?,
                rank,
            })
        };
        let hit = match &words {
            Some(w) => conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS}, snippet(guild_messages_fts, 0, ?3, ?4, ?5, ?6)
                     FROM guild_messages_fts JOIN guild_messages m ON m.rorder = guild_messages_fts.rowid
                     WHERE guild_messages_fts MATCH ?1 AND guild_messages_fts.rowid = ?2"
                ))?
                .query_row(
                    params![
                        format!("text : ({w})"),
                        rorder,
                        MARK_OPEN.to_string(),
                        MARK_CLOSE.to_string(),
                        ELLIPSIS,
                        SNIPPET_TOKENS
                    ],
                    row,
                )?,
            None => conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS}, substr(m.text, 1, ?2) FROM guild_messages m WHERE m.rorder = ?1"
                ))?
                .query_row(params![rorder, PREVIEW_CHARS], row)?,
        };
        hits.push(hit);
    }
    Ok(hits)
}

fn sql_time(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Parses a time for `--after` / `--before`: `YYYY-MM-DD` (midnight UTC), RFC 3339
/// (`2026-11-27T05:40:00Z`, `2026-11-27T06:40:00.250+01:00`; a space may replace the `T`), or
/// milliseconds since the Unix epoch. Returns milliseconds since the Unix epoch.
pub fn parse_time_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "expected a date as YYYY-MM-DD, RFC 3339 (2026-11-27T05:40:00Z) or ms since 1970, got {s:?}"
        )
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.len() > 8 {
        return s.parse().map_err(|_| bad());
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = b.get(r).ok_or_else(bad)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        std::str::from_utf8(part)
            .ok()
            .and_then(|p| p.parse().ok())
            .ok_or_else(bad)
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad());
    }
    let mut ms = days_from_civil(year, month, day) * 86_400_000;
    if b.len() > 10 {
        if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
            return Err(bad());
        }
        let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        // 60 is a leap second; it counts as the next second.
        if h > 23 || mi > 59 || sec > 60 {
            return Err(bad());
        }
        ms += (h * 3600 + mi * 60 + sec) * 1000;
        let mut i = 19;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return Err(bad());
            }
            // Milliseconds: the first three digits, padded ("5" is 500 ms).
            let digits = &b[start..i];
            ms += (0..3).fold(0, |acc, k| {
                acc * 10 + digits.get(k).map_or(0, |d| i64::from(d - b'0'))
            });
        }
        match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => {}
            Some(&sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
                let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                if oh > 23 || om > 59 {
                    return Err(bad());
                }
                let offset = (oh * 60 + om) * 60_000;
                ms += if sign == b'+' { -offset } else { offset };
            }
            _ => return Err(bad()),
        }
    }
    u64::try_from(ms).map_err(|_| format!("{s:?} is before 1970"))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (years 0..=9999 here).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Count whole years, then months, from 1970: at most 8,000 iterations for year 0.
    let mut days = 0;
    if y >= 1970 {
        for yy in 1970..y {
            days += if is_leap(yy) { 366 } else { 365 };
        }
    } else {
        for yy in y..1970 {
            days -= if is_leap(yy) { 366 } else { 365 };
        }
    }
    for mm in 1..m {
        days += days_in_month(y, mm);
    }
    days + d - 1
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use securecomm_noise::secret::Secret32;

    use super::*;
    use crate::store::Db;

    const G1: [u8; 32] = [1; 32];
    const G2: [u8; 32] = [2; 32];
    const ALICE: [u8; 32] = [0xa; 32];
    const BOB: [u8; 32] = [0xb; 32];

    fn db() -> Db {
        Db::open_in_memory(&Secret32::from_bytes([9; 32])).unwrap()
    }

    fn insert(
        db: &Db,
        guild: [u8; 32],
        channel: u64,
        author: [u8; 32],
        sent_at: u64,
        text: &str,
    ) -> i64 {
        let n: i64 = db
            .conn()
            .query_row("SELECT COUNT(*) FROM guild_messages", [], |r| r.get(0))
            .unwrap();
        db.conn()
            .execute(
                "INSERT INTO guild_messages (guild, channel, msg_id, sender, author, sent_at, received_at, text, seq)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?5, ?6, ?7)",
                params![
                    &guild[..],
                    i64::from_ne_bytes(channel.to_ne_bytes()),
                    (n as u64).to_be_bytes().to_vec(),
                    &author[..],
                    sent_at as i64,
                    text,
                    n + 1
                ],
            )
            .unwrap();
        db.conn().last_insert_rowid()
    }

    fn texts(db: &Db, q: &Query) -> Vec<String> {
        search(db.conn(), q)
            .unwrap()
            .into_iter()
            .map(|h| h.snippet.replace([MARK_OPEN, MARK_CLOSE], ""))
            .collect()
    }

    fn q(text: &str) -> Query {
        Query {
            text: text.into(),
            limit: 50,
            ..Query::default()
        }
    }

    fn sample() -> Db {
        let db = db();
        insert(&db, G1, 1, ALICE, 1_000, "Le café est fermé aujourd'hui");
        insert(&db, G1, 1, BOB, 2_000, "the deployment failed again");
        insert(&db, G1, 2, ALICE, 3_000, "deploying the new relay tonight");
        insert(&db, G2, u64::MAX - 4, BOB, 4_000, "relay relay relay");
        db
    }

    #[test]
    fn fts5_and_secure_delete_are_available() {
        let db = db();
        let version: String = db
            .conn()
            .query_row("SELECT sqlite_version()", [], |r| r.get(0))
            .unwrap();
        let fts5: i64 = db
            .conn()
            .query_row("SELECT sqlite_compileoption_used('ENABLE_FTS5')", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(fts5, 1, "FTS5 missing from SQLite {version}");
        let secure: i64 = db
            .conn()
            .query_row(
                "SELECT v FROM guild_messages_fts_config WHERE k = 'secure-delete'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(secure, 1);
    }

    #[test]
    fn prefix_case_and_diacritics() {
        let db = sample();
        assert_eq!(texts(&db, &q("CAFE")), ["Le café est fermé aujourd'hui"]);
        assert_eq!(texts(&db, &q("fermé")), ["Le café est fermé aujourd'hui"]);
        // The last word is a prefix while typing...
        assert_eq!(texts(&db, &q("deploy")).len(), 2);
        // ...and not once finished.
        assert!(texts(&db, &q("deploy ")).is_empty());
        // Words combine with AND.
        assert_eq!(
            texts(&db, &q("deployment again")),
            ["the deployment failed again"]
        );
        assert!(texts(&db, &q("deployment tonight")).is_empty());
        let hits = search(db.conn(), &q("relay")).unwrap();
        assert_eq!(hits.len(), 2);
        // BM25: three mentions in a short text rank first.
        assert_eq!(
            hits[0].snippet,
            "\u{2}relay\u{3} \u{2}relay\u{3} \u{2}relay\u{3}"
        );
        assert!(hits[0].rank < hits[1].rank);
        assert_eq!(hits[0].channel, u64::MAX - 4);
    }

    #[test]
    fn filters_and_orders() {
        let db = sample();
        let base = Query {
            limit: 50,
            ..Query::default()
        };
        // Empty text lists the newest.
        let all = search(db.conn(), &base).unwrap();
        assert_eq!(
            all.iter().map(|h| h.sent_at).collect::<Vec<_>>(),
            [4_000, 3_000, 2_000, 1_000]
        );
        let only = |q: Query| {
            search(db.conn(), &q)
                .unwrap()
                .iter()
                .map(|h| h.sent_at)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            only(Query {
                guild: Some(G2),
                ..base.clone()
            }),
            [4_000]
        );
        assert_eq!(
            only(Query {
                guild: Some(G1),
                channel: Some(1),
                ..base.clone()
            }),
            [2_000, 1_000]
        );
        assert_eq!(
            only(Query {
                channel: Some(u64::MAX - 4),
                ..base.clone()
            }),
            [4_000]
        );
        assert_eq!(
            only(Query {
                author: Some(ALICE),
                ..base.clone()
            }),
            [3_000, 1_000]
        );
        assert_eq!(
            only(Query {
                guild: Some(G1),
                author: Some(BOB),
                ..base.clone()
            }),
            [2_000]
        );
        assert_eq!(
            only(Query {
                guild: Some(G1),
                channel: Some(2),
                author: Some(ALICE),
                ..base.clone()
            }),
            [3_000]
        );
        assert!(
            only(Query {
                guild: Some(G2),
                channel: Some(2),
                author: Some(ALICE),
                ..base.clone()
            })
            .is_empty()
        );
        assert_eq!(
            only(Query {
                channel: Some(u64::MAX - 4),
                author: Some(BOB),
                ..base.clone()
            }),
            [4_000]
        );
        assert_eq!(
            only(Query {
                after: Some(2_000),
                before: Some(4_000),
                ..base.clone()
            }),
            [3_000, 2_000]
        );
        assert!(
            only(Query {
                has_file: Some(true),
                ..base.clone()
            })
            .is_empty()
        );
        db.conn()
            .execute(
                "UPDATE guild_messages SET has_file = 1 WHERE sent_at = 2000",
                [],
            )
            .unwrap();
        assert_eq!(
            only(Query {
                has_file: Some(true),
                ..base.clone()
            }),
            [2_000]
        );
        assert_eq!(
            only(Query {
                has_file: Some(false),
                ..base.clone()
            })
            .len(),
            3
        );
        // Text with filters, newest first.
        let relay = Query {
            text: "relay".into(),
            order: Order::Newest,
            ..base.clone()
        };
        assert_eq!(only(relay.clone()), [4_000, 3_000]);
        assert_eq!(
            only(Query {
                author: Some(ALICE),
                ..relay.clone()
            }),
            [3_000]
        );
        // Time ranges by day buckets, then exact bounds; wide ranges by weeks or rows only.
        let day = DAY_MS;
        insert(&db, G1, 1, BOB, 3 * day + 5, "relay later");
        insert(&db, G1, 1, BOB, 400 * day, "relay much later");
        assert_eq!(
            only(Query {
                after: Some(2 * day),
                before: Some(4 * day),
                ..relay.clone()
            }),
            [3 * day + 5]
        );
        assert!(
            only(Query {
                after: Some(3 * day + 6),
                before: Some(4 * day),
                ..relay.clone()
            })
            .is_empty()
        );
        assert_eq!(
            only(Query {
                after: Some(3_500),
                before: Some(3 * day + 6),
                ..relay.clone()
            }),
            [3 * day + 5, 4_000]
        );
        assert_eq!(
            only(Query {
                after: Some(3 * day),
                before: Some(300 * day),
                ..relay.clone()
            }),
            [3 * day + 5]
        );
        assert_eq!(
            only(Query {
                after: Some(0),
                before: Some(1_000 * day),
                ..relay.clone()
            })
            .len(),
            4
        );
        assert_eq!(
            only(Query {
                after: Some(100 * day),
                ..relay.clone()
            }),
            [400 * day]
        );
        assert!(
            only(Query {
                after: Some(5),
                before: Some(5),
                ..relay.clone()
            })
            .is_empty()
        );
        assert_eq!(
            only(Query {
                author: Some(BOB),
                after: Some(day),
                ..base.clone()
            }),
            [400 * day, 3 * day + 5]
        );
        db.conn()
            .execute(
                "DELETE FROM guild_messages WHERE sent_at > ?1",
                [day as i64],
            )
            .unwrap();
        // Paging.
        assert_eq!(
            only(Query {
                limit: 1,
                offset: 1,
                ..relay.clone()
            }),
            [3_000]
        );
        assert!(only(Query { offset: 2, ..relay }).is_empty());
        // Limits are clamped, never errors.
        assert_eq!(
            only(Query {
                limit: 0,
                ..base.clone()
            })
            .len(),
            1
        );
        assert_eq!(
            only(Query {
                limit: usize::MAX,
                offset: usize::MAX,
                ..base
            })
            .len(),
            0
        );
    }

    #[test]
    fn edits_and_deletes_reach_the_index() {
        let db = sample();
        let row = insert(&db, G1, 1, BOB, 5_000, "meet at the lighthouse");
        assert_eq!(texts(&db, &q("lighthouse")).len(), 1);
        db.conn()
            .execute(
                "UPDATE guild_messages SET text = 'meet at the harbour' WHERE rorder = ?1",
                [row],
            )
            .unwrap();
        assert!(texts(&db, &q("lighthouse")).is_empty());
        assert_eq!(texts(&db, &q("harbour")), ["meet at the harbour"]);
        // Other columns changing leaves the index alone.
        db.conn()
            .execute(
                "UPDATE guild_messages SET has_file = 1 WHERE rorder = ?1",
                [row],
            )
            .unwrap();
        assert_eq!(texts(&db, &q("harbour")).len(), 1);
        db.conn()
            .execute("DELETE FROM guild_messages WHERE rorder = ?1", [row])
            .unwrap();
        assert!(texts(&db, &q("harbour")).is_empty());
        assert!(texts(&db, &q("meet")).is_empty());
        // The index agrees with its content table.
        db.conn()
            .execute("INSERT INTO guild_messages_fts (guild_messages_fts, rank) VALUES ('integrity-check', 1)", [])
            .unwrap();
    }

    /// `secure-delete`: once a message is deleted, its words are gone from the index's pages,
    /// not only unreachable. With FTS5's `secure-delete` set to 0 this test fails (the word
    /// stays in the index blocks; checked when it was written). SQLite's page-level `PRAGMA
    /// secure_delete` (whether freed space in pages is zeroed) is 1 in the bundled SQLCipher.

    #[test]
    fn deleted_words_leave_the_index_pages() {
        let db = sample();
        let row = insert(&db, G1, 1, ALICE, 9_000, "the password is quixotriangulate");
        let in_pages = |word: &[u8]| -> bool {
            let mut st = db
                .conn()
                .prepare("SELECT block FROM guild_messages_fts_data")
                .unwrap();
            let blocks: Vec<Vec<u8>> = st
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            blocks
                .iter()
                .any(|b| b.windows(word.len()).any(|w| w == word))
        };
        // Terms are stored prefix-compressed against their neighbours: look for the tail.
        assert!(in_pages(b"riangulate"));
        db.conn()
            .execute("DELETE FROM guild_messages WHERE rorder = ?1", [row])
            .unwrap();
        assert!(!in_pages(b"riangulate"));
        assert!(texts(&db, &q("quixo")).is_empty());
        let page_level: i64 = db
            .conn()
            .query_row("PRAGMA secure_delete", [], |r| r.get(0))
            .unwrap();
        assert_eq!(page_level, 1);
    }

    #[test]
    fn migration_backfills_existing_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let key = Secret32::from_bytes([3; 32]);
        {
            let db = Db::open(&path, &key).unwrap();
            // Back to schema 12 (before the index and the file tables) with one message, as an
            // older build left it.
            db.conn()
                .execute_batch(
                    "DROP TABLE guild_files; DROP TABLE files;
                     DROP VIEW guild_messages_search; DROP TRIGGER guild_messages_fts_insert; DROP TRIGGER guild_messages_fts_delete;
                     DROP TRIGGER guild_messages_fts_update; DROP TABLE guild_messages_fts;
                     ALTER TABLE guild_messages DROP COLUMN has_file; PRAGMA user_version = 12;",
                )
                .unwrap();
            db.conn()
                .execute(
                    "INSERT INTO guild_messages (guild, channel, msg_id, sender, author, sent_at, received_at, text, seq)
                     VALUES (?1, 1, x'01', ?2, ?2, 5, 5, 'an old message about zeppelins', 1)",
                    params![&G1[..], &ALICE[..]],
                )
                .unwrap();
        }
        let db = Db::open(&path, &key).unwrap();
        assert_eq!(
            texts(&db, &q("zeppelin")),
            ["an old message about zeppelins"]
        );
    }

    #[test]
    fn hostile_queries_never_fail() {
        let db = sample();
        let long = "relay ".repeat(2_000);
        let hostile = [
            "\"",
            "\"\"",
            "\"relay",
            "relay\"",
            "*",
            "**",
            "relay*",
            "*relay",
            "NEAR(",
            "NEAR(relay deploy",
            "NEAR(relay, 2)",
            "OR",
            "relay OR deploy",
            "AND",
            "NOT",
            "relay NOT deploy",
            "-",
            "-relay",
            "^relay",
            "relay:",
            "text:relay",
            "{text}: relay",
            "(",
            ")",
            "((relay)",
            "+",
            "'",
            "''",
            "\\",
            "\0",
            "\u{2}",
            "ा",
            "\u{301}",
            "e\u{301}",
            "🦀",
            "relay🦀deploy",
            "%",
            "_",
            "a",
            "a b c",
            long.as_str(),
        ];
        for h in hostile {
            for order in [Order::Relevance, Order::Newest] {
                search(db.conn(), &Query { order, ..q(h) })
                    .unwrap_or_else(|e| panic!("{h:?}: {e}"));
            }
        }
        // Operators are words, not syntax.
        assert!(texts(&db, &q("relay OR deploy")).is_empty());
        assert_eq!(texts(&db, &q("\"relay")).len(), 2);
        // 10 kB of words: only the first MAX_TERMS count, each "relay".
        assert_eq!(texts(&db, &q(&long)).len(), 2);
        assert!(texts(&db, &q("!!!")).is_empty());
    }

    #[test]
    fn expression_bounds() {
        assert_eq!(fts_expression("  "), None);
        assert_eq!(fts_expression("Hello, wor").unwrap(), "\"Hello\" \"wor\"*");
        assert_eq!(
            fts_expression("hello world ").unwrap(),
            "\"hello\" \"world\""
        );
        assert_eq!(fts_expression("say \"x").unwrap(), "\"say\" \"x\"");
        let many: String = (0..40).map(|i| format!("w{i} ")).collect::<String>() + "last";
        let e = fts_expression(&many).unwrap();
        assert_eq!(e.matches('"').count(), 2 * MAX_TERMS);
        assert!(!e.ends_with('*'));
        let huge = "x".repeat(10_000);
        assert_eq!(fts_expression(&huge).unwrap().len(), MAX_QUERY_CHARS + 3);
    }

    #[test]
    fn parses_times() {
        assert_eq!(parse_time_ms("1970-01-01"), Ok(0));
        assert_eq!(parse_time_ms("2000-03-01"), Ok(951_868_800_000));
        assert_eq!(parse_time_ms("2026-11-27T05:40:00Z"), Ok(1_795_758_000_000));
        assert_eq!(
            parse_time_ms("2026-11-27T06:40:00.25+01:00"),
            Ok(1_795_758_000_250)
        );
        assert_eq!(parse_time_ms("2026-11-27 05:40:00z"), Ok(1_795_758_000_000));
        assert_eq!(parse_time_ms("1795758000000"), Ok(1_795_758_000_000));
        for bad in [
            "",
            "2026",
            "2026-13-01",
            "2026-02-29",
            "2026-11-27T25:00:00Z",
            "2026-11-27T05:40:00",
            "2026-11-27T05:40Z",
            "1969-12-31",
            "27/11/2026",
            "2026-11-27T05:40:00+0100",
            "2026-11-27T05:40:00.Z",
            "２０２６-11-27",
        ] {
            assert!(parse_time_ms(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_time_ms("2024-02-29"), Ok(1_709_164_800_000));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_errors(text in any::<String>(), newest in any::<bool>()) {
            let db = sample();
            let order = if newest { Order::Newest } else { Order::Relevance };
            search(db.conn(), &Query { order, ..q(&text) }).unwrap();
        }

        #[test]
        fn query_like_text_never_errors(text in "[a-zA-Zé\"*()^:+\\- ]{0,40}") {
            let db = sample();
            search(db.conn(), &q(&text)).unwrap();
        }

        #[test]
        fn arbitrary_times_never_panic(s in any::<String>()) {
            let _ = parse_time_ms(&s);
        }
    }
}
