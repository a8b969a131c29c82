//! A protocol client written from docs/protocol.md alone: JSON values on the wire, no types from
//! `herald-protocol`, so a lenient parser on our side cannot hide a wire-format drift. Every line
//! it reads is checked against the shape rules of §1 and §3 before a check sees it.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for any single wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// One WebSocket connection to `/ws`.
pub struct Conn {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages read but not consumed yet, in arrival order.
    pending: VecDeque<Value>,
    next_id: u64,
    /// The close frame once received: (code, reason); 1005 for a close without a code.
    pub closed: Option<(u16, String)>,
    /// How the socket ended without a close frame (a read error), for failure messages.
    pub ended: Option<String>,
    /// Answer `{"push":"ping"}` with `{"cmd":"pong"}` on the fly (§7), as a client SHOULD.
    pub auto_pong: bool,
    /// Pings received so far (answered or not).
    pub pings: usize,
    /// Number of messages in each text frame received, for the batching rule of §1.
    pub frame_sizes: Vec<usize>,
}

impl Conn {
    /// Opens `url` (a `ws://…/ws` address, possibly with a query).
    pub async fn open(url: &str) -> Conn {
        Conn::open_with(url, &[]).await
    }

    /// Opens `url` with extra upgrade headers (Authorization, Origin).
    pub async fn open_with(url: &str, headers: &[(&'static str, String)]) -> Conn {
        let mut req = url.into_client_request().expect("ws url");
        for (name, value) in headers {
            req.headers_mut().insert(*name, value.parse().expect("header value"));
        }
        // No client-side size cap: a resume reply may legitimately be large, and the suite
        // checks the server's limits, not tungstenite's (16 MiB frames by default).
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let upgrade = tokio_tungstenite::connect_async_with_config(req, Some(config), false);
        let (stream, _) = tokio::time::timeout(WAIT, upgrade)
            .await
            .expect("upgrade in time")
            .expect("ws upgrade");
        Conn {
            stream,
            pending: VecDeque::new(),
            next_id: 1,
            closed: None,
            ended: None,
            auto_pong: true,
            pings: 0,
            frame_sizes: Vec::new(),
        }
    }

    /// Sends one text frame as is.
    pub async fn send_raw(&mut self, text: &str) {
        self.stream.send(Message::text(text.to_string())).await.expect("ws send");
    }

    /// Sends one binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.stream.send(Message::binary(bytes)).await.expect("ws send");
    }

    /// A fresh command id.
    pub fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `cmd` (an object without `id`) with a fresh id; returns the id.
    pub async fn send(&mut self, cmd: Value) -> u64 {
        let id = self.id();
        let mut obj = cmd.as_object().expect("a command is an object").clone();
        obj.insert("id".into(), json!(id));
        self.send_raw(&Value::Object(obj).to_string()).await;
        id
    }

    /// Sends `cmd` and waits for its reply: Ok(result) or Err(error object).
    pub async fn request(&mut self, cmd: Value) -> Result<Value, Value> {
        let id = self.send(cmd).await;
        self.reply(id).await
    }

    /// Sends `cmd`, expects a `result`.
    pub async fn ok(&mut self, cmd: Value) -> Value {
        let what = cmd.to_string();
        self.request(cmd).await.unwrap_or_else(|e| panic!("{what} failed: {e}"))
    }

    /// Sends `cmd`, expects an `error`; returns it.
    pub async fn err(&mut self, cmd: Value) -> Value {
        let what = cmd.to_string();
        match self.request(cmd).await {
            Err(e) => e,
            Ok(r) => panic!("{what} succeeded ({r}), an error was expected"),
        }
    }

    /// `connect` with this token (or none); the raw reply.
    pub async fn connect(&mut self, token: Option<&str>) -> Result<Value, Value> {
        let mut cmd = json!({"cmd": "connect"});
        if let Some(t) = token {
            cmd["token"] = json!(t);
        }
        self.request(cmd).await
    }

    /// `subscribe` without options; the result.
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.ok(json!({"cmd": "subscribe", "channel": channel})).await
    }

