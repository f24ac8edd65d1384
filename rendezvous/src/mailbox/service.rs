//! The relay side's glue: a worker thread that owns the [`Store`], fed by the swarm task.
//!
//! SQLite calls block (and `synchronous = FULL` waits for the disk), so they run on their own
//! thread rather than in the swarm's event loop. The swarm task hands each decoded request
//! with its response channel to the worker over a bounded queue of [`QUEUE`] jobs; when the
//! queue is full it answers [`Refusal::Busy`] at once instead of waiting. The worker answers on
//! a second bounded channel that the swarm task drains, sweeps expired items every
//! `sweep_interval`, and exits when the swarm task drops its sender (after the jobs already
//! queued), closing the database.

use std::{
    sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use libp2p::{PeerId, request_response::ResponseChannel};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::mpsc as tmpsc;

use super::{
    store::Store,
    wire::{AuthFailure, Quota, Refusal, Request, Response},
};

/// Jobs queued for the worker before new requests are refused as busy.
pub const QUEUE: usize = 256;

type Labels = [(&'static str, &'static str); 1];

/// Mailbox counters in the relay's Prometheus registry: counts only, never tags or peer ids.
#[derive(Debug, Clone, Default)]
pub struct MailboxMetrics {
    deposits: Counter,
    pickups: Counter,
    items_picked_up: Counter,
    acks: Counter,
    claims_acked: Counter,
    status: Counter,
    expired: Counter,
    refusals: Family<Labels, Counter>,
    bytes_stored: Gauge,
    items_stored: Gauge,
    prekey_publishes: Counter,
    prekey_fetches: Counter,
}

impl MailboxMetrics {
    /// Registers the counters under `securecomm_mailbox_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("securecomm_mailbox");
        r.register("deposits", "Items stored", m.deposits.clone());
        r.register("pickups", "Pickup requests served", m.pickups.clone());
        r.register(
            "items_picked_up",
            "Items returned in pickup pages",
            m.items_picked_up.clone(),
        );
        r.register("acks", "Ack requests served", m.acks.clone());
        r.register(
            "claims_acked",
            "Recipient claims removed by acks",
            m.claims_acked.clone(),
        );
        r.register("status", "Status requests served", m.status.clone());
        r.register(
            "expired",
            "Items expired before every recipient acked",
            m.expired.clone(),
        );
        r.register(
            "refusals",
            "Requests refused, by reason",
            m.refusals.clone(),
        );
        r.register("bytes_stored", "Blob bytes stored", m.bytes_stored.clone());
        r.register("items_stored", "Items stored", m.items_stored.clone());
        r.register(
            "prekey_publishes",
            "Prekey bundles published",
            m.prekey_publishes.clone(),
        );
        r.register(
            "prekey_fetches",
            "Prekey fetches served",
            m.prekey_fetches.clone(),
        );
        m
    }

    /// The counter of requests that could not be decoded or were cut off.
    pub fn malformed(&self) -> Counter {
        self.refusals
            .get_or_create(&[("reason", "malformed")])
            .clone()
    }

    /// Counts a refusal.
    pub fn refused(&self, refusal: &Refusal) {
        let reason = match refusal {
            Refusal::QuotaExceeded {
                which: Quota::Recipient(_),
                ..
            } => "quota_recipient",
            Refusal::QuotaExceeded {
                which: Quota::Sender,
                ..
            } => "quota_sender",
            Refusal::QuotaExceeded {
                which: Quota::Relay,
                ..
            } => "quota_relay",
            Refusal::TooLarge { .. } => "too_large",
            Refusal::Disabled => "disabled",
            Refusal::Unauthorized(AuthFailure::BadSignature) => "bad_signature",
            Refusal::Unauthorized(AuthFailure::Replayed) => "replayed",
            Refusal::ClockSkew { .. } => "clock_skew",
            Refusal::Busy { .. } => "busy",
            Refusal::Forbidden => "forbidden",
            Refusal::Outdated { .. } => "outdated",
            Refusal::Internal => "internal",
        };
        self.refusals.get_or_create(&[("reason", reason)]).inc();
    }

    fn record(&self, changes_storage: bool, response: &Response, store: &Store) {
        match response {
            Response::Refused(r) => self.refused(r),
            Response::Stored { .. } => {
                self.deposits.inc();
            }
            Response::Page { items, .. } => {
                self.pickups.inc();
                self.items_picked_up.inc_by(items.len() as u64);
            }
            Response::Acked { removed } => {
                self.acks.inc();
                self.claims_acked.inc_by(u64::from(*removed));
            }
            Response::Status { .. } => {
                self.status.inc();
            }
            Response::PrekeysPublished { .. } => {
                self.prekey_publishes.inc();
            }
            Response::Prekeys { .. } | Response::PrekeysNotFound => {
                self.prekey_fetches.inc();
            }
        }
        if changes_storage {
            self.gauges(store);
        }
    }

    fn gauges(&self, store: &Store) {
        self.bytes_stored
            .set(i64::try_from(store.bytes_stored()).unwrap_or(i64::MAX));
        self.items_stored
            .set(i64::try_from(store.items_stored()).unwrap_or(i64::MAX));
    }
}

