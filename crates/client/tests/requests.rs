//! Requests, keyed snapshots, URL rotation, token refresh and the raw layer, against the real
//! hub. Needs `cargo build --bins` first.

mod support;

use herald_client::herald_protocol::command::HistoryQuery;
use herald_client::herald_protocol::{Command, Op, Request, ServerMessage};
use herald_client::raw::RawConnection;
use herald_client::{BackoffPolicy, Client, ConnectionState, Error, SubEvent, SubscribeOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::hub::{Hub, TOKEN_SECRET, good_token, token};
use support::{next_event, publish_cmd, wait_state};

fn policy() -> BackoffPolicy {
    BackoffPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        breaker_after: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_history_state_and_snapshot_over_websocket_with_url_rotation() {
    let hub = Hub::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let client = Client::builder()
        .urls([format!("ws://{dead}/ws"), hub.ws_url()])
        .token(good_token())
        .backoff(policy())
        .build()
        .unwrap();
    client.wait_connected(Duration::from_secs(10)).await.unwrap();
    assert!(client.connect_info().is_some_and(|i| i.user == "tester"));

    let upsert = |key: &str, op: Op, data: serde_json::Value| {
        let mut p = publish_cmd("kv:board", data);
        p.key = Some(key.into());
        p.op = Some(op);
        p
    };
    let a =
        client.publish_with(upsert("a", Op::Upsert, serde_json::json!({"v": 1}))).await.unwrap();
    client.publish_with(upsert("b", Op::Upsert, serde_json::json!({"v": 2}))).await.unwrap();
    let c = client.publish_with(upsert("a", Op::Merge, serde_json::json!({"w": 3}))).await.unwrap();
    assert_eq!((a.epoch.as_str(), c.offset), (c.epoch.as_str(), a.offset + 2));

    let state = client.channel_state("kv:board").await.unwrap();
    let records: Vec<(String, String)> =
        state.records.iter().map(|r| (r.key.clone(), r.value.get().to_string())).collect();
    assert_eq!(
        records,
        [("a".into(), r#"{"v":1,"w":3}"#.into()), ("b".into(), r#"{"v":2}"#.into())]
    );
    let history = client
        .history(HistoryQuery { channel: "kv:board".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(history.publications.len(), 3);

    let mut sub = client.subscribe(
        "kv:board",
        SubscribeOptions { since: None, snapshot: true, ..Default::default() },
    );
    match next_event(&mut sub, Duration::from_secs(10)).await {
        SubEvent::Subscribed { position, snapshot } => {
            assert_eq!(position.offset, c.offset);
            assert_eq!(snapshot.map(|s| s.len()), Some(2));
        }
        other => panic!("expected Subscribed, got {other:?}"),
    }
    client.publish_with(upsert("c", Op::Upsert, serde_json::json!(1))).await.unwrap();
    match next_event(&mut sub, Duration::from_secs(10)).await {
        SubEvent::Publication(p) => {
            assert_eq!((p.key.as_deref(), p.offset), (Some("c"), c.offset + 1))
        }
        other => panic!("expected the publication, got {other:?}"),
    }

    // Errors come back with the server's code; a second subscription to one channel is refused.
    match client.publish("nonexistent:x", &1).await {
        Err(Error::Server(e)) => assert_eq!(e.code, 102),
        other => panic!("expected unknown_namespace, got {other:?}"),
    }
    let mut twice = client.subscribe("kv:board", SubscribeOptions::default());
    assert!(
        matches!(next_event(&mut twice, Duration::from_secs(5)).await, SubEvent::Ended { error } if error.code == 105)
    );

    // The HTTP API sees the same channel.
    let api = hub.api();
    let h = api
        .history(&HistoryQuery { channel: "kv:board".into(), limit: Some(2), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(
        h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [c.offset, c.offset + 1]
    );
    assert_eq!(api.state("kv:board").await.unwrap().records.len(), 3);
    assert!(api.info().await.unwrap().get("node").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_refreshed_in_band_before_it_expires() {
    let hub = Hub::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (client, mut states) = Client::builder()
        .url(hub.ws_url())
        .token_provider(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, String>(token(TOKEN_SECRET, "refresher", Duration::from_secs(3))) }
        })
        .refresh_lead(Duration::from_secs(1))
        .backoff(policy())
        .build_with_states()
        .unwrap();
    wait_state(&mut states, Duration::from_secs(10), |s| *s == ConnectionState::Connected).await;
    let mut sub = client.subscribe("refresh", SubscribeOptions::default());
    let start = match next_event(&mut sub, Duration::from_secs(10)).await {
        SubEvent::Subscribed { position, .. } => position,
        other => panic!("{other:?}"),
    };
    // Tokens live about 3 s; over 7 s the connection must survive on refreshes alone.
    let quiet = tokio::time::timeout(Duration::from_secs(7), async {
        loop {
            if let Ok(s) = states.recv().await {
                return s;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "connection state changed: {quiet:?}");
    assert!(
        calls.load(Ordering::SeqCst) >= 3,
        "provider called {} times",
        calls.load(Ordering::SeqCst)
    );
    hub.api().publish(&publish_cmd("refresh", serde_json::json!(1))).await.unwrap();
    match next_event(&mut sub, Duration::from_secs(5)).await {
        SubEvent::Publication(p) => assert_eq!(p.offset, start.offset + 1),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_layer_speaks_batched_frames() {
    let hub = Hub::start();
    let mut raw = RawConnection::connect(&hub.ws_url(), Some(&good_token())).await.unwrap();
    raw.send(&Request {
        id: Some(1),
        command: Command::Connect { token: None, name: None, version: None },
    })
    .await
    .unwrap();
    let (mut tx, mut rx) = raw.split();
    tx.send_batch(&[
        Request {
            id: Some(2),
            command: Command::Subscribe {
                channel: "raw".into(),
                since: None,
                snapshot: false,
                view: Default::default(),
                presence: Default::default(),
                preview: None,
            },
        },
        Request { id: Some(3), command: Command::Ping { timestamp: None } },
    ])
    .await
    .unwrap();
    let mut replied = Vec::new();
    while replied.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap() {
            ServerMessage::Reply { id, result } => {
                assert!(result.is_ok(), "request {id}: {result:?}");
                replied.push(id);
            }
            ServerMessage::Ping => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(replied, [1, 2, 3], "replies come in command order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_token_that_lapses_goes_offline_with_4004() {
    let hub = Hub::start();
    let (_client, mut states) = Client::builder()
        .url(hub.ws_url())
        .token(token(TOKEN_SECRET, "short", Duration::from_secs(2)))
        .backoff(policy())
        .build_with_states()
        .unwrap();
    wait_state(&mut states, Duration::from_secs(10), |s| *s == ConnectionState::Connected).await;
    // Without a provider there is nothing to refresh with: the hub closes with 4004 and the
    // client stops instead of presenting the same expired token again.
    let offline = wait_state(&mut states, Duration::from_secs(10), |s| {
        !matches!(s, ConnectionState::Connected)
    })
    .await;
    assert!(
        matches!(
            &offline,
            ConnectionState::Offline {
                reason: herald_client::OfflineReason::Closed { code: 4004, .. }
            }
        ),
        "{offline:?}"
    );
}
