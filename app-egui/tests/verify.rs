//! Click-and-type tests of verification, identity backup and settings (real nodes on loopback,
//! headless egui via kittest).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use securecomm_app::App;
use securecomm_app::state::{AppState, Phase, View};

const RELAY: &str = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
const RELAY_PEER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

fn harness(dir: &Path) -> Harness<'static, App> {
    // No desktop notifications from tests.
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("settings.json"),
        br#"{"dark": true, "notifications": false}"#,
    )
    .unwrap();
    harness_sized(dir, 1300.0, 900.0)
}

fn my_id(h: &Harness<'_, App>) -> String {
    h.state().state.me.as_ref().unwrap().user_id.clone()
}

fn lists_member(s: &AppState, guild: &str, name: &str) -> bool {
    s.members
        .get(guild)
        .is_some_and(|ms| ms.iter().any(|m| m.nickname == name))
}

/// Ann creates a guild, Ben joins it with an invite; returns the guild id.
fn two_members<'h>(a: &mut Harness<'h, App>, b: &mut Harness<'h, App>) -> String {
    type_into(a, "Guild name", "Verifiers");
    a.get_by_label("Create guild").click();
    wait_for(a, "the guild", |s| s.guild.is_some());
    let guild = a.state().state.guild.clone().unwrap();
    a.get_by_label("Create invite").click();
    wait_for(a, "the invite", |s| s.invites.contains_key(&guild));
    let code = a.state().state.invites[&guild].clone();
    type_into(b, "Invite code", &code);
    b.get_by_label("Join guild").click();
    let g = guild.clone();
    wait_all(&mut [&mut *b, &mut *a], "the join", |s| {
        s.guild.as_deref() == Some(g.as_str()) && s.joining.is_empty()
    });
    let g = guild.clone();
    wait_all(&mut [&mut *a, &mut *b], "Ben in Ann's member list", |s| {
        lists_member(s, &g, "Ben")
    });
    let g = guild.clone();
    wait_all(&mut [&mut *b, &mut *a], "Ann in Ben's member list", |s| {
        lists_member(s, &g, "Ann")
    });
    guild
}

fn open_safety(h: &mut Harness<'_, App>, name: &str, user: &str) -> String {
    h.get_by_label(name).click();
    let u = user.to_owned();
    wait_for(h, "the safety number", |s| {
        s.verify.safety.as_ref().is_some_and(|v| v.user == u)
    });
    h.state()
        .state
        .verify
        .safety
        .as_ref()
        .unwrap()
        .digits
        .clone()
}

#[test]
fn safety_numbers_match_across_instances_and_verification_survives_a_restart() {
    let (dir_a, _dir_b, mut a, mut b) = ann_and_ben(harness);
    let (ann, ben) = (my_id(&a), my_id(&b));
    let guild = two_members(&mut a, &mut b);

    let from_a = open_safety(&mut a, "Ben", &ben);
    let from_b = open_safety(&mut b, "Ann", &ann);
    assert_eq!(from_a.len(), 60);
    assert!(from_a.bytes().all(|c| c.is_ascii_digit()));
    assert_eq!(from_a, from_b, "both sides show the same 60 digits");
    // And the same as the node's (and the CLI's) computation.
    let key = |h: &str| {
        securecomm_noise::keys::RootPublicKey::from_bytes(
            &hex::decode(h).unwrap().try_into().unwrap(),
        )
        .unwrap()
    };
    let node_sn = securecomm_node::store::contacts::safety_number(&key(&ann), &key(&ben)).unwrap();
    assert_eq!(node_sn.digits(), from_a);
    // Shown as 12 groups of 5, four per row, and a QR code.
    let v = a.state().state.verify.safety.clone().unwrap();
    assert_eq!(v.groups().len(), 12);
    for row in v.groups().chunks(4) {
        assert!(
            a.query_by_label(&row.join("  ")).is_some(),
            "row {row:?} on screen"
        );
    }
    assert!(v.qr.width >= 21 && v.qr.dark.iter().any(|d| *d));

    assert!(!a.state().state.verify.is_verified(&ben));
    a.get_by_label("Mark as verified").click();
    wait_for(&mut a, "the verification", |s| s.verify.is_verified(&ben));
    settle(&mut a);
    assert!(a.query_by_label("✔ Verified").is_some());
    assert!(a.query_by_label("Clear verification").is_some());
    assert!(
        a.state().state.errors.is_empty(),
        "{:?}",
        a.state().state.errors
    );
    // Ben did not verify Ann: verification is per side.
    assert!(!b.state().state.verify.is_verified(&ann));

    // Restart Ann's app: the verification is in her node's database.
    drop(a);
    let mut a = harness(dir_a.path());
    unlock(&mut a, "pass a");
    let (g, bb) = (guild.clone(), ben.clone());
    wait_all(
        &mut [&mut a, &mut b],
        "verified Ben after the restart",
        |s| {
            s.verify.is_verified(&bb)
                && lists_member(s, &g, "Ben")
                && s.guild.as_deref() == Some(&g)
        },
    );
    settle(&mut a);
    assert!(
        a.query_by_label(securecomm_app::ui::verify::BADGE)
            .is_some(),
        "the badge next to Ben"
    );
    assert!(a.state().state.verify.warnings.is_empty());
}

