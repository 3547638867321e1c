//! `/health` (every component's status), `/ready` (can take traffic), `/live`
//! (the process runs). None of them needs a token.

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

async fn components(state: &AppState) -> (bool, Value) {
    let memory_ok = state.memory.ping().await;
    let runtime = &state.runtime;
    let bus_ok = runtime.bus().ping().await;
    let actors_ok = runtime.is_running();
    let model = &runtime.deps().model;
    let ok = memory_ok.is_ok() && bus_ok.is_ok() && actors_ok;
    let mut body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "components": {
            "memory": {
                "status": if memory_ok.is_ok() { "ok" } else { "down" },
                "backend": state.memory.backend(),
                "error": memory_ok.err().map(|e| e.to_string()),
            },
            "bus": {
                "status": if bus_ok.is_ok() { "ok" } else { "down" },
                "backend": runtime.bus().backend(),
                "error": bus_ok.err().map(|e| e.to_string()),
            },
            "model": {
                "status": "ok",
                "provider": model.provider(),
                "llm_configured": model.is_llm(),
            },
            "actors": {
                "status": if actors_ok { "ok" } else { "down" },
                "live_conversations": runtime.live_conversations().await,
            },
            "tools": { "status": "ok", "count": runtime.deps().tools.len() },
        }
    });
    for (k, v) in state.extra_health.iter() {
        body["components"][k] = v.clone();
    }
    // Whether this replica runs the alert pipeline now, and what it holds.
    if let Some(p) = runtime.alerts() {
        let s = p.status().await;
        body["components"]["alerts"]["pipeline"] = json!({
            "active": s.active,
            "alerts": s.alerts,
            "groups": s.groups,
            "in_flight": s.in_flight,
        });
    }
    (ok, body)
}

/// `GET /health`: 200 when every component is up, 503 otherwise; the body says which.
#[utoipa::path(get, path = "/health", tag = "health", summary = "Component health", responses((status = 200, description = "Healthy (503 when degraded)", body = serde_json::Value)), security(()))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (ok, body) = components(&state).await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `GET /ready`: 200 when the store and the bus answer and the actors run.
#[utoipa::path(get, path = "/ready", tag = "health", summary = "Readiness", responses((status = 200, description = "Ready (503 when not)", body = serde_json::Value)), security(()))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let ok = state.memory.ping().await.is_ok()
        && state.runtime.bus().ping().await.is_ok()
        && state.runtime.is_running();
    if ok {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready"})),
        )
    }
}

/// `GET /live`: always 200 while the process serves requests.
#[utoipa::path(get, path = "/live", tag = "health", summary = "Liveness", responses((status = 200, description = "Alive", body = serde_json::Value)), security(()))]
pub async fn live() -> Json<Value> {
    Json(json!({"status": "live"}))
}
