//! Fork and replay. `POST /v1/conversations/{id}/fork` starts a new conversation
//! of the caller's whose memory is the original's up to a message (for "what if",
//! and for a supervisor taking a conversation over); `GET
//! /v1/conversations/{id}/turns/{turn_id}/steps` returns what a turn recorded —
//! each model step's tool calls and their results, and the answer — so the turn
//! can be studied or replayed against another model without running its tools.
//!
//! A fork copies the transcript (pages of [`PAGE`] messages, so a long one never
//! sits in memory whole) and the rolling summary when it covers only messages up
//! to the fork point; a later summary would leak what came after, so the fork
//! rebuilds its own as its window fills. A fork that fails half-way is deleted.

use crate::auth::Caller;
use crate::conversations::{
    Access, MAX_TITLE, check_conversation_quota, clean_title, conversation_json, load_owned,
};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{JsonBody, conversation_id};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cairn_core::{ConversationId, ConversationMeta, Message, Role};
use serde::Deserialize;
use serde_json::{Value, json};

/// Messages read or copied at a time.
const PAGE: usize = 500;

/// Body of `POST /v1/conversations/{id}/fork`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkConversation {
    /// The last message the fork keeps (an `id` from the transcript).
    pub message_id: String,
    /// The fork's title; default "Fork of …".
    #[serde(default)]
    pub title: Option<String>,
}

/// Finds the first message `pick` accepts, reading the transcript a page at a time.
async fn find_message(
    state: &AppState,
    meta: &ConversationMeta,
    pick: impl Fn(&Message) -> bool,
) -> ApiResult<Option<Message>> {
    let mut from = 0;
    loop {
        let page = state
            .memory
            .messages(&meta.tenant_id, &meta.id, from, PAGE)
            .await?;
        if let Some(m) = page.iter().find(|m| pick(m)) {
            return Ok(Some(m.clone()));
        }
        match page.last() {
            Some(last) if page.len() == PAGE => from = last.seq + 1,
            _ => return Ok(None),
        }
    }
}

/// `POST /v1/conversations/{id}/fork`.
#[utoipa::path(post, path = "/conversations/{id}/fork", tag = "conversations", summary = "Fork a conversation at a message: a new conversation with the memory up to it", params(("id" = String, Path, description = "Conversation id")), request_body = ForkConversation, responses((status = 201, description = "The new conversation, with `forked_from`", body = serde_json::Value)))]
pub async fn fork(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ForkConversation>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = conversation_id(&id)?;
    let source = load_owned(&state, &caller, &id, Access::Read).await?;
    let title = match clean_title(body.title)? {
        Some(t) => t,
        None => {
            let of: String = source
                .title
                .as_deref()
                .unwrap_or("a conversation")
                .chars()
                .take(MAX_TITLE - 8)
                .collect();
            format!("Fork of {of}")
        }
    };
    let at = find_message(&state, &source, |m| m.id.as_str() == body.message_id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MessageNotFound,
                "no message with this `message_id` in the conversation",
            )
            .with_details(json!({"field": "message_id"}))
        })?;
    // Sequence numbers count from 0: the fork copies `seq + 1` messages at most.
    let max = state.settings.max_fork_messages;
    if at.seq >= max {
        return Err(ApiError::new(
            ErrorCode::ForkTooLarge,
            format!("a fork copies at most {max} messages (agent.max_fork_messages); fork at an earlier message"),
        )
        .with_details(json!({"field": "message_id", "max": max})));
    }
    check_conversation_quota(&state, &caller).await?;
    let fork = ConversationMeta::new(
        ConversationId::generate(),
        caller.tenant.clone(),
        caller.user.clone(),
        Some(title),
    );
    state.memory.create_conversation(&fork).await?;
    if let Err(e) = copy(&state, &source, &fork, at.seq).await {
        if let Err(d) = state
            .memory
            .delete_conversation(&fork.tenant_id, &fork.id)
            .await
        {
            tracing::warn!(error = %d, conversation = %fork.id, "cannot delete a failed fork");
        }
        return Err(e);
    }
    let meta = state
        .memory
        .get_conversation(&fork.tenant_id, &fork.id)
        .await?
        .unwrap_or(fork);
    tracing::info!(source = %source.id, fork = %meta.id, "conversation forked");
    let mut out = conversation_json(&meta);
    out["forked_from"] = json!({"conversation_id": source.id, "message_id": at.id});
    Ok((StatusCode::CREATED, Json(out)))
}

/// Copies `source`'s messages up to `last_seq` (inclusive) and, when it covers no
/// later message, its summary.
async fn copy(
    state: &AppState,
    source: &ConversationMeta,
    fork: &ConversationMeta,
    last_seq: u64,
) -> ApiResult<()> {
    let (tenant, from_id) = (&source.tenant_id, &source.id);
    let mut from = 0;
    while from <= last_seq {
        let page = state.memory.messages(tenant, from_id, from, PAGE).await?;
        let Some(last) = page.last().map(|m| m.seq) else {
            break;
        };
        for m in page.iter().filter(|m| m.seq <= last_seq) {
            state.memory.append_message(tenant, &fork.id, m).await?;
        }
        from = last + 1;
    }
    let summary = state.memory.summary(tenant, from_id).await?;
    if !summary.text.is_empty() && summary.covers_until <= last_seq + 1 {
        state
            .memory
            .save_summary(tenant, &fork.id, &summary)
            .await?;
    }
    Ok(())
}

/// `GET /v1/conversations/{id}/turns/{turn_id}/steps`.
#[utoipa::path(get, path = "/conversations/{id}/turns/{turn_id}/steps", tag = "conversations", summary = "The steps a finished turn recorded (tool calls and results) and its answer", params(("id" = String, Path, description = "Conversation id"), ("turn_id" = String, Path, description = "Turn id")), responses((status = 200, description = "`turn_id`, `question`, `context` (the model's input before the turn: summary and message window), `steps` (each model step's tool calls, each call's result), `answer`, `citations` — what `cairn replay` feeds another model", body = serde_json::Value)))]
pub async fn steps(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, turn_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = conversation_id(&id)?;
    let meta = load_owned(&state, &caller, &id, Access::Read).await?;
    let answer = find_message(&state, &meta, |m| {
        m.role == Role::Assistant && m.turn_id.as_ref().is_some_and(|t| t.as_str() == turn_id)
    })
    .await?
    .ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "no finished turn with this id in the conversation (a running turn has no steps yet)",
        )
    })?;
    // The model's input before the turn's first step: the summary (when it
    // covers nothing later) and the window of messages before the question.
    let question = find_message(&state, &meta, |m| {
        m.role == Role::User && m.turn_id.as_ref().is_some_and(|t| t.as_str() == turn_id)
    })
    .await?;
    let context = match &question {
        Some(q) => {
            let window = state.runtime.deps().settings.window_messages as u64;
            let from = q.seq.saturating_sub(window);
            let before = state
                .memory
                .messages(&meta.tenant_id, &meta.id, from, (q.seq - from) as usize)
                .await?;
            let mut summary = state.memory.summary(&meta.tenant_id, &meta.id).await?;
            if summary.covers_until > from {
                summary = Default::default();
            }
            cairn_actors::memory::context_messages(&summary, &before)
        }
        None => Vec::new(),
    };
    Ok(Json(json!({
        "turn_id": turn_id,
        "message_id": answer.id,
        "question": question.map(|q| q.content),
        "context": context,
        "steps": answer.steps,
        "answer": answer.content,
        "citations": answer.citations,
        "created_at": answer.created_at,
    })))
}
