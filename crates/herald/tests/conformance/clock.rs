//! §7 Heartbeat and token refresh, §2 auth timeout: a hub with short timeouts
//! (ping 200 ms, pong timeout 1 s, auth timeout 1 s, token grace 200 ms, leeway 0).

use crate::harness::{Check, Ctx, checks};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CONFIG: &str = r#"
[timeouts]
ping_interval = "200ms"
pong_timeout = "1s"
auth_timeout = "1s"
token_grace = "200ms"
[namespaces.default]
"#;

pub fn all() -> Vec<Check> {
    checks![
        connect_result_reports_the_configured_heartbeat,
        server_pings_and_an_answering_client_stays,
        silent_client_is_closed_4002,
        no_connect_within_the_auth_timeout_is_closed_4003,
        token_lapsing_without_refresh_is_closed_4004,
        refresh_moves_the_expiry,
    ]
}

/// §6 `ping_interval_ms`, `pong_timeout_ms` are the configured ones.
async fn connect_result_reports_the_configured_heartbeat(h: Arc<Ctx>) {
    let mut c = h.open().await;
    let r = c.connect(Some(&h.token(&h.unique("hb"), &[]))).await.expect("connect");
    assert_eq!((&r["ping_interval_ms"], &r["pong_timeout_ms"]), (&json!(200), &json!(1000)), "{r}");
}

/// §7 "The server sends `{"push":"ping"}` every `ping_interval_ms`"; a client answering with
/// `pong` is kept well past `pong_timeout_ms`.
async fn server_pings_and_an_answering_client_stays(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&[]).await;
    let start = Instant::now();
    for _ in 0..100 {
        if c.pings >= 8 {
            break;
        }
        assert!(c.read_frame().await, "closed while answering pings: {:?}", c.closed);
    }
    assert!(c.pings >= 8, "§7: pings arrive");
    assert!(start.elapsed() > Duration::from_secs(1), "8 pings at 200 ms outlast the 1 s timeout");
    c.still_open().await;
}

/// §7 "closes a connection from which nothing … has arrived for `pong_timeout_ms` … with `4002
/// heartbeat_timeout`".
async fn silent_client_is_closed_4002(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&[]).await;
    c.auto_pong = false;
    let start = Instant::now();
    c.expect_closed_with(4002, "heartbeat_timeout").await;
    assert!(c.pings >= 1, "§7: pinged before giving up");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "not before pong_timeout: {:?}",
        start.elapsed()
    );
}

/// §2 "A connection that has not completed `connect` within the auth timeout … is closed with
/// `4003 auth_timeout`."
async fn no_connect_within_the_auth_timeout_is_closed_4003(h: Arc<Ctx>) {
    let start = Instant::now();
    let mut c = h.open().await;
    c.expect_closed_with(4003, "auth_timeout").await;
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "not before the timeout: {:?}",
        start.elapsed()
    );
}

/// §7 "A connection whose token expires without a refresh is closed, after a grace period …,
/// with `4004 token_expired`."
async fn token_lapsing_without_refresh_is_closed_4004(h: Arc<Ctx>) {
    let exp = herald_testkit::unix_now() + 2;
    let mut c = h.open().await;
    c.connect(Some(&h.token_with(json!({"sub": h.unique("lapse"), "exp": exp}))))
        .await
        .expect("connect");
    c.expect_closed_with(4004, "token_expired").await;
    assert!(herald_testkit::unix_now() >= exp, "§7: not closed before exp");
}

/// §7 "A client SHOULD send `refresh` with a new token before `expires_at`": the connection
/// then outlives the first token.
async fn refresh_moves_the_expiry(h: Arc<Ctx>) {
    let user = h.unique("refresh");
    let exp = herald_testkit::unix_now() + 2;
    let mut c = h.open().await;
    c.connect(Some(&h.token_with(json!({"sub": user, "exp": exp})))).await.expect("connect");
    let later = herald_testkit::unix_now() + 600;
    let r = c
        .ok(json!({"cmd": "refresh", "token": h.token_with(json!({"sub": user, "exp": later}))}))
        .await;
    assert_eq!(r["expires_at"], later, "{r}");
    // Keep reading (pings every 200 ms) until the old token plus grace is well past.
    for _ in 0..100 {
        if herald_testkit::unix_now() > exp + 1 {
            break;
        }
        assert!(c.read_frame().await, "closed after a refresh: {:?}", c.closed);
    }
    assert!(herald_testkit::unix_now() > exp + 1, "waited past the first token");
    c.still_open().await;
}
