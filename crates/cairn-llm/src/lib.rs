//! Chat models behind `cairn_core::ports::ChatModel`.
//!
//! - [`offline::OfflinePlanner`]: the default when no provider is configured. A
//!   deterministic, documented policy (no LLM): runs a tool the user names with
//!   `/tool NAME {json}`, searches knowledge when a `search_knowledge` tool exists,
//!   and otherwise answers extractively from the conversation, with citations.
//! - [`openai::OpenAiModel`]: any OpenAI-compatible Chat Completions endpoint.
//! - [`anthropic::AnthropicModel`]: the Anthropic Messages API.
//! - [`gemini::GeminiModel`]: Google Gemini `generateContent`.
//! - [`embeddings::OpenAiEmbedder`]: dense vectors from an OpenAI-compatible
//!   `/embeddings` endpoint (the `DenseEmbedder` port).
//!
//! The HTTP providers share [`http`] (timeouts, retries with backoff on 429/5xx,
//! Server-Sent Event decoding) and [`names`] (tool names made safe for providers
//! that restrict them). [`throttle`] is the adaptive concurrency every call to
//! a provider passes through (a 429 slows all conversations at once).
//! [`from_config`] builds the configured model.

pub mod anthropic;
pub mod embeddings;
pub mod gemini;
pub mod http;
pub mod names;
pub mod offline;
pub mod openai;
pub mod throttle;

use cairn_core::config::{LlmConfig, Provider};
use cairn_core::ports::{ChatModel, ModelError};
use std::sync::Arc;

/// Builds the model `config` asks for. `env` looks up environment variables (the
/// API key is read from the variable named by `api_key_env`).
pub fn from_config(
    config: &LlmConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn ChatModel>, ModelError> {
    let key = match &config.api_key_env {
        Some(var) => Some(env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
            ModelError::Config(format!(
                "llm.api_key_env names `{var}`, but that environment variable is not set"
            ))
        })?),
        None => None,
    };
    let model = || {
        config
            .model
            .clone()
            .ok_or_else(|| ModelError::Config("llm.model is required".into()))
    };
    Ok(match config.provider {
        Provider::Offline => Arc::new(offline::OfflinePlanner::new()),
        Provider::Openai => Arc::new(openai::OpenAiModel::new(config, model()?, key)?),
        Provider::Anthropic => Arc::new(anthropic::AnthropicModel::new(config, model()?, key)?),
        Provider::Gemini => Arc::new(gemini::GeminiModel::new(config, model()?, key)?),
    })
}
