//! Refusals of the HTTP API and of token checks, seen from outside: API-key guessing throttled
//! per address, every refusal the documented error object, bounded minted lifetimes, required
//! audience and issuer on WebSocket and SSE, and history that says when `since` is ahead.

mod support;

use herald_protocol::command::Command;
use serde_json::{Value, json};
use std::net::IpAddr;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP client whose requests come from `ip` (any 127.0.0.0/8 address is loopback on Linux).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(ip.parse::<IpAddr>().unwrap()).build().unwrap()
}

async fn get_info(client: &reqwest::Client, hub: &Hub, key: &str) -> (u16, Option<u64>, Value) {
    let resp = client.get(hub.http("/api/info")).header("x-api-key", key).send().await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().expect("Retry-After in seconds"));
    (status, retry_after, resp.json().await.unwrap())
}

#[tokio::test]
async fn api_key_guessing_is_throttled_per_address() {
    let hub =
        Hub::start("[limits]\napi_key_failures_per_ip_per_minute = 5\n[namespaces.default]\n");
    let attacker = client_from("127.0.0.1");
    // A good key does not count as a failure.
    assert_eq!(get_info(&attacker, &hub, API_KEY).await.0, 200);
    for n in 1..=5 {
        let (status, _, body) = get_info(&attacker, &hub, &format!("guess-{n}")).await;
        assert_eq!((status, body["error"]["code"].as_u64()), (401, Some(101)), "guess {n}");
    }
    // Past the documented count: 429 110 with Retry-After, the key not even looked at.
    let (status, retry, body) = get_info(&attacker, &hub, "guess-6").await;
    assert_eq!((status, body["error"]["code"].as_u64()), (429, Some(110)), "{body}");
    assert!(retry.is_some_and(|s| (1..=60).contains(&s)), "Retry-After {retry:?}");
    let (status, _, _) = get_info(&attacker, &hub, API_KEY).await;
    assert_eq!(status, 429, "a good key from a locked-out address is refused too");
    // Another address is not affected.
    let (status, _, _) = get_info(&client_from("127.0.0.2"), &hub, API_KEY).await;
    assert_eq!(status, 200);
    // The audit lines name the address; the lockout is logged once.
    let log = strip_ansi(&hub.log.lock().unwrap().join("\n"));
    let failures = log.lines().filter(|l| l.contains("auth_failure")).count();
    assert_eq!(failures, 5, "one audit line per checked key:\n{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("auth_failure"))
            .all(|l| l.contains("ip=127.0.0.1") && l.contains("API key")),
        "{log}"
    );
    assert_eq!(log.matches("api_key_lockout").count(), 1, "{log}");
}

/// The text of colored log lines.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends a raw HTTP/1.1 request in one go (the body written before anything is read, as most
/// HTTP libraries do) and returns (status, headers, body).
async fn raw_request(hub: &Hub, head: &str, body: &[u8]) -> (u16, String, Value) {
    let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let mut request = head.as_bytes().to_vec();
    request.extend_from_slice(body);
    tokio::time::timeout(WAIT, tcp.write_all(&request))
        .await
        .expect("write in time")
        .expect("the whole body written, no reset");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.expect("read the answer, no reset");
            response.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&response);
            if let Some((headers, rest)) = text.split_once("\r\n\r\n") {
                let len = headers
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .expect("content-length");
                if rest.len() >= len {
                    break;
                }
            }
            assert!(n > 0, "connection closed before the answer");
        }
    })
    .await
    .expect("an answer in time");
    let text = String::from_utf8_lossy(&response).to_string();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    (status, headers.to_lowercase(), serde_json::from_str(body).unwrap_or(Value::Null))
}

