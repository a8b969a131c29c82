//! Presence and volatile events (protocol §15, §16): joining and leaving with the channel
//! subscription, following the member list (`subscribe` with `presence`), `presence_update`,
//! `presence`, `presence_stats` and `volatile`.

use crate::auth::Principal;
use crate::config::Namespace;
use crate::presence::{self, MemberRecord, member_json, presence_page, stats_json};
use crate::session::Session;
use crate::session::rate::TokenBucket;
use crate::views::{Format, Parsed, Selection, presence_event};
use herald_protocol::reply::NotRecovered;
use herald_protocol::{ErrorBody, ErrorCode, PresenceMode, PresenceQuery};
use serde_json::value::RawValue;
use std::sync::Arc;

/// This connection's membership of one channel.
pub(in crate::session) struct Membership {
    /// Its member id (`USER/ID`).
    pub(in crate::session) member: Arc<str>,
    /// Its current `info`.
    info: Option<Box<RawValue>>,
    /// Whether it follows the member list (a view of the presence stream named after the
    /// channel).
    pub(in crate::session) follows: bool,
}

fn no_presence(channel: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::BadRequest, "this namespace has no presence (presence = false)")
        .with_channel(channel)
}

impl Session {
    /// Refuses presence fields on a namespace without presence, and a too large `info`.
    pub(super) fn check_presence(
        &self,
        ns: &Namespace,
        channel: &str,
        q: &PresenceQuery,
    ) -> Result<(), ErrorBody> {
        let asked = q.mode.is_some() || q.since.is_some() || q.member.is_some() || q.info.is_some();
        if asked && !ns.presence {
            return Err(no_presence(channel));
        }
        if let Some(info) = &q.info {
            check_info(ns, channel, info)?;
        }
        if q.member.as_deref().is_some_and(|m| m.is_empty() || m.len() > 128) {
            return Err(ErrorBody::new(ErrorCode::BadRequest, "`member` must be 1 to 128 bytes")
                .with_channel(channel));
        }
        Ok(())
    }

    /// After a plain subscribe on a presence namespace: join, and follow the member list when
    /// asked. The subscribe reply is already queued, so the list comes right after it.
    pub(super) async fn join_presence(
        &mut self,
        principal: &Principal,
        ns: &Namespace,
        channel: &str,
        q: PresenceQuery,
    ) -> Result<(), ErrorBody> {
        let client = self.client();
        let member: Arc<str> =
            presence::member_id(&principal.user, q.member.as_deref(), &client).into();
        let record = self.member_record(principal, &client, q.info.as_deref());
        self.hub.presence_change(ns, channel, member.clone(), &client, Some(record));
        let follows = q.mode.is_some();
        self.extras
            .presence
            .insert(channel.into(), Membership { member, info: q.info, follows: false });
        if let Some(mode) = q.mode {
            self.follow_presence(channel, mode, q.since.as_ref()).await?;
        }
        if let Some(m) = self.extras.presence.get_mut(channel) {
            m.follows = follows;
        }
        Ok(())
    }

    fn member_record(
        &self,
        principal: &Principal,
        client: &str,
        info: Option<&RawValue>,
    ) -> String {
        let record = MemberRecord { user: &principal.user, client, node: &self.hub.node_id, info };
        serde_json::to_string(&record).expect("member records serialize")
    }

