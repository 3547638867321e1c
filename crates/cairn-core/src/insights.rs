//! Support intelligence: what an analysis of one message holds, the aggregate
//! insights of a conversation, and the redaction helpers every crate that handles
//! message text shares (the API redacts before the bus under `redact_store`, a
//! turn pseudonymises before the model under `redact_model`).
//!
//! The analysis is part of Cairn's wire format (`schemas/insights.analysis.v1.json`);
//! fields are only ever added.

use crate::ids::{ConversationId, MessageId, TenantId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who wrote a message posted through `POST /v1/messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sender {
    /// The customer (insights describe the customer).
    Customer,
    /// A human support agent.
    Agent,
}

/// Sentiment label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SentimentLabel {
    /// Negative.
    Negative,
    /// Neutral.
    Neutral,
    /// Positive.
    Positive,
}

impl SentimentLabel {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Negative => "negative",
            Self::Neutral => "neutral",
            Self::Positive => "positive",
        }
    }
}

/// The sentiment of one text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sentiment {
    /// negative | neutral | positive.
    pub label: SentimentLabel,
    /// Polarity in [-1, 1].
    pub score: f32,
    /// How sure the analyser is, in [0, 1].
    pub confidence: f32,
    /// The dominant emotion: `frustrated`, `angry`, `anxious`, `confused`,
    /// `satisfied`, `grateful`, `disappointed` or `neutral`.
    pub emotion: String,
    /// One line on why.
    pub reasoning: String,
}

/// Urgency of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    /// Can wait.
    Low,
    /// Normal.
    Medium,
    /// Needs attention now.
    High,
}

impl Urgency {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

/// One piece of personal data found in a text. `value` never holds the raw
/// value: it is `[REDACTED]` or a masked form (`****1111` for a card).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PiiEntity {
    /// `email`, `phone`, `credit_card`, `iban`, `us_ssn`, `ip_address`, `person`,
    /// `street_address`, `date_of_birth`, `url`, `api_key`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Start, in characters (Unicode scalar values) from the start of the text.
    pub start: usize,
    /// End (exclusive), in characters.
    pub end: usize,
    /// Confidence in [0, 1], after context words raised or lowered it.
    pub score: f32,
    /// The recogniser that found it (e.g. `luhn`, `phonenumber`, `llm`).
    pub detector: String,
    /// `[REDACTED]` or a masked form.
    pub value: String,
}

/// The personal data in a text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PiiReport {
    /// True when any entity was found.
    pub has_pii: bool,
    /// The entities, in text order.
    pub entities: Vec<PiiEntity>,
}

impl PiiReport {
    /// A report of `entities` (sorted by position).
    pub fn of(mut entities: Vec<PiiEntity>) -> Self {
        entities.sort_by_key(|e| (e.start, e.end));
        Self {
            has_pii: !entities.is_empty(),
            entities,
        }
    }
}

/// Which analyser produced a part, and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalyzerTag {
    /// `offline` or `llm`.
    pub name: String,
    /// For `offline`, the analyser's version; for `llm`, the provider and model.
    pub version: String,
}

/// The analysis of one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Sentiment.
    pub sentiment: Sentiment,
    /// Personal data.
    pub pii: PiiReport,
    /// One label of the tenant's intent taxonomy.
    pub intent: String,
    /// How sure the intent is, in [0, 1].
    pub intent_confidence: f32,
    /// low | medium | high.
    pub urgency: Urgency,
    /// True when a human should take over.
    pub requires_escalation: bool,
    /// Why, when it does (a readable sentence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_reason: Option<String>,
    /// The escalation conditions that hold (`negative_high_urgency`,
    /// `human_requested`, `legal_threat`, `safety`, `sensitive_pii`).
    #[serde(default)]
    pub escalation_conditions: Vec<String>,
    /// What a support agent should do next.
    #[serde(default)]
    pub suggested_actions: Vec<String>,
    /// ISO 639-1 code of the text's language (639-3 when it has no 639-1 code),
    /// `und` when unknown.
    pub language: String,
    /// Which analyser produced each part (`sentiment`, `pii`, `intent`,
    /// `urgency`, `language`).
    pub analyzer: BTreeMap<String, AnalyzerTag>,
}

/// The per-message analysis as stored beside the transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageAnalysis {
    /// The message analysed.
    pub message_id: MessageId,
    /// Who wrote it.
    pub sender: Sender,
    /// When it was analysed.
    pub analyzed_at: DateTime<Utc>,
    /// The analysis.
    pub analysis: Analysis,
}

/// A message to analyse, as it travels on the bus (`data` of a
/// `support.message` event for `POST /v1/messages`; user messages of answered
/// conversations are analysed from their `user.message` event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupportMessage {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The conversation (created on first use).
    pub conversation_id: ConversationId,
    /// The message id returned by the API.
    pub message_id: MessageId,
    /// The user (token `sub`) who posted it.
    pub user_id: UserId,
    /// Customer or human agent.
    pub sender: Sender,
    /// The text (already redacted under `redact_store`).
    pub message: String,
    /// Where it came from (`chat`, `email`, …).
    #[serde(default)]
    pub channel: String,
    /// When the API accepted it.
    pub accepted_at: DateTime<Utc>,
    /// PII found before redaction (types and positions, never values), when the
    /// API redacted the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacted_pii: Option<PiiReport>,
}

/// Sentiment over a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentimentTrend {
    /// Latest label.
    pub label: SentimentLabel,
    /// Latest score.
    pub score: f32,
    /// Latest emotion.
    pub emotion: String,
    /// `improving`, `worsening` or `stable` over the recent customer messages.
    pub trend: String,
    /// Mean score over the conversation's customer messages.
    pub average: f32,
    /// The most recent scores (at most 20), oldest first.
    pub history: Vec<f32>,
}

/// PII seen in a conversation: types and counts, never values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PiiSeen {
    /// True when any message held PII.
    pub detected: bool,
    /// Every type seen, sorted.
    pub types: Vec<String>,
    /// How many messages held PII.
    pub messages_with_pii: u64,
}

/// Intent, urgency and escalation of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationFlags {
    /// Current intent (of the latest customer message).
    pub intent: String,
    /// Current urgency (of the latest customer message).
    pub urgency: Urgency,
    /// True once a condition for escalation held.
    pub requires_escalation: bool,
    /// The escalation conditions that held (`negative_high_urgency`,
    /// `human_requested`, `legal_threat`, `safety`, `sensitive_pii`).
    pub escalation_reasons: Vec<String>,
    /// Suggested next steps.
    pub suggested_actions: Vec<String>,
    /// Language of the latest customer message.
    pub language: String,
}

/// The summary of a conversation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InsightsSummary {
    /// One line.
    pub tldr: String,
    /// What the customer wants.
    pub customer_issue: String,
    /// True when the customer still waits for something.
    pub follow_up_needed: bool,
}

/// The aggregate insights of one conversation (`GET
/// /v1/conversations/{id}/insights`, the seed's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationInsights {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Messages analysed (both senders).
    pub analyzed_messages: u64,
    /// Customer messages analysed.
    pub customer_messages: u64,
    /// Sentiment of the customer.
    pub sentiment: SentimentTrend,
    /// PII seen.
    pub pii: PiiSeen,
    /// Intent, urgency, escalation.
    pub insights: ConversationFlags,
    /// Summary.
    pub summary: InsightsSummary,
    /// The last message folded in.
    pub last_message_id: MessageId,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// What `[insights] pii` does with personal data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiPolicy {
    /// Flag only; the text is stored as sent.
    #[default]
    Detect,
    /// The transcript, events and bus records keep the redacted text; the
    /// original is never persisted.
    RedactStore,
    /// The model sees stable placeholders (`<EMAIL_1>`); the user sees the
    /// values restored in the answer.
    RedactModel,
}

