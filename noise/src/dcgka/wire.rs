//! DCGKA wire types: control messages (broadcast, signed, in clear) and direct messages
//! (one recipient, signed, payload 2SM-encrypted). Every type starts with a version byte and is
//! decoded strictly through [`crate::codec`].
//!
//! ```text
//! control = 0x01 || group(32) || sender(32) || seq(u64) || body || sig(64)
//! body    = 1 create  || count(u16) || member_key*      (member_key = device(32) || signed prekey)
//!         | 2 add     || member_key
//!         | 3 remove  || device(32)
//!         | 4 update
//!         | 5 ack     || op_id || refresh(bool)           (op_id = sender(32) || seq(u64))
//!         | 6 add-ack || op_id
//!         | 7 history || device(32)                       (history export to that device)
//! direct  = 0x01 || group(32) || sender(32) || recipient(32) || op_id || kind(u8)
//!           || payload(u32-len, 2SM ciphertext) || sig(64)
//! kind    = 1 seed | 2 welcome | 3 forward | 4 add-ack state | 5 history | 6 seed+forward
//! ```
//! The control signature covers everything before it under
//! `"SecureComm/dcgka/control v1"`; the direct-message signature likewise under
//! `"SecureComm/dcgka/direct v1"`.

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::keys::{DevicePublicKey, DeviceSigningKey, SigLabel, Signature, SignatureError};
use crate::oneshot::{OneShotError, PrekeyStore, SignedPrekey, VerifiedPrekey};

/// Control and direct message wire version.
pub const VERSION: u8 = 1;
/// Most members a group may have (and most member keys in a `create`).
pub const MAX_MEMBERS: usize = 4096;
/// Largest 2SM payload of a direct message (a welcome carries the membership history).
pub const MAX_DIRECT_PAYLOAD: usize = 4 * 1024 * 1024;

const CONTROL_LABEL: SigLabel = SigLabel("SecureComm/dcgka/control v1");
const DIRECT_LABEL: SigLabel = SigLabel("SecureComm/dcgka/direct v1");

/// The id of a control message: its sender and the sender's sequence number in this group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId {
    /// The device that sent it.
    pub sender: DevicePublicKey,
    /// 1 for the sender's first control message in the group, then +1 per message.
    pub seq: u64,
}

impl Encode for OpId {
    fn encode(&self, w: &mut Writer) {
        self.sender.encode(w);
        w.u64(self.seq);
    }
}

impl Decode for OpId {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            sender: DevicePublicKey::decode(r)?,
            seq: r.u64()?,
        })
    }
}

/// A device and its signed one-shot prekey ([`crate::oneshot`]), to which the first 2SM message
/// from each peer is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberKey {
    /// The member's device identity.
    pub device: DevicePublicKey,
    /// Its current prekey, signed by the device.
    pub prekey: SignedPrekey,
}

impl MemberKey {
    /// `signer`'s member key for its store's current prekey.
    pub fn new(signer: &DeviceSigningKey, prekeys: &PrekeyStore) -> Self {
        Self {
            device: signer.public(),
            prekey: prekeys.signed_current(signer),
        }
    }

    /// Checks the prekey signature (and that the key is not degenerate).
    pub fn verify(&self) -> Result<VerifiedPrekey, OneShotError> {
        self.prekey.verify(&self.device)
    }
}

impl Encode for MemberKey {
    fn encode(&self, w: &mut Writer) {
        self.device.encode(w);
        self.prekey.encode(w);
    }
}

impl Decode for MemberKey {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            device: DevicePublicKey::decode(r)?,
            prekey: SignedPrekey::decode(r)?,
        })
    }
}

/// What a control message does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlBody {
    /// Creates the group with these members (the sender included).
    Create {
        /// Initial members and their prekeys.
        members: Vec<MemberKey>,
    },
    /// Adds a member.
    Add {
        /// The new member and its prekey.
        member: MemberKey,
    },
    /// Removes a member.
    Remove {
        /// The device removed.
        removed: DevicePublicKey,
    },
    /// A post-compromise-security update: a fresh seed for every member.
    Update,
    /// Acknowledges a create, update or remove (refreshing acks are not acknowledged).
    Ack {
        /// The acknowledged control message.
        of: OpId,
        /// Whether this ack also carries a fresh seed for its sender's own ratchet (see the
        /// module docs: sent when the acknowledged op was a removal whose seed may be known to
        /// a device that is not a member, or that this member did not receive).
        refresh: bool,
    },
    /// Acknowledges an add.
    AddAck {
        /// The acknowledged add.
        of: OpId,
    },
    /// Announces a history export to a member (the archive travels in the direct message).
    HistoryExport {
        /// The recipient of the archive.
        to: DevicePublicKey,
    },
}

