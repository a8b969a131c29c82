//! Server-Sent Events fallback for networks that block WebSocket: `GET /sse/{channel}`.
//!
//! The SSE stream is a [`session`](crate::session) like any other, driven through the same
//! Sink/Stream seam, so order, gap-free resume, "subscribed means flowing" and slow-consumer
//! protection are the same code. This adapter sends `connect` and `subscribe` on the client's
//! behalf, answers pings, resubscribes with `since` when the session asks, and turns each
//! publication into an event whose `id` is `EPOCH:OFFSET` — so a browser's `EventSource`
//! reconnects with `Last-Event-ID` and resumes without loss.
//!
//! [`mux`] is the other SSE way in: `GET /sse` carries the ordinary wire protocol (the client
//! keeps its own protocol logic), commands arriving by `POST /sse/session/{id}`.

pub mod mux;

use crate::hub::Hub;
use crate::session::{self, Upgrade};
use axum::extract::ws::Message;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::task::AtomicWaker;
use futures_util::{Sink, Stream};
use herald_protocol::command::{Command, Request};
use herald_protocol::reply::PUB_PREFIX;
use herald_protocol::{Position, ServerMessage, split_frame};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Frames in flight between the session and the HTTP body before the session's flush waits;
/// beyond this the session's own bounded queue takes over (and closes a slow reader with
/// `slow_consumer`).
const BODY_BUFFER: usize = 16;

/// Backpressure between the session (through its [`Pipe`]) and the adapter ([`Frames`]).
#[derive(Default)]
struct Flow {
    /// Frames the session sent that the adapter has not taken yet.
    in_flight: AtomicUsize,
    /// The session's flush, waiting for the adapter to take frames.
    flush: AtomicWaker,
    /// The session is gone (its pipe dropped): what it queued is all there will be.
    ended: AtomicBool,
}

/// The session's socket: commands in, frames out. Sending never waits, so the session's last
/// `disconnect` push always gets queued behind what is in flight, even for a reader too slow to
/// take anything; the wait (backpressure) is in `flush`, until at most [`BODY_BUFFER`] frames
/// are in flight.
struct Pipe<I> {
    /// Commands to the session.
    inbound: I,
    /// Frames from the session.
    outbound: mpsc::UnboundedSender<Message>,
    /// Backpressure shared with the [`Frames`].
    flow: Arc<Flow>,
}

/// A session's socket and the adapter's end of it.
fn pipe<I>(inbound: I) -> (Pipe<I>, Frames) {
    let (outbound, rx) = mpsc::unbounded_channel();
    let flow = Arc::new(Flow::default());
    (Pipe { inbound, outbound, flow: flow.clone() }, Frames { rx, flow })
}

/// What a write to a [`Pipe`] whose adapter ended gets.
const CLIENT_GONE: &str = "the SSE client is gone";

impl<I: Stream<Item = Result<Message, axum::Error>> + Unpin> Stream for Pipe<I> {
    type Item = Result<Message, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inbound).poll_next(cx)
    }
}

impl<I: Unpin> Sink<Message> for Pipe<I> {
    type Error = axum::Error;
    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.outbound.is_closed() {
            return Poll::Ready(Err(axum::Error::new(CLIENT_GONE)));
        }
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.flow.in_flight.fetch_add(1, Ordering::AcqRel);
        self.outbound.send(item).map_err(|_| axum::Error::new(CLIENT_GONE))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let caught_up = |pipe: &Pipe<I>| {
            if pipe.outbound.is_closed() {
                Some(Err(axum::Error::new(CLIENT_GONE)))
            } else if pipe.flow.in_flight.load(Ordering::Acquire) <= BODY_BUFFER {
                Some(Ok(()))
            } else {
                None
            }
        };
        if let Some(r) = caught_up(&self) {
            return Poll::Ready(r);
        }
        self.flow.flush.register(cx.waker());
        // Checked again after registering: the adapter may have taken frames in between.
        match caught_up(&self) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.poll_flush(cx)
    }
}

impl<I> Drop for Pipe<I> {
    fn drop(&mut self) {
        self.flow.ended.store(true, Ordering::Release);
    }
}

/// The adapter's end of a [`Pipe`].
struct Frames {
    rx: mpsc::UnboundedReceiver<Message>,
    flow: Arc<Flow>,
}

impl Frames {
    /// The next frame; None once the session is gone and everything it sent was taken.
    async fn recv(&mut self) -> Option<Message> {
        let msg = self.rx.recv().await?;
        self.flow.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.flow.flush.wake();
        Some(msg)
    }

