//! The multiplexed SSE transport (docs/protocol.md §13, "Multiplexed SSE transport"): for a
//! client that keeps its own protocol logic and only swaps the socket where WebSocket is
//! blocked. `GET /sse` opens one session, through a [`Pipe`](super::Pipe) like the per-channel
//! route, and streams every frame it writes as one SSE `message` event carrying the frame's text;
//! `POST /sse/session/{id}` feeds command lines to that session's inbound, in order.

use super::{event_stream, pipe};
use crate::api::ApiError;
use crate::hub::Hub;
use crate::session::{self, Upgrade};
use axum::Router;
use axum::body::Body;
use axum::extract::ws::Message;
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use herald_protocol::ErrorCode;
use herald_protocol::reply::ErrorBody;
use herald_protocol::{ServerMessage, split_frame};
use parking_lot::Mutex;
use rand::RngCore;
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// POSTed frames a session may have queued before the next POST waits for it to read: a
/// session busy writing to a slow reader holds its POSTs back instead of buffering them.
const INBOUND_BUFFER: usize = 4;

/// A session's inbound, as a POST feeds it.
type Inbound = mpsc::Sender<Result<Message, axum::Error>>;

/// The open multiplexed sessions by id. Each entry lives exactly as long as its `GET /sse`
/// stream, so the plain-HTTP connection limits and the per-user connection limit that bound
/// those streams and sessions bound it too.
#[derive(Default)]
struct Registry {
    /// Session id → its inbound.
    sessions: Mutex<HashMap<String, Inbound>>,
}

/// Forgets a session id when its stream's task ends, however it ends; dropping the inbound
/// ends the session (once no POST is mid-send).
struct Forget {
    /// Where the id is registered.
    registry: Arc<Registry>,
    /// The id.
    id: String,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.registry.sessions.lock().remove(&self.id);
    }
}

/// `GET /sse` and `POST /sse/session/{id}`, sharing one registry.
pub fn router() -> Router<Arc<Hub>> {
    Router::new()
        .route("/sse", get(open))
        .route("/sse/session/{id}", post(feed))
        .layer(Extension(Arc::new(Registry::default())))
}

/// An unguessable session id: 128 random bits from a CSPRNG, as 32 hex digits (URL-safe).
fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn refusal(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(json!({ "error": ErrorBody::new(code, message) }))).into_response()
}

/// `GET /sse`: a session; its id first (`event: session`), then every frame it writes.
async fn open(
    State(hub): State<Arc<Hub>>,
    Extension(registry): Extension<Arc<Registry>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if !hub.admit_attempt(addr.ip()) {
        return ApiError(ErrorBody::new(
            ErrorCode::RateLimited,
            "too many connection attempts from this address",
        ))
        .into_response();
    }
    let (inbound, commands) = mpsc::channel(INBOUND_BUFFER);
    let (pipe, mut frames) = pipe(ReceiverStream::new(commands));
    let id = new_id();
    registry.sessions.lock().insert(id.clone(), inbound);
    let forget = Forget { registry, id: id.clone() };
    // The token comes in `connect`, as the client sends it over WebSocket.
    let upgrade = Upgrade {
        token: None,
        origin_allowed: crate::ws::origin_allowed(&hub, &headers),
        ip: addr.ip(),
    };
    tokio::spawn(session::run(hub.clone(), pipe, upgrade));
    let (events_tx, events) = mpsc::channel::<Result<Event, Infallible>>(super::BODY_BUFFER);
    let first = Event::default().event("session").data(json!({ "session": id }).to_string());
    let _ = events_tx.try_send(Ok(first));
    // Ends when the session ends (after its last frame, the disconnect push if any) or when the
    // HTTP client goes away; either way the id is forgotten and the session's inbound dropped.
    tokio::spawn(async move {
        let _forget = forget;
        loop {
            let msg = tokio::select! {
                msg = frames.recv() => msg,
                // A closed tab on a quiet session: nothing would be sent to notice it.
                () = events_tx.closed() => return,
            };
            let text = match msg {
                Some(Message::Text(text)) => text,
                Some(_) => continue,
                None => return,
            };
            let left;
            let text = if frames.session_ended() {
                left = frames.after_end(text.as_str());
                left.as_str()
            } else {
                text.as_str()
            };
            // One `data:` line per protocol line (axum splits on `\n`): an EventSource joins
            // them back with `\n`, the frame's text exactly.
            if events_tx.send(Ok(Event::default().data(text))).await.is_err() {
                return;
            }
            // The session's last words: end the stream now rather than when the session's close
            // handshake times out waiting for a client that has no close frame to send.
            if has_disconnect(text) {
                return;
            }
        }
    });
    event_stream(&hub, events)
}

/// Whether a frame carries the `disconnect` push (checked by parsing only the lines that may).
fn has_disconnect(frame: &str) -> bool {
    frame.contains(r#""disconnect""#)
        && split_frame(frame).any(|line| {
            line.contains(r#""disconnect""#)
                && matches!(ServerMessage::parse(line), Ok(ServerMessage::Disconnect { .. }))
        })
}

/// `POST /sse/session/{id}`: the body's command lines, as one frame, to the session's inbound.
async fn feed(
    State(hub): State<Arc<Hub>>,
    Extension(registry): Extension<Arc<Registry>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !crate::ws::origin_allowed(&hub, &headers) {
        return refusal(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "origin not allowed");
    }
    const UNKNOWN: &str = "no open SSE session with this id";
    let Some(inbound) = registry.sessions.lock().get(&id).cloned() else {
        return refusal(StatusCode::NOT_FOUND, ErrorCode::UnknownSession, UNKNOWN);
    };
    let limit = hub.config.limits.max_frame_bytes;
    // A read error other than the limit means the client is gone: nobody reads the answer.
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        let message = format!("body above limits.max_frame_bytes ({limit} bytes)");
        return refusal(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::MessageTooLarge, &message);
    };
    let Ok(text) = String::from_utf8(bytes.to_vec()) else {
        return refusal(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "body is not UTF-8");
    };
    // The session splits a frame on `\n` as it does a WebSocket text frame's, so the lines keep
    // their order, and the next POST (one in flight per session) queues behind them.
    if !text.trim().is_empty() && inbound.send(Ok(Message::Text(text.into()))).await.is_err() {
        return refusal(StatusCode::NOT_FOUND, ErrorCode::UnknownSession, UNKNOWN);
    }
    StatusCode::NO_CONTENT.into_response()
}
