//! What the random view tests share: the kanban clients' filters with an independent evaluator
//! (plain Rust, not herald_spec), random keyed writes, a view client that survives cut
//! connections (reconnect, resubscribe with `since`), and the final comparison with the state.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use herald_protocol::command::{Command, Request};
use herald_protocol::reply::ErrorBody;
use herald_protocol::{Position, ServerMessage, ViewEvent, ViewQuery, split_frame};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The channel every test writes.
pub const CHANNEL: &str = "task:b1";
/// Upper bound for one wait (a message, a reply); a stall past it fails the test.
const WAIT: Duration = Duration::from_secs(15);
/// Upper bound for getting a connection and a subscription again after a cut.
const RECONNECT_WITHIN: Duration = Duration::from_secs(20);

/// The kanban spec shipped in examples/.
pub fn spec_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/kanban.herald").to_string()
}

/// Hub configuration: the spec, ad-hoc filters on, a short history (so that a long absence is
/// `history_trimmed`), and a roomy outbound queue (debug builds read slowly).
pub fn config() -> String {
    format!(
        "specs = [{:?}]\n[limits]\noutbound_queue_messages = 8192\n\
         [namespaces.task]\nkeyed = true\nfilters = true\nhistory_size = 100\n",
        spec_path()
    )
}

fn text<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str)
}

fn number(v: &Value, field: &str) -> Option<f64> {
    v.get(field).and_then(Value::as_f64)
}

fn is(v: &Value, field: &str, want: &str) -> bool {
    text(v, field) == Some(want)
}

fn priority(v: &Value, pred: impl Fn(f64) -> bool) -> bool {
    number(v, "priority").is_some_and(pred)
}

/// One client's subscription: what it sends, and what it should hold.
#[derive(Clone)]
pub struct ClientSpec {
    /// The subscribe fields (view, filter, key).
    pub query: ViewQuery,
    /// The token's `filters` claim for `task`, if any.
    pub token_filter: Option<&'static str>,
    /// The independent evaluator of everything in force: does (key, record) belong in the view?
    pub eval: fn(&str, &Value) -> bool,
}

impl ClientSpec {
    fn new(
        view: Option<&str>,
        filter: Option<&str>,
        key: Option<&str>,
        token_filter: Option<&'static str>,
        eval: fn(&str, &Value) -> bool,
    ) -> ClientSpec {
        ClientSpec {
            query: ViewQuery {
                view: view.map(Into::into),
                filter: filter.map(Into::into),
                key: key.map(Into::into),
                sub: None,
            },
            token_filter,
            eval,
        }
    }

    /// How the reports name it.
    pub fn describe(&self) -> String {
        let q = &self.query;
        format!(
            "view={:?} filter={:?} key={:?} token_filter={:?}",
            q.view, q.filter, q.key, self.token_filter
        )
    }

    /// The token: user `u`, every task channel, the filter claim if any.
    pub fn token(&self, secret: &str) -> String {
        let mut claims = json!({
            "sub": "viewer",
            "exp": herald_server::auth::unix_now() + 3600,
            "channels": ["task:*"],
        });
        if let Some(f) = self.token_filter {
            claims["filters"] = json!({"task": f});
        }
        herald_testkit::hs256_token(secret, &claims)
    }
}

