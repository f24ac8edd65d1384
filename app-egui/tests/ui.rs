//! Click-and-type tests of the real app (real node on loopback, headless egui via kittest).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use egui::Key;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use securecomm_app::App;
use securecomm_app::state::{AppState, Phase, View};

fn harness(dir: &Path) -> Harness<'static, App> {
    harness_sized(dir, 1200.0, 800.0)
}

fn create_guild_and_channel(h: &mut Harness<'_, App>, guild: &str, channel: &str) -> (String, u64) {
    type_into(h, "Guild name", guild);
    h.get_by_label("Create guild").click();
    wait_for(h, "the guild", |s| {
        s.guilds.iter().any(|g| g.name == guild) && s.guild.is_some()
    });
    type_into(h, "Channel name", channel);
    h.get_by_label("Create channel").click();
    wait_for(h, "the channel to open", |s| {
        let Some(g) = &s.guild else { return false };
        s.channels
            .get(g)
            .is_some_and(|cs| cs.iter().any(|c| c.name == channel))
            && matches!(&s.view, View::Channel { guild, channel: c }
                if guild == g && s.channels[g].iter().any(|x| x.id == *c && x.name == channel))
    });
    match &h.state().state.view {
        View::Channel { guild, channel } => (guild.clone(), *channel),
        v => panic!("unexpected view {v:?}"),
    }
}

fn send_message(h: &mut Harness<'_, App>, text: &str) {
    type_into(h, "Message", text);
    h.key_press(Key::Enter);
    settle(h);
}

fn has_message(s: &AppState, text: &str) -> bool {
    s.current_timeline()
        .is_some_and(|t| t.entries().iter().any(|e| e.text == text))
}

#[test]
fn first_run_create_then_unlock_with_wrong_and_right_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut h = harness(dir.path());
        assert!(!h.state().state.has_identity);
        create_identity(&mut h, "Alice", "correct horse");
        let me = h.state().state.me.clone().unwrap();
        assert_eq!(me.display_name, "Alice");
        assert_eq!(me.user_id.len(), 64);
    }
    let id_file = dir.path().join("identity.sc");
    let before = std::fs::read(&id_file).unwrap();

    let mut h = harness(dir.path());
    settle(&mut h);
    assert!(h.state().state.has_identity);
    assert!(
        h.query_by_label("Display name").is_none(),
        "unlock asks no name"
    );
    type_into(&mut h, "Passphrase", "wrong horse");
    h.get_by_label("Unlock").click();
    wait_for(&mut h, "the refusal", |s| s.login.error.is_some());
    assert_eq!(h.state().state.phase, Phase::Login);
    let err = h.state().state.login.error.clone().unwrap();
    assert!(err.contains("Wrong passphrase"), "{err}");
    settle(&mut h);
    assert!(h.query_by_label_contains("Wrong passphrase").is_some());
    assert_eq!(std::fs::read(&id_file).unwrap(), before, "store untouched");
    assert!(
        h.state().state.login.passphrase.is_empty(),
        "the passphrase field is cleared"
    );

    type_into(&mut h, "Passphrase", "correct horse");
    h.get_by_label("Unlock").click();
    wait_for(&mut h, "the unlock", |s| s.phase == Phase::Main);
    assert_eq!(h.state().state.me.as_ref().unwrap().display_name, "Alice");
    assert!(h.state().state.login.error.is_none());
}

