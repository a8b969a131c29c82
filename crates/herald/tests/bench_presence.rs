//! `herald bench presence` smoke test: a tiny run (20 members, half of them churned per
//! second) against a hub the bench starts. Checks that the figures parse, that presence events
//! arrived, that every member's count settled at N and that nothing was lost or refused; no
//! timing assertions (figures: docs/benchmarks.md).

use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["bench", "presence", "--duration", "2"])
        .args(args)
        .env_remove("HERALD_CONFIG")
        .output()
        .expect("run herald bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "herald bench presence {args:?} failed: {stderr}");
    assert!(!stderr.contains("herald bench:"), "{stderr}");
    stdout
}

#[test]
fn presence_churn_is_delivered_and_settles() {
    let stdout = bench(&["--json", "--members", "20", "--churn", "0.5"]);
    let line = stdout.lines().last().unwrap_or_default();
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(v["scenario"], "presence", "{v}");
    assert_eq!(v["clients"], 20, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    // 10 churns a second for 2 s: each a leave and a join seen by about 19 other members.
    let churned = v["events"].as_u64().expect("events");
    assert!(churned >= 10, "{v}");
    assert!(v["deliveries"].as_u64().unwrap() >= churned * 19, "{v}");
    for field in ["list_ms", "p50_ms", "p99_ms", "server_cpu_s", "bytes_per_conn"] {
        assert!(v[field].is_number(), "{field} in {v}");
    }
    assert_eq!(v["churn"], 0.5, "{v}");
}

#[test]
fn presence_markdown_row_parses() {
    let out = bench(&["--members", "10", "--churn", "0.2", "--header"]);
    let row = out.lines().last().expect("a row");
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(cells[..3], ["herald", "presence", "10"], "{row}");
    let deliveries_per_sec: f64 = cells[4].parse().expect("deliveries/s is a number");
    assert!(deliveries_per_sec > 0.0, "{row}");
    assert_eq!(cells.last(), Some(&"0"), "errors in {row}");
}
