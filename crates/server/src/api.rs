//! The server HTTP API under `/api`, authorized by the `x-api-key` header; plus `/health`,
//! `/ready` and `/metrics`. docs/openapi.json describes it and a test keeps the two in step.

use crate::auth::{Claims, mint_hs256, unix_now};
use crate::engine::PublishInput;
use crate::hub::{Hub, engine_error};
use crate::session::HistoryReply;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_protocol::command::HistoryQuery;
use herald_protocol::reply::{ErrorBody, StateResult};
use herald_protocol::{ErrorCode, Meta, Op, Position};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::sync::Arc;

/// Every (method, path) the API serves; the OpenAPI test compares docs/openapi.json with it.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/publish"),
    ("post", "/api/broadcast"),
    ("get", "/api/channels"),
    ("get", "/api/info"),
    ("post", "/api/disconnect"),
    ("get", "/api/history"),
    ("get", "/api/state"),
    ("post", "/api/token"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
];

/// An API error: the protocol error object with an HTTP status.
pub struct ApiError(pub ErrorBody);

impl From<ErrorBody> for ApiError {
    fn from(e: ErrorBody) -> Self {
        ApiError(e)
    }
}

/// The HTTP status for an error code.
pub fn status_for(code: u16) -> StatusCode {
    match ErrorCode::from_code(code) {
        Some(ErrorCode::Unauthorized | ErrorCode::TokenExpired) => StatusCode::UNAUTHORIZED,
        Some(ErrorCode::Forbidden) => StatusCode::FORBIDDEN,
        Some(ErrorCode::UnknownNamespace) => StatusCode::NOT_FOUND,
        Some(ErrorCode::MessageTooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
        Some(ErrorCode::StateLimitExceeded) => StatusCode::CONFLICT,
        Some(ErrorCode::RateLimited | ErrorCode::TooManyConnections) => {
            StatusCode::TOO_MANY_REQUESTS
        }
        Some(ErrorCode::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
        Some(ErrorCode::Internal) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (status_for(self.0.code), Json(json!({ "error": self.0 }))).into_response()
    }
}

/// Parses a JSON body into `T` with a protocol error on failure.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(ErrorBody::new(ErrorCode::BadRequest, format!("bad JSON body: {e}"))))
}

/// The API routes (the caller adds state).
pub fn router(hub: Arc<Hub>) -> Router<Arc<Hub>> {
    let api = Router::new()
        .route("/api/publish", post(publish))
        .route("/api/broadcast", post(broadcast))
        .route("/api/channels", get(channels))
        .route("/api/info", get(info))
        .route("/api/disconnect", post(disconnect))
        .route("/api/history", get(history))
        .route("/api/state", get(state))
        .route("/api/token", post(token))
        .route_layer(axum::middleware::from_fn_with_state(hub, require_api_key));
    Router::new()
        .merge(api)
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

async fn require_api_key(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or("");
    let ok = !given.is_empty()
        && hub.config.api_keys.iter().any(|k| constant_time_eq(k.as_bytes(), given.as_bytes()));
    if !ok {
        hub.metrics.auth_failures.inc();
        tracing::warn!(target: "herald::audit", event = "auth_failure", reason = "bad or missing API key", path = %req.uri().path());
        return ApiError(ErrorBody::new(ErrorCode::Unauthorized, "missing or wrong x-api-key"))
            .into_response();
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Body of `POST /api/publish`; `POST /api/broadcast` has `channels` instead of `channel`.
#[derive(Deserialize)]
struct PublishBody {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    data: Box<RawValue>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    op: Option<Op>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

impl PublishBody {
    fn input(&self, channel: &str) -> PublishInput {
        PublishInput {
            channel: channel.to_string(),
            kind: self.kind.clone().unwrap_or_else(|| "message".into()),
            data: self.data.clone(),
            key: self.key.clone(),
            op: self.op,
            meta: Meta {
                user: self.user.clone(),
                source: Some(self.source.clone().unwrap_or_else(|| "api".into())),
                correlation_id: self.correlation_id.clone(),
                idempotency_key: self.idempotency_key.clone(),
            },
        }
    }
}

async fn publish(
    State(hub): State<Arc<Hub>>,
    raw: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: PublishBody = body(&raw)?;
    let channel = b
        .channel
        .clone()
        .ok_or_else(|| ErrorBody::new(ErrorCode::BadRequest, "missing field `channel`"))?;
    let result = hub.publish(b.input(&channel)).await?;
    Ok(Json(result).into_response())
}

async fn broadcast(
    State(hub): State<Arc<Hub>>,
    raw: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: PublishBody = body(&raw)?;
    let mut channels = b
        .channels
        .clone()
        .ok_or_else(|| ErrorBody::new(ErrorCode::BadRequest, "missing field `channels`"))?;
    if channels.is_empty() || channels.len() > 1000 {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "`channels` must list 1 to 1000 channels",
        )
        .into());
    }
    // Each listed channel gets the event once, even if listed twice.
    let mut seen = std::collections::HashSet::new();
    channels.retain(|c| seen.insert(c.clone()));
    let mut results = Vec::with_capacity(channels.len());
    for channel in &channels {
        results.push(match hub.publish(b.input(channel)).await {
            Ok(r) => serde_json::to_value(r).unwrap_or_default(),
            Err(e) => json!({ "channel": channel, "error": e }),
        });
    }
    Ok(Json(json!({ "results": results })).into_response())
}

async fn channels(State(hub): State<Arc<Hub>>) -> Json<serde_json::Value> {
    // Clustered engines count every node's subscribers; otherwise this node's.
    let counts = match hub.engine.channel_counts().await {
        Some(counts) => counts,
        None => hub.subscribers.counts(),
    };
    let list: Vec<_> = counts
        .into_iter()
        .map(|(channel, n)| json!({ "channel": channel, "subscribers": n }))
        .collect();
    Json(json!({ "channels": list }))
}

/// This node's line in `/api/info`.
pub fn node_info(hub: &Hub) -> serde_json::Value {
    json!({
        "id": hub.node_id,
        "address": hub.config.listen,
        "connections": hub.connection_count(),
        "subscriptions": hub.metrics.subscriptions.get(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

async fn info(State(hub): State<Arc<Hub>>) -> Json<serde_json::Value> {
    // Clustered engines list every live node; otherwise (or when the cluster view is
    // unreachable) this node alone.
    let nodes = match hub.engine.nodes().await {
        Some(nodes) if !nodes.is_empty() => nodes,
        _ => vec![node_info(&hub)],
    };
    let channels = match hub.engine.channel_counts().await {
        Some(counts) => counts.len(),
        None => hub.subscribers.counts().len(),
    };
    let cluster_connections: u64 = nodes.iter().filter_map(|n| n["connections"].as_u64()).sum();
    Json(json!({
        "node": hub.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "engine": format!("{:?}", hub.config.engine.kind).to_lowercase(),
        "connections": hub.connection_count(),
        "cluster_connections": cluster_connections,
        "subscriptions": hub.metrics.subscriptions.get(),
        "channels": channels,
        "uptime_secs": hub.started.elapsed().as_secs(),
        "nodes": nodes,
    }))
}

#[derive(Deserialize)]
struct DisconnectBody {
    user: String,
}

async fn disconnect(
    State(hub): State<Arc<Hub>>,
    raw: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b: DisconnectBody = body(&raw)?;
    let n = hub.disconnect_user(&b.user);
    tracing::info!(target: "herald::audit", event = "kick", user = %b.user, connections = n);
    Ok(Json(json!({ "disconnected": n })))
}

#[derive(Deserialize)]
struct HistoryParams {
    channel: String,
    #[serde(default)]
    limit: Option<usize>,
    /// `EPOCH:OFFSET`.
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    before: Option<u64>,
}

async fn history(
    State(hub): State<Arc<Hub>>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.body_text()))?;
    let since = match &p.since {
        Some(s) => Some(
            s.parse::<Position>()
                .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("since: {e}")))?,
        ),
        None => None,
    };
    let ns = hub.namespace(&p.channel)?;
    let q = HistoryQuery { channel: p.channel.clone(), limit: p.limit, since, before: p.before };
    let h = hub
        .engine
        .history(ns, &q, hub.config.limits.max_history_page)
        .await
        .map_err(|e| engine_error(e, &p.channel))?;
    Ok(Json(HistoryReply::new(&p.channel, &h)).into_response())
}

#[derive(Deserialize)]
struct StateParams {
    channel: String,
}

async fn state(
    State(hub): State<Arc<Hub>>,
    params: Result<Query<StateParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.body_text()))?;
    let ns = hub.namespace(&p.channel)?;
    let st = hub.engine.state(ns, &p.channel).await.map_err(|e| engine_error(e, &p.channel))?;
    Ok(Json(StateResult {
        channel: p.channel,
        epoch: st.epoch,
        offset: st.offset,
        records: st.records,
    })
    .into_response())
}

#[derive(Deserialize)]
struct TokenBody {
    sub: String,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

async fn token(
    State(hub): State<Arc<Hub>>,
    raw: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b: TokenBody = body(&raw)?;
    let secret = hub.config.auth.token_secret.as_deref().ok_or_else(|| {
        ErrorBody::new(
            ErrorCode::BadRequest,
            "minting needs auth.token_secret (HS256) in the configuration",
        )
    })?;
    if b.sub.is_empty() {
        return Err(ErrorBody::new(ErrorCode::BadRequest, "`sub` must not be empty").into());
    }
    let exp = unix_now() + b.ttl_secs.unwrap_or(3600);
    let claims = Claims {
        sub: b.sub,
        exp: Some(exp),
        nbf: None,
        channels: b.channels,
        publish: b.publish,
        roles: b.roles,
    };
    let token = mint_hs256(secret, &claims)
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
    Ok(Json(json!({ "token": token, "expires_at": exp })))
}

async fn ready(State(hub): State<Arc<Hub>>) -> Response {
    if hub.engine.ready().await {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "engine unavailable" })))
            .into_response()
    }
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    if let Some((used, budget)) = hub.engine.memory() {
        hub.metrics.engine_memory_bytes.set(used as i64);
        hub.metrics.engine_memory_budget_bytes.set(budget as i64);
    }
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        hub.metrics.render(),
    )
        .into_response()
}
