//! Guild management on [`GuildService`]: categories and channels (create, edit, reorder,
//! permission overwrites), roles (create, edit, delete, revoke), bans, invites and settings,
//! and typed listings of all of them for the app and the control API.
//!
//! # Authorization
//!
//! Nothing here decides who may do what: every operation becomes guild ops that the crdt judges
//! (`securecomm_crdt::authz`), locally before the change is authored and again at every
//! replica. Before authoring, each operation runs that same judgement on the current view and
//! turns a refusal into a sentence a user can act on ("you need the Manage Roles permission",
//! "you can only manage roles below your highest role") instead of the crdt's diagnostic form.
//!
//! # Ordering
//!
//! Channels are ordered by `(position, id)` among their *siblings*: the channels with the same
//! parent category, where top-level categories and top-level channels are two separate lists
//! (Discord's layout: uncategorized channels first, then each category with its channels).
//! Moving a channel swaps it with its neighbour and renumbers the siblings `0..n`, all in one
//! change (at most [`MAX_OPS_PER_CHANGE`] siblings, so the bound on ops is never hit by a move).
//! Roles are ordered by position, highest first; a role's position is edited directly and the
//! crdt keeps it below the actor's own rank.

use securecomm_crdt::authz::{AuthzError, authorize};
use securecomm_crdt::ops::{GuildOp, MAX_OPS_PER_CHANGE};
use securecomm_crdt::perms::Permissions;
use securecomm_crdt::schema::{
    ChannelId, ChannelKind, GuildId, InviteCode, MAX_NAME, MAX_OVERWRITES, MAX_REASON, MAX_TOPIC,
    Overwrite, OverwriteTarget, RoleId, UserId,
};
use securecomm_crdt::view::GuildView;
use securecomm_noise::keys::RootPublicKey;
use serde::{Deserialize, Serialize};

use super::GuildService;
use crate::guild::GuildError;
use crate::guild::engine::{self, perm_names, resolve_user, text_channel, voice_channel};
use crate::guild::wire::{InviteLink, rendezvous_namespace};

/// Longest slow mode, in seconds (6 hours, as Discord).
pub const MAX_SLOW_MODE_SECS: u32 = 6 * 3600;
/// Most invites listed (the first ones by invite id).
pub const MAX_INVITES_LISTED: usize = 1000;
/// Most bans listed.
pub const MAX_BANS_LISTED: usize = 10_000;

/// What kind of channel to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NewChannelKind {
    /// A text channel.
    Text,
    /// A voice channel.
    Voice,
    /// A category holding other channels.
    Category,
}

/// Whom a channel permission overwrite applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum OverwriteFor {
    /// Holders of a role (0 is `@everyone`).
    Role(u64),
    /// One member (user id, hex).
    Member(String),
}

/// A channel permission overwrite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverwriteInfo {
    /// Whom it applies to.
    pub target: OverwriteFor,
    /// Permission bits allowed here.
    pub allow: u64,
    /// Permission bits denied here.
    pub deny: u64,
}

/// A channel or category with everything the settings screens show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelDetail {
    /// Channel id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// `text`, `voice` or `category`.
    pub kind: String,
    /// Topic line.
    pub topic: String,
    /// The category it sits in.
    pub parent: Option<u64>,
    /// Position among its siblings.
    pub position: u16,
    /// Seconds between a member's messages; 0 for none.
    pub slow_mode_secs: u32,
    /// The channel's default disappearing-message timer, seconds; 0 for none.
    pub disappearing_secs: u32,
    /// Permission overwrites.
    pub overwrites: Vec<OverwriteInfo>,
    /// This user's permission bits in the channel.
    pub my_permissions: u64,
}

/// A role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleInfo {
    /// Role id (0 is `@everyone`).
    pub id: u64,
    /// Name.
    pub name: String,
    /// RGB colour, 0 for none.
    pub colour: u32,
    /// Position: higher outranks lower; `@everyone` is 0.
    pub position: u16,
    /// Guild-wide permission bits.
    pub permissions: u64,
    /// Whether holders are listed separately.
    pub hoisted: bool,
    /// Whether anyone may mention it.
    pub mentionable: bool,
    /// Members holding it.
    pub members: usize,
}

