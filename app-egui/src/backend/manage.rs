//! Guild management commands and their events: the node side of the guild settings window,
//! the grouped channel list and the member list.
//!
//! Every mutating command, on success, reloads the guild's management data
//! ([`load`]) so the window shows what the guild document now says; on failure the node's
//! error (a crdt refusal already phrased for people by the node) becomes one
//! [`Event::Error`](super::Event::Error).

use securecomm_node::guild::{
    BanInfo, ChannelDetail, ChannelEdit, GuildOverview, GuildService, InviteInfo, MemberDetail,
    NewChannelKind, OverwriteFor, RoleEdit, RoleInfo, SettingsEdit,
};

use super::{Emitter, Event};
use crate::state::emoji::CustomEmoji;

/// What the management UI asks of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManageCmd {
    /// Reload overview, roles, channel details, members, bans and invites.
    Load {
        /// Guild id (hex).
        guild: String,
    },
    /// Create a channel or category.
    CreateChannel {
        /// Guild id (hex).
        guild: String,
        /// Name.
        name: String,
        /// Text, voice or category.
        kind: NewChannelKind,
        /// Category to put it in.
        parent: Option<u64>,
    },
    /// Edit a channel.
    EditChannel {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// What changes.
        edit: ChannelEdit,
    },
    /// Move a channel up or down among its siblings.
    MoveChannel {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Up (else down).
        up: bool,
    },
    /// Delete a channel or category.
    DeleteChannel {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
    },
    /// Set (or with both empty, remove) a permission overwrite.
    SetOverwrite {
        /// Guild id (hex).
        guild: String,
        /// Channel id.
        channel: u64,
        /// Role or member.
        target: OverwriteFor,
        /// Allowed bits.
        allow: u64,
        /// Denied bits.
        deny: u64,
    },
    /// Create a role.
    CreateRole {
        /// Guild id (hex).
        guild: String,
        /// Its fields.
        edit: RoleEdit,
    },
    /// Edit a role.
    EditRole {
        /// Guild id (hex).
        guild: String,
        /// Role id.
        role: u64,
        /// What changes.
        edit: RoleEdit,
    },
    /// Delete a role.
    DeleteRole {
        /// Guild id (hex).
        guild: String,
        /// Role id.
        role: u64,
    },
    /// Give a member a role.
    GrantRole {
        /// Guild id (hex).
        guild: String,
        /// User (hex).
        user: String,
        /// Role id.
        role: u64,
    },
    /// Take a role from a member.
    RevokeRole {
        /// Guild id (hex).
        guild: String,
        /// User (hex).
        user: String,
        /// Role id.
        role: u64,
    },
    /// Kick a member.
    Kick {
        /// Guild id (hex).
        guild: String,
        /// User (hex).
        user: String,
    },
    /// Ban a user.
    Ban {
        /// Guild id (hex).
        guild: String,
        /// User (hex).
        user: String,
        /// Why.
        reason: String,
    },
    /// Lift a ban.
    Unban {
        /// Guild id (hex).
        guild: String,
        /// User (hex).
        user: String,
    },
    /// Create an invite with options.
    CreateInvite {
        /// Guild id (hex).
        guild: String,
        /// Seconds until it expires (`None`: never).
        expires: Option<u64>,
        /// Most uses (0: unlimited).
        uses: u32,
    },
    /// Revoke an invite.
    RevokeInvite {
        /// Guild id (hex).
        guild: String,
        /// Invite id (hex).
        invite: String,
    },
    /// Rename the guild or change its history visibility.
    UpdateSettings {
        /// Guild id (hex).
        guild: String,
        /// What changes.
        edit: SettingsEdit,
    },
    /// Server-mute or unmute a member.
    ServerMute {
        /// Guild id (hex).
        guild: String,
        /// User id (hex).
        user: String,
        /// Mute (else unmute).
        on: bool,
    },
    /// Make a custom emoji from an image file.
    UploadEmoji {
        /// Guild id (hex).
        guild: String,
        /// The image file.
        path: std::path::PathBuf,
        /// Its name.
        name: String,
    },
    /// Delete a custom emoji.
    DeleteEmoji {
        /// Guild id (hex).
        guild: String,
        /// Emoji id.
        id: u64,
    },
}

/// Management data from the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManageEvent {
    /// Everything the settings window shows for one guild.
    Loaded(Box<GuildData>),
    /// A channel or category was created here.
    ChannelCreated {
        /// Guild id (hex).
        guild: String,
        /// The channel.
        channel: ChannelDetail,
    },
}

/// One guild's management data, as loaded together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuildData {
    /// Guild id (hex).
    pub guild: String,
    /// Name, settings, this user's powers.
    pub overview: GuildOverview,
    /// Roles, highest first.
    pub roles: Vec<RoleInfo>,
    /// Channels and categories.
    pub channels: Vec<ChannelDetail>,
    /// Members with role ids.
    pub members: Vec<MemberDetail>,
    /// Bans.
    pub bans: Vec<BanInfo>,
    /// Invites.
    pub invites: Vec<InviteInfo>,
}

async fn gather(g: &GuildService, guild: &str) -> Result<GuildData, String> {
    let s = |e: securecomm_node::guild::GuildError| e.to_string();
    Ok(GuildData {
        guild: guild.to_owned(),
        overview: g.guild_overview(guild).map_err(s)?,
        roles: g.list_roles(guild).map_err(s)?,
        channels: g.channel_details(guild).map_err(s)?,
        members: g.member_list(guild).map_err(s)?,
        bans: g.list_bans(guild).map_err(s)?,
        invites: g.list_invites(guild).await.map_err(s)?,
    })
}

