//! `subscribe` with `view`, `filter` or `key`: a live view of a keyed channel (crate::views).
//!
//! The view is registered before the channel is read, so no write after the read position is
//! missed; the reply carries the matching records at that position (`initial`), or, resuming
//! with `since`, the view events the missed writes make (`events`); live events follow.

use crate::auth::Principal;
use crate::config::{Config, Namespace};
use crate::session::Session;
use crate::views::{Parsed, Selection, event_json};
use herald_protocol::reply::NotRecovered;
use herald_protocol::{ErrorBody, ErrorCode, Position, Record, ViewQuery};
use herald_spec::Filter;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// The reply as the hub writes it (protocol §14; `ViewSubscribeResult` reads it).
#[derive(Serialize)]
struct ViewReply<'a> {
    sub: &'a str,
    channel: &'a str,
    epoch: &'a str,
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    view: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<NotRecovered>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initial: Option<Vec<Record>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    events: Vec<Box<RawValue>>,
}

/// Whether a stored publication is a keyed write (read from its JSON; only for the rare
/// publication that carries no record change).
fn is_keyed(p: &crate::frame::Encoded) -> bool {
    #[derive(serde::Deserialize)]
    struct KeyOnly {
        #[serde(default)]
        key: Option<String>,
    }
    serde_json::from_str::<KeyOnly>(p.publication_json()).map_or(true, |k| k.key.is_some())
}

fn invalid_filter(channel: &str, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::InvalidFilter, message).with_channel(channel)
}

/// What a view subscription selects on `channel`: the spec view's filter, the client's, the
/// token's for the namespace and the subscribe hook's, ANDed; and the key of a view of one
/// record.
pub(super) fn selection(
    config: &Config,
    ns: &Namespace,
    principal: &Principal,
    hook_filter: Option<&str>,
    channel: &str,
    q: &ViewQuery,
) -> Result<Selection, ErrorBody> {
    let ns_name = Config::namespace_of(channel);
    let entity = ns.entity.as_deref();
    let mut filters: Vec<Filter> = Vec::new();
    let key = q.key.clone();
    if let Some(name) = &q.view {
        let view = config.catalog.as_ref().and_then(|c| c.views.get(name)).ok_or_else(|| {
            invalid_filter(channel, format!("no view or subscription {name:?} in the loaded specs"))
        })?;
        if view.entity.namespace() != ns_name {
            return Err(invalid_filter(
                channel,
                format!(
                    "view {name:?} reads entity {} (namespace {:?}), not namespace {ns_name:?}",
                    view.entity.name,
                    view.entity.namespace()
                ),
            ));
        }
        if view.by_id && key.is_none() {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("{name} is `{} by id`: give the record's `key`", view.entity.name),
            )
            .with_channel(channel));
        }
        filters.extend(view.filter.as_deref().cloned());
    }
    if let Some(text) = &q.filter {
        if !ns.filters {
            return Err(invalid_filter(
                channel,
                format!("namespace {ns_name:?} does not allow ad-hoc filters (filters = false)"),
            ));
        }
        let f = Filter::parse_for(text, entity)
            .map_err(|e| invalid_filter(channel, format!("filter: {e}")))?;
        filters.push(f);
    }
    if let Some(text) = principal.filters.get(ns_name) {
        // The token's filter is the issuer's: a bad one is the issuer's fault, said plainly.
        let f = Filter::parse_for(text, entity).map_err(|e| {
            invalid_filter(channel, format!("the token's filter for {ns_name:?}: {e}"))
        })?;
        filters.push(f);
    }
    if let Some(text) = hook_filter {
        let f = Filter::parse_for(text, entity).map_err(|e| {
            invalid_filter(channel, format!("the subscribe hook's filter for {channel:?}: {e}"))
        })?;
        filters.push(f);
    }
    if let Some(k) = &key
        && k.len() > ns.max_key_bytes
    {
        return Err(
            ErrorBody::new(ErrorCode::BadRequest, "record key too long").with_channel(channel)
        );
    }
    // No filter and no key (`sub` alone): a view of every record.
    let filter = filters.into_iter().reduce(Filter::and);
    Ok(Selection::new(filter, key))
}

