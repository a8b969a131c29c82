//! Large publications in parts and truncated previews (docs/protocol.md §18) against the real
//! binary: a v2 connection gets a publication larger than `chunk_bytes` as `chunk` pushes whose
//! texts join to exactly the v1 publication object, in frames of at most the writer's 16 KiB; a v1
//! connection gets it whole; a resume carries it in parts after the reply; `preview` cuts
//! `data` and says how long it was.

mod support;

use herald_protocol::chunk::{Assembled, Assembler};
use herald_protocol::command::Command;
use herald_protocol::{Position, Publication, ServerMessage};
use serde_json::{Value, json};
use support::*;

const CONFIG: &str = r#"
[limits]
max_api_body_bytes = 1048576
[namespaces.big]
client_publish = false
max_message_bytes = 524288
chunk_bytes = 4096
[namespaces.view]
keyed = true
filters = true
"#;

/// Connects asking for `version`.
async fn connect(hub: &Hub, version: Option<u32>) -> Ws {
    let mut ws = Ws::open(&hub.ws_url()).await;
    let token = Some(token("alice", &["big:*", "view:*"]));
    ws.request(Command::Connect { token, name: None, version }).await.expect("connect");
    ws
}

fn subscribe(channel: &str, since: Option<Position>, preview: Option<u32>) -> Command {
    Command::Subscribe {
        channel: channel.into(),
        since,
        snapshot: false,
        view: Default::default(),
        presence: Default::default(),
        preview,
    }
}

/// A payload of about `len` bytes of JSON with quotes, backslashes and non-ASCII text in it, so
/// that the parts' escaping and character boundaries are exercised.
fn payload(len: usize) -> Value {
    let unit = "line \"quoted\" \\ back é✓ 🦀\n";
    json!({ "text": unit.repeat(len / unit.len() + 1) })
}

