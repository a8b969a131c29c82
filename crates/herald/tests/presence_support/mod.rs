//! What the presence cluster tests share: several herald nodes on one redis-server, and a
//! presence client that lives in its own task, follows the member list of one channel (the
//! `presence_list` then `presence` pushes, applied to a member map), joins, updates and leaves
//! when told, and survives cut connections (reconnect, resubscribe with `presence_since`).
#![allow(dead_code)]

use crate::support::{Hub, token};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use herald_protocol::command::{Command, Request};
use herald_protocol::reply::ErrorBody;
use herald_protocol::{Position, PresenceMode, PresenceQuery, ServerMessage, split_frame};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Presence namespace of the tests (the issue's example), with a roomy outbound queue: a
/// debug build reads 200 clients' events slowly.
pub const CONFIG: &str = "[limits]\noutbound_queue_messages = 8192\ncommands_per_second = 0\n\
                          [namespaces.room]\npresence = true\nclient_publish = true\n\
                          presence_window = \"50ms\"\n";

/// Upper bound for one reply; a stall past it fails the test.
const WAIT: Duration = Duration::from_secs(15);
/// Upper bound for getting a connection again after a cut.
const RECONNECT_WITHIN: Duration = Duration::from_secs(20);

/// `n` herald nodes sharing one redis-server.
pub struct Cluster {
    /// The nodes.
    pub hubs: Vec<Hub>,
    /// Kept alive for the nodes (killed on drop).
    pub redis: herald_testkit::RedisProcess,
}

impl Cluster {
    /// Starts redis and `n` nodes with `config`.
    pub fn start(n: usize, config: &str) -> Cluster {
        let redis = herald_testkit::RedisProcess::start();
        let url = redis.url();
        let args = ["--engine", "redis", "--redis-url", url.as_str()];
        let hubs = (0..n).map(|_| Hub::start_with(config, &args)).collect();
        Cluster { hubs, redis }
    }
}

/// member id → (user, info), as a member list holds it.
pub type Members = BTreeMap<String, (String, Value)>;

/// Every member of `channel` as `GET /api/presence` on `hub` pages them.
pub async fn api_members(hub: &Hub, channel: &str) -> Members {
    let mut members = Members::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/api/presence?channel={channel}&limit=1000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (status, body) = hub.api("GET", &path, None).await;
        assert_eq!(status, 200, "{body}");
        for m in body["members"].as_array().expect("members") {
            members.insert(member_entry(m).0, member_entry(m).1);
        }
        match body.get("next").and_then(Value::as_str) {
            Some(next) => after = Some(next.into()),
            None => return members,
        }
    }
}

/// The node id each member's record names, from `GET /api/presence`.
pub async fn api_nodes(hub: &Hub, channel: &str) -> BTreeMap<String, String> {
    let path = format!("/api/presence?channel={channel}&limit=1000");
    let (_, body) = hub.api("GET", &path, None).await;
    body["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (m["member"].as_str().unwrap().into(), m["node"].as_str().unwrap().into()))
        .collect()
}

fn member_entry(m: &Value) -> (String, (String, Value)) {
    let id = m["member"].as_str().expect("member").to_string();
    let user = m["user"].as_str().unwrap_or_default().to_string();
    (id, (user, m.get("info").cloned().unwrap_or(Value::Null)))
}

/// The connection ended.
#[derive(Debug)]
pub struct Closed;

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// One WebSocket connection: a reader task forwards every message (answering pings), so
/// waiting for one is cancel-safe.
struct Conn {
    sink: Arc<Mutex<Sink>>,
    rx: mpsc::UnboundedReceiver<ServerMessage>,
    next_id: u64,
    reader: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    async fn open(url: &str, token: &str) -> Result<Conn, Closed> {
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| Closed)?
            .map_err(|_| Closed)?;
        let (sink, mut stream) = stream.split();
        let sink = Arc::new(Mutex::new(sink));
        let (tx, rx) = mpsc::unbounded_channel();
        let pongs = sink.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                match msg {
                    Message::Text(t) => {
                        for line in split_frame(t.as_str()) {
                            let m = ServerMessage::parse(line)
                                .unwrap_or_else(|e| panic!("bad line {line}: {e}"));
                            if matches!(m, ServerMessage::Ping) {
                                let pong = Message::text(r#"{"cmd":"pong"}"#);
                                let _ = pongs.lock().await.send(pong).await;
                            } else if tx.send(m).is_err() {
                                return;
                            }
                        }
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
            }
        });
        let mut c = Conn { sink, rx, next_id: 1, reader };
        let connect = Command::Connect { token: Some(token.into()), name: None, version: None };
        let mut ignore = |_: ServerMessage| {};
        c.request(connect, &mut ignore).await?.unwrap_or_else(|e| panic!("connect refused: {e}"));
        Ok(c)
    }

    /// Sends a command and waits for its reply; other messages meanwhile go to `push`.
    async fn request(
        &mut self,
        command: Command,
        push: &mut (dyn FnMut(ServerMessage) + Send),
    ) -> Result<Result<Value, ErrorBody>, Closed> {
        let id = self.next_id;
        self.next_id += 1;
        let text = Request { id: Some(id), command }.to_json();
        self.sink.lock().await.send(Message::text(text)).await.map_err(|_| Closed)?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no reply to {id} within {WAIT:?}"))
                .ok_or(Closed)?;
            match m {
                ServerMessage::Reply { id: got, result } if got == id => {
                    return Ok(result.map(|r| serde_json::from_str(r.get()).unwrap()));
                }
                other => push(other),
            }
        }
    }
}

