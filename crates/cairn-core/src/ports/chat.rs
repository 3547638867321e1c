//! The ChatModel port: one model call with the conversation, the tool catalog and
//! an optional sink for streamed text.

use crate::domain::{Citation, Role, ToolCall, Usage};
use crate::ports::ToolSpec;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

/// One message sent to a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The author.
    pub role: Role,
    /// Text (may be empty for an assistant message that only calls tools).
    pub content: String,
    /// Tool calls made by the assistant in this message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For `Role::Tool`: the call this observation answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For `Role::Tool`: the tool's name (Gemini needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    /// For `Role::Tool`: whether the observation is an error.
    #[serde(default)]
    pub is_error: bool,
}

impl ChatMessage {
    /// A text message.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            tool_name: None,
            is_error: false,
        }
    }
}

/// A model request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// System instructions.
    pub system: String,
    /// The conversation, oldest first, ending with the newest user message or
    /// tool observations.
    pub messages: Vec<ChatMessage>,
    /// Tools the model may call.
    pub tools: Vec<ToolSpec>,
    /// Per-call overrides of the configured model settings (an agent
    /// profile's `model`, `temperature`, `max_tokens`).
    #[serde(default)]
    pub options: ModelOptions,
}

/// Overrides of `[llm]` for one call; `None` keeps the configured value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelOptions {
    /// Model name (OpenAI and Anthropic; Gemini's model is part of its URL).
    pub model: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Longest answer, in tokens.
    pub max_tokens: Option<u32>,
}

/// A model response: either tool calls, or a final answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Text produced (the answer when there are no tool calls).
    pub content: String,
    /// Tool calls requested.
    pub tool_calls: Vec<ToolCall>,
    /// Usage, when the provider reports it.
    pub usage: Option<Usage>,
    /// Sources the answer relied on (the offline planner fills these).
    pub citations: Vec<Citation>,
    /// Provider metadata, e.g. `{"provider":"offline","llm_configured":false}`.
    pub metadata: Value,
}

/// Streamed text fragments of an answer.
pub type DeltaSender = mpsc::UnboundedSender<String>;

/// A model failure.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The provider answered with an error status (after retries).
    #[error("provider returned HTTP {status}: {body}")]
    Http {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The request could not be sent or timed out (after retries).
    #[error("provider unreachable: {0}")]
    Transport(String),
    /// The provider's answer could not be understood.
    #[error("unexpected provider response: {0}")]
    Protocol(String),
    /// The model is misconfigured (e.g. the API key variable is not set).
    #[error("model misconfigured: {0}")]
    Config(String),
}

impl ModelError {
    /// What a tenant's user is told: a stable code and a short sentence, never
    /// the provider's body, URL or anything that could hold a key (the full
    /// error goes to the logs).
    pub fn for_users(&self) -> (&'static str, &'static str) {
        match self {
            Self::Http { status: 429, .. } => (
                "model_rate_limited",
                "The model provider is rate-limiting requests; try again shortly.",
            ),
            Self::Http { status, .. } if *status >= 500 => (
                "model_unavailable",
                "The model provider failed to answer; try again later.",
            ),
            Self::Http { .. } => (
                "model_rejected",
                "The model provider refused the request; an operator has the details.",
            ),
            Self::Transport(_) => (
                "model_unreachable",
                "The model provider could not be reached; try again later.",
            ),
            Self::Protocol(_) => (
                "model_error",
                "The model provider's answer could not be understood.",
            ),
            Self::Config(_) => (
                "model_misconfigured",
                "The model is not configured correctly; an operator must fix it.",
            ),
        }
    }
}

/// A JSON Schema the answer of [`ChatModel::complete_json`] must follow.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonSchemaSpec {
    /// A name for the schema (`[a-zA-Z0-9_-]{1,64}`), as providers require.
    pub name: String,
    /// The schema.
    pub schema: Value,
}

/// A chat model with tool calling.
#[async_trait]
pub trait ChatModel: Send + Sync + 'static {
    /// Provider name for metadata and `/health` (`offline`, `openai`, …).
    fn provider(&self) -> &'static str;

    /// The configured model name (`llm.model`), when there is one.
    fn model_name(&self) -> Option<&str> {
        None
    }

    /// Whether this is a real LLM (false for the offline planner).
    fn is_llm(&self) -> bool {
        true
    }

    /// One model call. Text fragments are sent to `deltas` as they arrive when the
    /// provider streams; the full response is returned either way.
    async fn complete(
        &self,
        request: &ChatRequest,
        deltas: Option<&DeltaSender>,
    ) -> Result<ChatResponse, ModelError>;

    /// One model call whose answer is JSON following `schema` (structured
    /// output, enforced by the provider where it can). Returns the answer's
    /// text (the caller validates it) and the usage. Providers without
    /// structured output answer [`ModelError::Config`].
    async fn complete_json(
        &self,
        request: &ChatRequest,
        schema: &JsonSchemaSpec,
    ) -> Result<(String, Option<Usage>), ModelError> {
        let _ = (request, schema);
        Err(ModelError::Config(format!(
            "the `{}` provider has no structured output",
            self.provider()
        )))
    }
}