/// Finds personal data in text, synchronously and without I/O (the offline
/// recognisers); used to redact before anything is stored or sent to a model.
pub trait PiiScanner: Send + Sync + 'static {
    /// The entities in `text` at or above the scanner's threshold.
    fn scan(&self, text: &str) -> Vec<PiiEntity>;
}

/// Char offset → byte offset in `text` (the end of the text when past it).
pub fn byte_at(text: &str, char_index: usize) -> usize {
    text.char_indices()
        .nth(char_index)
        .map(|(b, _)| b)
        .unwrap_or(text.len())
}

/// The placeholder kind of a PII type: `EMAIL`, `CREDIT_CARD`, …
fn placeholder_kind(kind: &str) -> String {
    kind.to_ascii_uppercase()
}

/// `text` with each entity's span replaced by `with(entity, value)`, in text
/// order; an entity overlapping one already replaced is skipped. `entities` are
/// in character offsets of `text`.
fn replace_spans(
    text: &str,
    entities: &[PiiEntity],
    mut with: impl FnMut(&PiiEntity, &str) -> String,
) -> String {
    let mut spans: Vec<&PiiEntity> = entities.iter().collect();
    spans.sort_by_key(|e| e.start);
    let mut out = String::with_capacity(text.len());
    let (mut at_char, mut at_byte) = (0usize, 0usize);
    for e in spans {
        if e.start < at_char || e.end <= e.start {
            continue;
        }
        let s = at_byte + byte_at(&text[at_byte..], e.start - at_char);
        let end = s + byte_at(&text[s..], e.end - e.start);
        out.push_str(&text[at_byte..s]);
        out.push_str(&with(e, &text[s..end]));
        at_char = e.end;
        at_byte = end;
    }
    out.push_str(&text[at_byte..]);
    out
}

