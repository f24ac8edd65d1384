//! The Double Ratchet, as Signal specifies it (revision 4), with these choices:
//!
//! * `KDF_RK(rk, dh) = HKDF-SHA256(salt = rk, ikm = dh, info = "SecureComm/dm/root-chain v1")`,
//!   64 bytes: the new root key, then the new chain key.
//! * `KDF_CK(ck)`: message key `HMAC-SHA256(ck, 0x01)`, next chain key `HMAC-SHA256(ck, 0x02)`.
//! * `ENCRYPT(mk, pt, ad)`: `HKDF-SHA256-Expand(PRK = mk, info = "SecureComm/dm/mk v1")`
//!   gives 44 bytes, a ChaCha20-Poly1305 key and nonce (each message key is used once, so the
//!   nonce never repeats under a key). The extract step is skipped (RFC 5869 §3.3): `mk` is
//!   already a uniformly random HMAC output. The associated data
//!   is `session AD || [encoded X3DH header] || encoded ratchet header`.
//! * The sending half of a DH ratchet step is taken lazily, on the first [`Session::encrypt`]
//!   after a new ratchet key arrived (so decryption needs no randomness). The keys are the same
//!   as in the specification's eager form.
//!
//! # What each side stores ([`Session`], serializable, version 1)
//!
//! Both identities and the role (which fix the session AD), the pending X3DH header (initiator
//! only, until the first reply decrypts), the own ratchet key pair, the peer's current ratchet
//! key, root key, sending and receiving chain keys, `Ns`, `Nr`, `PN`, the last
//! [`MAX_OLD_REMOTE_KEYS`] peer ratchet keys (to report replays on old chains clearly), and at
//! most [`MAX_SKIPPED_KEYS`] skipped message keys (oldest evicted first). One message may skip
//! at most [`MAX_SKIP`] keys per chain.
//!
//! # Failure atomicity
//!
//! Decryption computes every new key on the side and commits only after the AEAD tag verified,
//! so a forged, corrupted, replayed or too-far-ahead message leaves the session exactly as it
//! was.

use std::collections::{BTreeMap, VecDeque};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use curve25519_dalek::montgomery::MontgomeryPoint;
use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::x3dh::{self, AD_LEN, DmIdentity, InitialHeader, PrekeyBundle, PrekeyStore};
use super::{DmError, MAX_PLAINTEXT, PublicIdentity};
use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::keys::{DhError, DhPublic, DhSecret};
use crate::secret::{Secret32, hkdf_sha256};

/// Most message keys one message may make the receiver skip in one chain.
pub const MAX_SKIP: u32 = 1000;
/// Most skipped message keys a session stores; the oldest are evicted first.
pub const MAX_SKIPPED_KEYS: usize = 2000;
/// Peer ratchet keys remembered after their chain ended, to name replays on old chains.
pub const MAX_OLD_REMOTE_KEYS: usize = 16;
/// Encoded length of a [`RatchetHeader`].
pub const HEADER_LEN: usize = 1 + 32 + 4 + 4;
/// Poly1305 tag length.
const TAG_LEN: usize = 16;

const RK_INFO: &[u8] = b"SecureComm/dm/root-chain v1";
const MK_INFO: &[u8] = b"SecureComm/dm/mk v1";
const HEADER_VERSION: u8 = 1;
const MESSAGE_VERSION: u8 = 1;
const STATE_VERSION: u8 = 1;
/// Room for the session AD, an X3DH header (at most 106 bytes) and a ratchet header.
const AAD_MAX: usize = AD_LEN + 128 + HEADER_LEN;

/// The ratchet header: sender's current ratchet key, previous chain length, message number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatchetHeader {
    /// The sender's current ratchet public key.
    pub dh: DhPublic,
    /// Number of messages in the sender's previous sending chain.
    pub pn: u32,
    /// This message's number in the current sending chain.
    pub n: u32,
}

