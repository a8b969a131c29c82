//! The public face of the resilient client: [`ClientBuilder`] and the cheap, cloneable
//! [`Client`] handle. Everything it does is a [`Cmd`] sent to the connection task that
//! [`crate::connection`] runs.

use crate::backoff::BackoffPolicy;
use crate::command::{Cmd, CommandTx};
use crate::connection::{self, ConnectionConfig};
use crate::error::Error;
use crate::event::{SubscribeOptions, ViewOptions};
use crate::sse::{ProbePolicy, Transport};
use crate::state::ConnectionState;
use crate::subscription::Subscription;
use crate::token::TokenSource;
use crate::transport::Transports;
use crate::view::View;
use herald_protocol::Command;
use herald_protocol::command::{HistoryQuery, PublishCommand};
use herald_protocol::reply::{ConnectResult, HistoryResult, PublishResult, StateResult};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Why [`ClientBuilder::build`] refused the configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// At least one server URL is needed.
    #[error("no server url given")]
    NoUrls,
    /// A URL is not a `ws://` or `wss://` URL.
    #[error("invalid server url {0:?}: expected ws://HOST:PORT/ws")]
    BadUrl(String),
    /// At least one transport is needed.
    #[error("no transport given")]
    NoTransports,
}

/// Configures a [`Client`]. Defaults: backoff 1 s doubling to 30 s with full jitter, reset by
/// every established connection; breaker after 10 failed attempts, probing every 30 s; 10 s
/// request and connect timeouts, 10 s liveness margin; WebSocket, falling back to SSE.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    /// Server URLs, tried in turn.
    urls: Vec<String>,
    /// Where tokens come from.
    token: TokenSource,
    /// Reconnect delays and the circuit breaker.
    backoff: BackoffPolicy,
    /// How long a request waits for its reply.
    request_timeout: Duration,
    /// How long one attempt may take from TCP connect to the `connect` reply.
    connect_timeout: Duration,
    /// Silence past the ping interval plus this means the connection is dead.
    liveness_margin: Duration,
    /// How long before expiry the token is refreshed.
    refresh_lead: Duration,
    /// The client name sent in `connect`.
    name: Option<String>,
    /// The default presence member id; random when unset.
    member: Option<String>,
    /// The transports each attempt tries, and the WebSocket probes while on SSE.
    transports: Transports,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            urls: Vec::new(),
            token: TokenSource::None,
            backoff: BackoffPolicy::default(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            liveness_margin: Duration::from_secs(10),
            refresh_lead: Duration::from_secs(30),
            name: None,
            member: None,
            transports: Transports::default(),
        }
    }
}

impl ClientBuilder {
    /// Adds a server URL (`ws://HOST:PORT/ws`). With several, the client moves to the next one
    /// after every failed attempt or lost connection.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// Adds several server URLs (see [`ClientBuilder::url`]).
    pub fn urls<I: IntoIterator<Item = S>, S: Into<String>>(mut self, urls: I) -> Self {
        self.urls.extend(urls.into_iter().map(Into::into));
        self
    }

