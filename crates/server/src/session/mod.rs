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
//!
//! # Layout
//!
//! - this file: [`Upgrade`], [`run`], the session's loop (reads, heartbeat, deadlines), the
//!   split of inbound frames into commands, and the close.
//! - `cmd/`: one file per command (`connect`, `subscribe`, …) and the dispatch to them.
//! - `subscription`: one subscription's delivery state and its continuity rules.
//! - `writer`: drains the outbox into the socket in batched frames.
//! - `rate`: the command rate limit.

mod cmd;
mod rate;
mod subscription;
mod writer;

use crate::auth::{AuthError, Principal};
use crate::hash::FastMap;
use crate::hub::Hub;
use crate::metrics::CloseLabels;
use crate::outbox::{Outbox, Outgoing};
use axum::extract::ws::{CloseFrame, Message};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use herald_protocol::command::Request;
use herald_protocol::reply::{self, ErrorBody, PUSH_PING};
use herald_protocol::{CloseCode, ErrorCode, split_frame};
use rate::{Admission, RateLimit};
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subscription::Sub;

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

/// How long the final close may take on a stuck socket.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a slow consumer's socket stays open to drain what is in flight before the close.
const SLOW_CONSUMER_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// A session.
struct Session {
    /// The node.
    hub: Arc<Hub>,
    /// Session id in the hub.
    id: u64,
    /// Outbound queue.
    outbox: Arc<Outbox>,
    /// Set by a successful `connect`.
    principal: Option<Arc<Principal>>,
    /// Token from the upgrade request, used when `connect` carries none.
    upgrade_token: Option<Box<str>>,
    /// Peer address.
    ip: IpAddr,
    /// Subscriptions by channel.
    subs: FastMap<Arc<str>, Sub>,
    /// Views, presence and volatile limits, allocated at first use: most connections use none
    /// of them, and an idle connection's task carries every inline field (memory per connection).
    extras: LazyExtras,
    /// Protocol v2 (asked at `connect`): the number the next subscription gets, for its compact
    /// live publications (`herald_protocol::compact`). `None`: version 1.
    compact: Option<std::num::NonZeroU32>,
    /// Last time anything arrived.
    last_seen: Instant,
    /// Command rate limit.
    rate: RateLimit,
}

/// What a session keeps for views, presence, volatile events and protocol v2.
#[derive(Default)]
struct Extras {
    /// View subscriptions: name → channel (their state lives in the fan-out, crate::views).
    views: HashMap<Arc<str>, Arc<str>>,
    /// Channels this connection is a presence member of (crate::presence).
    presence: HashMap<Arc<str>, cmd::Membership>,
    /// Volatile events allowed now, per namespace.
    volatile_rate: HashMap<String, rate::TokenBucket>,
}

/// A session's [`Extras`], allocated when first changed: reading them before that sees empty
/// maps, so an idle connection holds no allocation for features it never used.
#[derive(Default)]
struct LazyExtras(Option<Box<Extras>>);

impl std::ops::Deref for LazyExtras {
    type Target = Extras;
    fn deref(&self) -> &Extras {
        static EMPTY: std::sync::LazyLock<Extras> = std::sync::LazyLock::new(Extras::default);
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl std::ops::DerefMut for LazyExtras {
    fn deref_mut(&mut self) -> &mut Extras {
        self.0.get_or_insert_with(Box::default)
    }
}

/// Why the session ends: the close code and reason it sends.
type Close = (CloseCode, String);

/// Runs a connection until it ends.
///
/// Not an `async fn`: an async fn keeps its arguments twice in its future (as arguments and as
/// the locals they are moved into), and an idle connection's task carries that future, socket
/// included, for its whole life (424 bytes per connection with tungstenite's socket). The
/// session is built here and the block below captures only it and the socket, in place.
pub fn run<S>(hub: Arc<Hub>, mut socket: S, upgrade: Upgrade) -> impl Future<Output = ()>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let limits = &hub.config.limits;
    let Upgrade { token, origin_allowed, ip } = upgrade;
    let mut session = Session {
        rate: RateLimit::new(limits.commands_per_second),
        outbox: Arc::new(Outbox::new(limits.outbound_queue_messages, limits.outbound_queue_bytes)),
        hub,
        // Registered in the hub when the task first runs, so that a future dropped unpolled
        // leaves nothing behind.
        id: 0,
        principal: None,
        upgrade_token: token.map(String::into_boxed_str),
        ip,
        subs: FastMap::default(),
        extras: LazyExtras::default(),
        compact: None,
        last_seen: Instant::now(),
    };
    async move {
        session.id = session.hub.open_session(session.outbox.clone());
        let close = if !origin_allowed {
            tracing::warn!(target: "herald::audit", event = "auth_failure", ip = %session.ip, reason = "origin not allowed");
            Some((CloseCode::Forbidden, "origin not allowed".to_string()))
        } else {
            // A bug in command handling must not leave the connection counted (the per-user
            // limit would lock the user out): the bookkeeping below runs on every exit, panics
            // included.
            let served =
                std::panic::AssertUnwindSafe(session.serve(&mut socket)).catch_unwind().await;
            // Only the close is kept past here: what the task holds across an await costs
            // every idle connection.
            let (close, panicked) = match served {
                Ok(close) => (close, false),
                Err(_) => (None, true),
            };
            if panicked {
                tracing::error!(client = %session.client(), "session panicked: closing it");
                let internal = Message::Close(Some(CloseFrame {
                    code: 1011,
                    reason: "internal error".into(),
                }));
                let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, socket.send(internal))).await;
            }
            close
        };
        Box::pin(session.finish(&mut socket, close)).await;
    }
}

