//! The Redis Streams bridge through the real binary (issue 15's fault tests), against a bus
//! `redis-server` started here on a free port (apart from the engine's):
//! - two nodes on the Redis engine both run the bridge; 20,000 entries are added while the node
//!   reading the stream is killed with kill -9 twice (the other takes over, claiming what the
//!   dead consumer had pending) and restarted: the channel holds every event exactly once, in
//!   stream order, with contiguous offsets;
//! - the bus server killed for 5 s mid-stream and started again on its append-only file:
//!   nothing lost, nothing duplicated, and `/ready`, `/api/info` and `/metrics` showed the
//!   bridge down meanwhile.

mod bridge_support;
mod support;

use bridge_support::{
    await_caught_up, await_events, five_second_outage, history, metrics, report, top, until,
};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::Hub;
use tokio::time::Instant;

/// The node's configuration: a Redis Streams bridge reading the stream `events`.
fn config(bus_url: &str, extra: &str) -> String {
    bridge_support::config(
        "redis_streams",
        &format!("url = \"{bus_url}\"\nstreams = [\"events\"]\n{extra}"),
    )
}

/// The bus: a `redis-server` on a free port keeping an fsync'd append-only file, so a kill -9
/// and a start again keep the streams and the group.
struct Bus {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Bus {
    fn start() -> Bus {
        let dir = std::env::temp_dir().join(format!(
            "herald-bus-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bus = Bus { port: herald_testkit::free_port(), dir, child: None };
        bus.start_again();
        bus
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn start_again(&mut self) {
        let child = Command::new("redis-server")
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // A process start has no event to wait on; poll its port.
        while !self.pings() {
            assert!(std::time::Instant::now() < deadline, "the bus did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it answers PING (not LOADING its append-only file).
    fn pings(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let mut line = String::new();
        conn.write_all(b"PING\r\n").is_ok()
            && BufReader::new(conn).read_line(&mut line).is_ok()
            && line == "+PONG\r\n"
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn client(&self) -> BusClient {
        BusClient { port: self.port }
    }
}

/// Adds entries to the bus over plain RESP.
#[derive(Clone, Copy)]
struct BusClient {
    port: u16,
}

impl BusClient {
    /// Sends `commands` pipelined (RESP), reading every reply line; panics on an error reply.
    fn run(&self, commands: &[Vec<String>]) {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut out = Vec::new();
        for command in commands {
            out.extend(format!("*{}\r\n", command.len()).bytes());
            for arg in command {
                out.extend(format!("${}\r\n{arg}\r\n", arg.len()).bytes());
            }
        }
        conn.write_all(&out).unwrap();
        let mut replies = BufReader::new(conn);
        for _ in commands {
            // XADD answers a bulk string: `$LEN` then the id.
            let mut line = String::new();
            replies.read_line(&mut line).unwrap();
            assert!(!line.starts_with('-'), "bus refused: {line}");
            if line.starts_with('$') {
                line.clear();
                replies.read_line(&mut line).unwrap();
            }
        }
    }

    /// Adds events `range` to the stream `events`, `chunk` per pipeline.
    fn add(&self, range: std::ops::RangeInclusive<u64>, chunk: usize) {
        let all: Vec<u64> = range.collect();
        for part in all.chunks(chunk) {
            let commands: Vec<Vec<String>> = part
                .iter()
                .map(|n| {
                    let payload = json!({"type": "DecisionMade", "session_id": "s", "n": n});
                    ["XADD", "events", "*", "payload", &payload.to_string()]
                        .map(str::to_string)
                        .to_vec()
                })
                .collect();
            self.run(&commands);
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_exactly_once_in_order_across_two_kill_9s_and_takeovers() {
    let bus = Bus::start();
    let engine = herald_testkit::RedisProcess::start();
    let engine_url = engine.url();
    let node = || {
        Hub::start_with(
            &config(&bus.url(), "lease_ttl = \"1s\""),
            &["--engine", "redis", "--redis-url", &engine_url],
        )
    };
    let mut nodes = [node(), node()];
    const N: u64 = 20_000;
    let started = Instant::now();
    // The bus fills while the reading node dies and comes back.
    let publisher = {
        let bus = bus.client();
        std::thread::spawn(move || bus.add(1..=N, 500))
    };
    for (kill_at, name) in [(4_000, "first"), (11_000, "second")] {
        until(
            Duration::from_secs(120),
            &format!("{kill_at} events before the {name} kill"),
            async || top(&nodes[0], "session:s").await >= kill_at,
        )
        .await;
        let mut reader = None;
        for (i, hub) in nodes.iter().enumerate() {
            if report(hub).await.is_some_and(|r| r["leader"] == true) {
                reader = Some(i);
            }
        }
        let reader = reader.expect("one node reads the stream");
        let [a, b] = nodes;
        nodes = if reader == 0 { [a.restart(), b] } else { [a, b.restart()] };
        eprintln!(
            "redis streams bridge: {name} kill -9 of node {reader} at {:?}",
            started.elapsed()
        );
    }
    publisher.join().unwrap();
    await_events(&nodes[0], N, Duration::from_secs(180)).await;
    let elapsed = started.elapsed();
    let got = history(&nodes[0], "session:s").await;
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    let ns: Vec<u64> = got.iter().map(|(_, n)| *n).collect();
    let first_gap = offsets.iter().zip(1..).find(|(o, i)| **o != *i);
    let first_disorder = ns.iter().zip(1..).find(|(n, i)| **n != *i);
    assert!(
        first_gap.is_none() && first_disorder.is_none() && got.len() as u64 == N,
        "{} publications; first offset out of place {first_gap:?}, first event out of place {first_disorder:?}",
        got.len()
    );
    eprintln!(
        "redis streams bridge: {N} events through two kill -9s in {elapsed:?} ({:.0} events/s overall)",
        N as f64 / elapsed.as_secs_f64()
    );
    let r = report(&nodes[0]).await.unwrap();
    assert_eq!(r["source"], "redis_streams");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_second_bus_outage_loses_nothing_duplicates_nothing_and_is_reported() {
    let mut bus = Bus::start();
    let hub = Hub::start(&config(&bus.url(), ""));
    const HALF: u64 = 1_500;
    bus.client().add(1..=HALF, 500);
    five_second_outage(&hub, &mut bus, |b| b.kill(), |b| b.start_again()).await;
    bus.client().add(HALF + 1..=2 * HALF, 500);
    await_caught_up(&hub, 2 * HALF).await;
    let got = history(&hub, "session:s").await;
    assert_eq!(got, (1..=2 * HALF).map(|n| (n, n)).collect::<Vec<_>>(), "each once, in order");
    let r = report(&hub).await.unwrap();
    assert_eq!(r["published"], 2 * HALF, "{r}");
    let metrics = metrics(&hub).await;
    assert!(metrics.contains("herald_bridge_up{bridge=\"decisions\"} 1"), "{metrics}");
}
