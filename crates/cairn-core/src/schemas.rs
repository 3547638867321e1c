//! The JSON Schemas of the bus: the envelope (`schemas/envelope.v1.json`) and one
//! schema per event type (`schemas/events/<type>.v1.json`), compiled once.
//!
//! Every bus adapter decodes a record with [`decode`]: a record that is not JSON,
//! fails the envelope schema, has a type no consumer knows, or whose `data` fails
//! its type's schema is refused with a [`Rejection`] naming the class of error,
//! and the consumer sends it to the DLQ instead of working on it.

use crate::envelope::{
    ALERT_RAISED, CONVERSATION_EVENT, DLQ_RECORD, DOCUMENT_SUBMITTED, EVENT_TYPES, Envelope,
    FEEDBACK_RECORDED, MESSAGE_ANALYSED, SUPPORT_MESSAGE, TICKET_ENRICHED, TICKET_SUBMITTED,
    TURN_SUMMARY, TURN_WEBHOOK, USER_MESSAGE,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::OnceLock;

const ENVELOPE: &str = include_str!("../../../schemas/envelope.v1.json");
const TYPES: &[(&str, &str)] = &[
    (
        USER_MESSAGE,
        include_str!("../../../schemas/events/user.message.v1.json"),
    ),
    (
        DOCUMENT_SUBMITTED,
        include_str!("../../../schemas/events/document.submitted.v1.json"),
    ),
    (
        CONVERSATION_EVENT,
        include_str!("../../../schemas/events/conversation.event.v1.json"),
    ),
    (
        DLQ_RECORD,
        include_str!("../../../schemas/events/dlq.record.v1.json"),
    ),
    (
        ALERT_RAISED,
        include_str!("../../../schemas/events/alert.raised.v1.json"),
    ),
    (
        SUPPORT_MESSAGE,
        include_str!("../../../schemas/events/support.message.v1.json"),
    ),
    (
        TICKET_SUBMITTED,
        include_str!("../../../schemas/events/ticket.submitted.v1.json"),
    ),
    (
        TICKET_ENRICHED,
        include_str!("../../../schemas/events/ticket.enriched.v1.json"),
    ),
    (
        TURN_SUMMARY,
        include_str!("../../../schemas/events/turn.summary.v1.json"),
    ),
    (
        MESSAGE_ANALYSED,
        include_str!("../../../schemas/events/message.analysed.v1.json"),
    ),
    (
        FEEDBACK_RECORDED,
        include_str!("../../../schemas/events/feedback.recorded.v1.json"),
    ),
    (
        TURN_WEBHOOK,
        include_str!("../../../schemas/events/turn.webhook.v1.json"),
    ),
];

/// The JSON Schema of an [`Analysis`](crate::insights::Analysis)
/// (`schemas/insights.analysis.v1.json`).
pub const ANALYSIS_SCHEMA: &str = include_str!("../../../schemas/insights.analysis.v1.json");

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectClass {
    /// Not JSON, or not an envelope at all.
    Undecodable,
    /// The envelope or its `data` fails the schema.
    Schema,
    /// An event type no consumer handles.
    UnknownType,
}

impl RejectClass {
    /// The class as written in DLQ records and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectClass::Undecodable => "undecodable",
            RejectClass::Schema => "schema",
            RejectClass::UnknownType => "unknown_type",
        }
    }
}

/// A refused record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} : {reason}", class.as_str())]
pub struct Rejection {
    /// The class of error.
    pub class: RejectClass,
    /// What is wrong, naming the failing field.
    pub reason: String,
}

struct Compiled {
    envelope: jsonschema::Validator,
    types: HashMap<&'static str, jsonschema::Validator>,
}

#[allow(clippy::expect_used)] // the schemas are compiled into the binary and tested
fn compiled() -> &'static Compiled {
    static C: OnceLock<Compiled> = OnceLock::new();
    C.get_or_init(|| {
        let compile = |text: &str| {
            let v: Value = serde_json::from_str(text).expect("bundled schema is JSON");
            jsonschema::validator_for(&v).expect("bundled schema compiles")
        };
        Compiled {
            envelope: compile(ENVELOPE),
            types: TYPES.iter().map(|(t, s)| (*t, compile(s))).collect(),
        }
    })
}

fn first_error(v: &jsonschema::Validator, value: &Value, at: &str) -> Option<String> {
    v.iter_errors(value)
        .next()
        .map(|e| format!("{at}{}: {e}", e.instance_path()))
}

/// Checks an envelope (as JSON) against the envelope schema and its type's schema.
pub fn check(value: &Value) -> Result<(), Rejection> {
    let c = compiled();
    if let Some(reason) = first_error(&c.envelope, value, "") {
        return Err(Rejection {
            class: RejectClass::Schema,
            reason,
        });
    }
    let kind = value["type"].as_str().unwrap_or_default();
    let Some(schema) = c.types.get(kind) else {
        return Err(Rejection {
            class: RejectClass::UnknownType,
            reason: format!(
                "unknown event type `{kind}` (known: {})",
                EVENT_TYPES.join(", ")
            ),
        });
    };
    match first_error(schema, &value["data"], "/data") {
        Some(reason) => Err(Rejection {
            class: RejectClass::Schema,
            reason,
        }),
        None => Ok(()),
    }
}

/// Decodes a record's bytes into an envelope, checking both schemas.
pub fn decode(bytes: &[u8]) -> Result<Envelope, Rejection> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Rejection {
        class: RejectClass::Undecodable,
        reason: format!("not JSON: {e}"),
    })?;
    check(&value)?;
    serde_json::from_value(value).map_err(|e| Rejection {
        class: RejectClass::Schema,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;
    use serde_json::json;

    fn message() -> Value {
        json!({
            "tenant_id": "acme", "conversation_id": "c1", "user_id": "ana",
            "message_id": "m1", "turn_id": "t1", "content": "hi",
            "accepted_at": "2026-01-01T00:00:00Z"
        })
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn each_class_of_bad_record_is_named() {
        let ok = Envelope::new(USER_MESSAGE, TenantId::parse("acme").unwrap(), message());
        let bytes = serde_json::to_vec(&ok).unwrap();
        assert_eq!(decode(&bytes).unwrap(), ok);

        assert_eq!(
            decode(b"{not json").unwrap_err().class,
            RejectClass::Undecodable
        );
        let mut unknown = serde_json::to_value(&ok).unwrap();
        unknown["type"] = json!("user.unknown");
        let r = decode(&serde_json::to_vec(&unknown).unwrap()).unwrap_err();
        assert_eq!(r.class, RejectClass::UnknownType, "{r}");
        let mut bad = serde_json::to_value(&ok).unwrap();
        bad["data"]["content"] = json!("");
        let r = decode(&serde_json::to_vec(&bad).unwrap()).unwrap_err();
        assert_eq!(r.class, RejectClass::Schema);
        assert!(r.reason.starts_with("/data/content"), "{}", r.reason);
        let mut no_id = serde_json::to_value(&ok).unwrap();
        no_id.as_object_mut().unwrap().remove("event_id");
        assert_eq!(
            decode(&serde_json::to_vec(&no_id).unwrap())
                .unwrap_err()
                .class,
            RejectClass::Schema
        );
    }
}
