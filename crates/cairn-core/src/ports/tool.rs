//! The Tool port: something the agent can call, with a JSON Schema for its input,
//! a deadline and an idempotency key.

use crate::ids::{ConversationId, TenantId, UserId};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// What the model is told about a tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Unique name in the catalog (`server.tool` for MCP tools).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub input_schema: Value,
}

/// Context of one tool call.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// The calling tenant.
    pub tenant_id: TenantId,
    /// The user on whose behalf the call runs (sent to MCP servers beside the
    /// tenant, so they can scope data and audit).
    pub user_id: UserId,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// `turn_id:step`; identical when a resumed turn repeats an unfinished call, so
    /// tools can make side effects exactly-once.
    pub idempotency_key: String,
    /// How long the call may take; the host enforces it too.
    pub deadline: Duration,
    /// Knowledge search only sees documents with one of these tags (the agent
    /// profile's `knowledge_tags`; empty: no restriction).
    pub knowledge_tags: Vec<String>,
    /// The W3C trace context of the tool call's span; MCP calls carry it in
    /// `_meta.traceparent`.
    pub traceparent: Option<String>,
    /// Cancelled when the turn is cancelled: a tool stops waiting and tells its
    /// server (MCP `notifications/cancelled`).
    pub cancel: tokio_util::sync::CancellationToken,
}

/// A tool's result. `is_error` results are observations for the model, not failures
/// of the turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// The observation text.
    pub content: String,
    /// True when the tool reports that the call failed.
    pub is_error: bool,
}

/// Why a call produced no output.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The arguments do not match the input schema.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The deadline passed.
    #[error("tool call timed out after {0:?}")]
    Timeout(Duration),
    /// The tool is not in the catalog, or not allowed for this tenant.
    #[error("unknown or forbidden tool: {0}")]
    Unknown(String),
    /// The tool failed.
    #[error("tool failed: {0}")]
    Failed(String),
    /// The turn was cancelled while the call ran; the tool was told to stop.
    #[error("the call was cancelled with its turn")]
    Cancelled,
}

/// A tool the agent can call.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The tool's catalog entry.
    fn spec(&self) -> &ToolSpec;

    /// Runs the tool. The caller enforces `ctx.deadline` as well.
    async fn call(&self, arguments: Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError>;

    /// The longest a call may take given `deadline` (a tool whose deadline is
    /// extended by progress reports returns its hard cap). The caller waits this long.
    fn max_duration(&self, deadline: Duration) -> Duration {
        deadline
    }
}
