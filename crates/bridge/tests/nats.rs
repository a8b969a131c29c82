//! The NATS JetStream source against a real `nats-server -js` (started here on a free port):
//! events reach a real WebSocket subscriber exactly once, in stream order, with contiguous
//! offsets; refused events and bodies that are not JSON land on the dead-letter subject with
//! their reason and do not block the ones after them; the message in flight on a runner that
//! died before acknowledging comes back after `ack_wait` and publishes nothing new; `next()` is
//! cancel-safe.
#![cfg(feature = "nats")]

mod support;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use herald_bridge::EventSource;
use herald_bridge::nats::NatsSource;
use herald_bridge::stats::BridgeStats;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::servers::nats::NatsProcess;
use support::{
    DiesBeforeAck, assert_each_once_in_order, bridge, hub, hub_with_subscriber, receive,
    spawn_runner, until,
};
use tokio::time::Instant;

async fn jetstream(nats: &NatsProcess) -> jetstream::Context {
    jetstream::new(async_nats::connect(nats.url()).await.unwrap())
}

/// Publishes bodies to JetStream in order, every acknowledgement awaited.
async fn publish_all(js: &jetstream::Context, bodies: Vec<(String, Vec<u8>)>) {
    let mut acks = Vec::new();
    for (subject, body) in bodies {
        acks.push(js.publish(subject, body.into()).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

fn decision(session: &str, n: u64) -> Vec<u8> {
    json!({"type": "DecisionMade", "session_id": session, "n": n, "drop": "x"}).to_string().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_subscribers_exactly_once_in_order_and_bad_ones_are_dead_lettered() {
    let nats = NatsProcess::start();
    let js = jetstream(&nats).await;
    // The dead letters are kept by the source stream too, outside the consumer's filter.
    js.create_stream(stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.>".into(), "dead.events".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    const N: u64 = 2000;
    let mut bodies = Vec::new();
    for n in 1..=N {
        bodies.push(("events.decisions".to_string(), decision("s1", n)));
        if n % 500 == 0 {
            // Bad events between good ones: no rule matches, not JSON, an invalid channel.
            bodies
                .push(("events.other".into(), json!({"type": "Other", "n": n}).to_string().into()));
            bodies.push(("events.decisions".into(), format!("not json {n}").into()));
            bodies.push(("events.decisions".into(), decision("bad channel", n)));
        }
    }
    publish_all(&js, bodies).await;

    let (hub, mut ws) = hub_with_subscriber("session:s1").await;
    let config = bridge(
        &hub,
        "nats",
        &format!(
            "url = \"{}\"\nstream = \"EVENTS\"\nsubject = \"events.>\"\ndead_letter = \"dead.events\"",
            nats.url()
        ),
    );
    let stats = Arc::new(BridgeStats::new());
    let started = Instant::now();
    let (stop, task) = spawn_runner(&hub, &config, &stats, NatsSource::new(&config).unwrap());

    let got = receive(&mut ws, N as usize).await;
    let elapsed = started.elapsed();
    assert_each_once_in_order(&got, N, "stream");
    eprintln!(
        "nats bridge: {N} events (+12 bad) in {elapsed:?}: {:.0} events/s",
        N as f64 / elapsed.as_secs_f64()
    );

    // Every message settled: the runner's 2,008 (8 refused by rules or hub), the source's own
    // 4 dead letters (not JSON); nothing pending on the consumer.
    let stream = js.get_stream("EVENTS").await.unwrap();
    let mut durable: consumer::PullConsumer = stream.get_consumer("herald-app").await.unwrap();
    until(Duration::from_secs(20), "every message acknowledged", async || {
        let info = durable.info().await.unwrap();
        info.num_ack_pending == 0 && info.num_pending == 0
    })
    .await;
    assert_eq!(stats.acked.load(Ordering::Relaxed), N + 8);
    assert_eq!(stats.published.load(Ordering::Relaxed), N);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 8);
    // The malformed ones the source dead-lettered itself count too.
    assert_eq!(stats.report("app", "nats").dead_lettered, 12);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 0);
    assert_eq!(stats.report("app", "nats").lag, Some(0));
    let info = durable.info().await.unwrap();
    assert_eq!(info.config.max_ack_pending, 1);
    assert_eq!(info.config.filter_subject, "events.>");
    assert_eq!(info.ack_floor.stream_sequence, N + 12);

    // The dead letters: original body, reason and origin in headers, in stream order.
    let reader = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: "dead.events".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut dead = Vec::new();
    let mut batch =
        reader.fetch().max_messages(20).expires(Duration::from_secs(2)).messages().await.unwrap();
    while let Some(m) = batch.next().await {
        dead.push(m.unwrap());
    }
    assert_eq!(dead.len(), 12, "three bad events per 500");
    let header = |m: &jetstream::Message, name: &str| {
        m.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string()).unwrap()
    };
    for (i, chunk) in dead.chunks(3).enumerate() {
        let n = (i as u64 + 1) * 500;
        assert!(header(&chunk[0], "Herald-Reason").contains("no rule matches"));
        assert_eq!(header(&chunk[0], "Herald-Subject"), "events.other");
        assert!(header(&chunk[1], "Herald-Reason").contains("payload is not JSON"));
        assert_eq!(chunk[1].payload.as_ref(), format!("not json {n}").as_bytes());
        let reason = header(&chunk[2], "Herald-Reason");
        assert!(reason.contains("invalid channel") || reason.contains("refused"), "{reason}");
        assert_eq!(chunk[2].payload.as_ref(), decision("bad channel", n).as_slice());
        assert_eq!(header(&chunk[2], "Herald-Bridge"), "app");
        let sequences: Vec<u64> =
            chunk.iter().map(|m| header(m, "Herald-Sequence").parse().unwrap()).collect();
        assert!(sequences.windows(2).all(|w| w[1] == w[0] + 1), "{sequences:?}");
    }
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_in_flight_on_a_dead_runner_comes_back_and_publishes_nothing_new() {
    let nats = NatsProcess::start();
    let (hub, mut ws) = hub_with_subscriber("session:s2").await;
    // The bridge creates its stream this time.
    let config = bridge(
        &hub,
        "nats",
        &format!(
            "url = \"{}\"\nstream = \"JOBS\"\nsubject = \"jobs.>\"\ncreate_stream = true\nsubjects = [\"jobs.>\"]\nack_wait = \"1s\"",
            nats.url()
        ),
    );
    let stats = Arc::new(BridgeStats::new());
    let (crashed, crash) = tokio::sync::oneshot::channel();
    let first = DiesBeforeAck {
        inner: NatsSource::new(&config).unwrap(),
        crash_at: "3".into(),
        crashed: Some(crashed),
    };
    let (_stop, task) = spawn_runner(&hub, &config, &stats, first);
    let js = jetstream(&nats).await;
    until(Duration::from_secs(20), "the bridge creates its stream", async || {
        js.get_stream("JOBS").await.is_ok()
    })
    .await;
    publish_all(&js, (1..=10).map(|n| ("jobs.decisions".to_string(), decision("s2", n))).collect())
        .await;
    tokio::time::timeout(Duration::from_secs(20), crash).await.unwrap().unwrap();
    // The node dies: its connection closes with event 3 published and not acknowledged.
    task.abort();
    let _ = task.await;
    assert_eq!(stats.published.load(Ordering::Relaxed), 3);
    assert_eq!(receive(&mut ws, 3).await, vec![(1, 1), (2, 2), (3, 3)]);

    let died = Instant::now();
    let (stop, task) = spawn_runner(&hub, &config, &stats, NatsSource::new(&config).unwrap());
    let got = receive(&mut ws, 7).await;
    eprintln!("nats bridge: event 3 came back {:?} after the runner died", died.elapsed());
    assert_eq!(got, (4..=10).map(|n| (n, n)).collect::<Vec<_>>(), "4..10 once, in order");
    until(Duration::from_secs(10), "event 10 acknowledged", async || {
        stats.acked.load(Ordering::Relaxed) == 10
    })
    .await;
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 1, "event 3 again: a duplicate");
    assert_eq!(stats.published.load(Ordering::Relaxed), 10);
    // Nothing more arrives.
    let more = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(more.is_err(), "no eleventh publication: {more:?}");
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_is_cancel_safe_and_returns_an_unacknowledged_event_again() {
    let nats = NatsProcess::start();
    let js = jetstream(&nats).await;
    js.create_stream(stream::Config {
        name: "CANCEL".into(),
        subjects: vec!["c.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let hub = hub();
    let config = bridge(
        &hub,
        "nats",
        &format!("url = \"{}\"\nstream = \"CANCEL\"\nsubject = \"c.>\"", nats.url()),
    );
    let mut source = NatsSource::new(&config).unwrap();
    // Nothing to read: next() is dropped again and again while it waits.
    for _ in 0..5 {
        assert!(tokio::time::timeout(Duration::from_millis(50), source.next()).await.is_err());
    }
    publish_all(
        &js,
        vec![("c.a".into(), b"{\"n\":1}".to_vec()), ("c.b".into(), b"{\"n\":2}".to_vec())],
    )
    .await;
    let first =
        tokio::time::timeout(Duration::from_secs(10), source.next()).await.unwrap().unwrap();
    assert_eq!((first.id.as_str(), first.subject.as_str()), ("1", "c.a"));
    assert_eq!(first.payload, json!({"n": 1}));
    // Not acknowledged: the next read is the same event, not the one after it.
    let again =
        tokio::time::timeout(Duration::from_secs(10), source.next()).await.unwrap().unwrap();
    assert_eq!(again, first);
    assert_eq!(source.lag().await, Some(1));
    source.ack(&first).await.unwrap();
    let second =
        tokio::time::timeout(Duration::from_secs(10), source.next()).await.unwrap().unwrap();
    assert_eq!((second.id.as_str(), second.payload.clone()), ("2", json!({"n": 2})));
    source.ack(&second).await.unwrap();
    assert_eq!(source.lag().await, Some(0));
}
