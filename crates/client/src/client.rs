//! The resilient client: one background task owns the connection, reconnects with backoff,
//! resumes every subscription from its last delivered position, and answers requests.

use crate::backoff::{Backoff, Next};
use crate::raw::{RawConnection, RawError, RawReceiver, RawSender};
use crate::subscription::{SubEvent, SubscribeOptions, Subscription, Tracker};
use crate::{BackoffPolicy, ConnectionState, Error, OfflineReason, TokenSource};
use herald_protocol::command::{HistoryQuery, PublishCommand};
use herald_protocol::reply::{
    ConnectResult, HistoryResult, PublishResult, RefreshResult, StateResult, SubscribeResult,
};
use herald_protocol::{
    CloseCode, Command, Continuity, ErrorBody, ErrorCode, Position, Request, ServerMessage,
};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

/// A frame the writer batches never grows past this many bytes (the hub's default inbound limit
/// is 64 KiB).
const MAX_BATCH_BYTES: usize = 32 * 1024;
/// Delay before retrying a subscribe the server refused with a transient error.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);
/// Delay before retrying a token fetch for an in-band refresh that failed.
const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// Why [`ClientBuilder::build`] refused the configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// At least one server URL is needed.
    #[error("no server url given")]
    NoUrls,
    /// A URL is not a `ws://` or `wss://` URL.
    #[error("invalid server url {0:?}: expected ws://HOST:PORT/ws")]
    BadUrl(String),
}

/// Configures a [`Client`]. Defaults: backoff 1 s doubling to 30 s with full jitter, reset by
/// every established connection; breaker after 10 failed attempts, probing every 30 s; 10 s
/// request and connect timeouts, 10 s liveness margin.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    urls: Vec<String>,
    token: TokenSource,
    backoff: BackoffPolicy,
    request_timeout: Duration,
    connect_timeout: Duration,
    liveness_margin: Duration,
    refresh_lead: Duration,
    name: Option<String>,
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
        for u in &self.urls {
            match url::Url::parse(u) {
                Ok(parsed) if matches!(parsed.scheme(), "ws" | "wss") => {}
                _ => return Err(BuildError::BadUrl(u.clone())),
            }
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting);
        let (changes, first_changes) = broadcast::channel(256);
        let (info_tx, info_rx) = watch::channel(None);
        let driver = Driver {
            urls: self.urls,
            url_idx: 0,
            token_source: self.token,
            token: None,
            token_expires_at: None,
            token_stale: false,
            backoff: Backoff::new(self.backoff),
            connect_timeout: self.connect_timeout,
            liveness_margin: self.liveness_margin,
            refresh_lead: self.refresh_lead,
            name: self.name,
            cmd_rx,
            state_tx,
            changes: changes.clone(),
            info_tx,
            subs: HashMap::new(),
            waiting: Vec::new(),
            offline: None,
        };
        tokio::spawn(driver.run());
        let client = Client {
            inner: Arc::new(Inner {
                cmd: cmd_tx,
                state: state_rx,
                info: info_rx,
                changes,
                request_timeout: self.request_timeout,
                next_sub: AtomicU64::new(1),
            }),
        };
        Ok((client, first_changes))
    }
}

/// A handle to a Herald connection that survives network faults. Cheap to clone; the
/// connection closes when the last clone and the last [`Subscription`] are dropped, or on
/// [`Client::close`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cmd: mpsc::UnboundedSender<Cmd>,
    state: watch::Receiver<ConnectionState>,
    info: watch::Receiver<Option<ConnectResult>>,
    changes: broadcast::Sender<ConnectionState>,
    request_timeout: Duration,
    next_sub: AtomicU64,
}

/// Messages from handles to the background task.
enum Cmd {
    Subscribe {
        id: u64,
        channel: String,
        opts: SubscribeOptions,
        tx: mpsc::UnboundedSender<SubEvent>,
    },
    Unsubscribe {
        id: u64,
        channel: String,
    },
    Request {
        command: Command,
        reply: oneshot::Sender<Result<Box<RawValue>, Error>>,
    },
    Reconnect,
    Close,
}

