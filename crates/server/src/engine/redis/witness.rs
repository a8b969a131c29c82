//! What this node has witnessed of each channel's stream: the highest offset per channel in the
//! last epoch it saw (publish replies, pub/sub messages, reads). Redis that comes back with older
//! data (a restored copy, an asynchronous replica promoted, `everysec` and a host crash) keeps the
//! epoch and reuses offsets; a stored offset below the witnessed one in the same epoch shows it,
//! and the scripts then start a new epoch (`common.lua`, `lost_writes`).
//!
//! # Bounds
//!
//! One entry costs about 100 bytes (key box, a 48-byte slot, the name on the heap, the table's
//! slack), no allocation besides the name. At most [`WITNESS_CAP`] entries not pinned by a local
//! subscriber: past it the least recently touched eighth goes, in one sweep that costs
//! O(entries) every `cap / 8` insertions. [`WITNESS_IDLE`] after its last touch an entry goes in
//! [`Witnesses::sweep`] (the hub's minute housekeeping). A rollback loses the latest writes, so
//! the recently touched channels are the ones worth remembering. Channels with local
//! subscribers are never evicted (they are bounded by the subscriptions).

use super::Inner;
use crate::engine::{EngineError, new_epoch};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most entries kept for channels without local subscribers (about 12 MB at most).
pub const WITNESS_CAP: usize = 100_000;
/// An entry untouched this long is dropped by the periodic sweep.
pub const WITNESS_IDLE: Duration = Duration::from_secs(24 * 3600);
/// The offset of an epoch whose positions can no longer be trusted (a reused position was seen
/// in it): any stored offset is below it, so the next read or publish starts a new epoch.
pub const POISONED: u64 = u64::MAX;

/// Longest epoch kept inline. Herald's epochs have 10 (random) or 12 (derived) characters; a
/// longer one (written by something else) is not witnessed.
const EPOCH_MAX: usize = 16;

/// What was witnessed of one channel.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The epoch, NUL-padded (epochs are alphanumeric).
    epoch: [u8; EPOCH_MAX],
    /// Highest offset witnessed in `epoch`.
    offset: u64,
    /// Seconds since the map's start at the last touch.
    touched: u32,
}

impl Seen {
    fn epoch(&self) -> &str {
        let len = self.epoch.iter().position(|b| *b == 0).unwrap_or(EPOCH_MAX);
        std::str::from_utf8(&self.epoch[..len]).unwrap_or("")
    }
}

/// Inline form of `epoch`; `None` when it does not fit or could not be told apart.
fn inline(epoch: &str) -> Option<[u8; EPOCH_MAX]> {
    if epoch.is_empty() || epoch.len() > EPOCH_MAX || epoch.as_bytes().contains(&0) {
        return None;
    }
    let mut out = [0u8; EPOCH_MAX];
    out[..epoch.len()].copy_from_slice(epoch.as_bytes());
    Some(out)
}

/// The witnessed positions of one node, by channel.
pub(super) struct Witnesses {
    /// Channel → what was witnessed.
    map: HashMap<Box<str>, Seen>,
    /// Most unpinned entries.
    cap: usize,
    /// Origin of `touched`.
    start: Instant,
}

impl Witnesses {
    /// An empty map holding at most `cap` unpinned entries.
    pub(super) fn new(cap: usize) -> Witnesses {
        Witnesses { map: HashMap::new(), cap: cap.max(8), start: Instant::now() }
    }

    fn now(&self) -> u32 {
        self.start.elapsed().as_secs().min(u64::from(u32::MAX)) as u32
    }

    /// Notes that `channel` was seen at `epoch`/`offset`. Another epoch replaces the entry
    /// (the latest one seen is the one Redis holds). Offset 0 (an empty stream) creates nothing:
    /// there is no write to lose. True when the map is over its cap and wants
    /// [`Witnesses::shrink`].
    pub(super) fn see(&mut self, channel: &str, epoch: &str, offset: u64) -> bool {
        let Some(bytes) = inline(epoch) else { return false };
        let touched = self.now();
        if let Some(seen) = self.map.get_mut(channel) {
            if seen.epoch == bytes {
                seen.offset = seen.offset.max(offset);
            } else {
                *seen = Seen { epoch: bytes, offset, touched };
            }
            seen.touched = touched;
            return false;
        }
        if offset == 0 {
            return false;
        }
        self.map.insert(channel.into(), Seen { epoch: bytes, offset, touched });
        self.map.len() > self.cap
    }

