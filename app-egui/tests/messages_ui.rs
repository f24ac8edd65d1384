//! Issue 10 in the app: reply, react, edit and delete by clicking through the real window
//! (egui_kittest on the accessibility tree) against a real node, asserting on the app state
//! the node's events produced.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;
use egui::Key;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use securecomm_app::App;
use securecomm_app::state::{AppState, Row, View};

fn harness(dir: &Path) -> Harness<'static, App> {
    harness_sized(dir, 1200.0, 800.0)
}

fn open_channel(h: &mut Harness<'_, App>, guild: &str, channel: &str) {
    type_into(h, "Guild name", guild);
    h.get_by_label("Create guild").click();
    wait_for(h, "the guild", |s| s.guild.is_some());
    type_into(h, "Channel name", channel);
    h.get_by_label("Create channel").click();
    wait_for(h, "the channel to open", |s| {
        matches!(&s.view, View::Channel { guild, channel: c }
            if s.channels.get(guild).is_some_and(|cs| cs.iter().any(|x| x.id == *c && x.name == channel)))
    });
}

fn send(h: &mut Harness<'_, App>, text: &str) {
    type_into(h, "Message", text);
    h.key_press(Key::Enter);
    wait_for(h, &format!("{text:?} stored"), |s| {
        s.outbox.is_empty() && entry(s, text).is_some()
    });
}

fn entry<'a>(s: &'a AppState, text: &str) -> Option<&'a securecomm_app::state::Entry> {
    s.current_timeline()?
        .entries()
        .iter()
        .find(|e| e.text == text)
}

/// Clicks the first row of the message with `text` (rows are named by message id).
fn select(h: &mut Harness<'_, App>, text: &str) {
    let id = entry(&h.state().state, text).unwrap().id.clone();
    let label = format!("Select message {}", &id[..8]);
    let rows = h.query_all_by_label(&label).count();
    assert!(rows >= 1, "{label}");
    h.query_all_by_label(&label).next().unwrap().click();
    settle(h);
    assert_eq!(
        h.state().state.messages.selected.as_deref(),
        Some(id.as_str())
    );
}

#[test]
fn reply_react_edit_and_delete_by_clicking() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    create_identity(&mut h, "Dana", "pass phrase");
    open_channel(&mut h, "Readers", "books");
    send(&mut h, "who has read Dune?");
    let first = entry(&h.state().state, "who has read Dune?")
        .unwrap()
        .id
        .clone();

    // Reply: select, "Reply", type, Enter: the reply carries the id and shows the quote.
    select(&mut h, "who has read Dune?");
    click(&mut h, "Reply");
    assert!(
        h.query_by_label_contains("Replying to Dana: who has read Dune?")
            .is_some()
    );
    send(&mut h, "me, twice");
    let s = &h.state().state;
    assert_eq!(
        entry(s, "me, twice").unwrap().reply_to.as_deref(),
        Some(first.as_str())
    );
    assert!(s.messages.replying.is_none(), "the reply was used up");
    assert!(
        s.current_timeline()
            .unwrap()
            .rows()
            .iter()
            .any(|r| matches!(r, Row::Reply { quote, .. } if quote == "Dana: who has read Dune?"))
    );

    // React: a quick reaction on the selected message, then the chip under it takes it back.
    select(&mut h, "who has read Dune?");
    click(&mut h, "👍");
    wait_for(&mut h, "the reaction", |s| {
        entry(s, "who has read Dune?").is_some_and(|e| {
            e.reactions.len() == 1 && e.reactions[0].0 == "👍" && e.reactions[0].1.len() == 1
        })
    });
    settle(&mut h);
    click(&mut h, "👍 1");
    wait_for(&mut h, "the reaction removed", |s| {
        entry(s, "who has read Dune?").is_some_and(|e| e.reactions.is_empty())
    });

    // Edit our reply: the composer takes its text; Enter saves; the entry is marked edited.
    select(&mut h, "me, twice");
    click(&mut h, "Edit");
    assert_eq!(h.state().state.composer, "me, twice");
    h.state_mut().state.composer.clear();
    type_into(&mut h, "Message", "me, three times");
    h.key_press(Key::Enter);
    wait_for(&mut h, "the edit", |s| {
        entry(s, "me, three times").is_some_and(|e| e.edited) && entry(s, "me, twice").is_none()
    });
    settle(&mut h);
    assert!(h.query_by_label_contains("(edited)").is_some());

    // Pin (the owner may manage messages): the mark shows under the message.
    select(&mut h, "who has read Dune?");
    click(&mut h, "Pin");
    wait_for(&mut h, "the pin", |s| {
        entry(s, "who has read Dune?").is_some_and(|e| e.pinned)
    });
    click(&mut h, "Pins");
    wait_for(&mut h, "the pinned list", |s| {
        s.messages
            .pins
            .values()
            .flatten()
            .any(|p| p.text == "who has read Dune?")
    });
    settle(&mut h);
    assert!(h.query_by_label("Pinned messages").is_some());
    click(&mut h, "Pins");
    assert!(!h.state().state.messages.pins_open);

    // Delete: asks first, says what deletion cannot reach, then the message is gone.
    select(&mut h, "who has read Dune?");
    click(&mut h, "Delete");
    assert!(h.query_by_label_contains("may have kept a copy").is_some());
    click(&mut h, "Cancel");
    assert!(
        entry(&h.state().state, "who has read Dune?").is_some(),
        "cancel keeps it"
    );
    select(&mut h, "who has read Dune?");
    click(&mut h, "Delete");
    click(&mut h, "Delete");
    wait_for(&mut h, "the message erased", |s| {
        entry(s, "who has read Dune?").is_none()
    });
    // The reply stays, now quoting a message that is gone.
    let s = &h.state().state;
    assert!(entry(s, "me, three times").is_some());
    assert!(s.errors.is_empty(), "{:?}", s.errors);
}

