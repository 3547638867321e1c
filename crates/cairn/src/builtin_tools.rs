//! Tools every conversation gets, whatever else is configured.

use async_trait::async_trait;
use cairn_core::ports::{Tool, ToolContext, ToolError, ToolOutput, ToolSpec};
use serde_json::{Value, json};

/// `current_time`: the current UTC time (RFC 3339). Harmless and side-effect free;
/// also what the load generator's turns call.
pub struct CurrentTime {
    spec: ToolSpec,
}

impl Default for CurrentTime {
    fn default() -> Self {
        Self {
            spec: ToolSpec {
                name: "current_time".into(),
                description: "Returns the current date and time in UTC (RFC 3339).".into(),
                input_schema: json!({"type": "object", "properties": {}, "additionalProperties": false}),
            },
        }
    }
}

#[async_trait]
impl Tool for CurrentTime {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: Value, _ctx: &ToolContext) -> Result<ToolOutput, ToolError> {
        if !arguments.as_object().is_some_and(|o| o.is_empty()) {
            return Err(ToolError::InvalidArguments(
                "current_time takes no arguments".into(),
            ));
        }
        Ok(ToolOutput {
            content: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            is_error: false,
        })
    }
}
