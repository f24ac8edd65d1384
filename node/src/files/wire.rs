//! Wire formats of file sharing: the [`Attachment`] announced inside an encrypted guild message,
//! and the fetch protocol ([`FileRequest`] / [`FileResponse`]) on the direct request-response
//! protocol, first byte [`FILE_PROTO_VERSION`] (distinct from the join, history, typing and DM
//! version bytes that share `/securecomm/direct/1`). Every decoder is strict and bounded.

use securecomm_noise::codec::{Decode, DecodeError, Encode, Reader, Writer};
use securecomm_noise::file::{FileHeader, FileKey, HEADER_LEN};

/// First byte of every fetch-protocol request and response.
pub const FILE_PROTO_VERSION: u8 = 0x46;
/// Most attachments on one message (Discord's limit).
pub const MAX_ATTACHMENTS: usize = 10;
/// Longest file name, in bytes.
pub const MAX_FILE_NAME: usize = 255;
/// Longest media type, in bytes.
pub const MAX_MIME: usize = 127;
/// Largest thumbnail (a JPEG), in bytes.
pub const MAX_THUMBNAIL: usize = 16 * 1024;
/// Largest sum of a message's thumbnails, so a message with attachments still fits an
/// envelope beside the longest text.
pub const MAX_THUMBNAILS_TOTAL: usize = 32 * 1024;
/// Largest thumbnail side, in pixels.
pub const MAX_THUMBNAIL_SIDE: u16 = 320;
/// Most chunk hashes in one manifest answer (512 KiB).
pub const MANIFEST_PAGE: u32 = 16_384;
/// Most chunks asked for in one request: seven 128 KiB chunks (917 KB) fit one frame of the
/// direct protocol ([`crate::net::codec::MAX_FRAME`], 1 MiB); eight would not.
pub const MAX_CHUNKS_PER_REQUEST: u16 = 7;
/// Largest file announced or accepted (16 GiB: a manifest of 4 MiB and a bitmap of 16 KiB).
/// Members refuse announcements of larger files, so a hostile one cannot make a fetch
/// allocate for 2^32 chunks.
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024 * 1024;
/// Most chunks of a file (16 GiB in 128 KiB chunks): also bounds files announced with tiny
/// chunks.
pub const MAX_CHUNKS: u64 = 131_072;
/// Largest chunk on the wire: the fetch protocol only serves files whose chunks are at most
/// this big, so an answer of [`MAX_CHUNKS_PER_REQUEST`] chunks fits one frame.
pub const MAX_WIRE_CHUNK: usize = 128 * 1024 + securecomm_noise::file::TAG_LEN;

/// A small preview of an image, made by the sender and carried (encrypted) in the message.
#[derive(Clone, PartialEq, Eq)]
pub struct Thumbnail {
    /// Width in pixels (1..=[`MAX_THUMBNAIL_SIDE`]).
    pub width: u16,
    /// Height in pixels (1..=[`MAX_THUMBNAIL_SIDE`]).
    pub height: u16,
    /// The JPEG bytes (at most [`MAX_THUMBNAIL`]).
    pub jpeg: Vec<u8>,
}

impl std::fmt::Debug for Thumbnail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Thumbnail")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bytes", &self.jpeg.len())
            .finish()
    }
}

/// A file attached to a message: everything a member needs to fetch, check and decrypt it.
#[derive(Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file's name as the sender had it (no path).
    pub name: String,
    /// Its media type (`application/octet-stream` when unknown).
    pub mime: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// SHA-256 of the plaintext, checked when the file is saved.
    pub sha256: [u8; 32],
    /// Content address: SHA-256 of the manifest (every ciphertext chunk's SHA-256, in order).
    pub root: [u8; 32],
    /// The encrypted file's header (chunk size and nonce prefix).
    pub header: FileHeader,
    /// The file's random key.
    pub key: FileKey,
    /// A preview, for images.
    pub thumbnail: Option<Thumbnail>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("name", &self.name)
            .field("mime", &self.mime)
            .field("size", &self.size)
            .field("root", &hex::encode(self.root))
            .field("key", &self.key)
            .field("thumbnail", &self.thumbnail)
            .finish_non_exhaustive()
    }
}

impl Attachment {
    /// Number of chunks of the encrypted file.
    pub fn chunk_count(&self) -> u64 {
        self.header.chunk_count(self.size)
    }

    /// Length of the encrypted file (header and every sealed chunk).
    pub fn ciphertext_len(&self) -> u64 {
        ciphertext_len(&self.header, self.size)
    }
}

