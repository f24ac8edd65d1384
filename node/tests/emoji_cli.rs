//! Guild custom emoji through the real `securecomm-node` binary on loopback: `emoji upload`
//! (permissions, names, bad files), the image fetched by another member ahead of time and
//! byte-identical to the uploader's, a `:name:` reaction reaching the other member, deletion,
//! and no plaintext of the image or its name in any store on disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod procs;

use std::path::Path;

use procs::*;
use serde_json::Value;

const NAME: &str = "zebra_unicorn_77";

fn emojis(n: &Node, gid: &str) -> Vec<Value> {
    n.cli(&["emoji", "list", gid]).as_array().unwrap().clone()
}

/// Regular files under `dir` that hold `needle`.
fn found_in(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let t = entry.file_type().unwrap();
            if t.is_dir() {
                todo.push(entry.path());
            } else if t.is_file() {
                let bytes = std::fs::read(entry.path()).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(entry.path().display().to_string());
                }
            }
        }
    }
    hits
}

/// Sends `text` to general, retrying while key agreement settles; returns the message id.
fn post(n: &Node, gid: &str, text: &str) -> String {
    let m: Value = until(&format!("{} to post", n.name), || {
        let o = n.cli_raw(&["send", gid, "general", text]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).unwrap())
    });
    m["id"].as_str().unwrap().to_owned()
}

#[test]
fn custom_emoji_upload_fetch_react_delete_with_permissions_and_bad_files() {
    let relay = TestRelay::start(None);
    let mut nodes: Vec<Node> = ["alice", "bob"].iter().map(|n| Node::new(n)).collect();
    for n in &mut nodes {
        n.start(&["--listen", "/ip4/127.0.0.1/tcp/0", "--relay", &relay.addr]);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let (gid, code) = create_and_invite(a, "Emoji Club", 1);
    assert_eq!(b.cli(&["guild", "join", &code])["ready"], true);
    for n in &nodes {
        wait_keyed(n, &gid, 2);
    }
    let dir = tempfile::tempdir().unwrap();
    // A 300 x 200 JPEG: scaled to fit 128 x 128 and re-encoded as a PNG.
    let src = dir.path().join("zebra.jpg");
    image::RgbImage::from_fn(300, 200, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
    })
    .save(&src)
    .unwrap();

    let up = a.cli(&[
        "emoji",
        "upload",
        &gid,
        src.to_str().unwrap(),
        "--name",
        NAME,
    ]);
    assert_eq!(up["name"], NAME, "{up}");
    assert_eq!(up["here"], true, "{up}");
    let root = up["root"].as_str().unwrap().to_owned();

    // Bob's node fetches the image ahead of time, without being asked.
    until("bob to have the emoji's image", || {
        emojis(b, &gid)
            .iter()
            .any(|e| e["name"] == NAME && e["root"] == root.as_str() && e["here"] == true)
            .then_some(())
    });
    let (ap, bp) = (dir.path().join("a.png"), dir.path().join("b.png"));
    a.cli(&["emoji", "save", &gid, NAME, ap.to_str().unwrap()]);
    b.cli(&[
        "emoji",
        "save",
        &gid,
        &format!(":{NAME}:"),
        bp.to_str().unwrap(),
    ]);
    let png = std::fs::read(&ap).unwrap();
    assert_eq!(png, std::fs::read(&bp).unwrap(), "byte-identical");
    let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap();
    assert_eq!((img.width(), img.height()), (128, 85));
    // Saving never overwrites.
    let e = b.cli_err(&["emoji", "save", &gid, NAME, bp.to_str().unwrap()]);
    assert!(e.contains("exists"), "{e}");

    // Bob (no Manage Guild) cannot add or delete; names are checked and unique; bad files
    // get clear errors.
    let e = b.cli_err(&[
        "emoji",
        "upload",
        &gid,
        src.to_str().unwrap(),
        "--name",
        "mine",
    ]);
    assert!(e.contains("Manage Guild"), "{e}");
    let e = b.cli_err(&["emoji", "delete", &gid, NAME]);
    assert!(e.contains("Manage Guild"), "{e}");
    let e = a.cli_err(&[
        "emoji",
        "upload",
        &gid,
        src.to_str().unwrap(),
        "--name",
        NAME,
    ]);
    assert!(e.contains("exists already"), "{e}");
    let e = a.cli_err(&[
        "emoji",
        "upload",
        &gid,
        src.to_str().unwrap(),
        "--name",
        "a b",
    ]);
    assert!(e.contains("letters, digits or underscores"), "{e}");
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image at all").unwrap();
    let e = a.cli_err(&[
        "emoji",
        "upload",
        &gid,
        text.to_str().unwrap(),
        "--name",
        "notes",
    ]);
    assert!(e.contains("not an image"), "{e}");
    let big = dir.path().join("big.png");
    std::fs::write(&big, vec![0u8; 9 * 1024 * 1024]).unwrap();
    let e = a.cli_err(&[
        "emoji",
        "upload",
        &gid,
        big.to_str().unwrap(),
        "--name",
        "big",
    ]);
    assert!(e.contains("too large"), "{e}");
    assert_eq!(emojis(a, &gid).len(), 1);

    // Bob reacts with it; Alice sees the reaction. An unknown name is refused.
    let id = post(a, &gid, "what do you think?");
    let reaction = format!(":{NAME}:");
    b.cli(&["react", &gid, "general", &id, &reaction]);
    until("alice to see bob's custom reaction", || {
        let h = a.cli(&["history", &gid, "general"]);
        h.as_array()
            .unwrap()
            .iter()
            .any(|m| {
                m["id"] == id.as_str()
                    && m["reactions"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r["emoji"] == reaction.as_str()))
            })
            .then_some(())
    });
    let e = b.cli_err(&["react", &gid, "general", &id, ":no_such_emoji:"]);
    assert!(e.contains("no emoji named"), "{e}");

    // Neither node's store holds the image or the emoji's name in plaintext.
    for n in &nodes {
        let hits = found_in(n.path(), &png[png.len() / 2..png.len() / 2 + 48]);
        assert!(hits.is_empty(), "{}: image plaintext in {hits:?}", n.name);
        let hits = found_in(n.path(), NAME.as_bytes());
        assert!(hits.is_empty(), "{}: emoji name in {hits:?}", n.name);
    }

    // Deleted: gone from both lists; the reaction can still be taken back.
    a.cli(&["emoji", "delete", &gid, NAME]);
    until("bob to see the emoji gone", || {
        emojis(b, &gid).is_empty().then_some(())
    });
    b.cli(&["react", &gid, "general", &id, &reaction, "--remove"]);
    for n in &mut nodes {
        n.stop();
    }
}
