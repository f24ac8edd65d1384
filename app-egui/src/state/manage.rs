//! Guild management state: the data the node sent ([`GuildData`] per guild), the forms of the
//! new-channel dialog and the guild settings window, and the user's management actions.
//!
//! As in the parent module, the `on_*` methods only validate forms and return the commands to
//! send; what the guild really looks like afterwards comes back from the node as a fresh
//! [`GuildData`] (or as one error shown once in the status bar). Permission checks here only
//! decide which buttons are enabled and what their hover text says; the node and every other
//! replica enforce them.

use std::collections::{HashMap, HashSet};

use securecomm_node::guild::engine::PERMISSION_NAMES;
use securecomm_node::guild::{
    ChannelDetail, ChannelEdit, MemberDetail, NewChannelKind, OverwriteFor, RoleEdit, RoleInfo,
    SettingsEdit,
};

use super::AppState;
use crate::backend::{Command, GuildData, ManageCmd, ManageEvent};

/// Most categories remembered as collapsed (older entries are forgotten beyond it).
pub const MAX_COLLAPSED: usize = 1024;
/// Choices for an invite's maximum uses (0: unlimited).
pub const USES_CHOICES: [u32; 6] = [0, 1, 5, 10, 25, 100];
/// Slow-mode choices, seconds.
pub const SLOW_MODE_CHOICES: [u32; 7] = [0, 5, 10, 30, 60, 300, 3600];

/// The bit of a permission by its node name (`"manage_roles"`); 0 if unknown.
pub fn perm(name: &str) -> u64 {
    PERMISSION_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, p)| p.bits())
}

/// "manage_roles" -> "Manage Roles".
pub fn perm_label(name: &str) -> String {
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

/// A tab of the guild settings window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tab {
    /// Name and history visibility.
    #[default]
    Overview,
    /// The role editor.
    Roles,
    /// Roles of members, kick, ban, unban.
    Members,
    /// Topic, slow mode, order and overwrites of one channel.
    Channels,
    /// Create, list, revoke invites.
    Invites,
    /// Custom emoji: upload, list, delete.
    Emoji,
}

/// When a new invite expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiry {
    /// Never.
    #[default]
    Never,
    /// In an hour.
    Hour,
    /// In a day.
    Day,
    /// In a week.
    Week,
}

impl Expiry {
    /// Every choice, in menu order.
    pub const ALL: [Expiry; 4] = [Self::Never, Self::Hour, Self::Day, Self::Week];

    /// Seconds until expiry (`None`: never).
    pub fn secs(self) -> Option<u64> {
        match self {
            Self::Never => None,
            Self::Hour => Some(3600),
            Self::Day => Some(86_400),
            Self::Week => Some(7 * 86_400),
        }
    }

    /// Menu text.
    pub fn label(self) -> &'static str {
        match self {
            Self::Never => "Never",
            Self::Hour => "1 hour",
            Self::Day => "1 day",
            Self::Week => "7 days",
        }
    }
}

/// The new-channel dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChannelForm {
    /// Whether it is shown.
    pub open: bool,
    /// Name typed.
    pub name: String,
    /// Kind chosen.
    pub kind: NewChannelKind,
    /// Category chosen.
    pub parent: Option<u64>,
}

impl Default for NewChannelForm {
    fn default() -> Self {
        Self {
            open: false,
            name: String::new(),
            kind: NewChannelKind::Text,
            parent: None,
        }
    }
}

/// The role being edited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleForm {
    /// Which role (`None`: nothing selected).
    pub role: Option<u64>,
    /// Name.
    pub name: String,
    /// Colour, RGB.
    pub colour: [u8; 3],
    /// Permission bits.
    pub permissions: u64,
    /// Position.
    pub position: u16,
    /// Hoisted.
    pub hoisted: bool,
    /// Mentionable.
    pub mentionable: bool,
}

/// One permission's state in an overwrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    /// Allowed in the channel.
    Allow,
    /// As the roles say.
    Neutral,
    /// Denied in the channel.
    Deny,
}

/// The channel being edited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelForm {
    /// Which channel.
    pub channel: Option<u64>,
    /// Name.
    pub name: String,
    /// Topic.
    pub topic: String,
    /// Slow mode, seconds.
    pub slow_mode_secs: u32,
    /// Default disappearing-message timer, seconds (0: off).
    pub disappearing_secs: u32,
    /// The overwrite target being edited.
    pub target: Option<OverwriteFor>,
    /// Allowed bits of that overwrite.
    pub allow: u64,
    /// Denied bits of that overwrite.
    pub deny: u64,
}

