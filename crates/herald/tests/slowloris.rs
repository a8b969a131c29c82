//! Half-open HTTP requests (slowloris) cannot hold the node's file descriptors: connections are
//! bounded per source IP and in total, a request head must arrive within the header-read timeout,
//! and an honest client keeps being served throughout (issue 10, item 1).

mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const CONFIG: &str = r#"
[timeouts]
http_header_read = "1s"

[limits]
max_http_connections = 40
max_http_connections_per_ip = 20

[namespaces.default]
"#;

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all local).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// A connection that sent half a request head and nothing more.
async fn half_open(from: &str, to: SocketAddr) -> TcpStream {
    let mut s = connect_from(from, to).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    s
}

/// Everything the server sends until it closes (bounded by `WAIT`).
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    match read {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => panic!("server did not close within {WAIT:?}"),
    }
}

/// A full GET from `from`: status and body.
async fn get(from: &str, to: SocketAddr, path: &str) -> (String, String) {
    let mut s = connect_from(from, to).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let text = read_to_close(&mut s).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// Publishes to `default:room` over the HTTP API from the loopback address `from`.
async fn publish_from(from: &str, hub: &Hub, n: u64) {
    let body = json!({"channel": "default:room", "data": {"n": n}}).to_string();
    let mut s = connect_from(from, hub.addr).await;
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let text = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

fn error_code(body: &str) -> u64 {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    v["error"]["code"].as_u64().expect("the documented error object")
}

#[tokio::test]
async fn half_open_requests_are_bounded_and_timed_out_while_honest_clients_are_served() {
    let hub = Hub::start(CONFIG);
    let addr = hub.addr;
    // An established WebSocket (from 127.0.0.1) is not a plain HTTP connection: not counted.
    let mut ws = hub.client("honest", &["default:*"]).await;
    ws.subscribe("default:room").await;
    // Fill the per-IP bound of 127.0.0.1 with half-open requests.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(half_open("127.0.0.1", addr).await);
    }
    // Beyond it: a 429 with the documented error object, at once.
    for _ in 0..5 {
        let mut s = half_open("127.0.0.1", addr).await;
        let text = read_to_close(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 429"), "{text}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(error_code(body), 110);
    }
    // Another address is still served, and the WebSocket keeps flowing.
    let (status, _) = get("127.0.0.2", addr, "/health").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    publish_from("127.0.0.2", &hub, 1).await;
    assert_eq!(ws.next_pub().await.offset, 1);
    // Fill the total bound from a third address: the node answers 503 past it.
    for _ in 0..20 {
        held.push(half_open("127.0.0.3", addr).await);
    }
    let mut s = half_open("127.0.0.4", addr).await;
    let text = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert_eq!(error_code(text.split_once("\r\n\r\n").unwrap().1), 113);
    // Every half-open request is closed by the header-read timeout (1 s).
    for mut s in held {
        read_to_close(&mut s).await;
    }
    // And the address that was refused is served again; the WebSocket kept flowing throughout.
    let (status, body) = get("127.0.0.1", addr, "/health").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status} {body}");
    publish_from("127.0.0.1", &hub, 2).await;
    assert_eq!(ws.next_pub().await.offset, 2);
}

#[tokio::test]
async fn a_kept_alive_connection_idle_past_the_header_timeout_is_closed() {
    let hub = Hub::start(CONFIG);
    let mut s = connect_from("127.0.0.1", hub.addr).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Idle: the server closes it (the next request head did not arrive within 1 s).
    let started = std::time::Instant::now();
    read_to_close(&mut s).await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_request_head_over_64_kib_is_refused_and_the_node_serves_on() {
    let hub = Hub::start(CONFIG);
    let mut s = connect_from("127.0.0.1", hub.addr).await;
    let big = "x".repeat(100 * 1024);
    let head = format!("GET /health HTTP/1.1\r\nHost: x\r\nx-big: {big}\r\n\r\n");
    // The server may answer and close before it has read everything: a failed write is fine.
    let _ = s.write_all(head.as_bytes()).await;
    let text = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text:.200}");
    // A head within the bound is served.
    let mut s = connect_from("127.0.0.1", hub.addr).await;
    let fits = "x".repeat(32 * 1024);
    let head =
        format!("GET /health HTTP/1.1\r\nHost: x\r\nx-big: {fits}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let text = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.200}");
}
