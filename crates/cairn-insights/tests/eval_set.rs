//! The labelled set `eval/insights.jsonl` as a regression guard: the offline
//! analyser keeps the quality `cairn-eval insights` reported for it (structured
//! PII types at precision and recall ≥ 0.95, sentiment macro-F1, and no PII
//! value left visible after redaction beyond the measured share).

#![allow(clippy::unwrap_used, missing_docs)]

use cairn_core::TenantId;
use cairn_core::insights_config::InsightsConfig;
use cairn_core::ports::{AnalysisInput, Analyzer};
use cairn_insights::OfflineAnalyzer;
use cairn_insights::eval::{self, Span};

#[tokio::test]
async fn the_offline_analyser_keeps_its_measured_quality_on_the_labelled_set() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../eval/insights.jsonl");
    let items = eval::load(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(items.len() >= 200, "the set has at least 200 messages");
    let with_pii = items.iter().filter(|i| !i.pii.is_empty()).count();
    assert!(with_pii * 2 >= items.len() - 10, "about half carry PII");
    let an = OfflineAnalyzer::new(&InsightsConfig::default(), None).unwrap();
    let tenant = TenantId::parse("eval").unwrap();
    let inputs: Vec<AnalysisInput> = items
        .iter()
        .map(|i| AnalysisInput::customer(tenant.clone(), i.text.clone()))
        .collect();
    let analyses = an.analyze_batch(&inputs).await.unwrap();
    let pred: Vec<Vec<Span>> = analyses.iter().map(eval::spans_of).collect();
    let s = eval::score_pii(&items, &pred);
    for t in [
        "email",
        "phone",
        "credit_card",
        "iban",
        "us_ssn",
        "ip_address",
    ] {
        assert!(
            s[t].precision() >= 0.95,
            "{t} precision {:.3}",
            s[t].precision()
        );
        assert!(s[t].recall() >= 0.95, "{t} recall {:.3}", s[t].recall());
    }
    assert!(s["ALL"].f1() >= 0.85, "overall PII F1 {:.3}", s["ALL"].f1());
    assert!(eval::visible_after_redaction(&items, &pred) <= 0.1);
    let gold: Vec<String> = items.iter().map(|i| i.sentiment.clone()).collect();
    let ours: Vec<String> = analyses
        .iter()
        .map(|a| a.sentiment.label.as_str().to_owned())
        .collect();
    let (_, f1) = eval::accuracy_and_macro_f1(&gold, &ours);
    assert!(f1 >= 0.6, "sentiment macro-F1 {f1:.3}");
}