#[test]
fn create_guild_channel_and_send_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    create_identity(&mut h, "Bob", "pass phrase");
    let (guild, channel) = create_guild_and_channel(&mut h, "Rustaceans", "chat");
    send_message(&mut h, "hello **world**");
    wait_for(&mut h, "the message in the list", |s| {
        has_message(s, "hello **world**")
    });
    let s = &h.state().state;
    assert!(s.composer.is_empty(), "Enter sent and cleared the composer");
    let t = &s.timelines[&(guild.clone(), channel)];
    assert_eq!(t.entries().len(), 1);
    assert_eq!(t.entries()[0].author, "Bob");
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    // The rendered row shows the text without markers.
    settle(&mut h);
    assert!(h.query_by_label_contains("hello world").is_some());

    // Shift+Enter is a new line, not a send.
    type_into(&mut h, "Message", "line one");
    h.key_press_modifiers(egui::Modifiers::SHIFT, Key::Enter);
    settle(&mut h);
    h.get_by_label("Message").type_text("line two");
    settle(&mut h);
    assert_eq!(h.state().state.composer, "line one\nline two");
    h.key_press(Key::Enter);
    wait_for(&mut h, "the two-line message", |s| {
        has_message(s, "line one\nline two")
    });
    // Same author within minutes: one header for both messages.
    let t = &h.state().state.timelines[&(guild, channel)];
    let headers = t
        .rows()
        .iter()
        .filter(|r| matches!(r, securecomm_app::state::Row::Header { .. }))
        .count();
    assert_eq!(headers, 1);
}

/// Issue 10 point 8: a spoiler's text is not on screen (nor in the accessibility tree) until
/// clicked, and a masked link opens nothing: a click shows its full real target first.
#[test]
fn spoiler_hidden_until_clicked_and_masked_link_confirms_real_target() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    create_identity(&mut h, "Cleo", "pass phrase");
    create_guild_and_channel(&mut h, "Spoilers", "films");
    let target = "https://example.org/real/target?id=42";
    let text = format!("the end: ||everyone survives|| and [the docs]({target})");
    send_message(&mut h, &text);
    wait_for(&mut h, "the message in the list", |s| has_message(s, &text));
    wait_for(&mut h, "the outbox to empty", |s| s.outbox.is_empty());
    settle(&mut h);
    let id = h.state().state.current_timeline().unwrap().entries()[0]
        .id
        .clone();

    assert!(h.query_by_label_contains("everyone survives").is_none());
    assert!(h.query_by_label_contains("the end:").is_some());
    assert!(!h.state().state.is_revealed(&id, 0));
    h.get_by_label("spoiler").click();
    settle(&mut h);
    assert!(h.state().state.is_revealed(&id, 0));
    assert!(h.query_by_label_contains("everyone survives").is_some());
    assert!(h.query_by_label("spoiler").is_none());

    // The link shows its text, not its target; a click opens only the confirm window.
    assert!(h.query_by_label(target).is_none());
    assert!(
        h.query_by_role_and_label(egui::accesskit::Role::Link, "the docs")
            .is_some()
    );
    h.get_by_label("the docs").click();
    settle(&mut h);
    assert_eq!(h.state().state.link_confirm.as_deref(), Some(target));
    assert!(h.query_by_label("Open link?").is_some());
    assert!(
        h.query_all_by_label(target).count() >= 1,
        "the full target is shown"
    );
    assert!(h.query_by_label("Open").is_some() && h.query_by_label("Copy").is_some());
    h.get_by_label("Cancel").click();
    settle(&mut h);
    assert!(h.state().state.link_confirm.is_none());
    assert!(h.query_by_label("Open link?").is_none());
}

