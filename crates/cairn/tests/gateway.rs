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
use std::collections::HashMap;
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

// ---- Rate limits, budgets, metrics, CORS -------------------------------------

/// An OpenAI-wire model that answers at once with the user's last words and
/// how many user messages it saw, reporting 100 input and 20 output tokens per
/// call; streamed word by word when asked to stream.
async fn start_echo_model() -> String {
    async fn chat(axum::Json(body): axum::Json<Value>) -> axum::response::Response {
        let users: Vec<&str> = body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter(|m| m["role"] == "user")
                    .filter_map(|m| m["content"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let text = format!(
            "You said: {} [users: {}]",
            users.last().copied().unwrap_or_default(),
            users.len()
        );
        let usage = json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120});
        if body["stream"] == true {
            let mut frames: Vec<String> = Vec::new();
            let words: Vec<&str> = text.split_inclusive(' ').collect();
            for w in words {
                frames.push(json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "echo",
                    "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]}).to_string());
            }
            frames.push(json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "echo",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string());
            frames.push(json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "echo",
                "choices": [], "usage": usage}).to_string());
            frames.push("[DONE]".into());
            let body: String = frames.iter().map(|f| format!("data: {f}\n\n")).collect();
            return ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response();
        }
        axum::Json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "echo",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": usage
        }))
        .into_response()
    }
    let app = axum::Router::new().route("/chat/completions", axum::routing::post(chat));
    common::serve_local(app).await
}

fn with_echo_model(cfg: &mut cairn_core::config::Config, url: &str) {
    cfg.llm.provider = cairn_core::config::Provider::Openai;
    cfg.llm.base_url = Some(url.to_owned());
    cfg.llm.model = Some("echo".into());
    cfg.llm.stream = false;
}

fn limited(cfg: &mut cairn_core::config::Config) {
    use cairn_core::gateway_config::{ClassLimits, Rate, TenantLimits};
    cfg.rate_limits.enabled = true;
    cfg.rate_limits.messages = ClassLimits {
        tenant: Rate {
            per_minute: 600,
            burst: 100,
        },
        user: Rate {
            per_minute: 6,
            burst: 2,
        },
    };
    cfg.rate_limits.tenants.insert(
        "big".into(),
        TenantLimits {
            messages: Some(ClassLimits {
                tenant: Rate {
                    per_minute: 600,
                    burst: 100,
                },
                user: Rate {
                    per_minute: 600,
                    burst: 10,
                },
            }),
            ..Default::default()
        },
    );
}

async fn post_message(c: &Client, conv: &str) -> common::Reply {
    c.post(
        &format!("/v1/conversations/{conv}/messages"),
        json!({"content": "hello"}),
    )
    .await
}

