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
    fn from(c: Claims) -> Self {
        Principal {
            admin: c.roles.iter().any(|r| r == "admin"),
            user: c.sub,
            channels: c.channels,
            publish: c.publish,
            expires_at: c.exp,
        }
    }
}

/// `*` matches any run of characters (including `:`); everything else matches itself.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = channel.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    if parts.is_empty() {
        return rest.is_empty();
    }
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
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
    /// Anything else: malformed, bad signature, wrong audience or issuer, unsupported algorithm.
    #[error("invalid token: {0}")]
    Invalid(String),
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
    /// Keys fetched from the JWKS, by `kid`, with their algorithm family.
    jwks: RwLock<JwksCache>,
    /// Shared by every check; `algorithms` is set per token.
    validation: Validation,
    /// HTTP client for the JWKS.
    http: reqwest::Client,
}

#[derive(Default)]
struct JwksCache {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    fetched: Option<Instant>,
}

/// Smallest time between two JWKS fetches, so unknown `kid`s cannot make us hammer the endpoint.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);

impl Verifier {
    /// Builds a verifier from the configuration.
    pub fn new(config: &AuthConfig) -> Result<Verifier, AuthError> {
        let pem = |what: &str, e: jsonwebtoken::errors::Error| {
            AuthError::Invalid(format!("cannot read {what} public key: {e}"))
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway_secs.unwrap_or(5);
        validation.set_required_spec_claims(&["sub"]);
        validation.validate_nbf = true;
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
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
            jwks: RwLock::new(JwksCache::default()),
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
            (_, Some(kid)) if self.jwks_url.is_some() => self.jwks_key(kid, alg).await?,
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

    async fn jwks_key(&self, kid: &str, alg: Algorithm) -> Result<Option<DecodingKey>, AuthError> {
        let lookup = |cache: &JwksCache| {
            cache.keys.get(kid).filter(|(_, a)| *a == alg).map(|(k, _)| k.clone())
        };
        if let Some(key) = lookup(&self.jwks.read()) {
            return Ok(Some(key));
        }
        let recently = self.jwks.read().fetched.is_some_and(|t| t.elapsed() < JWKS_MIN_REFRESH);
        if recently {
            return Ok(None);
        }
        let url = self.jwks_url.as_deref().unwrap_or_default();
        self.jwks.write().fetched = Some(Instant::now());
        let set: jsonwebtoken::jwk::JwkSet = self
            .http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| AuthError::Invalid(format!("cannot fetch JWKS: {e}")))?
            .json()
            .await
            .map_err(|e| AuthError::Invalid(format!("bad JWKS: {e}")))?;
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
        let mut cache = self.jwks.write();
        cache.keys = keys;
        Ok(lookup(&cache))
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
}
