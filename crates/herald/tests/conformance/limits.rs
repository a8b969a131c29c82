//! §9 close codes that need limits of their own: 4001 slow_consumer (then resume), 4005
//! too_many_connections (error 119), §12 the per-IP upgrade limit (429 with 110), 4000 shutdown
//! on SIGTERM. The last two run alone, in this order, after the others.

use crate::client::{Conn, WAIT, assert_code, offsets};
use crate::harness::{Check, Ctx, checks};
use serde_json::{Value, json};
use std::sync::Arc;

pub const CONFIG: &str = r#"
[limits]
max_connections_per_user = 2
outbound_queue_messages = 64
# Room for a resume reply of every missed publication (the queue's byte bound applies to it too).
outbound_queue_bytes = 67108864
connection_attempts_per_ip_per_minute = 40
[namespaces.default]
[namespaces.bulk]
history_size = 5000
max_recover = 5000
"#;

pub fn all() -> Vec<Check> {
    checks![per_user_limit_is_119_then_4005, slow_consumer_is_closed_4001_and_resumes_recovered]
}

pub fn per_ip() -> Vec<Check> {
    checks![upgrades_over_the_per_ip_limit_get_429]
}

/// §8 119 "the per-user connection limit is reached"; §9 4005 "per-user connection limit".
async fn per_user_limit_is_119_then_4005(h: Arc<Ctx>) {
    let (mut a, user) = h.client(&[]).await;
    let mut b = h.client_as(&user, &[]).await;
    let mut third = h.open().await;
    let e = third.connect(Some(&h.token(&user, &[]))).await.expect_err("over the limit");
    assert_code(&e, 119);
    third.expect_closed_with(4005, "too_many_connections").await;
    a.still_open().await;
    b.still_open().await;
}

/// §9 4001 "the outbound queue overflowed (count or bytes)" — client should "reconnect and
/// resume"; §5 the resume then recovers everything (history 5000, queue 64).
async fn slow_consumer_is_closed_4001_and_resumes_recovered(h: Arc<Ctx>) {
    let ch = h.channel("bulk");
    let (mut slow, _) = h.client(&[&ch]).await;
    let sub = slow.subscribe(&ch).await;
    let pad = "x".repeat(32 * 1024);
    let mut published = 0u64;
    // Publish until the hub drops the reader that never reads (bounded: 1500 × 32 KiB).
    'publish: for round in 0..30 {
        for _ in 0..50 {
            published += 1;
            h.publish(json!({"channel": ch, "data": {"n": published, "pad": pad}})).await;
        }
        let (_, r) = h.api("GET", "/api/channels", None).await;
        let subscribed =
            r["channels"].as_array().is_some_and(|l| l.iter().any(|c| c["channel"] == ch.as_str()));
        if !subscribed {
            break 'publish;
        }
        assert!(
            round < 29,
            "§9: a reader that never reads was not closed after {published} publications"
        );
    }
    let mut last = 0;
    let mut push: Option<Value> = None;
    while let Some(m) = slow.next().await {
        match m["push"].as_str() {
            Some("pub") => {
                let off = m["pub"]["offset"].as_u64().unwrap();
                assert_eq!(off, last + 1, "§5: no gap before the close");
                last = off;
            }
            Some("disconnect") => push = Some(m),
            _ => panic!("unexpected {m}"),
        }
    }
    assert!(last < published, "the slow reader was cut off ({last} of {published})");
    // The resume first (issue 11's "slow reader closed with 4001 … resumes with recovered"), then
    // the close code, so a failure names both.
    let (mut again, _) = h.client(&[&ch]).await;
    let r = again.ok(json!({"cmd": "subscribe", "channel": ch, "since": {"epoch": sub["epoch"], "offset": last}})).await;
    let resumed = r["recovered"] == true
        && offsets(&r["publications"]) == (last + 1..=published).collect::<Vec<_>>();
    let close = slow.closed.as_ref().map(|c| c.0);
    let push_code =
        push.as_ref().map(|p| (p["code"].clone(), p["name"].clone(), p["reconnect"].clone()));
    assert!(
        resumed
            && close == Some(4001)
            && push_code == Some((json!(4001), json!("slow_consumer"), json!(true))),
        "§9 4001: read {last} of {published}; close {close:?} (want 4001; socket: {:?}), disconnect push {push:?} (want 4001 slow_consumer \
         reconnect true), resume recovered={} reason={} (want recovered, publications {}..={published})",
        slow.ended,
        r["recovered"],
        r["reason"],
        last + 1
    );
}

/// §12 "A WebSocket upgrade from an address over `limits.connection_attempts_per_ip_per_minute`
/// is answered `429` with error `110 rate_limited` before any upgrade."
async fn upgrades_over_the_per_ip_limit_get_429(h: Arc<Ctx>) {
    let mut kept = vec![];
    for _ in 0..60 {
        let attempt = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(h.hub.ws_url()))
            .await
            .expect("in time");
        match attempt {
            Ok((ws, _)) => kept.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 429, "{resp:?}");
                let body: Value = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                assert_eq!(body["error"]["code"], 110, "§12: error 110 with the 429: {body}");
                return;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("§12: 60 upgrades within a minute, none refused (limit 40)");
}

/// §9 4000 shutdown "the node is shutting down or restarting": SIGTERM closes `c` with 4000
/// and the process exits cleanly.
pub async fn sigterm_closes_with_4000(ctx: Ctx, mut c: Conn) -> Result<(), String> {
    let mut ctx = ctx;
    let term = tokio::task::spawn_blocking(move || {
        let status = ctx.hub.terminate();
        (status, ctx)
    });
    let closed = crate::harness::catch(async move {
        c.expect_closed_with(4000, "shutdown").await;
    })
    .await;
    let (status, _ctx) = term.await.map_err(|e| e.to_string())?;
    closed?;
    if status.success() { Ok(()) } else { Err(format!("herald exit after SIGTERM: {status:?}")) }
}
