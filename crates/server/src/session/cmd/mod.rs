//! The commands, one file each, and the dispatch to them.
//!
//! Each file adds its command to [`Session`] as one method. `connect` and `pong` run before
//! authentication; every other command needs a successful `connect` first.

mod connect;
mod history;
mod ping;
mod presence;
mod publish;
mod refresh;
mod state;
mod subscribe;
mod unsubscribe;
mod view;

pub(super) use presence::Membership;

use super::{Close, Session};
use crate::frame::Encoded;
use herald_protocol::command::Command;
use herald_protocol::{ErrorBody, ErrorCode};
use std::sync::Arc;

impl Session {
    /// Runs one command; returns a close when the connection must end.
    pub(super) async fn handle(&mut self, id: u64, command: Command) -> Option<Close> {
        if let Command::Connect { token, name: _, version } = command {
            return self.connect(id, token, version).await;
        }
        if matches!(command, Command::Pong) {
            return None;
        }
        let Some(principal) = self.principal.clone() else {
            self.reply_error(
                Some(id),
                ErrorBody::new(ErrorCode::Unauthorized, "send connect first"),
            );
            return None;
        };
        let result = match command {
            Command::Connect { .. } | Command::Pong => Ok(()),
            Command::Ping { timestamp } => self.ping(id, timestamp),
            Command::Subscribe { channel, since, snapshot, view, presence, preview }
                if !view.is_empty() =>
            {
                match presence.mode.is_some()
                    || presence.member.is_some()
                    || presence.info.is_some()
                    || preview.is_some()
                {
                    true => Err(ErrorBody::new(
                        ErrorCode::BadRequest,
                        "presence and preview go with a channel subscription, not a view",
                    )
                    .with_channel(channel)),
                    false => {
                        self.subscribe_view(id, &principal, channel, since, snapshot, view).await
                    }
                }
            }
            Command::Subscribe { channel, since, snapshot, view: _, presence, preview } => {
                let opts = subscribe::SubscribeOpts { snapshot, preview };
                self.subscribe_channel(id, &principal, channel, since, opts, presence).await
            }
            Command::PresenceUpdate { channel, info } => {
                self.presence_update(id, &principal, channel, info)
            }
            Command::Presence { channel, limit, after } => {
                self.presence_list(id, &principal, channel, limit, after).await
            }
            Command::PresenceStats { channel } => {
                self.presence_stats(id, &principal, channel).await
            }
            Command::Volatile { channel, kind, data } => {
                self.volatile(id, &principal, channel, kind, data).await
            }
            Command::Unsubscribe { channel, sub: Some(sub) } if *sub != *channel => {
                self.unsubscribe_view(id, channel, sub).await
            }
            Command::Unsubscribe { channel, sub: _ } => self.unsubscribe(id, channel).await,
            Command::Publish(cmd) => self.publish(id, &principal, cmd).await,
            Command::Refresh { token } => return self.refresh(id, &principal, &token).await,
            Command::History(q) => match whole_channel(&principal, &q.channel) {
                Ok(()) => self.history(id, &principal, q).await,
                Err(e) => Err(e),
            },
            Command::State { channel } => match whole_channel(&principal, &channel) {
                Ok(()) => self.state(id, &principal, channel).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            self.reply_error(Some(id), e);
        }
        None
    }

    /// A plain subscribe; on a presence namespace the connection then joins (and follows the
    /// member list when asked).
    async fn subscribe_channel(
        &mut self,
        id: u64,
        principal: &crate::auth::Principal,
        channel: String,
        since: Option<herald_protocol::Position>,
        opts: subscribe::SubscribeOpts,
        presence: herald_protocol::PresenceQuery,
    ) -> Result<(), ErrorBody> {
        whole_channel(principal, &channel)?;
        let hub = self.hub.clone();
        let ns = hub.namespace(&channel)?;
        self.check_presence(ns, &channel, &presence)?;
        self.subscribe(id, principal, channel.clone(), since, opts).await?;
        if ns.presence
            && !self.extras.presence.contains_key(channel.as_str())
            && let Err(e) = self.join_presence(principal, ns, &channel, presence).await
        {
            {
                // The channel subscription stands; its presence part failed: say so.
                let push = herald_protocol::reply::push_unsubscribe(
                    &channel,
                    herald_protocol::ErrorCode::Resubscribe,
                    &format!("presence: {}", e.message),
                    true,
                );
                let _ = self.outbox.push(crate::outbox::Outgoing::Line(push));
                self.subs.remove(channel.as_str());
                hub.remove_subscriber(&channel, self.id).await;
                self.leave_presence(&channel).await;
            }
        }
        Ok(())
    }

    /// Most bytes of publications one reply carries: a quarter of the outbound queue.
    fn reply_budget(&self) -> usize {
        self.hub.config.limits.outbound_queue_bytes / 4
    }
}

/// Refuses reading a whole channel (plain subscribe, history, state) on a namespace where the
/// token holds the user to a view filter.
fn whole_channel(principal: &crate::auth::Principal, channel: &str) -> Result<(), ErrorBody> {
    let ns = crate::config::Config::namespace_of(channel);
    if principal.filters.contains_key(ns) {
        return Err(ErrorBody::new(
            ErrorCode::Forbidden,
            format!("the token holds this user to a view filter on {ns:?}: subscribe with a view"),
        )
        .with_channel(channel));
    }
    Ok(())
}

/// How many of `pubs`, from the first, fit in `budget` bytes.
fn fitting_prefix(pubs: &[Arc<Encoded>], budget: usize) -> usize {
    let mut used = 0;
    pubs.iter()
        .take_while(|p| {
            used += p.frame.len();
            used <= budget
        })
        .count()
}

/// How many of `pubs`, from the last, fit in `budget` bytes.
fn fitting_suffix(pubs: &[Arc<Encoded>], budget: usize) -> usize {
    let mut used = 0;
    pubs.iter()
        .rev()
        .take_while(|p| {
            used += p.frame.len();
            used <= budget
        })
        .count()
}
