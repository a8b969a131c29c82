//! Typed configuration, parsed (from TOML, then env vars and CLI flags on top, see the binary)
//! before any port is bound.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The TOML is malformed or has unknown keys.
    #[error("invalid configuration: {0}")]
    Parse(#[from] toml::de::Error),
    /// Values that are each valid but do not fit together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Id of this node in `/api/info` and connect replies; random when empty.
    pub node_id: String,
    /// API keys accepted by `/api` (header `x-api-key`). Empty means the API is closed.
    pub api_keys: Vec<String>,
    /// Allowed `Origin` values for WebSocket upgrades (`*` for any). Empty: any origin.
    pub allowed_origins: Vec<String>,
    /// Refuse WebSocket upgrades that carry no `Origin` header at all (browser-only
    /// deployments: every browser sends one; non-browser clients then need to send one too).
    pub require_origin: bool,
    /// Token verification.
    pub auth: AuthConfig,
    /// Heartbeat, auth and shutdown timings.
    pub timeouts: Timeouts,
    /// Per-connection and per-user limits.
    pub limits: Limits,
    /// Which engine holds offsets, history and state.
    pub engine: EngineConfig,
    /// Log format and audit options.
    pub log: LogConfig,
    /// Optional HTTP hook asked whether a user may subscribe to a channel.
    pub subscribe_hook: Option<HookConfig>,
    /// HTTPS and `wss://` on the listener; plain HTTP when unset.
    pub tls: TlsConfig,
    /// permessage-deflate on WebSocket connections whose client offers it.
    pub compression: CompressionConfig,
    /// Namespaces by name; `default` holds channels without a `:`.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Event-bus bridges (`[[bridge]]`), kept as tables: the `herald-bridge` crate checks and
    /// runs them (docs/bridge.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bridge: Vec<toml::Table>,
    /// Spec files (docs/spec.md): their entities become keyed namespaces with a schema, their
    /// views and subscriptions what clients subscribe to. Relative paths are read from the
    /// working directory.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub specs: Vec<PathBuf>,
    /// The loaded specs ([`Config::load_specs`]); not configuration itself.
    #[serde(skip)]
    pub catalog: Option<Arc<herald_spec::Catalog>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7700".into(),
            node_id: String::new(),
            api_keys: Vec::new(),
            allowed_origins: Vec::new(),
            require_origin: false,
            auth: AuthConfig::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            engine: EngineConfig::default(),
            log: LogConfig::default(),
            subscribe_hook: None,
            tls: TlsConfig::default(),
            compression: CompressionConfig::default(),
            namespaces: BTreeMap::from([("default".to_string(), Namespace::default())]),
            bridge: Vec::new(),
            specs: Vec::new(),
            catalog: None,
        }
    }
}

/// How connection tokens are verified.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256/384/512 tokens.
    pub token_secret: Option<String>,
    /// PEM of an RSA public key for RS256 tokens.
    pub rsa_public_key: Option<String>,
    /// PEM of an EC (P-256) public key for ES256 tokens.
    pub ec_public_key: Option<String>,
    /// JWKS URL; keys are cached by `kid` and refetched on an unknown `kid`.
    pub jwks_url: Option<String>,
    /// How long fetched JWKS keys are trusted before the set is fetched again (default 5 min),
    /// so a key the identity provider removed stops verifying tokens.
    #[serde(with = "humantime_serde", default, skip_serializing_if = "Option::is_none")]
    pub jwks_ttl: Option<Duration>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: Option<u64>,
}

/// Room a client `publish` command needs around its data (channel, key, ids) within one frame.
pub const FRAME_ENVELOPE_BYTES: usize = 16 * 1024;

/// Timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// How often the server sends `ping`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Silence after which a connection is closed (must exceed `ping_interval`).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Time allowed between upgrade and a successful `connect`.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Time a connection may live past its token's expiry without `refresh`.
    #[serde(with = "humantime_serde")]
    pub token_grace: Duration,
    /// Time allowed for an HTTP request head to arrive, and for the next one on a kept-alive
    /// connection (slowloris bound).
    #[serde(with = "humantime_serde")]
    pub http_header_read: Duration,
    /// Time allowed to handle one HTTP request, body included.
    #[serde(with = "humantime_serde")]
    pub http_request: Duration,
    /// How long shutdown waits for connections to drain.
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(60),
            auth_timeout: Duration::from_secs(10),
            token_grace: Duration::from_secs(5),
            shutdown_deadline: Duration::from_secs(10),
            http_header_read: Duration::from_secs(10),
            http_request: Duration::from_secs(30),
        }
    }
}

