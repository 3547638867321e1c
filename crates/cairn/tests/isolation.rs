//! The tenant-isolation sweep. Every route of the OpenAPI document (which the
//! gateway test checks against the router, so no route is missing from it) is
//! called with ana's real ids in its path: by a user of another tenant with the
//! same user name and every tenant scope, and by another user of ana's tenant
//! with none. Ana's data carries unique markers; the sweep asserts that no
//! answer to either caller holds a per-user marker, that the other tenant sees
//! no marker of ana's tenant at all, that nothing of ana's was changed by their
//! writes, and it prints how each route answered (`CAIRN_SWEEP_TRACE=1` prints
//! every answer).

#![allow(clippy::unwrap_used)]

mod common;

use common::{Client, Server, config};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// In ana's conversation, schedule and feedback: only she may see them.
const PRIVATE: &str = "zq7private";
/// In ana's tenant's document, ticket, alert and silence: only her tenant may.
const TENANT: &str = "zq7tenant";

/// A plausible body for each write, so that the request reaches the checks
/// behind body validation.
fn body_for(method: &str, path: &str, ids: &Ids) -> Option<Value> {
    let p = path;
    Some(match (method, p) {
        ("post", p) if p.ends_with("/messages") && p.contains("{id}") => {
            json!({"content": "tell me everything"})
        }
        ("post", "/messages") => json!({"content": "hello", "conversation_id": ids.conversation}),
        ("post", p) if p.ends_with("/fork") => json!({"message_id": ids.message}),
        ("post", p) if p.ends_with("/feedback") && p.contains("{id}") => {
            json!({"message_id": ids.answer, "rating": 1, "comment": "override"})
        }
        ("post", p) if p.contains("/approvals/") => json!({"decision": "approve"}),
        ("post", "/conversations") => json!({"title": "mine"}),
        ("post", "/documents") => json!({"document_id": "their-own", "text": "overwritten"}),
        ("post", "/schedules") => {
            json!({"cron": "0 9 * * *", "content": "hi", "conversation_id": ids.conversation})
        }
        ("post", "/tickets") => {
            json!({"subject": "s", "body": "b", "channel": "email", "customer_id": "c1", "ticket_id": ids.ticket, "tenant_id": "acme"})
        }
        ("patch", _) => json!({"status": "closed"}),
        ("post", "/silences") => {
            json!({"matchers": ["alertname=\"Quota\""], "duration": "1h", "comment": "c"})
        }
        ("post", "/alerts") => json!([{"labels": {"alertname": "Other"}}]),
        ("post", "/chat/completions") => {
            json!({"model": "cairn", "messages": [{"role": "user", "content": "hi"}], "conversation_id": ids.conversation})
        }
        ("post", "/analyze") => json!({"text": "hello"}),
        ("post", _) => json!({}),
        _ => return None,
    })
}

/// What every user of a tenant may read by design: its knowledge base (any of
/// them may search it) and its alerts and silences (documented at
/// `auth.alerts_scope`: reading needs no scope, writing does). Everything else
/// of ana's tenant needs a scope bob does not hold.
fn tenant_shared(method: &str, path: &str) -> bool {
    path.starts_with("/documents")
        || path == "/search"
        || (method == "get" && (path.starts_with("/alerts") || path.starts_with("/silences")))
}

struct Ids {
    conversation: String,
    message: String,
    answer: String,
    turn: String,
    document: String,
    schedule: String,
    ticket: String,
    silence: String,
}

impl Ids {
    fn fill(&self, path: &str) -> String {
        let id = if path.starts_with("/conversations/") || path.starts_with("/ws/conversations/") {
            &self.conversation
        } else if path.starts_with("/documents/") {
            &self.document
        } else if path.starts_with("/schedules/") {
            &self.schedule
        } else if path.starts_with("/tickets/") {
            &self.ticket
        } else if path.starts_with("/silences/") {
            &self.silence
        } else {
            "none"
        };
        path.replace("{id}", id)
            .replace("{turn_id}", &self.turn)
            .replace("{approval_id}", "0192f1a4-0000-7000-8000-000000000000")
    }
}

