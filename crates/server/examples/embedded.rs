//! Herald embedded in an existing axum application (seed 004: a decision-support dashboard).
//!
//! The application keeps its own routes, mounts the hub under `/live`, and bridges its
//! in-process event bus to session rooms by publishing straight into the hub: `session:{id}`.
//!
//! Run it with `cargo run -p herald-server --example embedded`, then:
//!
//! ```sh
//! herald sub --url ws://127.0.0.1:7710/live/ws --token "$(herald token --secret example-secret --sub ana --channels 'session:*')" session:42
//! curl -X POST http://127.0.0.1:7710/api/sessions/42/decisions -d '{"choice":"ship"}'
//! ```

use axum::extract::{Path, State};
use axum::routing::{get, post};
use herald_server::engine::PublishInput;
use herald_server::{Config, Hub, memory_hub};
use std::sync::Arc;

/// The application's own handler: records a decision and tells the session's room.
async fn decide(State(hub): State<Arc<Hub>>, Path(id): Path<String>, body: String) -> String {
    let data = serde_json::value::RawValue::from_string(body).unwrap_or_else(|_| {
        serde_json::value::RawValue::from_string("null".into()).expect("null is JSON")
    });
    let input = PublishInput {
        channel: format!("session:{id}"),
        kind: "decision.recorded".into(),
        data,
        key: None,
        op: None,
        meta: herald_protocol::Meta { source: Some("decisions".into()), ..Default::default() },
    };
    match hub.publish(input).await {
        Ok(r) => format!("recorded at offset {}\n", r.offset),
        Err(e) => format!("not recorded: {e}\n"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = Config::development();
    config.auth.token_secret = Some("example-secret".into());
    let hub = memory_hub(config)?;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/sessions/{id}/decisions", post(decide))
        .with_state(hub.clone())
        .nest("/live", herald_server::router(hub));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:7710").await?;
    println!("app on http://127.0.0.1:7710, Herald at ws://127.0.0.1:7710/live/ws");
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .await?;
    Ok(())
}
