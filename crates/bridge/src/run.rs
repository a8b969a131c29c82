//! The runner: read an event, map it, publish every publication, then acknowledge it (or
//! dead-letter it and acknowledge it), one event at a time, while this node holds the source's
//! lease.
//!
//! # One reader per source
//!
//! On a clustered engine every node runs the bridge, but only the holder of the lease
//! `bridge:NAME` reads its source. The holder renews the lease every third of `lease_ttl`; a
//! node that dies stops renewing, and within `lease_ttl` another node takes the lease and reads
//! on from the first unacknowledged event (the source redelivers it; the idempotency keys make
//! what was already published a duplicate). A holder that cannot renew in time stops before its
//! next publication, so two nodes never publish one source's events concurrently for longer than
//! the clock drift between them. With the memory engine the node alone always holds the lease.

use crate::rules::Rules;
use crate::source::{Event, EventSource, SourceError};
use crate::stats::BridgeStats;
use herald_protocol::ErrorCode;
use herald_server::Hub;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Shortest and longest pause between retries of a source or of the hub.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// One bridge's runner.
pub struct Runner {
    /// The node it runs on.
    hub: Arc<Hub>,
    /// Its rules (which carry the bridge's name).
    rules: Rules,
    /// How long a lease lasts without renewal.
    lease_ttl: Duration,
    /// Its counters.
    stats: Arc<BridgeStats>,
}

/// Exponential backoff between retries.
struct Retry(Duration);

impl Retry {
    fn new() -> Retry {
        Retry(RETRY_MIN)
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(RETRY_MAX);
    }
    fn reset(&mut self) {
        self.0 = RETRY_MIN;
    }
}

/// What became of one event.
enum Outcome {
    /// Published (or answered as a duplicate) to every channel it maps to.
    Published,
    /// Could not be published: dead-letter it with this reason.
    Dead(String),
    /// The lease was lost before it was done: leave it unacknowledged.
    LeaseLost,
}

impl Runner {
    /// A runner for `rules` on `hub`.
    pub fn new(
        hub: Arc<Hub>,
        rules: Rules,
        lease_ttl: Duration,
        stats: Arc<BridgeStats>,
    ) -> Runner {
        Runner { hub, rules, lease_ttl, stats }
    }

    fn lease_name(&self) -> String {
        format!("bridge:{}", self.rules.bridge())
    }

    /// Takes or renews the lease; the instant until which it is surely held, if it is.
    async fn lease(&self) -> Option<Instant> {
        let asked = Instant::now();
        match self.hub.lease(&self.lease_name(), self.lease_ttl).await {
            Ok(true) => Some(asked + self.lease_ttl),
            Ok(false) => None,
            Err(e) => {
                tracing::debug!(bridge = self.rules.bridge(), error = %e.message, "lease not renewed");
                None
            }
        }
    }

