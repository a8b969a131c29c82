//! The Redis engine's node registration across `detach_node`, in process against a real
//! `redis-server`. What its scripts store, its limits and the epoch of an empty channel are
//! checked by the engine conformance suite (`engine_conformance.rs`) on both engines.

use herald_server::config::{Config, EngineConfig, EngineKind};
use herald_server::engine::redis::RedisEngine;
use herald_server::engine::{Delivery, Engine};
use herald_server::frame::Encoded;
use parking_lot::Mutex;
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
    fn deliver_volatile(&self, _channel: &str, _frame: Arc<str>) {}
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

async fn raw(redis: &Redis) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// Polls `f` until it is true, or panics with `what` after `within`.
async fn eventually(within: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
