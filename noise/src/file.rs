//! File encryption: chunked ChaCha20-Poly1305 in the STREAM construction (Hoang, Reyhanitabar,
//! Rogaway, Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance",
//! CRYPTO 2015).
//!
//! # Wire format
//!
//! ```text
//! header  = version (u8 = 1) || chunk_size (u32 BE) || nonce_prefix (7 random bytes)   12 bytes
//! file    = header || chunk_0 || chunk_1 || ... || chunk_last
//! chunk_i = ChaCha20-Poly1305(key, nonce_i, aad = header, plaintext_i)   (ciphertext || tag)
//! nonce_i = nonce_prefix || i (u32 BE) || last (1 for the final chunk, else 0)
//! ```
//!
//! Every chunk but the last holds exactly `chunk_size` plaintext bytes; the last holds
//! `0..=chunk_size` bytes. An empty file is the header and one final, empty chunk (16 bytes).
//! The chunk index in the nonce makes reordering, duplication and splicing in chunks of another
//! file (different key or prefix) fail authentication; the last-chunk flag makes truncation at a
//! chunk boundary and extension after the final chunk fail too. Binding the header as AAD means
//! the chunk size cannot be altered either. Chunk sizes are bounded to
//! [`MIN_CHUNK_SIZE`]`..=`[`MAX_CHUNK_SIZE`] (default [`DEFAULT_CHUNK_SIZE`]) so a hostile header
//! cannot make a reader allocate much. A file holds at most 2^32 chunks.
//!
//! # Content addressing
//!
//! Each ciphertext chunk is addressed by its SHA-256 ([`chunk_hash`]). The encryptor collects
//! the hashes ([`FileEncryptor::chunk_hashes`]); the file announcement (an encrypted message
//! carrying key, header, size and hashes) lets members fetch chunks from any peer and check each
//! one with [`open_chunk`] before decrypting it. [`FileHeader::chunk_offset`] and
//! [`FileHeader::chunk_count`] locate chunks inside the ciphertext.
//!
//! # Memory and I/O
//!
//! [`FileEncryptor`] (a [`Write`]) and [`FileDecryptor`] (a [`Read`]) hold one chunk buffer
//! each, whatever the file size; the encryptor also keeps 32 bytes of hash per chunk unless
//! hashing is turned off in [`FileParams`]. They do no I/O of their own: they only call the
//! reader or writer they wrap. The decryptor returns a chunk's plaintext only after that chunk
//! authenticated, and knows a chunk is final by reading one byte past it. Errors are
//! `io::Error`s of kind `InvalidData` wrapping a [`FileError`] (see [`FileError::from_io`]).

use std::io::{self, Read, Write};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::secret::Secret32;

/// The header version this build writes and reads.
pub const FILE_VERSION: u8 = 1;
/// Encoded header length.
pub const HEADER_LEN: usize = 12;
/// Poly1305 tag length, added to every chunk.
pub const TAG_LEN: usize = 16;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u32 = 16;
/// Largest chunk size accepted (bounds the reader's buffer).
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;
/// Chunk size used unless the caller picks another.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Length of the random nonce prefix.
pub const NONCE_PREFIX_LEN: usize = 7;

/// Why a file could not be encrypted, decrypted or a chunk opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FileError {
    /// The header is malformed, of an unknown version or has an out-of-range chunk size.
    #[error("invalid file header: {0}")]
    Header(#[from] DecodeError),
    /// The chosen chunk size is out of range.
    #[error("chunk size out of range: expected {min}..={max}, got {got}")]
    ChunkSize {
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
        /// Requested.
        got: u32,
    },
    /// The stream ended before the final chunk.
    #[error("file truncated: ended after {chunks} chunks without a final chunk")]
    Truncated {
        /// Complete chunks seen before the end.
        chunks: u32,
    },
    /// Bytes follow the final chunk.
    #[error("data after the final chunk {index}")]
    TrailingData {
        /// Index of the final chunk.
        index: u32,
    },
    /// A chunk does not authenticate at its position (altered, reordered, duplicated or from
    /// another file).
    #[error("chunk {index} failed authentication")]
    Authentication {
        /// The position of the chunk.
        index: u32,
    },
    /// A chunk has an impossible length for its position.
    #[error("chunk {index} has length {got}, expected {expected}")]
    ChunkLength {
        /// The chunk's index.
        index: u32,
        /// What its length must be (`"exactly N"` or `"16..=N"`).
        expected: String,
        /// Its length.
        got: usize,
    },
    /// A fetched chunk does not hash to the announced value.
    #[error("chunk {index} does not match its announced hash")]
    HashMismatch {
        /// The chunk's index.
        index: u32,
    },
    /// A chunk index is outside the file.
    #[error("chunk index out of range: expected below {count}, got {index}")]
    IndexOutOfRange {
        /// The requested index.
        index: u32,
        /// The file's chunk count.
        count: u32,
    },
    /// The file would need more than 2^32 chunks.
    #[error("file too large: more than 2^32 chunks")]
    TooManyChunks,
    /// The encryptor failed earlier (its writer returned an error) and can no longer be used.
    #[error("file encryptor unusable after an earlier error")]
    Poisoned,
}

