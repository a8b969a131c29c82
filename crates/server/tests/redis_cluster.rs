//! Several Herald nodes on one Redis behave as one hub: one order, resume across nodes, and
//! clear behaviour when a node or Redis fails. Real redis-server and herald processes.
//! Needs `cargo build --bins` first (the herald binary) and `redis-server` on PATH.

mod redis_support;

use redis_support::*;
use serde_json::json;
use std::time::Duration;

fn sub_opts(urls: Vec<String>, channel: &str) -> SubOptions {
    SubOptions { urls, channel: channel.into(), snapshot: false, since: None }
}

/// Three nodes, subscribers spread over them, concurrent publishes through every node's API:
/// every subscriber sees the same order with contiguous offsets; the cluster view spans nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_order() {
    let redis = Redis::start();
    let nodes: Vec<Node> =
        (0..3).map(|i| Node::start(&redis.url(), &format!("order-{i}"))).collect();
    let mut subs = Vec::new();
    for i in 0..6 {
        subs.push(Subscriber::start(sub_opts(vec![nodes[i % 3].ws_url()], "room-1")).await);
    }
    const PER_NODE: u64 = 300;
    let api = Api::default();
    let mut publishers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let (api, base) = (api.clone(), node.http());
        publishers.push(tokio::spawn(async move {
            for i in 0..PER_NODE {
                let (status, body) = api
                    .publish(&base, json!({"channel": "room-1", "data": {"n": n, "i": i}}))
                    .await;
                assert_eq!(status, 200, "{body}");
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let total = PER_NODE * 3;
    for s in &subs {
        s.wait_offset(total, Duration::from_secs(30)).await;
    }
    let reference: Vec<String> =
        subs[0].log.lock().pubs.iter().map(|p| p["id"].as_str().unwrap().to_string()).collect();
    for s in &subs {
        let l = s.log.lock();
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.offsets(), (1..=total).collect::<Vec<_>>());
        let ids: Vec<String> = l.pubs.iter().map(|p| p["id"].as_str().unwrap().into()).collect();
        assert_eq!(ids, reference, "every subscriber sees one order");
        // Each node's publications keep their own order inside the global one.
        for n in 0..3 {
            let seq: Vec<u64> = l
                .pubs
                .iter()
                .filter(|p| p["data"]["n"] == n)
                .map(|p| p["data"]["i"].as_u64().unwrap())
                .collect();
            assert_eq!(seq, (0..PER_NODE).collect::<Vec<_>>());
        }
    }
    // Cluster view: every node lists the three live nodes and the channel's six subscribers.
    for node in &nodes {
        let base = node.http();
        eventually(Duration::from_secs(10), "cluster view spans nodes", || {
            let (api, base) = (api.clone(), base.clone());
            async move {
                let (_, info) = api.get(&base, "/api/info").await;
                let ids: Vec<&str> =
                    info["nodes"].as_array()?.iter().filter_map(|n| n["id"].as_str()).collect();
                if ids != ["order-0", "order-1", "order-2"] {
                    return None;
                }
                let (_, ch) = api.get(&base, "/api/channels").await;
                let room = ch["channels"].as_array()?.iter().find(|c| c["channel"] == "room-1")?;
                (room["subscribers"] == 6).then_some(())
            }
        })
        .await;
    }
}

/// kill -9 one node while 5,000 publications flow: its clients move to the other nodes,
/// resubscribe with `since`, and end with every offset exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_clients_resume_elsewhere() {
    let redis = Redis::start();
    let mut nodes: Vec<Node> =
        (0..3).map(|i| Node::start(&redis.url(), &format!("kill-{i}"))).collect();
    let urls: Vec<String> = nodes.iter().map(Node::ws_url).collect();
    let mut subs = Vec::new();
    for i in 0..9 {
        // Node i%3 first, then the others.
        let mut list = urls.clone();
        list.rotate_left(i % 3);
        subs.push(Subscriber::start(sub_opts(list, "flow")).await);
    }
    const TOTAL: u64 = 5000;
    const PUBLISHERS: u64 = 4;
    let api = Api::default();
    let bases = [nodes[1].http(), nodes[2].http()];
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (api, base) = (api.clone(), bases[(p % 2) as usize].clone());
        publishers.push(tokio::spawn(async move {
            for i in 0..TOTAL / PUBLISHERS {
                let (status, body) =
                    api.publish(&base, json!({"channel": "flow", "data": {"p": p, "i": i}})).await;
                assert_eq!(status, 200, "{body}");
            }
        }));
    }
    // Kill node 0 while publications flow.
    let watched = subs[0].log.clone();
    eventually(Duration::from_secs(30), "1,000 publications delivered", || {
        let n = watched.lock().pubs.len();
        async move { (n >= 1000).then_some(()) }
    })
    .await;
    nodes[0].kill9();
    for p in publishers {
        p.await.unwrap();
    }
    for s in &subs {
        s.wait_offset(TOTAL, Duration::from_secs(60)).await;
    }
    for (i, s) in subs.iter().enumerate() {
        let l = s.log.lock();
        assert!(l.errors.is_empty(), "subscriber {i}: {:?}", l.errors);
        assert_eq!(l.offsets(), (1..=TOTAL).collect::<Vec<_>>(), "subscriber {i}");
        if i % 3 == 0 {
            assert!(l.connections >= 2, "subscriber {i} on the killed node reconnected");
            let resumed = &l.replies[1..];
            assert!(
                resumed.iter().all(|r| r["recovered"] == true),
                "resumes after the kill recover: {resumed:?}"
            );
        }
    }
    // The dead node leaves the cluster view once its heartbeat expires.
    let base = nodes[1].http();
    eventually(Duration::from_secs(15), "dead node leaves /api/info", || {
        let (api, base) = (api.clone(), base.clone());
        async move {
            let (_, info) = api.get(&base, "/api/info").await;
            (info["nodes"].as_array()?.len() == 2).then_some(())
        }
    })
    .await;
}

