//! How a replica keeps accepted changes in memory: compactly.
//!
//! A decoded public key is 192 bytes (the point and its encoding), and a [`GuildOp`] is as large
//! as its largest variant (a redemption, about 1 KiB), so keeping every change's decoded ops
//! and effects as they come out of the decoder cost more than the Automerge document itself.
//! Each accepted change is instead stored with:
//!
//! * its users and devices as indices into one [`Interner`] per replica, where each key is held
//!   once (interning is by the key's bytes, which is exactly key equality);
//! * its ops as [`StoredOp`]: role grants and redemptions (the bulk of a large guild's history)
//!   keep only what the fold applies; anything else keeps the whole op, boxed;
//! * its conflict-relevant effects as [`NodeFx`], the same facts as [`Effects`] with indices.
//!
//! Nothing is lost that the fold or the conflict rules read, and everything else (signatures
//! inside ops, tokens) is still in the Automerge change, which the document keeps.

use std::collections::HashMap;

use securecomm_noise::codec::{DecodeError, Reader};
use securecomm_noise::keys::DevicePublicKey;

use crate::authz::{Addition, Effects, Restriction};
use crate::ops::GuildOp;
use crate::schema::{InviteCode, KeyCache, KeySource, RoleId, UserId};
use crate::view::{ApplyCtx, GuildView};

/// Each user and device key a replica's changes name, stored once.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    users: Vec<UserId>,
    user_ix: HashMap<[u8; 32], u32>,
    devices: Vec<DevicePublicKey>,
    device_ix: HashMap<[u8; 32], u32>,
}

impl Interner {
    pub(crate) fn user(&mut self, u: &UserId) -> u32 {
        let next = u32::try_from(self.users.len()).unwrap_or(u32::MAX);
        let i = *self.user_ix.entry(u.to_bytes()).or_insert(next);
        if i == next {
            self.users.push(*u);
        }
        i
    }

    pub(crate) fn device(&mut self, d: &DevicePublicKey) -> u32 {
        let next = u32::try_from(self.devices.len()).unwrap_or(u32::MAX);
        let i = *self.device_ix.entry(d.to_bytes()).or_insert(next);
        if i == next {
            self.devices.push(*d);
        }
        i
    }

    pub(crate) fn device_index(&self, d: &DevicePublicKey) -> Option<u32> {
        self.device_ix.get(d.as_bytes()).copied()
    }

    pub(crate) fn user_by_bytes(&self, b: &[u8; 32]) -> Option<&UserId> {
        self.users.get(*self.user_ix.get(b)? as usize)
    }

    pub(crate) fn device_by_bytes(&self, b: &[u8; 32]) -> Option<&DevicePublicKey> {
        self.devices.get(*self.device_ix.get(b)? as usize)
    }

    pub(crate) fn get_user(&self, i: u32) -> Option<&UserId> {
        self.users.get(i as usize)
    }

    pub(crate) fn get_device(&self, i: u32) -> Option<&DevicePublicKey> {
        self.devices.get(i as usize)
    }
}

/// Decodes keys from a replica's [`Interner`] when it knows them (every member's key, once it
/// joined), else through a per-batch [`KeyCache`]. Both hold only keys that decoded validly,
/// so the result is [`Decode`](securecomm_noise::codec::Decode)'s.
pub(crate) struct KnownKeys<'a> {
    pub known: &'a Interner,
    pub cache: &'a mut KeyCache,
}

impl KeySource for KnownKeys<'_> {
    fn root(&mut self, r: &mut Reader<'_>) -> Result<UserId, DecodeError> {
        let b: [u8; 32] = r.array()?;
        match self.known.user_by_bytes(&b) {
            Some(u) => Ok(*u),
            None => self.cache.root_from(b),
        }
    }
    fn device(&mut self, r: &mut Reader<'_>) -> Result<DevicePublicKey, DecodeError> {
        let b: [u8; 32] = r.array()?;
        match self.known.device_by_bytes(&b) {
            Some(d) => Ok(*d),
            None => self.cache.device_from(b),
        }
    }
    fn note_device(&mut self, key: DevicePublicKey) {
        self.cache.note_device(key);
    }
}

