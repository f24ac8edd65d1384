//! Signed, authorized changes: every replica rejects what the author may not do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use securecomm_crdt::envelope::{EnvelopeError, SignedChange};
use securecomm_crdt::guild::{Guild, RejectReason};
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::perms::Permissions;
use securecomm_crdt::schema::{RoleId, UserId};
use securecomm_noise::codec::{Decode, Encode};
use securecomm_noise::keys::DeviceSigningKey;

/// Delivers a forged change to two fresh replicas and the origin: all must reject it and keep
/// the same view.
fn rejected_everywhere(g: &mut Guild, envs: &[SignedChange], bad: SignedChange) -> RejectReason {
    let before = g.view().clone();
    let mut reasons = Vec::new();
    for mut r in [replica(g, envs), replica(g, envs)] {
        let rep = r.receive(vec![bad.clone()]);
        assert!(rep.accepted.is_empty());
        assert_eq!(rep.rejected.len(), 1);
        reasons.push(rep.rejected[0].1.clone());
        assert_eq!(r.view(), &before);
        assert_eq!(r.heads(), g.heads());
    }
    let rep = g.receive(vec![bad]);
    assert!(rep.accepted.is_empty());
    assert_eq!(g.view(), &before);
    reasons.pop().unwrap()
}

#[test]
fn end_to_end_replicas_converge() {
    let (mut g, envs, [o, a, m, p]) = standard();
    let mut r = replica(&g, &envs);
    assert_eq!(r.view(), g.view());
    let v = r.view();
    assert_eq!(v.members().len(), 4);
    assert!(v.is_owner(&o.id()));
    assert!(v.member(&a.id()).unwrap().roles.contains(&R_ADMIN));
    assert!(
        v.channel_permissions(&m.id(), &CH)
            .contains(Permissions::MANAGE_CHANNELS)
    );
    assert!(
        !v.channel_permissions(&p.id(), &CH)
            .contains(Permissions::MANAGE_CHANNELS)
    );
    // Out-of-order delivery converges too (parked until dependencies arrive).
    let mut rev = Guild::join(g.id());
    let mut rev_envs = envs.clone();
    rev_envs.reverse();
    let rep = rev.receive(rev_envs);
    assert!(rep.rejected.is_empty());
    assert_eq!(rev.view(), g.view());
    assert_eq!(g.resolve_from_scratch(), *g.view());
}

#[test]
fn member_without_manage_roles_cannot_grant_itself_a_role() {
    let (mut g, envs, [_, _, _, p]) = standard();
    let ops = vec![GuildOp::GrantRole(p.id(), R_ADMIN)];
    assert!(g.change(&p.dev, 2000, ops.clone()).is_err());
    let bad = g.forge_change(&p.dev, 2000, &ops).unwrap();
    let why = rejected_everywhere(&mut g, &envs, bad);
    assert!(matches!(why, RejectReason::Unauthorized(_)), "{why:?}");
}

#[test]
fn editing_channels_needs_manage_channels() {
    let (mut g, envs, [_, _, m, p]) = standard();
    let ops = vec![GuildOp::PutChannel(CH, text("renamed"))];
    let bad = g.forge_change(&p.dev, 2000, &ops).unwrap();
    rejected_everywhere(&mut g, &envs, bad);
    // The moderator may.
    g.change(&m.dev, 2001, ops).unwrap();
}

#[test]
fn manage_channels_may_not_edit_roles() {
    let (mut g, envs, [_, _, m, _]) = standard();
    let ops = vec![GuildOp::PutRole(RoleId(3), role(3, Permissions::NONE))];
    let bad = g.forge_change(&m.dev, 2000, &ops).unwrap();
    rejected_everywhere(&mut g, &envs, bad);
}

#[test]
fn kicking_needs_kick_members_and_rank() {
    let (mut g, envs, [_, a, m, p]) = standard();
    let bad = g
        .forge_change(&p.dev, 2000, &[GuildOp::Kick(m.id())])
        .unwrap();
    rejected_everywhere(&mut g, &envs, bad);
    // The moderator has KICK_MEMBERS but may not kick the higher admin.
    let bad = g
        .forge_change(&m.dev, 2000, &[GuildOp::Kick(a.id())])
        .unwrap();
    rejected_everywhere(&mut g, &envs, bad);
    g.change(&m.dev, 2001, vec![GuildOp::Kick(p.id())]).unwrap();
    assert!(g.view().member(&p.id()).is_none());
}

