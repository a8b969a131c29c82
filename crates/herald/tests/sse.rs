//! The Server-Sent Events fallback: live publications, and resume with `Last-Event-ID`.

mod support;

use serde_json::{Value, json};
use support::*;

const CONFIG: &str = "[namespaces.default]\n[namespaces.feed]\n";

/// One SSE event.
#[derive(Debug, Default)]
struct Event {
    event: String,
    id: String,
    data: String,
}

/// Reads an SSE response event by event.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(hub: &Hub, channel: &str, last_event_id: Option<&str>) -> Events {
        let mut req = reqwest::Client::new()
            .get(hub.http(&format!("/sse/{channel}")))
            .header("authorization", format!("Bearer {}", token("sse", &["feed:*"])));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Events { resp, buf: String::new() }
    }

    async fn next(&mut self) -> Event {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut e = Event::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        e.event = v.into();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        e.id = v.into();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        e.data.push_str(v);
                    }
                }
                if !e.event.is_empty() {
                    return e;
                }
                continue; // keep-alive comment
            }
            let chunk =
                tokio::time::timeout(WAIT, self.resp.chunk()).await.expect("an event in time");
            let chunk = chunk.unwrap().expect("stream still open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn sse_streams_and_resumes_with_last_event_id() {
    let hub = Hub::start(CONFIG);
    let mut events = Events::open(&hub, "feed:1", None).await;
    let subscribed = events.next().await;
    assert_eq!(subscribed.event, "subscribed");
    assert!(subscribed.id.ends_with(":0"), "{subscribed:?}");
    hub.publish("feed:1", json!({"n": 1})).await;
    let e = events.next().await;
    assert_eq!(e.event, "pub");
    let p: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!((p["offset"].as_u64(), &p["data"]), (Some(1), &json!({"n": 1})));
    assert_eq!(e.id, format!("{}:1", p["epoch"].as_str().unwrap()));
    drop(events);
    for n in 2..=4 {
        hub.publish("feed:1", json!({"n": n})).await;
    }
    // What an EventSource does on reconnect: send the last id it saw.
    let mut events = Events::open(&hub, "feed:1", Some(&e.id)).await;
    let resumed = events.next().await;
    assert_eq!(resumed.event, "subscribed");
    let r: Value = serde_json::from_str(&resumed.data).unwrap();
    assert_eq!(r["recovered"], true);
    let offsets: Vec<u64> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![2, 3, 4]);
    assert!(resumed.id.ends_with(":4"));
    hub.publish("feed:1", json!({"n": 5})).await;
    assert!(events.next().await.id.ends_with(":5"));
    // A forbidden channel ends the stream with an error event carrying the code.
    let mut denied = Events::open(&hub, "other:1", None).await;
    let e = denied.next().await;
    assert_eq!(e.event, "error");
    assert_eq!(serde_json::from_str::<Value>(&e.data).unwrap()["code"], 102);
}
