//! The route tree of `[alerts]` with Alertmanager's semantics: an alert walks
//! down from the root; at each level the first matching child takes it (and
//! later siblings too when the child says `continue`); the deepest matching
//! routes decide. A route inherits its parent's receiver, grouping and timing.

use crate::records::Timing;
use cairn_core::alerts::{Matcher, TENANT_LABEL, all_match, fingerprint};
use cairn_core::alerts_config::{AlertsConfig, InhibitRuleConfig, ReceiverConfig, RouteConfig};
use std::collections::BTreeMap;
use std::time::Duration;

/// How alerts are grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// By these labels (plus the tenant).
    Labels(Vec<String>),
    /// `["..."]`: by all labels (every alert its own group).
    All,
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// `root`, or the child path (`0`, `0.1`, …).
    pub id: String,
    matchers: Vec<Matcher>,
    /// The receiver (inherited when not set).
    pub receiver: Option<String>,
    /// Grouping.
    pub group_by: GroupBy,
    /// Timing.
    pub timing: Timing,
    continue_matching: bool,
    children: Vec<Route>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn group_by(labels: &[String]) -> GroupBy {
    if labels.iter().any(|l| l == "...") {
        GroupBy::All
    } else {
        GroupBy::Labels(labels.to_vec())
    }
}

impl Route {
    fn compile(c: &RouteConfig, id: String, parent: &Route) -> Route {
        let timing = Timing {
            group_wait_ms: c.group_wait.map_or(parent.timing.group_wait_ms, ms),
            group_interval_ms: c.group_interval.map_or(parent.timing.group_interval_ms, ms),
            repeat_interval_ms: c
                .repeat_interval
                .map_or(parent.timing.repeat_interval_ms, ms),
        };
        let mut r = Route {
            matchers: c
                .matchers
                .iter()
                .filter_map(|m| Matcher::parse(m).ok())
                .collect(),
            receiver: c.receiver.clone().or_else(|| parent.receiver.clone()),
            group_by: c
                .group_by
                .as_deref()
                .map_or_else(|| parent.group_by.clone(), group_by),
            timing,
            continue_matching: c.continue_matching,
            children: Vec::new(),
            id: id.clone(),
        };
        r.children = c
            .routes
            .iter()
            .enumerate()
            .map(|(i, child)| Route::compile(child, format!("{id}.{i}"), &r))
            .collect();
        r
    }

    /// The root route of `config` (matchers of a validated config always parse).
    pub fn root(config: &AlertsConfig) -> Route {
        let mut root = Route {
            id: "root".into(),
            matchers: Vec::new(),
            receiver: config.receiver.clone(),
            group_by: group_by(&config.group_by),
            timing: Timing {
                group_wait_ms: ms(config.group_wait),
                group_interval_ms: ms(config.group_interval),
                repeat_interval_ms: ms(config.repeat_interval),
            },
            continue_matching: false,
            children: Vec::new(),
        };
        root.children = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, c)| Route::compile(c, i.to_string(), &root))
            .collect();
        root
    }

    /// The routes that take `labels` (at least the root).
    pub fn matches<'a>(&'a self, labels: &BTreeMap<String, String>) -> Vec<&'a Route> {
        let mut out = Vec::new();
        self.walk(labels, &mut out);
        out
    }

    fn walk<'a>(&'a self, labels: &BTreeMap<String, String>, out: &mut Vec<&'a Route>) {
        let before = out.len();
        for child in &self.children {
            if all_match(&child.matchers, labels) {
                child.walk(labels, out);
                if !child.continue_matching {
                    break;
                }
            }
        }
        if out.len() == before {
            out.push(self);
        }
    }

    /// The grouping labels of an alert on this route (the tenant always among them).
    pub fn group_labels(&self, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut g: BTreeMap<String, String> = match &self.group_by {
            GroupBy::All => labels.clone(),
            GroupBy::Labels(names) => names
                .iter()
                .filter_map(|n| labels.get(n).map(|v| (n.clone(), v.clone())))
                .collect(),
        };
        if let Some(t) = labels.get(TENANT_LABEL) {
            g.insert(TENANT_LABEL.into(), t.clone());
        }
        g
    }

    /// The key of the group an alert with `labels` joins on this route.
    pub fn group_key(&self, receiver: &str, labels: &BTreeMap<String, String>) -> String {
        let tenant = labels.get(TENANT_LABEL).map_or("", String::as_str);
        format!(
            "{tenant}/{}/{receiver}/{}",
            self.id,
            fingerprint(&self.group_labels(labels))
        )
    }
}

