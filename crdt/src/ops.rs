//! Guild operations and how they sit inside Automerge changes.
//!
//! Every Automerge change of a guild document consists only of `put` operations on the root map.
//! Each put writes one [`GuildOp`]: the key is the op's *slot* (a path such as `role/<id>` or
//! `member/<user>/role/<id>`, see [`GuildOp::slot`]) and the value is `Bytes` holding the op's
//! versioned encoding. [`ops_of`] turns a change back into its ops and rejects the whole change
//! if any Automerge op is something else (another object, a delete, an insert, a non-bytes
//! value), if a value does not decode strictly, if a key is not the slot of its op, if a slot is
//! written twice, or if the change carries a message or extra bytes. The Automerge document is
//! therefore a readable last-writer-wins map of the latest op per slot, and the slots are exactly
//! the paths a change touches, which is what authorization judges.

use std::collections::BTreeSet;

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::{Change, ScalarValue};
use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use securecomm_noise::keys::DevicePublicKey;
use thiserror::Error;

use crate::invite::InviteToken;
use crate::schema::{
    Channel, ChannelId, DeviceCert, Emoji, EmojiId, InviteCode, KeySource, MAX_NAME, MAX_REASON,
    NoCache, Role, RoleId, Settings, Sound, SoundId, UserId, push_hex, put_str, read_str,
};

/// Version byte of an encoded [`GuildOp`].
pub const OP_VERSION: u8 = 1;
/// Most ops in one change.
pub const MAX_OPS_PER_CHANGE: usize = 512;

/// One typed modification of the guild.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // ops are decoded once per change and kept; no hot copies
pub enum GuildOp {
    /// Creates the guild: its name and owner. Only in the genesis change.
    Genesis {
        /// Guild name.
        name: String,
        /// The owner's certificate for the device authoring the genesis.
        owner: DeviceCert,
        /// Random bytes, so two guilds with the same owner, name and time differ.
        nonce: [u8; 16],
    },
    /// Renames the guild (`MANAGE_GUILD`).
    SetName(String),
    /// Sets or clears the icon reference, a content hash (`MANAGE_GUILD`).
    SetIcon(Option<[u8; 32]>),
    /// Replaces the settings (`MANAGE_GUILD`).
    SetSettings(Settings),
    /// Makes another member the owner (owner only).
    TransferOwnership(UserId),
    /// Creates or replaces a role (`MANAGE_ROLES`, below the author's rank).
    PutRole(RoleId, Role),
    /// Deletes a role (`MANAGE_ROLES`, below the author's rank).
    DeleteRole(RoleId),
    /// Gives a member a role (`MANAGE_ROLES`, role below the author's rank).
    GrantRole(UserId, RoleId),
    /// Takes a role from a member (`MANAGE_ROLES`, role below the author's rank).
    RevokeRole(UserId, RoleId),
    /// Creates or replaces a channel (`MANAGE_CHANNELS`; changing overwrites also needs
    /// `MANAGE_ROLES` in that channel).
    PutChannel(ChannelId, Channel),
    /// Deletes a channel (`MANAGE_CHANNELS` in that channel).
    DeleteChannel(ChannelId),
    /// Records an invite (`CREATE_INSTANT_INVITE`; the creator is the author).
    CreateInvite(InviteCode, crate::schema::Invite),
    /// Revokes an invite (its creator, or `MANAGE_GUILD`).
    RevokeInvite(InviteCode),
    /// Joins through an invite: authored by the joining device, alone in its change.
    Redeem {
        /// The signed invite.
        token: InviteToken,
        /// The joiner's certificate for the authoring device.
        cert: DeviceCert,
        /// Initial nickname.
        nickname: String,
    },
    /// Removes a member of lower rank (`KICK_MEMBERS`).
    Kick(UserId),
    /// Bans a user, removing them if a member (`BAN_MEMBERS`, lower rank).
    Ban(UserId, String),
    /// Lifts a ban (`BAN_MEMBERS`).
    Unban(UserId),
    /// The author leaves (not the owner).
    Leave(UserId),
    /// The author changes its own nickname.
    SetNickname(UserId, String),
    /// The author registers another of its devices.
    AddDevice(DeviceCert),
    /// The author removes one of its devices.
    RemoveDevice(UserId, DevicePublicKey),
    /// Adds or replaces a soundboard sound (`MANAGE_GUILD`; at most
    /// [`crate::schema::MAX_SOUNDS`] in the library).
    PutSound(SoundId, Sound),
    /// Removes a soundboard sound (`MANAGE_GUILD`).
    DeleteSound(SoundId),
    /// Adds or replaces a custom emoji (`MANAGE_GUILD`; a name no other emoji of the guild has;
    /// at most [`crate::schema::MAX_EMOJIS`]).
    PutEmoji(EmojiId, Emoji),
    /// Removes a custom emoji (`MANAGE_GUILD`).
    DeleteEmoji(EmojiId),
    /// Server-mutes (`true`) or unmutes a member in every voice channel of the guild
    /// (`MUTE_MEMBERS`, lower rank; not the owner, not oneself).
    SetVoiceMute(UserId, bool),
}