/// SIGTERM of a node while publications flow (issue 18, item 5): it leaves the cluster view
/// before it exits (not a heartbeat expiry later), its clients move to the other nodes and
/// resume, and every subscriber ends with every offset exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_node_deregisters_and_its_clients_resume_elsewhere() {
    let redis = Redis::start();
    let mut nodes: Vec<Node> =
        (0..3).map(|i| Node::start(&redis.url(), &format!("term-{i}"))).collect();
    let urls: Vec<String> = nodes.iter().map(Node::ws_url).collect();
    let mut subs = Vec::new();
    for i in 0..6 {
        let mut list = urls.clone();
        list.rotate_left(i % 3);
        subs.push(Subscriber::start(sub_opts(list, "drain")).await);
    }
    let api = Api::default();
    let base = nodes[1].http();
    eventually(Duration::from_secs(15), "three nodes in /api/info", || {
        let (api, base) = (api.clone(), base.clone());
        async move {
            let (_, info) = api.get(&base, "/api/info").await;
            (info["nodes"].as_array()?.len() == 3).then_some(())
        }
    })
    .await;
    const TOTAL: u64 = 2000;
    let publisher = {
        let (api, base) = (api.clone(), nodes[2].http());
        tokio::spawn(async move {
            for i in 0..TOTAL {
                let (status, body) =
                    api.publish(&base, json!({"channel": "drain", "data": i})).await;
                assert_eq!(status, 200, "{body}");
            }
        })
    };
    let watched = subs[0].log.clone();
    eventually(Duration::from_secs(30), "500 publications delivered", || {
        let n = watched.lock().pubs.len();
        async move { (n >= 500).then_some(()) }
    })
    .await;
    let status = nodes[0].terminate();
    assert!(status.success(), "a drained node exits 0: {status:?}");
    // Gone from the view at once: the registration was deleted before the process exited.
    let (_, info) = api.get(&base, "/api/info").await;
    let ids: Vec<&str> =
        info["nodes"].as_array().unwrap().iter().filter_map(|n| n["id"].as_str()).collect();
    assert!(!ids.contains(&"term-0"), "the terminated node is still listed: {ids:?}");
    assert_eq!(ids.len(), 2, "the two others are: {ids:?}");
    publisher.await.unwrap();
    for s in &subs {
        s.wait_offset(TOTAL, Duration::from_secs(60)).await;
    }
    for (i, s) in subs.iter().enumerate() {
        let l = s.log.lock();
        assert!(l.errors.is_empty(), "subscriber {i}: {:?}", l.errors);
        assert_eq!(l.offsets(), (1..=TOTAL).collect::<Vec<_>>(), "subscriber {i}");
        if i % 3 == 0 {
            assert!(l.connections >= 2, "subscriber {i} on the terminated node reconnected");
            assert!(
                l.replies[1..].iter().all(|r| r["recovered"] == true),
                "resumes after the drain recover: {:?}",
                &l.replies[1..]
            );
        }
    }
}

