//! The Redis Streams source (feature `redis-streams`): a consumer group on one or more stream
//! keys, each entry acknowledged (XACK) only after everything it maps to was published, and the
//! entries a dead consumer left pending claimed (XAUTOCLAIM) by the node that takes over.
//!
//! ```toml
//! [[bridge]]
//! name = "decisions"
//! source = "redis_streams"
//! url = "redis://127.0.0.1:6379"   # or rediss:// (TLS)
//! streams = ["events"]             # one or more stream keys; an event's subject is its key
//! group = "herald"                 # the consumer group (default "herald")
//! dead_letter = "events:dead"      # a stream key for refused entries (default: logged only)
//! claim_idle = "5s"                # claim others' entries pending this long (default lease_ttl)
//! block = "1s"                     # how long one XREADGROUP waits for new entries
//! field = "payload"                # the entry field holding the JSON event (default "payload")
//! ```
//!
//! # Group and consumers
//!
//! The group is created on each stream with `XGROUP CREATE KEY GROUP 0 MKSTREAM` when it is
//! missing (`BUSYGROUP` is fine): a new group reads the stream from its first entry. Each node
//! reads as the consumer named by its node id. The runner's lease makes one node at a time the
//! reader; this source makes the takeover complete: the entries the previous reader was
//! delivered and never acknowledged are claimed and read again first.
//!
//! # Order, claims and redelivery
//!
//! On start, after a reconnect or any error, after a cancelled or unsettled `next()`, and every
//! `claim_idle` while reading, the source recovers before it reads anything new, stream by
//! stream:
//!
//! 1. `XAUTOCLAIM KEY GROUP ME claim_idle 0` until the cursor is back at `0-0`: every entry
//!    pending to another consumer for at least `claim_idle` becomes this consumer's.
//! 2. While other consumers still hold pending entries (not idle long enough yet: a reader that
//!    just lost the lease, or one that died less than `claim_idle` ago), it waits and claims
//!    again, so nothing newer is read before them. The lease expires `lease_ttl` after the dead
//!    node's last renewal and its entries were delivered before that, so with the default
//!    `claim_idle = lease_ttl` they are claimable by the time the lease is taken over.
//! 3. `XREADGROUP GROUP GROUP ME STREAMS KEY ID` from `0`: this consumer's own pending entries
//!    (claimed ones included), in ID order.
//!
//! Then `XREADGROUP ... BLOCK block STREAMS KEY… > …` reads new entries of every stream at once.
//! Order is per stream: each stream's entries come in ID order, and the entries of different
//! streams are interleaved as Redis returns them.
//!
//! An event's id is `STREAM/ENTRYID`: unique across the streams and the same on every
//! redelivery, so a redelivered entry is answered by the hub as a duplicate. Recreating a stream
//! restarts its IDs only if its entries' IDs are set explicitly; do that only after the
//! namespaces' `idempotency_window`. The lag is, over the streams, the group's `lag` (entries
//! not yet delivered) plus its `pending` (delivered, not acknowledged), from `XINFO GROUPS`: at
//! most once a second while entries read ahead are in hand, else after every event.
//!
//! `next()` is cancel-safe: entries read ahead live in the source, and a `next()` dropped while
//! a read was in flight (the entries it read are now pending to this consumer) makes the next
//! call recover, which reads them from the pending list. An event returned but neither
//! acknowledged nor dead-lettered (the runner lost the lease) also makes the next call recover,
//! so it comes back (unless the node that held the lease meanwhile acknowledged it).
//!
//! # Payloads and dead letters
//!
//! The entry's `field` holds the event as JSON text. A refused event is added to the
//! `dead_letter` stream with the fields `reason`, `bridge`, `stream`, `id` (the entry id) and
//! `payload` (the event as JSON); the runner then acknowledges it. An entry without `field`, or
//! whose `field` is not JSON, never reaches the rules: when its turn comes the source
//! dead-letters it itself (reason `no field "payload"` / `payload is not JSON: …`, `payload` the
//! field's raw text) and acknowledges it in one MULTI/EXEC, and reads on; it is logged and
//! counted in the bridge's `dead_lettered`. Dead letters are in stream order. Without
//! `dead_letter`, refused entries are only logged.
//!
//! # Outages
//!
//! The connection is opened lazily and re-established by itself. While Redis is unreachable
//! every call answers [`SourceError::Unavailable`] (the bridge reports `up: false`); the first
//! `next()` after it recovers, so nothing delivered before the outage is lost.

