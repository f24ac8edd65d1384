//! Shared helpers for the guild tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use securecomm_crdt::envelope::SignedChange;
use securecomm_crdt::guild::Guild;
use securecomm_crdt::invite::InviteToken;
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::perms::Permissions;
use securecomm_crdt::schema::{
    Channel, ChannelId, ChannelKind, DeviceCert, Invite, InviteCode, Role, RoleId, UserId,
};
use securecomm_noise::codec::{Decode, DecodeError, Encode};
use securecomm_noise::keys::{DeviceSigningKey, RootSigningKey};

pub struct U {
    pub root: RootSigningKey,
    pub dev: DeviceSigningKey,
    pub seed: u8,
}

impl U {
    pub fn new(seed: u8) -> Self {
        Self {
            root: RootSigningKey::from_seed(&[seed; 32]),
            dev: DeviceSigningKey::from_seed(&[seed.wrapping_add(128); 32]),
            seed,
        }
    }
    pub fn id(&self) -> UserId {
        self.root.public()
    }
}

pub fn new_guild(owner: &U) -> (Guild, Vec<SignedChange>) {
    let (g, genesis) = Guild::create(&owner.root, &owner.dev, "guild", 1000, [7; 16]).unwrap();
    (g, vec![genesis])
}

/// A guild owned by `owner` with an open invite (code `[3; 16]`, no expiry, no use limit)
/// created at t=1001: the replica, its envelopes and the invite's token.
pub fn guild_with_open_invite(owner: &U) -> (Guild, Vec<SignedChange>, InviteToken) {
    let (mut g, mut envs) = new_guild(owner);
    let (code, inv) = (
        InviteCode([3; 16]),
        Invite {
            creator: owner.id(),
            expires_at: 0,
            max_uses: 0,
        },
    );
    envs.push(
        g.change(&owner.dev, 1001, vec![GuildOp::CreateInvite(code, inv)])
            .unwrap(),
    );
    let token = InviteToken::issue(&owner.dev, g.id(), code, inv);
    (g, envs, token)
}

/// `inviter` invites `joiner`, who redeems on replica `g`. Returns the two envelopes.
pub fn join(g: &mut Guild, inviter: &U, joiner: &U, t: u64) -> Vec<SignedChange> {
    let (code, inv) = (
        InviteCode([joiner.seed; 16]),
        Invite {
            creator: inviter.id(),
            expires_at: 0,
            max_uses: 1,
        },
    );
    let e1 = g
        .change(&inviter.dev, t, vec![GuildOp::CreateInvite(code, inv)])
        .unwrap();
    let token = InviteToken::issue(&inviter.dev, g.id(), code, inv);
    let e2 = g
        .change(&joiner.dev, t, vec![redeem(&token, joiner)])
        .unwrap();
    vec![e1, e2]
}

pub fn redeem(token: &InviteToken, joiner: &U) -> GuildOp {
    GuildOp::Redeem {
        token: token.clone(),
        cert: DeviceCert::issue(&joiner.root, joiner.dev.public()),
        nickname: format!("user{}", joiner.seed),
    }
}

pub fn role(position: u16, permissions: Permissions) -> Role {
    Role {
        name: format!("role{position}"),
        colour: 0,
        position,
        permissions,
        mentionable: false,
        hoisted: false,
    }
}

pub fn text(name: &str) -> Channel {
    Channel {
        kind: ChannelKind::Text,
        name: name.into(),
        topic: String::new(),
        parent: None,
        position: 0,
        overwrites: vec![],
        slow_mode_secs: 0,
        bitrate: 0,
        user_limit: 0,
        disappearing_secs: 0,
    }
}

/// A fresh replica fed `envs`, asserting every one is accepted.
pub fn replica(g: &Guild, envs: &[SignedChange]) -> Guild {
    let mut r = Guild::join(g.id());
    let rep = r.receive(envs.to_vec());
    assert!(rep.rejected.is_empty(), "{:?}", rep.rejected);
    assert_eq!(rep.pending, 0);
    r
}

pub const R_ADMIN: RoleId = RoleId(10);
pub const R_MOD: RoleId = RoleId(5);
pub const CH: ChannelId = ChannelId(1);

/// Owner `o`, admin `a` (role at 10 with every management bit), moderator `m` (role at 5,
/// MANAGE_CHANNELS | KICK), plain member `p`. Returns replica and all envelopes.
pub fn standard() -> (Guild, Vec<SignedChange>, [U; 4]) {
    let (o, a, m, p) = (U::new(1), U::new(2), U::new(3), U::new(4));
    let (mut g, mut envs) = new_guild(&o);
    for x in [&a, &m, &p] {
        envs.extend(join(&mut g, &o, x, 1001));
    }
    let mgmt = Permissions::MANAGE_ROLES
        | Permissions::MANAGE_CHANNELS
        | Permissions::KICK_MEMBERS
        | Permissions::BAN_MEMBERS
        | Permissions::MANAGE_GUILD;
    envs.push(
        g.change(
            &o.dev,
            1002,
            vec![
                GuildOp::PutRole(R_ADMIN, role(10, mgmt)),
                GuildOp::PutRole(
                    R_MOD,
                    role(5, Permissions::MANAGE_CHANNELS | Permissions::KICK_MEMBERS),
                ),
                GuildOp::PutChannel(CH, text("general")),
            ],
        )
        .unwrap(),
    );
    envs.push(
        g.change(
            &o.dev,
            1003,
            vec![
                GuildOp::GrantRole(a.id(), R_ADMIN),
                GuildOp::GrantRole(m.id(), R_MOD),
            ],
        )
        .unwrap(),
    );
    (g, envs, [o, a, m, p])
}

/// Every permutation of `items` (for up to 5 items).
pub fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let x = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, x.clone());
            out.push(p);
        }
    }
    out
}

/// Checks an op's canonical encoding: it decodes back to itself, every truncation and a
/// trailing byte are refused, and so is another version byte.
pub fn assert_codec(op: &GuildOp) {
    let b = op.to_bytes();
    assert_eq!(&GuildOp::from_bytes(&b).unwrap(), op);
    for n in 0..b.len() {
        assert!(GuildOp::from_bytes(&b[..n]).is_err());
    }
    let mut t = b.clone();
    t.push(0);
    assert_eq!(GuildOp::from_bytes(&t), Err(DecodeError::TrailingBytes(1)));
    let mut v = b;
    v[0] = 2;
    assert!(matches!(
        GuildOp::from_bytes(&v),
        Err(DecodeError::UnknownVersion { .. })
    ));
}
