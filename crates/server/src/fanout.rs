//! Fan-out: this node's channel → subscribers registry, between the engine and the sessions.
//!
//! The engine hands each live publication to [`Fanout::deliver`] (in offset order per channel);
//! the fan-out pushes the same `Arc<Encoded>` into the outbox of every local subscriber of that
//! channel, without waiting on any of them.
//!
//! Each channel has its own subscriber set behind its own lock. The map of channels is locked
//! only to find or replace a set, never across a fan-out or while a set is locked, so a
//! publication to a channel of 100,000 subscribers holds up nothing but that channel's own
//! subscribes and unsubscribes. A set is a vector (contiguous for the fan-out loop) with an
//! index by session id: unsubscribe is a `swap_remove`, O(1).

use crate::engine::Delivery;
use crate::frame::Encoded;
use crate::hash::FastMap;
use crate::outbox::{Outbox, Outgoing};
use crate::views::{Format, Selection, ViewSet};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// One channel's local subscribers.
struct ChannelSet {
    /// The channel name, shared with every `Reset` pushed for it.
    name: Arc<str>,
    /// The subscribers; locked for one fan-out, one add or one remove.
    members: Mutex<Members>,
    /// Resolved once the engine delivers this channel to this node (Redis SUBSCRIBE confirmed);
    /// a set removed and made again listens again.
    listening: Arc<OnceCell<()>>,
}

/// The subscribers of one channel.
#[derive(Default)]
struct Members {
    /// (session id, its outbox), in no particular order: what the fan-out walks.
    list: Vec<(u64, Arc<Outbox>)>,
    /// Where each session sits in `list`, so a remove finds it in O(1).
    index: HashMap<u64, usize>,
    /// View subscriptions of the channel (crate::views).
    views: ViewSet,
    /// The last subscriber left and the set is being taken out of the map: an add that finds
    /// it must put a fresh set in its place.
    removed: bool,
    /// Elements looked at or moved by removes (tests bound it: removal is O(1)).
    #[cfg(test)]
    steps: usize,
}

impl Members {
    /// No subscriber of either kind.
    fn is_empty(&self) -> bool {
        self.list.is_empty() && self.views.is_empty()
    }

    fn insert(&mut self, session: u64, outbox: Arc<Outbox>) {
        match self.index.get(&session) {
            Some(&at) => self.list[at].1 = outbox,
            None => {
                self.index.insert(session, self.list.len());
                self.list.push((session, outbox));
            }
        }
    }

    /// Removes a session; true when it was there.
    fn remove(&mut self, session: u64) -> bool {
        let Some(at) = self.index.remove(&session) else { return false };
        self.list.swap_remove(at);
        #[cfg(test)]
        {
            self.steps += 1;
        }
        if let Some((moved, _)) = self.list.get(at) {
            self.index.insert(*moved, at);
            #[cfg(test)]
            {
                self.steps += 1;
            }
        }
        true
    }
}

impl ChannelSet {
    fn new(name: &str) -> Arc<ChannelSet> {
        Arc::new(ChannelSet {
            name: name.into(),
            members: Mutex::new(Members::default()),
            listening: Arc::new(OnceCell::new()),
        })
    }
}

/// Told (channel, subscribers pushed) once per publication fanned out, for the per-namespace
/// delivery counts: one call per fan-out, not one per subscriber.
pub type DeliveryObserver = Arc<dyn Fn(&str, usize) + Send + Sync>;

/// This node's subscribers, by channel.
#[derive(Default)]
pub struct Fanout {
    /// Every channel with local subscribers.
    channels: RwLock<FastMap<Arc<str>, Arc<ChannelSet>>>,
    /// Counts what each fan-out pushed (the hub's metrics).
    observer: Option<DeliveryObserver>,
}

impl Fanout {
    /// An empty registry.
    pub fn new() -> Fanout {
        Fanout::default()
    }

    /// An empty registry that tells `observer` about each fan-out.
    pub fn with_observer(observer: DeliveryObserver) -> Fanout {
        Fanout { observer: Some(observer), ..Fanout::default() }
    }

    fn set(&self, channel: &str) -> Option<Arc<ChannelSet>> {
        self.channels.read().get(channel).cloned()
    }

