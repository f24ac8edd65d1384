//! The DCGKA state machine of one member (see the module docs of [`super`] for the protocol).

use rand_core::{CryptoRng, RngCore};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::envelope::{self, EnvelopeError, EnvelopeHeader};
use crate::keys::{DevicePublicKey, DeviceSigningKey, PrecomputedDeviceKey, SignatureError};
use crate::oneshot::{OneShotError, PrekeyStore, SignedPrekey};
use crate::secret::{Secret32, hkdf_sha256};

use super::dgm::{Dgm, MAX_OPS, MemOp};
use super::history::{ArchiveEntry, History, HistoryError};
use super::ratchet::{RatchetError, SenderChains};
use super::twoparty::{TwoParty, TwoPartyError};
use super::verifiers::Verifiers;
use super::wire::{
    ControlBody, ControlMessage, DirectKind, DirectMessage, MAX_MEMBERS, MemberKey, OpId,
};

const STATE_VERSION: u8 = 1;
const UPDATE_LABEL: &[u8] = b"SecureComm/dcgka/update-secret v1";
const MEMBER_LABEL: &[u8] = b"SecureComm/dcgka/member-secret v1";
const CHECK_LABEL: &[u8] = b"SecureComm/dcgka/key-check v1";
const TWO_PARTY_CONTEXT: &[u8] = b"SecureComm/dcgka/2sm v1";
const WELCOME_INPUT: &[u8] = b"SecureComm/dcgka/welcome-input v1";
const ADD_INPUT: &[u8] = b"SecureComm/dcgka/add-input v1";
/// Most outstanding member secrets (waiting for an acknowledgement) a member stores.
pub const MAX_MEMBER_SECRETS: usize = 1 << 20;
/// Most devices (current and former members) whose 2SM state is kept.
pub const MAX_PEERS: usize = 2 * MAX_MEMBERS;
/// Largest application payload.
pub const MAX_APP_PAYLOAD: usize = envelope::MAX_PAYLOAD;

