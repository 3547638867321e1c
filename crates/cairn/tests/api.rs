//! The HTTP API end to end: a real server on a loopback port, the embedded
//! adapters (and Redis where noted), the offline planner.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

async fn server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&config(dir.path(), None)).await;
    (s, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_crud_and_pagination() {
    let (mut s, _dir) = server().await;
    let c = s.client(&s.token("acme", "ana"));
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = c
            .post("/v1/conversations", json!({"title": format!("t{i}")}))
            .await;
        assert_eq!(r.status, 201);
        assert_eq!(r.body["title"], format!("t{i}"));
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let p1 = c.get("/v1/conversations?limit=2").await;
    assert_eq!(p1.status, 200);
    let got: Vec<&str> = p1.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[0].as_str(), ids[1].as_str()]);
    let cursor = p1.body["next_cursor"].as_str().unwrap();
    let p2 = c
        .get(&format!("/v1/conversations?limit=2&cursor={cursor}"))
        .await;
    let got: Vec<&str> = p2.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[3].as_str()]);
    let p3 = c
        .get(&format!(
            "/v1/conversations?limit=2&cursor={}",
            p2.body["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(p3.body["items"].as_array().unwrap().len(), 1);
    assert!(p3.body["next_cursor"].is_null());

    let one = c.get(&format!("/v1/conversations/{}", ids[0])).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["title"], "t0");
    assert_eq!(
        c.delete(&format!("/v1/conversations/{}", ids[0]))
            .await
            .status,
        204
    );
    let gone = c.get(&format!("/v1/conversations/{}", ids[0])).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.body["error"]["code"], "conversation_not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_answered_with_memory_and_streamed() {
    let (mut s, _dir) = server().await;
    let c = s.client(&s.token("acme", "ana"));
    let conv = c.new_conversation().await;

    // 202 with a turn handle, then the events.
    let r = c
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"content": "Hi! My name is Ana and my order number is 4417."}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let turn = r.body["turn_id"].as_str().unwrap().to_owned();
    let events_url = r.body["events_url"].as_str().unwrap().to_owned();
    assert!(r.body["message_id"].is_string());
    let events = c
        .sse(&events_url, None, Duration::from_secs(10), |ev| {
            ev.iter().any(|e| is_terminal(&e.1))
        })
        .await;
    // The conversation's stream also carries the message's analysis
    // (`insights.updated`, with the message id): not part of the turn.
    let message_id = r.body["message_id"].as_str().unwrap().to_owned();
    let (events, analysis): (Vec<_>, Vec<_>) = events
        .into_iter()
        .partition(|e| e.2["turn_id"] == turn.as_str());
    assert!(
        analysis
            .iter()
            .all(|e| e.1 == "insights.updated" && e.2["message_id"] == message_id.as_str()),
        "{analysis:?}"
    );
    let kinds: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    // The offline planner looks in the (empty) knowledge base first.
    assert_eq!(
        kinds,
        vec![
            "turn.started",
            "tool.called",
            "tool.completed",
            "answer.completed"
        ]
    );
    assert_eq!(events[1].2["tool"], "search_knowledge");
    assert!(events.iter().all(|e| e.2["turn_id"] == turn.as_str()));
    let ids: Vec<u64> = events.iter().map(|e| e.0.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "ids increase: {ids:?}");

    // wait=true: the offline planner answers from memory, with a citation.
    let body = c.ask(&conv, "What is my order number?").await;
    assert_eq!(body["status"], "completed");
    assert!(
        body["answer"]["content"].as_str().unwrap().contains("4417"),
        "{body}"
    );
    assert_eq!(body["answer"]["citations"][0]["source"], "conversation");
    assert_eq!(body["answer"]["metadata"]["llm_configured"], false);

    // Accept: text/event-stream streams the turn in the response itself.
    let resp = c
        .req(
            reqwest::Method::POST,
            &format!("/v1/conversations/{conv}/messages"),
        )
        .header("accept", "text/event-stream")
        .json(&json!({"content": "/tool current_time"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let started = std::time::Instant::now();
    let streamed = collect_sse(resp, Duration::from_secs(10), |_| false).await;
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the response ended by itself"
    );
    let kinds: Vec<&str> = streamed.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "turn.started",
            "tool.called",
            "tool.completed",
            "answer.completed"
        ],
        "the stream ends after the answer"
    );
    assert_eq!(streamed[1].2["tool"], "current_time");
    assert!(
        streamed[3].2["content"]
            .as_str()
            .unwrap()
            .starts_with("Result of current_time: 20")
    );

    // The transcript.
    let t = c.get(&format!("/v1/conversations/{conv}/messages")).await;
    let items = t.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    assert_eq!(items[0]["role"], "user");
    assert_eq!(items[5]["role"], "assistant");
    assert_eq!(items[5]["steps"].as_array().unwrap().len(), 2);
    let meta = c.get(&format!("/v1/conversations/{conv}")).await;
    assert_eq!(meta.body["message_count"], 6);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_with_last_event_id_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    // Two events per turn keep the arithmetic below readable (no knowledge
    // search step, no `insights.updated` between them).
    cfg.knowledge.enabled = false;
    cfg.insights.enabled = false;
    let mut s = Server::start(&cfg).await;
    let token = s.token("acme", "ana");
    let c = s.client(&token);
    let conv = c.new_conversation().await;
    c.ask(&conv, "first question").await;
    c.ask(&conv, "second question").await;
    let path = format!("/v1/conversations/{conv}/events");
    let before = c
        .sse(&path, None, Duration::from_secs(5), |ev| ev.len() == 4)
        .await;
    assert_eq!(before.len(), 4);
    // The client saw up to event 3 when the connection (and the server) went away.
    let last_seen = before[2].0.clone();
    s.stop().await;

    let mut s = Server::start(&cfg).await;
    let c = s.client(&token);
    c.ask(&conv, "third question").await;
    let after = c
        .sse(&path, Some(&last_seen), Duration::from_secs(5), |ev| {
            ev.len() == 3
        })
        .await;
    let ids: Vec<u64> = after.iter().map(|e| e.0.parse().unwrap()).collect();
    assert_eq!(ids, vec![4, 5, 6], "every later event, none twice");
    assert_eq!(after[0].1, "answer.completed");
    assert_eq!(after[2].1, "answer.completed");
    // ?after= works the same way.
    let again = c
        .sse(
            &format!("{path}?after=5"),
            None,
            Duration::from_secs(5),
            |ev| !ev.is_empty(),
        )
        .await;
    assert_eq!(again[0].0, "6");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_users_cannot_see_each_others_conversations() {
    let (mut s, _dir) = server().await;
    let ana = s.client(&s.token("acme", "ana"));
    let eve = s.client(&s.token("evil", "ana")); // same user name, other tenant
    let bob = s.client(&s.token("acme", "bob")); // same tenant, other user
    let conv = ana.new_conversation().await;
    ana.ask(&conv, "my secret is 1234").await;
    for other in [&eve, &bob] {
        for path in [
            format!("/v1/conversations/{conv}"),
            format!("/v1/conversations/{conv}/messages"),
            format!("/v1/conversations/{conv}/events"),
        ] {
            let r = other.get(&path).await;
            assert_eq!(r.status, 404, "{path}: {:?}", r.body);
            assert_eq!(r.body["error"]["code"], "conversation_not_found");
        }
        let r = other
            .post(
                &format!("/v1/conversations/{conv}/messages"),
                json!({"content": "x"}),
            )
            .await;
        assert_eq!(r.status, 404);
        assert_eq!(
            other
                .delete(&format!("/v1/conversations/{conv}"))
                .await
                .status,
            404
        );
        let list = other.get("/v1/conversations").await;
        assert!(list.body["items"].as_array().unwrap().is_empty());
    }
    // The other tenant cannot create the same id to read or write into it either.
    let r = eve.post("/v1/conversations", json!({"id": conv})).await;
    assert_eq!(r.status, 201, "ids are per tenant");
    assert!(
        eve.get(&format!("/v1/conversations/{conv}/messages"))
            .await
            .body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ana.get(&format!("/v1/conversations/{conv}/messages"))
            .await
            .body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    s.stop().await;
}

fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{code}: {:?}", r.body);
    let e = &r.body["error"];
    assert_eq!(e["code"], code, "{:?}", r.body);
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(e.get("details").is_some());
    let rid = e["request_id"].as_str().unwrap();
    assert!(!rid.is_empty());
    assert_eq!(r.headers["x-request-id"].to_str().unwrap(), rid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_its_code_status_and_request_id() {
    let (mut s, _dir) = server().await;
    let token = s.token("acme", "ana");
    let c = s.client(&token);
    let conv = c.new_conversation().await;
    let msgs = format!("/v1/conversations/{conv}/messages");

    let raw = |body: &'static str| {
        c.req(reqwest::Method::POST, &msgs)
            .header("content-type", "application/json")
            .body(body)
    };
    assert_error(&c.send(raw("{\"content\": ")).await, 400, "malformed_json");
    let r = c.send(raw("{}")).await;
    assert_error(&r, 422, "missing_field");
    assert_eq!(r.body["error"]["details"]["field"], "content");
    assert_error(&c.send(raw("{\"content\": 5}")).await, 400, "invalid_field");
    assert_error(
        &c.send(raw("{\"content\": \"  \"}")).await,
        400,
        "invalid_field",
    );
    assert_error(
        &c.send(
            c.req(reqwest::Method::POST, &msgs)
                .header("content-type", "text/plain")
                .body("hi"),
        )
        .await,
        415,
        "unsupported_media_type",
    );
    let huge = json!({"content": "x".repeat(2 * 1024 * 1024)});
    // The server answers 413 before reading the body and closes the connection;
    // `Connection: close` keeps the client from reusing it for the next request
    // (which otherwise fails now and then with a broken pipe).
    assert_error(
        &c.send(
            c.req(reqwest::Method::POST, &msgs)
                .header("connection", "close")
                .json(&huge),
        )
        .await,
        413,
        "payload_too_large",
    );
    assert_error(
        &c.post(
            "/v1/conversations/nope-404/messages",
            json!({"content": "hi"}),
        )
        .await,
        404,
        "conversation_not_found",
    );
    assert_error(
        &c.get("/v1/conversations?limit=0").await,
        400,
        "invalid_field",
    );
    assert_error(&c.get("/v1/nothing-here").await, 404, "not_found");
    assert_error(
        &c.send(c.req(reqwest::Method::PUT, "/v1/conversations"))
            .await,
        405,
        "method_not_allowed",
    );

    // Authentication.
    let anon = Client {
        token: None,
        ..s.client("")
    };
    assert_error(&anon.get("/v1/conversations").await, 401, "missing_token");
    let expired = jwt(
        json!({"sub": "ana", "tenant": "acme", "exp": chrono::Utc::now().timestamp() - 3600}),
        &s,
    );
    assert_error(
        &s.client(&expired).get("/v1/conversations").await,
        401,
        "token_expired",
    );
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "ana", "tenant": "acme", "exp": chrono::Utc::now().timestamp() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-server-secret-at-all!!"),
    )
    .unwrap();
    assert_error(
        &s.client(&forged).get("/v1/conversations").await,
        401,
        "invalid_token",
    );
    assert_error(
        &s.client("not.a.jwt").get("/v1/conversations").await,
        401,
        "invalid_token",
    );

    // X-Request-Id is echoed when sent, generated otherwise, on success too.
    let r = c
        .send(
            c.req(reqwest::Method::GET, "/v1/conversations")
                .header("x-request-id", "trace-42"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-request-id"], "trace-42");
    let r = c
        .send(
            c.req(reqwest::Method::GET, "/v1/nope")
                .header("x-request-id", "trace-43"),
        )
        .await;
    assert_eq!(r.body["error"]["request_id"], "trace-43");
    let r = c.get("/live").await;
    assert!(!r.headers["x-request-id"].is_empty());
    s.stop().await;
}

/// Signs claims with the server's own secret.
fn jwt(claims: Value, s: &Server) -> String {
    let secret = std::fs::read_to_string(s.state_dir().join(cairn::secret::SECRET_FILE)).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes()),
    )
    .unwrap()
}

trait StateDir {
    fn state_dir(&self) -> std::path::PathBuf;
}
impl StateDir for Server {
    fn state_dir(&self) -> std::path::PathBuf {
        self.data_dir.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_components() {
    let (mut s, _dir) = server().await;
    let anon = Client {
        token: None,
        ..s.client("")
    };
    let h = anon.get("/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.body["status"], "ok");
    assert_eq!(h.body["components"]["memory"]["backend"], "embedded");
    assert_eq!(h.body["components"]["memory"]["status"], "ok");
    assert_eq!(h.body["components"]["bus"]["backend"], "embedded");
    assert_eq!(h.body["components"]["model"]["provider"], "offline");
    assert_eq!(h.body["components"]["model"]["llm_configured"], false);
    assert_eq!(h.body["components"]["knowledge"]["retrieval"], "bm25_only");
    assert_eq!(h.body["components"]["knowledge"]["backend"], "qdrant-edge");
    assert_eq!(anon.get("/ready").await.status, 200);
    assert_eq!(anon.get("/live").await.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_flow_runs_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Some(redis_url()));
    let mut s = Server::start(&cfg).await;
    let token = s.token("acme", "ana");
    let c = s.client(&token);
    let health = c.get("/health").await;
    assert_eq!(health.body["components"]["memory"]["backend"], "redis");
    let conv = c.new_conversation().await;
    c.ask(&conv, "My name is Ana. I live in Porto.").await;
    let body = c.ask(&conv, "Which city do I live in?").await;
    assert!(
        body["answer"]["content"]
            .as_str()
            .unwrap()
            .contains("Porto"),
        "{body}"
    );
    s.stop().await;
    // Memory and events live in Redis: a new server (new data dir) sees them.
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg2 = config(dir2.path(), None);
    cfg2.redis = cfg.redis.clone();
    let mut s2 = Server::start(&cfg2).await;
    let c2 = s2.client(&s2.token("acme", "ana"));
    assert_eq!(
        c2.get(&format!("/v1/conversations/{conv}/messages"))
            .await
            .body["items"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let ev = c2
        .sse(
            &format!("/v1/conversations/{conv}/events"),
            Some("2"),
            Duration::from_secs(5),
            |ev| ev.len() == 2,
        )
        .await;
    assert_eq!(
        ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        vec!["3", "4"]
    );
    s2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_returns_the_callers_ranked_chunks_with_citations() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), None);
    {
        // Ingest the sample knowledge base before the server owns the store.
        let kb = cairn::app::open_knowledge(&cfg, &|_| None).await.unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kb");
        let tenant = cairn_core::TenantId::parse("acme").unwrap();
        let s = cairn::ingest::ingest_paths(&kb, &tenant, &[root])
            .await
            .unwrap();
        assert_eq!(s.added, 30);
    }
    let mut s = Server::start(&cfg).await;
    let c = s.client(&s.token("acme", "ana"));
    let r = c
        .get("/v1/search?q=recovery%20codes%20lost%20phone&limit=3")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let first = &r.body["items"][0];
    assert_eq!(first["document_id"], "account.two-factor.md");
    assert_eq!(first["title"], "Two-factor authentication");
    assert_eq!(
        first["section"],
        "Two-factor authentication > Recovery codes"
    );
    assert!(first["score"].as_f64().unwrap() > 0.0);
    assert_eq!(r.body["mode"], "sparse", "no dense embedder in this config");
    // Filters, another tenant, and bad parameters.
    let r = c
        .get("/v1/search?q=refund&document_id=shipping.international.md")
        .await;
    assert!(
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["document_id"] == "shipping.international.md")
    );
    let other = s.client(&s.token("evil", "ana"));
    assert!(
        other.get("/v1/search?q=recovery%20codes").await.body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_error(&c.get("/v1/search").await, 422, "missing_field");
    assert_error(
        &c.get("/v1/search?q=x&limit=500").await,
        400,
        "invalid_field",
    );
    assert_error(
        &c.get("/v1/search?q=x&mode=dense").await,
        400,
        "invalid_field",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_with_an_idempotency_key_runs_one_turn() {
    let (mut s, _dir) = server().await;
    let c = s.client(&s.token("acme", "ana"));
    let conv = c.new_conversation().await;
    let post = |key: &'static str, conv: String| {
        let c = &c;
        async move {
            c.send(
                c.req(
                    reqwest::Method::POST,
                    &format!("/v1/conversations/{conv}/messages?wait=true"),
                )
                .header("idempotency-key", key)
                .json(&json!({"content": "My order number is 4417."})),
            )
            .await
        }
    };
    let first = post("order-4417:try", conv.clone()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let again = post("order-4417:try", conv.clone()).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    for field in ["message_id", "turn_id"] {
        assert_eq!(first.body[field], again.body[field], "{field}");
    }
    assert_eq!(
        first.body["answer"]["content"],
        again.body["answer"]["content"]
    );
    let history = c.get(&format!("/v1/conversations/{conv}/messages")).await;
    assert_eq!(
        history.body["items"].as_array().unwrap().len(),
        2,
        "{:?}",
        history.body
    );

    // The same key in another conversation is another message.
    let other = c.new_conversation().await;
    let elsewhere = post("order-4417:try", other).await;
    assert_ne!(elsewhere.body["message_id"], first.body["message_id"]);

    let bad = c
        .send(
            c.req(
                reqwest::Method::POST,
                &format!("/v1/conversations/{conv}/messages"),
            )
            .header("idempotency-key", "has space")
            .json(&json!({"content": "hi"})),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"]["code"], "invalid_field", "{:?}", bad.body);
    s.stop().await;
}
