//! Per-sender signature verification tables for application messages.
//!
//! Every application message carries its sender's Ed25519 signature, and a receiver verifies
//! many messages from the same few senders. A [`PrecomputedDeviceKey`] verifies with the same
//! verdict as [`DevicePublicKey::verify`] but about 20% faster; building one costs about as much
//! as 30 to 40 plain verifications and takes 30 KiB. This cache decides whom to build one for:
//!
//! * a sender gets a table once [`BUILD_AFTER`] of its messages have been verified without one
//!   (so a sender who posts a handful of messages never costs a build; building after as many
//!   messages as it takes to recoup about half the build cost bounds the waste of a build that
//!   is never used again to about a third of those messages' verification time);
//! * at most [`MAX_TABLES`] tables are kept per group; when full, the least recently used table
//!   is replaced only if it has been idle for [`IDLE_EVICT`] verified messages of the group,
//!   otherwise the newcomer's count starts again (so senders taking turns cannot make the cache
//!   rebuild tables over and over);
//! * counters exist only for current members' devices: [`Verifiers::forget`] runs when a
//!   device leaves the membership, [`Verifiers::clear`] when this member is removed.
//!
//! The cache holds public data only, is never serialised (a restored group rebuilds it), and
//! its clones share tables, so the group's rollback copies stay cheap.

use std::collections::BTreeMap;

use crate::keys::{DevicePublicKey, PrecomputedDeviceKey};

/// Messages verified without a table before a sender gets one.
pub const BUILD_AFTER: u32 = 128;
/// Most tables kept per group (30 KiB each).
pub const MAX_TABLES: usize = 8;
/// A full cache replaces its least recently used table only if it has not been used for this
/// many verified messages of the group.
pub const IDLE_EVICT: u64 = 1024;

/// The cache (see the module docs).
#[derive(Clone, Default)]
pub(crate) struct Verifiers {
    /// Messages verified without a table, per sender, below [`BUILD_AFTER`].
    counts: BTreeMap<DevicePublicKey, u32>,
    /// At most [`MAX_TABLES`] tables with the clock value of their last use.
    tables: Vec<(PrecomputedDeviceKey, u64)>,
    /// Messages verified in this group (with or without a table).
    clock: u64,
}

impl std::fmt::Debug for Verifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<_> = self.tables.iter().map(|(t, _)| t.key()).collect();
        write!(f, "Verifiers(tables: {keys:?})")
    }
}

impl Verifiers {
    /// The table for `sender`, if one is kept; marks it used.
    pub(crate) fn table(&mut self, sender: &DevicePublicKey) -> Option<&PrecomputedDeviceKey> {
        let clock = self.clock;
        self.tables
            .iter_mut()
            .find(|(t, _)| t.key() == sender)
            .map(|(t, used)| {
                *used = clock;
                &*t
            })
    }

    /// Records a verified message from `sender`; `with_table` says whether its table was used.
    /// Builds a table when `sender` reaches [`BUILD_AFTER`] messages without one.
    pub(crate) fn verified(&mut self, sender: &DevicePublicKey, with_table: bool) {
        self.clock = self.clock.saturating_add(1);
        if with_table {
            return;
        }
        let count = self.counts.entry(*sender).or_insert(0);
        *count = count.saturating_add(1);
        if *count < BUILD_AFTER {
            return;
        }
        self.counts.remove(sender);
        if self.tables.len() < MAX_TABLES {
            self.tables
                .push((PrecomputedDeviceKey::new(sender), self.clock));
            return;
        }
        let clock = self.clock;
        if let Some(slot) = self
            .tables
            .iter_mut()
            .min_by_key(|(_, used)| *used)
            .filter(|(_, used)| clock.saturating_sub(*used) >= IDLE_EVICT)
        {
            *slot = (PrecomputedDeviceKey::new(sender), clock);
        }
    }

    /// Drops everything kept for `device` (it left the membership).
    pub(crate) fn forget(&mut self, device: &DevicePublicKey) {
        self.counts.remove(device);
        self.tables.retain(|(t, _)| t.key() != device);
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    /// The devices that currently have a table (tests).
    #[cfg(test)]
    pub(crate) fn with_tables(&self) -> Vec<DevicePublicKey> {
        self.tables.iter().map(|(t, _)| *t.key()).collect()
    }

    /// Devices with a counter (tests).
    #[cfg(test)]
    pub(crate) fn counted(&self) -> Vec<DevicePublicKey> {
        self.counts.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceSigningKey;

    fn dev(i: u8) -> DevicePublicKey {
        DeviceSigningKey::from_seed(&[i; 32]).public()
    }

    /// A table is built exactly at the threshold, used afterwards, and never rebuilt while used.
    #[test]
    fn builds_after_threshold_once() {
        let mut v = Verifiers::default();
        let a = dev(1);
        for _ in 0..BUILD_AFTER - 1 {
            assert!(v.table(&a).is_none());
            v.verified(&a, false);
        }
        assert!(v.with_tables().is_empty());
        v.verified(&a, false);
        assert_eq!(v.with_tables(), vec![a]);
        assert!(v.counted().is_empty());
        for _ in 0..10 * BUILD_AFTER {
            assert_eq!(v.table(&a).map(|t| *t.key()), Some(a));
            v.verified(&a, true);
        }
        assert_eq!(v.with_tables(), vec![a]);
    }

    /// The cache never holds more than `MAX_TABLES`; a busy table is not evicted, an idle one is.
    #[test]
    fn bounded_and_evicts_only_idle_tables() {
        let mut v = Verifiers::default();
        let feed = |v: &mut Verifiers, d: &DevicePublicKey, n: u32| {
            for _ in 0..n {
                let t = v.table(d).is_some();
                v.verified(d, t);
            }
        };
        let devs: Vec<_> = (1..=MAX_TABLES as u8 + 1).map(dev).collect();
        for d in &devs[..MAX_TABLES] {
            feed(&mut v, d, BUILD_AFTER);
        }
        assert_eq!(v.with_tables().len(), MAX_TABLES);
        // The newcomer reaches the threshold while every table is in use: no eviction.
        let new = devs[MAX_TABLES];
        for _ in 0..BUILD_AFTER {
            feed(&mut v, &new, 1);
            for d in &devs[..MAX_TABLES] {
                feed(&mut v, d, 1);
            }
        }
        assert_eq!(v.with_tables().len(), MAX_TABLES);
        assert!(!v.with_tables().contains(&new));
        // Everyone but devs[0] stays busy long enough for devs[0]'s table to go idle.
        for _ in 0..IDLE_EVICT / 64 + 1 {
            for d in &devs[1..MAX_TABLES] {
                feed(&mut v, d, 10);
            }
        }
        feed(&mut v, &new, BUILD_AFTER);
        let kept = v.with_tables();
        assert_eq!(kept.len(), MAX_TABLES);
        assert!(kept.contains(&new));
        assert!(!kept.contains(&devs[0]));
    }

    #[test]
    fn forget_and_clear() {
        let mut v = Verifiers::default();
        let (a, b) = (dev(1), dev(2));
        for _ in 0..BUILD_AFTER {
            v.verified(&a, false);
        }
        v.verified(&b, false);
        v.forget(&a);
        assert!(v.with_tables().is_empty());
        assert_eq!(v.counted(), vec![b]);
        v.clear();
        assert!(v.counted().is_empty());
        assert!(!format!("{v:?}").is_empty());
    }
}
