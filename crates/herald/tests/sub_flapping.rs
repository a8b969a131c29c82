//! `herald sub` on a flapping network (issue 11 item 2): behind a proxy that cuts every
//! connection every 0.5 s for 60 s, while a backend publishes 20/s over HTTP, it prints every
//! publication exactly once, in order, with no resync. And `herald sub` takes the same `http://`
//! `HERALD_URL` as `herald publish` (issue 17).

mod support;

use herald_testkit::proxy::{Cut, Proxy};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use support::*;

/// Default namespace settings: the test must pass with the defaults users get.
const CONFIG: &str = "[namespaces.default]\n";

/// A running `herald sub`; its stdout lines (JSON) and stderr lines arrive on channels.
struct Sub {
    child: Child,
    stdout: mpsc::Receiver<Value>,
    stderr: mpsc::Receiver<String>,
}

impl Sub {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Sub {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("sub")
            .args(args)
            // Only what the test gives, not what the runner's environment holds.
            .env_remove("HERALD_URL")
            .env_remove("HERALD_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald sub");
        Sub {
            stdout: json_lines(child.stdout.take().unwrap()),
            stderr: lines(child.stderr.take().unwrap()),
            child,
        }
    }

    /// Waits for a stderr line containing `text`.
    fn wait_stderr(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(e) => panic!("herald sub never printed {text:?} on stderr: {e}"),
            }
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn json_lines(from: impl Read + Send + 'static) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    let raw = lines(from);
    std::thread::spawn(move || {
        for line in raw {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout is JSON lines only: {line}: {e}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_behind_a_proxy_cutting_every_half_second_gets_everything_without_resync() {
    const RATE: u64 = 20;
    const SECONDS: u64 = 60;
    const N: u64 = RATE * SECONDS;
    let hub = Hub::start(CONFIG);
    let proxy = Arc::new(Proxy::start(hub.addr).await);
    let proxy_http = proxy.ws_url().replace("ws://", "http://").replace("/ws", "");
    let token = token("flapper", &["*"]);
    // The `http://` URL, as `herald publish` takes it, and the default backoff and breaker.
    let sub = Sub::start(&["--url", &proxy_http, "--token", &token, "flap"], &[]);
    sub.wait_stderr("subscribed to flap", WAIT);
    let start = hub.publish("flap", json!({"i": "start"})).await["offset"].as_u64().unwrap();
    let first = sub.stdout.recv_timeout(WAIT).expect("the first publication");
    assert_eq!(first["offset"], start);

    let done = Arc::new(AtomicBool::new(false));
    let cutter = {
        let (proxy, done) = (proxy.clone(), done.clone());
        tokio::spawn(async move {
            let mut cuts = 0u32;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.tick().await;
            // Bounded: 60 s of cuts plus slack, whatever happens to the publisher.
            while !done.load(Ordering::SeqCst) && cuts < 2 * 70 {
                tick.tick().await;
                proxy.cut_all(if cuts.is_multiple_of(2) { Cut::Rst } else { Cut::Fin });
                cuts += 1;
            }
            cuts
        })
    };
    let publisher = {
        let api = reqwest::Client::new();
        let url = hub.http("/api/publish");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
            let mut offsets = Vec::with_capacity(N as usize);
            for i in 0..N {
                tick.tick().await;
                let reply: Value = api
                    .post(&url)
                    .header("x-api-key", API_KEY)
                    .json(&json!({"channel": "flap", "data": {"i": i}}))
                    .send()
                    .await
                    .expect("publish")
                    .json()
                    .await
                    .expect("publish reply");
                offsets.push(reply["offset"].as_u64().expect("published"));
            }
            offsets
        })
    };

    // Every publication, once, in order; a resync line (or anything else) fails the test.
    let reader = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(SECONDS + 30);
        let mut expected = start + 1;
        // The longest silence between two lines: the cost of the reconnect delays.
        let mut longest_stall = Duration::ZERO;
        let mut last_line = Instant::now();
        while expected <= start + N {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = sub.stdout.recv_timeout(left).unwrap_or_else(|_| {
                panic!("stalled at offset {expected} ({} of {N} received)", expected - start - 1)
            });
            assert!(line.get("resync").is_none(), "resync at offset {expected}: {line}");
            assert_eq!(line["offset"], expected, "in order, exactly once: {line}");
            assert_eq!(line["data"]["i"], expected - start - 1, "payload in order: {line}");
            longest_stall = longest_stall.max(last_line.elapsed());
            last_line = Instant::now();
            expected += 1;
        }
        // The retry numbers herald sub reported ("reconnecting (attempt N, …)").
        let attempts: Vec<u32> = std::iter::from_fn(|| sub.stderr.try_recv().ok())
            .filter_map(|l| {
                let rest = l.split("reconnecting (attempt ").nth(1)?;
                rest.split(',').next()?.parse().ok()
            })
            .collect();
        (sub, attempts, longest_stall)
    });
    let offsets = publisher.await.unwrap();
    done.store(true, Ordering::SeqCst);
    let cuts = cutter.await.unwrap();
    let (sub, attempts, longest_stall) = reader.await.unwrap();
    assert_eq!(
        offsets,
        (start + 1..=start + N).collect::<Vec<_>>(),
        "one publisher, dense offsets"
    );
    // Nothing more after the last one.
    if let Ok(extra) = sub.stdout.recv_timeout(Duration::from_millis(300)) {
        panic!("unexpected line after the last publication: {extra}");
    }
    assert!(cuts >= 100, "the network must actually flap ({cuts} cuts)");
    assert!(proxy.accepted() >= 60, "herald sub reconnected after the cuts ({})", proxy.accepted());
    let max_attempt = attempts.iter().max().copied().unwrap_or(0);
    let first = attempts.iter().filter(|a| **a == 1).count();
    eprintln!(
        "{N} publications, {cuts} cuts, {} connections; {} reconnects, {first} at attempt 1, \
         highest attempt {max_attempt}; longest stall {longest_stall:?}",
        proxy.accepted(),
        attempts.len()
    );
    // Every resumed connection resets the backoff: retries stay near the first (1 s ceiling; a
    // cut landing between the connect reply and the resubscribe replies may add one or two),
    // where a reset after 10 s up would climb to the 30 s cap.
    assert!(max_attempt <= 5, "the backoff grew under a flapping network: {attempts:?}");
    assert!(longest_stall < Duration::from_secs(6), "herald sub stalled {longest_stall:?}");
}

#[tokio::test]
async fn one_herald_url_serves_publish_and_sub() {
    let hub = Hub::start(CONFIG);
    let http = format!("http://{}", hub.addr);
    let token = token("url", &["*"]);
    let env = [("HERALD_URL", http.as_str()), ("HERALD_TOKEN", token.as_str())];
    let sub = Sub::start(&["urls"], &env);
    sub.wait_stderr("subscribed to urls", WAIT);
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["publish", "--api-key", API_KEY, "urls", r#"{"n":1}"#])
        .env("HERALD_URL", &http)
        .output()
        .expect("herald publish");
    assert!(out.status.success(), "publish: {}", String::from_utf8_lossy(&out.stderr));
    let published: Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = sub.stdout.recv_timeout(WAIT).expect("the publication");
    assert_eq!(line["offset"], published["offset"]);
    assert_eq!(line["data"], json!({"n": 1}));

    // The WebSocket endpoint itself keeps working, with a trailing slash on an http URL too.
    for url in [hub.ws_url(), format!("{http}/")] {
        let sub = Sub::start(&["--url", &url, "--token", &token, "urls"], &[]);
        sub.wait_stderr("subscribed to urls", WAIT);
    }

    // Not a hub URL: a clear error and a failing exit, not a retry loop.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["sub", "--url", "ftp://127.0.0.1:1", "urls"])
        .output()
        .expect("herald sub");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ftp://127.0.0.1:1"), "the error names the URL: {stderr}");
}
