//! Steering a running agent through the real `cairn serve` binary: cancelling a
//! turn (mid tool call, mid model call, queued), the double-texting policies
//! of a message sent while a turn runs (`enqueue`, `reject`, `interrupt`,
//! `rollback`), and approvals before risky tool calls, including kill -9 while
//! a cancel is in flight and while an approval waits.
//!
//! The model is an OpenAI-wire server run by the test. Like OpenAI's API it
//! refuses (400) a request whose assistant tool call has no tool result after
//! it, so a dangling call left by a cancel would fail the next turn. The slow
//! tool is an MCP server on the official Python SDK; it records the
//! `notifications/cancelled` it receives.

#![allow(clippy::unwrap_used)]

mod common;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::{Binary, Client};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Model {
    /// Every request body, in order.
    requests: Arc<Mutex<Vec<Value>>>,
    /// Requests refused for a tool call without its result.
    dangling: Arc<AtomicUsize>,
    /// While set, a message containing "hang" gets no answer.
    hang: Arc<AtomicBool>,
}

impl Model {
    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn last(&self) -> Value {
        self.requests.lock().unwrap().last().cloned().unwrap()
    }
}

/// Ids of assistant tool calls with no tool result after them.
fn unanswered(messages: &[Value]) -> Vec<String> {
    let mut open: Vec<String> = Vec::new();
    for m in messages {
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            open.push(c["id"].as_str().unwrap_or_default().to_owned());
        }
        if m["role"] == "tool" {
            let id = m["tool_call_id"].as_str().unwrap_or_default();
            open.retain(|o| o != id);
        }
    }
    open
}

