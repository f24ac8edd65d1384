//! Local full-text search over a large encrypted store: latency of `store::search` over N
//! (default 1,000,000) guild messages, the index's size per message, and a `LIKE '%word%'`
//! scan of the same store as the baseline, all in one run.
//!
//! The store is a real SQLCipher file (`Db::open` with a random key, default page cache). The
//! messages are 5 to 60 words drawn from a Zipf-distributed vocabulary (300 common English
//! words, then 30,000 generated words, a few with diacritics), in 2 guilds, 10 channels, 40
//! authors, over 180 days. They are inserted in one transaction with the index's triggers
//! dropped; the file size is measured, then the index is built (FTS5 `rebuild`, then
//! `optimize`) and the triggers restored, and the size measured again. Then 10,000 more
//! messages are inserted one statement at a time, 100 per transaction, once before the index
//! exists and once after (insert cost without and with the index).
//!
//! Query kinds (each run `QUERIES` times, default 50, limit 50 hits with snippets): a common
//! word, a rare word, a 4-letter prefix, two words, a common word in one channel by one author,
//! and a word newest-first within 30 days.
//!
//! Run: `cargo bench -p securecomm-node --bench search` (env `MESSAGES`, `QUERIES`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use rusqlite::params;
use securecomm_node::store::Db;
use securecomm_node::store::search::{Order, Query, search};
use securecomm_noise::secret::Secret32;

const COMMON: &str = "the be to of and a in that have I it for not on with he as you do at this but his by from they we say her she or an will my one all would there their what so up out if about who get which go me when make can like time no just him know take people into year your good some could them see other than then now look only come its over think also back after use two how our work first well way even new want because any these give day most us is was are been has had were said did got made went build test deploy relay server voice channel guild message bug fix release meeting tomorrow tonight lunch coffee café naïve résumé weekend game music photo link video issue branch merge review commit crash log error network router key invite friend team project plan idea question answer problem thanks sorry please yes maybe sure great cool nice awesome love hate happy sad tired late early morning evening night week month today yesterday home office school city train bus car bike walk run read write call send share open close start stop wait help check change update move find keep leave turn show play pay buy sell cost price money free busy ready done later soon again still already never always often sometimes";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// SplitMix64: a small deterministic generator, so every run fills the same store.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Vocab {
    words: Vec<String>,
    /// Cumulative Zipf weights.
    cdf: Vec<f64>,
}