    /// Follows the member list of `channel`: a view of its presence stream, replayed from
    /// `since` when the history still has it, else the whole list.
    async fn follow_presence(
        &mut self,
        channel: &str,
        mode: PresenceMode,
        since: Option<&herald_protocol::Position>,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let stream = presence::stream_of(channel);
        let ns = &hub.presence_ns;
        let sub: Arc<str> = channel.into();
        let selection = Arc::new(Selection::new(None, None));
        // Counts start from the list read below; the view's format is set once it is known,
        // so the view is registered with a placeholder and its counts filled at activation.
        let wants_list = since.is_none() || mode == PresenceMode::Counts;
        hub.add_view(
            &stream,
            self.id,
            sub.clone(),
            self.outbox.clone(),
            selection.clone(),
            Format::Presence { channel: sub.clone() },
        )
        .await?;
        let recovery = match hub.recover(ns, &stream, since, wants_list).await {
            Ok(r) => r,
            Err(e) => {
                hub.remove_view(&stream, self.id, &sub).await;
                return Err(e);
            }
        };
        let mut lines: Vec<String> = Vec::new();
        let budget = self.reply_budget();
        let mut head = serde_json::json!({
            "push": "presence_list", "channel": channel, "epoch": recovery.epoch,
            "offset": recovery.offset,
        });
        if let Some(r) = recovery.recovered {
            head["recovered"] = r.into();
        }
        let mut records = recovery.snapshot;
        if recovery.recovered == Some(true) && mode == PresenceMode::Members && records.is_none() {
            let mut bytes = 0;
            for p in &recovery.publications {
                let Some(change) = &p.change else { continue };
                let parsed = Parsed::new(change);
                if let Some((op, _)) = parsed.decide(&selection) {
                    let line = presence_event(channel, op, &parsed, change, p);
                    bytes += line.len();
                    lines.push(line);
                }
            }
            if bytes > budget {
                lines.clear();
                head["recovered"] = false.into();
                head["reason"] = serde_json::to_value(NotRecovered::TooMany).unwrap_or_default();
            }
        }
        let mut offset = recovery.offset;
        if head["recovered"] != true && records.is_none() {
            let fresh = hub.state(ns, &stream).await?;
            head["epoch"] = fresh.epoch.into();
            head["offset"] = fresh.offset.into();
            offset = fresh.offset;
            records = Some(fresh.records);
        }
        if let Some(reason) = recovery.reason
            && head["recovered"] == false
            && head.get("reason").is_none()
        {
            head["reason"] = serde_json::to_value(reason).unwrap_or_default();
        }
        let reply = match (mode, &records) {
            (PresenceMode::Counts, Some(records)) => {
                let counts = Format::counts(sub.clone(), records);
                let Format::Counts { members, users, .. } = &counts else { unreachable!() };
                let line = serde_json::json!({
                    "push": "presence_stats", "channel": channel, "members": *members,
                    "users": users.len(), "epoch": head["epoch"], "offset": offset,
                })
                .to_string();
                hub.fanout.set_view_format(&stream, self.id, &sub, counts);
                line
            }
            (_, Some(records)) if head["recovered"] != true => list_parts(&mut head, records),
            _ => {
                let mut text = head.to_string();
                for line in lines {
                    text.push('\n');
                    text.push_str(&line);
                }
                text
            }
        };
        if !hub.activate_view(&stream, self.id, &sub, offset, reply) {
            hub.remove_view(&stream, self.id, &sub).await;
            return Err(ErrorBody::new(
                ErrorCode::Resubscribe,
                "the presence stream was lost during the subscribe: subscribe again",
            )
            .with_channel(channel));
        }
        Ok(())
    }

    /// The channel subscription ended: leave, stop following the member list.
    pub(in crate::session) async fn leave_presence(&mut self, channel: &str) {
        // Not through `DerefMut`: a connection without presence must not allocate its extras.
        let Some(m) = self.extras.0.as_mut().and_then(|e| e.presence.remove(channel)) else {
            return;
        };
        if let Ok(ns) = self.hub.namespace(channel) {
            let ns = ns.clone();
            self.hub.presence_change(&ns, channel, m.member, &self.client(), None);
        }
        if m.follows {
            let stream = presence::stream_of(channel);
            self.hub.remove_view(&stream, self.id, &channel.into()).await;
        }
    }

    /// `presence_update`: a new `info` for this connection's membership of `channel`.
    pub(super) fn presence_update(
        &mut self,
        id: u64,
        principal: &Principal,
        channel: String,
        info: Box<RawValue>,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let ns = hub.namespace(&channel)?;
        if !ns.presence {
            return Err(no_presence(&channel));
        }
        check_info(ns, &channel, &info)?;
        let client = self.client();
        let Some(m) = self.extras.presence.get_mut(channel.as_str()) else {
            return Err(ErrorBody::new(
                ErrorCode::NotSubscribed,
                "not a member: subscribe to the channel first",
            )
            .with_channel(channel));
        };
        let info = (info.get() != "null").then_some(info);
        m.info = info;
        let member = m.member.clone();
        let record = MemberRecord {
            user: &principal.user,
            client: &client,
            node: &hub.node_id,
            info: self.extras.presence[channel.as_str()].info.as_deref(),
        };
        let record = serde_json::to_string(&record).expect("member records serialize");
        hub.presence_change(ns, &channel, member, &client, Some(record));
        self.reply(id, &serde_json::json!({}));
        Ok(())
    }

