//! The on-disk side of file sharing: ciphertext only.
//!
//! Layout, in the node's data directory under `files/` (hex root = the file's content address):
//!
//! ```text
//! <root>.enc        a complete encrypted file: header || sealed chunks (what `noise::file` writes)
//! <root>.part       a file being fetched: the same layout, chunks written at their offsets
//! <root>.manifest   every sealed chunk's SHA-256, in order (32 bytes each)
//! tmp-*             a file being encrypted or exported (removed on failure)
//! ```
//!
//! Plaintext never lands here: a sent file is encrypted while it is read, a fetched one is
//! written as the ciphertext it arrived as (each chunk checked against the manifest, whose hash
//! is the root the encrypted message announced), and decryption happens only when the user
//! saves a file ([`FileStore::export`]), into the path they chose. Every operation holds at most
//! one chunk of a file in memory (the manifest is read 32 bytes at a time when serving, and a
//! fetch keeps it in memory: 32 bytes per 128 KiB chunk, 256 KiB for 1 GiB). These functions
//! block (file I/O): call them from a blocking thread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use securecomm_noise::file::{
    FileDecryptor, FileEncryptor, FileError, FileHeader, FileKey, FileParams,
};
use sha2::{Digest, Sha256};

use super::wire::{Attachment, MANIFEST_PAGE, ciphertext_len, encode_chunks};

/// Plaintext bytes per chunk of a shared file: large enough that a request of
/// [`super::wire::MAX_CHUNKS_PER_REQUEST`] chunks moves most of a megabyte, small enough that a
/// tampered or lost chunk costs little to fetch again.
pub const FILE_CHUNK_SIZE: u32 = 128 * 1024;

/// The encrypted file store of one node.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

/// A file encrypted into the store (what a sender announces).
#[derive(Debug)]
pub struct Imported {
    /// The announcement (without a thumbnail).
    pub attachment: Attachment,
}

fn hexname(root: &[u8; 32], ext: &str) -> String {
    format!("{}.{ext}", hex::encode(root))
}

impl FileStore {
    /// A store in `dir` (created when first written).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a complete encrypted file.
    pub fn enc_path(&self, root: &[u8; 32]) -> PathBuf {
        self.dir.join(hexname(root, "enc"))
    }

    /// Path of a file being fetched.
    pub fn part_path(&self, root: &[u8; 32]) -> PathBuf {
        self.dir.join(hexname(root, "part"))
    }

    /// Path of a file's manifest.
    pub fn manifest_path(&self, root: &[u8; 32]) -> PathBuf {
        self.dir.join(hexname(root, "manifest"))
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        self.dir
            .join(format!("tmp-{what}-{:016x}", OsRng.next_u64()))
    }