impl GuildOp {
    /// The root-map key this op is written under: the path it touches.
    pub fn slot(&self) -> String {
        let mut out = String::with_capacity(160);
        self.write_slot(&mut out);
        out
    }

    /// Writes [`GuildOp::slot`] into `out` (cleared first), so a decoder can compare slots
    /// with keys without allocating one string per op.
    pub(crate) fn write_slot(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.clear();
        // `fmt::Write` for `String` never fails.
        let _ = match self {
            Self::Genesis { .. } => out.write_str("genesis"),
            Self::SetName(_) => out.write_str("guild/name"),
            Self::SetIcon(_) => out.write_str("guild/icon"),
            Self::SetSettings(_) => out.write_str("guild/settings"),
            Self::TransferOwnership(_) => out.write_str("guild/owner"),
            Self::PutRole(id, _) | Self::DeleteRole(id) => write!(out, "role/{}", id.0),
            Self::GrantRole(u, r) | Self::RevokeRole(u, r) => {
                out.push_str("member/");
                push_hex(out, u.as_bytes());
                write!(out, "/role/{}", r.0)
            }
            Self::PutChannel(id, _) | Self::DeleteChannel(id) => write!(out, "channel/{}", id.0),
            Self::PutSound(id, _) | Self::DeleteSound(id) => write!(out, "sound/{}", id.0),
            Self::PutEmoji(id, _) | Self::DeleteEmoji(id) => write!(out, "emoji/{}", id.0),
            Self::CreateInvite(c, _) | Self::RevokeInvite(c) => {
                out.push_str("invite/");
                push_hex(out, &c.0);
                Ok(())
            }
            Self::Redeem { cert, .. } => {
                out.push_str("member/");
                push_hex(out, cert.user.as_bytes());
                Ok(())
            }
            Self::Kick(u) | Self::Leave(u) => {
                out.push_str("member/");
                push_hex(out, u.as_bytes());
                Ok(())
            }
            Self::Ban(u, _) | Self::Unban(u) => {
                out.push_str("ban/");
                push_hex(out, u.as_bytes());
                Ok(())
            }
            Self::SetNickname(u, _) => {
                out.push_str("member/");
                push_hex(out, u.as_bytes());
                out.write_str("/nick")
            }
            Self::SetVoiceMute(u, _) => {
                out.push_str("member/");
                push_hex(out, u.as_bytes());
                out.write_str("/voice-mute")
            }
            Self::AddDevice(c) => {
                out.push_str("member/");
                push_hex(out, c.user.as_bytes());
                out.push_str("/device/");
                push_hex(out, c.device.as_bytes());
                Ok(())
            }
            Self::RemoveDevice(u, d) => {
                out.push_str("member/");
                push_hex(out, u.as_bytes());
                out.push_str("/device/");
                push_hex(out, d.as_bytes());
                Ok(())
            }
        };
    }

