//! The X3DH-shaped initial key agreement (Signal's X3DH, adapted to SecureComm's keys).
//!
//! # Keys
//!
//! Each device has a [`DmIdentity`]: its Ed25519 [`DeviceSigningKey`] and an X25519 identity
//! key (`IK`). Unlike Signal, the identity DH key is not derived from the signing key; the
//! signed prekey signature covers it, so a bundle binds the two together. Applications must
//! still check that the pair belongs to the peer (it must appear in the peer's signed device
//! list): X3DH authenticates the *DH* identity, and the signing key rides along in the
//! associated data.
//!
//! # Wire
//!
//! * [`PrekeyBundle`] (published by the responder, version 1): device signing key, identity DH
//!   key, signed prekey id and key, an Ed25519 signature by the device key under
//!   [`SIG_SIGNED_PREKEY`] over `IK || id || SPK`, and optionally one one-time prekey (id, key).
//! * [`InitialHeader`] (sent by the initiator in front of its first ratchet messages, version 1):
//!   the initiator's signing key and identity DH key, its ephemeral key `EK`, the signed prekey
//!   id and the one-time prekey id it used.
//!
//! # Computation
//!
//! `DH1 = DH(IK_A, SPK_B)`, `DH2 = DH(EK_A, IK_B)`, `DH3 = DH(EK_A, SPK_B)`, and with a
//! one-time prekey `DH4 = DH(EK_A, OPK_B)`. `SK = HKDF-SHA256(salt = 32 zero bytes,
//! ikm = 32 × 0xFF || DH1 || DH2 || DH3 [|| DH4], info = "SecureComm/dm/x3dh v1")`.
//! The associated data is `A.signing || A.dh || B.signing || B.dh` (initiator first), so both
//! complete identities are bound into every message of the session.
//!
//! # What the responder stores
//!
//! [`PrekeyStore`]: at most [`MAX_SIGNED_PREKEYS`] signed prekey secrets (newest last, older
//! ones kept so initial messages in flight across a rotation still work), at most
//! [`MAX_ONE_TIME_PREKEYS`] one-time prekey secrets, and a bounded list of initial messages
//! already accepted without a one-time prekey. A one-time prekey secret is deleted as soon as
//! an initial message using it has *decrypted successfully* (not before, so a forged message
//! cannot burn one).
//!
//! # Caveat: prekey reuse
//!
//! Without a one-time prekey, everything the responder needs to accept an initial message is
//! the long-lived signed prekey. Two consequences:
//!
//! 1. **Replay.** Anyone who recorded an initial message can send it again and the responder
//!    would derive the same session and decrypt the same first message again. The responder
//!    therefore remembers `(signed prekey id, EK)` of every initial message it accepted without
//!    a one-time prekey and rejects a repeat ([`super::DmError::ReplayedInitial`]). The list is
//!    bounded by [`MAX_SEEN_INITIALS`] (oldest forgotten first) and entries are dropped together
//!    with their signed prekey, so the protection is complete only if the signed prekey rotates
//!    before that many sessions were started with it. With a one-time prekey, replay fails
//!    because the secret is gone.
//! 2. **Forward secrecy of the first messages.** Until the responder deletes the signed prekey
//!    secret (after rotation and the grace period of [`MAX_SIGNED_PREKEYS`] - 1 rotations), a
//!    later compromise of the responder's identity key and that signed prekey reveals `SK` of
//!    every session started without a one-time prekey, hence the initiator's messages sent
//!    before the responder's first reply (the first DH ratchet step). Messages after the first
//!    round trip are protected by the ratchet. Rotate signed prekeys regularly (for example
//!    weekly) and publish one-time prekeys whenever possible.

use std::collections::{BTreeMap, VecDeque};

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::DmError;
use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::keys::{DevicePublicKey, DeviceSigningKey, DhPublic, DhSecret, SigLabel, Signature};
use crate::secret::{Secret32, hkdf_sha256};

