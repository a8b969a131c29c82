//! The bridge in process (seed 004's in-memory event bus): events sent by the application reach
//! a real WebSocket subscriber exactly once, in order; bad events go to the dead letters with
//! their reason and do not block the ones after them; an event redelivered after a crash
//! between "published" and "acknowledged" publishes nothing new.

use futures_util::{SinkExt, StreamExt};
use herald_bridge::config::BridgeConfig;
use herald_bridge::memory::memory_source;
use herald_bridge::run::Runner;
use herald_bridge::stats::BridgeStats;
use herald_protocol::ServerMessage;
use herald_server::{Config, Hub, memory_hub};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const RULES: &str = r#"
[[bridge]]
name = "app"
source = "redis_streams"
[[bridge.rule]]
match = { "data.type" = "DecisionMade" }
channels = ["session:{data.session_id}"]
type = "{data.type}"
select = ["session_id", "n"]
"#;

fn hub() -> Arc<Hub> {
    let config = Config::from_toml(
        "[namespaces.session]\nsubscribe = \"anyone\"\nanonymous = true\nhistory_size = 10000\nmax_recover = 10000\n",
    )
    .unwrap();
    memory_hub(config).unwrap()
}

fn bridge(hub: &Hub) -> BridgeConfig {
    #[derive(serde::Deserialize)]
    struct Doc {
        bridge: Vec<toml::Table>,
    }
    let doc: Doc = toml::from_str(RULES).unwrap();
    BridgeConfig::parse_all(&doc.bridge, |ns| hub.config.namespaces.contains_key(ns))
        .unwrap()
        .remove(0)
}

async fn serve(hub: Arc<Hub>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(herald_server::serve(hub, listener, None, std::future::pending()));
    addr
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe(addr: SocketAddr, channel: &str) -> Socket {
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

/// The next `n` publications on the socket: (offset, data.n).
async fn receive(ws: &mut Socket, n: usize) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_subscribers_exactly_once_in_order_and_bad_ones_are_dead_lettered() {
    let hub = hub();
    let addr = serve(hub.clone()).await;
    let mut ws = subscribe(addr, "session:s1").await;
    let config = bridge(&hub);
    let stats = Arc::new(BridgeStats::new());
    let (send, mut source, log) = memory_source();
    const N: u64 = 2000;
    for n in 1..=N {
        assert!(send.send(
            "events",
            json!({"type": "DecisionMade", "session_id": "s1", "n": n, "drop": "x"})
        ));
        if n % 500 == 0 {
            // Bad events between good ones: no rule matches, a channel that is invalid.
            send.send("events", json!({"type": "Other", "n": n}));
            send.send(
                "events",
                json!({"type": "DecisionMade", "session_id": "bad channel", "n": n}),
            );
        }
    }
    drop(send);
    let runner = Runner::new(hub.clone(), config.rules.clone(), config.lease_ttl, stats.clone());
    // The source closes once every sent event was read: the runner returns.
    tokio::time::timeout(Duration::from_secs(30), runner.run(&mut source, std::future::pending()))
        .await
        .expect("the runner drains the source");
    let got = receive(&mut ws, N as usize).await;
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    let ns: Vec<u64> = got.iter().map(|(_, n)| *n).collect();
    assert_eq!(offsets, (1..=N).collect::<Vec<_>>(), "contiguous offsets");
    assert_eq!(ns, (1..=N).collect::<Vec<_>>(), "source order, each once");

    let log = log.lock();
    assert_eq!(log.acked.len() as u64, N + 8, "every event acknowledged, dead ones too");
    assert_eq!(log.dead.len(), 8);
    assert!(log.dead[0].1.contains("no rule matches"), "{:?}", log.dead[0]);
    assert!(
        log.dead[1].1.contains("invalid channel") || log.dead[1].1.contains("refused"),
        "{:?}",
        log.dead[1]
    );
    assert_eq!(stats.published.load(Ordering::Relaxed), N);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_publishes_nothing_new() {
    let hub = hub();
    let addr = serve(hub.clone()).await;
    let mut ws = subscribe(addr, "session:s2").await;
    let config = bridge(&hub);
    let stats = Arc::new(BridgeStats::new());
    let runner = Runner::new(hub.clone(), config.rules.clone(), config.lease_ttl, stats.clone());
    // The same three events delivered twice, as a bus does after a crash between publish and
    // ack: the ids repeat, so the second round is answered as duplicates.
    let (send, mut source, _log) = memory_source();
    for n in 1..=3 {
        send.send("events", json!({"type": "DecisionMade", "session_id": "s2", "n": n}));
    }
    drop(send);
    runner.run(&mut source, std::future::pending()).await;
    let (send, mut again, _log) = memory_source();
    for n in 1..=3 {
        send.send("events", json!({"type": "DecisionMade", "session_id": "s2", "n": n}));
    }
    send.send("events", json!({"type": "DecisionMade", "session_id": "s2", "n": 4}));
    drop(send);
    runner.run(&mut again, std::future::pending()).await;
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 3);
    assert_eq!(stats.published.load(Ordering::Relaxed), 4);
    let got = receive(&mut ws, 4).await;
    assert_eq!(got, vec![(1, 1), (2, 2), (3, 3), (4, 4)]);
    // Nothing more arrives.
    let more = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(more.is_err(), "no fifth publication: {more:?}");
}
