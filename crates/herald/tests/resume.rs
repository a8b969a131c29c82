//! Positions, resume and keyed state where only the real binary over WebSocket can show them:
//! one end-to-end resume, a restart (new epochs), the session's snapshot-then-stream merge under
//! concurrent keyed publishes, and the configured memory budget as `/metrics` reports it.
//! What every engine must do (offsets, resume verdicts, history pages, keyed state and limits,
//! idempotency, reads that create nothing) is in the engine conformance suite
//! (`crates/server/tests/engine_conformance.rs`, memory and Redis); the protocol's wire form of
//! it in `conformance.rs`.

mod support;

use herald_protocol::command::Command;
use herald_protocol::{Op, Position, ServerMessage};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use support::*;

const CONFIG: &str = r#"
[namespaces.default]
[namespaces.feed]
history_size = 100
max_recover = 60
[namespaces.board]
keyed = true
history_size = 100000
max_recover = 100000
client_publish = true
[limits]
commands_per_second = 0
"#;

fn since(reply: &Value) -> Position {
    Position {
        epoch: reply["epoch"].as_str().unwrap().into(),
        offset: reply["offset"].as_u64().unwrap(),
    }
}

async fn resume(ws: &mut Ws, channel: &str, pos: Position, snapshot: bool) -> Value {
    ws.request(Command::Subscribe {
        channel: channel.into(),
        since: Some(pos),
        snapshot,
        view: Default::default(),
        presence: Default::default(),
        preview: None,
    })
    .await
    .expect("resume")
}

#[tokio::test]
async fn resume_receives_exactly_what_was_missed_then_live() {
    let hub = Hub::start(CONFIG);
    let mut ws = hub.client("a", &["feed:*"]).await;
    let first = ws.subscribe("feed:1").await;
    for i in 1..=5 {
        hub.publish("feed:1", json!(i)).await;
    }
    let mut last = None;
    for i in 1..=5 {
        let p = ws.next_pub().await;
        assert_eq!(p.offset, i);
        last = Some(p.position());
    }
    assert_eq!(last.as_ref().unwrap().epoch, first["epoch"].as_str().unwrap());
    drop(ws);
    for i in 6..=55 {
        hub.publish("feed:1", json!(i)).await;
    }
    let mut ws = hub.client("a", &["feed:*"]).await;
    let reply = resume(&mut ws, "feed:1", last.unwrap(), false).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let pubs = reply["publications"].as_array().unwrap();
    let offsets: Vec<u64> = pubs.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (6..=55).collect::<Vec<_>>(), "exactly the 50 missed, in order");
    assert_eq!(reply["offset"], 55);
    hub.publish("feed:1", json!("live")).await;
    let p = ws.next_pub().await;
    assert_eq!((p.offset, p.data.get()), (56, r#""live""#));
}

#[tokio::test]
async fn restart_gives_epoch_changed() {
    let hub = Hub::start(CONFIG);
    let mut ws = hub.client("a", &["*"]).await;
    ws.subscribe("feed:r").await;
    hub.publish("feed:r", json!(1)).await;
    let pos = ws.next_pub().await.position();
    drop(ws);
    let hub = hub.restart();
    let mut ws = hub.client("a", &["*"]).await;
    let reply = resume(&mut ws, "feed:r", pos.clone(), false).await;
    assert_eq!(reply["recovered"], false);
    assert_eq!(reply["reason"], "epoch_changed");
    assert_ne!(reply["epoch"].as_str().unwrap(), pos.epoch);
}

/// A model of a keyed channel's state, built from snapshots and publications.
#[derive(Default, Debug, PartialEq)]
struct Model(BTreeMap<String, Value>);

impl Model {
    fn from_snapshot(records: &Value) -> Model {
        Model(
            records
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["key"].as_str().unwrap().to_string(), r["value"].clone()))
                .collect(),
        )
    }

    fn apply(&mut self, key: &str, op: Op, data: Value) {
        match op {
            Op::Upsert => {
                self.0.insert(key.into(), data);
            }
            Op::Delete => {
                self.0.remove(key);
            }
            Op::Merge => {
                let entry = self.0.entry(key.into()).or_insert(Value::Null);
                json_merge(entry, &data);
            }
        }
    }
}