/// Unsubscribes when a [`Subscription`] is dropped.
pub(crate) struct SubGuard {
    cmd: mpsc::UnboundedSender<Cmd>,
    channel: String,
    id: u64,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        let _ = self
            .cmd
            .send(Cmd::Unsubscribe { id: self.id, channel: std::mem::take(&mut self.channel) });
    }
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

    /// Subscribes to `channel`. The returned stream yields [`SubEvent`]s: `Subscribed`, then
    /// publications in offset order exactly once across reconnects, `Resync` when continuity was
    /// lost, and `Ended` if the server refuses. Dropping it unsubscribes.
    pub fn subscribe(&self, channel: impl Into<String>, opts: SubscribeOptions) -> Subscription {
        let channel = channel.into();
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = mpsc::unbounded_channel();
        let _ = self.inner.cmd.send(Cmd::Subscribe { id, channel: channel.clone(), opts, tx });
        Subscription {
            channel: channel.clone(),
            events,
            _guard: SubGuard { cmd: self.inner.cmd.clone(), channel, id },
        }
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

/// Where a request's reply goes.
type ReplyTx = oneshot::Sender<Result<Box<RawValue>, Error>>;

/// A user request or a bookkeeping one, waiting for its reply.
enum Pending {
    Subscribe { channel: String, sub_id: u64, since: Option<Position> },
    User(oneshot::Sender<Result<Box<RawValue>, Error>>),
    Refresh,
    Ignore,
}

/// One application subscription, alive across connections.
struct Sub {
    id: u64,
    tx: mpsc::UnboundedSender<SubEvent>,
    opts: SubscribeOptions,
    tracker: Tracker,
    /// No reply accepted yet: the next one yields `Subscribed`.
    initial: bool,
    status: SubStatus,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SubStatus {
    /// Needs a subscribe on the next connection.
    Idle,
    /// A subscribe is in flight.
    Pending,
    /// Publications flow.
    Active,
    /// Refused with a transient error; try again at this instant.
    RetryAt(Instant),
}

/// How one attempt (handshake plus session) ended.
enum Ended {
    /// Never got a `connect` reply.
    Failed(String),
    /// A session that got its `connect` reply was lost.
    Lost,
    /// Stop trying.
    Final(OfflineReason),
    /// The application asked for a fresh attempt now.
    Reconnect,
    /// The application closed the client.
    Close,
}

/// How a handshake failed.
enum HandshakeError {
    Retry(String),
    TokenExpired(String),
    Final(OfflineReason),
}

/// One live connection's plumbing.
struct Conn {
    out: mpsc::UnboundedSender<String>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
}

impl Conn {
    fn send(&mut self, command: Command, pending: Pending) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, pending);
        let _ = self.out.send(Request { id: Some(id), command }.to_json());
        id
    }

    fn pong(&self) {
        let _ = self.out.send(Request { id: None, command: Command::Pong }.to_json());
    }
}

