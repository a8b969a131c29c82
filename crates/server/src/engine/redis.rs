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
//! `P:{N:C}:hist` (LIST of `offset:unix_ms:json`, contiguous offsets, oldest first),
//! `P:{N:C}:state` (HASH record key → `offset:json`), `P:{N:C}:idem:K` (idempotency window),
//! and the pub/sub channel `P:pub:C`. The length prefix keeps names unambiguous whatever the
//! channel contains; the braces keep a channel's keys in one cluster slot. A missing meta key is a
//! lost (or never used) stream: reads answer its empty position and write nothing; the next
//! publish starts it and drops leftovers. The epoch of a channel without a stream is derived from
//! the hub-wide seed `P:epoch_seed` (rotated daily) and the channel, so a subscriber of an empty
//! channel and its first publish agree on it across nodes (see `redis/common.lua`).
//!
//! # Fan-out
//!
//! One pub/sub connection per node, subscribed only to channels with local subscribers. One task
//! reads it, so each channel's publications reach [`Delivery::deliver`] in Redis order. The task
//! remembers the last position per channel; a gap or an epoch change resets that channel, a lost
//! connection resets every channel ([`Delivery::reset`]), and the sessions ask their clients to
//! resubscribe with `since`. `recover` waits until the channel's SUBSCRIBE is confirmed on the
//! current connection before it reads the position, so "subscribed means flowing" holds.
//!
//! # Cluster view
//!
//! Each node writes `P:node:ID` (JSON: id, address, connections, subscriptions, version, channel
//! counts) every [`HEARTBEAT_EVERY`] with a [`HEARTBEAT_TTL`] expiry and lists its id in the set
//! `P:nodes`; `/api/info` and `/api/channels` read them. `detach_node` stops the heartbeat before
//! it deletes the registration.

use super::{
    Delivery, Engine, EngineError, NodeReport, NodeReporter, PublishInput, StreamRead, Window,
    new_epoch,
};
use crate::config::{EngineConfig, Namespace};
use crate::frame::Encoded;
use crate::keyed::apply_op;
use async_trait::async_trait;
use futures_util::StreamExt;
use herald_protocol::reply::PublishResult;
use herald_protocol::{Op, Record};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

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
}

impl Scripts {
    fn new() -> Scripts {
        macro_rules! script {
            ($file:literal) => {
                redis::Script::new(concat!(include_str!("redis/common.lua"), include_str!($file)))
            };
        }
        Scripts { publish: script!("redis/publish.lua"), read: script!("redis/read.lua") }
    }
}

/// One channel this node listens to.
#[derive(Default)]
struct Listened {
    /// `listen` calls not yet matched by `unlisten`.
    refs: usize,
    /// The SUBSCRIBE is confirmed on the current pub/sub connection: publications flow.
    confirmed: bool,
    /// Callers waiting for `confirmed`.
    waiters: Vec<oneshot::Sender<()>>,
    /// Epoch and offset of the last publication delivered, to notice gaps.
    last: Option<(Arc<str>, u64)>,
}

