//! `securecomm-netsim`: build a SecureComm network in Linux namespaces and run a scenario.
//!
//! ```text
//! securecomm-netsim run SCENARIO.toml [--json FILE] [--keep]     # exit 1 if an assertion fails
//! securecomm-netsim selftest SCENARIO.toml [--apply SITE=NAT]...  # build, probe every router, tear down
//! securecomm-netsim cleanup                                        # remove leftovers of crashed runs
//! ```
//! Needs root, `ip` and `nft`. Binaries: `$SECURECOMM_NODE_BIN`, `$SECURECOMM_RELAY_BIN`, or next
//! to this executable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use securecomm_netsim::error::{NetsimError, Result};
use securecomm_netsim::runner::{self, RunOptions};
use securecomm_netsim::scenario::{NatKind, Scenario};
use securecomm_netsim::{matrix, probe, sys, topology};

#[derive(Parser)]
#[command(
    name = "securecomm-netsim",
    version,
    about = "SecureComm network simulation"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario and report; exits non-zero if any assertion fails.
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// Also write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Keep logs and data even on success.
        #[arg(long)]
        keep: bool,
        /// Also draw latency and paths over time into this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Run a scenario ATTEMPTS times and aggregate its pairs per pair of NAT kinds (see
    /// netsim/scenarios/nat-matrix.toml); exits non-zero if any cell fails.
    Matrix {
        /// The scenario file.
        scenario: PathBuf,
        /// How many fresh runs.
        #[arg(long, default_value_t = 10)]
        attempts: usize,
        /// Also write the JSON aggregate here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write the Markdown table here.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// Build the topology, run the NAT self-test, tear down.
    Selftest {
        /// The scenario file.
        scenario: PathBuf,
        /// Configure SITE with NAT kind KIND while keeping its label (to test the self-test).
        #[arg(long, value_name = "SITE=KIND")]
        apply: Vec<String>,
    },
    /// Measure every impaired uplink of a scenario (UDP echo to a probe host, before and after
    /// the impairment starts) and compare with its configuration.
    Linktest {
        /// The scenario file.
        scenario: PathBuf,
        /// Echo datagrams per link.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Milliseconds between datagrams.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// Also write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// UDP echo used by linktest (inside namespaces).
    #[command(hide = true)]
    UdpEcho {
        #[command(subcommand)]
        action: EchoCmd,
    },
    /// Forward frames between two interfaces with impairment (inside a link namespace).
    #[command(hide = true)]
    Impair {
        /// Site-side interface.
        #[arg(long)]
        a: String,
        /// Internet-side interface.
        #[arg(long)]
        b: String,
        /// The impairment as JSON (applied in each direction).
        #[arg(long)]
        params: String,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Remove every netsim namespace (and the processes inside) left by crashed runs.
    Cleanup,
    /// Probe programs used by the self-test (inside namespaces).
    #[command(hide = true)]
    Probe {
        #[command(subcommand)]
        action: ProbeCmd,
    },
}

#[derive(Subcommand)]
enum EchoCmd {
    /// Echo datagrams back.
    Serve {
        #[arg(long)]
        bind: std::net::SocketAddr,
    },
    /// Send datagrams and print round-trip statistics as JSON.
    Ping {
        #[arg(long)]
        to: std::net::SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
    },
}

#[derive(Subcommand)]
enum ProbeCmd {
    /// Probe server.
    Serve {
        #[arg(long)]
        ip: std::net::Ipv4Addr,
        #[arg(long)]
        peer: std::net::Ipv4Addr,
    },
    /// Probe client: prints the observation as JSON.
    Client {
        #[arg(long)]
        p1: std::net::Ipv4Addr,
        #[arg(long)]
        p2: std::net::Ipv4Addr,
    },
}

fn load(path: &PathBuf) -> Result<(Scenario, String)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| NetsimError::io(format!("reading {}", path.display()), e))?;
    let name = path
        .file_stem()
        .map_or("scenario".into(), |s| s.to_string_lossy().into_owned());
    Ok((Scenario::from_toml(&text)?, name))
}

fn options(overrides: Vec<(String, NatKind)>, keep: bool) -> Result<RunOptions> {
    Ok(RunOptions {
        node_bin: runner::locate_binary("SECURECOMM_NODE_BIN", "securecomm-node")?,
        relay_bin: runner::locate_binary("SECURECOMM_RELAY_BIN", "securecomm-relay")?,
        self_bin: std::env::current_exe().map_err(|e| NetsimError::io("finding current_exe", e))?,
        overrides,
        keep,
    })
}

