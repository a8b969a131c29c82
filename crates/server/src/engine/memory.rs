//! The embedded engine: one node, everything in this process's memory.
//!
//! Each channel's stream sits behind its own mutex; a publish assigns the offset, appends to the
//! history, updates the keyed state and hands the frame to the fan-out while holding it, so local
//! subscribers see one order. Restarting the process loses every stream: new epochs.
//!
//! # Memory budget
//!
//! History and keyed state of every channel are counted against one hub-wide budget
//! (`engine.memory_budget_bytes`). [`Budget`] keeps, for every stream with history, the time of
//! its oldest kept publication in one ordered set; past the budget the oldest publication of the
//! hub is dropped first (O(log channels) per change, no scans), and a resume that needed it is
//! answered `history_trimmed`. State cannot be dropped: a keyed publish that would grow the state
//! of the hub past the budget is refused (`112 state_limit_exceeded`).
//!
//! # Reads create nothing
//!
//! `recover`, `history` and `state` of a channel without a stream answer with its empty position
//! and create no stream. The epoch of that position is derived from the channel and a seed, so
//! every read answers the same one and the first publish adopts it: a subscriber of an empty
//! channel receives offset 1 in the epoch it was told. The seed changes whenever housekeeping
//! drops a stream, so a channel recreated later never reuses an epoch whose positions were
//! handed out. A subscriber keeps the epoch it was told even across such a change (held in its
//! listen entry) until the channel's first publish.

use super::{Delivery, Engine, EngineError, PublishInput, StreamRead, Window, now_rfc3339};
use crate::config::Namespace;
use crate::frame::{Encoded, RecordChange};
use crate::hash::FastMap;
use crate::keyed::{apply_op, record_bytes};
use async_trait::async_trait;
use herald_protocol::reply::PublishResult;
use herald_protocol::{Publication, Record};
use parking_lot::{Mutex, RwLock};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Bytes a kept publication costs beyond its frame: the `Encoded` value, its `Arc` header and
/// its history slot.
const HISTORY_ENTRY_OVERHEAD: usize =
    std::mem::size_of::<Encoded>() + 3 * std::mem::size_of::<usize>();
/// Bytes a record costs beyond its key and value: the key `String`, the boxed value, its offset
/// and a share of the tree node.
const RECORD_OVERHEAD: usize = 64;
/// Most publications one publish evicts for the budget; the next publish continues.
const MAX_EVICTIONS_PER_PUBLISH: usize = 4096;

/// What a kept publication counts against the budget.
fn entry_cost(p: &Encoded) -> usize {
    p.frame.len() + HISTORY_ENTRY_OVERHEAD
}

/// What a record counts against the budget.
fn record_cost(key: &str, value: &str) -> usize {
    record_bytes(key, value) + RECORD_OVERHEAD
}

/// The hub-wide memory budget of history and state, and the oldest-first order of history.
#[derive(Debug)]
pub struct Budget {
    /// Most bytes of history and state together (0: unbounded).
    limit: usize,
    /// Bytes of kept publications.
    history: AtomicUsize,
    /// Bytes of records.
    state: AtomicUsize,
    /// Every stream with history, keyed by the time its oldest kept publication was accepted.
    /// A stream changes its entry only while holding its own lock (lock order: stream, then
    /// this), so an entry read here is checked against the stream before it is acted on.
    oldest: Mutex<BTreeSet<(Instant, Arc<str>)>>,
}

impl Budget {
    fn new(limit: usize) -> Budget {
        Budget {
            limit,
            history: AtomicUsize::new(0),
            state: AtomicUsize::new(0),
            oldest: Mutex::new(BTreeSet::new()),
        }
    }

    /// Bytes of history and state now counted.
    pub fn used(&self) -> usize {
        self.history.load(Ordering::Relaxed) + self.state.load(Ordering::Relaxed)
    }

    /// The configured bound (0: unbounded).
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn over(&self) -> bool {
        self.limit > 0 && self.used() > self.limit
    }
}

/// A channel this node has subscribers on.
#[derive(Default)]
struct Listened {
    /// `listen` calls not yet matched by `unlisten`.
    refs: usize,
    /// The epoch its subscribers were told while the channel had no stream; the stream adopts it.
    empty_epoch: Option<Arc<str>>,
}