impl RatchetHeader {
    fn to_array(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (dst, src) in out.iter_mut().zip(
            [HEADER_VERSION]
                .iter()
                .chain(self.dh.as_bytes())
                .chain(&self.pn.to_be_bytes())
                .chain(&self.n.to_be_bytes()),
        ) {
            *dst = *src;
        }
        out
    }
}

impl Encode for RatchetHeader {
    fn encode(&self, w: &mut Writer) {
        w.put(&self.to_array());
    }
}

impl Decode for RatchetHeader {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("ratchet header", HEADER_VERSION)?;
        Ok(Self {
            dh: DhPublic::decode(r)?,
            pn: r.u32()?,
            n: r.u32()?,
        })
    }
}

/// One Double Ratchet message: header and ciphertext (plaintext plus 16-byte tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatchetMessage {
    /// The header, authenticated as associated data.
    pub header: RatchetHeader,
    /// ChaCha20-Poly1305 ciphertext with the tag appended.
    pub ciphertext: Vec<u8>,
}

impl Encode for RatchetMessage {
    fn encode(&self, w: &mut Writer) {
        self.header.encode(w);
        w.bytes32(&self.ciphertext);
    }
}

impl Decode for RatchetMessage {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let header = RatchetHeader::decode(r)?;
        let ciphertext = r.bytes32("DM ciphertext", MAX_PLAINTEXT + TAG_LEN)?;
        if ciphertext.len() < TAG_LEN {
            return Err(DecodeError::Invalid("DM ciphertext shorter than its tag"));
        }
        Ok(Self {
            header,
            ciphertext: ciphertext.to_vec(),
        })
    }
}

/// A DM on the wire (version 1). See the [module docs](super) for the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmMessage {
    /// A message from the initiator before it has heard back: X3DH header plus ratchet message.
    Initial {
        /// The X3DH header the responder needs to start the session (boxed: it is rare and
        /// three times the size of the rest).
        x3dh: Box<InitialHeader>,
        /// The ratchet message.
        message: RatchetMessage,
    },
    /// Any other message.
    Normal(RatchetMessage),
}

impl DmMessage {
    /// The ratchet message inside.
    pub fn ratchet(&self) -> &RatchetMessage {
        match self {
            Self::Initial { message, .. } | Self::Normal(message) => message,
        }
    }
}

impl Encode for DmMessage {
    fn encode(&self, w: &mut Writer) {
        w.u8(MESSAGE_VERSION);
        match self {
            Self::Normal(m) => {
                w.u8(0);
                m.encode(w);
            }
            Self::Initial { x3dh, message } => {
                w.u8(1);
                x3dh.encode(w);
                message.encode(w);
            }
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut w =
            Writer::with_capacity(2 + 128 + HEADER_LEN + 4 + self.ratchet().ciphertext.len());
        self.encode(&mut w);
        w.into_bytes()
    }
}

impl Decode for DmMessage {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("DM message", MESSAGE_VERSION)?;
        match r.u8()? {
            0 => Ok(Self::Normal(RatchetMessage::decode(r)?)),
            1 => Ok(Self::Initial {
                x3dh: Box::new(InitialHeader::decode(r)?),
                message: RatchetMessage::decode(r)?,
            }),
            got => Err(DecodeError::UnknownTag {
                what: "DM message kind",
                got: u64::from(got),
            }),
        }
    }
}

fn split64(mut out: [u8; 64]) -> (Secret32, Secret32) {
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    a.copy_from_slice(&out[..32]);
    b.copy_from_slice(&out[32..]);
    out.zeroize();
    (Secret32::from_bytes(a), Secret32::from_bytes(b))
}

/// `KDF_RK`: new root key and chain key.
fn kdf_rk(rk: &Secret32, dh: &Secret32) -> (Secret32, Secret32) {
    split64(hkdf_sha256::<64>(Some(rk.expose()), dh.expose(), RK_INFO))
}

