//! The scenarios. Each sets up its connections first, then measures one bounded phase between
//! two /proc samples of the server.

use super::Outcome;
use super::client::{
    Endpoint, Hist, ReplyResult, Ws, field_u64, now_ns, push_api_publish, push_publish,
    subscribe_cmd,
};
use super::proc_usage;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt, stream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// What to run against which server.
pub struct Plan {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Clients.
    pub clients: usize,
    /// Publications (or missed publications per client for resume).
    pub events: u64,
    /// Event data size in bytes.
    pub size: usize,
    /// Fixed publish rate (0: windowed, as fast as accepted).
    pub rate: u64,
    /// Most publications in flight.
    pub window: u64,
    /// Publish commands per WebSocket frame, or items per HTTP request (1: `/api/publish`,
    /// more: `/api/publish/batch`).
    pub batch: usize,
    /// Concurrent connection attempts during setup.
    pub concurrency: usize,
    /// Bound of the measured phase.
    pub duration: Duration,
    /// Namespace of the bench channels.
    pub namespace: String,
    /// Server PID for /proc figures.
    pub pid: Option<u32>,
    /// PIDs of the other nodes (`--nodes`), counted with `pid`.
    pub other_pids: Vec<u32>,
    /// PIDs of the bench's `redis-server`s (`--redis`, `--redis-cluster`), counted apart.
    pub redis_pids: Vec<u32>,
    /// Publish through the HTTP API instead of a WebSocket (fanout, rooms).
    pub http: Option<HttpPublish>,
}

/// How the publisher uses the HTTP API.
#[derive(Clone)]
pub struct HttpPublish {
    /// The server's `x-api-key`.
    pub api_key: String,
    /// Keep-alive connections, one request in flight on each (or `pipeline`).
    pub connections: usize,
    /// Requests written back to back on a connection before its answers are read (1: one at a
    /// time, by reqwest; more: [`super::pipelined`]).
    pub pipeline: usize,
}

impl Plan {
    /// CPU seconds and RSS of the server, when its PID is known.
    pub(super) fn usage(&self) -> Option<(f64, u64)> {
        let mut total = self.pid.and_then(proc_usage)?;
        for pid in &self.other_pids {
            let (cpu, rss) = proc_usage(*pid)?;
            total = (total.0 + cpu, total.1 + rss);
        }
        Some(total)
    }

    /// CPU seconds of the bench's `redis-server`s, summed.
    fn redis_cpu(&self) -> Option<f64> {
        if self.redis_pids.is_empty() {
            return None;
        }
        self.redis_pids.iter().map(|p| proc_usage(*p).map(|u| u.0)).sum()
    }

    fn run_id(&self) -> String {
        format!("{:x}", now_ns() ^ u64::from(std::process::id()) << 32)
    }
}

/// Counters shared by the subscriber tasks.
#[derive(Default)]
struct Shared {
    delivered: AtomicU64,
    errors: AtomicU64,
    /// Bytes of the delivered publications' messages.
    bytes: AtomicU64,
    /// Publications each subscriber of a fan-out has received (empty for rooms): the window
    /// counts from the slowest, so that one starved reader cannot fall further behind than the
    /// window while the average keeps up (it would then be closed as a slow consumer, 4001).
    progress: Box<[AtomicU64]>,
}

impl Shared {
    /// Counters for `tracked` subscribers' own progress (0: only the totals).
    fn tracking(tracked: usize) -> Shared {
        Shared { progress: (0..tracked).map(|_| AtomicU64::new(0)).collect(), ..Shared::default() }
    }
}

const PING: &str = r#"{"push":"ping"}"#;

/// Opens `n` sessions, each with the extra commands `extra(i)`; failures count as errors.
pub(super) async fn open_many<F>(
    plan: &Plan,
    n: usize,
    concurrency: usize,
    extra: F,
) -> (Vec<(usize, Ws, Vec<ReplyResult>)>, u64)
where
    F: Fn(usize) -> Vec<String>,
{
    open_range(plan, 0..n, concurrency, extra).await
}

