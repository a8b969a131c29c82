//! The Redis engine: several Herald nodes that behave as one hub.
//!
//! # One atomic step per publication
//!
//! A publication is one Lua script (`redis/publish.lua`, sent with EVALSHA and loaded again when
//! Redis answers NOSCRIPT): idempotency check, keyed-state limits and update, `HINCRBY` of the
//! offset, history append with its count and age bounds, and the `PUBLISH` of the encoded
//! publication to the channel's pub/sub channel. Redis runs scripts one at a time, so the order of
//! a channel is the order in which Redis ran the scripts, whichever node accepted the publish. The
//! publication JSON is assembled inside the script from pieces the node serialized, so every node
//! (and the history) holds identical bytes.
//!
//! # Keys
//!
//! For channel `C` (length `N`) and prefix `P`: `P:{N:C}:meta` (HASH `epoch`, `offset`, `bytes`),
//! `P:{N:C}:hist` (LIST of `offset:unix_ms:[change]json`, contiguous offsets, oldest first; the
//! record change of a keyed write on a namespace with views, see `stored.rs`),
//! `P:{N:C}:state` (HASH record key → `offset:json`), `P:{N:C}:idem:K` (idempotency window),
//! and the pub/sub channel `P:pub:C`. The length prefix keeps names unambiguous whatever the
//! channel contains; the braces keep a channel's keys in one cluster slot. A missing meta key is a
//! lost (or never used) stream: reads answer its empty position and write nothing; the next
//! publish starts it and drops leftovers. The epoch of a channel without a stream is derived from
//! the hub-wide seed `P:epoch_seed` (rotated daily) and the channel, so a subscriber of an empty
//! channel and its first publish agree on it across nodes (see `redis/common.lua`). A lease
//! (`Engine::lease`, one node at a time runs a bridge's source) is the key `P:lease:NAME` holding
//! the holder's node id with a TTL (`redis/lease.lua`). Presence: `P:presence:node:ID` (SET of
//! the presence streams on which node `ID` holds members) and `P:presence:nodes` (SET of the
//! nodes that have one), so that a live node removes a gone node's members. On a Redis Cluster
//! every name carries a hash tag (`keys.rs`): a channel's keys, seed and shard channel that of
//! its partition, `P:{pK}:N:C:meta` … `P:{pK}:pub:C`; the hub-wide keys `P:{g}:…`.
//!
//! # Lost writes
//!
//! Redis that comes back with older data keeps a channel's epoch and reuses its offsets. Each node
//! remembers the highest position it witnessed per channel (`witness.rs`: publish replies,
//! pub/sub messages, reads) and hands it to the publish and read scripts: a stored offset below
//! it in the same epoch starts a new epoch in the same atomic step (`lost_writes` in
//! `common.lua`; the offset continues, the history goes, the records stay), which a resume then
//! reads as `epoch_changed` ([`crate::rules`] decides nothing new). The pub/sub task treats a
//! publication at or below what it delivered, or below what was witnessed before the connection's
//! SUBSCRIBE, as a reused position: the channel's subscribers resync and the channel gets a new
//! epoch (`lost.lua`). A pub/sub connection that reaches another Redis process (`run_id`) checks
//! every witnessed channel. docs/operations.md, "Rollback and lost writes", has the windows.
//!
//! # Fan-out
//!
//! One pub/sub connection per node, subscribed only to channels with local subscribers; the
//! channels a burst of subscribes adds go out in one SUBSCRIBE. One task reads it and checks
//! each publication's position; the delivery to local subscribers runs on a few lanes
//! (`dispatch.rs`, one per core, a channel always on the same lane), so each channel's
//! publications reach [`Delivery::deliver`] in Redis order while different channels fan out in
//! parallel. The task remembers the last position per channel; a gap or an epoch change resets
//! that channel (queued on its lane, after what came before), a lost connection resets every
//! channel once the lanes are drained ([`Delivery::reset`]), and the sessions ask their clients
//! to resubscribe with `since`. A volatile event (`Engine::publish_volatile`) is a plain `PUBLISH`
//! on the same pub/sub channel, marked so it cannot read as a publication (`stored.rs`); it has
//! no position and changes none. `recover` waits until the channel's SUBSCRIBE is confirmed on the
//! current connection before it reads the position, so "subscribed means flowing" holds.
//!
//! # Sentinel and WAIT
//!
//! With a `redis+sentinel://` URL the engine's connections go to the `Target` the follow task
//! (`sentinel.rs`) last resolved through the sentinels; a new master replaces the command
//! connection and bumps a generation that makes the pub/sub task reconnect there (a lost
//! pub/sub connection: every subscriber resumes; the new `run_id` has witnessed channels
//! checked). `engine.redis_wait_replicas` adds `WAIT n timeout` after each publish script, on
//! the connection that ran it (one kept for publications, so that nothing else waits behind a
//! blocked WAIT); too few replicas is `unavailable`, though the publication is stored.
//!
//! # Redis Cluster
//!
//! With a `redis+cluster://` URL the command connection is a cluster connection (routed by slot,
//! following MOVED and failovers), the publish script and volatile events SPUBLISH, and instead
//! of the one pub/sub connection the shards task (`shards.rs`) keeps one RESP3 connection per
//! master and SSUBSCRIBEs each listened channel on the master of its partition. A connection
//! that drops, or whose partitions moved (the slot map is read every second and at once after a
//! drop or a server-side SUNSUBSCRIBE), is closed: its channels are reset on their lanes and
//! confirmed again only once subscribed on their new master, with floors. A changed slot map
//! also reopens the command connection from the current masters (`Inner::reopen_cluster`).
//!
//! # Cluster view
//!
//! Each node writes `P:node:ID` (JSON: id, address, connections, subscriptions, version, channel
//! counts) every [`HEARTBEAT_EVERY`] with a [`HEARTBEAT_TTL`] expiry and lists its id in the set
//! `P:nodes`; `/api/info` and `/api/channels` read them. `detach_node` stops the heartbeat before
//! it deletes the registration.
//!
//! # Layout
//!
//! - `mod.rs`: [`RedisEngine`] and its [`Engine`] impl (publish, read, ready), the state its
//!   tasks share, the Lua scripts and the mapping of Redis errors.
//! - `keys.rs`: the names of keys and pub/sub channels.
//! - `stored.rs`: the stored forms (history entries, records, pub/sub messages, record changes)
//!   and the publication JSON the publish script assembles.
//! - `pubsub.rs`: the pub/sub task (one Redis), the listened channels and the position check of
//!   arriving publications.
//! - `dispatch.rs`: the lanes that hand arriving publications to the local subscribers.
//! - `cluster.rs`: the heartbeat and the cluster view read from every node's registration.
//! - `witness.rs`: the positions this node witnessed, bounded, and the lost-writes checks.
//! - `sentinel.rs`: `redis+sentinel://` URLs, asking the sentinels, following the master.
//! - `shards.rs`: `redis+cluster://` URLs, the slot map and the sharded pub/sub task.

