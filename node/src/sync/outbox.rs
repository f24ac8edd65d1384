//! A durable outbox of gossip publications.
//!
//! Gossipsub refuses to publish until some peer's subscription to the topic has reached us
//! (`NoPeersSubscribedToTopic`), which is the normal state for the first heartbeats after a
//! connection and whenever every peer is offline. So a publication is first written to the
//! `outbox` table (migration 1, plus `next_attempt_at` from migration 2), then published by
//! [`Outbox::flush`]; it is deleted only once gossipsub accepted it, and otherwise retried with
//! exponential backoff from [`BACKOFF_MIN_MS`] to [`BACKOFF_MAX_MS`], across restarts.
//!
//! Bounds: at most [`MAX_OUTBOX`] publications, each at most
//! [`crate::net::MAX_GOSSIP_MESSAGE`] bytes on a topic of at most
//! [`MAX_TOPIC`] bytes; [`Outbox::enqueue`] fails with [`SyncError::OutboxFull`] beyond that, so
//! the caller sees back-pressure instead of silent loss.
//!
//! Gossipsub's `Duplicate` error means the same bytes were already published (ids are content
//! hashes), so it counts as success; `MessageTooLarge` can never succeed, so the publication is
//! dropped. Every other error is retried. Time is passed in as milliseconds, so tests control it.

use std::sync::Mutex;

use rusqlite::params;

use super::SyncError;
use crate::net::{Client, MAX_GOSSIP_MESSAGE, NetError};
use crate::store::Db;

/// Most publications waiting.
pub const MAX_OUTBOX: usize = 4096;
/// Longest topic string.
pub const MAX_TOPIC: usize = 256;
/// First retry delay.
pub const BACKOFF_MIN_MS: u64 = 200;
/// Longest retry delay.
pub const BACKOFF_MAX_MS: u64 = 30_000;
/// Most publications one [`Outbox::flush`] attempts.
pub const FLUSH_BATCH: usize = 64;

/// A publication waiting in the outbox.
#[derive(Clone, PartialEq, Eq)]
pub struct Publication {
    /// Its row id.
    pub id: i64,
    /// The gossip topic.
    pub topic: String,
    /// The bytes to publish.
    pub data: Vec<u8>,
    /// Failed attempts so far.
    pub attempts: u32,
}

impl std::fmt::Debug for Publication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publication")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("len", &self.data.len())
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// What one flush did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlushReport {
    /// Published and removed.
    pub published: usize,
    /// Failed and rescheduled.
    pub retried: usize,
    /// Dropped because they can never be published.
    pub dropped: usize,
}

/// The retry delay after `attempts` failures.
pub fn backoff_ms(attempts: u32) -> u64 {
    BACKOFF_MIN_MS
        .checked_shl(attempts.min(20))
        .unwrap_or(BACKOFF_MAX_MS)
        .min(BACKOFF_MAX_MS)
}

fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The outbox operations (the state is all in the database).
#[derive(Debug, Clone, Copy, Default)]
pub struct Outbox;

impl Outbox {
    /// Queues a publication, due at once.
    pub fn enqueue(db: &Db, topic: &str, data: &[u8], now_ms: u64) -> Result<i64, SyncError> {
        Self::enqueue_in(db.conn(), topic, data, now_ms)
    }

    /// [`Outbox::enqueue`] on a connection or an open transaction, so a publication can commit
    /// atomically with the caller's own writes (for example the message it carries and the key
    /// state that encrypted it).
    pub fn enqueue_in(
        conn: &rusqlite::Connection,
        topic: &str,
        data: &[u8],
        now_ms: u64,
    ) -> Result<i64, SyncError> {
        if topic.len() > MAX_TOPIC || data.len() > MAX_GOSSIP_MESSAGE {
            return Err(SyncError::PublicationTooLarge {
                max_topic: MAX_TOPIC,
                max_data: MAX_GOSSIP_MESSAGE,
                topic: topic.len(),
                data: data.len(),
            });
        }
        let n: i64 = conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
        if usize::try_from(n).unwrap_or(usize::MAX) >= MAX_OUTBOX {
            return Err(SyncError::OutboxFull { max: MAX_OUTBOX });
        }
        conn.prepare_cached(
            "INSERT INTO outbox (topic, data, created_at, attempts, next_attempt_at) VALUES (?1, ?2, ?3, 0, ?3)",
        )?
        .execute(params![topic, data, sql_u64(now_ms)])?;
        Ok(conn.last_insert_rowid())
    }