async fn chat(State(m): State<Model>, Json(body): Json<Value>) -> axum::response::Response {
    m.requests.lock().unwrap().push(body.clone());
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    if !unanswered(&messages).is_empty() {
        m.dangling.fetch_add(1, Ordering::SeqCst);
        let e = json!({"error": {"message": "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'.", "type": "invalid_request_error", "param": "messages", "code": null}});
        return (StatusCode::BAD_REQUEST, Json(e)).into_response();
    }
    let user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let observation = messages
        .iter()
        .rev()
        .take_while(|m| m["role"] != "user")
        .find(|m| m["role"] == "tool")
        .cloned();
    let tool = |name: &str, args: Value| {
        let found = body["tools"]
            .as_array()
            .and_then(|ts| {
                ts.iter()
                    .filter_map(|t| t["function"]["name"].as_str())
                    .find(|n| n.contains(name))
            })
            .unwrap_or(name)
            .to_owned();
        Json(json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": format!("call_{}", m.count()), "type": "function", "function": {"name": found, "arguments": args.to_string()}}
        ]}}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}))
        .into_response()
    };
    if observation.is_none() && user.contains("slow") {
        return tool("wait", json!({"seconds": 60}));
    }
    if observation.is_none() && user.contains("medium") {
        return tool("wait", json!({"seconds": 1}));
    }
    if observation.is_none() && user.contains("quick") {
        return tool("wait", json!({"seconds": 0.2}));
    }
    if observation.is_none() && user.contains("time") {
        return tool("current_time", json!({}));
    }
    if user.contains("hang") {
        for _ in 0..3000 {
            if !m.hang.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let content = match observation {
        // A replay against "new-model" answers in its own words.
        Some(o) if body["model"] == "new-model" => {
            format!("New: {}", o["content"].as_str().unwrap_or("?"))
        }
        Some(o) => format!("Done: {}", o["content"].as_str().unwrap_or("?")),
        None => format!("You said: {user}"),
    };
    Json(
        json!({"choices": [{"message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
    )
    .into_response()
}

struct Setup {
    server: Binary,
    model: Model,
    cancel_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(extra: &str, env: &[(&str, &str)]) -> Setup {
        let python = std::env::var("CAIRN_TEST_PYTHON_MCP").expect(
            "CAIRN_TEST_PYTHON_MCP is not set: run the tests with scripts/test.sh, which installs the MCP Python SDK",
        );
        let model = Model {
            hang: Arc::new(AtomicBool::new(true)),
            ..Default::default()
        };
        let url = common::serve_local(
            axum::Router::new()
                .route("/chat/completions", axum::routing::post(chat))
                .with_state(model.clone()),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let cancel_log = dir.path().join("cancelled.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/slow_server.py");
        let config = format!(
            r#"
[llm]
provider = "openai"
base_url = "{url}"
model = "test-model"
stream = false

[[mcp.servers]]
name = "slow"
transport = "stdio"
command = "{python}"
args = ["{script}"]
env = {{ CANCEL_LOG = "{log}" }}
timeout = "90s"
allowed_tenants = ["acme"]
{extra}
"#,
            script = script.display(),
            log = cancel_log.display(),
        );
        let server = Binary::start(dir.path(), &config, env).await;
        let setup = Setup {
            server,
            model,
            cancel_log,
            _dir: dir,
        };
        let c = setup.client();
        for _ in 0..1000 {
            if c.get("/v1/tools").await.body["servers"][0]["health"] == "healthy" {
                return setup;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the slow MCP server did not come up");
    }

    fn client(&self) -> Client {
        self.server.client("acme", "ana", &[])
    }

    /// The lines the MCP server wrote for cancelled calls (waits up to 10 s for `n`).
    async fn cancelled_calls(&self, n: usize) -> Vec<String> {
        for _ in 0..500 {
            let lines: Vec<String> = std::fs::read_to_string(&self.cancel_log)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the MCP server saw fewer than {n} cancellations");
    }

    async fn model_calls_reach(&self, n: usize) {
        for _ in 0..1000 {
            if self.model.count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("model calls: {}", self.model.count());
    }
}

async fn post(c: &Client, conv: &str, content: &str, if_busy: Option<&str>) -> common::Reply {
    let mut body = json!({"content": content});
    if let Some(p) = if_busy {
        body["if_busy"] = json!(p);
    }
    c.post(&format!("/v1/conversations/{conv}/messages"), body)
        .await
}

/// The conversation's events until `turn` has its terminal event.
async fn until_end(c: &Client, conv: &str, turn: &str) -> Vec<(String, String, Value)> {
    let events = c
        .sse(
            &format!("/v1/conversations/{conv}/events"),
            None,
            Duration::from_secs(60),
            |ev| {
                ev.iter()
                    .any(|e| e.2["turn_id"] == turn && common::is_terminal(&e.1))
            },
        )
        .await;
    assert!(
        events
            .iter()
            .any(|e| e.2["turn_id"] == turn && common::is_terminal(&e.1)),
        "{events:?}"
    );
    events
}

fn kinds(events: &[(String, String, Value)], turn: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.2["turn_id"] == turn && e.1 != "insights.updated")
        .map(|e| e.1.clone())
        .collect()
}

fn of<'a>(events: &'a [(String, String, Value)], turn: &str, kind: &str) -> &'a Value {
    &events
        .iter()
        .find(|e| e.2["turn_id"] == turn && e.1 == kind)
        .unwrap_or_else(|| panic!("no {kind} in {events:?}"))
        .2
}

/// Waits until the conversation's stream shows `kind` for `turn`.
async fn reached(c: &Client, conv: &str, turn: &str, kind: &str) {
    let events = c
        .sse(
            &format!("/v1/conversations/{conv}/events"),
            None,
            Duration::from_secs(30),
            |ev| ev.iter().any(|e| e.2["turn_id"] == turn && e.1 == kind),
        )
        .await;
    assert!(
        events.iter().any(|e| e.2["turn_id"] == turn && e.1 == kind),
        "{events:?}"
    );
}

/// The (role, content) of a model request's messages, the system prompt left out.
fn roles_and_texts(request: &Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] != "system")
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The `[redis]` section of a test on Redis (a key prefix of its own).
fn on_redis() -> String {
    format!(
        "[redis]\nurl = \"{}\"\nkey_prefix = \"c{}\"\n",
        common::redis_url(),
        uuid::Uuid::new_v4().simple()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_mid_tool_call_closes_the_call_tells_the_server_and_the_next_turn_runs() {
    cancel_mid_tool_call("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_cancel_mid_tool_call_closes_the_call_and_the_next_turn_runs() {
    cancel_mid_tool_call(&on_redis()).await;
}

async fn cancel_mid_tool_call(extra: &str) {
    let s = Setup::start(extra, &[]).await;
    let c = s.client();
    let conv = c.new_conversation().await;
    let r = post(&c, &conv, "do the slow thing", None).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let turn = r.body["turn_id"].as_str().unwrap().to_owned();
    reached(&c, &conv, &turn, "tool.called").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let r = c
        .post(
            &format!("/v1/conversations/{conv}/turns/{turn}/cancel?wait=true"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["event"]["mode"], "cancel");
    // The MCP server was told to stop the call.
    let lines = s.cancelled_calls(1).await;
    assert!(lines[0].starts_with("cancelled"), "{lines:?}");

    let events = until_end(&c, &conv, &turn).await;
    assert_eq!(
        kinds(&events, &turn),
        vec![
            "turn.started",
            "tool.called",
            "turn.cancel_requested",
            "tool.completed",
            "turn.cancelled"
        ]
    );
    assert_eq!(of(&events, &turn, "turn.cancel_requested")["by"], "ana");
    let closed = of(&events, &turn, "tool.completed");
    assert_eq!(closed["is_error"], true);
    assert!(
        closed["output"].as_str().unwrap().starts_with("Cancelled"),
        "{closed}"
    );

    // The transcript keeps the record, with the closed call.
    let items = c.get(&format!("/v1/conversations/{conv}/messages")).await;
    let record = &items.body["items"][1];
    assert_eq!(record["metadata"]["turn_cancelled"]["mode"], "cancel");
    let steps = record["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{record}");
    assert!(
        steps[1]["outcome"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Cancelled")
    );

    // The next turn runs: its model call holds the cancelled call and its result.
    let answer = c.ask(&conv, "what happened?").await;
    assert_eq!(answer["status"], "completed", "{answer}");
    let last = s.model.last();
    assert!(unanswered(last["messages"].as_array().unwrap()).is_empty());
    let tool_results: Vec<&Value> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_results.len(), 1, "{last}");
    assert_eq!(s.model.dangling.load(Ordering::SeqCst), 0);

    // A cancel of a turn that ended is refused with the contract.
    let r = c
        .post(
            &format!("/v1/conversations/{conv}/turns/{turn}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "turn_not_running");
    let r = c
        .post(
            &format!("/v1/conversations/{conv}/turns/not%20a%20turn/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    // Another user cannot cancel ana's turns (the conversation is not theirs).
    let bob = s.server.client("acme", "bob", &[]);
    let r = bob
        .post(
            &format!("/v1/conversations/{conv}/turns/{turn}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 404, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_mid_model_call_aborts_it_and_a_queued_turn_is_cancelled_before_it_runs() {
    let s = Setup::start("", &[]).await;
    let c = s.client();
    let conv = c.new_conversation().await;
    let one = post(&c, &conv, "please hang", None).await;
    let one = one.body["turn_id"].as_str().unwrap().to_owned();
    let two = post(&c, &conv, "and then this", None).await;
    let two = two.body["turn_id"].as_str().unwrap().to_owned();
    s.model_calls_reach(1).await;

    // The queued turn first: it never calls the model. Its 202 came once it was
    // on the bus; until the conversation's actor has queued it (a moment later,
    // longer on a loaded machine) a cancel is refused as `turn_not_running`.
    let mut r = None;
    for _ in 0..200 {
        let got = c
            .post(
                &format!("/v1/conversations/{conv}/turns/{two}/cancel"),
                json!({}),
            )
            .await;
        if got.status != 409 {
            r = Some(got);
            break;
        }
        assert_eq!(
            got.body["error"]["code"], "turn_not_running",
            "{:?}",
            got.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = r.expect("the second turn reaches its conversation's queue");
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["status"], "cancelling");
    let r = c
        .post(
            &format!("/v1/conversations/{conv}/turns/{one}/cancel?wait=true"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "cancelled");
    let events = until_end(&c, &conv, &two).await;
    assert_eq!(
        kinds(&events, &one),
        vec!["turn.started", "turn.cancel_requested", "turn.cancelled"]
    );
    assert_eq!(
        kinds(&events, &two),
        vec!["turn.cancel_requested", "turn.started", "turn.cancelled"]
    );
    assert_eq!(
        s.model.count(),
        1,
        "the queued turn never reached the model"
    );

    // The conversation goes on.
    s.model.hang.store(false, Ordering::SeqCst);
    let answer = c.ask(&conv, "still there?").await;
    assert_eq!(answer["answer"]["content"], "You said: still there?");
}

/// Interrupt and rollback at each step boundary: while queued, mid model call,
/// mid tool call, and mid model call after a tool result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_texting_policies_at_every_step_boundary() {
    double_texting("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_double_texting_policies_at_every_step_boundary() {
    double_texting(&on_redis()).await;
}

async fn double_texting(extra: &str) {
    let s = Setup::start(extra, &[]).await;
    let c = s.client();

    // reject: 409 while a turn runs, with the turn it waits on.
    let conv = c.new_conversation().await;
    let running = post(&c, &conv, "do the slow thing", None).await;
    let running = running.body["turn_id"].as_str().unwrap().to_owned();
    reached(&c, &conv, &running, "tool.called").await;
    let r = post(&c, &conv, "me too", Some("reject")).await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "conversation_busy");
    assert_eq!(r.body["error"]["details"]["turn_id"], running.as_str());
    let r = post(&c, &conv, "me too", Some("sometimes")).await;
    assert_eq!(r.status, 400, "{:?}", r.body);

    // interrupt mid tool call: the new message runs with the context so far.
    let r = post(&c, &conv, "never mind, hello", Some("interrupt")).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let new = r.body["turn_id"].as_str().unwrap().to_owned();
    let events = until_end(&c, &conv, &new).await;
    assert_eq!(of(&events, &running, "turn.cancelled")["mode"], "interrupt");
    assert_eq!(
        of(&events, &new, "answer.completed")["content"],
        "You said: never mind, hello"
    );
    let seen = roles_and_texts(&s.model.last());
    assert_eq!(seen[0], ("user".into(), "do the slow thing".into()));
    assert_eq!(seen[1].0, "assistant");
    assert_eq!(seen[2].0, "tool");
    assert!(seen[2].1.starts_with("Cancelled"), "{seen:?}");
    assert_eq!(
        seen.last().unwrap(),
        &("user".into(), "never mind, hello".into())
    );
    s.cancelled_calls(1).await;

    // rollback mid tool call: the interrupted turn leaves the context.
    let conv = c.new_conversation().await;
    let old = post(&c, &conv, "do the slow thing again", None).await;
    let old = old.body["turn_id"].as_str().unwrap().to_owned();
    reached(&c, &conv, &old, "tool.called").await;
    let r = post(&c, &conv, "forget that", Some("rollback")).await;
    let new = r.body["turn_id"].as_str().unwrap().to_owned();
    let events = until_end(&c, &conv, &new).await;
    assert_eq!(of(&events, &old, "turn.cancelled")["mode"], "rollback");
    assert_eq!(
        roles_and_texts(&s.model.last()),
        vec![("user".into(), "forget that".into())]
    );
    s.cancelled_calls(2).await;
    // Kept for audit: the transcript still has the rolled-back turn.
    let items = c.get(&format!("/v1/conversations/{conv}/messages")).await;
    let items = items.body["items"].as_array().unwrap().clone();
    assert_eq!(items[0]["content"], "do the slow thing again");
    assert_eq!(items[1]["metadata"]["turn_cancelled"]["mode"], "rollback");

    // interrupt mid model call, and a queued turn with it.
    s.model.hang.store(true, Ordering::SeqCst);
    let conv = c.new_conversation().await;
    let first = post(&c, &conv, "hang here", None).await;
    let first = first.body["turn_id"].as_str().unwrap().to_owned();
    let queued = post(&c, &conv, "queued behind", None).await;
    let queued = queued.body["turn_id"].as_str().unwrap().to_owned();
    reached(&c, &conv, &first, "turn.started").await;
    let r = post(&c, &conv, "stop all that", Some("rollback")).await;
    let new = r.body["turn_id"].as_str().unwrap().to_owned();
    let events = until_end(&c, &conv, &new).await;
    assert_eq!(
        kinds(&events, &first).last().unwrap(),
        "turn.cancelled",
        "{events:?}"
    );
    assert_eq!(kinds(&events, &queued).last().unwrap(), "turn.cancelled");
    assert!(!kinds(&events, &queued).contains(&"tool.called".to_owned()));
    assert_eq!(
        roles_and_texts(&s.model.last()),
        vec![("user".into(), "stop all that".into())]
    );

    // interrupt mid model call after a tool result (the built-in clock ran).
    let conv = c.new_conversation().await;
    let r = post(&c, &conv, "what time is it? hang", None).await;
    let timed = r.body["turn_id"].as_str().unwrap().to_owned();
    reached(&c, &conv, &timed, "tool.completed").await;
    let r = post(&c, &conv, "skip it", Some("interrupt")).await;
    let new = r.body["turn_id"].as_str().unwrap().to_owned();
    let events = until_end(&c, &conv, &new).await;
    assert_eq!(
        kinds(&events, &timed),
        vec![
            "turn.started",
            "tool.called",
            "tool.completed",
            "turn.cancel_requested",
            "turn.cancelled"
        ]
    );
    let seen = roles_and_texts(&s.model.last());
    // The completed call keeps its real result.
    assert_eq!(seen[2].0, "tool");
    assert!(!seen[2].1.starts_with("Cancelled"), "{seen:?}");
    s.model.hang.store(false, Ordering::SeqCst);

    // enqueue (the default): the second message waits for the first.
    let conv = c.new_conversation().await;
    let a = post(&c, &conv, "first", Some("enqueue")).await;
    let b = post(&c, &conv, "second", Some("enqueue")).await;
    let b = b.body["turn_id"].as_str().unwrap().to_owned();
    let events = until_end(&c, &conv, &b).await;
    let a = a.body["turn_id"].as_str().unwrap().to_owned();
    assert_eq!(kinds(&events, &a).last().unwrap(), "answer.completed");
    assert_eq!(kinds(&events, &b).last().unwrap(), "answer.completed");

    assert_eq!(s.model.dangling.load(Ordering::SeqCst), 0);
}

/// kill -9 right after a cancel was accepted: whichever came first, the turn
/// ends once, cancelled, and the model is not called for it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_survives_kill_9() {
    let mut s = Setup::start("", &[]).await;
    let c = s.client();
    let conv = c.new_conversation().await;
    let r = post(&c, &conv, "please hang", None).await;
    let turn = r.body["turn_id"].as_str().unwrap().to_owned();
    s.model_calls_reach(1).await;
    let r = c
        .post(
            &format!("/v1/conversations/{conv}/turns/{turn}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    s.server.restart().await;
    let c = s.client();
    let events = until_end(&c, &conv, &turn).await;
    let k = kinds(&events, &turn);
    assert_eq!(k.last().unwrap(), "turn.cancelled", "{k:?}");
    assert_eq!(
        k.iter().filter(|k| common::is_terminal(k)).count(),
        1,
        "{k:?}"
    );
    assert_eq!(
        s.model.count(),
        1,
        "the cancelled turn called the model again"
    );
    s.model.hang.store(false, Ordering::SeqCst);
    assert_eq!(
        c.ask(&conv, "hello again").await["answer"]["content"],
        "You said: hello again"
    );
}

/// Calls of `slow.wait` longer than half a second wait for a person.
const APPROVALS: &str = r#"
[approvals]
alert_after = "0s"
[[approvals.rules]]
tool = "slow.wait"
when = { pointer = "/seconds", op = "gt", value = 0.5 }
reason = "long waits need a supervisor"
"#;

async fn approval_requested(c: &Client, conv: &str, turn: &str) -> Value {
    let events = c
        .sse(
            &format!("/v1/conversations/{conv}/events"),
            None,
            Duration::from_secs(30),
            |ev| {
                ev.iter()
                    .any(|e| e.2["turn_id"] == turn && e.1 == "approval.requested")
            },
        )
        .await;
    of(&events, turn, "approval.requested").clone()
}

async fn answer_of(c: &Client, conv: &str, turn: &str) -> (Vec<(String, String, Value)>, String) {
    let events = until_end(c, conv, turn).await;
    let answer = of(&events, turn, "answer.completed")["content"]
        .as_str()
        .unwrap()
        .to_owned();
    (events, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_risky_call_waits_for_a_person_who_approves_edits_or_rejects_it() {
    let s = Setup::start(APPROVALS, &[]).await;
    let c = s.client();
    let sam = s.server.client("acme", "sam", &["approve"]);
    let conv = c.new_conversation().await;

    // Below the threshold: no approval.
    let r = post(&c, &conv, "a quick one", None).await;
    let turn = r.body["turn_id"].as_str().unwrap().to_owned();
    let (events, answer) = answer_of(&c, &conv, &turn).await;
    assert_eq!(answer, "Done: waited 0.2 s");
    assert!(!kinds(&events, &turn).contains(&"approval.requested".to_owned()));

    // Above it: the call waits.
    let r = post(&c, &conv, "the slow thing", None).await;
    let turn = r.body["turn_id"].as_str().unwrap().to_owned();
    let asked = approval_requested(&c, &conv, &turn).await;
    assert_eq!(asked["tool"], "slow.wait");
    assert_eq!(asked["arguments"], json!({"seconds": 60}));
    assert_eq!(asked["reason"], "long waits need a supervisor");
    assert_eq!(asked["approver_scope"], "approve");
    let id = asked["approval_id"].as_str().unwrap().to_owned();
    let listed = c.get(&format!("/v1/conversations/{conv}/approvals")).await;
    assert_eq!(
        listed.body["items"][0]["status"], "pending",
        "{:?}",
        listed.body
    );
    let url = format!("/v1/conversations/{conv}/approvals/{id}");

    // Who may decide, and what a decision must hold.
    let r = c.post(&url, json!({"decision": "approve"})).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "forbidden");
    let stranger = s.server.client("globex", "gil", &["approve"]);
    let r = stranger.post(&url, json!({"decision": "approve"})).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let r = sam.post(&url, json!({"decision": "edit"})).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "arguments");
    let r = sam.post(&url, json!({"decision": "maybe"})).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let long = "x".repeat(2001);
    let r = sam
        .post(&url, json!({"decision": "reject", "comment": long}))
        .await;
    assert_eq!(r.status, 400, "too long a comment: {:?}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "comment");
    let r = sam
        .post(
            &format!("/v1/conversations/{conv}/approvals/nope"),
            json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "approval_not_found");

    // Edit: the call runs with the supervisor's arguments.
    let r = sam
        .post(
            &url,
            json!({"decision": "edit", "arguments": {"seconds": 0.1}, "comment": "shorter"}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let r = sam.post(&url, json!({"decision": "reject"})).await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "approval_decided");
    let (events, answer) = answer_of(&c, &conv, &turn).await;
    assert_eq!(answer, "Done: waited 0.1 s");
    let decided = of(&events, &turn, "approval.decided");
    assert_eq!(decided["decision"], "edit");
    assert_eq!(decided["by"], "sam");
    assert_eq!(decided["comment"], "shorter");
    let items = c.get(&format!("/v1/conversations/{conv}/messages")).await;
    let record = items.body["items"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(record["metadata"]["approvals"][0]["decision"]["by"], "sam");
    assert_eq!(
        record["metadata"]["approvals"][0]["decision"]["decision"],
        "edit"
    );

    // Approve as asked: the call runs as the model asked.
    let r = post(&c, &conv, "a medium one", None).await;
    let turn = r.body["turn_id"].as_str().unwrap().to_owned();
    let asked = approval_requested(&c, &conv, &turn).await;
    // Through /mcp this time, with the official MCP Python SDK as the client;
    // a token without the scope is refused there too.
    let mcp = |token: String| {
        let (base, conv) = (s.server.base.clone(), conv.clone());
        let id = asked["approval_id"].as_str().unwrap().to_owned();
        async move {
            let python = std::env::var("CAIRN_TEST_PYTHON_MCP").unwrap();
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/mcp_decide.py");
            tokio::process::Command::new(python)
                .arg(script)
                .args([format!("{base}/mcp"), token, conv, id, "approve".into()])
                .output()
                .await
                .unwrap()
        }
    };
    let out = mcp(s.server.token("acme", "ana", &[])).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{out:?}"
    );
    let out = mcp(s.server.token("acme", "sam", &["approve"])).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"decision\":\"approve\""),
        "{out:?}"
    );
    assert_eq!(answer_of(&c, &conv, &turn).await.1, "Done: waited 1.0 s");

    // Reject: the model is told, the tool never runs.
    let r = post(&c, &conv, "the slow thing again", None).await;
    let turn = r.body["turn_id"].as_str().unwrap().to_owned();
    let asked = approval_requested(&c, &conv, &turn).await;
    let url = format!(
        "/v1/conversations/{conv}/approvals/{}",
        asked["approval_id"].as_str().unwrap()
    );
    let r = sam
        .post(&url, json!({"decision": "reject", "comment": "too long"}))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(
        answer_of(&c, &conv, &turn).await.1,
        "Done: Not run: sam rejected this call (too long)"
    );
    assert_eq!(s.model.dangling.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_approval_expires_and_a_waiting_turn_can_be_cancelled() {
    let rules = APPROVALS.replace(
        "reason = \"long waits need a supervisor\"",
        "reason = \"long waits need a supervisor\"\nexpires_after = \"1s\"",
    );
    let s = Setup::start(&rules, &[]).await;
    let c = s.client();
    let conv = c.new_conversation().await;
    let r = post(&c, &conv, "the slow thing", None).await;
    let turn = r.body["turn_id"].as_str().unwrap().to_owned();
    let (events, answer) = answer_of(&c, &conv, &turn).await;
    assert_eq!(
        answer,
        "Done: Not run: nobody approved this call before its approval expired."
    );
    let decided = of(&events, &turn, "approval.decided");
    assert_eq!(decided["decision"], "expired");
    assert_eq!(decided["by"], "system");

    // A turn waiting for an approval is cancelled like any other.
    let r = post(&c, &conv, "the slow thing once more", None).await;
    let turn = r.body["turn_id"].as_str().unwrap().to_owned();
    approval_requested(&c, &conv, &turn).await;
    let r = c
        .post(
            &format!("/v1/conversations/{conv}/turns/{turn}/cancel?wait=true"),
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "cancelled", "{:?}", r.body);
    assert!(
        std::fs::read_to_string(&s.cancel_log)
            .unwrap_or_default()
            .is_empty(),
        "the tool never ran, so nothing was cancelled on the server"
    );
}

/// kill -9 while an approval waits: the restarted server waits for the same
/// approval, and the approved call runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_survives_kill_9() {
    let mut s = Setup::start(APPROVALS, &[]).await;
    let c = s.client();
    let conv = c.new_conversation().await;
    let r = post(&c, &conv, "a medium one", None).await;
    let turn = r.body["turn_id"].as_str().unwrap().to_owned();
    let asked = approval_requested(&c, &conv, &turn).await;
    let id = asked["approval_id"].as_str().unwrap().to_owned();
    s.server.restart().await;
    let c = s.client();
    // The resumed turn holds the same approval.
    let mut listed = Value::Null;
    for _ in 0..500 {
        listed = c
            .get(&format!("/v1/conversations/{conv}/approvals"))
            .await
            .body;
        if listed["items"][0]["approval_id"] == id.as_str() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed["items"][0]["approval_id"], id.as_str(), "{listed}");
    let sam = s.server.client("acme", "sam", &["approve"]);
    let r = sam
        .post(
            &format!("/v1/conversations/{conv}/approvals/{id}"),
            json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let (events, answer) = answer_of(&c, &conv, &turn).await;
    assert_eq!(answer, "Done: waited 1.0 s");
    let k = kinds(&events, &turn);
    assert_eq!(
        k.iter().filter(|k| *k == "approval.requested").count(),
        1,
        "{k:?}"
    );
    assert_eq!(
        k.iter().filter(|k| *k == "tool.completed").count(),
        1,
        "{k:?}"
    );
}

/// (webhook-id, body) of each request a receiver got.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// A receiver that refuses the first request with 503 and accepts the rest.
async fn flaky_receiver() -> (Seen, String) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |State(seen): State<Seen>,
                 headers: axum::http::HeaderMap,
                 Json(body): Json<Value>| async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let mut seen = seen.lock().unwrap();
                    seen.push((id, body));
                    if seen.len() == 1 {
                        (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")]).into_response()
                    } else {
                        StatusCode::NO_CONTENT.into_response()
                    }
                },
            ),
        )
        .with_state(seen.clone());
    let base = common::serve_local(app).await;
    (seen, format!("{base}/hook"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_webhooks_deliver_each_outcome_signed_and_retried() {
    use tokio::io::AsyncBufReadExt;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let python = std::env::var("CAIRN_TEST_PYTHON_MCP").expect(
        "CAIRN_TEST_PYTHON_MCP is not set: run the tests with scripts/test.sh, which installs standardwebhooks",
    );
    // The verifier is the `standardwebhooks` package from PyPI.
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cairn-alerts/tests/python/webhook_receiver.py");
    let mut receiver = tokio::process::Command::new(python)
        .arg(script)
        .args([secret, "2"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(receiver.stdout.take().unwrap()).lines();
    let port = lines.next_line().await.unwrap().unwrap();
    let verified = format!("http://127.0.0.1:{port}/turns");
    let (flaky, flaky_url) = flaky_receiver().await;

    let config = r#"
[turn_webhooks]
allow_http = true
secret_env = "TURN_HOOK_SECRET"
[turn_webhooks.allowed_hosts]
acme = ["127.0.0.1"]
[turn_webhooks.delivery]
initial_backoff = "50ms"
max_attempts = 3
"#;
    let s = Setup::start(config, &[("TURN_HOOK_SECRET", secret)]).await;
    let c = s.client();
    let conv = c.new_conversation().await;
    let with_hook = |content: &str, url: &str| json!({"content": content, "webhook": url});
    let path = format!("/v1/conversations/{conv}/messages");

    // Refused before anything runs.
    for bad in [
        "https://evil.example.net/hook",
        "ftp://127.0.0.1/hook",
        "http://user:pw@127.0.0.1/hook",
        "not a url",
        format!("http://127.0.0.1/{}", "x".repeat(2100)).as_str(),
    ] {
        let r = c.post(&path, with_hook("hi", bad)).await;
        assert_eq!(r.status, 400, "{bad}: {:?}", r.body);
        assert_eq!(r.body["error"]["details"]["field"], "webhook");
    }
    let globex = s.server.client("globex", "gil", &[]);
    let theirs = globex.new_conversation().await;
    let r = globex
        .post(
            &format!("/v1/conversations/{theirs}/messages"),
            with_hook("hi", &verified),
        )
        .await;
    assert_eq!(r.status, 400, "another tenant's allow-list: {:?}", r.body);

    // Completed: signed, verified by the standardwebhooks package.
    let r = c.post(&path, with_hook("a quick one", &verified)).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let turn = r.body["turn_id"].as_str().unwrap().to_owned();
    let line: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(line["ok"], true, "{line}");
    let body = &line["body"];
    assert_eq!(body["type"], "turn.completed");
    assert_eq!(body["data"]["turn_id"], turn.as_str());
    assert_eq!(body["data"]["status"], "completed");
    assert_eq!(body["data"]["answer"]["content"], "Done: waited 0.2 s");

    // Cancelled.
    let r = c.post(&path, with_hook("please hang", &verified)).await;
    let turn = r.body["turn_id"].as_str().unwrap().to_owned();
    reached(&c, &conv, &turn, "turn.started").await;
    let r = c
        .post(
            &format!("/v1/conversations/{conv}/turns/{turn}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let line: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(line["ok"], true, "{line}");
    assert_eq!(line["body"]["type"], "turn.cancelled");
    assert_eq!(line["body"]["data"]["error"]["code"], "cancelled");

    // A receiver that fails once gets the same webhook-id again.
    s.model.hang.store(false, Ordering::SeqCst);
    let r = c.post(&path, with_hook("hello", &flaky_url)).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    for _ in 0..500 {
        if flaky.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = flaky.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, seen[1].0, "a retry keeps its webhook-id");
    assert!(!seen[0].0.is_empty());
    assert_eq!(seen[1].1["data"]["answer"]["content"], "You said: hello");
}

/// The user messages of a conversation.
async fn user_messages(c: &Client, conv: &str) -> Vec<String> {
    c.get(&format!("/v1/conversations/{conv}/messages"))
        .await
        .body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits (bounded) until `conv` holds `n` answers.
async fn answers_reach(c: &Client, conv: &str, n: usize) {
    for _ in 0..1000 {
        let r = c.get(&format!("/v1/conversations/{conv}/messages")).await;
        let answers = r.body["items"]
            .as_array()
            .map(|a| a.iter().filter(|m| m["role"] == "assistant").count())
            .unwrap_or(0);
        if answers >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{conv} did not reach {n} answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_once_per_time_and_can_be_paused_and_deleted() {
    let s = Setup::start("[schedules]\ntick = \"200ms\"\nmax_per_user = 2\n", &[]).await;
    let c = s.client();
    s.model.hang.store(false, Ordering::SeqCst);
    let conv = c.new_conversation().await;

    // Refused with the contract.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let past = (chrono::Utc::now() - chrono::Duration::seconds(2)).to_rfc3339();
    let bob = s.server.client("acme", "bob", &[]);
    let bobs = bob.new_conversation().await;
    for (body, field) in [
        (json!({"cron": "every day", "content": "x"}), "cron"),
        (json!({"at": past, "content": "x"}), "at"),
        (
            json!({"cron": "* * * * *", "at": soon, "content": "x"}),
            "cron",
        ),
        (json!({"content": "x"}), "cron"),
        (
            json!({"cron": "* * * * *", "timezone": "Mars/Olympus", "content": "x"}),
            "timezone",
        ),
        (json!({"cron": "* * * * *", "content": " "}), "content"),
    ] {
        let r = c.post("/v1/schedules", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.body["error"]["details"]["field"], field, "{body}");
    }
    let r = c
        .post(
            "/v1/schedules",
            json!({"at": soon, "conversation_id": bobs, "content": "x"}),
        )
        .await;
    assert_eq!(r.status, 404, "another user's conversation: {:?}", r.body);

    // One time, into a conversation: runs once, announced in its events.
    let r = c
        .post(
            "/v1/schedules",
            json!({"at": soon, "conversation_id": conv, "content": "single ping"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["status"], "active");
    let once = r.body["id"].as_str().unwrap().to_owned();
    answers_reach(&c, &conv, 1).await;
    let events = c
        .sse(
            &format!("/v1/conversations/{conv}/events"),
            None,
            Duration::from_secs(10),
            |ev| ev.iter().any(|e| e.1 == "answer.completed"),
        )
        .await;
    let fired = events.iter().find(|e| e.1 == "schedule.fired").unwrap();
    assert_eq!(fired.2["schedule_id"], once.as_str());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(user_messages(&c, &conv).await, vec!["single ping"]);
    let listed = c.get("/v1/schedules").await;
    let one = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == once.as_str())
        .unwrap()
        .clone();
    assert_eq!(one["status"], "done");
    assert_eq!(one["runs"], 1);

    // Every second, a new conversation per run; pause stops it, delete removes it.
    let r = c
        .post(
            "/v1/schedules",
            json!({"cron": "* * * * * *", "timezone": "Europe/Paris", "content": "scheduled hello"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let every = r.body["id"].as_str().unwrap().to_owned();
    // schedules.max_per_user (2 here) bounds how many one user holds.
    let r = c
        .post(
            "/v1/schedules",
            json!({"cron": "0 9 * * *", "content": "one too many"}),
        )
        .await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "too_many_schedules");
    let scheduled = || async {
        c.get("/v1/conversations?limit=100").await.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["title"] == "Scheduled: scheduled hello")
            .count()
    };
    for _ in 0..500 {
        if scheduled().await >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(scheduled().await >= 2);
    let r = c
        .post(&format!("/v1/schedules/{every}/pause"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "paused");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused_at = scheduled().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(scheduled().await, paused_at, "a paused schedule fired");
    let r = bob.delete(&format!("/v1/schedules/{every}")).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "schedule_not_found");
    let r = c.delete(&format!("/v1/schedules/{every}")).await;
    assert_eq!(r.status, 204);
    let listed = c.get("/v1/schedules").await;
    assert!(
        listed.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["id"] != every.as_str())
    );
}

/// A fire time that passed while the server was down runs once when it
/// comes back (within the catch-up window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_time_missed_while_down_runs_once_on_start() {
    let mut s = Setup::start("[schedules]\ntick = \"200ms\"\n", &[]).await;
    s.model.hang.store(false, Ordering::SeqCst);
    let c = s.client();
    let conv = c.new_conversation().await;
    let at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let r = c
        .post(
            "/v1/schedules",
            json!({"at": at, "conversation_id": conv, "content": "missed ping"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    s.server.child.kill().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.server.restart().await;
    let c = s.client();
    answers_reach(&c, &conv, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(user_messages(&c, &conv).await, vec!["missed ping"]);
}

/// `cairn replay` runs a finished turn's question through another model and
/// feeds the new model's tool calls from the recorded results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_replays_against_another_model_from_its_recorded_steps() {
    let s = Setup::start("", &[]).await;
    s.model.hang.store(false, Ordering::SeqCst);
    let c = s.client();
    let conv = c.new_conversation().await;
    c.ask(&conv, "hello there").await;
    let answer = c.ask(&conv, "a quick one").await;
    assert_eq!(answer["answer"]["content"], "Done: waited 0.2 s");
    let turn = answer["turn_id"].as_str().unwrap().to_owned();

    // The recorded steps carry the model's input before the turn.
    let steps = c
        .get(&format!("/v1/conversations/{conv}/turns/{turn}/steps"))
        .await;
    assert_eq!(steps.status, 200, "{:?}", steps.body);
    assert_eq!(steps.body["question"], "a quick one");
    let context: Vec<(String, String)> = steps.body["context"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        context,
        vec![
            ("user".to_owned(), "hello there".to_owned()),
            ("assistant".to_owned(), "You said: hello there".to_owned())
        ]
    );
    let calls_before = s.model.count();

    let replay = |extra: &'static [&'static str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args([
            "replay",
            &turn,
            "--conversation",
            &conv,
            "--model",
            "new-model",
        ])
        .args(extra)
        .arg("--server")
        .arg(&s.server.base)
        .arg("--token")
        .arg(s.server.token("acme", "ana", &[]))
        .arg("--config")
        .arg(&s.server.config)
        .env("CAIRN_JWT_SECRET", common::SECRET)
        .env("CAIRN_LOG", "error");
        cmd
    };
    let out = replay(&["--json"]).output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["old"], "Done: waited 0.2 s");
    assert_eq!(
        v["new"], "New: waited 0.2 s",
        "the recorded result was fed back"
    );
    assert_eq!(v["calls"][0]["recorded"], true);
    assert!(v["calls"][0]["tool"].as_str().unwrap().ends_with("wait"));
    // Two model calls (the tool call, the answer), both with the new model.
    let requests = s.model.requests.lock().unwrap()[calls_before..].to_vec();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r["model"] == "new-model"));
    // The side-by-side form names both columns.
    let out = replay(&[]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("old answer") && text.contains("new answer"),
        "{text}"
    );
    assert!(
        text.contains("Done: waited 0.2 s") && text.contains("New: waited 0.2 s"),
        "{text}"
    );
}