#[test]
fn invite_and_join_between_two_app_instances() {
    let (_dir_a, _dir_b, mut a, mut b) = ann_and_ben(harness);
    let (guild, _) = create_guild_and_channel(&mut a, "Club", "lobby");
    a.get_by_label("Create invite").click();
    wait_for(&mut a, "the invite", |s| s.invites.contains_key(&guild));
    let code = a.state().state.invites[&guild].clone();
    settle(&mut a);
    assert!(a.query_by_label("Copy invite code").is_some());

    // Ben pastes the code (from the DM list, where the join box also is).
    type_into(&mut b, "Invite code", &code);
    b.get_by_label("Join guild").click();
    b.step();
    b.step();
    assert_eq!(b.state().state.joining.len(), 1, "pending join shown");
    // The inviter's node answers on its own thread; keep both windows stepping.
    let deadline = Instant::now() + Duration::from_secs(120);
    while b.state().state.guild.as_deref() != Some(guild.as_str())
        || !b.state().state.joining.is_empty()
    {
        a.step();
        b.step();
        assert!(
            Instant::now() < deadline,
            "join timed out: {:?}",
            b.state().state.errors
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        b.state().state.errors.is_empty(),
        "{:?}",
        b.state().state.errors
    );
    wait_for(
        &mut b,
        "the channel list",
        |s| matches!(&s.view, View::Channel { guild: g, .. } if *g == guild),
    );
    b.get_by_label("# lobby").click();
    wait_for(&mut b, "the lobby", |s| {
        matches!(&s.view, View::Channel { channel, .. }
            if s.channels.values().flatten().any(|c| c.id == *channel && c.name == "lobby"))
    });
    send_message(&mut b, "hi from Ben");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !has_message(&a.state().state, "hi from Ben") {
        a.step();
        b.step();
        assert!(
            Instant::now() < deadline,
            "message never reached Ann: {:?} / {:?}",
            a.state().state.errors,
            b.state().state.errors
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Ann sees Ben among the members once the guild document syncs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !a.state().state.members[&guild]
        .iter()
        .any(|m| m.nickname == "Ben")
    {
        a.step();
        b.step();
        assert!(Instant::now() < deadline, "Ben never listed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Presence: each sees the other online (a connected device), and the message Ben sent
    // while Ann looked at another channel is an unread marker on Ann's side only if she was
    // elsewhere: she was in #lobby, so none.
    let ben = b.state().state.me.clone().unwrap().user_id;
    let ann = a.state().state.me.clone().unwrap().user_id;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(a.state().state.online.contains(&ben) && b.state().state.online.contains(&ann)) {
        a.step();
        b.step();
        assert!(Instant::now() < deadline, "presence never showed");
        std::thread::sleep(Duration::from_millis(20));
    }
    settle(&mut a);
    assert!(a.query_all_by_label("Ben").count() >= 1);
    let lobby = match &a.state().state.view {
        View::Channel { channel, .. } => *channel,
        v => panic!("{v:?}"),
    };
    assert_eq!(a.state().state.unread_channel(&guild, lobby), (0, false));
    // Ann leaves for the DM list; Ben mentions her; the guild and the channel get the marker.
    a.get_by_label("Direct messages").click();
    settle(&mut a);
    send_message(&mut b, "@Ann are you there?");
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.state().state.unread_channel(&guild, lobby) != (1, true) {
        a.step();
        b.step();
        assert!(
            Instant::now() < deadline,
            "no unread mention: {:?}",
            a.state().state.unread
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    settle(&mut a);
    assert!(
        a.query_by_label_contains("Club  @1").is_some(),
        "guild bar marker"
    );
}

#[test]
fn a_channel_of_100k_messages_lays_out_only_visible_rows() {
    use securecomm_app::backend::{Event, Message};
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    let guild = "aa".repeat(32);
    let messages: Vec<Message> = (0..100_000u64)
        .map(|i| Message {
            guild: guild.clone(),
            channel: 7,
            id: format!("{i:032x}"),
            sender: if i % 3 == 0 { "ann" } else { "bob" }.into(),
            nickname: String::new(),
            sent_at: 1_700_000_000_000 + i * 1000,
            text: format!("row number {i} with *some* `markup`"),
            sender_device: "ab".repeat(32),
            seq: i + 1,
            delivery: None,
            ..Default::default()
        })
        .collect();
    {
        let s = &mut h.state_mut().state;
        s.phase = Phase::Main;
        s.guild = Some(guild.clone());
        s.view = View::Channel {
            guild: guild.clone(),
            channel: 7,
        };
        let _ = s.apply(Event::History {
            guild: guild.clone(),
            channel: 7,
            messages,
        });
    }
    let t0 = Instant::now();
    settle(&mut h);
    let first = t0.elapsed();
    let shown = h.query_all_by_label_contains("row number").count();
    assert!(shown > 0, "the newest rows are visible");
    assert!(shown < 200, "only visible rows are laid out, got {shown}");
    assert!(h.query_by_label_contains("row number 99999 ").is_some());
    let t1 = Instant::now();
    for _ in 0..20 {
        h.step();
    }
    let per_frame = t1.elapsed() / 20;
    eprintln!("100k messages: first frames {first:?}, then {per_frame:?} per frame (debug build)");
    assert!(per_frame < Duration::from_millis(500), "{per_frame:?}");
}

/// A channel longer than the first page, in a real store seeded through the node: the app
/// opens on the newest page, scrolling to the top with the mouse wheel brings the older page
/// (the node pages by cursor), and the view keeps its place instead of jumping.
#[test]
fn scrolling_up_pages_in_older_history_from_the_store() {
    use securecomm_app::demo::{SeedSpec, sample_text, seed};
    use securecomm_app::state::HISTORY_LIMIT;
    let dir = tempfile::tempdir().unwrap();
    let total = HISTORY_LIMIT + 300;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t0 = Instant::now();
    let seeded = rt
        .block_on(seed(
            dir.path(),
            &SeedSpec {
                name: "Seeder",
                passphrase: "pass phrase",
                kdf: config(dir.path()).kdf,
                guild: "Archive",
                messages: total,
            },
            sample_text,
        ))
        .unwrap();
    eprintln!("seeded {total} messages in {:?}", t0.elapsed());
    drop(rt);
    let mut h = harness(dir.path());
    settle(&mut h);
    type_into(&mut h, "Passphrase", "pass phrase");
    h.get_by_label("Unlock").click();
    let key = (seeded.guild.clone(), seeded.channel);
    wait_for(&mut h, "the first page", |s| {
        s.timelines
            .get(&key)
            .is_some_and(|t| t.entries().len() == HISTORY_LIMIT)
    });
    assert!(!h.state().state.timelines[&key].exhausted);
    // The newest message is on screen (the view sticks to the bottom).
    settle(&mut h);
    let newest = h.state().state.timelines[&key]
        .entries()
        .back()
        .unwrap()
        .text
        .clone();
    let first_line = newest.lines().next().unwrap().to_owned();
    assert!(
        h.query_all_by_label_contains(&first_line[..12]).count() > 0,
        "{first_line}"
    );
    // Wheel up, a screen at a time, until the older page has arrived.
    h.event(egui::Event::PointerMoved(egui::pos2(600.0, 400.0)));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut wheels = 0;
    while !h.state().state.timelines[&key].exhausted {
        assert!(
            Instant::now() < deadline,
            "no older page after {wheels} wheel turns"
        );
        if !h.state().state.timelines[&key].loading_older {
            h.event(egui::Event::MouseWheel {
                unit: egui::MouseWheelUnit::Page,
                delta: egui::vec2(0.0, 20.0),
                modifiers: egui::Modifiers::default(),
            });
            wheels += 1;
        }
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    settle(&mut h);
    assert_eq!(h.state().state.timelines[&key].entries().len(), total);
    // The view kept its place: the rows put in front are above it, not on screen.
    let oldest: Vec<String> = h.state().state.timelines[&key]
        .entries()
        .iter()
        .take(3)
        .map(|e| e.text.split_inclusive(':').next().unwrap().to_owned())
        .collect();
    for line in &oldest {
        assert!(
            h.query_all_by_label_contains(line).count() == 0,
            "{line} is on screen: the view jumped to the top"
        );
    }
    let t = &h.state().state.timelines[&key];
    let ids: std::collections::HashSet<&str> = t.entries().iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), total, "every message once");
    assert!(
        h.state().state.errors.is_empty(),
        "{:?}",
        h.state().state.errors
    );
}