/// Replaces every entity's span by `[TYPE]` (e.g. `[EMAIL]`); overlapping spans
/// are merged into the first. `entities` are in character offsets of `text`.
pub fn redact(text: &str, entities: &[PiiEntity]) -> String {
    replace_spans(text, entities, |e, _| {
        format!("[{}]", placeholder_kind(&e.kind))
    })
}

/// Stable pseudonyms for one conversation under `redact_model`: the same value
/// always gets the same placeholder (`<EMAIL_1>`, `<EMAIL_2>`, …), and a
/// placeholder in the model's answer is turned back into its value.
#[derive(Debug, Clone, Default)]
pub struct Pseudonyms {
    by_value: BTreeMap<String, String>,
    by_placeholder: BTreeMap<String, String>,
    counts: BTreeMap<String, usize>,
}

impl Pseudonyms {
    /// An empty mapping.
    pub fn new() -> Self {
        Self::default()
    }

    /// `text` with every entity replaced by its placeholder.
    pub fn mask(&mut self, text: &str, entities: &[PiiEntity]) -> String {
        replace_spans(text, entities, |e, value| {
            if let Some(p) = self.by_value.get(value) {
                return p.clone();
            }
            let kind = placeholder_kind(&e.kind);
            let n = self.counts.entry(kind.clone()).or_insert(0);
            *n += 1;
            let p = format!("<{kind}_{n}>");
            self.by_value.insert(value.to_owned(), p.clone());
            self.by_placeholder.insert(p.clone(), value.to_owned());
            p
        })
    }

    /// `text` with every known placeholder replaced by its value.
    pub fn restore(&self, text: &str) -> String {
        if self.by_placeholder.is_empty() || !text.contains('<') {
            return text.to_owned();
        }
        let mut out = text.to_owned();
        // Longest first, so `<EMAIL_10>` is not read as `<EMAIL_1>` + `0>`.
        let mut keys: Vec<&String> = self.by_placeholder.keys().collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
        for k in keys {
            if out.contains(k.as_str()) {
                out = out.replace(k.as_str(), &self.by_placeholder[k]);
            }
        }
        out
    }

    /// True when no value was masked.
    pub fn is_empty(&self) -> bool {
        self.by_value.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(kind: &str, start: usize, end: usize) -> PiiEntity {
        PiiEntity {
            kind: kind.into(),
            start,
            end,
            score: 1.0,
            detector: "t".into(),
            value: "[REDACTED]".into(),
        }
    }

    #[test]
    fn redaction_replaces_spans_in_characters_not_bytes() {
        let t = "née à a@b.io et 4111";
        let r = redact(t, &[ent("email", 6, 12), ent("credit_card", 16, 20)]);
        assert_eq!(r, "née à [EMAIL] et [CREDIT_CARD]");
    }

    #[test]
    fn pseudonyms_are_stable_and_restored() {
        let mut p = Pseudonyms::new();
        let a = p.mask("mail a@b.io", &[ent("email", 5, 11)]);
        let b = p.mask(
            "again a@b.io or c@d.io",
            &[ent("email", 6, 12), ent("email", 16, 22)],
        );
        assert_eq!(a, "mail <EMAIL_1>");
        assert_eq!(b, "again <EMAIL_1> or <EMAIL_2>");
        assert_eq!(
            p.restore("sent to <EMAIL_2> and <EMAIL_1>"),
            "sent to c@d.io and a@b.io"
        );
    }
}
