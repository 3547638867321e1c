//! Human approval before risky tool calls: the `[approvals]` section, its rules
//! (by tool, by argument predicate, by agent profile, by tenant), and the
//! approval a paused turn records in its checkpoint.
//!
//! A tool call that matches a rule does not run: the turn records an
//! `approval.requested` event and waits for the first `approval.decided` event
//! of that approval in the conversation's stream (approve, reject, edit the
//! arguments, or `expired` when the rule's expiry passes).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// `[approvals]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// How long an approval waits before it is rejected as `expired`, unless its
    /// rule says otherwise.
    #[serde(with = "humantime_serde")]
    pub default_expiry: Duration,
    /// An approval still waiting after this raises the `ApprovalWaiting` alert
    /// (to the on-call route of `[alerts]`); `0s` turns the alert off.
    #[serde(with = "humantime_serde")]
    pub alert_after: Duration,
    /// The rules; the first that matches a call decides.
    pub rules: Vec<ApprovalRule>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            default_expiry: Duration::from_secs(24 * 3600),
            alert_after: Duration::from_secs(3600),
            rules: Vec::new(),
        }
    }
}

/// `[[approvals.rules]]`: which calls need a human.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    /// The tool's catalog name (`tickets.update_ticket`), or `*` for every tool.
    pub tool: String,
    /// Only for these agent profiles (empty: any).
    #[serde(default)]
    pub agents: Vec<String>,
    /// Only for these tenants (empty: every tenant).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Only when the arguments satisfy this (absent: always).
    #[serde(default)]
    pub when: Option<Predicate>,
    /// Why, shown to the approver.
    #[serde(default)]
    pub reason: Option<String>,
    /// How long approvals of this rule wait (absent: `default_expiry`).
    #[serde(default, with = "humantime_serde")]
    pub expires_after: Option<Duration>,
}

/// A test of one argument, found by JSON pointer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predicate {
    /// A JSON pointer into the arguments (`/amount`, `/refund/total`).
    pub pointer: String,
    /// The comparison.
    pub op: Op,
    /// The value compared with (unused by `exists`).
    #[serde(default)]
    pub value: Value,
}

/// Comparisons of a [`Predicate`]. Numbers compare as numbers (a numeric
/// string argument counts as its number); `eq`/`ne` compare JSON values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// The argument is present.
    Exists,
    /// A string argument contains the text (case-insensitive).
    Contains,
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Predicate {
    /// True when `arguments` satisfy the predicate. A missing argument, or one
    /// of the wrong type, does not satisfy it (except for `ne`).
    pub fn holds(&self, arguments: &Value) -> bool {
        let found = arguments.pointer(&self.pointer);
        let cmp = |f: fn(f64, f64) -> bool| match (found.and_then(number), number(&self.value)) {
            (Some(a), Some(b)) => f(a, b),
            _ => false,
        };
        match self.op {
            Op::Exists => found.is_some_and(|v| !v.is_null()),
            Op::Eq => found == Some(&self.value),
            Op::Ne => found != Some(&self.value),
            Op::Gt => cmp(|a, b| a > b),
            Op::Gte => cmp(|a, b| a >= b),
            Op::Lt => cmp(|a, b| a < b),
            Op::Lte => cmp(|a, b| a <= b),
            Op::Contains => match (found.and_then(Value::as_str), self.value.as_str()) {
                (Some(a), Some(b)) => a.to_lowercase().contains(&b.to_lowercase()),
                _ => false,
            },
        }
    }
}

impl ApprovalRule {
    /// True when the rule covers this call.
    pub fn matches(
        &self,
        tool: &str,
        arguments: &Value,
        agent: Option<&str>,
        tenant: &str,
    ) -> bool {
        (self.tool == "*" || self.tool == tool)
            && (self.tenants.is_empty() || self.tenants.iter().any(|t| t == tenant))
            && (self.agents.is_empty() || agent.is_some_and(|a| self.agents.iter().any(|x| x == a)))
            && self.when.as_ref().is_none_or(|p| p.holds(arguments))
    }
}

impl ApprovalsConfig {
    /// The first rule covering this call, if any.
    pub fn rule_for(
        &self,
        tool: &str,
        arguments: &Value,
        agent: Option<&str>,
        tenant: &str,
    ) -> Option<&ApprovalRule> {
        self.rules
            .iter()
            .find(|r| r.matches(tool, arguments, agent, tenant))
    }