struct Driver {
    urls: Vec<String>,
    url_idx: usize,
    token_source: TokenSource,
    token: Option<String>,
    token_expires_at: Option<u64>,
    token_stale: bool,
    /// Reconnect delays and the circuit breaker.
    backoff: Backoff,
    connect_timeout: Duration,
    liveness_margin: Duration,
    refresh_lead: Duration,
    name: Option<String>,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    state_tx: watch::Sender<ConnectionState>,
    changes: broadcast::Sender<ConnectionState>,
    info_tx: watch::Sender<Option<ConnectResult>>,
    subs: HashMap<String, Sub>,
    /// Requests made while not connected; sent once connected (their callers time out).
    waiting: Vec<(Command, ReplyTx)>,
    /// Why the client is offline: requests fail at once with it. While the circuit breaker is
    /// open it stays set during the probes.
    offline: Option<OfflineReason>,
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Driver {
    fn set_state(&self, state: ConnectionState) {
        if *self.state_tx.borrow() == state {
            return;
        }
        tracing::debug!(%state, "herald client state");
        self.state_tx.send_replace(state.clone());
        let _ = self.changes.send(state);
    }

    async fn run(mut self) {
        let mut next: Option<Next> = None;
        loop {
            match next.take() {
                None => {}
                Some(Next::Retry { attempt, delay }) => {
                    self.set_state(ConnectionState::Reconnecting { attempt, next_try_in: delay });
                    match self.idle(Some(Instant::now() + delay)).await {
                        None => {}
                        Some(Ended::Reconnect) => self.backoff.reset(),
                        Some(_) => return self.shutdown(),
                    }
                }
                Some(Next::Open { failures, probe_in }) => {
                    // Offline for the application (requests fail fast); one probe per interval.
                    self.go_offline(OfflineReason::CircuitOpen { attempts: failures });
                    match self.idle(Some(Instant::now() + probe_in)).await {
                        None => tracing::debug!(failures, "herald circuit breaker probe"),
                        Some(Ended::Reconnect) => self.leave_offline(),
                        Some(_) => return self.shutdown(),
                    }
                }
            }
            match self.attempt_once().await {
                Ended::Failed(why) => {
                    self.url_idx = (self.url_idx + 1) % self.urls.len();
                    next = Some(self.backoff.failed(&mut rand::rng()));
                    tracing::debug!(?next, %why, "herald connection attempt failed");
                }
                Ended::Lost => {
                    self.url_idx = (self.url_idx + 1) % self.urls.len();
                    next = Some(self.backoff.lost(&mut rand::rng()));
                }
                Ended::Final(reason) => {
                    self.go_offline(reason);
                    match self.idle(None).await {
                        Some(Ended::Reconnect) => self.leave_offline(),
                        _ => return self.shutdown(),
                    }
                }
                Ended::Reconnect => self.leave_offline(),
                Ended::Close => return self.shutdown(),
            }
        }
    }

    /// Enters [`ConnectionState::Offline`]: requests waiting for a connection fail with `reason`,
    /// and so do new ones until the client connects again.
    fn go_offline(&mut self, reason: OfflineReason) {
        self.set_state(ConnectionState::Offline { reason: reason.clone() });
        for (_, reply) in self.waiting.drain(..) {
            let _ = reply.send(Err(Error::Offline(reason.clone())));
        }
        self.offline = Some(reason);
    }

    /// The application asked to connect again now: forget failures and the offline reason.
    fn leave_offline(&mut self) {
        self.offline = None;
        self.backoff.reset();
        self.set_state(ConnectionState::Connecting);
    }

    fn shutdown(mut self) {
        self.set_state(ConnectionState::Offline { reason: OfflineReason::ClientClosed });
        for (_, reply) in self.waiting.drain(..) {
            let _ = reply.send(Err(Error::Closed));
        }
        self.subs.clear();
    }

    /// Handles commands while not connected, until `until` (or forever). Returns `None` when the
    /// time is up, or the command that ends the wait.
    async fn idle(&mut self, until: Option<Instant>) -> Option<Ended> {
        let deadline = until.unwrap_or_else(far_future);
        loop {
            tokio::select! {
                _ = sleep_until(deadline) => return None,
                cmd = self.cmd_rx.recv() => {
                    if let Some(end) = self.on_cmd_disconnected(cmd) {
                        return Some(end);
                    }
                }
            }
        }
    }

    fn on_cmd_disconnected(&mut self, cmd: Option<Cmd>) -> Option<Ended> {
        match cmd {
            None | Some(Cmd::Close) => Some(Ended::Close),
            Some(Cmd::Reconnect) => Some(Ended::Reconnect),
            Some(Cmd::Subscribe { id, channel, opts, tx }) => {
                self.add_sub(id, channel, opts, tx);
                None
            }
            Some(Cmd::Unsubscribe { id, channel }) => {
                if self.subs.get(&channel).is_some_and(|s| s.id == id) {
                    self.subs.remove(&channel);
                }
                None
            }
            Some(Cmd::Request { command, reply }) => {
                match &self.offline {
                    Some(reason) => {
                        let _ = reply.send(Err(Error::Offline(reason.clone())));
                    }
                    None => self.waiting.push((command, reply)),
                }
                None
            }
        }
    }

    /// Registers a subscription; returns false (after telling the application) when the channel
    /// already has one on this client.
    fn add_sub(
        &mut self,
        id: u64,
        channel: String,
        opts: SubscribeOptions,
        tx: mpsc::UnboundedSender<SubEvent>,
    ) -> bool {
        if self.subs.contains_key(&channel) {
            let error = ErrorBody::new(
                ErrorCode::AlreadySubscribed,
                "this client already has a subscription to the channel",
            )
            .with_channel(channel);
            let _ = tx.send(SubEvent::Ended { error });
            return false;
        }
        let sub = Sub {
            id,
            tx,
            opts,
            tracker: Tracker::default(),
            initial: true,
            status: SubStatus::Idle,
        };
        self.subs.insert(channel, sub);
        true
    }

    /// Gets a token if the source needs fetching, then handshakes and runs the session.
    async fn attempt_once(&mut self) -> Ended {
        let url = self.urls[self.url_idx].clone();
        if let TokenSource::Static(t) = &self.token_source {
            self.token = Some(t.clone());
        }
        let expiring = self.token_expires_at.is_some_and(|exp| exp <= unix_now() + 1);
        if let TokenSource::Provider(provider) = &self.token_source
            && (self.token.is_none() || self.token_stale || expiring)
        {
            let fetch = tokio::time::timeout(self.connect_timeout, provider());
            tokio::pin!(fetch);
            let fetched = loop {
                tokio::select! {
                    r = &mut fetch => break r,
                    cmd = self.cmd_rx.recv() => {
                        if let Some(end) = self.on_cmd_disconnected(cmd) {
                            return end;
                        }
                    }
                }
            };
            match fetched {
                Ok(Ok(token)) => {
                    self.token = Some(token);
                    self.token_stale = false;
                    self.token_expires_at = None;
                }
                Ok(Err(e)) => return Ended::Failed(format!("token provider: {e}")),
                Err(_) => return Ended::Failed("token provider timed out".into()),
            }
        }
        let handshake = handshake(url, self.token.clone(), self.name.clone(), self.connect_timeout);
        tokio::pin!(handshake);
        let result = loop {
            tokio::select! {
                r = &mut handshake => break r,
                cmd = self.cmd_rx.recv() => {
                    if let Some(end) = self.on_cmd_disconnected(cmd) {
                        return end;
                    }
                }
            }
        };
        match result {
            Ok((sender, receiver, info)) => {
                // Not a failed attempt, however short the session: a breaker probe closes it.
                self.backoff.connected();
                self.offline = None;
                self.session(sender, receiver, info).await
            }
            Err(HandshakeError::Retry(why)) => Ended::Failed(why),
            Err(HandshakeError::TokenExpired(reason)) if !self.token_source.refreshable() => {
                let code = CloseCode::TokenExpired.code();
                Ended::Final(OfflineReason::Closed { code, reason })
            }
            Err(HandshakeError::TokenExpired(why)) => {
                self.token_stale = true;
                Ended::Failed(why)
            }
            Err(HandshakeError::Final(reason)) => Ended::Final(reason),
        }
    }

    /// When to refresh a token that expires at `expires_at` (Unix seconds).
    fn refresh_deadline(&self, expires_at: Option<u64>) -> Option<Instant> {
        let exp = expires_at?;
        if !self.token_source.refreshable() {
            return None;
        }
        let remaining = Duration::from_secs(exp.saturating_sub(unix_now()));
        let lead = self.refresh_lead.min(remaining / 2);
        Some(Instant::now() + remaining.saturating_sub(lead))
    }

    /// Runs a connected session until it ends.
    async fn session(
        &mut self,
        sender: RawSender,
        mut rx: RawReceiver,
        info: ConnectResult,
    ) -> Ended {
        let (out, mut writer) = spawn_writer(sender);
        let mut conn = Conn { out, pending: HashMap::new(), next_id: 2 };
        let liveness = (info.ping_interval_ms > 0)
            .then(|| Duration::from_millis(info.ping_interval_ms) + self.liveness_margin);
        self.token_expires_at = info.expires_at;
        let mut refresh_at = self.refresh_deadline(info.expires_at);
        self.info_tx.send_replace(Some(info));

        // Resyncing only when a subscription resumes; first subscribes are plain connecting.
        let resuming = self.subs.values().any(|s| !s.initial);
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in &channels {
            self.send_subscribe(&mut conn, channel, false);
        }
        let mut resyncing = resuming;
        // Established once every resubscribe is answered: then the backoff starts over.
        let mut established = false;
        self.set_state(if resyncing {
            ConnectionState::Resyncing
        } else {
            ConnectionState::Connected
        });
        for (command, reply) in std::mem::take(&mut self.waiting) {
            if !reply.is_closed() {
                conn.send(command, Pending::User(reply));
            }
        }

        let (token_tx, mut token_rx) = mpsc::unbounded_channel::<Result<String, String>>();
        let mut disconnect: Option<(u16, String)> = None;
        let mut alive_until = liveness.map(|l| Instant::now() + l);
        let end = loop {
            // Checked before every wait, so a session without subscriptions is established at once.
            if (resyncing || !established)
                && !self.subs.values().any(|s| s.status == SubStatus::Pending)
            {
                if !established {
                    established = true;
                    self.backoff.established();
                }
                if resyncing {
                    resyncing = false;
                    self.set_state(ConnectionState::Connected);
                }
            }
            let retry_at = self.subs.values().filter_map(|s| match s.status {
                SubStatus::RetryAt(at) => Some(at),
                _ => None,
            });
            let retry_at = retry_at.min();
            tokio::select! {
                message = rx.recv() => match message {
                    Ok(message) => {
                        alive_until = liveness.map(|l| Instant::now() + l);
                        if let Some(end) = self.on_message(message, &mut conn, &mut disconnect, &mut refresh_at) {
                            break end;
                        }
                    }
                    Err(e) => break self.closed(e, disconnect.take()),
                },
                _ = sleep_until(alive_until.unwrap_or_else(far_future)), if alive_until.is_some() => {
                    tracing::warn!("herald connection silent past ping interval + margin; reconnecting");
                    break Ended::Lost;
                }
                cmd = self.cmd_rx.recv() => {
                    if let Some(end) = self.on_cmd_connected(cmd, &mut conn) {
                        break end;
                    }
                }
                _ = sleep_until(refresh_at.unwrap_or_else(far_future)), if refresh_at.is_some() => {
                    refresh_at = None;
                    if let TokenSource::Provider(provider) = &self.token_source {
                        let fetch = provider();
                        let tx = token_tx.clone();
                        tokio::spawn(async move {
                            let _ = tx.send(fetch.await);
                        });
                    }
                }
                Some(token) = token_rx.recv() => match token {
                    Ok(token) => {
                        self.token = Some(token.clone());
                        conn.send(Command::Refresh { token }, Pending::Refresh);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "herald token provider failed; retrying the refresh");
                        refresh_at = Some(Instant::now() + REFRESH_RETRY);
                    }
                },
                _ = sleep_until(retry_at.unwrap_or_else(far_future)), if retry_at.is_some() => {
                    let now = Instant::now();
                    let due: Vec<String> = self.subs.iter()
                        .filter(|(_, s)| matches!(s.status, SubStatus::RetryAt(at) if at <= now))
                        .map(|(c, _)| c.clone())
                        .collect();
                    for channel in due {
                        self.send_subscribe(&mut conn, &channel, true);
                    }
                }
                _ = &mut writer => break Ended::Lost,
            }
        };
        if matches!(end, Ended::Close | Ended::Reconnect) {
            // Deliberate: let the writer flush and send a close frame (briefly), then cut.
            conn.out = mpsc::unbounded_channel().0;
            let _ = tokio::time::timeout(Duration::from_millis(500), &mut writer).await;
        }
        writer.abort();
        self.info_tx.send_replace(None);
        for (_, pending) in conn.pending.drain() {
            if let Pending::User(reply) = pending {
                let _ = reply.send(Err(Error::Disconnected));
            }
        }
        for sub in self.subs.values_mut() {
            sub.status = SubStatus::Idle;
        }
        end
    }