/// The memory engine.
pub struct MemoryEngine {
    /// Every stream by channel name.
    streams: RwLock<FastMap<Arc<str>, Arc<Mutex<Stream>>>>,
    /// Where publications go once stored.
    fanout: OnceLock<Arc<dyn Delivery>>,
    /// Channels with local subscribers, which are never swept. Lock order: `streams`, then this.
    listened: Mutex<HashMap<String, Listened>>,
    /// Seed of the epochs of channels without a stream; replaced when a stream is dropped.
    seed: Mutex<std::hash::RandomState>,
    /// History and state bytes of the whole hub.
    budget: Budget,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        MemoryEngine::with_budget(crate::config::EngineConfig::default().memory_budget_bytes)
    }
}

/// One channel's stream.
struct Stream {
    /// Channel name, shared with every frame.
    channel: Arc<str>,
    /// This incarnation's epoch.
    epoch: Arc<str>,
    /// Offset of the last publication.
    offset: u64,
    /// Kept publications, oldest first.
    history: VecDeque<Arc<Encoded>>,
    /// This stream's key in [`Budget::oldest`] (the oldest kept publication's time).
    indexed: Option<Instant>,
    /// Keyed state: key → (value, offset of last change). Shared with the record changes kept
    /// for views.
    state: BTreeMap<String, (Arc<RawValue>, u64)>,
    /// Bytes of keys and values in `state` (what `max_state_bytes` bounds).
    state_bytes: usize,
    /// Idempotency keys seen recently and what they got.
    dedupe: HashMap<String, PublishResult>,
    /// Expiry order of `dedupe`.
    dedupe_order: VecDeque<(Instant, String)>,
}

impl Stream {
    fn new(channel: &str, epoch: Arc<str>) -> Stream {
        Stream {
            channel: channel.into(),
            epoch,
            offset: 0,
            history: VecDeque::new(),
            indexed: None,
            state: BTreeMap::new(),
            state_bytes: 0,
            dedupe: HashMap::new(),
            dedupe_order: VecDeque::new(),
        }
    }

    /// Keeps this stream's entry in the budget's oldest-first order in step with its history.
    fn reindex(&mut self, budget: &Budget) {
        let front = self.history.front().map(|p| p.accepted);
        if front == self.indexed || budget.limit == 0 {
            return;
        }
        let mut oldest = budget.oldest.lock();
        if let Some(at) = self.indexed {
            oldest.remove(&(at, self.channel.clone()));
        }
        if let Some(at) = front {
            oldest.insert((at, self.channel.clone()));
        }
        self.indexed = front;
    }

    fn push(&mut self, p: Arc<Encoded>, budget: &Budget) {
        budget.history.fetch_add(entry_cost(&p), Ordering::Relaxed);
        self.history.push_back(p);
        if self.history.len() == 1 {
            self.reindex(budget);
        }
    }

    /// Drops the oldest kept publication (the caller reindexes).
    fn pop_front(&mut self, budget: &Budget) {
        if let Some(p) = self.history.pop_front() {
            budget.history.fetch_sub(entry_cost(&p), Ordering::Relaxed);
        }
    }

    /// Drops publications beyond the count or age bound.
    fn trim(&mut self, ns: &Namespace, budget: &Budget) {
        while self.history.len() > ns.history_size {
            self.pop_front(budget);
        }
        let ttl = ns.history_ttl;
        while self.history.front().is_some_and(|p| p.accepted.elapsed() > ttl) {
            self.pop_front(budget);
        }
        self.reindex(budget);
    }

    /// Lowest offset in the history (0 when empty).
    fn earliest(&self) -> u64 {
        self.history.front().map_or(0, |p| p.offset)
    }

    /// Up to `limit` kept publications with an offset above `after`.
    fn after(&self, after: u64, limit: usize) -> Vec<Arc<Encoded>> {
        let skip = after.saturating_add(1).saturating_sub(self.earliest().max(1));
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.history.iter().skip(skip).take(limit).cloned().collect()
    }

