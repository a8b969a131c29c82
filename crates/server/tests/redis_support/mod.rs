//! Test support for the Redis engine: real `redis-server` processes on free ports, real `herald`
//! processes on the redis engine, and a raw WebSocket subscriber that speaks docs/protocol.md
//! (reconnects through a URL list and resubscribes with `since`) and records what it saw.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
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

    /// Every stderr line so far (log lines).
    pub fn log_lines(&self) -> Vec<String> {
        self.process.log.lock().unwrap().clone()
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
    /// Its working directory (`--dir`) when not the default scratch one; removed on drop.
    dir: Option<std::path::PathBuf>,
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
            dir: None,
            child: None,
        };
        r.spawn();
        r
    }

    /// A Redis Cluster node (not yet part of a cluster) working in `dir/PORT`, which holds its
    /// `nodes-PORT.conf`: a restart on its port rejoins as the same node. The cluster bus goes
    /// to a free port of its own (`--cluster-port`), since PORT + 10000 may be past 65535.
    pub fn cluster_node(dir: &std::path::Path) -> RedisServer {
        let port = herald_testkit::free_port();
        let bus = herald_testkit::free_port();
        let dir = dir.join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join(format!("nodes-{port}.conf"));
        let args = [
            "--cluster-enabled".to_string(),
            "yes".into(),
            "--cluster-config-file".into(),
            conf.display().to_string(),
            "--cluster-node-timeout".into(),
            "1000".into(),
            "--cluster-port".into(),
            bus.to_string(),
        ];
        let mut r =
            RedisServer { port, args: args.to_vec(), conf: None, dir: Some(dir), child: None };
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
        let mut r = RedisServer {
            port,
            args: vec!["--sentinel".into()],
            conf: Some(conf),
            dir: None,
            child: None,
        };
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
            let dir = self.dir.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("herald-redis-{}", self.port))
            });
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

    /// Whether its process runs (it was not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// A [`RedisServer::cluster_node`] that answers PING. A free port can be taken by another
    /// test between `free_port` and the server's bind (tests run in parallel), which makes
    /// `redis-server` exit: the node then starts again on other ports (5 attempts).
    pub async fn cluster_node_up(dir: &std::path::Path) -> RedisServer {
        for _ in 0..5 {
            let mut node = RedisServer::cluster_node(dir);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if node.pings().await {
                    return node;
                }
                if node.exited() {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster node {} answers no PING", node.port);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("no cluster node could start in 5 attempts (ports taken?)");
    }

    /// The process was started and has exited.
    fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Whether it answers PING right now.
    pub async fn pings(&self) -> bool {
        self.query::<String>(&redis::cmd("PING")).await.as_deref() == Some("PONG")
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
        match self.conf.as_ref().and_then(|c| c.parent()).or(self.dir.as_deref()) {
            Some(dir) => drop(std::fs::remove_dir_all(dir)),
            None => drop(std::fs::remove_dir_all(
                std::env::temp_dir().join(format!("herald-redis-{}", self.port)),
            )),
        }
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// Node id.
    pub id: String,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`...
    pub flags: Vec<String>,
    /// The id of the master it replicates (`None` for a master).
    pub master_id: Option<String>,
    /// The slot ranges it serves, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    pub fn is_replica(&self) -> bool {
        self.flags.iter().any(|f| f == "slave")
    }

    /// Flagged `fail` or `fail?` by the node whose view this is.
    pub fn failing(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }

    pub fn myself(&self) -> bool {
        self.flags.iter().any(|f| f == "myself")
    }

    /// Every slot it serves.
    pub fn slot_set(&self) -> std::collections::BTreeSet<u16> {
        self.slots.iter().flat_map(|&(a, b)| a..=b).collect()
    }
}

/// Parses a `CLUSTER NODES` reply (`id ip:port@bus[,host] flags master ping pong epoch link
/// slot...`); importing/migrating markers (`[...]`) are left out.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split(['@', ',']).next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(ClusterNode {
                id: f[0].to_string(),
                port,
                flags: f[2].split(',').map(String::from).collect(),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// The value of `field` in an `INFO` or `CLUSTER INFO` reply.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).map(str::trim)
}

/// A Redis Cluster of six `redis-server` processes on free ports: three masters, each with one
/// replica, made with `redis-cli --cluster create`; node timeout 1 s. Dropped: every process is
/// killed and the scratch directory removed.
pub struct RedisCluster {
    /// The servers in start order: 0, 1 and 2 were made masters (`url` names them), 3, 4 and 5
    /// their replicas (which one replicates which: [`RedisCluster::replica_of`]).
    pub servers: Vec<RedisServer>,
    /// Holds one directory per server.
    dir: std::path::PathBuf,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.kill9();
        }
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

impl RedisCluster {
    /// Starts the six servers, creates the cluster and waits until every server says
    /// `cluster_state:ok` with every slot covered, all six agree on the three masters and
    /// their slots, and every replica's link to its master is up.
    pub async fn start() -> RedisCluster {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("herald-cluster-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut servers = Vec::new();
        for _ in 0..6 {
            servers.push(RedisServer::cluster_node_up(&dir).await);
        }
        let cluster = RedisCluster { servers, dir };
        let addrs: Vec<String> =
            cluster.servers.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        let create = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), create)
            .await
            .expect("redis-cli --cluster create within 60 s")
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let within = Duration::from_secs(30);
        eventually(within, "cluster ok, one view, replicas linked", || async {
            cluster.healthy(true).await.then_some(())
        })
        .await;
        cluster
    }

    /// `redis+cluster://` with the three initial masters as seeds.
    pub fn url(&self) -> String {
        let seeds: Vec<String> =
            self.servers[..3].iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The index of the server on `port`.
    pub fn index(&self, port: u16) -> Option<usize> {
        self.servers.iter().position(|s| s.port == port)
    }

    /// `CLUSTER NODES` as server `i` sees it; `None` while it does not answer.
    pub async fn nodes_seen_by(&self, i: usize) -> Option<Vec<ClusterNode>> {
        let text: String = self.servers[i].query(redis::cmd("CLUSTER").arg("NODES")).await?;
        Some(parse_cluster_nodes(&text))
    }

    /// `CLUSTER INFO` of server `i`.
    pub async fn cluster_info(&self, i: usize) -> Option<String> {
        self.servers[i].query(redis::cmd("CLUSTER").arg("INFO")).await
    }

    /// `CLUSTER NODES` as the first running server that answers sees it.
    pub async fn nodes(&self) -> Vec<ClusterNode> {
        eventually(Duration::from_secs(5), "a running server's CLUSTER NODES", || async {
            for i in self.running() {
                if let Some(nodes) = self.nodes_seen_by(i).await {
                    return Some(nodes);
                }
            }
            None
        })
        .await
    }

    /// Indexes of the servers whose process runs.
    pub fn running(&self) -> Vec<usize> {
        (0..self.servers.len()).filter(|&i| self.servers[i].running()).collect()
    }

    /// Indexes of the running servers that are masters serving slots, in index order.
    pub async fn masters(&self) -> Vec<usize> {
        let nodes = self.nodes().await;
        let mut masters: Vec<usize> = nodes
            .iter()
            .filter(|n| n.is_master() && !n.failing() && !n.slots.is_empty())
            .filter_map(|n| self.index(n.port))
            .filter(|&i| self.servers[i].running())
            .collect();
        masters.sort();
        masters
    }

    /// The index of the running server that replicates server `master`.
    pub async fn replica_of(&self, master: usize) -> usize {
        let nodes = self.nodes().await;
        let port = self.servers[master].port;
        let id = &nodes.iter().find(|n| n.port == port).expect("the master in CLUSTER NODES").id;
        nodes
            .iter()
            .filter(|n| n.is_replica() && n.master_id.as_ref() == Some(id))
            .filter_map(|n| self.index(n.port))
            .find(|&i| self.servers[i].running())
            .unwrap_or_else(|| panic!("no running replica of server {master} (port {port})"))
    }

    /// SIGKILL server `i`.
    pub fn kill9(&mut self, i: usize) {
        self.servers[i].kill9();
    }

    /// Every key server `i` holds (SCAN), e.g. to see which channels a master serves.
    pub async fn keys(&self, i: usize) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let cmd = redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).clone();
            let (next, batch): (u64, Vec<String>) =
                eventually(Duration::from_secs(10), "SCAN answered", || {
                    self.servers[i].query(&cmd)
                })
                .await;
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    /// Promotes server `replica`: `CLUSTER FAILOVER FORCE` while its master's process runs,
    /// `TAKEOVER` when it is dead; then waits until it says `role:master` and every running
    /// server says `cluster_state:ok` with every slot covered and names it master of its old
    /// master's slots. An automatic failover that already promoted it is fine.
    pub async fn failover(&self, replica: usize) {
        let port = self.servers[replica].port;
        let view = eventually(Duration::from_secs(5), "the replica's CLUSTER NODES", || {
            self.nodes_seen_by(replica)
        })
        .await;
        let me = view.iter().find(|n| n.myself()).expect("myself in CLUSTER NODES").clone();
        let old_slots = if me.is_replica() {
            let master = view
                .iter()
                .find(|n| Some(&n.id) == me.master_id.as_ref())
                .expect("its master in CLUSTER NODES")
                .clone();
            let alive = self.index(master.port).is_some_and(|i| self.servers[i].running());
            let mode = if alive { "FORCE" } else { "TAKEOVER" };
            let client = redis::Client::open(self.servers[replica].url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
            let reply: redis::RedisResult<String> =
                redis::cmd("CLUSTER").arg("FAILOVER").arg(mode).query_async(&mut conn).await;
            match reply {
                Ok(_) => {}
                // Promoted on its own meanwhile (node timeout).
                Err(e) if e.to_string().contains("to a replica") => {}
                Err(e) => panic!("CLUSTER FAILOVER {mode} on port {port}: {e}"),
            }
            master.slot_set()
        } else {
            assert!(
                !me.slots.is_empty(),
                "server {replica} (port {port}) is neither replica nor serving master"
            );
            me.slot_set()
        };
        eventually(Duration::from_secs(20), "the replica promoted, the survivors agree", || {
            let old_slots = &old_slots;
            async move {
                let role = self.servers[replica].replication("role").await?;
                if role != "master" {
                    return None;
                }
                for i in self.running() {
                    let info = self.cluster_info(i).await?;
                    if info_field(&info, "cluster_state") != Some("ok")
                        || info_field(&info, "cluster_slots_ok") != Some("16384")
                    {
                        return None;
                    }
                    let nodes = self.nodes_seen_by(i).await?;
                    let promoted = nodes.iter().find(|n| n.port == port)?;
                    if !promoted.is_master()
                        || promoted.failing()
                        || !old_slots.is_subset(&promoted.slot_set())
                    {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }

    /// Whether every running server says `cluster_state:ok` with all slots assigned and ok, and
    /// all of them see the same masters (not failing, running) serving every slot; with
    /// `replicas`, also every master with a running replica whose link is up.
    pub async fn healthy(&self, replicas: bool) -> bool {
        // The masters serving slots, as (port, slot ranges), in port order.
        type Layout = Vec<(u16, Vec<(u16, u16)>)>;
        let mut agreed: Option<Layout> = None;
        for i in self.running() {
            let Some(info) = self.cluster_info(i).await else { return false };
            if info_field(&info, "cluster_state") != Some("ok")
                || info_field(&info, "cluster_slots_assigned") != Some("16384")
                || info_field(&info, "cluster_slots_ok") != Some("16384")
            {
                return false;
            }
            let Some(nodes) = self.nodes_seen_by(i).await else { return false };
            let mut masters: Layout = nodes
                .iter()
                .filter(|n| n.is_master() && !n.slots.is_empty())
                .map(|n| (n.port, n.slots.clone()))
                .collect();
            masters.sort();
            let serving: usize = nodes
                .iter()
                .filter(|n| n.is_master() && !n.failing())
                .filter(|n| self.index(n.port).is_some_and(|j| self.servers[j].running()))
                .map(|n| n.slot_set().len())
                .sum();
            if serving != SLOTS || masters.len() != 3 {
                return false;
            }
            if agreed.as_ref().is_some_and(|a| *a != masters) {
                return false;
            }
            agreed = Some(masters.clone());
            if replicas {
                for m in nodes.iter().filter(|n| n.is_master() && !n.slots.is_empty()) {
                    let linked = nodes.iter().any(|r| {
                        r.is_replica()
                            && !r.failing()
                            && r.master_id.as_ref() == Some(&m.id)
                            && self.index(r.port).is_some_and(|j| self.servers[j].running())
                    });
                    if !linked {
                        return false;
                    }
                }
                if let Some(me) = nodes.iter().find(|n| n.myself())
                    && me.is_replica()
                    && self.servers[i].replication("master_link_status").await.as_deref()
                        != Some("up")
                {
                    return false;
                }
            }
        }
        agreed.is_some()
    }
}

/// The channels among `channels` that name any of `keys` (a token between `:`, `{` and `}`),
/// e.g. which channels a master serves from its [`RedisCluster::keys`].
pub fn channels_in_keys(
    keys: &[String],
    channels: &std::collections::HashSet<String>,
) -> std::collections::BTreeSet<String> {
    keys.iter()
        .flat_map(|k| k.split([':', '{', '}']))
        .filter(|t| channels.contains(*t))
        .map(String::from)
        .collect()
}

impl Api {
    /// POST /api/publish/batch (a JSON array); (HTTP status, body). 30 s timeout: a batch waits
    /// for its busiest channel's items one after another.
    pub async fn publish_batch(&self, base: &str, items: &[Value]) -> (u16, Value) {
        match self
            .http
            .post(format!("{base}/api/publish/batch"))
            .header("x-api-key", API_KEY)
            .timeout(Duration::from_secs(30))
            .json(items)
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
}

/// What a [`MultiSubscriber`] saw of one channel.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    /// Current position.
    pub position: Option<(String, u64)>,
    /// Where each run of the stream began: the first subscribe reply, and every reply that did
    /// not recover (a resync): (epoch, offset, reason; "" for the first).
    pub starts: Vec<(String, u64, String)>,
    /// Every publication taken, in order: (epoch, offset, `data` as JSON text).
    pub pubs: Vec<(String, u64, String)>,
    /// Subscribe replies that recovered.
    pub recovered: usize,
}

/// Everything a [`MultiSubscriber`] saw.
#[derive(Debug, Default)]
pub struct MultiLog {
    /// By channel.
    pub streams: HashMap<String, Stream>,
    /// Violations (the first 200): gaps, duplicates, publications outside a subscription,
    /// resumes that did not recover without an epoch change, unexpected errors.
    pub errors: Vec<String>,
    /// Violations in all.
    pub error_count: usize,
    /// Subscribes answered `113 unavailable` (then retried).
    pub unavailable: usize,
    /// `unsubscribe` pushes with `resubscribe: true`.
    pub resubscribes: usize,
    /// Connections opened.
    pub connections: usize,
    /// `disconnect` pushes by close code.
    pub disconnects: BTreeMap<u64, usize>,
}

impl MultiLog {
    fn error(&mut self, msg: String) {
        self.error_count += 1;
        if self.errors.len() < 200 {
            self.errors.push(msg);
        }
    }
}

/// A subscriber of many channels on one connection at a time: it connects through its URLs in
/// turn (the next one on every reconnect), subscribes to every channel (with `since` once it
/// has a position), answers pings, resubscribes on `unsubscribe` pushes and retries subscribes
/// answered `113`, and checks every publication continues its channel's stream (a gap or a
/// duplicate is a violation, and it resubscribes with `since`, as the protocol says a client
/// should).
pub struct MultiSubscriber {
    /// What it saw.
    pub log: Arc<parking_lot::Mutex<MultiLog>>,
    /// Its channels.
    pub channels: Vec<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MultiSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MultiSubscriber {
    /// Starts it; returns once every channel got its first subscribe reply.
    pub async fn start(urls: Vec<String>, channels: Vec<String>) -> MultiSubscriber {
        let log = Arc::new(parking_lot::Mutex::new(MultiLog::default()));
        let task = tokio::spawn(run_multi(urls, Arc::new(channels.clone()), log.clone()));
        let s = MultiSubscriber { log, channels, task };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let l = s.log.lock();
                let missing: Vec<&String> =
                    s.channels.iter().filter(|c| !l.streams.contains_key(*c)).collect();
                if missing.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no first subscribe reply for {} channels (e.g. {:?}); errors {:?}",
                    missing.len(),
                    &missing[..missing.len().min(5)],
                    l.errors
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s
    }

    /// The current position on `channel`.
    pub fn position(&self, channel: &str) -> Option<(String, u64)> {
        self.log.lock().streams.get(channel).and_then(|s| s.position.clone())
    }
}

async fn run_multi(
    urls: Vec<String>,
    channels: Arc<Vec<String>>,
    log: Arc<parking_lot::Mutex<MultiLog>>,
) {
    let token = token("multi");
    let mut attempt = 0usize;
    loop {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let Ok(Ok((ws, _))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await; // reconnect pacing
            continue;
        };
        log.lock().connections += 1;
        let _ = multi_session(ws, &token, &channels, &log).await;
    }
}

fn multi_subscribe_cmd(id: u64, channel: &str, log: &MultiLog) -> String {
    let mut cmd = json!({"id": id, "cmd": "subscribe", "channel": channel});
    if let Some((epoch, offset)) = log.streams.get(channel).and_then(|s| s.position.as_ref()) {
        cmd["since"] = json!({"epoch": epoch, "offset": offset});
    }
    cmd.to_string()
}

/// A command of the session awaiting its reply.
enum Pending {
    Subscribe(String),
    /// The unsubscribe before a resubscribe after a bad position.
    Unsubscribe,
}

/// One connection of a [`MultiSubscriber`].
async fn multi_session(
    mut ws: Ws,
    token: &str,
    channels: &[String],
    log: &Arc<parking_lot::Mutex<MultiLog>>,
) -> Result<(), ()> {
    let mut lines = vec![json!({"id": 1, "cmd": "connect", "token": token}).to_string()];
    let mut next_id = 2u64;
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    // Channels subscribed on this connection (reply received).
    let mut active: HashSet<String> = HashSet::new();
    // Channels being resubscribed after a bad position: their publications in flight are dropped.
    let mut resyncing: HashSet<String> = HashSet::new();
    {
        let l = log.lock();
        for c in channels {
            lines.push(multi_subscribe_cmd(next_id, c, &l));
            pending.insert(next_id, Pending::Subscribe(c.clone()));
            next_id += 1;
        }
    }
    // Several commands per frame, as docs/protocol.md §1 allows.
    for chunk in lines.chunks(50) {
        send_text(&mut ws, chunk.join("\n")).await?;
    }
    let mut retry: Vec<String> = Vec::new();
    let mut retry_at = tokio::time::Instant::now();
    loop {
        let mut out: Vec<String> = Vec::new();
        tokio::select! {
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(()),
                    Some(Ok(_)) => continue,
                };
                let mut l = log.lock();
                for line in text.split('\n').filter(|l| !l.is_empty()) {
                    let Ok(v) = serde_json::from_str::<Value>(line) else {
                        l.error(format!("unparseable line {line}"));
                        continue;
                    };
                    match v["push"].as_str() {
                        Some("ping") => out.push(json!({"cmd": "pong"}).to_string()),
                        Some("pub") => {
                            let p = &v["pub"];
                            let channel = p["channel"].as_str().unwrap_or_default().to_string();
                            if resyncing.contains(&channel) {
                                continue;
                            }
                            if !active.contains(&channel) {
                                l.error(format!(
                                    "{channel}: publication {}:{} while not subscribed",
                                    p["epoch"], p["offset"]
                                ));
                                continue;
                            }
                            if !multi_accept(&mut l, &channel, p) {
                                // Never deliver around a hole: resubscribe with `since`.
                                active.remove(&channel);
                                resyncing.insert(channel.clone());
                                out.push(
                                    json!({"id": next_id, "cmd": "unsubscribe", "channel": channel})
                                        .to_string(),
                                );
                                pending.insert(next_id, Pending::Unsubscribe);
                                next_id += 1;
                                out.push(multi_subscribe_cmd(next_id, &channel, &l));
                                pending.insert(next_id, Pending::Subscribe(channel));
                                next_id += 1;
                            }
                        }
                        Some("unsubscribe") => {
                            let channel = v["channel"].as_str().unwrap_or_default().to_string();
                            if v["resubscribe"] != true {
                                l.error(format!("{channel}: ended without resubscribe: {v}"));
                                continue;
                            }
                            l.resubscribes += 1;
                            active.remove(&channel);
                            out.push(multi_subscribe_cmd(next_id, &channel, &l));
                            pending.insert(next_id, Pending::Subscribe(channel));
                            next_id += 1;
                        }
                        Some("disconnect") => {
                            *l.disconnects.entry(v["code"].as_u64().unwrap_or(0)).or_default() += 1;
                        }
                        Some(other) => l.error(format!("unexpected push {other}: {v}")),
                        None => {
                            let Some(id) = v["id"].as_u64() else {
                                l.error(format!("neither reply nor push: {v}"));
                                continue;
                            };
                            if id == 1 {
                                if v.get("error").is_some() {
                                    l.error(format!("connect refused: {v}"));
                                    return Err(());
                                }
                                continue;
                            }
                            match pending.remove(&id) {
                                Some(Pending::Unsubscribe) => {}
                                Some(Pending::Subscribe(channel)) => {
                                    resyncing.remove(&channel);
                                    if let Some(err) = v.get("error") {
                                        if err["code"] == 113 {
                                            l.unavailable += 1;
                                        } else {
                                            l.error(format!("{channel}: subscribe error {err}"));
                                        }
                                        if retry.is_empty() {
                                            retry_at = tokio::time::Instant::now()
                                                + Duration::from_millis(100);
                                        }
                                        retry.push(channel);
                                    } else {
                                        multi_reply(&mut l, &channel, &v["result"]);
                                        active.insert(channel);
                                    }
                                }
                                None => l.error(format!("reply to no command: {v}")),
                            }
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(retry_at), if !retry.is_empty() => {
                let l = log.lock();
                for channel in retry.drain(..) {
                    out.push(multi_subscribe_cmd(next_id, &channel, &l));
                    pending.insert(next_id, Pending::Subscribe(channel));
                    next_id += 1;
                }
            }
        }
        if !out.is_empty() {
            send_text(&mut ws, out.join("\n")).await?;
        }
    }
}

async fn send_text(ws: &mut Ws, text: String) -> Result<(), ()> {
    ws.send(Message::Text(text.into())).await.map_err(|_| ())
}

/// Takes a subscribe reply of `channel`.
fn multi_reply(l: &mut MultiLog, channel: &str, r: &Value) {
    let (Some(epoch), Some(offset)) = (r["epoch"].as_str(), r["offset"].as_u64()) else {
        l.error(format!("{channel}: reply without a position: {r}"));
        return;
    };
    let at = (epoch.to_string(), offset);
    let had = l.streams.get(channel).and_then(|s| s.position.clone());
    if r["recovered"] == true {
        for p in r["publications"].as_array().cloned().unwrap_or_default() {
            if !multi_accept(l, channel, &p) {
                break;
            }
        }
        let stream = l.streams.entry(channel.to_string()).or_default();
        stream.recovered += 1;
        if stream.position.as_ref() != Some(&at) {
            let msg = format!(
                "{channel}: recovered reply ends at {at:?}, client at {:?}",
                stream.position
            );
            l.error(msg);
        }
        return;
    }
    let reason = r["reason"].as_str().unwrap_or_default().to_string();
    if let Some((e, o)) = &had
        && (reason != "epoch_changed" || e == epoch)
    {
        l.error(format!(
            "{channel}: resume from {e}:{o} not recovered ({reason:?}), reply at {epoch}:{offset}"
        ));
    }
    if r["publications"].as_array().is_some_and(|p| !p.is_empty()) {
        l.error(format!("{channel}: a reply that did not recover carries publications"));
    }
    let stream = l.streams.entry(channel.to_string()).or_default();
    stream.starts.push((at.0.clone(), at.1, reason));
    stream.position = Some(at);
}

/// Takes publication `p` of `channel` if it continues the stream; records a violation (and
/// returns false) if not.
fn multi_accept(l: &mut MultiLog, channel: &str, p: &Value) -> bool {
    let epoch = p["epoch"].as_str().unwrap_or_default().to_string();
    let offset = p["offset"].as_u64().unwrap_or_default();
    let stream = l.streams.entry(channel.to_string()).or_default();
    match &stream.position {
        Some((e, o)) if *e == epoch && offset == o + 1 => {
            stream.position = Some((epoch.clone(), offset));
            stream.pubs.push((epoch, offset, p["data"].to_string()));
            true
        }
        other => {
            let msg = format!("{channel}: publication {epoch}:{offset} after position {other:?}");
            l.error(msg);
            false
        }
    }
}
