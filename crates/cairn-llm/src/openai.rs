//! OpenAI-compatible Chat Completions (OpenAI, vLLM, Ollama, llama.cpp server,
//! LM Studio, …) with native tool calling and streamed answers.

use crate::http::{ProviderBase, Started, event_json, json_body, parse_arguments, sse_events};
use crate::names::ToolNames;
use async_trait::async_trait;
use cairn_core::config::LlmConfig;
use cairn_core::ports::{
    ChatModel, ChatRequest, ChatResponse, DeltaSender, JsonSchemaSpec, ModelError,
};
use cairn_core::{Role, ToolCall, Usage};
use futures::StreamExt;
use reqwest::header::AUTHORIZATION;
use serde_json::{Value, json};

/// Default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// An OpenAI-compatible chat model.
pub struct OpenAiModel {
    base: ProviderBase,
    url: String,
}

impl OpenAiModel {
    /// A model at `config.base_url` (default OpenAI). `api_key` is sent as a
    /// bearer token when present (local servers usually need none).
    pub fn new(
        config: &LlmConfig,
        model: String,
        api_key: Option<String>,
    ) -> Result<Self, ModelError> {
        let base = config.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let auth = api_key.map(|k| (AUTHORIZATION, format!("Bearer {k}")));
        Ok(Self {
            base: ProviderBase::new(config, model, auth, &[])?,
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
        })
    }

    fn body(&self, req: &ChatRequest, names: &ToolNames, stream: bool) -> Value {
        let mut messages = vec![json!({"role": "system", "content": req.system})];
        for m in &req.messages {
            messages.push(match m.role {
                Role::System => json!({"role": "system", "content": m.content}),
                Role::User => json!({"role": "user", "content": m.content}),
                Role::Assistant if !m.tool_calls.is_empty() => json!({
                    "role": "assistant",
                    "content": if m.content.is_empty() { Value::Null } else { json!(m.content) },
                    "tool_calls": m.tool_calls.iter().map(|c| json!({
                        "id": c.id,
                        "type": "function",
                        "function": {"name": names.wire(&c.name), "arguments": c.arguments.to_string()},
                    })).collect::<Vec<_>>(),
                }),
                Role::Assistant => json!({"role": "assistant", "content": m.content}),
                Role::Tool => json!({
                    "role": "tool",
                    "tool_call_id": m.tool_call_id,
                    "content": m.content,
                }),
            });
        }
        let mut body = json!({
            "model": req.options.model.as_deref().unwrap_or(&self.base.model),
            "messages": messages,
            "max_tokens": req.options.max_tokens.unwrap_or(self.base.max_tokens),
            "stream": stream,
        });
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        if let Some(t) = req.options.temperature.or(self.base.temperature) {
            body["temperature"] = json!(t);
        }
        if !req.tools.is_empty() {
            body["tools"] = req
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": names.wire(&t.name),
                        "description": t.description,
                        "parameters": t.input_schema,
                    }})
                })
                .collect();
        }
        body
    }
}

fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usage")?;
    if u.is_null() {
        return None;
    }
    Some(Usage {
        input_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
        output_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
    })
}

/// A tool call being assembled from stream fragments.
#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

#[async_trait]
impl ChatModel for OpenAiModel {
    fn provider(&self) -> &'static str {
        "openai"
    }

    fn model_name(&self) -> Option<&str> {
        Some(&self.base.model)
    }

    /// `response_format: {"type": "json_schema", "json_schema": {name, schema,
    /// strict: true}}`, not streamed.
    async fn complete_json(
        &self,
        req: &ChatRequest,
        schema: &JsonSchemaSpec,
    ) -> Result<(String, Option<Usage>), ModelError> {
        let Started { resp, .. } = self
            .base
            .send("openai", &self.url, req, None, |n, _| {
                let mut body = self.body(req, n, false);
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": schema.name, "schema": schema.schema, "strict": true},
                });
                body
            })
            .await?;
        let v = json_body(resp).await?;
        let content = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| {
                ModelError::Protocol("no choices[0].message.content in response".into())
            })?;
        Ok((content.to_owned(), usage_of(&v)))
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
            .send("openai", &self.url, req, deltas, |n, s| {
                self.body(req, n, s)
            })
            .await?;
        if !stream {
            let v = json_body(resp).await?;
            let msg = &v["choices"][0]["message"];
            if msg.is_null() {
                return Err(ModelError::Protocol(
                    "no choices[0].message in response".into(),
                ));
            }
            out.content = msg["content"].as_str().unwrap_or_default().to_owned();
            for c in msg["tool_calls"].as_array().into_iter().flatten() {
                out.tool_calls.push(ToolCall {
                    id: c["id"].as_str().unwrap_or_default().to_owned(),
                    name: names.catalog(c["function"]["name"].as_str().unwrap_or_default()),
                    arguments: parse_arguments(c["function"]["arguments"].as_str().unwrap_or(""))?,
                });
            }
            out.usage = usage_of(&v);
            return Ok(out);
        }
        let mut events = sse_events(resp);
        let mut calls: Vec<PartialCall> = Vec::new();
        while let Some(e) = events.next().await {
            let e = e?;
            if e.data.trim() == "[DONE]" {
                break;
            }
            let v = event_json(&e)?;
            if let Some(err) = v.get("error") {
                return Err(ModelError::Protocol(format!(
                    "provider error in stream: {err}"
                )));
            }
            if let Some(u) = usage_of(&v) {
                out.usage = Some(u);
            }
            let delta = &v["choices"][0]["delta"];
            if let Some(text) = delta["content"].as_str()
                && !text.is_empty()
            {
                out.content.push_str(text);
                if let Some(d) = deltas {
                    let _ = d.send(text.to_owned());
                }
            }
            for c in delta["tool_calls"].as_array().into_iter().flatten() {
                let i = c["index"].as_u64().unwrap_or(calls.len() as u64) as usize;
                if i > 1024 {
                    return Err(ModelError::Protocol("tool call index out of range".into()));
                }
                if calls.len() <= i {
                    calls.resize_with(i + 1, PartialCall::default);
                }
                let p = &mut calls[i];
                if let Some(id) = c["id"].as_str() {
                    p.id = id.to_owned();
                }
                if let Some(n) = c["function"]["name"].as_str() {
                    p.name.push_str(n);
                }
                if let Some(a) = c["function"]["arguments"].as_str() {
                    p.arguments.push_str(a);
                }
            }
        }
        for (i, p) in calls.into_iter().enumerate() {
            out.tool_calls.push(ToolCall {
                id: if p.id.is_empty() {
                    format!("call_{i}")
                } else {
                    p.id
                },
                name: names.catalog(&p.name),
                arguments: parse_arguments(&p.arguments)?,
            });
        }
        Ok(out)
    }
}
