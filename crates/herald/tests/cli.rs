//! The CLI contract: `herald token`, `herald publish`, `herald sub --since/--snapshot`.

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use support::*;

const CONFIG: &str = "[namespaces.default]\n[namespaces.board]\nkeyed = true\n";

fn herald(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald")).args(args).output().expect("run herald");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn publish(hub: &Hub, extra: &[&str]) -> Value {
    let url = format!("http://{}", hub.addr);
    let mut args = vec!["publish", "--url", &url, "--api-key", API_KEY];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = herald(&args);
    assert!(ok, "publish failed: {stderr}");
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(stdout.trim()).expect("JSON reply")
}

/// A running `herald sub` whose stdout lines arrive on a channel.
struct Sub {
    child: std::process::Child,
    lines: mpsc::Receiver<Value>,
}

impl Sub {
    fn start(hub: &Hub, args: &[&str]) -> Sub {
        let token = token("cli", &["*"]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["sub", "--url", &hub.ws_url(), "--token", &token])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("herald sub");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout is JSON lines only: {line}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Sub { child, lines }
    }

    fn next(&self) -> Value {
        self.lines.recv_timeout(WAIT).expect("a line from herald sub")
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn token_publish_and_sub() {
    let (ok, token, _) = herald(&[
        "token",
        "--secret",
        SECRET,
        "--sub",
        "u1",
        "--channels",
        "a:*,b",
        "--ttl",
        "10m",
    ]);
    assert!(ok);
    let claims = herald_server::auth::Verifier::new(&herald_server::config::AuthConfig {
        token_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .unwrap()
    .verify(token.trim())
    .await
    .expect("valid token");
    assert_eq!(
        (claims.user.as_str(), claims.channels.clone()),
        ("u1", vec!["a:*".to_string(), "b".to_string()])
    );

    let hub = Hub::start(CONFIG);
    let first = publish(&hub, &["news", r#"{"n":1}"#, "--type", "headline"]);
    assert_eq!(first["offset"], 1);
    let epoch = first["epoch"].as_str().unwrap().to_string();
    for n in 2..=4 {
        publish(&hub, &["news", &format!(r#"{{"n":{n}}}"#)]);
    }
    // Resume from offset 1: exactly 2, 3, 4, then live.
    let since = format!("{epoch}:1");
    let sub = Sub::start(&hub, &["--since", &since, "news"]);
    for n in 2..=4 {
        let p = sub.next();
        assert_eq!((p["offset"].as_u64(), p["data"]["n"].as_u64()), (Some(n), Some(n)), "{p}");
    }
    let live = publish(&hub, &["news", r#"{"n":5}"#]);
    assert_eq!(sub.next()["offset"], live["offset"]);

    // Keyed: --key/--op, and --snapshot prints the records first.
    publish(
        &hub,
        &["board:1", r#"{"title":"a","status":"todo"}"#, "--key", "t1", "--op", "upsert"],
    );
    publish(&hub, &["board:1", r#"{"status":"done"}"#, "--key", "t1", "--op", "merge"]);
    publish(&hub, &["board:1", r#"{"title":"b"}"#, "--key", "t2"]);
    let deleted = publish(&hub, &["board:1", "null", "--key", "t2", "--op", "delete"]);
    assert_eq!(deleted["offset"], 4);
    let snap = Sub::start(&hub, &["--snapshot", "board:1"]);
    let line = snap.next();
    assert_eq!(line["offset"], 4);
    assert_eq!(
        line["snapshot"],
        json!([{"key": "t1", "value": {"title": "a", "status": "done"}, "offset": 2}])
    );
    let (ok, _, stderr) = herald(&[
        "publish",
        "--url",
        &format!("http://{}", hub.addr),
        "--api-key",
        "wrong",
        "news",
        "1",
    ]);
    assert!(
        !ok && stderr.contains("101"),
        "a refused publish exits non-zero with the code: {stderr}"
    );
}

#[test]
fn serve_refuses_a_bad_configuration_before_binding() {
    let (ok, _, stderr) = herald(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--ping-interval",
        "5s",
        "--pong-timeout",
        "5s",
    ]);
    assert!(!ok);
    assert!(stderr.contains("pong_timeout"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nunknown_key = 1\n").unwrap();
    let (ok, _, stderr) = herald(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("unknown_key"), "{stderr}");
}
