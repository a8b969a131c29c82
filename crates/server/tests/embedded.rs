//! The hub mounted inside another axum application (seed 004) under `/live`, publishing from the
//! app's own code path, with a real socket: the routes it chose and no others, pages that work
//! under the prefix, and the hub's own housekeeping.

use futures_util::{SinkExt, StreamExt};
use herald_protocol::ServerMessage;
use herald_server::{Config, Hub, Routes, memory_hub};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A hub whose `session:*` channels anyone may read, with API key `k`.
fn session_hub(extra_toml: &str) -> Arc<Hub> {
    let toml =
        format!("[namespaces.session]\nsubscribe = \"anyone\"\nanonymous = true\n{extra_toml}");
    let mut config = Config::from_toml(&toml).unwrap();
    config.api_keys = vec!["k".into()];
    memory_hub(config).unwrap()
}

/// Serves the application's own `/healthz` plus the hub's routes nested under `/live`.
async fn serve_app(live: axum::Router) -> SocketAddr {
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "app ok" }))
        .nest("/live", live);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    });
    addr
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A socket on `/live/ws`, connected and subscribed to `channel`.
async fn subscribed(addr: SocketAddr, channel: &str) -> Socket {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/live/ws")).await.unwrap();
    let frame = format!(
        "{{\"id\":1,\"cmd\":\"connect\"}}\n{{\"id\":2,\"cmd\":\"subscribe\",\"channel\":\"{channel}\"}}"
    );
    ws.send(Message::text(frame)).await.unwrap();
    let mut replies = 0;
    while replies < 2 {
        let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("socket ended") };
        replies += herald_protocol::split_frame(t.as_str()).count();
    }
    ws
}

/// The page at `url`, checked to link nothing at the host root.
async fn page(url: String) -> String {
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let html = resp.text().await.unwrap();
    assert!(html.contains("href=\"static/style.css\""), "{url}: {html}");
    assert!(!html.contains("\"/"), "{url} links nothing at the host root: {html}");
    html
}

async fn status(url: String) -> u16 {
    reqwest::get(url).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn nested_router_serves_pages_sockets_and_in_process_publishes() {
    let hub = session_hub("");
    let addr = serve_app(herald_server::router(hub.clone())).await;
    assert_eq!(
        reqwest::get(format!("http://{addr}/healthz")).await.unwrap().text().await.unwrap(),
        "app ok"
    );

    // The dashboard is the mount point itself (axum routes no `/live/` into a nested router):
    // a base one level down makes its relative links resolve under `/live/`.
    let dashboard = page(format!("http://{addr}/live?tail=a")).await;
    assert!(dashboard.contains("<head><base href=\"live/\">"), "{dashboard}");
    let demo = page(format!("http://{addr}/live/demo")).await;
    assert!(demo.contains("<a href=\"../live\">dashboard"), "{demo}");
    for asset in ["style.css", "herald.js", "dashboard.js", "demo.js", "ui.js"] {
        let resp = reqwest::get(format!("http://{addr}/live/static/{asset}")).await.unwrap();
        assert_eq!(resp.status(), 200, "{asset}");
        let js = resp.text().await.unwrap();
        assert!(!js.contains("from '/"), "{asset} imports nothing from the host root");
    }

    let mut ws = subscribed(addr, "session:42").await;
    let published = hub
        .publish_value("session:42", "decision.recorded", &serde_json::json!({"choice": "ship"}))
        .await
        .unwrap();
    assert_eq!(published.offset, 1);
    let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("socket ended") };
    match ServerMessage::parse(t.as_str()).unwrap() {
        ServerMessage::Publication(p) => assert_eq!(
            (p.kind.as_str(), p.data.get()),
            ("decision.recorded", "{\"choice\":\"ship\"}")
        ),
        other => panic!("{other:?}"),
    }
    let info = reqwest::Client::new()
        .get(format!("http://{addr}/live/api/info"))
        .header("x-api-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    for route in ["live/health", "live/ready", "live/metrics"] {
        assert_eq!(status(format!("http://{addr}/{route}")).await, 200, "{route}");
    }
}

#[tokio::test]
async fn a_router_with_only_the_websocket_serves_nothing_else() {
    let hub = session_hub("");
    let addr = serve_app(Routes::new(hub.clone()).ws().into_router()).await;
    for route in ["live/api/info", "live/", "live/demo", "live/static/style.css", "live/metrics"] {
        assert_eq!(status(format!("http://{addr}/{route}")).await, 404, "{route}");
    }
    assert_eq!(status(format!("http://{addr}/live/sse/session:1")).await, 404);
    let mut ws = subscribed(addr, "session:1").await;
    hub.publish_value("session:1", "message", "hello").await.unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("socket ended") };
    assert!(matches!(ServerMessage::parse(t.as_str()).unwrap(), ServerMessage::Publication(_)));
}

/// Mounted at the root, as `herald serve` does, the pages keep their plain URLs.
#[tokio::test]
async fn pages_at_the_root_need_no_base() {
    let app = herald_server::router(session_hub(""));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    });
    let dashboard = page(format!("http://{addr}/")).await;
    assert!(!dashboard.contains("<base"), "{dashboard}");
    assert!(dashboard.contains("<a href=\"demo\">"), "{dashboard}");
    let demo = page(format!("http://{addr}/demo")).await;
    assert!(demo.contains("<a href=\"./\">dashboard"), "{demo}");
}

#[tokio::test]
async fn a_value_that_is_not_json_is_refused() {
    let hub = session_hub("");
    let not_json = std::collections::HashMap::from([((1, 2), "a tuple key")]);
    let err = hub.publish_value("session:1", "message", &not_json).await.unwrap_err();
    assert_eq!(err.code, herald_protocol::ErrorCode::BadRequest.code());
}

/// The housekeeping the router starts trims history by age, and ends with `Hub::stop`.
#[tokio::test]
async fn the_hub_trims_history_by_age_until_it_is_stopped() {
    let hub = session_hub("history_ttl = \"100ms\"\n");
    let _router =
        Routes::new(hub.clone()).ws().maintain_every(Duration::from_millis(50)).into_router();
    assert!(hub.housekeeping_running());
    hub.publish_value("session:1", "message", &[1, 2, 3]).await.unwrap();
    let used = || hub.engine_memory().map(|(used, _)| used).unwrap();
    assert!(used() > 0, "the publication is held");
    // Nobody reads the channel, so only the housekeeping can drop it once its history aged out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while used() > 0 {
        assert!(Instant::now() < deadline, "history was never trimmed: {} bytes", used());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.stop().await;
    assert!(!hub.housekeeping_running());
}
