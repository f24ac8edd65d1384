//! Batched verification inside `Guild::receive`: a forged envelope or certificate in a batch is
//! rejected alone, exactly as when delivered alone; pre-verified certificates vouch for nothing
//! but themselves; envelopes of version 1 (cofactorless signatures) are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{U, guild_with_open_invite, new_guild, redeem};
use securecomm_crdt::authz::{AuthzError, SigChecks, authorize_with};
use securecomm_crdt::envelope::{EnvelopeError, SignedChange, open_all, parse_change};
use securecomm_crdt::guild::{Guild, RejectReason};
use securecomm_crdt::invite::InviteToken;
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::schema::DeviceCert;
use securecomm_noise::codec::{Decode, DecodeError, Encode};

/// Owner plus an open invite, and `n` joiners who redeem it one after another.
fn joined(n: u8) -> (Guild, Vec<SignedChange>, InviteToken, U) {
    let o = U::new(1);
    let (mut g, mut envs, token) = guild_with_open_invite(&o);
    for i in 0..n {
        let u = U::new(10 + i);
        envs.push(g.change(&u.dev, 1002, vec![redeem(&token, &u)]).unwrap());
    }
    (g, envs, token, o)
}

fn hash(e: &SignedChange) -> automerge::ChangeHash {
    parse_change(&e.change).unwrap().hash()
}

#[test]
fn forged_envelopes_inside_a_batch_are_rejected_alone() {
    let (mut g, envs, _, _) = joined(30);
    let mut batch = envs.clone();
    // A copy of a real change with one signature bit flipped.
    let mut flipped = envs[12].clone();
    flipped.sig.0[5] ^= 0x20;
    // A real change claimed by another device (the signature is not that device's).
    let mut spoofed = envs[20].clone();
    spoofed.author = envs[21].author;
    batch.insert(7, flipped);
    batch.insert(25, spoofed);
    let mut r = Guild::join(g.id());
    let rep = r.receive(batch);
    assert_eq!(rep.accepted.len(), envs.len());
    assert_eq!(rep.rejected.len(), 2, "{:?}", rep.rejected);
    for (h, why) in &rep.rejected {
        assert_eq!(*h, None);
        assert_eq!(*why, RejectReason::Envelope(EnvelopeError::BadSignature));
    }
    assert_eq!(r.view(), g.view());
    // Same outcome as opening each alone.
    for e in &envs {
        assert!(e.clone().open(&g.id()).is_ok());
    }
}

#[test]
fn batch_opening_gives_each_envelope_its_single_result() {
    let (g, envs, _, _) = joined(5);
    let mut list = envs.clone();
    let mut bad = envs[3].clone();
    bad.sig.0[40] ^= 1;
    list.push(bad);
    let mut other_guild = envs[4].clone();
    other_guild.guild.0[0] ^= 1;
    list.push(other_guild);
    let mut bad_change = envs[2].clone();
    bad_change.change[20] ^= 1; // signature no longer covers it
    list.push(bad_change);
    let batch: Vec<_> = open_all(list.clone(), &g.id())
        .into_iter()
        .map(|r| r.map(|o| o.hash()))
        .collect();
    let single: Vec<_> = list
        .into_iter()
        .map(|e| e.open(&g.id()).map(|o| o.hash()))
        .collect();
    assert_eq!(batch, single);
    assert!(matches!(
        batch[batch.len() - 2],
        Err(EnvelopeError::WrongGuild { .. })
    ));
}

