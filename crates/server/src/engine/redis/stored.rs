//! The forms the engine stores in Redis and sends over pub/sub, and their parsing: pub/sub
//! messages `epoch:offset:[change]json`, idempotency records `epoch:offset:time`, history
//! entries `offset:unix_ms:[change]json`, state records `offset:json`, and the publication JSON
//! the publish script assembles.
//!
//! # Record changes
//!
//! On namespaces with views ([`crate::config::Namespace::views`]) a keyed write keeps its old
//! and new record with the publication ([`RecordChange`]), so that every node's views decide
//! insert, update or delete live and when a resume replays the history. The publish script puts
//! it before the publication JSON of the history entry and of the pub/sub message:
//!
//! ```text
//! R<klen>,<blen>,<alen>:<key><before><after>
//! ```
//!
//! where the lengths are decimal byte lengths of the record key, of the record before the write
//! and of the record after it (the merged value of a merge), `-1` for no record (an insert's
//! before, a delete's after; the part is then empty). The publication JSON follows right after.
//! A publication JSON always starts with `{`, so entries written without a change (other
//! namespaces, non-keyed writes, data stored before changes were kept) read as before.

use crate::engine::{EngineError, PublishInput};
use crate::frame::{Encoded, RecordChange};
use herald_protocol::{Op, Record};
use serde_json::value::RawValue;
use std::sync::Arc;

/// What starts a volatile event's pub/sub message: `!` never starts an epoch (epochs are
/// alphanumeric, see [`crate::engine::new_epoch`] and `common.lua`), so no publication reads
/// as one.
const VOLATILE: &str = "!v:";

/// The pub/sub message of a volatile event: the marker, then the frame.
pub(super) fn volatile_message(frame: &str) -> String {
    format!("{VOLATILE}{frame}")
}

/// The frame of a volatile event's pub/sub message; `None` for a publication.
pub(super) fn split_volatile(message: &str) -> Option<&str> {
    message.strip_prefix(VOLATILE)
}

/// Splits `epoch:offset:json` (pub/sub messages, idempotency records).
pub(super) fn split_message(s: &str) -> Option<(&str, u64, &str)> {
    let (epoch, rest) = s.split_once(':')?;
    let (offset, json) = rest.split_once(':')?;
    Some((epoch, offset.parse().ok()?, json))
}

/// Splits a history entry `offset:unix_ms:[change]json` into its offset and the rest (the
/// optional change and the JSON, for [`split_change`]).
fn split_entry(s: &str) -> Option<(u64, &str)> {
    let (offset, rest) = s.split_once(':')?;
    let (_ms, json) = rest.split_once(':')?;
    Some((offset.parse().ok()?, json))
}

/// One length of a change prefix: bytes, or `-1` for no record.
fn change_len(s: &str) -> Option<Option<usize>> {
    if s == "-1" { Some(None) } else { s.parse().ok().map(Some) }
}

/// Takes `len` bytes off the front of `rest` as a record (`None` length: no record).
fn take_record(rest: &mut &str, len: Option<usize>) -> Option<Option<Arc<RawValue>>> {
    let Some(len) = len else { return Some(None) };
    let (json, tail) = (rest.get(..len)?, rest.get(len..)?);
    *rest = tail;
    let value = RawValue::from_string(json.to_string()).ok()?;
    Some(Some(Arc::from(value)))
}

/// Splits the optional record change off the front of `[change]json` (see the module docs).
/// `None`: a malformed change.
pub(super) fn split_change(s: &str) -> Option<(Option<RecordChange>, &str)> {
    let Some(prefixed) = s.strip_prefix('R') else { return Some((None, s)) };
    let (lens, mut rest) = prefixed.split_once(':')?;
    let mut lens = lens.splitn(3, ',');
    let klen: usize = lens.next()?.parse().ok()?;
    let blen = change_len(lens.next()?)?;
    let alen = change_len(lens.next()?)?;
    let key = rest.get(..klen)?.to_string();
    rest = rest.get(klen..)?;
    let before = take_record(&mut rest, blen)?;
    let after = take_record(&mut rest, alen)?;
    Some((Some(RecordChange { key, before, after }), rest))
}

