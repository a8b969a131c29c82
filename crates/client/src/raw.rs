//! The raw layer: one connection speaking the wire protocol, without reconnects, resume or
//! bookkeeping: a WebSocket, or the multiplexed SSE transport (`sse`) behind the same
//! halves. [`crate::Client`] is built on it, and the benchmark drives it directly.

use crate::sse::{self, Probe, ProbePolicy, SseError, SsePoster, SseStream, Transport};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use herald_protocol::{Request, ServerMessage, split_frame};
use std::collections::VecDeque;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What went wrong on a raw connection.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The URL could not be turned into a WebSocket request.
    #[error("invalid url {url:?}: {message}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        message: String,
    },
    /// The TCP connect, the upgrade, or a read/write failed.
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
    /// The SSE stream could not be opened, broke, or a command POST was refused.
    #[error("sse: {0}")]
    Sse(#[from] SseError),
    /// On SSE, a background probe found that a WebSocket upgrade works again: the owner moves
    /// back by reconnecting (the SSE session stays open until the receiver is dropped).
    #[error("websocket upgrades work again")]
    WebSocketBack,
    /// The connection is closed. `code` is the close frame's code when one arrived.
    #[error("connection closed (code {code:?}: {reason})")]
    Closed {
        /// The WebSocket close code, `None` when the socket dropped without a close frame.
        code: Option<u16>,
        /// The close frame's reason text.
        reason: String,
    },
}

/// A connection to a Herald hub (WebSocket or SSE): send [`Request`]s, read [`ServerMessage`]s.
pub struct RawConnection {
    sender: RawSender,
    receiver: RawReceiver,
}

/// The sending half of a [`RawConnection`], so a writer task can run beside a reader.
pub struct RawSender {
    sink: Sink,
}

/// Where a [`RawSender`] writes.
enum Sink {
    /// The WebSocket's write half.
    Ws(SplitSink<Ws, Message>),
    /// One POST per frame; the caller keeps one in flight.
    Sse(SsePoster),
}

/// Where a [`RawReceiver`] reads.
enum Source {
    /// The WebSocket's read half.
    Ws(SplitStream<Ws>),
    /// The `GET /sse` stream, and the WebSocket probe once started (boxed: a response is
    /// large beside the WebSocket half).
    Sse(Box<SseStream>, Option<Probe>),
}

/// The receiving half of a [`RawConnection`]. Splits frames into messages (`\n`-separated).
pub struct RawReceiver {
    stream: Source,
    buffered: VecDeque<ServerMessage>,
}

impl RawConnection {
    /// Opens `url` (`ws://HOST:PORT/ws`). A token, when given, travels in the upgrade's
    /// `Authorization: Bearer` header, so that a bad token is refused with close code 4500
    /// (protocol §1) rather than an error reply.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<RawConnection, RawError> {
        let bad_url = |message: String| RawError::Url { url: url.to_string(), message };
        let mut request = url.into_client_request().map_err(|e| bad_url(e.to_string()))?;
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| bad_url(format!("token is not a valid header value: {e}")))?;
            request.headers_mut().insert("authorization", value);
        }
        let (ws, _response) =
            tokio_tungstenite::connect_async_with_config(request, None, true).await?;
        let (sink, stream) = ws.split();
        Ok(RawConnection {
            sender: RawSender { sink: Sink::Ws(sink) },
            receiver: RawReceiver { stream: Source::Ws(stream), buffered: VecDeque::new() },
        })
    }

    /// Opens the multiplexed SSE transport of the hub whose WebSocket URL is `ws_url`
    /// (`ws://h/ws` → `GET http://h/sse`), up to its `session` event. It carries no token: send
    /// it in `connect` (protocol §13).
    pub async fn connect_sse(ws_url: &str) -> Result<RawConnection, RawError> {
        let (poster, stream) = sse::open(sse::sse_url(ws_url)?).await?;
        Ok(RawConnection {
            sender: RawSender { sink: Sink::Sse(poster) },
            receiver: RawReceiver {
                stream: Source::Sse(Box::new(stream), None),
                buffered: VecDeque::new(),
            },
        })
    }

    /// The transport this connection runs on.
    pub fn transport(&self) -> Transport {
        self.receiver.transport()
    }

    /// Sends one request in its own frame.
    pub async fn send(&mut self, request: &Request) -> Result<(), RawError> {
        self.sender.send(request).await
    }

    /// Reads the next message (see [`RawReceiver::recv`]).
    pub async fn recv(&mut self) -> Result<ServerMessage, RawError> {
        self.receiver.recv().await
    }

    /// Separates the halves so that reading and writing can happen in different tasks.
    pub fn split(self) -> (RawSender, RawReceiver) {
        (self.sender, self.receiver)
    }
}

impl RawSender {
    /// Sends one request in its own frame.
    pub async fn send(&mut self, request: &Request) -> Result<(), RawError> {
        self.send_text(request.to_json()).await
    }

