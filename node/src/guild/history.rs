//! History sync: a member that was offline fetches the guild messages it missed from any online
//! member, and verifies each one exactly as if it had arrived live.
//!
//! # Model
//!
//! Gossipsub is live-only. Every guild message carries, inside its encryption, the sending
//! device's sequence number in the guild ([`super::wire::AppPayload::seq`]: 1, 2, 3, ... without
//! gaps), and every member keeps the sealed envelope of every message it accepted
//! (`guild_envelopes`, migration 4) next to the decrypted text. What a member holds from one
//! sender is therefore a set of sequence numbers, kept as a few ranges (usually one).
//!
//! # Protocol (on the direct request-response protocol, first byte [`HISTORY_VERSION`])
//!
//! 1. The requester sends a [`HistoryRequest`]: the guild, `since_ms` (its join time minus
//!    [`CLOCK_SLACK_MS`]; older messages were sealed under keys it never had), and for each
//!    sender the ranges it holds (at most [`MAX_RANGES`] per sender; anything past them is simply
//!    sent again and skipped).
//! 2. The responder checks that the requesting device is a member of the guild now, and answers
//!    a [`HistoryResponse::Page`]: envelopes it holds that fall in the requester's gaps, sender by
//!    sender in sequence order, at most [`MAX_PAGE_ITEMS`] items and [`MAX_PAGE_BYTES`] bytes,
//!    with `more` set when it stopped early.
//! 3. The requester skips items it already has, runs every other item through the same
//!    validation as live gossip (decrypt, verify the sender's signature inside, re-check the
//!    sender's right to post), additionally checks that the item is what the responder claimed
//!    (sender device and sequence number), stores it, adds it to its ranges and asks again until
//!    `more` is false. A responder that serves a forged or mislabelled item ends the session.
//!
//! Resuming is free: the ranges are recomputed from the store at the start of every session, so
//! a session cut short continues where it stopped. Items that do not decrypt yet (key agreement
//! behind) are skipped for the session and fetched again by the next one.
//!
//! # What the responder learns
//!
//! Which member asks (it is connected anyway) and which sequence numbers it holds per sender.
//! Everything travels inside the libp2p connection's Noise channel, and the envelopes are still
//! sealed with the guild's per-sender keys, so a relay in the path learns sizes only.
//!
//! # Bounds
//!
//! A request names at most [`MAX_SENDERS`] senders with at most [`MAX_RANGES`] ranges each; a
//! page is at most [`MAX_PAGE_ITEMS`] items and [`MAX_PAGE_BYTES`] bytes (below the direct
//! protocol's 1 MiB frame); a session is at most [`MAX_PAGES`] pages.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};
use securecomm_crdt::schema::GuildId;
use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use securecomm_noise::keys::DevicePublicKey;

use crate::sync::SyncError;

/// First byte of history requests and responses on the direct protocol (distinct from the join
/// protocol's and the sync protocol's).
pub const HISTORY_VERSION: u8 = 0x48;
/// Most items in one page.
pub const MAX_PAGE_ITEMS: usize = 1024;
/// Most envelope bytes in one page.
pub const MAX_PAGE_BYTES: usize = 900 * 1024;
/// Most senders named in one request.
pub const MAX_SENDERS: usize = 4096;
/// Most ranges per sender in one request.
pub const MAX_RANGES: usize = 32;
/// Most pages in one session.
pub const MAX_PAGES: usize = 4096;
/// How far before its join time a member asks for history (clock skew between members).
pub const CLOCK_SLACK_MS: u64 = 10 * 60 * 1000;
/// Largest envelope in a page (a sealed envelope is at most 61,485 bytes).
pub const MAX_ENVELOPE: usize = 62 * 1024;
/// Longest refusal reason.
pub const MAX_REASON: usize = 256;

/// "Send me what I lack."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRequest {
    /// The guild.
    pub guild: GuildId,
    /// Only messages their senders stamped at or after this time (ms since the Unix epoch).
    pub since_ms: u64,
    /// Per sender, the inclusive ranges of sequence numbers already held, ascending and disjoint.
    pub have: Vec<(DevicePublicKey, Vec<(u64, u64)>)>,
}

