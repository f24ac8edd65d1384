//! Conflict rules: concurrent changes delivered in every order give one result everywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use securecomm_crdt::envelope::SignedChange;
use securecomm_crdt::guild::{Guild, RejectReason};
use securecomm_crdt::invite::InviteToken;
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::perms::Permissions;
use securecomm_crdt::schema::{DeviceCert, Invite, InviteCode, RoleId};
use securecomm_crdt::view::GuildView;
use securecomm_noise::keys::DeviceSigningKey;

/// Delivers `extra` after `base` in every order (one change per call) to fresh replicas and
/// asserts all accept everything and agree, also with a from-scratch fold.
fn converge(id_from: &Guild, base: &[SignedChange], extra: &[SignedChange]) -> GuildView {
    let mut result: Option<GuildView> = None;
    for perm in permutations(extra) {
        let mut r = replica(id_from, base);
        for e in perm {
            let rep = r.receive(vec![e]);
            assert!(rep.rejected.is_empty(), "{:?}", rep.rejected);
        }
        assert_eq!(r.len(), base.len() + extra.len());
        let v = r.view().clone();
        assert_eq!(v, r.resolve_from_scratch());
        if let Some(prev) = &result {
            assert_eq!(prev, &v);
        }
        result = Some(v);
    }
    result.unwrap()
}

#[test]
fn action_concurrent_with_authors_removal_is_void() {
    let (g, base, [o, _, m, _]) = standard();
    let (mut x, mut y) = (replica(&g, &base), replica(&g, &base));
    let rename = x
        .change(
            &m.dev,
            2000,
            vec![GuildOp::PutChannel(CH, text("mod was here"))],
        )
        .unwrap();
    let kick = y.change(&o.dev, 2000, vec![GuildOp::Kick(m.id())]).unwrap();
    let v = converge(&g, &base, &[rename, kick]);
    assert!(v.member(&m.id()).is_none());
    assert_eq!(v.channels()[&CH].name, "general");
}

#[test]
fn action_concurrent_with_authors_demotion_is_void() {
    let (g, base, [o, _, m, _]) = standard();
    // Demotion by revoking the role, and by lowering the role's permissions.
    for demote in [
        GuildOp::RevokeRole(m.id(), R_MOD),
        GuildOp::PutRole(R_MOD, role(5, Permissions::KICK_MEMBERS)),
    ] {
        let (mut x, mut y) = (replica(&g, &base), replica(&g, &base));
        let rename = x
            .change(
                &m.dev,
                2000,
                vec![GuildOp::PutChannel(CH, text("mod was here"))],
            )
            .unwrap();
        let d = y.change(&o.dev, 2000, vec![demote]).unwrap();
        let v = converge(&g, &base, &[rename, d]);
        assert_eq!(v.channels()[&CH].name, "general");
        assert!(v.member(&m.id()).is_some());
    }
    // A concurrent permission *increase* of the role does not void the action.
    let (mut x, mut y) = (replica(&g, &base), replica(&g, &base));
    let rename = x
        .change(
            &m.dev,
            2000,
            vec![GuildOp::PutChannel(CH, text("mod was here"))],
        )
        .unwrap();
    let up = y
        .change(
            &o.dev,
            2000,
            vec![GuildOp::PutRole(
                R_MOD,
                role(
                    5,
                    Permissions::MANAGE_CHANNELS
                        | Permissions::KICK_MEMBERS
                        | Permissions::BAN_MEMBERS,
                ),
            )],
        )
        .unwrap();
    let v = converge(&g, &base, &[rename, up]);
    assert_eq!(v.channels()[&CH].name, "mod was here");
}

