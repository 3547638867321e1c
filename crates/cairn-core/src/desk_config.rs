//! The support desk's configuration: `[tickets]`, `[analytics]`, the agent
//! profiles (`[[agents]]`) and the routing from intent to profile (`[routing]`).

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Weights of the risk formula (`[tickets.risk_weights]`); they are
/// normalised to sum to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskWeights {
    /// Urgency (and priority).
    pub urgency: f64,
    /// Negative sentiment.
    pub sentiment: f64,
    /// The customer's recent tickets.
    pub history: f64,
    /// Personal data in the text.
    pub pii: f64,
}

impl Default for RiskWeights {
    fn default() -> Self {
        Self {
            urgency: 0.45,
            sentiment: 0.25,
            history: 0.15,
            pii: 0.15,
        }
    }
}

/// `[tickets]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TicketsConfig {
    /// Accepts and enriches tickets (`/v1/tickets`, the `tickets` topic).
    pub enabled: bool,
    /// Channels a ticket may name (anything else is refused, so analytics
    /// stay bounded).
    pub channels: Vec<String>,
    /// Longest subject, in characters.
    pub max_subject_chars: usize,
    /// Longest body, in characters.
    pub max_body_chars: usize,
    /// A ticket whose risk reaches this raises one alert.
    pub risk_alert_threshold: f64,
    /// Severity label of that alert.
    pub risk_alert_severity: String,
    /// The risk formula's weights.
    pub risk_weights: RiskWeights,
    /// How far back the customer's tickets count in the risk.
    #[serde(with = "humantime_serde")]
    pub history_window: Duration,
    /// Tickets enriched at once per replica.
    pub concurrency: usize,
    /// Model calls the reply drafter may make (tool calls included).
    pub reply_max_steps: u32,
    /// Default page size of `GET /v1/tickets`.
    pub page_size: usize,
    /// Largest page size.
    pub max_page_size: usize,
    /// Tickets one page may look at while filtering; past it the page ends
    /// early with a cursor.
    pub max_scan: usize,
    /// Attempts at enriching one revision before it is marked failed.
    pub max_attempts: u32,
    /// How long the enricher waits for an edit's new revision to be stored. A
    /// `PATCH` puts the revision on the bus before it stores it, so the enricher
    /// may read it first; after this wait (the request died in between) the
    /// enricher stores the revision itself from the event, so no edit on the bus
    /// is left unenriched.
    #[serde(with = "humantime_serde")]
    pub edit_wait: Duration,
}

impl Default for TicketsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            channels: [
                "email", "chat", "web", "form", "phone", "api", "social", "other",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            max_subject_chars: 500,
            max_body_chars: 20_000,
            risk_alert_threshold: 0.8,
            risk_alert_severity: "critical".into(),
            risk_weights: RiskWeights::default(),
            history_window: Duration::from_secs(30 * 86_400),
            concurrency: 8,
            reply_max_steps: 3,
            page_size: 50,
            max_page_size: 200,
            max_scan: 5_000,
            max_attempts: 3,
            edit_wait: Duration::from_secs(30),
        }
    }
}

/// `[analytics]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// Keeps counters from the bus and serves `/v1/analytics/*` and
    /// `/v1/feedback/summary`.
    pub enabled: bool,
    /// Longest range one analytics request may ask for, in days.
    pub max_range_days: u32,
    /// How long applied event ids are remembered (redeliveries older than this
    /// would count twice; keep it above the bus' retention).
    #[serde(with = "humantime_serde")]
    pub dedup_ttl: Duration,
    /// Events applied per store write.
    pub batch: usize,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_range_days: 93,
            dedup_ttl: Duration::from_secs(30 * 86_400),
            batch: 256,
        }
    }
}

/// One agent profile (`[[agents]]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentProfile {
    /// The profile name (`billing`); unique.
    pub name: String,
    /// What it handles (shown to other agents in the `handoff` tool).
    pub description: String,
    /// Its system prompt; `agent.system_prompt` when empty.
    pub system_prompt: String,
    /// Tools it may use; every tool when absent. `handoff` is added when there
    /// is more than one profile.
    pub tools: Option<Vec<String>>,
    /// Model name for its calls (the provider's default when absent).
    pub model: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Longest answer, in tokens.
    pub max_tokens: Option<u32>,
    /// Knowledge search only sees documents carrying one of these tags.
    pub knowledge_tags: Vec<String>,
}