/// A delivery receipt: "of your messages in this guild, I hold these sequence numbers". Sent by
/// a member to a sender after storing its messages (live or through history); the sender
/// shows per-member delivery from it. Answered with an empty page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The guild.
    pub guild: GuildId,
    /// The ranges of the recipient's (the sender's) sequence numbers held, ascending.
    pub held: Vec<(u64, u64)>,
}

impl Encode for Receipt {
    fn encode(&self, w: &mut Writer) {
        w.u8(HISTORY_VERSION);
        w.u8(4);
        self.guild.encode(w);
        w.u16(u16::try_from(self.held.len()).unwrap_or(u16::MAX));
        for (lo, hi) in &self.held {
            w.u64(*lo);
            w.u64(*hi);
        }
    }
}

impl Decode for Receipt {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("delivery receipt", HISTORY_VERSION)?;
        match r.u8()? {
            4 => {}
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "delivery receipt",
                    got: u64::from(got),
                });
            }
        }
        let guild = GuildId::decode(r)?;
        let held = decode_ranges(r)?;
        Ok(Self { guild, held })
    }
}

/// "You may lack some of my recent messages in this guild: ask me." Sent by a sender to a
/// connected member whose receipt has not covered a message a few seconds after it was
/// published (gossip can lose a message into a path that died silently). The member answers
/// with an empty page and starts a history session with the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nudge {
    /// The guild.
    pub guild: GuildId,
}

impl Encode for Nudge {
    fn encode(&self, w: &mut Writer) {
        w.u8(HISTORY_VERSION);
        w.u8(5);
        self.guild.encode(w);
    }
}

impl Decode for Nudge {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("history nudge", HISTORY_VERSION)?;
        match r.u8()? {
            5 => {}
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "history nudge",
                    got: u64::from(got),
                });
            }
        }
        Ok(Self {
            guild: GuildId::decode(r)?,
        })
    }
}

fn decode_ranges(r: &mut Reader<'_>) -> Result<Vec<(u64, u64)>, DecodeError> {
    let k = usize::from(r.u16()?);
    if k > MAX_RANGES {
        return Err(DecodeError::TooLong {
            what: "history ranges",
            max: MAX_RANGES,
            got: k,
        });
    }
    let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(k);
    for _ in 0..k {
        let (lo, hi) = (r.u64()?, r.u64()?);
        if lo > hi || ranges.last().is_some_and(|&(_, ph)| ph >= lo) {
            return Err(DecodeError::Invalid(
                "history ranges not ascending and disjoint",
            ));
        }
        ranges.push((lo, hi));
    }
    Ok(ranges)
}

/// One message as the responder holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryItem {
    /// The sending device, as the responder claims (checked after decryption).
    pub sender: DevicePublicKey,
    /// The sender's sequence number, as the responder claims (checked after decryption).
    pub seq: u64,
    /// The sealed envelope exactly as it was published.
    pub envelope: Vec<u8>,
}

/// The answer to a [`HistoryRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryResponse {
    /// Some of what the requester lacks.
    Page {
        /// Items, sender by sender in sequence order.
        items: Vec<HistoryItem>,
        /// Whether the responder stopped before the end.
        more: bool,
    },
    /// Refused, and why.
    Refused(String),
}

impl Encode for HistoryRequest {
    fn encode(&self, w: &mut Writer) {
        w.u8(HISTORY_VERSION);
        w.u8(1);
        self.guild.encode(w);
        w.u64(self.since_ms);
        w.u32(u32::try_from(self.have.len()).unwrap_or(u32::MAX));
        for (sender, ranges) in &self.have {
            sender.encode(w);
            w.u16(u16::try_from(ranges.len()).unwrap_or(u16::MAX));
            for (lo, hi) in ranges {
                w.u64(*lo);
                w.u64(*hi);
            }
        }
    }
}

