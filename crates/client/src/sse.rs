//! The multiplexed SSE transport (docs/protocol.md §13): where a WebSocket upgrade is refused (a
//! proxy, a firewall), the same wire protocol runs over `GET /sse` (frames in, one SSE event
//! each) and `POST /sse/session/{id}` (command lines out). [`crate::raw`] puts it behind the same
//! halves as a WebSocket, so the connection logic does not change with the transport. Also the
//! background WebSocket probe that tells a client on SSE when to move back.
//!
//! The stream is parsed by hand ([`Parser`], a few dozen lines) rather than with an SSE crate:
//! none is in the dependency tree, and the frame text must come back byte-exact (data lines
//! joined with `\n`, nothing trimmed beyond the one space after `data:`).

use rand::Rng;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A probe whose upgrade has not completed by then counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest line the parser buffers (the hub's frames are far below it).
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// A way to carry the wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `GET /ws` upgraded to a WebSocket.
    WebSocket,
    /// The multiplexed SSE transport: `GET /sse` plus `POST /sse/session/{id}`.
    Sse,
}

impl Transport {
    /// `websocket` or `sse`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How often a client on SSE tries a WebSocket upgrade again: the first probe after about
/// `initial`, each later one after twice the previous delay up to `max` (each drawn in
/// `[d/2, d]`, so that many clients do not probe in step). Defaults 2 s and 30 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePolicy {
    /// The delay of the first probe after SSE opened.
    pub initial: Duration,
    /// The cap the delay doubles up to.
    pub max: Duration,
}

impl Default for ProbePolicy {
    fn default() -> Self {
        ProbePolicy { initial: Duration::from_secs(2), max: Duration::from_secs(30) }
    }
}

/// What went wrong on an SSE transport.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    /// The WebSocket URL has no SSE counterpart.
    #[error("no SSE url for {0:?}")]
    Url(String),
    /// The request did not complete, or the stream broke.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The hub (or something on the way) answered with an unexpected status.
    #[error("{what} answered {status}: {body}")]
    Status {
        /// `GET /sse` or `POST /sse/session`.
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The stream did not start with the `session` event.
    #[error("the SSE stream did not name its session: {0}")]
    NoSession(String),
    /// A line longer than any frame the hub sends.
    #[error("SSE line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
}

/// The multiplexed SSE URL of a hub's WebSocket URL: `ws://h/ws` → `http://h/sse`,
/// `wss://h/live/ws` → `https://h/live/sse`. The query is dropped: the token goes in `connect`.
pub fn sse_url(ws_url: &str) -> Result<url::Url, SseError> {
    let bad = || SseError::Url(ws_url.to_string());
    let mut url = url::Url::parse(ws_url).map_err(|_| bad())?;
    let scheme = match url.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        _ => return Err(bad()),
    };
    url.set_scheme(scheme).map_err(|_| bad())?;
    let path = url.path().trim_end_matches('/');
    let prefix = path.strip_suffix("/ws").unwrap_or(path).to_string();
    url.set_path(&format!("{prefix}/sse"));
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The `token` query parameter of a WebSocket URL, which `GET /ws` accepts and `GET /sse` has
/// no use for (its token goes in `connect`).
pub(crate) fn url_token(ws_url: &str) -> Option<String> {
    let url = url::Url::parse(ws_url).ok()?;
    url.query_pairs().find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
}

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// The `event:` field, `message` when absent.
    pub kind: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// An incremental `text/event-stream` parser (the WHATWG rules this transport needs): lines end
/// with `\n`, `\r\n` or `\r`; a blank line dispatches; `:` lines are comments; one space after the
/// colon is dropped; `id` and `retry` are ignored (resume is the protocol's own).
#[derive(Debug, Default)]
pub(crate) struct Parser {
    /// Bytes of an unfinished line.
    buf: Vec<u8>,
    /// The event type being built.
    kind: Option<String>,
    /// The data being built, `None` until a `data` field came.
    data: Option<String>,
    /// A leading byte order mark was checked for.
    started: bool,
}

