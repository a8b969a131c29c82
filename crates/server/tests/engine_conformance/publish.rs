//! What a publish answers (idempotency, server time) and what reads do not do: create a stream,
//! or change the epoch the first publish gets.

use crate::nodes::*;
use herald_protocol::command::HistoryQuery;
use herald_protocol::reply::NotRecovered;
use herald_server::config::Namespace;
use herald_server::engine::now_rfc3339;

/// The same idempotency key, through either node, gets the first result again with
/// `duplicate: true` and publishes nothing; the next publication takes the next offset.
pub async fn idempotency_returns_the_first_result(n: Nodes) {
    let ns = Namespace::default();
    let mut once = input("orders", r#"{"n":1}"#, None, None);
    once.meta.idempotency_key = Some("op-77".into());
    let first = publish(&n.writer, &ns, once.clone()).await;
    let again = publish(&n.reader, &ns, once.clone()).await;
    let third = publish(&n.writer, &ns, once).await;
    assert_eq!((first.offset, first.duplicate), (1, false));
    for dup in [&again, &third] {
        assert!(dup.duplicate);
        assert_eq!((&dup.epoch, dup.offset, &dup.id), (&first.epoch, first.offset, &first.id));
    }
    let next = publish(&n.reader, &ns, input("orders", "2", None, None)).await;
    assert_eq!((next.offset, next.duplicate), (2, false));
    let h =
        history(&n.reader, &ns, HistoryQuery { channel: "orders".into(), ..Default::default() });
    assert_eq!(offsets(&h.await.publications), [1, 2], "the duplicates published nothing");
}

/// A publication's time is the server's, RFC 3339 UTC with milliseconds, and the history keeps
/// the time the publish answered.
pub async fn publish_time_is_rfc3339_milliseconds(n: Nodes) {
    let ns = Namespace::default();
    let before = now_rfc3339();
    let p = publish(&n.writer, &ns, input("clock", "1", None, None)).await;
    let after = now_rfc3339();
    let shape: String = p.time.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect();
    assert_eq!(shape, "9999-99-99T99:99:99.999Z", "{}", p.time);
    assert!(p.time[..10] == before[..10] || p.time[..10] == after[..10], "{} vs {before}", p.time);
    let h = history(&n.reader, &ns, HistoryQuery { channel: "clock".into(), ..Default::default() });
    let kept = publication(&h.await.publications[0]);
    assert_eq!((kept.time, kept.id), (p.time, p.id));
}

/// Subscribe, history and state reads of never-used channels (through both nodes) store nothing
/// for them, and every node answers the same empty epoch; a subscriber told the empty position
/// gets the first publication, made through the other node, as offset 1 of that epoch, with no
/// resubscribe (plain and keyed); history `since` ahead of it is `epoch_changed`.
pub async fn reads_create_nothing_and_the_first_publish_keeps_the_told_epoch(n: Nodes) {
    let ns = Namespace::default();
    let kv = Namespace { keyed: true, ..Namespace::default() };
    let q = |c: &str| HistoryQuery { channel: c.into(), ..Default::default() };
    for i in 0..20 {
        let c = format!("never-{i}");
        let told = recover(&n.reader, &ns, &c, None, false).await;
        assert_eq!((told.offset, told.recovered), (0, None));
        let r = recover(&n.reader, &ns, &c, Some(&at("other", 3)), false).await;
        assert_eq!(r.reason, Some(NotRecovered::EpochChanged));
        for node in n.both() {
            let h = history(node, &ns, q(&c)).await;
            assert_eq!((h.offset, h.earliest, h.publications.len()), (0, 0, 0));
            assert_eq!(h.epoch, told.epoch, "every read and node answers the same empty epoch");
            let st = state(node, &kv, &format!("kv:{i}")).await;
            assert_eq!((st.offset, st.records.len()), (0, 0));
        }
        let snap = recover(&n.reader, &kv, &format!("kv:{i}"), None, true).await;
        assert_eq!(snap.snapshot.map(|s| s.len()), Some(0));
    }
    n.assert_no_channel_stored().await;

    let told = n.subscribe(&ns, "untouched", None, false).await;
    let told_kv = n.subscribe(&kv, "kv:untouched", None, true).await;
    assert_eq!((told.offset, told_kv.offset), (0, 0));
    let p = publish(&n.writer, &ns, input("untouched", "\"first\"", None, None)).await;
    assert_eq!((p.epoch.as_str(), p.offset), (told.epoch.as_str(), 1));
    let pk = publish(&n.writer, &kv, input("kv:untouched", "1", Some("k"), None)).await;
    assert_eq!((pk.epoch.as_str(), pk.offset), (told_kv.epoch.as_str(), 1));
    let seen = n.delivered.wait_for("untouched", 1).await;
    assert_eq!((&*seen[0].epoch, offsets(&seen)), (told.epoch.as_str(), vec![1]));
    let seen = n.delivered.wait_for("kv:untouched", 1).await;
    assert_eq!((&*seen[0].epoch, offsets(&seen)), (told_kv.epoch.as_str(), vec![1]));
    assert_eq!(n.delivered.resets(), 0, "no resubscribe");
    let r = recover(&n.writer, &ns, "untouched", Some(&at(&told.epoch, 0)), false).await;
    assert_eq!((r.recovered, r.publications.len()), (Some(true), 1));
    let ahead = HistoryQuery { since: Some(at(&told.epoch, 99)), ..q("untouched") };
    assert_eq!(history(&n.reader, &ns, ahead).await.reason, Some(NotRecovered::EpochChanged));
    n.reader.unlisten("untouched").await;
    n.reader.unlisten("kv:untouched").await;
}
