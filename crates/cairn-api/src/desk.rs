//! The support desk over HTTP: tickets, answer feedback and analytics.
//!
//! - `POST /v1/tickets` → 202 `{"event_id", "ticket_id", "status": "pending"}`
//!   once the submission is durable on `tickets`; idempotent on `ticket_id`
//!   and on `Idempotency-Key` (the same submission again gets the same answer;
//!   a different one under the same id is 409 `conflict`).
//! - `GET /v1/tickets` (filters `risk_min`, `category`, `sentiment`, `status`
//!   — a workflow status or `pending|enriched|failed` —, `channel`,
//!   `customer_id`, `assignee`, `tag`, `q`, `from`, `to`; `sort` =
//!   `created_at|updated_at|risk`, `order` = `desc|asc`; `limit`, `cursor`),
//!   `GET /v1/tickets/{id}`, `PATCH /v1/tickets/{id}` (`status`, `assignee`,
//!   `tags`, `priority`; a new `subject` or `body` is a new revision, enriched
//!   again).
//! - `GET /v1/categories`, `GET /v1/sentiments`.
//! - `POST /v1/conversations/{id}/feedback` (one per user per answer; a new one
//!   replaces it), `GET /v1/feedback/summary`.
//! - `GET /v1/analytics/{overview,intents,satisfaction,tickets}?from=&to=`:
//!   read from the counters (`cairn_desk::analytics`), never by scanning.
//!
//! Tickets, analytics and the feedback summary need `auth.desk_scope` (or
//! `operator`): they are the whole tenant's support data.

use crate::auth::{Caller, OPERATOR_SCOPE};
use crate::conversations::{Access, load_owned};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{JsonBody, conversation_id, first_param, query_pairs};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use cairn_core::desk::*;
use cairn_core::desk_config::{AnalyticsConfig, TicketsConfig};
use cairn_core::ports::{CounterStore, RecordChange, RecordStore, TicketStore, TicketUpdate};
use cairn_core::{Role, TenantId};
use cairn_desk::analytics::{self, Range, Totals};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Namespace of ticket ids derived from an `Idempotency-Key`.
const TICKET_NS: uuid::Uuid = uuid::Uuid::from_u128(0x7a1c_52e9_4b0d_4c3f_a8e1_09d4_6b2f_7c51);
/// Record collection of feedback (`tenant/conversation/message/user`).
pub const FEEDBACK: &str = "feedback";
/// Transcript messages looked at to find the answer feedback is about.
const MAX_TRANSCRIPT_SCAN: usize = 10_000;
/// Longest `q` filter, in characters.
const MAX_QUERY_CHARS: usize = 200;
/// Longest feedback comment, in characters.
const MAX_COMMENT_CHARS: usize = 4_000;

/// A category: a label of the intent taxonomy and what it covers.
pub type Categories = Arc<dyn Fn(&TenantId) -> Vec<(String, String)> + Send + Sync>;

/// What the desk routes need.
pub struct DeskApi {
    /// The tickets (`None`: `tickets.enabled = false`).
    pub tickets: Option<Arc<dyn TicketStore>>,
    /// Analytics counters (`None`: `analytics.enabled = false`).
    pub counters: Option<Arc<dyn CounterStore>>,
    /// Feedback records.
    pub records: Arc<dyn RecordStore>,
    /// The tenant's ticket categories.
    pub categories: Categories,
    /// Finds the intent of an answered question (the insights record), for
    /// feedback by intent.
    pub intent_of: Option<Arc<crate::insights::InsightsApi>>,
    /// `[tickets]`.
    pub config: TicketsConfig,
    /// `[analytics]`.
    pub analytics: AnalyticsConfig,
}

fn desk(state: &AppState) -> ApiResult<&Arc<DeskApi>> {
    state.desk.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::TicketsDisabled,
            "the support desk is off on this server",
        )
    })
}

/// Tickets and analytics hold the whole tenant's support data (customers'
/// messages, names, PII findings): they need `auth.desk_scope` (or
/// `operator`), not just any token of the tenant.
fn require_desk_scope(state: &AppState, caller: &Caller) -> ApiResult<()> {
    match &state.settings.desk_scope {
        Some(s) if !caller.has_scope(s) && !caller.has_scope(OPERATOR_SCOPE) => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("tickets and analytics need the `{s}` scope"),
        )),
        _ => Ok(()),
    }
}

