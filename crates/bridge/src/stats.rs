//! Per-bridge counters, read by `/metrics` and `/api/info`.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// What one bridge has done since the node started.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Events read from the source (redeliveries included).
    pub read: AtomicU64,
    /// Publications accepted by the hub.
    pub published: AtomicU64,
    /// Publications the hub answered as duplicates (a redelivered event).
    pub duplicates: AtomicU64,
    /// Events sent to the dead-letter target.
    pub dead_lettered: AtomicU64,
    /// Events acknowledged to the source.
    pub acked: AtomicU64,
    /// Events waiting in the source, when it can tell (-1: unknown).
    pub lag: AtomicI64,
    /// The source is reachable (the last call to it succeeded).
    pub up: AtomicBool,
    /// This node holds the source's lease and is the one reading it.
    pub leader: AtomicBool,
}

/// A snapshot of [`BridgeStats`] with the bridge's name, as `/api/info` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BridgeReport {
    /// The bridge's name.
    pub name: String,
    /// Its source kind.
    pub source: String,
    /// Events read.
    pub read: u64,
    /// Publications accepted.
    pub published: u64,
    /// Publications answered as duplicates.
    pub duplicates: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Events acknowledged.
    pub acked: u64,
    /// Events waiting in the source, when known.
    pub lag: Option<u64>,
    /// The source is reachable.
    pub up: bool,
    /// This node is the one reading it.
    pub leader: bool,
}

impl BridgeStats {
    /// Fresh counters (lag unknown, source not yet reached).
    pub fn new() -> BridgeStats {
        BridgeStats { lag: AtomicI64::new(-1), ..BridgeStats::default() }
    }

    /// A snapshot.
    pub fn report(&self, name: &str, source: &str) -> BridgeReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BridgeReport {
            name: name.to_string(),
            source: source.to_string(),
            read: get(&self.read),
            published: get(&self.published),
            duplicates: get(&self.duplicates),
            dead_lettered: get(&self.dead_lettered),
            acked: get(&self.acked),
            lag: u64::try_from(self.lag.load(Ordering::Relaxed)).ok(),
            up: self.up.load(Ordering::Relaxed),
            leader: self.leader.load(Ordering::Relaxed),
        }
    }
}