/// Signature label for signed prekeys.
pub const SIG_SIGNED_PREKEY: SigLabel = SigLabel("SecureComm/dm/signed-prekey v1");
/// HKDF info label for the X3DH shared secret.
const X3DH_INFO: &[u8] = b"SecureComm/dm/x3dh v1";
/// Signed prekeys kept by the responder (the current one plus older ones for a grace period).
pub const MAX_SIGNED_PREKEYS: usize = 3;
/// One-time prekeys the responder keeps at most.
pub const MAX_ONE_TIME_PREKEYS: usize = 200;
/// Initial messages without a one-time prekey remembered for replay detection.
pub const MAX_SEEN_INITIALS: usize = 4096;
/// Length of the session associated data: two identities of 64 bytes each.
pub const AD_LEN: usize = 128;

const BUNDLE_VERSION: u8 = 1;
const HEADER_VERSION: u8 = 1;
const STORE_VERSION: u8 = 1;

/// A device's long-term DM identity: its Ed25519 signing key and X25519 identity key.
///
/// Zeroized on drop (both parts are); `Debug` shows only public keys.
#[derive(Clone)]
pub struct DmIdentity {
    signing: DeviceSigningKey,
    dh: DhSecret,
}

impl DmIdentity {
    /// Combines a device's signing key and identity DH key.
    pub fn new(signing: DeviceSigningKey, dh: DhSecret) -> Self {
        Self { signing, dh }
    }

    /// A fresh identity from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self::new(DeviceSigningKey::generate(rng), DhSecret::generate(rng))
    }

    /// The public half.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            signing: self.signing.public(),
            dh: self.dh.public(),
        }
    }
}

impl std::fmt::Debug for DmIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmIdentity")
            .field("public", &self.public())
            .finish()
    }
}

/// A device's public DM identity: signing key and identity DH key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicIdentity {
    /// The device's Ed25519 key.
    pub signing: DevicePublicKey,
    /// The device's X25519 identity key.
    pub dh: DhPublic,
}

impl Encode for PublicIdentity {
    fn encode(&self, w: &mut Writer) {
        self.signing.encode(w);
        self.dh.encode(w);
    }
}

impl Decode for PublicIdentity {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            signing: DevicePublicKey::decode(r)?,
            dh: DhPublic::decode(r)?,
        })
    }
}

/// The session associated data: initiator identity, then responder identity.
pub(crate) fn associated_data(initiator: &PublicIdentity, responder: &PublicIdentity) -> [u8; 128] {
    let mut ad = [0u8; AD_LEN];
    for (dst, src) in ad.iter_mut().zip(
        initiator
            .signing
            .as_bytes()
            .iter()
            .chain(initiator.dh.as_bytes())
            .chain(responder.signing.as_bytes())
            .chain(responder.dh.as_bytes()),
    ) {
        *dst = *src;
    }
    ad
}

/// What a responder publishes so others can start a DM session with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrekeyBundle {
    /// The responder's identity.
    pub identity: PublicIdentity,
    /// Id of the signed prekey.
    pub signed_prekey_id: u32,
    /// The signed prekey.
    pub signed_prekey: DhPublic,
    /// Signature by `identity.signing` under [`SIG_SIGNED_PREKEY`].
    pub signature: Signature,
    /// An optional one-time prekey (id, key).
    pub one_time_prekey: Option<(u32, DhPublic)>,
}

fn signed_prekey_message(identity_dh: &DhPublic, id: u32, spk: &DhPublic) -> [u8; 68] {
    let mut m = [0u8; 68];
    for (dst, src) in m.iter_mut().zip(
        identity_dh
            .as_bytes()
            .iter()
            .chain(&id.to_be_bytes())
            .chain(spk.as_bytes()),
    ) {
        *dst = *src;
    }
    m
}

impl PrekeyBundle {
    /// Checks the signed prekey signature.
    pub fn verify(&self) -> Result<(), DmError> {
        let msg = signed_prekey_message(
            &self.identity.dh,
            self.signed_prekey_id,
            &self.signed_prekey,
        );
        self.identity
            .signing
            .verify(SIG_SIGNED_PREKEY, &msg, &self.signature)
            .map_err(DmError::BadBundleSignature)
    }
}

