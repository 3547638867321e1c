//! The whole process dies mid-turn (SIGKILL) and the next process resumes the turn
//! from its checkpoint without repeating the tool call that had completed. The
//! model is an OpenAI-compatible server run by the test (its real wire format), so
//! the real `cairn serve` binary and client code run.

#![allow(clippy::unwrap_used)]

mod common;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Clone, Default)]
struct Model {
    /// While set, a request that carries a tool observation never gets an answer.
    hang: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

async fn chat(State(m): State<Model>, Json(body): Json<Value>) -> Json<Value> {
    m.requests.fetch_add(1, Ordering::SeqCst);
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let observation = messages
        .iter()
        .rev()
        .take_while(|m| m["role"] != "user")
        .find(|m| m["role"] == "tool")
        .cloned();
    match observation {
        None => Json(
            json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "current_time", "arguments": "{}"}}
        ]}}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}),
        ),
        Some(obs) => {
            while m.hang.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Json(json!({"choices": [{"message": {"role": "assistant",
                "content": format!("It is {}.", obs["content"].as_str().unwrap_or("?"))}}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 4}}))
        }
    }
}

fn spawn_server(data: &std::path::Path, model_url: &str, port: u16) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CAIRN_") {
            c.env_remove(k);
        }
    }
    c.args(["serve", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("CAIRN_LLM__PROVIDER", "openai")
        .env("CAIRN_LLM__BASE_URL", model_url)
        .env("CAIRN_LLM__MODEL", "test-model")
        .env("CAIRN_LLM__STREAM", "false")
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_survives_sigkill_of_the_whole_process() {
    cairn_llm::http::install_crypto_provider();
    let model = Model {
        hang: Arc::new(AtomicBool::new(true)),
        ..Default::default()
    };
    let app = axum::Router::new()
        .route("/chat/completions", post(chat))
        .with_state(model.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let model_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut first = spawn_server(dir.path(), &model_url, port);
    common::wait_ready(&http, &base).await;
    let secret = std::fs::read_to_string(dir.path().join("jwt-secret")).unwrap();
    let auth = cairn_api::auth::Authenticator::new(secret.trim().as_bytes(), &Default::default());
    let token = auth
        .mint(
            &cairn_core::UserId::parse("ana").unwrap(),
            &cairn_core::TenantId::parse("acme").unwrap(),
            Duration::from_secs(600),
            &[],
        )
        .unwrap();
    let conv: Value = http
        .post(format!("{base}/v1/conversations"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conv = conv["id"].as_str().unwrap().to_owned();
    let accepted: Value = http
        .post(format!("{base}/v1/conversations/{conv}/messages"))
        .bearer_auth(&token)
        .json(&json!({"content": "what time is it?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let turn = accepted["turn_id"].as_str().unwrap().to_owned();

    // The tool has run and the second model call is in flight: kill -9.
    for _ in 0..300 {
        if model.requests.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(model.requests.load(Ordering::SeqCst), 2);
    first.kill().unwrap();
    first.wait().unwrap();

    // A new process on the same data dir resumes the turn on start-up.
    model.hang.store(false, Ordering::SeqCst);
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut second = spawn_server(dir.path(), &model_url, port);
    common::wait_ready(&http, &base).await;
    let c = common::Client {
        base: base.clone(),
        token: Some(token.clone()),
        http: http.clone(),
    };
    let events = c
        .sse(
            &format!("/v1/conversations/{conv}/events"),
            None,
            Duration::from_secs(20),
            |ev| ev.iter().any(|e| common::is_terminal(&e.1)),
        )
        .await;
    second.kill().unwrap();
    second.wait().unwrap();

    let of_turn: Vec<&(String, String, Value)> = events
        .iter()
        .filter(|e| e.2["turn_id"] == turn.as_str())
        .collect();
    let kinds: Vec<&str> = of_turn.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "turn.started",
            "tool.called",
            "tool.completed",
            "turn.started",
            "answer.completed"
        ],
        "{events:?}"
    );
    assert_eq!(of_turn[3].2["resumed"], true);
    let answer = of_turn[4].2["content"].as_str().unwrap();
    assert!(answer.starts_with("It is 20"), "{answer}");
    // Usage of both model calls was kept across the crash (5+9 in, 3+4 out).
    assert_eq!(
        of_turn[4].2["usage"],
        json!({"input_tokens": 14, "output_tokens": 7})
    );
    assert_eq!(
        model.requests.load(Ordering::SeqCst),
        3,
        "only the interrupted model call was repeated"
    );
}
