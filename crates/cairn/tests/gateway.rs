//! The gateway against real parts: identity-provider tokens verified through a
//! local JWKS server (rotation, removal, the attack set), rate limits, token
//! budgets, metrics, WebSocket and the OpenAI-compatible facade.

#![allow(clippy::unwrap_used)]

mod common;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use common::{Client, Server, config};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ISSUER: &str = "https://idp.example.test/";
const AUDIENCE: &str = "cairn-api";
const SECRET: &str = "gateway-test-secret-0123456789";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jwt")
            .join(name),
    )
    .unwrap()
}

/// A signing key of the test identity provider.
struct IdpKey {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

impl IdpKey {
    fn new(kid: &'static str, alg: Algorithm, file: &str) -> Self {
        let pem = fixture(file);
        let key = match alg {
            Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            other => panic!("no fixture for {other:?}"),
        }
        .unwrap();
        Self { kid, alg, key }
    }

    /// The public JWK, as an IdP publishes it.
    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.to_owned());
        serde_json::to_value(jwk).unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn claims(tenant: &str, user: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "sub": user, "tenant": tenant, "iss": ISSUER, "aud": AUDIENCE,
        "iat": now, "exp": now + 600, "scp": ["read", "write"],
    })
}

/// The JWKS endpoint of the test IdP: its key set can be swapped, and it counts
/// fetches.
#[derive(Clone, Default)]
struct Idp {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicU64>,
}

async fn jwks(State(idp): State<Idp>) -> impl IntoResponse {
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    let keys = idp.keys.lock().unwrap().clone();
    (
        [(header::CACHE_CONTROL, "public, max-age=1")],
        axum::Json(json!({ "keys": keys })),
    )
}

async fn start_idp(idp: &Idp) -> String {
    let app = axum::Router::new()
        .route("/.well-known/jwks.json", axum::routing::get(jwks))
        .with_state(idp.clone());
    format!("{}/.well-known/jwks.json", common::serve_local(app).await)
}

/// A client that reaches the server under a real host name.
fn named_client(server: &Server, token: Option<String>) -> Client {
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    Client {
        base: format!("http://cairn.example.test:{}", addr.port()),
        token,
        http: reqwest::Client::builder()
            .resolve("cairn.example.test", addr)
            .build()
            .unwrap(),
    }
}

async fn jwks_server(idp_url: String) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.auth.jwks_url = Some(idp_url);
    cfg.auth.jwt_secret = Some(SECRET.into());
    cfg.auth.issuer = Some(ISSUER.into());
    cfg.auth.audience = Some(AUDIENCE.into());
    cfg.auth.leeway = Duration::from_secs(5);
    cfg.auth.jwks_min_refresh = Duration::from_millis(300);
    (Server::start(&cfg).await, dir)
}

async fn status_of(server: &Server, token: &str) -> (u16, Value) {
    let r = named_client(server, Some(token.to_owned()))
        .get("/v1/conversations")
        .await;
    (r.status, r.body)
}

#[tokio::test]
async fn keys_rotate_without_restart_and_removed_keys_are_refused() {
    let idp = Idp::default();
    let a = IdpKey::new("key-a", Algorithm::RS256, "rsa_a.pem");
    let b = IdpKey::new("key-b", Algorithm::RS256, "rsa_b.pem");
    *idp.keys.lock().unwrap() = vec![a.jwk()];
    let (mut server, _dir) = jwks_server(start_idp(&idp).await).await;

    let token_a = a.sign(&claims("acme", "ana"));
    let (status, body) = status_of(&server, &token_a).await;
    assert_eq!(status, 200, "{body}");

    // Rotation: the IdP publishes B beside A; a token signed with B (an unknown
    // kid for the cache) is accepted after one refetch.
    *idp.keys.lock().unwrap() = vec![a.jwk(), b.jwk()];
    tokio::time::sleep(Duration::from_millis(350)).await;
    let token_b = b.sign(&claims("acme", "ana"));
    let (status, body) = status_of(&server, &token_b).await;
    assert_eq!(status, 200, "{body}");

    // Removal: once A leaves the set and the cache's max-age (1 s) passes, A's
    // tokens are refused while B's keep working.
    *idp.keys.lock().unwrap() = vec![b.jwk()];
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = status_of(&server, &token_a).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_token");
    assert!(body["error"]["request_id"].is_string(), "{body}");
    assert_eq!(status_of(&server, &token_b).await.0, 200);

    // Unknown kids cannot make Cairn hammer the IdP: made-up kids cause at most
    // one fetch per `jwks_min_refresh` (300 ms here), however many arrive.
    let before = idp.fetches.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    for i in 0..20 {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("made-up-{i}"));
        let forged = jsonwebtoken::encode(&header, &claims("acme", "ana"), &b.key).unwrap();
        assert_eq!(status_of(&server, &forged).await.0, 401);
    }
    let fetched = idp.fetches.load(Ordering::SeqCst) - before;
    let allowed = started.elapsed().as_millis() as u64 / 300 + 1;
    assert!(
        fetched <= allowed,
        "{fetched} fetches for 20 unknown kids, at most {allowed} allowed"
    );
    server.stop().await;
}

