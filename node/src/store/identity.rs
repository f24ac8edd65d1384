//! The local identity file.
//!
//! One file, `identity.sc`, holds the user's root key, this device's keys and certificate and the
//! display name, sealed under the passphrase. Rules that keep it safe:
//!
//! * **No silent loss.** Creating an identity never overwrites an existing file; a wrong
//!   passphrase is reported as such and leaves the file untouched; every write goes to a temporary
//!   file that is synced and then renamed over the old one, so a crash leaves either the old or the
//!   new file, never a torn one.
//! * **Backups** are the same sealed format under a passphrase of the user's choice, so a backup
//!   file is as safe to keep on a USB stick as the original.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rand_core::{CryptoRng, RngCore};
use securecomm_noise::codec::{DecodeError, Reader, Writer};
use securecomm_noise::identity::{IdentityError, UserIdentity};
use securecomm_noise::keystore::{self, KdfLimits, KdfParams, KeystoreError};
use securecomm_noise::secret::Secret32;
use thiserror::Error;
use zeroize::Zeroizing;

const FILE_NAME: &str = "identity.sc";
const PROFILE_VERSION: u8 = 1;
const MAX_NAME: usize = 64;
/// Largest identity file we read: a sealed profile is a few hundred bytes.
const MAX_FILE: u64 = 1 << 20;

/// Why the identity store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No identity exists yet in this data directory.
    #[error("no identity in {0}: create one first")]
    NotFound(PathBuf),
    /// An identity already exists; creating another would destroy it.
    #[error("an identity already exists at {0}; refusing to overwrite it")]
    AlreadyExists(PathBuf),
    /// The passphrase does not open the file. Nothing was changed.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The file is damaged or not an identity file.
    #[error("identity file is damaged or not a SecureComm identity: {0}")]
    Corrupt(String),
    /// A display name is empty or too long.
    #[error("display name must be 1 to {MAX_NAME} bytes, got {0}")]
    BadName(usize),
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl From<KeystoreError> for StoreError {
    fn from(e: KeystoreError) -> Self {
        match e {
            KeystoreError::WrongPassphrase => Self::WrongPassphrase,
            other => Self::Corrupt(other.to_string()),
        }
    }
}

impl From<IdentityError> for StoreError {
    fn from(e: IdentityError) -> Self {
        Self::Corrupt(e.to_string())
    }
}

/// What the identity file holds once unlocked.
#[derive(Debug)]
pub struct LocalProfile {
    /// The name others see.
    pub display_name: String,
    /// Root key, device keys and certificate.
    pub identity: UserIdentity,
    /// The key of the node's encrypted database.
    pub db_key: Secret32,
}

impl LocalProfile {
    fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(PROFILE_VERSION);
        w.bytes16(self.display_name.as_bytes());
        w.bytes32(&self.identity.to_secret_bytes());
        w.put(self.db_key.expose());
        Zeroizing::new(w.into_bytes())
    }

    fn from_secret_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(bytes);
        type Parts = (String, Zeroizing<Vec<u8>>, Secret32);
        let parse = |r: &mut Reader<'_>| -> Result<Parts, DecodeError> {
            r.version("profile", PROFILE_VERSION)?;
            let name = String::from_utf8(r.bytes16("display name", MAX_NAME)?.to_vec())
                .map_err(|_| DecodeError::Invalid("display name"))?;
            let id = Zeroizing::new(r.bytes32("identity", keystore::MAX_SECRET_LEN)?.to_vec());
            let db_key = Secret32::from_bytes(r.array()?);
            Ok((name, id, db_key))
        };
        let (display_name, id, db_key) =
            parse(&mut r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        r.finish().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Self {
            display_name,
            identity: UserIdentity::from_secret_bytes(&id)?,
            db_key,
        })
    }
}

