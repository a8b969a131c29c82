//! The WebSocket way in: `GET /ws` is upgraded (after the per-IP attempt limit and the
//! `Origin` check) and the socket handed to a [`crate::session`] task: Herald's own framing
//! ([`plain`]), or yawc with permessage-deflate when the hub allows compression and the client
//! offers it ([`deflate`]).

mod deflate;
pub(crate) mod plain;

use crate::hub::Hub;
use crate::{api, session};
use axum::extract::{ConnectInfo, FromRequestParts, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
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
    let key = match opening_handshake(&parts.headers) {
        Ok(key) => key,
        Err(why) => {
            return api::ApiError(ErrorBody::new(ErrorCode::BadRequest, why)).into_response();
        }
    };
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return (StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded")
            .into_response();
    };
    let max_frame = limits.max_frame_bytes;
    // The session runs in a task of its own so that the upgrade future's state is freed
    // (about 600 bytes per idle connection, docs/benchmarks.md).
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => {
                let socket = plain::Socket::upgraded(io, max_frame);
                tokio::spawn(session::run(hub, socket, upgrade));
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&plain::accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Checks an opening handshake (RFC 6455 §4.2.1) and returns its `Sec-WebSocket-Key`, or why
/// it is not one (answered `400` with error `107`).
fn opening_handshake(headers: &HeaderMap) -> Result<&HeaderValue, &'static str> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err("not a WebSocket handshake: `Connection` does not include `upgrade`");
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err("not a WebSocket handshake: `Upgrade` is not `websocket`");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err("unsupported WebSocket version: `Sec-WebSocket-Version` must be 13");
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("not a WebSocket handshake: no `Sec-WebSocket-Key`")
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