#[test]
fn forged_certificate_inside_a_batch_of_redemptions_is_rejected() {
    let (mut g, envs, token, _) = joined(20);
    // `victim` certifies device d1. An attacker with device d2 presents the victim's
    // certificate signature as if it certified d2, concurrently with the real redemption.
    let victim = U::new(200);
    let d2 = securecomm_noise::keys::DeviceSigningKey::from_seed(&[201; 32]);
    let cert1 = DeviceCert::issue(&victim.root, victim.dev.public());
    let forged_cert = DeviceCert {
        user: victim.id(),
        device: d2.public(),
        sig: cert1.sig,
    };
    let forged = g
        .forge_change(
            &d2,
            1003,
            &[GuildOp::Redeem {
                token: token.clone(),
                cert: forged_cert,
                nickname: "me".into(),
            }],
        )
        .unwrap();
    let real = g
        .change(&victim.dev, 1003, vec![redeem(&token, &victim)])
        .unwrap();
    let mut batch = envs.clone();
    batch.push(real.clone());
    batch.push(forged.clone());
    let mut r = Guild::join(g.id());
    let rep = r.receive(batch);
    assert_eq!(rep.accepted.len(), envs.len() + 1);
    assert_eq!(rep.rejected.len(), 1, "{:?}", rep.rejected);
    let (h, why) = &rep.rejected[0];
    assert_eq!(*h, Some(hash(&forged)));
    assert!(
        matches!(
            why,
            RejectReason::Unauthorized(AuthzError::Invalid { index: 0, why })
                if why.contains("certified")
        ),
        "{why:?}"
    );
    assert_eq!(
        r.view().user_of_device(&victim.dev.public()),
        Some(&victim.id())
    );
    assert_eq!(r.view().user_of_device(&d2.public()), None);
    // The origin, receiving it alone, says the same.
    let rep = g.receive(vec![forged]);
    assert_eq!(rep.rejected.len(), 1);
}

#[test]
fn a_pre_verified_certificate_vouches_for_nothing_else() {
    let (mut g, _, token, _) = joined(2);
    let view = g.view().clone();
    let victim = U::new(200);
    let d2 = securecomm_noise::keys::DeviceSigningKey::from_seed(&[201; 32]);
    let cert1 = DeviceCert::issue(&victim.root, victim.dev.public());
    let real_ops = vec![redeem(&token, &victim)];
    let forged_ops = vec![GuildOp::Redeem {
        token: token.clone(),
        cert: DeviceCert {
            user: victim.id(),
            device: d2.public(),
            sig: cert1.sig,
        },
        nickname: String::new(),
    }];
    let mut sigs = SigChecks::new();
    sigs.preverify([(&victim.dev.public(), real_ops.as_slice())]);
    // Same user, same signature, another device: not covered by the remembered certificate.
    assert!(authorize_with(&view, &d2.public(), 1003, &forged_ops, false, &mut sigs).is_err());
    assert!(
        authorize_with(
            &view,
            &victim.dev.public(),
            1003,
            &real_ops,
            false,
            &mut sigs
        )
        .is_ok()
    );
    // A certificate whose device is not the author is not pre-verified (and is refused).
    let mut sigs = SigChecks::new();
    sigs.preverify([(&d2.public(), real_ops.as_slice())]);
    assert!(authorize_with(&view, &d2.public(), 1003, &real_ops, false, &mut sigs).is_err());
    // After the batch ends, the real certificate still verifies on its own.
    sigs.end_batch();
    assert!(
        authorize_with(
            &view,
            &victim.dev.public(),
            1003,
            &real_ops,
            false,
            &mut sigs
        )
        .is_ok()
    );
}

#[test]
fn a_change_of_another_guild_in_a_batch_is_refused() {
    let (g, envs, _, _) = joined(3);
    let (g2, envs2, _, _) = {
        let o = U::new(77);
        let (g2, e2) = new_guild(&o);
        (g2, e2, (), ())
    };
    assert_ne!(g.id(), g2.id());
    let mut batch = envs.clone();
    batch.extend(envs2);
    let mut r = Guild::join(g.id());
    let rep = r.receive(batch);
    assert_eq!(rep.accepted.len(), envs.len());
    assert!(matches!(
        rep.rejected.as_slice(),
        [(
            None,
            RejectReason::Envelope(EnvelopeError::WrongGuild { .. })
        )]
    ));
}

#[test]
fn version_1_envelopes_are_refused() {
    let (_, envs, _, _) = joined(1);
    let mut bytes = envs[1].to_bytes();
    assert_eq!(bytes[0], 2);
    bytes[0] = 1;
    assert!(matches!(
        SignedChange::from_bytes(&bytes),
        Err(DecodeError::UnknownVersion { got: 1, .. })
    ));
}