/// One routing rule (`[[routing.rules]]`): the first that matches wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingRule {
    /// The message's intent.
    pub intent: Option<String>,
    /// The tenant.
    pub tenant: Option<String>,
    /// The profile to use.
    pub agent: String,
}

/// `[routing]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// The profile when no rule matches (the first `[[agents]]` when unset).
    pub default_agent: Option<String>,
    /// Rules, in order.
    pub rules: Vec<RoutingRule>,
}

/// Validates the desk sections; errors name the key.
pub fn validate(
    tickets: &TicketsConfig,
    analytics: &AnalyticsConfig,
    agents: &[AgentProfile],
    routing: &RoutingConfig,
) -> Result<(), ConfigError> {
    let bad = |key: &str, message: String| {
        Err(ConfigError::Key {
            key: key.into(),
            message,
        })
    };
    if !(0.0..=1.0).contains(&tickets.risk_alert_threshold) {
        return bad(
            "tickets.risk_alert_threshold",
            "must be between 0 and 1".into(),
        );
    }
    let w = tickets.risk_weights;
    if [w.urgency, w.sentiment, w.history, w.pii]
        .iter()
        .any(|x| !x.is_finite() || *x < 0.0)
        || w.urgency + w.sentiment + w.history + w.pii <= 0.0
    {
        return bad(
            "tickets.risk_weights",
            "weights must be zero or more and not all zero".into(),
        );
    }
    if tickets.channels.is_empty() || tickets.channels.iter().any(|c| !is_token(c)) {
        return bad(
            "tickets.channels",
            "must list 1 or more names of a-z 0-9 _ - (at most 32 characters)".into(),
        );
    }
    for (key, v, max) in [
        (
            "tickets.max_subject_chars",
            tickets.max_subject_chars,
            100_000,
        ),
        ("tickets.max_body_chars", tickets.max_body_chars, 1_000_000),
        ("tickets.concurrency", tickets.concurrency, 1024),
        ("tickets.max_page_size", tickets.max_page_size, 10_000),
        ("tickets.max_scan", tickets.max_scan, 10_000_000),
        ("analytics.batch", analytics.batch, 10_000),
    ] {
        if !(1..=max).contains(&v) {
            return bad(key, format!("must be between 1 and {max}"));
        }
    }
    if tickets.page_size == 0 || tickets.page_size > tickets.max_page_size {
        return bad(
            "tickets.page_size",
            "must be between 1 and tickets.max_page_size".into(),
        );
    }
    if !(1..=20).contains(&tickets.reply_max_steps) {
        return bad("tickets.reply_max_steps", "must be between 1 and 20".into());
    }
    if !(1..=100).contains(&tickets.max_attempts) {
        return bad("tickets.max_attempts", "must be between 1 and 100".into());
    }
    if tickets.edit_wait.is_zero() || tickets.edit_wait > Duration::from_secs(3600) {
        return bad("tickets.edit_wait", "must be between 1ms and 1h".into());
    }
    if !is_token(&tickets.risk_alert_severity) {
        return bad(
            "tickets.risk_alert_severity",
            "must be a label of a-z 0-9 _ -".into(),
        );
    }
    if !(1..=3660).contains(&analytics.max_range_days) {
        return bad(
            "analytics.max_range_days",
            "must be between 1 and 3660".into(),
        );
    }
    let mut names = std::collections::HashSet::new();
    for (i, a) in agents.iter().enumerate() {
        if !is_token(&a.name) {
            return bad(
                &format!("agents[{i}].name"),
                "must be 1 to 32 characters of a-z 0-9 _ -".into(),
            );
        }
        if !names.insert(a.name.as_str()) {
            return bad(
                &format!("agents[{i}].name"),
                format!("`{}` is used twice", a.name),
            );
        }
        if a.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return bad(
                &format!("agents[{i}].temperature"),
                "must be between 0 and 2".into(),
            );
        }
    }
    let known = |n: &str| names.contains(n);
    if let Some(d) = &routing.default_agent
        && !known(d)
    {
        return bad(
            "routing.default_agent",
            format!("no [[agents]] profile is named `{d}`"),
        );
    }
    for (i, r) in routing.rules.iter().enumerate() {
        if !known(&r.agent) {
            return bad(
                &format!("routing.rules[{i}].agent"),
                format!("no [[agents]] profile is named `{}`", r.agent),
            );
        }
    }
    Ok(())
}

/// A short name of a-z 0-9 _ -.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