/// A member, with role ids (the app colours and groups by them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDetail {
    /// User id (hex).
    pub user: String,
    /// Nickname.
    pub nickname: String,
    /// Whether they own the guild.
    pub owner: bool,
    /// Roles held (not counting `@everyone`).
    pub roles: Vec<u64>,
    /// Rank: highest role position (`u32::MAX` for the owner).
    pub rank: u32,
    /// Server-muted in the guild's voice channels.
    #[serde(default)]
    pub voice_muted: bool,
}

/// A ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanInfo {
    /// The banned user (hex).
    pub user: String,
    /// Why.
    pub reason: String,
    /// Who banned (hex).
    pub by: String,
}

/// An invite recorded in the guild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteInfo {
    /// Invite id (hex; what `revoke_invite` takes).
    pub id: String,
    /// Who created it (hex).
    pub creator: String,
    /// Unix seconds after which it is void; 0 for never.
    pub expires_at: u64,
    /// Most uses; 0 for unlimited.
    pub max_uses: u32,
    /// Uses so far.
    pub uses: u32,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Whether a join now would be accepted.
    pub usable: bool,
    /// The code to share, when this device created the invite (it alone holds the secret).
    pub code: Option<String>,
}

/// The guild's name and settings, and what this user may do in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuildOverview {
    /// Guild id (hex).
    pub id: String,
    /// Name.
    pub name: String,
    /// Owner (hex).
    pub owner: Option<String>,
    /// Whether new members may read messages from before they joined.
    pub history_visible_to_new_members: bool,
    /// Largest attachment in bytes (0: no guild limit; the node's own cap applies).
    pub max_upload_bytes: u64,
    /// This user's guild-wide permission bits.
    pub my_permissions: u64,
    /// This user's rank (`u32::MAX` for the owner).
    pub my_rank: u32,
    /// Whether this user owns the guild.
    pub i_am_owner: bool,
}

/// Changes to a channel; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelEdit {
    /// New name.
    pub name: Option<String>,
    /// New topic.
    pub topic: Option<String>,
    /// New slow mode, seconds.
    pub slow_mode_secs: Option<u32>,
    /// New default disappearing-message timer, seconds (0: none).
    #[serde(default)]
    pub disappearing_secs: Option<u32>,
    /// New category (`Some(None)`: top level).
    pub parent: Option<Option<u64>>,
}

/// A new role, or changes to one; `None` leaves a field as it is (or at its default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleEdit {
    /// Name.
    pub name: Option<String>,
    /// RGB colour.
    pub colour: Option<u32>,
    /// Permission bits.
    pub permissions: Option<u64>,
    /// Position.
    pub position: Option<u16>,
    /// Hoisted.
    pub hoisted: Option<bool>,
    /// Mentionable.
    pub mentionable: Option<bool>,
}

/// Changes to the guild; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsEdit {
    /// New name.
    pub name: Option<String>,
    /// Whether new members may read history from before they joined.
    pub history_visible_to_new_members: Option<bool>,
    /// Largest attachment in bytes (0: no guild limit).
    pub max_upload_bytes: Option<u64>,
}

/// "manage_roles" -> "Manage Roles".
fn pretty(name: &str) -> String {
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_uppercase().chain(c).collect::<String>()
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A user-facing sentence for a crdt refusal.
pub fn explain(e: &AuthzError) -> GuildError {
    match e {
        AuthzError::NotAMember => {
            GuildError::NotPermitted("you are no longer a member of this guild".into())
        }
        AuthzError::MissingPermission { needed, has, .. } => {
            let missing: Vec<String> = perm_names(needed.minus(*has))
                .into_iter()
                .map(pretty)
                .collect();
            let list = if missing.is_empty() {
                perm_names(*needed)
                    .into_iter()
                    .map(pretty)
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                missing.join(", ")
            };
            GuildError::NotPermitted(format!("you need the {list} permission for this"))
        }
        AuthzError::Hierarchy { author, target, .. } => GuildError::NotPermitted(format!(
            "you can only manage roles and members below your own highest role (yours is at \
             position {author}, this is at {target})"
        )),
        AuthzError::Owner(_) => GuildError::NotPermitted(
            "nobody can do this to the owner or to themselves (ownership transfer is the \
             owner's alone)"
                .into(),
        ),
        AuthzError::Invalid { why, .. } => GuildError::Invalid((*why).to_owned()),
        AuthzError::Invite(why) => GuildError::Invalid(format!("invite: {why}")),
        AuthzError::Banned => GuildError::Invalid("that user is banned".into()),
    }
}

fn kind_name(k: ChannelKind) -> &'static str {
    match k {
        ChannelKind::Text => "text",
        ChannelKind::Voice => "voice",
        ChannelKind::Category => "category",
    }
}

