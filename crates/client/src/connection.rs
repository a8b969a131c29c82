//! The connection state machine: one background task owns the connection. It connects (through
//! [`crate::transport`]), reconnects with the [`crate::backoff`] policy and rotates URLs, answers
//! pings and detects silence, refreshes the token in-band, correlates requests with their
//! replies, and resumes every subscription from its last delivered position (and presence
//! position, through [`crate::presence`]). Handles reach it only through the
//! [`crate::command`] channel.

use crate::backoff::{Backoff, BackoffPolicy, Next};
use crate::command::{Cmd, ReplyTx};
use crate::error::Error;
use crate::event::{SubEvent, SubscribeOptions, ViewFeed};
use crate::presence;
use crate::raw::{RawError, RawReceiver, RawSender};
use crate::sse::Transport;
use crate::state::{ConnectionState, OfflineReason};
use crate::subscription::{Sub, SubStatus};
use crate::token::TokenSource;
use crate::transport::{HandshakeError, Transports, handshake, spawn_writer};
use crate::view::{EventFit, ViewSub};
use herald_protocol::command::ViewQuery;
use herald_protocol::reply::{ConnectResult, RefreshResult, SubscribeResult, ViewSubscribeResult};
use herald_protocol::{
    CloseCode, Command, Continuity, ErrorBody, ErrorCode, Position, PresenceQuery, Request,
    ServerMessage,
};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Instant, sleep_until};

/// Delay before retrying a subscribe the server refused with a transient error.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);
/// Delay before retrying a token fetch for an in-band refresh that failed.
const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// What the connection task needs from the builder.
pub(crate) struct ConnectionConfig {
    /// Server URLs, tried in turn.
    pub urls: Vec<String>,
    /// Where tokens come from.
    pub token: TokenSource,
    /// Reconnect delays and the circuit breaker.
    pub backoff: BackoffPolicy,
    /// How long one attempt may take from TCP connect to the `connect` reply.
    pub connect_timeout: Duration,
    /// Silence past the ping interval plus this means the connection is dead.
    pub liveness_margin: Duration,
    /// How long before expiry the token is refreshed.
    pub refresh_lead: Duration,
    /// The client name sent in `connect`.
    pub name: Option<String>,
    /// The presence member id of subscriptions that set none (the same on every connection).
    pub member: String,
    /// The transports each attempt tries, and the WebSocket probes while on SSE.
    pub transports: Transports,
}

/// What the handles observe of a spawned connection task.
pub(crate) struct ConnectionHandles {
    /// The latest state.
    pub state: watch::Receiver<ConnectionState>,
    /// Every state transition, for new feeds.
    pub changes: broadcast::Sender<ConnectionState>,
    /// A feed subscribed before the task started, so it sees the very first transition.
    pub first_changes: broadcast::Receiver<ConnectionState>,
    /// The current connection's `connect` reply.
    pub info: watch::Receiver<Option<ConnectResult>>,
    /// The current connection's transport.
    pub transport: watch::Receiver<Option<Transport>>,
}

/// Spawns the connection task (needs a Tokio runtime); it starts connecting at once and runs
/// until [`Cmd::Close`] or until every sender of `commands` is dropped.
pub(crate) fn spawn(
    config: ConnectionConfig,
    commands: mpsc::UnboundedReceiver<Cmd>,
) -> ConnectionHandles {
    let (state_tx, state) = watch::channel(ConnectionState::Connecting);
    let (changes, first_changes) = broadcast::channel(256);
    let (info_tx, info) = watch::channel(None);
    let (transport_tx, transport) = watch::channel(None);
    let driver = Driver {
        urls: config.urls,
        url_idx: 0,
        token_source: config.token,
        token: None,
        token_expires_at: None,
        token_stale: false,
        backoff: Backoff::new(config.backoff),
        connect_timeout: config.connect_timeout,
        liveness_margin: config.liveness_margin,
        refresh_lead: config.refresh_lead,
        name: config.name,
        member: config.member,
        transports: config.transports,
        transport_tx,
        cmd_rx: commands,
        state_tx,
        changes: changes.clone(),
        info_tx,
        subs: HashMap::new(),
        views: HashMap::new(),
        waiting: Vec::new(),
        offline: None,
    };
    tokio::spawn(driver.run());
    ConnectionHandles { state, changes, first_changes, info, transport }
}

