//! Redis behind Sentinel and replicas: the engine finds the master through the sentinels and
//! follows it when the master is killed and a replica promoted; what subscribers resume is every
//! acknowledged publication once or an epoch change, never a position naming two publications.
//! And `engine.redis_wait_replicas`: a publish the replica did not acknowledge answers
//! `unavailable`. Real `redis-server` processes (master, `--replicaof` replica, `--sentinel`) on
//! free ports; the engine in process.

mod redis_support;

use herald_server::config::{EngineConfig, EngineKind, Namespace};
use herald_server::engine::redis::RedisEngine;
use herald_server::engine::{Delivery, Engine, EngineError, PublishInput, Window};
use herald_server::frame::Encoded;
use parking_lot::Mutex;
use redis_support::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the node's subscribers received: (epoch, offset, i) per publication.
#[derive(Default)]
struct Collect {
    /// Publications delivered.
    pubs: Mutex<Vec<(String, u64, u64)>>,
}

impl Delivery for Collect {
    fn deliver(&self, p: Arc<Encoded>) {
        let i = frame_i(&p.frame);
        self.pubs.lock().push((p.epoch.to_string(), p.offset, i));
    }
    fn reset(&self, _channel: Option<&str>) {}
    fn deliver_volatile(&self, _channel: &str, _frame: Arc<str>) {}
}

