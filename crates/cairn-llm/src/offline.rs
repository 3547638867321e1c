//! The offline planner: Cairn's answer when no LLM is configured. It is a fixed,
//! deterministic policy, documented here and in every answer's metadata:
//!
//! 1. If this turn already has tool observations, answer with them (the last
//!    observation is quoted and cited as `tool:NAME`).
//! 2. If the user message is `/tool NAME {json}` and NAME is in the catalog, call
//!    it with those arguments (`/tool NAME` alone passes `{}`).
//! 3. If the catalog has a `search_knowledge` tool, call it with the question.
//! 4. Otherwise answer extractively from the conversation (earlier messages and
//!    the rolling summary): the sentences sharing the most words with the
//!    question, cited as `conversation`. With nothing relevant, say so.
//!
//! Answers carry `{"provider": "offline", "llm_configured": false}` in metadata.

use async_trait::async_trait;
use cairn_core::ports::{
    ChatMessage, ChatModel, ChatRequest, ChatResponse, DeltaSender, ModelError,
};
use cairn_core::{Citation, Role, ToolCall};
use serde_json::{Value, json};
use std::collections::HashSet;

/// Name of the knowledge-search tool the planner uses when it is offered.
pub const SEARCH_TOOL: &str = "search_knowledge";

/// Sentences quoted in an extractive answer.
const MAX_SENTENCES: usize = 2;

/// The deterministic offline planner.
#[derive(Debug, Default, Clone)]
pub struct OfflinePlanner;

impl OfflinePlanner {
    /// A planner.
    pub fn new() -> Self {
        Self
    }
}

fn metadata(policy: &str) -> Value {
    json!({
        "provider": "offline",
        "llm_configured": false,
        "policy": policy,
        "note": "No LLM is configured; this answer comes from Cairn's deterministic offline planner.",
    })
}

const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how",
    "i", "in", "is", "it", "me", "my", "of", "on", "or", "so", "that", "the", "this", "to", "was",
    "what", "when", "where", "which", "who", "why", "with", "you", "your", "we", "our", "did",
    "have", "has", "please", "tell", "about",
];

