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
        format!("{}/hook", serve_local(app).await)
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
    assert!(
        receiver.about("Before").is_empty(),
        "killed before group_wait"
    );
    receiver
        .wait_for("the restarted process sends what was accepted", |_| {
            !receiver.about("Before").is_empty()
        })
        .await;
    let before = receiver.about("Before");
    assert_eq!(before[0].1["alerts"][0]["labels"]["tenant"], "acme");
    assert_eq!(
        before[0].1["alerts"][0]["annotations"]["summary"],
        "db down"
    );
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
    assert_eq!(
        after[0].0, after[1].0,
        "the repeat carries the same webhook-id"
    );
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
        return axum::Json(
            json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "escalate",
             "arguments": "{\"reason\":\"The customer reports data loss after the upgrade\",\"severity\":\"critical\"}"}}
        ]}}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}),
        );
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
    let model_url = serve_local(app).await;
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
    assert!(
        events.iter().any(|e| e.1 == "answer.completed"),
        "{events:#?}"
    );
    // The conversation's event stream shows the escalation.
    let firing = events
        .iter()
        .find(|e| e.1 == "alert.firing")
        .unwrap_or_else(|| panic!("no alert.firing in {events:#?}"));
    assert_eq!(firing.2["alertname"], "Escalation");
    assert_eq!(firing.2["severity"], "critical");
    // Several group intervals later: still one page. The kill may land
    // between the delivery and its record, so the restarted process resends
    // it (at least once) under the same `webhook-id`, which is how a
    // Standard Webhooks receiver drops the repeat: count distinct ids.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pages: std::collections::BTreeSet<String> = receiver
        .about("Escalation")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(pages.len(), 1, "{:#?}", receiver.seen());
    assert!(
        !pages.iter().next().unwrap().is_empty(),
        "a webhook-id is sent"
    );
    let listed = c
        .get("/v1/alerts?filter=alertname%3D%22Escalation%22")
        .await;
    let alerts = listed.body["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["conversationId"], conv.as_str());
    assert_eq!(alerts[0]["source"], "agent");
}