impl FileError {
    /// The typed error inside an `io::Error` returned by this module's adapters, if any.
    pub fn from_io(err: &io::Error) -> Option<&FileError> {
        err.get_ref().and_then(|e| e.downcast_ref::<FileError>())
    }
}

impl From<FileError> for io::Error {
    fn from(e: FileError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A file's symmetric key: random, used for one file only. Zeroized on drop; `Debug` redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct FileKey(Secret32);

impl FileKey {
    /// A fresh random key.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self(Secret32::random(rng))
    }

    /// Wraps key bytes received in a file announcement.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Secret32::from_bytes(bytes))
    }

    /// The key bytes, to put in an encrypted announcement.
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(self.0.expose().into())
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(<redacted>)")
    }
}

/// The header at the start of every encrypted file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    chunk_size: u32,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl FileHeader {
    /// A header with a fresh random nonce prefix.
    pub fn new<R: RngCore + CryptoRng>(chunk_size: u32, rng: &mut R) -> Result<Self, FileError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(FileError::ChunkSize {
                min: MIN_CHUNK_SIZE,
                max: MAX_CHUNK_SIZE,
                got: chunk_size,
            });
        }
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        rng.fill_bytes(&mut nonce_prefix);
        Ok(Self {
            chunk_size,
            nonce_prefix,
        })
    }

    /// Plaintext bytes per non-final chunk.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Ciphertext bytes of a full chunk.
    pub fn sealed_chunk_len(&self) -> usize {
        self.chunk_size as usize + TAG_LEN
    }

    /// Number of chunks for a plaintext of `plaintext_len` bytes (at least 1).
    pub fn chunk_count(&self, plaintext_len: u64) -> u64 {
        plaintext_len.div_ceil(u64::from(self.chunk_size)).max(1)
    }

    /// Byte offset of chunk `index` in the encrypted file.
    pub fn chunk_offset(&self, index: u32) -> u64 {
        HEADER_LEN as u64 + u64::from(index) * self.sealed_chunk_len() as u64
    }

    /// The encoded header (what starts the encrypted file, and its chunks' AAD).
    pub fn to_array(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (dst, src) in out.iter_mut().zip(self.to_bytes()) {
            *dst = src;
        }
        out
    }

    fn nonce(&self, index: u32, last: bool) -> Nonce {
        let mut n = [0u8; 12];
        let tail = index.to_be_bytes().into_iter().chain([u8::from(last)]);
        for (dst, src) in n.iter_mut().zip(self.nonce_prefix.into_iter().chain(tail)) {
            *dst = src;
        }
        Nonce::from(n)
    }
}

impl Encode for FileHeader {
    fn encode(&self, w: &mut Writer) {
        w.u8(FILE_VERSION);
        w.u32(self.chunk_size);
        w.put(&self.nonce_prefix);
    }
}

impl Decode for FileHeader {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("file header", FILE_VERSION)?;
        let chunk_size = r.u32()?;
        if chunk_size > MAX_CHUNK_SIZE {
            return Err(DecodeError::TooLong {
                what: "chunk size",
                max: MAX_CHUNK_SIZE as usize,
                got: chunk_size as usize,
            });
        }
        if chunk_size < MIN_CHUNK_SIZE {
            return Err(DecodeError::Invalid("chunk size below the minimum"));
        }
        Ok(Self {
            chunk_size,
            nonce_prefix: r.array()?,
        })
    }
}

/// SHA-256 of a ciphertext chunk (including its tag): the chunk's content address.
pub fn chunk_hash(sealed_chunk: &[u8]) -> [u8; 32] {
    Sha256::digest(sealed_chunk).into()
}