impl Decode for HistoryRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("history request", HISTORY_VERSION)?;
        match r.u8()? {
            1 => {}
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "history request",
                    got: u64::from(got),
                });
            }
        }
        let guild = GuildId::decode(r)?;
        let since_ms = r.u64()?;
        let n = r.u32()? as usize;
        if n > MAX_SENDERS {
            return Err(DecodeError::TooLong {
                what: "history senders",
                max: MAX_SENDERS,
                got: n,
            });
        }
        let mut have: Vec<(DevicePublicKey, Vec<(u64, u64)>)> = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            let sender = DevicePublicKey::decode(r)?;
            if have.last().is_some_and(|(prev, _)| *prev >= sender) {
                return Err(DecodeError::Invalid(
                    "history senders not in ascending order",
                ));
            }
            let ranges = decode_ranges(r)?;
            have.push((sender, ranges));
        }
        Ok(Self {
            guild,
            since_ms,
            have,
        })
    }
}

impl Encode for HistoryResponse {
    fn encode(&self, w: &mut Writer) {
        w.u8(HISTORY_VERSION);
        match self {
            Self::Page { items, more } => {
                w.u8(2);
                w.u8(u8::from(*more));
                w.u32(u32::try_from(items.len()).unwrap_or(u32::MAX));
                for it in items {
                    it.sender.encode(w);
                    w.u64(it.seq);
                    w.bytes32(&it.envelope);
                }
            }
            Self::Refused(reason) => {
                w.u8(3);
                super::wire::put_reason(w, reason, MAX_REASON);
            }
        }
    }
}

impl Decode for HistoryResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("history response", HISTORY_VERSION)?;
        match r.u8()? {
            2 => {
                let more = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Invalid("history page flag")),
                };
                let n = r.u32()? as usize;
                if n > MAX_PAGE_ITEMS {
                    return Err(DecodeError::TooLong {
                        what: "history items",
                        max: MAX_PAGE_ITEMS,
                        got: n,
                    });
                }
                let mut items = Vec::with_capacity(n.min(256));
                for _ in 0..n {
                    let sender = DevicePublicKey::decode(r)?;
                    let seq = r.u64()?;
                    let envelope = r.bytes32("history envelope", MAX_ENVELOPE)?.to_vec();
                    items.push(HistoryItem {
                        sender,
                        seq,
                        envelope,
                    });
                }
                Ok(Self::Page { items, more })
            }
            3 => Ok(Self::Refused(super::wire::get_reason(r, MAX_REASON)?)),
            got => Err(DecodeError::UnknownTag {
                what: "history response",
                got: u64::from(got),
            }),
        }
    }
}

// ------------------------------------------------------------------------------ ranges

/// A set of sequence numbers as disjoint inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.0
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &hi)| hi >= seq)
    }

    /// Adds `seq`, merging with neighbours.
    pub fn insert(&mut self, seq: u64) {
        if self.contains(seq) {
            return;
        }
        let below = self
            .0
            .range(..seq)
            .next_back()
            .filter(|(_, hi)| hi.checked_add(1) == Some(seq))
            .map(|(&lo, _)| lo);
        let above = seq
            .checked_add(1)
            .and_then(|n| self.0.get(&n).map(|&hi| (n, hi)));
        let lo = below.unwrap_or(seq);
        let hi = match above {
            Some((n, hi)) => {
                self.0.remove(&n);
                hi
            }
            None => seq,
        };
        self.0.insert(lo, hi);
    }

    /// Adds an inclusive range (`lo <= hi`) known to be disjoint from and above every range held.
    fn push(&mut self, lo: u64, hi: u64) {
        self.0.insert(lo, hi);
    }

    /// The first [`MAX_RANGES`] ranges, ascending.
    pub fn to_wire(&self) -> Vec<(u64, u64)> {
        self.0
            .iter()
            .take(MAX_RANGES)
            .map(|(&a, &b)| (a, b))
            .collect()
    }
}

/// The gaps between `ranges` (ascending, disjoint, inclusive) as exclusive bounds `(after,
/// before)`: sequence numbers `s` with `after < s < before`. Sequence numbers start at 1.
fn gaps(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    let mut after = 0u64;
    for &(lo, hi) in ranges {
        if lo > after.saturating_add(1) {
            out.push((after, lo));
        }
        after = after.max(hi);
    }
    if after < u64::MAX {
        out.push((after, u64::MAX));
    }
    out
}

