//! Support intelligence over HTTP:
//!
//! - `POST /v1/messages`: seed-compatible ingestion of messages between
//!   customers and human agents (`{"conversation_id", "sender", "message",
//!   "channel", "tenant_id"}` → 202 `{"message_id", "conversation_id",
//!   "status": "accepted", "timestamp"}`), accepted once durable on
//!   `user_events`; analysed by the InsightsActor, never answered.
//! - `POST /v1/analyze`: the analysis of one text, synchronously; nothing is
//!   stored.
//! - `GET /v1/conversations/{id}/insights`: the conversation's aggregate.
//! - per-message analyses on `GET /v1/conversations/{id}/messages` items
//!   ([`attach_analyses`]).
//!
//! Under the `redact_store` policy, texts are redacted here, before they reach
//! the bus: the original is never persisted ([`InsightsApi::for_store`]).

use crate::auth::Caller;
use crate::conversations::{Access, check_conversation_quota, load_owned};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{JsonBody, conversation_id};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use cairn_core::insights::{
    ConversationInsights, MessageAnalysis, PiiPolicy, PiiReport, PiiScanner, Sender,
    SupportMessage, redact,
};
use cairn_core::insights_config::InsightsConfig;
use cairn_core::ports::{AnalysisInput, Analyzer, RecordStore, StoreError};
use cairn_core::{ConversationId, Message, MessageId, TenantId};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use cairn_insights::aggregate::{CONVERSATIONS, MESSAGES, conversation_key, message_key};
/// Namespace of message ids derived from an `Idempotency-Key`.
const SUPPORT_NS: uuid::Uuid = uuid::Uuid::from_u128(0x2d4f_8a61_93c7_4e0b_b5a2_7c1d_e3f4_0a9b);

/// What the insights routes need.
pub struct InsightsApi {
    /// The analyser (`POST /v1/analyze`).
    pub analyzer: Arc<dyn Analyzer>,
    /// Finds PII for `redact_store`.
    pub scanner: Arc<dyn PiiScanner>,
    /// `[insights]`.
    pub config: Arc<InsightsConfig>,
    /// Analyses and aggregates.
    pub records: Arc<dyn RecordStore>,
}

impl InsightsApi {
    /// `text` as it may be stored for `tenant`: redacted under `redact_store`
    /// (with what was found), unchanged otherwise.
    pub fn for_store(&self, tenant: &TenantId, text: String) -> (String, Option<PiiReport>) {
        if self.config.policy_for(tenant.as_str()) != PiiPolicy::RedactStore {
            return (text, None);
        }
        let found = self.scanner.scan(&text);
        if found.is_empty() {
            return (text, None);
        }
        let redacted = redact(&text, &found);
        (redacted, Some(PiiReport::of(found)))
    }
}

impl InsightsApi {
    /// The intent of an analysed message, if it was analysed.
    pub async fn intent_of(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        message: &MessageId,
    ) -> Option<String> {
        let key = message_key(tenant.as_str(), id, message);
        let text = self.records.get_record(MESSAGES, &key).await.ok()??;
        serde_json::from_str::<MessageAnalysis>(&text)
            .ok()
            .map(|m| m.analysis.intent)
    }

    /// Deletes a conversation's analyses and insights (with the conversation).
    pub async fn forget(&self, tenant: &TenantId, id: &ConversationId) -> ApiResult<()> {
        forget(self.records.as_ref(), tenant, id).await?;
        Ok(())
    }
}

/// Deletes a conversation's message analyses and folded insights from `records`:
/// called when the conversation is deleted, by the API or by `memory.retention`
/// (they would otherwise outlive it, one record per analysed message).
pub async fn forget(
    records: &dyn RecordStore,
    tenant: &TenantId,
    id: &ConversationId,
) -> Result<(), StoreError> {
    let prefix = format!("{}/", conversation_key(tenant.as_str(), id));
    loop {
        let page = records.scan_records(MESSAGES, &prefix, None, 500).await?;
        if page.is_empty() {
            break;
        }
        let changes = page
            .into_iter()
            .map(|(k, _)| cairn_core::ports::RecordChange::delete(MESSAGES, k))
            .collect();
        records.write_records(changes).await?;
    }
    records
        .write_records(vec![cairn_core::ports::RecordChange::delete(
            CONVERSATIONS,
            conversation_key(tenant.as_str(), id),
        )])
        .await
}

fn api(state: &AppState) -> ApiResult<&Arc<InsightsApi>> {
    state.insights.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::InsightsDisabled,
            "support intelligence is off on this server (insights.enabled = false)",
        )
    })
}

/// Body of `POST /v1/messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostSupportMessage {
    /// The conversation (created on first use); a new one when absent.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// `customer` or `agent`.
    #[schema(value_type = String)]
    pub sender: Sender,
    /// The text.
    pub message: String,
    /// Where it came from (`chat`, `email`, `phone`, …).
    #[serde(default)]
    pub channel: Option<String>,
    /// Must be the token's tenant when given.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

