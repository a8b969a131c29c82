//! §8 Error codes, each in the situation the table gives (101, 104, 107, 115 are in commands.rs;
//! 119 in limits.rs; 113 and 117 in engine_loss.rs, Redis only). Not reachable from a black-box
//! test: 100 internal, 118 invalid_filter (reserved).

use crate::client::assert_code;
use crate::harness::{Check, Ctx, checks};
use serde_json::{Value, json};
use std::sync::Arc;

pub fn all() -> Vec<Check> {
    checks![
        bad_token_at_connect_is_101_then_4500,
        unknown_namespace_is_102,
        forbidden_is_103,
        already_subscribed_is_105,
        too_many_channels_is_106,
        not_subscribed_is_108,
        expired_token_at_connect_is_109_then_4004,
        rate_limited_is_110_then_4006,
        message_too_large_is_111,
        state_limit_exceeded_is_112,
        invalid_channel_is_114,
        not_keyed_is_116,
    ]
}

/// §8 101 "no valid credentials (… bad token)"; §9 4500 "missing, malformed, badly signed …
/// token" (close after the reply).
async fn bad_token_at_connect_is_101_then_4500(h: Arc<Ctx>) {
    let mut c = h.open().await;
    assert_code(&c.connect(Some("not-a-jwt")).await.expect_err("bad token"), 101);
    c.expect_closed_with(4500, "unauthorized").await;
}

/// §8 102 "the channel's namespace is not configured".
async fn unknown_namespace_is_102(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&["*"]).await;
    for cmd in [
        json!({"cmd": "subscribe", "channel": "nowhere:1"}),
        json!({"cmd": "publish", "channel": "nowhere:1", "data": 1}),
        json!({"cmd": "history", "channel": "nowhere:1"}),
    ] {
        let e = c.err(cmd).await;
        assert_code(&e, 102);
        assert_eq!(e["channel"], "nowhere:1", "{e}");
    }
}

/// §8 103 "the principal may not do this on this channel": a channel outside the token's
/// `channels`, a client publish without `publish` claim where `client_publish` is off.
async fn forbidden_is_103(h: Arc<Ctx>) {
    let mine = h.channel("session");
    let other = h.channel("session");
    let (mut c, _) = h.client(&[&mine]).await;
    assert_code(&c.err(json!({"cmd": "subscribe", "channel": other})).await, 103);
    assert_code(&c.err(json!({"cmd": "history", "channel": other})).await, 103);
    assert_code(&c.err(json!({"cmd": "publish", "channel": mine, "data": 1})).await, 103);
    c.subscribe(&mine).await;
}

/// §8 105 "already subscribed to this channel on this connection".
async fn already_subscribed_is_105(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let (mut c, _) = h.client(&[&ch]).await;
    c.subscribe(&ch).await;
    let e = c.err(json!({"cmd": "subscribe", "channel": ch})).await;
    assert_code(&e, 105);
}

/// §8 106 "the per-connection channel limit is reached" (8 in this configuration).
async fn too_many_channels_is_106(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&["session:*"]).await;
    for _ in 0..8 {
        c.subscribe(&h.channel("session")).await;
    }
    let e = c.err(json!({"cmd": "subscribe", "channel": h.channel("session")})).await;
    assert_code(&e, 106);
}

/// §8 108 "not subscribed to this channel".
async fn not_subscribed_is_108(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let (mut c, _) = h.client(&[&ch]).await;
    assert_code(&c.err(json!({"cmd": "unsubscribe", "channel": ch})).await, 108);
}

/// §8 109 "the token has expired"; §9 4004 "the token is expired (at `connect`)".
async fn expired_token_at_connect_is_109_then_4004(h: Arc<Ctx>) {
    let token =
        h.token_with(json!({"sub": h.unique("exp"), "exp": herald_testkit::unix_now() - 3600}));
    let mut c = h.open().await;
    assert_code(&c.connect(Some(&token)).await.expect_err("expired"), 109);
    c.expect_closed_with(4004, "token_expired").await;
}

