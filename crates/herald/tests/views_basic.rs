//! Live views against a real herald process with the kanban spec (examples/kanban.herald):
//! initial rows, the four moves (insert, update, left, deleted), schema checks, filter errors,
//! token filters, and a resume that replays what a view missed.

mod support;

use herald_protocol::command::Command;
use herald_protocol::{ServerMessage, ViewEvent, ViewQuery};
use serde_json::{Value, json};
use support::{Hub, Ws, code, token_with};

fn spec_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/kanban.herald").to_string()
}

fn hub() -> Hub {
    let config =
        format!("specs = [{:?}]\n[namespaces.task]\nkeyed = true\nfilters = true\n", spec_path());
    Hub::start(&config)
}

async fn write(hub: &Hub, key: &str, op: &str, data: Value) -> (u16, Value) {
    hub.publish_with(json!({"channel": "task:b1", "key": key, "op": op, "data": data})).await
}

async fn ok(hub: &Hub, key: &str, op: &str, data: Value) -> u64 {
    let (status, body) = write(hub, key, op, data).await;
    assert_eq!(status, 200, "{body}");
    body["offset"].as_u64().unwrap()
}

fn view(view: Option<&str>, filter: Option<&str>) -> ViewQuery {
    ViewQuery { view: view.map(Into::into), filter: filter.map(Into::into), ..ViewQuery::default() }
}

async fn subscribe(ws: &mut Ws, q: ViewQuery) -> Value {
    ws.request(Command::Subscribe {
        channel: "task:b1".into(),
        since: None,
        snapshot: false,
        view: q,
        presence: Default::default(),
        preview: None,
    })
    .await
    .expect("view subscribe")
}

async fn next_event(ws: &mut Ws) -> ViewEvent {
    match ws.next().await {
        Some(ServerMessage::View(e)) => *e,
        other => panic!("expected a view event, got {other:?}"),
    }
}

