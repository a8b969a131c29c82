//! The bridge in process (seed 004's in-memory event bus): events sent by the application reach
//! a real WebSocket subscriber exactly once, in order; bad events go to the dead letters with
//! their reason and do not block the ones after them; an event redelivered after a crash
//! between "published" and "acknowledged" publishes nothing new.

mod support;

use futures_util::StreamExt;
use herald_bridge::memory::memory_source;
use herald_bridge::run::Runner;
use herald_bridge::stats::BridgeStats;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::{Socket, assert_each_once_in_order, hub_with_subscriber, parse_bridge};

/// The test's bridge (any source kind: the in-memory source stands in for it).
fn bridge(hub: &herald_server::Hub) -> herald_bridge::config::BridgeConfig {
    parse_bridge(hub, "redis_streams", "")
}

/// The next `n` publications on the socket: (offset, data.n), within 20 s.
async fn receive(ws: &mut Socket, n: usize) -> Vec<(u64, u64)> {
    support::receive_within(ws, n, Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_subscribers_exactly_once_in_order_and_bad_ones_are_dead_lettered() {
    let (hub, mut ws) = hub_with_subscriber("session:s1").await;
    let config = bridge(&hub);
    let stats = Arc::new(BridgeStats::new());
    let (send, mut source, log) = memory_source();
    const N: u64 = 2000;
    for n in 1..=N {
        assert!(send.send(
            "events",
            json!({"type": "DecisionMade", "session_id": "s1", "n": n, "drop": "x"})
        ));
        if n % 500 == 0 {
            // Bad events between good ones: no rule matches, a channel that is invalid.
            send.send("events", json!({"type": "Other", "n": n}));
            send.send(
                "events",
                json!({"type": "DecisionMade", "session_id": "bad channel", "n": n}),
            );
        }
    }
    drop(send);
    let runner = Runner::new(hub.clone(), config.rules.clone(), config.lease_ttl, stats.clone());
    // The source closes once every sent event was read: the runner returns.
    tokio::time::timeout(Duration::from_secs(30), runner.run(&mut source, std::future::pending()))
        .await
        .expect("the runner drains the source");
    let got = receive(&mut ws, N as usize).await;
    assert_each_once_in_order(&got, N, "source");

    let log = log.lock();
    assert_eq!(log.acked.len() as u64, N + 8, "every event acknowledged, dead ones too");
    assert_eq!(log.dead.len(), 8);
    assert!(log.dead[0].1.contains("no rule matches"), "{:?}", log.dead[0]);
    assert!(
        log.dead[1].1.contains("invalid channel") || log.dead[1].1.contains("refused"),
        "{:?}",
        log.dead[1]
    );
    assert_eq!(stats.published.load(Ordering::Relaxed), N);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_publishes_nothing_new() {
    let (hub, mut ws) = hub_with_subscriber("session:s2").await;
    let config = bridge(&hub);
    let stats = Arc::new(BridgeStats::new());
    let runner = Runner::new(hub.clone(), config.rules.clone(), config.lease_ttl, stats.clone());
    // The same three events delivered twice, as a bus does after a crash between publish and
    // ack: the ids repeat, so the second round is answered as duplicates.
    let (send, mut source, _log) = memory_source();
    for n in 1..=3 {
        send.send("events", json!({"type": "DecisionMade", "session_id": "s2", "n": n}));
    }
    drop(send);
    runner.run(&mut source, std::future::pending()).await;
    let (send, mut again, _log) = memory_source();
    for n in 1..=3 {
        send.send("events", json!({"type": "DecisionMade", "session_id": "s2", "n": n}));
    }
    send.send("events", json!({"type": "DecisionMade", "session_id": "s2", "n": 4}));
    drop(send);
    runner.run(&mut again, std::future::pending()).await;
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 3);
    assert_eq!(stats.published.load(Ordering::Relaxed), 4);
    let got = receive(&mut ws, 4).await;
    assert_eq!(got, vec![(1, 1), (2, 2), (3, 3), (4, 4)]);
    // Nothing more arrives.
    let more = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(more.is_err(), "no fifth publication: {more:?}");
}