impl Encode for PrekeyBundle {
    fn encode(&self, w: &mut Writer) {
        w.u8(BUNDLE_VERSION);
        self.identity.encode(w);
        w.u32(self.signed_prekey_id);
        self.signed_prekey.encode(w);
        self.signature.encode(w);
        match &self.one_time_prekey {
            None => w.bool(false),
            Some((id, key)) => {
                w.bool(true);
                w.u32(*id);
                key.encode(w);
            }
        }
    }
}

impl Decode for PrekeyBundle {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("prekey bundle", BUNDLE_VERSION)?;
        let identity = PublicIdentity::decode(r)?;
        let signed_prekey_id = r.u32()?;
        let signed_prekey = DhPublic::decode(r)?;
        let signature = Signature::decode(r)?;
        let one_time_prekey = if r.bool()? {
            Some((r.u32()?, DhPublic::decode(r)?))
        } else {
            None
        };
        Ok(Self {
            identity,
            signed_prekey_id,
            signed_prekey,
            signature,
            one_time_prekey,
        })
    }
}

/// The X3DH part of an initial message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialHeader {
    /// The initiator's identity.
    pub initiator: PublicIdentity,
    /// The initiator's ephemeral key `EK`.
    pub ephemeral: DhPublic,
    /// Which of the responder's signed prekeys was used.
    pub signed_prekey_id: u32,
    /// Which one-time prekey was used, if any.
    pub one_time_prekey_id: Option<u32>,
}

impl Encode for InitialHeader {
    fn encode(&self, w: &mut Writer) {
        w.u8(HEADER_VERSION);
        self.initiator.encode(w);
        self.ephemeral.encode(w);
        w.u32(self.signed_prekey_id);
        match self.one_time_prekey_id {
            None => w.bool(false),
            Some(id) => {
                w.bool(true);
                w.u32(id);
            }
        }
    }
}

impl Decode for InitialHeader {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("X3DH initial header", HEADER_VERSION)?;
        let initiator = PublicIdentity::decode(r)?;
        let ephemeral = DhPublic::decode(r)?;
        let signed_prekey_id = r.u32()?;
        let one_time_prekey_id = if r.bool()? { Some(r.u32()?) } else { None };
        Ok(Self {
            initiator,
            ephemeral,
            signed_prekey_id,
            one_time_prekey_id,
        })
    }
}

fn derive_sk(dhs: &[&Secret32]) -> Secret32 {
    let mut ikm = Zeroizing::new([0u8; 32 * 5]);
    let mut len = 32;
    if let Some(f) = ikm.get_mut(..32) {
        f.fill(0xFF);
    }
    for dh in dhs {
        if let Some(dst) = ikm.get_mut(len..len + 32) {
            dst.copy_from_slice(dh.expose());
            len += 32;
        }
    }
    let ikm = ikm.get(..len).unwrap_or(&[]);
    Secret32::from_bytes(hkdf_sha256::<32>(Some(&[0u8; 32]), ikm, X3DH_INFO))
}

/// Initiator side: verifies `bundle`, returns `SK`, the header to send, and the associated data.
pub(crate) fn initiate<R: RngCore + CryptoRng>(
    rng: &mut R,
    me: &DmIdentity,
    bundle: &PrekeyBundle,
) -> Result<(Secret32, InitialHeader, [u8; AD_LEN]), DmError> {
    bundle.verify()?;
    let ek = DhSecret::generate(rng);
    let dh1 = me.dh.diffie_hellman(&bundle.signed_prekey)?;
    let dh2 = ek.diffie_hellman(&bundle.identity.dh)?;
    let dh3 = ek.diffie_hellman(&bundle.signed_prekey)?;
    let sk = match &bundle.one_time_prekey {
        Some((_, opk)) => {
            let dh4 = ek.diffie_hellman(opk)?;
            derive_sk(&[&dh1, &dh2, &dh3, &dh4])
        }
        None => derive_sk(&[&dh1, &dh2, &dh3]),
    };
    let header = InitialHeader {
        initiator: me.public(),
        ephemeral: ek.public(),
        signed_prekey_id: bundle.signed_prekey_id,
        one_time_prekey_id: bundle.one_time_prekey.map(|(id, _)| id),
    };
    let ad = associated_data(&me.public(), &bundle.identity);
    Ok((sk, header, ad))
}