    /// The last `limit` kept publications with an offset below `before` (`None`: all).
    fn before(&self, before: Option<u64>, limit: usize) -> Vec<Arc<Encoded>> {
        let end = match before {
            Some(before) => self.history.iter().take_while(|p| p.offset < before).count(),
            None => self.history.len(),
        };
        let start = end.saturating_sub(limit);
        self.history.range(start..end).cloned().collect()
    }

    fn records(&self) -> Vec<Record> {
        self.state
            .iter()
            .map(|(key, (value, offset))| Record {
                key: key.clone(),
                value: (**value).to_owned(),
                offset: *offset,
            })
            .collect()
    }

    fn forget_old_keys(&mut self, now: Instant) {
        while let Some((expiry, _)) = self.dedupe_order.front() {
            if *expiry > now {
                break;
            }
            if let Some((_, key)) = self.dedupe_order.pop_front() {
                self.dedupe.remove(&key);
            }
        }
    }

    fn idle(&self) -> bool {
        self.history.is_empty() && self.state.is_empty() && self.dedupe.is_empty()
    }
}

impl MemoryEngine {
    /// A new, empty engine with the default memory budget.
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    /// A new, empty engine whose history and state may hold `bytes` together (0: unbounded).
    pub fn with_budget(bytes: usize) -> MemoryEngine {
        MemoryEngine {
            streams: RwLock::new(FastMap::default()),
            fanout: OnceLock::new(),
            listened: Mutex::new(HashMap::new()),
            seed: Mutex::new(std::hash::RandomState::new()),
            budget: Budget::new(bytes),
        }
    }

    /// The hub-wide memory accounting (for metrics and tests).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// How many channels have a stream (reads of unused channels create none).
    pub fn stream_count(&self) -> usize {
        self.streams.read().len()
    }

    /// The epoch a channel without a stream has right now.
    fn derived_epoch(&self, channel: &str) -> Arc<str> {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut n = self.seed.lock().hash_one(channel);
        let epoch: String = (0..10)
            .map(|_| {
                let c = ALPHABET[(n % 62) as usize] as char;
                n /= 62;
                c
            })
            .collect();
        epoch.into()
    }

    /// The empty epoch of a channel without a stream, as told to a reader; `streams` must be
    /// held (read or write) so that no stream appears meanwhile. A listened channel remembers
    /// it, so its subscribers and its first publish agree.
    fn empty_epoch(&self, channel: &str) -> Arc<str> {
        let mut listened = self.listened.lock();
        match listened.get_mut(channel) {
            Some(l) => l.empty_epoch.get_or_insert_with(|| self.derived_epoch(channel)).clone(),
            None => self.derived_epoch(channel),
        }
    }

    /// The stream of `channel`, created for a publish.
    fn stream(&self, channel: &str) -> Arc<Mutex<Stream>> {
        if let Some(s) = self.streams.read().get(channel) {
            return s.clone();
        }
        let mut streams = self.streams.write();
        if let Some(s) = streams.get(channel) {
            return s.clone();
        }
        let epoch = self.empty_epoch(channel);
        let s = Arc::new(Mutex::new(Stream::new(channel, epoch)));
        streams.insert(channel.into(), s.clone());
        s
    }

    /// Runs `f` on the channel's stream, or on `None` with the channel's empty epoch when it has
    /// no stream; reads never create one.
    fn with_stream<T>(
        &self,
        channel: &str,
        f: impl FnOnce(Option<&mut Stream>, Arc<str>) -> T,
    ) -> T {
        let stream = {
            let streams = self.streams.read();
            match streams.get(channel) {
                Some(s) => s.clone(),
                None => return f(None, self.empty_epoch(channel)),
            }
        };
        let mut s = stream.lock();
        let epoch = s.epoch.clone();
        f(Some(&mut s), epoch)
    }

