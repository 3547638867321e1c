//! Every HTTP provider driven through a local server that speaks its real wire
//! format: a streamed answer, a tool call, retries on 429/5xx, and the shape of
//! the request the real client sends.

#![allow(clippy::unwrap_used)]

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use cairn_core::config::{LlmConfig, Provider};
use cairn_core::ports::{ChatMessage, ChatModel, ChatRequest, ToolSpec};
use cairn_core::{Role, ToolCall};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Status, content type and body of a scripted reply.
type ScriptedReply = (u16, &'static str, String);
/// Headers, path and JSON body of a received request.
type SeenRequest = (HeaderMap, String, Value);

/// A scripted provider: answers requests in order and records what it received.
#[derive(Clone, Default)]
struct Mock {
    replies: Arc<Mutex<VecDeque<ScriptedReply>>>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
}

async fn handle(
    State(m): State<Mock>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    m.seen.lock().unwrap().push((headers, uri.to_string(), v));
    let (status, ctype, body) = m.replies.lock().unwrap().pop_front().unwrap_or((
        500,
        "text/plain",
        "no scripted reply".into(),
    ));
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", ctype)
        .body(Body::from(body))
        .unwrap()
}

impl Mock {
    async fn start(replies: Vec<(u16, &'static str, String)>) -> (Mock, String) {
        let m = Mock::default();
        m.replies.lock().unwrap().extend(replies);
        let app = Router::new().fallback(post(handle)).with_state(m.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (m, format!("http://{addr}"))
    }
    fn requests(&self) -> Vec<(HeaderMap, String, Value)> {
        self.seen.lock().unwrap().clone()
    }
}

fn sse(events: &[Value]) -> String {
    events.iter().map(|e| format!("data: {e}\n\n")).collect()
}

fn named_sse(events: &[(&str, Value)]) -> String {
    events
        .iter()
        .map(|(n, e)| format!("event: {n}\ndata: {e}\n\n"))
        .collect()
}

fn config(provider: Provider, base: &str, stream: bool) -> LlmConfig {
    LlmConfig {
        provider,
        base_url: Some(base.to_owned()),
        model: Some("test-model".into()),
        api_key_env: Some("TEST_KEY".into()),
        stream,
        retry_base_delay: Duration::from_millis(5),
        ..Default::default()
    }
}

fn model(cfg: &LlmConfig) -> Arc<dyn ChatModel> {
    cairn_llm::from_config(cfg, &|name| {
        (name == "TEST_KEY").then(|| "sk-test".to_owned())
    })
    .unwrap()
}

/// A request with history: a user question, an earlier tool call and its result.
fn request() -> ChatRequest {
    ChatRequest {
        options: Default::default(),
        system: "be brief".into(),
        messages: vec![
            ChatMessage::text(Role::User, "what is 2+3?"),
            ChatMessage {
                role: Role::Assistant,
                content: String::new(),
                tool_calls: vec![ToolCall {
                    id: "call_a".into(),
                    name: "calc.add".into(),
                    arguments: json!({"a": 2, "b": 3}),
                }],
                tool_call_id: None,
                tool_name: None,
                is_error: false,
            },
            ChatMessage {
                role: Role::Tool,
                content: "5".into(),
                tool_calls: vec![],
                tool_call_id: Some("call_a".into()),
                tool_name: Some("calc.add".into()),
                is_error: false,
            },
        ],
        tools: vec![ToolSpec {
            name: "calc.add".into(),
            description: "adds".into(),
            input_schema: json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "additionalProperties": false}),
        }],
    }
}

async fn collect_deltas(
    m: &Arc<dyn ChatModel>,
    req: &ChatRequest,
) -> (cairn_core::ports::ChatResponse, Vec<String>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let r = m.complete(req, Some(&tx)).await.unwrap();
    drop(tx);
    let mut deltas = Vec::new();
    while let Some(d) = rx.recv().await {
        deltas.push(d);
    }
    (r, deltas)
}

// ---------- OpenAI-compatible ----------

#[tokio::test]
async fn openai_streams_an_answer_and_sends_tool_history() {
    let chunks = sse(&[
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "The sum "}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "is 5."}, "finish_reason": "stop"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 4}}),
    ]) + "data: [DONE]\n\n";
    let (mock, base) = Mock::start(vec![(200, "text/event-stream", chunks)]).await;
    let m = model(&config(Provider::Openai, &base, true));
    let (r, deltas) = collect_deltas(&m, &request()).await;
    assert_eq!(r.content, "The sum is 5.");
    assert_eq!(deltas, vec!["The sum ", "is 5."]);
    assert_eq!(r.usage.unwrap().input_tokens, 31);
    assert_eq!(r.usage.unwrap().output_tokens, 4);

    let (headers, path, body) = mock.requests().remove(0);
    assert_eq!(path, "/chat/completions");
    assert_eq!(headers["authorization"], "Bearer sk-test");
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["stream"], true);
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(
        body["messages"][2]["tool_calls"][0]["function"]["name"],
        "calc_add"
    );
    assert_eq!(
        body["messages"][2]["tool_calls"][0]["function"]["arguments"],
        json!({"a": 2, "b": 3}).to_string()
    );
    assert_eq!(
        body["messages"][3],
        json!({"role": "tool", "tool_call_id": "call_a", "content": "5"})
    );
    assert_eq!(body["tools"][0]["function"]["name"], "calc_add");
}

