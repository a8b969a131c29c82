//! One WebSocket connection: reads commands, writes replies and publications, keeps the
//! heartbeat, and enforces the per-connection guarantees.
//!
//! The session is one task. Live publications arrive through its [`Outbox`]; each subscription
//! remembers the last offset it delivered, so the writer drops duplicates, holds publications that
//! arrived before the subscribe reply went out, and turns any gap into an `unsubscribe` push with
//! `resubscribe` instead of delivering around it.
//!
//! The socket is any `Stream + Sink` of axum messages, so tests can drive a session without a
//! network.

use crate::auth::{AuthError, Principal};
use crate::engine::{PublishInput, now_rfc3339};
use crate::frame::Encoded;
use crate::hub::Hub;
use crate::metrics::CloseLabels;
use crate::outbox::{Outbox, Outgoing};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use herald_protocol::command::{Command, HistoryQuery, PublishCommand, Request};
use herald_protocol::reply::{
    self, ConnectResult, ErrorBody, NotRecovered, PUSH_PING, RefreshResult,
};
use herald_protocol::{CloseCode, Continuity, ErrorCode, Meta, Position, Record, split_frame};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the upgrade request told us.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// Token from `Authorization: Bearer` or `?token=`.
    pub token: Option<String>,
    /// Whether the `Origin` header passed the allow-list.
    pub origin_allowed: bool,
    /// Peer address, for the audit log.
    pub ip: IpAddr,
}

/// Largest frame the writer builds from batched messages.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// How long the final close may take on a stuck socket.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a slow consumer's socket stays open to drain what is in flight before the close.
const SLOW_CONSUMER_CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Rate-limit violations tolerated before the connection is closed.
const MAX_RATE_VIOLATIONS: u32 = 100;

/// One subscription's delivery state.
struct Sub {
    /// Epoch the subscriber is following.
    epoch: Arc<str>,
    /// Last offset delivered (or covered by the subscribe reply).
    delivered: u64,
    /// The subscribe reply is still queued: hold live publications until it is written.
    awaiting_reply: bool,
    /// Publications held while `awaiting_reply` or catching up.
    held: Vec<Arc<Encoded>>,
    /// Recovered publications that did not fit in the subscribe reply, fed through the outbox as
    /// it drains (so no reply is larger than the queue allows).
    backlog: VecDeque<Arc<Encoded>>,
    /// While catching up: the offset the recovery reached. Live publications up to it are
    /// covered by the backlog; later ones wait in `held` until the backlog is delivered.
    catchup_until: Option<u64>,
}

impl Sub {
    /// Classifies a live publication; advances `delivered` when it is the next one.
    fn check(&mut self, p: &Encoded) -> Continuity {
        let c = Continuity::of(&self.epoch, self.delivered, &p.epoch, p.offset);
        if c == Continuity::Next {
            self.delivered = p.offset;
        }
        c
    }
}