#[test]
fn manage_roles_may_not_grant_a_role_at_or_above_its_own() {
    let (mut g, envs, [o, a, _, p]) = standard();
    let high = RoleId(20);
    g.change(
        &o.dev,
        1500,
        vec![GuildOp::PutRole(high, role(20, Permissions::NONE))],
    )
    .unwrap();
    let mut envs = envs;
    envs.push(g.envelope(&g.heads()[0]).unwrap());
    for r in [high, R_ADMIN] {
        let bad = g
            .forge_change(&a.dev, 2000, &[GuildOp::GrantRole(p.id(), r)])
            .unwrap();
        rejected_everywhere(&mut g, &envs, bad);
    }
    // Nor create a role above itself, nor give a role bits it lacks.
    let bad = g
        .forge_change(
            &a.dev,
            2000,
            &[GuildOp::PutRole(RoleId(30), role(11, Permissions::NONE))],
        )
        .unwrap();
    rejected_everywhere(&mut g, &envs, bad);
    let bad = g
        .forge_change(
            &a.dev,
            2000,
            &[GuildOp::PutRole(
                RoleId(30),
                role(2, Permissions::ADMINISTRATOR),
            )],
        )
        .unwrap();
    rejected_everywhere(&mut g, &envs, bad);
    g.change(&a.dev, 2001, vec![GuildOp::GrantRole(p.id(), R_MOD)])
        .unwrap();
}

#[test]
fn only_the_owner_transfers_ownership() {
    let (mut g, envs, [o, a, _, p]) = standard();
    let bad = g
        .forge_change(&a.dev, 2000, &[GuildOp::TransferOwnership(a.id())])
        .unwrap();
    rejected_everywhere(&mut g, &envs, bad);
    g.change(&o.dev, 2001, vec![GuildOp::TransferOwnership(p.id())])
        .unwrap();
    assert!(g.view().is_owner(&p.id()));
}

#[test]
fn change_with_allowed_and_forbidden_ops_is_rejected_whole() {
    let (mut g, envs, [_, _, m, p]) = standard();
    // Renaming the channel is allowed to the moderator, granting a role is not.
    let ops = [
        GuildOp::PutChannel(CH, text("renamed")),
        GuildOp::GrantRole(p.id(), R_MOD),
    ];
    let bad = g.forge_change(&m.dev, 2000, &ops).unwrap();
    rejected_everywhere(&mut g, &envs, bad);
    assert_eq!(g.view().channels()[&CH].name, "general");
}

#[test]
fn forged_signature_and_spoofed_actor_are_rejected() {
    let (mut g, envs, [_, a, _, p]) = standard();
    let good = g
        .forge_change(&a.dev, 2000, &[GuildOp::Kick(p.id())])
        .unwrap();
    // Bit flips anywhere in the signed part or the signature.
    for i in [40usize, 70, 100] {
        let mut bytes = good.to_bytes();
        bytes[i] ^= 1;
        if let Ok(bad) = SignedChange::decode(&mut securecomm_noise::codec::Reader::new(&bytes)) {
            let why = rejected_everywhere(&mut g, &envs, bad);
            assert!(matches!(why, RejectReason::Envelope(_)), "{why:?}");
        }
    }
    let mut bad = good.clone();
    bad.sig.0[0] ^= 1;
    assert!(matches!(
        rejected_everywhere(&mut g, &envs, bad),
        RejectReason::Envelope(EnvelopeError::BadSignature)
    ));
    // p re-signs a's change (actor id = a's device) with its own device key.
    let spoof = SignedChange::sign(&p.dev, g.id(), good.change.clone());
    assert!(matches!(
        rejected_everywhere(&mut g, &envs, spoof),
        RejectReason::Envelope(EnvelopeError::ActorMismatch)
    ));
    // A stranger's device signing its own change.
    let stranger = DeviceSigningKey::from_seed(&[99; 32]);
    let bad = g
        .forge_change(&stranger, 2000, &[GuildOp::Kick(p.id())])
        .unwrap();
    rejected_everywhere(&mut g, &envs, bad);
    // Wrong guild.
    let other = SignedChange::sign(
        &a.dev,
        securecomm_crdt::schema::GuildId([1; 32]),
        good.change.clone(),
    );
    rejected_everywhere(&mut g, &envs, other);
    // The genuine one is accepted.
    assert_eq!(g.receive(vec![good]).accepted.len(), 1);
}

