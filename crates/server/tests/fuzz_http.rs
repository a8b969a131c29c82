//! Fuzzing of the HTTP API's bodies and queries against one real hub (the library's router on a
//! 127.0.0.1 socket, memory engine), with proptest.
//!
//! Requests: `POST /api/publish`, `/api/broadcast`, `/api/disconnect`, `/api/token` with bodies
//! built from each operation's fields (docs/openapi.json) then mutated (deletions, type swaps,
//! unknown fields, huge numbers, deep nesting, lone surrogates, long strings), non-object and
//! malformed bodies; `GET /api/history` and `/api/state` with generated query strings; wrong
//! methods, unknown `/api` paths and missing or wrong API keys. A bounded number of requests
//! (`FUZZ_HTTP_REQUESTS`, default below). Properties: no 5xx; every non-2xx response is the
//! documented `{"error":{"code","name","message"}}` object with a known code; every 2xx body is
//! JSON. Afterwards an honest client still connects, subscribes and receives an API publish.

use futures_util::{SinkExt, StreamExt};
use herald_protocol::{ErrorCode, ServerMessage, split_frame};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError, TestRunner};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Requests per run unless `FUZZ_HTTP_REQUESTS` says otherwise.
const DEFAULT_REQUESTS: u32 = 3_000;
const API_KEY: &str = "fuzz-key";
/// No generated user name can be this (they are at most 16 characters or all `x`/`é`).
const HONEST_USER: &str = "honest-client-after-the-fuzz-run";
/// Bound on every wait for the honest client.
const WAIT: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
[auth]
token_secret = "fuzz-secret-fuzz-secret-fuzz-secret"
[limits]
# Generated requests without a valid key must not lock the test's own address out.
api_key_failures_per_ip_per_minute = 0
[namespaces.default]
[namespaces.open]
subscribe = "anyone"
anonymous = true
[namespaces.board]
keyed = true
"#;

// Generators are boxed: deeply nested strategy types overflow a debug-build test stack.

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        16 => "[a-z0-9:_.-]{0,16}",
        8 => prop::sample::select(&["open:a", "board:b", "default:c", "x:y", "", ":", "open:"][..])
            .prop_map(str::to_string),
        8 => any::<String>(),
        1 => (1usize..70_000, prop::sample::select(&["x", "é"][..])).prop_map(|(n, c)| c.repeat(n)),
    ]
    .boxed()
}

/// Strings for URLs and header values, which have length limits of their own.
fn short() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z0-9:_.-]{0,16}",
        2 => prop::sample::select(&["open:a", "board:b", "default:c", "", ":", "nope:x"][..])
            .prop_map(str::to_string),
        2 => "\\PC{0,24}",
        1 => (1usize..2_000).prop_map(|n| "é".repeat(n)),
    ]
    .boxed()
}

fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Raw JSON values no typed field takes well.
fn nasty_raw() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(
            &[
                "18446744073709551616",
                "18446744073709551615",
                "-1",
                "1e400",
                "0.5",
                "0",
                r#""\ud800""#,
                r#""a\u0000b""#,
                r#"["\udc00"]"#,
                "{}",
                "[]",
                "null",
                "true",
            ][..]
        )
        .prop_map(str::to_string),
        (1usize..5_000).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d))),
    ]
    .boxed()
}

/// A plausible value for each field of the API's bodies.
fn field_value(name: &'static str) -> BoxedStrategy<String> {
    let s = |st: BoxedStrategy<String>| st.prop_map(|t| Value::String(t).to_string()).boxed();
    match name {
        "channels" | "publish" => {
            prop::collection::vec(text(), 0..4).prop_map(|v| Value::from(v).to_string()).boxed()
        }
        "roles" => {
            prop::collection::vec(text(), 0..3).prop_map(|v| Value::from(v).to_string()).boxed()
        }
        "data" => json_value().prop_map(|v| v.to_string()).boxed(),
        "op" => s(prop::sample::select(&["upsert", "merge", "delete", "explode"][..])
            .prop_map(str::to_string)
            .boxed()),
        "ttl_secs" => prop_oneof![
            (0u64..100_000).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string())
        ]
        .boxed(),
        _ => s(text()),
    }
}

