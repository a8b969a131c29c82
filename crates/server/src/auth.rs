//! Who a connection is: JWT verification and channel patterns.

use crate::config::AuthConfig;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The claims Herald reads from a token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not-before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Patterns of channels the user may subscribe to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Patterns of channels the user may publish to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Roles; `admin` may do everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Audience: required (and checked) when `auth.audience` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issuer: required (and checked) when `auth.issuer` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// View filters by namespace (`{"task": "assignee == \"u7\""}`): on such a namespace the
    /// user may only subscribe to views, each ANDed with this filter, and may not read the
    /// whole channel (plain subscribe, history, state).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub filters: std::collections::BTreeMap<String, String>,
}

/// An authenticated (or anonymous) connection identity.
#[derive(Debug, Clone, Default)]
pub struct Principal {
    /// User id; empty when anonymous.
    pub user: String,
    /// Subscribe patterns from the token.
    pub channels: Vec<String>,
    /// Publish patterns from the token.
    pub publish: Vec<String>,
    /// Whether the token has the `admin` role.
    pub admin: bool,
    /// Token expiry (Unix seconds).
    pub expires_at: Option<u64>,
    /// View filters by namespace, from the token's `filters` claim.
    pub filters: std::collections::BTreeMap<String, String>,
}

impl Principal {
    /// The identity of a connection without a token.
    pub fn anonymous() -> Principal {
        Principal::default()
    }

    /// True when no token was given.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_empty()
    }

    /// Whether the token's `channels` claim allows subscribing to `channel`.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.admin || self.channels.iter().any(|p| pattern_matches(p, channel))
    }

    /// Whether the token's `publish` claim allows publishing to `channel`.
    pub fn may_publish(&self, channel: &str) -> bool {
        self.admin || self.publish.iter().any(|p| pattern_matches(p, channel))
    }
}

impl From<Claims> for Principal {
    fn from(mut c: Claims) -> Self {
        // Kept for the connection's life: serde grows a list to four entries or more, which is
        // 70 bytes or more of every idle connection spent on room for patterns never added.
        c.channels.shrink_to_fit();
        c.publish.shrink_to_fit();
        Principal {
            admin: c.roles.iter().any(|r| r == "admin"),
            user: c.sub,
            channels: c.channels,
            publish: c.publish,
            expires_at: c.exp,
            filters: c.filters,
        }
    }
}

/// `*` matches any run of characters (including `:`); everything else matches itself.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = channel.strip_prefix(first) else { return false };
    let mut parts = parts.peekable();
    if parts.peek().is_none() {
        return rest.is_empty();
    }
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token and anonymous access is not possible.
    #[error("a token is required")]
    Missing,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token names a `kid` the JWKS does not hold (after a refetch, at most every 10 s).
    #[error("unknown key id {0:?}")]
    UnknownKid(String),
    /// Anything else: malformed, bad signature, wrong or missing audience or issuer,
    /// unsupported algorithm.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Longest lifetime a minted token may have (`POST /api/token`, `herald token`): one year.
/// Longer asks are refused rather than clamped, so a caller never gets less than it asked for
/// without being told.
pub const MAX_TOKEN_TTL_SECS: u64 = 366 * 24 * 3600;

/// Largest `auth.leeway_secs`: clock skew beyond an hour is a broken clock, and the value is
/// added to times (no overflow possible below this).
pub const MAX_LEEWAY_SECS: u64 = 3600;

/// The `exp` of a token minted now with this lifetime, or why it cannot be minted.
pub fn expiry_after(ttl_secs: u64) -> Result<u64, AuthError> {
    if ttl_secs == 0 || ttl_secs > MAX_TOKEN_TTL_SECS {
        return Err(AuthError::Invalid(format!(
            "ttl must be 1 to {MAX_TOKEN_TTL_SECS} seconds, got {ttl_secs}"
        )));
    }
    // Cannot overflow: unix_now() is far below u64::MAX - MAX_TOKEN_TTL_SECS.
    Ok(unix_now().saturating_add(ttl_secs))
}

