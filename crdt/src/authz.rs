//! Authorization of one change against the state of its causal past.
//!
//! [`authorize`] judges a change as a whole: every op must be allowed to its author in the view
//! built from the change's dependencies, or the whole change is refused. It also returns what
//! the conflict rules need to know about the change ([`Effects`]): which members or roles it
//! restricts (removal, ban, role revocation, lowering a role's permissions or position, handing
//! ownership away, revoking an invite) and what it (re-)adds.

use std::collections::HashSet;

use securecomm_noise::codec::Encode;
use securecomm_noise::keys::DevicePublicKey;
use thiserror::Error;

use crate::invite::InviteToken;
use crate::ops::GuildOp;
use crate::perms::Permissions;
use crate::schema::{
    Channel, ChannelKind, DeviceCert, EmojiId, InviteCode, MAX_DEVICES, MAX_EMOJIS, MAX_SOUNDS,
    RoleId, UserId,
};
use crate::verify::{SigItem, verify_each_threads};
use crate::view::GuildView;

/// Why a change is not authorized in its causal past.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthzError {
    /// The authoring device belongs to no member (never joined, removed, or banned).
    #[error("author device is not a member's device")]
    NotAMember,
    /// The author lacks a permission an op needs.
    #[error("op {index}: expected permission {needed:?}, author has {has:?}")]
    MissingPermission {
        /// Which op.
        index: usize,
        /// What it needs.
        needed: Permissions,
        /// What the author has there.
        has: Permissions,
    },
    /// The op acts on a role or member at or above the author's rank.
    #[error("op {index}: target rank {target} is not below author rank {author}")]
    Hierarchy {
        /// Which op.
        index: usize,
        /// The author's rank.
        author: u32,
        /// The target's rank.
        target: u32,
    },
    /// Only the owner may do this (transfer ownership), or nobody may do it to the owner.
    #[error("op {0}: owner-only, or targets the owner")]
    Owner(usize),
    /// The op is malformed for this state (unknown target, genesis outside the genesis change,
    /// a redemption mixed with other ops, acting for another user, ...).
    #[error("op {index}: {why}")]
    Invalid {
        /// Which op.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// The invite cannot be redeemed (unknown, revoked, exhausted, expired, bad token).
    #[error("invite refused: {0}")]
    Invite(&'static str),
    /// The joining user is banned.
    #[error("user is banned")]
    Banned,
}

/// What a change does that the conflict rules care about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// The author's user.
    pub author: Option<UserId>,
    /// Whether the author was the owner in the causal past.
    pub author_is_owner: bool,
    /// Restrictions it imposes.
    pub restricts: Vec<Restriction>,
    /// Things it (re-)adds.
    pub adds: Vec<Addition>,
    /// Whether it transfers ownership.
    pub transfers_ownership: bool,
    /// Whether every op is a removal or demotion of one single user (for mutual removals).
    pub only_restricts: Option<UserId>,
}

/// A restriction: removing or demoting someone, or revoking an invite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restriction {
    /// Kicked or banned.
    Remove(UserId),
    /// A role taken away.
    RevokeRole(UserId, RoleId),
    /// A role lost permission bits, was moved down, or was deleted.
    ReduceRole(RoleId),
    /// Ownership handed away from this user.
    Ownership(UserId),
    /// Invite revoked.
    RevokeInvite(InviteCode),
}

/// An addition that loses when it races the matching removal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addition {
    /// A user (re-)joins or is unbanned.
    Member(UserId),
    /// A role given to a member.
    Role(UserId, RoleId),
    /// An invite redeemed.
    Redeem(InviteCode),
}

/// Most invite tokens remembered as verified by one [`SigChecks`].
pub const MAX_VERIFIED_TOKENS: usize = 1024;

