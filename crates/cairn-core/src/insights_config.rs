//! The `[insights]` section of the configuration: the support-intelligence
//! pipeline, its analysers, the PII policy and the escalation rules.

use crate::config::ConfigError;
use crate::insights::PiiPolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Which analyser produces a part of an analysis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartMode {
    /// The offline analyser only (no network).
    #[default]
    Offline,
    /// The LLM only; a failed call leaves the part to the offline analyser
    /// anyway (an analysis is never missing a part), and says so in `analyzer`.
    Llm,
    /// The LLM, with the offline analysis when the call fails, times out or
    /// returns invalid JSON (the same behaviour as `llm`, named for clarity).
    LlmWithOfflineFallback,
}

/// Which analyser produces each part (`[insights.parts]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InsightsParts {
    /// Sentiment and emotion.
    pub sentiment: PartMode,
    /// Personal data (the LLM refines the offline result, it never replaces it).
    pub pii: PartMode,
    /// Intent.
    pub intent: PartMode,
    /// Urgency, escalation and suggested actions.
    pub urgency: PartMode,
}

impl InsightsParts {
    /// True when any part asks for the LLM.
    pub fn uses_llm(&self) -> bool {
        [self.sentiment, self.pii, self.intent, self.urgency]
            .iter()
            .any(|m| *m != PartMode::Offline)
    }
}

/// Which model chooses the intent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentModel {
    /// MiniLM when `knowledge.minilm_dir` is set, lexical otherwise.
    #[default]
    Auto,
    /// Word overlap with the taxonomy's examples (thousands of messages/s).
    Lexical,
    /// MiniLM sentence embeddings (more accurate, about 70 messages/s on 2 cores).
    Minilm,
}

/// Per-tenant overrides (`[insights.tenants.<tenant>]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantInsights {
    /// The tenant's PII policy.
    pub pii: Option<PiiPolicy>,
    /// The tenant's intent taxonomy (JSON, the shape of the shipped
    /// `crates/cairn-insights/data/taxonomy.json`).
    pub taxonomy_file: Option<PathBuf>,
}

/// `[insights]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InsightsConfig {
    /// Analyses every message (the InsightsActor and its bridge).
    pub enabled: bool,
    /// What happens to personal data: `detect`, `redact_store`, `redact_model`.
    pub pii: PiiPolicy,
    /// Which analyser produces each part.
    pub parts: InsightsParts,
    /// The intent taxonomy (JSON); the shipped default when unset.
    pub taxonomy_file: Option<PathBuf>,
    /// The intent model: `auto`, `lexical` or `minilm` (needs
    /// `knowledge.minilm_dir`).
    pub intent_model: IntentModel,
    /// Below this similarity to every intent's examples (MiniLM cosine), a
    /// message is `general_question`.
    pub intent_threshold: f32,
    /// PII below this score is not reported (nor redacted).
    pub pii_threshold: f32,
    /// Analysis reads at most this many characters of a message (the rest is
    /// not analysed; `POST /v1/analyze` refuses longer texts).
    pub max_text_chars: usize,
    /// How long the LLM analyser may take before the offline result is used.
    #[serde(with = "humantime_serde")]
    pub llm_timeout: Duration,
    /// Tools that may see PII values under `redact_model` (their arguments get
    /// the values back); every other tool sees the placeholders.
    pub pii_tools: Vec<String>,
    /// Conditions that raise an escalation alert (once per conversation and
    /// condition): `negative_high_urgency`, `human_requested`, `legal_threat`,
    /// `safety`, `sensitive_pii`.
    pub escalate_on: Vec<String>,
    /// Severity label of escalation alerts.
    pub escalation_severity: String,
    /// Messages analysed at once per replica.
    pub concurrency: usize,
    /// Per-tenant overrides.
    pub tenants: BTreeMap<String, TenantInsights>,
}

/// The escalation conditions Cairn knows.
pub const ESCALATION_CONDITIONS: &[&str] = &[
    "negative_high_urgency",
    "human_requested",
    "legal_threat",
    "safety",
    "sensitive_pii",
];

impl Default for InsightsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            pii: PiiPolicy::Detect,
            parts: InsightsParts::default(),
            taxonomy_file: None,
            intent_model: IntentModel::Auto,
            intent_threshold: 0.35,
            pii_threshold: 0.5,
            max_text_chars: 20_000,
            llm_timeout: Duration::from_secs(15),
            pii_tools: Vec::new(),
            escalate_on: ESCALATION_CONDITIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            escalation_severity: "warning".into(),
            concurrency: 32,
            tenants: BTreeMap::new(),
        }
    }
}

impl InsightsConfig {
    /// The PII policy of `tenant`.
    pub fn policy_for(&self, tenant: &str) -> PiiPolicy {
        self.tenants
            .get(tenant)
            .and_then(|t| t.pii)
            .unwrap_or(self.pii)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| {
            Err(ConfigError::Key {
                key: key.into(),
                message: message.into(),
            })
        };
        if !(0.0..=1.0).contains(&self.intent_threshold) {
            return bad("insights.intent_threshold", "must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.pii_threshold) {
            return bad("insights.pii_threshold", "must be between 0 and 1");
        }
        if !(1..=1_000_000).contains(&self.max_text_chars) {
            return bad("insights.max_text_chars", "must be between 1 and 1000000");
        }
        if self.llm_timeout.is_zero() {
            return bad("insights.llm_timeout", "must be above zero");
        }
        if !(1..=4096).contains(&self.concurrency) {
            return bad("insights.concurrency", "must be between 1 and 4096");
        }
        for c in &self.escalate_on {
            if !ESCALATION_CONDITIONS.contains(&c.as_str()) {
                return bad(
                    "insights.escalate_on",
                    &format!(
                        "unknown condition `{c}`; known: {}",
                        ESCALATION_CONDITIONS.join(", ")
                    ),
                );
            }
        }
        let sev = &self.escalation_severity;
        if sev.is_empty()
            || sev.len() > 64
            || !sev
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return bad(
                "insights.escalation_severity",
                "must be a short label value",
            );
        }
        for t in self.tenants.keys() {
            if crate::TenantId::parse(t).is_err() {
                return bad(&format!("insights.tenants.{t}"), "is not a valid tenant id");
            }
        }
        Ok(())
    }
}