/// The 20 subscriptions of the random tests: spec views, ad-hoc filters (missing fields, null,
/// `in`, `not`, `or`), `by id` and `key` views, and token-filtered ones.
pub fn client_specs() -> Vec<ClientSpec> {
    type S = ClientSpec;
    vec![
        S::new(Some("ActiveTasks"), None, None, None, |_, v| !is(v, "status", "done")),
        S::new(Some("DoneTasks"), None, None, None, |_, v| is(v, "status", "done")),
        S::new(None, Some(r#"assignee == "u3""#), None, None, |_, v| is(v, "assignee", "u3")),
        S::new(
            None,
            Some(r#"status in ["todo","doing"] and priority >= 2"#),
            None,
            None,
            |_, v| {
                (is(v, "status", "todo") || is(v, "status", "doing")) && priority(v, |p| p >= 2.0)
            },
        ),
        S::new(None, Some(r#"not (status == "done") or assignee == "u1""#), None, None, |_, v| {
            !is(v, "status", "done") || is(v, "assignee", "u1")
        }),
        S::new(None, None, Some("t7"), None, |k, _| k == "t7"),
        S::new(Some("ActiveTasks"), None, None, Some(r#"assignee == "u2""#), |_, v| {
            !is(v, "status", "done") && is(v, "assignee", "u2")
        }),
        S::new(None, Some("priority < 2"), None, None, |_, v| priority(v, |p| p < 2.0)),
        S::new(
            None,
            Some(r#"status == "doing" and assignee in ["u0", "u4"]"#),
            None,
            None,
            |_, v| is(v, "status", "doing") && (is(v, "assignee", "u0") || is(v, "assignee", "u4")),
        ),
        S::new(None, Some(r#"title in ["a", "b"]"#), None, None, |_, v| {
            is(v, "title", "a") || is(v, "title", "b")
        }),
        S::new(None, Some(r#"priority == 3 or status == "todo""#), None, None, |_, v| {
            priority(v, |p| p == 3.0) || is(v, "status", "todo")
        }),
        S::new(None, Some(r#"assignee != "u0" and not (priority > 1)"#), None, None, |_, v| {
            !is(v, "assignee", "u0") && !priority(v, |p| p > 1.0)
        }),
        S::new(Some("TaskDetail"), None, Some("t42"), None, |k, _| k == "t42"),
        S::new(None, Some(r#"status != "todo""#), None, None, |_, v| !is(v, "status", "todo")),
        S::new(None, Some("priority != null"), None, None, |_, v| {
            v.get("priority").is_some_and(|p| !p.is_null())
        }),
        S::new(
            None,
            Some(
                r#"(status == "todo" or status == "done") and (assignee == "u1" or assignee == "u2")"#,
            ),
            None,
            None,
            |_, v| {
                (is(v, "status", "todo") || is(v, "status", "done"))
                    && (is(v, "assignee", "u1") || is(v, "assignee", "u2"))
            },
        ),
        S::new(None, Some(r#"assignee == "u4""#), None, Some(r#"status == "done""#), |_, v| {
            is(v, "assignee", "u4") && is(v, "status", "done")
        }),
        S::new(Some("ActiveTasks"), None, None, None, |_, v| !is(v, "status", "done")),
        S::new(None, Some(r#"priority <= 1 and status == "doing""#), None, None, |_, v| {
            priority(v, |p| p <= 1.0) && is(v, "status", "doing")
        }),
        S::new(None, Some(r#"priority == null and status != "doing""#), None, None, |_, v| {
            v.get("priority").is_none_or(Value::is_null) && !is(v, "status", "doing")
        }),
    ]
}

const STATUSES: [&str; 3] = ["todo", "doing", "done"];
const TITLES: [&str; 4] = ["a", "b", "c", "d"];

fn random_record(rng: &mut StdRng, title: &str) -> Value {
    let mut r = json!({
        "title": title,
        "status": STATUSES[rng.random_range(0..3)],
        "assignee": format!("u{}", rng.random_range(0..5)),
    });
    if rng.random_bool(0.6) {
        r["priority"] = json!(rng.random_range(0..5));
    }
    r
}

/// `count` random upserts, merges and deletes over `keys` keys (`t0`…), every one valid for the
/// Task entity: merges and deletes only of records that exist at that point.
pub fn random_writes(seed: u64, count: usize, keys: usize) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut exists = vec![false; keys];
    (0..count)
        .map(|_| {
            let k = rng.random_range(0..keys);
            let key = format!("t{k}");
            let roll = rng.random_range(0..100);
            let (op, data) = if !exists[k] || roll < 35 {
                let title = TITLES[rng.random_range(0..TITLES.len())];
                ("upsert", random_record(&mut rng, title))
            } else if roll < 80 {
                let mut patch = serde_json::Map::new();
                while patch.is_empty() {
                    if rng.random_bool(0.3) {
                        patch.insert("title".into(), json!(TITLES[rng.random_range(0..4)]));
                    }
                    if rng.random_bool(0.5) {
                        patch.insert("status".into(), json!(STATUSES[rng.random_range(0..3)]));
                    }
                    if rng.random_bool(0.4) {
                        let a = format!("u{}", rng.random_range(0..5));
                        patch.insert("assignee".into(), json!(a));
                    }
                    if rng.random_bool(0.4) {
                        let p = if rng.random_bool(0.25) {
                            Value::Null
                        } else {
                            json!(rng.random_range(0..5))
                        };
                        patch.insert("priority".into(), p);
                    }
                }
                ("merge", Value::Object(patch))
            } else {
                ("delete", Value::Null)
            };
            exists[k] = op != "delete";
            json!({"channel": CHANNEL, "key": key, "op": op, "data": data})
        })
        .collect()
}

/// One final write per client that its view must show (a fresh key `m<i>`, or its own key for a
/// key view) with a unique title where the filter allows: once a client holds every marker its
/// filter admits, it has seen every write before them.
pub fn marker_writes(specs: &[ClientSpec], seed: u64) -> Vec<(String, Value)> {
    let mut rng = StdRng::seed_from_u64(seed);
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let key = spec.query.key.clone().unwrap_or_else(|| format!("m{i:02}"));
            let own = format!("marker-{i}");
            let record = (0..400)
                .map(|n| random_record(&mut rng, if n < 200 { &own } else { "a" }))
                .find(|r| (spec.eval)(&key, r))
                .unwrap_or_else(|| panic!("no record fits client {i}: {}", spec.describe()));
            (key, record)
        })
        .collect()
}

/// The publish bodies of the markers: the writes to existing keys (of the key views) first,
/// then the fresh `m<i>` keys. A fresh key's marker only ever adds a row, so a client that holds
/// its own `m<i>` marker (and every later one it admits) has seen every write before it,
/// including the key views' markers, which may move a record out of its view.
pub fn marker_bodies(markers: &[(String, Value)]) -> Vec<Value> {
    let (fresh, existing): (Vec<_>, Vec<_>) = markers.iter().partition(|(k, _)| k.starts_with('m'));
    existing
        .into_iter()
        .chain(fresh)
        .map(|(k, v)| json!({"channel": CHANNEL, "key": k, "op": "upsert", "data": v}))
        .collect()
}

/// Why a connection is no longer usable.
#[derive(Debug)]
pub struct Closed;

/// A protocol client that reports a closed connection instead of panicking, so a view client
/// can reconnect after a cut.
pub struct Conn {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pending: std::collections::VecDeque<ServerMessage>,
    next_id: u64,
}

impl Conn {
    /// Opens and authenticates; `Err` when the connection failed on the way.
    pub async fn open(url: &str, token: &str) -> Result<Conn, Closed> {
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| Closed)?
            .map_err(|_| Closed)?;
        let mut c = Conn { stream, pending: Default::default(), next_id: 1 };
        let connect = Command::Connect { token: Some(token.into()), name: None, version: None };
        c.request(connect).await?.unwrap_or_else(|e| panic!("connect refused: {e}"));
        Ok(c)
    }

    async fn fill(&mut self) -> Result<(), Closed> {
        loop {
            let msg = match tokio::time::timeout(WAIT, self.stream.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(_) => return Err(Closed),
                Err(_) => panic!("no message within {WAIT:?}"),
            };
            match msg {
                Message::Text(t) => {
                    for line in split_frame(t.as_str()) {
                        let m = ServerMessage::parse(line)
                            .unwrap_or_else(|e| panic!("bad line {line}: {e}"));
                        if matches!(m, ServerMessage::Ping) {
                            let pong = Message::text(r#"{"cmd":"pong"}"#);
                            self.stream.send(pong).await.map_err(|_| Closed)?;
                            continue;
                        }
                        self.pending.push_back(m);
                    }
                    return Ok(());
                }
                Message::Close(_) => return Err(Closed),
                _ => continue,
            }
        }
    }

    /// The next message.
    pub async fn next(&mut self) -> Result<ServerMessage, Closed> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Sends a command and waits for its reply; pushes meanwhile stay queued, in order.
    pub async fn request(&mut self, command: Command) -> Result<Result<Value, ErrorBody>, Closed> {
        let id = self.next_id;
        self.next_id += 1;
        let text = Request { id: Some(id), command }.to_json();
        self.stream.send(Message::text(text)).await.map_err(|_| Closed)?;
        let mut scanned = 0;
        loop {
            while scanned < self.pending.len() {
                if matches!(&self.pending[scanned], ServerMessage::Reply { id: got, .. } if *got == id)
                {
                    let Some(ServerMessage::Reply { result, .. }) = self.pending.remove(scanned)
                    else {
                        unreachable!()
                    };
                    return Ok(result.map(|r| serde_json::from_str(r.get()).unwrap()));
                }
                scanned += 1;
            }
            self.fill().await?;
        }
    }
}

/// What one client saw, for the final comparison and the report.
#[derive(Debug, Default)]
pub struct Seen {
    /// key → record, as initial rows and events left them.
    pub rows: BTreeMap<String, Value>,
    /// The last position (of an event or a reply): where a resume starts.
    pub pos: Option<Position>,
    /// View events applied (live and replayed).
    pub events: usize,
    /// Connections opened after the first.
    pub reconnects: usize,
    /// Resubscriptions answered `recovered: true`.
    pub recovered: usize,
    /// Resubscriptions answered with fresh rows, by reason.
    pub not_recovered: Vec<String>,
    /// Server `unsubscribe` pushes with `resubscribe: true`.
    pub server_unsubscribes: usize,
}

impl Seen {
    fn check_offset(&mut self, who: &str, epoch: &str, offset: u64) {
        if let Some(p) = &self.pos {
            assert_eq!(p.epoch, epoch, "{who}: epoch changed");
            assert!(offset > p.offset, "{who}: event offset {offset} after {}", p.offset);
        }
        self.pos = Some(Position { epoch: epoch.into(), offset });
    }

    fn apply(&mut self, who: &str, spec: &ClientSpec, e: &ViewEvent) {
        self.check_offset(who, &e.publication.epoch, e.publication.offset);
        self.events += 1;
        let key = e.key.clone();
        let record = || -> Value {
            let r: Value = serde_json::from_str(e.record.as_ref().expect("record").get()).unwrap();
            assert!(
                (spec.eval)(&key, &r),
                "{who}: {} of {key} outside the view: {r}",
                e.operation.as_str()
            );
            r
        };
        match e.operation.as_str() {
            "insert" => {
                assert!(!self.rows.contains_key(&key), "{who}: insert of {key}, which it holds");
                self.rows.insert(key.clone(), record());
            }
            "update" => {
                assert!(self.rows.contains_key(&key), "{who}: update of {key}, which it lacks");
                self.rows.insert(key.clone(), record());
            }
            "delete" => {
                assert!(self.rows.remove(&key).is_some(), "{who}: delete of {key}, which it lacks");
                assert!(e.reason.is_some(), "{who}: a delete without a reason");
            }
            other => panic!("{who}: operation {other}"),
        }
    }

    /// Applies a subscribe reply: replayed events, or fresh rows.
    fn apply_reply(&mut self, who: &str, spec: &ClientSpec, reply: &Value, resumed: bool) {
        let epoch = reply["epoch"].as_str().expect("epoch");
        let offset = reply["offset"].as_u64().expect("offset");
        if reply["recovered"] == true {
            assert!(resumed, "{who}: recovered without since: {reply}");
            assert!(reply.get("initial").is_none(), "{who}: recovered with initial rows");
            self.recovered += 1;
            // `events` is left out when the missed writes made none.
            let events = reply.get("events").map(|e| e.as_array().expect("events array"));
            for e in events.into_iter().flatten() {
                let e: ViewEvent = serde_json::from_value(e.clone()).expect("a view event");
                self.apply(who, spec, &e);
            }
        } else {
            if resumed {
                self.not_recovered.push(reply["reason"].as_str().unwrap_or("none").into());
            }
            let initial = reply["initial"].as_array().unwrap_or_else(|| panic!("{who}: {reply}"));
            self.rows.clear();
            let mut last_key: Option<&str> = None;
            for row in initial {
                let key = row["key"].as_str().unwrap();
                assert!(last_key < Some(key), "{who}: initial rows sorted by key");
                last_key = Some(key);
                assert!(row["offset"].as_u64().unwrap() <= offset, "{who}: row after the reply");
                assert!((spec.eval)(key, &row["value"]), "{who}: initial {key} outside the view");
                self.rows.insert(key.into(), row["value"].clone());
            }
        }
        if let Some(p) = &self.pos {
            assert_eq!(p.epoch, epoch, "{who}: epoch changed");
            assert!(offset >= p.offset, "{who}: reply offset {offset} before {}", p.offset);
        }
        self.pos = Some(Position { epoch: epoch.into(), offset });
    }

    /// Whether it holds every marker its view admits.
    fn has_markers(&self, markers: &[(String, Value)]) -> bool {
        markers.iter().all(|(k, v)| self.rows.get(k) == Some(v))
    }
}

/// How a client reaches the hub and what it does after a cut.
pub struct Route {
    /// WebSocket URL (through a cutting proxy, or straight to a hub).
    pub url: String,
    /// Whether a closed connection is expected (else it fails the test).
    pub cuts: bool,
    /// After a cut, wait until the writer has published this many more batches before
    /// reconnecting (0: at once), so the resume finds its history trimmed.
    pub linger_batches: u64,
    /// Batches the writer has published so far (ends at u64::MAX once all writes are out).
    pub progress: watch::Receiver<u64>,
}

/// Runs one view client until it holds every marker its view admits; returns what it saw.
pub async fn run_client(
    who: String,
    spec: ClientSpec,
    token: String,
    mut route: Route,
    markers: Vec<(String, Value)>,
) -> Seen {
    let mut seen = Seen::default();
    let mut first = true;
    let deadline = Instant::now() + Duration::from_secs(60);
    'connection: loop {
        assert!(Instant::now() < deadline, "{who}: no end within a minute");
        if !first {
            seen.reconnects += 1;
            if route.linger_batches > 0 {
                let until = route.progress.borrow().saturating_add(route.linger_batches);
                // The writer's progress, not time: wait until enough history has passed.
                let _ = route.progress.wait_for(|b| *b >= until).await;
            }
        }
        first = false;
        let started = Instant::now();
        let mut conn = loop {
            match Conn::open(&route.url, &token).await {
                Ok(c) => break c,
                Err(Closed) => {
                    assert!(route.cuts, "{who}: connection failed");
                    assert!(started.elapsed() < RECONNECT_WITHIN, "{who}: cannot reconnect");
                }
            }
        };
        loop {
            let resumed = seen.pos.is_some();
            let command = Command::Subscribe {
                channel: CHANNEL.into(),
                since: seen.pos.clone(),
                snapshot: false,
                view: spec.query.clone(),
                presence: Default::default(),
                preview: None,
            };
            let reply = match conn.request(command).await {
                Ok(r) => r.unwrap_or_else(|e| panic!("{who}: subscribe refused: {e}")),
                Err(Closed) => {
                    assert!(route.cuts, "{who}: connection closed");
                    continue 'connection;
                }
            };
            seen.apply_reply(&who, &spec, &reply, resumed);
            loop {
                if seen.has_markers(&markers) {
                    return seen;
                }
                match conn.next().await {
                    Ok(ServerMessage::View(e)) => seen.apply(&who, &spec, &e),
                    Ok(ServerMessage::Unsubscribe { resubscribe: true, .. }) => {
                        seen.server_unsubscribes += 1;
                        break;
                    }
                    Ok(other) => panic!("{who}: unexpected {other:?}"),
                    Err(Closed) => {
                        assert!(route.cuts, "{who}: connection closed");
                        continue 'connection;
                    }
                }
            }
        }
    }
}

/// The state's records (key → value) from `GET /api/state` bodies.
pub fn state_records(state: &Value) -> BTreeMap<String, Value> {
    state["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r["value"].clone()))
        .collect()
}

/// The view of `spec` over `state`, by the independent evaluator.
pub fn expected_rows(
    spec: &ClientSpec,
    state: &BTreeMap<String, Value>,
) -> BTreeMap<String, Value> {
    state.iter().filter(|(k, v)| (spec.eval)(k, v)).map(|(k, v)| (k.clone(), v.clone())).collect()
}