    fn tag(&self) -> u8 {
        match self {
            Self::Genesis { .. } => 0,
            Self::SetName(_) => 1,
            Self::SetIcon(_) => 2,
            Self::SetSettings(_) => 3,
            Self::TransferOwnership(_) => 4,
            Self::PutRole(..) => 5,
            Self::DeleteRole(_) => 6,
            Self::GrantRole(..) => 7,
            Self::RevokeRole(..) => 8,
            // A channel with a disappearing timer (added after the first schema) has its own
            // tag, so channels without one encode exactly as before and every encoding has
            // one length.
            Self::PutChannel(_, ch) if ch.disappearing_secs != 0 => 21,
            Self::PutChannel(..) => 9,
            Self::DeleteChannel(_) => 10,
            Self::CreateInvite(..) => 11,
            Self::RevokeInvite(_) => 12,
            Self::Redeem { .. } => 13,
            Self::Kick(_) => 14,
            Self::Ban(..) => 15,
            Self::Unban(_) => 16,
            Self::Leave(_) => 17,
            Self::SetNickname(..) => 18,
            Self::AddDevice(_) => 19,
            Self::RemoveDevice(..) => 20,
            Self::PutSound(..) => 22,
            Self::DeleteSound(_) => 23,
            Self::PutEmoji(..) => 24,
            Self::DeleteEmoji(_) => 25,
            Self::SetVoiceMute(..) => 26,
        }
    }
}

impl Encode for GuildOp {
    fn encode(&self, w: &mut Writer) {
        w.u8(OP_VERSION);
        w.u8(self.tag());
        match self {
            Self::Genesis { name, owner, nonce } => {
                put_str(w, name);
                owner.encode(w);
                w.put(nonce);
            }
            Self::SetName(n) => put_str(w, n),
            Self::SetIcon(i) => match i {
                None => w.u8(0),
                Some(h) => {
                    w.u8(1);
                    w.put(h);
                }
            },
            Self::SetSettings(s) => s.encode(w),
            Self::TransferOwnership(u) | Self::Kick(u) | Self::Unban(u) | Self::Leave(u) => {
                u.encode(w)
            }
            Self::PutRole(id, role) => {
                id.encode(w);
                role.encode(w);
            }
            Self::DeleteRole(id) => id.encode(w),
            Self::GrantRole(u, r) | Self::RevokeRole(u, r) => {
                u.encode(w);
                r.encode(w);
            }
            Self::PutChannel(id, ch) => {
                id.encode(w);
                ch.encode(w);
                if ch.disappearing_secs != 0 {
                    w.u32(ch.disappearing_secs);
                }
            }
            Self::DeleteChannel(id) => id.encode(w),
            Self::CreateInvite(c, inv) => {
                c.encode(w);
                inv.encode(w);
            }
            Self::RevokeInvite(c) => c.encode(w),
            Self::Redeem {
                token,
                cert,
                nickname,
            } => {
                token.encode(w);
                cert.encode(w);
                put_str(w, nickname);
            }
            Self::Ban(u, reason) => {
                u.encode(w);
                put_str(w, reason);
            }
            Self::SetNickname(u, n) => {
                u.encode(w);
                put_str(w, n);
            }
            Self::AddDevice(c) => c.encode(w),
            Self::RemoveDevice(u, d) => {
                u.encode(w);
                d.encode(w);
            }
            Self::PutSound(id, sound) => {
                id.encode(w);
                sound.encode(w);
            }
            Self::DeleteSound(id) => id.encode(w),
            Self::PutEmoji(id, emoji) => {
                id.encode(w);
                emoji.encode(w);
            }
            Self::DeleteEmoji(id) => id.encode(w),
            Self::SetVoiceMute(u, on) => {
                u.encode(w);
                w.bool(*on);
            }
        }
    }
}

impl Decode for GuildOp {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_with(r, &mut NoCache)
    }
}

