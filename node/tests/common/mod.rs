//! Shared helpers for the in-process guild tests: a node is a real libp2p event loop on
//! loopback with its own encrypted database and `GuildService`.
#![allow(dead_code)]

use std::time::Duration;

use libp2p::Multiaddr;
use rand_core::OsRng;
use securecomm_node::guild::GuildService;
use securecomm_node::net::{self, Client, EventLoop, NetConfig};
use securecomm_node::runtime::sync_config;
use securecomm_node::store::{Db, LocalProfile};
use securecomm_noise::identity::UserIdentity;
use securecomm_noise::secret::Secret32;
use serde_json::Value;
use tokio::time::{Instant, sleep};

pub struct TestNode {
    /// The user id (root key, hex).
    pub user: String,
    pub net: Client,
    pub guilds: GuildService,
    pub dir: tempfile::TempDir,
}

pub async fn start(name: &str) -> TestNode {
    start_with(name, |_| {}).await
}

pub async fn start_with(name: &str, tweak: impl FnOnce(&mut NetConfig)) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let profile = LocalProfile {
        display_name: name.to_owned(),
        identity: UserIdentity::generate(&mut OsRng, "test", 0).unwrap(),
        db_key: Secret32::random(&mut OsRng),
    };
    let mut cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        hole_punching: false,
        ..NetConfig::default()
    };
    tweak(&mut cfg);
    let user = hex::encode(profile.identity.root_public().as_bytes());
    let keypair = net::device_keypair(profile.identity.device().signing()).unwrap();
    let (lp, client) = EventLoop::new(keypair, &cfg).unwrap();
    tokio::spawn(lp.run());
    let db = Db::open(&dir.path().join("node.db"), &profile.db_key).unwrap();
    let guilds = GuildService::start(client.clone(), db, &profile, sync_config())
        .await
        .unwrap();
    TestNode {
        user,
        net: client,
        guilds,
        dir,
    }
}

impl TestNode {
    /// The first listen address, with `/p2p/`.
    pub async fn addr(&self) -> Multiaddr {
        until_async("a listen address", 20, || async {
            self.net
                .listen_addrs()
                .await
                .unwrap()
                .into_iter()
                .next()
                .map(|a| a.with(libp2p::multiaddr::Protocol::P2p(self.net.peer_id())))
        })
        .await
    }

    pub fn all_keyed(&self, guild: &str, count: usize) -> bool {
        let m = self.guilds.members(guild).unwrap();
        let m = m.as_array().unwrap();
        m.len() == count && m.iter().all(|x| x["keyed"] == Value::Bool(true))
    }

    pub fn texts(&self, guild: &str) -> Vec<(String, String)> {
        let h = self.guilds.history(guild, "general", 1000).unwrap();
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

    /// `send`, retried while key agreement settles.
    pub async fn send(&self, guild: &str, text: &str) {
        for _ in 0..300 {
            match self.guilds.send(guild, "general", text).await {
                Ok(_) => return,
                Err(e) if e.to_string().contains("try again") => {
                    sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("cannot send: {e}"),
            }
        }
        panic!("send never became possible");
    }
}

pub async fn until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(100)).await;
    }
}

pub async fn until_async<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(100)).await;
    }
}

/// A guild owned by `owner` with every other node joined and keyed. Returns its id.
pub async fn guild_of(name: &str, owner: &TestNode, others: &[&TestNode]) -> String {
    let g = owner.guilds.create_guild(name).await.unwrap();
    let gid = g["id"].as_str().unwrap().to_owned();
    let inv = owner
        .guilds
        .create_invite(&gid, Some(3600), 0)
        .await
        .unwrap();
    let code = inv["code"].as_str().unwrap().to_owned();
    for n in others {
        let j = n.guilds.join(&code).await.unwrap();
        assert_eq!(j["ready"], true, "{j}");
    }
    let count = others.len() + 1;
    for n in std::iter::once(owner).chain(others.iter().copied()) {
        until("every member keyed everywhere", 60, || {
            n.all_keyed(&gid, count).then_some(())
        })
        .await;
    }
    gid
}
