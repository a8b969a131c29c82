//! Session defects found by the outside review (issue 10): client-supplied times that overflow,
//! bookkeeping released on every exit, refresh that narrows a token, `require_origin`, and the
//! code an anonymous connection gets where a token is needed.

mod support;

use herald_protocol::ServerMessage;
use herald_protocol::command::Command;
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const CONFIG: &str = r#"
[limits]
max_connections_per_user = 2

[namespaces.default]
[namespaces.feed]
[namespaces.open]
anonymous = true
subscribe = "anyone"
"#;

async fn connections(hub: &Hub) -> u64 {
    let (status, info) = hub.api("GET", "/api/info", None).await;
    assert_eq!(status, 200, "{info}");
    info["connections"].as_u64().unwrap_or_else(|| panic!("connections in {info}"))
}

/// Waits (bounded) until the node reports `n` connections.
async fn wait_connections(hub: &Hub, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if connections(hub).await == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "connections never reached {n}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_token_expiring_in_the_far_future_works_and_releases_its_connection() {
    let hub = Hub::start(CONFIG);
    // exp ≈ now + 1e19 s once overflowed the session's deadline arithmetic (a panic that left the
    // connection counted: two of them locked the user out under max_connections_per_user = 2).
    for exp in [u64::MAX, 10_000_000_000_000_000_000u64] {
        for _ in 0..3 {
            let mut ws = Ws::open(&hub.ws_url()).await;
            let token = token_with(json!({"sub": "far", "exp": exp, "channels": ["feed:*"]}));
            let connected = ws
                .request(Command::Connect { token: Some(token), name: None, version: None })
                .await;
            connected.expect("a far-future exp is a valid token");
            ws.subscribe("feed:far").await;
            ws.request(Command::Ping { timestamp: None }).await.expect("the session keeps serving");
            drop(ws);
            wait_connections(&hub, 0).await;
        }
    }
}

#[tokio::test]
async fn refresh_to_a_narrower_token_ends_the_subscriptions_it_no_longer_grants() {
    let hub = Hub::start(CONFIG);
    let mut ws = hub.client("narrow", &["feed:*"]).await;
    ws.subscribe("feed:a").await;
    ws.subscribe("feed:b").await;
    let narrower = token("narrow", &["feed:a"]);
    ws.request(Command::Refresh { token: narrower }).await.expect("refresh");
    match ws.next().await {
        Some(ServerMessage::Unsubscribe { channel, code, resubscribe, .. }) => {
            assert_eq!(channel, "feed:b");
            assert_eq!(code, 103);
            assert!(!resubscribe);
        }
        other => panic!("expected the unsubscribe push of feed:b, got {other:?}"),
    }
    hub.publish("feed:b", json!("not for you")).await;
    hub.publish("feed:a", json!("still yours")).await;
    let p = ws.next_pub().await;
    assert_eq!(p.channel, "feed:a", "feed:b must not flow after the refresh");
    // Subscribing again is refused under the new token.
    let again = ws
        .request(Command::Subscribe {
            channel: "feed:b".into(),
            since: None,
            snapshot: false,
            view: Default::default(),
            presence: Default::default(),
            preview: None,
        })
        .await;
    assert_eq!(code(&again.unwrap_err()), 103);
}

#[tokio::test]
async fn an_anonymous_connection_is_told_to_log_in_not_forbidden() {
    let hub = Hub::start(CONFIG);
    let mut ws = Ws::open(&hub.ws_url()).await;
    ws.request(Command::Connect { token: None, name: None, version: None })
        .await
        .expect("anonymous connect");
    ws.subscribe("open:lobby").await;
    let refused = ws
        .request(Command::Subscribe {
            channel: "feed:x".into(),
            since: None,
            snapshot: false,
            view: Default::default(),
            presence: Default::default(),
            preview: None,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&refused), 101, "{refused:?}");
    // A user with a token that does not grant the channel is forbidden (103).
    let mut user = hub.client("u", &["feed:mine"]).await;
    let refused = user
        .request(Command::Subscribe {
            channel: "feed:x".into(),
            since: None,
            snapshot: false,
            view: Default::default(),
            presence: Default::default(),
            preview: None,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&refused), 103);
}

#[tokio::test]
async fn require_origin_refuses_upgrades_without_one() {
    let hub = Hub::start(&format!("require_origin = true\n{CONFIG}"));
    // tungstenite's client sends no Origin header.
    let mut ws = Ws::open(&hub.ws_url()).await;
    assert_eq!(ws.expect_close().await, (4501, Some(4501)));
    // With one (any, as allowed_origins is empty) the upgrade is served.
    let mut req = hub.ws_url().into_client_request().unwrap();
    req.headers_mut().insert("origin", "https://app.example".parse().unwrap());
    let (stream, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    drop(stream);
    let (status, body): (u16, Value) = hub.api("GET", "/health", None).await;
    assert_eq!(status, 200, "{body}");
}