#[tokio::test]
async fn rsa_ec_and_eddsa_tokens_carry_tenant_user_and_scopes() {
    let idp = Idp::default();
    let keys = [
        IdpKey::new("rsa", Algorithm::RS256, "rsa_a.pem"),
        IdpKey::new("ps", Algorithm::PS256, "rsa_b.pem"),
        IdpKey::new("ec", Algorithm::ES256, "ec_p256.pem"),
        IdpKey::new("ed", Algorithm::EdDSA, "ed25519.pem"),
    ];
    *idp.keys.lock().unwrap() = keys.iter().map(IdpKey::jwk).collect();
    let (mut server, _dir) = jwks_server(start_idp(&idp).await).await;
    for key in &keys {
        let mut c = claims("acme", "ana");
        // Okta puts scopes in an `scp` array, Entra in an `scp` string, Auth0 in
        // `permissions`: the ingest scope is read from each.
        c["scp"] = match key.kid {
            "rsa" => json!(["ingest"]),
            "ps" => json!("read ingest"),
            _ => Value::Null,
        };
        if matches!(key.kid, "ec" | "ed") {
            c["permissions"] = json!(["ingest"]);
        }
        let client = named_client(&server, Some(key.sign(&c)));
        let r = client.post("/v1/conversations", json!({})).await;
        assert_eq!(r.status, 201, "{}: {}", key.kid, r.body);
        // The document route needs the `ingest` scope: a 403 would mean the
        // scope claim was not read (a 404 for the id means it was).
        let r = client.delete("/v1/documents/doc-x").await;
        assert_ne!(r.status, 403, "{}: {}", key.kid, r.body);
        assert_ne!(r.status, 401, "{}: {}", key.kid, r.body);
    }
    // HS256 with the configured secret keeps working beside the JWKS.
    let hs = server.token("acme", "ana");
    assert_eq!(status_of(&server, &hs).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn the_attack_set_gets_401_with_the_error_contract() {
    use base64::Engine;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let idp = Idp::default();
    let a = IdpKey::new("key-a", Algorithm::RS256, "rsa_a.pem");
    let ec = IdpKey::new("ec", Algorithm::ES256, "ec_p256.pem");
    *idp.keys.lock().unwrap() = vec![a.jwk(), ec.jwk()];
    let (mut server, _dir) = jwks_server(start_idp(&idp).await).await;
    let now = chrono::Utc::now().timestamp();
    let good = a.sign(&claims("acme", "ana"));
    assert_eq!(status_of(&server, &good).await.0, 200);

    let mut attacks: Vec<(&str, String)> = Vec::new();
    let body = b64(claims("acme", "ana").to_string().as_bytes());
    attacks.push((
        "alg none",
        format!("{}.{body}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
    ));
    attacks.push((
        "alg none with kid",
        format!("{}.{body}.", b64(br#"{"alg":"none","kid":"key-a"}"#)),
    ));
    // HS256 "signed" with the RSA public key (the classic confusion attack):
    // both with the PEM bytes and with the kid of the RSA key.
    let public = fixture("rsa_a.pub.pem");
    for kid in [None, Some("key-a".to_owned())] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid;
        attacks.push((
            "HS256 with the RSA public key",
            jsonwebtoken::encode(
                &header,
                &claims("acme", "ana"),
                &EncodingKey::from_secret(&public),
            )
            .unwrap(),
        ));
    }
    // An RS256 key used with an ES256 header (algorithm not pinned to the key).
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("key-a".into());
    attacks.push((
        "ES256 header on an RSA key",
        jsonwebtoken::encode(&header, &claims("acme", "ana"), &ec.key).unwrap(),
    ));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("acme", "ana");
        f(&mut c);
        a.sign(&c)
    };
    attacks.push(("expired", with(&|c| c["exp"] = json!(now - 120))));
    attacks.push(("not yet valid", with(&|c| c["nbf"] = json!(now + 120))));
    attacks.push(("wrong aud", with(&|c| c["aud"] = json!("someone-else"))));
    attacks.push((
        "wrong iss",
        with(&|c| c["iss"] = json!("https://evil.example/")),
    ));
    attacks.push((
        "missing tenant",
        with(&|c| {
            c.as_object_mut().unwrap().remove("tenant");
        }),
    ));
    attacks.push((
        "missing exp",
        with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
    ));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("not-a-key".into());
    attacks.push((
        "unknown kid",
        jsonwebtoken::encode(&header, &claims("acme", "ana"), &a.key).unwrap(),
    ));
    // Tampered payload: a valid signature over another tenant's claims.
    let parts: Vec<&str> = good.split('.').collect();
    let evil = b64(claims("other-tenant", "ana").to_string().as_bytes());
    attacks.push((
        "tampered payload",
        format!("{}.{evil}.{}", parts[0], parts[2]),
    ));
    attacks.push(("signature stripped", format!("{}.{}.", parts[0], parts[1])));
    attacks.push(("garbage", "not.a.jwt".into()));

    for (name, token) in &attacks {
        let (status, body) = status_of(&server, token).await;
        assert_eq!(status, 401, "{name}: {body}");
        let code = body["error"]["code"].as_str().unwrap_or_default();
        assert!(
            code == "invalid_token" || code == "token_expired",
            "{name}: {body}"
        );
        assert!(body["error"]["message"].is_string(), "{name}: {body}");
        assert!(body["error"]["request_id"].is_string(), "{name}: {body}");
        // No URL of the IdP or key material in what the client sees.
        assert!(!body.to_string().contains("idp.example"), "{name}: {body}");
        assert!(!body.to_string().contains("127.0.0.1"), "{name}: {body}");
    }
    server.stop().await;
}
