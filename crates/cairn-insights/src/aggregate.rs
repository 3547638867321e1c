//! Folding one message's analysis into its conversation's insights: the
//! customer's sentiment and its trend, every PII type seen (never values), the
//! current intent and urgency, escalation conditions (each met once), and the
//! summary (`tldr`, `customer_issue`, `follow_up_needed`) built on the
//! conversation's rolling summary.

use cairn_core::insights::{
    ConversationFlags, ConversationInsights, InsightsSummary, MessageAnalysis, PiiSeen, Sender,
    SentimentLabel, SentimentTrend, redact,
};
use cairn_core::insights::{PiiScanner, Urgency};
use cairn_core::{ConversationId, MessageId};

/// Most recent sentiment scores kept.
const HISTORY: usize = 20;
/// Longest `customer_issue`.
const ISSUE_CHARS: usize = 200;

/// The result of folding a message in.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    /// The conversation's insights after the message.
    pub insights: ConversationInsights,
    /// Escalation conditions (of `escalate_on`) met for the first time.
    pub newly_escalated: Vec<String>,
}

/// What the fold reads besides the analysis.
pub struct FoldInput<'a> {
    /// The conversation.
    pub conversation_id: &'a ConversationId,
    /// The message's text as stored (redacted under `redact_store`).
    pub text: &'a str,
    /// The conversation's rolling summary, if any.
    pub rolling_summary: Option<&'a str>,
    /// The conditions that raise an escalation.
    pub escalate_on: &'a [String],
    /// Redacts personal data out of text kept in the aggregate.
    pub scanner: &'a dyn PiiScanner,
}

fn clip_chars(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().nth(n).is_some() {
        out.push('…');
    }
    out
}

fn human(label: &str) -> String {
    label.replace('_', " ")
}

/// Folds `m` into `previous`.
pub fn fold(
    previous: Option<ConversationInsights>,
    m: &MessageAnalysis,
    input: &FoldInput<'_>,
) -> Folded {
    let a = &m.analysis;
    let now = m.analyzed_at;
    let mut c = previous.unwrap_or_else(|| ConversationInsights {
        conversation_id: input.conversation_id.clone(),
        analyzed_messages: 0,
        customer_messages: 0,
        sentiment: SentimentTrend {
            label: SentimentLabel::Neutral,
            score: 0.0,
            emotion: "neutral".into(),
            trend: "stable".into(),
            average: 0.0,
            history: Vec::new(),
        },
        pii: PiiSeen::default(),
        insights: ConversationFlags {
            intent: "general_question".into(),
            urgency: Urgency::Low,
            requires_escalation: false,
            escalation_reasons: Vec::new(),
            suggested_actions: Vec::new(),
            language: a.language.clone(),
        },
        summary: InsightsSummary::default(),
        last_message_id: m.message_id.clone(),
        updated_at: now,
    });
    c.analyzed_messages += 1;
    c.last_message_id = m.message_id.clone();
    c.updated_at = now;
    if a.pii.has_pii {
        c.pii.detected = true;
        c.pii.messages_with_pii += 1;
        for e in &a.pii.entities {
            if !c.pii.types.contains(&e.kind) {
                c.pii.types.push(e.kind.clone());
            }
        }
        c.pii.types.sort();
    }
    let mut newly = Vec::new();
    if m.sender == Sender::Customer {
        let n = c.customer_messages as f32;
        c.customer_messages += 1;
        let s = &mut c.sentiment;
        s.average = (s.average * n + a.sentiment.score) / (n + 1.0);
        s.label = a.sentiment.label;
        s.score = a.sentiment.score;
        s.emotion = a.sentiment.emotion.clone();
        s.history.push(a.sentiment.score);
        if s.history.len() > HISTORY {
            s.history.remove(0);
        }
        s.trend = trend(&s.history).to_owned();
        let f = &mut c.insights;
        f.intent = a.intent.clone();
        f.urgency = a.urgency;
        f.language = a.language.clone();
        f.suggested_actions = a.suggested_actions.clone();
        for cond in &a.escalation_conditions {
            if input.escalate_on.contains(cond) && !f.escalation_reasons.contains(cond) {
                f.escalation_reasons.push(cond.clone());
                newly.push(cond.clone());
            }
        }
        f.requires_escalation = !f.escalation_reasons.is_empty();
        // A greeting-only issue ("Hi") is replaced by the first real one.
        let greeting_only = c.summary.customer_issue.split_whitespace().count() <= 4;
        if c.summary.customer_issue.is_empty() || (a.intent != "general_question" && greeting_only)
        {
            let clean = redact(input.text, &input.scanner.scan(input.text));
            c.summary.customer_issue = clip_chars(clean.trim(), ISSUE_CHARS);
        }
    }
    c.summary.follow_up_needed = follow_up(m, input.text);
    c.summary.tldr = tldr(&c, input);
    Folded {
        insights: c,
        newly_escalated: newly,
    }
}

