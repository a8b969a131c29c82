//! `herald serve`: parse the configuration, bind, serve until SIGTERM/SIGINT, drain. SIGHUP
//! reloads the TLS certificate and key files.

use anyhow::Context;
use figment::Figment;
use figment::providers::Serialized;
use herald_server::Config;
use herald_server::config::{EngineKind, LogFormat};
use serde::Serialize;
use std::time::Duration;

/// Development API key used when none is configured.
const DEV_API_KEY: &str = "dev-api-key";
/// Development token secret used when none is configured.
const DEV_SECRET: &str = "dev-secret";

/// Arguments of `herald serve`. The flags that replace a configuration key serialize in the
/// shape of [`Config`] (unset ones skipped), so they are layered over the file in one merge.
#[derive(clap::Args, Serialize)]
pub struct ServeArgs {
    /// TOML configuration file (docs/configuration.md). Without one, the built-in development
    /// configuration is used.
    #[arg(long, env = "HERALD_CONFIG")]
    #[serde(skip)]
    config: Option<String>,
    /// Address to listen on (default 127.0.0.1:7700).
    #[arg(long, env = "HERALD_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// API key for /api (added to the configured ones).
    #[arg(long, env = "HERALD_API_KEY")]
    #[serde(skip)]
    api_key: Option<String>,
    /// `[auth]` keys.
    #[command(flatten)]
    auth: AuthFlags,
    /// `[engine]` keys.
    #[command(flatten)]
    engine: EngineFlags,
    /// Node id (random when unset).
    #[arg(long, env = "HERALD_NODE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    /// `[timeouts]` keys.
    #[command(flatten)]
    timeouts: TimeoutFlags,
    /// Allowed Origin for WebSocket upgrades (repeat for several).
    #[arg(long = "allowed-origin", env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_origins: Vec<String>,
    /// Spec file of entities, views and subscriptions (docs/spec.md); repeat for several.
    /// Replaces the configuration's `specs`.
    #[arg(long = "spec", env = "HERALD_SPECS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    specs: Vec<std::path::PathBuf>,
    /// `[log]` keys.
    #[command(flatten)]
    log: LogFlags,
    /// Log filter in tracing's env-filter syntax (`info`, `debug`, `herald=trace`); default
    /// `info`.
    #[arg(long = "log", env = "HERALD_LOG", value_name = "LOG")]
    #[serde(skip)]
    log_filter: Option<String>,
}

/// Flags of `[auth]`.
#[derive(clap::Args, Serialize)]
struct AuthFlags {
    /// HS256 token secret.
    #[arg(long, env = "HERALD_TOKEN_SECRET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    token_secret: Option<String>,
}

/// Flags of `[engine]`.
#[derive(clap::Args, Serialize)]
struct EngineFlags {
    /// Engine holding offsets, history and state.
    #[arg(long, env = "HERALD_ENGINE")]
    #[serde(rename = "kind", skip_serializing_if = "Option::is_none")]
    engine: Option<EngineKind>,
    /// Redis URL for the redis engine.
    #[arg(long, env = "HERALD_REDIS_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<String>,
}

/// Flags of `[timeouts]`.
#[derive(clap::Args, Serialize)]
struct TimeoutFlags {
    /// Server ping interval (`25s`, `200ms`).
    #[arg(long, env = "HERALD_PING_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    ping_interval: Option<Duration>,
    /// Close a connection silent for this long.
    #[arg(long, env = "HERALD_PONG_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pong_timeout: Option<Duration>,
    /// Close a connection that has not sent `connect` within this.
    #[arg(long, env = "HERALD_AUTH_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    auth_timeout: Option<Duration>,
    /// Time a connection may live past its token's expiry without `refresh`.
    #[arg(long, env = "HERALD_TOKEN_GRACE", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    token_grace: Option<Duration>,
}