    /// A publish, only if the record is stored as `expected` (`OFFSET:JSON`, `-` absent) when
    /// one is given; `None` when it is not.
    fn publish_checked(
        &self,
        ns: &Namespace,
        input: PublishInput,
        expected: Option<&str>,
    ) -> Result<Option<PublishResult>, EngineError> {
        let keyed = input.keyed(ns)?;
        let stream = self.stream(&input.channel);
        let result = {
            let mut s = stream.lock();
            let now = Instant::now();
            let idem = input.meta.idempotency_key.clone();
            if let Some(key) = &idem {
                s.forget_old_keys(now);
                if let Some(prior) = s.dedupe.get(key) {
                    return Ok(Some(PublishResult { duplicate: true, ..prior.clone() }));
                }
            }
            // Keyed state: compute the new value and check limits before anything changes.
            let change = match &keyed {
                Some((key, op)) => {
                    let current = s.state.get(key);
                    if let Some(expected) = expected {
                        let stored = current.map(|(v, o)| format!("{o}:{}", v.get()));
                        if stored.as_deref().unwrap_or("-") != expected {
                            return Ok(None);
                        }
                    }
                    let next = apply_op(ns, current.map(|(v, _)| &**v), *op, &input.data)?;
                    let old_len = current.map_or(0, |(v, _)| record_bytes(key, v.get()));
                    let new_len = next.as_ref().map_or(0, |v| record_bytes(key, v.get()));
                    if current.is_none() && next.is_some() && s.state.len() >= ns.max_state_records
                    {
                        return Err(EngineError::StateLimit(format!(
                            "channel {:?} already holds {} records (max_state_records)",
                            input.channel, ns.max_state_records
                        )));
                    }
                    if s.state_bytes - old_len + new_len > ns.max_state_bytes {
                        return Err(EngineError::StateLimit(format!(
                            "channel {:?} state would exceed {} bytes (max_state_bytes)",
                            input.channel, ns.max_state_bytes
                        )));
                    }
                    // History can be dropped to make room, state cannot.
                    let old_cost = current.map_or(0, |(v, _)| record_cost(key, v.get()));
                    let new_cost = next.as_ref().map_or(0, |v| record_cost(key, v.get()));
                    let state_used = self.budget.state.load(Ordering::Relaxed);
                    if self.budget.limit > 0
                        && new_cost > old_cost
                        && state_used - old_cost + new_cost > self.budget.limit
                    {
                        return Err(EngineError::StateLimit(format!(
                            "the hub's keyed state would exceed its memory budget of {} bytes \
                             (engine.memory_budget_bytes)",
                            self.budget.limit
                        )));
                    }
                    let before = current.map(|(v, _)| v.clone());
                    let next: Option<Arc<RawValue>> = next.map(Arc::from);
                    Some((key.clone(), before, next, old_len, new_len, old_cost, new_cost))
                }
                None => None,
            };
            s.offset += 1;
            let publication = Publication {
                channel: input.channel,
                epoch: s.epoch.to_string(),
                offset: s.offset,
                id: herald_protocol::publication::publication_id(&s.epoch, s.offset),
                kind: input.kind,
                data: input.data,
                time: now_rfc3339(),
                meta: input.meta,
                key: keyed.as_ref().map(|(k, _)| k.clone()),
                op: keyed.as_ref().map(|(_, op)| *op),
                truncated: None,
            };
            let record_change = match &change {
                Some((key, before, after, ..)) if ns.views() => Some(Arc::new(RecordChange {
                    key: key.clone(),
                    before: before.clone(),
                    after: after.clone(),
                })),
                _ => None,
            };
            let encoded = Arc::new(
                Encoded::new(&publication, s.channel.clone(), s.epoch.clone())
                    .with_change(record_change),
            );
            if let Some((key, _, next, old_len, new_len, old_cost, new_cost)) = change {
                s.state_bytes = s.state_bytes - old_len + new_len;
                self.budget.state.fetch_add(new_cost, Ordering::Relaxed);
                self.budget.state.fetch_sub(old_cost, Ordering::Relaxed);
                match next {
                    Some(v) => {
                        s.state.insert(key, (v, publication.offset));
                    }
                    None => {
                        s.state.remove(&key);
                    }
                }
            }
            if ns.history_size > 0 {
                s.push(encoded.clone(), &self.budget);
            }
            s.trim(ns, &self.budget);
            let result = PublishResult {
                channel: publication.channel,
                epoch: publication.epoch,
                offset: publication.offset,
                id: publication.id,
                time: publication.time,
                duplicate: false,
            };
            if let Some(key) = idem {
                s.dedupe.insert(key.clone(), result.clone());
                s.dedupe_order.push_back((now + ns.idempotency_window, key));
            }
            if let Some(fanout) = self.fanout.get() {
                fanout.deliver(encoded);
            }
            result
        };
        // With this stream's lock released: eviction locks other streams.
        self.enforce_budget();
        Ok(Some(result))
    }