/// How [`authorize`] checks the signatures inside ops (device certificates, invite tokens).
///
/// Signature validity is a pure function of the signed bytes, so remembering a verified
/// signature changes no decision: it only avoids verifying the same bytes twice. Only successes
/// are remembered, each keyed by the **whole** signed object (a certificate's user, device and
/// signature; a token's whole encoding), so a remembered certificate vouches for exactly one
/// (user, device) pair and nothing else, and the cache belongs to one replica of one guild.
///
/// * Invite tokens: verified tokens are remembered (bounded by [`MAX_VERIFIED_TOKENS`], forgotten
///   when full), so a token shared by many joiners is verified once, not once per join.
/// * Device certificates: [`SigChecks::preverify`] batch-verifies the certificates of the
///   redemptions and genesis in a received batch ([`crate::verify`]) before authorization looks
///   at them one by one; the successes are kept until [`SigChecks::end_batch`]. Only
///   certificates that authorization is certain to check are pre-verified (the certificate of
///   a change's single redemption or genesis op, for the authoring device), so a peer cannot
///   make a replica verify certificates that authorization would never have looked at.
///
/// [`SigChecks::trusted`] skips signature checks entirely. It exists for
/// [`crate::Guild::load_trusted`] only: replaying changes this replica already verified and
/// then stored itself. Network input never goes through it.
#[derive(Debug, Default)]
pub struct SigChecks {
    trusted: bool,
    tokens: HashSet<Vec<u8>>,
    certs: HashSet<[u8; 128]>,
    threads: usize,
}

impl SigChecks {
    /// Verifies every signature, remembering verified invite tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// Skips every signature check (input previously verified by this replica).
    pub(crate) fn trusted() -> Self {
        Self {
            trusted: true,
            ..Self::default()
        }
    }

    /// Whether signature checks are skipped.
    pub(crate) fn is_trusted(&self) -> bool {
        self.trusted
    }

    /// Threads [`SigChecks::preverify`] may use (see [`crate::verify::verify_each_threads`]).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads;
    }

    /// Batch-verifies the device certificates that authorization will check for these changes
    /// (each given as its authoring device and ops) and remembers the valid ones until
    /// [`SigChecks::end_batch`]. Invalid ones are not remembered: authorization verifies them
    /// again on its own and refuses them, so the decision is the single-verification one.
    pub fn preverify<'a>(
        &mut self,
        changes: impl IntoIterator<Item = (&'a DevicePublicKey, &'a [GuildOp])>,
    ) {
        if self.trusted {
            return;
        }
        let verified = verified_certs(changes, &self.certs, self.threads);
        self.remember_certs(verified);
    }

    /// Remembers certificates (by [`DeviceCert`] cache key) that verified, until
    /// [`SigChecks::end_batch`].
    pub(crate) fn remember_certs(&mut self, verified: Vec<[u8; 128]>) {
        self.certs.extend(verified);
    }

    /// Whether `cert` is remembered as verified (or checks are skipped).
    pub(crate) fn remembers_cert(&self, cert: &DeviceCert) -> bool {
        self.trusted || self.certs.contains(&cert.cache_key())
    }

    /// Forgets the pre-verified certificates (the end of a received batch).
    pub fn end_batch(&mut self) {
        self.certs = HashSet::new();
    }

    fn cert(&self, cert: &DeviceCert) -> bool {
        self.trusted || self.certs.contains(&cert.cache_key()) || cert.verify()
    }

    fn token(&mut self, token: &InviteToken) -> bool {
        if self.trusted {
            return true;
        }
        let key = token.to_bytes();
        if self.tokens.contains(&key) {
            return true;
        }
        if !token.verify() {
            return false;
        }
        if self.tokens.len() >= MAX_VERIFIED_TOKENS {
            self.tokens.clear();
        }
        self.tokens.insert(key);
        true
    }
}

