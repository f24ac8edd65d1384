//! The libp2p request-response codec of [`PROTOCOL`]: one message per stream direction, framed
//! as a big-endian u32 length followed by the [`super::wire`] encoding.
//!
//! The length is checked against the codec's bound before any body byte is read, and the body
//! buffer grows with the bytes actually received (a peer that announces 64 MiB and sends ten
//! bytes costs ten bytes). A frame that does not decode is an `InvalidData` I/O error: libp2p
//! then drops the stream and the peer sees a failed request, and the relay keeps serving.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{StreamProtocol, request_response};
use prometheus_client::metrics::counter::Counter;
use securecomm_noise::codec::{Decode, Encode};

use super::wire::{MAX_BLOB, Request, Response};

/// The protocol name of the mailbox and prekey directory.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/securecomm/mailbox/1.0.0");

/// Default bound on one frame: the largest blob plus room for headers and a page's item heads.
pub const MAX_FRAME: usize = MAX_BLOB + (64 << 10);

/// Reads and writes mailbox messages on libp2p streams.
#[derive(Debug, Clone)]
pub struct MailboxCodec {
    max_request: usize,
    max_response: usize,
    /// Counts inbound frames that were refused (libp2p does not report read failures).
    malformed: Option<Counter>,
}

impl Default for MailboxCodec {
    fn default() -> Self {
        Self {
            max_request: MAX_FRAME,
            max_response: MAX_FRAME,
            malformed: None,
        }
    }
}

impl MailboxCodec {
    /// A codec that refuses inbound requests and responses longer than these bounds (a relay
    /// passes its largest item plus [`FRAME_OVERHEAD`] for requests).
    pub fn with_limits(max_request: usize, max_response: usize) -> Self {
        Self {
            max_request: max_request.min(MAX_FRAME),
            max_response: max_response.min(MAX_FRAME),
            malformed: None,
        }
    }

    /// Also counts every inbound frame that is too long, cut off or does not decode.
    pub fn counting_malformed(mut self, counter: Counter) -> Self {
        self.malformed = Some(counter);
        self
    }

    fn count<V>(&self, result: io::Result<V>) -> io::Result<V> {
        if result.is_err()
            && let Some(c) = &self.malformed
        {
            c.inc();
        }
        result
    }
}

/// Bytes a request needs beyond its blob (headers, 64 tags): add it to a blob bound.
pub const FRAME_OVERHEAD: usize = 4 << 10;

/// Encodes `msg` as one frame (length prefix and body).
pub fn frame(msg: &impl Encode) -> Vec<u8> {
    let body = msg.to_bytes();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

async fn read_frame<T, M>(io: &mut T, max: usize) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: Decode,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("mailbox frame too long: at most {max}, got {len}"),
        ));
    }
    let mut body = Vec::with_capacity(len.min(64 << 10));
    io.take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    M::from_bytes(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_frame<T, M>(io: &mut T, msg: &M) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Encode,
{
    io.write_all(&frame(msg)).await?;
    io.close().await
}

impl request_response::Codec for MailboxCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let r = read_frame(io, self.max_request).await;
        self.count(r)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let r = read_frame(io, self.max_response).await;
        self.count(r)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use futures::executor::block_on;
    use request_response::Codec;

    use super::*;
    use crate::mailbox::wire::Deposit;

    #[test]
    fn frames_round_trip_and_bounds_hold() {
        let req = Request::Deposit(Deposit::new([[1; 32]], vec![7; 100]).unwrap());
        let bytes = frame(&req);
        let mut codec = MailboxCodec::default();
        let got: Request = block_on(codec.read_request(&PROTOCOL, &mut &bytes[..])).unwrap();
        assert_eq!(got, req);
        // Over the bound: refused before the body is read.
        let mut small = MailboxCodec::with_limits(50, 50);
        let err = block_on(small.read_request(&PROTOCOL, &mut &bytes[..])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Truncated body, garbage body.
        let err =
            block_on(codec.read_request(&PROTOCOL, &mut &bytes[..bytes.len() - 1])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let garbage = [0, 0, 0, 3, 9, 9, 9];
        let err = block_on(codec.read_request(&PROTOCOL, &mut &garbage[..])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Writing produces exactly the frame.
        let mut out = futures::io::Cursor::new(Vec::new());
        block_on(codec.write_request(&PROTOCOL, &mut out, req)).unwrap();
        assert_eq!(out.into_inner(), bytes);
    }
}