/// One op of an accepted change, as the fold needs it.
#[derive(Debug)]
pub(crate) enum StoredOp {
    /// [`GuildOp::GrantRole`].
    Grant(u32, RoleId),
    /// [`GuildOp::Redeem`]: the invite, the new member and device, the nickname.
    Redeem {
        code: InviteCode,
        user: u32,
        device: u32,
        nickname: Box<str>,
    },
    /// Any other op, whole.
    Other(Box<GuildOp>),
}

impl StoredOp {
    pub(crate) fn new(op: GuildOp, keys: &mut Interner) -> Self {
        match op {
            GuildOp::GrantRole(u, r) => Self::Grant(keys.user(&u), r),
            GuildOp::Redeem {
                token,
                cert,
                nickname,
            } => Self::Redeem {
                code: token.code,
                user: keys.user(&cert.user),
                device: keys.device(&cert.device),
                nickname: nickname.into_boxed_str(),
            },
            other => Self::Other(Box::new(other)),
        }
    }

    /// Applies the op to `view` exactly as [`GuildView::apply`] applies the original op.
    pub(crate) fn apply(&self, view: &mut GuildView, keys: &Interner, ctx: ApplyCtx) {
        match self {
            Self::Grant(u, r) => {
                if let Some(u) = keys.get_user(*u) {
                    view.grant_role(u, *r);
                }
            }
            Self::Redeem {
                code,
                user,
                device,
                nickname,
            } => {
                if let (Some(u), Some(d)) = (keys.get_user(*user), keys.get_device(*device)) {
                    view.redeem(code, *u, *d, nickname, ctx.time);
                }
            }
            Self::Other(op) => {
                view.apply(op, ctx);
            }
        }
    }
}

/// [`Restriction`] with interned users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rs {
    Remove(u32),
    RevokeRole(u32, RoleId),
    ReduceRole(RoleId),
    Ownership(u32),
    RevokeInvite(InviteCode),
}

/// [`Addition`] with interned users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ad {
    Member(u32),
    Role(u32, RoleId),
    Redeem(InviteCode),
}

/// [`Effects`] with interned users.
#[derive(Debug, Default)]
pub(crate) struct NodeFx {
    pub author: Option<u32>,
    pub author_is_owner: bool,
    pub transfers_ownership: bool,
    pub only_restricts: Option<u32>,
    pub restricts: Box<[Rs]>,
    pub adds: Box<[Ad]>,
}

impl NodeFx {
    pub(crate) fn new(fx: &Effects, keys: &mut Interner) -> Self {
        Self {
            author: fx.author.as_ref().map(|u| keys.user(u)),
            author_is_owner: fx.author_is_owner,
            transfers_ownership: fx.transfers_ownership,
            only_restricts: fx.only_restricts.as_ref().map(|u| keys.user(u)),
            restricts: fx
                .restricts
                .iter()
                .map(|r| match r {
                    Restriction::Remove(u) => Rs::Remove(keys.user(u)),
                    Restriction::RevokeRole(u, r) => Rs::RevokeRole(keys.user(u), *r),
                    Restriction::ReduceRole(r) => Rs::ReduceRole(*r),
                    Restriction::Ownership(u) => Rs::Ownership(keys.user(u)),
                    Restriction::RevokeInvite(c) => Rs::RevokeInvite(*c),
                })
                .collect(),
            adds: fx
                .adds
                .iter()
                .map(|a| match a {
                    Addition::Member(u) => Ad::Member(keys.user(u)),
                    Addition::Role(u, r) => Ad::Role(keys.user(u), *r),
                    Addition::Redeem(c) => Ad::Redeem(*c),
                })
                .collect(),
        }
    }
}
