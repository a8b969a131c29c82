//! A loopback TCP proxy that injects faults between the client and the hub: cut every connection
//! (RST or FIN), blackhole traffic without closing, delay it, and refuse WebSocket upgrades.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How [`Proxy::cut_all`] ends connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Abortive close: `SO_LINGER` 0, the peers see a reset.
    Rst,
    /// Orderly close: the peers see end of stream.
    Fin,
}

#[derive(Debug, Clone)]
struct Control {
    blackhole: bool,
    delay: Duration,
    cut_generation: u64,
    cut: Cut,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    control: watch::Sender<Control>,
    accepted: AtomicUsize,
    active: AtomicUsize,
    accept_times: Mutex<Vec<Instant>>,
    /// Answer upgrade requests with 403 (see [`Proxy::refuse_upgrades`]).
    refuse_upgrades: AtomicBool,
    /// Upgrade requests answered with 403 so far (a watch, so tests can wait for the next).
    refused: watch::Sender<usize>,
}

/// The proxy; stops accepting when dropped (open connections end at their next fault or EOF).
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all(Cut::Rst);
    }
}

impl Proxy {
    /// Listens on 127.0.0.1 (random port) and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (control, _) = watch::channel(Control {
            blackhole: false,
            delay: Duration::ZERO,
            cut_generation: 0,
            cut: Cut::Rst,
        });
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            control,
            accepted: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            accept_times: Mutex::new(Vec::new()),
            refuse_upgrades: AtomicBool::new(false),
            refused: watch::channel(0).0,
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                accept_shared.accepted.fetch_add(1, Ordering::SeqCst);
                accept_shared.accept_times.lock().unwrap().push(Instant::now());
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    shared.active.fetch_add(1, Ordering::SeqCst);
                    pipe(socket, &shared).await;
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Proxy { addr, shared, task }
    }

    /// `ws://` URL of the hub through the proxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Points new connections at another upstream.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    /// Ends every open connection (new ones are unaffected).
    pub fn cut_all(&self, cut: Cut) {
        self.shared.control.send_modify(|c| {
            c.cut_generation += 1;
            c.cut = cut;
        });
    }

    /// Stops (or resumes) forwarding bytes in both directions without closing anything, for
    /// open and new connections alike.
    pub fn blackhole(&self, on: bool) {
        self.shared.control.send_modify(|c| c.blackhole = on);
    }

    /// Delays every forwarded chunk by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.control.send_modify(|c| c.delay = delay);
    }

    /// While on, a new connection whose first request carries `Upgrade: websocket` is answered
    /// `HTTP/1.1 403 Forbidden` and closed (a proxy that blocks WebSocket); other requests are
    /// forwarded. Only the first request of a connection is looked at: a WebSocket client opens
    /// a connection for its upgrade, and after it the bytes are frames.
    pub fn refuse_upgrades(&self, on: bool) {
        self.shared.refuse_upgrades.store(on, Ordering::SeqCst);
    }

    /// Upgrade requests refused so far.
    pub fn refused(&self) -> usize {
        *self.shared.refused.borrow()
    }

    /// Waits until more than `n` upgrade requests were refused; panics after `timeout`.
    pub async fn wait_refused_above(&self, n: usize, timeout: Duration) -> usize {
        let mut rx = self.shared.refused.subscribe();
        let wait = rx.wait_for(|&count| count > n);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(count)) => *count,
            _ => panic!("no upgrade refused past {n} within {timeout:?}"),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// When each connection was accepted.
    pub fn accept_times(&self) -> Vec<Instant> {
        self.shared.accept_times.lock().unwrap().clone()
    }
}

fn abort(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Reads the first request head (up to the blank line, 64 KiB at most); `None` when the client
/// closed first.
async fn read_head(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        let n = client.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(head)
}

/// Whether a request head asks for a WebSocket upgrade.
fn is_upgrade(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).to_ascii_lowercase().lines().any(|line| {
        line.split_once(':').is_some_and(|(k, v)| k.trim() == "upgrade" && v.trim() == "websocket")
    })
}

async fn pipe(mut client: TcpStream, shared: &Shared) {
    let mut control = shared.control.subscribe();
    let generation = control.borrow().cut_generation;
    // Bytes read to look at the first request, forwarded once upstream is connected.
    let mut first = Vec::new();
    if shared.refuse_upgrades.load(Ordering::SeqCst) {
        let Some(head) = read_head(&mut client).await else { return };
        if shared.refuse_upgrades.load(Ordering::SeqCst) && is_upgrade(&head) {
            shared.refused.send_modify(|n| *n += 1);
            let answer = "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            let _ = client.write_all(answer.as_bytes()).await;
            let _ = client.shutdown().await;
            return;
        }
        first = head;
    }
    let upstream = *shared.upstream.lock().unwrap();
    let mut server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => {
            // Upstream down: refuse the client the way a stopped hub would.
            abort(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    if !first.is_empty() && server.write_all(&first).await.is_err() {
        return;
    }
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        let c = control.borrow_and_update().clone();
        if c.cut_generation != generation {
            match c.cut {
                Cut::Rst => {
                    abort(&client);
                    abort(&server);
                }
                Cut::Fin => {
                    let _ = client.shutdown().await;
                    let _ = server.shutdown().await;
                }
            }
            return;
        }
        let flowing = !c.blackhole;
        tokio::select! {
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            n = client.read(&mut up), if flowing => {
                let Ok(n @ 1..) = n else { return };
                if !c.delay.is_zero() {
                    tokio::time::sleep(c.delay).await;
                }
                if server.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            n = server.read(&mut down), if flowing => {
                let Ok(n @ 1..) = n else { return };
                if !c.delay.is_zero() {
                    tokio::time::sleep(c.delay).await;
                }
                if client.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
