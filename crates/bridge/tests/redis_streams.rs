//! The Redis Streams source against a real `redis-server` (started here on a free port): events
//! reach a real WebSocket subscriber exactly once, in stream order, with contiguous offsets;
//! refused entries and malformed ones land on the dead-letter stream with their reason and do
//! not block the ones after them; the entries a dead consumer left pending are claimed by the
//! consumer that takes over and come before newer ones, the one published before the crash as a
//! duplicate; `next()` is cancel-safe; several streams keep their own order.
#![cfg(feature = "redis-streams")]

mod support;

use futures_util::StreamExt;
use herald_bridge::EventSource;
use herald_bridge::redis_streams::RedisStreamsSource;
use herald_bridge::stats::BridgeStats;
use herald_testkit::RedisProcess;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::{
    DiesBeforeAck, assert_each_once_in_order, bridge, hub, hub_with_subscriber, receive,
    spawn_runner, until,
};
use tokio::time::Instant;

async fn connect(redis: &RedisProcess) -> MultiplexedConnection {
    redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Adds entries (stream key, field/value pairs) in order, in one pipeline.
async fn add_all(conn: &mut MultiplexedConnection, entries: Vec<(String, Vec<(String, String)>)>) {
    for chunk in entries.chunks(1000) {
        let mut pipe = redis::pipe();
        for (key, fields) in chunk {
            pipe.xadd(key, "*", fields).ignore();
        }
        pipe.query_async::<()>(conn).await.unwrap();
    }
}

fn decision(key: &str, session: &str, n: u64) -> (String, Vec<(String, String)>) {
    let payload = json!({"type": "DecisionMade", "session_id": session, "n": n, "drop": "x"});
    (key.to_string(), vec![("payload".into(), payload.to_string())])
}

/// How many entries of `key` the group `herald` holds unacknowledged.
async fn pending(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    let (count, _, _, _): (u64, redis::Value, redis::Value, redis::Value) =
        redis::cmd("XPENDING").arg(key).arg("herald").query_async(conn).await.unwrap();
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_subscribers_exactly_once_in_order_and_bad_ones_are_dead_lettered() {
    let redis = RedisProcess::start();
    let mut conn = connect(&redis).await;
    const N: u64 = 2000;
    let mut entries = Vec::new();
    for n in 1..=N {
        entries.push(decision("events", "s1", n));
        if n % 500 == 0 {
            // Bad entries between good ones: no rule matches, not JSON, no payload field, an
            // invalid channel.
            entries.push((
                "events".into(),
                vec![("payload".into(), json!({"type": "Other", "n": n}).to_string())],
            ));
            entries.push(("events".into(), vec![("payload".into(), format!("not json {n}"))]));
            entries.push(("events".into(), vec![("other".into(), n.to_string())]));
            entries.push(decision("events", "bad channel", n));
        }
    }
    add_all(&mut conn, entries).await;

    let (hub, mut ws) = hub_with_subscriber("session:s1").await;
    let config = bridge(
        &hub,
        "redis_streams",
        &format!(
            "url = \"{}\"\nstreams = [\"events\"]\ndead_letter = \"events:dead\"",
            redis.url()
        ),
    );
    let stats = Arc::new(BridgeStats::new());
    let started = Instant::now();
    let source = RedisStreamsSource::new(&config, "node-a").unwrap();
    let (stop, task) = spawn_runner(&hub, &config, &stats, source);

    let got = receive(&mut ws, N as usize).await;
    let elapsed = started.elapsed();
    assert_each_once_in_order(&got, N, "stream");
    eprintln!(
        "redis streams bridge: {N} events (+16 bad) in {elapsed:?}: {:.0} events/s",
        N as f64 / elapsed.as_secs_f64()
    );

    // Every entry settled: the runner's 2,008 (8 refused by rules or hub), the source's own 8
    // (not JSON, no payload field); nothing pending in the group.
    until(Duration::from_secs(20), "every entry acknowledged", async || {
        stats.acked.load(Ordering::Relaxed) == N + 8
    })
    .await;
    assert_eq!(pending(&mut conn, "events").await, 0);
    assert_eq!(stats.published.load(Ordering::Relaxed), N);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 8);
    // The malformed ones the source dead-lettered itself count too.
    assert_eq!(stats.report("app", "redis_streams").dead_lettered, 16);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 0);
    until(Duration::from_secs(5), "lag 0", async || {
        stats.report("app", "redis_streams").lag == Some(0)
    })
    .await;

    // The dead letters, in stream order, with their reason and origin.
    let dead: StreamRangeReply = redis::cmd("XRANGE")
        .arg("events:dead")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead.ids.len(), 16, "four bad entries per 500");
    let field =
        |e: &redis::streams::StreamId, name: &str| e.get::<String>(name).unwrap_or_default();
    let source_ids: Vec<String> = dead.ids.iter().map(|e| field(e, "id")).collect();
    let mut sorted = source_ids.clone();
    sorted.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    assert_eq!(source_ids, sorted, "dead letters in stream order");
    for (i, chunk) in dead.ids.chunks(4).enumerate() {
        let n = (i as u64 + 1) * 500;
        assert!(field(&chunk[0], "reason").contains("no rule matches"), "{:?}", chunk[0]);
        assert!(field(&chunk[1], "reason").contains("payload is not JSON"), "{:?}", chunk[1]);
        assert_eq!(field(&chunk[1], "payload"), format!("not json {n}"));
        assert!(field(&chunk[2], "reason").contains("no field \"payload\""), "{:?}", chunk[2]);
        let reason = field(&chunk[3], "reason");
        assert!(reason.contains("invalid channel") || reason.contains("refused"), "{reason}");
        let payload: serde_json::Value =
            serde_json::from_str(&field(&chunk[3], "payload")).unwrap();
        assert_eq!(payload["session_id"], "bad channel");
        for e in chunk {
            assert_eq!(field(e, "stream"), "events");
            assert_eq!(field(e, "bridge"), "app");
        }
    }
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_pending_entries_are_claimed_before_newer_ones() {
    let redis = RedisProcess::start();
    let mut conn = connect(&redis).await;
    let (hub, mut ws) = hub_with_subscriber("session:s2").await;
    let config = bridge(
        &hub,
        "redis_streams",
        &format!("url = \"{}\"\nstreams = [\"jobs\"]\nclaim_idle = \"500ms\"", redis.url()),
    );
    add_all(&mut conn, (1..=10).map(|n| decision("jobs", "s2", n)).collect()).await;
    let stats = Arc::new(BridgeStats::new());
    // node-a reads all ten at once (one batch), publishes 1..3 and dies before acknowledging 3.
    let (crashed, crash) = tokio::sync::oneshot::channel();
    let first = DiesBeforeAck {
        inner: RedisStreamsSource::new(&config, "node-a").unwrap(),
        crash_at: "jobs/".to_string() + &nth_id(&mut conn, "jobs", 3).await,
        crashed: Some(crashed),
    };
    let (_stop, task) = spawn_runner(&hub, &config, &stats, first);
    tokio::time::timeout(Duration::from_secs(20), crash).await.unwrap().unwrap();
    task.abort();
    let _ = task.await;
    assert_eq!(stats.published.load(Ordering::Relaxed), 3);
    assert_eq!(receive(&mut ws, 3).await, vec![(1, 1), (2, 2), (3, 3)]);
    assert_eq!(pending(&mut conn, "jobs").await, 8, "3..10 pending to node-a");
    // Newer entries arrive before the takeover: they must come after node-a's pending ones.
    add_all(&mut conn, (11..=15).map(|n| decision("jobs", "s2", n)).collect()).await;

    let died = Instant::now();
    let source = RedisStreamsSource::new(&config, "node-b").unwrap();
    let (stop, task) = spawn_runner(&hub, &config, &stats, source);
    let got = receive(&mut ws, 12).await;
    eprintln!("redis streams bridge: node-a's entries claimed {:?} after it died", died.elapsed());
    assert_eq!(got, (4..=15).map(|n| (n, n)).collect::<Vec<_>>(), "4..15 once, in order");
    until(Duration::from_secs(10), "every entry acknowledged", async || {
        stats.acked.load(Ordering::Relaxed) == 15
    })
    .await;
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 1, "entry 3 again: a duplicate");
    assert_eq!(stats.published.load(Ordering::Relaxed), 15);
    assert_eq!(pending(&mut conn, "jobs").await, 0);
    // Nothing more arrives.
    let more = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(more.is_err(), "no sixteenth publication: {more:?}");
    let _ = stop.send(());
    task.await.unwrap();
}