/// X25519 for ratchet steps, computed through the Edwards form so curve25519-dalek's vectorized
/// variable-base multiplication is used (the Montgomery ladder is serial only). For any `u` on
/// Curve25519 the result equals RFC 7748 X25519 (the u-coordinate of `[k]P` does not depend on
/// the sign of `P`); `u` on the twist, which no honest peer sends, is rejected. An all-zero
/// result (small-order input) is rejected as in [`DhSecret::diffie_hellman`].
fn ratchet_dh(secret: &DhSecret, public: &DhPublic) -> Result<Secret32, DmError> {
    let point = MontgomeryPoint(*public.as_bytes())
        .to_edwards(0)
        .ok_or(DmError::InvalidRatchetKey)?;
    let mut shared = point.mul_clamped(*secret.to_bytes()).to_montgomery();
    let zero = bool::from(subtle::ConstantTimeEq::ct_eq(&shared.0[..], &[0u8; 32][..]));
    let out = Secret32::from_bytes(shared.0);
    shared.zeroize();
    if zero {
        return Err(DhError::NonContributory.into());
    }
    Ok(out)
}

/// HMAC-SHA256 keyed with `key` (at most 64 bytes; longer keys are cut, which no caller passes).
/// HMAC pads a key shorter than the 64-byte block with zeros, so keying with the padded block
/// directly is the same function and has no error path.
fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    let mut block = Zeroizing::new([0u8; 64]);
    for (dst, src) in block.iter_mut().zip(key) {
        *dst = *src;
    }
    <Hmac<Sha256> as KeyInit>::new(&(*block).into())
}

/// `KDF_CK`: (message key, next chain key).
fn kdf_ck(ck: &Secret32) -> (Secret32, Secret32) {
    let mac = hmac_sha256(ck.expose());
    let mut m1 = mac.clone();
    m1.update(&[0x01]);
    let mut m2 = mac;
    m2.update(&[0x02]);
    let mut mk: [u8; 32] = m1.finalize().into_bytes().into();
    let mut next: [u8; 32] = m2.finalize().into_bytes().into();
    let out = (Secret32::from_bytes(mk), Secret32::from_bytes(next));
    mk.zeroize();
    next.zeroize();
    out
}

/// `HKDF-Expand(PRK = mk, info = MK_INFO, L = 44)` (RFC 5869 §2.3), split into a ChaCha20-Poly1305
/// key and nonce. The extract step is skipped as RFC 5869 §3.3 allows: the message key is
/// already a uniformly random 32-byte HMAC output. `MK_INFO` is short enough that each expand
/// block is a single SHA-256 compression per HMAC pass.
fn aead(mk: &Secret32) -> (ChaCha20Poly1305, Zeroizing<[u8; 44]>) {
    let prk = hmac_sha256(mk.expose());
    let mut t1 = prk.clone();
    t1.update(MK_INFO);
    t1.update(&[0x01]);
    let t1 = Zeroizing::new(<[u8; 32]>::from(t1.finalize().into_bytes()));
    let mut t2 = prk;
    t2.update(&t1[..]);
    t2.update(MK_INFO);
    t2.update(&[0x02]);
    let t2 = Zeroizing::new(<[u8; 32]>::from(t2.finalize().into_bytes()));
    let mut okm = Zeroizing::new([0u8; 44]);
    for (dst, src) in okm.iter_mut().zip(t1.iter().chain(t2.iter())) {
        *dst = *src;
    }
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&okm[..32]));
    (cipher, okm)
}

fn seal(mk: &Secret32, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, DmError> {
    let (cipher, okm) = aead(mk);
    let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buf.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&okm[32..]), aad, &mut buf)
        .map_err(|_| DmError::PlaintextTooLong {
            max: MAX_PLAINTEXT,
            got: plaintext.len(),
        })?;
    buf.extend_from_slice(&tag);
    Ok(buf)
}