impl Parser {
    /// Feeds bytes, pushing every event they complete onto `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<Event>) -> Result<(), SseError> {
        self.buf.extend_from_slice(bytes);
        if !self.started && self.buf.len() >= 3 {
            self.started = true;
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.buf.drain(..3);
            }
        }
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|&b| b == b'\n' || b == b'\r') {
            let end = start + i;
            let next = match self.buf[end] {
                b'\r' if end + 1 == self.buf.len() => break, // maybe `\r\n` split across reads
                b'\r' if self.buf[end + 1] == b'\n' => end + 2,
                _ => end + 1,
            };
            let line = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
            start = next;
            self.line(&line, out);
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE_BYTES {
            return Err(SseError::LineTooLong);
        }
        Ok(())
    }

    fn line(&mut self, line: &str, out: &mut VecDeque<Event>) {
        if line.is_empty() {
            let kind = self.kind.take();
            if let Some(data) = self.data.take() {
                out.push_back(Event { kind: kind.unwrap_or_else(|| "message".into()), data });
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.kind = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
    }
}

/// The receiving half: the `GET /sse` stream, yielding each frame's text.
pub struct SseStream {
    /// The open response; dropping it ends the stream, and with it the hub's session.
    response: reqwest::Response,
    /// Bytes to events.
    parser: Parser,
    /// Events parsed and not yet returned.
    events: VecDeque<Event>,
}

/// The sending half: each call is one `POST /sse/session/{id}`. The owner keeps one in flight
/// at a time (the protocol's ordering rule), as the writer task does.
pub struct SsePoster {
    /// Shared with the stream (the pool keeps the POSTs on a keep-alive connection).
    http: reqwest::Client,
    /// `…/sse/session/{id}`.
    url: url::Url,
}

/// The start of a refusal's body (200 bytes at most), for the error message.
async fn body_start(response: reqwest::Response) -> String {
    let mut body = response.text().await.unwrap_or_default();
    // By hand: `str::floor_char_boundary` is newer than the crate's MSRV.
    let cut = (0..=body.len().min(200)).rev().find(|&i| body.is_char_boundary(i)).unwrap_or(0);
    body.truncate(cut);
    body
}

/// Opens `GET /sse` at `url` and reads up to its `session` event.
pub async fn open(url: url::Url) -> Result<(SsePoster, SseStream), SseError> {
    // No overall timeout: the stream lives as long as the session (the caller bounds the open).
    let http = reqwest::Client::builder().build()?;
    let response = http.get(url.clone()).header("accept", "text/event-stream").send().await?;
    let status = response.status();
    if !status.is_success() {
        let body = body_start(response).await;
        return Err(SseError::Status { what: "GET /sse", status: status.as_u16(), body });
    }
    let mut stream = SseStream { response, parser: Parser::default(), events: VecDeque::new() };
    let first = stream.next_event().await?.ok_or_else(|| SseError::NoSession("end".into()))?;
    let id = (first.kind == "session")
        .then(|| serde_json::from_str::<serde_json::Value>(&first.data).ok())
        .flatten()
        .and_then(|v| v["session"].as_str().map(str::to_string))
        .filter(|id| !id.is_empty())
        .ok_or_else(|| SseError::NoSession(format!("{}: {}", first.kind, first.data)))?;
    let mut post = url.clone();
    post.path_segments_mut().map_err(|_| SseError::Url(url.to_string()))?.extend(["session", &id]);
    Ok((SsePoster { http, url: post }, stream))
}

impl SseStream {
    /// The next event, `None` at the end of the stream. Cancel-safe: a body read that is
    /// dropped takes nothing, and parsed events wait in the queue.
    async fn next_event(&mut self) -> Result<Option<Event>, SseError> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            match self.response.chunk().await? {
                Some(bytes) => self.parser.feed(&bytes, &mut self.events)?,
                None => return Ok(None),
            }
        }
    }

    /// The next frame's text (a `message` event's data), `None` at the end of the stream.
    /// Cancel-safe, as [`SseStream::next_event`].
    pub async fn next_frame(&mut self) -> Result<Option<String>, SseError> {
        loop {
            match self.next_event().await? {
                Some(event) if event.kind == "message" => return Ok(Some(event.data)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }
}

impl SsePoster {
    /// Posts one or more `\n`-separated command lines; `Ok` once the hub queued them (204).
    pub async fn post(&self, body: String) -> Result<(), SseError> {
        // text/plain: what a browser may send without a preflight; the hub accepts any type.
        let response = self
            .http
            .post(self.url.clone())
            .header("content-type", "text/plain")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = body_start(response).await;
        Err(SseError::Status { what: "POST /sse/session", status: status.as_u16(), body })
    }
}

/// Background WebSocket probes while on SSE: one real upgrade at a time, closed at once, at the
/// [`ProbePolicy`]'s intervals, until one succeeds. The task stops when this is dropped.
pub struct Probe {
    /// Fires when an upgrade succeeded.
    found: oneshot::Receiver<()>,
    /// The probing task.
    task: JoinHandle<()>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Probe {
    /// Starts probing `ws_url` (needs a Tokio runtime). No token: the hub upgrades without one
    /// (a token is checked at `connect`), so a probe never carries it.
    pub fn spawn(ws_url: String, policy: ProbePolicy) -> Probe {
        let (tx, found) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut delay = policy.initial;
            loop {
                let wait =
                    rand::rng().random_range(delay / 2..=delay.max(Duration::from_millis(1)));
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(policy.max.max(policy.initial));
                let upgrade = tokio_tungstenite::connect_async(ws_url.as_str());
                match tokio::time::timeout(PROBE_TIMEOUT, upgrade).await {
                    Ok(Ok((mut ws, _))) => {
                        let close = ws.close(None);
                        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                        let _ = tx.send(());
                        return;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "herald websocket probe failed"),
                    Err(_) => tracing::debug!("herald websocket probe timed out"),
                }
            }
        });
        Probe { found, task }
    }

    /// Resolves once a probe's upgrade succeeded; never otherwise. Cancel-safe.
    pub async fn found(&mut self) {
        if (&mut self.found).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<Event> {
        let mut parser = Parser::default();
        let mut out = VecDeque::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out).unwrap();
        }
        out.into_iter().collect()
    }

    fn ev(kind: &str, data: &str) -> Event {
        Event { kind: kind.into(), data: data.into() }
    }

    #[test]
    fn sse_urls_follow_the_websocket_url() {
        let u = |s: &str| sse_url(s).unwrap().to_string();
        assert_eq!(u("ws://h:7700/ws"), "http://h:7700/sse");
        assert_eq!(u("wss://h/live/ws?token=x"), "https://h/live/sse");
        assert_eq!(u("ws://h:1/"), "http://h:1/sse");
        assert_eq!(u("ws://h:1/live/"), "http://h:1/live/sse");
        assert!(sse_url("ftp://h/ws").is_err());
        assert_eq!(url_token("ws://h/ws?a=1&token=t%20k").as_deref(), Some("t k"));
        assert_eq!(url_token("ws://h/ws"), None);
    }

    #[test]
    fn frames_come_back_byte_exact() {
        let frame = r#"{"push":"pub","data":{"s":" lead: \"x\" é✓🦀 "}}"#;
        let wire = format!(
            ": keep-alive\n\nevent: session\ndata: {{\"session\":\"ab\"}}\n\ndata: {frame}\ndata: {frame}\ndata:  two spaces\n\n"
        );
        let events = parse(&[wire.as_bytes()]);
        assert_eq!(
            events,
            [
                ev("session", r#"{"session":"ab"}"#),
                ev("message", &format!("{frame}\n{frame}\n two spaces"))
            ]
        );
    }

    #[test]
    fn events_split_anywhere_across_reads_parse_the_same() {
        let wire = "data: é✓🦀 1\r\ndata:2\r\n\r\nevent:x\rdata\r\r: c\n\ndata: 3\n\n".as_bytes();
        let whole = parse(&[wire]);
        assert_eq!(whole, [ev("message", "é✓🦀 1\n2"), ev("x", ""), ev("message", "3")]);
        for cut in 0..wire.len() {
            assert_eq!(parse(&[&wire[..cut], &wire[cut..]]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(parse(&bytes), whole, "one byte at a time");
    }

    #[test]
    fn comments_ids_and_empty_events_dispatch_nothing() {
        let events = parse(&[b"\xEF\xBB\xBF: hi\n\nid: 7\nretry: 10\n\nevent: e\n\n:x\n"]);
        assert_eq!(events, []);
        // An event type does not leak into the next event.
        assert_eq!(parse(&[b"event: e\n\ndata: d\n\n"]), [ev("message", "d")]);
    }
}
