//! The alert pipeline end to end: alerts raised through the API, by the agent's
//! `escalate` tool (a scripted model speaking OpenAI's wire format) and by the
//! MCP breaker rule reach webhook receivers run by the test; the real
//! `cairn serve` binary is killed (SIGKILL) before and after sending, and the
//! next process sends what was owed, repeating at most once with the same
//! `webhook-id`.

#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use common::*;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A webhook receiver: records (webhook-id, body); while `hold` is set, the
/// request is kept waiting (never answered) and only recorded.
#[derive(Clone, Default)]
struct Hook {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    hold: Arc<AtomicBool>,
}

async fn hook(State(h): State<Hook>, headers: HeaderMap, body: Bytes) -> &'static str {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    h.seen
        .lock()
        .unwrap()
        .push((id, serde_json::from_slice(&body).unwrap_or(Value::Null)));
    while h.hold.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    "ok"
}

impl Hook {
    async fn serve(&self) -> String {
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    fn seen(&self) -> Vec<(String, Value)> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the received notifications.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[(String, Value)]) -> bool) {
        for _ in 0..1000 {
            if pred(&self.seen()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{what}: got {:#?}", self.seen());
    }

    /// Notifications about alerts named `name`.
    fn about(&self, name: &str) -> Vec<(String, Value)> {
        self.seen()
            .into_iter()
            .filter(|(_, b)| b["groupLabels"]["alertname"] == name)
            .collect()
    }
}

fn alerts_config(url: &str) -> String {
    format!(
        "[alerts]\nreceiver = \"ops\"\ngroup_by = [\"alertname\"]\ngroup_wait = \"300ms\"\n\
         group_interval = \"500ms\"\nexternal_url = \"https://cairn.example.com\"\n\
         [alerts.delivery]\ninitial_backoff = \"100ms\"\nmax_backoff = \"500ms\"\n\
         [[alerts.receivers]]\nname = \"ops\"\nall_tenants = true\nmax_per_second = 100.0\n\
         webhook = {{ url = \"{url}\" }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_before_sending_sends_after_restart_and_after_sending_repeats_once_with_the_same_id()
 {
    let receiver = Hook::default();
    let url = receiver.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let config = alerts_config(&url).replace("group_wait = \"300ms\"", "group_wait = \"2s\"");
    let mut s = Binary::start(dir.path(), &config, &[]).await;
    let c = s.client("acme", "pager", &["alerts"]);
    // Accepted, then killed before group_wait ends: nothing was sent yet.
    let r = c
        .post("/v1/alerts", json!([{"labels": {"alertname": "Before", "severity": "critical"}, "annotations": {"summary": "db down"}}]))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    s.restart().await;
    assert!(receiver.about("Before").is_empty(), "killed before group_wait");
    receiver
        .wait_for("the restarted process sends what was accepted", |_| {
            !receiver.about("Before").is_empty()
        })
        .await;
    let before = receiver.about("Before");
    assert_eq!(before[0].1["alerts"][0]["labels"]["tenant"], "acme");
    assert_eq!(before[0].1["alerts"][0]["annotations"]["summary"], "db down");
    // Received by the receiver but not answered (so not recorded): killed.
    receiver.hold.store(true, Ordering::SeqCst);
    let c = s.client("acme", "pager", &["alerts"]);
    let r = c
        .post("/v1/alerts", json!([{"labels": {"alertname": "After"}}]))
        .await;
    assert_eq!(r.status, 202);
    receiver
        .wait_for("the notification reaches the receiver", |_| {
            !receiver.about("After").is_empty()
        })
        .await;
    s.restart().await;
    receiver.hold.store(false, Ordering::SeqCst);
    receiver
        .wait_for("the unrecorded notification is sent again", |_| {
            receiver.about("After").len() >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = receiver.about("After");
    assert_eq!(after.len(), 2, "at most one repeat");
    assert_eq!(after[0].0, after[1].0, "the repeat carries the same webhook-id");
    assert!(!after[0].0.is_empty());
    assert_eq!(receiver.about("Before").len(), 1, "nothing else repeats");
    // The log says sent.
    let c = s.client("acme", "pager", &[]);
    let log = c.get("/v1/alerts/notifications").await;
    let entry = log.body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == after[0].0.as_str())
        .cloned()
        .unwrap();
    assert_eq!(entry["status"], "sent");
}

#[derive(Clone, Default)]
struct Model {
    /// While set, the request carrying the tool's observation is not answered.
    hang: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

async fn chat(State(m): State<Model>, axum::Json(body): axum::Json<Value>) -> axum::Json<Value> {
    m.requests.fetch_add(1, Ordering::SeqCst);
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let observed = messages
        .iter()
        .rev()
        .take_while(|m| m["role"] != "user")
        .any(|m| m["role"] == "tool");
    if !observed {
        let offered = body["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["function"]["name"] == "escalate"));
        assert!(offered, "escalate is offered to the model");
        return axum::Json(json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "escalate",
             "arguments": "{\"reason\":\"The customer reports data loss after the upgrade\",\"severity\":\"critical\"}"}}
        ]}}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}));
    }
    while m.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    axum::Json(json!({"choices": [{"message": {"role": "assistant",
        "content": "I have paged our on-call engineers; they will contact you."}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4}}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_escalates_once_with_a_conversation_link_even_when_its_turn_resumes_after_a_crash()
 {
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
    let receiver = Hook::default();
    let url = receiver.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("CAIRN_LLM__PROVIDER", "openai"),
        ("CAIRN_LLM__BASE_URL", model_url.as_str()),
        ("CAIRN_LLM__MODEL", "test-model"),
        ("CAIRN_LLM__STREAM", "false"),
    ];
    let mut s = Binary::start(dir.path(), &alerts_config(&url), &env).await;
    let c = s.client("acme", "ana", &[]);
    let conv = c.new_conversation().await;
    let r = c
        .post(
            &format!("/v1/conversations/{conv}/messages"),
            json!({"content": "I lost all my data after your upgrade!"}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    // The page arrives while the turn's next model call hangs.
    receiver
        .wait_for("the escalation pages on-call", |_| {
            !receiver.about("Escalation").is_empty()
        })
        .await;
    assert_eq!(model.requests.load(Ordering::SeqCst), 2);
    let page = receiver.about("Escalation")[0].1.clone();
    let alert = &page["alerts"][0];
    assert_eq!(alert["labels"]["tenant"], "acme");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["labels"]["conversation"], conv.as_str());
    assert_eq!(alert["conversationId"], conv.as_str());
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("data loss")
    );
    // Killed mid-turn; the next process resumes the turn.
    s.restart().await;
    model.hang.store(false, Ordering::SeqCst);
    let c = s.client("acme", "ana", &[]);
    let events = c
        .sse(
            &format!("/v1/conversations/{conv}/events"),
            Some("0"),
            Duration::from_secs(30),
            |ev| ev.iter().any(|e| e.1 == "answer.completed"),
        )
        .await;
    assert!(events.iter().any(|e| e.1 == "answer.completed"), "{events:#?}");
    // The conversation's event stream shows the escalation.
    let firing = events
        .iter()
        .find(|e| e.1 == "alert.firing")
        .unwrap_or_else(|| panic!("no alert.firing in {events:#?}"));
    assert_eq!(firing.2["alertname"], "Escalation");
    assert_eq!(firing.2["severity"], "critical");
    // Several group intervals later: still one page.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.about("Escalation").len(), 1, "{:#?}", receiver.seen());
    let listed = c.get("/v1/alerts?filter=alertname%3D%22Escalation%22").await;
    let alerts = listed.body["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["conversationId"], conv.as_str());
    assert_eq!(alerts[0]["source"], "agent");
}