/// A condition on a member map that a test waits for.
type Pred = Box<dyn Fn(&Members) -> bool + Send>;

/// What the test tells a presence client.
enum Cmd {
    /// Become a member (subscribe and follow the list); answered once the server agreed.
    Join(oneshot::Sender<()>),
    /// Stop being one (unsubscribe).
    Leave(oneshot::Sender<()>),
    /// A new `info` (`presence_update`).
    Update(Value, oneshot::Sender<()>),
    /// Where to reconnect after the connection ends (None: stay away).
    Route(Option<String>),
    /// Answer with a snapshot once the member map satisfies the predicate.
    Until(Pred, oneshot::Sender<Snapshot>),
    /// Answer with a snapshot now.
    Snapshot(oneshot::Sender<Snapshot>),
}

/// One applied presence event, as a client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// `join`, `update` or `leave`.
    pub event: String,
    /// Its member id.
    pub member: String,
}

/// What a presence client holds and did.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Its member map (presence_list plus events).
    pub members: Members,
    /// Whether it is a member now.
    pub joined: bool,
    /// Every presence event applied, in order.
    pub log: Vec<Logged>,
    /// Connections opened after the first.
    pub reconnects: usize,
    /// Resubscriptions whose `presence_list` said `recovered: true`.
    pub recovered: usize,
    /// Resubscriptions answered with the whole list again.
    pub fresh_lists: usize,
}

/// Handle on a presence client task.
pub struct Client {
    /// Its member id (`USER/tab`).
    pub member: String,
    /// Its `info` as last set.
    pub info: Value,
    cmds: mpsc::UnboundedSender<Cmd>,
    task: JoinHandle<()>,
}

impl Client {
    /// Connects `user` (member id `USER/tab`) to `url`; it follows `channel` once joined.
    pub async fn start(user: &str, url: String, channel: &str, info: Value) -> Client {
        let token = token(user, &["room:*"]);
        let conn = Conn::open(&url, &token).await.expect("first connection");
        let (cmds, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            who: format!("{user} on {url}"),
            channel: channel.into(),
            url: Some(url),
            token,
            info: info.clone(),
            conn: Some(conn),
            pos: None,
            resync: false,
            waiters: Vec::new(),
            seen: Snapshot::default(),
            recent: Default::default(),
            more: false,
        };
        let task = tokio::spawn(actor.run(rx));
        Client { member: format!("{user}/tab"), info, cmds, task }
    }

    async fn ask(&self, make: impl FnOnce(oneshot::Sender<()>) -> Cmd) {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(make(tx)).unwrap_or_else(|_| panic!("{} ended", self.member));
        rx.await.unwrap_or_else(|_| panic!("{} ended", self.member));
    }

    /// Joins (and follows the member list).
    pub async fn join(&self) {
        self.ask(Cmd::Join).await
    }

    /// Leaves.
    pub async fn leave(&self) {
        self.ask(Cmd::Leave).await
    }

    /// Sets a new `info`.
    pub async fn update(&mut self, info: Value) {
        self.info = info.clone();
        self.ask(|tx| Cmd::Update(info, tx)).await
    }

    /// Where it reconnects after its connection ends (None: it stays away).
    pub fn route(&self, url: Option<String>) {
        let _ = self.cmds.send(Cmd::Route(url));
    }