use crate::config::BridgeConfig;
use crate::source::{Event, EventSource, SourceError};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{RedisError, Value};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// The options of a `source = "redis_streams"` bridge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamsOptions {
    /// The server, `redis://` or `rediss://` (TLS).
    pub url: String,
    /// The stream keys read; an event's subject is its stream's key.
    pub streams: Vec<String>,
    /// The consumer group.
    #[serde(default = "default_group")]
    pub group: String,
    /// The stream refused entries are added to; none: they are only logged.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Entries pending to another consumer this long are claimed; default the bridge's
    /// `lease_ttl`.
    #[serde(default, with = "humantime_serde")]
    pub claim_idle: Option<Duration>,
    /// How long one XREADGROUP waits for new entries.
    #[serde(default = "default_block", with = "humantime_serde")]
    pub block: Duration,
    /// The entry field holding the event as JSON text.
    #[serde(default = "default_field")]
    pub field: String,
}

fn default_group() -> String {
    "herald".into()
}

fn default_block() -> Duration {
    Duration::from_secs(1)
}

fn default_field() -> String {
    "payload".into()
}

/// How many entries one read or claim asks for.
const BATCH: usize = 100;
/// How often the lag is asked for while entries read ahead are in hand.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Parses and checks the options, without connecting.
pub fn options(config: &BridgeConfig) -> Result<RedisStreamsOptions, String> {
    let options: RedisStreamsOptions =
        config.options.clone().try_into().map_err(|e: toml::de::Error| e.message().to_string())?;
    if !(options.url.starts_with("redis://") || options.url.starts_with("rediss://")) {
        return Err(format!("url: {:?} is not a redis:// or rediss:// URL", options.url));
    }
    redis::Client::open(options.url.as_str()).map_err(|e| format!("url: {e}"))?;
    if options.streams.is_empty() {
        return Err("streams: at least one stream key".into());
    }
    for (i, key) in options.streams.iter().enumerate() {
        if key.is_empty() {
            return Err("streams: a stream key is empty".into());
        }
        if options.streams[..i].contains(key) {
            return Err(format!("streams: {key:?} is listed twice"));
        }
    }
    if options.group.is_empty() {
        return Err("group: not empty".into());
    }
    if let Some(dead) = &options.dead_letter {
        if dead.is_empty() {
            return Err("dead_letter: not empty".into());
        }
        if options.streams.contains(dead) {
            return Err(format!("dead_letter: {dead:?} is also a source stream"));
        }
    }
    if options.claim_idle.is_some_and(|d| d < Duration::from_millis(100)) {
        return Err("claim_idle: at least 100ms".into());
    }
    if options.block < Duration::from_millis(10) || options.block > Duration::from_secs(60) {
        return Err("block: between 10ms and 60s".into());
    }
    if options.field.is_empty() {
        return Err("field: not empty".into());
    }
    Ok(options)
}

/// Checks a bridge's options without connecting.
pub fn check(config: &BridgeConfig) -> Result<(), String> {
    options(config).map(|_| ())
}

/// Where the source is in its reading.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Claim idle entries of other consumers (and wait for the others), then read the pending
    /// list.
    Recover,
    /// Read this consumer's pending entries of `streams[stream]` after the entry id `after`.
    Pending { stream: usize, after: String },
    /// Read new entries (`>`).
    New,
}

