//! The `securecomm-node` binary as a user drives it: separate processes, real files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn node(dir: &Path, pass: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_securecomm-node"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("SECURECOMM_PASSPHRASE", pass)
        .output()
        .unwrap()
}

fn field(out: &Output, name: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn two_users_see_the_same_safety_number_and_wrong_passphrase_is_harmless() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    assert!(
        node(a.path(), "alice pass", &["init", "--name", "Alice"])
            .status
            .success()
    );
    assert!(
        node(b.path(), "bob pass 1", &["init", "--name", "Bob"])
            .status
            .success()
    );
    let ka = field(&node(a.path(), "alice pass", &["whoami"]), "user id");
    let kb = field(&node(b.path(), "bob pass 1", &["whoami"]), "user id");
    assert_eq!(ka.len(), 64);
    assert_ne!(ka, kb);

    let sa = node(a.path(), "alice pass", &["safety-number", &kb]);
    let sb = node(b.path(), "bob pass 1", &["safety-number", &ka]);
    assert!(sa.status.success());
    let digits = String::from_utf8(sa.stdout).unwrap();
    assert_eq!(digits.chars().filter(char::is_ascii_digit).count(), 60);
    assert_eq!(digits, String::from_utf8(sb.stdout).unwrap());

    let file = a.path().join("identity.sc");
    let before = std::fs::read(&file).unwrap();
    let wrong = node(a.path(), "not alice", &["whoami"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"));
    assert_eq!(std::fs::read(&file).unwrap(), before);

    // A second init must not destroy the first identity.
    let again = node(a.path(), "alice pass", &["init", "--name", "Eve"]);
    assert!(!again.status.success());
    assert_eq!(
        field(&node(a.path(), "alice pass", &["whoami"]), "user id"),
        ka
    );

    // Garbage in place of a key is a clear error, not a panic.
    let bad = node(a.path(), "alice pass", &["safety-number", "zz"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("64 hex digits"));
}

#[test]
fn backup_restores_on_a_new_device() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    assert!(
        node(a.path(), "alice pass", &["init", "--name", "Alice"])
            .status
            .success()
    );
    let backup = a.path().join("backup.sc");
    // One passphrase variable serves both prompts in script mode.
    assert!(
        node(
            a.path(),
            "alice pass",
            &["backup", "export", backup.to_str().unwrap()]
        )
        .status
        .success()
    );
    let restored = node(
        b.path(),
        "alice pass",
        &["backup", "import", backup.to_str().unwrap()],
    );
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(
        field(&restored, "user id"),
        field(&node(a.path(), "alice pass", &["whoami"]), "user id")
    );
    std::fs::write(&backup, b"garbage").unwrap();
    let c = tempfile::tempdir().unwrap();
    let bad = node(
        c.path(),
        "alice pass",
        &["backup", "import", backup.to_str().unwrap()],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("damaged"));
}

/// Two `securecomm-node run` processes on loopback, driven through their control sockets.
#[test]
fn two_running_nodes_connect_through_the_cli() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for d in [&a, &b] {
        assert!(
            node(d.path(), "pass word", &["init", "--name", "N"])
                .status
                .success()
        );
    }
    let start = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_securecomm-node"))
            .arg("--data-dir")
            .arg(dir)
            .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .env("SECURECOMM_PASSPHRASE", "pass word")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut pa = start(a.path());
    let mut pb = start(b.path());
    let mut line = String::new();
    BufReader::new(pa.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("listening ").unwrap().to_owned();
    assert!(
        addr.starts_with("/ip4/127.0.0.1/tcp/") && addr.contains("/p2p/12D3Koo"),
        "{addr}"
    );
    let mut lb = String::new();
    BufReader::new(pb.stdout.take().unwrap())
        .read_line(&mut lb)
        .unwrap();

    let dial = node(b.path(), "", &["dial", &addr]);
    assert!(
        dial.status.success(),
        "{}",
        String::from_utf8_lossy(&dial.stderr)
    );
    let mut peers = serde_json::Value::Null;
    for _ in 0..50 {
        let out = node(b.path(), "", &["--json", "peers"]);
        peers = serde_json::from_slice(&out.stdout).unwrap();
        if peers.as_array().is_some_and(|p| !p.is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(peers[0]["path"], "direct");
    assert_eq!(
        addr.rsplit('/').next().unwrap(),
        peers[0]["peer"].as_str().unwrap()
    );

    // Bad input to a running node is an error, not a crash.
    let bad = node(b.path(), "", &["dial", "not-a-multiaddr"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad multiaddr"));

    for d in [&a, &b] {
        assert!(node(d.path(), "", &["stop"]).status.success());
    }
    assert!(pa.wait().unwrap().success());
    assert!(pb.wait().unwrap().success());
    let gone = node(a.path(), "", &["peers"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no running node"));
}
