//! Domain types shared by every crate: conversations, messages, turns, the
//! checkpoint a turn leaves after every step, and the events a turn emits.
//!
//! These types are stored (MemoryStore) and sent to clients (SSE, JSON), so they
//! are part of Cairn's wire format; fields are only ever added, with defaults.

use crate::ids::{ConversationId, MessageId, TenantId, TurnId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Metadata of one conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationMeta {
    /// The conversation id.
    pub id: ConversationId,
    /// The tenant that owns it; every read is checked against the caller's tenant.
    pub tenant_id: TenantId,
    /// The user (`sub`) who created it.
    pub owner: UserId,
    /// A human title; defaults to the start of the first message.
    pub title: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When a message was last added.
    pub updated_at: DateTime<Utc>,
    /// Number of messages in the transcript.
    #[serde(default)]
    pub message_count: u64,
}

impl ConversationMeta {
    /// A new, empty conversation created now.
    pub fn new(
        id: ConversationId,
        tenant_id: TenantId,
        owner: UserId,
        title: Option<String>,
    ) -> Self {
        let now = Utc::now();
        Self {
            id,
            tenant_id,
            owner,
            title,
            created_at: now,
            updated_at: now,
            message_count: 0,
        }
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions from the operator.
    System,
    /// The end user.
    User,
    /// The agent.
    Assistant,
    /// A tool observation.
    Tool,
}

/// A source an answer relied on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    /// Where the cited text comes from (a document id, or `conversation` for memory).
    pub source: String,
    /// Title of the source, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Section of the source (headings joined with ` > `), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    /// The cited passage.
    pub snippet: String,
}

/// Token usage reported by a model provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub input_tokens: u64,
    /// Tokens generated.
    pub output_tokens: u64,
}

impl Usage {
    /// Adds another report to this one.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// One message of a transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The message id (for a user message: the id returned by the API).
    pub id: MessageId,
    /// Position in the transcript, starting at 0; assigned by the store.
    #[serde(default)]
    pub seq: u64,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// The turn it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<TurnId>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Sources the answer relied on (assistant messages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub citations: Vec<Citation>,
    /// The steps the agent took to produce this answer (assistant messages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// Token usage of the turn (assistant messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Free-form metadata, e.g. `{"llm_configured": false}` from the offline planner.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub metadata: Value,
}

impl Message {
    /// A plain message with no turn data.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            id: MessageId::generate(),
            seq: 0,
            role,
            content: content.into(),
            turn_id: None,
            created_at: Utc::now(),
            citations: Vec::new(),
            steps: Vec::new(),
            usage: None,
            metadata: Value::Null,
        }
    }
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call, echoed back with the observation.
    pub id: String,
    /// Tool name, as offered in the catalog.
    pub name: String,
    /// Arguments (a JSON object).
    pub arguments: Value,
}

/// What a tool call produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolOutcome {
    /// True when the tool reported an error; the model sees it as an observation.
    pub is_error: bool,
    /// The observation text.
    pub content: String,
    /// How long the call took.
    pub duration_ms: u64,
}

/// One step of a turn. Steps are numbered from 0 within the turn; a tool step's
/// idempotency key is `turn_id:index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// The model answered with tool calls (and maybe a thought).
    Model {
        /// Step number.
        index: u32,
        /// Text the model produced alongside its tool calls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thought: Option<String>,
        /// The calls it asked for.
        tool_calls: Vec<ToolCall>,
        /// Usage of this model call.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    /// A tool call; `outcome` is empty until the call has completed.
    Tool {
        /// Step number.
        index: u32,
        /// The call.
        call: ToolCall,
        /// The result, once the call completed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<ToolOutcome>,
    },
}

impl Step {
    /// The step number.
    pub fn index(&self) -> u32 {
        match self {
            Step::Model { index, .. } | Step::Tool { index, .. } => *index,
        }
    }
}

/// The idempotency key of a tool step: `turn_id:step`.
pub fn idempotency_key(turn: &TurnId, step: u32) -> String {
    format!("{turn}:{step}")
}

/// An accepted user message waiting for (or running) its turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnRequest {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The user who sent it.
    pub user_id: UserId,
    /// The message id returned by the API (dedup key).
    pub message_id: MessageId,
    /// The turn id returned by the API.
    pub turn_id: TurnId,
    /// The user's text.
    pub content: String,
    /// When the API accepted it.
    pub accepted_at: DateTime<Utc>,
    /// PII found before the API redacted `content` (`redact_store`): types and
    /// positions, never values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted_pii: Option<crate::insights::PiiReport>,
    /// The agent profile the caller asked for (the OpenAI facade's `model`);
    /// it answers this turn instead of the one routing would pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The W3C trace context of the request that caused the turn (copied from
    /// the bus envelope), so the turn's spans join the request's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// `interrupt` or `rollback` (the message's `if_busy`): the conversation's
    /// actor cancels every turn queued or running before this one when it
    /// queues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupts: Option<String>,
    /// Where the turn's outcome is posted (`turn.completed` / `turn.failed` /
    /// `turn.cancelled`), checked against `turn_webhooks.allowed_hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

