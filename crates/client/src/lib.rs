//! Herald Rust client: subscriptions that survive network faults without losing, duplicating or
//! reordering a publication.
//!
//! - [`Client`]: reconnects with jittered exponential backoff and a circuit breaker, rotates
//!   through several server URLs, keeps the connection alive (answers pings, detects silence),
//!   refreshes its token in-band, and resumes every [`Subscription`] from the last delivered
//!   position. Its [`ConnectionState`] is observable.
//! - [`View`]: a live view of a keyed channel (a spec view, a filter, or one key) that keeps the
//!   matching records by key, typed with serde, from insert/update/delete events.
//! - [`ApiClient`]: the hub's HTTP API (publish, broadcast, history, state, channels, info).
//! - [`raw`]: one bare connection (WebSocket or SSE) speaking the protocol, for tools such as the
//!   benchmark.
//!
//! Where a WebSocket upgrade is refused (an HTTP error status, or closed before any answer: a
//! proxy that blocks WebSocket), a connection attempt falls back to the hub's multiplexed SSE
//! transport on the same URL (`ws://h/ws` → `http://h/sse`, protocol §13) and keeps every
//! guarantee; while on SSE it probes WebSocket in the background and moves back, resuming from
//! its positions, once an upgrade works. [`ClientBuilder::transports`] and
//! [`ClientBuilder::sse_probe`] configure it, [`Client::transport`] says which is in use.
//!
//! Wire types come from `herald_protocol`; docs/protocol.md is the contract. The client asks
//! for protocol version 2 (compact live publications, §17) and rebuilds the same
//! [`Publication`](herald_protocol::Publication) a version 1 hub sends.
//!
//! # Layout
//!
//! Modules are layered: each uses only modules below it (`tests/module_graph.rs` fails on any
//! import cycle). From the top:
//!
//! - `client`: the public facade, [`ClientBuilder`] and the cloneable [`Client`] handle; every
//!   call becomes a command to the connection task.
//! - `connection`: the state machine in the background task: connect, reconnect with the
//!   backoff policy and URL rotation, ping/pong and silence detection, in-band token refresh,
//!   request/reply correlation, resubscribing and resuming on every connection.
//! - `subscription`: one subscription: the [`Subscription`] handle (unsubscribes on drop), the
//!   record the connection task keeps for it, and the ordering logic (positions, resume,
//!   duplicate and gap filtering).
//! - `presence`: presence and volatile pushes of one subscription: the presence position kept
//!   across connections (`presence_since`), stale events dropped, and the member map a
//!   [`Subscription`] keeps from the events it yields.
//! - `view`: one live view: the [`View`] handle (typed events, the rows by key), and the record
//!   the connection task keeps for it (position, resume, duplicate filtering).
//! - `command`: the commands handles send to the connection task, the only link between them.
//! - `transport`: the socket seam: handshake (the first transport not refused, plus the
//!   `connect` reply) and the writer task that batches messages into frames; built on [`raw`],
//!   which splits batched frames.
//! - `sse`: the multiplexed SSE transport under [`raw`] (the `GET /sse` stream and its parser,
//!   the command POSTs, the background WebSocket probe) and [`Transport`].
//! - `event`: [`SubscribeOptions`] and [`SubEvent`], the data a subscription takes and yields
//!   (with [`Member`], one member of a channel's presence);
//!   [`ViewOptions`] and the untyped feed a view's handle decodes.
//! - `backoff`: [`BackoffPolicy`] and the reconnect bookkeeping (delays, circuit breaker).
//! - `state`: [`ConnectionState`] and [`OfflineReason`].
//! - `token`: [`TokenSource`]. `error`: [`Error`].
//! - `http`: [`ApiClient`], independent of the WebSocket side.
//! - [`raw`]: one bare connection, WebSocket or SSE (public, for tools).

mod backoff;
mod client;
mod command;
mod connection;
mod error;
mod event;
mod http;
mod presence;
pub mod raw;
mod sse;
mod state;
mod subscription;
mod token;
mod transport;
mod view;

pub use backoff::BackoffPolicy;
pub use client::{BuildError, Client, ClientBuilder};
pub use error::Error;
pub use event::{Member, SubEvent, SubscribeOptions, ViewOptions};
pub use herald_protocol;
pub use herald_protocol::reply::{LeaveReason, NotRecovered};
pub use herald_protocol::{Position, PresenceMode, Publication, Record};
pub use http::{ApiClient, ApiError, http_base_from_ws, ws_url_from_http};
pub use sse::{ProbePolicy, SseError, Transport, sse_url};
pub use state::{ConnectionState, OfflineReason};
pub use subscription::Subscription;
pub use token::{TokenFuture, TokenSource};
pub use view::{View, ViewError, ViewEvent};
