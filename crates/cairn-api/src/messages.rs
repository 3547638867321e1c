//! Messages: `POST /v1/conversations/{id}/messages` (202 with a turn handle;
//! `?wait=true` for the answer; `Accept: text/event-stream` to stream the turn)
//! and `GET /v1/conversations/{id}/messages` (the transcript, each analysed
//! message with its `analysis`).
//!
//! A post may carry `Idempotency-Key`: the message and turn ids are then derived
//! from it (per tenant and conversation), so a client that retries — e.g. after a
//! 503 whose event may still have reached the bus — never causes a second turn; a
//! retry of an accepted message is answered from that message's turn.

use crate::auth::Caller;
use crate::conversations::{Access, load_owned};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::events::StreamGuard;
use crate::events::sse_response;
use crate::extract::{JsonBody, conversation_id, query_u64};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_core::ports::StoreError;
use cairn_core::{MessageId, StoredEvent, TurnEvent, TurnId, TurnRequest};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

const DEFAULT_PAGE: u64 = 100;
const MAX_PAGE: u64 = 1000;

/// The `Idempotency-Key` request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Namespaces of the ids derived from an idempotency key (UUIDv5).
const MESSAGE_NS: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c_3a8e_52d4_4b7a_9c0e_1d2f_3a4b_5c6d);
const TURN_NS: uuid::Uuid = uuid::Uuid::from_u128(0x0b9e_7d61_c2a3_4f58_8e1b_6a7c_9d0e_2f3a);

/// The client's idempotency key, if it sent a usable one.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    check_idempotency_key(v.to_str().unwrap_or_default(), "Idempotency-Key")?;
    Ok(Some(v.to_str().unwrap_or_default().to_owned()))
}