    /// Drops the oldest publications of the hub until history and state fit the budget.
    fn enforce_budget(&self) {
        for _ in 0..MAX_EVICTIONS_PER_PUBLISH {
            if !self.budget.over() {
                return;
            }
            let Some((at, channel)) = self.budget.oldest.lock().first().cloned() else { return };
            let Some(stream) = self.streams.read().get(&channel).cloned() else {
                // Cannot happen (streams are dropped only without history); never loop on it.
                self.budget.oldest.lock().remove(&(at, channel));
                continue;
            };
            let mut s = stream.lock();
            // The stream moved on since the set was read: read it again.
            if s.indexed == Some(at) {
                s.pop_front(&self.budget);
                s.reindex(&self.budget);
            }
        }
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn attach(&self, fanout: Arc<dyn Delivery>) {
        let _ = self.fanout.set(fanout);
    }

    async fn publish(
        &self,
        ns: &Namespace,
        input: PublishInput,
    ) -> Result<PublishResult, EngineError> {
        let published = self.publish_checked(ns, input, None)?;
        Ok(published.expect("an unconditional publish always publishes"))
    }

    async fn publish_if(
        &self,
        ns: &Namespace,
        input: PublishInput,
        expected: &str,
    ) -> Result<Option<PublishResult>, EngineError> {
        self.publish_checked(ns, input, Some(expected))
    }

    async fn publish_volatile(&self, channel: &str, frame: Arc<str>) -> Result<(), EngineError> {
        if let Some(fanout) = self.fanout.get() {
            fanout.deliver_volatile(channel, frame);
        }
        Ok(())
    }

    async fn listen(&self, channel: &str) -> Result<(), EngineError> {
        self.listened.lock().entry(channel.to_string()).or_default().refs += 1;
        Ok(())
    }

    async fn unlisten(&self, channel: &str) {
        let mut listened = self.listened.lock();
        if let Some(l) = listened.get_mut(channel) {
            l.refs -= 1;
            if l.refs == 0 {
                listened.remove(channel);
            }
        }
    }

    /// Drops streams that hold nothing any more (history aged out, no state, no idempotency
    /// keys) and have no subscribers. A later publish starts a new epoch (the seed of derived
    /// epochs changes with every drop), so a client resuming from the old one is told
    /// `epoch_changed`, never misled.
    async fn maintain(&self, config: &crate::config::Config) {
        let candidates: Vec<(Arc<str>, Arc<Mutex<Stream>>)> =
            self.streams.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let now = Instant::now();
        for (channel, stream) in candidates {
            if self.listened.lock().contains_key(&*channel) {
                continue;
            }
            let Some(ns) = config.namespaces.get(crate::config::Config::namespace_of(&channel))
            else {
                continue;
            };
            let idle = {
                let mut s = stream.lock();
                s.trim(ns, &self.budget);
                s.forget_old_keys(now);
                s.idle()
            };
            if idle {
                let mut streams = self.streams.write();
                // Re-check under the map lock: a publish may have raced in.
                let still_idle = streams.get(&channel).is_some_and(|s| s.lock().idle());
                if still_idle && !self.listened.lock().contains_key(&*channel) {
                    streams.remove(&channel);
                    // Before the map lock is released: the channel's next stream derives
                    // another epoch than the one just dropped.
                    *self.seed.lock() = std::hash::RandomState::new();
                }
            }
        }
    }

    async fn read(
        &self,
        ns: &Namespace,
        channel: &str,
        window: Window,
        records: bool,
    ) -> Result<StreamRead, EngineError> {
        let budget = &self.budget;
        Ok(self.with_stream(channel, |s, epoch| {
            let Some(s) = s else {
                return StreamRead {
                    epoch: epoch.to_string(),
                    records: records.then(Vec::new),
                    ..StreamRead::default()
                };
            };
            s.trim(ns, budget);
            StreamRead {
                epoch: epoch.to_string(),
                offset: s.offset,
                earliest: s.earliest(),
                publications: match window {
                    Window::Nothing => Vec::new(),
                    Window::After { after, limit } => s.after(after, limit),
                    Window::Before { before, limit } => s.before(before, limit),
                },
                records: records.then(|| s.records()),
            }
        }))
    }

    async fn ready(&self) -> bool {
        true
    }

    fn memory(&self) -> Option<(usize, usize)> {
        Some((self.budget.used(), self.budget.limit()))
    }
}

#[cfg(test)]
mod tests {
    //! What only the memory engine has: housekeeping and the hub-wide budget. What every engine
    //! must do is in the engine conformance suite (`crates/server/tests/engine_conformance.rs`).

