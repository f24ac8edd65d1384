//! Encrypted identity backups: what they are and what restoring guarantees.
//!
//! A backup ([`IdentityStore::export_backup`]) is the identity file's own sealed format
//! (`securecomm_noise::keystore`: Argon2id over the passphrase, ChaCha20-Poly1305 over the
//! profile: display name, root key, device keys and certificate, database key) under a
//! passphrase the user picks for the backup. So:
//!
//! * **Nothing in clear.** The secret only ever exists unsealed in memory (zeroized buffers);
//!   the file holds salt, KDF parameters, nonce and ciphertext.
//! * **Re-authentication.** Exporting needs the current passphrase: an unlocked, unattended
//!   window is not enough to walk away with the identity.
//! * **No silent overwrite.** Export refuses an existing destination file; it writes through a
//!   fresh hidden temporary file next to it (created exclusively, so a file the user keeps under
//!   a similar name is never truncated) and links it into place.
//! * **Restore changes nothing unless it succeeds.** [`IdentityStore::import_backup`] refuses a
//!   data folder that already holds an identity, and opens and parses the whole backup before
//!   writing anything; a wrong passphrase ([`StoreError::WrongPassphrase`]), a garbage or
//!   truncated file ([`StoreError::Corrupt`]) or a missing one ([`StoreError::NotFound`]) leaves
//!   the data folder as it was.
//!
//! The database is not in the backup: a restored identity has the same user id, keys and
//! database key, so it opens a copied `node.db`; without one it starts empty and rejoins its
//! guilds' history through sync.
//!
//! [`IdentityStore::export_backup`]: super::IdentityStore::export_backup
//! [`IdentityStore::import_backup`]: super::IdentityStore::import_backup
//! [`StoreError::WrongPassphrase`]: super::StoreError::WrongPassphrase
//! [`StoreError::Corrupt`]: super::StoreError::Corrupt
//! [`StoreError::NotFound`]: super::StoreError::NotFound

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use crate::store::{IdentityStore, StoreError};

    fn store(dir: &Path) -> IdentityStore {
        IdentityStore::insecure_for_tests(dir)
    }

    fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
            .map(|it| {
                it.filter_map(Result::ok)
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            fs::read(e.path()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// An identity in a fresh folder, and its backup file.
    fn with_backup() -> (
        tempfile::TempDir,
        IdentityStore,
        std::path::PathBuf,
        [u8; 32],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir.path().join("data"));
        let mut rng = rand_core::OsRng;
        let p = s
            .create(&mut rng, b"device pass", "Alice Backup", "laptop", 1)
            .unwrap();
        let file = dir.path().join("alice.backup");
        s.export_backup(&mut rng, b"device pass", b"backup pass", &file)
            .unwrap();
        (dir, s, file, *p.identity.root_public().as_bytes())
    }

    #[test]
    fn round_trip_restores_the_same_user_and_nothing_is_in_clear() {
        let (dir, _, file, root) = with_backup();
        let blob = fs::read(&file).unwrap();
        assert!(!blob.windows(5).any(|w| w == b"Alice"));
        assert!(!blob.windows(6).any(|w| w == b"laptop"));
        let fresh = store(&dir.path().join("restored"));
        let p = fresh
            .import_backup(&mut rand_core::OsRng, &file, b"backup pass", b"new pass")
            .unwrap();
        assert_eq!(p.identity.root_public().as_bytes(), &root);
        assert_eq!(p.display_name, "Alice Backup");
        let again = fresh.unlock(b"new pass").unwrap();
        assert_eq!(again.identity.root_public().as_bytes(), &root);
        assert!(matches!(
            fresh.unlock(b"backup pass").unwrap_err(),
            StoreError::WrongPassphrase
        ));
    }

    #[test]
    fn wrong_backup_passphrase_writes_nothing() {
        let (dir, _, file, _) = with_backup();
        let target = dir.path().join("restored");
        let fresh = store(&target);
        assert!(matches!(
            fresh
                .import_backup(&mut rand_core::OsRng, &file, b"nope", b"new")
                .unwrap_err(),
            StoreError::WrongPassphrase
        ));
        assert!(!fresh.exists());
        assert!(listing(&target).is_empty(), "{:?}", listing(&target));
    }

    #[test]
    fn garbage_truncated_and_missing_backups_are_clear_errors() {
        let (dir, _, file, _) = with_backup();
        let blob = fs::read(&file).unwrap();
        let fresh = store(&dir.path().join("restored"));
        let bad = dir.path().join("bad.backup");
        for bytes in [
            b"not a backup at all".to_vec(),
            blob[..blob.len() / 2].to_vec(),
            blob[..blob.len() - 1].to_vec(),
            Vec::new(),
        ] {
            fs::write(&bad, &bytes).unwrap();
            let e = fresh
                .import_backup(&mut rand_core::OsRng, &bad, b"backup pass", b"new")
                .unwrap_err();
            assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
            assert!(!fresh.exists());
        }
        // A flipped ciphertext bit cannot be told from a wrong passphrase (AEAD): either way,
        // nothing is restored.
        let mut flipped = blob.clone();
        if let Some(b) = flipped.last_mut() {
            *b ^= 1;
        }
        fs::write(&bad, &flipped).unwrap();
        assert!(
            fresh
                .import_backup(&mut rand_core::OsRng, &bad, b"backup pass", b"new")
                .is_err()
        );
        assert!(!fresh.exists());
        let e = fresh
            .import_backup(
                &mut rand_core::OsRng,
                &dir.path().join("missing"),
                b"backup pass",
                b"new",
            )
            .unwrap_err();
        assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    }

    #[test]
    fn restore_never_overwrites_an_existing_identity() {
        let (dir, _, file, _) = with_backup();
        let other = store(&dir.path().join("other"));
        other
            .create(&mut rand_core::OsRng, b"p", "Bob", "d", 2)
            .unwrap();
        let before = fs::read(other.path()).unwrap();
        assert!(matches!(
            other
                .import_backup(&mut rand_core::OsRng, &file, b"backup pass", b"p")
                .unwrap_err(),
            StoreError::AlreadyExists(_)
        ));
        assert_eq!(fs::read(other.path()).unwrap(), before);
        assert_eq!(other.unlock(b"p").unwrap().display_name, "Bob");
    }

    #[test]
    fn export_needs_the_current_passphrase_and_never_overwrites() {
        let (dir, s, file, _) = with_backup();
        let before = fs::read(&file).unwrap();
        let mut rng = rand_core::OsRng;
        assert!(matches!(
            s.export_backup(&mut rng, b"device pass", b"other", &file)
                .unwrap_err(),
            StoreError::AlreadyExists(_)
        ));
        assert_eq!(fs::read(&file).unwrap(), before);
        let second = dir.path().join("second.backup");
        assert!(matches!(
            s.export_backup(&mut rng, b"wrong", b"backup pass", &second)
                .unwrap_err(),
            StoreError::WrongPassphrase
        ));
        assert!(!second.exists());
    }

    /// Regression: the temporary file used to be `dest.with_extension("tmp")`, truncated and
    /// then deleted, so exporting `notes.sc` destroyed a user's `notes.tmp`.
    #[test]
    fn export_leaves_a_sibling_tmp_file_alone() {
        let (dir, s, _, _) = with_backup();
        let keep = dir.path().join("notes.tmp");
        fs::write(&keep, b"my notes").unwrap();
        s.export_backup(
            &mut rand_core::OsRng,
            b"device pass",
            b"backup pass",
            &dir.path().join("notes.sc"),
        )
        .unwrap();
        assert_eq!(fs::read(&keep).unwrap(), b"my notes");
        let leftovers: Vec<String> = listing(dir.path())
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.ends_with(".tmp") && n != "notes.tmp")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
