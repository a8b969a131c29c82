//! §5 Positions, resume and snapshots.

use crate::client::offsets;
use crate::harness::{Check, Ctx, checks};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn all() -> Vec<Check> {
    checks![
        every_subscribe_reply_carries_the_position,
        subscribed_means_flowing_under_concurrent_publishes,
        resume_recovered_then_live,
        resume_at_the_head_is_recovered_and_empty,
        resume_from_another_epoch_is_epoch_changed,
        resume_ahead_of_the_stream_is_epoch_changed,
        resume_after_trimmed_history_is_history_trimmed,
        resume_beyond_max_recover_is_too_many,
        keyed_resume_not_recovered_carries_a_fresh_snapshot,
        snapshot_sorted_by_key_then_stream_reproduces_state,
    ]
}

/// `records` as a map key → value. §6 does not spell out the shape of StateResult's `records`;
/// the snapshot's `[{key, value, offset}]` is read, and so is an object keyed by record key.
pub fn records(v: &Value) -> BTreeMap<String, Value> {
    match v {
        Value::Array(rows) => rows
            .iter()
            .map(|r| {
                (
                    r["key"].as_str().unwrap_or_else(|| panic!("record without key: {r}")).into(),
                    r["value"].clone(),
                )
            })
            .collect(),
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        other => panic!("records are neither an array nor an object: {other}"),
    }
}

fn since(reply: &Value, offset: u64) -> Value {
    json!({"epoch": reply["epoch"], "offset": offset})
}

fn resume(ch: &str, since: Value) -> Value {
    json!({"cmd": "subscribe", "channel": ch, "since": since})
}

/// Asserts a `recovered: false` reply with this reason and no partial publications.
#[track_caller]
fn assert_not_recovered(r: &Value, reason: &str) {
    assert_eq!((&r["recovered"], &r["reason"]), (&json!(false), &json!(reason)), "§5: {r}");
    let pubs = r.get("publications").map(offsets).unwrap_or_default();
    assert!(pubs.is_empty(), "§5 \"No partial publications are sent\": {r}");
}

/// §5 "Every subscribe reply carries the current position (`epoch`, `offset`)" and "A channel
/// that never had a publication has a position too (offset 0)".
async fn every_subscribe_reply_carries_the_position(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let (mut a, _) = h.client(&[&ch]).await;
    let first = a.subscribe(&ch).await;
    assert_eq!(first["offset"], 0, "{first}");
    h.publish(json!({"channel": ch, "data": 1})).await;
    h.publish(json!({"channel": ch, "data": 2})).await;
    let (mut b, _) = h.client(&[&ch]).await;
    let later = b.subscribe(&ch).await;
    assert_eq!((&later["epoch"], &later["offset"]), (&first["epoch"], &json!(2)), "{later}");
}

/// §5 "After the reply, the client receives exactly the publications with offsets `offset+1,
/// offset+2, ...` in order, with no gap and no duplicate" (guarantee 3), while publishes race the
/// subscribe.
async fn subscribed_means_flowing_under_concurrent_publishes(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let total = 40u64;
    let publisher = {
        let h = h.clone();
        let ch = ch.clone();
        tokio::spawn(async move {
            for n in 1..=total {
                h.publish(json!({"channel": ch, "data": n})).await;
            }
        })
    };
    let mut subscribers = vec![];
    for _ in 0..4 {
        let (mut c, _) = h.client(&[&ch]).await;
        let r = c.subscribe(&ch).await;
        subscribers.push((c, r["offset"].as_u64().unwrap()));
    }
    publisher.await.unwrap();
    for (mut c, at) in subscribers {
        for expected in at + 1..=total {
            let p = c.next_pub().await;
            assert_eq!(p["offset"], expected, "§5: subscribed at {at}, expected {expected}: {p}");
        }
    }
}

