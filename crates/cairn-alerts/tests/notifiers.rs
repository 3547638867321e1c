//! The receivers against servers speaking each service's wire format, over real
//! HTTP: Slack (Block Kit within Slack's limits; 429 with `Retry-After`, then
//! 500, then accepted once), webhooks verified by the Python `standardwebhooks`
//! package (and a tampered body refused), PagerDuty Events API v2.

#![allow(clippy::unwrap_used, missing_docs)]

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cairn_alerts::notify::{self, Channel, SLACK_MAX_BLOCKS, deliver};
use cairn_alerts::records::{AlertState, DeliveryStatus, Message, NotificationRecord};
use cairn_core::alerts::{Alert, AlertSource};
use cairn_core::alerts_config::{DeliveryConfig, ReceiverConfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn record(alerts: usize, status: &str) -> NotificationRecord {
    let now = chrono::Utc::now();
    let list: Vec<AlertState> = (0..alerts)
        .map(|i| {
            let mut a = Alert::firing("DiskFull", "acme", "critical", AlertSource::Api)
                .label("instance", format!("host-{i}"))
                .annotation("summary", format!("disk <{i}> & more is full"))
                .annotation("runbook_url", "https://runbooks.example.com/disk");
            a.conversation_id = Some("conv-1".into());
            if status == "resolved" {
                a.ends_at = Some(now - chrono::Duration::seconds(1));
            }
            AlertState {
                fingerprint: a.fingerprint(),
                alert: a,
                received_at: now,
                updated_at: now,
            }
        })
        .collect();
    NotificationRecord {
        id: uuid::Uuid::now_v7().to_string(),
        tenant: "acme".into(),
        group_key: "acme/root/ops/abc".into(),
        receiver: "ops".into(),
        kind: "slack".into(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        last_error: None,
        created_at: now,
        updated_at: now,
        sent_at: None,
        message: Message {
            status: status.into(),
            group_labels: BTreeMap::from([
                ("alertname".to_owned(), "DiskFull".to_owned()),
                ("tenant".to_owned(), "acme".to_owned()),
            ]),
            alerts: list,
            total: alerts,
        },
    }
}

fn policy() -> DeliveryConfig {
    DeliveryConfig {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(5),
        max_attempts: 5,
        ..DeliveryConfig::default()
    }
}

fn receiver(toml_text: &str) -> ReceiverConfig {
    toml::from_str(toml_text).unwrap()
}

fn channel(rc: &ReceiverConfig, env: &[(&str, String)]) -> Arc<dyn Channel> {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let lookup = move |k: &str| env.get(k).cloned();
    let mut c = notify::channels(
        std::slice::from_ref(rc),
        &lookup,
        Duration::from_secs(5),
        Some("https://cairn.example.com".into()),
    )
    .unwrap();
    c.remove(&rc.name).unwrap()
}

/// Serves `app` on a free loopback port.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Slack's documented limits for a message with blocks in an attachment.
fn check_block_kit(body: &Value) -> Result<usize, String> {
    let text = body["text"].as_str().ok_or("no fallback text")?;
    if text.is_empty() || text.chars().count() > 3000 {
        return Err("fallback text empty or too long".into());
    }
    let atts = body["attachments"].as_array().ok_or("no attachments")?;
    let mut count = 0;
    for att in atts {
        let color = att["color"].as_str().ok_or("no color")?;
        if !(color.starts_with('#') && color.len() == 7) {
            return Err(format!("bad color {color}"));
        }
        for b in att["blocks"].as_array().ok_or("no blocks")? {
            count += 1;
            match b["type"].as_str().ok_or("block without type")? {
                "header" => {
                    if b["text"]["type"] != "plain_text" {
                        return Err("header text is not plain_text".into());
                    }
                    let n = b["text"]["text"]
                        .as_str()
                        .ok_or("header without text")?
                        .chars()
                        .count();
                    if n == 0 || n > 150 {
                        return Err(format!("header of {n} chars"));
                    }
                }
                "section" => {
                    let n = b["text"]["text"]
                        .as_str()
                        .ok_or("section without text")?
                        .chars()
                        .count();
                    if n == 0 || n > 3000 {
                        return Err(format!("section text of {n} chars"));
                    }
                    if let Some(fields) = b.get("fields").and_then(Value::as_array) {
                        if fields.len() > 10 {
                            return Err(format!("{} fields", fields.len()));
                        }
                        for f in fields {
                            let n = f["text"]
                                .as_str()
                                .ok_or("field without text")?
                                .chars()
                                .count();
                            if n == 0 || n > 2000 {
                                return Err(format!("field of {n} chars"));
                            }
                        }
                    }
                }
                "context" => {
                    let e = b["elements"].as_array().ok_or("context without elements")?;
                    if e.is_empty() || e.len() > 10 {
                        return Err("context elements".into());
                    }
                }
                "divider" => {}
                other => return Err(format!("unexpected block type {other}")),
            }
        }
    }
    if count == 0 || count > 50 {
        return Err(format!("{count} blocks"));
    }
    Ok(count)
}

/// A scripted answer: status and optional `Retry-After`.
type Scripted = (u16, Option<&'static str>);
/// What the server saw: arrival, status given, body.
type Arrival = (Instant, u16, Value);

#[derive(Clone, Default)]
struct SlackWire {
    /// Responses still to give, first to last (then `ok`).
    script: Arc<Mutex<Vec<Scripted>>>,
    /// (arrival, status given, body)
    seen: Arc<Mutex<Vec<Arrival>>>,
}

async fn slack_hook(State(w): State<SlackWire>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let valid = headers
        .get("content-type")
        .is_some_and(|v| v == "application/json")
        && check_block_kit(&parsed).is_ok();
    let (status, retry) = if valid {
        let mut s = w.script.lock().unwrap();
        if s.is_empty() {
            (200, None)
        } else {
            s.remove(0)
        }
    } else {
        (400, None)
    };
    w.seen
        .lock()
        .unwrap()
        .push((Instant::now(), status, parsed));
    let text = match status {
        200 => "ok",
        400 => "invalid_blocks",
        429 => "rate_limited",
        _ => "internal_error",
    };
    let mut resp = (StatusCode::from_u16(status).unwrap(), text).into_response();
    if let Some(r) = retry {
        resp.headers_mut().insert("retry-after", r.parse().unwrap());
    }
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_waits_out_retry_after_retries_5xx_and_delivers_once_within_limits() {
    let wire = SlackWire::default();
    let base = serve(
        Router::new()
            .route("/services/T0/B0/x", post(slack_hook))
            .with_state(wire.clone()),
    )
    .await;
    let rc = receiver(
        "name = \"ops\"\nall_tenants = true\nmax_per_second = 20.0\nslack = { url_env = \"SLACK_URL\" }",
    );
    let ch = channel(&rc, &[("SLACK_URL", format!("{base}/services/T0/B0/x"))]);
    // First message: accepted at once.
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = reports.clone();
    deliver(ch.clone(), record(3, "firing"), policy(), move |n| {
        r.lock().unwrap().push(n)
    })
    .await;
    assert_eq!(
        reports.lock().unwrap().last().unwrap().status,
        DeliveryStatus::Sent
    );
    // Second: 429 (Retry-After: 2), then 500, then accepted.
    *wire.script.lock().unwrap() = vec![(429, Some("2")), (500, None)];
    reports.lock().unwrap().clear();
    let r = reports.clone();
    let n = record(1, "firing");
    let id = n.id.clone();
    deliver(ch.clone(), n, policy(), move |n| r.lock().unwrap().push(n)).await;
    let reports = reports.lock().unwrap().clone();
    let statuses: Vec<DeliveryStatus> = reports.iter().map(|n| n.status).collect();
    assert_eq!(
        statuses,
        [
            DeliveryStatus::Retrying,
            DeliveryStatus::Retrying,
            DeliveryStatus::Sent
        ]
    );
    assert_eq!(
        reports[0].last_error.as_deref(),
        Some("HTTP 429: rate_limited")
    );
    assert_eq!(
        reports[1].last_error.as_deref(),
        Some("HTTP 500: internal_error")
    );
    assert!(reports.iter().all(|n| n.id == id));
    assert_eq!(reports[2].attempts, 3);
    let seen = wire.seen.lock().unwrap().clone();
    let statuses: Vec<u16> = seen.iter().map(|s| s.1).collect();
    assert_eq!(
        statuses,
        [200, 429, 500, 200],
        "accepted exactly once after the failures"
    );
    let waited = seen[2].0 - seen[1].0;
    assert!(
        waited >= Duration::from_secs(2),
        "Retry-After honoured: waited {waited:?}"
    );
    // Colour, links and escaping.
    let body = &seen[0].2;
    assert_eq!(body["attachments"][0]["color"], "#E01E5A");
    let dump = body.to_string();
    assert!(dump.contains("disk &lt;0&gt; &amp; more is full"), "{dump}");
    assert!(dump.contains("<https://runbooks.example.com/disk|runbook>"));
    assert!(dump.contains("<https://cairn.example.com/v1/conversations/conv-1|conversation>"));
    assert!(dump.contains("[FIRING:3] DiskFull (acme)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_500_alerts_fits_in_one_slack_message() {
    let wire = SlackWire::default();
    let base = serve(
        Router::new()
            .route("/hook", post(slack_hook))
            .with_state(wire.clone()),
    )
    .await;
    let rc = receiver("name = \"ops\"\nall_tenants = true\nslack = { url_env = \"SLACK_URL\" }");
    let ch = channel(&rc, &[("SLACK_URL", format!("{base}/hook"))]);
    let mut big = record(500, "firing");
    // Long texts are cut to Slack's limits, not rejected.
    for a in &mut big.message.alerts {
        a.alert
            .annotations
            .insert("description".into(), "x".repeat(5000));
        for i in 0..20 {
            a.alert.labels.insert(format!("l{i}"), "y".repeat(3000));
        }
    }
    let body = notify::slack_body(&big, None);
    let blocks = check_block_kit(&body).unwrap();
    assert!(blocks <= SLACK_MAX_BLOCKS);
    assert!(
        body.to_string()
            .contains("…and 480 more alerts in this group")
    );
    ch.send(&big).await.unwrap();
    let resolved = notify::slack_body(&record(2, "resolved"), None);
    assert_eq!(resolved["attachments"][0]["color"], "#2EB67D");
    assert!(resolved["text"].as_str().unwrap().starts_with("[RESOLVED]"));
    check_block_kit(&resolved).unwrap();
    assert_eq!(wire.seen.lock().unwrap()[0].1, 200);
}

fn python() -> String {
    std::env::var("CAIRN_TEST_PYTHON_MCP").expect(
        "CAIRN_TEST_PYTHON_MCP is not set: run the tests with scripts/test.sh, which installs the Python test clients",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_so_that_the_python_standardwebhooks_package_verifies_them() {
    use tokio::io::AsyncBufReadExt;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/webhook_receiver.py"
    );
    let mut child = tokio::process::Command::new(python())
        .args([script, secret, "2"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port = lines.next_line().await.unwrap().unwrap();
    let url = format!("http://127.0.0.1:{port}/alerts");
    let rc = receiver(&format!(
        "name = \"ops\"\nall_tenants = true\nwebhook = {{ url = \"{url}\", secret_env = \"HOOK_SECRET\" }}"
    ));
    let ch = channel(&rc, &[("HOOK_SECRET", secret.to_owned())]);
    let mut n = record(2, "firing");
    n.kind = "webhook".into();
    ch.send(&n).await.unwrap();
    let line: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(line["ok"], true, "{line}");
    assert_eq!(
        line["id"],
        n.id.as_str(),
        "webhook-id is the notification id"
    );
    let body = &line["body"];
    assert_eq!(body["version"], "4");
    assert_eq!(body["groupKey"], "acme/root/ops/abc");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "ops");
    assert_eq!(body["groupLabels"]["alertname"], "DiskFull");
    assert_eq!(body["commonLabels"]["alertname"], "DiskFull");
    assert!(
        body["commonLabels"].get("instance").is_none(),
        "instance differs between the alerts"
    );
    assert_eq!(body["alerts"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["alerts"][0]["fingerprint"],
        n.message.alerts[0].fingerprint.as_str()
    );
    assert_eq!(body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(body["externalURL"], "https://cairn.example.com");
    // A tampered body with the original signature is refused.
    let signer = standardwebhooks::Webhook::new(secret).unwrap();
    let ts = chrono::Utc::now().timestamp();
    let good = br#"{"status":"firing"}"#;
    let sig = signer.sign("msg_1", ts, good).unwrap();
    let resp = reqwest::Client::new()
        .post(&url)
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .header("content-type", "application/json")
        .body(r#"{"status":"resolved"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let line: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(line["ok"], false);
    let _ = child.wait().await;
}

#[test]
fn signatures_match_the_standard_webhooks_test_vector() {
    // The spec's published example: id msg_p5jXN8AQM9LWM0D4loKWxJek,
    // timestamp 1614265330, body {"test": 2432232314}.
    let signer = standardwebhooks::Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let sig = signer
        .sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
    assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

#[derive(Clone, Default)]
struct PagerDutyWire {
    events: Arc<Mutex<Vec<Value>>>,
}

async fn pd_enqueue(State(w): State<PagerDutyWire>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"status": "invalid event", "message": "Event object is invalid"})),
        )
            .into_response();
    };
    let action = v["event_action"].as_str().unwrap_or("");
    let dedup = v["dedup_key"].as_str().unwrap_or("").to_owned();
    let mut errors = Vec::new();
    if v["routing_key"] != "R0UT1NGKEY0123456789012345678901" {
        errors.push("routing_key");
    }
    if !["trigger", "acknowledge", "resolve"].contains(&action) {
        errors.push("event_action");
    }
    if dedup.is_empty() || dedup.len() > 255 {
        errors.push("dedup_key");
    }
    if action == "trigger" {
        let p = &v["payload"];
        if p["summary"]
            .as_str()
            .is_none_or(|s| s.is_empty() || s.len() > 1024)
        {
            errors.push("payload.summary");
        }
        if p["source"].as_str().is_none_or(str::is_empty) {
            errors.push("payload.source");
        }
        if !["critical", "error", "warning", "info"].contains(&p["severity"].as_str().unwrap_or(""))
        {
            errors.push("payload.severity");
        }
    }
    if !errors.is_empty() {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}))).into_response();
    }
    w.events.lock().unwrap().push(v);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "success", "message": "Event processed", "dedup_key": dedup})),
    )
        .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_gets_trigger_then_resolve_with_the_group_as_dedup_key() {
    let wire = PagerDutyWire::default();
    let base = serve(
        Router::new()
            .route("/v2/enqueue", post(pd_enqueue))
            .with_state(wire.clone()),
    )
    .await;
    let rc = receiver(&format!(
        "name = \"pd\"\nall_tenants = true\nmax_per_second = 50.0\npagerduty = {{ routing_key_env = \"PD_KEY\", url = \"{base}/v2/enqueue\" }}"
    ));
    let ch = channel(
        &rc,
        &[("PD_KEY", "R0UT1NGKEY0123456789012345678901".into())],
    );
    ch.send(&record(2, "firing")).await.unwrap();
    ch.send(&record(2, "resolved")).await.unwrap();
    let events = wire.events.lock().unwrap().clone();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_action"], "trigger");
    assert_eq!(events[0]["payload"]["severity"], "critical");
    assert!(
        events[0]["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("DiskFull")
    );
    assert_eq!(
        events[0]["links"][0]["href"],
        "https://runbooks.example.com/disk"
    );
    assert_eq!(events[1]["event_action"], "resolve");
    assert_eq!(events[0]["dedup_key"], events[1]["dedup_key"]);
    // A wrong key is a permanent 400: failed after one attempt, no retries.
    let bad = channel(&rc, &[("PD_KEY", "wrong".into())]);
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = reports.clone();
    deliver(bad, record(1, "firing"), policy(), move |n| {
        r.lock().unwrap().push(n)
    })
    .await;
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].status, DeliveryStatus::Failed);
    assert_eq!(reports[0].attempts, 1);
    assert_eq!(reports[0].last_error.as_deref(), Some("HTTP 400"));
}

#[test]
fn a_missing_secret_names_the_config_key() {
    let rc = receiver("name = \"ops\"\nall_tenants = true\nslack = { url_env = \"NOPE\" }");
    let err = notify::channels(&[rc], &|_| None, Duration::from_secs(1), None)
        .err()
        .unwrap();
    assert!(err.contains("alerts.receivers[0].slack.url_env"), "{err}");
    assert!(err.contains("NOPE"));
}