/// Verifies tokens. Keys are chosen by the token's algorithm family, so an RSA public key can
/// never be used as an HMAC secret (key-type confusion) and `alg: none` is refused outright.
pub struct Verifier {
    /// HMAC secret, when configured.
    hmac: Option<DecodingKey>,
    /// RSA public key, when configured.
    rsa: Option<DecodingKey>,
    /// EC public key, when configured.
    ec: Option<DecodingKey>,
    /// JWKS endpoint, when configured.
    jwks_url: Option<String>,
    /// How long a fetched key set is trusted.
    jwks_ttl: Duration,
    /// Keys fetched from the JWKS, by `kid`, with their algorithm family.
    jwks: RwLock<JwksCache>,
    /// Held by the one task fetching the JWKS; the others wait on it and then read the cache,
    /// so a burst of verifications makes one request and none is refused meanwhile.
    jwks_fetch: tokio::sync::Mutex<()>,
    /// Shared by every check; `algorithms` is set per token.
    validation: Validation,
    /// HTTP client for the JWKS.
    http: reqwest::Client,
}

#[derive(Default)]
struct JwksCache {
    /// The key set of the last successful fetch.
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    /// When `keys` was fetched; older than the TTL means stale.
    fetched: Option<Instant>,
    /// When the last fetch was tried (successful or not), to space out refetches.
    attempted: Option<Instant>,
    /// Counts finished fetch attempts, so a waiter can tell that one finished while it waited.
    generation: u64,
}

/// Smallest time between two JWKS fetches, so unknown `kid`s cannot make us hammer the endpoint.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);

/// Default of `auth.jwks_ttl`.
pub const JWKS_DEFAULT_TTL: Duration = Duration::from_secs(300);

impl Verifier {
    /// Builds a verifier from the configuration.
    pub fn new(config: &AuthConfig) -> Result<Verifier, AuthError> {
        let pem = |what: &str, e: jsonwebtoken::errors::Error| {
            AuthError::Invalid(format!("cannot read {what} public key: {e}"))
        };
        let leeway = config.leeway_secs.unwrap_or(5);
        if leeway > MAX_LEEWAY_SECS {
            return Err(AuthError::Invalid(format!(
                "auth.leeway_secs must be at most {MAX_LEEWAY_SECS}"
            )));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway;
        validation.validate_nbf = true;
        // A configured audience or issuer must be present, not only match when present: a
        // token minted for another service with the same key has neither ours.
        let mut required = vec!["sub"];
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let jwks_ttl = config.jwks_ttl.unwrap_or(JWKS_DEFAULT_TTL);
        if jwks_ttl.is_zero() {
            return Err(AuthError::Invalid("auth.jwks_ttl must be above 0".into()));
        }
        Ok(Verifier {
            hmac: config.token_secret.as_ref().map(|s| DecodingKey::from_secret(s.as_bytes())),
            rsa: match &config.rsa_public_key {
                Some(p) => {
                    Some(DecodingKey::from_rsa_pem(p.as_bytes()).map_err(|e| pem("RSA", e))?)
                }
                None => None,
            },
            ec: match &config.ec_public_key {
                Some(p) => Some(DecodingKey::from_ec_pem(p.as_bytes()).map_err(|e| pem("EC", e))?),
                None => None,
            },
            jwks_url: config.jwks_url.clone(),
            jwks_ttl,
            jwks: RwLock::new(JwksCache::default()),
            jwks_fetch: tokio::sync::Mutex::new(()),
            validation,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| AuthError::Invalid(e.to_string()))?,
        })
    }

    /// Clock skew accepted on `exp`; sessions add it to their token grace.
    pub fn leeway_secs(&self) -> u64 {
        self.validation.leeway
    }