/// The identity file in a data directory.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    dir: PathBuf,
    params: KdfParams,
    limits: KdfLimits,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl IdentityStore {
    /// The store in `dir`, with the default (strong) Argon2id parameters.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            params: KdfParams::DEFAULT,
            limits: KdfLimits::STANDARD,
        }
    }

    /// The store with explicit Argon2id parameters and the limits files must respect when
    /// opened (tests use light ones; a real store keeps the defaults).
    pub fn with_params(dir: impl Into<PathBuf>, params: KdfParams, limits: KdfLimits) -> Self {
        Self {
            dir: dir.into(),
            params,
            limits,
        }
    }

    /// Path of the identity file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Whether an identity file exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Creates a new identity and writes it sealed under `passphrase`. Refuses to overwrite.
    pub fn create<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        passphrase: &[u8],
        display_name: &str,
        device_name: &str,
        now: u64,
    ) -> Result<LocalProfile, StoreError> {
        if display_name.is_empty() || display_name.len() > MAX_NAME {
            return Err(StoreError::BadName(display_name.len()));
        }
        if self.exists() {
            return Err(StoreError::AlreadyExists(self.path()));
        }
        let profile = LocalProfile {
            display_name: display_name.to_owned(),
            identity: UserIdentity::generate(rng, device_name, now)?,
            db_key: Secret32::random(rng),
        };
        let blob = keystore::seal(rng, passphrase, &profile.to_secret_bytes(), &self.params)?;
        fs::create_dir_all(&self.dir).map_err(io("create directory", &self.dir))?;
        write_atomically(&self.path(), &blob, false)?;
        Ok(profile)
    }

    /// Unlocks the identity. A wrong passphrase is [`StoreError::WrongPassphrase`].
    pub fn unlock(&self, passphrase: &[u8]) -> Result<LocalProfile, StoreError> {
        open_file(&self.path(), passphrase, &self.limits)
    }

    /// Re-seals the identity under a new passphrase, atomically.
    pub fn change_passphrase<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        old: &[u8],
        new: &[u8],
    ) -> Result<(), StoreError> {
        let profile = self.unlock(old)?;
        let blob = keystore::seal(rng, new, &profile.to_secret_bytes(), &self.params)?;
        write_atomically(&self.path(), &blob, true)
    }

    /// Writes an encrypted backup of the identity to `dest`, sealed under `backup_passphrase`.
    pub fn export_backup<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        passphrase: &[u8],
        backup_passphrase: &[u8],
        dest: &Path,
    ) -> Result<(), StoreError> {
        let profile = self.unlock(passphrase)?;
        let blob = keystore::seal(
            rng,
            backup_passphrase,
            &profile.to_secret_bytes(),
            &self.params,
        )?;
        write_atomically(dest, &blob, false)
    }

    /// Restores an identity from a backup, sealing it under `passphrase`. Refuses to overwrite.
    pub fn import_backup<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        backup: &Path,
        backup_passphrase: &[u8],
        passphrase: &[u8],
    ) -> Result<LocalProfile, StoreError> {
        if self.exists() {
            return Err(StoreError::AlreadyExists(self.path()));
        }
        let profile = open_file(backup, backup_passphrase, &self.limits)?;
        let blob = keystore::seal(rng, passphrase, &profile.to_secret_bytes(), &self.params)?;
        fs::create_dir_all(&self.dir).map_err(io("create directory", &self.dir))?;
        write_atomically(&self.path(), &blob, false)?;
        Ok(profile)
    }
}

fn open_file(
    path: &Path,
    passphrase: &[u8],
    limits: &KdfLimits,
) -> Result<LocalProfile, StoreError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NotFound(path.to_path_buf()));
        }
        Err(e) => return Err(io("read", path)(e)),
    };
    if meta.len() > MAX_FILE {
        return Err(StoreError::Corrupt(format!(
            "file is {} bytes, at most {MAX_FILE} expected",
            meta.len()
        )));
    }
    let blob = fs::read(path).map_err(io("read", path))?;
    let plain = keystore::open_with_limits(passphrase, &blob, limits)?;
    LocalProfile::from_secret_bytes(&plain)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename. With `replace` false,
/// an existing `path` is never replaced.
fn write_atomically(path: &Path, bytes: &[u8], replace: bool) -> Result<(), StoreError> {
    let tmp = tmp_path(path);
    let mut opts = OpenOptions::new();
    // A fresh temporary file, never an existing one: a backup goes to a folder the user chose,
    // where `name.tmp` may be someone's file.
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io("create", &tmp))?;
    let written = f
        .write_all(bytes)
        .map_err(io("write", &tmp))
        .and_then(|()| f.sync_all().map_err(io("sync", &tmp)));
    drop(f);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if replace {
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(io("replace", path)(e));
        }
    } else {
        // hard_link fails if `path` exists, so a racing creator cannot be overwritten.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        linked.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                StoreError::AlreadyExists(path.to_path_buf())
            } else {
                io("create", path)(e)
            }
        })?;
    }
    if let Some(d) = path.parent().and_then(|dir| File::open(dir).ok()) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