    /// Classifies the end of a connected session.
    fn closed(&mut self, e: RawError, disconnect: Option<(u16, String)>) -> Ended {
        let (mut code, mut reason) = match e {
            RawError::Closed { code, reason } => (code, reason),
            other => (None, other.to_string()),
        };
        if let Some((c, r)) = disconnect
            && matches!(code, None | Some(1005) | Some(1006))
        {
            code = Some(c);
            reason = r;
        }
        tracing::debug!(?code, %reason, "herald connection closed");
        match code {
            Some(c) if !CloseCode::should_reconnect(c) => {
                Ended::Final(OfflineReason::Closed { code: c, reason })
            }
            Some(c) if c == CloseCode::TokenExpired.code() && !self.token_source.refreshable() => {
                // A fixed token cannot be replaced: reconnecting would only be refused again.
                Ended::Final(OfflineReason::Closed { code: c, reason })
            }
            Some(c) => {
                if c == CloseCode::TokenExpired.code() {
                    self.token_stale = true;
                }
                Ended::Lost
            }
            None => Ended::Lost,
        }
    }

    fn on_cmd_connected(&mut self, cmd: Option<Cmd>, conn: &mut Conn) -> Option<Ended> {
        match cmd {
            None | Some(Cmd::Close) => Some(Ended::Close),
            Some(Cmd::Reconnect) => Some(Ended::Reconnect),
            Some(Cmd::Subscribe { id, channel, opts, tx }) => {
                if self.add_sub(id, channel.clone(), opts, tx) {
                    self.send_subscribe(conn, &channel, false);
                }
                None
            }
            Some(Cmd::Unsubscribe { id, channel }) => {
                if self.subs.get(&channel).is_some_and(|s| s.id == id)
                    && let Some(sub) = self.subs.remove(&channel)
                    && matches!(sub.status, SubStatus::Pending | SubStatus::Active)
                {
                    conn.send(Command::Unsubscribe { channel }, Pending::Ignore);
                }
                None
            }
            Some(Cmd::Request { command, reply }) => {
                conn.send(command, Pending::User(reply));
                None
            }
        }
    }