/// A user request or a bookkeeping one, waiting for its reply.
enum Pending {
    /// A subscription's subscribe.
    Subscribe {
        /// Its channel.
        channel: String,
        /// Which subscription sent it, so a reply for an older one is dropped.
        sub_id: u64,
        /// What it resumed from.
        since: Option<Position>,
    },
    /// A view's subscribe.
    View {
        /// The view's name on the connection.
        name: String,
        /// Which view sent it, so a reply for an older one is dropped.
        view_id: u64,
        /// What it resumed from.
        since: Option<Position>,
    },
    /// An application request; the reply goes back to it.
    User(ReplyTx),
    /// An in-band token refresh.
    Refresh,
    /// A reply nobody waits for (unsubscribe).
    Ignore,
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
    /// On SSE, a WebSocket upgrade works again: a fresh attempt now, over it.
    Switch,
    /// The application closed the client.
    Close,
}

/// One live connection's plumbing.
struct Conn {
    /// Messages for the writer task.
    out: mpsc::UnboundedSender<String>,
    /// Requests sent on this connection and not answered yet, by request id.
    pending: HashMap<u64, Pending>,
    /// The id of the next request (1 is the handshake's `connect`).
    next_id: u64,
    /// Protocol v2: the channel of each subscription number a subscribe reply gave (`n`), to
    /// read compact publications. One entry per subscription: a resubscribe replaces it.
    numbers: HashMap<u32, String>,
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

/// The connection task's state, alive across connections.
struct Driver {
    /// Server URLs, tried in turn.
    urls: Vec<String>,
    /// The URL of the next attempt.
    url_idx: usize,
    /// Where tokens come from.
    token_source: TokenSource,
    /// The token of the next attempt (and of in-band refreshes).
    token: Option<String>,
    /// When the current token expires (Unix seconds), as the hub reported it.
    token_expires_at: Option<u64>,
    /// The hub said the token expired: fetch a fresh one before the next attempt.
    token_stale: bool,
    /// Reconnect delays and the circuit breaker.
    backoff: Backoff,
    /// How long one attempt may take from TCP connect to the `connect` reply.
    connect_timeout: Duration,
    /// Silence past the ping interval plus this means the connection is dead.
    liveness_margin: Duration,
    /// How long before expiry the token is refreshed.
    refresh_lead: Duration,
    /// The client name sent in `connect`.
    name: Option<String>,
    /// The presence member id of subscriptions that set none.
    member: String,
    /// The transports each attempt tries, and the WebSocket probes while on SSE.
    transports: Transports,
    /// Publishes the current connection's transport.
    transport_tx: watch::Sender<Option<Transport>>,
    /// Commands from the handles.
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    /// Publishes the latest state.
    state_tx: watch::Sender<ConnectionState>,
    /// Publishes every state transition.
    changes: broadcast::Sender<ConnectionState>,
    /// Publishes the current connection's `connect` reply.
    info_tx: watch::Sender<Option<ConnectResult>>,
    /// Every application subscription, by channel.
    subs: HashMap<String, Sub>,
    /// Every view subscription, by its name on the connection (what its events carry).
    views: HashMap<String, ViewSub>,
    /// Requests made while not connected; sent once connected (their callers time out).
    waiting: Vec<(Command, ReplyTx)>,
    /// Why the client is offline: requests fail at once with it. While the circuit breaker is
    /// open it stays set during the probes.
    offline: Option<OfflineReason>,
}

/// A deadline that never comes, for `select!` branches that are off.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Seconds since the Unix epoch, the unit of the hub's `expires_at`.
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
                Ended::Switch => {}
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
        self.views.clear();
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
            Some(Cmd::SubscribeView { id, channel, query, tx }) => {
                self.add_view(id, channel, query, tx);
                None
            }
            Some(Cmd::UnsubscribeView { id, name }) => {
                if self.views.get(&name).is_some_and(|v| v.id == id) {
                    self.views.remove(&name);
                }
                None
            }
            Some(Cmd::SetPresence { id, channel, info, reply }) => {
                // Remembered only: the next subscribe carries it.
                let _ = reply.send(self.remember_info(id, &channel, info).map(|_| null()));
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
        self.subs.insert(channel, Sub::new(id, tx, opts));
        true
    }

