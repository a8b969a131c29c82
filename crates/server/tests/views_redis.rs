//! Live views on the Redis engine: two in-process nodes sharing one real `redis-server`, the
//! kanban spec (examples/kanban.herald) loaded. A view on either node sees exactly what each
//! write made on the other node does to it (the record change travels with the publication over
//! pub/sub), and a view resumed on a node after missed writes gets exactly the missed events,
//! replayed from the history kept in Redis.
//! Run: `cargo test -p herald-server --features redis --test views_redis` (needs
//! `redis-server` on PATH).
#![cfg(feature = "redis")]

mod redis_support;

use futures_util::{SinkExt, StreamExt};
use herald_server::config::{Config, EngineKind};
use redis_support::{API_KEY, Api, Redis, SECRET, token};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Longest wait for one message; past it the test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

fn spec_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/kanban.herald").to_string()
}

/// One herald node on the Redis engine (as `herald serve` builds it), serving on a free port.
async fn node(redis: &Redis, id: &str) -> SocketAddr {
    let toml = format!(
        "specs = [{:?}]\n[limits]\ncommands_per_second = 0\n[namespaces.task]\nkeyed = true\n\
         filters = true\n[namespaces.kv]\nkeyed = true\n",
        spec_path()
    );
    let mut config = Config::from_toml(&toml).unwrap();
    config.node_id = id.into();
    config.api_keys = vec![API_KEY.into()];
    config.auth.token_secret = Some(SECRET.into());
    config.engine.kind = EngineKind::Redis;
    config.engine.redis_url = redis.url();
    let hub = herald_server::hub_from_config(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(herald_server::serve(hub, listener, None, std::future::pending()));
    addr
}

/// A keyed write on `task:b1` through `addr`'s HTTP API; its offset.
async fn write(addr: SocketAddr, key: &str, op: &str, data: Value) -> u64 {
    let body = json!({"channel": "task:b1", "key": key, "op": op, "data": data});
    let (status, reply) = Api::default().publish(&format!("http://{addr}"), body).await;
    assert_eq!(status, 200, "{reply}");
    reply["offset"].as_u64().unwrap()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw protocol client: messages split out of frames, pings answered, pushes that arrive
/// while a reply is awaited kept for [`Ws::push`].
struct Ws {
    socket: Socket,
    /// Messages read but not yet taken.
    pending: VecDeque<Value>,
    /// The next request id.
    next_id: u64,
}

impl Ws {
    /// Connects to `addr` with a token for every channel.
    async fn connect(addr: SocketAddr) -> Ws {
        let (socket, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
        let mut ws = Ws { socket, pending: VecDeque::new(), next_id: 1 };
        ws.request(json!({"cmd": "connect", "token": token("u1")})).await.expect("connect");
        ws
    }

    /// The next message (not a ping).
    async fn read(&mut self) -> Value {
        loop {
            if let Some(v) = self.pending.pop_front() {
                if v["push"] == "ping" {
                    let pong = Message::text(json!({"cmd": "pong"}).to_string());
                    self.socket.send(pong).await.unwrap();
                    continue;
                }
                return v;
            }
            let msg = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a message in time")
                .expect("socket open")
                .unwrap();
            if let Message::Text(t) = msg {
                for line in t.as_str().split('\n').filter(|l| !l.is_empty()) {
                    self.pending.push_back(serde_json::from_str(line).unwrap());
                }
            }
        }
    }

    /// Sends `cmd` with a fresh id; its result or its error.
    async fn request(&mut self, mut cmd: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        cmd["id"] = json!(id);
        self.socket.send(Message::text(cmd.to_string())).await.unwrap();
        let mut kept = Vec::new();
        let reply = loop {
            let v = self.read().await;
            if v["id"] == id {
                break v;
            }
            kept.push(v);
        };
        for v in kept.into_iter().rev() {
            self.pending.push_front(v);
        }
        match reply.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(reply["result"].clone()),
        }
    }

    /// Subscribes view `view` of `task:b1` (named `sub`), from `since` when given.
    async fn view(&mut self, view: &str, sub: &str, since: Option<&Value>) -> Value {
        let mut cmd = json!({"cmd": "subscribe", "channel": "task:b1", "view": view, "sub": sub});
        if let Some(since) = since {
            cmd["since"] = since.clone();
        }
        self.request(cmd).await.expect("view subscribe")
    }

    /// The next view event: (sub, operation, key, reason, offset) and its record.
    async fn event(&mut self) -> ((String, String, String, String, u64), Value) {
        let v = self.read().await;
        assert_eq!(v["push"], "view", "expected a view event: {v}");
        let s = |f: &str| v[f].as_str().unwrap_or_default().to_string();
        let head =
            (s("sub"), s("operation"), s("key"), s("reason"), v["pub"]["offset"].as_u64().unwrap());
        (head, v["record"].clone())
    }
}

fn keys(initial: &Value) -> Vec<&str> {
    initial.as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect()
}

fn ev(
    sub: &str,
    op: &str,
    key: &str,
    reason: &str,
    offset: u64,
) -> (String, String, String, String, u64) {
    (sub.into(), op.into(), key.into(), reason.into(), offset)
}

/// Views on both nodes see insert, update (with the merged record), left and deleted for writes
/// accepted by node A, and nothing else; the history entries of the view namespace carry the
/// change, those of other namespaces do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_on_every_node_follow_writes_made_on_another() {
    let redis = Redis::start();
    let (a, b) = (node(&redis, "views-a").await, node(&redis, "views-b").await);
    write(a, "t1", "upsert", json!({"title": "a", "status": "todo", "assignee": "u1"})).await;
    write(a, "t2", "upsert", json!({"title": "b", "status": "done", "assignee": "u2"})).await;
    let mut sockets = Vec::new();
    for addr in [a, b] {
        let mut ws = Ws::connect(addr).await;
        let active = ws.view("ActiveTasks", "active", None).await;
        assert_eq!(
            (keys(&active["initial"]), &active["offset"]),
            (vec!["t1"], &json!(2)),
            "{active}"
        );
        let done = ws.view("DoneTasks", "done", None).await;
        assert_eq!(keys(&done["initial"]), ["t2"], "{done}");
        sockets.push(ws);
    }

    write(a, "t3", "upsert", json!({"title": "c", "status": "doing", "assignee": "u1"})).await;
    write(a, "t3", "merge", json!({"title": "c2"})).await;
    write(a, "t3", "merge", json!({"status": "done"})).await;
    write(a, "t3", "delete", Value::Null).await;
    write(a, "t1", "merge", json!({"title": "a2"})).await;
    for ws in &mut sockets {
        let (head, record) = ws.event().await;
        assert_eq!(head, ev("active", "insert", "t3", "", 3));
        assert_eq!(record, json!({"title": "c", "status": "doing", "assignee": "u1"}));
        let (head, record) = ws.event().await;
        assert_eq!(head, ev("active", "update", "t3", "", 4));
        assert_eq!(record, json!({"title": "c2", "status": "doing", "assignee": "u1"}), "merged");
        assert_eq!(ws.event().await.0, ev("active", "delete", "t3", "left", 5));
        let (head, record) = ws.event().await;
        assert_eq!(head, ev("done", "insert", "t3", "", 5));
        assert_eq!(record, json!({"title": "c2", "status": "done", "assignee": "u1"}));
        assert_eq!(ws.event().await.0, ev("done", "delete", "t3", "deleted", 6));
        // The next event is the next write's: nothing in between.
        let (head, record) = ws.event().await;
        assert_eq!(head, ev("active", "update", "t1", "", 7));
        assert_eq!(record["title"], "a2");
    }

    // What Redis holds: the change before the JSON on the view namespace only (not on a keyed
    // namespace without views).
    let kv = json!({"channel": "kv:x", "key": "k", "op": "upsert", "data": 1});
    let (status, body) = Api::default().publish(&format!("http://{a}"), kv).await;
    assert_eq!(status, 200, "{body}");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut hist = async |channel: &str| -> Vec<String> {
        let key = format!("herald:{{{}:{channel}}}:hist", channel.len());
        redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query_async(&mut conn).await.unwrap()
    };
    let task = hist("task:b1").await;
    assert!(task[5].starts_with("6:") && task[5].contains(r#":R2,"#), "{}", task[5]);
    let plain = hist("kv:x").await;
    assert!(plain[0].splitn(3, ':').nth(2).unwrap().starts_with('{'), "{}", plain[0]);
}

/// A view resumed on node B after writes made on node A while it was away gets `recovered` with
/// exactly the events of the missed writes, replayed from the history in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_resumed_on_another_node_replays_what_it_missed() {
    let redis = Redis::start();
    let (a, b) = (node(&redis, "resume-a").await, node(&redis, "resume-b").await);
    write(a, "t1", "upsert", json!({"title": "a", "status": "todo", "assignee": "u1"})).await;
    let mut ws = Ws::connect(a).await;
    let reply = ws.view("ActiveTasks", "active", None).await;
    assert_eq!(keys(&reply["initial"]), ["t1"]);
    let since = json!({"epoch": reply["epoch"], "offset": reply["offset"]});
    drop(ws);

    write(a, "t2", "upsert", json!({"title": "b", "status": "done", "assignee": "u1"})).await;
    write(a, "t1", "merge", json!({"status": "done"})).await;
    write(a, "t3", "upsert", json!({"title": "c", "status": "doing", "assignee": "u1"})).await;
    write(a, "t3", "merge", json!({"priority": 2})).await;

    let mut ws = Ws::connect(b).await;
    let reply = ws.view("ActiveTasks", "active", Some(&since)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert!(reply.get("initial").is_none(), "{reply}");
    assert_eq!(reply["offset"], 5);
    let events: Vec<(&str, &str, &str, u64)> = reply["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |f: &str| e[f].as_str().unwrap_or_default();
            (s("operation"), s("key"), s("reason"), e["pub"]["offset"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        events,
        [("delete", "t1", "left", 3), ("insert", "t3", "", 4), ("update", "t3", "", 5)]
    );
    let update = &reply["events"][2]["record"];
    assert_eq!(update, &json!({"title": "c", "status": "doing", "assignee": "u1", "priority": 2}));
    // Live events follow on the resumed view.
    write(a, "t3", "merge", json!({"status": "done"})).await;
    assert_eq!(ws.event().await.0, ev("active", "delete", "t3", "left", 6));
}
