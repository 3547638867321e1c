//! `/v1/documents`: upload (multipart or JSON), list, get with job status,
//! delete. Tenant-scoped; uploads and deletes need the ingest scope
//! (`auth.ingest_scope`, default `ingest`) when one is configured.
//!
//! An upload is accepted (202) only once the document, content included, is
//! durably on the bus (`user_events`, then `ingestion_events`); the ingestion
//! actors then parse, chunk, embed and store it, writing the job status to the
//! document's record: `queued` → `parsing` → `embedding` → `done`, or `failed`
//! with a reason.
//!
//! Multipart fields: `file` (required; its file name gives the format and the
//! default source and id), and optional `document_id`, `title`, `source`,
//! `tags` (comma-separated), `date` (RFC 3339 or `YYYY-MM-DD`), `format`.
//! JSON: `{"text", "title"?, "document_id"?, "source"?, "tags"?, "date"?,
//! "format"?}` (format `markdown` by default; `text` or `html` also work).

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{parse_json, query_u64};
use crate::search::parse_date;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use cairn_core::DocumentSubmission;
use cairn_core::ports::{DocumentRecord, JobStatus};
use cairn_retrieval::formats::format_of;
use cairn_retrieval::knowledge::{content_version, document_id_from, is_document_id};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Default and largest page size of the listing.
const DEFAULT_LIMIT: u64 = 50;
const MAX_LIMIT: u64 = 200;
/// Most tags on a document, and the longest tag, title or source.
const MAX_TAGS: usize = 32;
const MAX_TEXT_FIELD: usize = 512;

/// JSON body of `POST /v1/documents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonUpload {
    text: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    document_id: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    date: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

/// An upload, whatever its encoding.
#[derive(Default)]
struct Upload {
    bytes: Vec<u8>,
    file_name: Option<String>,
    title: Option<String>,
    document_id: Option<String>,
    source: Option<String>,
    tags: Vec<String>,
    date: Option<String>,
    format: Option<String>,
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the document is larger than the {} byte limit (knowledge.max_document_bytes)",
            limit
        ),
    )
}

fn knowledge_disabled() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "the knowledge base is disabled (knowledge.enabled)",
    )
}

fn document_not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such document")
}

fn require_ingest_scope(state: &AppState, caller: &Caller) -> ApiResult<()> {
    match &state.settings.ingest_scope {
        Some(scope) if !caller.has_scope(scope) => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("adding or deleting documents needs the `{scope}` scope"),
        )),
        _ => Ok(()),
    }
}

/// The JSON form of a document record.
pub fn document_json(r: &DocumentRecord) -> Value {
    json!({
        "document_id": r.document_id,
        "title": r.title,
        "source": r.source,
        "tags": r.tags,
        "date": r.date,
        "format": r.format,
        "bytes": r.bytes,
        "chunks": r.chunks,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "job": {
            "job_id": r.job_id,
            "status": r.status,
            "outcome": r.outcome,
            "error": r.error,
        },
    })
}

fn is_multipart(req: &Request) -> Option<bool> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)?
        .to_str()
        .ok()?
        .split(';')
        .next()?
        .trim()
        .to_ascii_lowercase();
    Some(ct == "multipart/form-data")
}

async fn read_multipart(req: Request, state: &AppState, limit: usize) -> ApiResult<Upload> {
    let mut form = Multipart::from_request(req, state).await.map_err(|e| {
        ApiError::invalid_field("file", format!("cannot read the multipart body: {e}"))
    })?;
    let mut up = Upload::default();
    let mut have_file = false;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large(limit)),
            Err(e) => {
                return Err(ApiError::invalid_field(
                    "file",
                    format!("cannot read the multipart body: {e}"),
                ));
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            up.file_name = field.file_name().map(str::to_owned);
            let bytes = field.bytes().await.map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large(limit)
                } else {
                    ApiError::invalid_field("file", format!("cannot read the file: {e}"))
                }
            })?;
            up.bytes = bytes.to_vec();
            have_file = true;
            continue;
        }
        let value = field
            .text()
            .await
            .map_err(|e| ApiError::invalid_field(&name, format!("cannot read `{name}`: {e}")))?;
        match name.as_str() {
            "document_id" => up.document_id = Some(value),
            "title" => up.title = Some(value),
            "source" => up.source = Some(value),
            "tags" => up.tags = value.split(',').map(str::to_owned).collect(),
            "date" => up.date = Some(value),
            "format" => up.format = Some(value),
            other => {
                return Err(ApiError::invalid_field(
                    other,
                    format!(
                        "unknown field `{other}` (file, document_id, title, source, tags, date, format)"
                    ),
                ));
            }
        }
    }
    if !have_file {
        return Err(ApiError::new(
            ErrorCode::MissingField,
            "the multipart field `file` is required",
        )
        .with_details(json!({"field": "file"})));
    }
    Ok(up)
}