/// The frame of a publication as stored or sent (`[change]json`), with its record change.
pub(super) fn encoded(channel: &str, epoch: &str, offset: u64, stored: &str) -> Option<Encoded> {
    let (change, json) = split_change(stored)?;
    Some(Encoded::from_json(channel, epoch, offset, json).with_change(change.map(Arc::new)))
}

/// Splits a stored record `offset:json`.
pub(super) fn split_record(s: &str) -> Option<(u64, &str)> {
    let (offset, json) = s.split_once(':')?;
    Some((offset.parse().ok()?, json))
}

/// The pieces of a publication's JSON around what only the script knows (epoch, offset, id,
/// time). The script joins them as
/// `head,"epoch":E,"offset":O,"id":"E-O"` + `mid` + `,"time":T` + `tail`, which is exactly what
/// serde writes for [`herald_protocol::Publication`] (a unit test holds the two together).
pub(super) fn publication_parts(
    input: &PublishInput,
    keyed: Option<&(String, Op)>,
) -> (String, String, String) {
    // Written by hand (herald_protocol::json): once per publish, and serde's formatter cost
    // more than the rest of the engine's own work (docs/benchmarks.md).
    use herald_protocol::json::push_str;
    let mut head = String::with_capacity(16 + input.channel.len());
    head.push_str("{\"channel\":");
    push_str(&mut head, &input.channel);
    let mut mid = String::with_capacity(24 + input.kind.len() + input.data.get().len());
    mid.push_str(",\"type\":");
    push_str(&mut mid, &input.kind);
    mid.push_str(",\"data\":");
    mid.push_str(input.data.get());
    let mut tail = String::new();
    if !input.meta.is_empty() {
        tail.push_str(",\"meta\":");
        input.meta.write_json(&mut tail);
    }
    if let Some((key, op)) = keyed {
        tail.push_str(",\"key\":");
        push_str(&mut tail, key);
        tail.push_str(",\"op\":");
        push_str(&mut tail, op.as_str());
    }
    tail.push('}');
    (head, mid, tail)
}

