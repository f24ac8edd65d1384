//! 2SM: two-party secure messaging with a fresh key per message (forward secrecy) and
//! receiver-announced keys (post-compromise security), after the 2SM construction of the DCGKA
//! paper.
//!
//! Each direction A→B is independent. A encrypts to one X25519 public key of B's at a time:
//! * at first, B's signed **prekey** (from B's [`super::wire::MemberKey`]), through the Noise `X`
//!   one-shot encryption of [`crate::oneshot`] (so prekey rotation and expiry are the one-shot
//!   module's; the sender's static key there is a throw-away key, as sender authentication comes
//!   from the Ed25519 signature on every direct message);
//! * afterwards, the **chain key** A generated itself and sent the secret half of inside its
//!   previous message to B (so B can delete the key it just used: forward secrecy without
//!   waiting for B to reply);
//! * or, once A has processed a message from B, the **announced key** B generated for A's next
//!   message (fresh randomness from B: after B's state leaks, B's next message to A heals the
//!   A→B direction).
//!
//! ```text
//! ciphertext = 0x01 || key_ref(tag u8: 1 prekey | 2 chain | 3 announced, index u32) || body
//! body       = one-shot message(inner) || ChaCha20-Poly1305(bulk key, message)     (first)
//!            | ephemeral(32) || ChaCha20-Poly1305(inner)                          (later)
//!              bound to (the first 6 bytes || caller context): Noise prologue resp. AEAD data
//! inner      = next_chain_secret(32) || next_chain_index(u32) || announce_index(u32)
//!              || announce_public(32) || highest_announce_seen(u32) || (bulk key(32) | message)
//! ```
//! The public-key step after the first message ([`pke_seal`]/[`pke_open`]) is Noise `N`-shaped: an ephemeral X25519
//! key, DH with the recipient key, HKDF-SHA256 (`"SecureComm/dcgka/2sm-pke v1"`) to a one-time
//! AEAD key. Messages in one direction must be opened in the order sent (DCGKA's causal delivery
//! of the accompanying control messages guarantees this).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand_core::{CryptoRng, RngCore};
use std::collections::VecDeque;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::keys::{DhPublic, DhSecret};
use crate::oneshot::{self, OneShotError, OneShotMessage, PrekeyStore, VerifiedPrekey};
use crate::secret::hkdf_sha256;

const VERSION: u8 = 1;
const PKE_LABEL: &[u8] = b"SecureComm/dcgka/2sm-pke v1";
/// Most announced receiving keys kept per peer.
pub const MAX_ANNOUNCED: usize = 16;
const INNER_FIXED: usize = 32 + 4 + 4 + 32 + 4;

