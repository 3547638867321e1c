//! Alerts and silences (`alerts.*` config, `auth.alerts_scope`):
//!
//! - `POST /v1/alerts`: a list of alerts in Alertmanager's v2 shape (`labels`,
//!   `annotations`, `startsAt`, `endsAt`, `generatorURL`); the tenant comes from
//!   the token and replaces any `tenant` label. 202 once every alert is on the bus.
//! - `GET /v1/alerts?state=firing|resolved&filter=name="value"&limit=`: the
//!   tenant's active and recently resolved alerts.
//! - `GET /v1/alerts/notifications?limit=`: the notification log, newest first.
//! - `POST /v1/alerts/test` `{"receiver": "…"}`: one test notification, now.
//! - `GET|POST /v1/silences`, `GET|DELETE /v1/silences/{id}` (DELETE expires it).
//!
//! Everything is scoped to the caller's tenant; a token with the `operator`
//! scope sees every tenant (or one, with `?tenant=`).

use crate::auth::{Caller, OPERATOR_SCOPE};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{JsonBody, first_param, query_pairs};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use cairn_alerts::notify::Channels;
use cairn_alerts::records::{
    AlertLog, AlertState, DeliveryStatus, Message, NotificationRecord, Silence,
};
use cairn_core::alerts::{Alert, AlertSource, Matcher, TENANT_LABEL, valid_label_name};
use cairn_core::alerts_config::AlertsConfig;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most labels or annotations on one alert.
pub const MAX_LABELS: usize = 64;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 1024;
/// Longest annotation value, in bytes.
pub const MAX_ANNOTATION: usize = 16 * 1024;
/// Alerts of one request published at once.
const PUBLISH_CONCURRENCY: usize = 64;
/// Longest silence.
pub const MAX_SILENCE_DAYS: i64 = 366;

/// What the alert routes need.
pub struct AlertsApi {
    /// Stored pipeline state.
    pub log: AlertLog,
    /// The receivers (for test notifications).
    pub channels: Arc<Channels>,
    /// `[alerts]`.
    pub config: AlertsConfig,
    /// `auth.alerts_scope` (`None`: any token).
    pub scope: Option<String>,
}

fn api(state: &AppState) -> ApiResult<&AlertsApi> {
    state.alerts.as_deref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::AlertsDisabled,
            "the alert pipeline is disabled (alerts.enabled = false)",
        )
    })
}

fn require_scope(a: &AlertsApi, caller: &Caller) -> ApiResult<()> {
    match &a.scope {
        Some(s) if !caller.has_scope(s) && !caller.has_scope(OPERATOR_SCOPE) => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("raising alerts and managing silences needs the `{s}` scope"),
        )),
        _ => Ok(()),
    }
}

/// The alert store failed (logged with its cause, reported without it).
fn store_down(e: cairn_core::ports::StoreError) -> ApiError {
    ApiError::unavailable("the alert store", &e)
}

/// The tenant a listing covers: the caller's, or for operators all (or `?tenant=`).
fn scope_of(caller: &Caller, q: &[(String, String)]) -> Option<String> {
    if caller.has_scope(OPERATOR_SCOPE) {
        first_param(q, "tenant").map(str::to_owned)
    } else {
        Some(caller.tenant.to_string())
    }
}

fn limit(q: &[(String, String)]) -> ApiResult<usize> {
    match first_param(q, "limit") {
        None => Ok(100),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=cairn_alerts::records::MAX_LIST).contains(n))
            .ok_or_else(|| ApiError::invalid_field("limit", "`limit` must be between 1 and 1000")),
    }
}

/// One alert in Alertmanager's v2 shape.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostedAlert {
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    starts_at: Option<DateTime<Utc>>,
    #[serde(default)]
    ends_at: Option<DateTime<Utc>>,
    #[serde(default, rename = "generatorURL")]
    generator_url: Option<String>,
}

