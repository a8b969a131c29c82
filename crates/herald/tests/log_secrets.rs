//! Secrets never reach logs, even at `HERALD_LOG=trace` (`--log trace`): tokens (upgrade query
//! and header, `connect`, `refresh`, SSE, minted by the API) and API keys, verbatim or in hex.

mod support;

use herald_protocol::command::Command;
use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn trace_logs_hold_no_tokens_or_keys() {
    let config = "[namespaces.default]\nanonymous = true\nsubscribe = \"anyone\"\n";
    let hub = Hub::start_with(config, &["--log", "trace"]);
    let user_token = |user: &str| token(user, &["*"]);
    let (in_query, in_header, in_connect, in_sse) =
        (user_token("q"), user_token("h"), user_token("c"), user_token("s"));
    // Same user, later expiry: what a refresh sends.
    let in_refresh = token_with(
        json!({"sub": "c", "exp": herald_server::auth::unix_now() + 7200, "channels": ["*"]}),
    );

    let mut ws = Ws::open(&format!("{}?token={in_query}", hub.ws_url())).await;
    ws.request(Command::Connect { token: None, name: None, version: None })
        .await
        .expect("query token");
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        hub.ws_url(),
    )
    .unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {in_header}").parse().unwrap());
    let (mut with_header, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    {
        use futures_util::SinkExt as _;
        let connect = r#"{"id":1,"cmd":"connect"}"#;
        with_header.send(connect.into()).await.unwrap();
    }
    let mut ws = Ws::open(&hub.ws_url()).await;
    let connect = Command::Connect { token: Some(in_connect.clone()), name: None, version: None };
    ws.request(connect).await.expect("connect");
    ws.request(Command::Refresh { token: in_refresh.clone() }).await.expect("refresh");
    ws.subscribe("news").await;
    let sse = reqwest::Client::new()
        .get(hub.http("/sse/news"))
        .header("authorization", format!("Bearer {in_sse}"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let (status, minted) = hub.api("POST", "/api/token", Some(json!({"sub": "m"}))).await;
    assert_eq!(status, 200);
    let minted = minted["token"].as_str().unwrap().to_string();
    hub.publish("news", json!({"n": 1})).await;
    assert_eq!(ws.next_pub().await.offset, 1);
    let wrong_key = "wrong-key-7f3a9c";
    let resp = reqwest::Client::new()
        .get(hub.http("/api/info"))
        .header("x-api-key", wrong_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // The audit line of that refusal is the last thing logged for the work above.
    let deadline = Instant::now() + WAIT;
    while !hub.log.lock().unwrap().iter().any(|l| l.contains("bad or missing API key")) {
        assert!(Instant::now() < deadline, "no audit line for the wrong key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(with_header);

    let log = hub.log.lock().unwrap().join("\n");
    assert!(log.contains("herald::audit"), "the hub's own lines were read: {log}");
    let secrets = [
        ("query token", in_query),
        ("header token", in_header),
        ("connect token", in_connect),
        ("refresh token", in_refresh),
        ("SSE token", in_sse),
        ("minted token", minted),
        ("API key", API_KEY.to_string()),
        ("wrong API key", wrong_key.to_string()),
        ("token secret", SECRET.to_string()),
    ];
    for (what, secret) in secrets {
        // A token's signature is its secret part; its header is the same for every token.
        let part = secret.rsplit('.').next().unwrap().to_string();
        assert!(!log.contains(&part), "{what} in the log");
        assert!(!log.contains(&hex(&part)), "{what} (hex) in the log");
    }
}
