//! Test support for the Redis engine: real `redis-server` processes on free ports, real `herald`
//! processes on the redis engine, and a raw WebSocket subscriber that speaks docs/protocol.md
//! (reconnects through a URL list and resubscribes with `since`) and records what it saw.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// API key of every test node.
pub const API_KEY: &str = "test-key";
/// HS256 secret of every test node.
pub const SECRET: &str = "test-secret";

/// Namespaces the tests use: deep history by default, a keyed one, small bounds for the
/// not-recovered reasons, tight state limits.
pub const CONFIG: &str = r#"
[limits]
commands_per_second = 0

[namespaces.default]
history_size = 20000
max_recover = 20000

[namespaces.kv]
keyed = true
history_size = 5000
max_recover = 5000

[namespaces.short]
history_size = 5

[namespaces.cap]
history_size = 100
max_recover = 3

[namespaces.lim]
keyed = true
max_state_records = 2
"#;

/// Polls `f` until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` process (no persistence: a restart loses everything).
pub type Redis = herald_testkit::RedisProcess;

/// A `herald serve --engine redis` process.
pub struct Node {
    process: herald_testkit::HeraldProcess,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Node {
    /// Starts a node on a free port against `redis_url`.
    pub fn start(redis_url: &str, id: &str) -> Node {
        let process = herald_testkit::HeraldProcess::start(
            &herald_testkit::herald_bin(),
            CONFIG,
            &[
                "--api-key",
                API_KEY,
                "--token-secret",
                SECRET,
                "--engine",
                "redis",
                "--redis-url",
                redis_url,
                "--node-id",
                id,
            ],
        );
        Node { addr: process.addr, process }
    }

    /// `ws://.../ws`.
    pub fn ws_url(&self) -> String {
        self.process.ws_url()
    }

    /// `http://...`.
    pub fn http(&self) -> String {
        self.process.http_url()
    }

    /// SIGKILL: no shutdown, no close frames, no deregistration.
    pub fn kill9(&mut self) {
        self.process.kill();
    }

    /// SIGTERM, and waits until the process is gone (graceful drain and deregistration).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.terminate()
    }
}

/// A token for `sub` allowed every channel.
pub fn token(sub: &str) -> String {
    let claims = herald_server::auth::Claims {
        sub: sub.into(),
        exp: Some(herald_server::auth::unix_now() + 3600),
        channels: vec!["*".into()],
        publish: vec!["*".into()],
        ..Default::default()
    };
    herald_server::auth::mint_hs256(SECRET, &claims).unwrap()
}

/// HTTP API helper.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
}

impl Default for Api {
    fn default() -> Self {
        Api { http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap() }
    }
}

impl Api {
    /// POST /api/publish; (HTTP status, body).
    pub async fn publish(&self, base: &str, body: Value) -> (u16, Value) {
        match self
            .http
            .post(format!("{base}/api/publish"))
            .header("x-api-key", API_KEY)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({ "transport": e.to_string() })),
        }
    }

    /// GET with the API key; (status, body).
    pub async fn get(&self, base: &str, path: &str) -> (u16, Value) {
        match self.http.get(format!("{base}{path}")).header("x-api-key", API_KEY).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({ "transport": e.to_string() })),
        }
    }
}

/// Everything a subscriber saw.
#[derive(Debug, Default)]
pub struct Log {
    /// Every publication accepted into the stream (from replies and live), in order.
    pub pubs: Vec<Value>,
    /// Every subscribe reply result.
    pub replies: Vec<Value>,
    /// Violations: duplicates, gaps delivered, errors.
    pub errors: Vec<String>,
    /// Subscribes answered `113 unavailable` (then retried).
    pub unavailable: usize,
    /// `unsubscribe` pushes with resubscribe.
    pub resubscribes: usize,
    /// Connections opened.
    pub connections: usize,
    /// The URL of each connection.
    pub urls: Vec<String>,
    /// Keyed state rebuilt from snapshots and publications.
    pub state: BTreeMap<String, Value>,
    /// Current position.
    pub position: Option<(String, u64)>,
}

impl Log {
    /// Offsets of the recorded publications.
    pub fn offsets(&self) -> Vec<u64> {
        self.pubs.iter().map(|p| p["offset"].as_u64().unwrap()).collect()
    }
}