/// The fields of each POST operation's body (docs/openapi.json).
fn fields_of(path: &str) -> &'static [&'static str] {
    match path {
        "/api/publish" => &[
            "channel",
            "data",
            "type",
            "key",
            "op",
            "idempotency_key",
            "correlation_id",
            "source",
            "user",
        ],
        "/api/broadcast" => &["channels", "data", "type", "source", "user", "correlation_id"],
        "/api/disconnect" => &["user"],
        "/api/token" => &["sub", "channels", "publish", "roles", "ttl_secs"],
        _ => &[],
    }
}

const POSTS: &[&str] = &["/api/publish", "/api/broadcast", "/api/disconnect", "/api/token"];

/// A body: some of the operation's fields (each present with probability 3/4), then mutations.
fn object_body(path: &'static str) -> BoxedStrategy<String> {
    let fields: Vec<BoxedStrategy<Option<(String, String)>>> = fields_of(path)
        .iter()
        .map(|f| {
            prop::option::weighted(0.75, field_value(f).prop_map(move |v| (f.to_string(), v)))
                .boxed()
        })
        .collect();
    let extra = prop::collection::vec(
        (
            prop_oneof![
                text(),
                prop::sample::select(&["channel", "user", "sub", "data", "filter", "id"][..])
                    .prop_map(str::to_string)
            ],
            prop_oneof![json_value().prop_map(|v| v.to_string()), nasty_raw()],
        ),
        0..3,
    );
    let swap = prop::option::weighted(0.3, (any::<prop::sample::Index>(), nasty_raw()));
    (fields, extra, swap)
        .prop_map(|(fields, extra, swap)| {
            let mut fields: Vec<(String, String)> = fields.into_iter().flatten().collect();
            fields.extend(extra);
            if let Some((at, raw)) = swap
                && !fields.is_empty()
            {
                let i = at.index(fields.len());
                fields[i].1 = raw;
            }
            let body: Vec<String> =
                fields.iter().map(|(k, v)| format!("{}:{v}", Value::String(k.clone()))).collect();
            format!("{{{}}}", body.join(","))
        })
        .boxed()
}

/// One request of the run.
#[derive(Clone)]
struct Req {
    method: &'static str,
    path: String,
    body: Vec<u8>,
    /// `Some` sends this `x-api-key`.
    key: Option<String>,
    content_type: Option<&'static str>,
}

/// Shows at most 300 characters of the path and body: failures must stay readable.
impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cut = |s: &str| -> String {
            match s.char_indices().nth(300) {
                Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
                None => s.to_string(),
            }
        };
        f.debug_struct("Req")
            .field("method", &self.method)
            .field("path", &cut(&self.path))
            .field("body", &cut(&String::from_utf8_lossy(&self.body)))
            .field("key", &self.key.as_deref().map(cut))
            .field("content_type", &self.content_type)
            .finish()
    }
}

fn body_for(path: &'static str) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        12 => object_body(path).prop_map(String::into_bytes),
        2 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => nasty_raw().prop_map(String::into_bytes),
        1 => any::<String>().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        // A valid body cut short.
        1 => (object_body(path), any::<prop::sample::Index>()).prop_map(|(b, at)| {
            let mut b = b.into_bytes();
            b.truncate(at.index(b.len() + 1));
            b
        }),
    ]
    .boxed()
}

