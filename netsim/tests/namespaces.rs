//! End-to-end tests in real network namespaces (need root, `ip` and `nft`; skipped with a
//! message otherwise). The smoke test also needs `securecomm-node` and `securecomm-relay` built
//! into the same target directory (`cargo build -p securecomm-node -p securecomm-rendezvous --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests share the machine's namespace list: one at a time, so leak checks are exact.
static SERIAL: Mutex<()> = Mutex::new(());

fn netsim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_securecomm-netsim"))
}

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
}

fn can_run() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let has = |p: &str, a: &str| {
        Command::new(p)
            .arg(a)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(root && has("ip", "-V") && has("nft", "--version")) {
        eprintln!("SKIPPED: network namespace tests need root, `ip` and `nft`");
        return false;
    }
    true
}

fn netsim_namespaces() -> BTreeSet<String> {
    let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| securecomm_netsim::topology::is_netsim_namespace(n))
        .map(str::to_owned)
        .collect()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `f` and checks it leaves no netsim namespace behind.
fn no_leaks(f: impl FnOnce()) {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let before = netsim_namespaces();
    f();
    let after = netsim_namespaces();
    assert_eq!(before, after, "namespaces left behind");
}

/// Every NAT kind, built from its nftables ruleset, shows the mapping and filtering behaviour
/// its label claims (the self-test passes for all eight sites).
#[test]
fn every_nat_kind_behaves_as_labelled() {
    if !can_run() {
        return;
    }
    no_leaks(|| {
        let o = netsim()
            .arg("selftest")
            .arg(scenario("nat-kinds.toml"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            out.lines().filter(|l| l.contains(" ok ")).count(),
            8,
            "{out}"
        );
        assert!(
            out.contains("\"filtering\":\"endpoint-independent\""),
            "{out}"
        );
        assert!(out.contains("\"mapping\":\"dependent\""), "{out}");
    });
}

/// A router labelled full cone but configured port-restricted, and one labelled symmetric but
/// configured port-restricted, are both caught, with the differing behaviour named.
#[test]
fn a_mislabelled_router_is_caught() {
    if !can_run() {
        return;
    }
    no_leaks(|| {
        for (apply, label, diff) in [
            ("full=port-restricted", "FullCone", "filtering"),
            ("sym=port-restricted", "Symmetric", "mapping"),
            ("fw=udp-blocked", "Tcp443Only", "tcp 4001"),
        ] {
            let o = netsim()
                .arg("selftest")
                .arg(scenario("nat-kinds.toml"))
                .args(["--apply", apply])
                .output()
                .unwrap();
            assert!(!o.status.success(), "{apply}: {}", text(&o));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("NAT self-test failed") && err.contains(label) && err.contains(diff),
                "{apply}: {err}"
            );
        }
    });
}

