//! `herald serve`: parse the configuration, bind, serve until SIGTERM/SIGINT, drain.

use anyhow::Context;
use herald_server::config::{EngineKind, LogFormat};
use herald_server::engine::Engine;
use herald_server::{Config, Hub};
use std::sync::Arc;
use std::time::Duration;

/// Development API key used when none is configured.
const DEV_API_KEY: &str = "dev-api-key";
/// Development token secret used when none is configured.
const DEV_SECRET: &str = "dev-secret";

/// Arguments of `herald serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (docs/configuration.md). Without one, the built-in development
    /// configuration is used.
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<String>,
    /// Address to listen on (default 127.0.0.1:7700).
    #[arg(long, env = "HERALD_LISTEN")]
    listen: Option<String>,
    /// API key for /api (added to the configured ones).
    #[arg(long, env = "HERALD_API_KEY")]
    api_key: Option<String>,
    /// HS256 token secret.
    #[arg(long, env = "HERALD_TOKEN_SECRET")]
    token_secret: Option<String>,
    /// `memory` or `redis`.
    #[arg(long, env = "HERALD_ENGINE")]
    engine: Option<String>,
    /// Redis URL for the redis engine.
    #[arg(long, env = "HERALD_REDIS_URL")]
    redis_url: Option<String>,
    /// Node id (random when unset).
    #[arg(long, env = "HERALD_NODE_ID")]
    node_id: Option<String>,
    /// Server ping interval (`25s`, `200ms`).
    #[arg(long, env = "HERALD_PING_INTERVAL", value_parser = humantime::parse_duration)]
    ping_interval: Option<Duration>,
    /// Close a connection silent for this long.
    #[arg(long, env = "HERALD_PONG_TIMEOUT", value_parser = humantime::parse_duration)]
    pong_timeout: Option<Duration>,
    /// Close a connection that has not sent `connect` within this.
    #[arg(long, env = "HERALD_AUTH_TIMEOUT", value_parser = humantime::parse_duration)]
    auth_timeout: Option<Duration>,
    /// Time a connection may live past its token's expiry without `refresh`.
    #[arg(long, env = "HERALD_TOKEN_GRACE", value_parser = humantime::parse_duration)]
    token_grace: Option<Duration>,
    /// Allowed Origin for WebSocket upgrades (repeat for several).
    #[arg(long = "allowed-origin", env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// `text` or `json` log lines.
    #[arg(long, env = "HERALD_LOG_FORMAT")]
    log_format: Option<String>,
    /// Log filter in tracing's env-filter syntax (`info`, `debug`, `herald=trace`); default
    /// `info`.
    #[arg(long = "log", env = "HERALD_LOG")]
    log: Option<String>,
}

impl ServeArgs {
    /// Builds the configuration: file (or development defaults), then env and flags on top.
    fn config(&self) -> anyhow::Result<(Config, Vec<String>)> {
        let mut notes = Vec::new();
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => {
                notes.push("no --config: using the built-in development configuration (namespaces default, session, campaign, demo)".to_string());
                Config::development()
            }
        };
        if let Some(v) = &self.listen {
            config.listen = v.clone();
        }
        if let Some(v) = &self.api_key {
            config.api_keys.push(v.clone());
        }
        if let Some(v) = &self.token_secret {
            config.auth.token_secret = Some(v.clone());
        }
        if let Some(v) = &self.engine {
            config.engine.kind = match v.as_str() {
                "memory" => EngineKind::Memory,
                "redis" => EngineKind::Redis,
                other => anyhow::bail!("--engine must be memory or redis, not {other:?}"),
            };
        }
        if let Some(v) = &self.redis_url {
            config.engine.redis_url = v.clone();
        }
        if let Some(v) = &self.node_id {
            config.node_id = v.clone();
        }
        if let Some(v) = self.ping_interval {
            config.timeouts.ping_interval = v;
        }
        if let Some(v) = self.pong_timeout {
            config.timeouts.pong_timeout = v;
        }
        if let Some(v) = self.auth_timeout {
            config.timeouts.auth_timeout = v;
        }
        if let Some(v) = self.token_grace {
            config.timeouts.token_grace = v;
        }
        if !self.allowed_origins.is_empty() {
            config.allowed_origins = self.allowed_origins.clone();
        }
        if let Some(v) = &self.log_format {
            config.log.format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => anyhow::bail!("--log-format must be text or json, not {other:?}"),
            };
        }
        if self.config.is_none() {
            if config.api_keys.is_empty() {
                config.api_keys.push(DEV_API_KEY.into());
                notes.push(format!("DEVELOPMENT API key: {DEV_API_KEY}"));
            }
            if config.auth.token_secret.is_none() {
                config.auth.token_secret = Some(DEV_SECRET.into());
                notes.push(format!("DEVELOPMENT token secret: {DEV_SECRET}"));
            }
        }
        config.validate()?;
        Ok((config, notes))
    }
}

