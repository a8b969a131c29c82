//! A connection's bounded outbound queue.
//!
//! The fan-out pushes into it without waiting; the session drains everything queued at once and
//! writes it as one frame. A queue over its message or byte bound is closed as a slow consumer and
//! emptied: that one connection pays, nobody else waits.

use crate::frame::Encoded;
use herald_protocol::CloseCode;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::Notify;

/// One item for the socket.
#[derive(Debug)]
pub enum Outgoing {
    /// A live publication (filtered by the session against its subscription state).
    Pub(Arc<Encoded>),
    /// A recovered publication that did not fit in its subscribe reply, in offset order.
    Recovered(Arc<Encoded>),
    /// A reply or push, already encoded.
    Line(String),
    /// A subscribe reply: publications of `channel` queued before it are held until it is sent.
    Subscribed { channel: Arc<str>, line: String },
    /// The engine lost track of `channel`: its subscribers must resubscribe.
    Reset(Arc<str>),
    /// An event of a view subscription, encoded for it (crate::views).
    View {
        /// The `{"push":"view",...}` frame (shared by the followers of a presence channel).
        frame: Arc<str>,
        /// When the publication behind it was accepted, for the latency histogram.
        accepted: std::time::Instant,
    },
    /// The view subscription `sub` of `channel` lost its stream: it must resubscribe.
    ViewReset { channel: Arc<str>, sub: Arc<str> },
    /// A volatile event of `channel` (`{"push":"volatile",...}`), shared by its subscribers.
    Volatile(Arc<str>),
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Outgoing::Pub(p) | Outgoing::Recovered(p) => p.frame.len(),
            Outgoing::Line(l) | Outgoing::Subscribed { line: l, .. } => l.len(),
            Outgoing::View { frame, .. } => frame.len(),
            Outgoing::Volatile(frame) => frame.len(),
            Outgoing::Reset(_) | Outgoing::ViewReset { .. } => 64,
        }
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This push overflowed the queue: the connection is now closed as a slow consumer.
    Overflow,
    /// The queue was already closed.
    Closed,
}

struct Inner {
    queue: VecDeque<Outgoing>,
    /// Publications in `queue`: the message bound counts these; replies are bounded by the
    /// command rate limit (a frame of 300 commands must not close its own connection).
    publications: usize,
    bytes: usize,
    /// Set once, when the queue closes; boxed, since every open connection's outbox has none.
    closed: Option<Box<(CloseCode, String)>>,
}

/// The queue.
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Wakes the session when items arrive or the queue closes.
    notify: Notify,
    /// Wakes a write stuck on a slow socket when the queue closes. Separate from `notify` so
    /// that waiting for a close never swallows an "items arrived" wake-up.
    closing: Notify,
    /// Most queued items.
    max_messages: usize,
    /// Most queued bytes.
    max_bytes: usize,
}

impl Outbox {
    /// A queue with these bounds.
    pub fn new(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                publications: 0,
                bytes: 0,
                closed: None,
            }),
            notify: Notify::new(),
            closing: Notify::new(),
            max_messages,
            max_bytes,
        }
    }

    /// Queues an item.
    pub fn push(&self, item: Outgoing) -> Result<(), Refused> {
        let len = item.len();
        let mut inner = self.inner.lock();
        if inner.closed.is_some() {
            return Err(Refused::Closed);
        }
        let publication = matches!(
            item,
            Outgoing::Pub(_)
                | Outgoing::Recovered(_)
                | Outgoing::View { .. }
                | Outgoing::Volatile(_)
        );
        if (publication && inner.publications >= self.max_messages)
            || inner.bytes + len > self.max_bytes
        {
            inner.queue = VecDeque::new();
            inner.publications = 0;
            inner.bytes = 0;
            inner.closed = Some(Box::new((
                CloseCode::SlowConsumer,
                format!(
                    "outbound queue full ({} messages / {} bytes)",
                    self.max_messages, self.max_bytes
                ),
            )));
            drop(inner);
            self.notify.notify_one();
            self.closing.notify_waiters();
            return Err(Refused::Overflow);
        }
        let was_empty = inner.queue.is_empty();
        inner.queue.push_back(item);
        inner.publications += usize::from(publication);
        inner.bytes += len;
        drop(inner);
        if was_empty {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Closes the queue with a code; the session sends it and ends. The first close wins.
    pub fn close(&self, code: CloseCode, reason: impl Into<String>) {
        let mut inner = self.inner.lock();
        if inner.closed.is_none() {
            inner.closed = Some(Box::new((code, reason.into())));
        }
        drop(inner);
        self.notify.notify_one();
        self.closing.notify_waiters();
    }

    /// Moves every queued item into `into` (which should be empty); returns the close, if any.
    pub fn drain(&self, into: &mut VecDeque<Outgoing>) -> Option<(CloseCode, String)> {
        let mut inner = self.inner.lock();
        std::mem::swap(&mut inner.queue, into);
        inner.publications = 0;
        inner.bytes = 0;
        inner.closed.as_deref().cloned()
    }

    /// Publications and bytes queued now.
    pub fn queued(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.publications, inner.bytes)
    }

    /// Whether the queue has been closed.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed.is_some()
    }

    /// Waits until something is queued or the queue closes. Not an `async fn`: the future is
    /// in every idle session's task, and the wrapper would add 16 bytes to it.
    pub fn ready(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Waits until the queue is closed (used to abandon a write stuck on a slow socket).
    pub async fn closed(&self) {
        loop {
            let notified = self.closing.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_and_empties() {
        let o = Outbox::new(2, 1000);
        let p = || {
            Outgoing::Pub(Arc::new(Encoded {
                channel: "c".into(),
                epoch: "e".into(),
                offset: 1,
                frame: "{}".into(),
                accepted: std::time::Instant::now(),
                change: None,
                compact: Default::default(),
                parts: Default::default(),
            }))
        };
        o.push(p()).unwrap();
        o.push(Outgoing::Line("replies are not counted".into())).unwrap();
        o.push(p()).unwrap();
        assert_eq!(o.push(p()), Err(Refused::Overflow));
        assert_eq!(o.push(Outgoing::Line("d".into())), Err(Refused::Closed));
        let mut q = VecDeque::new();
        let closed = o.drain(&mut q);
        assert!(q.is_empty());
        assert_eq!(closed.unwrap().0, CloseCode::SlowConsumer);
        let o = Outbox::new(10, 3);
        assert_eq!(o.push(Outgoing::Line("abcd".into())), Err(Refused::Overflow));
    }

    #[tokio::test]
    async fn waiting_for_close_does_not_swallow_item_wakeups() {
        let o = std::sync::Arc::new(Outbox::new(10, 1000));
        let watcher = {
            let o = o.clone();
            tokio::spawn(async move { o.closed().await })
        };
        tokio::task::yield_now().await;
        o.push(Outgoing::Line("a".into())).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), o.ready())
            .await
            .expect("the item wake-up reaches the session");
        o.close(CloseCode::Kicked, "bye");
        tokio::time::timeout(std::time::Duration::from_secs(1), watcher).await.unwrap().unwrap();
    }
}
