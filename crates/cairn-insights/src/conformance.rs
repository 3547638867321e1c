//! The cases every [`Analyzer`] passes (the offline analyser, and the LLM
//! analyser against an OpenAI-wire server): the analysis follows
//! `schemas/insights.analysis.v1.json`, names the analyser of every part,
//! never shows a PII value, and gets the clear cases right.

use cairn_core::TenantId;
use cairn_core::insights::{SentimentLabel, Urgency};
use cairn_core::ports::{AnalysisInput, Analyzer};

fn input(text: &str) -> AnalysisInput {
    #[allow(clippy::unwrap_used)]
    AnalysisInput::customer(TenantId::parse("conformance").unwrap(), text)
}

/// Runs every case; panics with the case's name on the first failure.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub async fn run(analyzer: &dyn Analyzer) {
    let schema: serde_json::Value =
        serde_json::from_str(cairn_core::schemas::ANALYSIS_SCHEMA).expect("analysis schema");
    let validator = jsonschema::validator_for(&schema).expect("analysis schema compiles");

    let card = "My email is jane.roe@example.com and my card 4111 1111 1111 1111 was charged twice. I want a refund!";
    let a = analyzer.analyze(&input(card)).await.expect("analysis");
    let v = serde_json::to_value(&a).unwrap();
    if let Some(e) = validator.iter_errors(&v).next() {
        panic!("schema: {e} at {}", e.instance_path());
    }
    let kinds: Vec<&str> = a.pii.entities.iter().map(|e| e.kind.as_str()).collect();
    assert!(
        kinds.contains(&"email") && kinds.contains(&"credit_card"),
        "pii kinds: {kinds:?}"
    );
    let json = v.to_string();
    assert!(
        !json.contains("jane.roe") && !json.contains("4111 1111"),
        "a PII value leaked: {json}"
    );
    assert!(
        a.pii.entities.iter().any(|e| e.value == "****1111"),
        "card mask"
    );
    assert_eq!(a.intent, "refund_request", "refund intent");
    assert_eq!(
        a.sentiment.label,
        SentimentLabel::Negative,
        "charged twice is negative"
    );
    assert!(a.requires_escalation && a.escalation_conditions.iter().any(|c| c == "sensitive_pii"));
    for part in ["sentiment", "pii", "intent", "urgency", "language"] {
        assert!(
            a.analyzer.contains_key(part),
            "analyzer names the `{part}` analyser"
        );
    }

    let sarcasm = analyzer
        .analyze(&input("Great, another outage. Thanks a lot."))
        .await
        .unwrap();
    assert_eq!(sarcasm.sentiment.label, SentimentLabel::Negative, "sarcasm");

    let outage = analyzer
        .analyze(&input(
            "Our production site is down for all our users and we are losing money",
        ))
        .await
        .unwrap();
    assert_eq!(outage.urgency, Urgency::High, "business outage");
    assert_eq!(outage.intent, "technical_issue", "outage intent");

    let calm = analyzer
        .analyze(&input("How do I invite a teammate to my workspace?"))
        .await
        .unwrap();
    assert_eq!(
        calm.sentiment.label,
        SentimentLabel::Neutral,
        "a plain question is neutral"
    );
    assert!(!calm.pii.has_pii, "no PII in a plain question");
    assert_eq!(calm.urgency, Urgency::Low, "a plain question is not urgent");
    assert!(!calm.requires_escalation);

    let decoys = analyzer
        .analyze(&input("Order 4111111111111112 and tracking 1Z999AA10123456784 shipped with version 2.4.1.3 on 04/12/2024"))
        .await
        .unwrap();
    assert!(
        !decoys.pii.has_pii,
        "decoys are not PII: {:?}",
        decoys.pii.entities
    );

    let es = analyzer
        .analyze(&input(
            "Mi pedido no ha llegado todavía y lo necesito para mañana",
        ))
        .await
        .unwrap();
    assert_eq!(es.language, "es", "language");

    let batch = analyzer
        .analyze_batch(&[input("I can't log in"), input("Thanks, it works now!")])
        .await
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0].intent, "account_access", "batch keeps order");
    assert_eq!(
        batch[1].sentiment.label,
        SentimentLabel::Positive,
        "batch keeps order"
    );
}
