//! Presence and volatile events against a real herald process (memory engine): the member list
//! and its events, batching (a join and leave inside the window cancel out), paging and counts,
//! a resume of the member list, and volatile events (delivered, never stored, rate-limited).

mod support;

use herald_protocol::command::Command;
use herald_protocol::{PresenceMode, PresenceQuery, ServerMessage, ViewQuery};
use serde_json::{Value, json};
use support::{Hub, Ws, code};

const CONFIG: &str = "[namespaces.room]\npresence = true\nclient_publish = true\n\
                      presence_window = \"50ms\"\nvolatile_per_second = 5\n";

fn presence(mode: Option<PresenceMode>, member: &str, info: Value) -> PresenceQuery {
    PresenceQuery {
        mode,
        member: Some(member.into()),
        info: Some(serde_json::value::RawValue::from_string(info.to_string()).unwrap()),
        ..PresenceQuery::default()
    }
}

async fn join(ws: &mut Ws, channel: &str, q: PresenceQuery) -> Value {
    ws.request(Command::Subscribe {
        channel: channel.into(),
        since: None,
        snapshot: false,
        view: ViewQuery::default(),
        presence: q,
        preview: None,
    })
    .await
    .expect("subscribe")
}

/// The next push of kind `push` (publications and other pushes in between are skipped).
async fn next_push(ws: &mut Ws, push: &str) -> Value {
    loop {
        match ws.next().await {
            Some(ServerMessage::Event { push: p, body }) if p == push => return *body,
            Some(
                ServerMessage::Event { .. } | ServerMessage::Publication(_) | ServerMessage::Ping,
            ) => {}
            other => panic!("expected a {push} push, got {other:?}"),
        }
    }
}

fn members(list: &Value) -> Vec<String> {
    list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["member"].as_str().unwrap().into())
        .collect()
}

