//! Urgency, escalation and suggested actions, by rules over the intent, the
//! sentiment and cue phrases: an outage that stops a business, fraud, safety,
//! deadlines, repeated failures, threats to leave or to go to court, a request
//! for a human.

use cairn_core::insights::{PiiReport, Sentiment, SentimentLabel, Urgency};

/// What the rules concluded about one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Triage {
    /// low | medium | high.
    pub urgency: Urgency,
    /// The escalation conditions that hold (see
    /// [`ESCALATION_CONDITIONS`](cairn_core::insights_config::ESCALATION_CONDITIONS)).
    pub conditions: Vec<&'static str>,
    /// Why urgency is what it is (cue names).
    pub cues: Vec<&'static str>,
    /// Next steps for a support agent.
    pub suggested_actions: Vec<String>,
}

const OUTAGE: &[&str] = &[
    "site is down",
    "website is down",
    "is down",
    "are down",
    "went down",
    "outage",
    "production",
    "prod is",
    "all our users",
    "all of our users",
    "all users",
    "entire team",
    "whole team",
    "whole company",
    "nobody can",
    "no one can",
    "none of our",
    "losing money",
    "losing revenue",
    "losing customers",
    "customers can't",
    "customers cannot",
    "business is",
    "can't process",
    "cannot process",
    "can't take payments",
    "blocking",
    "blocker",
    "critical",
    "completely down",
    "502",
    "503",
    "every request",
];
const FRAUD: &[&str] = &[
    "fraud",
    "fraudulent",
    "hacked",
    "stolen",
    "unauthorized",
    "unauthorised",
    "didn't make",
    "did not make",
    "don't recognise",
    "don't recognize",
    "not recognize",
    "someone else",
    "compromised",
    "identity theft",
    "phishing",
    "suspicious login",
    "suspicious activity",
];
const SAFETY: &[&str] = &[
    "injur",
    "hurt",
    "fire",
    "smoke",
    "burn",
    "electric shock",
    "shocked me",
    "exploded",
    "explode",
    "overheat",
    "unsafe",
    "dangerous",
    "hospital",
    "bleeding",
    "choking",
    "poison",
    "self-harm",
    "suicid",
    "kill myself",
    "threat",
];
const LEGAL: &[&str] = &[
    "lawyer",
    "attorney",
    "sue ",
    "sue you",
    "suing",
    "legal action",
    "court",
    "lawsuit",
    "small claims",
    "consumer protection",
    "regulator",
    "ombudsman",
    "gdpr complaint",
    "report you to",
    "better business bureau",
    "bbb",
];
const DEADLINE: &[&str] = &[
    "urgent",
    "urgently",
    "asap",
    "immediately",
    "right now",
    "right away",
    "today",
    "tonight",
    "by tomorrow",
    "deadline",
    "within the hour",
    "in an hour",
    "emergency",
    "time-sensitive",
    "time sensitive",
    "before friday",
    "by end of day",
    "eod",
];
const REPEATED: &[&str] = &[
    "again",
    "still",
    "third time",
    "3rd time",
    "second time",
    "keeps",
    "every time",
    "for days",
    "for weeks",
    "for a week",
    "multiple times",
    "several times",
    "once more",
    "repeatedly",
    "how many times",
    "yet another",
];
const LEAVE: &[&str] = &[
    "cancel",
    "switching to",
    "switch to a competitor",
    "leave",
    "leaving",
    "take my business",
    "close my account",
    "never use",
    "never buy",
    "done with you",
    "last chance",
];
const HUMAN: &[&str] = &[
    "speak to a human",
    "talk to a human",
    "real person",
    "speak to someone",
    "talk to someone",
    "speak to a person",
    "talk to a person",
    "human agent",
    "live agent",
    "speak to a manager",
    "talk to a manager",
    "speak with a manager",
    "your manager",
    "supervisor",
    "escalate",
    "call me back",
    "a human",
    "representative",
];

fn any(lower: &str, cues: &[&str]) -> bool {
    cues.iter().any(|c| lower.contains(c))
}

