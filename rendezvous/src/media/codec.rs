//! The libp2p request-response codec of [`MEDIA_PROTOCOL`]: one message per stream direction,
//! framed as a big-endian u32 length followed by the [`super::wire`] encoding, at most
//! [`MAX_MEDIA_FRAME`] bytes.
//!
//! The length is checked before any body byte is read. A frame that is too long, cut off or
//! does not decode is an `InvalidData` (or `UnexpectedEof`) I/O error: libp2p drops the stream,
//! the peer sees a failed request, and the relay keeps serving.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{StreamProtocol, request_response};
use prometheus_client::metrics::counter::Counter;
use securecomm_noise::codec::{Decode, Encode};

use super::wire::{MediaRequest, MediaResponse};

/// The protocol name of the media relay's allocation protocol.
pub const MEDIA_PROTOCOL: StreamProtocol = StreamProtocol::new("/securecomm/media/1.0.0");

/// Largest frame body either side accepts (every message is far smaller).
pub const MAX_MEDIA_FRAME: usize = 4096;

/// Reads and writes media allocation messages on libp2p streams.
#[derive(Debug, Clone, Default)]
pub struct MediaCodec {
    /// Counts inbound frames that were refused (libp2p does not report read failures).
    malformed: Option<Counter>,
}

impl MediaCodec {
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

/// Encodes `msg` as one frame (length prefix and body).
pub fn media_frame(msg: &impl Encode) -> Vec<u8> {
    let body = msg.to_bytes();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

async fn read_frame<T, M>(io: &mut T) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: Decode,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MEDIA_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("media frame too long: at most {MAX_MEDIA_FRAME}, got {len}"),
        ));
    }
    let mut body = Vec::with_capacity(len);
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
    io.write_all(&media_frame(msg)).await?;
    io.close().await
}

impl request_response::Codec for MediaCodec {
    type Protocol = StreamProtocol;
    type Request = MediaRequest;
    type Response = MediaResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<MediaRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let r = read_frame(io).await;
        self.count(r)
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<MediaResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let r = read_frame(io).await;
        self.count(r)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: MediaRequest,
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
        res: MediaResponse,
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

    #[test]
    fn frames_round_trip_and_bounds_hold() {
        let req = MediaRequest::Allocate { room: [3; 32] };
        let bytes = media_frame(&req);
        assert_eq!(bytes[..4], [0, 0, 0, 34]);
        let counter = Counter::default();
        let mut codec = MediaCodec::default().counting_malformed(counter.clone());
        let got = block_on(codec.read_request(&MEDIA_PROTOCOL, &mut &bytes[..])).unwrap();
        assert_eq!(got, req);
        let err = block_on(codec.read_request(&MEDIA_PROTOCOL, &mut &bytes[..bytes.len() - 1]))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let huge = [0, 0, 0x10, 1, 1, 1];
        let err = block_on(codec.read_request(&MEDIA_PROTOCOL, &mut &huge[..])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let garbage = [0, 0, 0, 2, 1, 9];
        let err = block_on(codec.read_request(&MEDIA_PROTOCOL, &mut &garbage[..])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(counter.get(), 3);
        let res = MediaResponse::Refreshed { lifetime_secs: 9 };
        let mut out = futures::io::Cursor::new(Vec::new());
        block_on(codec.write_response(&MEDIA_PROTOCOL, &mut out, res.clone())).unwrap();
        let written = out.into_inner();
        assert_eq!(written, media_frame(&res));
        let got = block_on(codec.read_response(&MEDIA_PROTOCOL, &mut &written[..])).unwrap();
        assert_eq!(got, res);
    }
}
