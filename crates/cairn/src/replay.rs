//! `cairn replay TURN --conversation C [--model M] [--system-prompt P]`: reads a
//! finished turn from a running server (`GET …/turns/{turn_id}/steps`: the
//! model's input before the turn, the question, every step), runs the same
//! question through another model or prompt, and answers each tool call the
//! new model makes from the calls the turn recorded (same tool, same
//! arguments) instead of running the tool again: replays have no side effects.
//! A call the turn never made gets an observation saying so. Prints the old
//! and new answers side by side (or JSON with `--json`).

use super::{Common, load_config, token_for_server};
use anyhow::{Context, bail};
use cairn_core::ports::{ChatMessage, ChatRequest, ModelOptions, ToolSpec};
use cairn_core::{Role, Step, ToolCall};
use serde_json::{Value, json};
use std::process::ExitCode;

/// What to replay with.
pub(crate) struct With {
    /// Another model.
    pub(crate) model: Option<String>,
    /// Another system prompt.
    pub(crate) system_prompt: Option<String>,
    /// JSON output.
    pub(crate) json: bool,
}

/// The observation for a call the original turn did not make.
const NOT_RECORDED: &str =
    "Not run: the original turn made no such call, and a replay runs no tools.";

/// Answers a call from the recorded steps (the first unused one with the same
/// tool and arguments).
fn recorded(steps: &[Step], used: &mut [bool], call: &ToolCall) -> (String, bool) {
    for (i, s) in steps.iter().enumerate() {
        if let Step::Tool {
            call: c,
            outcome: Some(o),
            ..
        } = s
            && !used[i]
            && c.name == call.name
            && c.arguments == call.arguments
        {
            used[i] = true;
            return (o.content.clone(), o.is_error);
        }
    }
    (NOT_RECORDED.to_owned(), true)
}

/// Runs the replay; prints both answers.
pub(crate) async fn run(
    common: &Common,
    server: &str,
    token: Option<String>,
    (tenant, user): (&str, &str),
    conversation: &str,
    turn: &str,
    with: With,
) -> anyhow::Result<ExitCode> {
    cairn_llm::http::install_crypto_provider();
    let config = load_config(common, None)?;
    let token = token_for_server(common, token, user, tenant, |_| Vec::new())?;
    let base = server.trim_end_matches('/');
    let r = reqwest::Client::new()
        .get(format!(
            "{base}/v1/conversations/{conversation}/turns/{turn}/steps"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = r.status();
    let recorded_turn: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "reading the turn failed: HTTP {status}: {}",
            recorded_turn["error"]["message"]
        );
    }
    let steps: Vec<Step> = serde_json::from_value(recorded_turn["steps"].clone())
        .context("the server sent steps this version cannot read")?;
    let mut messages: Vec<ChatMessage> =
        serde_json::from_value(recorded_turn["context"].clone()).unwrap_or_default();
    let question = recorded_turn["question"].as_str().unwrap_or_default();
    messages.push(ChatMessage::text(Role::User, question.to_owned()));
    // The tools the turn used; their schemas are not recorded, so any object goes.
    let mut tools: Vec<ToolSpec> = Vec::new();
    for s in &steps {
        if let Step::Tool { call, .. } = s
            && !tools.iter().any(|t| t.name == call.name)
        {
            tools.push(ToolSpec {
                name: call.name.clone(),
                description: format!("The {} tool (replayed from the recorded turn).", call.name),
                input_schema: json!({"type": "object"}),
            });
        }
    }
    let mut llm = config.llm.clone();
    if let Some(m) = &with.model {
        llm.model = Some(m.clone());
    }
    let model = cairn_llm::from_config(&llm, &|k| std::env::var(k).ok())?;
    let system = with
        .system_prompt
        .clone()
        .unwrap_or_else(|| config.agent.system_prompt.clone());
    let mut used = vec![false; steps.len()];
    let mut replayed_calls = Vec::new();
    let mut answer = None;
    for _ in 0..config.agent.max_steps {
        let request = ChatRequest {
            options: ModelOptions {
                model: with.model.clone(),
                ..Default::default()
            },
            system: system.clone(),
            messages: messages.clone(),
            tools: tools.clone(),
        };
        let response = model
            .complete(&request, None)
            .await
            .map_err(|e| anyhow::anyhow!("the model call failed: {e}"))?;
        if response.tool_calls.is_empty() {
            answer = Some(response.content);
            break;
        }
        messages.push(ChatMessage {
            role: Role::Assistant,
            content: response.content.clone(),
            tool_calls: response.tool_calls.clone(),
            tool_call_id: None,
            tool_name: None,
            is_error: false,
        });
        for call in response.tool_calls {
            let (content, is_error) = recorded(&steps, &mut used, &call);
            replayed_calls.push(json!({"tool": call.name, "arguments": call.arguments, "recorded": content != NOT_RECORDED}));
            messages.push(ChatMessage {
                role: Role::Tool,
                content,
                tool_calls: Vec::new(),
                tool_call_id: Some(call.id.clone()),
                tool_name: Some(call.name.clone()),
                is_error,
            });
        }
    }
    let old = recorded_turn["answer"].as_str().unwrap_or_default();
    let Some(new) = answer else {
        bail!(
            "the replay used all {} model calls without an answer",
            config.agent.max_steps
        );
    };
    if with.json {
        let out = json!({"turn_id": turn, "old": old, "new": new, "calls": replayed_calls});
        println!("{out}");
    } else {
        print_side_by_side(old, &new);
    }
    Ok(ExitCode::SUCCESS)
}

/// Column width of the side-by-side output.
const COLUMN: usize = 60;

fn wrap(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.lines() {
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > COLUMN {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

fn print_side_by_side(old: &str, new: &str) {
    let (a, b) = (wrap(old), wrap(new));
    println!("{:<COLUMN$} | new answer", "old answer");
    println!("{:-<COLUMN$}-+-{:-<COLUMN$}", "", "");
    for i in 0..a.len().max(b.len()) {
        let l = a.get(i).map(String::as_str).unwrap_or_default();
        let r = b.get(i).map(String::as_str).unwrap_or_default();
        println!("{l:<COLUMN$} | {r}");
    }
}
