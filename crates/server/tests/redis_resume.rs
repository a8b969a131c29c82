//! The positions / resume / keyed-state behaviours of issue 3, run against the Redis engine with
//! two nodes: publications go through one node, subscribers resume on the other.
//! Needs `cargo build --bins` first (the herald binary) and `redis-server` on PATH.

mod redis_support;

use redis_support::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

fn two_nodes(redis: &Redis, tag: &str) -> (Node, Node) {
    (Node::start(&redis.url(), &format!("{tag}-a")), Node::start(&redis.url(), &format!("{tag}-b")))
}

async fn publish_ok(api: &Api, base: &str, body: Value) -> Value {
    let (s, b) = api.publish(base, body).await;
    assert_eq!(s, 200, "{b}");
    b
}

/// One subscribe on a fresh connection; returns the reply result.
async fn subscribe_once(url: &str, channel: &str, since: Option<(&str, u64)>) -> Value {
    let opts = SubOptions {
        urls: vec![url.into()],
        channel: channel.into(),
        snapshot: false,
        since: since.map(|(e, o)| (e.to_string(), o)),
    };
    let s = Subscriber::start(opts).await;
    s.log.lock().replies[0].clone()
}

/// A client leaves, 50 publications happen (through the other node), it resumes with its last
/// position: exactly those 50 in order, then live ones. A channel that never had a publication
/// resumes from its first reply's position without loss. A foreign epoch is `epoch_changed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_recovers_exactly_what_was_missed() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "resume");
    let api = Api::default();
    for i in 0..5 {
        publish_ok(&api, &b.http(), json!({"channel": "r", "data": i})).await;
    }
    let first = Subscriber::start(SubOptions {
        urls: vec![a.ws_url()],
        channel: "r".into(),
        snapshot: false,
        since: None,
    })
    .await;
    let (epoch, offset) = first.log.lock().position.clone().unwrap();
    assert_eq!(offset, 5);
    drop(first);
    for i in 0..50 {
        publish_ok(&api, &b.http(), json!({"channel": "r", "data": {"missed": i}})).await;
    }
    let back = Subscriber::start(SubOptions {
        urls: vec![a.ws_url()],
        channel: "r".into(),
        snapshot: false,
        since: Some((epoch.clone(), offset)),
    })
    .await;
    {
        let l = back.log.lock();
        assert_eq!(l.replies[0]["recovered"], true, "{}", l.replies[0]);
        assert_eq!(l.replies[0]["offset"], 55);
        assert_eq!(l.offsets(), (6..=55).collect::<Vec<_>>());
        let missed: Vec<Value> = l.pubs.iter().map(|p| p["data"]["missed"].clone()).collect();
        assert_eq!(missed, (0..50).map(|i| json!(i)).collect::<Vec<_>>());
    }
    for i in 0..5 {
        publish_ok(&api, &a.http(), json!({"channel": "r", "data": {"live": i}})).await;
    }
    back.wait_offset(60, Duration::from_secs(10)).await;
    {
        let l = back.log.lock();
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.offsets(), (6..=60).collect::<Vec<_>>());
    }

    // A channel that never had a publication has a position too.
    let empty = subscribe_once(&a.ws_url(), "fresh", None).await;
    assert_eq!(empty["offset"], 0);
    let e0 = empty["epoch"].as_str().unwrap().to_string();
    publish_ok(&api, &b.http(), json!({"channel": "fresh", "data": "one"})).await;
    let r = subscribe_once(&b.ws_url(), "fresh", Some((&e0, 0))).await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["publications"][0]["data"], "one");

    // A position of another stream.
    let r = subscribe_once(&b.ws_url(), "r", Some(("not-this-epoch", 3))).await;
    assert_eq!(
        (r["recovered"].clone(), r["reason"].clone()),
        (json!(false), json!("epoch_changed"))
    );
    assert!(r.get("publications").is_none(), "no partial recovery: {r}");
}

