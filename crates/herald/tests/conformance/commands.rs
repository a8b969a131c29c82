//! §2 Commands, §3 server messages, §6 results: every command's reply and its documented fields.

use crate::client::{assert_code, assert_time, offsets};
use crate::harness::{Check, Ctx, checks};
use serde_json::{Value, json};
use std::sync::Arc;

pub fn all() -> Vec<Check> {
    checks![
        connect_with_token_result,
        connect_without_token_is_anonymous,
        commands_before_connect_get_101_and_the_connection_stays,
        second_connect_gets_115,
        replies_come_in_command_order,
        unknown_command_gets_104,
        malformed_json_gets_an_error_push_107,
        missing_or_mistyped_field_gets_107,
        ping_reply_is_empty,
        pong_gets_no_reply,
        subscribe_result,
        unsubscribe_result_and_no_more_publications,
        publish_result_and_idempotency,
        history_result_latest_before_since_and_cap,
        history_of_a_fresh_channel,
        state_result,
        refresh_result,
        error_object_fields,
    ]
}

/// §6 ConnectResult: `client`, `user`, `time`, `ping_interval_ms`, `pong_timeout_ms`, `clients`,
/// `node`, `version` (1), `expires_at`? (token expiry, Unix seconds). §2: `name`? is accepted.
async fn connect_with_token_result(h: Arc<Ctx>) {
    let user = h.unique("cr");
    let exp = herald_testkit::unix_now() + 900;
    let token = h.token_with(json!({"sub": user, "exp": exp}));
    let mut c = h.open().await;
    let r = c.ok(json!({"cmd": "connect", "token": token, "name": "tab-1"})).await;
    assert!(r["client"].as_str().is_some_and(|s| !s.is_empty()), "§6 client: {r}");
    assert_eq!(r["user"], user.as_str(), "§6 user: {r}");
    assert_time(&r["time"]);
    assert_eq!(r["ping_interval_ms"], 25000, "§7 default ping interval: {r}");
    assert_eq!(r["pong_timeout_ms"], 60000, "§7 default pong timeout: {r}");
    assert!(r["clients"].as_u64().is_some_and(|n| n >= 1), "§6 clients: {r}");
    assert!(r["node"].as_str().is_some_and(|s| !s.is_empty()), "§6 node: {r}");
    assert_eq!(r["version"], 1, "§6 version: {r}");
    assert_eq!(r["expires_at"], exp, "§6 expires_at is the token's exp: {r}");
    // Another connection of the same user is another client.
    let mut other = h.open().await;
    let r2 = other.connect(Some(&h.token(&user, &[]))).await.expect("second connection");
    assert_ne!(r2["client"], r["client"], "§6: `client` names the connection");
}

/// §2 `connect` has `token`?; §6 "`user` (empty when anonymous)".
async fn connect_without_token_is_anonymous(h: Arc<Ctx>) {
    let mut c = h.open().await;
    let r = c.connect(None).await.expect("anonymous connect");
    assert_eq!(r["user"], "", "§6: user is empty when anonymous: {r}");
    assert!(r.get("expires_at").is_none(), "§6: no token, no expires_at: {r}");
    let ch = h.channel("open");
    c.subscribe(&ch).await;
}

/// §2 "The first command MUST be `connect`. Any other command first gets error `101
/// unauthorized`."; §8 101 "command before `connect`".
async fn commands_before_connect_get_101_and_the_connection_stays(h: Arc<Ctx>) {
    let ch = h.channel("open");
    let mut c = h.open().await;
    for cmd in [
        json!({"cmd": "subscribe", "channel": ch}),
        json!({"cmd": "publish", "channel": ch, "data": 1}),
        json!({"cmd": "history", "channel": ch}),
        json!({"cmd": "ping"}),
    ] {
        let e = c.err(cmd.clone()).await;
        assert_code(&e, 101);
    }
    c.connect(Some(&h.token(&h.unique("bc"), &[]))).await.expect("connect after the refusals");
    c.subscribe(&ch).await;
}

/// §2 "A second `connect` gets `115 already_connected`."
async fn second_connect_gets_115(h: Arc<Ctx>) {
    let (mut c, user) = h.client(&[]).await;
    let e = c.connect(Some(&h.token(&user, &[]))).await.expect_err("second connect");
    assert_code(&e, 115);
    c.still_open().await;
}