fn query() -> BoxedStrategy<String> {
    let param = prop_oneof![
        (
            prop::sample::select(&["channel", "limit", "since", "before", "x"][..]),
            prop_oneof![
                short(),
                "[ -~]{0,8}".prop_map(|s| format!("{}{s}", "[".repeat(s.len() * 50))),
                any::<u64>().prop_map(|n| n.to_string()),
                (short(), any::<u64>()).prop_map(|(e, o)| format!("{e}:{o}")),
            ]
        )
            .prop_map(|(k, v)| format!("{k}={}", encode(&v))),
        "\\PC{0,24}".prop_map(|s| encode(&s)),
        // Raw, unencoded bytes of the printable kind.
        "[ -~]{0,12}",
    ];
    prop::collection::vec(param, 0..4).prop_map(|p| p.join("&")).boxed()
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn request() -> BoxedStrategy<Req> {
    let key = prop_oneof![
        20 => Just(Some(API_KEY.to_string())),
        1 => Just(None),
        1 => short().prop_map(Some),
    ];
    let content_type = prop::sample::select(
        &[
            Some("application/json"),
            None,
            Some("text/plain"),
            Some("application/json; charset=utf-8"),
        ][..],
    );
    let post = (prop::sample::select(POSTS), key.clone(), content_type.clone()).prop_flat_map(
        |(path, key, ct)| {
            body_for(path).prop_map(move |body| Req {
                method: "POST",
                path: path.to_string(),
                body,
                key: key.clone(),
                content_type: ct,
            })
        },
    );
    let get = (prop::sample::select(&["/api/history", "/api/state"][..]), query(), key.clone())
        .prop_map(|(path, q, key)| Req {
            method: "GET",
            path: format!("{path}?{q}"),
            body: Vec::new(),
            key,
            content_type: None,
        });
    let odd = (
        prop::sample::select(&["GET", "PUT", "DELETE", "PATCH", "POST"][..]),
        prop_oneof![
            prop::sample::select(
                &["/api/publish", "/api/token", "/api/history", "/api", "/api/", "/api/nope/x"][..]
            )
            .prop_map(str::to_string),
            "[a-z/]{0,12}".prop_map(|p| format!("/api/{p}")),
        ],
        key,
        body_for("/api/publish"),
    )
        .prop_map(|(method, path, key, body)| Req {
            method,
            path,
            body,
            key,
            content_type: Some("application/json"),
        });
    prop_oneof![8 => post, 3 => get, 1 => odd].boxed()
}

/// Sends one request; checks what every answer must be; returns the status.
async fn check(http: &reqwest::Client, base: &str, r: &Req) -> Result<u16, TestCaseError> {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).unwrap();
    let mut b = http.request(method, format!("{base}{}", r.path));
    if let Some(k) = &r.key {
        match reqwest::header::HeaderValue::from_str(k) {
            Ok(v) => b = b.header("x-api-key", v),
            Err(_) => b = b.header("x-api-key", "not-a-header-value"),
        }
    }
    if let Some(ct) = r.content_type {
        b = b.header("content-type", ct);
    }
    if r.method != "GET" {
        b = b.body(r.body.clone());
    }
    let resp = b.send().await.map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
    let status = resp.status();
    let json_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let text = resp.text().await.map_err(|e| TestCaseError::fail(format!("body: {e}")))?;
    prop_assert!(!status.is_server_error(), "{status} for {r:?}: {text}");
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| TestCaseError::fail(format!("{status}, body not JSON ({e}): {text:?}")))?;
    prop_assert!(json_type, "{status} without a JSON content type: {text}");
    if !status.is_success() {
        let e = &body["error"];
        let code = e["code"].as_u64().and_then(|c| u16::try_from(c).ok());
        let known = code.and_then(ErrorCode::from_code);
        prop_assert!(known.is_some(), "{status}: not a known code: {text}");
        prop_assert_eq!(e["name"].as_str(), known.map(ErrorCode::name), "{}", text);
        prop_assert!(e["message"].is_string(), "{status}: no message: {text}");
        prop_assert_eq!(body.as_object().map(|o| o.len()), Some(1), "only `error`: {}", text);
    }
    Ok(status.as_u16())
}

async fn start_hub() -> SocketAddr {
    let mut config = herald_server::Config::from_toml(CONFIG).unwrap();
    config.api_keys = vec![API_KEY.into()];
    let hub = herald_server::memory_hub(config).unwrap();
    let app = herald_server::router(hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    });
    addr
}