fn tickets<'a>(
    state: &'a AppState,
    caller: &Caller,
) -> ApiResult<(&'a Arc<DeskApi>, &'a Arc<dyn TicketStore>)> {
    let d = desk(state)?;
    require_desk_scope(state, caller)?;
    let t = d.tickets.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::TicketsDisabled,
            "tickets are off on this server (tickets.enabled = false)",
        )
    })?;
    Ok((d, t))
}

fn counters(state: &AppState) -> ApiResult<(&Arc<DeskApi>, &Arc<dyn CounterStore>)> {
    let d = desk(state)?;
    let c = d.counters.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::AnalyticsDisabled,
            "analytics are off on this server (analytics.enabled = false)",
        )
    })?;
    Ok((d, c))
}

fn ticket_not_found() -> ApiError {
    ApiError::new(ErrorCode::TicketNotFound, "no such ticket")
}

/// An id from outside: 1 to 128 characters of A-Z a-z 0-9 _ . : @ -.
fn id_field(field: &str, v: &str) -> ApiResult<()> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            format!("`{field}` must be 1 to 128 characters of A-Z a-z 0-9 _ . : @ -"),
        ))
    }
}

fn bounded_text(field: &str, v: &str, max: usize, required: bool) -> ApiResult<()> {
    if required && v.trim().is_empty() {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` must not be empty"),
        ));
    }
    if v.chars().take(max + 1).count() > max {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` is longer than {max} characters"),
        )
        .with_details(json!({"field": field, "max": max})));
    }
    Ok(())
}

/// Body of `POST /v1/tickets`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostTicket {
    /// Subject line.
    pub subject: String,
    /// The customer's text.
    pub body: String,
    /// One of `tickets.channels`.
    pub channel: String,
    /// `low`, `normal` (default), `high`, `urgent`.
    #[serde(default)]
    #[schema(value_type = String)]
    pub priority: Priority,
    /// The customer.
    pub customer_id: String,
    /// Chosen by the caller (idempotency); generated otherwise.
    #[serde(default)]
    pub ticket_id: Option<String>,
    /// Must be the token's tenant when given.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

fn check_channel(cfg: &TicketsConfig, channel: &str) -> ApiResult<()> {
    if cfg.channels.iter().any(|c| c == channel) {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            "channel",
            format!("`channel` must be one of: {}", cfg.channels.join(", ")),
        )
        .with_details(json!({"field": "channel", "allowed": cfg.channels})))
    }
}

