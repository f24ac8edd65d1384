//! Messaging like Discord between real nodes on loopback (with a relay): replies, threads,
//! reactions under concurrency, pins, mentions, edits and deletes reaching a member who was
//! offline, disappearing messages erased from every store (checked in the databases), slow mode
//! and the message size limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod procs;

use std::path::Path;
use std::time::{Duration, Instant};

use procs::*;
use securecomm_node::store::{Db, IdentityStore};
use serde_json::Value;

/// A relay and `names.len()` running nodes in one guild (the first owns it), all keyed.
fn community(names: &[&str]) -> (TestRelay, Vec<Node>, String) {
    let relay = TestRelay::start(None);
    let mut nodes: Vec<Node> = names.iter().map(|n| Node::new(n)).collect();
    for n in &mut nodes {
        n.start(&["--listen", "/ip4/127.0.0.1/tcp/0", "--relay", &relay.addr]);
    }
    let (gid, code) = create_and_invite(&nodes[0], "Book Club", 10);
    for n in &nodes[1..] {
        let j = n.cli(&["guild", "join", &code]);
        assert_eq!(j["ready"], true, "{j}");
    }
    for n in &nodes {
        wait_keyed(n, &gid, nodes.len());
    }
    (relay, nodes, gid)
}

/// A channel's history as JSON (the channel's own timeline, or a thread with `thread`).
fn history(n: &Node, gid: &str, thread: Option<&str>) -> Vec<Value> {
    let v = match thread {
        None => n.cli(&["history", gid, "general", "--limit", "1000"]),
        Some(t) => n.cli(&["thread", "history", gid, "general", t, "--limit", "1000"]),
    };
    v.as_array().unwrap().clone()
}

/// Waits until `n` holds a message with `text` in general; returns it.
fn wait_text(n: &Node, gid: &str, text: &str) -> Value {
    until(&format!("{} to see {text:?}", n.name), || {
        history(n, gid, None)
            .into_iter()
            .find(|m| m["text"] == text)
    })
}

/// Sends with extra arguments, retrying while key agreement settles; returns the message.
fn send_with(n: &Node, gid: &str, text: &str, extra: &[&str]) -> Value {
    let mut args = vec!["send", gid, "general", text];
    args.extend_from_slice(extra);
    until(&format!("{} to send {text:?}", n.name), || {
        let o = n.cli_raw(&args);
        if o.status.success() {
            return Some(serde_json::from_slice(&o.stdout).unwrap());
        }
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("try again") || err.contains("still joining"),
            "{} cannot send: {err}",
            n.name
        );
        None
    })
}