    /// Verifies a token and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let alg = header.alg;
        let key = match (alg, &header.kid) {
            (_, Some(kid)) if self.jwks_url.is_some() => Some(self.jwks_key(kid, alg).await?),
            (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, _) => self.hmac.clone(),
            (Algorithm::RS256, _) => self.rsa.clone(),
            (Algorithm::ES256, _) => self.ec.clone(),
            _ => None,
        }
        .ok_or_else(|| AuthError::Invalid(format!("algorithm {alg:?} is not accepted")))?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        let data = decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty sub".into()));
        }
        Ok(data.claims.into())
    }

    /// The JWKS key for `kid`, fetching the set when it is stale (older than the TTL) or does not
    /// hold `kid` (at most every [`JWKS_MIN_REFRESH`]). One task fetches; the others wait for it.
    async fn jwks_key(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        let min_refresh = JWKS_MIN_REFRESH.min(self.jwks_ttl);
        // What the cache says: Ok(key), Err(true) when a fetch should be tried, Err(false) when
        // the kid is unknown and a fetch was tried too recently.
        let consult = |cache: &JwksCache| -> Result<DecodingKey, bool> {
            let fresh = cache.fetched.is_some_and(|t| t.elapsed() < self.jwks_ttl);
            let may_fetch = cache.attempted.is_none_or(|t| t.elapsed() >= min_refresh);
            match cache.keys.get(kid) {
                // A stale set is still used when a refetch is not due yet (the endpoint failed).
                Some((key, a)) if *a == alg && (fresh || !may_fetch) => Ok(key.clone()),
                _ => Err(may_fetch),
            }
        };
        let seen = {
            let cache = self.jwks.read();
            match consult(&cache) {
                Ok(key) => return Ok(key),
                Err(false) => return Err(self.not_found(&cache, kid, alg)),
                Err(true) => cache.generation,
            }
        };
        let _fetching = self.jwks_fetch.lock().await;
        if self.jwks.read().generation == seen {
            self.fetch_jwks().await;
        }
        // Whether this task fetched or another did while it waited, the cache is now as new as
        // it gets; a stale key that survived a failed refetch is still usable.
        let cache = self.jwks.read();
        match cache.keys.get(kid) {
            Some((key, a)) if *a == alg => Ok(key.clone()),
            _ => Err(self.not_found(&cache, kid, alg)),
        }
    }

    /// Why `kid` gave no key: the last fetch failed (and nothing is cached), the key is for
    /// another algorithm, or the set does not hold it.
    fn not_found(&self, cache: &JwksCache, kid: &str, alg: Algorithm) -> AuthError {
        match cache.keys.get(kid) {
            Some((_, a)) => AuthError::Invalid(format!("key {kid:?} is {a:?}, token says {alg:?}")),
            None if cache.fetched.is_none() => {
                AuthError::Invalid("the JWKS could not be fetched".into())
            }
            None => AuthError::UnknownKid(kid.to_string()),
        }
    }

    /// Fetches the key set and replaces the cache with it; on failure the cache keeps its keys
    /// (logged), so an identity-provider outage does not log everyone out at once.
    async fn fetch_jwks(&self) {
        let url = self.jwks_url.as_deref().unwrap_or_default();
        let fetched = async {
            let set: jsonwebtoken::jwk::JwkSet = self
                .http
                .get(url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("cannot fetch JWKS: {e}"))?
                .json()
                .await
                .map_err(|e| format!("bad JWKS: {e}"))?;
            Ok::<_, String>(set)
        }
        .await;
        let mut cache = self.jwks.write();
        cache.attempted = Some(Instant::now());
        cache.generation += 1;
        let set = match fetched {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(target: "herald::audit", event = "jwks_fetch_failed", url, error = %e);
                return;
            }
        };
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Ok(key)) = (&jwk.common.key_id, DecodingKey::from_jwk(jwk)) else {
                continue;
            };
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            keys.insert(kid.clone(), (key, alg));
        }
        cache.keys = keys;
        cache.fetched = cache.attempted;
    }
}

