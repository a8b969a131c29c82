//! `herald bench` smoke test: every scenario at a tiny size against a server the bench starts
//! itself. Checks that the JSON has its fields and that nothing was lost; no timing assertions
//! (figures come from the benchmark, docs/benchmarks.md).

use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("bench")
        .args(args)
        .args(["--json", "--duration", "20"])
        .env_remove("HERALD_CONFIG")
        .output()
        .expect("run herald bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "herald bench {args:?} failed: {stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"))
}

fn check(v: &Value, scenario: &str) {
    assert_eq!(v["scenario"], scenario);
    assert_eq!(v["server"], "herald");
    for field in [
        "deliveries_per_sec",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "server_cpu_s",
        "server_rss_bytes",
        "bytes_per_conn",
        "conns_per_sec",
        "errors",
    ] {
        assert!(v.get(field).is_some(), "{scenario}: field {field} missing in {v}");
    }
    assert_eq!(v["errors"], 0, "{scenario}: {v}");
    assert!(v["server_cpu_s"].is_number(), "{scenario}: server CPU from /proc: {v}");
    assert!(v["server_rss_bytes"].as_u64().unwrap_or(0) > 0, "{scenario}: {v}");
}

#[test]
fn fanout_delivers_everything() {
    let v = bench(&["fanout", "-n", "20", "-e", "50"]);
    check(&v, "fanout");
    assert_eq!(v["deliveries"], 20 * 50);
    assert!(v["p99_ms"].is_number());
}

#[test]
fn rooms_delivers_everything() {
    let v = bench(&["rooms", "-n", "20", "-e", "100"]);
    check(&v, "rooms");
    assert_eq!(v["deliveries"], 100);
}

#[test]
fn rooms_over_http_delivers_everything() {
    let v = bench(&["rooms", "-n", "20", "-e", "100", "--http"]);
    check(&v, "rooms");
    assert_eq!((v["publish"].as_str(), v["deliveries"].as_u64()), (Some("http"), Some(100)));
    // Through the batch route, with a last request shorter than the batch.
    let v = bench(&["rooms", "-n", "20", "-e", "105", "--http", "--batch", "10"]);
    check(&v, "rooms");
    assert_eq!(v["publish"], "http batch 10");
    assert_eq!(v["deliveries"], 105);
    // Pipelined, one event and then three per request, with a last round shorter than the
    // pipeline and a last request shorter than the batch.
    let v = bench(&["rooms", "-n", "20", "-e", "101", "--http", "--http-pipeline", "8"]);
    check(&v, "rooms");
    assert_eq!(
        (v["publish"].as_str(), v["deliveries"].as_u64()),
        (Some("http pipeline 8"), Some(101))
    );
    let args = ["rooms", "-n", "20", "-e", "101", "--http", "--http-pipeline", "4", "--batch", "3"];
    let v = bench(&args);
    check(&v, "rooms");
    assert_eq!(
        (v["publish"].as_str(), v["deliveries"].as_u64()),
        (Some("http batch 3 pipeline 4"), Some(101))
    );
}

#[test]
fn connect_and_idle_open_every_connection() {
    let v = bench(&["connect", "-n", "50"]);
    check(&v, "connect");
    assert!(v["conns_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(v["conns_per_cpu_s"].as_f64().unwrap_or(0.0) > 0.0, "per server CPU-second: {v}");
    let v = bench(&["idle", "-n", "50"]);
    check(&v, "idle");
    assert!(v["bytes_per_conn"].is_number());
    assert!(v["marginal_bytes_per_conn"].is_number(), "idle measures the second half alone too");
}

#[test]
fn floor_reads_back_every_write() {
    let v = bench(&["floor", "-n", "20", "-e", "1000"]);
    assert_eq!(v["scenario"], "floor");
    assert_eq!((v["events"].as_u64(), v["deliveries"].as_u64()), (Some(1000), Some(1000)), "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["server_cpu_s"].as_f64().unwrap_or(0.0) > 0.0, "the writer's CPU: {v}");
    assert_eq!(v["bytes_per_delivery"], 152.0, "a v2 rooms delivery of 100 bytes: {v}");
}

#[test]
fn pin_gives_the_load_generator_one_worker() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("--pin needs 2 CPUs; skipped");
        return;
    }
    let v = bench(&["rooms", "-n", "20", "-e", "100", "--pin"]);
    check(&v, "rooms");
    assert_eq!((v["pin"].as_bool(), v["deliveries"].as_u64()), (Some(true), Some(100)));
    assert_eq!(v["load_workers"], 1, "the runtime is built after pinning: {v}");
    let v = bench(&["floor", "-n", "20", "-e", "200", "--pin"]);
    assert_eq!((v["deliveries"].as_u64(), v["load_workers"].as_u64()), (Some(200), Some(1)));
}

#[test]
fn resume_recovers_everything() {
    let v = bench(&["resume", "-n", "10", "-e", "20"]);
    check(&v, "resume");
    assert_eq!(v["deliveries"], 10 * 20);
    assert!(v["recovered_ms"].is_number());
}

/// On a `redis-server` and on a Redis Cluster the bench starts itself, with two nodes: the
/// deliveries cross Redis, and Redis CPU is reported apart.
#[test]
fn rooms_on_redis_and_on_a_cluster_deliver_everything() {
    let v = bench(&["rooms", "-n", "20", "-e", "100", "--redis", "--nodes", "2"]);
    check(&v, "rooms");
    assert_eq!((v["engine"].as_str(), v["nodes"].as_u64()), (Some("redis"), Some(2)));
    assert_eq!(v["deliveries"], 100);
    assert!(v["redis_cpu_s"].is_number(), "{v}");
    let v = bench(&["rooms", "-n", "20", "-e", "100", "--redis-cluster", "3", "--nodes", "2"]);
    check(&v, "rooms");
    assert_eq!((v["engine"].as_str(), v["nodes"].as_u64()), (Some("redis-cluster"), Some(2)));
    assert_eq!(v["deliveries"], 100);
    assert!(v["redis_cpu_s"].is_number(), "{v}");
}
