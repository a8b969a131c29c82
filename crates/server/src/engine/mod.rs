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
use herald_protocol::reply::PublishResult;
use herald_protocol::{ErrorCode, Meta, Op, Record};
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

/// Which kept publications a [`Engine::read`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// None: the position (and records) only.
    Nothing,
    /// The first `limit` kept publications with an offset above `after`.
    After { after: u64, limit: usize },
    /// The last `limit` kept publications with an offset below `before` (`None`: up to the
    /// newest).
    Before { before: Option<u64>, limit: usize },
}

/// One atomic read of a channel's stream: its position, what it keeps, and the part asked for.
/// A channel without a stream reads as its empty position (offset 0, nothing kept).
#[derive(Debug, Default)]
pub struct StreamRead {
    /// Current epoch.
    pub epoch: String,
    /// Offset of the last publication (0: none yet).
    pub offset: u64,
    /// Lowest kept offset (0 when nothing is kept).
    pub earliest: u64,
    /// The window asked for, oldest first, contiguous offsets.
    pub publications: Vec<Arc<Encoded>>,
    /// The keyed records at `offset`, sorted by key, when asked for.
    pub records: Option<Vec<Record>>,
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
    /// The record does not fit the namespace's entity.
    #[error("{0}")]
    InvalidRecord(String),
    /// A fault inside the engine.
    #[error("engine fault: {0}")]
    Internal(String),
}

impl From<crate::keyed::KeyedError> for EngineError {
    fn from(e: crate::keyed::KeyedError) -> EngineError {
        use crate::keyed::KeyedError;
        match e {
            KeyedError::NotKeyed(m) => EngineError::NotKeyed(m),
            KeyedError::BadRequest(m) => EngineError::BadRequest(m),
            KeyedError::InvalidRecord(m) => EngineError::InvalidRecord(m),
            KeyedError::Internal(m) => EngineError::Internal(m),
        }
    }
}

impl PublishInput {
    /// The record this publication changes and how, checked against its namespace.
    pub fn keyed(&self, ns: &Namespace) -> Result<Option<(String, Op)>, EngineError> {
        Ok(crate::keyed::keyed_op(ns, &self.channel, self.key.as_deref(), self.op)?)
    }
}

impl EngineError {
    /// The protocol error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::Unavailable(_) => ErrorCode::Unavailable,
            EngineError::StateLimit(_) => ErrorCode::StateLimitExceeded,
            EngineError::NotKeyed(_) => ErrorCode::NotKeyed,
            EngineError::BadRequest(_) => ErrorCode::BadRequest,
            EngineError::InvalidRecord(_) => ErrorCode::InvalidRecord,
            EngineError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// What a node tells a clustered engine about itself: its line in `/api/info`, plus its
/// subscriber counts per channel for `/api/channels`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    /// Node id.
    pub id: String,
    /// The address it listens on.
    pub address: String,
    /// Open connections.
    pub connections: usize,
    /// Subscriptions of those connections.
    pub subscriptions: i64,
    /// Herald version.
    pub version: String,
    /// Channels with subscribers on this node.
    #[serde(default)]
    pub channels: usize,
    /// Seconds since the node started.
    #[serde(default)]
    pub uptime_secs: u64,
    /// Subscribers per channel (the registry carries them; `/api/info` leaves them out).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub channel_counts: std::collections::BTreeMap<String, usize>,
}

/// How a clustered engine reads the node's report when it refreshes its registration; `None`
/// once the node is gone.
pub type NodeReporter = Arc<dyn Fn() -> Option<NodeReport> + Send + Sync>;

/// Where the engine hands live publications to this node's subscribers.
pub trait Delivery: Send + Sync + 'static {
    /// Delivers a publication to local subscribers. Called in offset order per channel.
    fn deliver(&self, publication: Arc<Encoded>);
    /// The node can no longer vouch for the stream of `channel` (gap, lost connection, new
    /// epoch): every local subscriber must resubscribe. `None` means every channel.
    fn reset(&self, channel: Option<&str>);
    /// Delivers a volatile event (no offset, no history) to local subscribers of `channel`.
    fn deliver_volatile(&self, channel: &str, frame: Arc<str>);
}