fn check_map(
    field: &str,
    i: usize,
    m: &BTreeMap<String, String>,
    max_value: usize,
) -> ApiResult<()> {
    let f = format!("{i}.{field}");
    if m.len() > MAX_LABELS {
        return Err(ApiError::invalid_field(
            &f,
            format!("at most {MAX_LABELS} {field}"),
        ));
    }
    for (k, v) in m {
        if !valid_label_name(k) {
            return Err(ApiError::invalid_field(
                &f,
                format!("`{k}` is not a valid name (letters, digits, _)"),
            ));
        }
        if v.len() > max_value {
            return Err(ApiError::invalid_field(
                &f,
                format!("`{k}` is longer than {max_value} bytes"),
            ));
        }
    }
    Ok(())
}

fn into_alert(p: PostedAlert, i: usize, tenant: &str) -> ApiResult<Alert> {
    check_map("labels", i, &p.labels, MAX_LABEL_VALUE)?;
    check_map("annotations", i, &p.annotations, MAX_ANNOTATION)?;
    if p.labels.get("alertname").is_none_or(String::is_empty) {
        return Err(ApiError::invalid_field(
            &format!("{i}.labels"),
            "every alert needs an `alertname` label",
        ));
    }
    if p.generator_url.as_ref().is_some_and(|u| u.len() > 2048) {
        return Err(ApiError::invalid_field(
            &format!("{i}.generatorURL"),
            "longer than 2048 bytes",
        ));
    }
    let starts_at = p.starts_at.unwrap_or_else(Utc::now);
    if p.ends_at.is_some_and(|e| e < starts_at) {
        return Err(ApiError::invalid_field(
            &format!("{i}.endsAt"),
            "`endsAt` is before `startsAt`",
        ));
    }
    let mut labels = p.labels;
    labels.insert(TENANT_LABEL.into(), tenant.to_owned());
    labels
        .entry("severity".into())
        .or_insert_with(|| "warning".into());
    Ok(Alert {
        labels,
        annotations: p.annotations,
        starts_at,
        ends_at: p.ends_at,
        generator_url: p.generator_url,
        source: AlertSource::Api,
        conversation_id: None,
        turn_id: None,
    })
}

/// `POST /v1/alerts`.
#[utoipa::path(post, path = "/alerts", tag = "alerts", summary = "Raise alerts (Alertmanager format)", request_body = Vec<PostedAlert>, responses((status = 202, description = "Accepted", body = serde_json::Value)))]
pub async fn raise(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<Vec<PostedAlert>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let a = api(&state)?;
    require_scope(a, &caller)?;
    let max = a.config.max_alerts_per_request;
    if body.len() > max {
        return Err(ApiError::invalid_field(
            "alerts",
            format!("at most {max} alerts per request (alerts.max_alerts_per_request)"),
        )
        .with_details(json!({"field": "alerts", "limit": max})));
    }
    let tenant = caller.tenant.to_string();
    let alerts: Vec<Alert> = body
        .into_iter()
        .enumerate()
        .map(|(i, p)| into_alert(p, i, &tenant))
        .collect::<ApiResult<_>>()?;
    // Published concurrently, so the bus batches the writes; 202 only once
    // every one is durable.
    let publishes = alerts.iter().cloned().map(|a| {
        let runtime = state.runtime.clone();
        async move { runtime.publish_alert(&a, None).await }
    });
    futures::stream::iter(publishes)
        .buffered(PUBLISH_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map_err(|e| ApiError::unavailable("the event bus", &e))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"accepted": alerts.len(), "fingerprints": alerts.iter().map(Alert::fingerprint).collect::<Vec<_>>()}),
        ),
    ))
}

fn alert_json(a: &AlertState, silences: &[Silence], now: DateTime<Utc>) -> Value {
    let silenced_by: Vec<&str> = silences
        .iter()
        .filter(|s| s.mutes(&a.alert, now))
        .map(|s| s.id.as_str())
        .collect();
    json!({
        "fingerprint": a.fingerprint,
        "status": a.status_at(now),
        "labels": a.alert.labels,
        "annotations": a.alert.annotations,
        "startsAt": a.alert.starts_at,
        "endsAt": a.alert.ends_at,
        "generatorURL": a.alert.generator_url,
        "source": a.alert.source.as_str(),
        "conversationId": a.alert.conversation_id,
        "receivedAt": a.received_at,
        "updatedAt": a.updated_at,
        "silencedBy": silenced_by,
    })
}

