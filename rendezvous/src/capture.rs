//! Capture of every raw byte the relay's TCP sockets read and write, for audits and tests.
//!
//! The relay must never see plaintext: everything that crosses it is Noise-encrypted, first on
//! the hop from each client to the relay, and again end to end inside a relayed circuit. The
//! `--capture FILE` option proves it with two taps on every TCP connection:
//!
//! * [`Layer::Wire`]: a [`CaptureStream`] wraps the socket *below* the relay's Noise upgrade,
//!   so the file holds exactly the bytes that went over the wire;
//! * [`Layer::Relay`]: a second [`CaptureStream`] wraps the stream *above* the relay's own Noise
//!   session ([`TappedNoise`]), so the file also holds everything the relay process could read
//!   after decrypting its hop: Yamux frames, protocol negotiation, rendezvous and relay control
//!   messages, and the bytes of each relayed circuit, which must still be the two clients'
//!   end-to-end Noise ciphertext.
//!
//! A test searches both layers for text the clients exchanged over a circuit.
//!
//! # File format
//! A sequence of records, appended as the bytes pass:
//!
//! ```text
//! tag: u8 (b'R' / b'W': read from / written to the socket, wire layer;
//!          b'r' / b'w': read / written above the relay's Noise, relay layer)
//! connection: u64 big-endian (a counter, unique within one relay process and layer)
//! length: u32 big-endian
//! bytes: [u8; length]
//! ```
//!
//! [`read_capture`] joins the records back into one byte stream per connection, layer and
//! direction, so a string split across two socket reads is still found.
//!
//! # Limits
//! * TCP only. QUIC packets are encrypted by QUIC's own TLS inside the quinn endpoint, with no
//!   byte-stream seam to tap, so QUIC connections are not recorded; tests that use the capture
//!   dial over TCP.
//! * Records are written synchronously (one `write_all` under a mutex) from the socket's poll
//!   function. This is a debugging and audit tool, not something to leave on in production: it
//!   slows the relay and the file grows without bound.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, Write},
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use futures::{AsyncRead, AsyncWrite, FutureExt, TryFutureExt, future::BoxFuture};
use libp2p::{
    PeerId,
    core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
    identity::Keypair,
    noise,
};

/// Which way the bytes went, seen from the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Read from the socket (sent by the remote peer).
    Read,
    /// Written to the socket (sent by the relay).
    Write,
}

/// Where on the connection the bytes were recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    /// The raw TCP byte stream, as on the wire.
    Wire,
    /// Above the relay's Noise session: what the relay process itself can read.
    Relay,
}

fn tag(layer: Layer, direction: Direction) -> u8 {
    match (layer, direction) {
        (Layer::Wire, Direction::Read) => b'R',
        (Layer::Wire, Direction::Write) => b'W',
        (Layer::Relay, Direction::Read) => b'r',
        (Layer::Relay, Direction::Write) => b'w',
    }
}

/// One recorded stream: (connection, layer, direction).
pub type StreamKey = (u64, Layer, Direction);

/// The shared capture file every [`CaptureStream`] appends to.
#[derive(Debug)]
pub struct CaptureSink {
    file: Mutex<File>,
    next_connection: AtomicU64,
    failed: AtomicBool,
}

impl CaptureSink {
    /// Creates (or truncates) the capture file.
    pub fn create(path: &Path) -> io::Result<Arc<Self>> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(Self {
            file: Mutex::new(file),
            next_connection: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }))
    }

    fn record(&self, connection: u64, layer: Layer, direction: Direction, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // A socket read or write never exceeds u32::MAX bytes in practice; split if it does.
        for chunk in bytes.chunks(u32::MAX as usize) {
            let record = encode_record(connection, layer, direction, chunk);
            let mut file = match self.file.lock() {
                Ok(f) => f,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Err(e) = file.write_all(&record) {
                // Report once; the relay keeps serving without the capture.
                if !self.failed.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "capture file write failed; capture is incomplete");
                }
            }
        }
    }
}

