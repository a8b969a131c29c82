//! One subscription's delivery state and the continuity rules the writer applies to it.
//!
//! Each subscription remembers the last offset it delivered: the writer drops duplicates, holds
//! live publications that arrived before the subscribe reply went out (or while a recovery too
//! large for the reply is still being fed), and ends the subscription on any gap instead of
//! delivering around it.

use super::Session;
use super::writer::Delivery;
use crate::frame::Encoded;
use crate::outbox::Outgoing;
use herald_protocol::Continuity;
use std::collections::VecDeque;
use std::sync::Arc;

/// One subscription's delivery state.
pub(super) struct Sub {
    /// Epoch the subscriber is following.
    pub(super) epoch: Arc<str>,
    /// Last offset delivered (or covered by the subscribe reply).
    pub(super) delivered: u64,
    /// The subscribe reply is still queued: hold live publications until it is written.
    pub(super) awaiting_reply: bool,
    /// Publications held while `awaiting_reply` or catching up.
    pub(super) held: Vec<Arc<Encoded>>,
    /// Recovered publications that did not fit in the subscribe reply, fed through the outbox as
    /// it drains (so no reply is larger than the queue allows).
    pub(super) backlog: VecDeque<Arc<Encoded>>,
    /// While catching up: the offset the recovery reached. Live publications up to it are
    /// covered by the backlog; later ones wait in `held` until the backlog is delivered.
    pub(super) catchup_until: Option<u64>,
    /// Protocol v2: the number its compact publications carry; `None` on a v1 connection.
    pub(super) n: Option<u32>,
    /// Publications whose frame is larger go in parts of this many bytes (0: never; v1).
    pub(super) chunk: u32,
    /// Publications whose `data` is longer go as a truncated preview.
    pub(super) preview: Option<u32>,
}

impl Sub {
    /// Classifies a publication; advances `delivered` when it is the next one.
    pub(super) fn check(&mut self, p: &Encoded) -> Continuity {
        let c = Continuity::of(&self.epoch, self.delivered, &p.epoch, p.offset);
        if c == Continuity::Next {
            self.delivered = p.offset;
        }
        c
    }

    /// A backlog publication reached the writer. False when the subscription ends (a gap).
    pub(super) fn on_recovered(&mut self, p: &Arc<Encoded>, out: &mut Delivery) -> bool {
        if !out.deliver(self, p) {
            return false;
        }
        if self.catchup_until == Some(p.offset) {
            // Caught up: what arrived live meanwhile follows, in order.
            self.catchup_until = None;
            return self.release_held(out);
        }
        true
    }

    /// A live publication reached the writer: delivered, held, or dropped as covered by the
    /// backlog. More than `held_limit` held marks the flush as overflowing. False when the
    /// subscription ends (a gap).
    pub(super) fn on_live(
        &mut self,
        p: &Arc<Encoded>,
        held_limit: usize,
        out: &mut Delivery,
    ) -> bool {
        if let Some(until) = self.catchup_until
            && !self.awaiting_reply
            && p.offset <= until
            && *p.epoch == *self.epoch
        {
            // Covered by the backlog.
            true
        } else if self.awaiting_reply || self.catchup_until.is_some() {
            self.held.push(p.clone());
            out.overflow |= self.held.len() > held_limit;
            true
        } else {
            out.deliver(self, p)
        }
    }

    /// The subscribe reply was written: held publications follow, unless a backlog is still
    /// to come. False when the subscription ends (a gap).
    pub(super) fn on_reply_written(&mut self, out: &mut Delivery) -> bool {
        self.awaiting_reply = false;
        if let Some(until) = self.catchup_until {
            // Held ones the backlog covers go; the rest wait for it.
            self.held.retain(|p| p.offset > until || *p.epoch != *self.epoch);
            return true;
        }
        self.release_held(out)
    }

    /// Delivers the held publications in order, stopping at a gap (then false).
    fn release_held(&mut self, out: &mut Delivery) -> bool {
        for p in std::mem::take(&mut self.held) {
            if !out.deliver(self, &p) {
                return false;
            }
        }
        true
    }
}

impl Session {
    /// Moves backlog publications into the outbox while it is below a quarter of its bounds.
    pub(super) fn feed_backlogs(&mut self) {
        if self.subs.values().all(|s| s.backlog.is_empty()) {
            return;
        }
        let limits = &self.hub.config.limits;
        let (max_bytes, max_messages) =
            (limits.outbound_queue_bytes / 4, (limits.outbound_queue_messages / 4).max(1));
        for sub in self.subs.values_mut() {
            while let Some(p) = sub.backlog.front() {
                let (len, bytes) = self.outbox.queued();
                // Into an empty queue always: a publication larger than the share (a namespace
                // with large messages) would otherwise never be fed.
                if len > 0 && (len >= max_messages || bytes + p.frame.len() > max_bytes) {
                    return;
                }
                let p = sub.backlog.pop_front().expect("front exists");
                if self.outbox.push(Outgoing::Recovered(p)).is_err() {
                    return;
                }
            }
        }
    }
}