    /// Registers a view; returns false (after telling the application) when its name is taken
    /// on this client.
    fn add_view(
        &mut self,
        id: u64,
        channel: String,
        query: ViewQuery,
        tx: mpsc::UnboundedSender<ViewFeed>,
    ) -> Option<String> {
        let name = query.name(&channel);
        if self.views.contains_key(&name) {
            let error = ErrorBody::new(
                ErrorCode::AlreadySubscribed,
                format!("this client already has a view named {name:?}"),
            )
            .with_channel(channel);
            let _ = tx.send(ViewFeed::Ended(error));
            return None;
        }
        self.views.insert(name.clone(), ViewSub::new(id, channel, query, tx));
        Some(name)
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
        let handshake = handshake(
            url,
            self.token.clone(),
            self.name.clone(),
            self.connect_timeout,
            self.transports.clone(),
        );
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
        let mut conn = Conn { out, pending: HashMap::new(), next_id: 2, numbers: HashMap::new() };
        let liveness = (info.ping_interval_ms > 0)
            .then(|| Duration::from_millis(info.ping_interval_ms) + self.liveness_margin);
        self.token_expires_at = info.expires_at;
        let mut refresh_at = self.refresh_deadline(info.expires_at);
        self.info_tx.send_replace(Some(info));
        self.transport_tx.send_replace(Some(rx.transport()));

        // Resyncing only when a subscription resumes; first subscribes are plain connecting.
        let resuming =
            self.subs.values().any(|s| !s.initial) || self.views.values().any(|v| v.last.is_some());
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in &channels {
            self.send_subscribe(&mut conn, channel, false);
        }
        let names: Vec<String> = self.views.keys().cloned().collect();
        for name in &names {
            self.send_view_subscribe(&mut conn, name, false);
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
                && !self.views.values().any(|v| v.status == SubStatus::Pending)
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
            let retry_at = self
                .subs
                .values()
                .map(|s| s.status)
                .chain(self.views.values().map(|v| v.status))
                .filter_map(|s| match s {
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
                    let due: Vec<String> = self.views.iter()
                        .filter(|(_, v)| matches!(v.status, SubStatus::RetryAt(at) if at <= now))
                        .map(|(n, _)| n.clone())
                        .collect();
                    for name in due {
                        self.send_view_subscribe(&mut conn, &name, true);
                    }
                }
                _ = &mut writer => break Ended::Lost,
            }
        };
        if matches!(end, Ended::Close | Ended::Reconnect | Ended::Switch) {
            // Deliberate: let the writer flush and send a close frame (briefly), then cut.
            conn.out = mpsc::unbounded_channel().0;
            let _ = tokio::time::timeout(Duration::from_millis(500), &mut writer).await;
        }
        writer.abort();
        self.info_tx.send_replace(None);
        self.transport_tx.send_replace(None);
        for (_, pending) in conn.pending.drain() {
            if let Pending::User(reply) = pending {
                let _ = reply.send(Err(Error::Disconnected));
            }
        }
        for sub in self.subs.values_mut() {
            sub.status = SubStatus::Idle;
        }
        for view in self.views.values_mut() {
            view.status = SubStatus::Idle;
        }
        end
    }

