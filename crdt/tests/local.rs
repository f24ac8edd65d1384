//! Local changes are atomic, trusted loading matches verified loading, the invite-token cache
//! decides nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use automerge::ReadDoc;
use common::*;
use securecomm_crdt::authz::AuthzError;
use securecomm_crdt::guild::{Guild, GuildError, RejectReason};
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::schema::MAX_NAME;
use securecomm_noise::codec::Encode;

/// The document and the change DAG hold exactly the same changes.
fn doc_matches_dag(g: &Guild) {
    let mut doc_heads = g.doc().get_heads();
    let mut dag_heads = g.heads();
    doc_heads.sort();
    dag_heads.sort();
    assert_eq!(doc_heads, dag_heads);
    assert_eq!(g.doc().get_changes(&[]).len(), g.len());
}

#[test]
fn a_local_change_refused_late_leaves_no_trace() {
    let (mut g, mut envs, [o, ..]) = standard();
    let before = (g.len(), g.heads(), g.view().clone());
    // Authorized (the owner may rename) but not decodable by any replica: the name is too long.
    // The old code committed it to the document before finding out.
    let long = "x".repeat(MAX_NAME + 1);
    let err = g
        .change(&o.dev, 2000, vec![GuildOp::SetName(long)])
        .unwrap_err();
    assert!(
        matches!(err, GuildError::Rejected(RejectReason::Envelope(_))),
        "{err:?}"
    );
    assert_eq!(g.len(), before.0);
    assert_eq!(g.heads(), before.1);
    assert_eq!(g.view(), &before.2);
    doc_matches_dag(&g);
    // No accepted change wrote the name slot, and the refused one did not reach the document.
    assert!(
        g.doc()
            .get(automerge::ROOT, "guild/name")
            .unwrap()
            .is_none()
    );
    // The replica still works, and its next change (same device, next sequence number) is
    // accepted by a fresh replica: no gap in the device chain.
    envs.push(
        g.change(&o.dev, 2001, vec![GuildOp::SetName("ok".into())])
            .unwrap(),
    );
    doc_matches_dag(&g);
    let mut r = replica(&g, &envs);
    assert_eq!(r.view(), g.view());
    assert_eq!(r.view().name(), "ok");
    doc_matches_dag(&r);
}

#[test]
fn local_changes_round_trip_through_a_peer_and_overwrite_slots() {
    let (mut g, mut envs, [o, a, ..]) = standard();
    for (i, name) in ["one", "two", "three"].iter().enumerate() {
        envs.push(
            g.change(
                &o.dev,
                2000 + i as u64,
                vec![GuildOp::SetName((*name).into())],
            )
            .unwrap(),
        );
    }
    envs.push(
        g.change(&a.dev, 2010, vec![GuildOp::SetName("four".into())])
            .unwrap(),
    );
    // A put overwrites the slot (its pred names the visible value): one value, no conflict.
    let all = g.doc().get_all(automerge::ROOT, "guild/name").unwrap();
    assert_eq!(all.len(), 1);
    doc_matches_dag(&g);
    let mut r = replica(&g, &envs);
    assert_eq!(r.view(), g.view());
    assert_eq!(r.view().name(), "four");
    assert_eq!(r.doc().get_heads(), g.doc().get_heads());
}

#[test]
fn load_trusted_builds_the_same_replica_and_verifies_later_input() {
    let (mut g, envs, [o, ..]) = standard();
    let saved = g.save();
    let mut a = Guild::load(&saved).unwrap();
    let mut b = Guild::load_trusted(&saved).unwrap();
    assert_eq!(a.len(), g.len());
    assert_eq!(b.len(), g.len());
    assert_eq!(b.heads(), a.heads());
    assert_eq!(b.view(), a.view());
    assert_eq!(b.view(), g.view());
    let sorted = |v: Vec<securecomm_crdt::envelope::SignedChange>| {
        let mut b: Vec<Vec<u8>> = v.iter().map(|e| e.to_bytes()).collect();
        b.sort();
        b
    };
    assert_eq!(sorted(b.envelopes()), sorted(envs));
    doc_matches_dag(&b);
    // Network input after a trusted load is verified: a flipped signature bit is refused.
    let mut bad = g
        .change(&o.dev, 3000, vec![GuildOp::SetName("n".into())])
        .unwrap();
    let good = bad.clone();
    bad.sig.0[5] ^= 1;
    let rep = b.receive(vec![bad]);
    assert!(rep.accepted.is_empty());
    assert!(matches!(rep.rejected[0].1, RejectReason::Envelope(_)));
    let rep = b.receive(vec![good]);
    assert_eq!(rep.accepted.len(), 1);
    // A truncated save is refused by both.
    assert!(Guild::load_trusted(&saved[..saved.len() - 1]).is_err());
    assert!(Guild::load(&saved[..saved.len() - 1]).is_err());
}

#[test]
fn a_cached_token_does_not_vouch_for_a_forged_one() {
    let (o, x, y, z) = (U::new(1), U::new(20), U::new(21), U::new(22));
    let (mut g, mut envs, token) = guild_with_open_invite(&o);
    let mut forged = token.clone();
    forged.sig.0[40] ^= 1;
    // x redeems the genuine token (now remembered as verified).
    envs.push(g.change(&x.dev, 1002, vec![redeem(&token, &x)]).unwrap());
    // y's redemption with the forged token is refused locally ...
    let err = g
        .change(&y.dev, 1003, vec![redeem(&forged, &y)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            GuildError::Rejected(RejectReason::Unauthorized(AuthzError::Invite(_)))
        ),
        "{err:?}"
    );
    // ... and by a replica that has just verified and cached the genuine token.
    let mut r = replica(&g, &envs);
    let bad = g
        .forge_change(&y.dev, 1003, &[redeem(&forged, &y)])
        .unwrap();
    let rep = r.receive(vec![bad.clone()]);
    assert!(rep.accepted.is_empty());
    assert!(
        matches!(
            rep.rejected[..],
            [(_, RejectReason::Unauthorized(AuthzError::Invite(_)))]
        ),
        "{:?}",
        rep.rejected
    );
    // The genuine token still admits z.
    let ok = g.change(&z.dev, 1004, vec![redeem(&token, &z)]).unwrap();
    assert_eq!(r.receive(vec![ok]).accepted.len(), 1);
    assert_eq!(r.view(), g.view());
}
