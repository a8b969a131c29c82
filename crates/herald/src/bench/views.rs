//! The `views` scenario (issue 13): N view subscribers of one keyed channel, each with its own
//! ad-hoc filter, and writes that move records from one view into another.
//!
//! The hub runs the kanban spec (`examples/kanban.herald`, entity `Task` in namespace `task`)
//! with `filters = true`. Setup upserts `--records` tasks with `assignee = "u{i % A}"`
//! (A = `--assignees`, default N) and subscribes client `i` to `assignee == "u{i % A}"`. Each
//! measured write is a merge that gives one task a new assignee, so the old assignee's views get
//! a `delete` (`reason: "left"`) and the new one's an `insert`: about two view events per write
//! when A = N, routed through the hub's index on `assignee`. `--unindexed` subscribes with the
//! same sets written as `not (assignee != "uK")`, which has no index term, so the hub evaluates
//! every view on every write: same deliveries, the difference is server CPU.
//!
//! The merge sets `title` to the send time in nanoseconds, which the subscriber reads back (from
//! the record of an insert, from the publication's data of a delete) for the latency.

use super::Outcome;
use super::client::{Hist, Ws, field_u64, now_ns};
use super::scenarios::{Plan, open_many};
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// The spec the started hub loads: the kanban board of the examples.
pub const KANBAN_SPEC: &str = include_str!("../../../../examples/kanban.herald");

/// The namespace of the spec's `Task` entity.
pub const NAMESPACE: &str = "task";

/// The `[namespaces.task]` table of the started hub's configuration: ad-hoc filters on, and
/// client publishing so the bench writes over its WebSocket.
pub const NAMESPACE_CONFIG: &str = "[namespaces.task]\nkeyed = true\nfilters = true\nsubscribe = \"authenticated\"\nclient_publish = true\nhistory_size = 1000\n";

/// What the views scenario needs beyond the common [`Plan`].
pub struct ViewsPlan {
    /// Tasks upserted before the subscribers arrive.
    pub records: usize,
    /// Distinct assignees (and so distinct filters); 0: one per subscriber.
    pub assignees: usize,
    /// Filters without an index term (every view evaluated on every write).
    pub unindexed: bool,
}

/// Counters shared by the subscriber tasks.
#[derive(Default)]
struct Shared {
    delivered: AtomicU64,
    errors: AtomicU64,
}

const PING: &str = r#"{"push":"ping"}"#;

