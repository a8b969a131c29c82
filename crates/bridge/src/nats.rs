//! The NATS JetStream source (feature `nats`): a durable pull consumer on a subject filter of
//! one stream, each message acknowledged only after everything it maps to was published.
//!
//! ```toml
//! [[bridge]]
//! name = "decisions"
//! source = "nats"
//! url = "nats://127.0.0.1:4222"   # one server, or several separated by commas
//! stream = "EVENTS"               # the JetStream stream read
//! subject = "events.>"            # the consumer's filter subject
//! durable = "herald-decisions"    # the consumer's name (default: herald-NAME)
//! dead_letter = "dead.events"     # where refused events go (default: logged only)
//! ack_wait = "5s"                 # an unacknowledged message comes back after this
//! create_stream = false           # true: create `stream` with `subjects` when it is missing
//! subjects = []                   # the subjects of a stream the bridge creates
//! ```
//!
//! # Stream and consumer
//!
//! The bridge reads an existing stream; it creates it (file storage, `subjects`) only with
//! `create_stream = true`, and never changes a stream that exists. It creates or updates the
//! durable consumer `durable` on it: pull, explicit acks, deliver all, filter `subject`,
//! `ack_wait`, and `max_ack_pending = 1`.
//!
//! # Order and redelivery
//!
//! `max_ack_pending = 1` makes JetStream hand out one message at a time: the next is delivered
//! only once the previous one was acknowledged, so the bridge sees the stream's order even across
//! redeliveries. A message delivered to a node that died (or whose connection dropped) before
//! acknowledging it is delivered again when `ack_wait` has passed, before anything after it: a
//! takeover or a restart therefore waits up to `ack_wait` and then goes on from the first
//! unacknowledged message. The cost is one round trip per event (the acknowledgement is
//! confirmed by the server before the next message comes): throughput is bounded by the latency
//! to the server (a few thousand events/s on one host; see `tests/nats.rs`).
//!
//! An event's id is its stream sequence number: unique in the stream and the same on every
//! redelivery, so a redelivered event is answered by the hub as a duplicate. A stream deleted
//! and created again restarts its sequence: do that only after the namespaces'
//! `idempotency_window`. The subject of the event is the message's subject; its payload the
//! message body parsed as JSON. The lag is the consumer's pending count that came with the last
//! message.
//!
//! `next()` is cancel-safe: the message stream lives in the source, and a message returned but
//! neither acknowledged nor dead-lettered is returned again by the next `next()`. A copy of an
//! acknowledged message (a redelivery that crossed its acknowledgement, or one whose
//! acknowledgement a restarted server lost) is acknowledged again and skipped.
//!
//! # Dead letters
//!
//! A refused event is published to `dead_letter` with the original body and the headers
//! `Herald-Reason`, `Herald-Bridge`, `Herald-Subject` (the original subject) and
//! `Herald-Sequence`. When a stream captures that subject (it may be the source stream itself,
//! with `dead_letter` outside `subject`) the publication is confirmed by JetStream; otherwise it
//! is a plain NATS message, seen only by current subscribers. A body that is not JSON never
//! reaches the rules: the source dead-letters it itself (reason `payload is not JSON: …`),
//! acknowledges it and reads on; it is logged and counted in the bridge's `dead_lettered`.
//!
//! # Outages
//!
//! The client reconnects by itself (every 100 ms to 1 s). While it is disconnected every call
//! answers [`SourceError::Unavailable`] at once (the bridge reports `up: false`); a pending
//! `next()` is woken with it when the connection drops.

use crate::config::BridgeConfig;
use crate::source::{Event, EventSource, SourceError};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::watch;

/// The options of a `source = "nats"` bridge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsOptions {
    /// The server(s), `nats://host:port` (comma-separated for several).
    pub url: String,
    /// The JetStream stream read.
    pub stream: String,
    /// The consumer's filter subject (wildcards allowed).
    pub subject: String,
    /// The durable consumer's name; default `herald-NAME`.
    #[serde(default)]
    pub durable: Option<String>,
    /// Subject refused events are published to; none: they are only logged.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// How long JetStream waits for an acknowledgement before delivering a message again.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Create the stream (with `subjects`) when it does not exist.
    #[serde(default)]
    pub create_stream: bool,
    /// The subjects of the stream the bridge creates (`create_stream = true`).
    #[serde(default)]
    pub subjects: Vec<String>,
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(5)
}

/// How many messages one pull request asks for (JetStream still hands out one at a time).
const PULL_BATCH: usize = 16;
/// How long a pull request lasts, and the server's heartbeat on an idle one.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(3);

/// Whether `subject` is a valid NATS subject (`wildcards`: `*` tokens and a last `>` allowed).
fn valid_subject(subject: &str, wildcards: bool) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.contains(char::is_whitespace)
            && match *t {
                "*" => wildcards,
                ">" => wildcards && i == tokens.len() - 1,
                _ => !t.contains(['*', '>']),
            }
    })
}

