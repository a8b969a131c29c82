//! `/metrics` against the real binary: the figures operators chart (per-namespace publications
//! and deliveries, HTTP API requests by route and status, queues, process, build, Redis round
//! trips) are there with values that match the traffic made, and every metric the Grafana
//! dashboard in docs/grafana/ queries is one `/metrics` exposes.

mod support;

use herald_protocol::command::{Command, PublishCommand};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use support::*;

const CONFIG: &str = r#"
[namespaces.default]
[namespaces.chat]
client_publish = true
[namespaces.quiet]
"#;

/// Metric names only the Redis engine exposes; checked against a Redis-engine node.
const REDIS_ONLY: &[&str] = &[
    "herald_redis_round_trip_seconds_bucket",
    "herald_redis_round_trip_seconds_sum",
    "herald_redis_round_trip_seconds_count",
];

async fn scrape(hub: &Hub) -> String {
    let (status, body) = hub.api("GET", "/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    body.as_str().expect("metrics are text").to_string()
}

/// The value of one series (`name{labels}` exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Scrapes until `series` reaches `at_least` (the fan-out counts just after it pushes, so a
/// received publication may be seen a moment before its count); panics after [`WAIT`].
async fn wait_for(hub: &Hub, series: &str, at_least: f64) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(hub).await;
        if sample(&text, series).is_some_and(|v| v >= at_least) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {at_least}:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Has the hub close one connection (a kick), so the close counter has a series: a family
/// without one is not exposed at all, and the dashboard charts it.
async fn kick_one(hub: &Hub) {
    let mut ws = hub.client("kicked", &[]).await;
    let (status, body) = hub.api("POST", "/api/disconnect", Some(json!({"user": "kicked"}))).await;
    assert_eq!((status, &body["disconnected"]), (200, &json!(1)), "{body}");
    ws.expect_close().await;
}

/// Every sample name `/metrics` exposes (`herald_x_total`, `herald_y_bucket`, ...), including
/// those of a declared family with no series yet (`herald_closes_total` before any close): the
/// names a `# TYPE` line promises.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    for declared in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let Some((name, kind)) = declared.split_once(' ') else { continue };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
    }
    names
}

/// Metric names a PromQL expression reads: identifiers outside strings, label matchers and
/// ranges that are neither a function call, a keyword nor a `by (...)`/`without (...)` label.
fn metric_names(expr: &str) -> Vec<String> {
    // Words followed by a list of labels, not of expressions.
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    // Aggregations may put `by (...)` between their name and their `(`.
    const KEYWORDS: &[&str] = &[
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let (mut names, mut at, mut in_labels) = (Vec::new(), 0, false);
    while at < chars.len() {
        let c = chars[at];
        match c {
            '"' => {
                at += 1;
                while at < chars.len() && chars[at] != '"' {
                    at += if chars[at] == '\\' { 2 } else { 1 };
                }
                at += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while at < chars.len() && chars[at] != close {
                    if chars[at] == '"' {
                        at += 1;
                        while at < chars.len() && chars[at] != '"' {
                            at += if chars[at] == '\\' { 2 } else { 1 };
                        }
                    }
                    at += 1;
                }
                at += 1;
            }
            ')' => {
                in_labels = false;
                at += 1;
            }
            c if c.is_ascii_digit() => {
                while at < chars.len() && (chars[at].is_ascii_alphanumeric() || chars[at] == '.') {
                    at += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' => {
                let start = at;
                while at < chars.len()
                    && (chars[at].is_ascii_alphanumeric() || matches!(chars[at], '_' | ':' | '$'))
                {
                    at += 1;
                }
                let word: String = chars[start..at].iter().collect();
                let next = chars[at..].iter().find(|c| !c.is_whitespace()).copied();
                if LABEL_LISTS.contains(&word.as_str()) {
                    in_labels = true;
                } else if !(in_labels
                    || next == Some('(')
                    || word.starts_with('$')
                    || KEYWORDS.contains(&word.as_str()))
                {
                    names.push(word);
                }
            }
            _ => at += 1,
        }
    }
    names
}

/// Every metric name the dashboard's panel queries and variable queries read.
fn dashboard_names() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/grafana/herald-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        // `label_values(EXPR, label)`: the expression is what names a metric.
        let query = variable["query"].as_str().unwrap();
        let inner = query.strip_prefix("label_values(").and_then(|q| q.rsplit_once(',')).unwrap();
        exprs.push(inner.0.to_string());
    }
    assert!(exprs.len() >= 12, "the dashboard has its panels: {exprs:?}");
    exprs.iter().flat_map(|e| metric_names(e)).collect()
}

#[test]
fn names_are_read_from_promql() {
    let expr = r#"histogram_quantile(0.99, sum by (le, instance) (rate(herald_x_bucket{a="b{[",c=~"$i"}[$__rate_interval]))) / on (instance) herald_y"#;
    assert_eq!(metric_names(expr), ["herald_x_bucket", "herald_y"]);
    let names = dashboard_names();
    let stray: Vec<&String> =
        names.iter().filter(|n| !(n.starts_with("herald_") || n.starts_with("process_"))).collect();
    assert!(stray.is_empty(), "not metric names: {stray:?} (of {names:?})");
    assert!(names.contains("herald_namespace_deliveries_total"), "{names:?}");
}

