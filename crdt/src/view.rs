//! The resolved view: the guild as every honest replica computes it.
//!
//! A [`GuildView`] is built only by folding accepted, effective changes in the canonical order
//! (see the crate docs), so it is a pure function of the set of accepted changes. Applying an op
//! here never checks authority (that was done against the change's causal past) but is total:
//! an op whose target vanished in a concurrent change (a kicked member, a deleted role) is a
//! no-op rather than an error, so the fold never fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use securecomm_noise::keys::DevicePublicKey;

use crate::ops::GuildOp;
use crate::perms::{self, Permissions};
use crate::schema::{
    Ban, Channel, ChannelId, DeviceSet, Emoji, EmojiId, GuildId, InviteCode, InviteState,
    MAX_DEVICES, MAX_EMOJIS, MAX_MEMBER_ROLES, MAX_SOUNDS, Member, Role, RoleId, Settings, Sound,
    SoundId, UserId,
};

/// Permissions of `@everyone` in a new guild (Discord's defaults for the listed bits).
pub const DEFAULT_EVERYONE: Permissions = Permissions::from_bits_truncate(
    Permissions::CREATE_INSTANT_INVITE.bits()
        | Permissions::ADD_REACTIONS.bits()
        | Permissions::VIEW_CHANNEL.bits()
        | Permissions::SEND_MESSAGES.bits()
        | Permissions::ATTACH_FILES.bits()
        | Permissions::MENTION_EVERYONE.bits()
        | Permissions::CONNECT.bits()
        | Permissions::SPEAK.bits()
        | Permissions::USE_SOUNDBOARD.bits(),
);

/// Rank of the owner: above every role position.
pub const OWNER_RANK: u32 = u32::MAX;

/// A membership change the node turns into a key-agreement operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A user became a member with these devices.
    Added {
        /// Who.
        user: UserId,
        /// Their devices.
        devices: Vec<DevicePublicKey>,
    },
    /// A member left or was kicked.
    Removed {
        /// Who.
        user: UserId,
    },
    /// A user was banned (and removed if a member).
    Banned {
        /// Who.
        user: UserId,
    },
    /// A member's device set changed.
    DevicesChanged {
        /// Who.
        user: UserId,
        /// The new device set.
        devices: Vec<DevicePublicKey>,
    },
}

/// Context an op is applied in: who authored it and when.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ApplyCtx {
    pub author: UserId,
    pub time: u64,
}

/// The resolved state of a guild.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuildView {
    guild: GuildId,
    name: String,
    icon: Option<[u8; 32]>,
    owner: Option<UserId>,
    settings: Settings,
    members: BTreeMap<UserId, Member>,
    /// Device bytes to member (a `DevicePublicKey` key would hold 192 bytes per entry).
    device_owner: HashMap<[u8; 32], UserId>,
    roles: BTreeMap<RoleId, Role>,
    channels: BTreeMap<ChannelId, Channel>,
    invites: BTreeMap<InviteCode, InviteState>,
    bans: BTreeMap<UserId, Ban>,
    sounds: BTreeMap<SoundId, Sound>,
    emojis: BTreeMap<EmojiId, Emoji>,
}

impl GuildView {
    /// The view before genesis: nothing, nobody.
    pub fn empty(guild: GuildId) -> Self {
        Self {
            guild,
            name: String::new(),
            icon: None,
            owner: None,
            settings: Settings::default(),
            members: BTreeMap::new(),
            device_owner: HashMap::new(),
            roles: BTreeMap::new(),
            channels: BTreeMap::new(),
            invites: BTreeMap::new(),
            bans: BTreeMap::new(),
            sounds: BTreeMap::new(),
            emojis: BTreeMap::new(),
        }
    }