/// Checks an idempotency key (from the header or a WebSocket frame's `field`):
/// 1 to 128 characters of `A-Z a-z 0-9 - _ . :`.
pub(crate) fn check_idempotency_key(key: &str, field: &str) -> ApiResult<()> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !ok {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` must be 1 to 128 characters of A-Z a-z 0-9 - _ . :"),
        ));
    }
    Ok(())
}

/// Body of `POST /v1/conversations/{id}/messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// The user's text.
    pub content: String,
    /// What to do when a turn of the conversation is queued or running:
    /// `enqueue` (default), `reject` (409 `conversation_busy`), `interrupt`
    /// (cancel it, then answer this with the context so far) or `rollback`
    /// (cancel it and leave it out of the context).
    #[serde(default)]
    pub if_busy: Option<crate::control::BusyPolicy>,
    /// A URL that receives the turn's outcome (`turn.completed`,
    /// `turn.failed` or `turn.cancelled`; Standard Webhooks, signed, retried);
    /// its host must be in `turn_webhooks.allowed_hosts` for the tenant.
    #[serde(default)]
    pub webhook: Option<String>,
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v == "true" || v == "1")
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// `POST /v1/conversations/{id}/messages`.
#[utoipa::path(post, path = "/conversations/{id}/messages", tag = "messages", summary = "Post a user message (starts a turn)", request_body = PostMessage, params(("id" = String, Path, description = "Conversation id"), ("wait" = Option<bool>, Query, description = "Wait for the answer (up to server.wait_timeout)"), ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key never start a second turn")), responses((status = 202, description = "Accepted: `message_id`, `turn_id`, `events_url`. With `?wait=true` 200 and the outcome; with `Accept: text/event-stream` the turn's events", body = serde_json::Value)))]
pub async fn post(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PostMessage>,
) -> ApiResult<Response> {
    let id = conversation_id(&id)?;
    let meta = load_owned(&state, &caller, &id, Access::Write).await?;
    admit(&state, &caller, &id, &body.content, "content").await?;
    let key = idempotency_key(&headers)?;
    // A streamed or waited-for answer holds a follower of the event stream:
    // both count against the stream limits; only a stream, which may outlive
    // `server.wait_timeout`, also watches for token expiry and deletion.
    let sse = wants_sse(&headers);
    let sse_guard = sse
        .then(|| StreamGuard::open(&state, &caller, &meta))
        .transpose()?;
    let _wait_permit = (!sse && flag(&q, "wait"))
        .then(|| state.streams.acquire(&caller))
        .transpose()?;
    if let Some(url) = &body.webhook
        && let Err(why) = state
            .settings
            .turn_webhooks
            .check(caller.tenant.as_str(), url)
    {
        return Err(ApiError::invalid_field("webhook", why));
    }
    let policy = body.if_busy.unwrap_or_default();
    crate::control::refuse_if_busy(&state, &caller, &id, policy).await?;
    let interrupts = policy.cancel_mode();
    let accepting = Accepting {
        interrupts,
        webhook: body.webhook,
    };
    let (request, after, _) = accept_new(
        &state,
        &caller,
        &id,
        body.content,
        key.as_deref(),
        accepting,
    )
    .await?;
    let events_url = format!("/v1/conversations/{id}/events?after={after}");
    // Per message: DEBUG (the request metrics count them; INFO on every message
    // cost a formatted line and a write per message, issue 18).
    tracing::debug!(conversation = %id, turn = %request.turn_id, "message accepted");

    let turn = request.turn_id.clone();
    let turn_events = turn_events(&state, &request, after);

    if let Some(guard) = sse_guard {
        // Stream the turn's events in the response; end after its terminal event.
        let mut resp = sse_response(
            &state,
            turn_events,
            true,
            "the event store is unavailable; follow the conversation's events_url",
            guard,
        )
        .into_response();
        if let Ok(v) = request.message_id.as_str().parse() {
            resp.headers_mut().insert("x-message-id", v);
        }
        if let Ok(v) = turn.as_str().parse() {
            resp.headers_mut().insert("x-turn-id", v);
        }
        return Ok(resp);
    }

    if flag(&q, "wait") {
        let events = match until_terminal(&state, turn_events).await? {
            Some(events) => events,
            None => {
                return Err(ApiError::new(
                    ErrorCode::TurnTimeout,
                    "the turn did not end within server.wait_timeout; it goes on — follow events_url",
                )
                .with_details(json!({
                    "message_id": request.message_id,
                    "turn_id": turn,
                    "events_url": events_url,
                })));
            }
        };
        return Ok(Json(wait_body(&request, &events)).into_response());
    }

    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "message_id": request.message_id,
            "turn_id": turn,
            "events_url": events_url,
        })),
    )
        .into_response())
}

/// Puts an admitted message on the bus (or, for a retried idempotency key,
/// finds the accepted one). Returns the turn request and the event id its
/// turn's events follow.
pub(crate) async fn accept(
    state: &AppState,
    caller: &Caller,
    id: &cairn_core::ConversationId,
    content: String,
    key: Option<&str>,
) -> ApiResult<(TurnRequest, u64)> {
    let (request, after, _) =
        accept_new(state, caller, id, content, key, Accepting::default()).await?;
    Ok((request, after))
}

