//! Headless chat: a SecureComm node in this process, and one guild channel in the terminal.
//!
//! Lines you type are sent to the channel; messages from others are printed as they arrive
//! (decrypted and verified by the node). `/members` lists the guild's members, `/quit` leaves.
//!
//! ```sh
//! export SECURECOMM_PASSPHRASE='a passphrase'
//! # first user: creates the identity, the guild, and prints an invite code
//! cargo run -p securecomm-examples --bin chat -- --data-dir /tmp/alice --name alice \
//!     --listen /ip4/127.0.0.1/tcp/0 --create "Book Club"
//! # second user, in another terminal, with the printed code
//! cargo run -p securecomm-examples --bin chat -- --data-dir /tmp/bob --name bob \
//!     --listen /ip4/127.0.0.1/tcp/0 --join sc1...
//! ```
//!
//! Flags: `--data-dir DIR` (required), `--name NAME` (for a new identity), `--listen MULTIADDR`,
//! `--relay MULTIADDR`, `--join CODE`, `--create NAME`, `--guild NAME|ID` (default: the first
//! guild), `--channel NAME` (default `general`). The node's control socket is served too, so
//! `securecomm-node --data-dir DIR ...` works against it while the chat runs.

#[path = "common.rs"]
mod common;

use securecomm_node::guild::GuildEvent;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("chat: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let (args, rest) = common::parse(std::env::args().skip(1))?;
    let mut guild = None;
    let mut channel = "general".to_owned();
    let mut create = None;
    let mut it = rest.into_iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "--guild" => guild = it.next(),
            "--channel" => channel = it.next().ok_or("--channel needs a value")?,
            "--create" => create = it.next(),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let (node, profile) = common::start(&args).await?;
    let guilds = node.guilds.clone();
    if let Some(name) = create {
        let g = guilds
            .create_guild(&name)
            .await
            .map_err(|e| e.to_string())?;
        let id = g["id"].as_str().unwrap_or_default().to_owned();
        let inv = guilds
            .create_invite(&id, Some(24 * 3600), 0)
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "created {name}; invite others with:\n{}",
            inv["code"].as_str().unwrap_or("")
        );
        guild = Some(id);
    }
    let guild = match guild {
        Some(g) => g,
        None => guilds
            .list_guilds()
            .map_err(|e| e.to_string())?
            .get(0)
            .and_then(|g| g["id"].as_str().map(str::to_owned))
            .ok_or("no guild yet: pass --create NAME or --join CODE")?,
    };
    let me = hex::encode(profile.identity.root_public().as_bytes());
    let channel_id = guilds
        .list_channels(&guild)
        .map_err(|e| e.to_string())?
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == channel.as_str()))
        .and_then(|c| c["id"].as_u64())
        .ok_or(format!("no channel {channel:?}"))?;
    println!("chatting in #{channel}; /members, /quit");

    let mut events = guilds.events();
    let printer = tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if let GuildEvent::Message(m) = e
                && m.channel == channel_id
                && m.sender != me
            {
                let who = if m.nickname.is_empty() {
                    &m.sender[..12]
                } else {
                    &m.nickname
                };
                println!("<{who}> {}", m.text);
            }
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim();
        match line {
            "" => {}
            "/quit" => break,
            "/members" => match guilds.members(&guild) {
                Ok(v) => v.as_array().into_iter().flatten().for_each(|m| {
                    println!(
                        "  {} {}",
                        m["nickname"].as_str().unwrap_or(""),
                        m["user"].as_str().unwrap_or("")
                    )
                }),
                Err(e) => eprintln!("{e}"),
            },
            text => {
                if let Err(e) = guilds.send(&guild, &channel, text).await {
                    eprintln!("not sent: {e}");
                }
            }
        }
    }
    printer.abort();
    node.net.shutdown().await;
    node.wait().await;
    Ok(())
}