    /// Marks `epoch` of `channel` untrustworthy (a position of it was reused); true when it was
    /// not already.
    pub(super) fn poison(&mut self, channel: &str, epoch: &str) -> bool {
        let Some(bytes) = inline(epoch) else { return false };
        let touched = self.now();
        let seen =
            self.map.entry(channel.into()).or_insert(Seen { epoch: bytes, offset: 0, touched });
        if seen.epoch == bytes && seen.offset == POISONED {
            return false;
        }
        *seen = Seen { epoch: bytes, offset: POISONED, touched };
        true
    }

    /// The witnessed epoch and offset of `channel`.
    pub(super) fn get(&self, channel: &str) -> Option<(&str, u64)> {
        self.map.get(channel).map(|s| (s.epoch(), s.offset))
    }

    /// Brings the unpinned entries to 7/8 of the cap, least recently touched first.
    pub(super) fn shrink(&mut self, pinned: impl Fn(&str) -> bool) {
        let target = self.cap - self.cap / 8;
        let mut free: Vec<(u32, Box<str>)> = self
            .map
            .iter()
            .filter(|(c, _)| !pinned(c))
            .map(|(c, s)| (s.touched, c.clone()))
            .collect();
        if free.len() <= target {
            return;
        }
        let excess = free.len() - target;
        free.select_nth_unstable_by_key(excess - 1, |(t, _)| *t);
        for (_, c) in &free[..excess] {
            self.map.remove(c);
        }
    }

    /// Drops the unpinned entries untouched for `idle`.
    pub(super) fn sweep(&mut self, idle: Duration, pinned: impl Fn(&str) -> bool) {
        let now = self.now();
        let idle = idle.as_secs().min(u64::from(u32::MAX)) as u32;
        self.map.retain(|c, s| now.saturating_sub(s.touched) < idle || pinned(c));
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    /// Every witnessed channel with its epoch and offset (the check after a reconnect).
    pub(super) fn all(&self) -> Vec<(String, String, u64)> {
        self.map.iter().map(|(c, s)| (c.to_string(), s.epoch().to_string(), s.offset)).collect()
    }
}

/// Checks running at once when every witnessed channel is checked after a reconnect.
const CHECKS_IN_FLIGHT: usize = 32;

impl Inner {
    /// Notes a position Redis answered or sent for `channel`.
    pub(super) fn witness(&self, channel: &str, epoch: &str, offset: u64) {
        let full = self.witnesses.lock().see(channel, epoch, offset);
        if full {
            let listened = self.listened.lock();
            self.witnesses.lock().shrink(|c| listened.contains_key(c));
        }
    }

    /// What to hand a script as the witnessed position of `channel`: ('', 0) when nothing.
    pub(super) fn witnessed(&self, channel: &str) -> (String, u64) {
        let w = self.witnesses.lock();
        w.get(channel).map(|(e, o)| (e.to_string(), o)).unwrap_or_default()
    }

    /// Logs a new epoch a script started because writes this node witnessed were lost (`lost`:
    /// the stored offset it found, '' when it started none).
    pub(super) fn lost_reported(
        &self,
        channel: &str,
        was: &str,
        witnessed: u64,
        lost: &str,
        now: &str,
    ) {
        if lost.is_empty() {
            return;
        }
        let witnessed = if witnessed == POISONED {
            "a reused position".to_string()
        } else {
            witnessed.to_string()
        };
        tracing::warn!(
            channel,
            epoch = was,
            stored = lost,
            witnessed,
            new_epoch = now,
            "redis lost acknowledged writes (rolled back): the channel starts a new epoch"
        );
    }

    /// Drops idle witnesses (the hub's housekeeping).
    pub(super) fn sweep_witnesses(&self) {
        let listened = self.listened.lock();
        self.witnesses.lock().sweep(WITNESS_IDLE, |c| listened.contains_key(c));
    }

