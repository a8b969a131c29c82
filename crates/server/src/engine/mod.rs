//! The engine seam: where offsets, history, keyed state and cross-node fan-out live.
//!
//! Two implementations: [`memory::MemoryEngine`] (single node, the default) and the Redis engine.
//! Each publication is encoded once into an [`Encoded`] frame; the same bytes go to every
//! subscriber and into the history.

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use crate::config::Namespace;
use crate::frame::Encoded;
use async_trait::async_trait;
use herald_protocol::command::HistoryQuery;
use herald_protocol::reply::{NotRecovered, PublishResult};
use herald_protocol::{ErrorCode, Meta, Op, Position, Record};
use serde_json::value::RawValue;
use std::sync::Arc;

/// What a publish asks for, after authorization.
#[derive(Debug, Clone)]
pub struct PublishInput {
    /// Target channel.
    pub channel: String,
    /// Event type.
    pub kind: String,
    /// Payload.
    pub data: Box<RawValue>,
    /// Record key (keyed namespaces).
    pub key: Option<String>,
    /// Record operation; `upsert` when a key comes without one.
    pub op: Option<Op>,
    /// Publisher metadata (its `idempotency_key` drives deduplication).
    pub meta: Meta,
}

/// The answer to a subscribe: where the stream is, and what the subscriber needs to catch up.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Current epoch.
    pub epoch: String,
    /// Current offset; live delivery continues at `offset + 1`.
    pub offset: u64,
    /// Whether the channel is keyed.
    pub keyed: bool,
    /// Present when a `since` was given.
    pub recovered: Option<bool>,
    /// Why not recovered.
    pub reason: Option<NotRecovered>,
    /// Publications after `since`, when recovered.
    pub publications: Vec<Arc<Encoded>>,
    /// Records at `offset`, when asked or when a keyed resume failed.
    pub snapshot: Option<Vec<Record>>,
}

/// A page of history.
#[derive(Debug, Default)]
pub struct History {
    /// Current epoch.
    pub epoch: String,
    /// Current offset.
    pub offset: u64,
    /// Lowest kept offset (0 when empty).
    pub earliest: u64,
    /// The page, oldest first.
    pub publications: Vec<Arc<Encoded>>,
    /// Why `since` could not be served.
    pub reason: Option<NotRecovered>,
}

/// A keyed channel's state.
#[derive(Debug, Default)]
pub struct State {
    /// Epoch of the state.
    pub epoch: String,
    /// Offset the records correspond to.
    pub offset: u64,
    /// Records sorted by key.
    pub records: Vec<Record>,
}

/// Why an engine operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The backing store is unreachable; nothing was done.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// A keyed publish would exceed the state limit.
    #[error("{0}")]
    StateLimit(String),
    /// Keyed operation on a namespace that is not keyed, or a bad key/op combination.
    #[error("{0}")]
    NotKeyed(String),
    /// The request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// A fault inside the engine.
    #[error("engine fault: {0}")]
    Internal(String),
}

impl EngineError {
    /// The protocol error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::Unavailable(_) => ErrorCode::Unavailable,
            EngineError::StateLimit(_) => ErrorCode::StateLimitExceeded,
            EngineError::NotKeyed(_) => ErrorCode::NotKeyed,
            EngineError::BadRequest(_) => ErrorCode::BadRequest,
            EngineError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// Where the engine hands live publications to this node's subscribers.
pub trait Fanout: Send + Sync + 'static {
    /// Delivers a publication to local subscribers. Called in offset order per channel.
    fn deliver(&self, publication: Arc<Encoded>);
    /// The node can no longer vouch for the stream of `channel` (gap, lost connection, new
    /// epoch): every local subscriber must resubscribe. `None` means every channel.
    fn reset(&self, channel: Option<&str>);
}