    /// How many publications wait.
    pub fn len(db: &Db) -> Result<usize, SyncError> {
        let n: i64 = db
            .conn()
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Publications due at `now_ms`, oldest first, at most `limit`.
    pub fn due(db: &Db, now_ms: u64, limit: usize) -> Result<Vec<Publication>, SyncError> {
        let mut st = db.conn().prepare_cached(
            "SELECT id, topic, data, attempts FROM outbox WHERE next_attempt_at <= ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = st.query_map(params![sql_u64(now_ms), sql_u64(limit as u64)], |r| {
            Ok(Publication {
                id: r.get(0)?,
                topic: r.get(1)?,
                data: r.get(2)?,
                attempts: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Makes every publication on `topic` due at `now_ms` (a peer just subscribed to it, so
    /// what waited out a backoff can go now). Returns how many were waiting.
    pub fn hurry(db: &Db, topic: &str, now_ms: u64) -> Result<usize, SyncError> {
        Ok(db
            .conn()
            .prepare_cached(
                "UPDATE outbox SET next_attempt_at = ?2 WHERE topic = ?1 AND next_attempt_at > ?2",
            )?
            .execute(params![topic, sql_u64(now_ms)])?)
    }

    /// When the next publication is due, if any.
    pub fn next_due_ms(db: &Db) -> Result<Option<u64>, SyncError> {
        let v: Option<i64> =
            db.conn()
                .query_row("SELECT min(next_attempt_at) FROM outbox", [], |r| r.get(0))?;
        Ok(v.map(|v| u64::try_from(v).unwrap_or(0)))
    }

    /// Removes a publication (published, or never publishable).
    pub fn remove(db: &Db, id: i64) -> Result<(), SyncError> {
        db.conn()
            .prepare_cached("DELETE FROM outbox WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    /// Records a failed attempt and schedules the next one.
    pub fn failed(db: &Db, id: i64, now_ms: u64) -> Result<(), SyncError> {
        let attempts: Option<u32> = db
            .conn()
            .query_row("SELECT attempts FROM outbox WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .ok();
        let attempts = attempts.unwrap_or(0).saturating_add(1);
        let next = now_ms.saturating_add(backoff_ms(attempts.saturating_sub(1)));
        db.conn()
            .prepare_cached("UPDATE outbox SET attempts = ?2, next_attempt_at = ?3 WHERE id = ?1")?
            .execute(params![id, attempts, sql_u64(next)])?;
        Ok(())
    }

    /// Publishes what is due. The database lock is never held across an `await`.
    pub async fn flush(
        db: &Mutex<Db>,
        client: &Client,
        now_ms: u64,
    ) -> Result<FlushReport, SyncError> {
        let due = {
            let db = db.lock().map_err(|_| SyncError::Poisoned)?;
            Self::due(&db, now_ms, FLUSH_BATCH)?
        };
        let mut report = FlushReport::default();
        for p in due {
            let result = client.publish(&p.topic, p.data.clone()).await;
            if matches!(result, Err(NetError::Closed)) {
                return Err(SyncError::Net(NetError::Closed));
            }
            let db = db.lock().map_err(|_| SyncError::Poisoned)?;
            match Self::settle(&db, &p, result, now_ms)? {
                Settled::Published => report.published += 1,
                Settled::Retry => report.retried += 1,
                Settled::Dropped => report.dropped += 1,
            }
        }
        Ok(report)
    }

    /// Records the outcome of one publish attempt.
    pub fn settle<T>(
        db: &Db,
        p: &Publication,
        result: Result<T, NetError>,
        now_ms: u64,
    ) -> Result<Settled, SyncError> {
        match result {
            Ok(_) => {
                Self::remove(db, p.id)?;
                Ok(Settled::Published)
            }
            // Gossipsub prints its `PublishError` variants by name.
            Err(NetError::Publish(reason)) if reason == "Duplicate" => {
                Self::remove(db, p.id)?;
                Ok(Settled::Published)
            }
            Err(NetError::Publish(reason)) if reason == "MessageTooLarge" => {
                tracing::warn!(
                    id = p.id,
                    "dropping a publication gossipsub will never accept"
                );
                Self::remove(db, p.id)?;
                Ok(Settled::Dropped)
            }
            Err(e) => {
                tracing::debug!(id = p.id, error = %e, "publish failed; will retry");
                Self::failed(db, p.id, now_ms)?;
                Ok(Settled::Retry)
            }
        }
    }
}

/// The outcome of one publish attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Published (or already published): removed.
    Published,
    /// Failed: rescheduled.
    Retry,
    /// Can never be published: removed.
    Dropped,
}

#[cfg(test)]
mod tests {
    use super::*;
    use securecomm_noise::secret::Secret32;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_ms(0), 200);
        assert_eq!(backoff_ms(1), 400);
        assert_eq!(backoff_ms(5), 6400);
        assert_eq!(backoff_ms(8), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(u32::MAX), BACKOFF_MAX_MS);
    }

    #[test]
    fn queue_retry_remove_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let key = Secret32::from_bytes([3; 32]);
        let (a, b);
        {
            let db = Db::open(&path, &key).unwrap();
            a = Outbox::enqueue(&db, "t", b"one", 1000).unwrap();
            b = Outbox::enqueue(&db, "t", b"two", 1000).unwrap();
            assert_eq!(Outbox::due(&db, 1000, 10).unwrap().len(), 2);
            Outbox::failed(&db, a, 1000).unwrap();
            // `a` waits out its backoff, `b` is still due.
            let due = Outbox::due(&db, 1100, 10).unwrap();
            assert_eq!(due.iter().map(|p| p.id).collect::<Vec<_>>(), vec![b]);
            assert_eq!(Outbox::next_due_ms(&db).unwrap(), Some(1000));
        }
        let db = Db::open(&path, &key).unwrap();
        let due = Outbox::due(&db, 1200, 10).unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].data, b"one");
        assert_eq!(due[0].attempts, 1);
        Outbox::failed(&db, a, 1200).unwrap();
        assert_eq!(Outbox::due(&db, 1599, 10).unwrap().len(), 1);
        assert_eq!(Outbox::due(&db, 1600, 10).unwrap().len(), 2);
        Outbox::remove(&db, a).unwrap();
        Outbox::remove(&db, b).unwrap();
        assert_eq!(Outbox::len(&db).unwrap(), 0);
        assert_eq!(Outbox::next_due_ms(&db).unwrap(), None);
        assert!(!format!("{:?}", due[0]).contains("one"));
    }

    #[test]
    fn a_new_subscriber_makes_waiting_publications_on_its_topic_due() {
        let db = Db::open_in_memory(&Secret32::from_bytes([5; 32])).unwrap();
        let a = Outbox::enqueue(&db, "guild-a", b"one", 1000).unwrap();
        let b = Outbox::enqueue(&db, "guild-b", b"two", 1000).unwrap();
        for _ in 0..5 {
            Outbox::failed(&db, a, 1000).unwrap();
            Outbox::failed(&db, b, 1000).unwrap();
        }
        assert!(Outbox::due(&db, 1100, 10).unwrap().is_empty());
        assert_eq!(Outbox::hurry(&db, "guild-a", 1100).unwrap(), 1);
        let due = Outbox::due(&db, 1100, 10).unwrap();
        assert_eq!(due.iter().map(|p| p.id).collect::<Vec<_>>(), vec![a]);
        // Already due: nothing to hurry; the other topic keeps its backoff.
        assert_eq!(Outbox::hurry(&db, "guild-a", 1100).unwrap(), 0);
        assert_eq!(Outbox::hurry(&db, "nobody", 1100).unwrap(), 0);
    }

    #[test]
    fn bounds() {
        let db = Db::open_in_memory(&Secret32::from_bytes([4; 32])).unwrap();
        assert!(matches!(
            Outbox::enqueue(&db, "t", &vec![0; MAX_GOSSIP_MESSAGE + 1], 0),
            Err(SyncError::PublicationTooLarge { .. })
        ));
        assert!(matches!(
            Outbox::enqueue(&db, &"x".repeat(MAX_TOPIC + 1), b"", 0),
            Err(SyncError::PublicationTooLarge { .. })
        ));
        for _ in 0..MAX_OUTBOX {
            Outbox::enqueue(&db, "t", b"x", 0).unwrap();
        }
        assert!(matches!(
            Outbox::enqueue(&db, "t", b"x", 0),
            Err(SyncError::OutboxFull { max: MAX_OUTBOX })
        ));
    }
}
