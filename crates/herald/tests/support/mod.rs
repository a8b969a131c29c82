//! Test harness: a real `herald` process on 127.0.0.1 and a raw WebSocket client that speaks
//! docs/protocol.md. Waits are for events with deadlines, never fixed sleeps.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use herald_protocol::command::{Command, Request};
use herald_protocol::reply::ErrorBody;
use herald_protocol::{Publication, ServerMessage, split_frame};
use serde_json::Value;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const API_KEY: &str = "test-key";
pub const SECRET: &str = "test-secret";
/// Upper bound for any single wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running herald process (the binary of this crate) with the test API key and secret.
pub struct Hub {
    process: herald_testkit::HeraldProcess,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Hub {
    /// Starts herald with this TOML configuration (plus listen/api-key/secret flags).
    pub fn start(config: &str) -> Hub {
        Hub::start_with(config, &[])
    }

    /// Starts herald with extra CLI flags.
    pub fn start_with(config: &str, extra: &[&str]) -> Hub {
        let mut args = vec!["--api-key", API_KEY, "--token-secret", SECRET];
        args.extend_from_slice(extra);
        let process = herald_testkit::HeraldProcess::start(
            env!("CARGO_BIN_EXE_herald").as_ref(),
            config,
            &args,
        );
        Hub { addr: process.addr, log: process.log.clone(), process }
    }

    /// kill -9 and start again on the same port (memory engine: every stream gets a new epoch).
    pub fn restart(mut self) -> Hub {
        self.process.restart();
        self.log = self.process.log.clone();
        self
    }

    pub fn ws_url(&self) -> String {
        self.process.ws_url()
    }

    pub fn http(&self, path: &str) -> String {
        format!("{}{}", self.process.http_url(), path)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.terminate()
    }

    /// Publishes through the HTTP API; returns (status, body).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = reqwest::Client::new();
        let req = match method {
            "GET" => client.get(self.http(path)),
            _ => client.post(self.http(path)),
        }
        .header("x-api-key", API_KEY);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Publishes `data` to `channel`; panics unless accepted. Returns the reply.
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let (status, body) = self
            .api(
                "POST",
                "/api/publish",
                Some(serde_json::json!({"channel": channel, "data": data})),
            )
            .await;
        assert_eq!(status, 200, "publish failed: {body}");
        body
    }

    /// Publishes with extra fields (key, op, type...).
    pub async fn publish_with(&self, body: Value) -> (u16, Value) {
        self.api("POST", "/api/publish", Some(body)).await
    }

    /// Connects and authenticates as `user` allowed on `channels`.
    pub async fn client(&self, user: &str, channels: &[&str]) -> Ws {
        let mut ws = Ws::open(&self.ws_url()).await;
        let reply = ws
            .request(Command::Connect {
                token: Some(token(user, channels)),
                name: None,
                version: None,
            })
            .await;
        reply.expect("connect");
        ws
    }
}

/// An HS256 token signed with the test secret.
pub fn token(user: &str, channels: &[&str]) -> String {
    token_with(serde_json::json!({
        "sub": user,
        "exp": herald_server::auth::unix_now() + 3600,
        "channels": channels,
    }))
}

/// An HS256 token with arbitrary claims.
pub fn token_with(claims: Value) -> String {
    herald_testkit::hs256_token(SECRET, &claims)
}

/// A raw protocol client.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages read but not yet consumed.
    pending: VecDeque<ServerMessage>,
    next_id: u64,
    /// The close frame, once received: (code, reason).
    pub closed: Option<(u16, String)>,
    /// Answer protocol pings automatically.
    pub auto_pong: bool,
    /// The longest text frame received, in bytes.
    pub largest_frame: usize,
}

impl Ws {
    pub async fn open(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("ws connect");
        Ws {
            stream,
            pending: VecDeque::new(),
            next_id: 1,
            closed: None,
            auto_pong: true,
            largest_frame: 0,
        }
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.stream.send(Message::text(text.to_string())).await.expect("ws send");
    }

    /// Sends a command; returns its id.
    pub async fn send(&mut self, command: Command) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_raw(&Request { id: Some(id), command }.to_json()).await;
        id
    }

    /// Reads one more frame into `pending`; false when the connection ended.
    async fn fill(&mut self) -> bool {
        loop {
            let msg = match tokio::time::timeout(WAIT, self.stream.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(_) => return false,
                Err(_) => panic!("no message within {WAIT:?}"),
            };
            match msg {
                Message::Text(t) => {
                    self.largest_frame = self.largest_frame.max(t.len());
                    for line in split_frame(t.as_str()) {
                        let m = ServerMessage::parse(line)
                            .unwrap_or_else(|e| panic!("bad line {line}: {e}"));
                        if matches!(m, ServerMessage::Ping) && self.auto_pong {
                            let _ = self.stream.send(Message::text(r#"{"cmd":"pong"}"#)).await;
                            continue;
                        }
                        self.pending.push_back(m);
                    }
                    return true;
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

    /// The next message, or None when the connection ended.
    pub async fn next(&mut self) -> Option<ServerMessage> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Some(m);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Sends a command and waits for its reply; pushes that arrive meanwhile stay queued.
    pub async fn request(&mut self, command: Command) -> Result<Value, ErrorBody> {
        let id = self.send(command).await;
        self.reply(id).await
    }

    /// Waits for the reply to `id`.
    pub async fn reply(&mut self, id: u64) -> Result<Value, ErrorBody> {
        let mut scanned = 0;
        loop {
            while scanned < self.pending.len() {
                if matches!(&self.pending[scanned], ServerMessage::Reply { id: got, .. } if *got == id)
                {
                    let Some(ServerMessage::Reply { result, .. }) = self.pending.remove(scanned)
                    else {
                        unreachable!()
                    };
                    return result.map(|r| serde_json::from_str(r.get()).unwrap());
                }
                scanned += 1;
            }
            if !self.fill().await {
                panic!("connection closed before reply {id}: {:?}", self.closed);
            }
        }
    }

    /// Subscribes; returns the reply.
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.request(Command::Subscribe {
            channel: channel.into(),
            since: None,
            snapshot: false,
            view: Default::default(),
            presence: Default::default(),
            preview: None,
        })
        .await
        .unwrap_or_else(|e| panic!("subscribe {channel}: {e}"))
    }

    /// The next publication (skipping nothing else: any other message is a test failure).
    pub async fn next_pub(&mut self) -> Publication {
        match self.next().await {
            Some(ServerMessage::Publication(p)) => p,
            other => panic!("expected a publication, got {other:?} (closed: {:?})", self.closed),
        }
    }

    /// Reads until the server closes; returns the close code and the `disconnect` push code.
    pub async fn expect_close(&mut self) -> (u16, Option<u16>) {
        let mut push_code = None;
        while let Some(m) = self.next().await {
            if let ServerMessage::Disconnect { code, .. } = m {
                push_code = Some(code);
            }
        }
        (self.closed.as_ref().map_or(0, |c| c.0), push_code)
    }
}

/// The `code` of an error reply.
pub fn code(e: &ErrorBody) -> u16 {
    e.code
}
