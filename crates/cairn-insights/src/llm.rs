//! The LLM analyser: one structured-output call per message (JSON Schema
//! enforced by the provider, validated again on return), with the offline
//! analysis passed in so that the model refines rather than re-detects, and the
//! offline analysis used whenever the model fails, times out or returns
//! something invalid. `[insights.parts]` chooses, per part, whether the model's
//! answer is used.
//!
//! Under the `redact_model` policy the model sees placeholders instead of the
//! PII values; its PII refinements are then ignored (their offsets would point
//! into the masked text).

use crate::offline::{OfflineAnalyzer, clip};
use async_trait::async_trait;
use cairn_core::Role;
use cairn_core::insights::{
    Analysis, AnalyzerTag, PiiEntity, PiiPolicy, PiiReport, Pseudonyms, SentimentLabel, Urgency,
};
use cairn_core::insights_config::{ESCALATION_CONDITIONS, InsightsConfig, PartMode};
use cairn_core::ports::{
    AnalysisInput, AnalyzeError, Analyzer, ChatMessage, ChatModel, ChatRequest, JsonSchemaSpec,
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

const SYSTEM: &str = "You analyse one customer-support message for a support team. \
Answer only with JSON that follows the given schema. `offline` is a first analysis by \
rules and small models: keep what is right, correct what is wrong. Sentiment describes \
the writer (sarcasm such as \"great, another outage\" is negative; thanks followed by a \
complaint is negative). `intent` is one label of `taxonomy`. `pii_rejected` lists the \
indexes of offline PII entities that are not personal data (order numbers, versions); \
`pii_added` lists personal data the offline analysis missed, with character offsets.";

/// Which PII types the model may add.
const PII_TYPES: &[&str] = &[
    "email",
    "phone",
    "credit_card",
    "iban",
    "us_ssn",
    "ip_address",
    "person",
    "street_address",
    "date_of_birth",
    "url",
    "api_key",
];

/// The model's answer.
#[derive(Debug, Deserialize)]
struct LlmAnswer {
    sentiment: LlmSentiment,
    intent: String,
    urgency: Urgency,
    escalation_conditions: Vec<String>,
    suggested_actions: Vec<String>,
    pii_rejected: Vec<usize>,
    pii_added: Vec<LlmPii>,
}

#[derive(Debug, Deserialize)]
struct LlmSentiment {
    label: SentimentLabel,
    score: f32,
    confidence: f32,
    emotion: String,
    reasoning: String,
}

#[derive(Debug, Deserialize)]
struct LlmPii {
    #[serde(rename = "type")]
    kind: String,
    start: usize,
    end: usize,
}

/// The schema of the model's answer (strict mode: every property required,
/// no others).
pub fn answer_schema(intents: &[String]) -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["sentiment", "intent", "urgency", "escalation_conditions", "suggested_actions", "pii_rejected", "pii_added"],
        "properties": {
            "sentiment": {
                "type": "object",
                "additionalProperties": false,
                "required": ["label", "score", "confidence", "emotion", "reasoning"],
                "properties": {
                    "label": {"enum": ["negative", "neutral", "positive"]},
                    "score": {"type": "number", "minimum": -1, "maximum": 1},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "emotion": {"enum": ["frustrated", "angry", "anxious", "confused", "satisfied", "grateful", "disappointed", "neutral"]},
                    "reasoning": {"type": "string", "maxLength": 300}
                }
            },
            "intent": {"enum": intents},
            "urgency": {"enum": ["low", "medium", "high"]},
            "escalation_conditions": {"type": "array", "items": {"enum": ESCALATION_CONDITIONS}, "maxItems": 5},
            "suggested_actions": {"type": "array", "items": {"type": "string", "maxLength": 300}, "maxItems": 5},
            "pii_rejected": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 100},
            "pii_added": {
                "type": "array",
                "maxItems": 100,
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["type", "start", "end"],
                    "properties": {
                        "type": {"enum": PII_TYPES},
                        "start": {"type": "integer", "minimum": 0},
                        "end": {"type": "integer", "minimum": 0}
                    }
                }
            }
        }
    })
}

/// The LLM analyser.
pub struct LlmAnalyzer {
    offline: Arc<OfflineAnalyzer>,
    model: Arc<dyn ChatModel>,
    config: InsightsConfig,
}

/// Why the model's answer was not used (for logs; never holds message text).
#[derive(Debug, thiserror::Error)]
enum Fallback {
    #[error("timed out")]
    Timeout,
    #[error("model error: {0}")]
    Model(String),
    #[error("invalid answer: {0}")]
    Invalid(String),
}

impl Fallback {
    fn code(&self) -> &'static str {
        match self {
            Fallback::Timeout => "timeout",
            Fallback::Model(_) => "model_error",
            Fallback::Invalid(_) => "invalid_json",
        }
    }
}

impl LlmAnalyzer {
    /// An analyser asking `model`, with `offline` as input and fallback.
    pub fn new(
        offline: Arc<OfflineAnalyzer>,
        model: Arc<dyn ChatModel>,
        config: InsightsConfig,
    ) -> Self {
        Self {
            offline,
            model,
            config,
        }
    }