/// Whether the filter `filter` (with wildcards) matches the literal subject `subject`.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A name JetStream accepts for a stream or consumer.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c))
}

/// Parses and checks a bridge's options, without connecting.
pub fn options(config: &BridgeConfig) -> Result<NatsOptions, String> {
    let o: NatsOptions = config
        .options
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| format!("nats options: {}", e.message().trim_end()))?;
    if !["nats://", "tls://"].iter().any(|scheme| {
        o.url.split(',').all(|u| u.trim().starts_with(scheme) && u.trim().len() > scheme.len())
    }) {
        return Err(format!("url: {:?} is not nats://HOST:PORT (or tls://)", o.url));
    }
    if !valid_name(&o.stream) {
        return Err(format!("stream: {:?} is not a stream name (no spaces, . * > / \\)", o.stream));
    }
    if !valid_subject(&o.subject, true) {
        return Err(format!("subject: {:?} is not a NATS subject", o.subject));
    }
    if let Some(durable) = &o.durable
        && !valid_name(durable)
    {
        return Err(format!("durable: {durable:?} is not a consumer name (no spaces, . * > / \\)"));
    }
    if let Some(dead) = &o.dead_letter {
        if !valid_subject(dead, false) {
            return Err(format!("dead_letter: {dead:?} is not a NATS subject without wildcards"));
        }
        if subject_matches(&o.subject, dead) {
            return Err(format!(
                "dead_letter: {dead:?} is matched by subject {:?}: dead letters would be read again",
                o.subject
            ));
        }
    }
    if o.ack_wait < Duration::from_millis(500) {
        return Err("ack_wait: at least 500ms".into());
    }
    if o.create_stream {
        if o.subjects.is_empty() {
            return Err("subjects: create_stream = true needs the stream's subjects".into());
        }
        if let Some(bad) = o.subjects.iter().find(|s| !valid_subject(s, true)) {
            return Err(format!("subjects: {bad:?} is not a NATS subject"));
        }
    } else if !o.subjects.is_empty() {
        return Err("subjects: only with create_stream = true".into());
    }
    Ok(o)
}

/// Checks a bridge's options without connecting (for [`crate::sources::check`]).
pub fn check(config: &BridgeConfig) -> Result<(), String> {
    options(config).map(drop)
}

/// The connection, once made.
struct Connection {
    /// The client (it reconnects by itself).
    client: async_nats::Client,
    /// JetStream over it.
    jetstream: jetstream::Context,
    /// Whether the client is connected right now (set by its event callback).
    connected: watch::Receiver<bool>,
}

/// A message returned by `next()` and not yet acknowledged.
struct InHand {
    /// Its stream sequence.
    sequence: u64,
    /// The message, to acknowledge it and to dead-letter its original body.
    message: jetstream::Message,
    /// Set when its body is not JSON: the source dead-letters it itself.
    invalid: Option<String>,
}

/// A durable pull consumer on a JetStream stream.
pub struct NatsSource {
    /// The bridge's name (dead-letter headers, client name).
    bridge: String,
    /// Its options.
    options: NatsOptions,
    /// The consumer's name.
    durable: String,
    /// The connection, made by the first `next()`.
    connection: Option<Connection>,
    /// The consumer's message stream, made (again) by `next()` when missing.
    messages: Option<consumer::pull::Stream>,
    /// The message being handled.
    in_hand: Option<InHand>,
    /// The last acknowledged stream sequence: older copies are stale redeliveries.
    last_acked: u64,
    /// The consumer's pending count that came with the last message.
    pending: Option<u64>,
    /// Bodies that are not JSON, dead-lettered by the source itself.
    discarded: u64,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Unavailable(format!("nats: {what}: {e}"))
}

impl NatsSource {
    /// A source for `config` (it connects on its first read).
    pub fn new(config: &BridgeConfig) -> Result<NatsSource, String> {
        let options = options(config)?;
        let durable = options.durable.clone().unwrap_or_else(|| format!("herald-{}", config.name));
        Ok(NatsSource {
            bridge: config.name.clone(),
            options,
            durable,
            connection: None,
            messages: None,
            in_hand: None,
            last_acked: 0,
            pending: None,
            discarded: 0,
        })
    }