mod cluster;
mod dispatch;
mod keys;
mod pubsub;
mod sentinel;
mod shards;
mod stored;
mod witness;

use super::{
    Delivery, Engine, EngineError, NodeReport, NodeReporter, PublishInput, RoundTripSnapshot,
    RoundTrips, StreamRead, Window, new_epoch,
};
use crate::config::{EngineConfig, Namespace};
use crate::keyed::apply_op;
use async_trait::async_trait;
use herald_protocol::Op;
use herald_protocol::reply::PublishResult;
use parking_lot::Mutex;
use pubsub::Listened;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use stored::{encoded_entries, publication_parts, split_message, split_record};
use tokio::sync::{Notify, mpsc};

/// How long `listen`/`recover` wait for a SUBSCRIBE to be confirmed before answering
/// `unavailable`.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound of one engine operation against Redis; past it the caller gets `unavailable`.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the pub/sub connection is pinged, to notice a silently dead connection.
pub const PUBSUB_PING_EVERY: Duration = Duration::from_secs(1);
/// How often a node refreshes its registration.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A node whose registration is older than this is gone from the cluster view.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(4);
/// Meta keys of non-keyed channels expire after this much idleness (or the history TTL, if
/// longer): an idle stream is then forgotten and its next publish starts a new epoch. Keyed channels
/// keep their state and meta forever.
pub const META_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most channels a node reports in its heartbeat.
pub const HEARTBEAT_MAX_CHANNELS: usize = 10_000;
/// Attempts of a merge whose record changed between read and write.
const MERGE_ATTEMPTS: usize = 50;

