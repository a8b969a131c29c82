//! The writer: drains the outbox into the socket, applying each subscription's continuity
//! rules, batching messages into frames, and closing a slow consumer whose live publications
//! outran a catch-up.

use super::subscription::Sub;
use super::{Close, Session};
use crate::frame::Encoded;
use crate::outbox::Outgoing;
use axum::extract::ws::{Message, Utf8Bytes};
use futures_util::{Sink, SinkExt};
use herald_protocol::reply;
use herald_protocol::{CloseCode, Continuity, ErrorCode};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Largest frame the writer builds from batched messages. Small: each connection's socket keeps
/// a write buffer the size of the largest frame it was ever sent for as long as it is open (a
/// follower that fell behind during a burst would keep a 256 KiB buffer), and batching gains
/// little past a few KiB per write.
const MAX_BATCH_BYTES: usize = 16 * 1024;

/// Builds outgoing frames: several messages joined by `\n`, one publication sent as-is.
#[derive(Default)]
struct Batch {
    /// Frames ready to write.
    frames: Vec<Utf8Bytes>,
    /// The frame being built.
    current: String,
    /// A lone publication frame not yet copied into `current`.
    single: Option<Utf8Bytes>,
    /// Bytes in all frames.
    bytes: usize,
}

impl Batch {
    fn add_shared(&mut self, frame: &Utf8Bytes) {
        if self.current.is_empty() && self.single.is_none() {
            self.single = Some(frame.clone());
        } else {
            self.add(frame.as_str());
        }
    }

    /// A frame of its own, shared (a `chunk` part): written as-is after what is batched.
    fn add_frame(&mut self, frame: &Utf8Bytes) {
        self.cut();
        self.bytes += frame.len();
        self.frames.push(frame.clone());
    }

    fn add(&mut self, line: &str) {
        self.start_line(line.len());
        self.current.push_str(line);
    }

    /// A protocol v2 publication: `[N` and the tail shared by its subscribers, written straight
    /// into the frame being built.
    fn add_compact(&mut self, n: u32, tail: [&str; 3]) {
        let mut digits = itoa::Buffer::new();
        let n = digits.format(n);
        self.start_line(1 + n.len() + tail.iter().map(|t| t.len()).sum::<usize>());
        self.current.push('[');
        self.current.push_str(n);
        for piece in tail {
            self.current.push_str(piece);
        }
    }

    /// Makes room for a line of `len` bytes in `current`: after a `\n`, or in a new frame. The
    /// room is reserved at once, so that a frame of one line is allocated once and exactly (its
    /// bytes then become the frame without another allocation).
    fn start_line(&mut self, len: usize) {
        if let Some(single) = self.single.take() {
            self.current.reserve(single.len() + 1 + len);
            self.current.push_str(single.as_str());
        }
        if !self.current.is_empty() {
            if self.current.len() + len > MAX_BATCH_BYTES {
                self.cut();
            } else {
                self.current.reserve(1 + len);
                self.current.push('\n');
                return;
            }
        }
        self.current.reserve_exact(len);
    }

    fn cut(&mut self) {
        if let Some(single) = self.single.take() {
            self.bytes += single.len();
            self.frames.push(single);
        }
        if !self.current.is_empty() {
            let s = std::mem::take(&mut self.current);
            self.bytes += s.len();
            self.frames.push(s.into());
        }
    }
}

/// What one flush collects: the frames to write and what became of the subscriptions.
#[derive(Default)]
pub(super) struct Delivery {
    /// The frames being built.
    batch: Batch,
    /// Publications delivered, for the deliveries counter.
    delivered: u64,
    /// When the oldest delivered publication was accepted, for the latency histogram.
    oldest: Option<Instant>,
    /// Channels that hit a gap: they get an `unsubscribe` push asking to resubscribe.
    gaps: Vec<Arc<str>>,
    /// View subscriptions (channel, name) whose stream was lost: likewise.
    view_resets: Vec<(Arc<str>, Arc<str>)>,
    /// More live publications were held than the queue allows: a slow consumer.
    pub(super) overflow: bool,
}

impl Delivery {
    /// Adds `p` when it is `sub`'s next publication, drops a duplicate; false on a gap (the
    /// channel is noted in `gaps`).
    pub(super) fn deliver(&mut self, sub: &mut Sub, p: &Arc<Encoded>) -> bool {
        match sub.check(p) {
            Continuity::Next => {
                self.add_publication(sub, p);
                self.delivered += 1;
                self.oldest = Some(self.oldest.map_or(p.accepted, |o| o.min(p.accepted)));
                true
            }
            Continuity::Duplicate => true,
            Continuity::Gap => {
                self.gaps.push(p.channel.clone());
                false
            }
        }
    }
}

impl Delivery {
    /// Writes `p` as `sub` takes it: a truncated preview, in parts, compact, or the shared frame.
    fn add_publication(&mut self, sub: &Sub, p: &Encoded) {
        let len = p.frame.len();
        // The frame is longer than its `data`: only a frame over the limit may need cutting.
        if let Some(max) = sub.preview
            && len > max as usize
            && let Some(short) = herald_protocol::chunk::preview(p.publication_json(), max as usize)
        {
            let mut line = String::with_capacity(reply::PUB_PREFIX.len() + short.len() + 1);
            line.push_str(reply::PUB_PREFIX);
            line.push_str(&short);
            line.push('}');
            self.batch.add(&line);
        } else if sub.chunk > 0 && len > sub.chunk as usize {
            // Shared by the publication's subscribers, one part per frame.
            for frame in p.chunk_frames(sub.chunk as usize).iter() {
                self.batch.add_frame(frame);
            }
        } else {
            match sub.n {
                Some(n) => self.batch.add_compact(n, p.compact_tail()),
                None => self.batch.add_shared(&p.frame),
            }
        }
    }
}