/// Storage and ordering of channels.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Connects the engine to this node's fan-out; called once before use.
    fn attach(&self, fanout: Arc<dyn Delivery>);
    /// Assigns the next offset, appends to history, updates keyed state and fans the publication
    /// out to every node, in one atomic step.
    async fn publish(
        &self,
        ns: &Namespace,
        input: PublishInput,
    ) -> Result<PublishResult, EngineError>;
    /// Publishes only if the record `input.key` is stored as `expected` (`OFFSET:JSON` of its
    /// last write, `-` for absent); `None` (nothing published) when it is not. Presence leaves
    /// use it, so a member that joined again elsewhere is not removed.
    async fn publish_if(
        &self,
        ns: &Namespace,
        input: PublishInput,
        expected: &str,
    ) -> Result<Option<PublishResult>, EngineError>;
    /// Sends a volatile event to every node's subscribers of `channel`: kept nowhere, no offset.
    async fn publish_volatile(&self, channel: &str, frame: Arc<str>) -> Result<(), EngineError>;
    /// Notes that node `node` holds presence members on the presence stream `channel`, so that
    /// another node removes them if `node` dies (a clustered engine; default: nothing).
    async fn presence_track(&self, _node: &str, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }
    /// Nodes not in `alive` that noted presence members, with their presence streams.
    async fn presence_orphans(
        &self,
        _alive: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, EngineError> {
        Ok(Vec::new())
    }
    /// Forgets what `node` noted (its members were removed).
    async fn presence_forget(&self, _node: &str) -> Result<(), EngineError> {
        Ok(())
    }
    /// This node now has subscribers on `channel`: live publications must reach [`Delivery`]
    /// from the moment this returns.
    async fn listen(&self, channel: &str) -> Result<(), EngineError>;
    /// This node has no more subscribers on `channel`.
    async fn unlisten(&self, channel: &str);
    /// Waits until live publications of a listened `channel` reach [`Delivery`] (a clustered
    /// engine's subscription is confirmed); `unavailable` when that cannot be vouched for in
    /// time. Default: at once.
    async fn flowing(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }
    /// Reads a channel's position, a window of its history and (`records`) its keyed state in
    /// one atomic step; creates nothing. What the read means for a subscriber is decided by
    /// [`crate::rules`], not here.
    async fn read(
        &self,
        ns: &Namespace,
        channel: &str,
        window: Window,
        records: bool,
    ) -> Result<StreamRead, EngineError>;
    /// Takes or renews the lease `name` for `holder` (this node) for `ttl`: true while no other
    /// holder has it. One node at a time runs what the lease guards (a bridge's source).
    /// Default (a single node): always true.
    async fn lease(
        &self,
        _name: &str,
        _holder: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, EngineError> {
        Ok(true)
    }
    /// Whether the engine can serve right now (for `/ready`).
    async fn ready(&self) -> bool;
    /// Periodic housekeeping (the hub calls it every minute): the memory engine drops idle,
    /// empty streams so ephemeral channels do not accumulate. Default: nothing.
    async fn maintain(&self, _config: &crate::config::Config) {}
    /// Tells the engine which node it serves, once the hub exists, so a clustered engine can
    /// register the node (heartbeat with the reporter's answer). Default: nothing.
    fn attach_node(&self, _reporter: NodeReporter) {}
    /// The node is shutting down: withdraw its registration. Default: nothing.
    async fn detach_node(&self) {}
    /// Bytes of history and state this engine holds in this process, and its budget for them
    /// (0: unbounded); `None` when the engine keeps them elsewhere (Redis).
    fn memory(&self) -> Option<(usize, usize)> {
        None
    }
    /// Every live node of the cluster as `/api/info` lists them; `None` when the engine has no
    /// cluster view (single node) or cannot reach it right now.
    async fn nodes(&self) -> Option<Vec<NodeReport>> {
        None
    }
    /// Subscriber counts per channel across every node, sorted by channel; `None` when the
    /// engine has no cluster view, and the node's own counts are the answer.
    async fn channel_counts(&self) -> Option<Vec<(String, usize)>> {
        None
    }
    /// Latencies of the round trips this engine made to its backing store (Redis), read at
    /// scrape time for `/metrics`; `None` when it makes none (memory engine).
    fn round_trips(&self) -> Option<RoundTripSnapshot> {
        None
    }
}

/// Upper bounds (seconds) of the round-trip latency buckets.
pub const ROUND_TRIP_BOUNDS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// A lock-free latency histogram an engine records its round trips in: one relaxed atomic add
/// per bucket hit, sum and count, so recording costs nothing next to the round trip itself.
#[derive(Default)]
pub struct RoundTrips {
    /// Round trips per bucket of [`ROUND_TRIP_BOUNDS`] (not cumulative); the last slot is
    /// slower than every bound.
    buckets: [std::sync::atomic::AtomicU64; ROUND_TRIP_BOUNDS.len() + 1],
    /// Total nanoseconds, for the mean.
    sum_nanos: std::sync::atomic::AtomicU64,
}

/// What [`RoundTrips`] held when read.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundTripSnapshot {
    /// (upper bound in seconds, round trips in that bucket and not a lower one), ending with
    /// an infinite bound.
    pub buckets: Vec<(f64, u64)>,
    /// Seconds spent in all of them.
    pub sum_seconds: f64,
    /// How many.
    pub count: u64,
}

impl RoundTrips {
    /// Records one round trip.
    pub fn record(&self, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let seconds = took.as_secs_f64();
        let at =
            ROUND_TRIP_BOUNDS.iter().position(|b| seconds <= *b).unwrap_or(ROUND_TRIP_BOUNDS.len());
        self.buckets[at].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(took.as_nanos().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    /// The buckets, sum and count so far.
    pub fn snapshot(&self) -> RoundTripSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (at, bucket) in self.buckets.iter().enumerate() {
            let n = bucket.load(Relaxed);
            total += n;
            buckets.push((ROUND_TRIP_BOUNDS.get(at).copied().unwrap_or(f64::INFINITY), n));
        }
        let sum_seconds = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        RoundTripSnapshot { buckets, sum_seconds, count: total }
    }
}

/// A fresh random epoch token.
pub fn new_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..10).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// Server time as RFC 3339 UTC with milliseconds. Formatted once per millisecond per thread:
/// every publication is stamped, and at tens of thousands per second most share a millisecond.
pub fn now_rfc3339() -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    LAST.with_borrow_mut(|(at, text)| {
        if *at != ms {
            *at = ms;
            *text = herald_protocol::compact::format_time_ms(ms).unwrap_or_default();
        }
        text.clone()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_time_is_herald_format_and_current() {
        let before = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let text = super::now_rfc3339();
        let after = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let ms = i128::from(herald_protocol::compact::time_ms(&text).expect("Herald's format"));
        assert!(before <= ms && ms <= after, "{before} <= {ms} <= {after}");
        assert_eq!(text.len(), 24);
        assert_eq!(super::now_rfc3339().len(), 24, "the cached text is whole");
    }
}
