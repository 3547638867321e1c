//! CORS for browser frontends (`[cors]`): the configured origins may call the
//! API with the `Authorization` header; preflight answers are cached for
//! `cors.max_age`. No origin is allowed unless configured, and credentials
//! (cookies) are never allowed: Cairn authenticates with bearer tokens.

use axum::http::{HeaderName, HeaderValue, Method, header};
use cairn_core::gateway_config::CorsConfig;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The CORS layer for `config` (`None` when no origin is configured).
pub fn layer(config: &CorsConfig) -> Option<CorsLayer> {
    if config.allowed_origins.is_empty() {
        return None;
    }
    let origin = if config.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-cairn-conversation"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                header::RETRY_AFTER,
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
            ])
            .max_age(config.max_age),
    )
}
