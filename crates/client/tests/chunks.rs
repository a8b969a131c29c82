//! Large publications in parts (protocol §18) through the fault-injecting proxy: 5 MB payloads
//! between small ones arrive whole, in order, once, with progress, though the connection is cut
//! while they stream; and a preview subscription gets them cut, with their length. Needs
//! `cargo build --bins` first.

mod support;

use herald_client::{BackoffPolicy, Client, SubEvent, SubscribeOptions};
use std::time::Duration;
use support::hub::{Hub, good_token};
use support::proxy::{Cut, Proxy};
use support::{next_event, publish_cmd};

fn client(url: &str) -> Client {
    Client::builder()
        .url(url)
        .token(good_token())
        .backoff(BackoffPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            multiplier: 2.0,
            jitter: true,
            breaker_after: None,
        })
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// About 5 MB of text with quotes, backslashes and multi-byte characters, different per `seed`.
fn large(seed: usize) -> serde_json::Value {
    let unit = format!("{seed} \"quoted\" \\ é✓🦀 ");
    serde_json::json!({ "seed": seed, "text": unit.repeat(5_000_000 / unit.len()) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_mb_publications_arrive_whole_in_order_through_a_cut_mid_publication() {
    let hub = Hub::start();
    let proxy = Proxy::start(hub.addr).await;
    let client = client(&proxy.ws_url());
    let mut sub = client.subscribe("big:run", SubscribeOptions::default());
    let start = match next_event(&mut sub, Duration::from_secs(10)).await {
        SubEvent::Subscribed { position, .. } => position,
        other => panic!("expected Subscribed, got {other:?}"),
    };

    // small, large, small, large, small: published straight to the hub.
    let api = hub.api();
    let mut sent = Vec::new();
    for i in 0..5 {
        let data = if i % 2 == 1 { large(i) } else { serde_json::json!({ "small": i }) };
        let r = api.publish(&publish_cmd("big:run", data.clone())).await.expect("publish");
        sent.push((r.offset, data));
    }
    assert_eq!(sent.last().unwrap().0, start.offset + 5);

    let mut got = Vec::new();
    let mut progress = Vec::new();
    let mut cut = false;
    while got.len() < sent.len() {
        match next_event(&mut sub, Duration::from_secs(60)).await {
            SubEvent::Progress { offset, received, bytes } => {
                assert!(received < bytes && bytes > 5_000_000, "{received}/{bytes}");
                progress.push((offset, received));
                if !cut && received > bytes / 3 {
                    // Mid-publication: what was received is dropped, and it comes again.
                    proxy.cut_all(Cut::Rst);
                    cut = true;
                }
            }
            SubEvent::Publication(p) => got.push(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(cut, "the connection was cut in the middle of a publication");
    let offsets: Vec<u64> = got.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, sent.iter().map(|(o, _)| *o).collect::<Vec<_>>(), "in order, once");
    for (p, (_, data)) in got.iter().zip(&sent) {
        let value: serde_json::Value = serde_json::from_str(p.data.get()).unwrap();
        assert!(value == *data, "publication {} arrived intact", p.offset);
        assert_eq!(p.truncated, None);
    }
    // The cut may land after the client's connection task has already read the rest of that
    // publication (the application sees its events later), so a restart of its progress is not
    // asserted here; the TypeScript test, whose events come as the socket is read, asserts it.
    assert!(progress.iter().any(|(o, _)| *o == sent[3].0), "the second large one came in parts");
    assert!(proxy.accepted() >= 2, "the client reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_subscription_gets_large_publications_cut() {
    let hub = Hub::start();
    let client = client(&hub.ws_url());
    let mut sub = client.subscribe("big:preview", SubscribeOptions::default().preview(64));
    assert!(matches!(
        next_event(&mut sub, Duration::from_secs(10)).await,
        SubEvent::Subscribed { .. }
    ));
    let data = large(7);
    let full = serde_json::to_string(&data).unwrap();
    hub.api().publish(&publish_cmd("big:preview", data)).await.expect("publish");
    hub.api().publish(&publish_cmd("big:preview", serde_json::json!(1))).await.expect("publish");
    let SubEvent::Publication(p) = next_event(&mut sub, Duration::from_secs(20)).await else {
        panic!("expected the preview")
    };
    assert_eq!(p.truncated, Some(full.len() as u64));
    let text: String = serde_json::from_str(p.data.get()).unwrap();
    assert!(text.len() <= 64 && full.starts_with(&text), "{text:?}");
    let SubEvent::Publication(p) = next_event(&mut sub, Duration::from_secs(20)).await else {
        panic!("expected the small one")
    };
    assert_eq!((p.data.get(), p.truncated), ("1", None));
}
