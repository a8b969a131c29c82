//! Presence and volatile events on a cluster (issue 14's acceptance tests): herald processes on
//! one redis-server. Many members join, update and leave at random while connections are cut
//! (every member map then equals the real members, and `GET /api/presence` on every node); a
//! node killed with -9 loses its members everywhere within the reap delay, except one that
//! moved; a join and leave inside the window says nothing; volatile events cross nodes and are
//! kept nowhere.

mod presence_support;
mod support;

use futures_util::future::join_all;
use herald_protocol::command::Command;
use herald_protocol::{PresenceMode, PresenceQuery, ServerMessage, ViewQuery};
use herald_testkit::proxy::{Cut, Proxy};
use presence_support::{CONFIG, Client, Cluster, Members, api_members, api_nodes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{Hub, Ws};

/// How long a settled cluster may take to show a change to everyone.
const SETTLE: Duration = Duration::from_secs(15);

/// Clients of the random test (a debug build runs them in a few seconds).
const CLIENTS: usize = 200;

/// Random rounds of join / update / leave.
const ROUNDS: usize = 6;

/// What every joined member's map should be: the members the test made, plus markers.
fn expected(clients: &[Client], joined: &[bool], markers: &[Client]) -> Members {
    clients
        .iter()
        .zip(joined)
        .filter(|(_, j)| **j)
        .map(|(c, _)| c)
        .chain(markers)
        .map(|c| (c.member.clone(), (c.member.trim_end_matches("/tab").into(), c.info.clone())))
        .collect()
}

/// Joins one marker member per node (straight to the node, never cut) and waits until every
/// joined client holds all of them: every change queued on any node before is then published
/// and seen (a node publishes its pending changes in the order they came).
async fn markers_seen(
    hubs: &[Hub],
    channel: &str,
    clients: &[Client],
    joined: &[bool],
    tag: &str,
) -> Vec<Client> {
    let mut markers = Vec::new();
    for (n, hub) in hubs.iter().enumerate() {
        let m = Client::start(&format!("marker{tag}{n}"), hub.ws_url(), channel, json!({})).await;
        m.join().await;
        markers.push(m);
    }
    let ids: Vec<String> = markers.iter().map(|m| m.member.clone()).collect();
    let waits =
        clients.iter().chain(&markers).zip(joined.iter().chain(&[true; 8])).map(|(c, j)| {
            let ids = ids.clone();
            async move {
                if !*j {
                    return;
                }
                let has = move |m: &Members| ids.iter().all(|id| m.contains_key(id));
                if let Err(s) = c.until(SETTLE, has).await {
                    panic!("{} never saw the markers: {s:?}", c.member);
                }
            }
        });
    join_all(waits).await;
    markers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_members_on_three_nodes_with_cuts_agree_with_every_node() {
    let cluster = Cluster::start(3, CONFIG);
    let hubs = &cluster.hubs;
    let mut proxies = Vec::new();
    for hub in hubs {
        proxies.push(Proxy::start(hub.addr).await);
    }
    let channel = "room:random";
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let url = proxies[i % 3].ws_url();
        clients.push(Client::start(&format!("u{i}"), url, channel, json!({"v": 0})).await);
    }
    let mut joined = vec![false; CLIENTS];
    let mut rng = StdRng::seed_from_u64(14);
    let (mut cuts, mut actions) = (0, 0);
    for round in 0..ROUNDS {
        let mut plan = Vec::new();
        for (i, j) in joined.iter_mut().enumerate() {
            let roll: f64 = rng.random();
            // Round 0 joins nearly everyone; then a mix of the three.
            let act = match (*j, round) {
                (false, 0) if roll < 0.9 => 1,
                (false, _) if roll < 0.5 => 1,
                (true, r) if r > 0 && roll < 0.2 => 2,
                (true, r) if r > 0 && roll < 0.6 => 3,
                _ => 0,
            };
            if act == 1 {
                *j = true;
            } else if act == 2 {
                *j = false;
            }
            plan.push((i, act, rng.random_range(0..1000u32)));
        }
        actions += plan.iter().filter(|p| p.1 != 0).count();
        let work = clients.iter_mut().zip(&plan).map(|(c, &(_, act, v))| async move {
            match act {
                1 => c.join().await,
                2 => c.leave().await,
                3 => c.update(json!({"v": v, "round": round})).await,
                _ => {}
            }
        });
        // Cut one node's connections while the round's commands are in flight.
        let cut = async {
            if round > 0 {
                tokio::task::yield_now().await;
                let how = if round % 2 == 0 { Cut::Rst } else { Cut::Fin };
                proxies[round % 3].cut_all(how);
                cuts += 1;
            }
        };
        tokio::join!(join_all(work), cut);
    }
    let markers = markers_seen(hubs, channel, &clients, &joined, "").await;
    let want = expected(&clients, &joined, &markers);
    let mut figures = (0, 0, 0, 0);
    for (c, j) in clients.iter().zip(&joined) {
        let s = c.snapshot().await;
        figures.0 += s.reconnects;
        figures.1 += s.recovered;
        figures.2 += s.fresh_lists;
        figures.3 += s.log.len();
        if *j {
            assert!(s.joined);
            assert_eq!(s.members, want, "{}'s member map is the real set of members", c.member);
        }
    }
    for (n, hub) in hubs.iter().enumerate() {
        assert_eq!(api_members(hub, channel).await, want, "GET /api/presence on node {n}");
    }
    // Each member's record names the node its connection is on.
    let nodes = api_nodes(&hubs[0], channel).await;
    for (i, c) in clients.iter().enumerate().filter(|(i, _)| joined[*i]) {
        let marker = &markers[i % 3].member;
        assert_eq!(nodes[&c.member], nodes[marker], "{} on node {}", c.member, i % 3);
    }
    let distinct: BTreeSet<&String> = markers.iter().map(|m| &nodes[&m.member]).collect();
    assert_eq!(distinct.len(), 3, "three node ids");
    let accepted: usize = proxies.iter().map(Proxy::accepted).sum();
    assert!(figures.0 >= CLIENTS / 3, "the cuts hit the clients: {figures:?}");
    assert!(figures.1 > 0, "some resumes replayed the missed changes: {figures:?}");
    eprintln!(
        "{CLIENTS} clients on 3 nodes, {actions} joins/updates/leaves in {ROUNDS} rounds, \
         {cuts} cuts ({accepted} connections, {} reconnects, {} resumes recovered, {} fresh lists, \
         {} events applied), {} members at the end, {:?}",
        figures.0,
        figures.1,
        figures.2,
        figures.3,
        want.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_its_members_everywhere_but_one_that_moved() {
    let mut cluster = Cluster::start(3, CONFIG);
    let channel = "room:kill";
    let per_node = 8;
    let mut clients = Vec::new();
    for i in 0..3 * per_node {
        let url = cluster.hubs[i % 3].ws_url();
        let c = Client::start(&format!("k{i}"), url, channel, json!({"i": i})).await;
        c.join().await;
        clients.push(c);
    }
    let everyone: Vec<String> = clients.iter().map(|c| c.member.clone()).collect();
    let all = everyone.clone();
    for c in &clients {
        let all = all.clone();
        c.until(SETTLE, move |m| all.iter().all(|id| m.contains_key(id)))
            .await
            .unwrap_or_else(|s| panic!("{} never saw everyone: {s:?}", c.member));
    }
    // Node 2's members: one moves to node 0 when its connection ends, the others stay away.
    let doomed: Vec<usize> = (0..clients.len()).filter(|i| i % 3 == 2).collect();
    let mover = doomed[0];
    for &i in &doomed {
        clients[i].route((i == mover).then(|| cluster.hubs[0].ws_url()));
    }
    let before: Vec<usize> =
        join_all(clients.iter().map(|c| async { c.snapshot().await.log.len() })).await;
    let killed_at = Instant::now();
    cluster.hubs[2].kill();
    let gone: Vec<String> =
        doomed.iter().filter(|&&i| i != mover).map(|&i| clients[i].member.clone()).collect();
    let stays = clients[mover].member.clone();
    let watchers: Vec<usize> = (0..clients.len()).filter(|i| i % 3 != 2).collect();
    let reaped = join_all(watchers.iter().map(|&i| {
        let (gone, stays) = (gone.clone(), stays.clone());
        let c = &clients[i];
        async move {
            let left = move |m: &Members| {
                gone.iter().all(|id| !m.contains_key(id)) && m.contains_key(&stays)
            };
            let s = c
                .until(Duration::from_secs(20), left)
                .await
                .unwrap_or_else(|s| panic!("{}: node 2's members did not leave: {s:?}", c.member));
            (killed_at.elapsed(), s)
        }
    }))
    .await;
    let slowest = reaped.iter().map(|(t, _)| *t).max().unwrap();
    for ((_, s), &i) in reaped.iter().zip(&watchers) {
        let after = &s.log[before[i]..];
        for id in &gone {
            let leaves = after.iter().filter(|e| &e.member == id).count();
            assert_eq!(leaves, 1, "{}: one leave of {id}: {after:?}", clients[i].member);
        }
        assert!(
            after.iter().all(|e| e.member != stays || e.event == "update"),
            "{}: the moved member {stays} only moved: {after:?}",
            clients[i].member
        );
    }
    // The moved member follows the list again on node 0 and holds the same members.
    let remaining: BTreeSet<String> =
        everyone.iter().filter(|id| !gone.contains(id)).cloned().collect();
    let s = clients[mover]
        .until(SETTLE, {
            let remaining = remaining.clone();
            move |m| m.keys().cloned().collect::<BTreeSet<_>>() == remaining
        })
        .await
        .unwrap_or_else(|s| panic!("the moved member's list: {s:?}"));
    assert_eq!(s.reconnects, 1);
    for (n, hub) in cluster.hubs[..2].iter().enumerate() {
        let api: BTreeSet<String> = api_members(hub, channel).await.into_keys().collect();
        assert_eq!(api, remaining, "GET /api/presence on node {n}");
    }
    let nodes = api_nodes(&cluster.hubs[0], channel).await;
    assert_eq!(nodes[&stays], nodes[&clients[0].member], "the moved member is on node 0");
    eprintln!(
        "kill -9 of a node with {} members: {} left everywhere within {slowest:?} \
         (fastest watcher {:?}), the moved one stayed",
        doomed.len(),
        gone.len(),
        reaped.iter().map(|(t, _)| *t).min().unwrap()
    );
}

fn raw(v: Value) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(v.to_string()).unwrap()
}

fn member(m: &str, mode: Option<PresenceMode>) -> PresenceQuery {
    PresenceQuery {
        mode,
        member: Some(m.into()),
        info: Some(raw(json!({"m": m}))),
        ..PresenceQuery::default()
    }
}

async fn subscribe(ws: &mut Ws, channel: &str, presence: PresenceQuery) -> Value {
    ws.request(Command::Subscribe {
        channel: channel.into(),
        since: None,
        snapshot: false,
        view: ViewQuery::default(),
        presence,
        preview: None,
    })
    .await
    .expect("subscribe")
}

/// The next push of kind `push`; publications and other pushes in between are skipped.
async fn next_push(ws: &mut Ws, push: &str) -> Value {
    loop {
        match ws.next().await {
            Some(ServerMessage::Event { push: p, body }) if p == push => return *body,
            Some(
                ServerMessage::Event { .. } | ServerMessage::Publication(_) | ServerMessage::Ping,
            ) => {}
            other => panic!("expected a {push} push, got {other:?}"),
        }
    }
}

fn said(e: &Value) -> (String, String) {
    (e["event"].as_str().unwrap().into(), e["member"].as_str().unwrap().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_join_and_leave_inside_the_window_says_nothing() {
    // A longer window than the other tests, so a loaded debug build's two round trips fit.
    let config = CONFIG.replace("\"50ms\"", "\"500ms\"");
    let cluster = Cluster::start(2, &config);
    let (a, b) = (&cluster.hubs[0], &cluster.hubs[1]);
    let channel = "room:batch";
    let mut watcher = b.client("w", &["room:*"]).await;
    subscribe(&mut watcher, channel, member("w", Some(PresenceMode::Members))).await;
    next_push(&mut watcher, "presence_list").await;
    assert_eq!(said(&next_push(&mut watcher, "presence").await), ("join".into(), "w/w".into()));
    let mut y = a.client("y", &["room:*"]).await;
    subscribe(&mut y, channel, member("y", None)).await;
    let joined = next_push(&mut watcher, "presence").await;
    assert_eq!(said(&joined), ("join".into(), "y/y".into()));

    // On node A: x joins and leaves, y leaves and joins again (same connection, same record).
    let mut x = a.client("x", &["room:*"]).await;
    subscribe(&mut x, channel, member("x", None)).await;
    x.request(Command::Unsubscribe { channel: channel.into(), sub: None }).await.unwrap();
    y.request(Command::Unsubscribe { channel: channel.into(), sub: None }).await.unwrap();
    subscribe(&mut y, channel, member("y", None)).await;
    // Then a marker joins on node A: the watcher's next event is that join, one offset on.
    let mut marker = a.client("marker", &["room:*"]).await;
    subscribe(&mut marker, channel, member("m", None)).await;
    let next = next_push(&mut watcher, "presence").await;
    assert_eq!(said(&next), ("join".into(), "marker/m".into()), "nothing in between: {next}");
    assert_eq!(next["offset"].as_u64(), Some(joined["offset"].as_u64().unwrap() + 1));
    let api: Vec<String> = api_members(b, channel).await.into_keys().collect();
    assert_eq!(api, ["marker/m", "w/w", "y/y"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_events_cross_nodes_and_are_kept_nowhere() {
    let cluster = Cluster::start(3, CONFIG);
    let hubs = &cluster.hubs;
    let channel = "room:volatile";
    let mut sender = hubs[0].client("alice", &["room:*"]).await;
    let mut b = hubs[1].client("bob", &["room:*"]).await;
    let mut c = hubs[2].client("carol", &["room:*"]).await;
    let start = subscribe(&mut b, channel, PresenceQuery::default()).await;
    subscribe(&mut c, channel, PresenceQuery::default()).await;
    hubs[0].publish(channel, json!("before")).await;
    sender
        .request(Command::Volatile {
            channel: channel.into(),
            kind: Some("cursor".into()),
            data: raw(json!({"x": 120, "y": 80})),
        })
        .await
        .expect("volatile");
    hubs[1].publish(channel, json!("after")).await;
    for (name, ws) in [("bob on node 1", &mut b), ("carol on node 2", &mut c)] {
        let (mut volatile, mut offsets) = (None, Vec::new());
        while volatile.is_none() || offsets.len() < 2 {
            match ws.next().await {
                Some(ServerMessage::Publication(p)) => offsets.push(p.offset),
                Some(ServerMessage::Event { push, body }) if push == "volatile" => {
                    assert!(volatile.is_none(), "{name}: one volatile event");
                    volatile = Some(*body);
                }
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
        let v = volatile.unwrap();
        assert_eq!(
            (v["type"].as_str(), v["user"].as_str(), &v["data"]),
            (Some("cursor"), Some("alice"), &json!({"x": 120, "y": 80})),
            "{name}"
        );
        assert_eq!(offsets, [1, 2], "{name}: the volatile event took no offset");
    }
    for (n, hub) in hubs.iter().enumerate() {
        let (_, history) = hub.api("GET", &format!("/api/history?channel={channel}"), None).await;
        let data: Vec<&Value> = history["publications"]
            .as_array()
            .unwrap_or_else(|| panic!("{history}"))
            .iter()
            .map(|p| &p["data"])
            .collect();
        assert_eq!(data, [&json!("before"), &json!("after")], "history on node {n}");
    }
    // A resume from before it replays the two publications only; the next message after the
    // reply is the publication that follows, not the volatile event.
    let mut late = hubs[2].client("dave", &["room:*"]).await;
    let since = herald_protocol::Position {
        epoch: start["epoch"].as_str().unwrap().into(),
        offset: start["offset"].as_u64().unwrap(),
    };
    let reply = late
        .request(Command::Subscribe {
            channel: channel.into(),
            since: Some(since),
            snapshot: false,
            view: ViewQuery::default(),
            presence: PresenceQuery::default(),
            preview: None,
        })
        .await
        .expect("resume");
    assert_eq!(reply["recovered"], true, "{reply}");
    let replayed: Vec<&Value> =
        reply["publications"].as_array().unwrap().iter().map(|p| &p["data"]).collect();
    assert_eq!(replayed, [&json!("before"), &json!("after")]);
    hubs[0].publish(channel, json!("marker")).await;
    let p = late.next_pub().await;
    assert_eq!((p.offset, p.data.get()), (3, r#""marker""#));
}
