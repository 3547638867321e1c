//! Bearer-JWT authentication.
//!
//! Two kinds of tokens are accepted: HS256 with the configured secret, and, when
//! `auth.jwks_url` is set, RS/PS/ES/EdDSA tokens verified with the identity
//! provider's keys ([`crate::jwks`]), each key pinned to one algorithm. `alg:
//! none`, other HMAC algorithms and a token whose `alg` differs from its key's are
//! refused, so there is no algorithm confusion (an HS256 token "signed" with an
//! RSA public key meets the HS256 secret and fails). `exp` is required; `nbf` is
//! checked; `iss` and `aud` are checked when configured. The tenant comes from a
//! configurable claim (default `tenant`), the user from `auth.user_claim`
//! (default `sub`), scopes from `auth.scope_claims` (each a space-separated string
//! or an array).

use crate::error::{ApiError, ErrorCode};
use crate::jwks::{Jwks, KeyError};
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use cairn_core::config::AuthConfig;
use cairn_core::{TenantId, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Scope that allows reading every conversation of the caller's tenant (not
/// posting into or deleting other users' conversations).
pub const ADMIN_SCOPE: &str = "admin";
/// Scope for what acts on the whole service rather than one tenant (reloading
/// the MCP servers every tenant shares). Operators hold it; tenants' admins do not.
pub const OPERATOR_SCOPE: &str = "operator";

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// The tenant the token is for.
    pub tenant: TenantId,
    /// The user (`sub`).
    pub user: UserId,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// When the token expires (`exp`, seconds since the epoch): open streams end then.
    pub expires_at: Option<i64>,
}

impl Caller {
    /// True when the caller holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

struct HsKey {
    decoding: DecodingKey,
    encoding: EncodingKey,
}

/// How long a verified token is remembered (never past its `exp`).
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Most tokens remembered; past it, expired entries go, then all.
const VERIFIED_MAX: usize = 10_000;

/// Validates and mints tokens.
///
/// A token that verified is remembered for [`VERIFIED_TTL`] (at most until its
/// `exp`), so a client sending the same token does not pay the signature check
/// again — an RS256 check costs hundreds of microseconds. A key removed from the
/// JWKS therefore stops working within that time, not at once.
pub struct Authenticator {
    verified: std::sync::Mutex<std::collections::HashMap<String, (Caller, std::time::Instant)>>,
    hs: Option<HsKey>,
    jwks: Option<Jwks>,
    leeway: u64,
    tenant_claim: String,
    user_claim: String,
    scope_claims: Vec<String>,
    issuer: Option<String>,
    audience: Option<String>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidToken, message)
}

impl Authenticator {
    /// An authenticator for HS256 tokens signed with `secret` and the claim rules
    /// of `config`.
    pub fn new(secret: &[u8], config: &AuthConfig) -> Self {
        let mut a = Self::without_secret(config);
        a.hs = Some(HsKey {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
        });
        a
    }

    /// An authenticator that accepts no HS256 token (identity-provider tokens only,
    /// once [`Authenticator::with_jwks`] adds the keys).
    pub fn without_secret(config: &AuthConfig) -> Self {
        Self {
            verified: Default::default(),
            hs: None,
            jwks: None,
            leeway: config.leeway.as_secs(),
            tenant_claim: config.tenant_claim.clone(),
            user_claim: config.user_claim.clone(),
            scope_claims: config.scope_claims.clone(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        }
    }

    /// Adds the identity provider's keys.
    pub fn with_jwks(mut self, jwks: Jwks) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// The JWKS cache, when one is configured.
    pub fn jwks(&self) -> Option<&Jwks> {
        self.jwks.as_ref()
    }

    /// True when HS256 tokens can be minted and verified.
    pub fn has_secret(&self) -> bool {
        self.hs.is_some()
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        validation
    }

    /// Validates a bearer token.
    pub async fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let now = std::time::Instant::now();
        if let Some((caller, until)) = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token)
            && *until > now
        {
            return Ok(caller.clone());
        }
        let (caller, key_fresh_until) = self.verify_uncached(token).await?;
        let left = caller
            .expires_at
            .map(|exp| exp.saturating_sub(chrono::Utc::now().timestamp()))
            .map_or(Duration::ZERO, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        // A JWKS key is trusted only while its key set is fresh: a removed key
        // stops working when the set is next fetched.
        let key_left = key_fresh_until.map_or(VERIFIED_TTL, |t| t.saturating_duration_since(now));
        let ttl = left.min(VERIFIED_TTL).min(key_left);
        if !ttl.is_zero() {
            let mut cache = self
                .verified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cache.len() >= VERIFIED_MAX {
                cache.retain(|_, (_, until)| *until > now);
                if cache.len() >= VERIFIED_MAX {
                    cache.clear();
                }
            }
            cache.insert(token.to_owned(), (caller.clone(), now + ttl));
        }
        Ok(caller)
    }

