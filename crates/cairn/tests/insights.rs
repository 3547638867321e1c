//! Support intelligence end to end over HTTP: `POST /v1/messages` → the
//! InsightsActor → insights, per-message analyses, `insights.updated` events and
//! one escalation alert per condition; `POST /v1/analyze`; tenant isolation;
//! and the PII policies proven by grepping everything Cairn wrote (the data
//! dir, Redis, the logs) and what the model was sent.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use axum::routing::post;
use common::{Client, Server, serve_local};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CARD: &str = "4111 1111 1111 1111";
const EMAIL: &str = "ana.lopez@example.com";

/// Polls the conversation's insights until `n` messages are analysed.
async fn insights_after(c: &Client, conv: &str, n: u64) -> Value {
    for _ in 0..1500 {
        let r = c.get(&format!("/v1/conversations/{conv}/insights")).await;
        if r.status == 200 && r.body["analyzed_messages"].as_u64() >= Some(n) {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("conversation {conv} did not reach {n} analysed messages");
}

async fn support(c: &Client, conv: &str, sender: &str, message: &str) -> Value {
    let r = c
        .post(
            "/v1/messages",
            json!({"conversation_id": conv, "sender": sender, "message": message, "channel": "chat", "tenant_id": "acme"}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    r.body
}

fn fast_alerts(config: &mut cairn_core::config::Config) {
    config.alerts.group_wait = Duration::from_millis(100);
    config.alerts.group_interval = Duration::from_millis(300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_messages_build_insights_events_and_one_alert_per_condition() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), None);
    fast_alerts(&mut config);
    let mut s = Server::start(&config).await;
    let c = s.client(&s.token("acme", "ana"));

    let first = support(
        &c,
        "sup-1",
        "customer",
        &format!("Hi, my card {CARD} was charged twice and I want a refund. Email me at {EMAIL}"),
    )
    .await;
    assert_eq!(first["status"], "accepted");
    assert_eq!(first["conversation_id"], "sup-1");
    assert!(first["message_id"].is_string() && first["timestamp"].is_string());

    // The tenant comes from the token.
    let r = c
        .post(
            "/v1/messages",
            json!({"conversation_id": "sup-1", "sender": "customer", "message": "x", "tenant_id": "globex"}),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "forbidden");
    assert!(r.body["error"]["request_id"].is_string());
    let r = c
        .post(
            "/v1/messages",
            json!({"conversation_id": "sup-1", "sender": "bot", "message": "x"}),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = c
        .post(
            "/v1/messages",
            json!({"conversation_id": "sup-1", "sender": "customer", "message": "  "}),
        )
        .await;
    assert_eq!(r.body["error"]["code"], "invalid_field");
    // Too much: a message past agent.max_message_chars, a channel past 64
    // characters, a conversation id past 128.
    let r = c
        .post(
            "/v1/messages",
            json!({"conversation_id": "sup-1", "sender": "customer", "message": "x".repeat(32_001)}),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "message");
    assert_eq!(r.body["error"]["details"]["max"], 32_000);
    let r = c
        .post(
            "/v1/messages",
            json!({"conversation_id": "sup-1", "sender": "customer", "message": "hi", "channel": "c".repeat(65)}),
        )
        .await;
    assert_eq!(
        r.body["error"]["details"]["field"], "channel",
        "{:?}",
        r.body
    );
    let r = c
        .post(
            "/v1/messages",
            json!({"conversation_id": "c".repeat(129), "sender": "customer", "message": "hi"}),
        )
        .await;
    // An id no conversation can have is not found, as on every conversation route.
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "conversation_not_found");

    insights_after(&c, "sup-1", 1).await;
    support(
        &c,
        "sup-1",
        "agent",
        "Sorry about that! I'll check the charges and get back to you.",
    )
    .await;
    support(
        &c,
        "sup-1",
        "customer",
        "Still nothing after two days. This is ridiculous, let me speak to a manager.",
    )
    .await;
    support(
        &c,
        "sup-1",
        "customer",
        "I want to speak to a manager NOW, this is unacceptable!",
    )
    .await;
    let ins = insights_after(&c, "sup-1", 4).await;
    assert_eq!(ins["customer_messages"], 3);
    assert_eq!(ins["sentiment"]["label"], "negative", "{ins:#}");
    assert_eq!(ins["sentiment"]["history"].as_array().unwrap().len(), 3);
    let types: Vec<&str> = ins["pii"]["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"credit_card") && types.contains(&"email"),
        "{types:?}"
    );
    assert_eq!(ins["pii"]["messages_with_pii"], 1);
    assert_eq!(ins["insights"]["requires_escalation"], true);
    let reasons = ins["insights"]["escalation_reasons"].as_array().unwrap();
    assert!(
        reasons.contains(&json!("human_requested")) && reasons.contains(&json!("sensitive_pii")),
        "{reasons:?}"
    );
    assert!(
        ins["summary"]["customer_issue"]
            .as_str()
            .unwrap()
            .contains("[CREDIT_CARD]")
    );
    assert_eq!(ins["summary"]["follow_up_needed"], true);
    // Aggregates never hold values.
    let text = ins.to_string();
    assert!(
        !text.contains("4111") && !text.contains("ana.lopez"),
        "{text}"
    );

    // The transcript has every message with its analysis (`detect` stores text as sent).
    let m = c.get("/v1/conversations/sup-1/messages").await;
    let items = m.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{:#?}", m.body);
    assert_eq!(items[0]["role"], "user");
    assert!(items[0]["content"].as_str().unwrap().contains(CARD));
    assert_eq!(items[1]["role"], "assistant");
    assert_eq!(items[1]["metadata"]["sender"], "agent");
    assert_eq!(items[1]["metadata"]["channel"], "chat");
    for it in items {
        assert!(it["analysis"]["sentiment"]["label"].is_string(), "{it:#}");
    }
    let card = &items[0]["analysis"]["pii"]["entities"];
    assert!(
        card.as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "credit_card" && e["value"] == "****1111"),
        "{card}"
    );
    assert_eq!(items[0]["analysis"]["intent"], "refund_request");

    // Each analysed message raised `insights.updated` on the stream.
    let events = c
        .sse(
            "/v1/conversations/sup-1/events",
            Some("0"),
            Duration::from_secs(10),
            |ev| ev.iter().filter(|e| e.1 == "insights.updated").count() >= 4,
        )
        .await;
    let updates: Vec<&Value> = events
        .iter()
        .filter(|e| e.1 == "insights.updated")
        .map(|e| &e.2)
        .collect();
    assert_eq!(updates.len(), 4, "{events:#?}");
    assert_eq!(updates[3]["insights"]["analyzed_messages"], 4);
    assert_eq!(updates[1]["sender"], "agent");

    // One alert per condition, though the manager was asked for twice.
    let mut alerts = Vec::new();
    for _ in 0..500 {
        let r = c
            .get("/v1/alerts?filter=alertname%3D%22ConversationNeedsHuman%22")
            .await;
        alerts = r.body["alerts"].as_array().cloned().unwrap_or_default();
        if alerts.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = c
        .get("/v1/alerts?filter=alertname%3D%22ConversationNeedsHuman%22")
        .await;
    let alerts_now = r.body["alerts"].as_array().cloned().unwrap_or_default();
    assert_eq!(alerts.len(), alerts_now.len());
    let mut conditions: Vec<String> = alerts_now
        .iter()
        .map(|a| a["labels"]["condition"].as_str().unwrap().to_owned())
        .collect();
    conditions.sort();
    assert_eq!(
        conditions,
        ["human_requested", "negative_high_urgency", "sensitive_pii"],
        "{alerts_now:#?}"
    );
    for a in &alerts_now {
        assert_eq!(a["labels"]["conversation"], "sup-1");
        assert_eq!(a["source"], "insights");
        assert!(!a.to_string().contains("4111"));
    }

    // Tenant and owner isolation.
    let globex = s.client(&s.token("globex", "ana"));
    assert_eq!(
        globex.get("/v1/conversations/sup-1/insights").await.status,
        404
    );
    let bob = s.client(&s.token("acme", "bob"));
    assert_eq!(
        bob.get("/v1/conversations/sup-1/insights").await.status,
        404
    );
    let r = bob
        .post(
            "/v1/messages",
            json!({"conversation_id": "sup-1", "sender": "customer", "message": "hello"}),
        )
        .await;
    assert_eq!(r.status, 404, "{:?}", r.body);

    // Deleting the conversation deletes its insights: a new one with the same
    // id starts from nothing.
    assert_eq!(c.delete("/v1/conversations/sup-1").await.status, 204);
    assert_eq!(c.get("/v1/conversations/sup-1/insights").await.status, 404);
    support(
        &c,
        "sup-1",
        "customer",
        "Hello again, how do I export my data?",
    )
    .await;
    let fresh = insights_after(&c, "sup-1", 1).await;
    assert_eq!(fresh["analyzed_messages"], 1, "{fresh:#}");
    assert_eq!(fresh["pii"]["detected"], false);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_messages_are_analysed_beside_the_turn() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), None);
    let mut s = Server::start(&config).await;
    let c = s.client(&s.token("acme", "ana"));
    let conv = c.new_conversation().await;
    let answer = c
        .ask(
            &conv,
            "I can't log in, the password reset email never arrives",
        )
        .await;
    assert_eq!(answer["status"], "completed");
    let ins = insights_after(&c, &conv, 1).await;
    assert_eq!(ins["insights"]["intent"], "account_access", "{ins:#}");
    let m = c.get(&format!("/v1/conversations/{conv}/messages")).await;
    let items = m.body["items"].as_array().unwrap();
    assert_eq!(items[0]["analysis"]["intent"], "account_access");
    assert!(
        items[1].get("analysis").is_none(),
        "the agent's own answers are not analysed"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_checks_one_text_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), None);
    config.insights.max_text_chars = 200;
    let mut s = Server::start(&config).await;
    let c = s.client(&s.token("acme", "ana"));
    let r = c
        .post(
            "/v1/analyze",
            json!({"text": format!("Great, another outage. Call me at (415) 555-2671 or {EMAIL}")}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let schema: Value = serde_json::from_str(cairn_core::schemas::ANALYSIS_SCHEMA).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    assert!(v.is_valid(&r.body), "{:#}", r.body);
    assert_eq!(r.body["sentiment"]["label"], "negative");
    let kinds: Vec<&str> = r.body["pii"]["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["phone", "email"]);
    assert!(!r.body.to_string().contains("555-2671"));
    assert_eq!(r.body["analyzer"]["sentiment"]["name"], "offline");
    let long = c
        .post("/v1/analyze", json!({"text": "a".repeat(201)}))
        .await;
    assert_eq!(long.status, 400);
    assert_eq!(long.body["error"]["details"]["max"], 200);
    let empty = c.post("/v1/analyze", json!({"text": ""})).await;
    assert_eq!(empty.body["error"]["code"], "invalid_field");
    let extra = c
        .post("/v1/analyze", json!({"text": "hi", "store": true}))
        .await;
    assert_eq!(extra.status, 400);
    let list = c.get("/v1/conversations").await;
    assert_eq!(
        list.body["items"].as_array().unwrap().len(),
        0,
        "nothing stored"
    );
    // Off: a clear 404.
    s.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), None);
    config.insights.enabled = false;
    let mut s = Server::start(&config).await;
    let c = s.client(&s.token("acme", "ana"));
    let r = c.post("/v1/analyze", json!({"text": "hi"})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["code"], "insights_disabled");
    s.stop().await;
}

/// Every byte under `dir`, lossily as text.
fn dir_text(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    out
}

/// Every value under `prefix` in Redis, as text.
async fn redis_text(url: &str, prefix: &str) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "no keys under {prefix}");
    let mut out = String::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut con)
            .await
            .unwrap();
        // The read command of each type, with its arguments after the key.
        let (read, extra): (&str, &[&str]) = match kind.as_str() {
            "string" => ("GET", &[]),
            "hash" => ("HGETALL", &[]),
            "list" => ("LRANGE", &["0", "-1"]),
            "set" => ("SMEMBERS", &[]),
            "zset" => ("ZRANGE", &["0", "-1"]),
            "stream" => ("XRANGE", &["-", "+"]),
            other => panic!("key {k} has an unexpected type {other}"),
        };
        let v: redis::Value = redis::cmd(read)
            .arg(&k)
            .arg(extra)
            .query_async(&mut con)
            .await
            .unwrap();
        out.push_str(&k);
        out.push_str(&format!("{v:?}"));
    }
    out
}

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Logs {
    let logs = Logs::default();
    let w = logs.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug,hyper=info,h2=info,rustls=info,reqwest=info")
        .with_writer(move || w.clone())
        .try_init();
    logs
}

