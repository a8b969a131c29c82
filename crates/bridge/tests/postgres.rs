//! The Postgres outbox source against a real PostgreSQL (initdb'd and started here on a free
//! port): rows reach a real WebSocket subscriber exactly once, in id order, with contiguous
//! offsets; refused rows are moved to the dead-letter table with their reason and do not block
//! the ones after them; the row in flight on a runner that died before acknowledging is read
//! again and publishes nothing new; a notification wakes the source (polling covers a table
//! without the trigger); the order trigger keeps concurrent writers' ids in commit order (and
//! without it, an inverted row is still delivered); `next()` is cancel-safe and the source
//! reconnects after the server was stopped; a table unlike the documented one is reported as
//! unavailable, not a panic.
#![cfg(feature = "postgres")]

mod support;

use herald_bridge::postgres::{PostgresSource, schema};
use herald_bridge::stats::BridgeStats;
use herald_bridge::{Event, EventSource, SourceError};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::servers::postgres::PostgresProcess;
use support::{
    DiesBeforeAck, assert_each_once_in_order, bridge, hub, hub_with_subscriber, receive,
    receive_within, spawn_runner, until,
};
use tokio::time::Instant;

/// A client of the test's server (the application's side).
async fn client(pg: &PostgresProcess) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Creates the default outbox with its dead-letter table and triggers (docs/bridge.md's SQL).
async fn create_outbox(db: &tokio_postgres::Client) {
    db.batch_execute(&schema("herald_outbox", "herald_outbox_dead", "herald_outbox"))
        .await
        .unwrap();
}

/// Inserts `(subject, payload)` rows in one transaction, in order.
async fn insert(db: &mut tokio_postgres::Client, table: &str, rows: &[(&str, serde_json::Value)]) {
    let tx = db.transaction().await.unwrap();
    let sql = format!("INSERT INTO {table} (subject, payload) VALUES ($1, $2)");
    let statement = tx.prepare(&sql).await.unwrap();
    for (subject, payload) in rows {
        tx.execute(&statement, &[subject, payload]).await.unwrap();
    }
    tx.commit().await.unwrap();
}

fn decision(session: &str, n: u64) -> serde_json::Value {
    json!({"type": "DecisionMade", "session_id": session, "n": n, "drop": "x"})
}

async fn count(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0)
}

/// Whether the bridge's connection is idle after a read of the outbox: the source found
/// nothing and waits for a notification (or a poll).
async fn source_waiting(db: &tokio_postgres::Client) -> bool {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'herald-bridge app' \
               AND state = 'idle' AND query LIKE 'SELECT id, subject, payload FROM%'";
    db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) == 1
}

async fn next_within(source: &mut PostgresSource, within: Duration) -> Event {
    tokio::time::timeout(within, source.next()).await.expect("next() in time").unwrap()
}

