//! File sharing in the guild service: attaching files to posts, fetching them from members
//! (several at once, each chunk checked), serving what this node holds, saving, and
//! forgetting files of erased messages. The design is in [`crate::files`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use libp2p::request_response::InboundRequestId;
use securecomm_crdt::perms::Permissions;
use securecomm_crdt::schema::GuildId;
use securecomm_noise::codec::{Decode, Encode};
use securecomm_noise::file::chunk_hash;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{GuildError, GuildEvent, GuildService, device_of, peer_of};
use crate::files::store::{FileStore, bit, bitmap, chunk_span, set_bit};
use crate::files::stream::{MAX_STREAMS_PER_PEER, Pipe, Spares};
use crate::files::wire::{
    Attachment, FileAnswer, FileRequest, FileResponse, MAX_CHUNKS_PER_REQUEST,
};
use crate::files::{
    FileInfo, MAX_ACTIVE_FETCHES, MAX_INFLIGHT, MAX_INFLIGHT_PER_PEER, MAX_SERVING, MAX_STRIKES,
    db, mime_for, state, thumb,
};
use crate::net::NetError;

pub use crate::files::wire::MAX_FILE_SIZE;
/// Largest image a thumbnail is made from.
pub const MAX_THUMB_SOURCE: u64 = 64 * 1024 * 1024;
/// How long a fetch waits for a member who has the file before it pauses.
pub const NO_SOURCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often fetch progress (the bitmap of chunks held) is saved.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often progress events go out during a fetch.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// File-sharing state of the service.
pub(crate) struct FileState {
    store: Option<FileStore>,
    active: std::sync::Mutex<HashMap<[u8; 32], Progress>>,
    slots: Arc<Semaphore>,
    serving: Arc<Semaphore>,
    /// File streams served per peer.
    streams_of: std::sync::Mutex<HashMap<PeerId, usize>>,
}

impl FileState {
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        let store = dir.map(FileStore::new);
        if let Some(s) = &store {
            s.clean_tmp();
        }
        Self {
            store,
            active: std::sync::Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(MAX_ACTIVE_FETCHES)),
            serving: Arc::new(Semaphore::new(MAX_SERVING)),
            streams_of: std::sync::Mutex::new(HashMap::new()),
        }
    }
}

/// A fetch's progress, as events and `files status` show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Progress {
    /// The file (hex root).
    pub root: String,
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes held.
    pub have: u64,
    /// `have / size` in percent.
    pub percent: f64,
    /// Average speed over the last seconds, bytes per second.
    pub bytes_per_sec: u64,
    /// Estimated seconds left at that speed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<u64>,
    /// Members currently sending chunks.
    pub sources: usize,
    /// Chunks that failed their check (and were fetched again elsewhere).
    pub rejected: u64,
    /// `fetching`, `waiting` (no member with the file is connected), `complete` or `paused`.
    pub state: String,
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> GuildError + '_ {
    move |e| GuildError::Invalid(format!("{what}: {}", crate::files::store::describe(&e)))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, GuildError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| GuildError::Invalid("a file task stopped unexpectedly".into()))
}

/// One member a fetch asks.
struct Source {
    inflight: usize,
    strikes: u32,
    errors: u32,
    /// Not asked again before this (it had nothing, was busy, or failed).
    wait_until: Option<Instant>,
    dropped: bool,
    /// It answered with at least one good chunk recently.
    sending: bool,
}

/// A request's chunk indexes and its answer (the raw frame).
type Answer = (PeerId, Vec<u32>, Result<Vec<u8>, String>);
/// Chunks checked and written by a blocking task: each index with its length, or `None` if it
/// failed its hash.
type Written = (PeerId, Result<Vec<(u32, Option<usize>)>, GuildError>);

/// How a fetch reaches one member: a pipelined file stream, or (a member that does not speak
/// the file protocol) the direct request-response protocol.
#[derive(Default)]
enum Link {
    #[default]
    Unopened,
    Stream(Pipe),
    Direct,
}

/// Decrements a peer's count of served file streams when a stream ends.
struct StreamSlot {
    svc: GuildService,
    peer: PeerId,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.svc.inner.files.streams_of.lock()
            && let Some(n) = m.get_mut(&self.peer)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

/// Most batches of received chunks being checked and written at once (bounds memory with
/// [`MAX_INFLIGHT`]).
const MAX_WRITES: usize = 4;

enum Step {
    Answer(Answer),
    Written(Written),
    Tick,
}

impl GuildService {
    pub(crate) fn file_store(&self) -> Result<&FileStore, GuildError> {
        self.inner.files.store.as_ref().ok_or_else(|| {
            GuildError::Invalid("file sharing needs an on-disk store (this node has none)".into())
        })
    }

