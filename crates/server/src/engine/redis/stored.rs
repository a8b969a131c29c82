//! The forms the engine stores in Redis and sends over pub/sub, and their parsing: pub/sub
//! messages and idempotency records `epoch:offset:json`, history entries
//! `offset:unix_ms:json`, state records `offset:json`, and the publication JSON the publish
//! script assembles.

use super::json;
use crate::engine::{EngineError, PublishInput};
use crate::frame::Encoded;
use herald_protocol::{Op, Record};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Splits `epoch:offset:json` (pub/sub messages, idempotency records).
pub(super) fn split_message(s: &str) -> Option<(&str, u64, &str)> {
    let (epoch, rest) = s.split_once(':')?;
    let (offset, json) = rest.split_once(':')?;
    Some((epoch, offset.parse().ok()?, json))
}

/// Splits a history entry `offset:unix_ms:json` into its offset and JSON.
fn split_entry(s: &str) -> Option<(u64, &str)> {
    let (offset, rest) = s.split_once(':')?;
    let (_ms, json) = rest.split_once(':')?;
    Some((offset.parse().ok()?, json))
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
    let head = format!("{{\"channel\":{}", json(&input.channel));
    let mid = format!(",\"type\":{},\"data\":{}", json(&input.kind), input.data.get());
    let mut tail = String::new();
    if !input.meta.is_empty() {
        tail.push_str(",\"meta\":");
        tail.push_str(&json(&input.meta));
    }
    if let Some((key, op)) = keyed {
        tail.push_str(",\"key\":");
        tail.push_str(&json(key));
        tail.push_str(",\"op\":");
        tail.push_str(&json(op));
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
            let (offset, json) = split_entry(e)
                .ok_or_else(|| EngineError::Internal("corrupt history entry".into()))?;
            Ok(Arc::new(Encoded::from_json(channel, epoch, offset, json)))
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
}