    use super::*;
    use crate::rules::{self, Recovery};
    use herald_protocol::reply::NotRecovered;
    use herald_protocol::{Meta, Op, Position};

    /// The hub's recover (the rules over this engine), so these tests read as a subscriber would.
    trait Reads {
        async fn recover(
            &self,
            ns: &Namespace,
            channel: &str,
            since: Option<&Position>,
            snapshot: bool,
        ) -> Result<Recovery, EngineError>;
    }

    impl Reads for MemoryEngine {
        async fn recover(
            &self,
            ns: &Namespace,
            channel: &str,
            since: Option<&Position>,
            snapshot: bool,
        ) -> Result<Recovery, EngineError> {
            rules::recover(self, ns, channel, since, snapshot).await
        }
    }

    fn input(channel: &str, data: &str, key: Option<&str>, op: Option<Op>) -> PublishInput {
        PublishInput {
            channel: channel.into(),
            kind: "t".into(),
            data: RawValue::from_string(data.into()).unwrap(),
            key: key.map(Into::into),
            op,
            meta: Meta::default(),
        }
    }

    #[tokio::test]
    async fn maintain_drops_only_empty_unlistened_streams() {
        let e = MemoryEngine::new();
        let mut config = crate::config::Config::default();
        config.namespaces.get_mut("default").unwrap().history_size = 0;
        let ns = config.namespaces["default"].clone();
        e.publish(&ns, input("gone", "1", None, None)).await.unwrap();
        e.publish(&ns, input("watched", "1", None, None)).await.unwrap();
        e.listen("watched").await.unwrap();
        let watched = e.recover(&ns, "watched", None, false).await.unwrap();
        e.maintain(&config).await;
        assert!(!e.streams.read().contains_key("gone"));
        let again = e.recover(&ns, "watched", None, false).await.unwrap();
        assert_eq!((again.epoch, again.offset), (watched.epoch, 1));
    }

