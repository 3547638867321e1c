//! Steering a running agent: `POST /v1/conversations/{id}/turns/{turn_id}/cancel`
//! and the double-texting policies of a message posted while a turn runs
//! (`if_busy`: `enqueue`, `reject`, `interrupt`, `rollback`).
//!
//! A cancel is recorded in the store and announced with a
//! `turn.cancel_requested` event; the turn, on whichever replica runs it (or
//! resumes it after a crash), aborts its model call, tells a running MCP tool
//! (`notifications/cancelled`), closes every open call with a synthetic
//! "cancelled" result and ends with `turn.cancelled`. A cancel that arrives
//! after the answer changes nothing: the turn's terminal event says what
//! happened.

use crate::auth::Caller;
use crate::conversations::{Access, load_owned};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::conversation_id;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_core::ports::CancelMode;
use cairn_core::{ConversationId, TurnEvent, TurnId};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// What to do with a message that arrives while the conversation has a turn
/// queued or running (`if_busy` on `POST …/messages`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BusyPolicy {
    /// Queue it behind the running turn (the default).
    #[default]
    Enqueue,
    /// Refuse it: 409 `conversation_busy`.
    Reject,
    /// Cancel the running and queued turns (their steps stay in the model's
    /// context, every call closed), then answer it.
    Interrupt,
    /// Like `interrupt`, but the cancelled turns (their messages and steps)
    /// leave the model's context; the transcript keeps them for audit.
    Rollback,
}

impl BusyPolicy {
    /// The cancel mode the policy applies to the turns ahead, if any.
    pub fn cancel_mode(self) -> Option<CancelMode> {
        match self {
            BusyPolicy::Interrupt => Some(CancelMode::Interrupt),
            BusyPolicy::Rollback => Some(CancelMode::Rollback),
            BusyPolicy::Enqueue | BusyPolicy::Reject => None,
        }
    }
}

/// Refuses a `reject` message while a turn is queued or running (checked
/// against the stored queue when the message arrives; `interrupt` and
/// `rollback` are applied by the conversation's actor as it queues the
/// message, where the order is exact).
pub(crate) async fn refuse_if_busy(
    state: &AppState,
    caller: &Caller,
    id: &ConversationId,
    policy: BusyPolicy,
) -> ApiResult<()> {
    if policy != BusyPolicy::Reject {
        return Ok(());
    }
    let ahead = state.memory.pending_turns(&caller.tenant, id).await?;
    if policy == BusyPolicy::Reject
        && let Some(head) = ahead.first()
    {
        return Err(ApiError::new(
            ErrorCode::ConversationBusy,
            "a turn of this conversation is still queued or running; wait for its answer, or send with if_busy = enqueue, interrupt or rollback",
        )
        .with_details(json!({"turn_id": head.turn_id, "queued": ahead.len()})));
    }
    Ok(())
}

/// Asks `turn` to stop (`mode`). Returns the id of the `turn.cancel_requested`
/// event; 409 `turn_not_running` when the turn is not queued or running.
pub(crate) async fn cancel_turn(
    state: &AppState,
    caller: &Caller,
    id: &ConversationId,
    turn: &TurnId,
    mode: CancelMode,
) -> ApiResult<u64> {
    let pending = state.memory.pending_turns(&caller.tenant, id).await?;
    if !pending.iter().any(|r| &r.turn_id == turn) {
        return Err(ApiError::new(
            ErrorCode::TurnNotRunning,
            "the turn is not queued or running: it has ended, or there is no such turn",
        )
        .with_details(json!({"turn_id": turn})));
    }
    let (memory, events) = (state.memory.as_ref(), state.events.as_ref());
    let by = caller.user.as_str();
    Ok(
        cairn_actors::cancel::request_cancel(memory, events, &caller.tenant, id, turn, mode, by)
            .await?,
    )
}

/// `POST /v1/conversations/{id}/turns/{turn_id}/cancel`.
#[utoipa::path(post, path = "/conversations/{id}/turns/{turn_id}/cancel", tag = "messages", summary = "Cancel a queued or running turn", params(("id" = String, Path, description = "Conversation id"), ("turn_id" = String, Path, description = "The turn (from the message's 202)"), ("wait" = Option<bool>, Query, description = "Wait for the turn's end (up to server.wait_timeout)")), responses((status = 202, description = "Cancelling: `turn_id`, `status`, `events_url` (the turn ends with `turn.cancelled`, or with its answer if that came first)", body = serde_json::Value), (status = 200, description = "With `?wait=true`: how the turn ended (`status`: cancelled, completed or failed)", body = serde_json::Value)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, turn)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let id = conversation_id(&id)?;
    let turn =
        TurnId::parse(&turn).map_err(|e| ApiError::invalid_field("turn_id", e.to_string()))?;
    load_owned(&state, &caller, &id, Access::Write).await?;
    let at = cancel_turn(&state, &caller, &id, &turn, CancelMode::Cancel).await?;
    let events_url = format!("/v1/conversations/{id}/events?after={}", at - 1);
    if q.get("wait").is_some_and(|v| v == "true" || v == "1") {
        let events = state
            .events
            .subscribe(caller.tenant.clone(), id.clone(), at)
            .filter(move |e| {
                futures::future::ready(match e {
                    Ok(e) => e.event.turn_id() == &turn && e.event.is_terminal(),
                    Err(_) => true,
                })
            });
        let Some(ended) = crate::messages::until_terminal(&state, events).await? else {
            return Err(ApiError::new(
                ErrorCode::TurnTimeout,
                "the turn did not end within server.wait_timeout; follow events_url",
            )
            .with_details(json!({"events_url": events_url})));
        };
        let last = ended.last().map(|e| &e.event);
        return Ok(Json(json!({
            "turn_id": last.map(|e| e.turn_id()),
            "status": outcome(last),
            "event": last,
        }))
        .into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"turn_id": turn, "status": "cancelling", "events_url": events_url})),
    )
        .into_response())
}

/// `completed`, `failed` or `cancelled` for a terminal event.
pub(crate) fn outcome(event: Option<&TurnEvent>) -> &'static str {
    match event {
        Some(TurnEvent::AnswerCompleted { .. }) => "completed",
        Some(TurnEvent::TurnFailed { .. }) => "failed",
        Some(TurnEvent::TurnCancelled { .. }) => "cancelled",
        _ => "unknown",
    }
}

/// The `error` of a cancelled turn in the bodies that report outcomes.
pub(crate) fn cancelled_error(mode: &str, reason: &str) -> Value {
    json!({"code": "cancelled", "mode": mode, "reason": reason})
}
