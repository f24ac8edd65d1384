//! The guild's data types and their canonical encodings.
//!
//! Everything here is plain data: the records a guild holds (roles, channels, members, invites,
//! bans, settings) and the identifiers that name them. Each record has one canonical encoding
//! through the shared codec, with a bound on every string and collection, so two replicas that
//! hold the same record hold the same bytes. Records travel only inside guild operations
//! ([`crate::ops::GuildOp`]), which carry the version byte.

use std::collections::{BTreeSet, HashMap};

use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use securecomm_noise::keys::{DevicePublicKey, RootPublicKey, SigLabel, Signature};

use crate::perms::Permissions;

/// Longest guild, role or channel name, in bytes.
pub const MAX_NAME: usize = 100;
/// Longest channel topic, in bytes.
pub const MAX_TOPIC: usize = 1024;
/// Longest ban reason or nickname, in bytes.
pub const MAX_REASON: usize = 512;
/// Most permission overwrites on one channel (one per role plus some members).
pub const MAX_OVERWRITES: usize = 512;
/// Most devices one member may register in a guild.
pub const MAX_DEVICES: usize = 16;
/// Most roles one member may hold.
pub const MAX_MEMBER_ROLES: usize = 256;

/// Signature label for a device certificate: a user's root key vouching for one device.
pub const DEVICE_CERT_LABEL: SigLabel = SigLabel("SecureComm/crdt/device-cert v1");

/// A user: identified by their root public key.
pub type UserId = RootPublicKey;

/// A guild's identifier: the Automerge hash of its genesis change.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuildId(pub [u8; 32]);

impl std::fmt::Debug for GuildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuildId({})", short_hex(&self.0))
    }
}

pub(crate) fn short_hex(b: &[u8]) -> String {
    b.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Appends the lowercase hex of `b` to `out`.
pub(crate) fn push_hex(out: &mut String, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(b.len() * 2);
    for x in b {
        out.push(char::from(DIGITS[usize::from(x >> 4)]));
        out.push(char::from(DIGITS[usize::from(x & 15)]));
    }
}

/// A role's identifier. [`RoleId::EVERYONE`] is the `@everyone` role every member holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleId(pub u64);

impl RoleId {
    /// The `@everyone` role: position 0, held implicitly by every member.
    pub const EVERYONE: RoleId = RoleId(0);
}

/// A channel's (or category's) identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u64);

/// An invite's identifier: 16 random bytes chosen by its creator.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InviteCode(pub [u8; 16]);

impl std::fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InviteCode({})", short_hex(&self.0))
    }
}

/// A role: a named set of permission bits with a place in the hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    /// Display name.
    pub name: String,
    /// RGB colour, `0` for none.
    pub colour: u32,
    /// Place in the hierarchy: higher positions outrank lower ones. `@everyone` is 0.
    pub position: u16,
    /// Guild-wide permission bits.
    pub permissions: Permissions,
    /// Whether anyone may mention the role.
    pub mentionable: bool,
    /// Whether members with this role are listed separately.
    pub hoisted: bool,
}

/// What kind of channel this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// A text channel.
    Text,
    /// A voice channel.
    Voice,
    /// A category grouping other channels.
    Category,
}

/// Whom a permission overwrite applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OverwriteTarget {
    /// Every holder of a role (`RoleId::EVERYONE` for the `@everyone` overwrite).
    Role(RoleId),
    /// One member.
    Member(UserId),
}

/// A channel permission overwrite: bits to allow and bits to deny for one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overwrite {
    /// Whom it applies to.
    pub target: OverwriteTarget,
    /// Bits granted in this channel.
    pub allow: Permissions,
    /// Bits taken away in this channel.
    pub deny: Permissions,
}

/// A text or voice channel, or a category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    /// Text, voice or category.
    pub kind: ChannelKind,
    /// Display name.
    pub name: String,
    /// Topic line (text channels).
    pub topic: String,
    /// The category it sits in, if any.
    pub parent: Option<ChannelId>,
    /// Sort position among siblings.
    pub position: u16,
    /// Per-role and per-member overwrites, at most one per target.
    pub overwrites: Vec<Overwrite>,
    /// Seconds a member must wait between messages; 0 for none.
    pub slow_mode_secs: u32,
    /// Voice bitrate in bits per second (voice channels).
    pub bitrate: u32,
    /// Most users in the voice channel at once; 0 for no limit.
    pub user_limit: u16,
    /// Default disappearing-message timer of the channel in seconds; 0 for none (the guild's
    /// default, if any, still applies; the shortest non-zero timer wins).
    pub disappearing_secs: u32,
}

