//! Live views (protocol §14): the [`View`] handle the application reads (a stream of typed
//! [`ViewEvent`]s that keeps the view's rows by key and unsubscribes on drop), and the record the
//! connection task keeps for each view across connections ([`ViewSub`]): its last position, how
//! a subscribe reply and a live event are applied, and what the next subscribe resumes from.
//!
//! Like [`crate::subscription`], it reaches the connection task only through
//! [`crate::command`]; the task sends it undecoded [`ViewFeed`]s, so the task is not generic over
//! the record type.

use crate::command::{Cmd, CommandTx};
use crate::event::ViewFeed;
use crate::subscription::SubStatus;
use futures_util::Stream;
use herald_protocol::command::ViewQuery;
use herald_protocol::reply::{LeaveReason, NotRecovered, ViewOperation, ViewSubscribeResult};
use herald_protocol::{Command, ErrorBody, ErrorCode, Position, Publication};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Why a view ended: the hub's refusal, typed by the codes a view can get, or a record the
/// application's type cannot hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ViewError {
    /// `118 invalid_filter`: the filter does not parse or does not type-check against the
    /// entity (the message names the column), or the namespace allows no ad-hoc filters.
    #[error("invalid filter: {0}")]
    InvalidFilter(ErrorBody),
    /// `120 invalid_record`.
    #[error("invalid record: {0}")]
    InvalidRecord(ErrorBody),
    /// `107 bad_request`: for example a `by id` subscription without a key, or an unknown view.
    #[error("bad request: {0}")]
    BadRequest(ErrorBody),
    /// Any other refusal (forbidden, not keyed, a name already used, ...).
    #[error("server error {0}")]
    Server(ErrorBody),
    /// A record did not decode into the view's type; the view unsubscribed, since its rows can
    /// no longer be kept exact.
    #[error("record {key:?} does not decode: {message}")]
    Decode {
        /// The record's key.
        key: String,
        /// The decoder's error.
        message: String,
    },
}

impl ViewError {
    /// Types the hub's error by its code.
    pub fn from_body(body: ErrorBody) -> ViewError {
        match body.error_code() {
            Some(ErrorCode::InvalidFilter) => ViewError::InvalidFilter(body),
            Some(ErrorCode::InvalidRecord) => ViewError::InvalidRecord(body),
            Some(ErrorCode::BadRequest) => ViewError::BadRequest(body),
            _ => ViewError::Server(body),
        }
    }

    /// The hub's error, when the hub ended the view.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            ViewError::InvalidFilter(b)
            | ViewError::InvalidRecord(b)
            | ViewError::BadRequest(b)
            | ViewError::Server(b) => Some(b),
            ViewError::Decode { .. } => None,
        }
    }

    /// The hub's error code (118, 120, 107, ...), when the hub ended the view.
    pub fn code(&self) -> Option<u16> {
        self.body().map(|b| b.code)
    }
}

/// What a [`View`] stream yields. By the time an event is yielded, [`View::rows`] already
/// reflects it.
#[derive(Debug, Clone)]
pub enum ViewEvent<T> {
    /// The rows were replaced: by the first reply, or after a resume the hub's history could
    /// not serve (`resync` says why). Events after `position` follow.
    Ready {
        /// Where the rows stand.
        position: Position,
        /// `None` for the first rows; the reason on a reload.
        resync: Option<NotRecovered>,
    },
    /// A record entered the view.
    Insert {
        /// Its key.
        key: String,
        /// The record.
        record: T,
        /// The write that made the change (its position, type, time, meta, published data).
        publication: Publication,
    },
    /// A record in the view changed and is still in it.
    Update {
        /// Its key.
        key: String,
        /// The new record (after a merge: the merged record; `publication.data` is the patch).
        record: T,
        /// The row held before, if any.
        previous: Option<T>,
        /// The write that made the change.
        publication: Publication,
    },
    /// A record left the view.
    Delete {
        /// Its key.
        key: String,
        /// The row held before, if any.
        previous: Option<T>,
        /// Whether it stopped matching or was deleted.
        reason: LeaveReason,
        /// The write that made the change.
        publication: Publication,
    },
    /// The view ended for good; the stream ends after this.
    Ended {
        /// Why.
        error: ViewError,
    },
    /// A volatile event of the viewed channel (protocol §16): sent by a connection allowed to
    /// publish, delivered to whoever is connected, in no history and not filtered by the view.
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
}