/// The certificate [`SigChecks::preverify`] pre-verifies for a change by `author` made of
/// `ops`: that of its single redemption or genesis op, if it certifies the authoring device
/// (the one authorization is certain to check).
pub(crate) fn checked_cert<'a>(
    author: &DevicePublicKey,
    ops: &'a [GuildOp],
) -> Option<&'a DeviceCert> {
    let cert = match ops {
        [GuildOp::Redeem { cert, .. }] => cert,
        [GuildOp::Genesis { owner, .. }] => owner,
        _ => return None,
    };
    (&cert.device == author).then_some(cert)
}

/// The certificates [`SigChecks::preverify`] pre-verifies for `changes`, minus those in
/// `known`: batch-verified on up to `threads` threads, and the cache keys of the valid ones
/// returned.
fn verified_certs<'a>(
    changes: impl IntoIterator<Item = (&'a DevicePublicKey, &'a [GuildOp])>,
    known: &HashSet<[u8; 128]>,
    threads: usize,
) -> Vec<[u8; 128]> {
    let certs: Vec<&DeviceCert> = changes
        .into_iter()
        .filter_map(|(author, ops)| checked_cert(author, ops))
        .filter(|c| !known.contains(&c.cache_key()))
        .collect();
    let items: Vec<SigItem> = certs.iter().map(|c| c.sig_item()).collect();
    certs
        .iter()
        .zip(verify_each_threads(&items, threads))
        .filter(|(_, ok)| *ok)
        .map(|(c, _)| c.cache_key())
        .collect()
}

struct Judge<'a> {
    view: &'a GuildView,
    user: UserId,
    owner: bool,
    base: Permissions,
    rank: u32,
}

impl Judge<'_> {
    fn need(&self, index: usize, needed: Permissions, has: Permissions) -> Result<(), AuthzError> {
        if has.contains(needed) {
            Ok(())
        } else {
            Err(AuthzError::MissingPermission { index, needed, has })
        }
    }

    fn below(&self, index: usize, target: u32) -> Result<(), AuthzError> {
        if self.owner || target < self.rank {
            Ok(())
        } else {
            Err(AuthzError::Hierarchy {
                index,
                author: self.rank,
                target,
            })
        }
    }

    fn channel_perms(&self, ch: &Channel, id: Option<&crate::schema::ChannelId>) -> Permissions {
        match id.filter(|i| self.view.channels().contains_key(i)) {
            Some(i) => self.view.channel_permissions(&self.user, i),
            None => match ch.parent {
                Some(p) if self.view.channels().contains_key(&p) => {
                    self.view.channel_permissions(&self.user, &p)
                }
                _ => self.base,
            },
        }
    }

    fn act_on_member(&self, index: usize, target: &UserId) -> Result<(), AuthzError> {
        if self.view.is_owner(target) || *target == self.user {
            return Err(AuthzError::Owner(index));
        }
        self.below(index, self.view.rank(target))
    }
}

/// Judges `ops`, authored by `device` at `time`, against `view` (the state of the change's
/// causal past). `genesis` says whether this is the guild's genesis change.
pub fn authorize(
    view: &GuildView,
    device: &DevicePublicKey,
    time: u64,
    ops: &[GuildOp],
    genesis: bool,
) -> Result<Effects, AuthzError> {
    authorize_with(view, device, time, ops, genesis, &mut SigChecks::new())
}

