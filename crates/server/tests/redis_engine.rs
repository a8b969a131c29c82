//! The Redis engine in process, against a real `redis-server`: what its scripts store (and do not
//! store), the key-length and state limits, the epoch an empty channel is read at, and the node
//! registration across `detach_node`. Two engines on one Redis stand for two nodes.

use herald_protocol::command::HistoryQuery;
use herald_protocol::reply::NotRecovered;
use herald_protocol::{ErrorCode, Meta, Op, Position};
use herald_server::config::{Config, EngineConfig, EngineKind, Namespace};
use herald_server::engine::redis::RedisEngine;
use herald_server::engine::{Engine, EngineError, Delivery, PublishInput};
use herald_server::frame::Encoded;
use herald_server::rules;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Redis = herald_testkit::RedisProcess;

/// What a node's subscribers would have received.
#[derive(Default)]
struct Collect {
    pubs: Mutex<Vec<Arc<Encoded>>>,
    resets: Mutex<usize>,
}

impl Delivery for Collect {
    fn deliver(&self, publication: Arc<Encoded>) {
        self.pubs.lock().push(publication);
    }
    fn reset(&self, _channel: Option<&str>) {
        *self.resets.lock() += 1;
    }
}

async fn engine(redis: &Redis) -> (Arc<RedisEngine>, Arc<Collect>) {
    let config =
        EngineConfig { kind: EngineKind::Redis, redis_url: redis.url(), ..EngineConfig::default() };
    let engine = Arc::new(RedisEngine::new(&config).unwrap());
    let collect = Arc::new(Collect::default());
    engine.attach(collect.clone());
    assert!(engine.wait_connected(Duration::from_secs(5)).await, "redis pub/sub up");
    (engine, collect)
}

fn input(channel: &str, data: &str, key: Option<&str>, op: Option<Op>) -> PublishInput {
    PublishInput {
        channel: channel.into(),
        kind: "t".into(),
        data: RawValue::from_string(data.into()).unwrap(),
        key: key.map(Into::into),
        op,
        meta: Meta::default(),
    }
}

async fn raw(redis: &Redis) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// Every key under the default prefix, sorted.
async fn keys(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut k: Vec<String> = redis::cmd("KEYS").arg("herald:*").query_async(conn).await.unwrap();
    k.sort();
    k
}

/// Polls `f` until it is true, or panics with `what` after `within`.
async fn eventually(within: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keys count toward `max_state_bytes` in publish.lua as in the memory engine, and a key longer
/// than `max_key_bytes` is refused with 107 before Redis is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_count_toward_state_bytes_and_have_a_length_limit() {
    let redis = Redis::start();
    let (e, _) = engine(&redis).await;
    let ns = Namespace {
        keyed: true,
        max_state_bytes: 1000,
        max_key_bytes: 200,
        ..Namespace::default()
    };
    let key = |i: usize| format!("{i:0>200}");
    for i in 0..4 {
        e.publish(&ns, input("kb:1", "1", Some(&key(i)), None)).await.unwrap();
    }
    let err = e.publish(&ns, input("kb:1", "1", Some(&key(4)), None)).await.unwrap_err();
    assert!(matches!(err, EngineError::StateLimit(_)), "{err}");
    // A merge counts its key too.
    let err =
        e.publish(&ns, input("kb:1", "{}", Some(&key(5)), Some(Op::Merge))).await.unwrap_err();
    assert!(matches!(err, EngineError::StateLimit(_)), "{err}");
    e.publish(&ns, input("kb:1", "null", Some(&key(0)), Some(Op::Delete))).await.unwrap();
    e.publish(&ns, input("kb:1", "1", Some(&key(4)), None)).await.unwrap();
    let mut conn = raw(&redis).await;
    let bytes: u64 = redis::cmd("HGET")
        .arg("herald:{4:kb:1}:meta")
        .arg("bytes")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(bytes, 4 * 201, "the meta counter holds keys and values");
    let err = e.publish(&ns, input("kb:1", "1", Some(&"x".repeat(201)), None)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest, "{err}");
    assert!(err.to_string().contains("max_key_bytes"), "{err}");
    assert_eq!(rules::state(&*e, &ns, "kb:1").await.unwrap().records.len(), 4);
}