fn with_alerts(config: &mut cairn_core::config::Config, text: &str) {
    let table: toml::Table = toml::from_str(text).unwrap();
    config.alerts = table["alerts"].clone().try_into().unwrap();
    config.validate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_api_is_tenant_scoped_and_speaks_the_error_contract() {
    let (acme_hook, globex_hook) = (Hook::default(), Hook::default());
    let (a_url, g_url) = (acme_hook.serve().await, globex_hook.serve().await);
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), None);
    with_alerts(
        &mut config,
        &format!(
            "[alerts]\ngroup_wait = \"100ms\"\ngroup_interval = \"300ms\"\nmax_alerts_per_request = 3\n\
             [[alerts.receivers]]\nname = \"acme-hook\"\ntenant = \"acme\"\nmax_per_second = 100.0\nwebhook = {{ url = \"{a_url}\" }}\n\
             [[alerts.receivers]]\nname = \"globex-hook\"\ntenant = \"globex\"\nmax_per_second = 100.0\nwebhook = {{ url = \"{g_url}\" }}\n\
             [[alerts.routes]]\nmatchers = ['tenant=\"acme\"']\nreceiver = \"acme-hook\"\n\
             [[alerts.routes]]\nmatchers = ['tenant=\"globex\"']\nreceiver = \"globex-hook\"\n"
        ),
    );
    let mut s = Server::start(&config).await;
    let acme = s.client(&s.token_with_scopes("acme", "pager", &["alerts"]));
    let globex = s.client(&s.token_with_scopes("globex", "pager", &["alerts"]));
    let reader = s.client(&s.token("acme", "viewer"));

    // The token decides the tenant, whatever the labels say.
    let r = acme
        .post("/v1/alerts", json!([{"labels": {"alertname": "Quota", "tenant": "globex"}, "annotations": {"summary": "near the limit"}}]))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    acme_hook
        .wait_for("acme's receiver is paged", |seen| !seen.is_empty())
        .await;
    assert_eq!(
        acme_hook.seen()[0].1["alerts"][0]["labels"]["tenant"],
        "acme"
    );
    let mine = reader.get("/v1/alerts").await;
    assert_eq!(mine.status, 200);
    assert_eq!(mine.body["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(mine.body["alerts"][0]["status"], "firing");
    assert!(
        globex.get("/v1/alerts").await.body["alerts"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        globex_hook.seen().is_empty(),
        "globex's receiver never hears of acme"
    );
    // Filters.
    let none = reader.get("/v1/alerts?state=resolved").await;
    assert!(none.body["alerts"].as_array().unwrap().is_empty());
    let hit = reader
        .get("/v1/alerts?filter=alertname%3D~%22Quo.*%22")
        .await;
    assert_eq!(hit.body["alerts"].as_array().unwrap().len(), 1);
    let bad = reader.get("/v1/alerts?filter=alertname%3D~%22(%22").await;
    assert_eq!(
        (bad.status, bad.body["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );

    // The error contract.
    let no_scope = reader
        .post("/v1/alerts", json!([{"labels": {"alertname": "X"}}]))
        .await;
    assert_eq!(
        (no_scope.status, no_scope.body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    for (body, field) in [
        (json!([{"labels": {"severity": "critical"}}]), "0.labels"),
        (
            json!([{"labels": {"alertname": "X", "bad-name": "v"}}]),
            "0.labels",
        ),
        (
            json!([{"labels": {"alertname": "X"}, "startsAt": "2026-01-02T00:00:00Z", "endsAt": "2026-01-01T00:00:00Z"}]),
            "0.endsAt",
        ),
        (
            json!([{"labels": {"alertname": "X"}}, {"labels": {"alertname": "X"}}, {"labels": {"alertname": "X"}}, {"labels": {"alertname": "X"}}]),
            "alerts",
        ),
    ] {
        let r = acme.post("/v1/alerts", body).await;
        assert_eq!(r.status, 400, "{:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_field");
        assert_eq!(r.body["error"]["details"]["field"], field, "{:?}", r.body);
    }
    let unknown = acme
        .post(
            "/v1/alerts",
            json!([{"labels": {"alertname": "X"}, "extra": 1}]),
        )
        .await;
    assert_eq!(unknown.status, 400, "{:?}", unknown.body);
    // Too much of anything is refused: label values, label counts, regex size, matcher counts.
    let long_value = "v".repeat(1025);
    let r = acme
        .post(
            "/v1/alerts",
            json!([{"labels": {"alertname": "X", "big": long_value}}]),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["details"]["field"].as_str()),
        (400, Some("0.labels"))
    );
    let mut labels: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("l{i}"), json!("v"))).collect();
    labels.insert("alertname".into(), json!("X"));
    let r = acme.post("/v1/alerts", json!([{ "labels": labels }])).await;
    assert_eq!(
        (r.status, r.body["error"]["details"]["field"].as_str()),
        (400, Some("0.labels"))
    );
    let huge_regex = format!("alertname%3D~%22{}%22", "a".repeat(2000));
    let r = reader.get(&format!("/v1/alerts?filter={huge_regex}")).await;
    assert_eq!(
        (r.status, r.body["error"]["details"]["field"].as_str()),
        (400, Some("filter"))
    );
    let matchers: Vec<String> = (0..65).map(|i| format!("l{i}=\"v\"")).collect();
    let r = acme
        .post(
            "/v1/silences",
            json!({"matchers": matchers, "duration": "1h", "comment": "x"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["details"]["field"].as_str()),
        (400, Some("matchers"))
    );

    // Silences: created, listed per tenant, expired; another tenant cannot see or expire them.
    let sil = acme
        .post("/v1/silences", json!({"matchers": ["alertname=\"Quota\""], "duration": "1h", "comment": "raising the quota"}))
        .await;
    assert_eq!(sil.status, 201, "{:?}", sil.body);
    assert_eq!(sil.body["status"]["state"], "active");
    assert_eq!(sil.body["createdBy"], "pager");
    let id = sil.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reader.get("/v1/silences").await.body["silences"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        globex.get("/v1/silences").await.body["silences"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let listed = reader.get("/v1/alerts").await;
    assert_eq!(listed.body["alerts"][0]["silencedBy"][0], id.as_str());
    let theirs = globex.delete(&format!("/v1/silences/{id}")).await;
    assert_eq!(
        (theirs.status, theirs.body["error"]["code"].as_str()),
        (404, Some("silence_not_found"))
    );
    let expired = acme.delete(&format!("/v1/silences/{id}")).await;
    assert_eq!(expired.status, 200);
    assert_eq!(expired.body["status"]["state"], "expired");
    let bad = acme
        .post(
            "/v1/silences",
            json!({"matchers": [], "duration": "1h", "comment": "x"}),
        )
        .await;
    assert_eq!(bad.status, 400);
    let bad = acme
        .post(
            "/v1/silences",
            json!({"matchers": ["a=\"b\""], "comment": "x"}),
        )
        .await;
    assert_eq!(bad.body["error"]["details"]["field"], "endsAt");

    // Test notifications go to the tenant's own receivers only.
    let t = acme
        .post("/v1/alerts/test", json!({"receiver": "acme-hook"}))
        .await;
    assert_eq!(t.status, 200, "{:?}", t.body);
    assert_eq!(t.body["notification"]["status"], "sent");
    acme_hook
        .wait_for("the test notification", |seen| {
            seen.iter()
                .any(|(_, b)| b["groupLabels"]["alertname"] == "CairnTest")
        })
        .await;
    let other = acme
        .post("/v1/alerts/test", json!({"receiver": "globex-hook"}))
        .await;
    assert_eq!(
        (
            other.status,
            other.body["error"]["details"]["field"].as_str()
        ),
        (400, Some("receiver"))
    );

    // The notification log, per tenant, with a real Host name on the request.
    let log = reader
        .send(
            reader
                .req(reqwest::Method::GET, "/v1/alerts/notifications")
                .header("host", "cairn.example.com"),
        )
        .await;
    assert_eq!(log.status, 200, "{:?}", log.body);
    let entries = log.body["notifications"].as_array().unwrap();
    assert!(entries.len() >= 2);
    assert!(
        entries
            .iter()
            .all(|n| n["tenant"] == "acme" && n["status"] == "sent")
    );
    assert!(
        globex.get("/v1/alerts/notifications").await.body["notifications"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_whose_breaker_opens_fires_an_alert_that_resolves_when_it_recovers() {
    let hook_rx = Hook::default();
    let url = hook_rx.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_BIN_EXE_cairn"))
        .parent()
        .unwrap()
        .join("mcp-fixture");
    assert!(fixture.exists(), "build the workspace first (mcp-fixture)");
    let flag = dir.path().join("healthy");
    let mut config = common::config(&dir.path().join("data"), None);
    let mcp: toml::Table = toml::from_str(&format!(
        "breaker_failures = 2\nbreaker_cooldown = \"300ms\"\n[[servers]]\nname = \"flaky\"\ncommand = \"/bin/sh\"\n\
         args = [\"-c\", \"test -f '{}' && exec '{}' || exit 1\"]\nallowed_tenants = [\"*\"]\n",
        flag.display(),
        fixture.display()
    ))
    .unwrap();
    config.mcp = mcp.try_into().unwrap();
    with_alerts(
        &mut config,
        &format!(
            "[alerts]\nreceiver = \"ops\"\ngroup_wait = \"100ms\"\ngroup_interval = \"300ms\"\n\
             [alerts.rules]\ncheck_interval = \"100ms\"\n\
             [[alerts.receivers]]\nname = \"ops\"\nall_tenants = true\nmax_per_second = 100.0\nwebhook = {{ url = \"{url}\" }}\n"
        ),
    );
    let mut s = Server::start(&config).await;
    let breaker = |seen: &[(String, Value)], status: &str| {
        seen.iter().any(|(_, b)| {
            b["groupLabels"]["alertname"] == "McpBreakerOpen" && b["status"] == status
        })
    };
    hook_rx
        .wait_for("McpBreakerOpen fires", |seen| breaker(seen, "firing"))
        .await;
    let firing = hook_rx.about("McpBreakerOpen")[0].1.clone();
    assert_eq!(firing["alerts"][0]["labels"]["server"], "flaky");
    assert_eq!(firing["alerts"][0]["labels"]["tenant"], "_system");
    assert_eq!(firing["alerts"][0]["labels"]["severity"], "critical");
    std::fs::write(&flag, "").unwrap();
    hook_rx
        .wait_for("McpBreakerOpen resolves once the server is back", |seen| {
            breaker(seen, "resolved")
        })
        .await;
    // The operator sees it resolved; a tenant does not see `_system` alerts.
    let op = s.client(&s.token_with_scopes("ops", "root", &["operator"]));
    let all = op
        .get("/v1/alerts?filter=alertname%3D%22McpBreakerOpen%22")
        .await;
    assert_eq!(
        all.body["alerts"][0]["status"], "resolved",
        "{:?}",
        all.body
    );
    let tenant = s.client(&s.token("acme", "ana"));
    assert!(
        tenant.get("/v1/alerts").await.body["alerts"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    s.stop().await;
}

/// Runs `cairn alerts …` against `s`.
async fn cli(s: &Binary, token: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("alerts")
        .args(args)
        .args(["--server", &s.base, "--token", token])
        .env_remove("CAIRN_TOKEN")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_alerts_manages_silences_and_tests_receivers() {
    let receiver = Hook::default();
    let url = receiver.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let s = Binary::start(dir.path(), &alerts_config(&url), &[]).await;
    let token = s.token("acme", "oncall", &["alerts"]);
    let c = s.client("acme", "oncall", &["alerts"]);
    let r = c
        .post("/v1/alerts", json!([{"labels": {"alertname": "DiskFull", "instance": "db1"}, "annotations": {"summary": "95% used"}}]))
        .await;
    assert_eq!(r.status, 202);
    // The alert reaches the pipeline through the bus: list until it shows (a
    // busy machine may take a moment).
    let mut listed = cli(&s, &token, &["list"]).await;
    for _ in 0..100 {
        if listed.1.contains("DiskFull") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        listed = cli(&s, &token, &["list"]).await;
    }
    let (ok, out) = listed;
    assert!(ok, "{out}");
    assert!(
        out.contains("DiskFull") && out.contains("instance=db1") && out.contains("95% used"),
        "{out}"
    );
    let (ok, out) = cli(
        &s,
        &token,
        &[
            "silence",
            "add",
            "alertname=\"DiskFull\"",
            "--duration",
            "2h",
            "--comment",
            "resizing the volume",
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("active") && out.contains("resizing the volume"),
        "{out}"
    );
    let id = out.split_whitespace().next().unwrap().to_owned();
    let (_, out) = cli(&s, &token, &["list", "--state", "firing"]).await;
    assert!(out.contains("(silenced)"), "{out}");
    let (ok, out) = cli(&s, &token, &["silence", "expire", &id]).await;
    assert!(ok && out.contains("expired"), "{out}");
    let (ok, out) = cli(&s, &token, &["test", "ops"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("test notification sent to ops"), "{out}");
    let (ok, out) = cli(&s, &token, &["test", "nobody"]).await;
    assert!(!ok && out.contains("invalid_field"), "{out}");
    let (ok, out) = cli(&s, &token, &["notifications"]).await;
    assert!(ok && out.contains("sent"), "{out}");
    let (ok, out) = cli(
        &s,
        &token,
        &["silence", "add", "bad matcher", "--comment", "x"],
    )
    .await;
    assert!(!ok && out.contains("invalid_field"), "{out}");
}

/// An OpenAI-wire model server that fails every call with a 500.
async fn failing_model() -> String {
    let app = axum::Router::new().route(
        "/chat/completions",
        post(|| async {
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(
                    json!({"error": {"message": "upstream exploded", "type": "server_error"}}),
                ),
            )
        }),
    );
    serve_local(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_provider_fires_model_and_turn_failure_alerts_for_the_tenant() {
    let receiver = Hook::default();
    let url = receiver.serve().await;
    let model_url = failing_model().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), None);
    config.llm.provider = cairn_core::config::Provider::Openai;
    config.llm.base_url = Some(model_url);
    config.llm.model = Some("test-model".into());
    config.llm.max_retries = 0;
    config.llm.stream = false;
    with_alerts(
        &mut config,
        &format!(
            "[alerts]\nreceiver = \"acme\"\ngroup_wait = \"100ms\"\ngroup_interval = \"300ms\"\n\
             [alerts.rules]\ncheck_interval = \"100ms\"\nturn_failure_min = 2\nmodel_failure_min = 2\n\
             [[alerts.receivers]]\nname = \"acme\"\ntenant = \"acme\"\nmax_per_second = 100.0\nwebhook = {{ url = \"{url}\" }}\n"
        ),
    );
    let mut s = Server::start(&config).await;
    let c = s.client(&s.token("acme", "ana"));
    for _ in 0..2 {
        let conv = c.new_conversation().await;
        let r = c
            .post(
                &format!("/v1/conversations/{conv}/messages?wait=true"),
                json!({"content": "hello"}),
            )
            .await;
        assert_eq!(r.body["status"], "failed", "{:?}", r.body);
    }
    receiver
        .wait_for("ModelFailures and TurnFailures fire", |_| {
            !receiver.about("ModelFailures").is_empty()
                && !receiver.about("TurnFailures").is_empty()
        })
        .await;
    let m = &receiver.about("ModelFailures")[0].1["alerts"][0];
    assert_eq!(m["labels"]["tenant"], "acme");
    assert!(
        m["annotations"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("2 of 2 model calls failed")
    );
    // The provider's error body stays out of the alert.
    assert!(
        !receiver
            .seen()
            .iter()
            .any(|(_, b)| b.to_string().contains("upstream exploded"))
    );
    s.stop().await;
}
