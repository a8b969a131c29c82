//! §1 Transport: frames, batching, binary and oversized frames, tokens in the upgrade, Origin.

use crate::client::Conn;
use crate::harness::{Check, Ctx, checks};
use serde_json::json;
use std::sync::Arc;

pub fn all() -> Vec<Check> {
    checks![
        frame_with_several_commands_is_split_on_newlines,
        server_batches_queued_messages,
        binary_frame_closes_4502,
        oversized_frame_closes_4504,
        token_in_authorization_header,
        token_in_query_parameter,
        invalid_upgrade_token_upgrades_then_closes_4500,
        origin_not_on_the_list_closes_4501,
    ]
}

/// §1 "A frame carries one or more messages separated by `\n` … a receiver MUST split every frame
/// on `\n` and parse each non-empty line … clients MAY batch too."
async fn frame_with_several_commands_is_split_on_newlines(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&[]).await;
    let frame = r#"{"id":101,"cmd":"ping"}
{"id":102,"cmd":"ping"}

{"id":103,"cmd":"ping"}"#;
    c.send_raw(frame).await;
    for id in 101..=103 {
        let m = c.next_msg().await;
        assert_eq!(m, json!({"id": id, "result": {}}), "§1/§2: each line answered, in order");
    }
}

/// §1 "The server batches when several messages are queued for a connection."
async fn server_batches_queued_messages(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&[]).await;
    let frame: Vec<String> =
        (1000..1100).map(|id| format!(r#"{{"id":{id},"cmd":"ping"}}"#)).collect();
    c.send_raw(&frame.join("\n")).await;
    for id in 1000..1100 {
        assert_eq!(c.reply(id).await, Ok(json!({})));
    }
    let most = c.frame_sizes.iter().copied().max().unwrap_or(0);
    assert!(
        most > 1,
        "§1: 100 replies queued at once came one per frame ({} frames)",
        c.frame_sizes.len()
    );
}

/// §1 "Binary frames are a protocol violation (close `4502 bad_request`)." §9: disconnect push
/// first, final code.
async fn binary_frame_closes_4502(h: Arc<Ctx>) {
    let (mut c, _) = h.client(&[]).await;
    c.send_binary(br#"{"id":1,"cmd":"ping"}"#.to_vec()).await;
    c.expect_closed_with(4502, "bad_request").await;
}

/// §1 "An inbound frame larger than the limit (default 64 KiB) closes the connection with `4504
/// message_too_large`."
async fn oversized_frame_closes_4504(h: Arc<Ctx>) {
    let ch = h.channel("room");
    let (mut c, _) = h.client(&[&ch]).await;
    let big = json!({"id": 9, "cmd": "publish", "channel": ch, "data": "x".repeat(96 * 1024)});
    c.send_raw(&big.to_string()).await;
    c.expect_closed_with(4504, "message_too_large").await;
    // Another connection is unaffected.
    let (mut other, _) = h.client(&[]).await;
    other.still_open().await;
}

/// §1 "The token may be given in the upgrade request as `Authorization: Bearer TOKEN`".
async fn token_in_authorization_header(h: Arc<Ctx>) {
    let user = h.unique("hdr");
    let auth = format!("Bearer {}", h.token(&user, &[]));
    let mut c = Conn::open_with(&h.hub.ws_url(), &[("authorization", auth)]).await;
    let r = c.connect(None).await.expect("connect without a token in the command");
    assert_eq!(r["user"], user.as_str(), "§1: the upgrade's token names the user: {r}");
}

/// §1 "… or as the `token` query parameter (`/ws?token=...`)".
async fn token_in_query_parameter(h: Arc<Ctx>) {
    let user = h.unique("q");
    let url = format!("{}?token={}", h.hub.ws_url(), h.token(&user, &[]));
    let mut c = Conn::open(&url).await;
    let r = c.connect(None).await.expect("connect");
    assert_eq!(r["user"], user.as_str(), "§1: the query's token names the user: {r}");
}

/// §1 "If the upgrade carries a token that is invalid, the server still upgrades, then sends the
/// `disconnect` push and closes with `4500 unauthorized`".
async fn invalid_upgrade_token_upgrades_then_closes_4500(h: Arc<Ctx>) {
    let mut c = Conn::open(&format!("{}?token=not-a-jwt", h.hub.ws_url())).await;
    c.expect_closed_with(4500, "unauthorized").await;
    let bad = format!("Bearer {}x", h.token("x", &[]));
    let mut c = Conn::open_with(&h.hub.ws_url(), &[("authorization", bad)]).await;
    c.expect_closed_with(4500, "unauthorized").await;
}

/// §1 "When an `Origin` header is present and the configured allow-list is not empty, it MUST
/// match the list or the connection is closed with `4501 forbidden`."
async fn origin_not_on_the_list_closes_4501(h: Arc<Ctx>) {
    let url = h.hub.ws_url();
    let mut evil = Conn::open_with(&url, &[("origin", "https://evil.example".into())]).await;
    evil.expect_closed_with(4501, "forbidden").await;
    let mut good = Conn::open_with(&url, &[("origin", "https://app.example".into())]).await;
    good.connect(Some(&h.token(&h.unique("o"), &[]))).await.expect("allowed origin connects");
    // Without an Origin header (not a browser) the list does not apply.
    let mut none = h.open().await;
    let r = none.connect(Some(&h.token(&h.unique("o"), &[]))).await;
    assert!(r.is_ok(), "no Origin header: {r:?}");
}
