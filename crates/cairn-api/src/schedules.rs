//! Scheduled turns: `POST /v1/schedules` (a cron expression in a time zone, or
//! one `at` time; into a conversation of the caller's or a new conversation per
//! run; a message; an optional webhook), `GET /v1/schedules`,
//! `POST /v1/schedules/{id}/pause` and `/resume`, `DELETE /v1/schedules/{id}`,
//! and the scheduler that fires them.
//!
//! Schedules live in the record store (collection `schedules`, key
//! `tenant/id`), shared by the replicas. Every replica that runs actors looks
//! for due schedules each `schedules.tick`; a run's conversation, message and
//! turn ids are derived from the schedule and its fire time, so when several
//! replicas (or a restart) fire the same time, the conversation queues it once.
//! A fire time missed while no replica ran is run once on the next start if it
//! is within `schedules.catch_up_window` (missed times collapse into the
//! latest); older ones are skipped. Each run is announced in its conversation
//! by a `schedule.fired` event.
//!
//! A schedule moves on by compare-and-set from the value that was read
//! (`RecordStore::replace_record`): a pause, resume or delete made while a
//! replica fired it is never overwritten, and two replicas firing the same
//! time move it on once.

use crate::auth::Caller;
use crate::conversations::{Access, load_owned};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{JsonBody, conversation_id};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cairn_core::ports::RecordChange;
use cairn_core::schedules::{Schedule, parse_cron, parse_timezone};
use cairn_core::{ConversationId, ConversationMeta, MessageId, TurnEvent, TurnId};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// The record collection of schedules.
pub const COLLECTION: &str = "schedules";
/// Schedules read per page by the scheduler and the list.
const PAGE: usize = 500;

/// Body of `POST /v1/schedules`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// A cron expression: 5 fields (minute hour day month weekday), or 6 with
    /// seconds first. Exactly one of `cron` and `at`.
    #[serde(default)]
    pub cron: Option<String>,
    /// One time (RFC 3339).
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// The IANA time zone of `cron` (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// A conversation of the caller's to post into; absent: a new conversation
    /// per run.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// The message each run posts.
    pub content: String,
    /// Where each run's outcome is posted (as a message's `webhook`).
    #[serde(default)]
    pub webhook: Option<String>,
}

fn key(tenant: &cairn_core::TenantId, id: &str) -> String {
    format!("{tenant}/{id}")
}

fn schedule_json(s: &Schedule) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["status"] = json!(match (s.paused, s.next_fire) {
        (true, _) => "paused",
        (false, Some(_)) => "active",
        (false, None) => "done",
    });
    v
}

async fn owned(state: &AppState, caller: &Caller) -> ApiResult<Vec<Schedule>> {
    let prefix = format!("{}/", caller.tenant);
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = state
            .records
            .scan_records(COLLECTION, &prefix, after.as_deref(), PAGE)
            .await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        let full = page.len() == PAGE;
        out.extend(
            page.into_iter()
                .filter_map(|(_, v)| serde_json::from_str::<Schedule>(&v).ok())
                .filter(|s| s.owner == caller.user),
        );
        if !full {
            break;
        }
    }
    Ok(out)
}

/// The caller's schedule `id` and its stored text (for [`replace`]).
async fn load(state: &AppState, caller: &Caller, id: &str) -> ApiResult<(Schedule, String)> {
    let not_found = || ApiError::new(ErrorCode::ScheduleNotFound, "no such schedule");
    let raw = state
        .records
        .get_record(COLLECTION, &key(&caller.tenant, id))
        .await?
        .ok_or_else(not_found)?;
    let s: Schedule = serde_json::from_str(&raw).map_err(|_| not_found())?;
    if s.owner != caller.user {
        return Err(not_found());
    }
    Ok((s, raw))
}

async fn save(state: &AppState, s: &Schedule) -> ApiResult<()> {
    let v = serde_json::to_string(s).unwrap_or_default();
    state
        .records
        .write_records(vec![RecordChange::put(
            COLLECTION,
            key(&s.tenant_id, &s.id),
            v,
        )])
        .await?;
    Ok(())
}

/// Stores `s` if the record is still `read` (compare-and-set); `false` when
/// another writer (a pause, the scheduler on any replica, a delete) got there
/// first.
async fn replace(state: &AppState, s: &Schedule, read: &str) -> ApiResult<bool> {
    let v = serde_json::to_string(s).unwrap_or_default();
    let change = RecordChange::put(COLLECTION, key(&s.tenant_id, &s.id), v);
    Ok(state.records.replace_record(change, Some(read)).await?)
}