    /// The guild's id.
    pub fn guild(&self) -> GuildId {
        self.guild
    }
    /// The guild's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The icon reference.
    pub fn icon(&self) -> Option<&[u8; 32]> {
        self.icon.as_ref()
    }
    /// The owner, once the genesis is applied.
    pub fn owner(&self) -> Option<&UserId> {
        self.owner.as_ref()
    }
    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
    /// Members by user.
    pub fn members(&self) -> &BTreeMap<UserId, Member> {
        &self.members
    }
    /// One member.
    pub fn member(&self, user: &UserId) -> Option<&Member> {
        self.members.get(user)
    }
    /// Roles by id, including `@everyone`.
    pub fn roles(&self) -> &BTreeMap<RoleId, Role> {
        &self.roles
    }
    /// Channels and categories by id.
    pub fn channels(&self) -> &BTreeMap<ChannelId, Channel> {
        &self.channels
    }
    /// Invites by code, with uses and revocation.
    pub fn invites(&self) -> &BTreeMap<InviteCode, InviteState> {
        &self.invites
    }
    /// Bans by user.
    pub fn bans(&self) -> &BTreeMap<UserId, Ban> {
        &self.bans
    }
    /// The soundboard library by sound id (at most [`MAX_SOUNDS`]).
    pub fn sounds(&self) -> &BTreeMap<SoundId, Sound> {
        &self.sounds
    }
    /// The guild's custom emoji by id (at most [`MAX_EMOJIS`], names unique).
    pub fn emojis(&self) -> &BTreeMap<EmojiId, Emoji> {
        &self.emojis
    }
    /// The custom emoji named `name`, if any.
    pub fn emoji_named(&self, name: &str) -> Option<(EmojiId, &Emoji)> {
        self.emojis
            .iter()
            .find(|(_, e)| e.name == name)
            .map(|(id, e)| (*id, e))
    }
    /// Whether `user` is the owner.
    pub fn is_owner(&self, user: &UserId) -> bool {
        self.owner.as_ref() == Some(user)
    }
    /// The member a device belongs to.
    pub fn user_of_device(&self, device: &DevicePublicKey) -> Option<&UserId> {
        self.device_owner.get(device.as_bytes())
    }

    /// A member's rank: [`OWNER_RANK`] for the owner, else the highest position among its roles
    /// (0 with none).
    pub fn rank(&self, user: &UserId) -> u32 {
        if self.is_owner(user) {
            return OWNER_RANK;
        }
        self.members.get(user).map_or(0, |m| {
            m.roles
                .iter()
                .filter_map(|r| self.roles.get(r))
                .map(|r| u32::from(r.position))
                .max()
                .unwrap_or(0)
        })
    }

    /// Guild-wide permissions (Discord step 1). Non-members have none.
    pub fn base_permissions(&self, user: &UserId) -> Permissions {
        let Some(m) = self.members.get(user) else {
            return Permissions::NONE;
        };
        let everyone = self
            .roles
            .get(&RoleId::EVERYONE)
            .map_or(Permissions::NONE, |r| r.permissions);
        perms::base_permissions(
            self.is_owner(user),
            everyone,
            m.roles
                .iter()
                .filter_map(|r| self.roles.get(r))
                .map(|r| r.permissions),
        )
    }

    /// Effective permissions of `user` in `channel` (Discord steps 1 to 3). Non-members and
    /// unknown channels give none.
    pub fn channel_permissions(&self, user: &UserId, channel: &ChannelId) -> Permissions {
        let (Some(m), Some(ch)) = (self.members.get(user), self.channels.get(channel)) else {
            return Permissions::NONE;
        };
        let base = self.base_permissions(user);
        perms::channel_permissions(
            base,
            ch,
            user,
            m.roles
                .iter()
                .copied()
                .filter(|r| self.roles.contains_key(r)),
        )
    }

    /// Members and their devices, and bans: what membership events are computed from.
    pub fn membership(&self) -> (BTreeMap<UserId, Vec<DevicePublicKey>>, BTreeSet<UserId>) {
        (
            self.members
                .iter()
                .map(|(u, m)| (*u, m.devices.iter().copied().collect()))
                .collect(),
            self.bans.keys().copied().collect(),
        )
    }