    /// Past the hub-wide budget the oldest history of the hub goes first, accounting stays under
    /// the budget after every publish, and a resume that needed a dropped publication is told
    /// `history_trimmed`.
    #[tokio::test]
    async fn budget_drops_the_oldest_history_of_the_hub_first() {
        const BUDGET: usize = 30_000;
        let e = MemoryEngine::with_budget(BUDGET);
        let ns = Namespace::default();
        let data = format!("\"{}\"", "d".repeat(400));
        let a0 = e.recover(&ns, "a", None, false).await.unwrap();
        let b0 = e.recover(&ns, "b", None, false).await.unwrap();
        for _ in 0..30 {
            e.publish(&ns, input("a", &data, None, None)).await.unwrap();
        }
        for _ in 0..30 {
            e.publish(&ns, input("b", &data, None, None)).await.unwrap();
        }
        assert!(e.budget().used() <= BUDGET, "{}", e.budget().used());
        let kept = |e: &MemoryEngine, c: &str| e.streams.read()[c].lock().history.len();
        let full = BUDGET / (entry_cost(&e.streams.read()["b"].lock().history[0]));
        assert!(kept(&e, "a") + kept(&e, "b") >= full - 1, "the budget is used, not wasted");
        assert_eq!(kept(&e, "b"), 30, "the newer channel is untouched while the older has history");
        assert!(kept(&e, "a") < 30);
        let mut max_used = 0;
        for _ in 0..100 {
            e.publish(&ns, input("c", &data, None, None)).await.unwrap();
            max_used = max_used.max(e.budget().used());
        }
        assert!(max_used <= BUDGET, "{max_used}");
        assert_eq!(kept(&e, "a"), 0, "the oldest channel went first");
        assert_eq!(kept(&e, "b"), 0);
        assert!(kept(&e, "c") > 0);
        assert_eq!(e.budget().oldest.lock().len(), 1, "one index entry per stream with history");
        let since = |r: &Recovery| Position { epoch: r.epoch.clone(), offset: 0 };
        let r = e.recover(&ns, "a", Some(&since(&a0)), false).await.unwrap();
        assert_eq!((r.recovered, r.reason), (Some(false), Some(NotRecovered::HistoryTrimmed)));
        let r = e.recover(&ns, "b", Some(&since(&b0)), false).await.unwrap();
        assert_eq!(r.reason, Some(NotRecovered::HistoryTrimmed));
        // Within the kept window a resume still recovers.
        let c = e.recover(&ns, "c", None, false).await.unwrap();
        let at = Position { epoch: c.epoch.clone(), offset: c.offset - 3 };
        let r = e.recover(&ns, "c", Some(&at), false).await.unwrap();
        assert_eq!((r.recovered, r.publications.len()), (Some(true), 3));
    }

    /// State cannot be dropped: once history is gone and state alone would pass the budget,
    /// keyed publishes that grow it are refused with 112; shrinking ones still pass.
    #[tokio::test]
    async fn budget_refuses_state_growth_past_it() {
        const BUDGET: usize = 20_000;
        let e = MemoryEngine::with_budget(BUDGET);
        let ns = Namespace { keyed: true, ..Namespace::default() };
        let data = format!("\"{}\"", "v".repeat(900));
        let mut refused = None;
        for i in 0..100 {
            match e.publish(&ns, input("k", &data, Some(&format!("r{i}")), None)).await {
                Ok(_) => assert!(e.budget().used() <= BUDGET),
                Err(err) => {
                    refused = Some((i, err));
                    break;
                }
            }
        }
        let (i, err) = refused.expect("state growth is refused");
        assert!(matches!(err, EngineError::StateLimit(_)), "{err}");
        assert!(err.to_string().contains("memory_budget_bytes"), "{err}");
        assert!(i >= BUDGET / 1200, "refused only when state itself fills the budget: {i}");
        assert_eq!(e.budget().history.load(Ordering::Relaxed), 0, "history went first");
        e.publish(&ns, input("k", "null", Some("r0"), Some(Op::Delete))).await.unwrap();
        assert!(e.budget().used() <= BUDGET);
    }

    /// Housekeeping that drops a stream reseeds the epochs of channels without one, yet a
    /// subscriber told an empty epoch before that still gets the first publication in it, and a
    /// dropped stream comes back under another epoch.
    #[tokio::test]
    async fn housekeeping_reseeds_but_the_told_epoch_holds() {
        let e = MemoryEngine::new();
        let mut config = crate::config::Config::default();
        config.namespaces.get_mut("default").unwrap().history_size = 0;
        let ns = config.namespaces["default"].clone();
        // A subscriber of "x" is told E; housekeeping drops another stream (new seed); the first
        // publish of "x" is still E:1.
        e.listen("x").await.unwrap();
        let told = e.recover(&ns, "x", None, false).await.unwrap();
        e.publish(&ns, input("gone", "1", None, None)).await.unwrap();
        let gone = e.recover(&ns, "gone", None, false).await.unwrap().epoch;
        e.maintain(&config).await;
        assert_eq!(e.stream_count(), 0);
        let p = e.publish(&ns, input("x", "1", None, None)).await.unwrap();
        assert_eq!((p.epoch.as_str(), p.offset), (told.epoch.as_str(), 1));
        // A dropped stream comes back under another epoch: its old positions are not reused.
        let again = e.publish(&ns, input("gone", "1", None, None)).await.unwrap();
        assert_ne!(again.epoch, gone);
        assert_eq!(again.offset, 1);
    }
}