/// The id of the `n`th entry (from 1) of `key`.
async fn nth_id(conn: &mut MultiplexedConnection, key: &str, n: usize) -> String {
    let range: StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(n)
        .query_async(conn)
        .await
        .unwrap();
    range.ids[n - 1].id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_is_cancel_safe_and_several_streams_keep_their_order() {
    let redis = RedisProcess::start();
    let mut conn = connect(&redis).await;
    let hub = hub();
    let config = bridge(
        &hub,
        "redis_streams",
        &format!("url = \"{}\"\nstreams = [\"a\", \"b\"]\nblock = \"2s\"", redis.url()),
    );
    let mut source = RedisStreamsSource::new(&config, "node-a").unwrap();
    // Nothing to read: next() is dropped again and again while it waits.
    for _ in 0..5 {
        assert!(tokio::time::timeout(Duration::from_millis(50), source.next()).await.is_err());
    }
    let entry = |key: &str, n: u64| {
        (key.to_string(), vec![("payload".into(), json!({"n": n}).to_string())])
    };
    add_all(&mut conn, vec![entry("a", 1), entry("b", 1), entry("a", 2), entry("b", 2)]).await;
    let first =
        tokio::time::timeout(Duration::from_secs(10), source.next()).await.unwrap().unwrap();
    assert_eq!(first.subject, "a");
    assert_eq!(first.id, format!("a/{}", nth_id(&mut conn, "a", 1).await));
    assert_eq!(first.payload, json!({"n": 1}));
    // Not acknowledged: the next read is the same event, not the one after it.
    let again =
        tokio::time::timeout(Duration::from_secs(10), source.next()).await.unwrap().unwrap();
    assert_eq!(again, first);
    let mut seen = vec![];
    source.ack(&first).await.unwrap();
    seen.push(first);
    while seen.len() < 4 {
        let event =
            tokio::time::timeout(Duration::from_secs(10), source.next()).await.unwrap().unwrap();
        source.ack(&event).await.unwrap();
        seen.push(event);
    }
    let order = |key: &str| -> Vec<u64> {
        seen.iter().filter(|e| e.subject == key).map(|e| e.payload["n"].as_u64().unwrap()).collect()
    };
    assert_eq!(order("a"), vec![1, 2]);
    assert_eq!(order("b"), vec![1, 2]);
    // A read dropped while blocked in Redis: the entry added meanwhile is delivered to it (it
    // is pending to node-a) and comes back from the next call.
    assert!(tokio::time::timeout(Duration::from_millis(50), source.next()).await.is_err());
    add_all(&mut conn, vec![entry("b", 3)]).await;
    until(Duration::from_secs(5), "the dropped read delivered entry b3", async || {
        pending(&mut conn, "b").await == 1
    })
    .await;
    let third =
        tokio::time::timeout(Duration::from_secs(10), source.next()).await.unwrap().unwrap();
    assert_eq!((third.subject.as_str(), third.payload.clone()), ("b", json!({"n": 3})));
    source.ack(&third).await.unwrap();
    assert_eq!(pending(&mut conn, "b").await, 0);
    assert_eq!(source.lag().await, Some(0));
}