impl IdentityStore {
    /// A store in `dir` with a KDF cheap enough for unit tests.
    pub(crate) fn insecure_for_tests(dir: &Path) -> Self {
        Self::with_params(
            dir,
            KdfParams::insecure_for_tests_only(64, 1, 1),
            KdfLimits::INSECURE_TEST_ONLY,
        )
    }
}

/// `.<name>.<pid>.<n>.tmp` next to `path`: unique within this process, and hidden.
fn tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> IdentityStore {
        IdentityStore::insecure_for_tests(dir)
    }

    #[test]
    fn create_unlock_and_wrong_passphrase_leaves_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut rng = rand_core::OsRng;
        let created = s
            .create(&mut rng, b"correct horse", "Alice", "laptop", 1_700_000_000)
            .unwrap();
        let before = fs::read(s.path()).unwrap();
        assert!(matches!(
            s.unlock(b"wrong").unwrap_err(),
            StoreError::WrongPassphrase
        ));
        assert_eq!(
            fs::read(s.path()).unwrap(),
            before,
            "a wrong passphrase must not touch the file"
        );
        let opened = s.unlock(b"correct horse").unwrap();
        assert_eq!(opened.display_name, "Alice");
        assert_eq!(
            opened.identity.root_public(),
            created.identity.root_public()
        );
        // Nothing readable on disk.
        assert!(!before.windows(5).any(|w| w == b"Alice"));
        assert!(!before.windows(6).any(|w| w == b"laptop"));
    }

    #[test]
    fn never_overwrites_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut rng = rand_core::OsRng;
        s.create(&mut rng, b"p", "A", "d", 1).unwrap();
        let before = fs::read(s.path()).unwrap();
        assert!(matches!(
            s.create(&mut rng, b"p", "B", "d", 2).unwrap_err(),
            StoreError::AlreadyExists(_)
        ));
        assert_eq!(fs::read(s.path()).unwrap(), before);
    }

    #[test]
    fn garbage_and_truncated_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert!(matches!(
            s.unlock(b"p").unwrap_err(),
            StoreError::NotFound(_)
        ));
        fs::write(s.path(), b"definitely not an identity").unwrap();
        assert!(matches!(
            s.unlock(b"p").unwrap_err(),
            StoreError::Corrupt(_)
        ));
        let mut rng = rand_core::OsRng;
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = store(dir2.path());
        s2.create(&mut rng, b"p", "A", "d", 1).unwrap();
        let blob = fs::read(s2.path()).unwrap();
        fs::write(s2.path(), &blob[..blob.len() - 3]).unwrap();
        assert!(matches!(
            s2.unlock(b"p").unwrap_err(),
            StoreError::Corrupt(_)
        ));
    }

    #[test]
    fn backup_round_trip_and_passphrase_change() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut rng = rand_core::OsRng;
        let created = s.create(&mut rng, b"one", "Alice", "laptop", 5).unwrap();
        let backup = dir.path().join("backup.sc");
        s.export_backup(&mut rng, b"one", b"backup pass", &backup)
            .unwrap();
        s.change_passphrase(&mut rng, b"one", b"two").unwrap();
        assert!(matches!(
            s.unlock(b"one").unwrap_err(),
            StoreError::WrongPassphrase
        ));
        assert_eq!(s.unlock(b"two").unwrap().display_name, "Alice");

        let other = tempfile::tempdir().unwrap();
        let s2 = store(other.path());
        assert!(matches!(
            s2.import_backup(&mut rng, &backup, b"wrong", b"new")
                .unwrap_err(),
            StoreError::WrongPassphrase
        ));
        let restored = s2
            .import_backup(&mut rng, &backup, b"backup pass", b"new")
            .unwrap();
        assert_eq!(
            restored.identity.root_public(),
            created.identity.root_public()
        );
        assert_eq!(s2.unlock(b"new").unwrap().display_name, "Alice");
    }
}
