//! Runs the real `herald` binary for integration tests.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// API key every test hub accepts.
pub const API_KEY: &str = "testkey";
/// HS256 secret every test hub verifies tokens with.
pub const TOKEN_SECRET: &str = "testsecret";

/// Config used by the tests: deep history so that resumes across cuts always recover, no
/// command rate limit, client publishes allowed, and a keyed namespace `kv`.
pub const TEST_CONFIG: &str = r#"
[limits]
commands_per_second = 0

[timeouts]
token_grace = "200ms"

[namespaces.default]
history_size = 20000
max_recover = 20000
client_publish = true

[namespaces.kv]
keyed = true
client_publish = true
history_size = 1000
"#;

/// The workspace's `target/debug/herald` (honours `CARGO_TARGET_DIR`).
pub fn herald_bin() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { workspace.join(t) })
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("debug").join(format!("herald{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "the herald binary is missing at {}: run `cargo build --bins` before `cargo test`",
        bin.display()
    );
    bin
}

/// A running hub process; killed on drop.
pub struct Hub {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique_dir() -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let dir =
        std::env::temp_dir().join(format!("herald-client-test-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Hub {
    /// Starts a hub on a random port.
    pub fn start() -> Hub {
        Hub::start_on(0)
    }

    /// Starts a hub on `port` (0: random), with 200 ms pings and a 1 s pong timeout.
    pub fn start_on(port: u16) -> Hub {
        let dir = unique_dir();
        let config = dir.join("herald.toml");
        std::fs::File::create(&config).unwrap().write_all(TEST_CONFIG.as_bytes()).unwrap();
        let mut child = Command::new(herald_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--api-key", API_KEY, "--token-secret", TOKEN_SECRET])
            .args(["--ping-interval", "200ms", "--pong-timeout", "1s"])
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let verbose = std::env::var_os("HERALD_TEST_LOG").is_some();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if verbose {
                    eprintln!("[hub] {line}");
                }
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr: String =
                            rest.chars().take_while(|c| !c.is_whitespace() && *c != '/').collect();
                        break addr.parse::<SocketAddr>().expect("listen address");
                    }
                    seen.push(line);
                }
                Err(_) => panic!(
                    "herald did not report `listening on`; stderr so far:\n{}",
                    seen.join("\n")
                ),
            }
        };
        // Keep draining stderr so the hub never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Hub { child, addr, dir }
    }

    /// `ws://` URL of the hub.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://` base URL of the hub's API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An API client with the test key.
    pub fn api(&self) -> herald_client::ApiClient {
        herald_client::ApiClient::new(&self.http_url(), Some(API_KEY.into())).unwrap()
    }

    /// SIGKILL: no shutdown, no close frames.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mints an HS256 token for `sub`, valid `ttl` from now, allowed every channel.
pub fn token(secret: &str, sub: &str, ttl: Duration) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        channels: [&'a str; 1],
        publish: [&'a str; 1],
    }
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + ttl.as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub, exp, channels: ["*"], publish: ["*"] },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token for the test hubs, one hour long.
pub fn good_token() -> String {
    token(TOKEN_SECRET, "tester", Duration::from_secs(3600))
}