fn reactions(m: &Value) -> Vec<(String, u64)> {
    let mut r: Vec<(String, u64)> = m["reactions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["emoji"].as_str().unwrap().to_owned(),
                        r["count"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    r.sort();
    r
}

/// The id of the `general` channel.
fn general(n: &Node, gid: &str) -> u64 {
    let ch = n.cli(&["channel", "list", gid]);
    ch.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "general")
        .unwrap()["id"]
        .as_u64()
        .unwrap()
}

/// Opens a node's database (the node may be running: SQLite allows a second reader).
fn open_db(dir: &Path) -> Db {
    let profile = IdentityStore::new(dir).unlock(PASS.as_bytes()).unwrap();
    Db::open(&dir.join("node.db"), &profile.db_key).unwrap()
}

/// What a node's database still holds of message `id`: (message rows, non-empty envelopes,
/// rows anywhere whose text contains `text`).
fn held(dir: &Path, id: &str, text: &str) -> (i64, i64, i64) {
    let db = open_db(dir);
    let id = hex::decode(id).unwrap();
    let c = db.conn();
    let rows: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM guild_messages WHERE msg_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    let envs: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM guild_envelopes WHERE (msg_id = ?1 OR target = ?1)
             AND length(envelope) > 0",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    let like = format!("%{text}%");
    let mut texts = 0i64;
    for q in [
        "SELECT COUNT(*) FROM guild_messages WHERE text LIKE ?1",
        "SELECT COUNT(*) FROM guild_message_edits WHERE text LIKE ?1",
        "SELECT COUNT(*) FROM guild_pending_ops WHERE CAST(op AS TEXT) LIKE ?1",
    ] {
        texts += c.query_row(q, [&like], |r| r.get::<_, i64>(0)).unwrap();
    }
    (rows, envs, texts)
}

#[test]
fn replies_threads_reactions_pins_and_mentions_reach_every_member() {
    let (_relay, nodes, gid) = community(&["ann", "ben", "cat"]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // A reply, seen by everyone with what it replies to.
    let first = a.send(&gid, "general", "who has read Dune?");
    let first_id = first["id"].as_str().unwrap().to_owned();
    wait_text(b, &gid, "who has read Dune?");
    let reply = send_with(b, &gid, "me, twice", &["--reply-to", &first_id[..8]]);
    assert_eq!(reply["reply_to"], first_id.as_str());
    for n in &nodes {
        assert_eq!(
            wait_text(n, &gid, "me, twice")["reply_to"],
            first_id.as_str()
        );
    }

    // A thread from the first message: named, listed, its posts apart from the channel's.
    let t = a.cli(&[
        "thread",
        "create",
        &gid,
        "general",
        "Dune discussion",
        "--from",
        &first_id,
    ]);
    let thread_id = t["id"].as_str().unwrap().to_owned();
    for n in &nodes {
        until(&format!("{} to list the thread", n.name), || {
            let l = n.cli(&["thread", "list", &gid, "general"]);
            l.as_array()
                .unwrap()
                .iter()
                .any(|t| t["id"] == thread_id.as_str() && t["name"] == "Dune discussion")
                .then_some(())
        });
    }
    send_with(c, &gid, "the sandworms!", &["--thread", "Dune discussion"]);
    for n in &nodes {
        until(&format!("{} to see the thread post", n.name), || {
            history(n, &gid, Some(&thread_id))
                .iter()
                .any(|m| m["text"] == "the sandworms!")
                .then_some(())
        });
        assert!(
            !history(n, &gid, None)
                .iter()
                .any(|m| m["text"] == "the sandworms!"),
            "a thread's post stays out of the channel's timeline at {}",
            n.name
        );
    }
    // Archived: no new posts until unarchived (only the creator or a moderator may).
    let err = b.cli_err(&["thread", "archive", &gid, "general", &thread_id]);
    assert!(err.contains("creator"), "{err}");
    a.cli(&["thread", "archive", &gid, "general", &thread_id]);
    until("cat to see the thread archived", || {
        c.cli(&["thread", "list", &gid, "general"])
            .as_array()
            .unwrap()[0]["archived"]
            .as_bool()
            .filter(|a| *a)
    });
    let err = c.cli_err(&["send", &gid, "general", "late", "--thread", &thread_id]);
    assert!(err.contains("archived"), "{err}");

    // Reactions under concurrency: all three add 👍 at once, ben adds then removes 🎉 while cat
    // adds 🎉 once: every member converges on 👍 x3, 🎉 x1.
    std::thread::scope(|s| {
        for n in &nodes {
            let (gid, id) = (&gid, &first_id);
            s.spawn(move || {
                until("a reaction to go out", || {
                    n.cli_raw(&["react", gid, "general", id, "👍"])
                        .status
                        .success()
                        .then_some(())
                });
            });
        }
        s.spawn(|| {
            b.cli(&["react", &gid, "general", &first_id, "🎉"]);
            b.cli(&["react", &gid, "general", &first_id, "🎉", "--remove"]);
        });
        s.spawn(|| c.cli(&["react", &gid, "general", &first_id, "🎉"]));
    });
    let want = vec![("👍".to_owned(), 3), ("🎉".to_owned(), 1)];
    let mut want = want;
    want.sort();
    for n in &nodes {
        until(&format!("{} to converge on the reactions", n.name), || {
            let m = wait_text(n, &gid, "who has read Dune?");
            (reactions(&m) == want).then_some(())
        });
    }
    let err = b.cli_err(&["react", &gid, "general", &first_id, "not an emoji"]);
    assert!(err.contains("one emoji"), "{err}");

    // Pins: Manage Messages only.
    let err = b.cli_err(&["pin", &gid, "general", &first_id]);
    assert!(err.contains("not permitted"), "{err}");
    a.cli(&["pin", &gid, "general", &first_id]);
    for n in &nodes {
        until(&format!("{} to see the pin", n.name), || {
            let p = n.cli(&["pins", &gid, "general"]);
            (p.as_array().unwrap().len() == 1 && p[0]["id"] == first_id.as_str()).then_some(())
        });
    }

    // Mentions: an event only at the members mentioned (ben by name; @everyone, which
    // @everyone may use by default as on Discord, reaches ann and ben but not its author).
    let ben_id = b.user_id();
    let mut events: Vec<_> = nodes.iter().map(Node::events).collect();
    // The streams are live from the moment they open: settle, then mention.
    std::thread::sleep(Duration::from_millis(500));
    let text = format!("<@{ben_id}> you said twice?");
    // Typing: ann's notice reaches ben and cat (once: the node throttles repeats).
    let t = a.cli(&["typing", &gid, "general"]);
    assert_eq!(t["sent_to"], 2, "{t}");
    assert_eq!(a.cli(&["typing", &gid, "general"])["throttled"], true);
    a.send(&gid, "general", &text);
    c.send(&gid, "general", "@everyone book club tonight");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = [0usize; 3];
    let mut delivered = [0usize; 3];
    let mut typing = [0usize; 3];
    while Instant::now() < deadline && delivered.iter().any(|&d| d < 2) {
        for (i, ev) in events.iter_mut().enumerate() {
            while let Ok(line) = ev.1.recv_timeout(Duration::from_millis(100)) {
                let v: Value = serde_json::from_str(&line).unwrap();
                if v["event"] == "mention" {
                    seen[i] += 1;
                }
                if v["event"] == "typing" && v["nickname"] == "ann" {
                    typing[i] += 1;
                }
                if v["event"] == "message"
                    && (v["text"] == text.as_str() || v["text"] == "@everyone book club tonight")
                {
                    delivered[i] += 1;
                }
            }
        }
    }
    // Ann and Cat each stored the other's message and their own (the stream shows both).
    assert!(delivered.iter().all(|&d| d == 2), "{delivered:?}");
    // A moment for a late mention event after its message event.
    std::thread::sleep(Duration::from_millis(300));
    for (i, ev) in events.iter_mut().enumerate() {
        while let Ok(line) = ev.1.try_recv() {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["event"] == "mention" {
                seen[i] += 1;
            }
        }
    }
    assert_eq!(seen, [1, 2, 0], "mention events at ann, ben, cat");
    assert_eq!(typing, [0, 1, 1], "typing events at ann, ben, cat");
    let m = b.cli(&["mentions", &gid]);
    assert_eq!(m[0]["unread_mentions"], 2, "{m}");
    b.cli(&["read", &gid, "general"]);
    assert!(b.cli(&["mentions", &gid]).as_array().unwrap().is_empty());
    for (mut child, _) in events {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn an_edit_and_a_delete_reach_a_member_who_was_offline() {
    let (_relay, mut nodes, gid) = community(&["ann", "ben", "cat"]);
    let kept = nodes[0].send(&gid, "general", "meeting at 5");
    let gone = nodes[0].send(&gid, "general", "my phone number is 555-0199");
    let (kept, gone) = (
        kept["id"].as_str().unwrap().to_owned(),
        gone["id"].as_str().unwrap().to_owned(),
    );
    for n in &nodes {
        wait_text(n, &gid, "my phone number is 555-0199");
    }
    nodes[2].stop();
    let (a, b) = (&nodes[0], &nodes[1]);
    // Only the author edits; only the author or Manage Messages deletes.
    let err = b.cli_err(&["edit", &gid, "general", &kept, "hijacked"]);
    assert!(err.contains("your own"), "{err}");
    let err = b.cli_err(&["delete", &gid, "general", &gone]);
    assert!(err.contains("not permitted"), "{err}");
    a.cli(&["edit", &gid, "general", &kept, "meeting at 6"]);
    a.cli(&["delete", &gid, "general", &gone]);
    for n in [a, b] {
        let m = wait_text(n, &gid, "meeting at 6");
        assert!(m["edited_at"].as_u64().is_some(), "{m}");
        until(&format!("{} to erase the deleted message", n.name), || {
            (!history(n, &gid, None)
                .iter()
                .any(|m| m["id"] == gone.as_str()))
            .then_some(())
        });
    }
    // The author's earlier version stays only as local history.
    let e = a.cli(&["edits", &gid, "general", &kept]);
    assert_eq!(e[0]["text"], "meeting at 5", "{e}");

    nodes[2].restart();
    let c = &nodes[2];
    let m = wait_text(c, &gid, "meeting at 6");
    assert!(m["edited_at"].as_u64().is_some(), "{m}");
    until("cat to erase the deleted message", || {
        (!history(c, &gid, None)
            .iter()
            .any(|m| m["id"] == gone.as_str()))
        .then_some(())
    });
    // In the databases, not only in the views: no row, no envelope, no text left.
    for n in &nodes {
        until(&format!("{}'s store to hold nothing of it", n.name), || {
            (held(n.path(), &gone, "555-0199") == (0, 0, 0)).then_some(())
        });
    }
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn disappearing_messages_are_erased_from_every_store_even_one_offline_at_expiry() {
    let (_relay, mut nodes, gid) = community(&["ann", "ben", "cat"]);
    let m = send_with(
        &nodes[0],
        &gid,
        "the door code is 4711",
        &["--expires", "12"],
    );
    let id = m["id"].as_str().unwrap().to_owned();
    let expires_at = m["expires_at"].as_u64().unwrap();
    for n in &nodes {
        let seen = wait_text(n, &gid, "the door code is 4711");
        assert_eq!(
            seen["expires_at"].as_u64(),
            Some(expires_at),
            "at {}",
            n.name
        );
    }
    // A reaction on it goes with it.
    nodes[1].cli(&["react", &gid, "general", &id, "🔒"]);
    nodes[2].stop();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    assert!(
        now() < expires_at,
        "cat went offline before the timer ran out"
    );
    while now() < expires_at + 2_000 {
        std::thread::sleep(Duration::from_millis(200));
    }
    for n in &nodes[..2] {
        until(&format!("{} to erase the expired message", n.name), || {
            (held(n.path(), &id, "4711") == (0, 0, 0)).then_some(())
        });
    }
    // Cat was offline when the timer ran out; it erases it on the way back.
    nodes[2].restart();
    until("cat to erase the expired message", || {
        (held(nodes[2].path(), &id, "4711") == (0, 0, 0)).then_some(())
    });

    // The channel's default timer applies to a message sent without one, at every member.
    let general = general(&nodes[0], &gid);
    nodes[0].cli(&[
        "channel",
        "edit",
        &gid,
        &general.to_string(),
        "--disappearing",
        "3600",
    ]);
    until("ben to see the channel timer", || {
        let d = nodes[1].cli(&["channel", "list", &gid]);
        d.as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == general))
            .filter(|c| c["disappearing_secs"] == 3600)
            .map(|_| ())
    });
    let m = send_with(&nodes[1], &gid, "timed by the channel", &[]);
    let at = m["sent_at"].as_u64().unwrap();
    assert_eq!(m["expires_at"].as_u64(), Some(at + 3_600_000), "{m}");
    let seen = wait_text(&nodes[2], &gid, "timed by the channel");
    assert_eq!(seen["expires_at"].as_u64(), Some(at + 3_600_000), "{seen}");
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn slow_mode_and_the_size_limit_are_enforced_with_clear_errors() {
    let (_relay, nodes, gid) = community(&["ann", "ben"]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let general = general(a, &gid);
    a.cli(&[
        "channel",
        "edit",
        &gid,
        &general.to_string(),
        "--slow-mode",
        "30",
    ]);
    until("ben to see slow mode", || {
        let d = b.cli(&["channel", "list", &gid]);
        d.as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == general))
            .filter(|c| c["slow_mode_secs"] == 30)
            .map(|_| ())
    });
    send_with(b, &gid, "first", &[]);
    let err = b.cli_err(&["send", &gid, "general", "second"]);
    assert!(err.contains("slow mode"), "{err}");
    // Moderators are exempt, as on Discord.
    a.send(&gid, "general", "one");
    a.send(&gid, "general", "two");
    wait_text(b, &gid, "two");

    let long = "é".repeat(4_001);
    let err = a.cli_err(&["send", &gid, "general", &long]);
    assert!(err.contains("at most 4000 characters"), "{err}");
    a.send(&gid, "general", &"é".repeat(4_000));
}
