//! The web console in a real browser: Debian's Chromium driven by playwright-core
//! (`tests/console/console.spec.mjs`) against the real `cairn serve` binary in
//! development mode, reached under a real host name (`cairn.test`, mapped to
//! 127.0.0.1 by Chromium's resolver rules). The model is an OpenAI-wire server run
//! by this test that searches the knowledge base, then streams its answer word by
//! word, slowly enough for the page to be reloaded mid-stream.
//!
//! Needs `CAIRN_TEST_CHROMIUM` (the browser) and `CAIRN_TEST_PLAYWRIGHT` (the
//! playwright-core package directory); `scripts/test.sh` installs both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;

/// The answer, streamed word by word; its words overlap the uploaded document,
/// which is what makes the document a citation.
const ANSWER: &str =
    "Refunds are accepted within thirty days of delivery, so you can still return it.";
/// The pause between streamed words.
const WORD_PAUSE: Duration = Duration::from_millis(400);

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

fn sse(frames: Vec<String>, pause: Duration) -> Response {
    let stream = futures::stream::unfold(
        (frames.into_iter(), true),
        move |(mut it, first)| async move {
            let f = it.next()?;
            if !first {
                tokio::time::sleep(pause).await;
            }
            Some((Ok::<_, std::convert::Infallible>(f), (it, false)))
        },
    );
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Searches first (a tool call), then streams [`ANSWER`]; streams only when asked.
async fn chat(axum::Json(body): axum::Json<Value>) -> Response {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let searched = messages
        .iter()
        .rev()
        .take_while(|m| m["role"] != "user")
        .any(|m| m["role"] == "tool");
    let usage = json!({"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52});
    let call = json!({"id": "call_1", "type": "function",
        "function": {"name": "search_knowledge", "arguments": "{\"query\": \"refund window\"}"}});
    if body["stream"] != true {
        let message = if searched {
            json!({"role": "assistant", "content": ANSWER})
        } else {
            json!({"role": "assistant", "content": null, "tool_calls": [call]})
        };
        return axum::Json(json!({"id": "c1", "object": "chat.completion", "created": 0, "model": "test-model",
            "choices": [{"index": 0, "message": message, "finish_reason": if searched {"stop"} else {"tool_calls"}}],
            "usage": usage}))
        .into_response();
    }
    let mut frames = Vec::new();
    if searched {
        for w in ANSWER.split_inclusive(' ') {
            frames.push(chunk(json!({"content": w}), None));
        }
        frames.push(chunk(json!({}), Some("stop")));
    } else {
        let mut c = call.clone();
        c["index"] = json!(0);
        frames.push(chunk(json!({"role": "assistant", "tool_calls": [c]}), None));
        frames.push(chunk(json!({}), Some("tool_calls")));
    }
    let u = json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "test-model",
        "choices": [], "usage": usage});
    frames.push(format!("data: {u}\n\n"));
    frames.push("data: [DONE]\n\n".into());
    sse(frames, if searched { WORD_PAUSE } else { Duration::ZERO })
}

fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests through scripts/test.sh, which installs it")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_uploads_asks_streams_and_survives_a_reload() {
    let chromium = required("CAIRN_TEST_CHROMIUM");
    let playwright = required("CAIRN_TEST_PLAYWRIGHT");
    cairn_llm::http::install_crypto_provider();
    let model = common::serve_local(
        axum::Router::new().route("/chat/completions", axum::routing::post(chat)),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CAIRN_") {
            cmd.env_remove(k);
        }
    }
    // No [auth]: development mode, where the console offers the dev token.
    let mut server = cmd
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("CAIRN_LLM__PROVIDER", "openai")
        .env("CAIRN_LLM__BASE_URL", &model)
        .env("CAIRN_LLM__MODEL", "test-model")
        .env("CAIRN_LLM__STREAM", "true")
        .env("CAIRN_RATE_LIMITS__ENABLED", "false")
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::wait_ready(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}")).await;

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let spec =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.spec.mjs");
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new("node")
            .arg(&spec)
            .env("CAIRN_URL", format!("http://cairn.test:{port}"))
            .env("CAIRN_HOST_RULES", "MAP cairn.test 127.0.0.1")
            .env("CHROMIUM", &chromium)
            .env("PLAYWRIGHT_CORE", &playwright)
            .env("SCREENSHOTS", &shots)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser checks finish within 4 minutes")
    .expect("node runs");
    let _ = server.kill().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");
    for view in [
        "01-sign-in",
        "03-streaming",
        "04-conversation-steps",
        "05-tools",
    ] {
        let png = std::fs::read(shots.join(format!("{view}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{view} is a PNG");
    }
}
