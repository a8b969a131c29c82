//! Fan-out across nodes: the one pub/sub connection of a node, the channels it listens to, and
//! the check of each arriving publication's position (see the module docs' "Fan-out").

use super::dispatch::{Dispatch, Job};
use super::stored::{encoded, split_message, split_volatile};
use super::witness::POISONED;
use super::{Inner, LISTEN_TIMEOUT, OP_TIMEOUT, PUBSUB_PING_EVERY};
use crate::engine::EngineError;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// One channel this node listens to.
#[derive(Default)]
pub(super) struct Listened {
    /// `listen` calls not yet matched by `unlisten`.
    refs: usize,
    /// The SUBSCRIBE is confirmed on the current pub/sub connection: publications flow.
    confirmed: bool,
    /// Callers waiting for `confirmed`.
    waiters: Vec<oneshot::Sender<()>>,
    /// Epoch and offset of the last publication delivered, to notice gaps.
    last: Option<(Arc<str>, u64)>,
    /// For a channel subscribed when the connection opened: the position witnessed before its
    /// SUBSCRIBE was sent. Whatever comes over the new connection was published later, so a
    /// publication at or below it in its epoch is at a reused position (Redis lost writes).
    /// [`POISONED`] once one was seen.
    floor: Option<(Arc<str>, u64)>,
}

impl Listened {
    /// Has local subscribers: its SUBSCRIBE should be in place.
    pub(super) fn wanted(&self) -> bool {
        self.refs > 0
    }

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

impl Inner {
    /// One more local subscriber on `channel` ([`crate::engine::Engine::listen`]).
    pub(super) async fn listen(&self, channel: &str) -> Result<(), EngineError> {
        {
            let mut listened = self.listened.lock();
            let l = listened.entry(channel.to_string()).or_default();
            l.refs += 1;
            if l.confirmed {
                return Ok(());
            }
            if l.refs == 1 {
                let _ = self.sync.send(channel.to_string());
            }
        }
        // Every `listen` must be matched by exactly one `unlisten`, so this never fails: when
        // the SUBSCRIBE cannot be confirmed in time, `recover` (which waits again) answers
        // `unavailable` and the subscribe is refused there.
        let _ = self.flowing(channel).await;
        Ok(())
    }

    /// One local subscriber fewer on `channel` ([`crate::engine::Engine::unlisten`]).
    pub(super) fn unlisten(&self, channel: &str) {
        let mut listened = self.listened.lock();
        let Some(l) = listened.get_mut(channel) else { return };
        l.refs = l.refs.saturating_sub(1);
        if l.refs == 0 {
            listened.remove(channel);
            let _ = self.sync.send(channel.to_string());
        }
    }

    /// Waits until publications of `channel` flow to this node (its SUBSCRIBE is confirmed on
    /// the current pub/sub connection). Channels nobody listens to need no wait.
    pub(super) async fn flowing(&self, channel: &str) -> Result<(), EngineError> {
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

    /// Notes the witnessed position of each of `channels` as its floor, before their SUBSCRIBE
    /// is sent (see [`Listened::floor`]).
    pub(super) fn set_floors<'a>(&self, channels: impl IntoIterator<Item = &'a String>) {
        let mut listened = self.listened.lock();
        let witnesses = self.witnesses.lock();
        for c in channels {
            if let Some(l) = listened.get_mut(c.as_str()) {
                l.floor = witnesses.get(c).map(|(e, o)| (Arc::from(e), o));
            }
        }
    }