    /// The connection, made when missing; unavailable while it is down.
    async fn connection(&mut self) -> Result<&Connection, SourceError> {
        if self.connection.is_none() {
            let (tx, connected) = watch::channel(true);
            let tx = std::sync::Arc::new(tx);
            let client = async_nats::ConnectOptions::new()
                .name(format!("herald-bridge {}", self.bridge))
                .connection_timeout(Duration::from_secs(2))
                .request_timeout(Some(Duration::from_secs(5)))
                .reconnect_delay_callback(|attempts| {
                    Duration::from_millis((100u64 << attempts.min(4)).min(1000))
                })
                .event_callback(move |event| {
                    let tx = tx.clone();
                    async move {
                        match event {
                            async_nats::Event::Connected => tx.send_replace(true),
                            async_nats::Event::Disconnected | async_nats::Event::Closed => {
                                tx.send_replace(false)
                            }
                            _ => return,
                        };
                    }
                })
                .connect(self.options.url.as_str())
                .await
                .map_err(|e| unavailable("connect", e))?;
            let jetstream = jetstream::new(client.clone());
            self.connection = Some(Connection { client, jetstream, connected });
        }
        let connection = self.connection.as_ref().expect("made above");
        if *connection.connected.borrow() {
            Ok(connection)
        } else {
            Err(SourceError::Unavailable("nats: disconnected".into()))
        }
    }

    /// Binds the stream and the consumer and opens the consumer's message stream.
    async fn open(&mut self) -> Result<consumer::pull::Stream, SourceError> {
        let o = self.options.clone();
        let durable = self.durable.clone();
        let js = &self.connection().await?.jetstream;
        let stream = if o.create_stream {
            js.get_or_create_stream(stream::Config {
                name: o.stream.clone(),
                subjects: o.subjects.clone(),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&format!("stream {}", o.stream), e))?
        } else {
            js.get_stream(&o.stream)
                .await
                .map_err(|e| unavailable(&format!("stream {}", o.stream), e))?
        };
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: o.subject.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::All,
                ack_wait: o.ack_wait,
                max_ack_pending: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&format!("consumer {durable}"), e))?;
        consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| unavailable(&format!("consumer {durable}"), e))
    }

    /// Publishes a dead letter: the original body with the reason in headers.
    async fn publish_dead_letter(
        &mut self,
        message: &jetstream::Message,
        sequence: u64,
        reason: &str,
    ) -> Result<(), SourceError> {
        let Some(subject) = self.options.dead_letter.clone() else {
            tracing::warn!(bridge = %self.bridge, sequence, reason, "nats: dead letter dropped (no dead_letter subject)");
            return Ok(());
        };
        let mut headers = HeaderMap::new();
        headers.insert("Herald-Reason", reason.replace(['\r', '\n'], " ").as_str());
        headers.insert("Herald-Bridge", self.bridge.as_str());
        headers.insert("Herald-Subject", message.subject.as_str());
        headers.insert("Herald-Sequence", sequence.to_string().as_str());
        let payload = message.payload.clone();
        let connection = self.connection().await?;
        let sent = connection
            .jetstream
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await
            .map_err(|e| unavailable("dead letter", e))?
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                // No stream keeps that subject: a plain message, for whoever listens.
                connection
                    .client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| unavailable("dead letter", e))?;
                connection.client.flush().await.map_err(|e| unavailable("dead letter", e))
            }
            Err(e) => Err(unavailable("dead letter", e)),
        }
    }

    /// Acknowledges the message in hand (confirmed by the server) and forgets it.
    async fn ack_in_hand(&mut self) -> Result<(), SourceError> {
        self.connection().await?;
        let Some(hand) = &self.in_hand else { return Ok(()) };
        hand.message.double_ack().await.map_err(|e| unavailable("ack", e))?;
        self.last_acked = self.last_acked.max(hand.sequence);
        self.in_hand = None;
        Ok(())
    }

    /// The next message of the consumer, waking with an error when the connection drops.
    async fn receive(&mut self) -> Result<jetstream::Message, SourceError> {
        if self.messages.is_none() {
            self.messages = Some(self.open().await?);
        }
        let mut connected = self.connection().await?.connected.clone();
        let messages = self.messages.as_mut().expect("opened above");
        tokio::select! {
            message = messages.next() => match message {
                Some(Ok(message)) => Ok(message),
                Some(Err(e)) => {
                    // A broken pull (deleted consumer, missed heartbeats): open a new one. A
                    // message lost with it comes back after ack_wait.
                    self.messages = None;
                    Err(unavailable("consumer", e))
                }
                None => {
                    self.messages = None;
                    Err(SourceError::Unavailable("nats: consumer stream ended".into()))
                }
            },
            _ = connected.wait_for(|up| !*up) => {
                Err(SourceError::Unavailable("nats: disconnected".into()))
            }
        }
    }
}