    /// After the session ended with frames still queued (a slow reader's drain grace ran out,
    /// or a shorter one for other closes): its `disconnect` push alone, if it queued one, so the
    /// reader learns the close code now. The publications skipped were never delivered, so the
    /// client's last id resumes them. Without a push, everything left.
    fn after_end(&mut self, first: &str) -> String {
        let mut left = vec![first.to_string()];
        while let Ok(msg) = self.rx.try_recv() {
            if let Message::Text(text) = msg {
                left.push(text.as_str().to_string());
            }
        }
        let disconnect = left
            .iter()
            .flat_map(|frame| split_frame(frame))
            .find(|line| matches!(ServerMessage::parse(line), Ok(ServerMessage::Disconnect { .. })))
            .map(str::to_string);
        disconnect.unwrap_or_else(|| left.join("\n"))
    }

    fn session_ended(&self) -> bool {
        self.flow.ended.load(Ordering::Acquire)
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        // A flush waiting on this adapter must see that it is gone.
        self.rx.close();
        self.flow.flush.wake();
    }
}

/// The parts of a `SubscribeResult` the adapter reads; its publications stay raw JSON.
#[derive(Deserialize)]
struct Subscribed<'a> {
    epoch: String,
    offset: u64,
    #[serde(default, borrow)]
    publications: Vec<&'a RawValue>,
}

/// Where a publication sits in its stream (its `id` as an SSE event).
#[derive(Deserialize)]
struct PubPosition {
    epoch: String,
    offset: u64,
}

/// Turns session frames into SSE events and keeps the subscription alive.
struct Adapter {
    /// Commands to the session.
    commands: mpsc::UnboundedSender<Result<Message, axum::Error>>,
    /// The one channel this stream follows.
    channel: String,
    /// Last position delivered (for `since` on a resubscribe).
    position: Option<Position>,
    /// Next command id.
    next_id: u64,
    /// Id of the subscribe the client asked for (by opening the stream): its reply is the
    /// documented `subscribed` event, publications inside. Later subscribes are the adapter's
    /// own resubscribes, whose publications the client never asked for and gets as `pub`.
    first_subscribe: u64,
    /// Whether the stream is over (after an error or a disconnect).
    done: bool,
}

