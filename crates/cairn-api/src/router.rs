//! The router: every route, the body limit, the error contract for unknown
//! routes and methods, and `X-Request-Id`.

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::{
    alerts, conversations, desk, documents, events, health, insights, limits, messages, metrics,
    openai, request_id, search, tools, ws,
};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}

/// Builds the API router.
pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    let v1 = Router::new()
        .route(
            "/conversations",
            get(conversations::list).post(conversations::create),
        )
        .route(
            "/conversations/{id}",
            get(conversations::get).delete(conversations::delete),
        )
        .route(
            "/conversations/{id}/messages",
            get(messages::list).post(messages::post),
        )
        .route("/conversations/{id}/events", get(events::stream))
        .route("/conversations/{id}/ws", get(ws::native))
        .route("/ws-ticket", post(ws::ticket))
        .route(
            "/conversations/{id}/insights",
            get(insights::conversation_insights),
        )
        .route("/messages", post(insights::post_message))
        .route("/tickets", post(desk::post_ticket).get(desk::list_tickets))
        .route(
            "/tickets/{id}",
            get(desk::get_ticket).patch(desk::patch_ticket),
        )
        .route("/categories", get(desk::categories))
        .route("/sentiments", get(desk::sentiments))
        .route("/conversations/{id}/feedback", post(desk::post_feedback))
        .route("/feedback/summary", get(desk::satisfaction))
        .route("/analytics/overview", get(desk::overview))
        .route("/analytics/intents", get(desk::intents))
        .route("/analytics/satisfaction", get(desk::satisfaction))
        .route("/analytics/tickets", get(desk::ticket_analytics))
        .route("/analyze", post(insights::analyze))
        .route("/search", get(search::search))
        .route(
            "/documents",
            // Uploads may be larger than other bodies: the document limit plus
            // room for the multipart framing and fields.
            post(documents::create)
                .layer(DefaultBodyLimit::max(
                    state.settings.max_document_bytes.saturating_add(64 * 1024),
                ))
                .get(documents::list),
        )
        .route("/alerts", get(alerts::list).post(alerts::raise))
        .route("/alerts/notifications", get(alerts::notifications))
        .route("/alerts/test", post(alerts::test))
        .route(
            "/silences",
            get(alerts::silences).post(alerts::create_silence),
        )
        .route(
            "/silences/{id}",
            get(alerts::get_silence).delete(alerts::expire_silence),
        )
        .route("/usage", get(limits::usage))
        .route("/chat/completions", post(openai::chat_completions))
        .route("/models", get(openai::models))
        .route("/tools", get(tools::list))
        .route("/admin/tools/reload", post(tools::reload))
        .route(
            "/documents/{id}",
            get(documents::get).delete(documents::delete),
        )
        .route_layer(axum::middleware::from_fn(metrics::tag_route));
    let mcp = Router::new()
        .nest_service("/mcp", crate::mcp::service(state.clone()))
        .layer(axum::middleware::from_fn(crate::mcp::session_delete_ok))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::mcp::require_token,
        ));
    let mut root = Router::new()
        .route("/ws/conversations/{id}/stream", get(ws::seed))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/live", get(health::live));
    if state.settings.metrics {
        root = root.route("/metrics", get(metrics::render));
    }
    let limited = Router::new()
        .nest("/v1", v1)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::middleware,
        ));
    let mut app = root
        .route_layer(axum::middleware::from_fn(metrics::tag_route))
        .merge(limited)
        .merge(mcp)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit));
    if state.settings.metrics {
        app = app.layer(axum::middleware::from_fn(metrics::middleware));
    }
    app = app.layer(axum::middleware::from_fn(request_id::middleware));
    if let Some(cors) = crate::cors::layer(&state.settings.cors) {
        app = app.layer(cors);
    }
    app.with_state(state)
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
