//! The soundboard library in the guild document: codec, authorization and the 48-sound bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use proptest::prelude::*;
use securecomm_crdt::guild::RejectReason;
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::schema::{MAX_SOUND_DURATION_MS, MAX_SOUNDS, Sound, SoundAsset, SoundId};
use securecomm_noise::codec::{Decode, DecodeError, Encode};

fn sound(name: &str) -> Sound {
    Sound {
        name: name.into(),
        emoji: Some("🔔".into()),
        volume: 80,
        asset: SoundAsset {
            root: [7; 32],
            key: [9; 32],
            size: 12_345,
            duration_ms: 1_000,
            header: [1; 12],
            sha256: [2; 32],
        },
    }
}

#[test]
fn sound_ops_round_trip_and_reject_every_truncation() {
    for op in [
        GuildOp::PutSound(SoundId(5), sound("airhorn")),
        GuildOp::PutSound(
            SoundId(u64::MAX),
            Sound {
                emoji: None,
                volume: 0,
                ..sound("x")
            },
        ),
        GuildOp::DeleteSound(SoundId(5)),
    ] {
        assert_codec(&op);
    }
    // Tags 22 and 23, after every older tag (whose encodings are unchanged).
    assert_eq!(GuildOp::PutSound(SoundId(1), sound("a")).to_bytes()[1], 22);
    assert_eq!(GuildOp::DeleteSound(SoundId(1)).to_bytes()[1], 23);
}

#[test]
fn invalid_sounds_do_not_decode() {
    let too_long_name = sound(&"a".repeat(33));
    let loud = Sound {
        volume: 101,
        ..sound("a")
    };
    let long_clip = Sound {
        asset: SoundAsset {
            duration_ms: MAX_SOUND_DURATION_MS + 1,
            ..sound("a").asset
        },
        ..sound("a")
    };
    let empty_name = sound("");
    for s in [too_long_name, loud, long_clip, empty_name] {
        let b = GuildOp::PutSound(SoundId(1), s).to_bytes();
        assert!(matches!(
            GuildOp::from_bytes(&b),
            Err(DecodeError::Invalid(_))
        ));
    }
    // 32 characters of 4 bytes each are fine.
    let wide = sound(&"🎺".repeat(32));
    let op = GuildOp::PutSound(SoundId(1), wide);
    assert_eq!(GuildOp::from_bytes(&op.to_bytes()).unwrap(), op);
}

#[test]
fn the_key_is_not_in_debug_output() {
    let s = sound("a");
    let d = format!("{s:?}");
    assert!(!d.contains("9, 9"), "{d}");
    assert!(d.contains("07070707"), "{d}");
}

#[test]
fn a_member_without_manage_guild_cannot_add_or_delete_sounds() {
    let (mut g, envs, [o, a, _, p]) = standard();
    let add = vec![GuildOp::PutSound(SoundId(1), sound("airhorn"))];
    assert!(g.change(&p.dev, 2000, add.clone()).is_err());
    let bad = g.forge_change(&p.dev, 2000, &add).unwrap();
    let rep = replica(&g, &envs).receive(vec![bad]);
    assert_eq!(rep.rejected.len(), 1);
    assert!(
        matches!(rep.rejected[0].1, RejectReason::Unauthorized(_)),
        "{:?}",
        rep.rejected[0].1
    );
    // The admin (Manage Guild) may; the sound is in every replica's resolved view.
    let env = g.change(&a.dev, 2001, add).unwrap();
    let mut r = replica(&g, &envs);
    r.receive(vec![env.clone()]);
    assert_eq!(r.view().sounds().get(&SoundId(1)), Some(&sound("airhorn")));
    // The plain member cannot delete it either; the owner can.
    let del = vec![GuildOp::DeleteSound(SoundId(1))];
    assert!(g.change(&p.dev, 2002, del.clone()).is_err());
    g.change(&o.dev, 2003, del.clone()).unwrap();
    assert!(g.view().sounds().is_empty());
    // Deleting a sound that does not exist is refused.
    assert!(g.change(&o.dev, 2004, del).is_err());
}

#[test]
fn a_guild_holds_at_most_48_sounds() {
    let (mut g, _, [o, ..]) = standard();
    let ops: Vec<GuildOp> = (0..MAX_SOUNDS as u64)
        .map(|i| GuildOp::PutSound(SoundId(i), sound(&format!("s{i}"))))
        .collect();
    // 49 in one change: refused as a whole.
    let mut too_many = ops.clone();
    too_many.push(GuildOp::PutSound(SoundId(999), sound("one more")));
    assert!(g.change(&o.dev, 2000, too_many).is_err());
    g.change(&o.dev, 2001, ops).unwrap();
    assert_eq!(g.view().sounds().len(), MAX_SOUNDS);
    // A 49th is refused, replacing one is fine.
    assert!(
        g.change(
            &o.dev,
            2002,
            vec![GuildOp::PutSound(SoundId(999), sound("one more"))]
        )
        .is_err()
    );
    g.change(
        &o.dev,
        2003,
        vec![GuildOp::PutSound(SoundId(3), sound("renamed"))],
    )
    .unwrap();
    assert_eq!(g.view().sounds()[&SoundId(3)].name, "renamed");
}

proptest! {
    #[test]
    fn sounds_round_trip(
        id in any::<u64>(),
        name in "\\PC{1,32}",
        emoji in proptest::option::of("\\PC{1,8}"),
        volume in 0u8..=100,
        root in any::<[u8; 32]>(),
        key in any::<[u8; 32]>(),
        size in 1u64..=512 * 1024,
        duration_ms in 1u32..=5_200,
    ) {
        let op = GuildOp::PutSound(SoundId(id), Sound {
            name,
            emoji,
            volume,
            asset: SoundAsset { root, key, size, duration_ms, header: [3; 12], sha256: root },
        });
        prop_assert_eq!(GuildOp::from_bytes(&op.to_bytes()).unwrap(), op);
    }
}
