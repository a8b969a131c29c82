//! Prometheus metrics. Counters are plain atomics (prometheus-client), cheap enough for the hot
//! path; the fan-out adds once per publication, the writer once per frame, the API layer once
//! per request. What is a reading rather than a count (process figures, queue depths, the
//! engine's round trips) is taken when `/metrics` is read, into a [`Scrape`].
//!
//! docs/operations.md lists every metric; docs/grafana/herald-dashboard.json charts them, and
//! crates/herald/tests/metrics.rs checks that every name the dashboard queries is exposed.

use crate::engine::RoundTripSnapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::HashMap;

/// Labels of the close counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// Close code name.
    pub code: String,
}

/// Labels of the per-namespace counters: namespaces are bounded by the configuration, channels
/// are not, so nothing is labelled by channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    /// Namespace name.
    pub namespace: String,
}

/// Labels of the HTTP API request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/api/publish`), never the raw path, so the set stays bounded.
    pub route: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// Labels of the build info.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    /// Crate version.
    version: &'static str,
    /// Git commit the server was built from (`HERALD_COMMIT` at build time), else "unknown".
    commit: &'static str,
}

/// One namespace's counters, looked up by name without allocating.
#[derive(Clone, Default)]
struct NamespaceCounters {
    /// Publications accepted by this node.
    publications: Counter,
    /// Publications pushed to local subscribers' queues (one per subscriber).
    deliveries: Counter,
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
    /// Publish accepted → the subscriber's flush begins, for the same publications: with
    /// `delivery_latency`, it tells a delivery that waited for its session to run from one that
    /// waited on its socket.
    pub delivery_queue: Histogram,
    /// Bytes of history and state the memory engine holds (set when `/metrics` is read).
    pub engine_memory_bytes: Gauge,
    /// The memory engine's budget for them (0: unbounded).
    pub engine_memory_budget_bytes: Gauge,
    /// HTTP API requests by route and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Per-namespace counters of the configured namespaces, created up front so the hot path
    /// only reads a map.
    namespaces: HashMap<String, NamespaceCounters>,
}

/// Buckets of the delivery histograms, seconds.
const LATENCY_BUCKETS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(std::iter::empty::<&str>())
    }
}

impl Metrics {
    /// The metrics of a hub serving these namespaces.
    pub fn new<'a>(namespaces: impl IntoIterator<Item = &'a str>) -> Metrics {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("herald");
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
            delivery_latency: Histogram::new(LATENCY_BUCKETS),
            delivery_queue: Histogram::new(LATENCY_BUCKETS),
            engine_memory_bytes: Gauge::default(),
            engine_memory_budget_bytes: Gauge::default(),
            http_requests: Family::default(),
            namespaces: HashMap::new(),
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
            "delivery_queue_seconds",
            "Publish accepted to the subscriber's flush starting",
            m.delivery_queue.clone(),
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
        registry.register(
            "http_requests",
            "HTTP API requests by route template and status",
            m.http_requests.clone(),
        );
        let publications = Family::<NamespaceLabels, Counter>::default();
        let deliveries = Family::<NamespaceLabels, Counter>::default();
        let namespaces = namespaces
            .into_iter()
            .map(|name| {
                let labels = NamespaceLabels { namespace: name.to_string() };
                let counters = NamespaceCounters {
                    publications: publications.get_or_create(&labels).clone(),
                    deliveries: deliveries.get_or_create(&labels).clone(),
                };
                (name.to_string(), counters)
            })
            .collect();
        registry.register(
            "namespace_publications",
            "Publications accepted by this node, by namespace",
            publications,
        );
        registry.register(
            "namespace_deliveries",
            "Publications pushed to local subscribers' queues, by namespace",
            deliveries,
        );
        let commit = option_env!("HERALD_COMMIT").unwrap_or("unknown");
        let build = BuildLabels { version: env!("CARGO_PKG_VERSION"), commit };
        registry.register("build", "Version and commit of this server", Info::new(build));
        Metrics { registry: root, namespaces, ..m }
    }

    /// Counts a publication accepted in `namespace`.
    pub fn published(&self, namespace: &str) {
        if let Some(ns) = self.namespaces.get(namespace) {
            ns.publications.inc();
        }
    }

    /// Counts a publication of `namespace` pushed to `subscribers` local queues.
    pub fn delivered(&self, namespace: &str, subscribers: usize) {
        if let Some(ns) = self.namespaces.get(namespace) {
            ns.deliveries.inc_by(subscribers as u64);
        }
    }

    /// Counts an HTTP API request.
    pub fn http_request(&self, route: &'static str, status: u16) {
        self.http_requests.get_or_create(&HttpLabels { route, status }).inc();
    }

    /// The Prometheus text exposition without scrape-time readings ([`Metrics::render_with`]).
    pub fn render(&self) -> String {
        self.render_with(Scrape::default())
    }

    /// The Prometheus text exposition, with the readings taken for this scrape.
    pub fn render_with(&self, scrape: Scrape) -> String {
        let mut out = String::new();
        let mut readings = Registry::with_prefix("herald");
        readings.register_collector(Box::new(scrape));
        text(&mut out, &self.registry, &readings).expect("writing to a String cannot fail");
        out
    }
}

/// Both registries, then the end marker.
fn text(out: &mut String, registry: &Registry, readings: &Registry) -> std::fmt::Result {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    encode_registry(out, registry)?;
    encode_registry(out, readings)?;
    encode_eof(out)
}

