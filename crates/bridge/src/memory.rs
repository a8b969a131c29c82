//! An in-process source: the application sends events from its own code (or its tests), and the
//! bridge maps and publishes them as it would a bus's (seed 004's in-memory event bus).

use crate::source::{Event, EventSource, SourceError};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What the source did with the events, for tests.
#[derive(Debug, Default)]
pub struct MemoryLog {
    /// Ids of acknowledged events, in order.
    pub acked: Vec<String>,
    /// Dead-lettered events with their reasons.
    pub dead: Vec<(Event, String)>,
}

/// Sends events into a [`MemorySource`]; cloneable.
#[derive(Clone)]
pub struct MemorySender {
    tx: mpsc::UnboundedSender<Event>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl MemorySender {
    /// Sends an event; its id is a sequence number. False when the source is gone.
    pub fn send(&self, subject: &str, payload: serde_json::Value) -> bool {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.tx.send(Event { id: id.to_string(), subject: subject.to_string(), payload }).is_ok()
    }
}

/// The receiving end.
pub struct MemorySource {
    rx: mpsc::UnboundedReceiver<Event>,
    log: Arc<Mutex<MemoryLog>>,
}

/// A connected sender and source, and the source's log.
pub fn memory_source() -> (MemorySender, MemorySource, Arc<Mutex<MemoryLog>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let log = Arc::new(Mutex::new(MemoryLog::default()));
    (MemorySender { tx, next_id: Default::default() }, MemorySource { rx, log: log.clone() }, log)
}

#[async_trait]
impl EventSource for MemorySource {
    async fn next(&mut self) -> Result<Event, SourceError> {
        self.rx.recv().await.ok_or(SourceError::Closed)
    }

    async fn ack(&mut self, event: &Event) -> Result<(), SourceError> {
        self.log.lock().acked.push(event.id.clone());
        Ok(())
    }

    async fn dead_letter(&mut self, event: &Event, reason: &str) -> Result<(), SourceError> {
        self.log.lock().dead.push((event.clone(), reason.to_string()));
        Ok(())
    }

    async fn lag(&mut self) -> Option<u64> {
        Some(self.rx.len() as u64)
    }
}