/// Why an operation or message was refused. A refused message leaves the state unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GroupError {
    /// Bytes did not decode.
    #[error("malformed: {0}")]
    Decode(#[from] DecodeError),
    /// A signature did not verify.
    #[error("bad signature: {0}")]
    Signature(#[from] SignatureError),
    /// The message belongs to another group.
    #[error("message is for another group")]
    WrongGroup,
    /// The signing key passed in is not this member's.
    #[error("signing key does not match this member")]
    WrongSigner,
    /// Control messages must arrive in causal order, so per sender in sequence.
    #[error("out of sequence from sender: expected seq {expected}, got {got}")]
    OutOfOrder {
        /// The next sequence number expected.
        expected: u64,
        /// The one received.
        got: u64,
    },
    /// The sender is not known to this member.
    #[error("control message from an unknown device")]
    UnknownSender,
    /// This member's own control messages are processed when created.
    #[error("own control message fed back in")]
    OwnMessage,
    /// This member has not joined (no create or welcome processed yet).
    #[error("not yet a member: expected a create or the welcome first")]
    NotJoined,
    /// This member was removed; the state is inert.
    #[error("this member was removed from the group")]
    Removed,
    /// The operation's target is not valid here.
    #[error("invalid operation: {0}")]
    Invalid(&'static str),
    /// A direct message was expected with this control message.
    #[error("missing direct message: expected {0:?}")]
    MissingDirect(DirectKind),
    /// A direct message does not belong to this control message or recipient.
    #[error("direct message mismatch: {0}")]
    DirectMismatch(&'static str),
    /// The 2SM layer refused the direct message.
    #[error("two-party channel: {0}")]
    TwoParty(#[from] TwoPartyError),
    /// A bound was reached.
    #[error("bound reached: {0}")]
    Bound(&'static str),
    /// The application message's sender or epoch is not known.
    #[error("no key for this application message (unknown sender tag)")]
    UnknownTag,
    /// The message ratchet refused the index.
    #[error("message ratchet: {0}")]
    Ratchet(#[from] RatchetError),
    /// The envelope did not open.
    #[error("envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The envelope was signed by another device than the ratchet's owner.
    #[error("application message signed by a different member than its key belongs to")]
    WrongSender,
    /// A member key's prekey is invalid (bad signature or degenerate key).
    #[error("member prekey: {0}")]
    Prekey(#[from] OneShotError),
    /// History export or import failed.
    #[error("history: {0}")]
    History(#[from] HistoryError),
}

/// A new update secret for `member` (its message epoch `epoch` starts). `check` is a 16-byte
/// key-confirmation value derived from the secret: equal checks mean equal secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateEvent {
    /// Whose message chain advanced.
    pub member: DevicePublicKey,
    /// The new epoch number of that member's chain.
    pub epoch: u32,
    /// Key confirmation: `HKDF(update secret, "SecureComm/dcgka/key-check v1")[..16]`.
    pub check: [u8; 16],
}

/// What the network layer must do after an operation or a processed message.
#[derive(Debug, Default)]
pub struct Output {
    /// A control message to broadcast to the group (causal broadcast).
    pub broadcast: Option<ControlMessage>,
    /// Direct messages, each to deliver to its recipient together with `broadcast`.
    pub direct: Vec<(DevicePublicKey, DirectMessage)>,
    /// Update secrets derived (for tests, logs and key confirmation).
    pub updates: Vec<UpdateEvent>,
}

impl Output {
    fn merge(&mut self, other: Output) {
        if other.broadcast.is_some() {
            self.broadcast = other.broadcast;
        }
        self.direct.extend(other.direct);
        self.updates.extend(other.updates);
    }
}

/// An encrypted application message: a sealed envelope ([`crate::envelope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMessage(pub Vec<u8>);

/// A decrypted application message.
#[derive(Debug)]
pub struct Decrypted {
    /// The member that wrote it (verified signature inside the ciphertext).
    pub sender: DevicePublicKey,
    /// The plaintext, zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Member,
    Removed,
}

/// The outer (key-agreement) ratchet of one member: chain secret and update count.
#[derive(Clone)]
struct Outer {
    chain: Secret32,
    epoch: u32,
}

impl Outer {
    /// The paper's empty ratchet state of a member that has not updated yet.
    fn initial() -> Self {
        Self {
            chain: Secret32::from_bytes([0; 32]),
            epoch: 0,
        }
    }
}

/// One member's DCGKA state. Secrets are zeroized on drop; `Debug` shows public data only.
#[derive(Clone)]
pub struct Group {
    group: [u8; 32],
    me: DevicePublicKey,
    store: PrekeyStore,
    seq: u64,
    status: Status,
    last_seq: BTreeMap<DevicePublicKey, u64>,
    prekeys: BTreeMap<DevicePublicKey, SignedPrekey>,
    dgm: Dgm,
    next_seed: Option<Secret32>,
    member_secrets: BTreeMap<(OpId, DevicePublicKey), Secret32>,
    outer: BTreeMap<DevicePublicKey, Outer>,
    two_party: BTreeMap<DevicePublicKey, TwoParty>,
    chains: BTreeMap<DevicePublicKey, SenderChains>,
    tags: BTreeMap<[u8; 16], DevicePublicKey>,
    history: History,
    /// Signature tables of busy senders: derived, public, not serialised.
    verifiers: Verifiers,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("me", &self.me)
            .field("seq", &self.seq)
            .field("status", &self.status)
            .field("members", &self.member_view().len())
            .finish()
    }
}

fn member_secret(seed: &Secret32, op: &OpId, member: &DevicePublicKey) -> Secret32 {
    let mut info = Vec::with_capacity(MEMBER_LABEL.len() + 72);
    info.extend_from_slice(MEMBER_LABEL);
    info.extend_from_slice(&op.to_bytes());
    info.extend_from_slice(member.as_bytes());
    Secret32::from_bytes(hkdf_sha256::<32>(None, seed.expose(), &info))
}

/// Opens an application envelope that must have been signed by `sender`.
fn open_as(
    mk: &Secret32,
    group: &[u8; 32],
    bytes: &[u8],
    sender: &DevicePublicKey,
) -> Result<envelope::Opened, GroupError> {
    envelope::open_from(mk, group, bytes, sender).map_err(|e| match e {
        EnvelopeError::WrongSender => GroupError::WrongSender,
        e => GroupError::Envelope(e),
    })
}

/// [`open_as`] with the sender's precomputed verification table.
fn open_as_precomputed(
    mk: &Secret32,
    group: &[u8; 32],
    bytes: &[u8],
    sender: &PrecomputedDeviceKey,
) -> Result<envelope::Opened, GroupError> {
    envelope::open_from_precomputed(mk, group, bytes, sender).map_err(|e| match e {
        EnvelopeError::WrongSender => GroupError::WrongSender,
        e => GroupError::Envelope(e),
    })
}

fn constant_input(label: &[u8]) -> Secret32 {
    Secret32::from_bytes(hkdf_sha256::<32>(None, label, label))
}

impl Group {
    /// A fresh, not-yet-joined state for device `me` in group `group`. `store` holds the
    /// one-shot prekeys this device publishes in its [`MemberKey`] (first 2SM messages from
    /// each peer are sealed to them).
    pub fn new(group: [u8; 32], me: DevicePublicKey, store: PrekeyStore) -> Self {
        Self {
            group,
            me,
            store,
            seq: 0,
            status: Status::Pending,
            last_seq: BTreeMap::new(),
            prekeys: BTreeMap::new(),
            dgm: Dgm::default(),
            next_seed: None,
            member_secrets: BTreeMap::new(),
            outer: BTreeMap::new(),
            two_party: BTreeMap::new(),
            chains: BTreeMap::new(),
            tags: BTreeMap::new(),
            history: History::default(),
            verifiers: Verifiers::default(),
        }
    }

    /// This device's member key (its current signed prekey) for a create or add.
    pub fn member_key(&self, signer: &DeviceSigningKey) -> MemberKey {
        MemberKey::new(signer, &self.store)
    }

    /// The prekey store, for rotation and expiry ([`PrekeyStore::rotate`], [`PrekeyStore::expire`]).
    pub fn prekey_store_mut(&mut self) -> &mut PrekeyStore {
        &mut self.store
    }

    /// This member's device.
    pub fn me(&self) -> DevicePublicKey {
        self.me
    }

    /// The group id.
    pub fn group_id(&self) -> [u8; 32] {
        self.group
    }

    /// The membership as this member sees it now (empty before joining and after removal).
    pub fn members(&self) -> BTreeSet<DevicePublicKey> {
        BTreeSet::clone(&self.member_view())
    }

    /// [`Group::members`], shared with the membership history's memoised view.
    fn member_view(&self) -> std::sync::Arc<BTreeSet<DevicePublicKey>> {
        if self.status != Status::Member {
            return std::sync::Arc::default();
        }
        self.dgm.view(&self.me)
    }

    /// Whether this member was removed.
    pub fn is_removed(&self) -> bool {
        self.status == Status::Removed
    }

    /// The last sequence number this member processed from `sender` (for the caller's causal
    /// delivery bookkeeping).
    pub fn last_seq(&self, sender: &DevicePublicKey) -> Option<u64> {
        if sender == &self.me {
            Some(self.seq)
        } else {
            self.last_seq.get(sender).copied()
        }
    }

    /// Turns the history archive on or off (off by default; see [`super::history`]).
    pub fn set_history_archive(&mut self, on: bool) {
        self.history.set_enabled(on);
    }

    // ---------------------------------------------------------------- local operations

    fn check_signer(&self, signer: &DeviceSigningKey) -> Result<(), GroupError> {
        if signer.public() != self.me {
            return Err(GroupError::WrongSigner);
        }
        Ok(())
    }

    fn check_member(&self) -> Result<(), GroupError> {
        match self.status {
            Status::Member => Ok(()),
            Status::Pending => Err(GroupError::NotJoined),
            Status::Removed => Err(GroupError::Removed),
        }
    }

    fn next_id(&self) -> OpId {
        OpId {
            sender: self.me,
            seq: self.seq + 1,
        }
    }

    /// The shape shared by create, remove and update: a fresh seed to each of `recipients`
    /// over the two-party channel, the signed control message `body`, applied here first.
    fn seeded_op<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        recipients: &BTreeSet<DevicePublicKey>,
        body: ControlBody,
    ) -> Result<Output, GroupError> {
        let op = self.next_id();
        let direct = self.seeds_to(signer, rng, op, recipients)?;
        let msg = self.sign_control(signer, body);
        let mut out = self.apply(signer, rng, &msg, None)?;
        out.broadcast = Some(msg);
        out.direct = direct;
        Ok(out)
    }

    fn sign_control(&mut self, signer: &DeviceSigningKey, body: ControlBody) -> ControlMessage {
        self.seq += 1;
        ControlMessage::sign(signer, self.group, self.seq, body)
    }

    fn encrypt_to<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        to: DevicePublicKey,
        op: OpId,
        kind: DirectKind,
        msg: &[u8],
    ) -> Result<(DevicePublicKey, DirectMessage), GroupError> {
        if !self.two_party.contains_key(&to) && self.two_party.len() >= MAX_PEERS {
            return Err(GroupError::Bound("two-party states"));
        }
        let ctx = self.two_party_context(&self.me, &to);
        let tp = self.two_party.entry(to).or_default();
        let verified = if tp.needs_prekey() {
            let p = self
                .prekeys
                .get(&to)
                .ok_or(GroupError::Invalid("no prekey for recipient"))?;
            Some(p.verify(&to)?)
        } else {
            None
        };
        let ct = tp.send(rng, verified.as_ref(), &ctx, msg)?;
        Ok((
            to,
            DirectMessage::sign(signer, self.group, to, op, kind, ct),
        ))
    }

    fn decrypt_from(
        &mut self,
        dm: Option<&DirectMessage>,
        kind: DirectKind,
    ) -> Result<Zeroizing<Vec<u8>>, GroupError> {
        let dm = dm.ok_or(GroupError::MissingDirect(kind))?;
        if dm.kind != kind {
            return Err(GroupError::DirectMismatch("unexpected kind"));
        }
        if !self.two_party.contains_key(&dm.sender) && self.two_party.len() >= MAX_PEERS {
            return Err(GroupError::Bound("two-party states"));
        }
        let ctx = self.two_party_context(&dm.sender, &self.me);
        let tp = self.two_party.entry(dm.sender).or_default();
        Ok(tp.receive(&self.store, &ctx, &dm.payload)?)
    }

    fn two_party_context(&self, from: &DevicePublicKey, to: &DevicePublicKey) -> Vec<u8> {
        let mut c = Vec::with_capacity(TWO_PARTY_CONTEXT.len() + 96);
        c.extend_from_slice(TWO_PARTY_CONTEXT);
        c.extend_from_slice(&self.group);
        c.extend_from_slice(from.as_bytes());
        c.extend_from_slice(to.as_bytes());
        c
    }

    fn seeds_to<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        op: OpId,
        recipients: &BTreeSet<DevicePublicKey>,
    ) -> Result<Vec<(DevicePublicKey, DirectMessage)>, GroupError> {
        let seed = Secret32::random(rng);
        let mut out = Vec::with_capacity(recipients.len());
        for r in recipients {
            if *r != self.me {
                out.push(self.encrypt_to(signer, rng, *r, op, DirectKind::Seed, seed.expose())?);
            }
        }
        self.next_seed = Some(seed);
        Ok(out)
    }

    /// Creates the group with `others` (each with its signed prekey). `me_key` is this
    /// device's own [`MemberKey`].
    pub fn create<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        me_key: MemberKey,
        others: &[MemberKey],
    ) -> Result<Output, GroupError> {
        self.check_signer(signer)?;
        if self.status != Status::Pending || self.dgm.has_create() {
            return Err(GroupError::Invalid("group already exists"));
        }
        if me_key.device != self.me || me_key.prekey.public != self.store.current().public() {
            return Err(GroupError::Invalid("own member key does not match"));
        }
        let mut members = vec![me_key];
        for m in others {
            if !members.iter().any(|x| x.device == m.device) {
                m.verify()?;
                members.push(*m);
            }
        }
        if members.len() > MAX_MEMBERS {
            return Err(GroupError::Bound("members"));
        }
        let backup = self.clone();
        let r = {
            for m in &members {
                self.prekeys.insert(m.device, m.prekey);
            }
            let recipients: BTreeSet<_> = members.iter().map(|m| m.device).collect();
            self.seeded_op(signer, rng, &recipients, ControlBody::Create { members })
        };
        if r.is_err() {
            *self = backup;
        }
        r
    }

    /// Adds a member.
    pub fn add<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        member: MemberKey,
    ) -> Result<Output, GroupError> {
        self.check_signer(signer)?;
        self.check_member()?;
        member.verify()?;
        if self.dgm.known(&member.device) {
            return Err(GroupError::Invalid(
                "device already added or removed before",
            ));
        }
        if self.member_view().len() >= MAX_MEMBERS || self.dgm.len() >= MAX_OPS {
            return Err(GroupError::Bound("members"));
        }
        let backup = self.clone();
        let r = (|| {
            self.prekeys.insert(member.device, member.prekey);
            let op = self.next_id();
            let welcome = self.welcome_payload()?;
            let dm = self.encrypt_to(
                signer,
                rng,
                member.device,
                op,
                DirectKind::Welcome,
                &welcome,
            )?;
            let msg = self.sign_control(signer, ControlBody::Add { member });
            let mut out = self.apply(signer, rng, &msg, None)?;
            out.broadcast = Some(msg);
            out.direct = vec![dm];
            Ok(out)
        })();
        if r.is_err() {
            *self = backup;
        }
        r
    }

    /// Removes a member and sends a fresh seed to everyone else.
    pub fn remove<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        removed: DevicePublicKey,
    ) -> Result<Output, GroupError> {
        self.check_signer(signer)?;
        self.check_member()?;
        let mut recipients = self.members();
        if removed == self.me || !recipients.remove(&removed) {
            return Err(GroupError::Invalid(
                "can only remove another current member",
            ));
        }
        if self.dgm.len() >= MAX_OPS {
            return Err(GroupError::Bound("membership ops"));
        }
        let backup = self.clone();
        let r = self.seeded_op(signer, rng, &recipients, ControlBody::Remove { removed });
        if r.is_err() {
            *self = backup;
        }
        r
    }

    /// A post-compromise-security update: a fresh seed to every other member.
    pub fn update<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
    ) -> Result<Output, GroupError> {
        self.check_signer(signer)?;
        self.check_member()?;
        let backup = self.clone();
        let r = {
            let recipients = self.member_view();
            self.seeded_op(signer, rng, &recipients, ControlBody::Update)
        };
        if r.is_err() {
            *self = backup;
        }
        r
    }

    /// Exports the archived message keys of `epochs` ((sender, epoch) pairs this member has
    /// archived) to the current member `to` over the two-party channel. Only works when the
    /// archive was switched on before those epochs started.
    pub fn export_history<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        to: DevicePublicKey,
        epochs: &[(DevicePublicKey, u32)],
    ) -> Result<Output, GroupError> {
        self.check_signer(signer)?;
        self.check_member()?;
        if to == self.me || !self.member_view().contains(&to) {
            return Err(GroupError::Invalid(
                "history goes to another current member",
            ));
        }
        let payload = self.history.export(epochs)?;
        let backup = self.clone();
        let r = (|| {
            let op = self.next_id();
            let dm = self.encrypt_to(signer, rng, to, op, DirectKind::History, &payload)?;
            let msg = self.sign_control(signer, ControlBody::HistoryExport { to });
            Ok(Output {
                broadcast: Some(msg),
                direct: vec![dm],
                updates: Vec::new(),
            })
        })();
        if r.is_err() {
            *self = backup;
        }
        r
    }

    // ---------------------------------------------------------------- processing

    /// Processes a control message from another member, with the direct message addressed to
    /// this member that travelled with it, if any. Control messages must be fed in causal
    /// order; a refused message leaves the state unchanged.
    pub fn process<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        msg: &ControlMessage,
        direct: Option<&DirectMessage>,
    ) -> Result<Output, GroupError> {
        self.check_signer(signer)?;
        if msg.group != self.group {
            return Err(GroupError::WrongGroup);
        }
        if msg.sender == self.me {
            return Err(GroupError::OwnMessage);
        }
        if self.status == Status::Removed {
            return Err(GroupError::Removed);
        }
        msg.verify()?;
        if let Some(dm) = direct {
            if dm.group != self.group {
                return Err(GroupError::WrongGroup);
            }
            if dm.recipient != self.me {
                return Err(GroupError::DirectMismatch("not addressed to this member"));
            }
            if dm.sender != msg.sender || dm.op != msg.id() {
                return Err(GroupError::DirectMismatch(
                    "belongs to another control message",
                ));
            }
            dm.verify()?;
        }
        if self.status == Status::Pending {
            let joining = match &msg.body {
                ControlBody::Create { members } => members.iter().any(|m| m.device == self.me),
                ControlBody::Add { member } => member.device == self.me,
                _ => false,
            };
            if !joining {
                return Err(GroupError::NotJoined);
            }
        } else {
            let expected = self
                .last_seq
                .get(&msg.sender)
                .ok_or(GroupError::UnknownSender)?
                .saturating_add(1);
            if msg.seq != expected {
                return Err(GroupError::OutOfOrder {
                    expected,
                    got: msg.seq,
                });
            }
        }
        let backup = self.clone();
        let r = self.apply(signer, rng, msg, direct);
        match r {
            Ok(out) => {
                if self.status != Status::Removed {
                    self.last_seq.insert(msg.sender, msg.seq);
                }
                Ok(out)
            }
            Err(e) => {
                *self = backup;
                Err(e)
            }
        }
    }

    fn apply<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        msg: &ControlMessage,
        direct: Option<&DirectMessage>,
    ) -> Result<Output, GroupError> {
        let op = msg.id();
        match &msg.body {
            ControlBody::Create { members } => {
                self.process_create(signer, rng, op, members, direct)
            }
            ControlBody::Add { member } => self.process_add(signer, rng, op, member, direct),
            ControlBody::Remove { removed } => {
                self.process_remove(signer, rng, op, *removed, direct)
            }
            ControlBody::Update => self.process_seed(signer, rng, op, direct, false),
            ControlBody::Ack { of, refresh } => {
                let (forwarded, seed) = self.open_ack_direct(*refresh, direct)?;
                let mut out = self.process_ack(op.sender, of, forwarded)?;
                if *refresh {
                    out.merge(self.process_refresh(op, seed)?);
                }
                Ok(out)
            }
            ControlBody::AddAck { of } => self.process_add_ack(op.sender, of, direct),
            ControlBody::HistoryExport { to } => {
                if *to == self.me {
                    let payload = self.decrypt_from(direct, DirectKind::History)?;
                    self.history.import(&payload)?;
                }
                Ok(Output::default())
            }
        }
    }

    fn process_create<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        op: OpId,
        members: &[MemberKey],
        direct: Option<&DirectMessage>,
    ) -> Result<Output, GroupError> {
        if self.dgm.has_create() || self.status != Status::Pending && op.sender != self.me {
            return Err(GroupError::Invalid("group already created"));
        }
        let mut devices = Vec::with_capacity(members.len());
        for m in members {
            if devices.contains(&m.device) {
                return Err(GroupError::Invalid("duplicate member in create"));
            }
            if op.sender != self.me {
                m.verify()?;
            }
            devices.push(m.device);
            self.outer.insert(m.device, Outer::initial());
            self.prekeys.insert(m.device, m.prekey);
            self.last_seq.entry(m.device).or_insert(0);
        }
        if !devices.contains(&op.sender) || !devices.contains(&self.me) {
            return Err(GroupError::Invalid(
                "create must list its sender and this member",
            ));
        }
        self.last_seq.remove(&self.me);
        self.dgm.record(op, MemOp::Create(devices), self.me);
        self.status = Status::Member;
        self.process_seed(signer, rng, op, direct, false)
    }

    /// The paper's `process_seed`, shared by create, update, remove and refreshing acks.
    fn process_seed<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        op: OpId,
        direct: Option<&DirectMessage>,
        is_remove: bool,
    ) -> Result<Output, GroupError> {
        let sender = op.sender;
        let mut recipients = BTreeSet::clone(&self.dgm.view(&sender));
        recipients.remove(&sender);
        let seed = if sender == self.me {
            self.next_seed
                .take()
                .ok_or(GroupError::Invalid("no seed generated for own operation"))?
        } else if recipients.contains(&self.me) {
            let pt = self.decrypt_from(direct, DirectKind::Seed)?;
            let bytes: [u8; 32] = pt
                .as_slice()
                .try_into()
                .map_err(|_| GroupError::Invalid("seed is not 32 bytes"))?;
            Secret32::from_bytes(bytes)
        } else {
            // Not a recipient (added concurrently): acknowledge without a secret. If the op was
            // a removal, our own ratchet may still be known to the removed member (our first
            // member secret came from a ratchet it tracked), so the ack carries a fresh seed.
            if direct.is_some() {
                return Err(GroupError::DirectMismatch("seed for a non-recipient"));
            }
            return self.acknowledge(signer, rng, op, None, is_remove);
        };
        if self.member_secrets.len().saturating_add(recipients.len()) > MAX_MEMBER_SECRETS {
            return Err(GroupError::Bound("member secrets"));
        }
        for r in &recipients {
            self.member_secrets
                .insert((op, *r), member_secret(&seed, &op, r));
        }
        let sender_secret = member_secret(&seed, &op, &sender);
        drop(seed);
        let mut out = Output::default();
        self.ratchet_and_start(sender, &sender_secret, &mut out);
        if sender == self.me {
            return Ok(out);
        }
        // The paper's forwarding: members this member has added since the sender's view (added
        // concurrently with the op) get this member's own member secret, so they can follow
        // the ratchet step its ack makes.
        let members = self.member_view();
        let forward_to: BTreeSet<DevicePublicKey> = members
            .iter()
            .filter(|m| **m != sender && **m != self.me && !recipients.contains(*m))
            .copied()
            .collect();
        // A removal whose seed reached a device that is not a member for us (removed, or added
        // by a removed device, by a removal concurrent with this one; or the sender itself,
        // removed concurrently): that device knows the member secret our ack absorbs, so the
        // ack refreshes (module docs, "Removal secrecy under concurrency").
        let leaked = !members.contains(&sender) || recipients.iter().any(|r| !members.contains(r));
        let mine = if forward_to.is_empty() {
            None
        } else {
            Some(
                self.member_secrets
                    .get(&(op, self.me))
                    .cloned()
                    .ok_or(GroupError::Invalid("own member secret missing"))?,
            )
        };
        out.merge(self.acknowledge(
            signer,
            rng,
            op,
            mine.as_ref().map(|m| (m, &forward_to)),
            is_remove && leaked,
        )?);
        Ok(out)
    }

    /// Sends this member's `ack` of `of` (already processed) and processes it locally.
    /// `forward` is this member's member secret of `of` and the concurrently added members it
    /// goes to. With `refresh`, the ack also carries a fresh seed for every other current
    /// member, from which everyone derives one more update secret for this member (and only
    /// for it: a refresh is not acknowledged).
    fn acknowledge<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        of: OpId,
        forward: Option<(&Secret32, &BTreeSet<DevicePublicKey>)>,
        refresh: bool,
    ) -> Result<Output, GroupError> {
        let me = self.me;
        let ack_id = self.next_id();
        let seed = refresh.then(|| Secret32::random(rng));
        let mut targets = match (&seed, forward) {
            (Some(_), _) => self.members(),
            (None, Some((_, to))) => to.clone(),
            (None, None) => BTreeSet::new(),
        };
        targets.remove(&me);
        let mut direct = Vec::with_capacity(targets.len());
        for t in targets {
            let fwd = forward.filter(|(_, to)| to.contains(&t)).map(|(s, _)| s);
            let mut payload = Zeroizing::new(Vec::with_capacity(64));
            let kind = match (&seed, fwd) {
                (Some(s), Some(f)) => {
                    payload.extend_from_slice(s.expose());
                    payload.extend_from_slice(f.expose());
                    DirectKind::SeedForward
                }
                (Some(s), None) => {
                    payload.extend_from_slice(s.expose());
                    DirectKind::Seed
                }
                (None, Some(f)) => {
                    payload.extend_from_slice(f.expose());
                    DirectKind::Forward
                }
                (None, None) => continue,
            };
            direct.push(self.encrypt_to(signer, rng, t, ack_id, kind, &payload)?);
        }
        let msg = self.sign_control(signer, ControlBody::Ack { of, refresh });
        let mut out = self.process_ack(me, &of, None)?;
        if let Some(s) = &seed {
            let x = member_secret(s, &ack_id, &me);
            self.ratchet_and_start(me, &x, &mut out);
        }
        out.broadcast = Some(msg);
        out.direct.extend(direct);
        Ok(out)
    }

    /// Opens the direct message of another member's ack: `Forward` (a plain ack: the sender's
    /// member secret of the acknowledged op), `Seed` or `SeedForward` (a refreshing ack: the
    /// refresh seed, and the forwarded member secret). Returns (forwarded, seed).
    fn open_ack_direct(
        &mut self,
        refresh: bool,
        direct: Option<&DirectMessage>,
    ) -> Result<(Option<Secret32>, Option<Secret32>), GroupError> {
        let Some(dm) = direct else {
            return Ok((None, None));
        };
        let kind = match (refresh, dm.kind) {
            (false, DirectKind::Forward)
            | (true, DirectKind::Seed)
            | (true, DirectKind::SeedForward) => dm.kind,
            _ => {
                return Err(GroupError::DirectMismatch(
                    "unexpected direct message kind for this ack",
                ));
            }
        };
        let pt = self.decrypt_from(Some(dm), kind)?;
        let mut r = Reader::new(&pt);
        let first = Secret32::from_bytes(r.array()?);
        let second = match kind {
            DirectKind::SeedForward => Some(Secret32::from_bytes(r.array()?)),
            _ => None,
        };
        r.finish()?;
        Ok(match kind {
            DirectKind::Forward => (Some(first), None),
            DirectKind::Seed => (None, Some(first)),
            _ => (second, Some(first)),
        })
    }

    /// A refreshing ack from another member: if it was sent to us (we are in its sender's
    /// view), its seed gives the sender's next update secret.
    fn process_refresh(&mut self, op: OpId, seed: Option<Secret32>) -> Result<Output, GroupError> {
        let sender = op.sender;
        let mut recipients = BTreeSet::clone(&self.dgm.view(&sender));
        recipients.remove(&sender);
        let mut out = Output::default();
        match (recipients.contains(&self.me), seed) {
            (true, Some(s)) => {
                let x = member_secret(&s, &op, &sender);
                drop(s);
                if self.outer.contains_key(&sender) {
                    self.ratchet_and_start(sender, &x, &mut out);
                }
            }
            (true, None) => return Err(GroupError::MissingDirect(DirectKind::Seed)),
            (false, Some(_)) => {
                return Err(GroupError::DirectMismatch(
                    "refresh seed for a non-recipient",
                ));
            }
            (false, None) => {}
        }
        Ok(out)
    }

    /// The paper's `update_ratchet`: mixes `input` into `member`'s outer ratchet and returns
    /// the update secret.
    fn update_ratchet(&mut self, member: DevicePublicKey, input: &Secret32) -> Secret32 {
        let prev = self.outer.get(&member);
        let salt = prev.map(|o| *o.chain.expose()).unwrap_or([0; 32]);
        // (a zero chain is the paper's empty initial ratchet)
        let epoch = prev.map(|o| o.epoch).unwrap_or(0).saturating_add(1);
        let mut info = Vec::with_capacity(UPDATE_LABEL.len() + 32);
        info.extend_from_slice(UPDATE_LABEL);
        info.extend_from_slice(member.as_bytes());
        let okm = Zeroizing::new(hkdf_sha256::<64>(Some(&salt), input.expose(), &info));
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a.copy_from_slice(&okm[..32]);
        b.copy_from_slice(&okm[32..]);
        self.outer.insert(
            member,
            Outer {
                chain: Secret32::from_bytes(b),
                epoch,
            },
        );
        Secret32::from_bytes(a)
    }

    /// Ratchets `member` with `input` and starts its next message epoch with the result, if
    /// `member` is a current member (a removed member's chain is never used again).
    fn ratchet_and_start(&mut self, member: DevicePublicKey, input: &Secret32, out: &mut Output) {
        if self.status != Status::Member || !self.member_view().contains(&member) {
            return;
        }
        let i = self.update_ratchet(member, input);
        let epoch = self.outer.get(&member).map(|o| o.epoch).unwrap_or(0);
        let chains = self.chains.entry(member).or_default();
        let tag = chains.start(epoch, &i);
        let live: BTreeSet<[u8; 16]> = chains.tags().collect();
        self.tags.retain(|t, m| *m != member || live.contains(t));
        self.tags.insert(tag, member);
        self.history.archive(member, epoch, &i);
        out.updates.push(UpdateEvent {
            member,
            epoch,
            check: hkdf_sha256::<16>(None, i.expose(), CHECK_LABEL),
        });
    }

    /// The paper's `process_ack`; `forwarded` is the acker's member secret of `of` if it
    /// forwarded it to us (we were added concurrently with `of`).
    fn process_ack(
        &mut self,
        acker: DevicePublicKey,
        of: &OpId,
        forwarded: Option<Secret32>,
    ) -> Result<Output, GroupError> {
        self.dgm.ack(of, acker);
        let mut out = Output::default();
        let secret = self.member_secrets.remove(&(*of, acker)).or(forwarded);
        if let Some(s) = secret
            && self.outer.contains_key(&acker)
        {
            self.ratchet_and_start(acker, &s, &mut out);
        }
        self.sync_membership();
        Ok(out)
    }

    fn welcome_payload(&self) -> Result<Zeroizing<Vec<u8>>, GroupError> {
        let o = self
            .outer
            .get(&self.me)
            .ok_or(GroupError::Invalid("own ratchet not initialised"))?;
        let mut w = Writer::new();
        w.put(o.chain.expose());
        w.u32(o.epoch);
        self.dgm.encode(&mut w);
        let seqs: Vec<_> = self.last_seq.iter().collect();
        w.u16(u16::try_from(seqs.len()).unwrap_or(u16::MAX));
        for (d, s) in seqs {
            d.encode(&mut w);
            w.u64(*s);
        }
        w.u16(u16::try_from(self.prekeys.len()).unwrap_or(u16::MAX));
        for (d, p) in &self.prekeys {
            d.encode(&mut w);
            p.encode(&mut w);
        }
        Ok(Zeroizing::new(w.into_bytes()))
    }

    fn process_add<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        op: OpId,
        member: &MemberKey,
        direct: Option<&DirectMessage>,
    ) -> Result<Output, GroupError> {
        let added = member.device;
        if op.sender != self.me {
            member.verify()?;
        }
        if added == self.me {
            return self.process_welcome(signer, op, direct);
        }
        if self.status != Status::Member {
            return Err(GroupError::NotJoined);
        }
        if self.dgm.len() >= MAX_OPS {
            return Err(GroupError::Bound("membership ops"));
        }
        if direct.is_some() {
            return Err(GroupError::DirectMismatch(
                "add carries no direct message for others",
            ));
        }
        self.prekeys.entry(added).or_insert(member.prekey);
        self.last_seq.entry(added).or_insert(0);
        self.outer.entry(added).or_insert_with(Outer::initial);
        self.dgm.record(op, MemOp::Add(added), self.me);
        let mut out = Output::default();
        if self.dgm.view(&op.sender).contains(&self.me) {
            let w = self.update_ratchet(op.sender, &constant_input(WELCOME_INPUT));
            self.member_secrets.insert((op, added), w);
            self.ratchet_and_start(op.sender, &constant_input(ADD_INPUT), &mut out);
        }
        if op.sender == self.me {
            self.sync_membership();
            return Ok(out);
        }
        let ack_id = self.next_id();
        if self.member_view().contains(&added) {
            let o = self
                .outer
                .get(&self.me)
                .ok_or(GroupError::Invalid("own ratchet not initialised"))?;
            let mut state = Zeroizing::new(Vec::with_capacity(36));
            state.extend_from_slice(o.chain.expose());
            state.extend_from_slice(&o.epoch.to_be_bytes());
            out.direct.push(self.encrypt_to(
                signer,
                rng,
                added,
                ack_id,
                DirectKind::AddAckState,
                &state,
            )?);
        }
        out.broadcast = Some(self.sign_control(signer, ControlBody::AddAck { of: op }));
        let me = self.me;
        out.merge(self.process_add_ack(me, &op, None)?);
        Ok(out)
    }

    fn process_add_ack(
        &mut self,
        acker: DevicePublicKey,
        of: &OpId,
        direct: Option<&DirectMessage>,
    ) -> Result<Output, GroupError> {
        self.dgm.ack(of, acker);
        if let Some(dm) = direct {
            if self.dgm.get(of) != Some(&MemOp::Add(self.me)) {
                return Err(GroupError::DirectMismatch(
                    "ratchet state for an add of someone else",
                ));
            }
            let pt = self.decrypt_from(Some(dm), DirectKind::AddAckState)?;
            let (chain, epoch) = parse_outer(&pt)?;
            self.outer.insert(acker, Outer { chain, epoch });
        }
        let mut out = Output::default();
        if self.dgm.view(&acker).contains(&self.me) && self.outer.contains_key(&acker) {
            self.ratchet_and_start(acker, &constant_input(ADD_INPUT), &mut out);
        }
        self.sync_membership();
        Ok(out)
    }

    fn process_welcome(
        &mut self,
        signer: &DeviceSigningKey,
        op: OpId,
        direct: Option<&DirectMessage>,
    ) -> Result<Output, GroupError> {
        let pt = self.decrypt_from(direct, DirectKind::Welcome)?;
        let mut r = Reader::new(&pt);
        let chain = Secret32::from_bytes(r.array()?);
        let epoch = r.u32()?;
        let dgm = Dgm::decode(&mut r)?;
        let n = r.count16("welcome seqs", 2 * MAX_MEMBERS)?;
        let mut seqs = BTreeMap::new();
        for _ in 0..n {
            seqs.insert(DevicePublicKey::decode(&mut r)?, r.u64()?);
        }
        let n = r.count16("welcome prekeys", 2 * MAX_MEMBERS)?;
        let mut prekeys = BTreeMap::new();
        for _ in 0..n {
            prekeys.insert(
                DevicePublicKey::decode(&mut r)?,
                SignedPrekey::decode(&mut r)?,
            );
        }
        r.finish()?;
        if self.status == Status::Pending {
            if !dgm.has_create() {
                return Err(GroupError::Invalid("welcome history has no create"));
            }
            self.dgm = dgm;
            for (d, s) in seqs {
                if d != self.me {
                    self.last_seq.insert(d, s);
                }
            }
            self.prekeys.extend(prekeys);
            self.status = Status::Member;
        }
        self.dgm.record(op, MemOp::Add(self.me), self.me);
        self.outer.insert(self.me, Outer::initial());
        self.outer.insert(op.sender, Outer { chain, epoch });
        let w = self.update_ratchet(op.sender, &constant_input(WELCOME_INPUT));
        self.member_secrets.insert((op, self.me), w);
        let mut out = Output::default();
        self.ratchet_and_start(op.sender, &constant_input(ADD_INPUT), &mut out);
        out.broadcast = Some(self.sign_control(
            signer,
            ControlBody::Ack {
                of: op,
                refresh: false,
            },
        ));
        let me = self.me;
        out.merge(self.process_ack(me, &op, None)?);
        if !self.member_view().contains(&self.me) {
            return Err(GroupError::Invalid(
                "welcome does not make this device a member",
            ));
        }
        Ok(out)
    }

    fn process_remove<R: RngCore + CryptoRng>(
        &mut self,
        signer: &DeviceSigningKey,
        rng: &mut R,
        op: OpId,
        removed: DevicePublicKey,
        direct: Option<&DirectMessage>,
    ) -> Result<Output, GroupError> {
        if self.status != Status::Member {
            return Err(GroupError::NotJoined);
        }
        if self.dgm.len() >= MAX_OPS {
            return Err(GroupError::Bound("membership ops"));
        }
        if removed == op.sender {
            return Err(GroupError::Invalid("a member cannot remove itself"));
        }
        self.dgm.record(
            op,
            MemOp::Remove {
                removed,
                kept: Vec::new(),
            },
            self.me,
        );
        self.sync_membership();
        if self.status == Status::Removed {
            return Ok(Output::default());
        }
        self.process_seed(signer, rng, op, direct, true)
    }

    /// Drops every secret of devices no longer members; marks this member removed if so.
    fn sync_membership(&mut self) {
        if self.status != Status::Member {
            return;
        }
        let members = self.dgm.view(&self.me);
        if !members.contains(&self.me) {
            self.status = Status::Removed;
            self.next_seed = None;
            self.member_secrets.clear();
            self.outer.clear();
            self.two_party.clear();
            self.chains.clear();
            self.tags.clear();
            self.history = History::default();
            self.verifiers.clear();
            return;
        }
        let gone: Vec<_> = self
            .outer
            .keys()
            .chain(self.chains.keys())
            .filter(|d| !members.contains(*d))
            .copied()
            .collect();
        for d in gone {
            self.outer.remove(&d);
            self.chains.remove(&d);
            self.tags.retain(|_, m| *m != d);
            self.verifiers.forget(&d);
        }
        self.member_secrets.retain(|(_, d), _| members.contains(d));
    }

    // ---------------------------------------------------------------- application messages

    /// Encrypts an application message under this member's current message chain, signed by
    /// its device key inside the ciphertext.
    pub fn encrypt(
        &mut self,
        signer: &DeviceSigningKey,
        plaintext: &[u8],
    ) -> Result<AppMessage, GroupError> {
        self.check_signer(signer)?;
        self.check_member()?;
        let chains = self
            .chains
            .get_mut(&self.me)
            .ok_or(GroupError::Invalid("no sending chain yet"))?;
        let (epoch, tag, generation, mk) = chains.next_send()?;
        let header = EnvelopeHeader {
            epoch: u64::from(epoch),
            sender_tag: tag,
            generation,
        };
        Ok(AppMessage(envelope::seal(
            &mk,
            &header,
            &self.group,
            signer,
            plaintext,
        )?))
    }

    /// Decrypts and verifies an application message from another member.
    pub fn decrypt(&mut self, msg: &AppMessage) -> Result<Decrypted, GroupError> {
        self.check_member()?;
        let header = envelope::peek_header(&msg.0)?;
        let epoch = u32::try_from(header.epoch).map_err(|_| GroupError::UnknownTag)?;
        let (sender, mk) = match self.tags.get(&header.sender_tag) {
            Some(sender) => {
                let sender = *sender;
                let chains = self.chains.get_mut(&sender).ok_or(GroupError::UnknownTag)?;
                // The key is derived without touching the state; the chain only moves once the
                // envelope has decrypted and its signature verified, so a refused message
                // leaves the group exactly as it was.
                let (mk, pending) = chains.peek_key(epoch, header.generation)?;
                let opened = match self.verifiers.table(&sender) {
                    Some(table) => {
                        let opened = open_as_precomputed(&mk, &self.group, &msg.0, table)?;
                        self.verifiers.verified(&sender, true);
                        opened
                    }
                    None => {
                        let opened = open_as(&mk, &self.group, &msg.0, &sender)?;
                        self.verifiers.verified(&sender, false);
                        opened
                    }
                };
                chains.commit(pending);
                return Ok(Decrypted {
                    sender,
                    plaintext: opened.payload,
                });
            }
            None => self
                .history
                .key_for(&header.sender_tag, epoch, header.generation)
                .ok_or(GroupError::UnknownTag)?,
        };
        let opened = open_as(&mk, &self.group, &msg.0, &sender)?;
        Ok(Decrypted {
            sender,
            plaintext: opened.payload,
        })
    }

    // ---------------------------------------------------------------- persistence

    /// The whole state, for sealed storage. Contains secrets: zeroized on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(STATE_VERSION);
        w.put(&self.group);
        self.me.encode(&mut w);
        w.bytes32(&self.store.to_bytes());
        w.u64(self.seq);
        w.u8(match self.status {
            Status::Pending => 0,
            Status::Member => 1,
            Status::Removed => 2,
        });
        w.u16(u16::try_from(self.last_seq.len()).unwrap_or(u16::MAX));
        for (d, s) in &self.last_seq {
            d.encode(&mut w);
            w.u64(*s);
        }
        w.u16(u16::try_from(self.prekeys.len()).unwrap_or(u16::MAX));
        for (d, p) in &self.prekeys {
            d.encode(&mut w);
            p.encode(&mut w);
        }
        self.dgm.encode(&mut w);
        match &self.next_seed {
            None => w.u8(0),
            Some(s) => {
                w.u8(1);
                w.put(s.expose());
            }
        }
        w.u32(u32::try_from(self.member_secrets.len()).unwrap_or(u32::MAX));
        for ((op, d), s) in &self.member_secrets {
            op.encode(&mut w);
            d.encode(&mut w);
            w.put(s.expose());
        }
        w.u16(u16::try_from(self.outer.len()).unwrap_or(u16::MAX));
        for (d, o) in &self.outer {
            d.encode(&mut w);
            w.put(o.chain.expose());
            w.u32(o.epoch);
        }
        w.u16(u16::try_from(self.two_party.len()).unwrap_or(u16::MAX));
        for (d, t) in &self.two_party {
            d.encode(&mut w);
            t.encode(&mut w);
        }
        w.u16(u16::try_from(self.chains.len()).unwrap_or(u16::MAX));
        for (d, c) in &self.chains {
            d.encode(&mut w);
            c.encode(&mut w);
        }
        self.history.encode(&mut w);
        Zeroizing::new(w.into_bytes())
    }

    /// Restores a state written by [`Group::to_bytes`]. Strict: rejects unknown versions,
    /// over-long collections and trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GroupError> {
        let mut r = Reader::new(bytes);
        r.version("dcgka state", STATE_VERSION)?;
        let group = r.array()?;
        let me = DevicePublicKey::decode(&mut r)?;
        let store = PrekeyStore::from_bytes(r.bytes32("prekey store", 64 * 1024)?)?;
        let seq = r.u64()?;
        let status = match r.u8()? {
            0 => Status::Pending,
            1 => Status::Member,
            2 => Status::Removed,
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "dcgka status",
                    got: u64::from(got),
                }
                .into());
            }
        };
        let n = r.count16("last seqs", 2 * MAX_MEMBERS)?;
        let mut last_seq = BTreeMap::new();
        for _ in 0..n {
            last_seq.insert(DevicePublicKey::decode(&mut r)?, r.u64()?);
        }
        let n = r.count16("prekeys", 2 * MAX_MEMBERS)?;
        let mut prekeys = BTreeMap::new();
        for _ in 0..n {
            prekeys.insert(
                DevicePublicKey::decode(&mut r)?,
                SignedPrekey::decode(&mut r)?,
            );
        }
        let dgm = Dgm::decode(&mut r)?;
        let next_seed = if r.bool()? {
            Some(Secret32::from_bytes(r.array()?))
        } else {
            None
        };
        let n = r.u32()? as usize;
        if n > MAX_MEMBER_SECRETS {
            return Err(DecodeError::TooLong {
                what: "member secrets",
                max: MAX_MEMBER_SECRETS,
                got: n,
            }
            .into());
        }
        let mut member_secrets = BTreeMap::new();
        for _ in 0..n {
            let op = OpId::decode(&mut r)?;
            let d = DevicePublicKey::decode(&mut r)?;
            member_secrets.insert((op, d), Secret32::from_bytes(r.array()?));
        }
        let n = r.count16("outer ratchets", 2 * MAX_MEMBERS)?;
        let mut outer = BTreeMap::new();
        for _ in 0..n {
            let d = DevicePublicKey::decode(&mut r)?;
            let chain = Secret32::from_bytes(r.array()?);
            outer.insert(
                d,
                Outer {
                    chain,
                    epoch: r.u32()?,
                },
            );
        }
        let n = r.count16("two-party states", MAX_PEERS)?;
        let mut two_party = BTreeMap::new();
        for _ in 0..n {
            let d = DevicePublicKey::decode(&mut r)?;
            two_party.insert(d, TwoParty::decode(&mut r)?);
        }
        let n = r.count16("message chains", 2 * MAX_MEMBERS)?;
        let mut chains = BTreeMap::new();
        let mut tags = BTreeMap::new();
        for _ in 0..n {
            let d = DevicePublicKey::decode(&mut r)?;
            let c = SenderChains::decode(&mut r)?;
            for t in c.tags() {
                tags.insert(t, d);
            }
            chains.insert(d, c);
        }
        let history = History::decode(&mut r)?;
        r.finish()?;
        Ok(Self {
            group,
            me,
            store,
            seq,
            status,
            last_seq,
            prekeys,
            dgm,
            next_seed,
            member_secrets,
            outer,
            two_party,
            chains,
            tags,
            history,
            verifiers: Verifiers::default(),
        })
    }

    /// Key-confirmation values of every current message epoch this member holds, by member:
    /// (epoch, tag). Members agree on a sender's epochs iff they hold the same tags.
    pub fn epoch_tags(&self) -> BTreeMap<DevicePublicKey, (u32, [u8; 16])> {
        self.chains
            .iter()
            .filter_map(|(d, c)| c.current().map(|(e, t, _)| (*d, (e, t))))
            .collect()
    }

    /// Archive entries this member could export (sender, epoch).
    pub fn archived_epochs(&self) -> Vec<(DevicePublicKey, u32)> {
        self.history
            .entries()
            .map(|e: &ArchiveEntry| (e.sender, e.epoch))
            .collect()
    }

    // ---------------------------------------------------------------- incremental persistence
    //
    // [`Group::to_bytes`] writes everything; the message chains are the only part that moves
    // with every application message. These let a caller store one sender's chains in a small
    // record of its own and lay it over the whole state when loading (the caller keeps the
    // records newer than the whole state, for example by deleting them whenever it writes the
    // whole state).

    /// This member's sending position: (epoch, index of the next message), once it has a
    /// sending chain.
    pub fn send_position(&self) -> Option<(u32, u32)> {
        self.chains
            .get(&self.me)
            .and_then(SenderChains::send_position)
    }

    /// One sender's message chains (this member's own sending chain included), encoded for a
    /// record of their own. Contains secrets: zeroized on drop.
    pub fn chains_to_bytes(&self, sender: &DevicePublicKey) -> Option<Zeroizing<Vec<u8>>> {
        self.chains.get(sender).map(encode_chains)
    }

    /// This member's own chains encoded as they will be once `ahead` more messages have been
    /// sent: (epoch, index the next send after those uses, bytes). Storing this durably before
    /// using indices below that bound, and restoring it after a crash, guarantees no index (so
    /// no key and nonce) is used twice; receivers see the unused rest as a gap, which they
    /// bridge with skipped keys (keep `ahead` well below [`super::ratchet::MAX_SKIP`]).
    pub fn reserve_sends(&self, ahead: u32) -> Result<(u32, u32, Zeroizing<Vec<u8>>), GroupError> {
        let chains = self
            .chains
            .get(&self.me)
            .ok_or(GroupError::Invalid("no sending chain yet"))?
            .advanced(ahead)?;
        let (epoch, next) = chains
            .send_position()
            .ok_or(GroupError::Invalid("no sending chain yet"))?;
        Ok((epoch, next, encode_chains(&chains)))
    }

    /// Replaces `sender`'s message chains with a record from [`Group::chains_to_bytes`] or
    /// [`Group::reserve_sends`]. Refused (state unchanged) if `sender` has no chains here or
    /// the record does not decode strictly.
    pub fn restore_chains(
        &mut self,
        sender: &DevicePublicKey,
        bytes: &[u8],
    ) -> Result<(), GroupError> {
        if !self.chains.contains_key(sender) {
            return Err(GroupError::Invalid("no message chains for that sender"));
        }
        let mut r = Reader::new(bytes);
        r.version("message chains record", CHAINS_VERSION)?;
        let chains = SenderChains::decode(&mut r)?;
        r.finish()?;
        self.tags.retain(|_, m| m != sender);
        for t in chains.tags() {
            self.tags.insert(t, *sender);
        }
        self.chains.insert(*sender, chains);
        Ok(())
    }
}