/// Flags of `[log]`.
#[derive(clap::Args, Serialize)]
struct LogFlags {
    /// Log line format.
    #[arg(long, env = "HERALD_LOG_FORMAT")]
    #[serde(rename = "format", skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// Builds the configuration: file (or development defaults), then env and flags on top.
    fn config(&self) -> anyhow::Result<(Config, Vec<String>)> {
        let mut notes = Vec::new();
        let base = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => {
                notes.push("no --config: using the built-in development configuration (namespaces default, session, campaign, demo, task; the kanban spec)".to_string());
                Config::development()
            }
        };
        let mut config: Config = Figment::from(Serialized::defaults(base))
            .merge(Serialized::defaults(self))
            .extract()
            .context("cannot apply the flags and HERALD_* variables")?;
        config.api_keys.extend(self.api_key.clone());
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
        config.load_specs()?;
        config.validate()?;
        Ok((config, notes))
    }
}

fn init_logging(format: LogFormat, directives: Option<&str>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_new(directives.unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a file or a log collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // The WebSocket library traces whole frames (tokens in `connect` and `refresh` included),
    // verbatim and in hex: secrets never reach logs, whatever HERALD_LOG asks.
    let no_frames = tracing_subscriber::filter::filter_fn(|meta| {
        let wire = meta.target().starts_with("tungstenite")
            || meta.target().starts_with("tokio_tungstenite");
        !(wire && *meta.level() == tracing::Level::TRACE)
    });
    match format {
        LogFormat::Json => builder.json().finish().with(no_frames).init(),
        LogFormat::Text => builder.fmt_fields(text_fields()).finish().with(no_frames).init(),
    }
}

/// Text log fields all one way (logfmt), whatever the call site wrote (`%x`, `?x` or a plain
/// value): `key=value`, the value bare when it is one token (`ip=127.0.0.1`, `event=kick`) and
/// quoted with Rust string escapes when it holds a space, a quote, `=` or nothing
/// (`user="bob smith"`); the message as written.
fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> {
    use tracing_subscriber::field::MakeExt as _;
    tracing_subscriber::fmt::format::debug_fn(
        |w: &mut tracing_subscriber::fmt::format::Writer<'_>,
         field: &tracing::field::Field,
         value: &dyn std::fmt::Debug| {
            let text = format!("{value:?}");
            if field.name() == "message" {
                return write!(w, "{text}");
            }
            // A string field arrives quoted by its Debug form: with escapes, it stays as it is.
            let raw = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                Some(inner) if inner.contains('\\') => return write!(w, "{field}={text}"),
                Some(inner) => inner,
                None => text.as_str(),
            };
            let bare = !raw.is_empty()
                && !raw.chars().any(|c| c.is_whitespace() || c.is_control() || "\"=\\".contains(c));
            if bare { write!(w, "{field}={raw}") } else { write!(w, "{field}={raw:?}") }
        },
    )
    .delimited(" ")
}

/// Checks the `[[bridge]]` sections (rules, names, each source's options) before any port is
/// bound; `herald config check` runs the same.
pub fn check_bridges(
    config: &herald_server::Config,
) -> anyhow::Result<Vec<herald_bridge::config::BridgeConfig>> {
    let bridges = herald_bridge::config::BridgeConfig::parse_all(&config.bridge, |ns| {
        config.namespaces.contains_key(ns)
    })?;
    for bridge in &bridges {
        herald_bridge::sources::check(bridge)?;
    }
    Ok(bridges)
}

