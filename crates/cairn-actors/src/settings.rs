//! Settings and shared dependencies of the agents.

use crate::catalog::ToolCatalog;
use cairn_core::config::Config;
use cairn_core::ports::{ChatModel, EventBus, EventStream, MemoryStore};
use std::sync::Arc;
use std::time::Duration;

/// What shapes a turn (from `[agent]`, `[memory]` and `[llm]`).
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Model calls allowed per turn.
    pub max_steps: u32,
    /// Tool calls run from one model step.
    pub max_tool_calls_per_step: u32,
    /// Deadline of one tool call.
    pub tool_timeout: Duration,
    /// Starts allowed for one turn before it is failed as crashing.
    pub max_turn_attempts: u32,
    /// Idle time after which a conversation actor is stopped.
    pub idle_passivation: Duration,
    /// System prompt.
    pub system_prompt: String,
    /// Messages kept verbatim in the context window.
    pub window_messages: usize,
    /// Bound of the rolling summary, in characters.
    pub summary_max_chars: usize,
    /// Ask the model to stream (emits `answer.delta`).
    pub stream: bool,
    /// This replica's name in conversation leases (unique per process).
    pub replica_id: String,
    /// How long a conversation lease lasts without renewal; a dead replica's
    /// conversations are taken over after at most this long.
    pub lease_ttl: Duration,
    /// Resume every conversation with unfinished work at start-up (one process
    /// owns everything). Off on Kafka, where partition assignment decides.
    pub resume_all_at_start: bool,
    /// Tool calls that wait for a person's approval.
    pub approvals: cairn_core::approvals::ApprovalsConfig,
}

impl AgentSettings {
    /// The settings of a loaded configuration.
    pub fn from_config(c: &Config) -> Self {
        Self {
            max_steps: c.agent.max_steps,
            max_tool_calls_per_step: c.agent.max_tool_calls_per_step,
            tool_timeout: c.agent.tool_timeout,
            max_turn_attempts: c.agent.max_turn_attempts,
            idle_passivation: c.agent.idle_passivation,
            system_prompt: c.agent.system_prompt.clone(),
            window_messages: c.memory.window_messages,
            summary_max_chars: c.memory.summary_max_chars,
            stream: c.llm.stream,
            replica_id: format!("replica-{}", uuid::Uuid::now_v7()),
            lease_ttl: c.agent.lease_ttl,
            resume_all_at_start: c.kafka.brokers.is_empty(),
            approvals: c.approvals.clone(),
        }
    }
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// Everything a conversation actor needs; cheap to clone.
#[derive(Clone)]
pub struct AgentDeps {
    /// Conversation memory.
    pub memory: Arc<dyn MemoryStore>,
    /// Per-conversation event streams.
    pub events: Arc<dyn EventStream>,
    /// The chat model.
    pub model: Arc<dyn ChatModel>,
    /// Tools offered to agents.
    pub tools: Arc<ToolCatalog>,
    /// Turn settings.
    pub settings: Arc<AgentSettings>,
    /// Where stored turn events are republished for downstream consumers
    /// (`conversation_events`), when a bus is there.
    pub relay: Option<Relay>,
    /// Where turn outcomes and model calls are reported (the alert rules).
    pub signals: cairn_core::signals::Signals,
    /// Keeps PII from the model under the `redact_model` policy (`None`: the
    /// model sees text as stored).
    pub pii: Option<Arc<PiiGuard>>,
    /// Agent profiles and routing by intent (`None`: one agent, `[agent]`).
    pub routing: Option<Arc<Routing>>,
    /// Where each turn's `turn.summary` goes for analytics (`None`: nowhere).
    pub analytics: Option<Relay>,
    /// Token budgets: checked before each model call, and where each call's
    /// usage is recorded (`None`: neither).
    pub budget: Option<Arc<dyn cairn_core::ports::TokenBudget>>,
    /// Draining at shutdown, and the count of running turns.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Where turn webhooks are published (`conversation_events`), for messages
    /// that name a `webhook`.
    pub webhooks: Option<Relay>,
}

/// Agent profiles and the classifier that routes messages among them.
pub struct Routing {
    /// The profiles and rules.
    pub router: cairn_desk::routing::AgentRouter,
    /// Finds a message's intent when a rule needs one.
    pub classifier: Option<Arc<dyn cairn_core::ports::Analyzer>>,
}

/// The `redact_model` policy in a turn: the model sees stable placeholders
/// (`<EMAIL_1>`) instead of PII values, tools see placeholders unless listed in
/// `insights.pii_tools`, and the answer has the values restored for the user.
pub struct PiiGuard {
    /// Finds the PII to mask.
    pub scanner: Arc<dyn cairn_core::insights::PiiScanner>,
    /// `[insights]`: the policy per tenant and `pii_tools`.
    pub config: Arc<cairn_core::insights_config::InsightsConfig>,
}

impl PiiGuard {
    /// True when `tenant`'s turns mask PII from the model.
    pub fn masks(&self, tenant: &cairn_core::TenantId) -> bool {
        self.config.policy_for(tenant.as_str()) == cairn_core::insights::PiiPolicy::RedactModel
    }

    /// True when `tool` may see PII values.
    pub fn tool_sees_pii(&self, tool: &str) -> bool {
        self.config.pii_tools.iter().any(|t| t == tool)
    }
}

/// The bus and topic that turn events are republished on.
#[derive(Clone)]
pub struct Relay {
    /// The bus.
    pub bus: Arc<dyn EventBus>,
    /// The topic (`conversation_events`).
    pub topic: String,
}
