//! What the bridge tests share: an in-process hub with a `session` namespace served on a free
//! port, a raw WebSocket subscriber and what it receives, a bridge configuration with the tests'
//! one rule, a runner in a task, a source that dies before acknowledging, and (in `servers`) the
//! bus processes. Waits are for events with deadlines, never fixed sleeps.
// Each test crate uses a part of it.
#![allow(dead_code)]

pub mod servers;

use futures_util::{SinkExt, StreamExt};
use herald_bridge::config::BridgeConfig;
use herald_bridge::run::Runner;
use herald_bridge::stats::BridgeStats;
use herald_bridge::{Event, EventSource, SourceError};
use herald_protocol::ServerMessage;
use herald_server::{Config, Hub, memory_hub};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// A memory hub with a `session` namespace anyone may subscribe to, deep enough for every test.
pub fn hub() -> Arc<Hub> {
    let config = Config::from_toml(
        "[namespaces.session]\nsubscribe = \"anyone\"\nanonymous = true\nhistory_size = 10000\nmax_recover = 10000\n",
    )
    .unwrap();
    memory_hub(config).unwrap()
}

/// A `source` bridge named `app` with these source options and the tests' one rule, not
/// checked against its source kind (the in-memory source has none).
pub fn parse_bridge(hub: &Hub, source: &str, options: &str) -> BridgeConfig {
    let text = format!(
        r#"
[[bridge]]
name = "app"
source = "{source}"
{options}
[[bridge.rule]]
match = {{ "data.type" = "DecisionMade" }}
channels = ["session:{{data.session_id}}"]
type = "{{data.type}}"
select = ["session_id", "n"]
"#
    );
    #[derive(serde::Deserialize)]
    struct Doc {
        bridge: Vec<toml::Table>,
    }
    let doc: Doc = toml::from_str(&text).unwrap();
    BridgeConfig::parse_all(&doc.bridge, |ns| hub.config.namespaces.contains_key(ns))
        .unwrap()
        .remove(0)
}

/// [`parse_bridge`], with its source options checked as the binary checks them.
pub fn bridge(hub: &Hub, source: &str, options: &str) -> BridgeConfig {
    let config = parse_bridge(hub, source, options);
    herald_bridge::sources::check(&config).unwrap();
    config
}

/// Serves `hub` on a free port of 127.0.0.1 in a task.
pub async fn serve(hub: Arc<Hub>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(herald_server::serve(hub, listener, None, std::future::pending()));
    addr
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A fresh [`hub`], served, with a WebSocket subscribed to `channel` on it.
pub async fn hub_with_subscriber(channel: &str) -> (Arc<Hub>, Socket) {
    let hub = hub();
    let addr = serve(hub.clone()).await;
    let ws = subscribe(addr, channel).await;
    (hub, ws)
}

/// A WebSocket connected and subscribed to `channel` (both replies read).
pub async fn subscribe(addr: SocketAddr, channel: &str) -> Socket {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
    let frame = format!(
        "{{\"id\":1,\"cmd\":\"connect\"}}\n{{\"id\":2,\"cmd\":\"subscribe\",\"channel\":\"{channel}\"}}"
    );
    ws.send(Message::text(frame)).await.unwrap();
    let mut replies = 0;
    while replies < 2 {
        let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("socket ended") };
        replies += herald_protocol::split_frame(t.as_str()).count();
    }
    ws
}

/// The next `n` publications on the socket: (offset, data.n), within `within`.
pub async fn receive_within(ws: &mut Socket, n: usize, within: Duration) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    while got.len() < n {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} publications arrived", got.len()));
        let Some(Ok(Message::Text(t))) = msg else { panic!("socket ended") };
        for line in herald_protocol::split_frame(t.as_str()) {
            if let Ok(ServerMessage::Publication(p)) = ServerMessage::parse(line) {
                let data: serde_json::Value = serde_json::from_str(p.data.get()).unwrap();
                got.push((p.offset, data["n"].as_u64().unwrap()));
            }
        }
    }
    got
}

/// The next `n` publications on the socket: (offset, data.n), within a minute.
pub async fn receive(ws: &mut Socket, n: usize) -> Vec<(u64, u64)> {
    receive_within(ws, n, Duration::from_secs(60)).await
}

/// Asserts `got` (offset, data.n) is events 1..=n at contiguous offsets 1..=n, each once, in
/// the source's `order`.
pub fn assert_each_once_in_order(got: &[(u64, u64)], n: u64, order: &str) {
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    let ns: Vec<u64> = got.iter().map(|(_, n)| *n).collect();
    assert_eq!(offsets, (1..=n).collect::<Vec<_>>(), "contiguous offsets");
    assert_eq!(ns, (1..=n).collect::<Vec<_>>(), "{order} order, each once");
}

/// Polls `done` every 10 ms until it holds, failing after `within`.
pub async fn until(within: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a runner over `source` in a task until `stop` is sent (or the task is aborted).
pub fn spawn_runner(
    hub: &Arc<Hub>,
    config: &BridgeConfig,
    stats: &Arc<BridgeStats>,
    mut source: impl EventSource + 'static,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let runner = Runner::new(hub.clone(), config.rules.clone(), config.lease_ttl, stats.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        runner
            .run(&mut source, async {
                let _ = stopped.await;
            })
            .await;
    });
    (stop, task)
}

/// Passes everything through, but never finishes acknowledging event `crash_at`: it tells the
/// test, which then kills the runner (a node dying between "published" and "acknowledged").
pub struct DiesBeforeAck<S> {
    /// The real source every call goes to.
    pub inner: S,
    /// The id of the event whose acknowledgement never finishes.
    pub crash_at: String,
    /// Told once that event's acknowledgement began.
    pub crashed: Option<tokio::sync::oneshot::Sender<()>>,
}

#[async_trait::async_trait]
impl<S: EventSource> EventSource for DiesBeforeAck<S> {
    async fn next(&mut self) -> Result<Event, SourceError> {
        self.inner.next().await
    }
    async fn ack(&mut self, event: &Event) -> Result<(), SourceError> {
        if event.id == self.crash_at {
            if let Some(tell) = self.crashed.take() {
                let _ = tell.send(());
            }
            std::future::pending::<()>().await;
        }
        self.inner.ack(event).await
    }
    async fn dead_letter(&mut self, event: &Event, reason: &str) -> Result<(), SourceError> {
        self.inner.dead_letter(event, reason).await
    }
}