    /// Classifies the end of a connected session.
    fn closed(&mut self, e: RawError, disconnect: Option<(u16, String)>) -> Ended {
        let (mut code, mut reason) = match e {
            RawError::WebSocketBack => return Ended::Switch,
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
                    conn.send(Command::Unsubscribe { channel, sub: None }, Pending::Ignore);
                }
                None
            }
            Some(Cmd::SubscribeView { id, channel, query, tx }) => {
                if let Some(name) = self.add_view(id, channel, query, tx) {
                    self.send_view_subscribe(conn, &name, false);
                }
                None
            }
            Some(Cmd::UnsubscribeView { id, name }) => {
                if self.views.get(&name).is_some_and(|v| v.id == id)
                    && let Some(view) = self.views.remove(&name)
                    && matches!(view.status, SubStatus::Pending | SubStatus::Active)
                {
                    conn.send(view.unsubscribe_command(), Pending::Ignore);
                }
                None
            }
            Some(Cmd::SetPresence { id, channel, info, reply }) => {
                match self.remember_info(id, &channel, info) {
                    Ok(Some(info)) => {
                        conn.send(Command::PresenceUpdate { channel, info }, Pending::User(reply));
                    }
                    Ok(None) => {
                        let _ = reply.send(Ok(null()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
                None
            }
            Some(Cmd::Request { command, reply }) => {
                conn.send(command, Pending::User(reply));
                None
            }
        }
    }

    /// Keeps a subscription's new presence `info` for its resubscribes. Returns it encoded when
    /// its subscribe is in flight or done on this connection (so `presence_update` can follow
    /// it), `None` when the next subscribe will carry it.
    fn remember_info(
        &mut self,
        id: u64,
        channel: &str,
        info: serde_json::Value,
    ) -> Result<Option<Box<RawValue>>, Error> {
        let Some(sub) = self.subs.get_mut(channel).filter(|s| s.id == id) else {
            return Err(Error::Server(
                ErrorBody::new(ErrorCode::NotSubscribed, "the subscription has ended")
                    .with_channel(channel),
            ));
        };
        let raw =
            serde_json::value::to_raw_value(&info).map_err(|e| Error::Decode(e.to_string()))?;
        sub.opts.info = (!info.is_null()).then_some(info);
        Ok(matches!(sub.status, SubStatus::Pending | SubStatus::Active).then_some(raw))
    }

    /// Sends `subscribe` for a registered channel, resuming from the last delivered position.
    /// `unsubscribe_first` clears a server-side subscription that is still there (after a gap
    /// the client detected itself, or a retry).
    fn send_subscribe(&mut self, conn: &mut Conn, channel: &str, unsubscribe_first: bool) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if unsubscribe_first {
            conn.send(
                Command::Unsubscribe { channel: channel.to_string(), sub: None },
                Pending::Ignore,
            );
        }
        let (since, snapshot) = sub.resume_from();
        let presence = PresenceQuery {
            mode: sub.opts.presence,
            since: sub.presence.on_subscribe(sub.opts.presence),
            member: sub
                .opts
                .uses_presence()
                .then(|| sub.opts.member.clone().unwrap_or_else(|| self.member.clone())),
            info: sub.opts.info.as_ref().and_then(|i| serde_json::value::to_raw_value(i).ok()),
        };
        let pending = Pending::Subscribe {
            channel: channel.to_string(),
            sub_id: sub.id,
            since: since.clone(),
        };
        conn.send(
            Command::Subscribe {
                channel: channel.to_string(),
                since,
                snapshot,
                view: Default::default(),
                presence,
                preview: sub.opts.preview,
            },
            pending,
        );
        sub.chunks.reset();
        sub.status = SubStatus::Pending;
    }

    /// Sends `subscribe` for a registered view, resuming after its last position.
    /// `unsubscribe_first` clears a server-side view that is still there.
    fn send_view_subscribe(&mut self, conn: &mut Conn, name: &str, unsubscribe_first: bool) {
        let Some(view) = self.views.get_mut(name) else {
            return;
        };
        if unsubscribe_first {
            conn.send(view.unsubscribe_command(), Pending::Ignore);
        }
        let pending =
            Pending::View { name: name.to_string(), view_id: view.id, since: view.last.clone() };
        conn.send(view.subscribe_command(), pending);
        view.status = SubStatus::Pending;
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
            ServerMessage::Compact(c) => {
                let channel = conn.numbers.get(&c.n)?;
                let sub = self.subs.get(channel)?;
                let epoch = sub.tracker.last.as_ref()?.epoch.clone();
                let p = c.into_publication(channel, &epoch);
                return self.on_message(
                    ServerMessage::Publication(p),
                    conn,
                    disconnect,
                    refresh_at,
                );
            }
            ServerMessage::Chunk(c) => {
                use herald_protocol::chunk::Assembled;
                let sub = self.subs.get_mut(&c.channel)?;
                if sub.status != SubStatus::Active {
                    return None;
                }
                let channel = c.channel.clone();
                match sub.chunks.push(c) {
                    Ok(Assembled::Progress { offset, received, bytes }) => {
                        let _ = sub.tx.send(SubEvent::Progress { offset, received, bytes });
                    }
                    Ok(Assembled::Complete(p)) => {
                        return self.on_message(
                            ServerMessage::Publication(*p),
                            conn,
                            disconnect,
                            refresh_at,
                        );
                    }
                    Err(e) => {
                        // A part missing: what was received cannot be completed.
                        tracing::warn!(%channel, error = %e, "herald chunk out of order; resubscribing");
                        self.send_subscribe(conn, &channel, true);
                    }
                }
            }
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
                Some(Pending::View { name, view_id, since }) => {
                    self.on_view_reply(conn, name, view_id, since, result);
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
            ServerMessage::Unsubscribe { sub: Some(name), code, reason, resubscribe, .. }
                if self.views.contains_key(&name) =>
            {
                self.on_view_unsubscribe(conn, name, code, reason, resubscribe);
            }
            ServerMessage::Unsubscribe { channel, code, reason, resubscribe, .. } => {
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
            ServerMessage::View(event) => self.on_view_event(conn, *event),
            ServerMessage::Event { push, body } => self.on_event_push(conn, &push, &body),
        }
        None
    }

    /// A presence or volatile push: to its channel's subscription, through
    /// [`crate::presence`]; a reset presence stream subscribes again. A volatile event also goes
    /// to each view of the channel (the hub sends it once per connection).
    fn on_event_push(&mut self, conn: &mut Conn, push: &str, body: &serde_json::Value) {
        let Some(channel) = body["channel"].as_str() else { return };
        if push == "volatile" {
            for view in self.views.values().filter(|v| v.channel == channel) {
                let _ = view.tx.send(ViewFeed::Volatile(presence::volatile(body)));
            }
        }
        let Some(sub) = self.subs.get_mut(channel) else { return };
        if push == "volatile" {
            let _ = sub.tx.send(presence::volatile_event(body));
            return;
        }
        let outcome = sub.presence.on_push(push, body);
        if let Some(event) = outcome.event {
            let _ = sub.tx.send(event);
        }
        if outcome.resubscribe {
            let channel = channel.to_string();
            self.send_subscribe(conn, &channel, true);
        }
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
                if let Some(n) = reply.n {
                    // The old number, if it is of this connection (another connection's may
                    // be taken by another channel here).
                    if let Some(old) = sub.number.replace(n)
                        && conn.numbers.get(&old) == Some(&channel)
                    {
                        conn.numbers.remove(&old);
                    }
                    conn.numbers.insert(n, channel.clone());
                }
                if sub.apply_reply(since.as_ref(), reply) {
                    tracing::warn!(%channel, "herald resume reply had a gap; resubscribing");
                    self.send_subscribe(conn, &channel, true);
                }
            }
            Err(error) => {
                if transient(&error) {
                    tracing::warn!(%channel, %error, "herald subscribe failed; retrying");
                    sub.status = SubStatus::RetryAt(Instant::now() + SUBSCRIBE_RETRY);
                } else if let Some(sub) = self.subs.remove(&channel) {
                    let _ = sub.tx.send(SubEvent::Ended { error });
                }
            }
        }
    }