fn open(mk: &Secret32, aad: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, DmError> {
    let body_len = ciphertext
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(DmError::AuthenticationFailed)?;
    let (body, tag) = ciphertext.split_at(body_len);
    let (cipher, okm) = aead(mk);
    let mut buf = Zeroizing::new(body.to_vec());
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(&okm[32..]),
            aad,
            &mut buf,
            Tag::from_slice(tag),
        )
        .map_err(|_| DmError::AuthenticationFailed)?;
    Ok(buf)
}

/// The associated data of one message, on the stack.
struct Aad {
    buf: [u8; AAD_MAX],
    len: usize,
}

impl Aad {
    fn new(ad: &[u8; AD_LEN], x3dh: Option<&[u8]>, header: &[u8; HEADER_LEN]) -> Self {
        let mut buf = [0u8; AAD_MAX];
        let mut len = 0;
        for part in [&ad[..], x3dh.unwrap_or(&[]), &header[..]] {
            if let Some(dst) = buf.get_mut(len..len + part.len()) {
                dst.copy_from_slice(part);
                len += part.len();
            }
        }
        Self { buf, len }
    }

    fn as_slice(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// Skipped message keys, bounded, evicted oldest first.
#[derive(Default, Clone)]
struct SkippedKeys {
    map: BTreeMap<(DhPublic, u32), Secret32>,
    order: VecDeque<(DhPublic, u32)>,
}

impl SkippedKeys {
    fn insert(&mut self, dh: DhPublic, n: u32, mk: Secret32) {
        if self.map.insert((dh, n), mk).is_none() {
            self.order.push_back((dh, n));
        }
        while self.map.len() > MAX_SKIPPED_KEYS {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    fn remove(&mut self, key: &(DhPublic, u32)) {
        if self.map.remove(key).is_some()
            && let Some(pos) = self.order.iter().position(|k| k == key)
        {
            self.order.remove(pos);
        }
    }
}

/// Derives skipped keys `from..until` of a chain into `staged`; returns the chain key at `until`.
fn skip(
    ck: &Secret32,
    from: u32,
    until: u32,
    dh: DhPublic,
    staged: &mut Vec<(DhPublic, u32, Secret32)>,
) -> Result<Secret32, DmError> {
    let gap = u64::from(until).saturating_sub(u64::from(from));
    if gap > u64::from(MAX_SKIP) {
        return Err(DmError::TooManySkipped {
            max: MAX_SKIP,
            got: gap,
        });
    }
    let mut ck = ck.clone();
    for n in from..until {
        let (mk, next) = kdf_ck(&ck);
        staged.push((dh, n, mk));
        ck = next;
    }
    Ok(ck)
}

/// A DM session: the Double Ratchet state plus both identities.
///
/// Zeroized on drop (every secret is a [`Secret32`] or [`DhSecret`]); `Debug` shows only public
/// keys and counters.
pub struct Session {
    initiator: bool,
    local: PublicIdentity,
    remote: PublicIdentity,
    ad: [u8; AD_LEN],
    /// The X3DH header and its encoding, sent with every message until a reply decrypts.
    pending: Option<(InitialHeader, Vec<u8>)>,
    dhs: DhSecret,
    dhs_public: DhPublic,
    dhr: DhPublic,
    rk: Secret32,
    cks: Option<Secret32>,
    ckr: Option<Secret32>,
    ns: u32,
    nr: u32,
    pn: u32,
    old_remote: VecDeque<DhPublic>,
    skipped: SkippedKeys,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("initiator", &self.initiator)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("established", &self.pending.is_none())
            .field("ratchet_public", &self.dhs_public)
            .field("remote_ratchet", &self.dhr)
            .field("ns", &self.ns)
            .field("nr", &self.nr)
            .field("pn", &self.pn)
            .field("skipped_keys", &self.skipped.map.len())
            .finish()
    }
}

impl Session {
    /// Starts a session with the owner of `bundle` (after verifying it). The first messages
    /// [`Self::encrypt`] returns are [`DmMessage::Initial`].
    pub fn initiate<R: RngCore + CryptoRng>(
        rng: &mut R,
        me: &DmIdentity,
        bundle: &PrekeyBundle,
    ) -> Result<Self, DmError> {
        let (sk, header, ad) = x3dh::initiate(rng, me, bundle)?;
        let dhs = DhSecret::generate(rng);
        let (rk, cks) = kdf_rk(&sk, &dhs.diffie_hellman(&bundle.signed_prekey)?);
        let encoded = header.to_bytes();
        Ok(Self {
            initiator: true,
            local: me.public(),
            remote: bundle.identity,
            ad,
            pending: Some((header, encoded)),
            dhs_public: dhs.public(),
            dhs,
            dhr: bundle.signed_prekey,
            rk,
            cks: Some(cks),
            ckr: None,
            ns: 0,
            nr: 0,
            pn: 0,
            old_remote: VecDeque::new(),
            skipped: SkippedKeys::default(),
        })
    }

    /// Accepts an initial message: runs X3DH against `store`, decrypts, and only on success
    /// consumes the one-time prekey (or records the message against replays). The caller must
    /// check [`Self::remote_identity`] against the peer's device list.
    pub fn accept(
        store: &mut PrekeyStore,
        me: &DmIdentity,
        msg: &DmMessage,
    ) -> Result<(Self, Zeroizing<Vec<u8>>), DmError> {
        let DmMessage::Initial { x3dh, message } = msg else {
            return Err(DmError::NotInitial);
        };
        let (sk, spk, ad) = store.respond(me, x3dh)?;
        let mut session = Self {
            initiator: false,
            local: me.public(),
            remote: x3dh.initiator,
            ad,
            pending: None,
            dhs_public: spk.public(),
            dhs: spk,
            // Placeholder until the first ratchet key arrives: the initiator never uses its
            // X3DH ephemeral key as a ratchet key, and no receiving chain exists yet.
            dhr: x3dh.ephemeral,
            rk: sk,
            cks: None,
            ckr: None,
            ns: 0,
            nr: 0,
            pn: 0,
            old_remote: VecDeque::new(),
            skipped: SkippedKeys::default(),
        };
        let plaintext = session.decrypt_ratchet(message, Some(&x3dh.to_bytes()))?;
        store.consume(x3dh);
        Ok((session, plaintext))
    }

    /// The peer's identity as claimed in the X3DH exchange.
    pub fn remote_identity(&self) -> &PublicIdentity {
        &self.remote
    }

    /// Our identity.
    pub fn local_identity(&self) -> &PublicIdentity {
        &self.local
    }

    /// Whether the initiator has heard back (always true for the responder).
    pub fn is_established(&self) -> bool {
        self.pending.is_none()
    }

    /// Encrypts `plaintext` as the next message.
    pub fn encrypt<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        plaintext: &[u8],
    ) -> Result<DmMessage, DmError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(DmError::PlaintextTooLong {
                max: MAX_PLAINTEXT,
                got: plaintext.len(),
            });
        }
        if self.cks.is_none() {
            // The sending half of the DH ratchet step.
            let dhs = DhSecret::generate(rng);
            let (rk, cks) = kdf_rk(&self.rk, &ratchet_dh(&dhs, &self.dhr)?);
            self.dhs_public = dhs.public();
            self.dhs = dhs;
            self.rk = rk;
            self.cks = Some(cks);
        }
        let cks = self.cks.as_ref().ok_or(DmError::NoSendingChain)?;
        let n = self.ns;
        let ns = n.checked_add(1).ok_or(DmError::CounterExhausted)?;
        let (mk, next) = kdf_ck(cks);
        let header = RatchetHeader {
            dh: self.dhs_public,
            pn: self.pn,
            n,
        };
        let aad = Aad::new(
            &self.ad,
            self.pending.as_ref().map(|(_, b)| b.as_slice()),
            &header.to_array(),
        );
        let ciphertext = seal(&mk, aad.as_slice(), plaintext)?;
        self.cks = Some(next);
        self.ns = ns;
        let message = RatchetMessage { header, ciphertext };
        Ok(match &self.pending {
            Some((x3dh, _)) => DmMessage::Initial {
                x3dh: Box::new(x3dh.clone()),
                message,
            },
            None => DmMessage::Normal(message),
        })
    }