/// Two replicas on one Redis share the limits; alone, the in-process limiter
/// applies the same rules.
async fn rate_limit_case(redis: Option<String>) {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut c1 = config(d1.path(), redis.clone());
    limited(&mut c1);
    c1.auth.jwt_secret = Some(SECRET.into());
    let mut a = Server::start(&c1).await;
    // The second replica shares the first one's Redis prefix.
    let mut b = match &redis {
        Some(_) => {
            let mut c2 = c1.clone();
            c2.server.data_dir = d2.path().to_owned();
            Some(Server::start(&c2).await)
        }
        None => None,
    };
    let ana = named_client(&a, Some(a.token("acme", "ana")));
    let conv = ana.new_conversation().await;
    for remaining in ["1", "0"] {
        let r = post_message(&ana, &conv).await;
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.headers["ratelimit-limit"], "2");
        assert_eq!(r.headers["ratelimit-remaining"], remaining);
        assert!(r.headers.contains_key("ratelimit-reset"));
    }
    // The third message inside the burst window is refused — on the other
    // replica too when the limits live in Redis.
    let refused = match &b {
        Some(b) => {
            let ana_b = named_client(b, Some(a.token("acme", "ana")));
            post_message(&ana_b, &conv).await
        }
        None => post_message(&ana, &conv).await,
    };
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "rate_limited");
    assert_eq!(refused.body["error"]["details"]["class"], "messages");
    assert!(refused.body["error"]["request_id"].is_string());
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    assert_eq!(refused.headers["ratelimit-remaining"], "0");
    // Reads are a class of their own; another user has a budget of their own;
    // the `big` tenant's override allows more.
    assert_eq!(
        ana.get(&format!("/v1/conversations/{conv}")).await.status,
        200
    );
    let bea = named_client(&a, Some(a.token("acme", "bea")));
    let conv_b = bea.new_conversation().await;
    assert_eq!(post_message(&bea, &conv_b).await.status, 202);
    let big = named_client(&a, Some(a.token("big", "ana")));
    let conv_big = big.new_conversation().await;
    for _ in 0..5 {
        assert_eq!(post_message(&big, &conv_big).await.status, 202);
    }
    // Unauthenticated requests are not counted: they get the 401 of the route.
    let anon = named_client(&a, None);
    assert_eq!(post_message(&anon, &conv).await.status, 401);
    if let Some(b) = b.as_mut() {
        b.stop().await;
    }
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_with_429_and_rate_limit_headers() {
    rate_limit_case(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_in_redis_are_shared_by_replicas() {
    rate_limit_case(Some(common::redis_url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_token_budget_fails_the_turn_and_usage_shows_it() {
    let model = start_echo_model().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    with_echo_model(&mut cfg, &model);
    cfg.budgets.default.daily_input_tokens = 150;
    cfg.budgets.tenants.insert(
        "rich".into(),
        cairn_core::gateway_config::TokenLimits::default(),
    );
    let mut server = Server::start(&cfg).await;
    let c = named_client(&server, Some(server.token("acme", "ana")));
    let conv = c.new_conversation().await;
    // 100 input tokens per call: the first two calls fit under 150 (the check
    // is before each call), the third finds the budget spent.
    for _ in 0..2 {
        let answer = c.ask(&conv, "hello there").await;
        assert_eq!(answer["status"], "completed", "{answer}");
    }
    let r = c
        .post(
            &format!("/v1/conversations/{conv}/messages?wait=true"),
            json!({"content": "and again"}),
        )
        .await;
    let text = r.body.to_string();
    assert!(text.contains("budget_exceeded"), "{text}");
    assert!(text.contains("daily_input_tokens"), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
    let usage = c.get("/v1/usage").await;
    assert_eq!(usage.status, 200, "{}", usage.body);
    assert_eq!(usage.body["day"]["input_tokens"], 200);
    assert_eq!(usage.body["day"]["output_tokens"], 40);
    assert_eq!(usage.body["day"]["input_tokens_limit"], 150);
    assert_eq!(usage.body["month"]["input_tokens"], 200);
    assert!(usage.body["month"]["output_tokens_limit"].is_null());
    // Budgets are per tenant: another tenant (with no limit) still gets answers.
    let rich = named_client(&server, Some(server.token("rich", "ana")));
    let conv = rich.new_conversation().await;
    for _ in 0..3 {
        assert_eq!(rich.ask(&conv, "hi").await["status"], "completed");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_requests_turns_and_model_calls_without_ids() {
    let model = start_echo_model().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    with_echo_model(&mut cfg, &model);
    let mut server = Server::start(&cfg).await;
    let c = named_client(&server, Some(server.token("acme", "ana")));
    let conv = c.new_conversation().await;
    c.ask(&conv, "count me").await;
    assert_eq!(c.get("/v1/nope").await.status, 404);
    let scrape = named_client(&server, None).get("/metrics").await;
    assert_eq!(scrape.status, 200);
    assert!(
        scrape.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = scrape.body.as_str().unwrap().to_owned();
    for needle in [
        r#"cairn_http_requests_total{route="/v1/conversations",method="POST",status="201"}"#,
        r#"route="/v1/conversations/{id}/messages",method="POST",status="200""#,
        r#"cairn_http_requests_total{route="unmatched",method="GET",status="404"}"#,
        "cairn_http_request_duration_seconds_bucket",
        r#"cairn_turns_total{outcome="completed"}"#,
        "cairn_turn_duration_seconds_bucket",
        r#"cairn_model_calls_total{provider="openai",outcome="ok"}"#,
        r#"cairn_model_tokens_total{provider="openai",direction="input"}"#,
        "cairn_bus_published_total",
        "cairn_bus_consumed_total",
        "cairn_bus_consumer_lag_seconds",
        "cairn_streams_open",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    assert!(
        !text.contains(&conv),
        "a conversation id leaked into a label"
    );
    assert!(!text.contains("acme"), "a tenant leaked into a label");
    server.stop().await;

    // With metrics.bearer_token_env, /metrics wants that token.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.metrics.bearer_token_env = Some("CAIRN_TEST_METRICS_TOKEN".into());
    // The composition root reads the variable through `env`.
    let built = cairn::app::build(
        &cfg,
        &|k| (k == "CAIRN_TEST_METRICS_TOKEN").then(|| "scrape-secret-123".to_owned()),
        cairn_actors::ToolCatalog::new(),
        None,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        built
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    let http = reqwest::Client::new();
    let r = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/metrics"))
        .bearer_auth("wrong-token-xyz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/metrics"))
        .bearer_auth("scrape-secret-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = tx.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_configured_origins_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.cors.allowed_origins = vec!["https://app.example.com".into()];
    let mut server = Server::start(&cfg).await;
    let c = named_client(&server, None);
    let preflight = |origin: &'static str| {
        c.http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v1/conversations", c.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
    };
    let ok = preflight("https://app.example.com").send().await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let allowed = ok.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let evil = preflight("https://evil.example.com").send().await.unwrap();
    assert!(
        !evil.headers().contains_key("access-control-allow-origin"),
        "an unlisted origin gets no CORS grant"
    );
    // A real request from the allowed origin carries the grant and exposes the
    // rate-limit headers to the page.
    let token = server.token("acme", "ana");
    let r = c
        .http
        .get(format!("{}/v1/conversations", c.base))
        .bearer_auth(token)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("ratelimit-remaining"), "{exposed}");
    server.stop().await;
}

// ---- The OpenAI-compatible facade --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_talks_to_the_facade() {
    let python = std::env::var("CAIRN_TEST_PYTHON_MCP").expect(
        "CAIRN_TEST_PYTHON_MCP is not set: run the tests with scripts/test.sh, which installs the Python clients",
    );
    let model = start_echo_model().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    with_echo_model(&mut cfg, &model);
    cfg.llm.stream = true;
    cfg.agents = vec![cairn_core::desk_config::AgentProfile {
        name: "billing".into(),
        description: "Invoices and refunds.".into(),
        ..Default::default()
    }];
    let mut server = Server::start(&cfg).await;
    let token = server.token("acme", "ana");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&server.base)
        .arg(&token)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();

    let models = r["models"].as_array().unwrap();
    assert!(
        models.contains(&json!("cairn")) && models.contains(&json!("billing")),
        "{r}"
    );

    let plain = &r["plain"];
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["role"], "assistant");
    assert_eq!(plain["finish_reason"], "stop");
    // The messages array was the context: the model saw both user messages.
    assert_eq!(
        plain["content"], "You said: second question [users: 2]",
        "{r}"
    );
    assert_eq!(plain["prompt_tokens"], 100);
    assert_eq!(plain["completion_tokens"], 20);
    assert_eq!(plain["total_tokens"], 120);
    assert!(plain["cairn"]["conversation_id"].is_string(), "{r}");
    assert!(plain["cairn"]["turn_id"].is_string(), "{r}");
    assert!(plain["cairn"]["citations"].is_array(), "{r}");

    // Continuity: the third request sent one message, the model saw three.
    assert_eq!(
        r["header"]["content"], "You said: what did I say? [users: 3]",
        "{r}"
    );
    assert_eq!(
        r["user_field"]["content"], "You said: user two [users: 2]",
        "{r}"
    );

    let stream = &r["stream"];
    assert_eq!(
        stream["text"], "You said: stream this please [users: 1]",
        "{r}"
    );
    assert!(
        stream["pieces"].as_u64().unwrap() >= 3,
        "streamed in pieces: {r}"
    );
    assert_eq!(stream["finish_reason"], "stop");
    assert_eq!(stream["total_tokens"], 120);
    assert!(stream["cairn"]["conversation_id"].is_string(), "{r}");

    let errors = &r["errors"];
    assert_eq!(errors["unknown_model"]["status"], 404, "{r}");
    assert_eq!(errors["unknown_model"]["code"], "model_not_found");
    assert_eq!(errors["client_tools"]["status"], 400);
    assert_eq!(errors["client_tools"]["code"], "invalid_field");
    assert_eq!(errors["last_not_user"]["code"], "invalid_field");
    assert_eq!(errors["bad_token"]["status"], 401);
    assert_eq!(errors["bad_token"]["code"], "invalid_token");

    // The conversation the header named is a real one: the transcript holds
    // every message, and it is the caller's.
    let conv = r["header"]["conversation"].as_str().unwrap();
    let c = named_client(&server, Some(token.clone()));
    let t = c.get(&format!("/v1/conversations/{conv}/messages")).await;
    assert_eq!(t.status, 200);
    assert_eq!(t.body["items"].as_array().unwrap().len(), 6, "{}", t.body);
    let other = named_client(&server, Some(server.token("acme", "bea")));
    let r = other
        .post(
            "/v1/chat/completions",
            json!({"model": "cairn", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status, 200);
    let mut req = other.req(reqwest::Method::POST, "/v1/chat/completions");
    req = req
        .header("x-cairn-conversation", conv)
        .json(&json!({"model": "cairn", "messages": [{"role": "user", "content": "let me in"}]}));
    let r = other.send(req).await;
    assert_eq!(
        r.status, 409,
        "another user cannot continue ana's conversation: {}",
        r.body
    );

    // A profile named as the model answers the turn.
    let r = c
        .post(
            "/v1/chat/completions",
            json!({"model": "billing", "messages": [{"role": "user", "content": "refund?"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["cairn"]["agent"]["name"], "billing", "{}", r.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_facade_bounds_what_a_request_may_carry() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.agent.max_message_chars = 100;
    let mut server = Server::start(&cfg).await;
    let c = named_client(&server, Some(server.token("acme", "ana")));
    let user = |t: &str| json!({"role": "user", "content": t});
    let too_many: Vec<Value> = (0..257).map(|_| user("hi")).collect();
    let r = c
        .post(
            "/v1/chat/completions",
            json!({"model": "cairn", "messages": too_many}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "messages");
    // An earlier message past agent.max_message_chars is refused like the last one.
    let long = "x".repeat(101);
    let r = c
        .post(
            "/v1/chat/completions",
            json!({"model": "cairn", "messages": [user(&long), user("short")]}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "messages[0].content");
    let r = c
        .post(
            "/v1/chat/completions",
            json!({"model": "cairn", "messages": [user("hi")], "user": "u".repeat(257)}),
        )
        .await;
    assert_eq!(r.body["error"]["details"]["field"], "user", "{}", r.body);
    // A WebSocket frame past 64 KiB closes the socket instead of being read.
    let conv = c.new_conversation().await;
    let url = format!(
        "{}/v1/conversations/{conv}/ws",
        server.base.replace("http://", "ws://")
    );
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", server.token("acme", "ana"))
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures::{SinkExt, StreamExt};
    let big = json!({"type": "message", "content": "y".repeat(70 * 1024)}).to_string();
    let _ = ws
        .send(tokio_tungstenite::tungstenite::Message::Text(big.into()))
        .await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None
                | Some(Err(_))
                | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => {
                    return true;
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(end, Ok(true), "the oversized frame ended the socket");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_is_a_429_on_the_facade() {
    let model = start_echo_model().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    with_echo_model(&mut cfg, &model);
    cfg.budgets.default.daily_output_tokens = 10;
    let mut server = Server::start(&cfg).await;
    let c = named_client(&server, Some(server.token("acme", "ana")));
    let ask = json!({"model": "cairn", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        c.post("/v1/chat/completions", ask.clone()).await.status,
        200
    );
    let r = c.post("/v1/chat/completions", ask).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "budget_exceeded");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily_output_tokens")
    );
    server.stop().await;
}

// ---- WebSocket ------------------------------------------------------------------

mod ws {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    fn url(server: &Server, path: &str) -> String {
        format!("{}{path}", server.base.replace("http://", "ws://"))
    }

    async fn connect(
        server: &Server,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<(Socket, http::Response<Option<Vec<u8>>>), WsError> {
        let mut req = url(server, path).into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        tokio_tungstenite::connect_async(req).await
    }

    fn refused_status(e: WsError) -> u16 {
        match e {
            WsError::Http(resp) => resp.status().as_u16(),
            other => panic!("expected an HTTP refusal, got {other}"),
        }
    }

    /// Reads JSON frames until `stop` accepts one (5 s at most); returns them all.
    async fn read_until(ws: &mut Socket, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next())
                .await
                .expect("frames within 15 s")
                .expect("socket open")
                .unwrap();
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                let done = stop(&v);
                out.push(v);
                if done {
                    return out;
                }
            }
        }
    }

    /// A server, a conversation of acme/ana, and a socket on `path(conv)`.
    async fn opened(
        path: impl Fn(&str) -> String,
    ) -> (Server, tempfile::TempDir, String, Client, String, Socket) {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&config(dir.path(), None)).await;
        let token = server.token("acme", "ana");
        let c = named_client(&server, Some(token.clone()));
        let conv = c.new_conversation().await;
        let (ws, _) = connect(
            &server,
            &path(&conv),
            &[("authorization", format!("Bearer {token}"))],
        )
        .await
        .unwrap();
        (server, dir, token, c, conv, ws)
    }

    fn answered(v: &Value) -> bool {
        v["event"] == "answer.completed" || v["event"] == "turn.failed"
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_go_in_and_events_come_out_with_resume() {
        let (mut server, _dir, token, _c, conv, mut ws) =
            opened(|conv| format!("/v1/conversations/{conv}/ws")).await;
        ws.send(Message::Text(
            json!({"type": "message", "content": "what time is it?", "ref": 7})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        let frames = read_until(&mut ws, answered).await;
        let accepted = frames.iter().find(|f| f["type"] == "accepted").unwrap();
        assert_eq!(accepted["ref"], 7);
        let turn = accepted["turn_id"].as_str().unwrap();
        let events: Vec<&Value> = frames.iter().filter(|f| f["type"] == "event").collect();
        // The message's analysis runs beside the turn: its insights.updated may
        // come first.
        let first = events
            .iter()
            .find(|e| e["event"] != "insights.updated")
            .unwrap();
        assert_eq!(first["event"], "turn.started");
        assert!(
            events
                .iter()
                .all(|e| e["data"]["turn_id"] == turn || e["event"] == "insights.updated")
        );
        let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        // Bad frames get an error frame and the socket stays open.
        ws.send(Message::Text("not json".into())).await.unwrap();
        let f = read_until(&mut ws, |f| f["type"] == "error").await;
        assert_eq!(f.last().unwrap()["code"], "malformed_json");
        ws.send(Message::Text(
            json!({"type": "cancel", "turn_id": turn})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        let f = read_until(&mut ws, |f| f["type"] == "error").await;
        assert_eq!(f.last().unwrap()["code"], "turn_not_running");
        ws.close(None).await.unwrap();

        // Resume: a new socket with `since` gets exactly the later events.
        let since = ids[1];
        let (mut again, _) = connect(
            &server,
            &format!("/v1/conversations/{conv}/ws?since={since}"),
            &[("authorization", format!("Bearer {token}"))],
        )
        .await
        .unwrap();
        let replay = read_until(&mut again, answered).await;
        let replayed: Vec<u64> = replay
            .iter()
            .filter(|f| f["type"] == "event")
            .map(|f| f["id"].as_u64().unwrap())
            .collect();
        assert_eq!(
            replayed.first().copied(),
            Some(ids[2]),
            "{replayed:?} after {since}"
        );
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn browsers_authenticate_with_a_subprotocol_or_a_single_use_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), None);
        cfg.server.max_streams_per_user = 2;
        let mut server = Server::start(&cfg).await;
        let token = server.token("acme", "ana");
        let c = named_client(&server, Some(token.clone()));
        let conv = c.new_conversation().await;
        let path = format!("/v1/conversations/{conv}/ws");

        // No credentials, a bad token: refused before the upgrade.
        assert_eq!(
            refused_status(connect(&server, &path, &[]).await.unwrap_err()),
            401
        );
        let bad = [(
            "sec-websocket-protocol",
            "cairn.bearer.abc.def.ghi, cairn.v1".to_owned(),
        )];
        assert_eq!(
            refused_status(connect(&server, &path, &bad).await.unwrap_err()),
            401
        );
        // Another user's conversation reads as not found.
        let bea = [(
            "authorization",
            format!("Bearer {}", server.token("acme", "bea")),
        )];
        assert_eq!(
            refused_status(connect(&server, &path, &bea).await.unwrap_err()),
            404
        );

        // The token as a subprotocol; the server picks `cairn.v1`.
        let proto = [(
            "sec-websocket-protocol",
            format!("cairn.bearer.{token}, cairn.v1"),
        )];
        let (first, resp) = connect(&server, &path, &proto).await.unwrap();
        assert_eq!(resp.headers()["sec-websocket-protocol"], "cairn.v1");

        // A ticket works once.
        let t = c.post("/v1/ws-ticket", json!({})).await;
        assert_eq!(t.status, 200, "{}", t.body);
        let ticket = t.body["ticket"].as_str().unwrap().to_owned();
        let with_ticket = format!("{path}?ticket={ticket}");
        let (second, _) = connect(&server, &with_ticket, &[]).await.unwrap();
        // The user's two streams are open: a third is refused (too_many_streams).
        let auth = [("authorization", format!("Bearer {token}"))];
        assert_eq!(
            refused_status(connect(&server, &path, &auth).await.unwrap_err()),
            429
        );
        drop(first);
        drop(second);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A used ticket is refused, also once the user has room again.
        assert_eq!(
            refused_status(connect(&server, &with_ticket, &[]).await.unwrap_err()),
            401
        );
        let (third, _) = connect(&server, &path, &auth).await.unwrap();
        drop(third);

        // Not an upgrade: the error contract.
        let r = c.get(&path).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_field");
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_seed_path_sends_connected_then_intelligence_updates() {
        let (mut server, _dir, _token, c, conv, mut ws) =
            opened(|conv| format!("/ws/conversations/{conv}/stream")).await;
        let hello = read_until(&mut ws, |_| true).await;
        assert_eq!(hello[0]["type"], "connected");
        assert_eq!(hello[0]["conversation_id"], conv.as_str());
        c.ask(
            &conv,
            "I am furious, my invoice is wrong and nobody answers!",
        )
        .await;
        // The analysis and the turn run side by side: either may come first.
        let seen = std::cell::Cell::new((false, false));
        let frames = read_until(&mut ws, |f| {
            let (mut update, mut turn) = seen.get();
            update |= f["type"] == "intelligence_update";
            turn |= f["type"] == "turn.started";
            seen.set((update, turn));
            update && turn
        })
        .await;
        let update = frames
            .iter()
            .find(|f| f["type"] == "intelligence_update")
            .unwrap();
        assert_eq!(update["conversation_id"], conv.as_str());
        assert!(update["data"].is_object(), "{update}");
        server.stop().await;
    }
}

// ---- OpenAPI ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&config(dir.path(), None)).await;
    let anon = named_client(&server, None);
    let r = anon.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    let doc = r.body;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let codes: Vec<&str> =
        doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
    for code in [
        "invalid_token",
        "rate_limited",
        "budget_exceeded",
        "model_not_found",
        "internal",
    ] {
        assert!(
            codes.contains(&code),
            "{code} missing from the Error schema"
        );
    }

    // Validated by the Python ecosystem's validator.
    let python = std::env::var("CAIRN_TEST_PYTHON_MCP").expect(
        "CAIRN_TEST_PYTHON_MCP is not set: run the tests with scripts/test.sh, which installs openapi-spec-validator",
    );
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = tokio::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every documented operation is routed: probing it never hits the
    // unknown-route or wrong-method fallbacks.
    let token = server.token("acme", "ana");
    let c = named_client(&server, Some(token));
    let paths = doc["paths"].as_object().unwrap();
    let mut probed = 0;
    for (path, item) in paths {
        for method in ["get", "post", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            assert!(
                item[method]["responses"].as_object().unwrap().len() >= 2,
                "{method} {path} documents its errors"
            );
            let concrete = path.replace("{id}", "no-such-id");
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut req = c.req(m, &concrete);
            if method == "post" || method == "patch" {
                req = req.json(&json!({}));
            }
            let r = c.send(req).await;
            let fallback = r.body["error"]["message"] == "no such route"
                || r.body["error"]["code"] == "method_not_allowed";
            assert!(
                !fallback,
                "{method} {path} is documented but not routed: {}",
                r.body
            );
            probed += 1;
        }
    }
    assert!(probed >= 50, "only {probed} operations documented");
    for must in [
        "/v1/chat/completions",
        "/v1/conversations/{id}/ws",
        "/v1/usage",
        "/metrics",
        "/mcp",
    ] {
        assert!(paths.contains_key(must), "{must} is not documented");
    }
    // The router registers routes only through the OpenAPI router: a plain
    // `.route(` in `documented` would serve an undocumented route.
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cairn-api/src/router.rs"),
    )
    .unwrap();
    let body = source
        .split("pub fn documented")
        .nth(1)
        .unwrap()
        .split("\n}\n")
        .next()
        .unwrap();
    assert!(
        !body.contains(".route("),
        "an undocumented route in router::documented"
    );

    // The reference page and its script come from the binary.
    let page = anon.get("/docs").await;
    assert_eq!(page.status, 200);
    let html = page.body.as_str().unwrap();
    assert!(html.contains("/docs/rapidoc-min.js") && html.contains("/openapi.json"));
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "no CDN: {html}"
    );
    let js = anon
        .http
        .get(format!("{}/docs/rapidoc-min.js", anon.base))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.text().await.unwrap().len() > 500_000,
        "the whole script is served"
    );
    server.stop().await;
}

// ---- OpenTelemetry -----------------------------------------------------------------

mod otel {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use prost::Message as _;

    #[derive(Debug, Clone)]
    struct SpanSeen {
        name: String,
        trace: String,
        id: String,
        parent: String,
        attributes: HashMap<String, String>,
    }

    type Spans = Arc<Mutex<Vec<SpanSeen>>>;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// An OTLP/HTTP receiver: decodes `ExportTraceServiceRequest` protobufs.
    async fn receiver() -> (String, Spans) {
        let spans: Spans = Arc::default();
        let seen = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let req = ExportTraceServiceRequest::decode(body).unwrap();
                    for rs in req.resource_spans {
                        for ss in rs.scope_spans {
                            for s in ss.spans {
                                let attributes = s
                                    .attributes
                                    .iter()
                                    .map(|kv| {
                                        let v = kv
                                            .value
                                            .as_ref()
                                            .and_then(|v| v.value.as_ref())
                                            .map(|v| format!("{v:?}"))
                                            .unwrap_or_default();
                                        (kv.key.clone(), v)
                                    })
                                    .collect();
                                seen.lock().unwrap().push(SpanSeen {
                                    name: s.name,
                                    trace: hex(&s.trace_id),
                                    id: hex(&s.span_id),
                                    parent: hex(&s.parent_span_id),
                                    attributes,
                                });
                            }
                        }
                    }
                    (
                        [(header::CONTENT_TYPE, "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        (common::serve_local(app).await, spans)
    }

    /// A model that calls the tool whose name contains `whoami`, then answers
    /// with the observation.
    async fn tool_model() -> String {
        async fn chat(axum::Json(body): axum::Json<Value>) -> axum::Json<Value> {
            let messages = body["messages"].as_array().cloned().unwrap_or_default();
            let observation = messages
                .iter()
                .rev()
                .take_while(|m| m["role"] != "user")
                .find(|m| m["role"] == "tool")
                .cloned();
            let tool = body["tools"]
                .as_array()
                .and_then(|ts| {
                    ts.iter()
                        .filter_map(|t| t["function"]["name"].as_str())
                        .find(|n| n.contains("whoami"))
                })
                .unwrap_or("missing")
                .to_owned();
            axum::Json(match observation {
                None => {
                    json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": tool, "arguments": "{}"}}]}}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
                }
                Some(obs) => json!({"choices": [{"message": {"role": "assistant",
                    "content": format!("meta: {}", obs["content"].as_str().unwrap_or("?"))}}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 5}}),
            })
        }
        common::serve_local(
            axum::Router::new().route("/chat/completions", axum::routing::post(chat)),
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_trace_links_request_turn_model_and_tool() {
        let python = std::env::var("CAIRN_TEST_PYTHON_MCP").expect(
            "CAIRN_TEST_PYTHON_MCP is not set: run the tests with scripts/test.sh, which installs the MCP Python SDK",
        );
        let (otlp, spans) = receiver().await;
        let model = tool_model().await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), None);
        with_echo_model(&mut cfg, &model);
        cfg.telemetry.otlp_endpoint = Some(otlp);
        cfg.mcp.servers = vec![cairn_core::config::McpServerConfig {
            name: "trace".into(),
            transport: cairn_core::config::McpTransport::Stdio,
            command: Some(python),
            args: vec![
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/python/meta_echo_server.py")
                    .display()
                    .to_string(),
            ],
            env: Default::default(),
            cwd: None,
            url: None,
            headers: Default::default(),
            timeout: Duration::from_secs(20),
            allowed_tenants: vec!["acme".into()],
            allowed_tools: vec![],
            denied_tools: vec![],
        }];
        let mut server = Server::start(&cfg).await;
        let c = named_client(&server, Some(server.token("acme", "ana")));
        for _ in 0..500 {
            if c.get("/v1/tools").await.body["servers"][0]["health"] == "healthy" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let tools = c.get("/v1/tools").await;
        assert_eq!(
            tools.body["servers"][0]["health"], "healthy",
            "{}",
            tools.body
        );
        let conv = c.new_conversation().await;
        let answer = c.ask(&conv, "who am I?").await;
        let text = answer["answer"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            text.contains("traceparent"),
            "the MCP server saw no traceparent: {answer}"
        );
        // Spans are exported in batches: stopping the server flushes them.
        server.stop().await;

        let spans = spans.lock().unwrap().clone();
        let turn = spans
            .iter()
            .find(|s| s.name.starts_with("invoke_agent"))
            .unwrap_or_else(|| panic!("no turn span in {spans:#?}"));
        let trace = turn.trace.clone();
        let http = spans
            .iter()
            .find(|s| s.id == turn.parent)
            .unwrap_or_else(|| panic!("the turn's parent was not exported: {spans:#?}"));
        assert_eq!(http.name, "POST /v1/conversations/{id}/messages");
        assert_eq!(http.trace, trace);
        assert!(
            http.attributes["http.response.status_code"].contains("200"),
            "{http:?}"
        );
        let chats: Vec<&SpanSeen> = spans.iter().filter(|s| s.name == "chat echo").collect();
        assert_eq!(chats.len(), 2, "{spans:#?}");
        for chat in &chats {
            assert_eq!(
                (chat.trace.as_str(), chat.parent.as_str()),
                (trace.as_str(), turn.id.as_str())
            );
            assert!(chat.attributes["gen_ai.request.model"].contains("echo"));
            assert!(chat.attributes["gen_ai.provider.name"].contains("openai"));
            assert!(
                chat.attributes.contains_key("gen_ai.usage.input_tokens"),
                "{chat:?}"
            );
        }
        let tool = spans
            .iter()
            .find(|s| s.name == "execute_tool trace.whoami")
            .unwrap_or_else(|| panic!("no tool span in {spans:#?}"));
        assert_eq!(
            (tool.trace.as_str(), tool.parent.as_str()),
            (trace.as_str(), turn.id.as_str())
        );
        // The MCP server got the tool span's context in `_meta`.
        assert!(
            text.contains(&format!("00-{trace}-{}-01", tool.id)),
            "{text} does not carry {trace}/{}",
            tool.id
        );
    }
}
