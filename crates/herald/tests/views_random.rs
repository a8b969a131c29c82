//! Live views under random load against real herald processes (issue 13's acceptance tests):
//! random upserts, merges and deletes over 200 keys while clients with 20 different filters
//! subscribe at random moments; every client's rows (initial rows plus events) must equal its
//! filter applied to the final state, by an evaluator written here. Then the same through a
//! proxy that cuts every connection at random moments (resume with `since`), on the Redis
//! engine with two nodes, and the exact fan-out of one move between views.

mod support;
mod views_support;

use herald_protocol::command::Command;
use herald_protocol::{ServerMessage, ViewEvent, ViewQuery};
use herald_testkit::proxy::{Cut, Proxy};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use support::{Hub, SECRET, Ws};
use tokio::sync::watch;
use views_support::{
    CHANNEL, ClientSpec, Route, Seen, client_specs, config, expected_rows, marker_bodies,
    marker_writes, random_writes, run_client, state_records,
};

/// Writes per `/api/publish/batch` request.
const BATCH: usize = 25;

/// Publishes one batch; every item must be accepted.
async fn publish_batch(hub: &Hub, items: &[Value]) {
    let (status, body) = hub.api("POST", "/api/publish/batch", Some(json!(items))).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), items.len());
    for (item, result) in items.iter().zip(results) {
        assert!(result.get("error").is_none(), "{item} refused: {result}");
    }
}

/// One random run's shape.
struct Plan {
    seed: u64,
    writes: usize,
    /// Which of [`client_specs`] subscribe (each once).
    clients: Vec<usize>,
    /// Batches after which every proxied connection is cut.
    cuts: usize,
}

/// What a run did, for the report and the cut test's checks.
#[derive(Debug, Default)]
struct Figures {
    events: usize,
    reconnects: usize,
    recovered: usize,
    not_recovered: Vec<String>,
    server_unsubscribes: usize,
}

