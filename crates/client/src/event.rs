//! What the application hands to a subscribe and what a subscription stream yields: plain data,
//! below both the handles and the connection task, so that each can name it without the other.
//! For views, [`ViewOptions`] and the untyped [`ViewFeed`] the connection task sends to a
//! [`crate::View`] handle, which decodes it into typed events. For presence (protocol §15),
//! [`Member`], the record of one member of a channel.

use herald_protocol::command::ViewQuery;
use herald_protocol::reply::{NotRecovered, ViewEvent};
use herald_protocol::{ErrorBody, Position, PresenceMode, Publication, Record};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How to start a subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Resume after this position (for example one the application persisted): the stream starts
    /// with the publications after it, or with a [`SubEvent::Resync`] if they are gone.
    pub since: Option<Position>,
    /// On a keyed channel, start with a snapshot of every record (in [`SubEvent::Subscribed`]).
    pub snapshot: bool,
    /// On a presence namespace, follow the channel's members ([`PresenceMode::Members`]: the
    /// list, then joins, updates and leaves) or only their counts ([`PresenceMode::Counts`]).
    pub presence: Option<PresenceMode>,
    /// This member's `info` as it joins (name, colour, what it edits); kept up to date by
    /// [`crate::Subscription::set_presence`] and sent again on every resubscribe.
    pub info: Option<serde_json::Value>,
    /// This member's id (the `ID` of `USER/ID`). Default: the [`crate::Client`]'s own random id,
    /// the same across reconnects, so that a reconnect rejoins as the same member.
    pub member: Option<String>,
    /// Publications whose `data` is longer than this many bytes come as a truncated preview:
    /// `data` is a string of the payload's first bytes and `truncated` its full length; the
    /// whole one can be read with `history` (protocol §18).
    pub preview: Option<u32>,
}

impl SubscribeOptions {
    /// Asks for a truncated preview of publications whose `data` is longer than `bytes`.
    pub fn preview(mut self, bytes: u32) -> SubscribeOptions {
        self.preview = Some(bytes.max(1));
        self
    }

    /// Follows the channel's presence: the member list or only its counts.
    pub fn presence(mut self, mode: PresenceMode) -> SubscribeOptions {
        self.presence = Some(mode);
        self
    }

    /// Sets this member's `info` (any JSON up to the namespace's `max_presence_info_bytes`).
    pub fn info(mut self, info: serde_json::Value) -> SubscribeOptions {
        self.info = Some(info);
        self
    }

    /// Sets this member's id instead of the client's default one (for example a per-tab id the
    /// application persists).
    pub fn member(mut self, id: impl Into<String>) -> SubscribeOptions {
        self.member = Some(id.into());
        self
    }

    /// Whether the subscribe carries presence fields (and so the member id): only then, since
    /// the hub refuses them on a namespace without presence.
    pub(crate) fn uses_presence(&self) -> bool {
        self.presence.is_some() || self.info.is_some() || self.member.is_some()
    }
}

/// One member of a channel (protocol §15): a connection subscribed to it, as the hub lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its key, `USER/ID`: what joins, updates and leaves name.
    pub member: String,
    /// The connection's user id (empty when anonymous); several members of one user are its
    /// tabs and devices.
    #[serde(default)]
    pub user: String,
    /// The connection id (`NODE-N`), when known: the member list carries it, `presence` events
    /// do not, so a member that joined (or changed) since the list has `None`.
    #[serde(default)]
    pub client: Option<String>,
    /// The node holding the connection, when known (like `client`).
    #[serde(default)]
    pub node: Option<String>,
    /// What the member says about itself (`None` when it set nothing).
    #[serde(default)]
    pub info: Option<serde_json::Value>,
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
    /// Part of a large publication arrived (protocol §18): `received` of its `bytes` so far.
    /// The publication itself follows as [`SubEvent::Publication`] once every part is in; a
    /// connection lost in between starts it again.
    Progress {
        /// The publication's offset.
        offset: u64,
        /// Bytes of it received.
        received: u64,
        /// Its size in bytes.
        bytes: u64,
    },
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
    /// The channel's whole member list (presence [`PresenceMode::Members`]), replacing any held
    /// before: the first one, or after a resume the hub's presence history could not serve.
    /// Joins, updates and leaves after it follow.
    PresenceList {
        /// Every member, by member id.
        members: BTreeMap<String, Member>,
    },
    /// A member joined the channel.
    Join {
        /// The new member.
        member: Member,
    },
    /// A member changed its `info` (or moved to another node).
    Update {
        /// The member as it is now.
        member: Member,
    },
    /// A member left (unsubscribed, disconnected, or its node went away).
    Leave {
        /// The member as it was held (its last `info`), or as the event named it.
        member: Member,
    },
    /// The channel's member and user counts (presence [`PresenceMode::Counts`]): first the
    /// current ones, then after each join and leave.
    PresenceCounts {
        /// How many members.
        members: u64,
        /// How many distinct users they belong to.
        users: u64,
    },
    /// A volatile event (protocol §16): delivered to the subscribers connected when it was sent,
    /// kept nowhere, never replayed.
    Volatile {
        /// Its type (`cursor`, `typing`, ...; `message` when the sender gave none).
        kind: String,
        /// Its payload.
        data: serde_json::Value,
        /// The sender's user id.
        user: String,
        /// The sender's connection id.
        client: String,
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
    /// A volatile event of the viewed channel.
    Volatile(Volatile),
}

/// The fields of a `volatile` push (for a subscription's [`SubEvent::Volatile`] and a view's
/// `ViewEvent::Volatile`).
#[derive(Debug)]
pub(crate) struct Volatile {
    /// Its type (`message` when the sender gave none).
    pub kind: String,
    /// Its payload.
    pub data: serde_json::Value,
    /// The sender's user id.
    pub user: String,
    /// The sender's connection id.
    pub client: String,
}