/// Why a 2SM message could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TwoPartyError {
    /// The ciphertext is malformed.
    #[error("malformed 2SM ciphertext: {0}")]
    Decode(#[from] DecodeError),
    /// The key it names is not (or no longer) held: replayed, reordered or too old.
    #[error("2SM key {0} not held (replayed, reordered or expired message)")]
    UnknownKey(&'static str),
    /// Authenticated decryption failed.
    #[error("2SM ciphertext does not decrypt (tampered or wrong key)")]
    Decrypt,
    /// The peer's key is degenerate.
    #[error("2SM peer key has small order")]
    BadKey,
    /// The first message (sealed to the prekey) failed in the one-shot layer.
    #[error("2SM first message: {0}")]
    OneShot(#[from] OneShotError),
}

/// Which receiving key a message was encrypted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyRef {
    Prekey,
    Chain(u32),
    Announced(u32),
}

impl KeyRef {
    fn encode(self, w: &mut Writer) {
        match self {
            Self::Prekey => {
                w.u8(1);
                w.u32(0);
            }
            Self::Chain(i) => {
                w.u8(2);
                w.u32(i);
            }
            Self::Announced(i) => {
                w.u8(3);
                w.u32(i);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let tag = r.u8()?;
        let i = r.u32()?;
        match tag {
            1 if i == 0 => Ok(Self::Prekey),
            2 => Ok(Self::Chain(i)),
            3 => Ok(Self::Announced(i)),
            got => Err(DecodeError::UnknownTag {
                what: "2SM key reference",
                got: u64::from(got),
            }),
        }
    }
}

fn pke_key(dh: &[u8; 32], eph: &DhPublic, to: &DhPublic) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new([0u8; 96]);
    ikm[..32].copy_from_slice(dh);
    ikm[32..64].copy_from_slice(eph.as_bytes());
    ikm[64..].copy_from_slice(to.as_bytes());
    Zeroizing::new(hkdf_sha256::<32>(None, ikm.as_ref(), PKE_LABEL))
}

/// ChaCha20-Poly1305 with a one-time key and a zero nonce.
fn aead(key: &[u8; 32], ad: &[u8], data: &[u8], seal: bool) -> Result<Vec<u8>, TwoPartyError> {
    let c = ChaCha20Poly1305::new(Key::from_slice(key));
    let n = Nonce::from_slice(&[0; 12]);
    let p = Payload { msg: data, aad: ad };
    if seal {
        c.encrypt(n, p)
    } else {
        c.decrypt(n, p)
    }
    .map_err(|_| TwoPartyError::Decrypt)
}

/// Public-key encryption to `to`: `ephemeral(32) || AEAD(plaintext)`.
pub fn pke_seal<R: RngCore + CryptoRng>(
    rng: &mut R,
    to: &DhPublic,
    ad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, TwoPartyError> {
    let eph = DhSecret::generate(rng);
    let eph_pub = eph.public();
    let dh = eph.diffie_hellman(to).map_err(|_| TwoPartyError::BadKey)?;
    let key = pke_key(dh.expose(), &eph_pub, to);
    let aead = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()));
    let ct = aead
        .encrypt(
            Nonce::from_slice(&[0; 12]),
            Payload {
                msg: plaintext,
                aad: ad,
            },
        )
        .map_err(|_| TwoPartyError::Decrypt)?;
    let mut out = Vec::with_capacity(32 + ct.len());
    out.extend_from_slice(eph_pub.as_bytes());
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens [`pke_seal`] output with the recipient's secret key.
pub fn pke_open(
    key: &DhSecret,
    ad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, TwoPartyError> {
    let mut r = Reader::new(ciphertext);
    let eph = DhPublic(r.array()?);
    let ct = r.rest();
    let dh = key
        .diffie_hellman(&eph)
        .map_err(|_| TwoPartyError::BadKey)?;
    let k = pke_key(dh.expose(), &eph, &key.public());
    let aead = ChaCha20Poly1305::new(Key::from_slice(k.as_ref()));
    aead.decrypt(Nonce::from_slice(&[0; 12]), Payload { msg: ct, aad: ad })
        .map(Zeroizing::new)
        .map_err(|_| TwoPartyError::Decrypt)
}

/// One member's 2SM state with one peer. Secrets zeroized on drop; `Debug` shows counters only.
#[derive(Clone, Default)]
pub struct TwoParty {
    /// Where my next message to the peer goes (`None`: the peer's prekey).
    send_to: Option<(KeyRef, DhPublic)>,
    /// Last chain index I assigned.
    send_chain: u32,
    /// Highest announcement index of the peer's I have processed.
    seen_announce: u32,
    /// The chain key the peer gave me for its next message.
    recv_chain: Option<(u32, DhSecret)>,
    /// Receiving keys I announced to the peer, oldest first.
    announced: VecDeque<(u32, DhSecret)>,
    /// Last announcement index I assigned.
    announce_ctr: u32,
}

impl std::fmt::Debug for TwoParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoParty")
            .field("send_chain", &self.send_chain)
            .field("seen_announce", &self.seen_announce)
            .field("announced", &self.announced.len())
            .finish()
    }
}

impl TwoParty {
    /// Encrypts `msg` for the peer whose prekey is `peer_prekey`.
    pub fn send<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        peer_prekey: Option<&VerifiedPrekey>,
        context: &[u8],
        msg: &[u8],
    ) -> Result<Vec<u8>, TwoPartyError> {
        let (target, to) = match (self.send_to, peer_prekey) {
            (Some(t), _) => t,
            (None, Some(p)) => (KeyRef::Prekey, p.public()),
            (None, None) => return Err(TwoPartyError::UnknownKey("peer prekey")),
        };
        let next_chain = DhSecret::generate(rng);
        let chain_idx = self.send_chain.wrapping_add(1);
        // A fresh receiving key for the peer's next message, unless MAX_ANNOUNCED are already
        // outstanding (the peer has not replied for a while): then the newest one is announced
        // again, so no key the peer may still use is ever dropped.
        let (announce_idx, announce_pub, fresh) = match self.announced.back() {
            Some((i, k)) if self.announced.len() >= MAX_ANNOUNCED => (*i, k.public(), None),
            _ => {
                let k = DhSecret::generate(rng);
                (self.announce_ctr.wrapping_add(1), k.public(), Some(k))
            }
        };

        let mut inner = Zeroizing::new(Vec::with_capacity(INNER_FIXED + msg.len()));
        inner.extend_from_slice(next_chain.to_bytes().as_ref());
        inner.extend_from_slice(&chain_idx.to_be_bytes());
        inner.extend_from_slice(&announce_idx.to_be_bytes());
        inner.extend_from_slice(announce_pub.as_bytes());
        inner.extend_from_slice(&self.seen_announce.to_be_bytes());
        // A first message may exceed the one-shot plaintext limit (a welcome carries the whole
        // membership history), so the one-shot message carries a fresh bulk key instead and
        // the message follows under that key.
        let bulk = (self.send_to.is_none()).then(|| crate::secret::Secret32::random(rng));
        match &bulk {
            Some(k) => inner.extend_from_slice(k.expose()),
            None => inner.extend_from_slice(msg),
        }

        let mut w = Writer::with_capacity(6 + 32 + inner.len() + 16);
        w.u8(VERSION);
        target.encode(&mut w);
        let mut ad = w.clone().into_bytes();
        ad.extend_from_slice(context);
        if target == KeyRef::Prekey {
            let throwaway = DhSecret::generate(rng);
            let p = peer_prekey.ok_or(TwoPartyError::UnknownKey("peer prekey"))?;
            let m = oneshot::seal(rng, &throwaway, p, &ad, &inner)?;
            m.encode(&mut w);
            if let Some(k) = &bulk {
                w.put(&aead(k.expose(), &ad, msg, true)?);
            }
        } else {
            w.put(&pke_seal(rng, &to, &ad, &inner)?);
        }

        self.send_chain = chain_idx;
        self.send_to = Some((KeyRef::Chain(chain_idx), next_chain.public()));
        if let Some(k) = fresh {
            self.announce_ctr = announce_idx;
            self.announced.push_back((announce_idx, k));
        }
        Ok(w.into_bytes())
    }

    /// Whether the next message must be sealed to the peer's prekey.
    pub fn needs_prekey(&self) -> bool {
        self.send_to.is_none()
    }

    /// Decrypts a message from the peer; `prekeys` opens the peer's first message.
    pub fn receive(
        &mut self,
        prekeys: &PrekeyStore,
        context: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TwoPartyError> {
        let mut r = Reader::new(ciphertext);
        r.version("2SM ciphertext", VERSION)?;
        let target = KeyRef::decode(&mut r)?;
        let mut ad = ciphertext
            .get(..6)
            .ok_or(TwoPartyError::UnknownKey("header"))?
            .to_vec();
        ad.extend_from_slice(context);
        let ad = &ad[..];
        let first = match target {
            KeyRef::Prekey => Some(OneShotMessage::decode(&mut r)?),
            _ => None,
        };
        let body = r.rest();
        let inner = match target {
            KeyRef::Prekey => match &first {
                Some(m) => prekeys.open(m, ad)?.1,
                None => return Err(TwoPartyError::UnknownKey("prekey")),
            },
            KeyRef::Chain(i) => match &self.recv_chain {
                Some((j, k)) if *j == i => pke_open(k, ad, body)?,
                _ => return Err(TwoPartyError::UnknownKey("chain")),
            },
            KeyRef::Announced(i) => {
                let k = self
                    .announced
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, k)| k)
                    .ok_or(TwoPartyError::UnknownKey("announced"))?;
                pke_open(k, ad, body)?
            }
        };
        let mut r = Reader::new(&inner);
        let next_chain = DhSecret::from_bytes(r.array()?);
        let chain_idx = r.u32()?;
        let announce_idx = r.u32()?;
        let announce_pub = DhPublic(r.array()?);
        let seen = r.u32()?;
        let msg = if target == KeyRef::Prekey {
            let k: [u8; 32] = r.array()?;
            r.finish()?;
            let k = Zeroizing::new(k);
            Zeroizing::new(aead(&k, ad, body, false)?)
        } else {
            Zeroizing::new(r.rest().to_vec())
        };

        // Forward secrecy: the key just used is deleted, and so is every announced key the peer
        // will never use again.
        match target {
            KeyRef::Prekey => {}
            KeyRef::Chain(_) => self.recv_chain = None,
            KeyRef::Announced(i) => self.announced.retain(|(j, _)| *j > i),
        }
        self.announced.retain(|(j, _)| *j >= seen);
        self.recv_chain = Some((chain_idx, next_chain));
        if announce_idx > self.seen_announce {
            self.seen_announce = announce_idx;
            self.send_to = Some((KeyRef::Announced(announce_idx), announce_pub));
        }
        Ok(msg)
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        match &self.send_to {
            None => w.u8(0),
            Some((k, p)) => {
                w.u8(1);
                k.encode(w);
                w.put(p.as_bytes());
            }
        }
        w.u32(self.send_chain);
        w.u32(self.seen_announce);
        match &self.recv_chain {
            None => w.u8(0),
            Some((i, k)) => {
                w.u8(1);
                w.u32(*i);
                w.put(k.to_bytes().as_ref());
            }
        }
        w.u8(u8::try_from(self.announced.len()).unwrap_or(u8::MAX));
        for (i, k) in &self.announced {
            w.u32(*i);
            w.put(k.to_bytes().as_ref());
        }
        w.u32(self.announce_ctr);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let send_to = if r.bool()? {
            Some((KeyRef::decode(r)?, DhPublic(r.array()?)))
        } else {
            None
        };
        let send_chain = r.u32()?;
        let seen_announce = r.u32()?;
        let recv_chain = if r.bool()? {
            Some((r.u32()?, DhSecret::from_bytes(r.array()?)))
        } else {
            None
        };
        let n = usize::from(r.u8()?);
        if n > MAX_ANNOUNCED {
            return Err(DecodeError::TooLong {
                what: "2SM announced keys",
                max: MAX_ANNOUNCED,
                got: n,
            });
        }
        let mut announced = VecDeque::with_capacity(n);
        for _ in 0..n {
            announced.push_back((r.u32()?, DhSecret::from_bytes(r.array()?)));
        }
        Ok(Self {
            send_to,
            send_chain,
            seen_announce,
            recv_chain,
            announced,
            announce_ctr: r.u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use crate::keys::DeviceSigningKey;

    const CTX: &[u8] = b"test context";

    struct Side {
        prekey: Pk,
        st: TwoParty,
    }

    /// A prekey store and its verified public prekey.
    struct Pk {
        store: PrekeyStore,
        public: VerifiedPrekey,
    }

    impl Pk {
        fn public(&self) -> VerifiedPrekey {
            self.public
        }
    }

    fn pk(rng: &mut StdRng, seed: u8) -> Pk {
        let dev = DeviceSigningKey::from_seed(&[seed; 32]);
        let store = PrekeyStore::new(rng, 0);
        let public = store.signed_current(&dev).verify(&dev.public()).unwrap();
        Pk { store, public }
    }

    impl TwoParty {
        fn tx(
            &mut self,
            rng: &mut StdRng,
            to: &VerifiedPrekey,
            m: &[u8],
        ) -> Result<Vec<u8>, TwoPartyError> {
            self.send(rng, Some(to), CTX, m)
        }
        fn rx(&mut self, mine: &Pk, c: &[u8]) -> Result<Zeroizing<Vec<u8>>, TwoPartyError> {
            self.receive(&mine.store, CTX, c)
        }
    }

    fn pair() -> (Side, Side, StdRng) {
        let mut rng = StdRng::seed_from_u64(7);
        let a = Side {
            prekey: pk(&mut rng, 1),
            st: TwoParty::default(),
        };
        let b = Side {
            prekey: pk(&mut rng, 2),
            st: TwoParty::default(),
        };
        (a, b, rng)
    }

    #[test]
    fn round_trips_both_ways_and_interleaved() {
        let (mut a, mut b, mut rng) = pair();
        for i in 0..5u8 {
            let c1 = a.st.tx(&mut rng, &b.prekey.public(), &[i]).unwrap();
            let c2 = a.st.tx(&mut rng, &b.prekey.public(), &[i, i]).unwrap();
            let c3 = b.st.tx(&mut rng, &a.prekey.public(), &[i, 9]).unwrap();
            assert_eq!(&b.st.rx(&b.prekey, &c1).unwrap()[..], &[i]);
            assert_eq!(&a.st.rx(&a.prekey, &c3).unwrap()[..], &[i, 9]);
            assert_eq!(&b.st.rx(&b.prekey, &c2).unwrap()[..], &[i, i]);
        }
    }

    #[test]
    fn replay_and_tamper_rejected() {
        let (mut a, mut b, mut rng) = pair();
        let c0 = a.st.tx(&mut rng, &b.prekey.public(), b"x").unwrap();
        b.st.rx(&b.prekey, &c0).unwrap();
        let c = a.st.tx(&mut rng, &b.prekey.public(), b"hello").unwrap();
        let mut t = c.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(b.st.rx(&b.prekey, &t), Err(TwoPartyError::Decrypt));
        b.st.rx(&b.prekey, &c).unwrap();
        assert_eq!(
            b.st.rx(&b.prekey, &c),
            Err(TwoPartyError::UnknownKey("chain"))
        );
    }

    /// Forward secrecy: B's full state after receiving does not open what it received.
    #[test]
    fn state_after_receipt_does_not_open_old_messages() {
        let (mut a, mut b, mut rng) = pair();
        let c0 = a.st.tx(&mut rng, &b.prekey.public(), b"first").unwrap();
        b.st.rx(&b.prekey, &c0).unwrap();
        let c1 = a.st.tx(&mut rng, &b.prekey.public(), b"secret").unwrap();
        b.st.rx(&b.prekey, &c1).unwrap();
        let mut stolen = b.st.clone();
        assert!(stolen.rx(&b.prekey, &c1).is_err());
    }

    /// Post-compromise security: once B has sent to A, A's next message uses B's fresh key.
    #[test]
    fn announced_key_heals_after_compromise() {
        let (mut a, mut b, mut rng) = pair();
        let c0 = a.st.tx(&mut rng, &b.prekey.public(), b"first").unwrap();
        b.st.rx(&b.prekey, &c0).unwrap();
        let stolen = b.st.clone();
        let back = b.st.tx(&mut rng, &a.prekey.public(), b"reply").unwrap();
        a.st.rx(&a.prekey, &back).unwrap();
        let c1 = a.st.tx(&mut rng, &b.prekey.public(), b"after").unwrap();
        let mut attacker = stolen;
        assert!(attacker.rx(&b.prekey, &c1).is_err());
        assert_eq!(&b.st.rx(&b.prekey, &c1).unwrap()[..], b"after");
    }

    #[test]
    fn state_round_trips() {
        let (mut a, mut b, mut rng) = pair();
        let c0 = a.st.tx(&mut rng, &b.prekey.public(), b"first").unwrap();
        b.st.rx(&b.prekey, &c0).unwrap();
        let mut w = Writer::new();
        b.st.encode(&mut w);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        let mut b2 = TwoParty::decode(&mut r).unwrap();
        r.finish().unwrap();
        let c1 = a.st.tx(&mut rng, &b.prekey.public(), b"next").unwrap();
        assert_eq!(&b2.rx(&b.prekey, &c1).unwrap()[..], b"next");
        assert!(!format!("{b2:?}").contains("recv"));
    }

    /// Many messages one way without a reply, then replies that use old announcements: every
    /// key the peer may still use is kept.
    #[test]
    fn long_one_way_runs_keep_usable_announcements() {
        let (mut a, mut b, mut rng) = pair();
        let c0 = b.st.tx(&mut rng, &a.prekey.public(), b"hi").unwrap();
        a.st.rx(&a.prekey, &c0).unwrap();
        let mut pending = Vec::new();
        for i in 0..(3 * MAX_ANNOUNCED) {
            pending.push(a.st.tx(&mut rng, &b.prekey.public(), &[i as u8]).unwrap());
        }
        // B processes them slowly, replying after each one.
        for (i, c) in pending.iter().enumerate() {
            assert_eq!(&b.st.rx(&b.prekey, c).unwrap()[..], &[i as u8]);
            let r = b.st.tx(&mut rng, &a.prekey.public(), b"r").unwrap();
            a.st.rx(&a.prekey, &r).unwrap();
        }
        assert!(a.st.announced.len() <= MAX_ANNOUNCED);
    }

    #[test]
    fn wrong_context_rejected() {
        let (mut a, mut b, mut rng) = pair();
        let c0 = a.st.tx(&mut rng, &b.prekey.public(), b"x").unwrap();
        assert!(b.st.receive(&b.prekey.store, b"other", &c0).is_err());
        b.st.rx(&b.prekey, &c0).unwrap();
        let c1 = a.st.tx(&mut rng, &b.prekey.public(), b"y").unwrap();
        assert!(
            b.st.clone()
                .receive(&b.prekey.store, b"other", &c1)
                .is_err()
        );
        b.st.rx(&b.prekey, &c1).unwrap();
    }
}