#[tokio::test]
async fn openai_streamed_tool_call_is_assembled() {
    let chunks = sse(&[
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "calc_add", "arguments": ""}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\": 1,"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": " \"b\": 2}"}}]}, "finish_reason": "tool_calls"}]}),
    ]) + "data: [DONE]\n\n";
    let (_mock, base) = Mock::start(vec![(200, "text/event-stream", chunks)]).await;
    let m = model(&config(Provider::Openai, &base, true));
    let (r, _) = collect_deltas(&m, &request()).await;
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "call_1");
    assert_eq!(r.tool_calls[0].name, "calc.add", "wire name is mapped back");
    assert_eq!(r.tool_calls[0].arguments, json!({"a": 1, "b": 2}));
}

#[tokio::test]
async fn openai_retries_429_and_5xx_then_succeeds() {
    let ok = json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
        {"id": "c9", "type": "function", "function": {"name": "calc_add", "arguments": "{\"a\":4,\"b\":5}"}}
    ]}}], "usage": {"prompt_tokens": 10, "completion_tokens": 7}});
    let (mock, base) = Mock::start(vec![
        (
            429,
            "application/json",
            json!({"error": {"message": "slow down"}}).to_string(),
        ),
        (503, "text/plain", "overloaded".into()),
        (200, "application/json", ok.to_string()),
    ])
    .await;
    let m = model(&config(Provider::Openai, &base, false));
    let r = m.complete(&request(), None).await.unwrap();
    assert_eq!(r.tool_calls[0].name, "calc.add");
    assert_eq!(r.tool_calls[0].arguments, json!({"a": 4, "b": 5}));
    assert_eq!(r.usage.unwrap().output_tokens, 7);
    assert_eq!(mock.requests().len(), 3);
}