/// Commands per second with a burst of twice that.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(per_second: u32) -> TokenBucket {
        let rate = f64::from(per_second);
        TokenBucket { rate, tokens: rate * 2.0, last: Instant::now() }
    }

    fn take(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Builds outgoing frames: several messages joined by `\n`, one publication sent as-is.
#[derive(Default)]
struct Batch {
    /// Frames ready to write.
    frames: Vec<Utf8Bytes>,
    /// The frame being built.
    current: String,
    /// A lone publication frame not yet copied into `current`.
    single: Option<Utf8Bytes>,
    /// Bytes in all frames.
    bytes: usize,
}

impl Batch {
    fn add_shared(&mut self, frame: &Utf8Bytes) {
        if self.current.is_empty() && self.single.is_none() {
            self.single = Some(frame.clone());
        } else {
            self.add(frame.as_str());
        }
    }

    fn add(&mut self, line: &str) {
        if let Some(single) = self.single.take() {
            self.current.push_str(single.as_str());
        }
        if !self.current.is_empty() {
            if self.current.len() + line.len() > MAX_BATCH_BYTES {
                self.cut();
            } else {
                self.current.push('\n');
            }
        }
        self.current.push_str(line);
    }

    fn cut(&mut self) {
        if let Some(single) = self.single.take() {
            self.bytes += single.len();
            self.frames.push(single);
        }
        if !self.current.is_empty() {
            let s = std::mem::take(&mut self.current);
            self.bytes += s.len();
            self.frames.push(s.into());
        }
    }
}

/// A session.
struct Session {
    /// The node.
    hub: Arc<Hub>,
    /// Session id in the hub.
    id: u64,
    /// Outbound queue.
    outbox: Arc<Outbox>,
    /// Set by a successful `connect`.
    principal: Option<Principal>,
    /// Token from the upgrade request, used when `connect` carries none.
    upgrade_token: Option<String>,
    /// Peer address.
    ip: IpAddr,
    /// Subscriptions by channel.
    subs: HashMap<Arc<str>, Sub>,
    /// Last time anything arrived.
    last_seen: Instant,
    /// Command rate limit.
    bucket: TokenBucket,
    /// Rate-limit violations so far.
    violations: u32,
}

type Close = (CloseCode, String);

/// Runs a connection until it ends.
pub async fn run<S>(hub: Arc<Hub>, mut socket: S, upgrade: Upgrade)
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let limits = &hub.config.limits;
    let outbox = Arc::new(Outbox::new(limits.outbound_queue_messages, limits.outbound_queue_bytes));
    let id = hub.open_session(outbox.clone());
    let mut session = Session {
        bucket: TokenBucket::new(limits.commands_per_second),
        hub: hub.clone(),
        id,
        outbox,
        principal: None,
        upgrade_token: upgrade.token.clone(),
        ip: upgrade.ip,
        subs: HashMap::new(),
        last_seen: Instant::now(),
        violations: 0,
    };
    let close = if !upgrade.origin_allowed {
        tracing::warn!(target: "herald::audit", event = "auth_failure", ip = %upgrade.ip, reason = "origin not allowed");
        Some((CloseCode::Forbidden, "origin not allowed".to_string()))
    } else {
        // A bug in command handling must not leave the connection counted (the per-user limit
        // would lock the user out): the bookkeeping below runs on every exit, panics included.
        let served = std::panic::AssertUnwindSafe(session.serve(&mut socket)).catch_unwind().await;
        match served {
            Ok(close) => close,
            Err(_) => {
                tracing::error!(client = %session.client(), "session panicked: closing it");
                let _ = tokio::time::timeout(
                    CLOSE_GRACE,
                    socket.send(Message::Close(Some(CloseFrame {
                        code: 1011,
                        reason: "internal error".into(),
                    }))),
                )
                .await;
                None
            }
        }
    };
    Box::pin(session.finish(&mut socket, close)).await;
}

impl Session {
    /// Public connection id (`NODE-N`), made when needed rather than kept per connection.
    fn client(&self) -> String {
        format!("{}-{}", self.hub.node_id, self.id)
    }