/// Like [`open_many`], for connections numbered `ids` (each number has its own source address
/// and port).
async fn open_range<F>(
    plan: &Plan,
    ids: std::ops::Range<usize>,
    concurrency: usize,
    extra: F,
) -> (Vec<(usize, Ws, Vec<ReplyResult>)>, u64)
where
    F: Fn(usize) -> Vec<String>,
{
    let endpoint = &plan.endpoint;
    let n = ids.len();
    let results: Vec<_> = stream::iter(ids)
        .map(|i| {
            let cmds = extra(i);
            async move { (i, endpoint.session(i, &cmds).await) }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut ok = Vec::with_capacity(n);
    let mut errors = 0;
    let mut first_error = None;
    for (i, r) in results {
        match r {
            Ok((ws, replies)) => ok.push((i, ws, replies)),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("herald bench: {errors} connections failed; first: {e:#}");
    }
    (ok, errors)
}

/// Reads publications until told to stop: checks offsets, records latency.
async fn subscriber(
    mut ws: Ws,
    mut last: u64,
    index: usize,
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
        let mut bytes = 0;
        for line in text.as_str().split('\n') {
            // v1 `{"push":"pub",...,"offset":N,...}`, v2 `[n,N,time,data...]`.
            let offset = if line.starts_with(r#"{"push":"pub""#) {
                Some(field_u64(line, r#""offset":"#))
            } else if line.starts_with(r#"{"push":"chunk""#) {
                // A part of a large publication (protocol §18): delivered with its last part.
                bytes += line.len() as u64;
                let (part, parts) = (field_u64(line, r#""part":"#), field_u64(line, r#""parts":"#));
                if part.is_none() || part.map(|p| p + 1) != parts {
                    continue;
                }
                bytes -= line.len() as u64;
                Some(field_u64(line, r#""offset":"#))
            } else if line.starts_with('[') {
                Some(line.split(',').nth(1).and_then(|o| o.parse().ok()))
            } else {
                None
            };
            if let Some(offset) = offset {
                bytes += line.len() as u64;
                if offset != Some(last + 1) {
                    errors += 1;
                }
                last = offset.unwrap_or(last + 1);
                if let Some(t) = field_u64(line, r#""t":"#) {
                    hist.record(now.saturating_sub(t) / 1000);
                }
                n += 1;
            } else if line == PING {
                let _ = ws.send(Message::text(r#"{"cmd":"pong"}"#)).await;
            } else if !line.is_empty() {
                // unsubscribe / disconnect / error pushes: the run is broken for this client.
                eprintln!("herald bench: subscriber got {line}");
                errors += 1;
            }
        }
        shared.delivered.fetch_add(n, Ordering::Relaxed);
        shared.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(progress) = shared.progress.get(index) {
            progress.fetch_add(n, Ordering::Relaxed);
        }
    }
    if std::env::var_os("HERALD_BENCH_DEBUG").is_some() {
        eprintln!("subscriber: last offset {last}, errors {errors}");
    }
    shared.errors.fetch_add(errors, Ordering::Relaxed);
    hist
}

/// Publishes `plan.events` to `channels` (cycling), windowed or at a fixed rate; returns how many
/// were published and how many replies were errors.
async fn publisher(
    plan: &Plan,
    channels: &[String],
    fan: u64,
    shared: &Shared,
) -> anyhow::Result<(u64, u64)> {
    if let Some(http) = &plan.http {
        if http.pipeline > 1 {
            return http_pipelined_publisher(plan, http, channels, fan, shared).await;
        }
        return http_publisher(plan, http, channels, fan, shared).await;
    }
    let (ws, _) = plan.endpoint.session(usize::MAX / 2, &[]).await?;
    let (mut sink, mut source) = ws.split();
    let acked = Arc::new(AtomicU64::new(0));
    let reply_errors = Arc::new(AtomicU64::new(0));
    let reader = {
        let (acked, reply_errors) = (acked.clone(), reply_errors.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = source.next().await {
                let Message::Text(t) = msg else { continue };
                for line in t.as_str().split('\n') {
                    if line.starts_with(r#"{"id":"#) {
                        if line.contains(r#""error":"#)
                            && reply_errors.fetch_add(1, Ordering::Relaxed) == 0
                        {
                            eprintln!("herald bench: publish refused: {line}");
                        }
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let start = Instant::now();
    let deadline = start + plan.duration;
    let mut published = 0u64;
    let mut frame = String::new();
    while published < plan.events && Instant::now() < deadline {
        let n = allowed(plan, start, published, fan, shared)
            .min(plan.events - published)
            .min(plan.batch as u64);
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        frame.clear();
        let t = now_ns();
        for k in 0..n {
            let seq = published + k;
            let channel = &channels[(seq % channels.len() as u64) as usize];
            push_publish(&mut frame, seq + 2, channel, plan.size, t);
        }
        sink.send(Message::text(frame.as_str())).await?;
        published += n;
    }
    // Wait for the replies so nothing is cut off.
    let until = Instant::now() + Duration::from_secs(10);
    while acked.load(Ordering::Relaxed) < published && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let missing = published.saturating_sub(acked.load(Ordering::Relaxed));
    reader.abort();
    let _ = sink.close().await;
    Ok((published, reply_errors.load(Ordering::Relaxed) + missing))
}

/// How many publications the window or the rate allows now.
fn allowed(plan: &Plan, start: Instant, published: u64, fan: u64, shared: &Shared) -> u64 {
    if plan.rate > 0 {
        let due = (start.elapsed().as_secs_f64() * plan.rate as f64) as u64;
        due.saturating_sub(published)
    } else {
        let slowest = shared.progress.iter().map(|p| p.load(Ordering::Relaxed)).min();
        let received = slowest.unwrap_or_else(|| shared.delivered.load(Ordering::Relaxed) / fan);
        plan.window.saturating_sub(published.saturating_sub(received))
    }
}

/// [`publisher`] over the HTTP API: `plan.batch` items per request (one: `/api/publish`, more:
/// `/api/publish/batch` with a JSON array), one request in flight per keep-alive connection.
/// A refused request, or a refused item in a batch, counts as an error.
async fn http_publisher(
    plan: &Plan,
    http: &HttpPublish,
    channels: &[String],
    fan: u64,
    shared: &Shared,
) -> anyhow::Result<(u64, u64)> {
    let connections = http.connections.max(1);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let addr = plan.endpoint.addr;
    let url = if plan.batch > 1 {
        format!("http://{addr}/api/publish/batch")
    } else {
        format!("http://{addr}/api/publish")
    };
    let send = |body: String| {
        let request = client
            .post(&url)
            .header("x-api-key", &http.api_key)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let resp = request.send().await?;
            let ok = resp.status().is_success();
            let text = resp.text().await?;
            // A batch answers 200 with a per-item error inside.
            let refused = if ok { text.matches(r#""error":"#).count() as u64 } else { 1 };
            anyhow::Ok((refused, text))
        }
    };
    let start = Instant::now();
    let deadline = start + plan.duration;
    let mut published = 0u64;
    let mut errors = 0u64;
    let mut in_flight = FuturesUnordered::new();
    loop {
        let more = published < plan.events && Instant::now() < deadline;
        let n = allowed(plan, start, published, fan, shared)
            .min(plan.events - published)
            .min(plan.batch as u64);
        if more && n > 0 && in_flight.len() < connections {
            in_flight.push(send(api_body(plan, channels, published, n, now_ns())));
            published += n;
            continue;
        }
        if in_flight.is_empty() {
            if !more {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        // Wait for an answer; while the window is what holds publishing back, also for a
        // delivery (so publishing resumes as soon as the window opens).
        let answer = if more && in_flight.len() < connections {
            tokio::select! {
                a = in_flight.next() => a,
                _ = tokio::time::sleep(Duration::from_millis(1)) => None,
            }
        } else {
            in_flight.next().await
        };
        match answer {
            Some(Ok((refused, text))) => {
                if refused > 0 && errors == 0 {
                    eprintln!("herald bench: publish refused: {text}");
                }
                errors += refused;
            }
            Some(Err(e)) => {
                eprintln!("herald bench: publish request failed: {e:#}");
                errors += 1;
            }
            None => {}
        }
    }
    Ok((published, errors))
}

/// The body of one HTTP publish request: events `first..first + n` (a JSON array on the batch
/// route), sent at `t`.
fn api_body(plan: &Plan, channels: &[String], first: u64, n: u64, t: u64) -> String {
    let mut body = String::with_capacity(2 + n as usize * (plan.size + 64));
    if plan.batch > 1 {
        body.push('[');
    }
    for k in 0..n {
        if k > 0 {
            body.push(',');
        }
        let seq = first + k;
        let channel = &channels[(seq % channels.len() as u64) as usize];
        push_api_publish(&mut body, channel, plan.size, t);
    }
    if plan.batch > 1 {
        body.push(']');
    }
    body
}

/// [`http_publisher`] with HTTP/1.1 pipelining: on each connection up to `http.pipeline`
/// requests (of `plan.batch` events each) are written at once, then their answers read.
async fn http_pipelined_publisher(
    plan: &Plan,
    http: &HttpPublish,
    channels: &[String],
    fan: u64,
    shared: &Shared,
) -> anyhow::Result<(u64, u64)> {
    use super::pipelined::Pipelined;
    let addr = plan.endpoint.addr;
    let host = addr.to_string();
    let path = if plan.batch > 1 { "/api/publish/batch" } else { "/api/publish" };
    let per_request = plan.batch.max(1) as u64;
    let mut idle = Vec::with_capacity(http.connections);
    for _ in 0..http.connections {
        idle.push(Pipelined::connect(addr).await?);
    }
    let round = |mut conn: Pipelined, bodies: Vec<String>| {
        let (host, key) = (host.as_str(), http.api_key.as_str());
        async move {
            let answers = conn.round(host, path, key, &bodies).await;
            (conn, answers)
        }
    };
    let start = Instant::now();
    let deadline = start + plan.duration;
    let mut published = 0u64;
    let mut errors = 0u64;
    let mut in_flight = FuturesUnordered::new();
    loop {
        let more = published < plan.events && Instant::now() < deadline;
        let n = allowed(plan, start, published, fan, shared)
            .min(plan.events - published)
            .min(per_request * http.pipeline as u64);
        if more && n > 0 && !idle.is_empty() {
            let t = now_ns();
            let bodies: Vec<String> = (0..n.div_ceil(per_request))
                .map(|r| {
                    let first = published + r * per_request;
                    api_body(plan, channels, first, per_request.min(published + n - first), t)
                })
                .collect();
            let conn = idle.pop().expect("checked");
            in_flight.push(round(conn, bodies));
            published += n;
            continue;
        }
        if in_flight.is_empty() {
            if !more || idle.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let answer = if more && !idle.is_empty() {
            tokio::select! {
                a = in_flight.next() => a,
                _ = tokio::time::sleep(Duration::from_millis(1)) => None,
            }
        } else {
            in_flight.next().await
        };
        match answer {
            Some((conn, Ok(answers))) => {
                idle.push(conn);
                for (status, body) in answers {
                    let text = String::from_utf8_lossy(&body);
                    // A batch answers 200 with a per-item error inside.
                    let refused =
                        if status == 200 { text.matches(r#""error":"#).count() as u64 } else { 1 };
                    if refused > 0 && errors == 0 {
                        eprintln!("herald bench: publish refused ({status}): {text}");
                    }
                    errors += refused;
                }
            }
            // The connection is dropped; its requests count as refused.
            Some((_, Err(e))) => {
                eprintln!("herald bench: pipelined requests failed: {e:#}");
                errors += 1;
            }
            None => {}
        }
    }
    Ok((published, errors))
}

/// Subscribers on `channel_of(i)`, a publisher cycling over `channels`.
async fn pubsub(plan: &Plan, channels: Vec<String>, fan: u64) -> anyhow::Result<Outcome> {
    let n = plan.clients;
    let (opened, mut errors) = open_many(plan, n, plan.concurrency, |i| {
        vec![subscribe_cmd(2, &channels[i % channels.len()], None)]
    })
    .await;
    // One channel: the window follows its slowest subscriber.
    let tracked = if channels.len() == 1 { opened.len() } else { 0 };
    let shared = Arc::new(Shared::tracking(tracked));
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(index, (_, ws, replies))| {
            let offset = replies[0].offset.unwrap_or(0);
            tokio::spawn(subscriber(ws, offset, index, shared.clone(), stop_rx.clone()))
        })
        .collect();
    let subscribed = tasks.len() as u64;
    // Fan per publication: subscribers per channel.
    let fan = if channels.len() == 1 { subscribed.max(1) } else { fan };
    let before = plan.usage();
    let redis_before = plan.redis_cpu();
    let read_before = super::client::wire_bytes_read();
    let start = Instant::now();
    let (published, publish_errors) = publisher(plan, &channels, fan, &shared).await?;
    errors += publish_errors;
    let expected = if channels.len() == 1 {
        published * subscribed
    } else {
        // One subscriber per channel; a client that failed to subscribe is already an error.
        published * subscribed / plan.clients.max(1) as u64
    };
    let until = Instant::now() + Duration::from_secs(10);
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    let after = plan.usage();
    let redis_cpu_s = redis_before.zip(plan.redis_cpu()).map(|(b, a)| a - b);
    let wire = super::client::wire_bytes_read() - read_before;
    let _ = stop_tx.send(true);
    let mut latency = Hist::default();
    for t in tasks {
        if let Ok(h) = t.await {
            latency.merge(&h);
        }
    }
    let delivered = shared.delivered.load(Ordering::Relaxed);
    errors += shared.errors.load(Ordering::Relaxed) + expected.saturating_sub(delivered);
    let bytes = shared.bytes.load(Ordering::Relaxed);
    Ok(Outcome {
        bytes_per_delivery: (delivered > 0).then(|| bytes as f64 / delivered as f64),
        wire_bytes_per_delivery: (delivered > 0).then(|| wire as f64 / delivered as f64),
        events: published,
        deliveries: delivered,
        elapsed,
        latency,
        errors,
        cpu_s: before.zip(after).map(|(b, a)| a.0 - b.0),
        rss: after.map(|a| a.1),
        rss_growth_per_conn: before
            .zip(after)
            .map(|(b, a)| (a.1 as f64 - b.1 as f64) / subscribed.max(1) as f64),
        redis_cpu_s,
        ..Outcome::default()
    })
}

/// One channel, N subscribers.
pub async fn fanout(plan: &Plan) -> anyhow::Result<Outcome> {
    let channel = format!("{}:fanout-{}", plan.namespace, plan.run_id());
    pubsub(plan, vec![channel], plan.clients as u64).await
}

/// N clients, each in its own channel.
pub async fn rooms(plan: &Plan) -> anyhow::Result<Outcome> {
    let id = plan.run_id();
    let channels =
        (0..plan.clients.max(1)).map(|i| format!("{}:room-{id}-{i}", plan.namespace)).collect();
    pubsub(plan, channels, 1).await
}

/// Opens N authenticated connections; with `idle`, reports RSS per connection: over all N, and
/// over the second half alone (what one more connection costs, without the fixed cost of the
/// handshakes' buffers that the allocator keeps after the first ones).
pub async fn connect(plan: &Plan, idle: bool) -> anyhow::Result<Outcome> {
    // Let the server settle (allocator, pending handshakes), then sample.
    async fn settled(plan: &Plan) -> Option<(f64, u64)> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        plan.usage()
    }
    let before = plan.usage();
    let start = Instant::now();
    let half = if idle { plan.clients / 2 } else { plan.clients };
    let (mut opened, mut errors) =
        open_range(plan, 0..half, plan.concurrency, |_| Vec::new()).await;
    let mut setup = start.elapsed();
    let mut middle = None;
    if half < plan.clients {
        middle = settled(plan).await.map(|m| (m, opened.len()));
        let again = Instant::now();
        let (more, more_errors) =
            open_range(plan, half..plan.clients, plan.concurrency, |_| Vec::new()).await;
        setup += again.elapsed();
        opened.extend(more);
        errors += more_errors;
    }
    let elapsed = setup;
    let ok = opened.len();
    if std::env::var_os("HERALD_BENCH_DEBUG").is_some() {
        let p: Vec<u64> = super::client::PHASES
            .iter()
            .map(|a| a.load(Ordering::Relaxed) / ok.max(1) as u64)
            .collect();
        eprintln!("avg us: tcp {} tcp+ws {}", p[0], p[1]);
    }
    let mut outcome = Outcome {
        elapsed,
        errors,
        conns_per_sec: Some(ok as f64 / elapsed.as_secs_f64().max(1e-9)),
        ..Outcome::default()
    };
    let mut after = plan.usage();
    if idle {
        after = settled(plan).await;
        if let (Some(b), Some(a)) = (before, after) {
            outcome.bytes_per_conn = Some((a.1 as f64 - b.1 as f64) / ok.max(1) as f64);
        }
        if let (Some((m, at)), Some(a)) = (middle, after) {
            let added = ok.saturating_sub(at).max(1) as f64;
            outcome.marginal_bytes_per_conn = Some((a.1 as f64 - m.1 as f64) / added);
        }
    }
    outcome.cpu_s = before.zip(after).map(|(b, a)| a.0 - b.0);
    outcome.rss = after.map(|a| a.1);
    drop(opened);
    Ok(outcome)
}

/// N clients subscribe, disconnect, miss M publications, reconnect with `since` together.
pub async fn resume(plan: &Plan) -> anyhow::Result<Outcome> {
    let channel = format!("{}:resume-{}", plan.namespace, plan.run_id());
    let n = plan.clients;
    let (opened, mut errors) =
        open_many(plan, n, plan.concurrency, |_| vec![subscribe_cmd(2, &channel, None)]).await;
    let (epoch, offset) = match opened.first() {
        Some((_, _, r)) => (r[0].epoch.clone().unwrap_or_default(), r[0].offset.unwrap_or(0)),
        None => anyhow::bail!("no client could subscribe"),
    };
    let survivors: Vec<usize> = opened.iter().map(|(i, _, _)| *i).collect();
    drop(opened);
    // The missed publications, acknowledged before anyone comes back.
    let shared = Shared::default();
    let quiet = Plan {
        rate: 0,
        window: u64::MAX,
        endpoint: plan.endpoint.clone(),
        namespace: plan.namespace.clone(),
        other_pids: plan.other_pids.clone(),
        redis_pids: plan.redis_pids.clone(),
        http: None,
        ..*plan
    };
    let (published, publish_errors) =
        publisher(&quiet, std::slice::from_ref(&channel), 1, &shared).await?;
    errors += publish_errors;
    let before = plan.usage();
    let start = Instant::now();
    let endpoint = &plan.endpoint;
    let since = subscribe_cmd(2, &channel, Some((&epoch, offset)));
    let results: Vec<_> = stream::iter(survivors)
        .map(|i| {
            let cmds = vec![since.clone()];
            async move {
                let r = endpoint.session(i, &cmds).await;
                (r, start.elapsed())
            }
        })
        .buffer_unordered(n.clamp(1, 1024))
        .collect()
        .await;
    let elapsed = start.elapsed();
    let after = plan.usage();
    let mut latency = Hist::default();
    let mut deliveries = 0;
    let mut sockets = Vec::with_capacity(results.len());
    for (r, at) in results {
        let Ok((ws, replies)) = r else {
            errors += 1;
            continue;
        };
        sockets.push(ws);
        let result = &replies[0];
        let pubs = &result.publications;
        let contiguous = pubs.iter().enumerate().all(|(k, p)| p.offset == offset + 1 + k as u64);
        if result.recovered != Some(true) || pubs.len() as u64 != published || !contiguous {
            errors += 1;
        } else {
            deliveries += published;
            latency.record(at.as_micros() as u64);
        }
    }
    drop(sockets);
    Ok(Outcome {
        events: published,
        deliveries,
        elapsed,
        recovered_ms: Some(elapsed.as_secs_f64() * 1000.0),
        latency,
        errors,
        cpu_s: before.zip(after).map(|(b, a)| a.0 - b.0),
        rss: after.map(|a| a.1),
        ..Outcome::default()
    })
}