    /// A live view event: delivered once, in order; another epoch means the stream was reset.
    fn on_view_event(&mut self, conn: &mut Conn, event: herald_protocol::ViewEvent) {
        let Some(view) = self.views.get_mut(&event.sub) else {
            return;
        };
        if view.status != SubStatus::Active {
            // The subscribe reply in flight covers it.
            return;
        }
        match view.accept(&event.publication) {
            EventFit::Next => {
                let _ = view.tx.send(ViewFeed::Event(Box::new(event)));
            }
            EventFit::Duplicate => {}
            EventFit::Reset => {
                tracing::warn!(view = %event.sub, "herald view event from another epoch; resubscribing");
                self.send_view_subscribe(conn, &event.sub, true);
            }
        }
    }

    /// The hub ended a view: subscribe again after the last position when it asks to, else end.
    fn on_view_unsubscribe(
        &mut self,
        conn: &mut Conn,
        name: String,
        code: u16,
        reason: String,
        resubscribe: bool,
    ) {
        if resubscribe {
            tracing::debug!(view = %name, code, %reason, "herald server asked to resubscribe a view");
            self.send_view_subscribe(conn, &name, false);
        } else if let Some(view) = self.views.remove(&name) {
            let mut error =
                ErrorBody::new(ErrorCode::from_code(code).unwrap_or(ErrorCode::Internal), reason);
            error.code = code;
            let _ = view.tx.send(ViewFeed::Ended(error.with_channel(view.channel)));
        }
    }

