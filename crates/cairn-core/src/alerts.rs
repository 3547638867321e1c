//! Alerts as they travel on the `alerts` topic (event type `alert.raised`), and
//! the label matchers routes, silences and inhibition rules use.
//!
//! An alert is identified by its labels: the [`Alert::fingerprint`] is a stable
//! hash of the sorted label pairs, so raising the same labels again updates the
//! same alert. Every alert carries its tenant in the `tenant` label.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The label every alert carries: the tenant it belongs to.
pub const TENANT_LABEL: &str = "tenant";
/// The label naming the kind of alert.
pub const ALERTNAME_LABEL: &str = "alertname";
/// The label with the alert's severity (`critical`, `warning`, `info`).
pub const SEVERITY_LABEL: &str = "severity";

/// Where an alert came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSource {
    /// `POST /v1/alerts`.
    #[default]
    Api,
    /// One of Cairn's built-in rules (`[alerts.rules]`).
    Rule,
    /// The agent's `escalate` tool.
    Agent,
    /// The alert pipeline itself (`notification_failed`).
    Pipeline,
    /// Support intelligence: a conversation needs a human.
    Insights,
    /// The support desk: a ticket's risk reached `tickets.risk_alert_threshold`.
    Tickets,
}

impl AlertSource {
    /// The name used in logs and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertSource::Api => "api",
            AlertSource::Rule => "rule",
            AlertSource::Agent => "agent",
            AlertSource::Pipeline => "pipeline",
            AlertSource::Insights => "insights",
            AlertSource::Tickets => "tickets",
        }
    }
}

/// One alert (the `data` of an `alert.raised` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Identifying labels, `alertname`, `severity` and `tenant` among them.
    pub labels: BTreeMap<String, String>,
    /// Descriptive text: `summary`, `description`, `runbook_url`, …
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When the condition started.
    pub starts_at: DateTime<Utc>,
    /// When it ended (a resolved alert), or when it will be considered ended
    /// unless raised again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    /// A link to what produced the alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator_url: Option<String>,
    /// Who raised it.
    #[serde(default)]
    pub source: AlertSource,
    /// The conversation it concerns (an agent's escalation), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// The turn that raised it (with `conversation_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
}

impl Alert {
    /// A firing alert named `name` for `tenant`, starting now.
    pub fn firing(name: &str, tenant: &str, severity: &str, source: AlertSource) -> Self {
        let labels = BTreeMap::from([
            (ALERTNAME_LABEL.to_owned(), name.to_owned()),
            (TENANT_LABEL.to_owned(), tenant.to_owned()),
            (SEVERITY_LABEL.to_owned(), severity.to_owned()),
        ]);
        Self {
            labels,
            annotations: BTreeMap::new(),
            starts_at: Utc::now(),
            ends_at: None,
            generator_url: None,
            source,
            conversation_id: None,
            turn_id: None,
        }
    }

    /// Adds a label.
    pub fn label(mut self, name: &str, value: impl Into<String>) -> Self {
        self.labels.insert(name.to_owned(), value.into());
        self
    }

    /// Adds an annotation.
    pub fn annotation(mut self, name: &str, value: impl Into<String>) -> Self {
        self.annotations.insert(name.to_owned(), value.into());
        self
    }

    /// The tenant (the `tenant` label; empty when missing).
    pub fn tenant(&self) -> &str {
        self.labels.get(TENANT_LABEL).map_or("", String::as_str)
    }

    /// The alert's name (the `alertname` label).
    pub fn name(&self) -> &str {
        self.labels.get(ALERTNAME_LABEL).map_or("", String::as_str)
    }

    /// True once `ends_at` has passed.
    pub fn is_resolved_at(&self, now: DateTime<Utc>) -> bool {
        self.ends_at.is_some_and(|e| e <= now)
    }

    /// The stable identity of the alert: 16 hex digits of FNV-1a (64 bit) over
    /// the sorted label names and values, each followed by a 0xFF separator
    /// (the scheme Prometheus uses for label sets).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.labels)
    }
}

/// The fingerprint of a label set (see [`Alert::fingerprint`]).
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (k, v) in labels {
        eat(k.as_bytes());
        eat(v.as_bytes());
    }
    format!("{h:016x}")
}

/// Longest regular expression accepted in a matcher, in bytes.
pub const MAX_MATCHER_REGEX: usize = 1024;

/// A label matcher: `name="value"`, `name!="value"`, `name=~"regex"` or
/// `name!~"regex"` (regexes are anchored at both ends, as in Alertmanager).
/// A missing label matches as the empty string.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "MatcherWire", into = "MatcherWire")]
pub struct Matcher {
    /// The label.
    pub name: String,
    /// The value or pattern.
    pub value: String,
    /// `=~` / `!~`.
    pub is_regex: bool,
    /// `=` / `=~` (false for the negated forms).
    pub is_equal: bool,
    regex: Option<regex::Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, &self.value, self.is_regex, self.is_equal)
            == (&other.name, &other.value, other.is_regex, other.is_equal)
    }
}