/// `GET /v1/alerts`.
#[utoipa::path(get, path = "/alerts", tag = "alerts", summary = "List alerts", responses((status = 200, description = "Alerts", body = serde_json::Value)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let a = api(&state)?;
    let q = query_pairs(raw);
    let st = first_param(&q, "state");
    if st.is_some_and(|s| s != "firing" && s != "resolved") {
        return Err(ApiError::invalid_field(
            "state",
            "`state` is `firing` or `resolved`",
        ));
    }
    let matchers: Vec<Matcher> = q
        .iter()
        .filter(|(k, _)| k == "filter")
        .map(|(_, v)| Matcher::parse(v).map_err(|e| ApiError::invalid_field("filter", e)))
        .collect::<ApiResult<_>>()?;
    let tenant = scope_of(&caller, &q);
    let alerts = a
        .log
        .alerts(tenant.as_deref(), st, &matchers, limit(&q)?)
        .await
        .map_err(store_down)?;
    let silences = a
        .log
        .silences(tenant.as_deref())
        .await
        .map_err(store_down)?;
    let now = Utc::now();
    Ok(Json(json!({
        "alerts": alerts.iter().map(|x| alert_json(x, &silences, now)).collect::<Vec<_>>()
    })))
}

fn notification_json(n: &NotificationRecord) -> Value {
    json!({
        "id": n.id,
        "tenant": n.tenant,
        "group_key": n.group_key,
        "receiver": n.receiver,
        "kind": n.kind,
        "status": n.status,
        "group_status": n.message.status,
        "alerts": n.message.total,
        "fingerprints": n.message.alerts.iter().map(|a| a.fingerprint.clone()).collect::<Vec<_>>(),
        "attempts": n.attempts,
        "last_error": n.last_error,
        "created_at": n.created_at,
        "updated_at": n.updated_at,
        "sent_at": n.sent_at,
    })
}

/// `GET /v1/alerts/notifications`.
#[utoipa::path(get, path = "/alerts/notifications", tag = "alerts", summary = "The notification log", responses((status = 200, description = "Notifications", body = serde_json::Value)))]
pub async fn notifications(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let a = api(&state)?;
    let q = query_pairs(raw);
    let rows = a
        .log
        .notifications(scope_of(&caller, &q).as_deref(), limit(&q)?)
        .await
        .map_err(store_down)?;
    Ok(Json(
        json!({"notifications": rows.iter().map(notification_json).collect::<Vec<_>>()}),
    ))
}

/// `POST /v1/alerts/test` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    receiver: String,
}

/// `POST /v1/alerts/test`: sends one test notification now and records it.
#[utoipa::path(post, path = "/alerts/test", tag = "alerts", summary = "Send a test notification to a receiver", request_body = TestRequest, responses((status = 200, description = "Sent", body = serde_json::Value)))]
pub async fn test(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<TestRequest>,
) -> ApiResult<Json<Value>> {
    let a = api(&state)?;
    require_scope(a, &caller)?;
    let rc = a.config.receivers.iter().find(|r| r.name == body.receiver);
    let allowed = rc.is_some_and(|r| {
        caller.has_scope(OPERATOR_SCOPE)
            || cairn_alerts::routing::receiver_accepts(r, caller.tenant.as_str())
    });
    let (Some(rc), true, Some(channel)) = (rc, allowed, a.channels.get(&body.receiver)) else {
        return Err(ApiError::invalid_field(
            "receiver",
            format!("no receiver `{}` for this tenant", body.receiver),
        ));
    };
    let now = Utc::now();
    let tenant = caller.tenant.to_string();
    let alert = Alert::firing("CairnTest", &tenant, "info", AlertSource::Api)
        .annotation(
            "summary",
            "Test notification from Cairn: this receiver is reachable",
        )
        .annotation(
            "description",
            format!("Sent by {} to check receiver {}", caller.user, rc.name),
        );
    let fingerprint = alert.fingerprint();
    let mut n = NotificationRecord {
        id: uuid::Uuid::now_v7().to_string(),
        tenant: tenant.clone(),
        group_key: format!("{tenant}/test/{}/{fingerprint}", rc.name),
        receiver: rc.name.clone(),
        kind: cairn_alerts::engine::receiver_kind(rc).to_owned(),
        status: DeliveryStatus::Pending,
        attempts: 1,
        last_error: None,
        created_at: now,
        updated_at: now,
        sent_at: None,
        message: Message {
            status: "firing".into(),
            group_labels: BTreeMap::from([
                ("alertname".to_owned(), "CairnTest".to_owned()),
                (TENANT_LABEL.to_owned(), tenant),
            ]),
            alerts: vec![AlertState {
                alert,
                fingerprint,
                received_at: now,
                updated_at: now,
            }],
            total: 1,
        },
    };
    let result = channel.send(&n).await;
    n.updated_at = Utc::now();
    match &result {
        Ok(()) => {
            n.status = DeliveryStatus::Sent;
            n.sent_at = Some(n.updated_at);
        }
        Err(e) => {
            n.status = DeliveryStatus::Failed;
            n.last_error = Some(e.to_string());
        }
    }
    if let Err(e) = a.log.put_notification(&n).await {
        tracing::warn!(error = %e, "cannot record a test notification");
    }
    match result {
        Ok(()) => Ok(Json(json!({"notification": notification_json(&n)}))),
        Err(e) => Err(ApiError::new(
            ErrorCode::ReceiverFailed,
            format!(
                "receiver `{}` did not accept the test notification: {e}",
                rc.name
            ),
        )
        .with_details(
            json!({"receiver": rc.name, "error": e.to_string(), "notification_id": n.id}),
        )),
    }
}

