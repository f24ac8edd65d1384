//! Local search through the real `securecomm-node` binary: one node, its guild and messages,
//! `search` with filters and dates through the CLI and the control socket (`--json`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod procs;

use procs::*;

#[test]
fn search_finds_messages_through_the_cli() {
    let mut a = Node::new("alice");
    a.start(&["--listen", "/ip4/127.0.0.1/tcp/0"]);
    let g = a.cli(&["guild", "create", "Search Club"]);
    let gid = g["id"].as_str().unwrap().to_owned();
    a.cli(&["channel", "create", &gid, "random"]);
    a.send(&gid, "general", "the lighthouse keeper waves");
    a.send(&gid, "general", "Café au lait at noon");
    a.send(&gid, "random", "another lighthouse, far away");

    let r = a.cli(&["search", "lightho", "--guild", "Search Club"]);
    assert_eq!(r["hits"].as_array().unwrap().len(), 2, "{r}");
    let r = a.cli(&[
        "search",
        "LIGHTHOUSE",
        "--guild",
        &gid,
        "--channel",
        "general",
        "--author",
        "alice",
        "--after",
        "2020-01-01",
        "--before",
        "2999-01-01T00:00:00Z",
        "--newest",
    ]);
    let hits = r["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{r}");
    assert_eq!(hits[0]["snippet"], "the \u{2}lighthouse\u{3} keeper waves");
    assert_eq!(hits[0]["channel_name"], "general");
    assert_eq!(hits[0]["guild_name"], "Search Club");
    assert_eq!(hits[0]["nickname"], "alice");
    // Diacritics, hostile text, filters with nothing to find, a file filter.
    assert_eq!(
        a.cli(&["search", "cafe"])["hits"].as_array().unwrap().len(),
        1
    );
    assert!(
        a.cli(&["search", "\"NEAR( OR -*"])["hits"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        a.cli(&["search", "", "--has-file"])["hits"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        a.cli(&["search", "lighthouse", "--before", "2020-01-01"])["hits"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(a.cli(&["search", "", "--limit", "2"])["next_offset"], 2);
    // Clear errors.
    let err = a.cli_err(&["search", "x", "--after", "yesterday"]);
    assert!(err.contains("YYYY-MM-DD"), "{err}");
    let err = a.cli_err(&["search", "x", "--channel", "general"]);
    assert!(err.contains("within a guild"), "{err}");
    a.stop();
}
