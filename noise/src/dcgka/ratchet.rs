//! Per-sender message ratchets, seeded by DCGKA update secrets.
//!
//! Every update secret `I` for member `X` starts a new **epoch** of X's message chain:
//! `ck_0 = HKDF(I, "SecureComm/dcgka/message-chain v1")` and an opaque 16-byte
//! `tag = HKDF(I, "SecureComm/dcgka/sender-tag v1")` that names (X, epoch) on the wire to members
//! only. Message `n` of the epoch uses the one-time key `mk_n = HMAC(ck_n, 0x01)`, and
//! `ck_{n+1} = HMAC(ck_n, 0x02)`; used keys and chain keys are overwritten at once.
//!
//! Receivers keep, per sender, the last [`MAX_EPOCHS`] epochs (messages sent just before the
//! sender learnt of a newer update secret still decrypt) and at most [`MAX_SKIP`] skipped keys
//! per epoch for out-of-order delivery; a message more than [`MAX_SKIP`] ahead is rejected.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, VecDeque};
use thiserror::Error;

use crate::codec::{DecodeError, Reader, Writer};
use crate::secret::{Secret32, hkdf_secret, hkdf_sha256};

/// Epochs kept per sender.
pub const MAX_EPOCHS: usize = 4;
/// Largest gap between the next expected and a received message index, and most skipped keys
/// stored per epoch.
pub const MAX_SKIP: u32 = 1024;

const CHAIN_LABEL: &[u8] = b"SecureComm/dcgka/message-chain v1";
const TAG_LABEL: &[u8] = b"SecureComm/dcgka/sender-tag v1";

/// Why a message key could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RatchetError {
    /// The epoch is unknown or was already dropped.
    #[error("epoch {0} of this sender is unknown or expired")]
    UnknownEpoch(u32),
    /// The key for this index was already used (a replay) or dropped.
    #[error("message {index} of epoch {epoch} already received or expired")]
    Replay {
        /// Epoch.
        epoch: u32,
        /// Message index.
        index: u32,
    },
    /// The index is too far beyond the next expected one.
    #[error("message index too far ahead: expected at most {max}, got {got}")]
    TooFarAhead {
        /// Highest acceptable index.
        max: u32,
        /// Index received.
        got: u32,
    },
    /// The sending chain is exhausted (2^32 messages in one epoch).
    #[error("sending chain exhausted; run an update")]
    Exhausted,
}

fn finish(mut m: Hmac<Sha256>, byte: u8) -> Secret32 {
    m.update(&[byte]);
    let mut out = [0u8; 32];
    out.copy_from_slice(&m.finalize().into_bytes());
    Secret32::from_bytes(out)
}

/// Steps a chain key: returns (message key, next chain key) = (HMAC(ck, 0x01), HMAC(ck, 0x02)).
/// The keyed HMAC state is computed once and cloned for the two outputs.
pub(crate) fn step(ck: &Secret32) -> (Secret32, Secret32) {
    // HMAC accepts keys of any length, so this cannot fail; a failure would produce zero keys
    // that never match a sender's.
    match <Hmac<Sha256> as Mac>::new_from_slice(ck.expose()) {
        Ok(m) => (finish(m.clone(), 1), finish(m, 2)),
        Err(_) => (Secret32::from_bytes([0; 32]), Secret32::from_bytes([0; 32])),
    }
}

/// The chain start and sender tag for an update secret.
pub(crate) fn epoch_start(update_secret: &Secret32) -> (Secret32, [u8; 16]) {
    (
        hkdf_secret(None, update_secret.expose(), CHAIN_LABEL),
        hkdf_sha256::<16>(None, update_secret.expose(), TAG_LABEL),
    )
}

/// One epoch of one sender's chain.
#[derive(Clone)]
pub(crate) struct Chain {
    pub(crate) epoch: u32,
    pub(crate) tag: [u8; 16],
    ck: Secret32,
    next: u32,
    skipped: BTreeMap<u32, Secret32>,
}