    async fn verify_uncached(
        &self,
        token: &str,
    ) -> Result<(Caller, Option<std::time::Instant>), ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token is malformed (unreadable header or algorithm)"))?;
        let (key, alg): (&DecodingKey, Algorithm);
        let pinned;
        let mut fresh_until = None;
        match header.alg {
            Algorithm::HS256 => {
                let hs = self.hs.as_ref().ok_or_else(|| {
                    invalid("HS256 tokens are not accepted here; use a token from the identity provider")
                })?;
                (key, alg) = (&hs.decoding, Algorithm::HS256);
            }
            Algorithm::HS384 | Algorithm::HS512 => {
                return Err(invalid(if self.jwks.is_some() {
                    "the token must be signed with HS256 or a key from the identity provider"
                } else {
                    "the token must be signed with HS256"
                }));
            }
            asymmetric => {
                let jwks = self
                    .jwks
                    .as_ref()
                    .ok_or_else(|| invalid("the token must be signed with HS256"))?;
                pinned = jwks.key(header.kid.as_deref()).await.map_err(|e| match e {
                    KeyError::UnknownKid => invalid(
                        "the token's signing key (kid) is not among the identity provider's keys",
                    ),
                    KeyError::Unavailable => ApiError::new(
                        ErrorCode::Unavailable,
                        "the identity provider's keys could not be loaded; retry shortly",
                    ),
                })?;
                if pinned.algorithm != asymmetric {
                    return Err(invalid(
                        "the token's algorithm does not match its signing key's",
                    ));
                }
                fresh_until = pinned.fresh_until;
                (key, alg) = (pinned.key.as_ref(), asymmetric);
            }
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation(alg))
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => {
                    ApiError::new(ErrorCode::TokenExpired, "the token has expired")
                }
                ErrorKind::InvalidSignature => invalid("the token signature is invalid"),
                ErrorKind::InvalidAlgorithm => invalid("the token's algorithm is not accepted"),
                ErrorKind::MissingRequiredClaim(c) => {
                    invalid(format!("the token lacks the `{c}` claim"))
                }
                ErrorKind::ImmatureSignature => invalid("the token is not valid yet (nbf)"),
                ErrorKind::InvalidIssuer => invalid("wrong token issuer"),
                ErrorKind::InvalidAudience => invalid("wrong token audience"),
                _ => invalid("the token is malformed"),
            })?;
        Ok((self.caller_of(&data.claims)?, fresh_until))
    }

    fn caller_of(&self, claims: &Map<String, Value>) -> Result<Caller, ApiError> {
        let claim = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("the token lacks the `{name}` claim")))
        };
        let tenant = claim(&self.tenant_claim)
            .and_then(|t| TenantId::parse(t).map_err(|e| invalid(e.to_string())))?;
        let user = claim(&self.user_claim)
            .and_then(|s| UserId::parse(s).map_err(|e| invalid(e.to_string())))?;
        let mut scopes: Vec<String> = Vec::new();
        for name in &self.scope_claims {
            match claims.get(name) {
                Some(Value::String(s)) => scopes.extend(s.split_whitespace().map(str::to_owned)),
                Some(Value::Array(list)) => {
                    scopes.extend(list.iter().filter_map(Value::as_str).map(str::to_owned))
                }
                _ => {}
            }
        }
        scopes.sort();
        scopes.dedup();
        let expires_at = claims.get("exp").and_then(Value::as_i64);
        Ok(Caller {
            tenant,
            user,
            scopes,
            expires_at,
        })
    }

    /// Mints an HS256 token (for `cairn token` and the development token).
    pub fn mint(
        &self,
        sub: &UserId,
        tenant: &TenantId,
        ttl: Duration,
        scopes: &[String],
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let hs = self
            .hs
            .as_ref()
            .ok_or_else(|| jsonwebtoken::errors::Error::from(ErrorKind::InvalidKeyFormat))?;
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iat": now,
            "exp": now + ttl.as_secs() as i64,
        });
        claims[self.user_claim.as_str()] = json!(sub.as_str());
        claims[self.tenant_claim.as_str()] = json!(tenant.as_str());
        if !scopes.is_empty() {
            claims["scope"] = json!(scopes.join(" "));
        }
        if let Some(iss) = &self.issuer {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = &self.audience {
            claims["aud"] = json!(aud);
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &hs.encoding)
    }
}