/// `POST /v1/tickets` → 202.
#[utoipa::path(post, path = "/tickets", tag = "tickets", summary = "Submit a ticket (enriched asynchronously)", request_body = PostTicket, responses((status = 202, description = "Accepted: the ticket id", body = serde_json::Value)))]
pub async fn post_ticket(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PostTicket>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (d, store) = tickets(&state, &caller)?;
    if body
        .tenant_id
        .as_ref()
        .is_some_and(|t| t != caller.tenant.as_str())
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "`tenant_id` differs from the token's tenant; a token posts for its own tenant only",
        )
        .with_details(json!({"field": "tenant_id"})));
    }
    bounded_text("subject", &body.subject, d.config.max_subject_chars, true)?;
    bounded_text("body", &body.body, d.config.max_body_chars, true)?;
    check_channel(&d.config, &body.channel)?;
    id_field("customer_id", &body.customer_id)?;
    let ticket_id = match (&body.ticket_id, crate::messages::idempotency_key(&headers)?) {
        (Some(id), _) => {
            id_field("ticket_id", id)?;
            id.clone()
        }
        (None, Some(k)) => {
            let name = format!("{}/{k}", caller.tenant);
            format!("tkt-{}", uuid::Uuid::new_v5(&TICKET_NS, name.as_bytes()))
        }
        (None, None) => format!("tkt-{}", uuid::Uuid::now_v7()),
    };
    // Under `redact_store`, personal data never reaches the bus or the store.
    let (subject, text) = match &state.insights {
        Some(i) => (
            i.for_store(&caller.tenant, body.subject).0,
            i.for_store(&caller.tenant, body.body).0,
        ),
        None => (body.subject, body.body),
    };
    let sub = TicketSubmission {
        ticket_id: ticket_id.clone(),
        tenant_id: caller.tenant.clone(),
        subject,
        body: text,
        channel: body.channel,
        priority: body.priority,
        customer_id: body.customer_id,
        revision: 1,
        submitted_at: Utc::now(),
    };
    if let Some(existing) = store.get_ticket(&caller.tenant, &ticket_id).await? {
        let same = existing.subject == sub.subject
            && existing.customer_id == sub.customer_id
            && existing.channel == sub.channel
            && (existing.body == sub.body || existing.revision > 1);
        if !same {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "a different ticket already has this ticket_id",
            )
            .with_details(json!({"field": "ticket_id", "ticket_id": ticket_id})));
        }
        // The same submission again: the same answer. A ticket still pending
        // is published again (its event id is the same; consumers drop a
        // duplicate), in case the first publication never happened.
        let mut resub = existing.submission();
        resub.revision = 1;
        resub.submitted_at = existing.created_at;
        let event_id = if existing.enrichment == EnrichmentState::Pending && existing.revision == 1
        {
            publish(&state, &resub).await?
        } else {
            cairn_core::envelope::derived_event_id(&format!(
                "ticket.submitted/{}/{}/1",
                caller.tenant, ticket_id
            ))
        };
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "event_id": event_id,
                "ticket_id": ticket_id,
                "status": existing.enrichment.as_str(),
            })),
        ));
    }
    let event_id = publish(&state, &sub).await?;
    // Durable on the bus: the ticket enricher stores it in any case; storing
    // it here too lets a GET right after the 202 find it.
    if let Err(e) = store.create_ticket(&Ticket::from_submission(&sub)).await {
        tracing::warn!(ticket = %ticket_id, error = %e, "ticket accepted on the bus but not stored yet; the enricher stores it");
    }
    tracing::info!(ticket = %ticket_id, "ticket accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"event_id": event_id, "ticket_id": ticket_id, "status": "pending"})),
    ))
}

async fn publish(state: &AppState, sub: &TicketSubmission) -> ApiResult<String> {
    state
        .runtime
        .submit_ticket(sub, Some(&crate::request_id::traceparent()))
        .await
        .map_err(|e| ApiError::unavailable("the event bus", &e))
}

fn time_param(q: &[(String, String)], name: &str) -> ApiResult<Option<DateTime<Utc>>> {
    first_param(q, name)
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::invalid_field(name, format!("`{name}` must be an RFC 3339 time"))
                })
        })
        .transpose()
}

fn label_param(q: &[(String, String)], name: &str) -> ApiResult<Option<String>> {
    match first_param(q, name) {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.len() <= 128 => Ok(Some(v.to_owned())),
        Some(_) => Err(ApiError::invalid_field(
            name,
            format!("`{name}` must be 1 to 128 characters"),
        )),
    }
}

