//! The server HTTP API under `/api`, authorized by the `x-api-key` header; plus `/health`,
//! `/ready` and `/metrics`. docs/openapi.json describes it and a test keeps the two in step.

mod publish;

use crate::auth::{Claims, MAX_TOKEN_TTL_SECS, expiry_after, mint_hs256};
use crate::hub::Hub;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_protocol::command::HistoryQuery;
use herald_protocol::reply::{ErrorBody, HistoryReply, RawPublications, StateResult};
use herald_protocol::{ErrorCode, Position};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every (method, path) the API serves; the OpenAPI test compares docs/openapi.json with it.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/publish"),
    ("post", "/api/publish/batch"),
    ("post", "/api/broadcast"),
    ("get", "/api/channels"),
    ("get", "/api/info"),
    ("post", "/api/disconnect"),
    ("get", "/api/history"),
    ("get", "/api/state"),
    ("post", "/api/token"),
    ("get", "/api/specs"),
    ("get", "/api/schema/{entity}"),
    ("get", "/api/presence"),
    ("get", "/api/presence_stats"),
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
        Some(ErrorCode::InvalidRecord) => StatusCode::UNPROCESSABLE_ENTITY,
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
        error_response(status_for(self.0.code), self.0)
    }
}

/// The documented `{"error": {...}}` object with this status.
fn error_response(status: StatusCode, e: ErrorBody) -> Response {
    (status, Json(json!({ "error": e }))).into_response()
}

/// Parses a JSON body into `T` with a protocol error on failure.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(bad_body)
}

/// The 107 for a body (or a batch item) that is not what the route takes.
fn bad_body(fault: impl std::fmt::Display) -> ApiError {
    ApiError(ErrorBody::new(ErrorCode::BadRequest, format!("bad JSON body: {fault}")))
}

/// The `/api/*` routes (the caller adds state).
pub fn router(hub: Arc<Hub>) -> Router<Arc<Hub>> {
    let limits = &hub.config.limits;
    let throttle = Arc::new(FailureThrottle::new(
        limits.api_key_failures_per_ip_per_minute,
        Duration::from_secs(60),
    ));
    // One middleware for every API route (size, key, refusals as the error object): each layer
    // costs a boxed future per request, and the HTTP publish path is hot (docs/benchmarks.md).
    let check = ApiCheck { hub: hub.clone(), throttle, max_body: limits.max_api_body_bytes };
    Router::new()
        .route("/api/publish", post(publish::publish).fallback(|| not_allowed("POST")))
        .route("/api/publish/batch", post(publish::publish_batch).fallback(|| not_allowed("POST")))
        .route("/api/broadcast", post(publish::broadcast).fallback(|| not_allowed("POST")))
        .route("/api/channels", get(channels).fallback(|| not_allowed("GET")))
        .route("/api/info", get(info).fallback(|| not_allowed("GET")))
        .route("/api/disconnect", post(disconnect).fallback(|| not_allowed("POST")))
        .route("/api/history", get(history).fallback(|| not_allowed("GET")))
        .route("/api/state", get(state).fallback(|| not_allowed("GET")))
        .route("/api/token", post(token).fallback(|| not_allowed("POST")))
        .route("/api/specs", get(specs).fallback(|| not_allowed("GET")))
        .route("/api/presence", get(presence).fallback(|| not_allowed("GET")))
        .route("/api/presence_stats", get(presence_stats).fallback(|| not_allowed("GET")))
        .route("/api/schema/{entity}", get(schema).fallback(|| not_allowed("GET")))
        .route_layer(axum::middleware::from_fn_with_state(check, api_check))
        // Explicit routes rather than a router fallback, so that an application merging this
        // router with its own fallback still can.
        .route("/api", axum::routing::any(unknown_api_route))
        .route("/api/", axum::routing::any(unknown_api_route))
        .route("/api/{*rest}", axum::routing::any(unknown_api_route))
        .layer(DefaultBodyLimit::max(limits.max_api_body_bytes))
}