    /// Checks the rules (pointers well formed, a value where the op needs one).
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (i, r) in self.rules.iter().enumerate() {
            let key = |k: &str| format!("approvals.rules[{i}].{k}");
            if r.tool.trim().is_empty() {
                return Err((key("tool"), "must name a tool, or `*`".into()));
            }
            if let Some(p) = &r.when {
                if !(p.pointer.is_empty() || p.pointer.starts_with('/')) {
                    return Err((
                        key("when.pointer"),
                        "must be a JSON pointer (`/amount`)".into(),
                    ));
                }
                let numeric = matches!(p.op, Op::Gt | Op::Gte | Op::Lt | Op::Lte);
                if numeric && number(&p.value).is_none() {
                    return Err((key("when.value"), "must be a number for this op".into()));
                }
                if p.op == Op::Contains && !p.value.is_string() {
                    return Err((key("when.value"), "must be a string for `contains`".into()));
                }
            }
            if r.expires_after.is_some_and(|d| d.is_zero()) {
                return Err((key("expires_after"), "must be longer than 0s".into()));
            }
        }
        if self.default_expiry.is_zero() {
            return Err((
                "approvals.default_expiry".into(),
                "must be longer than 0s".into(),
            ));
        }
        Ok(())
    }
}

/// What an approver decided (`approval.decided`'s `decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Run the call as the model asked.
    Approve,
    /// Do not run it; the model is told.
    Reject,
    /// Run it with the approver's arguments.
    Edit,
    /// Nobody decided in time: rejected.
    Expired,
}

/// A decision about one approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The verdict.
    pub decision: Verdict,
    /// Who decided (`system` for an expiry).
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The approver's comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The arguments an `edit` runs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
}

/// An approval a turn asked for, kept in its checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingApproval {
    /// The approval's id (in the API's URL).
    pub id: String,
    /// The tool step it guards.
    pub step: u32,
    /// The tool.
    pub tool: String,
    /// The arguments the model asked for.
    pub arguments: Value,
    /// Why it needs approval.
    pub reason: String,
    /// The conversation's last event id before `approval.requested`: the
    /// decision is the first `approval.decided` after it.
    pub after_event: u64,
    /// When it was asked for.
    pub requested_at: DateTime<Utc>,
    /// When it expires (rejected as `expired`).
    pub expires_at: DateTime<Utc>,
    /// The decision, once taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(toml_text: &str) -> ApprovalRule {
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rules_match_by_tool_argument_agent_and_tenant() {
        let r = rule(
            r#"tool = "tickets.refund"
agents = ["billing"]
tenants = ["acme"]
when = { pointer = "/amount", op = "gt", value = 100 }"#,
        );
        let big = json!({"amount": 250});
        assert!(r.matches("tickets.refund", &big, Some("billing"), "acme"));
        assert!(r.matches(
            "tickets.refund",
            &json!({"amount": "101.5"}),
            Some("billing"),
            "acme"
        ));
        assert!(!r.matches(
            "tickets.refund",
            &json!({"amount": 100}),
            Some("billing"),
            "acme"
        ));
        assert!(!r.matches("tickets.refund", &json!({}), Some("billing"), "acme"));
        assert!(!r.matches(
            "tickets.refund",
            &json!({"amount": "lots"}),
            Some("billing"),
            "acme"
        ));
        assert!(!r.matches("tickets.other", &big, Some("billing"), "acme"));
        assert!(!r.matches("tickets.refund", &big, Some("sales"), "acme"));
        assert!(!r.matches("tickets.refund", &big, None, "acme"));
        assert!(!r.matches("tickets.refund", &big, Some("billing"), "globex"));
        let any = rule(r#"tool = "*""#);
        assert!(any.matches("x", &json!(null), None, "t"));
    }

    #[test]
    fn predicates_compare_as_documented() {
        let p = |op: Op, value: Value| Predicate {
            pointer: "/a/b".into(),
            op,
            value,
        };
        let args = json!({"a": {"b": "Full Refund"}});
        assert!(p(Op::Contains, json!("refund")).holds(&args));
        assert!(p(Op::Exists, Value::Null).holds(&args));
        assert!(!p(Op::Exists, Value::Null).holds(&json!({"a": {}})));
        assert!(p(Op::Eq, json!("Full Refund")).holds(&args));
        assert!(p(Op::Ne, json!("x")).holds(&args));
        assert!(p(Op::Lte, json!(3)).holds(&json!({"a": {"b": 3}})));
        assert!(!p(Op::Lt, json!(3)).holds(&json!({"a": {"b": 3}})));
    }

    #[test]
    fn bad_rules_name_their_key() {
        let mut c = ApprovalsConfig::default();
        c.rules.push(rule(
            r#"tool = "x"
when = { pointer = "amount", op = "gt", value = 1 }"#,
        ));
        assert_eq!(
            c.validate().unwrap_err().0,
            "approvals.rules[0].when.pointer"
        );
        c.rules[0] = rule(
            r#"tool = "x"
when = { pointer = "/amount", op = "gt", value = "many" }"#,
        );
        assert_eq!(c.validate().unwrap_err().0, "approvals.rules[0].when.value");
    }
}
