//! The `presence` scenario (issue 14): N members of one channel, all following its presence,
//! and a churn of members leaving and joining.
//!
//! Setup: N connections subscribe to one channel of a `presence = true` namespace with
//! `presence: true` and a distinct `member`; the bench waits until every member's list counts N.
//! Then it measures, not under churn, how long a new member (N + 1) waits from its `subscribe`
//! to the whole `presence_list`, and the server's RSS per member (RSS growth over setup / N,
//! connections included). The measured phase: `--churn` × N members per second close their
//! connection and reconnect as a new member (a new tab: a fresh `member` id, so each cycle is a
//! leave and a join that the window cannot fold away), for `--duration`; every member counts
//! the `presence` events it receives. After the churn, every member's count must settle at N
//! again (the list it got plus joins minus leaves): a member that does not is an error.
//! Figures: presence events delivered per server CPU-second of the measured phase, and the
//! subscribe-to-list latency of the reconnects.

use super::Outcome;
use super::client::{Endpoint, Hist, Ws, field_u64, now_ns};
use super::scenarios::Plan;
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

/// The namespace of the presence channel.
pub const NAMESPACE: &str = "room";

/// The `[namespaces.room]` table of the started hub's configuration: presence on, the default
/// window, no history of the channel itself (only its presence stream keeps one).
pub const NAMESPACE_CONFIG: &str =
    "[namespaces.room]\npresence = true\nsubscribe = \"authenticated\"\nhistory_size = 0\n";

/// What the presence scenario needs beyond the common [`Plan`].
pub struct PresencePlan {
    /// Fraction of the members that leave and join again each second.
    pub churn: f64,
}

/// State shared by the member tasks and the driver.
struct Shared {
    /// Presence events received (all members), since the last reset.
    delivered: AtomicU64,
    /// Failures: refused commands, lost connections, offsets going back.
    errors: AtomicU64,
    /// Rejoins completed (or failed), so the settling waits for the last notified ones.
    rejoined: AtomicU64,
    /// Each member's count of the channel's members (-1 while it is (re)joining).
    counts: Vec<AtomicI64>,
}

const PING: &str = r#"{"push":"ping"}"#;