/// §2 "Commands of one connection are processed in the order received; replies come in that
/// order."
async fn replies_come_in_command_order(h: Arc<Ctx>) {
    let ch = h.channel("room");
    let (mut c, _) = h.client(&[&ch]).await;
    let sent = [
        c.send(json!({"cmd": "subscribe", "channel": ch})).await,
        c.send(json!({"cmd": "publish", "channel": ch, "data": 1})).await,
        c.send(json!({"cmd": "ping"})).await,
        c.send(json!({"cmd": "history", "channel": ch})).await,
        c.send(json!({"cmd": "teleport"})).await,
        c.send(json!({"cmd": "unsubscribe", "channel": ch})).await,
    ];
    let mut got = vec![];
    while got.len() < sent.len() {
        let m = c.next_msg().await;
        if let Some(id) = m.get("id") {
            got.push(id.as_u64().unwrap());
        }
    }
    assert_eq!(got, sent, "§2: replies in command order");
}

/// §2 "Unknown `cmd` → `104 unknown_command` … The connection stays open."
async fn unknown_command_gets_104(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&[]).await;
    assert_code(&c.err(json!({"cmd": "teleport"})).await, 104);
    c.still_open().await;
}

/// §2 "malformed JSON … → `107 bad_request` (… otherwise as an `error` push). The connection
/// stays open."
async fn malformed_json_gets_an_error_push_107(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&[]).await;
    c.send_raw("{not json").await;
    let m = c.next_msg().await;
    assert_eq!(m["push"], "error", "§3: an error not tied to a request is a push: {m}");
    assert_code(&m["error"], 107);
    c.still_open().await;
}

/// §2 "a missing/mistyped field → `107 bad_request` (as a reply when the id could be read …)".
async fn missing_or_mistyped_field_gets_107(h: Arc<Ctx>) {
    let ch = h.channel("room");
    let (mut c, _) = h.client(&[&ch]).await;
    for cmd in [
        json!({"cmd": "subscribe"}),
        json!({"cmd": "subscribe", "channel": 5}),
        json!({"cmd": "subscribe", "channel": ch, "snapshot": "yes"}),
        json!({"cmd": "subscribe", "channel": ch, "since": {"epoch": "e"}}),
        json!({"cmd": "publish", "channel": ch}),
        json!({"cmd": "publish", "channel": ch, "data": 1, "op": "explode", "key": "k"}),
        json!({"cmd": "history", "channel": ch, "limit": "ten"}),
        json!({"cmd": "unsubscribe"}),
        json!({"cmd": "refresh"}),
    ] {
        let e = c.err(cmd.clone()).await;
        assert_eq!(e["code"], 107, "§2: {cmd} → 107, got {e}");
    }
    // A command without cmd but with an id: the id could be read.
    c.send_raw(r#"{"id":4242}"#).await;
    assert_code(&c.reply(4242).await.expect_err("no cmd"), 107);
    c.still_open().await;
}

/// §2 `ping` → `{}`.
async fn ping_reply_is_empty(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&[]).await;
    assert_eq!(c.request(json!({"cmd": "ping"})).await, Ok(json!({})));
}

/// §2 "`pong` | (no id) | no reply".
async fn pong_gets_no_reply(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&[]).await;
    c.send_raw(r#"{"cmd":"pong"}"#).await;
    let id = c.send(json!({"cmd": "ping"})).await;
    let m = c.next_msg().await;
    assert_eq!(m, json!({"id": id, "result": {}}), "§2: nothing answers the pong");
}

/// §6 SubscribeResult `channel`, `epoch`, `offset`, `keyed`; `recovered`/`reason`/`publications`
/// only with `since`; `snapshot` only when asked.
async fn subscribe_result(h: Arc<Ctx>) {
    let plain = h.channel("room");
    let keyed = h.channel("board");
    let (mut c, _) = h.client(&[&plain, &keyed]).await;
    let r = c.subscribe(&plain).await;
    assert_eq!(r["channel"], plain.as_str(), "{r}");
    assert!(r["epoch"].as_str().is_some_and(|e| !e.is_empty()), "§5 epoch: {r}");
    assert_eq!(r["offset"], 0, "§5: a fresh channel is at offset 0: {r}");
    assert_eq!(r["keyed"], false, "{r}");
    for absent in ["recovered", "reason", "publications", "snapshot"] {
        assert!(r.get(absent).is_none(), "§6: no `{absent}` without since/snapshot: {r}");
    }
    let r = c.subscribe(&keyed).await;
    assert_eq!(r["keyed"], true, "§6 keyed on a keyed namespace: {r}");
}

