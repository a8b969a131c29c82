//! Keyed state: upsert, merge (JSON merge patch) and delete, the state limits, the snapshot a
//! failed keyed resume carries, and snapshot + stream = final state under concurrent publishes.

use crate::nodes::*;
use herald_protocol::reply::NotRecovered;
use herald_protocol::{ErrorCode, Op, Record};
use herald_server::config::Namespace;
use herald_server::engine::EngineError;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Records as `(key, value, offset)`, values parsed.
fn rows(records: &[Record]) -> Vec<(String, Value, u64)> {
    records
        .iter()
        .map(|r| (r.key.clone(), serde_json::from_str(r.value.get()).unwrap(), r.offset))
        .collect()
}

/// Upsert, merge and delete build the state; the record limit refuses a new key with 112 and a
/// delete makes room; a key on a namespace that is not keyed is 116.
pub async fn keyed_state_and_limits(n: Nodes) {
    let ns = Namespace { keyed: true, max_state_records: 2, ..Namespace::default() };
    publish(&n.writer, &ns, input("k", r#"{"s":"todo","t":"a"}"#, Some("1"), None)).await;
    publish(&n.reader, &ns, input("k", r#"{"s":"done"}"#, Some("1"), Some(Op::Merge))).await;
    publish(&n.writer, &ns, input("k", r#"{"x":1}"#, Some("2"), Some(Op::Upsert))).await;
    let err = refused(&n.writer, &ns, input("k", "1", Some("3"), None)).await;
    assert!(matches!(err, EngineError::StateLimit(_)), "{err}");
    assert_eq!(err.code(), ErrorCode::StateLimitExceeded);
    publish(&n.reader, &ns, input("k", "null", Some("2"), Some(Op::Delete))).await;
    for node in n.both() {
        let st = state(node, &ns, "k").await;
        assert_eq!(st.offset, 4);
        assert_eq!(rows(&st.records), [("1".into(), json!({"s": "done", "t": "a"}), 2)]);
    }
    let plain = Namespace::default();
    let err = refused(&n.writer, &plain, input("p", "1", Some("x"), None)).await;
    assert!(matches!(err, EngineError::NotKeyed(_)), "{err}");
    assert_eq!(err.code(), ErrorCode::NotKeyed);
    let err = herald_server::rules::state(&*n.reader, &plain, "p").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotKeyed, "state of a namespace that is not keyed");
}

/// The record limit across nodes (a merge onto no record creates it); both nodes read the same
/// records, sorted by key, each with the offset that set it.
pub async fn state_limits_agree_across_nodes(n: Nodes) {
    let lim = Namespace { keyed: true, max_state_records: 2, ..Namespace::default() };
    publish(&n.writer, &lim, input("lim:x", r#"{"v":1}"#, Some("a"), None)).await;
    publish(&n.reader, &lim, input("lim:x", r#"{"v":2}"#, Some("b"), Some(Op::Merge))).await;
    let err = refused(&n.writer, &lim, input("lim:x", "3", Some("c"), None)).await;
    assert_eq!(err.code(), ErrorCode::StateLimitExceeded, "{err}");
    publish(&n.reader, &lim, input("lim:x", "null", Some("a"), Some(Op::Delete))).await;
    publish(&n.writer, &lim, input("lim:x", "3", Some("c"), None)).await;
    let err =
        refused(&n.writer, &Namespace::default(), input("orders", "1", Some("k"), None)).await;
    assert_eq!(err.code(), ErrorCode::NotKeyed, "{err}");
    let [a, b] = n.both();
    let (sa, sb) = (state(a, &lim, "lim:x").await, state(b, &lim, "lim:x").await);
    assert_eq!((sa.epoch.as_str(), sa.offset), (sb.epoch.as_str(), sb.offset));
    assert_eq!(rows(&sa.records), rows(&sb.records));
    assert_eq!(sa.offset, 4);
    assert_eq!(rows(&sa.records), [("b".into(), json!({"v": 2}), 2), ("c".into(), json!(3), 4)]);
}

/// Keys count toward `max_state_bytes` (a merge's too), a delete frees its key's bytes, and a key
/// longer than `max_key_bytes` is refused with 107.
pub async fn keys_count_toward_state_bytes_and_have_a_length_limit(n: Nodes) {
    let ns = Namespace {
        keyed: true,
        max_state_bytes: 1000,
        max_key_bytes: 200,
        ..Namespace::default()
    };
    let key = |i: usize| format!("{i:0>200}");
    // Four records of a 200-byte key and a 1-byte value: 804 bytes; a fifth would be 1005.
    for i in 0..4 {
        publish(&n.writer, &ns, input("kb:1", "1", Some(&key(i)), None)).await;
    }
    let err = refused(&n.writer, &ns, input("kb:1", "1", Some(&key(4)), None)).await;
    assert!(matches!(err, EngineError::StateLimit(_)), "{err}");
    let err = refused(&n.reader, &ns, input("kb:1", "{}", Some(&key(5)), Some(Op::Merge))).await;
    assert!(matches!(err, EngineError::StateLimit(_)), "a merge counts its key too: {err}");
    publish(&n.reader, &ns, input("kb:1", "null", Some(&key(0)), Some(Op::Delete))).await;
    publish(&n.writer, &ns, input("kb:1", "1", Some(&key(4)), None)).await;
    let err = refused(&n.writer, &ns, input("kb:1", "1", Some(&"x".repeat(201)), None)).await;
    assert_eq!(err.code(), ErrorCode::BadRequest, "{err}");
    assert!(err.to_string().contains("max_key_bytes"), "{err}");
    let st = state(&n.reader, &ns, "kb:1").await;
    assert_eq!((st.offset, st.records.len()), (6, 4));
}

/// A keyed resume that cannot be served carries the records at the current position (whatever
/// the reason); a served one carries none unless asked; `snapshot: true` returns them sorted by
/// key; a channel that is not keyed never gets one.
pub async fn keyed_resume_not_recovered_carries_a_snapshot(n: Nodes) {
    let board = Namespace { keyed: true, history_size: 2, ..Namespace::default() };
    publish(&n.writer, &board, input("board:1", r#"{"s":"todo"}"#, Some("t1"), None)).await;
    let merge = input("board:1", r#"{"s":"done","w":1}"#, Some("t1"), Some(Op::Merge));
    let p = publish(&n.writer, &board, merge).await;
    let expected = [("t1".to_string(), json!({"s": "done", "w": 1}), 2)];
    let r = n.subscribe(&board, "board:1", Some(&at("gone", 1)), false).await;
    assert_eq!((r.recovered, r.reason), (Some(false), Some(NotRecovered::EpochChanged)));
    assert_eq!((r.epoch.as_str(), r.offset, r.keyed), (p.epoch.as_str(), 2, true));
    assert_eq!(rows(r.snapshot.as_deref().expect("a snapshot")), expected);
    let st = state(&n.reader, &board, "board:1").await;
    assert_eq!((st.offset, rows(&st.records)), (2, expected.to_vec()));

    publish(&n.writer, &board, input("board:1", "1", Some("a"), None)).await;
    publish(&n.writer, &board, input("board:1", "2", Some("b"), None)).await;
    let r = recover(&n.reader, &board, "board:1", Some(&at(&p.epoch, 0)), false).await;
    assert_eq!(r.reason, Some(NotRecovered::HistoryTrimmed));
    let keys: Vec<_> = r.snapshot.unwrap().iter().map(|r| r.key.clone()).collect();
    assert_eq!((r.offset, keys), (4, vec!["a".to_string(), "b".into(), "t1".into()]));
    let r = recover(&n.reader, &board, "board:1", Some(&at(&p.epoch, 3)), false).await;
    assert_eq!((r.recovered, r.snapshot.is_none()), (Some(true), true));
    let r = recover(&n.reader, &board, "board:1", None, true).await;
    let keys: Vec<_> = r.snapshot.unwrap().iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, ["a", "b", "t1"], "sorted by key");

    let plain = Namespace::default();
    publish(&n.writer, &plain, input("feed:x", "1", None, None)).await;
    let r = recover(&n.reader, &plain, "feed:x", Some(&at("gone", 1)), true).await;
    assert_eq!(
        (r.keyed, r.reason, r.snapshot.is_none()),
        (false, Some(NotRecovered::EpochChanged), true)
    );
}

/// A model of a keyed channel's state, built from a snapshot and the publications after it.
fn apply(model: &mut BTreeMap<String, Value>, p: &herald_protocol::Publication) {
    let key = p.key.clone().expect("a keyed publication");
    let data: Value = serde_json::from_str(p.data.get()).unwrap();
    match p.op.expect("a keyed publication has an op") {
        Op::Upsert => {
            model.insert(key, data);
        }
        Op::Delete => {
            model.remove(&key);
        }
        Op::Merge => json_patch::merge(model.entry(key).or_insert(Value::Null), &data),
    }
}

/// Publications total in the hammer.
const HAMMER_PUBS: usize = 1500;
/// Keys the hammer spreads them over.
const HAMMER_KEYS: usize = 200;
/// Subscribers that take a snapshot while it runs.
const HAMMER_SUBSCRIBERS: u64 = 16;

/// Upserts, merges and deletes over many keys through both nodes (16 in flight) while
/// subscribers take a snapshot at moments spread over the run: each snapshot plus the stream
/// after it is the final state, with contiguous offsets after the snapshot.
pub async fn snapshot_plus_stream_equals_final_state(n: Nodes) {
    let ns = Namespace {
        keyed: true,
        history_size: HAMMER_PUBS,
        max_recover: HAMMER_PUBS,
        ..Namespace::default()
    };
    // How many publishes have been answered, for the subscribers to pick their moments.
    let (progress, mut done) = tokio::sync::watch::channel(0usize);
    let publisher = {
        let (nodes, ns) = ([n.writer.clone(), n.reader.clone()], ns.clone());
        tokio::spawn(async move {
            let mut in_flight = tokio::task::JoinSet::new();
            for i in 0..HAMMER_PUBS {
                let key = format!("k{}", (i * 7919) % HAMMER_KEYS);
                let (op, data) = match i % 5 {
                    0 | 1 => (Op::Upsert, json!({"i": i, "tags": [], "meta": {}, "s": "todo"})),
                    2 | 3 => (
                        Op::Merge,
                        json!({"s": if i % 2 == 0 { json!("done") } else { Value::Null },
                                                "n": {"deep": i}, "arr": [i, {}]}),
                    ),
                    _ => (Op::Delete, Value::Null),
                };
                let (node, ns) = (nodes[i % 2].clone(), ns.clone());
                let publish = input("kv:h", &data.to_string(), Some(&key), Some(op));
                in_flight.spawn(async move { node.publish(&ns, publish).await.unwrap() });
                if in_flight.len() >= 16 {
                    in_flight.join_next().await.unwrap().unwrap();
                    progress.send_modify(|answered| *answered += 1);
                }
            }
            in_flight.join_all().await;
        })
    };
    let mut snapshots = Vec::new();
    for c in 0..HAMMER_SUBSCRIBERS {
        // Subscriber c takes its snapshot once the stream is past c / 16 of the run.
        let target = c as usize * HAMMER_PUBS / HAMMER_SUBSCRIBERS as usize;
        let moment = done.wait_for(|answered| *answered >= target);
        tokio::time::timeout(DELIVERY_WITHIN, moment).await.expect("publisher progress").unwrap();
        let r = n.subscribe(&ns, "kv:h", None, true).await;
        let model: BTreeMap<String, Value> = r
            .snapshot
            .expect("snapshot: true")
            .iter()
            .map(|rec| (rec.key.clone(), serde_json::from_str(rec.value.get()).unwrap()))
            .collect();
        snapshots.push((r.offset, model));
    }
    publisher.await.unwrap();
    let last = HAMMER_PUBS as u64;
    let delivered = n.delivered.wait_for("kv:h", last).await;
    let fin = state(&n.reader, &ns, "kv:h").await;
    assert_eq!(fin.offset, last);
    let truth: BTreeMap<String, Value> =
        rows(&fin.records).into_iter().map(|(k, v, _)| (k, v)).collect();
    assert!(!truth.is_empty());
    assert!(snapshots.iter().any(|(at, _)| *at > 0 && *at < last), "snapshots during the run");
    for (i, (at, mut model)) in snapshots.into_iter().enumerate() {
        let stream = after(&delivered, at);
        assert_eq!(offsets(&stream), (at + 1..=last).collect::<Vec<_>>(), "subscriber {i}");
        for p in &stream {
            apply(&mut model, &publication(p));
        }
        assert_eq!(model, truth, "subscriber {i} (snapshot at {at})");
    }
    assert_eq!(n.delivered.resets(), 0, "no resubscribe");
}