fn check_name(what: &str, name: &str) -> Result<String, GuildError> {
    let name = name.trim();
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(GuildError::Invalid(format!(
            "a {what} name has 1 to {MAX_NAME} bytes, got {}",
            name.len()
        )));
    }
    Ok(name.to_owned())
}

fn perms(bits: u64) -> Result<Permissions, GuildError> {
    Permissions::from_wire(bits)
        .map_err(|_| GuildError::Invalid(format!("unknown permission bits in {bits:#x}")))
}

fn user_hex(u: &UserId) -> String {
    hex::encode(u.as_bytes())
}

fn parse_user(s: &str) -> Result<UserId, GuildError> {
    super::hex_array(s.trim())
        .and_then(|b| RootPublicKey::from_bytes(&b).ok())
        .ok_or_else(|| GuildError::UnknownUser(s.to_owned()))
}

fn channel_detail(view: &GuildView, me: &UserId, id: ChannelId) -> Option<ChannelDetail> {
    let c = view.channels().get(&id)?;
    Some(ChannelDetail {
        id: id.0,
        name: c.name.clone(),
        kind: kind_name(c.kind).to_owned(),
        topic: c.topic.clone(),
        parent: c.parent.map(|p| p.0),
        position: c.position,
        slow_mode_secs: c.slow_mode_secs,
        disappearing_secs: c.disappearing_secs,
        overwrites: c
            .overwrites
            .iter()
            .map(|o| OverwriteInfo {
                target: match o.target {
                    OverwriteTarget::Role(r) => OverwriteFor::Role(r.0),
                    OverwriteTarget::Member(u) => OverwriteFor::Member(user_hex(&u)),
                },
                allow: o.allow.bits(),
                deny: o.deny.bits(),
            })
            .collect(),
        my_permissions: view.channel_permissions(me, &id).bits(),
    })
}

fn role_info(view: &GuildView, id: RoleId) -> Option<RoleInfo> {
    let r = view.roles().get(&id)?;
    let members = if id == RoleId::EVERYONE {
        view.members().len()
    } else {
        view.members()
            .values()
            .filter(|m| m.roles.contains(&id))
            .count()
    };
    Some(RoleInfo {
        id: id.0,
        name: r.name.clone(),
        colour: r.colour,
        position: r.position,
        permissions: r.permissions.bits(),
        hoisted: r.hoisted,
        mentionable: r.mentionable,
        members,
    })
}

/// The siblings of channel `id` (same parent; top-level categories and top-level channels are
/// separate lists), in display order.
fn siblings(view: &GuildView, id: ChannelId) -> Vec<ChannelId> {
    let Some(me) = view.channels().get(&id) else {
        return Vec::new();
    };
    let is_cat = me.kind == ChannelKind::Category;
    let mut v: Vec<(u16, ChannelId)> = view
        .channels()
        .iter()
        .filter(|(_, c)| c.parent == me.parent && (c.kind == ChannelKind::Category) == is_cat)
        .map(|(i, c)| (c.position, *i))
        .collect();
    v.sort();
    v.into_iter().map(|(_, i)| i).collect()
}

impl GuildService {
    /// Runs `f` on the guild's view (with this user's id).
    pub(super) fn on_view<R>(
        &self,
        gid: &GuildId,
        f: impl FnOnce(&GuildView, &UserId) -> Result<R, GuildError>,
    ) -> Result<R, GuildError> {
        self.with_engine(|e, _| {
            let me = e.keys.user;
            let g = e.guild_mut(gid)?;
            f(g.crdt.view(), &me)
        })?
    }

    /// Judges `ops` like every replica will, turning a refusal into a clear error, then
    /// authors and writes them as one change.
    pub(super) async fn checked_change(
        &self,
        gid: &GuildId,
        ops: Vec<GuildOp>,
    ) -> Result<(), GuildError> {
        self.with_engine(|e, _| {
            let device = e.keys.me;
            let g = e.guild_mut(gid)?;
            authorize(g.crdt.view(), &device, engine::now_ms() / 1000, &ops, false)
                .map(|_| ())
                .map_err(|err| explain(&err))
        })??;
        self.change(gid, ops).await
    }