/// A matcher as a string (`name="value"`) or Alertmanager's object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MatcherIn {
    /// `name="value"`, `name=~"re"`, …
    Text(String),
    /// `{"name","value","isRegex","isEqual"}`.
    Object(Matcher),
}

/// `POST /v1/silences` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SilenceRequest {
    #[schema(value_type = Vec<Object>)]
    matchers: Vec<MatcherIn>,
    #[serde(default)]
    starts_at: Option<DateTime<Utc>>,
    #[serde(default)]
    ends_at: Option<DateTime<Utc>>,
    /// E.g. `2h` (instead of `endsAt`).
    #[serde(default)]
    duration: Option<String>,
    comment: String,
    #[serde(default)]
    created_by: Option<String>,
    /// Operators only: the tenant whose alerts to silence.
    #[serde(default)]
    tenant: Option<String>,
}

fn silence_json(s: &Silence, now: DateTime<Utc>) -> Value {
    json!({
        "id": s.id,
        "tenant": s.tenant,
        "matchers": s.matchers,
        "startsAt": s.starts_at,
        "endsAt": s.ends_at,
        "createdBy": s.created_by,
        "comment": s.comment,
        "updatedAt": s.updated_at,
        "status": {"state": s.state_at(now)},
    })
}

/// `POST /v1/silences`.
#[utoipa::path(post, path = "/silences", tag = "alerts", summary = "Create a silence", request_body = SilenceRequest, responses((status = 201, description = "The silence", body = serde_json::Value)))]
pub async fn create_silence(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<SilenceRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let a = api(&state)?;
    require_scope(a, &caller)?;
    let matchers: Vec<Matcher> = body
        .matchers
        .into_iter()
        .map(|m| match m {
            MatcherIn::Text(t) => {
                Matcher::parse(&t).map_err(|e| ApiError::invalid_field("matchers", e))
            }
            MatcherIn::Object(m) => Ok(m),
        })
        .collect::<ApiResult<_>>()?;
    if matchers.is_empty() || matchers.len() > MAX_LABELS {
        return Err(ApiError::invalid_field(
            "matchers",
            format!("between 1 and {MAX_LABELS} matchers"),
        ));
    }
    if body.comment.trim().is_empty() || body.comment.len() > 4096 {
        return Err(ApiError::invalid_field(
            "comment",
            "say why (at most 4096 bytes)",
        ));
    }
    let now = Utc::now();
    let starts_at = body.starts_at.unwrap_or(now);
    let ends_at = match (body.ends_at, &body.duration) {
        (Some(e), None) => e,
        (None, Some(d)) => {
            let d = humantime::parse_duration(d).map_err(|e| {
                ApiError::invalid_field("duration", format!("not a duration like 2h: {e}"))
            })?;
            starts_at
                + chrono::Duration::from_std(d)
                    .map_err(|_| ApiError::invalid_field("duration", "too long"))?
        }
        _ => {
            return Err(ApiError::invalid_field(
                "endsAt",
                "give exactly one of `endsAt` and `duration`",
            ));
        }
    };
    if ends_at <= starts_at || ends_at <= now {
        return Err(ApiError::invalid_field(
            "endsAt",
            "the silence must end after it starts, in the future",
        ));
    }
    if ends_at - starts_at > chrono::Duration::days(MAX_SILENCE_DAYS) {
        return Err(ApiError::invalid_field(
            "endsAt",
            format!("a silence lasts at most {MAX_SILENCE_DAYS} days"),
        ));
    }
    let tenant = match body.tenant {
        Some(t) if caller.has_scope(OPERATOR_SCOPE) => t,
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "only operators silence another tenant's alerts",
            ));
        }
        None => caller.tenant.to_string(),
    };
    let s = Silence {
        id: uuid::Uuid::now_v7().to_string(),
        tenant,
        matchers,
        starts_at,
        ends_at,
        created_by: body
            .created_by
            .unwrap_or_else(|| caller.user.to_string())
            .chars()
            .take(256)
            .collect(),
        comment: body.comment,
        updated_at: now,
    };
    a.log.put_silence(&s).await.map_err(store_down)?;
    tracing::info!(silence = %s.id, tenant = %s.tenant, "silence created");
    Ok((StatusCode::CREATED, Json(silence_json(&s, now))))
}