/// `/health` (the process answers) and `/ready` (the engine can serve), without an API key.
pub fn health_router() -> Router<Arc<Hub>> {
    Router::new()
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/ready", get(ready))
}

/// `/metrics` in the OpenMetrics text format, without an API key.
pub fn metrics_router() -> Router<Arc<Hub>> {
    Router::new().route("/metrics", get(metrics))
}

/// A known route asked with another method: 405 with `Allow` and the error object (104).
async fn not_allowed(allow: &'static str) -> Response {
    let mut resp = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorBody::new(ErrorCode::UnknownCommand, "method not allowed on this route"),
    );
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// The checks in front of every API route, in one layer: a body declared over the limit, the
/// API key (with the per-address throttle), then refusals made the error object.
/// Every request is counted by route template and status here.
async fn api_check(State(check): State<ApiCheck>, req: Request, next: Next) -> Response {
    let route = route_template(&req);
    let resp = match refuse_declared_oversize(check.max_body, req).await {
        Ok(req) => require_api_key(&check, req, next).await,
        Err(refused) => refused,
    };
    let resp = json_refusals(resp).await;
    check.hub.metrics.http_request(route, resp.status().as_u16());
    resp
}

/// The matched route as one of [`ROUTES`]' `'static` paths (a metric label without an
/// allocation per request); never the raw path, whose values are unbounded.
fn route_template(req: &Request) -> &'static str {
    let matched = req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str());
    ROUTES.iter().map(|(_, path)| *path).find(|path| Some(*path) == matched).unwrap_or("other")
}

/// Unknown paths under `/api`: the error object (104: no such operation).
async fn unknown_api_route(req: Request) -> Response {
    let message = format!("no API route {}", req.uri().path());
    error_response(StatusCode::NOT_FOUND, ErrorBody::new(ErrorCode::UnknownCommand, message))
}

/// Turns a refusal that is not already JSON (axum's 405, body-limit 413, extractor rejections)
/// into the error object, keeping its status and headers (`Allow`, `Retry-After`).
async fn json_refusals(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::MessageTooLarge,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => ErrorCode::UnknownCommand,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let (mut parts, body) = resp.into_parts();
    // Rejection texts are short; a longer body is not a rejection text worth echoing.
    let text = axum::body::to_bytes(body, 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match (status, text.trim()) {
        (StatusCode::PAYLOAD_TOO_LARGE, _) => "request body larger than limits.max_api_body_bytes",
        (StatusCode::METHOD_NOT_ALLOWED, _) => "method not allowed on this route",
        (_, "") => status.canonical_reason().unwrap_or("refused"),
        (_, t) => t,
    };
    let fresh = error_response(status, ErrorBody::new(code, message));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, fresh.into_body())
}

/// Most of an oversized body read (and discarded) so that its sender sees the 413.
const DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Longest time spent reading an oversized body.
const DRAIN_FOR: Duration = Duration::from_secs(10);

/// A body whose `Content-Length` is over the limit is refused with 111 before anything else
/// looks at it. A client that writes its whole body before reading (most HTTP libraries) would
/// see a reset instead of the answer if the hub closed with the body unread, so the hub first
/// reads and discards it (up to 64 MiB, 10 s; beyond, it answers and closes the connection).
async fn refuse_declared_oversize(limit: usize, req: Request) -> Result<Request, Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|n| *n > limit as u64) else {
        return Ok(req);
    };
    let mut drained = false;
    if declared <= DRAIN_MAX_BYTES {
        use futures_util::StreamExt as _;
        let mut body = req.into_body().into_data_stream();
        let read_all = async { while let Some(Ok(_)) = body.next().await {} };
        drained = tokio::time::timeout(DRAIN_FOR, read_all).await.is_ok();
    }
    let message =
        format!("request body of {declared} bytes is over limits.max_api_body_bytes ({limit})");
    let mut resp = error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorBody::new(ErrorCode::MessageTooLarge, message),
    );
    if !drained {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Err(resp)
}

