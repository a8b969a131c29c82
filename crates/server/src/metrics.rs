//! Prometheus metrics. Counters are plain atomics (prometheus-client), cheap enough for the hot
//! path; the fan-out adds once per publication, the writer once per frame.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of the close counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// Close code name.
    pub code: String,
}

/// Every metric the hub exports.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Active subscriptions.
    pub subscriptions: Gauge,
    /// Publications accepted by this node.
    pub publications: Counter,
    /// Publications written to sockets (one per subscriber).
    pub deliveries: Counter,
    /// Bytes written to sockets.
    pub bytes_out: Counter,
    /// Bytes read from sockets.
    pub bytes_in: Counter,
    /// Connections closed for being slow.
    pub slow_consumer_closes: Counter,
    /// Failed authentications.
    pub auth_failures: Counter,
    /// Connections closed by the server, by code.
    pub closes: Family<CloseLabels, Counter>,
    /// Publish accepted → frame written, seconds (oldest publication of each written frame).
    pub delivery_latency: Histogram,
    /// Bytes of history and state the memory engine holds (set when `/metrics` is read).
    pub engine_memory_bytes: Gauge,
    /// The memory engine's budget for them (0: unbounded).
    pub engine_memory_budget_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let m = Metrics {
            connections: Gauge::default(),
            subscriptions: Gauge::default(),
            publications: Counter::default(),
            deliveries: Counter::default(),
            bytes_out: Counter::default(),
            bytes_in: Counter::default(),
            slow_consumer_closes: Counter::default(),
            auth_failures: Counter::default(),
            closes: Family::default(),
            delivery_latency: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            engine_memory_bytes: Gauge::default(),
            engine_memory_budget_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("connections", "Open WebSocket connections", m.connections.clone());
        registry.register("subscriptions", "Active subscriptions", m.subscriptions.clone());
        registry.register("publications", "Publications accepted", m.publications.clone());
        registry.register("deliveries", "Publications written to sockets", m.deliveries.clone());
        registry.register("bytes_out", "Bytes written to sockets", m.bytes_out.clone());
        registry.register("bytes_in", "Bytes read from sockets", m.bytes_in.clone());
        registry.register(
            "slow_consumer_closes",
            "Connections closed for being slow",
            m.slow_consumer_closes.clone(),
        );
        registry.register("auth_failures", "Failed authentications", m.auth_failures.clone());
        registry.register("closes", "Connections closed by the server", m.closes.clone());
        registry.register(
            "delivery_latency_seconds",
            "Publish accepted to socket write",
            m.delivery_latency.clone(),
        );
        registry.register(
            "engine_memory_bytes",
            "Bytes of history and state held by the memory engine",
            m.engine_memory_bytes.clone(),
        );
        registry.register(
            "engine_memory_budget_bytes",
            "Memory engine budget for history and state (0: unbounded)",
            m.engine_memory_budget_bytes.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
