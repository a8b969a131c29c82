//! Herald's event-bus bridge: events read from a bus (Redis Streams, NATS JetStream, a Postgres
//! outbox, or an in-process source) are mapped by rules onto channels and published through the
//! hub, exactly once (seed 004).
//!
//! # Exactly once into channels
//!
//! An event is acknowledged to its source only after every publication it maps to was accepted
//! by the hub. Each publication carries the idempotency key `BRIDGE:EVENT_ID`, so an event read
//! again after a crash between "published" and "acknowledged" (or by the node that took the
//! source over) is answered as a duplicate and published nothing new. This holds while the
//! redelivery comes within the namespace's `idempotency_window` (5 minutes by default). One
//! runner reads a source at a time and handles its events one after the other, so the order of
//! each channel is the order of the source.
//!
//! # Layout
//!
//! - [`source`]: the [`EventSource`] seam every bus implements, and [`Event`].
//! - [`rules`]: mapping rules: which events go to which channels, as what.
//! - [`config`]: the `[[bridge]]` sections of the configuration file.
//! - [`memory`]: an in-process source, for applications' tests and embedding.
//! - `nats` (feature `nats`): the NATS JetStream source, a durable pull consumer.
//! - `redis_streams` (feature `redis-streams`): the Redis Streams source, a consumer group.
//! - `postgres` (feature `postgres`): the Postgres outbox source, a table read in id order.
//! - [`run`]: the runner: read, map, publish, acknowledge (or dead-letter), under a lease.
//! - [`sources`]: builds a configured source by kind (one module and cargo feature per bus).
//! - [`stats`]: per-source counters for `/metrics` and `/api/info`.

pub mod config;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis-streams")]
pub mod redis_streams;
pub mod rules;
pub mod run;
pub mod source;
pub mod sources;
pub mod stats;

pub use source::{Event, EventSource, SourceError};
