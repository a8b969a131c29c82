//! `state`: a keyed channel's records at its current offset.

use crate::auth::Principal;
use crate::session::Session;
use herald_protocol::ErrorBody;
use herald_protocol::reply::StateResult;

impl Session {
    /// Answers with the channel's records.
    pub(super) async fn state(
        &mut self,
        id: u64,
        principal: &Principal,
        channel: String,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let ns = hub.namespace(&channel)?;
        hub.authorize_subscribe(principal, || self.client(), &channel, ns).await?;
        let st = hub.state(ns, &channel).await?;
        self.reply(
            id,
            &StateResult { channel, epoch: st.epoch, offset: st.offset, records: st.records },
        );
        Ok(())
    }
}
