//! Guarantee 3 ("subscribed means flowing") for publications that arrive in the same frame, and so
//! in the same read, as their subscribe reply (issue 11 item 0): delivered exactly once, in order,
//! with nothing left behind on a channel that then goes quiet.
//!
//! One test drives the client with a tiny fake hub that writes the reply and the publications in
//! ONE text frame (deterministic); the other races publications against subscribes on the real
//! hub, which batches them the same way when busy. The real-hub test needs `cargo build --bins`.

mod support;

use futures_util::{SinkExt, StreamExt};
use herald_client::herald_protocol::Op;
use herald_client::{
    BackoffPolicy, Client, NotRecovered, Position, Record, SubEvent, SubscribeOptions, Subscription,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use support::hub::{Hub, good_token};
use support::{next_event, publish_cmd};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Upper bound of every wait on the fake hub.
const WAIT: Duration = Duration::from_secs(10);
/// How long a channel must stay silent to count as quiet (a negative check, bounded).
const QUIET: Duration = Duration::from_millis(300);

fn fast_policy() -> BackoffPolicy {
    BackoffPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        breaker_after: None,
        ..Default::default()
    }
}

/// A fake hub speaking just enough of docs/protocol.md, one connection at a time, driven by the
/// test so that it decides exactly which messages share a frame.
struct FakeHub {
    listener: TcpListener,
}

struct FakeConn {
    ws: WebSocketStream<TcpStream>,
    /// Commands read (a client frame may batch several) but not yet consumed.
    queued: VecDeque<Value>,
}

impl FakeHub {
    async fn bind() -> FakeHub {
        FakeHub { listener: TcpListener::bind("127.0.0.1:0").await.unwrap() }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.listener.local_addr().unwrap())
    }

    /// Accepts the next connection and answers its `connect` (no pings, so no liveness timer).
    async fn accept(&self) -> FakeConn {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("the client connects")
            .unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.expect("websocket upgrade");
        let mut conn = FakeConn { ws, queued: VecDeque::new() };
        let connect = conn.command().await;
        assert_eq!(connect["cmd"], "connect");
        let reply = json!({"id": connect["id"], "result": {
            "client": "c1", "user": "tester", "time": "2026-01-01T00:00:00.000Z",
            "ping_interval_ms": 0, "pong_timeout_ms": 0, "clients": 1, "node": "fake", "version": 1,
        }});
        conn.frame(&[reply]).await;
        conn
    }
}

impl FakeConn {
    /// The next command from the client (pongs skipped).
    async fn command(&mut self) -> Value {
        loop {
            if let Some(command) = self.queued.pop_front() {
                if command["cmd"] == "pong" {
                    continue;
                }
                return command;
            }
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a command from the client")
                .expect("connection open")
                .expect("readable frame");
            if let Message::Text(text) = message {
                for line in text.as_str().split('\n').filter(|l| !l.is_empty()) {
                    self.queued.push_back(serde_json::from_str(line).expect("JSON command"));
                }
            }
        }
    }

    /// The next `n` subscribe commands, by channel.
    async fn subscribes(&mut self, n: usize) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        while out.len() < n {
            let command = self.command().await;
            assert_eq!(command["cmd"], "subscribe", "unexpected command {command}");
            out.insert(command["channel"].as_str().unwrap().to_string(), command);
        }
        out
    }

    /// Sends `messages` in ONE text frame, `\n`-separated (protocol §1).
    async fn frame(&mut self, messages: &[Value]) {
        let lines: Vec<String> = messages.iter().map(Value::to_string).collect();
        self.ws.send(Message::text(lines.join("\n"))).await.expect("send frame");
    }
}

fn publication(channel: &str, epoch: &str, offset: u64, key: Option<&str>) -> Value {
    let mut p = json!({
        "channel": channel, "epoch": epoch, "offset": offset, "id": format!("{epoch}-{offset}"),
        "type": "message", "data": {"n": offset}, "time": "2026-01-01T00:00:00.000Z",
    });
    if let Some(key) = key {
        p["key"] = json!(key);
        p["op"] = json!("upsert");
    }
    json!({"push": "pub", "pub": p})
}

fn reply(id: &Value, result: Value) -> Value {
    json!({"id": id, "result": result})
}

fn since(command: &Value) -> Option<Position> {
    command.get("since").map(|s| serde_json::from_value(s.clone()).expect("since is a position"))
}