struct SignedPrekey {
    id: u32,
    secret: DhSecret,
    signature: Signature,
}

/// The responder's prekey secrets. Bounded in every dimension; see the module docs.
///
/// Zeroized on drop (every secret is a [`DhSecret`]); `Debug` shows only ids and counts.
pub struct PrekeyStore {
    next_id: u32,
    signed: Vec<SignedPrekey>,
    one_time: BTreeMap<u32, DhSecret>,
    seen: VecDeque<(u32, DhPublic)>,
}

impl std::fmt::Debug for PrekeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrekeyStore")
            .field(
                "signed_prekey_ids",
                &self.signed.iter().map(|s| s.id).collect::<Vec<_>>(),
            )
            .field("one_time_prekeys", &self.one_time.len())
            .field("seen_initials", &self.seen.len())
            .finish()
    }
}

impl Default for PrekeyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl PrekeyStore {
    /// An empty store. Call [`Self::rotate_signed_prekey`] before publishing a bundle.
    pub fn new() -> Self {
        Self {
            next_id: 1,
            signed: Vec::new(),
            one_time: BTreeMap::new(),
            seen: VecDeque::new(),
        }
    }

    fn fresh_id(&mut self) -> Result<u32, DmError> {
        let id = self.next_id;
        self.next_id = id.checked_add(1).ok_or(DmError::PrekeyIdsExhausted)?;
        Ok(id)
    }

