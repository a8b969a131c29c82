//! One subscription: the [`Subscription`] handle the application reads (a stream of
//! [`SubEvent`]s that unsubscribes on drop), the record the connection task keeps for it across
//! connections ([`Sub`]), and the ordering logic ([`Tracker`]) that turns subscribe replies and
//! live publications into exactly-once, in-order delivery. On a presence namespace the handle
//! also keeps the channel's members from the presence events it yields (see
//! [`crate::presence`]).
//!
//! It reaches the connection task only through the command channel of [`crate::command`].

use crate::command::{Cmd, CommandTx};
use crate::error::Error;
use crate::event::{Member, SubEvent, SubscribeOptions};
use crate::presence::{self, PresenceTracker};
use futures_util::Stream;
use herald_protocol::reply::{NotRecovered, SubscribeResult};
use herald_protocol::{Continuity, Position, Publication};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// A live subscription: a [`Stream`] of [`SubEvent`]s. Dropping it unsubscribes.
///
/// The client buffers events without bound until the application reads them, so read promptly.
/// The member map ([`Subscription::presence`]) changes only as events are read.
pub struct Subscription {
    /// The subscribed channel, for [`Subscription::channel`].
    channel: String,
    /// Events from the connection task, in delivery order.
    events: mpsc::UnboundedReceiver<SubEvent>,
    /// The channel's members as of the last event read (presence [`crate::PresenceMode::Members`]).
    members: BTreeMap<String, Member>,
    /// How long [`Subscription::set_presence`] waits for its reply.
    request_timeout: Duration,
    /// Sends the unsubscribe when the handle is dropped.
    _guard: SubGuard,
}

impl Subscription {
    /// Registers subscription `id` to `channel` with the connection task and returns its handle.
    pub(crate) fn start(
        commands: &CommandTx,
        id: u64,
        channel: String,
        opts: SubscribeOptions,
        request_timeout: Duration,
    ) -> Subscription {
        let (tx, events) = mpsc::unbounded_channel();
        let _ = commands.send(Cmd::Subscribe { id, channel: channel.clone(), opts, tx });
        Subscription {
            channel: channel.clone(),
            events,
            members: BTreeMap::new(),
            request_timeout,
            _guard: SubGuard { commands: commands.clone(), channel, id },
        }
    }

    /// The subscribed channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next event, or `None` once the subscription ended or the client was closed.
    pub async fn next_event(&mut self) -> Option<SubEvent> {
        let mut event = self.events.recv().await?;
        presence::apply(&mut self.members, &mut event);
        Some(event)
    }

    /// The channel's members by member id (`USER/ID`), as of the last event read; empty unless
    /// the subscription follows presence with [`crate::PresenceMode::Members`].
    pub fn presence(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// Changes this member's `info` (`presence_update`). The client remembers it and sends it
    /// again with every resubscribe, so it survives reconnects; while not connected it is only
    /// remembered, and the next subscribe carries it.
    pub async fn set_presence(&self, info: serde_json::Value) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        let cmd =
            Cmd::SetPresence { id: self._guard.id, channel: self.channel.clone(), info, reply };
        self._guard.commands.send(cmd).map_err(|_| Error::Closed)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(_)) => Err(Error::Closed),
            Ok(Ok(result)) => result.map(|_| ()),
        }
    }
}

impl Stream for Subscription {
    type Item = SubEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SubEvent>> {
        let this = &mut *self;
        match this.events.poll_recv(cx) {
            Poll::Ready(Some(mut event)) => {
                presence::apply(&mut this.members, &mut event);
                Poll::Ready(Some(event))
            }
            other => other,
        }
    }
}

/// Unsubscribes when a [`Subscription`] is dropped.
struct SubGuard {
    /// The connection task's command channel.
    commands: CommandTx,
    /// The channel to unsubscribe from.
    channel: String,
    /// Which subscription to the channel this is.
    id: u64,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        let _ = self
            .commands
            .send(Cmd::Unsubscribe { id: self.id, channel: std::mem::take(&mut self.channel) });
    }
}

/// One application subscription as the connection task keeps it, alive across connections.
pub(crate) struct Sub {
    /// Tells this subscription apart from an older one to the same channel (see
    /// [`Cmd::Unsubscribe`]).
    pub id: u64,
    /// Where the application's events go.
    pub tx: mpsc::UnboundedSender<SubEvent>,
    /// What the application asked for (start position, snapshot).
    pub opts: SubscribeOptions,
    /// The last delivered position and the rules that keep delivery in order.
    pub tracker: Tracker,
    /// The last applied presence position, for `presence_since`.
    pub presence: PresenceTracker,
    /// No reply accepted yet: the next one yields `Subscribed`.
    pub initial: bool,
    /// Where its subscribe stands on the current connection.
    pub status: SubStatus,
    /// Protocol v2: its number on the current connection (the last reply's `n`).
    pub number: Option<u32>,
    /// A large publication being received in parts (protocol §18).
    pub chunks: herald_protocol::chunk::Assembler,
}

