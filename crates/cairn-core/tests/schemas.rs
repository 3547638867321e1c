//! The JSON Schemas in `schemas/` describe what the code actually sends, and the
//! check consumers run refuses what they cannot handle.

#![allow(clippy::unwrap_used)]

use cairn_core::envelope::{CONVERSATION_EVENT, DOCUMENT_SUBMITTED, Envelope, USER_MESSAGE};
use cairn_core::schemas::{RejectClass, check};
use cairn_core::*;
use serde_json::{Value, json};

fn tenant() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn request() -> TurnRequest {
    TurnRequest::new(
        tenant(),
        ConversationId::generate(),
        UserId::parse("ana").unwrap(),
        "hello".into(),
    )
}

fn envelope(kind: &str, data: Value) -> Value {
    serde_json::to_value(Envelope::new(kind, tenant(), data)).unwrap()
}

#[test]
fn every_event_the_code_sends_matches_its_schema() {
    let msg = envelope(USER_MESSAGE, serde_json::to_value(request()).unwrap());
    check(&msg).unwrap();
    let doc = DocumentSubmission {
        document_id: "faq.md".into(),
        job_id: "j1".into(),
        format: "markdown".into(),
        title: Some("FAQ".into()),
        source: None,
        tags: vec!["billing".into()],
        date: Some(chrono::Utc::now()),
        content_base64: "IyBGQVE=".into(),
    };
    check(&envelope(
        DOCUMENT_SUBMITTED,
        serde_json::to_value(doc).unwrap(),
    ))
    .unwrap();
    let event = ConversationEvent {
        conversation_id: ConversationId::generate(),
        id: 3,
        at: chrono::Utc::now(),
        event: TurnEvent::TurnFailed {
            turn_id: TurnId::generate(),
            code: "x".into(),
            reason: "y".into(),
        },
    };
    check(&envelope(
        CONVERSATION_EVENT,
        serde_json::to_value(event).unwrap(),
    ))
    .unwrap();
}

#[test]
fn the_schemas_reject_what_consumers_cannot_handle() {
    let good = envelope(USER_MESSAGE, serde_json::to_value(request()).unwrap());
    let mut no_id = good.clone();
    no_id["data"].as_object_mut().unwrap().remove("message_id");
    let r = check(&no_id).unwrap_err();
    assert_eq!(r.class, RejectClass::Schema);
    assert!(r.reason.contains("message_id"), "{}", r.reason);

    let mut v2 = good.clone();
    v2["schema_version"] = json!(2);
    assert_eq!(check(&v2).unwrap_err().class, RejectClass::Schema);

    let mut doc = envelope(
        DOCUMENT_SUBMITTED,
        json!({"document_id": "a", "job_id": "j", "format": "exe", "content_base64": ""}),
    );
    assert_eq!(check(&doc).unwrap_err().class, RejectClass::Schema);
    doc["data"]["format"] = json!("pdf");
    check(&doc).unwrap();

    let mut unknown = good;
    unknown["type"] = json!("user.deleted");
    assert_eq!(check(&unknown).unwrap_err().class, RejectClass::UnknownType);
}
