//! `connect`: authenticates the connection (the command's token, the upgrade request's, or
//! anonymous when the hub allows it) and answers with the connection's parameters.

use crate::auth::{AuthError, Principal};
use crate::engine::now_rfc3339;
use crate::session::{Close, Session, auth_close, auth_error};
use herald_protocol::reply::ConnectResult;
use herald_protocol::{CloseCode, ErrorBody, ErrorCode};

impl Session {
    /// Authenticates the connection; a refused token closes it. `version` is the protocol
    /// version asked (1 when absent); the hub answers with the one it speaks, at most that.
    pub(super) async fn connect(
        &mut self,
        id: u64,
        token: Option<String>,
        version: Option<u32>,
    ) -> Option<Close> {
        if self.principal.is_some() {
            self.reply_error(
                Some(id),
                ErrorBody::new(ErrorCode::AlreadyConnected, "already connected"),
            );
            return None;
        }
        // Taken: once connected the token is not needed (memory per idle connection).
        let principal = match token.or_else(|| self.upgrade_token.take().map(String::from)) {
            None if self.hub.anonymous_allowed() => Principal::anonymous(),
            None => {
                let e = AuthError::Missing;
                self.audit_auth_failure(&e);
                self.reply_error(Some(id), auth_error(&e));
                return Some(auth_close(&e));
            }
            Some(token) => match self.hub.verifier.verify(&token).await {
                Ok(p) => p,
                Err(e) => {
                    self.audit_auth_failure(&e);
                    self.reply_error(Some(id), auth_error(&e));
                    return Some(auth_close(&e));
                }
            },
        };
        if !principal.is_anonymous()
            && let Err(e) = self.hub.bind_user(self.id, &principal.user)
        {
            tracing::warn!(target: "herald::audit", event = "auth_failure", user = %principal.user, ip = %self.ip, reason = "too many connections");
            self.reply_error(Some(id), e);
            return Some((CloseCode::TooManyConnections, "per-user connection limit".into()));
        }
        tracing::info!(target: "herald::audit", event = "connect", client = %self.client(), user = %principal.user, ip = %self.ip);
        let version = version.unwrap_or(1).min(herald_protocol::PROTOCOL_VERSION);
        if version >= 2 {
            self.compact = Some(std::num::NonZeroU32::MIN);
        }
        let t = &self.hub.config.timeouts;
        let result = ConnectResult {
            client: self.client(),
            user: principal.user.clone(),
            time: now_rfc3339(),
            ping_interval_ms: t.ping_interval.as_millis() as u64,
            pong_timeout_ms: t.pong_timeout.as_millis() as u64,
            clients: self.hub.connection_count() as u64,
            node: self.hub.node_id.clone(),
            version,
            expires_at: principal.expires_at,
        };
        self.principal = Some(std::sync::Arc::new(principal));
        self.reply(id, &result);
        None
    }
}