#[async_trait]
impl EventSource for NatsSource {
    async fn next(&mut self) -> Result<Event, SourceError> {
        loop {
            if let Some(hand) = &self.in_hand {
                match hand.invalid.clone() {
                    None => {
                        return Ok(Event {
                            id: hand.sequence.to_string(),
                            subject: hand.message.subject.to_string(),
                            payload: serde_json::from_slice(&hand.message.payload)
                                .expect("checked when received"),
                        });
                    }
                    Some(reason) => {
                        let (message, sequence) = (hand.message.clone(), hand.sequence);
                        tracing::warn!(bridge = %self.bridge, sequence, reason = %reason, "nats: event dead-lettered");
                        self.publish_dead_letter(&message, sequence, &reason).await?;
                        self.ack_in_hand().await?;
                        self.discarded += 1;
                        continue;
                    }
                }
            }
            let message = self.receive().await?;
            let info = message.info().map_err(|e| unavailable("message metadata", e))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            if sequence <= self.last_acked {
                // A copy of an acknowledged message: the server lost that acknowledgement (it
                // restarted before storing it) or redelivered before it arrived. Acknowledge
                // again, or JetStream holds everything after it back.
                message.ack().await.map_err(|e| unavailable("ack", e))?;
                continue;
            }
            self.pending = Some(pending);
            let invalid = serde_json::from_slice::<serde_json::Value>(&message.payload)
                .err()
                .map(|e| format!("payload is not JSON: {e}"));
            self.in_hand = Some(InHand { sequence, message, invalid });
        }
    }

    async fn ack(&mut self, event: &Event) -> Result<(), SourceError> {
        match &self.in_hand {
            Some(hand) if hand.sequence.to_string() == event.id => self.ack_in_hand().await,
            // Not the message in hand (already acknowledged): nothing to do.
            _ => Ok(()),
        }
    }

    async fn dead_letter(&mut self, event: &Event, reason: &str) -> Result<(), SourceError> {
        let Some(hand) = self.in_hand.as_ref().filter(|h| h.sequence.to_string() == event.id)
        else {
            return Ok(());
        };
        let (message, sequence) = (hand.message.clone(), hand.sequence);
        self.publish_dead_letter(&message, sequence, reason).await
    }

    fn dead_lettered(&self) -> u64 {
        self.discarded
    }

    async fn lag(&mut self) -> Option<u64> {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: &str) -> Result<NatsOptions, String> {
        let text = format!(
            "[[bridge]]\nname = \"b\"\nsource = \"nats\"\n{keys}\n[[bridge.rule]]\nchannels = [\"s:x\"]\n"
        );
        #[derive(Deserialize)]
        struct Doc {
            bridge: Vec<toml::Table>,
        }
        let doc: Doc = toml::from_str(&text).unwrap();
        let config = BridgeConfig::parse_all(&doc.bridge, |_| true).unwrap().remove(0);
        options(&config)
    }

    const OK: &str = "url = \"nats://127.0.0.1:4222\"\nstream = \"EVENTS\"\nsubject = \"events.>\"";

    #[test]
    fn options_and_defaults() {
        let o = config(OK).unwrap();
        assert_eq!(o.ack_wait, Duration::from_secs(5));
        assert!(o.durable.is_none() && o.dead_letter.is_none() && !o.create_stream);
        let o = config(&format!(
            "{OK}\ndead_letter = \"dead.events\"\ncreate_stream = true\nsubjects = [\"events.>\", \"dead.events\"]\nack_wait = \"2s\""
        ))
        .unwrap();
        assert_eq!(o.ack_wait, Duration::from_secs(2));
    }

    #[test]
    fn bad_options_name_the_key() {
        let err = |extra: &str| config(&format!("{OK}\n{extra}")).unwrap_err();
        assert!(err("colour = 1").contains("colour"));
        assert!(config("stream = \"S\"\nsubject = \"a\"").unwrap_err().contains("url"));
        assert!(err("dead_letter = \"events.dead\"").contains("dead_letter"));
        assert!(err("dead_letter = \"dead.*\"").contains("dead_letter"));
        assert!(err("durable = \"a.b\"").contains("durable"));
        assert!(err("ack_wait = \"1ms\"").contains("ack_wait"));
        assert!(err("create_stream = true").contains("subjects"));
        assert!(err("subjects = [\"a\"]").contains("subjects"));
        let url = config("url = \"http://x\"\nstream = \"S\"\nsubject = \"a\"").unwrap_err();
        assert!(url.contains("url"), "{url}");
        let stream = config("url = \"nats://x:1\"\nstream = \"A.B\"\nsubject = \"a\"").unwrap_err();
        assert!(stream.contains("stream"), "{stream}");
        let subject =
            config("url = \"nats://x:1\"\nstream = \"S\"\nsubject = \"a.>.b\"").unwrap_err();
        assert!(subject.contains("subject"), "{subject}");
    }

    #[test]
    fn subject_filters() {
        assert!(subject_matches("events.>", "events.a.b"));
        assert!(subject_matches("events.*", "events.a"));
        assert!(!subject_matches("events.*", "events.a.b"));
        assert!(!subject_matches("events.>", "events"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.c"));
    }
}
