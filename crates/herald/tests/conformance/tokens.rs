//! §11 Tokens: claims and what they allow; tokens that must be refused (§8 101, §9 4500).

use crate::client::assert_code;
use crate::harness::{AUDIENCE, Check, Ctx, checks};
use serde_json::{Value, json};
use std::sync::Arc;

pub fn all() -> Vec<Check> {
    checks![
        channel_patterns_match_any_run_of_characters,
        publish_claim_grants_client_publish,
        admin_role_may_do_everything,
        refused_tokens_get_101_and_4500,
    ]
}

/// §11 "`channels` (array of patterns the user may subscribe to, `*` matching any run of
/// characters, e.g. `session:*`)".
async fn channel_patterns_match_any_run_of_characters(h: Arc<Ctx>) {
    let base = h.unique("session:p");
    let pattern = format!("{base}*x");
    let (mut c, _) = h.client(&[&pattern]).await;
    c.subscribe(&format!("{base}x")).await;
    c.subscribe(&format!("{base}abc:defx")).await;
    let e = c.err(json!({"cmd": "subscribe", "channel": format!("{base}abc")})).await;
    assert_code(&e, 103);
}

/// §11 "`publish` (patterns the user may publish to)" — `session` has no client publish.
async fn publish_claim_grants_client_publish(h: Arc<Ctx>) {
    let ch = h.channel("session");
    let user = h.unique("pub");
    let token = h.token_with(json!({"sub": user, "publish": [format!("{ch}*")]}));
    let mut c = h.open().await;
    c.connect(Some(&token)).await.expect("connect");
    let r = c.ok(json!({"cmd": "publish", "channel": ch, "data": 1})).await;
    assert_eq!(r["offset"], 1, "{r}");
    let e = c.err(json!({"cmd": "publish", "channel": h.channel("session"), "data": 1})).await;
    assert_code(&e, 103);
}

/// §11 "`roles` (array of strings; `admin` may do everything)".
async fn admin_role_may_do_everything(h: Arc<Ctx>) {
    let token = h.token_with(json!({"sub": h.unique("adm"), "roles": ["admin"]}));
    let mut c = h.open().await;
    c.connect(Some(&token)).await.expect("connect");
    let ch = h.channel("session");
    c.subscribe(&ch).await;
    c.ok(json!({"cmd": "publish", "channel": ch, "data": 1})).await;
}

/// §11 `sub` required; `exp`, `nbf`, `aud`, `iss` checked; §9 4500 "missing, malformed, badly
/// signed, wrong audience/issuer token".
async fn refused_tokens_get_101_and_4500(h: Arc<Ctx>) {
    let now = herald_testkit::unix_now();
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let cases: Vec<(&str, String)> = vec![
        ("malformed", "not-a-jwt".into()),
        (
            "badly signed",
            herald_testkit::hs256_token(
                "another-secret",
                &json!({"sub": "a", "exp": now + 60, "aud": AUDIENCE, "iss": crate::harness::ISSUER}),
            ),
        ),
        ("no sub", h.token_with(json!({"sub": Value::Null}))),
        ("wrong audience", h.token_with(json!({"sub": "a", "aud": "other"}))),
        ("wrong issuer", h.token_with(json!({"sub": "a", "iss": "https://evil.example"}))),
        ("nbf in the future", h.token_with(json!({"sub": "a", "nbf": now + 3600}))),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&json!({"sub": "a", "exp": now + 60, "aud": AUDIENCE}).to_string())
            ),
        ),
    ];
    for (what, token) in cases {
        let mut c = h.open().await;
        let e = c.connect(Some(&token)).await.expect_err(what);
        assert_eq!(e["code"], 101, "{what}: {e}");
        let (close, push) = c.expect_close().await;
        assert_eq!(close, 4500, "{what}: close code");
        assert_eq!(push.map(|p| p["code"].clone()), Some(json!(4500)), "{what}: disconnect push");
    }
}