/// §2 `unsubscribe` → `{}`; afterwards the channel's publications no longer arrive.
async fn unsubscribe_result_and_no_more_publications(h: Arc<Ctx>) {
    let gone = h.channel("room");
    let marker = h.channel("room");
    let (mut c, _) = h.client(&[&gone, &marker]).await;
    c.subscribe(&gone).await;
    c.subscribe(&marker).await;
    assert_eq!(c.request(json!({"cmd": "unsubscribe", "channel": gone})).await, Ok(json!({})));
    h.publish(json!({"channel": gone, "data": "after"})).await;
    h.publish(json!({"channel": marker, "data": "marker"})).await;
    let p = c.next_pub().await;
    assert_eq!(p["channel"], marker.as_str(), "nothing from the unsubscribed channel: {p}");
}

/// §6 PublishResult `channel`, `epoch`, `offset`, `id`, `time`, `duplicate`? (true when an earlier
/// publish with the same `idempotency_key` … is being answered; nothing new was published).
async fn publish_result_and_idempotency(h: Arc<Ctx>) {
    let ch = h.channel("room");
    let (mut c, _) = h.client(&[&ch]).await;
    let sub = c.subscribe(&ch).await;
    let r = c.ok(json!({"cmd": "publish", "channel": ch, "data": {"a": 1}})).await;
    assert_eq!(r["channel"], ch.as_str(), "{r}");
    assert_eq!(r["epoch"], sub["epoch"], "{r}");
    assert_eq!(r["offset"], 1, "§4: first offset is 1: {r}");
    assert_eq!(r["id"], format!("{}-1", sub["epoch"].as_str().unwrap()), "§4 id: {r}");
    assert_time(&r["time"]);
    assert!(r.get("duplicate").is_none_or(|d| d == false), "not a duplicate: {r}");
    let once = json!({"cmd": "publish", "channel": ch, "data": 2, "idempotency_key": "op-1"});
    let first = c.ok(once.clone()).await;
    let again = c.ok(once).await;
    assert_eq!(again["duplicate"], true, "§6 duplicate: {again}");
    assert_eq!(
        (&again["offset"], &again["id"]),
        (&first["offset"], &first["id"]),
        "the first result"
    );
    c.ok(json!({"cmd": "publish", "channel": ch, "data": 3})).await;
    let got: Vec<Value> = [c.next_pub().await, c.next_pub().await, c.next_pub().await]
        .iter()
        .map(|p| p["offset"].clone())
        .collect();
    assert_eq!(got, vec![json!(1), json!(2), json!(3)], "§6: nothing new for the duplicate");
}