    /// The guild's name, settings and this user's powers.
    pub fn guild_overview(&self, guild: &str) -> Result<GuildOverview, GuildError> {
        let gid = self.resolve(guild)?;
        self.on_view(&gid, |v, me| {
            Ok(GuildOverview {
                id: hex::encode(gid.0),
                name: v.name().to_owned(),
                owner: v.owner().map(user_hex),
                history_visible_to_new_members: v.settings().history_visible_to_new_members,
                max_upload_bytes: v.settings().max_upload_bytes,
                my_permissions: v.base_permissions(me).bits(),
                my_rank: v.rank(me),
                i_am_owner: v.is_owner(me),
            })
        })
    }

    /// Renames the guild and/or changes its history visibility or upload limit
    /// (`MANAGE_GUILD`).
    pub async fn update_settings(
        &self,
        guild: &str,
        edit: SettingsEdit,
    ) -> Result<GuildOverview, GuildError> {
        let gid = self.resolve(guild)?;
        let settings = self.on_view(&gid, |v, _| Ok(*v.settings()))?;
        let mut ops = Vec::new();
        if let Some(n) = &edit.name {
            ops.push(GuildOp::SetName(check_name("guild", n)?));
        }
        let mut next = settings;
        if let Some(h) = edit.history_visible_to_new_members {
            next.history_visible_to_new_members = h;
        }
        if let Some(m) = edit.max_upload_bytes {
            next.max_upload_bytes = m;
        }
        if next != settings {
            ops.push(GuildOp::SetSettings(next));
        }
        if !ops.is_empty() {
            self.checked_change(&gid, ops).await?;
        }
        self.guild_overview(guild)
    }

    /// Every channel and category, by `(position, id)`.
    pub fn channel_details(&self, guild: &str) -> Result<Vec<ChannelDetail>, GuildError> {
        let gid = self.resolve(guild)?;
        self.on_view(&gid, |v, me| {
            let mut out: Vec<ChannelDetail> = v
                .channels()
                .keys()
                .filter_map(|id| channel_detail(v, me, *id))
                .collect();
            out.sort_by_key(|c| (c.position, c.id));
            Ok(out)
        })
    }

    /// Creates a text or voice channel (optionally in a category) or a category, last among
    /// its siblings (`MANAGE_CHANNELS`).
    pub async fn create_channel_in(
        &self,
        guild: &str,
        name: &str,
        kind: NewChannelKind,
        parent: Option<u64>,
    ) -> Result<ChannelDetail, GuildError> {
        let gid = self.resolve(guild)?;
        let name = check_name("channel", name.trim().trim_start_matches('#'))?;
        let id = ChannelId(rand_core::RngCore::next_u64(&mut rand_core::OsRng));
        let mut ch = match kind {
            NewChannelKind::Voice => voice_channel(&name),
            NewChannelKind::Text | NewChannelKind::Category => text_channel(&name),
        };
        if kind == NewChannelKind::Category {
            ch.kind = ChannelKind::Category;
            if parent.is_some() {
                return Err(GuildError::Invalid(
                    "a category cannot sit inside another category".into(),
                ));
            }
        }
        ch.parent = parent.map(ChannelId);
        ch.position = self.on_view(&gid, |v, _| {
            if let Some(p) = parent
                && v.channels().get(&ChannelId(p)).map(|c| c.kind) != Some(ChannelKind::Category)
            {
                return Err(GuildError::UnknownChannel(format!("category {p}")));
            }
            let is_cat = kind == NewChannelKind::Category;
            let last = v
                .channels()
                .values()
                .filter(|c| c.parent == ch.parent && (c.kind == ChannelKind::Category) == is_cat)
                .map(|c| c.position)
                .max();
            Ok(last.map_or(0, |p| p.saturating_add(1)))
        })?;
        self.checked_change(&gid, vec![GuildOp::PutChannel(id, ch)])
            .await?;
        self.on_view(&gid, |v, me| {
            channel_detail(v, me, id).ok_or_else(|| GuildError::UnknownChannel(id.0.to_string()))
        })
    }

