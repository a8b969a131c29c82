//! The Postgres outbox bridge through the real binary (issue 15's fault tests), against a
//! PostgreSQL 15 initdb'd and started here on a free port (as `nobody` when the tests run as
//! root; see crates/bridge/tests/postgres_server):
//! - 20,000 outbox rows written while the consuming node is killed with kill -9 twice and
//!   restarted (Redis engine, so the channel's positions survive the node): the channel holds
//!   every event exactly once, in id order, with contiguous offsets;
//! - the Postgres server stopped for 5 s mid-stream and started again: nothing lost, nothing
//!   duplicated, and `/ready`, `/api/info` and `/metrics` showed the bridge down meanwhile.

#[path = "../../bridge/tests/postgres_server/mod.rs"]
mod postgres_server;
mod support;

use postgres_server::PostgresProcess;
use serde_json::{Value, json};
use std::time::Duration;
use support::Hub;
use tokio::time::Instant;

/// A `session` namespace deep enough for every event, and an outbox bridge into it.
fn config(pg: &PostgresProcess, extra: &str) -> String {
    format!(
        r#"
[namespaces.session]
history_size = 30000
max_recover = 30000

[[bridge]]
name = "decisions"
source = "postgres"
url = "{url}"
{extra}

[[bridge.rule]]
match = {{ "data.type" = "DecisionMade" }}
channels = ["session:{{data.session_id}}"]
type = "{{data.type}}"
"#,
        url = pg.url()
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

/// The channel's whole history: (offset, data.n), paged from its start.
async fn history(hub: &Hub, channel: &str) -> Vec<(u64, u64)> {
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

/// Asserts `got` is events 1..=n at offsets 1..=n, naming the first difference.
fn assert_each_once_in_order(got: &[(u64, u64)], n: u64) {
    let wrong = got.iter().zip(1..).find(|((offset, event), i)| (*offset, *event) != (*i, *i));
    assert!(wrong.is_none(), "first out of place (offset, n): {wrong:?}");
    assert_eq!(got.len() as u64, n, "publications in the channel");
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

/// A client of the test's server (the application's side), with the outbox created.
async fn application(pg: &PostgresProcess, create: bool) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    if create {
        let sql =
            herald_bridge::postgres::schema("herald_outbox", "herald_outbox_dead", "herald_outbox");
        client.batch_execute(&sql).await.unwrap();
    }
    client
}

/// Writes events `range` to the outbox, `chunk` per transaction.
async fn write(
    db: &mut tokio_postgres::Client,
    range: std::ops::RangeInclusive<u64>,
    chunk: usize,
) {
    let all: Vec<u64> = range.collect();
    for part in all.chunks(chunk) {
        let tx = db.transaction().await.unwrap();
        let statement = tx
            .prepare("INSERT INTO herald_outbox (subject, payload) VALUES ('decisions', $1)")
            .await
            .unwrap();
        for n in part {
            let payload = json!({"type": "DecisionMade", "session_id": "s", "n": n});
            tx.execute(&statement, &[&payload]).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_exactly_once_in_order_across_two_kill_9s_of_the_node() {
    let pg = PostgresProcess::start();
    let mut db = application(&pg, true).await;
    let redis = herald_testkit::RedisProcess::start();
    let url = redis.url();
    let mut hub = Hub::start_with(
        &config(&pg, "lease_ttl = \"1s\""),
        &["--engine", "redis", "--redis-url", &url],
    );
    const N: u64 = 20_000;
    let started = Instant::now();
    // The outbox fills while the node dies and comes back.
    let writer = tokio::spawn(async move { write(&mut db, 1..=N, 500).await });
    for (kill_at, name) in [(4_000, "first"), (11_000, "second")] {
        until(
            Duration::from_secs(120),
            &format!("{kill_at} events before the {name} kill"),
            async || top(&hub, "session:s").await >= kill_at,
        )
        .await;
        hub = hub.restart();
        eprintln!("postgres bridge: {name} kill -9 at {:?}", started.elapsed());
    }
    writer.await.unwrap();
    until(Duration::from_secs(180), "every event in the channel", async || {
        top(&hub, "session:s").await >= N
    })
    .await;
    let elapsed = started.elapsed();
    let got = history(&hub, "session:s").await;
    assert_each_once_in_order(&got, N);
    eprintln!(
        "postgres bridge: {N} events through two kill -9s in {elapsed:?} ({:.0} events/s overall)",
        N as f64 / elapsed.as_secs_f64()
    );
    let db = application(&pg, false).await;
    until(Duration::from_secs(20), "the outbox emptied", async || {
        let left: i64 =
            db.query_one("SELECT count(*) FROM herald_outbox", &[]).await.unwrap().get(0);
        left == 0
    })
    .await;
    let r = report(&hub).await.unwrap();
    assert_eq!(r["source"], "postgres");
    assert_eq!(r["up"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_second_postgres_outage_loses_nothing_duplicates_nothing_and_is_reported() {
    let mut pg = PostgresProcess::start();
    let mut db = application(&pg, true).await;
    let hub = Hub::start(&config(&pg, ""));
    const HALF: u64 = 1_500;
    write(&mut db, 1..=HALF, 500).await;
    drop(db);
    until(Duration::from_secs(60), "the bridge mid-stream", async || {
        top(&hub, "session:s").await >= 300
    })
    .await;
    pg.stop();
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
    pg.start_again();
    let mut db = application(&pg, false).await;
    write(&mut db, HALF + 1..=2 * HALF, 500).await;
    until(Duration::from_secs(60), "every event in the channel", async || {
        top(&hub, "session:s").await >= 2 * HALF
    })
    .await;
    until(Duration::from_secs(10), "the bridge reported up again", async || {
        report(&hub).await.is_some_and(|r| r["up"] == true)
    })
    .await;
    let got = history(&hub, "session:s").await;
    assert_each_once_in_order(&got, 2 * HALF);
    let r = report(&hub).await.unwrap();
    assert_eq!(r["published"], 2 * HALF, "{r}");
    // A delete lost with the server brings its row back once more (a duplicate).
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