/// A live view of a keyed channel: a [`Stream`] of [`ViewEvent`]s that keeps the matching
/// records by key ([`View::rows`]) exactly as the hub has them, in offset order, across
/// reconnects. Dropping it unsubscribes.
///
/// Records are decoded once for the rows and once for the event, so `T` needs no `Clone`.
/// The client buffers events without bound until the application reads them: rows change only
/// as events are polled, so read promptly.
pub struct View<T> {
    /// The subscription's name on the connection.
    name: String,
    /// The keyed channel viewed.
    channel: String,
    /// The view's records by key, as of the last event polled.
    rows: BTreeMap<String, T>,
    /// The position of the last event (or rows) polled.
    position: Option<Position>,
    /// Undecoded rows and events from the connection task.
    feed: mpsc::UnboundedReceiver<ViewFeed>,
    /// Unsubscribes on drop; taken early when the view ends on a decode error.
    guard: Option<ViewGuard>,
    /// An `Ended` was yielded: nothing more.
    ended: bool,
}

// The stream never pins its fields, so the handle is `Unpin` whatever `T` is.
impl<T> Unpin for View<T> {}

impl<T: DeserializeOwned> View<T> {
    /// Registers view `id` of `channel` with the connection task and returns its handle.
    pub(crate) fn start(
        commands: &CommandTx,
        id: u64,
        channel: String,
        mut query: ViewQuery,
    ) -> View<T> {
        let name = query.name(&channel);
        query.sub = Some(name.clone());
        let (tx, feed) = mpsc::unbounded_channel();
        let _ = commands.send(Cmd::SubscribeView { id, channel: channel.clone(), query, tx });
        View {
            guard: Some(ViewGuard { commands: commands.clone(), name: name.clone(), id }),
            name,
            channel,
            rows: BTreeMap::new(),
            position: None,
            feed,
            ended: false,
        }
    }

    /// The view's records by key, as of the last event polled.
    pub fn rows(&self) -> &BTreeMap<String, T> {
        &self.rows
    }

    /// One record of the view.
    pub fn get(&self, key: &str) -> Option<&T> {
        self.rows.get(key)
    }

    /// The position of the last event (or rows) polled; `None` before [`ViewEvent::Ready`].
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// The subscription's name on the connection (what the hub's events carry).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The keyed channel viewed.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next event, or `None` once the view ended or the client was closed.
    pub async fn next_event(&mut self) -> Option<ViewEvent<T>> {
        futures_util::StreamExt::next(self).await
    }

    /// Ends the view on a record it cannot decode: unsubscribes now.
    fn undecodable(&mut self, key: &str, e: serde_json::Error) -> ViewEvent<T> {
        self.guard = None;
        ViewEvent::Ended {
            error: ViewError::Decode { key: key.to_string(), message: e.to_string() },
        }
    }

    /// Applies one message from the connection task to the rows and types it.
    fn apply(&mut self, feed: ViewFeed) -> ViewEvent<T> {
        match feed {
            ViewFeed::Ready { rows, position, resync } => {
                let mut fresh = BTreeMap::new();
                for r in rows {
                    match serde_json::from_str(r.value.get()) {
                        Ok(v) => {
                            fresh.insert(r.key, v);
                        }
                        Err(e) => return self.undecodable(&r.key, e),
                    }
                }
                self.rows = fresh;
                self.position = Some(position.clone());
                ViewEvent::Ready { position, resync }
            }
            ViewFeed::Event(e) => {
                let e = *e;
                self.position = Some(Position {
                    epoch: e.publication.epoch.clone(),
                    offset: e.publication.offset,
                });
                let key = e.key;
                if e.operation == ViewOperation::Delete {
                    return ViewEvent::Delete {
                        previous: self.rows.remove(&key),
                        key,
                        reason: e.reason.unwrap_or(LeaveReason::Left),
                        publication: e.publication,
                    };
                }
                let raw = e.record.as_deref().map_or("null", |r| r.get());
                let decoded = serde_json::from_str(raw)
                    .and_then(|kept| Ok((kept, serde_json::from_str(raw)?)));
                let (kept, record) = match decoded {
                    Ok(pair) => pair,
                    Err(err) => return self.undecodable(&key, err),
                };
                let previous = self.rows.insert(key.clone(), kept);
                match e.operation {
                    ViewOperation::Insert => {
                        ViewEvent::Insert { key, record, publication: e.publication }
                    }
                    _ => ViewEvent::Update { key, record, previous, publication: e.publication },
                }
            }
            ViewFeed::Ended(error) => {
                self.guard = None;
                ViewEvent::Ended { error: ViewError::from_body(error) }
            }
            ViewFeed::Volatile(v) => {
                ViewEvent::Volatile { kind: v.kind, data: v.data, user: v.user, client: v.client }
            }
        }
    }
}

