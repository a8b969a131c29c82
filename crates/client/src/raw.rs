//! The raw layer: one WebSocket connection speaking protocol v1, without reconnects, resume or
//! bookkeeping. [`crate::Client`] is built on it, and the benchmark drives it directly.

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
    /// The connection is closed. `code` is the close frame's code when one arrived.
    #[error("connection closed (code {code:?}: {reason})")]
    Closed {
        /// The WebSocket close code, `None` when the socket dropped without a close frame.
        code: Option<u16>,
        /// The close frame's reason text.
        reason: String,
    },
}

/// A connected WebSocket to a Herald hub: send [`Request`]s, read [`ServerMessage`]s.
pub struct RawConnection {
    sender: RawSender,
    receiver: RawReceiver,
}

/// The sending half of a [`RawConnection`], so a writer task can run beside a reader.
pub struct RawSender {
    sink: SplitSink<Ws, Message>,
}

/// The receiving half of a [`RawConnection`]. Splits frames into messages (`\n`-separated).
pub struct RawReceiver {
    stream: SplitStream<Ws>,
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
            sender: RawSender { sink },
            receiver: RawReceiver { stream, buffered: VecDeque::new() },
        })
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

    /// Sends a text frame as is (one or more `\n`-separated JSON messages).
    pub async fn send_text(&mut self, text: String) -> Result<(), RawError> {
        self.sink.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends a close frame with a normal (1000) code and flushes it.
    pub async fn close(&mut self) -> Result<(), RawError> {
        let frame = CloseFrame { code: WsCloseCode::Normal, reason: "".into() };
        self.sink.send(Message::Close(Some(frame))).await?;
        Ok(())
    }
}

impl RawReceiver {
    /// Reads the next server message. Frames carrying several messages are split and returned
    /// one by one; lines that do not parse are logged and skipped. A close frame or a dropped
    /// socket ends in [`RawError::Closed`].
    ///
    /// Cancel-safe: dropping the future loses nothing, so it can sit in a `select!`.
    pub async fn recv(&mut self) -> Result<ServerMessage, RawError> {
        loop {
            if let Some(message) = self.buffered.pop_front() {
                return Ok(message);
            }
            match self.stream.next().await {
                None => {
                    return Err(RawError::Closed { code: None, reason: "socket closed".into() });
                }
                Some(Err(e)) => return Err(classify(e)),
                Some(Ok(Message::Text(text))) => {
                    for line in split_frame(text.as_str()) {
                        match ServerMessage::parse(line) {
                            Ok(message) => self.buffered.push_back(message),
                            Err(e) => {
                                tracing::warn!(error = %e, line, "skipping unparseable server message")
                            }
                        }
                    }
                }
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

/// Maps tungstenite's "already closed" flavours to [`RawError::Closed`].
fn classify(e: tungstenite::Error) -> RawError {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            RawError::Closed { code: None, reason: "connection closed".into() }
        }
        other => RawError::Ws(other),
    }
}