/// Checks a fetched chunk against its announced hash, then decrypts it as chunk `index` of a
/// file with `chunk_count` chunks.
pub fn open_chunk(
    key: &FileKey,
    header: &FileHeader,
    index: u32,
    chunk_count: u32,
    sealed_chunk: &[u8],
    expected_hash: &[u8; 32],
) -> Result<Vec<u8>, FileError> {
    if index >= chunk_count {
        return Err(FileError::IndexOutOfRange {
            index,
            count: chunk_count,
        });
    }
    let last = index == chunk_count - 1;
    let full = header.sealed_chunk_len();
    let len_ok = if last {
        (TAG_LEN..=full).contains(&sealed_chunk.len())
    } else {
        sealed_chunk.len() == full
    };
    if !len_ok {
        return Err(FileError::ChunkLength {
            index,
            expected: if last {
                format!("{TAG_LEN}..={full}")
            } else {
                format!("exactly {full}")
            },
            got: sealed_chunk.len(),
        });
    }
    if !bool::from(chunk_hash(sealed_chunk).ct_eq(expected_hash)) {
        return Err(FileError::HashMismatch { index });
    }
    let (ct, tag) = sealed_chunk.split_at(sealed_chunk.len() - TAG_LEN);
    let mut out = ct.to_vec();
    key.cipher()
        .decrypt_in_place_detached(
            &header.nonce(index, last),
            &header.to_array(),
            &mut out,
            Tag::from_slice(tag),
        )
        .map_err(|_| FileError::Authentication { index })?;
    Ok(out)
}

/// Options for [`FileEncryptor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileParams {
    /// Plaintext bytes per chunk, [`MIN_CHUNK_SIZE`]`..=`[`MAX_CHUNK_SIZE`].
    pub chunk_size: u32,
    /// Whether to collect the SHA-256 of every ciphertext chunk (32 bytes per chunk).
    pub chunk_hashes: bool,
}

impl Default for FileParams {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            chunk_hashes: true,
        }
    }
}

/// What [`FileEncryptor::finish`] returns.
#[derive(Debug)]
pub struct FinishedFile<W> {
    /// The wrapped writer, flushed.
    pub inner: W,
    /// The file's header (also the first bytes written).
    pub header: FileHeader,
    /// SHA-256 of every ciphertext chunk in order (empty if hashing was off).
    pub chunk_hashes: Vec<[u8; 32]>,
    /// Number of chunks written.
    pub chunk_count: u32,
    /// Plaintext bytes encrypted.
    pub plaintext_len: u64,
}

/// ChaCha20-Poly1305 (RFC 8439 §2.8) from `plaintext` into `out` (ciphertext || tag) in one
/// pass over the plaintext: the keystream is XORed while copying, then Poly1305 runs over the
/// ciphertext in `out`. Output is byte-identical to `chacha20poly1305`'s (a test checks it); it
/// exists because the streaming encryptor would otherwise copy every chunk once more before
/// encrypting it in place.
fn seal_into(key: &[u8; 32], nonce: &Nonce, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
    use chacha20::cipher::{KeyIvInit, StreamCipher};
    use poly1305::universal_hash::{KeyInit as _, UniversalHash};

    let mut cipher = chacha20::ChaCha20::new(key.into(), nonce);
    let mut mac_key = zeroize::Zeroizing::new([0u8; 64]);
    cipher.apply_keystream(mac_key.as_mut());
    let mut mac = poly1305::Poly1305::new(poly1305::Key::from_slice(&mac_key[..32]));
    out.clear();
    out.resize(plaintext.len(), 0);
    // Both slices have the same length, so this cannot fail; the cipher position starts at
    // block 1 after the 64-byte MAC key block, as RFC 8439 requires.
    if cipher.apply_keystream_b2b(plaintext, out).is_err() {
        out.clear();
    }
    mac.update_padded(aad);
    mac.update_padded(out);
    let mut lengths = poly1305::Block::default();
    lengths[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
    lengths[8..].copy_from_slice(&(out.len() as u64).to_le_bytes());
    mac.update(&[lengths]);
    out.extend_from_slice(&mac.finalize());
}

/// Encrypts a file as it is written, holding at most one chunk.
///
/// Bytes written are buffered until a chunk is full *and* more data follows; only
/// [`FileEncryptor::finish`] writes the final chunk. Dropping the encryptor without `finish`
/// leaves a truncated file, which every reader rejects.
pub struct FileEncryptor<W: Write> {
    inner: W,
    key: Secret32,
    header: FileHeader,
    aad: [u8; HEADER_LEN],
    buf: Vec<u8>,
    out: Vec<u8>,
    chunk_size: usize,
    index: u32,
    hashes: Option<Vec<[u8; 32]>>,
    plaintext_len: u64,
    poisoned: bool,
}

impl<W: Write> std::fmt::Debug for FileEncryptor<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileEncryptor")
            .field("header", &self.header)
            .field("chunks_written", &self.index)
            .field("plaintext_len", &self.plaintext_len)
            .finish_non_exhaustive()
    }
}

