//! Token verification with asymmetric keys and a JWKS endpoint (test-only keys in tests/keys).

use herald_server::auth::{AuthError, Verifier, unix_now};
use herald_server::config::AuthConfig;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// A JWKS endpoint on 127.0.0.1 serving `body` (swappable), counting requests, each answered
/// after `delay`.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(body: String, delay: Duration) -> JwksServer {
        let body = Arc::new(Mutex::new(body));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counter) = (body.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                async move {
                    // Holds the fetch open so that concurrent verifications overlap it.
                    tokio::time::sleep(delay).await;
                    ([("content-type", "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        JwksServer { url: format!("http://{addr}/jwks.json"), body, fetches }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn verifier(&self, ttl: Option<Duration>) -> Verifier {
        Verifier::new(&AuthConfig {
            jwks_url: Some(self.url.clone()),
            jwks_ttl: ttl,
            ..Default::default()
        })
        .unwrap()
    }
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap()
}

/// A JWKS holding only the EC test key, as `kid`.
fn ec_jwks(kid: &str) -> String {
    let mut jwk = Jwk::from_encoding_key(&ec_key(), Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap()
}

#[tokio::test]
async fn jwks_keys_are_fetched_and_cached_by_kid() {
    let server = JwksServer::start(JWKS.into(), Duration::ZERO).await;
    let v = server.verifier(None);
    let token = sign(Algorithm::RS256, &rsa_key(), Some("k1"));
    assert_eq!(v.verify(&token).await.unwrap().user, "alice");
    assert_eq!(v.verify(&token).await.unwrap().user, "alice");
    assert_eq!(server.fetches(), 1, "cached by kid");
    // An unknown kid right after a fetch is refused as such, without a refetch (at most one
    // every 10 s).
    let unknown = sign(Algorithm::RS256, &rsa_key(), Some("k2"));
    for _ in 0..2 {
        assert_eq!(v.verify(&unknown).await.unwrap_err(), AuthError::UnknownKid("k2".into()));
    }
    assert_eq!(server.fetches(), 1, "no refetch within 10 s of the last");
}

#[tokio::test]
async fn concurrent_verifications_share_one_fetch() {
    let server = JwksServer::start(JWKS.into(), Duration::from_millis(300)).await;
    let v = Arc::new(server.verifier(None));
    let token = sign(Algorithm::RS256, &rsa_key(), Some("k1"));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (v, token) = (v.clone(), token.clone());
            tokio::spawn(async move { v.verify(&token).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().expect("verified while the fetch ran").user, "alice");
    }
    assert_eq!(server.fetches(), 1, "one fetch for every waiter");
}

#[tokio::test]
async fn rotated_keys_expire_after_the_ttl() {
    let server = JwksServer::start(JWKS.into(), Duration::ZERO).await;
    let v = server.verifier(Some(Duration::from_secs(1)));
    let old = sign(Algorithm::RS256, &rsa_key(), Some("k1"));
    let new = sign(Algorithm::ES256, &ec_key(), Some("k2"));
    assert_eq!(v.verify(&old).await.unwrap().user, "alice");
    assert_eq!(v.verify(&new).await.unwrap_err(), AuthError::UnknownKid("k2".into()));
    // The identity provider rotates: k1 removed, k2 added.
    *server.body.lock().unwrap() = ec_jwks("k2");
    let before = server.fetches();
    // Bounded poll: k2 is accepted once the set is refetched (TTL 1 s), not before it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match v.verify(&new).await {
            Ok(p) => {
                assert_eq!(p.user, "alice");
                break;
            }
            Err(e) => assert_eq!(e, AuthError::UnknownKid("k2".into())),
        }
        assert!(Instant::now() < deadline, "the rotated key was never fetched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.fetches(), before + 1, "one refetch picked up the rotation");
    // The removed key is no longer trusted.
    assert_eq!(v.verify(&old).await.unwrap_err(), AuthError::UnknownKid("k1".into()));
}

#[tokio::test]
async fn an_unreachable_jwks_is_not_an_unknown_kid() {
    let server = JwksServer::start("not json".into(), Duration::ZERO).await;
    let v = server.verifier(None);
    let token = sign(Algorithm::RS256, &rsa_key(), Some("k1"));
    let err = v.verify(&token).await.unwrap_err();
    assert!(matches!(&err, AuthError::Invalid(m) if m.contains("JWKS")), "{err:?}");
    assert_eq!(server.fetches(), 1);
}
