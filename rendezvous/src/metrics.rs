//! Prometheus metrics over plain HTTP: `GET /metrics` and nothing else.
//!
//! The registry holds libp2p's counters (connections, relay reservations and circuits, identify,
//! ping, Kademlia, bandwidth per transport stack) labelled by protocol and event kind, never by
//! peer id or address, so a scraped relay reveals counts, not who talks to whom.
//!
//! The responder is a deliberately tiny HTTP/1.0-style server on a tokio listener: one request
//! per connection, a request head of at most [`MAX_REQUEST`] bytes read within
//! [`REQUEST_TIMEOUT`], at most [`MAX_CONCURRENT`] connections served at once (the rest wait in
//! the kernel's accept queue). Bind it to loopback or a private interface; it has no auth.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

/// Largest request head accepted.
pub const MAX_REQUEST: usize = 4096;
/// Time a client has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONCURRENT: usize = 8;

/// A bound metrics endpoint, not yet serving.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    registry: Arc<Registry>,
}

impl MetricsServer {
    /// Binds the endpoint.
    pub async fn bind(addr: SocketAddr, registry: Registry) -> io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            registry: Arc::new(registry),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until the task is aborted.
    pub async fn serve(self) {
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
        loop {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let (stream, _) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let registry = Arc::clone(&self.registry);
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, respond(stream, &registry))
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
                {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            });
        }
    }
}

async fn respond(mut stream: TcpStream, registry: &Registry) -> io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.len() > MAX_REQUEST {
            return reply(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    if method != b"GET" {
        return reply(&mut stream, "405 Method Not Allowed", "text/plain", "").await;
    }
    if path != b"/metrics" {
        return reply(&mut stream, "404 Not Found", "text/plain", "").await;
    }
    let mut body = String::new();
    if encode(&mut body, registry).is_err() {
        return reply(&mut stream, "500 Internal Server Error", "text/plain", "").await;
    }
    reply(
        &mut stream,
        "200 OK",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        &body,
    )
    .await
}

async fn reply(stream: &mut TcpStream, status: &str, ctype: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