fn trend(h: &[f32]) -> &'static str {
    if h.len() < 2 {
        return "stable";
    }
    let k = (h.len() / 2).min(3);
    let recent: f32 = h[h.len() - k..].iter().sum::<f32>() / k as f32;
    let before = &h[..h.len() - k];
    let earlier: f32 = before[before.len().saturating_sub(3)..].iter().sum::<f32>()
        / before.len().clamp(1, 3) as f32;
    if recent - earlier > 0.15 {
        "improving"
    } else if earlier - recent > 0.15 {
        "worsening"
    } else {
        "stable"
    }
}

fn follow_up(m: &MessageAnalysis, text: &str) -> bool {
    let l = text.to_lowercase();
    match m.sender {
        Sender::Agent => [
            "get back to you",
            "follow up",
            "follow-up",
            "i'll check",
            "i will check",
            "we'll check",
            "look into",
            "investigating",
            "escalated",
            "will update",
            "keep you posted",
            "within 24",
        ]
        .iter()
        .any(|p| l.contains(p)),
        Sender::Customer => {
            let a = &m.analysis;
            let closing = a.sentiment.label == SentimentLabel::Positive
                && ["thank", "works", "resolved", "fixed", "all good", "sorted"]
                    .iter()
                    .any(|p| l.contains(p));
            !closing
        }
    }
}

fn tldr(c: &ConversationInsights, input: &FoldInput<'_>) -> String {
    let mut s = format!(
        "{} customer, {} ({} urgency)",
        capitalise(&c.sentiment.emotion),
        human(&c.insights.intent),
        c.insights.urgency.as_str()
    );
    if c.insights.requires_escalation {
        s.push_str("; needs a human: ");
        s.push_str(
            &c.insights
                .escalation_reasons
                .iter()
                .map(|r| human(r))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if let Some(r) = input.rolling_summary.filter(|r| !r.trim().is_empty()) {
        let clean = redact(r, &input.scanner.scan(r));
        s.push_str(". Earlier: ");
        s.push_str(&clip_chars(clean.trim(), 160));
    }
    s
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// The record key of a message's analysis: tenant, conversation, message.
pub fn message_key(tenant: &str, conversation: &ConversationId, message: &MessageId) -> String {
    format!("{tenant}/{conversation}/{message}")
}

/// The record key of a conversation's insights.
pub fn conversation_key(tenant: &str, conversation: &ConversationId) -> String {
    format!("{tenant}/{conversation}")
}

/// Collection of per-message analyses.
pub const MESSAGES: &str = "insights.messages";
/// Collection of per-conversation insights.
pub const CONVERSATIONS: &str = "insights.conversations";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OfflineAnalyzer;
    use cairn_core::TenantId;
    use cairn_core::insights_config::InsightsConfig;
    use cairn_core::ports::{AnalysisInput, Analyzer};

    #[tokio::test]
    async fn a_conversation_folds_and_escalates_once() {
        let an = OfflineAnalyzer::new(&InsightsConfig::default(), None).unwrap();
        let cfg = InsightsConfig::default();
        let conv = ConversationId::parse("c1").unwrap();
        let t = TenantId::parse("acme").unwrap();
        let texts = [
            (Sender::Customer, "Hi"),
            (
                Sender::Customer,
                "My card 4111 1111 1111 1111 was charged twice, I want a refund",
            ),
            (
                Sender::Agent,
                "Sorry about that, I'll check and get back to you",
            ),
            (
                Sender::Customer,
                "Still nothing. This is ridiculous, let me speak to a manager",
            ),
            (
                Sender::Customer,
                "I want a manager NOW, this is unacceptable",
            ),
        ];
        let mut agg = None;
        let mut raised = Vec::new();
        for (sender, text) in texts {
            let mut input = AnalysisInput::customer(t.clone(), text);
            input.sender = sender;
            let analysis = an.analyze(&input).await.unwrap();
            let m = MessageAnalysis {
                message_id: MessageId::generate(),
                sender,
                analyzed_at: chrono::Utc::now(),
                analysis,
            };
            let scanner = crate::PiiRecognizer::default();
            let f = fold(
                agg.take(),
                &m,
                &FoldInput {
                    conversation_id: &conv,
                    text,
                    rolling_summary: None,
                    escalate_on: &cfg.escalate_on,
                    scanner: &scanner,
                },
            );
            raised.extend(f.newly_escalated.clone());
            agg = Some(f.insights);
        }
        let c = agg.unwrap();
        assert_eq!(c.analyzed_messages, 5);
        assert_eq!(c.customer_messages, 4);
        assert_eq!(c.pii.types, vec!["credit_card".to_owned()]);
        assert_eq!(c.sentiment.label, SentimentLabel::Negative);
        assert!(c.insights.requires_escalation);
        // Each condition once, even though the manager was asked for twice.
        assert_eq!(raised.iter().filter(|r| *r == "human_requested").count(), 1);
        assert!(raised.contains(&"sensitive_pii".to_owned()));
        // The issue is the first real one, with the card redacted.
        assert!(
            c.summary.customer_issue.contains("[CREDIT_CARD]"),
            "{}",
            c.summary.customer_issue
        );
        assert!(!serde_json::to_string(&c).unwrap().contains("4111"));
        assert!(c.summary.follow_up_needed);
        assert!(c.summary.tldr.contains("needs a human"));
    }
}
