//! Signals: what happened inside Cairn that its own alert rules watch (turns
//! ending, model calls, ingestion failures, crash loops, DLQ writes). Actors
//! emit them through a [`Signals`] handle; the alert rules (`cairn-alerts`)
//! count them in sliding windows. Emitting never blocks and never fails.

use std::sync::Arc;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A turn ended, answered or failed.
    TurnEnded {
        /// The tenant.
        tenant: String,
        /// True when it failed.
        failed: bool,
    },
    /// A turn was abandoned after crashing `agent.max_turn_attempts` times.
    TurnCrashed {
        /// The tenant.
        tenant: String,
        /// The conversation.
        conversation: String,
    },
    /// A call to the model provider finished.
    ModelCall {
        /// The tenant.
        tenant: String,
        /// True when it failed or timed out.
        failed: bool,
    },
    /// An ingestion job failed for good.
    IngestionFailed {
        /// The tenant.
        tenant: String,
    },
    /// A tool call has waited for approval longer than `approvals.alert_after`.
    ApprovalWaiting {
        /// The tenant.
        tenant: String,
        /// The conversation.
        conversation: String,
        /// The tool waiting.
        tool: String,
    },
    /// A record was written to the DLQ.
    DlqRecord {
        /// The tenant of the record (`unknown` when undecodable).
        tenant: String,
        /// The topic it came from.
        topic: String,
    },
}

/// Where signals go.
pub trait SignalSink: Send + Sync + 'static {
    /// Takes one signal; must not block.
    fn emit(&self, signal: Signal);
}

/// A cheap handle to the sink; the default drops every signal.
#[derive(Clone, Default)]
pub struct Signals(Option<Arc<dyn SignalSink>>);

impl Signals {
    /// Signals go to `sink`.
    pub fn new(sink: Arc<dyn SignalSink>) -> Self {
        Self(Some(sink))
    }

    /// Emits one signal.
    pub fn emit(&self, signal: Signal) {
        if let Some(s) = &self.0 {
            s.emit(signal);
        }
    }
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Signals(on)"
        } else {
            "Signals(off)"
        })
    }
}