/// The `i` of a publication's data `{"i": N}` somewhere in its frame.
fn frame_i(frame: &str) -> u64 {
    fn find(v: &Value) -> Option<u64> {
        match v {
            Value::Object(m) => {
                m.get("i").and_then(Value::as_u64).or_else(|| m.values().find_map(find))
            }
            Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    find(&serde_json::from_str(frame).expect("frame is JSON")).expect("frame holds data.i")
}

fn engine_config(url: &str) -> EngineConfig {
    EngineConfig { kind: EngineKind::Redis, redis_url: url.into(), ..EngineConfig::default() }
}

async fn engine(config: EngineConfig) -> (Arc<RedisEngine>, Arc<Collect>) {
    let engine = Arc::new(RedisEngine::new(&config).unwrap());
    let collect = Arc::new(Collect::default());
    engine.attach(collect.clone());
    assert!(engine.wait_connected(Duration::from_secs(10)).await, "redis pub/sub up");
    (engine, collect)
}

fn input(channel: &str, i: u64) -> PublishInput {
    PublishInput {
        channel: channel.into(),
        kind: "t".into(),
        data: serde_json::value::to_raw_value(&json!({ "i": i })).unwrap(),
        key: None,
        op: None,
        meta: Default::default(),
    }
}

/// A replica of `master` whose link is up.
async fn replica_of(master: &RedisServer) -> RedisServer {
    let replica = RedisServer::start(&["--replicaof", &format!("127.0.0.1 {}", master.port)]);
    wait_link_up(&replica).await;
    replica
}

async fn wait_link_up(replica: &RedisServer) {
    eventually(Duration::from_secs(10), "replica link up", || async {
        (replica.replication("master_link_status").await.as_deref() == Some("up")).then_some(())
    })
    .await;
}

/// The port the sentinel names as master `m`.
async fn master_port(sentinel: &RedisServer) -> Option<u16> {
    let addr: Option<(String, u16)> =
        sentinel.query(redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("m")).await?;
    addr.map(|(_, p)| p)
}

/// Through one sentinel: publications flow; the master is killed; the engine follows the
/// promoted replica. A subscriber resuming from the last position it saw before the kill reads
/// every acknowledged publication after it exactly once, or a new epoch; no position (acked or
/// delivered) names two publications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_master_through_a_sentinel_failover() {
    let mut master = RedisServer::start(&[]);
    let replica = replica_of(&master).await;
    let sentinel = RedisServer::sentinel(master.port);
    // A failover needs the sentinel to know the replica.
    eventually(Duration::from_secs(10), "sentinel sees the replica", || async {
        let replicas: Vec<HashMap<String, String>> =
            sentinel.query(redis::cmd("SENTINEL").arg("replicas").arg("m")).await?;
        (!replicas.is_empty()).then_some(())
    })
    .await;
    let url = format!("redis+sentinel://127.0.0.1:1,127.0.0.1:{}/m", sentinel.port);
    let (e, collect) = engine(engine_config(&url)).await;
    let ns = Namespace { history_size: 10_000, ..Namespace::default() };
    let channel = "sentinel:c";
    e.listen(channel).await.unwrap();
    e.flowing(channel).await.unwrap();

    let mut acked: Vec<(String, u64, u64)> = Vec::new();
    let mut i = 0;
    for _ in 0..100 {
        i += 1;
        let r = e.publish(&ns, input(channel, i)).await.unwrap();
        acked.push((r.epoch, r.offset, i));
    }
    eventually(Duration::from_secs(5), "100 delivered", || async {
        (collect.pubs.lock().len() >= 100).then_some(())
    })
    .await;
    let (seen_epoch, seen_offset, _) = collect.pubs.lock().last().cloned().unwrap();

    master.kill9();
    // Publish on while the sentinel fails over: refusals are `unavailable`, never a false
    // success, and publishing succeeds again on the promoted replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = 0;
    while after < 100 {
        assert!(Instant::now() < deadline, "no publish succeeded on the new master in time");
        i += 1;
        match e.publish(&ns, input(channel, i)).await {
            Ok(r) => {
                if master_port(&sentinel).await == Some(replica.port) {
                    after += 1;
                }
                acked.push((r.epoch, r.offset, i));
            }
            Err(EngineError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await; // pacing while down
            }
            Err(other) => panic!("publish during failover: {other}"),
        }
    }
    assert_eq!(master_port(&sentinel).await, Some(replica.port), "the replica was promoted");
    assert_eq!(replica.replication("role").await.as_deref(), Some("master"));

    // No position names two publications, among acks and deliveries.
    let mut named: HashMap<(String, u64), u64> = HashMap::new();
    let delivered = collect.pubs.lock().clone();
    for (epoch, offset, i) in acked.iter().chain(delivered.iter()) {
        let was = named.entry((epoch.clone(), *offset)).or_insert(*i);
        assert_eq!(was, i, "position {epoch}-{offset} names publications {was} and {i}");
    }
    // The resume from the last position seen before the kill.
    let read = e
        .read(&ns, channel, Window::After { after: seen_offset, limit: 10_000 }, false)
        .await
        .unwrap();
    if read.epoch == seen_epoch {
        let got: Vec<u64> = read.publications.iter().map(|p| frame_i(&p.frame)).collect();
        let want: Vec<u64> = acked
            .iter()
            .filter(|(ep, o, _)| *ep == seen_epoch && *o > seen_offset)
            .map(|(_, _, i)| *i)
            .collect();
        assert_eq!(got, want, "every acknowledged publication after the resume point, once");
        assert!(acked.iter().all(|(ep, _, _)| *ep == seen_epoch), "one epoch throughout");
    } else {
        // Writes were lost in the failover: the resume is an epoch change, and the new epoch's
        // publications are every one acknowledged in it.
        let newer: Vec<u64> =
            acked.iter().filter(|(ep, _, _)| *ep == read.epoch).map(|a| a.2).collect();
        assert!(!newer.is_empty(), "publications were acknowledged in the new epoch");
    }
    // Pub/sub followed too: once it is up on the new master, publications reach subscribers
    // (those published before that are for the resume above).
    assert!(e.wait_connected(Duration::from_secs(10)).await, "pub/sub on the new master");
    let last = i + 1;
    e.publish(&ns, input(channel, last)).await.unwrap();
    eventually(Duration::from_secs(10), "delivery from the new master", || async {
        collect.pubs.lock().iter().any(|p| p.2 == last).then_some(())
    })
    .await;
}

/// `SENTINEL FAILOVER` (no crash): the old master is demoted to a replica and answers READONLY;
/// the engine moves to the new master, every acknowledged publication stays, in one epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_manual_failover_without_loss() {
    let master = RedisServer::start(&[]);
    let replica = replica_of(&master).await;
    let sentinel = RedisServer::sentinel(master.port);
    eventually(Duration::from_secs(10), "sentinel sees the replica", || async {
        let replicas: Vec<HashMap<String, String>> =
            sentinel.query(redis::cmd("SENTINEL").arg("replicas").arg("m")).await?;
        (!replicas.is_empty()).then_some(())
    })
    .await;
    let url = format!("redis+sentinel://127.0.0.1:{}/m?db=0", sentinel.port);
    let (e, collect) = engine(engine_config(&url)).await;
    let ns = Namespace { history_size: 10_000, ..Namespace::default() };
    let channel = "sentinel:manual";
    e.listen(channel).await.unwrap();
    e.flowing(channel).await.unwrap();
    let mut acked = Vec::new();
    for i in 1..=50 {
        acked.push(e.publish(&ns, input(channel, i)).await.unwrap());
    }
    // The sentinel refuses a failover (NOGOODSLAVE) until it has seen the replica healthy for a
    // moment; ask again until it takes it, and stop asking once the replica is promoted.
    eventually(Duration::from_secs(20), "the replica promoted", || async {
        if master_port(&sentinel).await == Some(replica.port) {
            return Some(());
        }
        let _: Option<()> = sentinel.query(redis::cmd("SENTINEL").arg("FAILOVER").arg("m")).await;
        None
    })
    .await;
    let mut i = 50;
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.len() < 100 {
        assert!(Instant::now() < deadline, "publishes did not resume on the new master");
        i += 1;
        match e.publish(&ns, input(channel, i)).await {
            Ok(r) => acked.push(r),
            Err(EngineError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(other) => panic!("publish during failover: {other}"),
        }
    }
    let epoch = acked[0].epoch.clone();
    assert!(acked.iter().all(|r| r.epoch == epoch), "a clean failover keeps the epoch");
    let offsets: Vec<u64> = acked.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (1..=100).collect::<Vec<u64>>(), "contiguous offsets");
    let read = e.read(&ns, channel, Window::After { after: 0, limit: 1000 }, false).await.unwrap();
    assert_eq!(read.publications.len(), 100, "the new master holds every publication");
    eventually(Duration::from_secs(10), "delivery from the new master", || async {
        collect.pubs.lock().iter().any(|p| p.1 == 100 && p.0 == epoch).then_some(())
    })
    .await;
}