impl ChannelForm {
    /// A permission's state in the edited overwrite.
    pub fn tri(&self, bit: u64) -> Tri {
        if self.allow & bit != 0 {
            Tri::Allow
        } else if self.deny & bit != 0 {
            Tri::Deny
        } else {
            Tri::Neutral
        }
    }

    /// Sets a permission's state in the edited overwrite.
    pub fn set_tri(&mut self, bit: u64, t: Tri) {
        self.allow &= !bit;
        self.deny &= !bit;
        match t {
            Tri::Allow => self.allow |= bit,
            Tri::Deny => self.deny |= bit,
            Tri::Neutral => {}
        }
    }
}

/// The guild settings window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsWindow {
    /// Whether it is shown.
    pub open: bool,
    /// Tab shown.
    pub tab: Tab,
    /// Guild name typed.
    pub guild_name: String,
    /// History visibility chosen.
    pub history_visible: bool,
    /// The role editor.
    pub role: RoleForm,
    /// Name typed for a new role.
    pub new_role_name: String,
    /// Member selected in the members tab (hex).
    pub member: Option<String>,
    /// Ban reason typed.
    pub ban_reason: String,
    /// The channel editor.
    pub channel: ChannelForm,
    /// Expiry of the next invite.
    pub expiry: Expiry,
    /// Max uses of the next invite (0: unlimited).
    pub uses: u32,
}

/// Everything management keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManageState {
    /// Per guild (hex id): what the node last sent.
    pub data: HashMap<String, GuildData>,
    /// Collapsed categories.
    pub collapsed: HashSet<u64>,
    /// The new-channel dialog.
    pub new_channel: NewChannelForm,
    /// The guild settings window.
    pub settings: SettingsWindow,
}

/// One group of the channel list: a category (or the top level) and its channels, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelGroup<'a> {
    /// The category; `None` for channels outside any.
    pub category: Option<&'a ChannelDetail>,
    /// Its channels.
    pub channels: Vec<&'a ChannelDetail>,
}

/// Channels grouped for the sidebar: top-level channels first, then each category with its
/// channels, each by `(position, id)`. A channel whose category is missing is top level.
pub fn channel_tree(details: &[ChannelDetail]) -> Vec<ChannelGroup<'_>> {
    let is_cat = |c: &ChannelDetail| c.kind == "category";
    let mut cats: Vec<&ChannelDetail> = details.iter().filter(|c| is_cat(c)).collect();
    cats.sort_by_key(|c| (c.position, c.id));
    let cat_ids: HashSet<u64> = cats.iter().map(|c| c.id).collect();
    let mut top: Vec<&ChannelDetail> = details
        .iter()
        .filter(|c| !is_cat(c) && c.parent.is_none_or(|p| !cat_ids.contains(&p)))
        .collect();
    top.sort_by_key(|c| (c.position, c.id));
    let mut out = vec![ChannelGroup {
        category: None,
        channels: top,
    }];
    for cat in cats {
        let mut chs: Vec<&ChannelDetail> = details
            .iter()
            .filter(|c| !is_cat(c) && c.parent == Some(cat.id))
            .collect();
        chs.sort_by_key(|c| (c.position, c.id));
        out.push(ChannelGroup {
            category: Some(cat),
            channels: chs,
        });
    }
    out
}

/// One group of the member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberGroup<'a> {
    /// The hoisted role's name, or "Members".
    pub title: String,
    /// Members with the colour of their top coloured role (0: none).
    pub members: Vec<(&'a MemberDetail, u32)>,
}

