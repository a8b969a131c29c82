//! The socket seam of [`crate::Client`]: opening a connection and getting its `connect` reply
//! ([`handshake`], which falls back from a refused WebSocket upgrade to SSE), and the writer task that batches queued messages into frames
//! ([`spawn_writer`]). Frames are read, and batched frames split into messages, by
//! [`crate::raw::RawReceiver`]. No reconnects or bookkeeping here: that is [`crate::connection`].

use crate::raw::{RawConnection, RawError, RawReceiver, RawSender, upgrade_refused};
use crate::sse::{self, ProbePolicy, Transport};
use crate::state::OfflineReason;
use herald_protocol::reply::ConnectResult;
use herald_protocol::{CloseCode, Command, ErrorCode, Request, ServerMessage};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A frame the writer batches never grows past this many bytes (the hub's default inbound limit
/// is 64 KiB).
const MAX_BATCH_BYTES: usize = 32 * 1024;

/// How a handshake failed.
pub(crate) enum HandshakeError {
    /// Worth another attempt (network, timeout, transient refusal); the text says why.
    Retry(String),
    /// The token expired: another attempt needs a fresh one.
    TokenExpired(String),
    /// Retrying cannot help: the client goes offline for this reason.
    Final(OfflineReason),
}

/// Which transports an attempt tries, and how a client on SSE probes WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transports {
    /// Tried in order; the next one only after a refused upgrade (or refused SSE stream).
    pub order: Vec<Transport>,
    /// Probe intervals while on SSE (only when WebSocket comes first in `order`).
    pub probe: ProbePolicy,
}

impl Default for Transports {
    fn default() -> Self {
        Transports {
            order: vec![Transport::WebSocket, Transport::Sse],
            probe: ProbePolicy::default(),
        }
    }
}

/// Opens the first transport of `transports` that is not refused.
async fn open(
    url: &str,
    token: Option<&str>,
    transports: &Transports,
) -> Result<RawConnection, String> {
    let mut refused = Vec::new();
    for (i, transport) in transports.order.iter().enumerate() {
        let conn = match transport {
            Transport::WebSocket => RawConnection::connect(url, token).await,
            Transport::Sse => RawConnection::connect_sse(url).await,
        };
        let e = match conn {
            Ok(conn) => return Ok(conn),
            Err(e) => e,
        };
        let last = i + 1 == transports.order.len();
        let sse_refused =
            matches!(&e, RawError::Sse(sse::SseError::Status { status, .. }) if *status != 429);
        if last || !(upgrade_refused(&e) || sse_refused) {
            refused.push(format!("{transport}: {e}"));
            return Err(format!("{url}: {}", refused.join("; ")));
        }
        tracing::debug!(%url, error = %e, "herald {transport} refused; trying the next transport");
        refused.push(format!("{transport}: {e}"));
    }
    Err(format!("{url}: no transport"))
}

/// Connects (over the first transport that is not refused), sends `connect`, and waits for its
/// reply, all within `timeout`. On SSE with WebSocket preferred, the receiver probes WebSocket.
pub(crate) async fn handshake(
    url: String,
    token: Option<String>,
    name: Option<String>,
    timeout: Duration,
    transports: Transports,
) -> Result<(RawSender, RawReceiver, ConnectResult), HandshakeError> {
    let attempt = async {
        let conn =
            open(&url, token.as_deref(), &transports).await.map_err(HandshakeError::Retry)?;
        let transport = conn.transport();
        let (mut sender, mut receiver) = conn.split();
        // On WebSocket the token went in the upgrade's header; SSE's travels in `connect`.
        let token = match transport {
            Transport::WebSocket => None,
            Transport::Sse => token.clone().or_else(|| sse::url_token(&url)),
        };
        // Version 2: live publications come compact (protocol §17); a hub that speaks only 1
        // answers 1 and sends v1 objects, which the connection reads too.
        let connect =
            Request { id: Some(1), command: Command::Connect { token, name, version: Some(2) } };
        sender.send(&connect).await.map_err(|e| HandshakeError::Retry(format!("{url}: {e}")))?;
        let mut disconnect: Option<(u16, String)> = None;
        loop {
            match receiver.recv().await {
                Ok(ServerMessage::Reply { id: 1, result: Ok(raw) }) => {
                    let info: ConnectResult = serde_json::from_str(raw.get()).map_err(|e| {
                        HandshakeError::Retry(format!("undecodable connect reply: {e}"))
                    })?;
                    let ws_first = transports.order.first() == Some(&Transport::WebSocket);
                    if transport == Transport::Sse && ws_first {
                        receiver.probe_websocket(&url, transports.probe.clone());
                    }
                    return Ok((sender, receiver, info));
                }
                Ok(ServerMessage::Reply { id: 1, result: Err(e) }) => {
                    return Err(match e.error_code() {
                        Some(ErrorCode::TokenExpired) => {
                            HandshakeError::TokenExpired(e.to_string())
                        }
                        Some(
                            ErrorCode::Unauthorized | ErrorCode::Forbidden | ErrorCode::BadRequest,
                        ) => HandshakeError::Final(OfflineReason::Rejected {
                            code: e.code,
                            message: e.message,
                        }),
                        _ => HandshakeError::Retry(e.to_string()),
                    });
                }
                Ok(ServerMessage::Ping) => {
                    let pong = Request { id: None, command: Command::Pong };
                    let _ = sender.send(&pong).await;
                }
                Ok(ServerMessage::Disconnect { code, reason, .. }) => {
                    disconnect = Some((code, reason))
                }
                Ok(_) => {}
                Err(RawError::Closed { code, reason }) => {
                    let (code, reason) = match (code, disconnect) {
                        (None | Some(1005) | Some(1006), Some((c, r))) => (Some(c), r),
                        (code, _) => (code, reason),
                    };
                    return Err(match code {
                        Some(c) if !CloseCode::should_reconnect(c) => {
                            HandshakeError::Final(OfflineReason::Closed { code: c, reason })
                        }
                        Some(c) if c == CloseCode::TokenExpired.code() => {
                            HandshakeError::TokenExpired(reason)
                        }
                        _ => HandshakeError::Retry(format!(
                            "closed during connect: {code:?} {reason}"
                        )),
                    });
                }
                Err(e) => return Err(HandshakeError::Retry(e.to_string())),
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(HandshakeError::Retry("connect timed out".into())))
}

/// Spawns the task that writes queued messages, batching what is queued into one frame.
pub(crate) fn spawn_writer(
    mut sender: RawSender,
) -> (mpsc::UnboundedSender<String>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let handle = tokio::spawn(async move {
        let mut carry: Option<String> = None;
        loop {
            let mut frame = match carry.take() {
                Some(line) => line,
                None => match rx.recv().await {
                    Some(line) => line,
                    None => break,
                },
            };
            while let Ok(line) = rx.try_recv() {
                if frame.len() + line.len() + 1 > MAX_BATCH_BYTES {
                    carry = Some(line);
                    break;
                }
                frame.push('\n');
                frame.push_str(&line);
            }
            if let Err(e) = sender.send_text(frame).await {
                tracing::debug!(error = %e, "herald write failed");
                return;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sender.close()).await;
    });
    (tx, handle)
}
