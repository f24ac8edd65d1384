//! Guild custom emoji in the guild document: codec, authorization, unique names and the
//! 50-emoji bound, including concurrent additions that each passed authorization alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use proptest::prelude::*;
use securecomm_crdt::guild::RejectReason;
use securecomm_crdt::ops::GuildOp;
use securecomm_crdt::schema::{
    Emoji, EmojiId, EmojiImage, MAX_EMOJI_IMAGE_BYTES, MAX_EMOJIS, check_emoji_name,
};
use securecomm_noise::codec::{Decode, DecodeError, Encode};

fn emoji(name: &str) -> Emoji {
    Emoji {
        name: name.into(),
        image: EmojiImage {
            root: [7; 32],
            key: [9; 32],
            size: 4_321,
            header: [1; 12],
            sha256: [2; 32],
        },
    }
}

#[test]
fn emoji_ops_round_trip_and_reject_every_truncation() {
    for op in [
        GuildOp::PutEmoji(EmojiId(5), emoji("party_parrot")),
        GuildOp::PutEmoji(EmojiId(u64::MAX), emoji(&"x".repeat(32))),
        GuildOp::DeleteEmoji(EmojiId(5)),
    ] {
        assert_codec(&op);
    }
    // Tags 24 and 25, after every older tag (whose encodings are unchanged).
    assert_eq!(GuildOp::PutEmoji(EmojiId(1), emoji("ok")).to_bytes()[1], 24);
    assert_eq!(GuildOp::DeleteEmoji(EmojiId(1)).to_bytes()[1], 25);
}

#[test]
fn invalid_emoji_do_not_decode() {
    let big = Emoji {
        image: EmojiImage {
            size: MAX_EMOJI_IMAGE_BYTES + 1,
            ..emoji("ok").image
        },
        ..emoji("ok")
    };
    let empty = Emoji {
        image: EmojiImage {
            size: 0,
            ..emoji("ok").image
        },
        ..emoji("ok")
    };
    for e in [
        emoji("a"),
        emoji(&"a".repeat(33)),
        emoji("has space"),
        emoji("colon:"),
        emoji("émoji"),
        emoji(""),
        big,
        empty,
    ] {
        let b = GuildOp::PutEmoji(EmojiId(1), e).to_bytes();
        assert!(
            matches!(
                GuildOp::from_bytes(&b),
                Err(DecodeError::Invalid(_) | DecodeError::TooLong { .. })
            ),
            "{:?}",
            GuildOp::from_bytes(&b)
        );
    }
}