/// XPENDING's summary: count, first id, last id, [[consumer, count]…].
type PendingSummary = (u64, Value, Value, Option<Vec<(String, u64)>>);

/// An entry read ahead.
struct Read {
    /// The entry as an event (payload `null` when malformed).
    event: Event,
    /// Why it cannot be an event, and its field's raw text: the source dead-letters it.
    malformed: Option<(String, String)>,
}

/// A consumer in a group on one or more Redis streams.
pub struct RedisStreamsSource {
    /// The bridge's name (in dead letters and logs).
    bridge: String,
    /// The parsed options.
    options: RedisStreamsOptions,
    /// `claim_idle`, resolved.
    claim_idle: Duration,
    /// This consumer's name in the group (the node id).
    consumer: String,
    /// The connection; reconnects by itself.
    conn: ConnectionManager,
    /// What the next read is.
    phase: Phase,
    /// Entries read and not yet returned (or discarded), in order.
    buffer: VecDeque<Read>,
    /// An event was returned and is neither acknowledged nor dead-lettered.
    unsettled: bool,
    /// A `next()` is running: seen at the start of a call, the previous one was dropped.
    in_next: bool,
    /// When the last recovery finished (the next one is due `claim_idle` later).
    recovered_at: Instant,
    /// The last lag read and when.
    lag: Option<(Instant, u64)>,
    /// Malformed entries dead-lettered by the source itself.
    discarded: u64,
}

/// A Redis error as the bridge sees it.
fn unavailable(e: RedisError) -> SourceError {
    SourceError::Unavailable(format!("redis: {e}"))
}