/// One record as it is appended to the file (`chunk` must fit a u32 length).
fn encode_record(connection: u64, layer: Layer, direction: Direction, chunk: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(13 + chunk.len());
    record.push(tag(layer, direction));
    record.extend_from_slice(&connection.to_be_bytes());
    record.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
    record.extend_from_slice(chunk);
    record
}

/// Wraps a stream so every byte read and written is recorded at `layer`; with no sink it is a
/// transparent pass-through.
pub fn tap<S>(sink: Option<&Arc<CaptureSink>>, layer: Layer, inner: S) -> CaptureStream<S> {
    CaptureStream {
        inner,
        tap: sink.map(|s| {
            (
                Arc::clone(s),
                s.next_connection.fetch_add(1, Ordering::Relaxed),
            )
        }),
        layer,
    }
}

/// A stream whose every read and written byte is appended to a [`CaptureSink`], if any.
#[derive(Debug)]
pub struct CaptureStream<S> {
    inner: S,
    tap: Option<(Arc<CaptureSink>, u64)>,
    layer: Layer,
}

impl<S> CaptureStream<S> {
    fn record(&self, direction: Direction, bytes: &[u8]) {
        if let Some((sink, connection)) = &self.tap {
            sink.record(*connection, self.layer, direction, bytes);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CaptureStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = poll
            && let Some(read) = buf.get(..n)
        {
            this.record(Direction::Read, read);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CaptureStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll
            && let Some(written) = buf.get(..n)
        {
            this.record(Direction::Write, written);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Why a capture file could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A record header or body was cut short.
    #[error(
        "capture record at offset {offset} truncated: expected {expected} more bytes, got {got}"
    )]
    Truncated {
        /// Offset of the record in the file.
        offset: usize,
        /// Bytes the record needs.
        expected: usize,
        /// Bytes left in the file.
        got: usize,
    },
    /// A record's tag byte is not one of `R`, `W`, `r`, `w`.
    #[error("capture record at offset {offset}: expected tag R, W, r or w, got {got:#04x}")]
    BadDirection {
        /// Offset of the record in the file.
        offset: usize,
        /// The byte found.
        got: u8,
    },
}

/// Joins a capture file's records into one byte stream per (connection, layer, direction).
pub fn read_capture(data: &[u8]) -> Result<BTreeMap<StreamKey, Vec<u8>>, CaptureError> {
    let mut streams: BTreeMap<StreamKey, Vec<u8>> = BTreeMap::new();
    let mut offset = 0;
    while offset < data.len() {
        let rest = data.get(offset..).unwrap_or_default();
        let header = rest.get(..13).ok_or(CaptureError::Truncated {
            offset,
            expected: 13,
            got: rest.len(),
        })?;
        let (tag, header) = header.split_first().ok_or(CaptureError::Truncated {
            offset,
            expected: 13,
            got: 0,
        })?;
        let (layer, direction) = match tag {
            b'R' => (Layer::Wire, Direction::Read),
            b'W' => (Layer::Wire, Direction::Write),
            b'r' => (Layer::Relay, Direction::Read),
            b'w' => (Layer::Relay, Direction::Write),
            &got => return Err(CaptureError::BadDirection { offset, got }),
        };
        let (conn, len) = header.split_at(8);
        let mut conn_bytes = [0u8; 8];
        conn_bytes.copy_from_slice(conn);
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(len);
        let len = u32::from_be_bytes(len_bytes) as usize;
        let body = rest.get(13..13 + len).ok_or(CaptureError::Truncated {
            offset,
            expected: 13 + len,
            got: rest.len(),
        })?;
        streams
            .entry((u64::from_be_bytes(conn_bytes), layer, direction))
            .or_default()
            .extend_from_slice(body);
        offset += 13 + len;
    }
    Ok(streams)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use futures::{AsyncReadExt, AsyncWriteExt, executor::block_on, io::Cursor};
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn records_reassemble_per_connection_and_direction() {
        let dir = std::env::temp_dir().join(format!("capture-unit-{}", std::process::id()));
        let sink = CaptureSink::create(&dir).unwrap();
        let mut a = tap(
            Some(&sink),
            Layer::Wire,
            Cursor::new(b"hello world".to_vec()),
        );
        let mut b = tap(Some(&sink), Layer::Relay, Cursor::new(Vec::new()));
        let mut untapped = tap(None, Layer::Wire, Cursor::new(Vec::new()));
        block_on(async {
            let mut buf = [0u8; 5];
            a.read_exact(&mut buf).await.unwrap();
            b.write_all(b"SECRET-").await.unwrap();
            let mut rest = Vec::new();
            a.read_to_end(&mut rest).await.unwrap();
            b.write_all(b"MARKER").await.unwrap();
            untapped.write_all(b"not recorded").await.unwrap();
        });
        let mut data = Vec::new();
        File::open(&dir).unwrap().read_to_end(&mut data).unwrap();
        std::fs::remove_file(&dir).unwrap();
        let streams = read_capture(&data).unwrap();
        assert_eq!(streams[&(0, Layer::Wire, Direction::Read)], b"hello world");
        assert_eq!(
            streams[&(1, Layer::Relay, Direction::Write)],
            b"SECRET-MARKER"
        );
        assert_eq!(streams.len(), 2);
        // Truncation and a bad tag are errors, never panics.
        for cut in 0..data.len() {
            let _ = read_capture(&data[..cut]);
        }
        assert!(read_capture(&data[..data.len() - 1]).is_err());
        let mut bad = data.clone();
        bad[0] = b'X';
        assert!(matches!(
            read_capture(&bad),
            Err(CaptureError::BadDirection { got: b'X', .. })
        ));
    }

    proptest! {
        #[test]
        fn any_record_sequence_round_trips(
            records in proptest::collection::vec(
                (0u64..4, any::<bool>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)),
                0..32,
            )
        ) {
            let mut file = Vec::new();
            let mut expected: BTreeMap<StreamKey, Vec<u8>> = BTreeMap::new();
            for (conn, relay, write, bytes) in &records {
                let layer = if *relay { Layer::Relay } else { Layer::Wire };
                let dir = if *write { Direction::Write } else { Direction::Read };
                file.extend(encode_record(*conn, layer, dir, bytes));
                expected.entry((*conn, layer, dir)).or_default().extend_from_slice(bytes);
            }
            prop_assert_eq!(read_capture(&file).unwrap(), expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = read_capture(&data);
        }
    }
}

/// The relay's Noise upgrade with the decrypted stream tapped at [`Layer::Relay`].
#[derive(Clone)]
pub struct TappedNoise {
    noise: noise::Config,
    sink: Option<Arc<CaptureSink>>,
}

impl std::fmt::Debug for TappedNoise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TappedNoise")
            .field("capturing", &self.sink.is_some())
            .finish()
    }
}

