//! Google Gemini `generateContent` (and `streamGenerateContent?alt=sse`) with
//! function calling.

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
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// A Gemini chat model.
pub struct GeminiModel {
    base: ProviderBase,
    url: String,
}

/// JSON Schema keywords Gemini's OpenAPI-subset schema rejects.
const UNSUPPORTED_SCHEMA_KEYS: &[&str] =
    &["$schema", "$id", "$defs", "additionalProperties", "$ref"];

fn gemini_schema(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !UNSUPPORTED_SCHEMA_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), gemini_schema(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(gemini_schema).collect()),
        other => other.clone(),
    }
}

impl GeminiModel {
    /// A model at `config.base_url` (default Google), authenticated with `api_key`
    /// (sent as `x-goog-api-key`).
    pub fn new(
        config: &LlmConfig,
        model: String,
        api_key: Option<String>,
    ) -> Result<Self, ModelError> {
        let base = config.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let auth = api_key.map(|k| (HeaderName::from_static("x-goog-api-key"), k));
        Ok(Self {
            url: format!("{}/v1beta/models/{model}", base.trim_end_matches('/')),
            base: ProviderBase::new(config, model, auth, &[])?,
        })
    }

    fn body(&self, req: &ChatRequest, names: &ToolNames) -> Value {
        let mut system = req.system.clone();
        let mut contents: Vec<(String, Vec<Value>)> = Vec::new();
        let mut push = |role: &str, part: Value| match contents.last_mut() {
            Some((r, parts)) if r == role => parts.push(part),
            _ => contents.push((role.to_owned(), vec![part])),
        };
        for m in &req.messages {
            match m.role {
                Role::System => {
                    system.push_str("\n\n");
                    system.push_str(&m.content);
                }
                Role::User => push("user", json!({"text": m.content})),
                Role::Assistant => {
                    if !m.content.is_empty() {
                        push("model", json!({"text": m.content}));
                    }
                    for c in &m.tool_calls {
                        push(
                            "model",
                            json!({"functionCall": {"name": names.wire(&c.name), "args": c.arguments}}),
                        );
                    }
                }
                Role::Tool => {
                    let key = if m.is_error { "error" } else { "content" };
                    push(
                        "user",
                        json!({"functionResponse": {
                            "name": names.wire(m.tool_name.as_deref().unwrap_or_default()),
                            "response": {key: m.content},
                        }}),
                    );
                }
            }
        }
        let mut generation =
            json!({"maxOutputTokens": req.options.max_tokens.unwrap_or(self.base.max_tokens)});
        if let Some(t) = req.options.temperature.or(self.base.temperature) {
            generation["temperature"] = json!(t);
        }
        let mut body = json!({
            "systemInstruction": {"parts": [{"text": system}]},
            "contents": contents.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts})).collect::<Vec<_>>(),
            "generationConfig": generation,
        });
        if !req.tools.is_empty() {
            body["tools"] = json!([{ "functionDeclarations": req.tools.iter().map(|t| json!({
                "name": names.wire(&t.name),
                "description": t.description,
                "parameters": gemini_schema(&t.input_schema),
            })).collect::<Vec<_>>() }]);
        }
        body
    }
}

/// Folds one `GenerateContentResponse` (whole, or a stream chunk) into `out`.
fn absorb(
    v: &Value,
    names: &ToolNames,
    out: &mut ChatResponse,
    deltas: Option<&DeltaSender>,
) -> Result<(), ModelError> {
    if let Some(err) = v.get("error") {
        return Err(ModelError::Protocol(format!("provider error: {err}")));
    }
    let parts = v["candidates"][0]["content"]["parts"].as_array();
    for p in parts.into_iter().flatten() {
        if let Some(text) = p["text"].as_str() {
            out.content.push_str(text);
            if let Some(tx) = deltas
                && !text.is_empty()
            {
                let _ = tx.send(text.to_owned());
            }
        }
        if let Some(fc) = p.get("functionCall") {
            let n = out.tool_calls.len();
            out.tool_calls.push(ToolCall {
                id: fc["id"]
                    .as_str()
                    .map_or_else(|| format!("call_{n}"), str::to_owned),
                name: names.catalog(fc["name"].as_str().unwrap_or_default()),
                arguments: if fc["args"].is_null() {
                    json!({})
                } else {
                    fc["args"].clone()
                },
            });
        }
    }
    if let Some(u) = v.get("usageMetadata") {
        out.usage = Some(Usage {
            input_tokens: u["promptTokenCount"].as_u64().unwrap_or(0),
            output_tokens: u["candidatesTokenCount"].as_u64().unwrap_or(0),
        });
    }
    Ok(())
}

#[async_trait]
impl ChatModel for GeminiModel {
    fn provider(&self) -> &'static str {
        "gemini"
    }

    fn model_name(&self) -> Option<&str> {
        Some(&self.base.model)
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        deltas: Option<&DeltaSender>,
    ) -> Result<ChatResponse, ModelError> {
        let url = if self.base.streams(deltas) {
            format!("{}:streamGenerateContent?alt=sse", self.url)
        } else {
            format!("{}:generateContent", self.url)
        };
        let Started {
            names,
            stream,
            resp,
            mut out,
        } = self
            .base
            .send("gemini", &url, req, deltas, |n, _| self.body(req, n))
            .await?;
        if !stream {
            let v = json_body(resp).await?;
            if v["candidates"].as_array().is_none_or(Vec::is_empty) {
                return Err(ModelError::Protocol("no candidates in response".into()));
            }
            absorb(&v, &names, &mut out, None)?;
            return Ok(out);
        }
        let mut events = sse_events(resp);
        while let Some(e) = events.next().await {
            let v = event_json(&e?)?;
            absorb(&v, &names, &mut out, deltas)?;
        }
        Ok(out)
    }
}
