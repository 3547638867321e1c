//! Signing keys from an identity provider's JWKS URL (`auth.jwks_url`).
//!
//! Keys are cached and refreshed when the cache passes its age (the response's
//! `Cache-Control: max-age`, else `auth.jwks_cache_ttl`) and when a token names a
//! `kid` the cache does not hold (a rotation). Fetches are single-flight and at
//! most one per `auth.jwks_min_refresh`, so tokens with made-up `kid`s cannot
//! turn Cairn into a load generator against the provider. A failed fetch keeps
//! the keys already held.
//!
//! Each key is pinned to one algorithm: its `alg` when the JWK names one, else
//! the one its type implies (RSA → RS256, P-256 → ES256, P-384 → ES384,
//! Ed25519 → EdDSA). Symmetric (`oct`) keys and `use: enc` keys are ignored, so
//! a JWKS can never make an HMAC key out of public material.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most keys kept from one document.
const MAX_KEYS: usize = 64;
/// Longest `max-age` honoured.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// One verification key, pinned to its algorithm.
#[derive(Clone)]
pub struct PinnedKey {
    /// The only algorithm tokens signed with this key may name.
    pub algorithm: Algorithm,
    /// The public key.
    pub key: Arc<DecodingKey>,
    /// Until when the key set it came from is fresh (set on lookup).
    pub fresh_until: Option<Instant>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, PinnedKey>,
    /// Keys without a `kid` (used only by tokens without one).
    anonymous: Vec<PinnedKey>,
    expires: Option<Instant>,
}

/// Why no key was found for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The JWKS holds no key with that id (after a refresh when one was allowed).
    UnknownKid,
    /// The JWKS has never been fetched successfully.
    Unavailable,
}

/// The JWKS cache of one identity provider.
pub struct Jwks {
    url: String,
    http: reqwest::Client,
    default_ttl: Duration,
    min_refresh: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// When the last fetch started; the lock makes fetches single-flight.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    fetches: std::sync::atomic::AtomicU64,
}

impl Jwks {
    /// A cache for `url` (nothing is fetched until the first token or [`Jwks::refresh`]).
    pub fn new(
        url: String,
        timeout: Duration,
        default_ttl: Duration,
        min_refresh: Duration,
    ) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(&url).map_err(|e| format!("auth.jwks_url: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("auth.jwks_url must be an http(s) URL".into());
        }
        rustls_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| format!("JWKS client: {e}"))?;
        Ok(Self {
            url,
            http,
            default_ttl,
            min_refresh,
            keys: RwLock::new(Arc::new(KeySet::default())),
            last_fetch: tokio::sync::Mutex::new(None),
            fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many fetches were attempted (for tests and metrics).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The key for a token's `kid`, fetching the JWKS when the cache is stale or
    /// does not know the `kid` (at most once per `min_refresh`).
    pub async fn key(&self, kid: Option<&str>) -> Result<PinnedKey, KeyError> {
        let set = self.current();
        let stale = set.expires.is_none_or(|t| Instant::now() >= t);
        if !stale && let Some(k) = lookup(&set, kid) {
            return Ok(k);
        }
        self.refresh().await;
        let set = self.current();
        match lookup(&set, kid) {
            Some(k) => Ok(k),
            None if set.expires.is_none() => Err(KeyError::Unavailable),
            None => Err(KeyError::UnknownKid),
        }
    }

    /// Fetches the JWKS unless a fetch started less than `min_refresh` ago.
    /// Failures are logged and keep the keys already held.
    pub async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch().await {
            Ok(set) => {
                tracing::info!(keys = set.by_kid.len() + set.anonymous.len(), "JWKS loaded");
                *self
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
            }
            Err(e) => tracing::warn!(error = %e, "JWKS fetch failed; keeping the keys held"),
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let mut resp = self
            .http
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {}", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!("the JWKS URL answered {}", resp.status()));
        }
        let ttl = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .unwrap_or(self.default_ttl)
            .clamp(self.min_refresh, MAX_TTL);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the body: {}", e.without_url()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let doc: Value =
            serde_json::from_slice(&body).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the JWKS has no `keys` array")?;
        let mut set = KeySet {
            expires: Some(Instant::now() + ttl),
            ..KeySet::default()
        };
        for raw in keys.iter().take(MAX_KEYS) {
            let jwk: Jwk = match serde_json::from_value(raw.clone()) {
                Ok(j) => j,
                Err(e) => {
                    tracing::debug!(error = %e, "skipping a JWK Cairn cannot read");
                    continue;
                }
            };
            let Some(pinned) = pin(&jwk) else { continue };
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, pinned);
                }
                None => set.anonymous.push(pinned),
            }
        }
        Ok(set)
    }
}

fn lookup(set: &KeySet, kid: Option<&str>) -> Option<PinnedKey> {
    let mut found = find(set, kid)?;
    found.fresh_until = set.expires;
    Some(found)
}

fn find(set: &KeySet, kid: Option<&str>) -> Option<PinnedKey> {
    match kid {
        Some(kid) => set.by_kid.get(kid).cloned(),
        // A token without a kid is accepted only when exactly one key could
        // have signed it.
        None => match (set.anonymous.as_slice(), set.by_kid.len()) {
            ([only], 0) => Some(only.clone()),
            ([], 1) => set.by_kid.values().next().cloned(),
            _ => None,
        },
    }
}

/// The algorithm a JWK is pinned to and its decoding key; `None` for keys that
/// must not verify signatures (symmetric, encryption, unknown types).
fn pin(jwk: &Jwk) -> Option<PinnedKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let algorithm = match jwk.common.key_algorithm {
        Some(named) => {
            let name = serde_json::to_value(named).ok()?;
            let alg = Algorithm::from_str(name.as_str()?).ok()?;
            // The named algorithm must belong to the key's family (an RSA key
            // cannot be named ES256, and nothing here may be HMAC).
            let same_family = match implied {
                Algorithm::RS256 => matches!(
                    alg,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                ),
                other => alg == other,
            };
            if !same_family {
                return None;
            }
            alg
        }
        None => implied,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(PinnedKey {
        algorithm,
        key: Arc::new(key),
        fresh_until: None,
    })
}

/// `max-age` of a `Cache-Control` value (`no-store`/`no-cache` mean zero).
fn max_age(header: &str) -> Option<Duration> {
    let mut age = None;
    for directive in header.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

fn rustls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=3600, must-revalidate"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn keys_are_pinned_to_their_family() {
        let rsa = json_jwk(serde_json::json!({
            "kty": "RSA", "kid": "r", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
            "e": "AQAB", "alg": "ES256"
        }));
        assert!(pin(&rsa).is_none(), "an RSA key named ES256 is refused");
        let oct = json_jwk(serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}));
        assert!(pin(&oct).is_none(), "symmetric keys never come from a JWKS");
    }

    fn json_jwk(v: Value) -> Jwk {
        serde_json::from_value(v).expect("jwk parses")
    }
}