fn device_from(b: &[u8]) -> Option<DevicePublicKey> {
    <[u8; 32]>::try_from(b)
        .ok()
        .and_then(|a| DevicePublicKey::from_bytes(&a).ok())
}

fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What this node holds of `gid`, per sender.
pub(crate) fn held(
    conn: &Connection,
    gid: &GuildId,
) -> Result<BTreeMap<DevicePublicKey, Ranges>, SyncError> {
    // Gaps and islands: within one sender, `seq - row_number` is constant along a run.
    let mut st = conn.prepare_cached(
        "SELECT sender, MIN(seq), MAX(seq) FROM (
            SELECT sender, seq, seq - ROW_NUMBER() OVER (PARTITION BY sender ORDER BY seq) AS run
            FROM guild_envelopes WHERE guild = ?1)
         GROUP BY sender, run ORDER BY sender, MIN(seq)",
    )?;
    let rows = st.query_map(params![&gid.0[..]], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out: BTreeMap<DevicePublicKey, Ranges> = BTreeMap::new();
    for row in rows {
        let (sender, lo, hi) = row?;
        let (Some(sender), Ok(lo), Ok(hi)) =
            (device_from(&sender), u64::try_from(lo), u64::try_from(hi))
        else {
            continue;
        };
        out.entry(sender).or_default().push(lo, hi);
    }
    Ok(out)
}

/// What this node holds of `sender`'s messages in `gid`.
pub(crate) fn held_from(
    conn: &Connection,
    gid: &GuildId,
    sender: &DevicePublicKey,
) -> Result<Ranges, SyncError> {
    let mut st = conn.prepare_cached(
        "SELECT MIN(seq), MAX(seq) FROM (
            SELECT seq, seq - ROW_NUMBER() OVER (ORDER BY seq) AS run
            FROM guild_envelopes WHERE guild = ?1 AND sender = ?2)
         GROUP BY run ORDER BY MIN(seq)",
    )?;
    let rows = st.query_map(params![&gid.0[..], &sender.as_bytes()[..]], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut out = Ranges::default();
    for row in rows {
        let (lo, hi) = row?;
        if let (Ok(lo), Ok(hi)) = (u64::try_from(lo), u64::try_from(hi)) {
            out.push(lo, hi);
        }
    }
    Ok(out)
}

/// Records a receipt from `member`: the ranges of this node's messages it holds.
pub(crate) fn record_receipt(
    conn: &Connection,
    gid: &GuildId,
    member: &DevicePublicKey,
    held: &[(u64, u64)],
    now: u64,
) -> Result<(), SyncError> {
    let mut w = Writer::new();
    w.u16(u16::try_from(held.len()).unwrap_or(u16::MAX));
    for (lo, hi) in held {
        w.u64(*lo);
        w.u64(*hi);
    }
    conn.prepare_cached(
        "INSERT INTO guild_receipts (guild, member, held, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(guild, member) DO UPDATE SET held = excluded.held, updated_at = excluded.updated_at",
    )?
    .execute(params![
        &gid.0[..],
        &member.as_bytes()[..],
        w.into_bytes(),
        sql(now)
    ])?;
    Ok(())
}

/// Every member's last receipt in `gid`.
pub(crate) fn receipts(
    conn: &Connection,
    gid: &GuildId,
) -> Result<BTreeMap<DevicePublicKey, Ranges>, SyncError> {
    let rows: Vec<(Vec<u8>, Vec<u8>)> = conn
        .prepare_cached("SELECT member, held FROM guild_receipts WHERE guild = ?1")?
        .query_map(params![&gid.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = BTreeMap::new();
    for (m, h) in rows {
        let Some(m) = device_from(&m) else { continue };
        let mut r = Reader::new(&h);
        let Ok(ranges) = decode_ranges(&mut r) else {
            continue;
        };
        let mut set = Ranges::default();
        for (lo, hi) in ranges {
            set.push(lo, hi);
        }
        out.insert(m, set);
    }
    Ok(out)
}

/// Whether this node holds `(sender, seq)` of `gid`.
pub(crate) fn holds(
    conn: &Connection,
    gid: &GuildId,
    sender: &DevicePublicKey,
    seq: u64,
) -> Result<bool, SyncError> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM guild_envelopes WHERE guild = ?1 AND sender = ?2 AND seq = ?3",
        )?
        .query_row(params![&gid.0[..], &sender.as_bytes()[..], sql(seq)], |r| {
            r.get(0)
        })?;
    Ok(n > 0)
}