/// Members grouped by their highest hoisted role (highest role first), then the rest under
/// "Members"; each name comes with the colour of the member's highest coloured role.
pub fn member_groups<'a>(members: &'a [MemberDetail], roles: &[RoleInfo]) -> Vec<MemberGroup<'a>> {
    let by_id: HashMap<u64, &RoleInfo> = roles.iter().map(|r| (r.id, r)).collect();
    let top = |m: &MemberDetail, pred: &dyn Fn(&RoleInfo) -> bool| -> Option<&RoleInfo> {
        m.roles
            .iter()
            .filter_map(|r| by_id.get(r).copied())
            .filter(|r| pred(r))
            .max_by_key(|r| (r.position, std::cmp::Reverse(r.id)))
    };
    let mut hoisted: Vec<&RoleInfo> = roles.iter().filter(|r| r.hoisted && r.id != 0).collect();
    hoisted.sort_by(|a, b| b.position.cmp(&a.position).then(a.id.cmp(&b.id)));
    let mut groups: Vec<(Option<u64>, MemberGroup<'a>)> = hoisted
        .iter()
        .map(|r| {
            (
                Some(r.id),
                MemberGroup {
                    title: r.name.clone(),
                    members: Vec::new(),
                },
            )
        })
        .collect();
    groups.push((
        None,
        MemberGroup {
            title: "Members".into(),
            members: Vec::new(),
        },
    ));
    for m in members {
        let colour = top(m, &|r| r.colour != 0).map_or(0, |r| r.colour);
        let key = top(m, &|r| r.hoisted).map(|r| r.id);
        if let Some((_, g)) = groups.iter_mut().find(|(k, _)| *k == key) {
            g.members.push((m, colour));
        }
    }
    groups
        .into_iter()
        .map(|(_, g)| g)
        .filter(|g| !g.members.is_empty())
        .collect()
}

fn rgb(c: u32) -> [u8; 3] {
    let [_, r, g, b] = c.to_be_bytes();
    [r, g, b]
}

fn from_rgb(c: [u8; 3]) -> u32 {
    u32::from_be_bytes([0, c[0], c[1], c[2]])
}

fn manage(c: ManageCmd) -> Vec<Command> {
    vec![Command::Manage(c)]
}

impl AppState {
    /// The selected guild's management data.
    pub fn guild_data(&self) -> Option<&GuildData> {
        self.guild.as_ref().and_then(|g| self.manage.data.get(g))
    }

    fn selected_guild(&mut self) -> Option<String> {
        let g = self.guild.clone();
        if g.is_none() {
            self.error("pick a guild first");
        }
        g
    }

    /// Why this user may not use guild-wide permission `bit` (`None`: they may).
    pub fn lacks(&self, bit: u64) -> Option<String> {
        let Some(d) = self.guild_data() else {
            return Some("still loading the guild".into());
        };
        if d.overview.my_permissions & bit == bit {
            return None;
        }
        let names: Vec<String> = PERMISSION_NAMES
            .iter()
            .filter(|(_, p)| p.bits() & bit != 0)
            .map(|(n, _)| perm_label(n))
            .collect();
        Some(format!("You need the {} permission", names.join(", ")))
    }

    /// Why this user may not edit, delete or hand out `role` (`None`: they may).
    pub fn cannot_manage_role(&self, role: &RoleInfo) -> Option<String> {
        if let Some(why) = self.lacks(perm("manage_roles")) {
            return Some(why);
        }
        let d = self.guild_data()?;
        if !d.overview.i_am_owner && u32::from(role.position) >= d.overview.my_rank {
            return Some("This role is not below your highest role".into());
        }
        None
    }

    /// Why this user may not use `bit` on `member` (kick, ban) (`None`: they may).
    pub fn cannot_act_on(&self, member: &MemberDetail, bit: u64) -> Option<String> {
        if let Some(why) = self.lacks(bit) {
            return Some(why);
        }
        if member.owner {
            return Some("Nobody can do this to the owner".into());
        }
        if self.me.as_ref().is_some_and(|m| m.user_id == member.user) {
            return Some("Not on yourself".into());
        }
        let d = self.guild_data()?;
        if !d.overview.i_am_owner && member.rank >= d.overview.my_rank {
            return Some("Their highest role is not below yours".into());
        }
        None
    }

    /// Folds management data from the node.
    pub fn apply_manage(&mut self, ev: ManageEvent) -> Vec<Command> {
        match ev {
            ManageEvent::Loaded(d) => {
                let guild = d.guild.clone();
                let fresh_overview = !self.manage.data.contains_key(&guild);
                self.manage.data.insert(guild.clone(), *d);
                if fresh_overview && self.guild.as_deref() == Some(guild.as_str()) {
                    self.fill_overview();
                }
                Vec::new()
            }
            ManageEvent::ChannelCreated { guild, channel } => {
                self.manage.new_channel = NewChannelForm::default();
                let mut cmds = Vec::new();
                if channel.kind == "text" && self.guild.as_deref() == Some(guild.as_str()) {
                    cmds.extend(self.on_select_channel(&guild, channel.id));
                }
                cmds.push(Command::LoadGuild { guild });
                cmds
            }
        }
    }

