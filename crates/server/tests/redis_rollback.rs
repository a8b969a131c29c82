//! Redis coming back with older data (a restored copy of its data directory, what an
//! asynchronous replica failover or `appendfsync everysec` plus a host crash also do): no
//! position names two publications, and subscribers resync with `epoch_changed` rather than
//! recover around the lost writes. In process against the engine (the rollback written by hand
//! into Redis), then with real `herald` processes and a real `redis-server` whose AOF directory
//! is copied, the server killed with SIGKILL, the copy restored and the server started again.
//! Needs `cargo build --bins` first (the herald binary) and `redis-server` on PATH.

mod redis_support;

use herald_protocol::Position;
use herald_protocol::reply::NotRecovered;
use herald_server::config::{EngineConfig, EngineKind, Namespace};
use herald_server::engine::redis::RedisEngine;
use herald_server::engine::{Delivery, Engine, PublishInput, Window};
use herald_server::frame::Encoded;
use parking_lot::Mutex;
use redis_support::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `redis-server` on a free port with `appendonly yes`, `appendfsync always` in its own
/// directory: every acknowledged write is on disk, so a copy of the directory is exactly the
/// data at the moment it was taken.
struct AofRedis {
    /// Its port on 127.0.0.1.
    port: u16,
    /// Its data directory.
    dir: PathBuf,
    /// The process, while it runs.
    child: Option<Child>,
}

