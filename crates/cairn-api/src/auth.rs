//! Bearer-JWT authentication. Tokens are HS256 only (`alg: none` and every other
//! algorithm are refused, so there is no algorithm confusion); `exp` is required;
//! `iss` and `aud` are checked when configured. The tenant comes from a
//! configurable claim (default `tenant`), the user from `sub`, scopes from `scope`
//! (space-separated) or `scopes` (array).

use crate::error::{ApiError, ErrorCode};
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

/// Validates and mints tokens.
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    tenant_claim: String,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Authenticator {
    /// An authenticator for `secret` and the claim rules of `config`.
    pub fn new(secret: &[u8], config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            tenant_claim: config.tenant_claim.clone(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        }
    }

    /// Validates a bearer token.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &self.validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => {
                        ApiError::new(ErrorCode::TokenExpired, "the token has expired")
                    }
                    ErrorKind::InvalidSignature => {
                        ApiError::new(ErrorCode::InvalidToken, "the token signature is invalid")
                    }
                    ErrorKind::InvalidAlgorithm => ApiError::new(
                        ErrorCode::InvalidToken,
                        "the token must be signed with HS256",
                    ),
                    ErrorKind::MissingRequiredClaim(c) => ApiError::new(
                        ErrorCode::InvalidToken,
                        format!("the token lacks the `{c}` claim"),
                    ),
                    ErrorKind::ImmatureSignature => {
                        ApiError::new(ErrorCode::InvalidToken, "the token is not valid yet (nbf)")
                    }
                    ErrorKind::InvalidIssuer => {
                        ApiError::new(ErrorCode::InvalidToken, "wrong token issuer")
                    }
                    ErrorKind::InvalidAudience => {
                        ApiError::new(ErrorCode::InvalidToken, "wrong token audience")
                    }
                    _ => ApiError::new(ErrorCode::InvalidToken, "the token is malformed"),
                })?;
        let claims = data.claims;
        let tenant = claims
            .get(&self.tenant_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidToken,
                    format!("the token lacks the `{}` claim", self.tenant_claim),
                )
            })
            .and_then(|t| {
                TenantId::parse(t)
                    .map_err(|e| ApiError::new(ErrorCode::InvalidToken, e.to_string()))
            })?;
        let user = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidToken, "the token lacks the `sub` claim")
            })
            .and_then(|s| {
                UserId::parse(s).map_err(|e| ApiError::new(ErrorCode::InvalidToken, e.to_string()))
            })?;
        let mut scopes: Vec<String> = claims
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        if let Some(list) = claims.get("scopes").and_then(Value::as_array) {
            scopes.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        let expires_at = claims.get("exp").and_then(Value::as_i64);
        Ok(Caller {
            tenant,
            user,
            scopes,
            expires_at,
        })
    }

    /// Mints a token (for `cairn token` and the development token).
    pub fn mint(
        &self,
        sub: &UserId,
        tenant: &TenantId,
        ttl: Duration,
        scopes: &[String],
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "sub": sub.as_str(),
            "iat": now,
            "exp": now + ttl.as_secs() as i64,
        });
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
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }
}

impl Authenticator {
    /// The caller of a request with these headers (`Authorization: Bearer <JWT>`).
    pub fn caller(&self, headers: &axum::http::HeaderMap) -> Result<Caller, ApiError> {
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
        self.verify(token)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.auth.caller(&parts.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(b"0123456789abcdef0123456789abcdef", &AuthConfig::default())
    }

    #[test]
    fn minted_tokens_verify() {
        let a = auth();
        let t = a
            .mint(
                &UserId::parse("ana").unwrap(),
                &TenantId::parse("acme").unwrap(),
                Duration::from_secs(60),
                &["admin".into()],
            )
            .unwrap();
        let c = a.verify(&t).unwrap();
        assert_eq!(c.tenant.as_str(), "acme");
        assert_eq!(c.user.as_str(), "ana");
        assert!(c.has_scope("admin"));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
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
            auth().verify(&none).unwrap_err().code,
            ErrorCode::InvalidToken
        );
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        let e = auth().verify(&hs512).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidToken);
        assert!(e.message.contains("HS256"), "{}", e.message);
    }

    #[test]
    fn missing_exp_and_tenant_are_refused() {
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let no_exp = jsonwebtoken::encode(
            &Header::default(),
            &json!({"sub": "a", "tenant": "t"}),
            &key,
        )
        .unwrap();
        assert!(auth().verify(&no_exp).unwrap_err().message.contains("exp"));
        let exp = chrono::Utc::now().timestamp() + 60;
        let no_tenant =
            jsonwebtoken::encode(&Header::default(), &json!({"sub": "a", "exp": exp}), &key)
                .unwrap();
        assert!(
            auth()
                .verify(&no_tenant)
                .unwrap_err()
                .message
                .contains("tenant")
        );
    }
}
