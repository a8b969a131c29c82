//! The hub mounted inside another axum application (seed 004), publishing from the app's own
//! code path, with a real socket.

use futures_util::{SinkExt, StreamExt};
use herald_protocol::ServerMessage;
use herald_server::engine::PublishInput;
use herald_server::{Config, memory_hub};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn nested_router_serves_sockets_and_in_process_publishes() {
    let mut config =
        Config::from_toml("[namespaces.session]\nsubscribe = \"anyone\"\nanonymous = true\n")
            .unwrap();
    config.api_keys = vec!["k".into()];
    let hub = memory_hub(config).unwrap();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "app ok" }))
        .nest("/live", herald_server::router(hub.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
            .await
    });
    assert_eq!(
        reqwest::get(format!("http://{addr}/healthz")).await.unwrap().text().await.unwrap(),
        "app ok"
    );
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/live/ws")).await.unwrap();
    ws.send(Message::text("{\"id\":1,\"cmd\":\"connect\"}\n{\"id\":2,\"cmd\":\"subscribe\",\"channel\":\"session:42\"}")).await.unwrap();
    let mut replies = 0;
    while replies < 2 {
        let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("socket ended") };
        replies += herald_protocol::split_frame(t.as_str()).count();
    }
    let input = PublishInput {
        channel: "session:42".into(),
        kind: "decision.recorded".into(),
        data: serde_json::value::RawValue::from_string("{\"choice\":\"ship\"}".into()).unwrap(),
        key: None,
        op: None,
        meta: Default::default(),
    };
    assert_eq!(hub.publish(input).await.unwrap().offset, 1);
    let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("socket ended") };
    match ServerMessage::parse(t.as_str()).unwrap() {
        ServerMessage::Publication(p) => assert_eq!(
            (p.kind.as_str(), p.data.get()),
            ("decision.recorded", "{\"choice\":\"ship\"}")
        ),
        other => panic!("{other:?}"),
    }
    let (status, _) = {
        let r = reqwest::Client::new()
            .get(format!("http://{addr}/live/api/info"))
            .header("x-api-key", "k")
            .send()
            .await
            .unwrap();
        (r.status(), ())
    };
    assert_eq!(status, 200);
}
