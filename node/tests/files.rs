//! File sharing between real nodes on loopback (with a relay): a 200 MB file reaching three
//! members byte-identical, with no plaintext at the relay, a non-member or anywhere in the
//! members' stores; a fetch killed mid-way that resumes after a restart; a tampered copy whose
//! chunks are rejected and fetched again from another member.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod procs;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use procs::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Marks every MiB of the test files' plaintext, so `grep` finds plaintext wherever it lands.
const MARKER: &str = "SECURECOMM-PLAINTEXT-MARKER";

/// A relay and running nodes in one guild (the first owns it), all keyed.
fn community(relay: &TestRelay, names: &[&str]) -> (Vec<Node>, String) {
    let mut nodes: Vec<Node> = names.iter().map(|n| Node::new(n)).collect();
    for n in &mut nodes {
        n.start(&["--listen", "/ip4/127.0.0.1/tcp/0", "--relay", &relay.addr]);
    }
    let (gid, code) = create_and_invite(&nodes[0], "Files", 10);
    for n in &nodes[1..] {
        let j = n.cli(&["guild", "join", &code]);
        assert_eq!(j["ready"], true, "{j}");
    }
    for n in &nodes {
        wait_keyed(n, &gid, nodes.len());
    }
    (nodes, gid)
}

/// Writes `mib` MiB of pseudo-random bytes with a marker at the start of every MiB; returns
/// the path and the SHA-256.
fn test_file(dir: &Path, name: &str, mib: usize) -> (PathBuf, [u8; 32]) {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut hash = Sha256::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ mib as u64;
    let mut block = vec![0u8; 1 << 20];
    for w in block.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    block[..MARKER.len()].copy_from_slice(MARKER.as_bytes());
    for i in 0..mib {
        // Every MiB differs (its number after the marker), so no two chunks are alike.
        block[MARKER.len()..MARKER.len() + 8].copy_from_slice(&(i as u64).to_le_bytes());
        hash.update(&block);
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
    (path, hash.finalize().into())
}

fn sha256_file(p: &Path) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().into()
}

/// Files under `dir` that contain the plaintext marker (GNU grep, binary files as text).
fn plaintext_in(dir: &Path) -> Vec<String> {
    let o = Command::new("grep")
        .args(["-r", "-l", "-a", "-F", MARKER])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Posts `path` in general, retrying while key agreement settles; returns the file id.
fn post_file(n: &Node, gid: &str, path: &Path) -> String {
    let p = path.to_str().unwrap();
    let m: Value = until(&format!("{} to post a file", n.name), || {
        let o = n.cli_raw(&["send", gid, "general", "here it is", "--file", p]);
        if o.status.success() {
            return Some(serde_json::from_slice(&o.stdout).unwrap());
        }
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("try again") || err.contains("still joining"),
            "{} cannot post: {err}",
            n.name
        );
        None
    });
    let f = &m["files"][0];
    assert_eq!(f["state"], "complete", "{m}");
    f["root"].as_str().unwrap().to_owned()
}

/// Waits until `n` has the announcement of `root` (the message arrived).
fn wait_announced(n: &Node, gid: &str, root: &str) {
    until(&format!("{} to see the file", n.name), || {
        let l = n.cli(&["files", "list", gid]);
        l.as_array()
            .unwrap()
            .iter()
            .any(|e| e["file"]["root"] == root)
            .then_some(())
    });
}