/// Loads and emits one guild's management data and custom emoji (errors are emitted too).
pub(super) async fn load(g: &GuildService, guild: &str, emit: &Emitter) {
    match gather(g, guild).await {
        Ok(d) => {
            emit.emit(Event::Manage(ManageEvent::Loaded(Box::new(d))))
                .await
        }
        Err(e) => emit.emit(Event::Error(e)).await,
    }
    emit_emojis(g, guild, emit).await;
}

/// Emits a guild's custom emoji, with the image of each that is here.
pub(super) async fn emit_emojis(g: &GuildService, guild: &str, emit: &Emitter) {
    let (g2, guild2) = (g.clone(), guild.to_owned());
    // Reading the images decrypts up to 50 small files: off the runtime's threads.
    let list = tokio::task::spawn_blocking(move || {
        g2.list_emojis(&guild2).map(|l| {
            l.into_iter()
                .map(|e| CustomEmoji {
                    png: e
                        .here
                        .then(|| g2.emoji_image(&guild2, &e.id.to_string()).ok())
                        .flatten()
                        .map(std::sync::Arc::new),
                    id: e.id,
                    name: e.name,
                    root: e.root,
                })
                .collect::<Vec<_>>()
        })
    })
    .await;
    match list {
        Ok(Ok(list)) => {
            emit.emit(Event::Emojis {
                guild: guild.to_owned(),
                list,
            })
            .await;
        }
        Ok(Err(e)) => emit.emit(Event::Error(e.to_string())).await,
        Err(_) => {}
    }
}

/// After a fetch finished: re-emits the emoji of every guild that has `root` as an image.
pub(super) async fn on_file_done(g: &GuildService, root: &str, emit: &Emitter) {
    for guild in g.guilds_with_emoji_image(root) {
        emit_emojis(g, &guild, emit).await;
    }
}

/// Runs one management command.
pub(super) async fn execute(g: &GuildService, cmd: ManageCmd, emit: &Emitter) {
    let s = |e: securecomm_node::guild::GuildError| e.to_string();
    let result: Result<String, String> = async {
        Ok(match cmd {
            ManageCmd::Load { guild } => guild,
            ManageCmd::CreateChannel {
                guild,
                name,
                kind,
                parent,
            } => {
                let channel = g
                    .create_channel_in(&guild, &name, kind, parent)
                    .await
                    .map_err(s)?;
                emit.emit(Event::Manage(ManageEvent::ChannelCreated {
                    guild: guild.clone(),
                    channel,
                }))
                .await;
                guild
            }
            ManageCmd::EditChannel {
                guild,
                channel,
                edit,
            } => {
                g.edit_channel(&guild, channel, edit).await.map_err(s)?;
                guild
            }
            ManageCmd::MoveChannel { guild, channel, up } => {
                g.move_channel(&guild, channel, up).await.map_err(s)?;
                guild
            }
            ManageCmd::DeleteChannel { guild, channel } => {
                g.delete_channel(&guild, channel).await.map_err(s)?;
                guild
            }
            ManageCmd::SetOverwrite {
                guild,
                channel,
                target,
                allow,
                deny,
            } => {
                g.set_overwrite(&guild, channel, target, allow, deny)
                    .await
                    .map_err(s)?;
                guild
            }
            ManageCmd::CreateRole { guild, edit } => {
                g.create_role_with(&guild, edit).await.map_err(s)?;
                guild
            }
            ManageCmd::EditRole { guild, role, edit } => {
                g.edit_role(&guild, role, edit).await.map_err(s)?;
                guild
            }
            ManageCmd::DeleteRole { guild, role } => {
                g.delete_role(&guild, role).await.map_err(s)?;
                guild
            }
            ManageCmd::GrantRole { guild, user, role } => {
                g.grant_role_id(&guild, &user, role).await.map_err(s)?;
                guild
            }
            ManageCmd::RevokeRole { guild, user, role } => {
                g.revoke_role(&guild, &user, role).await.map_err(s)?;
                guild
            }
            ManageCmd::Kick { guild, user } => {
                g.kick_member(&guild, &user).await.map_err(s)?;
                guild
            }
            ManageCmd::Ban {
                guild,
                user,
                reason,
            } => {
                g.ban_member(&guild, &user, &reason).await.map_err(s)?;
                guild
            }
            ManageCmd::Unban { guild, user } => {
                g.unban(&guild, &user).await.map_err(s)?;
                guild
            }
            ManageCmd::CreateInvite {
                guild,
                expires,
                uses,
            } => {
                let v = g.create_invite(&guild, expires, uses).await.map_err(s)?;
                if let Some(code) = v.get("code").and_then(serde_json::Value::as_str) {
                    emit.emit(Event::Invite {
                        guild: guild.clone(),
                        code: code.to_owned(),
                    })
                    .await;
                }
                guild
            }
            ManageCmd::RevokeInvite { guild, invite } => {
                g.revoke_invite(&guild, &invite).await.map_err(s)?;
                guild
            }
            ManageCmd::UpdateSettings { guild, edit } => {
                g.update_settings(&guild, edit).await.map_err(s)?;
                guild
            }
            ManageCmd::ServerMute { guild, user, on } => {
                g.set_voice_mute(&guild, &user, on).await.map_err(s)?;
                guild
            }
            ManageCmd::UploadEmoji { guild, path, name } => {
                let bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                g.upload_emoji(&guild, &bytes, &name).await.map_err(s)?;
                guild
            }
            ManageCmd::DeleteEmoji { guild, id } => {
                g.delete_emoji(&guild, &id.to_string()).await.map_err(s)?;
                guild
            }
        })
    }
    .await;
    match result {
        Ok(guild) => load(g, &guild, emit).await,
        Err(e) => emit.emit(Event::Error(e)).await,
    }
}