/// The filter of assignee `k`.
fn filter(k: usize, unindexed: bool) -> String {
    if unindexed {
        format!(r#"not (assignee != \"u{k}\")"#)
    } else {
        format!(r#"assignee == \"u{k}\""#)
    }
}

/// Status of seed task `i`: the three values in turn.
fn status(i: usize) -> &'static str {
    ["todo", "doing", "done"][i % 3]
}

/// Runs the scenario: seed, subscribe, then measured writes between two /proc samples.
pub async fn views(plan: &Plan, v: &ViewsPlan) -> anyhow::Result<Outcome> {
    let n = plan.clients.max(1);
    let assignees = if v.assignees == 0 { n } else { v.assignees };
    if assignees < 2 {
        bail!("views needs at least two assignees (--assignees or --clients)");
    }
    let records = v.records.max(1);
    let channel = format!("{NAMESPACE}:bench-{:x}", now_ns() ^ u64::from(std::process::id()));

    // Seed the channel's records (not measured).
    let (ws, _) = plan.endpoint.session(usize::MAX / 2, &[]).await?;
    let (mut sink, mut source) = ws.split();
    let mut frame = String::new();
    let mut id = 2u64;
    let mut sent = 0u64;
    for chunk in (0..records).collect::<Vec<_>>().chunks(plan.batch.max(1)) {
        frame.clear();
        for &i in chunk {
            if !frame.is_empty() {
                frame.push('\n');
            }
            let _ = write!(
                frame,
                r#"{{"id":{id},"cmd":"publish","channel":"{channel}","key":"t{i}","op":"upsert","data":{{"title":"seed","status":"{}","assignee":"u{}","priority":{}}}}}"#,
                status(i),
                i % assignees,
                i % 10
            );
            id += 1;
        }
        sink.send(Message::text(frame.as_str())).await?;
        sent += chunk.len() as u64;
        // Keep the seed inside the outbound queue: wait for this frame's replies.
        let mut acked = id - 2 - chunk.len() as u64;
        while acked < sent {
            acked += count_replies(&mut source, "seeding").await?;
        }
    }

    // Subscribers: client i watches assignee i % A.
    let (opened, mut errors) = open_many(plan, n, plan.concurrency, |i| {
        vec![format!(
            r#"{{"id":2,"cmd":"subscribe","channel":"{channel}","filter":"{}","sub":"v"}}"#,
            filter(i % assignees, v.unindexed)
        )]
    })
    .await;
    let mut watchers = vec![0u64; assignees];
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(opened.len());
    for (i, ws, replies) in opened {
        watchers[i % assignees] += 1;
        let offset = replies.first().and_then(|r| r.offset).unwrap_or(0);
        tasks.push(tokio::spawn(subscriber(ws, offset, shared.clone(), stop_rx.clone())));
    }

    // The measured writes: task `seq % R` moves to another assignee.
    let mut current: Vec<usize> = (0..records).map(|i| i % assignees).collect();
    let mut expected = 0u64;
    // Cumulative expected deliveries after each write, for the window.
    let mut cumulative: Vec<u64> = Vec::new();
    let before = plan.usage();
    let start = Instant::now();
    let deadline = start + plan.duration;
    let mut published = 0u64;
    let mut acked = 0u64;
    let mut settled = 0usize;
    let mut reply_errors = 0u64;
    while published < plan.events && Instant::now() < deadline {
        let delivered = shared.delivered.load(Ordering::Relaxed);
        while settled < cumulative.len() && cumulative[settled] <= delivered {
            settled += 1;
        }
        let allowed = if plan.rate > 0 {
            let due = (start.elapsed().as_secs_f64() * plan.rate as f64) as u64;
            due.saturating_sub(published)
        } else {
            plan.window.saturating_sub(published - settled as u64)
        };
        let k = allowed.min(plan.events - published).min(plan.batch as u64);
        // Drain replies without blocking so the socket does not back up.
        while let Some(Some(Ok(msg))) = futures_util::FutureExt::now_or_never(source.next()) {
            let (a, e) = replies_in(&msg);
            acked += a;
            reply_errors += e;
        }
        if k == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        frame.clear();
        let t = now_ns();
        for _ in 0..k {
            let r = (published % records as u64) as usize;
            let from = current[r];
            // Anyone but the current assignee, spread over all of them.
            let step = 1 + (published.wrapping_mul(7919) % (assignees as u64 - 1)) as usize;
            let to = (from + step) % assignees;
            current[r] = to;
            expected += watchers[from] + watchers[to];
            cumulative.push(expected);
            if !frame.is_empty() {
                frame.push('\n');
            }
            let _ = write!(
                frame,
                r#"{{"id":{id},"cmd":"publish","channel":"{channel}","key":"t{r}","op":"merge","data":{{"assignee":"u{to}","title":"{t}"}}}}"#
            );
            id += 1;
            published += 1;
        }
        sink.send(Message::text(frame.as_str())).await?;
    }
    // Every reply, then every expected event (or 10 s).
    let until = Instant::now() + Duration::from_secs(10);
    while acked < published && Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(100), source.next()).await {
            Ok(Some(Ok(msg))) => {
                let (a, e) = replies_in(&msg);
                acked += a;
                reply_errors += e;
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    let after = plan.usage();
    let _ = stop_tx.send(true);
    let _ = sink.close().await;
    let mut latency = Hist::default();
    for t in tasks {
        if let Ok(h) = t.await {
            latency.merge(&h);
        }
    }
    let delivered = shared.delivered.load(Ordering::Relaxed);
    errors += reply_errors
        + published.saturating_sub(acked)
        + shared.errors.load(Ordering::Relaxed)
        + expected.abs_diff(delivered);
    Ok(Outcome {
        events: published,
        deliveries: delivered,
        elapsed,
        latency,
        errors,
        cpu_s: before.zip(after).map(|(b, a)| a.0 - b.0),
        rss: after.map(|a| a.1),
        ..Outcome::default()
    })
}

/// Reads frames until at least one reply arrives; a refused command fails the run.
async fn count_replies<S>(source: &mut S, what: &str) -> anyhow::Result<u64>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), source.next())
            .await
            .with_context(|| format!("no reply within 30 s while {what}"))?
            .with_context(|| format!("closed while {what}"))??;
        let (acked, errors) = replies_in(&msg);
        if errors > 0 {
            let text = msg.to_text().unwrap_or_default();
            bail!("publish refused while {what}: {text}");
        }
        if acked > 0 {
            return Ok(acked);
        }
    }
}