#[test]
fn the_docs_give_the_outbox_sql() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/bridge.md"))
            .unwrap();
    let sql = schema("herald_outbox", "herald_outbox_dead", "herald_outbox");
    assert!(docs.contains(&sql), "docs/bridge.md's Postgres outbox section shows:\n{sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_subscribers_exactly_once_in_order_and_bad_ones_are_dead_lettered() {
    let pg = PostgresProcess::start();
    let mut db = client(&pg).await;
    create_outbox(&db).await;
    const N: u64 = 2000;
    // The application's transactions: 20 rows each, bad rows between good ones (no rule
    // matches; an invalid channel).
    let mut rows = Vec::new();
    for n in 1..=N {
        rows.push(("decisions", decision("s1", n)));
        if n % 500 == 0 {
            rows.push(("other", json!({"type": "Other", "n": n})));
            rows.push(("decisions", decision("bad channel", n)));
        }
    }
    for chunk in rows.chunks(20) {
        insert(&mut db, "herald_outbox", chunk).await;
    }

    let (hub, mut ws) = hub_with_subscriber("session:s1").await;
    let config = bridge(&hub, "postgres", &format!("url = \"{}\"\nbatch = 64", pg.url()));
    let stats = Arc::new(BridgeStats::new());
    let started = Instant::now();
    let (stop, task) = spawn_runner(&hub, &config, &stats, PostgresSource::new(&config).unwrap());

    let got = receive(&mut ws, N as usize).await;
    let elapsed = started.elapsed();
    assert_each_once_in_order(&got, N, "id");
    eprintln!(
        "postgres bridge: {N} rows (+8 bad) in {elapsed:?}: {:.0} rows/s",
        N as f64 / elapsed.as_secs_f64()
    );

    until(Duration::from_secs(20), "every row settled", async || {
        stats.acked.load(Ordering::Relaxed) == N + 8
    })
    .await;
    assert_eq!(count(&db, "herald_outbox").await, 0, "acknowledged rows are deleted");
    assert_eq!(stats.published.load(Ordering::Relaxed), N);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 8);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 0);
    let mut source = PostgresSource::new(&config).unwrap();
    assert_eq!(source.lag().await, Some(0));

    // The dead letters: the original row, its id and the reason, in id order.
    let dead = db
        .query("SELECT id, subject, payload, reason FROM herald_outbox_dead ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(dead.len(), 8, "two bad rows per 500");
    for (i, pair) in dead.chunks(2).enumerate() {
        let n = (i as u64 + 1) * 500;
        let (first, second) = (&pair[0], &pair[1]);
        let id: i64 = first.get(0);
        // Row ids: n good rows and 2 bad ones per 500 before it.
        assert_eq!(id, n as i64 + 2 * i as i64 + 1);
        assert_eq!(second.get::<_, i64>(0), id + 1);
        assert_eq!(first.get::<_, String>(1), "other");
        assert!(first.get::<_, String>(3).contains("no rule matches"));
        assert_eq!(second.get::<_, serde_json::Value>(2), decision("bad channel", n));
        let reason: String = second.get(3);
        assert!(reason.contains("invalid channel") || reason.contains("refused"), "{reason}");
    }
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_the_source_and_the_row_in_flight_on_a_dead_runner_publishes_nothing_new()
 {
    let pg = PostgresProcess::start();
    let mut db = client(&pg).await;
    create_outbox(&db).await;
    let (hub, mut ws) = hub_with_subscriber("session:s2").await;
    // Polling once a minute: rows inserted while the source waits arrive by notification.
    let config = bridge(&hub, "postgres", &format!("url = \"{}\"\npoll = \"60s\"", pg.url()));
    let stats = Arc::new(BridgeStats::new());
    let (crashed, crash) = tokio::sync::oneshot::channel();
    let first = DiesBeforeAck {
        inner: PostgresSource::new(&config).unwrap(),
        crash_at: "3".into(),
        crashed: Some(crashed),
    };
    let (_stop, task) = spawn_runner(&hub, &config, &stats, first);
    // The source is waiting on its LISTEN once its connection shows up.
    until(Duration::from_secs(20), "the source waiting", async || source_waiting(&db).await).await;
    let rows: Vec<_> = (1..=10).map(|n| ("decisions", decision("s2", n))).collect();
    insert(&mut db, "herald_outbox", &rows).await;
    tokio::time::timeout(Duration::from_secs(20), crash).await.unwrap().unwrap();
    // The node dies: row 3 published and not deleted.
    task.abort();
    let _ = task.await;
    assert_eq!(stats.published.load(Ordering::Relaxed), 3);
    assert_eq!(
        receive_within(&mut ws, 3, Duration::from_secs(20)).await,
        vec![(1, 1), (2, 2), (3, 3)]
    );
    assert_eq!(count(&db, "herald_outbox").await, 8, "rows 3..10 still there");

    let (stop, task) = spawn_runner(&hub, &config, &stats, PostgresSource::new(&config).unwrap());
    let got = receive_within(&mut ws, 7, Duration::from_secs(20)).await;
    assert_eq!(got, (4..=10).map(|n| (n, n)).collect::<Vec<_>>(), "4..10 once, in order");
    until(Duration::from_secs(10), "row 10 acknowledged", async || {
        stats.acked.load(Ordering::Relaxed) == 10
    })
    .await;
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 1, "row 3 again: a duplicate");
    assert_eq!(stats.published.load(Ordering::Relaxed), 10);
    // A later row, inserted while the source waits: still by notification (the poll is 60 s).
    until(Duration::from_secs(10), "the source waiting", async || source_waiting(&db).await).await;
    insert(&mut db, "herald_outbox", &[("decisions", decision("s2", 11))]).await;
    assert_eq!(receive_within(&mut ws, 1, Duration::from_secs(10)).await, vec![(11, 11)]);
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_trigger_keeps_concurrent_writers_in_id_order() {
    let pg = PostgresProcess::start();
    let mut first = client(&pg).await;
    create_outbox(&first).await;
    let second = client(&pg).await;
    let watcher = client(&pg).await;
    let hub = hub();
    let config = bridge(&hub, "postgres", &format!("url = \"{}\"", pg.url()));
    let mut source = PostgresSource::new(&config).unwrap();

    // Transaction 1 inserts a row and stays open.
    let tx = first.transaction().await.unwrap();
    let insert = "INSERT INTO herald_outbox (subject, payload) VALUES ('t', $1) RETURNING id";
    let a: i64 = tx.query_one(insert, &[&json!({"name": "a"})]).await.unwrap().get(0);
    // Transaction 2 inserts and commits meanwhile: it waits for the lock before drawing an id.
    let b = tokio::spawn(async move {
        second
            .batch_execute(
                "BEGIN; INSERT INTO herald_outbox (subject, payload) VALUES ('t', '{\"name\": \"b\"}'); COMMIT",
            )
            .await
            .unwrap();
    });
    until(Duration::from_secs(10), "transaction 2 waiting for the order lock", async || {
        let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'";
        watcher.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) == 1
    })
    .await;
    // Nothing committed yet: the source sees nothing.
    assert!(tokio::time::timeout(Duration::from_millis(100), source.next()).await.is_err());
    // Transaction 1 inserts once more, after transaction 2 asked for an id: it still draws the
    // next id, and commits first.
    let c: i64 = tx.query_one(insert, &[&json!({"name": "c"})]).await.unwrap().get(0);
    tx.commit().await.unwrap();
    b.await.unwrap();
    assert_eq!(c, a + 1, "no id drawn by the waiting transaction");
    let mut names = Vec::new();
    for _ in 0..3 {
        let event = next_within(&mut source, Duration::from_secs(10)).await;
        names.push((event.id.parse::<i64>().unwrap(), event.payload["name"].clone()));
        source.ack(&event).await.unwrap();
    }
    assert_eq!(names, vec![(a, json!("a")), (c, json!("c")), (a + 2, json!("b"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_triggers_polling_reads_and_an_inverted_row_is_still_delivered() {
    let pg = PostgresProcess::start();
    let mut first = client(&pg).await;
    let second = client(&pg).await;
    // The tables only: no notification, no order lock.
    let sql = schema("plain", "plain_dead", "plain");
    let tables = &sql[..sql.find("-- Wakes").unwrap()];
    first.batch_execute(tables).await.unwrap();
    let hub = hub();
    let config = bridge(
        &hub,
        "postgres",
        &format!("url = \"{}\"\ntable = \"plain\"\npoll = \"50ms\"", pg.url()),
    );
    let mut source = PostgresSource::new(&config).unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(100), source.next()).await.is_err());

    // Transaction 1 draws id 1 and stays open; transaction 2 draws id 2 and commits.
    let tx = first.transaction().await.unwrap();
    tx.execute("INSERT INTO plain (subject, payload) VALUES ('t', '{\"n\": 1}')", &[])
        .await
        .unwrap();
    second
        .batch_execute("INSERT INTO plain (subject, payload) VALUES ('t', '{\"n\": 2}')")
        .await
        .unwrap();
    // Found by polling; published before id 1 (the inversion the order trigger prevents).
    let two = next_within(&mut source, Duration::from_secs(10)).await;
    assert_eq!(two.id, "2");
    source.ack(&two).await.unwrap();
    tx.commit().await.unwrap();
    // Id 1 is not lost: it is still in the table, and read next.
    let one = next_within(&mut source, Duration::from_secs(10)).await;
    assert_eq!((one.id.as_str(), one.payload.clone()), ("1", json!({"n": 1})));
    source.dead_letter(&one, "refused for the test").await.unwrap();
    source.ack(&one).await.unwrap();
    let dead = first.query_one("SELECT id, reason FROM plain_dead", &[]).await.unwrap();
    assert_eq!(
        (dead.get::<_, i64>(0), dead.get::<_, String>(1)),
        (1, "refused for the test".into())
    );
    assert_eq!(count(&first, "plain").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_is_cancel_safe_and_the_source_reconnects_after_an_outage() {
    let mut pg = PostgresProcess::start();
    let mut db = client(&pg).await;
    create_outbox(&db).await;
    let hub = hub();
    let config = bridge(&hub, "postgres", &format!("url = \"{}\"\npoll = \"60s\"", pg.url()));
    let mut source = PostgresSource::new(&config).unwrap();
    // Nothing to read: next() is dropped again and again while it waits.
    for _ in 0..5 {
        assert!(tokio::time::timeout(Duration::from_millis(50), source.next()).await.is_err());
    }
    insert(&mut db, "herald_outbox", &[("a", json!({"n": 1})), ("b", json!({"n": 2}))]).await;
    let first = next_within(&mut source, Duration::from_secs(10)).await;
    assert_eq!((first.id.as_str(), first.subject.as_str()), ("1", "a"));
    assert_eq!(first.payload, json!({"n": 1}));
    // Not acknowledged: the next read is the same event, not the one after it.
    assert_eq!(next_within(&mut source, Duration::from_secs(10)).await, first);
    assert_eq!(source.lag().await, Some(2));
    source.ack(&first).await.unwrap();

    // The server goes away: a waiting next() is woken with "unavailable", and so is every call
    // until it is back.
    let second = next_within(&mut source, Duration::from_secs(10)).await;
    source.ack(&second).await.unwrap();
    let waiting = tokio::spawn(async move {
        let result = source.next().await;
        (source, result)
    });
    until(Duration::from_secs(10), "the source waiting", async || source_waiting(&db).await).await;
    drop(db);
    pg.stop();
    let (mut source, result) =
        tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert!(matches!(result, Err(SourceError::Unavailable(_))), "{result:?}");
    assert!(matches!(source.next().await, Err(SourceError::Unavailable(_))));
    pg.start_again();
    let mut db = client(&pg).await;
    insert(&mut db, "herald_outbox", &[("c", json!({"n": 3}))]).await;
    let third = next_within(&mut source, Duration::from_secs(10)).await;
    assert_eq!((third.id.as_str(), third.payload.clone()), ("3", json!({"n": 3})));
    source.ack(&third).await.unwrap();
    assert_eq!(count(&db, "herald_outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_unlike_the_documented_one_is_reported_as_unavailable_not_a_panic() {
    let pg = PostgresProcess::start();
    let db = client(&pg).await;
    db.batch_execute(
        "CREATE TABLE odd (id bigserial PRIMARY KEY, subject text, payload text);
         INSERT INTO odd (subject, payload) VALUES (NULL, '{}');",
    )
    .await
    .unwrap();
    let hub = hub();
    let config = bridge(&hub, "postgres", &format!("url = \"{}\"\ntable = \"odd\"", pg.url()));
    let mut source = PostgresSource::new(&config).unwrap();
    let read = tokio::time::timeout(Duration::from_secs(10), source.next()).await.unwrap();
    let Err(SourceError::Unavailable(reason)) = read else { panic!("{read:?}") };
    assert!(reason.contains("outbox row of odd"), "{reason}");
}
