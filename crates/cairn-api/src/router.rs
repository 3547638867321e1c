//! The router: every route, the body limit, the error contract for unknown
//! routes and methods, and `X-Request-Id`.

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::{
    alerts, approvals, control, conversations, desk, documents, events, fork, health, insights,
    limits, messages, metrics, openai, request_id, schedules, search, tools, ws,
};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}

/// Builds the API router. Every route is registered through the OpenAPI
/// router ([`utoipa_axum`]), so `/openapi.json` describes exactly what is
/// served (plus `/mcp`, a service documented by hand).
pub fn router(state: AppState) -> Router {
    let (router, doc) = documented(&state);
    let doc = crate::openapi::Doc::new(doc);
    let limit = state.settings.max_body_bytes;
    let mcp = Router::new()
        .nest_service("/mcp", crate::mcp::service(state.clone()))
        .layer(axum::middleware::from_fn(crate::mcp::session_delete_ok))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::mcp::require_token,
        ));
    let mut app = router
        .merge(mcp)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(doc));
    if state.settings.metrics {
        app = app.layer(axum::middleware::from_fn(metrics::middleware));
    }
    app = app.layer(axum::middleware::from_fn(request_id::middleware));
    if let Some(cors) = crate::cors::layer(&state.settings.cors) {
        app = app.layer(cors);
    }
    app.with_state(state)
}

/// The routes with their OpenAPI description (finished by [`crate::openapi::finish`]).
pub fn documented(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    // Uploads may be larger than other bodies: the document limit plus room for
    // the multipart framing and fields.
    let (schemas, paths, upload) = routes!(documents::create);
    let upload = upload.layer(DefaultBodyLimit::max(
        state.settings.max_document_bytes.saturating_add(64 * 1024),
    ));
    let v1 = OpenApiRouter::new()
        .routes(routes!(conversations::list, conversations::create))
        .routes(routes!(conversations::get, conversations::delete))
        .routes(routes!(messages::list, messages::post))
        .routes(routes!(events::stream))
        .routes(routes!(fork::fork))
        .routes(routes!(fork::steps))
        .routes(routes!(control::cancel))
        .routes(routes!(approvals::list))
        .routes(routes!(approvals::post))
        .routes(routes!(schedules::create, schedules::list))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(schedules::delete))
        .routes(routes!(ws::native))
        .routes(routes!(ws::ticket))
        .routes(routes!(insights::conversation_insights))
        .routes(routes!(insights::post_message))
        .routes(routes!(desk::post_ticket, desk::list_tickets))
        .routes(routes!(desk::get_ticket, desk::patch_ticket))
        .routes(routes!(desk::categories))
        .routes(routes!(desk::sentiments))
        .routes(routes!(desk::post_feedback))
        .routes(routes!(desk::feedback_summary))
        .routes(routes!(desk::overview))
        .routes(routes!(desk::intents))
        .routes(routes!(desk::satisfaction))
        .routes(routes!(desk::ticket_analytics))
        .routes(routes!(insights::analyze))
        .routes(routes!(search::search))
        .routes((schemas, paths, upload))
        .routes(routes!(documents::list))
        .routes(routes!(documents::get, documents::delete))
        .routes(routes!(alerts::list, alerts::raise))
        .routes(routes!(alerts::notifications))
        .routes(routes!(alerts::test))
        .routes(routes!(alerts::silences, alerts::create_silence))
        .routes(routes!(alerts::get_silence, alerts::expire_silence))
        .routes(routes!(limits::usage))
        .routes(routes!(openai::chat_completions))
        .routes(routes!(openai::models))
        .routes(routes!(tools::list))
        .routes(routes!(tools::reload))
        .route_layer(axum::middleware::from_fn(metrics::tag_route))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::middleware,
        ));
    let mut root = OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(ws::seed))
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::live))
        .routes(routes!(crate::openapi::json))
        .routes(routes!(crate::openapi::docs))
        .routes(routes!(crate::openapi::docs_script))
        .routes(routes!(crate::console::page))
        .routes(routes!(crate::console::script))
        .routes(routes!(crate::console::style))
        .routes(routes!(crate::console::config));
    if state.settings.metrics {
        root = root.routes(routes!(metrics::render));
    }
    let (router, doc) = root
        .route_layer(axum::middleware::from_fn(metrics::tag_route))
        .nest("/v1", v1)
        .split_for_parts();
    (router, crate::openapi::finish(doc))
}

/// The router of a worker-only process: `/health`, `/ready` and `/live`.
pub fn health_router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/live", get(health::live))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request_id::middleware))
        .with_state(state)
}
