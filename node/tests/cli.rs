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
