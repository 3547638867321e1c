//! The OpenAPI 3.1 description of the API, generated from the handlers'
//! `#[utoipa::path]` annotations as the router registers them
//! ([`crate::router::documented`]), and finished here: the bearer-JWT security
//! scheme (required everywhere but the health, metrics and documentation
//! routes), the error contract (`Error` schema whose `code` lists every
//! [`ErrorCode`], and the error responses each operation can give), and `/mcp`.
//!
//! Served at `GET /openapi.json`; `GET /docs` is an interactive reference
//! (RapiDoc 9.3.8, MIT, embedded in the binary from `assets/`; nothing is
//! fetched from a CDN).

use crate::error::ErrorCode;
use axum::Extension;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, PathItem};
use utoipa::openapi::response::{Response as ApiResponse, ResponseBuilder};
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr};

/// The RapiDoc bundle (gzip).
const RAPIDOC_GZ: &[u8] = include_bytes!("../assets/rapidoc-min.js.gz");

/// The finished document, shared by the handlers.
#[derive(Clone)]
pub struct Doc(Arc<String>);

impl Doc {
    /// Serialises `doc` once.
    pub fn new(doc: OpenApi) -> Self {
        Self(Arc::new(doc.to_json().unwrap_or_else(|_| "{}".into())))
    }
}

/// The document's info and security scheme, before the routes add paths.
pub fn base() -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Cairn API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Agents that answer questions: conversations, streaming (SSE and \
                     WebSocket), knowledge, tools, alerts, support intelligence, the support \
                     desk, and an OpenAI-compatible facade. Every error body is \
                     `{\"error\": {\"code\", \"message\", \"details\", \"request_id\"}}`; the \
                     code alone decides the status.",
                ))
                .build(),
        )
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "HS256 with the configured secret, or RS/PS/ES/EdDSA from auth.jwks_url",
                ))
                .build(),
        ),
    );
    doc.security = Some(vec![SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    doc
}

fn error_schema() -> Schema {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let table: String = ErrorCode::ALL
        .iter()
        .map(|c| format!("`{}` ({})", c.as_str(), c.status().as_u16()))
        .collect::<Vec<_>>()
        .join(", ");
    let code = ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::String))
        .enum_values(Some(codes))
        .description(Some(format!("Stable error code: {table}")))
        .build();
    let inner = ObjectBuilder::new()
        .property("code", code)
        .required("code")
        .property(
            "message",
            ObjectBuilder::new().schema_type(SchemaType::new(Type::String)),
        )
        .required("message")
        .property("details", Object::new())
        .property(
            "request_id",
            ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Null])),
        )
        .build();
    Schema::Object(
        ObjectBuilder::new()
            .property("error", inner)
            .required("error")
            .build(),
    )
}

fn error_response(description: &str) -> RefOr<ApiResponse> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(RefOr::Ref(Ref::from_schema_name("Error")))),
            )
            .build(),
    )
}

/// The error statuses an operation can answer with.
fn errors_of(path: &str, method: &HttpMethod, secured: bool) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if secured {
        out.push(("401", "missing_token, invalid_token, token_expired"));
        out.push(("403", "forbidden"));
        out.push((
            "429",
            "rate_limited (with Retry-After), queue_full, too_many_conversations, too_many_streams, budget_exceeded",
        ));
    }
    if path.contains('{') {
        out.push((
            "404",
            "conversation_not_found, ticket_not_found, silence_not_found, not_found",
        ));
    }
    if matches!(method, HttpMethod::Post | HttpMethod::Patch) {
        out.push(("400", "malformed_json, invalid_field"));
        out.push(("413", "payload_too_large"));
        out.push(("415", "unsupported_media_type"));
        out.push(("422", "missing_field"));
    } else if secured {
        out.push(("400", "invalid_field"));
    }
    out.push(("500", "internal"));
    out.push(("503", "unavailable"));
    out
}