impl Listened {
    fn confirm(&mut self) {
        if !self.confirmed {
            self.confirmed = true;
            self.last = None;
        }
        for w in self.waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

/// State shared by the engine and its pub/sub task.
struct Inner {
    /// Connection parameters.
    client: redis::Client,
    /// Commands and scripts (reconnects by itself).
    conn: ConnectionManager,
    /// Key prefix.
    prefix: String,
    /// The Lua scripts.
    scripts: Scripts,
    /// This node's subscribers.
    fanout: OnceLock<Arc<dyn Delivery>>,
    /// Channels with local subscribers.
    listened: Mutex<HashMap<String, Listened>>,
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
}

/// The Redis engine.
pub struct RedisEngine {
    inner: Arc<Inner>,
}

impl RedisEngine {
    /// Builds the engine and starts its pub/sub task. Redis need not be up: the engine connects
    /// (and reconnects) by itself, and answers `unavailable` meanwhile.
    pub fn new(config: &EngineConfig) -> Result<RedisEngine, EngineError> {
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| EngineError::Internal(format!("bad redis_url: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(OP_TIMEOUT));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| EngineError::Internal(format!("redis connection manager: {e}")))?;
        let (sync, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            client,
            conn,
            prefix: config.redis_prefix.clone(),
            scripts: Scripts::new(),
            fanout: OnceLock::new(),
            listened: Mutex::new(HashMap::new()),
            sync,
            pubsub_up: AtomicBool::new(false),
            node: OnceLock::new(),
            node_id: OnceLock::new(),
            heartbeat: Mutex::new(None),
        });
        tokio::spawn(pubsub_task(Arc::downgrade(&inner), rx));
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

/// Keys of one channel.
struct Keys {
    /// Epoch, offset and state size: losing it means a new epoch.
    meta: String,
    /// Kept publications, oldest first.
    hist: String,
    /// Keyed state.
    state: String,
    /// Prefix of idempotency keys (append the key).
    idem: String,
    /// The hub-wide seed of the epochs of channels without a stream (see `common.lua`).
    seed: String,
}

impl Inner {
    fn keys(&self, channel: &str) -> Keys {
        let base = format!("{}:{{{}:{}}}:", self.prefix, channel.len(), channel);
        Keys {
            meta: format!("{base}meta"),
            hist: format!("{base}hist"),
            state: format!("{base}state"),
            idem: format!("{base}idem:"),
            seed: format!("{}:epoch_seed", self.prefix),
        }
    }

    fn pubsub_name(&self, channel: &str) -> String {
        format!("{}:pub:{}", self.prefix, channel)
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}:node:{}", self.prefix, id)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn fanout(&self) -> Option<&Arc<dyn Delivery>> {
        self.fanout.get()
    }

    /// Runs a Redis operation with the engine's timeout and error mapping.
    async fn run<T, F>(&self, op: F) -> Result<T, EngineError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_error(e)),
            Err(_) => Err(EngineError::Unavailable("redis did not answer in time".into())),
        }
    }

    /// Runs a read (safe to repeat) and tries once more when the connection turned out to be
    /// broken: the first command after a Redis restart meets the dead socket, and the
    /// connection manager has reconnected by the second.
    async fn read<T, F, Fut>(&self, mut op: F) -> Result<T, EngineError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match self.run(op(self.conn.clone())).await {
            Err(EngineError::Unavailable(_)) => self.run(op(self.conn.clone())).await,
            other => other,
        }
    }

    /// Waits until publications of `channel` flow to this node (its SUBSCRIBE is confirmed on
    /// the current pub/sub connection). Channels nobody listens to need no wait.
    async fn flowing(&self, channel: &str) -> Result<(), EngineError> {
        let rx = {
            let mut listened = self.listened.lock();
            match listened.get_mut(channel) {
                None => return Ok(()),
                Some(l) if l.confirmed => return Ok(()),
                Some(l) => {
                    let (tx, rx) = oneshot::channel();
                    l.waiters.push(tx);
                    rx
                }
            }
        };
        match tokio::time::timeout(LISTEN_TIMEOUT, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(EngineError::Unavailable(
                "redis pub/sub is not connected: cannot subscribe now".into(),
            )),
        }
    }