fn assert_error(what: &str, (status, body): (u16, &Value), want: (u16, u64)) {
    assert_eq!((status, body["error"]["code"].as_u64()), (want.0, Some(want.1)), "{what}: {body}");
    assert!(body["error"]["name"].is_string() && body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn every_refusal_is_the_error_object() {
    let hub = Hub::start("[limits]\nmax_api_body_bytes = 65536\n[namespaces.default]\n");
    // A declared body over the limit, 10 MB, written whole before reading: the answer arrives.
    let big = vec![b'a'; 10_000_000];
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    let (status, _, body) = raw_request(&hub, &head, &big).await;
    assert_error("10 MB body", (status, &body), (413, 111));
    // A chunked body (no length announced) that grows past the limit.
    let chunk = vec![b'a'; 100_000];
    let mut chunked = format!("{:x}\r\n", chunk.len()).into_bytes();
    chunked.extend_from_slice(&chunk);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nx-api-key: {API_KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let (status, _, body) = raw_request(&hub, &head, &chunked).await;
    assert_error("chunked body", (status, &body), (413, 111));
    // Malformed JSON, bad query values, a missing parameter.
    let resp = reqwest::Client::new()
        .post(hub.http("/api/publish"))
        .header("x-api-key", API_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_error("bad JSON", (status, &resp.json().await.unwrap()), (400, 107));
    for path in ["/api/history?channel=a&limit=x", "/api/history", "/api/state?nochannel=1"] {
        let (status, body) = hub.api("GET", path, None).await;
        assert_error(path, (status, &body), (400, 107));
    }
    // No such route under /api, and a route with the wrong method.
    let (status, body) = hub.api("GET", "/api/nope", None).await;
    assert_error("unknown route", (status, &body), (404, 104));
    let resp = reqwest::Client::new()
        .get(hub.http("/api/publish"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    let status = resp.status().as_u16();
    assert_error("wrong method", (status, &resp.json().await.unwrap()), (405, 104));
}

#[tokio::test]
async fn minted_lifetimes_and_kicks_are_checked() {
    let hub = Hub::start("[namespaces.default]\nanonymous = true\nsubscribe = \"anyone\"\n");
    for ttl in [json!(0), json!(u64::MAX), json!(u64::MAX - 100), json!(31_622_401)] {
        let (status, body) =
            hub.api("POST", "/api/token", Some(json!({"sub": "u", "ttl_secs": ttl}))).await;
        assert_error(&format!("ttl {ttl}"), (status, &body), (400, 107));
    }
    let (status, body) =
        hub.api("POST", "/api/token", Some(json!({"sub": "u", "ttl_secs": 31_622_400}))).await;
    assert_eq!(status, 200, "{body}");
    let now = herald_server::auth::unix_now();
    let exp = body["expires_at"].as_u64().unwrap();
    assert!((now + 31_622_399..=now + 31_622_401).contains(&exp), "{exp} vs {now}");
    // The minted token works.
    let mut ws = Ws::open(&hub.ws_url()).await;
    let token = body["token"].as_str().unwrap().to_string();
    ws.request(Command::Connect { token: Some(token), name: None, version: None })
        .await
        .expect("connect");

    // An empty user would be every anonymous and not-yet-connected session.
    let mut anonymous = Ws::open(&hub.ws_url()).await;
    let mut waiting = Ws::open(&hub.ws_url()).await;
    anonymous
        .request(Command::Connect { token: None, name: None, version: None })
        .await
        .expect("anonymous");
    let (status, body) = hub.api("POST", "/api/disconnect", Some(json!({"user": ""}))).await;
    assert_error("empty user", (status, &body), (400, 107));
    // Both are still served.
    anonymous.subscribe("news").await;
    waiting
        .request(Command::Connect { token: None, name: None, version: None })
        .await
        .expect("still open");
}

#[tokio::test]
async fn history_since_ahead_of_the_stream_is_epoch_changed() {
    let hub = Hub::start("[namespaces.default]\n");
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = hub.publish("h", json!({"n": n})).await["epoch"].as_str().unwrap().to_string();
    }
    let read = |since: String| {
        let hub = &hub;
        async move { hub.api("GET", &format!("/api/history?channel=h&since={since}"), None).await }
    };
    let (status, body) = read(format!("{epoch}:99")).await;
    assert_eq!((status, &body["reason"]), (200, &json!("epoch_changed")), "{body}");
    assert_eq!(body["offset"], 5);
    let (_, body) = read(format!("{epoch}x:3")).await;
    assert_eq!(body["reason"], "epoch_changed", "another epoch: {body}");
    let (_, body) = read(format!("{epoch}:3")).await;
    assert!(body.get("reason").is_none(), "{body}");
    assert_eq!(body["publications"].as_array().unwrap().len(), 2);
}

const AUD_ISS: &str = "[auth]\naudience = \"herald\"\nissuer = \"https://auth.test\"\n[namespaces.default]\n[namespaces.feed]\n";

/// Tokens signed with the hub's secret that lack, or get wrong, the configured `aud` / `iss`.
fn aud_iss_tokens() -> Vec<(&'static str, String)> {
    let exp = herald_server::auth::unix_now() + 3600;
    let claims = |extra: Value| {
        let mut c = json!({"sub": "mallory", "exp": exp, "channels": ["feed:*"]});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        token_with(c)
    };
    vec![
        ("no aud", claims(json!({"iss": "https://auth.test"}))),
        ("no iss", claims(json!({"aud": "herald"}))),
        ("neither", claims(json!({}))),
        ("wrong aud", claims(json!({"aud": "billing", "iss": "https://auth.test"}))),
        ("wrong iss", claims(json!({"aud": "herald", "iss": "https://evil.test"}))),
    ]
}

fn good_aud_iss_token() -> String {
    token_with(json!({
        "sub": "alice", "exp": herald_server::auth::unix_now() + 3600,
        "aud": "herald", "iss": "https://auth.test", "channels": ["feed:*"],
    }))
}

#[tokio::test]
async fn configured_audience_and_issuer_are_required_on_websocket() {
    let hub = Hub::start(AUD_ISS);
    let mut ws = Ws::open(&hub.ws_url()).await;
    let good = good_aud_iss_token();
    ws.request(Command::Connect { token: Some(good), name: None, version: None })
        .await
        .expect("good token");
    for (what, token) in aud_iss_tokens() {
        // In the connect command...
        let mut ws = Ws::open(&hub.ws_url()).await;
        let err = ws
            .request(Command::Connect { token: Some(token.clone()), name: None, version: None })
            .await
            .expect_err(what);
        assert_eq!(code(&err), 101, "{what}: {err:?}");
        assert_eq!(ws.expect_close().await.0, 4500, "{what}");
        // ...and at the upgrade (`?token=`): upgraded, then closed with 4500.
        let mut ws = Ws::open(&format!("{}?token={token}", hub.ws_url())).await;
        assert_eq!(ws.expect_close().await, (4500, Some(4500)), "{what} at upgrade");
    }
}

/// The first SSE event of `/sse/feed:1` with this token: (event name, data).
async fn first_sse_event(hub: &Hub, token: &str) -> (String, Value) {
    let mut resp = reqwest::Client::new()
        .get(hub.http("/sse/feed:1"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    let block = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(end) = buf.find("\n\n") {
                let block = buf[..end].to_string();
                if block.lines().any(|l| l.starts_with("event: ")) {
                    return block;
                }
                buf.drain(..end + 2);
                continue;
            }
            let chunk = resp.chunk().await.unwrap().expect("an event before the end");
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("an SSE event in time");
    let field = |name: &str| {
        block.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().to_string()
    };
    (field("event: "), serde_json::from_str(&field("data: ")).unwrap_or(Value::Null))
}

#[tokio::test]
async fn configured_audience_and_issuer_are_required_on_sse() {
    let hub = Hub::start(AUD_ISS);
    let (event, _) = first_sse_event(&hub, &good_aud_iss_token()).await;
    assert_eq!(event, "subscribed");
    for (what, token) in aud_iss_tokens() {
        let (event, data) = first_sse_event(&hub, &token).await;
        assert_eq!((event.as_str(), data["code"].as_u64()), ("error", Some(101)), "{what}: {data}");
    }
}

#[tokio::test]
async fn far_future_expiry_is_served() {
    let hub = Hub::start("[namespaces.default]\n");
    for exp in [json!(u64::MAX), json!(10_000_000_000_000_000_000u64)] {
        let token = token_with(json!({"sub": "far", "exp": exp, "channels": ["*"]}));
        let mut ws = Ws::open(&hub.ws_url()).await;
        let reply =
            ws.request(Command::Connect { token: Some(token), name: None, version: None }).await;
        assert!(reply.is_ok(), "exp {exp}: {reply:?}");
        ws.subscribe("far").await;
        hub.publish("far", json!(1)).await;
        assert_eq!(ws.next_pub().await.data.get(), "1");
    }
    // Out of the u64 range: refused with 101, the socket closed properly.
    let token = token_with(json!({"sub": "far", "exp": 1e20}));
    let mut ws = Ws::open(&hub.ws_url()).await;
    let err = ws
        .request(Command::Connect { token: Some(token), name: None, version: None })
        .await
        .unwrap_err();
    assert_eq!(code(&err), 101);
    assert_eq!(ws.expect_close().await.0, 4500);
}

/// The HTTP API is as strict as the WebSocket protocol: a field a body does not take is 107
/// naming it (never silently ignored), and `data` that subscribers could not all decode alike (a
/// lone surrogate escape) is refused on every way in.
#[tokio::test]
async fn http_bodies_refuse_unknown_fields_and_lone_surrogates() {
    let hub = Hub::start("[namespaces.default]\n");
    let (status, body) = hub
        .publish_with(json!({"channel": "default:a", "data": 1, "filter": "status != \"done\""}))
        .await;
    assert_error("publish with filter", (status, &body), (400, 107));
    assert!(body["error"]["message"].as_str().unwrap().contains("filter"), "{body}");
    let (status, body) =
        hub.api("POST", "/api/disconnect", Some(json!({"user": "u", "all": true}))).await;
    assert_error("disconnect with all", (status, &body), (400, 107));
    let (status, body) =
        hub.api("POST", "/api/token", Some(json!({"sub": "u", "admin": true}))).await;
    assert_error("token with admin", (status, &body), (400, 107));
    // `"\ud800"` written as JSON text: the escape, not a character.
    let raw = r#"{"channel":"default:a","data":"\ud800"}"#;
    let (status, _, body) = raw_request(
        &hub,
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            raw.len()
        ),
        raw.as_bytes(),
    )
    .await;
    assert_error("lone surrogate", (status, &body), (400, 107));
    // Data nested deeper than every decoder reads (found by fuzz_http: stored, then history
    // could not be decoded).
    let deep: Value =
        serde_json::from_str(&format!("{}1{}", "[".repeat(100), "]".repeat(100))).unwrap();
    let (status, body) = hub.publish_with(json!({"channel": "default:a", "data": deep})).await;
    assert_error("deep data", (status, &body), (400, 107));
    // Nothing was stored by any of them.
    let (_, h) = hub.api("GET", "/api/history?channel=default:a", None).await;
    assert_eq!(h["offset"], 0, "{h}");
}