#[test]
fn removed_and_banned_members_later_changes_are_ignored() {
    let (mut g, mut envs, [o, a, m, p]) = standard();
    envs.push(g.change(&o.dev, 2000, vec![GuildOp::Kick(m.id())]).unwrap());
    envs.push(
        g.change(&a.dev, 2001, vec![GuildOp::Ban(p.id(), "spam".into())])
            .unwrap(),
    );
    for (who, op) in [
        (&m, GuildOp::PutChannel(CH, text("mine"))),
        (&p, GuildOp::SetNickname(p.id(), "back".into())),
    ] {
        let bad = g.forge_change(&who.dev, 2002, &[op]).unwrap();
        let why = rejected_everywhere(&mut g, &envs, bad);
        assert!(matches!(
            why,
            RejectReason::Unauthorized(securecomm_crdt::authz::AuthzError::NotAMember)
        ));
    }
}

#[test]
fn actor_chain_cannot_fork_or_backdate() {
    let (g, envs, [_, a, _, p]) = standard();
    // Two changes by the same device on the same heads: the second has the same seq.
    let c1 = g
        .forge_change(&a.dev, 2000, &[GuildOp::SetName("x".into())])
        .unwrap();
    let c2 = g
        .forge_change(&a.dev, 2000, &[GuildOp::Kick(p.id())])
        .unwrap();
    let mut r = replica(&g, &envs);
    assert_eq!(r.receive(vec![c1]).accepted.len(), 1);
    let rep = r.receive(vec![c2]);
    assert!(
        matches!(rep.rejected[0].1, RejectReason::Chain { .. }),
        "{:?}",
        rep.rejected
    );
    let _: UserId = a.id();
}

#[test]
fn server_mute_needs_mute_members_and_rank_and_spares_the_owner() {
    let (mut g, envs, [o, a, m, p]) = standard();
    // A plain member, and an admin without Mute Members, may not.
    for who in [&p, &a] {
        let bad = g
            .forge_change(&who.dev, 2000, &[GuildOp::SetVoiceMute(m.id(), true)])
            .unwrap();
        rejected_everywhere(&mut g, &envs, bad);
    }
    // The owner may; every replica sees the member muted, then unmuted.
    let mute = g
        .change(&o.dev, 2001, vec![GuildOp::SetVoiceMute(a.id(), true)])
        .unwrap();
    let mut r = replica(&g, &envs);
    r.receive(vec![mute]);
    assert!(r.view().member(&a.id()).unwrap().voice_muted);
    assert!(!r.view().member(&p.id()).unwrap().voice_muted);
    g.change(&o.dev, 2002, vec![GuildOp::SetVoiceMute(a.id(), false)])
        .unwrap();
    assert!(!g.view().member(&a.id()).unwrap().voice_muted);
    // The moderator, given Mute Members, mutes the plain member but not the higher admin,
    // not the owner and not itself.
    g.change(
        &o.dev,
        2003,
        vec![GuildOp::PutRole(
            R_MOD,
            role(
                5,
                Permissions::MANAGE_CHANNELS
                    | Permissions::KICK_MEMBERS
                    | Permissions::MUTE_MEMBERS,
            ),
        )],
    )
    .unwrap();
    g.change(&m.dev, 2004, vec![GuildOp::SetVoiceMute(p.id(), true)])
        .unwrap();
    assert!(g.view().member(&p.id()).unwrap().voice_muted);
    for target in [a.id(), o.id(), m.id()] {
        assert!(
            g.change(&m.dev, 2005, vec![GuildOp::SetVoiceMute(target, true)])
                .is_err()
        );
    }
    assert_codec(&GuildOp::SetVoiceMute(p.id(), true));
}