fn json_merge(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let t = target.as_object_mut().unwrap();
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

/// One publisher mutates 1,000 keys continuously while 50 clients subscribe with a snapshot at
/// random moments; each client's snapshot plus its stream must equal the final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammer_snapshots_plus_stream_equal_final_state() {
    let hub = std::sync::Arc::new(Hub::start(CONFIG));
    const TOTAL: u64 = 3000;
    // Client `c` subscribes (with a snapshot) once the publisher is at c * 60: moments spread
    // over the run, while publishing goes on.
    let spawn_client = |c: u64, hub: std::sync::Arc<Hub>| {
        tokio::spawn(async move {
            let mut ws = hub.client(&format!("c{c}"), &["*"]).await;
            let reply = ws
                .request(Command::Subscribe {
                    channel: "board:h".into(),
                    since: None,
                    snapshot: true,
                    view: Default::default(),
                    presence: Default::default(),
                    preview: None,
                })
                .await
                .unwrap();
            let mut model = Model::from_snapshot(&reply["snapshot"]);
            let mut offset = reply["offset"].as_u64().unwrap();
            while offset < TOTAL {
                let next = tokio::time::timeout(std::time::Duration::from_secs(8), ws.next()).await;
                let next =
                    next.unwrap_or_else(|_| panic!("client {c} stuck at {offset}; reply {reply}"));
                match next {
                    Some(ServerMessage::Publication(p)) => {
                        assert_eq!(
                            p.offset,
                            offset + 1,
                            "client {c}: contiguous after its snapshot"
                        );
                        offset = p.offset;
                        let data: Value = serde_json::from_str(p.data.get()).unwrap();
                        model.apply(p.key.as_deref().unwrap(), p.op.unwrap(), data);
                    }
                    other => panic!("client {c}: {other:?}"),
                }
            }
            model
        })
    };
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut ws = hub.client("pub", &["*"]).await;
            let mut rng = 0x9E3779B97F4A7C15u64;
            let mut ids = Vec::new();
            let mut clients = Vec::new();
            for i in 0..TOTAL {
                if i % 60 == 0 && clients.len() < 50 {
                    clients.push(spawn_client(clients.len() as u64, hub.clone()));
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let key = format!("k{}", rng % 1000);
                let (op, data) = match rng % 3 {
                    0 => (Op::Upsert, json!({"v": i, "tag": key})),
                    1 => (Op::Merge, json!({"m": i, "tag": null})),
                    _ => (Op::Delete, Value::Null),
                };
                let cmd = Command::Publish(herald_protocol::command::PublishCommand {
                    channel: "board:h".into(),
                    kind: Some("task".into()),
                    data: serde_json::value::RawValue::from_string(data.to_string()).unwrap(),
                    key: Some(key),
                    op: Some(op),
                    idempotency_key: None,
                    correlation_id: None,
                });
                ids.push(ws.send(cmd).await);
                // Keep at most 16 publishes in flight.
                if ids.len() >= 16 {
                    for id in ids.drain(..) {
                        ws.reply(id).await.expect("publish");
                    }
                }
            }
            for id in ids {
                ws.reply(id).await.expect("publish");
            }
            clients
        })
    };
    let clients = publisher.await.unwrap();
    assert_eq!(clients.len(), 50);
    let (_, state) = hub.api("GET", "/api/state?channel=board:h", None).await;
    assert_eq!(state["offset"], TOTAL);
    let truth = Model::from_snapshot(&state["records"]);
    for (i, c) in clients.into_iter().enumerate() {
        let model = c.await.unwrap();
        assert_eq!(model, truth, "client {i}");
    }
}

/// The hub-wide memory budget: publishing far past it keeps the engine's accounting under it,
/// the oldest channel's history goes first while a newer channel keeps all of its own, and a
/// resume from a dropped position is told `history_trimmed` (one from a kept position recovers).
#[tokio::test]
async fn memory_budget_drops_the_oldest_history_of_the_hub_first() {
    const BUDGET: u64 = 200_000;
    let hub = Hub::start(&format!(
        "[engine]\nmemory_budget_bytes = {BUDGET}\n[namespaces.big]\nhistory_size = 100000\n\
         max_recover = 100000\n[limits]\ncommands_per_second = 0\n"
    ));
    let mut live = hub.client("a", &["*"]).await;
    let old = live.subscribe("big:old").await;
    let new = live.subscribe("big:new").await;
    let blob = "x".repeat(2000);
    for i in 0..50 {
        hub.publish("big:old", json!({"i": i, "blob": blob})).await;
    }
    for i in 0..60 {
        hub.publish("big:new", json!({"i": i, "blob": blob})).await;
    }
    // The live subscriber lost nothing: budget trimming touches history only.
    for i in 1..=110u64 {
        let p = live.next_pub().await;
        assert_eq!(p.offset, if i <= 50 { i } else { i - 50 }, "{}", p.channel);
    }
    let (_, metrics) = hub.api("GET", "/metrics", None).await;
    let gauge = |name: &str| -> u64 {
        let text = metrics.as_str().expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {text}"))
    };
    let used = gauge("herald_engine_memory_bytes");
    assert!(used <= BUDGET && used > BUDGET / 2, "accounting {used} vs budget {BUDGET}");
    assert_eq!(gauge("herald_engine_memory_budget_bytes"), BUDGET);
    let (_, h_old) = hub.api("GET", "/api/history?channel=big:old&limit=1000", None).await;
    let (_, h_new) = hub.api("GET", "/api/history?channel=big:new&limit=1000", None).await;
    let earliest_old = h_old["earliest"].as_u64().unwrap();
    assert!(earliest_old > 1, "the oldest channel was trimmed first: {}", h_old["earliest"]);
    assert_eq!(
        (h_new["earliest"].clone(), h_new["publications"].as_array().unwrap().len()),
        (json!(1), 60)
    );

    let mut back = hub.client("b", &["*"]).await;
    let reply = resume(&mut back, "big:old", since(&old), false).await;
    assert_eq!(
        (reply["recovered"].as_bool(), reply["reason"].as_str()),
        (Some(false), Some("history_trimmed")),
        "{reply}"
    );
    assert_eq!(reply["offset"], 50);
    let reply = resume(&mut back, "big:new", since(&new), false).await;
    assert_eq!(reply["recovered"], true);
    assert_eq!(reply["publications"].as_array().unwrap().len(), 60);
    let kept = Position { epoch: old["epoch"].as_str().unwrap().into(), offset: earliest_old - 1 };
    let mut again = hub.client("c", &["*"]).await;
    let reply = resume(&mut again, "big:old", kept, false).await;
    assert_eq!(reply["recovered"], true, "from the first kept offset: {reply}");
}