impl<T: DeserializeOwned> Stream for View<T> {
    type Item = ViewEvent<T>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ViewEvent<T>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.feed.poll_recv(cx) {
            Poll::Ready(Some(feed)) => {
                let event = this.apply(feed);
                this.ended = matches!(event, ViewEvent::Ended { .. });
                Poll::Ready(Some(event))
            }
            other => other.map(|_| None),
        }
    }
}

/// Unsubscribes when a [`View`] is dropped.
struct ViewGuard {
    /// The connection task's command channel.
    commands: CommandTx,
    /// The view's name on the connection.
    name: String,
    /// Which view with that name this is.
    id: u64,
}

impl Drop for ViewGuard {
    fn drop(&mut self) {
        let _ = self
            .commands
            .send(Cmd::UnsubscribeView { id: self.id, name: std::mem::take(&mut self.name) });
    }
}

/// One application view as the connection task keeps it, alive across connections.
pub(crate) struct ViewSub {
    /// Tells this view apart from an older one with the same name.
    pub id: u64,
    /// The keyed channel viewed.
    pub channel: String,
    /// What the subscribe asks for; `sub` is set.
    pub query: ViewQuery,
    /// Where rows and events go.
    pub tx: mpsc::UnboundedSender<ViewFeed>,
    /// The position of the last event delivered, or of the last reply; what a resume starts
    /// after. `None` until the first reply.
    pub last: Option<Position>,
    /// Where its subscribe stands on the current connection.
    pub status: SubStatus,
}

/// How a live view event compares with what was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventFit {
    /// Deliver it.
    Next,
    /// Already delivered (offset ≤ last): drop it.
    Duplicate,
    /// Another epoch: the stream was reset; subscribe again from the last position.
    Reset,
}

impl ViewSub {
    /// A view not subscribed on any connection yet.
    pub fn new(
        id: u64,
        channel: String,
        query: ViewQuery,
        tx: mpsc::UnboundedSender<ViewFeed>,
    ) -> ViewSub {
        ViewSub { id, channel, query, tx, last: None, status: SubStatus::Idle }
    }

    /// The subscribe for this view: from scratch the first time, then resuming after `last`.
    pub fn subscribe_command(&self) -> Command {
        Command::Subscribe {
            channel: self.channel.clone(),
            since: self.last.clone(),
            snapshot: false,
            view: self.query.clone(),
            presence: Default::default(),
            preview: None,
        }
    }

    /// The unsubscribe that ends the server's side of this view.
    pub fn unsubscribe_command(&self) -> Command {
        Command::Unsubscribe { channel: self.channel.clone(), sub: self.query.sub.clone() }
    }

    /// Classifies a live event and, when it is delivered, advances `last`.
    pub fn accept(&mut self, p: &Publication) -> EventFit {
        let Some(last) = &mut self.last else {
            return EventFit::Reset;
        };
        if p.epoch != last.epoch {
            EventFit::Reset
        } else if p.offset <= last.offset {
            EventFit::Duplicate
        } else {
            last.offset = p.offset;
            EventFit::Next
        }
    }