    /// Adds a subscriber (a second add of the same session replaces its outbox); returns the
    /// channel's listening gate, which the hub resolves by asking the engine to listen.
    pub fn add(&self, channel: &str, session: u64, outbox: Arc<Outbox>) -> Arc<OnceCell<()>> {
        let mut set = match self.set(channel) {
            Some(set) => set,
            None => self
                .channels
                .write()
                .entry(channel.into())
                .or_insert_with(|| ChannelSet::new(channel))
                .clone(),
        };
        loop {
            {
                let mut members = set.members.lock();
                if !members.removed {
                    members.insert(session, outbox);
                    return set.listening.clone();
                }
            }
            // The set emptied and is on its way out: replace it (unless someone already did).
            let mut channels = self.channels.write();
            let current =
                channels.entry(channel.into()).or_insert_with(|| ChannelSet::new(channel));
            if Arc::ptr_eq(current, &set) {
                *current = ChannelSet::new(channel);
            }
            set = current.clone();
        }
    }

    /// Removes a subscriber; true when the channel has no local subscriber left (the hub then
    /// tells the engine to stop listening).
    pub fn remove(&self, channel: &str, session: u64) -> bool {
        let Some(set) = self.set(channel) else { return false };
        {
            let mut members = set.members.lock();
            if !members.remove(session) || !members.is_empty() {
                return false;
            }
            members.removed = true;
        }
        self.forget(channel, &set);
        true
    }

    /// Takes an emptied set out of the map (unless it was replaced already).
    fn forget(&self, channel: &str, set: &Arc<ChannelSet>) {
        let mut channels = self.channels.write();
        if channels.get(channel).is_some_and(|current| Arc::ptr_eq(current, set)) {
            channels.remove(channel);
        }
    }

    /// Registers a pending view subscription `sub` of `session` (see crate::views); returns
    /// the channel's listening gate, as [`Fanout::add`] does.
    pub fn add_view(
        &self,
        channel: &str,
        session: u64,
        sub: Arc<str>,
        outbox: Arc<Outbox>,
        selection: Arc<Selection>,
        format: Format,
    ) -> Arc<OnceCell<()>> {
        let mut set = match self.set(channel) {
            Some(set) => set,
            None => self
                .channels
                .write()
                .entry(channel.into())
                .or_insert_with(|| ChannelSet::new(channel))
                .clone(),
        };
        let mut format = Some(format);
        loop {
            {
                let mut members = set.members.lock();
                if !members.removed {
                    let name = set.name.clone();
                    let format = format.take().expect("added once");
                    members.views.add(name, session, sub, outbox, selection, format);
                    return set.listening.clone();
                }
            }
            let mut channels = self.channels.write();
            let current =
                channels.entry(channel.into()).or_insert_with(|| ChannelSet::new(channel));
            if Arc::ptr_eq(current, &set) {
                *current = ChannelSet::new(channel);
            }
            set = current.clone();
        }
    }

    /// Activates a view registered with [`Fanout::add_view`]: its reply, then the events of
    /// writes after `from`. False when the view is gone (reset meanwhile).
    pub fn activate_view(
        &self,
        channel: &str,
        session: u64,
        sub: &Arc<str>,
        from: u64,
        reply: String,
    ) -> bool {
        let Some(set) = self.set(channel) else { return false };
        set.members.lock().views.activate(session, sub, from, reply)
    }

    /// Replaces the format of a registered view (crate::views::ViewSet::set_format).
    pub fn set_view_format(&self, channel: &str, session: u64, sub: &Arc<str>, format: Format) {
        if let Some(set) = self.set(channel) {
            set.members.lock().views.set_format(session, sub, format);
        }
    }

    /// Removes a view subscription; true when the channel has no local subscriber left.
    pub fn remove_view(&self, channel: &str, session: u64, sub: &Arc<str>) -> bool {
        let Some(set) = self.set(channel) else { return false };
        {
            let mut members = set.members.lock();
            if !members.views.remove(session, sub) || !members.is_empty() {
                return false;
            }
            members.removed = true;
        }
        self.forget(channel, &set);
        true
    }

    /// Channels with their local subscriber counts, sorted by channel.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let sets: Vec<Arc<ChannelSet>> = self.channels.read().values().cloned().collect();
        let mut v: Vec<(String, usize)> = sets
            .iter()
            .map(|s| {
                let members = s.members.lock();
                (s.name.to_string(), members.list.len() + members.views.len())
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        v.sort();
        v
    }

    /// Names of channels with local subscribers.
    pub fn channel_names(&self) -> Vec<String> {
        self.channels.read().keys().map(|c| c.to_string()).collect()
    }

    /// Whether `channel` has a local subscriber (one lookup, for a publisher that only works
    /// while someone listens: `sys:stats`).
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.set(channel).is_some_and(|set| !set.members.lock().is_empty())
    }
}