/// Storage and ordering of channels.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Connects the engine to this node's fan-out; called once before use.
    fn attach(&self, fanout: Arc<dyn Fanout>);
    /// Assigns the next offset, appends to history, updates keyed state and fans the publication
    /// out to every node, in one atomic step.
    async fn publish(
        &self,
        ns: &Namespace,
        input: PublishInput,
    ) -> Result<PublishResult, EngineError>;
    /// This node now has subscribers on `channel`: live publications must reach [`Fanout`]
    /// from the moment this returns.
    async fn listen(&self, channel: &str) -> Result<(), EngineError>;
    /// This node has no more subscribers on `channel`.
    async fn unlisten(&self, channel: &str);
    /// Current position, plus what a subscriber resuming from `since` (or asking for a
    /// snapshot) needs. Must be called after [`Engine::listen`].
    async fn recover(
        &self,
        ns: &Namespace,
        channel: &str,
        since: Option<&Position>,
        snapshot: bool,
    ) -> Result<Recovery, EngineError>;
    /// Reads history.
    async fn history(
        &self,
        ns: &Namespace,
        query: &HistoryQuery,
        max_page: usize,
    ) -> Result<History, EngineError>;
    /// Reads a keyed channel's state.
    async fn state(&self, ns: &Namespace, channel: &str) -> Result<State, EngineError>;
    /// Whether the engine can serve right now (for `/ready`).
    async fn ready(&self) -> bool;
    /// Periodic housekeeping (the hub calls it every minute): the memory engine drops idle,
    /// empty streams so ephemeral channels do not accumulate. Default: nothing.
    async fn maintain(&self, _config: &crate::config::Config) {}
    /// Tells the engine which node it serves, once the hub exists, so a clustered engine can
    /// register the node (heartbeat with its id, address and counts). Default: nothing.
    fn attach_node(&self, _hub: std::sync::Weak<crate::hub::Hub>) {}
    /// The node is shutting down: withdraw its registration. Default: nothing.
    async fn detach_node(&self) {}
    /// Bytes of history and state this engine holds in this process, and its budget for them
    /// (0: unbounded); `None` when the engine keeps them elsewhere (Redis).
    fn memory(&self) -> Option<(usize, usize)> {
        None
    }
    /// Every live node of the cluster as `/api/info` lists them; `None` when the engine has no
    /// cluster view (single node) or cannot reach it right now.
    async fn nodes(&self) -> Option<Vec<serde_json::Value>> {
        None
    }
    /// Subscriber counts per channel across every node, sorted by channel; `None` when the
    /// engine has no cluster view, and the node's own counts are the answer.
    async fn channel_counts(&self) -> Option<Vec<(String, usize)>> {
        None
    }
}

/// A fresh random epoch token.
pub fn new_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..10).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// Server time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc().format(&format).unwrap_or_default()
}

/// Applies a keyed operation to a record's current value; `None` means the record is gone.
pub fn apply_op(
    current: Option<&RawValue>,
    op: Op,
    data: &RawValue,
) -> Result<Option<Box<RawValue>>, EngineError> {
    match op {
        Op::Upsert => Ok(Some(data.to_owned())),
        Op::Delete => Ok(None),
        Op::Merge => {
            let mut value: serde_json::Value = match current {
                Some(raw) => serde_json::from_str(raw.get())
                    .map_err(|e| EngineError::Internal(e.to_string()))?,
                None => serde_json::Value::Null,
            };
            let patch: serde_json::Value = serde_json::from_str(data.get())
                .map_err(|e| EngineError::BadRequest(e.to_string()))?;
            json_patch::merge(&mut value, &patch);
            let text =
                serde_json::to_string(&value).map_err(|e| EngineError::Internal(e.to_string()))?;
            Ok(Some(RawValue::from_string(text).map_err(|e| EngineError::Internal(e.to_string()))?))
        }
    }
}

/// Checks key/op against the namespace and fills the default op.
pub fn keyed_op(ns: &Namespace, input: &PublishInput) -> Result<Option<(String, Op)>, EngineError> {
    match (&input.key, input.op) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(EngineError::NotKeyed("`op` needs a `key`".into())),
        (Some(_), _) if !ns.keyed => Err(EngineError::NotKeyed(format!(
            "namespace of {:?} is not keyed; `key` and `op` are not allowed",
            input.channel
        ))),
        (Some(key), _) if key.len() > ns.max_key_bytes => Err(EngineError::BadRequest(format!(
            "record key is {} bytes; the namespace allows {} (max_key_bytes)",
            key.len(),
            ns.max_key_bytes
        ))),
        (Some(key), op) => Ok(Some((key.clone(), op.unwrap_or(Op::Upsert)))),
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
