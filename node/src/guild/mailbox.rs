//! Mailbox relays on the node side: depositing ciphertext for members who are offline, and
//! picking up what others deposited for this device.
//!
//! # Keys and tags
//!
//! Each device derives a mailbox Ed25519 key from its device secret
//! (HKDF-SHA256, [`MAILBOX_KEY_LABEL`]); its tag on relays is
//! `securecomm_rendezvous::mailbox::tag_for(public key)`. A device announces its tag and the
//! relays it picks up from in the causal log of each guild it is in
//! ([`super::wire::LogPayload::Mailbox`]); members keep the newest announcement per device
//! (`member_mailboxes`, migration 7).
//!
//! # What a relay stores
//!
//! A blob sealed with XChaCha20-Poly1305 under a key derived from the guild secret
//! ([`BLOB_KEY_LABEL`]), so the relay sees neither the guild, the sender nor the kind:
//! `0x01 || nonce (24) || AEAD(kind || body)`, where kind 1 is a guild message (guild id, sender
//! device, sequence number, sealed envelope) and kind 2 a DM (guild id, sender device, the
//! Double Ratchet message). The recipient tries the key of each guild it is in.
//!
//! # Flow
//!
//! * After a local send, members whose device is not connected and has announced a mailbox
//!   get the envelope deposited on one of their relays (one deposit per relay for every tag
//!   there). A queued DM for a device that is not connected goes to its mailbox the same way
//!   and is marked `deposited`.
//! * Every few seconds the node picks up from each of its own connected relays, validates each
//!   item exactly like live traffic (guild messages through the history path, with the
//!   sender and sequence claims checked; DMs through the DM path) and acknowledges what it
//!   stored or can never use; the relay deletes an item when every recipient acknowledged it.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use libp2p::identity::ed25519;
use rand_core::{OsRng, RngCore};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use securecomm_crdt::schema::GuildId;
use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use securecomm_noise::keys::DevicePublicKey;
use securecomm_noise::secret::{Secret32, hkdf_sha256};
use zeroize::Zeroizing;

use crate::sync::SyncError;

/// HKDF label of the mailbox key.
pub const MAILBOX_KEY_LABEL: &[u8] = b"SecureComm/mailbox-key v1";
/// HKDF label of a guild's blob key.
pub const BLOB_KEY_LABEL: &[u8] = b"SecureComm/mailbox-blob v1";
/// Version byte of a sealed blob.
pub const BLOB_VERSION: u8 = 1;
/// Most relays a device announces.
pub const MAX_ANNOUNCED_RELAYS: usize = 4;
/// Longest relay address in an announcement.
pub const MAX_RELAY_ADDR: usize = 512;
/// Largest body inside a blob.
pub const MAX_BODY: usize = 128 * 1024;

/// What a blob carries, once opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobBody {
    /// A guild message's sealed envelope.
    Guild {
        /// The guild.
        guild: GuildId,
        /// The sending device (checked against the envelope).
        sender: DevicePublicKey,
        /// Its sequence number (checked against the payload).
        seq: u64,
        /// The envelope as published.
        envelope: Vec<u8>,
    },
    /// A DM ratchet message.
    Dm {
        /// The guild whose key sealed it (shared by both users).
        guild: GuildId,
        /// The sending device (authenticated by the DM session).
        sender: DevicePublicKey,
        /// The encoded DM message.
        message: Vec<u8>,
    },
}

impl Encode for BlobBody {
    fn encode(&self, w: &mut Writer) {
        match self {
            Self::Guild {
                guild,
                sender,
                seq,
                envelope,
            } => {
                w.u8(1);
                guild.encode(w);
                sender.encode(w);
                w.u64(*seq);
                w.bytes32(envelope);
            }
            Self::Dm {
                guild,
                sender,
                message,
            } => {
                w.u8(2);
                guild.encode(w);
                sender.encode(w);
                w.bytes32(message);
            }
        }
    }
}

impl Decode for BlobBody {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            1 => Ok(Self::Guild {
                guild: GuildId::decode(r)?,
                sender: DevicePublicKey::decode(r)?,
                seq: r.u64()?,
                envelope: r.bytes32("mailbox envelope", MAX_BODY)?.to_vec(),
            }),
            2 => Ok(Self::Dm {
                guild: GuildId::decode(r)?,
                sender: DevicePublicKey::decode(r)?,
                message: r.bytes32("mailbox DM", MAX_BODY)?.to_vec(),
            }),
            got => Err(DecodeError::UnknownTag {
                what: "mailbox blob",
                got: u64::from(got),
            }),
        }
    }
}

fn blob_key(guild_secret: &Secret32) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(hkdf_sha256(None, guild_secret.expose(), BLOB_KEY_LABEL))
}

/// Seals `body` under the guild's blob key.
pub fn seal(guild_secret: &Secret32, body: &BlobBody) -> Vec<u8> {
    let key = blob_key(guild_secret);
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    let plain = Zeroizing::new(body.to_bytes());
    let mut out = Vec::with_capacity(1 + 24 + plain.len() + 16);
    out.push(BLOB_VERSION);
    out.extend_from_slice(&nonce);
    // Encryption with a fresh key-sized nonce cannot fail for inputs this size.
    if let Ok(ct) = cipher.encrypt(
        XNonce::from_slice(&nonce),
        Payload {
            msg: &plain,
            aad: &[BLOB_VERSION],
        },
    ) {
        out.extend_from_slice(&ct);
    }
    out
}