/// Publications with larger frames are delivered as a [`Encoded::live_copy`] (the smallest
/// `chunk_bytes` a namespace may set).
const LIVE_COPY_BYTES: usize = 1024;

impl Delivery for Fanout {
    fn deliver(&self, publication: Arc<Encoded>) {
        let Some(set) = self.set(&publication.channel) else { return };
        // A large one may go in parts (protocol §18): its subscribers share a copy whose cache
        // of part frames goes when they have written it, not with the history's.
        let publication = if publication.frame.len() > LIVE_COPY_BYTES {
            Arc::new(publication.live_copy())
        } else {
            publication
        };
        let pushed = {
            let mut members = set.members.lock();
            for (_, outbox) in &members.list {
                // An overflow closes that one connection; the session counts the 4001 as it ends.
                let _ = outbox.push(Outgoing::Pub(publication.clone()));
            }
            let views =
                if members.views.is_empty() { 0 } else { members.views.route(&publication) };
            members.list.len() + views
        };
        if let Some(observer) = &self.observer {
            observer(&publication.channel, pushed);
        }
    }

    fn deliver_volatile(&self, channel: &str, frame: Arc<str>) {
        let Some(set) = self.set(channel) else { return };
        let members = set.members.lock();
        for (_, outbox) in &members.list {
            let _ = outbox.push(Outgoing::Volatile(frame.clone()));
        }
        // A connection with views of the channel gets it once, however many views it has.
        let mut seen: Vec<u64> = members.list.iter().map(|(s, _)| *s).collect();
        for (session, outbox) in members.views.outboxes() {
            if !seen.contains(&session) {
                seen.push(session);
                let _ = outbox.push(Outgoing::Volatile(frame.clone()));
            }
        }
    }

    fn reset(&self, channel: Option<&str>) {
        let sets: Vec<Arc<ChannelSet>> = match channel {
            Some(c) => self.set(c).into_iter().collect(),
            None => self.channels.read().values().cloned().collect(),
        };
        for set in sets {
            let mut members = set.members.lock();
            for (_, outbox) in &members.list {
                let _ = outbox.push(Outgoing::Reset(set.name.clone()));
            }
            members.views.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(16, 1 << 20))
    }

    #[test]
    fn unsubscribe_is_constant_work_per_subscriber() {
        const N: u64 = 100_000;
        let fanout = Fanout::new();
        let shared = outbox();
        for id in 0..N {
            fanout.add("big", id, shared.clone());
        }
        let set = fanout.set("big").unwrap();
        assert_eq!(set.members.lock().list.len(), N as usize);
        // Remove from the front, the worst case of a `retain` or a linear search: each remove
        // looks at one element and moves at most one.
        for id in 0..N - 1 {
            assert!(!fanout.remove("big", id));
        }
        let steps = set.members.lock().steps;
        assert!(steps <= 2 * N as usize, "{steps} steps for {N} removes");
        assert!(fanout.remove("big", N - 1), "the last remove empties the channel");
        assert!(fanout.set("big").is_none());
        assert!(fanout.counts().is_empty());
    }

    #[test]
    fn deliver_reaches_every_subscriber_once_and_remove_is_exact() {
        let fanout = Fanout::new();
        let boxes: Vec<_> = (0..5).map(|_| outbox()).collect();
        for (i, b) in boxes.iter().enumerate() {
            fanout.add("c", i as u64, b.clone());
        }
        fanout.add("c", 2, boxes[2].clone());
        assert!(!fanout.remove("c", 0));
        assert!(!fanout.remove("c", 0), "a second remove of the same session is a no-op");
        let p = Arc::new(Encoded::from_json("c", "e", 1, "{}"));
        fanout.deliver(p);
        let queued: Vec<usize> = boxes.iter().map(|b| b.queued().0).collect();
        assert_eq!(queued, vec![0, 1, 1, 1, 1]);
        assert_eq!(fanout.counts(), vec![("c".to_string(), 4)]);
    }

    #[test]
    fn a_set_emptied_and_refilled_gets_a_new_gate() {
        let fanout = Fanout::new();
        let gate = fanout.add("c", 1, outbox());
        gate.set(()).unwrap();
        assert!(fanout.remove("c", 1));
        let again = fanout.add("c", 2, outbox());
        assert!(!again.initialized(), "the engine must listen again");
        assert_eq!(fanout.counts(), vec![("c".to_string(), 1)]);
    }
}
