//! Positions, resume and history pages: offsets grow by one, a resume gets exactly what was
//! missed and then live publications, or the reason it cannot, and history pages forward from a
//! position or back from the newest.

use crate::nodes::*;
use herald_protocol::command::HistoryQuery;
use herald_protocol::reply::NotRecovered;
use herald_server::config::Namespace;
use serde_json::json;

/// Offsets grow by one from 1 in the epoch a reader was told; history keeps the last
/// `history_size`; the verdicts of a resume at every kind of position.
pub async fn offsets_history_and_recovery(n: Nodes) {
    let ns = Namespace { history_size: 3, max_recover: 10, ..Namespace::default() };
    let first = recover(&n.reader, &ns, "c", None, false).await;
    assert_eq!(first.offset, 0);
    for i in 1..=5 {
        let r = publish(&n.writer, &ns, input("c", "1", None, None)).await;
        assert_eq!((r.epoch.as_str(), r.offset), (first.epoch.as_str(), i));
        assert_eq!(r.id, format!("{}-{i}", first.epoch));
        assert!(!r.duplicate);
    }
    let pos = |offset| at(&first.epoch, offset);
    let r = recover(&n.reader, &ns, "c", Some(&pos(2)), false).await;
    assert_eq!((r.recovered, r.reason, r.offset), (Some(true), None, 5));
    assert_eq!(offsets(&r.publications), [3, 4, 5]);
    let r = recover(&n.reader, &ns, "c", Some(&pos(1)), false).await;
    assert_eq!((r.recovered, r.reason), (Some(false), Some(NotRecovered::HistoryTrimmed)));
    assert!(r.publications.is_empty());
    let r = recover(&n.reader, &ns, "c", Some(&pos(5)), false).await;
    assert_eq!((r.recovered, r.publications.len()), (Some(true), 0));
    let r = recover(&n.reader, &ns, "c", Some(&at("zzz", 5)), false).await;
    assert_eq!(r.reason, Some(NotRecovered::EpochChanged));
    let r = recover(&n.reader, &ns, "c", Some(&pos(99)), false).await;
    assert_eq!(r.reason, Some(NotRecovered::EpochChanged));
    let tight = Namespace { max_recover: 1, ..ns.clone() };
    let r = recover(&n.reader, &tight, "c", Some(&pos(3)), false).await;
    assert_eq!(r.reason, Some(NotRecovered::TooMany));
    let q =
        HistoryQuery { channel: "c".into(), limit: Some(2), before: Some(5), ..Default::default() };
    assert_eq!(offsets(&history(&n.reader, &ns, q).await.publications), [3, 4]);
}

/// A subscriber leaves, 50 publications happen (through the other node), it resumes with its
/// last position: exactly those 50 in order, then live ones through its node's delivery, with no
/// gap and no duplicate. A channel that never had a publication resumes from the position of its
/// first reply without loss.
pub async fn resume_recovers_exactly_what_was_missed_then_live(n: Nodes) {
    let ns = Namespace::default();
    for i in 0..5 {
        publish(&n.writer, &ns, input("r", &i.to_string(), None, None)).await;
    }
    let first = n.subscribe(&ns, "r", None, false).await;
    assert_eq!((first.offset, first.recovered), (5, None));
    n.reader.unlisten("r").await;
    for i in 0..50 {
        publish(&n.writer, &ns, input("r", &json!({"missed": i}).to_string(), None, None)).await;
    }
    let back = n.subscribe(&ns, "r", Some(&at(&first.epoch, 5)), false).await;
    assert_eq!((back.recovered, back.reason, back.offset), (Some(true), None, 55));
    assert_eq!(offsets(&back.publications), (6..=55).collect::<Vec<_>>());
    let missed: Vec<_> = data(&back.publications).iter().map(|d| d["missed"].clone()).collect();
    assert_eq!(missed, (0..50).map(|i| json!(i)).collect::<Vec<_>>());
    assert!(back.publications.iter().all(|p| *p.epoch == *first.epoch));
    // Live ones, published through either node.
    for i in 0..5 {
        let via = n.both()[i % 2];
        publish(via, &ns, input("r", &json!({"live": i}).to_string(), None, None)).await;
    }
    let live = after(&n.delivered.wait_for("r", 60).await, back.offset);
    assert_eq!(offsets(&live), (56..=60).collect::<Vec<_>>(), "live after the reply, once each");
    let seen: Vec<_> = back.publications.iter().chain(&live).cloned().collect();
    assert_eq!(offsets(&seen), (6..=60).collect::<Vec<_>>());
    assert_eq!(n.delivered.resets(), 0, "no resubscribe");
    n.reader.unlisten("r").await;

    // A channel that never had a publication has a position too.
    let empty = n.subscribe(&ns, "fresh", None, false).await;
    assert_eq!(empty.offset, 0);
    n.reader.unlisten("fresh").await;
    publish(&n.writer, &ns, input("fresh", "\"a\"", None, None)).await;
    publish(&n.writer, &ns, input("fresh", "\"b\"", None, None)).await;
    let r = recover(&n.reader, &ns, "fresh", Some(&at(&empty.epoch, 0)), false).await;
    assert_eq!(r.recovered, Some(true));
    assert_eq!(data(&r.publications), [json!("a"), json!("b")]);
}