impl Channel {
    /// The overwrite for `target`, if there is one.
    pub fn overwrite(&self, target: &OverwriteTarget) -> Option<&Overwrite> {
        self.overwrites.iter().find(|o| &o.target == target)
    }
}

/// A member's devices: a set (sorted, each device once, at most [`MAX_DEVICES`]) kept in one
/// small allocation. A `BTreeSet` of 192-byte keys allocated a 2 KiB node even for the single
/// device most members have, which in a 10,000-member guild was 20 MiB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceSet(Vec<DevicePublicKey>);

impl DeviceSet {
    /// A set of one device.
    pub fn one(device: DevicePublicKey) -> Self {
        Self(vec![device])
    }
    /// The devices in ascending order of their bytes.
    pub fn iter(&self) -> std::slice::Iter<'_, DevicePublicKey> {
        self.0.iter()
    }
    /// How many devices.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Whether `device` is in the set.
    pub fn contains(&self, device: &DevicePublicKey) -> bool {
        self.0.binary_search(device).is_ok()
    }
    /// Adds `device`; whether it was new.
    pub fn insert(&mut self, device: DevicePublicKey) -> bool {
        match self.0.binary_search(&device) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, device);
                true
            }
        }
    }
    /// Removes `device`; whether it was there.
    pub fn remove(&mut self, device: &DevicePublicKey) -> bool {
        match self.0.binary_search(device) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }
}

impl<'a> IntoIterator for &'a DeviceSet {
    type Item = &'a DevicePublicKey;
    type IntoIter = std::slice::Iter<'a, DevicePublicKey>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for DeviceSet {
    type Item = DevicePublicKey;
    type IntoIter = std::vec::IntoIter<DevicePublicKey>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A member of the guild.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Devices certified by the member's root key, that may author changes for them.
    pub devices: DeviceSet,
    /// Display name in this guild; empty for none.
    pub nickname: String,
    /// When they joined (the joining change's time, seconds since the Unix epoch).
    pub joined_at: u64,
    /// Roles held, not counting `@everyone`.
    pub roles: BTreeSet<RoleId>,
    /// Server-muted: may not speak in any voice channel of the guild until unmuted (set by a
    /// member with Mute Members who outranks them).
    pub voice_muted: bool,
}

/// An invite as recorded in the guild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invite {
    /// The member who created it.
    pub creator: UserId,
    /// Unix time after which it may not be redeemed; 0 for never.
    pub expires_at: u64,
    /// Most redemptions; 0 for unlimited.
    pub max_uses: u32,
}

/// An invite with its redemption count and revocation flag, as the resolved view holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InviteState {
    /// The invite as created.
    pub invite: Invite,
    /// Effective redemptions so far.
    pub uses: u32,
    /// Whether it was revoked.
    pub revoked: bool,
}

impl InviteState {
    /// Whether a redemption at `time` would be allowed.
    pub fn usable_at(&self, time: u64) -> bool {
        !self.revoked
            && (self.invite.expires_at == 0 || time < self.invite.expires_at)
            && (self.invite.max_uses == 0 || self.uses < self.invite.max_uses)
    }
}

/// A ban.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    /// Why.
    pub reason: String,
    /// Who banned.
    pub by: UserId,
}

/// A soundboard sound's identifier: random, chosen by the member who adds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SoundId(pub u64);

/// Longest sound name, in characters (Discord's 32; at most 4 bytes each on the wire).
pub const MAX_SOUND_NAME_CHARS: usize = 32;
/// Longest sound emoji, in bytes (room for a ZWJ sequence of several code points).
pub const MAX_SOUND_EMOJI: usize = 32;
/// Most sounds in one guild's library. Enforced when authorizing a change (a change that
/// would take the library past it is refused) and again when folding the view (concurrent
/// additions past it are dropped in the canonical order, so every replica keeps the same 48).
pub const MAX_SOUNDS: usize = 48;
/// Highest per-sound volume, in percent.
pub const MAX_SOUND_VOLUME: u8 = 100;
/// Longest sound, in milliseconds (the import limit, 5.2 s).
pub const MAX_SOUND_DURATION_MS: u32 = 5_200;
/// Largest encrypted sound asset, in bytes.
pub const MAX_SOUND_ASSET_BYTES: u64 = 512 * 1024;

