//! Presence and volatile events (protocol §15, §16) for one subscription: the presence position
//! the connection task keeps across connections ([`PresenceTracker`]), how the hub's
//! `presence_list`, `presence`, `presence_stats` and `volatile` pushes become [`SubEvent`]s
//! (stale and duplicate events dropped, a reset stream resubscribed), and how a handle keeps
//! the member map from those events ([`apply`]).

use crate::event::{Member, SubEvent, Volatile};
use herald_protocol::{Position, PresenceMode};
use serde_json::Value;
use std::collections::BTreeMap;

/// What one push means for its subscription.
#[derive(Debug, Default)]
pub(crate) struct PushOutcome {
    /// The event for the application, if any.
    pub event: Option<SubEvent>,
    /// The presence stream was reset (another epoch): subscribe again.
    pub resubscribe: bool,
}

impl PushOutcome {
    fn event(event: SubEvent) -> PushOutcome {
        PushOutcome { event: Some(event), resubscribe: false }
    }
}

/// Where one subscription's presence stands, alive across connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct PresenceTracker {
    /// The position of the last presence push applied (list head, event or counts); what the
    /// next subscribe sends as `presence_since`.
    pub last: Option<Position>,
    /// A subscribe was sent and its first presence push (list or counts) has not arrived:
    /// events until then belong to an older subscription and are dropped.
    awaiting: bool,
    /// The parts of a `presence_list` received so far (`more: true`) and their position: a
    /// large list comes in parts and is applied whole at the last.
    parts: Option<(Position, BTreeMap<String, Member>)>,
}

impl PresenceTracker {
    /// A subscribe is being sent; returns the `presence_since` it carries (the member list
    /// only: counts always start from the current ones).
    pub fn on_subscribe(&mut self, mode: Option<PresenceMode>) -> Option<Position> {
        self.awaiting = mode.is_some();
        match mode {
            Some(PresenceMode::Members) => self.last.clone(),
            _ => None,
        }
    }

    /// Applies one presence push (`presence_list`, `presence`, `presence_stats`) of this
    /// subscription's channel.
    pub fn on_push(&mut self, push: &str, body: &Value) -> PushOutcome {
        let Some(position) = position_of(body) else {
            tracing::warn!(%push, "herald presence push without a position; ignored");
            return PushOutcome::default();
        };
        match push {
            "presence_list" => {
                let members = || {
                    body["members"]
                        .as_array()
                        .map(|list| {
                            list.iter().filter_map(member_of).map(|m| (m.member.clone(), m))
                        })
                        .into_iter()
                        .flatten()
                };
                let earlier = self.parts.take().filter(|(at, _)| *at == position);
                if body["more"] == true || earlier.is_some() {
                    let mut all = earlier.map(|(_, m)| m).unwrap_or_default();
                    all.extend(members());
                    if body["more"] == true {
                        self.parts = Some((position, all));
                        return PushOutcome::default();
                    }
                    self.awaiting = false;
                    self.last = Some(position);
                    return PushOutcome::event(SubEvent::PresenceList { members: all });
                }
                self.awaiting = false;
                if body["recovered"] == true {
                    // The missed changes follow as events after `presence_since`: `last` stays
                    // where it is and moves with them.
                    if self.last.as_ref().is_some_and(|l| l.epoch == position.epoch) {
                        return PushOutcome::default();
                    }
                    tracing::warn!("herald presence recovered in another epoch; resubscribing");
                    self.last = None;
                    return PushOutcome { event: None, resubscribe: true };
                }
                self.last = Some(position);
                PushOutcome::event(SubEvent::PresenceList { members: members().collect() })
            }
            "presence" => {
                if self.awaiting {
                    return PushOutcome::default();
                }
                let Some(last) = &mut self.last else { return PushOutcome::default() };
                if last.epoch != position.epoch {
                    tracing::warn!("herald presence event from another epoch; resubscribing");
                    return PushOutcome { event: None, resubscribe: true };
                }
                if position.offset <= last.offset {
                    return PushOutcome::default();
                }
                let Some(member) = member_of(body) else { return PushOutcome::default() };
                last.offset = position.offset;
                match body["event"].as_str() {
                    Some("join") => PushOutcome::event(SubEvent::Join { member }),
                    Some("update") => PushOutcome::event(SubEvent::Update { member }),
                    Some("leave") => PushOutcome::event(SubEvent::Leave { member }),
                    other => {
                        tracing::warn!(event = ?other, "herald presence event of unknown kind");
                        PushOutcome::default()
                    }
                }
            }
            "presence_stats" => {
                let fresh = std::mem::take(&mut self.awaiting);
                let stale = self
                    .last
                    .as_ref()
                    .is_some_and(|l| l.epoch == position.epoch && position.offset <= l.offset);
                if stale && !fresh {
                    return PushOutcome::default();
                }
                self.last = Some(position);
                PushOutcome::event(SubEvent::PresenceCounts {
                    members: body["members"].as_u64().unwrap_or(0),
                    users: body["users"].as_u64().unwrap_or(0),
                })
            }
            _ => PushOutcome::default(),
        }
    }
}

