//! The whole process stops mid-turn and nothing is lost. SIGKILL: the next process
//! resumes the turn from its checkpoint without repeating the tool call that had
//! completed. SIGTERM (graceful shutdown, `server.shutdown_timeout`): new
//! connections are refused, open streams end with a reconnect hint, the running
//! turn finishes (or, past the timeout, stays checkpointed and resumes on the
//! next start), queued messages wait for the next start, and the process exits in
//! time. The model is an OpenAI-compatible server run by the test (its real wire
//! format), so the real `cairn serve` binary and client code run.

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
    spawn_server_with(data, model_url, port, &[])
}

fn spawn_server_with(
    data: &std::path::Path,
    model_url: &str,
    port: u16,
    env: &[(&str, &str)],
) -> Child {
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
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_survives_sigkill_of_the_whole_process() {
    let mut h = hanging_server("25s").await;
    let (c, conv) = (h.c.clone(), h.conv.clone());
    let accepted = c
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"content": "what time is it?"}),
        )
        .await;
    let turn = accepted.body["turn_id"].as_str().unwrap().to_owned();

    // The tool has run and the second model call is in flight: kill -9.
    model_calls_reach(&h.model, 2).await;
    assert_eq!(h.model.requests.load(Ordering::SeqCst), 2);
    h.child.kill().unwrap();
    h.child.wait().unwrap();

    // A new process on the same data dir resumes the turn on start-up.
    let events = h
        .restart_and_follow(|ev| ev.iter().any(|e| common::is_terminal(&e.1)))
        .await;
    let of_turn = resumed_once(&events, turn.as_str());
    let answer = of_turn[4].2["content"].as_str().unwrap();
    assert!(answer.starts_with("It is 20"), "{answer}");
    // Usage of both model calls was kept across the crash (5+9 in, 3+4 out).
    assert_eq!(
        of_turn[4].2["usage"],
        json!({"input_tokens": 14, "output_tokens": 7})
    );
    assert_eq!(
        h.model.requests.load(Ordering::SeqCst),
        3,
        "only the interrupted model call was repeated"
    );
}

/// The model server on a free port; returns its URL.
async fn model_server(model: &Model) -> String {
    let app = axum::Router::new()
        .route("/chat/completions", post(chat))
        .with_state(model.clone());
    common::serve_local(app).await
}

/// A started server's client for tenant acme, user ana (the generated secret).
async fn client_of(dir: &std::path::Path, port: u16) -> common::Client {
    let base = format!("http://127.0.0.1:{port}");
    common::wait_ready(&reqwest::Client::new(), &base).await;
    let secret = std::fs::read_to_string(dir.join("jwt-secret")).unwrap();
    let auth = cairn_api::auth::Authenticator::new(secret.trim().as_bytes(), &Default::default());
    let token = auth
        .mint(
            &cairn_core::UserId::parse("ana").unwrap(),
            &cairn_core::TenantId::parse("acme").unwrap(),
            Duration::from_secs(600),
            &[],
        )
        .unwrap();
    common::Client {
        base,
        token: Some(token),
        http: common::http_client(),
    }
}

/// A server whose model hangs on its answering call, with a new conversation.
struct Hanging {
    model: Model,
    model_url: String,
    dir: tempfile::TempDir,
    child: Child,
    c: common::Client,
    conv: String,
}

async fn hanging_server(shutdown_timeout: &str) -> Hanging {
    cairn_llm::http::install_crypto_provider();
    let model = Model {
        hang: Arc::new(AtomicBool::new(true)),
        ..Default::default()
    };
    let model_url = model_server(&model).await;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let timeout = [("CAIRN_SERVER__SHUTDOWN_TIMEOUT", shutdown_timeout)];
    let child = spawn_server_with(dir.path(), &model_url, port, &timeout);
    let c = client_of(dir.path(), port).await;
    let conv = c.new_conversation().await;
    Hanging {
        model,
        model_url,
        dir,
        child,
        c,
        conv,
    }
}

impl Hanging {
    /// Starts the next process on the same data dir (the model answering now)
    /// and reads the conversation's events until `done` says so.
    async fn restart_and_follow(
        &self,
        done: impl Fn(&[(String, String, Value)]) -> bool,
    ) -> Vec<(String, String, Value)> {
        self.model.hang.store(false, Ordering::SeqCst);
        let port = common::free_port();
        let mut second = spawn_server(self.dir.path(), &self.model_url, port);
        let c = client_of(self.dir.path(), port).await;
        let events = c
            .sse(
                &format!("/v1/conversations/{}/events", self.conv),
                None,
                Duration::from_secs(20),
                done,
            )
            .await;
        second.kill().unwrap();
        second.wait().unwrap();
        events
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM");
}

/// Waits (bounded) for the process to exit; returns its status and when.
async fn exited(child: &mut Child, within: Duration) -> (std::process::ExitStatus, Duration) {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "the process did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn model_calls_reach(model: &Model, n: usize) {
    for _ in 0..500 {
        if model.requests.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("model calls: {}", model.requests.load(Ordering::SeqCst));
}

/// The events of `turn`, checked to be one tool call, an interruption, and the
/// resumed turn's answer (the tool not called again).
fn resumed_once<'a>(
    events: &'a [(String, String, Value)],
    turn: &str,
) -> Vec<&'a (String, String, Value)> {
    let of_turn: Vec<&(String, String, Value)> =
        events.iter().filter(|e| e.2["turn_id"] == turn).collect();
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
    of_turn
}

