//! The SSE fallback (protocol §13, multiplexed SSE) against the real hub behind a proxy that
//! refuses WebSocket upgrades: the client falls back to SSE, delivers 5,000 publications exactly
//! once and in order, and moves back to WebSocket once upgrades are allowed again, without loss
//! or duplicate while publications keep coming. Needs `cargo build --bins` first.

mod support;

use herald_client::{
    BackoffPolicy, Client, ConnectionState, OfflineReason, ProbePolicy, SubEvent, SubscribeOptions,
    Subscription, Transport,
};
use herald_testkit::HeraldProcess;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::hub::{API_KEY, Hub, TEST_CONFIG, TOKEN_SECRET, good_token};
use support::proxy::Proxy;
use support::{next_event, wait_state};
use tokio::sync::broadcast;

/// The test hub with its default heartbeat (not [`Hub::start`]'s 1 s pong timeout), so that an
/// SSE session the client failed to close would stay open for the length of this test.
fn start_hub() -> HeraldProcess {
    let args = ["--api-key", API_KEY, "--token-secret", TOKEN_SECRET];
    HeraldProcess::start(&herald_testkit::herald_bin(), TEST_CONFIG, &args)
}

fn fast_policy() -> BackoffPolicy {
    BackoffPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        jitter: true,
        breaker_after: None,
    }
}

fn client(url: &str) -> (Client, broadcast::Receiver<ConnectionState>) {
    Client::builder()
        .url(url)
        .token(good_token())
        .backoff(fast_policy())
        .sse_probe(ProbePolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_millis(800),
        })
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(20))
        .build_with_states()
        .unwrap()
}

/// Publishes `{"n": from..from+count}` to `channel` straight to the hub, by HTTP batches of
/// 1,000 (the hub's `max_batch_items`), each item checked.
async fn publish(hub_url: &str, channel: &str, from: u64, count: u64) {
    let http = reqwest::Client::new();
    let mut n = from;
    while n < from + count {
        let end = (n + 1000).min(from + count);
        let items: Vec<_> = (n..end)
            .map(|k| serde_json::json!({ "channel": channel, "data": { "n": k } }))
            .collect();
        let response = http
            .post(format!("{hub_url}/api/publish/batch"))
            .header("x-api-key", API_KEY)
            .json(&items)
            .send()
            .await
            .expect("batch publish");
        assert!(response.status().is_success(), "batch publish: {}", response.status());
        let body: serde_json::Value = response.json().await.unwrap();
        let results = body["results"].as_array().expect("results");
        assert_eq!(results.len() as u64, end - n);
        assert!(results.iter().all(|r| r.get("error").is_none()), "an item failed: {body}");
        n = end;
    }
}

/// Waits until the client's transport is `want`.
async fn wait_transport(client: &Client, want: Option<Transport>, timeout: Duration) {
    let mut rx = client.watch_transport();
    let wait = rx.wait_for(|t| *t == want);
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(_)) => {}
        _ => panic!("transport not {want:?} within {timeout:?} (is {:?})", client.transport()),
    }
}

