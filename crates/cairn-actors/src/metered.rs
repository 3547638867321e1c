//! Prometheus metrics of turns, steps, model calls and tool calls, recorded
//! through the `metrics` facade (a no-op until the server installs a recorder).
//! Labels are bounded: outcome codes, provider names, tool names from the
//! configuration; never tenants, users or ids.

use cairn_core::domain::{Step, TurnCheckpoint};
use cairn_core::ports::{ChatResponse, ModelError};
use std::time::Duration;

/// A turn ended: `completed`, or the failure code.
pub fn turn_ended(cp: &TurnCheckpoint, outcome: &str) {
    metrics::counter!("cairn_turns_total", "outcome" => outcome.to_owned()).increment(1);
    let elapsed = (chrono::Utc::now() - cp.started_at)
        .to_std()
        .unwrap_or_default();
    metrics::histogram!("cairn_turn_duration_seconds").record(elapsed.as_secs_f64());
    let (mut model, mut tool) = (0u64, 0u64);
    for s in &cp.steps {
        match s {
            Step::Model { .. } => model += 1,
            Step::Tool { .. } => tool += 1,
        }
    }
    metrics::counter!("cairn_turn_steps_total", "kind" => "model").increment(model);
    metrics::counter!("cairn_turn_steps_total", "kind" => "tool").increment(tool);
}

/// A model call ended.
pub fn model_called(provider: &'static str, r: &Result<ChatResponse, ModelError>, took: Duration) {
    let outcome = match r {
        Ok(_) => "ok",
        Err(e) => e.for_users().0,
    };
    metrics::counter!("cairn_model_calls_total", "provider" => provider, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("cairn_model_call_duration_seconds", "provider" => provider)
        .record(took.as_secs_f64());
    if let Ok(ChatResponse { usage: Some(u), .. }) = r {
        metrics::counter!("cairn_model_tokens_total", "provider" => provider, "direction" => "input")
            .increment(u.input_tokens);
        metrics::counter!("cairn_model_tokens_total", "provider" => provider, "direction" => "output")
            .increment(u.output_tokens);
    }
}

/// A tool call ended. MCP tools are named `server.tool`; the server label is
/// the part before the first dot (`builtin` for Cairn's own tools).
pub fn tool_called(name: &str, is_error: bool, took: Duration) {
    let (server, tool) = name.split_once('.').unwrap_or(("builtin", name));
    let outcome = if is_error { "error" } else { "ok" };
    metrics::counter!(
        "cairn_tool_calls_total",
        "server" => server.to_owned(), "tool" => tool.to_owned(), "outcome" => outcome
    )
    .increment(1);
    metrics::histogram!(
        "cairn_tool_call_duration_seconds",
        "server" => server.to_owned(), "tool" => tool.to_owned()
    )
    .record(took.as_secs_f64());
}