    async fn serve<S>(&mut self, socket: &mut S) -> Option<Close>
    where
        S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
    {
        // A token in the upgrade request that is already invalid: say so at once.
        if let Some(token) = &self.upgrade_token
            && let Err(e) = Box::pin(self.hub.verifier.verify(token)).await
        {
            self.audit_auth_failure(&e);
            return Some(auth_close(&e));
        }
        let config = self.hub.config.clone();
        let t = &config.timeouts;
        // A token the verifier still accepts (within its leeway) must not be closed as expired.
        let grace = t.token_grace + Duration::from_secs(self.hub.verifier.leeway_secs());
        let started = tokio::time::Instant::now();
        let mut next_ping = started + t.ping_interval;
        // One timer for every deadline (ping, heartbeat, auth, token expiry): each costs memory
        // in every idle connection's task. It is re-armed to the earliest deadline; a deadline
        // that moved later (a message arrived) just makes it fire early and re-arm.
        let mut armed = next_ping.min(started + t.auth_timeout);
        let timer = tokio::time::sleep_until(armed);
        tokio::pin!(timer);
        let outbox = self.outbox.clone();
        loop {
            tokio::select! {
                biased;
                _ = outbox.ready() => {
                    let flushed = Box::pin(self.flush(socket)).await;
                    self.feed_backlogs();
                    match flushed {
                        Ok(None) => {}
                        Ok(Some(close)) => return Some(close),
                        Err(()) => return None,
                    }
                }
                msg = socket.next() => {
                    self.last_seen = Instant::now();
                    let text = match msg {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Binary(_))) => {
                            return Some((CloseCode::BadRequest, "binary frames are not part of the protocol".into()));
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(_))) | None => return None,
                        Some(Err(e)) => {
                            if too_large(&e) {
                                return Some((CloseCode::MessageTooLarge, format!("frame above {} bytes", config.limits.max_frame_bytes)));
                            }
                            // RFC 6455 §7.4.1: 1007 for invalid UTF-8, 1002 for a protocol
                            // violation (RSV bits, bad opcode, unmasked frame…).
                            if let Some(code) = violation_code(&e) {
                                tracing::debug!(client = %self.client(), error = %e, "websocket protocol violation");
                                let frame = CloseFrame { code, reason: close_reason(&e.to_string()).to_string().into() };
                                let _ = tokio::time::timeout(CLOSE_GRACE, socket.send(Message::Close(Some(frame)))).await;
                            }
                            return None;
                        }
                    };
                    self.hub.metrics.bytes_in.inc_by(text.len() as u64);
                    // Boxed: command handling is a large future that an idle connection should
                    // not carry in its task (memory per idle connection).
                    if let Some(close) = Box::pin(self.handle_frame(text.as_str())).await {
                        return Some(close);
                    }
                }
                _ = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if self.principal.is_none() && now >= started + t.auth_timeout {
                        return Some((CloseCode::AuthTimeout, "no connect within the auth timeout".into()));
                    }
                    let silent = self.last_seen.elapsed();
                    if silent >= t.pong_timeout {
                        return Some((CloseCode::HeartbeatTimeout, format!("nothing received for {} ms", silent.as_millis())));
                    }
                    if let Some(exp) = self.principal.as_ref().and_then(|p| p.expires_at)
                        && lapsed(exp, grace)
                    {
                        return Some((CloseCode::TokenExpired, "token expired without refresh".into()));
                    }
                    if now >= next_ping {
                        let _ = self.outbox.push(Outgoing::Line(PUSH_PING.to_string()));
                        next_ping = now + t.ping_interval;
                    }
                }
            }
            let mut deadline = next_ping.min((self.last_seen + t.pong_timeout).into());
            match &self.principal {
                None => deadline = deadline.min(started + t.auth_timeout),
                Some(p) => {
                    if let Some(exp) = p.expires_at {
                        deadline = deadline.min(deadline_for(exp, grace));
                    }
                }
            }
            if deadline < armed || timer.is_elapsed() {
                armed = deadline;
                timer.as_mut().reset(armed);
            }
        }
    }

    /// Drains the outbox into the socket. `Err` when the socket is gone.
    async fn flush<S>(&mut self, socket: &mut S) -> Result<Option<Close>, ()>
    where
        S: Sink<Message, Error = axum::Error> + Unpin,
    {
        // A fresh queue per flush: an idle connection then holds no drained capacity.
        let mut items = VecDeque::new();
        let close = self.outbox.drain(&mut items);
        let mut batch = Batch::default();
        let mut delivered = 0u64;
        let mut oldest: Option<Instant> = None;
        let mut gaps: Vec<Arc<str>> = Vec::new();
        let mut deliver = |sub: &mut Sub,
                           p: &Arc<Encoded>,
                           batch: &mut Batch,
                           gaps: &mut Vec<Arc<str>>| {
            match sub.check(p) {
                Continuity::Next => {
                    batch.add_shared(&p.frame);
                    delivered += 1;
                    oldest = Some(oldest.map_or(p.accepted, |o| o.min(p.accepted)));
                }
                Continuity::Duplicate => {}
                Continuity::Gap => gaps.push(p.channel.clone()),
            }
        };
        let held_limit = self.hub.config.limits.outbound_queue_messages;
        let mut overflow = false;
        for item in items.drain(..) {
            match item {
                Outgoing::Recovered(p) => {
                    let Some(sub) = self.subs.get_mut(&*p.channel) else { continue };
                    deliver(sub, &p, &mut batch, &mut gaps);
                    if matches!(gaps.last(), Some(c) if *c == p.channel) {
                        self.subs.remove(&*p.channel);
                    } else if sub.catchup_until == Some(p.offset) {
                        // Caught up: what arrived live meanwhile follows, in order.
                        sub.catchup_until = None;
                        for h in std::mem::take(&mut sub.held) {
                            deliver(sub, &h, &mut batch, &mut gaps);
                            if matches!(gaps.last(), Some(c) if *c == p.channel) {
                                break;
                            }
                        }
                        if matches!(gaps.last(), Some(c) if *c == p.channel) {
                            self.subs.remove(&*p.channel);
                        }
                    }
                }
                Outgoing::Pub(p) => {
                    let Some(sub) = self.subs.get_mut(&*p.channel) else { continue };
                    if let Some(until) = sub.catchup_until
                        && !sub.awaiting_reply
                        && p.offset <= until
                        && *p.epoch == *sub.epoch
                    {
                        // Covered by the backlog.
                    } else if sub.awaiting_reply || sub.catchup_until.is_some() {
                        sub.held.push(p);
                        overflow |= sub.held.len() > held_limit;
                    } else {
                        deliver(sub, &p, &mut batch, &mut gaps);
                        if matches!(gaps.last(), Some(c) if *c == p.channel) {
                            self.subs.remove(&*p.channel);
                        }
                    }
                }
                Outgoing::Line(line) => batch.add(&line),
                Outgoing::Subscribed { channel, line } => {
                    batch.add(&line);
                    if let Some(sub) = self.subs.get_mut(&channel) {
                        sub.awaiting_reply = false;
                        if let Some(until) = sub.catchup_until {
                            // Held ones the backlog covers go; the rest wait for it.
                            sub.held.retain(|p| p.offset > until || *p.epoch != *sub.epoch);
                            continue;
                        }
                        for p in std::mem::take(&mut sub.held) {
                            deliver(sub, &p, &mut batch, &mut gaps);
                            if matches!(gaps.last(), Some(c) if *c == channel) {
                                break;
                            }
                        }
                        if matches!(gaps.last(), Some(c) if *c == channel) {
                            self.subs.remove(&channel);
                        }
                    }
                }
                Outgoing::Reset(channel) => {
                    if self.subs.remove(&channel).is_some() {
                        gaps.push(channel);
                    }
                }
            }
        }
        if overflow {
            // Live publications outran a catch-up: this connection is a slow consumer.
            self.outbox.close(
                CloseCode::SlowConsumer,
                "live publications outran the recovery of a subscription",
            );
        }
        for channel in &gaps {
            tracing::debug!(channel = %channel, client = %self.client(), "position gap: asking to resubscribe");
            batch.add(&reply::push_unsubscribe(
                channel,
                ErrorCode::Resubscribe,
                "position gap: subscribe again with since",
                true,
            ));
        }
        batch.cut();
        for channel in gaps {
            self.hub.remove_subscriber(&channel, self.id).await;
        }
        if batch.frames.is_empty() {
            return Ok(close);
        }
        let bytes = batch.bytes;
        let write = async {
            for frame in batch.frames {
                socket.feed(Message::Text(frame)).await?;
            }
            socket.flush().await
        };
        let written = tokio::select! {
            r = write => r.is_ok(),
            _ = self.outbox.closed(), if close.is_none() => {
                // Closed while stuck writing (slow consumer, kick): stop here.
                return Ok(self.outbox.drain(&mut VecDeque::new()));
            }
        };
        if !written {
            return Err(());
        }
        let m = &self.hub.metrics;
        m.bytes_out.inc_by(bytes as u64);
        if delivered > 0 {
            m.deliveries.inc_by(delivered);
        }
        if let Some(t) = oldest {
            m.delivery_latency.observe(t.elapsed().as_secs_f64());
        }
        Ok(close)
    }

    /// Sends the last frames and the close, then forgets the session.
    async fn finish<S>(&mut self, socket: &mut S, close: Option<Close>)
    where
        S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
    {
        // Out of the fan-out first: nothing more is queued for a connection that is closing.
        for channel in std::mem::take(&mut self.subs).into_keys() {
            self.hub.remove_subscriber(&channel, self.id).await;
        }
        if let Some((code, reason)) = &close {
            self.hub.metrics.closes.get_or_create(&CloseLabels { code: code.name().into() }).inc();
            if *code == CloseCode::SlowConsumer {
                // Every 4001, whatever overflowed the queue (fan-out, a reply, a catch-up).
                self.hub.metrics.slow_consumer_closes.inc();
            }
            // A slow consumer gets time to read what is already in flight (the socket's buffers
            // hold thousands of publications): closing at once would discard them with the
            // connection, and its resume would have to recover all of them.
            let grace = if *code == CloseCode::SlowConsumer {
                SLOW_CONSUMER_CLOSE_GRACE
            } else {
                CLOSE_GRACE
            };
            let _ = tokio::time::timeout(grace, async {
                if *code != CloseCode::SlowConsumer {
                    let _ = self.flush(socket).await;
                }
                let push = reply::push_disconnect(*code, reason);
                socket.feed(Message::Text(push.into())).await?;
                socket
                    .send(Message::Close(Some(CloseFrame {
                        code: code.code(),
                        reason: close_reason(reason).into(),
                    })))
                    .await?;
                // Wait for the peer's close reply so it reads our close frame before the TCP
                // connection goes away (otherwise its reply can hit a reset socket).
                while let Some(Ok(msg)) = socket.next().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
                Ok::<(), axum::Error>(())
            })
            .await;
        }
        self.hub.close_session(self.id);
        let user = self.principal.as_ref().map_or("", |p| p.user.as_str());
        match close {
            Some((code, reason)) => tracing::info!(
                target: "herald::audit", event = "disconnect", client = %self.client(), user,
                ip = %self.ip, code = code.code(), name = code.name(), reason
            ),
            None => tracing::info!(
                target: "herald::audit", event = "disconnect", client = %self.client(), user,
                ip = %self.ip, code = 1000, name = "client_closed"
            ),
        }
    }

    fn reply<T: Serialize>(&self, id: u64, result: &T) {
        let _ = self.outbox.push(Outgoing::Line(reply::reply_ok(id, result)));
    }

    fn reply_error(&self, id: Option<u64>, mut error: ErrorBody) {
        error.request_id = id;
        let _ = self.outbox.push(Outgoing::Line(reply::reply_err(id, &error)));
    }

    /// Handles every message of one inbound frame; returns a close when the connection must end.
    async fn handle_frame(&mut self, frame: &str) -> Option<Close> {
        for line in split_frame(frame) {
            if !self.bucket.take() {
                self.violations += 1;
                if self.violations > MAX_RATE_VIOLATIONS {
                    return Some((
                        CloseCode::RateLimited,
                        "command rate limit exceeded repeatedly".into(),
                    ));
                }
                let id = Request::parse(line).ok().and_then(|r| r.id);
                self.reply_error(
                    id,
                    ErrorBody::new(ErrorCode::RateLimited, "too many commands per second"),
                );
                continue;
            }
            match Request::parse(line) {
                Ok(Request { id, command }) => {
                    if let Some(close) = self.handle(id.unwrap_or(0), command).await {
                        return Some(close);
                    }
                }
                Err(e) => self.reply_error(e.id, ErrorBody::new(e.code, e.message)),
            }
        }
        None
    }

    async fn handle(&mut self, id: u64, command: Command) -> Option<Close> {
        if let Command::Connect { token, name: _ } = command {
            return self.connect(id, token).await;
        }
        if matches!(command, Command::Pong) {
            return None;
        }
        let Some(principal) = self.principal.clone() else {
            self.reply_error(
                Some(id),
                ErrorBody::new(ErrorCode::Unauthorized, "send connect first"),
            );
            return None;
        };
        let result = match command {
            Command::Connect { .. } | Command::Pong => Ok(()),
            Command::Ping { timestamp } => {
                self.reply(id, &reply::PingResult { timestamp });
                Ok(())
            }
            Command::Subscribe { channel, since, snapshot } => {
                self.subscribe(id, &principal, channel, since, snapshot).await
            }
            Command::Unsubscribe { channel } => match self.subs.remove(channel.as_str()) {
                Some(_) => {
                    self.hub.remove_subscriber(&channel, self.id).await;
                    self.reply(id, &serde_json::json!({}));
                    Ok(())
                }
                None => Err(ErrorBody::new(ErrorCode::NotSubscribed, "not subscribed")
                    .with_channel(channel)),
            },
            Command::Publish(cmd) => self.publish(id, &principal, cmd).await,
            Command::Refresh { token } => return self.refresh(id, &principal, &token).await,
            Command::History(q) => self.history(id, &principal, q).await,
            Command::State { channel } => self.state(id, &principal, channel).await,
        };
        if let Err(e) = result {
            self.reply_error(Some(id), e);
        }
        None
    }

    async fn connect(&mut self, id: u64, token: Option<String>) -> Option<Close> {
        if self.principal.is_some() {
            self.reply_error(
                Some(id),
                ErrorBody::new(ErrorCode::AlreadyConnected, "already connected"),
            );
            return None;
        }
        // Taken: once connected the token is not needed (memory per idle connection).
        let principal = match token.or_else(|| self.upgrade_token.take()) {
            None if self.hub.anonymous_allowed() => Principal::anonymous(),
            None => {
                let e = AuthError::Missing;
                self.audit_auth_failure(&e);
                self.reply_error(Some(id), auth_error(&e));
                return Some(auth_close(&e));
            }
            Some(token) => match self.hub.verifier.verify(&token).await {
                Ok(p) => p,
                Err(e) => {
                    self.audit_auth_failure(&e);
                    self.reply_error(Some(id), auth_error(&e));
                    return Some(auth_close(&e));
                }
            },
        };
        if !principal.is_anonymous()
            && let Err(e) = self.hub.bind_user(self.id, &principal.user)
        {
            tracing::warn!(target: "herald::audit", event = "auth_failure", user = %principal.user, ip = %self.ip, reason = "too many connections");
            self.reply_error(Some(id), e);
            return Some((CloseCode::TooManyConnections, "per-user connection limit".into()));
        }
        tracing::info!(target: "herald::audit", event = "connect", client = %self.client(), user = %principal.user, ip = %self.ip);
        let t = &self.hub.config.timeouts;
        let result = ConnectResult {
            client: self.client(),
            user: principal.user.clone(),
            time: now_rfc3339(),
            ping_interval_ms: t.ping_interval.as_millis() as u64,
            pong_timeout_ms: t.pong_timeout.as_millis() as u64,
            clients: self.hub.connection_count() as u64,
            node: self.hub.node_id.clone(),
            version: herald_protocol::PROTOCOL_VERSION,
            expires_at: principal.expires_at,
        };
        self.principal = Some(principal);
        self.reply(id, &result);
        None
    }

    async fn refresh(&mut self, id: u64, current: &Principal, token: &str) -> Option<Close> {
        match self.hub.verifier.verify(token).await {
            Ok(p) if p.user == current.user => {
                let result = RefreshResult { expires_at: p.expires_at };
                self.reply(id, &result);
                self.end_subscriptions_not_granted(&p).await;
                self.principal = Some(p);
            }
            Ok(_) => self.reply_error(
                Some(id),
                ErrorBody::new(ErrorCode::Unauthorized, "refreshed token names another user"),
            ),
            Err(e) => {
                self.audit_auth_failure(&e);
                self.reply_error(Some(id), auth_error(&e));
            }
        }
        None
    }

    /// After a refresh: every subscription the new token no longer grants ends with an
    /// `unsubscribe` push (103, no resubscribe), so a narrowed token stops the flow at once.
    async fn end_subscriptions_not_granted(&mut self, principal: &Principal) {
        let hub = self.hub.clone();
        let client = self.client();
        let mut ended = Vec::new();
        for channel in self.subs.keys() {
            let allowed = match hub.namespace(channel) {
                Ok(ns) => hub.authorize_subscribe(principal, &client, channel, ns).await.is_ok(),
                Err(_) => false,
            };
            if !allowed {
                ended.push(channel.clone());
            }
        }
        for channel in ended {
            self.subs.remove(&channel);
            hub.remove_subscriber(&channel, self.id).await;
            tracing::info!(target: "herald::audit", event = "subscription_revoked", client = %client, user = %principal.user, ip = %self.ip, channel = %channel);
            let _ = self.outbox.push(Outgoing::Line(reply::push_unsubscribe(
                &channel,
                ErrorCode::Forbidden,
                "the refreshed token no longer grants this channel",
                false,
            )));
        }
    }

    async fn subscribe(
        &mut self,
        id: u64,
        principal: &Principal,
        channel: String,
        since: Option<Position>,
        snapshot: bool,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let ns = hub.namespace(&channel)?;
        if let Err(e) = hub.authorize_subscribe(principal, &self.client(), &channel, ns).await {
            tracing::warn!(target: "herald::audit", event = "forbidden_subscribe", client = %self.client(), user = %principal.user, ip = %self.ip, channel = %channel, code = e.code);
            return Err(e);
        }
        if self.subs.contains_key(channel.as_str()) {
            return Err(ErrorBody::new(ErrorCode::AlreadySubscribed, "already subscribed")
                .with_channel(channel));
        }
        if self.subs.len() >= hub.config.limits.max_channels_per_connection {
            return Err(ErrorBody::new(
                ErrorCode::TooManyChannels,
                format!(
                    "at most {} channels per connection",
                    hub.config.limits.max_channels_per_connection
                ),
            )
            .with_channel(channel));
        }
        if snapshot && !ns.keyed {
            return Err(ErrorBody::new(ErrorCode::NotKeyed, "snapshot needs a keyed namespace")
                .with_channel(channel));
        }
        // Register for live publications first, then read: nothing published after the read
        // position can be missed (guarantee 3).
        hub.add_subscriber(&channel, self.id, self.outbox.clone()).await?;
        let recovery = match hub.recover(ns, &channel, since.as_ref(), snapshot).await {
            Ok(r) => r,
            Err(e) => {
                hub.remove_subscriber(&channel, self.id).await;
                return Err(e);
            }
        };
        // A reply never takes more than a quarter of the outbound queue: recovered publications
        // beyond that follow as pushes, fed as the queue drains (issue: replies larger than the
        // queue closed the client as a slow consumer, forever).
        let mut recovery = recovery;
        let budget = self.reply_budget();
        let snapshot_bytes: usize = recovery
            .snapshot
            .as_deref()
            .map_or(0, |r| r.iter().map(|r| r.key.len() + r.value.get().len() + 32).sum());
        let mut backlog = VecDeque::new();
        let mut catchup_until = None;
        let mut offset = recovery.offset;
        let fits = fitting_prefix(&recovery.publications, budget.saturating_sub(snapshot_bytes));
        if fits < recovery.publications.len() {
            backlog = recovery.publications.split_off(fits).into();
            catchup_until = backlog.back().map(|p: &Arc<Encoded>| p.offset);
            offset = recovery.publications.last().map_or_else(
                || backlog.front().map_or(recovery.offset, |p: &Arc<Encoded>| p.offset - 1),
                |p| p.offset,
            );
        }
        let line = reply::reply_ok(
            id,
            &SubscribeReply {
                channel: &channel,
                epoch: &recovery.epoch,
                offset,
                keyed: recovery.keyed,
                recovered: recovery.recovered,
                reason: recovery.reason,
                publications: RawPublications(&recovery.publications),
                snapshot: recovery.snapshot.as_deref(),
            },
        );
        let channel: Arc<str> = channel.into();
        self.subs.insert(
            channel.clone(),
            Sub {
                epoch: recovery.epoch.into(),
                delivered: offset,
                awaiting_reply: true,
                held: Vec::new(),
                backlog,
                catchup_until,
            },
        );
        let _ = self.outbox.push(Outgoing::Subscribed { channel, line });
        self.feed_backlogs();
        Ok(())
    }

    /// Most bytes of publications one reply carries: a quarter of the outbound queue.
    fn reply_budget(&self) -> usize {
        self.hub.config.limits.outbound_queue_bytes / 4
    }

    /// Moves backlog publications into the outbox while it is below a quarter of its bounds.
    fn feed_backlogs(&mut self) {
        if self.subs.values().all(|s| s.backlog.is_empty()) {
            return;
        }
        let limits = &self.hub.config.limits;
        let (max_bytes, max_messages) =
            (limits.outbound_queue_bytes / 4, (limits.outbound_queue_messages / 4).max(1));
        for sub in self.subs.values_mut() {
            while let Some(p) = sub.backlog.front() {
                let (len, bytes) = self.outbox.queued();
                if len >= max_messages || bytes + p.frame.len() > max_bytes {
                    return;
                }
                let p = sub.backlog.pop_front().expect("front exists");
                if self.outbox.push(Outgoing::Recovered(p)).is_err() {
                    return;
                }
            }
        }
    }

    async fn publish(
        &mut self,
        id: u64,
        principal: &Principal,
        cmd: PublishCommand,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let ns = hub.namespace(&cmd.channel)?;
        hub.authorize_publish(principal, &self.client(), &cmd.channel, ns).await?;
        let input = PublishInput {
            channel: cmd.channel,
            kind: cmd.kind.unwrap_or_else(|| "message".into()),
            data: cmd.data,
            key: cmd.key,
            op: cmd.op,
            meta: Meta {
                user: (!principal.user.is_empty()).then(|| principal.user.clone()),
                source: Some("client".into()),
                correlation_id: cmd.correlation_id,
                idempotency_key: cmd.idempotency_key,
            },
        };
        let result = hub.publish(input).await?;
        self.reply(id, &result);
        Ok(())
    }

    async fn history(
        &mut self,
        id: u64,
        principal: &Principal,
        q: HistoryQuery,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let ns = hub.namespace(&q.channel)?;
        hub.authorize_subscribe(principal, &self.client(), &q.channel, ns).await?;
        let mut h = hub.history(ns, &q).await?;
        let fits = fitting_prefix(&h.publications, self.reply_budget());
        if fits < h.publications.len() {
            // A page that would not fit the queue is shortened: from the end when reading
            // forward (`since`), from the start otherwise, so the next page follows on.
            if q.since.is_some() {
                h.publications.truncate(fits.max(1));
            } else {
                let fits = fitting_suffix(&h.publications, self.reply_budget()).max(1);
                h.publications.drain(..h.publications.len() - fits);
            }
        }
        self.reply(id, &HistoryReply::new(&q.channel, &h));
        Ok(())
    }

    async fn state(
        &mut self,
        id: u64,
        principal: &Principal,
        channel: String,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let ns = hub.namespace(&channel)?;
        hub.authorize_subscribe(principal, &self.client(), &channel, ns).await?;
        let st = hub.state(ns, &channel).await?;
        self.reply(
            id,
            &herald_protocol::reply::StateResult {
                channel,
                epoch: st.epoch,
                offset: st.offset,
                records: st.records,
            },
        );
        Ok(())
    }

    fn audit_auth_failure(&self, e: &AuthError) {
        self.hub.metrics.auth_failures.inc();
        tracing::warn!(target: "herald::audit", event = "auth_failure", client = %self.client(), ip = %self.ip, reason = %e);
    }
}

