//! Live views through the Rust client against the real hub with the kanban spec
//! (examples/kanban.herald): initial rows and the four kinds of event keep `View::rows` equal to
//! the view's filter over the server's state; a view resumes across cut connections with writes
//! made while it was away; refusals end the stream with a typed error. Needs
//! `cargo build --bins` first (the hub binary is not built by the tests).

mod support;

use herald_client::herald_protocol::Op;
use herald_client::{
    ApiClient, BackoffPolicy, Client, ConnectionState, LeaveReason, View, ViewError, ViewEvent,
    ViewOptions,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use support::proxy::{Cut, Proxy};
use support::{publish_cmd, wait_state};

const API_KEY: &str = "testkey";
const SECRET: &str = "testsecret";
const CHANNEL: &str = "task:board-1";
const WAIT: Duration = Duration::from_secs(10);

/// A task as the kanban spec declares it, for the typed view.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Task {
    /// The card's title.
    title: String,
    /// Its column.
    status: Status,
    /// Who works on it (a `ref User`: the user's id).
    assignee: String,
    /// Optional in the spec.
    #[serde(default)]
    priority: Option<f64>,
}

/// The spec's `"todo" | "doing" | "done"`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Todo,
    Doing,
    Done,
}

fn start_hub() -> herald_testkit::HeraldProcess {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/kanban.herald");
    let config = "[limits]\ncommands_per_second = 0\n\n[namespaces.task]\nkeyed = true\n\
                  filters = true\nclient_publish = true\nhistory_size = 1000\nmax_recover = 1000\n";
    herald_testkit::HeraldProcess::start(
        &herald_testkit::herald_bin(),
        config,
        &["--api-key", API_KEY, "--token-secret", SECRET, "--spec", spec],
    )
}

fn api(hub: &herald_testkit::HeraldProcess) -> ApiClient {
    ApiClient::new(&hub.http_url(), Some(API_KEY.into())).unwrap()
}

fn client(url: &str) -> Client {
    let exp = herald_testkit::unix_now() + 3600;
    let token = herald_testkit::hs256_token(
        SECRET,
        &json!({"sub": "u1", "exp": exp, "channels": ["task:*"]}),
    );
    Client::builder()
        .url(url)
        .token(token)
        .backoff(BackoffPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            multiplier: 2.0,
            jitter: true,
            breaker_after: None,
        })
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// A keyed write through the HTTP API; returns its offset.
async fn write(api: &ApiClient, key: &str, op: Op, data: Value) -> u64 {
    let mut cmd = publish_cmd(CHANNEL, data);
    cmd.key = Some(key.into());
    cmd.op = Some(op);
    api.publish(&cmd).await.expect("keyed write").offset
}

/// `ActiveTasks` (`status != "done"`) applied to the server's state.
async fn active_on_server(api: &ApiClient) -> BTreeMap<String, Value> {
    let state = api.state(CHANNEL).await.expect("state");
    state
        .records
        .into_iter()
        .map(|r| (r.key, serde_json::from_str::<Value>(r.value.get()).unwrap()))
        .filter(|(_, v)| v["status"] != "done")
        .collect()
}

async fn next<T: DeserializeOwned>(view: &mut View<T>) -> ViewEvent<T> {
    match tokio::time::timeout(WAIT, view.next_event()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("view {} ended", view.name()),
        Err(_) => panic!("no event on view {} within {WAIT:?}", view.name()),
    }
}

async fn ready<T: DeserializeOwned>(view: &mut View<T>) {
    match next(view).await {
        ViewEvent::Ready { resync: None, .. } => {}
        other => panic!("expected Ready, got {:?}", kind(&other)),
    }
}