    /// Edits a channel's name, topic, slow mode or category (`MANAGE_CHANNELS`).
    pub async fn edit_channel(
        &self,
        guild: &str,
        channel: u64,
        edit: ChannelEdit,
    ) -> Result<ChannelDetail, GuildError> {
        let gid = self.resolve(guild)?;
        let id = ChannelId(channel);
        let mut ch = self.on_view(&gid, |v, _| {
            v.channels()
                .get(&id)
                .cloned()
                .ok_or_else(|| GuildError::UnknownChannel(channel.to_string()))
        })?;
        if let Some(n) = &edit.name {
            ch.name = check_name("channel", n.trim().trim_start_matches('#'))?;
        }
        if let Some(t) = &edit.topic {
            if t.len() > MAX_TOPIC {
                return Err(GuildError::Invalid(format!(
                    "a topic has at most {MAX_TOPIC} bytes, got {}",
                    t.len()
                )));
            }
            t.trim().clone_into(&mut ch.topic);
        }
        if let Some(s) = edit.slow_mode_secs {
            if s > MAX_SLOW_MODE_SECS {
                return Err(GuildError::Invalid(format!(
                    "slow mode is at most {MAX_SLOW_MODE_SECS} seconds, got {s}"
                )));
            }
            ch.slow_mode_secs = s;
        }
        if let Some(d) = edit.disappearing_secs {
            let max = super::messages::MAX_TTL_SECS;
            if d > max {
                return Err(GuildError::Invalid(format!(
                    "a disappearing timer is at most {max} seconds (4 weeks), got {d}"
                )));
            }
            ch.disappearing_secs = d;
        }
        if let Some(p) = edit.parent {
            ch.parent = p.map(ChannelId);
        }
        self.checked_change(&gid, vec![GuildOp::PutChannel(id, ch)])
            .await?;
        self.on_view(&gid, |v, me| {
            channel_detail(v, me, id).ok_or_else(|| GuildError::UnknownChannel(channel.to_string()))
        })
    }

    /// Deletes a channel or category (`MANAGE_CHANNELS`). Channels of a deleted category
    /// move to the top level.
    pub async fn delete_channel(&self, guild: &str, channel: u64) -> Result<(), GuildError> {
        let gid = self.resolve(guild)?;
        let id = ChannelId(channel);
        let mut ops = vec![GuildOp::DeleteChannel(id)];
        self.on_view(&gid, |v, _| {
            for (cid, c) in v.channels() {
                if c.parent == Some(id) && ops.len() < MAX_OPS_PER_CHANGE {
                    let mut c = c.clone();
                    c.parent = None;
                    ops.push(GuildOp::PutChannel(*cid, c));
                }
            }
            Ok(())
        })?;
        self.checked_change(&gid, ops).await
    }

    /// Moves a channel (or category) one place up or down among its siblings
    /// (`MANAGE_CHANNELS` on each sibling whose position changes). At the edge: nothing.
    pub async fn move_channel(
        &self,
        guild: &str,
        channel: u64,
        up: bool,
    ) -> Result<(), GuildError> {
        let gid = self.resolve(guild)?;
        let id = ChannelId(channel);
        let ops = self.on_view(&gid, |v, _| {
            if !v.channels().contains_key(&id) {
                return Err(GuildError::UnknownChannel(channel.to_string()));
            }
            let mut order = siblings(v, id);
            let Some(i) = order.iter().position(|c| *c == id) else {
                return Ok(Vec::new());
            };
            let j = if up { i.checked_sub(1) } else { Some(i + 1) };
            let Some(j) = j.filter(|j| *j < order.len()) else {
                return Ok(Vec::new());
            };
            order.swap(i, j);
            let mut ops = Vec::new();
            for (pos, cid) in order.iter().enumerate().take(MAX_OPS_PER_CHANGE) {
                let pos = u16::try_from(pos).unwrap_or(u16::MAX);
                if let Some(c) = v.channels().get(cid)
                    && c.position != pos
                {
                    let mut c = c.clone();
                    c.position = pos;
                    ops.push(GuildOp::PutChannel(*cid, c));
                }
            }
            Ok(ops)
        })?;
        if ops.is_empty() {
            return Ok(());
        }
        self.checked_change(&gid, ops).await
    }