/// Where a sound's audio is: an encrypted file delivered by the file-transfer layer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SoundAsset {
    /// Content address of the encrypted file (the root its chunks hang from).
    pub root: [u8; 32],
    /// The file key (the guild document is itself encrypted to members).
    pub key: [u8; 32],
    /// Size of the clip asset (the plaintext of the encrypted file), in bytes.
    pub size: u64,
    /// Length of the clip, in milliseconds.
    pub duration_ms: u32,
    /// The encrypted file's header (chunk size and nonce prefix), needed to fetch and decrypt.
    pub header: [u8; 12],
    /// SHA-256 of the clip asset, checked after decryption.
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for SoundAsset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is never printed.
        f.debug_struct("SoundAsset")
            .field("root", &short_hex(&self.root))
            .field("size", &self.size)
            .field("duration_ms", &self.duration_ms)
            .finish_non_exhaustive()
    }
}

/// A sound in the guild's soundboard library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sound {
    /// Display name, 1 to [`MAX_SOUND_NAME_CHARS`] characters.
    pub name: String,
    /// An emoji shown with the name, if any.
    pub emoji: Option<String>,
    /// Playback volume in percent, 0 to [`MAX_SOUND_VOLUME`].
    pub volume: u8,
    /// The audio.
    pub asset: SoundAsset,
}

/// A custom emoji's identifier: random, chosen by the member who adds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EmojiId(pub u64);

/// Shortest custom emoji name, in characters (Discord's 2).
pub const MIN_EMOJI_NAME_CHARS: usize = 2;
/// Longest custom emoji name, in characters (Discord's 32).
pub const MAX_EMOJI_NAME_CHARS: usize = 32;
/// Most custom emoji in one guild (Discord's 50 for a guild without boosts). Enforced like
/// [`MAX_SOUNDS`]: by authorization, and again by the fold for concurrent additions.
pub const MAX_EMOJIS: usize = 50;
/// Largest custom emoji image (the plaintext of its encrypted file), in bytes (Discord's 256 KiB).
pub const MAX_EMOJI_IMAGE_BYTES: u64 = 256 * 1024;

/// Checks a custom emoji name: 2 to 32 ASCII letters, digits and underscores (what Discord
/// accepts, and what `:name:` in a reaction or message can name without escaping).
pub fn check_emoji_name(name: &str) -> Result<(), &'static str> {
    let n = name.len();
    if !(MIN_EMOJI_NAME_CHARS..=MAX_EMOJI_NAME_CHARS).contains(&n)
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err("an emoji name is 2 to 32 letters, digits or underscores");
    }
    Ok(())
}

/// Where a custom emoji's image is: an encrypted file delivered by the file-transfer layer,
/// fetched by every member ahead of time. The image is a PNG of at most 128 x 128 pixels made
/// by the uploader's client; receivers decode it with limits all the same.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EmojiImage {
    /// Content address of the encrypted file (the root its chunks hang from).
    pub root: [u8; 32],
    /// The file key (the guild document is itself encrypted to members).
    pub key: [u8; 32],
    /// Size of the image (the plaintext of the encrypted file), in bytes.
    pub size: u64,
    /// The encrypted file's header (chunk size and nonce prefix), needed to fetch and decrypt.
    pub header: [u8; 12],
    /// SHA-256 of the image, checked after decryption.
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for EmojiImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is never printed.
        f.debug_struct("EmojiImage")
            .field("root", &short_hex(&self.root))
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A guild custom emoji: a name members write as `:name:` and its encrypted image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emoji {
    /// Name, checked by [`check_emoji_name`]; unique within the guild.
    pub name: String,
    /// The image.
    pub image: EmojiImage,
}