/// Waits (up to `limit`) until the file's state is `complete`.
fn wait_complete(n: &Node, root: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let s = n.cli(&["files", "status", root]);
        if s["state"] == "complete" {
            return s;
        }
        assert_ne!(s["state"], "paused", "{}: {s}", n.name);
        assert!(Instant::now() < deadline, "{} never completed: {s}", n.name);
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_200_mb_file_reaches_three_members_and_no_plaintext_reaches_the_relay_or_a_stranger() {
    let work = tempfile::tempdir().unwrap();
    let capture = work.path().join("relay.capture");
    let relay = TestRelay::start(Some(capture.clone()));
    let (nodes, gid) = community(&relay, &["Ada", "Bo", "Cy", "Di"]);
    // A stranger on the same relay, in a guild of its own.
    let mut eve = Node::new("Eve");
    eve.start(&["--listen", "/ip4/127.0.0.1/tcp/0", "--relay", &relay.addr]);
    eve.cli(&["guild", "create", "Elsewhere"]);

    let (src, digest) = test_file(work.path(), "big.bin", 200);
    let started = Instant::now();
    let root = post_file(&nodes[0], &gid, &src);
    eprintln!(
        "encrypting and posting 200 MiB took {:?}",
        started.elapsed()
    );
    for n in &nodes[1..] {
        wait_announced(n, &gid, &root);
        let s = n.cli(&["files", "fetch", &root]);
        assert!(s["state"] == "fetching" || s["state"] == "queued", "{s}");
    }
    let started = Instant::now();
    for n in &nodes[1..] {
        wait_complete(n, &root, Duration::from_secs(600));
    }
    eprintln!("three members fetched 200 MiB in {:?}", started.elapsed());
    for n in &nodes[1..] {
        let out = work.path().join(format!("{}.bin", n.name));
        let saved = n.cli(&["files", "save", &root, out.to_str().unwrap()]);
        assert_eq!(saved["bytes"], 200 << 20, "{saved}");
        assert_eq!(sha256_file(&out), digest, "{}'s copy differs", n.name);
        // Saving twice never overwrites.
        assert!(
            n.cli_err(&["files", "save", &root, out.to_str().unwrap()])
                .contains("exists")
        );
    }
    // Eve never heard of the file.
    assert!(eve.cli_err(&["files", "fetch", &root]).contains("no file"));
    drop(relay); // flushes the capture
    for n in nodes.iter().chain([&eve]) {
        let found = plaintext_in(n.path());
        assert!(
            found.is_empty(),
            "plaintext in {}'s data: {found:?}",
            n.name
        );
    }
    let found = plaintext_in(&capture);
    assert!(found.is_empty(), "plaintext in the relay's capture");
}

#[test]
fn a_fetch_killed_midway_resumes_after_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(None);
    let (mut nodes, gid) = community(&relay, &["Ada", "Bo"]);
    // Large enough that the fetch runs a few seconds on loopback (about 100 MB/s here), so
    // it can be killed part-way after it saved progress (every second).
    let (src, digest) = test_file(work.path(), "resume.bin", 400);
    let root = post_file(&nodes[0], &gid, &src);
    wait_announced(&nodes[1], &gid, &root);
    nodes[1].cli(&["files", "fetch", &root]);
    let started = Instant::now();
    let before = until("part of the file", || {
        let s = nodes[1].cli(&["files", "status", &root]);
        assert_ne!(s["state"], "complete", "finished before it could be killed");
        let have = s["have"].as_u64().unwrap_or(0);
        (have > 100 << 20 && started.elapsed() > Duration::from_millis(1100)).then_some(have)
    });
    nodes[1].kill9();
    nodes[1].restart();
    // It resumes by itself, from where the last save left off, not from zero.
    let s = nodes[1].cli(&["files", "status", &root]);
    assert!(
        ["fetching", "queued", "waiting"].contains(&s["state"].as_str().unwrap()),
        "not resumed: {s}"
    );
    let resumed_at = until("the resumed fetch to report progress", || {
        let s = nodes[1].cli(&["files", "status", &root]);
        let have = s["have"].as_u64().unwrap_or(0);
        (have > 0 || s["state"] == "complete").then_some(have)
    });
    assert!(
        resumed_at > 0 && resumed_at <= before + (8 << 20),
        "restarted from {resumed_at} bytes after holding {before} (saved progress lost?)"
    );
    wait_complete(&nodes[1], &root, Duration::from_secs(300));
    let out = work.path().join("out.bin");
    nodes[1].cli(&["files", "save", &root, out.to_str().unwrap()]);
    assert_eq!(sha256_file(&out), digest);
}

#[test]
fn tampered_chunks_are_rejected_and_fetched_from_another_member() {
    let work = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(None);
    let (nodes, gid) = community(&relay, &["Ada", "Bo", "Cy"]);
    let (src, digest) = test_file(work.path(), "t.bin", 16);
    let root = post_file(&nodes[0], &gid, &src);
    wait_announced(&nodes[1], &gid, &root);
    nodes[1].cli(&["files", "fetch", &root]);
    wait_complete(&nodes[1], &root, Duration::from_secs(120));
    // Bo's copy goes bad: one byte flipped in every chunk.
    let enc = nodes[1].path().join("files").join(format!("{root}.enc"));
    let mut bytes = std::fs::read(&enc).unwrap();
    let sealed = 128 * 1024 + 16;
    let mut off = 12 + 100;
    while off < bytes.len() {
        bytes[off] ^= 0x55;
        off += sealed;
    }
    std::fs::write(&enc, bytes).unwrap();

    wait_announced(&nodes[2], &gid, &root);
    // Cy must reach Bo, or Bo's copy would never be asked for.
    let bo = nodes[1].cli(&["whoami"])["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    until("Cy to connect to Bo", || {
        let peers = nodes[2].cli(&["peers"]);
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer"] == bo.as_str())
            .then_some(())
    });
    let (mut ev, rx) = nodes[2].events();
    nodes[2].cli(&["files", "fetch", &root]);
    let done: Value = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("no file-done event");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "file-done" && v["root"] == root {
            break v;
        }
    };
    let _ = ev.kill();
    assert_eq!(done["ok"], true, "{done}");
    assert!(
        done["rejected"].as_u64().unwrap() >= 1,
        "no chunk from Bo's tampered copy was rejected: {done}"
    );
    let out = work.path().join("cy.bin");
    nodes[2].cli(&["files", "save", &root, out.to_str().unwrap()]);
    assert_eq!(sha256_file(&out), digest);

    // The guild's upload limit: a larger file is refused before anything is sent.
    let s = nodes[0].cli(&["guild", "settings", &gid, "--max-upload", "1000000"]);
    assert_eq!(s["max_upload_bytes"], 1_000_000, "{s}");
    let err = nodes[0].cli_err(&[
        "send",
        &gid,
        "general",
        "big",
        "--file",
        src.to_str().unwrap(),
    ]);
    assert!(err.contains("at most 1000000 bytes"), "{err}");
    // A member may not raise it.
    let err = nodes[1].cli_err(&["guild", "settings", &gid, "--max-upload", "0"]);
    assert!(
        err.contains("not permitted") || err.contains("permission"),
        "{err}"
    );

    // Deleting the message removes the file from every member's store.
    let msg = nodes[0].cli(&["files", "list", &gid])[0]["msg"]
        .as_str()
        .unwrap()
        .to_owned();
    nodes[0].cli(&["delete", &gid, "general", &msg]);
    for n in &nodes {
        let dir = n.path().join("files");
        until(&format!("{}'s copy to be erased", n.name), || {
            let left: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&root[..16]))
                .collect();
            left.is_empty().then_some(())
        });
        let err = n.cli_err(&["files", "status", &root]);
        assert!(err.contains("no file"), "{err}");
    }
}
