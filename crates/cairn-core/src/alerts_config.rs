//! `[alerts]`: routes, receivers, inhibition rules, delivery and the built-in
//! rules' thresholds (part of [`Config`](crate::config::Config)).

use crate::alerts::Matcher;
use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[alerts]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Runs the alert pipeline (the `alerts` topic's consumer).
    pub enabled: bool,
    /// The root route's receiver: alerts no child route takes go here. Without
    /// one, such alerts are recorded and listed but nobody is notified.
    pub receiver: Option<String>,
    /// The root route's grouping labels (`["..."]`: every alert its own group).
    /// Groups never mix tenants, whatever the labels.
    pub group_by: Vec<String>,
    /// How long a new group waits for more alerts before its first notification.
    #[serde(with = "humantime_serde")]
    pub group_wait: Duration,
    /// How long a group waits before notifying about alerts that joined or resolved.
    #[serde(with = "humantime_serde")]
    pub group_interval: Duration,
    /// How long before an unchanged, still firing group is notified again.
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
    /// Child routes (`[[alerts.routes]]`), tried in order.
    pub routes: Vec<RouteConfig>,
    /// The receivers (`[[alerts.receivers]]`).
    pub receivers: Vec<ReceiverConfig>,
    /// Inhibition rules (`[[alerts.inhibit_rules]]`).
    pub inhibit_rules: Vec<InhibitRuleConfig>,
    /// An alert from `POST /v1/alerts` without `endsAt` resolves after this
    /// unless it is sent again (producers re-send firing alerts).
    #[serde(with = "humantime_serde")]
    pub resolve_timeout: Duration,
    /// An agent's escalation resolves after this unless resolved earlier.
    #[serde(with = "humantime_serde")]
    pub escalation_timeout: Duration,
    /// How long resolved alerts stay listed in `GET /v1/alerts`.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How long notification log entries are kept.
    #[serde(with = "humantime_serde")]
    pub notification_retention: Duration,
    /// Most alerts in one `POST /v1/alerts`.
    pub max_alerts_per_request: usize,
    /// Most alerts the pipeline holds at once (firing and recently resolved);
    /// beyond it new alerts are refused with a log line, never silently dropped.
    pub max_active_alerts: usize,
    /// Cairn's public base URL (e.g. `https://cairn.example.com`): notifications
    /// link to `<external_url>/v1/conversations/<id>` and send it as Alertmanager's
    /// `externalURL`. Without it, they name the conversation without a link.
    pub external_url: Option<String>,
    /// Sending notifications.
    pub delivery: DeliveryConfig,
    /// Cairn's own conditions.
    pub rules: AlertRulesConfig,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            receiver: None,
            group_by: vec!["alertname".into()],
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(300),
            repeat_interval: Duration::from_secs(4 * 3600),
            routes: Vec::new(),
            receivers: Vec::new(),
            inhibit_rules: Vec::new(),
            resolve_timeout: Duration::from_secs(300),
            escalation_timeout: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(24 * 3600),
            notification_retention: Duration::from_secs(7 * 24 * 3600),
            max_alerts_per_request: 1000,
            max_active_alerts: 100_000,
            external_url: None,
            delivery: DeliveryConfig::default(),
            rules: AlertRulesConfig::default(),
        }
    }
}

/// `[[alerts.routes]]` (and their nested `routes`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label matchers, e.g. `["severity=\"critical\"", "alertname=~\"Mcp.*\""]`.
    #[serde(default)]
    pub matchers: Vec<String>,
    /// The receiver (default: the parent's).
    #[serde(default)]
    pub receiver: Option<String>,
    /// Grouping labels (default: the parent's).
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    /// Default: the parent's.
    #[serde(default, with = "humantime_serde")]
    pub group_wait: Option<Duration>,
    /// Default: the parent's.
    #[serde(default, with = "humantime_serde")]
    pub group_interval: Option<Duration>,
    /// Default: the parent's.
    #[serde(default, with = "humantime_serde")]
    pub repeat_interval: Option<Duration>,
    /// Keep trying the next sibling routes after this one matched.
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
    /// Child routes.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// `[[alerts.receivers]]`: where notifications go. Exactly one of `slack`,
/// `webhook` and `pagerduty`; exactly one of `tenant` and `all_tenants`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Name that routes refer to.
    pub name: String,
    /// The one tenant whose alerts this receiver may get.
    #[serde(default)]
    pub tenant: Option<String>,
    /// An operator receiver: alerts of every tenant may reach it.
    #[serde(default)]
    pub all_tenants: bool,
    /// Also notify when alerts resolve.
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// Most notifications per second to this receiver (Slack allows about one
    /// message per second per webhook).
    #[serde(default = "one_per_second")]
    pub max_per_second: f64,
    /// A Slack incoming webhook.
    #[serde(default)]
    pub slack: Option<SlackReceiverConfig>,
    /// A generic webhook, signed per the Standard Webhooks spec.
    #[serde(default)]
    pub webhook: Option<WebhookReceiverConfig>,
    /// PagerDuty Events API v2.
    #[serde(default)]
    pub pagerduty: Option<PagerDutyReceiverConfig>,
}

