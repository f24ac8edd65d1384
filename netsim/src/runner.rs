//! Runs a scenario: topology, NAT self-test, relays and nodes, guild setup, timeline, audit.
//!
//! Nodes are driven through the real `securecomm-node` CLI (`--json`) against each node's control
//! socket, which lives in its data directory, so the CLI runs in the root namespace while the
//! node runs inside its host's namespace. Every message text gets a ` #<step>` suffix so the
//! audit can count each message exactly.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{NetsimError, Result};
use crate::nat;
use crate::probe::{self, Observation};
use crate::report::{MessageAudit, PairReport, Receipt, Report, SelfTestReport};
use crate::scenario::{Action, NatKind, Scenario};
use crate::sys;
use crate::topology::{PROBE1, PROBE2, Topology};

/// The passphrase every simulated node uses.
const PASS: &str = "netsim passphrase";
/// How long pairs of members may take to connect after the timeline before the run fails.
const CONNECT_SETTLE: Duration = Duration::from_secs(30);

/// How long any single wait (node start, join, keying, delivery) may take.
const WAIT: Duration = Duration::from_secs(90);

/// Where the binaries are and what to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `securecomm-node`.
    pub node_bin: PathBuf,
    /// `securecomm-relay`.
    pub relay_bin: PathBuf,
    /// `securecomm-netsim` itself (for the probe subcommands).
    pub self_bin: PathBuf,
    /// Configure these sites with a different NAT than their label (self-test tests).
    pub overrides: Vec<(String, NatKind)>,
    /// Keep the run directory (logs, data) even on success.
    pub keep: bool,
}

/// Finds a binary: `$env` if set, else next to the running executable (or its parent, for
/// test binaries in `target/*/deps`).
pub fn locate_binary(env: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(NetsimError::MissingBinary {
                path: p.display().to_string(),
                hint: format!("${env} points at no file"),
            })
        };
    }
    let exe = std::env::current_exe().map_err(|e| NetsimError::io("finding current_exe", e))?;
    let mut tried = Vec::new();
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let cand = d.join(name);
        if cand.is_file() {
            return Ok(cand);
        }
        tried.push(cand.display().to_string());
        dir = d.parent();
    }
    Err(NetsimError::MissingBinary {
        path: tried.join(" or "),
        hint: format!(
            "build the workspace first (`cargo build -p securecomm-node -p securecomm-rendezvous --bins` \
             into the same target directory) or set ${env}"
        ),
    })
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `cmd`; the process is killed when the handle is dropped.
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        let child = cmd.spawn().map_err(|source| NetsimError::Spawn {
            cmd: sys::describe(&cmd),
            source,
        })?;
        Ok(Self { child })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
    let p = dir.join(name);
    std::fs::File::create(&p).map_err(|e| NetsimError::io(format!("creating {}", p.display()), e))
}