#[tokio::test]
async fn metrics_count_the_traffic_and_cover_the_dashboard() {
    let hub = Hub::start(CONFIG);
    let mut ws = Ws::open(&hub.ws_url()).await;
    let claims = json!({
        "sub": "m", "exp": herald_server::auth::unix_now() + 600,
        "channels": ["chat:*"], "publish": ["chat:*"],
    });
    ws.request(Command::Connect { token: Some(token_with(claims)), name: None, version: None })
        .await
        .expect("connect");
    ws.subscribe("chat:1").await;
    for n in 0..3 {
        hub.publish("chat:1", json!(n)).await;
    }
    hub.publish("quiet:nobody", json!("unheard")).await;
    let data = serde_json::value::RawValue::from_string("\"by ws\"".into()).unwrap();
    ws.request(Command::Publish(PublishCommand {
        channel: "chat:1".into(),
        kind: None,
        data,
        key: None,
        op: None,
        idempotency_key: None,
        correlation_id: None,
    }))
    .await
    .expect("client publish");
    for _ in 0..4 {
        ws.next_pub().await;
    }
    let (status, _) = hub.api("POST", "/api/publish", Some(json!({"nope": 1}))).await;
    assert_eq!(status, 400);
    let keyless = reqwest::Client::new().get(hub.http("/api/info")).send().await.unwrap();
    assert_eq!(keyless.status().as_u16(), 401);
    kick_one(&hub).await;

    wait_for(&hub, r#"herald_closes_total{code="kicked"}"#, 1.0).await;
    let text = wait_for(&hub, r#"herald_namespace_deliveries_total{namespace="chat"}"#, 4.0).await;
    let at_least = |series: &str, n: f64| {
        let v = sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(v >= n, "{series} is {v}, expected at least {n}");
        v
    };
    assert_eq!(at_least(r#"herald_namespace_publications_total{namespace="chat"}"#, 4.0), 4.0);
    assert_eq!(at_least(r#"herald_namespace_publications_total{namespace="quiet"}"#, 1.0), 1.0);
    assert_eq!(at_least(r#"herald_namespace_deliveries_total{namespace="chat"}"#, 4.0), 4.0);
    assert_eq!(at_least(r#"herald_namespace_deliveries_total{namespace="quiet"}"#, 0.0), 0.0);
    assert_eq!(
        at_least(r#"herald_http_requests_total{route="/api/publish",status="200"}"#, 4.0),
        4.0
    );
    at_least(r#"herald_http_requests_total{route="/api/publish",status="400"}"#, 1.0);
    at_least(r#"herald_http_requests_total{route="/api/info",status="401"}"#, 1.0);
    assert!(!text.contains("chat:1"), "nothing is labelled by channel:\n{text}");
    // The wait before a subscriber's flush is part of its delivery: observed for the same
    // frames, never longer, so at every bound the queue histogram counts at least as many.
    let count = at_least("herald_delivery_latency_seconds_count", 1.0);
    assert_eq!(at_least("herald_delivery_queue_seconds_count", 1.0), count);
    for le in ["0.0001", "0.001", "0.01", "0.1", "1.0", "+Inf"] {
        let bucket = |name: &str| at_least(&format!(r#"{name}_bucket{{le="{le}"}}"#), 0.0);
        let (queued, written) =
            (bucket("herald_delivery_queue_seconds"), bucket("herald_delivery_latency_seconds"));
        assert!(queued >= written, "le {le}: {queued} queued, {written} written");
    }
    at_least("herald_connections", 1.0);
    at_least("herald_outbox_queued_publications", 0.0);
    at_least("herald_outbox_queued_bytes", 0.0);
    at_least("herald_outbox_largest_queue_bytes", 0.0);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!(r#"herald_build_info{{version="{version}",commit=""#)),
        "{text}"
    );
    at_least("process_resident_memory_bytes", 1.0);
    at_least("process_open_fds", 1.0);
    at_least("process_max_fds", 1.0);
    at_least("process_threads", 1.0);
    at_least("process_cpu_seconds_total", 0.0);
    let started = at_least("process_start_time_seconds", 1.0);
    let now = herald_server::auth::unix_now() as f64;
    assert!((now - 3600.0..=now + 5.0).contains(&started), "started at {started}, now {now}");

    let exposed = exposed(&text);
    let missing: Vec<String> = dashboard_names()
        .into_iter()
        .filter(|name| !exposed.contains(name) && !REDIS_ONLY.contains(&name.as_str()))
        .collect();
    assert!(missing.is_empty(), "the dashboard queries {missing:?}, which /metrics lacks:\n{text}");
    for name in REDIS_ONLY {
        assert!(!exposed.contains(*name), "{name} is Redis-only; the memory engine has it");
    }
}

#[tokio::test]
async fn a_redis_node_exposes_its_round_trips_and_every_dashboard_metric() {
    let redis = herald_testkit::RedisProcess::start();
    let url = redis.url();
    let hub = Hub::start_with(CONFIG, &["--engine", "redis", "--redis-url", &url]);
    hub.publish("chat:1", json!("through redis")).await;
    kick_one(&hub).await;
    let text = wait_for(&hub, r#"herald_closes_total{code="kicked"}"#, 1.0).await;
    let count = sample(&text, "herald_redis_round_trip_seconds_count").unwrap_or(0.0);
    assert!(count >= 1.0, "the publish made a round trip:\n{text}");
    let inf = sample(&text, r#"herald_redis_round_trip_seconds_bucket{le="+Inf"}"#);
    assert_eq!(inf, Some(count), "+Inf holds every round trip");
    assert!(sample(&text, "herald_redis_round_trip_seconds_sum").is_some_and(|s| s > 0.0));
    let exposed = exposed(&text);
    let missing: Vec<String> =
        dashboard_names().into_iter().filter(|name| !exposed.contains(name)).collect();
    assert!(missing.is_empty(), "the dashboard queries {missing:?}, which /metrics lacks:\n{text}");
    for name in REDIS_ONLY {
        assert!(dashboard_names().contains(*name), "{name} is charted");
    }
}