    fn fill_overview(&mut self) {
        if let Some(o) = self.guild_data().map(|d| d.overview.clone()) {
            self.manage.settings.guild_name = o.name;
            self.manage.settings.history_visible = o.history_visible_to_new_members;
        }
    }

    /// Opens the guild settings window on the selected guild.
    pub fn on_open_settings(&mut self) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        self.manage.settings = SettingsWindow {
            open: true,
            ..SettingsWindow::default()
        };
        self.fill_overview();
        manage(ManageCmd::Load { guild })
    }

    /// Opens the new-channel dialog (in `parent`, if given).
    pub fn on_open_new_channel(&mut self, parent: Option<u64>) {
        self.manage.new_channel = NewChannelForm {
            open: true,
            parent,
            ..NewChannelForm::default()
        };
    }

    /// The dialog's "Add channel".
    pub fn on_add_channel(&mut self) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        let f = &self.manage.new_channel;
        let name = f.name.trim().to_owned();
        if name.is_empty() {
            self.error("a channel needs a name");
            return Vec::new();
        }
        let parent = if f.kind == NewChannelKind::Category {
            None
        } else {
            f.parent
        };
        manage(ManageCmd::CreateChannel {
            guild,
            name,
            kind: f.kind,
            parent,
        })
    }

    /// Collapses or expands a category in the channel list.
    pub fn on_toggle_category(&mut self, id: u64) {
        if !self.manage.collapsed.remove(&id) {
            if self.manage.collapsed.len() >= MAX_COLLAPSED {
                self.manage.collapsed.clear();
            }
            self.manage.collapsed.insert(id);
        }
    }

    /// Moves a channel or category up or down.
    pub fn on_move_channel(&mut self, channel: u64, up: bool) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        manage(ManageCmd::MoveChannel { guild, channel, up })
    }

    /// Overview tab: "Save".
    pub fn on_save_overview(&mut self) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        let s = &self.manage.settings;
        let name = s.guild_name.trim().to_owned();
        if name.is_empty() {
            self.error("a guild needs a name");
            return Vec::new();
        }
        let current = self.guild_data().map(|d| d.overview.clone());
        let edit = SettingsEdit {
            name: (current.as_ref().map(|o| o.name.as_str()) != Some(name.as_str()))
                .then_some(name),
            history_visible_to_new_members: Some(s.history_visible),
            max_upload_bytes: None,
        };
        manage(ManageCmd::UpdateSettings { guild, edit })
    }

    /// Roles tab: picks a role into the editor.
    pub fn on_select_role(&mut self, id: u64) {
        let Some(r) = self
            .guild_data()
            .and_then(|d| d.roles.iter().find(|r| r.id == id))
            .cloned()
        else {
            return;
        };
        self.manage.settings.role = RoleForm {
            role: Some(id),
            name: r.name,
            colour: rgb(r.colour),
            permissions: r.permissions,
            position: r.position,
            hoisted: r.hoisted,
            mentionable: r.mentionable,
        };
    }

    /// Roles tab: "Create role".
    pub fn on_create_role(&mut self) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        let name = self.manage.settings.new_role_name.trim().to_owned();
        if name.is_empty() {
            self.error("a role needs a name");
            return Vec::new();
        }
        self.manage.settings.new_role_name.clear();
        manage(ManageCmd::CreateRole {
            guild,
            edit: RoleEdit {
                name: Some(name),
                ..RoleEdit::default()
            },
        })
    }

    /// Roles tab: "Save role".
    pub fn on_save_role(&mut self) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        let f = self.manage.settings.role.clone();
        let Some(role) = f.role else {
            self.error("pick a role first");
            return Vec::new();
        };
        let everyone = role == 0;
        manage(ManageCmd::EditRole {
            guild,
            role,
            edit: RoleEdit {
                name: (!everyone).then_some(f.name),
                colour: Some(from_rgb(f.colour)),
                permissions: Some(f.permissions),
                position: (!everyone).then_some(f.position),
                hoisted: Some(f.hoisted),
                mentionable: Some(f.mentionable),
            },
        })
    }

    /// Roles tab: "Delete role".
    pub fn on_delete_role(&mut self) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        let Some(role) = self.manage.settings.role.role.filter(|r| *r != 0) else {
            self.error("pick a role other than @everyone first");
            return Vec::new();
        };
        self.manage.settings.role = RoleForm::default();
        manage(ManageCmd::DeleteRole { guild, role })
    }

    /// Members tab: grant (`true`) or revoke a role.
    pub fn on_set_member_role(&mut self, user: &str, role: u64, grant: bool) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        let user = user.to_owned();
        manage(if grant {
            ManageCmd::GrantRole { guild, user, role }
        } else {
            ManageCmd::RevokeRole { guild, user, role }
        })
    }

    /// Members tab: "Kick".
    pub fn on_kick(&mut self, user: &str) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        self.manage.settings.member = None;
        manage(ManageCmd::Kick {
            guild,
            user: user.to_owned(),
        })
    }

    /// Members tab: "Server mute" or "Server unmute" (every voice channel of the guild).
    pub fn on_server_mute(&mut self, user: &str, on: bool) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        manage(ManageCmd::ServerMute {
            guild,
            user: user.to_owned(),
            on,
        })
    }

    /// Members tab: "Ban" with the typed reason.
    pub fn on_ban(&mut self, user: &str) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        let reason = std::mem::take(&mut self.manage.settings.ban_reason)
            .trim()
            .to_owned();
        self.manage.settings.member = None;
        manage(ManageCmd::Ban {
            guild,
            user: user.to_owned(),
            reason,
        })
    }

    /// Members tab: "Unban".
    pub fn on_unban(&mut self, user: &str) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        manage(ManageCmd::Unban {
            guild,
            user: user.to_owned(),
        })
    }

    /// Channels tab: picks a channel into the editor.
    pub fn on_select_settings_channel(&mut self, id: u64) {
        let Some(c) = self
            .guild_data()
            .and_then(|d| d.channels.iter().find(|c| c.id == id))
            .cloned()
        else {
            return;
        };
        self.manage.settings.channel = ChannelForm {
            channel: Some(id),
            name: c.name,
            topic: c.topic,
            slow_mode_secs: c.slow_mode_secs,
            disappearing_secs: c.disappearing_secs,
            target: None,
            allow: 0,
            deny: 0,
        };
    }

    /// Channels tab: "Save channel".
    pub fn on_save_channel(&mut self) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        let f = self.manage.settings.channel.clone();
        let Some(channel) = f.channel else {
            self.error("pick a channel first");
            return Vec::new();
        };
        manage(ManageCmd::EditChannel {
            guild,
            channel,
            edit: ChannelEdit {
                name: Some(f.name),
                topic: Some(f.topic),
                slow_mode_secs: Some(f.slow_mode_secs),
                disappearing_secs: Some(f.disappearing_secs),
                parent: None,
            },
        })
    }

    /// Channels tab: picks whose overwrite to edit (loads its current bits).
    pub fn on_select_overwrite_target(&mut self, target: OverwriteFor) {
        let f = &self.manage.settings.channel;
        let existing = self
            .guild_data()
            .and_then(|d| d.channels.iter().find(|c| Some(c.id) == f.channel))
            .and_then(|c| c.overwrites.iter().find(|o| o.target == target))
            .map(|o| (o.allow, o.deny));
        let (allow, deny) = existing.unwrap_or((0, 0));
        let f = &mut self.manage.settings.channel;
        f.target = Some(target);
        f.allow = allow;
        f.deny = deny;
    }

    /// Channels tab: "Save overwrite" (all neutral removes it).
    pub fn on_save_overwrite(&mut self) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        let f = self.manage.settings.channel.clone();
        let (Some(channel), Some(target)) = (f.channel, f.target) else {
            self.error("pick a channel and a role or member first");
            return Vec::new();
        };
        manage(ManageCmd::SetOverwrite {
            guild,
            channel,
            target,
            allow: f.allow,
            deny: f.deny,
        })
    }

    /// Invites tab: "Create invite" with the chosen expiry and uses.
    pub fn on_create_invite_with_options(&mut self) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        let s = &self.manage.settings;
        manage(ManageCmd::CreateInvite {
            guild,
            expires: s.expiry.secs(),
            uses: s.uses,
        })
    }

    /// Invites tab: "Revoke".
    pub fn on_revoke_invite(&mut self, invite: &str) -> Vec<Command> {
        let Some(guild) = self.selected_guild() else {
            return Vec::new();
        };
        manage(ManageCmd::RevokeInvite {
            guild,
            invite: invite.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use securecomm_node::guild::GuildOverview;

    use super::*;
    use crate::backend::{Event, Me};

    fn ch(id: u64, name: &str, kind: &str, parent: Option<u64>, position: u16) -> ChannelDetail {
        ChannelDetail {
            id,
            name: name.into(),
            kind: kind.into(),
            topic: String::new(),
            parent,
            position,
            slow_mode_secs: 0,
            disappearing_secs: 0,
            overwrites: Vec::new(),
            my_permissions: 0,
        }
    }

    fn role(id: u64, name: &str, position: u16, colour: u32, hoisted: bool) -> RoleInfo {
        RoleInfo {
            id,
            name: name.into(),
            colour,
            position,
            permissions: 0,
            hoisted,
            mentionable: false,
            members: 0,
        }
    }

    fn member(user: &str, roles: &[u64], rank: u32) -> MemberDetail {
        MemberDetail {
            user: user.into(),
            nickname: user.into(),
            owner: false,
            roles: roles.to_vec(),
            rank,
            voice_muted: false,
        }
    }

    fn state_with(perms: u64, rank: u32, owner: bool) -> AppState {
        let mut s = AppState::new("/tmp/x".into(), true);
        s.me = Some(Me {
            display_name: "me".into(),
            user_id: "me".into(),
            peer_id: "p".into(),
        });
        s.guild = Some("g".into());
        let _ = s.apply(Event::Manage(ManageEvent::Loaded(Box::new(GuildData {
            guild: "g".into(),
            overview: GuildOverview {
                id: "g".into(),
                name: "Guild".into(),
                owner: None,
                history_visible_to_new_members: false,
                max_upload_bytes: 0,
                my_permissions: perms,
                my_rank: rank,
                i_am_owner: owner,
            },
            roles: vec![
                role(5, "Mod", 5, 0xff0000, true),
                role(0, "@everyone", 0, 0, false),
            ],
            channels: vec![ch(1, "general", "text", None, 0)],
            members: vec![member("me", &[], rank), member("bob", &[5], 5)],
            bans: Vec::new(),
            invites: Vec::new(),
        }))));
        s
    }

    #[test]
    fn channels_group_under_categories_in_position_order() {
        let d = vec![
            ch(10, "Zeta", "category", None, 1),
            ch(11, "Alpha", "category", None, 0),
            ch(1, "b", "text", Some(10), 1),
            ch(2, "a", "voice", Some(10), 0),
            ch(3, "top", "text", None, 5),
            ch(4, "orphan", "text", Some(99), 0),
            ch(5, "c", "text", Some(11), 0),
        ];
        let t = channel_tree(&d);
        let names: Vec<(Option<&str>, Vec<&str>)> = t
            .iter()
            .map(|g| {
                (
                    g.category.map(|c| c.name.as_str()),
                    g.channels.iter().map(|c| c.name.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                (None, vec!["orphan", "top"]),
                (Some("Alpha"), vec!["c"]),
                (Some("Zeta"), vec!["a", "b"]),
            ]
        );
    }

    #[test]
    fn members_group_by_highest_hoisted_role_and_take_top_colour() {
        let roles = vec![
            role(1, "Admin", 9, 0x00ff00, true),
            role(2, "Mod", 5, 0xff0000, true),
            role(3, "Blue", 7, 0x0000ff, false),
            role(4, "Plain", 3, 0, false),
        ];
        let ms = vec![
            member("ann", &[1, 2], 9),
            member("bob", &[2, 3], 7),
            member("cid", &[4], 3),
            member("dan", &[], 0),
        ];
        let g = member_groups(&ms, &roles);
        let view: Vec<(&str, Vec<(&str, u32)>)> = g
            .iter()
            .map(|g| {
                (
                    g.title.as_str(),
                    g.members
                        .iter()
                        .map(|(m, c)| (m.user.as_str(), *c))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("Admin", vec![("ann", 0x00ff00)]),
                ("Mod", vec![("bob", 0x0000ff)]),
                ("Members", vec![("cid", 0), ("dan", 0)]),
            ]
        );
    }

    #[test]
    fn buttons_follow_permissions_and_hierarchy() {
        let s = state_with(perm("kick_members"), 3, false);
        assert!(s.lacks(perm("kick_members")).is_none());
        let why = s.lacks(perm("manage_roles")).unwrap();
        assert_eq!(why, "You need the Manage Roles permission");
        let data = s.guild_data().unwrap().clone();
        let bob = &data.members[1];
        assert!(
            s.cannot_act_on(bob, perm("kick_members"))
                .unwrap()
                .contains("not below yours")
        );
        assert!(
            s.cannot_act_on(&data.members[0], perm("kick_members"))
                .is_some()
        );
        let owner = state_with(perm("manage_roles"), u32::MAX, true);
        assert!(owner.cannot_manage_role(&data.roles[0]).is_none());
        let low = state_with(perm("manage_roles"), 5, false);
        assert!(
            low.cannot_manage_role(&data.roles[0]).is_some(),
            "equal rank"
        );
    }

    #[test]
    fn forms_validate_and_become_commands() {
        let mut s = state_with(u64::MAX, u32::MAX, true);
        assert_eq!(
            s.manage.settings.guild_name, "Guild",
            "overview filled on load"
        );
        s.on_open_new_channel(Some(10));
        assert!(s.on_add_channel().is_empty(), "no name");
        assert_eq!(s.errors.len(), 1);
        s.manage.new_channel.name = " lounge ".into();
        s.manage.new_channel.kind = NewChannelKind::Category;
        assert!(matches!(
            s.on_add_channel().as_slice(),
            [Command::Manage(ManageCmd::CreateChannel { name, kind: NewChannelKind::Category, parent: None, .. })]
                if name == "lounge"
        ));
        s.on_select_role(5);
        assert_eq!(s.manage.settings.role.colour, [0xff, 0, 0]);
        s.manage.settings.role.colour = [0, 0x80, 0xff];
        assert!(matches!(
            s.on_save_role().as_slice(),
            [Command::Manage(ManageCmd::EditRole { role: 5, edit, .. })]
                if edit.colour == Some(0x0080ff) && edit.position == Some(5)
        ));
        s.manage.settings.ban_reason = "spam ".into();
        assert!(matches!(
            s.on_ban("bob").as_slice(),
            [Command::Manage(ManageCmd::Ban { reason, .. })] if reason == "spam"
        ));
        assert!(s.manage.settings.ban_reason.is_empty());
        s.manage.settings.expiry = Expiry::Day;
        s.manage.settings.uses = 25;
        assert!(matches!(
            s.on_create_invite_with_options().as_slice(),
            [Command::Manage(ManageCmd::CreateInvite {
                expires: Some(86_400),
                uses: 25,
                ..
            })]
        ));
    }

    #[test]
    fn overwrite_editor_is_tri_state_and_loads_existing_bits() {
        let mut s = state_with(u64::MAX, u32::MAX, true);
        if let Some(d) = s.manage.data.get_mut("g") {
            d.channels[0]
                .overwrites
                .push(securecomm_node::guild::OverwriteInfo {
                    target: OverwriteFor::Role(0),
                    allow: 0,
                    deny: perm("send_messages"),
                });
        }
        s.on_select_settings_channel(1);
        s.on_select_overwrite_target(OverwriteFor::Role(0));
        let f = &mut s.manage.settings.channel;
        assert_eq!(f.tri(perm("send_messages")), Tri::Deny);
        f.set_tri(perm("send_messages"), Tri::Allow);
        f.set_tri(perm("view_channel"), Tri::Deny);
        f.set_tri(perm("view_channel"), Tri::Neutral);
        assert_eq!((f.allow, f.deny), (perm("send_messages"), 0));
        assert!(matches!(
            s.on_save_overwrite().as_slice(),
            [Command::Manage(ManageCmd::SetOverwrite { channel: 1, allow, deny: 0, .. })]
                if *allow == perm("send_messages")
        ));
    }

    #[test]
    fn collapsed_categories_are_bounded() {
        let mut s = AppState::new("/tmp/x".into(), true);
        for i in 0..(MAX_COLLAPSED as u64 + 10) {
            s.on_toggle_category(i);
        }
        assert!(s.manage.collapsed.len() <= MAX_COLLAPSED);
        let mut s = AppState::new("/tmp/x".into(), true);
        s.on_toggle_category(7);
        assert!(s.manage.collapsed.contains(&7));
        s.on_toggle_category(7);
        assert!(!s.manage.collapsed.contains(&7));
    }
}