impl TurnRequest {
    /// A request accepted now, with fresh message and turn ids.
    pub fn new(
        tenant_id: TenantId,
        conversation_id: ConversationId,
        user_id: UserId,
        content: String,
    ) -> Self {
        Self {
            tenant_id,
            conversation_id,
            user_id,
            message_id: MessageId::generate(),
            turn_id: TurnId::generate(),
            content,
            accepted_at: Utc::now(),
            redacted_pii: None,
            agent: None,
            traceparent: None,
            interrupts: None,
            webhook: None,
        }
    }
}

/// The state of an in-flight turn, written after every step so that the turn can
/// resume after a crash without repeating completed tool calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnCheckpoint {
    /// The request being answered.
    pub request: TurnRequest,
    /// Steps completed so far (tool steps may lack an outcome if the crash hit mid-call).
    pub steps: Vec<Step>,
    /// Model calls made so far (bounded by `agent.max_steps`).
    pub model_calls: u32,
    /// How many times this turn has been started; a turn that keeps crashing is failed.
    pub attempts: u32,
    /// Token usage so far.
    #[serde(default)]
    pub usage: Usage,
    /// When the turn first started.
    pub started_at: DateTime<Utc>,
    /// The fencing token of the conversation's lease held by the writer; a store
    /// rejects the write when a newer lease was granted since (`None`: unfenced,
    /// single-process use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// The agent profile chosen when the turn started (with `[[agents]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentChoice>,
    /// True when this is the conversation's first turn (for analytics).
    #[serde(default)]
    pub first_turn: bool,
    /// Approvals the turn asked for (`[approvals]`), decided or waiting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<crate::approvals::PendingApproval>,
}

/// Which agent profile a turn started with, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentChoice {
    /// The profile.
    pub name: String,
    /// `rule`, `default` or `handoff`.
    pub reason: String,
    /// The message's intent, when routing classified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
}

/// The rolling summary of messages that fell out of the context window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The summary text.
    pub text: String,
    /// Messages with `seq < covers_until` are folded into it.
    pub covers_until: u64,
}

/// What the agent remembers of a conversation when a turn starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryContext {
    /// The rolling summary of older messages.
    pub summary: Summary,
    /// Messages not yet summarised, oldest first.
    pub recent: Vec<Message>,
}