    /// Makes a new signed prekey current, signed by `me`; returns its id. The oldest signed
    /// prekey beyond [`MAX_SIGNED_PREKEYS`] is deleted together with its replay records.
    pub fn rotate_signed_prekey<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        me: &DmIdentity,
    ) -> Result<u32, DmError> {
        let id = self.fresh_id()?;
        let secret = DhSecret::generate(rng);
        let msg = signed_prekey_message(&me.dh.public(), id, &secret.public());
        let signature = me.signing.sign(SIG_SIGNED_PREKEY, &msg);
        self.signed.push(SignedPrekey {
            id,
            secret,
            signature,
        });
        while self.signed.len() > MAX_SIGNED_PREKEYS {
            let old = self.signed.remove(0);
            self.seen.retain(|(spk, _)| *spk != old.id);
        }
        Ok(id)
    }

    /// Generates `n` one-time prekeys and returns their ids and public keys for publishing.
    pub fn generate_one_time_prekeys<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        n: usize,
    ) -> Result<Vec<(u32, DhPublic)>, DmError> {
        if self.one_time.len().saturating_add(n) > MAX_ONE_TIME_PREKEYS {
            return Err(DmError::TooManyOneTimePrekeys {
                max: MAX_ONE_TIME_PREKEYS,
                got: self.one_time.len().saturating_add(n),
            });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.fresh_id()?;
            let secret = DhSecret::generate(rng);
            out.push((id, secret.public()));
            self.one_time.insert(id, secret);
        }
        Ok(out)
    }

    /// How many one-time prekeys are left.
    pub fn one_time_count(&self) -> usize {
        self.one_time.len()
    }

    /// A bundle for the current signed prekey, with the one-time prekey `one_time_id` if given.
    pub fn bundle(
        &self,
        me: &DmIdentity,
        one_time_id: Option<u32>,
    ) -> Result<PrekeyBundle, DmError> {
        let current = self.signed.last().ok_or(DmError::NoSignedPrekey)?;
        let one_time_prekey = match one_time_id {
            None => None,
            Some(id) => Some((
                id,
                self.one_time
                    .get(&id)
                    .ok_or(DmError::UnknownOneTimePrekey(id))?
                    .public(),
            )),
        };
        Ok(PrekeyBundle {
            identity: me.public(),
            signed_prekey_id: current.id,
            signed_prekey: current.secret.public(),
            signature: current.signature,
            one_time_prekey,
        })
    }

    /// Responder side of X3DH, without changing the store: returns `SK`, the signed prekey
    /// secret (the responder's first ratchet key) and the associated data.
    pub(crate) fn respond(
        &self,
        me: &DmIdentity,
        header: &InitialHeader,
    ) -> Result<(Secret32, DhSecret, [u8; AD_LEN]), DmError> {
        let spk = self
            .signed
            .iter()
            .find(|s| s.id == header.signed_prekey_id)
            .ok_or(DmError::UnknownSignedPrekey(header.signed_prekey_id))?;
        if header.one_time_prekey_id.is_none()
            && self
                .seen
                .contains(&(header.signed_prekey_id, header.ephemeral))
        {
            return Err(DmError::ReplayedInitial);
        }
        let dh1 = spk.secret.diffie_hellman(&header.initiator.dh)?;
        let dh2 = me.dh.diffie_hellman(&header.ephemeral)?;
        let dh3 = spk.secret.diffie_hellman(&header.ephemeral)?;
        let sk = match header.one_time_prekey_id {
            Some(id) => {
                let opk = self
                    .one_time
                    .get(&id)
                    .ok_or(DmError::UnknownOneTimePrekey(id))?;
                let dh4 = opk.diffie_hellman(&header.ephemeral)?;
                derive_sk(&[&dh1, &dh2, &dh3, &dh4])
            }
            None => derive_sk(&[&dh1, &dh2, &dh3]),
        };
        let ad = associated_data(&header.initiator, &me.public());
        Ok((sk, spk.secret.clone(), ad))
    }

    /// Records that an initial message decrypted: deletes its one-time prekey, or remembers it
    /// for replay detection if it used none.
    pub(crate) fn consume(&mut self, header: &InitialHeader) {
        match header.one_time_prekey_id {
            Some(id) => {
                self.one_time.remove(&id);
            }
            None => {
                self.seen
                    .push_back((header.signed_prekey_id, header.ephemeral));
                while self.seen.len() > MAX_SEEN_INITIALS {
                    self.seen.pop_front();
                }
            }
        }
    }

    /// Serializes the store (secrets included) for sealed storage. Version 1.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let len = 1
            + 4
            + 2
            + self.signed.len() * (4 + 32 + 64)
            + 2
            + self.one_time.len() * (4 + 32)
            + 2
            + self.seen.len() * (4 + 32);
        // Exact capacity: the buffer never reallocates, so no unzeroized copy is left behind.
        let mut w = Writer::with_capacity(len);
        w.u8(STORE_VERSION);
        w.u32(self.next_id);
        w.u16(self.signed.len() as u16);
        for s in &self.signed {
            w.u32(s.id);
            w.put(s.secret.to_bytes().as_ref());
            s.signature.encode(&mut w);
        }
        w.u16(self.one_time.len() as u16);
        for (id, s) in &self.one_time {
            w.u32(*id);
            w.put(s.to_bytes().as_ref());
        }
        w.u16(self.seen.len() as u16);
        for (id, ek) in &self.seen {
            w.u32(*id);
            ek.encode(&mut w);
        }
        Zeroizing::new(w.into_bytes())
    }

    /// Parses [`Self::to_bytes`] strictly (bounds, unique ids, ids below the counter).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("prekey store", STORE_VERSION)?;
        let next_id = r.u32()?;
        let n = r.count16("signed prekeys", MAX_SIGNED_PREKEYS)?;
        let mut signed: Vec<SignedPrekey> = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.u32()?;
            let secret = DhSecret::from_bytes(r.array()?);
            let signature = Signature::decode(&mut r)?;
            if id >= next_id || signed.iter().any(|s| s.id >= id) {
                return Err(DecodeError::Invalid("signed prekey id order"));
            }
            signed.push(SignedPrekey {
                id,
                secret,
                signature,
            });
        }
        let n = r.count16("one-time prekeys", MAX_ONE_TIME_PREKEYS)?;
        let mut one_time = BTreeMap::new();
        for _ in 0..n {
            let id = r.u32()?;
            let secret = DhSecret::from_bytes(r.array()?);
            if id >= next_id || one_time.keys().next_back().is_some_and(|last| *last >= id) {
                return Err(DecodeError::Invalid("one-time prekey id order"));
            }
            one_time.insert(id, secret);
        }
        let n = r.count16("seen initial messages", MAX_SEEN_INITIALS)?;
        let mut seen = VecDeque::with_capacity(n);
        for _ in 0..n {
            let id = r.u32()?;
            let ek = DhPublic::decode(&mut r)?;
            if !signed.iter().any(|s| s.id == id) {
                return Err(DecodeError::Invalid("seen initial message prekey id"));
            }
            seen.push_back((id, ek));
        }
        r.finish()?;
        Ok(Self {
            next_id,
            signed,
            one_time,
            seen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn setup() -> (DmIdentity, PrekeyStore, DmIdentity) {
        let mut rng = rand::thread_rng();
        let bob = DmIdentity::generate(&mut rng);
        let mut store = PrekeyStore::new();
        store.rotate_signed_prekey(&mut rng, &bob).unwrap();
        store.generate_one_time_prekeys(&mut rng, 3).unwrap();
        (bob, store, DmIdentity::generate(&mut rng))
    }

    #[test]
    fn both_sides_agree_with_and_without_one_time_prekey() {
        let mut rng = rand::thread_rng();
        let (bob, store, alice) = setup();
        for otk in [None, Some(2)] {
            let bundle = store.bundle(&bob, otk).unwrap();
            let (sk_a, header, ad_a) = initiate(&mut rng, &alice, &bundle).unwrap();
            let (sk_b, spk, ad_b) = store.respond(&bob, &header).unwrap();
            assert_eq!(sk_a.expose(), sk_b.expose());
            assert_eq!(ad_a, ad_b);
            assert_eq!(spk.public(), bundle.signed_prekey);
            assert_eq!(header.one_time_prekey_id, otk);
            // A different initiator identity gives a different secret.
            let mallory = DmIdentity::generate(&mut rng);
            let mut forged = header.clone();
            forged.initiator = mallory.public();
            let (sk_m, _, _) = store.respond(&bob, &forged).unwrap();
            assert_ne!(sk_m.expose(), sk_a.expose());
        }
    }

    #[test]
    fn one_time_prekey_changes_the_secret() {
        let mut rng = rand::thread_rng();
        let (bob, store, alice) = setup();
        let bundle = store.bundle(&bob, Some(2)).unwrap();
        let (sk, header, _) = initiate(&mut rng, &alice, &bundle).unwrap();
        let mut without = header.clone();
        without.one_time_prekey_id = None;
        let (sk_without, _, _) = store.respond(&bob, &without).unwrap();
        assert_ne!(sk.expose(), sk_without.expose());
    }

    #[test]
    fn forged_bundle_signature_is_rejected() {
        let mut rng = rand::thread_rng();
        let (bob, store, alice) = setup();
        let good = store.bundle(&bob, None).unwrap();
        good.verify().unwrap();
        // Flip every bit of the signature.
        for bit in 0..512 {
            let mut b = good.clone();
            b.signature.0[bit / 8] ^= 1 << (bit % 8);
            assert!(matches!(
                initiate(&mut rng, &alice, &b),
                Err(DmError::BadBundleSignature(_))
            ));
        }
        // Substituted signed prekey, identity DH key, id, or signing key.
        let mut b = good.clone();
        b.signed_prekey = DhSecret::generate(&mut rng).public();
        assert!(b.verify().is_err());
        let mut b = good.clone();
        b.identity.dh = DhSecret::generate(&mut rng).public();
        assert!(b.verify().is_err());
        let mut b = good.clone();
        b.signed_prekey_id ^= 1;
        assert!(b.verify().is_err());
        let mut b = good.clone();
        b.identity.signing = DeviceSigningKey::generate(&mut rng).public();
        assert!(b.verify().is_err());
        // A signature with the right key under another label does not verify.
        let mut b = good;
        let msg = signed_prekey_message(&b.identity.dh, b.signed_prekey_id, &b.signed_prekey);
        b.signature = bob.signing.sign(SigLabel("SecureComm/other v1"), &msg);
        assert!(b.verify().is_err());
    }

    #[test]
    fn store_bounds_and_rotation() {
        let mut rng = rand::thread_rng();
        let (bob, mut store, _) = setup();
        assert!(
            store
                .generate_one_time_prekeys(&mut rng, MAX_ONE_TIME_PREKEYS)
                .is_err()
        );
        let first = store.bundle(&bob, None).unwrap().signed_prekey_id;
        for _ in 0..MAX_SIGNED_PREKEYS {
            store.rotate_signed_prekey(&mut rng, &bob).unwrap();
        }
        assert_eq!(store.signed.len(), MAX_SIGNED_PREKEYS);
        assert!(store.signed.iter().all(|s| s.id != first));
    }

    #[test]
    fn store_round_trips_and_decoding_is_strict() {
        let mut rng = rand::thread_rng();
        let (bob, mut store, alice) = setup();
        let bundle = store.bundle(&bob, None).unwrap();
        let (_, header, _) = initiate(&mut rng, &alice, &bundle).unwrap();
        store.consume(&header);
        let bytes = store.to_bytes();
        let back = PrekeyStore::from_bytes(&bytes).unwrap();
        assert_eq!(*back.to_bytes(), *bytes);
        assert!(matches!(
            back.respond(&bob, &header),
            Err(DmError::ReplayedInitial)
        ));
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(PrekeyStore::from_bytes(&long).is_err());
        for cut in 0..bytes.len() {
            assert!(PrekeyStore::from_bytes(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let (bob, store, _) = setup();
        let seed = bob.signing.seed();
        let dh = bob.dh.to_bytes();
        for d in [format!("{bob:?}"), format!("{store:?}")] {
            assert!(!d.contains(&hex::encode(&seed[..4])));
            assert!(!d.contains(&hex::encode(&dh[..4])));
            assert!(!d.contains(&format!("{:?}", &seed[..4])));
        }
    }

    proptest! {
        #[test]
        fn bundle_and_header_round_trip(seed: [u8; 32], id: u32, otk: Option<(u32, [u8; 32])>, eph: [u8; 32]) {
            let bob = DmIdentity::new(DeviceSigningKey::from_seed(&seed), DhSecret::from_bytes(seed));
            let spk = DhPublic(eph);
            let bundle = PrekeyBundle {
                identity: bob.public(),
                signed_prekey_id: id,
                signed_prekey: spk,
                signature: bob.signing.sign(SIG_SIGNED_PREKEY, &signed_prekey_message(&bob.dh.public(), id, &spk)),
                one_time_prekey: otk.map(|(i, k)| (i, DhPublic(k))),
            };
            let bytes = bundle.to_bytes();
            let back = PrekeyBundle::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &bundle);
            back.verify().unwrap();
            let mut long = bytes.clone();
            long.push(0);
            prop_assert!(PrekeyBundle::from_bytes(&long).is_err());
            prop_assert!(PrekeyBundle::from_bytes(&bytes[..bytes.len() - 1]).is_err());

            let header = InitialHeader {
                initiator: bob.public(),
                ephemeral: spk,
                signed_prekey_id: id,
                one_time_prekey_id: otk.map(|(i, _)| i),
            };
            let bytes = header.to_bytes();
            prop_assert_eq!(InitialHeader::from_bytes(&bytes).unwrap(), header);
            let mut v = bytes.clone();
            v[0] = 2;
            prop_assert!(InitialHeader::from_bytes(&v).is_err());
        }
    }
}