impl Vocab {
    fn new(rng: &mut Rng) -> Self {
        const SYL: [&str; 24] = [
            "ka", "lo", "mi", "ren", "sto", "var", "qui", "del", "pra", "nu", "zo", "tem", "gal",
            "fi", "bro", "ish", "end", "or", "ta", "vel", "mun", "dra", "sé", "cü",
        ];
        let mut words: Vec<String> = COMMON.split(' ').map(str::to_owned).collect();
        let mut seen: std::collections::HashSet<String> = words.iter().cloned().collect();
        while words.len() < 30_300 {
            let n = 2 + rng.below(3);
            let w: String = (0..n)
                .map(|_| SYL[rng.below(SYL.len() as u64) as usize])
                .collect();
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let mut acc = 0.0;
        let cdf = (1..=words.len())
            .map(|r| {
                acc += 1.0 / (r as f64).powf(1.05);
                acc
            })
            .collect();
        Self { words, cdf }
    }

    fn pick(&self, rng: &mut Rng) -> &str {
        let x = rng.unit() * self.cdf[self.cdf.len() - 1];
        let i = self.cdf.partition_point(|c| *c < x);
        &self.words[i.min(self.words.len() - 1)]
    }

    fn message(&self, rng: &mut Rng) -> String {
        let n = 5 + rng.below(56);
        let mut s = String::new();
        for i in 0..n {
            if i > 0 {
                s.push(if rng.below(12) == 0 { ',' } else { ' ' });
                if s.ends_with(',') {
                    s.push(' ');
                }
            }
            s.push_str(self.pick(rng));
        }
        s.push(['.', '!', '?', '.'][rng.below(4) as usize]);
        s
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn checkpoint(db: &Db) {
    db.conn()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |p: f64| ms(v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]);
    (at(0.50), at(0.95), at(0.99), ms(v[v.len() - 1]))
}

const DAY: u64 = 86_400_000;
const START: u64 = 1_780_000_000_000;
const GUILDS: u64 = 2;
const CHANNELS: u64 = 10;
const AUTHORS: u64 = 40;

/// Messages inserted one statement at a time, 100 per transaction (as live gossip is).
const EXTRA: u64 = 10_000;

fn insert_live(db: &mut Db, vocab: &Vocab, rng: &mut Rng, first: u64, count: u64) -> Duration {
    let t = Instant::now();
    for b in 0..count / 100 {
        let tx = db.conn_mut().transaction().unwrap();
        for k in 0..100 {
            let i = first + b * 100 + k;
            tx.execute(
                "INSERT INTO guild_messages (guild, channel, msg_id, sender, author, sent_at, received_at, text, seq)
                 VALUES (?1, 1, ?2, ?3, ?3, ?4, ?4, ?5, ?6)",
                params![&[1u8; 32][..], &i.to_be_bytes()[..], &[100u8; 32][..], (START + 180 * DAY) as i64, vocab.message(rng), i as i64 + 1],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    t.elapsed()
}

fn main() {
    let n = env("MESSAGES", 1_000_000);
    let per_kind = env("QUERIES", 50);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.db");
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    let mut db = Db::open(&path, &Secret32::from_bytes(key)).unwrap();
    let mut rng = Rng(0x5eed);
    let vocab = Vocab::new(&mut rng);

    // Fill without the index's triggers, then build the index in one pass.
    let triggers: Vec<String> = {
        let mut st = db
            .conn()
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'guild_messages'")
            .unwrap();
        let rows: Vec<(String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (name, _) in &rows {
            db.conn()
                .execute_batch(&format!("DROP TRIGGER {name}"))
                .unwrap();
        }
        rows.into_iter().map(|(_, sql)| sql).collect()
    };
    assert_eq!(triggers.len(), 3, "expected the index's three triggers");
    let t = Instant::now();
    let mut text_bytes = 0u64;
    {
        let tx = db.conn_mut().transaction().unwrap();
        {
            let mut st = tx
                .prepare(
                    "INSERT INTO guild_messages (guild, channel, msg_id, sender, author, sent_at, received_at, text, seq)
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?5, ?6, ?7)",
                )
                .unwrap();
            for i in 0..n as u64 {
                let g = [rng.below(GUILDS) as u8 + 1; 32];
                let channel = rng.below(CHANNELS) as i64 + 1;
                let author = [rng.below(AUTHORS) as u8 + 100; 32];
                let sent_at = START + i * 180 * DAY / n as u64 + rng.below(60_000);
                let mut msg_id = [0u8; 16];
                msg_id[..8].copy_from_slice(&i.to_be_bytes());
                msg_id[8..].copy_from_slice(&rng.next().to_be_bytes());
                let text = vocab.message(&mut rng);
                text_bytes += text.len() as u64;
                st.execute(params![
                    &g[..],
                    channel,
                    &msg_id[..],
                    &author[..],
                    sent_at as i64,
                    text,
                    i as i64 + 1
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let fill = t.elapsed();
    let plain = insert_live(&mut db, &vocab, &mut rng, n as u64, EXTRA);
    checkpoint(&db);
    let without = file_size(&path);
    let t = Instant::now();
    db.conn()
        .execute_batch("INSERT INTO guild_messages_fts (guild_messages_fts) VALUES ('rebuild')")
        .unwrap();
    for sql in &triggers {
        db.conn().execute_batch(sql).unwrap();
    }
    let build = t.elapsed();
    // Finish the merges the rebuild left (FTS5 does them a little at every later write, which
    // would be charged to the inserts timed below): the steady state of a store that grew.
    let t = Instant::now();
    db.conn()
        .execute_batch("INSERT INTO guild_messages_fts (guild_messages_fts) VALUES ('optimize')")
        .unwrap();
    let optimize = t.elapsed();
    checkpoint(&db);
    let with = file_size(&path);
    println!(
        "search bench: {n} messages, {:.1} text bytes/message on average",
        text_bytes as f64 / n as f64
    );
    println!(
        "fill {:.1} s (one transaction, no index), index build {:.1} s, optimize {:.1} s",
        fill.as_secs_f64(),
        build.as_secs_f64(),
        optimize.as_secs_f64()
    );
    let stored = n as u64 + EXTRA;
    println!(
        "store size ({stored} messages): {:.1} MB without the index ({:.0} B/message), {:.1} MB with it ({:.0} B/message, index {:.0} B/message, +{:.0}%)",
        without as f64 / 1e6,
        without as f64 / stored as f64,
        with as f64 / 1e6,
        with as f64 / stored as f64,
        (with - without) as f64 / stored as f64,
        (with - without) as f64 * 100.0 / without as f64
    );

    let indexed = insert_live(&mut db, &vocab, &mut rng, n as u64 + EXTRA, EXTRA);
    println!(
        "insert, {EXTRA} messages 100 per transaction (synchronous=FULL): {:.1} us/message without the index, {:.1} us/message with it",
        plain.as_secs_f64() * 1e6 / EXTRA as f64,
        indexed.as_secs_f64() * 1e6 / EXTRA as f64
    );

    // Query words by Zipf rank.
    let word = |rng: &mut Rng, lo: usize, hi: usize| -> String {
        loop {
            let w = &vocab.words[lo + rng.below((hi - lo) as u64) as usize];
            if w.len() >= 3 {
                return w.clone();
            }
        }
    };
    let base = Query {
        limit: 50,
        ..Query::default()
    };
    let base = &base;
    type Make<'a> = Box<dyn Fn(&mut Rng) -> Query + 'a>;
    let kinds: Vec<(&str, Make)> = vec![
        (
            "common word (rank 10-50)",
            Box::new(move |r: &mut Rng| Query {
                text: format!("{} ", word(r, 10, 50)),
                ..base.clone()
            }),
        ),
        (
            "rare word (rank 5k-30k)",
            Box::new(move |r: &mut Rng| Query {
                text: format!("{} ", word(r, 5_000, 30_000)),
                ..base.clone()
            }),
        ),
        (
            "prefix (4 letters, rank 100-2k)",
            Box::new(move |r: &mut Rng| {
                let w = word(r, 100, 2_000);
                Query {
                    text: w.chars().take(4).collect(),
                    ..base.clone()
                }
            }),
        ),
        (
            "two words (rank 50-500)",
            Box::new(move |r: &mut Rng| Query {
                text: format!("{} {} ", word(r, 50, 500), word(r, 50, 500)),
                ..base.clone()
            }),
        ),
        (
            "common word + channel + author",
            Box::new(move |r: &mut Rng| Query {
                text: format!("{} ", word(r, 10, 50)),
                guild: Some([r.below(GUILDS) as u8 + 1; 32]),
                channel: Some(r.below(CHANNELS) + 1),
                author: Some([r.below(AUTHORS) as u8 + 100; 32]),
                ..base.clone()
            }),
        ),
        (
            "newest first, 30 days (rank 20-200)",
            Box::new(move |r: &mut Rng| {
                let from = START + r.below(150) * DAY;
                Query {
                    text: format!("{} ", word(r, 20, 200)),
                    after: Some(from),
                    before: Some(from + 30 * DAY),
                    order: Order::Newest,
                    ..base.clone()
                }
            }),
        ),
        (
            "common word, newest first",
            Box::new(move |r: &mut Rng| Query {
                text: format!("{} ", word(r, 10, 50)),
                order: Order::Newest,
                ..base.clone()
            }),
        ),
    ];
    println!("\nlatency per query, {per_kind} queries per kind, 50 hits per page with snippets:");
    println!(
        "{:<38} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "kind", "p50 ms", "p95 ms", "p99 ms", "max ms", "matches"
    );
    let mut all = Vec::new();
    let mut rare_p50 = 0.0;
    let mut common_p50 = 0.0;
    for (name, make) in &kinds {
        let mut times = Vec::with_capacity(per_kind);
        let mut matches = 0u64;
        for i in 0..per_kind {
            let q = make(&mut rng);
            if i < 5 {
                matches += db
                    .conn()
                    .query_row(
                        "SELECT COUNT(*) FROM guild_messages_fts WHERE guild_messages_fts MATCH ?1",
                        [securecomm_node::store::search::fts_expression(&q.text).unwrap()],
                        |r| r.get::<_, i64>(0),
                    )
                    .unwrap() as u64;
            }
            let t = Instant::now();
            let hits = search(db.conn(), &q).unwrap();
            times.push(t.elapsed());
            std::hint::black_box(hits);
        }
        all.extend(times.iter().copied());
        let (p50, p95, p99, max) = percentiles(times);
        if name.starts_with("rare") {
            rare_p50 = p50;
        }
        if name.starts_with("common word (") {
            common_p50 = p50;
        }
        println!(
            "{name:<38} {p50:>9.2} {p95:>9.2} {p99:>9.2} {max:>9.2} {:>10}",
            matches / 5u64.min(per_kind as u64).max(1)
        );
    }
    let (p50, p95, p99, max) = percentiles(all);
    println!(
        "{:<38} {p50:>9.2} {p95:>9.2} {p99:>9.2} {max:>9.2}",
        "all kinds"
    );
    println!(
        "(matches: documents matching the words, mean of the first 5 queries of the kind, before filters)"
    );

    // Baseline: the same kind of question answered by scanning the text with LIKE.
    let like = |q: &str| -> Duration {
        let t = Instant::now();
        let mut st = db
            .conn()
            .prepare_cached(
                "SELECT rorder, guild, channel, msg_id, author, sent_at, substr(text, 1, 160) FROM guild_messages
                 WHERE text LIKE ?1 ORDER BY sent_at DESC LIMIT 50",
            )
            .unwrap();
        let rows: Vec<i64> = st
            .query_map([format!("%{q}%")], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        std::hint::black_box(rows);
        t.elapsed()
    };
    let mut rare = Vec::new();
    let mut common = Vec::new();
    for _ in 0..3 {
        rare.push(like(&word(&mut rng, 5_000, 30_000)));
        common.push(like(&word(&mut rng, 10, 50)));
    }
    let (rare_like, ..) = percentiles(rare);
    let (common_like, ..) = percentiles(common);
    println!(
        "\nbaseline, LIKE '%word%' scan of all {} rows, newest 50 (3 queries each, median):",
        n + 2 * EXTRA as usize
    );
    println!(
        "rare word:   {rare_like:.0} ms vs {rare_p50:.2} ms by the index ({:.0}x)",
        rare_like / rare_p50
    );
    println!(
        "common word: {common_like:.0} ms vs {common_p50:.2} ms by the index ({:.0}x)",
        common_like / common_p50
    );
}
