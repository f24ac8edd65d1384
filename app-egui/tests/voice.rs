//! Voice channels in the real app (real nodes on loopback, headless egui via kittest, null
//! audio devices: no sound card here). The node's own view of the call is read through its
//! control socket (`voice-status`), so these tests check what the node does, not only what
//! the app believes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use egui::Key;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use securecomm_app::App;
use securecomm_app::settings::Prefs;
use securecomm_app::state::{AppState, View};
use securecomm_app::voice::{InputMode, Quality};
use securecomm_node::voice::call::Device;
use serde_json::Value;

fn harness(dir: &Path) -> Harness<'static, App> {
    harness_sized(dir, 1400.0, 1000.0)
}

/// The app on `dir` with a microphone that plays a tone for two minutes (a WAV file written
/// into `dir`), and no speakers.
fn speaking_harness(dir: &Path) -> Harness<'static, App> {
    let mic = dir.join("mic.wav");
    write_tone(&mic, 120);
    let mut cfg = config(dir);
    cfg.voice_devices = Some((Device::Wav(mic), Device::Null));
    let app = App::new(cfg).unwrap();
    Harness::builder()
        .with_size(egui::vec2(1400.0, 1000.0))
        .build_state(|ctx, app: &mut App| app.frame(ctx), app)
}

/// A 48 kHz mono 16-bit WAV of a 440 Hz tone.
fn write_tone(path: &Path, secs: u32) {
    let n = 48_000 * secs;
    let data_len = n * 2;
    let mut b = Vec::with_capacity(44 + data_len as usize);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&48_000u32.to_le_bytes());
    b.extend_from_slice(&(48_000u32 * 2).to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..n {
        let v = (std::f64::consts::TAU * 440.0 * f64::from(i) / 48_000.0).sin() * 8000.0;
        b.extend_from_slice(&(v as i16).to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

/// Creates a guild and waits for its management data; returns its id.
fn create_guild(h: &mut Harness<'_, App>, name: &str) -> String {
    type_into(h, "Guild name", name);
    h.get_by_label("Create guild").click();
    wait_for(h, "the guild and its data", |s| {
        s.guilds.iter().any(|g| g.name == name) && s.guild_data().is_some()
    });
    h.state().state.guild.clone().unwrap()
}

/// Creates a voice channel through the "New channel" dialog; returns its id.
fn create_voice_channel(h: &mut Harness<'_, App>, name: &str) -> u64 {
    click(h, "New channel…");
    type_into(h, "Name of the new channel", name);
    click(h, "Voice");
    click(h, "Add channel");
    wait_for(h, "the voice channel", |s| voice_channel(s, name).is_some());
    voice_channel(&h.state().state, name).unwrap()
}

fn voice_channel(s: &AppState, name: &str) -> Option<u64> {
    s.guild_data()?
        .channels
        .iter()
        .find(|c| c.name == name && c.kind == "voice")
        .map(|c| c.id)
}

/// The node's `voice-status`, through its control socket.
fn node_status(dir: &Path) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = securecomm_node::control::ControlClient::connect(dir)
            .await
            .unwrap();
        c.call("voice-status", Value::Null).await.unwrap()
    })
}