/// The Lua scripts; each is the shared prelude followed by its body.
struct Scripts {
    /// One publication (see `redis/publish.lua`).
    publish: redis::Script,
    /// One atomic read: position, a window of history, records (see `redis/read.lua`).
    read: redis::Script,
    /// Take or renew a lease (see `redis/lease.lua`).
    lease: redis::Script,
    /// Check one witnessed position for lost writes (see `redis/lost.lua`).
    lost: redis::Script,
}

impl Scripts {
    fn new() -> Scripts {
        macro_rules! script {
            ($file:literal) => {
                redis::Script::new(concat!(include_str!("common.lua"), include_str!($file)))
            };
        }
        Scripts {
            publish: script!("publish.lua"),
            read: script!("read.lua"),
            // No prelude: the lease touches no stream.
            lease: redis::Script::new(include_str!("lease.lua")),
            lost: script!("lost.lua"),
        }
    }
}

/// The Redis every connection goes to: the URL's, the master the sentinels named last, or a
/// cluster.
struct Target {
    /// The `redis://` URL, to notice a new master (a cluster: its `redis+cluster://` URL).
    url: String,
    /// Connection parameters the standalone pub/sub connection opens from (a cluster's shard
    /// connections open from its slot map instead).
    client: redis::Client,
    /// Commands and scripts (reconnects by itself).
    conn: Conn,
    /// Publications when `engine.redis_wait_replicas` is set: Redis blocks a connection during
    /// `WAIT`, and WAIT counts the writes of the connection it runs on, so the publish script
    /// and its WAIT share this one and reads, heartbeats and subscribes never queue behind it.
    publish_conn: Option<Conn>,
}