impl Authenticator {
    /// The caller of a request with these headers (`Authorization: Bearer <JWT>`).
    pub async fn caller(&self, headers: &axum::http::HeaderMap) -> Result<Caller, ApiError> {
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::MissingToken,
                    "send `Authorization: Bearer <token>`",
                )
            })?;
        let value = header.to_str().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidToken,
                "the Authorization header is not text",
            )
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::MissingToken,
                    "send `Authorization: Bearer <token>`",
                )
            })?;
        self.verify(token).await
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The rate-limit middleware has verified the token already.
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        state.auth.caller(&parts.headers).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(b"0123456789abcdef0123456789abcdef", &AuthConfig::default())
    }

    #[tokio::test]
    async fn minted_tokens_verify() {
        let a = auth();
        let t = a
            .mint(
                &UserId::parse("ana").unwrap(),
                &TenantId::parse("acme").unwrap(),
                Duration::from_secs(60),
                &["admin".into()],
            )
            .unwrap();
        let c = a.verify(&t).await.unwrap();
        assert_eq!(c.tenant.as_str(), "acme");
        assert_eq!(c.user.as_str(), "ana");
        assert!(c.has_scope("admin"));
    }

    #[tokio::test]
    async fn alg_none_and_other_algorithms_are_refused() {
        use base64::Engine;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let claims =
            json!({"sub": "ana", "tenant": "acme", "exp": chrono::Utc::now().timestamp() + 60});
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(claims.clone())
        );
        assert_eq!(
            auth().verify(&none).await.unwrap_err().code,
            ErrorCode::InvalidToken
        );
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        let e = auth().verify(&hs512).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidToken);
        assert!(e.message.contains("HS256"), "{}", e.message);
    }

    #[tokio::test]
    async fn missing_exp_and_tenant_are_refused() {
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let no_exp = jsonwebtoken::encode(
            &Header::default(),
            &json!({"sub": "a", "tenant": "t"}),
            &key,
        )
        .unwrap();
        assert!(
            auth()
                .verify(&no_exp)
                .await
                .unwrap_err()
                .message
                .contains("exp")
        );
        let exp = chrono::Utc::now().timestamp() + 60;
        let no_tenant =
            jsonwebtoken::encode(&Header::default(), &json!({"sub": "a", "exp": exp}), &key)
                .unwrap();
        assert!(
            auth()
                .verify(&no_tenant)
                .await
                .unwrap_err()
                .message
                .contains("tenant")
        );
    }
}
