//! The commands, one file each, and the dispatch to them.
//!
//! Each file adds its command to [`Session`] as one method. `connect` and `pong` run before
//! authentication; every other command needs a successful `connect` first.

mod connect;
mod history;
mod ping;
mod publish;
mod refresh;
mod state;
mod subscribe;
mod unsubscribe;

use super::{Close, Session};
use crate::frame::Encoded;
use herald_protocol::command::Command;
use herald_protocol::{ErrorBody, ErrorCode};
use std::sync::Arc;

impl Session {
    /// Runs one command; returns a close when the connection must end.
    pub(super) async fn handle(&mut self, id: u64, command: Command) -> Option<Close> {
        if let Command::Connect { token, name: _ } = command {
            return self.connect(id, token).await;
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
            Command::Subscribe { channel, since, snapshot } => {
                self.subscribe(id, &principal, channel, since, snapshot).await
            }
            Command::Unsubscribe { channel } => self.unsubscribe(id, channel).await,
            Command::Publish(cmd) => self.publish(id, &principal, cmd).await,
            Command::Refresh { token } => return self.refresh(id, &principal, &token).await,
            Command::History(q) => self.history(id, &principal, q).await,
            Command::State { channel } => self.state(id, &principal, channel).await,
        };
        if let Err(e) = result {
            self.reply_error(Some(id), e);
        }
        None
    }

    /// Most bytes of publications one reply carries: a quarter of the outbound queue.
    fn reply_budget(&self) -> usize {
        self.hub.config.limits.outbound_queue_bytes / 4
    }
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