/// Guild-wide settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Whether new members may read history from before they joined.
    pub history_visible_to_new_members: bool,
    /// Default disappearing-message timer in seconds; 0 for off.
    pub default_disappearing_secs: u32,
    /// Largest attachment in bytes.
    pub max_upload_bytes: u64,
}

/// A user's root key vouching that `device` may act for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceCert {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DevicePublicKey,
    /// Root-key signature over the device key under [`DEVICE_CERT_LABEL`].
    pub sig: Signature,
}

impl DeviceCert {
    /// Certifies `device` with the user's root key.
    pub fn issue(root: &securecomm_noise::keys::RootSigningKey, device: DevicePublicKey) -> Self {
        Self {
            user: root.public(),
            device,
            sig: root.sign(DEVICE_CERT_LABEL, device.as_bytes()),
        }
    }

    /// Whether the signature verifies, under the ZIP-215 rules of [`crate::verify`] (the rules
    /// of version-2 envelopes, which carry certificates inside their ops).
    pub fn verify(&self) -> bool {
        self.sig_item().verify()
    }

    /// The certificate's signature as a [`crate::verify::SigItem`], for batch verification.
    pub fn sig_item(&self) -> crate::verify::SigItem {
        crate::verify::SigItem::root(
            &self.user,
            DEVICE_CERT_LABEL,
            &[self.device.as_bytes()],
            &self.sig,
        )
    }

    /// The certificate's full encoding (user, device, signature), as a cache key: two
    /// certificates share it only if they are the same certificate.
    pub(crate) fn cache_key(&self) -> [u8; 128] {
        let mut k = [0u8; 128];
        let (u, rest) = k.split_at_mut(32);
        let (d, s) = rest.split_at_mut(32);
        u.copy_from_slice(self.user.as_bytes());
        d.copy_from_slice(self.device.as_bytes());
        s.copy_from_slice(&self.sig.0);
        k
    }
}

// ---- key decoding ---------------------------------------------------------------------------

/// Where the decoders of this crate get public keys from. Decoding a key validates it (a point
/// decompression and a small-order check, the dearest part of decoding an op), and the same
/// keys recur (an invite token in every redemption; a redemption certifies the very device that
/// signed its envelope), so [`KeyCache`] remembers keys already decoded. A key's decoding is a
/// pure function of its 32 bytes, so the cache changes no result.
pub trait KeySource {
    /// Reads a user's root public key.
    fn root(&mut self, r: &mut Reader<'_>) -> Result<RootPublicKey, DecodeError>;
    /// Reads a device public key.
    fn device(&mut self, r: &mut Reader<'_>) -> Result<DevicePublicKey, DecodeError>;
    /// Remembers a device key decoded elsewhere (an envelope's author), if this source caches.
    fn note_device(&mut self, _key: DevicePublicKey) {}
}

/// Decodes every key afresh (the plain [`Decode`] impls use it).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCache;

impl KeySource for NoCache {
    fn root(&mut self, r: &mut Reader<'_>) -> Result<RootPublicKey, DecodeError> {
        RootPublicKey::decode(r)
    }
    fn device(&mut self, r: &mut Reader<'_>) -> Result<DevicePublicKey, DecodeError> {
        DevicePublicKey::decode(r)
    }
}

/// Most keys of each kind a [`KeyCache`] holds before it starts afresh (about 16 MiB of
/// each kind at most; a cache lives for one received batch, and a batch that names more
/// distinct keys is itself larger than that).
pub const MAX_CACHED_KEYS: usize = 65_536;

/// Remembers decoded keys by their bytes (bounded; see [`KeySource`]). Only valid keys are
/// remembered; an invalid key is rejected with the same error as [`Decode`] gives.
#[derive(Debug, Default)]
pub struct KeyCache {
    roots: HashMap<[u8; 32], RootPublicKey>,
    devices: HashMap<[u8; 32], DevicePublicKey>,
}

impl KeyCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// A root key from its bytes, decoded or remembered.
    pub(crate) fn root_from(&mut self, b: [u8; 32]) -> Result<RootPublicKey, DecodeError> {
        if let Some(k) = self.roots.get(&b) {
            return Ok(*k);
        }
        let k =
            RootPublicKey::from_bytes(&b).map_err(|_| DecodeError::Invalid("root public key"))?;
        if self.roots.len() >= MAX_CACHED_KEYS {
            self.roots.clear();
        }
        self.roots.insert(b, k);
        Ok(k)
    }

    /// A device key from its bytes, decoded or remembered.
    pub(crate) fn device_from(&mut self, b: [u8; 32]) -> Result<DevicePublicKey, DecodeError> {
        if let Some(k) = self.devices.get(&b) {
            return Ok(*k);
        }
        let k = DevicePublicKey::from_bytes(&b)
            .map_err(|_| DecodeError::Invalid("device public key"))?;
        self.note_device(k);
        Ok(k)
    }
}

impl KeySource for KeyCache {
    fn root(&mut self, r: &mut Reader<'_>) -> Result<RootPublicKey, DecodeError> {
        let b: [u8; 32] = r.array()?;
        self.root_from(b)
    }
    fn device(&mut self, r: &mut Reader<'_>) -> Result<DevicePublicKey, DecodeError> {
        let b: [u8; 32] = r.array()?;
        self.device_from(b)
    }
    fn note_device(&mut self, key: DevicePublicKey) {
        if self.devices.len() >= MAX_CACHED_KEYS {
            self.devices.clear();
        }
        self.devices.insert(key.to_bytes(), key);
    }
}

// ---- codec helpers -------------------------------------------------------------------------

pub(crate) fn put_str(w: &mut Writer, s: &str) {
    w.bytes16(s.as_bytes());
}

pub(crate) fn read_str(
    r: &mut Reader<'_>,
    what: &'static str,
    max: usize,
) -> Result<String, DecodeError> {
    let b = r.bytes16(what, max)?;
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid(what))
}

