//! Decentralized group membership (the paper's DGM and `member_view`).
//!
//! The state is the set of membership operations (create, add, remove) each member has
//! processed, and for each operation the set of devices known to have **seen** it: its sender,
//! every device that acknowledged it (ack / add-ack), every device added by someone who had seen
//! it (a new member inherits its adder's view), and the local device once it processed it.
//! `view(X)` evaluates the operations X had seen, which is exactly the membership X used for its
//! latest control message, because acks and control messages of one sender are processed in
//! causal order.
//!
//! Evaluation is order-independent:
//! * the members of `create`, minus every removed device;
//! * plus every device added by a member of this evaluation (to a fixed point), unless removed;
//! * an add made by a device that was later removed counts only if every remover of that device
//!   had seen the add when removing ("kept" adds); an add *concurrent* with any removal of its
//!   adder is undone, so a removed member cannot smuggle in a device whose keys it controls.
//!   Membership is thus monotone in the removals: a device that sees itself removed stays
//!   removed in every member's eventual view;
//! * removal is final: a removed device is never a member again (re-adding needs a new device
//!   key).
//!
//! The paper leaves the DGM function abstract and defines `member-view(ID)` as the DGM of the
//! operations "sent or acknowledged by ID". These rules are those of the authors' prototype
//! (`StrongRemoveDgm`: strong removal, adds at most once per device, a new member inherits its
//! adder's acknowledgements, without which a new member's own view would hold only its add),
//! evaluated per viewer over exactly the operations that viewer has seen.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::codec::{DecodeError, Encode, Reader, Writer};
use crate::keys::DevicePublicKey;

use super::wire::{MAX_MEMBERS, OpId};

/// Most membership operations a group history holds.
pub const MAX_OPS: usize = 16 * 1024;

/// A membership operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MemOp {
    Create(Vec<DevicePublicKey>),
    Add(DevicePublicKey),
    Remove {
        removed: DevicePublicKey,
        /// Adds by the removed device that the remover had seen.
        kept: Vec<OpId>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpRecord {
    pub(crate) op: MemOp,
    pub(crate) seen: BTreeSet<DevicePublicKey>,
}

/// Most viewers whose evaluated view is memoised between changes.
const VIEW_CACHE: usize = 4;

/// The membership history.
#[derive(Default)]
pub(crate) struct Dgm {
    ops: BTreeMap<OpId, OpRecord>,
    /// Views evaluated since the last change to `ops` (at most [`VIEW_CACHE`] viewers, public
    /// data derived from `ops`): a control message asks for the same views several times, and
    /// evaluating one walks every operation and builds a set of every member. Every method
    /// taking `&mut self` empties it; it is neither compared nor serialised.
    views: Mutex<Vec<(DevicePublicKey, Arc<BTreeSet<DevicePublicKey>>)>>,
}

impl Clone for Dgm {
    fn clone(&self) -> Self {
        let views = self.views.lock().map(|v| v.clone()).unwrap_or_default();
        Self {
            ops: self.ops.clone(),
            views: Mutex::new(views),
        }
    }
}

impl PartialEq for Dgm {
    fn eq(&self, other: &Self) -> bool {
        self.ops == other.ops
    }
}

impl Eq for Dgm {}

impl std::fmt::Debug for Dgm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dgm").field("ops", &self.ops).finish()
    }
}

impl Dgm {
    pub(crate) fn has_create(&self) -> bool {
        self.ops.values().any(|r| matches!(r.op, MemOp::Create(_)))
    }

    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    pub(crate) fn get(&self, id: &OpId) -> Option<&MemOp> {
        self.ops.get(id).map(|r| &r.op)
    }

    /// Every device ever named by an operation.
    pub(crate) fn known(&self, d: &DevicePublicKey) -> bool {
        self.ops.values().any(|r| match &r.op {
            MemOp::Create(m) => m.contains(d),
            MemOp::Add(a) => a == d,
            MemOp::Remove { removed, .. } => removed == d,
        })
    }

    /// Records an operation processed by `me`. For a remove, the kept adds are computed here.
    pub(crate) fn record(&mut self, id: OpId, op: MemOp, me: DevicePublicKey) {
        self.views = Mutex::default();
        let op = match op {
            MemOp::Remove { removed, .. } => {
                let kept = self
                    .ops
                    .iter()
                    .filter(|(oid, r)| {
                        oid.sender == removed
                            && matches!(r.op, MemOp::Add(_))
                            && r.seen.contains(&id.sender)
                    })
                    .map(|(oid, _)| *oid)
                    .collect();
                MemOp::Remove { removed, kept }
            }
            other => other,
        };
        if let MemOp::Add(added) = &op {
            // The new member's view starts as its adder's view.
            for r in self.ops.values_mut() {
                if r.seen.contains(&id.sender) {
                    r.seen.insert(*added);
                }
            }
        }
        let mut seen = BTreeSet::new();
        seen.insert(id.sender);
        seen.insert(me);
        if let MemOp::Add(added) = &op {
            seen.insert(*added);
        }
        self.ops.insert(id, OpRecord { op, seen });
    }