/// The command connection: to one Redis, or to a cluster (each command routed to the master of
/// its keys' slot, following MOVED and failovers by itself).
#[derive(Clone)]
enum Conn {
    /// One Redis (reconnects by itself, to this address only).
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Target {
    fn open(url: &str, waits: bool) -> Result<Target, EngineError> {
        let client = redis::Client::open(url)
            .map_err(|e| EngineError::Internal(format!("bad redis_url: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(OP_TIMEOUT));
        let manager = || {
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
                .map(Conn::Single)
                .map_err(|e| EngineError::Internal(format!("redis connection manager: {e}")))
        };
        let conn = manager()?;
        let publish_conn = if waits { Some(manager()?) } else { None };
        Ok(Target { url: url.to_string(), client, conn, publish_conn })
    }

    /// The command connection to a cluster, learning its layout from the URL's seed nodes and
    /// `masters` (`host:port`); it connects in the background (commands meanwhile fail as
    /// `unavailable`).
    fn open_cluster(
        url: &shards::ClusterUrl,
        masters: &[String],
        waits: bool,
    ) -> Result<Target, EngineError> {
        let bad = |e: redis::RedisError| EngineError::Internal(format!("bad redis_url: {e}"));
        let mut seeds = url.node_urls(masters);
        seeds.extend(url.seed_urls());
        let client = redis::Client::open(seeds[0].as_str()).map_err(bad)?;
        let cluster = redis::cluster::ClusterClientBuilder::new(seeds)
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(200)
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(OP_TIMEOUT)
            .build()
            .map_err(bad)?;
        let conn =
            || Conn::Cluster(cluster.get_pending_async_connection_with_config(Default::default()));
        let publish_conn = waits.then(conn);
        Ok(Target { url: url.to_string(), client, conn: conn(), publish_conn })
    }
}

/// Where commands go before the sentinels named a master: nowhere (port 0 refuses), so they
/// fail as `unavailable` like with a Redis that is down.
const NO_MASTER_YET: &str = "redis://127.0.0.1:0";

/// State shared by the engine and its pub/sub and heartbeat tasks.
struct Inner {
    /// The Redis all connections go to; replaced when Sentinel names a new master.
    target: parking_lot::RwLock<Target>,
    /// Bumped at each new master: the pub/sub task reconnects when it changed.
    generation: AtomicU64,
    /// Wakes the pub/sub task at a new master (a stored permit if it is not waiting), so it
    /// reconnects there at once rather than at its next ping or backoff.
    master_changed: Arc<Notify>,
    /// `redis_url` is a `redis+sentinel://` URL (a follow task runs).
    sentinel: bool,
    /// `redis_url` is a `redis+cluster://` URL: names carry partition tags (`keys.rs`), the
    /// scripts SPUBLISH and the sharded pub/sub task (`shards.rs`) runs.
    partitioned: bool,
    /// `engine.redis_wait_replicas` is set (a connection is kept for publications).
    waits: bool,
    /// Wakes the follow task before its next round (a command found Redis unavailable).
    follow_now: Arc<Notify>,
    /// `WAIT` for this many replicas after each publication (0: no WAIT).
    wait_replicas: u32,
    /// The `WAIT` timeout.
    wait_timeout: Duration,
    /// Key prefix.
    prefix: String,
    /// The Lua scripts.
    scripts: Scripts,
    /// This node's subscribers.
    fanout: OnceLock<Arc<dyn Delivery>>,
    /// Channels with local subscribers. Locked before `witnesses` when both are.
    listened: Mutex<HashMap<String, Listened>>,
    /// The highest position this node witnessed per channel, to notice lost writes.
    witnesses: Mutex<witness::Witnesses>,
    /// The `run_id` of each Redis (by address, `""` for the one Redis) a pub/sub connection last
    /// reached: another one (a restart, a failover) has its witnessed channels checked.
    run_id: Mutex<HashMap<String, String>>,
    /// Asks the pub/sub task to bring one channel's SUBSCRIBE in line with `listened`.
    sync: mpsc::UnboundedSender<String>,
    /// The pub/sub connection is up and every listened channel is subscribed.
    pubsub_up: AtomicBool,
    /// Reads the report of the node this engine serves, for the heartbeat.
    node: OnceLock<NodeReporter>,
    /// This node's id, once attached.
    node_id: OnceLock<String>,
    /// The heartbeat task while the node is attached; `detach_node` stops it (and waits for it)
    /// before it deletes the registration, so a late heartbeat cannot bring the node back.
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Latency of every command and script round trip, for `/metrics`.
    round_trips: RoundTrips,
}

/// The Redis engine.
pub struct RedisEngine {
    /// State shared with the pub/sub and heartbeat tasks.
    inner: Arc<Inner>,
}

impl RedisEngine {
    /// Builds the engine and starts its pub/sub task. Redis need not be up: the engine connects
    /// (and reconnects) by itself, and answers `unavailable` meanwhile.
    pub fn new(config: &EngineConfig) -> Result<RedisEngine, EngineError> {
        let sentinel = match sentinel::SentinelUrl::parse(&config.redis_url) {
            None => None,
            Some(parsed) => {
                Some(parsed.map_err(|e| EngineError::Internal(format!("bad redis_url: {e}")))?)
            }
        };
        let cluster = match shards::ClusterUrl::parse(&config.redis_url) {
            None => None,
            Some(parsed) => {
                Some(parsed.map_err(|e| EngineError::Internal(format!("bad redis_url: {e}")))?)
            }
        };
        let waits = config.redis_wait_replicas > 0;
        if cluster.is_some() && config.redis_prefix.contains(['{', '}']) {
            // The prefix comes before the hash tag: a brace in it would move every key's slot.
            return Err(EngineError::Internal(
                "engine.redis_prefix must not contain '{' or '}' on a Redis Cluster".into(),
            ));
        }
        let target = match &cluster {
            Some(url) => Target::open_cluster(url, &[], waits)?,
            None if sentinel.is_some() => Target::open(NO_MASTER_YET, waits)?,
            None => Target::open(&config.redis_url, waits)?,
        };
        let (sync, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            target: parking_lot::RwLock::new(target),
            generation: AtomicU64::new(0),
            master_changed: Arc::new(Notify::new()),
            sentinel: sentinel.is_some(),
            partitioned: cluster.is_some(),
            waits,
            follow_now: Arc::new(Notify::new()),
            wait_replicas: config.redis_wait_replicas,
            wait_timeout: config.redis_wait_timeout,
            prefix: config.redis_prefix.clone(),
            scripts: Scripts::new(),
            fanout: OnceLock::new(),
            listened: Mutex::new(HashMap::new()),
            witnesses: Mutex::new(witness::Witnesses::new(witness::WITNESS_CAP)),
            run_id: Mutex::new(HashMap::new()),
            sync,
            pubsub_up: AtomicBool::new(false),
            node: OnceLock::new(),
            node_id: OnceLock::new(),
            heartbeat: Mutex::new(None),
            round_trips: RoundTrips::default(),
        });
        match cluster {
            Some(url) => drop(tokio::spawn(shards::shards_task(Arc::downgrade(&inner), url, rx))),
            None => drop(tokio::spawn(pubsub::pubsub_task(Arc::downgrade(&inner), rx))),
        }
        if let Some(url) = sentinel {
            tokio::spawn(sentinel::follow_task(Arc::downgrade(&inner), url));
        }
        Ok(RedisEngine { inner })
    }

    /// Waits up to `within` for the pub/sub connection; true when it is up.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.inner.pubsub_up.load(Ordering::Acquire) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Inner {
    /// The command connection to the current Redis.
    fn conn(&self) -> Conn {
        self.target.read().conn.clone()
    }

    /// Replaces the cluster command connection with one that learns the layout from `masters`
    /// first. The shards task calls it when the slot map changed: after a failover, redis-rs'
    /// cluster connection was seen to stall every command (repairing the dead node's
    /// connection and refreshing slots in a loop) while many were in flight.
    fn reopen_cluster(&self, url: &shards::ClusterUrl, masters: &[String]) {
        match Target::open_cluster(url, masters, self.waits) {
            Ok(target) => *self.target.write() = target,
            Err(e) => tracing::warn!(error = %e, "cannot reopen the redis cluster connection"),
        }
    }

    /// The connection publications go on: the command connection, or the one kept for
    /// publications and their `WAIT` ([`Target::publish_conn`]).
    fn publish_conn(&self) -> Conn {
        let target = self.target.read();
        target.publish_conn.as_ref().unwrap_or(&target.conn).clone()
    }

    /// Connection parameters of the current Redis.
    fn client(&self) -> redis::Client {
        self.target.read().client.clone()
    }

    /// How a publication goes out: `PUBLISH`, on a cluster `SPUBLISH` (to its shard only).
    fn publish_command(&self) -> &'static str {
        if self.partitioned { "SPUBLISH" } else { "PUBLISH" }
    }

    /// This node's subscribers, once the hub attached them.
    fn fanout(&self) -> Option<&Arc<dyn Delivery>> {
        self.fanout.get()
    }

    /// Runs a Redis operation with the engine's timeout and error mapping.
    async fn run<T, F>(&self, op: F) -> Result<T, EngineError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(OP_TIMEOUT, op).await;
        self.round_trips.record(started.elapsed());
        let result = match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_error(e)),
            Err(_) => Err(EngineError::Unavailable("redis did not answer in time".into())),
        };
        if matches!(result, Err(EngineError::Unavailable(_))) {
            // A dead connection or READONLY may be a failover: ask the sentinels now.
            self.nudge_follow();
        }
        result
    }

    /// Runs a read (safe to repeat) and tries once more when the connection turned out to be
    /// broken: the first command after a Redis restart meets the dead socket, and the
    /// connection manager has reconnected by the second.
    async fn read<T, F, Fut>(&self, mut op: F) -> Result<T, EngineError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match self.run(op(self.conn())).await {
            Err(EngineError::Unavailable(_)) => self.run(op(self.conn())).await,
            other => other,
        }
    }

    /// One publication ([`Engine::publish`], and [`Engine::publish_if`] with `expected`):
    /// `None` when the record is not stored as `expected`. Without `expected`, a merge that
    /// met a concurrent write reads the record again and retries.
    async fn publish(
        &self,
        ns: &Namespace,
        input: PublishInput,
        expected: Option<&str>,
    ) -> Result<Option<PublishResult>, EngineError> {
        let keyed = input.keyed(ns)?;
        if expected.is_some() && matches!(keyed, Some((_, Op::Merge))) {
            return Err(EngineError::BadRequest(
                "a conditional publish takes upsert or delete, not merge".into(),
            ));
        }
        // '' tells the script "no check": no stored record is empty, so it matches nothing.
        if expected == Some("") && keyed.is_some() {
            return Ok(None);
        }
        let keys = self.keys(&input.channel);
        let (head, mid, tail) = publication_parts(&input, keyed.as_ref());
        let idem = input.meta.idempotency_key.as_deref();
        let idem_key = format!("{}{}", keys.idem, idem.unwrap_or(""));
        let idem_window = if idem.is_some() { ms(ns.idempotency_window).max(1) } else { 0 };
        let mut conn = self.conn();
        let mut publishing = self.publish_conn();
        for _ in 0..MERGE_ATTEMPTS {
            let (w_epoch, w_offset) = self.witnessed(&input.channel);
            // Keyed state: the new value (merges read the record and write only if unchanged).
            let (rkey, op, value, check) = match &keyed {
                None => ("", "", String::new(), String::new()),
                Some((key, Op::Upsert)) => {
                    crate::keyed::check_write(ns, Op::Upsert, &input.data)?;
                    let check = expected.unwrap_or_default().to_string();
                    (key.as_str(), "upsert", input.data.get().to_string(), check)
                }
                Some((key, Op::Delete)) => {
                    (key.as_str(), "delete", String::new(), expected.unwrap_or_default().into())
                }
                Some((key, Op::Merge)) => {
                    let stored: Option<String> = self
                        .run(redis::cmd("HGET").arg(&keys.state).arg(key).query_async(&mut conn))
                        .await?;
                    let current = match &stored {
                        Some(s) => Some(
                            split_record(s)
                                .and_then(|(_, json)| RawValue::from_string(json.to_string()).ok())
                                .ok_or_else(|| {
                                    EngineError::Internal(format!("corrupt state record {key:?}"))
                                })?,
                        ),
                        None => None,
                    };
                    let next = apply_op(ns, current.as_deref(), Op::Merge, &input.data)?
                        .ok_or_else(|| EngineError::Internal("merge removed a record".into()))?;
                    (
                        key.as_str(),
                        "merge",
                        next.get().to_string(),
                        stored.unwrap_or_else(|| "-".into()),
                    )
                }
            };
            let mut call = self.scripts.publish.prepare_invoke();
            call.key(&keys.meta)
                .key(&keys.hist)
                .key(&keys.state)
                .key(&idem_key)
                .key(&keys.seed)
                .arg(new_epoch())
                .arg(self.pubsub_name(&input.channel))
                .arg(&head)
                .arg(&mid)
                .arg(&tail)
                .arg(ns.history_size)
                .arg(ms(ns.history_ttl))
                .arg(meta_ttl(ns))
                .arg(idem_window)
                .arg(rkey)
                .arg(op)
                .arg(&value)
                .arg(&check)
                .arg(ns.max_state_records)
                .arg(ns.max_state_bytes)
                .arg(if ns.views() { "1" } else { "0" })
                .arg(&w_epoch)
                .arg(w_offset)
                .arg(self.publish_command());
            let reply: Vec<String> = self.run(call.invoke_async(&mut publishing)).await?;
            match reply.first().map(String::as_str) {
                Some("ok") if reply.len() == 5 => {
                    let offset: u64 = reply[2]
                        .parse()
                        .map_err(|_| EngineError::Internal("bad offset from script".into()))?;
                    self.lost_reported(&input.channel, &w_epoch, w_offset, &reply[4], &reply[1]);
                    self.witness(&input.channel, &reply[1], offset);
                    self.wait_replicas(&mut publishing, &input.channel, offset).await?;
                    return Ok(Some(PublishResult {
                        channel: input.channel,
                        id: herald_protocol::publication::publication_id(&reply[1], offset),
                        epoch: reply[1].clone(),
                        offset,
                        time: reply[3].clone(),
                        duplicate: false,
                    }));
                }
                Some("dup") if reply.len() == 2 => {
                    let (epoch, offset, time) = split_message(&reply[1]).ok_or_else(|| {
                        EngineError::Internal("corrupt idempotency record".into())
                    })?;
                    self.witness(&input.channel, epoch, offset);
                    return Ok(Some(PublishResult {
                        channel: input.channel,
                        epoch: epoch.to_string(),
                        offset,
                        id: herald_protocol::publication::publication_id(epoch, offset),
                        time: time.to_string(),
                        duplicate: true,
                    }));
                }
                Some("records") => {
                    return Err(EngineError::StateLimit(format!(
                        "channel {:?} already holds {} records (max_state_records)",
                        input.channel, ns.max_state_records
                    )));
                }
                Some("bytes") => {
                    return Err(EngineError::StateLimit(format!(
                        "channel {:?} state would exceed {} bytes (max_state_bytes)",
                        input.channel, ns.max_state_bytes
                    )));
                }
                // The caller's precondition failed: nothing was published.
                Some("retry") if expected.is_some() => return Ok(None),
                Some("retry") => continue,
                _ => {
                    return Err(EngineError::Internal(format!(
                        "unexpected script reply {reply:?}"
                    )));
                }
            }
        }
        Err(EngineError::Unavailable(format!(
            "record {:?} of {:?} changed {MERGE_ATTEMPTS} times during a merge; retry",
            input.key.unwrap_or_default(),
            input.channel
        )))
    }

    /// `WAIT` for `engine.redis_wait_replicas` replicas after a publication, on the connection
    /// that wrote it (WAIT counts that connection's writes). Too few within the timeout is
    /// `unavailable`: the publication is stored and may be delivered, but it is not as durable
    /// as asked, so the publisher is not told it succeeded (a retry with its idempotency key
    /// answers the stored one).
    async fn wait_replicas(
        &self,
        conn: &mut Conn,
        channel: &str,
        offset: u64,
    ) -> Result<(), EngineError> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        let cmd =
            redis::cmd("WAIT").arg(self.wait_replicas).arg(ms(self.wait_timeout).max(1)).to_owned();
        let acked: u32 = self.run(cmd.query_async(conn)).await?;
        if acked < self.wait_replicas {
            return Err(EngineError::Unavailable(format!(
                "publication {offset} of {channel:?} reached {acked} of {} replicas within {:?} (engine.redis_wait_replicas)",
                self.wait_replicas, self.wait_timeout
            )));
        }
        Ok(())
    }

    /// Notes that `node` holds presence members on `stream` ([`Engine::presence_track`]): the
    /// stream joins the node's set and the node the set of tracking nodes, in one step.
    async fn presence_track(&self, node: &str, stream: &str) -> Result<(), EngineError> {
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SADD")
            .arg(self.presence_node_key(node))
            .arg(stream)
            .ignore()
            .cmd("SADD")
            .arg(self.presence_nodes_key())
            .arg(node)
            .ignore();
        self.run(pipe.query_async::<()>(&mut conn)).await
    }

    /// Tracking nodes not in `alive`, with their presence streams ([`Engine::presence_orphans`]).
    /// The tracking nodes are a set of their own, so this reads a few small sets rather than
    /// scanning the keyspace.
    async fn presence_orphans(
        &self,
        alive: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, EngineError> {
        let key = self.presence_nodes_key();
        let tracking: Vec<String> = self
            .read(|mut conn| {
                let key = key.clone();
                async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await }
            })
            .await?;
        let mut orphans = Vec::new();
        for node in tracking.into_iter().filter(|n| !alive.contains(n)) {
            let key = self.presence_node_key(&node);
            let mut streams: Vec<String> = self
                .read(|mut conn| {
                    let key = key.clone();
                    async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await }
                })
                .await?;
            streams.sort();
            orphans.push((node, streams));
        }
        orphans.sort();
        Ok(orphans)
    }

    /// Forgets what `node` noted ([`Engine::presence_forget`]).
    async fn presence_forget(&self, node: &str) -> Result<(), EngineError> {
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.presence_node_key(node))
            .ignore()
            .cmd("SREM")
            .arg(self.presence_nodes_key())
            .arg(node)
            .ignore();
        self.run(pipe.query_async::<()>(&mut conn)).await
    }
}