fn terms(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

fn sentences(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive(['.', '!', '?', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Parses `/tool NAME {json}`; `Err` explains a malformed command.
fn parse_tool_command(text: &str) -> Option<Result<(String, Value), String>> {
    let rest = text.trim().strip_prefix("/tool")?;
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim();
    let (name, args) = match rest.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (rest, ""),
    };
    if name.is_empty() {
        return Some(Err("usage: /tool NAME {json arguments}".into()));
    }
    let args = if args.is_empty() {
        Ok(json!({}))
    } else {
        match serde_json::from_str::<Value>(args) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err(format!(
                "the arguments of /tool {name} must be a JSON object"
            )),
            Err(e) => Err(format!(
                "the arguments of /tool {name} are not valid JSON: {e}"
            )),
        }
    };
    Some(args.map(|a| (name.to_owned(), a)))
}

/// Passages quoted in a knowledge answer.
const MAX_PASSAGES: usize = 2;

/// Answers from `search_knowledge` passages: the sentences of the best passages
/// that share the most words with the question, each passage cited.
/// Returns the answer with the best word overlap it found, or `None` without passages.
fn answer_from_passages(question: &str, observation: &str) -> Option<(usize, ChatResponse)> {
    let passages: Vec<Value> = serde_json::from_str::<Value>(observation)
        .ok()
        .and_then(|v| v["passages"].as_array().cloned())
        .unwrap_or_default();
    if passages.is_empty() {
        return None;
    }
    let wanted = terms(question);
    let mut parts = Vec::new();
    let mut citations = Vec::new();
    let mut top_overlap = 0;
    for p in passages.iter().take(MAX_PASSAGES) {
        // Documents wrap lines inside sentences: read the passage as one line.
        let flat = p["text"]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let text = flat.as_str();
        // The passage's most relevant sentence, or its opening when none matches.
        let scored = sentences(text)
            .map(|s| (terms(s).intersection(&wanted).count(), s))
            .max_by_key(|(n, _)| *n);
        top_overlap = top_overlap.max(scored.map_or(0, |(n, _)| n));
        let best = scored
            .filter(|(n, _)| *n > 0)
            .map(|(_, s)| s)
            .or_else(|| sentences(text).next())
            .unwrap_or(text);
        let title = p["title"].as_str().unwrap_or("a document");
        if !parts.iter().any(|(_, b): &(String, String)| b == best) {
            parts.push((title.to_owned(), best.to_owned()));
        }
        let section = p["section"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        citations.push(Citation {
            source: p["document_id"].as_str().unwrap_or_default().to_owned(),
            title: Some(title.to_owned()),
            section,
            snippet: best.to_owned(),
        });
    }
    let content = parts
        .iter()
        .map(|(title, s)| format!("According to \"{title}\": {s}"))
        .collect::<Vec<_>>()
        .join(" ");
    Some((
        top_overlap,
        ChatResponse {
            content,
            citations,
            metadata: metadata("knowledge_extractive"),
            ..Default::default()
        },
    ))
}

/// The extractive answer from the conversation before the question, with its best
/// word overlap, or `None` when nothing said shares a word with the question.
fn answer_from_memory(question: &str, earlier: &[ChatMessage]) -> Option<(usize, ChatResponse)> {
    let wanted = terms(question);
    let mut scored: Vec<(usize, usize, &str)> = Vec::new();
    let mut order = 0;
    for m in earlier {
        if m.role == Role::Tool || m.role == Role::Assistant {
            continue; // quote what people said and what was summarised, not ourselves
        }
        for s in sentences(&m.content) {
            let overlap = terms(s).intersection(&wanted).count();
            if overlap > 0 {
                scored.push((overlap, order, s));
            }
            order += 1;
        }
    }
    // Highest overlap first; among equals, the most recent.
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    scored.dedup_by(|a, b| a.2 == b.2);
    let top = scored.first()?.0;
    let best: Vec<&str> = scored.iter().take(MAX_SENTENCES).map(|s| s.2).collect();
    Some((
        top,
        ChatResponse {
            content: format!("From our conversation: {}", best.join(" ")),
            citations: best
                .iter()
                .map(|s| Citation {
                    source: "conversation".into(),
                    title: None,
                    section: None,
                    snippet: (*s).to_owned(),
                })
                .collect(),
            metadata: metadata("extractive_memory"),
            ..Default::default()
        },
    ))
}

fn no_match() -> ChatResponse {
    ChatResponse {
        content: "I don't have enough information to answer that. No LLM is configured, so I \
                  answer from the knowledge base and this conversation, and run tools you name \
                  with /tool NAME {json}."
            .into(),
        metadata: metadata("no_match"),
        ..Default::default()
    }
}

#[async_trait]
impl ChatModel for OfflinePlanner {
    fn provider(&self) -> &'static str {
        "offline"
    }

    fn is_llm(&self) -> bool {
        false
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        _deltas: Option<&DeltaSender>,
    ) -> Result<ChatResponse, ModelError> {
        let Some(user_at) = req.messages.iter().rposition(|m| m.role == Role::User) else {
            return Ok(ChatResponse {
                content: "There is no question to answer.".into(),
                metadata: metadata("no_question"),
                ..Default::default()
            });
        };
        let question = &req.messages[user_at].content;
        let this_turn = &req.messages[user_at + 1..];

        // 1. Observations from this turn become the answer.
        if let Some(obs) = this_turn.iter().rev().find(|m| m.role == Role::Tool) {
            if obs.tool_name.as_deref() == Some(SEARCH_TOOL) && !obs.is_error {
                // The knowledge base, unless the conversation matches the question better.
                let kb = answer_from_passages(question, &obs.content);
                let memory = answer_from_memory(question, &req.messages[..user_at]);
                return Ok(match (kb, memory) {
                    (Some((k, _)), Some((m, mem))) if m > k => mem,
                    (Some((_, kb)), _) => kb,
                    (None, Some((_, mem))) => mem,
                    (None, None) => no_match(),
                });
            }
            let tool = obs.tool_name.clone().unwrap_or_else(|| "tool".into());
            let content = if obs.is_error {
                format!("The tool {tool} reported an error: {}", obs.content)
            } else {
                format!("Result of {tool}: {}", obs.content)
            };
            return Ok(ChatResponse {
                content,
                citations: vec![Citation {
                    source: format!("tool:{tool}"),
                    title: None,
                    section: None,
                    snippet: obs.content.chars().take(300).collect(),
                }],
                metadata: metadata("tool_observation"),
                ..Default::default()
            });
        }

        // 2. An explicit tool command.
        if let Some(cmd) = parse_tool_command(question) {
            return Ok(match cmd {
                Ok((name, args)) if req.tools.iter().any(|t| t.name == name) => ChatResponse {
                    tool_calls: vec![ToolCall {
                        id: "call_0".into(),
                        name,
                        arguments: args,
                    }],
                    metadata: metadata("explicit_tool"),
                    ..Default::default()
                },
                Ok((name, _)) => {
                    let mut known: Vec<&str> = req.tools.iter().map(|t| t.name.as_str()).collect();
                    known.sort_unstable();
                    ChatResponse {
                        content: format!(
                            "There is no tool named {name}. Available tools: {}.",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                        metadata: metadata("unknown_tool"),
                        ..Default::default()
                    }
                }
                Err(usage) => ChatResponse {
                    content: usage,
                    metadata: metadata("bad_tool_command"),
                    ..Default::default()
                },
            });
        }

        // 3. Knowledge search, once per turn.
        if req.tools.iter().any(|t| t.name == SEARCH_TOOL) && this_turn.is_empty() {
            return Ok(ChatResponse {
                tool_calls: vec![ToolCall {
                    id: "call_0".into(),
                    name: SEARCH_TOOL.into(),
                    arguments: json!({ "query": question }),
                }],
                metadata: metadata("knowledge_search"),
                ..Default::default()
            });
        }

        // 4. Extractive answer from the conversation.
        Ok(
            answer_from_memory(question, &req.messages[..user_at])
                .map_or_else(no_match, |(_, r)| r),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::ports::{ChatMessage, ToolSpec};

    fn spec(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: String::new(),
            input_schema: json!({"type": "object"}),
        }
    }

    fn user(text: &str) -> ChatMessage {
        ChatMessage::text(Role::User, text)
    }

    #[tokio::test]
    async fn explicit_tool_then_answer_from_observation() {
        let p = OfflinePlanner::new();
        let mut req = ChatRequest {
            options: Default::default(),
            system: String::new(),
            messages: vec![user("/tool echo {\"text\": \"hi\"}")],
            tools: vec![spec("echo")],
        };
        let r = p.complete(&req, None).await.unwrap();
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.tool_calls[0].arguments["text"], "hi");
        assert_eq!(r.metadata["llm_configured"], false);
        req.messages.push(ChatMessage {
            role: Role::Assistant,
            content: String::new(),
            tool_calls: r.tool_calls.clone(),
            tool_call_id: None,
            tool_name: None,
            is_error: false,
        });
        req.messages.push(ChatMessage {
            role: Role::Tool,
            content: "hi".into(),
            tool_calls: vec![],
            tool_call_id: Some("call_0".into()),
            tool_name: Some("echo".into()),
            is_error: false,
        });
        let r = p.complete(&req, None).await.unwrap();
        assert!(r.tool_calls.is_empty());
        assert_eq!(r.content, "Result of echo: hi");
        assert_eq!(r.citations[0].source, "tool:echo");
    }

    #[tokio::test]
    async fn unknown_tool_and_bad_json_are_explained() {
        let p = OfflinePlanner::new();
        let req = |t: &str| ChatRequest {
            options: Default::default(),
            system: String::new(),
            messages: vec![user(t)],
            tools: vec![spec("echo")],
        };
        let r = p.complete(&req("/tool nope {}"), None).await.unwrap();
        assert!(r.content.contains("no tool named nope"), "{}", r.content);
        assert!(r.content.contains("echo"));
        let r = p.complete(&req("/tool echo {bad"), None).await.unwrap();
        assert!(r.content.contains("not valid JSON"), "{}", r.content);
        assert!(r.tool_calls.is_empty());
    }

    #[tokio::test]
    async fn answers_from_memory_with_citation() {
        let p = OfflinePlanner::new();
        let req = ChatRequest {
            options: Default::default(),
            system: String::new(),
            messages: vec![
                ChatMessage::text(Role::System, "Summary: The user's order number is 4417."),
                user("Hello. My name is Ana and I live in Porto."),
                ChatMessage::text(Role::Assistant, "Nice to meet you."),
                user("Which city do I live in?"),
            ],
            tools: vec![],
        };
        let r = p.complete(&req, None).await.unwrap();
        assert!(r.content.contains("Porto"), "{}", r.content);
        assert_eq!(r.citations[0].source, "conversation");
        let req2 = ChatRequest {
            options: Default::default(),
            messages: vec![req.messages[0].clone(), user("what is my order number?")],
            ..req.clone()
        };
        let r = p.complete(&req2, None).await.unwrap();
        assert!(r.content.contains("4417"), "{}", r.content);
        let req3 = ChatRequest {
            options: Default::default(),
            messages: vec![user("quantum chromodynamics?")],
            ..req
        };
        let r = p.complete(&req3, None).await.unwrap();
        assert!(r.content.contains("don't have enough information"));
    }

    #[tokio::test]
    async fn answers_from_knowledge_passages_with_citations() {
        let p = OfflinePlanner::new();
        let passages = json!({"passages": [
            {"document_id": "pw", "title": "Resetting your password", "section": "Resetting your password > Links",
             "text": "Open the sign-in page. The reset link is valid\nfor 30 minutes.", "score": 0.9},
            {"document_id": "other", "title": "Other", "section": "", "text": "Unrelated text.", "score": 0.1}
        ]});
        let req = ChatRequest {
            options: Default::default(),
            system: String::new(),
            messages: vec![
                user("how long is the reset link valid?"),
                ChatMessage {
                    role: Role::Tool,
                    content: passages.to_string(),
                    tool_calls: vec![],
                    tool_call_id: Some("call_0".into()),
                    tool_name: Some(SEARCH_TOOL.into()),
                    is_error: false,
                },
            ],
            tools: vec![spec(SEARCH_TOOL)],
        };
        let r = p.complete(&req, None).await.unwrap();
        assert!(
            r.content.starts_with(
                "According to \"Resetting your password\": The reset link is valid for 30 minutes."
            ),
            "{}",
            r.content
        );
        assert_eq!(r.citations[0].source, "pw");
        assert_eq!(
            r.citations[0].section.as_deref(),
            Some("Resetting your password > Links")
        );
        assert_eq!(r.metadata["policy"], "knowledge_extractive");
        let empty = ChatRequest {
            options: Default::default(),
            messages: vec![
                req.messages[0].clone(),
                ChatMessage {
                    content: "{\"passages\": []}".into(),
                    ..req.messages[1].clone()
                },
            ],
            ..req
        };
        let r = p.complete(&empty, None).await.unwrap();
        assert!(
            r.content.contains("don't have enough information"),
            "{}",
            r.content
        );
    }

    #[tokio::test]
    async fn searches_knowledge_when_offered() {
        let p = OfflinePlanner::new();
        let req = ChatRequest {
            options: Default::default(),
            system: String::new(),
            messages: vec![user("how do I reset my password?")],
            tools: vec![spec(SEARCH_TOOL)],
        };
        let r = p.complete(&req, None).await.unwrap();
        assert_eq!(r.tool_calls[0].name, SEARCH_TOOL);
        assert_eq!(
            r.tool_calls[0].arguments["query"],
            "how do I reset my password?"
        );
    }
}
