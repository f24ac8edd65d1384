//! Round-trips and strictness of every wire type.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use proptest::prelude::*;
use securecomm_crdt::envelope::SignedChange;
use securecomm_crdt::guild::decode_sync;
use securecomm_crdt::invite::InviteToken;
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::perms::Permissions;
use securecomm_crdt::schema::{
    ChannelId, ChannelKind, GuildId, Invite, InviteCode, KeyCache, Overwrite, OverwriteTarget,
    RoleId, Settings,
};
use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader};

fn sample_ops() -> Vec<GuildOp> {
    let u = U::new(1);
    let mut ch = text("t");
    ch.kind = ChannelKind::Voice;
    ch.overwrites = vec![
        Overwrite {
            target: OverwriteTarget::Role(RoleId(1)),
            allow: Permissions::SPEAK,
            deny: Permissions::CONNECT,
        },
        Overwrite {
            target: OverwriteTarget::Member(u.id()),
            allow: Permissions::NONE,
            deny: Permissions::SPEAK,
        },
    ];
    let inv = Invite {
        creator: u.id(),
        expires_at: 9,
        max_uses: 3,
    };
    let token = InviteToken::issue(&u.dev, GuildId([3; 32]), InviteCode([4; 16]), inv);
    vec![
        GuildOp::SetName("n".into()),
        GuildOp::SetIcon(Some([1; 32])),
        GuildOp::SetSettings(Settings {
            history_visible_to_new_members: true,
            default_disappearing_secs: 60,
            max_upload_bytes: 1 << 20,
        }),
        GuildOp::PutRole(RoleId(9), role(3, Permissions::ALL)),
        GuildOp::PutChannel(ChannelId(2), ch),
        GuildOp::CreateInvite(InviteCode([4; 16]), inv),
        redeem(&token, &u),
        GuildOp::Ban(u.id(), "r".into()),
        GuildOp::GrantRole(u.id(), RoleId(1)),
    ]
}

#[test]
fn ops_round_trip_and_reject_every_truncation_and_trailing_byte() {
    for op in sample_ops() {
        assert_codec(&op);
    }
}

/// Decoding through a key cache gives exactly what plain decoding gives: the same ops, the same
/// errors for every truncation and for invalid keys, even when the cache is warm.
#[test]
fn cached_key_decoding_equals_plain_decoding() {
    let mut keys = KeyCache::new();
    let decode_cached = |keys: &mut KeyCache, b: &[u8]| {
        let mut r = Reader::new(b);
        GuildOp::decode_with(&mut r, keys).and_then(|op| r.finish().map(|()| op))
    };
    for _ in 0..2 {
        for op in sample_ops() {
            let b = op.to_bytes();
            assert_eq!(decode_cached(&mut keys, &b), GuildOp::from_bytes(&b));
            for n in 0..b.len() {
                assert_eq!(
                    decode_cached(&mut keys, &b[..n]),
                    GuildOp::from_bytes(&b[..n])
                );
            }
        }
    }
    // A small-order key (the identity) where a user key goes: refused, cache warm or not.
    let u = U::new(1);
    let mut b = GuildOp::GrantRole(u.id(), RoleId(1)).to_bytes();
    let mut id = [0u8; 32];
    id[0] = 1;
    b[2..34].copy_from_slice(&id);
    assert_eq!(
        decode_cached(&mut keys, &b),
        Err(DecodeError::Invalid("root public key"))
    );
    assert_eq!(
        GuildOp::from_bytes(&b),
        Err(DecodeError::Invalid("root public key"))
    );
}

#[test]
fn overwrites_must_be_canonical() {
    let mut ch = text("t");
    let o = Overwrite {
        target: OverwriteTarget::Role(RoleId(1)),
        allow: Permissions::SPEAK,
        deny: Permissions::NONE,
    };
    ch.overwrites = vec![o, o];
    let b = GuildOp::PutChannel(ChannelId(1), ch).to_bytes();
    assert_eq!(
        GuildOp::from_bytes(&b),
        Err(DecodeError::Invalid("overwrite order"))
    );
}

#[test]
fn envelope_debug_and_strictness() {
    let (g, envs, _) = standard();
    let e = envs.last().unwrap().clone();
    let b = e.to_bytes();
    assert_eq!(SignedChange::from_bytes(&b).unwrap(), e);
    assert!(SignedChange::from_bytes(&b[..b.len() - 1]).is_err());
    let mut t = b.clone();
    t.push(1);
    assert!(SignedChange::from_bytes(&t).is_err());
    let d = format!("{e:?}");
    assert!(d.contains("change_len"));
    assert!(decode_sync(&b).is_err());
    let _ = g;
}

proptest! {
    #[test]
    fn names_and_bits_round_trip(name in "\\PC{0,25}", bits in any::<u64>(), pos in any::<u16>()) {
        let perms = Permissions::from_bits_truncate(bits);
        let op = GuildOp::PutRole(RoleId(bits), role(pos, perms));
        let op = match op { GuildOp::PutRole(id, mut r) => { r.name = name.clone(); GuildOp::PutRole(id, r) } o => o };
        prop_assert_eq!(GuildOp::from_bytes(&op.to_bytes()).unwrap(), op);
        prop_assert_eq!(GuildOp::from_bytes(&GuildOp::SetName(name.clone()).to_bytes()).unwrap(), GuildOp::SetName(name));
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = GuildOp::from_bytes(&bytes);
        let _ = SignedChange::from_bytes(&bytes);
        let _ = InviteToken::from_bytes(&bytes);
        let _ = decode_sync(&bytes);
    }
}

/// Regression: a 21-byte bundle chunk made Automerge 0.12's parser panic (fuzz target
/// `crdt_envelope`). Signed by a stranger's own key it reached the parser; it must be rejected.
#[test]
fn crdt_envelope_automerge_bundle_panic_is_an_error() {
    let data = [
        133u8, 111, 74, 131, 1, 0, 0, 0, 3, 10, 0, 0, 0, 1, 35, 1, 42, 0, 0, 3, 0,
    ];
    let (mut g, _, _) = standard();
    let stranger = securecomm_noise::keys::DeviceSigningKey::from_seed(&[66; 32]);
    let env = SignedChange::sign(&stranger, g.id(), data.to_vec());
    let before = g.view().clone();
    let rep = g.receive(vec![env]);
    assert_eq!(rep.rejected.len(), 1);
    assert!(securecomm_crdt::envelope::parse_change(&data).is_err());
    assert_eq!(g.view(), &before);
}

/// Regression: only uncompressed change chunks reach Automerge's parser (a bundle chunk could
/// make it panic or allocate gigabytes); every change the crate makes is such a chunk.
#[test]
fn crdt_envelope_only_change_chunks_are_parsed() {
    let (_, envs, _) = standard();
    for e in &envs {
        assert_eq!(e.change[8], 1);
        assert!(securecomm_crdt::envelope::parse_change(&e.change).is_ok());
    }
    let mut bundle = envs[1].change.clone();
    bundle[8] = 3;
    assert!(securecomm_crdt::envelope::parse_change(&bundle).is_err());
}