#[test]
fn a_thread_from_a_message_holds_its_own_posts_and_can_be_archived() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    create_identity(&mut h, "Eve", "pass phrase");
    open_channel(&mut h, "Hikers", "trips");
    send(&mut h, "plans for Saturday");
    select(&mut h, "plans for Saturday");
    click(&mut h, "Start thread");
    wait_for(&mut h, "the thread listed", |s| {
        s.messages.threads.list_open
            && s.messages
                .threads
                .lists
                .values()
                .flatten()
                .any(|t| t.name == "plans for Saturday")
    });
    settle(&mut h);
    click(&mut h, "Open plans for Saturday");
    type_into(&mut h, "Thread message", "I bring snacks");
    click(&mut h, "Send to thread");
    wait_for(&mut h, "the thread post", |s| {
        s.messages
            .threads
            .messages
            .iter()
            .any(|m| m.text == "I bring snacks")
    });
    assert!(
        entry(&h.state().state, "I bring snacks").is_none(),
        "a thread's post stays out of the channel"
    );
    click(&mut h, "Archive");
    wait_for(&mut h, "the thread archived", |s| {
        s.open_thread().is_some_and(|t| t.archived)
    });
    settle(&mut h);
    type_into(&mut h, "Thread message", "too late");
    click(&mut h, "Send to thread");
    assert!(
        h.state()
            .state
            .errors
            .iter()
            .any(|e| e.contains("archived")),
        "{:?}",
        h.state().state.errors
    );
}