impl ControlBody {
    fn encode(&self, w: &mut Writer) {
        match self {
            Self::Create { members } => {
                w.u8(1);
                w.u16(u16::try_from(members.len()).unwrap_or(u16::MAX));
                for m in members.iter().take(usize::from(u16::MAX)) {
                    m.encode(w);
                }
            }
            Self::Add { member } => {
                w.u8(2);
                member.encode(w);
            }
            Self::Remove { removed } => {
                w.u8(3);
                removed.encode(w);
            }
            Self::Update => w.u8(4),
            Self::Ack { of, refresh } => {
                w.u8(5);
                of.encode(w);
                w.bool(*refresh);
            }
            Self::AddAck { of } => {
                w.u8(6);
                of.encode(w);
            }
            Self::HistoryExport { to } => {
                w.u8(7);
                to.encode(w);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            1 => {
                let n = r.count16("create members", MAX_MEMBERS)?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(MemberKey::decode(r)?);
                }
                Self::Create { members }
            }
            2 => Self::Add {
                member: MemberKey::decode(r)?,
            },
            3 => Self::Remove {
                removed: DevicePublicKey::decode(r)?,
            },
            4 => Self::Update,
            5 => Self::Ack {
                of: OpId::decode(r)?,
                refresh: r.bool()?,
            },
            6 => Self::AddAck {
                of: OpId::decode(r)?,
            },
            7 => Self::HistoryExport {
                to: DevicePublicKey::decode(r)?,
            },
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "dcgka control body",
                    got: u64::from(got),
                });
            }
        })
    }

    /// A short name for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Add { .. } => "add",
            Self::Remove { .. } => "remove",
            Self::Update => "update",
            Self::Ack { .. } => "ack",
            Self::AddAck { .. } => "add-ack",
            Self::HistoryExport { .. } => "history-export",
        }
    }
}

/// A broadcast control message. The caller delivers these in causal order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlMessage {
    /// The group this belongs to.
    pub group: [u8; 32],
    /// The sending device.
    pub sender: DevicePublicKey,
    /// The sender's sequence number (1, 2, 3, ...).
    pub seq: u64,
    /// What it does.
    pub body: ControlBody,
    /// The sender's signature over all of the above.
    pub sig: Signature,
}

impl ControlMessage {
    fn signed_bytes(
        group: &[u8; 32],
        sender: &DevicePublicKey,
        seq: u64,
        body: &ControlBody,
    ) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION);
        w.put(group);
        sender.encode(&mut w);
        w.u64(seq);
        body.encode(&mut w);
        w.into_bytes()
    }

    /// Builds and signs a control message.
    pub fn sign(signer: &DeviceSigningKey, group: [u8; 32], seq: u64, body: ControlBody) -> Self {
        let sender = signer.public();
        let sig = signer.sign(
            CONTROL_LABEL,
            &Self::signed_bytes(&group, &sender, seq, &body),
        );
        Self {
            group,
            sender,
            seq,
            body,
            sig,
        }
    }

    /// Checks the sender's signature.
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.sender.verify(
            CONTROL_LABEL,
            &Self::signed_bytes(&self.group, &self.sender, self.seq, &self.body),
            &self.sig,
        )
    }

    /// This message's id.
    pub fn id(&self) -> OpId {
        OpId {
            sender: self.sender,
            seq: self.seq,
        }
    }
}

impl Encode for ControlMessage {
    fn encode(&self, w: &mut Writer) {
        w.put(&Self::signed_bytes(
            &self.group,
            &self.sender,
            self.seq,
            &self.body,
        ));
        self.sig.encode(w);
    }
}

impl Decode for ControlMessage {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("dcgka control message", VERSION)?;
        Ok(Self {
            group: r.array()?,
            sender: DevicePublicKey::decode(r)?,
            seq: r.u64()?,
            body: ControlBody::decode(r)?,
            sig: Signature::decode(r)?,
        })
    }
}

/// What a direct message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectKind {
    /// A seed secret for a create, update, remove or refreshing ack.
    Seed,
    /// The adder's ratchet state and the membership history, for a new member.
    Welcome,
    /// A member secret forwarded to a concurrently added member, with an ack.
    Forward,
    /// The acknowledger's ratchet state for a new member, with an add-ack.
    AddAckState,
    /// Archived message keys (history export).
    History,
    /// A refreshing ack's seed followed by the acknowledger's member secret, for a member added
    /// concurrently with the acknowledged removal (a [`Self::Seed`] and a [`Self::Forward`] for
    /// the same recipient and control message).
    SeedForward,
}

impl DirectKind {
    fn tag(self) -> u8 {
        match self {
            Self::Seed => 1,
            Self::Welcome => 2,
            Self::Forward => 3,
            Self::AddAckState => 4,
            Self::History => 5,
            Self::SeedForward => 6,
        }
    }

    fn from_tag(t: u8) -> Result<Self, DecodeError> {
        Ok(match t {
            1 => Self::Seed,
            2 => Self::Welcome,
            3 => Self::Forward,
            4 => Self::AddAckState,
            5 => Self::History,
            6 => Self::SeedForward,
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "dcgka direct kind",
                    got: u64::from(got),
                });
            }
        })
    }
}

