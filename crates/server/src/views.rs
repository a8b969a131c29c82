//! Live views: a subscriber follows the records of a keyed channel that match a filter.
//!
//! For every keyed write the fan-out holds the record before and after it
//! ([`RecordChange`]), so each view decides exactly what the write did to its rows: out→in is
//! `insert`, in→in `update`, in→out `delete` (`left` the view, or `deleted`), out→out nothing.
//! The same decision replays a resume from the history, so a view resumes like a channel.
//!
//! # Routing
//!
//! A write must not cost one evaluation per view. Each view with an index term (an equality or
//! `in` conjunct of its filter, or a single key) is filed under the values of that term; a write
//! is routed to the views filed under the old or new record's value at each indexed path, plus
//! the few views without a term. 10,000 views of `assignee == "uN"` on one channel cost two map
//! lookups per write, not 10,000 filter evaluations.
//!
//! # Order
//!
//! A view is registered (pending, buffering every write) before its subscribe reads the
//! channel, and activated under the channel's lock: the reply is queued, then the buffered
//! writes after the read position, then live ones. The fan-out delivers each channel in offset
//! order (or resets it), so a view's events are complete and in order.

use crate::frame::{Encoded, RecordChange};
use crate::outbox::{Outbox, Outgoing};
use herald_protocol::reply::{LeaveReason, ViewOperation};
use herald_spec::Filter;
use herald_spec::filter::{IndexValue, Path};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// What a view subscription selects: the filter in force and, for a view of one record, its
/// key.
#[derive(Debug)]
pub struct Selection {
    /// Records must match it (`None`: every record, for a view of one key).
    pub filter: Option<Filter>,
    /// Only this record (`Entity by id`, or `subscribe` with `key`).
    pub key: Option<String>,
    /// The index term of `filter`, computed once.
    term: Option<(Path, Vec<IndexValue>)>,
}

impl Selection {
    /// A selection of the records matching `filter` (and, with `key`, of that record only).
    pub fn new(filter: Option<Filter>, key: Option<String>) -> Selection {
        let term = filter.as_ref().and_then(Filter::index_term);
        Selection { filter, key, term }
    }

    /// Whether the record `key` with value `record` (absent: no record) is in the view.
    pub fn contains(&self, key: &str, record: Option<&Value>) -> bool {
        let Some(record) = record else { return false };
        if self.key.as_deref().is_some_and(|k| k != key) {
            return false;
        }
        self.filter.as_ref().is_none_or(|f| f.matches(record))
    }

    /// What a write of `key` from `before` to `after` does to the view.
    pub fn decide(
        &self,
        key: &str,
        before: Option<&Value>,
        after: Option<&Value>,
    ) -> Option<(ViewOperation, Option<LeaveReason>)> {
        match (self.contains(key, before), self.contains(key, after)) {
            (false, true) => Some((ViewOperation::Insert, None)),
            (true, true) => Some((ViewOperation::Update, None)),
            (true, false) if after.is_none() => {
                Some((ViewOperation::Delete, Some(LeaveReason::Deleted)))
            }
            (true, false) => Some((ViewOperation::Delete, Some(LeaveReason::Left))),
            (false, false) => None,
        }
    }
}

/// A write's old and new record, parsed at most once however many views look at them.
pub struct Parsed<'a> {
    change: &'a RecordChange,
    before: OnceLock<Option<Value>>,
    after: OnceLock<Option<Value>>,
}

