//! §5 epochs and §8 113 / §12 503 when the engine loses its data: the memory hub restarted, the
//! Redis server killed and started again empty. Each has a hub to itself (the others' checks
//! would see the outage), and runs its steps in order.

use crate::harness::{Ctx, Engine};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// §5 "`epoch_changed`: the stream `since` belongs to is gone (hub restarted on the memory
/// engine …)"; §9 "a dropped socket means reconnect".
pub async fn memory_restart(config: &str) {
    let mut ctx = Ctx::start(Engine::Memory, config, 5);
    let ch = ctx.channel("session");
    let (mut c, user) = ctx.client(&[&ch]).await;
    let sub = c.subscribe(&ch).await;
    ctx.publish(json!({"channel": ch, "data": 1})).await;
    assert_eq!(c.next_pub().await["offset"], 1);
    let hub = ctx.hub;
    ctx.hub = hub.restart();
    let (close, push) = c.expect_close().await;
    assert!(push.is_none() && close != 4000, "kill -9 sends nothing: close {close}, {push:?}");
    let mut c = ctx.client_as(&user, &[&ch]).await;
    let r = c.ok(json!({"cmd": "subscribe", "channel": ch, "since": {"epoch": sub["epoch"], "offset": 1}})).await;
    assert_eq!((&r["recovered"], &r["reason"]), (&json!(false), &json!("epoch_changed")), "{r}");
    assert_ne!(r["epoch"], sub["epoch"], "§5: a new epoch after the restart: {r}");
    assert_eq!(r["offset"], 0, "{r}");
}

/// §12 "503 (`unavailable`: the engine is unreachable and nothing was published — never a false
/// success)", "readiness (503 while the engine is unreachable)"; §8 113; then Redis comes back
/// empty: §5 the server "never delivers around the hole: it sends `{"push":"unsubscribe",…,
/// "code":117,"name":"resubscribe","resubscribe":true}`", and the resume says `epoch_changed`
/// ("Redis lost its data").
pub async fn redis_flush(config: &str) {
    let ctx = Ctx::start(Engine::Redis, config, 5);
    let ch = ctx.channel("room");
    let (mut c, _) = ctx.client(&[&ch]).await;
    let sub = c.subscribe(&ch).await;
    for n in 1..=2 {
        ctx.publish(json!({"channel": ch, "data": n})).await;
        assert_eq!(c.next_pub().await["offset"], n);
    }
    ctx.kill_redis();
    let (status, body) =
        ctx.api("POST", "/api/publish", Some(json!({"channel": ch, "data": "lost?"}))).await;
    assert_eq!((status, &body["error"]["code"]), (503, &json!(113)), "§12: {body}");
    let ready = reqwest::get(ctx.hub.http("/ready")).await.unwrap().status().as_u16();
    assert_eq!(ready, 503, "§12: /ready while the engine is unreachable");
    let e = c.err(json!({"cmd": "publish", "channel": ch, "data": "lost?"})).await;
    assert_eq!(e["code"], 113, "§8 113 unavailable: {e}");
    ctx.start_redis_again().await;
    // Readiness is the event to wait for; poll it within a deadline.
    let deadline = Instant::now() + Duration::from_secs(15);
    while reqwest::get(ctx.hub.http("/ready")).await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "/ready never came back after Redis restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = ctx.publish(json!({"channel": ch, "data": "after"})).await;
    assert_ne!(
        after["epoch"], sub["epoch"],
        "§5/guarantee 6: Redis lost the stream, a new epoch: {after}"
    );
    // The subscriber is told to resubscribe; it never sees the old stream continue.
    let mut told = None;
    for _ in 0..5 {
        let m = c.next_msg().await;
        if m["push"] == "unsubscribe" {
            told = Some(m);
            break;
        }
        if m["push"] == "pub" {
            assert_ne!(m["pub"]["epoch"], sub["epoch"], "§5: delivered around the hole: {m}");
        }
    }
    let told = told.unwrap_or_else(|| panic!("§5: no unsubscribe push after Redis lost its data"));
    let fields: Vec<&Value> =
        ["channel", "code", "name", "resubscribe"].iter().map(|f| &told[*f]).collect();
    assert_eq!(
        fields,
        vec![&json!(ch), &json!(117), &json!("resubscribe"), &json!(true)],
        "§3/§5: {told}"
    );
    assert!(told["reason"].is_string(), "§3 unsubscribe push has `reason`: {told}");
    let r = c.ok(json!({"cmd": "subscribe", "channel": ch, "since": {"epoch": sub["epoch"], "offset": 2}})).await;
    assert_eq!(
        (&r["recovered"], &r["reason"]),
        (&json!(false), &json!("epoch_changed")),
        "§5: {r}"
    );
    assert_eq!((&r["epoch"], &r["offset"]), (&after["epoch"], &after["offset"]), "{r}");
}
