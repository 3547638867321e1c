//! Request rate limits (`[rate_limits]`) and `GET /v1/usage`.
//!
//! The middleware authenticates the request once (the handlers reuse the
//! [`Caller`] it leaves in the request's extensions), sorts it into a class —
//! `messages` (posting a message, a ticket, an analysis or a chat completion),
//! `uploads` (documents) or `reads` (everything else) — and checks the tenant's
//! and the user's GCRA rules of that class on the configured [`RateLimiter`]
//! (in process, or Redis shared by every replica). Refused requests get `429
//! rate_limited` with `Retry-After`; every limited response carries
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds).
//! Unauthenticated requests pass to the handler, which refuses them. When the
//! limiter's store fails, requests pass (logged): an outage of Redis must not
//! take the API down with it.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_core::gateway_config::{RateLimitsConfig, RequestClass};
use cairn_core::ports::{RateDecision, RateLimiter, RateRule, TokenBudget};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The limits and where they are counted.
pub struct RequestLimits {
    /// `[rate_limits]`.
    pub config: RateLimitsConfig,
    /// The GCRA store.
    pub limiter: Arc<dyn RateLimiter>,
}

/// The class of a request.
pub fn classify(method: &Method, path: &str) -> RequestClass {
    // Inside the `/v1` router the prefix is already stripped.
    let path = path.trim_end_matches('/');
    let path = path.strip_prefix("/v1").unwrap_or(path);
    if *method == Method::POST {
        if path == "/documents" {
            return RequestClass::Uploads;
        }
        if path.ends_with("/messages")
            || matches!(path, "/tickets" | "/analyze" | "/chat/completions")
        {
            return RequestClass::Messages;
        }
    }
    RequestClass::Reads
}

/// The rules a caller's request of `class` must pass.
pub fn rules(config: &RateLimitsConfig, caller: &Caller, class: RequestClass) -> Vec<RateRule> {
    let limits = config.limits(caller.tenant.as_str(), class);
    let mut out = Vec::with_capacity(2);
    if limits.tenant.per_minute > 0 {
        out.push(RateRule {
            key: format!("{}:{}", caller.tenant, class.as_str()),
            per_minute: limits.tenant.per_minute,
            burst: limits.tenant.burst.max(1),
        });
    }
    if limits.user.per_minute > 0 {
        out.push(RateRule {
            key: format!("{}/{}:{}", caller.tenant, caller.user, class.as_str()),
            per_minute: limits.user.per_minute,
            burst: limits.user.burst.max(1),
        });
    }
    out
}

fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn set_headers(headers: &mut HeaderMap, d: &RateDecision) {
    let mut put = |name: &'static str, v: u64| {
        if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
            headers.insert(name, v);
        }
    };
    put("ratelimit-limit", u64::from(d.limit));
    put("ratelimit-remaining", u64::from(d.remaining));
    put("ratelimit-reset", secs_up(d.reset));
    if let Some(retry) = d.retry_after {
        put("retry-after", secs_up(retry).max(1));
    }
}

/// Checks `caller`'s limits of `class`. `Ok(None)` when nothing limits it (off,
/// no rule, or the limiter's store failing); `Err` is the `rate_limited` error
/// with the decision its `RateLimit-*` headers come from.
pub async fn check(
    state: &AppState,
    caller: &Caller,
    class: RequestClass,
) -> Result<Option<RateDecision>, (ApiError, RateDecision)> {
    let Some(limits) = state.limits.as_ref().filter(|l| l.config.enabled) else {
        return Ok(None);
    };
    let rules = rules(&limits.config, caller, class);
    if rules.is_empty() {
        return Ok(None);
    }
    match limits.limiter.check(&rules).await {
        Ok(d) if d.allowed => Ok(Some(d)),
        Ok(d) => {
            crate::metrics::rate_limited(class);
            let retry = d.retry_after.map(secs_up).unwrap_or(1).max(1);
            let error = ApiError::new(
                ErrorCode::RateLimited,
                format!("too many {} requests; retry in {retry} s", class.as_str()),
            )
            .with_details(json!({
                "class": class.as_str(),
                "limit": d.limit,
                "retry_after_seconds": retry,
            }));
            Err((error, d))
        }
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter unavailable; letting the request pass");
            Ok(None)
        }
    }
}

/// The rate-limit middleware of the `/v1` routes.
pub async fn middleware(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Ok(caller) = state.auth.caller(request.headers()).await else {
        return next.run(request).await;
    };
    let class = classify(request.method(), request.uri().path());
    let decision = match check(&state, &caller, class).await {
        Ok(d) => d,
        Err((error, d)) => {
            let mut response = error.into_response();
            set_headers(response.headers_mut(), &d);
            return response;
        }
    };
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    if let Some(d) = decision {
        set_headers(response.headers_mut(), &d);
    }
    response
}

/// `GET /v1/usage`: the caller's tenant's token use and budget for today and
/// this month (UTC).
#[utoipa::path(get, path = "/usage", tag = "gateway", summary = "Token use and budgets of the caller's tenant", responses((status = 200, description = "Today's and this month's use and limits", body = serde_json::Value)))]
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    let Some(budget) = &state.budget else {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "token usage is not recorded by this server",
        ));
    };
    let totals = budget
        .budget
        .totals(&caller.tenant)
        .await
        .map_err(|e| ApiError::unavailable("the usage store", &e))?;
    let limits = budget.config.limits(caller.tenant.as_str());
    let limit = |v: u64| if v == 0 { json!(null) } else { json!(v) };
    let now = chrono::Utc::now();
    Ok(Json(json!({
        "tenant": caller.tenant.as_str(),
        "day": {
            "date": now.format("%Y-%m-%d").to_string(),
            "input_tokens": totals.day.input_tokens,
            "output_tokens": totals.day.output_tokens,
            "input_tokens_limit": limit(limits.daily_input_tokens),
            "output_tokens_limit": limit(limits.daily_output_tokens),
        },
        "month": {
            "month": now.format("%Y-%m").to_string(),
            "input_tokens": totals.month.input_tokens,
            "output_tokens": totals.month.output_tokens,
            "input_tokens_limit": limit(limits.monthly_input_tokens),
            "output_tokens_limit": limit(limits.monthly_output_tokens),
        },
    })))
}

/// The token budget and its limits, for `/v1/usage`.
pub struct Budget {
    /// Where usage is counted.
    pub budget: Arc<dyn TokenBudget>,
    /// `[budgets]`.
    pub config: cairn_core::gateway_config::BudgetsConfig,
}