/// Length of an encrypted file of `size` plaintext bytes.
pub fn ciphertext_len(header: &FileHeader, size: u64) -> u64 {
    let tags = header
        .chunk_count(size)
        .saturating_mul(securecomm_noise::file::TAG_LEN as u64);
    (HEADER_LEN as u64)
        .saturating_add(size)
        .saturating_add(tags)
}

/// Checks a file name: 1 to [`MAX_FILE_NAME`] bytes, no path separators or control characters,
/// not `.` or `..`.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_FILE_NAME
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(format!(
            "a file name is 1 to {MAX_FILE_NAME} bytes, without path separators or control characters"
        ));
    }
    Ok(())
}

fn check_mime(mime: &str) -> Result<(), &'static str> {
    if mime.is_empty()
        || mime.len() > MAX_MIME
        || !mime.contains('/')
        || !mime.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err("media type");
    }
    Ok(())
}

/// Checks what an attachment list as a whole must satisfy: count, names, chunk sizes the fetch
/// protocol can carry, chunk counts that fit `u32`, and thumbnail sizes.
pub fn check_attachments(files: &[Attachment]) -> Result<(), String> {
    if files.len() > MAX_ATTACHMENTS {
        return Err(format!("a message carries at most {MAX_ATTACHMENTS} files"));
    }
    let mut thumbs = 0usize;
    for f in files {
        check_file_name(&f.name)?;
        check_mime(&f.mime).map_err(|w| format!("invalid {w} {:?}", f.mime))?;
        if f.header.sealed_chunk_len() > MAX_WIRE_CHUNK {
            return Err("file chunks larger than the fetch protocol carries".into());
        }
        if f.size > MAX_FILE_SIZE {
            return Err(format!("a file is at most {MAX_FILE_SIZE} bytes"));
        }
        if f.chunk_count() > MAX_CHUNKS {
            return Err(format!("a file has at most {MAX_CHUNKS} chunks"));
        }
        if let Some(t) = &f.thumbnail {
            if t.jpeg.is_empty()
                || t.jpeg.len() > MAX_THUMBNAIL
                || !(1..=MAX_THUMBNAIL_SIDE).contains(&t.width)
                || !(1..=MAX_THUMBNAIL_SIDE).contains(&t.height)
            {
                return Err("thumbnail out of bounds".into());
            }
            thumbs += t.jpeg.len();
        }
    }
    if thumbs > MAX_THUMBNAILS_TOTAL {
        return Err(format!(
            "a message's previews total at most {MAX_THUMBNAILS_TOTAL} bytes"
        ));
    }
    Ok(())
}

impl Encode for Attachment {
    fn encode(&self, w: &mut Writer) {
        w.bytes16(self.name.as_bytes());
        w.bytes16(self.mime.as_bytes());
        w.u64(self.size);
        w.put(&self.sha256);
        w.put(&self.root);
        w.put(&self.header.to_bytes());
        w.put(self.key.expose());
        match &self.thumbnail {
            None => w.u8(0),
            Some(t) => {
                w.u8(1);
                w.u16(t.width);
                w.u16(t.height);
                w.bytes32(&t.jpeg);
            }
        }
    }
}

impl Decode for Attachment {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = String::from_utf8(r.bytes16("file name", MAX_FILE_NAME)?.to_vec())
            .map_err(|_| DecodeError::Invalid("file name (not UTF-8)"))?;
        check_file_name(&name).map_err(|_| DecodeError::Invalid("file name"))?;
        let mime = String::from_utf8(r.bytes16("media type", MAX_MIME)?.to_vec())
            .map_err(|_| DecodeError::Invalid("media type (not UTF-8)"))?;
        check_mime(&mime).map_err(DecodeError::Invalid)?;
        let size = r.u64()?;
        let sha256 = r.array()?;
        let root = r.array()?;
        let header = FileHeader::decode(r)?;
        let key = FileKey::from_bytes(r.array()?);
        let thumbnail = match r.u8()? {
            0 => None,
            1 => Some(Thumbnail {
                width: r.u16()?,
                height: r.u16()?,
                jpeg: r.bytes32("thumbnail", MAX_THUMBNAIL)?.to_vec(),
            }),
            got => {
                return Err(DecodeError::UnknownTag {
                    what: "thumbnail",
                    got: u64::from(got),
                });
            }
        };
        let a = Self {
            name,
            mime,
            size,
            sha256,
            root,
            header,
            key,
            thumbnail,
        };
        check_attachments(std::slice::from_ref(&a))
            .map_err(|_| DecodeError::Invalid("attachment"))?;
        Ok(a)
    }
}

