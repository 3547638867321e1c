//! The OpenAI-compatible facade: `POST /v1/chat/completions` and `GET
//! /v1/models`, so OpenAI SDKs and chat UIs talk to Cairn's agent.
//!
//! - **Models** are Cairn's agent profiles (`[[agents]]`) plus `cairn` (routing
//!   by intent, as on the native API). Naming a profile makes it answer the turn.
//! - **Tools run server-side**: the agent's ReAct loop calls MCP tools and the
//!   knowledge base; the final answer comes back as the assistant message. A
//!   request's own `tools` are refused (Cairn would not call them).
//! - **Continuity**: `X-Cairn-Conversation: <id>` names the conversation (created
//!   on first use, owned by the caller); else the `user` field names one per
//!   (tenant, caller, user); in both cases, once the conversation exists, only
//!   the last user message of `messages` is new — Cairn's memory holds the rest.
//!   Without either, a new conversation is made per request and every message
//!   before the last becomes its context. The id comes back in the
//!   `X-Cairn-Conversation` response header and in `cairn.conversation_id`.
//! - **Extension field**: the completion (and the last chunk of a stream) carries
//!   `cairn`: `{conversation_id, turn_id, message_id, citations, agent}`.
//! - **Streaming** (`stream: true`): `chat.completion.chunk` events from the
//!   turn's `answer.delta` events, a last chunk with `finish_reason` and `usage`,
//!   one more usage-only chunk when `stream_options.include_usage` is set (as
//!   OpenAI does), then `data: [DONE]`. A failed turn sends `data:
//!   {"error": {…}}` before closing.
//! - **Errors** use Cairn's contract (`{"error": {"code", "message", …}}`),
//!   which the OpenAI SDKs read as their own (`message`, `code`, status class).

use crate::auth::Caller;
use crate::conversations::{Access, load_owned};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::JsonBody;
use crate::messages::{admit, new_request, turn_events};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cairn_core::{ConversationId, ConversationMeta, Message, Role, StoredEvent, TurnEvent};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;

/// The request header (and response header) naming the conversation.
pub const CONVERSATION_HEADER: &str = "x-cairn-conversation";
/// The model name of the default agent (routing by intent).
pub const DEFAULT_MODEL: &str = "cairn";
/// Most messages read from one request's `messages`.
const MAX_MESSAGES: usize = 256;
/// Namespace of conversation ids derived from the `user` field (UUIDv5).
const USER_NS: uuid::Uuid = uuid::Uuid::from_u128(0x3c5e_91a7_0d4b_4e2f_8a61_b7c9_d0e1_f2a3);

/// One message of the request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatMessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or an array of content parts (only `text` parts are read).
    #[serde(default)]
    pub content: Value,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    /// Send a usage-only chunk before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The body of `POST /v1/chat/completions`. Sampling parameters
/// (`temperature`, `max_tokens`, …) are accepted and ignored: the agent profile
/// decides them.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequest {
    /// `cairn` or an agent profile's name.
    pub model: String,
    /// The conversation so far; the last one must be the user's.
    pub messages: Vec<ChatMessageIn>,
    /// Stream the answer as `chat.completion.chunk` events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// The end user: names a conversation that continues across requests.
    #[serde(default)]
    pub user: Option<String>,
    /// Client-side tools are not supported (tools run in Cairn).
    #[serde(default)]
    pub tools: Option<Value>,
    /// Ignored (as are other sampling parameters).
    #[serde(flatten)]
    #[schema(ignore)]
    pub other: serde_json::Map<String, Value>,
}