impl Encode for RoleId {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.0);
    }
}
impl Decode for RoleId {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.u64()?))
    }
}
impl Encode for ChannelId {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.0);
    }
}
impl Decode for ChannelId {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.u64()?))
    }
}
impl Encode for InviteCode {
    fn encode(&self, w: &mut Writer) {
        w.put(&self.0);
    }
}
impl Decode for InviteCode {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.array()?))
    }
}
impl Encode for GuildId {
    fn encode(&self, w: &mut Writer) {
        w.put(&self.0);
    }
}
impl Decode for GuildId {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.array()?))
    }
}

impl Encode for Role {
    fn encode(&self, w: &mut Writer) {
        put_str(w, &self.name);
        w.u32(self.colour);
        w.u16(self.position);
        w.u64(self.permissions.bits());
        w.bool(self.mentionable);
        w.bool(self.hoisted);
    }
}
impl Decode for Role {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            name: read_str(r, "role name", MAX_NAME)?,
            colour: r.u32()?,
            position: r.u16()?,
            permissions: Permissions::from_wire(r.u64()?)?,
            mentionable: r.bool()?,
            hoisted: r.bool()?,
        })
    }
}

impl Encode for OverwriteTarget {
    fn encode(&self, w: &mut Writer) {
        match self {
            Self::Role(id) => {
                w.u8(0);
                id.encode(w);
            }
            Self::Member(u) => {
                w.u8(1);
                u.encode(w);
            }
        }
    }
}
impl Decode for OverwriteTarget {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_with(r, &mut NoCache)
    }
}
impl OverwriteTarget {
    pub(crate) fn decode_with(
        r: &mut Reader<'_>,
        keys: &mut impl KeySource,
    ) -> Result<Self, DecodeError> {
        match r.u8()? {
            0 => Ok(Self::Role(RoleId::decode(r)?)),
            1 => Ok(Self::Member(keys.root(r)?)),
            got => Err(DecodeError::UnknownTag {
                what: "overwrite target",
                got: u64::from(got),
            }),
        }
    }
}