    /// Sends `subscribe` for a registered channel, resuming from the last delivered position.
    /// `unsubscribe_first` clears a server-side subscription that is still there (after a gap
    /// the client detected itself, or a retry).
    fn send_subscribe(&mut self, conn: &mut Conn, channel: &str, unsubscribe_first: bool) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if unsubscribe_first {
            conn.send(Command::Unsubscribe { channel: channel.to_string() }, Pending::Ignore);
        }
        let since = if sub.initial { sub.opts.since.clone() } else { sub.tracker.last.clone() };
        let snapshot = sub.initial && sub.opts.snapshot;
        let pending = Pending::Subscribe {
            channel: channel.to_string(),
            sub_id: sub.id,
            since: since.clone(),
        };
        conn.send(Command::Subscribe { channel: channel.to_string(), since, snapshot }, pending);
        sub.status = SubStatus::Pending;
    }

    fn on_message(
        &mut self,
        message: ServerMessage,
        conn: &mut Conn,
        disconnect: &mut Option<(u16, String)>,
        refresh_at: &mut Option<Instant>,
    ) -> Option<Ended> {
        match message {
            ServerMessage::Ping => conn.pong(),
            ServerMessage::Publication(p) => {
                let sub = self.subs.get_mut(&p.channel)?;
                if sub.status != SubStatus::Active {
                    // The subscribe reply in flight covers it.
                    return None;
                }
                match sub.tracker.accept(&p) {
                    Continuity::Next => {
                        let _ = sub.tx.send(SubEvent::Publication(p));
                    }
                    Continuity::Duplicate => {}
                    Continuity::Gap => {
                        tracing::warn!(channel = %p.channel, offset = p.offset, last = ?sub.tracker.last, "herald offset gap; resubscribing");
                        let channel = p.channel.clone();
                        self.send_subscribe(conn, &channel, true);
                    }
                }
            }
            ServerMessage::Reply { id, result } => match conn.pending.remove(&id) {
                Some(Pending::User(reply)) => {
                    let _ = reply.send(result.map_err(Error::Server));
                }
                Some(Pending::Subscribe { channel, sub_id, since }) => {
                    self.on_subscribe_reply(conn, channel, sub_id, since, result);
                }
                Some(Pending::Refresh) => match result {
                    Ok(raw) => {
                        let expires_at = serde_json::from_str::<RefreshResult>(raw.get())
                            .ok()
                            .and_then(|r| r.expires_at);
                        self.token_expires_at = expires_at;
                        *refresh_at = self.refresh_deadline(expires_at);
                    }
                    Err(e) => tracing::warn!(error = %e, "herald token refresh refused"),
                },
                Some(Pending::Ignore) | None => {}
            },
            ServerMessage::Unsubscribe { channel, code, reason, resubscribe } => {
                if !self.subs.contains_key(&channel) {
                    return None;
                }
                if resubscribe {
                    tracing::debug!(%channel, code, %reason, "herald server asked to resubscribe");
                    self.send_subscribe(conn, &channel, false);
                } else if let Some(sub) = self.subs.remove(&channel) {
                    let mut error = ErrorBody::new(
                        ErrorCode::from_code(code).unwrap_or(ErrorCode::Internal),
                        reason,
                    );
                    error.code = code;
                    let _ = sub.tx.send(SubEvent::Ended { error: error.with_channel(channel) });
                }
            }
            ServerMessage::Disconnect { code, reason, .. } => *disconnect = Some((code, reason)),
            ServerMessage::Error(e) => tracing::warn!(error = %e, "herald server error push"),
        }
        None
    }

    fn on_subscribe_reply(
        &mut self,
        conn: &mut Conn,
        channel: String,
        sub_id: u64,
        since: Option<Position>,
        result: Result<Box<RawValue>, ErrorBody>,
    ) {
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        if sub.id != sub_id || sub.status != SubStatus::Pending {
            return;
        }
        let parsed = result.and_then(|raw| {
            serde_json::from_str::<SubscribeResult>(raw.get()).map_err(|e| {
                ErrorBody::new(ErrorCode::Internal, format!("undecodable subscribe reply: {e}"))
            })
        });
        match parsed {
            Ok(reply) => {
                let outcome = sub.tracker.on_reply(sub.initial, since.as_ref(), reply);
                sub.initial = false;
                sub.status = SubStatus::Active;
                for event in outcome.events {
                    let _ = sub.tx.send(event);
                }
                if outcome.resubscribe {
                    tracing::warn!(%channel, "herald resume reply had a gap; resubscribing");
                    self.send_subscribe(conn, &channel, true);
                }
            }
            Err(error) => {
                let transient = matches!(
                    error.error_code(),
                    Some(
                        ErrorCode::Internal
                            | ErrorCode::AlreadySubscribed
                            | ErrorCode::TokenExpired
                            | ErrorCode::RateLimited
                            | ErrorCode::Unavailable
                    )
                );
                if transient {
                    tracing::warn!(%channel, %error, "herald subscribe failed; retrying");
                    sub.status = SubStatus::RetryAt(Instant::now() + SUBSCRIBE_RETRY);
                } else if let Some(sub) = self.subs.remove(&channel) {
                    let _ = sub.tx.send(SubEvent::Ended { error });
                }
            }
        }
    }
}