/// True when `receiver` may get alerts of `tenant`.
pub fn receiver_accepts(receiver: &ReceiverConfig, tenant: &str) -> bool {
    receiver.all_tenants || receiver.tenant.as_deref() == Some(tenant)
}

/// A compiled inhibition rule.
#[derive(Debug, Clone)]
pub struct InhibitRule {
    source: Vec<Matcher>,
    target: Vec<Matcher>,
    equal: Vec<String>,
}

impl InhibitRule {
    /// Compiles a validated rule.
    pub fn compile(c: &InhibitRuleConfig) -> Self {
        let parse = |v: &[String]| v.iter().filter_map(|m| Matcher::parse(m).ok()).collect();
        let mut equal = c.equal.clone();
        if !equal.iter().any(|l| l == TENANT_LABEL) {
            equal.push(TENANT_LABEL.into());
        }
        Self {
            source: parse(&c.source_matchers),
            target: parse(&c.target_matchers),
            equal,
        }
    }

    /// True when `labels` can inhibit others.
    pub fn is_source(&self, labels: &BTreeMap<String, String>) -> bool {
        all_match(&self.source, labels)
    }

    /// The values of the `equal` labels (what a source and target must share).
    pub fn equal_values(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        self.equal
            .iter()
            .map(|l| labels.get(l).cloned().unwrap_or_default())
            .collect()
    }

    /// True when `labels` can be inhibited.
    pub fn is_target(&self, labels: &BTreeMap<String, String>) -> bool {
        all_match(&self.target, labels)
    }
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

    fn config(toml_text: &str) -> AlertsConfig {
        let c: AlertsConfig = toml::from_str(toml_text).unwrap();
        c.validate().unwrap();
        c
    }

    #[test]
    fn first_matching_child_wins_unless_it_continues_and_children_inherit() {
        let c = config(
            r#"
receiver = "default"
group_by = ["alertname"]
group_wait = "10s"
[[receivers]]
name = "default"
all_tenants = true
webhook = { url = "http://x" }
[[receivers]]
name = "pager"
all_tenants = true
webhook = { url = "http://x" }
[[receivers]]
name = "audit"
all_tenants = true
webhook = { url = "http://x" }
[[routes]]
matchers = ['severity="critical"']
receiver = "audit"
continue = true
[[routes]]
matchers = ['severity=~"critical|warning"']
receiver = "pager"
group_wait = "1s"
[[routes.routes]]
matchers = ['team="db"']
group_by = ["..."]
[[routes]]
matchers = ['severity="critical"']
receiver = "never"
"#
            .replace("\"never\"", "\"default\"")
            .as_str(),
        );
        let root = Route::root(&c);
        let ids = |l: &BTreeMap<String, String>| {
            root.matches(l)
                .iter()
                .map(|r| (r.id.clone(), r.receiver.clone().unwrap()))
                .collect::<Vec<_>>()
        };
        let crit = labels(&[
            ("alertname", "A"),
            ("severity", "critical"),
            ("tenant", "t"),
        ]);
        assert_eq!(
            ids(&crit),
            [("0".into(), "audit".into()), ("1".into(), "pager".into())]
        );
        let db = labels(&[("alertname", "A"), ("severity", "warning"), ("team", "db")]);
        let m = root.matches(&db);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].id, "1.0");
        assert_eq!(m[0].receiver.as_deref(), Some("pager"));
        assert_eq!(m[0].timing.group_wait_ms, 1000, "inherits from its parent");
        assert_eq!(m[0].group_by, GroupBy::All);
        let info = labels(&[("alertname", "A"), ("severity", "info")]);
        assert_eq!(ids(&info), [("root".into(), "default".into())]);
        assert_eq!(root.timing.group_wait_ms, 10_000);
    }

    #[test]
    fn group_keys_always_separate_tenants() {
        let c = config("group_by = [\"alertname\"]");
        let root = Route::root(&c);
        let a = labels(&[("alertname", "X"), ("tenant", "a"), ("i", "1")]);
        let a2 = labels(&[("alertname", "X"), ("tenant", "a"), ("i", "2")]);
        let b = labels(&[("alertname", "X"), ("tenant", "b"), ("i", "1")]);
        assert_eq!(root.group_key("r", &a), root.group_key("r", &a2));
        assert_ne!(root.group_key("r", &a), root.group_key("r", &b));
        assert!(root.group_key("r", &a).starts_with("a/root/r/"));
    }
}