/// [`accept`], also saying whether the message was a retry of an accepted one.
pub(crate) async fn accept_new(
    state: &AppState,
    caller: &Caller,
    id: &cairn_core::ConversationId,
    content: String,
    key: Option<&str>,
    with: Accepting,
) -> ApiResult<(TurnRequest, u64, bool)> {
    let mut after = state.events.last_event_id(&caller.tenant, id).await?;
    let mut request = new_request(state, &caller.tenant, id, &caller.user, content);
    request.interrupts = with.interrupts.map(|m| m.as_str().to_owned());
    request.webhook = with.webhook;
    let mut replay = false;
    if let Some(k) = key {
        let name = format!("{}/{id}/{k}", caller.tenant);
        let derived = |ns: &uuid::Uuid| uuid::Uuid::new_v5(ns, name.as_bytes()).to_string();
        request.message_id = MessageId::parse(derived(&MESSAGE_NS))
            .map_err(|e| ApiError::new(ErrorCode::InvalidField, e.to_string()))?;
        request.turn_id = TurnId::parse(derived(&TURN_NS))
            .map_err(|e| ApiError::new(ErrorCode::InvalidField, e.to_string()))?;
        // Accepted before: answer from that turn's events instead of posting again.
        replay = state
            .memory
            .message_accepted(&caller.tenant, id, &request.message_id)
            .await?;
    }
    if replay {
        after = 0;
        tracing::info!(conversation = %id, turn = %request.turn_id, "idempotent retry of an accepted message");
    } else {
        state
            .runtime
            .submit(&request, Some(&crate::request_id::traceparent()))
            .await
            .map_err(|e| ApiError::unavailable("the event bus", &e))?;
    }
    Ok((request, after, replay))
}

/// What a REST message adds to its turn request.
#[derive(Debug, Default)]
pub(crate) struct Accepting {
    /// `if_busy` = interrupt / rollback.
    pub interrupts: Option<cairn_core::ports::CancelMode>,
    /// The checked webhook URL.
    pub webhook: Option<String>,
}

/// A turn request for an admitted message, on every path (REST, MCP `ask`,
/// `cairn ask`): under the `redact_store` PII policy its content is redacted
/// here, before it reaches the bus, and `redacted_pii` says what was found.
pub fn new_request(
    state: &AppState,
    tenant: &cairn_core::TenantId,
    id: &cairn_core::ConversationId,
    user: &cairn_core::UserId,
    content: String,
) -> TurnRequest {
    let (content, redacted_pii) = match &state.insights {
        Some(i) => i.for_store(tenant, content),
        None => (content, None),
    };
    let mut request = TurnRequest::new(tenant.clone(), id.clone(), user.clone(), content);
    request.redacted_pii = redacted_pii;
    request
}

/// Checks a user message before it goes into a turn, the same way on every
/// path (REST, MCP `ask`): not empty, at most `agent.max_message_chars`
/// characters, and room in the conversation's queue
/// (`agent.max_queued_messages`, 429 `queue_full`). `field` names the field in
/// errors.
pub async fn admit(
    state: &AppState,
    caller: &Caller,
    id: &cairn_core::ConversationId,
    content: &str,
    field: &str,
) -> ApiResult<()> {
    if content.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("`{field}` must not be empty"),
        )
        .with_details(json!({"field": field})));
    }
    let max = state.settings.max_message_chars;
    // Counting stops one past the limit: the cost is bounded by the limit, not
    // by what was sent.
    if content.chars().take(max + 1).count() > max {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("`{field}` is longer than {max} characters"),
        )
        .with_details(json!({"field": field, "max": max})));
    }
    let queued = state.memory.pending_turns(&caller.tenant, id).await?.len();
    let limit = state.settings.max_queued_messages as usize;
    if queued >= limit {
        return Err(ApiError::new(
            ErrorCode::QueueFull,
            format!(
                "this conversation already has {queued} messages waiting; wait for the answers"
            ),
        )
        .with_details(json!({"limit": limit})));
    }
    Ok(())
}

/// The events of `request`'s turn after event `after` (store errors pass through).
pub(crate) fn turn_events(
    state: &AppState,
    request: &TurnRequest,
    after: u64,
) -> impl Stream<Item = Result<StoredEvent, StoreError>> + Send + 'static {
    let turn = request.turn_id.clone();
    state
        .events
        .subscribe(
            request.tenant_id.clone(),
            request.conversation_id.clone(),
            after,
        )
        .filter(move |e| {
            futures::future::ready(match e {
                Ok(e) => e.event.turn_id() == &turn,
                Err(_) => true,
            })
        })
}