/// State of the checks in front of the API routes.
#[derive(Clone)]
struct ApiCheck {
    hub: Arc<Hub>,
    /// Failed checks per source address.
    throttle: Arc<FailureThrottle>,
    /// `limits.max_api_body_bytes`, for bodies declared larger.
    max_body: usize,
}

async fn require_api_key(check: &ApiCheck, req: Request, next: Next) -> Response {
    let hub = &check.hub;
    // Embedders that serve without connect info share one budget (fail closed, not open).
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let now = Instant::now();
    // A locked-out address is refused before its key is looked at, so a good key does not
    // get in either (and guessing learns nothing) until the window ends.
    if let Some(wait) = check.throttle.locked(ip, now) {
        return rate_limited(wait);
    }
    let given = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or("");
    let ok = !given.is_empty()
        && hub.config.api_keys.iter().any(|k| constant_time_eq(k.as_bytes(), given.as_bytes()));
    if ok {
        return next.run(req).await;
    }
    hub.metrics.auth_failures.inc();
    let path = req.uri().path();
    tracing::warn!(target: "herald::audit", event = "auth_failure", ip = %ip, reason = "bad or missing API key", path = %path);
    if check.throttle.failed(ip, now) {
        tracing::warn!(target: "herald::audit", event = "api_key_lockout", ip = %ip, "failed API-key checks per minute exceeded; refusing this address until the minute ends");
    }
    ApiError(ErrorBody::new(ErrorCode::Unauthorized, "missing or wrong x-api-key")).into_response()
}

/// 429 with error 110 and `Retry-After` in whole seconds (at least 1).
fn rate_limited(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut resp = ApiError(ErrorBody::new(
        ErrorCode::RateLimited,
        "too many failed API-key checks from this address",
    ))
    .into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}

/// Counts failures per source address in fixed windows: after `limit` failures inside one
/// window the address is locked out until the window ends. Pure logic with the clock passed in.
pub struct FailureThrottle {
    /// Failures allowed per window (0: unlimited).
    limit: u32,
    /// Window length.
    window: Duration,
    /// Address (IPv6 by /64, what one host usually controls) → (window start, failures).
    by_addr: parking_lot::Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Addresses tracked at once; past it, expired windows are dropped, then arbitrary ones, so
/// the table cannot grow without bound under a spread-out attack.
const THROTTLE_MAX_ADDRESSES: usize = 65_536;

impl FailureThrottle {
    /// A throttle allowing `limit` failures per `window` and address.
    pub fn new(limit: u32, window: Duration) -> FailureThrottle {
        FailureThrottle { limit, window, by_addr: parking_lot::Mutex::new(HashMap::new()) }
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        }
    }

    /// How long `ip` stays locked out at `now`, if it is.
    pub fn locked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let map = self.by_addr.lock();
        let (start, failures) = *map.get(&Self::key(ip))?;
        let elapsed = now.saturating_duration_since(start);
        (failures >= self.limit && elapsed < self.window).then(|| self.window - elapsed)
    }

    /// Records a failure; true when it is the one that locks the address out.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let mut map = self.by_addr.lock();
        let key = Self::key(ip);
        if map.len() >= THROTTLE_MAX_ADDRESSES && !map.contains_key(&key) {
            let window = self.window;
            map.retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            if map.len() >= THROTTLE_MAX_ADDRESSES
                && let Some(evict) = map.keys().next().copied()
            {
                map.remove(&evict);
            }
        }
        let entry = map.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 == self.limit
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn channels(State(hub): State<Arc<Hub>>) -> Json<serde_json::Value> {
    // Clustered engines count every node's subscribers; otherwise this node's.
    let counts = hub.channel_counts().await;
    let list: Vec<_> = counts
        .into_iter()
        .map(|(channel, n)| json!({ "channel": channel, "subscribers": n }))
        .collect();
    Json(json!({ "channels": list }))
}

