//! WebSocket with permessage-deflate (RFC 7692): a connection whose client offers compression,
//! on a hub with `[compression] enabled = true`, is upgraded by yawc instead of tungstenite
//! (which has no permessage-deflate) and handed to the same session through the Sink/Stream
//! seam, as axum [`Message`]s. Frames are moved, not copied: both sides carry `Bytes`.

use crate::config::{CompressionConfig, Limits};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, Stream};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use yawc::frame::{Frame, OpCode};
use yawc::{CompressionLevel, DeflatePool, Options, WebSocket};

/// Whether the upgrade request offers permessage-deflate.
pub(crate) fn offered(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().starts_with("permessage-deflate")))
}

/// Idle deflate and inflate states kept for reuse, per window size, across all connections
/// (no-context-takeover mode): a connection holds one only while it compresses a message.
const POOL_CAPACITY: usize = 256;

/// yawc's options for a hub's limits and compression settings.
pub(crate) fn options(limits: &Limits, compression: &CompressionConfig) -> Options {
    static POOL: OnceLock<DeflatePool> = OnceLock::new();
    // yawc's bounds are exclusive and apply to the inflated size: a frame that inflates to more
    // than `max_frame_bytes` closes the connection with 1009 (a decompression bomb stops there).
    let max = limits.max_frame_bytes + 1;
    let mut options = Options::default()
        .with_limits(max, max)
        .with_utf8()
        .with_read_buffer_capacity(1024)
        .with_write_buffer_capacity(1024)
        .with_backpressure_boundary(16 * 1024)
        .with_compression_level(CompressionLevel::new(compression.level))
        .with_compression_threshold(compression.threshold_bytes);
    if !compression.context_takeover {
        options = options
            .server_no_context_takeover()
            .client_no_context_takeover()
            .with_deflate_pool(POOL.get_or_init(|| DeflatePool::new(POOL_CAPACITY)).clone());
    }
    options
}

/// A yawc WebSocket as the session's socket.
pub(crate) struct Deflated<S> {
    /// The connection.
    ws: WebSocket<S>,
    /// A read failed and yawc queued its close frame: it is flushed before the stream ends.
    failed: bool,
}

impl<S> Deflated<S> {
    pub(crate) fn new(ws: WebSocket<S>) -> Deflated<S> {
        Deflated { ws, failed: false }
    }
}

impl<S> Stream for Deflated<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Item = Result<Message, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.failed {
                // A protocol error or an oversized frame: yawc queued the close frame (1002,
                // 1007, 1009); once it is out, the session sees the end of the stream.
                // (yawc writes queued close frames when the sink is polled ready.)
                let _ = ready!(Pin::new(&mut this.ws).poll_ready(cx));
                let _ = ready!(Pin::new(&mut this.ws).poll_flush(cx));
                return Poll::Ready(None);
            }
            let Ok(frame) = ready!(this.ws.poll_next_frame(cx)) else {
                this.failed = true;
                continue;
            };
            let message = match frame.opcode() {
                OpCode::Text => match Utf8Bytes::try_from(frame.into_payload()) {
                    Ok(text) => Message::Text(text),
                    Err(_) => return Poll::Ready(None),
                },
                OpCode::Binary => Message::Binary(frame.into_payload()),
                OpCode::Ping => Message::Ping(frame.into_payload()),
                OpCode::Pong => Message::Pong(frame.into_payload()),
                OpCode::Close => Message::Close(frame.close_code().map(|code| CloseFrame {
                    code: code.into(),
                    reason: frame.close_reason().ok().flatten().unwrap_or("").into(),
                })),
                OpCode::Continuation => continue,
            };
            return Poll::Ready(Some(Ok(message)));
        }
    }
}

impl<S> Sink<Message> for Deflated<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().ws).poll_ready(cx).map_err(axum::Error::new)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        let frame = match item {
            Message::Text(text) => Frame::text(bytes::Bytes::from(text)),
            Message::Binary(b) => Frame::binary(b),
            Message::Ping(b) => Frame::ping(b),
            Message::Pong(b) => Frame::pong(b),
            Message::Close(close) => match close {
                Some(c) => Frame::close(c.code.into(), c.reason.as_str()),
                None => Frame::close(yawc::close::CloseCode::Normal, ""),
            },
        };
        Pin::new(&mut self.get_mut().ws).start_send(frame).map_err(axum::Error::new)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().ws).poll_flush(cx).map_err(axum::Error::new)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().ws).poll_close(cx).map_err(axum::Error::new)
    }
}