impl GuildOp {
    /// [`Decode::decode`] with keys from `keys` (see [`KeySource`]).
    pub fn decode_with(r: &mut Reader<'_>, keys: &mut impl KeySource) -> Result<Self, DecodeError> {
        r.version("guild op", OP_VERSION)?;
        let tag = r.u8()?;
        Ok(match tag {
            0 => Self::Genesis {
                name: read_str(r, "guild name", MAX_NAME)?,
                owner: DeviceCert::decode_with(r, keys)?,
                nonce: r.array()?,
            },
            1 => Self::SetName(read_str(r, "guild name", MAX_NAME)?),
            2 => Self::SetIcon(match r.u8()? {
                0 => None,
                1 => Some(r.array()?),
                got => {
                    return Err(DecodeError::UnknownTag {
                        what: "icon",
                        got: u64::from(got),
                    });
                }
            }),
            3 => Self::SetSettings(Settings::decode(r)?),
            4 => Self::TransferOwnership(keys.root(r)?),
            5 => Self::PutRole(RoleId::decode(r)?, Role::decode(r)?),
            6 => Self::DeleteRole(RoleId::decode(r)?),
            7 => Self::GrantRole(keys.root(r)?, RoleId::decode(r)?),
            8 => Self::RevokeRole(keys.root(r)?, RoleId::decode(r)?),
            9 => Self::PutChannel(ChannelId::decode(r)?, Channel::decode_with(r, keys)?),
            21 => {
                let id = ChannelId::decode(r)?;
                let mut ch = Channel::decode_with(r, keys)?;
                ch.disappearing_secs = match r.u32()? {
                    0 => return Err(DecodeError::Invalid("channel timer 0 with a timer tag")),
                    t => t,
                };
                Self::PutChannel(id, ch)
            }
            10 => Self::DeleteChannel(ChannelId::decode(r)?),
            11 => Self::CreateInvite(
                InviteCode::decode(r)?,
                crate::schema::Invite::decode_with(r, keys)?,
            ),
            12 => Self::RevokeInvite(InviteCode::decode(r)?),
            13 => Self::Redeem {
                token: InviteToken::decode_with(r, keys)?,
                cert: DeviceCert::decode_with(r, keys)?,
                nickname: read_str(r, "nickname", MAX_REASON)?,
            },
            14 => Self::Kick(keys.root(r)?),
            15 => Self::Ban(keys.root(r)?, read_str(r, "ban reason", MAX_REASON)?),
            16 => Self::Unban(keys.root(r)?),
            17 => Self::Leave(keys.root(r)?),
            18 => Self::SetNickname(keys.root(r)?, read_str(r, "nickname", MAX_REASON)?),
            19 => Self::AddDevice(DeviceCert::decode_with(r, keys)?),
            20 => Self::RemoveDevice(keys.root(r)?, keys.device(r)?),
            22 => Self::PutSound(SoundId::decode(r)?, Sound::decode(r)?),
            23 => Self::DeleteSound(SoundId::decode(r)?),
            24 => Self::PutEmoji(EmojiId::decode(r)?, Emoji::decode(r)?),
            25 => Self::DeleteEmoji(EmojiId::decode(r)?),
            26 => Self::SetVoiceMute(keys.root(r)?, r.bool()?),
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "guild op",
                    got: u64::from(got),
                });
            }
        })
    }
}

/// Why an Automerge change is not a well-formed list of guild ops.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpsError {
    /// The change has no ops, or more than [`MAX_OPS_PER_CHANGE`].
    #[error("expected 1 to {MAX_OPS_PER_CHANGE} ops in a change, got {0}")]
    Count(usize),
    /// An Automerge op is not a non-insert put of bytes on the root map.
    #[error("op {0}: expected a put of bytes on the root map")]
    NotAPut(usize),
    /// An op's value does not decode.
    #[error("op {index}: {error}")]
    Decode {
        /// Which op.
        index: usize,
        /// Why.
        error: DecodeError,
    },
    /// An op's key is not the slot its value names.
    #[error("op {index}: expected key {expected}, got {got}")]
    WrongSlot {
        /// Which op.
        index: usize,
        /// The op's slot.
        expected: String,
        /// The key it was written under.
        got: String,
    },
    /// Two ops of one change write the same slot.
    #[error("slot {0} written twice in one change")]
    DuplicateSlot(String),
    /// The change has a commit message or extra bytes, which guild changes never carry.
    #[error("expected no message or extra bytes in a guild change")]
    ExtraData,
}