#[test]
fn backup_export_then_restore_into_a_fresh_folder() {
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("cara.backup");
    let user = {
        let mut h = harness(&dir.path().join("first"));
        create_identity(&mut h, "Cara", "cara pass");
        h.get_by_label("Settings").click();
        wait_for(&mut h, "the settings window", |s| s.settings.open);
        h.get_by_label("Identity").click();
        settle(&mut h);
        assert!(
            h.query_by_label_contains(&my_id(&h)).is_some(),
            "user id shown"
        );
        type_into(&mut h, "Backup file", backup.to_str().unwrap());
        type_into(&mut h, "Current passphrase", "cara pass");
        type_into(&mut h, "Backup passphrase", "backup pass");
        h.get_by_label("Export backup").click();
        wait_for(&mut h, "the export", |s| s.settings.backup.result.is_some());
        let r = h.state().state.settings.backup.result.clone().unwrap();
        assert_eq!(r.as_deref(), Ok(backup.to_str().unwrap()));
        assert!(h.state().state.settings.backup.passphrase.is_empty());
        settle(&mut h);
        assert!(h.query_by_label_contains("Backup written to").is_some());
        // Exporting again to the same file is refused, and says so.
        type_into(&mut h, "Current passphrase", "cara pass");
        type_into(&mut h, "Backup passphrase", "other");
        h.get_by_label("Export backup").click();
        wait_for(&mut h, "the refusal", |s| {
            matches!(&s.settings.backup.result, Some(Err(_)))
        });
        my_id(&h)
    };
    let blob = std::fs::read(&backup).unwrap();
    assert!(
        !blob.windows(4).any(|w| w == b"Cara"),
        "sealed, not in clear"
    );

    let fresh = dir.path().join("fresh");
    let mut h = harness(&fresh);
    settle(&mut h);
    assert!(!h.state().state.has_identity);
    h.get_by_label("Restore from backup").click();
    settle(&mut h);
    assert!(
        h.query_by_label("Display name").is_none(),
        "restore replaces create"
    );
    type_into(&mut h, "Backup file", backup.to_str().unwrap());
    type_into(&mut h, "Backup passphrase", "wrong pass");
    h.get_by_label("Restore identity").click();
    wait_for(&mut h, "the refusal", |s| s.login.error.is_some());
    let err = h.state().state.login.error.clone().unwrap();
    assert!(err.contains("Wrong backup passphrase"), "{err}");
    settle(&mut h);
    assert_eq!(
        h.query_all_by_label_contains("Wrong backup passphrase")
            .count(),
        1,
        "the error is shown once"
    );
    assert!(
        h.state().state.errors.is_empty(),
        "not repeated in the status bar"
    );
    assert_eq!(h.state().state.phase, Phase::Login);
    assert!(!fresh.join("identity.sc").exists(), "nothing restored");
    assert!(h.state().state.restore.passphrase.is_empty());

    // A garbage file is a different, clear error.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"this is not a backup").unwrap();
    h.get_by_label("Backup file").click();
    settle(&mut h);
    h.state_mut().state.restore.path.clear();
    type_into(&mut h, "Backup file", junk.to_str().unwrap());
    type_into(&mut h, "Backup passphrase", "backup pass");
    h.get_by_label("Restore identity").click();
    wait_for(&mut h, "the garbage refusal", |s| {
        s.login
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not a SecureComm backup"))
    });
    assert!(!fresh.join("identity.sc").exists());

    h.state_mut().state.restore.path.clear();
    type_into(&mut h, "Backup file", backup.to_str().unwrap());
    type_into(&mut h, "Backup passphrase", "backup pass");
    h.get_by_label("Restore identity").click();
    wait_for(&mut h, "the restored node", |s| s.phase == Phase::Main);
    assert_eq!(my_id(&h), user, "the same user id");
    assert_eq!(h.state().state.me.as_ref().unwrap().display_name, "Cara");
    drop(h);

    // Sealed here under the backup's passphrase.
    let mut h = harness(&fresh);
    unlock(&mut h, "backup pass");
    assert_eq!(my_id(&h), user);
}