    /// Records that `by` has seen `id` (an ack or add-ack). Unknown ids are ignored.
    pub(crate) fn ack(&mut self, id: &OpId, by: DevicePublicKey) {
        self.views = Mutex::default();
        if let Some(r) = self.ops.get_mut(id) {
            r.seen.insert(by);
        }
    }

    /// The group membership as `viewer` last saw it (memoised until the next change).
    pub(crate) fn view(&self, viewer: &DevicePublicKey) -> Arc<BTreeSet<DevicePublicKey>> {
        if let Ok(views) = self.views.lock()
            && let Some((_, v)) = views.iter().find(|(d, _)| d == viewer)
        {
            return Arc::clone(v);
        }
        let v = Arc::new(self.evaluate(viewer));
        if let Ok(mut views) = self.views.lock() {
            if views.len() >= VIEW_CACHE {
                views.remove(0);
            }
            views.push((*viewer, Arc::clone(&v)));
        }
        v
    }

    /// Evaluates `viewer`'s view from the operations (see the module docs).
    fn evaluate(&self, viewer: &DevicePublicKey) -> BTreeSet<DevicePublicKey> {
        let mut removed = BTreeSet::new();
        // For each removed device, the kept-add lists of every removal of it.
        let mut removals: BTreeMap<DevicePublicKey, Vec<&Vec<OpId>>> = BTreeMap::new();
        let mut members = BTreeSet::new();
        let mut adds = Vec::new();
        for (id, r) in &self.ops {
            if !r.seen.contains(viewer) {
                continue;
            }
            match &r.op {
                MemOp::Create(m) => members.extend(m.iter().copied()),
                MemOp::Add(a) => adds.push((*id, *a)),
                MemOp::Remove { removed: x, kept } => {
                    removed.insert(*x);
                    removals.entry(*x).or_default().push(kept);
                }
            }
        }
        members.retain(|m| !removed.contains(m));
        // An add by a removed device stands only if *every* removal of that device had seen it:
        // more removals can only shrink the membership, so a device that finds itself removed
        // can stop, and every member converges to the same set.
        let kept = |id: &OpId| {
            removals
                .get(&id.sender)
                .is_some_and(|ks| ks.iter().all(|k| k.contains(id)))
        };
        loop {
            let mut changed = false;
            for (id, added) in &adds {
                if members.contains(added) || removed.contains(added) {
                    continue;
                }
                if members.contains(&id.sender) || kept(id) {
                    members.insert(*added);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        members
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u16(u16::try_from(self.ops.len()).unwrap_or(u16::MAX));
        for (id, r) in &self.ops {
            id.encode(w);
            match &r.op {
                MemOp::Create(m) => {
                    w.u8(1);
                    w.u16(u16::try_from(m.len()).unwrap_or(u16::MAX));
                    for d in m {
                        d.encode(w);
                    }
                }
                MemOp::Add(a) => {
                    w.u8(2);
                    a.encode(w);
                }
                MemOp::Remove { removed, kept } => {
                    w.u8(3);
                    removed.encode(w);
                    w.u16(u16::try_from(kept.len()).unwrap_or(u16::MAX));
                    for k in kept {
                        k.encode(w);
                    }
                }
            }
            w.u16(u16::try_from(r.seen.len()).unwrap_or(u16::MAX));
            for d in &r.seen {
                d.encode(w);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        use crate::codec::Decode;
        let n = r.count16("membership ops", MAX_OPS)?;
        let mut ops = BTreeMap::new();
        let mut creates = 0usize;
        for _ in 0..n {
            let id = OpId::decode(r)?;
            let op = match r.u8()? {
                1 => {
                    creates += 1;
                    let m = r.count16("create members", MAX_MEMBERS)?;
                    let mut v = Vec::with_capacity(m);
                    for _ in 0..m {
                        v.push(DevicePublicKey::decode(r)?);
                    }
                    MemOp::Create(v)
                }
                2 => MemOp::Add(DevicePublicKey::decode(r)?),
                3 => {
                    let removed = DevicePublicKey::decode(r)?;
                    let k = r.count16("kept adds", MAX_OPS)?;
                    let mut kept = Vec::with_capacity(k);
                    for _ in 0..k {
                        kept.push(OpId::decode(r)?);
                    }
                    MemOp::Remove { removed, kept }
                }
                got => {
                    return Err(DecodeError::UnknownTag {
                        what: "membership op",
                        got: u64::from(got),
                    });
                }
            };
            let s = r.count16("seen set", 2 * MAX_MEMBERS)?;
            let mut seen = BTreeSet::new();
            for _ in 0..s {
                seen.insert(DevicePublicKey::decode(r)?);
            }
            if ops.insert(id, OpRecord { op, seen }).is_some() {
                return Err(DecodeError::Invalid("duplicate membership op"));
            }
        }
        if creates > 1 {
            return Err(DecodeError::Invalid("two create ops"));
        }
        Ok(Self {
            ops,
            views: Mutex::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceSigningKey;

    fn d(i: u8) -> DevicePublicKey {
        DeviceSigningKey::from_seed(&[i; 32]).public()
    }

    fn id(i: u8, seq: u64) -> OpId {
        OpId { sender: d(i), seq }
    }

    #[test]
    fn views_follow_acks() {
        let mut g = Dgm::default();
        g.record(id(1, 1), MemOp::Create(vec![d(1), d(2), d(3)]), d(1));
        g.ack(&id(1, 1), d(2));
        g.ack(&id(1, 1), d(3));
        g.record(id(1, 2), MemOp::Add(d(4)), d(1));
        assert!(g.view(&d(1)).contains(&d(4)));
        assert!(g.view(&d(4)).contains(&d(4)));
        assert!(!g.view(&d(2)).contains(&d(4)));
        g.ack(&id(1, 2), d(2));
        assert!(g.view(&d(2)).contains(&d(4)));
    }

    /// An add concurrent with the adder's removal is undone; one the remover had seen stays.
    #[test]
    fn concurrent_add_by_removed_member_is_undone() {
        let mut g = Dgm::default();
        let me = d(1);
        g.record(id(1, 1), MemOp::Create(vec![d(1), d(2), d(3)]), me);
        g.ack(&id(1, 1), d(2));
        g.ack(&id(1, 1), d(3));
        g.record(id(2, 1), MemOp::Add(d(5)), me); // seen by 1 (me), 2, 5
        g.record(id(2, 2), MemOp::Add(d(6)), me);
        g.ack(&id(2, 2), d(3)); // 3 saw add of 6 before removing 2
        g.record(
            id(3, 1),
            MemOp::Remove {
                removed: d(2),
                kept: vec![],
            },
            me,
        );
        let v = g.view(&me);
        assert!(!v.contains(&d(2)));
        assert!(!v.contains(&d(5)), "concurrent add by the removed member");
        assert!(v.contains(&d(6)), "add the remover had seen");
        let mut w = Writer::new();
        g.encode(&mut w);
        let b = w.into_bytes();
        let mut r = Reader::new(&b);
        assert_eq!(Dgm::decode(&mut r).unwrap(), g);
        r.finish().unwrap();
    }

    /// The memoised view always equals a fresh evaluation: after each record and ack, for
    /// more viewers than the cache holds, asked twice, and on clones taken in between.
    #[test]
    fn memoised_views_follow_every_change() {
        let mut g = Dgm::default();
        let me = d(1);
        let viewers: Vec<_> = (1..=8).map(d).collect();
        let check = |g: &Dgm| {
            for _ in 0..2 {
                for v in &viewers {
                    assert_eq!(*g.view(v), g.evaluate(v), "viewer {v:?}");
                }
            }
            let c = g.clone();
            for v in &viewers {
                assert_eq!(*c.view(v), g.evaluate(v));
            }
        };
        check(&g);
        g.record(id(1, 1), MemOp::Create(vec![d(1), d(2), d(3), d(4)]), me);
        check(&g);
        for i in 2..=4 {
            g.ack(&id(1, 1), d(i));
            check(&g);
        }
        g.record(id(2, 1), MemOp::Add(d(5)), me);
        check(&g);
        g.ack(&id(2, 1), d(3));
        check(&g);
        g.record(
            id(3, 1),
            MemOp::Remove {
                removed: d(2),
                kept: vec![],
            },
            me,
        );
        check(&g);
        g.ack(&id(3, 1), d(4));
        check(&g);
        g.record(id(4, 1), MemOp::Add(d(6)), me);
        check(&g);
        assert!(!g.view(&me).contains(&d(2)));
    }
}