impl Adapter {
    fn send(&mut self, command: Command) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let line = Request { id: Some(id), command }.to_json();
        let _ = self.commands.send(Ok(Message::Text(line.into())));
        id
    }

    fn subscribe(&mut self) -> u64 {
        let command = Command::Subscribe {
            channel: self.channel.clone(),
            since: self.position.clone(),
            snapshot: false,
            view: Default::default(),
            presence: Default::default(),
            preview: None,
        };
        self.send(command)
    }

    /// A `pub` event (its `id` the publication's position, what `Last-Event-ID` resumes from).
    fn publication(&mut self, epoch: &str, offset: u64, json: &str) -> Event {
        self.position = Some(Position { epoch: epoch.into(), offset });
        Event::default().event("pub").id(format!("{epoch}:{offset}")).data(json)
    }

    /// The events of a subscribe reply.
    fn subscribed(&mut self, id: u64, raw: &str, out: &mut Vec<Event>) {
        let Ok(reply) = serde_json::from_str::<Subscribed>(raw) else { return };
        if id == self.first_subscribe {
            self.position = Some(Position { epoch: reply.epoch.clone(), offset: reply.offset });
            let id = format!("{}:{}", reply.epoch, reply.offset);
            out.push(Event::default().event("subscribed").id(id).data(raw));
            return;
        }
        // The adapter's own resubscribe: what it recovered goes out as `pub` events, each with
        // its id, after a `subscribed` whose id is the position before them, so an app that
        // handles only `pub` misses nothing and `Last-Event-ID` never skips past them.
        let before = reply.offset.saturating_sub(reply.publications.len() as u64);
        let mut data: serde_json::Value = serde_json::from_str(raw).unwrap_or_default();
        if let Some(obj) = data.as_object_mut() {
            obj.remove("publications");
        }
        self.position = Some(Position { epoch: reply.epoch.clone(), offset: before });
        out.push(
            Event::default()
                .event("subscribed")
                .id(format!("{}:{before}", reply.epoch))
                .data(data.to_string()),
        );
        for p in reply.publications {
            let Ok(at) = serde_json::from_str::<PubPosition>(p.get()) else { continue };
            out.push(self.publication(&at.epoch, at.offset, p.get()));
        }
    }

    /// The SSE events for one session frame.
    fn events(&mut self, frame: &str) -> Vec<Event> {
        let mut out = Vec::new();
        for line in split_frame(frame) {
            if self.done {
                break;
            }
            let Ok(msg) = ServerMessage::parse(line) else { continue };
            match msg {
                ServerMessage::Publication(p) => {
                    let json = &line[PUB_PREFIX.len()..line.len() - 1];
                    out.push(self.publication(&p.epoch, p.offset, json));
                }
                ServerMessage::Reply { id: 1, result: Ok(_) } => {}
                ServerMessage::Reply { id, result: Ok(r) } => {
                    self.subscribed(id, r.get(), &mut out)
                }
                ServerMessage::Reply { result: Err(e), .. } | ServerMessage::Error(e) => {
                    out.push(
                        Event::default()
                            .event("error")
                            .data(serde_json::to_string(&e).unwrap_or_default()),
                    );
                    self.done = true;
                }
                ServerMessage::Ping => {
                    let _ = self.commands.send(Ok(Message::Text(r#"{"cmd":"pong"}"#.into())));
                }
                ServerMessage::Unsubscribe { resubscribe: true, .. } => {
                    self.subscribe();
                }
                ServerMessage::Unsubscribe { .. } => self.done = true,
                // SSE streams subscribe to plain channels only, on protocol version 1.
                ServerMessage::View(_)
                | ServerMessage::Event { .. }
                | ServerMessage::Compact(_)
                | ServerMessage::Chunk(_) => {}
                ServerMessage::Disconnect { code, reason, reconnect } => {
                    let data = serde_json::json!({ "code": code, "reason": reason, "reconnect": reconnect });
                    out.push(Event::default().event("disconnect").data(data.to_string()));
                    self.done = true;
                }
            }
        }
        out
    }
}

/// `GET /sse/{channel}`: token in `Authorization: Bearer` or `?token=`; resume point in
/// `Last-Event-ID` (or `?since=EPOCH:OFFSET`).
pub async fn stream(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !hub.admit_attempt(addr.ip()) {
        return crate::api::ApiError(herald_protocol::reply::ErrorBody::new(
            herald_protocol::ErrorCode::RateLimited,
            "too many connection attempts from this address",
        ))
        .into_response();
    }
    let token = crate::ws::upgrade_token(&headers, &query);
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.get("since").cloned())
        .and_then(|s| s.parse::<Position>().ok());
    let (commands, inbound) = mpsc::unbounded_channel();
    let (pipe, mut frames) = pipe(UnboundedReceiverStream::new(inbound));
    let upgrade = Upgrade {
        token: None,
        origin_allowed: crate::ws::origin_allowed(&hub, &headers),
        ip: addr.ip(),
    };
    tokio::spawn(session::run(hub.clone(), pipe, upgrade));
    let mut adapter =
        Adapter { commands, channel, position: since, next_id: 1, first_subscribe: 0, done: false };
    adapter.send(Command::Connect { token, name: None, version: None });
    adapter.first_subscribe = adapter.subscribe();
    // The adapter task ends when the session ends (its frames channel closes), when the stream
    // is over, or when the HTTP client goes away (the body, holding the event receiver, is
    // dropped). Ending it drops the session's command channel, which ends the session.
    let (events_tx, events) = mpsc::channel::<Result<Event, Infallible>>(BODY_BUFFER);
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                msg = frames.recv() => msg,
                // A closed tab on a quiet channel: nothing would be sent to notice it.
                () = events_tx.closed() => return,
            };
            let text = match msg {
                Some(Message::Text(text)) => text,
                Some(_) => continue,
                None => return,
            };
            let left;
            let text = if frames.session_ended() {
                left = frames.after_end(text.as_str());
                left.as_str()
            } else {
                text.as_str()
            };
            for event in adapter.events(text) {
                if events_tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if adapter.done {
                return;
            }
        }
    });
    event_stream(&hub, events)
}

/// The `text/event-stream` response for a stream of events, with keep-alive comments.
fn event_stream(hub: &Hub, events: mpsc::Receiver<Result<Event, Infallible>>) -> Response {
    let events = tokio_stream::wrappers::ReceiverStream::new(events);
    let keep_alive =
        KeepAlive::new().interval(hub.config.timeouts.ping_interval.min(Duration::from_secs(15)));
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    response
}
