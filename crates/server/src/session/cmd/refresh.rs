//! `refresh`: replaces the token of a connected session (same user), and ends the
//! subscriptions the new token no longer grants.

use crate::auth::Principal;
use crate::outbox::Outgoing;
use crate::session::{Close, Session, auth_error};
use herald_protocol::reply::{self, RefreshResult};
use herald_protocol::{ErrorBody, ErrorCode};

impl Session {
    /// Checks the new token; on success it replaces the principal.
    pub(super) async fn refresh(
        &mut self,
        id: u64,
        current: &Principal,
        token: &str,
    ) -> Option<Close> {
        match self.hub.verifier.verify(token).await {
            Ok(p) if p.user == current.user => {
                let result = RefreshResult { expires_at: p.expires_at };
                self.reply(id, &result);
                self.end_subscriptions_not_granted(current, &p).await;
                self.principal = Some(std::sync::Arc::new(p));
            }
            Ok(_) => self.reply_error(
                Some(id),
                ErrorBody::new(ErrorCode::Unauthorized, "refreshed token names another user"),
            ),
            Err(e) => {
                self.audit_auth_failure(&e);
                self.reply_error(Some(id), auth_error(&e));
            }
        }
        None
    }

    /// After a refresh: every subscription the new token no longer grants ends with an
    /// `unsubscribe` push (103, no resubscribe), so a narrowed token stops the flow at once. A
    /// view whose token filter changed ends too: its rows were chosen by the old filter.
    async fn end_subscriptions_not_granted(&mut self, old: &Principal, principal: &Principal) {
        let hub = self.hub.clone();
        let client = self.client();
        let mut ended_views = Vec::new();
        for (sub, channel) in &self.extras.views {
            let ns_name = crate::config::Config::namespace_of(channel);
            let allowed = match hub.namespace(channel) {
                Ok(ns) => {
                    hub.authorize_view(principal, || client.clone(), channel, ns).await.is_ok()
                }
                Err(_) => false,
            };
            if !allowed || old.filters.get(ns_name) != principal.filters.get(ns_name) {
                ended_views.push((sub.clone(), channel.clone()));
            }
        }
        for (sub, channel) in ended_views {
            self.extras.views.remove(&sub);
            hub.remove_view(&channel, self.id, &sub).await;
            tracing::info!(target: "herald::audit", event = "subscription_revoked", client = %client, user = %principal.user, ip = %self.ip, channel = %channel, sub = %sub);
            let _ = self.outbox.push(Outgoing::Line(reply::push_unsubscribe_view(
                &channel,
                &sub,
                ErrorCode::Forbidden,
                "the refreshed token no longer grants this view, or changed its filter",
                false,
            )));
        }
        let mut ended = Vec::new();
        for channel in self.subs.keys() {
            let whole =
                !principal.filters.contains_key(crate::config::Config::namespace_of(channel));
            let allowed = whole
                && match hub.namespace(channel) {
                    Ok(ns) => hub
                        .authorize_subscribe(principal, || client.clone(), channel, ns)
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
            if !allowed {
                ended.push(channel.clone());
            }
        }
        for channel in ended {
            self.subs.remove(&channel);
            hub.remove_subscriber(&channel, self.id).await;
            self.leave_presence(&channel).await;
            tracing::info!(target: "herald::audit", event = "subscription_revoked", client = %client, user = %principal.user, ip = %self.ip, channel = %channel);
            let _ = self.outbox.push(Outgoing::Line(reply::push_unsubscribe(
                &channel,
                ErrorCode::Forbidden,
                "the refreshed token no longer grants this channel",
                false,
            )));
        }
    }
}
