//! The support desk end to end on a real server: tickets are accepted through
//! the bus, enriched (offline planner with citations, or a model speaking the
//! OpenAI wire format), filtered and paged, edited and re-enriched; high risk
//! alerts once; messages are routed by intent to agent profiles and handed off;
//! feedback replaces per user and answer; analytics come from counters.

#![allow(clippy::unwrap_used)]

mod common;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use common::{Client, Reply, Server, config};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{:?}", r.body);
}

/// Polls a ticket until its enrichment is no longer pending.
async fn settled(c: &Client, id: &str) -> Value {
    for _ in 0..400 {
        let r = c.get(&format!("/v1/tickets/{id}")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        if r.body["enrichment"] != "pending" {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ticket {id} was not enriched in time");
}

/// Polls `path` until `done` holds.
async fn eventually(c: &Client, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..400 {
        let r = c.get(path).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        if done(&r.body) {
            return r.body;
        }
        last = r.body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never got there; last: {last}");
}

fn ids(page: &Value) -> Vec<String> {
    page["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ticket_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn add_refund_policy(c: &Client) {
    let r = c
        .post(
            "/v1/documents",
            json!({
                "document_id": "refunds",
                "title": "Refund policy",
                "text": "# Refunds\n\nA duplicate charge is refunded to the original card within five business days of the request.\n",
            }),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let d = common::finished(c, "refunds").await;
    assert_eq!(d["job"]["status"], "done", "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_enriched_filtered_paged_edited_and_alert_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&config(dir.path(), None)).await;
    let c = s.client(&s.token_with_scopes("acme", "desk", &["ingest", "desk"]));
    add_refund_policy(&c).await;

    // Accepted once durable, then enriched.
    let angry = json!({
        "ticket_id": "T-1",
        "subject": "Charged twice!!",
        "body": "This is outrageous. You charged my card 4111 1111 1111 1111 twice for the same invoice and I want the duplicate charge refunded now.",
        "channel": "email",
        "priority": "high",
        "customer_id": "cust-9",
    });
    let r = c.post("/v1/tickets", angry.clone()).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["ticket_id"], "T-1");
    assert_eq!(r.body["status"], "pending");
    let event_id = r.body["event_id"].as_str().unwrap().to_owned();
    for (i, (subject, body, channel)) in [
        (
            "Thanks",
            "The new dashboard is great, thank you for the quick fix!",
            "chat",
        ),
        (
            "Login fails",
            "I cannot log in to the app since the update, it says invalid password.",
            "web",
        ),
    ]
    .iter()
    .enumerate()
    {
        let r = c
            .post(
                "/v1/tickets",
                json!({"ticket_id": format!("T-{}", i + 2), "subject": subject, "body": body,
                       "channel": channel, "customer_id": "cust-1"}),
            )
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    let t1 = settled(&c, "T-1").await;
    assert_eq!(t1["enrichment"], "enriched", "{t1}");
    let cat1 = t1["category"].as_str().unwrap().to_owned();
    assert!(
        ["billing", "refund_request"].contains(&cat1.as_str()),
        "{t1}"
    );
    assert_eq!(t1["sentiment"], "negative");
    assert!(t1["risk"].as_f64().unwrap() >= 0.8, "{t1}");
    assert_eq!(t1["risk_factors"]["pii"], 1.0);
    assert_eq!(t1["pii_types"], json!(["credit_card"]));
    assert!(t1["summary"].as_str().unwrap().starts_with("Charged twice"));
    let reply = &t1["suggested_reply"];
    assert_eq!(reply["drafted_by"], "offline");
    assert!(
        reply["text"]
            .as_str()
            .unwrap()
            .contains("five business days"),
        "{reply}"
    );
    assert_eq!(reply["citations"][0]["source"], "refunds", "{reply}");
    let summary = t1["summary"].as_str().unwrap();
    assert!(
        !summary.contains("4111"),
        "the summary is redacted: {summary}"
    );
    assert!(summary.contains("[CREDIT_CARD]"), "{summary}");
    let t2 = settled(&c, "T-2").await;
    assert_eq!(t2["sentiment"], "positive");
    assert!(t2["risk"].as_f64().unwrap() < 0.3, "{t2}");
    settled(&c, "T-3").await;

    // Idempotent on ticket_id: the same submission gets the same answer; a
    // different one under the same id is a conflict.
    let again = c.post("/v1/tickets", angry.clone()).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["event_id"], event_id.as_str());
    assert_eq!(again.body["status"], "enriched");
    let mut other = angry.clone();
    other["subject"] = json!("Something else");
    assert_error(&c.post("/v1/tickets", other).await, 409, "conflict");
    // …and on Idempotency-Key.
    let keyed = |c: &Client| {
        c.req(reqwest::Method::POST, "/v1/tickets")
            .header("Idempotency-Key", "form-42")
            .json(&json!({"subject": "Where is my order", "body": "Order 55 has not arrived yet.", "channel": "form", "customer_id": "cust-2"}))
    };
    let k1 = c.send(keyed(&c)).await;
    let k2 = c.send(keyed(&c)).await;
    assert_eq!(k1.status, 202, "{:?}", k1.body);
    assert_eq!(k1.body["ticket_id"], k2.body["ticket_id"]);
    let t4 = k1.body["ticket_id"].as_str().unwrap().to_owned();
    settled(&c, &t4).await;

    // Filters, sorting and cursor paging.
    let risky = c.get("/v1/tickets?risk_min=0.8").await;
    assert_eq!(ids(&risky.body), ["T-1"]);
    let same = c
        .get(&format!("/v1/tickets?category={cat1}&status=enriched"))
        .await;
    assert_eq!(ids(&same.body), ["T-1"]);
    assert_eq!(ids(&c.get("/v1/tickets?q=PASSWORD").await.body), ["T-3"]);
    assert_eq!(
        ids(&c
            .get("/v1/tickets?channel=chat&sentiment=positive")
            .await
            .body),
        ["T-2"]
    );
    let by_risk = c.get("/v1/tickets?sort=risk&order=desc&limit=10").await;
    assert_eq!(ids(&by_risk.body)[0], "T-1");
    let mut seen = Vec::new();
    let mut path = "/v1/tickets?limit=1&order=asc".to_owned();
    loop {
        let page = c.get(&path).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        seen.extend(ids(&page.body));
        match page.body["next_cursor"].as_str() {
            Some(cur) => path = format!("/v1/tickets?limit=1&order=asc&cursor={}", urlencode(cur)),
            None => break,
        }
    }
    assert_eq!(seen, ["T-1", "T-2", "T-3", t4.as_str()]);
    let future = "2099-01-01T00:00:00Z";
    assert!(ids(&c.get(&format!("/v1/tickets?from={future}")).await.body).is_empty());

    // Bad input gets the error contract.
    assert_error(&c.get("/v1/tickets?risk_min=2").await, 400, "invalid_field");
    assert_error(
        &c.get("/v1/tickets?status=lost").await,
        400,
        "invalid_field",
    );
    assert_error(
        &c.get("/v1/tickets?limit=100000").await,
        400,
        "invalid_field",
    );
    assert_error(&c.get("/v1/tickets?colour=red").await, 400, "invalid_field");
    let bad_channel = json!({"subject": "x", "body": "y", "channel": "pigeon", "customer_id": "c"});
    assert_error(
        &c.post("/v1/tickets", bad_channel).await,
        400,
        "invalid_field",
    );
    assert_error(
        &c.post(
            "/v1/tickets",
            json!({"subject": "x", "channel": "email", "customer_id": "c"}),
        )
        .await,
        422,
        "missing_field",
    );
    let huge =
        json!({"subject": "x", "body": "y".repeat(20_001), "channel": "email", "customer_id": "c"});
    assert_error(&c.post("/v1/tickets", huge).await, 400, "invalid_field");
    assert_error(&c.get("/v1/tickets/nope").await, 404, "ticket_not_found");
    // Tickets are tenant-scoped.
    let globex = s.client(&s.token_with_scopes("globex", "desk", &["desk"]));
    assert_error(
        &globex.get("/v1/tickets/T-1").await,
        404,
        "ticket_not_found",
    );
    assert!(ids(&globex.get("/v1/tickets").await.body).is_empty());

    // PATCH workflow fields; an edit of the text is re-enriched.
    let req = c
        .req(reqwest::Method::PATCH, "/v1/tickets/T-3")
        .json(&json!({"status": "in_progress", "assignee": "ana", "tags": ["vip", "app"]}));
    let p = c.send(req).await;
    assert_eq!(p.status, 200, "{:?}", p.body);
    assert_eq!(p.body["status"], "in_progress");
    assert_eq!(
        p.body["enrichment"], "enriched",
        "workflow edits keep the enrichment"
    );
    assert_eq!(
        ids(&c
            .get("/v1/tickets?assignee=ana&status=in_progress")
            .await
            .body),
        ["T-3"]
    );
    let req = c
        .req(reqwest::Method::PATCH, "/v1/tickets/T-3")
        .json(&json!({
            "body": "Please refund my subscription, I was charged but cannot use the app."
        }));
    let p = c.send(req).await;
    assert_eq!(p.status, 200, "{:?}", p.body);
    assert_eq!(p.body["revision"], 2);
    assert_eq!(p.body["enrichment"], "pending");
    let before = c.get("/v1/tickets/T-3").await.body;
    let t3 = settled(&c, "T-3").await;
    assert_eq!(t3["enriched_revision"], 2);
    assert_eq!(t3["category"], "refund_request", "{t3} (was {before})");
    assert_eq!(t3["assignee"], "ana");
    let bad = c
        .req(reqwest::Method::PATCH, "/v1/tickets/T-3")
        .json(&json!({"status": "lost"}));
    assert_error(&c.send(bad).await, 400, "invalid_field");

    // The high-risk ticket raised exactly one alert, even after an edit that
    // is enriched (and still risky) again.
    let req = c.req(reqwest::Method::PATCH, "/v1/tickets/T-1").json(&json!({
        "body": "You charged my card 4111 1111 1111 1111 twice and nobody answers. I want a refund today or I call my lawyer."
    }));
    assert_eq!(c.send(req).await.status, 200);
    let t1 = settled(&c, "T-1").await;
    assert_eq!(t1["enriched_revision"], 2);
    assert!(t1["risk"].as_f64().unwrap() >= 0.8, "{t1}");
    let alerts = eventually(
        &c,
        "/v1/alerts?filter=alertname%3D%22TicketHighRisk%22",
        |b| !b["alerts"].as_array().unwrap().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alerts2 = c
        .get("/v1/alerts?filter=alertname%3D%22TicketHighRisk%22")
        .await
        .body;
    assert_eq!(alerts2["alerts"].as_array().unwrap().len(), 1, "{alerts2}");
    assert_eq!(alerts["alerts"][0]["labels"]["ticket"], "T-1");
    assert_eq!(alerts["alerts"][0]["source"], "tickets");

    // Categories, sentiments and ticket analytics (from counters).
    let cats = c.get("/v1/categories").await.body;
    assert!(
        cats["categories"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["category"] == "refund_request")
    );
    assert_eq!(
        c.get("/v1/sentiments").await.body["sentiments"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let a = eventually(&c, "/v1/analytics/tickets", |b| {
        b["total_tickets"] == 4 && b["enriched"] == 4
    })
    .await;
    assert_eq!(a["high_risk_count"], 1, "{a}");
    let t3_cat = t3["category"].as_str().unwrap();
    let by_cat = a["by_category"].as_object().unwrap();
    assert_eq!(
        by_cat.values().map(|v| v.as_i64().unwrap()).sum::<i64>(),
        4,
        "re-enrichment replaces: {a}"
    );
    assert!(by_cat[t3_cat].as_i64().unwrap() >= 1, "{a}");
    assert_eq!(a["by_channel"]["email"], 1);
    assert!(a["avg_risk"].as_f64().unwrap() > 0.0);
    assert_error(
        &c.get("/v1/analytics/tickets?from=2020-01-01T00:00:00Z")
            .await,
        400,
        "invalid_field",
    );
    s.stop().await;
}

/// A `PATCH` puts an edit's revision on the bus before it stores it. When the
/// process dies in between, the next one still stores and enriches the
/// revision from the bus (after `tickets.edit_wait`): it is not dropped as
/// stale because the store still holds the older revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_on_the_bus_is_stored_and_enriched_when_its_request_died_before_storing_it() {
    use cairn_core::envelope::{Envelope, TICKET_SUBMITTED};
    use cairn_core::ports::{EventBus, TicketStore, Topics};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.tickets.edit_wait = Duration::from_millis(300);
    let mut s = Server::start(&cfg).await;
    let c = s.client(&s.token_with_scopes("acme", "desk", &["desk"]));
    let r = c
        .post(
            "/v1/tickets",
            json!({"ticket_id": "E-1", "subject": "Login fails",
                   "body": "I cannot log in to the app since the update, it says invalid password.",
                   "channel": "web", "customer_id": "cust-5"}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let t = settled(&c, "E-1").await;
    assert_eq!(t["enriched_revision"], 1, "{t}");
    assert_eq!(t["category"], "account_access", "{t}");
    s.stop().await;

    // What the PATCH leaves when it dies after publishing: revision 2 on the
    // bus (with the event id the API gives it), revision 1 in the store.
    let edited = "Please refund my subscription, I was charged but cannot use the app.";
    {
        let path = dir.path().join(cairn::app::MEMORY_FILE);
        let mut db = None;
        for _ in 0..200 {
            if let Ok(d) = cairn_redb::Db::open(&path) {
                db = Some(d);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let db = db.expect("the data dir reopens");
        let store = cairn_store::EmbeddedStore::on_db(db.clone(), 100)
            .await
            .unwrap();
        let tenant = cairn_core::TenantId::parse("acme").unwrap();
        let stored = store.get_ticket(&tenant, "E-1").await.unwrap().unwrap();
        assert_eq!(stored.revision, 1);
        let mut sub = stored.submission();
        sub.body = edited.into();
        sub.revision = 2;
        let env = Envelope::with_id(
            cairn_core::envelope::derived_event_id("ticket.submitted/acme/E-1/2"),
            TICKET_SUBMITTED,
            tenant,
            serde_json::to_value(&sub).unwrap(),
        );
        let bus = cairn_bus::EmbeddedBus::sharing(db).await.unwrap();
        bus.publish(
            &Topics::with_prefix(&cfg.bus.topic_prefix).tickets,
            "E-1",
            &env,
        )
        .await
        .unwrap();
    }
    let mut s = Server::start(&cfg).await;
    let c = s.client(&s.token_with_scopes("acme", "desk", &["desk"]));
    let t = eventually(&c, "/v1/tickets/E-1", |t| t["enriched_revision"] == 2).await;
    assert_eq!(t["revision"], 2, "{t}");
    assert_eq!(t["enrichment"], "enriched", "{t}");
    assert_eq!(t["body"], edited, "{t}");
    assert_eq!(t["category"], "refund_request", "{t}");
    s.stop().await;
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

type Script = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// An OpenAI-compatible chat server that records each request.
#[derive(Clone)]
struct Model {
    requests: Arc<Mutex<Vec<Value>>>,
    /// The assistant message for a request.
    script: Script,
}

impl Model {
    fn new(script: impl Fn(&Value) -> Value + Send + Sync + 'static) -> Self {
        Self {
            requests: Arc::default(),
            script: Arc::new(script),
        }
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }
}

/// A `null` script answer is a provider outage (HTTP 500).
async fn chat(
    State(m): State<Model>,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    m.requests.lock().unwrap().push(body.clone());
    let message = (m.script)(&body);
    if message.is_null() {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "upstream exploded at https://internal.example/x"}})),
        );
    }
    (
        axum::http::StatusCode::OK,
        Json(
            json!({"choices": [{"message": message, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 11, "completion_tokens": 7}}),
        ),
    )
}

fn text(t: &str) -> Value {
    json!({"role": "assistant", "content": t})
}

fn call(name: &str, args: Value) -> Value {
    json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": format!("call_{name}"), "type": "function",
         "function": {"name": name, "arguments": args.to_string()}}]})
}

/// The last message's role (did a tool just answer?).
fn after_tool(body: &Value) -> bool {
    body["messages"].as_array().unwrap().last().unwrap()["role"] == "tool"
}

async fn start_model(model: Model) -> String {
    let app = axum::Router::new()
        .route("/chat/completions", post(chat))
        .with_state(model);
    common::serve_local(app).await
}

fn with_model(mut cfg: cairn_core::config::Config, url: &str) -> cairn_core::config::Config {
    cfg.llm.provider = cairn_core::config::Provider::Openai;
    cfg.llm.base_url = Some(url.to_owned());
    cfg.llm.model = Some("test-model".into());
    cfg.llm.stream = false;
    cfg
}

/// The last user message's text.
fn question(body: &Value) -> String {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn tool_names(body: &Value) -> Vec<String> {
    let mut n: Vec<String> = body["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_model_the_agent_drafts_the_reply_and_a_failing_model_fails_the_ticket() {
    cairn_llm::http::install_crypto_provider();
    let model = Model::new(|body| {
        if question(body).contains("broken") {
            return Value::Null;
        }
        if body["tools"].as_array().is_some_and(|t| !t.is_empty()) && !after_tool(body) {
            return call(
                "search_knowledge",
                json!({"query": "duplicate charge refund"}),
            );
        }
        text(
            "Sorry about the double charge: we refund duplicate charges to the original card within five business days.",
        )
    });
    let url = start_model(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = with_model(config(dir.path(), None), &url);
    cfg.tickets.max_attempts = 1;
    cfg.llm.max_retries = 0;
    let mut s = Server::start(&cfg).await;
    let c = s.client(&s.token_with_scopes("acme", "desk", &["ingest", "desk"]));
    add_refund_policy(&c).await;
    let r = c
        .post(
            "/v1/tickets",
            json!({"ticket_id": "L-1", "subject": "Double charge", "body": "I was charged twice for my plan.",
                   "channel": "email", "customer_id": "cust-3"}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let t = settled(&c, "L-1").await;
    assert_eq!(t["enrichment"], "enriched", "{t}");
    let reply = &t["suggested_reply"];
    assert_eq!(reply["drafted_by"], "openai");
    assert!(
        reply["text"]
            .as_str()
            .unwrap()
            .starts_with("Sorry about the double charge")
    );
    assert_eq!(reply["citations"][0]["source"], "refunds", "{reply}");
    // The drafter offered the model the knowledge base only, and the model saw
    // what it found.
    let drafts: Vec<Value> = model
        .requests()
        .into_iter()
        .filter(|b| question(b).contains("charged twice"))
        .collect();
    assert_eq!(tool_names(&drafts[0]), ["search_knowledge"]);
    assert!(drafts[1].to_string().contains("five business days"));

    let r = c
        .post(
            "/v1/tickets",
            json!({"ticket_id": "L-2", "subject": "broken", "body": "This one breaks the model.",
                   "channel": "email", "customer_id": "cust-3"}),
        )
        .await;
    assert_eq!(r.status, 202);
    let t = settled(&c, "L-2").await;
    assert_eq!(t["enrichment"], "failed", "{t}");
    let reason = t["failure_reason"].as_str().unwrap();
    assert!(reason.starts_with("reply_draft_failed"), "{reason}");
    assert!(
        !reason.contains("example"),
        "no provider words in reasons: {reason}"
    );
    assert_eq!(t["category"], Value::Null);
    let failed = c.get("/v1/tickets?status=failed").await;
    assert_eq!(ids(&failed.body), ["L-2"]);
    s.stop().await;
}

const BILLING_PROMPT: &str = "You are the billing agent.";
const GENERAL_PROMPT: &str = "You are the general agent.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_routed_by_intent_and_handed_off_with_memory() {
    cairn_llm::http::install_crypto_provider();
    let model = Model::new(|body| {
        let q = question(body);
        let system = body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if q.contains("talk to someone else") && system == BILLING_PROMPT && !after_tool(body) {
            return call(
                "handoff",
                json!({"agent": "general", "reason": "not about billing"}),
            );
        }
        text(&format!(
            "answer from {}",
            if system == BILLING_PROMPT {
                "billing"
            } else {
                "general"
            }
        ))
    });
    let url = start_model(model.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = with_model(config(dir.path(), None), &url);
    cfg.agents = vec![
        cairn_core::desk_config::AgentProfile {
            name: "billing".into(),
            description: "Invoices and charges.".into(),
            system_prompt: BILLING_PROMPT.into(),
            tools: Some(vec!["current_time".into()]),
            temperature: Some(0.1),
            max_tokens: Some(321),
            ..Default::default()
        },
        cairn_core::desk_config::AgentProfile {
            name: "general".into(),
            description: "Everything else.".into(),
            system_prompt: GENERAL_PROMPT.into(),
            ..Default::default()
        },
    ];
    cfg.routing.default_agent = Some("general".into());
    cfg.routing.rules = ["billing", "account_access"]
        .iter()
        .map(|i| cairn_core::desk_config::RoutingRule {
            intent: Some((*i).into()),
            tenant: None,
            agent: "billing".into(),
        })
        .collect();
    let mut s = Server::start(&cfg).await;
    let c = s.client(&s.token_with_scopes("acme", "ana", &["desk"]));
    let conv = c.new_conversation().await;

    // A billing question goes to the billing agent, with only its tools.
    let a = c
        .ask(
            &conv,
            "Why is my invoice higher this month? I was billed twice.",
        )
        .await;
    assert_eq!(a["answer"]["content"], "answer from billing", "{a:#}");
    let first = model.requests().last().unwrap().clone();
    assert_eq!(first["messages"][0]["content"], BILLING_PROMPT);
    assert_eq!(tool_names(&first), ["current_time", "handoff"]);
    assert!(
        (first["temperature"].as_f64().unwrap() - 0.1).abs() < 1e-6,
        "{first}"
    );
    assert_eq!(first["max_tokens"], 321);

    // The billing agent hands off mid-conversation; the general agent answers
    // the same turn, with every tool and the earlier messages.
    let a = c
        .ask(
            &conv,
            "Actually I want to talk to someone else about my account.",
        )
        .await;
    assert_eq!(a["answer"]["content"], "answer from general", "{a:#}");
    let last = model.requests().last().unwrap().clone();
    assert_eq!(last["messages"][0]["content"], GENERAL_PROMPT);
    assert_eq!(
        tool_names(&last),
        ["current_time", "escalate", "handoff", "search_knowledge"],
        "every tool, and handoff back"
    );
    assert!(
        last.to_string().contains("billed twice"),
        "memory is kept: {last}"
    );
    // The pin holds for the next turn, even for a billing question.
    let a = c.ask(&conv, "And my invoice, was I billed twice?").await;
    assert_eq!(a["answer"]["content"], "answer from general", "{a:#}");

    // The profile is visible in the transcript and the turns' events.
    let msgs = c
        .get(&format!("/v1/conversations/{conv}/messages"))
        .await
        .body;
    let agents: Vec<(Value, Value)> = msgs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| {
            (
                m["metadata"]["agent"]["name"].clone(),
                m["metadata"]["agent"]["pinned"].clone(),
            )
        })
        .collect();
    assert_eq!(
        agents,
        [
            (json!("billing"), json!(false)),
            (json!("general"), json!(true)),
            (json!("general"), json!(true)),
        ]
    );
    let stream = c
        .sse(
            &format!("/v1/conversations/{conv}/events"),
            Some("0"),
            Duration::from_secs(5),
            |ev| ev.iter().filter(|e| e.1 == "answer.completed").count() >= 3,
        )
        .await;
    let kinds: Vec<String> = stream.iter().map(|(_, e, _)| e.clone()).collect();
    let selected: Vec<Value> = stream
        .iter()
        .filter(|(_, e, _)| e == "agent.selected")
        .map(|(_, _, d)| d.clone())
        .collect();
    assert_eq!(selected.len(), 3, "{kinds:?}");
    assert_eq!(selected[0]["agent"], "billing");
    assert_eq!(selected[0]["reason"], "rule");
    assert_eq!(selected[0]["intent"], "billing");
    assert_eq!(selected[2]["reason"], "handoff");
    let handoff: Vec<Value> = stream
        .iter()
        .filter(|(_, e, _)| e == "agent.handoff")
        .map(|(_, _, d)| d.clone())
        .collect();
    assert_eq!(handoff.len(), 1);
    assert_eq!(
        (handoff[0]["from"].as_str(), handoff[0]["to"].as_str()),
        (Some("billing"), Some("general"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_replaces_per_user_and_answer_and_is_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&config(dir.path(), None)).await;
    let c = s.client(&s.token_with_scopes("acme", "ana", &["desk"]));
    let conv = c.new_conversation().await;
    let a = c.ask(&conv, "How do I reset my password?").await;
    let answer = a["answer"]["message_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/conversations/{conv}/feedback");

    let r = c
        .post(
            &path,
            json!({"message_id": answer, "rating": 2, "comment": "meh"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["replaced"], false);
    let r = c
        .post(
            &path,
            json!({"message_id": answer, "rating": 5, "thumb": "up"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["replaced"], true);
    let sum = eventually(&c, "/v1/feedback/summary", |b| b["average_rating"] == 5.0).await;
    assert_eq!(sum["responses"], 1, "{sum}");
    assert_eq!(sum["ratings"]["2"], 0);
    assert_eq!(sum["thumbs_up"], 1);
    assert_eq!(sum["csat"], 1.0);

    // Bad feedback gets the error contract; other users cannot rate.
    assert_error(
        &c.post(&path, json!({"message_id": answer})).await,
        422,
        "missing_field",
    );
    assert_error(
        &c.post(&path, json!({"message_id": answer, "rating": 9}))
            .await,
        400,
        "invalid_field",
    );
    assert_error(
        &c.post(&path, json!({"message_id": "no-such-answer", "rating": 3}))
            .await,
        404,
        "message_not_found",
    );
    let bob = s.client(&s.token("acme", "bob"));
    assert_error(
        &bob.post(&path, json!({"message_id": answer, "rating": 1}))
            .await,
        404,
        "conversation_not_found",
    );
    // The tenant's support data needs the desk scope, not just a token of it.
    for path in [
        "/v1/tickets",
        "/v1/analytics/overview",
        "/v1/feedback/summary",
    ] {
        assert_error(&bob.get(path).await, 403, "forbidden");
    }

    // The overview counts the conversation, its message, turn and intent.
    let o = eventually(&c, "/v1/analytics/overview", |b| {
        b["turns"]["total"] == 1 && b["intents"].as_object().is_some_and(|m| !m.is_empty())
    })
    .await;
    assert_eq!(o["conversations"], 1, "{o}");
    assert_eq!(o["messages"], 1);
    assert_eq!(o["turns"]["answered"], 1);
    assert!(o["turns"]["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert_eq!(o["satisfaction"]["average_rating"], 5.0);
    let intents = c.get("/v1/analytics/intents").await.body;
    assert_eq!(intents["total"], 1, "{intents}");
    let other = s.client(&s.token_with_scopes("globex", "zed", &["desk"]));
    assert_eq!(
        other.get("/v1/analytics/overview").await.body["messages"],
        0
    );
    assert_error(
        &other.get("/v1/analytics/overview?tenant=acme").await,
        403,
        "forbidden",
    );
    s.stop().await;
}

/// Counts what a burst got accepted (202).
#[derive(Default)]
struct Accepted {
    messages: std::sync::atomic::AtomicI64,
    support: std::sync::atomic::AtomicI64,
    tickets: std::sync::atomic::AtomicI64,
}

async fn burst(c: &Client, convs: &[String], round: usize, acc: &Accepted) {
    use std::sync::atomic::Ordering::SeqCst;
    let mut work = Vec::new();
    for i in 0..30usize {
        let conv = convs[i % convs.len()].clone();
        work.push(Box::pin(async move {
            let r = c
                .req(
                    reqwest::Method::POST,
                    &format!("/v1/conversations/{conv}/messages"),
                )
                .json(
                    &json!({"content": format!("My invoice {round}-{i} was charged twice, why?")}),
                )
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == 202) {
                acc.messages.fetch_add(1, SeqCst);
            }
        })
            as std::pin::Pin<
                Box<dyn std::future::Future<Output = ()> + Send + '_>,
            >);
        work.push(Box::pin(async move {
            let r = c
                .req(reqwest::Method::POST, "/v1/tickets")
                .json(&json!({"ticket_id": format!("B-{round}-{i}"), "subject": "Login broken",
                              "body": format!("I cannot log in since update {i}, this is frustrating."),
                              "channel": if i % 2 == 0 { "email" } else { "chat" }, "customer_id": format!("c{}", i % 7)}))
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == 202) {
                acc.tickets.fetch_add(1, SeqCst);
            }
        }));
        work.push(Box::pin(async move {
            let r = c
                .req(reqwest::Method::POST, "/v1/messages")
                .json(&json!({"conversation_id": format!("support-{round}-{}", i % 5), "sender": "customer",
                              "message": format!("Thanks, the refund {i} arrived!"), "channel": "chat"}))
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == 202) {
                acc.support.fetch_add(1, SeqCst);
            }
        }));
    }
    futures::future::join_all(work).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_equal_a_recount_of_raw_events_after_kill_9() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    // The bus keeps what was consumed, so the recount can replay it.
    let mut s = common::Binary::start(dir.path(), "[bus]\nkeep_consumed = true\n", &[]).await;
    let c = s.client("acme", "ana", &["desk"]);
    let mut convs = Vec::new();
    for _ in 0..6 {
        convs.push(c.new_conversation().await);
    }
    let acc = Accepted::default();
    // A burst, and SIGKILL in the middle of it.
    let killer = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.child.start_kill().unwrap();
    };
    tokio::join!(burst(&c, &convs, 0, &acc), killer);
    s.restart().await;
    let c = s.client("acme", "ana", &["desk"]);
    burst(&c, &convs, 1, &acc).await;
    let (messages, support, tickets) = (
        acc.messages.load(SeqCst),
        acc.support.load(SeqCst),
        acc.tickets.load(SeqCst),
    );
    assert!(
        messages >= 30 && tickets >= 30 && support >= 30,
        "{messages} {tickets} {support}"
    );

    // Every accepted message and ticket is counted once the work settles. (A
    // request in flight at the kill may be durable without its 202 reaching
    // us: counts lie between what was accepted and what was sent.)
    let settled = |o: &Value| {
        let n = |v: &Value| v.as_i64().unwrap_or(-1);
        let user = n(&o["messages_by_source"]["user"]);
        user == n(&o["turns"]["total"])
            && n(&o["tickets"]["enriched"]) == n(&o["tickets"]["total_tickets"])
            && o["intents"]
                .as_object()
                .is_some_and(|m| m.values().map(n).sum::<i64>() == n(&o["messages"]))
            && (messages..=60).contains(&user)
            && (support..=60).contains(&n(&o["messages_by_source"]["customer"]))
            && (tickets..=60).contains(&n(&o["tickets"]["total_tickets"]))
    };
    let live = eventually(&c, "/v1/analytics/overview", settled).await;
    // Still the same a moment later: nothing is counted twice late.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = c.get("/v1/analytics/overview").await.body;
    assert_eq!(live["messages"], again["messages"], "{again}");
    assert_eq!(live["turns"], again["turns"], "{again}");
    assert_eq!(live["tickets"], again["tickets"], "{again}");
    let live = again;

    // The slow recount over the raw events of the bus agrees with the counters.
    s.child.kill().await.unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["analytics", "recount", "--tenant", "acme", "--config"])
        .arg(&s.config)
        .arg("--data-dir")
        .arg(&s.dir)
        .env("CAIRN_JWT_SECRET", common::SECRET)
        .env("CAIRN_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut recount: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        recount["events_folded"].as_i64().unwrap() > messages,
        "{recount}"
    );
    let mut live = live;
    for v in [&mut recount, &mut live] {
        let o = v.as_object_mut().unwrap();
        for k in ["from", "to", "events_folded"] {
            o.remove(k);
        }
    }
    assert_eq!(live, recount);
}
