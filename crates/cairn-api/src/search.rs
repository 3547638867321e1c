//! `GET /v1/search`: ranked chunks of the caller's tenant, with scores and
//! citations. Query parameters: `q` (required), `limit` (1–50, default 5),
//! `mode` (`hybrid` default, `dense`, `sparse`), and repeatable-by-comma filters
//! `document_id`, `source`, `tag`, and `after` / `before` (RFC 3339 instants or
//! `YYYY-MM-DD` dates; `after` inclusive, `before` exclusive) on the document date.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::query_u64;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Query, State};
use cairn_core::ports::{SearchFilter, SearchMode, VectorError};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::HashMap;

fn list(q: &HashMap<String, String>, name: &str) -> Vec<String> {
    q.get(name)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// An RFC 3339 instant or a `YYYY-MM-DD` date (midnight UTC) from the query.
pub(crate) fn query_date(
    q: &HashMap<String, String>,
    name: &str,
) -> ApiResult<Option<DateTime<Utc>>> {
    let Some(raw) = q.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    parse_date(raw).map(Some).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidField,
            format!("`{name}` must be an RFC 3339 instant or a YYYY-MM-DD date"),
        )
        .with_details(json!({"field": name}))
    })
}

/// Parses an RFC 3339 instant or a `YYYY-MM-DD` date (midnight UTC).
pub fn parse_date(raw: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
}

/// `GET /v1/search`.
#[utoipa::path(get, path = "/search", tag = "knowledge", summary = "Hybrid search over the knowledge base", params(("q" = String, Query, description = "The query"), ("limit" = Option<u64>, Query)), responses((status = 200, description = "Passages with scores", body = serde_json::Value)))]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let Some(kb) = state.knowledge.as_ref() else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "the knowledge base is disabled (knowledge.enabled)",
        ));
    };
    let text = q
        .get("q")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingField,
                "the query parameter `q` is required",
            )
            .with_details(json!({"field": "q"}))
        })?;
    let limit = query_u64(&q, "limit")?.unwrap_or(5);
    if limit == 0 || limit > 50 {
        return Err(
            ApiError::new(ErrorCode::InvalidField, "`limit` must be between 1 and 50")
                .with_details(json!({"field": "limit"})),
        );
    }
    let mode = match q.get("mode").map(String::as_str) {
        None | Some("hybrid") => SearchMode::Hybrid,
        Some("dense") => SearchMode::Dense,
        Some("sparse") => SearchMode::Sparse,
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "`mode` must be hybrid, dense or sparse",
            )
            .with_details(json!({"field": "mode"})));
        }
    };
    let filter = SearchFilter {
        document_ids: list(&q, "document_id"),
        sources: list(&q, "source"),
        tags: list(&q, "tag"),
        after: query_date(&q, "after")?,
        before: query_date(&q, "before")?,
    };
    let hits = kb
        .search(&caller.tenant, text, mode, filter, limit as usize)
        .await
        .map_err(|e| match e {
            VectorError::Invalid(m) => {
                ApiError::new(ErrorCode::InvalidField, m).with_details(json!({"field": "mode"}))
            }
            other => ApiError::unavailable("the knowledge store", &other),
        })?;
    let items: Vec<Value> = hits
        .iter()
        .map(|h| {
            json!({
                "score": h.score,
                "document_id": h.chunk.document_id,
                "title": h.chunk.title,
                "section": h.chunk.section_path.join(" > "),
                "text": h.chunk.text,
                "start": h.chunk.start,
                "end": h.chunk.end,
                "page": h.chunk.page,
                "source": h.chunk.source,
                "tags": h.chunk.tags,
                "date": h.chunk.date,
            })
        })
        .collect();
    Ok(Json(json!({
        "items": items,
        "mode": if kb.has_dense() || mode == SearchMode::Sparse { mode } else { SearchMode::Sparse },
    })))
}
