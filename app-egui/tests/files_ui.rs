//! Issue 11 in the app: attaching a file (dropped on the window, as a file manager drops it),
//! sending it, downloading it on a second instance with the progress shown and saving it
//! byte-identical; image previews decoded only with the setting on. Real nodes on loopback,
//! clicks through the accessibility tree, assertions on the app state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use egui::Key;
use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use securecomm_app::App;
use securecomm_app::state::files::CardState;
use securecomm_app::state::{AppState, Entry, Row, View};

fn harness(dir: &Path) -> Harness<'static, App> {
    harness_sized(dir, 1200.0, 800.0)
}

fn open_channel(h: &mut Harness<'_, App>, guild: &str, channel: &str) -> String {
    type_into(h, "Guild name", guild);
    h.get_by_label("Create guild").click();
    wait_for(h, "the guild", |s| s.guild.is_some());
    type_into(h, "Channel name", channel);
    h.get_by_label("Create channel").click();
    wait_for(h, "the channel to open", |s| {
        matches!(&s.view, View::Channel { guild, channel: c }
            if s.channels.get(guild).is_some_and(|cs| cs.iter().any(|x| x.id == *c && x.name == channel)))
    });
    h.state().state.guild.clone().unwrap()
}

fn entry<'a>(s: &'a AppState, text: &str) -> Option<&'a Entry> {
    s.current_timeline()?
        .entries()
        .iter()
        .find(|e| e.text == text)
}

/// Drops `path` on the window, as egui-winit reports a file dropped from a file manager.
fn drop_file(h: &mut Harness<'_, App>, path: &Path) {
    h.input_mut().dropped_files.push(egui::DroppedFile {
        path: Some(path.to_path_buf()),
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        ..Default::default()
    });
    settle(h);
}

/// Pseudo-random bytes (so the file does not compress and every chunk differs).
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Steps both windows until `cond` holds on `a`.
fn wait_both(
    a: &mut Harness<'static, App>,
    b: &mut Harness<'static, App>,
    what: &str,
    cond: impl Fn(&AppState) -> bool,
) {
    wait_all(&mut [a, b], what, cond);
}

