//! The in-process tier: many real nodes in one process, talking over libp2p's memory
//! transport (`/memory/N`) instead of sockets, for fast protocol tests.
//!
//! Each node is the real thing apart from the wire: its own identity, its own encrypted
//! database in a temporary directory, the node's event loop (Noise, Yamux, gossipsub, our
//! request-response protocols) and its `GuildService`. No namespaces, no root, no ports: a
//! dozen nodes start in well under a second, so property-style protocol tests can run many
//! rounds. What it does not model: NATs, relays, loss and delay (use the namespace tier).
//!
//! ```no_run
//! # async fn demo() -> securecomm_netsim::error::Result<()> {
//! use securecomm_netsim::inproc::Cluster;
//! let c = Cluster::start(8).await?;
//! let gid = c.guild("test", 0).await?;
//! c.nodes[3].send(&gid, "general", "hello").await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use rand_core::OsRng;
use securecomm_node::guild::GuildService;
use securecomm_node::net::{self, Client, EventLoop, NetConfig};
use securecomm_node::runtime::sync_config;
use securecomm_node::store::{Db, LocalProfile};
use securecomm_noise::identity::UserIdentity;
use securecomm_noise::secret::Secret32;
use serde_json::Value;
use tokio::time::{Instant, sleep};

use crate::error::{NetsimError, Result};

/// Longest wait for anything a cluster waits for (keying, delivery).
pub const WAIT: Duration = Duration::from_secs(60);
/// Most nodes one cluster starts.
pub const MAX_NODES: usize = 64;

fn fail(what: impl Into<String>, got: impl std::fmt::Display) -> NetsimError {
    NetsimError::Unexpected {
        what: what.into(),
        expected: "success".into(),
        got: got.to_string(),
    }
}

/// One node of a cluster.
#[derive(Debug)]
pub struct InNode {
    /// Its display name (`n0`, `n1`, ...).
    pub name: String,
    /// Its user id (root key, hex).
    pub user: String,
    /// The network handle.
    pub net: Client,
    /// The guild layer.
    pub guilds: GuildService,
    /// Its memory address, ending in `/p2p/<peer id>`.
    pub addr: Multiaddr,
    _dir: tempfile::TempDir,
}

impl InNode {
    /// Starts a node listening on a fresh memory address.
    pub async fn start(name: &str) -> Result<Self> {
        let dir = tempfile::tempdir().map_err(|e| NetsimError::io("temporary directory", e))?;
        let identity = UserIdentity::generate(&mut OsRng, name, 0)
            .map_err(|e| fail("generating an identity", e))?;
        let profile = LocalProfile {
            display_name: name.to_owned(),
            identity,
            db_key: Secret32::random(&mut OsRng),
        };
        let cfg = NetConfig {
            listen: vec![Multiaddr::empty().with(Protocol::Memory(0))],
            hole_punching: false,
            mdns: false,
            ..NetConfig::default()
        };
        let user = hex::encode(profile.identity.root_public().as_bytes());
        let keypair = net::device_keypair(profile.identity.device().signing())
            .map_err(|e| fail("device keypair", e))?;
        let (lp, client) = EventLoop::new(keypair, &cfg).map_err(|e| fail("event loop", e))?;
        tokio::spawn(lp.run());
        let db = Db::open(&dir.path().join("node.db"), &profile.db_key)
            .map_err(|e| fail("opening the database", e))?;
        let guilds = GuildService::start(client.clone(), db, &profile, sync_config())
            .await
            .map_err(|e| fail("starting the guild layer", e))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let addr = loop {
            let addrs = client
                .listen_addrs()
                .await
                .map_err(|e| fail("listen addresses", e))?;
            if let Some(a) = addrs
                .into_iter()
                .find(|a| a.iter().any(|p| matches!(p, Protocol::Memory(_))))
            {
                break a.with(Protocol::P2p(client.peer_id()));
            }
            if Instant::now() > deadline {
                return Err(fail("a memory listen address", "none within 5 s"));
            }
            sleep(Duration::from_millis(10)).await;
        };
        Ok(Self {
            name: name.to_owned(),
            user,
            net: client,
            guilds,
            addr,
            _dir: dir,
        })
    }

