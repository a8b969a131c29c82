//! Errors of requests made through a [`crate::Client`].

use herald_protocol::ErrorBody;

/// Why a request (publish, history, state, ...) did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server answered with an error object (code, name, message).
    #[error("server error {0}")]
    Server(ErrorBody),
    /// No reply within the request timeout; the request may or may not have been applied.
    #[error("request timed out")]
    Timeout,
    /// The connection dropped after the request was sent; it may or may not have been applied
    /// (publish with an `idempotency_key` to retry safely).
    #[error("connection lost before the reply arrived")]
    Disconnected,
    /// The client is offline (final close, circuit breaker, or closed) and does not try to send.
    #[error("client is offline: {0}")]
    Offline(crate::state::OfflineReason),
    /// The reply could not be decoded into the expected result type.
    #[error("cannot decode reply: {0}")]
    Decode(String),
    /// The client's background task has stopped (the client was closed).
    #[error("client is closed")]
    Closed,
}