/// Runs the hub.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (mut config, notes) = args.config()?;
    init_logging(config.log.format, args.log_filter.as_deref());
    let tls = herald_server::tls::Tls::from_config(&config.tls)
        .context("cannot load the TLS certificate")?;
    let bridges = check_bridges(&config)?;
    let listener = bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    config.listen = addr.to_string();
    let dev_secret = (args.config.is_none()).then(|| config.auth.token_secret.clone()).flatten();
    let hub = herald_server::hub_from_config(config).await?;
    let bridges = herald_bridge::run::start(hub.clone(), bridges).await?;
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
        // The dashboard signs in with an admin token, read from the URL's fragment (which
        // never reaches a server or its logs).
        let admin = herald_server::auth::Claims {
            sub: "dashboard".into(),
            exp: Some(herald_server::auth::unix_now() + 24 * 3600),
            roles: vec!["admin".into()],
            ..Default::default()
        };
        eprintln!(
            "herald: dashboard http://{addr}/#token={}  demo http://{addr}/demo",
            herald_server::auth::mint_hs256(&secret, &admin)?
        );
    }
    // Registered before the listening line, so a SIGHUP sent once it is printed is handled.
    #[cfg(unix)]
    let reloads = tls.clone().map(|tls| {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .expect("SIGHUP handler");
        tokio::spawn(reload_on_sighup(tls, hangup))
    });
    let (http, ws) = if tls.is_some() { ("https", "wss") } else { ("http", "ws") };
    eprintln!(
        "herald: node {} listening on {http}://{addr} (WebSocket {ws}://{addr}/ws)",
        hub.node_id
    );
    herald_server::serve(hub.clone(), listener, tls, shutdown_signal()).await?;
    bridges.stop().await;
    #[cfg(unix)]
    if let Some(reloads) = reloads {
        reloads.abort();
    }
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

/// Reloads the certificate on every SIGHUP; a file that does not load leaves the one in use.
#[cfg(unix)]
async fn reload_on_sighup(
    tls: std::sync::Arc<herald_server::tls::Tls>,
    mut hangup: tokio::signal::unix::Signal,
) {
    while hangup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => {
                tracing::info!(cert_file = %tls.cert_file().display(), "TLS certificate reloaded")
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate not reloaded; keeping the current one")
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// `herald serve`'s arguments alone.
    #[derive(clap::Parser)]
    struct Serve {
        /// The arguments under test.
        #[command(flatten)]
        args: ServeArgs,
    }

    fn config(args: &[&str]) -> Config {
        let argv = std::iter::once("serve").chain(args.iter().copied());
        Serve::try_parse_from(argv).expect("arguments").args.config().expect("configuration").0
    }

    fn json(config: &Config) -> serde_json::Value {
        serde_json::to_value(config).unwrap()
    }

    const FILE: &str = r#"
        api_keys = ["file-key"]
        allowed_origins = ["https://a.example"]
        [auth]
        token_secret = "file-secret"
        audience = "aud"
        [timeouts]
        ping_interval = "10s"
        pong_timeout = "30s"
        [engine]
        redis_url = "redis://file:6379"
        [namespaces.board]
        keyed = true
    "#;

    #[test]
    fn flags_replace_the_keys_they_name_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, FILE).unwrap();
        let path = path.to_str().unwrap();
        assert_eq!(json(&config(&["--config", path])), json(&Config::from_file(path).unwrap()));

        let c = config(&[
            "--config",
            path,
            "--api-key",
            "flag-key",
            "--allowed-origin",
            "https://b.example",
            "--ping-interval",
            "5s",
            "--engine",
            "redis",
            "--log-format",
            "json",
        ]);
        assert_eq!(c.api_keys, ["file-key", "flag-key"], "--api-key adds");
        assert_eq!(c.allowed_origins, ["https://b.example"], "--allowed-origin replaces");
        assert_eq!(c.timeouts.ping_interval, Duration::from_secs(5));
        assert_eq!(c.timeouts.pong_timeout, Duration::from_secs(30));
        assert_eq!(
            (c.engine.kind, c.engine.redis_url.as_str()),
            (EngineKind::Redis, "redis://file:6379")
        );
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.auth.token_secret.as_deref(), Some("file-secret"));
        assert_eq!(c.auth.audience.as_deref(), Some("aud"));
        assert!(c.namespaces["board"].keyed);
    }

    #[test]
    fn without_a_file_the_development_configuration_is_used() {
        let c = config(&["--token-secret", "s", "--listen", "127.0.0.1:0"]);
        let mut expected = Config::development();
        expected.listen = "127.0.0.1:0".into();
        expected.auth.token_secret = Some("s".into());
        expected.api_keys = vec![DEV_API_KEY.into()];
        assert_eq!(json(&c), json(&expected));
    }
}
