//! The load generator's side of a connection: raw WebSocket (tokio-tungstenite) speaking the
//! Herald protocol directly, with byte scanning instead of JSON parsing on the hot path.

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bytes read from every bench connection's socket, as they came off the wire.
static WIRE_READ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes read off the wire by every connection so far.
pub fn wire_bytes_read() -> u64 {
    WIRE_READ.load(std::sync::atomic::Ordering::Relaxed)
}

/// A TCP stream that adds what it reads to [`WIRE_READ`].
pub struct Counted(TcpStream);

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        WIRE_READ.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A client WebSocket over a plain TCP stream: tungstenite, or yawc with permessage-deflate
/// (`--compress`; tungstenite has no compression). Both read and write tungstenite messages.
// The plain variant is the hot path of every other scenario: kept inline, not boxed.
#[allow(clippy::large_enum_variant)]
pub enum Ws {
    /// Uncompressed.
    Plain(WebSocketStream<Counted>),
    /// permessage-deflate negotiated.
    Deflate(Box<yawc::WebSocket<Counted>>),
}

impl Ws {
    /// Sends a close frame and flushes.
    pub async fn close(&mut self, _frame: Option<()>) -> Result<(), WsError> {
        SinkExt::close(self).await
    }
}

type WsError = tokio_tungstenite::tungstenite::Error;

fn ws_error(e: yawc::WebSocketError) -> WsError {
    WsError::Io(std::io::Error::other(e.to_string()))
}

impl futures_util::Stream for Ws {
    type Item = Result<Message, WsError>;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::{Poll, ready};
        use yawc::frame::OpCode;
        match self.get_mut() {
            Ws::Plain(ws) => std::pin::Pin::new(ws).poll_next(cx),
            Ws::Deflate(ws) => {
                let Some(frame) = ready!(std::pin::Pin::new(&mut **ws).poll_next(cx)) else {
                    return Poll::Ready(None);
                };
                let payload = frame.payload().clone();
                Poll::Ready(Some(Ok(match frame.opcode() {
                    OpCode::Text => match payload.try_into() {
                        Ok(text) => Message::Text(text),
                        Err(_) => return Poll::Ready(Some(Err(WsError::Utf8(String::new())))),
                    },
                    OpCode::Ping => Message::Ping(payload),
                    OpCode::Pong => Message::Pong(payload),
                    OpCode::Close => Message::Close(None),
                    OpCode::Binary | OpCode::Continuation => Message::Binary(payload),
                })))
            }
        }
    }
}

impl futures_util::Sink<Message> for Ws {
    type Error = WsError;
    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), WsError>> {
        match self.get_mut() {
            Ws::Plain(ws) => std::pin::Pin::new(ws).poll_ready(cx),
            Ws::Deflate(ws) => std::pin::Pin::new(&mut **ws).poll_ready(cx).map_err(ws_error),
        }
    }
    fn start_send(self: std::pin::Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        use yawc::frame::Frame;
        match self.get_mut() {
            Ws::Plain(ws) => std::pin::Pin::new(ws).start_send(item),
            Ws::Deflate(ws) => {
                let frame = match item {
                    Message::Text(t) => Frame::text(bytes::Bytes::from(t)),
                    Message::Binary(b) => Frame::binary(b),
                    Message::Ping(b) => Frame::ping(b),
                    Message::Pong(b) => Frame::pong(b),
                    Message::Close(_) | Message::Frame(_) => {
                        Frame::close(yawc::close::CloseCode::Normal, "")
                    }
                };
                std::pin::Pin::new(&mut **ws).start_send(frame).map_err(ws_error)
            }
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), WsError>> {
        match self.get_mut() {
            Ws::Plain(ws) => std::pin::Pin::new(ws).poll_flush(cx),
            Ws::Deflate(ws) => std::pin::Pin::new(&mut **ws).poll_flush(cx).map_err(ws_error),
        }
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), WsError>> {
        match self.get_mut() {
            Ws::Plain(ws) => std::pin::Pin::new(ws).poll_close(cx),
            Ws::Deflate(ws) => std::pin::Pin::new(&mut **ws).poll_close(cx).map_err(ws_error),
        }
    }
}

/// Where to connect and as whom.
#[derive(Clone)]
pub struct Endpoint {
    /// Server address (127.0.0.1:PORT).
    pub addr: SocketAddr,
    /// Token sent in the `connect` command.
    pub token: String,
    /// Number of 127.0.0.x source addresses to spread connections over.
    pub sources: u8,
    /// Protocol version asked at `connect`.
    pub version: u32,
    /// Offer permessage-deflate (the server must have `[compression] enabled`).
    pub compress: bool,
    /// Every node's address (`--nodes`): connection `n` goes to node `n % len` (the first is
    /// `addr`, where the publisher connects).
    pub nodes: Vec<SocketAddr>,
}

