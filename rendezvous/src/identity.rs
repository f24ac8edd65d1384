//! The relay's persistent libp2p identity.
//!
//! Clients pin a relay by its `/p2p/<peer id>`, so the id must survive restarts. The Ed25519
//! keypair lives in `<data dir>/relay.key`, in libp2p's protobuf key encoding, created with mode
//! 0600 inside a 0700 directory, written to a temporary file and renamed so a crash never
//! leaves half a key. The key authenticates the relay's transport (Noise) only: the relay holds
//! no key that could read what it forwards.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use libp2p::identity::Keypair;
use thiserror::Error;
use zeroize::Zeroizing;

/// File name of the identity key inside the data directory.
pub const KEY_FILE: &str = "relay.key";

/// Why the identity key could not be loaded or created.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// Reading, writing or creating the file or directory failed.
    #[error("identity key {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file exists but is not a protobuf-encoded Ed25519 keypair.
    #[error("identity key {path}: expected a protobuf-encoded Ed25519 keypair: {reason}")]
    Decode {
        /// The file involved.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads the relay keypair from `data_dir`, creating the directory and a fresh Ed25519 keypair
/// on first start. A key file readable by group or others is tightened to 0600 with a warning.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, IdentityError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(io_err(data_dir))?;
    let path = data_dir.join(KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let mode = fs::metadata(&path)
                .map_err(io_err(&path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format_args!("{:o}", mode & 0o777),
                    "identity key was readable by others; setting mode 0600");
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .map_err(io_err(&path))?;
            }
            let keypair =
                Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Decode {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if keypair.clone().try_into_ed25519().is_err() {
                return Err(IdentityError::Decode {
                    path,
                    reason: format!("key type is {:?}", keypair.key_type()),
                });
            }
            Ok(keypair)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => create(&path),
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn create(path: &Path) -> Result<Keypair, IdentityError> {
    let keypair = Keypair::generate_ed25519();
    let encoded =
        Zeroizing::new(
            keypair
                .to_protobuf_encoding()
                .map_err(|e| IdentityError::Decode {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?,
        );
    let tmp = path.with_extension("key.tmp");
    // A stale temporary file from a crash is ours to replace.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(&encoded).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        // Make the rename durable; a failure here only risks a new id after a power cut.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    tracing::info!(path = %path.display(), peer_id = %keypair.public().to_peer_id(),
        "created relay identity key");
    Ok(keypair)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("securecomm-relay-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn key_is_stable_and_private() {
        let dir = temp_dir("id");
        let a = load_or_create(&dir).unwrap();
        let b = load_or_create(&dir).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let mode = fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dmode & 0o077, 0);

        // Loose permissions are tightened, not trusted.
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let c = load_or_create(&dir).unwrap();
        assert_eq!(a.public().to_peer_id(), c.public().to_peer_id());
        let mode = fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A corrupted file is a clear error, never a silently new identity.
        let mut bytes = fs::read(dir.join(KEY_FILE)).unwrap();
        bytes.truncate(bytes.len() / 2);
        fs::write(dir.join(KEY_FILE), &bytes).unwrap();
        assert!(matches!(
            load_or_create(&dir),
            Err(IdentityError::Decode { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
