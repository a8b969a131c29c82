//! Herald on a real Redis Cluster (`engine.redis_url = "redis+cluster://..."`): three masters
//! with a replica each, made by `redis-cli --cluster create`; three herald nodes on it; channels
//! spread over every master. Subscribers reach the nodes through fault-injecting proxies, and
//! 100,000 publications go in batches through every node while the proxies cut every connection
//! and one master is killed with SIGKILL and its replica takes over (`CLUSTER FAILOVER
//! TAKEOVER`). Every subscriber ends with every acknowledged publication of its channels once
//! and in order, or, on a channel whose acknowledged writes the failover lost, an
//! `epoch_changed` it was told about and everything after it; no position ever names two
//! publications. Needs `cargo build --bins` first (the herald binary), `redis-server` and
//! `redis-cli` on PATH.

mod redis_support;

use futures_util::future::join_all;
use herald_testkit::proxy::{Cut, Proxy};
use redis_support::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// Channels `c-0` … `c-999` of the default namespace.
const CHANNELS: usize = 1000;
/// Publications in all.
const PUBLICATIONS: usize = 100_000;
/// Items per `POST /api/publish/batch`.
const BATCH: usize = 100;
/// Concurrent publishers on each node.
const PUBLISHERS_PER_NODE: usize = 3;
/// Subscribers, each on a tenth of the channels (so every channel has three).
const SUBSCRIBERS: usize = 30;

/// The channel of publication `g`: consecutive publications go to channels spread over the
/// whole range (7919 is prime to 1000), so one batch covers 100 channels and every channel gets
/// one publication in every ten batches.
fn channel_of(g: usize) -> String {
    format!("c-{}", g * 7919 % CHANNELS)
}

/// The `data` of publication `id`, as the hub sends it back (compact JSON text).
fn data_of(id: &str) -> String {
    json!({ "id": id }).to_string()
}

/// An acknowledged publication.
#[derive(Debug, Clone)]
struct Ack {
    channel: String,
    epoch: String,
    offset: u64,
    id: String,
}

/// What the publishers did.
#[derive(Default)]
struct Published {
    acks: parking_lot::Mutex<Vec<Ack>>,
    /// Items acknowledged so far.
    acked: AtomicUsize,
    /// Items answered `113 unavailable` (each then tried again with its idempotency key).
    unavailable: AtomicUsize,
    /// Whole requests that failed (transport, 503...), tried again as they were.
    failed_requests: AtomicUsize,
    /// Acknowledgements that were `duplicate: true` (a retry of a publication that was stored).
    duplicates: AtomicUsize,
    /// What must not happen: any other error, or items never acknowledged by the deadline.
    errors: parking_lot::Mutex<Vec<String>>,
    /// Every publisher is done.
    done: AtomicBool,
    /// By node.
    nodes: parking_lot::Mutex<BTreeMap<usize, NodeStats>>,
}

/// What the publishers of one node saw.
#[derive(Debug, Default)]
struct NodeStats {
    acked: usize,
    unavailable: usize,
    /// The first few `unavailable` messages and the last, with the time since the start.
    unavailable_msgs: Vec<(Duration, String)>,
    last_unavailable: Option<(Duration, String)>,
    /// The last acknowledgement, since the start.
    last_ack: Option<Duration>,
    /// The slowest batch request.
    slowest: Duration,
}