/// Alertmanager's JSON form of a matcher (silences in its API use it).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MatcherWire {
    name: String,
    value: String,
    #[serde(default)]
    is_regex: bool,
    #[serde(default = "yes")]
    is_equal: bool,
}

fn yes() -> bool {
    true
}

impl TryFrom<MatcherWire> for Matcher {
    type Error = String;
    fn try_from(w: MatcherWire) -> Result<Self, String> {
        Matcher::new(&w.name, &w.value, w.is_regex, w.is_equal)
    }
}

impl From<Matcher> for MatcherWire {
    fn from(m: Matcher) -> Self {
        Self {
            name: m.name,
            value: m.value,
            is_regex: m.is_regex,
            is_equal: m.is_equal,
        }
    }
}

/// True for a Prometheus-style label name: letters, digits and `_`, not
/// starting with a digit.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Matcher {
    /// A matcher; fails on a bad label name or regex.
    pub fn new(name: &str, value: &str, is_regex: bool, is_equal: bool) -> Result<Self, String> {
        if !valid_label_name(name) {
            return Err(format!(
                "`{name}` is not a label name (letters, digits and _, not starting with a digit)"
            ));
        }
        let regex = if is_regex {
            if value.len() > MAX_MATCHER_REGEX {
                return Err(format!(
                    "the regex of `{name}` is longer than {MAX_MATCHER_REGEX} bytes"
                ));
            }
            Some(
                regex::RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("the regex of `{name}` is invalid: {e}"))?,
            )
        } else {
            None
        };
        Ok(Self {
            name: name.to_owned(),
            value: value.to_owned(),
            is_regex,
            is_equal,
            regex,
        })
    }

    /// Parses `name="value"` (also `!=`, `=~`, `!~`; the quotes are optional).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let at = text
            .find(['=', '!'])
            .ok_or_else(|| format!("`{text}` is not a matcher like name=\"value\""))?;
        let name = text[..at].trim();
        let rest = &text[at..];
        let (op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v)))
            .ok_or_else(|| format!("`{text}` is not a matcher like name=\"value\""))?;
        let value = value.trim();
        let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(v) => v.replace("\\\"", "\"").replace("\\\\", "\\"),
            None => value.to_owned(),
        };
        Matcher::new(name, &value, op.ends_with('~'), !op.starts_with('!'))
    }

    /// True when the labels satisfy the matcher.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map_or("", String::as_str);
        let hit = match &self.regex {
            Some(re) => re.is_match(v),
            None => v == self.value,
        };
        hit == self.is_equal
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match (self.is_regex, self.is_equal) {
            (false, true) => "=",
            (false, false) => "!=",
            (true, true) => "=~",
            (true, false) => "!~",
        };
        write!(f, "{}{op}{:?}", self.name, self.value)
    }
}

/// True when every matcher matches.
pub fn all_match(matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn fingerprint_depends_on_labels_only_not_their_order_or_annotations() {
        let a = Alert::firing("X", "acme", "critical", AlertSource::Api).label("b", "1");
        let mut b = Alert::firing("X", "acme", "critical", AlertSource::Rule)
            .label("b", "1")
            .annotation("summary", "different");
        b.starts_at = a.starts_at - chrono::Duration::hours(1);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        let c = a.clone().label("b", "2");
        assert_ne!(a.fingerprint(), c.fingerprint());
        // a=b,c="" and a="",bc=... must not collide: the separator keeps pairs apart.
        assert_ne!(
            fingerprint(&labels(&[("a", "bc")])),
            fingerprint(&labels(&[("ab", "c")]))
        );
        // Known value: the empty label set hashes to the FNV-1a offset basis.
        assert_eq!(fingerprint(&BTreeMap::new()), "cbf29ce484222325");
    }

    #[test]
    fn matchers_parse_all_four_operators_and_anchor_regexes() {
        let l = labels(&[("severity", "critical"), ("alertname", "McpBreakerOpen")]);
        assert!(Matcher::parse("severity=\"critical\"").unwrap().matches(&l));
        assert!(!Matcher::parse("severity!=critical").unwrap().matches(&l));
        assert!(Matcher::parse("alertname=~\"Mcp.*\"").unwrap().matches(&l));
        assert!(
            !Matcher::parse("alertname=~\"Breaker\"")
                .unwrap()
                .matches(&l)
        );
        assert!(Matcher::parse("alertname!~\"Turn.*\"").unwrap().matches(&l));
        // A missing label is the empty string.
        assert!(Matcher::parse("team=\"\"").unwrap().matches(&l));
        assert!(Matcher::parse("x=\"a\"=b").is_ok());
        for bad in ["severity", "1abc=\"x\"", "a=~\"(\"", "=x"] {
            assert!(Matcher::parse(bad).is_err(), "{bad}");
        }
        let m = Matcher::parse("a=~\"x|y\"").unwrap();
        assert_eq!(m.to_string(), "a=~\"x|y\"");
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["isRegex"], true);
        let back: Matcher = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
    }
}