async fn info(State(hub): State<Arc<Hub>>) -> Json<serde_json::Value> {
    // Clustered engines list every live node; otherwise (or when the cluster view is
    // unreachable) this node alone.
    let nodes = hub.nodes().await;
    let channels = hub.channel_counts().await.len();
    let cluster_connections: usize = nodes.iter().map(|n| n.connections).sum();
    let mut info = json!({
        "node": hub.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "engine": format!("{:?}", hub.config.engine.kind).to_lowercase(),
        "connections": hub.connection_count(),
        "cluster_connections": cluster_connections,
        "subscriptions": hub.metrics.subscriptions.get(),
        "channels": channels,
        "uptime_secs": hub.started.elapsed().as_secs(),
        "nodes": nodes,
    });
    for e in hub.extensions() {
        info[e.name()] = e.info();
    }
    Json(info)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
}

async fn disconnect(
    State(hub): State<Arc<Hub>>,
    raw: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b: DisconnectBody = body(&raw)?;
    // An empty user is every anonymous and not-yet-connected session, never a user.
    if b.user.is_empty() {
        return Err(ErrorBody::new(ErrorCode::BadRequest, "`user` must not be empty").into());
    }
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
    let h = hub.history(ns, &q).await?;
    Ok(Json(HistoryReply {
        channel: &p.channel,
        epoch: &h.epoch,
        offset: h.offset,
        earliest: h.earliest,
        publications: RawPublications(&h.publications),
        reason: h.reason,
    })
    .into_response())
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
    let st = hub.state(ns, &p.channel).await?;
    Ok(Json(StateResult {
        channel: p.channel,
        epoch: st.epoch,
        offset: st.offset,
        records: st.records,
    })
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceParams {
    channel: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
}

/// A page of a channel's members (protocol §15).
async fn presence(
    State(hub): State<Arc<Hub>>,
    params: Result<Query<PresenceParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(p) = params.map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.body_text()))?;
    presence_namespace(&hub, &p.channel)?;
    let state = hub.presence_members(&p.channel).await?;
    let (page, next) = crate::presence::presence_page(&state.records, p.limit, p.after.as_deref());
    let mut body = json!({
        "channel": p.channel, "epoch": state.epoch, "offset": state.offset,
        "members": page.iter().map(crate::presence::member_json).collect::<Vec<_>>(),
    });
    if let Some(next) = next {
        body["next"] = next.into();
    }
    Ok(Json(body))
}

/// Member and user counts of a channel.
async fn presence_stats(
    State(hub): State<Arc<Hub>>,
    params: Result<Query<StateParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(p) = params.map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e.body_text()))?;
    presence_namespace(&hub, &p.channel)?;
    let state = hub.presence_members(&p.channel).await?;
    Ok(Json(crate::presence::stats_json(&p.channel, &state)))
}

fn presence_namespace(hub: &Hub, channel: &str) -> Result<(), ErrorBody> {
    if hub.namespace(channel)?.presence {
        return Ok(());
    }
    Err(ErrorBody::new(ErrorCode::BadRequest, "this namespace has no presence (presence = false)")
        .with_channel(channel))
}

/// The loaded specs: each entity with its namespace and JSON Schema, each view and
/// subscription with its entity and filter.
async fn specs(State(hub): State<Arc<Hub>>) -> Json<serde_json::Value> {
    let Some(catalog) = hub.config.catalog.as_deref() else {
        return Json(json!({ "entities": {}, "views": {} }));
    };
    let entities: serde_json::Map<String, serde_json::Value> = catalog
        .entities
        .values()
        .map(|e| {
            let body = json!({
                "namespace": e.namespace(),
                "schema": herald_spec::schema::json_schema(e),
            });
            (e.name.clone(), body)
        })
        .collect();
    let views: serde_json::Map<String, serde_json::Value> = catalog
        .views
        .values()
        .map(|v| {
            let body = json!({
                "entity": v.entity.name,
                "namespace": v.entity.namespace(),
                "filter": v.filter.as_ref().map(|f| f.to_string()),
                "by_id": v.by_id,
            });
            (v.name.clone(), body)
        })
        .collect();
    Json(json!({ "entities": entities, "views": views }))
}