#[test]
fn mutual_removals_remove_both() {
    let (mut g, mut base, [o, a, m, _]) = standard();
    // b: rank 15 with MANAGE_ROLES; a high role (12) exists that b may grant.
    let b = U::new(5);
    base.extend(join(&mut g, &o, &b, 1004));
    let (r_b, r_high) = (RoleId(15), RoleId(12));
    base.push(
        g.change(
            &o.dev,
            1005,
            vec![
                GuildOp::PutRole(
                    r_b,
                    role(15, Permissions::MANAGE_ROLES | Permissions::KICK_MEMBERS),
                ),
                GuildOp::PutRole(r_high, role(12, Permissions::KICK_MEMBERS)),
            ],
        )
        .unwrap(),
    );
    base.push(
        g.change(&o.dev, 1006, vec![GuildOp::GrantRole(b.id(), r_b)])
            .unwrap(),
    );
    let (mut x, mut y) = (replica(&g, &base), replica(&g, &base));
    // Branch x: b promotes m above a, then m kicks a (valid there: 12 > 10).
    let promote = x
        .change(&b.dev, 2000, vec![GuildOp::GrantRole(m.id(), r_high)])
        .unwrap();
    let m_kicks_a = x.change(&m.dev, 2001, vec![GuildOp::Kick(a.id())]).unwrap();
    // Branch y: a kicks m (valid there: 10 > 5).
    let a_kicks_m = y.change(&a.dev, 2000, vec![GuildOp::Kick(m.id())]).unwrap();
    let v = converge(&g, &base, &[promote, m_kicks_a, a_kicks_m]);
    assert!(v.member(&a.id()).is_none(), "a stays");
    assert!(v.member(&m.id()).is_none(), "m stays");
}

#[test]
fn re_add_racing_a_removal_loses() {
    let (mut g, mut base, [o, a, _, _]) = standard();
    let joiner = U::new(9);
    let code = InviteCode([9; 16]);
    let inv = Invite {
        creator: o.id(),
        expires_at: 0,
        max_uses: 5,
    };
    base.push(
        g.change(&o.dev, 1500, vec![GuildOp::CreateInvite(code, inv)])
            .unwrap(),
    );
    let token = InviteToken::issue(&o.dev, g.id(), code, inv);
    let (mut x, mut y) = (replica(&g, &base), replica(&g, &base));
    let join = x
        .change(&joiner.dev, 2000, vec![redeem(&token, &joiner)])
        .unwrap();
    let ban = y
        .change(&a.dev, 2000, vec![GuildOp::Ban(joiner.id(), "no".into())])
        .unwrap();
    let v = converge(&g, &base, &[join, ban]);
    assert!(v.member(&joiner.id()).is_none());
    assert!(v.bans().contains_key(&joiner.id()));
    assert_eq!(v.invites()[&code].uses, 0);
}

#[test]
fn role_grant_racing_a_kick_loses_unless_the_owner_grants() {
    let (mut g, mut base, [o, a, _, p]) = standard();
    let b = U::new(5);
    base.extend(join(&mut g, &o, &b, 1004));
    base.push(
        g.change(&o.dev, 1005, vec![GuildOp::GrantRole(b.id(), R_ADMIN)])
            .unwrap(),
    );
    // A non-owner grant racing a kick: the kick wins.
    let (mut x, mut y) = (replica(&g, &base), replica(&g, &base));
    let grant = x
        .change(&b.dev, 2000, vec![GuildOp::GrantRole(p.id(), R_MOD)])
        .unwrap();
    let kick = y.change(&a.dev, 2000, vec![GuildOp::Kick(p.id())]).unwrap();
    let v = converge(&g, &base, &[grant, kick]);
    assert!(v.member(&p.id()).is_none());
    // The owner's grant racing a non-owner's kick: the owner outranks, the kick is void.
    let (mut x, mut y) = (replica(&g, &base), replica(&g, &base));
    let grant = x
        .change(&o.dev, 2000, vec![GuildOp::GrantRole(p.id(), R_MOD)])
        .unwrap();
    let kick = y.change(&a.dev, 2000, vec![GuildOp::Kick(p.id())]).unwrap();
    let v = converge(&g, &base, &[grant, kick]);
    assert!(v.member(&p.id()).unwrap().roles.contains(&R_MOD));
}

#[test]
fn racing_ownership_transfers_smallest_hash_wins() {
    let (mut g, mut base, [o, a, m, _]) = standard();
    let dev2 = DeviceSigningKey::from_seed(&[77; 32]);
    base.push(
        g.change(
            &o.dev,
            1500,
            vec![GuildOp::AddDevice(DeviceCert::issue(
                &o.root,
                dev2.public(),
            ))],
        )
        .unwrap(),
    );
    let (mut x, mut y) = (replica(&g, &base), replica(&g, &base));
    let t1 = x
        .change(&o.dev, 2000, vec![GuildOp::TransferOwnership(a.id())])
        .unwrap();
    let t2 = y
        .change(&dev2, 2000, vec![GuildOp::TransferOwnership(m.id())])
        .unwrap();
    let h1 = securecomm_crdt::envelope::SignedChange::open(t1.clone(), &g.id())
        .unwrap()
        .hash();
    let h2 = securecomm_crdt::envelope::SignedChange::open(t2.clone(), &g.id())
        .unwrap()
        .hash();
    let v = converge(&g, &base, &[t1, t2]);
    let winner = if h1 < h2 { a.id() } else { m.id() };
    assert!(v.is_owner(&winner));
}