/// `GET /v1/tickets`.
#[utoipa::path(get, path = "/tickets", tag = "tickets", summary = "List tickets with filters", params(("status" = Option<String>, Query, description = "open, in_progress, waiting, resolved, closed"), ("priority" = Option<String>, Query), ("category" = Option<String>, Query), ("customer_id" = Option<String>, Query), ("q" = Option<String>, Query, description = "Text search"), ("sort" = Option<String>, Query), ("cursor" = Option<String>, Query), ("limit" = Option<u64>, Query)), responses((status = 200, description = "A page of tickets", body = serde_json::Value)))]
pub async fn list_tickets(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let (d, store) = tickets(&state, &caller)?;
    let q = query_pairs(raw);
    let known = [
        "risk_min",
        "category",
        "sentiment",
        "status",
        "channel",
        "customer_id",
        "assignee",
        "tag",
        "q",
        "from",
        "to",
        "sort",
        "order",
        "limit",
        "cursor",
    ];
    if let Some((k, _)) = q.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(ApiError::invalid_field(
            k,
            format!("unknown parameter `{k}`; known: {}", known.join(", ")),
        ));
    }
    let limit = match first_param(&q, "limit") {
        None => d.config.page_size,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=d.config.max_page_size).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "limit",
                    format!("`limit` must be between 1 and {}", d.config.max_page_size),
                )
            })?,
    };
    let mut query = TicketQuery::new(caller.tenant.clone(), limit);
    query.max_scan = d.config.max_scan;
    if let Some(v) = first_param(&q, "risk_min") {
        query.risk_min = Some(
            v.parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    ApiError::invalid_field("risk_min", "`risk_min` must be a number from 0 to 1")
                })?,
        );
    }
    query.category = label_param(&q, "category")?;
    query.sentiment = label_param(&q, "sentiment")?;
    query.channel = label_param(&q, "channel")?;
    query.customer_id = label_param(&q, "customer_id")?;
    query.assignee = label_param(&q, "assignee")?;
    query.tag = label_param(&q, "tag")?;
    if let Some(s) = first_param(&q, "status") {
        if let Some(w) = TicketStatus::parse(s) {
            query.status = Some(w);
        } else if let Some(e) = EnrichmentState::parse(s) {
            query.enrichment = Some(e);
        } else {
            return Err(ApiError::invalid_field(
                "status",
                format!(
                    "`status` must be one of: {}, pending, enriched, failed",
                    TicketStatus::ALL.join(", ")
                ),
            ));
        }
    }
    if let Some(text) = first_param(&q, "q") {
        bounded_text("q", text, MAX_QUERY_CHARS, true)?;
        query.text = Some(text.to_owned());
    }
    query.created_from = time_param(&q, "from")?;
    query.created_to = time_param(&q, "to")?;
    if let Some(s) = first_param(&q, "sort") {
        query.sort = TicketSort::parse(s).ok_or_else(|| {
            ApiError::invalid_field("sort", "`sort` must be created_at, updated_at or risk")
        })?;
    }
    query.descending = match first_param(&q, "order") {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "order",
                "`order` must be asc or desc",
            ));
        }
    };
    if let Some(c) = first_param(&q, "cursor") {
        if c.is_empty() || c.len() > 300 || !c.is_ascii() {
            return Err(ApiError::invalid_field(
                "cursor",
                "`cursor` is not one this server gave",
            ));
        }
        query.cursor = Some(c.to_owned());
    }
    let page = store.list_tickets(&query).await?;
    Ok(Json(json!({
        "tickets": page.items.iter().map(ticket_json).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
        "scanned": page.scanned,
    })))
}

fn ticket_json(t: &Ticket) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        // The version is for compare-and-set inside Cairn.
        o.remove("version");
        o.remove("risk_alerted");
    }
    v
}

/// `GET /v1/tickets/{id}`.
#[utoipa::path(get, path = "/tickets/{id}", tag = "tickets", summary = "Read a ticket", params(("id" = String, Path, description = "Ticket id")), responses((status = 200, description = "The ticket", body = serde_json::Value)))]
pub async fn get_ticket(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (_, store) = tickets(&state, &caller)?;
    id_field("ticket_id", &id).map_err(|_| ticket_not_found())?;
    let t = store
        .get_ticket(&caller.tenant, &id)
        .await?
        .ok_or_else(ticket_not_found)?;
    Ok(Json(ticket_json(&t)))
}

/// Body of `PATCH /v1/tickets/{id}`: every field optional.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchTicket {
    /// Workflow status.
    #[serde(default)]
    pub status: Option<String>,
    /// Assignee; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub assignee: Option<Option<String>>,
    /// Replaces the tags.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Priority.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub priority: Option<Priority>,
    /// New subject (a new revision, enriched again).
    #[serde(default)]
    pub subject: Option<String>,
    /// New body (a new revision, enriched again).
    #[serde(default)]
    pub body: Option<String>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Tags per ticket, and their length.
const MAX_TAGS: usize = 32;

