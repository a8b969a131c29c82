//! The NATS JetStream bridge through the real binary (issue 15's fault tests), against a
//! `nats-server -js` started here on a free port:
//! - 20,000 events published while the consuming node is killed with kill -9 twice and
//!   restarted (Redis engine, so the channel's positions survive the node): the channel holds
//!   every event exactly once, in stream order, with contiguous offsets;
//! - the NATS server killed for 5 s mid-stream and started again: nothing lost, nothing
//!   duplicated, and `/ready`, `/api/info` and `/metrics` showed the bridge down meanwhile.

#[path = "../../bridge/tests/nats_server/mod.rs"]
mod nats_server;
mod support;

use async_nats::jetstream;
use nats_server::NatsProcess;
use serde_json::{Value, json};
use std::time::Duration;
use support::Hub;
use tokio::time::Instant;

/// A `session` namespace deep enough for every event, and a NATS bridge into it.
fn config(nats: &NatsProcess, extra: &str) -> String {
    format!(
        r#"
[namespaces.session]
history_size = 30000
max_recover = 30000

[[bridge]]
name = "decisions"
source = "nats"
url = "{url}"
stream = "EVENTS"
subject = "events.>"
create_stream = true
subjects = ["events.>"]
ack_wait = "1s"
{extra}

[[bridge.rule]]
match = {{ "data.type" = "DecisionMade" }}
channels = ["session:{{data.session_id}}"]
type = "{{data.type}}"
"#,
        url = nats.url()
    )
}

/// Polls `done` every 20 ms until it holds, failing after `within`.
async fn until(within: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The channel's last offset (0 while it has none, or while the node is away).
async fn top(hub: &Hub, channel: &str) -> u64 {
    let client = reqwest::Client::new();
    let Ok(resp) = client
        .get(hub.http(&format!("/api/history?channel={channel}&limit=1")))
        .header("x-api-key", support::API_KEY)
        .send()
        .await
    else {
        return 0;
    };
    let body: Value = resp.json().await.unwrap_or_default();
    body["offset"].as_u64().unwrap_or(0)
}

/// The channel's whole history from its first offset: (offset, data.n), paged.
async fn history(hub: &Hub, channel: &str) -> Vec<(u64, u64)> {
    let (status, first) =
        hub.api("GET", &format!("/api/history?channel={channel}&limit=1"), None).await;
    assert_eq!(status, 200, "{first}");
    let epoch = first["epoch"].as_str().unwrap().to_string();
    let mut out: Vec<(u64, u64)> = Vec::new();
    loop {
        let after = out.last().map_or(0, |(o, _)| *o);
        let path = format!("/api/history?channel={channel}&limit=1000&since={epoch}:{after}");
        let (status, body) = hub.api("GET", &path, None).await;
        assert_eq!(status, 200, "{body}");
        let page = body["publications"].as_array().unwrap();
        if page.is_empty() {
            return out;
        }
        for p in page {
            out.push((p["offset"].as_u64().unwrap(), p["data"]["n"].as_u64().unwrap()));
        }
    }
}

/// The bridge's report in `/api/info`.
async fn report(hub: &Hub) -> Option<Value> {
    let client = reqwest::Client::new();
    let resp = client
        .get(hub.http("/api/info"))
        .header("x-api-key", support::API_KEY)
        .send()
        .await
        .ok()?;
    let body: Value = resp.json().await.ok()?;
    body["bridges"].as_array()?.first().cloned()
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
    let mut hub = Hub::start_with(
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
    for (kill_at, name) in [(4_000, "first"), (11_000, "second")] {
        until(
            Duration::from_secs(120),
            &format!("{kill_at} events before the {name} kill"),
            async || top(&hub, "session:s").await >= kill_at,
        )
        .await;
        hub = hub.restart();
        eprintln!("nats bridge: {name} kill -9 at {:?}", started.elapsed());
    }
    publisher.await.unwrap();
    until(Duration::from_secs(180), "every event in the channel", async || {
        top(&hub, "session:s").await >= N
    })
    .await;
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
    until(Duration::from_secs(60), "the bridge mid-stream", async || {
        top(&hub, "session:s").await >= 300
    })
    .await;
    nats.kill();
    let down_at = Instant::now();
    until(Duration::from_secs(10), "the bridge reported down in /api/info", async || {
        report(&hub).await.is_some_and(|r| r["up"] == false)
    })
    .await;
    let ready = reqwest::get(hub.http("/ready")).await.unwrap();
    assert_eq!(ready.status(), 200, "a bus outage does not take the node out of service");
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["bridges"][0]["up"], false, "{ready}");
    let metrics = reqwest::get(hub.http("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("herald_bridge_up{bridge=\"decisions\"} 0"), "{metrics}");
    // The outage itself lasts 5 s (a fault's length, not a wait for an event).
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(down_at.elapsed())).await;
    nats.start_again();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    publish(&js, HALF + 1..=2 * HALF, 500).await;
    until(Duration::from_secs(60), "every event in the channel", async || {
        top(&hub, "session:s").await >= 2 * HALF
    })
    .await;
    until(Duration::from_secs(10), "the bridge reported up again", async || {
        report(&hub).await.is_some_and(|r| r["up"] == true)
    })
    .await;
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
    let metrics = reqwest::get(hub.http("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("herald_bridge_up{bridge=\"decisions\"} 1"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "herald_bridge_published_total{{bridge=\"decisions\"}} {}",
            2 * HALF
        )),
        "{metrics}"
    );
}
