//! Redis behind Sentinel: the `redis+sentinel://` URL, the question to the sentinels ("which
//! master?") and the task that follows the master (see the module docs' "Sentinel").
//!
//! Resolved by hand with `SENTINEL get-master-addr-by-name` rather than the redis crate's
//! `sentinel` feature: the engine's `ConnectionManager` reconnects to the one address of the
//! `Client` it was built from, so a failover needs a new manager anyway, and the pub/sub
//! connection must move at the same moment; one place that owns "the current master" does both.

use super::{Inner, OP_TIMEOUT};
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the sentinels are asked for the master when nothing went wrong (a failover that
/// no command noticed yet, e.g. no publish since).
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// A parsed `redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[?db=N]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SentinelUrl {
    /// The sentinels, asked in order until one names a master.
    pub sentinels: Vec<String>,
    /// The master's name in `sentinel monitor NAME ...`.
    pub master: String,
    /// The database on the master.
    pub db: u32,
}

/// Why a `redis+sentinel://` URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum SentinelUrlError {
    /// No `HOST:PORT` before the path.
    #[error("redis+sentinel:// needs at least one HOST:PORT")]
    NoSentinel,
    /// A sentinel address without a numeric port.
    #[error("sentinel address {0:?} is not HOST:PORT")]
    BadAddress(String),
    /// No master name in the path.
    #[error("redis+sentinel:// needs /MASTER_NAME")]
    NoMaster,
    /// A query other than `db=N`.
    #[error("unknown redis+sentinel:// query {0:?} (only db=N)")]
    BadQuery(String),
}

impl SentinelUrl {
    /// `None` when `url` is not a sentinel URL at all.
    pub fn parse(url: &str) -> Option<Result<SentinelUrl, SentinelUrlError>> {
        let rest = url.strip_prefix("redis+sentinel://")?;
        Some(Self::parse_rest(rest))
    }

    fn parse_rest(rest: &str) -> Result<SentinelUrl, SentinelUrlError> {
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (master, query) = path.split_once('?').unwrap_or((path, ""));
        let mut sentinels = Vec::new();
        for addr in hosts.split(',').filter(|a| !a.is_empty()) {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(SentinelUrlError::BadAddress(addr.into()));
            }
            sentinels.push(addr.to_string());
        }
        if sentinels.is_empty() {
            return Err(SentinelUrlError::NoSentinel);
        }
        if master.is_empty() {
            return Err(SentinelUrlError::NoMaster);
        }
        let mut db = 0;
        for pair in query.split('&').filter(|q| !q.is_empty()) {
            match pair.strip_prefix("db=").and_then(|n| n.parse().ok()) {
                Some(n) => db = n,
                None => return Err(SentinelUrlError::BadQuery(pair.into())),
            }
        }
        Ok(SentinelUrl { sentinels, master: master.to_string(), db })
    }

    /// The `redis://` URL of the current master: the first sentinel that names one whose
    /// `ROLE` confirms it (a sentinel may lag behind a failover by a moment).
    pub async fn resolve(&self) -> Result<String, String> {
        let mut last = String::from("no sentinel answered");
        for s in &self.sentinels {
            match self.ask(s).await {
                Ok(url) => return Ok(url),
                Err(e) => last = format!("sentinel {s}: {e}"),
            }
        }
        Err(last)
    }

    async fn ask(&self, sentinel: &str) -> Result<String, String> {
        let asked = async {
            let client =
                redis::Client::open(format!("redis://{sentinel}")).map_err(|e| e.to_string())?;
            let mut conn =
                client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let (host, port) = addr.ok_or_else(|| format!("no master named {:?}", self.master))?;
            let url = format!("redis://{host}:{port}/{}", self.db);
            let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
            let mut conn =
                client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
            let role: Vec<redis::Value> =
                redis::cmd("ROLE").query_async(&mut conn).await.map_err(|e| e.to_string())?;
            match role.first() {
                Some(redis::Value::BulkString(r)) if r == b"master" => Ok(url),
                _ => Err(format!("{host}:{port} is not a master (yet)")),
            }
        };
        tokio::time::timeout(OP_TIMEOUT, asked).await.map_err(|_| "timed out".to_string())?
    }
}

/// Asks the sentinels every [`FOLLOW_EVERY`], or at once when a command failed as unavailable,
/// and moves the engine to a new master when they name one (until the engine is dropped).
pub(super) async fn follow_task(inner: Weak<Inner>, url: SentinelUrl) {
    loop {
        let Some(engine) = inner.upgrade() else { return };
        match url.resolve().await {
            Ok(master) => engine.switch_master(&master),
            Err(e) => tracing::debug!(error = %e, "sentinels named no master"),
        }
        let nudged = engine.follow_now.clone();
        drop(engine);
        let _ = tokio::time::timeout(FOLLOW_EVERY, nudged.notified()).await;
    }
}

impl Inner {
    /// Asks the follow task to re-ask the sentinels now (a command met a dead connection or
    /// `READONLY`). Nothing without Sentinel.
    pub(super) fn nudge_follow(&self) {
        if self.sentinel {
            self.follow_now.notify_one();
        }
    }

    /// Points every connection at `url` when it is a new master: commands get a new connection
    /// manager, and the pub/sub task sees the changed generation and reconnects there (its
    /// subscribers resume, as after any lost pub/sub connection).
    fn switch_master(&self, url: &str) {
        let mut target = self.target.write();
        if target.url == url {
            return;
        }
        match super::Target::open(url, self.wait_replicas > 0) {
            Ok(t) => {
                tracing::warn!(from = %target.url, to = url, "redis master changed (sentinel)");
                *target = t;
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.master_changed.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, url, "cannot open the new redis master"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sentinel_urls() {
        let u = SentinelUrl::parse("redis+sentinel://a:1,b:2/m?db=3").unwrap().unwrap();
        assert_eq!(
            u,
            SentinelUrl { sentinels: vec!["a:1".into(), "b:2".into()], master: "m".into(), db: 3 }
        );
        assert!(SentinelUrl::parse("redis://a:1").is_none());
        assert_eq!(
            SentinelUrl::parse("redis+sentinel:///m").unwrap(),
            Err(SentinelUrlError::NoSentinel)
        );
        assert_eq!(
            SentinelUrl::parse("redis+sentinel://a:1").unwrap(),
            Err(SentinelUrlError::NoMaster)
        );
        assert!(matches!(
            SentinelUrl::parse("redis+sentinel://a/m").unwrap(),
            Err(SentinelUrlError::BadAddress(_))
        ));
        assert!(matches!(
            SentinelUrl::parse("redis+sentinel://a:1/m?x=1").unwrap(),
            Err(SentinelUrlError::BadQuery(_))
        ));
    }
}
