//! Streams that end when they must (token expiry, deletion), bounded Redis
//! connections for followers, bounded queues and tool fan-out, and provider
//! errors that reach users as codes: on a real server built by the same
//! composition root as `cairn serve`.

#![allow(clippy::unwrap_used)]

mod common;

use async_trait::async_trait;
use axum::Json;
use axum::routing::post;
use cairn_actors::ToolCatalog;
use cairn_core::config::Provider;
use cairn_core::ports::{ChatModel, ChatRequest, ChatResponse, DeltaSender, ModelError};
use cairn_core::{TenantId, ToolCall, UserId};
use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn sse_request(c: &Client, conv: &str) -> reqwest::RequestBuilder {
    c.req(
        reqwest::Method::GET,
        &format!("/v1/conversations/{conv}/events"),
    )
    .header("accept", "text/event-stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_conversation_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&config(dir.path(), None)).await;
    let c = s.client(&s.token("acme", "ana"));
    let r = c
        .post("/v1/conversations", json!({"id": "reused-id"}))
        .await;
    assert_eq!(r.status, 201);
    let resp = sse_request(&c, "reused-id").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(collect_sse(resp, Duration::from_secs(15), |_| false));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.delete("/v1/conversations/reused-id").await.status, 204);
    // A new conversation under the same id, with a turn: none of its events
    // may reach the old subscriber.
    let r = c
        .post("/v1/conversations", json!({"id": "reused-id"}))
        .await;
    assert_eq!(r.status, 201);
    c.ask("reused-id", "a message of the new conversation")
        .await;
    let events = reader.await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1, "error");
    assert_eq!(events[0].2["code"], "conversation_deleted");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&config(dir.path(), None)).await;
    let c = s.client(&s.token("acme", "ana"));
    let conv = c.new_conversation().await;
    let short = s
        .auth
        .mint(
            &UserId::parse("ana").unwrap(),
            &TenantId::parse("acme").unwrap(),
            Duration::from_secs(2),
            &[],
        )
        .unwrap();
    let viewer = s.client(&short);
    let started = std::time::Instant::now();
    let resp = sse_request(&viewer, &conv).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let events = collect_sse(resp, Duration::from_secs(20), |_| false).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        events.last().unwrap().2["code"],
        "token_expired",
        "{events:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_share_a_bounded_number_of_redis_connections() {
    let dir = tempfile::tempdir().unwrap();
    let url = redis_url();
    let mut s = Server::start(&config(dir.path(), Some(url.clone()))).await;
    let redis = redis::Client::open(url).unwrap();
    let mut admin = redis.get_multiplexed_async_connection().await.unwrap();
    let clients = |list: String| list.lines().count();
    let c = s.client(&s.token("acme", "ana"));
    let conv = c.new_conversation().await;
    // One stream first: the hub's connection exists from then on.
    let mut open = vec![sse_request(&c, &conv).send().await.unwrap()];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    // Forty more followers of forty conversations, from four users.
    for i in 0..40 {
        let user = format!("u{}", i % 4);
        let c = s.client(&s.token("acme", &user));
        let conv = c.new_conversation().await;
        let resp = sse_request(&c, &conv).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        open.push(resp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        clients(after.clone()) <= clients(before.clone()) + 1,
        "Redis clients grew from {} to {} with 40 more streams",
        clients(before),
        clients(after)
    );
    // The followers still see new events at once.
    let conv2 = c.new_conversation().await;
    let resp = sse_request(&c, &conv2).send().await.unwrap();
    let reader = tokio::spawn(collect_sse(resp, Duration::from_secs(10), |evs| {
        evs.iter().any(|e| is_terminal(&e.1))
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    c.post(
        &format!("/v1/conversations/{conv2}/messages"),
        json!({"content": "hello"}),
    )
    .await;
    let events = reader.await.unwrap();
    assert!(events.iter().any(|e| is_terminal(&e.1)), "{events:?}");
    // Alone this takes ~50 ms; the bound leaves room for a loaded 2-core CI
    // machine (a full suite once took 4.1 s) while still catching events that
    // only arrive by some slow fallback instead of at once.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    drop(open);
    s.stop().await;
}

/// A model that holds every call until released, then answers.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
}

#[async_trait]
impl ChatModel for Gate {
    fn provider(&self) -> &'static str {
        "gate"
    }

    async fn complete(
        &self,
        _request: &ChatRequest,
        _deltas: Option<&DeltaSender>,
    ) -> Result<ChatResponse, ModelError> {
        while !self.open.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(ChatResponse {
            content: "done".into(),
            ..Default::default()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_queue_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.agent.max_queued_messages = 3;
    let gate = Arc::new(Gate::default());
    let mut s = Server::start_with(&cfg, ToolCatalog::new(), Some(gate.clone())).await;
    let c = s.client(&s.token("acme", "ana"));
    let conv = c.new_conversation().await;
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..10 {
        let r = c
            .post(
                &format!("/v1/conversations/{conv}/messages"),
                json!({"content": format!("m{i}")}),
            )
            .await;
        if r.status == 202 {
            accepted += 1;
            // Let the actor queue it before the next post.
            tokio::time::sleep(Duration::from_millis(300)).await;
        } else {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a post past the bound is refused");
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (429, Some("queue_full"))
    );
    assert_eq!(accepted, 3);
    // Once answered, the queue takes messages again.
    gate.open.store(true, Ordering::SeqCst);
    for _ in 0..200 {
        let r = c.get(&format!("/v1/conversations/{conv}/messages")).await;
        if r.body["items"].as_array().unwrap().len() == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.ask(&conv, "after the queue drained").await;
    s.stop().await;
}

/// A model that asks for 20 tool calls at once, then answers.
struct FanOut;

#[async_trait]
impl ChatModel for FanOut {
    fn provider(&self) -> &'static str {
        "fan-out"
    }

    async fn complete(
        &self,
        request: &ChatRequest,
        _deltas: Option<&DeltaSender>,
    ) -> Result<ChatResponse, ModelError> {
        let observed = request
            .messages
            .iter()
            .filter(|m| m.tool_call_id.is_some())
            .count();
        if observed > 0 {
            return Ok(ChatResponse {
                content: format!("saw {observed} results"),
                ..Default::default()
            });
        }
        Ok(ChatResponse {
            tool_calls: (0..20)
                .map(|i| ToolCall {
                    id: format!("call_{i}"),
                    name: "current_time".into(),
                    arguments: json!({}),
                })
                .collect(),
            ..Default::default()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_model_step_runs_a_bounded_number_of_tools() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.agent.max_tool_calls_per_step = 4;
    let mut s = Server::start_with(&cfg, ToolCatalog::new(), Some(Arc::new(FanOut))).await;
    let c = s.client(&s.token("acme", "ana"));
    let conv = c.new_conversation().await;
    let body = c.ask(&conv, "what time is it, twenty times?").await;
    // Every call gets a result (the next model request needs one per call) ...
    assert_eq!(body["answer"]["content"], "saw 20 results", "{body:?}");
    // ... but only four ran; the other sixteen end as "not run".
    let completed: Vec<&Value> = body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "tool.completed")
        .collect();
    assert_eq!(completed.len(), 20, "{body:?}");
    let ran = completed
        .iter()
        .filter(|e| !e["output"].as_str().unwrap().starts_with("Not run"))
        .count();
    assert_eq!(ran, 4, "{body:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_error_bodies_stay_in_the_logs() {
    // An OpenAI-compatible provider that refuses the key and echoes it back.
    let app = axum::Router::new().route(
        "/chat/completions",
        post(|Json(_): Json<Value>| async {
            (
                axum::http::StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"message": "Incorrect API key provided: sk-live-0123456789abcdef. See https://platform.example.com/account/api-keys", "type": "invalid_request_error"}})),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.llm.provider = Provider::Openai;
    cfg.llm.base_url = Some(url);
    cfg.llm.model = Some("m".into());
    cfg.llm.stream = false;
    cfg.llm.max_retries = 0;
    let mut s = Server::start(&cfg).await;
    let c = s.client(&s.token("acme", "ana"));
    let conv = c.new_conversation().await;
    let body = c.ask(&conv, "hello").await;
    assert_eq!(body["status"], "failed", "{body:?}");
    let failed = &body["error"];
    assert_eq!(failed["code"], "model_rejected");
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        !reason.contains("sk-live") && !reason.contains("https://"),
        "{reason}"
    );
    assert!(!body.to_string().contains("sk-live"), "{body}");
    s.stop().await;
}