#[test]
fn receiving_in_one_batch_or_one_by_one_gives_the_same_replica() {
    let (mut g, envs, _, _) = joined(12);
    let mut a = Guild::join(g.id());
    assert!(a.receive(envs.clone()).rejected.is_empty());
    let mut b = Guild::join(g.id());
    for e in &envs {
        assert!(b.receive(vec![e.clone()]).rejected.is_empty());
    }
    assert_eq!(a.view(), b.view());
    assert_eq!(a.view(), g.view());
    // And a saved replica loads back (batch-verified) to the same view.
    let mut l = Guild::load(&a.save()).unwrap();
    assert_eq!(l.view(), g.view());
}

/// A receive larger than one signature chunk ([`BATCH_CHUNK`] envelopes, and as many
/// certificates): one envelope with a flipped signature bit in the first chunk and one
/// forged certificate in the second. Each spoils its chunk's batch; the chunk is re-checked
/// one by one, the two bad changes are rejected whole and alone, and every other change is
/// accepted, giving the replica that made them.
#[test]
fn one_forged_signature_per_chunk_of_a_large_receive_is_rejected_alone() {
    use securecomm_crdt::verify::BATCH_CHUNK;
    use securecomm_noise::keys::{DeviceSigningKey, RootSigningKey};

    let o = U::new(1);
    let (mut g, mut envs, token) = guild_with_open_invite(&o);
    let seed = |kind: u8, i: usize| {
        let mut s = [kind; 32];
        s[..8].copy_from_slice(&(i as u64).to_le_bytes());
        s
    };
    let joiners = BATCH_CHUNK + 200;
    for i in 0..joiners {
        let root = RootSigningKey::from_seed(&seed(5, i));
        let dev = DeviceSigningKey::from_seed(&seed(6, i));
        let op = GuildOp::Redeem {
            token: token.clone(),
            cert: DeviceCert::issue(&root, dev.public()),
            nickname: format!("m{i}"),
        };
        envs.push(g.change(&dev, 1002, vec![op]).unwrap());
    }
    // A flipped signature bit in the first chunk (a copy of a real join, which also arrives
    // intact), and a join whose certificate signature was made over another device, in the
    // second chunk.
    let mut batch = envs.clone();
    let mut flipped = envs[40].clone();
    flipped.sig.0[9] ^= 0x04;
    batch.insert(100, flipped);
    let victim = RootSigningKey::from_seed(&seed(7, 0));
    let thief = DeviceSigningKey::from_seed(&seed(8, 0));
    let other = DeviceSigningKey::from_seed(&seed(9, 0));
    let forged = g
        .forge_change(
            &thief,
            1003,
            &[GuildOp::Redeem {
                token: token.clone(),
                cert: DeviceCert {
                    user: victim.public(),
                    device: thief.public(),
                    sig: DeviceCert::issue(&victim, other.public()).sig,
                },
                nickname: "thief".into(),
            }],
        )
        .unwrap();
    batch.insert(BATCH_CHUNK + 50, forged.clone());
    assert!(batch.len() > BATCH_CHUNK + 1);

    let mut r = Guild::join(g.id());
    let rep = r.receive(batch);
    assert_eq!(rep.accepted.len(), envs.len());
    assert_eq!(rep.rejected.len(), 2, "{:?}", rep.rejected);
    assert!(
        rep.rejected
            .iter()
            .any(|(_, e)| *e == RejectReason::Envelope(EnvelopeError::BadSignature))
    );
    assert!(
        rep.rejected
            .iter()
            .any(|(h, e)| *h == Some(hash(&forged)) && matches!(e, RejectReason::Unauthorized(_)))
    );
    assert_eq!(r.view(), g.view());
    assert_eq!(r.view().user_of_device(&thief.public()), None);
    assert_eq!(r.view().members().len(), joiners + 1);
}