/// Limits; 0 means unlimited where noted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest inbound WebSocket frame.
    pub max_frame_bytes: usize,
    /// Channels one connection may be subscribed to.
    pub max_channels_per_connection: usize,
    /// Connections one user may hold (0: unlimited).
    pub max_connections_per_user: usize,
    /// WebSocket upgrade attempts per source IP per minute (0: unlimited).
    pub connection_attempts_per_ip_per_minute: u32,
    /// Plain HTTP connections (not upgraded to WebSocket) open on the node (0: unlimited).
    pub max_http_connections: usize,
    /// Plain HTTP connections open from one source IP, every route counted (0: unlimited).
    pub max_http_connections_per_ip: usize,
    /// Commands per second per connection (burst of twice that; 0: unlimited).
    pub commands_per_second: u32,
    /// Messages an outbound queue may hold before the connection is a slow consumer.
    pub outbound_queue_messages: usize,
    /// Bytes an outbound queue may hold before the connection is a slow consumer.
    pub outbound_queue_bytes: usize,
    /// Largest `limit` for history reads.
    pub max_history_page: usize,
    /// Failed `x-api-key` checks one source IP may make per minute before every API request
    /// from it is answered 429 until the minute ends (0: unlimited): keys cannot be guessed.
    pub api_key_failures_per_ip_per_minute: u32,
    /// Largest HTTP API request body; above: 413 with error 111.
    pub max_api_body_bytes: usize,
    /// Most items in one `POST /api/publish/batch` (0: unlimited, the body limit still bounds
    /// it); above: 413 with error 111, so one request cannot hold the handler for long.
    pub max_batch_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024 + FRAME_ENVELOPE_BYTES,
            max_channels_per_connection: 256,
            max_connections_per_user: 0,
            connection_attempts_per_ip_per_minute: 0,
            max_http_connections: 4096,
            max_http_connections_per_ip: 256,
            commands_per_second: 200,
            outbound_queue_messages: 256,
            outbound_queue_bytes: 8 * 1024 * 1024,
            max_history_page: 1000,
            api_key_failures_per_ip_per_minute: 20,
            max_api_body_bytes: 2 * 1024 * 1024,
            max_batch_items: 1000,
        }
    }
}

/// Engine selection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `memory` (single node) or `redis`.
    pub kind: EngineKind,
    /// Redis URL for the `redis` engine.
    pub redis_url: String,
    /// Key prefix in Redis, so several hubs can share one Redis.
    pub redis_prefix: String,
    /// Redis engine: after each publication, `WAIT` for this many replicas (0: no WAIT), so an
    /// acknowledged publication survives the master's loss; too few within
    /// `redis_wait_timeout` answers `unavailable` (113).
    pub redis_wait_replicas: u32,
    /// How long a publication waits for `redis_wait_replicas`.
    #[serde(with = "humantime_serde")]
    pub redis_wait_timeout: Duration,
    /// Memory engine: bytes that history and keyed state of every channel may hold together
    /// (0: unbounded). Per-channel bounds alone let many channels add up to any size; past this
    /// the oldest history of the hub is dropped first, and keyed publishes that would grow the
    /// state beyond it are refused with 112.
    pub memory_budget_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kind: EngineKind::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "herald".into(),
            redis_wait_replicas: 0,
            redis_wait_timeout: Duration::from_millis(100),
            memory_budget_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Why `engine.kind = "redis"` is refused by a herald-server built without its `redis` feature.
#[cfg(not(feature = "redis"))]
pub(crate) const REDIS_NOT_BUILT: &str =
    "engine.kind = \"redis\" needs herald-server built with its \"redis\" feature";

/// Which engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Embedded, single node.
    Memory,
    /// Redis: several nodes act as one hub.
    Redis,
}