#[tokio::test]
async fn openai_client_errors_are_not_retried() {
    let (mock, base) = Mock::start(vec![(
        400,
        "application/json",
        r#"{"error":{"message":"bad"}}"#.into(),
    )])
    .await;
    let m = model(&config(Provider::Openai, &base, false));
    let e = m.complete(&request(), None).await.unwrap_err();
    assert!(
        matches!(e, cairn_core::ports::ModelError::Http { status: 400, .. }),
        "{e}"
    );
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn missing_api_key_variable_is_a_config_error() {
    let cfg = config(Provider::Openai, "http://127.0.0.1:9", false);
    let e = cairn_llm::from_config(&cfg, &|_| None).err().unwrap();
    assert!(e.to_string().contains("TEST_KEY"), "{e}");
}

// ---------- Anthropic ----------

#[tokio::test]
async fn anthropic_streams_text_and_a_tool_call() {
    let events = named_sse(&[
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "m1", "role": "assistant", "content": [], "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "add."}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "calc_add", "input": {}}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\": 7"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ", \"b\": 8}"}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 40}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ]);
    let (mock, base) = Mock::start(vec![(200, "text/event-stream", events)]).await;
    let m = model(&config(Provider::Anthropic, &base, true));
    let (r, deltas) = collect_deltas(&m, &request()).await;
    assert_eq!(r.content, "Let me add.");
    assert_eq!(deltas, vec!["Let me ", "add."]);
    assert_eq!(r.tool_calls[0].id, "toolu_1");
    assert_eq!(r.tool_calls[0].name, "calc.add");
    assert_eq!(r.tool_calls[0].arguments, json!({"a": 7, "b": 8}));
    assert_eq!(r.usage.unwrap().input_tokens, 25);
    assert_eq!(r.usage.unwrap().output_tokens, 40);

    let (headers, path, body) = mock.requests().remove(0);
    assert_eq!(path, "/v1/messages");
    assert_eq!(headers["x-api-key"], "sk-test");
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert_eq!(body["system"], "be brief");
    assert_eq!(body["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(body["messages"][1]["content"][0]["name"], "calc_add");
    assert_eq!(body["messages"][2]["role"], "user");
    assert_eq!(body["messages"][2]["content"][0]["type"], "tool_result");
    assert_eq!(body["messages"][2]["content"][0]["tool_use_id"], "call_a");
    assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
}

#[tokio::test]
async fn anthropic_non_streamed_answer() {
    let body = json!({"id": "m", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "It is 5."}], "stop_reason": "end_turn", "usage": {"input_tokens": 12, "output_tokens": 3}});
    let (_mock, base) = Mock::start(vec![
        (
            529,
            "application/json",
            r#"{"type":"error","error":{"type":"overloaded_error"}}"#.into(),
        ),
        (200, "application/json", body.to_string()),
    ])
    .await;
    let m = model(&config(Provider::Anthropic, &base, false));
    let r = m.complete(&request(), None).await.unwrap();
    assert_eq!(r.content, "It is 5.");
    assert!(r.tool_calls.is_empty());
    assert_eq!(r.usage.unwrap().output_tokens, 3);
}

// ---------- Gemini ----------

#[tokio::test]
async fn gemini_streams_an_answer() {
    let chunks = sse(&[
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Five"}]}}]}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ", clearly."}]}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 3}}),
    ]);
    let (mock, base) = Mock::start(vec![(200, "text/event-stream", chunks)]).await;
    let m = model(&config(Provider::Gemini, &base, true));
    let (r, deltas) = collect_deltas(&m, &request()).await;
    assert_eq!(r.content, "Five, clearly.");
    assert_eq!(deltas, vec!["Five", ", clearly."]);
    assert_eq!(r.usage.unwrap().input_tokens, 20);

    let (headers, path, body) = mock.requests().remove(0);
    assert_eq!(
        path,
        "/v1beta/models/test-model:streamGenerateContent?alt=sse"
    );
    assert_eq!(headers["x-goog-api-key"], "sk-test");
    assert_eq!(body["systemInstruction"]["parts"][0]["text"], "be brief");
    assert_eq!(body["contents"][1]["role"], "model");
    assert_eq!(
        body["contents"][1]["parts"][0]["functionCall"]["name"],
        "calc_add"
    );
    assert_eq!(
        body["contents"][2]["parts"][0]["functionResponse"]["name"],
        "calc_add"
    );
    assert_eq!(
        body["contents"][2]["parts"][0]["functionResponse"]["response"]["content"],
        "5"
    );
    let params = &body["tools"][0]["functionDeclarations"][0]["parameters"];
    assert!(
        params.get("additionalProperties").is_none(),
        "unsupported keywords are stripped"
    );
}

#[tokio::test]
async fn gemini_function_call() {
    let body = json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "calc_add", "args": {"a": 1, "b": 1}}}]}}], "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2}});
    let (_mock, base) = Mock::start(vec![
        (500, "application/json", "{}".into()),
        (200, "application/json", body.to_string()),
    ])
    .await;
    let m = model(&config(Provider::Gemini, &base, false));
    let r = m.complete(&request(), None).await.unwrap();
    assert_eq!(r.tool_calls[0].name, "calc.add");
    assert_eq!(r.tool_calls[0].arguments, json!({"a": 1, "b": 1}));
    assert_eq!(r.usage.unwrap().output_tokens, 2);
}