    /// Sets the overwrite for `target` in a channel: `allow` and `deny` bits (disjoint);
    /// both empty removes it (`MANAGE_CHANNELS` and `MANAGE_ROLES` there, and every bit set).
    pub async fn set_overwrite(
        &self,
        guild: &str,
        channel: u64,
        target: OverwriteFor,
        allow: u64,
        deny: u64,
    ) -> Result<ChannelDetail, GuildError> {
        let gid = self.resolve(guild)?;
        let id = ChannelId(channel);
        let (allow, deny) = (perms(allow)?, perms(deny)?);
        if allow.bits() & deny.bits() != 0 {
            return Err(GuildError::Invalid(
                "a permission is either allowed or denied, not both".into(),
            ));
        }
        let t = match &target {
            OverwriteFor::Role(r) => OverwriteTarget::Role(RoleId(*r)),
            OverwriteFor::Member(u) => OverwriteTarget::Member(parse_user(u)?),
        };
        let ch = self.on_view(&gid, |v, _| {
            match t {
                OverwriteTarget::Role(r) if !v.roles().contains_key(&r) => {
                    return Err(GuildError::UnknownRole(r.0.to_string()));
                }
                OverwriteTarget::Member(u) if v.member(&u).is_none() => {
                    return Err(GuildError::UnknownUser(user_hex(&u)));
                }
                _ => {}
            }
            let mut ch = v
                .channels()
                .get(&id)
                .cloned()
                .ok_or_else(|| GuildError::UnknownChannel(channel.to_string()))?;
            ch.overwrites.retain(|o| o.target != t);
            if !(allow.is_empty() && deny.is_empty()) {
                if ch.overwrites.len() >= MAX_OVERWRITES {
                    return Err(GuildError::Invalid(format!(
                        "a channel has at most {MAX_OVERWRITES} overwrites"
                    )));
                }
                ch.overwrites.push(Overwrite {
                    target: t,
                    allow,
                    deny,
                });
                ch.overwrites.sort_by_key(|o| o.target);
            }
            Ok(ch)
        })?;
        self.checked_change(&gid, vec![GuildOp::PutChannel(id, ch)])
            .await?;
        self.on_view(&gid, |v, me| {
            channel_detail(v, me, id).ok_or_else(|| GuildError::UnknownChannel(channel.to_string()))
        })
    }

    /// Roles, highest position first (`@everyone` last).
    pub fn list_roles(&self, guild: &str) -> Result<Vec<RoleInfo>, GuildError> {
        let gid = self.resolve(guild)?;
        self.on_view(&gid, |v, _| {
            let mut out: Vec<RoleInfo> =
                v.roles().keys().filter_map(|r| role_info(v, *r)).collect();
            out.sort_by(|a, b| b.position.cmp(&a.position).then(a.id.cmp(&b.id)));
            Ok(out)
        })
    }

    /// Creates a role from `edit` (name required; position defaults to just below this
    /// user's rank) (`MANAGE_ROLES`).
    pub async fn create_role_with(
        &self,
        guild: &str,
        edit: RoleEdit,
    ) -> Result<RoleInfo, GuildError> {
        let gid = self.resolve(guild)?;
        let name = check_name("role", edit.name.as_deref().unwrap_or_default())?;
        let bits = perms(edit.permissions.unwrap_or(0))?;
        let id = RoleId(rand_core::RngCore::next_u64(&mut rand_core::OsRng) | 1);
        let mut role = self.on_view(&gid, |v, me| {
            Ok(engine::new_role(v, v.rank(me), &name, bits))
        })?;
        role.colour = edit.colour.unwrap_or(0) & 0x00ff_ffff;
        role.hoisted = edit.hoisted.unwrap_or(false);
        role.mentionable = edit.mentionable.unwrap_or(false);
        if let Some(p) = edit.position {
            role.position = p;
        }
        self.checked_change(&gid, vec![GuildOp::PutRole(id, role)])
            .await?;
        self.on_view(&gid, |v, _| {
            role_info(v, id).ok_or_else(|| GuildError::UnknownRole(id.0.to_string()))
        })
    }