/// A turn's events up to and including its terminal one; `None` when
/// `server.wait_timeout` passes first, and 503 `unavailable` when the server
/// shuts down before the turn ends (the turn resumes after the restart or on
/// another replica; its events stay readable).
pub(crate) async fn until_terminal(
    state: &AppState,
    events: impl Stream<Item = Result<StoredEvent, StoreError>>,
) -> ApiResult<Option<Vec<StoredEvent>>> {
    let collect = async move {
        let mut out: Vec<StoredEvent> = Vec::new();
        let mut s = Box::pin(events);
        while let Some(item) = s.next().await {
            let e = item?;
            let terminal = e.event.is_terminal();
            out.push(e);
            if terminal {
                break;
            }
        }
        Ok::<_, StoreError>(out)
    };
    tokio::select! {
        r = tokio::time::timeout(state.settings.wait_timeout, collect) => match r {
            Ok(r) => Ok(Some(r?)),
            Err(_) => Ok(None),
        },
        () = state.drain_over() => Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server restarted before the turn ended; it resumes on its own — follow the conversation's events",
        )),
    }
}

/// The `?wait=true` body: the outcome and the steps that led to it.
fn wait_body(request: &TurnRequest, events: &[StoredEvent]) -> Value {
    let steps: Vec<&TurnEvent> = events
        .iter()
        .map(|e| &e.event)
        .filter(|e| {
            matches!(
                e,
                TurnEvent::ToolCalled { .. } | TurnEvent::ToolCompleted { .. }
            )
        })
        .collect();
    let (status, answer, error) = match events.last().map(|e| &e.event) {
        Some(TurnEvent::AnswerCompleted {
            message_id,
            content,
            citations,
            usage,
            metadata,
            ..
        }) => (
            "completed",
            json!({"message_id": message_id, "content": content, "citations": citations, "usage": usage, "metadata": metadata}),
            Value::Null,
        ),
        Some(TurnEvent::TurnFailed { code, reason, .. }) => (
            "failed",
            Value::Null,
            json!({"code": code, "reason": reason}),
        ),
        Some(TurnEvent::TurnCancelled { mode, reason, .. }) => (
            "cancelled",
            Value::Null,
            crate::control::cancelled_error(mode, reason),
        ),
        _ => ("unknown", Value::Null, Value::Null),
    };
    json!({
        "message_id": request.message_id,
        "turn_id": request.turn_id,
        "status": status,
        "answer": answer,
        "error": error,
        "steps": steps,
    })
}

/// `GET /v1/conversations/{id}/messages?from=&limit=`.
#[utoipa::path(get, path = "/conversations/{id}/messages", tag = "messages", summary = "Read the transcript", params(("id" = String, Path, description = "Conversation id"), ("from" = Option<u64>, Query, description = "First sequence number"), ("limit" = Option<u64>, Query, description = "1 to 1000 (default 100)")), responses((status = 200, description = "Messages (`items`, `next_from`), analysed ones with `analysis`", body = serde_json::Value)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let id = conversation_id(&id)?;
    load_owned(&state, &caller, &id, Access::Read).await?;
    let from = query_u64(&q, "from")?.unwrap_or(0);
    // Sequence numbers are list indexes (signed 64-bit in Redis).
    if from > i64::MAX as u64 {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("`from` must be at most {}", i64::MAX),
        )
        .with_details(json!({"field": "from"})));
    }
    let limit = query_u64(&q, "limit")?.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "`limit` must be between 1 and 1000",
        )
        .with_details(json!({"field": "limit"})));
    }
    let items = state
        .memory
        .messages(&caller.tenant, &id, from, limit as usize)
        .await?;
    let next_from = (items.len() as u64 == limit)
        .then(|| items.last().and_then(|m| m.seq.checked_add(1)))
        .flatten();
    let items = crate::insights::attach_analyses(&state, &caller.tenant, &id, items).await?;
    Ok(Json(json!({ "items": items, "next_from": next_from })))
}