    /// Runs until `shutdown` resolves (or the source closes).
    pub async fn run(
        &self,
        source: &mut dyn EventSource,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let bridge = self.rules.bridge().to_string();
        loop {
            // Wait for the lease.
            let mut held_until = loop {
                if let Some(until) = self.lease().await {
                    break until;
                }
                self.stats.leader.store(false, Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(self.lease_ttl / 3) => {}
                    _ = &mut shutdown => return,
                }
            };
            self.stats.leader.store(true, Ordering::Relaxed);
            tracing::info!(bridge = %bridge, "bridge: this node reads the source");
            let mut retry = Retry::new();
            loop {
                let renew_at = held_until - self.lease_ttl * 2 / 3;
                let event = tokio::select! {
                    event = source.next() => event,
                    _ = tokio::time::sleep_until(renew_at) => {
                        match self.lease().await {
                            Some(until) => { held_until = until; continue }
                            None => break,
                        }
                    }
                    _ = &mut shutdown => return,
                };
                let event = match event {
                    Ok(event) => event,
                    Err(SourceError::Closed) => {
                        self.stats.leader.store(false, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => {
                        self.stats.up.store(false, Ordering::Relaxed);
                        tracing::warn!(bridge = %bridge, error = %e, "bridge: source unavailable");
                        retry.wait().await;
                        continue;
                    }
                };
                retry.reset();
                self.stats.up.store(true, Ordering::Relaxed);
                self.stats.read.fetch_add(1, Ordering::Relaxed);
                let outcome = match self.rules.map(&event) {
                    Ok(publications) => self.publish(publications, &mut held_until).await,
                    Err(reason) => Outcome::Dead(reason),
                };
                let done = match outcome {
                    Outcome::Published => true,
                    Outcome::Dead(reason) => {
                        tracing::warn!(bridge = %bridge, id = %event.id, reason = %reason, "bridge: event dead-lettered");
                        self.settle(source, &event, Some(&reason), &mut held_until).await
                    }
                    Outcome::LeaseLost => false,
                };
                if !done || !self.settle(source, &event, None, &mut held_until).await {
                    break;
                }
                self.stats.source_dead_lettered.store(source.dead_lettered(), Ordering::Relaxed);
                if let Some(lag) = source.lag().await {
                    self.stats.lag.store(i64::try_from(lag).unwrap_or(i64::MAX), Ordering::Relaxed);
                }
            }
            self.stats.leader.store(false, Ordering::Relaxed);
            tracing::warn!(bridge = %bridge, "bridge: lease lost; another node may read the source");
        }
    }

    /// Renews the lease when due; false when it is no longer held.
    async fn still_held(&self, held_until: &mut Instant) -> bool {
        if Instant::now() + self.lease_ttl * 2 / 3 < *held_until {
            return true;
        }
        match self.lease().await {
            Some(until) => {
                *held_until = until;
                true
            }
            None => false,
        }
    }

    /// Publishes an event's publications in order, retrying while the hub is unavailable.
    async fn publish(
        &self,
        publications: Vec<herald_server::engine::PublishInput>,
        held_until: &mut Instant,
    ) -> Outcome {
        for input in publications {
            let mut retry = Retry::new();
            loop {
                if !self.still_held(held_until).await {
                    return Outcome::LeaseLost;
                }
                match self.hub.publish(input.clone()).await {
                    Ok(result) => {
                        let counter = if result.duplicate {
                            &self.stats.duplicates
                        } else {
                            &self.stats.published
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e) if e.code == ErrorCode::Unavailable.code() => retry.wait().await,
                    Err(e) => {
                        return Outcome::Dead(format!(
                            "publish to {:?} refused: {} {}",
                            input.channel, e.code, e.message
                        ));
                    }
                }
            }
        }
        Outcome::Published
    }

    /// Dead-letters (with `reason`) or acknowledges an event, retrying while the source is
    /// unavailable; false when the lease was lost first.
    async fn settle(
        &self,
        source: &mut dyn EventSource,
        event: &Event,
        reason: Option<&str>,
        held_until: &mut Instant,
    ) -> bool {
        let mut retry = Retry::new();
        loop {
            if !self.still_held(held_until).await {
                return false;
            }
            let done = match reason {
                Some(reason) => source.dead_letter(event, reason).await,
                None => source.ack(event).await,
            };
            match done {
                Ok(()) => {
                    let counter = if reason.is_some() {
                        &self.stats.dead_lettered
                    } else {
                        &self.stats.acked
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    self.stats.up.store(true, Ordering::Relaxed);
                    return true;
                }
                Err(SourceError::Closed) => return false,
                Err(e) => {
                    self.stats.up.store(false, Ordering::Relaxed);
                    tracing::warn!(bridge = self.rules.bridge(), error = %e, "bridge: source unavailable");
                    retry.wait().await;
                }
            }
        }
    }
}

/// The bridges a node runs, started from its configuration.
pub struct Bridges {
    /// Each bridge: name, source kind, counters, task.
    running: Vec<(String, String, Arc<BridgeStats>, tokio::task::JoinHandle<()>)>,
    /// Tells every runner to stop.
    stop: tokio::sync::watch::Sender<bool>,
}

/// Builds every configured bridge's source and starts its runner on `hub`.
pub async fn start(
    hub: Arc<Hub>,
    configs: Vec<crate::config::BridgeConfig>,
) -> Result<Bridges, crate::sources::SourceBuildError> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut running = Vec::new();
    for config in configs {
        let mut source = crate::sources::build(&config, &hub.node_id).await?;
        let stats = Arc::new(BridgeStats::new());
        let runner = Runner::new(hub.clone(), config.rules, config.lease_ttl, stats.clone());
        let mut stopped = stopped.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            runner.run(&mut *source, shutdown).await;
        });
        running.push((config.name, config.source, stats, task));
    }
    let bridges =
        running.iter().map(|(n, s, stats, _)| (n.clone(), s.clone(), stats.clone())).collect();
    hub.add_extension(Arc::new(crate::stats::BridgesExtension { bridges }));
    Ok(Bridges { running, stop })
}

impl Bridges {
    /// What every bridge has done, for `/api/info` and `/metrics`.
    pub fn reports(&self) -> Vec<crate::stats::BridgeReport> {
        self.running.iter().map(|(name, source, stats, _)| stats.report(name, source)).collect()
    }

    /// Stops every runner between two events, waiting up to 5 s for one busy retrying an
    /// unavailable hub (an event left half done is redelivered later).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for (_, _, _, mut task) in self.running {
            if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}
