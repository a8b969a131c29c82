//! The HTTP accept loop of [`crate::serve`]: bounds what a client without credentials can hold.
//!
//! axum's own `serve` has no header-read timeout and no bound on open connections, so a few
//! hundred sockets that send half a request hold the node's file descriptors forever (slowloris).
//! Here every accepted connection is counted while it is plain HTTP, per source IP and in total;
//! past either bound it gets a `429`/`503` JSON error and is closed at once. hyper's header-read
//! timeout ends a connection whose request head does not arrive in time, which also bounds how
//! long a keep-alive connection may sit idle between requests; a request (head and body) must be
//! handled within the request timeout. A WebSocket upgrade leaves the count: the session then
//! has its own auth and heartbeat timeouts.
//!
//! With TLS configured the handshake runs in the connection's task, counted like the request
//! that follows and bounded by the header-read timeout; without it the socket goes to hyper
//! as before, with no TLS code on the way.

use crate::tls::Tls;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use herald_protocol::ErrorCode;
use herald_protocol::reply::ErrorBody;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Most bytes of a plain HTTP connection's request head and of its read and write buffers.
pub const HTTP_BUFFER_BYTES: usize = 64 * 1024;

/// The bounds on plain HTTP connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time allowed for a request head to arrive, and for the next one on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Time allowed to handle one request, body included (not the lifetime of an SSE stream or
    /// WebSocket, which answer at once).
    pub request_timeout: Duration,
    /// Plain HTTP connections open on this node.
    pub max_connections: usize,
    /// Plain HTTP connections open from one source IP.
    pub max_connections_per_ip: usize,
}

/// Open plain HTTP connections, in total and by source address.
#[derive(Default)]
pub struct HttpConnections {
    /// Connections by source IP; an entry is removed when its count reaches 0.
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Sum of `by_ip`, kept beside it so the total check needs no walk.
    total: Mutex<usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds `max_connections` plain HTTP connections.
    Total,
    /// The source IP holds `max_connections_per_ip`.
    PerIp,
}

impl HttpConnections {
    /// Counts a new connection from `ip`, or refuses it. The count is released when the guard
    /// drops (the connection ended, or was upgraded to a WebSocket).
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &HttpLimits,
    ) -> Result<HttpConnection, Refusal> {
        let mut total = self.total.lock();
        if limits.max_connections > 0 && *total >= limits.max_connections {
            return Err(Refusal::Total);
        }
        let mut by_ip = self.by_ip.lock();
        let n = by_ip.entry(ip).or_insert(0);
        if limits.max_connections_per_ip > 0 && *n >= limits.max_connections_per_ip {
            return Err(Refusal::PerIp);
        }
        *n += 1;
        *total += 1;
        Ok(HttpConnection { set: self.clone(), ip })
    }

    /// Plain HTTP connections open now.
    pub fn open(&self) -> usize {
        *self.total.lock()
    }
}

/// One counted connection; dropping it releases the count.
pub struct HttpConnection {
    set: Arc<HttpConnections>,
    ip: IpAddr,
}