/// Records from a flat `HGETALL` (key, `offset:json`, ...), sorted by key.
pub(super) fn records(flat: Vec<String>) -> Result<Vec<Record>, EngineError> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(key), Some(stored)) = (it.next(), it.next()) {
        let (offset, json) = split_record(&stored)
            .ok_or_else(|| EngineError::Internal(format!("corrupt state record {key:?}")))?;
        let value = RawValue::from_string(json.to_string())
            .map_err(|e| EngineError::Internal(format!("corrupt state record {key:?}: {e}")))?;
        out.push(Record { key, value, offset });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Frames of history entries read from `channel` in `epoch`.
pub(super) fn encoded_entries(
    channel: &str,
    epoch: &str,
    entries: &[String],
) -> Result<Vec<Arc<Encoded>>, EngineError> {
    entries
        .iter()
        .map(|e| {
            split_entry(e)
                .and_then(|(offset, rest)| encoded(channel, epoch, offset, rest))
                .map(Arc::new)
                .ok_or_else(|| EngineError::Internal("corrupt history entry".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_stored_forms() {
        assert_eq!(split_message("ab:12:{\"x\":\"a:b\"}"), Some(("ab", 12, "{\"x\":\"a:b\"}")));
        assert_eq!(split_entry("7:1700000000000:[1]"), Some((7, "[1]")));
        assert_eq!(split_record("9:{\"k\":\"v:w\"}"), Some((9, "{\"k\":\"v:w\"}")));
        assert_eq!(split_message("nope"), None);
        let recs = records(vec!["b".into(), "2:2".into(), "a".into(), "1:{}".into()]).unwrap();
        assert_eq!(recs.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    /// A volatile message reads back as its frame, and no publication (of any epoch
    /// `new_epoch` or the empty-epoch hash makes) reads as a volatile one.
    #[test]
    fn volatile_messages_are_not_publications() {
        let frame = r#"{"volatile":{"channel":"c","data":"1:2:x"}}"#;
        let msg = volatile_message(frame);
        assert_eq!(split_volatile(&msg), Some(frame));
        for _ in 0..200 {
            let publication = format!("{}:3:{{}}", crate::engine::new_epoch());
            assert_eq!(split_volatile(&publication), None);
        }
        assert_eq!(split_volatile("0123456789ab:1:{}"), None);
    }

    /// The change prefix exactly as `publish.lua` builds it: `string.format('R%d,%d,%d:', #rkey,
    /// blen, alen) .. rkey .. before .. after`, with Lua's `#` (bytes) and -1 for no record.
    fn lua_change(key: &str, before: Option<&str>, after: Option<&str>) -> String {
        let len = |v: Option<&str>| v.map_or(-1, |v| v.len() as i64);
        format!(
            "R{},{},{}:{key}{}{}",
            key.len(),
            len(before),
            len(after),
            before.unwrap_or(""),
            after.unwrap_or("")
        )
    }

    fn parts(c: &RecordChange) -> (&str, Option<&str>, Option<&str>) {
        (
            c.key.as_str(),
            c.before.as_deref().map(RawValue::get),
            c.after.as_deref().map(RawValue::get),
        )
    }

    const PUB: &str = r#"{"channel":"t:b","epoch":"E","offset":3,"key":"k","op":"merge"}"#;

    #[test]
    fn record_changes_round_trip_through_entries_and_messages() {
        // Keys and values with the separators, multi-byte text (lengths are bytes), an insert
        // (no before), an update, a delete (no after), a write on no record at all.
        for (key, before, after) in [
            ("t1", None, Some(r#"{"s":"todo"}"#)),
            ("a:b,R-1", Some(r#"{"s":"R3,4,5:x"}"#), Some(r#"{"s":"é✓:"}"#)),
            ("clé✓", Some(r#"{"n":[1,2]}"#), None),
            ("", None, None),
        ] {
            let change = lua_change(key, before, after);
            let entry = format!("3:1700000000000:{change}{PUB}");
            let got = encoded_entries("t:b", "E", &[entry]).unwrap();
            assert_eq!(got[0].offset, 3);
            assert_eq!(got[0].publication_json(), PUB);
            assert_eq!(parts(got[0].change.as_deref().unwrap()), (key, before, after));

            let message = format!("E:3:{change}{PUB}");
            let (epoch, offset, rest) = split_message(&message).unwrap();
            let frame = encoded("t:b", epoch, offset, rest).unwrap();
            assert_eq!((&*frame.epoch, frame.offset, frame.publication_json()), ("E", 3, PUB));
            assert_eq!(parts(frame.change.as_deref().unwrap()), (key, before, after));
        }
    }

    #[test]
    fn entries_without_a_change_read_as_before() {
        // Written before changes were kept, or on a namespace without views.
        let got = encoded_entries("t:b", "E", &[format!("3:1700000000000:{PUB}")]).unwrap();
        assert_eq!(got[0].publication_json(), PUB);
        assert!(got[0].change.is_none());
        let frame = encoded("t:b", "E", 3, PUB).unwrap();
        assert!(frame.change.is_none());
    }

    #[test]
    fn malformed_changes_are_refused() {
        for bad in [
            "R2,1:ab1{}".to_string(),     // a length missing
            "R2,x,1:ab1{}".to_string(),   // not a number
            "R9,-1,-1:ab{}".to_string(),  // longer than the rest
            "R1,-1,2:é{}".to_string(),    // inside a multi-byte character
            "R1,-1,3:k{x}{}".to_string(), // the record is not JSON
            "R1,-1,-1".to_string(),       // no colon
        ] {
            assert!(split_change(&bad).is_none(), "{bad}");
            let entry = format!("3:1700000000000:{bad}");
            assert!(encoded_entries("t:b", "E", &[entry]).is_err(), "{bad}");
        }
    }
}