/// `PATCH /v1/tickets/{id}` → 200 with the ticket.
#[utoipa::path(patch, path = "/tickets/{id}", tag = "tickets", summary = "Update a ticket's workflow fields", request_body = PatchTicket, params(("id" = String, Path, description = "Ticket id")), responses((status = 200, description = "The updated ticket", body = serde_json::Value)))]
pub async fn patch_ticket(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PatchTicket>,
) -> ApiResult<Json<Value>> {
    let (d, store) = tickets(&state, &caller)?;
    id_field("ticket_id", &id).map_err(|_| ticket_not_found())?;
    let status = body
        .status
        .as_deref()
        .map(|s| {
            TicketStatus::parse(s).ok_or_else(|| {
                ApiError::invalid_field(
                    "status",
                    format!("`status` must be one of: {}", TicketStatus::ALL.join(", ")),
                )
            })
        })
        .transpose()?;
    if let Some(Some(a)) = &body.assignee {
        id_field("assignee", a)?;
    }
    if let Some(tags) = &body.tags
        && (tags.len() > MAX_TAGS || tags.iter().any(|t| t.is_empty() || t.chars().count() > 64))
    {
        return Err(ApiError::invalid_field(
            "tags",
            format!("`tags` holds at most {MAX_TAGS} tags of 1 to 64 characters"),
        ));
    }
    if let Some(s) = &body.subject {
        bounded_text("subject", s, d.config.max_subject_chars, true)?;
    }
    if let Some(b) = &body.body {
        bounded_text("body", b, d.config.max_body_chars, true)?;
    }
    loop {
        let current = store
            .get_ticket(&caller.tenant, &id)
            .await?
            .ok_or_else(ticket_not_found)?;
        let mut next = current.clone();
        if let Some(s) = status {
            next.status = s;
        }
        if let Some(a) = &body.assignee {
            next.assignee = a.clone();
        }
        if let Some(t) = &body.tags {
            let mut t = t.clone();
            t.sort();
            t.dedup();
            next.tags = t;
        }
        if let Some(p) = body.priority {
            next.priority = p;
        }
        let edited = body.subject.as_ref().is_some_and(|s| *s != current.subject)
            || body.body.as_ref().is_some_and(|b| *b != current.body);
        if edited {
            let stored = |t: String| match &state.insights {
                Some(i) => i.for_store(&caller.tenant, t).0,
                None => t,
            };
            next.subject = body.subject.clone().map(stored).unwrap_or(next.subject);
            next.body = body.body.clone().map(stored).unwrap_or(next.body);
            next.start_revision(current.revision + 1);
        }
        next.version = current.version + 1;
        next.updated_at = Utc::now();
        if edited {
            // The new revision is durable on the bus before it is stored, so
            // an accepted edit is always enriched.
            publish(&state, &next.submission()).await?;
        }
        match store.update_ticket(&next, current.version).await? {
            TicketUpdate::Updated => return Ok(Json(ticket_json(&next))),
            TicketUpdate::NotFound => return Err(ticket_not_found()),
            TicketUpdate::Conflict(_) => continue,
        }
    }
}

/// `GET /v1/categories`: the ticket categories (the tenant's intent taxonomy).
#[utoipa::path(get, path = "/categories", tag = "tickets", summary = "The category taxonomy", responses((status = 200, description = "Categories", body = serde_json::Value)))]
pub async fn categories(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let d = desk(&state)?;
    let list: Vec<Value> = (d.categories)(&caller.tenant)
        .into_iter()
        .map(|(c, description)| json!({"category": c, "description": description}))
        .collect();
    Ok(Json(json!({"categories": list})))
}

/// `GET /v1/sentiments`.
#[utoipa::path(get, path = "/sentiments", tag = "tickets", summary = "The sentiment labels", responses((status = 200, description = "Sentiments", body = serde_json::Value)))]
pub async fn sentiments(State(state): State<AppState>, _caller: Caller) -> ApiResult<Json<Value>> {
    desk(&state)?;
    Ok(Json(json!({"sentiments": [
        {"sentiment": "positive", "description": "Satisfied, grateful or pleased."},
        {"sentiment": "neutral", "description": "Factual, no strong feeling."},
        {"sentiment": "negative", "description": "Frustrated, angry, anxious or disappointed."},
    ]})))
}

