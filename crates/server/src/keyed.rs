//! Keyed state: which record a publication changes, and how (`upsert`, `merge`, `delete`).
//!
//! Both engines apply these rules, the memory engine under the stream's lock and the Redis
//! engine before its publish script (merges there are compare-and-set), so a record's value
//! after a publication is the same whichever engine stored it.

use crate::config::Namespace;
use herald_protocol::{ErrorCode, Op};
use serde_json::value::RawValue;

/// Why a keyed operation was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyedError {
    /// `key`/`op` on a namespace that is not keyed, or an `op` without a `key`.
    #[error("{0}")]
    NotKeyed(String),
    /// The key or the merge patch itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// A stored record could not be read back.
    #[error("keyed state fault: {0}")]
    Internal(String),
}

impl KeyedError {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            KeyedError::NotKeyed(_) => ErrorCode::NotKeyed,
            KeyedError::BadRequest(_) => ErrorCode::BadRequest,
            KeyedError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// Applies a keyed operation to a record's current value; `None` means the record is gone.
pub fn apply_op(
    current: Option<&RawValue>,
    op: Op,
    data: &RawValue,
) -> Result<Option<Box<RawValue>>, KeyedError> {
    match op {
        Op::Upsert => Ok(Some(data.to_owned())),
        Op::Delete => Ok(None),
        Op::Merge => {
            let mut value: serde_json::Value = match current {
                Some(raw) => serde_json::from_str(raw.get())
                    .map_err(|e| KeyedError::Internal(e.to_string()))?,
                None => serde_json::Value::Null,
            };
            let patch: serde_json::Value = serde_json::from_str(data.get())
                .map_err(|e| KeyedError::BadRequest(e.to_string()))?;
            json_patch::merge(&mut value, &patch);
            let text =
                serde_json::to_string(&value).map_err(|e| KeyedError::Internal(e.to_string()))?;
            Ok(Some(RawValue::from_string(text).map_err(|e| KeyedError::Internal(e.to_string()))?))
        }
    }
}

/// Checks a publication's key/op against the namespace of `channel` and fills the default op.
pub fn keyed_op(
    ns: &Namespace,
    channel: &str,
    key: Option<&str>,
    op: Option<Op>,
) -> Result<Option<(String, Op)>, KeyedError> {
    match (key, op) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(KeyedError::NotKeyed("`op` needs a `key`".into())),
        (Some(_), _) if !ns.keyed => Err(KeyedError::NotKeyed(format!(
            "namespace of {channel:?} is not keyed; `key` and `op` are not allowed"
        ))),
        (Some(key), _) if key.len() > ns.max_key_bytes => Err(KeyedError::BadRequest(format!(
            "record key is {} bytes; the namespace allows {} (max_key_bytes)",
            key.len(),
            ns.max_key_bytes
        ))),
        (Some(key), op) => Ok(Some((key.to_string(), op.unwrap_or(Op::Upsert)))),
    }
}

/// Bytes a record counts toward `max_state_bytes`: its key and its value, so that many long keys
/// with small values cannot grow a channel's state past the limit.
pub fn record_bytes(key: &str, value: &str) -> usize {
    key.len() + value.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let cur = RawValue::from_string(r#"{"a":1,"b":{"c":2,"d":3}}"#.into()).unwrap();
        let patch = RawValue::from_string(r#"{"a":null,"b":{"c":5},"e":[1]}"#.into()).unwrap();
        let out = apply_op(Some(&cur), Op::Merge, &patch).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(v, serde_json::json!({"b":{"c":5,"d":3},"e":[1]}));
        assert!(apply_op(Some(&cur), Op::Delete, &patch).unwrap().is_none());
    }
}
