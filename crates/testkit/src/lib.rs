//! What Herald's integration tests share: a real `herald serve` process on 127.0.0.1 (started,
//! killed, restarted on the same port), a real `redis-server` process on a free port, and token
//! minting. Each suite keeps its own protocol client on top.
//!
//! Set `HERALD_TEST_LOG=1` to see every process's stderr.
//!
//! # Layout
//!
//! - this file: the `herald` and `redis-server` processes, free ports, tokens.
//! - [`module_graph`]: a crate's module graph read from its sources, for the tests that keep
//!   dependencies pointing one way.
//! - [`proxy`]: a loopback TCP proxy that injects faults (cuts, blackholes, delays, refused
//!   upgrades) between clients and a hub.

pub mod module_graph;
pub mod proxy;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a process may take to start.
const START_WITHIN: Duration = Duration::from_secs(20);

/// The workspace's `herald` binary: `$HERALD_BIN`, else `herald` in the profile directory of the
/// running test (`target/debug/deps/test-…` → `target/debug/herald`, whatever the target dir).
/// Integration tests outside the `herald` crate cannot use `CARGO_BIN_EXE_herald`, so the test
/// command builds it first (`cargo build --bins`).
pub fn herald_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("HERALD_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join(format!("herald{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "the herald binary is missing at {}: run `cargo build --bins` before `cargo test`",
        bin.display()
    );
    bin
}

/// A fresh directory under the system temp dir, removed with its owner.
fn unique_dir(what: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let dir = std::env::temp_dir().join(format!("herald-{what}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `herald serve`; killed on drop.
pub struct HeraldProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every stderr line so far (log lines, audit events).
    pub log: Arc<Mutex<Vec<String>>>,
    /// Binary, to restart.
    bin: PathBuf,
    /// Holds `herald.toml`.
    dir: PathBuf,
    /// Flags after `serve` (without `--listen` and `--config`), to restart.
    args: Vec<String>,
}

impl HeraldProcess {
    /// Starts `bin serve --listen 127.0.0.1:0 --config <config> <args>` and waits for its
    /// `listening on http://ADDR` line.
    pub fn start(bin: &Path, config: &str, args: &[&str]) -> HeraldProcess {
        let dir = unique_dir("hub");
        std::fs::write(dir.join("herald.toml"), config).expect("write config");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, addr, log) = spawn(bin, &dir, &args, "127.0.0.1:0");
        HeraldProcess { child, addr, log, bin: bin.to_path_buf(), dir, args }
    }

    /// `ws://ADDR/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://ADDR`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no close frames.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().expect("wait for herald")
    }

    /// kill -9, then starts again on the same address with the same configuration (memory
    /// engine: every stream gets a new epoch).
    pub fn restart(&mut self) {
        self.kill();
        let (child, addr, log) = spawn(&self.bin, &self.dir, &self.args, &self.addr.to_string());
        (self.child, self.addr, self.log) = (child, addr, log);
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(
    bin: &Path,
    dir: &Path,
    args: &[String],
    listen: &str,
) -> (Child, SocketAddr, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", listen, "--config"])
        .arg(dir.join("herald.toml"))
        .args(args)
        .env("HERALD_LOG", std::env::var("HERALD_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = log.clone();
    // Keeps draining stderr for the process's whole life, so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let verbose = std::env::var_os("HERALD_TEST_LOG").is_some();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if verbose {
                eprintln!("[herald] {line}");
            }
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String =
                    rest.chars().take_while(|c| !c.is_whitespace() && *c != '/').collect();
                let _ = tx.send(addr);
            }
            sink.lock().unwrap().push(line);
        }
    });
    match rx.recv_timeout(START_WITHIN) {
        Ok(addr) => (child, addr.parse().expect("listen address"), log),
        Err(_) => {
            let _ = child.kill();
            panic!("herald did not start; stderr:\n{}", log.lock().unwrap().join("\n"));
        }
    }
}

/// A `redis-server` process on a free port, keeping nothing on disk; killed on drop.
pub struct RedisProcess {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts one and waits until it answers PING.
    pub fn start() -> RedisProcess {
        let mut r = RedisProcess { port: free_port(), child: None };
        r.spawn();
        r
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): `apt-get install -y redis-server` \
                     (scripts/test.sh installs it)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_WITHIN;
        while !self.pings() {
            assert!(Instant::now() < deadline, "redis-server on {} did not answer PING", self.port);
            // A process start has no event to wait on; poll its port.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it answers PING right now.
    pub fn pings(&self) -> bool {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// SIGKILL: the data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HS256 token with these claims.
pub fn hs256_token(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("claims encode")
}

/// Seconds since the Unix epoch, for `exp` claims.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}
