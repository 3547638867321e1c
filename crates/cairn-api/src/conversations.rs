//! `/v1/conversations`: create, list (the caller's own, paginated), get, delete.

use crate::auth::{ADMIN_SCOPE, Caller};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{JsonBody, conversation_id, query_u64};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use cairn_core::{ConversationId, ConversationMeta};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Default and largest page size.
const DEFAULT_LIMIT: u64 = 20;
const MAX_LIMIT: u64 = 100;
/// Longest title.
pub const MAX_TITLE: usize = 200;

/// Body of `POST /v1/conversations` (every field optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// A title.
    #[serde(default)]
    pub title: Option<String>,
    /// A client-chosen id (letters, digits, `-_.@`); generated when absent.
    #[serde(default)]
    pub id: Option<String>,
}

/// The JSON form of a conversation.
pub fn conversation_json(m: &ConversationMeta) -> Value {
    json!({
        "id": m.id,
        "title": m.title,
        "owner": m.owner,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "message_count": m.message_count,
        "events_url": format!("/v1/conversations/{}/events", m.id),
    })
}

/// What a request does to a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads it (metadata, transcript, events): its owner, or an `admin` of the
    /// same tenant.
    Read,
    /// Changes it (posts a message, deletes it): its owner only.
    Write,
}

/// Loads a conversation the caller may use for `access`: same tenant (always),
/// its own, or any of the tenant's for reading with the admin scope. Anything
/// else is "not found".
pub async fn load_owned(
    state: &AppState,
    caller: &Caller,
    id: &ConversationId,
    access: Access,
) -> ApiResult<ConversationMeta> {
    let meta = state
        .memory
        .get_conversation(&caller.tenant, id)
        .await?
        .ok_or_else(ApiError::conversation_not_found)?;
    let admin_read = access == Access::Read && caller.has_scope(ADMIN_SCOPE);
    if meta.owner != caller.user && !admin_read {
        return Err(ApiError::conversation_not_found());
    }
    Ok(meta)
}

/// A title as given: trimmed, `None` when blank, refused past
/// [`MAX_TITLE`] characters.
pub fn clean_title(title: Option<String>) -> ApiResult<Option<String>> {
    let title = title.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    if title
        .as_ref()
        .is_some_and(|t| t.chars().count() > MAX_TITLE)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("`title` is longer than {MAX_TITLE} characters"),
        )
        .with_details(json!({"field": "title"})));
    }
    Ok(title)
}

/// Refuses a new conversation past `agent.max_conversations_per_user` (429).
pub async fn check_conversation_quota(state: &AppState, caller: &Caller) -> ApiResult<()> {
    let max = state.settings.max_conversations_per_user;
    let held = state
        .memory
        .count_conversations(&caller.tenant, &caller.user)
        .await?;
    if held >= max {
        return Err(ApiError::new(
            ErrorCode::TooManyConversations,
            format!("this user holds {held} conversations, the most allowed; delete some first"),
        )
        .with_details(json!({"limit": max})));
    }
    Ok(())
}

/// `POST /v1/conversations` → 201.
#[utoipa::path(post, path = "/conversations", tag = "conversations", summary = "Create a conversation", request_body = CreateConversation, responses((status = 201, description = "The conversation", body = serde_json::Value)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateConversation>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let title = clean_title(body.title)?;
    let id = match body.id {
        Some(raw) => ConversationId::parse(raw).map_err(|e| {
            ApiError::new(ErrorCode::InvalidField, e.to_string())
                .with_details(json!({"field": "id"}))
        })?,
        None => ConversationId::generate(),
    };
    check_conversation_quota(&state, &caller).await?;
    let meta = ConversationMeta::new(id, caller.tenant.clone(), caller.user.clone(), title);
    state.memory.create_conversation(&meta).await?;
    Ok((StatusCode::CREATED, Json(conversation_json(&meta))))
}

/// `GET /v1/conversations?limit=&cursor=`.
#[utoipa::path(get, path = "/conversations", tag = "conversations", summary = "List the caller's conversations", params(("limit" = Option<u64>, Query, description = "1 to 100 (default 20)"), ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")), responses((status = 200, description = "A page of conversations (`items`, `next_cursor`)", body = serde_json::Value)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let limit = query_u64(&q, "limit")?.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(
            ApiError::new(ErrorCode::InvalidField, "`limit` must be between 1 and 100")
                .with_details(json!({"field": "limit"})),
        );
    }
    let cursor = match q.get("cursor").filter(|c| !c.is_empty()) {
        Some(c) => Some(ConversationId::parse(c.as_str()).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidField,
                "`cursor` is not a cursor from this API",
            )
            .with_details(json!({"field": "cursor"}))
        })?),
        None => None,
    };
    let items = state
        .memory
        .list_conversations(
            &caller.tenant,
            &caller.user,
            cursor.as_ref(),
            limit as usize,
        )
        .await?;
    let next_cursor = (items.len() as u64 == limit)
        .then(|| items.last().map(|m| m.id.clone()))
        .flatten();
    Ok(Json(json!({
        "items": items.iter().map(conversation_json).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

/// `GET /v1/conversations/{id}`.
#[utoipa::path(get, path = "/conversations/{id}", tag = "conversations", summary = "Read a conversation", params(("id" = String, Path, description = "Conversation id")), responses((status = 200, description = "The conversation", body = serde_json::Value)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let meta = load_owned(&state, &caller, &conversation_id(&id)?, Access::Read).await?;
    Ok(Json(conversation_json(&meta)))
}

/// `DELETE /v1/conversations/{id}` → 204.
#[utoipa::path(delete, path = "/conversations/{id}", tag = "conversations", summary = "Delete a conversation and everything in it", params(("id" = String, Path, description = "Conversation id")), responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = conversation_id(&id)?;
    load_owned(&state, &caller, &id, Access::Write).await?;
    if !state
        .memory
        .delete_conversation(&caller.tenant, &id)
        .await?
    {
        return Err(ApiError::conversation_not_found());
    }
    crate::streams::announce_deleted(&state, &caller.tenant, &id);
    if let Some(i) = &state.insights {
        i.forget(&caller.tenant, &id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
