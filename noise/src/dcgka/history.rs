//! History for new members: an explicit, separate, **off by default** operation.
//!
//! With the archive switched on ([`super::Group::set_history_archive`]), a member keeps, for
//! every message epoch that starts afterwards, the epoch's chain start `ck_0` and sender tag
//! (at most [`MAX_ARCHIVE`] entries, oldest dropped first). [`super::Group::export_history`]
//! sends chosen entries to a newcomer inside a 2SM direct message (announced by a
//! `history-export` control message so it rides the causal order of the two-party channel);
//! the newcomer imports them read-only and can then decrypt messages of those epochs.
//!
//! The cost is explicit: an archived `ck_0` opens **every** message of its epoch, so archiving
//! gives up forward secrecy for those epochs on the archiving member's device and on every device
//! the archive is exported to. Messages opened through the archive are not replay-checked.
//!
//! ```text
//! export payload = 0x01 || count(u16) || (sender(32) || epoch(u32) || tag(16) || ck0(32))*
//! ```

use std::collections::VecDeque;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::keys::DevicePublicKey;
use crate::secret::Secret32;

use super::ratchet::{epoch_start, step};

/// Most archived (or imported) epochs kept.
pub const MAX_ARCHIVE: usize = 4096;
/// Most message keys derived forward from an archived chain start.
pub const MAX_ARCHIVE_STEPS: u32 = 1 << 16;
const VERSION: u8 = 1;

/// Why a history export or import failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HistoryError {
    /// None of the requested epochs is archived.
    #[error("none of the {0} requested epochs is archived (is the archive switched on?)")]
    NothingToExport(usize),
    /// The payload is malformed.
    #[error("malformed history payload: {0}")]
    Decode(#[from] DecodeError),
}

/// One archived epoch. `Debug` shows the sender and epoch only.
#[derive(Clone)]
pub struct ArchiveEntry {
    /// Whose messages it opens.
    pub sender: DevicePublicKey,
    /// The epoch of that sender's chain.
    pub epoch: u32,
    tag: [u8; 16],
    ck0: Secret32,
}

impl std::fmt::Debug for ArchiveEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArchiveEntry({:?}, epoch {})", self.sender, self.epoch)
    }
}

impl ArchiveEntry {
    fn encode(&self, w: &mut Writer) {
        self.sender.encode(w);
        w.u32(self.epoch);
        w.put(&self.tag);
        w.put(self.ck0.expose());
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            sender: DevicePublicKey::decode(r)?,
            epoch: r.u32()?,
            tag: r.array()?,
            ck0: Secret32::from_bytes(r.array()?),
        })
    }
}

/// The archive and the imported history. `Debug` shows counts only.
#[derive(Clone, Default)]
pub struct History {
    enabled: bool,
    entries: VecDeque<ArchiveEntry>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "History(enabled: {}, entries: {})",
            self.enabled,
            self.entries.len()
        )
    }
}

impl History {
    pub(crate) fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    fn push(&mut self, e: ArchiveEntry) {
        self.entries
            .retain(|x| !(x.sender == e.sender && x.epoch == e.epoch));
        self.entries.push_back(e);
        while self.entries.len() > MAX_ARCHIVE {
            self.entries.pop_front();
        }
    }

    /// Archives the epoch started by `update_secret`, if the archive is on.
    pub(crate) fn archive(
        &mut self,
        sender: DevicePublicKey,
        epoch: u32,
        update_secret: &Secret32,
    ) {
        if !self.enabled {
            return;
        }
        let (ck0, tag) = epoch_start(update_secret);
        self.push(ArchiveEntry {
            sender,
            epoch,
            tag,
            ck0,
        });
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &ArchiveEntry> {
        self.entries.iter()
    }

    pub(crate) fn export(
        &self,
        epochs: &[(DevicePublicKey, u32)],
    ) -> Result<Zeroizing<Vec<u8>>, HistoryError> {
        let chosen: Vec<&ArchiveEntry> = self
            .entries
            .iter()
            .filter(|e| epochs.contains(&(e.sender, e.epoch)))
            .take(MAX_ARCHIVE)
            .collect();
        if chosen.is_empty() {
            return Err(HistoryError::NothingToExport(epochs.len()));
        }
        let mut w = Writer::new();
        w.u8(VERSION);
        w.u16(u16::try_from(chosen.len()).unwrap_or(u16::MAX));
        for e in chosen {
            e.encode(&mut w);
        }
        Ok(Zeroizing::new(w.into_bytes()))
    }

    pub(crate) fn import(&mut self, payload: &[u8]) -> Result<(), HistoryError> {
        let mut r = Reader::new(payload);
        r.version("history export", VERSION)?;
        let n = r.count16("history entries", MAX_ARCHIVE)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(ArchiveEntry::decode(&mut r)?);
        }
        r.finish()?;
        for e in v {
            self.push(e);
        }
        Ok(())
    }

    /// The sender and message key for (`tag`, `epoch`, `generation`) from the archive.
    pub(crate) fn key_for(
        &self,
        tag: &[u8; 16],
        epoch: u32,
        generation: u32,
    ) -> Option<(DevicePublicKey, Secret32)> {
        if generation >= MAX_ARCHIVE_STEPS {
            return None;
        }
        let e = self
            .entries
            .iter()
            .find(|e| &e.tag == tag && e.epoch == epoch)?;
        let mut ck = e.ck0.clone();
        for _ in 0..generation {
            ck = step(&ck).1;
        }
        Some((e.sender, step(&ck).0))
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.bool(self.enabled);
        w.u16(u16::try_from(self.entries.len()).unwrap_or(u16::MAX));
        for e in &self.entries {
            e.encode(w);
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let enabled = r.bool()?;
        let n = r.count16("archive entries", MAX_ARCHIVE)?;
        let mut entries = VecDeque::with_capacity(n);
        for _ in 0..n {
            entries.push_back(ArchiveEntry::decode(r)?);
        }
        Ok(Self { enabled, entries })
    }
}
