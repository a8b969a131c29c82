//! What a case runs against: two nodes of one engine ([`Nodes`]), what the subscribing node
//! delivered ([`Collect`]), and the hub's reads ([`herald_server::rules`]) as one-line calls.

use herald_protocol::command::HistoryQuery;
use herald_protocol::reply::PublishResult;
use herald_protocol::{Meta, Op, Position, Publication};
use herald_server::config::Namespace;
use herald_server::engine::memory::MemoryEngine;
use herald_server::engine::{Delivery, Engine, EngineError, PublishInput};
use herald_server::frame::Encoded;
use herald_server::rules::{self, History, Recovery, State};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;

/// How long a case waits for a live publication to reach the subscribing node.
pub const DELIVERY_WITHIN: Duration = Duration::from_secs(10);

/// What a node's subscribers would have received.
#[derive(Default)]
pub struct Collect {
    /// Every delivered publication, in delivery order.
    pubs: Mutex<Vec<Arc<Encoded>>>,
    /// `reset` calls: the node could no longer vouch for a stream.
    resets: Mutex<usize>,
    /// Every volatile event delivered: (channel, frame).
    volatiles: Mutex<Vec<(String, Arc<str>)>>,
    /// Wakes [`Collect::wait_for`] on every delivery.
    arrived: tokio::sync::Notify,
}

impl Delivery for Collect {
    fn deliver(&self, publication: Arc<Encoded>) {
        self.pubs.lock().push(publication);
        self.arrived.notify_waiters();
    }
    fn reset(&self, _channel: Option<&str>) {
        *self.resets.lock() += 1;
        self.arrived.notify_waiters();
    }
    fn deliver_volatile(&self, channel: &str, frame: Arc<str>) {
        self.volatiles.lock().push((channel.to_string(), frame));
        self.arrived.notify_waiters();
    }
}

impl Collect {
    /// The publications of `channel` delivered so far, in delivery order.
    pub fn of(&self, channel: &str) -> Vec<Arc<Encoded>> {
        self.pubs.lock().iter().filter(|p| &*p.channel == channel).cloned().collect()
    }

    /// The volatile events of `channel` delivered so far.
    pub fn volatile_of(&self, channel: &str) -> Vec<Arc<str>> {
        self.volatiles.lock().iter().filter(|(c, _)| c == channel).map(|(_, f)| f.clone()).collect()
    }

    /// Waits until `count` volatile events of `channel` were delivered; then what
    /// [`Collect::volatile_of`] answers.
    pub async fn wait_volatile(&self, channel: &str, count: usize) -> Vec<Arc<str>> {
        let deadline = tokio::time::Instant::now() + DELIVERY_WITHIN;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            // Registered before the check, so a delivery in between still wakes it.
            arrived.as_mut().enable();
            let events = self.volatile_of(channel);
            if events.len() >= count {
                return events;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("{channel}: {count} volatile events not delivered (got {events:?})");
            }
        }
    }

    /// How many times the node was told to resubscribe its subscribers.
    pub fn resets(&self) -> usize {
        *self.resets.lock()
    }

    /// Waits until a publication of `channel` at `offset` or later was delivered; then what
    /// [`Collect::of`] answers.
    pub async fn wait_for(&self, channel: &str, offset: u64) -> Vec<Arc<Encoded>> {
        let deadline = tokio::time::Instant::now() + DELIVERY_WITHIN;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            // Registered before the check, so a delivery in between still wakes it.
            arrived.as_mut().enable();
            let pubs = self.of(channel);
            if pubs.iter().any(|p| p.offset >= offset) {
                return pubs;
            }
            let last = pubs.last().map(|p| p.offset);
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("{channel}: offset {offset} not delivered (last delivered {last:?})");
            }
        }
    }
}

/// What a subscriber of the reading node sees after a subscribe reply at `offset`: the node's
/// deliveries after that position (the hub drops the ones the reply already covered).
pub fn after(delivered: &[Arc<Encoded>], offset: u64) -> Vec<Arc<Encoded>> {
    delivered.iter().filter(|p| p.offset > offset).cloned().collect()
}

/// Where a case's engine keeps its data, to look at it from outside.
enum Backend {
    /// The memory engine (both nodes are this one).
    Memory(Arc<MemoryEngine>),
    /// A `redis-server` of this case alone, killed when the case ends.
    #[cfg(feature = "redis")]
    Redis(herald_testkit::RedisProcess),
}

/// Two nodes of one engine: a case publishes through `writer` and subscribes, resumes and reads
/// through `reader`, as a publisher and a subscriber connected to different nodes would.
pub struct Nodes {
    /// The node publications are made through.
    pub writer: Arc<dyn Engine>,
    /// The node subscribers are on (for the memory engine, the same engine as `writer`).
    pub reader: Arc<dyn Engine>,
    /// What `reader` delivered to its subscribers.
    pub delivered: Arc<Collect>,
    /// The store under both nodes.
    backend: Backend,
}

/// One memory engine, both nodes.
pub async fn memory() -> Nodes {
    let engine = Arc::new(MemoryEngine::new());
    let delivered = Arc::new(Collect::default());
    engine.attach(delivered.clone());
    Nodes {
        writer: engine.clone(),
        reader: engine.clone(),
        delivered,
        backend: Backend::Memory(engine),
    }
}