/// Reads a `volatile` push.
pub(crate) fn volatile(body: &Value) -> Volatile {
    let text = |name: &str| body[name].as_str().unwrap_or_default().to_string();
    Volatile {
        kind: body["type"].as_str().unwrap_or("message").to_string(),
        data: body.get("data").cloned().unwrap_or(Value::Null),
        user: text("user"),
        client: text("client"),
    }
}

/// A `volatile` push as the application sees it.
pub(crate) fn volatile_event(body: &Value) -> SubEvent {
    let Volatile { kind, data, user, client } = volatile(body);
    SubEvent::Volatile { kind, data, user, client }
}

/// Keeps a handle's member map up to date with an event it is about to yield. A leave yields
/// the member as it was held (with its last `info`), since the hub's leave carries none.
pub(crate) fn apply(members: &mut BTreeMap<String, Member>, event: &mut SubEvent) {
    match event {
        SubEvent::PresenceList { members: list } => members.clone_from(list),
        SubEvent::Join { member } | SubEvent::Update { member } => {
            members.insert(member.member.clone(), member.clone());
        }
        SubEvent::Leave { member } => {
            if let Some(held) = members.remove(&member.member) {
                *member = held;
            }
        }
        _ => {}
    }
}

/// The presence position a push carries.
fn position_of(body: &Value) -> Option<Position> {
    Some(Position { epoch: body["epoch"].as_str()?.to_string(), offset: body["offset"].as_u64()? })
}

