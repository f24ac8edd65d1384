//! The harness the multi-process tests share: nodes as real `securecomm-node` processes driven
//! through the CLI (`--json`), and the real `securecomm-relay` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PASS: &str = "correct horse battery";
pub const WAIT: Duration = Duration::from_secs(60);

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_securecomm-node"));
    c.env("SECURECOMM_PASSPHRASE", PASS);
    c
}

pub fn out_of(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One node: a data directory and, while running, its process.
pub struct Node {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub run_args: Vec<String>,
    /// A network namespace `run` starts in (`ip netns exec`); the CLI still reaches the node
    /// through the control socket, a file in the data directory.
    pub netns: Option<String>,
}

impl Node {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let o = bin()
            .arg("--data-dir")
            .arg(dir.path())
            .args(["init", "--name", name])
            .output()
            .unwrap();
        assert!(o.status.success(), "init {name}: {}", out_of(&o));
        Self {
            name: name.to_owned(),
            dir,
            child: None,
            run_args: Vec::new(),
            netns: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `run` with `args` and waits until its control socket answers.
    pub fn start(&mut self, args: &[&str]) {
        self.run_args = args.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    pub fn restart(&mut self) {
        let mut cmd = match &self.netns {
            None => bin(),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_securecomm-node")])
                    .env("SECURECOMM_PASSPHRASE", PASS);
                c
            }
        };
        let child = cmd
            // SECURECOMM_TEST_LOG (for example `info,libp2p_mdns=debug`) shows more when a
            // test needs looking into.
            .env(
                "SECURECOMM_LOG",
                std::env::var("SECURECOMM_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .arg("--data-dir")
            .arg(self.path())
            .arg("run")
            .args(&self.run_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Drain stdout so the node never blocks on a full pipe.
        let stdout = self.child.as_mut().unwrap().stdout.take().unwrap();
        std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
        let deadline = Instant::now() + WAIT;
        loop {
            // `peers` only answers from a running node (`whoami` would unlock the files).
            let o = self.cli_raw(&["peers"]);
            if o.status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "{} never came up", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn cli_raw(&self, args: &[&str]) -> Output {
        bin()
            .arg("--data-dir")
            .arg(self.path())
            .arg("--json")
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a command against the node; it must succeed.
    pub fn cli(&self, args: &[&str]) -> Value {
        let o = self.cli_raw(args);
        assert!(o.status.success(), "{} {args:?}: {}", self.name, out_of(&o));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{} {args:?}: not JSON ({e}): {}", self.name, out_of(&o)))
    }

    /// Runs a command that must fail; returns its error text.
    pub fn cli_err(&self, args: &[&str]) -> String {
        let o = self.cli_raw(args);
        assert!(
            !o.status.success(),
            "{} {args:?} should fail: {}",
            self.name,
            out_of(&o)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub fn user_id(&self) -> String {
        self.cli(&["whoami"])["user_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `send`, retried while the node says key agreement is still settling.
    pub fn send(&self, guild: &str, channel: &str, text: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let o = self.cli_raw(&["send", guild, channel, text]);
            if o.status.success() {
                return serde_json::from_slice(&o.stdout).unwrap();
            }
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                (err.contains("try again") || err.contains("still joining"))
                    && Instant::now() < deadline,
                "{} cannot send: {err}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn texts(&self, guild: &str, channel: &str) -> Vec<(String, String)> {
        let h = self.cli(&["history", guild, channel, "--limit", "1000"]);
        h.as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["nickname"].as_str().unwrap().to_owned(),
                    m["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// `events` of this node as a channel of JSON lines (the child process ends when dropped
    /// or killed by the caller).
    pub fn events(&self) -> (Child, std::sync::mpsc::Receiver<String>) {
        let mut ev = bin()
            .arg("--data-dir")
            .arg(self.path())
            .arg("events")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = ev.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (ev, rx)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL on Unix
            c.wait().unwrap();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = self.cli_raw(&["stop"]);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `f` until it holds or `WAIT` passes; says which (for tests that print their own
/// diagnosis on failure).
pub fn holds_within(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `n` lists `count` members, all in key agreement.
pub fn wait_keyed(n: &Node, guild: &str, count: usize) {
    until(&format!("{} to see {count} keyed members", n.name), || {
        let m = n.cli(&["members", guild]);
        let m = m.as_array().unwrap();
        (m.len() == count && m.iter().all(|x| x["keyed"] == true)).then_some(())
    });
}

/// The real `securecomm-relay` binary, as a relay operator runs it.
///
/// Cargo gives integration tests the path of their own package's binaries only; the relay's
/// binary sits next to ours in the same target directory when the workspace is built (as
/// `make test` does).
pub struct TestRelay {
    pub child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

pub fn relay_binary() -> PathBuf {
    let node = PathBuf::from(env!("CARGO_BIN_EXE_securecomm-node"));
    let relay = node.with_file_name("securecomm-relay");
    assert!(
        relay.exists(),
        "{} is missing: build it first (`cargo build -p securecomm-rendezvous`, or run the \
         whole workspace's tests as `make test` does)",
        relay.display()
    );
    relay
}

impl TestRelay {
    pub fn start(capture: Option<PathBuf>) -> Self {
        Self::start_with(capture, None, &[])
    }

    /// Starts a relay with a capture file, a TOML configuration (as `--config`) and extra
    /// command-line arguments (e.g. `--peer ADDR`).
    pub fn start_with(capture: Option<PathBuf>, config: Option<&str>, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stderr = std::fs::File::create(dir.path().join("relay.log")).unwrap();
        let mut cmd = Command::new(relay_binary());
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(c) = &capture {
            cmd.arg("--capture").arg(c);
        }
        if let Some(toml) = config {
            let path = dir.path().join("relay.toml");
            std::fs::write(&path, toml).unwrap();
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap_or_default();
                panic!("the relay printed no address; its log:\n{log}")
            });
        assert!(
            addr.starts_with("/ip4/127.0.0.1/tcp/") && addr.contains("/p2p/"),
            "{addr}"
        );
        Self { child, addr, dir }
    }

    /// The relay's peer id (the end of its address).
    pub fn peer_id(&self) -> String {
        self.addr.rsplit('/').next().unwrap().to_owned()
    }

    /// SIGKILL: the relay dies without closing anything.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for TestRelay {
    /// SIGTERM (graceful: the capture file is flushed), then wait.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // already dead (and reaped: its pid may belong to someone else now)
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn create_and_invite(owner: &Node, name: &str, uses: u32) -> (String, String) {
    let g = owner.cli(&["guild", "create", name]);
    let gid = g["id"].as_str().unwrap().to_owned();
    let inv = owner.cli(&[
        "invite",
        "create",
        &gid,
        "--expires",
        "3600",
        "--uses",
        &uses.to_string(),
    ]);
    (gid, inv["code"].as_str().unwrap().to_owned())
}
