//! Framing for SecureComm's own request-response protocols: a big-endian `u32` length, then that
//! many bytes, bounded by [`MAX_FRAME`]. What the bytes mean is the protocol's business; they are
//! always parsed with the strict decoders of `securecomm-noise` before use.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

/// Largest request or response on any of our protocols.
pub const MAX_FRAME: usize = 1 << 20;

/// Length-prefixed byte frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

/// Reads one frame (at most [`MAX_FRAME`] bytes).
pub(crate) async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_frame_into(io, &mut buf).await?;
    Ok(buf)
}

/// Reads one frame into `buf`, reusing its memory (a buffer long enough already is not zeroed
/// again: the frame overwrites it).
pub(crate) async fn read_frame_into<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame too large: at most {MAX_FRAME} bytes, got {len}"),
        ));
    }
    if buf.len() >= len {
        buf.truncate(len);
    } else {
        buf.resize(len, 0);
    }
    io.read_exact(buf).await
}

/// Writes one frame and flushes it, leaving the stream open for more.
pub(crate) async fn put_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    data: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(data.len())
        .ok()
        .filter(|&l| l as usize <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(data).await?;
    io.flush().await
}

/// Writes one frame and closes the stream (request-response: one frame each way).
async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8]) -> io::Result<()> {
    put_frame(io, data).await?;
    io.close().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
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
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let mut buf = Cursor::new(Vec::new());
        write_frame(&mut buf, b"hello").await.unwrap();
        let mut r = Cursor::new(buf.into_inner());
        assert_eq!(read_frame(&mut r).await.unwrap(), b"hello");

        let mut huge = Vec::from(((MAX_FRAME + 1) as u32).to_be_bytes());
        huge.extend_from_slice(&[0; 16]);
        let err = read_frame(&mut Cursor::new(huge)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let truncated = [0, 0, 0, 10, 1, 2];
        assert!(read_frame(&mut Cursor::new(&truncated[..])).await.is_err());
    }
}
