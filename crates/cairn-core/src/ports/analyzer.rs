//! The Analyzer port: the support-intelligence analysis of one message
//! (sentiment, PII, intent, urgency, language). The offline analyser and the
//! LLM analyser (with offline fallback) implement it and pass one conformance
//! suite (`cairn_insights::conformance`).

use crate::ids::TenantId;
use crate::insights::{Analysis, PiiReport, Sender};
use async_trait::async_trait;

/// One text to analyse.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisInput {
    /// The tenant (chooses the taxonomy; travels with every model call).
    pub tenant: TenantId,
    /// The text.
    pub text: String,
    /// Who wrote it (`POST /v1/analyze` analyses as a customer).
    pub sender: Sender,
    /// PII found before the text was redacted (`redact_store`): the analysis
    /// reports it instead of finding nothing in the placeholders.
    pub known_pii: Option<PiiReport>,
}

impl AnalysisInput {
    /// A customer's text for `tenant`.
    pub fn customer(tenant: TenantId, text: impl Into<String>) -> Self {
        Self {
            tenant,
            text: text.into(),
            sender: Sender::Customer,
            known_pii: None,
        }
    }
}

/// Why an analysis failed (the offline analyser never fails on text; the
/// embedding model may).
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// A model the analyser needs failed.
    #[error("analysis model failed: {0}")]
    Model(String),
}

/// Analyses messages.
#[async_trait]
pub trait Analyzer: Send + Sync + 'static {
    /// `offline` or `llm`.
    fn name(&self) -> &'static str;

    /// The analysis of one text.
    async fn analyze(&self, input: &AnalysisInput) -> Result<Analysis, AnalyzeError>;

    /// The analyses of several texts (the offline analyser embeds them in one
    /// batch); the default analyses them one by one.
    async fn analyze_batch(&self, inputs: &[AnalysisInput]) -> Result<Vec<Analysis>, AnalyzeError> {
        let mut out = Vec::with_capacity(inputs.len());
        for i in inputs {
            out.push(self.analyze(i).await?);
        }
        Ok(out)
    }
}