/// A subscriber that keeps one subscription alive across reconnects and resubscribe pushes.
pub struct Subscriber {
    /// What it saw.
    pub log: Arc<parking_lot::Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options of a subscriber.
#[derive(Clone)]
pub struct SubOptions {
    /// URLs, tried in order (then around again) on every (re)connect.
    pub urls: Vec<String>,
    /// Channel.
    pub channel: String,
    /// Ask for a snapshot on the first subscribe.
    pub snapshot: bool,
    /// Start from this position.
    pub since: Option<(String, u64)>,
}

impl Subscriber {
    /// Starts it; returns once the first subscribe reply arrived.
    pub async fn start(opts: SubOptions) -> Subscriber {
        let log = Arc::new(parking_lot::Mutex::new(Log {
            position: opts.since.clone(),
            ..Log::default()
        }));
        let task = tokio::spawn(run_subscriber(opts, log.clone()));
        let s = Subscriber { log, task };
        eventually(Duration::from_secs(10), "first subscribe reply", || {
            let ok = !s.log.lock().replies.is_empty();
            async move { ok.then_some(()) }
        })
        .await;
        s
    }

    /// Waits until it holds offset `last` (in the current epoch) or fails after `within`.
    pub async fn wait_offset(&self, last: u64, within: Duration) {
        let log = self.log.clone();
        let deadline = Instant::now() + within;
        loop {
            {
                let l = log.lock();
                if l.position.as_ref().is_some_and(|(_, o)| *o >= last) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "subscriber stuck at {:?} waiting for {last}; errors {:?}; urls {:?}",
                    l.position,
                    l.errors,
                    l.urls
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn run_subscriber(opts: SubOptions, log: Arc<parking_lot::Mutex<Log>>) {
    let token = token("sub");
    let mut attempt = 0usize;
    let mut first = true;
    loop {
        let url = &opts.urls[attempt % opts.urls.len()];
        attempt += 1;
        let Ok(Ok((ws, _))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        {
            let mut l = log.lock();
            l.connections += 1;
            l.urls.push(url.clone());
        }
        let _ = session(ws, &token, &opts, &log, &mut first).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(ws: &mut Ws, v: Value) -> Result<(), ()> {
    ws.send(Message::Text(v.to_string().into())).await.map_err(|_| ())
}

fn subscribe_cmd(id: u64, opts: &SubOptions, log: &Log, first: bool) -> Value {
    let mut cmd = json!({"id": id, "cmd": "subscribe", "channel": opts.channel});
    if let Some((epoch, offset)) = &log.position {
        cmd["since"] = json!({"epoch": epoch, "offset": offset});
    } else if first && opts.snapshot {
        cmd["snapshot"] = json!(true);
    }
    cmd
}

/// One connection: connect, subscribe (with `since` once a position is known), read until it
/// ends.
async fn session(
    mut ws: Ws,
    token: &str,
    opts: &SubOptions,
    log: &Arc<parking_lot::Mutex<Log>>,
    first: &mut bool,
) -> Result<(), ()> {
    send(&mut ws, json!({"id": 1, "cmd": "connect", "token": token})).await?;
    let mut next_id = 2u64;
    let cmd = subscribe_cmd(next_id, opts, &log.lock(), *first);
    send(&mut ws, cmd).await?;
    let mut sub_id = next_id;
    next_id += 1;
    while let Some(msg) = ws.next().await {
        let text = match msg.map_err(|_| ())? {
            Message::Text(t) => t.to_string(),
            Message::Close(_) => return Err(()),
            _ => continue,
        };
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_str(line).map_err(|_| ())?;
            if v["push"] == "ping" {
                send(&mut ws, json!({"cmd": "pong"})).await?;
            } else if v["push"] == "pub" {
                let mut l = log.lock();
                accept(&mut l, &v["pub"]);
            } else if v["push"] == "unsubscribe" {
                let cmd = {
                    let mut l = log.lock();
                    l.resubscribes += 1;
                    subscribe_cmd(next_id, opts, &l, false)
                };
                sub_id = next_id;
                next_id += 1;
                send(&mut ws, cmd).await?;
            } else if v["id"].as_u64() == Some(sub_id) {
                if let Some(err) = v.get("error") {
                    let mut l = log.lock();
                    if err["code"] == 113 {
                        // The engine is unavailable right now (Redis down or reconnecting):
                        // try again, as a real client does.
                        l.unavailable += 1;
                    } else {
                        l.errors.push(format!("subscribe error: {err}"));
                    }
                    return Err(());
                }
                *first = false;
                let r = &v["result"];
                let mut l = log.lock();
                l.replies.push(r.clone());
                let recovered = r["recovered"].as_bool();
                if recovered == Some(true) {
                    for p in r["publications"].as_array().cloned().unwrap_or_default() {
                        accept(&mut l, &p);
                    }
                    let at =
                        (r["epoch"].as_str().unwrap().to_string(), r["offset"].as_u64().unwrap());
                    if l.position.as_ref() != Some(&at) {
                        let msg =
                            format!("recovered reply ends at {at:?}, client at {:?}", l.position);
                        l.errors.push(msg);
                    }
                } else {
                    if let Some(snapshot) = r["snapshot"].as_array() {
                        l.state = snapshot
                            .iter()
                            .map(|rec| {
                                (rec["key"].as_str().unwrap().to_string(), rec["value"].clone())
                            })
                            .collect();
                    }
                    l.position = Some((
                        r["epoch"].as_str().unwrap().to_string(),
                        r["offset"].as_u64().unwrap(),
                    ));
                }
            }
        }
    }
    Err(())
}

/// Takes a publication into the log if it continues the stream; records violations.
fn accept(l: &mut Log, p: &Value) {
    let epoch = p["epoch"].as_str().unwrap_or_default().to_string();
    let offset = p["offset"].as_u64().unwrap_or_default();
    match &l.position {
        Some((e, o)) if *e == epoch && offset == o + 1 => {}
        other => {
            l.errors.push(format!("publication {epoch}:{offset} after position {other:?}"));
            return;
        }
    }
    if let (Some(key), Some(op)) = (p["key"].as_str(), p["op"].as_str()) {
        apply(&mut l.state, key, op, &p["data"]);
    }
    l.position = Some((epoch, offset));
    l.pubs.push(p.clone());
}

/// Applies a keyed operation (RFC 7386 for merge).
pub fn apply(state: &mut BTreeMap<String, Value>, key: &str, op: &str, data: &Value) {
    match op {
        "upsert" => {
            state.insert(key.into(), data.clone());
        }
        "delete" => {
            state.remove(key);
        }
        "merge" => {
            let cur = state.entry(key.into()).or_insert(Value::Null);
            json_patch::merge(cur, data);
        }
        other => panic!("unknown op {other}"),
    }
}

/// A `redis-server` on a free port with extra arguments (a replica's `--replicaof`, or a
/// sentinel's config file and `--sentinel`), that can be killed and started again on its port.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Arguments after the port.
    args: Vec<String>,
    /// A config file that goes first (sentinels rewrite theirs).
    conf: Option<std::path::PathBuf>,
    /// The process, while it runs.
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// A plain server without persistence; `args` e.g. `["--replicaof", "127.0.0.1 PORT"]`.
    pub fn start(args: &[&str]) -> RedisServer {
        let mut r = RedisServer {
            port: herald_testkit::free_port(),
            args: args.iter().map(|a| a.to_string()).collect(),
            conf: None,
            child: None,
        };
        r.spawn();
        r
    }

    /// A sentinel monitoring the master on `master_port` as `m` with quorum 1, quick to call
    /// it down (500 ms) and to fail over.
    pub fn sentinel(master_port: u16) -> RedisServer {
        let port = herald_testkit::free_port();
        let dir =
            std::env::temp_dir().join(format!("herald-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor m 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds m 500\nsentinel failover-timeout m 3000\n",
                dir.display()
            ),
        )
        .unwrap();
        let mut r =
            RedisServer { port, args: vec!["--sentinel".into()], conf: Some(conf), child: None };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port.
    pub fn spawn(&mut self) {
        let mut cmd = std::process::Command::new("redis-server");
        if let Some(conf) = &self.conf {
            cmd.arg(conf);
        } else {
            // A replica writes the master's RDB to its directory: a scratch one, not the cwd.
            let dir = std::env::temp_dir().join(format!("herald-redis-{}", self.port));
            std::fs::create_dir_all(&dir).unwrap();
            cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"]).arg(dir);
        }
        let child = cmd
            .args(["--port", &self.port.to_string()])
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A command's reply, or `None` while the server does not answer.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let client = redis::Client::open(self.url()).ok()?;
        let ask = async {
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            cmd.query_async(&mut conn).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(1), ask).await.ok().flatten()
    }

    /// One field of `INFO replication`.
    pub async fn replication(&self, field: &str) -> Option<String> {
        let info: String = self.query(redis::cmd("INFO").arg("replication")).await?;
        info.lines()
            .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
            .map(|v| v.trim().to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
        match self.conf.as_ref().and_then(|c| c.parent()) {
            Some(dir) => drop(std::fs::remove_dir_all(dir)),
            None => drop(std::fs::remove_dir_all(
                std::env::temp_dir().join(format!("herald-redis-{}", self.port)),
            )),
        }
    }
}