    /// A message from pub/sub channel `pubsub_name`: a publication (its position checked) or a
    /// volatile event, as the work for the channel's local subscribers; `None` when there is
    /// nothing to do. The caller hands the work to [`Dispatch`] in the order messages arrived.
    pub(super) fn on_message(
        self: &Arc<Self>,
        pubsub_name: &str,
        payload: &[u8],
    ) -> Option<(String, Vec<Job>)> {
        let channel = self.channel_of(pubsub_name)?;
        let Ok(payload) = std::str::from_utf8(payload) else {
            tracing::warn!(channel, "non-UTF-8 message on a herald pub/sub channel");
            return None;
        };
        // A volatile event has no position: it goes out as it is, and touches no `last`.
        if let Some(frame) = split_volatile(payload) {
            if !self.listened.lock().get(channel).is_some_and(|l| l.confirmed) {
                return None;
            }
            return Some((channel.into(), vec![Job::Volatile(channel.into(), frame.into())]));
        }
        // The publication with its record change (views), parsed before any position check so
        // that a malformed message changes no position.
        let Some((epoch, offset, frame)) =
            split_message(payload).and_then(|(epoch, offset, rest)| {
                Some((epoch, offset, encoded(channel, epoch, offset, rest)?))
            })
        else {
            tracing::warn!(channel, "malformed message on a herald pub/sub channel");
            return None;
        };
        let gap = {
            let mut listened = self.listened.lock();
            // Whatever Redis sends is a position it held.
            self.witnesses.lock().see(channel, epoch, offset);
            let l = listened.get_mut(channel)?;
            if !l.confirmed {
                return None;
            }
            // Redis sends a message once per subscription, in order, and only ones published
            // after the SUBSCRIBE: at or below the last one or the floor, the position names a
            // second publication.
            let at_or_below = |p: &Option<(Arc<str>, u64)>| {
                p.as_ref().is_some_and(|(e, o)| **e == *epoch && offset <= *o)
            };
            if at_or_below(&l.floor) || at_or_below(&l.last) {
                if l.floor.as_ref().is_some_and(|(e, o)| **e == *epoch && *o == POISONED) {
                    return None; // reported already
                }
                l.floor = Some((epoch.into(), POISONED));
                l.last = None;
                self.witnesses.lock().poison(channel, epoch);
                drop(listened);
                self.on_reused(channel, epoch, offset);
                return Some((channel.into(), vec![Job::Reset(channel.into())]));
            }
            let gap = match &l.last {
                None => false,
                Some((e, o)) if **e == *epoch => offset != o + 1,
                Some(_) => true,
            };
            let epoch: Arc<str> = match &l.last {
                Some((e, _)) if **e == *epoch => e.clone(),
                _ => epoch.into(),
            };
            l.last = Some((epoch, offset));
            gap
        };
        let mut jobs = Vec::with_capacity(2);
        if gap {
            tracing::warn!(channel, offset, "position gap on the redis stream: resubscribing");
            jobs.push(Job::Reset(channel.into()));
        }
        jobs.push(Job::Deliver(Arc::new(frame)));
        Some((channel.into(), jobs))
    }

    /// A publication came at a reused position of `epoch`: Redis lost writes and another node,
    /// which had not witnessed them, published again from the older data. Every local
    /// subscriber resyncs (the caller queues the reset), and the channel gets a new epoch in
    /// Redis (its witness is poisoned, so the resubscribes' reads would start it too) so that no
    /// one reuses positions further.
    fn on_reused(self: &Arc<Self>, channel: &str, epoch: &str, offset: u64) {
        tracing::warn!(
            channel,
            epoch,
            offset,
            "a publication at an already witnessed position: redis lost writes; resubscribing"
        );
        let (inner, channel, epoch) = (self.clone(), channel.to_string(), epoch.to_string());
        tokio::spawn(async move {
            if let Err(e) = inner.check_lost(&channel, &epoch, POISONED).await {
                // The resubscribes' reads start the new epoch then.
                tracing::debug!(channel, error = %e, "lost-writes check failed");
            }
        });
    }

    /// The pub/sub connection is gone: nothing is confirmed any more, every subscriber resumes
    /// once what the lanes still hold from the old connection is delivered.
    async fn on_down(&self, dispatch: Option<&Dispatch>) {
        self.pubsub_up.store(false, Ordering::Release);
        {
            let mut listened = self.listened.lock();
            for l in listened.values_mut() {
                l.confirmed = false;
                l.last = None;
            }
        }
        if let Some(d) = dispatch {
            d.settle().await;
        }
        if let Some(f) = self.fanout() {
            f.reset(None);
        }
    }

    /// The lanes, started once the fan-out is attached (messages before that reach no one).
    pub(super) fn dispatch<'a>(&self, dispatch: &'a mut Option<Dispatch>) -> Option<&'a Dispatch> {
        if dispatch.is_none() {
            *dispatch = self.fanout().map(|f| Dispatch::start(f.clone()));
        }
        dispatch.as_ref()
    }

    /// Marks channels confirmed after their SUBSCRIBE succeeded.
    pub(super) fn confirm<'a>(&self, channels: impl IntoIterator<Item = &'a String>) {
        let mut listened = self.listened.lock();
        for c in channels {
            if let Some(l) = listened.get_mut(c.as_str())
                && l.refs > 0
            {
                l.confirm();
            }
        }
    }

    /// `channel`'s subscription is gone (its shard connection, or its slot moved): nothing
    /// flows until it is confirmed again. True when it was confirmed (its subscribers must then
    /// resubscribe).
    pub(super) fn unconfirm(&self, channel: &str) -> bool {
        let mut listened = self.listened.lock();
        let Some(l) = listened.get_mut(channel) else { return false };
        l.last = None;
        std::mem::replace(&mut l.confirmed, false)
    }

    /// Whether `channel` still has local subscribers (its SUBSCRIBE should be in place).
    pub(super) fn wanted(&self, channel: &str) -> bool {
        self.listened.lock().get(channel).is_some_and(|l| l.refs > 0)
    }
}

