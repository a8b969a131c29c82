//! `history`: one page of a channel's history, shortened to fit the outbound queue.

use super::{fitting_prefix, fitting_suffix};
use crate::auth::Principal;
use crate::session::Session;
use herald_protocol::ErrorBody;
use herald_protocol::command::HistoryQuery;
use herald_protocol::reply::{HistoryReply, RawPublications};

impl Session {
    /// Answers with a history page.
    pub(super) async fn history(
        &mut self,
        id: u64,
        principal: &Principal,
        q: HistoryQuery,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let ns = hub.namespace(&q.channel)?;
        hub.authorize_subscribe(principal, || self.client(), &q.channel, ns).await?;
        let mut h = hub.history(ns, &q).await?;
        let fits = fitting_prefix(&h.publications, self.reply_budget());
        if fits < h.publications.len() {
            // A page that would not fit the queue is shortened: from the end when reading
            // forward (`since`), from the start otherwise, so the next page follows on.
            if q.since.is_some() {
                h.publications.truncate(fits.max(1));
            } else {
                let fits = fitting_suffix(&h.publications, self.reply_budget()).max(1);
                h.publications.drain(..h.publications.len() - fits);
            }
        }
        self.reply(
            id,
            &HistoryReply {
                channel: &q.channel,
                epoch: &h.epoch,
                offset: h.offset,
                earliest: h.earliest,
                publications: RawPublications(&h.publications),
                reason: h.reason,
            },
        );
        Ok(())
    }
}