/// Opens a blob with the guild's blob key; `None` if it is not sealed under it.
pub fn open(guild_secret: &Secret32, blob: &[u8]) -> Option<BlobBody> {
    let (&v, rest) = blob.split_first()?;
    if v != BLOB_VERSION || rest.len() < 24 + 16 {
        return None;
    }
    let (nonce, ct) = rest.split_at(24);
    let key = blob_key(guild_secret);
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &[BLOB_VERSION],
                },
            )
            .ok()?,
    );
    BlobBody::from_bytes(&plain).ok()
}

/// This device's mailbox key, derived from its device seed.
pub fn mailbox_keypair(device_seed: &[u8; 32]) -> ed25519::Keypair {
    let mut seed: [u8; 32] = hkdf_sha256(None, device_seed, MAILBOX_KEY_LABEL);
    match ed25519::SecretKey::try_from_bytes(&mut seed) {
        Ok(sk) => ed25519::Keypair::from(sk),
        // Any 32 bytes are a valid Ed25519 seed; this arm is unreachable in practice.
        Err(_) => ed25519::Keypair::generate(),
    }
}

/// A device's announced mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Its tag on relays.
    pub tag: [u8; 32],
    /// Relays it picks up from (full multiaddrs with `/p2p/`), as bytes.
    pub relays: Vec<Vec<u8>>,
}

impl Encode for Announcement {
    fn encode(&self, w: &mut Writer) {
        w.put(&self.tag);
        w.u8(u8::try_from(self.relays.len().min(MAX_ANNOUNCED_RELAYS)).unwrap_or(0));
        for r in self.relays.iter().take(MAX_ANNOUNCED_RELAYS) {
            w.bytes16(r);
        }
    }
}

impl Decode for Announcement {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let tag = r.array()?;
        let n = usize::from(r.u8()?);
        if n > MAX_ANNOUNCED_RELAYS {
            return Err(DecodeError::TooLong {
                what: "announced relays",
                max: MAX_ANNOUNCED_RELAYS,
                got: n,
            });
        }
        let mut relays = Vec::with_capacity(n);
        for _ in 0..n {
            relays.push(r.bytes16("relay address", MAX_RELAY_ADDR)?.to_vec());
        }
        Ok(Self { tag, relays })
    }
}

/// Stores a member device's announcement (newest wins: the log delivers in causal order).
pub(crate) fn store_announcement(
    tx: &Transaction<'_>,
    device: &DevicePublicKey,
    a: &Announcement,
) -> Result<(), SyncError> {
    tx.prepare_cached(
        "INSERT INTO member_mailboxes (device, announcement) VALUES (?1, ?2)
         ON CONFLICT(device) DO UPDATE SET announcement = excluded.announcement",
    )?
    .execute(params![&device.as_bytes()[..], a.to_bytes()])?;
    Ok(())
}

/// A member device's announcement, if any.
pub(crate) fn announcement(
    conn: &Connection,
    device: &DevicePublicKey,
) -> Result<Option<Announcement>, SyncError> {
    let b: Option<Vec<u8>> = conn
        .prepare_cached("SELECT announcement FROM member_mailboxes WHERE device = ?1")?
        .query_row([&device.as_bytes()[..]], |r| r.get(0))
        .optional()?;
    Ok(b.and_then(|b| Announcement::from_bytes(&b).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(b: u8) -> DevicePublicKey {
        securecomm_noise::keys::DeviceSigningKey::from_seed(&[b; 32]).public()
    }

    #[test]
    fn blobs_open_only_under_their_guild_key() {
        let k1 = Secret32::from_bytes([1; 32]);
        let k2 = Secret32::from_bytes([2; 32]);
        let body = BlobBody::Guild {
            guild: GuildId([9; 32]),
            sender: dev(3),
            seq: 7,
            envelope: b"sealed envelope".to_vec(),
        };
        let blob = seal(&k1, &body);
        assert_eq!(open(&k1, &blob), Some(body.clone()));
        assert_eq!(open(&k2, &blob), None);
        assert!(
            !blob.windows(15).any(|w| w == b"sealed envelope"),
            "the body is encrypted"
        );
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert_eq!(open(&k1, &bad), None, "flipped byte {i}");
        }
        assert_eq!(open(&k1, &blob[..blob.len() - 1]), None);
        assert_eq!(open(&k1, &[]), None);
    }

    #[test]
    fn mailbox_key_is_stable_and_distinct_from_the_device_key() {
        let a = mailbox_keypair(&[5; 32]);
        let b = mailbox_keypair(&[5; 32]);
        assert_eq!(a.public().to_bytes(), b.public().to_bytes());
        assert_ne!(
            a.public().to_bytes(),
            *securecomm_noise::keys::DeviceSigningKey::from_seed(&[5; 32])
                .public()
                .as_bytes()
        );
    }

    proptest! {
        #[test]
        fn announcements_round_trip(tag in any::<[u8; 32]>(), n in 0usize..=4, addr in proptest::collection::vec(any::<u8>(), 0..100)) {
            let a = Announcement { tag, relays: vec![addr; n] };
            prop_assert_eq!(Announcement::from_bytes(&a.to_bytes()).unwrap(), a);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Announcement::from_bytes(&bytes);
            let _ = BlobBody::from_bytes(&bytes);
            let _ = open(&Secret32::from_bytes([1; 32]), &bytes);
        }
    }
}
