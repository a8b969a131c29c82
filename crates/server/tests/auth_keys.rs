//! Token verification with asymmetric keys and a JWKS endpoint (test-only keys in tests/keys).

use herald_server::auth::{AuthError, Verifier, unix_now};
use herald_server::config::AuthConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

const RSA_PRIVATE: &str = include_str!("keys/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("keys/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("keys/ec_private.pem");
const EC_PUBLIC: &str = include_str!("keys/ec_public.pem");
const JWKS: &str = include_str!("keys/jwks.json");

fn claims() -> serde_json::Value {
    json!({"sub": "alice", "exp": unix_now() + 60, "iss": "https://auth.test", "channels": ["a:*"]})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    encode(&header, &claims(), key).unwrap()
}

#[tokio::test]
async fn rs256_and_es256_from_pem() {
    let v = Verifier::new(&AuthConfig {
        rsa_public_key: Some(RSA_PUBLIC.into()),
        ec_public_key: Some(EC_PUBLIC.into()),
        issuer: Some("https://auth.test".into()),
        ..Default::default()
    })
    .unwrap();
    let rs =
        sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(), None);
    assert_eq!(v.verify(&rs).await.unwrap().user, "alice");
    let es =
        sign(Algorithm::ES256, &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(), None);
    assert_eq!(v.verify(&es).await.unwrap().user, "alice");
    // Wrong issuer.
    let other = encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "a", "exp": unix_now() + 60, "iss": "evil"}),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(matches!(v.verify(&other).await, Err(AuthError::Invalid(_))));
}

#[tokio::test]
async fn key_type_confusion_is_rejected() {
    // The classic attack: sign HS256 with the RSA *public* key as the HMAC secret.
    let v = Verifier::new(&AuthConfig {
        rsa_public_key: Some(RSA_PUBLIC.into()),
        ..Default::default()
    })
    .unwrap();
    let forged = sign(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()), None);
    assert!(matches!(v.verify(&forged).await, Err(AuthError::Invalid(_))));
    // An ES256 token when only an RSA key is configured.
    let es =
        sign(Algorithm::ES256, &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(), None);
    assert!(matches!(v.verify(&es).await, Err(AuthError::Invalid(_))));
}

#[tokio::test]
async fn jwks_keys_are_fetched_and_cached_by_kid() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { ([("content-type", "application/json")], JWKS) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let v = Verifier::new(&AuthConfig {
        jwks_url: Some(format!("http://{addr}/jwks.json")),
        ..Default::default()
    })
    .unwrap();
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let token = sign(Algorithm::RS256, &key, Some("k1"));
    assert_eq!(v.verify(&token).await.unwrap().user, "alice");
    assert_eq!(v.verify(&token).await.unwrap().user, "alice");
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "cached by kid");
    // An unknown kid refetches at most once per 10 s, and is refused.
    let unknown = sign(Algorithm::RS256, &key, Some("k2"));
    assert!(v.verify(&unknown).await.is_err());
    assert!(v.verify(&unknown).await.is_err());
    assert!(fetches.load(Ordering::SeqCst) <= 2);
}
