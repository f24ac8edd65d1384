//! Property: 3 to 6 replicas, random authorized and unauthorized changes, random delivery
//! orders and partitions. After full sync every replica has the same resolved view (equal to a
//! from-scratch fold), and no unauthorized change is in any replica.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::needless_range_loop
)]

mod common;

use std::collections::HashSet;

use common::*;
use proptest::prelude::*;
use securecomm_crdt::envelope::SignedChange;
use securecomm_crdt::guild::{Guild, PeerSync};
use securecomm_crdt::invite::InviteToken;
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::perms::Permissions;
use securecomm_crdt::schema::{Invite, InviteCode, RoleId};

#[derive(Clone, Debug)]
enum Step {
    /// User `u` tries op `k` with parameters from `s`.
    Act { u: usize, k: u8, s: u8 },
    /// Replica `from` pushes everything it has to `to`, in an order given by `seed`.
    Push { from: usize, to: usize, seed: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..9, 0u8..12, any::<u8>()).prop_map(|(u, k, s)| Step::Act { u, k, s }),
        1 => (0usize..6, 0usize..6, any::<u64>()).prop_map(|(from, to, seed)| Step::Push { from, to, seed }),
    ]
}

fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

struct World {
    users: Vec<U>,
    token: InviteToken,
    replicas: Vec<Guild>,
    known: Vec<Vec<SignedChange>>,
    forged: Vec<SignedChange>,
    forged_hashes: HashSet<automerge::ChangeHash>,
    time: u64,
}

const ROLES: [RoleId; 3] = [R_MOD, R_ADMIN, RoleId(7)];

impl World {
    fn op(&self, u: usize, k: u8, s: u8) -> GuildOp {
        let target = self.users[s as usize % 6].id();
        let r = ROLES[s as usize % 3];
        match k {
            0 => GuildOp::Kick(target),
            1 => GuildOp::Ban(target, "prop".into()),
            2 => GuildOp::GrantRole(target, r),
            3 => GuildOp::RevokeRole(target, r),
            4 => GuildOp::PutChannel(CH, text(&format!("chan{s}"))),
            5 => GuildOp::SetName(format!("name{s}")),
            6 => GuildOp::PutRole(
                R_MOD,
                role(
                    5,
                    if s.is_multiple_of(2) {
                        Permissions::MANAGE_CHANNELS | Permissions::KICK_MEMBERS
                    } else {
                        Permissions::KICK_MEMBERS
                    },
                ),
            ),
            7 => GuildOp::TransferOwnership(target),
            8 => GuildOp::Unban(target),
            9 => GuildOp::SetNickname(self.users[u].id(), format!("nick{s}")),
            10 => GuildOp::RevokeInvite(self.token.code),
            _ => redeem(&self.token, &self.users[u]),
        }
    }

    fn act(&mut self, u: usize, k: u8, s: u8) {
        let n = self.replicas.len();
        let home = u % n;
        self.time += 1;
        let op = self.op(u, k, s);
        let dev = &self.users[u].dev;
        match self.replicas[home].change(dev, self.time, vec![op.clone()]) {
            Ok(env) => self.known[home].push(env),
            Err(_) => {
                // Unauthorized here: a misbehaving client sends it anyway, to everyone.
                if let Ok(bad) = self.replicas[home].forge_change(dev, self.time, &[op]) {
                    for r in &mut self.replicas {
                        let rep = r.receive(vec![bad.clone()]);
                        assert!(rep.accepted.is_empty(), "unauthorized change accepted");
                    }
                    if let Ok(o) = bad.clone().open(&self.replicas[home].id()) {
                        self.forged_hashes.insert(o.hash());
                    }
                    self.forged.push(bad);
                }
            }
        }
    }

