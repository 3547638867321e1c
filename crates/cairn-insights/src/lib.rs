//! Support intelligence: the analysers behind the `Analyzer` port and the
//! per-conversation aggregate the InsightsActor keeps.
//!
//! - [`pii`]: PII recognisers with validation and context (cards, IBANs, phones,
//!   SSNs, IPs, emails, URLs, secrets, names, addresses, birth dates).
//! - [`sentiment`]: sentiment and emotion, VADER extended for support language.
//! - [`intent`]: the intent taxonomy and its classifier (MiniLM or lexical).
//! - [`urgency`]: urgency, escalation conditions and suggested actions.
//! - [`language`]: language detection.
//! - [`offline`]: the offline analyser, built from the modules above.
//! - [`llm`]: the LLM analyser (one structured-output call per message, the
//!   offline analysis as input and as fallback).
//! - [`aggregate`]: folding analyses into a conversation's insights, and the
//!   escalation conditions newly met.
//! - [`eval`]: scoring of the labelled set (`cairn-eval insights`).
//! - [`conformance`]: the cases every `Analyzer` passes.

pub mod aggregate;
pub mod conformance;
pub mod eval;
pub mod intent;
pub mod language;
pub mod llm;
pub mod offline;
pub mod pii;
pub mod sentiment;
pub mod urgency;

pub use offline::OfflineAnalyzer;
pub use pii::PiiRecognizer;