#[test]
fn a_dropped_file_is_sent_downloaded_with_progress_and_saved_byte_identical() {
    let (dir_a, dir_b, mut a, mut b) = ann_and_ben(harness);
    let guild = open_channel(&mut a, "Office", "share");

    // Ben joins first, so the post reaches him live.
    a.get_by_label("Create invite").click();
    wait_for(&mut a, "the invite", |s| s.invites.contains_key(&guild));
    let code = a.state().state.invites[&guild].clone();
    type_into(&mut b, "Invite code", &code);
    b.get_by_label("Join guild").click();
    wait_both(&mut b, &mut a, "the join", |s| {
        s.guild.as_deref() == Some(guild.as_str()) && s.joining.is_empty()
    });
    wait_both(&mut b, &mut a, "the share channel", |s| {
        s.channels
            .get(&guild)
            .is_some_and(|cs| cs.iter().any(|c| c.name == "share"))
            && matches!(&s.view, View::Channel { guild: g, .. } if *g == guild)
    });
    settle(&mut b);
    b.query_all_by_label("# share").next().unwrap().click();
    wait_both(&mut b, &mut a, "share open", |s| {
        matches!(&s.view, View::Channel { channel, .. }
            if s.channels.values().flatten().any(|c| c.id == *channel && c.name == "share"))
    });

    // Ann drops a 3 MB file on the window: a removable chip; a folder is refused clearly.
    let bytes = noise(3 * 1024 * 1024 + 12_345);
    let src = dir_a.path().join("report.bin");
    std::fs::write(&src, &bytes).unwrap();
    drop_file(&mut a, dir_a.path());
    assert!(
        a.state()
            .state
            .errors
            .back()
            .is_some_and(|e| e.contains("folder")),
        "{:?}",
        a.state().state.errors
    );
    a.state_mut().state.errors.clear();
    drop_file(&mut a, &src);
    assert_eq!(a.state().state.files.attached.len(), 1);
    assert!(
        a.query_by_label("Remove report.bin").is_some(),
        "chip shown"
    );
    // Removing and attaching again through the path dialog (the picker's path).
    click(&mut a, "Remove report.bin");
    assert!(a.state().state.files.attached.is_empty());
    click(&mut a, "📎 Attach");
    type_into(&mut a, "File path", src.to_str().unwrap());
    click(&mut a, "Add file");
    assert_eq!(a.state().state.files.attached.len(), 1);
    assert!(!a.state().state.files.attach_open, "the dialog closed");

    type_into(&mut a, "Message", "the quarterly report");
    a.key_press(Key::Enter);
    wait_both(&mut a, &mut b, "Ann's post stored", |s| {
        s.outbox.is_empty() && entry(s, "the quarterly report").is_some_and(|e| e.files.len() == 1)
    });
    let s = &a.state().state;
    assert!(s.files.attached.is_empty(), "sent with the message");
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let card = entry(s, "the quarterly report").unwrap().files[0].clone();
    assert_eq!(
        (card.name.as_str(), card.size, card.state.as_str()),
        ("report.bin", bytes.len() as u64, "complete")
    );
    settle(&mut a);
    assert!(
        a.query_by_label("Save report.bin").is_some(),
        "the sender has it"
    );

    // Ben: the card, then Download: the bar shows at once (queued, then the percentage).
    wait_both(&mut b, &mut a, "the post at Ben", |s| {
        entry(s, "the quarterly report").is_some_and(|e| e.files.len() == 1)
    });
    settle(&mut b);
    let root = card.root.clone();
    assert_eq!(
        b.state().state.card_state(&root, "remote"),
        CardState::Remote
    );
    assert!(b.query_by_label("Download report.bin").is_some());
    assert!(
        b.query_by_label_contains("3.2 MB").is_some(),
        "size on the card"
    );
    click(&mut b, "Download report.bin");
    let mut bar_seen = b.query_all_by_role(Role::ProgressIndicator).count() > 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while b.state().state.card_state(&root, "remote") != CardState::Complete {
        a.step();
        b.step();
        bar_seen |= b.query_all_by_role(Role::ProgressIndicator).count() > 0;
        assert!(
            Instant::now() < deadline,
            "the fetch never completed: {:?} {:?}",
            b.state().state.files.transfers.get(&root),
            b.state().state.errors
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(bar_seen, "a progress bar showed while fetching");
    settle(&mut b);
    assert_eq!(b.query_all_by_role(Role::ProgressIndicator).count(), 0);

    // Save as: into a folder of Ben's choosing, byte-identical; never over an existing file.
    click(&mut b, "Save report.bin");
    assert!(b.state().state.files.save.is_some());
    let out = dir_b.path().join("saved report.bin");
    b.state_mut()
        .state
        .files
        .save
        .as_mut()
        .unwrap()
        .path
        .clear();
    type_into(&mut b, "Save to", out.to_str().unwrap());
    click(&mut b, "Save");
    wait_for(&mut b, "the save", |s| s.files.saved.contains_key(&root));
    assert_eq!(std::fs::read(&out).unwrap(), bytes, "byte-identical");
    settle(&mut b);
    assert!(b.query_by_label_contains("saved to").is_some());

    click(&mut b, "Save report.bin");
    b.state_mut().state.files.save.as_mut().unwrap().path = out.display().to_string();
    click(&mut b, "Save");
    let s = &b.state().state;
    assert!(
        s.errors.iter().any(|e| e.contains("never overwritten")),
        "{:?}",
        s.errors
    );
    assert!(s.files.save.is_some(), "the dialog stays for another name");
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    click(&mut b, "Cancel");
    assert!(b.state().state.files.save.is_none());
}

/// A PNG of `w` x `h` with a gradient.
fn png(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    });
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

fn preview_rows(s: &AppState) -> usize {
    s.current_timeline().map_or(0, |t| {
        t.rows()
            .iter()
            .filter(|r| matches!(r, Row::Preview { .. }))
            .count()
    })
}

fn toggle_previews(h: &mut Harness<'_, App>) {
    click(h, "Settings");
    click(h, "Notifications");
    h.get_by_label_contains("Show image previews").click();
    settle(h);
    h.state_mut().state.settings.open = false;
    settle(h);
}

#[test]
fn an_image_preview_is_decoded_only_when_previews_are_on() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("holiday.png");
    png(&photo, 900, 600);
    let mut h = harness(&dir.path().join("app"));
    create_identity(&mut h, "Gil", "pass phrase");
    open_channel(&mut h, "Photos", "summer");

    // Previews off first: the image arrives, its card shows, nothing is decoded.
    assert!(
        h.state().state.settings.prefs.show_previews,
        "on by default"
    );
    toggle_previews(&mut h);
    assert!(!h.state().state.settings.prefs.show_previews);
    drop_file(&mut h, &photo);
    type_into(&mut h, "Message", "the beach");
    h.key_press(Key::Enter);
    wait_for(&mut h, "the post", |s| {
        s.outbox.is_empty() && entry(s, "the beach").is_some_and(|e| e.files.len() == 1)
    });
    let card = entry(&h.state().state, "the beach").unwrap().files[0].clone();
    assert_eq!(card.thumbnail, Some((320, 213)), "the sender made one");
    assert!(card.thumb.is_some(), "carried in the message");
    for _ in 0..5 {
        settle(&mut h);
    }
    let s = &h.state().state;
    assert!(h.query_by_label("Save holiday.png").is_some(), "the card");
    assert!(h.query_by_label("Image preview holiday.png").is_none());
    assert_eq!(preview_rows(s), 0);
    assert_eq!(
        s.files.previews.decoded, 0,
        "nothing decoded with previews off"
    );
    assert!(s.files.previews.is_empty());

    // On: the preview rows appear, the visible one decodes once, the texture is cached.
    toggle_previews(&mut h);
    assert!(h.state().state.settings.prefs.show_previews);
    for _ in 0..5 {
        settle(&mut h);
    }
    let s = &h.state().state;
    assert!(preview_rows(s) > 0);
    assert!(
        matches!(s.files.previews.get(&card.root), Some(Some(_))),
        "decoded into a texture"
    );
    assert_eq!(s.files.previews.decoded, 1);
    assert!(
        h.query_by_role_and_label(Role::Button, "Image preview holiday.png")
            .is_some()
    );
    for _ in 0..5 {
        settle(&mut h);
    }
    assert_eq!(
        h.state().state.files.previews.decoded,
        1,
        "cached, not redone"
    );
    assert!(
        h.state().state.errors.is_empty(),
        "{:?}",
        h.state().state.errors
    );

    // Restarted: the history carries the thumbnail too (read from the store, not decoded
    // until shown).
    drop(h);
    let mut h = harness(&dir.path().join("app"));
    unlock(&mut h, "pass phrase");
    wait_for(&mut h, "the channel list", |s| {
        s.channels.values().flatten().any(|c| c.name == "summer")
    });
    settle(&mut h);
    h.query_all_by_label("# summer").next().unwrap().click();
    wait_for(&mut h, "the history", |s| {
        entry(s, "the beach").is_some_and(|e| e.files.first().is_some_and(|f| f.thumb.is_some()))
    });
    for _ in 0..5 {
        settle(&mut h);
    }
    assert!(h.query_by_label("Image preview holiday.png").is_some());
    assert_eq!(h.state().state.files.previews.decoded, 1);
}