/// Steps the windows until the node of `dir` reports a status for which `cond` holds.
fn wait_node(
    hs: &mut [&mut Harness<'_, App>],
    dir: &Path,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for _ in 0..5 {
            for h in hs.iter_mut() {
                h.step();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let v = node_status(dir);
        if cond(&v) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the node: {what}; status {v}; errors {:?}",
            hs.iter()
                .map(|h| h.state().state.errors.clone())
                .collect::<Vec<_>>()
        );
    }
}

fn flag(v: &Value, name: &str) -> bool {
    v.get(name).and_then(Value::as_bool) == Some(true)
}

fn no_errors(h: &Harness<'_, App>) {
    assert!(
        h.state().state.errors.is_empty(),
        "{:?}",
        h.state().state.errors
    );
}

#[test]
fn join_a_voice_channel_then_mute_deafen_and_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    create_identity(&mut h, "Vic", "pass");
    let guild = create_guild(&mut h, "Band");
    let ch = create_voice_channel(&mut h, "Lounge");
    settle(&mut h);
    assert!(h.query_by_label("🔊 Lounge").is_some(), "speaker icon");
    assert!(h.query_by_label("Voice connected").is_none());

    click(&mut h, "🔊 Lounge");
    wait_for(&mut h, "the call", |s| s.voice.in_channel(&guild, ch));
    wait_node(&mut [&mut h], dir.path(), "in the call", |v| {
        flag(v, "in_call") && v["channel_name"] == "Lounge"
    });
    settle(&mut h);
    assert!(h.query_by_label("Voice connected").is_some(), "voice panel");
    assert!(h.query_by_label_contains("🔊 Lounge / Band").is_some());
    // We are listed under the channel.
    let rows = h.state().state.voice.rows(&guild, ch, "Vic");
    assert_eq!(rows.len(), 1);
    assert!(rows[0].me);
    assert_eq!(h.state().state.voice.quality(), Quality::Good, "alone");

    click(&mut h, "Mute");
    wait_node(&mut [&mut h], dir.path(), "muted", |v| flag(v, "muted"));
    click(&mut h, "Deafen");
    wait_node(&mut [&mut h], dir.path(), "deafened", |v| {
        flag(v, "muted") && flag(v, "deafened")
    });
    click(&mut h, "Mute");
    wait_node(&mut [&mut h], dir.path(), "unmuted, still deafened", |v| {
        !flag(v, "muted") && flag(v, "deafened")
    });
    wait_for(&mut h, "the app to show it", |s| {
        !s.voice.status.muted && s.voice.status.deafened
    });
    click(&mut h, "Deafen");
    wait_node(&mut [&mut h], dir.path(), "undeafened", |v| {
        !flag(v, "deafened")
    });

    click(&mut h, "Disconnect");
    wait_node(&mut [&mut h], dir.path(), "out of the call", |v| {
        !flag(v, "in_call")
    });
    wait_for(&mut h, "the app to leave", |s| !s.voice.status.in_call);
    settle(&mut h);
    assert!(h.query_by_label("Voice connected").is_none(), "panel gone");
    assert!(h.state().state.voice.rows(&guild, ch, "Vic").is_empty());
    no_errors(&h);
}

#[test]
fn audio_settings_render_without_devices_and_push_to_talk_persists_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    create_identity(&mut h, "Pia", "pass");
    click(&mut h, "Settings");
    click(&mut h, "Audio");
    // No sound card here: an empty list or an error, shown, never a panic.
    wait_for(&mut h, "the device lists", |s| {
        s.voice.inputs.is_some() && s.voice.outputs.is_some()
    });
    settle(&mut h);
    assert!(h.query_by_label("Input device").is_some());
    assert!(h.query_by_label("Output device").is_some());
    assert!(h.query_by_label("Voice activity").is_some());
    assert!(
        h.query_by_label_contains("window has focus").is_none(),
        "the focus note is for push-to-talk"
    );

    click(&mut h, "Push to talk");
    assert_eq!(
        h.state().state.settings.prefs.voice.mode,
        InputMode::PushToTalk
    );
    assert!(h.query_by_label_contains("window has focus").is_some());
    click(&mut h, "Change key");
    assert!(h.state().state.voice.capturing_key);
    h.key_press(Key::F);
    settle(&mut h);
    assert!(!h.state().state.voice.capturing_key);
    assert!(h.query_by_label("Push-to-talk key: F").is_some());
    wait_for(&mut h, "the prefs file", |_| {
        let p = Prefs::load(dir.path());
        p.voice.mode == InputMode::PushToTalk && p.voice.ptt_key == "F"
    });
    drop(h);

    // Kept across a restart.
    let mut h = harness(dir.path());
    assert_eq!(
        h.state().state.settings.prefs.voice.mode,
        InputMode::PushToTalk
    );
    assert_eq!(h.state().state.settings.prefs.voice.key(), Key::F);
    unlock(&mut h, "pass");

    // In a call, muted unless F is held.
    let guild = create_guild(&mut h, "Radio");
    let ch = create_voice_channel(&mut h, "Air");
    click(&mut h, "🔊 Air");
    wait_for(&mut h, "the call", |s| s.voice.in_channel(&guild, ch));
    wait_node(&mut [&mut h], dir.path(), "muted by push-to-talk", |v| {
        flag(v, "in_call") && flag(v, "muted")
    });
    h.key_down(Key::F);
    wait_node(&mut [&mut h], dir.path(), "talking while F is held", |v| {
        !flag(v, "muted")
    });
    h.key_up(Key::F);
    wait_node(&mut [&mut h], dir.path(), "muted again on release", |v| {
        flag(v, "muted")
    });
    no_errors(&h);
}

