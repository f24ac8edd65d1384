//! Seeding a data folder with a real store: an identity, a guild, and a channel of many
//! messages, written through the node like any user's (signed, encrypted, stored in the
//! SQLCipher database). The frame benchmark, the screenshot tour and the tests use it; nothing
//! here is faked.

use std::path::Path;
use std::sync::Arc;

use securecomm_node::net::NetConfig;
use securecomm_node::runtime::Node;
use securecomm_node::store::IdentityStore;
use securecomm_noise::keystore::{KdfLimits, KdfParams};
use serde_json::Value;
use tokio::task::JoinSet;

/// Sends in flight while seeding (they share the database's group commits).
const IN_FLIGHT: usize = 64;

/// What [`seed`] made.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// The user id (hex).
    pub user_id: String,
    /// The guild (hex id).
    pub guild: String,
    /// The channel holding the messages.
    pub channel: u64,
}

/// What to seed.
#[derive(Debug, Clone)]
pub struct SeedSpec<'a> {
    /// Display name of the identity.
    pub name: &'a str,
    /// Its passphrase.
    pub passphrase: &'a str,
    /// Identity-file KDF (`None`: the strong defaults).
    pub kdf: Option<(KdfParams, KdfLimits)>,
    /// Guild name.
    pub guild: &'a str,
    /// Messages to send to the guild's first text channel.
    pub messages: usize,
}

/// The text of seeded message `i`: a mix of short and long lines, markdown and code, like a
/// real channel.
pub fn sample_text(i: usize) -> String {
    match i % 9 {
        0 => format!("message {i}: **deploy** went out, see `build-{}`", i % 97),
        1 => format!("message {i}: has anyone tried the *new* relay settings?"),
        2 => format!(
            "message {i}:\n```rust\nfn answer() -> u32 {{ {} }}\n```",
            i % 1000
        ),
        3 => format!("message {i}: > quoting someone\nand replying below"),
        4 => format!("message {i}: link https://example.org/{i} (shown, never fetched)"),
        5 => format!("message {i}: ok"),
        6 => format!(
            "message {i}: a longer one, the kind people write when they explain why the voice \
             room dropped for a second around the time the relay restarted"
        ),
        7 => format!("message {i}: ~~nope~~ __yes__"),
        _ => format!("message {i}: thanks!"),
    }
}

/// Creates an identity in `dir`, starts the node on loopback only, creates a guild and sends
/// `spec.messages` messages (text from `text`) to its first text channel, then stops the node.
pub async fn seed(
    dir: &Path,
    spec: &SeedSpec<'_>,
    text: fn(usize) -> String,
) -> Result<Seeded, String> {
    let m = start_member(dir, spec.name, spec.passphrase, spec.kdf).await?;
    let result = fill(&m.node, spec, text).await;
    m.node.stop().await;
    let (guild, channel) = result?;
    Ok(Seeded {
        user_id: m.user_id,
        guild,
        channel,
    })
}

async fn fill(
    node: &Node,
    spec: &SeedSpec<'_>,
    text: fn(usize) -> String,
) -> Result<(String, u64), String> {
    let g = &node.guilds;
    let v = g
        .create_guild(spec.guild)
        .await
        .map_err(|e| e.to_string())?;
    let guild = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or("no guild id")?
        .to_owned();
    let channels = g.list_channels(&guild).map_err(|e| e.to_string())?;
    let channel = channels
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("kind").and_then(Value::as_str) == Some("text"))
        })
        .and_then(|c| c.get("id"))
        .and_then(Value::as_u64)
        .ok_or("the new guild has no text channel")?;
    let guild_arc: Arc<str> = Arc::from(guild.as_str());
    let ch = channel.to_string();
    let mut tasks = JoinSet::new();
    for i in 0..spec.messages {
        if tasks.len() >= IN_FLIGHT
            && let Some(r) = tasks.join_next().await
        {
            r.map_err(|e| e.to_string())??;
        }
        let g = g.clone();
        let (gid, ch) = (guild_arc.clone(), ch.clone());
        let t = text(i);
        tasks.spawn(async move {
            g.send(&gid, &ch, &t)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok((guild, channel))
}

/// What [`seed_community`] made.
#[derive(Debug, Clone)]
pub struct Community {
    /// The owner's (the app user's) id.
    pub user_id: String,
    /// The guild.
    pub guild: String,
    /// Bob's user id (he also wrote a DM to the owner).
    pub bob: String,
}

/// Where each seeded node lives and who it is.
struct Member {
    node: Node,
    user_id: String,
}

async fn start_member(
    dir: &Path,
    name: &str,
    passphrase: &str,
    kdf: Option<(KdfParams, KdfLimits)>,
) -> Result<Member, String> {
    let store = match kdf {
        Some((p, l)) => IdentityStore::with_params(dir, p, l),
        None => IdentityStore::new(dir),
    };
    let (pass, name) = (passphrase.to_owned(), name.to_owned());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let profile = tokio::task::spawn_blocking(move || {
        store.create(
            &mut rand_core::OsRng,
            pass.as_bytes(),
            &name,
            "desktop",
            now,
        )
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let net = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().map_err(|e| format!("{e}"))?],
        mdns: false,
        ..NetConfig::default()
    };
    let node = Node::start(dir.to_path_buf(), &profile, net)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Member {
        node,
        user_id: hex::encode(profile.identity.root_public().as_bytes()),
    })
}

fn text_channel(v: &Value, name: &str) -> Option<String> {
    v.as_array()?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|c| c.get("id"))
        .and_then(Value::as_u64)
        .map(|id| id.to_string())
}

