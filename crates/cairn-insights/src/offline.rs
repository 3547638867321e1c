//! The offline analyser: no LLM, no network. PII by the recognisers
//! ([`crate::pii`]), sentiment by lexicon and rules ([`crate::sentiment`]),
//! intent by nearest examples ([`crate::intent`], MiniLM when it is loaded),
//! urgency and escalation by rules ([`crate::urgency`]), language by trigrams
//! ([`crate::language`]).

use crate::intent::{IntentClassifier, Taxonomy, TaxonomyError};
use crate::pii::PiiRecognizer;
use crate::sentiment::SentimentModel;
use crate::urgency::triage;
use async_trait::async_trait;
use cairn_core::insights::{Analysis, AnalyzerTag, PiiReport, Sender, Urgency};
use cairn_core::insights_config::InsightsConfig;
use cairn_core::ports::{AnalysisInput, AnalyzeError, Analyzer, DenseEmbedder};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Version of the offline analysers, reported in `analyzer`.
pub const OFFLINE_VERSION: &str = concat!("cairn-insights-", env!("CARGO_PKG_VERSION"));

/// The offline analyser.
pub struct OfflineAnalyzer {
    pii: PiiRecognizer,
    sentiment: SentimentModel,
    intents: IntentClassifier,
    tenant_intents: HashMap<String, IntentClassifier>,
    max_chars: usize,
}

/// The first `max` characters of `text`.
pub fn clip(text: &str, max: usize) -> &str {
    &text[..cairn_core::insights::byte_at(text, max)]
}

impl OfflineAnalyzer {
    /// An analyser configured by `[insights]`; intent is dense when `embedder`
    /// is given. Fails when a taxonomy file cannot be read or is invalid.
    pub fn new(
        config: &InsightsConfig,
        embedder: Option<Arc<dyn DenseEmbedder>>,
    ) -> Result<Self, TaxonomyError> {
        let taxonomy = match &config.taxonomy_file {
            Some(p) => Taxonomy::load(p)?,
            None => Taxonomy::default_taxonomy(),
        };
        let mut tenant_intents = HashMap::new();
        for (tenant, t) in &config.tenants {
            if let Some(p) = &t.taxonomy_file {
                let c = IntentClassifier::new(
                    Taxonomy::load(p)?,
                    embedder.clone(),
                    config.intent_threshold,
                );
                tenant_intents.insert(tenant.clone(), c);
            }
        }
        Ok(Self {
            pii: PiiRecognizer::new(config.pii_threshold),
            sentiment: SentimentModel::new(),
            intents: IntentClassifier::new(taxonomy, embedder, config.intent_threshold),
            tenant_intents,
            max_chars: config.max_text_chars,
        })
    }

    /// The PII recogniser (for redaction before storage).
    pub fn recognizer(&self) -> &PiiRecognizer {
        &self.pii
    }

    /// The intent classifier of `tenant`.
    pub fn classifier(&self, tenant: &str) -> &IntentClassifier {
        self.tenant_intents.get(tenant).unwrap_or(&self.intents)
    }

    /// The PII of `input`, and its text with that PII as placeholders (what
    /// intent reads: an email or a card number says nothing about what the
    /// customer wants). Entities known from before a redaction point into the
    /// original text: they are reported, not masked.
    fn pii_of(&self, input: &AnalysisInput) -> (PiiReport, String) {
        let text = clip(&input.text, self.max_chars);
        let found = self.pii.find(text);
        let masked = cairn_core::insights::redact(text, &found);
        let mut all = found;
        if let Some(k) = &input.known_pii {
            all.extend(k.entities.iter().cloned());
        }
        (PiiReport::of(all), masked)
    }

    fn tag(version: String) -> AnalyzerTag {
        AnalyzerTag {
            name: "offline".into(),
            version,
        }
    }

    /// The analysis of `input` with its PII found and an intent chosen.
    pub fn assemble(
        &self,
        input: &AnalysisInput,
        pii: PiiReport,
        intent: (String, f32),
    ) -> Analysis {
        let text = clip(&input.text, self.max_chars);
        let sentiment = self.sentiment.analyze(text);
        let language = crate::language::detect(text);
        let (urgency, conditions, actions) = match input.sender {
            Sender::Customer => {
                let t = triage(text, &intent.0, &sentiment, &pii);
                (t.urgency, t.conditions, t.suggested_actions)
            }
            // A human agent's message is analysed, but it is not a request.
            Sender::Agent => (Urgency::Low, Vec::new(), Vec::new()),
        };
        let mut analyzer = BTreeMap::new();
        analyzer.insert(
            "sentiment".into(),
            Self::tag(format!("{OFFLINE_VERSION}/vader-support")),
        );
        analyzer.insert(
            "pii".into(),
            Self::tag(format!("{OFFLINE_VERSION}/recognizers")),
        );
        analyzer.insert(
            "intent".into(),
            Self::tag(format!(
                "{OFFLINE_VERSION}/{}",
                self.classifier(input.tenant.as_str()).model()
            )),
        );
        analyzer.insert(
            "urgency".into(),
            Self::tag(format!("{OFFLINE_VERSION}/rules")),
        );
        analyzer.insert("language".into(), Self::tag("whatlang-0.16".into()));
        Analysis {
            sentiment,
            pii,
            intent: intent.0,
            intent_confidence: intent.1,
            urgency,
            requires_escalation: !conditions.is_empty(),
            escalation_reason: crate::urgency::reason(&conditions),
            escalation_conditions: conditions.iter().map(|c| (*c).to_owned()).collect(),
            suggested_actions: actions,
            language,
            analyzer,
        }
    }
}

#[async_trait]
impl Analyzer for OfflineAnalyzer {
    fn name(&self) -> &'static str {
        "offline"
    }

    async fn analyze(&self, input: &AnalysisInput) -> Result<Analysis, AnalyzeError> {
        let mut v = self.analyze_batch(std::slice::from_ref(input)).await?;
        v.pop()
            .ok_or_else(|| AnalyzeError::Model("no analysis".into()))
    }

    async fn analyze_batch(&self, inputs: &[AnalysisInput]) -> Result<Vec<Analysis>, AnalyzeError> {
        let (pii, masked): (Vec<PiiReport>, Vec<String>) =
            inputs.iter().map(|i| self.pii_of(i)).unzip();
        // One embedding batch per tenant taxonomy.
        let mut intents: Vec<Option<(String, f32)>> = vec![None; inputs.len()];
        let mut by_tenant: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, input) in inputs.iter().enumerate() {
            let key = if self.tenant_intents.contains_key(input.tenant.as_str()) {
                input.tenant.as_str()
            } else {
                ""
            };
            by_tenant.entry(key).or_default().push(i);
        }
        for (tenant, idx) in by_tenant {
            let texts: Vec<&str> = idx.iter().map(|i| masked[*i].as_str()).collect();
            let got = self
                .classifier(tenant)
                .classify(&texts)
                .await
                .map_err(AnalyzeError::Model)?;
            for (i, r) in idx.into_iter().zip(got) {
                intents[i] = Some(r);
            }
        }
        Ok(inputs
            .iter()
            .zip(intents)
            .zip(pii)
            .map(|((input, intent), pii)| {
                let intent =
                    intent.unwrap_or_else(|| (self.intents.taxonomy().fallback.clone(), 0.0));
                self.assemble(input, pii, intent)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_offline_analyser_passes_the_conformance_suite() {
        let a = OfflineAnalyzer::new(&InsightsConfig::default(), None).unwrap();
        crate::conformance::run(&a).await;
    }
}