/// The next publication of a v2 connection: compact, or assembled from `chunk` pushes (with
/// the number of parts it came in).
async fn next_v2(ws: &mut Ws, channel: &str, epoch: &str) -> (Publication, usize) {
    let mut parts = Assembler::default();
    let mut count = 0;
    loop {
        match ws.next().await {
            Some(ServerMessage::Compact(c)) => {
                assert!(!parts.is_assembling(), "no other publication inside one in parts");
                return (c.into_publication(channel, epoch), 0);
            }
            Some(ServerMessage::Chunk(c)) => {
                count += 1;
                match parts.push(c).expect("parts in order") {
                    Assembled::Progress { received, bytes, .. } => assert!(received < bytes),
                    Assembled::Complete(p) => return (*p, count),
                }
            }
            other => panic!("expected a publication, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_large_publication_comes_in_parts_on_v2_and_whole_on_v1() {
    let hub = Hub::start(CONFIG);
    let mut v1 = connect(&hub, None).await;
    let mut v2 = connect(&hub, Some(2)).await;
    v1.subscribe("big:1").await;
    let reply = v2.request(subscribe("big:1", None, None)).await.unwrap();
    let epoch = reply["epoch"].as_str().unwrap().to_string();

    let small = hub.publish("big:1", json!({"n": 1})).await;
    let large = hub.publish("big:1", payload(100_000)).await;
    let after = hub.publish("big:1", json!({"n": 3})).await;
    let offsets: Vec<u64> =
        [&small, &large, &after].iter().map(|r| r["offset"].as_u64().unwrap()).collect();

    let whole: Vec<Publication> =
        [v1.next_pub().await, v1.next_pub().await, v1.next_pub().await].into_iter().collect();
    assert_eq!(whole.iter().map(|p| p.offset).collect::<Vec<_>>(), offsets);
    assert!(v1.largest_frame > 100_000, "v1 gets the publication in one frame");

    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_v2(&mut v2, "big:1", &epoch).await);
    }
    assert_eq!(got.iter().map(|(p, _)| p.offset).collect::<Vec<_>>(), offsets);
    assert_eq!((got[0].1, got[2].1), (0, 0), "small publications are not cut");
    assert!(got[1].1 >= 100_000 / 4096, "the large one came in {} parts", got[1].1);
    for ((p, _), v1p) in got.iter().zip(&whole) {
        assert_eq!(serde_json::to_string(p).unwrap(), serde_json::to_string(v1p).unwrap());
    }
    // Parts are batched into frames of at most the writer's 16 KiB (a part of 4 KiB of JSON
    // text is at most twice that escaped, plus its header, so always fits).
    assert!(v2.largest_frame <= 16 * 1024, "largest v2 frame {}", v2.largest_frame);
}

#[tokio::test]
async fn a_resume_sends_the_large_publication_in_parts_after_the_reply() {
    let hub = Hub::start(CONFIG);
    let first = hub.publish("big:2", json!({"n": 0})).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    let since = Position { epoch: epoch.clone(), offset: first["offset"].as_u64().unwrap() };
    let large = hub.publish("big:2", payload(60_000)).await;
    let small = hub.publish("big:2", json!({"n": 2})).await;

    let mut v2 = connect(&hub, Some(2)).await;
    let reply = v2.request(subscribe("big:2", Some(since), None)).await.unwrap();
    assert_eq!(reply["recovered"], json!(true));
    let inline = reply["publications"].as_array().map_or(0, Vec::len);
    assert_eq!(inline, 0, "the reply carries no publication that goes in parts: {inline}");
    // The reply's offset is before the large one; both follow, in order.
    let (p1, parts) = next_v2(&mut v2, "big:2", &epoch).await;
    assert_eq!(p1.offset, large["offset"].as_u64().unwrap());
    assert!(parts > 1);
    let (p2, _) = next_v2(&mut v2, "big:2", &epoch).await;
    assert_eq!(p2.offset, small["offset"].as_u64().unwrap());
    assert!(v2.largest_frame <= 16 * 1024, "largest v2 frame {}", v2.largest_frame);
}

#[tokio::test]
async fn a_preview_cuts_data_and_says_how_long_it_was() {
    let hub = Hub::start(CONFIG);
    for version in [None, Some(2)] {
        let channel = format!("big:preview-{}", version.unwrap_or(1));
        let mut ws = connect(&hub, version).await;
        ws.request(subscribe(&channel, None, Some(100))).await.unwrap();
        let data = payload(20_000);
        let full = serde_json::to_string(&data).unwrap();
        let large = hub.publish(&channel, data).await;
        hub.publish(&channel, json!({"n": 2})).await;
        let preview = match ws.next().await {
            Some(ServerMessage::Publication(p)) => p,
            other => panic!("expected the preview as a pub push, got {other:?}"),
        };
        assert_eq!(preview.offset, large["offset"].as_u64().unwrap());
        assert_eq!(preview.truncated, Some(full.len() as u64));
        let text: String = serde_json::from_str(preview.data.get()).unwrap();
        assert!(text.len() <= 100 && full.starts_with(&text), "{text:?}");
        // A small one is whole (compact on v2).
        let next = match ws.next().await {
            Some(ServerMessage::Publication(p)) => p,
            Some(ServerMessage::Compact(c)) => c.into_publication(&channel, &preview.epoch),
            other => panic!("expected a publication, got {other:?}"),
        };
        assert_eq!(next.truncated, None);
        assert_eq!(next.data.get(), r#"{"n":2}"#);
    }
}

#[tokio::test]
async fn a_bad_preview_is_refused() {
    let hub = Hub::start(CONFIG);
    let mut ws = connect(&hub, Some(2)).await;
    ws.send_raw(r#"{"id":7,"cmd":"subscribe","channel":"big:x","preview":0}"#).await;
    let e = ws.reply(7).await.unwrap_err();
    assert_eq!(code(&e), 107, "{e:?}");
    ws.send_raw(r#"{"id":8,"cmd":"subscribe","channel":"big:x","preview":"big"}"#).await;
    assert_eq!(code(&ws.reply(8).await.unwrap_err()), 107);
    ws.send_raw(r#"{"id":9,"cmd":"subscribe","channel":"view:x","filter":"a == 1","preview":10}"#)
        .await;
    let e = ws.reply(9).await.unwrap_err();
    assert_eq!(code(&e), 107, "{e:?}");
    assert!(e.message.contains("preview"), "{}", e.message);
}
