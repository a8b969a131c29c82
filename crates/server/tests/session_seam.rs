//! Drives a session through its Sink/Stream seam (no network) to inject faults the memory
//! engine cannot produce: an offset gap and an engine reset must end the subscription with
//! `117 resubscribe`, never deliver around the hole.

use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use herald_protocol::ServerMessage;
use herald_server::engine::{Delivery, PublishInput};
use herald_server::frame::Encoded;
use herald_server::session::{Upgrade, run};
use herald_server::{Config, memory_hub};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// An in-memory socket: the test writes client frames into `inbound` and reads server frames
/// from `outbound`.
struct FakeSocket {
    inbound: mpsc::UnboundedReceiver<Result<Message, axum::Error>>,
    outbound: mpsc::UnboundedSender<Message>,
}

impl Stream for FakeSocket {
    type Item = Result<Message, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbound.poll_recv(cx)
    }
}

impl Sink<Message> for FakeSocket {
    type Error = axum::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.outbound.send(item).map_err(axum::Error::new)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

struct Client {
    tx: mpsc::UnboundedSender<Result<Message, axum::Error>>,
    rx: mpsc::UnboundedReceiver<Message>,
    pending: std::collections::VecDeque<ServerMessage>,
}

impl Client {
    fn send(&self, line: &str) {
        self.tx.send(Ok(Message::Text(line.to_string().into()))).unwrap();
    }

    async fn next(&mut self) -> ServerMessage {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return m;
            }
            let msg = tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
                .await
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg {
                for line in herald_protocol::split_frame(t.as_str()) {
                    self.pending.push_back(ServerMessage::parse(line).unwrap());
                }
            }
        }
    }
}

fn config() -> Config {
    Config::from_toml("[namespaces.default]\nsubscribe = \"anyone\"\nanonymous = true\n").unwrap()
}