/// Version byte of a one-sender chains record.
const CHAINS_VERSION: u8 = 1;

fn encode_chains(c: &SenderChains) -> Zeroizing<Vec<u8>> {
    let mut w = Writer::new();
    w.u8(CHAINS_VERSION);
    c.encode(&mut w);
    Zeroizing::new(w.into_bytes())
}

fn parse_outer(pt: &[u8]) -> Result<(Secret32, u32), GroupError> {
    let mut r = Reader::new(pt);
    let chain = Secret32::from_bytes(r.array()?);
    let epoch = r.u32()?;
    r.finish()?;
    Ok((chain, epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// A member that knows another member's receiving chain forges a message in its name,
    /// signing with its own key: the envelope opens but the signer is not the chain's owner.
    #[test]
    fn member_cannot_impersonate_another() {
        let mut rng = StdRng::seed_from_u64(5);
        let keys: Vec<_> = (1u8..=3)
            .map(|i| DeviceSigningKey::from_seed(&[i; 32]))
            .collect();
        let mut gs: Vec<_> = keys
            .iter()
            .map(|k| Group::new([1; 32], k.public(), PrekeyStore::new(&mut rng, 0)))
            .collect();
        let mks: Vec<_> = gs.iter().zip(&keys).map(|(g, k)| g.member_key(k)).collect();
        let out = gs[0].create(&keys[0], &mut rng, mks[0], &mks[1..]).unwrap();
        let create = out.broadcast.unwrap();
        let mut acks = Vec::new();
        for i in 1..3 {
            let dm = out
                .direct
                .iter()
                .find(|(r, _)| *r == keys[i].public())
                .map(|(_, d)| d.clone());
            let o = gs[i]
                .process(&keys[i], &mut rng, &create, dm.as_ref())
                .unwrap();
            acks.push((i, o.broadcast.unwrap()));
        }
        for (from, ack) in &acks {
            for i in 0..3 {
                if i != *from {
                    gs[i].process(&keys[i], &mut rng, ack, None).unwrap();
                }
            }
        }
        // Member 1 takes the next key of member 0's chain from its own receiving state.
        let victim = keys[0].public();
        let (epoch, tag, _) = gs[1].chains[&victim].current().unwrap();
        let mk = gs[1]
            .chains
            .get_mut(&victim)
            .unwrap()
            .take_key(epoch, 0)
            .unwrap();
        let header = EnvelopeHeader {
            epoch: u64::from(epoch),
            sender_tag: tag,
            generation: 0,
        };
        let forged = envelope::seal(&mk, &header, &[1; 32], &keys[1], b"I am member 0").unwrap();
        let before = gs[2].to_bytes();
        assert_eq!(
            gs[2].decrypt(&AppMessage(forged)).unwrap_err(),
            GroupError::WrongSender
        );
        assert_eq!(
            gs[2].to_bytes(),
            before,
            "a refused message changed the state"
        );
        // The genuine message at that position still decrypts (the failed attempt used no key).
        let real = gs[0].encrypt(&keys[0], b"hi").unwrap();
        assert_eq!(gs[2].decrypt(&real).unwrap().sender, victim);

        // Refused messages that would skip ahead (tampered, or wrong context) leave the state
        // byte-for-byte unchanged, skipped keys included; the genuine ones still decrypt.
        let m1 = gs[0].encrypt(&keys[0], b"one").unwrap();
        let m2 = gs[0].encrypt(&keys[0], b"two").unwrap();
        let m3 = gs[0].encrypt(&keys[0], b"three").unwrap();
        let before = gs[2].to_bytes();
        for i in 0..m3.0.len() {
            let mut bad = m3.clone();
            bad.0[i] ^= 0x40;
            assert!(gs[2].decrypt(&bad).is_err());
            assert_eq!(gs[2].to_bytes(), before, "byte {i}");
        }
        assert_eq!(&gs[2].decrypt(&m3).unwrap().plaintext[..], b"three");
        assert_eq!(&gs[2].decrypt(&m1).unwrap().plaintext[..], b"one");
        let before = gs[2].to_bytes();
        assert!(matches!(
            gs[2].decrypt(&m1).unwrap_err(),
            GroupError::Ratchet(RatchetError::Replay { .. })
        ));
        assert_eq!(gs[2].to_bytes(), before);
        assert_eq!(&gs[2].decrypt(&m2).unwrap().plaintext[..], b"two");
    }

    /// A minimal causal network for tests that need the state's internals: every node processes
    /// the shared log in order (a causal order, as each message is appended after everything
    /// its sender had processed).
    struct Sim {
        keys: Vec<DeviceSigningKey>,
        gs: Vec<Group>,
        log: Vec<(ControlMessage, Vec<(DevicePublicKey, DirectMessage)>)>,
        next: Vec<usize>,
    }

    impl Sim {
        fn new(n: u8, rng: &mut StdRng) -> Self {
            let keys: Vec<_> = (1..=n)
                .map(|i| DeviceSigningKey::from_seed(&[i; 32]))
                .collect();
            let gs: Vec<_> = keys
                .iter()
                .map(|k| Group::new([1; 32], k.public(), PrekeyStore::new(rng, 0)))
                .collect();
            let mks: Vec<_> = gs.iter().zip(&keys).map(|(g, k)| g.member_key(k)).collect();
            let mut sim = Sim {
                next: vec![0; keys.len()],
                keys,
                gs,
                log: Vec::new(),
            };
            let out = sim.gs[0]
                .create(&sim.keys[0], rng, mks[0], &mks[1..])
                .unwrap();
            sim.push(0, out);
            sim.settle(rng);
            sim
        }

        fn id(&self, i: usize) -> DevicePublicKey {
            self.keys[i].public()
        }

        fn push(&mut self, from: usize, out: Output) -> Option<OpId> {
            let c = out.broadcast?;
            let id = c.id();
            self.log.push((c, out.direct));
            // The sender has its own message processed already.
            if self.next[from] == self.log.len() - 1 {
                self.next[from] = self.log.len();
            }
            Some(id)
        }

        /// Node `i` processes log entry `idx` (out of log order only when the test says so).
        fn deliver(&mut self, i: usize, idx: usize, rng: &mut StdRng) {
            let (c, direct) = self.log[idx].clone();
            let me = self.id(i);
            if c.sender == me || self.gs[i].is_removed() {
                return;
            }
            let dm = direct.iter().find(|(r, _)| *r == me).map(|(_, d)| d);
            let out = self.gs[i].process(&self.keys[i], rng, &c, dm).unwrap();
            self.push(i, out);
        }

        fn settle(&mut self, rng: &mut StdRng) {
            loop {
                let mut progress = false;
                for i in 0..self.gs.len() {
                    while self.next[i] < self.log.len() {
                        let idx = self.next[i];
                        self.next[i] += 1;
                        self.deliver(i, idx, rng);
                        progress = true;
                    }
                }
                if !progress {
                    break;
                }
            }
        }
    }

    /// Two concurrent removals: each removed device receives the other removal's seed (its
    /// sender did not know of the other removal yet). Together they know both member secrets a
    /// remaining member's ratchet absorbs when it acknowledges the two removals, and they knew
    /// its chain before. The paper's authors' prototype answers with an ack carrying a fresh
    /// update in exactly this case; so does this implementation (a refreshing ack). Before that
    /// fix, the colluding pair read what C sent after processing both removals.
    #[test]
    fn colluding_concurrently_removed_members_are_locked_out() {
        let mut rng = StdRng::seed_from_u64(17);
        let mut sim = Sim::new(5, &mut rng);
        let (a, b, c, r1, r2) = (0, 1, 2, 3, 4);
        let cid = sim.id(c);
        let r1_pre = sim.gs[r1].clone();
        let r2_pre = sim.gs[r2].clone();
        let rm1 = sim.id(r1);
        let rm2 = sim.id(r2);
        let out = sim.gs[a].remove(&sim.keys[a], &mut rng, rm1).unwrap();
        let op_a = sim.push(a, out).unwrap();
        let out = sim.gs[b].remove(&sim.keys[b], &mut rng, rm2).unwrap();
        let op_b = sim.push(b, out).unwrap();
        let (ia, ib) = (sim.log.len() - 2, sim.log.len() - 1);

        // What each removed device learns from the removal it was (wrongly) a recipient of.
        let mut k2 = r2_pre.clone();
        let (ca, da) = sim.log[ia].clone();
        let d = da.iter().find(|(r, _)| *r == rm2).map(|(_, d)| d);
        k2.process(&sim.keys[r2], &mut rng, &ca, d).unwrap();
        let a_c = k2.member_secrets[&(op_a, cid)].clone();
        let mut k1 = r1_pre.clone();
        let (cb, db) = sim.log[ib].clone();
        let d = db.iter().find(|(r, _)| *r == rm1).map(|(_, d)| d);
        k1.process(&sim.keys[r1], &mut rng, &cb, d).unwrap();
        let b_c = k1.member_secrets[&(op_b, cid)].clone();

        // C processes the first removal and talks: R2 (not yet removed for C) may read that,
        // which also checks the attacker below follows C's ratchet exactly.
        sim.deliver(c, ia, &mut rng);
        sim.next[c] = ia + 1;
        let m1 = sim.gs[c]
            .encrypt(&sim.keys[c], b"after one removal")
            .unwrap();
        let mut atk = r1_pre.clone();
        atk.ratchet_and_start(cid, &a_c, &mut Output::default());
        assert_eq!(
            &atk.clone().decrypt(&m1).unwrap().plaintext[..],
            b"after one removal"
        );

        // Everyone processes everything; C has now processed both removals.
        sim.settle(&mut rng);
        assert!(sim.gs[r1].is_removed() && sim.gs[r2].is_removed());
        let m2 = sim.gs[c]
            .encrypt(&sim.keys[c], b"after both removals")
            .unwrap();
        atk.ratchet_and_start(cid, &b_c, &mut Output::default());
        assert!(
            atk.decrypt(&m2).is_err(),
            "the two removed devices together read C after both removals"
        );
        // The remaining members still read each other.
        for i in [a, b] {
            assert_eq!(
                &sim.gs[i].decrypt(&m2).unwrap().plaintext[..],
                b"after both removals"
            );
        }
    }

    /// After `BUILD_AFTER` messages from one sender a receiver verifies that sender with a
    /// precomputed table; on that path forged, tampered and replayed messages are still refused
    /// (leaving the state unchanged), and the table goes when the sender is removed.
    #[test]
    fn busy_sender_table_path_refuses_the_same_messages() {
        use super::super::verifiers::BUILD_AFTER;
        let mut rng = StdRng::seed_from_u64(23);
        let mut sim = Sim::new(3, &mut rng);
        let (a, b, c) = (0, 1, 2);
        let aid = sim.id(a);
        for i in 0..BUILD_AFTER {
            let m = sim.gs[a].encrypt(&sim.keys[a], &i.to_be_bytes()).unwrap();
            assert_eq!(sim.gs[c].decrypt(&m).unwrap().sender, aid);
            assert_eq!(
                sim.gs[c].verifiers.with_tables().is_empty(),
                i + 1 < BUILD_AFTER
            );
        }
        assert_eq!(sim.gs[c].verifiers.with_tables(), vec![aid]);
        assert!(sim.gs[b].verifiers.with_tables().is_empty());

        // B, who can derive A's next key, signs in A's slot: refused, state unchanged.
        let (epoch, tag, next) = sim.gs[c].chains[&aid].current().unwrap();
        let mut b_view = sim.gs[b].clone();
        let mk = b_view
            .chains
            .get_mut(&aid)
            .unwrap()
            .take_key(epoch, next)
            .unwrap();
        let header = EnvelopeHeader {
            epoch: u64::from(epoch),
            sender_tag: tag,
            generation: next,
        };
        let forged = envelope::seal(&mk, &header, &[1; 32], &sim.keys[b], b"I am A").unwrap();
        let before = sim.gs[c].to_bytes();
        assert_eq!(
            sim.gs[c].decrypt(&AppMessage(forged.clone())).unwrap_err(),
            GroupError::WrongSender
        );
        // The same forgery with A's key bytes inside and B's signature: a signature error.
        let mut inner = forged;
        let body_start = 1 + envelope::HEADER_LEN;
        let (k, n) = {
            let okm = hkdf_sha256::<44>(
                Some(&inner[..body_start]),
                mk.expose(),
                b"SecureComm/envelope/aead v1",
            );
            let mut k = [0u8; 32];
            k.copy_from_slice(&okm[..32]);
            let mut n = [0u8; 12];
            n.copy_from_slice(&okm[32..]);
            (k, n)
        };
        {
            use chacha20poly1305::aead::{AeadInPlace, KeyInit};
            let aead = chacha20poly1305::ChaCha20Poly1305::new(&k.into());
            let tag_at = inner.len() - 16;
            let (head, rest) = inner.split_at_mut(body_start);
            let (body, tag) = rest.split_at_mut(tag_at - body_start);
            aead.decrypt_in_place_detached(&n.into(), head, body, (&*tag).into())
                .unwrap();
            body[..32].copy_from_slice(aid.as_bytes());
            let t = aead
                .encrypt_in_place_detached(&n.into(), head, body)
                .unwrap();
            tag.copy_from_slice(&t);
        }
        assert!(matches!(
            sim.gs[c].decrypt(&AppMessage(inner)).unwrap_err(),
            GroupError::Envelope(EnvelopeError::Signature(_))
        ));
        assert_eq!(sim.gs[c].to_bytes(), before);

        // Tampered bytes refused without a state change; the genuine message and a replay.
        let m = sim.gs[a].encrypt(&sim.keys[a], b"real").unwrap();
        for i in 0..m.0.len() {
            let mut bad = m.clone();
            bad.0[i] ^= 0x20;
            assert!(sim.gs[c].decrypt(&bad).is_err(), "byte {i}");
        }
        assert_eq!(sim.gs[c].to_bytes(), before);
        assert_eq!(&sim.gs[c].decrypt(&m).unwrap().plaintext[..], b"real");
        assert!(matches!(
            sim.gs[c].decrypt(&m).unwrap_err(),
            GroupError::Ratchet(RatchetError::Replay { .. })
        ));

        // A is removed: C drops its table and counter.
        let out = sim.gs[b].remove(&sim.keys[b], &mut rng, aid).unwrap();
        sim.push(b, out);
        sim.settle(&mut rng);
        assert!(sim.gs[c].verifiers.with_tables().is_empty());
        assert!(sim.gs[c].verifiers.counted().iter().all(|d| *d != aid));
    }

    /// Chains records: a receiver that lays its last record over an older whole state decrypts
    /// on exactly as before; a sender restored from a reservation continues past it (the gap is
    /// bridged by skipped keys, no index is reused); bad records change nothing.
    #[test]
    fn chains_records_and_reservations() {
        let mut rng = StdRng::seed_from_u64(9);
        let keys: Vec<_> = (1u8..=2)
            .map(|i| DeviceSigningKey::from_seed(&[i; 32]))
            .collect();
        let mut gs: Vec<_> = keys
            .iter()
            .map(|k| Group::new([2; 32], k.public(), PrekeyStore::new(&mut rng, 0)))
            .collect();
        let mks: Vec<_> = gs.iter().zip(&keys).map(|(g, k)| g.member_key(k)).collect();
        let out = gs[0].create(&keys[0], &mut rng, mks[0], &mks[1..]).unwrap();
        let dm = out.direct.first().map(|(_, d)| d.clone());
        let ack = gs[1]
            .process(&keys[1], &mut rng, &out.broadcast.unwrap(), dm.as_ref())
            .unwrap()
            .broadcast
            .unwrap();
        gs[0].process(&keys[0], &mut rng, &ack, None).unwrap();
        let (a, b) = (keys[0].public(), keys[1].public());
        let (epoch, next) = gs[0].send_position().unwrap();
        assert_eq!(next, 0);

        // Receiver: whole state at message 0, record after message 2.
        let whole = gs[1].to_bytes();
        for m in [&b"m0"[..], b"m1", b"m2"] {
            let c = gs[0].encrypt(&keys[0], m).unwrap();
            gs[1].decrypt(&c).unwrap();
        }
        let record = gs[1].chains_to_bytes(&a).unwrap();
        let mut restored = Group::from_bytes(&whole).unwrap();
        restored.restore_chains(&a, &record).unwrap();
        assert_eq!(restored.to_bytes(), gs[1].to_bytes());

        // Sender: reserve 5 ahead of position 3, "crash" back to the reservation.
        let (e, upto, res) = gs[0].reserve_sends(5).unwrap();
        assert_eq!((e, upto), (epoch, 8));
        assert_eq!(
            gs[0].send_position(),
            Some((epoch, 3)),
            "reserving uses nothing"
        );
        let used = gs[0].encrypt(&keys[0], b"m3").unwrap();
        let mut crashed = gs[0].clone();
        crashed.restore_chains(&a, &res).unwrap();
        assert_eq!(crashed.send_position(), Some((epoch, 8)));
        let after = crashed.encrypt(&keys[0], b"m8").unwrap();
        assert_eq!(
            restored.decrypt(&after).unwrap().plaintext.as_slice(),
            b"m8"
        );
        // The message sent before the crash still decrypts (index 3 was a skipped key).
        assert_eq!(restored.decrypt(&used).unwrap().plaintext.as_slice(), b"m3");

        // Strict records: other versions, truncation, trailing bytes, unknown senders.
        let before = restored.to_bytes();
        let mut bad = record.to_vec();
        bad[0] = 2;
        assert!(restored.restore_chains(&a, &bad).is_err());
        assert!(
            restored
                .restore_chains(&a, &record[..record.len() - 1])
                .is_err()
        );
        let mut long = record.to_vec();
        long.push(0);
        assert!(restored.restore_chains(&a, &long).is_err());
        let stranger = DeviceSigningKey::from_seed(&[9; 32]).public();
        assert!(restored.restore_chains(&stranger, &record).is_err());
        assert!(restored.chains_to_bytes(&stranger).is_none());
        assert_eq!(restored.to_bytes(), before);
        let _ = b;
    }

    #[test]
    fn debug_shows_no_secrets() {
        use rand::SeedableRng;
        let store = PrekeyStore::new(&mut rand::rngs::StdRng::seed_from_u64(1), 0);
        let secret = store.to_bytes();
        let g = Group::new(
            [1; 32],
            DeviceSigningKey::from_seed(&[2; 32]).public(),
            store,
        );
        let d = format!("{g:?}");
        // No 4-byte window of the serialized prekey secrets appears in the Debug output.
        let hexed: String = d.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        for w in secret[5..].windows(4) {
            let h: String = w.iter().map(|b| format!("{b:02x}")).collect();
            assert!(!hexed.contains(&h), "{d}");
        }
    }
}
