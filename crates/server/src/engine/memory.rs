//! The embedded engine: one node, everything in this process's memory.
//!
//! Each channel's stream sits behind its own mutex; a publish assigns the offset, appends to the
//! history, updates the keyed state and hands the frame to the fan-out while holding it, so local
//! subscribers see one order. Restarting the process loses every stream: new epochs.

use super::{
    Encoded, Engine, EngineError, Fanout, History, PublishInput, Recovery, State, apply_op,
    keyed_op, new_epoch, now_rfc3339,
};
use crate::config::Namespace;
use async_trait::async_trait;
use herald_protocol::command::HistoryQuery;
use herald_protocol::reply::{NotRecovered, PublishResult};
use herald_protocol::{Position, Publication, Record};
use parking_lot::{Mutex, RwLock};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// The memory engine.
#[derive(Default)]
pub struct MemoryEngine {
    /// Every stream by channel name.
    streams: RwLock<HashMap<Arc<str>, Arc<Mutex<Stream>>>>,
    /// Where publications go once stored.
    fanout: OnceLock<Arc<dyn Fanout>>,
    /// Channels with local subscribers (listen count), which are never swept.
    listened: Mutex<HashMap<String, usize>>,
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
    /// Keyed state: key → (value, offset of last change).
    state: BTreeMap<String, (Box<RawValue>, u64)>,
    /// Bytes of values in `state`.
    state_bytes: usize,
    /// Idempotency keys seen recently and what they got.
    dedupe: HashMap<String, PublishResult>,
    /// Expiry order of `dedupe`.
    dedupe_order: VecDeque<(Instant, String)>,
}

impl Stream {
    fn new(channel: &str) -> Stream {
        Stream {
            channel: channel.into(),
            epoch: new_epoch().into(),
            offset: 0,
            history: VecDeque::new(),
            state: BTreeMap::new(),
            state_bytes: 0,
            dedupe: HashMap::new(),
            dedupe_order: VecDeque::new(),
        }
    }

    /// Drops publications beyond the count or age bound.
    fn trim(&mut self, ns: &Namespace) {
        while self.history.len() > ns.history_size {
            self.history.pop_front();
        }
        let ttl = ns.history_ttl;
        while self.history.front().is_some_and(|p| p.accepted.elapsed() > ttl) {
            self.history.pop_front();
        }
    }

    /// Lowest offset in the history (0 when empty).
    fn earliest(&self) -> u64 {
        self.history.front().map_or(0, |p| p.offset)
    }

    /// Publications with offset > `after`, if the history still holds all of them.
    fn since(&self, after: u64) -> Option<Vec<Arc<Encoded>>> {
        if after >= self.offset {
            return Some(Vec::new());
        }
        let earliest = self.history.front()?.offset;
        if earliest > after + 1 {
            return None;
        }
        let skip = (after + 1 - earliest) as usize;
        Some(self.history.iter().skip(skip).cloned().collect())
    }