    /// Sends several requests batched into one frame (`\n`-separated), as protocol §1 allows.
    pub async fn send_batch(&mut self, requests: &[Request]) -> Result<(), RawError> {
        let lines: Vec<String> = requests.iter().map(Request::to_json).collect();
        self.send_text(lines.join("\n")).await
    }

    /// Sends a text frame as is (one or more `\n`-separated JSON messages); on SSE one POST,
    /// returning once the hub queued it.
    pub async fn send_text(&mut self, text: String) -> Result<(), RawError> {
        match &mut self.sink {
            Sink::Ws(sink) => sink.send(Message::text(text)).await?,
            Sink::Sse(poster) => poster.post(text).await?,
        }
        Ok(())
    }

    /// Sends a close frame with a normal (1000) code and flushes it. On SSE nothing is sent:
    /// the session ends when the receiver drops its stream.
    pub async fn close(&mut self) -> Result<(), RawError> {
        if let Sink::Ws(sink) = &mut self.sink {
            let frame = CloseFrame { code: WsCloseCode::Normal, reason: "".into() };
            sink.send(Message::Close(Some(frame))).await?;
        }
        Ok(())
    }
}

impl RawReceiver {
    /// Reads the next server message. Frames carrying several messages are split and returned
    /// one by one; lines that do not parse are logged and skipped. A close frame or a dropped
    /// socket ends in [`RawError::Closed`].
    ///
    /// On SSE the stream's end is [`RawError::Closed`] without a code, and a successful
    /// WebSocket probe (see [`RawReceiver::probe_websocket`]) is [`RawError::WebSocketBack`].
    ///
    /// Cancel-safe: dropping the future loses nothing, so it can sit in a `select!`.
    pub async fn recv(&mut self) -> Result<ServerMessage, RawError> {
        loop {
            if let Some(message) = self.buffered.pop_front() {
                return Ok(message);
            }
            let stream = match &mut self.stream {
                Source::Ws(stream) => stream,
                Source::Sse(stream, probe) => {
                    let found = async {
                        match probe {
                            Some(probe) => probe.found().await,
                            None => std::future::pending().await,
                        }
                    };
                    let frame = tokio::select! {
                        frame = stream.next_frame() => frame?,
                        () = found => return Err(RawError::WebSocketBack),
                    };
                    let Some(text) = frame else {
                        let reason = "SSE stream ended".into();
                        return Err(RawError::Closed { code: None, reason });
                    };
                    push_lines(&mut self.buffered, &text);
                    continue;
                }
            };
            match stream.next().await {
                None => {
                    return Err(RawError::Closed { code: None, reason: "socket closed".into() });
                }
                Some(Err(e)) => return Err(classify(e)),
                Some(Ok(Message::Text(text))) => push_lines(&mut self.buffered, text.as_str()),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                        None => (None, String::new()),
                    };
                    return Err(RawError::Closed { code, reason });
                }
                // Binary frames are not part of protocol v1; ping/pong frames are answered by
                // tungstenite itself.
                Some(Ok(_)) => {}
            }
        }
    }
}

impl RawReceiver {
    /// The transport this half reads from.
    pub fn transport(&self) -> Transport {
        match self.stream {
            Source::Ws(_) => Transport::WebSocket,
            Source::Sse(..) => Transport::Sse,
        }
    }

    /// On SSE, starts probing WebSocket upgrades to `ws_url` in the background; the first that
    /// works ends [`RawReceiver::recv`] with [`RawError::WebSocketBack`]. Nothing on WebSocket.
    pub fn probe_websocket(&mut self, ws_url: &str, policy: ProbePolicy) {
        if let Source::Sse(_, probe) = &mut self.stream {
            *probe = Some(Probe::spawn(ws_url.to_string(), policy));
        }
    }
}

/// Splits a frame into messages; lines that do not parse are logged and skipped.
fn push_lines(buffered: &mut VecDeque<ServerMessage>, frame: &str) {
    for line in split_frame(frame) {
        match ServerMessage::parse(line) {
            Ok(message) => buffered.push_back(message),
            Err(e) => tracing::warn!(error = %e, line, "skipping unparseable server message"),
        }
    }
}

/// Whether a failed WebSocket open was a refused upgrade (worth the SSE fallback): an HTTP
/// status other than 101 in answer to the upgrade, or the connection closed (FIN) before any
/// answer. A reset is not: a hub that is down behind a TCP proxy or load balancer resets the
/// same way, and SSE would only fail again. 429 is the hub's per-IP attempt limit, which the SSE
/// stream counts against too.
pub(crate) fn upgrade_refused(e: &RawError) -> bool {
    use tungstenite::error::ProtocolError;
    match e {
        RawError::Ws(tungstenite::Error::Http(response)) => response.status().as_u16() != 429,
        RawError::Ws(tungstenite::Error::Protocol(ProtocolError::HandshakeIncomplete)) => true,
        RawError::Ws(tungstenite::Error::Io(io)) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        _ => false,
    }
}

/// Maps tungstenite's "already closed" flavours to [`RawError::Closed`].
fn classify(e: tungstenite::Error) -> RawError {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            RawError::Closed { code: None, reason: "connection closed".into() }
        }
        other => RawError::Ws(other),
    }
}