impl RedisStreamsSource {
    /// A source for `config`, reading as `consumer`. Connects lazily (needs a Tokio runtime).
    pub fn new(config: &BridgeConfig, consumer: &str) -> Result<RedisStreamsSource, String> {
        let options = options(config)?;
        let client = redis::Client::open(options.url.as_str()).map_err(|e| format!("url: {e}"))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            // A blocking read takes up to `block`.
            .set_response_timeout(Some(options.block + Duration::from_secs(2)));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| format!("redis connection: {e}"))?;
        Ok(RedisStreamsSource {
            bridge: config.name.clone(),
            claim_idle: options.claim_idle.unwrap_or(config.lease_ttl),
            options,
            consumer: consumer.to_string(),
            conn,
            phase: Phase::Recover,
            buffer: VecDeque::new(),
            unsettled: false,
            in_next: false,
            recovered_at: Instant::now(),
            lag: None,
            discarded: 0,
        })
    }

    /// Forgets what was read ahead: the next read recovers from Redis's pending lists.
    fn reset(&mut self) {
        self.phase = Phase::Recover;
        self.buffer.clear();
    }

    /// Creates the group on `key` when it is missing.
    async fn ensure_group(&mut self, key: &str) -> Result<(), RedisError> {
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(&self.options.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Claims every entry of `key` idle for `claim_idle` from other consumers; how many
    /// entries others still hold.
    async fn claim(&mut self, key: &str) -> Result<u64, RedisError> {
        let mut cursor = "0-0".to_string();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(key)
                .arg(&self.options.group)
                .arg(&self.consumer)
                .arg(self.claim_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(BATCH)
                .arg("JUSTID")
                .query_async(&mut self.conn)
                .await?;
            if !reply.claimed.is_empty() {
                tracing::info!(bridge = %self.bridge, stream = key, entries = reply.claimed.len(), "bridge: claimed entries pending to another consumer");
            }
            cursor = reply.next_stream_id;
            if cursor == "0-0" {
                break;
            }
        }
        // XPENDING's summary: count, first id, last id, [[consumer, count]…].
        let (_, _, _, consumers): PendingSummary = redis::cmd("XPENDING")
            .arg(key)
            .arg(&self.options.group)
            .query_async(&mut self.conn)
            .await?;
        Ok(consumers
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, _)| *name != self.consumer)
            .map(|(_, count)| count)
            .sum())
    }

    /// Steps 1 and 2 of the recovery (module doc) on every stream.
    async fn recover(&mut self) -> Result<(), RedisError> {
        let poll = (self.claim_idle / 4).min(Duration::from_millis(250));
        for key in self.options.streams.clone() {
            self.ensure_group(&key).await?;
            loop {
                let others = self.claim(&key).await?;
                if others == 0 {
                    break;
                }
                tracing::debug!(bridge = %self.bridge, stream = %key, others, "bridge: waiting for entries pending to another consumer to become idle");
                // Nothing tells when an entry becomes idle enough: poll.
                tokio::time::sleep(poll).await;
            }
        }
        Ok(())
    }

    /// An entry as read: an event, or why it is malformed.
    fn entry_read(&self, key: &str, entry: &StreamId) -> Read {
        let text = entry
            .map
            .get(&self.options.field)
            .map(|v| redis::from_redis_value_ref::<String>(v).map_err(|e| e.to_string()));
        let (payload, malformed) = match text {
            None => (
                serde_json::Value::Null,
                Some((format!("no field {:?}", self.options.field), String::new())),
            ),
            Some(Err(e)) => (
                serde_json::Value::Null,
                Some((format!("payload is not text: {e}"), String::new())),
            ),
            Some(Ok(text)) => match serde_json::from_str(&text) {
                Ok(payload) => (payload, None),
                Err(e) => {
                    (serde_json::Value::Null, Some((format!("payload is not JSON: {e}"), text)))
                }
            },
        };
        let event = Event { id: format!("{key}/{}", entry.id), subject: key.to_string(), payload };
        Read { event, malformed }
    }

    /// Buffers the entries of a read, in order.
    fn take(&mut self, reply: StreamReadReply) {
        for stream in reply.keys {
            for entry in &stream.ids {
                let read = self.entry_read(&stream.key, entry);
                self.buffer.push_back(read);
            }
        }
    }

    /// Dead-letters and acknowledges a malformed entry, in one MULTI/EXEC.
    async fn discard(&mut self, event: &Event, reason: &str, raw: &str) -> Result<(), RedisError> {
        tracing::warn!(bridge = %self.bridge, id = %event.id, reason = %reason, "bridge: entry dead-lettered by the source");
        let (stream, id) = self.entry(event);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(dead) = &self.options.dead_letter {
            pipe.cmd("XADD")
                .arg(dead)
                .arg("*")
                .arg("reason")
                .arg(reason)
                .arg("bridge")
                .arg(&self.bridge)
                .arg("stream")
                .arg(stream)
                .arg("id")
                .arg(id)
                .arg("payload")
                .arg(raw)
                .ignore();
        }
        pipe.cmd("XACK").arg(stream).arg(&self.options.group).arg(id).ignore();
        pipe.query_async::<()>(&mut self.conn).await
    }

    /// One read (or recovery step); fills the buffer or moves the phase on.
    async fn step(&mut self) -> Result<(), RedisError> {
        match self.phase.clone() {
            Phase::Recover => {
                self.recover().await?;
                self.recovered_at = Instant::now();
                self.phase = Phase::Pending { stream: 0, after: "0".into() };
            }
            Phase::Pending { stream, after } => {
                let key = self.options.streams[stream].clone();
                let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&self.options.group)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(BATCH)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&after)
                    .query_async(&mut self.conn)
                    .await?;
                let last = reply
                    .as_ref()
                    .and_then(|r| r.keys.first())
                    .and_then(|k| k.ids.last())
                    .map(|entry| entry.id.clone());
                match last {
                    Some(last) => {
                        self.take(reply.unwrap_or_default());
                        self.phase = Phase::Pending { stream, after: last };
                    }
                    None if stream + 1 < self.options.streams.len() => {
                        self.phase = Phase::Pending { stream: stream + 1, after: "0".into() };
                    }
                    None => self.phase = Phase::New,
                }
            }
            Phase::New => {
                if self.recovered_at.elapsed() >= self.claim_idle {
                    self.phase = Phase::Recover;
                    return Ok(());
                }
                let mut read = redis::cmd("XREADGROUP");
                read.arg("GROUP")
                    .arg(&self.options.group)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(BATCH)
                    .arg("BLOCK")
                    .arg(self.options.block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&self.options.streams);
                for _ in &self.options.streams {
                    read.arg(">");
                }
                let reply: Option<StreamReadReply> = read.query_async(&mut self.conn).await?;
                if let Some(reply) = reply {
                    self.take(reply);
                }
            }
        }
        Ok(())
    }

    /// `next()`'s body; `in_next` is handled by the caller.
    async fn read(&mut self) -> Result<Event, SourceError> {
        loop {
            match self.buffer.pop_front() {
                Some(Read { event, malformed: None }) => {
                    self.unsettled = true;
                    return Ok(event);
                }
                Some(Read { event, malformed: Some((reason, raw)) }) => {
                    if let Err(e) = self.discard(&event, &reason, &raw).await {
                        self.reset();
                        return Err(unavailable(e));
                    }
                    self.discarded += 1;
                    continue;
                }
                None => {}
            }
            if let Err(e) = self.step().await {
                self.reset();
                return Err(unavailable(e));
            }
        }
    }

    /// The entry id of an event of this source, and its stream.
    fn entry<'e>(&self, event: &'e Event) -> (&'e str, &'e str) {
        event.id.rsplit_once('/').unwrap_or((event.subject.as_str(), event.id.as_str()))
    }
}