#[test]
fn settings_relays_and_theme_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    create_identity(&mut h, "Dora", "dora pass");
    h.get_by_label("Settings").click();
    wait_for(&mut h, "the relays", |s| {
        s.settings.open && s.settings.saved_loaded
    });
    h.get_by_label("Data folder").click();
    wait_for(&mut h, "the data folder size", |s| {
        s.settings.data_size.is_some_and(|n| n > 0)
    });
    assert!(h.query_by_label_contains("Size:").is_some());
    let data_dir = h.state().state.data_dir.clone();
    assert!(h.query_by_label_contains(&data_dir).is_some());
    h.get_by_label("Audio").click();
    settle(&mut h);
    assert!(
        h.query_by_label("Input device").is_some() && h.query_by_label("Push to talk").is_some(),
        "audio section"
    );
    h.get_by_label("Relays").click();
    settle(&mut h);

    // Invalid input: explained, nothing sent.
    type_into(&mut h, "Relay address", "relay.example.org:4001");
    h.get_by_label("Add relay").click();
    settle(&mut h);
    let e = h.state().state.settings.relay_error.clone().unwrap();
    assert!(e.contains("multiaddr"), "{e}");
    assert_eq!(h.query_all_by_label(&e).count(), 1, "shown once");
    h.state_mut().state.settings.new_relay.clear();
    type_into(&mut h, "Relay address", RELAY);
    h.get_by_label("Add relay").click();
    wait_for(&mut h, "the saved relay", |s| s.settings.saved == [RELAY]);
    // Applied live: the relay book knows it (it is unreachable, so it fails and backs off).
    wait_for(&mut h, "the relay in the relay book", |s| {
        s.settings
            .health
            .iter()
            .any(|r| r.peer == RELAY_PEER && r.configured)
    });
    assert!(h.state().state.settings.relay_error.is_none());
    // Light theme.
    h.get_by_label("Theme").click();
    settle(&mut h);
    h.get_by_label("Light").click();
    settle(&mut h);
    assert!(!h.state().state.settings.prefs.dark);
    assert_eq!(h.ctx.theme(), egui::Theme::Light);
    wait_for(&mut h, "the prefs file", |_| {
        std::fs::read_to_string(dir.path().join("settings.json"))
            .is_ok_and(|s| s.contains("\"dark\": false"))
    });
    drop(h);

    let mut h = harness_keeping_prefs(dir.path());
    assert!(!h.state().state.settings.prefs.dark, "theme kept");
    unlock(&mut h, "dora pass");
    wait_for(&mut h, "the saved relay after a restart", |s| {
        s.settings.saved == [RELAY]
    });
    wait_for(&mut h, "the saved relay applied at start", |s| {
        s.settings.health.iter().any(|r| r.peer == RELAY_PEER)
    });
    h.get_by_label("Settings").click();
    settle(&mut h);
    h.get_by_label("Remove").click();
    wait_for(&mut h, "the removal", |s| s.settings.saved.is_empty());
    wait_for(&mut h, "the relay book to forget it", |s| {
        !s.settings.health.iter().any(|r| r.peer == RELAY_PEER)
    });
    drop(h);

    let mut h = harness_keeping_prefs(dir.path());
    unlock(&mut h, "dora pass");
    wait_for(&mut h, "the saved relays", |s| s.settings.saved_loaded);
    assert!(h.state().state.settings.saved.is_empty(), "removal kept");
    assert!(
        h.state().state.errors.is_empty(),
        "{:?}",
        h.state().state.errors
    );
    assert!(matches!(
        h.state().state.view,
        View::Empty | View::Channel { .. }
    ));
}

/// Like [`harness`] but keeps the folder's preferences file.
fn harness_keeping_prefs(dir: &Path) -> Harness<'static, App> {
    harness_sized(dir, 1300.0, 900.0)
}

#[test]
fn a_key_change_shows_a_banner_that_leads_to_the_safety_number() {
    use securecomm_app::backend::Event;
    use securecomm_app::verify::{ContactInfo, VerifyEvent, WarningInfo};
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    let (old, new) = ("aa".repeat(32), "bb".repeat(32));
    {
        let s = &mut h.state_mut().state;
        s.phase = Phase::Main;
        s.apply(Event::Verify(VerifyEvent::Contacts {
            contacts: vec![ContactInfo {
                user: old.clone(),
                name: "Eve".into(),
                verified: true,
                verified_at: Some(1),
            }],
            warnings: vec![
                WarningInfo::KeyChanged {
                    name: "Eve".into(),
                    verified: old.clone(),
                    current: new.clone(),
                },
                WarningInfo::DevicesChanged {
                    user: old.clone(),
                    name: "Eve".into(),
                    added: 1,
                    removed: 0,
                },
            ],
        }));
    }
    settle(&mut h);
    assert!(h.query_by_label_contains("Key changed").is_some());
    assert!(h.query_by_label_contains("devices changed").is_some());
    h.get_by_label("Dismiss").click();
    settle(&mut h);
    assert!(
        h.query_by_label_contains("devices changed").is_none(),
        "notice dismissed"
    );
    assert!(
        h.query_by_label_contains("Key changed").is_some(),
        "the alarm stays"
    );
    // The banner's button asks for the new key's safety number.
    h.get_by_label("Compare safety numbers").click();
    settle(&mut h);
    assert_eq!(
        h.state().state.verify.pending.as_deref(),
        Some(new.as_str())
    );
    assert!(h.query_by_label("Compare safety numbers").is_some());
}
