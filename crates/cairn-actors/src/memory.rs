//! The context a turn starts from: the rolling summary plus the messages not yet
//! summarised, bounded to `window_messages`. When messages leave the window they
//! are folded into the summary incrementally (old summary + leaving messages →
//! new summary): by the model when it is an LLM, extractively otherwise.

use crate::settings::AgentDeps;
use cairn_core::ids::{ConversationId, TenantId};
use cairn_core::ports::{CancelMode, ChatMessage, ChatRequest, StoreError};
use cairn_core::{Message, Role, Summary};

/// Most messages read when loading the unsummarised tail.
const MAX_TAIL: usize = 10_000;
/// Longest excerpt of one message in an extractive summary.
const EXCERPT_CHARS: usize = 200;

/// True for transcript entries that record a failed turn (not shown to the model).
pub fn is_failure_record(m: &Message) -> bool {
    m.metadata.get("turn_failed").is_some()
}

/// Loads the context, rolling messages that overflow the window into the summary.
pub async fn load_context(
    deps: &AgentDeps,
    tenant: &TenantId,
    id: &ConversationId,
) -> Result<(Summary, Vec<Message>), StoreError> {
    let summary = deps.memory.summary(tenant, id).await?;
    let mut recent = deps
        .memory
        .messages(tenant, id, summary.covers_until, MAX_TAIL)
        .await?;
    let window = deps.settings.window_messages;
    if recent.len() <= window {
        return Ok((summary, recent));
    }
    let keep_from = recent.len() - window;
    let leaving: Vec<Message> = recent.drain(..keep_from).collect();
    let covers_until = leaving.last().map_or(summary.covers_until, |m| m.seq + 1);
    let text = summarize(deps, tenant, &summary.text, &leaving).await;
    let new = Summary { text, covers_until };
    deps.memory.save_summary(tenant, id, &new).await?;
    tracing::debug!(conversation = %id, covers_until, "summary rolled over");
    Ok((new, recent))
}

fn excerpt(text: &str) -> String {
    let first = text
        .split_inclusive(['.', '!', '?', '\n'])
        .next()
        .unwrap_or(text)
        .trim();
    let mut s: String = first.chars().take(EXCERPT_CHARS).collect();
    if first.chars().count() > EXCERPT_CHARS {
        s.push('…');
    }
    s
}

fn lines(leaving: &[Message]) -> Vec<String> {
    leaving
        .iter()
        .filter(|m| !is_failure_record(m))
        .map(|m| {
            let who = match m.role {
                Role::User => "User",
                Role::Assistant => "Assistant",
                Role::System => "System",
                Role::Tool => "Tool",
            };
            format!("{who}: {}", excerpt(&m.content))
        })
        .collect()
}

/// Keeps the newest lines of `text` within `max` characters.
fn bound(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut used = 0;
    for line in text.lines().rev() {
        let n = line.chars().count() + 1;
        if used + n > max {
            break;
        }
        used += n;
        kept.push(line);
    }
    kept.reverse();
    kept.join("\n")
}

/// The extractive summary: the old summary followed by one excerpt per leaving
/// message, trimmed from the oldest end to the size bound.
pub fn extractive_summary(old: &str, leaving: &[Message], max_chars: usize) -> String {
    let mut all: Vec<String> = Vec::new();
    if !old.is_empty() {
        all.push(old.to_owned());
    }
    all.extend(lines(leaving));
    bound(&all.join("\n"), max_chars)
}

async fn summarize(deps: &AgentDeps, tenant: &TenantId, old: &str, leaving: &[Message]) -> String {
    let max = deps.settings.summary_max_chars;
    if !deps.model.is_llm() {
        return extractive_summary(old, leaving, max);
    }
    let mut request = ChatRequest {
        options: Default::default(),
        system: format!(
            "You maintain the running summary of a support conversation. Merge the new messages \
             into the summary. Keep names, numbers, decisions and open questions. Answer with the \
             summary only, at most {max} characters."
        ),
        messages: vec![ChatMessage::text(
            Role::User,
            format!(
                "Current summary:\n{}\n\nNew messages:\n{}",
                if old.is_empty() { "(none)" } else { old },
                lines(leaving).join("\n")
            ),
        )],
        tools: Vec::new(),
    };
    // Under `redact_model` the summariser is a model call like any other.
    let mut pseudonyms = cairn_core::insights::Pseudonyms::new();
    if let Some(g) = deps.pii.as_ref().filter(|g| g.masks(tenant)) {
        for m in &mut request.messages {
            let found = g.scanner.scan(&m.content);
            m.content = pseudonyms.mask(&m.content, &found);
        }
    }
    match deps.model.complete(&request, None).await {
        Ok(r) if !r.content.trim().is_empty() => pseudonyms
            .restore(r.content.trim())
            .chars()
            .take(max)
            .collect(),
        Ok(_) => extractive_summary(old, leaving, max),
        Err(e) => {
            tracing::warn!(error = %e, "LLM summary failed; using the extractive summary");
            extractive_summary(old, leaving, max)
        }
    }
}

/// The chat messages for a context: the summary as a system message, then the
/// transcript. Failure records are left out; a cancelled (or interrupted)
/// turn contributes the steps it took (each call with its result, a cut-short
/// one with the synthetic "cancelled" observation) and its record; a
/// rolled-back turn contributes nothing, its user message included.
pub fn context_messages(summary: &Summary, recent: &[Message]) -> Vec<ChatMessage> {
    let mut out = Vec::with_capacity(recent.len() + 1);
    if !summary.text.is_empty() {
        out.push(ChatMessage::text(
            Role::System,
            format!("Summary of the earlier conversation:\n{}", summary.text),
        ));
    }
    let rolled_back: std::collections::HashSet<&cairn_core::TurnId> = recent
        .iter()
        .filter(|m| crate::cancel::cancelled_mode(m) == Some(CancelMode::Rollback))
        .filter_map(|m| m.turn_id.as_ref())
        .collect();
    for m in recent.iter().filter(|m| !is_failure_record(m)) {
        if m.turn_id.as_ref().is_some_and(|t| rolled_back.contains(t)) {
            continue;
        }
        if crate::cancel::cancelled_mode(m).is_some() {
            out.extend(crate::turn::step_messages(&m.steps));
        }
        out.push(ChatMessage::text(m.role, m.content.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extractive_summary_is_incremental_and_bounded() {
        let msgs = vec![
            Message::new(Role::User, "My order 4417 is late. It was due Monday."),
            Message::new(Role::Assistant, "Sorry to hear that! Let me check."),
        ];
        let s1 = extractive_summary("", &msgs, 1000);
        assert_eq!(
            s1,
            "User: My order 4417 is late.\nAssistant: Sorry to hear that!"
        );
        let s2 = extractive_summary(&s1, &[Message::new(Role::User, "Refund please.")], 1000);
        assert!(s2.starts_with(&s1));
        assert!(s2.ends_with("User: Refund please."));
        let s3 = extractive_summary(&s2, &[], 40);
        assert!(s3.chars().count() <= 40);
        assert!(
            s3.ends_with("User: Refund please."),
            "the newest lines survive"
        );
    }
}
