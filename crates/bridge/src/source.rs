//! The seam between the bridge and a bus.

use async_trait::async_trait;

/// One event read from a bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The source's own id of the event (stream entry id, JetStream sequence, outbox row id):
    /// unique within the source, it becomes the publications' idempotency key.
    pub id: String,
    /// Where it was read from (stream key, NATS subject, outbox `subject` column); rules match
    /// on it.
    pub subject: String,
    /// The event itself, a JSON value (rules read its fields as `data.…`).
    pub payload: serde_json::Value,
}

/// Why a source could not read, acknowledge or dead-letter.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The bus is unreachable or refused the call; the runner retries with backoff and reports
    /// the source as down meanwhile.
    #[error("source unavailable: {0}")]
    Unavailable(String),
    /// The source ended (an in-process source whose senders are gone).
    #[error("source closed")]
    Closed,
}

/// A bus the bridge reads. Implementations deliver events in the bus's order and redeliver
/// every event not acknowledged (after a crash, or to the node that takes the source over).
#[async_trait]
pub trait EventSource: Send {
    /// Waits for the next event (the first unacknowledged one after a restart or takeover).
    async fn next(&mut self) -> Result<Event, SourceError>;
    /// The event and everything it mapped to was published: the bus may forget it.
    async fn ack(&mut self, event: &Event) -> Result<(), SourceError>;
    /// The event cannot be published (`reason`): keep it in the source's dead-letter target
    /// (stream, subject, table) with the reason. The runner acknowledges it afterwards.
    async fn dead_letter(&mut self, event: &Event, reason: &str) -> Result<(), SourceError>;
    /// Events waiting to be read, when the bus can tell (for the lag metric).
    async fn lag(&mut self) -> Option<u64> {
        None
    }
    /// Events the source dead-lettered itself since it was built (entries it cannot read as a
    /// JSON event never reach the rules), counted with the runner's in `dead_lettered`.
    fn dead_lettered(&self) -> u64 {
        0
    }
}