impl<W: Write> FileEncryptor<W> {
    /// Starts a file: picks a random nonce prefix and writes the header to `inner`.
    pub fn new<R: RngCore + CryptoRng>(
        key: &FileKey,
        mut inner: W,
        params: FileParams,
        rng: &mut R,
    ) -> io::Result<Self> {
        let header = FileHeader::new(params.chunk_size, rng)?;
        let aad = header.to_array();
        inner.write_all(&aad)?;
        let chunk_size = params.chunk_size as usize;
        Ok(Self {
            inner,
            key: key.0.clone(),
            header,
            aad,
            buf: Vec::with_capacity(chunk_size),
            out: Vec::with_capacity(chunk_size + TAG_LEN),
            chunk_size,
            index: 0,
            hashes: params.chunk_hashes.then(Vec::new),
            plaintext_len: 0,
            poisoned: false,
        })
    }

    /// The file's header.
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// Hashes of the chunks written so far (the final chunk appears after `finish`).
    pub fn chunk_hashes(&self) -> &[[u8; 32]] {
        self.hashes.as_deref().unwrap_or(&[])
    }

    /// Encrypts the buffered plaintext as chunk `self.index` and writes it.
    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let r = self.seal_slice(&buf, last);
        self.buf = buf;
        self.buf.clear();
        r
    }

    /// Encrypts `chunk` as chunk `self.index` and writes it. The plaintext is read once: the
    /// keystream is applied while copying it into the output buffer (see [`seal_into`]).
    fn seal_slice(&mut self, chunk: &[u8], last: bool) -> io::Result<()> {
        if !last && self.index == u32::MAX {
            // The final chunk would need index 2^32.
            self.poisoned = true;
            return Err(FileError::TooManyChunks.into());
        }
        let nonce = self.header.nonce(self.index, last);
        seal_into(self.key.expose(), &nonce, &self.aad, chunk, &mut self.out);
        if let Some(hashes) = &mut self.hashes {
            hashes.push(chunk_hash(&self.out));
        }
        if let Err(e) = self.inner.write_all(&self.out) {
            self.poisoned = true;
            return Err(e);
        }
        self.index = self.index.wrapping_add(1);
        Ok(())
    }

    /// Writes the final chunk, flushes the writer and returns it with the file's summary.
    pub fn finish(mut self) -> io::Result<FinishedFile<W>> {
        if self.poisoned {
            return Err(FileError::Poisoned.into());
        }
        self.seal_chunk(true)?;
        self.inner.flush()?;
        Ok(FinishedFile {
            inner: self.inner,
            header: self.header,
            chunk_hashes: self.hashes.unwrap_or_default(),
            chunk_count: self.index,
            plaintext_len: self.plaintext_len,
        })
    }
}

impl<W: Write> Write for FileEncryptor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(FileError::Poisoned.into());
        }
        let mut rest = data;
        while !rest.is_empty() {
            if self.buf.len() == self.chunk_size {
                // More data follows, so the buffered chunk is not the last one.
                self.seal_chunk(false)?;
            }
            if self.buf.is_empty() && rest.len() > self.chunk_size {
                // A whole chunk with more data after it: encrypt it straight from the caller's
                // buffer instead of copying it into ours first.
                let (chunk, tail) = rest.split_at(self.chunk_size);
                self.seal_slice(chunk, false)?;
                rest = tail;
                continue;
            }
            let take = (self.chunk_size - self.buf.len()).min(rest.len());
            let (head, tail) = rest.split_at(take);
            self.buf.extend_from_slice(head);
            rest = tail;
        }
        self.plaintext_len += data.len() as u64;
        Ok(data.len())
    }

    /// Flushes the wrapped writer. A partial chunk stays buffered: it can only be sealed once
    /// it is known whether more data follows.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadState {
    Open,
    Done,
    Failed(FileError),
}

/// Decrypts a file as it is read, holding at most one chunk; plaintext is released only after
/// its chunk authenticated.
pub struct FileDecryptor<R: Read> {
    inner: R,
    cipher: ChaCha20Poly1305,
    header: FileHeader,
    aad: [u8; HEADER_LEN],
    /// One sealed chunk plus one byte of lookahead.
    buf: Vec<u8>,
    /// The byte read past the previous chunk, which starts this one.
    lookahead: Option<u8>,
    index: u32,
    plain: std::ops::Range<usize>,
    state: ReadState,
}

