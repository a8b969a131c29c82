//! Server-Sent Events fallback for networks that block WebSocket: `GET /sse/{channel}`.
//!
//! The SSE stream is a [`session`](crate::session) like any other, driven through the same
//! Sink/Stream seam, so order, gap-free resume, "subscribed means flowing" and slow-consumer
//! protection are the same code. This adapter sends `connect` and `subscribe` on the client's
//! behalf, answers pings, resubscribes with `since` when the session asks, and turns each
//! publication into an event whose `id` is `EPOCH:OFFSET` — so a browser's `EventSource`
//! reconnects with `Last-Event-ID` and resumes without loss.

use crate::hub::Hub;
use crate::session::{self, Upgrade};
use axum::extract::ws::Message;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
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
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

/// Frames buffered between the session and the HTTP body; beyond this the session's own
/// bounded queue takes over (and closes a slow reader with `slow_consumer`).
const BODY_BUFFER: usize = 16;

/// The session's socket: commands in, frames out (bounded, so a slow HTTP reader pushes back).
struct Pipe {
    inbound: mpsc::UnboundedReceiver<Result<Message, axum::Error>>,
    outbound: PollSender<Message>,
}

impl Stream for Pipe {
    type Item = Result<Message, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbound.poll_recv(cx)
    }
}

impl Sink<Message> for Pipe {
    type Error = axum::Error;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.outbound).poll_ready(cx).map_err(axum::Error::new)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(&mut self.outbound).start_send(item).map_err(axum::Error::new)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.outbound).poll_flush(cx).map_err(axum::Error::new)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.outbound).poll_close(cx).map_err(axum::Error::new)
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
    let token = crate::upgrade_token(&headers, &query);
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.get("since").cloned())
        .and_then(|s| s.parse::<Position>().ok());
    let (commands, inbound) = mpsc::unbounded_channel();
    let (frames_tx, mut frames) = mpsc::channel::<Message>(BODY_BUFFER);
    let pipe = Pipe { inbound, outbound: PollSender::new(frames_tx) };
    let upgrade = Upgrade {
        token: None,
        origin_allowed: crate::origin_allowed(&hub, &headers),
        ip: addr.ip(),
    };
    tokio::spawn(session::run(hub.clone(), pipe, upgrade));
    let mut adapter =
        Adapter { commands, channel, position: since, next_id: 1, first_subscribe: 0, done: false };
    adapter.send(Command::Connect { token, name: None });
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
            for event in adapter.events(text.as_str()) {
                if events_tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if adapter.done {
                return;
            }
        }
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(events);
    let keep_alive =
        KeepAlive::new().interval(hub.config.timeouts.ping_interval.min(Duration::from_secs(15)));
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    response
}