impl AofRedis {
    fn start() -> AofRedis {
        let dir = scratch("redis");
        let mut r = AofRedis { port: herald_testkit::free_port(), dir, child: None };
        r.spawn();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // A process start has no event to wait on: poll until it answers PING (not LOADING).
        while !self.pings() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pings(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else { return false };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    /// Copies the data directory (the publishes are paused: the AOF is complete on disk).
    fn copy_to(&self, to: &Path) {
        copy_dir(&self.dir, to);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Replaces the data directory with `copy` and starts on the same port.
    fn restore_and_start(&mut self, copy: &Path) {
        self.kill9();
        std::fs::remove_dir_all(&self.dir).unwrap();
        copy_dir(copy, &self.dir);
        self.spawn();
    }
}

impl Drop for AofRedis {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(what: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("herald-{what}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// In process: the engine against a rollback written by hand.

/// What a node's subscribers would have received.
#[derive(Default)]
struct Collect {
    /// Positions delivered.
    pubs: Mutex<Vec<(String, u64)>>,
    /// Channel resets.
    resets: Mutex<usize>,
}

impl Delivery for Collect {
    fn deliver(&self, p: Arc<Encoded>) {
        self.pubs.lock().push((p.epoch.to_string(), p.offset));
    }
    fn reset(&self, _channel: Option<&str>) {
        *self.resets.lock() += 1;
    }
    fn deliver_volatile(&self, _channel: &str, _frame: Arc<str>) {}
}

async fn engine(url: &str) -> (Arc<RedisEngine>, Arc<Collect>) {
    let config =
        EngineConfig { kind: EngineKind::Redis, redis_url: url.into(), ..EngineConfig::default() };
    let engine = Arc::new(RedisEngine::new(&config).unwrap());
    let collect = Arc::new(Collect::default());
    engine.attach(collect.clone());
    assert!(engine.wait_connected(Duration::from_secs(5)).await, "redis pub/sub up");
    (engine, collect)
}

fn input(channel: &str, key: Option<&str>, i: u64) -> PublishInput {
    PublishInput {
        channel: channel.into(),
        kind: "t".into(),
        data: serde_json::value::to_raw_value(&json!({ "i": i })).unwrap(),
        key: key.map(str::to_string),
        op: None,
        meta: Default::default(),
    }
}

async fn publish(e: &RedisEngine, ns: &Namespace, channel: &str, i: u64) -> (String, u64) {
    let key = ns.keyed.then(|| format!("k{}", i % 3));
    let r = e.publish(ns, input(channel, key.as_deref(), i)).await.unwrap();
    (r.epoch, r.offset)
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn meta_key(channel: &str) -> String {
    format!("herald:{{{}:{channel}}}:meta", channel.len())
}

/// What a restore from a copy taken at offset `to` leaves: the meta at `to` and the history up
/// to it (the test channels keep every publication, oldest first from offset 1).
async fn roll_back(conn: &mut redis::aio::MultiplexedConnection, channel: &str, to: u64) {
    let base = format!("herald:{{{}:{channel}}}:", channel.len());
    let () = redis::cmd("HSET")
        .arg(format!("{base}meta"))
        .arg("offset")
        .arg(to)
        .query_async(conn)
        .await
        .unwrap();
    let () = redis::cmd("LTRIM")
        .arg(format!("{base}hist"))
        .arg(0)
        .arg(to as i64 - 1)
        .query_async(conn)
        .await
        .unwrap();
}

async fn stored_epoch(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> String {
    redis::cmd("HGET").arg(meta_key(channel)).arg("epoch").query_async(conn).await.unwrap()
}

/// Polls `f` until it is true, or panics with `what` after `within`.
async fn until(within: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A publish through a node that witnessed more than Redis holds starts a new epoch in the same
/// step; the offset continues from the stored one, the history goes, the records stay; a node
/// that witnessed nothing then publishes in the new epoch too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_after_lost_writes_starts_a_new_epoch() {
    let redis = herald_testkit::RedisProcess::start();
    let (a, _) = engine(&redis.url()).await;
    let (b, _) = engine(&redis.url()).await;
    let mut conn = raw(&redis.url()).await;
    for ns in [Namespace::default(), Namespace { keyed: true, ..Namespace::default() }] {
        let channel = if ns.keyed { "kv:p" } else { "plain:p" };
        let mut first = None;
        for i in 1..=10 {
            let at = publish(&a, &ns, channel, i).await;
            first.get_or_insert(at.0.clone());
        }
        let e0 = first.unwrap();
        roll_back(&mut conn, channel, 6).await;
        let (e1, offset) = publish(&a, &ns, channel, 11).await;
        assert_ne!(e1, e0, "a new epoch");
        assert_eq!(offset, 7, "the offset continues from the stored one");
        assert_eq!(publish(&b, &ns, channel, 12).await, (e1.clone(), 8), "b without a witness");
        let read =
            b.read(&ns, channel, Window::After { after: 0, limit: 100 }, true).await.unwrap();
        assert_eq!((read.epoch.as_str(), read.offset, read.earliest), (e1.as_str(), 8, 7));
        let offsets: Vec<u64> = read.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [7, 8], "the old epoch's history is gone");
        if ns.keyed {
            let keys: Vec<String> = read.records.unwrap().into_iter().map(|r| r.key).collect();
            assert_eq!(keys, ["k0", "k1", "k2"], "the restored records stay");
        }
    }
}

/// A resume through a node that witnessed more than Redis holds is told `epoch_changed`, not
/// `recovered`, before anything is published again; so is one through a node that witnessed
/// nothing, afterwards. A stream lost altogether whose empty epoch would come back the same
/// gets a new one as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_lost_writes_is_told_epoch_changed() {
    let redis = herald_testkit::RedisProcess::start();
    let (a, _) = engine(&redis.url()).await;
    let (b, _) = engine(&redis.url()).await;
    let mut conn = raw(&redis.url()).await;
    let ns = Namespace::default();
    let mut e0 = String::new();
    for i in 1..=10 {
        e0 = publish(&a, &ns, "r", i).await.0;
    }
    roll_back(&mut conn, "r", 6).await;
    let since = Position { epoch: e0.clone(), offset: 6 };
    let r = herald_server::rules::recover(&*a, &ns, "r", Some(&since), false).await.unwrap();
    assert_eq!((r.recovered, r.reason), (Some(false), Some(NotRecovered::EpochChanged)));
    assert_ne!(r.epoch, e0);
    assert_eq!(r.offset, 6);
    let r = herald_server::rules::recover(&*b, &ns, "r", Some(&since), false).await.unwrap();
    assert_eq!(r.reason, Some(NotRecovered::EpochChanged), "the new epoch is in redis");

    // Lost altogether (a copy from before the channel's first publish, same epoch seed).
    for i in 1..=5 {
        e0 = publish(&a, &ns, "gone", i).await.0;
    }
    let base = "herald:{4:gone}:";
    let () = redis::cmd("DEL")
        .arg(format!("{base}meta"))
        .arg(format!("{base}hist"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let fresh = b.read(&ns, "gone", Window::Nothing, false).await.unwrap();
    assert_eq!(fresh.epoch, e0, "without a witness, the empty epoch is the old one");
    let read = a.read(&ns, "gone", Window::Nothing, false).await.unwrap();
    assert_ne!(read.epoch, e0, "the witness starts another");
    assert_eq!(read.offset, 0);
    assert_eq!(publish(&b, &ns, "gone", 6).await, (read.epoch, 1));
}

/// A node that only listens sees a publication come at a position it already delivered (another
/// node published on the rolled-back data): its subscribers resync, the reused position is not
/// delivered, and the channel gets a new epoch in Redis without anyone reading or publishing
/// through the listening node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_catches_a_reused_position() {
    let redis = herald_testkit::RedisProcess::start();
    let (a, _) = engine(&redis.url()).await;
    let (listener, seen) = engine(&redis.url()).await;
    let (b, _) = engine(&redis.url()).await;
    let mut conn = raw(&redis.url()).await;
    let ns = Namespace::default();
    listener.listen("l").await.unwrap();
    let mut e0 = String::new();
    for i in 1..=5 {
        e0 = publish(&a, &ns, "l", i).await.0;
    }
    until(Duration::from_secs(5), "the listener has 5", async || seen.pubs.lock().len() == 5).await;
    roll_back(&mut conn, "l", 3).await;
    // b witnessed nothing: its publish takes the reused position 4.
    assert_eq!(publish(&b, &ns, "l", 6).await, (e0.clone(), 4));
    until(Duration::from_secs(5), "the listener resets", async || *seen.resets.lock() > 0).await;
    until(Duration::from_secs(5), "a new epoch in redis", async || {
        stored_epoch(&mut conn, "l").await != e0
    })
    .await;
    let (e1, offset) = publish(&b, &ns, "l", 7).await;
    assert_ne!(e1, e0);
    assert_eq!(offset, 5);
    until(Duration::from_secs(5), "the listener gets the new epoch", async || {
        seen.pubs.lock().last() == Some(&(e1.clone(), 5))
    })
    .await;
    let pubs = seen.pubs.lock().clone();
    assert_eq!(pubs.iter().collect::<HashSet<_>>().len(), pubs.len(), "no position twice");
}

/// A node that only published (no subscribers, no reads) checks what it witnessed when Redis
/// comes back as another process, so the rolled-back channel has its new epoch before anyone
/// publishes at a reused position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnessed_channels_are_checked_when_redis_comes_back() {
    let mut redis = AofRedis::start();
    let (a, _) = engine(&redis.url()).await;
    let ns = Namespace::default();
    let copy = scratch("redis-copy");
    let mut e0 = String::new();
    for i in 1..=20 {
        e0 = publish(&a, &ns, "w", i).await.0;
        if i == 12 {
            redis.copy_to(&copy);
        }
    }
    redis.restore_and_start(&copy);
    let mut conn = raw(&redis.url()).await;
    let (offset,): (u64,) =
        redis::cmd("HMGET").arg(meta_key("w")).arg("offset").query_async(&mut conn).await.unwrap();
    assert!(offset <= 12, "the restored copy holds {offset}");
    until(Duration::from_secs(10), "a new epoch in redis", async || {
        stored_epoch(&mut conn, "w").await != e0
    })
    .await;
    let _ = std::fs::remove_dir_all(copy);
}

// ---------------------------------------------------------------------------------------------
// Processes: herald nodes on a redis-server whose data directory is restored from a copy.

/// Publications in the first run, the copy taken after `COPY_AT`, then `AFTER` more.
const BEFORE: u64 = 200;
const COPY_AT: u64 = 150;
const AFTER: u64 = 50;

/// Publishes `data` through `base` until one is acknowledged (503 while Redis comes back);
/// returns the id.
async fn publish_acked(api: &Api, base: &str, channel: &str, data: Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = api.publish(base, json!({"channel": channel, "data": data})).await;
        if status == 200 {
            return body["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no publish acknowledged: {status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every acknowledged id is unique, and an id names one publication wherever it was seen.
fn check_ids(acked: &[(String, Value)], subs: &[&Subscriber]) {
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for (id, data) in acked {
        assert!(
            by_id.insert(id.clone(), data.clone()).is_none(),
            "position {id} acknowledged twice"
        );
    }
    for s in subs {
        let l = s.log.lock();
        let mut seen = HashSet::new();
        for p in &l.pubs {
            let id = p["id"].as_str().unwrap().to_string();
            assert!(seen.insert(id.clone()), "{id} delivered twice");
            if let Some(data) = by_id.get(&id) {
                assert_eq!(&p["data"], data, "position {id} names two publications");
            }
        }
    }
}

/// A subscriber connected through it all: before the rollback every publication, then a resync
/// with `epoch_changed` into a new epoch, and from its resync point every later acknowledged
/// publication once, in order.
fn check_through(s: &Subscriber, e0: &str, after: &[(String, Value)]) {
    let l = s.log.lock();
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let early: Vec<u64> =
        l.pubs.iter().filter(|p| p["epoch"] == e0).map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(early, (1..=BEFORE).collect::<Vec<_>>(), "the first run, once each");
    for r in &l.replies {
        let old = r["epoch"] == e0 && r["offset"].as_u64().unwrap() < BEFORE;
        assert!(!(old && r["recovered"] == true), "recovered into the rolled-back stream: {r}");
    }
    let resync = l
        .replies
        .iter()
        .rev()
        .find(|r| r["reason"] == "epoch_changed")
        .unwrap_or_else(|| panic!("no epoch_changed; replies {:?}", l.replies));
    let (e1, from) = (resync["epoch"].as_str().unwrap(), resync["offset"].as_u64().unwrap());
    assert_ne!(e1, e0);
    let want: Vec<&str> = after
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| {
            let (e, o) = id.rsplit_once('-').unwrap();
            e == e1 && o.parse::<u64>().unwrap() > from
        })
        .collect();
    let got: Vec<&str> =
        l.pubs.iter().map(|p| p["id"].as_str().unwrap()).filter(|id| want.contains(id)).collect();
    assert_eq!(got, want, "every later acknowledged publication once, in order");
}

/// A new subscriber resuming from the end of the first run is told `epoch_changed`.
async fn check_resume(node: &Node, e0: &str) {
    let s = Subscriber::start(SubOptions {
        urls: vec![node.ws_url()],
        channel: "roll".into(),
        snapshot: false,
        since: Some((e0.to_string(), BEFORE)),
    })
    .await;
    let l = s.log.lock();
    let r = &l.replies[0];
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["reason"], "epoch_changed", "{r}");
    assert_ne!(r["epoch"], e0);
}

/// Runs the first `BEFORE` publications through `publisher`, copying Redis's data directory
/// after `COPY_AT`; the subscribers hold them all. Returns the epoch and the acknowledged ids.
async fn first_run(
    api: &Api,
    redis: &AofRedis,
    publisher: &Node,
    copy: &Path,
    subs: &[&Subscriber],
) -> (String, Vec<(String, Value)>) {
    let mut acked = Vec::new();
    for i in 1..=BEFORE {
        let data = json!({"run": 1, "i": i});
        acked.push((publish_acked(api, &publisher.http(), "roll", data.clone()).await, data));
        if i == COPY_AT {
            redis.copy_to(copy);
        }
    }
    for s in subs {
        s.wait_offset(BEFORE, Duration::from_secs(20)).await;
    }
    let e0 = acked[0].0.rsplit_once('-').unwrap().0.to_string();
    (e0, acked)
}

fn sub(node: &Node) -> SubOptions {
    SubOptions { urls: vec![node.ws_url()], channel: "roll".into(), snapshot: false, since: None }
}

/// The publishing node and a node that only listens both come through a restore of Redis's
/// data directory from a copy 50 publications old: no position names two publications, the
/// subscribers connected through it resync with `epoch_changed`, and a resume from the end of
/// the first run is told `epoch_changed` on either node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_copy_through_the_publishing_node() {
    let mut redis = AofRedis::start();
    let a = Node::start(&redis.url(), "roll-a");
    let b = Node::start(&redis.url(), "roll-b");
    let (sa, sb) = (Subscriber::start(sub(&a)).await, Subscriber::start(sub(&b)).await);
    let api = Api::default();
    let copy = scratch("redis-copy");
    let (e0, mut acked) = first_run(&api, &redis, &a, &copy, &[&sa, &sb]).await;
    redis.restore_and_start(&copy);
    let mut after = Vec::new();
    for i in 1..=AFTER {
        let data = json!({"run": 2, "i": i});
        let id = publish_acked(&api, &a.http(), "roll", data.clone()).await;
        assert!(!id.starts_with(&format!("{e0}-")), "{id} reuses the rolled-back epoch");
        after.push((id, data));
    }
    acked.extend(after.iter().cloned());
    let last = after.last().unwrap().0.rsplit_once('-').unwrap().1.parse().unwrap();
    for s in [&sa, &sb] {
        s.wait_offset(last, Duration::from_secs(20)).await;
        check_through(s, &e0, &after);
    }
    check_resume(&a, &e0).await;
    check_resume(&b, &e0).await;
    check_ids(&acked, &[&sa, &sb]);
    let _ = std::fs::remove_dir_all(copy);
}

/// The publishing node is gone (SIGKILL) and a fresh node, which witnessed nothing, publishes on
/// the restored data: the node that only listened catches it by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_copy_caught_by_a_listening_node() {
    let mut redis = AofRedis::start();
    let mut a = Node::start(&redis.url(), "roll-a");
    let b = Node::start(&redis.url(), "roll-b");
    let sb = Subscriber::start(sub(&b)).await;
    let api = Api::default();
    let copy = scratch("redis-copy");
    let (e0, mut acked) = first_run(&api, &redis, &a, &copy, &[&sb]).await;
    a.kill9();
    redis.restore_and_start(&copy);
    let c = Node::start(&redis.url(), "roll-c");
    let mut after = Vec::new();
    for i in 1..=AFTER {
        let data = json!({"run": 2, "i": i});
        after.push((publish_acked(&api, &c.http(), "roll", data.clone()).await, data));
    }
    // c may take reused positions before b notices; from then on, a new epoch.
    let last = after.last().unwrap().0.clone();
    assert!(!last.starts_with(&format!("{e0}-")), "{last}: still the rolled-back epoch");
    let (e1, offset) = last.rsplit_once('-').unwrap();
    let later: Vec<(String, Value)> =
        after.iter().filter(|(id, _)| id.starts_with(&format!("{e1}-"))).cloned().collect();
    sb.wait_offset(offset.parse().unwrap(), Duration::from_secs(20)).await;
    check_through(&sb, &e0, &later);
    check_resume(&b, &e0).await;
    // Positions c took in the rolled-back epoch name publications that were never delivered
    // as those positions: the first run's stay the ones seen.
    acked.extend(after.iter().filter(|(id, _)| !id.starts_with(&format!("{e0}-"))).cloned());
    check_ids(&acked, &[&sb]);
    let _ = std::fs::remove_dir_all(copy);
}