/// Process-wide time base for payload timestamps (publisher and subscribers share the process).
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Debug: summed phase times.
pub static PHASES: [std::sync::atomic::AtomicU64; 3] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 3];

/// Nanoseconds since the time base.
pub fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

impl Endpoint {
    /// Opens TCP (from source address `127.0.0.x` number `n % sources` when there are several)
    /// and upgrades to WebSocket.
    pub async fn open(&self, n: usize) -> anyhow::Result<Ws> {
        let t0 = Instant::now();
        let addr = self.node(n);
        let stream = if self.sources <= 1 {
            TcpStream::connect(addr).await.context("tcp connect")?
        } else {
            self.connect_from(n, addr).await?
        };
        PHASES[0].fetch_add(t0.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
        stream.set_nodelay(true)?;
        let stream = Counted(stream);
        let url = format!("ws://{addr}/ws");
        if self.compress {
            let options = yawc::Options::default()
                .with_low_latency_compression()
                .server_no_context_takeover()
                .client_no_context_takeover()
                .with_limits(64 << 20, 64 << 20);
            let ws = yawc::WebSocket::handshake(url.parse()?, stream, options)
                .await
                .context("websocket handshake")?;
            return Ok(Ws::Deflate(Box::new(ws)));
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .context("websocket handshake")?;
        PHASES[1].fetch_add(t0.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(Ws::Plain(ws))
    }

    /// The node connection `n` goes to.
    fn node(&self, n: usize) -> SocketAddr {
        if self.nodes.is_empty() { self.addr } else { self.nodes[n % self.nodes.len()] }
    }

    /// Connects from `127.0.0.x`. The port is chosen here, not by `bind(addr, 0)`: the kernel's
    /// search for a free port at bind time is linear in the ports in use (and in TIME_WAIT), and
    /// dominated the client's CPU at 10,000 connections.
    async fn connect_from(&self, n: usize, addr: SocketAddr) -> anyhow::Result<TcpStream> {
        let sources = usize::from(self.sources);
        let host = 1 + (n % sources) as u32;
        let source = IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + host));
        let mut port = 20_000 + ((n / sources) % 40_000) as u16;
        let mut last = None;
        for _ in 0..8 {
            let socket = TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            if let Err(e) = socket.bind(SocketAddr::new(source, port)) {
                last = Some(e);
                port = 20_000 + (port - 20_000 + 7919) % 40_000;
                continue;
            }
            match socket.connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrNotAvailable
                        || e.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    last = Some(e);
                    port = 20_000 + (port - 20_000 + 7919) % 40_000;
                }
                Err(e) => return Err(e).context("tcp connect"),
            }
        }
        Err(anyhow::anyhow!("no free source port on {source}: {last:?}"))
    }

    /// Opens a connection and completes `connect`, then sends `extra` command lines (ids from 2)
    /// in the same frame. Returns the socket and the JSON replies to the extra commands.
    pub async fn session(
        &self,
        n: usize,
        extra: &[String],
    ) -> anyhow::Result<(Ws, Vec<ReplyResult>)> {
        let mut ws = self.open(n).await?;
        let mut frame = format!(
            r#"{{"id":1,"cmd":"connect","token":"{}","version":{}}}"#,
            self.token, self.version
        );
        for line in extra {
            frame.push('\n');
            frame.push_str(line);
        }
        ws.send(Message::text(frame)).await?;
        let want = extra.len() + 1;
        let mut replies: Vec<ReplyResult> = Vec::with_capacity(want);
        while replies.len() < want {
            let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .context("no reply within 30 s")?;
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(c))) => bail!("closed during setup: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed during setup"),
            };
            for line in text.as_str().split('\n').filter(|l| !l.is_empty()) {
                // Typed and partial: a resume reply carries every missed publication, and
                // building a JSON tree of it dominated the client's CPU in the resume storm.
                let v: Reply = serde_json::from_str(line)?;
                if v.id.is_none() {
                    continue;
                }
                if let Some(err) = v.error {
                    bail!("command failed: {err}");
                }
                replies.push(v.result.unwrap_or_default());
            }
        }
        PHASES[2]
            .fetch_add(base().elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
        replies.remove(0);
        Ok((ws, replies))
    }
}

/// A reply line, as far as the bench reads it.
#[derive(serde::Deserialize)]
struct Reply {
    id: Option<u64>,
    result: Option<ReplyResult>,
    error: Option<Box<serde_json::value::RawValue>>,
}