    /// `presence`: a page of members, by member id after `after`.
    pub(super) async fn presence_list(
        &mut self,
        id: u64,
        principal: &Principal,
        channel: String,
        limit: Option<usize>,
        after: Option<String>,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let ns = hub.namespace(&channel)?;
        if !ns.presence {
            return Err(no_presence(&channel));
        }
        hub.authorize_subscribe(principal, || self.client(), &channel, ns).await?;
        let state = hub.presence_members(&channel).await?;
        let page = presence_page(&state.records, limit, after.as_deref());
        let mut body = serde_json::json!({
            "channel": channel, "epoch": state.epoch, "offset": state.offset,
            "members": page.0.iter().map(member_json).collect::<Vec<_>>(),
        });
        if let Some(next) = page.1 {
            body["next"] = next.into();
        }
        self.reply(id, &body);
        Ok(())
    }

    /// `presence_stats`: member and user counts.
    pub(super) async fn presence_stats(
        &mut self,
        id: u64,
        principal: &Principal,
        channel: String,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let ns = hub.namespace(&channel)?;
        if !ns.presence {
            return Err(no_presence(&channel));
        }
        hub.authorize_subscribe(principal, || self.client(), &channel, ns).await?;
        let state = hub.presence_members(&channel).await?;
        self.reply(id, &stats_json(&channel, &state));
        Ok(())
    }

    /// `volatile`: an event for the channel's current subscribers, kept nowhere.
    pub(super) async fn volatile(
        &mut self,
        id: u64,
        principal: &Principal,
        channel: String,
        kind: Option<String>,
        data: Box<RawValue>,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let ns = hub.namespace(&channel)?;
        hub.authorize_publish(principal, || self.client(), &channel, ns).await?;
        if ns.volatile_per_second == 0 {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "volatile events are off on this namespace (volatile_per_second = 0)",
            )
            .with_channel(channel));
        }
        if data.get().len() > ns.max_message_bytes {
            return Err(ErrorBody::new(
                ErrorCode::MessageTooLarge,
                format!("data above {} bytes (max_message_bytes)", ns.max_message_bytes),
            )
            .with_channel(channel));
        }
        let ns_name = crate::config::Config::namespace_of(&channel).to_string();
        let bucket = self
            .extras
            .volatile_rate
            .entry(ns_name)
            .or_insert_with(|| TokenBucket::new(ns.volatile_per_second));
        if !bucket.take() {
            return Err(ErrorBody::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} volatile events per second (volatile_per_second)",
                    ns.volatile_per_second
                ),
            )
            .with_channel(channel));
        }
        let frame = serde_json::json!({
            "push": "volatile", "channel": channel, "type": kind.as_deref().unwrap_or("message"),
            "data": data, "user": principal.user, "client": self.client(),
        })
        .to_string();
        hub.publish_volatile(&channel, frame.into()).await?;
        self.reply(id, &serde_json::json!({}));
        Ok(())
    }
}

/// Refuses an `info` above the namespace's bound.
fn check_info(ns: &Namespace, channel: &str, info: &RawValue) -> Result<(), ErrorBody> {
    if info.get().len() > ns.max_presence_info_bytes {
        return Err(ErrorBody::new(
            ErrorCode::MessageTooLarge,
            format!(
                "presence info above {} bytes (max_presence_info_bytes)",
                ns.max_presence_info_bytes
            ),
        )
        .with_channel(channel));
    }
    Ok(())
}

/// Largest `presence_list` part, in bytes of members: the list goes out as parts of about this
/// size, so no frame a connection is sent is large (its socket's write buffer keeps the size of
/// the largest one for as long as it is open: the whole list at 10,000 members is ~1 MB).
const LIST_PART_BYTES: usize = 8 * 1024;

/// The `presence_list` lines of `records` under `head`: parts of at most [`LIST_PART_BYTES`] of
/// members (one member at least), `"more": true` on all but the last (protocol §15).
fn list_parts(head: &mut serde_json::Value, records: &[herald_protocol::Record]) -> String {
    let mut text = String::new();
    let mut part: Vec<serde_json::Value> = Vec::new();
    let mut bytes = 0;
    let mut flush = |part: Vec<serde_json::Value>, more: bool, text: &mut String| {
        head["members"] = serde_json::Value::Array(part);
        if more {
            head["more"] = true.into();
        } else if let Some(h) = head.as_object_mut() {
            h.remove("more");
        }
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&head.to_string());
    };
    for r in records {
        let size = r.key.len() + r.value.get().len() + 16;
        if !part.is_empty() && bytes + size > LIST_PART_BYTES {
            flush(std::mem::take(&mut part), true, &mut text);
            bytes = 0;
        }
        bytes += size;
        part.push(member_json(r));
    }
    flush(part, false, &mut text);
    text
}