/// The responder's side: one page of what `req` lacks. The caller checked membership.
pub(crate) fn serve(conn: &Connection, req: &HistoryRequest) -> Result<HistoryResponse, SyncError> {
    let gid = &req.guild;
    let have: BTreeMap<&DevicePublicKey, &Vec<(u64, u64)>> =
        req.have.iter().map(|(s, r)| (s, r)).collect();
    let senders: Vec<Vec<u8>> = conn
        .prepare_cached(
            "SELECT DISTINCT sender FROM guild_envelopes WHERE guild = ?1 ORDER BY sender",
        )?
        .query_map(params![&gid.0[..]], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut q = conn.prepare_cached(
        "SELECT seq, envelope FROM guild_envelopes
         WHERE guild = ?1 AND sender = ?2 AND seq > ?3 AND seq < ?4 AND sent_at >= ?5
            AND length(envelope) > 0
         ORDER BY seq LIMIT ?6",
    )?;
    let mut items = Vec::new();
    let mut bytes = 0usize;
    let empty = Vec::new();
    for sender in senders.iter().take(MAX_SENDERS) {
        let Some(device) = device_from(sender) else {
            continue;
        };
        let ranges = have.get(&device).copied().unwrap_or(&empty);
        for (after, before) in gaps(ranges) {
            let room = MAX_PAGE_ITEMS - items.len();
            let rows = q.query_map(
                params![
                    &gid.0[..],
                    sender,
                    sql(after),
                    sql(before),
                    sql(req.since_ms),
                    sql(room as u64 + 1)
                ],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )?;
            for row in rows {
                let (seq, envelope) = row?;
                if items.len() >= MAX_PAGE_ITEMS || bytes + envelope.len() > MAX_PAGE_BYTES {
                    return Ok(HistoryResponse::Page { items, more: true });
                }
                bytes += envelope.len();
                items.push(HistoryItem {
                    sender: device,
                    seq: u64::try_from(seq).unwrap_or(0),
                    envelope,
                });
            }
        }
    }
    Ok(HistoryResponse::Page { items, more: false })
}

/// Builds the request for a session that holds `held`.
pub(crate) fn request(
    gid: GuildId,
    since_ms: u64,
    held: &BTreeMap<DevicePublicKey, Ranges>,
) -> HistoryRequest {
    HistoryRequest {
        guild: gid,
        since_ms,
        have: held
            .iter()
            .take(MAX_SENDERS)
            .map(|(d, r)| (*d, r.to_wire()))
            .collect(),
    }
}

/// When this node joined `gid` minus [`CLOCK_SLACK_MS`]: history older than that is not asked for.
pub(crate) fn since(conn: &Connection, gid: &GuildId) -> Result<u64, SyncError> {
    let joined: i64 = conn
        .prepare_cached("SELECT joined_at FROM guilds WHERE id = ?1")?
        .query_row(params![&gid.0[..]], |r| r.get(0))?;
    Ok(u64::try_from(joined)
        .unwrap_or(0)
        .saturating_sub(CLOCK_SLACK_MS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(b: u8) -> DevicePublicKey {
        securecomm_noise::keys::DeviceSigningKey::from_seed(&[b; 32]).public()
    }

    #[test]
    fn ranges_merge_and_gaps() {
        let mut r = Ranges::default();
        for s in [1, 2, 3, 7, 5, 6, 10] {
            r.insert(s);
        }
        assert_eq!(r.to_wire(), vec![(1, 3), (5, 7), (10, 10)]);
        r.insert(4);
        assert_eq!(r.to_wire(), vec![(1, 7), (10, 10)]);
        assert!(r.contains(7) && !r.contains(8) && r.contains(10) && !r.contains(0));
        assert_eq!(
            gaps(&r.to_wire()),
            vec![(7, 10), (10, u64::MAX)],
            "gaps exclude held ranges; numbering starts at 1"
        );
        assert_eq!(gaps(&[]), vec![(0, u64::MAX)]);
        assert_eq!(gaps(&[(3, 4)]), vec![(0, 3), (4, u64::MAX)]);
        assert_eq!(gaps(&[(1, u64::MAX)]), vec![]);
    }

    #[test]
    fn nudges_round_trip_and_are_not_receipts() {
        let n = Nudge {
            guild: GuildId([7; 32]),
        };
        let bytes = n.to_bytes();
        assert_eq!(bytes.len(), 2 + 32);
        assert_eq!(Nudge::from_bytes(&bytes).unwrap(), n);
        assert!(Receipt::from_bytes(&bytes).is_err());
        assert!(HistoryRequest::from_bytes(&bytes).is_err());
        let receipt = Receipt {
            guild: GuildId([7; 32]),
            held: vec![(1, 3)],
        };
        assert!(Nudge::from_bytes(&receipt.to_bytes()).is_err());
        // Truncated and trailing bytes are refused.
        assert!(Nudge::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Nudge::from_bytes(&longer).is_err());
    }

    #[test]
    fn request_decoder_refuses_disorder_and_excess() {
        let mut req = HistoryRequest {
            guild: GuildId([1; 32]),
            since_ms: 5,
            have: vec![(dev(1), vec![(1, 2), (4, 9)])],
        };
        assert_eq!(
            HistoryRequest::from_bytes(&req.to_bytes()).unwrap(),
            req.clone()
        );
        req.have[0].1 = vec![(4, 9), (1, 2)];
        assert!(HistoryRequest::from_bytes(&req.to_bytes()).is_err());
        req.have[0].1 = vec![(3, 2)];
        assert!(HistoryRequest::from_bytes(&req.to_bytes()).is_err());
        req.have[0].1 = (0..=MAX_RANGES as u64)
            .map(|i| (i * 3, i * 3 + 1))
            .collect();
        assert!(HistoryRequest::from_bytes(&req.to_bytes()).is_err());
        let (a, b) = (dev(1), dev(2));
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        req.have = vec![(hi, vec![]), (lo, vec![])];
        assert!(HistoryRequest::from_bytes(&req.to_bytes()).is_err());
        let mut bytes = HistoryRequest {
            guild: GuildId([1; 32]),
            since_ms: 0,
            have: vec![],
        }
        .to_bytes();
        bytes.push(0);
        assert!(HistoryRequest::from_bytes(&bytes).is_err(), "trailing byte");
    }

    proptest! {
        #[test]
        fn response_round_trips(n in 0usize..5, seq in any::<u64>(), more in any::<bool>(), env in proptest::collection::vec(any::<u8>(), 0..300)) {
            let items: Vec<HistoryItem> = (0..n).map(|i| HistoryItem { sender: dev(i as u8), seq: seq.wrapping_add(i as u64), envelope: env.clone() }).collect();
            let p = HistoryResponse::Page { items, more };
            prop_assert_eq!(HistoryResponse::from_bytes(&p.to_bytes()).unwrap(), p);
        }

        #[test]
        fn ranges_match_a_set(seqs in proptest::collection::btree_set(1u64..200, 0..80)) {
            let mut r = Ranges::default();
            for s in &seqs { r.insert(*s); }
            for s in 0..202u64 { prop_assert_eq!(r.contains(s), seqs.contains(&s)); }
            let w = r.to_wire();
            for pair in w.windows(2) { prop_assert!(pair[0].1 + 1 < pair[1].0); }
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Receipt::from_bytes(&bytes);
            let _ = Nudge::from_bytes(&bytes);
            let _ = HistoryRequest::from_bytes(&bytes);
            let _ = HistoryResponse::from_bytes(&bytes);
        }
    }
}