/// Readings the hub takes when `/metrics` is read.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Publications queued in every session's outbox.
    pub queued_publications: usize,
    /// Bytes queued in every session's outbox.
    pub queued_bytes: usize,
    /// Bytes queued in the fullest outbox.
    pub largest_queue_bytes: usize,
    /// The engine's round trips to its store (Redis engine only).
    pub round_trips: Option<RoundTripSnapshot>,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let gauges = [
            (
                "outbox_queued_publications",
                "Publications queued for sockets across every connection",
                self.queued_publications,
            ),
            ("outbox_queued_bytes", "Bytes queued for sockets across every connection", {
                self.queued_bytes
            }),
            ("outbox_largest_queue_bytes", "Bytes queued for the fullest connection", {
                self.largest_queue_bytes
            }),
        ];
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value as i64).encode(metric)?;
        }
        if let Some(trips) = &self.round_trips {
            let buckets: Vec<(f64, u64)> = trips
                .buckets
                .iter()
                .map(|&(bound, n)| (if bound.is_finite() { bound } else { f64::MAX }, n))
                .collect();
            let mut metric = encoder.encode_descriptor(
                "redis_round_trip_seconds",
                "Latency of each command or script sent to Redis",
                None,
                MetricType::Histogram,
            )?;
            metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                trips.sum_seconds,
                trips.count,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

/// The standard `process_*` metrics, read from /proc at each scrape (Linux; nothing elsewhere).
#[derive(Debug)]
struct ProcessCollector;

/// What /proc says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    /// User plus system CPU time, seconds.
    cpu_seconds: f64,
    /// Resident memory, bytes.
    resident_bytes: u64,
    /// Virtual memory, bytes.
    virtual_bytes: u64,
    /// Start time, seconds since the Unix epoch.
    start_time_seconds: f64,
    /// Open file descriptors.
    open_fds: u64,
    /// The open file limit.
    max_fds: u64,
    /// OS threads.
    threads: u64,
}

/// Clock ticks per second of /proc/self/stat (USER_HZ, 100 on every Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessStats {
    /// Reads them; `None` where /proc is missing.
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        ProcessStats::parse(&stat, &status, &boot, &limits, open_fds)
    }

    fn parse(
        stat: &str,
        status: &str,
        boot: &str,
        limits: &str,
        open_fds: u64,
    ) -> Option<ProcessStats> {
        // The command name (field 2) may hold spaces and parentheses: fields count after its `)`.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // `fields[0]` is field 3 (state); utime, stime and starttime are fields 14, 15 and 22.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        };
        let boot_time = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())?;
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|rest| rest.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) / TICKS_PER_SECOND,
            resident_bytes: kib("VmRSS:").unwrap_or(0) * 1024,
            virtual_bytes: kib("VmSize:").unwrap_or(0) * 1024,
            start_time_seconds: boot_time + field(22)? / TICKS_PER_SECOND,
            open_fds,
            max_fds,
            threads: kib("Threads:").unwrap_or(0),
        })
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(p) = ProcessStats::read() else { return Ok(()) };
        let cpu = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(p.cpu_seconds).encode(cpu)?;
        let gauges: [(&str, &str, f64); 6] = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", {
                p.resident_bytes as f64
            }),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", {
                p.virtual_bytes as f64
            }),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                p.start_time_seconds,
            ),
            ("process_open_fds", "Number of open file descriptors", p.open_fds as f64),
            ("process_max_fds", "Maximum number of open file descriptors", p.max_fds as f64),
            ("process_threads", "Number of OS threads", p.threads as f64),
        ];
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_parse_proc_text() {
        let stat = "42 (we (ird) name) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 7 0 1000 0 0";
        let status = "Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t7\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\n";
        let limits = "Limit  Soft Limit  Hard Limit  Units\nMax open files  1024  4096  files\n";
        let p = ProcessStats::parse(stat, status, boot, limits, 9).unwrap();
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: 4.0,
                resident_bytes: 1024 * 1024,
                virtual_bytes: 2048 * 1024,
                start_time_seconds: 1_700_000_010.0,
                open_fds: 9,
                max_fds: 1024,
                threads: 7,
            }
        );
    }

    #[test]
    fn render_has_process_build_namespace_and_scrape_metrics() {
        let m = Metrics::new(["chat"]);
        m.published("chat");
        m.published("not-configured");
        m.delivered("chat", 3);
        m.http_request("/api/publish", 200);
        let trips = crate::engine::RoundTrips::default();
        trips.record(std::time::Duration::from_micros(300));
        let text = m.render_with(Scrape {
            queued_publications: 2,
            queued_bytes: 10,
            largest_queue_bytes: 7,
            round_trips: Some(trips.snapshot()),
        });
        for line in [
            r#"herald_namespace_publications_total{namespace="chat"} 1"#,
            r#"herald_namespace_deliveries_total{namespace="chat"} 3"#,
            r#"herald_http_requests_total{route="/api/publish",status="200"} 1"#,
            "herald_outbox_queued_publications 2",
            "herald_outbox_largest_queue_bytes 7",
            r#"herald_redis_round_trip_seconds_bucket{le="0.0005"} 1"#,
            r#"herald_redis_round_trip_seconds_bucket{le="+Inf"} 1"#,
            "herald_redis_round_trip_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.contains(r#"herald_build_info{version=""#), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        if cfg!(target_os = "linux") {
            assert!(text.contains("process_cpu_seconds_total "), "{text}");
            assert!(text.contains("process_resident_memory_bytes "), "{text}");
        }
    }
}