#[test]
fn names_are_letters_digits_and_underscores() {
    for ok in ["ok", "party_parrot", "A1", &"z".repeat(32)] {
        assert!(check_emoji_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", "a", "a-b", "a b", ":ab:", "ab\n", "ÿÿ", &"z".repeat(33)] {
        assert!(check_emoji_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_key_is_not_in_debug_output() {
    let d = format!("{:?}", emoji("ok"));
    assert!(!d.contains("9, 9"), "{d}");
    assert!(d.contains("07070707"), "{d}");
}

#[test]
fn a_member_without_manage_guild_cannot_add_or_delete_emoji() {
    let (mut g, envs, [o, a, m, p]) = standard();
    let add = vec![GuildOp::PutEmoji(EmojiId(1), emoji("blob"))];
    // Neither a plain member nor a moderator with Manage Channels only.
    for who in [&p, &m] {
        assert!(g.change(&who.dev, 2000, add.clone()).is_err());
        let bad = g.forge_change(&who.dev, 2000, &add).unwrap();
        let rep = replica(&g, &envs).receive(vec![bad]);
        assert_eq!(rep.rejected.len(), 1);
        assert!(
            matches!(rep.rejected[0].1, RejectReason::Unauthorized(_)),
            "{:?}",
            rep.rejected[0].1
        );
    }
    // The admin (Manage Guild) may; every replica resolves it, by id and by name.
    let env = g.change(&a.dev, 2001, add).unwrap();
    let mut r = replica(&g, &envs);
    r.receive(vec![env]);
    assert_eq!(r.view().emojis().get(&EmojiId(1)), Some(&emoji("blob")));
    assert_eq!(r.view().emoji_named("blob").unwrap().0, EmojiId(1));
    assert!(r.view().emoji_named("blobby").is_none());
    let del = vec![GuildOp::DeleteEmoji(EmojiId(1))];
    assert!(g.change(&p.dev, 2002, del.clone()).is_err());
    g.change(&o.dev, 2003, del.clone()).unwrap();
    assert!(g.view().emojis().is_empty());
    assert!(g.change(&o.dev, 2004, del).is_err(), "no such emoji");
}

#[test]
fn names_are_unique_within_a_guild() {
    let (mut g, _, [o, ..]) = standard();
    g.change(
        &o.dev,
        2000,
        vec![GuildOp::PutEmoji(EmojiId(1), emoji("blob"))],
    )
    .unwrap();
    // Another emoji under a taken name is refused; so are two new ones sharing a name.
    assert!(
        g.change(
            &o.dev,
            2001,
            vec![GuildOp::PutEmoji(EmojiId(2), emoji("blob"))]
        )
        .is_err()
    );
    assert!(
        g.change(
            &o.dev,
            2002,
            vec![
                GuildOp::PutEmoji(EmojiId(3), emoji("twin")),
                GuildOp::PutEmoji(EmojiId(4), emoji("twin")),
            ]
        )
        .is_err()
    );
    // Replacing an emoji's own image under its name, and renaming it, are fine.
    g.change(
        &o.dev,
        2003,
        vec![GuildOp::PutEmoji(EmojiId(1), emoji("blob"))],
    )
    .unwrap();
    g.change(
        &o.dev,
        2004,
        vec![GuildOp::PutEmoji(EmojiId(1), emoji("blob2"))],
    )
    .unwrap();
    assert_eq!(g.view().emoji_named("blob2").unwrap().0, EmojiId(1));
    // The old name is free again.
    g.change(
        &o.dev,
        2005,
        vec![GuildOp::PutEmoji(EmojiId(2), emoji("blob"))],
    )
    .unwrap();
}

#[test]
fn concurrent_additions_under_one_name_converge_to_one_emoji() {
    let (g, base, [o, a, ..]) = standard();
    let (mut x, mut y) = (replica(&g, &base), replica(&g, &base));
    let e1 = x
        .change(
            &o.dev,
            2000,
            vec![GuildOp::PutEmoji(EmojiId(10), emoji("same"))],
        )
        .unwrap();
    let e2 = y
        .change(
            &a.dev,
            2000,
            vec![GuildOp::PutEmoji(EmojiId(20), emoji("same"))],
        )
        .unwrap();
    let mut views = Vec::new();
    for order in [[e1.clone(), e2.clone()], [e2, e1]] {
        let mut r = replica(&g, &base);
        for e in order {
            let rep = r.receive(vec![e]);
            assert!(rep.rejected.is_empty(), "{:?}", rep.rejected);
        }
        let v = r.view().clone();
        assert_eq!(v, r.resolve_from_scratch());
        views.push(v);
    }
    assert_eq!(views[0], views[1]);
    assert_eq!(views[0].emojis().len(), 1, "one emoji keeps the name");
    assert!(views[0].emoji_named("same").is_some());
}

#[test]
fn a_guild_holds_at_most_50_emoji_even_under_concurrency() {
    let (mut g, base, [o, a, ..]) = standard();
    let ops: Vec<GuildOp> = (0..MAX_EMOJIS as u64 - 1)
        .map(|i| GuildOp::PutEmoji(EmojiId(i), emoji(&format!("e{i}"))))
        .collect();
    let mut too_many = ops.clone();
    too_many.push(GuildOp::PutEmoji(EmojiId(998), emoji("one_more")));
    too_many.push(GuildOp::PutEmoji(EmojiId(999), emoji("two_more")));
    assert!(
        g.change(&o.dev, 2000, too_many).is_err(),
        "51 in one change"
    );
    let env = g.change(&o.dev, 2001, ops).unwrap();
    let mut envs = base.clone();
    envs.push(env);
    // 49 now: two admins each add a 50th concurrently; both pass alone, the fold keeps one.
    let (mut x, mut y) = (replica(&g, &envs), replica(&g, &envs));
    let e1 = x
        .change(
            &o.dev,
            2002,
            vec![GuildOp::PutEmoji(EmojiId(500), emoji("fifty_a"))],
        )
        .unwrap();
    let e2 = y
        .change(
            &a.dev,
            2002,
            vec![GuildOp::PutEmoji(EmojiId(501), emoji("fifty_b"))],
        )
        .unwrap();
    let mut views = Vec::new();
    for order in [[e1.clone(), e2.clone()], [e2, e1]] {
        let mut r = replica(&g, &envs);
        for e in order {
            r.receive(vec![e]);
        }
        assert_eq!(r.view().emojis().len(), MAX_EMOJIS);
        views.push(r.view().clone());
    }
    assert_eq!(views[0], views[1]);
}

proptest! {
    #[test]
    fn emoji_round_trip(
        id in any::<u64>(),
        name in "[A-Za-z0-9_]{2,32}",
        root in any::<[u8; 32]>(),
        key in any::<[u8; 32]>(),
        size in 1u64..=256 * 1024,
        header in any::<[u8; 12]>(),
    ) {
        let op = GuildOp::PutEmoji(EmojiId(id), Emoji {
            name,
            image: EmojiImage { root, key, size, header, sha256: root },
        });
        prop_assert_eq!(GuildOp::from_bytes(&op.to_bytes()).unwrap(), op);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_emoji_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut b = vec![1u8, 24];
        b.extend(bytes);
        let _ = GuildOp::from_bytes(&b);
    }
}