/// Maps a Redis failure: connection trouble and a full or loading Redis are `unavailable`
/// (nothing was done, retry elsewhere or later); anything else is an internal fault.
fn map_error(e: redis::RedisError) -> EngineError {
    let code = e.code().unwrap_or("");
    if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || matches!(
            code,
            "OOM"
                | "LOADING"
                | "BUSY"
                | "MASTERDOWN"
                | "READONLY"
                | "TRYAGAIN"
                | "CLUSTERDOWN"
                | "MOVED"
                | "ASK"
        )
    {
        EngineError::Unavailable(format!("redis: {e}"))
    } else {
        EngineError::Internal(format!("redis: {e}"))
    }
}

/// JSON of a plain value (strings, metadata, ops cannot fail to serialize).
fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Milliseconds of `d`, as Redis takes them.
fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Meta expiry for a namespace: keyed channels keep theirs (0), others expire when idle.
fn meta_ttl(ns: &Namespace) -> u64 {
    if ns.keyed { 0 } else { ms(META_TTL.max(ns.history_ttl).max(ns.idempotency_window)) }
}

#[async_trait]
impl Engine for RedisEngine {
    fn attach(&self, fanout: Arc<dyn Delivery>) {
        let _ = self.inner.fanout.set(fanout);
    }