/// Encodes an attachment list (count, then each).
pub fn put_attachments(w: &mut Writer, files: &[Attachment]) {
    w.u8(u8::try_from(files.len()).unwrap_or(u8::MAX));
    for f in files {
        f.encode(w);
    }
}

/// Decodes an attachment list and checks it as a whole.
pub fn get_attachments(r: &mut Reader<'_>) -> Result<Vec<Attachment>, DecodeError> {
    let n = usize::from(r.u8()?);
    if n > MAX_ATTACHMENTS {
        return Err(DecodeError::TooLong {
            what: "attachments",
            max: MAX_ATTACHMENTS,
            got: n,
        });
    }
    let files = (0..n)
        .map(|_| Attachment::decode(r))
        .collect::<Result<Vec<_>, _>>()?;
    check_attachments(&files).map_err(|_| DecodeError::Invalid("attachments"))?;
    Ok(files)
}

/// A request of the fetch protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileRequest {
    /// Chunk hashes of the file `root`, from index `first` (at most [`MANIFEST_PAGE`]).
    Manifest {
        /// The file.
        root: [u8; 32],
        /// First hash wanted.
        first: u32,
    },
    /// Sealed chunks `first .. first + count` of the file `root` (count at most
    /// [`MAX_CHUNKS_PER_REQUEST`]).
    Chunks {
        /// The file.
        root: [u8; 32],
        /// First chunk wanted.
        first: u32,
        /// How many.
        count: u16,
    },
}

/// An answer of the fetch protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileResponse {
    /// Part of a manifest: the file's chunk count and hashes from the index asked for.
    Manifest {
        /// Number of chunks of the file.
        total: u32,
        /// Hashes from `first`.
        hashes: Vec<[u8; 32]>,
    },
    /// The asked-for chunks this peer holds (others are left out), each with its index.
    Chunks(Vec<(u32, Vec<u8>)>),
    /// This peer has no such file, or will not serve it to the asker.
    Missing,
    /// This peer is serving too many requests; ask another or later.
    Busy,
}

impl Encode for FileRequest {
    fn encode(&self, w: &mut Writer) {
        w.u8(FILE_PROTO_VERSION);
        match self {
            Self::Manifest { root, first } => {
                w.u8(0);
                w.put(root);
                w.u32(*first);
            }
            Self::Chunks { root, first, count } => {
                w.u8(1);
                w.put(root);
                w.u32(*first);
                w.u16(*count);
            }
        }
    }
}

impl Decode for FileRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("file request", FILE_PROTO_VERSION)?;
        match r.u8()? {
            0 => Ok(Self::Manifest {
                root: r.array()?,
                first: r.u32()?,
            }),
            1 => {
                let root = r.array()?;
                let first = r.u32()?;
                let count = r.u16()?;
                if count == 0 || count > MAX_CHUNKS_PER_REQUEST {
                    return Err(DecodeError::Invalid("chunk count in a file request"));
                }
                Ok(Self::Chunks { root, first, count })
            }
            got => Err(DecodeError::UnknownTag {
                what: "file request",
                got: u64::from(got),
            }),
        }
    }
}

impl Encode for FileResponse {
    fn encode(&self, w: &mut Writer) {
        w.u8(FILE_PROTO_VERSION);
        match self {
            Self::Manifest { total, hashes } => {
                w.u8(0);
                w.u32(*total);
                w.u32(u32::try_from(hashes.len()).unwrap_or(u32::MAX));
                for h in hashes {
                    w.put(h);
                }
            }
            Self::Chunks(chunks) => {
                w.u8(1);
                w.u16(u16::try_from(chunks.len()).unwrap_or(u16::MAX));
                for (i, c) in chunks {
                    w.u32(*i);
                    w.bytes32(c);
                }
            }
            Self::Missing => w.u8(2),
            Self::Busy => w.u8(3),
        }
    }
}

impl Decode for FileResponse {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("file response", FILE_PROTO_VERSION)?;
        match r.u8()? {
            0 => {
                let total = r.u32()?;
                let n = r.u32()?;
                if n > MANIFEST_PAGE || n > total {
                    return Err(DecodeError::Invalid("manifest page size"));
                }
                let hashes = (0..n).map(|_| r.array()).collect::<Result<Vec<_>, _>>()?;
                Ok(Self::Manifest { total, hashes })
            }
            1 => Ok(Self::Chunks(
                chunk_list(r)?
                    .into_iter()
                    .map(|(i, c)| (i, c.to_vec()))
                    .collect(),
            )),
            2 => Ok(Self::Missing),
            3 => Ok(Self::Busy),
            got => Err(DecodeError::UnknownTag {
                what: "file response",
                got: u64::from(got),
            }),
        }
    }
}