/// Replies (lines with an `id`) in a frame, and how many of them are errors.
fn replies_in(msg: &Message) -> (u64, u64) {
    let Message::Text(t) = msg else { return (0, 0) };
    let (mut acked, mut errors) = (0, 0);
    for line in t.as_str().split('\n') {
        if line.starts_with(r#"{"id":"#) {
            acked += 1;
            if line.contains(r#""error":"#) {
                if errors == 0 {
                    eprintln!("herald bench: publish refused: {line}");
                }
                errors += 1;
            }
        }
    }
    (acked, errors)
}

/// Reads view events until told to stop: checks that offsets grow, records latency.
async fn subscriber(
    mut ws: Ws,
    mut last: u64,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Hist {
    let mut hist = Hist::default();
    let mut errors = 0u64;
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => break,
            m = ws.next() => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                errors += 1;
                break;
            }
        };
        let now = now_ns();
        let mut n = 0;
        for line in text.as_str().split('\n') {
            if line.starts_with(r#"{"push":"view""#) {
                // The view's position is the publication's offset; it skips writes elsewhere.
                let offset = field_u64(line, r#""offset":"#);
                match offset {
                    Some(o) if o > last => last = o,
                    _ => errors += 1,
                }
                if let Some(t) = field_u64(line, r#""title":""#) {
                    hist.record(now.saturating_sub(t) / 1000);
                }
                n += 1;
            } else if line == PING {
                let _ = ws.send(Message::text(r#"{"cmd":"pong"}"#)).await;
            } else if !line.is_empty() {
                eprintln!("herald bench: view subscriber got {line}");
                errors += 1;
            }
        }
        shared.delivered.fetch_add(n, Ordering::Relaxed);
    }
    shared.errors.fetch_add(errors, Ordering::Relaxed);
    hist
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_the_same_assignee() {
        let spec = herald_spec::parse_spec(KANBAN_SPEC).expect("kanban spec parses");
        let catalog = herald_spec::Catalog::build(&[("kanban".into(), spec)]).expect("catalog");
        let task = catalog.entities.values().next().expect("Task");
        for unindexed in [false, true] {
            // The command carries the filter JSON-escaped.
            let text: String = serde_json::from_str(&format!("\"{}\"", filter(7, unindexed)))
                .expect("escaped filter");
            let f = herald_spec::filter::Filter::parse_for(&text, Some(task))
                .expect("filter parses and types against Task");
            assert!(f.matches(&serde_json::json!({"assignee": "u7"})));
            assert!(!f.matches(&serde_json::json!({"assignee": "u8"})));
            assert_eq!(f.index_term().is_some(), !unindexed, "{text}");
        }
    }
}