    /// Sends `text` to `channel`, retrying while key agreement settles.
    pub async fn send(&self, guild: &str, channel: &str, text: &str) -> Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.guilds.send(guild, channel, text).await {
                Ok(v) => return Ok(v),
                Err(e) if e.to_string().contains("try again") && Instant::now() < deadline => {
                    sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(fail(format!("{} sending", self.name), e)),
            }
        }
    }

    /// The texts of `channel` in this node's store, oldest first.
    pub fn texts(&self, guild: &str, channel: &str) -> Result<Vec<String>> {
        let h = self
            .guilds
            .history(guild, channel, 100_000)
            .map_err(|e| fail("history", e))?;
        Ok(h.as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["text"].as_str().map(str::to_owned))
            .collect())
    }

    /// Whether this node sees `count` members of `guild`, every one keyed.
    pub fn all_keyed(&self, guild: &str, count: usize) -> bool {
        self.guilds.members(guild).is_ok_and(|m| {
            m.as_array()
                .is_some_and(|m| m.len() == count && m.iter().all(|x| x["keyed"] == true))
        })
    }
}

/// Nodes in one process.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, `n0` first.
    pub nodes: Vec<InNode>,
}

impl Cluster {
    /// Starts `n` nodes (at most [`MAX_NODES`]), not yet connected.
    pub async fn start(n: usize) -> Result<Self> {
        let mut nodes = Vec::new();
        for i in 0..n.min(MAX_NODES) {
            nodes.push(InNode::start(&format!("n{i}")).await?);
        }
        Ok(Self { nodes })
    }

    /// A guild owned by node `owner`, every other node joined by invite (over the memory
    /// transport) and keyed everywhere. Returns its id.
    pub async fn guild(&self, name: &str, owner: usize) -> Result<String> {
        let o = self
            .nodes
            .get(owner)
            .ok_or_else(|| fail("guild owner", format!("no node {owner}")))?;
        let g = o
            .guilds
            .create_guild(name)
            .await
            .map_err(|e| fail("creating a guild", e))?;
        let gid = g["id"].as_str().unwrap_or_default().to_owned();
        let inv = o
            .guilds
            .create_invite(&gid, Some(3600), 0)
            .await
            .map_err(|e| fail("creating an invite", e))?;
        let code = inv["code"].as_str().unwrap_or_default().to_owned();
        for (i, n) in self.nodes.iter().enumerate() {
            if i == owner {
                continue;
            }
            let j = n
                .guilds
                .join(&code)
                .await
                .map_err(|e| fail(format!("{} joining", n.name), e))?;
            if j["ready"] != true {
                return Err(fail(format!("{} joining", n.name), j));
            }
        }
        let count = self.nodes.len();
        self.until("every member keyed everywhere", || {
            self.nodes.iter().all(|n| n.all_keyed(&gid, count))
        })
        .await?;
        Ok(gid)
    }

    /// A voice channel `name` in guild `gid`, created by node `owner` and waited for until
    /// every node sees it. Returns its channel id.
    pub async fn voice_channel(&self, gid: &str, owner: usize, name: &str) -> Result<u64> {
        let o = self
            .nodes
            .get(owner)
            .ok_or_else(|| fail("voice channel owner", format!("no node {owner}")))?;
        o.guilds
            .create_channel(gid, name, true)
            .await
            .map_err(|e| fail("creating a voice channel", e))?;
        self.until("every member to see the voice channel", || {
            self.nodes
                .iter()
                .all(|n| n.guilds.voice_room(gid, name).is_ok())
        })
        .await?;
        o.guilds
            .voice_room(gid, name)
            .map(|r| r.channel.0)
            .map_err(|e| fail("reading the voice channel", e))
    }

    /// Waits until `f` holds, polling every 50 ms, for at most [`WAIT`].
    pub async fn until(&self, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        while !f() {
            if Instant::now() > deadline {
                return Err(fail(format!("waiting for {what}"), "timed out"));
            }
            sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops every node.
    pub async fn stop(self) {
        for n in self.nodes {
            n.guilds.stop();
            n.net.shutdown().await;
        }
    }
}