fn yes() -> bool {
    true
}

fn one_per_second() -> f64 {
    1.0
}

/// `[alerts.receivers.slack]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackReceiverConfig {
    /// The environment variable holding the incoming-webhook URL (a secret).
    pub url_env: String,
}

/// `[alerts.receivers.webhook]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookReceiverConfig {
    /// Where to POST (http or https).
    #[serde(default)]
    pub url: Option<String>,
    /// Or: the environment variable holding the URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The environment variable holding the signing secret (`whsec_…`, base64).
    /// Without it, requests are not signed.
    #[serde(default)]
    pub secret_env: Option<String>,
}

/// `[alerts.receivers.pagerduty]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyReceiverConfig {
    /// The environment variable holding the integration's routing key.
    pub routing_key_env: String,
    /// The Events API endpoint.
    #[serde(default = "pagerduty_url")]
    pub url: String,
}

fn pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}

/// `[[alerts.inhibit_rules]]`: while an alert matching `source_matchers` fires,
/// alerts matching `target_matchers` with the same values of the `equal` labels
/// are not notified. The tenant label is always compared.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRuleConfig {
    /// Matchers the inhibiting alert satisfies.
    #[serde(default)]
    pub source_matchers: Vec<String>,
    /// Matchers the inhibited alert satisfies.
    #[serde(default)]
    pub target_matchers: Vec<String>,
    /// Labels whose values must be equal in both.
    #[serde(default)]
    pub equal: Vec<String>,
}

/// `[alerts.delivery]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Deadline of one HTTP attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts before a notification is recorded as failed.
    pub max_attempts: u32,
    /// First retry delay (doubled each attempt, with jitter).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest retry delay, and the longest `Retry-After` honoured.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Receiver that gets a `NotificationFailed` alert when a notification
    /// fails for good (none: the failure is only logged and recorded).
    pub fallback_receiver: Option<String>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            fallback_receiver: None,
        }
    }
}

/// `[alerts.rules]`: Cairn's own conditions. Each fires an alert for the tenant
/// concerned (`system` for conditions of the service itself) and resolves it
/// when the condition clears.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertRulesConfig {
    /// Evaluates the rules.
    pub enabled: bool,
    /// How often the rules are evaluated.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// The sliding window of the rate rules.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// `TurnFailures`: share of a tenant's turns failing within the window …
    pub turn_failure_ratio: f64,
    /// … once at least this many turns ended in it.
    pub turn_failure_min: u32,
    /// `ModelFailures`: share of model calls failing or timing out …
    pub model_failure_ratio: f64,
    /// … once at least this many calls were made in the window.
    pub model_failure_min: u32,
    /// `IngestionFailures`: failed ingestion jobs of a tenant within the window.
    pub ingestion_failures: u32,
    /// `TurnCrashLoop`: crashed turns of one conversation within the window.
    pub crash_loop: u32,
    /// `DlqRecords`: records sent to the DLQ within the window.
    pub dlq_records: u32,
}

impl Default for AlertRulesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            check_interval: Duration::from_secs(15),
            window: Duration::from_secs(300),
            turn_failure_ratio: 0.5,
            turn_failure_min: 5,
            model_failure_ratio: 0.5,
            model_failure_min: 5,
            ingestion_failures: 3,
            crash_loop: 1,
            dlq_records: 1,
        }
    }
}

/// Checks that a (config key, receiver name) pair names a known receiver.
type ReceiverCheck<'a> = dyn Fn(String, &Option<String>) -> Result<(), ConfigError> + 'a;

fn bad(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key,
        message: message.into(),
    }
}

fn check_matchers(key: &str, matchers: &[String]) -> Result<(), ConfigError> {
    for (i, m) in matchers.iter().enumerate() {
        Matcher::parse(m).map_err(|e| bad(format!("{key}[{i}]"), e))?;
    }
    Ok(())
}

fn check_group_by(key: &str, labels: &[String]) -> Result<(), ConfigError> {
    if labels.iter().any(|l| l == "...") && labels.len() > 1 {
        return Err(bad(key.into(), "\"...\" must stand alone"));
    }
    for l in labels {
        if l != "..." && Matcher::new(l, "", false, true).is_err() {
            return Err(bad(key.into(), format!("`{l}` is not a label name")));
        }
    }
    Ok(())
}

fn check_url(key: String, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(bad(key, "must be an http:// or https:// URL"))
    }
}