    /// Reads one more frame into `pending`; false once the connection ended.
    async fn fill(&mut self) -> bool {
        loop {
            let msg = match tokio::time::timeout(WAIT, self.stream.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    self.ended = Some(e.to_string());
                    return false;
                }
                Ok(None) => {
                    self.ended = Some("end of stream".into());
                    return false;
                }
                Err(_) => panic!("no message within {WAIT:?}; pending: {:?}", self.pending),
            };
            match msg {
                Message::Text(t) => {
                    let mut n = 0;
                    // §1: split every frame on \n and parse each non-empty line.
                    for line in t.as_str().split('\n').filter(|l| !l.trim().is_empty()) {
                        n += 1;
                        let v: Value = serde_json::from_str(line)
                            .unwrap_or_else(|e| panic!("§1: a line is not JSON ({e}): {line}"));
                        check_shape(&v);
                        if v["push"] == "ping" {
                            self.pings += 1;
                            if self.auto_pong {
                                let _ = self.stream.send(Message::text(r#"{"cmd":"pong"}"#)).await;
                            }
                            continue;
                        }
                        self.pending.push_back(v);
                    }
                    self.frame_sizes.push(n);
                    return true;
                }
                Message::Binary(b) => {
                    panic!("§1: the server sent a binary frame ({} bytes)", b.len())
                }
                Message::Close(frame) => {
                    self.closed =
                        Some(frame.map_or((1005, String::new()), |f| {
                            (f.code.into(), f.reason.to_string())
                        }));
                    return false;
                }
                _ => continue,
            }
        }
    }

    /// Reads one more frame (answering pings); false once the connection ended.
    pub async fn read_frame(&mut self) -> bool {
        self.fill().await
    }

    /// The next message (pings excluded when auto-answered), or None when the connection ended.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Some(m);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next message, which must exist.
    pub async fn next_msg(&mut self) -> Value {
        match self.next().await {
            Some(m) => m,
            None => {
                panic!("connection ended (close {:?}) while a message was expected", self.closed)
            }
        }
    }

    /// Waits for the reply to `id`; other messages stay queued in order.
    pub async fn reply(&mut self, id: u64) -> Result<Value, Value> {
        let mut scanned = 0;
        loop {
            while scanned < self.pending.len() {
                if self.pending[scanned]["id"] == json!(id) {
                    let mut m = self.pending.remove(scanned).unwrap();
                    return match m.get("result") {
                        Some(_) => Ok(m["result"].take()),
                        None => Err(m["error"].take()),
                    };
                }
                scanned += 1;
            }
            if !self.fill().await {
                panic!("connection closed (close {:?}) before reply {id}", self.closed);
            }
        }
    }

    /// The next message, which must be a `pub` push; returns the Publication.
    pub async fn next_pub(&mut self) -> Value {
        let m = self.next_msg().await;
        assert_eq!(m["push"], "pub", "expected a publication, got {m}");
        m["pub"].clone()
    }

    /// Reads until the server closes: (close code, the `disconnect` push if one came).
    /// 0 as the code when the socket ended without a close frame.
    pub async fn expect_close(&mut self) -> (u16, Option<Value>) {
        let mut push = None;
        while let Some(m) = self.next().await {
            if m["push"] == "disconnect" {
                push = Some(m);
            }
        }
        (self.closed.as_ref().map_or(0, |c| c.0), push)
    }

    /// Reads until the server closes; asserts close code `code`, a `disconnect` push with the
    /// same code before it (§9), and that push's fields (§3). Returns the push.
    pub async fn expect_closed_with(&mut self, code: u16, name: &str) -> Value {
        let (close, push) = self.expect_close().await;
        assert_eq!(close, code, "§9: close code (push: {push:?}, socket: {:?})", self.ended);
        let push = push.unwrap_or_else(|| panic!("§9: no disconnect push before close {code}"));
        assert_eq!(push["code"], code, "§9: disconnect push code: {push}");
        assert_eq!(push["name"], name, "§9: disconnect push name: {push}");
        assert!(push["reason"].is_string(), "§3: disconnect push has `reason`: {push}");
        // §9: 4000–4499 reconnect with backoff; 4500–4999 are final.
        assert_eq!(push["reconnect"], json!(code < 4500), "§9: `reconnect` for {code}: {push}");
        push
    }

    /// Asserts the connection is still served: a `ping` gets its `{}` reply.
    pub async fn still_open(&mut self) {
        let r = self.request(json!({"cmd": "ping"})).await;
        assert_eq!(r, Ok(json!({})), "the connection stays open and answers ping");
    }
}

/// §3: a server message is a reply (`id` and exactly one of `result`/`error`) or a push
/// (`push` naming its kind); an error object has `code`, `name`, `message` (§8).
fn check_shape(v: &Value) {
    let obj: &Map<String, Value> =
        v.as_object().unwrap_or_else(|| panic!("§1: not an object: {v}"));
    if obj.contains_key("id") {
        assert!(obj["id"].is_u64(), "§2: the reply id is an unsigned integer: {v}");
        let (r, e) = (obj.contains_key("result"), obj.contains_key("error"));
        assert!(r != e, "§3: a reply has exactly one of result or error: {v}");
        if e {
            check_error(&obj["error"]);
        }
    } else {
        let kind = obj.get("push").and_then(Value::as_str);
        let kind = kind.unwrap_or_else(|| panic!("§3: neither a reply nor a push: {v}"));
        assert!(
            ["pub", "ping", "unsubscribe", "disconnect", "error"].contains(&kind),
            "§3: unknown push kind: {v}"
        );
        if kind == "error" {
            check_error(&obj["error"]);
        }
    }
}

/// §8: `{"code","name","message",…}` with a code from the table and the name next to it.
pub fn check_error(e: &Value) {
    let code = e["code"].as_u64().unwrap_or_else(|| panic!("§8: error without code: {e}"));
    let name = e["name"].as_str().unwrap_or_else(|| panic!("§8: error without name: {e}"));
    assert!(e["message"].is_string(), "§8: error without message: {e}");
    assert_eq!(Some(name), error_name(code), "§8: name of code {code}: {e}");
}

/// The §8 table.
pub fn error_name(code: u64) -> Option<&'static str> {
    Some(match code {
        100 => "internal",
        101 => "unauthorized",
        102 => "unknown_namespace",
        103 => "forbidden",
        104 => "unknown_command",
        105 => "already_subscribed",
        106 => "too_many_channels",
        107 => "bad_request",
        108 => "not_subscribed",
        109 => "token_expired",
        110 => "rate_limited",
        111 => "message_too_large",
        112 => "state_limit_exceeded",
        113 => "unavailable",
        114 => "invalid_channel",
        115 => "already_connected",
        116 => "not_keyed",
        117 => "resubscribe",
        118 => "invalid_filter",
        119 => "too_many_connections",
        _ => return None,
    })
}

/// Asserts `e` is an error object with this code (and its §8 name).
#[track_caller]
pub fn assert_code(e: &Value, code: u64) {
    assert_eq!(e["code"], code, "expected error {code}, got {e}");
}

/// §4: "RFC 3339 UTC with milliseconds", e.g. `2026-11-22T10:00:01.120Z`.
#[track_caller]
pub fn assert_time(t: &Value) {
    let s = t.as_str().unwrap_or_else(|| panic!("time is not a string: {t}"));
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let ok = b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z';
    assert!(ok, "§4: time is RFC 3339 UTC with milliseconds: {s}");
}

/// The offsets of an array of publications.
pub fn offsets(pubs: &Value) -> Vec<u64> {
    pubs.as_array()
        .unwrap_or_else(|| panic!("not an array: {pubs}"))
        .iter()
        .map(|p| p["offset"].as_u64().unwrap_or_else(|| panic!("no offset: {p}")))
        .collect()
}