/// The chunk list of a `Chunks` answer (after its tag), borrowed from the frame.
fn chunk_list<'a>(r: &mut Reader<'a>) -> Result<Vec<(u32, &'a [u8])>, DecodeError> {
    let n = r.u16()?;
    if n > MAX_CHUNKS_PER_REQUEST {
        return Err(DecodeError::Invalid("chunk count in a file response"));
    }
    (0..n)
        .map(|_| Ok((r.u32()?, r.bytes32("file chunk", MAX_WIRE_CHUNK)?)))
        .collect()
}

/// An answer of the fetch protocol whose chunks stay in the received frame (no copy): what a
/// fetch decodes. Same rules as [`FileResponse`]'s decoder, which it shares.
#[derive(Debug, PartialEq, Eq)]
pub enum FileAnswer<'a> {
    /// Chunks, each with its index (see [`FileResponse::Chunks`]).
    Chunks(Vec<(u32, &'a [u8])>),
    /// Any other answer, decoded.
    Other(FileResponse),
}

impl<'a> FileAnswer<'a> {
    /// Decodes an answer (strict: trailing bytes are refused).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("file response", FILE_PROTO_VERSION)?;
        let a = if bytes.get(1) == Some(&1) {
            r.u8()?;
            Self::Chunks(chunk_list(&mut r)?)
        } else {
            return FileResponse::from_bytes(bytes).map(Self::Other);
        };
        r.finish()?;
        Ok(a)
    }
}

