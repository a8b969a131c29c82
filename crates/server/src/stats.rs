//! The hub's live figures for the dashboard: once a second, while this node has a subscriber to
//! [`STATS_CHANNEL`], it publishes there what `/api/info` and `/api/channels` give (connections,
//! subscriptions, nodes, the busiest channels) plus publication and delivery rates, so the page
//! is pushed its figures instead of polling. Only admin tokens may subscribe (the `sys`
//! namespace, [`crate::config::SYSTEM_NAMESPACE`]).

use crate::engine::{NodeReport, PublishInput};
use crate::hub::Hub;
use serde::Serialize;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// Where the figures are published.
pub const STATS_CHANNEL: &str = "sys:stats";

/// The publications' `type`.
pub const STATS_TYPE: &str = "stats";

/// How often the figures are published.
pub const STATS_EVERY: Duration = Duration::from_secs(1);

/// How many channels (most subscribers first) a publication lists.
pub const TOP_CHANNELS: usize = 20;

/// One `sys:stats` publication's `data` (docs/protocol.md, "The `sys:stats` channel").
#[derive(Debug, Serialize)]
pub struct Stats {
    /// The publishing node: on a cluster every node publishes its own figures to the channel.
    pub node: String,
    /// Its Herald version.
    pub version: String,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Its open connections.
    pub connections: usize,
    /// Open connections of every live node.
    pub cluster_connections: usize,
    /// Its subscriptions.
    pub subscriptions: i64,
    /// Publications it accepted since it started, not counting its own `sys:stats` ones.
    pub publications: u64,
    /// Publications it wrote to sockets since it started (one per subscriber).
    pub deliveries: u64,
    /// `publications` per second over the last interval.
    pub publications_per_sec: f64,
    /// `deliveries` per second over the last interval.
    pub deliveries_per_sec: f64,
    /// Channels with subscribers (across the cluster when the engine has a cluster view).
    pub channels: usize,
    /// The [`TOP_CHANNELS`] channels with the most subscribers, most first.
    pub top_channels: Vec<ChannelCount>,
    /// Every live node (this one alone without a cluster view), as in `/api/info`.
    pub nodes: Vec<NodeReport>,
    /// What runs beside the hub, by name, as in `/api/info` (the event-bus bridges: each one's
    /// state and lag).
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

/// A channel and its subscriber count.
#[derive(Debug, Serialize)]
pub struct ChannelCount {
    /// Channel name.
    pub channel: String,
    /// Subscribers to it.
    pub subscribers: usize,
}

/// Turns the hub's counters into rates between two readings.
struct Sampler {
    /// When the counters were last read.
    at: Instant,
    /// `metrics.publications` then, less this task's own publications.
    publications: u64,
    /// `metrics.deliveries` then.
    deliveries: u64,
    /// `sys:stats` publications this task made: taken out of `publications`, so an idle hub
    /// reads 0/s.
    own: u64,
}

impl Sampler {
    fn new(hub: &Hub) -> Sampler {
        let mut sampler = Sampler { at: Instant::now(), publications: 0, deliveries: 0, own: 0 };
        sampler.read(hub);
        sampler
    }

    /// Reads the counters; returns the per-second rates since the previous reading.
    fn read(&mut self, hub: &Hub) -> (f64, f64) {
        let now = Instant::now();
        let publications = hub.metrics.publications.get().saturating_sub(self.own);
        let deliveries = hub.metrics.deliveries.get();
        let secs = now.duration_since(self.at).as_secs_f64().max(0.001);
        let rate =
            |now: u64, then: u64| (now.saturating_sub(then) as f64 / secs * 10.0).round() / 10.0;
        let rates = (rate(publications, self.publications), rate(deliveries, self.deliveries));
        (self.at, self.publications, self.deliveries) = (now, publications, deliveries);
        rates
    }
}

/// This node's figures now; `rates` are publications/s and deliveries/s.
async fn figures(hub: &Hub, sampler: &Sampler, rates: (f64, f64)) -> Stats {
    let mut nodes = hub.nodes().await;
    for node in &mut nodes {
        node.channel_counts.clear();
    }
    let mut counts = hub.channel_counts().await;
    let channels = counts.len();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts.truncate(TOP_CHANNELS);
    Stats {
        node: hub.node_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: hub.started.elapsed().as_secs(),
        connections: hub.connection_count(),
        cluster_connections: nodes.iter().map(|n| n.connections).sum(),
        subscriptions: hub.metrics.subscriptions.get(),
        publications: sampler.publications,
        deliveries: sampler.deliveries,
        publications_per_sec: rates.0,
        deliveries_per_sec: rates.1,
        channels,
        top_channels: counts
            .into_iter()
            .map(|(channel, subscribers)| ChannelCount { channel, subscribers })
            .collect(),
        nodes,
        extensions: hub.extensions().iter().map(|e| (e.name().to_string(), e.info())).collect(),
    }
}

/// Publishes the figures every [`STATS_EVERY`] while this node has a subscriber to
/// [`STATS_CHANNEL`]; ends with the hub's background work ([`Hub::stop`]) or the hub.
/// [`crate::Routes::into_router`] spawns it next to [`Hub::start`].
pub async fn run(hub: Weak<Hub>) {
    let mut every = tokio::time::interval(STATS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = match hub.upgrade() {
        Some(hub) => Sampler::new(&hub),
        None => return,
    };
    loop {
        every.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        if !hub.housekeeping_running() {
            return;
        }
        // Read every tick, so the first rate after a quiet spell covers one interval.
        let rates = sampler.read(&hub);
        if !hub.fanout.has_subscribers(STATS_CHANNEL) {
            continue;
        }
        let stats = figures(&hub, &sampler, rates).await;
        let data = match serde_json::value::to_raw_value(&stats) {
            Ok(data) => data,
            Err(e) => {
                tracing::warn!("cannot encode {STATS_CHANNEL}: {e}");
                continue;
            }
        };
        let input = PublishInput {
            channel: STATS_CHANNEL.into(),
            kind: STATS_TYPE.into(),
            data,
            key: None,
            op: None,
            meta: Default::default(),
        };
        match hub.publish_system(input).await {
            Ok(_) => sampler.own += 1,
            // The engine is unavailable (Redis down): the next tick tries again.
            Err(e) => tracing::debug!("cannot publish {STATS_CHANNEL}: {}", e.message),
        }
    }
}