/// The next event must be the publication at `offset` of `epoch`.
async fn expect_publication(sub: &mut Subscription, epoch: &str, offset: u64) {
    match next_event(sub, WAIT).await {
        SubEvent::Publication(p) => assert_eq!(
            (p.epoch.as_str(), p.offset),
            (epoch, offset),
            "{}: in order, exactly once",
            sub.channel()
        ),
        other => panic!("{}: expected publication {offset}, got {other:?}", sub.channel()),
    }
}

/// Nothing more arrives: no duplicate, nothing held back for a later publication to release.
async fn expect_quiet(sub: &mut Subscription, quiet: Duration) {
    if let Ok(event) = tokio::time::timeout(quiet, sub.next_event()).await {
        panic!("{}: expected a quiet channel, got {event:?}", sub.channel());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_in_the_reply_frame_are_delivered_once_in_order_then_quiet() {
    let fake = FakeHub::bind().await;
    let client =
        Client::builder().url(fake.url()).token("t").backoff(fast_policy()).build().unwrap();
    let mut plain = client.subscribe("c", SubscribeOptions::default());
    let mut keyed = client
        .subscribe("kv:b", SubscribeOptions { since: None, snapshot: true, ..Default::default() });

    // First connection: both replies and their live publications interleaved in one frame,
    // including a duplicate of the reply's own offset (the reply covers it) that must be dropped.
    let mut conn = fake.accept().await;
    let subs = conn.subscribes(2).await;
    assert_eq!(since(&subs["c"]), None);
    assert_eq!(subs["kv:b"]["snapshot"], true);
    let snapshot = json!([{"key": "a", "value": {"n": 3}, "offset": 3}]);
    conn.frame(&[
        reply(&subs["c"]["id"], json!({"channel": "c", "epoch": "E", "offset": 5, "keyed": false})),
        publication("c", "E", 5, None),
        publication("c", "E", 6, None),
        reply(
            &subs["kv:b"]["id"],
            json!({"channel": "kv:b", "epoch": "K", "offset": 3, "keyed": true, "snapshot": snapshot}),
        ),
        publication("kv:b", "K", 4, Some("b")),
        publication("c", "E", 7, None),
    ])
    .await;
    match next_event(&mut plain, WAIT).await {
        SubEvent::Subscribed { position, snapshot: None } => {
            assert_eq!(position, Position { epoch: "E".into(), offset: 5 })
        }
        other => panic!("expected Subscribed, got {other:?}"),
    }
    expect_publication(&mut plain, "E", 6).await;
    expect_publication(&mut plain, "E", 7).await;
    match next_event(&mut keyed, WAIT).await {
        SubEvent::Subscribed { position, snapshot: Some(records) } => {
            assert_eq!(position.offset, 3);
            assert_eq!(records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["a"]);
        }
        other => panic!("expected Subscribed with a snapshot, got {other:?}"),
    }
    expect_publication(&mut keyed, "K", 4).await;
    expect_quiet(&mut plain, QUIET).await;
    expect_quiet(&mut keyed, QUIET).await;

    // The connection drops; the resume replies carry recovered publications, and live ones
    // follow in the same frame. The keyed one is not recovered: a resync with a fresh snapshot,
    // then its live publication.
    drop(conn);
    let mut conn = fake.accept().await;
    let subs = conn.subscribes(2).await;
    assert_eq!(since(&subs["c"]), Some(Position { epoch: "E".into(), offset: 7 }));
    assert_eq!(since(&subs["kv:b"]), Some(Position { epoch: "K".into(), offset: 4 }));
    let recovered = vec![publication("c", "E", 8, None)["pub"].clone()];
    let fresh = json!([{"key": "a", "value": {"n": 3}, "offset": 3}, {"key": "c", "value": 1, "offset": 9}]);
    conn.frame(&[
        reply(
            &subs["c"]["id"],
            json!({"channel": "c", "epoch": "E", "offset": 8, "keyed": false,
                   "recovered": true, "publications": recovered}),
        ),
        reply(
            &subs["kv:b"]["id"],
            json!({"channel": "kv:b", "epoch": "K", "offset": 9, "keyed": true, "recovered": false,
                   "reason": "history_trimmed", "snapshot": fresh}),
        ),
        publication("c", "E", 9, None),
        publication("kv:b", "K", 10, Some("d")),
        publication("c", "E", 10, None),
    ])
    .await;
    for offset in 8..=10 {
        expect_publication(&mut plain, "E", offset).await;
    }
    match next_event(&mut keyed, WAIT).await {
        SubEvent::Resync { reason: NotRecovered::HistoryTrimmed, position, snapshot: Some(s) } => {
            assert_eq!(position.offset, 9);
            assert_eq!(s.len(), 2);
        }
        other => panic!("expected Resync with a snapshot, got {other:?}"),
    }
    expect_publication(&mut keyed, "K", 10).await;
    expect_quiet(&mut plain, QUIET).await;
    expect_quiet(&mut keyed, QUIET).await;
}

/// How a race trial subscribes.
#[derive(Debug, Clone, Copy)]
enum Start {
    Fresh,
    Since,
    Snapshot,
}

/// Subscribes while three publications are in flight over HTTP; the subscription must end exactly
/// at the server's offset, in order, then stay quiet (and, with a snapshot, equal the server's
/// records).
async fn race(hub: &Hub, client: &Client, start: Start, trial: u32) {
    let api = hub.api();
    let channel = match start {
        Start::Snapshot => format!("kv:race{trial}"),
        _ => format!("race-{start:?}-{trial}"),
    };
    let publish = |i: u32| {
        let mut p = publish_cmd(&channel, json!({"i": i}));
        if matches!(start, Start::Snapshot) {
            p.key = Some(format!("k{}", i % 2));
            p.op = Some(Op::Upsert);
        }
        let api = api.clone();
        async move { api.publish(&p).await.expect("publish") }
    };
    let opts = match start {
        Start::Fresh => SubscribeOptions::default(),
        Start::Snapshot => SubscribeOptions { since: None, snapshot: true, ..Default::default() },
        Start::Since => {
            publish(100).await;
            let at = publish(101).await;
            // Resume from one before the end: the reply recovers one, live ones race it.
            let since = Position { epoch: at.epoch, offset: at.offset - 1 };
            SubscribeOptions { since: Some(since), snapshot: false, ..Default::default() }
        }
    };
    let mut sub = client.subscribe(channel.clone(), opts.clone());
    let (a, b, c) = tokio::join!(publish(1), publish(2), publish(3));
    let server_offset = a.offset.max(b.offset).max(c.offset);

    let (position, mut records) = match next_event(&mut sub, WAIT).await {
        SubEvent::Subscribed { position, snapshot } => (position, snapshot.unwrap_or_default()),
        other => panic!("{channel}: expected Subscribed, got {other:?}"),
    };
    let mut last = match &opts.since {
        Some(since) => since.offset,
        None => position.offset,
    };
    while last < server_offset {
        match next_event(&mut sub, WAIT).await {
            SubEvent::Publication(p) => {
                assert_eq!(p.offset, last + 1, "{channel}: in order, exactly once");
                last = p.offset;
                if let Some(key) = p.key.clone() {
                    apply(&mut records, key, p.data.get(), p.offset);
                }
            }
            other => panic!("{channel}: expected publication {}, got {other:?}", last + 1),
        }
    }
    // Shorter in the 90 trials: a late duplicate comes within milliseconds on loopback.
    expect_quiet(&mut sub, QUIET / 3).await;
    if matches!(start, Start::Snapshot) {
        let state = api.state(&channel).await.unwrap();
        assert_eq!(state.offset, server_offset);
        let server: Vec<(String, String, u64)> =
            state.records.iter().map(|r| (r.key.clone(), r.value.get().into(), r.offset)).collect();
        let local: Vec<(String, String, u64)> =
            records.iter().map(|r| (r.key.clone(), r.value.get().into(), r.offset)).collect();
        assert_eq!(local, server, "{channel}: snapshot + publications = the server's records");
    }
}

/// Applies an upsert to records kept sorted by key.
fn apply(records: &mut Vec<Record>, key: String, value: &str, offset: u64) {
    let value = serde_json::value::RawValue::from_string(value.into()).unwrap();
    records.retain(|r| r.key != key);
    records.push(Record { key, value, offset });
    records.sort_by(|a, b| a.key.cmp(&b.key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_racing_a_subscribe_on_the_real_hub_all_arrive() {
    const TRIALS: u32 = 30;
    let hub = Hub::start();
    let client = Client::builder()
        .url(hub.ws_url())
        .token(good_token())
        .backoff(fast_policy())
        .build()
        .unwrap();
    client.wait_connected(WAIT).await.unwrap();
    for start in [Start::Fresh, Start::Since, Start::Snapshot] {
        for trial in 0..TRIALS {
            race(&hub, &client, start, trial).await;
        }
    }
}