    fn remove_member(&mut self, user: &UserId) {
        if let Some(m) = self.members.remove(user) {
            for d in &m.devices {
                self.device_owner.remove(d.as_bytes());
            }
        }
    }

    fn add_member(&mut self, user: UserId, device: DevicePublicKey, nickname: &str, time: u64) {
        if self.device_owner.contains_key(device.as_bytes()) {
            return;
        }
        self.device_owner.insert(device.to_bytes(), user);
        self.members.insert(
            user,
            Member {
                devices: DeviceSet::one(device),
                nickname: nickname.to_owned(),
                joined_at: time,
                roles: BTreeSet::new(),
                voice_muted: false,
            },
        );
    }

    /// [`GuildOp::GrantRole`] applied (see [`GuildView::apply`]).
    pub(crate) fn grant_role(&mut self, u: &UserId, r: RoleId) {
        if self.roles.contains_key(&r)
            && r != RoleId::EVERYONE
            && let Some(m) = self.members.get_mut(u)
            && m.roles.len() < MAX_MEMBER_ROLES
        {
            m.roles.insert(r);
        }
    }

    /// [`GuildOp::Redeem`] applied (see [`GuildView::apply`]): only the parts the view keeps.
    pub(crate) fn redeem(
        &mut self,
        code: &InviteCode,
        user: UserId,
        device: DevicePublicKey,
        nickname: &str,
        time: u64,
    ) -> bool {
        let usable = self.invites.get(code).is_some_and(|i| i.usable_at(time));
        if !usable
            || self.bans.contains_key(&user)
            || self.members.contains_key(&user)
            || self.device_owner.contains_key(device.as_bytes())
        {
            return false;
        }
        if let Some(i) = self.invites.get_mut(code) {
            i.uses = i.uses.saturating_add(1);
        }
        self.add_member(user, device, nickname, time);
        true
    }