    fn push(&mut self, from: usize, to: usize, seed: u64) {
        let n = self.replicas.len();
        let (from, to) = (from % n, to % n);
        if from == to {
            return;
        }
        let mut envs = self.replicas[from].envelopes();
        shuffle(&mut envs, seed);
        let rep = self.replicas[to].receive(envs);
        assert!(
            rep.rejected.iter().all(|(h, _)| h.is_some()),
            "honest envelope failed to open: {:?}",
            rep.rejected
        );
        // Honest changes are never rejected (forged ones parked for missing deps may be now).
        assert!(
            rep.rejected
                .iter()
                .all(|(h, _)| h.is_some_and(|h| self.forged_hashes.contains(&h))),
            "{:?}",
            rep.rejected
        );
    }
}

fn setup(n: usize) -> World {
    let (mut g, mut envs, [o, a, m, p]) = standard();
    let extra: Vec<U> = (5..=6).map(U::new).collect();
    for x in &extra {
        envs.extend(join(&mut g, &o, x, 1010));
    }
    envs.push(
        g.change(
            &o.dev,
            1011,
            vec![GuildOp::PutRole(
                RoleId(7),
                role(7, Permissions::BAN_MEMBERS | Permissions::MANAGE_ROLES),
            )],
        )
        .unwrap(),
    );
    let (code, inv) = (
        InviteCode([200; 16]),
        Invite {
            creator: o.id(),
            expires_at: 0,
            max_uses: 2,
        },
    );
    envs.push(
        g.change(&o.dev, 1012, vec![GuildOp::CreateInvite(code, inv)])
            .unwrap(),
    );
    let token = InviteToken::issue(&o.dev, g.id(), code, inv);
    let mut users = vec![o, a, m, p];
    users.extend(extra);
    users.extend((40..43).map(U::new)); // outsiders who may redeem
    let replicas: Vec<Guild> = (0..n).map(|_| replica(&g, &envs)).collect();
    World {
        users,
        token,
        replicas,
        known: vec![Vec::new(); n],
        forged: Vec::new(),
        forged_hashes: HashSet::new(),
        time: 2000,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    #[test]
    fn replicas_converge_and_reject_unauthorized(
        n in 3usize..=6,
        steps in proptest::collection::vec(step(), 5..40),
        final_seed in any::<u64>(),
    ) {
        let mut w = setup(n);
        for s in steps {
            match s {
                Step::Act { u, k, s } => w.act(u, k, s),
                Step::Push { from, to, seed } => w.push(from, to, seed),
            }
        }
        // Full sync over the Automerge sync protocol, pairwise in a ring until quiet.
        let mut peers: Vec<Vec<PeerSync>> = (0..n).map(|_| (0..n).map(|_| PeerSync::new()).collect()).collect();
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, final_seed);
        for _round in 0..4 {
            for &i in &order {
                for j in 0..n {
                    if i == j { continue; }
                    for _ in 0..10 {
                        let Some(msg) = w.replicas[i].generate_sync_message(&mut peers[i][j]) else { break };
                        let rep = w.replicas[j].receive_sync_message(&mut peers[j][i], &msg).unwrap();
                        prop_assert!(
                            rep.rejected.iter().all(|(h, _)| h.is_some_and(|h| w.forged_hashes.contains(&h))),
                            "{:?}",
                            rep.rejected
                        );
                    }
                }
            }
        }
        let heads: HashSet<_> = w.replicas[0].heads().into_iter().collect();
        let view = w.replicas[0].view().clone();
        prop_assert_eq!(&view, &w.replicas[0].resolve_from_scratch());
        for r in &mut w.replicas {
            prop_assert_eq!(r.heads().into_iter().collect::<HashSet<_>>(), heads.clone());
            prop_assert_eq!(r.view(), &view);
            for f in &w.forged {
                let h = f.clone().open(&r.id()).map(|o| o.hash());
                if let Ok(h) = h {
                    prop_assert!(r.envelope(&h).is_none(), "forged change present");
                }
            }
        }
        // The result does not depend on arrival order: a fresh replica fed everything shuffled.
        let mut all = w.replicas[0].envelopes();
        shuffle(&mut all, final_seed ^ 0x5555);
        let mut fresh = Guild::join(w.replicas[0].id());
        let rep = fresh.receive(all);
        prop_assert!(rep.rejected.is_empty());
        prop_assert_eq!(fresh.view(), &view);
    }
}