impl Session {
    /// Drains the outbox into the socket. `Err` when the socket is gone.
    pub(super) async fn flush<S>(&mut self, socket: &mut S) -> Result<Option<Close>, ()>
    where
        S: Sink<Message, Error = axum::Error> + Unpin,
    {
        let began = Instant::now();
        // A fresh queue per flush: an idle connection then holds no drained capacity.
        let mut items = VecDeque::new();
        let close = self.outbox.drain(&mut items);
        let mut out = Delivery::default();
        let held_limit = self.hub.config.limits.outbound_queue_messages;
        for item in items.drain(..) {
            match item {
                Outgoing::Recovered(p) => {
                    let Some(sub) = self.subs.get_mut(&*p.channel) else { continue };
                    if !sub.on_recovered(&p, &mut out) {
                        self.subs.remove(&*p.channel);
                    }
                }
                Outgoing::Pub(p) => {
                    let Some(sub) = self.subs.get_mut(&*p.channel) else { continue };
                    if !sub.on_live(&p, held_limit, &mut out) {
                        self.subs.remove(&*p.channel);
                    }
                }
                // A reply of several messages (a member list in parts) may span frames.
                Outgoing::Line(line) => line.split('\n').for_each(|l| out.batch.add(l)),
                Outgoing::Subscribed { channel, line } => {
                    out.batch.add(&line);
                    if let Some(sub) = self.subs.get_mut(&channel)
                        && !sub.on_reply_written(&mut out)
                    {
                        self.subs.remove(&channel);
                    }
                }
                Outgoing::Reset(channel) => {
                    if self.subs.remove(&channel).is_some() {
                        out.gaps.push(channel);
                    }
                }
                Outgoing::View { frame, accepted } => {
                    out.batch.add(&frame);
                    out.delivered += 1;
                    out.oldest = Some(out.oldest.map_or(accepted, |o| o.min(accepted)));
                }
                Outgoing::ViewReset { channel, sub } => {
                    if let Some(of) = crate::presence::channel_of(&channel) {
                        // The member list lost its stream: the channel subscription ends
                        // too, and is resumed with both positions.
                        let of: Arc<str> = of.into();
                        if self.subs.remove(&of).is_some() {
                            out.gaps.push(of);
                        }
                    } else if self.extras.views.remove(&sub).is_some() {
                        out.view_resets.push((channel, sub));
                    }
                }
                Outgoing::Volatile(frame) => out.batch.add(&frame),
            }
        }
        let Delivery { mut batch, delivered, oldest, gaps, view_resets, overflow } = out;
        if overflow {
            // Live publications outran a catch-up: this connection is a slow consumer.
            self.outbox.close(
                CloseCode::SlowConsumer,
                "live publications outran the recovery of a subscription",
            );
        }
        for channel in &gaps {
            tracing::debug!(channel = %channel, client = %self.client(), "position gap: asking to resubscribe");
            batch.add(&reply::push_unsubscribe(
                channel,
                ErrorCode::Resubscribe,
                "position gap: subscribe again with since",
                true,
            ));
        }
        for (channel, sub) in &view_resets {
            batch.add(&reply::push_unsubscribe_view(
                channel,
                sub,
                ErrorCode::Resubscribe,
                "the channel's stream was lost: subscribe again with since",
                true,
            ));
        }
        batch.cut();
        for channel in gaps {
            self.hub.remove_subscriber(&channel, self.id).await;
            self.leave_presence(&channel).await;
        }
        for (channel, sub) in view_resets {
            self.hub.remove_view(&channel, self.id, &sub).await;
        }
        if batch.frames.is_empty() {
            return Ok(close);
        }
        let bytes = batch.bytes;
        // One frame at a time, each flushed: frames fed ahead of a full socket would pile up in
        // its write buffer, which keeps that size for the connection's life (a follower that
        // fell behind during a burst kept a buffer as large as the burst). Frames are up to
        // MAX_BATCH_BYTES, so this costs no extra writes.
        let write = async {
            for frame in batch.frames {
                socket.send(Message::Text(frame)).await?;
            }
            Ok::<(), axum::Error>(())
        };
        let written = tokio::select! {
            r = write => r.is_ok(),
            _ = self.outbox.closed(), if close.is_none() => {
                // Closed while stuck writing (slow consumer, kick): stop here.
                return Ok(self.outbox.drain(&mut VecDeque::new()));
            }
        };
        if !written {
            return Err(());
        }
        let m = &self.hub.metrics;
        m.bytes_out.inc_by(bytes as u64);
        if delivered > 0 {
            m.deliveries.inc_by(delivered);
        }
        if let Some(t) = oldest {
            m.delivery_queue.observe(began.saturating_duration_since(t).as_secs_f64());
            m.delivery_latency.observe(t.elapsed().as_secs_f64());
        }
        Ok(close)
    }
}
