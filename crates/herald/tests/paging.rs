//! Replies never outgrow the outbound queue (issue 10, item 9) and a slow consumer can resume
//! under the default settings (issue 11, item 1).
//!
//! A resume whose missed publications exceed a quarter of the queue gets the first of them in
//! its reply and the rest as pushes fed as the queue drains; a history page is shortened to fit.

mod support;

use herald_protocol::command::{Command, HistoryQuery};
use herald_protocol::{Position, ServerMessage};
use serde_json::{Value, json};
use support::*;

/// 1 MiB queue (reply budget 256 KiB); 200 publications of ~20 KB are ~4 MB to recover.
const CONFIG: &str = r#"
[limits]
outbound_queue_bytes = 1048576

[namespaces.feed]
history_size = 400
max_recover = 400
max_message_bytes = 30000
max_state_bytes = 262144
"#;

fn big(n: u64) -> Value {
    json!({"n": n, "pad": "x".repeat(20_000)})
}

#[tokio::test]
async fn a_resume_larger_than_the_queue_is_paged_in_order_with_live_publications_after() {
    let hub = Hub::start(CONFIG);
    let ch = "feed:big";
    let first = hub.publish(ch, big(1)).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    for n in 2..=200 {
        hub.publish(ch, big(n)).await;
    }
    let mut ws = hub.client("pager", &["feed:*"]).await;
    let since = Position { epoch: epoch.clone(), offset: 0 };
    let reply = ws
        .request(Command::Subscribe {
            channel: ch.into(),
            since: Some(since),
            snapshot: false,
            view: Default::default(),
            presence: Default::default(),
            preview: None,
        })
        .await
        .expect("the resume is answered, not closed");
    assert_eq!(reply["recovered"], true, "{}", reply["reason"]);
    let in_reply = reply["publications"].as_array().map_or(0, Vec::len) as u64;
    assert!(in_reply > 0 && in_reply < 200, "the reply is paged: {in_reply} in it");
    assert_eq!(reply["offset"].as_u64(), Some(in_reply), "offset names the reply's last one");
    // Live publications during the catch-up come after it, in order.
    let publisher = {
        let url = hub.http("/api/publish");
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in 201..=230 {
                let r = client
                    .post(&url)
                    .header("x-api-key", API_KEY)
                    .json(&json!({"channel": "feed:big", "data": big(n)}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        })
    };
    for expected in in_reply + 1..=230 {
        let p = ws.next_pub().await;
        assert_eq!(p.offset, expected, "every offset once, in order");
        assert_eq!(p.epoch, epoch);
    }
    publisher.await.unwrap();
    // The connection is healthy: a ping is answered and nothing else is queued.
    ws.request(Command::Ping { timestamp: None }).await.expect("still connected");
}

#[tokio::test]
async fn a_history_page_is_shortened_to_fit_and_paging_reads_everything() {
    let hub = Hub::start(CONFIG);
    let ch = "feed:hist";
    let first = hub.publish(ch, big(1)).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    for n in 2..=100 {
        hub.publish(ch, big(n)).await;
    }
    let mut ws = hub.client("reader", &["feed:*"]).await;
    let mut seen = Vec::new();
    let mut since = Some(Position { epoch, offset: 0 });
    for _ in 0..100 {
        let q = HistoryQuery {
            channel: ch.into(),
            limit: Some(100),
            since: since.clone(),
            before: None,
        };
        let page = ws.request(Command::History(q)).await.expect("history fits");
        let pubs = page["publications"].as_array().unwrap().clone();
        if seen.is_empty() {
            // The first page (from the earliest) is shortened below the limit.
            assert!(pubs.len() < 100, "{} publications in one page", pubs.len());
        }
        if pubs.is_empty() {
            break;
        }
        for p in &pubs {
            seen.push(p["offset"].as_u64().unwrap());
        }
        let last = pubs.last().unwrap();
        since = Some(Position {
            epoch: page["epoch"].as_str().unwrap().into(),
            offset: last["offset"].as_u64().unwrap(),
        });
        if last["offset"] == 100 {
            break;
        }
    }
    assert_eq!(seen, (1..=100).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_slow_consumer_under_default_settings_resumes_recovered() {
    // Default limits and namespace settings: only the namespace is declared.
    let hub = Hub::start("[namespaces.feed]\n");
    let ch = "feed:slow";
    let mut slow = hub.client("slow", &["feed:*"]).await;
    slow.auto_pong = false;
    let reply = slow.subscribe(ch).await;
    let epoch = reply["epoch"].as_str().unwrap().to_string();
    // Publish until the hub closes the reader that does not read (bounded).
    let client = reqwest::Client::new();
    let mut published = 0u64;
    let closed = 'outer: {
        for _ in 0..400 {
            for _ in 0..50 {
                published += 1;
                let r = client
                    .post(hub.http("/api/publish"))
                    .header("x-api-key", API_KEY)
                    .json(
                        &json!({"channel": ch, "data": {"n": published, "pad": "y".repeat(1000)}}),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
            let (_, metrics) = hub.api("GET", "/metrics", None).await;
            let text = metrics.as_str().unwrap_or_default().to_string();
            if text.lines().any(|l| l.starts_with("herald_slow_consumer_closes_total 1")) {
                break 'outer true;
            }
        }
        false
    };
    assert!(closed, "the reader was never closed as a slow consumer ({published} published)");
    // Read what reached the socket before the close.
    // Read what reached the socket before the close, then the disconnect push and close frame.
    let mut last = 0;
    let mut pushed = None;
    while let Some(m) = slow.next().await {
        match m {
            ServerMessage::Publication(p) => {
                assert_eq!(p.offset, last + 1);
                last = p.offset;
            }
            ServerMessage::Disconnect { code, .. } => pushed = Some(code),
            _ => {}
        }
    }
    assert_eq!(pushed, Some(4001), "the disconnect push after what was in flight");
    assert_eq!(slow.closed.as_ref().map(|c| c.0), Some(4001));
    // Reconnect and resume: recovered, every missed offset once, in order.
    let mut again = hub.client("slow", &["feed:*"]).await;
    let since = Position { epoch, offset: last };
    let reply = again
        .request(Command::Subscribe {
            channel: ch.into(),
            since: Some(since),
            snapshot: false,
            view: Default::default(),
            presence: Default::default(),
            preview: None,
        })
        .await
        .unwrap();
    assert_eq!(reply["recovered"], true, "missed {} of {published}: {reply}", published - last);
    let mut next = last + 1;
    for p in reply["publications"].as_array().cloned().unwrap_or_default() {
        assert_eq!(p["offset"].as_u64(), Some(next));
        next += 1;
    }
    while next <= published {
        assert_eq!(again.next_pub().await.offset, next);
        next += 1;
    }
}