#[test]
fn two_instances_in_one_voice_channel_list_each_other_and_show_who_speaks() {
    // Both speak a tone into their (file) microphones.
    let (dir_a, dir_b, mut a, mut b) = ann_and_ben(speaking_harness);
    let guild = create_guild(&mut a, "Club");
    let ch = create_voice_channel(&mut a, "Lounge");
    a.get_by_label("Create invite").click();
    wait_for(&mut a, "the invite", |s| s.invites.contains_key(&guild));
    let code = a.state().state.invites[&guild].clone();
    type_into(&mut b, "Invite code", &code);
    b.get_by_label("Join guild").click();
    let g = guild.clone();
    wait_all(&mut [&mut b, &mut a], "Ben to join", move |s| {
        s.guild.as_deref() == Some(g.as_str()) && s.joining.is_empty()
    });
    wait_all(&mut [&mut b, &mut a], "Ben to see the voice channel", |s| {
        voice_channel(s, "Lounge").is_some()
    });

    // Ann joins; Ben, outside the call, sees her under the channel (presence).
    click(&mut a, "🔊 Lounge");
    let g = guild.clone();
    wait_all(&mut [&mut a, &mut b], "Ann in the call", move |s| {
        s.voice.in_channel(&g, ch)
    });
    let g = guild.clone();
    wait_all(
        &mut [&mut b, &mut a],
        "Ben to see Ann in Lounge",
        move |s| s.voice.rows(&g, ch, "Ben").iter().any(|r| r.name == "Ann"),
    );

    // Ben joins too: each lists the other as a participant.
    click(&mut b, "🔊 Lounge");
    let g = guild.clone();
    wait_all(&mut [&mut b, &mut a], "Ben in the call", move |s| {
        s.voice.in_channel(&g, ch)
    });
    let g = guild.clone();
    wait_all(&mut [&mut a, &mut b], "Ann to list Ben", move |s| {
        s.voice
            .rows(&g, ch, "Ann")
            .iter()
            .any(|r| r.name == "Ben" && !r.me)
    });
    let g = guild.clone();
    wait_all(&mut [&mut b, &mut a], "Ben to list Ann", move |s| {
        s.voice
            .rows(&g, ch, "Ben")
            .iter()
            .any(|r| r.name == "Ann" && !r.me)
    });
    wait_node(
        &mut [&mut a, &mut b],
        dir_a.path(),
        "Ann's node to have Ben",
        |v| {
            v["participants"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["nickname"] == "Ben"))
        },
    );
    wait_node(
        &mut [&mut b, &mut a],
        dir_b.path(),
        "Ben's node to have Ann",
        |v| {
            v["participants"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["nickname"] == "Ann"))
        },
    );
    // Speaking indicators: our own (engine.speaking) and the other's.
    let g = guild.clone();
    wait_all(
        &mut [&mut a, &mut b],
        "Ann to see both speaking",
        move |s| {
            let rows = s.voice.rows(&g, ch, "Ann");
            rows.iter().any(|r| r.me && r.speaking)
                && rows.iter().any(|r| r.name == "Ben" && r.speaking)
        },
    );
    // On loopback the path becomes direct: quality good.
    wait_all(&mut [&mut a, &mut b], "a direct path", |s| {
        s.voice
            .status
            .participants
            .iter()
            .any(|p| p.path == "direct")
            && s.voice.quality() == Quality::Good
    });

    // Drawn under the channel in Ann's list (left of the member list); right-click: volume.
    settle(&mut a);
    let ben_peer = a.state().state.voice.status.participants[0].peer.clone();
    {
        let bens: Vec<_> = a.query_all_by_label("Ben").collect();
        assert!(bens.len() >= 2, "member list and voice channel");
        let leftmost = bens
            .into_iter()
            .min_by(|x, y| {
                let (x, y) = (
                    x.accesskit_node().bounding_box().unwrap().x0,
                    y.accesskit_node().bounding_box().unwrap().x0,
                );
                x.total_cmp(&y)
            })
            .unwrap();
        leftmost.click_secondary();
    }
    settle(&mut a);
    click(&mut a, "Reset volume");
    let peer = ben_peer.clone();
    wait_for(&mut a, "the volume", move |s| {
        s.voice.volumes.get(&peer) == Some(&100)
    });
    // Give the node a moment to answer; an unknown participant would be an error.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        a.step();
        b.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    no_errors(&a);
    no_errors(&b);
}