impl TappedNoise {
    /// Noise with the relay's identity key; records the decrypted stream into `sink` if given.
    pub fn new(key: &Keypair, sink: Option<Arc<CaptureSink>>) -> Result<Self, noise::Error> {
        Ok(Self {
            noise: noise::Config::new(key)?,
            sink,
        })
    }
}

impl UpgradeInfo for TappedNoise {
    type Info = <noise::Config as UpgradeInfo>::Info;
    type InfoIter = <noise::Config as UpgradeInfo>::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.noise.protocol_info()
    }
}

impl<T> InboundConnectionUpgrade<T> for TappedNoise
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, CaptureStream<noise::Output<T>>);
    type Error = noise::Error;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: T, info: Self::Info) -> Self::Future {
        let sink = self.sink;
        self.noise
            .upgrade_inbound(socket, info)
            .map_ok(move |(peer, out)| (peer, tap(sink.as_ref(), Layer::Relay, out)))
            .boxed()
    }
}

impl<T> OutboundConnectionUpgrade<T> for TappedNoise
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, CaptureStream<noise::Output<T>>);
    type Error = noise::Error;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: T, info: Self::Info) -> Self::Future {
        let sink = self.sink;
        self.noise
            .upgrade_outbound(socket, info)
            .map_ok(move |(peer, out)| (peer, tap(sink.as_ref(), Layer::Relay, out)))
            .boxed()
    }
}
