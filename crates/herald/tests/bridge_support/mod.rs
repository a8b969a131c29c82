//! What the binary's bridge tests (`bridge_*.rs`, issue 15's fault tests) share: the node's
//! configuration with one bridge into a deep `session` namespace, the channel's top offset and
//! whole history through `/api/history`, the bridge's report in `/api/info`, and the checks that
//! a bus outage is reported while it lasts. The bus processes are the bridge crate's
//! (`servers`). Needs `mod support;` beside it. Waits are for events with deadlines.
// Each test uses a part of it.
#![allow(dead_code)]

#[path = "../../../bridge/tests/support/servers/mod.rs"]
pub mod servers;

use crate::support::{self, Hub};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// A `session` namespace deep enough for every event, and a bridge `decisions` from `source`
/// (with these source options) into it.
pub fn config(source: &str, options: &str) -> String {
    format!(
        r#"
[namespaces.session]
history_size = 30000
max_recover = 30000

[[bridge]]
name = "decisions"
source = "{source}"
{options}

[[bridge.rule]]
match = {{ "data.type" = "DecisionMade" }}
channels = ["session:{{data.session_id}}"]
type = "{{data.type}}"
"#
    )
}

/// Polls `done` every 20 ms until it holds, failing after `within`.
pub async fn until(within: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The channel's last offset (0 while it has none, or while the node is away).
pub async fn top(hub: &Hub, channel: &str) -> u64 {
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

/// The channel's whole history: (offset, data.n), paged from its start.
pub async fn history(hub: &Hub, channel: &str) -> Vec<(u64, u64)> {
    // Without `since` the newest page comes back: start from the epoch's offset 0.
    let (status, latest) =
        hub.api("GET", &format!("/api/history?channel={channel}&limit=1"), None).await;
    assert_eq!(status, 200, "{latest}");
    let epoch = latest["epoch"].as_str().unwrap().to_string();
    let mut out: Vec<(u64, u64)> = Vec::new();
    loop {
        let from = out.last().map_or(0, |(offset, _)| *offset);
        let path = format!("/api/history?channel={channel}&limit=1000&since={epoch}:{from}");
        let (status, body) = hub.api("GET", &path, None).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["reason"].is_null(), "history from {from} not served: {body}");
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
pub async fn report(hub: &Hub) -> Option<Value> {
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

/// The channel `session:s` holds at least `n` events within `within`.
pub async fn await_events(hub: &Hub, n: u64, within: Duration) {
    until(within, "every event in the channel", async || top(hub, "session:s").await >= n).await;
}

/// Kills the node with kill -9 and starts it again twice, once `session:s` holds 4,000 events
/// and once it holds 11,000 (while the bus fills).
pub async fn kill_9_twice(mut hub: Hub, bridge: &str, started: Instant) -> Hub {
    for (kill_at, name) in [(4_000, "first"), (11_000, "second")] {
        until(
            Duration::from_secs(120),
            &format!("{kill_at} events before the {name} kill"),
            async || top(&hub, "session:s").await >= kill_at,
        )
        .await;
        hub = hub.restart();
        eprintln!("{bridge} bridge: {name} kill -9 at {:?}", started.elapsed());
    }
    hub
}

/// Once the bridge is mid-stream (300 events in), takes the bus away (`stop`), checks the
/// outage is reported while it lasts, and brings the bus back (`start`) 5 s after it went: the
/// bridge is down in `/api/info`, `/ready` still answers 200 naming it down, `/metrics` has it
/// down.
pub async fn five_second_outage<B>(
    hub: &Hub,
    bus: &mut B,
    stop: impl FnOnce(&mut B),
    start: impl FnOnce(&mut B),
) {
    until(Duration::from_secs(60), "the bridge mid-stream", async || {
        top(hub, "session:s").await >= 300
    })
    .await;
    stop(bus);
    let down_at = Instant::now();
    until(Duration::from_secs(10), "the bridge reported down in /api/info", async || {
        report(hub).await.is_some_and(|r| r["up"] == false)
    })
    .await;
    let ready = reqwest::get(hub.http("/ready")).await.unwrap();
    assert_eq!(ready.status(), 200, "a bus outage does not take the node out of service");
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["bridges"][0]["up"], false, "{ready}");
    let metrics = metrics(hub).await;
    assert!(metrics.contains("herald_bridge_up{bridge=\"decisions\"} 0"), "{metrics}");
    // The outage itself lasts 5 s (a fault's length, not a wait for an event).
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(down_at.elapsed())).await;
    start(bus);
}

/// With the bus back: the channel soon holds `n` events and the bridge is reported up again.
pub async fn await_caught_up(hub: &Hub, n: u64) {
    await_events(hub, n, Duration::from_secs(60)).await;
    until(Duration::from_secs(10), "the bridge reported up again", async || {
        report(hub).await.is_some_and(|r| r["up"] == true)
    })
    .await;
}

/// `/metrics` text.
pub async fn metrics(hub: &Hub) -> String {
    reqwest::get(hub.http("/metrics")).await.unwrap().text().await.unwrap()
}
