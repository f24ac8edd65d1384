//! The benchmark guild, shared by the benches: 10,000 members, 250 roles, 500 channels.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use securecomm_crdt::envelope::SignedChange;
use securecomm_crdt::guild::Guild;
use securecomm_crdt::invite::InviteToken;
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::perms::Permissions;
use securecomm_crdt::schema::{
    Channel, ChannelId, ChannelKind, DeviceCert, Invite, InviteCode, Overwrite, OverwriteTarget,
    Role, RoleId, UserId,
};
use securecomm_noise::codec::{Decode, Encode, Reader, Writer};
use securecomm_noise::keys::{DeviceSigningKey, RootSigningKey};

pub const MEMBERS: usize = 10_000;
pub const ROLES: u64 = 250;
pub const CHANNELS: u64 = 500;

pub fn seed(kind: u8, i: usize) -> [u8; 32] {
    let mut s = [kind; 32];
    s[..8].copy_from_slice(&(i as u64).to_le_bytes());
    s
}

pub struct Built {
    pub guild: Guild,
    pub envs: Vec<SignedChange>,
    pub users: Vec<UserId>,
}

pub fn build() -> Built {
    let root = RootSigningKey::from_seed(&[1; 32]);
    let dev = DeviceSigningKey::from_seed(&[2; 32]);
    let (mut g, genesis) = Guild::create(&root, &dev, "big", 1000, [0; 16]).unwrap();
    let mut envs = vec![genesis];
    let mut t = 1001;
    // 250 roles, 50 per change.
    for chunk in (1..=ROLES).collect::<Vec<_>>().chunks(50) {
        let ops = chunk
            .iter()
            .map(|i| {
                GuildOp::PutRole(
                    RoleId(*i),
                    Role {
                        name: format!("role{i}"),
                        colour: *i as u32,
                        position: *i as u16,
                        permissions: Permissions::from_bits_truncate(*i * 0x9e37_79b9),
                        mentionable: i % 2 == 0,
                        hoisted: i % 3 == 0,
                    },
                )
            })
            .collect();
        envs.push(g.change(&dev, t, ops).unwrap());
        t += 1;
    }
    // 500 channels with two role overwrites each, 50 per change.
    for chunk in (1..=CHANNELS).collect::<Vec<_>>().chunks(50) {
        let ops = chunk
            .iter()
            .map(|i| {
                let (r1, r2) = (RoleId(i % ROLES + 1), RoleId((i * 7) % ROLES + 1));
                let mut ows = vec![
                    Overwrite {
                        target: OverwriteTarget::Role(r1),
                        allow: Permissions::SEND_MESSAGES,
                        deny: Permissions::NONE,
                    },
                    Overwrite {
                        target: OverwriteTarget::Role(r2),
                        allow: Permissions::NONE,
                        deny: Permissions::ATTACH_FILES,
                    },
                ];
                ows.sort_by_key(|o| o.target);
                ows.dedup_by_key(|o| o.target);
                GuildOp::PutChannel(
                    ChannelId(*i),
                    Channel {
                        kind: if i % 5 == 0 {
                            ChannelKind::Voice
                        } else {
                            ChannelKind::Text
                        },
                        name: format!("chan{i}"),
                        topic: "topic".into(),
                        parent: None,
                        position: *i as u16,
                        overwrites: ows,
                        slow_mode_secs: 0,
                        bitrate: 64_000,
                        user_limit: 0,
                        disappearing_secs: 0,
                    },
                )
            })
            .collect();
        envs.push(g.change(&dev, t, ops).unwrap());
        t += 1;
    }
    let (code, inv) = (
        InviteCode([9; 16]),
        Invite {
            creator: root.public(),
            expires_at: 0,
            max_uses: 0,
        },
    );
    envs.push(
        g.change(&dev, t, vec![GuildOp::CreateInvite(code, inv)])
            .unwrap(),
    );
    let token = InviteToken::issue(&dev, g.id(), code, inv);
    let mut users = Vec::with_capacity(MEMBERS);
    for i in 0..MEMBERS {
        let r = RootSigningKey::from_seed(&seed(3, i));
        let d = DeviceSigningKey::from_seed(&seed(4, i));
        let op = GuildOp::Redeem {
            token: token.clone(),
            cert: DeviceCert::issue(&r, d.public()),
            nickname: format!("m{i}"),
        };
        envs.push(g.change(&d, t, vec![op]).unwrap());
        users.push(r.public());
    }
    // Every member gets two roles; 100 grants per change.
    let grants: Vec<GuildOp> = users
        .iter()
        .enumerate()
        .flat_map(|(i, u)| {
            [
                GuildOp::GrantRole(*u, RoleId(i as u64 % ROLES + 1)),
                GuildOp::GrantRole(*u, RoleId((i as u64 * 13) % ROLES + 1)),
            ]
        })
        .collect();
    let mut grants = grants;
    grants.sort_by_key(|o| o.slot());
    grants.dedup_by_key(|o| o.slot());
    for chunk in grants.chunks(100) {
        t += 1;
        envs.push(g.change(&dev, t, chunk.to_vec()).unwrap());
    }
    Built {
        guild: g,
        envs,
        users,
    }
}

/// The fixture's envelopes, cached in the temp dir (building takes a while), keyed by the
/// envelope version so a format change rebuilds it.
pub fn cached_envelopes() -> (Vec<SignedChange>, Vec<UserId>) {
    let path = std::env::temp_dir().join(format!(
        "securecomm-crdt-bench-v{}-{}.bin",
        securecomm_crdt::envelope::ENVELOPE_VERSION,
        MEMBERS
    ));
    if let Ok(bytes) = std::fs::read(&path) {
        let mut r = Reader::new(&bytes);
        let n = r.u32().unwrap() as usize;
        let envs = (0..n)
            .map(|_| SignedChange::from_bytes(r.bytes32("env", 1 << 20).unwrap()).unwrap())
            .collect();
        let m = r.u32().unwrap() as usize;
        let users = (0..m).map(|_| UserId::decode(&mut r).unwrap()).collect();
        return (envs, users);
    }
    let b = build();
    let mut w = Writer::new();
    w.u32(b.envs.len() as u32);
    for e in &b.envs {
        w.bytes32(&e.to_bytes());
    }
    w.u32(b.users.len() as u32);
    for u in &b.users {
        u.encode(&mut w);
    }
    std::fs::write(&path, w.into_bytes()).unwrap();
    (b.envs, b.users)
}