#[test]
fn concurrent_edits_are_last_writer_wins_in_canonical_order() {
    let (g, base, [o, a, m, _]) = standard();
    let (mut x, mut y, mut z) = (replica(&g, &base), replica(&g, &base), replica(&g, &base));
    let e1 = x
        .change(&o.dev, 2000, vec![GuildOp::SetName("one".into())])
        .unwrap();
    let e2 = y
        .change(&a.dev, 2000, vec![GuildOp::SetName("two".into())])
        .unwrap();
    let e3 = z
        .change(&m.dev, 2000, vec![GuildOp::PutChannel(CH, text("three"))])
        .unwrap();
    let v = converge(&g, &base, &[e1, e2, e3]);
    assert!(v.name() == "one" || v.name() == "two");
    assert_eq!(v.channels()[&CH].name, "three");
}

#[test]
fn backdated_changes_of_a_removed_admin_have_no_effect() {
    let (mut g, base, [o, a, m, p]) = standard();
    // a's replica is frozen before its removal.
    let frozen = replica(&g, &base);
    let kick = g.change(&o.dev, 3000, vec![GuildOp::Kick(a.id())]).unwrap();
    // 1. After the removal (depends on it): rejected.
    let after = g
        .forge_change(&a.dev, 3001, &[GuildOp::Kick(p.id())])
        .unwrap();
    let rep = g.receive(vec![after]);
    assert!(matches!(
        rep.rejected[0].1,
        RejectReason::Unauthorized(securecomm_crdt::authz::AuthzError::NotAMember)
    ));
    // 2. Claiming the old causal past (concurrent with the removal): accepted but void,
    //    whatever it does (kick a third member, rename, ban, hand out roles).
    let backdated = frozen
        .forge_change(
            &a.dev,
            2500,
            &[
                GuildOp::Kick(p.id()),
                GuildOp::SetName("pwned".into()),
                GuildOp::PutChannel(CH, text("mine")),
            ],
        )
        .unwrap();
    let v = converge(&g, &base, &[kick.clone(), backdated.clone()]);
    assert!(v.member(&a.id()).is_none());
    assert!(v.member(&p.id()).is_some());
    assert_eq!(v.name(), "guild");
    assert_eq!(v.channels()[&CH].name, "general");
    let _ = &m;
    // 3. Claiming a past older than its own last change: the device chain refuses it.
    let mut older = Guild::join(g.id());
    older.receive(base[..base.len() - 1].to_vec()); // before a was granted admin
    let mut r = replica(&g, &base);
    r.receive(vec![backdated]);
    let forked = r
        .forge_change(&a.dev, 2600, &[GuildOp::SetName("x".into())])
        .unwrap();
    let mut r2 = replica(&g, &base);
    // `forked` reuses the chain position after `backdated`, which r2 never saw: parked.
    assert_eq!(r2.receive(vec![forked]).pending, 1);
    // A second change at the same chain position as `backdated`, on older deps: rejected.
    let a_change = |g: &Guild| {
        g.forge_change(&a.dev, 2500, &[GuildOp::SetName("y".into())])
            .unwrap()
    };
    let sibling = a_change(&frozen);
    let rep = r.receive(vec![sibling]);
    assert!(
        matches!(rep.rejected[0].1, RejectReason::Chain { .. }),
        "{:?}",
        rep.rejected
    );
}