    /// Edits a role (`MANAGE_ROLES`, below this user's rank, only bits this user holds).
    pub async fn edit_role(
        &self,
        guild: &str,
        role: u64,
        edit: RoleEdit,
    ) -> Result<RoleInfo, GuildError> {
        let gid = self.resolve(guild)?;
        let id = RoleId(role);
        let mut r = self.on_view(&gid, |v, _| {
            v.roles()
                .get(&id)
                .cloned()
                .ok_or_else(|| GuildError::UnknownRole(role.to_string()))
        })?;
        if let Some(n) = &edit.name {
            r.name = check_name("role", n)?;
        }
        if let Some(c) = edit.colour {
            r.colour = c & 0x00ff_ffff;
        }
        if let Some(p) = edit.permissions {
            r.permissions = perms(p)?;
        }
        if let Some(p) = edit.position {
            r.position = p;
        }
        if let Some(h) = edit.hoisted {
            r.hoisted = h;
        }
        if let Some(m) = edit.mentionable {
            r.mentionable = m;
        }
        self.checked_change(&gid, vec![GuildOp::PutRole(id, r)])
            .await?;
        self.on_view(&gid, |v, _| {
            role_info(v, id).ok_or_else(|| GuildError::UnknownRole(role.to_string()))
        })
    }

    /// Deletes a role (`MANAGE_ROLES`, below this user's rank).
    pub async fn delete_role(&self, guild: &str, role: u64) -> Result<(), GuildError> {
        let gid = self.resolve(guild)?;
        self.checked_change(&gid, vec![GuildOp::DeleteRole(RoleId(role))])
            .await
    }

    /// Gives a member a role (`MANAGE_ROLES`, role below this user's rank).
    pub async fn grant_role_id(
        &self,
        guild: &str,
        user: &str,
        role: u64,
    ) -> Result<(), GuildError> {
        let gid = self.resolve(guild)?;
        let u = self.on_view(&gid, |v, _| resolve_user(v, user))?;
        self.checked_change(&gid, vec![GuildOp::GrantRole(u, RoleId(role))])
            .await
    }

    /// Takes a role from a member (`MANAGE_ROLES`, role below this user's rank).
    pub async fn revoke_role(&self, guild: &str, user: &str, role: u64) -> Result<(), GuildError> {
        let gid = self.resolve(guild)?;
        let u = self.on_view(&gid, |v, _| resolve_user(v, user))?;
        self.checked_change(&gid, vec![GuildOp::RevokeRole(u, RoleId(role))])
            .await
    }

    /// Members with role ids and ranks, by nickname.
    pub fn member_list(&self, guild: &str) -> Result<Vec<MemberDetail>, GuildError> {
        let gid = self.resolve(guild)?;
        self.on_view(&gid, |v, _| {
            let mut out: Vec<MemberDetail> = v
                .members()
                .iter()
                .map(|(u, m)| MemberDetail {
                    user: user_hex(u),
                    nickname: m.nickname.clone(),
                    owner: v.is_owner(u),
                    roles: m
                        .roles
                        .iter()
                        .filter(|r| v.roles().contains_key(r))
                        .map(|r| r.0)
                        .collect(),
                    rank: v.rank(u),
                    voice_muted: m.voice_muted,
                })
                .collect();
            out.sort_by(|a, b| a.nickname.cmp(&b.nickname).then(a.user.cmp(&b.user)));
            Ok(out)
        })
    }

    /// Kicks a member (`KICK_MEMBERS`, lower rank), with a clear refusal.
    pub async fn kick_member(&self, guild: &str, user: &str) -> Result<(), GuildError> {
        let gid = self.resolve(guild)?;
        let u = self.on_view(&gid, |v, _| resolve_user(v, user))?;
        self.checked_change(&gid, vec![GuildOp::Kick(u)]).await
    }

    /// Server-mutes (`on`) or unmutes a member in every voice channel of the guild
    /// (`MUTE_MEMBERS`, lower rank), with a clear refusal. Every member's client enforces it:
    /// the muted member's frames are dropped, and its own node stops sending.
    pub async fn set_voice_mute(
        &self,
        guild: &str,
        user: &str,
        on: bool,
    ) -> Result<(), GuildError> {
        let gid = self.resolve(guild)?;
        let u = self.on_view(&gid, |v, _| resolve_user(v, user))?;
        self.checked_change(&gid, vec![GuildOp::SetVoiceMute(u, on)])
            .await
    }

