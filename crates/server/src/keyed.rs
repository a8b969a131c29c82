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
    /// The record (or merge patch, or merged result) does not fit the namespace's entity.
    #[error("{0}")]
    InvalidRecord(String),
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
            KeyedError::InvalidRecord(_) => ErrorCode::InvalidRecord,
            KeyedError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// Checks a write against the namespace's entity before it is applied: an upsert's `data` must
/// be a whole record, a merge's a patch of one. Nothing to check without an entity, or for a
/// delete.
pub fn check_write(ns: &Namespace, op: Op, data: &RawValue) -> Result<(), KeyedError> {
    let Some(entity) = &ns.entity else { return Ok(()) };
    if op == Op::Delete {
        return Ok(());
    }
    let value: serde_json::Value =
        serde_json::from_str(data.get()).map_err(|e| KeyedError::BadRequest(e.to_string()))?;
    let checked = match op {
        Op::Upsert => herald_spec::schema::validate_record(entity, &value),
        _ => herald_spec::schema::validate_patch(entity, &value),
    };
    checked.map_err(|e| invalid(entity, &e))
}

/// Checks the result of a merge against the namespace's entity.
fn check_merged(ns: &Namespace, merged: &serde_json::Value) -> Result<(), KeyedError> {
    let Some(entity) = &ns.entity else { return Ok(()) };
    herald_spec::schema::validate_record(entity, merged).map_err(|e| invalid(entity, &e))
}

fn invalid(entity: &herald_spec::Entity, e: &herald_spec::schema::ValidationError) -> KeyedError {
    if e.field.is_empty() {
        KeyedError::InvalidRecord(format!("not a {} record: {}", entity.name, e.message))
    } else {
        KeyedError::InvalidRecord(format!("{}.{}: {}", entity.name, e.field, e.message))
    }
}

/// Applies a keyed operation to a record's current value, checked against the namespace's
/// entity ([`check_write`], and the merged result); `None` means the record is gone.
pub fn apply_op(
    ns: &Namespace,
    current: Option<&RawValue>,
    op: Op,
    data: &RawValue,
) -> Result<Option<Box<RawValue>>, KeyedError> {
    check_write(ns, op, data)?;
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
            check_merged(ns, &value)?;
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
        let ns = Namespace::default();
        let out = apply_op(&ns, Some(&cur), Op::Merge, &patch).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(v, serde_json::json!({"b":{"c":5,"d":3},"e":[1]}));
        assert!(apply_op(&ns, Some(&cur), Op::Delete, &patch).unwrap().is_none());
    }
}
