//! Fault-injection tests against the real hub: connection cuts, blackholes, restarts, a stopped
//! hub, bad tokens. Needs `cargo build --bins` first (the hub binary is not built by the tests).

mod support;

use herald_client::{
    BackoffPolicy, Client, ConnectionState, NotRecovered, OfflineReason, SubEvent, SubscribeOptions,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::hub::{Hub, good_token, token};
use support::proxy::{Cut, Proxy};
use support::{next_event, publish_cmd, wait_state};
use tokio::time::Instant;

fn fast_policy() -> BackoffPolicy {
    BackoffPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        jitter: true,
        breaker_after: None,
    }
}

fn fast_client(url: &str) -> Client {
    Client::builder()
        .url(url)
        .token(good_token())
        .backoff(fast_policy())
        .liveness_margin(Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn subscribed(sub: &mut herald_client::Subscription) -> herald_client::Position {
    match next_event(sub, Duration::from_secs(10)).await {
        SubEvent::Subscribed { position, .. } => position,
        other => panic!("expected Subscribed, got {other:?}"),
    }
}

/// Receives publications until `last`, asserting each offset is exactly the next one.
async fn receive_through(sub: &mut herald_client::Subscription, mut expected: u64, last: u64) {
    while expected <= last {
        match next_event(sub, Duration::from_secs(10)).await {
            SubEvent::Publication(p) => {
                assert_eq!(p.offset, expected, "offsets arrive in order, once");
                expected += 1;
            }
            other => panic!("expected publication {expected}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_publications_through_cuts_arrive_once_in_order() {
    const N: usize = 10_000;
    let hub = Hub::start();
    let proxy = Arc::new(Proxy::start(hub.addr).await);
    let client = fast_client(&proxy.ws_url());
    let mut sub = client.subscribe("flood", SubscribeOptions::default());
    let start = subscribed(&mut sub).await;

    let next = Arc::new(AtomicUsize::new(0));
    let mut publishers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (api, next) = (hub.api(), next.clone());
        publishers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= N {
                    break;
                }
                api.publish(&publish_cmd("flood", serde_json::json!({ "i": i })))
                    .await
                    .expect("publish");
            }
        });
    }
    let done = Arc::new(AtomicBool::new(false));
    let cutter = {
        let (proxy, done) = (proxy.clone(), done.clone());
        tokio::spawn(async move {
            let mut cuts = 0u32;
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            tick.tick().await;
            while !done.load(Ordering::SeqCst) && cuts < 2_000 {
                tick.tick().await;
                proxy.cut_all(if cuts.is_multiple_of(2) { Cut::Rst } else { Cut::Fin });
                cuts += 1;
            }
            cuts
        })
    };

    let deadline = Instant::now() + Duration::from_secs(240);
    let mut seen = vec![false; N];
    let mut expected = start.offset + 1;
    while expected <= start.offset + N as u64 {
        let event = tokio::time::timeout_at(deadline, sub.next_event())
            .await
            .unwrap_or_else(|_| panic!("stalled at offset {expected}"))
            .expect("subscription ended");
        match event {
            SubEvent::Publication(p) => {
                assert_eq!(
                    (p.epoch.as_str(), p.offset),
                    (start.epoch.as_str(), expected),
                    "in order, once"
                );
                let value: serde_json::Value = serde_json::from_str(p.data.get()).unwrap();
                let i = value["i"].as_u64().unwrap() as usize;
                assert!(!seen[i], "payload {i} delivered twice");
                seen[i] = true;
                expected += 1;
            }
            other => panic!("unexpected {other:?} at offset {expected}"),
        }
    }
    done.store(true, Ordering::SeqCst);
    while let Some(r) = publishers.join_next().await {
        r.unwrap();
    }
    let cuts = cutter.await.unwrap();
    assert!(seen.iter().all(|s| *s));
    assert!(cuts >= 3, "the test must actually cut connections ({cuts})");
    assert!(proxy.accepted() as u32 > cuts / 2, "the client reconnected after the cuts");
    eprintln!("{N} publications, {cuts} cuts, {} connections", proxy.accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_is_detected_and_resumed_without_loss() {
    let hub = Hub::start();
    let api = hub.api();
    let proxy = Proxy::start(hub.addr).await;
    let (client, mut states) = Client::builder()
        .url(proxy.ws_url())
        .token(good_token())
        .backoff(fast_policy())
        .liveness_margin(Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(1))
        .build_with_states()
        .unwrap();
    let mut sub = client.subscribe("bh", SubscribeOptions::default());
    let start = subscribed(&mut sub).await;
    for i in 0..5 {
        api.publish(&publish_cmd("bh", serde_json::json!(i))).await.unwrap();
    }
    receive_through(&mut sub, start.offset + 1, start.offset + 5).await;
    wait_state(&mut states, Duration::from_secs(5), |s| *s == ConnectionState::Connected).await;

    proxy.blackhole(true);
    let blackholed = Instant::now();
    for i in 5..10 {
        api.publish(&publish_cmd("bh", serde_json::json!(i))).await.unwrap();
    }
    wait_state(&mut states, Duration::from_secs(5), |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await;
    let noticed = blackholed.elapsed();
    // ping interval 200 ms + margin 300 ms; allow scheduling slack on a busy machine.
    assert!(noticed < Duration::from_secs(3), "silence noticed after {noticed:?}");
    assert_eq!(proxy.active(), 1, "the blackholed connection was not closed by the proxy");

    proxy.blackhole(false);
    receive_through(&mut sub, start.offset + 6, start.offset + 10).await;
    client.wait_connected(Duration::from_secs(5)).await.unwrap();
    assert!(proxy.accepted() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_memory_hub_yields_resync_epoch_changed() {
    let mut hub = Hub::start();
    let client = fast_client(&hub.ws_url());
    let mut sub = client.subscribe("restart", SubscribeOptions::default());
    let start = subscribed(&mut sub).await;
    for i in 0..3 {
        hub.api().publish(&publish_cmd("restart", serde_json::json!(i))).await.unwrap();
    }
    receive_through(&mut sub, start.offset + 1, start.offset + 3).await;

    hub.restart();
    let position = match next_event(&mut sub, Duration::from_secs(30)).await {
        SubEvent::Resync { reason, position, .. } => {
            assert_eq!(reason, NotRecovered::EpochChanged);
            position
        }
        other => panic!("expected Resync, got {other:?}"),
    };
    assert_ne!(position.epoch, start.epoch);
    hub.api().publish(&publish_cmd("restart", serde_json::json!("after"))).await.unwrap();
    match next_event(&mut sub, Duration::from_secs(10)).await {
        SubEvent::Publication(p) => {
            assert_eq!((p.epoch, p.offset), (position.epoch, position.offset + 1))
        }
        other => panic!("expected the new publication, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_delays_follow_the_policy_and_the_breaker_opens_probes_and_closes() {
    // A hub that is not running: the proxy accepts (so attempts can be timed) and then resets,
    // as the refused upstream connection would.
    let stopped = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = Proxy::start(stopped).await;
    let policy = BackoffPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(400),
        multiplier: 2.0,
        jitter: true,
        breaker_after: Some(6),
    };
    let (client, mut states) = Client::builder()
        .url(proxy.ws_url())
        .token(good_token())
        .backoff(policy.clone())
        .build_with_states()
        .unwrap();

    let mut delays = Vec::new();
    let reason = loop {
        let state = wait_state(&mut states, Duration::from_secs(15), |_| true).await;
        match state {
            ConnectionState::Reconnecting { attempt, next_try_in } => {
                delays.push((attempt, next_try_in))
            }
            ConnectionState::Offline { reason } => break reason,
            _ => {}
        }
    };
    assert_eq!(reason, OfflineReason::CircuitOpen { attempts: 6 });
    let attempts: Vec<u32> = delays.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5]);
    let ceilings: Vec<u64> =
        delays.iter().map(|(a, _)| policy.ceiling(*a).as_millis() as u64).collect();
    assert_eq!(ceilings, [100, 200, 400, 400, 400], "growing, then capped");
    for (attempt, delay) in &delays {
        assert!(
            *delay <= policy.ceiling(*attempt),
            "attempt {attempt}: {delay:?} above the ceiling"
        );
    }
    assert!(
        delays.iter().any(|(a, d)| d.as_secs_f64() < policy.ceiling(*a).as_secs_f64() * 0.95),
        "full jitter draws below the ceiling: {delays:?}"
    );
    let times = proxy.accept_times();
    assert_eq!(times.len(), 6, "one connection per attempt");
    for (k, (_, delay)) in delays.iter().enumerate() {
        let gap = times[k + 1] - times[k];
        assert!(
            gap + Duration::from_millis(5) >= *delay,
            "attempt {} came after {gap:?}, planned {delay:?}",
            k + 2
        );
        assert!(
            gap <= *delay + Duration::from_millis(500),
            "attempt {} came after {gap:?}, planned {delay:?}",
            k + 2
        );
    }
    // Open: requests fail at once, and the client still probes once per cap interval.
    assert!(matches!(
        client.publish("x", &1).await,
        Err(herald_client::Error::Offline(OfflineReason::CircuitOpen { .. }))
    ));
    wait_state(&mut states, Duration::from_secs(5), |s| {
        *s == ConnectionState::Offline { reason: OfflineReason::CircuitOpen { attempts: 7 } }
    })
    .await;
    let times = proxy.accept_times();
    assert_eq!(times.len(), 7, "one probe");
    let gap = times[6] - times[5];
    assert!(
        gap + Duration::from_millis(5) >= policy.max
            && gap <= policy.max + Duration::from_millis(500),
        "the probe came {gap:?} after the last failure, the cap is {:?}",
        policy.max
    );

    client.reconnect();
    wait_state(&mut states, Duration::from_secs(5), |s| *s == ConnectionState::Connecting).await;
    wait_state(&mut states, Duration::from_secs(5), |s| {
        matches!(s, ConnectionState::Reconnecting { attempt: 1, .. })
    })
    .await;
    assert_eq!(proxy.accepted(), 8, "reconnect() tries at once and resets the count");
    wait_state(&mut states, Duration::from_secs(10), |s| {
        *s == ConnectionState::Offline { reason: OfflineReason::CircuitOpen { attempts: 6 } }
    })
    .await;

    // The hub comes back: the next probe connects and closes the breaker.
    let hub = Hub::start();
    proxy.set_upstream(hub.addr);
    wait_state(&mut states, Duration::from_secs(10), |s| *s == ConnectionState::Connected).await;
    client.wait_connected(Duration::from_secs(1)).await.unwrap();
    client.publish("after-probe", &1).await.expect("requests flow again");
}

/// A network that cuts every connection shortly after it resumed: each resumed connection resets
/// the backoff, so the delays stay at the first ceiling and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_connections_reset_the_backoff_under_a_flapping_network() {
    let hub = Hub::start();
    let proxy = Arc::new(Proxy::start(hub.addr).await);
    let policy = BackoffPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(10),
        breaker_after: Some(3),
        ..Default::default()
    };
    let (client, mut states) = Client::builder()
        .url(proxy.ws_url())
        .token(good_token())
        .backoff(policy)
        .build_with_states()
        .unwrap();
    let mut sub = client.subscribe("flap", SubscribeOptions::default());
    let start = subscribed(&mut sub).await;

    let mut attempts = Vec::new();
    let mut published = 0u64;
    for round in 0..20u32 {
        hub.api().publish(&publish_cmd("flap", serde_json::json!(round))).await.unwrap();
        published += 1;
        // Wait until this connection resumed (the publication arrived), then cut it.
        receive_through(&mut sub, start.offset + published, start.offset + published).await;
        client.wait_connected(Duration::from_secs(5)).await.unwrap();
        proxy.cut_all(if round % 2 == 0 { Cut::Rst } else { Cut::Fin });
        match wait_state(&mut states, Duration::from_secs(5), |s| {
            matches!(s, ConnectionState::Reconnecting { .. })
        })
        .await
        {
            ConnectionState::Reconnecting { attempt, next_try_in } => {
                assert!(next_try_in <= Duration::from_millis(100));
                attempts.push(attempt);
            }
            _ => unreachable!(),
        }
    }
    assert!(
        attempts.iter().all(|a| *a == 1),
        "a resumed connection is not a failure: {attempts:?}"
    );
    assert!(proxy.accepted() >= 20, "one connection per round");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_goes_offline_with_the_server_code_and_stops() {
    let hub = Hub::start();
    let proxy = Proxy::start(hub.addr).await;
    let (client, mut states) = Client::builder()
        .url(proxy.ws_url())
        .token(token("not-the-secret", "mallory", Duration::from_secs(3600)))
        .backoff(fast_policy())
        .build_with_states()
        .unwrap();
    let offline = wait_state(&mut states, Duration::from_secs(10), |s| {
        matches!(s, ConnectionState::Offline { .. })
    })
    .await;
    match offline {
        ConnectionState::Offline { reason: OfflineReason::Closed { code, .. } } => {
            assert_eq!(code, 4500)
        }
        other => panic!("expected offline with close 4500, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(1), states.recv()).await.is_err(),
        "no further attempts"
    );
    assert_eq!(proxy.accepted(), 1);
    assert!(matches!(
        client.wait_connected(Duration::from_millis(10)).await,
        Err(herald_client::Error::Offline(OfflineReason::Closed { code: 4500, .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_traffic_within_the_liveness_margin_keeps_the_connection() {
    let hub = Hub::start();
    let proxy = Proxy::start(hub.addr).await;
    proxy.set_delay(Duration::from_millis(100));
    let (client, mut states) = Client::builder()
        .url(proxy.ws_url())
        .token(good_token())
        .backoff(fast_policy())
        .liveness_margin(Duration::from_millis(600))
        .build_with_states()
        .unwrap();
    let mut sub = client.subscribe("slow", SubscribeOptions::default());
    let start = subscribed(&mut sub).await;
    for i in 0..20 {
        hub.api().publish(&publish_cmd("slow", serde_json::json!(i))).await.unwrap();
    }
    receive_through(&mut sub, start.offset + 1, start.offset + 20).await;
    assert_eq!(proxy.accepted(), 1, "a slow link is not a dead one");
    assert!(
        std::iter::from_fn(|| states.try_recv().ok())
            .all(|s| !matches!(s, ConnectionState::Reconnecting { .. })),
        "no reconnect"
    );
}
