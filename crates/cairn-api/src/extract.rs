//! Request parsing that speaks the error contract: JSON bodies (malformed JSON,
//! missing fields, wrong types, wrong content type and oversized bodies each get
//! their own code), identifiers in paths, and query strings as pairs.

use crate::error::{ApiError, ErrorCode};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::json;

/// A JSON body of type `T`. An empty body parses as `{}` when `T` allows it.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let mime = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            });
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large")
            } else {
                ApiError::new(
                    ErrorCode::MalformedJson,
                    format!("cannot read the body: {rej}"),
                )
            }
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            if is_json == Some(false) {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "send the body as application/json",
                ));
            }
            &bytes
        };
        parse_json(text).map(JsonBody)
    }
}

/// Parses JSON into `T`, telling syntax errors from missing or bad fields.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        )
        .with_details(json!({"line": e.line(), "column": e.column()}))
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if let Some(rest) = inner.strip_prefix("missing field `") {
            let field = rest.split('`').next().unwrap_or_default();
            let full = if path == "." {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            ApiError::new(
                ErrorCode::MissingField,
                format!("the field `{full}` is required"),
            )
            .with_details(json!({ "field": full }))
        } else {
            ApiError::new(ErrorCode::InvalidField, format!("`{path}`: {inner}"))
                .with_details(json!({ "field": path }))
        }
    })
}

/// Parses a conversation id from a path; a malformed id cannot exist, so it is
/// reported as not found.
pub fn conversation_id(raw: &str) -> Result<cairn_core::ConversationId, ApiError> {
    cairn_core::ConversationId::parse(raw).map_err(|_| ApiError::conversation_not_found())
}

/// Parses an optional unsigned query parameter.
pub fn query_u64(
    q: &std::collections::HashMap<String, String>,
    name: &str,
) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidField,
                    format!("`{name}` must be a non-negative integer"),
                )
                .with_details(json!({ "field": name }))
            })
        })
        .transpose()
}

/// A query string as (name, value) pairs, decoded, repeated names kept.
pub fn query_pairs(raw: Option<String>) -> Vec<(String, String)> {
    raw.map(|q| {
        form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// The first value of `name` among `pairs`.
pub fn first_param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