/// Body of `POST /v1/conversations/{id}/feedback`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostFeedback {
    /// The answer (an assistant message id of the conversation).
    pub message_id: String,
    /// 1–5.
    #[serde(default)]
    pub rating: Option<u8>,
    /// `up` or `down`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub thumb: Option<Thumb>,
    /// Free text.
    #[serde(default)]
    pub comment: Option<String>,
}

/// `POST /v1/conversations/{id}/feedback` → 201 (or 200 when it replaced one).
#[utoipa::path(post, path = "/conversations/{id}/feedback", tag = "feedback", summary = "Rate an answer", request_body = PostFeedback, params(("id" = String, Path, description = "Conversation id")), responses((status = 201, description = "Recorded (200 when it replaced the caller's earlier feedback)", body = serde_json::Value)))]
pub async fn post_feedback(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<PostFeedback>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let d = desk(&state)?.clone();
    let id = conversation_id(&raw)?;
    load_owned(&state, &caller, &id, Access::Write).await?;
    if body.rating.is_none() && body.thumb.is_none() {
        return Err(ApiError::new(
            ErrorCode::MissingField,
            "give a `rating` (1-5), a `thumb` (up or down), or both",
        )
        .with_details(json!({"field": "rating"})));
    }
    if body.rating.is_some_and(|r| !(1..=5).contains(&r)) {
        return Err(ApiError::invalid_field(
            "rating",
            "`rating` must be from 1 to 5",
        ));
    }
    if let Some(c) = &body.comment {
        bounded_text("comment", c, MAX_COMMENT_CHARS, false)?;
    }
    id_field("message_id", &body.message_id)?;
    // Find the answer (and the question it answered) in the transcript.
    let mut from = 0;
    let mut scanned = 0;
    let mut question: Option<cairn_core::Message> = None;
    let answer = 'find: loop {
        let page = state
            .memory
            .messages(&caller.tenant, &id, from, 500)
            .await?;
        if page.is_empty() || scanned >= MAX_TRANSCRIPT_SCAN {
            break None;
        }
        scanned += page.len();
        for m in page {
            from = m.seq + 1;
            if m.role == Role::User {
                question = Some(m);
            } else if m.role == Role::Assistant && m.id.as_str() == body.message_id {
                break 'find Some(m);
            }
        }
    };
    let Some(answer) = answer else {
        return Err(ApiError::new(
            ErrorCode::MessageNotFound,
            "the conversation has no answer with this message_id",
        )
        .with_details(json!({"field": "message_id"})));
    };
    let agent = answer.metadata["agent"]["name"].as_str().map(str::to_owned);
    let intent = match (&d.intent_of, &question) {
        (Some(i), Some(q)) if q.turn_id == answer.turn_id => {
            i.intent_of(&caller.tenant, &id, &q.id).await
        }
        _ => None,
    };
    let feedback = Feedback {
        tenant_id: caller.tenant.clone(),
        conversation_id: id.to_string(),
        message_id: body.message_id.clone(),
        user_id: caller.user.to_string(),
        rating: body.rating,
        thumb: body.thumb,
        comment: body.comment,
        agent,
        intent,
        recorded_at: Utc::now(),
    };
    let key = format!(
        "{}/{}/{}/{}",
        caller.tenant, id, body.message_id, caller.user
    );
    let replaced = d.records.get_record(FEEDBACK, &key).await?.is_some();
    // Durable on the bus (analytics count the newest per user and answer),
    // then stored for reading back.
    state
        .runtime
        .publish_feedback(&feedback)
        .await
        .map_err(|e| ApiError::unavailable("the event bus", &e))?;
    let text = serde_json::to_string(&feedback)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    d.records
        .write_records(vec![RecordChange::put(FEEDBACK, key, text)])
        .await?;
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(json!({"feedback": feedback, "replaced": replaced})),
    ))
}