/// `POST /v1/schedules`.
#[utoipa::path(post, path = "/schedules", tag = "schedules", summary = "Schedule a message (cron in a time zone, or one time)", request_body = CreateSchedule, responses((status = 201, description = "The schedule, with `next_fire` and `status`", body = serde_json::Value)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateSchedule>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tz_name = body.timezone.unwrap_or_else(|| "UTC".into());
    parse_timezone(&tz_name).map_err(|e| ApiError::invalid_field("timezone", e))?;
    match (&body.cron, body.at) {
        (Some(c), None) => {
            parse_cron(c).map_err(|e| ApiError::invalid_field("cron", e))?;
        }
        (None, Some(at)) if at <= Utc::now() => {
            return Err(ApiError::invalid_field("at", "`at` is in the past"));
        }
        (None, Some(_)) => {}
        _ => {
            return Err(ApiError::invalid_field(
                "cron",
                "give exactly one of `cron` and `at`",
            ));
        }
    }
    let max = state.settings.max_message_chars;
    if body.content.trim().is_empty() || body.content.chars().take(max + 1).count() > max {
        return Err(ApiError::invalid_field(
            "content",
            format!("`content` must hold 1 to {max} characters"),
        ));
    }
    if let Some(url) = &body.webhook {
        state
            .settings
            .turn_webhooks
            .check(caller.tenant.as_str(), url)
            .map_err(|why| ApiError::invalid_field("webhook", why))?;
    }
    let conversation = match &body.conversation_id {
        Some(raw) => {
            let id = conversation_id(raw)?;
            load_owned(&state, &caller, &id, Access::Write).await?;
            Some(id)
        }
        None => None,
    };
    let limit = state.settings.schedules.max_per_user as usize;
    if owned(&state, &caller).await?.len() >= limit {
        return Err(ApiError::new(
            ErrorCode::TooManySchedules,
            format!("this user holds {limit} schedules, the most allowed (schedules.max_per_user)"),
        )
        .with_details(json!({"limit": limit})));
    }
    let mut s = Schedule {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: caller.tenant.clone(),
        owner: caller.user.clone(),
        cron: body.cron,
        at: body.at,
        timezone: tz_name,
        conversation_id: conversation,
        content: body.content,
        webhook: body.webhook,
        paused: false,
        created_at: Utc::now(),
        next_fire: None,
        last_fire: None,
        runs: 0,
    };
    s.next_fire = s.next_after(Utc::now());
    if s.next_fire.is_none() {
        return Err(ApiError::invalid_field("cron", "the schedule never fires"));
    }
    save(&state, &s).await?;
    tracing::info!(schedule = %s.id, "schedule created");
    Ok((StatusCode::CREATED, Json(schedule_json(&s))))
}

/// `GET /v1/schedules`.
#[utoipa::path(get, path = "/schedules", tag = "schedules", summary = "The caller's schedules", responses((status = 200, description = "`items`", body = serde_json::Value)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let items: Vec<Value> = owned(&state, &caller)
        .await?
        .iter()
        .map(schedule_json)
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// Attempts at a pause or resume before giving up on a schedule that keeps
/// moving under it (it moves at most once per fire).
const SET_PAUSED_ATTEMPTS: usize = 8;

async fn set_paused(state: &AppState, caller: &Caller, id: &str, paused: bool) -> ApiResult<Value> {
    for _ in 0..SET_PAUSED_ATTEMPTS {
        let (mut s, read) = load(state, caller, id).await?;
        if s.paused == paused {
            return Ok(schedule_json(&s));
        }
        s.paused = paused;
        if !paused {
            // Times passed while paused are not caught up.
            s.next_fire = s.next_after(Utc::now());
        }
        if replace(state, &s, &read).await? {
            return Ok(schedule_json(&s));
        }
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        "the schedule kept changing; try again",
    ))
}

/// `POST /v1/schedules/{id}/pause`.
#[utoipa::path(post, path = "/schedules/{id}/pause", tag = "schedules", summary = "Pause a schedule", params(("id" = String, Path, description = "Schedule id")), responses((status = 200, description = "The schedule", body = serde_json::Value)))]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(set_paused(&state, &caller, &id, true).await?))
}

/// `POST /v1/schedules/{id}/resume`.
#[utoipa::path(post, path = "/schedules/{id}/resume", tag = "schedules", summary = "Resume a paused schedule (from its next fire time after now)", params(("id" = String, Path, description = "Schedule id")), responses((status = 200, description = "The schedule", body = serde_json::Value)))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(set_paused(&state, &caller, &id, false).await?))
}

