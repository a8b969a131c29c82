//! `subscribe`: joins the channel's fan-out, then recovers from `since` (or sends the snapshot),
//! so nothing published after the reply's position can be missed.

use super::fitting_prefix;
use crate::auth::Principal;
use crate::frame::Encoded;
use crate::outbox::Outgoing;
use crate::session::Session;
use crate::session::subscription::Sub;
use herald_protocol::reply::{self, RawPublications, SubscribeReply};
use herald_protocol::{ErrorBody, ErrorCode, Position};
use std::collections::VecDeque;
use std::sync::Arc;

/// How a subscription wants its publications.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubscribeOpts {
    /// Start with the keyed state's records.
    pub(crate) snapshot: bool,
    /// Publications whose `data` is longer come as a truncated preview (protocol §18).
    pub(crate) preview: Option<u32>,
}

impl Session {
    /// Subscribes; recovered publications beyond the reply budget follow as a backlog.
    pub(super) async fn subscribe(
        &mut self,
        id: u64,
        principal: &Principal,
        channel: String,
        since: Option<Position>,
        opts: SubscribeOpts,
    ) -> Result<(), ErrorBody> {
        let SubscribeOpts { snapshot, preview } = opts;
        let hub = self.hub.clone();
        let ns = hub.namespace(&channel)?;
        if let Err(e) = hub.authorize_subscribe(principal, || self.client(), &channel, ns).await {
            tracing::warn!(target: "herald::audit", event = "forbidden_subscribe", client = %self.client(), user = %principal.user, ip = %self.ip, channel = %channel, code = e.code);
            return Err(e);
        }
        if self.subs.contains_key(channel.as_str()) {
            return Err(ErrorBody::new(ErrorCode::AlreadySubscribed, "already subscribed")
                .with_channel(channel));
        }
        if self.subs.len() >= hub.config.limits.max_channels_per_connection {
            return Err(ErrorBody::new(
                ErrorCode::TooManyChannels,
                format!(
                    "at most {} channels per connection",
                    hub.config.limits.max_channels_per_connection
                ),
            )
            .with_channel(channel));
        }
        if snapshot && !ns.keyed {
            return Err(ErrorBody::new(ErrorCode::NotKeyed, "snapshot needs a keyed namespace")
                .with_channel(channel));
        }
        // Register for live publications first, then read: nothing published after the read
        // position can be missed (guarantee 3).
        hub.add_subscriber(&channel, self.id, self.outbox.clone()).await?;
        let recovery = match hub.recover(ns, &channel, since.as_ref(), snapshot).await {
            Ok(r) => r,
            Err(e) => {
                hub.remove_subscriber(&channel, self.id).await;
                return Err(e);
            }
        };
        // A reply never takes more than a quarter of the outbound queue: recovered publications
        // beyond that follow as pushes, fed as the queue drains (issue: replies larger than the
        // queue closed the client as a slow consumer, forever).
        let mut recovery = recovery;
        let budget = self.reply_budget();
        let snapshot_bytes: usize = recovery
            .snapshot
            .as_deref()
            .map_or(0, |r| r.iter().map(|r| r.key.len() + r.value.get().len() + 32).sum());
        let mut backlog = VecDeque::new();
        let mut catchup_until = None;
        let mut offset = recovery.offset;
        // Protocol v2 connections get large publications in parts (§18); a reply carries none
        // of those, nor any that a preview would cut: they follow as the backlog.
        let chunk = match self.compact {
            Some(_) => u32::try_from(ns.chunk_bytes).unwrap_or(u32::MAX),
            None => 0,
        };
        let whole_max = [chunk, preview.unwrap_or(0)]
            .into_iter()
            .filter(|&m| m > 0)
            .min()
            .map_or(usize::MAX, |m| m as usize);
        let fits = fitting_prefix(&recovery.publications, budget.saturating_sub(snapshot_bytes))
            .min(
                recovery
                    .publications
                    .iter()
                    .position(|p| p.frame.len() > whole_max)
                    .unwrap_or(usize::MAX),
            );
        if fits < recovery.publications.len() {
            backlog = recovery.publications.split_off(fits).into();
            catchup_until = backlog.back().map(|p: &Arc<Encoded>| p.offset);
            offset = recovery.publications.last().map_or_else(
                || backlog.front().map_or(recovery.offset, |p: &Arc<Encoded>| p.offset - 1),
                |p| p.offset,
            );
        }
        // Protocol v2: a number per subscribe (a resubscribe gets a new one, so a late frame of
        // the old subscription can never be read as the new one's).
        let n = self.compact.map(std::num::NonZeroU32::get);
        if let Some(next) = self.compact {
            self.compact = std::num::NonZeroU32::new(next.get().wrapping_add(1))
                .or(Some(std::num::NonZeroU32::MIN));
        }
        let line = reply::reply_ok(
            id,
            &SubscribeReply {
                channel: &channel,
                epoch: &recovery.epoch,
                offset,
                keyed: recovery.keyed,
                recovered: recovery.recovered,
                reason: recovery.reason,
                publications: RawPublications(&recovery.publications),
                snapshot: recovery.snapshot.as_deref(),
                n,
            },
        );
        let channel: Arc<str> = channel.into();
        self.subs.insert(
            channel.clone(),
            Sub {
                epoch: recovery.epoch.into(),
                delivered: offset,
                awaiting_reply: true,
                held: Vec::new(),
                backlog,
                catchup_until,
                n,
                chunk,
                preview,
            },
        );
        let _ = self.outbox.push(Outgoing::Subscribed { channel, line });
        self.feed_backlogs();
        Ok(())
    }
}