    async fn ask(
        &self,
        input: &AnalysisInput,
        offline: &Analysis,
    ) -> Result<(LlmAnswer, bool), Fallback> {
        let classifier = self.offline.classifier(input.tenant.as_str());
        let intents: Vec<String> = classifier
            .taxonomy()
            .intents
            .iter()
            .map(|i| i.label.clone())
            .collect();
        let taxonomy: Vec<Value> = classifier
            .taxonomy()
            .intents
            .iter()
            .map(|i| json!({"label": i.label, "description": i.description}))
            .collect();
        let text = clip(&input.text, self.config.max_text_chars);
        let masked = self.config.policy_for(input.tenant.as_str()) == PiiPolicy::RedactModel
            && offline.pii.has_pii;
        let shown = if masked {
            Pseudonyms::new().mask(text, &offline.pii.entities)
        } else {
            text.to_owned()
        };
        let offline_view = json!({
            "sentiment": offline.sentiment,
            "intent": offline.intent,
            "urgency": offline.urgency,
            "escalation_conditions": offline.escalation_conditions,
            "suggested_actions": offline.suggested_actions,
            "pii": offline.pii.entities.iter().enumerate().map(|(i, e)| json!({"index": i, "type": e.kind, "start": e.start, "end": e.end})).collect::<Vec<_>>(),
        });
        let user = json!({
            "message": shown,
            "sender": input.sender,
            "taxonomy": taxonomy,
            "offline": offline_view,
        });
        let request = ChatRequest {
            options: Default::default(),
            system: SYSTEM.to_owned(),
            messages: vec![ChatMessage::text(Role::User, user.to_string())],
            tools: Vec::new(),
        };
        let schema_value = answer_schema(&intents);
        let spec = JsonSchemaSpec {
            name: "support_message_analysis".into(),
            schema: schema_value.clone(),
        };
        let (raw, _usage) = tokio::time::timeout(
            self.config.llm_timeout,
            self.model.complete_json(&request, &spec),
        )
        .await
        .map_err(|_| Fallback::Timeout)?
        .map_err(|e| Fallback::Model(e.to_string()))?;
        let value: Value =
            serde_json::from_str(&raw).map_err(|e| Fallback::Invalid(format!("not JSON: {e}")))?;
        let validator = jsonschema::validator_for(&schema_value)
            .map_err(|e| Fallback::Invalid(e.to_string()))?;
        if let Some(err) = validator.iter_errors(&value).next() {
            return Err(Fallback::Invalid(format!(
                "{} at {}",
                err,
                err.instance_path()
            )));
        }
        let answer: LlmAnswer =
            serde_json::from_value(value).map_err(|e| Fallback::Invalid(e.to_string()))?;
        Ok((answer, masked))
    }

    fn merge(
        &self,
        mut a: Analysis,
        answer: LlmAnswer,
        masked: bool,
        text_chars: usize,
    ) -> Analysis {
        let p = &self.config.parts;
        let tag = AnalyzerTag {
            name: "llm".into(),
            version: self.model.provider().to_owned(),
        };
        if p.sentiment != PartMode::Offline {
            let s = answer.sentiment;
            a.sentiment.label = s.label;
            a.sentiment.score = s.score.clamp(-1.0, 1.0);
            a.sentiment.confidence = s.confidence.clamp(0.0, 1.0);
            a.sentiment.emotion = s.emotion;
            a.sentiment.reasoning = s.reasoning.chars().take(300).collect();
            a.analyzer.insert("sentiment".into(), tag.clone());
        }
        if p.intent != PartMode::Offline {
            a.intent = answer.intent;
            a.intent_confidence = 0.9;
            a.analyzer.insert("intent".into(), tag.clone());
        }
        if p.urgency != PartMode::Offline {
            a.urgency = answer.urgency;
            let conditions: Vec<&str> = answer
                .escalation_conditions
                .iter()
                .map(String::as_str)
                .collect();
            a.escalation_reason = crate::urgency::reason(&conditions);
            a.requires_escalation = !conditions.is_empty();
            a.escalation_conditions = answer.escalation_conditions;
            a.suggested_actions = answer.suggested_actions;
            a.analyzer.insert("urgency".into(), tag.clone());
        }
        if p.pii != PartMode::Offline && !masked {
            let mut entities: Vec<PiiEntity> = a
                .pii
                .entities
                .iter()
                .enumerate()
                .filter(|(i, _)| !answer.pii_rejected.contains(i))
                .map(|(_, e)| e.clone())
                .collect();
            for added in answer.pii_added {
                let fits = added.start < added.end && added.end <= text_chars;
                let overlaps = entities
                    .iter()
                    .any(|e| added.start < e.end && e.start < added.end);
                if fits && !overlaps {
                    entities.push(PiiEntity {
                        kind: added.kind,
                        start: added.start,
                        end: added.end,
                        score: 0.8,
                        detector: "llm".into(),
                        value: "[REDACTED]".into(),
                    });
                }
            }
            a.pii = PiiReport::of(entities);
            a.analyzer.insert("pii".into(), tag);
        }
        a
    }
}

#[async_trait]
impl Analyzer for LlmAnalyzer {
    fn name(&self) -> &'static str {
        "llm"
    }

    async fn analyze(&self, input: &AnalysisInput) -> Result<Analysis, AnalyzeError> {
        let offline = self.offline.analyze(input).await?;
        if !self.config.parts.uses_llm() {
            return Ok(offline);
        }
        match self.ask(input, &offline).await {
            Ok((answer, masked)) => {
                let chars = clip(&input.text, self.config.max_text_chars)
                    .chars()
                    .count();
                Ok(self.merge(offline, answer, masked, chars))
            }
            Err(e) => {
                tracing::warn!(reason = e.code(), error = %e, "LLM analysis not used; the offline analysis stands");
                let mut a = offline;
                for part in ["sentiment", "intent", "urgency", "pii"] {
                    if let Some(t) = a.analyzer.get_mut(part) {
                        t.version = format!("{} (llm fallback: {})", t.version, e.code());
                    }
                }
                Ok(a)
            }
        }
    }

    async fn analyze_batch(&self, inputs: &[AnalysisInput]) -> Result<Vec<Analysis>, AnalyzeError> {
        let all = futures::future::join_all(inputs.iter().map(|i| self.analyze(i))).await;
        all.into_iter().collect()
    }
}