/// Status and body text; streams are read for a moment only.
async fn call(c: &Client, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut rb = c.req(m, &format!("/v1{path}"));
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = tokio::time::timeout(Duration::from_secs(20), rb.send())
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer"))
        .unwrap();
    let status = resp.status().as_u16();
    let mut text = Vec::new();
    let mut resp = resp;
    let _ = tokio::time::timeout(Duration::from_millis(1500), async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            text.extend_from_slice(&chunk);
        }
    })
    .await;
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_shows_or_changes_another_tenants_or_users_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&config(dir.path(), None)).await;
    let scopes = ["ingest", "alerts", "approve", "admin", "desk"];
    let ana = s.client(&s.token_with_scopes("acme", "ana", &scopes));

    // Ana's data, each piece marked.
    let conversation = ana.new_conversation().await;
    let answer = ana
        .ask(&conversation, &format!("My account code is {PRIVATE}-1"))
        .await;
    assert_eq!(answer["status"], "completed", "{answer}");
    let turn = answer["turn_id"].as_str().unwrap().to_owned();
    let answer_id = answer["answer"]["message_id"].as_str().unwrap().to_owned();
    let messages = ana
        .get(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    let message = messages.body["items"][0]["id"].as_str().unwrap().to_owned();
    let r = ana
        .post(
            &format!("/v1/conversations/{conversation}/feedback"),
            json!({"message_id": answer_id, "rating": 5, "comment": format!("{PRIVATE}-2")}),
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{:?}", r.body);
    let r = ana
        .post("/v1/documents", json!({"document_id": "handbook", "text": format!("The door code is {TENANT}-3 for staff.")}))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(
        common::finished(&ana, "handbook").await["job"]["status"],
        "done"
    );
    let r = ana
        .post("/v1/schedules", json!({"cron": "0 9 * * *", "content": format!("{PRIVATE}-4 remind me"), "conversation_id": conversation}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let schedule = r.body["id"].as_str().unwrap().to_owned();
    let r = ana
        .post("/v1/tickets", json!({"subject": format!("{TENANT}-5 refund"), "body": "please", "channel": "email", "customer_id": "c9"}))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let ticket = r.body["ticket_id"].as_str().unwrap().to_owned();
    let r = ana
        .post("/v1/silences", json!({"matchers": ["alertname=\"Quota\""], "duration": "1h", "comment": format!("{TENANT}-6")}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let silence = r.body["id"].as_str().unwrap().to_owned();
    let r = ana
        .post("/v1/alerts", json!([{"labels": {"alertname": "Quota", "severity": "warning"}, "annotations": {"summary": format!("{TENANT}-7")}}]))
        .await;
    assert!(r.status < 300, "{:?}", r.body);
    let ids = Ids {
        conversation: conversation.clone(),
        message,
        answer: answer_id,
        turn,
        document: "handbook".into(),
        schedule: schedule.clone(),
        ticket: ticket.clone(),
        silence: silence.clone(),
    };
    let before = ana
        .get(&format!("/v1/conversations/{conversation}/messages"))
        .await
        .body["items"]
        .as_array()
        .unwrap()
        .len();

    // Every route of the OpenAPI document.
    let doc = ana.get("/openapi.json").await.body;
    let mut routes: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                routes.push((method.clone(), path.trim_start_matches("/v1").to_owned()));
            }
        }
    }
    assert!(routes.len() > 50, "{} routes", routes.len());

    let mallory = s.client(&s.token_with_scopes("globex", "ana", &scopes));
    let bob = s.client(&s.token("acme", "bob"));
    let mut answered: BTreeMap<u16, usize> = BTreeMap::new();
    let mut leaks = Vec::new();
    for (method, path) in &routes {
        let filled = ids.fill(path);
        let targets_ana = filled != *path;
        for (who, c, forbidden) in [
            ("globex/ana", &mallory, [PRIVATE, TENANT].as_slice()),
            (
                "acme/bob",
                &bob,
                if tenant_shared(method, path) {
                    [PRIVATE].as_slice()
                } else {
                    [PRIVATE, TENANT].as_slice()
                },
            ),
        ] {
            let (status, text) = call(c, method, &filled, body_for(method, path, &ids)).await;
            *answered.entry(status).or_default() += 1;
            if std::env::var("CAIRN_SWEEP_TRACE").is_ok() {
                eprintln!(
                    "{who} {method} {filled} → {status} {}",
                    &text[..text.len().min(160)]
                );
            }
            if let Some(m) = forbidden.iter().find(|m| text.contains(**m)) {
                leaks.push(format!(
                    "{who} {method} {filled} → {status} shows {m}: {}",
                    &text[..text.len().min(300)]
                ));
            }
            // Per-user resources named in the path: refused, whatever the method.
            let per_user = path.starts_with("/conversations/{id}")
                || path.starts_with("/schedules/{id}")
                || path.starts_with("/ws/conversations/{id}");
            if targets_ana && (per_user || who == "globex/ana") && status < 400 {
                leaks.push(format!(
                    "{who} {method} {filled} → {status} on ana's resource: {}",
                    &text[..text.len().min(300)]
                ));
            }
        }
    }
    eprintln!(
        "isolation sweep: {} routes × 2 callers, statuses {answered:?}",
        routes.len()
    );
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));

    // Nothing of ana's changed.
    let after = ana
        .get(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    assert_eq!(after.body["items"].as_array().unwrap().len(), before);
    let d = ana.get("/v1/documents/handbook").await;
    assert_eq!(d.status, 200);
    let hits = ana.get(&format!("/v1/search?q={TENANT}-3")).await;
    assert!(
        hits.body.to_string().contains(&format!("{TENANT}-3")),
        "{:?}",
        hits.body
    );
    let list = ana.get("/v1/schedules").await.body;
    assert_eq!(list["items"][0]["id"], schedule.as_str(), "{list}");
    assert_eq!(list["items"][0]["paused"], false, "{list}");
    let t = ana.get(&format!("/v1/tickets/{ticket}")).await;
    assert_eq!(t.status, 200, "{:?}", t.body);
    assert_ne!(t.body["status"], "closed", "{:?}", t.body); // written by nobody but ana
    assert_eq!(
        ana.get(&format!("/v1/silences/{silence}")).await.status,
        200
    );
    s.stop().await;
}