/// Restart redis-server (all data lost): nodes reconnect by themselves and their clients get
/// `epoch_changed` resyncs (with a fresh snapshot on keyed channels), then the new stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_gives_epoch_changed() {
    let mut redis = Redis::start();
    let nodes: Vec<Node> =
        (0..2).map(|i| Node::start(&redis.url(), &format!("restart-{i}"))).collect();
    let api = Api::default();
    let plain = Subscriber::start(sub_opts(vec![nodes[0].ws_url()], "news")).await;
    let keyed = Subscriber::start(SubOptions {
        urls: vec![nodes[1].ws_url()],
        channel: "kv:board".into(),
        snapshot: true,
        since: None,
    })
    .await;
    for i in 0..10 {
        let (s, b) = api.publish(&nodes[1].http(), json!({"channel": "news", "data": i})).await;
        assert_eq!(s, 200, "{b}");
        let (s, b) = api
            .publish(
                &nodes[0].http(),
                json!({"channel": "kv:board", "key": format!("k{i}"), "op": "upsert", "data": {"v": i}}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    plain.wait_offset(10, Duration::from_secs(10)).await;
    keyed.wait_offset(10, Duration::from_secs(10)).await;
    let old_epoch = plain.log.lock().position.clone().unwrap().0;

    redis.restart();

    // Publishing works again without restarting the nodes (new epoch, offset 1).
    let first = eventually(Duration::from_secs(15), "publish after redis restart", || {
        let (api, base) = (api.clone(), nodes[1].http());
        async move {
            let (s, b) = api.publish(&base, json!({"channel": "news", "data": "after"})).await;
            (s == 200).then_some(b)
        }
    })
    .await;
    assert_ne!(first["epoch"], old_epoch);
    assert_eq!(first["offset"], 1);
    let (s, b) = api
        .publish(
            &nodes[0].http(),
            json!({"channel": "kv:board", "key": "n", "data": {"new": true}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["offset"], 1);
    // The subscribers were told to resubscribe, got epoch_changed, then the new stream.
    plain.wait_offset(1, Duration::from_secs(15)).await;
    eventually(Duration::from_secs(15), "plain subscriber on the new epoch", || {
        let l = plain.log.lock();
        let ok = l.position.as_ref().is_some_and(|(e, o)| *e == first["epoch"] && *o >= 1);
        async move { ok.then_some(()) }
    })
    .await;
    // Live publications of the new stream flow to it.
    let later = publish_later(&api, &nodes[1].http()).await;
    plain.wait_offset(later, Duration::from_secs(15)).await;
    {
        let l = plain.log.lock();
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert!(
            l.replies.iter().any(|r| r["recovered"] == false && r["reason"] == "epoch_changed"),
            "epoch_changed resync: {:?}",
            l.replies
        );
        assert_eq!(l.pubs.last().unwrap()["data"], "later");
    }
    eventually(Duration::from_secs(15), "keyed subscriber resynced", || {
        let l = keyed.log.lock();
        let ok = l.state.len() == 1 && l.state.get("n") == Some(&json!({"new": true}));
        async move { ok.then_some(()) }
    })
    .await;
    let l = keyed.log.lock();
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let resync = l
        .replies
        .iter()
        .find(|r| r["reason"] == "epoch_changed")
        .expect("keyed epoch_changed resync");
    assert!(resync["snapshot"].is_array(), "fresh snapshot with the resync: {resync}");
}

async fn publish_later(api: &Api, base: &str) -> u64 {
    let (s, b) = api.publish(base, json!({"channel": "news", "data": "later"})).await;
    assert_eq!(s, 200, "{b}");
    b["offset"].as_u64().unwrap()
}

/// Stop redis-server: publish answers 503 with code 113 and /ready says not ready; start it
/// again: publish works without restarting the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_answers_503_then_recovers() {
    let mut redis = Redis::start();
    let node = Node::start(&redis.url(), "outage-0");
    let api = Api::default();
    let (s, b) = api.publish(&node.http(), json!({"channel": "jobs", "data": 1})).await;
    assert_eq!(s, 200, "{b}");
    redis.kill();
    let (s, b) = api.publish(&node.http(), json!({"channel": "jobs", "data": 2})).await;
    assert_eq!(s, 503, "publish during the outage: {b}");
    assert_eq!(b["error"]["code"], 113);
    assert_eq!(b["error"]["name"], "unavailable");
    eventually(Duration::from_secs(10), "/ready reports the outage", || {
        let base = node.http();
        async move {
            let r = reqwest::get(format!("{base}/ready")).await.ok()?;
            (r.status().as_u16() == 503).then_some(())
        }
    })
    .await;
    redis.restart();
    let b = eventually(Duration::from_secs(15), "publish after redis is back", || {
        let (api, base) = (api.clone(), node.http());
        async move {
            let (s, b) = api.publish(&base, json!({"channel": "jobs", "data": 3})).await;
            (s == 200).then_some(b)
        }
    })
    .await;
    assert_eq!(b["offset"], 1, "redis came back empty: a new stream");
    eventually(Duration::from_secs(10), "/ready again", || {
        let base = node.http();
        async move {
            let r = reqwest::get(format!("{base}/ready")).await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
}