/// §5 "`recovered: true`: `publications` holds every publication after `since` up to `offset`,
/// in order; live ones follow."
async fn resume_recovered_then_live(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let (mut a, _) = h.client(&[&ch]).await;
    let sub = a.subscribe(&ch).await;
    h.publish(json!({"channel": ch, "data": 1})).await;
    h.publish(json!({"channel": ch, "data": 2})).await;
    assert_eq!(a.next_pub().await["offset"], 1);
    assert_eq!(a.next_pub().await["offset"], 2);
    drop(a);
    for n in 3..=5 {
        h.publish(json!({"channel": ch, "data": n})).await;
    }
    let (mut b, _) = h.client(&[&ch]).await;
    let r = b.ok(resume(&ch, since(&sub, 2))).await;
    assert_eq!(r["recovered"], true, "{r}");
    assert!(r.get("reason").is_none(), "{r}");
    assert_eq!(r["offset"], 5, "{r}");
    assert_eq!(offsets(&r["publications"]), vec![3, 4, 5], "{r}");
    let data: Vec<&Value> =
        r["publications"].as_array().unwrap().iter().map(|p| &p["data"]).collect();
    assert_eq!(data, vec![&json!(3), &json!(4), &json!(5)], "{r}");
    h.publish(json!({"channel": ch, "data": 6})).await;
    assert_eq!(b.next_pub().await["offset"], 6, "live follows");
}

/// §5: resuming at the current position misses nothing.
async fn resume_at_the_head_is_recovered_and_empty(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let (mut a, _) = h.client(&[&ch]).await;
    h.publish(json!({"channel": ch, "data": 1})).await;
    let head = a.ok(json!({"cmd": "history", "channel": ch, "limit": 1})).await;
    let r = a.ok(resume(&ch, since(&head, 1))).await;
    assert_eq!(r["recovered"], true, "{r}");
    let pubs = r.get("publications").map(offsets).unwrap_or_default();
    assert!(pubs.is_empty(), "{r}");
    // From offset 0 of the same epoch: everything.
    let (mut b, _) = h.client(&[&ch]).await;
    let r = b.ok(resume(&ch, since(&head, 0))).await;
    assert_eq!((&r["recovered"], offsets(&r["publications"])), (&json!(true), vec![1]), "{r}");
}

/// §5 "`epoch_changed`: the stream `since` belongs to is gone"; then live publications follow.
async fn resume_from_another_epoch_is_epoch_changed(h: Arc<Ctx>) {
    let ch = h.channel("session");
    h.publish(json!({"channel": ch, "data": 1})).await;
    let (mut c, _) = h.client(&[&ch]).await;
    let r = c.ok(resume(&ch, json!({"epoch": "an-old-epoch", "offset": 1}))).await;
    assert_not_recovered(&r, "epoch_changed");
    assert_eq!(r["offset"], 1, "the current position: {r}");
    assert_ne!(r["epoch"], "an-old-epoch", "{r}");
    h.publish(json!({"channel": ch, "data": 2})).await;
    assert_eq!(c.next_pub().await["offset"], 2, "§5: live publications after `offset` follow");
}

/// §5 "… or `since` is ahead of the stream (Redis restored from an older snapshot)".
async fn resume_ahead_of_the_stream_is_epoch_changed(h: Arc<Ctx>) {
    let ch = h.channel("session");
    h.publish(json!({"channel": ch, "data": 1})).await;
    let (mut c, _) = h.client(&[&ch]).await;
    let head = c.ok(json!({"cmd": "history", "channel": ch})).await;
    let r = c.ok(resume(&ch, since(&head, 99))).await;
    assert_not_recovered(&r, "epoch_changed");
}

/// §5 "`history_trimmed`: publications after `since` have left the history" (`tiny` keeps 2).
async fn resume_after_trimmed_history_is_history_trimmed(h: Arc<Ctx>) {
    let ch = h.channel("tiny");
    let (mut a, _) = h.client(&[&ch]).await;
    let sub = a.subscribe(&ch).await;
    for n in 1..=5 {
        h.publish(json!({"channel": ch, "data": n})).await;
    }
    let (mut b, _) = h.client(&[&ch]).await;
    let r = b.ok(resume(&ch, since(&sub, 1))).await;
    assert_not_recovered(&r, "history_trimmed");
    assert_eq!(r["offset"], 5, "{r}");
    // What is still kept can be recovered.
    let (mut c, _) = h.client(&[&ch]).await;
    let r = c.ok(resume(&ch, since(&sub, 3))).await;
    assert_eq!((&r["recovered"], offsets(&r["publications"])), (&json!(true), vec![4, 5]), "{r}");
}