/// Posts PII through both entry points and waits for both analyses.
async fn post_pii(c: &Client) -> String {
    support(
        c,
        "pii-1",
        "customer",
        &format!("Card {CARD}, mail {EMAIL}"),
    )
    .await;
    insights_after(c, "pii-1", 1).await;
    let conv = c.new_conversation().await;
    let answer = c
        .ask(
            &conv,
            &format!("Please update my email to {EMAIL}; card {CARD}"),
        )
        .await;
    assert_eq!(answer["status"], "completed", "{answer:#}");
    insights_after(c, &conv, 1).await;
    conv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_policies_hold_in_the_data_dir_redis_and_logs() {
    let logs = capture_logs();
    let raw_card = CARD;
    for (policy, redis) in [
        ("detect", false),
        ("redact_store", false),
        ("redact_store", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let url = redis.then(common::redis_url);
        let mut config = common::config(dir.path(), url.clone());
        config.insights.pii = serde_json::from_value(json!(policy)).unwrap();
        let prefix = config.redis.key_prefix.clone();
        let mut s = Server::start(&config).await;
        let c = s.client(&s.token("acme", "ana"));
        let conv = post_pii(&c).await;
        // What the API shows follows the policy too.
        let m = c.get(&format!("/v1/conversations/{conv}/messages")).await;
        let shown = m.body.to_string();
        s.stop().await;
        let stored = match &url {
            Some(u) => redis_text(u, &prefix).await + &dir_text(dir.path()),
            None => dir_text(dir.path()),
        };
        let where_ = format!("{policy} (redis: {redis})");
        if policy == "detect" {
            // The check can see the values when they are there.
            assert!(
                stored.contains(raw_card) && stored.contains(EMAIL),
                "{where_}: values not found"
            );
            assert!(shown.contains(EMAIL));
        } else {
            assert!(
                !stored.contains(raw_card),
                "{where_}: the card number was persisted"
            );
            assert!(!stored.contains(EMAIL), "{where_}: the email was persisted");
            assert!(
                !shown.contains(EMAIL) && shown.contains("[EMAIL]"),
                "{where_}: {shown}"
            );
            // The analysis still knows what was there.
            assert!(shown.contains("\"credit_card\""), "{where_}: {shown}");
        }
    }
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(
        logs.contains("support message accepted"),
        "the logs were captured"
    );
    assert!(
        !logs.contains(raw_card) && !logs.contains("4111111111111111"),
        "a card number in the logs"
    );
    assert!(!logs.contains(EMAIL), "an email in the logs");
}

/// An OpenAI-wire model that records what it is sent and answers with the
/// email placeholder it was shown.
#[derive(Clone, Default)]
struct Recorder {
    bodies: Arc<Mutex<Vec<String>>>,
}

async fn chat(
    axum::extract::State(r): axum::extract::State<Recorder>,
    body: String,
) -> axum::Json<Value> {
    r.bodies.lock().unwrap().push(body.clone());
    let v: Value = serde_json::from_str(&body).unwrap();
    let last = v["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let content = match last.find("<EMAIL_1>") {
        Some(_) => "Done: your email is now <EMAIL_1>.".to_owned(),
        None => "Done.".to_owned(),
    };
    axum::Json(
        json!({"id": "c1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_model_shows_the_model_placeholders_and_the_user_the_values() {
    let rec = Recorder::default();
    let url = serve_local(
        axum::Router::new()
            .route("/chat/completions", post(chat))
            .with_state(rec.clone()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), None);
    config.llm.provider = cairn_core::config::Provider::Openai;
    config.llm.base_url = Some(url);
    config.llm.model = Some("test-model".into());
    config.llm.stream = false;
    config.insights.pii = cairn_core::insights::PiiPolicy::RedactModel;
    let mut s = Server::start(&config).await;
    let c = s.client(&s.token("acme", "ana"));
    let conv = c.new_conversation().await;
    let answer = c
        .ask(
            &conv,
            &format!("Please change my email to {EMAIL}, card {CARD}"),
        )
        .await;
    assert_eq!(
        answer["answer"]["content"],
        format!("Done: your email is now {EMAIL}."),
        "{answer:#}"
    );
    let sent = rec.bodies.lock().unwrap().join("\n");
    assert!(
        sent.contains("<EMAIL_1>") && sent.contains("<CREDIT_CARD_1>"),
        "{sent}"
    );
    assert!(
        !sent.contains(EMAIL) && !sent.contains("4111"),
        "the model saw PII: {sent}"
    );
    // The same value keeps its placeholder in the next turn.
    rec.bodies.lock().unwrap().clear();
    c.ask(&conv, "And what email did I give you?").await;
    let sent = rec.bodies.lock().unwrap().join("\n");
    assert!(
        sent.contains("<EMAIL_1>") && !sent.contains(EMAIL),
        "{sent}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_a_conversations_insights_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), None);
    config.memory.retention = Duration::from_secs(2);
    config.memory.retention_sweep = Duration::from_secs(1);
    let mut s = Server::start(&config).await;
    let c = s.client(&s.token("acme", "ana"));
    let first = support(
        &c,
        "sup-ret",
        "customer",
        "My parcel never arrived, I want a refund",
    )
    .await;
    let conv = first["conversation_id"].as_str().unwrap().to_owned();
    insights_after(&c, &conv, 1).await;

    // Idle past `memory.retention`: the sweep deletes the conversation...
    let mut gone = false;
    for _ in 0..300 {
        if c.get(&format!("/v1/conversations/{conv}")).await.status == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the idle conversation was not purged");
    // ...and its insights: a new conversation under the same id starts from nothing.
    support(&c, "sup-ret", "customer", "Where is my order?").await;
    let ins = insights_after(&c, &conv, 1).await;
    assert_eq!(ins["analyzed_messages"], 1, "{ins:#}");
    s.stop().await;
}