    fn records(&self) -> Vec<Record> {
        self.state
            .iter()
            .map(|(key, (value, offset))| Record {
                key: key.clone(),
                value: value.clone(),
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
}

impl MemoryEngine {
    /// A new, empty engine.
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    fn stream(&self, channel: &str) -> Arc<Mutex<Stream>> {
        if let Some(s) = self.streams.read().get(channel) {
            return s.clone();
        }
        self.streams
            .write()
            .entry(channel.into())
            .or_insert_with(|| Arc::new(Mutex::new(Stream::new(channel))))
            .clone()
    }

    /// The stream if it exists; reads of unknown channels do not create one.
    fn existing(&self, channel: &str) -> Option<Arc<Mutex<Stream>>> {
        self.streams.read().get(channel).cloned()
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn attach(&self, fanout: Arc<dyn Fanout>) {
        let _ = self.fanout.set(fanout);
    }

    async fn publish(
        &self,
        ns: &Namespace,
        input: PublishInput,
    ) -> Result<PublishResult, EngineError> {
        let keyed = keyed_op(ns, &input)?;
        let stream = self.stream(&input.channel);
        let mut s = stream.lock();
        let now = Instant::now();
        let idem = input.meta.idempotency_key.clone();
        if let Some(key) = &idem {
            s.forget_old_keys(now);
            if let Some(prior) = s.dedupe.get(key) {
                return Ok(PublishResult { duplicate: true, ..prior.clone() });
            }
        }
        // Keyed state: compute the new value and check limits before anything changes.
        let change = match &keyed {
            Some((key, op)) => {
                let current = s.state.get(key);
                let next = apply_op(current.map(|(v, _)| &**v), *op, &input.data)?;
                let old_len = current.map_or(0, |(v, _)| v.get().len());
                let new_len = next.as_ref().map_or(0, |v| v.get().len());
                if current.is_none() && next.is_some() && s.state.len() >= ns.max_state_records {
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
                Some((key.clone(), next, old_len, new_len))
            }
            None => None,
        };
        s.offset += 1;
        let publication = Publication {
            channel: input.channel,
            epoch: s.epoch.to_string(),
            offset: s.offset,
            id: format!("{}-{}", s.epoch, s.offset),
            kind: input.kind,
            data: input.data,
            time: now_rfc3339(),
            meta: input.meta,
            key: keyed.as_ref().map(|(k, _)| k.clone()),
            op: keyed.as_ref().map(|(_, op)| *op),
        };
        let encoded = Arc::new(Encoded::new(&publication, s.channel.clone(), s.epoch.clone()));
        if let Some((key, next, old_len, new_len)) = change {
            s.state_bytes = s.state_bytes - old_len + new_len;
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
            s.history.push_back(encoded.clone());
        }
        s.trim(ns);
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
        Ok(result)
    }

    async fn listen(&self, channel: &str) -> Result<(), EngineError> {
        *self.listened.lock().entry(channel.to_string()).or_default() += 1;
        Ok(())
    }

    async fn unlisten(&self, channel: &str) {
        let mut listened = self.listened.lock();
        if let Some(n) = listened.get_mut(channel) {
            *n -= 1;
            if *n == 0 {
                listened.remove(channel);
            }
        }
    }

    /// Drops streams that hold nothing any more (history aged out, no state, no idempotency
    /// keys) and have no subscribers. A later publish starts a new epoch, so a client resuming
    /// from the old one is told `epoch_changed`, never misled.
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
                s.trim(ns);
                s.forget_old_keys(now);
                s.history.is_empty() && s.state.is_empty() && s.dedupe.is_empty()
            };
            if idle {
                let mut streams = self.streams.write();
                // Re-check under the map lock: a publish may have raced in.
                let still_idle = streams.get(&channel).is_some_and(|s| {
                    let s = s.lock();
                    s.history.is_empty() && s.state.is_empty() && s.dedupe.is_empty()
                });
                if still_idle && !self.listened.lock().contains_key(&*channel) {
                    streams.remove(&channel);
                }
            }
        }
    }

    async fn recover(
        &self,
        ns: &Namespace,
        channel: &str,
        since: Option<&Position>,
        snapshot: bool,
    ) -> Result<Recovery, EngineError> {
        let stream = self.stream(channel);
        let mut s = stream.lock();
        s.trim(ns);
        let mut r = Recovery {
            epoch: s.epoch.to_string(),
            offset: s.offset,
            keyed: ns.keyed,
            ..Recovery::default()
        };
        if let Some(since) = since {
            // A `since` ahead of the stream cannot belong to it: the stream the client knew is
            // gone (the same answer the Redis engine gives after a restore from an old snapshot).
            let outcome = if since.epoch != *s.epoch || since.offset > s.offset {
                Err(NotRecovered::EpochChanged)
            } else if s.offset - since.offset > ns.max_recover as u64 {
                Err(NotRecovered::TooMany)
            } else {
                s.since(since.offset).ok_or(NotRecovered::HistoryTrimmed)
            };
            match outcome {
                Ok(pubs) => {
                    r.recovered = Some(true);
                    r.publications = pubs;
                }
                Err(reason) => {
                    r.recovered = Some(false);
                    r.reason = Some(reason);
                }
            }
        }
        if ns.keyed && (snapshot || r.recovered == Some(false)) {
            r.snapshot = Some(s.records());
        }
        Ok(r)
    }

    async fn history(
        &self,
        ns: &Namespace,
        q: &HistoryQuery,
        max_page: usize,
    ) -> Result<History, EngineError> {
        let limit = q.limit.unwrap_or(100).min(max_page);
        let Some(stream) = self.existing(&q.channel) else {
            let s = self.stream(&q.channel);
            let s = s.lock();
            return Ok(History { epoch: s.epoch.to_string(), ..History::default() });
        };
        let mut s = stream.lock();
        s.trim(ns);
        let mut h = History {
            epoch: s.epoch.to_string(),
            offset: s.offset,
            earliest: s.earliest(),
            ..History::default()
        };
        if let Some(since) = &q.since {
            if since.epoch != *s.epoch {
                h.reason = Some(NotRecovered::EpochChanged);
            } else {
                match s.since(since.offset.min(s.offset)) {
                    Some(pubs) => h.publications = pubs.into_iter().take(limit).collect(),
                    None => h.reason = Some(NotRecovered::HistoryTrimmed),
                }
            }
        } else {
            let end = match q.before {
                Some(before) => s.history.iter().take_while(|p| p.offset < before).count(),
                None => s.history.len(),
            };
            let start = end.saturating_sub(limit);
            h.publications = s.history.range(start..end).cloned().collect();
        }
        Ok(h)
    }

    async fn state(&self, ns: &Namespace, channel: &str) -> Result<State, EngineError> {
        if !ns.keyed {
            return Err(EngineError::NotKeyed(format!("namespace of {channel:?} is not keyed")));
        }
        let stream = self.stream(channel);
        let s = stream.lock();
        Ok(State { epoch: s.epoch.to_string(), offset: s.offset, records: s.records() })
    }

    async fn ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::{Meta, Op};

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
    async fn offsets_history_and_recovery() {
        let e = MemoryEngine::new();
        let ns = Namespace { history_size: 3, max_recover: 10, ..Namespace::default() };
        let first = e.recover(&ns, "c", None, false).await.unwrap();
        assert_eq!(first.offset, 0);
        for i in 1..=5 {
            let r = e.publish(&ns, input("c", "1", None, None)).await.unwrap();
            assert_eq!(r.offset, i);
        }
        let pos = |offset| Position { epoch: first.epoch.clone(), offset };
        let r = e.recover(&ns, "c", Some(&pos(2)), false).await.unwrap();
        assert_eq!(r.recovered, Some(true));
        assert_eq!(r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![3, 4, 5]);
        let r = e.recover(&ns, "c", Some(&pos(1)), false).await.unwrap();
        assert_eq!((r.recovered, r.reason), (Some(false), Some(NotRecovered::HistoryTrimmed)));
        assert!(r.publications.is_empty());
        let r = e.recover(&ns, "c", Some(&pos(5)), false).await.unwrap();
        assert_eq!((r.recovered, r.publications.len()), (Some(true), 0));
        let other = Position { epoch: "zzz".into(), offset: 5 };
        let r = e.recover(&ns, "c", Some(&other), false).await.unwrap();
        assert_eq!(r.reason, Some(NotRecovered::EpochChanged));
        let ahead = Position { epoch: first.epoch.clone(), offset: 99 };
        let r = e.recover(&ns, "c", Some(&ahead), false).await.unwrap();
        assert_eq!(r.reason, Some(NotRecovered::EpochChanged));
        let tight = Namespace { max_recover: 1, ..ns.clone() };
        let r = e.recover(&tight, "c", Some(&pos(3)), false).await.unwrap();
        assert_eq!(r.reason, Some(NotRecovered::TooMany));
        let h = e
            .history(
                &ns,
                &HistoryQuery {
                    channel: "c".into(),
                    limit: Some(2),
                    before: Some(5),
                    ..Default::default()
                },
                100,
            )
            .await
            .unwrap();
        assert_eq!(h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[tokio::test]
    async fn keyed_state_and_limits() {
        let e = MemoryEngine::new();
        let ns = Namespace { keyed: true, max_state_records: 2, ..Namespace::default() };
        e.publish(&ns, input("k", r#"{"s":"todo","t":"a"}"#, Some("1"), None)).await.unwrap();
        e.publish(&ns, input("k", r#"{"s":"done"}"#, Some("1"), Some(Op::Merge))).await.unwrap();
        e.publish(&ns, input("k", r#"{"x":1}"#, Some("2"), Some(Op::Upsert))).await.unwrap();
        let err = e.publish(&ns, input("k", "1", Some("3"), None)).await.unwrap_err();
        assert!(matches!(err, EngineError::StateLimit(_)));
        e.publish(&ns, input("k", "null", Some("2"), Some(Op::Delete))).await.unwrap();
        let st = e.state(&ns, "k").await.unwrap();
        assert_eq!(st.offset, 4);
        assert_eq!(st.records.len(), 1);
        assert_eq!(st.records[0].value.get(), r#"{"s":"done","t":"a"}"#);
        let plain = Namespace::default();
        assert!(matches!(
            e.publish(&plain, input("p", "1", Some("x"), None)).await.unwrap_err(),
            EngineError::NotKeyed(_)
        ));
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
        assert!(e.existing("gone").is_none());
        let again = e.recover(&ns, "watched", None, false).await.unwrap();
        assert_eq!((again.epoch, again.offset), (watched.epoch, 1));
    }

    #[tokio::test]
    async fn idempotency_returns_first_result() {
        let e = MemoryEngine::new();
        let ns = Namespace::default();
        let mut i = input("c", "1", None, None);
        i.meta.idempotency_key = Some("op-1".into());
        let a = e.publish(&ns, i.clone()).await.unwrap();
        let b = e.publish(&ns, i).await.unwrap();
        assert_eq!((a.offset, b.offset, a.duplicate, b.duplicate), (1, 1, false, true));
    }
}