/// One request for the worker.
#[derive(Debug)]
pub struct Job {
    /// The connection's peer id.
    pub peer: PeerId,
    /// The decoded request.
    pub request: Request,
    /// Where the answer goes.
    pub channel: ResponseChannel<Response>,
}

/// An answer for the swarm task to send.
pub type Reply = (ResponseChannel<Response>, Response);

/// The running worker.
#[derive(Debug)]
pub struct Service {
    jobs: Option<SyncSender<Job>>,
    replies: Option<tmpsc::Receiver<Reply>>,
    thread: Option<JoinHandle<()>>,
    metrics: MailboxMetrics,
}

/// Unix seconds from the system clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Service {
    /// Starts the worker thread.
    pub fn start(
        store: Store,
        metrics: MailboxMetrics,
        sweep_interval: Duration,
    ) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let (reply_tx, replies) = tmpsc::channel::<Reply>(QUEUE + 1);
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("mailbox".into())
            .spawn(move || worker(store, rx, reply_tx, m, sweep_interval))?;
        Ok(Self {
            jobs: Some(jobs),
            replies: Some(replies),
            thread: Some(thread),
            metrics,
        })
    }

    /// The answers channel (taken once by the swarm task).
    pub fn take_replies(&mut self) -> Option<tmpsc::Receiver<Reply>> {
        self.replies.take()
    }

    /// Queues a job; gives it back when the queue is full or the worker is gone.
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        match &self.jobs {
            Some(tx) => tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(j) | TrySendError::Disconnected(j) => Box::new(j),
            }),
            None => Err(Box::new(job)),
        }
    }

    /// The metrics handle.
    pub fn metrics(&self) -> &MailboxMetrics {
        &self.metrics
    }

    /// Lets the worker finish its queue and waits for it to close the database.
    pub async fn stop(mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

fn worker(
    mut store: Store,
    rx: mpsc::Receiver<Job>,
    replies: tmpsc::Sender<Reply>,
    metrics: MailboxMetrics,
    sweep_interval: Duration,
) {
    let sweep = |store: &mut Store| match store.sweep(unix_now()) {
        Ok(report) => {
            metrics.expired.inc_by(report.expired);
            metrics.gauges(store);
            if report.expired > 0 || report.prekeys_expired > 0 {
                tracing::info!(
                    items = report.expired,
                    prekeys = report.prekeys_expired,
                    "mailbox sweep"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "mailbox sweep failed"),
    };
    sweep(&mut store);
    let mut next_sweep = Instant::now() + sweep_interval;
    loop {
        let wait = next_sweep.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(job) => {
                let changes_storage =
                    matches!(job.request, Request::Deposit(_) | Request::Ack { .. });
                let response = store.handle(&job.peer, job.request, unix_now());
                metrics.record(changes_storage, &response, &store);
                if replies.blocking_send((job.channel, response)).is_err() {
                    // The swarm task is gone; finish quietly.
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_sweep {
            sweep(&mut store);
            next_sweep = Instant::now() + sweep_interval;
        }
    }
    tracing::debug!("mailbox worker stopped");
}
