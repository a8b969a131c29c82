//! WebSocket framing (RFC 6455) without extensions: every connection that does not negotiate
//! permessage-deflate ([`super::deflate`]) runs on this socket.
//!
//! Written here rather than taken from tungstenite because an idle connection must hold no
//! buffers (the idle-memory target, docs/benchmarks.md): tungstenite keeps a read buffer as large
//! as the largest frame it read, a write buffer as large as the largest it wrote, and two waker
//! `Arc`s for the connection's life (about 840 of the 4,265 bytes an idle connection cost), and
//! its socket was 368 bytes of the session's task. Here a read goes into a buffer on the stack;
//! only bytes past the frame returned (a frame that arrived in part, or frames behind it) are
//! kept on the heap, until they are consumed. A write goes out straight from the message, header
//! and payload in one vectored write, and only that message is held until the socket took it.
//!
//! Server side only: client frames must be masked, the server's are not (§5.1). The opening
//! handshake is [`accept_key`] and `super::upgrade`.

pub(crate) use crate::session::FrameError;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::{Sink, Stream};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes taken from the socket per read, into a buffer on the stack (not kept across reads).
const READ_CHUNK: usize = 8 * 1024;
/// Largest payload of a control frame (§5.5).
const MAX_CONTROL: usize = 125;