impl Encode for Channel {
    fn encode(&self, w: &mut Writer) {
        w.u8(match self.kind {
            ChannelKind::Text => 0,
            ChannelKind::Voice => 1,
            ChannelKind::Category => 2,
        });
        put_str(w, &self.name);
        put_str(w, &self.topic);
        match self.parent {
            None => w.u8(0),
            Some(p) => {
                w.u8(1);
                p.encode(w);
            }
        }
        w.u16(self.position);
        w.u16(u16::try_from(self.overwrites.len()).unwrap_or(u16::MAX));
        for o in &self.overwrites {
            o.target.encode(w);
            w.u64(o.allow.bits());
            w.u64(o.deny.bits());
        }
        w.u32(self.slow_mode_secs);
        w.u32(self.bitrate);
        w.u16(self.user_limit);
        // `disappearing_secs` is written by `GuildOp::PutChannel` under its own tag.
    }
}
impl Decode for Channel {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_with(r, &mut NoCache)
    }
}
impl Channel {
    pub(crate) fn decode_with(
        r: &mut Reader<'_>,
        keys: &mut impl KeySource,
    ) -> Result<Self, DecodeError> {
        let kind = match r.u8()? {
            0 => ChannelKind::Text,
            1 => ChannelKind::Voice,
            2 => ChannelKind::Category,
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "channel kind",
                    got: u64::from(got),
                });
            }
        };
        let name = read_str(r, "channel name", MAX_NAME)?;
        let topic = read_str(r, "channel topic", MAX_TOPIC)?;
        let parent = match r.u8()? {
            0 => None,
            1 => Some(ChannelId::decode(r)?),
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "channel parent",
                    got: u64::from(got),
                });
            }
        };
        let position = r.u16()?;
        let n = r.count16("channel overwrites", MAX_OVERWRITES)?;
        let mut overwrites: Vec<Overwrite> = Vec::with_capacity(n);
        for _ in 0..n {
            let target = OverwriteTarget::decode_with(r, keys)?;
            let allow = Permissions::from_wire(r.u64()?)?;
            let deny = Permissions::from_wire(r.u64()?)?;
            // Canonical form: targets strictly increasing, so each appears once.
            if overwrites.last().is_some_and(|p| p.target >= target) {
                return Err(DecodeError::Invalid("overwrite order"));
            }
            overwrites.push(Overwrite {
                target,
                allow,
                deny,
            });
        }
        let slow_mode_secs = r.u32()?;
        let bitrate = r.u32()?;
        let user_limit = r.u16()?;
        Ok(Self {
            kind,
            name,
            topic,
            parent,
            position,
            overwrites,
            slow_mode_secs,
            bitrate,
            user_limit,
            disappearing_secs: 0,
        })
    }
}

impl Encode for Invite {
    fn encode(&self, w: &mut Writer) {
        self.creator.encode(w);
        w.u64(self.expires_at);
        w.u32(self.max_uses);
    }
}
impl Decode for Invite {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_with(r, &mut NoCache)
    }
}
impl Invite {
    pub(crate) fn decode_with(
        r: &mut Reader<'_>,
        keys: &mut impl KeySource,
    ) -> Result<Self, DecodeError> {
        Ok(Self {
            creator: keys.root(r)?,
            expires_at: r.u64()?,
            max_uses: r.u32()?,
        })
    }
}

impl Encode for SoundId {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.0);
    }
}
impl Decode for SoundId {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.u64()?))
    }
}

impl Encode for Sound {
    fn encode(&self, w: &mut Writer) {
        put_str(w, &self.name);
        match &self.emoji {
            None => w.u8(0),
            Some(e) => {
                w.u8(1);
                put_str(w, e);
            }
        }
        w.u8(self.volume);
        w.put(&self.asset.root);
        w.put(&self.asset.key);
        w.u64(self.asset.size);
        w.u32(self.asset.duration_ms);
        w.put(&self.asset.header);
        w.put(&self.asset.sha256);
    }
}
impl Decode for Sound {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = read_str(r, "sound name", MAX_SOUND_NAME_CHARS * 4)?;
        if name.is_empty() || name.chars().count() > MAX_SOUND_NAME_CHARS {
            return Err(DecodeError::Invalid("sound name length"));
        }
        let emoji = match r.u8()? {
            0 => None,
            1 => {
                let e = read_str(r, "sound emoji", MAX_SOUND_EMOJI)?;
                if e.is_empty() {
                    return Err(DecodeError::Invalid("empty sound emoji"));
                }
                Some(e)
            }
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "sound emoji",
                    got: u64::from(got),
                });
            }
        };
        let volume = r.u8()?;
        if volume > MAX_SOUND_VOLUME {
            return Err(DecodeError::Invalid("sound volume"));
        }
        let asset = SoundAsset {
            root: r.array()?,
            key: r.array()?,
            size: r.u64()?,
            duration_ms: r.u32()?,
            header: r.array()?,
            sha256: r.array()?,
        };
        if asset.size == 0 || asset.size > MAX_SOUND_ASSET_BYTES {
            return Err(DecodeError::Invalid("sound asset size"));
        }
        if asset.duration_ms == 0 || asset.duration_ms > MAX_SOUND_DURATION_MS {
            return Err(DecodeError::Invalid("sound duration"));
        }
        Ok(Self {
            name,
            emoji,
            volume,
            asset,
        })
    }
}