/// Two Redis engines on one fresh `redis-server`.
#[cfg(feature = "redis")]
pub async fn redis() -> Nodes {
    use herald_server::config::{EngineConfig, EngineKind};
    use herald_server::engine::redis::RedisEngine;
    let process = herald_testkit::RedisProcess::start();
    let config = EngineConfig {
        kind: EngineKind::Redis,
        redis_url: process.url(),
        ..EngineConfig::default()
    };
    let node = async |delivery: Arc<Collect>| {
        let engine = Arc::new(RedisEngine::new(&config).unwrap());
        engine.attach(delivery);
        assert!(engine.wait_connected(Duration::from_secs(5)).await, "redis pub/sub up");
        engine
    };
    let writer = node(Arc::new(Collect::default())).await;
    let delivered = Arc::new(Collect::default());
    let reader = node(delivered.clone()).await;
    Nodes { writer, reader, delivered, backend: Backend::Redis(process) }
}

impl Nodes {
    /// Both nodes, writer first.
    pub fn both(&self) -> [&Arc<dyn Engine>; 2] {
        [&self.writer, &self.reader]
    }

    /// What a subscriber on the reading node does: listen, then read the position (and what
    /// `since` or `snapshot` asks for). Live publications after the answer reach `delivered`.
    pub async fn subscribe(
        &self,
        ns: &Namespace,
        channel: &str,
        since: Option<&Position>,
        snapshot: bool,
    ) -> Recovery {
        self.reader.listen(channel).await.unwrap();
        recover(&self.reader, ns, channel, since, snapshot).await
    }

    /// Whether the nodes are separate engines over a shared store (Redis), which track
    /// presence per node; the memory engine is one node and tracks nothing.
    pub fn clustered(&self) -> bool {
        !matches!(self.backend, Backend::Memory(_))
    }

    /// Panics when the store holds anything for a channel (reads must create nothing).
    pub async fn assert_no_channel_stored(&self) {
        match &self.backend {
            Backend::Memory(engine) => assert_eq!(engine.stream_count(), 0, "reads made a stream"),
            #[cfg(feature = "redis")]
            Backend::Redis(_) => {
                let mut conn = self.redis().await;
                let keys: Vec<String> =
                    redis::cmd("KEYS").arg("herald:*").query_async(&mut conn).await.unwrap();
                // Only the hub-wide seed of empty channels' epochs may exist.
                let per_channel: Vec<_> =
                    keys.iter().filter(|k| *k != "herald:epoch_seed").collect();
                assert!(per_channel.is_empty(), "reads wrote keys: {per_channel:?}");
            }
        }
    }

    /// A plain connection to the case's `redis-server`, to look at what the engine stored.
    #[cfg(feature = "redis")]
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let Backend::Redis(process) = &self.backend else { panic!("not a Redis case") };
        let client = redis::Client::open(process.url()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }
}

/// A publish as the hub hands it to the engine (type `t`, no metadata).
pub fn input(channel: &str, data: &str, key: Option<&str>, op: Option<Op>) -> PublishInput {
    PublishInput {
        channel: channel.into(),
        kind: "t".into(),
        data: RawValue::from_string(data.into()).unwrap(),
        key: key.map(Into::into),
        op,
        meta: Meta::default(),
    }
}

/// Publishes through `engine`; panics on an error.
pub async fn publish(
    engine: &Arc<dyn Engine>,
    ns: &Namespace,
    input: PublishInput,
) -> PublishResult {
    engine.publish(ns, input).await.unwrap()
}

/// Publishes through `engine`; the error it must fail with.
pub async fn refused(engine: &Arc<dyn Engine>, ns: &Namespace, input: PublishInput) -> EngineError {
    engine.publish(ns, input).await.expect_err("the publish is refused")
}

/// [`rules::recover`] as the hub calls it.
pub async fn recover(
    engine: &Arc<dyn Engine>,
    ns: &Namespace,
    channel: &str,
    since: Option<&Position>,
    snapshot: bool,
) -> Recovery {
    rules::recover(&**engine, ns, channel, since, snapshot).await.unwrap()
}

/// [`rules::history`] with a page bound of 100, as the hub calls it.
pub async fn history(engine: &Arc<dyn Engine>, ns: &Namespace, q: HistoryQuery) -> History {
    rules::history(&**engine, ns, &q, 100).await.unwrap()
}

/// [`rules::state`] as the hub calls it.
pub async fn state(engine: &Arc<dyn Engine>, ns: &Namespace, channel: &str) -> State {
    rules::state(&**engine, ns, channel).await.unwrap()
}

/// A position.
pub fn at(epoch: &str, offset: u64) -> Position {
    Position { epoch: epoch.into(), offset }
}

/// The offsets of publications, in their order.
pub fn offsets(pubs: &[Arc<Encoded>]) -> Vec<u64> {
    pubs.iter().map(|p| p.offset).collect()
}

/// A publication as subscribers receive it.
pub fn publication(p: &Encoded) -> Publication {
    serde_json::from_str(p.publication_json()).unwrap()
}

/// The `data` of publications, parsed, in their order.
pub fn data(pubs: &[Arc<Encoded>]) -> Vec<serde_json::Value> {
    pubs.iter().map(|p| serde_json::from_str(publication(p).data.get()).unwrap()).collect()
}