/// Frames up to this size (a rooms delivery, a reply) are written from one stack buffer.
const SMALL_FRAME: usize = 4096;

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key` (§4.2.2).
pub(crate) fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// An inbound frame's opcode (§5.2); reserved ones are refused when the header is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

/// A frame header read from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    /// Last frame of its message.
    fin: bool,
    opcode: OpCode,
    /// The client's masking key.
    mask: [u8; 4],
    /// Bytes of the header itself.
    len: usize,
    /// Bytes of payload behind it.
    payload: usize,
}

/// Reads a frame header from the start of `buf`: `None` until all of it is there. Refuses what
/// §5.2 and §5.5 forbid, and a payload above `max` as soon as its length is known (so a claimed
/// gigabyte is refused without buffering any of it).
fn parse_header(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set without an extension"));
    }
    let opcode = match b0 & 0x0f {
        0 => OpCode::Continuation,
        1 => OpCode::Text,
        2 => OpCode::Binary,
        8 => OpCode::Close,
        9 => OpCode::Ping,
        10 => OpCode::Pong,
        _ => return Err(FrameError::Protocol("reserved opcode")),
    };
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("unmasked frame from a client"));
    }
    let (payload, at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                let n = u64::from_be_bytes(n);
                if n >> 63 != 0 {
                    return Err(FrameError::Protocol("payload length with its high bit set"));
                }
                (n, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong) {
        if !fin {
            return Err(FrameError::Protocol("fragmented control frame"));
        }
        if payload > MAX_CONTROL as u64 {
            return Err(FrameError::Protocol("control frame above 125 bytes"));
        }
    }
    if payload > max as u64 {
        return Err(FrameError::TooLarge(max));
    }
    let Some(key) = buf.get(at..at + 4) else { return Ok(None) };
    let mut mask = [0u8; 4];
    mask.copy_from_slice(key);
    Ok(Some(Header { fin, opcode, mask, len: at + 4, payload: payload as usize }))
}

/// The payload of a masked frame, unmasked (§5.3). Eight bytes at a time: every publisher's
/// command passes through here (a byte at a time was ~10 instructions per byte).
fn unmask(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = payload.to_vec();
    let [a, b, c, d] = mask;
    let key = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = out.chunks_exact_mut(8);
    for word in &mut words {
        let x = u64::from_ne_bytes((&*word).try_into().expect("eight bytes")) ^ key;
        word.copy_from_slice(&x.to_ne_bytes());
    }
    // The rest starts at a multiple of 8, so at the key's first byte.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
    out
}

/// Close codes a peer may send (§7.4.1 and the IANA registry): not 1004–1006, 1015 or the
/// unassigned ranges.
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A close frame's payload: none, or a valid code and a UTF-8 reason.
fn close_frame(payload: &[u8]) -> Result<Option<CloseFrame>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !valid_close_code(code) {
                return Err(FrameError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::Utf8)?;
            Ok(Some(CloseFrame { code, reason: reason.into() }))
        }
    }
}

/// A text or binary message arriving in fragments.
struct Fragments {
    /// Text or binary.
    text: bool,
    /// The payloads so far, unmasked.
    bytes: Vec<u8>,
}

/// What one frame at the start of a buffer came to.
enum Decoded {
    /// Not all of the frame is there yet.
    Incomplete,
    /// A fragment of a message not yet whole (`used` bytes of frame).
    Fragment(usize),
    /// A message: the frame completed it (`used` bytes of frame).
    Message(Message, usize),
}

/// The inbound side's state between frames.
struct Inbound {
    /// Largest frame payload, and largest fragmented message in all (`limits.max_frame_bytes`).
    max: usize,
    /// A fragmented message being put together; boxed, since almost no client fragments.
    fragments: Option<Box<Fragments>>,
}

impl Inbound {
    /// Decodes the frame at the start of `buf`.
    fn decode(&mut self, buf: &[u8]) -> Result<Decoded, FrameError> {
        let Some(h) = parse_header(buf, self.max)? else { return Ok(Decoded::Incomplete) };
        let used = h.len + h.payload;
        let Some(payload) = buf.get(h.len..used) else { return Ok(Decoded::Incomplete) };
        let payload = unmask(payload, h.mask);
        let message = match h.opcode {
            OpCode::Text | OpCode::Binary => {
                if self.fragments.is_some() {
                    return Err(FrameError::Protocol("a new message inside a fragmented one"));
                }
                let text = h.opcode == OpCode::Text;
                if !h.fin {
                    self.fragments = Some(Box::new(Fragments { text, bytes: payload }));
                    return Ok(Decoded::Fragment(used));
                }
                data_message(text, payload)?
            }
            OpCode::Continuation => {
                let Some(f) = self.fragments.as_mut() else {
                    return Err(FrameError::Protocol("continuation without a message"));
                };
                if f.bytes.len() + payload.len() > self.max {
                    return Err(FrameError::TooLarge(self.max));
                }
                f.bytes.extend_from_slice(&payload);
                if !h.fin {
                    return Ok(Decoded::Fragment(used));
                }
                let Fragments { text, bytes } = *self.fragments.take().expect("checked above");
                data_message(text, bytes)?
            }
            OpCode::Ping => Message::Ping(payload.into()),
            OpCode::Pong => Message::Pong(payload.into()),
            OpCode::Close => Message::Close(close_frame(&payload)?),
        };
        Ok(Decoded::Message(message, used))
    }
}

/// A whole text or binary message.
fn data_message(text: bool, payload: Vec<u8>) -> Result<Message, FrameError> {
    if !text {
        return Ok(Message::Binary(payload.into()));
    }
    Utf8Bytes::try_from(Bytes::from(payload)).map(Message::Text).map_err(|_| FrameError::Utf8)
}

/// One frame on its way out: its header, and its payload shared with whoever else sends it.
struct Outgoing {
    head: [u8; 10],
    /// Bytes of `head` in use.
    head_len: u8,
    payload: Bytes,
    /// Bytes of header and payload the socket took so far.
    written: usize,
}

impl Outgoing {
    fn new(opcode: u8, payload: Bytes) -> Outgoing {
        let mut head = [0u8; 10];
        head[0] = 0x80 | opcode;
        let len = payload.len();
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            head[1] = 126;
            head[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Outgoing { head, head_len, payload, written: 0 }
    }

    fn from_message(message: Message) -> Outgoing {
        match message {
            Message::Text(text) => Outgoing::new(0x1, Bytes::from(text)),
            Message::Binary(b) => Outgoing::new(0x2, b),
            Message::Ping(b) => Outgoing::new(0x9, b.slice(..b.len().min(MAX_CONTROL))),
            Message::Pong(b) => Outgoing::new(0xA, b.slice(..b.len().min(MAX_CONTROL))),
            Message::Close(close) => {
                let mut payload = Vec::new();
                if let Some(CloseFrame { code, reason }) = close {
                    payload.extend_from_slice(&code.to_be_bytes());
                    let reason = reason.as_str();
                    let mut end = reason.len().min(MAX_CONTROL - 2);
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    payload.extend_from_slice(&reason.as_bytes()[..end]);
                }
                Outgoing::new(0x8, payload.into())
            }
        }
    }

    fn is_pong(&self) -> bool {
        self.head[0] & 0x0f == 0xA
    }

    /// Writes what the socket takes; ready when all of the frame is written.
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let head_len = usize::from(self.head_len);
        let total = head_len + self.payload.len();
        while self.written < total {
            let n = if self.written == 0 && total <= SMALL_FRAME {
                // A small frame whole, from one buffer: `write` is a cheaper system call than
                // a two-part `writev`, and the copy costs less than the difference. The buffer
                // is the thread's, reused, so that nothing is zeroed or allocated per frame.
                thread_local! {
                    static FRAME: std::cell::RefCell<Vec<u8>> =
                        std::cell::RefCell::new(Vec::with_capacity(SMALL_FRAME));
                }
                let written = FRAME.with_borrow_mut(|frame| {
                    frame.clear();
                    frame.extend_from_slice(&self.head[..head_len]);
                    frame.extend_from_slice(&self.payload);
                    Pin::new(&mut *io).poll_write(cx, frame)
                });
                ready!(written)?
            } else if self.written < head_len {
                let slices =
                    [IoSlice::new(&self.head[self.written..head_len]), IoSlice::new(&self.payload)];
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?
            } else {
                ready!(Pin::new(&mut *io).poll_write(cx, &self.payload[self.written - head_len..]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// The socket of an upgraded HTTP connection.
pub(crate) type Socket = PlainSocket<Io>;

/// What a WebSocket runs over: the TCP stream itself when the connection is plain TCP, so that
/// an idle connection holds no boxed I/O object (32 bytes each); anything else (TLS) as hyper
/// hands it over.
pub(crate) enum Io {
    Tcp(tokio::net::TcpStream),
    Upgraded(Box<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>),
}

impl Socket {
    /// The socket of an upgraded connection; inbound frames and messages up to `max_frame_bytes`.
    pub(crate) fn upgraded(upgraded: hyper::upgrade::Upgraded, max_frame_bytes: usize) -> Socket {
        use hyper_util::rt::TokioIo;
        match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => {
                let mut socket = PlainSocket::new(Io::Tcp(parts.io.into_inner()), max_frame_bytes);
                // What the client sent behind its handshake, already read by hyper.
                socket.keep(&parts.read_buf);
                socket
            }
            Err(other) => {
                PlainSocket::new(Io::Upgraded(Box::new(TokioIo::new(other))), max_frame_bytes)
            }
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Upgraded(u) => Pin::new(u.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Upgraded(u) => Pin::new(u.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Upgraded(u) => Pin::new(u.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Upgraded(u) => u.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Upgraded(u) => Pin::new(u.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Upgraded(u) => Pin::new(u.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Bytes read but not yet decoded.
struct Pending {
    bytes: Vec<u8>,
    /// Where the undecoded part of `bytes` starts.
    at: usize,
}

/// A server-side WebSocket over `S`, as the session's socket (a `Stream` and `Sink` of axum
/// [`Message`]s). Pings are answered and a peer's close is echoed by the socket itself.
pub(crate) struct PlainSocket<S> {
    io: S,
    inbound: Inbound,
    /// Bytes read past the frames returned; `None` when there are none.
    pending: Option<Box<Pending>>,
    /// The frame being written; boxed, like everything this socket holds only for a while.
    writing: Option<Box<Outgoing>>,
    /// A pong or a close reply the reader queued: written after `writing`. Boxed, since an idle
    /// connection has none.
    reply: Option<Box<Outgoing>>,
    /// Nothing more is read: the peer closed, the socket ended or a frame was refused.
    read_done: bool,
    /// A close frame went out (sent by the session or echoed): nothing more is sent.
    close_sent: bool,
}

impl<S> PlainSocket<S> {
    /// A socket whose inbound frames and messages may be up to `max_frame_bytes`.
    pub(crate) fn new(io: S, max_frame_bytes: usize) -> PlainSocket<S> {
        PlainSocket {
            io,
            inbound: Inbound { max: max_frame_bytes, fragments: None },
            pending: None,
            writing: None,
            reply: None,
            read_done: false,
            close_sent: false,
        }
    }

    /// Queues a pong or a close reply. A pong replaces a pong not yet started (§5.5.3 lets a
    /// server answer only the latest ping); nothing is queued once a close went out.
    fn queue_reply(&mut self, frame: Outgoing) {
        if self.close_sent || self.reply.as_ref().is_some_and(|r| !r.is_pong()) {
            return;
        }
        if frame.head[0] & 0x0f == 0x8 {
            self.close_sent = true;
        }
        self.reply = Some(Box::new(frame));
    }

    /// Takes the message at the start of the pending bytes, if all of it is there.
    fn next_pending(&mut self) -> Result<Option<Message>, FrameError> {
        let Some(p) = self.pending.as_mut() else { return Ok(None) };
        while p.at < p.bytes.len() {
            match self.inbound.decode(&p.bytes[p.at..])? {
                Decoded::Incomplete => break,
                Decoded::Fragment(used) => p.at += used,
                Decoded::Message(message, used) => {
                    p.at += used;
                    if p.at == p.bytes.len() {
                        // All consumed: an idle connection keeps no buffer.
                        self.pending = None;
                    }
                    return Ok(Some(message));
                }
            }
        }
        Ok(None)
    }

    /// Keeps `bytes` (read, not yet decoded) after what is pending.
    fn keep(&mut self, bytes: &[u8]) {
        match self.pending.as_mut() {
            Some(p) => {
                p.bytes.drain(..p.at);
                p.at = 0;
                p.bytes.extend_from_slice(bytes);
            }
            None if bytes.is_empty() => {}
            None => self.pending = Some(Box::new(Pending { bytes: bytes.to_vec(), at: 0 })),
        }
    }
}

impl<S: AsyncWrite + Unpin> PlainSocket<S> {
    /// Handles the socket's own part of a message: answers a ping, echoes a close. The answer
    /// is written at once if the socket takes it (a session that ends on a close does not
    /// read again), else on the next poll or when the session flushes or closes the socket.
    fn on_message(&mut self, message: &Message, cx: &mut Context<'_>) {
        match message {
            Message::Ping(payload) => self.queue_reply(Outgoing::new(0xA, payload.clone())),
            Message::Close(close) => {
                self.read_done = true;
                let code = close.as_ref().map(|c| CloseFrame { code: c.code, reason: "".into() });
                self.queue_reply(Outgoing::from_message(Message::Close(code)));
            }
            _ => {}
        }
        if self.reply.is_some() {
            let _ = self.poll_write_out(cx);
        }
    }

    /// Writes the frame being written, then any queued reply.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.writing.is_none() {
                match self.reply.take() {
                    Some(reply) => self.writing = Some(reply),
                    None => return Poll::Ready(Ok(())),
                }
            }
            if let Some(out) = self.writing.as_mut() {
                ready!(out.poll_write(&mut self.io, cx))?;
                self.writing = None;
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for PlainSocket<S> {
    type Item = Result<Message, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // A queued pong or close reply goes out as soon as the socket takes it; one it does
            // not take now is retried on the next poll (this task is woken when it can write).
            // A failed write shows as the end of the read side soon after.
            if this.reply.is_some() {
                let _ = this.poll_write_out(cx);
            }
            if this.read_done {
                return Poll::Ready(None);
            }
            match this.next_pending() {
                Ok(Some(message)) => {
                    this.on_message(&message, cx);
                    return Poll::Ready(Some(Ok(message)));
                }
                Ok(None) => {}
                Err(e) => {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(axum::Error::new(e))));
                }
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            if let Err(e) = ready!(Pin::new(&mut this.io).poll_read(cx, &mut buf)) {
                this.read_done = true;
                return Poll::Ready(Some(Err(axum::Error::new(e))));
            }
            let got = buf.filled();
            if got.is_empty() {
                this.read_done = true;
                return Poll::Ready(None);
            }
            if this.pending.is_none() {
                // The common case: whole frames, decoded from the stack. Only what is left
                // behind the first message goes to the heap.
                let mut at = 0;
                loop {
                    match this.inbound.decode(&got[at..]) {
                        Ok(Decoded::Incomplete) => break,
                        Ok(Decoded::Fragment(used)) => at += used,
                        Ok(Decoded::Message(message, used)) => {
                            at += used;
                            this.keep(&got[at..]);
                            this.on_message(&message, cx);
                            return Poll::Ready(Some(Ok(message)));
                        }
                        Err(e) => {
                            this.read_done = true;
                            return Poll::Ready(Some(Err(axum::Error::new(e))));
                        }
                    }
                }
                this.keep(&got[at..]);
            } else {
                this.keep(got);
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for PlainSocket<S> {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx)).map_err(axum::Error::new)?;
        if this.close_sent {
            return Poll::Ready(Err(axum::Error::new(io::Error::new(
                io::ErrorKind::NotConnected,
                "the WebSocket is closed",
            ))));
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
        let this = self.get_mut();
        if this.writing.is_some() || this.close_sent {
            return Err(axum::Error::new(io::Error::other("start_send without poll_ready")));
        }
        this.close_sent = matches!(message, Message::Close(_));
        this.writing = Some(Box::new(Outgoing::from_message(message)));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx)).map_err(axum::Error::new)?;
        Pin::new(&mut this.io).poll_flush(cx).map_err(axum::Error::new)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx)).map_err(axum::Error::new)?;
        Pin::new(&mut this.io).poll_shutdown(cx).map_err(axum::Error::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client frame: masked, with `first` as its first byte.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    /// Reads one unmasked server frame: (first byte, payload).
    async fn server_frame(io: &mut tokio::io::DuplexStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await.unwrap();
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                io.read_exact(&mut b).await.unwrap();
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                io.read_exact(&mut b).await.unwrap();
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await.unwrap();
        (head[0], payload)
    }

    fn socket(max: usize) -> (PlainSocket<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(1 << 20);
        (PlainSocket::new(server, max), client)
    }

    /// Every idle connection holds its session task for its whole life. tokio's task cell adds
    /// 80 bytes to the future and rounds up to 128, so an 800-byte future takes 896 bytes
    /// (docs/benchmarks.md, idle memory).
    #[test]
    fn the_session_task_of_a_websocket_stays_small() {
        fn future_size<A, B, C, R>(_: impl Fn(A, B, C) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let size = future_size(crate::session::run::<Socket>);
        assert!(size <= 800, "the session future of a WebSocket grew to {size} bytes");
    }

    #[test]
    fn unmasking_by_words_is_the_bytewise_xor() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..40 {
            let payload: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let expected: Vec<u8> =
                payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]).collect();
            assert_eq!(unmask(&payload, mask), expected, "{len} bytes");
        }
    }

    /// Every idle connection's task holds its socket (docs/benchmarks.md, idle memory).
    #[test]
    fn the_socket_stays_small() {
        let size = std::mem::size_of::<Socket>();
        assert!(size <= 88, "the socket grew to {size} bytes");
    }

    #[test]
    fn accept_key_is_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn headers_are_refused_as_the_rfc_says() {
        let p = |first: u8, second: u8| parse_header(&[first, second, 0, 0, 0, 0], 1000);
        assert_eq!(
            p(0xC1, 0x80),
            Err(FrameError::Protocol("reserved bits set without an extension"))
        );
        assert_eq!(p(0x83, 0x80), Err(FrameError::Protocol("reserved opcode")));
        assert_eq!(p(0x81, 0x00), Err(FrameError::Protocol("unmasked frame from a client")));
        assert_eq!(p(0x09, 0x80), Err(FrameError::Protocol("fragmented control frame")));
        assert_eq!(p(0x89, 0x80 | 126), Ok(None), "length not there yet");
        let long_ping = [0x89, 0x80 | 126, 0, 126, 0, 0, 0, 0];
        assert_eq!(
            parse_header(&long_ping, 1000),
            Err(FrameError::Protocol("control frame above 125 bytes"))
        );
        let huge = [0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            parse_header(&huge, 1000),
            Err(FrameError::Protocol("payload length with its high bit set"))
        );
        let big = [0x81, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(parse_header(&big, 1000), Err(FrameError::TooLarge(1000)), "before any payload");
        let ok = frame(0x81, b"hi");
        let h = parse_header(&ok, 1000).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.len, h.payload), (true, OpCode::Text, 6, 2));
        for cut in 0..h.len {
            assert_eq!(parse_header(&ok[..cut], 1000), Ok(None), "header cut at {cut}");
        }
    }

    #[test]
    fn close_payloads_are_checked() {
        assert_eq!(close_frame(&[]), Ok(None));
        assert!(close_frame(&[3]).is_err());
        assert!(close_frame(&1005u16.to_be_bytes()).is_err(), "1005 is never sent");
        assert!(close_frame(&999u16.to_be_bytes()).is_err());
        assert_eq!(close_frame(&[0x03, 0xe8, 0xff]), Err(FrameError::Utf8));
        let ok = close_frame(&[0x0f, 0xa0, b'b', b'y', b'e']).unwrap().unwrap();
        assert_eq!((ok.code, ok.reason.as_str()), (4000, "bye"));
    }

    #[tokio::test]
    async fn frames_split_anywhere_arrive_whole_and_in_order() {
        let (mut ws, mut client) = socket(1 << 16);
        let mut wire = Vec::new();
        let texts: Vec<String> =
            (0..50).map(|i| format!("{{\"n\":{i}}}").repeat(i * 7 + 1)).collect();
        for t in &texts {
            wire.extend(frame(0x81, t.as_bytes()));
        }
        // A fragmented message between them: text in three parts with a ping inside.
        wire.extend(frame(0x01, b"frag"));
        wire.extend(frame(0x89, b"p"));
        wire.extend(frame(0x00, b"men"));
        wire.extend(frame(0x80, b"ted"));
        let writer = tokio::spawn(async move {
            // Cuts at every prime-ish stride, so headers and payloads both split.
            for piece in wire.chunks(13) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        for t in &texts {
            match ws.next().await {
                Some(Ok(Message::Text(got))) => assert_eq!(got.as_str(), t),
                other => panic!("expected text, got {other:?}"),
            }
        }
        assert!(matches!(ws.next().await, Some(Ok(Message::Ping(p))) if &p[..] == b"p"));
        assert!(
            matches!(ws.next().await, Some(Ok(Message::Text(t))) if t.as_str() == "fragmented")
        );
        let mut client = writer.await.unwrap();
        assert_eq!(server_frame(&mut client).await, (0x8A, b"p".to_vec()), "the ping was answered");
        assert!(ws.pending.is_none(), "nothing is kept once every frame is read");
    }

    #[tokio::test]
    async fn sent_messages_are_framed_and_a_peer_close_is_echoed() {
        let (mut ws, mut client) = socket(1 << 16);
        let long = "x".repeat(70_000);
        ws.send(Message::Text("hello".into())).await.unwrap();
        ws.send(Message::Text(long.clone().into())).await.unwrap();
        assert_eq!(server_frame(&mut client).await, (0x81, b"hello".to_vec()));
        assert_eq!(server_frame(&mut client).await, (0x81, long.into_bytes()));
        client.write_all(&frame(0x88, &[0x03, 0xe8, b'o', b'k'])).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Close(Some(c)))) => {
                assert_eq!((c.code, c.reason.as_str()), (1000, "ok"))
            }
            other => panic!("expected close, got {other:?}"),
        }
        // Echoed at once: a session that ends on a close does not poll the socket again.
        assert_eq!(server_frame(&mut client).await, (0x88, vec![0x03, 0xe8]), "close echoed");
        assert!(ws.next().await.is_none(), "nothing is read after a close");
        assert!(ws.send(Message::Text("late".into())).await.is_err(), "nothing sent after close");
    }

    #[tokio::test]
    async fn violations_end_the_stream_with_their_error() {
        let cases: [(Vec<u8>, FrameError); 5] = [
            (frame(0x81, &[0x7b, 0xff, 0xfe]), FrameError::Utf8),
            (frame(0x80, b"x"), FrameError::Protocol("continuation without a message")),
            (
                [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
                FrameError::Protocol("a new message inside a fragmented one"),
            ),
            (frame(0x81, &[b'a'; 300]), FrameError::TooLarge(200)),
            (
                [frame(0x01, &[b'a'; 150]), frame(0x80, &[b'a'; 60])].concat(),
                FrameError::TooLarge(200),
            ),
        ];
        for (wire, want) in cases {
            let (mut ws, mut client) = socket(200);
            client.write_all(&wire).await.unwrap();
            let e = match ws.next().await {
                Some(Err(e)) => e,
                other => panic!("{want:?}: expected an error, got {other:?}"),
            };
            let got = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<FrameError>());
            assert_eq!(got, Some(&want));
            assert!(ws.next().await.is_none(), "{want:?}: the stream ends");
            // The session can still send its close.
            ws.send(Message::Close(Some(CloseFrame { code: 1002, reason: "bad".into() })))
                .await
                .unwrap();
            assert_eq!(server_frame(&mut client).await.0, 0x88);
        }
    }

    /// Decodes `wire` fed in pieces of `piece` bytes as the socket does: returns the messages,
    /// and the error that ended the stream, if any.
    fn decode_all(wire: &[u8], piece: usize, max: usize) -> (Vec<Message>, Option<FrameError>) {
        let mut inbound = Inbound { max, fragments: None };
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        for chunk in wire.chunks(piece.max(1)) {
            buf.extend_from_slice(chunk);
            loop {
                match inbound.decode(&buf) {
                    Ok(Decoded::Incomplete) => break,
                    Ok(Decoded::Fragment(used)) => drop(buf.drain(..used)),
                    Ok(Decoded::Message(m, used)) => {
                        buf.drain(..used);
                        out.push(m);
                    }
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// A message as a client may send it: text or binary, whole or in fragments, or a ping.
        #[derive(Debug, Clone)]
        enum Sent {
            Text(String, usize),
            Binary(Vec<u8>, usize),
            Ping(Vec<u8>),
        }

        fn sent() -> impl Strategy<Value = Sent> {
            prop_oneof![
                ("\\PC{0,300}", 1usize..4).prop_map(|(t, f)| Sent::Text(t, f)),
                (proptest::collection::vec(any::<u8>(), 0..300), 1usize..4)
                    .prop_map(|(b, f)| Sent::Binary(b, f)),
                proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Sent::Ping),
            ]
        }

        /// The frames of a message in `parts` fragments.
        fn frames(opcode: u8, payload: &[u8], parts: usize) -> Vec<u8> {
            let step = payload.len().div_ceil(parts).max(1);
            let pieces: Vec<&[u8]> =
                if payload.is_empty() { vec![&[][..]] } else { payload.chunks(step).collect() };
            let last = pieces.len() - 1;
            let mut wire = Vec::new();
            for (i, p) in pieces.iter().enumerate() {
                let op = if i == 0 { opcode } else { 0 };
                let fin = if i == last { 0x80 } else { 0 };
                wire.extend(frame(fin | op, p));
            }
            wire
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Any bytes, cut anywhere: no panic, and what decodes before an error stays decoded.
            #[test]
            fn any_bytes_are_decoded_or_refused(
                wire in proptest::collection::vec(any::<u8>(), 0..4096),
                piece in 1usize..100,
            ) {
                let (whole, whole_err) = decode_all(&wire, wire.len().max(1), 1 << 12);
                let (cut, cut_err) = decode_all(&wire, piece, 1 << 12);
                prop_assert_eq!(whole.len(), cut.len(), "the cut does not change what is read");
                prop_assert_eq!(whole_err, cut_err);
            }

            /// Valid frames, cut anywhere: every message arrives whole, in order.
            #[test]
            fn valid_messages_arrive_whole_in_order(
                sent in proptest::collection::vec(sent(), 0..20),
                piece in 1usize..200,
            ) {
                let mut wire = Vec::new();
                for m in &sent {
                    match m {
                        Sent::Text(t, f) => wire.extend(frames(0x1, t.as_bytes(), *f)),
                        Sent::Binary(b, f) => wire.extend(frames(0x2, b, *f)),
                        Sent::Ping(p) => wire.extend(frame(0x89, p)),
                    }
                }
                let (got, err) = decode_all(&wire, piece, 1 << 16);
                prop_assert_eq!(err, None);
                prop_assert_eq!(got.len(), sent.len());
                for (g, s) in got.iter().zip(&sent) {
                    match (g, s) {
                        (Message::Text(g), Sent::Text(t, _)) => prop_assert_eq!(g.as_str(), t.as_str()),
                        (Message::Binary(g), Sent::Binary(b, _)) => prop_assert_eq!(&g[..], &b[..]),
                        (Message::Ping(g), Sent::Ping(p)) => prop_assert_eq!(&g[..], &p[..]),
                        (g, s) => prop_assert!(false, "got {:?} for {:?}", g, s),
                    }
                }
            }
        }
    }
}