/// Encodes a `Chunks` answer straight into `out` (whatever it held is overwritten): `fill` is
/// called with each index and a buffer of exactly its length to fill in place, so a served
/// chunk is read from disk into the frame with no copy, and a reused buffer is not zeroed
/// again. Indexes for which `len` gives `None` are left out. The bytes are those of
/// [`FileResponse::Chunks`]'s encoding.
pub fn encode_chunks<E>(
    out: &mut Vec<u8>,
    indexes: impl Iterator<Item = u32>,
    len: impl Fn(u32) -> Option<usize>,
    mut fill: impl FnMut(u32, &mut [u8]) -> Result<(), E>,
) -> Result<usize, E> {
    fn at_least(out: &mut Vec<u8>, len: usize) {
        if out.len() < len {
            out.resize(len, 0);
        }
    }
    at_least(out, 4);
    let mut pos = 4;
    let mut n: u16 = 0;
    for i in indexes {
        let Some(l) = len(i).filter(|&l| l <= MAX_WIRE_CHUNK) else {
            continue;
        };
        if n >= MAX_CHUNKS_PER_REQUEST {
            break;
        }
        at_least(out, pos + 8 + l);
        out[pos..pos + 4].copy_from_slice(&i.to_be_bytes());
        out[pos + 4..pos + 8].copy_from_slice(&u32::try_from(l).unwrap_or(u32::MAX).to_be_bytes());
        pos += 8;
        fill(i, &mut out[pos..pos + l])?;
        pos += l;
        n += 1;
    }
    out.truncate(pos);
    out[..2].copy_from_slice(&[FILE_PROTO_VERSION, 1]);
    out[2..4].copy_from_slice(&n.to_be_bytes());
    Ok(usize::from(n))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;
    use rand_core::OsRng;

    fn attachment(name: String, size: u64, thumb: Option<Vec<u8>>) -> Attachment {
        Attachment {
            name,
            mime: "image/png".into(),
            size,
            sha256: [1; 32],
            root: [2; 32],
            header: FileHeader::new(128 * 1024, &mut OsRng).unwrap(),
            key: FileKey::from_bytes([3; 32]),
            thumbnail: thumb.map(|jpeg| Thumbnail {
                width: 10,
                height: 20,
                jpeg,
            }),
        }
    }

    proptest! {
        #[test]
        fn attachments_round_trip(
            name in "[a-z]{1,40}\\.[a-z]{1,4}",
            size in 0u64..=MAX_FILE_SIZE,
            thumb in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..2000)),
        ) {
            let files = vec![attachment(name, size, thumb)];
            let mut w = Writer::new();
            put_attachments(&mut w, &files);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(get_attachments(&mut r).unwrap(), files);
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn requests_and_responses_round_trip(
            root in any::<[u8; 32]>(),
            first in any::<u32>(),
            count in 1u16..=MAX_CHUNKS_PER_REQUEST,
            chunks in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..8),
        ) {
            for req in [FileRequest::Manifest { root, first }, FileRequest::Chunks { root, first, count }] {
                prop_assert_eq!(FileRequest::from_bytes(&req.to_bytes()).unwrap(), req);
            }
            let resp = FileResponse::Chunks(chunks.clone());
            let bytes = resp.to_bytes();
            prop_assert_eq!(FileResponse::from_bytes(&bytes).unwrap(), resp);
            // The borrowing decoder sees the same chunks (at most 7 decode, like the owning one).
            match FileAnswer::parse(&bytes) {
                Ok(FileAnswer::Chunks(c)) => {
                    let c: Vec<(u32, Vec<u8>)> = c.into_iter().map(|(i, b)| (i, b.to_vec())).collect();
                    prop_assert_eq!(&c, &chunks);
                }
                Ok(other) => prop_assert!(false, "decoded as {:?}", other),
                Err(_) => prop_assert!(chunks.len() > usize::from(MAX_CHUNKS_PER_REQUEST)),
            }
            // The in-place encoder writes the same bytes (for distinct indexes, up to 7).
            let mut distinct: Vec<(u32, Vec<u8>)> = Vec::new();
            for (i, c) in chunks {
                if distinct.len() < usize::from(MAX_CHUNKS_PER_REQUEST) && !distinct.iter().any(|(j, _)| *j == i) {
                    distinct.push((i, c));
                }
            }
            let find = |i: u32| distinct.iter().find(|(j, _)| *j == i).map(|(_, c)| c);
            let mut out = vec![0xEE; 3];
            let n = encode_chunks::<()>(
                &mut out,
                distinct.iter().map(|(i, _)| *i),
                |i| find(i).map(Vec::len),
                |i, buf| {
                    buf.copy_from_slice(find(i).ok_or(())?);
                    Ok(())
                },
            );
            prop_assert_eq!(n, Ok(distinct.len()));
            prop_assert_eq!(out, FileResponse::Chunks(distinct).to_bytes());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = FileRequest::from_bytes(&bytes);
            let _ = FileResponse::from_bytes(&bytes);
            prop_assert_eq!(
                FileAnswer::parse(&bytes).is_ok(),
                FileResponse::from_bytes(&bytes).is_ok()
            );
            let _ = get_attachments(&mut Reader::new(&bytes));
        }
    }

    #[test]
    fn the_largest_answers_fit_one_frame() {
        let chunks = (0..u32::from(MAX_CHUNKS_PER_REQUEST))
            .map(|i| (i, vec![0u8; MAX_WIRE_CHUNK]))
            .collect();
        assert!(FileResponse::Chunks(chunks).to_bytes().len() <= crate::net::codec::MAX_FRAME);
        let page = FileResponse::Manifest {
            total: MANIFEST_PAGE,
            hashes: vec![[0; 32]; MANIFEST_PAGE as usize],
        };
        assert!(page.to_bytes().len() <= crate::net::codec::MAX_FRAME);
    }

    #[test]
    fn hostile_names_sizes_and_counts_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\\b", "a\nb"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        let big = attachment("x.png".into(), 1, Some(vec![0; MAX_THUMBNAIL + 1]));
        assert!(check_attachments(&[big]).is_err());
        let huge = attachment("x.bin".into(), MAX_FILE_SIZE + 1, None);
        assert!(check_attachments(&[huge]).is_err());
        let mut tiny_chunks = attachment("x.bin".into(), 1 << 30, None);
        tiny_chunks.header = FileHeader::new(16, &mut OsRng).unwrap();
        assert!(check_attachments(&[tiny_chunks]).is_err());
        let many: Vec<_> = (0..=MAX_ATTACHMENTS)
            .map(|i| attachment(format!("{i}.bin"), 1, None))
            .collect();
        assert!(check_attachments(&many).is_err());
        let thumbs: Vec<_> = (0..3)
            .map(|i| attachment(format!("{i}.png"), 1, Some(vec![0; MAX_THUMBNAIL])))
            .collect();
        assert!(check_attachments(&thumbs).is_err());
        let req = FileRequest::Chunks {
            root: [0; 32],
            first: 0,
            count: MAX_CHUNKS_PER_REQUEST + 1,
        };
        assert!(FileRequest::from_bytes(&req.to_bytes()).is_err());
        // A manifest page claiming more hashes than the file has.
        let mut w = Writer::new();
        w.u8(FILE_PROTO_VERSION);
        w.u8(0);
        w.u32(1);
        w.u32(2);
        w.put(&[0; 64]);
        assert!(FileResponse::from_bytes(&w.into_bytes()).is_err());
    }
}
