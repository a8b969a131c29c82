//! Herald hub as a library: build a [`Hub`] from a [`Config`] ([`hub_from_config`],
//! [`memory_hub`]), mount [`router`] into an axum application (seed 004 embeds it), or run it
//! alone with [`serve`]. Cargo features: `redis` (the Redis engine, off by default), `clap`
//! (`clap::ValueEnum` on the configuration enums).
//!
//! # Layout
//!
//! Modules follow the data flow of a publication:
//!
//! - [`config`]: the typed configuration, validated before any port is bound.
//! - [`auth`]: tokens → [`auth::Principal`]; channel patterns.
//! - [`hook`]: the optional subscribe-authorization hook.
//! - [`api`]: the HTTP API (`/api/*`, `/health`, `/ready`, `/metrics`).
//! - [`hub`]: one node's shared state: namespaces, authorization, local subscribers, sessions.
//! - [`engine`]: offsets, history, keyed state and cross-node fan-out ([`engine::memory`]).
//! - [`error`]: why a hub could not be built.
//! - [`outbox`]: a connection's bounded outbound queue.
//! - [`session`]: one WebSocket connection.
//! - [`sse`]: the Server-Sent Events fallback, a session behind an adapter.
//! - [`metrics`]: Prometheus metrics.

pub mod api;
pub mod auth;
pub mod config;
pub mod engine;
pub mod fanout;
pub mod error;
pub mod frame;
pub mod hook;
pub mod hub;
pub mod keyed;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod rules;
pub mod session;
pub mod sse;

pub use config::Config;
pub use error::HubError;
pub use hub::Hub;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_protocol::ErrorCode;
use herald_protocol::reply::ErrorBody;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Builds a hub on the memory engine, whatever engine the configuration names.
pub fn memory_hub(config: Config) -> Result<Arc<Hub>, HubError> {
    let engine = engine::memory::MemoryEngine::with_budget(config.engine.memory_budget_bytes);
    Hub::new(config, Arc::new(engine))
}

/// Builds a hub on the engine the configuration names, as `herald serve` does. The Redis engine
/// (feature `redis`; without it `kind = "redis"` is refused) is given 2 s to connect; past that
/// the hub serves anyway and the engine reconnects by itself, publishes answering 503 meanwhile.
pub async fn hub_from_config(config: Config) -> Result<Arc<Hub>, HubError> {
    config.validate()?;
    let engine: Arc<dyn engine::Engine> = match config.engine.kind {
        config::EngineKind::Memory => {
            let budget = config.engine.memory_budget_bytes;
            Arc::new(engine::memory::MemoryEngine::with_budget(budget))
        }
        #[cfg(feature = "redis")]
        config::EngineKind::Redis => {
            let redis = engine::redis::RedisEngine::new(&config.engine)?;
            if !redis.wait_connected(std::time::Duration::from_secs(2)).await {
                tracing::warn!(
                    "redis is not reachable yet; serving anyway and reconnecting (publishes \
                     answer 503 meanwhile)"
                );
            }
            Arc::new(redis)
        }
        #[cfg(not(feature = "redis"))]
        config::EngineKind::Redis => {
            return Err(config::ConfigError::Invalid(config::REDIS_NOT_BUILT.into()).into());
        }
    };
    Hub::new(config, engine)
}

/// Every route of the hub: `/ws`, the API, and the embedded dashboard and demo pages.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/sse/{channel}", get(sse::stream))
        .merge(api::router(hub.clone()))
        .route("/", get(|| asset("index.html")))
        .route("/demo", get(|| asset("demo.html")))
        .route(
            "/static/{*path}",
            get(|axum::extract::Path(path): axum::extract::Path<String>| asset_owned(path)),
        )
        .with_state(hub)
}

/// Serves on a bound listener until `shutdown` resolves, then closes every connection with the
/// `shutdown` code and drains within the configured deadline. Applications that mount
/// [`router`] themselves should call [`Hub::attach_node`] once (and [`Hub::detach_node`] at
/// shutdown) so a Redis cluster lists their node, and [`Hub::maintain`] every minute.
pub async fn serve(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(hub.clone());
    // A clustered engine registers this node (heartbeat) while it serves.
    hub.attach_node();
    let housekeeping = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                every.tick().await;
                hub.maintain().await;
            }
        })
    };
    let t = &hub.config.timeouts;
    let limits = listener::HttpLimits {
        header_read_timeout: t.http_header_read,
        request_timeout: t.http_request,
        max_connections: hub.config.limits.max_http_connections,
        max_connections_per_ip: hub.config.limits.max_http_connections_per_ip,
    };
    let drained = hub.clone();
    let drain = async move {
        tracing::info!("shutting down: closing connections");
        drained.shutdown().await;
    };
    listener::serve_http(
        listener,
        app,
        limits,
        hub.http_connections.clone(),
        shutdown,
        drain,
        t.shutdown_deadline,
    )
    .await?;
    housekeeping.abort();
    hub.detach_node().await;
    Ok(())
}

async fn ws_upgrade(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
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

/// The dashboard, demo and their assets, embedded at compile time so one binary is the product.
#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Assets;

async fn asset(path: &'static str) -> Response {
    asset_owned(path.to_string()).await
}

async fn asset_owned(path: String) -> Response {
    match Assets::get(&path) {
        Some(file) => {
            ([(header::CONTENT_TYPE, file.metadata.mimetype().to_string())], file.data.into_owned())
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