fn init_logging(format: LogFormat, directives: Option<&str>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_new(directives.unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // The WebSocket library traces whole frames (tokens in `connect` and `refresh` included),
    // verbatim and in hex: secrets never reach logs, whatever HERALD_LOG asks.
    let no_frames = tracing_subscriber::filter::filter_fn(|meta| {
        let wire = meta.target().starts_with("tungstenite")
            || meta.target().starts_with("tokio_tungstenite");
        !(wire && *meta.level() == tracing::Level::TRACE)
    });
    match format {
        LogFormat::Json => builder.json().finish().with(no_frames).init(),
        LogFormat::Text => builder.finish().with(no_frames).init(),
    }
}

/// Builds the engine the configuration names.
async fn build_engine(config: &Config) -> anyhow::Result<Arc<dyn Engine>> {
    match config.engine.kind {
        EngineKind::Memory => {
            let budget = config.engine.memory_budget_bytes;
            Ok(Arc::new(herald_server::engine::memory::MemoryEngine::with_budget(budget)))
        }
        EngineKind::Redis => {
            let engine = herald_server::engine::redis::RedisEngine::new(&config.engine)?;
            if !engine.wait_connected(Duration::from_secs(2)).await {
                eprintln!(
                    "herald: redis at {} is not reachable yet; serving anyway and reconnecting (publishes answer 503 meanwhile)",
                    config.engine.redis_url
                );
            }
            Ok(Arc::new(engine))
        }
    }
}

/// Runs the hub.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (config, notes) = args.config()?;
    init_logging(config.log.format, args.log.as_deref());
    let engine = build_engine(&config).await?;
    let listener = bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let mut config = config;
    config.listen = addr.to_string();
    let dev_secret = (args.config.is_none()).then(|| config.auth.token_secret.clone()).flatten();
    let hub = Hub::new(config, engine)?;
    for note in &notes {
        eprintln!("herald: {note}");
    }
    if let Some(secret) = dev_secret.filter(|s| s == DEV_SECRET) {
        let claims = herald_server::auth::Claims {
            sub: "dev".into(),
            exp: Some(herald_server::auth::unix_now() + 24 * 3600),
            channels: vec!["*".into()],
            publish: vec!["*".into()],
            ..Default::default()
        };
        eprintln!(
            "herald: DEVELOPMENT token (user dev, all channels, 24 h): {}",
            herald_server::auth::mint_hs256(&secret, &claims)?
        );
        eprintln!("herald: dashboard http://{addr}/  demo http://{addr}/demo");
    }
    eprintln!("herald: node {} listening on http://{addr} (WebSocket ws://{addr}/ws)", hub.node_id);
    herald_server::serve(hub.clone(), listener, shutdown_signal()).await?;
    eprintln!("herald: stopped");
    Ok(())
}

/// Binds with a deep accept queue: a reconnect storm (every client of a restarted node at once)
/// must not overflow tokio's default backlog of 1024 and leave clients waiting for a SYN retry.
async fn bind(listen: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(listen).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(4096)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to listen on")))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
