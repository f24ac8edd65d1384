//! What the app's click-and-type tests share: a real app (real node on loopback, fast
//! Argon2id) in a headless kittest harness, and the steps every test needs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use securecomm_app::state::{AppState, Phase};
use securecomm_app::{App, BackendConfig};

/// Two app instances, each on its own data folder (kept alive by the returned directories),
/// with identities "Ann" and "Ben" created through the first-run screen.
pub fn ann_and_ben(
    harness: fn(&Path) -> Harness<'static, App>,
) -> (
    tempfile::TempDir,
    tempfile::TempDir,
    Harness<'static, App>,
    Harness<'static, App>,
) {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let mut a = harness(dir_a.path());
    let mut b = harness(dir_b.path());
    create_identity(&mut a, "Ann", "pass a");
    create_identity(&mut b, "Ben", "pass b");
    (dir_a, dir_b, a, b)
}

pub fn config(dir: &Path) -> BackendConfig {
    BackendConfig::loopback_for_tests(dir.to_path_buf())
}

/// The app on `dir` in a window of `w` x `h` points.
pub fn harness_sized(dir: &Path, w: f32, h: f32) -> Harness<'static, App> {
    let app = App::new(config(dir)).unwrap();
    Harness::builder()
        .with_size(egui::vec2(w, h))
        .build_state(|ctx, app: &mut App| app.frame(ctx), app)
}

/// Steps every window in `hs` until `cond` holds on the first (the nodes answer on their own
/// threads, and other instances must keep running for sync).
pub fn wait_all(hs: &mut [&mut Harness<'_, App>], what: &str, cond: impl Fn(&AppState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for h in hs.iter_mut() {
            h.step();
        }
        if cond(&hs[0].state().state) {
            for h in hs.iter_mut() {
                h.step();
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; errors: {:?}, login: {:?}, view: {:?}",
            hs.iter()
                .map(|h| h.state().state.errors.clone())
                .collect::<Vec<_>>(),
            hs[0].state().state.login,
            hs[0].state().state.view,
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_for(h: &mut Harness<'_, App>, what: &str, cond: impl Fn(&AppState) -> bool) {
    wait_all(&mut [h], what, cond);
}

/// A few frames: the node may keep asking for repaints, so `run` (which waits for calm) is
/// not used.
pub fn settle(h: &mut Harness<'_, App>) {
    h.run_steps(3);
}

pub fn type_into(h: &mut Harness<'_, App>, label: &str, text: &str) {
    h.get_by_label(label).click();
    settle(h);
    h.get_by_label(label).type_text(text);
    settle(h);
}

pub fn click(h: &mut Harness<'_, App>, label: &str) {
    h.get_by_label(label).scroll_to_me();
    settle(h);
    h.get_by_label(label).click();
    settle(h);
}

pub fn create_identity(h: &mut Harness<'_, App>, name: &str, pass: &str) {
    settle(h);
    type_into(h, "Display name", name);
    type_into(h, "Passphrase", pass);
    h.get_by_label("Create identity").click();
    wait_for(h, "the node to start", |s| s.phase == Phase::Main);
}

pub fn unlock(h: &mut Harness<'_, App>, pass: &str) {
    settle(h);
    type_into(h, "Passphrase", pass);
    h.get_by_label("Unlock").click();
    wait_for(h, "the unlock", |s| s.phase == Phase::Main);
}
