//! §12 HTTP API: every route, its result and its error statuses.

use crate::client::{assert_time, check_error, offsets};
use crate::harness::{Check, Ctx, Engine, checks};
use serde_json::{Value, json};
use std::sync::Arc;

pub fn all() -> Vec<Check> {
    checks![
        api_routes_need_the_key,
        publish_result_and_duplicate,
        publish_errors_have_their_statuses,
        broadcast_reaches_each_channel_once,
        history_route,
        state_route,
        channels_route,
        info_route,
        disconnect_kicks_every_connection_of_the_user,
        token_route_mints_a_usable_token,
        health_ready_metrics_need_no_key,
    ]
}

/// Asserts an `{"error": Error}` body with this status and code.
#[track_caller]
pub fn assert_http_error(got: &(u16, Value), status: u16, code: u64) {
    let (s, body) = got;
    assert_eq!(
        (*s, &body["error"]["code"]),
        (status, &json!(code)),
        "§12: expected {status}/{code}: {body}"
    );
    check_error(&body["error"]);
}

/// §12 "Every `/api` route needs the header `x-api-key`" (401 `unauthorized`).
async fn api_routes_need_the_key(h: Arc<Ctx>) {
    let http = reqwest::Client::new();
    let routes = [
        ("POST", "/api/publish"),
        ("POST", "/api/broadcast"),
        ("GET", "/api/history?channel=session:x"),
        ("GET", "/api/state?channel=board:x"),
        ("GET", "/api/channels"),
        ("GET", "/api/info"),
        ("POST", "/api/disconnect"),
        ("POST", "/api/token"),
    ];
    for (method, path) in routes {
        for key in [None, Some("wrong-key")] {
            let mut req = match method {
                "GET" => http.get(h.hub.http(path)),
                _ => http.post(h.hub.http(path)).json(&json!({"channel": "session:x", "data": 1})),
            };
            if let Some(k) = key {
                req = req.header("x-api-key", k);
            }
            let resp = req.send().await.expect("http");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_http_error(&(status, body), 401, 101);
        }
    }
}

/// §12 `POST /api/publish` → PublishResult; "With an `idempotency_key` seen inside the
/// namespace's `idempotency_window`, the first result is returned with `duplicate: true` and
/// nothing is published."
async fn publish_result_and_duplicate(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let (mut c, _) = h.client(&[&ch]).await;
    let sub = c.subscribe(&ch).await;
    let body = json!({"channel": ch, "data": {"k": 1}, "idempotency_key": "op-1"});
    let first = h.publish(body.clone()).await;
    assert_eq!(first["channel"], ch.as_str(), "{first}");
    assert_eq!((&first["epoch"], &first["offset"]), (&sub["epoch"], &json!(1)), "{first}");
    assert_eq!(first["id"], format!("{}-1", sub["epoch"].as_str().unwrap()), "{first}");
    assert_time(&first["time"]);
    assert!(first.get("duplicate").is_none_or(|d| d == false), "{first}");
    let again = h.publish(body).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(
        (&again["offset"], &again["id"], &again["time"]),
        (&first["offset"], &first["id"], &first["time"])
    );
    h.publish(json!({"channel": ch, "data": "next"})).await;
    assert_eq!(c.next_pub().await["offset"], 1);
    let p = c.next_pub().await;
    assert_eq!((&p["offset"], &p["data"]), (&json!(2), &json!("next")), "nothing published twice");
}

/// §12 errors: 400 (`bad_request`, `invalid_channel`, `not_keyed`), 404 (`unknown_namespace`),
/// 409 (`state_limit_exceeded`), 413 (`message_too_large`).
async fn publish_errors_have_their_statuses(h: Arc<Ctx>) {
    let p = |body: Value| {
        let h = h.clone();
        async move { h.api("POST", "/api/publish", Some(body)).await }
    };
    assert_http_error(&p(json!({"channel": h.channel("session")})).await, 400, 107);
    assert_http_error(&p(json!({"channel": 5, "data": 1})).await, 400, 107);
    assert_http_error(&p(json!({"channel": "bad name", "data": 1})).await, 400, 114);
    assert_http_error(&p(json!({"channel": "", "data": 1})).await, 400, 114);
    assert_http_error(
        &p(json!({"channel": h.channel("session"), "data": 1, "key": "k", "op": "upsert"})).await,
        400,
        116,
    );
    assert_http_error(&p(json!({"channel": "nowhere:1", "data": 1})).await, 404, 102);
    assert_http_error(
        &p(json!({"channel": h.channel("small"), "data": "x".repeat(100)})).await,
        413,
        111,
    );
    let board = h.channel("board");
    for k in 0..5 {
        p(json!({"channel": board, "key": format!("k{k}"), "op": "upsert", "data": 1})).await;
    }
    assert_http_error(
        &p(json!({"channel": board, "key": "k9", "op": "upsert", "data": 1})).await,
        409,
        112,
    );
    // Malformed JSON body.
    let resp = reqwest::Client::new()
        .post(h.hub.http("/api/publish"))
        .header("x-api-key", crate::support::API_KEY)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_http_error(&(status, resp.json().await.unwrap_or(Value::Null)), 400, 107);
}