#[tokio::test]
async fn members_join_update_and_leave_and_a_quick_join_and_leave_says_nothing() {
    let hub = Hub::start(CONFIG);
    let mut a = hub.client("alice", &["room:*"]).await;
    join(&mut a, "room:1", presence(Some(PresenceMode::Members), "tabA", json!({"name": "A"})))
        .await;
    let list = next_push(&mut a, "presence_list").await;
    assert!(members(&list).is_empty(), "{list}");
    let me = next_push(&mut a, "presence").await;
    assert_eq!((me["event"].as_str(), me["member"].as_str()), (Some("join"), Some("alice/tabA")));
    assert_eq!(me["info"], json!({"name": "A"}));
    assert_eq!(me["user"], "alice");

    let mut b = hub.client("bob", &["room:*"]).await;
    join(&mut b, "room:1", presence(Some(PresenceMode::Members), "tabB", json!({"name": "B"})))
        .await;
    let list = next_push(&mut b, "presence_list").await;
    assert_eq!(members(&list), ["alice/tabA"]);
    let joined = next_push(&mut a, "presence").await;
    assert_eq!(
        (joined["event"].as_str(), joined["member"].as_str()),
        (Some("join"), Some("bob/tabB"))
    );
    assert_eq!(joined["offset"].as_u64(), Some(me["offset"].as_u64().unwrap() + 1));

    // A member that joins and leaves inside one window: nobody hears of it.
    let mut c = hub.client("carol", &["room:*"]).await;
    join(&mut c, "room:1", presence(None, "tabC", json!({}))).await;
    c.request(Command::Unsubscribe { channel: "room:1".into(), sub: None }).await.unwrap();
    // Then bob updates his info: the next thing alice hears is that update.
    b.request(Command::PresenceUpdate {
        channel: "room:1".into(),
        info: serde_json::value::RawValue::from_string(r#"{"name":"B","editing":"t1"}"#.into())
            .unwrap(),
    })
    .await
    .unwrap();
    let update = next_push(&mut a, "presence").await;
    assert_eq!(
        (update["event"].as_str(), update["member"].as_str()),
        (Some("update"), Some("bob/tabB"))
    );
    assert_eq!(update["info"]["editing"], "t1");
    assert_eq!(
        update["offset"].as_u64(),
        Some(joined["offset"].as_u64().unwrap() + 1),
        "carol took no offset"
    );

    // Counts and pages.
    let stats = a.request(Command::PresenceStats { channel: "room:1".into() }).await.unwrap();
    assert_eq!((stats["members"].as_u64(), stats["users"].as_u64()), (Some(2), Some(2)));
    let page = a
        .request(Command::Presence { channel: "room:1".into(), limit: Some(1), after: None })
        .await
        .unwrap();
    assert_eq!(
        (members(&page), page["next"].as_str()),
        (vec!["alice/tabA".to_string()], Some("alice/tabA"))
    );
    let page = a
        .request(Command::Presence {
            channel: "room:1".into(),
            limit: Some(1),
            after: Some("alice/tabA".into()),
        })
        .await
        .unwrap();
    assert_eq!(members(&page), ["bob/tabB"]);
    assert!(page.get("next").is_none());

    let (status, body) = hub.api("GET", "/api/presence_stats?channel=room:1", None).await;
    assert_eq!((status, &body["members"], &body["users"]), (200, &json!(2), &json!(2)), "{body}");
    let (_, body) =
        hub.api("GET", "/api/presence?channel=room:1&limit=1&after=alice/tabA", None).await;
    assert_eq!(members(&body), ["bob/tabB"]);

    // Closing the connection is a leave.
    drop(b);
    let left = next_push(&mut a, "presence").await;
    assert_eq!(
        (left["event"].as_str(), left["member"].as_str()),
        (Some("leave"), Some("bob/tabB"))
    );
    assert_eq!(left["user"], "bob");
}

#[tokio::test]
async fn counts_only_and_a_resumed_member_list() {
    let hub = Hub::start(CONFIG);
    let mut a = hub.client("alice", &["room:*"]).await;
    join(&mut a, "room:2", presence(Some(PresenceMode::Counts), "tabA", json!(null))).await;
    let first = next_push(&mut a, "presence_stats").await;
    assert_eq!(first["members"], 0);
    let counted = next_push(&mut a, "presence_stats").await;
    assert_eq!((counted["members"].as_u64(), counted["users"].as_u64()), (Some(1), Some(1)));

    let mut w = hub.client("watcher", &["room:*"]).await;
    join(&mut w, "room:2", presence(Some(PresenceMode::Members), "w", json!(null))).await;
    next_push(&mut w, "presence_list").await;
    // Drain the watcher's own join, then go away: the join of bob and the leave of alice
    // happen while it is gone.
    let own = next_push(&mut w, "presence").await;
    assert_eq!(own["member"], "watcher/w");
    let seen = json!({"epoch": own["epoch"], "offset": own["offset"]});
    drop(w);
    let mut b = hub.client("bob", &["room:*"]).await;
    join(&mut b, "room:2", presence(Some(PresenceMode::Members), "tabB", json!({"name": "B"})))
        .await;
    next_push(&mut b, "presence_list").await;
    drop(a);
    // Alice's leave is the last change: once bob hears it, everything before is published.
    loop {
        let e = next_push(&mut b, "presence").await;
        if e["event"] == "leave" && e["member"] == "alice/tabA" {
            break;
        }
    }
    let page = b
        .request(Command::Presence { channel: "room:2".into(), limit: None, after: None })
        .await
        .unwrap();
    assert_eq!(members(&page), ["bob/tabB"]);
    let mut w = hub.client("watcher", &["room:*"]).await;
    let mut q = presence(Some(PresenceMode::Members), "w", json!(null));
    q.since = Some(serde_json::from_value(seen).unwrap());
    join(&mut w, "room:2", q).await;
    let head = next_push(&mut w, "presence_list").await;
    assert_eq!(head["recovered"], true, "{head}");
    let mut events = Vec::new();
    while events.len() < 4 {
        let e = next_push(&mut w, "presence").await;
        events.push(format!("{}:{}", e["event"].as_str().unwrap(), e["member"].as_str().unwrap()));
    }
    // Missed: its own leave, bob's join, alice's leave; then its own join again.
    assert_eq!(events, ["leave:watcher/w", "join:bob/tabB", "leave:alice/tabA", "join:watcher/w"]);
}

#[tokio::test]
async fn volatile_events_reach_subscribers_are_kept_nowhere_and_are_rate_limited() {
    let hub = Hub::start(CONFIG);
    let mut a = hub.client("alice", &["room:*"]).await;
    let mut b = hub.client("bob", &["room:*"]).await;
    join(&mut b, "room:3", PresenceQuery::default()).await;
    join(&mut a, "room:3", PresenceQuery::default()).await;
    let volatile = |n: u64| Command::Volatile {
        channel: "room:3".into(),
        kind: Some("cursor".into()),
        data: serde_json::value::RawValue::from_string(format!(r#"{{"x":{n}}}"#)).unwrap(),
    };
    a.request(volatile(1)).await.unwrap();
    let v = next_push(&mut b, "volatile").await;
    assert_eq!(
        (v["type"].as_str(), v["user"].as_str(), &v["data"]),
        (Some("cursor"), Some("alice"), &json!({"x": 1}))
    );
    // Not in the history, no offset taken.
    let (_, history) = hub.api("GET", "/api/history?channel=room:3", None).await;
    assert_eq!(history["offset"], 0, "{history}");
    // A flood is refused with 110 (5 per second, bursts of 10).
    let mut refused = None;
    for n in 0..50 {
        if let Err(e) = a.request(volatile(n)).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("a flood is limited");
    assert_eq!(code(&e), 110, "{e}");
    // On a namespace without presence, presence fields are refused.
    let e = a
        .request(Command::Subscribe {
            channel: "nopresence:1".into(),
            since: None,
            snapshot: false,
            view: ViewQuery::default(),
            presence: presence(Some(PresenceMode::Members), "x", json!(null)),
            preview: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(code(&e), 102 | 107), "{e}");
}

#[tokio::test]
async fn a_large_member_list_comes_in_parts_that_add_up_to_every_member() {
    let hub = Hub::start(CONFIG);
    // 24 members with ~900 bytes of info each: ~22 KB of members, more than one 8 KiB part.
    let mut members_ws = Vec::new();
    for i in 0..24 {
        let mut ws = hub.client(&format!("u{i}"), &["room:*"]).await;
        let info = json!({"name": format!("member {i}"), "bio": "x".repeat(900)});
        join(&mut ws, "room:big", presence(None, "tab", info)).await;
        members_ws.push(ws);
    }
    // Joins are batched: wait (for the counts push, not for time) until all 24 are in the list.
    let mut counter = hub.client("counter", &["room:*"]).await;
    join(&mut counter, "room:big", presence(Some(PresenceMode::Counts), "c", json!(null))).await;
    while next_push(&mut counter, "presence_stats").await["members"].as_u64() < Some(25) {}
    let mut watcher = hub.client("watcher", &["room:*"]).await;
    join(&mut watcher, "room:big", presence(Some(PresenceMode::Members), "w", json!(null))).await;
    let mut parts = Vec::new();
    loop {
        let part = next_push(&mut watcher, "presence_list").await;
        let more = part["more"] == true;
        parts.push(part);
        if !more {
            break;
        }
    }
    assert!(
        parts.len() >= 3,
        "{} parts: {} members, {} bytes",
        parts.len(),
        members(&parts[0]).len(),
        parts[0].to_string().len()
    );
    let at = |p: &Value| (p["epoch"].clone(), p["offset"].clone());
    assert!(parts.iter().all(|p| at(p) == at(&parts[0])), "every part at one position");
    assert!(parts.iter().all(|p| p.to_string().len() < 10 * 1024), "parts stay small");
    let mut all: Vec<String> = parts.iter().flat_map(members).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(n, all.len(), "no member twice");
    // The 24 members and the counter (the watcher's own join may not be flushed yet).
    assert!(all.len() == 25 || all.len() == 26, "{} members: {all:?}", all.len());
    for i in 0..24 {
        assert!(all.contains(&format!("u{i}/tab")), "u{i}/tab missing");
    }
}