/// `redis_wait_replicas = 1`: with the replica up a publish succeeds; with it killed, a publish
/// answers `unavailable` (113) within about the WAIT timeout; with it back, it succeeds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_refuses_an_unreplicated_publish() {
    let master = RedisServer::start(&[]);
    let mut replica = replica_of(&master).await;
    let config = EngineConfig {
        redis_wait_replicas: 1,
        redis_wait_timeout: Duration::from_millis(100),
        ..engine_config(&master.url())
    };
    let (e, _) = engine(config).await;
    let ns = Namespace::default();
    e.publish(&ns, input("wait:c", 1)).await.expect("replicated publish succeeds");

    replica.kill9();
    let started = Instant::now();
    let err = e.publish(&ns, input("wait:c", 2)).await.unwrap_err();
    assert!(matches!(err, EngineError::Unavailable(_)), "unavailable, not {err:?}");
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered within the timeout");

    replica.spawn();
    wait_link_up(&replica).await;
    let r = e.publish(&ns, input("wait:c", 3)).await.expect("replicated again");
    assert_eq!(r.offset, 3, "the refused publication is stored all the same");
}

/// A publication blocked in `WAIT` (its replica gone) holds up later publications only: a read
/// on the same node is answered while the WAIT is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_queue_behind_a_blocked_wait() {
    let master = RedisServer::start(&[]);
    let mut replica = replica_of(&master).await;
    let config = EngineConfig {
        redis_wait_replicas: 1,
        redis_wait_timeout: Duration::from_secs(30),
        ..engine_config(&master.url())
    };
    let (e, _) = engine(config).await;
    let ns = Namespace::default();
    e.publish(&ns, input("wait:r", 1)).await.expect("replicated publish succeeds");
    replica.kill9();
    let blocked = tokio::spawn({
        let (e, ns) = (e.clone(), ns.clone());
        async move { e.publish(&ns, input("wait:r", 2)).await }
    });
    // The publish is stored (and its WAIT running) once the offset shows in Redis.
    eventually(Duration::from_secs(10), "the blocked publication stored", || async {
        let offset: Option<String> = master
            .query(redis::cmd("HGET").arg("herald:{6:wait:r}:meta").arg("offset"))
            .await
            .flatten();
        (offset.as_deref() == Some("2")).then_some(())
    })
    .await;
    let read = e.read(&ns, "wait:r", Window::After { after: 0, limit: 10 }, false).await;
    assert_eq!(read.expect("a read while WAIT blocks").offset, 2);
    assert!(!blocked.is_finished(), "the WAIT was still running when the read was answered");
    blocked.abort();
}