/// The error reply for a refused token: 109 when expired (get a new one), 101 otherwise.
fn auth_error(e: &AuthError) -> ErrorBody {
    let code =
        if *e == AuthError::Expired { ErrorCode::TokenExpired } else { ErrorCode::Unauthorized };
    ErrorBody::new(code, e.to_string())
}

fn auth_close(e: &AuthError) -> Close {
    match e {
        AuthError::Expired => (CloseCode::TokenExpired, "token expired".into()),
        other => (CloseCode::Unauthorized, other.to_string()),
    }
}

/// A close frame's reason is limited to 123 bytes; cut at a character boundary.
fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

fn unix_now_precise() -> Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// Whether a token expiring at `exp` (Unix seconds, client-supplied) is past its grace.
fn lapsed(exp: u64, grace: Duration) -> bool {
    Duration::from_secs(exp).saturating_add(grace) <= unix_now_precise()
}

/// Longest a deadline is set ahead: an `exp` decades away (or near `u64::MAX`) must not
/// overflow `Instant`; the timer is re-armed when it fires anyway.
const FAR_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

fn deadline_for(exp: u64, grace: Duration) -> tokio::time::Instant {
    let left = Duration::from_secs(exp).saturating_add(grace).saturating_sub(unix_now_precise());
    tokio::time::Instant::now() + left.min(FAR_DEADLINE)
}

