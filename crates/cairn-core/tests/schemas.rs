//! The JSON Schemas in `schemas/` describe what the code actually sends.

#![allow(clippy::unwrap_used)]

use cairn_core::envelope::{Envelope, USER_MESSAGE};
use cairn_core::*;
use serde_json::{Value, json};
use std::path::PathBuf;

fn schema(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema("envelope.v1.json")).unwrap()
}

fn request() -> TurnRequest {
    TurnRequest {
        tenant_id: TenantId::parse("acme").unwrap(),
        conversation_id: ConversationId::generate(),
        user_id: UserId::parse("ana").unwrap(),
        message_id: MessageId::generate(),
        turn_id: TurnId::generate(),
        content: "hello".into(),
        accepted_at: chrono::Utc::now(),
    }
}

#[test]
fn a_user_message_envelope_matches_the_schema() {
    let env = Envelope::new(
        USER_MESSAGE,
        TenantId::parse("acme").unwrap(),
        serde_json::to_value(request()).unwrap(),
    );
    let v = serde_json::to_value(&env).unwrap();
    let errors: Vec<String> = validator().iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn the_schema_rejects_what_consumers_cannot_handle() {
    let mut bad = serde_json::to_value(Envelope::new(
        USER_MESSAGE,
        TenantId::parse("acme").unwrap(),
        serde_json::to_value(request()).unwrap(),
    ))
    .unwrap();
    assert!(validator().is_valid(&bad));
    bad["data"].as_object_mut().unwrap().remove("message_id");
    assert!(!validator().is_valid(&bad));
    let mut v2 = serde_json::to_value(Envelope::new(
        USER_MESSAGE,
        TenantId::parse("acme").unwrap(),
        serde_json::to_value(request()).unwrap(),
    ))
    .unwrap();
    v2["schema_version"] = json!(2);
    assert!(!validator().is_valid(&v2));
}