fn keys(initial: &Value) -> Vec<String> {
    initial.as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn a_view_reports_exactly_what_each_write_does_to_it() {
    let hub = hub();
    ok(&hub, "t1", "upsert", json!({"title": "a", "status": "todo", "assignee": "u1"})).await;
    ok(&hub, "t2", "upsert", json!({"title": "b", "status": "done", "assignee": "u2"})).await;
    let mut ws = hub.client("u1", &["task:*"]).await;
    let reply = subscribe(&mut ws, view(Some("ActiveTasks"), None)).await;
    assert_eq!(reply["sub"], "task:b1#ActiveTasks");
    assert_eq!(keys(&reply["initial"]), ["t1"], "{reply}");
    assert_eq!(reply["offset"], 2);
    // A second view of the same channel on the same connection needs its own name.
    let dup = ws
        .request(Command::Subscribe {
            channel: "task:b1".into(),
            since: None,
            snapshot: false,
            view: view(Some("ActiveTasks"), None),
            presence: Default::default(),
            preview: None,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&dup), 105);
    let mut done = view(Some("DoneTasks"), None);
    done.sub = Some("done".into());
    let reply = subscribe(&mut ws, done).await;
    assert_eq!(keys(&reply["initial"]), ["t2"]);

    // out → in: insert (for active); in → in: update with the merged record; in → out: left.
    ok(&hub, "t3", "upsert", json!({"title": "c", "status": "doing", "assignee": "u1"})).await;
    let e = next_event(&mut ws).await;
    assert_eq!(
        (e.sub.as_str(), e.operation.as_str(), e.key.as_str()),
        ("task:b1#ActiveTasks", "insert", "t3")
    );
    assert_eq!(e.publication.offset, 3);
    ok(&hub, "t3", "merge", json!({"title": "c2"})).await;
    let e = next_event(&mut ws).await;
    assert_eq!(e.operation.as_str(), "update");
    let record: Value = serde_json::from_str(e.record.unwrap().get()).unwrap();
    assert_eq!(record, json!({"title": "c2", "status": "doing", "assignee": "u1"}));
    assert_eq!(e.publication.data.get(), r#"{"title":"c2"}"#, "pub carries the patch");
    ok(&hub, "t3", "merge", json!({"status": "done"})).await;
    let left = next_event(&mut ws).await;
    let entered = next_event(&mut ws).await;
    assert_eq!((left.sub.as_str(), left.operation.as_str()), ("task:b1#ActiveTasks", "delete"));
    assert_eq!(left.reason.map(|r| r.as_str()), Some("left"));
    assert_eq!((entered.sub.as_str(), entered.operation.as_str()), ("done", "insert"));
    // out → out: nothing for active; deleted: only the view that held it.
    ok(&hub, "t3", "delete", Value::Null).await;
    let gone = next_event(&mut ws).await;
    assert_eq!((gone.sub.as_str(), gone.operation.as_str()), ("done", "delete"));
    assert_eq!(gone.reason.map(|r| r.as_str()), Some("deleted"));
    // The next event is the next write's, with nothing in between.
    ok(&hub, "t1", "merge", json!({"title": "a2"})).await;
    let e = next_event(&mut ws).await;
    assert_eq!((e.key.as_str(), e.publication.offset), ("t1", 7));
}

#[tokio::test]
async fn publications_that_do_not_fit_the_entity_are_refused_and_change_nothing() {
    let hub = hub();
    let first =
        ok(&hub, "t1", "upsert", json!({"title": "a", "status": "todo", "assignee": "u1"})).await;
    for (op, data, field) in [
        ("upsert", json!({"title": "a", "status": "doen", "assignee": "u1"}), "status"),
        ("upsert", json!({"title": "a", "status": "todo"}), "assignee"),
        ("upsert", json!({"title": 1, "status": "todo", "assignee": "u1"}), "title"),
        ("upsert", json!({"title": "a", "status": "todo", "assignee": "u1", "x": 1}), "x"),
        ("merge", json!({"status": "nope"}), "status"),
        ("merge", json!({"title": null}), "title"),
        ("merge", json!({"priority": "high"}), "priority"),
    ] {
        let (status, body) = write(&hub, "t1", op, data.clone()).await;
        assert_eq!(status, 422, "{op} {data}: {body}");
        assert_eq!(body["error"]["code"], 120, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message:?} names {field}");
    }
    let (_, state) = hub.api("GET", "/api/state?channel=task:b1", None).await;
    assert_eq!(state["offset"], first, "no offset taken: {state}");
    assert_eq!(state["records"][0]["value"]["status"], "todo");
    // The entity's JSON Schema is served.
    let (status, schema) = hub.api("GET", "/api/schema/Task", None).await;
    assert_eq!(status, 200, "{schema}");
    assert_eq!(schema["properties"]["status"]["enum"], json!(["todo", "doing", "done"]));
}

#[tokio::test]
async fn bad_filters_and_unknown_views_are_invalid_filter_with_a_column() {
    let hub = hub();
    let mut ws = hub.client("u1", &["task:*"]).await;
    for (q, needle) in [
        (view(None, Some(r#"staus == "x""#)), "column 1"),
        (view(None, Some(r#"status == 3"#)), "column 11"),
        (view(None, Some(r#"status = "x""#)), "column 8"),
        (view(Some("NoSuchView"), None), "NoSuchView"),
    ] {
        let e = ws
            .request(Command::Subscribe {
                channel: "task:b1".into(),
                since: None,
                snapshot: false,
                view: q,
                presence: Default::default(),
                preview: None,
            })
            .await
            .unwrap_err();
        assert_eq!(code(&e), 118, "{e}");
        assert!(e.message.contains(needle), "{:?} has {needle:?}", e.message);
    }
    // `Task by id` needs a key; an unknown field in subscribe is named.
    let e = ws
        .request(Command::Subscribe {
            channel: "task:b1".into(),
            since: None,
            snapshot: false,
            view: view(Some("TaskDetail"), None),
            presence: Default::default(),
            preview: None,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), 107, "{e}");
    ws.send_raw(r#"{"id":90,"cmd":"subscribe","channel":"task:b1","fliter":"x"}"#).await;
    let e = ws.reply(90).await.unwrap_err();
    assert!(code(&e) == 107 && e.message.contains("fliter"), "{e}");
}

#[tokio::test]
async fn a_token_filter_narrows_every_view_and_forbids_the_whole_channel() {
    let hub = hub();
    ok(&hub, "t1", "upsert", json!({"title": "a", "status": "todo", "assignee": "u1"})).await;
    ok(&hub, "t2", "upsert", json!({"title": "b", "status": "todo", "assignee": "u2"})).await;
    let token = token_with(json!({
        "sub": "u1", "exp": herald_server::auth::unix_now() + 600, "channels": ["task:*"],
        "filters": {"task": "assignee == \"u1\""},
    }));
    let mut ws = Ws::open(&hub.ws_url()).await;
    ws.request(Command::Connect { token: Some(token), name: None, version: None }).await.unwrap();
    let reply = subscribe(&mut ws, view(Some("ActiveTasks"), None)).await;
    assert_eq!(keys(&reply["initial"]), ["t1"], "{reply}");
    let e = ws
        .request(Command::Subscribe {
            channel: "task:b1".into(),
            since: None,
            snapshot: true,
            view: ViewQuery::default(),
            presence: Default::default(),
            preview: None,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), 103);
    // t2 moving to done is nothing this user may see: no event. t1's move is.
    ok(&hub, "t2", "merge", json!({"status": "done"})).await;
    ok(&hub, "t1", "merge", json!({"status": "done"})).await;
    let e = next_event(&mut ws).await;
    assert_eq!((e.key.as_str(), e.operation.as_str()), ("t1", "delete"));
}

#[tokio::test]
async fn a_resumed_view_gets_the_events_it_missed_and_nothing_else() {
    let hub = hub();
    ok(&hub, "t1", "upsert", json!({"title": "a", "status": "todo", "assignee": "u1"})).await;
    let mut ws = hub.client("u1", &["task:*"]).await;
    let reply = subscribe(&mut ws, view(Some("ActiveTasks"), None)).await;
    let since = herald_protocol::Position {
        epoch: reply["epoch"].as_str().unwrap().into(),
        offset: reply["offset"].as_u64().unwrap(),
    };
    drop(ws);
    ok(&hub, "t2", "upsert", json!({"title": "b", "status": "done", "assignee": "u1"})).await;
    ok(&hub, "t1", "merge", json!({"status": "done"})).await;
    ok(&hub, "t3", "upsert", json!({"title": "c", "status": "doing", "assignee": "u1"})).await;
    let mut ws = hub.client("u1", &["task:*"]).await;
    let reply = ws
        .request(Command::Subscribe {
            channel: "task:b1".into(),
            since: Some(since),
            snapshot: false,
            view: view(Some("ActiveTasks"), None),
            presence: Default::default(),
            preview: None,
        })
        .await
        .unwrap();
    assert_eq!(reply["recovered"], true, "{reply}");
    assert!(reply.get("initial").is_none());
    let events: Vec<(String, String)> = reply["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["operation"].as_str().unwrap().into(), e["key"].as_str().unwrap().into()))
        .collect();
    assert_eq!(events, [("delete".into(), "t1".into()), ("insert".into(), "t3".into())]);
    assert_eq!(reply["offset"], 4);
}

#[tokio::test]
async fn the_subscribe_hook_can_hold_a_user_to_a_filter() {
    let app = axum::Router::new().route(
        "/authorize",
        axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
            let filter = format!("assignee == {}", body["user"]);
            axum::Json(json!({ "allow": true, "filter": filter }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = format!(
        "specs = [{:?}]\n[subscribe_hook]\nurl = \"http://{hook_addr}/authorize\"\n\
         [namespaces.task]\nkeyed = true\nsubscribe = \"hook\"\n",
        spec_path()
    );
    let hub = Hub::start(&config);
    ok(&hub, "t1", "upsert", json!({"title": "a", "status": "todo", "assignee": "u1"})).await;
    ok(&hub, "t2", "upsert", json!({"title": "b", "status": "todo", "assignee": "u2"})).await;
    // No channel claims: the hook decides, and holds u2 to its own tasks.
    let mut ws = hub.client("u2", &[]).await;
    let reply = subscribe(&mut ws, view(Some("ActiveTasks"), None)).await;
    assert_eq!(keys(&reply["initial"]), ["t2"], "{reply}");
    assert_eq!(reply["filter"], r#"status != "done" and assignee == "u2""#);
    let e = ws
        .request(Command::Subscribe {
            channel: "task:b1".into(),
            since: None,
            snapshot: false,
            view: ViewQuery::default(),
            presence: Default::default(),
            preview: None,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), 103, "the whole channel is not for u2: {e}");
}
