//! The ticket risk score, in [0, 1]:
//!
//! ```text
//! risk = (w_u·urgency + w_s·sentiment + w_h·history + w_p·pii) / (w_u + w_s + w_h + w_p)
//! ```
//!
//! - `urgency` = max(analysis urgency: low 0.1, medium 0.5, high 1.0;
//!   priority: low 0, normal 0.2, high 0.6, urgent 0.9); a required escalation
//!   (legal threat, safety, a human asked for) lifts it to 1.
//! - `sentiment` = 0 for positive, max(0, −score) for neutral, and
//!   0.5 + 0.5·|score| for negative.
//! - `history` = min(1, the customer's other tickets in `tickets.history_window` / 5).
//! - `pii` = 1 when a card number, SSN, IBAN or API key is in the text, 0.5 for
//!   other personal data, 0 for none.
//!
//! Default weights (`[tickets.risk_weights]`): urgency 0.45, sentiment 0.25,
//! history 0.15, pii 0.15. The score is rounded to three decimals.

use cairn_core::desk::{Priority, RiskFactors};
use cairn_core::desk_config::RiskWeights;
use cairn_core::insights::{Analysis, SentimentLabel, Urgency};

/// PII types whose exposure is a risk by itself.
pub const SENSITIVE_PII: &[&str] = &["credit_card", "us_ssn", "iban", "api_key"];

/// Tickets in the window that make `history` 1.
const HISTORY_FULL: f64 = 5.0;

/// The risk of a ticket and its parts.
pub fn score(
    analysis: &Analysis,
    priority: Priority,
    other_recent_tickets: usize,
    w: &RiskWeights,
) -> (f64, RiskFactors) {
    let from_urgency = match analysis.urgency {
        Urgency::Low => 0.1,
        Urgency::Medium => 0.5,
        Urgency::High => 1.0,
    };
    let from_priority = match priority {
        Priority::Low => 0.0,
        Priority::Normal => 0.2,
        Priority::High => 0.6,
        Priority::Urgent => 0.9,
    };
    let mut urgency: f64 = f64::max(from_urgency, from_priority);
    if analysis.requires_escalation {
        urgency = 1.0;
    }
    let s = f64::from(analysis.sentiment.score).clamp(-1.0, 1.0);
    let sentiment = match analysis.sentiment.label {
        SentimentLabel::Positive => 0.0,
        SentimentLabel::Neutral => (-s).max(0.0),
        SentimentLabel::Negative => 0.5 + 0.5 * s.abs(),
    };
    let history = (other_recent_tickets as f64 / HISTORY_FULL).min(1.0);
    let pii = if analysis
        .pii
        .entities
        .iter()
        .any(|e| SENSITIVE_PII.contains(&e.kind.as_str()))
    {
        1.0
    } else if analysis.pii.has_pii {
        0.5
    } else {
        0.0
    };
    let f = RiskFactors {
        urgency,
        sentiment,
        history,
        pii,
    };
    let total = w.urgency + w.sentiment + w.history + w.pii;
    let raw = if total > 0.0 {
        (w.urgency * urgency + w.sentiment * sentiment + w.history * history + w.pii * pii) / total
    } else {
        0.0
    };
    ((raw.clamp(0.0, 1.0) * 1000.0).round() / 1000.0, f)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_core::insights::{PiiEntity, PiiReport, Sentiment};

    fn analysis(label: SentimentLabel, score: f32, urgency: Urgency) -> Analysis {
        Analysis {
            sentiment: Sentiment {
                label,
                score,
                confidence: 0.9,
                emotion: "neutral".into(),
                reasoning: String::new(),
            },
            pii: PiiReport::of(Vec::new()),
            intent: "billing".into(),
            intent_confidence: 0.8,
            urgency,
            requires_escalation: false,
            escalation_reason: None,
            escalation_conditions: Vec::new(),
            suggested_actions: Vec::new(),
            language: "en".into(),
            analyzer: Default::default(),
        }
    }

    #[test]
    fn the_formula_weighs_its_parts() {
        let w = RiskWeights::default();
        let calm = analysis(SentimentLabel::Positive, 0.6, Urgency::Low);
        let (r, f) = score(&calm, Priority::Normal, 0, &w);
        assert_eq!(f.urgency, 0.2);
        assert_eq!(r, 0.09, "0.45 × 0.2");
        let mut angry = analysis(SentimentLabel::Negative, -0.8, Urgency::High);
        angry.pii = PiiReport::of(vec![PiiEntity {
            kind: "credit_card".into(),
            start: 0,
            end: 4,
            score: 0.9,
            detector: "luhn".into(),
            value: "****".into(),
        }]);
        let (r, f) = score(&angry, Priority::Normal, 10, &w);
        assert_eq!((f.urgency, f.history, f.pii), (1.0, 1.0, 1.0));
        assert!((f.sentiment - 0.9).abs() < 1e-6);
        assert_eq!(r, 0.975, "0.45 + 0.25×0.9 + 0.15 + 0.15");
        // Escalation lifts urgency; priority alone can too.
        let mut esc = calm.clone();
        esc.requires_escalation = true;
        assert_eq!(score(&esc, Priority::Low, 0, &w).1.urgency, 1.0);
        assert_eq!(score(&calm, Priority::Urgent, 0, &w).1.urgency, 0.9);
    }
}