/// The RFC 6455 close code for a broken inbound frame, if it is one.
fn violation_code(e: &axum::Error) -> Option<u16> {
    // axum hides tungstenite's error type; its message names the kind.
    let text = e.to_string();
    if text.contains("UTF-8") {
        Some(1007)
    } else if text.contains("protocol error") {
        Some(1002)
    } else {
        None
    }
}

fn too_large(e: &axum::Error) -> bool {
    // axum hides tungstenite's error type; its message names the capacity error.
    let text = e.to_string();
    text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("Message too big")
}

/// How many of `pubs`, from the first, fit in `budget` bytes.
fn fitting_prefix(pubs: &[Arc<Encoded>], budget: usize) -> usize {
    let mut used = 0;
    pubs.iter()
        .take_while(|p| {
            used += p.frame.len();
            used <= budget
        })
        .count()
}

/// How many of `pubs`, from the last, fit in `budget` bytes.
fn fitting_suffix(pubs: &[Arc<Encoded>], budget: usize) -> usize {
    let mut used = 0;
    pubs.iter()
        .rev()
        .take_while(|p| {
            used += p.frame.len();
            used <= budget
        })
        .count()
}

/// Publications embedded in a reply without re-serializing them.
pub struct RawPublications<'a>(pub &'a [Arc<Encoded>]);