    /// A publication from the pub/sub connection: check its position, deliver it.
    fn on_message(&self, msg: &redis::Msg) {
        let Some(channel) =
            msg.get_channel_name().strip_prefix(&self.prefix).and_then(|s| s.strip_prefix(":pub:"))
        else {
            return;
        };
        let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
            tracing::warn!(channel, "non-UTF-8 message on a herald pub/sub channel");
            return;
        };
        let Some((epoch, offset, json)) = split_message(payload) else {
            tracing::warn!(channel, "malformed message on a herald pub/sub channel");
            return;
        };
        let gap = {
            let mut listened = self.listened.lock();
            let Some(l) = listened.get_mut(channel) else { return };
            if !l.confirmed {
                return;
            }
            let gap = match &l.last {
                None => false,
                Some((e, o)) if **e == *epoch => {
                    if offset <= *o {
                        return; // already delivered
                    }
                    offset != o + 1
                }
                Some(_) => true,
            };
            let epoch: Arc<str> = match &l.last {
                Some((e, _)) if **e == *epoch => e.clone(),
                _ => epoch.into(),
            };
            l.last = Some((epoch, offset));
            gap
        };
        let Some(fanout) = self.fanout() else { return };
        if gap {
            tracing::warn!(channel, offset, "position gap on the redis stream: resubscribing");
            fanout.reset(Some(channel));
        }
        fanout.deliver(Arc::new(Encoded::from_json(channel, epoch, offset, json)));
    }

    /// The pub/sub connection is gone: nothing is confirmed any more, every subscriber resumes.
    fn on_down(&self) {
        self.pubsub_up.store(false, Ordering::Release);
        {
            let mut listened = self.listened.lock();
            for l in listened.values_mut() {
                l.confirmed = false;
                l.last = None;
            }
        }
        if let Some(f) = self.fanout() {
            f.reset(None);
        }
    }

    /// Marks channels confirmed after their SUBSCRIBE succeeded.
    fn confirm<'a>(&self, channels: impl IntoIterator<Item = &'a String>) {
        let mut listened = self.listened.lock();
        for c in channels {
            if let Some(l) = listened.get_mut(c.as_str())
                && l.refs > 0
            {
                l.confirm();
            }
        }
    }

    fn wanted(&self, channel: &str) -> bool {
        self.listened.lock().get(channel).is_some_and(|l| l.refs > 0)
    }

    /// This node's line in the cluster view, with at most [`HEARTBEAT_MAX_CHANNELS`] counts.
    fn node_entry(&self) -> Option<NodeReport> {
        let mut report = (self.node.get()?)()?;
        if report.channel_counts.len() > HEARTBEAT_MAX_CHANNELS {
            report.channel_counts = std::mem::take(&mut report.channel_counts)
                .into_iter()
                .take(HEARTBEAT_MAX_CHANNELS)
                .collect();
        }
        Some(report)
    }

    /// Entries of every live node (registrations that have not expired).
    async fn live_nodes(&self) -> Result<Vec<NodeReport>, EngineError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> =
            self.run(redis::cmd("SMEMBERS").arg(self.nodes_key()).query_async(&mut conn)).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.node_key(id)).collect();
        let values: Vec<Option<String>> =
            self.run(redis::cmd("MGET").arg(&keys).query_async(&mut conn)).await?;
        let mut nodes = Vec::new();
        let mut gone = Vec::new();
        for (id, value) in ids.iter().zip(values) {
            match value.and_then(|v| serde_json::from_str::<NodeReport>(&v).ok()) {
                Some(v) => nodes.push(v),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            let _: Result<i64, _> = self
                .run(redis::cmd("SREM").arg(self.nodes_key()).arg(&gone).query_async(&mut conn))
                .await;
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
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
        || matches!(code, "OOM" | "LOADING" | "BUSY" | "MASTERDOWN" | "READONLY" | "TRYAGAIN")
    {
        EngineError::Unavailable(format!("redis: {e}"))
    } else {
        EngineError::Internal(format!("redis: {e}"))
    }
}

/// Splits `epoch:offset:json` (pub/sub messages, idempotency records).
fn split_message(s: &str) -> Option<(&str, u64, &str)> {
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
fn split_record(s: &str) -> Option<(u64, &str)> {
    let (offset, json) = s.split_once(':')?;
    Some((offset.parse().ok()?, json))
}

/// The pieces of a publication's JSON around what only the script knows (epoch, offset, id,
/// time). The script joins them as
/// `head,"epoch":E,"offset":O,"id":"E-O"` + `mid` + `,"time":T` + `tail`, which is exactly what
/// serde writes for [`herald_protocol::Publication`] (a unit test holds the two together).
fn publication_parts(
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

/// JSON of a plain value (strings, metadata, ops cannot fail to serialize).
fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Records from a flat `HGETALL` (key, `offset:json`, ...), sorted by key.
fn records(flat: Vec<String>) -> Result<Vec<Record>, EngineError> {
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

fn encoded_entries(
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

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Meta expiry for a namespace: keyed channels keep theirs (0), others expire when idle.
fn meta_ttl(ns: &Namespace) -> u64 {
    if ns.keyed { 0 } else { ms(META_TTL.max(ns.history_ttl).max(ns.idempotency_window)) }
}

/// Reads the pub/sub connection until it fails; reconnects with backoff, forever (until the
/// engine is dropped).
async fn pubsub_task(inner: Weak<Inner>, mut sync: mpsc::UnboundedReceiver<String>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(engine) = inner.upgrade() else { return };
        match serve_pubsub(&engine, &mut sync).await {
            Ok(()) => return,
            Err(e) => {
                let was_up = engine.pubsub_up.load(Ordering::Acquire);
                engine.on_down();
                if was_up {
                    tracing::warn!(error = %e, "redis pub/sub connection lost; every subscriber resumes");
                    backoff = Duration::from_millis(50);
                } else {
                    tracing::debug!(error = %e, "redis pub/sub connect failed");
                }
            }
        }
        // Make the command connection notice a dead socket now rather than on the next
        // publish (which would then fail once).
        let mut conn = engine.conn.clone();
        tokio::spawn(async move {
            let cmd = redis::cmd("PING");
            let _ = tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<String>(&mut conn)).await;
        });
        drop(engine);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// One pub/sub connection's life. `Ok` only when the engine is gone.
async fn serve_pubsub(
    engine: &Arc<Inner>,
    sync: &mut mpsc::UnboundedReceiver<String>,
) -> Result<(), String> {
    let timed = |what: &'static str| {
        move |r: Result<redis::RedisResult<()>, tokio::time::error::Elapsed>| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: timed out")),
        }
    };
    let pubsub = tokio::time::timeout(OP_TIMEOUT, engine.client.get_async_pubsub())
        .await
        .map_err(|_| "connect: timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sink, mut stream) = pubsub.split();
    let mut subscribed: HashSet<String> = HashSet::new();
    // Everything listened to before this connection existed.
    let wanted: Vec<String> = {
        let listened = engine.listened.lock();
        listened.iter().filter(|(_, l)| l.refs > 0).map(|(c, _)| c.clone()).collect()
    };
    for chunk in wanted.chunks(500) {
        let names: Vec<String> = chunk.iter().map(|c| engine.pubsub_name(c)).collect();
        timed("subscribe")(tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&names)).await)?;
        subscribed.extend(chunk.iter().cloned());
        engine.confirm(chunk);
    }
    engine.pubsub_up.store(true, Ordering::Release);
    tracing::info!(channels = subscribed.len(), "redis pub/sub connected");
    let mut ping = tokio::time::interval(PUBSUB_PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => engine.on_message(&msg),
                None => return Err("connection closed".into()),
            },
            channel = sync.recv() => {
                let Some(channel) = channel else { return Ok(()) };
                let want = engine.wanted(&channel);
                let have = subscribed.contains(&channel);
                if want && !have {
                    let name = engine.pubsub_name(&channel);
                    timed("subscribe")(tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&name)).await)?;
                    subscribed.insert(channel.clone());
                    engine.confirm([&channel]);
                } else if want {
                    engine.confirm([&channel]);
                } else if have {
                    let name = engine.pubsub_name(&channel);
                    timed("unsubscribe")(tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(&name)).await)?;
                    subscribed.remove(&channel);
                }
            }
            _ = ping.tick() => {
                let pong = tokio::time::timeout(OP_TIMEOUT, sink.ping::<redis::Value>()).await;
                timed("ping")(pong.map(|r| r.map(|_| ())))?;
            }
        }
    }
}

