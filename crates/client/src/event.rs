//! What the application hands to a subscribe and what a subscription stream yields: plain data,
//! below both the handles and the connection task, so that each can name it without the other.

use herald_protocol::reply::NotRecovered;
use herald_protocol::{ErrorBody, Position, Publication, Record};

/// How to start a subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Resume after this position (for example one the application persisted): the stream starts
    /// with the publications after it, or with a [`SubEvent::Resync`] if they are gone.
    pub since: Option<Position>,
    /// On a keyed channel, start with a snapshot of every record (in [`SubEvent::Subscribed`]).
    pub snapshot: bool,
}

/// What a subscription stream yields.
#[derive(Debug, Clone)]
pub enum SubEvent {
    /// The first subscribe succeeded; publications after `position` follow.
    Subscribed {
        /// The channel's position at subscribe time.
        position: Position,
        /// The records at `position`, when a snapshot was asked for.
        snapshot: Option<Vec<Record>>,
    },
    /// The next publication, in offset order, never twice.
    Publication(Publication),
    /// Continuity was lost (the hub's stream was reset, or what was missed left the history):
    /// reload application state. Publications after `position` follow.
    Resync {
        /// Why the missed publications cannot be delivered.
        reason: NotRecovered,
        /// Where the stream continues from.
        position: Position,
        /// Fresh records of a keyed channel, replacing whatever the application held.
        snapshot: Option<Vec<Record>>,
    },
    /// The server refused or ended the subscription for good (forbidden, unknown namespace, ...);
    /// the stream ends after this event.
    Ended {
        /// The server's error (or a local one, such as a second subscription to one channel).
        error: ErrorBody,
    },
}