/// Where a subscription's subscribe stands on the current connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SubStatus {
    /// Needs a subscribe on the next connection.
    Idle,
    /// A subscribe is in flight.
    Pending,
    /// Publications flow.
    Active,
    /// Refused with a transient error; try again at this instant.
    RetryAt(Instant),
}

impl Sub {
    /// A subscription not subscribed on any connection yet.
    pub fn new(id: u64, tx: mpsc::UnboundedSender<SubEvent>, opts: SubscribeOptions) -> Sub {
        Sub {
            id,
            tx,
            opts,
            tracker: Tracker::default(),
            presence: PresenceTracker::default(),
            initial: true,
            status: SubStatus::Idle,
            number: None,
            chunks: Default::default(),
        }
    }

    /// What the next subscribe asks for: `since` (the application's start before the first
    /// reply, then the last delivered position) and whether to ask for a snapshot (first only).
    pub fn resume_from(&self) -> (Option<Position>, bool) {
        let since = if self.initial { self.opts.since.clone() } else { self.tracker.last.clone() };
        (since, self.initial && self.opts.snapshot)
    }

    /// Applies a successful subscribe reply to a subscribe that asked for `since`: delivers its
    /// events and makes the subscription active. Returns whether the reply had a hole and the
    /// channel must be subscribed again.
    pub fn apply_reply(&mut self, since: Option<&Position>, reply: SubscribeResult) -> bool {
        let outcome = self.tracker.on_reply(self.initial, since, reply);
        self.initial = false;
        self.status = SubStatus::Active;
        for event in outcome.events {
            let _ = self.tx.send(event);
        }
        outcome.resubscribe
    }
}

/// What to do after a subscribe reply.
#[derive(Debug)]
pub(crate) struct ReplyOutcome {
    /// Events for the application, in order.
    pub events: Vec<SubEvent>,
    /// The reply itself had a hole: subscribe again (with `since` = the tracker's last).
    pub resubscribe: bool,
}

/// The last delivered position of one subscription, and the rules that keep delivery in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    /// The position of the last publication delivered (or of the subscribe reply); `None` before
    /// the first reply.
    pub last: Option<Position>,
}

impl Tracker {
    /// Classifies a live publication and, when it is delivered, advances `last`.
    pub fn accept(&mut self, p: &Publication) -> Continuity {
        let Some(last) = &mut self.last else {
            return Continuity::Gap;
        };
        let c = Continuity::of(&last.epoch, last.offset, &p.epoch, p.offset);
        if c == Continuity::Next {
            last.offset = p.offset;
        }
        c
    }

