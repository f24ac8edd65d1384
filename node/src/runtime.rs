//! A running node: identity, database, network and control socket, wired together.

use std::path::PathBuf;

use serde_json::json;
use thiserror::Error;

use crate::control::{self, Context};
use crate::guild::{GuildError, GuildService};
use crate::net::{self, Client, EventLoop, NetConfig, NetError};
use crate::store::{Db, DbError, LocalProfile};
use crate::sync::SyncConfig;
use crate::voice::service::VoiceService;

/// Why the node could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The guild layer could not start.
    #[error(transparent)]
    Guild(#[from] GuildError),
    /// The control socket could not be served.
    #[error("control socket {path}: {source}")]
    Control {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A started node.
#[derive(Debug)]
pub struct Node {
    /// The network handle.
    pub net: Client,
    /// The guild layer (which owns the database through its sync driver).
    pub guilds: GuildService,
    /// The voice layer.
    pub voice: VoiceService,
    loop_task: tokio::task::JoinHandle<()>,
    control_task: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Opens the database, starts the network and serves the control socket in `data_dir`.
    pub async fn start(
        data_dir: PathBuf,
        profile: &LocalProfile,
        cfg: NetConfig,
    ) -> Result<Self, NodeError> {
        let db = Db::open(&data_dir.join("node.db"), &profile.db_key)?;
        let keypair = net::device_keypair(profile.identity.device().signing())?;
        let (event_loop, client) = EventLoop::new(keypair, &cfg)?;
        let loop_task = tokio::spawn(event_loop.run());
        let guilds = GuildService::start(client.clone(), db, profile, sync_config()).await?;
        guilds.set_relays(cfg.relays.clone()).await;
        let voice = VoiceService::start(client.clone(), guilds.clone());
        let id = &profile.identity;
        let whoami = json!({
            "display_name": profile.display_name,
            "user_id": hex::encode(id.root_public().as_bytes()),
            "device_id": hex::encode(id.device().public().as_bytes()),
            "device_name": id.certificate().name(),
            "peer_id": client.peer_id().to_string(),
        });
        let path = control::socket_path(&data_dir);
        let ctx = Context {
            net: client.clone(),
            whoami,
            guilds: Some(guilds.clone()),
            voice: Some(voice.clone()),
        };
        // Bind now so a second node on the same directory fails here, not later.
        let serve = control::serve(path.clone(), ctx);
        let control_task = tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "control socket stopped");
            }
        });
        Ok(Self {
            net: client,
            guilds,
            voice,
            loop_task,
            control_task,
        })
    }

    /// Stops the node: the control socket, the guild layer's tasks (which own the database),
    /// then the network, and waits for the network task to end.
    pub async fn stop(self) {
        self.control_task.abort();
        self.voice.stop().await;
        self.guilds.stop();
        self.net.shutdown().await;
        let _ = self.loop_task.await;
    }

    /// Waits until the network stops (a `shutdown` command or every handle dropped).
    pub async fn wait(self) {
        let _ = self.loop_task.await;
        self.control_task.abort();
        self.voice.stop().await;
        self.guilds.stop();
    }
}

/// Sync timing for a node: anti-entropy every 10 s, retransmission every 2 s.
pub fn sync_config() -> SyncConfig {
    SyncConfig {
        anti_entropy: std::time::Duration::from_secs(10),
        retransmit: std::time::Duration::from_secs(2),
        outbox_poll: std::time::Duration::from_millis(500),
        delivery_buffer: 1024,
    }
}