fn operations(item: &mut PathItem) -> Vec<(HttpMethod, &mut Operation)> {
    let mut out = Vec::new();
    for (m, op) in [
        (HttpMethod::Get, item.get.as_mut()),
        (HttpMethod::Post, item.post.as_mut()),
        (HttpMethod::Patch, item.patch.as_mut()),
        (HttpMethod::Delete, item.delete.as_mut()),
        (HttpMethod::Put, item.put.as_mut()),
    ] {
        if let Some(op) = op {
            out.push((m, op));
        }
    }
    out
}

/// Adds the error contract and `/mcp` to the generated document.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert("Error".into(), RefOr::T(error_schema()));
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations(item) {
            // Handler names repeat across modules (`list`): ids are `tag_name`.
            if let (Some(tag), Some(id)) = (
                op.tags.as_ref().and_then(|t| t.first()).cloned(),
                op.operation_id.clone(),
            ) {
                op.operation_id = Some(format!("{tag}_{id}"));
            }
            // `security(())` in an annotation marks a public route.
            let secured = op.security.as_ref().is_none_or(|s| {
                !s.iter().all(|r| {
                    serde_json::to_value(r)
                        .is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
                })
            });
            for (status, codes) in errors_of(path, &method, secured) {
                op.responses
                    .responses
                    .entry(status.into())
                    .or_insert_with(|| error_response(codes));
            }
        }
    }
    let mcp = |summary: &str| {
        OperationBuilder::new()
            .tag("mcp")
            .summary(Some(summary))
            .description(Some(
                "Cairn as an MCP server (streamable HTTP, JSON-RPC 2.0): tools `ask` and \
                 `search_knowledge`. Authenticated with the same bearer JWT.",
            ))
            .response(
                "200",
                ResponseBuilder::new().description("JSON-RPC response or SSE stream"),
            )
            .response(
                "401",
                error_response("missing_token, invalid_token, token_expired"),
            )
            .build()
    };
    let mut item = PathItem::new(HttpMethod::Post, mcp("MCP requests (JSON-RPC)"));
    item.get = Some(mcp("MCP server-to-client stream"));
    item.delete = Some(mcp("End an MCP session"));
    doc.paths.paths.insert("/mcp".into(), item);
    doc
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "docs", summary = "This document (OpenAPI 3.1)", security(()), responses((status = 200, description = "The OpenAPI document", body = serde_json::Value)))]
pub async fn json(Extension(doc): Extension<Doc>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_owned(),
    )
        .into_response()
}

/// `GET /docs`: the interactive reference.
#[utoipa::path(get, path = "/docs", tag = "docs", summary = "Interactive API reference", security(()), responses((status = 200, description = "An HTML page")))]
pub async fn docs() -> Response {
    const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Cairn API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<script type="module" src="/docs/rapidoc-min.js"></script></head>
<body><rapi-doc spec-url="/openapi.json" render-style="read" show-header="false"
 allow-authentication="true" allow-server-selection="false" theme="light"
 schema-style="table" allow-spec-url-load="false" allow-spec-file-load="false"></rapi-doc>
</body></html>"#;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /docs/rapidoc-min.js`: the reference page's script, from the binary.
#[utoipa::path(get, path = "/docs/rapidoc-min.js", tag = "docs", summary = "The reference page's script (RapiDoc, embedded)", security(()), responses((status = 200, description = "JavaScript")))]
pub async fn docs_script(headers: HeaderMap) -> Response {
    let gzip_ok = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let mut response = if gzip_ok {
        (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            RAPIDOC_GZ,
        )
            .into_response()
    } else {
        use std::io::Read;
        let mut js = Vec::new();
        let _ = flate2::read::GzDecoder::new(RAPIDOC_GZ).read_to_end(&mut js);
        (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            js,
        )
            .into_response()
    };
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("public, max-age=86400"),
    );
    response
}