impl Serialize for RawPublications<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for p in self.0 {
            let raw: &RawValue =
                serde_json::from_str(p.publication_json()).map_err(S::Error::custom)?;
            seq.serialize_element(raw)?;
        }
        seq.end()
    }
}

impl RawPublications<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The subscribe reply as written (publications raw).
#[derive(Serialize)]
struct SubscribeReply<'a> {
    channel: &'a str,
    epoch: &'a str,
    offset: u64,
    keyed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<NotRecovered>,
    #[serde(skip_serializing_if = "RawPublications::is_empty")]
    publications: RawPublications<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<&'a [Record]>,
}

/// The history reply as written (publications raw); also the HTTP body.
#[derive(Serialize)]
pub struct HistoryReply<'a> {
    channel: &'a str,
    epoch: &'a str,
    offset: u64,
    earliest: u64,
    publications: RawPublications<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<NotRecovered>,
}

impl<'a> HistoryReply<'a> {
    /// Borrows a history page.
    pub fn new(channel: &'a str, h: &'a crate::engine::History) -> HistoryReply<'a> {
        HistoryReply {
            channel,
            epoch: &h.epoch,
            offset: h.offset,
            earliest: h.earliest,
            publications: RawPublications(&h.publications),
            reason: h.reason,
        }
    }
}
