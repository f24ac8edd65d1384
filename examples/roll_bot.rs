//! A dice bot: a SecureComm node in this process that answers `!roll` in every text channel of
//! every guild it is in.
//!
//! `!roll` rolls one six-sided die; `!roll 3d20` rolls three twenty-sided dice (at most 100 dice
//! of at most 1000 sides). Randomness comes from the operating system.
//!
//! ```sh
//! export SECURECOMM_PASSPHRASE='the bot passphrase'
//! securecomm-node --data-dir /tmp/alice invite create "Book Club"        # prints sc1...
//! cargo run -p securecomm-examples --bin roll-bot -- --data-dir /tmp/rollbot --name rollbot \
//!     --listen /ip4/127.0.0.1/tcp/0 --join sc1...
//! securecomm-node --data-dir /tmp/alice send "Book Club" general '!roll 2d6'
//! ```
//!
//! Flags: `--data-dir DIR` (required), `--name NAME`, `--listen MULTIADDR`, `--relay MULTIADDR`,
//! `--join CODE`. The bot reads messages through the node library's event stream and answers
//! with `GuildService::send`, which checks its permissions like any member's.

#[path = "common.rs"]
mod common;

use rand_core::RngCore;
use securecomm_node::guild::GuildEvent;

/// Most dice per roll.
pub const MAX_DICE: u32 = 100;
/// Most sides per die.
pub const MAX_SIDES: u32 = 1000;

/// Parses the text after `!roll`: empty for `1d6`, else `NdM` or `dM`.
pub fn parse_roll(arg: &str) -> Result<(u32, u32), String> {
    let arg = arg.trim();
    if arg.is_empty() {
        return Ok((1, 6));
    }
    let (n, m) = arg
        .to_ascii_lowercase()
        .split_once('d')
        .map(|(n, m)| (n.to_owned(), m.to_owned()))
        .ok_or("expected NdM, like 2d6")?;
    let n: u32 = if n.is_empty() {
        1
    } else {
        n.parse().map_err(|_| "expected NdM, like 2d6")?
    };
    let m: u32 = m.parse().map_err(|_| "expected NdM, like 2d6")?;
    if !(1..=MAX_DICE).contains(&n) || !(2..=MAX_SIDES).contains(&m) {
        return Err(format!(
            "between 1 and {MAX_DICE} dice of 2 to {MAX_SIDES} sides"
        ));
    }
    Ok((n, m))
}

/// Rolls `n` dice of `m` sides without modulo bias.
pub fn roll(rng: &mut impl RngCore, n: u32, m: u32) -> Vec<u32> {
    let zone = u32::MAX - (u32::MAX % m);
    (0..n)
        .map(|_| {
            loop {
                let x = rng.next_u32();
                if x < zone {
                    break x % m + 1;
                }
            }
        })
        .collect()
}

/// The bot's answer to a message text, if it is a command.
pub fn answer(text: &str, who: &str, rng: &mut impl RngCore) -> Option<String> {
    let rest = text.trim().strip_prefix("!roll")?;
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some(match parse_roll(rest) {
        Ok((n, m)) => {
            let dice = roll(rng, n, m);
            let total: u32 = dice.iter().sum();
            if n == 1 {
                format!("{who} rolled d{m}: {total}")
            } else {
                let parts: Vec<String> = dice.iter().map(u32::to_string).collect();
                format!("{who} rolled {n}d{m}: {} = {total}", parts.join(" + "))
            }
        }
        Err(e) => format!("{who}: {e}"),
    })
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("roll-bot: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let (args, rest) = common::parse(std::env::args().skip(1))?;
    if let Some(x) = rest.first() {
        return Err(format!("unknown argument {x:?}"));
    }
    let (node, profile) = common::start(&args).await?;
    let me = hex::encode(profile.identity.root_public().as_bytes());
    let guilds = node.guilds.clone();
    let mut events = guilds.events();
    eprintln!("roll-bot running as {}", &me[..12]);
    loop {
        match events.recv().await {
            Ok(GuildEvent::Message(m)) if m.sender != me => {
                let who = if m.nickname.is_empty() {
                    m.sender[..12].to_owned()
                } else {
                    m.nickname.clone()
                };
                if let Some(reply) = answer(&m.text, &who, &mut rand_core::OsRng)
                    && let Err(e) = guilds.send(&m.guild, &m.channel.to_string(), &reply).await
                {
                    eprintln!("cannot answer: {e}");
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                eprintln!("missed {n} events");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rolls() {
        assert_eq!(parse_roll(""), Ok((1, 6)));
        assert_eq!(parse_roll(" 3d20 "), Ok((3, 20)));
        assert_eq!(parse_roll("d8"), Ok((1, 8)));
        assert!(parse_roll("0d6").is_err());
        assert!(parse_roll("101d6").is_err());
        assert!(parse_roll("2d1").is_err());
        assert!(parse_roll("2x6").is_err());
        assert!(parse_roll("-1d6").is_err());
    }

    #[test]
    fn rolls_stay_in_range_and_answers_only_the_command() {
        let mut rng = rand_core::OsRng;
        for _ in 0..200 {
            let r = roll(&mut rng, 5, 6);
            assert_eq!(r.len(), 5);
            assert!(r.iter().all(|x| (1..=6).contains(x)));
        }
        let a = answer("!roll 2d6", "ann", &mut rng).unwrap();
        assert!(a.starts_with("ann rolled 2d6: "), "{a}");
        assert!(
            answer("!roll", "ann", &mut rng)
                .unwrap()
                .starts_with("ann rolled d6: ")
        );
        assert!(answer("!rolling", "ann", &mut rng).is_none());
        assert!(answer("hello", "ann", &mut rng).is_none());
        assert!(
            answer("!roll 999d6", "ann", &mut rng)
                .unwrap()
                .contains("between")
        );
    }
}