/// Runs the scenario: join N, one probe join, churn for the duration, settle.
pub async fn presence(plan: &Plan, p: &PresencePlan) -> anyhow::Result<Outcome> {
    let n = plan.clients.max(2);
    let channel = format!("{NAMESPACE}:bench-{:x}", now_ns() ^ u64::from(std::process::id()));
    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        rejoined: AtomicU64::new(0),
        counts: (0..n).map(|_| AtomicI64::new(-1)).collect(),
    });
    let endpoint = Arc::new(plan.endpoint.clone());
    let before_setup = plan.usage();

    // Setup: every member joins (a bounded number at a time) and follows.
    let gate = Arc::new(Semaphore::new(plan.concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let churn_signals: Vec<Arc<Notify>> = (0..n).map(|_| Arc::new(Notify::new())).collect();
    let mut tasks = Vec::with_capacity(n);
    for (i, signal) in churn_signals.iter().enumerate() {
        tasks.push(tokio::spawn(member(
            Member { i, endpoint: endpoint.clone(), channel: channel.clone() },
            shared.clone(),
            gate.clone(),
            signal.clone(),
            stop_rx.clone(),
        )));
    }
    // The setup delivers about N²/2 joins (each to every member already there): 50 million
    // at 10,000, minutes on a small machine, so the bound grows with N² (50k deliveries/s).
    let setup_bound = (Duration::from_secs(60) + Duration::from_secs((n * n / 100_000) as u64))
        .max(plan.duration);
    if !settle(&shared, n, 0, setup_bound).await {
        bail!("the {n} members did not all see {n} members within {setup_bound:?}");
    }
    // Let the server settle (allocator, pending frames), then sample RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_setup = plan.usage();
    let bytes_per_member =
        before_setup.zip(after_setup).map(|(b, a)| (a.1 as f64 - b.1 as f64) / n as f64);

    // A new member at N: subscribe to the whole list, three times; the median.
    let mut probes = Vec::new();
    for k in 0..3 {
        let mut ws = open_member(&endpoint, n + k).await?;
        let t0 = Instant::now();
        ws.send(Message::text(subscribe(&channel, &format!("probe{k}"), n + k))).await?;
        let list = wait_list(&mut ws).await?;
        probes.push(t0.elapsed().as_secs_f64() * 1000.0);
        if list.members != n {
            eprintln!("herald bench: the probe's list has {} members, not {n}", list.members);
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        let _ = ws.close(None).await;
    }
    probes.sort_by(f64::total_cmp);
    if !settle(&shared, n, 0, Duration::from_secs(10)).await {
        bail!("the members did not settle after the probe joins");
    }

    // The measured churn.
    shared.delivered.store(0, Ordering::Relaxed);
    let before = plan.usage();
    let start = Instant::now();
    let per_sec = p.churn.max(0.0) * n as f64;
    let mut churned = 0u64;
    while start.elapsed() < plan.duration {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let due = (start.elapsed().as_secs_f64() * per_sec) as u64;
        while churned < due {
            churn_signals[(churned % n as u64) as usize].notify_one();
            churned += 1;
        }
    }
    let settled = settle(&shared, n, churned, Duration::from_secs(20)).await;
    let elapsed = start.elapsed();
    let after = plan.usage();
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let off = shared.counts.iter().filter(|c| c.load(Ordering::Relaxed) != n as i64).count();
    if !settled {
        eprintln!("herald bench: {off} members do not count {n} members after the churn");
    }
    let _ = stop_tx.send(true);
    let mut latency = Hist::default();
    for t in tasks {
        if let Ok(h) = t.await {
            latency.merge(&h);
        }
    }
    Ok(Outcome {
        events: churned,
        deliveries: delivered,
        elapsed,
        latency,
        errors: shared.errors.load(Ordering::Relaxed) + off as u64,
        cpu_s: before.zip(after).map(|(b, a)| a.0 - b.0),
        rss: after.map(|a| a.1),
        bytes_per_conn: bytes_per_member,
        recovered_ms: probes.get(probes.len() / 2).copied(),
        ..Outcome::default()
    })
}

/// Waits until `rejoins` rejoins are done and every member counts `n` members, or `bound`
/// passes.
async fn settle(shared: &Shared, n: usize, rejoins: u64, bound: Duration) -> bool {
    let until = Instant::now() + bound;
    while Instant::now() < until {
        if shared.rejoined.load(Ordering::Relaxed) >= rejoins
            && shared.counts.iter().all(|c| c.load(Ordering::Relaxed) == n as i64)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Who a member task is.
struct Member {
    i: usize,
    endpoint: Arc<Endpoint>,
    channel: String,
}

/// The `subscribe` of member `id` with presence followed.
fn subscribe(channel: &str, id: &str, i: usize) -> String {
    format!(
        r#"{{"id":2,"cmd":"subscribe","channel":"{channel}","presence":true,"member":"{id}","info":{{"n":{i}}}}}"#
    )
}

/// Opens a connection and completes `connect`.
async fn open_member(endpoint: &Endpoint, n: usize) -> anyhow::Result<Ws> {
    let mut ws = endpoint.open(n).await?;
    ws.send(Message::text(format!(r#"{{"id":1,"cmd":"connect","token":"{}"}}"#, endpoint.token)))
        .await?;
    loop {
        let text = next_text(&mut ws).await?;
        if text.lines().any(|l| l.starts_with(r#"{"id":1,"#)) {
            if text.contains(r#""error":"#) {
                bail!("connect refused: {text}");
            }
            return Ok(ws);
        }
    }
}

/// The next text frame (30 s bound).
async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("nothing within 30 s")?;
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed"),
        }
    }
}

/// A received member list.
struct List {
    /// Members in it.
    members: usize,
    /// Its presence offset.
    offset: u64,
    /// `presence` events that came in the same frames after it: (count change, offset).
    after: Vec<(i64, u64)>,
    more: bool,
}

/// Reads until the subscribe reply and the `presence_list` arrived.
async fn wait_list(ws: &mut Ws) -> anyhow::Result<List> {
    let mut list: Option<List> = None;
    loop {
        let text = next_text(ws).await?;
        if std::env::var_os("HERALD_BENCH_DEBUG").is_some() {
            eprintln!("member frame: {text}");
        }
        for line in text.split('\n') {
            if line.starts_with(r#"{"id":2,"#) && line.contains(r#""error":"#) {
                bail!("subscribe refused: {line}");
            } else if line.contains(r#""push":"presence_list""#) {
                let v: serde_json::Value = serde_json::from_str(line)?;
                let members = v["members"].as_array().map_or(0, Vec::len);
                let offset = v["offset"].as_u64().unwrap_or(0);
                let more = v["more"] == true;
                match &mut list {
                    Some(l) if l.more => {
                        l.members += members;
                        l.more = more;
                    }
                    _ => list = Some(List { members, offset, after: Vec::new(), more }),
                }
            } else if let Some(l) = &mut list
                && let Some(e) = event(line)
            {
                l.after.push(e);
            }
        }
        if let Some(l) = list.take_if(|l| !l.more) {
            return Ok(l);
        }
    }
}

/// A `presence` event line: its change of the member count and its offset.
fn event(line: &str) -> Option<(i64, u64)> {
    // The server writes keys in any order (sorted today).
    let push = line.contains(r#""push":"presence","#) || line.ends_with(r#""push":"presence"}"#);
    if !push {
        return None;
    }
    let change = if line.contains(r#""event":"join""#) {
        1
    } else if line.contains(r#""event":"leave""#) {
        -1
    } else {
        0
    };
    Some((change, field_u64(line, r#""offset":"#).unwrap_or(0)))
}

/// (Re)joins as member `m{i}g{generation}` and returns the connection, its member count and
/// presence offset.
async fn join(m: &Member, generation: u64) -> anyhow::Result<(Ws, i64, u64)> {
    let id = format!("m{}g{generation}", m.i);
    let mut ws = open_member(&m.endpoint, m.i).await?;
    ws.send(Message::text(subscribe(&m.channel, &id, m.i))).await?;
    let list = wait_list(&mut ws).await?;
    let mut count = list.members as i64;
    let mut last = list.offset;
    for (change, offset) in list.after {
        if offset > last {
            count += change;
            last = offset;
        }
    }
    Ok((ws, count, last))
}

/// One member: joins, follows the presence events, leaves and joins again as a new member
/// when `churn` is notified; returns the subscribe-to-list latencies of its rejoins.
async fn member(
    m: Member,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    churn: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> Hist {
    let mut hist = Hist::default();
    let slot = &shared.counts[m.i];
    let first = {
        let _permit = gate.acquire().await;
        join(&m, 0).await
    };
    let (mut ws, mut count, mut last) = match first {
        Ok(j) => j,
        Err(e) => {
            eprintln!("herald bench: member {} could not join: {e:#}", m.i);
            shared.errors.fetch_add(1, Ordering::Relaxed);
            return hist;
        }
    };
    slot.store(count, Ordering::Relaxed);
    let mut generation = 0u64;
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = churn.notified() => {
                slot.store(-1, Ordering::Relaxed);
                let _ = ws.close(None).await;
                generation += 1;
                let t0 = now_ns();
                let rejoin = join(&m, generation).await;
                shared.rejoined.fetch_add(1, Ordering::Relaxed);
                match rejoin {
                    Ok((w, c, l)) => {
                        hist.record(now_ns().saturating_sub(t0) / 1000);
                        (ws, count, last) = (w, c, l);
                        slot.store(count, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("herald bench: member {} could not rejoin: {e:#}", m.i);
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                continue;
            }
            r = ws.next() => r,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                eprintln!("herald bench: member {} lost its connection", m.i);
                shared.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        let mut n = 0;
        for line in text.as_str().split('\n') {
            if let Some((change, offset)) = event(line) {
                if offset <= last {
                    eprintln!("herald bench: member {} got offset {offset} after {last}", m.i);
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                last = offset;
                count += change;
                n += 1;
            } else if line == PING {
                let _ = ws.send(Message::text(r#"{"cmd":"pong"}"#)).await;
            } else if !line.is_empty() {
                eprintln!("herald bench: member got {line}");
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        slot.store(count, Ordering::Relaxed);
        shared.delivered.fetch_add(n, Ordering::Relaxed);
    }
    hist
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_change_the_count() {
        let join = r#"{"push":"presence","channel":"room:1","event":"join","member":"bench/m1g0","user":"bench","info":{"n":1},"epoch":"e","offset":12}"#;
        let leave = r#"{"push":"presence","channel":"room:1","event":"leave","member":"bench/m1g0","user":"bench","epoch":"e","offset":13}"#;
        let update = r#"{"push":"presence","channel":"room:1","event":"update","member":"bench/m1g0","user":"bench","info":{"n":2},"epoch":"e","offset":14}"#;
        assert_eq!(event(join), Some((1, 12)));
        assert_eq!(event(leave), Some((-1, 13)));
        assert_eq!(event(update), Some((0, 14)));
        assert_eq!(event(r#"{"push":"presence_list","channel":"room:1"}"#), None);
        let sorted = r#"{"channel":"room:1","epoch":"e","event":"join","info":{"n":0},"member":"bench/m0g0","offset":1,"push":"presence","user":"bench"}"#;
        assert_eq!(event(sorted), Some((1, 1)));
        let last = r#"{"channel":"room:1","event":"leave","offset":2,"push":"presence"}"#;
        assert_eq!(event(last), Some((-1, 2)));
    }

    #[test]
    fn subscribe_is_json_with_presence() {
        let v: serde_json::Value = serde_json::from_str(&subscribe("room:x", "m3g1", 3)).unwrap();
        assert_eq!((v["presence"].as_bool(), v["member"].as_str()), (Some(true), Some("m3g1")));
        assert_eq!(v["info"]["n"], 3);
    }
}
