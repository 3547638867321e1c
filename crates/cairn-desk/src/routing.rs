//! Which agent profile answers a message.
//!
//! Each turn starts with the conversation's pinned profile, if an agent handed
//! the conversation off (the `handoff` tool); otherwise the first
//! `[[routing.rules]]` entry matching the message's intent (and tenant) picks
//! it, and `routing.default_agent` (or the first profile) takes the rest. A
//! handoff pins the new profile until another handoff.

use cairn_core::desk_config::{AgentProfile, RoutingConfig};
use cairn_core::ports::ToolSpec;
use serde_json::json;

/// The name of the tool agents hand conversations off with.
pub const HANDOFF_TOOL: &str = "handoff";

/// Why a profile was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A routing rule matched the intent.
    Rule,
    /// No rule matched.
    Default,
    /// An agent handed the conversation to it.
    Handoff,
}

impl Reason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rule => "rule",
            Reason::Default => "default",
            Reason::Handoff => "handoff",
        }
    }
}

/// The profiles and rules.
#[derive(Debug, Clone)]
pub struct AgentRouter {
    profiles: Vec<AgentProfile>,
    routing: RoutingConfig,
    default: usize,
}

impl AgentRouter {
    /// A router, or `None` when no profile is configured (one unnamed agent).
    pub fn new(profiles: &[AgentProfile], routing: &RoutingConfig) -> Option<Self> {
        if profiles.is_empty() {
            return None;
        }
        let default = routing
            .default_agent
            .as_ref()
            .and_then(|d| profiles.iter().position(|p| &p.name == d))
            .unwrap_or(0);
        Some(Self {
            profiles: profiles.to_vec(),
            routing: routing.clone(),
            default,
        })
    }

    /// A profile by name.
    pub fn profile(&self, name: &str) -> Option<&AgentProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// True when messages need an intent to be routed (some rule names one).
    pub fn needs_intent(&self) -> bool {
        self.routing.rules.iter().any(|r| r.intent.is_some())
    }

    /// The profile for a message with `intent` in `tenant`.
    pub fn route(&self, intent: Option<&str>, tenant: &str) -> (&AgentProfile, Reason) {
        for r in &self.routing.rules {
            let intent_ok = r.intent.as_deref().is_none_or(|i| Some(i) == intent);
            let tenant_ok = r.tenant.as_deref().is_none_or(|t| t == tenant);
            if intent_ok
                && tenant_ok
                && let Some(p) = self.profile(&r.agent)
            {
                return (p, Reason::Rule);
            }
        }
        (&self.profiles[self.default], Reason::Default)
    }

    /// The `handoff` tool as offered to `current` (`None` with one profile).
    pub fn handoff_spec(&self, current: &str) -> Option<ToolSpec> {
        let others: Vec<&AgentProfile> =
            self.profiles.iter().filter(|p| p.name != current).collect();
        if others.is_empty() {
            return None;
        }
        let list = others
            .iter()
            .map(|p| format!("{}: {}", p.name, p.description))
            .collect::<Vec<_>>()
            .join("; ");
        Some(ToolSpec {
            name: HANDOFF_TOOL.into(),
            description: format!(
                "Hand this conversation to another agent when it is better placed to answer. Agents: {list}."
            ),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "agent": {"type": "string", "enum": others.iter().map(|p| p.name.clone()).collect::<Vec<_>>()},
                    "reason": {"type": "string", "description": "Why, in one sentence."}
                },
                "required": ["agent"],
                "additionalProperties": false
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_core::desk_config::RoutingRule;

    #[test]
    fn rules_then_default() {
        let p = |n: &str| AgentProfile {
            name: n.into(),
            ..Default::default()
        };
        let routing = RoutingConfig {
            default_agent: Some("general".into()),
            rules: vec![
                RoutingRule {
                    intent: Some("billing".into()),
                    tenant: Some("vip".into()),
                    agent: "vip".into(),
                },
                RoutingRule {
                    intent: Some("billing".into()),
                    tenant: None,
                    agent: "billing".into(),
                },
            ],
        };
        let r = AgentRouter::new(&[p("billing"), p("general"), p("vip")], &routing).unwrap();
        assert_eq!(r.route(Some("billing"), "acme").0.name, "billing");
        assert_eq!(r.route(Some("billing"), "vip").0.name, "vip");
        let (g, why) = r.route(Some("refund"), "acme");
        assert_eq!((g.name.as_str(), why), ("general", Reason::Default));
        let spec = r.handoff_spec("billing").unwrap();
        assert_eq!(
            spec.input_schema["properties"]["agent"]["enum"],
            json!(["general", "vip"])
        );
        assert!(AgentRouter::new(&[], &routing).is_none());
    }
}
