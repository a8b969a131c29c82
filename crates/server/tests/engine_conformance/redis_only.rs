//! What only the Redis engine has: the bytes it stores, read back with a plain connection, and a
//! store that can lose its data under running nodes.

use crate::nodes::*;
use herald_protocol::reply::NotRecovered;
use herald_protocol::{Meta, Op, Publication};
use herald_server::config::Namespace;
use serde_json::value::RawValue;

/// The history entries `offset:unix_ms:json` of a channel, as `publish.lua` wrote them.
async fn history_entries(n: &Nodes, channel: &str) -> Vec<String> {
    let key = format!("herald:{{{}:{channel}}}:hist", channel.len());
    let mut conn = n.redis().await;
    redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query_async(&mut conn).await.unwrap()
}

/// Every stored history entry is `offset:unix_ms:` and then exactly the JSON serde writes for
/// the [`Publication`] the publish answered (every field: channel, epoch, offset, id, type,
/// data, time, meta, key and op), and those are the bytes history reads and live delivery hand
/// out. Channel, type, metadata and key hold characters JSON must escape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_entries_round_trip_through_publication() {
    let n = redis().await;
    let ns = Namespace { keyed: true, ..Namespace::default() };
    let channel = "room:é\"1";
    n.reader.listen(channel).await.unwrap();
    n.reader.flowing(channel).await.unwrap();
    let odd = Meta {
        user: Some("a\"l\\ice".into()),
        source: Some("api".into()),
        correlation_id: Some("c-1".into()),
        idempotency_key: Some("k\u{1}".into()),
    };
    let cases = [
        (Meta::default(), Some(("rec\n1", Op::Upsert))),
        (odd, Some(("rec\n1", Op::Merge))),
        (Meta { source: Some("client".into()), ..Meta::default() }, Some(("k", Op::Delete))),
    ];
    let started = herald_server::auth::unix_now() * 1000;
    let mut published = Vec::new();
    for (meta, keyed) in cases {
        let input = herald_server::engine::PublishInput {
            channel: channel.into(),
            kind: "t\"ype".into(),
            data: RawValue::from_string(r#"{"a": [1, 2], "b":"x"}"#.into()).unwrap(),
            key: keyed.map(|(k, _)| k.into()),
            op: keyed.map(|(_, op)| op),
            meta,
        };
        let result = publish(&n.writer, &ns, input.clone()).await;
        published.push((input, result));
    }
    let finished = (herald_server::auth::unix_now() + 1) * 1000;
    let entries = history_entries(&n, channel).await;
    assert_eq!(entries.len(), published.len());
    let kept = history(
        &n.reader,
        &ns,
        herald_protocol::command::HistoryQuery { channel: channel.into(), ..Default::default() },
    )
    .await
    .publications;
    let live = n.delivered.wait_for(channel, published.len() as u64).await;
    for (i, (entry, (input, result))) in entries.iter().zip(&published).enumerate() {
        // As the engine reads an entry: offset, then the time it was kept, then the JSON.
        let (offset, rest) = entry.split_once(':').expect("offset:");
        let (unix_ms, json) = rest.split_once(':').expect("unix_ms:");
        assert_eq!(offset.parse::<u64>().unwrap(), result.offset);
        let unix_ms: u64 = unix_ms.parse().unwrap();
        assert!((started..=finished).contains(&unix_ms), "{unix_ms} not in {started}..{finished}");
        let p: Publication = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!(p.channel, input.channel);
        assert_eq!((&p.epoch, p.offset, &p.id), (&result.epoch, result.offset, &result.id));
        assert_eq!(p.id, format!("{}-{}", p.epoch, p.offset));
        assert_eq!(p.kind, input.kind);
        assert_eq!(p.data.get(), input.data.get(), "data is kept byte for byte");
        assert_eq!(p.time, result.time);
        assert_eq!(p.meta, input.meta);
        assert_eq!((&p.key, p.op), (&input.key, input.op));
        assert_eq!(serde_json::to_string(&p).unwrap(), json, "exactly what serde writes");
        assert_eq!(kept[i].publication_json(), json, "history reads hand out the stored bytes");
        assert_eq!(live[i].publication_json(), json, "live delivery hands out the same bytes");
    }
    n.reader.unlisten(channel).await;
}

