//! Presence: who is subscribed to a channel, kept as state Herald already knows how to keep.
//!
//! The members of channel `C` are the records of a keyed stream of their own (`stream_of(C)`,
//! a name no client can write to), keyed by member id (`USER/ID`, the id chosen by the client
//! per tab, or the connection id). A join is an upsert of `{"user","client","node","info"}`, an
//! update another upsert, a leave a delete. So the member list has a position, a history and a
//! snapshot, every node sees one order (the engine's), and a subscriber follows it as a view of
//! that stream (crate::views, formatted as presence events) that resumes like a channel.
//!
//! # Batching
//!
//! A node gathers the changes of one channel's members for the namespace's `presence_window`,
//! then publishes what is left: a join and a leave of one member inside the window cancel out,
//! several updates keep the last, a leave then a join again (a quick reconnect) becomes one
//! update, or nothing when the record did not change.
//!
//! # Members that never leave
//!
//! A connection that goes silent is closed after `timeouts.pong_timeout` and leaves. A node
//! that dies leaves its members behind: each node notes on the engine which presence streams it
//! holds members on, and on a clustered engine every node looks, under a lease, for nodes that
//! have been gone for [`REAP_AFTER`] and deletes their members (only those whose record still
//! names the dead node: a member that joined again elsewhere stays). A node shutting down
//! publishes no leaves: members that reconnect elsewhere within [`REAP_AFTER`] just move.

use crate::config::Namespace;
use herald_protocol::Record;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Prefix of presence streams; a control character, so no client channel has it.
pub const STREAM_PREFIX: &str = "\u{1}presence:";

/// How long a node must have been missing before its members are removed (long enough for a
/// rolling restart's members to reconnect elsewhere).
pub const REAP_AFTER: Duration = Duration::from_secs(5);

/// How often a node looks for members of dead nodes.
pub const REAP_EVERY: Duration = Duration::from_secs(2);

/// Most members one `presence` page holds.
pub const MAX_PAGE: usize = 1000;

/// The presence stream of `channel`.
pub fn stream_of(channel: &str) -> String {
    format!("{STREAM_PREFIX}{channel}")
}

/// The channel whose presence stream `stream` is.
pub fn channel_of(stream: &str) -> Option<&str> {
    stream.strip_prefix(STREAM_PREFIX)
}

/// Options of every presence stream: keyed, kept for resumes, bounded like a channel's state.
pub fn stream_namespace(outbound_queue_bytes: usize) -> Namespace {
    Namespace {
        keyed: true,
        // Subscribers follow it as a view: every write keeps its old and new record.
        filters: true,
        history_size: 1000,
        history_ttl: Duration::from_secs(600),
        max_recover: 1000,
        max_state_records: 100_000,
        max_state_bytes: (4 * 1024 * 1024).min(outbound_queue_bytes / 4),
        max_key_bytes: 512,
        ..Namespace::default()
    }
}

/// A member's record.
#[derive(Serialize)]
pub struct MemberRecord<'a> {
    /// Its user id (empty for anonymous connections).
    pub user: &'a str,
    /// Its connection.
    pub client: &'a str,
    /// The node holding the connection (dead nodes' members are removed by it).
    pub node: &'a str,
    /// What the client said about itself (name, colour, "editing t1").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
}

/// The member id of a connection: `USER/ID` with the client's per-tab id, else the connection.
pub fn member_id(user: &str, chosen: Option<&str>, client: &str) -> String {
    format!("{user}/{}", chosen.unwrap_or(client))
}

/// One member's pending change.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    /// Not published yet; publish this record.
    Join(String),
    /// Published before; publish this record.
    Update(String),
    /// Published before; delete it, if it is still the record of this connection (a late
    /// leave of an old connection must not remove the member its new connection rejoined).
    Leave(String),
}

/// Whether a member record (JSON) is the one of connection `client`.
fn held_by(record: &str, client: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Client<'a> {
        #[serde(borrow, default)]
        client: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Client>(record).is_ok_and(|c| c.client == client)
}

/// What a node will publish for one channel when its window closes.
#[derive(Default)]
struct Pending {
    /// Members in the order they first changed.
    order: Vec<Arc<str>>,
    /// Each member's change.
    changes: HashMap<Arc<str>, Change>,
}

impl Pending {
    /// Folds a new change into what is pending for `member`.
    fn fold(&mut self, member: Arc<str>, next: Change) {
        use Change::*;
        let merged = match (self.changes.get(&member), next) {
            (None, next) => Some(next),
            // A leave of another (older) connection than the pending record's: ignored.
            (Some(Join(r) | Update(r)), Leave(c)) if !held_by(r, &c) => return,
            // Joined and left inside the window: nothing to say.
            (Some(Join(_)), Leave(_)) => None,
            (Some(Join(_)), Update(r) | Join(r)) => Some(Join(r)),
            (Some(Update(_)), Leave(c)) => Some(Leave(c)),
            (Some(Update(_) | Leave(_)), Update(r) | Join(r)) => Some(Update(r)),
            (Some(Leave(_)), Leave(c)) => Some(Leave(c)),
        };
        match merged {
            Some(change) => {
                if self.changes.insert(member.clone(), change).is_none() {
                    self.order.push(member);
                }
            }
            None => {
                self.changes.remove(&member);
                self.order.retain(|m| *m != member);
            }
        }
    }