/// Events a turn emits to the conversation's event stream. Serialised as
/// `{"type": "...", ...fields}`; every variant carries its `turn_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum TurnEvent {
    /// The turn began (or resumed after a crash, with `resumed: true`).
    #[serde(rename = "turn.started")]
    TurnStarted {
        /// The turn.
        turn_id: TurnId,
        /// The user message it answers.
        message_id: MessageId,
        /// True when the turn resumed from a checkpoint.
        #[serde(default)]
        resumed: bool,
    },
    /// The agent is calling a tool.
    #[serde(rename = "tool.called")]
    ToolCalled {
        /// The turn.
        turn_id: TurnId,
        /// The step number.
        step: u32,
        /// The tool name.
        tool: String,
        /// The arguments.
        arguments: Value,
    },
    /// A tool call finished.
    #[serde(rename = "tool.completed")]
    ToolCompleted {
        /// The turn.
        turn_id: TurnId,
        /// The step number.
        step: u32,
        /// The tool name.
        tool: String,
        /// Whether the tool reported an error.
        is_error: bool,
        /// The observation.
        output: String,
        /// Duration of the call.
        duration_ms: u64,
    },
    /// A fragment of the answer, when the model streams.
    #[serde(rename = "answer.delta")]
    AnswerDelta {
        /// The turn.
        turn_id: TurnId,
        /// The text fragment.
        delta: String,
    },
    /// The final answer.
    #[serde(rename = "answer.completed")]
    AnswerCompleted {
        /// The turn.
        turn_id: TurnId,
        /// The assistant message id in the transcript.
        message_id: MessageId,
        /// The answer.
        content: String,
        /// Sources it relied on.
        citations: Vec<Citation>,
        /// Token usage of the turn, when reported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// Model metadata (e.g. `llm_configured: false`).
        #[serde(default, skip_serializing_if = "Value::is_null")]
        metadata: Value,
    },
    /// The turn ended without an answer.
    #[serde(rename = "turn.failed")]
    TurnFailed {
        /// The turn.
        turn_id: TurnId,
        /// A stable snake_case reason code (`max_steps_exceeded`, `model_error`, …).
        code: String,
        /// A readable explanation.
        reason: String,
    },
    /// Someone asked to stop the turn (`POST …/turns/{turn_id}/cancel`, or a
    /// message sent with `if_busy` = `interrupt` / `rollback`); `turn.cancelled`
    /// follows once the turn has closed its open calls.
    #[serde(rename = "turn.cancel_requested")]
    TurnCancelRequested {
        /// The turn.
        turn_id: TurnId,
        /// The user who asked.
        by: String,
        /// `cancel`, `interrupt` or `rollback`.
        mode: String,
    },
    /// The turn was stopped before its answer. Every tool call it started has a
    /// result (a synthetic "cancelled" one where the call was cut short), so the
    /// transcript never holds a call without its result.
    #[serde(rename = "turn.cancelled")]
    TurnCancelled {
        /// The turn.
        turn_id: TurnId,
        /// `cancel`, `interrupt` or `rollback` (a rolled-back turn is left out of
        /// the model's context from now on; its record stays in the transcript).
        mode: String,
        /// A readable explanation.
        reason: String,
    },
    /// A tool call matched an `[approvals]` rule: the turn waits for a decision
    /// (`POST /v1/conversations/{id}/approvals/{approval_id}`) before it runs.
    #[serde(rename = "approval.requested")]
    ApprovalRequested {
        /// The turn.
        turn_id: TurnId,
        /// The approval (in the decision's URL).
        approval_id: String,
        /// The tool step it guards.
        step: u32,
        /// The tool.
        tool: String,
        /// The arguments the model asked for.
        arguments: Value,
        /// Why it needs approval.
        reason: String,
        /// Who may decide: users of the tenant with this scope.
        approver_scope: String,
        /// When it is rejected as `expired` unless decided.
        expires_at: DateTime<Utc>,
    },
    /// An approval was decided; the first decision of an approval counts.
    #[serde(rename = "approval.decided")]
    ApprovalDecided {
        /// The turn.
        turn_id: TurnId,
        /// The approval.
        approval_id: String,
        /// `approve`, `reject`, `edit` or `expired`.
        decision: crate::approvals::Verdict,
        /// Who decided (`system` for an expiry).
        by: String,
        /// The approver's comment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
        /// The arguments an `edit` runs with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arguments: Option<Value>,
    },
    /// A schedule posted this turn's message (`POST /v1/schedules`).
    #[serde(rename = "schedule.fired")]
    ScheduleFired {
        /// The turn it started.
        turn_id: TurnId,
        /// The schedule.
        schedule_id: String,
        /// The fire time it ran for.
        fire_time: DateTime<Utc>,
    },
    /// An alert about this conversation (the agent's escalation) is firing:
    /// on-call was paged.
    #[serde(rename = "alert.firing")]
    AlertFiring {
        /// The turn that raised it.
        turn_id: TurnId,
        /// The alert's fingerprint (`GET /v1/alerts`).
        fingerprint: String,
        /// The alert's name.
        alertname: String,
        /// Its severity.
        severity: String,
        /// Its summary.
        summary: String,
    },
    /// That alert resolved.
    #[serde(rename = "alert.resolved")]
    AlertResolved {
        /// The turn that raised it.
        turn_id: TurnId,
        /// The alert's fingerprint.
        fingerprint: String,
        /// The alert's name.
        alertname: String,
    },
    /// A message was analysed and the conversation's insights changed.
    #[serde(rename = "insights.updated")]
    InsightsUpdated {
        /// The analysed message's id: the analysis belongs to no turn, so a
        /// turn's own stream (`Accept: text/event-stream` on a post) does not
        /// carry it; the conversation's stream does.
        turn_id: TurnId,
        /// The message analysed.
        message_id: MessageId,
        /// Who wrote it.
        sender: crate::insights::Sender,
        /// Its analysis.
        analysis: Box<crate::insights::Analysis>,
        /// The conversation's insights after it.
        insights: Box<crate::insights::ConversationInsights>,
    },
    /// The turn's agent profile was chosen (`[[agents]]`; only with profiles).
    #[serde(rename = "agent.selected")]
    AgentSelected {
        /// The turn.
        turn_id: TurnId,
        /// The profile.
        agent: String,
        /// `rule`, `default` or `handoff` (pinned by an earlier handoff).
        reason: String,
        /// The message's intent, when routing classified it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        intent: Option<String>,
    },
    /// An agent handed the conversation to another profile (the `handoff` tool).
    #[serde(rename = "agent.handoff")]
    AgentHandoff {
        /// The turn.
        turn_id: TurnId,
        /// The profile that handed off.
        from: String,
        /// The profile that takes over (for this turn and the next ones).
        to: String,
        /// Why, as the agent said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl TurnEvent {
    /// The turn this event belongs to.
    pub fn turn_id(&self) -> &TurnId {
        match self {
            TurnEvent::TurnStarted { turn_id, .. }
            | TurnEvent::ToolCalled { turn_id, .. }
            | TurnEvent::ToolCompleted { turn_id, .. }
            | TurnEvent::AnswerDelta { turn_id, .. }
            | TurnEvent::AnswerCompleted { turn_id, .. }
            | TurnEvent::TurnFailed { turn_id, .. }
            | TurnEvent::TurnCancelRequested { turn_id, .. }
            | TurnEvent::TurnCancelled { turn_id, .. }
            | TurnEvent::ApprovalRequested { turn_id, .. }
            | TurnEvent::ApprovalDecided { turn_id, .. }
            | TurnEvent::ScheduleFired { turn_id, .. }
            | TurnEvent::AlertFiring { turn_id, .. }
            | TurnEvent::AlertResolved { turn_id, .. }
            | TurnEvent::InsightsUpdated { turn_id, .. }
            | TurnEvent::AgentSelected { turn_id, .. }
            | TurnEvent::AgentHandoff { turn_id, .. } => turn_id,
        }
    }

    /// The wire name (`turn.started`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            TurnEvent::TurnStarted { .. } => "turn.started",
            TurnEvent::ToolCalled { .. } => "tool.called",
            TurnEvent::ToolCompleted { .. } => "tool.completed",
            TurnEvent::AnswerDelta { .. } => "answer.delta",
            TurnEvent::AnswerCompleted { .. } => "answer.completed",
            TurnEvent::TurnFailed { .. } => "turn.failed",
            TurnEvent::TurnCancelRequested { .. } => "turn.cancel_requested",
            TurnEvent::TurnCancelled { .. } => "turn.cancelled",
            TurnEvent::ApprovalRequested { .. } => "approval.requested",
            TurnEvent::ApprovalDecided { .. } => "approval.decided",
            TurnEvent::ScheduleFired { .. } => "schedule.fired",
            TurnEvent::AlertFiring { .. } => "alert.firing",
            TurnEvent::AlertResolved { .. } => "alert.resolved",
            TurnEvent::InsightsUpdated { .. } => "insights.updated",
            TurnEvent::AgentSelected { .. } => "agent.selected",
            TurnEvent::AgentHandoff { .. } => "agent.handoff",
        }
    }

    /// True for the events that end a turn.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TurnEvent::AnswerCompleted { .. }
                | TurnEvent::TurnFailed { .. }
                | TurnEvent::TurnCancelled { .. }
        )
    }
}