/// Most channel changes sent in one SUBSCRIBE (or UNSUBSCRIBE).
const SYNC_BATCH: usize = 500;

/// Reads the pub/sub connection until it fails; reconnects with backoff, forever (until the
/// engine is dropped).
pub(super) async fn pubsub_task(inner: Weak<Inner>, mut sync: mpsc::UnboundedReceiver<String>) {
    let mut backoff = Duration::from_millis(50);
    let mut dispatch = None;
    loop {
        let Some(engine) = inner.upgrade() else { return };
        match serve_pubsub(&engine, &mut sync, &mut dispatch).await {
            Ok(()) => return,
            Err(e) => {
                let was_up = engine.pubsub_up.load(Ordering::Acquire);
                engine.on_down(dispatch.as_ref()).await;
                engine.nudge_follow();
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
        let mut conn = engine.conn();
        tokio::spawn(async move {
            let cmd = redis::cmd("PING");
            let _ = tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<String>(&mut conn)).await;
        });
        let master_changed = engine.master_changed.clone();
        drop(engine);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = master_changed.notified() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// One pub/sub connection's life. `Ok` only when the engine is gone.
async fn serve_pubsub(
    engine: &Arc<Inner>,
    sync: &mut mpsc::UnboundedReceiver<String>,
    dispatch: &mut Option<Dispatch>,
) -> Result<(), String> {
    let timed = |what: &'static str| {
        move |r: Result<redis::RedisResult<()>, tokio::time::error::Elapsed>| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: timed out")),
        }
    };
    // Read before the client: a master that changes after this is noticed at the next ping.
    let generation = engine.generation.load(Ordering::Acquire);
    let pubsub = tokio::time::timeout(OP_TIMEOUT, engine.client().get_async_pubsub())
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
        engine.set_floors(chunk);
        timed("subscribe")(tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&names)).await)?;
        subscribed.extend(chunk.iter().cloned());
        engine.confirm(chunk);
    }
    engine.pubsub_up.store(true, Ordering::Release);
    tracing::info!(channels = subscribed.len(), "redis pub/sub connected");
    let checking = engine.clone();
    tokio::spawn(async move { checking.check_all_witnessed().await });
    let mut ping = tokio::time::interval(PUBSUB_PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => {
                    let work = engine.on_message(msg.get_channel_name(), msg.get_payload_bytes());
                    if let Some((channel, jobs)) = work
                        && let Some(lanes) = engine.dispatch(dispatch)
                    {
                        for job in jobs {
                            lanes.send(&channel, job).await;
                        }
                    }
                }
                None => return Err("connection closed".into()),
            },
            channel = sync.recv() => {
                let Some(channel) = channel else { return Ok(()) };
                // Every change queued by now goes out in one SUBSCRIBE and one UNSUBSCRIBE
                // (a burst of new channels costs one round trip, not one each).
                let mut changed = vec![channel];
                while changed.len() < SYNC_BATCH {
                    match sync.try_recv() {
                        Ok(c) => changed.push(c),
                        Err(_) => break,
                    }
                }
                changed.sort_unstable();
                changed.dedup();
                let (mut add, mut drop) = (Vec::new(), Vec::new());
                for channel in changed {
                    match (engine.wanted(&channel), subscribed.contains(&channel)) {
                        (true, false) => add.push(channel),
                        (true, true) => engine.confirm([&channel]),
                        (false, true) => drop.push(channel),
                        (false, false) => {}
                    }
                }
                if !add.is_empty() {
                    // No floor: publications of an earlier subscription of this connection
                    // may still be queued behind this SUBSCRIBE, below what was witnessed since.
                    let names: Vec<String> = add.iter().map(|c| engine.pubsub_name(c)).collect();
                    timed("subscribe")(tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&names)).await)?;
                    engine.confirm(&add);
                    subscribed.extend(add);
                }
                if !drop.is_empty() {
                    let names: Vec<String> = drop.iter().map(|c| engine.pubsub_name(c)).collect();
                    timed("unsubscribe")(tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(&names)).await)?;
                    for c in &drop {
                        subscribed.remove(c);
                    }
                }
            }
            _ = engine.master_changed.notified() => {
                if engine.generation.load(Ordering::Acquire) != generation {
                    return Err("the redis master changed (sentinel)".into());
                }
            }
            _ = ping.tick() => {
                if engine.generation.load(Ordering::Acquire) != generation {
                    return Err("the redis master changed (sentinel)".into());
                }
                let pong = tokio::time::timeout(OP_TIMEOUT, sink.ping::<redis::Value>()).await;
                timed("ping")(pong.map(|r| r.map(|_| ())))?;
            }
        }
    }
}