/// The range and tenant of an analytics request.
fn report_scope(
    d: &DeskApi,
    caller: &Caller,
    q: &[(String, String)],
) -> ApiResult<(TenantId, Range)> {
    let to = time_param(q, "to")?.unwrap_or_else(Utc::now);
    let from = time_param(q, "from")?.unwrap_or(to - chrono::Duration::days(7));
    if from > to {
        return Err(ApiError::invalid_field(
            "from",
            "`from` must be before `to`",
        ));
    }
    let max = i64::from(d.analytics.max_range_days);
    if to - from > chrono::Duration::days(max) {
        return Err(ApiError::invalid_field(
            "from",
            format!("the range may span at most {max} days (analytics.max_range_days)"),
        )
        .with_details(json!({"field": "from", "max_days": max})));
    }
    let tenant = match first_param(q, "tenant") {
        Some(t) if t != caller.tenant.as_str() => {
            if !caller.has_scope(OPERATOR_SCOPE) {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "reading another tenant's analytics needs the operator scope",
                ));
            }
            TenantId::parse(t).map_err(|e| ApiError::invalid_field("tenant", e.to_string()))?
        }
        _ => caller.tenant.clone(),
    };
    Ok((tenant, Range::new(from, to)))
}

/// A report over the counters of the requested range: `tenant_id`, `from`
/// and `to`, then what `report` makes of the totals.
async fn report(
    state: &AppState,
    caller: &Caller,
    raw: Option<String>,
    report: fn(&Totals) -> Value,
) -> ApiResult<Json<Value>> {
    let (d, c) = counters(state)?;
    require_desk_scope(state, caller)?;
    let q = query_pairs(raw);
    if let Some((k, _)) = q
        .iter()
        .find(|(k, _)| !["from", "to", "tenant"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid_field(
            k,
            format!("unknown parameter `{k}`; known: from, to, tenant"),
        ));
    }
    let (tenant, range) = report_scope(d, caller, &q)?;
    let buckets = analytics::plan(range);
    let maps = c.read_counters(&tenant, &buckets).await?;
    let mut out = json!({"tenant_id": tenant, "from": range.from, "to": range.to});
    if let (Some(o), Value::Object(body)) =
        (out.as_object_mut(), report(&Totals::of(&buckets, &maps)))
    {
        o.extend(body);
    }
    Ok(Json(out))
}

/// `GET /v1/analytics/overview`.
#[utoipa::path(get, path = "/analytics/overview", tag = "analytics", summary = "Messages, turns, tickets and latency over a range", params(("from" = Option<String>, Query), ("to" = Option<String>, Query)), responses((status = 200, description = "The report", body = serde_json::Value)))]
pub async fn overview(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    report(&state, &caller, raw, analytics::overview).await
}

/// `GET /v1/analytics/intents`.
#[utoipa::path(get, path = "/analytics/intents", tag = "analytics", summary = "Intents over a range", params(("from" = Option<String>, Query), ("to" = Option<String>, Query)), responses((status = 200, description = "The report", body = serde_json::Value)))]
pub async fn intents(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    report(&state, &caller, raw, analytics::intents_report).await
}

/// `GET /v1/analytics/satisfaction` and `GET /v1/feedback/summary`.
#[utoipa::path(get, path = "/analytics/satisfaction", tag = "analytics", summary = "Satisfaction over a range", params(("from" = Option<String>, Query, description = "Start (RFC 3339 or date)"), ("to" = Option<String>, Query)), responses((status = 200, description = "The report", body = serde_json::Value)))]
pub async fn satisfaction(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    report(&state, &caller, raw, analytics::satisfaction_report).await
}

/// `GET /v1/feedback/summary`: the satisfaction report under the feedback path.
#[utoipa::path(get, path = "/feedback/summary", tag = "feedback", summary = "Feedback summary over a range (the same report as /v1/analytics/satisfaction)", params(("from" = Option<String>, Query), ("to" = Option<String>, Query)), responses((status = 200, description = "The report", body = serde_json::Value)))]
pub async fn feedback_summary(
    state: State<AppState>,
    caller: Caller,
    raw: RawQuery,
) -> ApiResult<Json<Value>> {
    satisfaction(state, caller, raw).await
}

/// `GET /v1/analytics/tickets`.
#[utoipa::path(get, path = "/analytics/tickets", tag = "analytics", summary = "Tickets over a range", params(("from" = Option<String>, Query), ("to" = Option<String>, Query)), responses((status = 200, description = "The report", body = serde_json::Value)))]
pub async fn ticket_analytics(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    report(&state, &caller, raw, analytics::tickets_report).await
}