/// An event as stored in a conversation's event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Monotonically increasing per conversation, starting at 1; the SSE `id`.
    pub id: u64,
    /// When it was written.
    pub at: DateTime<Utc>,
    /// The event.
    pub event: TurnEvent,
}

/// A stored turn event as published on `conversation_events` for downstream
/// consumers (schema `schemas/events/conversation.event.v1.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationEvent {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The event's id in the conversation's stream (the SSE id).
    pub id: u64,
    /// When it was written.
    pub at: DateTime<Utc>,
    /// The event.
    pub event: TurnEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_their_wire_names() {
        let e = TurnEvent::TurnFailed {
            turn_id: TurnId::parse("t1").unwrap(),
            code: "max_steps_exceeded".into(),
            reason: "x".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "turn.failed");
        assert_eq!(v["turn_id"], "t1");
        assert_eq!(e.kind(), "turn.failed");
        let back: TurnEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}

/// A document accepted for ingestion: the `data` of a `document.submitted`
/// event, keyed by document id on the bus. The content travels with it, so an
/// accepted document survives a restart before it is ingested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentSubmission {
    /// Stable document id within the tenant.
    pub document_id: String,
    /// The ingestion job this submission starts.
    pub job_id: String,
    /// Format: `markdown`, `text`, `html`, `pdf` or `docx`.
    pub format: String,
    /// Title to use instead of the one found in the document.
    #[serde(default)]
    pub title: Option<String>,
    /// Where it came from (file name, URL, …).
    #[serde(default)]
    pub source: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The document's date.
    #[serde(default)]
    pub date: Option<DateTime<Utc>>,
    /// The document's bytes, base64 (standard alphabet, padded).
    pub content_base64: String,
}
