//! Herald core against the real binary: rooms, auth, bad input, heartbeat, slow consumers,
//! shutdown, the HTTP API.

mod support;

use herald_protocol::ServerMessage;
use herald_protocol::command::Command;
use serde_json::json;
use support::*;

const CONFIG: &str = r#"
[namespaces.default]
[namespaces.session]
[namespaces.room]
client_publish = true
[namespaces.open]
subscribe = "anyone"
anonymous = true
[auth]
audience = "herald"
"#;

fn aud_token(user: &str, channels: &[&str]) -> String {
    token_with(
        json!({"sub": user, "exp": herald_server::auth::unix_now() + 600, "aud": "herald", "channels": channels}),
    )
}

async fn client(hub: &Hub, user: &str, channels: &[&str]) -> Ws {
    let mut ws = Ws::open(&hub.ws_url()).await;
    ws.request(Command::Connect {
        token: Some(aud_token(user, channels)),
        name: None,
        version: None,
    })
    .await
    .expect("connect");
    ws
}

#[tokio::test]
async fn rooms_deliver_to_members_only() {
    let hub = Hub::start(CONFIG);
    let mut a = client(&hub, "alice", &["session:*"]).await;
    let mut b = client(&hub, "bob", &["session:*"]).await;
    let mut c = client(&hub, "carol", &["session:*"]).await;
    let reply = a.subscribe("session:1").await;
    assert_eq!(reply["offset"], 0, "a fresh channel has a position: {reply}");
    assert!(reply["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    b.subscribe("session:1").await;
    c.subscribe("session:2").await;
    hub.publish("session:1", json!({"n": 1})).await;
    hub.publish("session:2", json!({"marker": true})).await;
    for ws in [&mut a, &mut b] {
        let p = ws.next_pub().await;
        assert_eq!((p.channel.as_str(), p.offset, p.data.get()), ("session:1", 1, r#"{"n":1}"#));
        assert_eq!(p.meta.source.as_deref(), Some("api"));
        assert_eq!(p.id, format!("{}-1", p.epoch));
    }
    // c's first message is the marker: session:1's publication never reached it.
    let p = c.next_pub().await;
    assert_eq!((p.channel.as_str(), p.data.get()), ("session:2", r#"{"marker":true}"#));
}

#[tokio::test]
async fn bad_tokens_get_their_codes() {
    // No anonymous namespace here, so a missing token is refused.
    let hub = Hub::start(&CONFIG.replace("anonymous = true", "anonymous = false"));
    let now = herald_server::auth::unix_now();
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let cases: Vec<(&str, Option<String>, u16, u16)> = vec![
        ("missing", None, 101, 4500),
        ("garbage", Some("not-a-jwt".into()), 101, 4500),
        ("bad signature", Some(format!("{}x", aud_token("a", &["*"]))), 101, 4500),
        (
            "expired",
            Some(token_with(json!({"sub": "a", "exp": now - 3600, "aud": "herald"}))),
            109,
            4004,
        ),
        (
            "wrong audience",
            Some(token_with(json!({"sub": "a", "exp": now + 600, "aud": "other"}))),
            101,
            4500,
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(r#"{"sub":"a","aud":"herald"}"#)
            )),
            101,
            4500,
        ),
    ];
    // A healthy subscriber keeps being served throughout.
    let mut healthy = client(&hub, "ok", &["session:*"]).await;
    healthy.subscribe("session:h").await;
    for (what, token, reply_code, close_code) in cases {
        let mut ws = Ws::open(&hub.ws_url()).await;
        let err = ws
            .request(Command::Connect { token, name: None, version: None })
            .await
            .expect_err(what);
        assert_eq!(err.code, reply_code, "{what}: {err:?}");
        let (close, push) = ws.expect_close().await;
        assert_eq!((close, push), (close_code, Some(close_code)), "{what}");
    }
    // A bad token in the upgrade request: upgraded, then closed with 4500.
    let mut ws = Ws::open(&format!("{}?token=nope", hub.ws_url())).await;
    assert_eq!(ws.expect_close().await.0, 4500);
    hub.publish("session:h", json!(1)).await;
    assert_eq!(healthy.next_pub().await.offset, 1);
    let (_, metrics) = hub.api("GET", "/metrics", None).await;
    assert!(metrics.as_str().unwrap().contains("herald_auth_failures_total 7"), "{metrics}");
}

#[tokio::test]
async fn bad_requests_get_codes_and_the_connection_survives() {
    let hub = Hub::start(CONFIG);
    let mut ws = client(&hub, "alice", &["session:1"]).await;
    let sub = |c: &str| Command::Subscribe {
        channel: c.into(),
        since: None,
        snapshot: false,
        view: Default::default(),
        presence: Default::default(),
        preview: None,
    };
    assert_eq!(ws.request(sub("session:2")).await.unwrap_err().code, 103, "forbidden channel");
    assert_eq!(ws.request(sub("nowhere:1")).await.unwrap_err().code, 102, "unknown namespace");
    assert_eq!(ws.request(sub("bad channel")).await.unwrap_err().code, 114, "invalid name");
    ws.send_raw("{not json").await;
    match ws.next().await {
        Some(ServerMessage::Error(e)) => assert_eq!(e.code, 107),
        other => panic!("{other:?}"),
    }
    ws.send_raw(r#"{"id":77,"cmd":"teleport"}"#).await;
    assert_eq!(ws.reply(77).await.unwrap_err().code, 104);
    ws.send_raw(r#"{"id":78,"cmd":"subscribe"}"#).await;
    assert_eq!(ws.reply(78).await.unwrap_err().code, 107);
    let publish = Command::Publish(herald_protocol::command::PublishCommand {
        channel: "session:1".into(),
        kind: None,
        data: serde_json::value::RawValue::from_string("1".into()).unwrap(),
        key: None,
        op: None,
        idempotency_key: None,
        correlation_id: None,
    });
    assert_eq!(ws.request(publish).await.unwrap_err().code, 103, "client publish not allowed");
    // Still served.
    ws.subscribe("session:1").await;
    assert_eq!(ws.request(sub("session:1")).await.unwrap_err().code, 105);
    hub.publish("session:1", json!("still here")).await;
    assert_eq!(ws.next_pub().await.data.get(), r#""still here""#);
    // A command before connect.
    let mut fresh = Ws::open(&hub.ws_url()).await;
    assert_eq!(fresh.request(sub("session:1")).await.unwrap_err().code, 101);
    // An oversized frame closes with 4504; the other connection is unaffected.
    let big = format!(r#"{{"id":1,"cmd":"ping","pad":"{}"}}"#, "x".repeat(90 * 1024));
    fresh.send_raw(&big).await;
    assert_eq!(fresh.expect_close().await.0, 4504);
    hub.publish("session:1", json!(2)).await;
    assert_eq!(ws.next_pub().await.offset, 2);
}

#[tokio::test]
async fn anonymous_auth_timeout_and_binary_frames() {
    let hub = Hub::start_with(CONFIG, &["--auth-timeout", "300ms"]);
    let mut anon = Ws::open(&hub.ws_url()).await;
    anon.request(Command::Connect { token: None, name: None, version: None })
        .await
        .expect("anonymous connect");
    anon.subscribe("open:lobby").await;
    let err = anon
        .request(Command::Subscribe {
            channel: "session:1".into(),
            since: None,
            snapshot: false,
            view: Default::default(),
            presence: Default::default(),
            preview: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, 101, "anonymous where a token is needed: log in (issue 11 item 7)");
    let mut idle = Ws::open(&hub.ws_url()).await;
    assert_eq!(idle.expect_close().await, (4003, Some(4003)));
    use futures_util::SinkExt;
    let (mut raw, _) = tokio_tungstenite::connect_async(hub.ws_url()).await.unwrap();
    raw.send(tokio_tungstenite::tungstenite::Message::binary(vec![1, 2, 3])).await.unwrap();
    let mut closed = None;
    use futures_util::StreamExt;
    while let Some(Ok(m)) = raw.next().await {
        if let tokio_tungstenite::tungstenite::Message::Close(Some(f)) = m {
            closed = Some(u16::from(f.code));
        }
    }
    assert_eq!(closed, Some(4502));
}

#[tokio::test]
async fn silent_client_is_closed_by_heartbeat() {
    let hub = Hub::start_with(CONFIG, &["--ping-interval", "100ms", "--pong-timeout", "400ms"]);
    let mut answering = client(&hub, "a", &["session:*"]).await;
    let mut silent = client(&hub, "b", &["session:*"]).await;
    silent.auto_pong = false;
    let silent_closed = async {
        let mut pings = 0;
        while let Some(m) = silent.next().await {
            match m {
                ServerMessage::Ping => pings += 1,
                ServerMessage::Disconnect { code, .. } => assert_eq!(code, 4002),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(silent.closed.as_ref().map(|c| c.0), Some(4002));
        assert!(pings >= 2, "server pinged before giving up ({pings})");
        // Publish only once the silent client is gone.
        hub.publish("session:x", json!(1)).await;
    };
    // The answering client reads (and answers pings) the whole time, outlives it, still works.
    let answering_served = async {
        answering.subscribe("session:x").await;
        answering.next_pub().await.offset
    };
    let ((), offset) = tokio::join!(silent_closed, answering_served);
    assert_eq!(offset, 1);
}

#[tokio::test]
async fn slow_reader_is_closed_while_fast_reader_gets_everything() {
    let config = format!(
        "{CONFIG}\n[limits]\noutbound_queue_bytes = 4194304\noutbound_queue_messages = 4096\n"
    );
    let hub = Hub::start(&config);
    let mut fast = client(&hub, "fast", &["room:*"]).await;
    let mut slow = client(&hub, "slow", &["room:*"]).await;
    fast.subscribe("room:1").await;
    slow.subscribe("room:1").await;
    let payload = "x".repeat(16 * 1024);
    let total = 2400u64; // ~39 MB: more than loopback socket buffers plus the 4 MiB queue.
    let publisher = {
        let url = hub.http("/api/publish");
        let payload = payload.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..total {
                let resp = http
                    .post(&url)
                    .header("x-api-key", API_KEY)
                    .json(&json!({"channel": "room:1", "data": {"i": i, "pad": payload}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
            }
        })
    };
    for expected in 1..=total {
        let p = fast.next_pub().await;
        assert_eq!(p.offset, expected, "fast reader sees every offset in order");
    }
    publisher.await.unwrap();
    // The slow reader now reads: it ends before seeing every publication, closed as slow.
    let mut seen = 0u64;
    let mut push_code = None;
    while let Some(m) = slow.next().await {
        match m {
            ServerMessage::Publication(p) => {
                seen += 1;
                assert_eq!(p.offset, seen, "no gap before the close");
            }
            ServerMessage::Disconnect { code, .. } => push_code = Some(code),
            _ => {}
        }
    }
    assert!(seen < total, "slow reader was cut off ({seen} of {total})");
    // What was in flight is read, then the disconnect push and the close frame (the hub keeps
    // a slow consumer's socket open to drain).
    assert_eq!(slow.closed.as_ref().map(|c| c.0), Some(4001), "close frame 4001");
    assert_eq!(push_code, Some(4001), "disconnect push 4001");
    let (_, metrics) = hub.api("GET", "/metrics", None).await;
    let text = metrics.as_str().unwrap();
    assert!(text.contains("herald_slow_consumer_closes_total 1"), "{text}");
    assert!(text.contains(r#"herald_closes_total{code="slow_consumer"} 1"#), "{text}");
}

#[tokio::test]
async fn sigterm_closes_clients_with_the_restart_code() {
    let mut hub = Hub::start(CONFIG);
    let mut a = client(&hub, "a", &["session:*"]).await;
    a.subscribe("session:1").await;
    let status = tokio::task::spawn_blocking({
        let pid = hub.pid();
        move || std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success());
    assert_eq!(a.expect_close().await, (4000, Some(4000)));
    let exit = hub.terminate();
    assert!(exit.success(), "herald exits cleanly after draining: {exit:?}");
}

#[tokio::test]
async fn api_requires_the_key_and_broadcast_reaches_each_channel_once() {
    let hub = Hub::start(CONFIG);
    let http = reqwest::Client::new();
    for key in [None, Some("wrong")] {
        let mut req =
            http.post(hub.http("/api/publish")).json(&json!({"channel": "session:1", "data": 1}));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], 101);
    }
    let mut a = client(&hub, "a", &["session:*"]).await;
    a.subscribe("session:1").await;
    a.subscribe("session:2").await;
    let (status, body) = hub
        .api(
            "POST",
            "/api/broadcast",
            Some(json!({"channels": ["session:1", "session:2", "session:1"], "type": "structure.updated", "data": {"id": 9}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    let mut got: Vec<_> = Vec::new();
    for _ in 0..2 {
        let p = a.next_pub().await;
        assert_eq!(p.kind, "structure.updated");
        got.push((p.channel, p.offset));
    }
    got.sort();
    assert_eq!(got, vec![("session:1".to_string(), 1), ("session:2".to_string(), 1)]);
    // Idempotency: the same key gives the first result, flagged duplicate, and no new offset.
    let body = json!({"channel": "session:1", "data": 5, "idempotency_key": "op-1"});
    let (_, first) = hub.publish_with(body.clone()).await;
    let (_, second) = hub.publish_with(body).await;
    assert_eq!(first["offset"], second["offset"]);
    assert_eq!(second["duplicate"], true);
    assert_eq!(a.next_pub().await.offset, 2);
    // Channel listing, info and disconnect.
    let (_, channels) = hub.api("GET", "/api/channels", None).await;
    assert!(
        channels["channels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["channel"] == "session:1" && c["subscribers"] == 1)
    );
    let (_, info) = hub.api("GET", "/api/info", None).await;
    assert_eq!(info["connections"], 1);
    let (_, d) = hub.api("POST", "/api/disconnect", Some(json!({"user": "a"}))).await;
    assert_eq!(d["disconnected"], 1);
    assert_eq!(a.expect_close().await, (4503, Some(4503)));
    let (status, _) =
        hub.api("POST", "/api/publish", Some(json!({"channel": "nowhere:1", "data": 1}))).await;
    assert_eq!(status, 404);
    let (status, body) =
        hub.api("POST", "/api/publish", Some(json!({"channel": "session:1"}))).await;
    assert_eq!((status, body["error"]["code"].as_u64()), (400, Some(107)));
}

#[tokio::test]
async fn per_user_connection_limit_and_origin_check() {
    let config = format!(
        "allowed_origins = [\"https://app.example\"]\n{CONFIG}\n[limits]\nmax_connections_per_user = 1\n"
    );
    let hub = Hub::start(&config);
    let _first = client(&hub, "alice", &["session:*"]).await;
    let mut second = Ws::open(&hub.ws_url()).await;
    let err = second
        .request(Command::Connect {
            token: Some(aud_token("alice", &[])),
            name: None,
            version: None,
        })
        .await;
    assert_eq!(err.unwrap_err().code, 119);
    assert_eq!(second.expect_close().await.0, 4005);
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = hub.ws_url().into_client_request().unwrap();
    req.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    let (mut raw, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures_util::StreamExt;
    let mut code = None;
    while let Some(Ok(m)) = raw.next().await {
        if let tokio_tungstenite::tungstenite::Message::Close(Some(f)) = m {
            code = Some(u16::from(f.code));
        }
    }
    assert_eq!(code, Some(4501));
}

#[tokio::test]
async fn subscribe_hook_decides_and_is_cached() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/authorize",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let allow = body["user"] == "alice" && body["channel"] == "campaign:1";
                axum::Json(json!({ "allow": allow }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = format!(
        "{CONFIG}\n[subscribe_hook]\nurl = \"http://{hook_addr}/authorize\"\ncache_ttl = \"1m\"\n[namespaces.campaign]\nsubscribe = \"hook\"\n"
    );
    let hub = Hub::start(&config);
    let mut alice = client(&hub, "alice", &[]).await;
    alice.subscribe("campaign:1").await;
    let sub = |c: &str| Command::Subscribe {
        channel: c.into(),
        since: None,
        snapshot: false,
        view: Default::default(),
        presence: Default::default(),
        preview: None,
    };
    assert_eq!(alice.request(sub("campaign:2")).await.unwrap_err().code, 103);
    let mut again = client(&hub, "alice", &[]).await;
    again.subscribe("campaign:1").await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the second campaign:1 answer came from the cache");
    // A token claim short-circuits the hook.
    let mut bob = client(&hub, "bob", &["campaign:7"]).await;
    bob.subscribe("campaign:7").await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn per_connection_limits_have_codes() {
    let config = format!(
        "{CONFIG}\n[limits]\nmax_channels_per_connection = 2\ncommands_per_second = 5\nconnection_attempts_per_ip_per_minute = 4\n"
    );
    let hub = Hub::start(&config);
    let mut ws = client(&hub, "a", &["session:*"]).await;
    ws.subscribe("session:1").await;
    ws.subscribe("session:2").await;
    let err = ws
        .request(Command::Subscribe {
            channel: "session:3".into(),
            since: None,
            snapshot: false,
            view: Default::default(),
            presence: Default::default(),
            preview: None,
        })
        .await;
    assert_eq!(err.unwrap_err().code, 106);
    // 30 pings in one frame against a burst of 10: some are refused with 110, none lost.
    let frame: Vec<String> =
        (1000..1030).map(|id| format!(r#"{{"id":{id},"cmd":"ping"}}"#)).collect();
    ws.send_raw(&frame.join("\n")).await;
    let mut limited = 0;
    for id in 1000..1030 {
        if let Err(e) = ws.reply(id).await {
            assert_eq!(e.code, 110);
            limited += 1;
        }
    }
    assert!(limited >= 15, "rate limit applied ({limited} of 30 refused)");
    // One upgrade so far; three more are admitted, the 5th within a minute gets 429.
    let _c = Ws::open(&hub.ws_url()).await;
    let _d = Ws::open(&hub.ws_url()).await;
    let _e = Ws::open(&hub.ws_url()).await;
    let err =
        tokio_tungstenite::connect_async(hub.ws_url()).await.expect_err("over the attempt limit");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 429),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn audit_log_as_json_lines() {
    let hub = Hub::start_with(CONFIG, &["--log-format", "json"]);
    let mut ws = client(&hub, "auditor", &["session:1"]).await;
    let err = ws
        .request(Command::Subscribe {
            channel: "session:2".into(),
            since: None,
            snapshot: false,
            view: Default::default(),
            presence: Default::default(),
            preview: None,
        })
        .await;
    assert_eq!(err.unwrap_err().code, 103);
    let mut bad = Ws::open(&hub.ws_url()).await;
    let _ = bad
        .request(Command::Connect { token: Some("bad".into()), name: None, version: None })
        .await;
    assert_eq!(bad.expect_close().await.0, 4500);
    drop(ws);
    // The disconnect line is written when the server notices the close; wait for it.
    let deadline = std::time::Instant::now() + WAIT;
    let events = loop {
        let lines = hub.log.lock().unwrap().clone();
        let events: Vec<serde_json::Value> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "herald::audit")
            .collect();
        let has = |e: &str| events.iter().any(|v| v["fields"]["event"] == e);
        let kicked_out = events
            .iter()
            .any(|v| v["fields"]["event"] == "disconnect" && v["fields"]["code"] == 4500);
        let left = events
            .iter()
            .any(|v| v["fields"]["event"] == "disconnect" && v["fields"]["user"] == "auditor");
        if ["connect", "forbidden_subscribe", "auth_failure"].iter().all(|e| has(e))
            && kicked_out
            && left
        {
            break events;
        }
        assert!(std::time::Instant::now() < deadline, "audit events missing: {lines:?}");
        tokio::task::yield_now().await;
    };
    let failure = events.iter().find(|v| v["fields"]["event"] == "auth_failure").unwrap();
    assert!(
        failure["fields"]["reason"].as_str().is_some_and(|r| r.contains("invalid token")),
        "{failure}"
    );
    let left = events
        .iter()
        .find(|v| v["fields"]["event"] == "disconnect" && v["fields"]["user"] == "auditor");
    assert!(left.is_some_and(|v| v["fields"]["code"] == 1000), "{events:?}");
}