#[test]
fn search_finds_a_message_in_another_channel_and_jumps_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    create_identity(&mut h, "Fay", "pass phrase");
    open_channel(&mut h, "Airships", "history");
    send(&mut h, "the Hindenburg was a zeppelin");
    send(&mut h, "unrelated chatter");
    let (guild, history) = match &h.state().state.view {
        View::Channel { guild, channel } => (guild.clone(), *channel),
        v => panic!("{v:?}"),
    };
    let id = entry(&h.state().state, "the Hindenburg was a zeppelin")
        .unwrap()
        .id
        .clone();
    // Somewhere else now.
    type_into(&mut h, "Channel name", "lounge");
    h.get_by_label("Create channel").click();
    wait_for(
        &mut h,
        "the lounge",
        |s| matches!(&s.view, View::Channel { channel, .. } if *channel != history),
    );

    click(&mut h, "Find messages");
    type_into(&mut h, "Search text", "Zeppelin");
    click(&mut h, "Search");
    wait_for(&mut h, "the results", |s| {
        s.messages.search.results.is_some()
    });
    let hits = h.state().state.messages.search.results.clone().unwrap().1;
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].id, id);
    assert_eq!(hits[0].channel_name, "history");
    assert!(
        hits[0].snippet.contains("\u{2}zeppelin\u{3}"),
        "{:?}",
        hits[0].snippet
    );
    settle(&mut h);
    click(&mut h, &format!("Jump to {}", &id[..8]));
    wait_for(&mut h, "the jump", |s| {
        matches!(&s.view, View::Channel { guild: g, channel } if *g == guild && *channel == history)
            && s.messages.selected.as_deref() == Some(id.as_str())
    });
}

#[test]
fn a_custom_emoji_uploaded_in_settings_is_a_reaction_with_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    create_identity(&mut h, "Fay", "pass phrase");
    open_channel(&mut h, "Zoo", "pets");
    send(&mut h, "look at this");

    // Upload from the guild settings' Emoji tab: a 200 x 100 PNG becomes a 128 x 64 emoji.
    let src = dir.path().join("otter.png");
    image::RgbaImage::from_fn(200, 100, |x, y| {
        image::Rgba([(x % 256) as u8, (y * 2 % 256) as u8, 90, 255])
    })
    .save(&src)
    .unwrap();
    click(&mut h, "Guild settings");
    wait_for(&mut h, "the settings window", |s| {
        s.manage.settings.open && s.guild_data().is_some()
    });
    click(&mut h, "Emoji");
    // A bad name is refused before anything is sent.
    type_into(&mut h, "Image file", src.to_str().unwrap());
    type_into(&mut h, "Emoji name", "no spaces please");
    click(&mut h, "Upload emoji");
    assert!(
        h.state()
            .state
            .errors
            .iter()
            .any(|e| e.contains("letters, digits or underscores")),
        "{:?}",
        h.state().state.errors
    );
    h.state_mut().state.errors.clear();
    h.state_mut().state.emoji.upload.name.clear();
    type_into(&mut h, "Emoji name", "otter");
    click(&mut h, "Upload emoji");
    wait_for(&mut h, "the emoji with its image", |s| {
        s.current_emojis()
            .iter()
            .any(|e| e.name == "otter" && e.png.is_some())
    });
    settle(&mut h);
    let s = &h.state().state;
    let guild = s.guild.clone().unwrap();
    let t = s.emoji.texture(&guild, "otter").expect("decoded");
    assert_eq!(t.size(), [128, 64]);
    assert!(
        h.query_by_label(":otter:").is_some(),
        "listed with its image"
    );
    h.state_mut().state.manage.settings.open = false;
    settle(&mut h);

    // React with it from the action bar; the chip shows the image and the count.
    select(&mut h, "look at this");
    click(&mut h, ":otter:");
    wait_for(&mut h, "the custom reaction", |s| {
        entry(s, "look at this").is_some_and(|e| {
            e.reactions.len() == 1 && e.reactions[0].0 == ":otter:" && e.reactions[0].1.len() == 1
        })
    });
    settle(&mut h);
    h.state_mut().state.messages.selected = None;
    settle(&mut h);
    assert!(
        h.query_by_label(":otter: 1").is_none(),
        "the chip shows the image, not the text"
    );
    click(&mut h, "1");
    wait_for(&mut h, "the custom reaction removed", |s| {
        entry(s, "look at this").is_some_and(|e| e.reactions.is_empty())
    });

    // Delete it in the settings: gone from the list.
    click(&mut h, "Guild settings");
    click(&mut h, "Emoji");
    click(&mut h, "Delete :otter:");
    wait_for(&mut h, "the emoji deleted", |s| {
        s.current_emojis().is_empty()
    });
    let s = &h.state().state;
    assert!(s.errors.is_empty(), "{:?}", s.errors);
}