fn parse_apply(s: &str) -> Result<(String, NatKind)> {
    let bad = || NetsimError::Unexpected {
        what: "--apply".into(),
        expected: "SITE=KIND (e.g. home=full-cone)".into(),
        got: s.to_owned(),
    };
    let (site, kind) = s.split_once('=').ok_or_else(bad)?;
    let kind: NatKind =
        serde_json::from_value(serde_json::Value::String(kind.to_owned())).map_err(|_| bad())?;
    Ok((site.to_owned(), kind))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            if !topology::interrupted() {
                eprintln!("securecomm-netsim: {e}");
            }
            ExitCode::from(2)
        }
    };
    // An interrupt's cleanup kills the commands the run was waiting for, so the run may end
    // with an error while the handler is still removing namespaces: let the handler finish and
    // exit with 130.
    while topology::interrupted() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    code
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Run {
            scenario,
            json,
            keep,
            plot,
        } => {
            let (s, name) = load(&scenario)?;
            let opts = options(Vec::new(), keep)?;
            topology::install_signal_handler()?;
            let report = runner::run(&s, &name, &opts)?;
            print!("{}", report.table());
            if let Some(p) = plot {
                securecomm_netsim::plot::svg(&report, &p)?;
            }
            let text = serde_json::to_string_pretty(&report).unwrap_or_default();
            if let Some(p) = json {
                std::fs::write(&p, text)
                    .map_err(|e| NetsimError::io(format!("writing {}", p.display()), e))?;
            }
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                eprintln!("logs kept in {}", report.run_dir);
                ExitCode::from(1)
            })
        }
        Cmd::Matrix {
            scenario,
            attempts,
            json,
            markdown,
        } => {
            let (s, name) = load(&scenario)?;
            let opts = options(Vec::new(), false)?;
            topology::install_signal_handler()?;
            let mut reports = Vec::new();
            let mut errors = Vec::new();
            for i in 0..attempts.max(1) {
                eprintln!("netsim matrix: attempt {} of {attempts}", i + 1);
                match runner::run(&s, &name, &opts) {
                    Ok(r) => {
                        if !r.passed {
                            eprintln!("attempt {}: {:?}", i + 1, r.failures);
                        }
                        reports.push(r);
                    }
                    Err(e) if topology::interrupted() => return Err(e),
                    Err(e) => errors.push(format!("attempt {}: {e}", i + 1)),
                }
            }
            let m = matrix::Matrix::from_reports(&s, &reports, errors);
            let table = m.markdown();
            print!("{table}");
            if let Some(p) = json {
                let text = serde_json::to_string_pretty(&m).unwrap_or_default();
                std::fs::write(&p, text)
                    .map_err(|e| NetsimError::io(format!("writing {}", p.display()), e))?;
            }
            if let Some(p) = markdown {
                std::fs::write(&p, table)
                    .map_err(|e| NetsimError::io(format!("writing {}", p.display()), e))?;
            }
            Ok(if m.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Selftest { scenario, apply } => {
            let (s, _) = load(&scenario)?;
            let overrides = apply
                .iter()
                .map(|a| parse_apply(a))
                .collect::<Result<Vec<_>>>()?;
            sys::check_environment()?;
            topology::install_signal_handler()?;
            let prefix = topology::new_prefix();
            let topo = topology::Topology::build(&s, &prefix, &overrides)?;
            let self_bin =
                std::env::current_exe().map_err(|e| NetsimError::io("finding current_exe", e))?;
            let results = runner::self_test(&topo, &self_bin)?;
            for r in results {
                println!(
                    "{:<12} {:<18} ok {}",
                    r.site,
                    format!("{:?}", r.label),
                    serde_json::to_string(&r.observed).unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Linktest {
            scenario,
            count,
            interval_ms,
            json,
        } => {
            let (s, _) = load(&scenario)?;
            sys::check_environment()?;
            topology::install_signal_handler()?;
            let prefix = topology::new_prefix();
            let topo = topology::Topology::build(&s, &prefix, &[])?;
            let self_bin =
                std::env::current_exe().map_err(|e| NetsimError::io("finding current_exe", e))?;
            let reports =
                securecomm_netsim::linktest::measure(&topo, &self_bin, count, interval_ms, || {
                    runner::start_impairments(&topo, &self_bin)
                })?;
            for r in &reports {
                println!("{}", r.line());
            }
            if let Some(p) = json {
                let text = serde_json::to_string_pretty(&reports).unwrap_or_default();
                std::fs::write(&p, text)
                    .map_err(|e| NetsimError::io(format!("writing {}", p.display()), e))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::UdpEcho { action } => match action {
            EchoCmd::Serve { bind } => {
                securecomm_netsim::linktest::serve(bind)?;
                Ok(ExitCode::SUCCESS)
            }
            EchoCmd::Ping {
                to,
                count,
                interval_ms,
            } => {
                let s = securecomm_netsim::linktest::ping(
                    to,
                    count,
                    std::time::Duration::from_millis(interval_ms),
                )?;
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
                Ok(ExitCode::SUCCESS)
            }
        },
        Cmd::Impair { a, b, params, seed } => {
            let p: securecomm_netsim::scenario::Impairment = serde_json::from_str(&params)
                .map_err(|e| NetsimError::Unexpected {
                    what: "--params".into(),
                    expected: "an impairment as JSON".into(),
                    got: format!("{params} ({e})"),
                })?;
            securecomm_netsim::impair::forward(&a, &b, &p, &p, seed)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cleanup => {
            for ns in topology::cleanup_all()? {
                println!("removed {ns}");
            }
            let dir = std::env::temp_dir().join("securecomm-netsim");
            let _ = std::fs::remove_dir_all(dir);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { action } => match action {
            ProbeCmd::Serve { ip, peer } => {
                probe::serve(ip, peer)?;
                Ok(ExitCode::SUCCESS)
            }
            ProbeCmd::Client { p1, p2 } => {
                let o = probe::observe(p1, p2)?;
                println!("{}", serde_json::to_string(&o).unwrap_or_default());
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}