/// Refreshes this node's registration until the hub is gone.
async fn heartbeat_task(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(engine) = inner.upgrade() else { return };
        let Some(report) = engine.node_entry() else { return };
        let entry = json(&report);
        let id = report.id;
        let mut conn = engine.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(engine.node_key(&id))
            .arg(entry)
            .arg("PX")
            .arg(ms(HEARTBEAT_TTL))
            .ignore()
            .cmd("SADD")
            .arg(engine.nodes_key())
            .arg(&id)
            .ignore();
        if let Err(e) = engine.run(pipe.query_async::<()>(&mut conn)).await {
            tracing::debug!(error = %e, "heartbeat not written");
        }
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn attach(&self, fanout: Arc<dyn Delivery>) {
        let _ = self.inner.fanout.set(fanout);
    }

    fn attach_node(&self, reporter: NodeReporter) {
        if let Some(report) = reporter() {
            let _ = self.inner.node_id.set(report.id);
        }
        // The first node stays the node (a second call re-attaches the same one after a detach).
        let _ = self.inner.node.set(reporter);
        let mut heartbeat = self.inner.heartbeat.lock();
        if heartbeat.is_none() {
            *heartbeat = Some(tokio::spawn(heartbeat_task(Arc::downgrade(&self.inner))));
        }
    }

    async fn detach_node(&self) {
        let Some(id) = self.inner.node_id.get() else { return };
        // Stop the heartbeat and wait until it is gone: a refresh it already queued goes out on
        // the command connection before the DEL below, never after it.
        let task = self.inner.heartbeat.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        let mut conn = self.inner.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.inner.node_key(id))
            .ignore()
            .cmd("SREM")
            .arg(self.inner.nodes_key())
            .arg(id)
            .ignore();
        let _ = self.inner.run(pipe.query_async::<()>(&mut conn)).await;
    }

    async fn nodes(&self) -> Option<Vec<NodeReport>> {
        let mut nodes = self.inner.live_nodes().await.ok()?;
        for n in &mut nodes {
            n.channel_counts.clear();
        }
        Some(nodes)
    }

    async fn channel_counts(&self) -> Option<Vec<(String, usize)>> {
        let nodes = self.inner.live_nodes().await.ok()?;
        // This node's own counts are taken live, not from its last heartbeat.
        let own = self.inner.node.get().and_then(|reporter| reporter());
        let mut totals: std::collections::BTreeMap<String, usize> = Default::default();
        for n in &nodes {
            if own.as_ref().is_some_and(|own| own.id == n.id) {
                continue;
            }
            for (c, v) in &n.channel_counts {
                *totals.entry(c.clone()).or_default() += v;
            }
        }
        for (c, n) in own.map(|own| own.channel_counts).unwrap_or_default() {
            *totals.entry(c).or_default() += n;
        }
        Some(totals.into_iter().collect())
    }

    async fn publish(
        &self,
        ns: &Namespace,
        input: PublishInput,
    ) -> Result<PublishResult, EngineError> {
        let inner = &self.inner;
        let keyed = input.keyed(ns)?;
        let keys = inner.keys(&input.channel);
        let (head, mid, tail) = publication_parts(&input, keyed.as_ref());
        let idem = input.meta.idempotency_key.as_deref();
        let idem_key = format!("{}{}", keys.idem, idem.unwrap_or(""));
        let idem_window = if idem.is_some() { ms(ns.idempotency_window).max(1) } else { 0 };
        let mut conn = inner.conn.clone();
        for _ in 0..MERGE_ATTEMPTS {
            // Keyed state: the new value (merges read the record and write only if unchanged).
            let (rkey, op, value, expected) = match &keyed {
                None => ("", "", String::new(), String::new()),
                Some((key, Op::Upsert)) => {
                    (key.as_str(), "upsert", input.data.get().to_string(), String::new())
                }
                Some((key, Op::Delete)) => (key.as_str(), "delete", String::new(), String::new()),
                Some((key, Op::Merge)) => {
                    let stored: Option<String> = inner
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
                    let next = apply_op(current.as_deref(), Op::Merge, &input.data)?
                        .ok_or_else(|| EngineError::Internal("merge removed a record".into()))?;
                    (
                        key.as_str(),
                        "merge",
                        next.get().to_string(),
                        stored.unwrap_or_else(|| "-".into()),
                    )
                }
            };
            let mut call = inner.scripts.publish.prepare_invoke();
            call.key(&keys.meta)
                .key(&keys.hist)
                .key(&keys.state)
                .key(&idem_key)
                .key(&keys.seed)
                .arg(new_epoch())
                .arg(inner.pubsub_name(&input.channel))
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
                .arg(&expected)
                .arg(ns.max_state_records)
                .arg(ns.max_state_bytes);
            let reply: Vec<String> = inner.run(call.invoke_async(&mut conn)).await?;
            match reply.first().map(String::as_str) {
                Some("ok") if reply.len() == 4 => {
                    let offset: u64 = reply[2]
                        .parse()
                        .map_err(|_| EngineError::Internal("bad offset from script".into()))?;
                    return Ok(PublishResult {
                        channel: input.channel,
                        id: format!("{}-{}", reply[1], offset),
                        epoch: reply[1].clone(),
                        offset,
                        time: reply[3].clone(),
                        duplicate: false,
                    });
                }
                Some("dup") if reply.len() == 2 => {
                    let (epoch, offset, time) = split_message(&reply[1]).ok_or_else(|| {
                        EngineError::Internal("corrupt idempotency record".into())
                    })?;
                    return Ok(PublishResult {
                        channel: input.channel,
                        epoch: epoch.to_string(),
                        offset,
                        id: format!("{epoch}-{offset}"),
                        time: time.to_string(),
                        duplicate: true,
                    });
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

    async fn listen(&self, channel: &str) -> Result<(), EngineError> {
        {
            let mut listened = self.inner.listened.lock();
            let l = listened.entry(channel.to_string()).or_default();
            l.refs += 1;
            if l.confirmed {
                return Ok(());
            }
            if l.refs == 1 {
                let _ = self.inner.sync.send(channel.to_string());
            }
        }
        // Every `listen` must be matched by exactly one `unlisten`, so this never fails: when
        // the SUBSCRIBE cannot be confirmed in time, `recover` (which waits again) answers
        // `unavailable` and the subscribe is refused there.
        let _ = self.inner.flowing(channel).await;
        Ok(())
    }

    async fn unlisten(&self, channel: &str) {
        let mut listened = self.inner.listened.lock();
        let Some(l) = listened.get_mut(channel) else { return };
        l.refs = l.refs.saturating_sub(1);
        if l.refs == 0 {
            listened.remove(channel);
            let _ = self.inner.sync.send(channel.to_string());
        }
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
            .arg(if records { "1" } else { "0" });
        let (epoch, offset, earliest, pubs, flat): (String, u64, u64, Vec<String>, Vec<String>) = {
            let call = &call;
            inner.read(|mut conn| async move { call.invoke_async(&mut conn).await }).await?
        };
        Ok(StreamRead {
            publications: encoded_entries(channel, &epoch, &pubs)?,
            records: if records { Some(self::records(flat)?) } else { None },
            epoch,
            offset,
            earliest,
        })
    }

    async fn ready(&self) -> bool {
        if !self.inner.pubsub_up.load(Ordering::Acquire) {
            return false;
        }
        let mut conn = self.inner.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Ok(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::{Meta, Publication};

    /// What the script does with the parts.
    fn assemble(parts: &(String, String, String), epoch: &str, offset: u64, time: &str) -> String {
        let (head, mid, tail) = parts;
        format!(
            "{head},\"epoch\":\"{epoch}\",\"offset\":{offset},\"id\":\"{epoch}-{offset}\"{mid},\"time\":\"{time}\"{tail}"
        )
    }

    #[test]
    fn script_json_matches_serde() {
        let cases = [
            (Meta::default(), None),
            (
                Meta {
                    user: Some("a\"l\\ice".into()),
                    source: Some("api".into()),
                    correlation_id: Some("c-1".into()),
                    idempotency_key: Some("k\u{1}".into()),
                },
                Some(("rec\n1".to_string(), Op::Merge)),
            ),
            (
                Meta { source: Some("client".into()), ..Meta::default() },
                Some(("k".into(), Op::Delete)),
            ),
        ];
        for (meta, keyed) in cases {
            let input = PublishInput {
                channel: "room:é\"1".into(),
                kind: "t\"ype".into(),
                data: RawValue::from_string(r#"{"a": [1, 2], "b":"x"}"#.into()).unwrap(),
                key: keyed.as_ref().map(|(k, _)| k.clone()),
                op: keyed.as_ref().map(|(_, o)| *o),
                meta: meta.clone(),
            };
            let parts = publication_parts(&input, keyed.as_ref());
            let p = Publication {
                channel: input.channel.clone(),
                epoch: "E1".into(),
                offset: 42,
                id: "E1-42".into(),
                kind: input.kind.clone(),
                data: input.data.clone(),
                time: "2026-01-02T03:04:05.678Z".into(),
                meta,
                key: input.key.clone(),
                op: input.op,
            };
            assert_eq!(
                assemble(&parts, "E1", 42, "2026-01-02T03:04:05.678Z"),
                serde_json::to_string(&p).unwrap()
            );
        }
    }

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
