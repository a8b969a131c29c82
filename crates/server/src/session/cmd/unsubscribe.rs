//! `unsubscribe`: leaves the channel's fan-out and forgets the subscription.

use crate::session::Session;
use herald_protocol::{ErrorBody, ErrorCode};

impl Session {
    /// Ends a subscription; `not_subscribed` when there is none.
    pub(super) async fn unsubscribe(&mut self, id: u64, channel: String) -> Result<(), ErrorBody> {
        match self.subs.remove(channel.as_str()) {
            Some(_) => {
                self.hub.remove_subscriber(&channel, self.id).await;
                self.leave_presence(&channel).await;
                self.reply(id, &serde_json::json!({}));
                Ok(())
            }
            None => {
                Err(ErrorBody::new(ErrorCode::NotSubscribed, "not subscribed")
                    .with_channel(channel))
            }
        }
    }
}
