//! `publish` from a client: authorized like any publisher, stamped with the user and
//! `source: client`.

use crate::auth::Principal;
use crate::engine::PublishInput;
use crate::session::Session;
use herald_protocol::command::PublishCommand;
use herald_protocol::{ErrorBody, Meta};

impl Session {
    /// Publishes and answers with the publication's position.
    pub(super) async fn publish(
        &mut self,
        id: u64,
        principal: &Principal,
        cmd: PublishCommand,
    ) -> Result<(), ErrorBody> {
        let hub = self.hub.clone();
        let ns = hub.namespace(&cmd.channel)?;
        hub.authorize_publish(principal, || self.client(), &cmd.channel, ns).await?;
        let input = PublishInput {
            channel: cmd.channel,
            kind: cmd.kind.unwrap_or_else(|| "message".into()),
            data: cmd.data,
            key: cmd.key,
            op: cmd.op,
            meta: Meta {
                user: (!principal.user.is_empty()).then(|| principal.user.clone()),
                source: Some("client".into()),
                correlation_id: cmd.correlation_id,
                idempotency_key: cmd.idempotency_key,
            },
        };
        let result = hub.publish(input).await?;
        self.reply_line(herald_protocol::reply::reply_publish(id, &result));
        Ok(())
    }
}
