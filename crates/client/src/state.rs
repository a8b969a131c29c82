//! The connection state the application observes (for a status indicator, or to decide when to
//! show "offline, retry?").

use std::time::Duration;

/// Where the client's connection stands. Published through a `tokio::sync::watch` channel
/// (`Client::watch_state`) and, without coalescing, through `Client::state_changes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// The first connection attempt (or the first after `reconnect()`) is in progress.
    Connecting,
    /// Connected, authenticated, and every subscription is flowing.
    Connected,
    /// The connection was lost or could not be made; the next attempt starts after a delay.
    Reconnecting {
        /// Retry number since the last established connection (1 for the first retry): a
        /// connection is established once its `connect` and every resubscribe got a reply.
        attempt: u32,
        /// How long the client waits before this attempt.
        next_try_in: Duration,
    },
    /// Connected again; subscriptions are resuming from their last delivered positions.
    Resyncing,
    /// Not connected, and requests fail at once: a final close code or `close()` (no more
    /// attempts), or the open circuit breaker (one probe per backoff cap; a probe that connects
    /// leaves this state). `Client::reconnect` leaves it too.
    Offline {
        /// Why the client stopped trying.
        reason: OfflineReason,
    },
}

impl ConnectionState {
    /// A short lowercase name (`connecting`, `connected`, `reconnecting`, `resyncing`,
    /// `offline`), for logs and status lines.
    pub fn name(&self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Reconnecting { .. } => "reconnecting",
            ConnectionState::Resyncing => "resyncing",
            ConnectionState::Offline { .. } => "offline",
        }
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionState::Reconnecting { attempt, next_try_in } => {
                write!(f, "reconnecting (attempt {attempt}, next try in {next_try_in:.1?})")
            }
            ConnectionState::Offline { reason } => write!(f, "offline: {reason}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Why the client went offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineReason {
    /// The server closed the connection with a final close code (4500–4999: bad token, origin
    /// not allowed, protocol violation, kicked, frame too large). Retrying would fail the same way.
    Closed {
        /// The WebSocket close code (or the code of the `disconnect` push that preceded it).
        code: u16,
        /// The server's explanation.
        reason: String,
    },
    /// The server refused the `connect` command with an error that retrying cannot fix.
    Rejected {
        /// The error code from the reply (for example 101 `unauthorized`).
        code: u16,
        /// The server's message.
        message: String,
    },
    /// This many consecutive attempts failed (none got a `connect` reply); the circuit breaker
    /// is open: requests fail at once, and the client probes once per backoff cap.
    CircuitOpen {
        /// How many attempts failed in a row.
        attempts: u32,
    },
    /// The application closed the client.
    ClientClosed,
}

impl std::fmt::Display for OfflineReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OfflineReason::Closed { code, reason } => {
                write!(f, "closed by server with {code} ({reason})")
            }
            OfflineReason::Rejected { code, message } => {
                write!(f, "connect rejected with {code} ({message})")
            }
            OfflineReason::CircuitOpen { attempts } => {
                write!(f, "circuit breaker open after {attempts} failed attempts")
            }
            OfflineReason::ClientClosed => f.write_str("closed by the application"),
        }
    }
}
