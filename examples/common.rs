//! What both example programs share: unlocking (or creating) an identity and starting an
//! in-process SecureComm node from command-line flags. Not an example on its own.

use std::path::PathBuf;

use securecomm_node::net::NetConfig;
use securecomm_node::runtime::Node;
use securecomm_node::store::{IdentityStore, LocalProfile};

/// Flags both programs take.
#[derive(Debug, Default)]
pub struct NodeArgs {
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// Display name, used when a new identity is created.
    pub name: String,
    /// Listen addresses (default: any TCP port on every interface).
    pub listen: Vec<String>,
    /// Relays to hold reservations on.
    pub relays: Vec<String>,
    /// An invite code to join at start.
    pub join: Option<String>,
}

/// Parses `--data-dir DIR --name NAME --listen A --relay R --join CODE` and returns the rest.
pub fn parse(args: impl Iterator<Item = String>) -> Result<(NodeArgs, Vec<String>), String> {
    let mut a = NodeArgs {
        name: "example".into(),
        ..NodeArgs::default()
    };
    let mut rest = Vec::new();
    let mut it = args.peekable();
    while let Some(x) = it.next() {
        let mut val = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match x.as_str() {
            "--data-dir" => a.data_dir = PathBuf::from(val("--data-dir")?),
            "--name" => a.name = val("--name")?,
            "--listen" => a.listen.push(val("--listen")?),
            "--relay" => a.relays.push(val("--relay")?),
            "--join" => a.join = Some(val("--join")?),
            _ => rest.push(x),
        }
    }
    if a.data_dir.as_os_str().is_empty() {
        return Err("--data-dir DIR is required".into());
    }
    Ok((a, rest))
}

/// Unlocks the identity in the data directory (passphrase from `SECURECOMM_PASSPHRASE`),
/// creating it on first use, and starts a node. Joins `--join` if given.
pub async fn start(a: &NodeArgs) -> Result<(Node, LocalProfile), String> {
    let pass = std::env::var("SECURECOMM_PASSPHRASE")
        .map_err(|_| "set SECURECOMM_PASSPHRASE to the identity's passphrase".to_string())?;
    let store = IdentityStore::new(a.data_dir.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let profile = if store.exists() {
        store.unlock(pass.as_bytes())
    } else {
        store.create(
            &mut rand_core::OsRng,
            pass.as_bytes(),
            &a.name,
            "example",
            now,
        )
    }
    .map_err(|e| e.to_string())?;
    let parse = |v: &[String]| -> Result<Vec<libp2p::Multiaddr>, String> {
        v.iter()
            .map(|s| s.parse().map_err(|e| format!("bad multiaddr {s}: {e}")))
            .collect()
    };
    let mut cfg = NetConfig {
        relays: parse(&a.relays)?,
        ..NetConfig::default()
    };
    if !a.listen.is_empty() {
        cfg.listen = parse(&a.listen)?;
    }
    let node = Node::start(a.data_dir.clone(), &profile, cfg)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(code) = &a.join {
        let j = node.guilds.join(code).await.map_err(|e| e.to_string())?;
        eprintln!("joined {}", j["name"]);
    }
    Ok((node, profile))
}
