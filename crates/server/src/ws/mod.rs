//! The WebSocket way in: `GET /ws` is upgraded (after the per-IP attempt limit and the
//! `Origin` check) and the socket handed to a [`crate::session`] task: by tungstenite, or by
//! yawc with permessage-deflate when the hub allows compression and the client offers it
//! ([`deflate`]).

mod deflate;

use crate::hub::Hub;
use crate::{api, session};
use axum::extract::{ConnectInfo, FromRequestParts, Query, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use herald_protocol::ErrorCode;
use herald_protocol::reply::ErrorBody;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Upgrades `GET /ws` to a session.
pub async fn upgrade(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    if !hub.admit_attempt(addr.ip()) {
        tracing::warn!(target: "herald::audit", event = "auth_failure", ip = %addr.ip(), reason = "connection attempts per minute exceeded");
        return api::ApiError(ErrorBody::new(
            ErrorCode::RateLimited,
            "too many connection attempts from this address",
        ))
        .into_response();
    }
    let token = upgrade_token(&headers, &query);
    let origin_allowed = origin_allowed(&hub, &headers)
        && (headers.contains_key(header::ORIGIN) || !hub.config.require_origin);
    let limits = &hub.config.limits;
    let upgrade = session::Upgrade { token, origin_allowed, ip: addr.ip() };
    let (mut parts, _body) = request.into_parts();
    if hub.config.compression.enabled && deflate::offered(&headers) {
        let ws = match yawc::IncomingUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws,
            Err(status) => return status.into_response(),
        };
        let options = deflate::options(limits, &hub.config.compression);
        return match ws.upgrade(options) {
            Ok((response, socket)) => {
                tokio::spawn(async move {
                    if let Ok(socket) = socket.await {
                        session::run(hub, deflate::Deflated::new(socket), upgrade).await;
                    }
                });
                response.map(axum::body::Body::new).into_response()
            }
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade refused");
                axum::http::StatusCode::BAD_REQUEST.into_response()
            }
        };
    }
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    ws.read_buffer_size(256)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(limits.outbound_queue_bytes.max(1 << 20))
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        // The session runs in a task of its own so that the upgrade future's state is freed
        // (about 600 bytes per idle connection, docs/benchmarks.md).
        .on_upgrade(move |socket| async move {
            tokio::spawn(session::run(hub, socket, upgrade));
        })
}

/// The token of an upgrade request: `Authorization: Bearer`, else `?token=`.
pub(crate) fn upgrade_token(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .or_else(|| query.get("token").cloned())
}

/// Whether the request's `Origin` (if any) is on the allow-list (empty list: any).
pub(crate) fn origin_allowed(hub: &Hub, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) => {
            let list = &hub.config.allowed_origins;
            list.is_empty() || list.iter().any(|o| o == "*" || o == origin)
        }
        None => true,
    }
}