    fn take(&mut self) -> Vec<(Arc<str>, Change)> {
        let mut changes = std::mem::take(&mut self.changes);
        std::mem::take(&mut self.order)
            .into_iter()
            .filter_map(|m| changes.remove(&m).map(|c| (m, c)))
            .collect()
    }
}

/// A member record as this node stored it: its offset and JSON.
type Stored = (u64, String);

/// One node's presence bookkeeping.
#[derive(Default)]
pub struct Presence {
    /// Changes waiting for their window, by presence stream; a stream is here while its flush
    /// is scheduled.
    pending: Mutex<HashMap<String, Pending>>,
    /// What this node last wrote for each (stream, member): its stored form `OFFSET:JSON`, so a
    /// leave deletes only that record and a rejoin that changes nothing publishes nothing.
    written: Mutex<HashMap<(String, Arc<str>), Stored>>,
    /// Streams this node has noted on the engine (once each).
    tracked: Mutex<HashSet<String>>,
    /// Nodes seen missing while they still had members, and since when.
    missing: Mutex<HashMap<String, Instant>>,
}

/// A change ready to publish.
pub enum Write {
    /// Upsert `member` with this record JSON.
    Upsert { member: Arc<str>, record: String },
    /// Delete `member`, only if it is still stored as `expected`.
    Delete { member: Arc<str>, expected: String },
}

impl Presence {
    /// Queues a change; true when the stream had nothing pending (the caller schedules its
    /// flush after the window).
    fn queue(&self, stream: &str, member: Arc<str>, change: Change) -> bool {
        let mut pending = self.pending.lock();
        let fresh = !pending.contains_key(stream);
        pending.entry(stream.to_string()).or_default().fold(member, change);
        fresh
    }

    /// A member joins (or joins again after a quick reconnect).
    pub fn join(&self, stream: &str, member: Arc<str>, record: String) -> bool {
        let known = self.written.lock().contains_key(&(stream.to_string(), member.clone()));
        let change = if known { Change::Update(record) } else { Change::Join(record) };
        self.queue(stream, member, change)
    }

    /// A member's record changes.
    pub fn update(&self, stream: &str, member: Arc<str>, record: String) -> bool {
        self.join(stream, member, record)
    }

    /// The member's connection `client` leaves.
    pub fn leave(&self, stream: &str, member: Arc<str>, client: &str) -> bool {
        self.queue(stream, member, Change::Leave(client.to_string()))
    }

    /// Takes what is pending for `stream` as writes; what changes nothing is dropped.
    pub fn take(&self, stream: &str) -> Vec<Write> {
        let changes = self.pending.lock().remove(stream).map(|mut p| p.take()).unwrap_or_default();
        let written = self.written.lock();
        changes
            .into_iter()
            .filter_map(|(member, change)| {
                let last = written.get(&(stream.to_string(), member.clone()));
                match change {
                    Change::Join(record) | Change::Update(record) => {
                        if last.is_some_and(|(_, json)| *json == record) {
                            return None;
                        }
                        Some(Write::Upsert { member, record })
                    }
                    Change::Leave(client) => {
                        last.filter(|(_, json)| held_by(json, &client)).map(|(offset, json)| {
                            Write::Delete {
                                member: member.clone(),
                                expected: format!("{offset}:{json}"),
                            }
                        })
                    }
                }
            })
            .collect()
    }

    /// Remembers a published upsert.
    pub fn wrote(&self, stream: &str, member: Arc<str>, offset: u64, record: String) {
        self.written.lock().insert((stream.to_string(), member), (offset, record));
    }

    /// Forgets a member this node deleted (or that a delete found changed).
    pub fn forgot(&self, stream: &str, member: &Arc<str>) {
        self.written.lock().remove(&(stream.to_string(), member.clone()));
    }

    /// True the first time `stream` is seen (the caller notes it on the engine).
    pub fn track(&self, stream: &str) -> bool {
        self.tracked.lock().insert(stream.to_string())
    }

    /// Of the nodes with members and not alive, those missing for [`REAP_AFTER`]; remembers
    /// when the others went missing.
    pub fn overdue(&self, orphans: &[String]) -> Vec<String> {
        let now = Instant::now();
        let mut missing = self.missing.lock();
        missing.retain(|node, _| orphans.contains(node));
        orphans
            .iter()
            .filter(|node| {
                now.duration_since(*missing.entry((*node).clone()).or_insert(now)) >= REAP_AFTER
            })
            .cloned()
            .collect()
    }
}

