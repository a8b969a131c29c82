//! Conformance suite: docs/protocol.md checked against the real binary, on the memory engine
//! and on Redis. Every check names the section it checks; it is written from the document, with a
//! client of its own that sees raw JSON (conformance/client.rs), not from the server code.
//!
//! Each test function starts one hub and runs a group of checks concurrently against it
//! (unique users and channels keep them apart); its output lists each check as PASS or FAIL
//! (`cargo test -p herald --test conformance -- --nocapture`). The `new_rules_*` tests check
//! what issue 11 adds to the protocol, ahead of the document; `engine_loss_*` take a hub each
//! to lose its engine's data.

mod support;

#[path = "conformance/client.rs"]
mod client;
#[path = "conformance/clock.rs"]
mod clock;
#[path = "conformance/commands.rs"]
mod commands;
#[path = "conformance/engine_loss.rs"]
mod engine_loss;
#[path = "conformance/errors.rs"]
mod errors;
#[path = "conformance/harness.rs"]
mod harness;
#[path = "conformance/http.rs"]
mod http;
#[path = "conformance/limits.rs"]
mod limits;
#[path = "conformance/new_rules.rs"]
mod new_rules;
#[path = "conformance/positions.rs"]
mod positions;
#[path = "conformance/publication.rs"]
mod publication;
#[path = "conformance/sse.rs"]
mod sse;
#[path = "conformance/tokens.rs"]
mod tokens;
#[path = "conformance/transport.rs"]
mod transport;

use harness::{Engine, Suite};

/// The configuration most checks share (the harness adds `[auth]` with audience and issuer).
const CONFIG: &str = r#"
allowed_origins = ["https://app.example"]
[limits]
max_channels_per_connection = 8
max_history_page = 5
[namespaces.default]
[namespaces.session]
[namespaces.room]
client_publish = true
[namespaces.open]
subscribe = "anyone"
anonymous = true
client_publish = true
[namespaces.members]
subscribe = "authenticated"
[namespaces.small]
client_publish = true
max_message_bytes = 64
[namespaces.feed]
history_size = 100
max_recover = 3
[namespaces.tiny]
history_size = 2
[namespaces.board]
keyed = true
client_publish = true
max_state_records = 5
"#;

async fn protocol(engine: Engine) {
    let mut suite = Suite::new(engine, CONFIG, 5, "protocol");
    let mut all = transport::all();
    for group in [
        commands::all(),
        publication::all(),
        positions::all(),
        errors::all(),
        tokens::all(),
        http::all(),
        sse::all(),
    ] {
        all.extend(group);
    }
    suite.run(all).await;
    suite.finish();
}

async fn clock(engine: Engine) {
    let mut suite = Suite::new(engine, clock::CONFIG, 0, "clock");
    suite.run(clock::all()).await;
    suite.finish();
}

async fn limits(engine: Engine) {
    let mut suite = Suite::new(engine, limits::CONFIG, 5, "limits");
    suite.run(limits::all()).await;
    // Connected before the per-IP limit is spent, closed by the SIGTERM at the end.
    let (mut last, _) = suite.ctx().client(&[]).await;
    last.still_open().await;
    suite.run(limits::per_ip()).await;
    let ctx = suite.take_ctx();
    let outcome = limits::sigterm_closes_with_4000(ctx, last).await;
    suite.record("conformance::limits::sigterm_closes_with_4000", outcome);
    suite.finish();
}

async fn new_rules(engine: Engine) {
    let mut suite = Suite::new(engine, CONFIG, 5, "new rules (issue 11)");
    suite.run(new_rules::all()).await;
    suite.run(new_rules::alone()).await;
    suite.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_memory() {
    protocol(Engine::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_redis() {
    protocol(Engine::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_memory() {
    clock(Engine::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_redis() {
    clock(Engine::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_memory() {
    limits(Engine::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_redis() {
    limits(Engine::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rules_memory() {
    new_rules(Engine::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rules_redis() {
    new_rules(Engine::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_loss_memory() {
    engine_loss::memory_restart(CONFIG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_loss_redis() {
    engine_loss::redis_flush(CONFIG).await;
}