/// Subscribe, history and state reads of never-used channels write no key for them (only the
/// one hub-wide epoch seed); a subscriber on one node told the empty position gets the first
/// publication, made through another node, as offset 1 of that same epoch: no gap, no reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_unused_channels_write_nothing_and_the_first_publish_keeps_the_epoch() {
    let redis = Redis::start();
    let (a, seen) = engine(&redis).await;
    let (b, _) = engine(&redis).await;
    let ns = Namespace::default();
    let kv = Namespace { keyed: true, ..Namespace::default() };
    let mut conn = raw(&redis).await;
    let q = |c: &str, since: Option<Position>| HistoryQuery {
        channel: c.into(),
        since,
        ..Default::default()
    };
    let mut epochs = Vec::new();
    for i in 0..50 {
        let c = format!("never-{i}");
        epochs.push(rules::recover(&*a, &ns, &c, None, false).await.unwrap().epoch);
        let foreign = Position { epoch: "other".into(), offset: 3 };
        let r = rules::recover(&*a, &ns, &c, Some(&foreign), false).await.unwrap();
        assert_eq!(r.reason, Some(NotRecovered::EpochChanged));
        let h = rules::history(&*b, &ns, &q(&c, None), 100).await.unwrap();
        assert_eq!((h.offset, h.earliest, h.publications.len()), (0, 0, 0));
        let st = rules::state(&*b, &kv, &format!("kv:{i}")).await.unwrap();
        assert!(st.records.is_empty());
        let snap = rules::recover(&*a, &kv, &format!("kv:{i}"), None, true).await.unwrap();
        assert_eq!(snap.snapshot.map(|s| s.len()), Some(0));
        // Every node answers the same empty epoch.
        assert_eq!(h.epoch, epochs[i]);
    }
    assert_eq!(keys(&mut conn).await, ["herald:epoch_seed"], "reads wrote per-channel keys");

    a.listen("fresh").await.unwrap();
    let told = rules::recover(&*a, &ns, "fresh", None, false).await.unwrap();
    assert_eq!(told.offset, 0);
    let p = b.publish(&ns, input("fresh", "\"one\"", None, None)).await.unwrap();
    assert_eq!((p.epoch.as_str(), p.offset), (told.epoch.as_str(), 1));
    eventually(Duration::from_secs(5), "the first publication on node a", async || {
        !seen.pubs.lock().is_empty()
    })
    .await;
    {
        let pubs = seen.pubs.lock();
        assert_eq!((&*pubs[0].epoch, pubs[0].offset), (told.epoch.as_str(), 1));
    }
    assert_eq!(*seen.resets.lock(), 0, "no resubscribe");
    let since = Position { epoch: told.epoch.clone(), offset: 0 };
    let r = rules::recover(&*b, &ns, "fresh", Some(&since), false).await.unwrap();
    assert_eq!((r.recovered, r.publications.len()), (Some(true), 1));
    a.unlisten("fresh").await;

    // Lost data (FLUSHALL) takes the seed with it: the channel's next stream has another epoch,
    // so positions of the lost one are never reused.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let again = b.publish(&ns, input("fresh", "\"two\"", None, None)).await.unwrap();
    assert_ne!(again.epoch, p.epoch);
    let r = rules::recover(&*a, &ns, "fresh", Some(&since), false).await.unwrap();
    assert_eq!(r.reason, Some(NotRecovered::EpochChanged));
}

/// History with `since` follows the rule of subscribe: another epoch or an offset ahead of the
/// stream is `epoch_changed`, on a used channel and on one without a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_since_ahead_is_epoch_changed() {
    let redis = Redis::start();
    let (e, _) = engine(&redis).await;
    let ns = Namespace::default();
    let q = |epoch: &str, offset| HistoryQuery {
        channel: "c".into(),
        since: Some(Position { epoch: epoch.into(), offset }),
        ..Default::default()
    };
    let empty = rules::recover(&*e, &ns, "c", None, false).await.unwrap().epoch;
    assert_eq!(rules::history(&*e, &ns, &q(&empty, 0), 100).await.unwrap().reason, None);
    let h = rules::history(&*e, &ns, &q(&empty, 3), 100).await.unwrap();
    assert_eq!(h.reason, Some(NotRecovered::EpochChanged));
    for _ in 0..5 {
        e.publish(&ns, input("c", "1", None, None)).await.unwrap();
    }
    let h = rules::history(&*e, &ns, &q(&empty, 99), 100).await.unwrap();
    assert_eq!((h.reason, h.offset), (Some(NotRecovered::EpochChanged), 5));
    let h = rules::history(&*e, &ns, &q(&empty, 5), 100).await.unwrap();
    assert_eq!((h.reason, h.publications.len()), (None, 0));
    let h = rules::history(&*e, &ns, &q(&empty, 2), 100).await.unwrap();
    assert_eq!(h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), [3, 4, 5]);
}

/// After `detach_node` the node's registration is gone and stays gone, though the hub lives on
/// (an embedding application that stopped serving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_node_stops_the_heartbeat() {
    let redis = Redis::start();
    let (e, _) = engine(&redis).await;
    let config = Config { node_id: "det-1".into(), ..Config::default() };
    let hub = herald_server::Hub::new(config, e.clone()).unwrap();
    let mut conn = raw(&redis).await;
    let registered = async |conn: &mut redis::aio::MultiplexedConnection| {
        let key: bool =
            redis::cmd("EXISTS").arg("herald:node:det-1").query_async(conn).await.unwrap();
        let listed: bool = redis::cmd("SISMEMBER")
            .arg("herald:nodes")
            .arg("det-1")
            .query_async(conn)
            .await
            .unwrap();
        key || listed
    };
    hub.attach_node();
    eventually(Duration::from_secs(5), "the node registers", async || registered(&mut conn).await)
        .await;
    hub.detach_node().await;
    assert!(!registered(&mut conn).await, "detach_node removed the registration");
    // Several heartbeat periods: nothing brings it back.
    let until = Instant::now() + herald_server::engine::redis::HEARTBEAT_EVERY * 3;
    while Instant::now() < until {
        assert!(!registered(&mut conn).await, "the heartbeat re-registered a detached node");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Serving again registers again.
    hub.attach_node();
    eventually(Duration::from_secs(5), "the node registers again", async || {
        registered(&mut conn).await
    })
    .await;
    hub.detach_node().await;
    assert!(!registered(&mut conn).await);
    drop(hub);
}