    /// Decrypts a message of this session. On any error the session is unchanged.
    pub fn decrypt(&mut self, msg: &DmMessage) -> Result<Zeroizing<Vec<u8>>, DmError> {
        let plaintext = match msg {
            DmMessage::Normal(m) => self.decrypt_ratchet(m, None)?,
            DmMessage::Initial { x3dh, message } => {
                self.decrypt_ratchet(message, Some(&x3dh.to_bytes()))?
            }
        };
        if self.initiator {
            self.pending = None;
        }
        Ok(plaintext)
    }

    fn decrypt_ratchet(
        &mut self,
        m: &RatchetMessage,
        x3dh: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, DmError> {
        let h = m.header;
        let aad = Aad::new(&self.ad, x3dh, &h.to_array());
        let key = (h.dh, h.n);
        if let Some(mk) = self.skipped.map.get(&key) {
            let plaintext = open(mk, aad.as_slice(), &m.ciphertext)?;
            self.skipped.remove(&key);
            return Ok(plaintext);
        }
        let nr = h.n.checked_add(1).ok_or(DmError::CounterExhausted)?;
        let mut staged = Vec::new();
        if h.dh == self.dhr {
            let ckr = self.ckr.as_ref().ok_or(DmError::AuthenticationFailed)?;
            if h.n < self.nr {
                return Err(DmError::DuplicateOrExpired { n: h.n });
            }
            let ck = skip(ckr, self.nr, h.n, h.dh, &mut staged)?;
            let (mk, next) = kdf_ck(&ck);
            let plaintext = open(&mk, aad.as_slice(), &m.ciphertext)?;
            self.ckr = Some(next);
            self.nr = nr;
            for (dh, n, mk) in staged {
                self.skipped.insert(dh, n, mk);
            }
            return Ok(plaintext);
        }
        if self.old_remote.contains(&h.dh) {
            return Err(DmError::DuplicateOrExpired { n: h.n });
        }
        // A new peer ratchet key: finish the current receiving chain up to PN, then step.
        if let Some(ckr) = &self.ckr {
            skip(ckr, self.nr, h.pn, self.dhr, &mut staged)?;
        }
        let (rk, ck) = kdf_rk(&self.rk, &ratchet_dh(&self.dhs, &h.dh)?);
        let ck = skip(&ck, 0, h.n, h.dh, &mut staged)?;
        let (mk, next) = kdf_ck(&ck);
        let plaintext = open(&mk, aad.as_slice(), &m.ciphertext)?;
        if self.ckr.is_some() {
            self.old_remote.push_back(self.dhr);
            while self.old_remote.len() > MAX_OLD_REMOTE_KEYS {
                self.old_remote.pop_front();
            }
        }
        self.pn = self.ns;
        self.ns = 0;
        self.dhr = h.dh;
        self.rk = rk;
        self.ckr = Some(next);
        self.cks = None;
        self.nr = nr;
        for (dh, n, mk) in staged {
            self.skipped.insert(dh, n, mk);
        }
        Ok(plaintext)
    }

    /// Serializes the whole session, secrets included, for sealed storage. Version 1.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let pending_len = self.pending.as_ref().map_or(0, |(_, b)| b.len());
        let len = 1
            + 1
            + 64
            + 64
            + 1
            + pending_len
            + 32 * 3
            + 33 * 2
            + 12
            + 2
            + 32 * self.old_remote.len()
            + 2
            + 68 * self.skipped.order.len();
        // Exact capacity: the buffer never reallocates, so no unzeroized copy is left behind.
        let mut w = Writer::with_capacity(len);
        w.u8(STATE_VERSION);
        w.bool(self.initiator);
        self.local.encode(&mut w);
        self.remote.encode(&mut w);
        match &self.pending {
            Some((_, b)) => {
                w.bool(true);
                w.put(b);
            }
            None => w.bool(false),
        }
        w.put(self.dhs.to_bytes().as_ref());
        self.dhr.encode(&mut w);
        w.put(self.rk.expose());
        for ck in [&self.cks, &self.ckr] {
            match ck {
                Some(k) => {
                    w.bool(true);
                    w.put(k.expose());
                }
                None => w.bool(false),
            }
        }
        w.u32(self.ns);
        w.u32(self.nr);
        w.u32(self.pn);
        w.u16(self.old_remote.len() as u16);
        for k in &self.old_remote {
            k.encode(&mut w);
        }
        w.u16(self.skipped.order.len() as u16);
        for key in &self.skipped.order {
            if let Some(mk) = self.skipped.map.get(key) {
                key.0.encode(&mut w);
                w.u32(key.1);
                w.put(mk.expose());
            }
        }
        Zeroizing::new(w.into_bytes())
    }