#[test]
fn a_file_gone_before_sending_fails_clearly_and_discard_gives_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, b"draft").unwrap();
    let mut h = harness(&dir.path().join("app"));
    create_identity(&mut h, "Hal", "pass phrase");
    open_channel(&mut h, "Desk", "notes");
    drop_file(&mut h, &notes);
    assert_eq!(h.state().state.files.attached.len(), 1);
    std::fs::remove_file(&notes).unwrap();
    // Only the file, no text: Enter still sends.
    h.get_by_label("Message").click();
    settle(&mut h);
    h.key_press(Key::Enter);
    wait_for(&mut h, "the failure", |s| {
        s.outbox.iter().any(|o| o.failed.is_some())
    });
    let why = h.state().state.outbox[0].failed.clone().unwrap();
    assert!(why.contains("cannot read"), "{why}");
    settle(&mut h);
    assert!(h.query_by_label_contains("not sent: cannot read").is_some());
    assert!(
        h.query_by_label_contains("not sent (see above)").is_some(),
        "the pending card"
    );
    click(&mut h, "Discard");
    let s = &h.state().state;
    assert!(s.outbox.is_empty());
    assert_eq!(
        s.files.attached.len(),
        1,
        "the attachment is back in the composer"
    );
    assert_eq!(s.files.attached[0].name, "notes.txt");
}