async fn read_json(req: Request, state: &AppState, limit: usize) -> ApiResult<Upload> {
    let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            ApiError::new(
                ErrorCode::MalformedJson,
                format!("cannot read the body: {rej}"),
            )
        }
    })?;
    let body: JsonUpload = parse_json(&bytes)?;
    Ok(Upload {
        bytes: body.text.into_bytes(),
        file_name: None,
        title: body.title,
        document_id: body.document_id,
        source: body.source,
        tags: body.tags,
        date: body.date,
        format: Some(body.format.unwrap_or_else(|| "markdown".into())),
    })
}

fn clean(field: &str, v: Option<String>) -> ApiResult<Option<String>> {
    let v = v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    if v.as_ref()
        .is_some_and(|s| s.chars().count() > MAX_TEXT_FIELD)
    {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` is longer than {MAX_TEXT_FIELD} characters"),
        ));
    }
    Ok(v)
}

/// `POST /v1/documents`.
#[utoipa::path(post, path = "/documents", tag = "knowledge", summary = "Upload a document (multipart/form-data: `file`, optional `title`, `tags`, `document_id`)", responses((status = 202, description = "Accepted: the document and its ingestion job", body = serde_json::Value)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> ApiResult<Response> {
    let Some(documents) = state.documents.clone() else {
        return Err(knowledge_disabled());
    };
    require_ingest_scope(&state, &caller)?;
    let limit = state.settings.max_document_bytes;
    let up = match is_multipart(&req) {
        Some(true) => read_multipart(req, &state, limit).await?,
        Some(false) | None => {
            let json = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
            if !json {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "send the document as multipart/form-data (field `file`) or application/json",
                ));
            }
            read_json(req, &state, limit).await?
        }
    };
    if up.bytes.len() > limit {
        return Err(too_large(limit));
    }
    if up.bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_field("file", "the document is empty"));
    }
    let extension = up
        .file_name
        .as_deref()
        .and_then(|n| n.rsplit_once('.').map(|(_, e)| e.to_owned()));
    let format = match up.format.as_deref().or(extension.as_deref()) {
        Some(f) => format_of(f).ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("unsupported document type `{f}` (supported: md, txt, html, pdf, docx)"),
            )
            .with_details(json!({"field": "format"}))
        })?,
        None => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "cannot tell the document's type: give the file a name with an extension (.md, .txt, .html, .pdf, .docx) or a `format`",
            )
            .with_details(json!({"field": "format"})));
        }
    };
    let title = clean("title", up.title)?;
    let source = clean("source", up.source)?.or(up.file_name.clone());
    let tags: Vec<String> = up
        .tags
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if tags.len() > MAX_TAGS || tags.iter().any(|t| t.chars().count() > 64) {
        return Err(ApiError::invalid_field(
            "tags",
            format!("at most {MAX_TAGS} tags of at most 64 characters"),
        ));
    }
    let date: Option<DateTime<Utc>> = match clean("date", up.date)? {
        Some(d) => Some(parse_date(&d).ok_or_else(|| {
            ApiError::invalid_field(
                "date",
                "`date` must be an RFC 3339 instant or a YYYY-MM-DD date",
            )
        })?),
        None => None,
    };
    let document_id = match clean("document_id", up.document_id)? {
        Some(id) if is_document_id(&id) => id,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "document_id",
                "`document_id` must be 1-128 letters, digits, `-`, `_` or `.`",
            ));
        }
        None => match &source {
            Some(s) => document_id_from(s),
            None => format!(
                "doc-{}",
                content_version(&String::from_utf8_lossy(&up.bytes))
            ),
        },
    };
    let previous = documents.get_document(&caller.tenant, &document_id).await?;
    let now = Utc::now();
    let job_id = uuid::Uuid::now_v7().to_string();
    let record = DocumentRecord {
        document_id: document_id.clone(),
        title: title.clone(),
        source: source.clone(),
        tags: tags.clone(),
        date,
        format: format.to_owned(),
        bytes: up.bytes.len() as u64,
        job_id: job_id.clone(),
        status: JobStatus::Queued,
        outcome: None,
        error: None,
        chunks: None,
        created_at: previous.as_ref().map_or(now, |p| p.created_at),
        updated_at: now,
    };
    documents.put_document(&caller.tenant, &record).await?;
    let submission = DocumentSubmission {
        document_id: document_id.clone(),
        job_id: job_id.clone(),
        format: format.to_owned(),
        title,
        source,
        tags,
        date,
        content_base64: base64::engine::general_purpose::STANDARD.encode(&up.bytes),
    };
    if let Err(e) = state
        .runtime
        .submit_document(
            &caller.tenant,
            &submission,
            Some(&crate::request_id::traceparent()),
        )
        .await
    {
        // Not accepted. The record is undone only while it is still this
        // upload's (`update_job` compares the job id), so a concurrent upload
        // of the same document that was accepted is never overwritten. A
        // finished previous version comes back (under this job id, which
        // never ran); otherwise (a new document, or an earlier upload still in
        // flight, whose job may already have been skipped as stale) this job
        // is recorded as failed with the reason, never left `queued`.
        let undo = match previous.filter(|p| p.status.is_terminal()) {
            Some(p) => DocumentRecord {
                job_id: job_id.clone(),
                updated_at: Utc::now(),
                ..p
            },
            None => DocumentRecord {
                status: JobStatus::Failed,
                error: Some(
                    "the upload was not accepted (the event bus was unavailable); upload it again"
                        .to_owned(),
                ),
                updated_at: Utc::now(),
                ..record
            },
        };
        if let Err(r) = documents.update_job(&caller.tenant, &undo).await {
            tracing::error!(error = %r, document = %document_id, "cannot undo a document record after a refused upload");
        }
        return Err(ApiError::unavailable("the event bus", &e));
    }
    tracing::info!(document = %document_id, job = %job_id, bytes = record.bytes, format, "document accepted");
    let body = json!({
        "document_id": document_id,
        "job_id": job_id,
        "status": JobStatus::Queued,
        "document_url": format!("/v1/documents/{document_id}"),
    });
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/documents/{document_id}"))],
        Json(body),
    )
        .into_response())
}

/// `GET /v1/documents?limit=&after=`.
#[utoipa::path(get, path = "/documents", tag = "knowledge", summary = "List documents", responses((status = 200, description = "Documents", body = serde_json::Value)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let Some(documents) = state.documents.as_ref() else {
        return Err(knowledge_disabled());
    };
    let limit = query_u64(&q, "limit")?.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::invalid_field(
            "limit",
            format!("`limit` must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let after = q.get("after").map(String::as_str).filter(|s| !s.is_empty());
    let page = documents
        .list_documents(&caller.tenant, after, limit as usize + 1)
        .await?;
    let more = page.len() > limit as usize;
    let items: Vec<Value> = page
        .iter()
        .take(limit as usize)
        .map(document_json)
        .collect();
    let next = more.then(|| page[limit as usize - 1].document_id.clone());
    Ok(Json(json!({ "items": items, "next_cursor": next })))
}

/// `GET /v1/documents/{id}`.
#[utoipa::path(get, path = "/documents/{id}", tag = "knowledge", summary = "Read a document and its job status", params(("id" = String, Path, description = "Document id")), responses((status = 200, description = "The document", body = serde_json::Value)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let Some(documents) = state.documents.as_ref() else {
        return Err(knowledge_disabled());
    };
    let record = documents
        .get_document(&caller.tenant, &id)
        .await?
        .ok_or_else(document_not_found)?;
    Ok(Json(document_json(&record)))
}

/// `DELETE /v1/documents/{id}`: the record and every chunk, at once.
#[utoipa::path(delete, path = "/documents/{id}", tag = "knowledge", summary = "Delete a document and its chunks", params(("id" = String, Path, description = "Document id")), responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (Some(documents), Some(kb)) = (state.documents.as_ref(), state.knowledge.as_ref()) else {
        return Err(knowledge_disabled());
    };
    require_ingest_scope(&state, &caller)?;
    let had_record = documents.delete_document(&caller.tenant, &id).await?;
    // Documents ingested with `cairn ingest` have chunks but no record; only
    // then are the chunks counted.
    let existed = had_record
        || kb
            .count(&caller.tenant, &id)
            .await
            .map_err(|e| ApiError::unavailable("the knowledge store", &e))?
            > 0;
    if !existed {
        return Err(document_not_found());
    }
    kb.delete(&caller.tenant, &id)
        .await
        .map_err(|e| ApiError::unavailable("the knowledge store", &e))?;
    tracing::info!(document = %id, "document deleted");
    Ok(StatusCode::NO_CONTENT)
}