/// Mints an HS256 token (the `herald token` command and `POST /api/token`).
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Invalid(e.to_string()))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("session:*", "session:9f1c"));
        assert!(pattern_matches("campaign:42", "campaign:42"));
        assert!(!pattern_matches("campaign:42", "campaign:420"));
        assert!(pattern_matches("*", "anything:at:all"));
        assert!(pattern_matches("campaign:*:structure:*", "campaign:1:structure:9"));
        assert!(!pattern_matches("session:*", "sessions:1"));
        assert!(!pattern_matches("a*b", "acbd"));
    }

    fn verifier() -> Verifier {
        Verifier::new(&AuthConfig {
            token_secret: Some("s3cret".into()),
            audience: Some("herald".into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn verifies_and_rejects() {
        let v = verifier();
        let claims = |exp| serde_json::json!({"sub": "alice", "exp": exp, "aud": "herald", "channels": ["a:*"]});
        let key = jsonwebtoken::EncodingKey::from_secret(b"s3cret");
        let enc = |c: &serde_json::Value, alg| {
            jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), c, &key).unwrap()
        };
        let good = enc(&claims(unix_now() + 60), Algorithm::HS512);
        let p = v.verify(&good).await.unwrap();
        assert_eq!(p.user, "alice");
        assert!(p.may_subscribe("a:1") && !p.may_subscribe("b:1"));
        let expired = enc(&claims(unix_now() - 3600), Algorithm::HS256);
        assert_eq!(v.verify(&expired).await.unwrap_err(), AuthError::Expired);
        let wrong_aud = enc(
            &serde_json::json!({"sub": "a", "exp": unix_now() + 60, "aud": "other"}),
            Algorithm::HS256,
        );
        assert!(matches!(v.verify(&wrong_aud).await, Err(AuthError::Invalid(_))));
        // alg: none, hand-built.
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(r#"{"sub":"x"}"#));
        assert!(matches!(v.verify(&none).await, Err(AuthError::Invalid(_))));
        // RS256 header with an HMAC signature: no RSA key configured, refused.
        let forged = format!("{}.{}.AAAA", b64(r#"{"alg":"RS256"}"#), b64(r#"{"sub":"x"}"#));
        assert!(matches!(v.verify(&forged).await, Err(AuthError::Invalid(_))));
        assert!(matches!(v.verify("garbage").await, Err(AuthError::Invalid(_))));
    }

    fn hs256(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(b"s3cret");
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    #[tokio::test]
    async fn configured_audience_and_issuer_are_required() {
        let v = Verifier::new(&AuthConfig {
            token_secret: Some("s3cret".into()),
            audience: Some("herald".into()),
            issuer: Some("https://auth.test".into()),
            ..Default::default()
        })
        .unwrap();
        let exp = unix_now() + 60;
        let ok = hs256(
            serde_json::json!({"sub": "a", "exp": exp, "aud": "herald", "iss": "https://auth.test"}),
        );
        assert_eq!(v.verify(&ok).await.unwrap().user, "a");
        for claims in [
            serde_json::json!({"sub": "a", "exp": exp, "iss": "https://auth.test"}),
            serde_json::json!({"sub": "a", "exp": exp, "aud": "herald"}),
            serde_json::json!({"sub": "a", "exp": exp}),
            serde_json::json!({"sub": "a", "exp": exp, "aud": "other", "iss": "https://auth.test"}),
            serde_json::json!({"sub": "a", "exp": exp, "aud": "herald", "iss": "evil"}),
        ] {
            let err = v.verify(&hs256(claims.clone())).await.unwrap_err();
            assert!(matches!(err, AuthError::Invalid(_)), "{claims}: {err:?}");
        }
        // Without audience/issuer configured, tokens need neither.
        let open = Verifier::new(&AuthConfig {
            token_secret: Some("s3cret".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(open.verify(&hs256(serde_json::json!({"sub": "a", "exp": exp}))).await.is_ok());
    }

    #[tokio::test]
    async fn extreme_times_never_panic() {
        let v = Verifier::new(&AuthConfig {
            token_secret: Some("s3cret".into()),
            ..Default::default()
        })
        .unwrap();
        // Validly signed, absurdly far in the future: accepted with that expiry, no arithmetic
        // overflow here (sessions saturate their deadline).
        for exp in [u64::MAX, u64::MAX - 1, 10_000_000_000_000_000_000] {
            let p = v.verify(&hs256(serde_json::json!({"sub": "a", "exp": exp}))).await.unwrap();
            assert_eq!(p.expires_at, Some(exp));
        }
        // Not representable as a u64 Unix time: refused, not wrapped.
        for exp in [serde_json::json!(1e20), serde_json::json!(-1), serde_json::json!(1.5e19)] {
            let r = v.verify(&hs256(serde_json::json!({"sub": "a", "exp": exp}))).await;
            assert!(matches!(r, Err(AuthError::Invalid(_))), "exp {exp}: {r:?}");
        }
        let far_nbf = hs256(serde_json::json!({"sub": "a", "nbf": u64::MAX}));
        assert!(matches!(v.verify(&far_nbf).await, Err(AuthError::Invalid(_))));
        let old = hs256(serde_json::json!({"sub": "a", "exp": 0}));
        assert_eq!(v.verify(&old).await.unwrap_err(), AuthError::Expired);
        // A leeway large enough to overflow time arithmetic is refused at start.
        let huge = AuthConfig {
            token_secret: Some("s".into()),
            leeway_secs: Some(u64::MAX),
            ..Default::default()
        };
        assert!(Verifier::new(&huge).is_err());
    }

    #[test]
    fn minted_lifetimes_are_bounded() {
        let now = unix_now();
        let exp = expiry_after(3600).unwrap();
        assert!((now + 3600..=now + 3601).contains(&exp));
        assert!(expiry_after(MAX_TOKEN_TTL_SECS).is_ok());
        for bad in [0, MAX_TOKEN_TTL_SECS + 1, u64::MAX] {
            assert!(matches!(expiry_after(bad), Err(AuthError::Invalid(_))), "{bad}");
        }
    }
}
