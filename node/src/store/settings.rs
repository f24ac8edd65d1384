//! User settings the node needs, kept in the encrypted database: today the relays the user
//! added in the app's settings.
//!
//! Relays are stored under the `kv` key [`RELAYS_KEY`] as
//! `version (1) | count (u16) | count x (u16 length | multiaddr bytes)`, decoded strictly (known
//! version, at most [`MAX_SAVED_RELAYS`], each at most [`MAX_ADDR_LEN`] bytes, no trailing bytes).
//! They live in the database rather than a plain settings file because which relays a user
//! relies on is metadata: nothing about the user is written in clear (see [`super`]). The
//! caller applies them to a running node with `Client::add_relay` / `Client::remove_relay`
//! and `GuildService::set_relays`.

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use securecomm_noise::codec::{DecodeError, Reader, Writer};
use thiserror::Error;

use super::{Db, DbError};

/// The `kv` key of the saved relays.
pub const RELAYS_KEY: &str = "settings.relays";
/// Most relays the user can save.
pub const MAX_SAVED_RELAYS: usize = 16;
/// Longest relay address, in bytes (binary multiaddr) and in characters (text).
pub const MAX_ADDR_LEN: usize = 512;
const RELAYS_VERSION: u8 = 1;

/// Why a relay setting was refused.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// The text is not a multiaddr.
    #[error("not a multiaddr ({0}); expected e.g. /ip4/203.0.113.7/tcp/4001/p2p/12D3KooW...")]
    Parse(String),
    /// The address does not name the relay's peer id.
    #[error("the address must end in /p2p/<relay peer id>, got {0}")]
    NoPeerId(String),
    /// The address goes through a relay itself.
    #[error("a relay address cannot contain /p2p-circuit: {0}")]
    Circuit(String),
    /// The address is too long.
    #[error("relay address too long: at most {MAX_ADDR_LEN} characters, got {0}")]
    TooLong(usize),
    /// The relay is already saved.
    #[error("relay already added: {0}")]
    Duplicate(String),
    /// The relay is not saved.
    #[error("no such relay: {0}")]
    NotSaved(String),
    /// The list is full.
    #[error("at most {MAX_SAVED_RELAYS} relays can be added")]
    Full,
    /// The stored list is damaged.
    #[error("saved relays are damaged: {0}")]
    Corrupt(#[from] DecodeError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Parses and checks a relay address typed by the user: a multiaddr ending in
/// `/p2p/<peer id>`, without `/p2p-circuit`.
pub fn parse_relay(text: &str) -> Result<Multiaddr, SettingsError> {
    let text = text.trim();
    if text.len() > MAX_ADDR_LEN {
        return Err(SettingsError::TooLong(text.len()));
    }
    let addr: Multiaddr = text
        .parse()
        .map_err(|e: libp2p::multiaddr::Error| SettingsError::Parse(e.to_string()))?;
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return Err(SettingsError::Circuit(text.to_owned()));
    }
    match addr.iter().last() {
        Some(Protocol::P2p(_)) if addr.iter().count() > 1 => Ok(addr),
        _ => Err(SettingsError::NoPeerId(text.to_owned())),
    }
}

/// The stored form of a relay list (see the module docs).
pub fn encode_relays(relays: &[Multiaddr]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(RELAYS_VERSION);
    w.u16(u16::try_from(relays.len()).unwrap_or(u16::MAX));
    for r in relays {
        w.bytes16(&r.to_vec());
    }
    w.into_bytes()
}

/// Parses the stored form strictly.
pub fn decode_relays(bytes: &[u8]) -> Result<Vec<Multiaddr>, DecodeError> {
    let mut r = Reader::new(bytes);
    r.version("saved relays", RELAYS_VERSION)?;
    let n = r.count16("saved relays", MAX_SAVED_RELAYS)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let b = r.bytes16("relay address", MAX_ADDR_LEN)?;
        out.push(Multiaddr::try_from(b.to_vec()).map_err(|_| DecodeError::Invalid("multiaddr"))?);
    }
    r.finish()?;
    Ok(out)
}

/// The relays the user saved, in the order added.
pub fn saved_relays(db: &Db) -> Result<Vec<Multiaddr>, SettingsError> {
    match db.get(RELAYS_KEY)? {
        None => Ok(Vec::new()),
        Some(b) => Ok(decode_relays(&b)?),
    }
}

