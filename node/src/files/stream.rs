//! The fetch protocol on streams of its own ([`crate::net::FILES_PROTOCOL`]).
//!
//! # Why
//! On the shared request-response protocol every 917 KB answer opened a new Yamux stream (so it
//! started again from Yamux's 256 KiB window and waited for window updates), was buffered
//! whole by request-response, and crossed the swarm's single event loop task and two channels
//! on each side. Measured with 1 GiB on loopback, that held a fetch at 165-209 MB/s while
//! neither process used its core fully.
//!
//! # How
//! A fetch opens one long-lived stream to each member it asks and **pipelines** requests on it:
//! a [`Pipe`] writes each request as soon as it is asked and matches answers to requests in
//! order (a stream is ordered), at most [`MAX_PIPELINE`] outstanding. The stream's bytes move
//! between the connection's own task and the fetch's task: the event loop only helps to open
//! it. Yamux grows a long-lived stream's window with the measured round trip, so a stream keeps
//! the link full.
//!
//! The server side ([`serve`]) reads a request, answers it with the same function as the
//! request-response path (membership check, then the chunks it holds), and hands the answer to
//! a writer, so the next answer is being read from disk while the previous one is on the wire.
//!
//! # Wire
//! Frames as on the direct protocol (big-endian `u32` length, at most
//! [`crate::net::codec::MAX_FRAME`] bytes), each holding one [`super::wire::FileRequest`] or
//! [`super::wire::FileResponse`] (version byte first), answers in the order of the requests.
//! A server that is busy answers [`super::wire::FileResponse::Busy`] and closes the stream.
//!
//! # Bounds
//! Per pipe: [`MAX_PIPELINE`] requests outstanding, one frame being read. Per served stream:
//! one request being answered, one answer waiting and one being written (at most 3 MiB); at
//! most [`super::MAX_SERVING`] streams served at once, [`MAX_STREAMS_PER_PEER`] per peer. A
//! stream with no request for [`IDLE_TIMEOUT`], or whose reader stops reading for
//! [`WRITE_TIMEOUT`], is closed. An answer that does not come within [`ANSWER_TIMEOUT`] fails
//! the pipe (its outstanding requests fail and are asked again).

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{Either, select};
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use crate::net::codec::{put_frame, read_frame, read_frame_into};

/// Most requests outstanding on one pipe (as many as a fetch may have in flight to one member).
pub const MAX_PIPELINE: usize = super::MAX_INFLIGHT_PER_PEER;
/// Most streams one peer may have served at once.
pub const MAX_STREAMS_PER_PEER: usize = 8;
/// How long a pipe waits for the next answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a served stream may stay without a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long writing one answer may take before the served stream is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

type Reply = oneshot::Sender<Result<Vec<u8>, String>>;

/// The asking side of a fetch-protocol stream: cloneable; requests from any clone are written in
/// the order they are asked and answered in that order.
#[derive(Clone, Debug)]
pub struct Pipe {
    tx: mpsc::Sender<(Vec<u8>, Reply)>,
}

/// Most frame buffers kept for reuse.
pub const MAX_SPARES: usize = 16;

/// Frame buffers for reuse: answers are read into them, and given back once their chunks are
/// written (a fresh megabyte allocation per answer cost page faults and zeroing).
#[derive(Clone, Debug, Default)]
pub struct Spares(Arc<Mutex<Vec<Vec<u8>>>>);

impl Spares {
    /// A buffer (empty when none is spare).
    pub fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_default()
    }

    /// Gives a buffer back (dropped when [`MAX_SPARES`] are kept already).
    pub fn give(&self, buf: Vec<u8>) {
        if let Ok(mut v) = self.0.lock()
            && v.len() < MAX_SPARES
        {
            v.push(buf);
        }
    }
}

impl Pipe {
    /// A pipe over `stream`, and the future that drives it (spawn it; it ends when every clone
    /// of the pipe is dropped and the outstanding answers are in, or when the stream fails).
    /// Answers are read into buffers from `spares`.
    pub fn new<S>(stream: S, spares: Spares) -> (Self, impl Future<Output = ()> + Send + 'static)
    where
        S: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(MAX_PIPELINE);
        (Self { tx }, drive(stream, rx, spares))
    }

    /// Sends a request and waits for its answer (the raw frame).
    pub async fn request(&self, req: Vec<u8>) -> Result<Vec<u8>, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((req, reply))
            .await
            .map_err(|_| "the file stream closed".to_owned())?;
        answer
            .await
            .map_err(|_| "the file stream closed".to_owned())?
    }

    /// Whether the stream behind it has stopped (a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

