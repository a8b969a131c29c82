//! Fan-out of what arrives on the pub/sub connection, off the task that reads it (see the module
//! docs' "Fan-out").
//!
//! The pub/sub task parses each message and checks its position; handing it to the local
//! subscribers (a push per subscriber and a wake per connection) is the costly part, and a
//! node's channels need not wait for each other. So the task sends each channel's work to one
//! of a few lanes, picked by a hash of the channel: a channel's deliveries and resets keep
//! their order, different channels run on different cores.

use crate::engine::Delivery;
use crate::frame::Encoded;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Jobs queued per lane before the pub/sub task waits (and Redis buffers for this node).
const LANE_DEPTH: usize = 1024;

/// Work for the local subscribers of one channel, in the order it arrived.
pub(super) enum Job {
    /// A publication, in offset order.
    Deliver(Arc<Encoded>),
    /// A volatile event of the channel.
    Volatile(String, Arc<str>),
    /// The channel's subscribers must resubscribe (gap, reused position).
    Reset(String),
    /// Answered once every job queued before it on the lane is done.
    Barrier(oneshot::Sender<()>),
}

/// The lanes: one task each, feeding [`Delivery`].
pub(super) struct Dispatch {
    /// Senders of the lanes; a channel always goes to the same one.
    lanes: Vec<mpsc::Sender<Job>>,
}

impl Dispatch {
    /// Starts one lane per available core (at most 8).
    pub(super) fn start(delivery: Arc<dyn Delivery>) -> Dispatch {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let lanes = (0..n)
            .map(|_| {
                let (tx, rx) = mpsc::channel(LANE_DEPTH);
                tokio::spawn(lane(delivery.clone(), rx));
                tx
            })
            .collect();
        Dispatch { lanes }
    }

    /// Queues `job` on the lane of `channel`; waits while that lane is full.
    pub(super) async fn send(&self, channel: &str, job: Job) {
        // A fixed-key hasher: the lane of a channel must not change while the node runs.
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(channel);
        let lane = &self.lanes[(hash % self.lanes.len() as u64) as usize];
        // A lane ends only with the runtime.
        let _ = lane.send(job).await;
    }

    /// Returns once every job queued so far, on every lane, is done: a reset of every channel
    /// after it cannot be overtaken by an older delivery.
    pub(super) async fn settle(&self) {
        let mut waits = Vec::with_capacity(self.lanes.len());
        for lane in &self.lanes {
            let (tx, rx) = oneshot::channel();
            if lane.send(Job::Barrier(tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
    }
}

/// One lane: runs its jobs in order until the engine drops the sender.
async fn lane(delivery: Arc<dyn Delivery>, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.recv().await {
        match job {
            Job::Deliver(p) => delivery.deliver(p),
            Job::Volatile(channel, frame) => delivery.deliver_volatile(&channel, frame),
            Job::Reset(channel) => delivery.reset(Some(&channel)),
            Job::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// Records what reaches it, by channel.
    #[derive(Default)]
    struct Log(Mutex<Vec<(String, String)>>);

    impl Delivery for Log {
        fn deliver(&self, p: Arc<Encoded>) {
            self.0.lock().push((p.channel.to_string(), p.offset.to_string()));
        }
        fn reset(&self, channel: Option<&str>) {
            self.0.lock().push((channel.unwrap_or("*").into(), "reset".into()));
        }
        fn deliver_volatile(&self, channel: &str, frame: Arc<str>) {
            self.0.lock().push((channel.into(), frame.to_string()));
        }
    }

    /// Each channel's jobs arrive in the order sent, whichever lane it hashes to; `settle`
    /// returns only after everything sent before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_each_channel_in_order() {
        let log = Arc::new(Log::default());
        let dispatch = Dispatch::start(log.clone());
        let channels: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
        for offset in 1..=200u64 {
            for c in &channels {
                let p = Encoded::from_json(c, "e", offset, "{}");
                dispatch.send(c, Job::Deliver(Arc::new(p))).await;
                if offset == 100 {
                    dispatch.send(c, Job::Reset(c.clone())).await;
                    dispatch.send(c, Job::Volatile(c.clone(), "v".into())).await;
                }
            }
        }
        dispatch.settle().await;
        let log = log.0.lock();
        assert_eq!(log.len(), channels.len() * 202);
        for c in &channels {
            let seen: Vec<&str> =
                log.iter().filter(|(ch, _)| ch == c).map(|(_, what)| what.as_str()).collect();
            let mut want: Vec<String> = (1..=100).map(|o| o.to_string()).collect();
            want.extend(["reset".to_string(), "v".to_string()]);
            want.extend((101..=200).map(|o| o.to_string()));
            assert_eq!(seen, want, "channel {c}");
        }
    }
}