    /// Encrypts `paths` into the store for a post in `gid` (the guild's size limit applies);
    /// images get a thumbnail.
    pub(crate) async fn attach_paths(
        &self,
        gid: &GuildId,
        channel: &str,
        paths: &[PathBuf],
    ) -> Result<Vec<Attachment>, GuildError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        if paths.len() > crate::files::wire::MAX_ATTACHMENTS {
            return Err(GuildError::Invalid(format!(
                "a message carries at most {} files",
                crate::files::wire::MAX_ATTACHMENTS
            )));
        }
        let max = self.with_engine(|e, _| {
            let me = e.keys.user;
            let view = e.guild_mut(gid)?.crdt.view();
            let ch = super::resolve_channel(view, channel)?;
            if !view
                .channel_permissions(&me, &ch)
                .contains(Permissions::ATTACH_FILES)
            {
                return Err(GuildError::NotPermitted(
                    "you may not attach files in that channel".into(),
                ));
            }
            Ok(match view.settings().max_upload_bytes {
                0 => MAX_FILE_SIZE,
                m => m.min(MAX_FILE_SIZE),
            })
        })??;
        let store = self.file_store()?.clone();
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            crate::files::wire::check_file_name(&name).map_err(GuildError::Invalid)?;
            let shown = path.display().to_string();
            let src = File::open(path)
                .map_err(|e| GuildError::Invalid(format!("cannot read {shown}: {e}")))?;
            let len = src.metadata().map(|m| m.len()).unwrap_or(0);
            if len > max {
                return Err(GuildError::Invalid(format!(
                    "{name} is {len} bytes; this guild allows files of at most {max} bytes"
                )));
            }
            let mime = mime_for(&name);
            let s = store.clone();
            let n = name.clone();
            let mut a = blocking(move || s.import(std::io::BufReader::new(src), &n, mime, max))
                .await?
                .map_err(io_err(&shown))?
                .attachment;
            if mime.starts_with("image/") && len <= MAX_THUMB_SOURCE {
                let p = path.clone();
                a.thumbnail = blocking(move || {
                    File::open(p)
                        .ok()
                        .and_then(|f| thumb::make(std::io::BufReader::new(f)))
                })
                .await?;
            }
            self.with_engine(|_, db| db::register(db.conn(), &a, state::COMPLETE))?
                .map_err(|e| GuildError::Invalid(e.to_string()))?;
            out.push(a);
        }
        Ok(out)
    }

    /// `files fetch FILE`: starts (or resumes) fetching a file; returns its status.
    pub async fn fetch_file(&self, file: &str) -> Result<Value, GuildError> {
        let root = self.resolve_file(file)?;
        self.file_store()?;
        let st = self
            .with_engine(|_, db| db::load(db.conn(), &root))?
            .map_err(|e| GuildError::Invalid(e.to_string()))?
            .map(|r| r.state);
        match st {
            None => return Err(GuildError::Invalid(format!("no file {file}"))),
            Some(state::COMPLETE) => {}
            Some(_) => {
                self.with_engine(|_, db| db::set_state(db.conn(), &root, state::FETCHING, None))?
                    .map_err(|e| GuildError::Invalid(e.to_string()))?;
                self.start_fetch(root);
            }
        }
        self.file_status(Some(file))
    }

    fn resolve_file(&self, file: &str) -> Result<[u8; 32], GuildError> {
        self.with_engine(|_, db| db::resolve(db.conn(), file))?
            .map_err(GuildError::Invalid)?
            .ok_or_else(|| GuildError::Invalid(format!("no file {file}")))
    }

    /// Spawns the fetch of `root` unless one runs.
    pub(crate) fn start_fetch(&self, root: [u8; 32]) {
        {
            let Ok(mut active) = self.inner.files.active.lock() else {
                return;
            };
            if active.contains_key(&root) {
                return;
            }
            active.insert(
                root,
                Progress {
                    root: hex::encode(root),
                    name: String::new(),
                    size: 0,
                    have: 0,
                    percent: 0.0,
                    bytes_per_sec: 0,
                    eta_secs: None,
                    sources: 0,
                    rejected: 0,
                    state: "queued".into(),
                },
            );
        }
        let s = self.clone();
        self.spawn(async move {
            let slots = s.inner.files.slots.clone();
            let _slot = slots.acquire_owned().await;
            let r = s.download(root).await;
            let (st, err) = match &r {
                Ok(()) => (state::COMPLETE, None),
                Err(e) => (state::PAUSED, Some(e.to_string())),
            };
            let (name, rejected) = s
                .inner
                .files
                .active
                .lock()
                .ok()
                .and_then(|mut a| a.remove(&root))
                .map(|p| (p.name, p.rejected))
                .unwrap_or_default();
            if let Err(e) =
                s.with_engine(|_, db| db::set_state(db.conn(), &root, st, err.as_deref()))
            {
                tracing::warn!(error = %e, "saving a file's state failed");
            }
            s.emit(GuildEvent::FileDone {
                root: hex::encode(root),
                name,
                ok: r.is_ok(),
                error: err,
                rejected,
            });
        });
    }

    /// Resumes fetches that were running when the node stopped.
    pub(crate) fn resume_fetches(&self) {
        if self.inner.files.store.is_none() {
            return;
        }
        let roots = self
            .with_engine(|_, db| db::fetching(db.conn()))
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        for r in roots {
            self.start_fetch(r);
        }
    }

    /// Connected devices of members of a guild that announced `root` (not ours).
    async fn sources_for(&self, root: &[u8; 32]) -> Vec<PeerId> {
        let connected: HashSet<PeerId> = self
            .inner
            .net
            .peers()
            .await
            .map(|v| v.into_iter().map(|p| p.peer).collect())
            .unwrap_or_default();
        self.with_engine(|e, db| {
            let me = e.keys.me;
            let guilds = db::guilds_of(db.conn(), root).unwrap_or_default();
            let mut out = Vec::new();
            for g in guilds {
                let Some(gs) = e.guilds.get_mut(&g) else {
                    continue;
                };
                for m in gs.crdt.view().members().values() {
                    for d in &m.devices {
                        if *d != me
                            && let Some(p) = peer_of(d)
                            && connected.contains(&p)
                            && !out.contains(&p)
                        {
                            out.push(p);
                        }
                    }
                }
            }
            out
        })
        .unwrap_or_default()
    }

    fn set_progress(&self, root: &[u8; 32], p: &Progress, event: bool) {
        if let Ok(mut a) = self.inner.files.active.lock()
            && let Some(slot) = a.get_mut(root)
        {
            *slot = p.clone();
        }
        if event {
            self.emit(GuildEvent::FileProgress(p.clone()));
        }
    }

    /// Fetches the manifest of `a` from the first member that has it and whose copy matches
    /// the root.
    async fn fetch_manifest(
        &self,
        a: &Attachment,
        count: u32,
        p: &mut Progress,
    ) -> Result<Vec<[u8; 32]>, GuildError> {
        let started = Instant::now();
        let mut tried: HashSet<PeerId> = HashSet::new();
        loop {
            let sources = self.sources_for(&a.root).await;
            tracing::debug!(sources = sources.len(), "asking for a manifest");
            for peer in sources {
                if !tried.insert(peer) {
                    continue;
                }
                let mut hashes: Vec<[u8; 32]> = Vec::new();
                let ok = loop {
                    let first = u32::try_from(hashes.len()).unwrap_or(u32::MAX);
                    let req = FileRequest::Manifest {
                        root: a.root,
                        first,
                    };
                    let answer = self.inner.net.request(peer, req.to_bytes()).await;
                    tracing::debug!(%peer, ok = answer.is_ok(), "manifest request answered");
                    match answer {
                        Ok(bytes) => match FileResponse::from_bytes(&bytes) {
                            Ok(FileResponse::Manifest { total, hashes: h })
                                if total == count && !h.is_empty() =>
                            {
                                hashes.extend(h);
                                if hashes.len() >= count as usize {
                                    break hashes.len() == count as usize;
                                }
                            }
                            _ => break false,
                        },
                        Err(_) => break false,
                    }
                };
                if ok && <[u8; 32]>::from(sha2::Sha256::digest(hashes.concat())) == a.root {
                    return Ok(hashes);
                }
            }
            if started.elapsed() > NO_SOURCE_TIMEOUT {
                return Err(GuildError::Invalid(
                    "no connected member has this file (it stays paused; fetch it again later)"
                        .into(),
                ));
            }
            if p.state != "waiting" {
                p.state = "waiting".into();
                self.set_progress(&a.root, p, true);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            // Members that failed may have it later (they were still fetching): ask everyone
            // again, at most once a second each.
            tried.clear();
        }
    }

    /// Fetches a file: the manifest, then every missing chunk from every member that has it.
    async fn download(&self, root: [u8; 32]) -> Result<(), GuildError> {
        let store = self.file_store()?.clone();
        let row = self
            .with_engine(|_, db| db::load(db.conn(), &root))?
            .map_err(|e| GuildError::Invalid(e.to_string()))?
            .ok_or_else(|| GuildError::Invalid("the file is no longer known".into()))?;
        if row.state == state::COMPLETE {
            return Ok(());
        }
        let a = row.attachment;
        let count = u32::try_from(a.chunk_count())
            .map_err(|_| GuildError::Invalid("file too large".into()))?;
        let mut p = Progress {
            root: hex::encode(root),
            name: a.name.clone(),
            size: a.size,
            have: 0,
            percent: 0.0,
            bytes_per_sec: 0,
            eta_secs: None,
            sources: 0,
            rejected: 0,
            state: "fetching".into(),
        };
        let s = store.clone();
        let hashes = match blocking(move || s.manifest(&root)).await?.ok().flatten() {
            Some(h) if h.len() == count as usize => h,
            _ => {
                let h = self.fetch_manifest(&a, count, &mut p).await?;
                let (s, h2) = (store.clone(), h.clone());
                blocking(move || s.put_manifest(&root, &h2))
                    .await?
                    .map_err(io_err("saving the manifest"))?;
                h
            }
        };
        let (s, a2) = (store.clone(), a.clone());
        let part = Arc::new(
            blocking(move || s.open_part(&a2))
                .await?
                .map_err(io_err("opening the part file"))?,
        );
        let empty = bitmap(u64::from(count));
        let mut have = row.have.filter(|h| h.len() == empty.len()).unwrap_or(empty);
        if row.have_count > 0 {
            // Progress is saved without syncing the part file: chunks the bitmap claims are
            // checked again, and any lost in a crash are fetched again.
            let (s, h, mut map) = (store.clone(), hashes.clone(), have);
            let (header, size) = (a.header, a.size);
            let (map2, cleared) = blocking(move || {
                let r = s.verify_part(&root, &header, size, &h, &mut map);
                (map, r)
            })
            .await?;
            have = map2;
            let cleared = cleared.map_err(io_err("checking the part file"))?;
            if cleared > 0 {
                tracing::info!(cleared, "chunks lost before a restart are fetched again");
            }
        }
        let mut missing: VecDeque<u32> = (0..count).filter(|&i| !bit(&have, i)).collect();
        let mut have_count = u64::from(count) - missing.len() as u64;
        let mut have_bytes: u64 = (0..count)
            .filter(|&i| bit(&have, i))
            .map(|i| chunk_span(&a.header, a.size, i).1 as u64)
            .sum::<u64>();
        p.have = have_bytes.min(a.size);
        p.percent = percent(p.have, a.size);
        self.set_progress(&root, &p, false);
        let mut sources: HashMap<PeerId, Source> = HashMap::new();
        let mut bad: HashMap<u32, Vec<PeerId>> = HashMap::new();
        // One file stream per member asked, opened on first use and again after it fails.
        let mut links: HashMap<PeerId, Arc<tokio::sync::Mutex<Link>>> = HashMap::new();
        // Frame buffers, reused from answer to answer.
        let spares = Spares::default();
        let mut inflight: FuturesUnordered<
            std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>>,
        > = FuturesUnordered::new();
        let mut writes: FuturesUnordered<
            std::pin::Pin<Box<dyn std::future::Future<Output = Written> + Send>>,
        > = FuturesUnordered::new();
        let mut refreshed: Option<Instant> = None;
        let mut saved = Instant::now();
        let mut shown = Instant::now();
        let mut idle_since: Option<Instant> = None;
        let mut window: VecDeque<(Instant, u64)> = VecDeque::from([(Instant::now(), have_bytes)]);
        let mut dirty = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !missing.is_empty() || !inflight.is_empty() || !writes.is_empty() {
            let now = Instant::now();
            if refreshed.is_none_or(|t| now.duration_since(t) > Duration::from_secs(2)) {
                refreshed = Some(now);
                let live = self.sources_for(&root).await;
                sources.retain(|peer, src| live.contains(peer) || src.inflight > 0);
                links.retain(|peer, _| sources.contains_key(peer));
                for peer in live {
                    sources.entry(peer).or_insert(Source {
                        inflight: 0,
                        strikes: 0,
                        errors: 0,
                        wait_until: None,
                        dropped: false,
                        sending: false,
                    });
                }
            }
            // Ask: the usable source with the fewest requests in flight gets the next run of
            // missing chunks it has not already failed.
            while inflight.len() < MAX_INFLIGHT && !missing.is_empty() {
                let now = Instant::now();
                let pick = sources
                    .iter()
                    .filter(|(_, s)| {
                        !s.dropped
                            && s.inflight < MAX_INFLIGHT_PER_PEER
                            && s.wait_until.is_none_or(|t| t <= now)
                    })
                    .min_by_key(|(_, s)| s.inflight)
                    .map(|(p, _)| *p);
                let Some(peer) = pick else { break };
                let Some(pos) = missing
                    .iter()
                    .position(|i| bad.get(i).is_none_or(|b| !b.contains(&peer)))
                else {
                    // Every missing chunk already failed from this member.
                    if let Some(s) = sources.get_mut(&peer) {
                        s.wait_until = Some(now + Duration::from_secs(5));
                    }
                    continue;
                };
                let first = missing.remove(pos).unwrap_or(0);
                let mut batch = vec![first];
                while batch.len() < usize::from(MAX_CHUNKS_PER_REQUEST) {
                    let next = first + batch.len() as u32;
                    match missing.iter().position(|&i| i == next) {
                        Some(q) if bad.get(&next).is_none_or(|b| !b.contains(&peer)) => {
                            missing.remove(q);
                            batch.push(next);
                        }
                        _ => break,
                    }
                }
                let req = FileRequest::Chunks {
                    root,
                    first,
                    count: batch.len() as u16,
                };
                if let Some(s) = sources.get_mut(&peer) {
                    s.inflight += 1;
                }
                let link = links.entry(peer).or_default().clone();
                let svc = self.clone();
                let spares = spares.clone();
                inflight.push(Box::pin(async move {
                    let r = svc.file_request(&link, peer, req.to_bytes(), &spares).await;
                    (peer, batch, r)
                }));
            }
            if inflight.is_empty() && writes.is_empty() {
                let since = *idle_since.get_or_insert(Instant::now());
                if since.elapsed() > NO_SOURCE_TIMEOUT {
                    self.save_have(&root, &have, have_count).await;
                    return Err(GuildError::Invalid(
                        "no connected member has the rest of this file (it stays paused; fetch it again later)"
                            .into(),
                    ));
                }
                if p.state != "waiting" {
                    p.state = "waiting".into();
                    p.sources = 0;
                    self.set_progress(&root, &p, true);
                }
                refreshed = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            idle_since = None;
            let step = tokio::select! {
                Some(answer) = inflight.next(), if writes.len() < MAX_WRITES => Step::Answer(answer),
                Some(done) = writes.next() => Step::Written(done),
                _ = tick.tick() => Step::Tick,
            };
            match step {
                Step::Tick => {}
                Step::Answer((peer, batch, r)) => {
                    // Chunks returned go to a blocking task that checks and writes them straight
                    // from the received frame; the rest are asked again.
                    let mut got: Vec<(u32, std::ops::Range<usize>, [u8; 32])> = Vec::new();
                    let mut requeue: Vec<u32> = Vec::new();
                    let frame = r.unwrap_or_default();
                    match FileAnswer::parse(&frame) {
                        Ok(FileAnswer::Chunks(chunks)) => {
                            let mut by: HashMap<u32, std::ops::Range<usize>> = chunks
                                .into_iter()
                                .filter(|(i, _)| batch.contains(i))
                                .map(|(i, c)| (i, span_in(&frame, c)))
                                .collect();
                            for i in &batch {
                                match (by.remove(i), hashes.get(*i as usize)) {
                                    (Some(c), Some(h)) => got.push((*i, c, *h)),
                                    _ => requeue.push(*i),
                                }
                            }
                        }
                        Ok(_) | Err(_) => requeue.extend(&batch),
                    }
                    if let Some(s) = sources.get_mut(&peer) {
                        s.inflight = s.inflight.saturating_sub(1);
                        if got.is_empty() {
                            s.sending = false;
                            s.errors += 1;
                            let backoff = Duration::from_millis(250 * u64::from(s.errors.min(12)));
                            s.wait_until = Some(Instant::now() + backoff);
                        } else {
                            s.errors = 0;
                        }
                    }
                    for i in requeue.into_iter().rev() {
                        missing.push_front(i);
                    }
                    if got.is_empty() {
                        spares.give(frame);
                    } else {
                        let f = part.clone();
                        let header = a.header;
                        let size = a.size;
                        let spares = spares.clone();
                        writes.push(Box::pin(async move {
                            let r =
                                blocking(move || -> std::io::Result<Vec<(u32, Option<usize>)>> {
                                    use std::os::unix::fs::FileExt;
                                    let mut out = Vec::with_capacity(got.len());
                                    for (i, span, expected) in got {
                                        let c = &frame[span];
                                        if chunk_span(&header, size, i).1 != c.len()
                                            || chunk_hash(c) != expected
                                        {
                                            out.push((i, None));
                                            continue;
                                        }
                                        let (off, _) = chunk_span(&header, size, i);
                                        f.write_all_at(c, off)?;
                                        out.push((i, Some(c.len())));
                                    }
                                    spares.give(frame);
                                    Ok(out)
                                })
                                .await
                                .and_then(|r| r.map_err(io_err("writing the part file")));
                            (peer, r)
                        }));
                    }
                }
                Step::Written((peer, r)) => {
                    let mut strikes = 0u32;
                    for (i, len) in r? {
                        match len {
                            Some(len) => {
                                if !bit(&have, i) {
                                    set_bit(&mut have, i);
                                    have_count += 1;
                                    have_bytes += len as u64;
                                    bad.remove(&i);
                                }
                                dirty = true;
                            }
                            None => {
                                // A chunk that fails its check: counted, never asked of this
                                // member again, and first in line for another.
                                strikes += 1;
                                p.rejected += 1;
                                let b = bad.entry(i).or_default();
                                if b.len() < 64 {
                                    b.push(peer);
                                }
                                tracing::warn!(chunk = i, %peer, "a fetched chunk failed its check");
                                missing.push_front(i);
                            }
                        }
                    }
                    if let Some(s) = sources.get_mut(&peer) {
                        s.strikes += strikes;
                        s.sending = strikes == 0;
                        if s.strikes >= MAX_STRIKES {
                            s.dropped = true;
                        }
                    }
                }
            }
            let now = Instant::now();
            if dirty && now.duration_since(saved) >= SAVE_EVERY {
                saved = now;
                dirty = false;
                self.save_have(&root, &have, have_count).await;
            }
            if now.duration_since(shown) >= PROGRESS_EVERY {
                shown = now;
                window.push_back((now, have_bytes));
                while window.len() > 2
                    && window
                        .front()
                        .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(5))
                {
                    window.pop_front();
                }
                let (t0, b0) = window.front().copied().unwrap_or((now, have_bytes));
                let secs = now.duration_since(t0).as_secs_f64();
                let speed = if secs > 0.0 {
                    ((have_bytes - b0.min(have_bytes)) as f64 / secs) as u64
                } else {
                    0
                };
                p.have = have_bytes.min(a.size);
                p.percent = percent(p.have, a.size);
                p.bytes_per_sec = speed;
                p.eta_secs = (speed > 0).then(|| (a.size - p.have) / speed);
                p.sources = sources.values().filter(|s| s.sending && !s.dropped).count();
                p.state = "fetching".into();
                self.set_progress(&root, &p, true);
            }
        }
        blocking(move || part.sync_all())
            .await?
            .map_err(io_err("syncing the part file"))?;
        let s = store.clone();
        blocking(move || s.finish_part(&root))
            .await?
            .map_err(io_err("finishing the file"))?;
        p.have = a.size;
        p.percent = 100.0;
        p.eta_secs = Some(0);
        p.state = "complete".into();
        self.set_progress(&root, &p, true);
        Ok(())
    }

    /// Saves which chunks are held. The part file is not synced first (that stalled the
    /// transfer every second); a resumed fetch checks the chunks again instead.
    async fn save_have(&self, root: &[u8; 32], have: &[u8], count: u64) {
        let r = self.with_engine(|_, db| db::set_have(db.conn(), root, have, count));
        if !matches!(r, Ok(Ok(()))) {
            tracing::warn!("saving fetch progress failed");
        }
    }

    /// Sends a fetch-protocol request to `peer` over `link` (opening its stream if needed) and
    /// returns the answer's bytes.
    async fn file_request(
        &self,
        link: &tokio::sync::Mutex<Link>,
        peer: PeerId,
        req: Vec<u8>,
        spares: &Spares,
    ) -> Result<Vec<u8>, String> {
        let pipe = {
            let mut l = link.lock().await;
            match &*l {
                Link::Stream(p) if !p.is_closed() => Some(p.clone()),
                Link::Direct => None,
                _ => match self.inner.net.open_files_stream(peer).await {
                    Ok(stream) => {
                        let (p, driver) = Pipe::new(stream, spares.clone());
                        self.spawn(driver);
                        *l = Link::Stream(p.clone());
                        Some(p)
                    }
                    Err(NetError::Unsupported(_)) => {
                        *l = Link::Direct;
                        None
                    }
                    Err(e) => {
                        *l = Link::Unopened;
                        return Err(e.to_string());
                    }
                },
            }
        };
        match pipe {
            Some(p) => p.request(req).await,
            None => self
                .inner
                .net
                .request(peer, req)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Serves file streams that members open ([`crate::files::stream`]): only from devices of
    /// members of one of our guilds (others are closed at once), at most [`MAX_SERVING`] at once
    /// and [`MAX_STREAMS_PER_PEER`] per peer (more are answered `busy`). Every request on them
    /// is checked like one on the direct protocol.
    pub(crate) async fn serve_file_streams(self) {
        let Ok(mut incoming) = self.inner.net.accept_files_streams() else {
            tracing::warn!("file streams cannot be served (already taken)");
            return;
        };
        let busy = FileResponse::Busy.to_bytes();
        while let Some((peer, stream)) = incoming.next().await {
            // Only members' devices get a stream slot (every request is checked again, for
            // its file); others are refused at once.
            let member = device_of(&peer).is_some_and(|device| {
                self.with_engine(|e, _| {
                    e.guilds
                        .values_mut()
                        .any(|gs| gs.crdt.view().user_of_device(&device).is_some())
                })
                .unwrap_or(false)
            });
            if !member {
                tracing::debug!(%peer, "file stream refused: not a member's device");
                continue;
            }
            let per_peer = self.inner.files.streams_of.lock().ok().and_then(|mut m| {
                let n = m.entry(peer).or_default();
                (*n < MAX_STREAMS_PER_PEER).then(|| {
                    *n += 1;
                    StreamSlot {
                        svc: self.clone(),
                        peer,
                    }
                })
            });
            let permit = self.inner.files.serving.clone().try_acquire_owned();
            let (Some(slot), Ok(permit)) = (per_peer, permit) else {
                crate::files::stream::refuse(stream, &busy).await;
                continue;
            };
            let s = self.clone();
            self.spawn(async move {
                let _held = (slot, permit);
                crate::files::stream::serve(stream, |req, buf| {
                    let s = s.clone();
                    async move { s.answer_file(peer, &req, buf).await }
                })
                .await;
            });
        }
    }

    /// Answers a fetch-protocol request from `peer`.
    pub(crate) async fn serve_file(&self, peer: PeerId, id: InboundRequestId, data: Vec<u8>) {
        let resp = match self.inner.files.serving.clone().try_acquire_owned() {
            Ok(_permit) => self.answer_file(peer, &data, Vec::new()).await,
            Err(_) => FileResponse::Busy.to_bytes(),
        };
        let _ = self.inner.net.respond(id, resp).await;
    }

    /// The encoded answer to a fetch-protocol request from `peer`; a `Chunks` answer is built
    /// in `buf` (a buffer to reuse).
    async fn answer_file(&self, peer: PeerId, data: &[u8], buf: Vec<u8>) -> Vec<u8> {
        self.answer_file_in(peer, data, buf)
            .await
            .unwrap_or_else(|r| r.to_bytes())
    }

    /// [`Self::answer_file`]: a built `Chunks` frame, or another answer to encode.
    async fn answer_file_in(
        &self,
        peer: PeerId,
        data: &[u8],
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>, FileResponse> {
        let (Ok(req), Some(device), Ok(store)) = (
            FileRequest::from_bytes(data),
            device_of(&peer),
            self.file_store(),
        ) else {
            return Err(FileResponse::Missing);
        };
        let root = match &req {
            FileRequest::Manifest { root, .. } | FileRequest::Chunks { root, .. } => *root,
        };
        // Served only to a device of a member of a guild that announced the file.
        let row = self.with_engine(|e, db| {
            let allowed = db::guilds_of(db.conn(), &root)
                .unwrap_or_default()
                .iter()
                .any(|g| {
                    e.guilds
                        .get_mut(g)
                        .is_some_and(|gs| gs.crdt.view().user_of_device(&device).is_some())
                });
            if allowed {
                db::load(db.conn(), &root).ok().flatten()
            } else {
                None
            }
        });
        let Ok(Some(row)) = row else {
            tracing::debug!(%peer, "file request refused: unknown file or not a member");
            return Err(FileResponse::Missing);
        };
        let store = store.clone();
        match req {
            FileRequest::Manifest { first, .. } => Err(
                match blocking(move || store.manifest_page(&root, first)).await {
                    Ok(Ok(Some((total, hashes)))) if first < total || total == 0 => {
                        FileResponse::Manifest { total, hashes }
                    }
                    _ => FileResponse::Missing,
                },
            ),
            FileRequest::Chunks { first, count, .. } => {
                let have = match row.state {
                    state::COMPLETE => None,
                    _ => match row.have {
                        Some(h) => Some(h),
                        None => return Err(FileResponse::Missing),
                    },
                };
                let a = row.attachment;
                let r = blocking(move || {
                    let n = store.chunks_answer(
                        &root,
                        &a.header,
                        a.size,
                        (first..first.saturating_add(u32::from(count))).take(usize::from(count)),
                        have.as_deref(),
                        &mut buf,
                    );
                    (n, buf)
                })
                .await;
                match r {
                    Ok((Ok(n), frame)) if n > 0 => Ok(frame),
                    _ => Err(FileResponse::Missing),
                }
            }
        }
    }

    /// `files status [FILE]`: running fetches and, with a file, that file's state.
    pub fn file_status(&self, file: Option<&str>) -> Result<Value, GuildError> {
        let active: Vec<Progress> = self
            .inner
            .files
            .active
            .lock()
            .map_err(|_| GuildError::Poisoned)?
            .values()
            .cloned()
            .collect();
        let Some(file) = file else {
            return Ok(json!({ "fetching": active }));
        };
        let root = self.resolve_file(file)?;
        if let Some(p) = active.iter().find(|p| p.root == hex::encode(root)) {
            return Ok(serde_json::to_value(p).unwrap_or(Value::Null));
        }
        let row = self
            .with_engine(|_, db| db::load(db.conn(), &root))?
            .map_err(|e| GuildError::Invalid(e.to_string()))?
            .ok_or_else(|| GuildError::Invalid(format!("no file {file}")))?;
        let a = &row.attachment;
        let have = if row.state == state::COMPLETE {
            a.size
        } else {
            (row.have_count * u64::from(a.header.chunk_size())).min(a.size)
        };
        Ok(json!({
            "root": hex::encode(root),
            "name": a.name,
            "size": a.size,
            "have": have,
            "percent": percent(have, a.size),
            "state": state::name(row.state),
            "error": row.error,
        }))
    }

    /// `files save FILE PATH`: decrypts a fetched file into `path` (checked against its
    /// announced hash; never overwrites).
    pub async fn save_file(&self, file: &str, path: &Path) -> Result<Value, GuildError> {
        let root = self.resolve_file(file)?;
        let store = self.file_store()?.clone();
        let row = self
            .with_engine(|_, db| db::load(db.conn(), &root))?
            .map_err(|e| GuildError::Invalid(e.to_string()))?
            .ok_or_else(|| GuildError::Invalid(format!("no file {file}")))?;
        if row.state != state::COMPLETE || !store.is_complete(&root) {
            return Err(GuildError::Invalid(format!(
                "{} is not fetched yet (state {}): run `files fetch` first",
                row.attachment.name,
                state::name(row.state)
            )));
        }
        let a = row.attachment;
        let dest = path.to_path_buf();
        let name = a.name.clone();
        let n = blocking(move || store.export(&a, &dest))
            .await?
            .map_err(io_err("saving the file"))?;
        Ok(
            json!({"root": hex::encode(root), "name": name, "path": path.display().to_string(), "bytes": n}),
        )
    }

    /// `files list GUILD [CHANNEL]`: files announced in a guild, newest first.
    pub fn list_files(&self, guild: &str, channel: Option<&str>) -> Result<Value, GuildError> {
        let gid = self.resolve(guild)?;
        self.with_engine(|e, db| {
            let ch = match channel {
                Some(c) => Some(super::resolve_channel(e.guild_mut(&gid)?.crdt.view(), c)?.0),
                None => None,
            };
            let rows = db::list(db.conn(), &gid, ch, 500)
                .map_err(|e| GuildError::Invalid(e.to_string()))?;
            Ok(serde_json::to_value(rows).unwrap_or(Value::Null))
        })?
    }

    /// The decrypted bytes of a complete small file (soundboard assets).
    pub fn read_small_file(&self, root: &[u8; 32], max: u64) -> Result<Vec<u8>, GuildError> {
        let store = self.file_store()?;
        let row = self
            .with_engine(|_, db| db::load(db.conn(), root))?
            .map_err(|e| GuildError::Invalid(e.to_string()))?
            .ok_or_else(|| GuildError::Invalid("unknown file".into()))?;
        store
            .read_small(&row.attachment, max)
            .map_err(io_err("reading the file"))
    }

    /// Forgets files no message refers to any more and removes their ciphertext.
    pub(crate) fn collect_files(&self) {
        let Ok(store) = self.file_store() else {
            return;
        };
        let roots = match self.with_engine(|_, db| db::collect_orphans(db.conn())) {
            Ok(Ok(r)) => r,
            _ => return,
        };
        for r in roots {
            let running = self
                .inner
                .files
                .active
                .lock()
                .is_ok_and(|a| a.contains_key(&r));
            if !running {
                store.remove(&r);
            }
        }
    }

    /// The files of a message as shown (with thumbnails).
    pub fn message_files(&self, guild: &str, msg: &str) -> Result<Vec<FileInfo>, GuildError> {
        let gid = self.resolve(guild)?;
        let id = hex::decode(msg).map_err(|_| GuildError::Invalid("message id".into()))?;
        self.with_engine(|_, db| db::infos(db.conn(), &gid, &id))?
            .map_err(|e| GuildError::Invalid(e.to_string()))
    }
}

/// Where `part` (a slice of `frame`) lies in it.
fn span_in(frame: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(frame.as_ptr() as usize);
    start..start + part.len()
}

fn percent(have: u64, size: u64) -> f64 {
    if size == 0 {
        100.0
    } else {
        (have as f64 * 1000.0 / size as f64).round() / 10.0
    }
}
