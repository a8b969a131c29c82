//! What presence and volatile events need from an engine: conditional publishes (a leave removes
//! only the member it saw), volatile events (delivered, never stored, no position) and the
//! per-node notes of presence streams that let a live node remove a gone node's members.

use crate::nodes::*;
use herald_protocol::Op;
use herald_protocol::command::HistoryQuery;
use herald_server::config::Namespace;

/// A presence stream name, as `presence.rs` builds them (with its control character).
fn stream(channel: &str) -> String {
    format!("\u{1}presence:{channel}")
}

/// The offset a conditional publish took; `None` when its precondition failed.
async fn publish_if(
    engine: &std::sync::Arc<dyn herald_server::engine::Engine>,
    ns: &Namespace,
    input: herald_server::engine::PublishInput,
    expected: &str,
) -> Option<u64> {
    engine.publish_if(ns, input, expected).await.unwrap().map(|p| p.offset)
}

/// `publish_if` publishes only when the record is stored as `expected` (`OFFSET:JSON`, `-`
/// absent), for upserts and deletes alike, through either node; a failed precondition answers
/// `None`, publishes nothing (no offset taken, nothing delivered, no history) and changes no
/// record.
pub async fn publish_if_checks_the_stored_record(n: Nodes) {
    let ns = Namespace { keyed: true, ..Namespace::default() };
    let ch = stream("room:1");
    n.subscribe(&ns, &ch, None, false).await;
    let member = r#"{"user":"u","client":"1","node":"a","info":null}"#;
    let upsert = || input(&ch, member, Some("u/1"), Some(Op::Upsert));
    let delete = || input(&ch, "null", Some("u/1"), Some(Op::Delete));

    assert_eq!(publish_if(&n.writer, &ns, upsert(), "-").await, Some(1), "absent as told");
    let stored = format!("1:{member}");
    for node in n.both() {
        assert_eq!(publish_if(node, &ns, upsert(), "-").await, None, "present now");
        let stale = format!("0:{member}");
        assert_eq!(publish_if(node, &ns, delete(), &stale).await, None, "wrong offset");
        let other = r#"1:{"user":"u","client":"1","node":"b","info":null}"#;
        assert_eq!(publish_if(node, &ns, delete(), other).await, None, "wrong value");
        assert_eq!(publish_if(node, &ns, upsert(), "").await, None, "matches nothing");
    }
    let st = state(&n.reader, &ns, &ch).await;
    assert_eq!(st.offset, 1, "the refused writes took no offset");
    assert_eq!(st.records.iter().map(|r| r.value.get()).collect::<Vec<_>>(), [member]);

    assert_eq!(publish_if(&n.reader, &ns, delete(), &stored).await, Some(2), "as stored");
    assert_eq!(state(&n.writer, &ns, &ch).await.records.len(), 0);
    assert_eq!(publish_if(&n.writer, &ns, delete(), &stored).await, None, "gone now");
    assert_eq!(publish_if(&n.writer, &ns, upsert(), "-").await, Some(3), "absent again");

    assert_eq!(offsets(&n.delivered.wait_for(&ch, 3).await), [1, 2, 3]);
    let h = history(&n.reader, &ns, HistoryQuery { channel: ch.clone(), ..Default::default() });
    assert_eq!(offsets(&h.await.publications), [1, 2, 3], "only the accepted writes are kept");
    assert_eq!(n.delivered.resets(), 0);
    n.reader.unlisten(&ch).await;
}

/// A volatile event sent through one node reaches the other node's subscribers as it was
/// given, takes no offset, is kept nowhere (a channel with nothing but volatile events stores
/// nothing), and leaves the positions of publications around it contiguous (no resubscribe).
pub async fn volatile_events_take_no_position(n: Nodes) {
    let ns = Namespace::default();
    let frame = |i: u32| -> std::sync::Arc<str> {
        format!(r#"{{"volatile":{{"channel":"chat","type":"typing","data":{i}}}}}"#).into()
    };
    let told = n.subscribe(&ns, "chat", None, false).await;
    assert_eq!(told.offset, 0);
    n.writer.publish_volatile("chat", frame(1)).await.unwrap();
    assert_eq!(n.delivered.wait_volatile("chat", 1).await, [frame(1)]);
    n.assert_no_channel_stored().await;

    publish(&n.writer, &ns, input("chat", "1", None, None)).await;
    n.writer.publish_volatile("chat", frame(2)).await.unwrap();
    n.reader.publish_volatile("chat", frame(3)).await.unwrap();
    let p = publish(&n.writer, &ns, input("chat", "2", None, None)).await;
    assert_eq!(p.offset, 2, "the volatile events took no offset");
    assert_eq!(offsets(&n.delivered.wait_for("chat", 2).await), [1, 2]);
    let events = n.delivered.wait_volatile("chat", 3).await;
    assert_eq!(events.len(), 3);
    assert!(events.contains(&frame(2)) && events.contains(&frame(3)), "{events:?}");
    assert_eq!(n.delivered.of("chat").len(), 2, "no volatile event read as a publication");
    assert_eq!(n.delivered.resets(), 0, "publications around them stay contiguous");
    let h = history(&n.reader, &ns, HistoryQuery { channel: "chat".into(), ..Default::default() });
    assert_eq!(offsets(&h.await.publications), [1, 2], "no volatile event in the history");
    n.reader.unlisten("chat").await;
}

/// A clustered engine remembers, per node, the presence streams it noted, lists those of nodes
/// not alive (from any node), and forgets a node on request; the memory engine (one node) has
/// no other node and lists nothing.
pub async fn presence_tracking_round_trip(n: Nodes) {
    let (s1, s2) = (stream("room:1"), stream("room:2"));
    n.writer.presence_track("node-a", &s1).await.unwrap();
    n.writer.presence_track("node-a", &s2).await.unwrap();
    n.writer.presence_track("node-a", &s1).await.unwrap();
    n.reader.presence_track("node-b", &s1).await.unwrap();
    let alive = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let expect = |v: Vec<(&str, Vec<&String>)>| -> Vec<(String, Vec<String>)> {
        if !n.clustered() {
            return Vec::new();
        }
        v.into_iter().map(|(n, s)| (n.into(), s.into_iter().cloned().collect())).collect()
    };
    for node in n.both() {
        let orphans = node.presence_orphans(&alive(&["node-b"])).await.unwrap();
        assert_eq!(orphans, expect(vec![("node-a", vec![&s1, &s2])]));
        assert_eq!(node.presence_orphans(&alive(&["node-a", "node-b"])).await.unwrap(), []);
    }
    n.reader.presence_forget("node-a").await.unwrap();
    for node in n.both() {
        assert_eq!(node.presence_orphans(&alive(&["node-b"])).await.unwrap(), []);
        let orphans = node.presence_orphans(&[]).await.unwrap();
        assert_eq!(orphans, expect(vec![("node-b", vec![&s1])]));
    }
    n.writer.presence_forget("node-b").await.unwrap();
    assert_eq!(n.reader.presence_orphans(&[]).await.unwrap(), []);
}
