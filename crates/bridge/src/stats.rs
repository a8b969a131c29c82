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
    /// Events sent to the dead-letter target by the runner (refused by the rules or the hub).
    pub dead_lettered: AtomicU64,
    /// Events the source dead-lettered itself (not readable as JSON events).
    pub source_dead_lettered: AtomicU64,
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
            dead_lettered: get(&self.dead_lettered) + get(&self.source_dead_lettered),
            acked: get(&self.acked),
            lag: u64::try_from(self.lag.load(Ordering::Relaxed)).ok(),
            up: self.up.load(Ordering::Relaxed),
            leader: self.leader.load(Ordering::Relaxed),
        }
    }
}

/// The bridges of a node as the hub reports them: `bridges` in `/api/info` and in `/ready`'s
/// body, `herald_bridge_*` in `/metrics`.
pub struct BridgesExtension {
    /// Each bridge's name, source kind and counters.
    pub bridges: Vec<(String, String, std::sync::Arc<BridgeStats>)>,
}

/// A metric family: name, help, and how to read it from a report.
type Family<T> = (&'static str, &'static str, fn(&BridgeReport) -> T);

impl BridgesExtension {
    fn reports(&self) -> Vec<BridgeReport> {
        self.bridges.iter().map(|(name, source, stats)| stats.report(name, source)).collect()
    }
}

impl herald_server::hub::Extension for BridgesExtension {
    fn name(&self) -> &'static str {
        "bridges"
    }

    fn info(&self) -> serde_json::Value {
        serde_json::to_value(self.reports()).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        use std::fmt::Write;
        let reports = self.reports();
        let mut out = String::new();
        let counters: [Family<u64>; 5] = [
            (
                "herald_bridge_events_read",
                "Events read from the source (redeliveries included).",
                |r| r.read,
            ),
            ("herald_bridge_published", "Publications the hub accepted.", |r| r.published),
            (
                "herald_bridge_duplicates",
                "Publications answered as duplicates (redelivered events).",
                |r| r.duplicates,
            ),
            ("herald_bridge_dead_lettered", "Events sent to the dead-letter target.", |r| {
                r.dead_lettered
            }),
            ("herald_bridge_acked", "Events acknowledged to the source.", |r| r.acked),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for r in &reports {
                let _ = writeln!(out, "{name}_total{{bridge=\"{}\"}} {}", r.name, value(r));
            }
        }
        let gauges: [Family<Option<u64>>; 3] = [
            ("herald_bridge_up", "1 when the source answered its last call.", |r| {
                Some(u64::from(r.up))
            }),
            ("herald_bridge_leader", "1 when this node reads the source.", |r| {
                Some(u64::from(r.leader))
            }),
            ("herald_bridge_lag", "Events waiting in the source, when it can tell.", |r| r.lag),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for r in &reports {
                if let Some(v) = value(r) {
                    let _ = writeln!(out, "{name}{{bridge=\"{}\"}} {v}", r.name);
                }
            }
        }
        out
    }
}
