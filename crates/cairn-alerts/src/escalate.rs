//! `escalate`: the built-in tool an agent calls to page a human. It raises an
//! `Escalation` alert for the tenant, linked to the conversation and turn, with
//! the model's reason and severity. The call's idempotency key
//! (`turn_id:step`) is one of the alert's labels, so a turn resumed after a
//! crash that repeats the call raises the same alert again, which the pipeline
//! already holds: on-call is paged once.

use crate::rules::AlertPublisher;
use async_trait::async_trait;
use cairn_core::alerts::{Alert, AlertSource};
use cairn_core::ports::{Tool, ToolContext, ToolError, ToolOutput, ToolSpec};
use serde_json::{Value, json};
use std::sync::Arc;

/// The alert name of escalations.
pub const ESCALATION: &str = "Escalation";
/// Longest reason kept, in characters.
pub const MAX_REASON: usize = 2000;

/// The `escalate` tool.
pub struct EscalateTool {
    spec: ToolSpec,
    publisher: Arc<dyn AlertPublisher>,
}

impl EscalateTool {
    /// Escalations are published through `publisher` (the `alerts` topic).
    pub fn new(publisher: Arc<dyn AlertPublisher>) -> Self {
        Self {
            spec: ToolSpec {
                name: "escalate".into(),
                description: "Pages the on-call team about this conversation. Use it when the user needs a human now (an outage, a safety or legal issue, an angry customer you cannot help). Give the reason in one or two sentences.".into(),
                input_schema: json!({
                    "type": "object",
                    "properties": {
                        "reason": {"type": "string", "minLength": 1, "maxLength": MAX_REASON, "description": "Why a human is needed."},
                        "severity": {"type": "string", "enum": ["critical", "warning", "info"], "default": "warning"}
                    },
                    "required": ["reason"],
                    "additionalProperties": false
                }),
            },
            publisher,
        }
    }
}

#[async_trait]
impl Tool for EscalateTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError> {
        let reason = arguments
            .get("reason")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| ToolError::InvalidArguments("`reason` is required".into()))?;
        let severity = match arguments.get("severity").and_then(Value::as_str) {
            None => "warning",
            Some(s @ ("critical" | "warning" | "info")) => s,
            Some(other) => {
                return Err(ToolError::InvalidArguments(format!(
                    "`severity` is critical, warning or info, not `{other}`"
                )));
            }
        };
        let reason: String = reason.chars().take(MAX_REASON).collect();
        let turn_id = ctx
            .idempotency_key
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut alert = Alert::firing(
            ESCALATION,
            ctx.tenant_id.as_str(),
            severity,
            AlertSource::Agent,
        )
        .label("conversation", ctx.conversation_id.to_string())
        .label("escalation", ctx.idempotency_key.clone())
        .annotation("summary", format!("The agent asks for a human: {reason}"))
        .annotation("description", reason.clone())
        .annotation("user", ctx.user_id.to_string());
        alert.conversation_id = Some(ctx.conversation_id.to_string());
        alert.turn_id = Some(turn_id).filter(|t| !t.is_empty());
        let fingerprint = alert.fingerprint();
        self.publisher.publish(alert).await;
        tracing::info!(tenant = %ctx.tenant_id, conversation = %ctx.conversation_id, severity, "escalated to on-call");
        Ok(ToolOutput {
            content: format!(
                "Escalated to the on-call team (severity {severity}, alert {fingerprint}). A human will follow up; tell the user so."
            ),
            is_error: false,
        })
    }
}