#[async_trait]
impl EventSource for RedisStreamsSource {
    async fn next(&mut self) -> Result<Event, SourceError> {
        if self.in_next || self.unsettled {
            // The last call was dropped mid-read, or its event was never settled: what this
            // consumer was delivered is in its pending list; read from there.
            self.reset();
            self.unsettled = false;
        }
        self.in_next = true;
        let event = self.read().await;
        self.in_next = false;
        event
    }

    async fn ack(&mut self, event: &Event) -> Result<(), SourceError> {
        let (stream, id) = self.entry(event);
        let _: u64 = redis::cmd("XACK")
            .arg(stream)
            .arg(&self.options.group)
            .arg(id)
            .query_async(&mut self.conn)
            .await
            .map_err(unavailable)?;
        self.unsettled = false;
        Ok(())
    }

    async fn dead_letter(&mut self, event: &Event, reason: &str) -> Result<(), SourceError> {
        let Some(dead) = self.options.dead_letter.clone() else {
            return Ok(());
        };
        let (stream, id) = self.entry(event);
        let _: String = redis::cmd("XADD")
            .arg(&dead)
            .arg("*")
            .arg("reason")
            .arg(reason)
            .arg("bridge")
            .arg(&self.bridge)
            .arg("stream")
            .arg(stream)
            .arg("id")
            .arg(id)
            .arg("payload")
            .arg(event.payload.to_string())
            .query_async(&mut self.conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn dead_lettered(&self) -> u64 {
        self.discarded
    }

    async fn lag(&mut self) -> Option<u64> {
        // Read ahead, more events follow at once: a recent answer will do.
        if let Some((at, lag)) = self.lag
            && at.elapsed() < LAG_EVERY
            && !self.buffer.is_empty()
        {
            return Some(lag);
        }
        let mut total = 0u64;
        for key in &self.options.streams {
            let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(key)
                .query_async(&mut self.conn)
                .await
                .ok()?;
            let group = groups.iter().find(|g| {
                g.get("name").and_then(|v| redis::from_redis_value_ref::<String>(v).ok()).as_deref()
                    == Some(self.options.group.as_str())
            })?;
            for field in ["lag", "pending"] {
                // `lag` is nil when Redis cannot tell (entries deleted): count it as 0.
                total += group
                    .get(field)
                    .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                    .unwrap_or(0);
            }
        }
        self.lag = Some((Instant::now(), total));
        Some(total)
    }
}