/// A 480 x 270 PNG of a sunset-like gradient.
fn write_sunset(path: &Path) -> Result<(), String> {
    let (w, h) = (480u32, 270u32);
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let t = y * 255 / h;
            let sun = {
                let (dx, dy) = (x.abs_diff(300), y.abs_diff(190));
                dx * dx + dy * dy < 40 * 40
            };
            let (r, g, b) = if y > 200 {
                (40, 30 + (x % 7) as u8, 70)
            } else if sun {
                (255, 220, 120)
            } else {
                (255 - (t / 3) as u8, (150 - t / 2) as u8, (90 + t / 3) as u8)
            };
            px.extend_from_slice(&[r, g, b]);
        }
    }
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&px).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

/// A small community for screenshots and demos, all real and on loopback only: the owner
/// (`dir`, the identity the app unlocks) creates a guild with a few channels and a role,
/// Bob and Carol (in `others`) join by invite, the three talk, Bob writes the owner a DM;
/// the owner's store holds it all when this returns (every node stopped).
pub async fn seed_community(
    dir: &Path,
    others: &Path,
    passphrase: &str,
    kdf: Option<(KdfParams, KdfLimits)>,
) -> Result<Community, String> {
    let alice = start_member(dir, "Alice", passphrase, kdf).await?;
    let bob = start_member(&others.join("bob"), "Bob", "bob's pass", kdf).await?;
    let carol = start_member(&others.join("carol"), "Carol", "carol's pass", kdf).await?;
    let result = converse(&alice, &bob, &carol, &others.join("sunset.png")).await;
    let bob_id = bob.user_id.clone();
    let user_id = alice.user_id.clone();
    for m in [carol, bob, alice] {
        m.node.stop().await;
    }
    Ok(Community {
        user_id,
        guild: result?,
        bob: bob_id,
    })
}

async fn converse(
    alice: &Member,
    bob: &Member,
    carol: &Member,
    photo: &Path,
) -> Result<String, String> {
    let err = |e: securecomm_node::guild::GuildError| e.to_string();
    let a = &alice.node.guilds;
    let guild = a
        .create_guild("Rustaceans")
        .await
        .map_err(err)?
        .get("id")
        .and_then(Value::as_str)
        .ok_or("no guild id")?
        .to_owned();
    a.create_channel(&guild, "announcements", false)
        .await
        .map_err(err)?;
    a.create_channel(&guild, "help", false).await.map_err(err)?;
    a.create_channel(&guild, "Lounge", true)
        .await
        .map_err(err)?;
    a.create_role(
        &guild,
        "Moderator",
        "manage_messages,kick_members,mute_members",
    )
    .await
    .map_err(err)?;
    for m in [bob, carol] {
        let code = a
            .create_invite(&guild, None, 0)
            .await
            .map_err(err)?
            .get("code")
            .and_then(Value::as_str)
            .ok_or("no invite code")?
            .to_owned();
        m.node.guilds.join(&code).await.map_err(err)?;
    }
    a.grant_role(&guild, &bob.user_id, "Moderator")
        .await
        .map_err(err)?;
    let channels = a.list_channels(&guild).map_err(err)?;
    let general = text_channel(&channels, "general").ok_or("no #general")?;
    let script: [(&Member, &str); 10] = [
        (
            alice,
            "Welcome to **Rustaceans**! Everything here is end-to-end encrypted.",
        ),
        (bob, "Hi all. Is the relay on the community box up to date?"),
        (
            alice,
            "Yes, updated this morning. `securecomm-relay --version` says 0.1.0",
        ),
        (carol, "Joined from my laptop, hello!"),
        (
            carol,
            "Question: can I paste code?\n```rust\nfn main() {\n    println!(\"hi\");\n}\n```",
        ),
        (bob, "> can I paste code?\nYes, and *markdown* works too."),
        (
            alice,
            "Links show but are never fetched: https://example.org/docs",
        ),
        (bob, "Voice in ~Lounge~ the Lounge channel at 8?"),
        (carol, "I'll be there"),
        (
            alice,
            "## Tonight\n- voice at 8, __Lounge__\n  - ||the cake is a surprise||\n\
             -# agenda: [the wiki](https://example.org/wiki/agenda), ping @here",
        ),
    ];
    for (m, text) in script {
        // The guild's key agreement welcomes each joiner shortly after the join: retry.
        let mut tries = 0;
        loop {
            match m.node.guilds.send(&guild, &general, text).await {
                Ok(_) => break,
                Err(e) if tries < 100 => {
                    tries += 1;
                    tracing::debug!(error = %e, "send retry");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    // Bob shares a photo: its card and inline preview (the tour's last stop).
    write_sunset(photo)?;
    let opts = securecomm_node::guild::service::messages::PostOptions {
        files: vec![photo.to_path_buf()],
        ..Default::default()
    };
    bob.node
        .guilds
        .post(&guild, &general, "Sunset from Saturday's hike", &opts)
        .await
        .map_err(err)?;
    let mut tries = 0;
    loop {
        match bob
            .node
            .guilds
            .dm_send(
                &alice.user_id,
                "Hey Alice, can we check our safety numbers later?",
            )
            .await
        {
            Ok(_) => break,
            Err(e) if tries < 100 => {
                tries += 1;
                tracing::debug!(error = %e, "DM retry");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    // Until the owner holds the whole conversation and the DM.
    for _ in 0..300 {
        let n = a
            .history(&guild, &general, 100)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        let dms = a
            .dm_history(&bob.user_id, 10)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        if n >= 10 && dms >= 1 {
            return Ok(guild);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err("the owner never received the whole conversation".into())
}