impl Session {
    /// Subscribes to a view of `channel`.
    pub(super) async fn subscribe_view(
        &mut self,
        id: u64,
        principal: &Principal,
        channel: String,
        since: Option<Position>,
        snapshot: bool,
        q: ViewQuery,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let ns = hub.namespace(&channel)?;
        let hook_filter = match hub.authorize_view(principal, || self.client(), &channel, ns).await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(target: "herald::audit", event = "forbidden_subscribe", client = %self.client(), user = %principal.user, ip = %self.ip, channel = %channel, code = e.code);
                return Err(e);
            }
        };
        if !ns.keyed {
            return Err(ErrorBody::new(ErrorCode::NotKeyed, "views need a keyed namespace")
                .with_channel(channel));
        }
        let selection =
            Arc::new(selection(&hub.config, ns, principal, hook_filter.as_deref(), &channel, &q)?);
        let name: Arc<str> = q.name(&channel).into();
        if self.extras.views.contains_key(&name) || self.subs.contains_key(&name) {
            return Err(ErrorBody::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed as {name:?} (give another `sub`)"),
            )
            .with_channel(channel));
        }
        if self.subs.len() + self.extras.views.len()
            >= hub.config.limits.max_channels_per_connection
        {
            return Err(ErrorBody::new(
                ErrorCode::TooManyChannels,
                format!(
                    "at most {} subscriptions per connection",
                    hub.config.limits.max_channels_per_connection
                ),
            )
            .with_channel(channel));
        }
        let outbox = self.outbox.clone();
        let format = crate::views::Format::View;
        hub.add_view(&channel, self.id, name.clone(), outbox, selection.clone(), format).await?;
        let reply =
            match self.view_reply(ns, &channel, &name, since, snapshot, &q, &selection).await {
                Ok(reply) => reply,
                Err(e) => {
                    hub.remove_view(&channel, self.id, &name).await;
                    return Err(e);
                }
            };
        let (offset, line) = reply;
        let line = herald_protocol::reply::reply_ok(id, &line);
        if !hub.activate_view(&channel, self.id, &name, offset, line) {
            hub.remove_view(&channel, self.id, &name).await;
            return Err(ErrorBody::new(
                ErrorCode::Resubscribe,
                "the channel's stream was lost during the subscribe: subscribe again",
            )
            .with_channel(channel));
        }
        self.extras.views.insert(name, channel.into());
        Ok(())
    }

    /// Reads the channel and builds the reply: events replayed from `since` when the history
    /// holds every write after it and they fit the reply, else the matching records.
    #[allow(clippy::too_many_arguments)]
    async fn view_reply(
        &self,
        ns: &Namespace,
        channel: &str,
        name: &str,
        since: Option<Position>,
        snapshot: bool,
        q: &ViewQuery,
        selection: &Selection,
    ) -> Result<(u64, serde_json::Value), ErrorBody> {
        let hub = &self.hub;
        let budget = self.reply_budget();
        // Rows are sent unless a resume replays what was missed.
        let want_rows = since.is_none() || snapshot;
        let mut recovery = hub.recover(ns, channel, since.as_ref(), want_rows).await?;
        let mut events = Vec::new();
        if !want_rows && recovery.recovered == Some(true) {
            let mut bytes = 0;
            let mut replayable = true;
            for p in &recovery.publications {
                let Some(change) = &p.change else {
                    // A keyed write stored without its record change (written before the
                    // namespace had views): the view cannot tell what it did.
                    replayable &= !is_keyed(p);
                    continue;
                };
                let parsed = Parsed::new(change);
                if let Some((op, reason)) = parsed.decide(selection) {
                    let json = event_json(name, op, reason, change, p);
                    bytes += json.len();
                    events.push(RawValue::from_string(json).expect("events are JSON"));
                }
            }
            if bytes > budget || !replayable {
                // Too much to replay in one reply, or not replayable: fresh rows instead, and
                // said so.
                events.clear();
                recovery.recovered = Some(false);
                recovery.reason = Some(if replayable {
                    NotRecovered::TooMany
                } else {
                    NotRecovered::HistoryTrimmed
                });
            }
        }
        let rows = want_rows || recovery.recovered == Some(false);
        if rows && recovery.snapshot.is_none() {
            let fresh = hub.recover(ns, channel, None, true).await?;
            recovery.epoch = fresh.epoch;
            recovery.offset = fresh.offset;
            recovery.snapshot = fresh.snapshot;
        }
        let initial = rows.then(|| {
            let records = recovery.snapshot.take().unwrap_or_default();
            records
                .into_iter()
                .filter(|r| {
                    let value = serde_json::from_str(r.value.get()).ok();
                    selection.contains(&r.key, value.as_ref())
                })
                .collect::<Vec<Record>>()
        });
        let reply = ViewReply {
            sub: name,
            channel,
            epoch: &recovery.epoch,
            offset: recovery.offset,
            view: q.view.as_deref(),
            filter: selection.filter.as_ref().map(ToString::to_string),
            key: selection.key.as_deref(),
            recovered: recovery.recovered,
            reason: recovery.reason,
            initial,
            events,
        };
        let value = serde_json::to_value(&reply)
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
        Ok((recovery.offset, value))
    }

    /// Ends a view subscription; `not_subscribed` when there is none of that name.
    pub(super) async fn unsubscribe_view(
        &mut self,
        id: u64,
        channel: String,
        sub: String,
    ) -> Result<(), ErrorBody> {
        let sub: Arc<str> = sub.into();
        match self.extras.views.get(&sub) {
            Some(ch) if **ch == *channel => {
                self.extras.views.remove(&sub);
                self.hub.remove_view(&channel, self.id, &sub).await;
                self.reply(id, &serde_json::json!({}));
                Ok(())
            }
            _ => Err(ErrorBody::new(ErrorCode::NotSubscribed, format!("no view {sub:?}"))
                .with_channel(channel)),
        }
    }
}