/// Logging.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json` (JSON lines).
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// permessage-deflate (RFC 7692) on `/ws`: negotiated with clients that offer it (every browser
/// does) when enabled; other connections are unchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Negotiate permessage-deflate. Off by default: it costs CPU per message and, with
    /// `context_takeover`, memory per connection; it pays on slow or metered links.
    pub enabled: bool,
    /// Frames shorter than this go uncompressed: deflate rarely shrinks a few dozen bytes and
    /// always costs the CPU.
    pub threshold_bytes: usize,
    /// Deflate level, 1 (fastest) to 9 (smallest).
    pub level: u32,
    /// Keep each direction's dictionary between messages: better ratios for similar messages,
    /// at about 320 KiB per compressed connection (measured, docs/operations.md). Off: every
    /// message stands alone, and the deflate state is borrowed from a pool shared by all
    /// connections.
    pub context_takeover: bool,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: false,
            threshold_bytes: 512,
            level: 1,
            context_takeover: false,
        }
    }
}

/// TLS of the listener: both files or neither. They are read again on SIGHUP (`herald serve`),
/// so a renewed certificate takes effect without a restart or a dropped connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether the listener serves TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// The subscribe-authorization hook (seed 001: "may this user view this campaign").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// POSTed `{"user","channel","client"}`; a 2xx with `{"allow": true}` allows.
    pub url: String,
    /// How long an answer is cached per (user, channel).
    #[serde(with = "humantime_serde", default = "default_hook_cache")]
    pub cache_ttl: Duration,
    /// How long to wait for the hook; a timeout denies.
    #[serde(with = "humantime_serde", default = "default_hook_timeout")]
    pub timeout: Duration,
}

fn default_hook_cache() -> Duration {
    Duration::from_secs(30)
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Who may subscribe to a namespace's channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribePolicy {
    /// A pattern in the token's `channels` claim must match.
    #[default]
    Claims,
    /// Any authenticated user.
    Authenticated,
    /// Anyone, including anonymous connections.
    Anyone,
    /// Claims first; otherwise ask the subscribe hook.
    Hook,
}

/// Options of one namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Namespace {
    /// Who may subscribe.
    pub subscribe: SubscribePolicy,
    /// Whether connections may connect without a token to use this namespace.
    pub anonymous: bool,
    /// Whether clients allowed to subscribe may also publish (the token's `publish` claim always
    /// grants).
    pub client_publish: bool,
    /// Largest `data` of one publication, in bytes.
    pub max_message_bytes: usize,
    /// Publications kept per channel (0: no history, resume always `history_trimmed`).
    pub history_size: usize,
    /// Age after which publications leave the history.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Most publications a resume may return before it answers `too_many`.
    pub max_recover: usize,
    /// Channels keep keyed state (publications with `key` and `op`).
    pub keyed: bool,
    /// Most live keys per channel.
    pub max_state_records: usize,
    /// Most bytes of live records (keys and values) per channel.
    pub max_state_bytes: usize,
    /// Longest record key, in bytes: keys are stored and sent with every record, so they are
    /// bounded on their own (a too-long key is refused with 107).
    pub max_key_bytes: usize,
    /// How long an idempotency key is remembered.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Whether subscribers may give ad-hoc view filters (`subscribe` with `filter`) on this
    /// keyed namespace; spec views are allowed either way.
    pub filters: bool,
    /// The spec entity whose records this namespace holds (set by [`Config::load_specs`]):
    /// publications are validated against it and filters typed by it.
    #[serde(skip)]
    pub entity: Option<Arc<herald_spec::Entity>>,
    /// Subscribed connections are members of the channel's presence (protocol §15).
    pub presence: bool,
    /// Largest presence `info` of one member, in bytes.
    pub max_presence_info_bytes: usize,
    /// Presence changes of one channel are gathered this long and published together: a join
    /// and a leave of one member inside it cancel out, several updates keep the last.
    #[serde(with = "humantime_serde")]
    pub presence_window: Duration,
    /// Volatile events (`volatile`) one connection may send per second to this namespace
    /// (0: none); a connection allowed to publish here may send them.
    pub volatile_per_second: u32,
    /// On protocol v2 connections, a publication whose frame is larger than this goes in parts
    /// of at most this many bytes (protocol §18), so a large output never holds up the
    /// connection's other channels and no socket keeps a write buffer its size (0: never).
    pub chunk_bytes: usize,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace {
            subscribe: SubscribePolicy::Claims,
            anonymous: false,
            client_publish: false,
            max_message_bytes: 64 * 1024,
            history_size: 1000,
            history_ttl: Duration::from_secs(3600),
            max_recover: 1000,
            keyed: false,
            max_state_records: 100_000,
            max_state_bytes: 2 * 1024 * 1024,
            max_key_bytes: 256,
            idempotency_window: Duration::from_secs(300),
            filters: false,
            entity: None,
            presence: false,
            max_presence_info_bytes: 1024,
            presence_window: Duration::from_millis(100),
            volatile_per_second: 30,
            chunk_bytes: 16 * 1024,
        }
    }
}