/// One member as the protocol shows it: its record plus `member`.
pub fn member_json(r: &Record) -> serde_json::Value {
    let mut m: serde_json::Value = serde_json::from_str(r.value.get()).unwrap_or_default();
    m["member"] = serde_json::Value::String(r.key.clone());
    m
}

/// Member and user counts of a presence state, as `presence_stats` answers.
pub fn stats_json(channel: &str, state: &crate::rules::State) -> serde_json::Value {
    let crate::views::Format::Counts { members, users, .. } =
        crate::views::Format::counts(channel.into(), &state.records)
    else {
        unreachable!()
    };
    serde_json::json!({
        "channel": channel, "epoch": state.epoch, "offset": state.offset,
        "members": members, "users": users.len(),
    })
}

/// The members after `after`, at most `limit` (default 100, at most [`MAX_PAGE`]),
/// and the id to page on from when more follow.
pub fn presence_page<'a>(
    records: &'a [Record],
    limit: Option<usize>,
    after: Option<&str>,
) -> (&'a [Record], Option<String>) {
    let limit = limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let start = after.map_or(0, |a| records.partition_point(|r| r.key.as_str() <= a));
    let end = (start + limit).min(records.len());
    let page = &records[start..end];
    let next = (end < records.len()).then(|| page.last().map(|r| r.key.clone())).flatten();
    (page, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Arc<str> {
        s.into()
    }

    fn rec(client: &str, n: u32) -> String {
        format!(r#"{{"user":"u","client":"{client}","node":"n","info":{n}}}"#)
    }

    fn upserts(writes: &[Write]) -> Vec<(String, String)> {
        writes
            .iter()
            .map(|w| match w {
                Write::Upsert { member, record } => (member.to_string(), record.clone()),
                Write::Delete { .. } => panic!("no delete"),
            })
            .collect()
    }

    #[test]
    fn a_window_folds_changes_to_what_is_left() {
        let p = Presence::default();
        // Joined and left inside one window: nothing.
        assert!(p.join("s", m("a"), rec("c1", 1)));
        assert!(!p.leave("s", m("a"), "c1"));
        assert!(p.take("s").is_empty());
        // Several updates keep the last; order is first change.
        p.join("s", m("b"), rec("c2", 1));
        p.join("s", m("c"), rec("c3", 1));
        p.update("s", m("b"), rec("c2", 2));
        p.update("s", m("b"), rec("c2", 3));
        let writes = p.take("s");
        assert_eq!(upserts(&writes), [("b".into(), rec("c2", 3)), ("c".into(), rec("c3", 1))]);
        p.wrote("s", m("b"), 7, rec("c2", 3));
        // Leave then join again with the same record (a quick reconnect): nothing.
        p.leave("s", m("b"), "c2");
        p.join("s", m("b"), rec("c2", 3));
        assert!(p.take("s").is_empty());
        // A leave of a published member deletes exactly what this node wrote.
        p.leave("s", m("b"), "c2");
        match p.take("s").as_slice() {
            [Write::Delete { member, expected }] => {
                assert_eq!(
                    (&**member, expected.as_str()),
                    ("b", format!("7:{}", rec("c2", 3)).as_str())
                );
            }
            _ => panic!("one delete"),
        }
        // A leave of a member this node never published: nothing.
        p.leave("s", m("zz"), "c9");
        assert!(p.take("s").is_empty());
    }

    #[test]
    fn a_late_leave_of_an_old_connection_keeps_the_member_its_new_one_rejoined() {
        let p = Presence::default();
        p.wrote("s", m("a"), 3, rec("old", 1));
        // The same member rejoins on a new connection, then the old one's leave comes late:
        // inside one window, and in the next one.
        p.join("s", m("a"), rec("new", 1));
        p.leave("s", m("a"), "old");
        assert_eq!(upserts(&p.take("s")), [("a".into(), rec("new", 1))]);
        p.wrote("s", m("a"), 4, rec("new", 1));
        p.leave("s", m("a"), "old");
        assert!(p.take("s").is_empty(), "the old connection's leave removes nothing");
        p.leave("s", m("a"), "new");
        assert!(matches!(p.take("s").as_slice(), [Write::Delete { .. }]));
    }

    #[test]
    fn member_ids_and_streams() {
        assert_eq!(member_id("alice", Some("tab1"), "n1-3"), "alice/tab1");
        assert_eq!(member_id("alice", None, "n1-3"), "alice/n1-3");
        assert_eq!(channel_of(&stream_of("room:1")), Some("room:1"));
        assert!(!crate::hub::valid_channel(&stream_of("room:1")));
    }
}
