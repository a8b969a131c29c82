//! What the application hands to a subscribe and what a subscription stream yields: plain data,
//! below both the handles and the connection task, so that each can name it without the other.
//! For views, [`ViewOptions`] and the untyped [`ViewFeed`] the connection task sends to a
//! [`crate::View`] handle, which decodes it into typed events.

use herald_protocol::command::ViewQuery;
use herald_protocol::reply::{NotRecovered, ViewEvent};
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

/// What a view subscription asks for (protocol §14): a spec view, an ad-hoc filter, one key, or
/// a combination (ANDed by the hub), and optionally its name on the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewOptions {
    /// The wire fields of the subscribe.
    pub(crate) query: ViewQuery,
}

impl ViewOptions {
    /// A view or subscription declared in a loaded spec (`ActiveTasks`, `TaskDetail`).
    pub fn view(name: impl Into<String>) -> ViewOptions {
        ViewOptions { query: ViewQuery { view: Some(name.into()), ..ViewQuery::default() } }
    }

    /// An ad-hoc filter (`status != "done" and assignee == "u7"`), where the namespace allows
    /// filters.
    pub fn filter(expr: impl Into<String>) -> ViewOptions {
        ViewOptions { query: ViewQuery { filter: Some(expr.into()), ..ViewQuery::default() } }
    }

    /// A view of one record only.
    pub fn by_key(key: impl Into<String>) -> ViewOptions {
        ViewOptions { query: ViewQuery { key: Some(key.into()), ..ViewQuery::default() } }
    }

    /// Adds an ad-hoc filter, ANDed with the view's.
    pub fn and_filter(mut self, expr: impl Into<String>) -> ViewOptions {
        self.query.filter = Some(expr.into());
        self
    }

    /// Restricts the view to one key (needed by a `subscription X: Entity by id`).
    pub fn key(mut self, key: impl Into<String>) -> ViewOptions {
        self.query.key = Some(key.into());
        self
    }

    /// Names the subscription on the connection (default `CHANNEL#VIEW`, `CHANNEL#filter` or
    /// `CHANNEL#key:KEY`); several views of one channel on one client need different names.
    // Named after the wire field `sub`; it has nothing to do with subtraction.
    #[allow(clippy::should_implement_trait)]
    pub fn sub(mut self, name: impl Into<String>) -> ViewOptions {
        self.query.sub = Some(name.into());
        self
    }

    /// The wire fields, as the subscribe sends them.
    pub fn query(&self) -> &ViewQuery {
        &self.query
    }
}

/// What the connection task tells a view handle, undecoded: the handle owns the rows and the
/// record type, the task only orders and resumes.
#[derive(Debug)]
pub(crate) enum ViewFeed {
    /// Rows at `position` that replace whatever the handle holds (first reply, or a resume the
    /// history could not serve).
    Ready {
        /// The matching records at `position`.
        rows: Vec<Record>,
        /// Where the events that follow start.
        position: Position,
        /// Set on a resume that was not recovered: why the rows were reloaded.
        resync: Option<NotRecovered>,
    },
    /// The next event, in offset order, never twice.
    Event(Box<ViewEvent>),
    /// The hub refused or ended the view for good; nothing follows.
    Ended(ErrorBody),
}