    /// Waits until its member map satisfies `pred`, at most `within`; Err(snapshot) if not.
    pub async fn until(
        &self,
        within: Duration,
        pred: impl Fn(&Members) -> bool + Send + 'static,
    ) -> Result<Snapshot, Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Until(Box::new(pred), tx)).expect("client ended");
        match tokio::time::timeout(within, rx).await {
            Ok(s) => Ok(s.expect("client ended")),
            Err(_) => Err(self.snapshot().await),
        }
    }

    /// What it holds now.
    pub async fn snapshot(&self) -> Snapshot {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Snapshot(tx)).expect("client ended");
        rx.await.expect("client ended")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Actor {
    who: String,
    channel: String,
    url: Option<String>,
    token: String,
    info: Value,
    conn: Option<Conn>,
    /// The position of the last presence push applied: where a resume starts.
    pos: Option<Position>,
    /// The server ended the subscription (`resubscribe: true`): subscribe again.
    resync: bool,
    waiters: Vec<(Pred, oneshot::Sender<Snapshot>)>,
    seen: Snapshot,
    /// The last pushes, for failure messages.
    recent: std::collections::VecDeque<String>,
    /// A `presence_list` in parts is being read (the last part had `more: true`): the member
    /// map is not whole yet.
    more: bool,
}