/// Publishes batches `next`, `next + 1`, … through `base` until every batch is taken; retries
/// what failed as `unavailable` (and whole failed requests) with the same idempotency keys.
async fn publisher(
    api: Api,
    node: usize,
    base: String,
    next: Arc<AtomicUsize>,
    out: Arc<Published>,
    started: Instant,
    deadline: Instant,
) {
    loop {
        let b = next.fetch_add(1, SeqCst);
        if b >= PUBLICATIONS / BATCH {
            return;
        }
        if Instant::now() > deadline {
            out.errors.lock().push(format!("node {node}: batch {b} not sent, the deadline passed"));
            return;
        }
        let mut pending: Vec<(String, Value)> = (b * BATCH..(b + 1) * BATCH)
            .map(|g| {
                let id = format!("p{g}");
                let item =
                    json!({"channel": channel_of(g), "data": {"id": id}, "idempotency_key": id});
                (id, item)
            })
            .collect();
        while !pending.is_empty() {
            if Instant::now() > deadline {
                out.errors.lock().push(format!(
                    "batch {b}: {} items never acknowledged, e.g. {}",
                    pending.len(),
                    pending[0].1
                ));
                break;
            }
            let items: Vec<Value> = pending.iter().map(|(_, item)| item.clone()).collect();
            let asked = Instant::now();
            let (status, body) = api.publish_batch(&base, &items).await;
            {
                let mut nodes = out.nodes.lock();
                let stats = nodes.entry(node).or_default();
                stats.slowest = stats.slowest.max(asked.elapsed());
            }
            let results = match (status, body["results"].as_array()) {
                (200, Some(results)) if results.len() == items.len() => results.clone(),
                (0 | 408 | 429 | 503, _) => {
                    out.failed_requests.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await; // retry pacing
                    continue;
                }
                _ => {
                    out.errors.lock().push(format!("batch {b}: HTTP {status}: {body}"));
                    break;
                }
            };
            let mut again = Vec::new();
            for ((id, item), r) in pending.into_iter().zip(results) {
                if let Some(err) = r.get("error") {
                    if err["code"] == 113 {
                        out.unavailable.fetch_add(1, SeqCst);
                        let mut nodes = out.nodes.lock();
                        let stats = nodes.entry(node).or_default();
                        stats.unavailable += 1;
                        let msg =
                            (started.elapsed(), format!("{} {}", item["channel"], err["message"]));
                        if stats.unavailable_msgs.len() < 3 {
                            stats.unavailable_msgs.push(msg.clone());
                        }
                        stats.last_unavailable = Some(msg);
                        again.push((id, item));
                    } else {
                        out.errors.lock().push(format!("{id} on {}: {err}", item["channel"]));
                    }
                    continue;
                }
                if r["duplicate"] == true {
                    out.duplicates.fetch_add(1, SeqCst);
                }
                let (Some(channel), Some(epoch), Some(offset)) =
                    (r["channel"].as_str(), r["epoch"].as_str(), r["offset"].as_u64())
                else {
                    out.errors.lock().push(format!("{id}: a result without a position: {r}"));
                    continue;
                };
                if channel != item["channel"] {
                    out.errors.lock().push(format!("{id}: result for {channel}, not {item}"));
                }
                out.acks.lock().push(Ack {
                    channel: channel.into(),
                    epoch: epoch.into(),
                    offset,
                    id,
                });
                out.acked.fetch_add(1, SeqCst);
                let mut nodes = out.nodes.lock();
                let stats = nodes.entry(node).or_default();
                stats.acked += 1;
                stats.last_ack = Some(started.elapsed());
            }
            if !again.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await; // retry pacing while down
            }
            pending = again;
        }
    }
}

/// Waits until `n` publications are acknowledged (or every publisher is done).
async fn wait_acked(published: &Published, n: usize, what: &str) {
    eventually(Duration::from_secs(80), what, || async {
        (published.acked.load(SeqCst) >= n || published.done.load(SeqCst)).then_some(())
    })
    .await;
}

/// The current (epoch, offset) of `channel` as `base` answers `GET /api/history`.
async fn current_position(api: &Api, base: &str, channel: &str) -> (String, u64) {
    let path = format!("/api/history?channel={channel}&limit=1");
    eventually(Duration::from_secs(10), "history answered", || async {
        let (status, body) = api.get(base, &path).await;
        if status != 200 {
            return None;
        }
        Some((body["epoch"].as_str()?.to_string(), body["offset"].as_u64()?))
    })
    .await
}