/// Decodes the guild ops of `change`, rejecting anything that is not exactly a list of ops.
pub fn ops_of(change: &Change) -> Result<Vec<GuildOp>, OpsError> {
    ops_of_with(change, &mut NoCache)
}

/// [`ops_of`] with keys from `keys` (see [`KeySource`]).
pub fn ops_of_with(change: &Change, keys: &mut impl KeySource) -> Result<Vec<GuildOp>, OpsError> {
    if change.message().is_some() || !change.extra_bytes().is_empty() {
        return Err(OpsError::ExtraData);
    }
    let n = change.len();
    if n == 0 || n > MAX_OPS_PER_CHANGE {
        return Err(OpsError::Count(n));
    }
    let expanded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode()))
        .map_err(|_| OpsError::NotAPut(0))?;
    // Keys already seen, to refuse a slot written twice; a change of one op (most of them)
    // needs no set. Each key equals its op's slot once checked, so the set holds keys.
    let mut slots: BTreeSet<&str> = BTreeSet::new();
    let mut slot = String::with_capacity(160);
    let mut out = Vec::with_capacity(expanded.operations.len());
    for (index, op) in expanded.operations.iter().enumerate() {
        let (key, bytes) = match (&op.obj, &op.key, &op.action, op.insert) {
            (ObjectId::Root, Key::Map(k), OpType::Put(ScalarValue::Bytes(b)), false) => (k, b),
            _ => return Err(OpsError::NotAPut(index)),
        };
        let gop = {
            let mut r = Reader::new(bytes);
            GuildOp::decode_with(&mut r, keys)
                .and_then(|op| r.finish().map(|()| op))
                .map_err(|error| OpsError::Decode { index, error })?
        };
        gop.write_slot(&mut slot);
        if slot.as_str() != key.as_str() {
            return Err(OpsError::WrongSlot {
                index,
                expected: slot,
                got: key.to_string(),
            });
        }
        if n > 1 && !slots.insert(key.as_str()) {
            return Err(OpsError::DuplicateSlot(slot));
        }
        out.push(gop);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::num::NonZeroU64;

    use automerge::ExpandedChange;
    use automerge::legacy::{Key, ObjectId, OpType};
    use securecomm_noise::keys::{DeviceSigningKey, RootSigningKey};

    use super::*;
    use crate::perms::Permissions;

    /// A change of `(key, op)` puts on the root map, as [`crate::Guild`] builds them.
    fn change_of(puts: &[(&str, &GuildOp)]) -> Change {
        let operations = puts
            .iter()
            .map(|(key, op)| automerge::legacy::Op {
                action: OpType::Put(ScalarValue::Bytes(op.to_bytes())),
                obj: ObjectId::Root,
                key: Key::Map((*key).into()),
                pred: Vec::new().into(),
                insert: false,
            })
            .collect();
        Change::from(ExpandedChange {
            operations,
            actor_id: automerge::ActorId::from([7u8; 32].as_slice()),
            hash: None,
            seq: 1,
            start_op: NonZeroU64::MIN,
            time: 0,
            message: None,
            deps: Vec::new(),
            extra_bytes: Vec::new(),
            author: None,
        })
    }

    fn user() -> UserId {
        RootSigningKey::from_seed(&[1; 32]).public()
    }

    /// The slots are the wire keys every replica checks: pinned as strings.
    #[test]
    fn slots_are_fixed_strings() {
        let u = user();
        let d = DeviceSigningKey::from_seed(&[2; 32]).public();
        let uh: String = u.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let dh: String = d.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let cases = [
            (GuildOp::SetName("x".into()), "guild/name".to_string()),
            (GuildOp::SetIcon(None), "guild/icon".into()),
            (GuildOp::TransferOwnership(u), "guild/owner".into()),
            (GuildOp::DeleteRole(RoleId(250)), "role/250".into()),
            (
                GuildOp::GrantRole(u, RoleId(17)),
                format!("member/{uh}/role/17"),
            ),
            (
                GuildOp::RevokeRole(u, RoleId(0)),
                format!("member/{uh}/role/0"),
            ),
            (
                GuildOp::DeleteChannel(ChannelId(u64::MAX)),
                format!("channel/{}", u64::MAX),
            ),
            (
                GuildOp::RevokeInvite(InviteCode([0xab; 16])),
                format!("invite/{}", "ab".repeat(16)),
            ),
            (GuildOp::Kick(u), format!("member/{uh}")),
            (GuildOp::Leave(u), format!("member/{uh}")),
            (GuildOp::Ban(u, "r".into()), format!("ban/{uh}")),
            (GuildOp::Unban(u), format!("ban/{uh}")),
            (
                GuildOp::SetNickname(u, "n".into()),
                format!("member/{uh}/nick"),
            ),
            (
                GuildOp::SetVoiceMute(u, true),
                format!("member/{uh}/voice-mute"),
            ),
            (
                GuildOp::RemoveDevice(u, d),
                format!("member/{uh}/device/{dh}"),
            ),
            (GuildOp::DeleteSound(SoundId(42)), "sound/42".into()),
            (GuildOp::DeleteEmoji(EmojiId(7)), "emoji/7".into()),
        ];
        let mut buf = String::from("left over from an earlier op");
        for (op, want) in cases {
            assert_eq!(op.slot(), want);
            op.write_slot(&mut buf);
            assert_eq!(buf, want);
        }
    }

    #[test]
    fn ops_of_decodes_a_change_of_several_ops() {
        let ops = [
            GuildOp::SetName("guild".into()),
            GuildOp::GrantRole(user(), RoleId(3)),
            GuildOp::DeleteRole(RoleId(9)),
        ];
        let slots: Vec<String> = ops.iter().map(GuildOp::slot).collect();
        let puts: Vec<(&str, &GuildOp)> = slots.iter().map(String::as_str).zip(&ops).collect();
        assert_eq!(ops_of(&change_of(&puts)).unwrap(), ops.to_vec());
    }

    #[test]
    fn ops_of_refuses_an_op_under_another_slot() {
        let a = GuildOp::SetName("guild".into());
        let b = GuildOp::DeleteRole(RoleId(9));
        let change = change_of(&[("guild/name", &a), ("role/8", &b)]);
        assert_eq!(
            ops_of(&change),
            Err(OpsError::WrongSlot {
                index: 1,
                expected: "role/9".into(),
                got: "role/8".into(),
            })
        );
    }

    #[test]
    fn ops_of_refuses_a_slot_written_twice() {
        let a = GuildOp::PutRole(
            RoleId(4),
            crate::schema::Role {
                name: "r".into(),
                colour: 0,
                position: 1,
                permissions: Permissions::NONE,
                mentionable: false,
                hoisted: false,
            },
        );
        let b = GuildOp::DeleteRole(RoleId(4));
        let n = GuildOp::SetName("g".into());
        let change = change_of(&[("role/4", &a), ("guild/name", &n), ("role/4", &b)]);
        assert_eq!(
            ops_of(&change),
            Err(OpsError::DuplicateSlot("role/4".into()))
        );
        // The first error in op order wins: a duplicate before a wrong slot.
        let change = change_of(&[
            ("role/4", &a),
            ("role/4", &b),
            ("guild/name", &GuildOp::SetIcon(None)),
        ]);
        assert_eq!(
            ops_of(&change),
            Err(OpsError::DuplicateSlot("role/4".into()))
        );
    }
}