impl Chain {
    fn encode(&self, w: &mut Writer) {
        w.u32(self.epoch);
        w.put(&self.tag);
        w.put(self.ck.expose());
        w.u32(self.next);
        w.u16(u16::try_from(self.skipped.len()).unwrap_or(u16::MAX));
        for (i, k) in &self.skipped {
            w.u32(*i);
            w.put(k.expose());
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let epoch = r.u32()?;
        let tag = r.array()?;
        let ck = Secret32::from_bytes(r.array()?);
        let next = r.u32()?;
        let n = r.count16("skipped message keys", MAX_SKIP as usize)?;
        let mut skipped = BTreeMap::new();
        for _ in 0..n {
            skipped.insert(r.u32()?, Secret32::from_bytes(r.array()?));
        }
        Ok(Self {
            epoch,
            tag,
            ck,
            next,
            skipped,
        })
    }
}

/// A receiving-chain change computed by [`SenderChains::peek_key`] and applied by
/// [`SenderChains::commit`] once the message has been authenticated. Holds secrets (zeroized on
/// drop through [`Secret32`]).
pub(crate) enum Pending {
    /// Delete the stored skipped key `index` of `epoch`.
    Skipped { epoch: u32, index: u32 },
    /// Advance the chain at position `pos` (epoch `epoch`) to `ck`/`next`, storing the keys of
    /// the messages it skipped.
    Advance {
        pos: usize,
        epoch: u32,
        ck: Secret32,
        next: u32,
        skipped: Vec<(u32, Secret32)>,
    },
}

/// One sender's message chains as seen by one member (or the member's own sending chain).
#[derive(Clone, Default)]
pub struct SenderChains {
    epochs: VecDeque<Chain>,
}

impl std::fmt::Debug for SenderChains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e: Vec<u32> = self.epochs.iter().map(|c| c.epoch).collect();
        write!(f, "SenderChains(epochs: {e:?})")
    }
}

impl SenderChains {
    /// Starts epoch `epoch` from an update secret; returns its tag. Older epochs beyond
    /// [`MAX_EPOCHS`] are deleted.
    pub(crate) fn start(&mut self, epoch: u32, update_secret: &Secret32) -> [u8; 16] {
        let (ck, tag) = epoch_start(update_secret);
        self.epochs.push_back(Chain {
            epoch,
            tag,
            ck,
            next: 0,
            skipped: BTreeMap::new(),
        });
        while self.epochs.len() > MAX_EPOCHS {
            self.epochs.pop_front();
        }
        tag
    }