    fn on_view_reply(
        &mut self,
        conn: &mut Conn,
        name: String,
        view_id: u64,
        since: Option<Position>,
        result: Result<Box<RawValue>, ErrorBody>,
    ) {
        let Some(view) = self.views.get_mut(&name) else {
            return;
        };
        if view.id != view_id || view.status != SubStatus::Pending {
            return;
        }
        let parsed = result.and_then(|raw| {
            serde_json::from_str::<ViewSubscribeResult>(raw.get()).map_err(|e| {
                ErrorBody::new(
                    ErrorCode::Internal,
                    format!("undecodable view subscribe reply: {e}"),
                )
            })
        });
        match parsed {
            Ok(reply) => {
                if !view.apply_reply(since.as_ref(), reply) {
                    tracing::warn!(view = %name, "herald view resume reply unusable; subscribing afresh");
                    self.send_view_subscribe(conn, &name, true);
                }
            }
            Err(error) if transient(&error) => {
                tracing::warn!(view = %name, %error, "herald view subscribe failed; retrying");
                view.status = SubStatus::RetryAt(Instant::now() + SUBSCRIBE_RETRY);
            }
            Err(error) => {
                if let Some(view) = self.views.remove(&name) {
                    let _ = view.tx.send(ViewFeed::Ended(error));
                }
            }
        }
    }
}

/// A `null` result, for requests answered locally.
fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

/// Whether a refused subscribe is worth retrying after a delay.
fn transient(error: &ErrorBody) -> bool {
    matches!(
        error.error_code(),
        Some(
            ErrorCode::Internal
                | ErrorCode::AlreadySubscribed
                | ErrorCode::TokenExpired
                | ErrorCode::RateLimited
                | ErrorCode::Unavailable
        )
    )
}