    /// Authenticates with one fixed token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = TokenSource::Static(token.into());
        self
    }

    /// Authenticates with tokens from an async provider, called for the first connection, after
    /// the server reports the token expired, and before expiry for an in-band refresh.
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.token = TokenSource::provider(provider);
        self
    }

    /// Sets the token source directly.
    pub fn token_source(mut self, source: TokenSource) -> Self {
        self.token = source;
        self
    }

    /// Replaces the reconnect policy (delays, jitter, circuit breaker).
    pub fn backoff(mut self, policy: BackoffPolicy) -> Self {
        self.backoff = policy;
        self
    }

    /// How long publish, history and state wait for their reply (including the time spent
    /// waiting for a connection).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long one attempt may take from TCP connect to the `connect` reply.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Silence longer than the server's `ping_interval_ms` plus this margin means the connection
    /// is dead (a network that drops packets without FIN or RST), and the client reconnects.
    pub fn liveness_margin(mut self, margin: Duration) -> Self {
        self.liveness_margin = margin;
        self
    }

    /// Refresh the token this long before `expires_at` (at most half of the remaining lifetime).
    pub fn refresh_lead(mut self, lead: Duration) -> Self {
        self.refresh_lead = lead;
        self
    }

    /// A client name sent in `connect` (shown in the hub's connection listings).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The presence member id (the `ID` of `USER/ID`) of subscriptions that set none. Default:
    /// a random id per client, the same across its reconnects.
    pub fn member(mut self, id: impl Into<String>) -> Self {
        self.member = Some(id.into());
        self
    }

    /// The transports each connection attempt tries, in order (default WebSocket, then SSE).
    /// The next is tried only when one is refused: a WebSocket upgrade answered with an HTTP
    /// error status or closed before any answer (not a refused TCP connect, a reset, or a
    /// refused `connect`). On SSE after a refused WebSocket, the client probes WebSocket in the
    /// background ([`ClientBuilder::sse_probe`]) and reconnects over it once an upgrade works,
    /// resuming every subscription as after any reconnect. `[Transport::WebSocket]` alone never
    /// falls back.
    pub fn transports(mut self, transports: impl IntoIterator<Item = Transport>) -> Self {
        self.transports.order = transports.into_iter().collect();
        self
    }

    /// How often a client on SSE tries a WebSocket upgrade again (default 2 s, doubling up to
    /// 30 s).
    pub fn sse_probe(mut self, policy: ProbePolicy) -> Self {
        self.transports.probe = policy;
        self
    }

    /// Starts the client: spawns its background task (needs a Tokio runtime) and begins
    /// connecting at once.
    pub fn build(self) -> Result<Client, BuildError> {
        self.build_with_states().map(|(client, _)| client)
    }

    /// Like [`ClientBuilder::build`], and also returns a state feed that sees every transition
    /// from the very first attempt (a feed taken after `build` may miss the earliest ones).
    pub fn build_with_states(
        self,
    ) -> Result<(Client, broadcast::Receiver<ConnectionState>), BuildError> {
        if self.urls.is_empty() {
            return Err(BuildError::NoUrls);
        }
        if self.transports.order.is_empty() {
            return Err(BuildError::NoTransports);
        }
        for u in &self.urls {
            match url::Url::parse(u) {
                Ok(parsed) if matches!(parsed.scheme(), "ws" | "wss") => {}
                _ => return Err(BuildError::BadUrl(u.clone())),
            }
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let member = self.member.unwrap_or_else(random_member);
        let config = ConnectionConfig {
            urls: self.urls,
            token: self.token,
            backoff: self.backoff,
            connect_timeout: self.connect_timeout,
            liveness_margin: self.liveness_margin,
            refresh_lead: self.refresh_lead,
            name: self.name,
            member: member.clone(),
            transports: self.transports,
        };
        let handles = connection::spawn(config, cmd_rx);
        let client = Client {
            inner: Arc::new(Inner {
                cmd: cmd_tx,
                state: handles.state,
                info: handles.info,
                transport: handles.transport,
                changes: handles.changes,
                request_timeout: self.request_timeout,
                next_sub: AtomicU64::new(1),
                member,
            }),
        };
        Ok((client, handles.first_changes))
    }
}

/// A handle to a Herald connection that survives network faults. Cheap to clone; the
/// connection closes when the last clone and the last [`Subscription`] are dropped, or on
/// [`Client::close`].
#[derive(Clone)]
pub struct Client {
    /// Shared by every clone.
    inner: Arc<Inner>,
}

/// What the clones of one [`Client`] share.
struct Inner {
    /// The connection task's command channel.
    cmd: CommandTx,
    /// The latest connection state.
    state: watch::Receiver<ConnectionState>,
    /// The current connection's `connect` reply.
    info: watch::Receiver<Option<ConnectResult>>,
    /// The current connection's transport.
    transport: watch::Receiver<Option<Transport>>,
    /// Every state transition, for [`Client::state_changes`].
    changes: broadcast::Sender<ConnectionState>,
    /// How long a request waits for its reply.
    request_timeout: Duration,
    /// The id of the next subscription.
    next_sub: AtomicU64,
    /// The default presence member id of this client's subscriptions.
    member: String,
}