impl Drop for HttpConnection {
    fn drop(&mut self) {
        let mut total = self.set.total.lock();
        *total -= 1;
        let mut by_ip = self.set.by_ip.lock();
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// The whole answer to a refused connection, written before the request is read.
fn refusal_response(refusal: Refusal) -> Vec<u8> {
    let (status, code, message) = match refusal {
        Refusal::Total => (
            "503 Service Unavailable",
            ErrorCode::Unavailable,
            "too many open HTTP connections on this node",
        ),
        Refusal::PerIp => (
            "429 Too Many Requests",
            ErrorCode::RateLimited,
            "too many open HTTP connections from this address",
        ),
    };
    let body = serde_json::json!({ "error": ErrorBody::new(code, message) }).to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Accepts and serves connections (over TLS when `tls` is given) until `shutdown` resolves;
/// then `drain` runs (it closes the WebSocket sessions), open HTTP connections finish their
/// requests, and the loop returns.
#[allow(clippy::too_many_arguments)]
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<Tls>>,
    limits: HttpLimits,
    connections: Arc<HttpConnections>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    drain: impl std::future::Future<Output = ()>,
    drain_deadline: Duration,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or similar: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let guard = match connections.admit(addr.ip(), &limits) {
            Ok(g) => g,
            Err(refusal) => {
                // One non-blocking write into an empty socket buffer, then close: a refused
                // connection costs no task and no wait.
                let _ = tcp.try_write(&refusal_response(refusal));
                tracing::debug!(ip = %addr.ip(), ?refusal, "HTTP connection refused");
                continue;
            }
        };
        // Small frames go out at once: with Nagle on, a frame written while the previous one is
        // unacknowledged waits for the peer's delayed ACK (up to 40 ms on Linux).
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        match &tls {
            None => {
                tracker.spawn(async move {
                    serve_connection(tcp, addr, app, limits, guard, &mut stop).await;
                });
            }
            Some(tls) => {
                let acceptor = tls.acceptor().clone();
                tracker.spawn(async move {
                    // A handshake that does not finish in time is a slowloris like a slow head.
                    let handshake = acceptor.accept(tcp);
                    match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, addr, app, limits, guard, &mut stop).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(ip = %addr.ip(), error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(ip = %addr.ip(), "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    drain.await;
    let _ = stop_tx.send(true);
    tracker.close();
    if tokio::time::timeout(drain_deadline, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown deadline passed with HTTP requests open");
    }
    Ok(())
}

async fn serve_connection<Io>(
    io: Io,
    addr: SocketAddr,
    app: Router,
    limits: HttpLimits,
    guard: HttpConnection,
    stop: &mut watch::Receiver<bool>,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(addr));
        let mut app = app.clone();
        async move {
            let req = req.map(axum::body::Body::new);
            let call = tower_service::Service::call(&mut app, req);
            match tokio::time::timeout(limits.request_timeout, call).await {
                Ok(response) => response,
                Err(_) => {
                    let e = ErrorBody::new(
                        ErrorCode::BadRequest,
                        format!(
                            "request not completed within {} ms",
                            limits.request_timeout.as_millis()
                        ),
                    );
                    let body = axum::Json(serde_json::json!({ "error": e }));
                    Ok((axum::http::StatusCode::REQUEST_TIMEOUT, body).into_response())
                }
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Head and body in one buffer, one `write`: a two-part `writev` costs the kernel ~12 %
        // more per call on loopback than a `write` of the same bytes (`bench/floor-uring`,
        // docs/benchmarks.md), and API answers are small.
        .writev(false)
        // That buffer takes up to this much of an SSE stream its reader does not read before
        // hyper stops asking for more (then the stream backs up into its own bounded queue);
        // hyper's default, ~400 KiB, would be held per slow reader.
        .max_buf_size(HTTP_BUFFER_BYTES)
        // The largest request head (HTTP 431 beyond).
        .max_header_size(HTTP_BUFFER_BYTES)
        // Not `pipeline_flush`: pipelined requests are answered in order all the same, and it
        // would write their answers in one write instead of one each (+29 % on pipelined
        // publishing, docs/benchmarks.md), but in hyper 1.x it also lifts the bound on the
        // connection's write buffer, so an SSE reader that stops reading would have the hub
        // buffer its stream without limit instead of being closed as a slow consumer.
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    // The count is held while the connection is plain HTTP; hyper resolves `conn` when the
    // connection ends or hands the socket to a WebSocket upgrade.
    let _guard = guard;
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_ip_and_in_total_and_releases_on_drop() {
        let set = Arc::new(HttpConnections::default());
        let limits = HttpLimits {
            header_read_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            max_connections: 3,
            max_connections_per_ip: 2,
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = set.admit(a, &limits).unwrap();
        let _a2 = set.admit(a, &limits).unwrap();
        assert_eq!(set.admit(a, &limits).err(), Some(Refusal::PerIp));
        let _b1 = set.admit(b, &limits).unwrap();
        assert_eq!(set.admit(b, &limits).err(), Some(Refusal::Total));
        drop(a1);
        assert_eq!(set.open(), 2);
        let _a3 = set.admit(a, &limits).unwrap();
        assert_eq!(set.open(), 3);
    }

    #[test]
    fn refusal_is_the_documented_error_object() {
        let raw = String::from_utf8(refusal_response(Refusal::PerIp)).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 429"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], 110);
        assert_eq!(v["error"]["name"], "rate_limited");
    }
}