    /// Applies a successful reply to a subscribe that asked for `since`: fresh rows replace the
    /// held ones, replayed events are delivered (dropping what was delivered already), and the
    /// view becomes active at the reply's position. Returns false when the reply cannot be
    /// applied (replayed events of another epoch, or no rows where rows are needed): the view
    /// then starts over with a fresh subscribe.
    pub fn apply_reply(&mut self, since: Option<&Position>, reply: ViewSubscribeResult) -> bool {
        let position = reply.position();
        self.status = SubStatus::Active;
        if let Some(rows) = reply.initial {
            let resync = since.map(|s| {
                reply.reason.unwrap_or(if s.epoch == reply.epoch {
                    NotRecovered::HistoryTrimmed
                } else {
                    NotRecovered::EpochChanged
                })
            });
            self.last = Some(position.clone());
            let _ = self.tx.send(ViewFeed::Ready { rows, position, resync });
            return true;
        }
        let Some(since) = since.filter(|s| s.epoch == reply.epoch) else {
            self.last = None;
            return false;
        };
        if self.last.as_ref().is_none_or(|l| l.epoch != since.epoch || l.offset < since.offset) {
            self.last = Some(since.clone());
        }
        for event in reply.events {
            match self.accept(&event.publication) {
                EventFit::Next => {
                    let _ = self.tx.send(ViewFeed::Event(Box::new(event)));
                }
                EventFit::Duplicate => {}
                EventFit::Reset => {
                    self.last = None;
                    return false;
                }
            }
        }
        if let Some(last) = &mut self.last {
            last.offset = last.offset.max(position.offset);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::Record;
    use serde_json::value::RawValue;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.into()).unwrap()
    }

    fn event(
        epoch: &str,
        offset: u64,
        op: ViewOperation,
        key: &str,
        record: Option<&str>,
    ) -> herald_protocol::ViewEvent {
        herald_protocol::ViewEvent {
            sub: "c#v".into(),
            operation: op,
            key: key.into(),
            record: record.map(raw),
            reason: (op == ViewOperation::Delete).then_some(LeaveReason::Left),
            publication: Publication {
                channel: "c".into(),
                epoch: epoch.into(),
                offset,
                id: format!("{epoch}-{offset}"),
                kind: "message".into(),
                data: raw("null"),
                time: "t".into(),
                meta: Default::default(),
                key: Some(key.into()),
                op: None,
                truncated: None,
            },
        }
    }

    fn reply(epoch: &str, offset: u64) -> ViewSubscribeResult {
        ViewSubscribeResult {
            sub: "c#v".into(),
            channel: "c".into(),
            epoch: epoch.into(),
            offset,
            view: None,
            filter: None,
            key: None,
            recovered: None,
            reason: None,
            initial: None,
            events: Vec::new(),
        }
    }

    fn pos(epoch: &str, offset: u64) -> Position {
        Position { epoch: epoch.into(), offset }
    }