/// A fresh presence member id: 16 hex digits, random enough that two clients of one user never
/// collide.
fn random_member() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Client {
    /// Starts configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// A `watch` receiver of the connection state (latest value; fast transitions may coalesce).
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Every state transition from now on, none coalesced (a slow reader may lag and lose the
    /// oldest, which the receiver reports).
    pub fn state_changes(&self) -> broadcast::Receiver<ConnectionState> {
        self.inner.changes.subscribe()
    }

    /// The hub's reply to the current connection's `connect` (client id, node, ping interval),
    /// or `None` while not connected.
    pub fn connect_info(&self) -> Option<ConnectResult> {
        self.inner.info.borrow().clone()
    }

    /// The transport of the current connection (from its `connect` reply on), or `None` while
    /// not connected.
    pub fn transport(&self) -> Option<Transport> {
        *self.inner.transport.borrow()
    }

    /// A `watch` receiver of [`Client::transport`], to wait for a move between transports.
    pub fn watch_transport(&self) -> watch::Receiver<Option<Transport>> {
        self.inner.transport.clone()
    }

    /// Waits until the state is [`ConnectionState::Connected`], or fails with the offline
    /// reason, or with [`Error::Timeout`].
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        let mut rx = self.inner.state.clone();
        let wait = async {
            loop {
                match rx.borrow_and_update().clone() {
                    ConnectionState::Connected => return Ok(()),
                    ConnectionState::Offline { reason } => return Err(Error::Offline(reason)),
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(Err(Error::Timeout))
    }

    /// Subscribes to `channel`. The returned stream yields [`SubEvent`](crate::SubEvent)s:
    /// `Subscribed`, then publications in offset order exactly once across reconnects, `Resync`
    /// when continuity was lost, and `Ended` if the server refuses. Dropping it unsubscribes.
    ///
    /// On a presence namespace with [`SubscribeOptions::presence`], it also yields the member
    /// list, then joins, updates and leaves (or counts), resumed after reconnects from the last
    /// presence position; and volatile events of the channel (see [`Client::volatile`]).
    pub fn subscribe(&self, channel: impl Into<String>, opts: SubscribeOptions) -> Subscription {
        let channel = channel.into();
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        Subscription::start(&self.inner.cmd, id, channel, opts, self.inner.request_timeout)
    }

    /// Subscribes to a live view of the keyed `channel` (protocol §14): a spec view, an ad-hoc
    /// filter or one key. The returned [`View`] yields [`ViewEvent`](crate::ViewEvent)s
    /// (`Ready`, then `Insert`, `Update`, `Delete` in offset order exactly once across
    /// reconnects, `Ended` on a refusal such as `118 invalid_filter`) and keeps the matching
    /// records by key, decoded as `T`. Dropping it unsubscribes.
    pub fn subscribe_view<T: DeserializeOwned>(
        &self,
        channel: impl Into<String>,
        opts: ViewOptions,
    ) -> View<T> {
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        View::start(&self.inner.cmd, id, channel.into(), opts.query)
    }

    /// The presence member id (the `ID` of `USER/ID`) this client's subscriptions use unless
    /// they set their own.
    pub fn member_id(&self) -> &str {
        &self.inner.member
    }

    /// Sends a volatile event (protocol §16) to `channel`'s current subscribers: no offset, no
    /// history, never replayed, rate-limited by the hub (`110 rate_limited`). For cursors and
    /// typing indicators; anything that must arrive goes through [`Client::publish`].
    pub async fn volatile(
        &self,
        channel: impl Into<String>,
        kind: impl Into<String>,
        data: &impl serde::Serialize,
    ) -> Result<(), Error> {
        let data =
            serde_json::value::to_raw_value(data).map_err(|e| Error::Decode(e.to_string()))?;
        let command = Command::Volatile { channel: channel.into(), kind: Some(kind.into()), data };
        self.request(command).await.map(|_| ())
    }

    /// Sends any command and returns the raw `result` of its reply, within the request timeout.
    pub async fn request(&self, command: Command) -> Result<Box<RawValue>, Error> {
        let (reply, rx) = oneshot::channel();
        self.inner.cmd.send(Cmd::Request { command, reply }).map_err(|_| Error::Closed)?;
        match tokio::time::timeout(self.inner.request_timeout, rx).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(_)) => Err(Error::Closed),
            Ok(Ok(result)) => result,
        }
    }

    async fn typed<T: DeserializeOwned>(&self, command: Command) -> Result<T, Error> {
        let raw = self.request(command).await?;
        serde_json::from_str(raw.get()).map_err(|e| Error::Decode(e.to_string()))
    }

    /// Publishes `data` to `channel` (the namespace must allow client publishes).
    pub async fn publish(
        &self,
        channel: impl Into<String>,
        data: &impl serde::Serialize,
    ) -> Result<PublishResult, Error> {
        let data =
            serde_json::value::to_raw_value(data).map_err(|e| Error::Decode(e.to_string()))?;
        self.publish_with(PublishCommand {
            channel: channel.into(),
            kind: None,
            data,
            key: None,
            op: None,
            idempotency_key: None,
            correlation_id: None,
        })
        .await
    }

    /// Publishes with every field (type, key, op, idempotency key, correlation id).
    pub async fn publish_with(&self, publish: PublishCommand) -> Result<PublishResult, Error> {
        self.typed(Command::Publish(publish)).await
    }

    /// Reads a channel's history.
    pub async fn history(&self, query: HistoryQuery) -> Result<HistoryResult, Error> {
        self.typed(Command::History(query)).await
    }

    /// Reads a keyed channel's records.
    pub async fn channel_state(&self, channel: impl Into<String>) -> Result<StateResult, Error> {
        self.typed(Command::State { channel: channel.into() }).await
    }

    /// Resets the backoff and the circuit breaker and connects again now: leaves
    /// [`ConnectionState::Offline`] (after a final close code too), or replaces the current
    /// connection.
    pub fn reconnect(&self) {
        let _ = self.inner.cmd.send(Cmd::Reconnect);
    }

    /// Closes the connection and stops the background task; subscriptions end.
    pub fn close(&self) {
        let _ = self.inner.cmd.send(Cmd::Close);
    }
}