    /// The tags of every kept epoch.
    pub(crate) fn tags(&self) -> impl Iterator<Item = [u8; 16]> + '_ {
        self.epochs.iter().map(|c| c.tag)
    }

    /// The newest epoch's start, for the history archive: (epoch, tag) only.
    pub(crate) fn current(&self) -> Option<(u32, [u8; 16], u32)> {
        self.epochs.back().map(|c| (c.epoch, c.tag, c.next))
    }

    /// Next sending key of the newest epoch: (epoch, tag, index, key).
    pub(crate) fn next_send(&mut self) -> Result<(u32, [u8; 16], u32, Secret32), RatchetError> {
        let c = self
            .epochs
            .back_mut()
            .ok_or(RatchetError::UnknownEpoch(0))?;
        let idx = c.next;
        let next = idx.checked_add(1).ok_or(RatchetError::Exhausted)?;
        let (mk, ck) = step(&c.ck);
        c.ck = ck;
        c.next = next;
        Ok((c.epoch, c.tag, idx, mk))
    }

    /// The receiving key for message `index` of `epoch`, deleting it.
    #[cfg(test)]
    pub(crate) fn take_key(&mut self, epoch: u32, index: u32) -> Result<Secret32, RatchetError> {
        let (mk, pending) = self.peek_key(epoch, index)?;
        self.commit(pending);
        Ok(mk)
    }

    /// The receiving key for message `index` of `epoch`, **without** changing the state: the
    /// caller checks the message first and then calls [`SenderChains::commit`] with the returned
    /// [`Pending`] to delete the key (and store the keys it skipped). Dropping the `Pending`
    /// instead leaves the chains exactly as they were.
    pub(crate) fn peek_key(
        &self,
        epoch: u32,
        index: u32,
    ) -> Result<(Secret32, Pending), RatchetError> {
        let (pos, c) = self
            .epochs
            .iter()
            .enumerate()
            .find(|(_, c)| c.epoch == epoch)
            .ok_or(RatchetError::UnknownEpoch(epoch))?;
        if index < c.next {
            let mk = c
                .skipped
                .get(&index)
                .cloned()
                .ok_or(RatchetError::Replay { epoch, index })?;
            return Ok((mk, Pending::Skipped { epoch, index }));
        }
        let max = c.next.saturating_add(MAX_SKIP);
        if index > max {
            return Err(RatchetError::TooFarAhead { max, got: index });
        }
        // In-order delivery (the common case) skips nothing and allocates nothing.
        let mut skipped = Vec::new();
        let mut ck = c.ck.clone();
        let mut i = c.next;
        while i < index {
            let (mk, next) = step(&ck);
            skipped.push((i, mk));
            ck = next;
            i += 1;
        }
        let (mk, ck) = step(&ck);
        Ok((
            mk,
            Pending::Advance {
                pos,
                epoch,
                ck,
                next: index.saturating_add(1),
                skipped,
            },
        ))
    }

    /// Applies a [`Pending`] from [`SenderChains::peek_key`] on the same, unchanged state.
    pub(crate) fn commit(&mut self, pending: Pending) {
        match pending {
            Pending::Skipped { epoch, index } => {
                if let Some(c) = self.epochs.iter_mut().find(|c| c.epoch == epoch) {
                    c.skipped.remove(&index);
                }
            }
            Pending::Advance {
                pos,
                epoch,
                ck,
                next,
                skipped,
            } => {
                let Some(c) = self.epochs.get_mut(pos).filter(|c| c.epoch == epoch) else {
                    return;
                };
                c.skipped.extend(skipped);
                while c.skipped.len() > MAX_SKIP as usize {
                    c.skipped.pop_first();
                }
                c.ck = ck;
                c.next = next;
            }
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u8(u8::try_from(self.epochs.len()).unwrap_or(u8::MAX));
        for c in &self.epochs {
            c.encode(w);
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = usize::from(r.u8()?);
        if n > MAX_EPOCHS {
            return Err(DecodeError::TooLong {
                what: "message epochs",
                max: MAX_EPOCHS,
                got: n,
            });
        }
        let mut epochs = VecDeque::with_capacity(n);
        for _ in 0..n {
            epochs.push_back(Chain::decode(r)?);
        }
        Ok(Self { epochs })
    }

    /// The newest epoch's sending position: (epoch, index of the next key).
    pub(crate) fn send_position(&self) -> Option<(u32, u32)> {
        self.epochs.back().map(|c| (c.epoch, c.next))
    }

    /// A copy whose newest epoch has handed out `n` more sending keys (they are stepped over and
    /// forgotten, never stored: a sender does not receive its own messages).
    pub(crate) fn advanced(&self, n: u32) -> Result<Self, RatchetError> {
        let mut copy = self.clone();
        let c = copy
            .epochs
            .back_mut()
            .ok_or(RatchetError::UnknownEpoch(0))?;
        let target = c.next.checked_add(n).ok_or(RatchetError::Exhausted)?;
        while c.next < target {
            let (_, ck) = step(&c.ck);
            c.ck = ck;
            c.next += 1;
        }
        Ok(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chains() -> (SenderChains, SenderChains) {
        let i = Secret32::from_bytes([9; 32]);
        let mut s = SenderChains::default();
        let mut r = SenderChains::default();
        assert_eq!(s.start(1, &i), r.start(1, &i));
        (s, r)
    }

    #[test]
    fn in_order_out_of_order_replay_and_gap() {
        let (mut s, mut r) = chains();
        let keys: Vec<_> = (0..5).map(|_| s.next_send().unwrap()).collect();
        assert_eq!(r.take_key(1, 3).unwrap(), keys[3].3);
        assert_eq!(r.take_key(1, 0).unwrap(), keys[0].3);
        assert_eq!(r.take_key(1, 4).unwrap(), keys[4].3);
        assert_eq!(
            r.take_key(1, 3),
            Err(RatchetError::Replay { epoch: 1, index: 3 })
        );
        assert_eq!(
            r.take_key(1, 5 + MAX_SKIP + 1),
            Err(RatchetError::TooFarAhead {
                max: 5 + MAX_SKIP,
                got: 5 + MAX_SKIP + 1
            })
        );
        assert_eq!(r.take_key(2, 0), Err(RatchetError::UnknownEpoch(2)));
    }

    /// `peek_key` never changes the state; dropping its `Pending` leaves everything usable, and
    /// committing it matches `take_key`.
    #[test]
    fn peek_without_commit_changes_nothing() {
        let (mut s, mut r) = chains();
        let keys: Vec<_> = (0..4).map(|_| s.next_send().unwrap()).collect();
        let mut w0 = Writer::new();
        r.encode(&mut w0);
        let (mk, _dropped) = r.peek_key(1, 2).unwrap();
        assert_eq!(mk, keys[2].3);
        let mut w1 = Writer::new();
        r.encode(&mut w1);
        assert_eq!(w0.into_bytes(), w1.into_bytes());
        let (mk, p) = r.peek_key(1, 2).unwrap();
        assert_eq!(mk, keys[2].3);
        r.commit(p);
        assert_eq!(
            r.peek_key(1, 2).err(),
            Some(RatchetError::Replay { epoch: 1, index: 2 })
        );
        // The skipped keys were stored; peeking one leaves it in place until committed.
        assert_eq!(r.peek_key(1, 0).unwrap().0, keys[0].3);
        assert_eq!(r.peek_key(1, 0).unwrap().0, keys[0].3);
        assert_eq!(r.take_key(1, 0).unwrap(), keys[0].3);
        assert_eq!(r.take_key(1, 1).unwrap(), keys[1].3);
        assert_eq!(r.take_key(1, 3).unwrap(), keys[3].3);
    }

    /// `step` is exactly (HMAC-SHA256(ck, 0x01), HMAC-SHA256(ck, 0x02)), computed independently.
    #[test]
    fn step_matches_its_definition() {
        let ck = Secret32::from_bytes([0x5a; 32]);
        let h = |b: u8| {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&[0x5a; 32]).unwrap();
            m.update(&[b]);
            m.finalize().into_bytes().to_vec()
        };
        let (mk, next) = step(&ck);
        assert_eq!(mk.expose().to_vec(), h(1));
        assert_eq!(next.expose().to_vec(), h(2));
        assert_ne!(mk, next);
    }

    #[test]
    fn old_epochs_expire() {
        let (mut s, mut r) = chains();
        for e in 2..=(MAX_EPOCHS as u32 + 1) {
            let i = Secret32::from_bytes([e as u8; 32]);
            s.start(e, &i);
            r.start(e, &i);
        }
        assert_eq!(r.take_key(1, 0), Err(RatchetError::UnknownEpoch(1)));
        let k = s.next_send().unwrap();
        assert_eq!(r.take_key(k.0, k.2).unwrap(), k.3);
    }

    #[test]
    fn round_trip_state() {
        let (mut s, r) = chains();
        let _ = s.next_send().unwrap();
        let k1 = s.next_send().unwrap();
        let mut w = Writer::new();
        r.encode(&mut w);
        let b = w.into_bytes();
        let mut rd = Reader::new(&b);
        let mut r2 = SenderChains::decode(&mut rd).unwrap();
        rd.finish().unwrap();
        assert_eq!(r2.take_key(1, 1).unwrap(), k1.3);
        assert!(!format!("{r2:?}").contains("ck"));
    }
}