/// Triage of one customer message.
pub fn triage(text: &str, intent: &str, sentiment: &Sentiment, pii: &PiiReport) -> Triage {
    let lower = text.to_lowercase();
    let mut cues = Vec::new();
    let mut conditions = Vec::new();
    let negative = sentiment.label == SentimentLabel::Negative;
    let outage = any(&lower, OUTAGE) && (intent == "technical_issue" || negative);
    let fraud = any(&lower, FRAUD);
    let safety = any(&lower, SAFETY);
    let legal = any(&lower, LEGAL);
    let deadline = any(&lower, DEADLINE);
    let repeated = any(&lower, REPEATED);
    let leave = any(&lower, LEAVE) && (negative || intent == "cancellation");
    let human = any(&lower, HUMAN);
    for (on, name) in [
        (outage, "business_outage"),
        (fraud, "fraud"),
        (safety, "safety"),
        (legal, "legal_threat"),
        (deadline, "deadline"),
        (repeated, "repeated_failure"),
        (leave, "churn_risk"),
        (human, "human_requested"),
    ] {
        if on {
            cues.push(name);
        }
    }
    let strongly_negative = sentiment.score <= -0.5;
    let urgency = if outage
        || fraud
        || safety
        || legal
        || (deadline && negative)
        || (human && negative)
        || (repeated && strongly_negative)
        || (leave && strongly_negative)
    {
        Urgency::High
    } else if negative
        || deadline
        || repeated
        || leave
        || human
        || matches!(
            intent,
            "technical_issue"
                | "account_access"
                | "refund_request"
                | "complaint"
                | "billing"
                | "order_status"
                | "cancellation"
        )
    {
        Urgency::Medium
    } else {
        Urgency::Low
    };
    if negative && urgency == Urgency::High {
        conditions.push("negative_high_urgency");
    }
    if human {
        conditions.push("human_requested");
    }
    if legal {
        conditions.push("legal_threat");
    }
    if safety {
        conditions.push("safety");
    }
    if pii.entities.iter().any(|e| {
        matches!(
            e.kind.as_str(),
            "credit_card" | "us_ssn" | "iban" | "api_key"
        )
    }) {
        conditions.push("sensitive_pii");
    }
    let suggested_actions = actions(intent, &cues, &conditions);
    Triage {
        urgency,
        conditions,
        cues,
        suggested_actions,
    }
}

/// A readable sentence for escalation conditions (`None` when there are none).
pub fn reason(conditions: &[&str]) -> Option<String> {
    let parts: Vec<&str> = conditions
        .iter()
        .map(|c| match *c {
            "negative_high_urgency" => "an urgent problem and an unhappy customer",
            "human_requested" => "the customer asked for a human",
            "legal_threat" => "the customer mentions legal action",
            "safety" => "a possible safety issue",
            "sensitive_pii" => "the customer sent payment or identity data in the clear",
            other => other,
        })
        .collect();
    (!parts.is_empty()).then(|| {
        let mut s = parts.join("; ");
        if let Some(f) = s.get(..1) {
            s = f.to_uppercase() + &s[1..];
        }
        s
    })
}

fn actions(intent: &str, cues: &[&str], conditions: &[&str]) -> Vec<String> {
    let mut a: Vec<&str> = Vec::new();
    if conditions.contains(&"safety") {
        a.push(
            "Treat as a safety incident: contact the customer now and follow the safety procedure",
        );
    }
    if conditions.contains(&"legal_threat") {
        a.push("Loop in the legal or escalations team before replying");
    }
    if conditions.contains(&"sensitive_pii") {
        a.push("Do not repeat the personal data; ask the customer to use the secure channel and redact the message");
    }
    if cues.contains(&"fraud") {
        a.push("Secure the account: freeze payment methods, force a password reset, review recent activity");
    }
    if cues.contains(&"business_outage") {
        a.push("Check the status page and open or link an incident");
    }
    if conditions.contains(&"human_requested") {
        a.push("Hand the conversation to a human agent");
    }
    if cues.contains(&"churn_risk") {
        a.push("Offer a retention call with the account manager");
    }
    a.push(match intent {
        "billing" => "Review the account's invoices and recent charges",
        "refund_request" => "Check refund eligibility and the order or charge in question",
        "technical_issue" => "Collect steps to reproduce, error messages and the app version",
        "account_access" => "Verify identity, then help restore access",
        "cancellation" => "Confirm what to cancel and when; explain what happens to the data",
        "order_status" => "Look up the order and its tracking",
        "feature_request" => "Log the request for the product team and share the roadmap status",
        "complaint" => "Acknowledge the complaint and assign an owner",
        _ => "Answer from the knowledge base",
    });
    if cues.contains(&"repeated_failure") {
        a.push("Review the earlier contacts about this problem before replying");
    }
    a.into_iter().take(5).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sentiment::SentimentModel;

    fn t(text: &str, intent: &str) -> Triage {
        let s = SentimentModel::new().analyze(text);
        triage(text, intent, &s, &PiiReport::default())
    }

    #[test]
    fn urgency_rules() {
        assert_eq!(
            t(
                "Our site is down for all our users, we are losing money",
                "technical_issue"
            )
            .urgency,
            Urgency::High
        );
        assert_eq!(
            t(
                "I see charges I didn't make, I think my card was stolen",
                "billing"
            )
            .urgency,
            Urgency::High
        );
        assert_eq!(
            t(
                "The charger started to smoke and burned my hand",
                "technical_issue"
            )
            .urgency,
            Urgency::High
        );
        assert_eq!(
            t("How do I invite a teammate?", "general_question").urgency,
            Urgency::Low
        );
        assert_eq!(
            t("My invoice shows the wrong address", "billing").urgency,
            Urgency::Medium
        );
        assert_eq!(
            t("It would be nice to have dark mode", "feature_request").urgency,
            Urgency::Low
        );
    }

    #[test]
    fn escalation_conditions() {
        let x = t(
            "This is unacceptable, let me speak to a manager or I'm calling my lawyer",
            "complaint",
        );
        assert!(x.conditions.contains(&"human_requested"));
        assert!(x.conditions.contains(&"legal_threat"));
        assert!(x.conditions.contains(&"negative_high_urgency"));
        assert!(!x.suggested_actions.is_empty());
    }
}
