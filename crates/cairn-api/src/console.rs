//! The web console at `/console`: a single page for support teams and
//! developers (conversations with the streamed answer and the step timeline,
//! insights, documents, tools and alerts), written in plain JavaScript modules
//! and CSS with no build step and embedded in the binary from
//! `assets/console/`. It talks to the same `/v1` API as any client, with the
//! token the user signs in with; nothing is fetched from elsewhere.
//!
//! Every console response carries a strict Content-Security-Policy (scripts,
//! styles and connections from this origin only, no inline script, no framing).
//! `GET /console/config.json` gives the page what it needs before sign-in: in
//! development mode only (no `[auth]` configured, a generated secret), the
//! development token, so a local user can sign in with one click.

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

const INDEX: &str = include_str!("../assets/console/index.html");
const SCRIPT: &str = include_str!("../assets/console/app.js");
const STYLE: &str = include_str!("../assets/console/app.css");

/// The console's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /console`: the page.
#[utoipa::path(get, path = "/console", tag = "console", summary = "The web console (HTML)", security(()), responses((status = 200, description = "An HTML page")))]
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /console/app.js`: the console's script (an ES module).
#[utoipa::path(get, path = "/console/app.js", tag = "console", summary = "The web console's script", security(()), responses((status = 200, description = "JavaScript")))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /console/app.css`: the console's styles.
#[utoipa::path(get, path = "/console/app.css", tag = "console", summary = "The web console's styles", security(()), responses((status = 200, description = "CSS")))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /console/config.json`: `{"dev_token": …}` — the development token in
/// development mode, else null.
#[utoipa::path(get, path = "/console/config.json", tag = "console", summary = "What the console needs before sign-in (the development token in development mode only)", security(()), responses((status = 200, description = "`dev_token`: string or null", body = serde_json::Value)))]
pub async fn config(State(state): State<AppState>) -> Response {
    let mut r = Json(json!({ "dev_token": state.console_token.as_deref() })).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}