#[tokio::test]
async fn gaps_and_resets_become_resubscribe() {
    let hub = memory_hub(config()).unwrap();
    let (tx, inbound) = mpsc::unbounded_channel();
    let (outbound, rx) = mpsc::unbounded_channel();
    let upgrade = Upgrade { token: None, origin_allowed: true, ip: "127.0.0.1".parse().unwrap() };
    tokio::spawn(run(hub.clone(), FakeSocket { inbound, outbound }, upgrade));
    let mut c = Client { tx, rx, pending: Default::default() };
    c.send(r#"{"id":1,"cmd":"connect"}"#);
    c.send(r#"{"id":2,"cmd":"subscribe","channel":"c"}"#);
    assert!(matches!(c.next().await, ServerMessage::Reply { id: 1, result: Ok(_) }));
    let epoch = match c.next().await {
        ServerMessage::Reply { id: 2, result: Ok(r) } => {
            let v: serde_json::Value = serde_json::from_str(r.get()).unwrap();
            v["epoch"].as_str().unwrap().to_string()
        }
        other => panic!("{other:?}"),
    };
    let publish = |n: u32| PublishInput {
        channel: "c".into(),
        kind: "t".into(),
        data: serde_json::value::RawValue::from_string(n.to_string()).unwrap(),
        key: None,
        op: None,
        meta: Default::default(),
    };
    hub.publish(publish(1)).await.unwrap();
    assert!(matches!(c.next().await, ServerMessage::Publication(p) if p.offset == 1));

    // A publication that skips offset 2 reaches the node: the subscriber must not get it.
    let json = format!(
        r#"{{"channel":"c","epoch":"{epoch}","offset":3,"id":"x","type":"t","data":3,"time":"t"}}"#
    );
    hub.fanout.deliver(Arc::new(Encoded::from_json("c", &epoch, 3, &json)));
    match c.next().await {
        ServerMessage::Unsubscribe { channel, code, resubscribe, .. } => {
            assert_eq!((channel.as_str(), code, resubscribe), ("c", 117, true));
        }
        other => panic!("expected resubscribe, got {other:?}"),
    }
    // The subscription is gone: a later publication does not arrive until resubscribed.
    hub.publish(publish(2)).await.unwrap();
    c.send(&format!(
        r#"{{"id":3,"cmd":"subscribe","channel":"c","since":{{"epoch":"{epoch}","offset":1}}}}"#
    ));
    match c.next().await {
        ServerMessage::Reply { id: 3, result: Ok(r) } => {
            let v: serde_json::Value = serde_json::from_str(r.get()).unwrap();
            assert_eq!(v["recovered"], true);
            assert_eq!(v["publications"][0]["offset"], 2);
        }
        other => panic!("{other:?}"),
    }
    // The engine loses track of the channel.
    hub.fanout.reset(Some("c"));
    assert!(matches!(
        c.next().await,
        ServerMessage::Unsubscribe { code: 117, resubscribe: true, .. }
    ));
}

/// Mutation fuzzing of the whole inbound path (frame split, command parser, handlers): thousands
/// of corrupted frames never crash the session, never go unanswered, and never stop it serving.
#[tokio::test]
async fn mutated_frames_never_crash_a_session() {
    let config = Config::from_toml(
        "[namespaces.default]\nsubscribe = \"anyone\"\nanonymous = true\nclient_publish = true\nkeyed = true\n[limits]\ncommands_per_second = 0\nmax_channels_per_connection = 100000\n",
    )
    .unwrap();
    let hub = memory_hub(config).unwrap();
    let (tx, inbound) = mpsc::unbounded_channel();
    let (outbound, rx) = mpsc::unbounded_channel();
    let upgrade = Upgrade { token: None, origin_allowed: true, ip: "127.0.0.1".parse().unwrap() };
    let session = tokio::spawn(run(hub.clone(), FakeSocket { inbound, outbound }, upgrade));
    let mut c = Client { tx, rx, pending: Default::default() };
    c.send(r#"{"id":1,"cmd":"connect"}"#);
    assert!(matches!(c.next().await, ServerMessage::Reply { id: 1, result: Ok(_) }));
    let seeds = [
        r#"{"id":2,"cmd":"subscribe","channel":"a:b","since":{"epoch":"e","offset":3},"snapshot":true}"#,
        r#"{"id":3,"cmd":"publish","channel":"x","data":{"k":[1,"\n",{"z":null}]},"key":"k","op":"merge"}"#,
        r#"{"id":4,"cmd":"history","channel":"x","limit":5,"before":3}"#,
        r#"{"id":5,"cmd":"state","channel":"x"}"#,
        r#"{"id":6,"cmd":"unsubscribe","channel":"a:b"}"#,
        r#"{"id":7,"cmd":"refresh","token":"abc"}"#,
    ];
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut expected = 0usize;
    for round in 0..3000 {
        let seed = seeds[round % seeds.len()].as_bytes();
        let mut m = seed.to_vec();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % m.len();
            match next() % 3 {
                0 => m[i] = next() as u8,
                1 => {
                    m.remove(i);
                }
                _ => m.insert(i, b"{}[]\":,\n\\"[(next() % 9) as usize]),
            }
        }
        let text = String::from_utf8_lossy(&m).into_owned();
        // Every message of the frame gets exactly one answer: a reply or an error push.
        expected += herald_protocol::split_frame(&text).count();
        c.send(&text);
    }
    // Drain and finally prove the session still answers.
    c.send(r#"{"id":999999,"cmd":"ping"}"#);
    let mut answered = 0;
    loop {
        match c.next().await {
            ServerMessage::Reply { id: 999999, result } => {
                assert!(result.is_ok());
                break;
            }
            ServerMessage::Reply { .. } | ServerMessage::Error(_) => answered += 1,
            ServerMessage::Disconnect { code, .. } => panic!("session closed with {code}"),
            _ => {}
        }
    }
    assert_eq!(answered, expected, "every mutated message was answered once");
    assert!(!session.is_finished(), "the session is alive");
}

/// Every idle connection carries its session future in its task; keep it small (docs/benchmarks.md,
/// idle memory). Large, rare steps (command handling, flushing, token checks) are boxed.
#[test]
fn session_future_stays_small() {
    let hub = memory_hub(config()).unwrap();
    let (_tx, inbound) = mpsc::unbounded_channel();
    let (outbound, _rx) = mpsc::unbounded_channel();
    let upgrade = Upgrade { token: None, origin_allowed: true, ip: "127.0.0.1".parse().unwrap() };
    let fut = run(hub, FakeSocket { inbound, outbound }, upgrade);
    let size = std::mem::size_of_val(&fut);
    assert!(size <= 768, "the session future grew to {size} bytes");
}