/// The event's kind and offset, for assertions and messages.
fn kind<T>(event: &ViewEvent<T>) -> (&'static str, u64) {
    match event {
        ViewEvent::Ready { position, .. } => ("ready", position.offset),
        ViewEvent::Insert { publication, .. } => ("insert", publication.offset),
        ViewEvent::Update { publication, .. } => ("update", publication.offset),
        ViewEvent::Delete { reason: LeaveReason::Left, publication, .. } => {
            ("left", publication.offset)
        }
        ViewEvent::Delete { reason: LeaveReason::Deleted, publication, .. } => {
            ("deleted", publication.offset)
        }
        ViewEvent::Ended { .. } => ("ended", 0),
        ViewEvent::Volatile { .. } => ("volatile", 0),
    }
}

fn task(title: &str, status: &str, assignee: &str) -> Value {
    json!({"title": title, "status": status, "assignee": assignee})
}

#[tokio::test]
async fn initial_rows_and_every_kind_of_event_keep_the_rows_equal_to_the_filter() {
    let hub = start_hub();
    let api = api(&hub);
    write(&api, "t1", Op::Upsert, task("a", "todo", "u1")).await;
    write(&api, "t2", Op::Upsert, task("b", "done", "u2")).await;
    write(&api, "t3", Op::Upsert, task("c", "doing", "u1")).await;
    let client = client(&hub.ws_url());
    let mut view = client.subscribe_view::<Value>(CHANNEL, ViewOptions::view("ActiveTasks"));
    assert_eq!(view.name(), "task:board-1#ActiveTasks");
    ready(&mut view).await;
    assert_eq!(view.rows(), &active_on_server(&api).await);
    assert_eq!(view.rows().keys().collect::<Vec<_>>(), ["t1", "t3"]);

    // out → in: insert.
    let at = write(&api, "t4", Op::Upsert, task("d", "todo", "u2")).await;
    match next(&mut view).await {
        ViewEvent::Insert { key, record, publication } => {
            assert_eq!((key.as_str(), publication.offset), ("t4", at));
            assert_eq!(record, task("d", "todo", "u2"));
        }
        other => panic!("expected insert, got {:?}", kind(&other)),
    }
    assert_eq!(view.rows(), &active_on_server(&api).await);

    // in → in: update with the merged record and the previous row.
    let at = write(&api, "t1", Op::Merge, json!({"title": "a2"})).await;
    match next(&mut view).await {
        ViewEvent::Update { key, record, previous, publication } => {
            assert_eq!((key.as_str(), publication.offset), ("t1", at));
            assert_eq!(record, task("a2", "todo", "u1"));
            assert_eq!(previous, Some(task("a", "todo", "u1")));
            assert_eq!(publication.data.get(), r#"{"title":"a2"}"#, "pub carries the patch");
        }
        other => panic!("expected update, got {:?}", kind(&other)),
    }
    assert_eq!(view.rows(), &active_on_server(&api).await);

    // in → out (still exists): left.
    let at = write(&api, "t3", Op::Merge, json!({"status": "done"})).await;
    match next(&mut view).await {
        ViewEvent::Delete { key, previous, reason, publication } => {
            assert_eq!((key.as_str(), reason, publication.offset), ("t3", LeaveReason::Left, at));
            assert_eq!(previous, Some(task("c", "doing", "u1")));
        }
        other => panic!("expected left, got {:?}", kind(&other)),
    }
    assert_eq!(view.rows(), &active_on_server(&api).await);

    // out → out: nothing, so the next event is the delete's.
    write(&api, "t3", Op::Merge, json!({"title": "c2"})).await;
    let at = write(&api, "t4", Op::Delete, Value::Null).await;
    match next(&mut view).await {
        ViewEvent::Delete { key, previous, reason, publication } => {
            assert_eq!(
                (key.as_str(), reason, publication.offset),
                ("t4", LeaveReason::Deleted, at)
            );
            assert_eq!(previous, Some(task("d", "todo", "u2")));
        }
        other => panic!("expected deleted, got {:?}", kind(&other)),
    }
    assert_eq!(view.rows(), &active_on_server(&api).await);
    assert_eq!(view.position().map(|p| p.offset), Some(at));
}

#[tokio::test]
async fn typed_views_by_filter_and_by_key() {
    let hub = start_hub();
    let api = api(&hub);
    write(&api, "t1", Op::Upsert, task("a", "todo", "u1")).await;
    write(
        &api,
        "t2",
        Op::Upsert,
        json!({"title": "b", "status": "doing", "assignee": "u2", "priority": 2}),
    )
    .await;
    let client = client(&hub.ws_url());
    let mut mine =
        client.subscribe_view::<Task>(CHANNEL, ViewOptions::filter(r#"assignee == "u2""#));
    let mut detail = client
        .subscribe_view::<Task>(CHANNEL, ViewOptions::view("TaskDetail").key("t1").sub("detail"));
    ready(&mut mine).await;
    ready(&mut detail).await;
    let t2 = Task {
        title: "b".into(),
        status: Status::Doing,
        assignee: "u2".into(),
        priority: Some(2.0),
    };
    assert_eq!(mine.rows().iter().collect::<Vec<_>>(), [(&"t2".to_string(), &t2)]);
    assert_eq!(detail.rows().keys().collect::<Vec<_>>(), ["t1"]);

    // t1 moves to u2: it enters the filter view and stays in the detail view.
    write(&api, "t1", Op::Merge, json!({"assignee": "u2", "status": "done"})).await;
    match next(&mut mine).await {
        ViewEvent::Insert { key, record, .. } => {
            assert_eq!(key, "t1");
            assert_eq!((record.status, record.assignee.as_str()), (Status::Done, "u2"));
        }
        other => panic!("expected insert, got {:?}", kind(&other)),
    }
    match next(&mut detail).await {
        ViewEvent::Update { record, previous, .. } => {
            assert_eq!(record.status, Status::Done);
            assert_eq!(previous.map(|p| p.status), Some(Status::Todo));
        }
        other => panic!("expected update, got {:?}", kind(&other)),
    }
    assert_eq!(detail.get("t1").map(|t| t.title.as_str()), Some("a"));
    assert_eq!(mine.rows().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_resumes_across_cuts_and_stays_exact_with_writes_made_while_away() {
    let hub = start_hub();
    let api = api(&hub);
    for i in 0..10 {
        let status = ["todo", "doing", "done"][i % 3];
        write(&api, &format!("t{i}"), Op::Upsert, task(&format!("n{i}"), status, "u1")).await;
    }
    let proxy = Proxy::start(hub.addr).await;
    let client = client(&proxy.ws_url());
    let mut states = client.state_changes();
    let mut view = client.subscribe_view::<Value>(CHANNEL, ViewOptions::view("ActiveTasks"));
    ready(&mut view).await;
    assert_eq!(view.rows(), &active_on_server(&api).await);

    // Nothing listens here: while the proxy points at it, the client cannot reconnect.
    let dead: std::net::SocketAddr =
        format!("127.0.0.1:{}", herald_testkit::free_port()).parse().unwrap();
    let mut exists: std::collections::BTreeSet<String> = (0..10).map(|i| format!("t{i}")).collect();
    let mut step = 0usize;
    for round in 0..3 {
        proxy.set_upstream(dead);
        proxy.cut_all(if round % 2 == 0 { Cut::Rst } else { Cut::Fin });
        wait_state(&mut states, WAIT, |s| matches!(s, ConnectionState::Reconnecting { .. })).await;
        // Writes the view misses: every move (in, out, update, delete) and some that touch
        // nothing it holds.
        for _ in 0..12 {
            step += 1;
            let key = format!("t{}", step * 7 % 13);
            let status = ["todo", "done", "doing", "done"][step % 4];
            // Merges and deletes only of records that exist (a merge into nothing would not
            // fit the entity and be refused).
            match (step % 5, exists.contains(&key)) {
                (0, true) => {
                    exists.remove(&key);
                    write(&api, &key, Op::Delete, Value::Null).await
                }
                (1 | 3, true) => write(&api, &key, Op::Merge, json!({"status": status})).await,
                _ => {
                    exists.insert(key.clone());
                    write(&api, &key, Op::Upsert, task(&format!("s{step}"), status, "u1")).await
                }
            };
        }
        proxy.set_upstream(hub.addr);
        // A write the view must see, so the test knows when it has caught up.
        let sentinel = format!("zz{round}");
        let last = write(&api, &sentinel, Op::Upsert, task("sentinel", "todo", "u1")).await;
        let mut previous = view.position().unwrap().offset;
        while view.position().unwrap().offset < last {
            let event = next(&mut view).await;
            let (what, offset) = kind(&event);
            assert_ne!(what, "ready", "the resume replays the missed writes instead of reloading");
            assert_ne!(what, "ended");
            assert!(
                offset > previous,
                "events arrive in offset order, once ({offset} after {previous})"
            );
            previous = offset;
        }
        assert!(view.rows().contains_key(&sentinel));
        assert_eq!(view.rows(), &active_on_server(&api).await, "round {round}");
    }
    assert!(proxy.accepted() >= 4, "every round reconnected");
}

#[tokio::test]
async fn refusals_end_the_view_with_a_typed_error() {
    let hub = start_hub();
    let client = client(&hub.ws_url());
    let mut bad =
        client.subscribe_view::<Value>(CHANNEL, ViewOptions::filter(r#"staus != "done""#));
    match next(&mut bad).await {
        ViewEvent::Ended { error: error @ ViewError::InvalidFilter(_) } => {
            assert_eq!(error.code(), Some(118));
            let message = &error.body().unwrap().message;
            assert!(message.contains("staus"), "{message}");
        }
        other => panic!("expected 118, got {:?}", kind(&other)),
    }
    assert!(bad.next_event().await.is_none(), "the stream ends after Ended");

    let mut keyless = client.subscribe_view::<Value>(CHANNEL, ViewOptions::view("TaskDetail"));
    match next(&mut keyless).await {
        ViewEvent::Ended { error } => {
            assert!(matches!(error, ViewError::BadRequest(_)), "{error}");
            assert_eq!(error.code(), Some(107));
        }
        other => panic!("expected 107, got {:?}", kind(&other)),
    }

    // The connection still serves views after the refusals.
    let mut good = client.subscribe_view::<Value>(CHANNEL, ViewOptions::view("ActiveTasks"));
    ready(&mut good).await;
    assert!(good.rows().is_empty());
}

#[tokio::test]
async fn a_volatile_event_of_the_channel_reaches_a_view_and_changes_no_row() {
    let hub = start_hub();
    let api = api(&hub);
    write(&api, "v1", Op::Upsert, task("a", "todo", "u1")).await;
    let watcher = client(&hub.ws_url());
    let mut view = watcher.subscribe_view::<Value>(CHANNEL, ViewOptions::view("ActiveTasks"));
    ready(&mut view).await;
    let sender = client(&hub.ws_url());
    sender.wait_connected(WAIT).await.expect("sender connects");
    sender.volatile(CHANNEL, "cursor", &json!({"x": 1})).await.expect("volatile");
    match next(&mut view).await {
        ViewEvent::Volatile { kind, data, user, client } => {
            assert_eq!((kind.as_str(), user.as_str()), ("cursor", "u1"));
            assert_eq!(data, json!({"x": 1}));
            assert_eq!(client, sender.connect_info().expect("connected").client);
        }
        other => panic!("expected the volatile event, got {:?}", kind(&other)),
    }
    assert_eq!(view.rows().keys().collect::<Vec<_>>(), ["v1"]);
    // The next write still comes in order after it.
    let offset = write(&api, "v2", Op::Upsert, task("b", "todo", "u1")).await;
    assert_eq!(kind(&next(&mut view).await), ("insert", offset));
}
