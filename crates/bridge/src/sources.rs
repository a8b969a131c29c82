//! Builds a bridge's source from its configuration, by kind. Each kind is its own module behind
//! its own cargo feature (`redis-streams`, `nats`, `postgres`), so an application embedding the
//! bridge compiles only the clients it uses.

use crate::config::BridgeConfig;
use crate::source::EventSource;

/// Why a source could not be built from its options.
#[derive(Debug, thiserror::Error)]
#[error("bridge {bridge}: {message}")]
pub struct SourceBuildError {
    /// The bridge's name.
    pub bridge: String,
    /// What is wrong, naming the option.
    pub message: String,
}

/// Checks a bridge's source options without connecting (for `herald config check` and before
/// any port is bound).
pub fn check(config: &BridgeConfig) -> Result<(), SourceBuildError> {
    let fail = |message: String| SourceBuildError { bridge: config.name.clone(), message };
    // One line per source kind, each behind its feature:
    // #[cfg(feature = "KIND")] if config.source == "KIND" { return KIND::check(..).map_err(fail); }
    #[cfg(feature = "nats")]
    if config.source == "nats" {
        return crate::nats::check(config).map_err(fail);
    }
    #[cfg(feature = "redis-streams")]
    if config.source == "redis_streams" {
        return crate::redis_streams::check(config).map_err(fail);
    }
    #[cfg(feature = "postgres")]
    if config.source == "postgres" {
        return crate::postgres::check(config).map_err(fail);
    }
    Err(fail(format!("source {:?} is not built into this binary", config.source)))
}

/// Builds the source (it connects lazily, and reconnects by itself). `consumer` names this node
/// to buses that track consumers (the node id).
pub async fn build(
    config: &BridgeConfig,
    consumer: &str,
) -> Result<Box<dyn EventSource>, SourceBuildError> {
    check(config)?;
    let _ = consumer;
    #[cfg(feature = "nats")]
    if config.source == "nats" {
        return crate::nats::NatsSource::new(config)
            .map(|source| Box::new(source) as Box<dyn EventSource>)
            .map_err(|message| SourceBuildError { bridge: config.name.clone(), message });
    }
    #[cfg(feature = "redis-streams")]
    if config.source == "redis_streams" {
        return crate::redis_streams::RedisStreamsSource::new(config, consumer)
            .map(|source| Box::new(source) as Box<dyn EventSource>)
            .map_err(|message| SourceBuildError { bridge: config.name.clone(), message });
    }
    #[cfg(feature = "postgres")]
    if config.source == "postgres" {
        return crate::postgres::PostgresSource::new(config)
            .map(|source| Box::new(source) as Box<dyn EventSource>)
            .map_err(|message| SourceBuildError { bridge: config.name.clone(), message });
    }
    Err(SourceBuildError {
        bridge: config.name.clone(),
        message: format!("source {:?} is not built into this binary", config.source),
    })
}
