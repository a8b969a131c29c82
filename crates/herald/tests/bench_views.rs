//! `herald bench views` smoke test: tiny runs (indexed and unindexed filters) against a hub the
//! bench starts with the kanban spec. Checks that the figures parse, that view events arrived
//! and that none was lost or refused; no timing assertions (figures: docs/benchmarks.md).

use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["bench", "views", "--duration", "20"])
        .args(args)
        .env_remove("HERALD_CONFIG")
        .output()
        .expect("run herald bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "herald bench views {args:?} failed: {stderr}");
    assert!(!stderr.contains("refused"), "{stderr}");
    stdout
}

fn json(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let stdout = bench(&all);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn check(v: &Value, writes: u64) {
    assert_eq!(v["scenario"], "views", "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["events"], writes, "{v}");
    // Two subscribers per assignee: every write is a delete in two views and an insert in two.
    assert_eq!(v["deliveries"], 4 * writes, "{v}");
    for field in ["deliveries_per_sec", "p50_ms", "p99_ms", "server_cpu_s"] {
        assert!(v[field].as_f64().is_some_and(|x| x >= 0.0), "{field} in {v}");
    }
    assert!(v["deliveries_per_cpu_s"].is_number() || v["server_cpu_s"] == 0.0, "{v}");
}

#[test]
fn views_deliver_every_move() {
    let small = ["--subscribers", "20", "--assignees", "10", "--records", "30", "-e", "100"];
    let v = json(&small);
    check(&v, 100);
    assert_eq!(v["unindexed"], false);
    let mut unindexed = small.to_vec();
    unindexed.push("--unindexed");
    let v = json(&unindexed);
    check(&v, 100);
    assert_eq!(v["unindexed"], true);
}

#[test]
fn views_markdown_row_parses() {
    let out = bench(&["-n", "10", "--records", "10", "-e", "50", "--header"]);
    let row = out.lines().last().expect("a row");
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(cells[..4], ["herald", "views", "10", "50"], "{row}");
    let deliveries_per_sec: f64 = cells[4].parse().expect("deliveries/s is a number");
    assert!(deliveries_per_sec > 0.0, "{row}");
    for (i, c) in cells[5..7].iter().enumerate() {
        c.parse::<f64>().unwrap_or_else(|_| panic!("latency column {i} {c:?} in {row}"));
    }
    assert_eq!(cells.last(), Some(&"0"), "errors in {row}");
}