/// The next message of `conn`, or never when there is no connection.
async fn recv(conn: &mut Option<Conn>) -> Option<ServerMessage> {
    match conn {
        Some(c) => c.rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => return,
                    Some(cmd) => self.handle(cmd).await,
                },
                m = recv(&mut self.conn) => match m {
                    Some(m) => self.apply(m),
                    None => self.reconnect().await,
                },
            }
            if self.resync {
                self.resync = false;
                if self.seen.joined {
                    self.realize().await;
                }
            }
            self.answer_waiters();
        }
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Join(done) => {
                assert!(!self.seen.joined, "{}: join twice", self.who);
                self.seen.joined = true;
                self.realize().await;
                let _ = done.send(());
            }
            Cmd::Leave(done) => {
                assert!(self.seen.joined, "{}: leave when not joined", self.who);
                self.seen.joined = false;
                let command = Command::Unsubscribe { channel: self.channel.clone(), sub: None };
                // A cut meanwhile leaves too: the reconnect does not subscribe.
                if let Some(r) = self.request(command).await {
                    r.unwrap_or_else(|e| panic!("{}: unsubscribe refused: {e}", self.who));
                }
                let _ = done.send(());
            }
            Cmd::Update(info, done) => {
                self.info = info.clone();
                let raw = serde_json::value::RawValue::from_string(info.to_string()).unwrap();
                let command = Command::PresenceUpdate { channel: self.channel.clone(), info: raw };
                // A cut meanwhile: the resubscribe carries the new info.
                if let Some(r) = self.request(command).await {
                    r.unwrap_or_else(|e| panic!("{}: presence_update refused: {e}", self.who));
                }
                let _ = done.send(());
            }
            Cmd::Route(url) => self.url = url,
            Cmd::Until(pred, tx) => self.waiters.push((pred, tx)),
            Cmd::Snapshot(tx) => {
                let _ = tx.send(self.seen.clone());
            }
        }
    }

    /// A request on the current connection; None when it ended (then reconnected, which
    /// realizes the wanted state).
    async fn request(&mut self, command: Command) -> Option<Result<Value, ErrorBody>> {
        let mut conn = self.conn.take()?;
        let mut pushed = Vec::new();
        let result = conn.request(command, &mut |m| pushed.push(m)).await;
        self.conn = Some(conn);
        for m in pushed {
            self.apply(m);
        }
        match result {
            Ok(r) => Some(r),
            Err(Closed) => {
                self.reconnect().await;
                None
            }
        }
    }

    /// Subscribes as a member with the current info, resuming the list from `pos`.
    async fn realize(&mut self) {
        let info = serde_json::value::RawValue::from_string(self.info.to_string()).unwrap();
        let command = Command::Subscribe {
            channel: self.channel.clone(),
            since: None,
            snapshot: false,
            view: Default::default(),
            presence: PresenceQuery {
                mode: Some(PresenceMode::Members),
                since: self.pos.clone(),
                member: Some("tab".into()),
                info: Some(info),
            },
            preview: None,
        };
        if let Some(r) = Box::pin(self.request(command)).await {
            r.unwrap_or_else(|e| panic!("{}: subscribe refused: {e}", self.who));
        }
    }

    /// After the connection ended: connect again (unless told to stay away) and subscribe
    /// again when a member.
    async fn reconnect(&mut self) {
        self.conn = None;
        self.more = false;
        let Some(url) = self.url.clone() else { return };
        let started = Instant::now();
        let conn = loop {
            match Conn::open(&url, &self.token).await {
                Ok(c) => break c,
                Err(Closed) => {
                    assert!(started.elapsed() < RECONNECT_WITHIN, "{}: cannot reconnect", self.who)
                }
            }
        };
        self.seen.reconnects += 1;
        self.conn = Some(conn);
        if self.seen.joined {
            Box::pin(self.realize()).await;
        }
    }

    fn check_position(&mut self, body: &Value, strictly_after: bool) {
        let epoch = body["epoch"].as_str().expect("epoch");
        let offset = body["offset"].as_u64().expect("offset");
        if let Some(p) = &self.pos
            && p.epoch == epoch
        {
            assert!(
                offset > p.offset || (!strictly_after && offset == p.offset),
                "{}: presence offset {offset} after {} (reconnects {}): {body}; recent: {:#?}",
                self.who,
                p.offset,
                self.seen.reconnects,
                self.recent
            );
        }
        self.pos = Some(Position { epoch: epoch.into(), offset });
    }

    fn apply(&mut self, m: ServerMessage) {
        let who = self.who.clone();
        if let ServerMessage::Event { body, .. } = &m {
            let mut b = body.clone();
            b.as_object_mut().unwrap().remove("members");
            self.recent.push_back(b.to_string());
            if self.recent.len() > 12 {
                self.recent.pop_front();
            }
        }
        match m {
            ServerMessage::Event { push, body } if push == "presence_list" => {
                if body["recovered"] == true {
                    assert!(self.pos.is_some(), "{who}: recovered without presence_since");
                    assert!(body.get("members").is_none(), "{who}: recovered with members");
                    self.seen.recovered += 1;
                    // The head says where the stream is; the missed changes follow it, from
                    // after `presence_since`, so the position moves with them.
                    let pos = self.pos.as_ref().unwrap();
                    assert_eq!(body["epoch"].as_str(), Some(pos.epoch.as_str()), "{who}: epoch");
                    assert!(body["offset"].as_u64().unwrap() >= pos.offset, "{who}: {body}");
                } else if self.more {
                    // The next part of a list: same position, more members.
                    let pos = self.pos.as_ref().expect("a list part after the first");
                    assert_eq!(body["epoch"].as_str(), Some(pos.epoch.as_str()), "{who}: part");
                    assert_eq!(body["offset"].as_u64(), Some(pos.offset), "{who}: part offset");
                    let part = body["members"].as_array().expect("members");
                    self.seen.members.extend(part.iter().map(member_entry));
                    self.more = body["more"] == true;
                } else {
                    if self.pos.is_some() {
                        self.seen.fresh_lists += 1;
                    }
                    self.seen.members = body["members"]
                        .as_array()
                        .expect("members")
                        .iter()
                        .map(member_entry)
                        .collect();
                    self.pos = None;
                    self.check_position(&body, false);
                    self.more = body["more"] == true;
                }
            }
            ServerMessage::Event { push, body } if push == "presence" => {
                self.check_position(&body, true);
                let (id, (user, info)) = member_entry(&body);
                let event = body["event"].as_str().expect("event").to_string();
                let had = self.seen.members.contains_key(&id);
                match event.as_str() {
                    "join" => {
                        assert!(!had, "{who}: join of {id}, which it holds");
                        self.seen.members.insert(id.clone(), (user, info));
                    }
                    "update" => {
                        assert!(had, "{who}: update of {id}, which it lacks");
                        self.seen.members.insert(id.clone(), (user, info));
                    }
                    "leave" => {
                        assert!(had, "{who}: leave of {id}, which it lacks");
                        self.seen.members.remove(&id);
                    }
                    other => panic!("{who}: presence event {other}"),
                }
                self.seen.log.push(Logged { event, member: id });
            }
            ServerMessage::Unsubscribe { resubscribe: true, .. } => self.resync = true,
            ServerMessage::Unsubscribe { .. } => panic!("{who}: unsubscribed for good"),
            ServerMessage::Event { .. } | ServerMessage::Publication(_) => {}
            ServerMessage::Disconnect { .. } => {}
            other => panic!("{who}: unexpected {other:?}"),
        }
    }

    fn answer_waiters(&mut self) {
        if self.more {
            return; // half a member list says nothing yet
        }
        let members = &self.seen.members;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.waiters).into_iter().partition(|(pred, _)| pred(members));
        self.waiters = waiting;
        for (_, tx) in ready {
            let _ = tx.send(self.seen.clone());
        }
    }
}
