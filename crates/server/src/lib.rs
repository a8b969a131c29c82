//! Herald hub as a library: build a [`Hub`] from a [`Config`] ([`hub_from_config`],
//! [`memory_hub`]), mount its routes into an axum application (seed 004 embeds it), or run it
//! alone with [`serve`]. Cargo features: `redis` (the Redis engine, off by default), `clap`
//! (`clap::ValueEnum` on the configuration enums).
//!
//! # Embedding
//!
//! ```no_run
//! # async fn app() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_server::{Config, Routes, memory_hub};
//! let hub = memory_hub(Config::development())?;
//! // Only what the application needs; `Routes::all(hub)` (= `router(hub)`) mounts everything.
//! let live = Routes::new(hub.clone()).ws().sse().api().ui().into_router();
//! let app = axum::Router::new().nest("/live", live);
//! // From the application's own code, any `Serialize` value:
//! hub.publish_value("session:42", "decision.recorded", &serde_json::json!({"choice": "ship"}))
//!     .await?;
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The pages work under any prefix (the dashboard at `/live`, the demo at `/live/demo`).
//! [`Routes::into_router`] starts the hub's background work
//! ([`Hub::start`]: node registration with a clustered engine, history trimmed by age every
//! minute); it ends with [`Hub::stop`] or when the hub is dropped.
//!
//! # Layout
//!
//! Modules follow the walk of a publication from the HTTP handler to the socket write
//! (api → hub → engine → fanout → outbox → session writer); dependencies point one way,
//! protocol ← config ← frame/keyed ← engine ← rules/fanout ← hub ← ws/session/api/sse ← this
//! root (`tests/module_graph.rs` keeps it so):
//!
//! - [`config`]: the typed configuration, validated before any port is bound.
//! - [`auth`]: tokens → [`auth::Principal`]; channel patterns. [`hook`]: the optional
//!   subscribe-authorization hook.
//! - [`routes`]: which of the routes below an application mounts.
//! - [`api`]: the HTTP API (`/api/*`, `/health`, `/ready`, `/metrics`); [`ws`]: the `/ws`
//!   upgrade; [`sse`]: the Server-Sent Events fallback, a session behind an adapter;
//!   [`listener`]: the HTTP accept loop and its connection bounds; [`tls`]: its certificate,
//!   reloadable in place.
//! - [`hub`]: one node's shared state: namespaces, authorization, sessions; every read and write
//!   of a channel goes through it.
//! - [`rules`]: the recover verdict, history paging and snapshots, decided once for every engine.
//! - [`engine`]: storage and ordering: offsets, history, keyed state and cross-node delivery
//!   ([`engine::memory`]; `engine::redis` with the `redis` feature). [`keyed`]: how a
//!   publication changes a record. [`frame`]: a publication encoded once. [`hash`]: the
//!   hasher of the maps on the publish path.
//! - [`fanout`]: this node's subscribers by channel; the engine delivers into it.
//!   [`views`]: view subscriptions of a channel, the insert/update/delete each write makes for
//!   them, and the index that routes a write to the few views it touches.
//! - [`outbox`]: a connection's bounded outbound queue.
//! - [`session`]: one WebSocket connection (its writer, rate limit, one file per command).
//! - [`stats`]: the live figures the dashboard is pushed (`sys:stats`).
//! - [`metrics`]: Prometheus metrics. [`error`]: why a hub could not be built.

pub mod api;
pub mod auth;
pub mod config;
pub mod engine;
pub mod error;
pub mod fanout;
pub mod frame;
pub mod hash;
pub mod hook;
pub mod hub;
pub mod keyed;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod routes;
pub mod rules;
pub mod session;
pub mod sse;
pub mod stats;
pub mod tls;
pub mod views;
pub mod ws;

pub use config::Config;
pub use error::HubError;
pub use hub::Hub;
pub use routes::Routes;

use axum::Router;
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

/// Every route of the hub: `/ws`, SSE, the API, health, metrics, and the embedded dashboard
/// and demo pages ([`Routes::all`]; it starts the hub's background work, [`Hub::start`]).
pub fn router(hub: Arc<Hub>) -> Router {
    Routes::all(hub).into_router()
}

/// Serves on a bound listener, over TLS when `tls` is given (build it with
/// [`tls::Tls::from_config`] from `config.tls`, and keep it to [`tls::Tls::reload`]), until
/// `shutdown` resolves, then closes every connection with the `shutdown` code and drains within
/// the configured deadline, and stops the hub's background work ([`Hub::stop`]).
pub async fn serve(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tls::Tls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Starts the hub's housekeeping and registers this node with a clustered engine.
    let app = router(hub.clone());
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
        tls,
        limits,
        hub.http_connections.clone(),
        shutdown,
        drain,
        t.shutdown_deadline,
    )
    .await?;
    hub.stop().await;
    Ok(())
}
