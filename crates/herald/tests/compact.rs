//! Protocol version 2 (docs/protocol.md §17) against the real binary: a v1 and a v2 connection
//! on the same channels receive the same publications (v2 decoded with its subscribe replies'
//! numbers and epochs gives back the v1 objects exactly), the version is negotiated at `connect`,
//! and every subscribe gets its own number.

mod support;

use herald_protocol::command::Command;
use herald_protocol::{Publication, ServerMessage};
use serde_json::{Value, json};
use std::collections::HashMap;
use support::*;

const CONFIG: &str = r#"
[namespaces.room]
client_publish = true
[namespaces.kv]
keyed = true
client_publish = true
"#;

/// Connects asking for `version`; returns the socket and the connect reply.
async fn connect(hub: &Hub, version: Option<u32>) -> (Ws, Value) {
    let mut ws = Ws::open(&hub.ws_url()).await;
    let token = Some(token("alice", &["room:*", "kv:*"]));
    let reply = ws.request(Command::Connect { token, name: None, version }).await.expect("connect");
    (ws, reply)
}

fn subscribe_cmd(channel: &str) -> Command {
    Command::Subscribe {
        channel: channel.into(),
        since: None,
        snapshot: false,
        view: Default::default(),
        presence: Default::default(),
        preview: None,
    }
}

/// A v2 connection's subscriptions: number → (channel, epoch), from the subscribe replies.
#[derive(Default)]
struct Numbers(HashMap<u32, (String, String)>);

impl Numbers {
    async fn subscribe(&mut self, ws: &mut Ws, channel: &str) -> u32 {
        let reply = ws.request(subscribe_cmd(channel)).await.expect("subscribe");
        let n = reply["n"].as_u64().expect("a v2 subscribe reply has n") as u32;
        let epoch = reply["epoch"].as_str().unwrap().to_string();
        self.0.insert(n, (channel.to_string(), epoch));
        n
    }

    /// The next publication of a v2 connection (every live one is compact, or in parts when
    /// larger than the namespace's `chunk_bytes`, protocol §18), decoded.
    async fn next_pub(&self, ws: &mut Ws) -> (u32, Publication) {
        let mut parts = herald_protocol::chunk::Assembler::default();
        loop {
            match ws.next().await {
                Some(ServerMessage::Compact(c)) => {
                    let n = c.n;
                    let (channel, epoch) = self.0.get(&n).expect("a number of this connection");
                    return (n, c.into_publication(channel, epoch));
                }
                Some(ServerMessage::Chunk(c)) => {
                    if let herald_protocol::chunk::Assembled::Complete(p) =
                        parts.push(c).expect("parts in order")
                    {
                        let n = self.0.iter().find(|(_, (ch, _))| *ch == p.channel).unwrap().0;
                        return (*n, *p);
                    }
                }
                other => panic!("expected a compact publication, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn v1_and_v2_connections_receive_the_same_publications() {
    let hub = Hub::start(CONFIG);
    let (mut v1, hello1) = connect(&hub, None).await;
    let (mut v2, hello2) = connect(&hub, Some(2)).await;
    assert_eq!((hello1["version"].as_u64(), hello2["version"].as_u64()), (Some(1), Some(2)));
    let mut numbers = Numbers::default();
    for channel in ["room:1", "kv:1"] {
        let reply = v1.subscribe(channel).await;
        assert!(reply.get("n").is_none(), "no number on v1: {reply}");
        numbers.subscribe(&mut v2, channel).await;
    }
    assert_eq!(numbers.0.len(), 2, "each subscription has its own number");

    // Every shape a publication takes: plain, typed, with meta, keyed (upsert, merge, delete),
    // large, unicode, and one published by a client (meta user and source).
    let big = "x".repeat(20_000);
    let bodies = vec![
        json!({"channel": "room:1", "data": {"text": "hello"}}),
        json!({"channel": "room:1", "data": 42, "type": "count"}),
        json!({"channel": "room:1", "data": null, "correlation_id": "run-7", "type": "run.started"}),
        json!({"channel": "room:1", "data": {"big": big}}),
        json!({"channel": "room:1", "data": ["é", "\u{1F600}", "\"quoted\"", "a\nb"]}),
        json!({"channel": "kv:1", "key": "t1", "op": "upsert", "data": {"title": "a", "status": "todo"}}),
        json!({"channel": "kv:1", "key": "t1", "op": "merge", "data": {"status": "done"}, "type": "task.moved"}),
        json!({"channel": "kv:1", "key": "t1", "op": "delete", "data": null}),
    ];
    for body in &bodies {
        let (status, reply) = hub.publish_with(body.clone()).await;
        assert_eq!(status, 200, "{reply}");
    }
    let mut from_client = json!({"channel": "room:1", "data": {"by": "a client"}, "type": "chat"});
    from_client["cmd"] = "publish".into();
    from_client["id"] = 99.into();
    v2.send_raw(&from_client.to_string()).await;
    v2.reply(99).await.expect("client publish");

    let total = bodies.len() + 1;
    let mut got1: Vec<Publication> = Vec::new();
    for _ in 0..total {
        got1.push(v1.next_pub().await);
    }
    let mut got2: Vec<Publication> = Vec::new();
    for _ in 0..total {
        got2.push(numbers.next_pub(&mut v2).await.1);
    }
    let by_channel = |ps: &[Publication], ch: &str| -> Vec<String> {
        ps.iter().filter(|p| p.channel == ch).map(|p| serde_json::to_string(p).unwrap()).collect()
    };
    for channel in ["room:1", "kv:1"] {
        assert_eq!(by_channel(&got2, channel), by_channel(&got1, channel), "{channel}");
    }
    assert_eq!(by_channel(&got1, "room:1").len(), 6);
    assert_eq!(by_channel(&got1, "kv:1").len(), 3);
    let client_pub = got2.iter().find(|p| p.kind == "chat").unwrap();
    assert_eq!(client_pub.meta.user.as_deref(), Some("alice"));
}

#[tokio::test]
async fn the_version_is_negotiated_and_every_subscribe_gets_a_new_number() {
    let hub = Hub::start(CONFIG);
    // A newer version than the hub speaks gets the hub's newest; 0 is no version.
    let (_, hello) = connect(&hub, Some(9)).await;
    assert_eq!(hello["version"], 2);
    let mut ws = Ws::open(&hub.ws_url()).await;
    ws.send_raw(r#"{"id":1,"cmd":"connect","version":0}"#).await;
    let err = ws.reply(1).await.expect_err("version 0");
    assert_eq!(code(&err), 107, "{err}");
    let mut ws = Ws::open(&hub.ws_url()).await;
    ws.send_raw(r#"{"id":1,"cmd":"connect","version":"2"}"#).await;
    assert_eq!(code(&ws.reply(1).await.expect_err("a string version")), 107);

    let (mut v2, _) = connect(&hub, Some(2)).await;
    let mut numbers = Numbers::default();
    let first = numbers.subscribe(&mut v2, "room:n").await;
    hub.publish("room:n", json!(1)).await;
    let (n, p) = numbers.next_pub(&mut v2).await;
    assert_eq!((n, p.offset), (first, 1));
    v2.request(Command::Unsubscribe { channel: "room:n".into(), sub: None }).await.unwrap();
    let second = numbers.subscribe(&mut v2, "room:n").await;
    assert_ne!(first, second, "a new subscribe, a new number");
    hub.publish("room:n", json!(2)).await;
    let (n, p) = numbers.next_pub(&mut v2).await;
    assert_eq!((n, p.offset, p.data.get()), (second, 2, "2"));
    assert_eq!(p.id, format!("{}-2", p.epoch));
}