    /// Bans a user with a reason (`BAN_MEMBERS`, lower rank), with a clear refusal.
    pub async fn ban_member(
        &self,
        guild: &str,
        user: &str,
        reason: &str,
    ) -> Result<(), GuildError> {
        let gid = self.resolve(guild)?;
        if reason.len() > MAX_REASON {
            return Err(GuildError::Invalid(format!(
                "a ban reason has at most {MAX_REASON} bytes, got {}",
                reason.len()
            )));
        }
        let u = self.on_view(&gid, |v, _| resolve_user(v, user))?;
        self.checked_change(&gid, vec![GuildOp::Ban(u, reason.trim().to_owned())])
            .await
    }

    /// Lifts a ban (`BAN_MEMBERS`).
    pub async fn unban(&self, guild: &str, user: &str) -> Result<(), GuildError> {
        let gid = self.resolve(guild)?;
        let u = parse_user(user)?;
        self.checked_change(&gid, vec![GuildOp::Unban(u)]).await
    }

    /// Bans, by user id (at most [`MAX_BANS_LISTED`]).
    pub fn list_bans(&self, guild: &str) -> Result<Vec<BanInfo>, GuildError> {
        let gid = self.resolve(guild)?;
        self.on_view(&gid, |v, _| {
            Ok(v.bans()
                .iter()
                .take(MAX_BANS_LISTED)
                .map(|(u, b)| BanInfo {
                    user: user_hex(u),
                    reason: b.reason.clone(),
                    by: user_hex(&b.by),
                })
                .collect())
        })
    }

    /// Invites recorded in the guild (at most [`MAX_INVITES_LISTED`]); those this device
    /// created carry their shareable code, with this node's current addresses.
    pub async fn list_invites(&self, guild: &str) -> Result<Vec<InviteInfo>, GuildError> {
        let gid = self.resolve(guild)?;
        let addrs = self.my_addrs().await.unwrap_or_default();
        let now = engine::now_ms() / 1000;
        self.with_engine(|e, db| {
            let g = e.guild_mut(&gid)?;
            let v = g.crdt.view();
            let mut out = Vec::new();
            for (code, st) in v.invites().iter().take(MAX_INVITES_LISTED) {
                let secret: Option<Vec<u8>> =
                    rusqlite::OptionalExtension::optional(db.conn().query_row(
                        "SELECT secret FROM guild_invites WHERE code = ?1 AND guild = ?2",
                        rusqlite::params![&code.0[..], &gid.0[..]],
                        |r| r.get(0),
                    ))?;
                let code_text = secret
                    .and_then(|s| <[u8; 32]>::try_from(s).ok())
                    .filter(|_| !addrs.is_empty())
                    .map(|s| {
                        InviteLink {
                            guild: gid,
                            invite: *code,
                            secret: securecomm_noise::secret::Secret32::from_bytes(s),
                            expires_at: st.invite.expires_at,
                            namespace: rendezvous_namespace(&gid),
                            addrs: addrs.clone(),
                        }
                        .to_text()
                    });
                out.push(InviteInfo {
                    id: hex::encode(code.0),
                    creator: user_hex(&st.invite.creator),
                    expires_at: st.invite.expires_at,
                    max_uses: st.invite.max_uses,
                    uses: st.uses,
                    revoked: st.revoked,
                    usable: st.usable_at(now),
                    code: code_text,
                });
            }
            Ok(out)
        })?
    }

    /// Revokes an invite by id (its creator, or `MANAGE_GUILD`).
    pub async fn revoke_invite(&self, guild: &str, invite: &str) -> Result<(), GuildError> {
        let gid = self.resolve(guild)?;
        let code = hex::decode(invite.trim())
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(InviteCode)
            .ok_or_else(|| {
                GuildError::Invalid(format!(
                    "expected an invite id of 32 hex digits, got {invite:?}"
                ))
            })?;
        self.checked_change(&gid, vec![GuildOp::RevokeInvite(code)])
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_names_read_well() {
        assert_eq!(pretty("manage_roles"), "Manage Roles");
        assert_eq!(pretty("view_channel"), "View Channel");
    }

    #[test]
    fn refusals_become_sentences() {
        let e = explain(&AuthzError::MissingPermission {
            index: 0,
            needed: Permissions::MANAGE_ROLES,
            has: Permissions::VIEW_CHANNEL,
        });
        assert_eq!(
            e.to_string(),
            "not permitted: you need the Manage Roles permission for this"
        );
        let e = explain(&AuthzError::Hierarchy {
            index: 0,
            author: 3,
            target: 5,
        });
        assert!(e.to_string().contains("below your own highest role"), "{e}");
    }
}