/// Saves one more relay; returns the new list.
pub fn add_relay(db: &Db, addr: &Multiaddr) -> Result<Vec<Multiaddr>, SettingsError> {
    let mut all = saved_relays(db)?;
    if all.contains(addr) {
        return Err(SettingsError::Duplicate(addr.to_string()));
    }
    if all.len() >= MAX_SAVED_RELAYS {
        return Err(SettingsError::Full);
    }
    all.push(addr.clone());
    db.put(RELAYS_KEY, &encode_relays(&all))?;
    Ok(all)
}

/// Removes a saved relay; returns the new list.
pub fn remove_relay(db: &Db, addr: &Multiaddr) -> Result<Vec<Multiaddr>, SettingsError> {
    let mut all = saved_relays(db)?;
    let before = all.len();
    all.retain(|a| a != addr);
    if all.len() == before {
        return Err(SettingsError::NotSaved(addr.to_string()));
    }
    db.put(RELAYS_KEY, &encode_relays(&all))?;
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use securecomm_noise::secret::Secret32;

    const PEER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

    fn db() -> Db {
        Db::open_in_memory(&Secret32::from_bytes([1; 32])).unwrap()
    }

    #[test]
    fn validation_explains_what_is_wrong() {
        assert!(parse_relay(&format!("/ip4/127.0.0.1/tcp/4001/p2p/{PEER}")).is_ok());
        assert!(
            parse_relay(&format!(
                " /dns4/relay.example/udp/4001/quic-v1/p2p/{PEER} "
            ))
            .is_ok()
        );
        assert!(matches!(
            parse_relay("relay.example:4001"),
            Err(SettingsError::Parse(_))
        ));
        assert!(matches!(
            parse_relay("/ip4/127.0.0.1/tcp/4001"),
            Err(SettingsError::NoPeerId(_))
        ));
        assert!(matches!(
            parse_relay(&format!("/p2p/{PEER}")),
            Err(SettingsError::NoPeerId(_))
        ));
        assert!(matches!(
            parse_relay(&format!(
                "/ip4/1.2.3.4/tcp/1/p2p/{PEER}/p2p-circuit/p2p/{PEER}"
            )),
            Err(SettingsError::Circuit(_))
        ));
        assert!(matches!(
            parse_relay(&"/".repeat(600)),
            Err(SettingsError::TooLong(600))
        ));
    }

    #[test]
    fn add_remove_round_trip_and_bounds() {
        let db = db();
        assert!(saved_relays(&db).unwrap().is_empty());
        let a = parse_relay(&format!("/ip4/127.0.0.1/tcp/1/p2p/{PEER}")).unwrap();
        let b = parse_relay(&format!("/ip4/127.0.0.1/tcp/2/p2p/{PEER}")).unwrap();
        add_relay(&db, &a).unwrap();
        assert_eq!(add_relay(&db, &b).unwrap(), vec![a.clone(), b.clone()]);
        assert!(matches!(
            add_relay(&db, &a),
            Err(SettingsError::Duplicate(_))
        ));
        assert_eq!(saved_relays(&db).unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(remove_relay(&db, &a).unwrap(), vec![b.clone()]);
        assert!(matches!(
            remove_relay(&db, &a),
            Err(SettingsError::NotSaved(_))
        ));
        for port in 3..=(MAX_SAVED_RELAYS as u16 + 1) {
            let r = parse_relay(&format!("/ip4/127.0.0.1/tcp/{port}/p2p/{PEER}")).unwrap();
            add_relay(&db, &r).unwrap();
        }
        let extra = parse_relay(&format!("/ip4/127.0.0.1/tcp/999/p2p/{PEER}")).unwrap();
        assert!(matches!(add_relay(&db, &extra), Err(SettingsError::Full)));
    }

    #[test]
    fn damaged_list_is_an_error() {
        let db = db();
        let a = parse_relay(&format!("/ip4/127.0.0.1/tcp/1/p2p/{PEER}")).unwrap();
        let good = encode_relays(std::slice::from_ref(&a));
        assert_eq!(decode_relays(&good).unwrap(), vec![a]);
        for bad in [
            &good[..good.len() - 1],
            &[good.as_slice(), &[0]].concat(),
            &[2, 0, 0][..],
            &[1, 0xff, 0xff][..],
        ] {
            db.put(RELAYS_KEY, bad).unwrap();
            assert!(matches!(saved_relays(&db), Err(SettingsError::Corrupt(_))));
        }
    }
}