/// Beyond the kept history: `history_trimmed`; beyond the recovery cap: `too_many`; the
/// history API pages the same way as with the memory engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_recovered_reasons_and_history_pages() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "reasons");
    let api = Api::default();
    let mut epoch = String::new();
    for i in 0..10 {
        let r = publish_ok(&api, &b.http(), json!({"channel": "short:x", "data": i})).await;
        epoch = r["epoch"].as_str().unwrap().into();
        publish_ok(&api, &b.http(), json!({"channel": "cap:x", "data": i})).await;
    }
    let r = subscribe_once(&a.ws_url(), "short:x", Some((&epoch, 1))).await;
    assert_eq!(
        (r["recovered"].clone(), r["reason"].clone()),
        (json!(false), json!("history_trimmed"))
    );
    assert_eq!(r["offset"], 10);
    let r = subscribe_once(&a.ws_url(), "short:x", Some((&epoch, 5))).await;
    assert_eq!(r["recovered"], true, "the last 5 are kept: {r}");
    assert_eq!(r["publications"].as_array().unwrap().len(), 5);

    let (_, h) = api.get(&a.http(), "/api/history?channel=cap:x&limit=3").await;
    let cap_epoch = h["epoch"].as_str().unwrap().to_string();
    let r = subscribe_once(&a.ws_url(), "cap:x", Some((&cap_epoch, 2))).await;
    assert_eq!((r["recovered"].clone(), r["reason"].clone()), (json!(false), json!("too_many")));
    let r = subscribe_once(&a.ws_url(), "cap:x", Some((&cap_epoch, 7))).await;
    assert_eq!(r["recovered"], true, "{r}");

    let offsets = |h: &Value| -> Vec<u64> {
        h["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(offsets(&h), [8, 9, 10]);
    assert_eq!((h["offset"].clone(), h["earliest"].clone()), (json!(10), json!(1)));
    let (_, h) = api.get(&b.http(), "/api/history?channel=cap:x&limit=3&before=8").await;
    assert_eq!(offsets(&h), [5, 6, 7]);
    let (_, h) = api
        .get(&b.http(), &format!("/api/history?channel=cap:x&limit=2&since={cap_epoch}:4"))
        .await;
    assert_eq!(offsets(&h), [5, 6]);
    let (_, h) = api.get(&b.http(), "/api/history?channel=short:x").await;
    assert_eq!((offsets(&h).len(), h["earliest"].clone()), (5, json!(6)));
    let (_, h) = api.get(&b.http(), &format!("/api/history?channel=short:x&since={epoch}:2")).await;
    assert_eq!(h["reason"], "history_trimmed");
    let (_, h) = api.get(&b.http(), "/api/history?channel=never-published").await;
    assert_eq!((h["offset"].clone(), h["earliest"].clone()), (json!(0), json!(0)));
}

/// Idempotency keys dedupe across nodes; the state limit answers 409 with code 112; state reads
/// agree from every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_and_state_limits_across_nodes() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "idem");
    let api = Api::default();
    let body = json!({"channel": "orders", "data": {"n": 1}, "idempotency_key": "op-77"});
    let before = herald_server::engine::now_rfc3339();
    let first = publish_ok(&api, &a.http(), body.clone()).await;
    let after = herald_server::engine::now_rfc3339();
    // The script writes Redis time as RFC 3339 UTC with milliseconds.
    let time = first["time"].as_str().unwrap();
    let shape: String = time.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect();
    assert_eq!(shape, "9999-99-99T99:99:99.999Z", "{time}");
    assert!(time[..10] == before[..10] || time[..10] == after[..10], "{time} vs {before}");
    let (_, h) = api.get(&b.http(), "/api/history?channel=orders").await;
    assert_eq!(h["publications"][0]["time"], time);
    let again = publish_ok(&api, &b.http(), body).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        (again["offset"].clone(), again["epoch"].clone()),
        (first["offset"].clone(), first["epoch"].clone())
    );
    let next = publish_ok(&api, &b.http(), json!({"channel": "orders", "data": 2})).await;
    assert_eq!(next["offset"], 2);

    publish_ok(&api, &a.http(), json!({"channel": "lim:x", "key": "a", "data": {"v": 1}})).await;
    publish_ok(
        &api,
        &b.http(),
        json!({"channel": "lim:x", "key": "b", "op": "merge", "data": {"v": 2}}),
    )
    .await;
    let (s, e) = api.publish(&a.http(), json!({"channel": "lim:x", "key": "c", "data": 3})).await;
    assert_eq!((s, e["error"]["code"].clone()), (409, json!(112)), "{e}");
    publish_ok(
        &api,
        &b.http(),
        json!({"channel": "lim:x", "key": "a", "op": "delete", "data": null}),
    )
    .await;
    publish_ok(&api, &a.http(), json!({"channel": "lim:x", "key": "c", "data": 3})).await;
    let (s, e) = api.publish(&a.http(), json!({"channel": "orders", "key": "k", "data": 1})).await;
    assert_eq!((s, e["error"]["code"].clone()), (400, json!(116)), "not keyed: {e}");
    let (_, sa) = api.get(&a.http(), "/api/state?channel=lim:x").await;
    let (_, sb) = api.get(&b.http(), "/api/state?channel=lim:x").await;
    assert_eq!(sa, sb);
    assert_eq!(sa["offset"], 4);
    assert_eq!(
        sa["records"],
        json!([{"key": "b", "value": {"v": 2}, "offset": 2}, {"key": "c", "value": 3, "offset": 4}])
    );
}