/// §5 "`too_many`: more were missed than the recovery cap (`max_recover` …) allows" (`feed`:
/// `max_recover = 3`, history 100): 3 missed recover, 4 do not.
async fn resume_beyond_max_recover_is_too_many(h: Arc<Ctx>) {
    let ch = h.channel("feed");
    let (mut a, _) = h.client(&[&ch]).await;
    let sub = a.subscribe(&ch).await;
    for n in 1..=6 {
        h.publish(json!({"channel": ch, "data": n})).await;
    }
    let (mut b, _) = h.client(&[&ch]).await;
    let r = b.ok(resume(&ch, since(&sub, 2))).await;
    assert_not_recovered(&r, "too_many");
    let (mut c, _) = h.client(&[&ch]).await;
    let r = c.ok(resume(&ch, since(&sub, 3))).await;
    assert_eq!(
        (&r["recovered"], offsets(&r["publications"])),
        (&json!(true), vec![4, 5, 6]),
        "{r}"
    );
}

/// §5 "On a keyed channel the reply carries a fresh `snapshot`, so the client replaces its state
/// in one step."
async fn keyed_resume_not_recovered_carries_a_fresh_snapshot(h: Arc<Ctx>) {
    let ch = h.channel("board");
    h.publish(json!({"channel": ch, "key": "a", "op": "upsert", "data": {"v": 1}})).await;
    h.publish(json!({"channel": ch, "key": "b", "op": "upsert", "data": {"v": 2}})).await;
    let (mut c, _) = h.client(&[&ch]).await;
    let r = c.ok(resume(&ch, json!({"epoch": "gone", "offset": 7}))).await;
    assert_not_recovered(&r, "epoch_changed");
    let snap = r["snapshot"].as_array().unwrap_or_else(|| panic!("§5: a fresh snapshot: {r}"));
    let keys: Vec<&Value> = snap.iter().map(|s| &s["key"]).collect();
    assert_eq!(keys, vec!["a", "b"], "{r}");
}

/// §5 "`snapshot: true` … returns `snapshot`: every live record `{key, value, offset}` at
/// `offset`, sorted by key; the stream continues at `offset + 1`. Applying the snapshot and then
/// each later publication … reproduces the server's state exactly."
async fn snapshot_sorted_by_key_then_stream_reproduces_state(h: Arc<Ctx>) {
    let ch = h.channel("board");
    let put = |key: &str, op: &str, data: Value| json!({"channel": ch, "key": key, "op": op, "data": data});
    h.publish(put("c", "upsert", json!({"n": 1}))).await; // 1
    h.publish(put("a", "upsert", json!({"n": 2, "tags": ["x"]}))).await; // 2
    h.publish(put("b", "upsert", json!("plain"))).await; // 3
    h.publish(put("a", "merge", json!({"tags": null, "m": {"deep": 1}}))).await; // 4
    h.publish(put("c", "delete", Value::Null)).await; // 5
    let (mut c, _) = h.client(&[&ch]).await;
    let r = c.ok(json!({"cmd": "subscribe", "channel": ch, "snapshot": true})).await;
    assert_eq!(r["offset"], 5, "{r}");
    assert_eq!(
        r["snapshot"],
        json!([
            {"key": "a", "value": {"n": 2, "m": {"deep": 1}}, "offset": 4},
            {"key": "b", "value": "plain", "offset": 3},
        ]),
        "§5 snapshot: live records, sorted by key, with the offset that set them"
    );
    let mut model: BTreeMap<String, Value> = r["snapshot"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["key"].as_str().unwrap().into(), s["value"].clone()))
        .collect();
    h.publish(put("b", "upsert", json!({"n": 3}))).await;
    h.publish(put("b", "merge", json!({"o": true}))).await;
    h.publish(put("a", "delete", Value::Null)).await;
    h.publish(put("d", "merge", json!({"new": 1}))).await;
    for expected in 6..=9 {
        let p = c.next_pub().await;
        assert_eq!(p["offset"], expected, "{p}");
        let key = p["key"].as_str().unwrap().to_string();
        match p["op"].as_str().unwrap() {
            "upsert" => {
                model.insert(key, p["data"].clone());
            }
            "delete" => {
                model.remove(&key);
            }
            "merge" => merge_patch(model.entry(key).or_insert(Value::Null), &p["data"]),
            other => panic!("unknown op {other}"),
        }
    }
    let (status, state) = h.api("GET", &format!("/api/state?channel={ch}"), None).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["offset"], 9, "{state}");
    assert_eq!(model, records(&state["records"]), "§5: snapshot + stream = the server's state");
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let obj = target.as_object_mut().unwrap();
    for (k, v) in patch {
        if v.is_null() {
            obj.remove(k);
        } else {
            merge_patch(obj.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}