fn text_of(content: &Value, index: usize) -> ApiResult<String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => {
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(t);
                    }
                    _ => {
                        return Err(ApiError::invalid_field(
                            &format!("messages[{index}].content"),
                            "only text content parts are supported",
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(ApiError::invalid_field(
            &format!("messages[{index}].content"),
            "content must be a string or an array of text parts",
        )),
    }
}

fn role_of(role: &str, index: usize) -> ApiResult<Role> {
    match role {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        _ => Err(ApiError::invalid_field(
            &format!("messages[{index}].role"),
            "roles are system, developer, user and assistant (tools run inside Cairn)",
        )),
    }
}

/// `GET /v1/models`: `cairn` and every agent profile.
#[utoipa::path(get, path = "/models", tag = "openai", summary = "OpenAI-compatible model list (the agent profiles)", responses((status = 200, description = "Models", body = serde_json::Value)))]
pub async fn models(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let mut data = vec![json!({
        "id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "cairn",
        "description": "Cairn's agent; the profile is chosen by the message's intent",
    })];
    for (name, description) in &state.settings.agent_profiles {
        data.push(json!({
            "id": name, "object": "model", "created": 0, "owned_by": "cairn",
            "description": description,
        }));
    }
    Json(json!({ "object": "list", "data": data }))
}

/// Where the turn runs, and whether the request's history must be written
/// into a new conversation.
async fn conversation_for(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    user: Option<&str>,
) -> ApiResult<(ConversationId, bool)> {
    let named = match headers.get(CONVERSATION_HEADER) {
        Some(v) => Some(
            ConversationId::parse(v.to_str().unwrap_or_default())
                .map_err(|e| ApiError::invalid_field("X-Cairn-Conversation", e.to_string()))?,
        ),
        None => match user.filter(|u| !u.is_empty()) {
            Some(u) => {
                if u.len() > 256 {
                    return Err(ApiError::invalid_field(
                        "user",
                        "`user` is longer than 256 bytes",
                    ));
                }
                let name = format!("{}/{}/{u}", caller.tenant, caller.user);
                let id = uuid::Uuid::new_v5(&USER_NS, name.as_bytes());
                Some(
                    ConversationId::parse(format!("oai-{id}"))
                        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?,
                )
            }
            None => None,
        },
    };
    let id = match named {
        Some(id) => {
            match load_owned(state, caller, &id, Access::Write).await {
                Ok(_) => return Ok((id, false)),
                Err(e) if e.code == ErrorCode::ConversationNotFound => {
                    // Another tenant's or user's conversation with this id also
                    // reads as not found; creating it then fails as a conflict.
                }
                Err(e) => return Err(e),
            }
            id
        }
        None => ConversationId::generate(),
    };
    crate::conversations::check_conversation_quota(state, caller).await?;
    let meta = ConversationMeta::new(id.clone(), caller.tenant.clone(), caller.user.clone(), None);
    match state.memory.create_conversation(&meta).await {
        Ok(()) => Ok((id, true)),
        Err(cairn_core::ports::StoreError::AlreadyExists) => Err(ApiError::new(
            ErrorCode::Conflict,
            "that conversation id is taken; choose another X-Cairn-Conversation",
        )),
        Err(e) => Err(e.into()),
    }
}

/// `POST /v1/chat/completions`.
#[utoipa::path(post, path = "/chat/completions", tag = "openai", summary = "OpenAI-compatible chat completion (non-streaming or `stream: true`)", request_body = ChatCompletionRequest, params(("X-Cairn-Conversation" = Option<String>, Header, description = "Continue this conversation")), responses((status = 200, description = "A `chat.completion`, or `chat.completion.chunk` events", body = serde_json::Value)))]
pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ChatCompletionRequest>,
) -> ApiResult<Response> {
    if body.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::invalid_field(
            "tools",
            "client-side tools are not supported: Cairn's agent runs its own tools server-side",
        ));
    }
    let agent = if body.model == DEFAULT_MODEL {
        None
    } else if state
        .settings
        .agent_profiles
        .iter()
        .any(|(n, _)| *n == body.model)
    {
        Some(body.model.clone())
    } else {
        return Err(ApiError::new(
            ErrorCode::ModelNotFound,
            format!("no model `{}`; GET /v1/models lists them", body.model),
        )
        .with_details(json!({"field": "model"})));
    };
    if body.messages.is_empty() || body.messages.len() > MAX_MESSAGES {
        return Err(ApiError::invalid_field(
            "messages",
            format!("`messages` must hold 1 to {MAX_MESSAGES} messages"),
        ));
    }
    let mut history = Vec::with_capacity(body.messages.len());
    let max = state.settings.max_message_chars;
    for (i, m) in body.messages.iter().enumerate() {
        let text = text_of(&m.content, i)?;
        // Every message may end up in memory: each has the bound of a message.
        if text.chars().take(max + 1).count() > max {
            return Err(ApiError::invalid_field(
                &format!("messages[{i}].content"),
                format!("a message is longer than {max} characters (agent.max_message_chars)"),
            ));
        }
        history.push((role_of(&m.role, i)?, text));
    }
    let Some((Role::User, question)) = history.pop() else {
        return Err(ApiError::invalid_field(
            "messages",
            "the last message must be the user's",
        ));
    };
    let (id, fresh) = conversation_for(&state, &caller, &headers, body.user.as_deref()).await?;
    admit(&state, &caller, &id, &question, "messages").await?;
    if fresh {
        for (role, text) in history.into_iter().filter(|(_, t)| !t.trim().is_empty()) {
            let (text, _) = match &state.insights {
                Some(i) => i.for_store(&caller.tenant, text),
                None => (text, None),
            };
            state
                .memory
                .append_message(&caller.tenant, &id, &Message::new(role, text))
                .await?;
        }
    }
    let permit = state.streams.acquire(&caller)?;
    let after = state.events.last_event_id(&caller.tenant, &id).await?;
    let mut request = new_request(&state, &caller.tenant, &id, &caller.user, question);
    request.agent = agent;
    state
        .runtime
        .submit(&request, Some(&crate::request_id::traceparent()))
        .await
        .map_err(|e| ApiError::unavailable("the event bus", &e))?;
    tracing::info!(conversation = %id, turn = %request.turn_id, "chat completion accepted");
    let created = chrono::Utc::now().timestamp();
    let completion_id = format!("chatcmpl-{}", request.turn_id);
    let events = turn_events(&state, &request, after);
    let conversation = HeaderValue::from_str(id.as_str()).ok();
    let (conv, turn) = (id.to_string(), request.turn_id.to_string());
    if !body.stream {
        let waited = crate::messages::until_terminal(&state, events).await?;
        drop(permit);
        let Some(events) = waited else {
            return Err(ApiError::new(
                ErrorCode::TurnTimeout,
                "the turn did not end within server.wait_timeout; it goes on in the conversation",
            )
            .with_details(json!({"conversation_id": id.as_str(), "turn_id": request.turn_id})));
        };
        let last = events.last().map(|e| &e.event);
        let (content, usage) = match last {
            Some(TurnEvent::AnswerCompleted { content, usage, .. }) => (content.clone(), *usage),
            Some(TurnEvent::TurnFailed { code, reason, .. }) => {
                return Err(turn_failed(code, reason));
            }
            Some(TurnEvent::TurnCancelled { reason, .. }) => {
                return Err(turn_failed("cancelled", reason));
            }
            _ => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "the turn ended without an outcome",
                ));
            }
        };
        let mut response = Json(json!({
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage_json(usage),
            "cairn": extension(&conv, &turn, last),
        }))
        .into_response();
        if let Some(v) = conversation {
            response.headers_mut().insert(CONVERSATION_HEADER, v);
        }
        return Ok(response);
    }

    let include_usage = body.stream_options.is_some_and(|o| o.include_usage);
    let model = body.model.clone();
    let chunk = move |delta: Value, finish: Value, extra: Option<(Value, Value)>| {
        let mut c = json!({
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if let Some((usage, cairn)) = extra {
            c["usage"] = usage;
            c["cairn"] = cairn;
        }
        c
    };
    let role = chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        None,
    );
    let timeout = state.settings.wait_timeout;
    let closed = state.closed();
    let stream = chunk_stream(events, move |e: &StoredEvent, sent_text: &mut bool| {
        let mut out: Vec<Value> = Vec::new();
        match &e.event {
            TurnEvent::AnswerDelta { delta, .. } if !delta.is_empty() => {
                *sent_text = true;
                out.push(chunk(json!({"content": delta}), Value::Null, None));
            }
            TurnEvent::AnswerCompleted { content, usage, .. } => {
                if !*sent_text && !content.is_empty() {
                    out.push(chunk(json!({"content": content}), Value::Null, None));
                }
                let usage = usage_json(*usage);
                out.push(chunk(
                    json!({}),
                    json!("stop"),
                    Some((usage.clone(), extension(&conv, &turn, Some(&e.event)))),
                ));
                if include_usage {
                    let mut u = chunk(json!({}), Value::Null, None);
                    u["choices"] = json!([]);
                    u["usage"] = usage;
                    out.push(u);
                }
            }
            TurnEvent::TurnFailed { .. } | TurnEvent::TurnCancelled { .. } => {
                let e = match &e.event {
                    TurnEvent::TurnFailed { code, reason, .. } => turn_failed(code, reason),
                    TurnEvent::TurnCancelled { reason, .. } => turn_failed("cancelled", reason),
                    _ => return out,
                };
                out.push(json!({"error": {
                    "code": e.code.as_str(), "message": e.message, "details": e.details,
                    "request_id": Value::Null,
                }}));
            }
            _ => {}
        }
        out
    });
    let body_stream =
        futures::stream::once(async move { Ok(Event::default().data(role.to_string())) })
            .chain(stream)
            .take_until(closed)
            .chain(futures::stream::once(async {
                Ok::<_, Infallible>(Event::default().data("[DONE]"))
            }));
    let body_stream = tokio_stream::StreamExt::timeout(body_stream, timeout)
        .take_while(|r| futures::future::ready(r.is_ok()))
        .filter_map(|r| futures::future::ready(r.ok()))
        .map(move |e| {
            let _hold = &permit;
            e
        });
    let mut response = Sse::new(body_stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    if let Some(v) = conversation {
        response.headers_mut().insert(CONVERSATION_HEADER, v);
    }
    Ok(response)
}

/// Turns the turn's events into chunks; ends after the terminal event.
fn chunk_stream<S, F>(
    events: S,
    mut to_chunks: F,
) -> impl futures::Stream<Item = Result<Event, Infallible>> + Send
where
    S: futures::Stream<Item = Result<StoredEvent, cairn_core::ports::StoreError>> + Send + 'static,
    F: FnMut(&StoredEvent, &mut bool) -> Vec<Value> + Send + 'static,
{
    let mut sent_text = false;
    events
        .flat_map(move |item| {
            let chunks: Vec<Value> = match item {
                Ok(e) => {
                    let mut c = to_chunks(&e, &mut sent_text);
                    if e.event.is_terminal() {
                        // Marks the end; the stream stops after these chunks.
                        c.push(json!({"__end": true}));
                    }
                    c
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event store failed during a chat completion stream");
                    vec![json!({"error": {"code": "unavailable", "message": "the event store is unavailable"}}), json!({"__end": true})]
                }
            };
            futures::stream::iter(chunks)
        })
        .take_while(|c| futures::future::ready(c.get("__end").is_none()))
        .map(|c| Ok(Event::default().data(c.to_string())))
}

/// The `cairn` extension field of a completion.
fn extension(conversation: &str, turn: &str, answer: Option<&TurnEvent>) -> Value {
    let (message_id, citations, agent) = match answer {
        Some(TurnEvent::AnswerCompleted {
            message_id,
            citations,
            metadata,
            ..
        }) => (
            json!(message_id),
            json!(citations),
            metadata.get("agent").cloned().unwrap_or(Value::Null),
        ),
        _ => (Value::Null, json!([]), Value::Null),
    };
    json!({
        "conversation_id": conversation,
        "turn_id": turn,
        "message_id": message_id,
        "citations": citations,
        "agent": agent,
    })
}

fn usage_json(usage: Option<cairn_core::Usage>) -> Value {
    let u = usage.unwrap_or_default();
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

/// A failed turn as an API error: `budget_exceeded` keeps its code (429);
/// every other failure is `turn_failed` (502) with the turn's code in details.
fn turn_failed(code: &str, reason: &str) -> ApiError {
    if code == "budget_exceeded" {
        return ApiError::new(ErrorCode::BudgetExceeded, reason);
    }
    ApiError::new(ErrorCode::TurnFailed, reason.to_owned()).with_details(json!({"turn_code": code}))
}