impl<'a> Parsed<'a> {
    /// Wraps a change.
    pub fn new(change: &'a RecordChange) -> Parsed<'a> {
        Parsed { change, before: OnceLock::new(), after: OnceLock::new() }
    }

    fn parse(raw: &Option<Arc<RawValue>>) -> Option<Value> {
        // A stored record that is not JSON any more counts as no record (it cannot match).
        raw.as_ref().and_then(|r| serde_json::from_str(r.get()).ok())
    }

    /// The record before the write.
    pub fn before(&self) -> Option<&Value> {
        self.before.get_or_init(|| Parsed::parse(&self.change.before)).as_ref()
    }

    /// The record after the write.
    pub fn after(&self) -> Option<&Value> {
        self.after.get_or_init(|| Parsed::parse(&self.change.after)).as_ref()
    }

    /// What the write does to a view, if anything.
    pub fn decide(&self, view: &Selection) -> Option<(ViewOperation, Option<LeaveReason>)> {
        view.decide(&self.change.key, self.before(), self.after())
    }
}

/// One view event as a JSON object, without the `push` field (the form of a subscribe reply's
/// `events`): `{"sub":..,"operation":..,"key":..,"record"?:..,"reason"?:..,"pub":{..}}`.
pub fn event_json(
    sub: &str,
    operation: ViewOperation,
    reason: Option<LeaveReason>,
    change: &RecordChange,
    publication: &Encoded,
) -> String {
    event_with_prefix("{", sub, operation, reason, change, publication)
}

/// One view event as a push frame (`{"push":"view",...}`).
pub fn event_push(
    sub: &str,
    operation: ViewOperation,
    reason: Option<LeaveReason>,
    change: &RecordChange,
    publication: &Encoded,
) -> String {
    event_with_prefix(r#"{"push":"view","#, sub, operation, reason, change, publication)
}

fn event_with_prefix(
    prefix: &str,
    sub: &str,
    operation: ViewOperation,
    reason: Option<LeaveReason>,
    change: &RecordChange,
    publication: &Encoded,
) -> String {
    let pub_json = publication.publication_json();
    let record = match operation {
        ViewOperation::Delete => None,
        _ => change.after.as_deref(),
    };
    let mut out = String::with_capacity(
        prefix.len()
            + 64
            + sub.len()
            + change.key.len()
            + record.map_or(0, |r| r.get().len())
            + pub_json.len(),
    );
    out.push_str(prefix);
    out.push_str(r#""sub":"#);
    push_json_str(&mut out, sub);
    out.push_str(r#","operation":""#);
    out.push_str(operation.as_str());
    out.push_str(r#"","key":"#);
    push_json_str(&mut out, &change.key);
    if let Some(r) = record {
        out.push_str(r#","record":"#);
        out.push_str(r.get());
    }
    if let Some(reason) = reason {
        out.push_str(r#","reason":""#);
        out.push_str(reason.as_str());
        out.push('"');
    }
    out.push_str(r#","pub":"#);
    out.push_str(pub_json);
    out.push('}');
    out
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("strings serialize"));
}

/// How a view's events are written.
#[derive(Debug)]
pub enum Format {
    /// `{"push":"view",...}` (protocol §14).
    View,
    /// A presence stream followed as `{"push":"presence",...}` events of `channel` (§15).
    Presence {
        /// The channel whose members these are.
        channel: Arc<str>,
    },
    /// A presence stream followed as member and user counts of `channel`.
    Counts {
        /// The channel whose members these are.
        channel: Arc<str>,
        /// Members now.
        members: usize,
        /// Members per user now.
        users: HashMap<String, usize>,
    },
}

impl Format {
    /// Counts starting from these member records.
    pub fn counts(channel: Arc<str>, records: &[herald_protocol::Record]) -> Format {
        let mut users: HashMap<String, usize> = HashMap::new();
        for r in records {
            *users.entry(user_of(Some(&r.value))).or_default() += 1;
        }
        Format::Counts { channel, members: records.len(), users }
    }
}

/// The `user` of a member record.
fn user_of(record: Option<&RawValue>) -> String {
    #[derive(serde::Deserialize)]
    struct User {
        #[serde(default)]
        user: String,
    }
    record
        .and_then(|r| serde_json::from_str::<User>(r.get()).ok())
        .map(|u| u.user)
        .unwrap_or_default()
}

/// A presence event (`{"push":"presence",...}`) for a write of a presence stream.
pub fn presence_event(
    channel: &str,
    operation: ViewOperation,
    parsed: &Parsed<'_>,
    change: &RecordChange,
    p: &Encoded,
) -> String {
    let (event, record) = match operation {
        ViewOperation::Insert => ("join", parsed.after()),
        ViewOperation::Update => ("update", parsed.after()),
        ViewOperation::Delete => ("leave", parsed.before()),
    };
    let field = |name: &str| record.and_then(|r| r.get(name)).cloned().unwrap_or(Value::Null);
    let mut event = serde_json::json!({
        "push": "presence", "channel": channel, "event": event, "member": change.key,
        "user": field("user"), "client": field("client"), "node": field("node"),
        "epoch": &*p.epoch, "offset": p.offset,
    });
    if operation != ViewOperation::Delete {
        event["info"] = field("info");
    }
    event.to_string()
}

/// Where a view stands.
enum Stage {
    /// Registered, its subscribe still reading: every write is kept for when it activates.
    Pending(Vec<Arc<Encoded>>),
    /// Live: writes after `from` become events.
    Active {
        /// Offset the subscriber's reply brought it to.
        from: u64,
    },
    /// Reset (the node lost the channel's stream): no more events until the session removes
    /// it.
    Dead,
}

/// One view subscription on this node.
struct Entry {
    /// The session that holds it.
    session: u64,
    /// Its name on that session.
    sub: Arc<str>,
    /// The channel, for the `ViewReset` the session gets.
    channel: Arc<str>,
    /// Where its events go.
    outbox: Arc<Outbox>,
    /// What it selects.
    selection: Arc<Selection>,
    /// How its events are written.
    format: Format,
    /// Pending, active or dead.
    stage: Stage,
}

/// Where an entry is filed for routing.
enum Filed {
    /// Under its one key.
    Key(String),
    /// Under each value of its index term.
    Term(Path, Vec<IndexValue>),
    /// Looked at for every write.
    Scan,
}

/// The view subscriptions of one channel on this node, indexed for routing.
#[derive(Default)]
pub struct ViewSet {
    /// Entries by slot; `None` is a free slot.
    entries: Vec<Option<Entry>>,
    /// Free slots.
    free: Vec<usize>,
    /// Slot of each (session, sub).
    by_sub: HashMap<(u64, Arc<str>), usize>,
    /// Views of one key, by key.
    by_key: HashMap<String, Vec<usize>>,
    /// Views with an index term: path → value → slots.
    by_term: HashMap<Path, HashMap<IndexValue, Vec<usize>>>,
    /// Views without an index term.
    scan: Vec<usize>,
    /// Views whose subscribe has not activated them yet.
    pending: Vec<usize>,
}

fn unfile(list: &mut Vec<usize>, slot: usize) {
    if let Some(at) = list.iter().position(|&s| s == slot) {
        list.swap_remove(at);
    }
}

impl ViewSet {
    /// Number of view subscriptions.
    pub fn len(&self) -> usize {
        self.by_sub.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.by_sub.is_empty()
    }

    /// Registers a pending view (replacing one of the same session and name).
    pub fn add(
        &mut self,
        channel: Arc<str>,
        session: u64,
        sub: Arc<str>,
        outbox: Arc<Outbox>,
        selection: Arc<Selection>,
        format: Format,
    ) {
        self.remove(session, &sub);
        let filed = match (&selection.key, &selection.term) {
            (Some(k), _) => Filed::Key(k.clone()),
            (None, Some((path, values))) => Filed::Term(path.clone(), values.clone()),
            (None, None) => Filed::Scan,
        };
        let entry = Entry {
            session,
            sub: sub.clone(),
            channel,
            outbox,
            selection,
            format,
            stage: Stage::Pending(Vec::new()),
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot] = Some(entry);
                slot
            }
            None => {
                self.entries.push(Some(entry));
                self.entries.len() - 1
            }
        };
        match filed {
            Filed::Key(k) => self.by_key.entry(k).or_default().push(slot),
            Filed::Term(path, values) => {
                let by_value = self.by_term.entry(path).or_default();
                for v in values {
                    by_value.entry(v).or_default().push(slot);
                }
            }
            Filed::Scan => self.scan.push(slot),
        }
        self.pending.push(slot);
        self.by_sub.insert((session, sub), slot);
    }

    /// Removes a view; true when it was there.
    pub fn remove(&mut self, session: u64, sub: &Arc<str>) -> bool {
        let Some(slot) = self.by_sub.remove(&(session, sub.clone())) else { return false };
        let entry = self.entries[slot].take().expect("indexed slot is taken");
        match (&entry.selection.key, &entry.selection.term) {
            (Some(k), _) => {
                if let Some(list) = self.by_key.get_mut(k) {
                    unfile(list, slot);
                    if list.is_empty() {
                        self.by_key.remove(k);
                    }
                }
            }
            (None, Some((path, values))) => {
                if let Some(by_value) = self.by_term.get_mut(path) {
                    for v in values {
                        if let Some(list) = by_value.get_mut(v) {
                            unfile(list, slot);
                            if list.is_empty() {
                                by_value.remove(v);
                            }
                        }
                    }
                    if by_value.is_empty() {
                        self.by_term.remove(path);
                    }
                }
            }
            (None, None) => unfile(&mut self.scan, slot),
        }
        unfile(&mut self.pending, slot);
        self.free.push(slot);
        true
    }

    /// Replaces the format of a view (before it activates: presence counts start from the
    /// list its subscribe read).
    pub fn set_format(&mut self, session: u64, sub: &Arc<str>, format: Format) {
        if let Some(&slot) = self.by_sub.get(&(session, sub.clone()))
            && let Some(entry) = self.entries[slot].as_mut()
        {
            entry.format = format;
        }
    }

    /// Activates a pending view: queues `reply`, then the events of the writes buffered since
    /// it was registered with an offset above `from`; live writes follow. False when the view
    /// is gone (or was reset meanwhile): the subscribe then fails.
    pub fn activate(&mut self, session: u64, sub: &Arc<str>, from: u64, reply: String) -> bool {
        let Some(&slot) = self.by_sub.get(&(session, sub.clone())) else { return false };
        let entry = self.entries[slot].as_mut().expect("indexed slot is taken");
        let buffered = match std::mem::replace(&mut entry.stage, Stage::Active { from }) {
            Stage::Pending(buffered) => buffered,
            Stage::Dead => {
                entry.stage = Stage::Dead;
                return false;
            }
            Stage::Active { .. } => Vec::new(),
        };
        unfile(&mut self.pending, slot);
        let _ = entry.outbox.push(Outgoing::Line(reply));
        for p in buffered {
            if p.offset > from
                && let Some(change) = &p.change
            {
                let parsed = Parsed::new(change);
                Self::emit(entry, &parsed, change, &p, &mut None);
            }
        }
        true
    }

    /// Routes one publication of the channel to its views.
    pub fn route(&mut self, p: &Arc<Encoded>) -> usize {
        for &slot in &self.pending {
            if let Some(Entry { stage: Stage::Pending(buf), .. }) = self.entries[slot].as_mut() {
                buf.push(p.clone());
            }
        }
        let Some(change) = &p.change else { return 0 };
        let parsed = Parsed::new(change);
        let mut candidates: Vec<usize> = self.scan.clone();
        if let Some(list) = self.by_key.get(&change.key) {
            candidates.extend_from_slice(list);
        }
        for (path, by_value) in &self.by_term {
            for record in [parsed.before(), parsed.after()].into_iter().flatten() {
                if let Some(list) =
                    path.get(record).and_then(IndexValue::of).and_then(|v| by_value.get(&v))
                {
                    candidates.extend_from_slice(list);
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let mut sent = 0;
        let mut presence = None;
        for slot in candidates {
            let Some(entry) = self.entries[slot].as_mut() else { continue };
            if matches!(entry.stage, Stage::Active { from } if p.offset > from) {
                sent += usize::from(Self::emit(entry, &parsed, change, p, &mut presence));
            }
        }
        sent
    }

    /// Queues the event a write makes for one view, if any; true when one was queued.
    /// `presence` holds the presence event of this write once made: it is the same for every
    /// follower of the channel, so N followers share one frame (N joins made N² frames).
    fn emit(
        entry: &mut Entry,
        parsed: &Parsed<'_>,
        change: &RecordChange,
        p: &Encoded,
        presence: &mut Option<(ViewOperation, Arc<str>)>,
    ) -> bool {
        let Some((operation, reason)) = parsed.decide(&entry.selection) else { return false };
        let frame: Arc<str> = match &mut entry.format {
            Format::View => event_push(&entry.sub, operation, reason, change, p).into(),
            Format::Presence { channel } => match presence {
                Some((op, frame)) if *op == operation => frame.clone(),
                _ => {
                    let frame: Arc<str> =
                        presence_event(channel, operation, parsed, change, p).into();
                    *presence = Some((operation, frame.clone()));
                    frame
                }
            },
            Format::Counts { channel, members, users } => {
                let user = user_of(match operation {
                    ViewOperation::Delete => change.before.as_deref(),
                    _ => change.after.as_deref(),
                });
                match operation {
                    ViewOperation::Insert => {
                        *members += 1;
                        *users.entry(user).or_default() += 1;
                    }
                    ViewOperation::Delete => {
                        *members = members.saturating_sub(1);
                        if let Some(n) = users.get_mut(&user) {
                            *n -= 1;
                            if *n == 0 {
                                users.remove(&user);
                            }
                        }
                    }
                    // An update may move a member to another user (it never does today).
                    ViewOperation::Update => return false,
                }
                serde_json::json!({
                    "push": "presence_stats", "channel": &**channel, "members": *members,
                    "users": users.len(), "epoch": &*p.epoch, "offset": p.offset,
                })
                .to_string()
                .into()
            }
        };
        let _ = entry.outbox.push(Outgoing::View { frame, accepted: p.accepted });
        true
    }

    /// The node lost the channel's stream: every view is told to resubscribe (the session
    /// removes it).
    pub fn reset(&mut self) {
        for entry in self.entries.iter_mut().flatten() {
            if !matches!(entry.stage, Stage::Dead) {
                entry.stage = Stage::Dead;
                let _ = entry.outbox.push(Outgoing::ViewReset {
                    channel: entry.channel.clone(),
                    sub: entry.sub.clone(),
                });
            }
        }
        self.pending.clear();
    }

    /// Each view's session and outbox.
    pub fn outboxes(&self) -> impl Iterator<Item = (u64, &Arc<Outbox>)> + '_ {
        self.entries.iter().flatten().map(|e| (e.session, &e.outbox))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(offset: u64, key: &str, before: Option<&str>, after: Option<&str>) -> Arc<Encoded> {
        let raw = |s: &str| Arc::<RawValue>::from(RawValue::from_string(s.to_string()).unwrap());
        let change =
            RecordChange { key: key.into(), before: before.map(raw), after: after.map(raw) };
        Arc::new(Encoded::from_json("t:b", "e", offset, "{}").with_change(Some(Arc::new(change))))
    }

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(1000, 1 << 20))
    }

    fn frames(outbox: &Outbox) -> Vec<Value> {
        let mut items = std::collections::VecDeque::new();
        outbox.drain(&mut items);
        items
            .into_iter()
            .filter_map(|i| match i {
                Outgoing::View { frame, .. } => Some(serde_json::from_str(&frame).unwrap()),
                Outgoing::Line(l) => Some(serde_json::json!({ "line": l })),
                _ => None,
            })
            .collect()
    }

    fn selection(filter: &str) -> Arc<Selection> {
        Arc::new(Selection::new(Some(Filter::parse(filter).unwrap()), None))
    }

    #[test]
    fn decisions_cover_the_four_moves() {
        let s = Selection::new(Some(Filter::parse(r#"s != "done""#).unwrap()), None);
        let todo = serde_json::json!({"s": "todo"});
        let done = serde_json::json!({"s": "done"});
        use LeaveReason::*;
        use ViewOperation::*;
        assert_eq!(s.decide("k", None, Some(&todo)), Some((Insert, None)));
        assert_eq!(s.decide("k", Some(&todo), Some(&todo)), Some((Update, None)));
        assert_eq!(s.decide("k", Some(&todo), Some(&done)), Some((Delete, Some(Left))));
        assert_eq!(s.decide("k", Some(&todo), None), Some((Delete, Some(Deleted))));
        assert_eq!(s.decide("k", Some(&done), Some(&done)), None);
        assert_eq!(s.decide("k", Some(&done), None), None);
        let one = Selection::new(None, Some("k".into()));
        assert_eq!(one.decide("k", None, Some(&done)), Some((Insert, None)));
        assert_eq!(one.decide("other", None, Some(&done)), None);
    }

    #[test]
    fn routing_reaches_only_views_the_write_touches() {
        let mut set = ViewSet::default();
        let boxes: Vec<Arc<Outbox>> = (0..3).map(|_| outbox()).collect();
        let ch: Arc<str> = "t:b".into();
        set.add(
            ch.clone(),
            1,
            "a".into(),
            boxes[0].clone(),
            selection(r#"who == "u1""#),
            Format::View,
        );
        set.add(
            ch.clone(),
            2,
            "b".into(),
            boxes[1].clone(),
            selection(r#"who == "u2""#),
            Format::View,
        );
        set.add(ch.clone(), 3, "c".into(), boxes[2].clone(), selection("n > 1"), Format::View);
        for (i, sub) in ["a", "b", "c"].into_iter().enumerate() {
            assert!(set.activate(i as u64 + 1, &sub.into(), 0, "{}".into()));
        }
        for b in &boxes {
            frames(b);
        }
        // u1 → u2: a delete for a, an insert for b; c (scanned) sees n == 0 twice: nothing.
        set.route(&write(1, "k", Some(r#"{"who":"u1","n":0}"#), Some(r#"{"who":"u2","n":0}"#)));
        let a = frames(&boxes[0]);
        let b = frames(&boxes[1]);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0]["operation"], "delete");
        assert_eq!(a[0]["reason"], "left");
        assert_eq!(b[0]["operation"], "insert");
        assert_eq!(b[0]["record"], serde_json::json!({"who":"u2","n":0}));
        assert!(frames(&boxes[2]).is_empty());
        // A removed view gets nothing more.
        assert!(set.remove(2, &"b".into()));
        set.route(&write(2, "k", Some(r#"{"who":"u2","n":0}"#), None));
        assert!(frames(&boxes[1]).is_empty());
        assert!(set.by_term.values().all(|m| m.values().all(|l| !l.contains(&1))));
    }

    #[test]
    fn activation_replays_buffered_writes_after_the_read_position() {
        let mut set = ViewSet::default();
        let b = outbox();
        set.add("t:b".into(), 1, "v".into(), b.clone(), selection("n >= 0"), Format::View);
        set.route(&write(4, "x", None, Some(r#"{"n":1}"#)));
        set.route(&write(5, "y", None, Some(r#"{"n":2}"#)));
        assert!(frames(&b).is_empty(), "nothing before activation");
        assert!(set.activate(1, &"v".into(), 4, r#"{"id":1}"#.into()));
        let out = frames(&b);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0]["line"], r#"{"id":1}"#);
        assert_eq!(out[1]["key"], "y");
        assert_eq!(out[1]["operation"], "insert");
    }
}
