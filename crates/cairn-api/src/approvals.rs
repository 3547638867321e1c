//! Deciding approvals (`[approvals]`): `GET /v1/conversations/{id}/approvals`
//! lists the approvals of the conversation's running turn, and
//! `POST /v1/conversations/{id}/approvals/{approval_id}` approves, rejects or
//! edits one. Deciding needs the `approve` scope in the conversation's tenant
//! (a supervisor decides in a customer's conversation); the decision is an
//! `approval.decided` event, which the waiting turn picks up on whichever
//! replica runs it. The first decision of an approval counts; a later one is
//! refused with `approval_decided`.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{JsonBody, conversation_id};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cairn_actors::approval::APPROVER_SCOPE;
use cairn_core::approvals::{PendingApproval, Verdict};
use cairn_core::{ConversationId, TurnCheckpoint, TurnEvent};
use serde::Deserialize;
use serde_json::{Value, json};

/// Longest approver comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 2000;

/// Body of `POST /v1/conversations/{id}/approvals/{approval_id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    /// `approve`, `reject` or `edit` (run with `arguments` instead).
    pub decision: String,
    /// Why (shown to the model on a rejection, and kept in the record).
    #[serde(default)]
    pub comment: Option<String>,
    /// The arguments to run with (`edit` only): a JSON object.
    #[serde(default)]
    pub arguments: Option<Value>,
}

fn require_approver(caller: &Caller) -> ApiResult<()> {
    if caller.has_scope(APPROVER_SCOPE) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Forbidden,
        format!("deciding approvals needs the `{APPROVER_SCOPE}` scope"),
    ))
}

/// The running turn's checkpoint of a conversation of the caller's tenant.
async fn running(
    state: &AppState,
    caller: &Caller,
    id: &ConversationId,
) -> ApiResult<Option<TurnCheckpoint>> {
    state
        .memory
        .get_conversation(&caller.tenant, id)
        .await?
        .ok_or_else(ApiError::conversation_not_found)?;
    Ok(state.memory.load_checkpoint(&caller.tenant, id).await?)
}

fn approval_json(a: &PendingApproval, turn: &cairn_core::TurnId) -> Value {
    json!({
        "approval_id": a.id,
        "turn_id": turn,
        "step": a.step,
        "tool": a.tool,
        "arguments": a.arguments,
        "reason": a.reason,
        "requested_at": a.requested_at,
        "expires_at": a.expires_at,
        "status": if a.decision.is_some() { "decided" } else { "pending" },
        "decision": a.decision,
    })
}

/// Records a decision; shared by the REST route and the MCP tool.
pub async fn decide(
    state: &AppState,
    caller: &Caller,
    id: &ConversationId,
    approval_id: &str,
    body: Decide,
) -> ApiResult<Value> {
    require_approver(caller)?;
    let verdict = match body.decision.as_str() {
        "approve" => Verdict::Approve,
        "reject" => Verdict::Reject,
        "edit" => Verdict::Edit,
        _ => {
            return Err(ApiError::invalid_field(
                "decision",
                "`decision` must be approve, reject or edit",
            ));
        }
    };
    if body
        .comment
        .as_deref()
        .is_some_and(|c| c.chars().take(MAX_COMMENT_CHARS + 1).count() > MAX_COMMENT_CHARS)
    {
        return Err(ApiError::invalid_field(
            "comment",
            format!("`comment` is longer than {MAX_COMMENT_CHARS} characters"),
        ));
    }
    match (&verdict, &body.arguments) {
        (Verdict::Edit, Some(Value::Object(_))) => {}
        (Verdict::Edit, _) => {
            return Err(ApiError::invalid_field(
                "arguments",
                "`edit` needs `arguments`: the JSON object to run the call with",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid_field(
                "arguments",
                "`arguments` only go with the `edit` decision",
            ));
        }
        _ => {}
    }
    let not_found = || {
        ApiError::new(
            ErrorCode::ApprovalNotFound,
            "no approval with this id waits in this conversation",
        )
    };
    let cp = running(state, caller, id).await?.ok_or_else(not_found)?;
    let a = cp
        .approvals
        .iter()
        .find(|a| a.id == approval_id)
        .ok_or_else(not_found)?;
    let decided = || {
        ApiError::new(
            ErrorCode::ApprovalDecided,
            "this approval was decided already",
        )
        .with_details(json!({"approval_id": approval_id}))
    };
    if a.decision.is_some() {
        return Err(decided());
    }
    // A decision the turn has not taken in yet.
    let mut after = a.after_event;
    loop {
        let page = state
            .events
            .read_after(&caller.tenant, id, after, 500)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        if page.iter().any(|e| {
            matches!(&e.event, TurnEvent::ApprovalDecided { approval_id: x, .. } if x == approval_id)
        }) {
            return Err(decided());
        }
    }
    let event = TurnEvent::ApprovalDecided {
        turn_id: cp.request.turn_id.clone(),
        approval_id: a.id.clone(),
        decision: verdict,
        by: caller.user.to_string(),
        comment: body.comment,
        arguments: body.arguments,
    };
    let at = state.events.append(&caller.tenant, id, &event).await?;
    tracing::info!(conversation = %id, approval = %a.id, tool = %a.tool, "approval decided");
    Ok(json!({
        "approval_id": a.id,
        "turn_id": cp.request.turn_id,
        "decision": verdict,
        "by": caller.user,
        "event_id": at,
    }))
}

/// `POST /v1/conversations/{id}/approvals/{approval_id}`.
#[utoipa::path(post, path = "/conversations/{id}/approvals/{approval_id}", tag = "approvals", summary = "Approve, reject or edit a tool call waiting for approval (scope `approve`)", request_body = Decide, params(("id" = String, Path, description = "Conversation id"), ("approval_id" = String, Path, description = "From `approval.requested`")), responses((status = 202, description = "Recorded: `approval_id`, `decision`, `by`, `event_id`; the turn goes on", body = serde_json::Value)))]
pub async fn post(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, approval)): Path<(String, String)>,
    JsonBody(body): JsonBody<Decide>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = conversation_id(&id)?;
    let out = decide(&state, &caller, &id, &approval, body).await?;
    Ok((StatusCode::ACCEPTED, Json(out)))
}

/// `GET /v1/conversations/{id}/approvals`.
#[utoipa::path(get, path = "/conversations/{id}/approvals", tag = "approvals", summary = "The approvals of the conversation's running turn (scope `approve`, or the conversation's owner)", params(("id" = String, Path, description = "Conversation id")), responses((status = 200, description = "`items`: approval_id, turn_id, tool, arguments, reason, expires_at, status (pending / decided), decision", body = serde_json::Value)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = conversation_id(&id)?;
    if !caller.has_scope(APPROVER_SCOPE) {
        crate::conversations::load_owned(&state, &caller, &id, crate::conversations::Access::Read)
            .await?;
    }
    let items: Vec<Value> = running(&state, &caller, &id)
        .await?
        .map(|cp| {
            cp.approvals
                .iter()
                .map(|a| approval_json(a, &cp.request.turn_id))
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(json!({ "items": items })))
}