impl Namespace {
    /// Whether channels of this namespace may have view subscribers: keyed, with an entity or
    /// ad-hoc filters allowed. Only then do engines keep each write's old and new record.
    pub fn views(&self) -> bool {
        self.keyed && (self.entity.is_some() || self.filters)
    }
}

/// The spec path that names the kanban spec compiled into the hub (`web/kanban.herald`, also
/// `examples/kanban.herald`): the development configuration loads it for the demo board.
pub const BUILTIN_KANBAN: &str = "builtin:kanban";

/// The text of [`BUILTIN_KANBAN`].
pub const BUILTIN_KANBAN_SPEC: &str = include_str!("../web/kanban.herald");

/// The built-in namespace of the hub's own channels (`sys:stats`): only admin tokens subscribe,
/// only the hub publishes, and a configuration cannot declare it (one way to reach it).
pub const SYSTEM_NAMESPACE: &str = "sys";

/// Options of [`SYSTEM_NAMESPACE`]: five minutes of history (one `sys:stats` publication per
/// second per node), so a dashboard opened late draws its charts from the start.
pub static SYSTEM_NAMESPACE_OPTIONS: std::sync::LazyLock<Namespace> =
    std::sync::LazyLock::new(|| Namespace {
        max_message_bytes: 256 * 1024,
        history_size: 300,
        history_ttl: Duration::from_secs(300),
        max_recover: 300,
        ..Namespace::default()
    });

