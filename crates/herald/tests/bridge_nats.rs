//! The NATS JetStream bridge through the real binary (issue 15's fault tests), against a
//! `nats-server -js` started here on a free port:
//! - 20,000 events published while the consuming node is killed with kill -9 twice and
//!   restarted (Redis engine, so the channel's positions survive the node): the channel holds
//!   every event exactly once, in stream order, with contiguous offsets;
//! - the NATS server killed for 5 s mid-stream and started again: nothing lost, nothing
//!   duplicated, and `/ready`, `/api/info` and `/metrics` showed the bridge down meanwhile.

mod bridge_support;
mod support;

use async_nats::jetstream;
use bridge_support::servers::nats::NatsProcess;
use bridge_support::{
    await_caught_up, await_events, five_second_outage, history, kill_9_twice, metrics, report,
    until,
};
use serde_json::json;
use std::time::Duration;
use support::Hub;
use tokio::time::Instant;

/// The node's configuration: a NATS bridge that creates its stream `EVENTS`.
fn config(nats: &NatsProcess, extra: &str) -> String {
    let url = nats.url();
    bridge_support::config(
        "nats",
        &format!(
            "url = \"{url}\"\nstream = \"EVENTS\"\nsubject = \"events.>\"\ncreate_stream = true\n\
             subjects = [\"events.>\"]\nack_wait = \"1s\"\n{extra}"
        ),
    )
}

fn decision(n: u64) -> String {
    json!({"type": "DecisionMade", "session_id": "s", "n": n}).to_string()
}

/// Publishes events `range` to JetStream, `chunk` at a time (each chunk's acks awaited).
async fn publish(js: &jetstream::Context, range: std::ops::RangeInclusive<u64>, chunk: usize) {
    let all: Vec<u64> = range.collect();
    for part in all.chunks(chunk) {
        let mut acks = Vec::new();
        for n in part {
            acks.push(js.publish("events.decisions", decision(*n).into()).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

async fn jetstream_when_ready(nats: &NatsProcess) -> jetstream::Context {
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    until(Duration::from_secs(20), "the bridge creates its stream", async || {
        js.get_stream("EVENTS").await.is_ok()
    })
    .await;
    js
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_exactly_once_in_order_across_two_kill_9s_of_the_node() {
    let nats = NatsProcess::start();
    let redis = herald_testkit::RedisProcess::start();
    let url = redis.url();
    let hub = Hub::start_with(
        &config(&nats, "lease_ttl = \"1s\""),
        &["--engine", "redis", "--redis-url", &url],
    );
    let js = jetstream_when_ready(&nats).await;
    const N: u64 = 20_000;
    let started = Instant::now();
    // The bus fills while the node dies and comes back.
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move { publish(&js, 1..=N, 500).await })
    };
    let hub = kill_9_twice(hub, "nats", started).await;
    publisher.await.unwrap();
    await_events(&hub, N, Duration::from_secs(180)).await;
    let elapsed = started.elapsed();
    let got = history(&hub, "session:s").await;
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    let ns: Vec<u64> = got.iter().map(|(_, n)| *n).collect();
    assert!(offsets == (1..=N).collect::<Vec<_>>(), "contiguous offsets: {} held", offsets.len());
    assert!(ns == (1..=N).collect::<Vec<_>>(), "every event once, in stream order");
    eprintln!(
        "nats bridge: {N} events through two kill -9s in {elapsed:?} ({:.0} events/s overall)",
        N as f64 / elapsed.as_secs_f64()
    );
    let r = report(&hub).await.unwrap();
    assert_eq!(r["source"], "nats");
    assert_eq!(r["up"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_second_nats_outage_loses_nothing_duplicates_nothing_and_is_reported() {
    let mut nats = NatsProcess::start();
    let hub = Hub::start(&config(&nats, ""));
    let js = jetstream_when_ready(&nats).await;
    const HALF: u64 = 1_500;
    publish(&js, 1..=HALF, 500).await;
    drop(js);
    five_second_outage(&hub, &mut nats, |b| b.kill(), |b| b.start_again()).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    publish(&js, HALF + 1..=2 * HALF, 500).await;
    await_caught_up(&hub, 2 * HALF).await;
    let got = history(&hub, "session:s").await;
    assert!(
        got == (1..=2 * HALF).map(|n| (n, n)).collect::<Vec<_>>(),
        "each once, in order: {} held, first {:?}",
        got.len(),
        got.first()
    );
    let r = report(&hub).await.unwrap();
    assert_eq!(r["published"], 2 * HALF, "{r}");
    // An acknowledgement lost with the server brings its event back once more (a duplicate).
    assert!(r["acked"].as_u64().unwrap() >= 2 * HALF, "{r}");
    let metrics = metrics(&hub).await;
    assert!(metrics.contains("herald_bridge_up{bridge=\"decisions\"} 1"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "herald_bridge_published_total{{bridge=\"decisions\"}} {}",
            2 * HALF
        )),
        "{metrics}"
    );
}