/// `POST /v1/messages` → 202.
#[utoipa::path(post, path = "/messages", tag = "insights", summary = "Post a support message for analysis (and a turn for customers)", request_body = PostSupportMessage, responses((status = 202, description = "Accepted", body = serde_json::Value)))]
pub async fn post_message(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PostSupportMessage>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let insights = api(&state)?.clone();
    if let Some(t) = &body.tenant_id
        && t != caller.tenant.as_str()
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "`tenant_id` differs from the token's tenant; a token posts for its own tenant only",
        )
        .with_details(json!({"field": "tenant_id"})));
    }
    let id = match &body.conversation_id {
        Some(raw) => conversation_id(raw)?,
        None => ConversationId::generate(),
    };
    let channel = body.channel.unwrap_or_else(|| "api".to_owned());
    let channel_ok = !channel.is_empty()
        && channel.len() <= 64
        && channel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !channel_ok {
        return Err(ApiError::invalid_field(
            "channel",
            "`channel` must be 1 to 64 characters of A-Z a-z 0-9 _ - .",
        ));
    }
    if body.message.trim().is_empty() {
        return Err(ApiError::invalid_field(
            "message",
            "`message` must not be empty",
        ));
    }
    let max = state.settings.max_message_chars;
    if body.message.chars().take(max + 1).count() > max {
        return Err(ApiError::invalid_field(
            "message",
            format!("`message` is longer than {max} characters"),
        )
        .with_details(json!({"field": "message", "max": max})));
    }
    match state.memory.get_conversation(&caller.tenant, &id).await? {
        Some(_) => {
            load_owned(&state, &caller, &id, Access::Write).await?;
        }
        None => check_conversation_quota(&state, &caller).await?,
    }
    let message_id = match crate::messages::idempotency_key(&headers)? {
        Some(k) => {
            let name = format!("{}/{id}/{k}", caller.tenant);
            MessageId::parse(uuid::Uuid::new_v5(&SUPPORT_NS, name.as_bytes()).to_string())
                .map_err(|e| ApiError::new(ErrorCode::InvalidField, e.to_string()))?
        }
        None => MessageId::generate(),
    };
    let (text, redacted_pii) = insights.for_store(&caller.tenant, body.message);
    let message = SupportMessage {
        tenant_id: caller.tenant.clone(),
        conversation_id: id.clone(),
        message_id: message_id.clone(),
        user_id: caller.user.clone(),
        sender: body.sender,
        message: text,
        channel,
        accepted_at: chrono::Utc::now(),
        redacted_pii,
    };
    state
        .runtime
        .submit_support(&message, Some(&crate::request_id::traceparent()))
        .await
        .map_err(|e| ApiError::unavailable("the event bus", &e))?;
    tracing::info!(conversation = %id, message = %message_id, "support message accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "message_id": message_id,
            "conversation_id": id,
            "status": "accepted",
            "timestamp": message.accepted_at,
        })),
    ))
}

/// Body of `POST /v1/analyze`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeBody {
    /// The text.
    pub text: String,
}

/// `POST /v1/analyze` → 200 with the analysis (nothing stored).
#[utoipa::path(post, path = "/analyze", tag = "insights", summary = "Analyse a text without storing it", request_body = AnalyzeBody, responses((status = 200, description = "The analysis (schemas/insights.analysis.v1.json)", body = serde_json::Value)))]
pub async fn analyze(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<AnalyzeBody>,
) -> ApiResult<Json<Value>> {
    let insights = api(&state)?;
    if body.text.trim().is_empty() {
        return Err(ApiError::invalid_field("text", "`text` must not be empty"));
    }
    let max = insights.config.max_text_chars;
    if body.text.chars().take(max + 1).count() > max {
        return Err(ApiError::invalid_field(
            "text",
            format!("`text` is longer than {max} characters"),
        )
        .with_details(json!({"field": "text", "max": max})));
    }
    let input = AnalysisInput::customer(caller.tenant.clone(), body.text);
    let analysis = insights
        .analyzer
        .analyze(&input)
        .await
        .map_err(|e| ApiError::unavailable("the analyser", &e))?;
    Ok(Json(serde_json::to_value(analysis).unwrap_or(Value::Null)))
}

/// `GET /v1/conversations/{id}/insights`.
#[utoipa::path(get, path = "/conversations/{id}/insights", tag = "insights", summary = "Read a conversation's insights", params(("id" = String, Path, description = "Conversation id")), responses((status = 200, description = "Sentiment, intent, urgency, PII found, summary", body = serde_json::Value)))]
pub async fn conversation_insights(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let insights = api(&state)?;
    let id = conversation_id(&id)?;
    load_owned(&state, &caller, &id, Access::Read).await?;
    let key = conversation_key(caller.tenant.as_str(), &id);
    let stored = insights.records.get_record(CONVERSATIONS, &key).await?;
    let value = match stored.and_then(|s| serde_json::from_str::<ConversationInsights>(&s).ok()) {
        Some(c) => serde_json::to_value(c).unwrap_or(Value::Null),
        // Nothing analysed yet: the same shape, empty.
        None => json!({
            "conversation_id": id,
            "analyzed_messages": 0,
            "customer_messages": 0,
            "sentiment": null,
            "pii": {"detected": false, "types": [], "messages_with_pii": 0},
            "insights": null,
            "summary": null,
        }),
    };
    Ok(Json(value))
}

/// The transcript's items with each analysed message's `analysis` attached.
pub async fn attach_analyses(
    state: &AppState,
    tenant: &TenantId,
    id: &ConversationId,
    items: Vec<Message>,
) -> ApiResult<Vec<Value>> {
    let Some(insights) = state.insights.as_ref() else {
        return Ok(items
            .into_iter()
            .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
            .collect());
    };
    let mut out = Vec::with_capacity(items.len());
    for m in items {
        let analysed = m.role == cairn_core::Role::User || m.metadata.get("sender").is_some();
        let mut v = serde_json::to_value(&m).unwrap_or(Value::Null);
        if analysed {
            let key = message_key(tenant.as_str(), id, &m.id);
            if let Some(s) = insights.records.get_record(MESSAGES, &key).await?
                && let Ok(a) = serde_json::from_str::<MessageAnalysis>(&s)
            {
                v["analysis"] = serde_json::to_value(a.analysis).unwrap_or(Value::Null);
            }
        }
        out.push(v);
    }
    Ok(out)
}