/// §6 HistoryResult: `channel`, `epoch`, `offset`, `earliest`, `publications` oldest first; latest
/// `limit` by default; `before`; `since`; `limit` defaults to 100, capped at `max_history_page`
/// (5 in this configuration).
async fn history_result_latest_before_since_and_cap(h: Arc<Ctx>) {
    let ch = h.channel("session");
    for i in 1..=8 {
        h.publish(json!({"channel": ch, "data": i})).await;
    }
    let (mut c, _) = h.client(&[&ch]).await;
    let r = c.ok(json!({"cmd": "history", "channel": ch})).await;
    assert_eq!(r["channel"], ch.as_str(), "{r}");
    assert!(r["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    assert_eq!(r["offset"], 8, "current offset: {r}");
    assert_eq!(r["earliest"], 1, "lowest kept offset: {r}");
    assert_eq!(offsets(&r["publications"]), vec![4, 5, 6, 7, 8], "latest, capped at 5: {r}");
    assert!(r.get("reason").is_none(), "{r}");
    let epoch = r["epoch"].as_str().unwrap().to_string();
    let q = |extra: Value| {
        let mut cmd = json!({"cmd": "history", "channel": ch});
        cmd.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        cmd
    };
    let r = c.ok(q(json!({"limit": 2}))).await;
    assert_eq!(offsets(&r["publications"]), vec![7, 8], "latest 2");
    let r = c.ok(q(json!({"limit": 50}))).await;
    assert_eq!(offsets(&r["publications"]).len(), 5, "limit capped at max_history_page");
    let r = c.ok(q(json!({"limit": 2, "before": 7}))).await;
    assert_eq!(offsets(&r["publications"]), vec![5, 6], "just below `before`, oldest first");
    let r = c.ok(q(json!({"limit": 2, "since": {"epoch": epoch, "offset": 5}}))).await;
    assert_eq!(offsets(&r["publications"]), vec![6, 7], "after `since`");
    assert!(r.get("reason").is_none(), "{r}");
    let r = c.ok(q(json!({"since": {"epoch": epoch, "offset": 8}}))).await;
    assert_eq!(offsets(&r["publications"]), Vec::<u64>::new(), "nothing after the head");
    let r = c.ok(q(json!({"since": {"epoch": "gone", "offset": 2}}))).await;
    assert!(r["reason"].is_string(), "§6: `reason` when since cannot be served: {r}");
    assert_eq!(offsets(&r["publications"]), Vec::<u64>::new(), "§6: then publications is empty");
}

/// §5 "A channel that never had a publication has a position too (offset 0)"; §6 `earliest` "0 if
/// none".
async fn history_of_a_fresh_channel(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let (mut c, _) = h.client(&[&ch]).await;
    let r = c.ok(json!({"cmd": "history", "channel": ch})).await;
    assert_eq!((&r["offset"], &r["earliest"]), (&json!(0), &json!(0)), "{r}");
    assert_eq!(r["publications"], json!([]), "{r}");
}

/// §6 StateResult: `channel`, `epoch`, `offset`, `records`.
async fn state_result(h: Arc<Ctx>) {
    let ch = h.channel("board");
    let (mut c, _) = h.client(&[&ch]).await;
    let put = |key: &str, op: &str, data: Value| json!({"channel": ch, "key": key, "op": op, "data": data});
    h.publish(put("t1", "upsert", json!({"title": "a", "status": "todo"}))).await;
    h.publish(put("t2", "upsert", json!({"title": "b"}))).await;
    h.publish(put("t1", "merge", json!({"status": "done"}))).await;
    h.publish(put("t2", "delete", Value::Null)).await;
    let r = c.ok(json!({"cmd": "state", "channel": ch})).await;
    assert_eq!(r["channel"], ch.as_str(), "{r}");
    assert!(r["epoch"].is_string(), "{r}");
    assert_eq!(r["offset"], 4, "{r}");
    let records = crate::positions::records(&r["records"]);
    assert_eq!(records.len(), 1, "t2 was deleted: {r}");
    assert_eq!(records["t1"], json!({"title": "a", "status": "done"}), "§4 merge patch: {r}");
}

/// §2 `refresh` `token` → `{expires_at?}`; §7 "The refreshed token must name the same user";
/// §8 101 for a bad token.
async fn refresh_result(h: Arc<Ctx>) {
    let (mut c, user) = h.client(&[]).await;
    let exp = herald_testkit::unix_now() + 1800;
    let fresh = h.token_with(json!({"sub": user, "exp": exp}));
    let r = c.ok(json!({"cmd": "refresh", "token": fresh})).await;
    assert_eq!(r["expires_at"], exp, "§2 refresh result: {r}");
    let e = c.err(json!({"cmd": "refresh", "token": "not-a-jwt"})).await;
    assert_code(&e, 101);
    let other = h.token(&h.unique("other"), &[]);
    let e = c.err(json!({"cmd": "refresh", "token": other})).await;
    assert!(e["code"].is_u64(), "§7: a token for another user is refused: {e}");
}

/// §3/§8 the error object `{"code","name","message","channel"}` (`channel` when it applies).
async fn error_object_fields(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let (mut c, _) = h.client(&[]).await;
    let e = c.err(json!({"cmd": "subscribe", "channel": ch})).await;
    assert_code(&e, 103);
    assert_eq!(e["name"], "forbidden", "{e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    assert_eq!(e["channel"], ch.as_str(), "§8: `channel` when it applies: {e}");
}