/// The `bytes` counter of a channel's meta holds keys and values, as `max_state_bytes` counts
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_bytes_counter_holds_keys_and_values() {
    let n = redis().await;
    let ns = Namespace { keyed: true, max_key_bytes: 200, ..Namespace::default() };
    let key = |i: usize| format!("{i:0>200}");
    for i in 0..5 {
        publish(&n.writer, &ns, input("kb:1", "1", Some(&key(i)), None)).await;
    }
    publish(&n.reader, &ns, input("kb:1", "null", Some(&key(0)), Some(Op::Delete))).await;
    let mut conn = n.redis().await;
    let bytes: u64 = redis::cmd("HGET")
        .arg("herald:{4:kb:1}:meta")
        .arg("bytes")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(bytes, 4 * 201, "four records of a 200-byte key and a 1-byte value");
}

/// Lost data (FLUSHALL) takes the epoch seed with it: the channel's next stream has another
/// epoch, so positions of the lost one are never reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_data_gives_the_next_stream_another_epoch() {
    let n = redis().await;
    let ns = Namespace::default();
    let told = recover(&n.reader, &ns, "fresh", None, false).await;
    let p = publish(&n.writer, &ns, input("fresh", "\"one\"", None, None)).await;
    assert_eq!((p.epoch.as_str(), p.offset), (told.epoch.as_str(), 1));
    let mut conn = n.redis().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let again = publish(&n.writer, &ns, input("fresh", "\"two\"", None, None)).await;
    assert_ne!(again.epoch, p.epoch);
    assert_eq!(again.offset, 1);
    let r = recover(&n.reader, &ns, "fresh", Some(&at(&told.epoch, 1)), false).await;
    assert_eq!(r.reason, Some(NotRecovered::EpochChanged));
}

/// A conditional publish takes upserts and deletes only (presence needs no more): a merge is a
/// bad request, and nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_if_refuses_a_merge() {
    let n = redis().await;
    let ns = Namespace { keyed: true, ..Namespace::default() };
    let merge = input("kv:m", r#"{"a":1}"#, Some("k"), Some(Op::Merge));
    let err = n.writer.publish_if(&ns, merge, "-").await.expect_err("a merge is refused");
    assert!(matches!(err, herald_server::engine::EngineError::BadRequest(_)), "{err:?}");
    assert_eq!(state(&n.reader, &ns, "kv:m").await.offset, 0);
}

/// Volatile events reach only nodes that listen to the channel (pub/sub), in the order they
/// were sent on one connection: once the event of a listened channel sent after one of an
/// unlistened channel arrived, the unlistened one would have arrived before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_events_reach_listening_nodes_only() {
    let n = redis().await;
    n.reader.listen("loud").await.unwrap();
    n.writer.publish_volatile("quiet", "q".into()).await.unwrap();
    n.writer.publish_volatile("loud", "l".into()).await.unwrap();
    assert_eq!(
        n.delivered.wait_volatile("loud", 1).await,
        ["l".into()] as [std::sync::Arc<str>; 1]
    );
    assert!(n.delivered.volatile_of("quiet").is_empty());
    n.reader.unlisten("loud").await;
}

/// What `presence_track` stores: a set per node holding the stream names byte for byte (with
/// their control character), and the set of tracking nodes; `presence_forget` removes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_notes_are_sets_per_node() {
    let n = redis().await;
    let stream = "\u{1}presence:room:{1}";
    n.writer.presence_track("node-a", stream).await.unwrap();
    let mut conn = n.redis().await;
    let smembers = async |conn: &mut redis::aio::MultiplexedConnection, key: &str| {
        let members: Vec<String> = redis::cmd("SMEMBERS").arg(key).query_async(conn).await.unwrap();
        members
    };
    assert_eq!(smembers(&mut conn, "herald:presence:node:node-a").await, [stream]);
    assert_eq!(smembers(&mut conn, "herald:presence:nodes").await, ["node-a"]);
    n.reader.presence_forget("node-a").await.unwrap();
    let left: Vec<String> =
        redis::cmd("KEYS").arg("herald:presence:*").query_async(&mut conn).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}
