//! Runs the real `herald` binary for integration tests.

use std::net::SocketAddr;
use std::time::Duration;

/// API key every test hub accepts.
pub const API_KEY: &str = "testkey";
/// HS256 secret every test hub verifies tokens with.
pub const TOKEN_SECRET: &str = "testsecret";

/// Config used by the tests: deep history so that resumes across cuts always recover, no
/// command rate limit, client publishes allowed, a keyed namespace `kv`, and `big` for
/// publications of several MB (sent in parts, protocol §18).
pub const TEST_CONFIG: &str = r#"
[limits]
commands_per_second = 0
max_api_body_bytes = 8388608
outbound_queue_bytes = 33554432

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

[namespaces.big]
max_message_bytes = 6291456
history_size = 100
max_recover = 100
"#;

/// A running hub process; killed on drop.
pub struct Hub {
    process: herald_testkit::HeraldProcess,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Hub {
    /// Starts a hub on a random port, with 200 ms pings and a 1 s pong timeout.
    pub fn start() -> Hub {
        let process = herald_testkit::HeraldProcess::start(
            &herald_testkit::herald_bin(),
            TEST_CONFIG,
            // Short heartbeats so liveness tests finish quickly.
            &[
                "--api-key",
                API_KEY,
                "--token-secret",
                TOKEN_SECRET,
                "--ping-interval",
                "200ms",
                "--pong-timeout",
                "1s",
            ],
        );
        Hub { addr: process.addr, process }
    }

    /// kill -9, then start again on the same port: a new epoch for every stream.
    pub fn restart(&mut self) {
        self.process.restart();
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
}

/// Mints an HS256 token for `sub`, valid `ttl` from now, allowed every channel.
pub fn token(secret: &str, sub: &str, ttl: Duration) -> String {
    let exp = herald_testkit::unix_now() + ttl.as_secs();
    herald_testkit::hs256_token(
        secret,
        &serde_json::json!({"sub": sub, "exp": exp, "channels": ["*"], "publish": ["*"]}),
    )
}

/// A valid token for the test hubs, one hour long.
pub fn good_token() -> String {
    token(TOKEN_SECRET, "tester", Duration::from_secs(3600))
}