    fn ensure_dir(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)
    }

    /// Encrypts everything `src` yields into the store under a fresh random key; returns the
    /// announcement. `max` bounds the plaintext size (the guild's upload limit): a larger
    /// source is refused before anything is kept.
    pub fn import(
        &self,
        mut src: impl Read,
        name: &str,
        mime: &str,
        max: u64,
    ) -> Result<Imported, io::Error> {
        self.ensure_dir()?;
        let key = FileKey::generate(&mut OsRng);
        let tmp = self.tmp_path("import");
        let result = (|| {
            let out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            let params = FileParams {
                chunk_size: FILE_CHUNK_SIZE,
                chunk_hashes: true,
            };
            let mut enc = FileEncryptor::new(&key, out, params, &mut OsRng)?;
            let mut plain = Sha256::new();
            let mut buf = vec![0u8; FILE_CHUNK_SIZE as usize];
            let mut total = 0u64;
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                total += n as u64;
                if total > max {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("file too large: this guild allows at most {max} bytes"),
                    ));
                }
                let chunk = buf.get(..n).unwrap_or_default();
                plain.update(chunk);
                enc.write_all(chunk)?;
            }
            let done = enc.finish()?;
            let file = done
                .inner
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)?;
            file.sync_all()?;
            let manifest: Vec<u8> = done.chunk_hashes.concat();
            let root: [u8; 32] = Sha256::digest(&manifest).into();
            Ok((root, done.header, manifest, plain.finalize().into(), total))
        })();
        let (root, header, manifest, sha256, size) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        write_atomically(&self.manifest_path(&root), &manifest, &self.dir)?;
        fs::rename(&tmp, self.enc_path(&root))?;
        Ok(Imported {
            attachment: Attachment {
                name: name.to_owned(),
                mime: mime.to_owned(),
                size,
                sha256,
                root,
                header,
                key,
                thumbnail: None,
            },
        })
    }

    /// Whether the complete encrypted file is here.
    pub fn is_complete(&self, root: &[u8; 32]) -> bool {
        self.enc_path(root).is_file()
    }

    /// Up to [`MANIFEST_PAGE`] chunk hashes from `first`, with the total count; `None` if the
    /// manifest is not here.
    pub fn manifest_page(
        &self,
        root: &[u8; 32],
        first: u32,
    ) -> io::Result<Option<(u32, Vec<[u8; 32]>)>> {
        let f = match File::open(self.manifest_path(root)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let total = u32::try_from(f.metadata()?.len() / 32).unwrap_or(u32::MAX);
        let n = total.saturating_sub(first).min(MANIFEST_PAGE);
        let mut buf = vec![0u8; n as usize * 32];
        f.read_exact_at(&mut buf, u64::from(first) * 32)?;
        let hashes = buf
            .chunks_exact(32)
            .map(|c| <[u8; 32]>::try_from(c).unwrap_or([0; 32]))
            .collect();
        Ok(Some((total, hashes)))
    }

    /// Keeps a fetched manifest (already checked against its root).
    pub fn put_manifest(&self, root: &[u8; 32], hashes: &[[u8; 32]]) -> io::Result<()> {
        self.ensure_dir()?;
        write_atomically(&self.manifest_path(root), &hashes.concat(), &self.dir)
    }

    /// The whole manifest (32 bytes per chunk), if here.
    pub fn manifest(&self, root: &[u8; 32]) -> io::Result<Option<Vec<[u8; 32]>>> {
        match fs::read(self.manifest_path(root)) {
            Ok(b) => Ok(Some(
                b.chunks_exact(32)
                    .map(|c| <[u8; 32]>::try_from(c).unwrap_or([0; 32]))
                    .collect(),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes into `out` the fetch protocol's `Chunks` answer for the sealed chunks `indexes` of a
    /// file (complete, or being fetched: `have` says which chunks the part file holds; at most
    /// [`super::wire::MAX_CHUNKS_PER_REQUEST`] of them; those not held are left out), each chunk
    /// read from disk straight into the frame. Returns how many chunks it holds.
    pub fn chunks_answer(
        &self,
        root: &[u8; 32],
        header: &FileHeader,
        size: u64,
        indexes: impl Iterator<Item = u32>,
        have: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> io::Result<usize> {
        let path = match have {
            None => self.enc_path(root),
            Some(_) => self.part_path(root),
        };
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return encode_chunks(out, std::iter::empty(), |_| None, |_, _| Ok(()));
            }
            Err(e) => return Err(e),
        };
        let count = header.chunk_count(size);
        encode_chunks(
            out,
            indexes,
            |i| {
                (u64::from(i) < count && have.is_none_or(|h| bit(h, i)))
                    .then(|| chunk_span(header, size, i).1)
            },
            |i, buf| f.read_exact_at(buf, chunk_span(header, size, i).0),
        )
    }

    /// Checks every chunk `have` claims against the manifest, clearing the bits of chunks that
    /// do not match (written but lost in a crash, or torn); returns how many were cleared.
    /// Called when a fetch resumes, so progress can be saved without syncing the part file.
    pub fn verify_part(
        &self,
        root: &[u8; 32],
        header: &FileHeader,
        size: u64,
        hashes: &[[u8; 32]],
        have: &mut [u8],
    ) -> io::Result<u64> {
        let f = match File::open(self.part_path(root)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let n = have.iter().map(|b| u64::from(b.count_ones())).sum();
                have.iter_mut().for_each(|b| *b = 0);
                return Ok(n);
            }
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; header.sealed_chunk_len()];
        let mut cleared = 0;
        for (i, expected) in hashes.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            if !bit(have, i) {
                continue;
            }
            let (off, len) = chunk_span(header, size, i);
            let chunk = buf.get_mut(..len).unwrap_or_default();
            let ok = f.read_exact_at(chunk, off).is_ok()
                && securecomm_noise::file::chunk_hash(chunk) == *expected;
            if !ok {
                clear_bit(have, i);
                cleared += 1;
            }
        }
        Ok(cleared)
    }

    /// Opens (creating and sizing) the part file of a fetch; writes the header when new.
    pub fn open_part(&self, a: &Attachment) -> io::Result<File> {
        self.ensure_dir()?;
        let path = self.part_path(&a.root);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = a.ciphertext_len();
        if f.metadata()?.len() != len {
            f.set_len(len)?;
        }
        f.write_all_at(&a.header.to_array(), 0)?;
        Ok(f)
    }

    /// Turns a complete part file into the stored encrypted file.
    pub fn finish_part(&self, root: &[u8; 32]) -> io::Result<()> {
        fs::rename(self.part_path(root), self.enc_path(root))
    }

    /// Decrypts a complete file into `dest` (through a temporary file in the same directory,
    /// renamed only once the whole file authenticated and its plaintext hash matched the
    /// announcement). Refuses to overwrite an existing `dest`.
    pub fn export(&self, a: &Attachment, dest: &Path) -> io::Result<u64> {
        if dest.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", dest.display()),
            ));
        }
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = parent.join(format!(".securecomm-{:016x}.part", OsRng.next_u64()));
        let result = (|| {
            let src = File::open(self.enc_path(&a.root))?;
            let mut dec = FileDecryptor::new(&a.key, io::BufReader::with_capacity(1 << 20, src))?;
            let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; FILE_CHUNK_SIZE as usize];
            let mut total = 0u64;
            loop {
                let n = dec.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                let b = buf.get(..n).unwrap_or_default();
                hash.update(b);
                out.write_all(b)?;
                total += n as u64;
            }
            let digest: [u8; 32] = hash.finalize().into();
            if total != a.size || digest != a.sha256 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the decrypted file does not match its announced size and hash",
                ));
            }
            out.into_inner()
                .map_err(std::io::IntoInnerError::into_error)?
                .sync_all()?;
            Ok(total)
        })();
        match result {
            Ok(n) => {
                fs::rename(&tmp, dest)?;
                Ok(n)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Decrypts a complete file of at most `max` bytes into memory (small assets: soundboard
    /// clips).
    pub fn read_small(&self, a: &Attachment, max: u64) -> io::Result<Vec<u8>> {
        if a.size > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "asset too large",
            ));
        }
        let src = File::open(self.enc_path(&a.root))?;
        let mut dec = FileDecryptor::new(&a.key, src)?;
        let mut out = Vec::with_capacity(usize::try_from(a.size).unwrap_or(0));
        dec.by_ref().take(max + 1).read_to_end(&mut out)?;
        if out.len() as u64 != a.size || <[u8; 32]>::from(Sha256::digest(&out)) != a.sha256 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "asset does not match its announced size and hash",
            ));
        }
        Ok(out)
    }

    /// Removes everything stored for `root`.
    pub fn remove(&self, root: &[u8; 32]) {
        for p in [
            self.enc_path(root),
            self.part_path(root),
            self.manifest_path(root),
        ] {
            let _ = fs::remove_file(p);
        }
    }

    /// Removes temporary files left by a crash.
    pub fn clean_tmp(&self) {
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("tmp-") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Offset and sealed length of chunk `i` of a file of `size` plaintext bytes.
pub fn chunk_span(header: &FileHeader, size: u64, i: u32) -> (u64, usize) {
    let off = header.chunk_offset(i);
    let end = ciphertext_len(header, size);
    let full = header.sealed_chunk_len() as u64;
    let len = end.saturating_sub(off).min(full);
    (off, usize::try_from(len).unwrap_or(0))
}

/// Whether bit `i` of a bitmap is set.
pub fn bit(map: &[u8], i: u32) -> bool {
    map.get(i as usize / 8)
        .is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Sets bit `i` of a bitmap.
pub fn set_bit(map: &mut [u8], i: u32) {
    if let Some(b) = map.get_mut(i as usize / 8) {
        *b |= 1 << (i % 8);
    }
}

/// Clears bit `i` of a bitmap.
pub fn clear_bit(map: &mut [u8], i: u32) {
    if let Some(b) = map.get_mut(i as usize / 8) {
        *b &= !(1 << (i % 8));
    }
}

/// A bitmap for `n` chunks.
pub fn bitmap(n: u64) -> Vec<u8> {
    vec![0u8; usize::try_from(n.div_ceil(8)).unwrap_or(0)]
}

fn write_atomically(path: &Path, data: &[u8], dir: &Path) -> io::Result<()> {
    let tmp = dir.join(format!("tmp-write-{:016x}", OsRng.next_u64()));
    let r = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// Why a decryption failed, in words (for errors shown to users).
pub fn describe(e: &io::Error) -> String {
    match FileError::from_io(e) {
        Some(f) => f.to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use securecomm_noise::file::chunk_hash;

    use crate::files::wire::FileAnswer;

    /// Serves chunk `i` of `att` from `store` as a fetch answer, decoded.
    fn read_chunk(store: &FileStore, att: &Attachment, i: u32) -> (u32, Vec<u8>) {
        let mut frame = Vec::new();
        let n = store
            .chunks_answer(
                &att.root,
                &att.header,
                att.size,
                std::iter::once(i),
                None,
                &mut frame,
            )
            .unwrap();
        assert_eq!(n, 1);
        match FileAnswer::parse(&frame).unwrap() {
            FileAnswer::Chunks(c) => (c[0].0, c[0].1.to_vec()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn import_serve_refetch_and_export_round_trip_without_plaintext_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileStore::new(dir.path().join("a"));
        let b = FileStore::new(dir.path().join("b"));
        let data: Vec<u8> = (0..(3 * FILE_CHUNK_SIZE as usize + 777))
            .map(|i| (i % 251) as u8)
            .collect();
        let imp = a
            .import(&data[..], "x.bin", "application/octet-stream", u64::MAX)
            .unwrap();
        let att = imp.attachment;
        assert_eq!(att.size, data.len() as u64);
        assert_eq!(att.chunk_count(), 4);
        let (total, hashes) = a.manifest_page(&att.root, 0).unwrap().unwrap();
        assert_eq!(total, 4);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(hashes.concat())), att.root);
        // No plaintext window of the file is on disk.
        for e in fs::read_dir(a.dir()).unwrap() {
            let bytes = fs::read(e.unwrap().path()).unwrap();
            assert!(!bytes.windows(64).any(|w| w == &data[1000..1064]));
        }
        // b fetches every chunk out of order into its part file.
        b.put_manifest(&att.root, &hashes).unwrap();
        let part = b.open_part(&att).unwrap();
        for i in [3u32, 1, 0, 2] {
            let (idx, c) = read_chunk(&a, &att, i);
            assert_eq!(idx, i);
            assert_eq!(chunk_hash(&c), hashes[i as usize]);
            let (off, _) = chunk_span(&att.header, att.size, i);
            part.write_all_at(&c, off).unwrap();
        }
        // What a resumed fetch checks: all four chunks are good; one torn chunk is cleared.
        let mut have = bitmap(4);
        (0..4).for_each(|i| set_bit(&mut have, i));
        let check = |have: &mut Vec<u8>| {
            b.verify_part(&att.root, &att.header, att.size, &hashes, have)
                .unwrap()
        };
        assert_eq!(check(&mut have), 0);
        let (off, _) = chunk_span(&att.header, att.size, 2);
        part.write_all_at(&[0xff; 7], off + 5).unwrap();
        assert_eq!(check(&mut have), 1);
        assert!(bit(&have, 1) && !bit(&have, 2) && bit(&have, 3));
        let (_, good) = read_chunk(&a, &att, 2);
        part.write_all_at(&good, off).unwrap();
        b.finish_part(&att.root).unwrap();
        let dest = dir.path().join("out.bin");
        assert_eq!(b.export(&att, &dest).unwrap(), data.len() as u64);
        assert_eq!(fs::read(&dest).unwrap(), data);
        // Exporting again refuses to overwrite.
        assert!(b.export(&att, &dest).is_err());
    }

    #[test]
    fn oversized_sources_and_tampered_files_are_refused_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path().to_path_buf());
        let err = s.import(&[0u8; 1000][..], "a", "a/b", 999).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        let att = s
            .import(&[7u8; 5000][..], "a", "a/b", u64::MAX)
            .unwrap()
            .attachment;
        let p = s.enc_path(&att.root);
        let mut bytes = fs::read(&p).unwrap();
        bytes[securecomm_noise::file::HEADER_LEN + 10] ^= 1;
        fs::write(&p, bytes).unwrap();
        let dest = dir.path().join("out");
        assert!(s.export(&att, &dest).is_err());
        assert!(!dest.exists());
        assert_eq!(
            fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.'))
                .count(),
            0
        );
    }

    #[test]
    fn bitmaps() {
        let mut m = bitmap(10);
        assert_eq!(m.len(), 2);
        set_bit(&mut m, 9);
        assert!(bit(&m, 9) && !bit(&m, 8));
        set_bit(&mut m, 100);
        assert!(!bit(&m, 100));
    }
}