// ---------- OpenAI-compatible embeddings ----------

#[tokio::test]
async fn embeddings_are_batched_ordered_and_retried() {
    use cairn_core::ports::DenseEmbedder;
    let item =
        |i: usize, x: f32| json!({"object": "embedding", "index": i, "embedding": [x, 1.0, 0.0]});
    let (mock, base) = Mock::start(vec![
        // the start-up probe
        (
            200,
            "application/json",
            json!({"data": [item(0, 0.5)], "usage": {"prompt_tokens": 2}}).to_string(),
        ),
        // batch 1 (out of order on purpose), after a 503
        (503, "text/plain", "busy".into()),
        (
            200,
            "application/json",
            json!({"data": [item(1, 2.0), item(0, 1.0)]}).to_string(),
        ),
        // batch 2
        (
            200,
            "application/json",
            json!({"data": [item(0, 3.0)]}).to_string(),
        ),
    ])
    .await;
    let transport = config(Provider::Openai, &base, false);
    let e = cairn_llm::embeddings::OpenAiEmbedder::connect(
        &base,
        "text-embedding-3-small",
        Some("sk-e".into()),
        2,
        &transport,
    )
    .await
    .unwrap();
    assert_eq!(e.dimension(), 3);
    let texts: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let v = e.embed(&texts).await.unwrap();
    assert_eq!(
        v.iter().map(|x| x[0]).collect::<Vec<_>>(),
        vec![1.0, 2.0, 3.0]
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[2].1, "/embeddings");
    assert_eq!(reqs[2].0["authorization"], "Bearer sk-e");
    assert_eq!(
        reqs[2].2,
        json!({"model": "text-embedding-3-small", "input": ["a", "b"]})
    );
    assert_eq!(reqs[3].2["input"], json!(["c"]));
}

/// A provider that answers 429 (`Retry-After: 1`) to everything in the first
/// 300 ms after its first request and then succeeds, recording when each
/// request arrived. Times count from the first request, not from the server's
/// start, so a slow start of the client on a loaded machine cannot move every
/// call past the 429 window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_slows_every_caller_of_the_provider_at_once() {
    #[derive(Clone)]
    struct Limited {
        first: Arc<std::sync::OnceLock<std::time::Instant>>,
        arrivals: Arc<Mutex<Vec<Duration>>>,
    }
    async fn limited(State(s): State<Limited>) -> Response {
        let at = s.first.get_or_init(std::time::Instant::now).elapsed();
        s.arrivals.lock().unwrap().push(at);
        if at < Duration::from_millis(300) {
            return Response::builder()
                .status(429)
                .header("retry-after", "1")
                .body(Body::from("{\"error\":{\"message\":\"slow down\"}}"))
                .unwrap();
        }
        let body = json!({"choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}});
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }
    let s = Limited {
        first: Arc::default(),
        arrivals: Arc::default(),
    };
    let app = Router::new().fallback(post(limited)).with_state(s.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut cfg = config(Provider::Openai, &base, false);
    cfg.retry_base_delay = Duration::from_millis(50);
    cfg.max_retries = 5;
    cfg.max_concurrency = 8;
    let m = model(&cfg);
    // Eight conversations call at once; the first answers are 429s.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.complete(&request(), None).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().content, "ok");
    }
    let arrivals = s.arrivals.lock().unwrap().clone();
    // Each caller alone would have retried after 50–100 ms; instead nobody
    // called between the 429s and the end of the provider's Retry-After.
    let early: Vec<&Duration> = arrivals
        .iter()
        .filter(|a| **a >= Duration::from_millis(300) && **a < Duration::from_millis(950))
        .collect();
    assert!(early.is_empty(), "calls during the pause: {arrivals:?}");
    // The first request is a 429 by construction (times count from it). Every
    // 429'd call waited out the pause and then succeeded: one retry each, so
    // the requests are the 429s plus the eight answers, and nothing more.
    let throttled = arrivals
        .iter()
        .filter(|a| **a < Duration::from_millis(300))
        .count();
    assert_eq!(arrivals.len(), throttled + 8, "{arrivals:?}");
}
