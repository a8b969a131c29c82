//! §4 Publication: every field, from the HTTP API and from a client.

use crate::client::assert_time;
use crate::harness::{Check, Ctx, checks};
use serde_json::{Value, json};
use std::sync::Arc;

pub fn all() -> Vec<Check> {
    checks![
        api_publication_has_every_field,
        type_defaults_to_message_and_source_to_api,
        client_publication_names_its_publisher,
        keyed_publication_carries_key_and_op,
        offsets_grow_by_one_from_one,
        data_is_any_json_value,
    ]
}

/// §4 the Publication: `channel`, `epoch`, `offset`, `id` = `EPOCH-OFFSET`, `type`, `data`, `time`
/// (RFC 3339 UTC ms), `meta` `user`/`source`/`correlation_id`/`idempotency_key`; §12 publish takes
/// `type?`, `idempotency_key?`, `correlation_id?`, `source?`, `user?`.
async fn api_publication_has_every_field(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let (mut c, _) = h.client(&[&ch]).await;
    let sub = c.subscribe(&ch).await;
    let body = json!({
        "channel": ch, "data": {"x": [1, 2]}, "type": "structure.updated",
        "correlation_id": "req-9", "idempotency_key": "op-77", "source": "billing", "user": "alice",
    });
    let r = h.publish(body).await;
    let p = c.next_pub().await;
    assert_eq!(p["channel"], ch.as_str(), "{p}");
    assert_eq!(p["epoch"], sub["epoch"], "{p}");
    assert_eq!(p["offset"], 1, "{p}");
    assert_eq!(p["id"], format!("{}-1", sub["epoch"].as_str().unwrap()), "§4 id: {p}");
    assert_eq!(p["type"], "structure.updated", "{p}");
    assert_eq!(p["data"], json!({"x": [1, 2]}), "{p}");
    assert_time(&p["time"]);
    assert_eq!(p["time"], r["time"], "§6/§4: the same acceptance time: {p} / {r}");
    assert_eq!(
        p["meta"],
        json!({"user": "alice", "source": "billing", "correlation_id": "req-9", "idempotency_key": "op-77"}),
        "§4 meta: {p}"
    );
    for absent in ["key", "op"] {
        assert!(p.get(absent).is_none(), "§4: `{absent}` on keyed channels only: {p}");
    }
}

/// §4 "`type` … `message` by default"; `source` "`client`, `api`, or caller-set".
async fn type_defaults_to_message_and_source_to_api(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let (mut c, _) = h.client(&[&ch]).await;
    c.subscribe(&ch).await;
    h.publish(json!({"channel": ch, "data": "d"})).await;
    let p = c.next_pub().await;
    assert_eq!(p["type"], "message", "{p}");
    assert_eq!(p["meta"]["source"], "api", "{p}");
}

/// §4 meta `user` (publisher's user id), `source` `client`.
async fn client_publication_names_its_publisher(h: Arc<Ctx>) {
    let ch = h.channel("room");
    let (mut c, user) = h.client(&[&ch]).await;
    c.subscribe(&ch).await;
    c.ok(json!({"cmd": "publish", "channel": ch, "data": 1, "type": "t", "correlation_id": "c-1"}))
        .await;
    let p = c.next_pub().await;
    assert_eq!(p["meta"]["user"], user.as_str(), "{p}");
    assert_eq!(p["meta"]["source"], "client", "{p}");
    assert_eq!(p["meta"]["correlation_id"], "c-1", "{p}");
    assert_eq!(p["type"], "t", "{p}");
}

/// §4 "`key`, `op` | keyed channels only: record key and `upsert`, `merge` … or `delete`".
async fn keyed_publication_carries_key_and_op(h: Arc<Ctx>) {
    let ch = h.channel("board");
    let (mut c, _) = h.client(&[&ch]).await;
    c.subscribe(&ch).await;
    for (op, data) in
        [("upsert", json!({"a": 1})), ("merge", json!({"b": 2})), ("delete", Value::Null)]
    {
        c.ok(json!({"cmd": "publish", "channel": ch, "key": "k1", "op": op, "data": data})).await;
        let p = c.next_pub().await;
        assert_eq!((&p["key"], &p["op"]), (&json!("k1"), &json!(op)), "{p}");
    }
}

/// §4 "`offset` | previous offset + 1; the first publication of an epoch has offset 1".
async fn offsets_grow_by_one_from_one(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let (mut c, _) = h.client(&[&ch]).await;
    let sub = c.subscribe(&ch).await;
    for n in 1..=5 {
        h.publish(json!({"channel": ch, "data": n})).await;
    }
    for n in 1..=5u64 {
        let p = c.next_pub().await;
        assert_eq!(
            (&p["offset"], &p["epoch"], &p["data"]),
            (&json!(n), &sub["epoch"], &json!(n)),
            "{p}"
        );
    }
}

/// §4 "`data` | the payload, any JSON value".
async fn data_is_any_json_value(h: Arc<Ctx>) {
    let ch = h.channel("room");
    let (mut c, _) = h.client(&[&ch]).await;
    c.subscribe(&ch).await;
    let values = [
        json!("text"),
        json!(3.5),
        json!(-7),
        json!(true),
        json!([1, "a", null]),
        json!({"n": {"m": []}}),
        json!(null),
    ];
    for v in &values {
        c.ok(json!({"cmd": "publish", "channel": ch, "data": v})).await;
    }
    for v in &values {
        let p = c.next_pub().await;
        assert_eq!(&p["data"], v, "{p}");
    }
}