#[test]
fn invites_expired_exhausted_revoked_and_banned_are_refused() {
    let (mut g, _, [o, a, _, _]) = standard();
    let mk = |seed: u8, expires_at: u64, max_uses: u32| {
        (
            InviteCode([seed + 100; 16]),
            Invite {
                creator: o.id(),
                expires_at,
                max_uses,
            },
        )
    };
    let (c_exp, i_exp) = mk(1, 5000, 0);
    let (c_one, i_one) = mk(2, 0, 1);
    let (c_rev, i_rev) = mk(3, 0, 0);
    g.change(
        &o.dev,
        4000,
        vec![
            GuildOp::CreateInvite(c_exp, i_exp),
            GuildOp::CreateInvite(c_one, i_one),
            GuildOp::CreateInvite(c_rev, i_rev),
        ],
    )
    .unwrap();
    g.change(&o.dev, 4001, vec![GuildOp::RevokeInvite(c_rev)])
        .unwrap();
    let gid = g.id();
    let tok = |c, i| InviteToken::issue(&o.dev, gid, c, i);
    let (u1, u2, u3, u4, u5) = (U::new(31), U::new(32), U::new(33), U::new(34), U::new(35));
    // Expired: redemption time at the expiry.
    assert!(
        g.change(&u1.dev, 5000, vec![redeem(&tok(c_exp, i_exp), &u1)])
            .is_err()
    );
    // Exhausted: the first use works, the second is refused.
    g.change(&u2.dev, 4002, vec![redeem(&tok(c_one, i_one), &u2)])
        .unwrap();
    assert!(
        g.change(&u3.dev, 4003, vec![redeem(&tok(c_one, i_one), &u3)])
            .is_err()
    );
    // Revoked.
    assert!(
        g.change(&u4.dev, 4003, vec![redeem(&tok(c_rev, i_rev), &u4)])
            .is_err()
    );
    // Banned user with a valid invite.
    let (c_ok, i_ok) = mk(4, 0, 0);
    g.change(&o.dev, 4004, vec![GuildOp::CreateInvite(c_ok, i_ok)])
        .unwrap();
    g.change(&a.dev, 4005, vec![GuildOp::Ban(u5.id(), "x".into())])
        .unwrap();
    let forged = g
        .forge_change(&u5.dev, 4006, &[redeem(&tok(c_ok, i_ok), &u5)])
        .unwrap();
    let rep = g.receive(vec![forged]);
    assert!(matches!(
        rep.rejected[0].1,
        RejectReason::Unauthorized(securecomm_crdt::authz::AuthzError::Banned)
    ));
    // A token not signed by the creator's device is refused.
    let fake = InviteToken::issue(&a.dev, g.id(), c_ok, i_ok);
    assert!(g.change(&u1.dev, 4007, vec![redeem(&fake, &u1)]).is_err());
    // Within bounds it works.
    g.change(&u1.dev, 4008, vec![redeem(&tok(c_exp, i_exp), &u1)])
        .unwrap();
    assert!(g.view().member(&u1.id()).is_some());
}

#[test]
fn concurrent_redemptions_beyond_max_uses_are_void() {
    let (mut g, mut base, [o, _, _, _]) = standard();
    let (code, inv) = (
        InviteCode([50; 16]),
        Invite {
            creator: o.id(),
            expires_at: 0,
            max_uses: 1,
        },
    );
    base.push(
        g.change(&o.dev, 1500, vec![GuildOp::CreateInvite(code, inv)])
            .unwrap(),
    );
    let token = InviteToken::issue(&o.dev, g.id(), code, inv);
    let (u1, u2) = (U::new(51), U::new(52));
    let (mut x, mut y) = (replica(&g, &base), replica(&g, &base));
    let j1 = x.change(&u1.dev, 2000, vec![redeem(&token, &u1)]).unwrap();
    let j2 = y.change(&u2.dev, 2000, vec![redeem(&token, &u2)]).unwrap();
    let v = converge(&g, &base, &[j1, j2]);
    let joined = [u1.id(), u2.id()]
        .iter()
        .filter(|u| v.member(u).is_some())
        .count();
    assert_eq!(joined, 1);
    assert_eq!(v.invites()[&code].uses, 1);
}

#[test]
fn membership_events_follow_the_resolved_view() {
    use securecomm_crdt::MembershipEvent;
    let (mut g, _, [o, a, _, p]) = standard();
    let ev = g.take_membership_events();
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, MembershipEvent::Added { .. }))
            .count(),
        4
    );
    g.change(&a.dev, 3000, vec![GuildOp::Ban(p.id(), "x".into())])
        .unwrap();
    assert_eq!(
        g.take_membership_events(),
        vec![MembershipEvent::Banned { user: p.id() }]
    );
    let _ = o;
    assert!(g.take_membership_events().is_empty());
}