impl<R: Read> std::fmt::Debug for FileDecryptor<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDecryptor")
            .field("header", &self.header)
            .field("chunks_read", &self.index)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<R: Read> FileDecryptor<R> {
    /// Reads and checks the header from `inner`.
    pub fn new(key: &FileKey, mut inner: R) -> io::Result<Self> {
        let mut raw = [0u8; HEADER_LEN];
        let mut filled = 0;
        while filled < HEADER_LEN {
            match inner.read(raw.get_mut(filled..).unwrap_or_default()) {
                Ok(0) => {
                    return Err(FileError::Header(DecodeError::Truncated {
                        needed: HEADER_LEN,
                        remaining: filled,
                    })
                    .into());
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let header = FileHeader::from_bytes(&raw).map_err(FileError::Header)?;
        Ok(Self {
            inner,
            cipher: key.cipher(),
            header,
            aad: raw,
            buf: vec![0u8; header.sealed_chunk_len() + 1],
            lookahead: None,
            index: 0,
            plain: 0..0,
            state: ReadState::Open,
        })
    }

    /// The file's header.
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// Reads, authenticates and decrypts the next chunk into `self.buf`.
    fn next_chunk(&mut self) -> Result<(), io::Error> {
        let full = self.header.sealed_chunk_len();
        let mut filled = 0;
        if let (Some(b), Some(first)) = (self.lookahead.take(), self.buf.first_mut()) {
            *first = b;
            filled = 1;
        }
        while filled < self.buf.len() {
            match self
                .inner
                .read(self.buf.get_mut(filled..).unwrap_or_default())
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // A byte past a full chunk means this chunk is not the last.
        let last = filled <= full;
        if !last {
            self.lookahead = self.buf.get(full).copied();
            filled = full;
        }
        let index = self.index;
        if filled < TAG_LEN {
            return Err(FileError::Truncated { chunks: index }.into());
        }
        if !last && index == u32::MAX {
            return Err(FileError::TooManyChunks.into());
        }
        let (body, tag) = self
            .buf
            .get_mut(..filled)
            .unwrap_or_default()
            .split_at_mut(filled - TAG_LEN);
        let tag = Tag::clone_from_slice(tag);
        let ok = open_detached(
            &self.cipher,
            &self.header.nonce(index, last),
            &self.aad,
            body,
            &tag,
        );
        if !ok {
            // Decryption leaves the buffer untouched on failure, so try the other flag to say
            // precisely what is wrong.
            let other = open_detached(
                &self.cipher,
                &self.header.nonce(index, !last),
                &self.aad,
                body,
                &tag,
            );
            return Err(match (other, last) {
                // A full non-final chunk and then the end: the final chunk is missing.
                (true, true) => FileError::Truncated { chunks: index + 1 },
                // A valid final chunk followed by more bytes.
                (true, false) => FileError::TrailingData { index },
                (false, _) => FileError::Authentication { index },
            }
            .into());
        }
        self.plain = 0..filled - TAG_LEN;
        if last {
            self.state = ReadState::Done;
        } else {
            self.index += 1;
        }
        Ok(())
    }
}

/// Decrypts one chunk in place. Not generic on purpose: it is compiled (and optimized) in this
/// crate, whereas the generic [`FileDecryptor`] is compiled in the crate that uses it, where an
/// unoptimized build decrypted at 7 MB/s.
#[inline(never)]
fn open_detached(
    cipher: &ChaCha20Poly1305,
    nonce: &Nonce,
    aad: &[u8],
    body: &mut [u8],
    tag: &Tag,
) -> bool {
    cipher
        .decrypt_in_place_detached(nonce, aad, body, tag)
        .is_ok()
}

impl<R: Read> Read for FileDecryptor<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.plain.is_empty() {
                let src = self.buf.get(self.plain.clone()).unwrap_or_default();
                let n = src.len().min(out.len());
                if let (Some(d), Some(s)) = (out.get_mut(..n), src.get(..n)) {
                    d.copy_from_slice(s);
                }
                self.plain.start += n;
                return Ok(n);
            }
            match &self.state {
                ReadState::Done => return Ok(0),
                ReadState::Failed(e) => return Err(e.clone().into()),
                ReadState::Open => {}
            }
            if out.is_empty() {
                return Ok(0);
            }
            if let Err(e) = self.next_chunk() {
                // Plaintext of a bad chunk never leaves; the decryptor stays failed.
                self.plain = 0..0;
                if let Some(fe) = FileError::from_io(&e) {
                    self.state = ReadState::Failed(fe.clone());
                }
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod seal_into_tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 8439 §2.8.2: the AEAD known-answer vector, through both the `chacha20poly1305`
    /// crate (which frames, envelopes, ratchets and Noise use) and the one-pass path.
    #[test]
    fn rfc8439_aead_vector() {
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce = hex::decode("070000004041424344454647").unwrap();
        let expected_ct = "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116";
        let expected_tag = "1ae10b594f09e26a7e902ecbd0600691";
        let mut ct = pt.to_vec();
        let tag = ChaCha20Poly1305::new(&key.into())
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut ct)
            .unwrap();
        assert_eq!(hex::encode(&ct), expected_ct);
        assert_eq!(hex::encode(tag), expected_tag);
        let mut out = Vec::new();
        seal_into(&key, Nonce::from_slice(&nonce), &aad, pt, &mut out);
        assert_eq!(hex::encode(&out), format!("{expected_ct}{expected_tag}"));
    }

    proptest! {
        /// The one-pass encryption is exactly ChaCha20-Poly1305.
        #[test]
        fn seal_into_matches_the_reference(key: [u8; 32], nonce: [u8; 12], aad in proptest::collection::vec(any::<u8>(), 0..40), pt in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            seal_into(&key, Nonce::from_slice(&nonce), &aad, &pt, &mut out);
            let mut reference = pt.clone();
            let tag = ChaCha20Poly1305::new(&key.into()).encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut reference).unwrap();
            reference.extend_from_slice(&tag);
            prop_assert_eq!(out, reference);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn encrypt(key: &FileKey, data: &[u8], chunk_size: u32) -> FinishedFile<Vec<u8>> {
        let params = FileParams {
            chunk_size,
            chunk_hashes: true,
        };
        let mut enc = FileEncryptor::new(key, Vec::new(), params, &mut rng()).unwrap();
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn decrypt(key: &FileKey, file: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        FileDecryptor::new(key, file)?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn file_error(r: io::Result<Vec<u8>>) -> FileError {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        FileError::from_io(&e).unwrap().clone()
    }

    const C: u32 = 64;
    const SEALED: usize = C as usize + TAG_LEN;

    #[test]
    fn boundary_sizes_round_trip() {
        let key = FileKey::generate(&mut rng());
        let c = C as usize;
        for len in [0, 1, c - 1, c, c + 1, 2 * c, 5 * c + 17] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let f = encrypt(&key, &data, C);
            let chunks = len.div_ceil(c).max(1);
            assert_eq!(f.chunk_count as usize, chunks, "len {len}");
            assert_eq!(f.inner.len(), HEADER_LEN + len + chunks * TAG_LEN);
            assert_eq!(f.header.chunk_count(len as u64), chunks as u64);
            assert_eq!(decrypt(&key, &f.inner).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn empty_file_is_one_final_chunk() {
        let key = FileKey::generate(&mut rng());
        let f = encrypt(&key, b"", C);
        assert_eq!(f.inner.len(), HEADER_LEN + TAG_LEN);
        assert_eq!(f.chunk_hashes.len(), 1);
        // Without the final chunk it is truncated, not an empty file.
        assert_eq!(
            file_error(decrypt(&key, &f.inner[..HEADER_LEN])),
            FileError::Truncated { chunks: 0 }
        );
    }

    fn three_chunk_file() -> (FileKey, FinishedFile<Vec<u8>>) {
        let key = FileKey::generate(&mut rng());
        let data: Vec<u8> = (0..3 * C as usize).map(|i| (i * 7) as u8).collect();
        (key.clone(), encrypt(&key, &data, C))
    }

    fn chunk(file: &[u8], i: usize) -> &[u8] {
        let start = HEADER_LEN + i * SEALED;
        &file[start..(start + SEALED).min(file.len())]
    }

    #[test]
    fn truncation_at_a_chunk_boundary_is_rejected() {
        let (key, f) = three_chunk_file();
        let cut = &f.inner[..HEADER_LEN + 2 * SEALED];
        assert_eq!(
            file_error(decrypt(&key, cut)),
            FileError::Truncated { chunks: 2 }
        );
        // Cuts inside a chunk are rejected too.
        for n in [
            f.inner.len() - 1,
            HEADER_LEN + SEALED + 5,
            HEADER_LEN + 3,
            5,
        ] {
            assert!(decrypt(&key, &f.inner[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn plaintext_is_released_only_after_authentication() {
        let (key, f) = three_chunk_file();
        let mut bad = f.inner.clone();
        bad[HEADER_LEN + 3] ^= 1; // inside chunk 0
        let mut dec = FileDecryptor::new(&key, &bad[..]).unwrap();
        let mut buf = [0u8; 10];
        let e = dec.read(&mut buf).unwrap_err();
        assert_eq!(
            FileError::from_io(&e),
            Some(&FileError::Authentication { index: 0 })
        );
        assert_eq!(buf, [0u8; 10]);
        // And the decryptor stays failed.
        assert!(dec.read(&mut buf).is_err());
    }

    #[test]
    fn reordered_chunks_are_rejected() {
        let (key, f) = three_chunk_file();
        let mut swapped = f.inner[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(chunk(&f.inner, 1));
        swapped.extend_from_slice(chunk(&f.inner, 0));
        swapped.extend_from_slice(chunk(&f.inner, 2));
        assert_eq!(
            file_error(decrypt(&key, &swapped)),
            FileError::Authentication { index: 0 }
        );
    }

    #[test]
    fn duplicated_chunks_are_rejected() {
        let (key, f) = three_chunk_file();
        let mut dup = f.inner[..HEADER_LEN].to_vec();
        for i in [0, 0, 1, 2] {
            dup.extend_from_slice(chunk(&f.inner, i));
        }
        assert_eq!(
            file_error(decrypt(&key, &dup)),
            FileError::Authentication { index: 1 }
        );
        // Final chunk duplicated at the end.
        let mut dup_last = f.inner.clone();
        dup_last.extend_from_slice(chunk(&f.inner, 2));
        assert!(decrypt(&key, &dup_last).is_err());
    }

    #[test]
    fn extension_after_the_final_chunk_is_rejected() {
        let (key, f) = three_chunk_file();
        for extra in [&[0u8][..], &[1, 2, 3], &[0u8; 100]] {
            let mut ext = f.inner.clone();
            ext.extend_from_slice(extra);
            assert_eq!(
                file_error(decrypt(&key, &ext)),
                FileError::TrailingData { index: 2 }
            );
        }
        // A short final chunk followed by bytes: rejected as a bad chunk.
        let g = encrypt(&key, &[1u8; 70], C);
        let mut ext = g.inner.clone();
        ext.push(0);
        assert!(decrypt(&key, &ext).is_err());
    }

    #[test]
    fn chunk_from_another_file_is_rejected() {
        let (key, f) = three_chunk_file();
        // Same key, same plaintext, different nonce prefix (a second encryption).
        let params = FileParams {
            chunk_size: C,
            chunk_hashes: false,
        };
        let mut other_rng = StdRng::seed_from_u64(99);
        let mut enc = FileEncryptor::new(&key, Vec::new(), params, &mut other_rng).unwrap();
        enc.write_all(&decrypt(&key, &f.inner).unwrap()).unwrap();
        let g = enc.finish().unwrap();
        let mut spliced = f.inner.clone();
        let start = HEADER_LEN + SEALED;
        spliced[start..start + SEALED].copy_from_slice(chunk(&g.inner, 1));
        assert_eq!(
            file_error(decrypt(&key, &spliced)),
            FileError::Authentication { index: 1 }
        );
        // And the wrong key fails at chunk 0.
        let other_key = FileKey::from_bytes([1; 32]);
        assert_eq!(
            file_error(decrypt(&other_key, &f.inner)),
            FileError::Authentication { index: 0 }
        );
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let key = FileKey::generate(&mut rng());
        let f = encrypt(&key, &[0x33; 2 * C as usize + 5], C);
        for i in 0..f.inner.len() * 8 {
            let mut bad = f.inner.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(decrypt(&key, &bad).is_err(), "bit {i} flip accepted");
        }
    }

    #[test]
    fn hostile_headers_are_rejected() {
        let key = FileKey::generate(&mut rng());
        let mut h = FileHeader::new(C, &mut rng()).unwrap().to_bytes();
        h[0] = 2;
        assert!(matches!(
            file_error(decrypt(&key, &h)),
            FileError::Header(DecodeError::UnknownVersion { got: 2, .. })
        ));
        h[0] = 1;
        h[1..5].copy_from_slice(&(MAX_CHUNK_SIZE + 1).to_be_bytes());
        assert!(matches!(
            file_error(decrypt(&key, &h)),
            FileError::Header(DecodeError::TooLong { .. })
        ));
        h[1..5].copy_from_slice(&(MIN_CHUNK_SIZE - 1).to_be_bytes());
        assert!(
            file_error(decrypt(&key, &h))
                == FileError::Header(DecodeError::Invalid("chunk size below the minimum"))
        );
        assert!(
            FileEncryptor::new(
                &key,
                Vec::new(),
                FileParams {
                    chunk_size: MAX_CHUNK_SIZE + 1,
                    chunk_hashes: false
                },
                &mut rng()
            )
            .is_err()
        );
    }

    #[test]
    fn chunks_open_by_index_against_their_hashes() {
        let (key, f) = three_chunk_file();
        let plain = decrypt(&key, &f.inner).unwrap();
        assert_eq!(f.chunk_hashes.len(), 3);
        for i in 0..3u32 {
            let c = chunk(&f.inner, i as usize);
            assert_eq!(
                f.header.chunk_offset(i) as usize,
                HEADER_LEN + i as usize * SEALED
            );
            let got = open_chunk(&key, &f.header, i, 3, c, &f.chunk_hashes[i as usize]).unwrap();
            assert_eq!(
                got,
                &plain[i as usize * C as usize..(i as usize + 1) * C as usize]
            );
        }
        let c0 = chunk(&f.inner, 0);
        // Wrong hash, wrong index, wrong count (last flag), out of range.
        assert_eq!(
            open_chunk(&key, &f.header, 0, 3, c0, &f.chunk_hashes[1]),
            Err(FileError::HashMismatch { index: 0 })
        );
        assert_eq!(
            open_chunk(&key, &f.header, 1, 3, c0, &f.chunk_hashes[0]),
            Err(FileError::Authentication { index: 1 })
        );
        let c2 = chunk(&f.inner, 2);
        assert_eq!(
            open_chunk(&key, &f.header, 2, 4, c2, &f.chunk_hashes[2]),
            Err(FileError::Authentication { index: 2 })
        );
        assert!(matches!(
            open_chunk(&key, &f.header, 3, 3, c2, &f.chunk_hashes[2]),
            Err(FileError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            open_chunk(&key, &f.header, 0, 3, &c0[1..], &f.chunk_hashes[0]),
            Err(FileError::ChunkLength { .. })
        ));
        // The encryptor's hashes are those of the bytes it wrote.
        assert_eq!(chunk_hash(c2), f.chunk_hashes[2]);
    }

    #[test]
    fn dropped_encryptor_leaves_a_rejected_file() {
        let key = FileKey::generate(&mut rng());
        let mut out = Vec::new();
        {
            let params = FileParams {
                chunk_size: C,
                chunk_hashes: false,
            };
            let mut enc = FileEncryptor::new(&key, &mut out, params, &mut rng()).unwrap();
            enc.write_all(&[5u8; 3 * C as usize]).unwrap();
        }
        assert!(decrypt(&key, &out).is_err());
    }

    #[test]
    fn debug_shows_no_secrets() {
        let key = FileKey::from_bytes([0xAB; 32]);
        let enc = FileEncryptor::new(&key, Vec::new(), FileParams::default(), &mut rng()).unwrap();
        let file = encrypt(&key, b"x", C);
        let dec = FileDecryptor::new(&key, &file.inner[..]).unwrap();
        let dbg = format!("{key:?} {enc:?} {dec:?}");
        assert!(
            !dbg.contains("171") && !dbg.contains("ab, ab") && !dbg.contains("abab"),
            "{dbg}"
        );
        assert_eq!(format!("{key:?}"), "FileKey(<redacted>)");
    }

    /// A reader that hands out at most `step` bytes per call, to exercise partial reads.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn round_trips_any_size_and_chunking(
            chunk_size in MIN_CHUNK_SIZE..200,
            len in 0usize..1500,
            write_step in 1usize..300,
            read_step in 1usize..300,
            out_step in 1usize..300,
            seed: u64,
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed) as u8).collect();
            let key = FileKey::from_bytes([seed as u8; 32]);
            let params = FileParams { chunk_size, chunk_hashes: true };
            let mut enc = FileEncryptor::new(&key, Vec::new(), params, &mut StdRng::seed_from_u64(seed)).unwrap();
            for part in data.chunks(write_step) {
                enc.write_all(part).unwrap();
            }
            let f = enc.finish().unwrap();
            prop_assert_eq!(f.plaintext_len, len as u64);
            prop_assert_eq!(u64::from(f.chunk_count), f.header.chunk_count(len as u64));
            prop_assert_eq!(f.chunk_hashes.len(), f.chunk_count as usize);
            let reader = Trickle { data: &f.inner, step: read_step };
            let mut dec = FileDecryptor::new(&key, reader).unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; out_step];
            loop {
                let n = dec.read(&mut buf).unwrap();
                if n == 0 { break; }
                got.extend_from_slice(&buf[..n]);
            }
            prop_assert_eq!(got, data);
        }

        #[test]
        fn header_round_trips(chunk_size in MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE, seed: u64) {
            let h = FileHeader::new(chunk_size, &mut StdRng::seed_from_u64(seed)).unwrap();
            let bytes = h.to_bytes();
            prop_assert_eq!(bytes.len(), HEADER_LEN);
            prop_assert_eq!(FileHeader::from_bytes(&bytes).unwrap(), h);
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(FileHeader::from_bytes(&longer).is_err());
        }
    }
}