impl Encode for EmojiId {
    fn encode(&self, w: &mut Writer) {
        w.u64(self.0);
    }
}
impl Decode for EmojiId {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self(r.u64()?))
    }
}

impl Encode for Emoji {
    fn encode(&self, w: &mut Writer) {
        put_str(w, &self.name);
        w.put(&self.image.root);
        w.put(&self.image.key);
        w.u64(self.image.size);
        w.put(&self.image.header);
        w.put(&self.image.sha256);
    }
}
impl Decode for Emoji {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = read_str(r, "emoji name", MAX_EMOJI_NAME_CHARS)?;
        check_emoji_name(&name).map_err(DecodeError::Invalid)?;
        let image = EmojiImage {
            root: r.array()?,
            key: r.array()?,
            size: r.u64()?,
            header: r.array()?,
            sha256: r.array()?,
        };
        if image.size == 0 || image.size > MAX_EMOJI_IMAGE_BYTES {
            return Err(DecodeError::Invalid("emoji image size"));
        }
        Ok(Self { name, image })
    }
}

impl Encode for Settings {
    fn encode(&self, w: &mut Writer) {
        w.bool(self.history_visible_to_new_members);
        w.u32(self.default_disappearing_secs);
        w.u64(self.max_upload_bytes);
    }
}
impl Decode for Settings {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            history_visible_to_new_members: r.bool()?,
            default_disappearing_secs: r.u32()?,
            max_upload_bytes: r.u64()?,
        })
    }
}

impl Encode for DeviceCert {
    fn encode(&self, w: &mut Writer) {
        self.user.encode(w);
        self.device.encode(w);
        self.sig.encode(w);
    }
}
impl Decode for DeviceCert {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_with(r, &mut NoCache)
    }
}
impl DeviceCert {
    pub(crate) fn decode_with(
        r: &mut Reader<'_>,
        keys: &mut impl KeySource,
    ) -> Result<Self, DecodeError> {
        Ok(Self {
            user: keys.root(r)?,
            device: keys.device(r)?,
            sig: Signature::decode(r)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ops::GuildOp;

    fn channel(disappearing_secs: u32) -> Channel {
        Channel {
            kind: ChannelKind::Text,
            name: "general".into(),
            topic: String::new(),
            parent: None,
            position: 0,
            overwrites: Vec::new(),
            slow_mode_secs: 5,
            bitrate: 0,
            user_limit: 0,
            disappearing_secs,
        }
    }

    #[test]
    fn a_channel_timer_has_its_own_op_tag_and_exact_encodings() {
        let plain = GuildOp::PutChannel(ChannelId(7), channel(0)).to_bytes();
        let timed = GuildOp::PutChannel(ChannelId(7), channel(3600)).to_bytes();
        // Channels without a timer encode as before; a timed one is tag 21 plus four bytes.
        assert_eq!(plain[1], 9);
        assert_eq!(timed[1], 21);
        assert_eq!(timed.len(), plain.len() + 4);
        assert_eq!(&timed[2..plain.len()], &plain[2..]);
        for (b, ch) in [(&plain, channel(0)), (&timed, channel(3600))] {
            assert_eq!(
                GuildOp::from_bytes(b).unwrap(),
                GuildOp::PutChannel(ChannelId(7), ch)
            );
            for n in 0..b.len() {
                assert!(GuildOp::from_bytes(&b[..n]).is_err(), "truncated to {n}");
            }
        }
        // A timer tag with a zero timer is refused.
        let mut zero = timed.clone();
        let l = zero.len();
        zero[l - 4..].copy_from_slice(&[0; 4]);
        assert!(GuildOp::from_bytes(&zero).is_err());
    }
}