/// Hammer: upserts, merges and deletes over many keys through both nodes while clients
/// subscribe with `snapshot: true` at random moments on either node; each client's snapshot plus
/// its stream equals the final state, with contiguous offsets after the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_plus_stream_equals_final_state() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "hammer");
    let api = Api::default();
    const PUBS: usize = 1500;
    const KEYS: usize = 200;
    let publisher = {
        let (api, bases) = (api.clone(), [a.http(), b.http()]);
        tokio::spawn(async move {
            for i in 0..PUBS {
                let key = format!("k{}", (i * 7919) % KEYS);
                let body = match i % 5 {
                    0 | 1 => json!({"channel": "kv:h", "key": key, "op": "upsert",
                                    "data": {"i": i, "tags": [], "meta": {}, "s": "todo"}}),
                    2 | 3 => json!({"channel": "kv:h", "key": key, "op": "merge",
                                    "data": {"s": if i % 2 == 0 { json!("done") } else { Value::Null },
                                             "n": {"deep": i}, "arr": [i, {}]}}),
                    _ => json!({"channel": "kv:h", "key": key, "op": "delete", "data": null}),
                };
                let (s, e) = api.publish(&bases[i % 2], body).await;
                assert_eq!(s, 200, "{e}");
            }
        })
    };
    let mut clients = Vec::new();
    let mut seed = 0x2545_f491_u64;
    for c in 0..16 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Spread the subscribes over the publishing run.
        let target = (seed % PUBS as u64) / 2;
        let url = if c % 2 == 0 { a.ws_url() } else { b.ws_url() };
        eventually(Duration::from_secs(30), "publisher progress", || {
            let (api, base) = (api.clone(), a.http());
            async move {
                let (_, st) = api.get(&base, "/api/state?channel=kv:h").await;
                (st["offset"].as_u64().unwrap_or(0) >= target).then_some(())
            }
        })
        .await;
        clients.push(
            Subscriber::start(SubOptions {
                urls: vec![url],
                channel: "kv:h".into(),
                snapshot: true,
                since: None,
            })
            .await,
        );
    }
    publisher.await.unwrap();
    let (_, fin) = api.get(&b.http(), "/api/state?channel=kv:h").await;
    assert_eq!(fin["offset"], PUBS as u64);
    let expected: BTreeMap<String, Value> = fin["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r["value"].clone()))
        .collect();
    assert!(!expected.is_empty());
    for (i, c) in clients.iter().enumerate() {
        c.wait_offset(PUBS as u64, Duration::from_secs(30)).await;
        let l = c.log.lock();
        assert!(l.errors.is_empty(), "client {i}: {:?}", l.errors);
        let start = l.replies[0]["offset"].as_u64().unwrap();
        assert!(l.replies[0]["snapshot"].is_array());
        assert_eq!(l.offsets(), (start + 1..=PUBS as u64).collect::<Vec<_>>(), "client {i}");
        assert_eq!(l.state, expected, "client {i} (snapshot at {start})");
    }
}

/// Subscribe, history and state reads of never-used channels (through both nodes) leave no key
/// for them in Redis; the subscriber of such a channel gets the first publication, made through
/// the other node, as offset 1 of the epoch it was told (no resubscribe); the HTTP history with
/// `since` ahead of the stream answers `epoch_changed` as subscribe does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_unused_channels_leave_no_key_and_the_first_publish_has_no_gap() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "untouched");
    let api = Api::default();
    let sub = Subscriber::start(SubOptions {
        urls: vec![a.ws_url()],
        channel: "untouched".into(),
        snapshot: false,
        since: None,
    })
    .await;
    let snap = Subscriber::start(SubOptions {
        urls: vec![b.ws_url()],
        channel: "kv:untouched".into(),
        snapshot: true,
        since: None,
    })
    .await;
    for i in 0..20 {
        let (s, _) = api.get(&b.http(), &format!("/api/history?channel=never-{i}")).await;
        assert_eq!(s, 200);
        let (s, _) = api.get(&a.http(), &format!("/api/state?channel=kv:never-{i}")).await;
        assert_eq!(s, 200);
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel_keys: Vec<String> =
        redis::cmd("KEYS").arg("herald:{*").query_async(&mut conn).await.unwrap();
    assert!(channel_keys.is_empty(), "reads wrote channel keys: {channel_keys:?}");
    let (told, _) = sub.log.lock().position.clone().unwrap();
    let (_, h) = api.get(&b.http(), "/api/history?channel=untouched").await;
    assert_eq!(h["epoch"], told.as_str(), "every node answers the same empty epoch");

    let p = publish_ok(&api, &b.http(), json!({"channel": "untouched", "data": "first"})).await;
    assert_eq!((p["epoch"].as_str(), p["offset"].as_u64()), (Some(told.as_str()), Some(1)));
    sub.wait_offset(1, Duration::from_secs(10)).await;
    {
        let l = sub.log.lock();
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!((l.resubscribes, l.offsets()), (0, vec![1]));
    }
    publish_ok(&api, &a.http(), json!({"channel": "kv:untouched", "key": "k", "data": 1})).await;
    snap.wait_offset(1, Duration::from_secs(10)).await;
    assert_eq!(snap.log.lock().resubscribes, 0);

    let (_, h) =
        api.get(&a.http(), &format!("/api/history?channel=untouched&since={told}:99")).await;
    assert_eq!(h["reason"], "epoch_changed", "{h}");
}