/// Connects, sends `connect`, and waits for its reply, all within `timeout`.
async fn handshake(
    url: String,
    token: Option<String>,
    name: Option<String>,
    timeout: Duration,
) -> Result<(RawSender, RawReceiver, ConnectResult), HandshakeError> {
    let attempt = async {
        let conn = RawConnection::connect(&url, token.as_deref())
            .await
            .map_err(|e| HandshakeError::Retry(format!("{url}: {e}")))?;
        let (mut sender, mut receiver) = conn.split();
        let connect = Request { id: Some(1), command: Command::Connect { token: None, name } };
        sender.send(&connect).await.map_err(|e| HandshakeError::Retry(format!("{url}: {e}")))?;
        let mut disconnect: Option<(u16, String)> = None;
        loop {
            match receiver.recv().await {
                Ok(ServerMessage::Reply { id: 1, result: Ok(raw) }) => {
                    let info: ConnectResult = serde_json::from_str(raw.get()).map_err(|e| {
                        HandshakeError::Retry(format!("undecodable connect reply: {e}"))
                    })?;
                    return Ok((sender, receiver, info));
                }
                Ok(ServerMessage::Reply { id: 1, result: Err(e) }) => {
                    return Err(match e.error_code() {
                        Some(ErrorCode::TokenExpired) => {
                            HandshakeError::TokenExpired(e.to_string())
                        }
                        Some(
                            ErrorCode::Unauthorized | ErrorCode::Forbidden | ErrorCode::BadRequest,
                        ) => HandshakeError::Final(OfflineReason::Rejected {
                            code: e.code,
                            message: e.message,
                        }),
                        _ => HandshakeError::Retry(e.to_string()),
                    });
                }
                Ok(ServerMessage::Ping) => {
                    let pong = Request { id: None, command: Command::Pong };
                    let _ = sender.send(&pong).await;
                }
                Ok(ServerMessage::Disconnect { code, reason, .. }) => {
                    disconnect = Some((code, reason))
                }
                Ok(_) => {}
                Err(RawError::Closed { code, reason }) => {
                    let (code, reason) = match (code, disconnect) {
                        (None | Some(1005) | Some(1006), Some((c, r))) => (Some(c), r),
                        (code, _) => (code, reason),
                    };
                    return Err(match code {
                        Some(c) if !CloseCode::should_reconnect(c) => {
                            HandshakeError::Final(OfflineReason::Closed { code: c, reason })
                        }
                        Some(c) if c == CloseCode::TokenExpired.code() => {
                            HandshakeError::TokenExpired(reason)
                        }
                        _ => HandshakeError::Retry(format!(
                            "closed during connect: {code:?} {reason}"
                        )),
                    });
                }
                Err(e) => return Err(HandshakeError::Retry(e.to_string())),
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(HandshakeError::Retry("connect timed out".into())))
}

/// Spawns the task that writes queued messages, batching what is queued into one frame.
fn spawn_writer(mut sender: RawSender) -> (mpsc::UnboundedSender<String>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let handle = tokio::spawn(async move {
        let mut carry: Option<String> = None;
        loop {
            let mut frame = match carry.take() {
                Some(line) => line,
                None => match rx.recv().await {
                    Some(line) => line,
                    None => break,
                },
            };
            while let Ok(line) = rx.try_recv() {
                if frame.len() + line.len() + 1 > MAX_BATCH_BYTES {
                    carry = Some(line);
                    break;
                }
                frame.push('\n');
                frame.push_str(&line);
            }
            if let Err(e) = sender.send_text(frame).await {
                tracing::debug!(error = %e, "herald write failed");
                return;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sender.close()).await;
    });
    (tx, handle)
}