#[test]
fn the_soundboard_refuses_a_bad_file_uploads_a_sound_and_plays_it_in_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = speaking_harness(dir.path());
    create_identity(&mut h, "Sam", "pass");
    let guild = create_guild(&mut h, "Studio");
    let ch = create_voice_channel(&mut h, "Stage");
    settle(&mut h);
    click(&mut h, "🔊 Stage");
    wait_for(&mut h, "the call", |s| {
        s.voice.in_channel(&guild, ch) && s.voice.status.in_call
    });
    click(&mut h, "🎵 Soundboard");
    wait_for(&mut h, "the empty library", |s| {
        s.voice
            .soundboard
            .sounds
            .as_ref()
            .is_some_and(|(g, l)| *g == guild && l.is_empty())
    });
    assert!(
        h.query_by_label("No sounds yet: upload one below.")
            .is_some()
    );

    // Text named .mp3 is refused with an error, and nothing is added.
    let bad = dir.path().join("notes.mp3");
    std::fs::write(&bad, "these are not sounds, just words").unwrap();
    type_into(&mut h, "Sound file", bad.to_str().unwrap());
    type_into(&mut h, "Sound name", "oops");
    click(&mut h, "Upload");
    wait_for(&mut h, "the refusal", |s| {
        !s.errors.is_empty() && !s.voice.soundboard.uploading
    });
    assert!(
        h.state()
            .state
            .voice
            .soundboard
            .sounds
            .as_ref()
            .is_some_and(|(_, l)| l.is_empty())
    );
    h.state_mut().state.errors.clear();

    // A real clip (the node's WAV fixture) is imported, listed and played.
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/src/sound/testdata/clip.wav");
    type_into(&mut h, "Sound file", clip.to_str().unwrap());
    type_into(&mut h, "Sound name", "tada");
    click(&mut h, "Upload");
    wait_for(&mut h, "the uploaded sound", |s| {
        s.voice
            .soundboard
            .sounds
            .as_ref()
            .is_some_and(|(_, l)| l.iter().any(|x| x.name == "tada"))
    });
    no_errors(&h);
    click(&mut h, "▶ tada");
    wait_for(&mut h, "the sound played", |s| {
        s.voice.soundboard.last_played.as_deref() == Some("tada")
    });
    assert!(h.query_by_label("Played tada").is_some());
    no_errors(&h);
}

#[test]
fn a_direct_call_from_a_conversation_rings_and_is_answered() {
    let (dir_a, dir_b, mut a, mut b) = ann_and_ben(speaking_harness);
    let guild = create_guild(&mut a, "Pals");
    a.get_by_label("Create invite").click();
    wait_for(&mut a, "the invite", |s| s.invites.contains_key(&guild));
    let code = a.state().state.invites[&guild].clone();
    type_into(&mut b, "Invite code", &code);
    b.get_by_label("Join guild").click();
    let g = guild.clone();
    wait_all(&mut [&mut b, &mut a], "Ben to join", move |s| {
        s.guild.as_deref() == Some(g.as_str()) && s.joining.is_empty()
    });
    let ben = b.state().state.me.as_ref().unwrap().user_id.clone();
    wait_all(&mut [&mut a, &mut b], "Ann to know Ben", |s| {
        s.members.values().flatten().any(|m| m.nickname == "Ben")
    });

    // Ann opens the conversation with Ben (as the DM list does: no guild selected, so a late
    // channel list of the guild does not switch the view back) and presses Call.
    let _history = a.state_mut().state.on_select_dm(&ben);
    wait_for(
        &mut a,
        "the conversation open",
        |s| matches!(&s.view, View::Dm { user } if *user == ben),
    );
    click(&mut a, "📞 Call");
    wait_node(
        &mut [&mut a, &mut b],
        dir_a.path(),
        "Ann in the call",
        |v| flag(v, "in_call") && v["channel_name"] == "call with Ben",
    );
    // Ben's app rings; he answers.
    wait_all(&mut [&mut b, &mut a], "Ben's app to ring", |s| {
        s.voice.status.ringing.iter().any(|r| r.name() == "Ann")
    });
    settle(&mut b);
    click(&mut b, "Answer Ann");
    wait_node(
        &mut [&mut a, &mut b],
        dir_b.path(),
        "Ben to hear Ann",
        |v| {
            v["participants"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["nickname"] == "Ann" && p["accepted"].as_u64().unwrap_or(0) > 10)
            })
        },
    );
    wait_all(&mut [&mut b, &mut a], "the ringing to stop", |s| {
        s.voice.status.in_call && s.voice.status.ringing.is_empty()
    });
    click(&mut b, "Disconnect");
    wait_for(&mut b, "Ben to leave", |s| !s.voice.status.in_call);
    no_errors(&a);
    no_errors(&b);
}