    /// Parses [`Self::to_bytes`] strictly: bounded lists, no duplicate skipped keys, consistent
    /// roles, no trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        fn secret(r: &mut Reader<'_>) -> Result<Secret32, DecodeError> {
            let mut b: [u8; 32] = r.array()?;
            let s = Secret32::from_bytes(b);
            b.zeroize();
            Ok(s)
        }
        fn opt_secret(r: &mut Reader<'_>) -> Result<Option<Secret32>, DecodeError> {
            if r.bool()? {
                Ok(Some(secret(r)?))
            } else {
                Ok(None)
            }
        }
        let mut r = Reader::new(bytes);
        r.version("DM session state", STATE_VERSION)?;
        let initiator = r.bool()?;
        let local = PublicIdentity::decode(&mut r)?;
        let remote = PublicIdentity::decode(&mut r)?;
        let pending = if r.bool()? {
            let h = InitialHeader::decode(&mut r)?;
            if !initiator || h.initiator != local {
                return Err(DecodeError::Invalid("pending X3DH header"));
            }
            let b = h.to_bytes();
            Some((h, b))
        } else {
            None
        };
        let dhs = DhSecret::from_bytes(*Zeroizing::new(r.array::<32>()?));
        let dhr = DhPublic::decode(&mut r)?;
        let rk = secret(&mut r)?;
        let cks = opt_secret(&mut r)?;
        let ckr = opt_secret(&mut r)?;
        let ns = r.u32()?;
        let nr = r.u32()?;
        let pn = r.u32()?;
        let n = r.count16("old remote ratchet keys", MAX_OLD_REMOTE_KEYS)?;
        let mut old_remote = VecDeque::with_capacity(n);
        for _ in 0..n {
            old_remote.push_back(DhPublic::decode(&mut r)?);
        }
        let n = r.count16("skipped message keys", MAX_SKIPPED_KEYS)?;
        let mut skipped = SkippedKeys::default();
        for _ in 0..n {
            let dh = DhPublic::decode(&mut r)?;
            let idx = r.u32()?;
            let mk = secret(&mut r)?;
            if skipped.map.contains_key(&(dh, idx)) {
                return Err(DecodeError::Invalid("duplicate skipped message key"));
            }
            skipped.insert(dh, idx, mk);
        }
        r.finish()?;
        let ad = if initiator {
            x3dh::associated_data(&local, &remote)
        } else {
            x3dh::associated_data(&remote, &local)
        };
        Ok(Self {
            initiator,
            local,
            remote,
            ad,
            pending,
            dhs_public: dhs.public(),
            dhs,
            dhr,
            rk,
            cks,
            ckr,
            ns,
            nr,
            pn,
            old_remote,
            skipped,
        })
    }
}

#[cfg(test)]
mod tests;
