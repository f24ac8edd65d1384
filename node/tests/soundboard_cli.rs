//! The soundboard through the real `securecomm-node` binary on loopback: `sound upload`,
//! `sound list`, `sound play` and `sound delete`, with their permissions and bad input, and a
//! played sound in the other participant's recording.
//!
//! The sound is a 1.5 s tone gated by a pseudo-random pattern of 40 ms slots, at 44.1 kHz (so
//! the upload resamples). Bob has no copy of the clip (the file layer that distributes assets
//! is not wired yet), so what he hears comes through Alice's stream (the fallback): his
//! recording must hold the clip's second half with a normalized cross-correlation above 0.7
//! (see `voice_soundboard.rs` for the threshold; measured about 0.999).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod correlate;
mod procs;

use std::path::Path;

use correlate::*;
use procs::*;
use securecomm_node::sound;
use serde_json::Value;

fn gated_tone_wav(path: &Path) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 44_100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let mut x: u64 = 0x5DEE_CE66_D1CE_B00C;
    let (slot, total) = (1_764, 66_150);
    let mut n = 0;
    while n < total {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let on = x & 1 == 1;
        for _ in 0..slot {
            let v = if on {
                (n as f64 * std::f64::consts::TAU * 800.0 / 44_100.0).sin() * 12_000.0
            } else {
                0.0
            };
            w.write_sample(v as i16).unwrap();
            n += 1;
        }
    }
    w.finalize().unwrap();
}

fn silence_wav(path: &Path, seconds: usize) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for _ in 0..seconds * 48_000 {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
}

fn sounds(n: &Node, gid: &str) -> Vec<Value> {
    n.cli(&["sound", "list", gid]).as_array().unwrap().clone()
}

#[test]
fn sound_upload_list_play_delete_with_permissions_and_bad_files() {
    let relay = TestRelay::start(None);
    let mut nodes: Vec<Node> = ["alice", "bob"].iter().map(|n| Node::new(n)).collect();
    for n in &mut nodes {
        n.start(&["--listen", "/ip4/127.0.0.1/tcp/0", "--relay", &relay.addr]);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let (gid, code) = create_and_invite(a, "Sound Club", 1);
    a.cli(&["channel", "create", &gid, "Lounge", "--voice"]);
    assert_eq!(b.cli(&["guild", "join", &code])["ready"], true);
    for n in &nodes {
        wait_keyed(n, &gid, 2);
        until(&format!("{} to see the voice channel", n.name), || {
            n.cli(&["channel", "list", &gid])
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "Lounge")
                .then_some(())
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let horn = dir.path().join("horn.wav");
    gated_tone_wav(&horn);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sound/testdata");

    // Upload (Manage Guild: the owner has it); both replicas list it.
    let up = a.cli(&[
        "sound",
        "upload",
        &gid,
        horn.to_str().unwrap(),
        "--name",
        "horn",
        "--emoji",
        "📯",
        "--volume",
        "80",
    ]);
    assert_eq!(up["sound"]["name"], "horn", "{up}");
    let ms = up["sound"]["duration_ms"].as_u64().unwrap();
    assert!((1480..=1520).contains(&ms), "{up}");
    until("bob to see the sound", || {
        sounds(b, &gid)
            .iter()
            .any(|s| s["name"] == "horn" && s["volume"] == 80 && s["emoji"] == "📯")
            .then_some(())
    });
    // Bob has no Manage Guild.
    let e = b.cli_err(&[
        "sound",
        "upload",
        &gid,
        horn.to_str().unwrap(),
        "--name",
        "mine",
    ]);
    assert!(e.contains("Manage Guild"), "{e}");
    // A WAV named .mp3 imports by content, and says so; names are unique.
    let renamed = dir.path().join("actually-a-wav.mp3");
    std::fs::copy(fixtures.join("clip.wav"), &renamed).unwrap();
    let up2 = a.cli(&[
        "sound",
        "upload",
        &gid,
        renamed.to_str().unwrap(),
        "--name",
        "beep",
    ]);
    assert!(
        up2["note"].as_str().unwrap().contains("contains WAV"),
        "{up2}"
    );
    let e = a.cli_err(&[
        "sound",
        "upload",
        &gid,
        horn.to_str().unwrap(),
        "--name",
        "beep",
    ]);
    assert!(e.contains("exists"), "{e}");
    // Too long, not audio, too large.
    let e = a.cli_err(&[
        "sound",
        "upload",
        &gid,
        fixtures.join("long.ogg").to_str().unwrap(),
        "--name",
        "long",
    ]);
    assert!(e.contains("too long"), "{e}");
    let text = dir.path().join("notes.ogg");
    std::fs::write(&text, "not audio").unwrap();
    let e = a.cli_err(&[
        "sound",
        "upload",
        &gid,
        text.to_str().unwrap(),
        "--name",
        "t",
    ]);
    assert!(e.contains("unrecognized audio format"), "{e}");
    let big = dir.path().join("big.wav");
    std::fs::write(&big, vec![0u8; 600 * 1024]).unwrap();
    let e = a.cli_err(&[
        "sound",
        "upload",
        &gid,
        big.to_str().unwrap(),
        "--name",
        "b",
    ]);
    assert!(e.contains("too large"), "{e}");

    // In a call: Alice plays the horn; Bob hears it (from his own copy of the library).
    let quiet = dir.path().join("quiet.wav");
    silence_wav(&quiet, 40);
    let bob_out = dir.path().join("bob.wav");
    a.cli(&[
        "voice",
        "join",
        &gid,
        "Lounge",
        "--input",
        quiet.to_str().unwrap(),
    ]);
    b.cli(&[
        "voice",
        "join",
        &gid,
        "Lounge",
        "--input",
        quiet.to_str().unwrap(),
        "--output",
        bob_out.to_str().unwrap(),
    ]);
    for n in &nodes {
        until(&format!("{} to decode its peer", n.name), || {
            let st = n.cli(&["voice", "status"]);
            st["participants"]
                .as_array()
                .and_then(|p| p.first())
                .is_some_and(|p| p["accepted"].as_u64().unwrap_or(0) > 10)
                .then_some(())
        });
    }
    // The library is fetched ahead of time: Bob's node gets the horn's encrypted asset from
    // Alice and caches the clip, so it can play it itself and mixes Alice's play locally.
    until("bob to have the horn", || {
        let o = b.cli_raw(&["sound", "play", &gid, "horn"]);
        o.status.success().then_some(())
    });
    let played = a.cli(&["sound", "play", &gid, "horn"]);
    assert_eq!(played["sound"], "horn", "{played}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    b.cli(&["voice", "leave"]);
    a.cli(&["voice", "leave"]);
    let clip = sound::import(&std::fs::read(&horn).unwrap(), Some("wav")).unwrap();
    let rec = read_wav(&bob_out);
    let r = best_ncc(&rec, &clip.pcm[clip.pcm.len() / 2..]);
    eprintln!("bob hears the horn: ncc {r:.4}");
    assert!(r > 0.7, "ncc {r}");

    // Delete: gone from both libraries.
    a.cli(&["sound", "delete", &gid, "horn"]);
    until("bob to see the sound gone", || {
        let l = sounds(b, &gid);
        (l.len() == 1 && l[0]["name"] == "beep").then_some(())
    });
    for n in &mut nodes {
        n.stop();
    }
}
