//! Permission cases checked against Discord's documented computation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

use securecomm_crdt::perms::{Permissions as P, base_permissions, channel_permissions};
use securecomm_crdt::schema::{Channel, ChannelKind, Overwrite, OverwriteTarget, RoleId, UserId};
use securecomm_noise::keys::RootSigningKey;

fn user() -> UserId {
    RootSigningKey::from_seed(&[1; 32]).public()
}

fn chan(kind: ChannelKind, ows: Vec<Overwrite>) -> Channel {
    Channel {
        kind,
        name: "c".into(),
        topic: String::new(),
        parent: None,
        position: 0,
        overwrites: ows,
        slow_mode_secs: 0,
        bitrate: 64000,
        user_limit: 0,
        disappearing_secs: 0,
    }
}

fn ow(t: OverwriteTarget, allow: P, deny: P) -> Overwrite {
    Overwrite {
        target: t,
        allow,
        deny,
    }
}

const EV: OverwriteTarget = OverwriteTarget::Role(RoleId::EVERYONE);
const R1: RoleId = RoleId(1);
const R2: RoleId = RoleId(2);

/// (description, owner, @everyone, role perms, channel kind, overwrites, member roles,
/// expected channel permissions)
#[test]
fn discord_permission_table() {
    let u = user();
    let view_send = P::VIEW_CHANNEL | P::SEND_MESSAGES;
    let cases: Vec<(
        &str,
        bool,
        P,
        Vec<P>,
        ChannelKind,
        Vec<Overwrite>,
        Vec<RoleId>,
        P,
    )> = vec![
        (
            "base is @everyone",
            false,
            view_send,
            vec![],
            ChannelKind::Text,
            vec![],
            vec![],
            view_send,
        ),
        (
            "roles are ORed into base",
            false,
            P::VIEW_CHANNEL,
            vec![P::SEND_MESSAGES, P::ATTACH_FILES],
            ChannelKind::Text,
            vec![],
            vec![R1, R2],
            view_send | P::ATTACH_FILES,
        ),
        (
            "administrator role gives all, overwrites ignored",
            false,
            P::NONE,
            vec![P::ADMINISTRATOR],
            ChannelKind::Text,
            vec![ow(EV, P::NONE, P::ALL)],
            vec![R1],
            P::ALL,
        ),
        (
            "owner gives all even with nothing",
            true,
            P::NONE,
            vec![],
            ChannelKind::Text,
            vec![ow(OverwriteTarget::Member(u), P::NONE, P::ALL)],
            vec![],
            P::ALL,
        ),
        (
            "@everyone overwrite deny",
            false,
            view_send,
            vec![],
            ChannelKind::Text,
            vec![ow(EV, P::NONE, P::SEND_MESSAGES)],
            vec![],
            P::VIEW_CHANNEL,
        ),
        (
            "role overwrite allow beats @everyone overwrite deny",
            false,
            view_send,
            vec![P::NONE],
            ChannelKind::Text,
            vec![
                ow(EV, P::NONE, P::SEND_MESSAGES),
                ow(OverwriteTarget::Role(R1), P::SEND_MESSAGES, P::NONE),
            ],
            vec![R1],
            view_send,
        ),
        (
            "role overwrites combined: allow from one beats deny from another",
            false,
            view_send,
            vec![P::NONE, P::NONE],
            ChannelKind::Text,
            vec![
                ow(OverwriteTarget::Role(R1), P::NONE, P::SEND_MESSAGES),
                ow(OverwriteTarget::Role(R2), P::SEND_MESSAGES, P::NONE),
            ],
            vec![R1, R2],
            view_send,
        ),
        (
            "member overwrite beats role overwrites",
            false,
            view_send,
            vec![P::NONE],
            ChannelKind::Text,
            vec![
                ow(OverwriteTarget::Role(R1), P::SEND_MESSAGES, P::NONE),
                ow(OverwriteTarget::Member(u), P::NONE, P::SEND_MESSAGES),
            ],
            vec![R1],
            P::VIEW_CHANNEL,
        ),
        (
            "member overwrite allow beats @everyone deny",
            false,
            view_send,
            vec![],
            ChannelKind::Text,
            vec![
                ow(EV, P::NONE, P::SEND_MESSAGES),
                ow(OverwriteTarget::Member(u), P::SEND_MESSAGES, P::NONE),
            ],
            vec![],
            view_send,
        ),
        (
            "overwrite for a role the member lacks is ignored",
            false,
            view_send,
            vec![],
            ChannelKind::Text,
            vec![ow(OverwriteTarget::Role(R2), P::NONE, P::SEND_MESSAGES)],
            vec![],
            view_send,
        ),
        (
            "no view channel means nothing",
            false,
            view_send | P::MANAGE_MESSAGES,
            vec![],
            ChannelKind::Text,
            vec![ow(EV, P::NONE, P::VIEW_CHANNEL)],
            vec![],
            P::NONE,
        ),
        (
            "text: no send drops mention everyone and attach",
            false,
            P::VIEW_CHANNEL | P::MENTION_EVERYONE | P::ATTACH_FILES | P::ADD_REACTIONS,
            vec![],
            ChannelKind::Text,
            vec![],
            vec![],
            P::VIEW_CHANNEL | P::ADD_REACTIONS,
        ),
        (
            "voice: no connect drops voice bits",
            false,
            P::VIEW_CHANNEL | P::SPEAK | P::USE_SOUNDBOARD,
            vec![],
            ChannelKind::Voice,
            vec![],
            vec![],
            P::VIEW_CHANNEL,
        ),
        (
            "voice: connect keeps speak",
            false,
            P::VIEW_CHANNEL | P::CONNECT | P::SPEAK,
            vec![],
            ChannelKind::Voice,
            vec![],
            vec![],
            P::VIEW_CHANNEL | P::CONNECT | P::SPEAK,
        ),
        (
            "administrator in @everyone gives all",
            false,
            P::ADMINISTRATOR,
            vec![],
            ChannelKind::Text,
            vec![ow(EV, P::NONE, P::VIEW_CHANNEL)],
            vec![],
            P::ALL,
        ),
    ];
    for (what, owner, everyone, role_perms, kind, ows, roles, want) in cases {
        let base = base_permissions(owner, everyone, role_perms.iter().copied());
        let got = channel_permissions(base, &chan(kind, ows), &u, roles);
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn bit_values_are_discords() {
    assert_eq!(P::CREATE_INSTANT_INVITE.bits(), 0x1);
    assert_eq!(P::KICK_MEMBERS.bits(), 0x2);
    assert_eq!(P::BAN_MEMBERS.bits(), 0x4);
    assert_eq!(P::ADMINISTRATOR.bits(), 0x8);
    assert_eq!(P::MANAGE_CHANNELS.bits(), 0x10);
    assert_eq!(P::MANAGE_GUILD.bits(), 0x20);
    assert_eq!(P::ADD_REACTIONS.bits(), 0x40);
    assert_eq!(P::PRIORITY_SPEAKER.bits(), 0x100);
    assert_eq!(P::VIEW_CHANNEL.bits(), 0x400);
    assert_eq!(P::SEND_MESSAGES.bits(), 0x800);
    assert_eq!(P::MANAGE_MESSAGES.bits(), 0x2000);
    assert_eq!(P::ATTACH_FILES.bits(), 0x8000);
    assert_eq!(P::MENTION_EVERYONE.bits(), 0x20000);
    assert_eq!(P::CONNECT.bits(), 0x100000);
    assert_eq!(P::SPEAK.bits(), 0x200000);
    assert_eq!(P::MUTE_MEMBERS.bits(), 0x400000);
    assert_eq!(P::MOVE_MEMBERS.bits(), 0x1000000);
    assert_eq!(P::MANAGE_ROLES.bits(), 0x10000000);
    assert_eq!(P::USE_SOUNDBOARD.bits(), 0x40000000000);
    assert!(P::from_wire(1 << 63).is_err());
}