async fn drive<S>(stream: S, mut requests: mpsc::Receiver<(Vec<u8>, Reply)>, spares: Spares)
where
    S: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
{
    let (mut r, mut w) = stream.split();
    // Replies in the order their requests went out; bounded like the requests.
    let (ptx, mut prx) = mpsc::channel::<Reply>(MAX_PIPELINE);
    let writer = async move {
        while let Some((req, reply)) = requests.recv().await {
            if ptx.send(reply).await.is_err() {
                break;
            }
            if put_frame(&mut w, &req).await.is_err() {
                break;
            }
        }
        // Half-close: the server answers what it has and closes its side.
        let _ = w.close().await;
    };
    let reader = async move {
        while let Some(reply) = prx.recv().await {
            let mut frame = spares.take();
            match tokio::time::timeout(ANSWER_TIMEOUT, read_frame_into(&mut r, &mut frame)).await {
                Ok(Ok(())) => {
                    let _ = reply.send(Ok(frame));
                }
                Ok(Err(e)) => {
                    let _ = reply.send(Err(format!("file stream: {e}")));
                    break;
                }
                Err(_) => {
                    let _ = reply.send(Err("file stream: no answer in time".into()));
                    break;
                }
            }
        }
    };
    match select(pin!(writer), pin!(reader)).await {
        // Every clone is gone: collect the answers still owed, then stop.
        Either::Left(((), reader)) => reader.await,
        // The stream failed: dropping the writer closes the pipe, and the replies still queued
        // fail their requests.
        Either::Right(((), _writer)) => {}
    }
}

/// Serves one fetch-protocol stream: each request framed in is answered by `answer` (given the
/// request and a spare buffer to build the answer in), in order, until the peer closes its
/// side, stays idle for [`IDLE_TIMEOUT`], or stops reading.
pub async fn serve<S, F, Fut>(stream: S, mut answer: F)
where
    S: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    F: FnMut(Vec<u8>, Vec<u8>) -> Fut + Send,
    Fut: Future<Output = Vec<u8>> + Send,
{
    let (mut r, mut w) = stream.split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
    // Written answers come back as buffers for the next ones (fresh megabyte allocations cost
    // page faults and zeroing on every answer).
    let (spare_tx, mut spare_rx) = mpsc::channel::<Vec<u8>>(2);
    let reader = async move {
        while let Ok(Ok(req)) = tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut r)).await {
            let buf = spare_rx.try_recv().unwrap_or_default();
            let resp = answer(req, buf).await;
            if tx.send(resp).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some(resp) = rx.recv().await {
            match tokio::time::timeout(WRITE_TIMEOUT, put_frame(&mut w, &resp)).await {
                Ok(Ok(())) => {
                    let _ = spare_tx.try_send(resp);
                }
                _ => return,
            }
        }
        let _ = w.close().await;
    };
    match select(pin!(reader), pin!(writer)).await {
        // No more requests: finish writing the answers, then close.
        Either::Left(((), writer)) => writer.await,
        // The peer stopped reading (or the stream broke): stop answering.
        Either::Right(((), _reader)) => {}
    }
}

/// Answers a stream the node cannot serve now: `busy` once, then closes it.
pub async fn refuse<S>(mut stream: S, busy: &[u8])
where
    S: futures::AsyncWrite + Unpin + Send,
{
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = put_frame(&mut stream, busy).await;
        let _ = stream.close().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory duplex byte stream (futures traits) for both ends.
    fn pair() -> (
        impl futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
        impl futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    ) {
        use tokio_util_compat::Compat;
        let (a, b) = tokio::io::duplex(64 * 1024);
        (Compat::new(a), Compat::new(b))
    }

    mod tokio_util_compat {
        //! A minimal tokio-to-futures I/O adapter for the tests.
        use std::pin::Pin;
        use std::task::{Context, Poll};

        pub struct Compat<T>(T);

        impl<T> Compat<T> {
            pub fn new(t: T) -> Self {
                Self(t)
            }
        }

        impl<T: tokio::io::AsyncRead + Unpin> futures::AsyncRead for Compat<T> {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<std::io::Result<usize>> {
                let mut b = tokio::io::ReadBuf::new(buf);
                match Pin::new(&mut self.0).poll_read(cx, &mut b) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(b.filled().len())),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }

        impl<T: tokio::io::AsyncWrite + Unpin> futures::AsyncWrite for Compat<T> {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                Pin::new(&mut self.0).poll_write(cx, buf)
            }
            fn poll_flush(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.0).poll_flush(cx)
            }
            fn poll_close(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.0).poll_shutdown(cx)
            }
        }
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let (client, server) = pair();
        let served = tokio::spawn(serve(server, |req: Vec<u8>, _buf| async move {
            // Later requests answer faster: order must still hold.
            let delay = 20u64.saturating_sub(u64::from(req[0]) * 2);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let mut out = req.clone();
            out.extend(vec![0xAB; 100_000]);
            out
        }));
        let (pipe, driver) = Pipe::new(client, Spares::default());
        let driven = tokio::spawn(driver);
        let asks: Vec<_> = (0u8..10)
            .map(|i| {
                let p = pipe.clone();
                tokio::spawn(async move { (i, p.request(vec![i, 7]).await) })
            })
            .collect();
        for a in asks {
            let (i, r) = a.await.unwrap();
            let r = r.unwrap();
            assert_eq!(&r[..2], &[i, 7]);
            assert_eq!(r.len(), 100_002);
        }
        drop(pipe);
        driven.await.unwrap();
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_stream_answers_busy_then_fails_the_rest() {
        let (client, server) = pair();
        tokio::spawn(refuse(server, &[0x46, 3]));
        let (pipe, driver) = Pipe::new(client, Spares::default());
        tokio::spawn(driver);
        let first = pipe.request(vec![1]).await.unwrap();
        assert_eq!(first, vec![0x46, 3]);
        assert!(pipe.request(vec![2]).await.is_err());
        // The pipe notices that its stream is gone.
        for _ in 0..100 {
            if pipe.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the pipe did not close");
    }
}
