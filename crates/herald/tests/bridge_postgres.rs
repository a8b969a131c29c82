//! The Postgres outbox bridge through the real binary (issue 15's fault tests), against a
//! PostgreSQL 15 initdb'd and started here on a free port (as `nobody` when the tests run as
//! root; see crates/bridge/tests/postgres_server):
//! - 20,000 outbox rows written while the consuming node is killed with kill -9 twice and
//!   restarted (Redis engine, so the channel's positions survive the node): the channel holds
//!   every event exactly once, in id order, with contiguous offsets;
//! - the Postgres server stopped for 5 s mid-stream and started again: nothing lost, nothing
//!   duplicated, and `/ready`, `/api/info` and `/metrics` showed the bridge down meanwhile.

mod bridge_support;
mod support;

use bridge_support::servers::postgres::PostgresProcess;
use bridge_support::{
    await_caught_up, await_events, five_second_outage, history, kill_9_twice, metrics, report,
    until,
};
use serde_json::json;
use std::time::Duration;
use support::Hub;
use tokio::time::Instant;

/// The node's configuration: an outbox bridge from the default table.
fn config(pg: &PostgresProcess, extra: &str) -> String {
    bridge_support::config("postgres", &format!("url = \"{}\"\n{extra}", pg.url()))
}

/// Asserts `got` is events 1..=n at offsets 1..=n, naming the first difference.
fn assert_each_once_in_order(got: &[(u64, u64)], n: u64) {
    let wrong = got.iter().zip(1..).find(|((offset, event), i)| (*offset, *event) != (*i, *i));
    assert!(wrong.is_none(), "first out of place (offset, n): {wrong:?}");
    assert_eq!(got.len() as u64, n, "publications in the channel");
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
    let hub = Hub::start_with(
        &config(&pg, "lease_ttl = \"1s\""),
        &["--engine", "redis", "--redis-url", &url],
    );
    const N: u64 = 20_000;
    let started = Instant::now();
    // The outbox fills while the node dies and comes back.
    let writer = tokio::spawn(async move { write(&mut db, 1..=N, 500).await });
    let hub = kill_9_twice(hub, "postgres", started).await;
    writer.await.unwrap();
    await_events(&hub, N, Duration::from_secs(180)).await;
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
    five_second_outage(&hub, &mut pg, |b| b.stop(), |b| b.start_again()).await;
    let mut db = application(&pg, false).await;
    write(&mut db, HALF + 1..=2 * HALF, 500).await;
    await_caught_up(&hub, 2 * HALF).await;
    let got = history(&hub, "session:s").await;
    assert_each_once_in_order(&got, 2 * HALF);
    let r = report(&hub).await.unwrap();
    assert_eq!(r["published"], 2 * HALF, "{r}");
    // A delete lost with the server brings its row back once more (a duplicate).
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