    /// Applies a subscribe reply. `since` is what the subscribe asked to resume from; `initial`
    /// says whether the application has yet to see a [`SubEvent::Subscribed`].
    pub fn on_reply(
        &mut self,
        initial: bool,
        since: Option<&Position>,
        mut r: SubscribeResult,
    ) -> ReplyOutcome {
        let position = r.position();
        let mut events = Vec::new();
        if initial {
            let snapshot = if since.is_none() { r.snapshot.take() } else { None };
            events.push(SubEvent::Subscribed { position: position.clone(), snapshot });
        }
        let Some(since) = since else {
            self.last = Some(position);
            return ReplyOutcome { events, resubscribe: false };
        };
        let same_epoch = since.epoch == r.epoch;
        let fills = same_epoch && {
            let mut next = since.offset;
            r.publications.iter().all(|p| {
                let ok = p.epoch == r.epoch && (p.offset <= next || p.offset == next + 1);
                next = next.max(p.offset);
                ok
            }) && next >= r.offset
        };
        let recovered = match r.recovered {
            Some(flag) => flag && same_epoch,
            None => fills,
        };
        if !recovered {
            let reason = r.reason.unwrap_or(if same_epoch {
                NotRecovered::HistoryTrimmed
            } else {
                NotRecovered::EpochChanged
            });
            self.last = Some(position.clone());
            events.push(SubEvent::Resync { reason, position, snapshot: r.snapshot.take() });
            return ReplyOutcome { events, resubscribe: false };
        }
        if self.last.as_ref().is_none_or(|l| l.epoch != since.epoch || l.offset < since.offset) {
            self.last = Some(since.clone());
        }
        for p in r.publications {
            match self.accept(&p) {
                Continuity::Next => events.push(SubEvent::Publication(p)),
                Continuity::Duplicate => {}
                Continuity::Gap => {
                    return ReplyOutcome { events, resubscribe: true };
                }
            }
        }
        let behind = self.last.as_ref().is_some_and(|l| l.offset < r.offset);
        ReplyOutcome { events, resubscribe: behind }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn publication(epoch: &str, offset: u64) -> Publication {
        Publication {
            channel: "c".into(),
            epoch: epoch.into(),
            offset,
            id: format!("{epoch}-{offset}"),
            kind: "message".into(),
            data: RawValue::from_string("null".into()).unwrap(),
            time: "t".into(),
            meta: Default::default(),
            key: None,
            op: None,
            truncated: None,
        }
    }

    fn pos(epoch: &str, offset: u64) -> Position {
        Position { epoch: epoch.into(), offset }
    }

    fn reply(
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
        pubs: Vec<Publication>,
    ) -> SubscribeResult {
        SubscribeResult {
            channel: "c".into(),
            epoch: epoch.into(),
            offset,
            keyed: false,
            recovered,
            reason: None,
            publications: pubs,
            snapshot: None,
            n: None,
        }
    }

    fn offsets(events: &[SubEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                SubEvent::Publication(p) => Some(p.offset),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn live_publications_are_delivered_once_in_order() {
        let mut t = Tracker::default();
        let out = t.on_reply(true, None, reply("e", 5, None, vec![]));
        assert!(
            matches!(&out.events[..], [SubEvent::Subscribed { position, .. }] if position.offset == 5)
        );
        assert_eq!(t.accept(&publication("e", 5)), Continuity::Duplicate);
        assert_eq!(t.accept(&publication("e", 6)), Continuity::Next);
        assert_eq!(t.accept(&publication("e", 6)), Continuity::Duplicate);
        assert_eq!(t.accept(&publication("e", 8)), Continuity::Gap);
        assert_eq!(t.last, Some(pos("e", 6)), "a gap does not move the position");
        assert_eq!(t.accept(&publication("x", 7)), Continuity::Gap, "another epoch is a gap");
        assert_eq!(t.accept(&publication("e", 7)), Continuity::Next);
    }

    #[test]
    fn recovered_resume_skips_what_was_delivered() {
        let mut t = Tracker { last: Some(pos("e", 6)) };
        let pubs = (5..=9).map(|o| publication("e", o)).collect();
        let out = t.on_reply(false, Some(&pos("e", 6)), reply("e", 9, Some(true), pubs));
        assert_eq!(offsets(&out.events), [7, 8, 9]);
        assert!(!out.resubscribe);
        assert_eq!(t.last, Some(pos("e", 9)));
    }

    #[test]
    fn a_hole_in_the_recovery_asks_for_another_resubscribe() {
        let mut t = Tracker { last: Some(pos("e", 2)) };
        let pubs = vec![publication("e", 3), publication("e", 5)];
        let out = t.on_reply(false, Some(&pos("e", 2)), reply("e", 5, Some(true), pubs));
        assert_eq!(offsets(&out.events), [3]);
        assert!(out.resubscribe);
        assert_eq!(t.last, Some(pos("e", 3)));
        let short = t.on_reply(
            false,
            Some(&pos("e", 3)),
            reply("e", 6, Some(true), vec![publication("e", 4)]),
        );
        assert_eq!(offsets(&short.events), [4]);
        assert!(short.resubscribe, "recovery that stops before the reply's offset is a gap");
    }

    #[test]
    fn not_recovered_yields_resync_with_the_reason() {
        let mut t = Tracker { last: Some(pos("old", 40)) };
        let mut r = reply("new", 3, Some(false), vec![]);
        r.reason = Some(NotRecovered::EpochChanged);
        let out = t.on_reply(false, Some(&pos("old", 40)), r);
        assert!(matches!(
            &out.events[..],
            [SubEvent::Resync { reason: NotRecovered::EpochChanged, position, .. }] if *position == pos("new", 3)
        ));
        assert_eq!(t.last, Some(pos("new", 3)));
        assert_eq!(t.accept(&publication("new", 4)), Continuity::Next);
    }

    #[test]
    fn missing_recovered_flag_is_inferred() {
        let mut t = Tracker { last: Some(pos("e", 1)) };
        let out =
            t.on_reply(false, Some(&pos("e", 1)), reply("e", 2, None, vec![publication("e", 2)]));
        assert_eq!(offsets(&out.events), [2]);
        let out = t.on_reply(false, Some(&pos("e", 2)), reply("e", 9, None, vec![]));
        assert!(matches!(
            &out.events[..],
            [SubEvent::Resync { reason: NotRecovered::HistoryTrimmed, .. }]
        ));
        let out = t.on_reply(false, Some(&pos("e", 9)), reply("f", 0, None, vec![]));
        assert!(matches!(
            &out.events[..],
            [SubEvent::Resync { reason: NotRecovered::EpochChanged, .. }]
        ));
    }

    #[test]
    fn initial_resume_from_a_user_position() {
        let mut t = Tracker::default();
        let out = t.on_reply(
            true,
            Some(&pos("e", 1)),
            reply("e", 3, Some(true), vec![publication("e", 2), publication("e", 3)]),
        );
        assert!(matches!(out.events[0], SubEvent::Subscribed { .. }));
        assert_eq!(offsets(&out.events), [2, 3]);
    }

    #[test]
    fn before_the_first_reply_everything_is_a_gap() {
        let mut t = Tracker::default();
        assert_eq!(t.accept(&publication("e", 1)), Continuity::Gap);
    }
}