impl AlertsConfig {
    /// Compiles the matchers and checks every reference.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.receivers.iter().enumerate() {
            let key = |k: &str| format!("alerts.receivers[{i}].{k}");
            if r.name.is_empty() || !names.insert(r.name.as_str()) {
                return Err(bad(key("name"), "must be set and unique"));
            }
            if r.tenant.is_some() == r.all_tenants {
                return Err(bad(
                    key("tenant"),
                    "set exactly one of `tenant` (the tenant whose alerts it gets) and `all_tenants = true` (an operator receiver)",
                ));
            }
            let kinds = [
                r.slack.is_some(),
                r.webhook.is_some(),
                r.pagerduty.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(bad(
                    key("slack"),
                    "set exactly one of `slack`, `webhook` and `pagerduty`",
                ));
            }
            if !(r.max_per_second > 0.0 && r.max_per_second <= 10_000.0) {
                return Err(bad(
                    key("max_per_second"),
                    "must be above 0 and at most 10000",
                ));
            }
            if let Some(s) = &r.slack
                && s.url_env.is_empty()
            {
                return Err(bad(
                    key("slack.url_env"),
                    "must name an environment variable",
                ));
            }
            if let Some(w) = &r.webhook {
                match (&w.url, &w.url_env) {
                    (Some(u), None) => check_url(key("webhook.url"), u)?,
                    (None, Some(e)) if !e.is_empty() => {}
                    _ => {
                        return Err(bad(
                            key("webhook.url"),
                            "set exactly one of `url` and `url_env`",
                        ));
                    }
                }
            }
            if let Some(p) = &r.pagerduty {
                if p.routing_key_env.is_empty() {
                    return Err(bad(
                        key("pagerduty.routing_key_env"),
                        "must name an environment variable",
                    ));
                }
                check_url(key("pagerduty.url"), &p.url)?;
            }
        }
        let known = |key: String, name: &Option<String>| match name {
            Some(n) if !names.contains(n.as_str()) => {
                Err(bad(key, format!("names the unknown receiver `{n}`")))
            }
            _ => Ok(()),
        };
        known("alerts.receiver".into(), &self.receiver)?;
        if let Some(u) = &self.external_url {
            check_url("alerts.external_url".into(), u)?;
        }
        known(
            "alerts.delivery.fallback_receiver".into(),
            &self.delivery.fallback_receiver,
        )?;
        check_group_by("alerts.group_by", &self.group_by)?;
        for (key, d) in [
            ("alerts.group_interval", self.group_interval),
            ("alerts.repeat_interval", self.repeat_interval),
            ("alerts.resolve_timeout", self.resolve_timeout),
            ("alerts.escalation_timeout", self.escalation_timeout),
            ("alerts.rules.check_interval", self.rules.check_interval),
            ("alerts.rules.window", self.rules.window),
            ("alerts.delivery.timeout", self.delivery.timeout),
            (
                "alerts.delivery.initial_backoff",
                self.delivery.initial_backoff,
            ),
        ] {
            if d < Duration::from_millis(10) {
                return Err(bad(key.into(), "must be at least 10ms"));
            }
        }
        if self.delivery.max_backoff < self.delivery.initial_backoff {
            return Err(bad(
                "alerts.delivery.max_backoff".into(),
                "must be at least alerts.delivery.initial_backoff",
            ));
        }
        if self.delivery.max_attempts == 0 || self.delivery.max_attempts > 100 {
            return Err(bad(
                "alerts.delivery.max_attempts".into(),
                "must be between 1 and 100",
            ));
        }
        if self.max_alerts_per_request == 0 {
            return Err(bad(
                "alerts.max_alerts_per_request".into(),
                "must be at least 1",
            ));
        }
        if self.max_active_alerts == 0 {
            return Err(bad("alerts.max_active_alerts".into(), "must be at least 1"));
        }
        for (key, r) in [
            (
                "alerts.rules.turn_failure_ratio",
                self.rules.turn_failure_ratio,
            ),
            (
                "alerts.rules.model_failure_ratio",
                self.rules.model_failure_ratio,
            ),
        ] {
            if !(r > 0.0 && r <= 1.0) {
                return Err(bad(key.into(), "must be above 0 and at most 1"));
            }
        }
        fn routes(
            list: &[RouteConfig],
            path: &str,
            known: &ReceiverCheck<'_>,
            depth: usize,
        ) -> Result<(), ConfigError> {
            if depth > 16 {
                return Err(bad(path.into(), "routes nest deeper than 16 levels"));
            }
            for (i, r) in list.iter().enumerate() {
                let key = format!("{path}[{i}]");
                check_matchers(&format!("{key}.matchers"), &r.matchers)?;
                known(format!("{key}.receiver"), &r.receiver)?;
                if let Some(g) = &r.group_by {
                    check_group_by(&format!("{key}.group_by"), g)?;
                }
                routes(&r.routes, &format!("{key}.routes"), known, depth + 1)?;
            }
            Ok(())
        }
        routes(&self.routes, "alerts.routes", &known, 0)?;
        for (i, r) in self.inhibit_rules.iter().enumerate() {
            let key = format!("alerts.inhibit_rules[{i}]");
            check_matchers(&format!("{key}.source_matchers"), &r.source_matchers)?;
            check_matchers(&format!("{key}.target_matchers"), &r.target_matchers)?;
        }
        Ok(())
    }
}