/// A message for one member, sent alongside the control message `op`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectMessage {
    /// The group this belongs to.
    pub group: [u8; 32],
    /// The sending device.
    pub sender: DevicePublicKey,
    /// The one device that can open it.
    pub recipient: DevicePublicKey,
    /// The control message it travels with.
    pub op: OpId,
    /// What it carries.
    pub kind: DirectKind,
    /// The 2SM ciphertext.
    pub payload: Vec<u8>,
    /// The sender's signature over all of the above.
    pub sig: Signature,
}

impl DirectMessage {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(150 + self.payload.len());
        w.u8(VERSION);
        w.put(&self.group);
        self.sender.encode(&mut w);
        self.recipient.encode(&mut w);
        self.op.encode(&mut w);
        w.u8(self.kind.tag());
        w.bytes32(&self.payload);
        w.into_bytes()
    }

    /// Builds and signs a direct message.
    pub fn sign(
        signer: &DeviceSigningKey,
        group: [u8; 32],
        recipient: DevicePublicKey,
        op: OpId,
        kind: DirectKind,
        payload: Vec<u8>,
    ) -> Self {
        let mut m = Self {
            group,
            sender: signer.public(),
            recipient,
            op,
            kind,
            payload,
            sig: Signature([0; 64]),
        };
        m.sig = signer.sign(DIRECT_LABEL, &m.signed_bytes());
        m
    }

    /// Checks the sender's signature.
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.sender
            .verify(DIRECT_LABEL, &self.signed_bytes(), &self.sig)
    }
}

impl Encode for DirectMessage {
    fn encode(&self, w: &mut Writer) {
        w.put(&self.signed_bytes());
        self.sig.encode(w);
    }
}

impl Decode for DirectMessage {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("dcgka direct message", VERSION)?;
        Ok(Self {
            group: r.array()?,
            sender: DevicePublicKey::decode(r)?,
            recipient: DevicePublicKey::decode(r)?,
            op: OpId::decode(r)?,
            kind: DirectKind::from_tag(r.u8()?)?,
            payload: r
                .bytes32("dcgka direct payload", MAX_DIRECT_PAYLOAD)?
                .to_vec(),
            sig: Signature::decode(r)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn key(i: u8) -> DeviceSigningKey {
        DeviceSigningKey::from_seed(&[i; 32])
    }

    fn store() -> PrekeyStore {
        PrekeyStore::new(&mut rand::rngs::StdRng::seed_from_u64(3), 0)
    }

    fn bodies() -> impl Strategy<Value = ControlBody> {
        let k = key(9);
        let mk = MemberKey::new(&k, &store());
        let dev = key(8).public();
        let of = OpId {
            sender: dev,
            seq: 7,
        };
        prop_oneof![
            (0usize..4).prop_map(move |n| ControlBody::Create {
                members: vec![mk; n]
            }),
            Just(ControlBody::Add { member: mk }),
            Just(ControlBody::Remove { removed: dev }),
            Just(ControlBody::Update),
            any::<bool>().prop_map(move |refresh| ControlBody::Ack { of, refresh }),
            Just(ControlBody::AddAck { of }),
            Just(ControlBody::HistoryExport { to: dev }),
        ]
    }

    proptest! {
        #[test]
        fn control_round_trip(body in bodies(), seq: u64, group: [u8; 32]) {
            let m = ControlMessage::sign(&key(1), group, seq, body);
            let bytes = m.to_bytes();
            let back = ControlMessage::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &m);
            back.verify().unwrap();
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(ControlMessage::from_bytes(&longer).is_err());
            prop_assert!(ControlMessage::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        }

        #[test]
        fn direct_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..200), seq: u64, kind in 1u8..=6) {
            let of = OpId { sender: key(2).public(), seq };
            let m = DirectMessage::sign(&key(1), [5; 32], key(3).public(), of, DirectKind::from_tag(kind).unwrap(), payload);
            let bytes = m.to_bytes();
            let back = DirectMessage::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &m);
            back.verify().unwrap();
        }
    }

    #[test]
    fn bit_flips_break_signature_or_decoding() {
        let m = ControlMessage::sign(&key(1), [1; 32], 3, ControlBody::Update);
        let bytes = m.to_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            if let Ok(d) = ControlMessage::from_bytes(&b) {
                assert!(d.verify().is_err(), "flip at {i} still verifies");
            }
        }
    }

    #[test]
    fn unknown_version_and_tag_rejected() {
        let m = ControlMessage::sign(&key(1), [1; 32], 3, ControlBody::Update);
        let mut b = m.to_bytes();
        b[0] = 2;
        assert!(matches!(
            ControlMessage::from_bytes(&b),
            Err(DecodeError::UnknownVersion { .. })
        ));
        let mut b = m.to_bytes();
        b[1 + 32 + 32 + 8] = 99;
        assert!(matches!(
            ControlMessage::from_bytes(&b),
            Err(DecodeError::UnknownTag { .. })
        ));
    }

    #[test]
    fn member_key_signature() {
        let k = key(4);
        let mut mk = MemberKey::new(&k, &store());
        mk.verify().unwrap();
        mk.device = key(5).public();
        assert!(mk.verify().is_err());
    }
}