/// The kinds of events of `turn` in `events`.
fn kinds_of<'a>(events: &'a [(String, String, Value)], turn: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e.2["turn_id"] == turn)
        .map(|e| e.1.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_turn_finish_and_streams_reconnect() {
    let mut h = hanging_server("30s").await;
    let (c, conv) = (h.c.clone(), h.conv.clone());

    // A stream of the conversation's events, open across the shutdown.
    let stream = {
        let (c, conv) = (c.clone(), conv.clone());
        tokio::spawn(async move {
            c.sse(
                &format!("/v1/conversations/{conv}/events"),
                None,
                Duration::from_secs(30),
                |ev| ev.iter().any(|e| e.1 == "error"),
            )
            .await
        })
    };
    // And a WebSocket of the same conversation.
    let mut ws = {
        let url = format!(
            "{}/v1/conversations/{conv}/ws",
            c.base.replace("http://", "ws://")
        );
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap();
        let bearer = format!("Bearer {}", c.token.clone().unwrap());
        req.headers_mut()
            .insert("authorization", bearer.parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };
    let one = c
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"content": "what time is it?"}),
        )
        .await;
    assert_eq!(one.status, 202, "{:?}", one.body);
    let turn_one = one.body["turn_id"].as_str().unwrap().to_owned();
    // The tool has run and the answering model call hangs; a second message waits
    // in the queue behind the running turn.
    model_calls_reach(&h.model, 2).await;
    let two = c
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"content": "and the date?"}),
        )
        .await;
    assert_eq!(two.status, 202, "{:?}", two.body);
    let turn_two = two.body["turn_id"].as_str().unwrap().to_owned();

    sigterm(&h.child);
    // The open stream ends with the reconnect hint while the turn still runs.
    let events = tokio::time::timeout(Duration::from_secs(10), stream)
        .await
        .expect("the stream ends at the shutdown")
        .unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.1, "error", "{events:?}");
    assert_eq!(last.2["code"], "server_restarting", "{events:?}");
    // The WebSocket is closed with 1012 (service restart: reconnect).
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .expect("the WebSocket closes at the shutdown");
    assert_eq!(close, Some(1012));
    assert!(
        h.child.try_wait().unwrap().is_none(),
        "still finishing the turn"
    );
    // New connections are refused.
    let mut refused = false;
    for _ in 0..100 {
        if reqwest::get(format!("{}/live", c.base)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener closed");

    // The model answers: the turn finishes, and the process exits on its own,
    // well before the timeout, with success.
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.model.hang.store(false, Ordering::SeqCst);
    let (status, took) = exited(&mut h.child, Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(15), "exited after {took:?}");
    assert_eq!(
        h.model.requests.load(Ordering::SeqCst),
        2,
        "the queued message did not start during the drain"
    );

    // The next start answers the queued message; the finished turn is not rerun.
    let events = h
        .restart_and_follow(|ev| {
            kinds_of(ev, &turn_two)
                .iter()
                .any(|k| common::is_terminal(k))
        })
        .await;
    assert_eq!(
        kinds_of(&events, &turn_one),
        vec![
            "turn.started",
            "tool.called",
            "tool.completed",
            "answer.completed"
        ],
        "{events:?}"
    );
    assert_eq!(
        kinds_of(&events, &turn_two).last(),
        Some(&"answer.completed"),
        "{events:?}"
    );
    assert_eq!(h.model.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_shutdown_timeout_exits_in_time_and_the_turn_resumes() {
    let mut h = hanging_server("3s").await;
    // A client waiting for the answer.
    let waiting = {
        let (c, conv) = (h.c.clone(), h.conv.clone());
        tokio::spawn(async move {
            c.post(
                &format!("/v1/conversations/{conv}/messages?wait=true"),
                json!({"content": "what time is it?"}),
            )
            .await
        })
    };
    model_calls_reach(&h.model, 2).await;

    sigterm(&h.child);
    let (status, took) = exited(&mut h.child, Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "the graceful path, not the watchdog: {status:?}"
    );
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    // The waiting client was told, not left hanging.
    let waited = waiting.await.unwrap();
    assert_eq!(waited.status, 503, "{:?}", waited.body);
    assert_eq!(waited.body["error"]["code"], "unavailable");

    // The next start resumes the checkpointed turn: the tool is not called again.
    let events = h
        .restart_and_follow(|ev| ev.iter().any(|e| common::is_terminal(&e.1)))
        .await;
    let turn = events.iter().find(|e| e.1 == "turn.started").unwrap().2["turn_id"].clone();
    resumed_once(&events, turn.as_str().unwrap());
    assert_eq!(h.model.requests.load(Ordering::SeqCst), 3);
}