/// [`authorize`] with a reusable signature-check context (see [`SigChecks`]).
pub fn authorize_with(
    view: &GuildView,
    device: &DevicePublicKey,
    time: u64,
    ops: &[GuildOp],
    genesis: bool,
    sigs: &mut SigChecks,
) -> Result<Effects, AuthzError> {
    // Genesis and redemption are authored by devices that are not members yet.
    if let [GuildOp::Genesis { owner, .. }] = ops {
        if !genesis || !sigs.cert(owner) || &owner.device != device {
            return Err(AuthzError::Invalid {
                index: 0,
                why: "genesis must be the guild's first change, by the certified owner device",
            });
        }
        return Ok(Effects {
            author: Some(owner.user),
            author_is_owner: true,
            ..Effects::default()
        });
    }
    if genesis {
        return Err(AuthzError::Invalid {
            index: 0,
            why: "the first change must be exactly one genesis op",
        });
    }
    if let [
        GuildOp::Redeem {
            token,
            cert,
            nickname: _,
        },
    ] = ops
    {
        return redeem(view, device, time, token, cert, sigs);
    }
    let user = *view.user_of_device(device).ok_or(AuthzError::NotAMember)?;
    let j = Judge {
        view,
        user,
        owner: view.is_owner(&user),
        base: view.base_permissions(&user),
        rank: view.rank(&user),
    };
    let mut fx = Effects {
        author: Some(user),
        author_is_owner: j.owner,
        ..Effects::default()
    };
    let mut only: Option<Option<UserId>> = None;
    let mut note_only = |t: Option<UserId>| {
        only = Some(match only {
            None => t,
            Some(prev) if prev == t => t,
            Some(_) => None,
        });
    };
    // Sounds this change adds to the library (a change may add several; the bound counts them).
    let mut new_sounds = 0usize;
    // Likewise for custom emoji, with the names this change gives them (names are unique).
    let mut new_emojis = 0usize;
    let mut emoji_names: Vec<(EmojiId, &str)> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let mut target_only = None;
        match op {
            GuildOp::Genesis { .. } | GuildOp::Redeem { .. } => {
                return Err(AuthzError::Invalid {
                    index,
                    why: "genesis and redemption must be alone in their change",
                });
            }
            GuildOp::SetName(_) | GuildOp::SetIcon(_) | GuildOp::SetSettings(_) => {
                j.need(index, Permissions::MANAGE_GUILD, j.base)?;
            }
            GuildOp::TransferOwnership(to) => {
                if !j.owner {
                    return Err(AuthzError::Owner(index));
                }
                if view.member(to).is_none() || *to == user {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "new owner must be another member",
                    });
                }
                fx.restricts.push(Restriction::Ownership(user));
                fx.transfers_ownership = true;
            }
            GuildOp::PutRole(id, role) => {
                j.need(index, Permissions::MANAGE_ROLES, j.base)?;
                let old = view.roles().get(id);
                if *id == RoleId::EVERYONE {
                    if role.position != 0 {
                        return Err(AuthzError::Invalid {
                            index,
                            why: "@everyone stays at position 0",
                        });
                    }
                } else {
                    if role.position == 0 {
                        return Err(AuthzError::Invalid {
                            index,
                            why: "position 0 is reserved for @everyone",
                        });
                    }
                    if let Some(o) = old {
                        j.below(index, u32::from(o.position))?;
                    }
                    j.below(index, u32::from(role.position))?;
                }
                let old_bits = old.map_or(Permissions::NONE, |o| o.permissions);
                let added = role.permissions.minus(old_bits);
                j.need(index, added, j.base)?;
                if let Some(o) = old
                    && (!role.permissions.contains(o.permissions) || role.position < o.position)
                {
                    fx.restricts.push(Restriction::ReduceRole(*id));
                }
            }
            GuildOp::DeleteRole(id) => {
                j.need(index, Permissions::MANAGE_ROLES, j.base)?;
                let Some(o) = view.roles().get(id).filter(|_| *id != RoleId::EVERYONE) else {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "no such deletable role",
                    });
                };
                j.below(index, u32::from(o.position))?;
                fx.restricts.push(Restriction::ReduceRole(*id));
            }
            GuildOp::GrantRole(u, r) | GuildOp::RevokeRole(u, r) => {
                j.need(index, Permissions::MANAGE_ROLES, j.base)?;
                let Some(role) = view.roles().get(r).filter(|_| *r != RoleId::EVERYONE) else {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "no such grantable role",
                    });
                };
                if view.member(u).is_none() {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "not a member",
                    });
                }
                j.below(index, u32::from(role.position))?;
                if matches!(op, GuildOp::GrantRole(..)) {
                    fx.adds.push(Addition::Role(*u, *r));
                } else {
                    fx.restricts.push(Restriction::RevokeRole(*u, *r));
                    target_only = Some(*u);
                }
            }
            GuildOp::PutChannel(id, ch) => {
                let here = j.channel_perms(ch, Some(id));
                j.need(index, Permissions::MANAGE_CHANNELS, here)?;
                let old = view.channels().get(id);
                if old.map(|o| &o.overwrites) != Some(&ch.overwrites)
                    && !(old.is_none() && ch.overwrites.is_empty())
                {
                    j.need(index, Permissions::MANAGE_ROLES, here)?;
                    for o in &ch.overwrites {
                        j.need(index, o.allow | o.deny, here)?;
                    }
                }
                if let Some(p) = ch.parent {
                    let parent_ok = ch.kind != ChannelKind::Category
                        && view
                            .channels()
                            .get(&p)
                            .is_some_and(|c| c.kind == ChannelKind::Category);
                    if !parent_ok {
                        return Err(AuthzError::Invalid {
                            index,
                            why: "parent must be an existing category",
                        });
                    }
                }
            }
            GuildOp::PutSound(id, _) => {
                j.need(index, Permissions::MANAGE_GUILD, j.base)?;
                if !view.sounds().contains_key(id) {
                    new_sounds += 1;
                    if view.sounds().len() + new_sounds > MAX_SOUNDS {
                        return Err(AuthzError::Invalid {
                            index,
                            why: "a guild holds at most 48 sounds",
                        });
                    }
                }
            }
            GuildOp::DeleteSound(id) => {
                j.need(index, Permissions::MANAGE_GUILD, j.base)?;
                if !view.sounds().contains_key(id) {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "no such sound",
                    });
                }
            }
            GuildOp::PutEmoji(id, emoji) => {
                j.need(index, Permissions::MANAGE_GUILD, j.base)?;
                let taken = view
                    .emojis()
                    .iter()
                    .any(|(other, e)| other != id && e.name == emoji.name)
                    || emoji_names
                        .iter()
                        .any(|(other, name)| other != id && *name == emoji.name);
                if taken {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "another emoji of the guild has that name",
                    });
                }
                if !view.emojis().contains_key(id) && !emoji_names.iter().any(|(o, _)| o == id) {
                    new_emojis += 1;
                    if view.emojis().len() + new_emojis > MAX_EMOJIS {
                        return Err(AuthzError::Invalid {
                            index,
                            why: "a guild holds at most 50 custom emoji",
                        });
                    }
                }
                emoji_names.push((*id, emoji.name.as_str()));
            }
            GuildOp::DeleteEmoji(id) => {
                j.need(index, Permissions::MANAGE_GUILD, j.base)?;
                if !view.emojis().contains_key(id) {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "no such emoji",
                    });
                }
            }
            GuildOp::DeleteChannel(id) => {
                if !view.channels().contains_key(id) {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "no such channel",
                    });
                }
                j.need(
                    index,
                    Permissions::MANAGE_CHANNELS,
                    view.channel_permissions(&user, id),
                )?;
            }
            GuildOp::CreateInvite(code, inv) => {
                j.need(index, Permissions::CREATE_INSTANT_INVITE, j.base)?;
                if inv.creator != user || view.invites().contains_key(code) {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "invite must be new and created by its author",
                    });
                }
            }
            GuildOp::RevokeInvite(code) => {
                let Some(inv) = view.invites().get(code) else {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "no such invite",
                    });
                };
                if inv.invite.creator != user {
                    j.need(index, Permissions::MANAGE_GUILD, j.base)?;
                }
                fx.restricts.push(Restriction::RevokeInvite(*code));
            }
            GuildOp::Kick(u) => {
                j.need(index, Permissions::KICK_MEMBERS, j.base)?;
                if view.member(u).is_none() {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "not a member",
                    });
                }
                j.act_on_member(index, u)?;
                fx.restricts.push(Restriction::Remove(*u));
                target_only = Some(*u);
            }
            GuildOp::Ban(u, _) => {
                j.need(index, Permissions::BAN_MEMBERS, j.base)?;
                if view.bans().contains_key(u) {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "already banned",
                    });
                }
                j.act_on_member(index, u)?;
                fx.restricts.push(Restriction::Remove(*u));
                target_only = Some(*u);
            }
            GuildOp::Unban(u) => {
                j.need(index, Permissions::BAN_MEMBERS, j.base)?;
                if !view.bans().contains_key(u) {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "not banned",
                    });
                }
                fx.adds.push(Addition::Member(*u));
            }
            GuildOp::Leave(u) => {
                if *u != user || j.owner {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "only a non-owner member leaves, and only itself",
                    });
                }
            }
            GuildOp::SetVoiceMute(u, _) => {
                j.need(index, Permissions::MUTE_MEMBERS, j.base)?;
                if view.member(u).is_none() {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "not a member",
                    });
                }
                j.act_on_member(index, u)?;
            }
            GuildOp::SetNickname(u, _) => {
                if *u != user {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "a member sets only its own nickname",
                    });
                }
            }
            GuildOp::AddDevice(cert) => {
                let full = view
                    .member(&user)
                    .is_some_and(|m| m.devices.len() >= MAX_DEVICES);
                if cert.user != user
                    || !sigs.cert(cert)
                    || full
                    || view.user_of_device(&cert.device).is_some()
                {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "device certificate must be the author's, valid and new",
                    });
                }
            }
            GuildOp::RemoveDevice(u, d) => {
                if *u != user || view.user_of_device(d) != Some(&user) {
                    return Err(AuthzError::Invalid {
                        index,
                        why: "a member removes only its own devices",
                    });
                }
            }
        }
        note_only(target_only);
    }
    fx.only_restricts = only.flatten();
    Ok(fx)
}

