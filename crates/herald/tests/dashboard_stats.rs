//! The dashboard's pushed figures against the real binary: an admin token subscribed to
//! `sys:stats` is sent the hub's figures every second; any other token is refused (103), nobody
//! may publish there, and a configuration cannot declare the `sys` namespace.

mod support;

use herald_protocol::command::{Command, PublishCommand};
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

/// The figures are published once a second: one must arrive well within this.
const WITHIN: Duration = Duration::from_secs(3);

fn admin_token() -> String {
    token_with(
        json!({"sub": "ops", "exp": herald_server::auth::unix_now() + 600, "roles": ["admin"]}),
    )
}

async fn connect(hub: &Hub, token: String) -> Ws {
    let mut ws = Ws::open(&hub.ws_url()).await;
    ws.request(Command::Connect { token: Some(token), name: None, version: None })
        .await
        .expect("connect");
    ws
}

/// The `data` of the next `sys:stats` publication, within [`WITHIN`].
async fn next_stats(ws: &mut Ws) -> Value {
    let publication = tokio::time::timeout(WITHIN, ws.next_pub()).await.expect("stats within 3 s");
    assert_eq!((publication.channel.as_str(), publication.kind.as_str()), ("sys:stats", "stats"));
    serde_json::from_str(publication.data.get()).unwrap()
}

#[tokio::test]
async fn an_admin_token_is_pushed_the_figures_every_second() {
    let hub = Hub::start("");
    let mut admin = connect(&hub, admin_token()).await;
    admin.subscribe("sys:stats").await;
    let first = next_stats(&mut admin).await;
    for field in [
        "node",
        "version",
        "uptime_secs",
        "connections",
        "cluster_connections",
        "subscriptions",
        "publications",
        "deliveries",
        "publications_per_sec",
        "deliveries_per_sec",
        "channels",
        "top_channels",
        "nodes",
    ] {
        assert!(first.get(field).is_some(), "{field} missing from {first}");
    }
    assert_eq!(first["connections"], 1);
    assert_eq!(first["subscriptions"], 1);
    assert_eq!(first["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(first["nodes"][0]["id"], first["node"]);
    assert_eq!(first["top_channels"], json!([{"channel": "sys:stats", "subscribers": 1}]));
    // Its own publications are not counted: an idle hub reads none.
    assert_eq!(first["publications"], 0);

    // Five publications to a watched channel show up in the next figures.
    let mut watcher = hub.client("w", &["lobby"]).await;
    watcher.subscribe("lobby").await;
    for n in 0..5 {
        hub.publish("lobby", json!(n)).await;
    }
    for _ in 0..5 {
        watcher.next_pub().await;
    }
    let deadline = tokio::time::Instant::now() + WITHIN;
    let counted = loop {
        let stats = next_stats(&mut admin).await;
        if stats["publications"] == 5 {
            break stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "publications never reached 5: {stats}");
    };
    assert_eq!(counted["connections"], 2);
    assert!(counted["deliveries"].as_u64().unwrap() >= 5, "{counted}");
    assert_eq!(counted["top_channels"].as_array().unwrap().len(), 2, "{counted}");
}

#[tokio::test]
async fn other_tokens_may_not_subscribe_and_nobody_may_publish() {
    let hub = Hub::start("");
    // Even a claim matching every channel does not reach the hub's own.
    let mut user = connect(&hub, token("u", &["*"])).await;
    let refused = user
        .request(Command::Subscribe {
            channel: "sys:stats".into(),
            since: None,
            snapshot: false,
            view: Default::default(),
            presence: Default::default(),
            preview: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code, 103, "{refused:?}");
    let mut admin = connect(&hub, admin_token()).await;
    let forged = Command::Publish(PublishCommand {
        channel: "sys:stats".into(),
        kind: Some("stats".into()),
        data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        key: None,
        op: None,
        idempotency_key: None,
        correlation_id: None,
    });
    assert_eq!(admin.request(forged).await.unwrap_err().code, 103, "only the hub publishes there");
    let (status, body) =
        hub.publish_with(json!({"channel": "sys:stats", "type": "stats", "data": {}})).await;
    assert_eq!((status, body["error"]["code"].as_u64()), (403, Some(103)), "{body}");
}

#[test]
fn a_configured_sys_namespace_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, "[namespaces.sys]\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"sys\" is reserved"), "{stderr}");
}
