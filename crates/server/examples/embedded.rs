//! Herald embedded in an existing axum application (seed 004: a decision-support dashboard).
//!
//! The application keeps its own routes, mounts the hub's WebSocket, SSE, API and pages under
//! `/live` (the dashboard at `/live`, the demo at `/live/demo`), and bridges its in-process
//! event bus to session rooms by publishing straight into the hub: `session:{id}`. Building the
//! routes starts the hub's housekeeping; nothing else is needed.
//!
//! Run it with `cargo run -p herald-server --example embedded [ADDR]` (ADDR defaults to
//! `127.0.0.1:7710`; port 0 picks a free one), then:
//!
//! ```sh
//! herald sub --url http://127.0.0.1:7710/live --token "$(herald token --secret example-secret --sub ana --channels 'session:*')" session:42
//! curl -X POST http://127.0.0.1:7710/api/sessions/42/decisions -d '{"choice":"ship"}'
//! ```

use axum::extract::{Path, State};
use axum::routing::{get, post};
use herald_server::{Config, Hub, Routes, memory_hub};
use std::sync::Arc;

/// The application's own handler: records a decision and tells the session's room.
async fn decide(State(hub): State<Arc<Hub>>, Path(id): Path<String>, body: String) -> String {
    let decision: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match hub.publish_value(format!("session:{id}"), "decision.recorded", &decision).await {
        Ok(r) => format!("recorded at offset {}\n", r.offset),
        Err(e) => format!("not recorded: {e}\n"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7710".into());
    let mut config = Config::development();
    config.auth.token_secret = Some("example-secret".into());
    let hub = memory_hub(config)?;
    let live = Routes::new(hub.clone()).ws().sse().api().ui().into_router();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/sessions/{id}/decisions", post(decide))
        .with_state(hub)
        .nest("/live", live);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    println!("app on http://{addr}, Herald at http://{addr}/live (WebSocket ws://{addr}/live/ws)");
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .await?;
    Ok(())
}