/// `GET /v1/silences`.
#[utoipa::path(get, path = "/silences", tag = "alerts", summary = "List silences", responses((status = 200, description = "Silences", body = serde_json::Value)))]
pub async fn silences(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let a = api(&state)?;
    let q = query_pairs(raw);
    let rows = a
        .log
        .silences(scope_of(&caller, &q).as_deref())
        .await
        .map_err(store_down)?;
    let now = Utc::now();
    Ok(Json(
        json!({"silences": rows.iter().map(|s| silence_json(s, now)).collect::<Vec<_>>()}),
    ))
}

async fn find_silence(a: &AlertsApi, caller: &Caller, id: &str) -> ApiResult<Silence> {
    let not_found = || ApiError::new(ErrorCode::SilenceNotFound, "silence not found");
    if id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(not_found());
    }
    let tenants: Vec<String> = if caller.has_scope(OPERATOR_SCOPE) {
        a.log
            .silences(None)
            .await
            .map_err(store_down)?
            .into_iter()
            .filter(|s| s.id == id)
            .map(|s| s.tenant)
            .collect()
    } else {
        vec![caller.tenant.to_string()]
    };
    for t in tenants {
        if let Some(s) = a.log.silence(&t, id).await.map_err(store_down)? {
            return Ok(s);
        }
    }
    Err(not_found())
}

/// `GET /v1/silences/{id}`.
#[utoipa::path(get, path = "/silences/{id}", tag = "alerts", summary = "Read a silence", params(("id" = String, Path, description = "Silence id")), responses((status = 200, description = "The silence", body = serde_json::Value)))]
pub async fn get_silence(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let a = api(&state)?;
    let s = find_silence(a, &caller, &id).await?;
    Ok(Json(silence_json(&s, Utc::now())))
}

/// `DELETE /v1/silences/{id}`: expires the silence now.
#[utoipa::path(delete, path = "/silences/{id}", tag = "alerts", summary = "Expire a silence", params(("id" = String, Path, description = "Silence id")), responses((status = 200, description = "The expired silence", body = serde_json::Value)))]
pub async fn expire_silence(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let a = api(&state)?;
    require_scope(a, &caller)?;
    let mut s = find_silence(a, &caller, &id).await?;
    let now = Utc::now();
    if s.ends_at > now {
        s.ends_at = now.max(s.starts_at);
        s.updated_at = now;
        a.log.put_silence(&s).await.map_err(store_down)?;
        tracing::info!(silence = %s.id, "silence expired");
    }
    Ok(Json(silence_json(&s, now)))
}