/// §8 110 "too many commands per second"; §9 4006 "command rate limit exceeded repeatedly"
/// (default 200/s; 700 pings in one frame).
async fn rate_limited_is_110_then_4006(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&[]).await;
    let frame: Vec<String> =
        (1..=700).map(|id| format!(r#"{{"id":{},"cmd":"ping"}}"#, 10_000 + id)).collect();
    c.send_raw(&frame.join("\n")).await;
    let mut limited = 0;
    let mut push = None;
    while let Some(m) = c.next().await {
        if m["push"] == "disconnect" {
            push = Some(m);
        } else if m.get("error").is_some() {
            assert_code(&m["error"], 110);
            limited += 1;
        }
    }
    assert!(limited > 0, "§8: some commands refused with 110");
    let close = c.closed.as_ref().map(|c| c.0);
    assert_eq!(close, Some(4006), "§9: repeated violations close with 4006 ({limited} refused)");
    let push = push.expect("§9: disconnect push before the close");
    assert_eq!(
        (&push["code"], &push["name"], &push["reconnect"]),
        (&json!(4006), &json!("rate_limited"), &json!(true))
    );
}

/// §8 111 "a publication is larger than its namespace allows" (`small`: 64 bytes); the
/// connection stays open.
async fn message_too_large_is_111(h: Arc<Ctx>) {
    let ch = h.channel("small");
    let (mut c, _) = h.client(&[&ch]).await;
    let e = c.err(json!({"cmd": "publish", "channel": ch, "data": "x".repeat(100)})).await;
    assert_code(&e, 111);
    c.ok(json!({"cmd": "publish", "channel": ch, "data": "short"})).await;
}

/// §8 112 "a keyed publish would exceed the channel's state limit" (`board`: 5 records).
async fn state_limit_exceeded_is_112(h: Arc<Ctx>) {
    let ch = h.channel("board");
    let (mut c, _) = h.client(&[&ch]).await;
    let put = |key: String| json!({"cmd": "publish", "channel": ch, "key": key, "op": "upsert", "data": 1});
    for k in 0..5 {
        c.ok(put(format!("k{k}"))).await;
    }
    assert_code(&c.err(put("k5".into())).await, 112);
    // Updating a live key is not growth.
    c.ok(put("k0".into())).await;
}

/// §8 114 / §10 "A channel name is 1–255 bytes with no whitespace or control characters."
async fn invalid_channel_is_114(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&["*"]).await;
    let long = "x".repeat(256);
    for bad in ["", "a b", "tab\there", "nl\nx", "ctl\u{1}x", long.as_str()] {
        let e = c.err(json!({"cmd": "subscribe", "channel": bad})).await;
        assert_code(&e, 114);
    }
    // 255 bytes, no ':' → the default namespace.
    let max = format!("{}{}", h.unique("m"), "y".repeat(255));
    c.subscribe(&max[..255]).await;
}

/// §8 116 "`key`/`op`/`state`/`snapshot` on a channel that is not keyed, or `op` without `key`".
async fn not_keyed_is_116(h: Arc<Ctx>) {
    let plain = h.channel("room");
    let keyed = h.channel("board");
    let (mut c, _) = h.client(&[&plain, &keyed]).await;
    for cmd in [
        json!({"cmd": "publish", "channel": plain, "data": 1, "key": "k", "op": "upsert"}),
        json!({"cmd": "publish", "channel": plain, "data": 1, "key": "k"}),
        json!({"cmd": "state", "channel": plain}),
        json!({"cmd": "subscribe", "channel": plain, "snapshot": true}),
        json!({"cmd": "publish", "channel": keyed, "data": 1, "op": "upsert"}),
    ] {
        let e = c.err(cmd.clone()).await;
        assert_eq!(e["code"], 116, "{cmd} → 116, got {e}");
    }
    let _: Value = c.subscribe(&plain).await;
}