/// Runs the NAT self-test: probe servers on the two probe hosts, a probe client on the first
/// host of every site. Fails if any router does not behave as labelled.
pub fn self_test(topo: &Topology, self_bin: &Path) -> Result<Vec<SelfTestReport>> {
    let mut servers = Vec::new();
    for (p, peer) in [(&topo.probes[0], PROBE2), (&topo.probes[1], PROBE1)] {
        let mut cmd = sys::in_ns(&p.ns, self_bin);
        cmd.args(["probe", "serve", "--ip", &p.addr.to_string(), "--peer"])
            .arg(peer.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        servers.push(Proc::spawn(cmd)?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut clients = Vec::new();
    for r in &topo.routers {
        let host = topo
            .hosts
            .iter()
            .find(|h| h.site == r.site)
            .ok_or_else(|| {
                NetsimError::SelfTest(format!("site {:?} has no host to probe from", r.site))
            })?;
        let mut cmd = sys::in_ns(&host.ns, self_bin);
        cmd.args(["probe", "client", "--p1", &PROBE1.to_string(), "--p2"])
            .arg(PROBE2.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| NetsimError::Spawn {
            cmd: sys::describe(&cmd),
            source,
        })?;
        clients.push((r, child));
    }
    let mut out = Vec::new();
    for (r, child) in clients {
        let o = child
            .wait_with_output()
            .map_err(|e| NetsimError::io("waiting for a probe client", e))?;
        let text = String::from_utf8_lossy(&o.stdout);
        let seen: Observation =
            serde_json::from_str(text.trim()).map_err(|_| NetsimError::Unexpected {
                what: format!("probe client output for site {}", r.site),
                expected: "an observation in JSON".into(),
                got: format!("{text} {}", String::from_utf8_lossy(&o.stderr)),
            })?;
        probe::check(&r.site, r.label, &seen)?;
        if seen.udp && r.label != NatKind::None && seen.public_ip() != Some(r.public) {
            return Err(NetsimError::SelfTest(format!(
                "site {:?}: expected public address {}, probes saw {:?}",
                r.site, r.public, seen.mapped
            )));
        }
        out.push(SelfTestReport {
            site: r.site.clone(),
            label: r.label,
            observed: seen,
        });
    }
    drop(servers);
    Ok(out)
}

/// A relay process and its addresses.
#[derive(Debug)]
struct RelayProc {
    ns: String,
    ip: String,
    dir: PathBuf,
    proc_: Option<Proc>,
    addrs: Vec<String>,
}

impl RelayProc {
    fn start(&mut self, bin: &Path, name: &str) -> Result<()> {
        let log = log_file(&self.dir, "relay.log")?;
        let mut cmd = sys::in_ns(&self.ns, bin);
        cmd.arg("--data-dir").arg(self.dir.join("data"));
        for l in ["tcp/4001", "udp/4001/quic-v1", "tcp/443"] {
            cmd.arg("--listen").arg(format!("/ip4/{}/{l}", self.ip));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        let mut p = Proc::spawn(cmd)?;
        let stdout = p
            .child
            .stdout
            .take()
            .ok_or_else(|| NetsimError::Unexpected {
                what: "relay stdout".into(),
                expected: "a pipe".into(),
                got: "none".into(),
            })?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut addrs = Vec::new();
        while addrs.len() < 3 {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) if l.contains("/p2p/") => addrs.push(l),
                Ok(_) => {}
                Err(_) => {
                    return Err(NetsimError::Timeout {
                        what: format!(
                            "relay {name} to print its addresses (log: {})",
                            self.dir.join("relay.log").display()
                        ),
                        secs: 30,
                    });
                }
            }
        }
        self.addrs = addrs;
        self.proc_ = Some(p);
        Ok(())
    }

    fn addr(&self, suffix: &str) -> Option<&String> {
        self.addrs.iter().find(|a| a.contains(suffix))
    }
}

/// One simulated node.
#[derive(Debug)]
struct NodeProc {
    name: String,
    ns: String,
    dir: PathBuf,
    run_args: Vec<String>,
    proc_: Option<Proc>,
    peer_id: String,
}

impl NodeProc {
    fn cli_raw(&self, bin: &Path, args: &[&str]) -> Result<std::process::Output> {
        sys::output(
            Command::new(bin)
                .env("SECURECOMM_PASSPHRASE", PASS)
                .arg("--data-dir")
                .arg(self.dir.join("data"))
                .arg("--json")
                .args(args),
        )
    }

    fn cli(&self, bin: &Path, args: &[&str]) -> Result<Value> {
        let o = self.cli_raw(bin, args)?;
        let text = String::from_utf8_lossy(&o.stdout);
        if !o.status.success() {
            return Err(NetsimError::Command {
                cmd: format!("securecomm-node ({}) {}", self.name, args.join(" ")),
                status: o.status.to_string(),
                output: String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            });
        }
        serde_json::from_str(&text).map_err(|_| NetsimError::Unexpected {
            what: format!("output of `{}` on {}", args.join(" "), self.name),
            expected: "JSON".into(),
            got: text.into_owned(),
        })
    }

    fn start(&mut self, bin: &Path) -> Result<()> {
        let mut cmd = sys::in_ns(&self.ns, bin);
        cmd.env("SECURECOMM_PASSPHRASE", PASS)
            // SECURECOMM_NETSIM_LOG (a tracing filter) makes the nodes say more.
            .env(
                "SECURECOMM_LOG",
                std::env::var("SECURECOMM_NETSIM_LOG").unwrap_or_else(|_| "info".into()),
            )
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("run")
            .args(&self.run_args)
            .stdin(Stdio::null())
            .stdout(log_file(&self.dir, "stdout.log")?)
            .stderr(log_file(&self.dir, "node.log")?);
        self.proc_ = Some(Proc::spawn(cmd)?);
        until(&format!("node {} to start", self.name), || {
            Ok(self
                .cli_raw(bin, &["peers"])?
                .status
                .success()
                .then_some(()))
        })
    }
}

/// Polls `f` every 200 ms until it yields a value or [`WAIT`] passes.
fn until<T>(what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(NetsimError::Timeout {
                what: what.to_owned(),
                secs: WAIT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[derive(Debug)]
struct Sent {
    sender: String,
    channel: String,
    text: String,
    at: Instant,
    members: Vec<String>,
    /// When it was sent, ms on the path watcher's clock.
    sent_ms: u64,
    /// Members cut off by a partition when it was sent.
    exempt: Vec<String>,
    /// Its own latency bound.
    within_ms: Option<u64>,
}

/// Replaces each impaired uplink's kernel bridge with the user-space forwarder (after the
/// self-test, which must see clean links). The forwarders stop when dropped.
pub fn start_impairments(topo: &Topology, self_bin: &Path) -> Result<Vec<Proc>> {
    let mut out = Vec::new();
    for (i, r) in topo.routers.iter().enumerate() {
        let Some(link) = &r.link_ns else { continue };
        let params = serde_json::to_string(&r.uplink).unwrap_or_default();
        topo.unbridge(link)?;
        // Real-time priority (SCHED_FIFO) so a loaded machine delays frames less; the
        // forwarder sleeps in blocking calls between frames.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", link, "chrt", "-f", "10"])
            .arg(self_bin)
            .args(["impair", "--a", "site", "--b", "net", "--params", &params])
            .args(["--seed", &(i as u64 + 1).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        out.push(Proc::spawn(cmd)?);
        eprintln!("netsim: uplink of {} impaired: {params}", r.site);
    }
    Ok(out)
}

/// Runs a scenario end to end and returns its report (`report.passed` says whether every
/// assertion held). Errors are failures to run at all.
pub fn run(scenario: &Scenario, name: &str, opts: &RunOptions) -> Result<Report> {
    sys::check_environment()?;
    let started = Instant::now();
    let prefix = crate::topology::new_prefix();
    let run_dir = std::env::temp_dir().join("securecomm-netsim").join(&prefix);
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| NetsimError::io(format!("creating {}", run_dir.display()), e))?;
    let mut topo = Topology::build(scenario, &prefix, &opts.overrides)?;
    let mut report = Report::new(name, &prefix, &run_dir);
    report.max_latency_ms = scenario.max_latency_ms;
    report.selftest = self_test(&topo, &opts.self_bin)?;
    report.build_ms = started.elapsed().as_millis() as u64;
    eprintln!(
        "netsim: topology and NAT self-test ok ({} ms)",
        report.build_ms
    );
    let _impairments = start_impairments(&topo, &opts.self_bin)?;

    // Relays.
    let mut relays: BTreeMap<String, RelayProc> = BTreeMap::new();
    for r in &topo.relays {
        let dir = run_dir.join(format!("relay-{}", r.name));
        std::fs::create_dir_all(&dir)
            .map_err(|e| NetsimError::io(format!("creating {}", dir.display()), e))?;
        let mut rp = RelayProc {
            ns: r.ns.clone(),
            ip: r.addr.to_string(),
            dir,
            proc_: None,
            addrs: Vec::new(),
        };
        rp.start(&opts.relay_bin, &r.name)?;
        relays.insert(r.name.clone(), rp);
    }

    // Nodes.
    let mut nodes: BTreeMap<String, NodeProc> = BTreeMap::new();
    for h in &topo.hosts {
        let dir = run_dir.join(format!("node-{}", h.name));
        std::fs::create_dir_all(&dir)
            .map_err(|e| NetsimError::io(format!("creating {}", dir.display()), e))?;
        let kind = topo.router(&h.site).map_or(NatKind::None, |r| r.label);
        // QUIC to the relay where UDP works: QUIC dials reuse the listening socket, so the
        // relay observes the NAT mapping of the node's listen port, which hole punching needs.
        let suffix = match kind {
            NatKind::Tcp443Only => "/tcp/443/",
            NatKind::UdpBlocked => "/tcp/4001/",
            _ => "/udp/4001/quic-v1/",
        };
        let mut run_args = vec![
            "--listen".to_owned(),
            "/ip4/0.0.0.0/tcp/4001".to_owned(),
            "--listen".to_owned(),
            "/ip4/0.0.0.0/udp/4001/quic-v1".to_owned(),
        ];
        for r in relays.values() {
            if let Some(a) = r.addr(suffix) {
                run_args.push("--relay".into());
                run_args.push(a.clone());
            }
        }
        let mut n = NodeProc {
            name: h.name.clone(),
            ns: h.ns.clone(),
            dir,
            run_args,
            proc_: None,
            peer_id: String::new(),
        };
        let o = n.cli_raw(&opts.node_bin, &["init", "--name", &h.name])?;
        if !o.status.success() {
            return Err(NetsimError::Command {
                cmd: format!("securecomm-node ({}) init", h.name),
                status: o.status.to_string(),
                output: String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            });
        }
        n.start(&opts.node_bin)?;
        // The running node's addresses end in `/p2p/<its peer id>`.
        let addrs = n.cli(&opts.node_bin, &["listen-addrs"])?;
        n.peer_id = addrs
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .and_then(|a| a.rsplit("/p2p/").next())
            .map(str::to_owned)
            .ok_or_else(|| NetsimError::Unexpected {
                what: format!("listen-addrs of {}", h.name),
                expected: "addresses ending in /p2p/<peer id>".into(),
                got: addrs.to_string(),
            })?;
        nodes.insert(h.name.clone(), n);
    }

    let watch_t0 = Instant::now();
    let watcher = PathWatcher::start(&nodes, bin_of(opts), watch_t0);
    // When each member finished joining, ms on the watcher's clock.
    let mut joined_at: BTreeMap<String, u64> = BTreeMap::new();

    // Guild.
    let members = scenario.initial_members();
    let owner_name = scenario.owner().unwrap_or_default().to_owned();
    let owner = nodes
        .get(&owner_name)
        .ok_or_else(|| NetsimError::Unexpected {
            what: "guild owner".into(),
            expected: "a host".into(),
            got: owner_name.clone(),
        })?;
    let bin = &opts.node_bin;
    let gid = owner.cli(bin, &["guild", "create", "netsim"])?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut channels: Vec<&str> = scenario
        .timeline
        .iter()
        .filter_map(|s| match &s.action {
            Action::Send { channel, .. } if channel != "general" => Some(channel.as_str()),
            _ => None,
        })
        .collect();
    channels.sort_unstable();
    channels.dedup();
    for c in channels {
        owner.cli(bin, &["channel", "create", &gid, c])?;
    }
    let mut voice_channels: Vec<&str> = scenario
        .timeline
        .iter()
        .filter_map(|s| match &s.action {
            Action::Call { channel, .. } => Some(channel.as_str()),
            _ => None,
        })
        .collect();
    voice_channels.sort_unstable();
    voice_channels.dedup();
    for c in voice_channels {
        owner.cli(bin, &["channel", "create", &gid, c, "--voice"])?;
    }
    let mut joined = vec![owner_name.clone()];
    joined_at.insert(owner_name.clone(), watch_t0.elapsed().as_millis() as u64);
    for m in members.iter().skip(1) {
        join(&nodes, bin, &owner_name, m, &gid)?;
        joined.push(m.clone());
        joined_at.insert(m.clone(), watch_t0.elapsed().as_millis() as u64);
    }
    wait_keyed(&nodes, bin, &joined, &gid)?;
    report.setup_ms = started.elapsed().as_millis() as u64;
    eprintln!(
        "netsim: guild of {} keyed ({} ms)",
        joined.len(),
        report.setup_ms
    );

    // Timeline.
    let t0 = Instant::now();
    let mut sent: Vec<Sent> = Vec::new();
    let mut auditor = Auditor::default();
    let mut partitioned: std::collections::BTreeSet<String> = Default::default();
    for (i, step) in scenario.timeline.iter().enumerate() {
        let at = t0 + Duration::from_millis(step.at_ms);
        while Instant::now() < at {
            if !sent.is_empty() {
                auditor.poll(&nodes, bin, &gid, &sent)?;
            }
            let left = at.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        eprintln!(
            "netsim: t={} ms step {i}: {:?}",
            t0.elapsed().as_millis(),
            step.action
        );
        if !matches!(step.action, Action::Send { .. }) {
            report.events.push(crate::report::TimelineEvent {
                at_ms: watch_t0.elapsed().as_millis() as u64,
                what: step.action.label(),
            });
        }
        match &step.action {
            Action::Send {
                host,
                channel,
                text,
                within_ms,
            } => {
                let text = format!("{text} #{i}");
                let n = node(&nodes, host)?;
                send(n, bin, &gid, channel, &text)?;
                let cut_off =
                    |h: &String| topo.host(h).is_some_and(|x| partitioned.contains(&x.site));
                let exempt = if cut_off(host) {
                    joined.iter().filter(|m| *m != host).cloned().collect()
                } else {
                    joined.iter().filter(|m| cut_off(m)).cloned().collect()
                };
                sent.push(Sent {
                    sender: host.clone(),
                    channel: channel.clone(),
                    text,
                    at: Instant::now(),
                    sent_ms: watch_t0.elapsed().as_millis() as u64,
                    members: joined.clone(),
                    exempt,
                    within_ms: *within_ms,
                });
            }
            Action::Join { host } => {
                join(&nodes, bin, &owner_name, host, &gid)?;
                joined.push(host.clone());
                joined_at.insert(host.clone(), watch_t0.elapsed().as_millis() as u64);
                wait_keyed(&nodes, bin, &joined, &gid)?;
            }
            Action::KillRelay { relay } => {
                if let Some(mut p) = relays.get_mut(relay).and_then(|r| r.proc_.take()) {
                    p.kill();
                }
            }
            Action::StartRelay { relay } => {
                if let Some(r) = relays.get_mut(relay) {
                    r.start(&opts.relay_bin, relay)?;
                }
            }
            Action::Partition { site } | Action::Heal { site } => {
                let r = topo.router(site).ok_or_else(|| NetsimError::Unexpected {
                    what: "site".into(),
                    expected: "a site of the scenario".into(),
                    got: site.clone(),
                })?;
                if matches!(step.action, Action::Partition { .. }) {
                    sys::nft_load(&r.edge_ns, &nat::partition_ruleset("wan"))?;
                    partitioned.insert(site.clone());
                } else {
                    sys::nft(&r.edge_ns, &["delete", "table", "ip", "netsim_partition"])?;
                    partitioned.remove(site);
                }
            }
            Action::Call {
                hosts,
                channel,
                turn_ms,
                lead_ms,
                min_pesq,
            } => {
                let spec = CallSpec {
                    hosts,
                    channel,
                    turn_ms: *turn_ms,
                    lead_ms: *lead_ms,
                    min_pesq: *min_pesq,
                };
                let dir = crate::voice::call_dir(&run_dir, i);
                report.calls.push(call(&nodes, bin, &gid, &spec, &dir)?);
            }
            Action::FlushNat { site } => topo.flush_nat(site)?,
            Action::ChangeAddress { site } => {
                let new = topo.change_address(site)?;
                eprintln!("netsim: site {site} is now at {new}");
            }
        }
    }

    // Audit.
    report.messages = auditor.finish(&nodes, bin, &gid, &sent)?;
    // Members who never met connect through the node's reconnect round (with backoff), so the
    // last pairs may still be on their way when the timeline ends: give them until
    // CONNECT_SETTLE before judging.
    let settle = Instant::now() + CONNECT_SETTLE;
    while Instant::now() < settle {
        let now = pairs(&nodes, bin, &joined, &PairTimes::default(), &joined_at)?;
        if now.iter().all(PairReport::connected) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let times = watcher.stop();
    report.pairs = pairs(&nodes, bin, &joined, &times, &joined_at)?;
    report.total_ms = started.elapsed().as_millis() as u64;
    report.finish();
    drop(nodes);
    drop(relays);
    drop(topo);
    if report.passed && !opts.keep {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(report)
}

struct CallSpec<'a> {
    hosts: &'a [String],
    channel: &'a str,
    turn_ms: u64,
    lead_ms: u64,
    min_pesq: f64,
}

/// A voice call step (see [`crate::voice`]): join, wait for paths, let everyone speak in turn,
/// leave, score every recording.
fn call(
    nodes: &BTreeMap<String, NodeProc>,
    bin: &Path,
    gid: &str,
    spec: &CallSpec<'_>,
    dir: &Path,
) -> Result<crate::report::CallReport> {
    use crate::report::{CallPath, CallReport, CallScore};
    std::fs::create_dir_all(dir).map_err(|e| NetsimError::io(dir.display().to_string(), e))?;
    let n = spec.hosts.len();
    let mut speech = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        let s = crate::voice::speech(dir, i, spec.turn_ms.saturating_sub(500))?;
        crate::voice::compose(
            &dir.join(format!("{h}-in.wav")),
            &s,
            spec.lead_ms,
            spec.turn_ms,
            i,
            n,
        )?;
        speech.push(s);
    }
    // Peer id -> host name, for the statuses.
    let host_of: BTreeMap<String, String> = spec
        .hosts
        .iter()
        .filter_map(|h| nodes.get(h).map(|p| (p.peer_id.clone(), h.clone())))
        .collect();
    let mut joined_at: BTreeMap<String, Instant> = BTreeMap::new();
    for h in spec.hosts {
        let p = node(nodes, h)?;
        let input = dir.join(format!("{h}-in.wav"));
        let output = dir.join(format!("{h}-out.wav"));
        let (i, o) = (input.display().to_string(), output.display().to_string());
        p.cli(
            bin,
            &[
                "voice",
                "join",
                gid,
                spec.channel,
                "--input",
                &i,
                "--output",
                &o,
            ],
        )?;
        joined_at.insert(h.clone(), Instant::now());
    }
    // Watch paths until every participant has one to every other, or the lead-in is over.
    let mut connected: BTreeMap<(String, String), u64> = BTreeMap::new();
    let lead_end = joined_at
        .values()
        .max()
        .copied()
        .unwrap_or_else(Instant::now)
        + Duration::from_millis(spec.lead_ms);
    let mut last: BTreeMap<String, Value> = BTreeMap::new();
    while Instant::now() < lead_end {
        for h in spec.hosts {
            let st = node(nodes, h)?.cli(bin, &["voice", "status"])?;
            for p in st["participants"].as_array().into_iter().flatten() {
                let Some(to) = p["peer"].as_str().and_then(|x| host_of.get(x)) else {
                    continue;
                };
                let usable = p["path"] == "direct" || p["path"] == "relayed";
                if usable {
                    let since = joined_at[h].elapsed().as_millis() as u64;
                    connected.entry((h.clone(), to.clone())).or_insert(since);
                }
            }
            last.insert(h.clone(), st);
        }
        if connected.len() == n * (n - 1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // The last turn ends lead + n turns after the last join; add playout and a margin.
    let end = lead_end + Duration::from_millis(spec.turn_ms * n as u64 + 1500);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250));
    }
    for h in spec.hosts {
        let st = node(nodes, h)?.cli(bin, &["voice", "status"])?;
        last.insert(h.clone(), st);
    }
    for h in spec.hosts {
        node(nodes, h)?.cli(bin, &["voice", "leave"])?;
    }
    let mut paths = Vec::new();
    for from in spec.hosts {
        for to in spec.hosts.iter().filter(|t| *t != from) {
            let st = last.get(from).cloned().unwrap_or_default();
            let p = st["participants"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["peer"].as_str().and_then(|x| host_of.get(x)) == Some(to))
                .cloned();
            paths.push(match p {
                Some(p) => CallPath {
                    from: from.clone(),
                    to: to.clone(),
                    path: p["path"].as_str().unwrap_or("connecting").to_owned(),
                    rtt_ms: p["rtt_ms"].as_f64(),
                    loss: p["loss"].as_f64().unwrap_or(0.0),
                    jitter_buffer_ms: p["jitter_buffer_ms"].as_f64().unwrap_or(0.0),
                    via_relay: p["via_relay"].as_u64().unwrap_or(0),
                    via_direct: p["via_direct"].as_u64().unwrap_or(0),
                    connected_ms: connected.get(&(from.clone(), to.clone())).copied(),
                },
                None => CallPath {
                    from: from.clone(),
                    to: to.clone(),
                    path: "missing".into(),
                    rtt_ms: None,
                    loss: 0.0,
                    jitter_buffer_ms: 0.0,
                    via_relay: 0,
                    via_direct: 0,
                    connected_ms: None,
                },
            });
        }
    }
    let mut scores = Vec::new();
    for (li, listener) in spec.hosts.iter().enumerate() {
        let rec = dir.join(format!("{listener}-out.wav"));
        let scratch = dir.join(format!("{listener}-out-16k.wav"));
        for (si, speaker) in spec.hosts.iter().enumerate() {
            if si == li {
                continue;
            }
            // Both files start at their host's join: the speaker's turn sits at lead + its
            // slot on its own clock, shifted by how much later it joined.
            let shift = joined_at[speaker].saturating_duration_since(joined_at[listener]);
            let back = joined_at[listener].saturating_duration_since(joined_at[speaker]);
            let expected = (spec.lead_ms + si as u64 * spec.turn_ms) as i64
                + shift.as_millis() as i64
                - back.as_millis() as i64;
            let heard = crate::voice::score(&rec, &speech[si], expected, 1500, &scratch)?;
            scores.push(CallScore::new(listener, speaker, heard));
        }
    }
    Ok(CallReport {
        channel: spec.channel.to_owned(),
        hosts: spec.hosts.to_vec(),
        min_pesq: spec.min_pesq,
        paths,
        scores,
    })
}

fn node<'a>(nodes: &'a BTreeMap<String, NodeProc>, name: &str) -> Result<&'a NodeProc> {
    nodes.get(name).ok_or_else(|| NetsimError::Unexpected {
        what: "host".into(),
        expected: "a host of the scenario".into(),
        got: name.to_owned(),
    })
}

/// The owner issues an invite that carries a relayed address; `host` joins with it.
fn join(
    nodes: &BTreeMap<String, NodeProc>,
    bin: &Path,
    owner: &str,
    host: &str,
    gid: &str,
) -> Result<()> {
    let o = node(nodes, owner)?;
    let code = until("an invite with a relayed address", || {
        let inv = o.cli(
            bin,
            &["invite", "create", gid, "--expires", "3600", "--uses", "1"],
        )?;
        let relayed = inv["addrs"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x.as_str().is_some_and(|s| s.contains("p2p-circuit")))
        });
        Ok(relayed.then(|| inv["code"].as_str().unwrap_or_default().to_owned()))
    })?;
    let n = node(nodes, host)?;
    let mut last = String::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match n.cli(bin, &["guild", "join", &code]) {
            Ok(j) if j["ready"] == true => return Ok(()),
            Ok(j) => last = j.to_string(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(NetsimError::Timeout {
        what: format!("{host} to join the guild (last: {last})"),
        secs: WAIT.as_secs(),
    })
}

fn wait_keyed(
    nodes: &BTreeMap<String, NodeProc>,
    bin: &Path,
    members: &[String],
    gid: &str,
) -> Result<()> {
    for m in members {
        let n = node(nodes, m)?;
        until(
            &format!("{m} to see {} keyed members", members.len()),
            || {
                let v = n.cli(bin, &["members", gid])?;
                let ok = v.as_array().is_some_and(|a| {
                    a.len() == members.len() && a.iter().all(|x| x["keyed"] == true)
                });
                Ok(ok.then_some(()))
            },
        )?;
    }
    Ok(())
}

/// `send`, retried while key agreement settles.
fn send(n: &NodeProc, bin: &Path, gid: &str, channel: &str, text: &str) -> Result<()> {
    until(&format!("{} to send", n.name), || {
        let o = n.cli_raw(bin, &["send", gid, channel, text])?;
        if o.status.success() {
            return Ok(Some(()));
        }
        let err = String::from_utf8_lossy(&o.stderr);
        if err.contains("try again") || err.contains("still joining") {
            Ok(None)
        } else {
            Err(NetsimError::Command {
                cmd: format!("securecomm-node ({}) send", n.name),
                status: o.status.to_string(),
                output: err.trim().to_owned(),
            })
        }
    })
}

/// Watches every member's history: who has which sent message how many times, and when it was
/// first seen. Polled between timeline steps and after the timeline, so the latency of a message
/// is measured from its `send` returning to the first poll that found it at a member (a poll
/// round takes one `history` CLI call per member and channel, ~10-30 ms each).
#[derive(Debug, Default)]
struct Auditor {
    first_seen: BTreeMap<(usize, String), u64>,
    counts: BTreeMap<(usize, String), usize>,
}

impl Auditor {
    fn poll(
        &mut self,
        nodes: &BTreeMap<String, NodeProc>,
        bin: &Path,
        gid: &str,
        sent: &[Sent],
    ) -> Result<()> {
        let mut channels: Vec<&str> = sent.iter().map(|s| s.channel.as_str()).collect();
        channels.sort_unstable();
        channels.dedup();
        let members: std::collections::BTreeSet<&String> =
            sent.iter().flat_map(|s| &s.members).collect();
        for m in members {
            let n = node(nodes, m)?;
            for c in &channels {
                let h = n.cli(bin, &["history", gid, c, "--limit", "10000"])?;
                let texts: Vec<&str> = h
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x["text"].as_str()).collect())
                    .unwrap_or_default();
                for (i, s) in sent.iter().enumerate().filter(|(_, s)| s.channel == *c) {
                    let k = texts.iter().filter(|t| **t == s.text).count();
                    self.counts.insert((i, m.clone()), k);
                    if k > 0 {
                        self.first_seen
                            .entry((i, m.clone()))
                            .or_insert_with(|| s.at.elapsed().as_millis() as u64);
                    }
                }
            }
        }
        Ok(())
    }

    fn complete(&self, sent: &[Sent]) -> bool {
        sent.iter().enumerate().all(|(i, s)| {
            s.members
                .iter()
                .all(|m| self.counts.get(&(i, m.clone())).is_some_and(|k| *k >= 1))
        })
    }

    /// Polls until every message reached every member (or [`WAIT`] passed), then a last round
    /// after a short settle time so late duplicates are counted too.
    fn finish(
        mut self,
        nodes: &BTreeMap<String, NodeProc>,
        bin: &Path,
        gid: &str,
        sent: &[Sent],
    ) -> Result<Vec<MessageAudit>> {
        let deadline = Instant::now() + WAIT;
        loop {
            self.poll(nodes, bin, gid, sent)?;
            if self.complete(sent) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(1));
        self.poll(nodes, bin, gid, sent)?;
        Ok(sent
            .iter()
            .enumerate()
            .map(|(i, s)| MessageAudit {
                sender: s.sender.clone(),
                channel: s.channel.clone(),
                text: s.text.clone(),
                receipts: s
                    .members
                    .iter()
                    .map(|m| Receipt {
                        host: m.clone(),
                        count: self.counts.get(&(i, m.clone())).copied().unwrap_or(0),
                        latency_ms: self.first_seen.get(&(i, m.clone())).copied(),
                    })
                    .collect(),
                latency_exempt: s.exempt.clone(),
                sent_ms: s.sent_ms,
                max_latency_ms: s.within_ms,
            })
            .collect())
    }
}

fn bin_of(opts: &RunOptions) -> PathBuf {
    opts.node_bin.clone()
}

/// When each pair (keyed by names in host order) was first seen connected and direct.
#[derive(Debug, Default, Clone)]
struct PairTimes {
    connected: BTreeMap<(String, String), u64>,
    direct: BTreeMap<(String, String), u64>,
    /// Each pair's path whenever it changed: (ms, "none" | "relayed" | "direct"), best of the
    /// two sides' views in one poll round.
    changes: BTreeMap<(String, String), Vec<(u64, &'static str)>>,
}

/// A thread polling every node's `peers` every 250 ms from the moment all nodes are up, so the
/// report can say when each pair first connected and first went direct (precision: one poll
/// round, 250 ms plus one CLI call per node).
#[derive(Debug)]
struct PathWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<PairTimes>,
}

impl PathWatcher {
    fn start(nodes: &BTreeMap<String, NodeProc>, bin: PathBuf, t0: Instant) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // (name, data dir, peer id), in host order.
        let list: Vec<(String, PathBuf, String)> = nodes
            .values()
            .map(|n| (n.name.clone(), n.dir.join("data"), n.peer_id.clone()))
            .collect();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut times = PairTimes::default();
            let mut last: BTreeMap<(String, String), &'static str> = BTreeMap::new();
            while !flag.load(Ordering::SeqCst) {
                let mut round: BTreeMap<(String, String), &'static str> = BTreeMap::new();
                for (name, dir, _) in &list {
                    let Ok(o) = sys::output(
                        Command::new(&bin)
                            .env("SECURECOMM_PASSPHRASE", PASS)
                            .arg("--data-dir")
                            .arg(dir)
                            .args(["--json", "peers"]),
                    ) else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) else {
                        continue;
                    };
                    let now = t0.elapsed().as_millis() as u64;
                    for p in v.as_array().into_iter().flatten() {
                        let Some((other, _, _)) =
                            list.iter().find(|(_, _, id)| p["peer"] == id.as_str())
                        else {
                            continue;
                        };
                        let key = if name < other {
                            (name.clone(), other.clone())
                        } else {
                            (other.clone(), name.clone())
                        };
                        times.connected.entry(key.clone()).or_insert(now);
                        let path = if p["path"] == "direct" {
                            times.direct.entry(key.clone()).or_insert(now);
                            "direct"
                        } else {
                            "relayed"
                        };
                        let best = round.entry(key).or_insert(path);
                        if path == "direct" {
                            *best = "direct";
                        }
                    }
                }
                let now = t0.elapsed().as_millis() as u64;
                for (i, (a, _, _)) in list.iter().enumerate() {
                    for (b, _, _) in list.iter().skip(i + 1) {
                        let key = if a < b {
                            (a.clone(), b.clone())
                        } else {
                            (b.clone(), a.clone())
                        };
                        let state = round.get(&key).copied().unwrap_or("none");
                        if last.get(&key).copied().unwrap_or("none") != state {
                            last.insert(key.clone(), state);
                            let v = times.changes.entry(key).or_default();
                            if v.len() < 1000 {
                                v.push((now, state));
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            times
        });
        Self { stop, handle }
    }

    fn stop(self) -> PairTimes {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap_or_default()
    }
}

/// The path between every pair of members, as each side sees it.
fn pairs(
    nodes: &BTreeMap<String, NodeProc>,
    bin: &Path,
    members: &[String],
    times: &PairTimes,
    joined_at: &BTreeMap<String, u64>,
) -> Result<Vec<PairReport>> {
    let mut views: BTreeMap<String, Value> = BTreeMap::new();
    for m in members {
        views.insert(m.clone(), node(nodes, m)?.cli(bin, &["peers"])?);
    }
    let path = |from: &str, to: &NodeProc| -> Option<String> {
        views.get(from)?.as_array()?.iter().find_map(|p| {
            (p["peer"] == to.peer_id.as_str()).then(|| p["path"].as_str().unwrap_or("?").to_owned())
        })
    };
    let mut out = Vec::new();
    for (i, a) in members.iter().enumerate() {
        for b in members.iter().skip(i + 1) {
            let key = if a < b {
                (a.clone(), b.clone())
            } else {
                (b.clone(), a.clone())
            };
            out.push(PairReport {
                a: a.clone(),
                b: b.clone(),
                a_to_b: path(a, node(nodes, b)?),
                b_to_a: path(b, node(nodes, a)?),
                first_connected_ms: times.connected.get(&key).copied(),
                first_direct_ms: times.direct.get(&key).copied(),
                both_joined_ms: joined_at
                    .get(a)
                    .zip(joined_at.get(b))
                    .map(|(x, y)| *x.max(y)),
                path_changes: times
                    .changes
                    .get(&key)
                    .map(|v| v.iter().map(|(t, s)| (*t, (*s).to_owned())).collect())
                    .unwrap_or_default(),
            });
        }
    }
    Ok(out)
}
