//! The versioned JSON envelope every bus event travels in (DESIGN.md, "Event flow").
//! Its JSON Schema is `schemas/envelope.v1.json` at the repository root.

use crate::ids::TenantId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The current envelope schema version. Breaking the envelope or any `data` shape
/// bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// Event type of an accepted user message (topic `user_events`, then `reasoning_tasks`).
pub const USER_MESSAGE: &str = "user.message";

/// Event type of an uploaded document (topic `user_events`, then
/// `ingestion_events`); `data` is a [`DocumentSubmission`](crate::DocumentSubmission).
pub const DOCUMENT_SUBMITTED: &str = "document.submitted";

/// Event type of a stored turn event republished on `conversation_events`;
/// `data` is a [`ConversationEvent`](crate::ConversationEvent).
pub const CONVERSATION_EVENT: &str = "conversation.event";

/// Event type of a record written to the `dlq` topic.
pub const DLQ_RECORD: &str = "dlq.record";

/// Event type of an alert on the `alerts` topic; `data` is an
/// [`Alert`](crate::alerts::Alert).
pub const ALERT_RAISED: &str = "alert.raised";

/// Event type of a message posted through `POST /v1/messages` (topic
/// `user_events`, keyed by conversation): analysed, not answered; `data` is a
/// [`SupportMessage`](crate::insights::SupportMessage).
pub const SUPPORT_MESSAGE: &str = "support.message";

/// Event type of a ticket submission or edit (topic `tickets`, keyed by ticket
/// id); `data` is a [`TicketSubmission`](crate::desk::TicketSubmission).
pub const TICKET_SUBMITTED: &str = "ticket.submitted";

/// Event type of a finished ticket enrichment (topic `tickets`); `data` is a
/// [`TicketEnriched`](crate::desk::TicketEnriched).
pub const TICKET_ENRICHED: &str = "ticket.enriched";

/// Event type of a turn's figures (topic `conversation_events`); `data` is a
/// [`TurnSummary`](crate::desk::TurnSummary).
pub const TURN_SUMMARY: &str = "turn.summary";

/// Event type of a message's analysis (topic `conversation_events`); `data` is
/// an [`AnalysedMessage`](crate::desk::AnalysedMessage).
pub const MESSAGE_ANALYSED: &str = "message.analysed";

/// Event type of feedback on an answer (topic `conversation_events`); `data`
/// is a [`Feedback`](crate::desk::Feedback).
pub const FEEDBACK_RECORDED: &str = "feedback.recorded";

/// Event type of a turn's outcome for the message's webhook (topic
/// `conversation_events`); `data` is `{url, body}`, delivered by the webhook
/// consumer.
pub const TURN_WEBHOOK: &str = "turn.webhook";

/// Every event type a consumer accepts; anything else goes to the DLQ.
pub const EVENT_TYPES: &[&str] = &[
    USER_MESSAGE,
    DOCUMENT_SUBMITTED,
    CONVERSATION_EVENT,
    DLQ_RECORD,
    ALERT_RAISED,
    SUPPORT_MESSAGE,
    TICKET_SUBMITTED,
    TICKET_ENRICHED,
    TURN_SUMMARY,
    MESSAGE_ANALYSED,
    FEEDBACK_RECORDED,
    TURN_WEBHOOK,
];

/// A stable event id for an event about `name` (e.g. `turn.summary/<turn id>`):
/// the same name always gives the same id, shaped like a UUIDv7 as the
/// envelope schema asks, so republishing after a crash is a duplicate.
pub fn derived_event_id(name: &str) -> String {
    const NS: uuid::Uuid = uuid::Uuid::from_u128(0x5c1e_07d3_0a4b_4f7e_9d2c_33b1_8e6f_a2c4);
    let mut b = uuid::Uuid::new_v5(&NS, name.as_bytes()).into_bytes();
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).to_string()
}

/// A bus event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope schema version.
    pub schema_version: u32,
    /// Unique id (UUIDv7); consumers deduplicate on it.
    pub event_id: String,
    /// Event type, e.g. `user.message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The tenant the event belongs to.
    pub tenant_id: TenantId,
    /// When the event happened.
    pub occurred_at: DateTime<Utc>,
    /// W3C trace context of the request that caused it, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The payload; its shape depends on `type`.
    pub data: Value,
}

impl Envelope {
    /// A new envelope with a fresh event id.
    pub fn new(kind: &str, tenant_id: TenantId, data: Value) -> Self {
        Self::with_id(uuid::Uuid::now_v7().to_string(), kind, tenant_id, data)
    }

    /// An envelope with a chosen event id: one derived from what the event is
    /// about, so that publishing it again after a crash is a duplicate that
    /// consumers drop.
    pub fn with_id(event_id: String, kind: &str, tenant_id: TenantId, data: Value) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            event_id,
            kind: kind.to_owned(),
            tenant_id,
            occurred_at: Utc::now(),
            traceparent: None,
            data,
        }
    }
}
