//! The Anthropic Messages API with tool use and streamed answers.

use crate::http::{ProviderBase, Started, event_json, json_body, sse_events};
use crate::names::ToolNames;
use async_trait::async_trait;
use cairn_core::config::LlmConfig;
use cairn_core::ports::{ChatModel, ChatRequest, ChatResponse, DeltaSender, ModelError};
use cairn_core::{Role, ToolCall, Usage};
use futures::StreamExt;
use reqwest::header::HeaderName;
use serde_json::{Value, json};

/// Default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The API version Cairn speaks.
pub const API_VERSION: &str = "2023-06-01";

/// An Anthropic chat model.
pub struct AnthropicModel {
    base: ProviderBase,
    url: String,
}

impl AnthropicModel {
    /// A model at `config.base_url` (default Anthropic), authenticated with `api_key`.
    pub fn new(
        config: &LlmConfig,
        model: String,
        api_key: Option<String>,
    ) -> Result<Self, ModelError> {
        let base = config.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let auth = api_key.map(|k| (HeaderName::from_static("x-api-key"), k));
        Ok(Self {
            base: ProviderBase::new(config, model, auth, &[("anthropic-version", API_VERSION)])?,
            url: format!("{}/v1/messages", base.trim_end_matches('/')),
        })
    }

    fn body(&self, req: &ChatRequest, names: &ToolNames, stream: bool) -> Value {
        let mut system = req.system.clone();
        // Anthropic takes one system prompt and alternating user/assistant turns:
        // system messages are folded into the prompt, consecutive blocks of one
        // role are merged into one message.
        let mut messages: Vec<(String, Vec<Value>)> = Vec::new();
        let mut push = |role: &str, block: Value| match messages.last_mut() {
            Some((r, blocks)) if r == role => blocks.push(block),
            _ => messages.push((role.to_owned(), vec![block])),
        };
        for m in &req.messages {
            match m.role {
                Role::System => {
                    system.push_str("\n\n");
                    system.push_str(&m.content);
                }
                Role::User => push("user", json!({"type": "text", "text": m.content})),
                Role::Assistant => {
                    if !m.content.is_empty() {
                        push("assistant", json!({"type": "text", "text": m.content}));
                    }
                    for c in &m.tool_calls {
                        push(
                            "assistant",
                            json!({"type": "tool_use", "id": c.id, "name": names.wire(&c.name), "input": c.arguments}),
                        );
                    }
                }
                Role::Tool => push(
                    "user",
                    json!({
                        "type": "tool_result",
                        "tool_use_id": m.tool_call_id,
                        "content": m.content,
                        "is_error": m.is_error,
                    }),
                ),
            }
        }
        let mut body = json!({
            "model": req.options.model.as_deref().unwrap_or(&self.base.model),
            "max_tokens": req.options.max_tokens.unwrap_or(self.base.max_tokens),
            "system": system,
            "messages": messages.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect::<Vec<_>>(),
            "stream": stream,
        });
        if let Some(t) = req.options.temperature.or(self.base.temperature) {
            body["temperature"] = json!(t);
        }
        if !req.tools.is_empty() {
            body["tools"] = req
                .tools
                .iter()
                .map(|t| json!({"name": names.wire(&t.name), "description": t.description, "input_schema": t.input_schema}))
                .collect();
        }
        body
    }
}

/// A content block being assembled from stream events.
enum Block {
    Text,
    ToolUse {
        id: String,
        name: String,
        json: String,
    },
}

#[async_trait]
impl ChatModel for AnthropicModel {
    fn provider(&self) -> &'static str {
        "anthropic"
    }

    fn model_name(&self) -> Option<&str> {
        Some(&self.base.model)
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        deltas: Option<&DeltaSender>,
    ) -> Result<ChatResponse, ModelError> {
        let Started {
            names,
            stream,
            resp,
            mut out,
        } = self
            .base
            .send("anthropic", &self.url, req, deltas, |n, s| {
                self.body(req, n, s)
            })
            .await?;
        if !stream {
            let v = json_body(resp).await?;
            let Some(content) = v["content"].as_array() else {
                return Err(ModelError::Protocol("no content in response".into()));
            };
            for b in content {
                match b["type"].as_str() {
                    Some("text") => out.content.push_str(b["text"].as_str().unwrap_or_default()),
                    Some("tool_use") => out.tool_calls.push(ToolCall {
                        id: b["id"].as_str().unwrap_or_default().to_owned(),
                        name: names.catalog(b["name"].as_str().unwrap_or_default()),
                        arguments: b["input"].clone(),
                    }),
                    _ => {}
                }
            }
            out.usage = Some(Usage {
                input_tokens: v["usage"]["input_tokens"].as_u64().unwrap_or(0),
                output_tokens: v["usage"]["output_tokens"].as_u64().unwrap_or(0),
            });
            return Ok(out);
        }
        let mut events = sse_events(resp);
        let mut blocks: Vec<Block> = Vec::new();
        let mut usage = Usage::default();
        while let Some(e) = events.next().await {
            let e = e?;
            let v = event_json(&e)?;
            match v["type"].as_str().unwrap_or(e.event.as_str()) {
                "message_start" => {
                    let u = &v["message"]["usage"];
                    usage.input_tokens = u["input_tokens"].as_u64().unwrap_or(0);
                    usage.output_tokens = u["output_tokens"].as_u64().unwrap_or(0);
                }
                "content_block_start" => {
                    let b = &v["content_block"];
                    blocks.push(match b["type"].as_str() {
                        Some("tool_use") => Block::ToolUse {
                            id: b["id"].as_str().unwrap_or_default().to_owned(),
                            name: b["name"].as_str().unwrap_or_default().to_owned(),
                            json: String::new(),
                        },
                        _ => Block::Text,
                    });
                }
                "content_block_delta" => {
                    let d = &v["delta"];
                    match (d["type"].as_str(), blocks.last_mut()) {
                        (Some("text_delta"), _) => {
                            let text = d["text"].as_str().unwrap_or_default();
                            out.content.push_str(text);
                            if let Some(tx) = deltas
                                && !text.is_empty()
                            {
                                let _ = tx.send(text.to_owned());
                            }
                        }
                        (Some("input_json_delta"), Some(Block::ToolUse { json, .. })) => {
                            json.push_str(d["partial_json"].as_str().unwrap_or_default());
                        }
                        _ => {}
                    }
                }
                "message_delta" => {
                    if let Some(n) = v["usage"]["output_tokens"].as_u64() {
                        usage.output_tokens = n;
                    }
                }
                "error" => {
                    return Err(ModelError::Protocol(format!(
                        "provider error in stream: {}",
                        v["error"]
                    )));
                }
                "message_stop" => break,
                _ => {}
            }
        }
        for b in blocks {
            if let Block::ToolUse { id, name, json } = b {
                out.tool_calls.push(ToolCall {
                    id,
                    name: names.catalog(&name),
                    arguments: crate::http::parse_arguments(&json)?,
                });
            }
        }
        out.usage = Some(usage);
        Ok(out)
    }
}