/// §12 `POST /api/broadcast` "`channels: [...]` (1–1000; each listed channel gets the event once)
/// → `{results: [PublishResult or {channel, error}]}`".
async fn broadcast_reaches_each_channel_once(h: Arc<Ctx>) {
    let (a, b) = (h.channel("session"), h.channel("session"));
    let (mut c, _) = h.client(&[&a, &b]).await;
    c.subscribe(&a).await;
    c.subscribe(&b).await;
    let (status, body) = h
        .api(
            "POST",
            "/api/broadcast",
            Some(json!({"channels": [a, b, a, "nowhere:1"], "type": "t", "data": {"n": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap_or_else(|| panic!("{body}"));
    let ok: Vec<&Value> = results.iter().filter(|r| r.get("error").is_none()).collect();
    assert_eq!(ok.len(), 2, "each listed channel once: {body}");
    for r in &ok {
        assert_eq!(r["offset"], 1, "{r}");
    }
    let failed =
        results.iter().find(|r| r["channel"] == "nowhere:1").unwrap_or_else(|| panic!("{body}"));
    assert_eq!(failed["error"]["code"], 102, "{failed}");
    let mut got = [c.next_pub().await, c.next_pub().await];
    got.sort_by_key(|p| p["channel"].as_str().unwrap().to_string());
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    for (p, ch) in got.iter().zip(&want) {
        assert_eq!(
            (&p["channel"], &p["type"], &p["offset"]),
            (&json!(ch), &json!("t"), &json!(1)),
            "{p}"
        );
    }
    let (status, body) =
        h.api("POST", "/api/broadcast", Some(json!({"channels": [], "data": 1}))).await;
    assert_http_error(&(status, body), 400, 107);
    let many: Vec<String> = (0..1001).map(|i| format!("session:many{i}")).collect();
    let (status, body) =
        h.api("POST", "/api/broadcast", Some(json!({"channels": many, "data": 1}))).await;
    assert_http_error(&(status, body), 400, 107);
}

/// §12 `GET /api/history?channel=&limit=&since=EPOCH:OFFSET&before=` → HistoryResult.
async fn history_route(h: Arc<Ctx>) {
    let ch = h.channel("session");
    for n in 1..=8 {
        h.publish(json!({"channel": ch, "data": n})).await;
    }
    let get = |q: String| {
        let h = h.clone();
        async move { h.api("GET", &format!("/api/history?{q}"), None).await }
    };
    let (status, r) = get(format!("channel={ch}")).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (&r["channel"], &r["offset"], &r["earliest"]),
        (&json!(ch), &json!(8), &json!(1)),
        "{r}"
    );
    assert_eq!(offsets(&r["publications"]), vec![4, 5, 6, 7, 8], "capped at max_history_page: {r}");
    let epoch = r["epoch"].as_str().unwrap().to_string();
    let (_, r) = get(format!("channel={ch}&limit=3")).await;
    assert_eq!(offsets(&r["publications"]), vec![6, 7, 8]);
    let (_, r) = get(format!("channel={ch}&limit=2&before=4")).await;
    assert_eq!(offsets(&r["publications"]), vec![2, 3]);
    let (_, r) = get(format!("channel={ch}&limit=2&since={epoch}:1")).await;
    assert_eq!(offsets(&r["publications"]), vec![2, 3]);
    let (_, r) = get(format!("channel={ch}&since=other:1")).await;
    assert!(r["reason"].is_string(), "§6: reason when since cannot be served: {r}");
    assert_eq!(offsets(&r["publications"]), Vec::<u64>::new());
    assert_http_error(&get("channel=nowhere:1".into()).await, 404, 102);
    assert_http_error(&get("channel=bad%20name".into()).await, 400, 114);
}

/// §12 `GET /api/state?channel=` → StateResult.
async fn state_route(h: Arc<Ctx>) {
    let ch = h.channel("board");
    h.publish(json!({"channel": ch, "key": "k", "op": "upsert", "data": {"v": 1}})).await;
    let (status, r) = h.api("GET", &format!("/api/state?channel={ch}"), None).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!((&r["channel"], &r["offset"]), (&json!(ch), &json!(1)), "{r}");
    assert!(r["epoch"].is_string(), "{r}");
    assert_eq!(crate::positions::records(&r["records"])["k"], json!({"v": 1}), "{r}");
    let plain = h.channel("session");
    assert_http_error(&h.api("GET", &format!("/api/state?channel={plain}"), None).await, 400, 116);
}

/// §12 `GET /api/channels` → `{channels: [{channel, subscribers}]}`.
async fn channels_route(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let (mut a, _) = h.client(&[&ch]).await;
    let (mut b, _) = h.client(&[&ch]).await;
    a.subscribe(&ch).await;
    b.subscribe(&ch).await;
    let (status, r) = h.api("GET", "/api/channels", None).await;
    assert_eq!(status, 200, "{r}");
    let row = r["channels"].as_array().and_then(|l| l.iter().find(|c| c["channel"] == ch.as_str()));
    assert_eq!(row.map(|c| c["subscribers"].clone()), Some(json!(2)), "{r}");
}

/// §12 `GET /api/info` → `{node, version, engine, connections (this node), cluster_connections,
/// subscriptions, channels (all nodes), uptime_secs, nodes: [...]}`.
async fn info_route(h: Arc<Ctx>) {
    let (_c, _) = h.client(&[]).await;
    let (status, r) = h.api("GET", "/api/info", None).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["node"].as_str().is_some_and(|n| !n.is_empty()), "{r}");
    assert!(!r["version"].is_null(), "{r}");
    let engine = match h.engine {
        Engine::Memory => "memory",
        Engine::Redis => "redis",
    };
    assert_eq!(r["engine"], engine, "{r}");
    for n in ["connections", "cluster_connections", "subscriptions", "channels", "uptime_secs"] {
        assert!(r[n].is_u64(), "§12 info `{n}`: {r}");
    }
    assert!(r["connections"].as_u64() >= Some(1), "{r}");
    assert!(r["nodes"].is_array(), "{r}");
}

/// §12 `POST /api/disconnect` `{user}` → `{disconnected: n}`; "each connection is closed with
/// `4503 kicked`".
async fn disconnect_kicks_every_connection_of_the_user(h: Arc<Ctx>) {
    let (mut a, user) = h.client(&[]).await;
    let mut b = h.client_as(&user, &[]).await;
    let (mut bystander, _) = h.client(&[]).await;
    let (status, r) = h.api("POST", "/api/disconnect", Some(json!({"user": user}))).await;
    assert_eq!((status, &r), (200, &json!({"disconnected": 2})), "{r}");
    a.expect_closed_with(4503, "kicked").await;
    b.expect_closed_with(4503, "kicked").await;
    bystander.still_open().await;
    let (_, r) = h.api("POST", "/api/disconnect", Some(json!({"user": h.unique("nobody")}))).await;
    assert_eq!(r, json!({"disconnected": 0}));
}

/// §12 `POST /api/token` `{sub, channels?, publish?, roles?, ttl_secs?}` → `{token, expires_at}`
/// "(HS256 with the hub's secret)".
async fn token_route_mints_a_usable_token(h: Arc<Ctx>) {
    let user = h.unique("minted");
    let ch = h.channel("session");
    let before = herald_testkit::unix_now();
    let (status, r) = h
        .api("POST", "/api/token", Some(json!({"sub": user, "channels": [ch], "ttl_secs": 120})))
        .await;
    assert_eq!(status, 200, "{r}");
    let exp = r["expires_at"].as_u64().unwrap_or_else(|| panic!("{r}"));
    assert!(
        (before + 119..=before + 122).contains(&exp),
        "ttl_secs 120 → expires_at {exp} (now {before})"
    );
    let mut c = h.open().await;
    let reply = c.connect(r["token"].as_str()).await.expect("the hub accepts its own token");
    assert_eq!((&reply["user"], &reply["expires_at"]), (&json!(user), &json!(exp)), "{reply}");
    c.subscribe(&ch).await;
}

/// §12 "`GET /health`, `GET /ready`, `GET /metrics` | liveness; readiness …; Prometheus metrics
/// (no key)".
async fn health_ready_metrics_need_no_key(h: Arc<Ctx>) {
    let http = reqwest::Client::new();
    for path in ["/health", "/ready", "/metrics"] {
        let resp = http.get(h.hub.http(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        if path == "/metrics" {
            let text = resp.text().await.unwrap();
            assert!(
                text.contains("# TYPE herald_"),
                "Prometheus text: {}",
                &text[..text.len().min(300)]
            );
        }
    }
}
