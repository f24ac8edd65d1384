//! Permission bits and Discord's permission computation.
//!
//! Bit values are Discord's own, so a table written against Discord's documentation reads the
//! same here. The computation follows Discord's documented algorithm ("Permissions" topic of the
//! developer documentation):
//!
//! 1. **Base**: the owner gets everything. Otherwise start from the `@everyone` role's bits, OR in
//!    every role the member holds; if the result has `ADMINISTRATOR`, the member gets everything.
//! 2. **Channel overwrites**, only when the base lacks `ADMINISTRATOR`: apply the `@everyone`
//!    overwrite (`&= !deny; |= allow`), then all the member's role overwrites combined (deny bits
//!    ORed, allow bits ORed, then `&= !deny; |= allow`), then the member's own overwrite.
//! 3. **Implicit permissions**: without `VIEW_CHANNEL` in a channel a member has nothing there;
//!    in a text channel without `SEND_MESSAGES`, `MENTION_EVERYONE` and `ATTACH_FILES` go too;
//!    in a voice channel without `CONNECT`, the voice-only bits go.
//!
//! Acting on other members and roles is decided by the role hierarchy: a member's rank is the
//! highest position among its roles, and a member may only kick/ban members of strictly lower
//! rank and only create, edit, grant or revoke roles strictly below its own rank. The owner
//! outranks everyone.

use securecomm_noise::codec::DecodeError;

use crate::schema::{Channel, ChannelKind, OverwriteTarget, RoleId, UserId};

/// A set of permission bits, with Discord's bit values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u64);

impl std::fmt::Debug for Permissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = NAMES
            .iter()
            .filter(|(p, _)| self.contains(*p))
            .map(|(_, n)| *n)
            .collect();
        write!(f, "Permissions({})", names.join("|"))
    }
}

impl Permissions {
    /// No bits.
    pub const NONE: Self = Self(0);
    /// Create invites.
    pub const CREATE_INSTANT_INVITE: Self = Self(1 << 0);
    /// Kick members of lower rank.
    pub const KICK_MEMBERS: Self = Self(1 << 1);
    /// Ban members of lower rank.
    pub const BAN_MEMBERS: Self = Self(1 << 2);
    /// Every permission, and overwrites do not apply.
    pub const ADMINISTRATOR: Self = Self(1 << 3);
    /// Create, edit and delete channels.
    pub const MANAGE_CHANNELS: Self = Self(1 << 4);
    /// Edit the guild's name, icon and settings; revoke others' invites.
    pub const MANAGE_GUILD: Self = Self(1 << 5);
    /// Add reactions.
    pub const ADD_REACTIONS: Self = Self(1 << 6);
    /// Priority speaker in voice.
    pub const PRIORITY_SPEAKER: Self = Self(1 << 8);
    /// See the channel.
    pub const VIEW_CHANNEL: Self = Self(1 << 10);
    /// Send messages.
    pub const SEND_MESSAGES: Self = Self(1 << 11);
    /// Delete others' messages.
    pub const MANAGE_MESSAGES: Self = Self(1 << 13);
    /// Attach files.
    pub const ATTACH_FILES: Self = Self(1 << 15);
    /// Mention `@everyone`.
    pub const MENTION_EVERYONE: Self = Self(1 << 17);
    /// Join a voice channel.
    pub const CONNECT: Self = Self(1 << 20);
    /// Speak in voice.
    pub const SPEAK: Self = Self(1 << 21);
    /// Mute others in voice.
    pub const MUTE_MEMBERS: Self = Self(1 << 22);
    /// Move others between voice channels.
    pub const MOVE_MEMBERS: Self = Self(1 << 24);
    /// Create, edit, grant and revoke roles below one's own; edit channel overwrites.
    pub const MANAGE_ROLES: Self = Self(1 << 28);
    /// Use the soundboard.
    pub const USE_SOUNDBOARD: Self = Self(1 << 42);

    /// Every bit this build knows.
    pub const ALL: Self = Self(
        Self::CREATE_INSTANT_INVITE.0
            | Self::KICK_MEMBERS.0
            | Self::BAN_MEMBERS.0
            | Self::ADMINISTRATOR.0
            | Self::MANAGE_CHANNELS.0
            | Self::MANAGE_GUILD.0
            | Self::ADD_REACTIONS.0
            | Self::PRIORITY_SPEAKER.0
            | Self::VIEW_CHANNEL.0
            | Self::SEND_MESSAGES.0
            | Self::MANAGE_MESSAGES.0
            | Self::ATTACH_FILES.0
            | Self::MENTION_EVERYONE.0
            | Self::CONNECT.0
            | Self::SPEAK.0
            | Self::MUTE_MEMBERS.0
            | Self::MOVE_MEMBERS.0
            | Self::MANAGE_ROLES.0
            | Self::USE_SOUNDBOARD.0,
    );