/// SIGINT in the middle of building removes every namespace and process of the run.
#[test]
fn interrupted_run_cleans_up() {
    if !can_run() {
        return;
    }
    no_leaks(|| {
        let before = netsim_namespaces();
        let mut child = netsim()
            .arg("selftest")
            .arg(scenario("nat-kinds.toml"))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while netsim_namespaces().len() < before.len() + 4 {
            assert!(Instant::now() < deadline, "no namespaces appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{status}");
    });
}

/// `netsim/scenarios/smoke.toml`: one relay, two sites behind port-restricted NATs, a guild;
/// every message received exactly once by every member, every pair connected.
#[test]
fn smoke_scenario_passes() {
    if !can_run() {
        return;
    }
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let node = dir.join("securecomm-node");
    let relay = dir.join("securecomm-relay");
    for b in [&node, &relay] {
        assert!(
            b.is_file(),
            "{} is missing: build the workspace first (`cargo build -p securecomm-node \
             -p securecomm-rendezvous --bins` into the same target directory)",
            b.display()
        );
    }
    no_leaks(|| {
        let json = std::env::temp_dir().join(format!("netsim-smoke-{}.json", std::process::id()));
        let started = Instant::now();
        let o = netsim()
            .arg("run")
            .arg(scenario("smoke.toml"))
            .arg("--json")
            .arg(&json)
            .env("SECURECOMM_NODE_BIN", &node)
            .env("SECURECOMM_RELAY_BIN", &relay)
            .output()
            .unwrap();
        eprintln!("smoke took {:?}\n{}", started.elapsed(), text(&o));
        assert!(o.status.success(), "{}", text(&o));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let _ = std::fs::remove_file(&json);
        assert_eq!(report["passed"], true);
        assert_eq!(report["messages"].as_array().unwrap().len(), 3);
        for m in report["messages"].as_array().unwrap() {
            for r in m["receipts"].as_array().unwrap() {
                assert_eq!(r["count"], 1, "{m}");
            }
        }
        assert_eq!(report["pairs"].as_array().unwrap().len(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "smoke too slow"
        );
    });
}

/// `cleanup` removes a leftover netsim namespace (and the process inside) and nothing else.
#[test]
fn cleanup_removes_leftovers_of_a_crashed_run() {
    if !can_run() {
        return;
    }
    no_leaks(|| {
        let leftover = "scn0c1ea7-inet";
        let other = format!("netsim-keep-{}", std::process::id());
        for ns in [leftover, other.as_str()] {
            let s = Command::new("ip")
                .args(["netns", "add", ns])
                .status()
                .unwrap();
            assert!(s.success(), "ip netns add {ns}");
        }
        let mut sleeper = Command::new("ip")
            .args(["netns", "exec", leftover, "sleep", "600"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let o = netsim().arg("cleanup").output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(leftover),
            "{}",
            text(&o)
        );
        let status = sleeper.wait().unwrap();
        assert!(
            !status.success(),
            "the process inside was not killed: {status}"
        );
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(!list.contains(leftover), "{list}");
        assert!(
            list.contains(&other),
            "cleanup removed a foreign namespace: {list}"
        );
        Command::new("ip")
            .args(["netns", "del", &other])
            .status()
            .unwrap();
    });
}

/// `scenarios/impaired.toml` through `linktest`: the user-space forwarder adds the configured
/// delay (round trip: twice the one-way delay), drops about the configured share in bursts,
/// reorders under jitter and limits the rate; the clean path before it started had none of it.
#[test]
fn impaired_links_delay_drop_and_limit_as_configured() {
    if !can_run() {
        return;
    }
    no_leaks(|| {
        let json = std::env::temp_dir().join(format!("netsim-link-{}.json", std::process::id()));
        let o = netsim()
            .arg("linktest")
            .arg(scenario("impaired.toml"))
            .args(["--count", "2000", "--interval-ms", "5", "--json"])
            .arg(&json)
            .output()
            .unwrap();
        eprintln!("{}", text(&o));
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let _ = std::fs::remove_file(&json);
        let site = |name: &str| {
            v.as_array()
                .unwrap()
                .iter()
                .find(|r| r["site"] == name)
                .unwrap()
                .clone()
        };
        let p50 = |r: &serde_json::Value| {
            let mut rtts: Vec<f64> = r["measured"]["rtt_ms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            rtts.sort_by(f64::total_cmp);
            rtts[rtts.len() / 2]
        };
        let loss = |r: &serde_json::Value| {
            1.0 - r["measured"]["received"].as_f64().unwrap()
                / r["measured"]["sent"].as_f64().unwrap()
        };
        let slow = site("slow");
        assert!(slow["base_rtt_ms"].as_f64().unwrap() < 5.0, "{slow}");
        let d = p50(&slow);
        assert!(
            (50.0..56.0).contains(&d),
            "slow link p50 rtt {d} ms, want 50-56"
        );
        assert!(loss(&slow) < 0.005, "slow link lost {}", loss(&slow));
        let lossy = site("lossy");
        let l = loss(&lossy);
        assert!(
            (0.10..0.28).contains(&l),
            "lossy link lost {l}, configured 19% round trip"
        );
        assert!(
            lossy["measured"]["reordered"].as_u64().unwrap() > 0,
            "{lossy}"
        );
        let t = p50(&site("thin"));
        assert!((1.5..10.0).contains(&t), "thin link p50 rtt {t} ms");
    });
}