/// Beyond the kept history: `history_trimmed` (at the current position, nothing partial);
/// beyond the recovery cap: `too_many`; another epoch or a position ahead of the stream:
/// `epoch_changed`; what is kept and within the cap recovers.
pub async fn not_recovered_reasons(n: Nodes) {
    let short = Namespace { history_size: 5, ..Namespace::default() };
    let cap = Namespace { history_size: 100, max_recover: 3, ..Namespace::default() };
    let mut epochs = (String::new(), String::new());
    for i in 0..10 {
        epochs.0 =
            publish(&n.writer, &short, input("short:x", &i.to_string(), None, None)).await.epoch;
        epochs.1 = publish(&n.writer, &cap, input("cap:x", &i.to_string(), None, None)).await.epoch;
    }
    let (short_epoch, cap_epoch) = epochs;
    for since in [0, 1, 4] {
        let r = recover(&n.reader, &short, "short:x", Some(&at(&short_epoch, since)), false).await;
        assert_eq!((r.recovered, r.reason), (Some(false), Some(NotRecovered::HistoryTrimmed)));
        assert_eq!((r.epoch.as_str(), r.offset), (short_epoch.as_str(), 10));
        assert!(r.publications.is_empty() && r.snapshot.is_none(), "no partial recovery");
    }
    let r = recover(&n.reader, &short, "short:x", Some(&at(&short_epoch, 5)), false).await;
    assert_eq!(r.recovered, Some(true), "the last 5 are kept");
    assert_eq!(offsets(&r.publications), [6, 7, 8, 9, 10]);

    let r = recover(&n.reader, &cap, "cap:x", Some(&at(&cap_epoch, 2)), false).await;
    assert_eq!((r.recovered, r.reason), (Some(false), Some(NotRecovered::TooMany)));
    assert!(r.publications.is_empty());
    let r = recover(&n.reader, &cap, "cap:x", Some(&at(&cap_epoch, 7)), false).await;
    assert_eq!((r.recovered, offsets(&r.publications)), (Some(true), vec![8, 9, 10]));

    let r = recover(&n.reader, &cap, "cap:x", Some(&at("not-this-epoch", 3)), false).await;
    assert_eq!((r.recovered, r.reason), (Some(false), Some(NotRecovered::EpochChanged)));
    assert_eq!((r.epoch.as_str(), r.offset), (cap_epoch.as_str(), 10), "the current position");
    assert!(r.publications.is_empty());
    let r = recover(&n.reader, &cap, "cap:x", Some(&at(&cap_epoch, 11)), false).await;
    assert_eq!(r.reason, Some(NotRecovered::EpochChanged), "ahead of the stream");
    let r = recover(&n.reader, &cap, "cap:x", Some(&at(&cap_epoch, 10)), false).await;
    assert_eq!((r.recovered, r.publications.len()), (Some(true), 0), "at the head");
}