/// Writes, subscribes at random moments, cuts, then compares every client with the state.
/// Clients and writes go round-robin over `hubs`; `proxies` (one per hub) carry the clients
/// when there are cuts.
async fn random_run(hubs: &[Hub], proxies: &[Proxy], plan: Plan) -> Figures {
    let specs = client_specs();
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let writes = random_writes(plan.seed, plan.writes, 200);
    let batches: Vec<&[Value]> = writes.chunks(BATCH).collect();
    let chosen: Vec<ClientSpec> = plan.clients.iter().map(|&i| specs[i].clone()).collect();
    let markers = marker_writes(&chosen, plan.seed + 1);
    let starts: Vec<usize> =
        chosen.iter().map(|_| rng.random_range(0..batches.len() * 3 / 4)).collect();
    let mut cut_after: Vec<usize> = (3..batches.len() * 3 / 4).collect();
    cut_after.shuffle(&mut rng);
    let cut_after: BTreeSet<usize> = cut_after.into_iter().take(plan.cuts).collect();
    let (progress, progress_rx) = watch::channel(0u64);

    let mut tasks = Vec::new();
    let mut cuts_done = 0;
    for (b, batch) in batches.iter().enumerate() {
        for (c, spec) in chosen.iter().enumerate().filter(|(c, _)| starts[*c] == b) {
            let node = c % hubs.len();
            let route = Route {
                url: match proxies.get(node) {
                    Some(p) => p.ws_url(),
                    None => hubs[node].ws_url(),
                },
                cuts: !proxies.is_empty(),
                // Every third client stays away long enough for the history (100) to move on.
                linger_batches: if !proxies.is_empty() && c % 3 == 0 { 6 } else { 0 },
                progress: progress_rx.clone(),
            };
            let who = format!("client {c} on node {node} ({})", spec.describe());
            let mine: Vec<(String, Value)> =
                markers.iter().filter(|(k, v)| (spec.eval)(k, v)).cloned().collect();
            let (spec, token) = (spec.clone(), spec.token(SECRET));
            tasks.push((c, tokio::spawn(run_client(who, spec, token, route, mine))));
        }
        publish_batch(&hubs[b % hubs.len()], batch).await;
        progress.send_replace(b as u64 + 1);
        if cut_after.contains(&b) {
            let how = if cuts_done % 2 == 0 { Cut::Rst } else { Cut::Fin };
            proxies.iter().for_each(|p| p.cut_all(how));
            cuts_done += 1;
        }
    }
    assert_eq!(tasks.len(), chosen.len(), "every client started during the writes");
    publish_batch(&hubs[0], &marker_bodies(&markers)).await;
    progress.send_replace(u64::MAX);

    // Tasks start in batch order; put them back in client order.
    tasks.sort_by_key(|(c, _)| *c);
    let mut seen: Vec<Seen> = Vec::new();
    for (_, t) in tasks {
        seen.push(tokio::time::timeout(Duration::from_secs(60), t).await.expect("client").unwrap());
    }
    let (_, state) = hubs[0].api("GET", &format!("/api/state?channel={CHANNEL}"), None).await;
    for hub in &hubs[1..] {
        let (_, other) = hub.api("GET", &format!("/api/state?channel={CHANNEL}"), None).await;
        assert_eq!(other, state, "every node has the same state");
    }
    assert_eq!(
        state["offset"].as_u64(),
        Some((plan.writes + markers.len()) as u64),
        "every write took an offset"
    );
    let state = state_records(&state);
    let mut figures = Figures::default();
    for (c, (spec, s)) in chosen.iter().zip(&seen).enumerate() {
        let want = expected_rows(spec, &state);
        let diff: Vec<String> = want
            .keys()
            .chain(s.rows.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|k| want.get(*k) != s.rows.get(*k))
            .map(|k| format!("{k}: holds {:?}, state {:?}", s.rows.get(k), state.get(k)))
            .collect();
        assert!(
            diff.is_empty(),
            "client {c} ({}) holds its view of the final state, but: {diff:#?}\n{s:?}",
            spec.describe()
        );
        figures.events += s.events;
        figures.reconnects += s.reconnects;
        figures.recovered += s.recovered;
        figures.not_recovered.extend(s.not_recovered.iter().cloned());
        figures.server_unsubscribes += s.server_unsubscribes;
    }
    let sizes: Vec<usize> = seen.iter().map(|s| s.rows.len()).collect();
    eprintln!(
        "{} writes + {} markers over 200 keys, {} clients (rows at the end: {sizes:?}), {} cuts: {figures:?}",
        plan.writes,
        markers.len(),
        chosen.len(),
        cuts_done
    );
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_views_under_random_writes_equal_their_filter_of_the_final_state() {
    let hub = Hub::start(&config());
    let plan = Plan { seed: 13, writes: 2000, clients: (0..20).collect(), cuts: 0 };
    let f = random_run(std::slice::from_ref(&hub), &[], plan).await;
    assert_eq!(f.reconnects, 0);
    assert!(f.events > 2000, "the views saw the writes: {f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_resumed_after_random_cuts_equal_their_filter_of_the_final_state() {
    let hub = Hub::start(&config());
    let proxy = Proxy::start(hub.addr).await;
    let plan = Plan { seed: 1313, writes: 2000, clients: (0..20).collect(), cuts: 8 };
    let f = random_run(std::slice::from_ref(&hub), std::slice::from_ref(&proxy), plan).await;
    assert!(f.reconnects >= 20, "the cuts hit the clients: {f:?}");
    assert!(proxy.accepted() >= 20 + f.reconnects, "every connection went through the proxy");
    assert!(f.recovered > 0, "some resumes replayed the missed events: {f:?}");
    assert!(
        f.not_recovered.iter().any(|r| r == "history_trimmed"),
        "some resumes came back with fresh rows: {f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_on_two_redis_nodes_equal_their_filter_of_the_final_state() {
    let redis = herald_testkit::RedisProcess::start();
    let url = redis.url();
    let args = ["--engine", "redis", "--redis-url", url.as_str()];
    let hubs = [Hub::start_with(&config(), &args), Hub::start_with(&config(), &args)];
    let plan = Plan { seed: 7, writes: 500, clients: vec![0, 1, 3, 4, 5, 6, 14, 19], cuts: 0 };
    let f = random_run(&hubs, &[], plan).await;
    assert!(f.events > 500, "the views saw the writes: {f:?}");
}

/// The next view event, whatever else arrives meanwhile is a failure.
async fn next_event(ws: &mut Ws) -> ViewEvent {
    match ws.next().await {
        Some(ServerMessage::View(e)) => *e,
        other => panic!("expected a view event, got {other:?}"),
    }
}

/// An event a subscriber must get next: operation, key, reason, offset.
type Expected = (&'static str, &'static str, Option<&'static str>, u64);

/// One keyed write through the HTTP API; it must be accepted.
async fn write(hub: &Hub, key: &str, op: &str, data: Value) {
    let body = json!({"channel": CHANNEL, "key": key, "op": op, "data": data});
    let (status, reply) = hub.publish_with(body).await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn a_record_that_moves_is_deleted_on_every_subscriber_of_its_view_and_no_other() {
    let hub = Hub::start(&config());
    write(&hub, "t1", "upsert", json!({"title": "a", "status": "todo", "assignee": "u1"})).await;
    let groups: [(Option<&str>, Option<&str>, &[&str]); 3] = [
        (Some("ActiveTasks"), None, &["t1"]),
        (Some("DoneTasks"), None, &[]),
        (None, Some(r#"assignee == "u9""#), &[]),
    ];
    let mut subscribers: Vec<(usize, Ws)> = Vec::new();
    for (g, (view, filter, initial)) in groups.iter().enumerate() {
        for _ in 0..5 {
            let mut ws = hub.client("u1", &["task:*"]).await;
            let q = ViewQuery {
                view: view.map(Into::into),
                filter: filter.map(Into::into),
                ..ViewQuery::default()
            };
            let reply = ws
                .request(Command::Subscribe {
                    channel: CHANNEL.into(),
                    since: None,
                    snapshot: false,
                    view: q,
                    presence: Default::default(),
                    preview: None,
                })
                .await
                .expect("subscribe");
            let keys: Vec<&str> = reply["initial"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["key"].as_str().unwrap())
                .collect();
            assert_eq!(&keys, initial, "{reply}");
            subscribers.push((g, ws));
        }
    }
    write(&hub, "t1", "merge", json!({"status": "done"})).await; // offset 2
    // Markers: m1 is seen by active and u9, m2 by done and u9, so every subscriber's next
    // events after the move are exactly known; anything else in between fails.
    write(&hub, "m1", "upsert", json!({"title": "m", "status": "doing", "assignee": "u9"})).await; // 3
    write(&hub, "m2", "upsert", json!({"title": "m", "status": "done", "assignee": "u9"})).await; // 4
    let expected: [&[Expected]; 3] = [
        &[("delete", "t1", Some("left"), 2), ("insert", "m1", None, 3)],
        &[("insert", "t1", None, 2), ("insert", "m2", None, 4)],
        &[("insert", "m1", None, 3), ("insert", "m2", None, 4)],
    ];
    for (g, ws) in &mut subscribers {
        for &(op, key, reason, offset) in expected[*g] {
            let e = next_event(ws).await;
            let got = (e.operation.as_str(), e.key.as_str(), e.reason.map(|r| r.as_str()));
            assert_eq!(got, (op, key, reason), "group {g}");
            assert_eq!(e.publication.offset, offset, "group {g}");
        }
    }
}