impl Session {
    /// Public connection id (`NODE-N`), made when needed rather than kept per connection.
    fn client(&self) -> String {
        format!("{}-{}", self.hub.node_id, self.id)
    }

    /// How long past its `exp` a token is tolerated: a token the verifier still accepts
    /// (within its leeway) must not be closed as expired.
    fn token_grace(&self) -> Duration {
        self.hub.config.timeouts.token_grace + Duration::from_secs(self.hub.verifier.leeway_secs())
    }

    /// The session's loop: writes what the outbox holds, reads commands, and keeps the
    /// deadlines (ping, heartbeat, auth, token expiry). Returns the close to send, if any.
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
                    // Boxed, and given the message: command handling is a large future that an
                    // idle connection should not carry in its task (memory per idle connection).
                    if let ControlFlow::Break(close) = Box::pin(self.inbound(socket, msg)).await {
                        return close;
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
                        && lapsed(exp, self.token_grace())
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
                        deadline = deadline.min(deadline_for(exp, self.token_grace()));
                    }
                }
            }
            if deadline < armed || timer.is_elapsed() {
                armed = deadline;
                timer.as_mut().reset(armed);
            }
        }
    }

    /// Handles what the socket read: a frame of commands, a control frame, the end or an error.
    /// `Break` ends the session, with the close to send if any.
    async fn inbound<S>(
        &mut self,
        socket: &mut S,
        msg: Option<Result<Message, axum::Error>>,
    ) -> ControlFlow<Option<Close>>
    where
        S: Sink<Message, Error = axum::Error> + Unpin,
    {
        self.last_seen = Instant::now();
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                return ControlFlow::Break(Some((
                    CloseCode::BadRequest,
                    "binary frames are not part of the protocol".into(),
                )));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return ControlFlow::Continue(()),
            Some(Ok(Message::Close(_))) | None => return ControlFlow::Break(None),
            Some(Err(e)) => {
                if too_large(&e) {
                    let max = self.hub.config.limits.max_frame_bytes;
                    return ControlFlow::Break(Some((
                        CloseCode::MessageTooLarge,
                        format!("frame above {max} bytes"),
                    )));
                }
                // RFC 6455 §7.4.1: 1007 for invalid UTF-8, 1002 for a protocol violation (RSV
                // bits, bad opcode, unmasked frame…).
                if let Some(code) = violation_code(&e) {
                    tracing::debug!(client = %self.client(), error = %e, "websocket protocol violation");
                    let reason = close_reason(&e.to_string()).to_string().into();
                    let close = Message::Close(Some(CloseFrame { code, reason }));
                    let _ = tokio::time::timeout(CLOSE_GRACE, socket.send(close)).await;
                }
                return ControlFlow::Break(None);
            }
        };
        self.hub.metrics.bytes_in.inc_by(text.len() as u64);
        match self.handle_frame(text.as_str()).await {
            Some(close) => ControlFlow::Break(Some(close)),
            None => ControlFlow::Continue(()),
        }
    }

    /// Sends the last frames and the close, then forgets the session.
    async fn finish<S>(&mut self, socket: &mut S, close: Option<Close>)
    where
        S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
    {
        // Out of the fan-out first: nothing more is queued for a connection that is closing.
        for channel in std::mem::take(&mut self.subs).into_keys() {
            self.hub.remove_subscriber(&channel, self.id).await;
            self.leave_presence(&channel).await;
        }
        for (sub, channel) in
            self.extras.0.as_mut().map(|e| std::mem::take(&mut e.views)).unwrap_or_default()
        {
            self.hub.remove_view(&channel, self.id, &sub).await;
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
        if close.is_none() {
            // The peer closed, broke the protocol or went away: what the socket still holds (the
            // echo of a close) goes out and the connection is shut down, within the grace.
            let _ = tokio::time::timeout(CLOSE_GRACE, socket.close()).await;
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

    /// Queues a command's result.
    fn reply<T: Serialize>(&self, id: u64, result: &T) {
        self.reply_line(reply::reply_ok(id, result));
    }

    /// Queues a reply line already written (the publish reply, written by hand).
    fn reply_line(&self, line: String) {
        let _ = self.outbox.push(Outgoing::Line(line));
    }

    /// Queues a command's error (an `error` push when the command had no id).
    fn reply_error(&self, id: Option<u64>, mut error: ErrorBody) {
        error.request_id = id;
        let _ = self.outbox.push(Outgoing::Line(reply::reply_err(id, &error)));
    }

    /// Handles every message of one inbound frame; returns a close when the connection must end.
    async fn handle_frame(&mut self, frame: &str) -> Option<Close> {
        for line in split_frame(frame) {
            match self.rate.admit() {
                Admission::Run => {}
                Admission::Refuse => {
                    let id = Request::parse(line).ok().and_then(|r| r.id);
                    self.reply_error(
                        id,
                        ErrorBody::new(ErrorCode::RateLimited, "too many commands per second"),
                    );
                    continue;
                }
                Admission::Close => {
                    return Some((
                        CloseCode::RateLimited,
                        "command rate limit exceeded repeatedly".into(),
                    ));
                }
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

    /// Counts and logs a refused token.
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

/// The close for a refused token: 4004 when expired, 4500 otherwise.
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

/// Now as Unix time, to compare with token expiries.
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

/// When a token expiring at `exp` (Unix seconds) passes its grace, as a timer deadline.
fn deadline_for(exp: u64, grace: Duration) -> tokio::time::Instant {
    let left = Duration::from_secs(exp).saturating_add(grace).saturating_sub(unix_now_precise());
    tokio::time::Instant::now() + left.min(FAR_DEADLINE)
}

/// Why a socket refused an inbound frame, carried inside the `axum::Error` its stream yields:
/// the session closes with the code RFC 6455 gives it (1002, 1007) or with `4504`. Defined here,
/// at the seam, so that sockets depend on the session and not the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A violation of RFC 6455's framing: close 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message (or a close reason) that is not UTF-8: close 1007.
    #[error("invalid UTF-8 in a text message")]
    Utf8,
    /// A frame, or a fragmented message, above the limit.
    #[error("message too big: above {0} bytes")]
    TooLarge(usize),
}

/// The [`FrameError`] behind `e`, if it is one.
fn frame_error(e: &axum::Error) -> Option<FrameError> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref()).copied()
}

/// The RFC 6455 close code for a broken inbound frame, if it is one.
fn violation_code(e: &axum::Error) -> Option<u16> {
    match frame_error(e) {
        Some(FrameError::Utf8) => return Some(1007),
        Some(FrameError::Protocol(_)) => return Some(1002),
        Some(FrameError::TooLarge(_)) => return None,
        None => {}
    }
    // yawc's errors (permessage-deflate connections) are named by their message.
    let text = e.to_string();
    if text.contains("UTF-8") {
        Some(1007)
    } else if text.contains("protocol error") {
        Some(1002)
    } else {
        None
    }
}

/// Whether a read failed because the frame exceeded the size limit.
fn too_large(e: &axum::Error) -> bool {
    if let Some(e) = frame_error(e) {
        return matches!(e, FrameError::TooLarge(_));
    }
    // yawc's errors (permessage-deflate connections) are named by their message.
    let text = e.to_string();
    text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("Message too big")
}
