//! `GET /v1/tools`: the tools the caller's tenant may use (built-in and MCP), and
//! the health of each MCP server the tenant may use (errors without URLs or
//! header values). `POST /v1/admin/tools/reload` (`operator` scope: the servers
//! are shared by every tenant): re-read the `[mcp]` section of the config file
//! and restart the servers.

use crate::auth::{Caller, OPERATOR_SCOPE};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

fn listing(state: &AppState, caller: &Caller) -> Value {
    let tools: Vec<Value> = state
        .runtime
        .deps()
        .tools
        .specs_for(&caller.tenant)
        .into_iter()
        .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}))
        .collect();
    let servers: Vec<Value> = state
        .tools
        .as_ref()
        .map(|hub| {
            hub.host()
                .status(&caller.tenant)
                .into_iter()
                .map(|s| {
                    json!({
                        "name": s.name,
                        "health": s.health,
                        "consecutive_failures": s.consecutive_failures,
                        "last_error": s.last_error,
                        "tools": s.tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({ "tools": tools, "servers": servers })
}

/// `GET /v1/tools`.
#[utoipa::path(get, path = "/tools", tag = "tools", summary = "The MCP tools available to the caller", responses((status = 200, description = "Tools and servers", body = serde_json::Value)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(listing(&state, &caller)))
}

/// `POST /v1/admin/tools/reload`.
#[utoipa::path(post, path = "/admin/tools/reload", tag = "tools", summary = "Reload the MCP servers from the config (operator scope)", responses((status = 200, description = "The reload outcome", body = serde_json::Value)))]
pub async fn reload(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    if !caller.has_scope(OPERATOR_SCOPE) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "reloading tools restarts every tenant's MCP servers and needs the `operator` scope",
        ));
    }
    let (Some(hub), Some(source)) = (state.tools.as_ref(), state.tools_source.as_ref()) else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "this server was started without a config file (--config), so there is nothing to reload from",
        ));
    };
    let config = source().map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidField,
            format!("the config file is not valid: {e}"),
        )
        .with_details(json!({"field": "mcp"}))
    })?;
    hub.reload(&config);
    hub.host()
        .wait_ready(std::time::Duration::from_secs(10))
        .await;
    Ok(Json(listing(&state, &caller)))
}
