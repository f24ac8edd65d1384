//! `securecomm-relay`: a community relay node (rendezvous, circuit relay v2, identify, AutoNAT
//! server, ping, Kademlia server, mailbox, UDP media relay) for SecureComm. It holds no keys
//! that can read what it relays.
//!
//! ```text
//! securecomm-relay --data-dir /var/lib/securecomm-relay --config relay.toml \
//!     [--listen /ip4/0.0.0.0/tcp/4001]... [--external /dns4/relay.example/tcp/4001]... \
//!     [--peer /ip4/198.51.100.2/tcp/4001/p2p/12D3Koo...]... \
//!     [--metrics 127.0.0.1:9090] [--capture FILE] [--media-listen 0.0.0.0:3478]
//! ```
//!
//! After the listeners are up it prints each listen multiaddr with `/p2p/<peer id>` on its own
//! line to stdout, then `metrics http://ADDR/metrics` and `media udp ADDR` when those run,
//! then serves until SIGINT or SIGTERM. Logs go to stderr (`RUST_LOG` filters).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use securecomm_rendezvous::{Relay, RelayConfig, RelayOptions, identity};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(
    name = "securecomm-relay",
    version,
    about = "SecureComm community relay node"
)]
struct Args {
    /// Directory for the relay's identity key and mailbox database (created with mode 0700).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// TOML configuration file (defaults apply when omitted).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on; repeatable; replaces the config file's `listen` list.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Public address to announce; repeatable; replaces the config file's `external` list.
    #[arg(long, value_name = "MULTIADDR")]
    external: Vec<String>,
    /// Another relay to join the relay DHT through (ends in /p2p/<peer id>); repeatable;
    /// replaces the config file's `peers` list.
    #[arg(long, value_name = "MULTIADDR")]
    peer: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// UDP address of the media relay; replaces the config file's `[media] listen`.
    #[arg(long, value_name = "ADDR")]
    media_listen: Option<SocketAddr>,
    /// Append every raw TCP byte the relay reads and writes to FILE (audit and tests; TCP only).
    #[arg(long, value_name = "FILE")]
    capture: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p_kad=error")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("securecomm-relay: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("securecomm-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("config {}: {e}", path.display()))?;
            RelayConfig::from_toml(&text)?
        }
        None => RelayConfig::default(),
    };
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    if !args.external.is_empty() {
        config.external = args.external;
    }
    if !args.peer.is_empty() {
        config.peers = args.peer;
    }
    if let Some(addr) = args.media_listen {
        config.media.listen = Some(addr.to_string());
    }
    config.validate()?;
    let key = identity::load_or_create(&args.data_dir)?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let relay = Relay::spawn(
        config,
        key,
        RelayOptions {
            capture: args.capture,
            metrics: args.metrics,
            data_dir: Some(args.data_dir.clone()),
            mailbox: Default::default(),
        },
    )
    .await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for addr in relay.listen_addrs() {
            writeln!(out, "{addr}")?;
        }
        if let Some(m) = relay.metrics_addr() {
            writeln!(out, "metrics http://{m}/metrics")?;
        }
        if let Some(m) = relay.media_addr() {
            writeln!(out, "media udp {m}")?;
        }
        out.flush()?;
    }
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received"),
        _ = sigint.recv() => tracing::info!("SIGINT received"),
    }
    relay.shutdown().await;
    Ok(())
}