    fn round_trips(&self) -> Option<RoundTripSnapshot> {
        Some(self.inner.round_trips.snapshot())
    }

    fn attach_node(&self, reporter: NodeReporter) {
        self.inner.attach_node(reporter);
    }

    async fn detach_node(&self) {
        self.inner.detach_node().await;
    }

    async fn nodes(&self) -> Option<Vec<NodeReport>> {
        self.inner.nodes().await
    }

    async fn channel_counts(&self) -> Option<Vec<(String, usize)>> {
        self.inner.channel_counts().await
    }

    async fn publish(
        &self,
        ns: &Namespace,
        input: PublishInput,
    ) -> Result<PublishResult, EngineError> {
        let published = self.inner.publish(ns, input, None).await?;
        published
            .ok_or_else(|| EngineError::Internal("an unconditional publish was refused".into()))
    }

    async fn publish_if(
        &self,
        ns: &Namespace,
        input: PublishInput,
        expected: &str,
    ) -> Result<Option<PublishResult>, EngineError> {
        self.inner.publish(ns, input, Some(expected)).await
    }

    async fn publish_volatile(&self, channel: &str, frame: Arc<str>) -> Result<(), EngineError> {
        let inner = &self.inner;
        let mut conn = inner.conn();
        let cmd = redis::cmd(inner.publish_command())
            .arg(inner.pubsub_name(channel))
            .arg(stored::volatile_message(&frame))
            .to_owned();
        inner.run(cmd.query_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    async fn presence_track(&self, node: &str, channel: &str) -> Result<(), EngineError> {
        self.inner.presence_track(node, channel).await
    }

    async fn presence_orphans(
        &self,
        alive: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, EngineError> {
        self.inner.presence_orphans(alive).await
    }

    async fn presence_forget(&self, node: &str) -> Result<(), EngineError> {
        self.inner.presence_forget(node).await
    }

    async fn listen(&self, channel: &str) -> Result<(), EngineError> {
        self.inner.listen(channel).await
    }

    async fn unlisten(&self, channel: &str) {
        self.inner.unlisten(channel);
    }

    async fn flowing(&self, channel: &str) -> Result<(), EngineError> {
        self.inner.flowing(channel).await
    }

    async fn read(
        &self,
        ns: &Namespace,
        channel: &str,
        window: Window,
        records: bool,
    ) -> Result<StreamRead, EngineError> {
        let inner = &self.inner;
        let keys = inner.keys(channel);
        let (w_epoch, w_offset) = inner.witnessed(channel);
        let (mode, bound, limit) = match window {
            Window::Nothing => ("nothing", 0, 0),
            Window::After { after, limit } => ("after", after, limit),
            Window::Before { before: Some(before), limit } => ("before", before, limit),
            Window::Before { before: None, limit } => ("latest", 0, limit),
        };
        let mut call = inner.scripts.read.prepare_invoke();
        call.key(&keys.meta)
            .key(&keys.hist)
            .key(&keys.state)
            .key(&keys.seed)
            .arg(new_epoch())
            .arg(ns.history_size)
            .arg(ms(ns.history_ttl))
            .arg(meta_ttl(ns))
            .arg(mode)
            .arg(bound)
            .arg(limit)
            .arg(if records { "1" } else { "0" })
            .arg(&w_epoch)
            .arg(w_offset);
        type Reply = (String, u64, u64, Vec<String>, Vec<String>, String);
        let (epoch, offset, earliest, pubs, flat, lost): Reply = {
            let call = &call;
            inner.read(|mut conn| async move { call.invoke_async(&mut conn).await }).await?
        };
        inner.lost_reported(channel, &w_epoch, w_offset, &lost, &epoch);
        inner.witness(channel, &epoch, offset);
        Ok(StreamRead {
            publications: encoded_entries(channel, &epoch, &pubs)?,
            records: if records { Some(stored::records(flat)?) } else { None },
            epoch,
            offset,
            earliest,
        })
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, EngineError> {
        let inner = &self.inner;
        let mut call = inner.scripts.lease.prepare_invoke();
        call.key(inner.lease_key(name)).arg(holder).arg(ms(ttl).max(1));
        let mut conn = inner.conn();
        let held: i64 = inner.run(call.invoke_async(&mut conn)).await?;
        Ok(held == 1)
    }

    async fn maintain(&self, _config: &crate::config::Config) {
        self.inner.sweep_witnesses();
    }

    async fn ready(&self) -> bool {
        if !self.inner.pubsub_up.load(Ordering::Acquire) {
            return false;
        }
        let mut conn = self.inner.conn();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Ok(_)))
    }
}