    fn sub() -> (ViewSub, mpsc::UnboundedReceiver<ViewFeed>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ViewSub::new(1, "c".into(), ViewQuery::default(), tx), rx)
    }

    fn offsets(rx: &mut mpsc::UnboundedReceiver<ViewFeed>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            match f {
                ViewFeed::Event(e) => out.push(e.publication.offset),
                ViewFeed::Ready { position, .. } => out.push(1000 + position.offset),
                ViewFeed::Ended(_) => out.push(u64::MAX),
                ViewFeed::Volatile(_) => {}
            }
        }
        out
    }

    #[test]
    fn initial_rows_then_live_events_skip_offsets_and_drop_duplicates() {
        let (mut s, mut rx) = sub();
        let mut r = reply("e", 4);
        r.initial = Some(vec![Record { key: "a".into(), value: raw("1"), offset: 3 }]);
        assert!(s.apply_reply(None, r));
        assert_eq!(offsets(&mut rx), [1004]);
        let p = |o| event("e", o, ViewOperation::Update, "a", Some("2")).publication;
        assert_eq!(s.accept(&p(4)), EventFit::Duplicate);
        assert_eq!(s.accept(&p(7)), EventFit::Next, "views skip writes that do not touch them");
        assert_eq!(s.accept(&p(6)), EventFit::Duplicate);
        assert_eq!(
            s.accept(&event("f", 8, ViewOperation::Insert, "a", Some("1")).publication),
            EventFit::Reset
        );
        assert_eq!(s.last, Some(pos("e", 7)));
    }

    #[test]
    fn a_recovered_resume_replays_only_what_was_not_delivered() {
        let (mut s, mut rx) = sub();
        s.last = Some(pos("e", 7));
        let mut r = reply("e", 12);
        r.recovered = Some(true);
        r.events = vec![
            event("e", 6, ViewOperation::Insert, "a", Some("1")),
            event("e", 9, ViewOperation::Update, "a", Some("2")),
            event("e", 11, ViewOperation::Delete, "a", None),
        ];
        assert!(s.apply_reply(Some(&pos("e", 7)), r));
        assert_eq!(offsets(&mut rx), [9, 11]);
        assert_eq!(s.last, Some(pos("e", 12)), "the next resume starts at the reply's position");
        assert!(
            matches!(s.subscribe_command(), Command::Subscribe { since: Some(p), .. } if p == pos("e", 12))
        );
    }

    #[test]
    fn a_resume_that_is_not_recovered_replaces_the_rows() {
        let (mut s, mut rx) = sub();
        s.last = Some(pos("old", 40));
        let mut r = reply("new", 3);
        r.recovered = Some(false);
        r.reason = Some(NotRecovered::EpochChanged);
        r.initial = Some(vec![]);
        assert!(s.apply_reply(Some(&pos("old", 40)), r));
        match rx.try_recv().unwrap() {
            ViewFeed::Ready { position, resync, .. } => {
                assert_eq!((position, resync), (pos("new", 3), Some(NotRecovered::EpochChanged)));
            }
            other => panic!("expected Ready, got {other:?}"),
        }
        assert_eq!(s.last, Some(pos("new", 3)));
    }

    #[test]
    fn a_reply_without_rows_from_another_epoch_starts_over() {
        let (mut s, _rx) = sub();
        s.last = Some(pos("e", 5));
        assert!(!s.apply_reply(Some(&pos("e", 5)), reply("f", 2)));
        assert_eq!(s.last, None, "the next subscribe asks for fresh rows");
    }

    #[test]
    fn the_handle_keeps_rows_and_reports_previous_values() {
        let (tx, feed) = mpsc::unbounded_channel();
        let mut v: View<i64> = View {
            name: "c#v".into(),
            channel: "c".into(),
            rows: BTreeMap::new(),
            position: None,
            feed,
            guard: None,
            ended: false,
        };
        let rows = vec![Record { key: "a".into(), value: raw("1"), offset: 1 }];
        let ready = v.apply(ViewFeed::Ready { rows, position: pos("e", 1), resync: None });
        assert!(matches!(ready, ViewEvent::Ready { .. }));
        let up = v.apply(ViewFeed::Event(Box::new(event(
            "e",
            2,
            ViewOperation::Update,
            "a",
            Some("5"),
        ))));
        assert!(matches!(up, ViewEvent::Update { record: 5, previous: Some(1), .. }));
        let ins = v.apply(ViewFeed::Event(Box::new(event(
            "e",
            3,
            ViewOperation::Insert,
            "b",
            Some("7"),
        ))));
        assert!(matches!(ins, ViewEvent::Insert { record: 7, .. }));
        let del =
            v.apply(ViewFeed::Event(Box::new(event("e", 4, ViewOperation::Delete, "a", None))));
        assert!(matches!(
            del,
            ViewEvent::Delete { previous: Some(5), reason: LeaveReason::Left, .. }
        ));
        assert_eq!(v.rows().iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(), [("b", 7)]);
        assert_eq!(v.position(), Some(&pos("e", 4)));
        let bad = v.apply(ViewFeed::Event(Box::new(event(
            "e",
            5,
            ViewOperation::Insert,
            "c",
            Some("\"x\""),
        ))));
        assert!(matches!(bad, ViewEvent::Ended { error: ViewError::Decode { .. } }));
        drop(tx);
    }
}
