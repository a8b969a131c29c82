//! permessage-deflate (RFC 7692) against the real binary, with yawc as the compressing client:
//! negotiated when the hub allows it and the client offers it; a 1 MB repetitive payload and
//! 10,000 small publications arrive intact and in order in far fewer bytes than they hold; a
//! frame that inflates past `limits.max_frame_bytes` closes the connection with 1009; a client
//! that does not offer compression is served as before.

mod support;

use futures_util::{SinkExt, StreamExt};
use herald_protocol::command::{Command, Request};
use herald_protocol::{ServerMessage, split_frame};
use serde_json::{Value, json};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use yawc::frame::{Frame, OpCode};
use yawc::{Options, WebSocket};

const CONFIG: &str = r#"
[compression]
enabled = true
threshold_bytes = 256

[limits]
outbound_queue_messages = 20000
outbound_queue_bytes = 33554432
max_frame_bytes = 262144
max_api_body_bytes = 2097152

[namespaces.room]
max_message_bytes = 1100000
history_size = 20000
max_recover = 20000
"#;

/// A TCP stream that counts the bytes read from it (what the hub sent, compressed or not) and
/// written to it.
struct Counting {
    inner: TcpStream,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A compressing client (or not, `compress: false`), connected and past `connect`.
async fn client(
    hub: &Hub,
    compress: bool,
) -> (WebSocket<Counting>, Arc<AtomicU64>, Arc<AtomicU64>) {
    let url: url::Url = hub.ws_url().parse().unwrap();
    let tcp = TcpStream::connect((url.host_str().unwrap(), url.port().unwrap())).await.unwrap();
    let read = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let io = Counting { inner: tcp, read: read.clone(), written: written.clone() };
    let options = if compress {
        Options::default().with_low_latency_compression().with_limits(8 << 20, 8 << 20)
    } else {
        Options::default().without_compression().with_limits(8 << 20, 8 << 20)
    };
    let mut ws = WebSocket::handshake(url, io, options).await.expect("handshake");
    let token = Some(token("alice", &["room:*"]));
    send(&mut ws, Command::Connect { token, name: None, version: None }, 1).await;
    let reply = next_message(&mut ws).await;
    assert!(matches!(reply, ServerMessage::Reply { id: 1, result: Ok(_) }), "{reply:?}");
    (ws, read, written)
}

async fn send(ws: &mut WebSocket<Counting>, command: Command, id: u64) {
    ws.send(Frame::text(Request { id: Some(id), command }.to_json())).await.expect("send");
}

/// Messages of the next text frames, one at a time.
async fn next_message(ws: &mut WebSocket<Counting>) -> ServerMessage {
    next_messages(ws).await.remove(0)
}

async fn next_messages(ws: &mut WebSocket<Counting>) -> Vec<ServerMessage> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
            .expect("the connection is open");
        if frame.opcode() != OpCode::Text {
            continue;
        }
        let messages: Vec<ServerMessage> = split_frame(frame.as_str())
            .map(|l| ServerMessage::parse(l).unwrap())
            .filter(|m| !matches!(m, ServerMessage::Ping))
            .collect();
        if !messages.is_empty() {
            return messages;
        }
    }
}

fn subscribe(channel: &str) -> Command {
    Command::Subscribe {
        channel: channel.into(),
        since: None,
        snapshot: false,
        view: Default::default(),
        presence: Default::default(),
        preview: None,
    }
}

#[tokio::test]
async fn a_large_payload_and_ten_thousand_small_ones_arrive_intact_compressed() {
    let hub = Hub::start(CONFIG);
    let (mut ws, read, _) = client(&hub, true).await;
    send(&mut ws, subscribe("room:z"), 2).await;
    assert!(matches!(next_message(&mut ws).await, ServerMessage::Reply { id: 2, result: Ok(_) }));
    let before = read.load(Ordering::Relaxed);

    // 1 MB of repetitive text, then 10,000 small publications in batches of 500.
    let large = json!({ "text": "herald ".repeat(150_000) });
    let first = hub.publish("room:z", large.clone()).await["offset"].as_u64().unwrap();
    let mut payload_bytes = serde_json::to_string(&large).unwrap().len() as u64;
    for batch in 0..20 {
        let items: Vec<Value> = (0..500)
            .map(|i| json!({ "channel": "room:z", "data": { "i": batch * 500 + i, "kind": "small" } }))
            .collect();
        payload_bytes += items.iter().map(|i| i["data"].to_string().len() as u64).sum::<u64>();
        let (status, body) = hub.api("POST", "/api/publish/batch", Some(json!(items))).await;
        assert_eq!(status, 200, "{body}");
    }

    let mut next = first;
    let mut i = 0u64;
    while next <= first + 10_000 {
        for m in next_messages(&mut ws).await {
            let ServerMessage::Publication(p) = m else { panic!("unexpected {m:?}") };
            assert_eq!(p.offset, next, "in order, once");
            let data: Value = serde_json::from_str(p.data.get()).unwrap();
            if next == first {
                assert!(data == large, "the large payload is intact");
            } else {
                assert_eq!(data, json!({ "i": i, "kind": "small" }));
                i += 1;
            }
            next += 1;
        }
    }
    let wire = read.load(Ordering::Relaxed) - before;
    // Version 1 pushes carry ~120 bytes of envelope each besides the payloads: compressed, the
    // whole stream takes a fraction of the payload bytes alone.
    assert!(wire * 4 < payload_bytes, "{wire} bytes on the wire for {payload_bytes} of payload");
}

#[tokio::test]
async fn a_frame_that_inflates_past_the_limit_closes_with_1009() {
    let hub = Hub::start(CONFIG);
    let (mut ws, _, written) = client(&hub, true).await;
    // 4 MiB of spaces inflate from a few KiB: far past max_frame_bytes (256 KiB).
    let before = written.load(Ordering::Relaxed);
    let bomb = format!(r#"{{"id":2,"cmd":"ping","timestamp":"{}"}}"#, " ".repeat(4 << 20));
    ws.send(Frame::text(bomb)).await.expect("send");
    let sent = written.load(Ordering::Relaxed) - before;
    assert!(sent < 64 * 1024, "the bomb went compressed ({sent} bytes), under the frame limit");
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed") {
            Some(f) if f.opcode() == OpCode::Close => break f,
            Some(_) => continue,
            None => panic!("the connection ended without a close frame"),
        }
    };
    assert_eq!(close.close_code().map(u16::from), Some(1009));
    // The hub is fine: another client works.
    let (mut other, _, _) = client(&hub, true).await;
    send(&mut other, subscribe("room:after"), 2).await;
    assert!(matches!(
        next_message(&mut other).await,
        ServerMessage::Reply { id: 2, result: Ok(_) }
    ));
}

#[tokio::test]
async fn a_client_that_does_not_offer_compression_is_served_uncompressed() {
    let hub = Hub::start(CONFIG);
    let (mut ws, read, _) = client(&hub, false).await;
    send(&mut ws, subscribe("room:plain"), 2).await;
    assert!(matches!(next_message(&mut ws).await, ServerMessage::Reply { id: 2, result: Ok(_) }));
    let before = read.load(Ordering::Relaxed);
    let large = json!({ "text": "herald ".repeat(100_000) });
    hub.publish("room:plain", large.clone()).await;
    let ServerMessage::Publication(p) = next_message(&mut ws).await else { panic!() };
    assert!(serde_json::from_str::<Value>(p.data.get()).unwrap() == large);
    assert!(read.load(Ordering::Relaxed) - before > 700_000, "sent as it is");
}