    /// Applies one op without checking authority; returns whether it had an effect the fold
    /// must honour (`false` only for a redemption that is no longer possible).
    pub(crate) fn apply(&mut self, op: &GuildOp, ctx: ApplyCtx) -> bool {
        match op {
            GuildOp::Genesis { name, owner, .. } => {
                self.name.clone_from(name);
                self.owner = Some(owner.user);
                self.roles.insert(
                    RoleId::EVERYONE,
                    Role {
                        name: "@everyone".into(),
                        colour: 0,
                        position: 0,
                        permissions: DEFAULT_EVERYONE,
                        mentionable: false,
                        hoisted: false,
                    },
                );
                self.add_member(owner.user, owner.device, "", ctx.time);
            }
            GuildOp::SetName(n) => self.name.clone_from(n),
            GuildOp::SetIcon(i) => self.icon = *i,
            GuildOp::SetSettings(s) => self.settings = *s,
            GuildOp::TransferOwnership(u) => {
                if self.members.contains_key(u) {
                    self.owner = Some(*u);
                }
            }
            GuildOp::PutRole(id, role) => {
                let mut role = role.clone();
                if *id == RoleId::EVERYONE {
                    role.position = 0;
                }
                self.roles.insert(*id, role);
            }
            GuildOp::DeleteRole(id) => {
                if *id != RoleId::EVERYONE && self.roles.remove(id).is_some() {
                    for m in self.members.values_mut() {
                        m.roles.remove(id);
                    }
                }
            }
            GuildOp::GrantRole(u, r) => self.grant_role(u, *r),
            GuildOp::RevokeRole(u, r) => {
                if let Some(m) = self.members.get_mut(u) {
                    m.roles.remove(r);
                }
            }
            GuildOp::PutChannel(id, ch) => {
                self.channels.insert(*id, ch.clone());
            }
            GuildOp::DeleteChannel(id) => {
                self.channels.remove(id);
            }
            GuildOp::CreateInvite(code, invite) => {
                self.invites.entry(*code).or_insert(InviteState {
                    invite: *invite,
                    uses: 0,
                    revoked: false,
                });
            }
            GuildOp::RevokeInvite(code) => {
                if let Some(i) = self.invites.get_mut(code) {
                    i.revoked = true;
                }
            }
            GuildOp::Redeem {
                token,
                cert,
                nickname,
            } => return self.redeem(&token.code, cert.user, cert.device, nickname, ctx.time),
            GuildOp::Kick(u) | GuildOp::Leave(u) => self.remove_member(u),
            GuildOp::Ban(u, reason) => {
                self.remove_member(u);
                self.bans.insert(
                    *u,
                    Ban {
                        reason: reason.clone(),
                        by: ctx.author,
                    },
                );
            }
            GuildOp::Unban(u) => {
                self.bans.remove(u);
            }
            GuildOp::SetNickname(u, n) => {
                if let Some(m) = self.members.get_mut(u) {
                    m.nickname.clone_from(n);
                }
            }
            GuildOp::SetVoiceMute(u, on) => {
                if let Some(m) = self.members.get_mut(u) {
                    m.voice_muted = *on;
                }
            }
            GuildOp::AddDevice(cert) => {
                if !self.device_owner.contains_key(cert.device.as_bytes())
                    && let Some(m) = self.members.get_mut(&cert.user)
                    && m.devices.len() < MAX_DEVICES
                {
                    m.devices.insert(cert.device);
                    self.device_owner.insert(cert.device.to_bytes(), cert.user);
                }
            }
            GuildOp::PutSound(id, sound) => {
                // Concurrent additions can each pass authorization yet together pass the
                // bound: the fold keeps the first ones in canonical order and drops the rest.
                if self.sounds.contains_key(id) || self.sounds.len() < MAX_SOUNDS {
                    self.sounds.insert(*id, sound.clone());
                }
            }
            GuildOp::DeleteSound(id) => {
                self.sounds.remove(id);
            }
            GuildOp::PutEmoji(id, emoji) => {
                // Concurrent additions may pass the bound or reuse a name (each was judged
                // without the other): the fold keeps the first in canonical order and drops the
                // rest, so every replica holds the same emoji under unique names.
                let name_taken = self
                    .emojis
                    .iter()
                    .any(|(other, e)| other != id && e.name == emoji.name);
                if !name_taken && (self.emojis.contains_key(id) || self.emojis.len() < MAX_EMOJIS) {
                    self.emojis.insert(*id, emoji.clone());
                }
            }
            GuildOp::DeleteEmoji(id) => {
                self.emojis.remove(id);
            }
            GuildOp::RemoveDevice(u, d) => {
                if let Some(m) = self.members.get_mut(u)
                    && m.devices.len() > 1
                    && m.devices.remove(d)
                {
                    self.device_owner.remove(d.as_bytes());
                }
            }
        }
        true
    }
}

/// Membership events between two membership snapshots (see [`GuildView::membership`]).
pub fn membership_events(
    before: &(BTreeMap<UserId, Vec<DevicePublicKey>>, BTreeSet<UserId>),
    after: &(BTreeMap<UserId, Vec<DevicePublicKey>>, BTreeSet<UserId>),
) -> Vec<MembershipEvent> {
    let mut out = Vec::new();
    for (u, devs) in &after.0 {
        match before.0.get(u) {
            None => out.push(MembershipEvent::Added {
                user: *u,
                devices: devs.clone(),
            }),
            Some(old) if old != devs => out.push(MembershipEvent::DevicesChanged {
                user: *u,
                devices: devs.clone(),
            }),
            Some(_) => {}
        }
    }
    for u in before.0.keys() {
        if !after.0.contains_key(u) {
            if after.1.contains(u) && !before.1.contains(u) {
                out.push(MembershipEvent::Banned { user: *u });
            } else {
                out.push(MembershipEvent::Removed { user: *u });
            }
        }
    }
    for u in &after.1 {
        if !before.1.contains(u) && !before.0.contains_key(u) {
            out.push(MembershipEvent::Banned { user: *u });
        }
    }
    out
}