fn redeem(
    view: &GuildView,
    device: &DevicePublicKey,
    time: u64,
    token: &InviteToken,
    cert: &DeviceCert,
    sigs: &mut SigChecks,
) -> Result<Effects, AuthzError> {
    if &cert.device != device || !sigs.cert(cert) {
        return Err(AuthzError::Invalid {
            index: 0,
            why: "redemption must be authored by the certified joining device",
        });
    }
    if view.bans().contains_key(&cert.user) {
        return Err(AuthzError::Banned);
    }
    if view.member(&cert.user).is_some() || view.user_of_device(device).is_some() {
        return Err(AuthzError::Invalid {
            index: 0,
            why: "already a member",
        });
    }
    let Some(state) = view.invites().get(&token.code) else {
        return Err(AuthzError::Invite("unknown invite"));
    };
    if token.guild != view.guild() || token.invite != state.invite || !sigs.token(token) {
        return Err(AuthzError::Invite(
            "token does not match the recorded invite",
        ));
    }
    if view.user_of_device(&token.issuer) != Some(&state.invite.creator) {
        return Err(AuthzError::Invite(
            "token not signed by the creator's device",
        ));
    }
    if state.revoked {
        return Err(AuthzError::Invite("revoked"));
    }
    if state.invite.expires_at != 0 && time >= state.invite.expires_at {
        return Err(AuthzError::Invite("expired"));
    }
    if state.invite.max_uses != 0 && state.uses >= state.invite.max_uses {
        return Err(AuthzError::Invite("exhausted"));
    }
    Ok(Effects {
        author: Some(cert.user),
        adds: vec![Addition::Member(cert.user), Addition::Redeem(token.code)],
        ..Effects::default()
    })
}