    /// Runs the lost-writes check for `channel` at the witnessed `epoch`/`offset` on its own.
    pub(super) async fn check_lost(
        &self,
        channel: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<(), EngineError> {
        let keys = self.keys(channel);
        let mut call = self.scripts.lost.prepare_invoke();
        call.key(&keys.meta)
            .key(&keys.hist)
            .key(&keys.state)
            .key(&keys.seed)
            .arg(new_epoch())
            .arg(epoch)
            .arg(offset);
        let mut conn = self.conn();
        let (now, lost): (String, String) = self.run(call.invoke_async(&mut conn)).await?;
        self.lost_reported(channel, epoch, offset, &lost, &now);
        if !lost.is_empty() {
            self.witness(channel, &now, lost.parse().unwrap_or(0));
        }
        Ok(())
    }

    /// After the pub/sub connection reached a Redis with another `run_id` than before (a
    /// restart, a failover): checks every witnessed channel, so that a rolled-back stream gets
    /// its new epoch before a node that witnessed nothing publishes at a reused position.
    pub(super) async fn check_all_witnessed(&self) {
        let cmd = redis::cmd("INFO").arg("server").to_owned();
        let mut conn = self.conn();
        let Ok(info) = self.run(cmd.query_async::<String>(&mut conn)).await else { return };
        let Some(run_id) = run_id_of(&info) else { return };
        self.check_witnessed("", run_id, |_| true).await;
    }

    /// Checks the witnessed channels that `mine` selects when the Redis at `addr` (`""`: the
    /// one Redis) has another `run_id` than when this node last reached it.
    pub(super) async fn check_witnessed(
        &self,
        addr: &str,
        run_id: String,
        mine: impl Fn(&str) -> bool,
    ) {
        let before = self.run_id.lock().insert(addr.to_string(), run_id.clone());
        if before.as_deref() == Some(run_id.as_str()) {
            return;
        }
        let all: Vec<_> =
            self.witnesses.lock().all().into_iter().filter(|(c, ..)| mine(c)).collect();
        let count = all.len();
        let failed = futures_util::stream::iter(all)
            .map(|(channel, epoch, offset)| async move {
                self.check_lost(&channel, &epoch, offset).await.is_err()
            })
            .buffer_unordered(CHECKS_IN_FLIGHT)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await;
        tracing::info!(
            channels = count,
            failed,
            addr,
            "redis is another process: witnessed channels checked for lost writes"
        );
    }
}

/// The `run_id` field of an `INFO server` reply.
pub(super) fn run_id_of(info: &str) -> Option<String> {
    info.lines().find_map(|l| l.strip_prefix("run_id:")).map(|r| r.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_highest_offset_of_the_latest_epoch() {
        let mut w = Witnesses::new(100);
        assert!(!w.see("c", "e1", 0));
        assert_eq!(w.get("c"), None, "an empty stream is not worth an entry");
        w.see("c", "e1", 5);
        w.see("c", "e1", 3); // a late observation does not lower it
        assert_eq!(w.get("c"), Some(("e1", 5)));
        w.see("c", "e2", 2); // a new epoch replaces the old one
        assert_eq!(w.get("c"), Some(("e2", 2)));
        w.see("c", "e2", 0); // an existing entry takes offset 0 of its epoch
        assert_eq!(w.get("c"), Some(("e2", 2)));
        // Epochs that do not fit inline are not witnessed.
        w.see("long", "0123456789abcdefX", 9);
        assert_eq!(w.get("long"), None);
        w.see("full", "0123456789abcdef", 9);
        assert_eq!(w.get("full"), Some(("0123456789abcdef", 9)));
    }

    #[test]
    fn poison_marks_an_epoch_once() {
        let mut w = Witnesses::new(100);
        w.see("c", "e1", 5);
        assert!(w.poison("c", "e1"));
        assert!(!w.poison("c", "e1"));
        w.see("c", "e1", 7);
        assert_eq!(w.get("c"), Some(("e1", POISONED)));
        // The new epoch (the one the scripts started) replaces it.
        w.see("c", "e9", 5);
        assert_eq!(w.get("c"), Some(("e9", 5)));
        assert!(w.poison("d", "e1"), "poisoning creates the entry");
    }

    #[test]
    fn over_the_cap_the_least_recently_touched_unpinned_go() {
        let mut w = Witnesses::new(80);
        let mut wants = false;
        for i in 0..81 {
            wants = w.see(&format!("c{i}"), "e", 1);
            // The clock is in seconds: give each entry its own touch time.
            w.map.get_mut(format!("c{i}").as_str()).unwrap().touched = i;
        }
        assert!(wants, "the 81st entry asks for a shrink");
        w.shrink(|c| c == "c0");
        assert_eq!(w.len(), 71, "70 unpinned (7/8 of 80) and the pinned one");
        assert!(w.get("c0").is_some(), "pinned survives though oldest");
        assert!(w.get("c1").is_none() && w.get("c10").is_none());
        assert!(w.get("c11").is_some() && w.get("c80").is_some());
    }

    #[test]
    fn idle_entries_go_unless_pinned() {
        let mut w = Witnesses::new(100);
        w.see("old", "e", 1);
        w.see("pinned", "e", 1);
        w.see("new", "e", 1);
        w.start -= Duration::from_secs(100);
        w.see("new", "e", 2);
        w.sweep(Duration::from_secs(50), |c| c == "pinned");
        assert!(w.get("old").is_none());
        assert_eq!(w.get("pinned"), Some(("e", 1)));
        assert_eq!(w.get("new"), Some(("e", 2)));
    }

    #[test]
    fn an_entry_stays_small() {
        assert_eq!(std::mem::size_of::<Seen>(), 32);
        assert_eq!(std::mem::size_of::<(Box<str>, Seen)>(), 48);
    }
}