impl Config {
    /// Reads and checks the spec files named in `specs` (once: a loaded catalog is kept), and
    /// gives each entity its namespace: the one named after it (`Task` → `task`), made keyed,
    /// or a new keyed namespace with default options when none is configured.
    pub fn load_specs(&mut self) -> Result<(), ConfigError> {
        if self.catalog.is_some() || self.specs.is_empty() {
            return Ok(());
        }
        let mut specs = Vec::new();
        for path in &self.specs {
            let file = path.display().to_string();
            let text = match file.as_str() {
                BUILTIN_KANBAN => BUILTIN_KANBAN_SPEC.to_string(),
                _ => std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: file.clone(), source })?,
            };
            let spec = herald_spec::parse_spec(&text)
                .map_err(|e| ConfigError::Invalid(format!("spec {file}:{e}")))?;
            specs.push((file, spec));
        }
        let catalog = herald_spec::Catalog::build(&specs)
            .map_err(|e| ConfigError::Invalid(format!("spec {e}")))?;
        for entity in catalog.entities.values() {
            let name = entity.namespace();
            if name == SYSTEM_NAMESPACE {
                return Err(ConfigError::Invalid(format!(
                    "entity {} would use the reserved namespace {SYSTEM_NAMESPACE:?}",
                    entity.name
                )));
            }
            let ns = self
                .namespaces
                .entry(name)
                .or_insert_with(|| Namespace { keyed: true, ..Namespace::default() });
            ns.keyed = true;
            ns.entity = Some(entity.clone());
        }
        self.catalog = Some(Arc::new(catalog));
        Ok(())
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::from_toml(&text)
    }

    /// Refuses combinations that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.timeouts;
        if t.pong_timeout <= t.ping_interval {
            return Err(ConfigError::Invalid(format!(
                "timeouts.pong_timeout ({:?}) must be above timeouts.ping_interval ({:?})",
                t.pong_timeout, t.ping_interval
            )));
        }
        if t.ping_interval.is_zero() {
            return Err(ConfigError::Invalid("timeouts.ping_interval must be above 0".into()));
        }
        if self.limits.outbound_queue_messages == 0 || self.limits.max_frame_bytes < 128 {
            return Err(ConfigError::Invalid(
                "limits.outbound_queue_messages must be above 0 and max_frame_bytes at least 128"
                    .into(),
            ));
        }
        #[cfg(not(feature = "redis"))]
        if self.engine.kind == EngineKind::Redis {
            return Err(ConfigError::Invalid(REDIS_NOT_BUILT.into()));
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                for (name, path) in [("tls.cert_file", cert), ("tls.key_file", key)] {
                    std::fs::File::open(path).map_err(|e| {
                        ConfigError::Invalid(format!("{name}: cannot read {}: {e}", path.display()))
                    })?;
                }
            }
            _ => {
                return Err(ConfigError::Invalid(
                    "tls.cert_file and tls.key_file must be set together".into(),
                ));
            }
        }
        if self.engine.kind == EngineKind::Redis && self.engine.redis_url.is_empty() {
            return Err(ConfigError::Invalid("engine.redis_url is required for redis".into()));
        }
        if !(1..=9).contains(&self.compression.level) {
            return Err(ConfigError::Invalid("compression.level must be between 1 and 9".into()));
        }
        for (name, ns) in &self.namespaces {
            if name.contains(':') || name.is_empty() {
                return Err(ConfigError::Invalid(format!("namespace name {name:?} is invalid")));
            }
            if name == SYSTEM_NAMESPACE {
                return Err(ConfigError::Invalid(format!(
                    "namespace {name:?} is reserved for the hub's own channels (sys:stats)"
                )));
            }
            if ns.presence_window > Duration::from_secs(10) {
                return Err(ConfigError::Invalid(format!(
                    "namespace {name:?}: presence_window must be at most 10s"
                )));
            }
            if ns.chunk_bytes != 0 && ns.chunk_bytes < 1024 {
                return Err(ConfigError::Invalid(format!(
                    "namespace {name:?}: chunk_bytes must be 0 (never) or at least 1024"
                )));
            }
            if ns.max_key_bytes == 0 || ns.max_key_bytes > ns.max_state_bytes {
                return Err(ConfigError::Invalid(format!(
                    "namespace {name:?}: max_key_bytes must be between 1 and max_state_bytes"
                )));
            }
            // A client publish of up to max_message_bytes must fit in one frame, so that a too
            // large one is refused with 111 rather than closed with the final 4504.
            if ns.client_publish
                && ns.max_message_bytes.saturating_add(FRAME_ENVELOPE_BYTES)
                    > self.limits.max_frame_bytes
            {
                return Err(ConfigError::Invalid(format!(
                    "namespace {name:?} lets clients publish up to {} bytes: limits.max_frame_bytes \
                     ({}) must be at least that plus {FRAME_ENVELOPE_BYTES} for the command",
                    ns.max_message_bytes, self.limits.max_frame_bytes
                )));
            }
            // A snapshot or `state` reply carries the whole state in one message, which must
            // fit the reply budget (a quarter of the outbound queue).
            if ns.keyed && ns.max_state_bytes > self.limits.outbound_queue_bytes / 4 {
                return Err(ConfigError::Invalid(format!(
                    "namespace {name:?}: max_state_bytes ({}) must be at most a quarter of \
                     limits.outbound_queue_bytes ({}), so a snapshot reply fits the queue",
                    ns.max_state_bytes, self.limits.outbound_queue_bytes
                )));
            }
            if ns.subscribe == SubscribePolicy::Hook && self.subscribe_hook.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "namespace {name:?} uses subscribe = \"hook\" but [subscribe_hook] is not set"
                )));
            }
        }
        Ok(())
    }

    /// Settings that are valid but break a guarantee in practice, for a warning at startup.
    /// A slow consumer closed with 4001 misses up to about twice the outbound queue (what was
    /// queued plus what was being written): a namespace that cannot recover that many
    /// publications makes every 4001 a `too_many` resync instead of a resume.
    pub fn warnings(&self) -> Vec<String> {
        let queue = self.limits.outbound_queue_messages;
        self.namespaces
            .iter()
            .filter(|(_, ns)| {
                ns.history_size > 0 && ns.history_size.min(ns.max_recover) < 2 * queue
            })
            .map(|(name, ns)| {
                format!(
                    "namespace {name:?}: history_size/max_recover ({}/{}) below twice \
                     limits.outbound_queue_messages ({queue}): a slow consumer closed with 4001 \
                     may not be able to resume",
                    ns.history_size, ns.max_recover
                )
            })
            .collect()
    }

    /// The built-in configuration used by `herald serve` with no config file: the `default`,
    /// `session` and `campaign` namespaces (token claims decide, as in the README's tour) and the
    /// `demo` namespace the demo page uses (keyed, with presence).
    pub fn development() -> Config {
        let mut config = Config::default();
        for name in ["session", "campaign"] {
            config.namespaces.insert(name.into(), Namespace::default());
        }
        config.namespaces.insert(
            "demo".into(),
            Namespace {
                subscribe: SubscribePolicy::Anyone,
                anonymous: true,
                client_publish: true,
                keyed: true,
                max_state_records: 10_000,
                // The demo board's avatars, editing markers and cursors (`demo:presence`).
                presence: true,
                ..Namespace::default()
            },
        );
        // The demo board's tasks (entity Task of the built-in kanban spec), with live views.
        config.namespaces.insert(
            "task".into(),
            Namespace {
                subscribe: SubscribePolicy::Anyone,
                anonymous: true,
                client_publish: true,
                keyed: true,
                filters: true,
                max_state_records: 10_000,
                ..Namespace::default()
            },
        );
        config.specs = vec![BUILTIN_KANBAN.into()];
        config
    }

    /// The namespace of a channel: the part before the first `:`, or `default`.
    pub fn namespace_of(channel: &str) -> &str {
        // A byte loop: names are short, and `split_once(':')`'s searcher cost more than the
        // search, a few times per publish (docs/benchmarks.md).
        match channel.bytes().position(|b| b == b':') {
            Some(i) => &channel[..i],
            None => "default",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let c = Config::from_toml(
            r#"
            listen = "127.0.0.1:0"
            api_keys = ["k"]
            [timeouts]
            ping_interval = "1s"
            pong_timeout = "3s"
            [namespaces.campaign]
            history_size = 10
            history_ttl = "5m"
            keyed = true
            "#,
        )
        .unwrap();
        assert_eq!(c.namespaces["campaign"].history_ttl, Duration::from_secs(300));
        assert!(c.namespaces["campaign"].keyed);
        let err = Config::from_toml("[timeouts]\nping_interval = \"5s\"\npong_timeout = \"5s\"\n");
        assert!(err.unwrap_err().to_string().contains("pong_timeout"));
        assert!(Config::from_toml("bogus = 1").is_err());
        assert_eq!(Config::namespace_of("campaign:42:x"), "campaign");
        assert_eq!(Config::namespace_of("tasks"), "default");
    }

    /// A build without the `redis` feature refuses the Redis engine by name instead of
    /// running another engine or failing later.
    #[cfg(not(feature = "redis"))]
    #[test]
    fn redis_engine_needs_the_feature() {
        let err = Config::from_toml("[engine]\nkind = \"redis\"\n").unwrap_err();
        assert!(err.to_string().contains("\"redis\" feature"), "{err}");
    }

    #[test]
    fn tls_needs_both_files_and_readable_ones() {
        let err = Config::from_toml("[tls]\ncert_file = \"c.pem\"\n").unwrap_err();
        assert!(err.to_string().contains("set together"), "{err}");
        let toml = "[tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"\n";
        let err = Config::from_toml(toml).unwrap_err();
        assert!(err.to_string().contains("tls.cert_file: cannot read /nonexistent/c.pem"), "{err}");
    }

    #[test]
    fn key_length_limit_is_validated() {
        assert_eq!(Config::default().namespaces["default"].max_key_bytes, 256);
        let err = Config::from_toml("[namespaces.default]\nmax_key_bytes = 0\n").unwrap_err();
        assert!(err.to_string().contains("max_key_bytes"), "{err}");
        let toml = "[namespaces.default]\nmax_state_bytes = 100\nmax_key_bytes = 101\n";
        assert!(Config::from_toml(toml).is_err());
    }
}
