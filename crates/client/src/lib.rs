//! Herald Rust client: subscriptions that survive network faults without losing, duplicating or
//! reordering a publication.
//!
//! - [`Client`]: reconnects with jittered exponential backoff and a circuit breaker, rotates
//!   through several server URLs, keeps the connection alive (answers pings, detects silence),
//!   refreshes its token in-band, and resumes every [`Subscription`] from the last delivered
//!   position. Its [`ConnectionState`] is observable.
//! - [`ApiClient`]: the hub's HTTP API (publish, broadcast, history, state, channels, info).
//! - [`raw`]: one bare WebSocket connection speaking protocol v1, for tools such as the benchmark.
//!
//! Wire types come from `herald_protocol`; docs/protocol.md is the contract.

mod backoff;
mod client;
mod error;
mod http;
pub mod raw;
mod state;
mod subscription;
mod token;

pub use backoff::BackoffPolicy;
pub use client::{BuildError, Client, ClientBuilder};
pub use error::Error;
pub use herald_protocol;
pub use herald_protocol::reply::NotRecovered;
pub use herald_protocol::{Position, Publication, Record};
pub use http::{ApiClient, ApiError, http_base_from_ws, ws_url_from_http};
pub use state::{ConnectionState, OfflineReason};
pub use subscription::{SubEvent, SubscribeOptions, Subscription};
pub use token::{TokenFuture, TokenSource};