/// The fields of a `connect` or `subscribe` result the bench uses.
#[derive(serde::Deserialize, Default, Debug)]
pub struct ReplyResult {
    /// Stream epoch (subscribe).
    pub epoch: Option<String>,
    /// Stream offset (subscribe).
    pub offset: Option<u64>,
    /// Resume outcome (subscribe with `since`).
    pub recovered: Option<bool>,
    /// Recovered publications, offsets only.
    #[serde(default)]
    pub publications: Vec<PubOffset>,
}

/// A publication's offset.
#[derive(serde::Deserialize, Debug)]
pub struct PubOffset {
    /// Its offset.
    pub offset: u64,
}

/// A `subscribe` command line.
pub fn subscribe_cmd(id: u64, channel: &str, since: Option<(&str, u64)>) -> String {
    match since {
        Some((epoch, offset)) => format!(
            r#"{{"id":{id},"cmd":"subscribe","channel":"{channel}","since":{{"epoch":"{epoch}","offset":{offset}}}}}"#
        ),
        None => format!(r#"{{"id":{id},"cmd":"subscribe","channel":"{channel}"}}"#),
    }
}

/// Appends a `publish` command whose data carries the send time and pads to `size` bytes.
pub fn push_publish(out: &mut String, id: u64, channel: &str, size: usize, t: u64) {
    use std::fmt::Write;
    if !out.is_empty() {
        out.push('\n');
    }
    let _ = write!(out, r#"{{"id":{id},"cmd":"publish","channel":"{channel}","data":"#);
    push_data(out, size, t);
    out.push('}');
}

/// Appends an HTTP `/api/publish` body (also a `/api/publish/batch` item) with the same data
/// as [`push_publish`].
pub fn push_api_publish(out: &mut String, channel: &str, size: usize, t: u64) {
    use std::fmt::Write;
    let _ = write!(out, r#"{{"channel":"{channel}","data":"#);
    push_data(out, size, t);
    out.push('}');
}

/// The event data: the send time, padded to `size` bytes.
fn push_data(out: &mut String, size: usize, t: u64) {
    use std::fmt::Write;
    let _ = write!(out, r#"{{"t":{t},"p":""#);
    let used = 16 + 20; // {"t":…,"p":""} with a 20-digit worst case
    out.extend(std::iter::repeat_n('x', size.saturating_sub(used)));
    out.push_str("\"}");
}

/// Reads the unsigned integer after `key` in `line`.
pub fn field_u64(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    let digits = line[at..].bytes().take_while(u8::is_ascii_digit);
    let mut v: u64 = 0;
    let mut any = false;
    for d in digits {
        v = v.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
        any = true;
    }
    any.then_some(v)
}

/// A log-linear latency histogram in microseconds: exact below 1024 us, then 64 sub-buckets per
/// power of two (under 1.6 % error).
#[derive(Debug, Default, Clone)]
pub struct Hist {
    counts: Vec<u64>,
    /// Samples recorded.
    pub n: u64,
    /// Largest sample, in microseconds.
    pub max_us: u64,
}

const LINEAR: u64 = 1024;
const SUB: u64 = 64;

fn bucket(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let exp = 63 - u64::from(us.leading_zeros()); // >= 10
    let sub = (us >> (exp - 6)) & (SUB - 1);
    (LINEAR + (exp - 10) * SUB + sub) as usize
}

fn bucket_value(b: usize) -> u64 {
    let b = b as u64;
    if b < LINEAR {
        return b;
    }
    let exp = (b - LINEAR) / SUB + 10;
    let sub = (b - LINEAR) % SUB;
    ((SUB + sub) << (exp - 6)) + (1 << (exp - 6)) / 2
}

impl Hist {
    /// Records one sample.
    pub fn record(&mut self, us: u64) {
        let b = bucket(us.min(1 << 40));
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.n += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Adds another histogram.
    pub fn merge(&mut self, other: &Hist) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The q-quantile in milliseconds, `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((self.n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(b).min(self.max_us) as f64 / 1000.0);
            }
        }
        Some(self.max_us as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Hist::default();
        for us in 1..=10_000 {
            h.record(us);
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        assert!((p50 - 5.0).abs() < 0.1, "{p50}");
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((p99 - 9.9).abs() < 0.2, "{p99}");
        assert_eq!(field_u64(r#"{"offset":42,"data":{"t":7}}"#, "\"offset\":"), Some(42));
        assert_eq!(field_u64(r#"{"data":{"t":7}}"#, "\"t\":"), Some(7));
        let mut s = String::new();
        push_publish(&mut s, 1, "c", 100, 123);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["data"]["t"], 123);
        assert!(v["data"].to_string().len() <= 100);
        let mut api = String::new();
        push_api_publish(&mut api, "c", 100, 123);
        let a: serde_json::Value = serde_json::from_str(&api).unwrap();
        assert_eq!((&a["channel"], &a["data"]), (&v["channel"], &v["data"]));
    }
}