/// History pages from every node: the newest (`limit`), back from `before`, forward from
/// `since`, the page bound, `earliest`/`offset`, `history_trimmed` for a `since` no longer kept,
/// and the empty position of a channel never published.
pub async fn history_pages(n: Nodes) {
    let short = Namespace { history_size: 5, ..Namespace::default() };
    let cap = Namespace { history_size: 100, max_recover: 3, ..Namespace::default() };
    let feed = Namespace { history_size: 100, max_recover: 60, ..Namespace::default() };
    let mut epoch = String::new();
    for i in 0..10 {
        epoch =
            publish(&n.writer, &short, input("short:x", &i.to_string(), None, None)).await.epoch;
        publish(&n.writer, &cap, input("cap:x", &i.to_string(), None, None)).await;
    }
    let mut feed_epoch = String::new();
    for i in 0..70 {
        feed_epoch =
            publish(&n.writer, &feed, input("feed:9", &i.to_string(), None, None)).await.epoch;
    }
    let q = |channel: &str,
             limit: Option<usize>,
             before: Option<u64>,
             since: Option<(&str, u64)>| {
        HistoryQuery { channel: channel.into(), limit, before, since: since.map(|(e, o)| at(e, o)) }
    };
    for node in n.both() {
        let h = history(node, &cap, q("cap:x", Some(3), None, None)).await;
        assert_eq!(offsets(&h.publications), [8, 9, 10]);
        assert_eq!((h.offset, h.earliest, h.reason), (10, 1, None));
        let h = history(node, &cap, q("cap:x", Some(3), Some(8), None)).await;
        assert_eq!(offsets(&h.publications), [5, 6, 7]);
        let cap_epoch = h.epoch.clone();
        let h = history(node, &cap, q("cap:x", Some(2), None, Some((&cap_epoch, 4)))).await;
        assert_eq!(offsets(&h.publications), [5, 6]);
        let h = history(node, &short, q("short:x", None, None, None)).await;
        assert_eq!(
            (offsets(&h.publications), h.earliest, h.epoch.as_str()),
            (vec![6, 7, 8, 9, 10], 6, epoch.as_str())
        );
        let h = history(node, &short, q("short:x", None, None, Some((&epoch, 2)))).await;
        assert_eq!((h.reason, h.publications.len()), (Some(NotRecovered::HistoryTrimmed), 0));
        let h = history(node, &short, q("never-published", None, None, None)).await;
        assert_eq!((h.offset, h.earliest, h.publications.len()), (0, 0, 0));

        let h = history(node, &feed, q("feed:9", Some(5), None, None)).await;
        assert_eq!(offsets(&h.publications), [66, 67, 68, 69, 70]);
        let h = history(node, &feed, q("feed:9", Some(3), Some(66), None)).await;
        assert_eq!(offsets(&h.publications), [63, 64, 65]);
        let h = history(node, &feed, q("feed:9", Some(2), None, Some((&feed_epoch, 10)))).await;
        assert_eq!(offsets(&h.publications), [11, 12]);
        let h = history(node, &feed, q("feed:9", Some(2), None, None)).await;
        assert_eq!(offsets(&h.publications), [69, 70]);
        // A page never holds more than the hub's bound, whatever the limit asks.
        let wide = q("feed:9", Some(50), None, None);
        let page = herald_server::rules::history(&**node, &feed, &wide, 4).await.unwrap();
        assert_eq!(offsets(&page.publications), [67, 68, 69, 70]);
    }
}

/// History with `since` follows the rule of subscribe: another epoch or an offset ahead of the
/// stream is `epoch_changed`, on a used channel and on one without a stream.
pub async fn history_since_ahead_is_epoch_changed(n: Nodes) {
    let ns = Namespace::default();
    let q = |epoch: &str, offset| HistoryQuery {
        channel: "c".into(),
        since: Some(at(epoch, offset)),
        ..Default::default()
    };
    let empty = recover(&n.reader, &ns, "c", None, false).await.epoch;
    assert_eq!(history(&n.reader, &ns, q(&empty, 0)).await.reason, None);
    let h = history(&n.reader, &ns, q(&empty, 3)).await;
    assert_eq!(h.reason, Some(NotRecovered::EpochChanged));
    for _ in 0..5 {
        publish(&n.writer, &ns, input("c", "1", None, None)).await;
    }
    let h = history(&n.reader, &ns, q(&empty, 99)).await;
    assert_eq!((h.reason, h.offset), (Some(NotRecovered::EpochChanged), 5));
    assert!(h.publications.is_empty());
    let h = history(&n.reader, &ns, q("another", 2)).await;
    assert_eq!(h.reason, Some(NotRecovered::EpochChanged));
    let h = history(&n.reader, &ns, q(&empty, 5)).await;
    assert_eq!((h.reason, h.publications.len()), (None, 0));
    let h = history(&n.reader, &ns, q(&empty, 2)).await;
    assert_eq!(offsets(&h.publications), [3, 4, 5]);
}