/// `DELETE /v1/schedules/{id}`.
#[utoipa::path(delete, path = "/schedules/{id}", tag = "schedules", summary = "Delete a schedule", params(("id" = String, Path, description = "Schedule id")), responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (s, _) = load(&state, &caller, &id).await?;
    state
        .records
        .write_records(vec![RecordChange::delete(
            COLLECTION,
            key(&s.tenant_id, &s.id),
        )])
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fires due schedules every `schedules.tick` until the server closes.
pub async fn run_scheduler(state: AppState) {
    let tick = state.settings.schedules.tick.max(Duration::from_millis(50));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let closed = state.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = &mut closed => return,
        }
        if let Err(e) = fire_due(&state).await {
            tracing::warn!(error = %e.message, "scheduler pass failed; next tick retries");
        }
    }
}

async fn fire_due(state: &AppState) -> ApiResult<()> {
    let mut after: Option<String> = None;
    loop {
        let page = state
            .records
            .scan_records(COLLECTION, "", after.as_deref(), PAGE)
            .await?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        after = Some(last.clone());
        let full = page.len() == PAGE;
        let now = Utc::now();
        for (_, raw) in page {
            let Ok(s) = serde_json::from_str::<Schedule>(&raw) else {
                continue;
            };
            if s.paused {
                continue;
            }
            let Some(fire) = s.due(now) else { continue };
            let window = chrono::Duration::from_std(state.settings.schedules.catch_up_window)
                .unwrap_or_default();
            let ran = if now - fire > window {
                tracing::warn!(schedule = %s.id, fire_time = %fire, "fire time missed beyond schedules.catch_up_window; skipped");
                false
            } else if let Err(e) = fire_one(state, &s, fire).await {
                tracing::warn!(schedule = %s.id, error = %e.message, "schedule not fired yet; retrying");
                continue;
            } else {
                true
            };
            // Move the schedule on from the value this pass read, or not at
            // all: a pause, resume or delete made meanwhile (on any replica)
            // wins, and a fire that ran stays idempotent when the next pass
            // finds the same time still due.
            let mut next = s.clone();
            if ran {
                next.runs += 1;
                next.last_fire = Some(fire);
            }
            next.next_fire = next.next_after(fire.max(now));
            if !replace(state, &next, &raw).await? {
                tracing::debug!(schedule = %s.id, "schedule changed while it fired; left as stored");
            }
        }
        if !full {
            return Ok(());
        }
    }
}

/// Posts the schedule's message for `fire` (once, whoever fires it).
async fn fire_one(state: &AppState, s: &Schedule, fire: DateTime<Utc>) -> ApiResult<()> {
    let conversation = match &s.conversation_id {
        Some(c) => c.clone(),
        None => {
            let id = ConversationId::parse(s.run_id(fire, "conversation"))
                .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
            if state
                .memory
                .get_conversation(&s.tenant_id, &id)
                .await?
                .is_none()
            {
                let title: String = format!("Scheduled: {}", s.content)
                    .chars()
                    .take(crate::conversations::MAX_TITLE)
                    .collect();
                let meta = ConversationMeta::new(
                    id.clone(),
                    s.tenant_id.clone(),
                    s.owner.clone(),
                    Some(title),
                );
                match state.memory.create_conversation(&meta).await {
                    Ok(()) | Err(cairn_core::ports::StoreError::AlreadyExists) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            id
        }
    };
    let mut request = crate::messages::new_request(
        state,
        &s.tenant_id,
        &conversation,
        &s.owner,
        s.content.clone(),
    );
    let bad = |e: cairn_core::ids::InvalidId| ApiError::new(ErrorCode::Internal, e.to_string());
    request.message_id = MessageId::parse(s.run_id(fire, "message")).map_err(bad)?;
    request.turn_id = TurnId::parse(s.run_id(fire, "turn")).map_err(bad)?;
    request.webhook = s.webhook.clone();
    if state
        .memory
        .message_accepted(&s.tenant_id, &conversation, &request.message_id)
        .await?
    {
        return Ok(());
    }
    let event = TurnEvent::ScheduleFired {
        turn_id: request.turn_id.clone(),
        schedule_id: s.id.clone(),
        fire_time: fire,
    };
    state
        .events
        .append(&s.tenant_id, &conversation, &event)
        .await?;
    state
        .runtime
        .submit(&request, None)
        .await
        .map_err(|e| ApiError::unavailable("the event bus", &e))?;
    tracing::info!(schedule = %s.id, conversation = %conversation, fire_time = %fire, "schedule fired");
    Ok(())
}