/// A member from a list entry or an event (extra fields such as `event` or `push` ignored).
fn member_of(value: &Value) -> Option<Member> {
    let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_string);
    Some(Member {
        member: text("member")?,
        user: text("user").unwrap_or_default(),
        client: text("client"),
        node: text("node"),
        info: value.get("info").filter(|v| !v.is_null()).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(offset: u64) -> Value {
        json!({"push": "presence_list", "channel": "room:1", "epoch": "e", "offset": offset,
               "members": [{"member": "a/1", "user": "a", "client": "n1-1", "node": "n1",
                            "info": {"name": "A"}}]})
    }

    fn event(kind: &str, member: &str, epoch: &str, offset: u64) -> Value {
        json!({"push": "presence", "channel": "room:1", "event": kind, "member": member,
               "user": "b", "info": {"x": 1}, "epoch": epoch, "offset": offset})
    }

    #[test]
    fn list_then_events_in_order_without_duplicates() {
        let mut t = PresenceTracker::default();
        assert_eq!(t.on_subscribe(Some(PresenceMode::Members)), None);
        assert!(t.on_push("presence", &event("join", "b/1", "e", 3)).event.is_none());
        let out = t.on_push("presence_list", &list(4));
        let Some(SubEvent::PresenceList { members }) = out.event else { panic!("{out:?}") };
        assert_eq!(members["a/1"].client.as_deref(), Some("n1-1"));
        assert_eq!(members["a/1"].info, Some(json!({"name": "A"})));
        assert!(t.on_push("presence", &event("join", "b/1", "e", 4)).event.is_none());
        assert!(matches!(
            t.on_push("presence", &event("join", "b/1", "e", 5)).event,
            Some(SubEvent::Join { member }) if member.member == "b/1" && member.client.is_none()
        ));
        assert!(t.on_push("presence", &event("update", "b/1", "e", 5)).event.is_none());
        assert!(t.on_push("presence", &event("leave", "b/1", "x", 9)).resubscribe);
        assert_eq!(t.on_subscribe(Some(PresenceMode::Members)), Some(pos("e", 5)));
    }

    fn pos(epoch: &str, offset: u64) -> Position {
        Position { epoch: epoch.into(), offset }
    }

    #[test]
    fn a_list_in_parts_is_applied_whole_at_the_last_part() {
        let mut t = PresenceTracker::default();
        t.on_subscribe(Some(PresenceMode::Members));
        let part = |members: &[&str], more: bool| {
            let members: Vec<_> =
                members.iter().map(|m| json!({"member": m, "user": "u"})).collect();
            let mut body =
                json!({"push": "presence_list", "epoch": "e", "offset": 9, "members": members});
            if more {
                body["more"] = true.into();
            }
            body
        };
        assert!(t.on_push("presence_list", &part(&["u/1", "u/2"], true)).event.is_none());
        assert!(t.on_push("presence_list", &part(&["u/3"], true)).event.is_none());
        assert_eq!(t.last, None, "no position before the whole list");
        let out = t.on_push("presence_list", &part(&["u/4"], false));
        let Some(SubEvent::PresenceList { members }) = out.event else { panic!("{out:?}") };
        assert_eq!(members.keys().collect::<Vec<_>>(), ["u/1", "u/2", "u/3", "u/4"]);
        assert_eq!(t.last, Some(pos("e", 9)));
        // Parts of an older list (a reconnect cut it) do not leak into the next one.
        assert!(t.on_push("presence_list", &part(&["u/1"], true)).event.is_none());
        let fresh = json!({"push": "presence_list", "epoch": "e", "offset": 11, "members": [{"member": "u/9", "user": "u"}]});
        let Some(SubEvent::PresenceList { members }) = t.on_push("presence_list", &fresh).event
        else {
            panic!()
        };
        assert_eq!(members.keys().collect::<Vec<_>>(), ["u/9"]);
    }

    #[test]
    fn a_recovered_list_keeps_the_position_for_the_replayed_events() {
        let mut t = PresenceTracker { last: Some(pos("e", 5)), awaiting: false, parts: None };
        t.on_subscribe(Some(PresenceMode::Members));
        let head = json!({"push": "presence_list", "epoch": "e", "offset": 8, "recovered": true});
        let out = t.on_push("presence_list", &head);
        assert!(out.event.is_none() && !out.resubscribe);
        assert!(matches!(
            t.on_push("presence", &event("leave", "b/1", "e", 7)).event,
            Some(SubEvent::Leave { .. })
        ));
        let other = json!({"push": "presence_list", "epoch": "f", "offset": 1, "recovered": true});
        assert!(t.on_push("presence_list", &other).resubscribe);
    }

    #[test]
    fn counts_start_fresh_and_drop_stale_ones() {
        let mut t = PresenceTracker { last: Some(pos("e", 5)), awaiting: false, parts: None };
        assert_eq!(t.on_subscribe(Some(PresenceMode::Counts)), None);
        let stats = |offset: u64, members: u64| {
            json!({"push": "presence_stats", "members": members, "users": 1, "epoch": "e",
                   "offset": offset})
        };
        assert!(matches!(
            t.on_push("presence_stats", &stats(5, 2)).event,
            Some(SubEvent::PresenceCounts { members: 2, users: 1 })
        ));
        assert!(t.on_push("presence_stats", &stats(5, 2)).event.is_none());
        assert!(t.on_push("presence_stats", &stats(6, 3)).event.is_some());
    }

    #[test]
    fn the_map_follows_the_events_and_a_leave_yields_the_held_member() {
        let mut members = BTreeMap::new();
        let mut t = PresenceTracker::default();
        t.on_subscribe(Some(PresenceMode::Members));
        let mut list = t.on_push("presence_list", &list(1)).event.unwrap();
        apply(&mut members, &mut list);
        let mut leave = t
            .on_push(
                "presence",
                &json!({"push": "presence", "event": "leave",
            "member": "a/1", "user": "a", "epoch": "e", "offset": 2}),
            )
            .event
            .unwrap();
        apply(&mut members, &mut leave);
        assert!(members.is_empty());
        let SubEvent::Leave { member } = leave else { panic!() };
        assert_eq!(member.info, Some(json!({"name": "A"})));
    }

    #[test]
    fn volatile_pushes_become_events() {
        let body = json!({"push": "volatile", "channel": "room:1", "type": "cursor",
                          "data": {"x": 1}, "user": "a", "client": "n1-2"});
        assert!(matches!(
            volatile_event(&body),
            SubEvent::Volatile { kind, data, user, client }
                if kind == "cursor" && data == json!({"x": 1}) && user == "a" && client == "n1-2"
        ));
    }
}