    /// Bits that only mean something in a voice channel.
    pub const VOICE_ONLY: Self = Self(
        Self::SPEAK.0
            | Self::MUTE_MEMBERS.0
            | Self::MOVE_MEMBERS.0
            | Self::PRIORITY_SPEAKER.0
            | Self::USE_SOUNDBOARD.0,
    );

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Bits from a trusted constant; unknown bits are dropped.
    pub const fn from_bits_truncate(bits: u64) -> Self {
        Self(bits & Self::ALL.0)
    }

    /// Bits read off the wire: unknown bits are an error, so two encodings never mean the same.
    pub fn from_wire(bits: u64) -> Result<Self, DecodeError> {
        if bits & !Self::ALL.0 != 0 {
            return Err(DecodeError::Invalid("permission bits"));
        }
        Ok(Self(bits))
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Bits of `self` not in `other`.
    pub const fn minus(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Whether no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Permissions {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

const NAMES: [(Permissions, &str); 19] = [
    (Permissions::CREATE_INSTANT_INVITE, "CREATE_INSTANT_INVITE"),
    (Permissions::KICK_MEMBERS, "KICK_MEMBERS"),
    (Permissions::BAN_MEMBERS, "BAN_MEMBERS"),
    (Permissions::ADMINISTRATOR, "ADMINISTRATOR"),
    (Permissions::MANAGE_CHANNELS, "MANAGE_CHANNELS"),
    (Permissions::MANAGE_GUILD, "MANAGE_GUILD"),
    (Permissions::ADD_REACTIONS, "ADD_REACTIONS"),
    (Permissions::PRIORITY_SPEAKER, "PRIORITY_SPEAKER"),
    (Permissions::VIEW_CHANNEL, "VIEW_CHANNEL"),
    (Permissions::SEND_MESSAGES, "SEND_MESSAGES"),
    (Permissions::MANAGE_MESSAGES, "MANAGE_MESSAGES"),
    (Permissions::ATTACH_FILES, "ATTACH_FILES"),
    (Permissions::MENTION_EVERYONE, "MENTION_EVERYONE"),
    (Permissions::CONNECT, "CONNECT"),
    (Permissions::SPEAK, "SPEAK"),
    (Permissions::MUTE_MEMBERS, "MUTE_MEMBERS"),
    (Permissions::MOVE_MEMBERS, "MOVE_MEMBERS"),
    (Permissions::MANAGE_ROLES, "MANAGE_ROLES"),
    (Permissions::USE_SOUNDBOARD, "USE_SOUNDBOARD"),
];

/// Step 1: guild-wide permissions of a member holding `roles` (not counting `@everyone`).
pub fn base_permissions(
    is_owner: bool,
    everyone: Permissions,
    roles: impl IntoIterator<Item = Permissions>,
) -> Permissions {
    if is_owner {
        return Permissions::ALL;
    }
    let mut p = everyone;
    for r in roles {
        p = p | r;
    }
    if p.contains(Permissions::ADMINISTRATOR) {
        return Permissions::ALL;
    }
    p
}

/// Steps 2 and 3: a member's permissions in `channel`, from its base permissions.
pub fn channel_permissions(
    base: Permissions,
    channel: &Channel,
    user: &UserId,
    roles: impl IntoIterator<Item = RoleId>,
) -> Permissions {
    if base.contains(Permissions::ADMINISTRATOR) {
        return Permissions::ALL;
    }
    let mut p = base;
    if let Some(o) = channel.overwrite(&OverwriteTarget::Role(RoleId::EVERYONE)) {
        p = p.minus(o.deny) | o.allow;
    }
    let (mut allow, mut deny) = (Permissions::NONE, Permissions::NONE);
    for r in roles {
        if r == RoleId::EVERYONE {
            continue;
        }
        if let Some(o) = channel.overwrite(&OverwriteTarget::Role(r)) {
            allow = allow | o.allow;
            deny = deny | o.deny;
        }
    }
    p = p.minus(deny) | allow;
    if let Some(o) = channel.overwrite(&OverwriteTarget::Member(*user)) {
        p = p.minus(o.deny) | o.allow;
    }
    implicit(p, channel.kind)
}

fn implicit(p: Permissions, kind: ChannelKind) -> Permissions {
    if !p.contains(Permissions::VIEW_CHANNEL) {
        return Permissions::NONE;
    }
    match kind {
        ChannelKind::Text if !p.contains(Permissions::SEND_MESSAGES) => p
            .minus(Permissions::MENTION_EVERYONE)
            .minus(Permissions::ATTACH_FILES),
        ChannelKind::Voice if !p.contains(Permissions::CONNECT) => p.minus(Permissions::VOICE_ONLY),
        _ => p,
    }
}