/// One entity's JSON Schema (draft 2020-12).
async fn schema(
    State(hub): State<Arc<Hub>>,
    axum::extract::Path(entity): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let entity =
        hub.config.catalog.as_deref().and_then(|c| c.entities.get(&entity)).ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::UnknownNamespace,
                format!("no entity {entity:?} in the loaded specs"),
            )
        })?;
    Ok(Json(herald_spec::schema::json_schema(entity)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    #[serde(default)]
    filters: std::collections::BTreeMap<String, String>,
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
    let exp = expiry_after(b.ttl_secs.unwrap_or(3600)).map_err(|_| {
        let message = format!("`ttl_secs` must be 1 to {MAX_TOKEN_TTL_SECS}");
        ErrorBody::new(ErrorCode::BadRequest, message)
    })?;
    let claims = Claims {
        sub: b.sub,
        exp: Some(exp),
        nbf: None,
        channels: b.channels,
        publish: b.publish,
        roles: b.roles,
        // The hub must accept what it mints: the configured audience and issuer go in.
        aud: hub.config.auth.audience.clone(),
        iss: hub.config.auth.issuer.clone(),
        filters: b.filters,
    };
    let token = mint_hs256(secret, &claims)
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
    Ok(Json(json!({ "token": token, "expires_at": exp })))
}

async fn ready(State(hub): State<Arc<Hub>>) -> Response {
    let ready = hub.ready().await;
    let mut body = json!({ "status": if ready { "ready" } else { "engine unavailable" } });
    // Extensions (bridges) are reported, not gated on: a bus outage must not take the node's
    // WebSocket clients out of the load balancer.
    for e in hub.extensions() {
        body[e.name()] = e.info();
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        hub.render_metrics(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lock_an_address_out_for_the_rest_of_the_window() {
        let t = FailureThrottle::new(3, Duration::from_secs(60));
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert!(!t.failed(a, t0));
        assert!(!t.failed(a, t0 + Duration::from_secs(1)));
        assert_eq!(t.locked(a, t0 + Duration::from_secs(1)), None, "below the limit");
        assert!(t.failed(a, t0 + Duration::from_secs(2)), "the third failure locks");
        assert_eq!(t.locked(a, t0 + Duration::from_secs(20)), Some(Duration::from_secs(40)));
        assert_eq!(t.locked(b, t0 + Duration::from_secs(20)), None, "another address is free");
        // The window ends: unlocked, and counting starts again.
        assert_eq!(t.locked(a, t0 + Duration::from_secs(60)), None);
        assert!(!t.failed(a, t0 + Duration::from_secs(61)));
        assert_eq!(t.locked(a, t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn ipv6_hosts_count_by_prefix_and_zero_is_unlimited() {
        let t = FailureThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        t.failed("2001:db8::1".parse().unwrap(), now);
        t.failed("2001:db8::2".parse().unwrap(), now);
        assert!(t.locked("2001:db8::ffff".parse().unwrap(), now).is_some(), "same /64");
        assert!(t.locked("2001:db8:0:1::1".parse().unwrap(), now).is_none(), "other /64");
        let open = FailureThrottle::new(0, Duration::from_secs(60));
        let ip = "10.0.0.1".parse().unwrap();
        for _ in 0..100 {
            assert!(!open.failed(ip, now));
        }
        assert_eq!(open.locked(ip, now), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let t = FailureThrottle::new(5, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..(THROTTLE_MAX_ADDRESSES as u32 + 10) {
            t.failed(IpAddr::V4(Ipv4Addr::from(i)), now);
        }
        assert!(t.by_addr.lock().len() <= THROTTLE_MAX_ADDRESSES);
    }
}