/// Three masters, 1,000 channels over all of them, 30 subscribers (100 channels each) through a
/// proxy per node, 100,000 publications in batches of 100 from three publishers per node. Meanwhile
/// the proxies cut every connection three times (RST, FIN, RST) and one master is killed with
/// SIGKILL and its replica takes over. At the end every subscriber holds its channels' current
/// positions, and: offsets per channel and epoch exactly once and in order; every acknowledged
/// publication exactly once (from where the subscriber's run of that epoch began); an epoch
/// change only on a channel of the killed master and only as an `epoch_changed` resync; no
/// position naming two publications, among acknowledgements and deliveries; no publication
/// acknowledged at two positions (a retry never duplicates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_masters_every_offset_once_through_failover() {
    let started = Instant::now();
    let publish_deadline = started + Duration::from_secs(65);
    let final_deadline = started + Duration::from_secs(88);
    let mut cluster = RedisCluster::start().await;
    let nodes: Vec<Node> =
        (0..3).map(|i| Node::start(&cluster.url(), &format!("shard-{i}"))).collect();
    let proxies: Vec<Proxy> = join_all(nodes.iter().map(|n| Proxy::start(n.addr))).await;
    let channels: Vec<String> = (0..CHANNELS).map(|c| format!("c-{c}")).collect();
    let channel_set: HashSet<String> = channels.iter().cloned().collect();

    // Subscriber s takes the channels c with c % 10 == s % 10, so each channel has three
    // subscribers, which start on three different nodes; each reconnects through the next proxy.
    let subs: Vec<MultiSubscriber> = join_all((0..SUBSCRIBERS).map(|s| {
        let urls: Vec<String> = (0..3).map(|k| proxies[(s + k) % 3].ws_url()).collect();
        let mine: Vec<String> =
            (0..CHANNELS).filter(|c| c % 10 == s % 10).map(|c| format!("c-{c}")).collect();
        MultiSubscriber::start(urls, mine)
    }))
    .await;
    eprintln!("cluster, 3 nodes, {SUBSCRIBERS} subscribers up after {:?}", started.elapsed());

    let published = Arc::new(Published::default());
    let next = Arc::new(AtomicUsize::new(0));
    let api = Api::default();
    let mut publishers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for _ in 0..PUBLISHERS_PER_NODE {
            publishers.push(tokio::spawn(publisher(
                api.clone(),
                n,
                node.http(),
                next.clone(),
                published.clone(),
                started,
                publish_deadline,
            )));
        }
    }
    let publishing = {
        let published = published.clone();
        async move {
            for p in publishers {
                p.await.expect("publisher task");
            }
            published.done.store(true, SeqCst);
        }
    };

    // The faults, at points of progress.
    struct Failover {
        victim: usize,
        replica: usize,
        /// The other two masters.
        survivors: Vec<usize>,
        acked_at_kill: usize,
        took: Duration,
    }
    let chaos = async {
        wait_acked(&published, PUBLICATIONS * 15 / 100, "15% acknowledged").await;
        for p in &proxies {
            p.cut_all(Cut::Rst);
        }
        eprintln!("{:?}: cut (RST) at {} acked", started.elapsed(), published.acked.load(SeqCst));

        wait_acked(&published, PUBLICATIONS * 30 / 100, "30% acknowledged").await;
        let masters = cluster.masters().await;
        assert_eq!(masters.len(), 3, "three masters");
        let victim = masters[0];
        let replica = cluster.replica_of(victim).await;
        let acked_at_kill = published.acked.load(SeqCst);
        cluster.kill9(victim);
        let killed = Instant::now();
        cluster.failover(replica).await;
        let took = killed.elapsed();
        eprintln!(
            "{:?}: killed master {victim} (port {}) at {acked_at_kill} acked; replica {replica} \
             took over in {took:?}",
            killed.duration_since(started),
            cluster.servers[victim].port
        );

        wait_acked(&published, PUBLICATIONS * 55 / 100, "55% acknowledged").await;
        for p in &proxies {
            p.cut_all(Cut::Fin);
        }
        eprintln!("{:?}: cut (FIN) at {} acked", started.elapsed(), published.acked.load(SeqCst));

        wait_acked(&published, PUBLICATIONS * 80 / 100, "80% acknowledged").await;
        for p in &proxies {
            p.cut_all(Cut::Rst);
        }
        eprintln!("{:?}: cut (RST) at {} acked", started.elapsed(), published.acked.load(SeqCst));
        let survivors: Vec<usize> = masters.iter().copied().filter(|m| *m != victim).collect();
        Failover { victim, replica, survivors, acked_at_kill, took }
    };
    let (failover, ()) = tokio::join!(chaos, publishing);
    eprintln!(
        "published in {:?}: {} acked, {} unavailable answers, {} failed requests, {} duplicates",
        started.elapsed(),
        published.acked.load(SeqCst),
        published.unavailable.load(SeqCst),
        published.failed_requests.load(SeqCst),
        published.duplicates.load(SeqCst),
    );
    for (n, stats) in published.nodes.lock().iter() {
        eprintln!("node {n}: {stats:?}");
    }
    {
        let errors = published.errors.lock();
        if !errors.is_empty() {
            for (n, node) in nodes.iter().enumerate() {
                let lines = node.log_lines();
                let notable: Vec<&String> =
                    lines.iter().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
                eprintln!("node {n}: {} warnings/errors in its log, the last 15:", notable.len());
                for l in &notable[notable.len().saturating_sub(15)..] {
                    eprintln!("  {l}");
                }
            }
        }
        assert!(
            errors.is_empty(),
            "publishing failed: {} errors, e.g. {:?}",
            errors.len(),
            &errors[..errors.len().min(10)]
        );
    }
    assert!(
        failover.acked_at_kill < PUBLICATIONS,
        "publishing went on after the kill (acked at kill: {})",
        failover.acked_at_kill
    );
    // The channels are spread over every master, each channel on one: the channels each
    // master's keys name, now that the replica serves the killed master's slots.
    let masters = cluster.masters().await;
    let mut expected = failover.survivors.clone();
    expected.push(failover.replica);
    expected.sort();
    assert_eq!(masters, expected, "the survivors and the promoted replica are the masters");
    let mut on_master: Vec<(usize, BTreeSet<String>)> = Vec::new();
    for &m in &masters {
        on_master.push((m, channels_in_keys(&cluster.keys(m).await, &channel_set)));
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (m, on) in &on_master {
        assert!(!on.is_empty(), "master {m} serves none of the channels");
        for c in on {
            if let Some(other) = seen.insert(c.clone(), *m) {
                panic!("{c} has keys on masters {other} and {m}");
            }
        }
    }
    assert_eq!(seen.len(), CHANNELS, "every channel's keys are on a master");
    let victim_channels: BTreeSet<String> =
        on_master.iter().find(|(m, _)| *m == failover.replica).map(|(_, on)| on.clone()).unwrap();
    eprintln!(
        "channels per master: {:?}; the killed master {} (its replica {}) served {}; takeover {:?}",
        on_master.iter().map(|(m, on)| (*m, on.len())).collect::<Vec<_>>(),
        failover.victim,
        failover.replica,
        victim_channels.len(),
        failover.took
    );

    let acks = published.acks.lock().clone();
    // Each publication acknowledged at one position only (a retry never duplicates), and every
    // one acknowledged.
    let mut by_id: HashMap<&str, (&str, &str, u64)> = HashMap::new();
    let mut twice = Vec::new();
    for a in &acks {
        let at = (a.channel.as_str(), a.epoch.as_str(), a.offset);
        if let Some(was) = by_id.insert(&a.id, at)
            && was != at
        {
            twice.push(format!("{} acknowledged at {was:?} and {at:?}", a.id));
        }
    }
    assert!(twice.is_empty(), "publications acknowledged twice: {twice:?}");
    assert_eq!(by_id.len(), PUBLICATIONS, "every publication acknowledged");

    // Wait for every subscriber to hold every channel's current position.
    let mut current: HashMap<String, (String, u64)> = HashMap::new();
    for chunk in channels.chunks(50) {
        let got = join_all(chunk.iter().enumerate().map(|(i, c)| {
            let (api, base) = (api.clone(), nodes[i % 3].http());
            async move { (c.clone(), current_position(&api, &base, c).await) }
        }))
        .await;
        current.extend(got);
    }
    // (subscriber, channel, its position) short of the current position.
    type Lagging = Vec<(usize, String, Option<(String, u64)>)>;
    loop {
        let mut lagging: Lagging = Vec::new();
        for (s, sub) in subs.iter().enumerate() {
            let l = sub.log.lock();
            for c in &sub.channels {
                let at = l.streams.get(c).and_then(|st| st.position.clone());
                if at.as_ref() != current.get(c) {
                    lagging.push((s, c.clone(), at));
                }
            }
        }
        if lagging.is_empty() {
            break;
        }
        if Instant::now() > final_deadline {
            let shown: Vec<String> = lagging
                .iter()
                .take(10)
                .map(|(s, c, at)| {
                    let l = subs[*s].log.lock();
                    format!(
                        "subscriber {s} {c}: at {at:?}, current {:?}, starts {:?}; its errors {:?}",
                        current[c],
                        l.streams.get(c).map(|st| st.starts.clone()),
                        &l.errors[..l.errors.len().min(5)]
                    )
                })
                .collect();
            panic!(
                "{} (subscriber, channel) pairs short of the current position after {:?}:\n{}",
                lagging.len(),
                started.elapsed(),
                shown.join("\n")
            );
        }
        // A channel may have started a new epoch since it was read (a lost write found late):
        // read the lagging channels again.
        let again: BTreeSet<String> = lagging.iter().map(|(_, c, _)| c.clone()).collect();
        if again.len() <= 50 {
            for c in again {
                let at = current_position(&api, &nodes[0].http(), &c).await;
                current.insert(c, at);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("every subscriber at the current positions after {:?}", started.elapsed());

    // No position names two publications, among acknowledgements and deliveries.
    let mut named: HashMap<(String, String, u64), String> = HashMap::new();
    let mut clashes = Vec::new();
    for a in &acks {
        named.insert((a.channel.clone(), a.epoch.clone(), a.offset), data_of(&a.id));
    }
    for (s, sub) in subs.iter().enumerate() {
        let l = sub.log.lock();
        for (c, st) in &l.streams {
            for (e, o, data) in &st.pubs {
                let was = named.entry((c.clone(), e.clone(), *o)).or_insert_with(|| data.clone());
                if was != data {
                    clashes.push(format!("{c} {e}:{o}: {was} and {data} (subscriber {s})"));
                }
            }
        }
    }
    assert!(
        clashes.is_empty(),
        "positions naming two publications: {:?}",
        &clashes[..clashes.len().min(20)]
    );

    // What each subscriber saw.
    let mut acked_by_channel: HashMap<&str, BTreeMap<(&str, u64), &str>> = HashMap::new();
    for a in &acks {
        acked_by_channel.entry(&a.channel).or_default().insert((&a.epoch, a.offset), &a.id);
    }
    let mut violations = Vec::new();
    let mut epoch_changed: BTreeSet<String> = BTreeSet::new();
    let mut missed_in_old_epochs = 0usize;
    let (mut resubscribes, mut unavailable, mut connections, mut resyncs) = (0, 0, 0, 0);
    let mut disconnects: BTreeMap<u64, usize> = BTreeMap::new();
    for (s, sub) in subs.iter().enumerate() {
        let l = sub.log.lock();
        if l.error_count > 0 {
            violations.push(format!(
                "subscriber {s}: {} violations, e.g. {:?}",
                l.error_count,
                &l.errors[..l.errors.len().min(10)]
            ));
        }
        resubscribes += l.resubscribes;
        unavailable += l.unavailable;
        connections += l.connections;
        for (code, n) in &l.disconnects {
            *disconnects.entry(*code).or_default() += n;
        }
        for c in &sub.channels {
            let st = &l.streams[c];
            let (final_epoch, _) = &current[c];
            if st.starts.len() > 1 {
                epoch_changed.insert(c.clone());
                resyncs += st.starts.len() - 1;
            }
            // Each publication once per epoch.
            let mut once: HashSet<(&str, &str)> = HashSet::new();
            for (e, o, data) in &st.pubs {
                if !once.insert((e, data)) {
                    violations.push(format!("subscriber {s} {c}: {data} twice in {e} (at {o})"));
                }
            }
            // Where its run of the final epoch began; every acknowledged publication after it.
            let Some((_, start, _)) = st.starts.iter().find(|(e, _, _)| e == final_epoch) else {
                violations.push(format!(
                    "subscriber {s} {c}: never resynced to the final epoch {final_epoch}: {:?}",
                    st.starts
                ));
                continue;
            };
            let got: HashMap<u64, &str> = st
                .pubs
                .iter()
                .filter(|(e, _, _)| e == final_epoch)
                .map(|(_, o, d)| (*o, d.as_str()))
                .collect();
            let acked = acked_by_channel.get(c.as_str()).cloned().unwrap_or_default();
            for ((e, o), id) in &acked {
                if e == final_epoch && o > start {
                    if got.get(o).copied() != Some(data_of(id).as_str()) {
                        violations.push(format!(
                            "subscriber {s} {c}: acknowledged {id} at {e}:{o} not received (got {:?})",
                            got.get(o)
                        ));
                    }
                } else if e != final_epoch {
                    epoch_changed.insert(c.clone());
                    // Acknowledged in an epoch that ended: received, or after the last position
                    // the subscriber held in it (lost with the failover, told by the resync).
                    let held = st.pubs.iter().any(|(pe, po, _)| pe == e && po == o);
                    if !held {
                        missed_in_old_epochs += 1;
                    }
                }
            }
        }
    }
    let elsewhere: Vec<&String> =
        epoch_changed.iter().filter(|c| !victim_channels.contains(*c)).collect();
    if !elsewhere.is_empty() {
        violations.push(format!(
            "epoch changed on {} channels the killed master did not serve, e.g. {:?}",
            elsewhere.len(),
            &elsewhere[..elsewhere.len().min(10)]
        ));
    }
    eprintln!(
        "subscribers: {connections} connections (disconnect pushes by code {disconnects:?}), \
         {resubscribes} resubscribe pushes, {unavailable} \
         subscribes answered 113, {resyncs} resyncs; epoch changed on {} channels (of {} on the \
         killed master); {missed_in_old_epochs} acknowledged publications of ended epochs after \
         a subscriber's last position in them; {:?} in all",
        epoch_changed.len(),
        victim_channels.len(),
        started.elapsed()
    );
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations[..violations.len().min(30)].join("\n")
    );
}

/// Channels whose keys land on each of the three masters: a subscriber on each node subscribes
/// to all of them, and right after the replies one publication per channel goes through each
/// node; every subscriber gets the three on every channel, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_means_flowing_on_every_master() {
    let cluster = RedisCluster::start().await;
    let nodes: Vec<Node> =
        (0..3).map(|i| Node::start(&cluster.url(), &format!("flow-{i}"))).collect();
    let channels: Vec<String> = (0..150).map(|c| format!("flow-{c}")).collect();
    let subs: Vec<MultiSubscriber> =
        join_all(nodes.iter().map(|n| MultiSubscriber::start(vec![n.ws_url()], channels.clone())))
            .await;
    for s in &subs {
        let l = s.log.lock();
        for c in &channels {
            assert_eq!(l.streams[c].position.as_ref().map(|p| p.1), Some(0), "{c} is empty");
        }
    }
    let api = Api::default();
    for (k, node) in nodes.iter().enumerate() {
        let items: Vec<Value> = channels
            .iter()
            .map(|c| json!({"channel": c, "data": {"id": format!("{c}/{k}")}}))
            .collect();
        let (status, body) = api.publish_batch(&node.http(), &items).await;
        assert_eq!(status, 200, "{body}");
        for (c, r) in channels.iter().zip(body["results"].as_array().expect("results")) {
            assert!(r.get("error").is_none(), "{c}: {r}");
            assert_eq!(r["offset"], k as u64 + 1, "{c}: {r}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, s) in subs.iter().enumerate() {
        loop {
            let short: Vec<(String, Option<(String, u64)>)> = {
                let l = s.log.lock();
                channels
                    .iter()
                    .filter(|c| l.streams[*c].position.as_ref().map(|p| p.1) != Some(3))
                    .map(|c| (c.clone(), l.streams[c].position.clone()))
                    .collect()
            };
            if short.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "subscriber on node {i}: {} channels short of offset 3, e.g. {:?}; errors {:?}",
                short.len(),
                &short[..short.len().min(5)],
                s.log.lock().errors
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let l = s.log.lock();
        assert!(l.errors.is_empty(), "subscriber on node {i}: {:?}", l.errors);
        for c in &channels {
            let st = &l.streams[c];
            assert_eq!(st.starts.len(), 1, "{c}: one run, no resync: {:?}", st.starts);
            let got: Vec<(u64, &str)> = st.pubs.iter().map(|(_, o, d)| (*o, d.as_str())).collect();
            let want: Vec<String> = (0..3).map(|k| data_of(&format!("{c}/{k}"))).collect();
            let want: Vec<(u64, &str)> =
                want.iter().enumerate().map(|(k, d)| (k as u64 + 1, d.as_str())).collect();
            assert_eq!(got, want, "subscriber on node {i}, {c}");
        }
    }
    // The channels did cover every master.
    let set: HashSet<String> = channels.iter().cloned().collect();
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3);
    let mut covered = BTreeSet::new();
    for m in masters {
        let on = channels_in_keys(&cluster.keys(m).await, &set);
        assert!(!on.is_empty(), "master {m} serves none of the channels");
        covered.extend(on);
    }
    assert_eq!(covered.len(), channels.len(), "every channel's keys are on a master");
}

/// The harness itself, without Herald: six servers make three masters (the first three, which
/// `url` names) with one replica each; `failover` with the master alive (FORCE) swaps the roles;
/// with the new master killed, `failover` of its replica (TAKEOVER) promotes it and the
/// survivors agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_harness_fails_over() {
    let mut cluster = RedisCluster::start().await;
    assert_eq!(cluster.masters().await, vec![0, 1, 2], "the first three are the masters");
    assert_eq!(cluster.nodes().await.len(), 6);
    let mut replicas = BTreeSet::new();
    for m in 0..3 {
        replicas.insert(cluster.replica_of(m).await);
    }
    assert_eq!(replicas, BTreeSet::from([3, 4, 5]), "one replica each");
    assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));

    // FORCE, the master alive: the replica becomes master, the master its replica.
    let r = cluster.replica_of(0).await;
    cluster.failover(r).await;
    assert_eq!(cluster.servers[r].replication("role").await.as_deref(), Some("master"));
    eventually(Duration::from_secs(10), "the old master follows the new one", || async {
        let follows = cluster.servers[0].replication("role").await.as_deref() == Some("slave")
            && cluster.servers[0].replication("master_link_status").await.as_deref() == Some("up");
        follows.then_some(())
    })
    .await;
    assert_eq!(cluster.replica_of(r).await, 0);
    assert!(cluster.masters().await.contains(&r));

    // TAKEOVER, the master dead: the old master is master again.
    cluster.kill9(r);
    cluster.failover(0).await;
    let masters = cluster.masters().await;
    assert!(masters.contains(&0) && !masters.contains(&r), "{masters:?}");
    assert_eq!(masters.len(), 3);
    assert!(cluster.healthy(false).await, "the survivors agree on a complete cluster");
}