/// Reads publications until offset `last`, checking each is the next offset with `n` = offset
/// (the channel's first publication is `n` = 1 at offset 1).
async fn expect_through(sub: &mut Subscription, expected: &mut u64, last: u64) {
    while *expected <= last {
        match next_event(sub, Duration::from_secs(30)).await {
            SubEvent::Publication(p) => {
                let value: serde_json::Value = serde_json::from_str(p.data.get()).unwrap();
                assert_eq!(
                    (p.offset, value["n"].as_u64()),
                    (*expected, Some(*expected)),
                    "in order, exactly once"
                );
                *expected += 1;
            }
            other => panic!("unexpected {other:?} at offset {expected}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_fall_back_to_sse_and_move_back_to_websocket_without_loss() {
    let hub = start_hub();
    let proxy = Proxy::start(hub.addr).await;
    proxy.refuse_upgrades(true);
    let (client, mut states) = client(&proxy.ws_url());
    let mut sub = client.subscribe("fallback", SubscribeOptions::default());
    match next_event(&mut sub, Duration::from_secs(10)).await {
        SubEvent::Subscribed { position, .. } => assert_eq!(position.offset, 0),
        other => panic!("expected Subscribed, got {other:?}"),
    }
    wait_state(&mut states, Duration::from_secs(5), |s| *s == ConnectionState::Connected).await;
    assert_eq!(client.transport(), Some(Transport::Sse));
    assert!(proxy.refused() >= 1, "the WebSocket upgrade was refused");

    let started = std::time::Instant::now();
    publish(&hub.http_url(), "fallback", 1, 5000).await;
    let mut expected = 1;
    expect_through(&mut sub, &mut expected, 5000).await;
    eprintln!("5,000 over SSE in {:?} (published and delivered)", started.elapsed());
    assert_eq!(client.transport(), Some(Transport::Sse), "still on SSE");
    // The background probes keep trying, and keep being refused.
    let refused = proxy.refused();
    proxy.wait_refused_above(refused, Duration::from_secs(5)).await;
    assert_eq!(client.transport(), Some(Transport::Sse), "a refused probe changes nothing");

    // Upgrades allowed again while publications keep coming: the client moves back.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(5000));
    let publisher = {
        let (stop, published, url) = (stop.clone(), published.clone(), hub.http_url());
        tokio::spawn(async move {
            // At least 1,000 more, and until the move back was seen.
            while !stop.load(Ordering::SeqCst) || published.load(Ordering::SeqCst) < 6000 {
                let from = published.load(Ordering::SeqCst) + 1;
                publish(&url, "fallback", from, 100).await;
                published.store(from + 99, Ordering::SeqCst);
            }
        })
    };
    // Read while the publisher runs (the first 1,000 it is sure to publish; the rest once its
    // count is known), so that delivery is checked across the move.
    let reader = tokio::spawn(async move {
        let mut expected = 5001;
        expect_through(&mut sub, &mut expected, 6000).await;
        (sub, expected)
    });
    proxy.refuse_upgrades(false);
    wait_transport(&client, Some(Transport::WebSocket), Duration::from_secs(20)).await;
    let moved_at = published.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    publisher.await.unwrap();
    let total = published.load(Ordering::SeqCst);
    let (mut sub, mut expected) = reader.await.unwrap();
    expect_through(&mut sub, &mut expected, total).await;
    client.wait_connected(Duration::from_secs(5)).await.expect("connected");
    assert_eq!(client.transport(), Some(Transport::WebSocket));
    assert!(total > moved_at, "publications went on after the move back ({moved_at} → {total})");
    eprintln!("moved back to WebSocket at about offset {moved_at}; {total} publications in all");
    // Nothing stray after the last one: the next delivery is the next publication.
    publish(&hub.http_url(), "fallback", total + 1, 1).await;
    expect_through(&mut sub, &mut expected, total + 1).await;
    client.publish("other", &1).await.expect("requests flow over WebSocket");
    // The SSE session was closed, not left behind: the hub counts the WebSocket alone.
    wait_connections(&hub, 1).await;
}

/// Waits until the hub reports `n` connections (`/api/info`). The hub ends an SSE session when
/// it sees its stream closed, which nothing outside can wait on: checked every 20 ms for 5 s.
async fn wait_connections(hub: &HeraldProcess, n: u64) {
    let api = herald_client::ApiClient::new(&hub.http_url(), Some(API_KEY.into())).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let info = api.info().await.expect("info");
        if info["connections"].as_u64() == Some(n) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "connections stay {}", info["connections"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_only_does_not_fall_back() {
    let hub = Hub::start();
    let proxy = Proxy::start(hub.addr).await;
    proxy.refuse_upgrades(true);
    let (client, mut states) = Client::builder()
        .url(proxy.ws_url())
        .token(good_token())
        .transports([Transport::WebSocket])
        .backoff(BackoffPolicy { breaker_after: Some(2), ..fast_policy() })
        .build_with_states()
        .unwrap();
    let state = wait_state(&mut states, Duration::from_secs(10), |s| {
        matches!(s, ConnectionState::Offline { .. })
    })
    .await;
    assert_eq!(
        state,
        ConnectionState::Offline { reason: OfflineReason::CircuitOpen { attempts: 2 } }
    );
    assert_eq!(client.transport(), None);
    assert_eq!(proxy.refused(), 2, "one refused upgrade per attempt");
    assert_eq!(proxy.accepted(), 2, "and no other connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_only_carries_requests_and_ends_on_the_hubs_disconnect() {
    let hub = Hub::start();
    let (client, mut states) = Client::builder()
        .url(hub.ws_url())
        .token(good_token())
        .transports([Transport::Sse])
        .backoff(fast_policy())
        .build_with_states()
        .unwrap();
    let mut sub = client.subscribe("own", SubscribeOptions::default());
    assert!(matches!(
        next_event(&mut sub, Duration::from_secs(10)).await,
        SubEvent::Subscribed { .. }
    ));
    assert_eq!(client.transport(), Some(Transport::Sse));
    // A command POSTed and its reply streamed back, then the publication itself.
    let r = client.publish("own", &serde_json::json!({ "x": "é✓" })).await.expect("publish");
    match next_event(&mut sub, Duration::from_secs(10)).await {
        SubEvent::Publication(p) => {
            assert_eq!((p.offset, p.data.get()), (r.offset, r#"{"x":"é✓"}"#));
        }
        other => panic!("expected the publication, got {other:?}"),
    }
    // The hub ends the session (kicked, 4503): its disconnect push arrives over SSE.
    hub.api().disconnect("tester").await.expect("disconnect");
    let state = wait_state(&mut states, Duration::from_secs(10), |s| {
        matches!(s, ConnectionState::Offline { .. })
    })
    .await;
    assert!(
        matches!(
            state,
            ConnectionState::Offline { reason: OfflineReason::Closed { code: 4503, .. } }
        ),
        "{state:?}"
    );
    assert_eq!(client.transport(), None);
}