/// After the run: a token is minted, a socket connects with it, subscribes, and receives a
/// publication made over HTTP.
async fn honest_client(http: &reqwest::Client, addr: SocketAddr) {
    let api = |path: &str, body: Value| {
        http.post(format!("http://{addr}{path}")).header("x-api-key", API_KEY).json(&body).send()
    };
    let token: Value = api("/api/token", json!({"sub": HONEST_USER, "channels": ["default:*"]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().expect("a token").to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
    let frame = format!(
        "{}\n{}",
        json!({"id": 1, "cmd": "connect", "token": token}),
        json!({"id": 2, "cmd": "subscribe", "channel": "default:honest"})
    );
    ws.send(Message::text(frame)).await.unwrap();
    let mut replies = 0;
    let mut published = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the honest client is answered in time");
        let Some(Ok(Message::Text(t))) = msg else { panic!("socket ended: {msg:?}") };
        for line in split_frame(t.as_str()) {
            match ServerMessage::parse(line).unwrap() {
                ServerMessage::Reply { id, result: Ok(_) } => {
                    assert!(id == 1 || id == 2);
                    replies += 1;
                }
                ServerMessage::Publication(p) => {
                    assert_eq!(p.data.get(), r#"{"still":"serving"}"#);
                    return;
                }
                ServerMessage::Ping => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        if replies == 2 && !published {
            published = true;
            let r = api(
                "/api/publish",
                json!({"channel": "default:honest", "data": {"still": "serving"}}),
            )
            .await
            .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
    }
}

#[test]
fn api_bodies_never_5xx_and_every_refusal_is_the_error_object() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let addr = rt.block_on(start_hub());
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let cases = std::env::var("FUZZ_HTTP_REQUESTS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_REQUESTS);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        source_file: Some(file!()),
        // Each shrink step is a request: keep shrinking bounded.
        max_shrink_iters: 500,
        ..ProptestConfig::default()
    });
    let started = std::time::Instant::now();
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let outcome = runner.run(&request(), |r| {
        let status = rt.block_on(check(&http, &base, &r))?;
        *statuses.lock().unwrap().entry(status).or_default() += 1;
        Ok(())
    });
    let statuses = statuses.into_inner().unwrap();
    eprintln!("fuzz_http: {cases} requests in {:.1?}, by status {statuses:?}", started.elapsed());
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // The generator must reach the handlers' success paths and their refusals alike (at least
    // 1 % each: bodies with a field the route does not take are refused, so most are).
    let ok: u32 = statuses.range(200..300).map(|(_, n)| n).sum();
    let refused: u32 = statuses.range(400..500).map(|(_, n)| n).sum();
    assert!(ok >= cases / 100 && refused >= cases / 100, "too one-sided: {statuses:?}");
    rt.block_on(honest_client(&http, addr));
}

/// Explicit cases, replayed on every run: each must hold like any generated request.
#[test]
fn corpus() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let addr = rt.block_on(start_hub());
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let post = |path: &str, body: &str| Req {
        method: "POST",
        path: path.into(),
        body: body.as_bytes().to_vec(),
        key: Some(API_KEY.into()),
        content_type: Some("application/json"),
    };
    let deep =
        format!(r#"{{"channel":"open:a","data":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    let cases = [
        post("/api/publish", ""),
        post("/api/publish", "[]"),
        post("/api/publish", r#"["open:a",1]"#),
        post("/api/publish", r#"{"channel":"open:a"}"#),
        post("/api/publish", r#"{"channel":"open:a","data":"\ud800"}"#),
        post(
            "/api/publish",
            r#"{"channel":"board:k","data":{"a":"\udc00"},"key":"k","op":"merge"}"#,
        ),
        post("/api/publish", r#"{"channel":"board:k","data":[[[1]]],"key":"","op":"merge"}"#),
        post("/api/publish", r#"{"channel":"board:k","data":null,"key":"k","op":"delete"}"#),
        post("/api/publish", r#"{"channel":"open:a","data":1e400}"#),
        post("/api/publish", &deep),
        post("/api/broadcast", r#"{"channels":[],"data":1}"#),
        post("/api/broadcast", r#"{"channels":["open:a","open:a","nope:x",""],"data":1}"#),
        post("/api/disconnect", r#"{"user":""}"#),
        post("/api/disconnect", r#"{"user":null}"#),
        post("/api/token", r#"{"sub":"u","ttl_secs":18446744073709551615}"#),
        post("/api/token", r#"{"sub":"u","ttl_secs":0}"#),
        post("/api/token", r#"{"sub":""}"#),
        Req {
            method: "GET",
            path: "/api/history?channel=open:a&since=e:18446744073709551616".into(),
            body: vec![],
            key: Some(API_KEY.into()),
            content_type: None,
        },
        Req {
            method: "GET",
            path: "/api/history?channel=open:a&limit=-1".into(),
            body: vec![],
            key: Some(API_KEY.into()),
            content_type: None,
        },
        Req {
            method: "GET",
            path: "/api/state?channel=%FF".into(),
            body: vec![],
            key: Some(API_KEY.into()),
            content_type: None,
        },
        Req {
            method: "GET",
            path: "/api/state".into(),
            body: vec![],
            key: None,
            content_type: None,
        },
        Req {
            method: "DELETE",
            path: "/api/publish".into(),
            body: vec![],
            key: Some(API_KEY.into()),
            content_type: None,
        },
    ];
    rt.block_on(async {
        for r in &cases {
            match check(&http, &base, r).await {
                Ok(status) => eprintln!("{status} {r:?}"),
                Err(e) => panic!("{r:?}: {e}"),
            }
        }
    });
}
