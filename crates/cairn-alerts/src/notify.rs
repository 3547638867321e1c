//! The receivers: each turns a [`NotificationRecord`] into its service's wire
//! format and sends it; [`deliver`] retries with backoff until it is accepted,
//! fails for good, or the retry budget is spent.
//!
//! - Slack incoming webhooks: Block Kit inside a coloured attachment, within
//!   Slack's limits (≤ 50 blocks, header ≤ 150 chars, section text ≤ 3000,
//!   ≤ 10 fields of ≤ 2000); a large group lists its first alerts and a count.
//! - Webhooks: Alertmanager's webhook JSON (`version` "4"), signed per the
//!   Standard Webhooks spec (`webhook-id` = the notification id, the same on
//!   every retry, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC>`).
//! - PagerDuty Events API v2: `trigger` / `resolve` with the group as `dedup_key`.
//!
//! Errors recorded in the log carry a status code or an error class, never a
//! URL, key or response body beyond a short Slack error code.

use crate::records::{AlertState, DeliveryStatus, NotificationRecord};
use async_trait::async_trait;
use cairn_core::alerts::SEVERITY_LABEL;
use cairn_core::alerts_config::{DeliveryConfig, ReceiverConfig};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Slack: most blocks in a message.
pub const SLACK_MAX_BLOCKS: usize = 50;
/// Slack: longest header text.
pub const SLACK_MAX_HEADER: usize = 150;
/// Slack: longest section text.
pub const SLACK_MAX_TEXT: usize = 3000;
/// Slack: most fields in a section.
pub const SLACK_MAX_FIELDS: usize = 10;
/// Slack: longest field text.
pub const SLACK_MAX_FIELD: usize = 2000;
/// Alerts listed one by one in a Slack message; the rest are counted.
pub const SLACK_MAX_ALERTS: usize = 20;

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying (5xx, 408, 429, timeout, connection), after at least
    /// `after` when the receiver said so (`Retry-After`).
    #[error("{reason}")]
    Retry {
        /// What happened.
        reason: String,
        /// The receiver's `Retry-After`.
        after: Option<Duration>,
    },
    /// Not worth retrying (other 4xx).
    #[error("{reason}")]
    Permanent {
        /// What happened.
        reason: String,
    },
}

/// Something notifications can be sent to.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// Waits for the receiver's rate limit.
    async fn ready(&self) {}
    /// Sends one notification (one attempt).
    async fn send(&self, n: &NotificationRecord) -> Result<(), SendError>;
}

/// The receivers by name.
pub type Channels = HashMap<String, Arc<dyn Channel>>;

enum Kind {
    Slack {
        url: String,
    },
    Webhook {
        url: String,
        signer: Option<standardwebhooks::Webhook>,
    },
    PagerDuty {
        url: String,
        routing_key: String,
    },
}

type Limiter = governor::DefaultDirectRateLimiter;

/// A configured receiver.
pub struct Notifier {
    kind: Kind,
    receiver: String,
    limiter: Limiter,
    client: reqwest::Client,
    external_url: Option<String>,
}

/// Reads a secret from the environment, naming the config key when missing.
fn secret(env: &dyn Fn(&str) -> Option<String>, key: &str, var: &str) -> Result<String, String> {
    env(var)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("{key} names `{var}`, but that environment variable is not set"))
}

impl Notifier {
    /// Builds the receiver, reading its secrets through `env`.
    pub fn new(
        rc: &ReceiverConfig,
        index: usize,
        env: &dyn Fn(&str) -> Option<String>,
        client: reqwest::Client,
        external_url: Option<String>,
    ) -> Result<Self, String> {
        let key = |k: &str| format!("alerts.receivers[{index}].{k}");
        let kind = if let Some(s) = &rc.slack {
            Kind::Slack {
                url: secret(env, &key("slack.url_env"), &s.url_env)?,
            }
        } else if let Some(p) = &rc.pagerduty {
            Kind::PagerDuty {
                url: p.url.clone(),
                routing_key: secret(env, &key("pagerduty.routing_key_env"), &p.routing_key_env)?,
            }
        } else if let Some(w) = &rc.webhook {
            let url = match (&w.url, &w.url_env) {
                (Some(u), _) => u.clone(),
                (None, Some(var)) => secret(env, &key("webhook.url_env"), var)?,
                (None, None) => return Err(format!("{} is required", key("webhook.url"))),
            };
            let signer = match &w.secret_env {
                Some(var) => {
                    let s = secret(env, &key("webhook.secret_env"), var)?;
                    Some(standardwebhooks::Webhook::new(&s).map_err(|_| {
                        format!(
                            "{}: `{var}` is not a Standard Webhooks secret (whsec_ followed by base64)",
                            key("webhook.secret_env")
                        )
                    })?)
                }
                None => None,
            };
            Kind::Webhook { url, signer }
        } else {
            return Err(format!("{} needs slack, webhook or pagerduty", key("name")));
        };
        // A burst of one: notifications are spaced evenly.
        let per_minute = (rc.max_per_second * 60.0).round().clamp(1.0, 600_000.0) as u32;
        let quota =
            governor::Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        Ok(Self {
            kind,
            receiver: rc.name.clone(),
            limiter: governor::RateLimiter::direct(quota),
            client,
            external_url,
        })
    }

    /// The request body this receiver sends for `n`.
    pub fn body(&self, n: &NotificationRecord) -> Value {
        let ext = self.external_url.as_deref();
        match &self.kind {
            Kind::Slack { .. } => slack_body(n, ext),
            Kind::Webhook { .. } => webhook_body(n, ext),
            Kind::PagerDuty { routing_key, .. } => pagerduty_body(n, routing_key, ext),
        }
    }
}

#[async_trait]
impl Channel for Notifier {
    async fn ready(&self) {
        self.limiter.until_ready().await;
    }

    async fn send(&self, n: &NotificationRecord) -> Result<(), SendError> {
        let body = serde_json::to_vec(&self.body(n)).unwrap_or_default();
        let (url, mut req) = match &self.kind {
            Kind::Slack { url } | Kind::PagerDuty { url, .. } => (url, self.client.post(url)),
            Kind::Webhook { url, signer } => {
                let mut req = self.client.post(url).header("webhook-id", &n.id);
                if let Some(signer) = signer {
                    let ts = Utc::now().timestamp();
                    let sig = signer
                        .sign(&n.id, ts, &body)
                        .map_err(|_| SendError::Permanent {
                            reason: "cannot sign the body".into(),
                        })?;
                    req = req
                        .header("webhook-timestamp", ts.to_string())
                        .header("webhook-signature", sig);
                }
                (url, req)
            }
        };
        let _ = url;
        req = req
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("cairn/", env!("CARGO_PKG_VERSION")),
            )
            .body(body);
        let resp = req.send().await.map_err(|e| SendError::Retry {
            reason: transport_class(&e),
            after: None,
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, Utc::now()));
        // Slack's error bodies are short codes (`invalid_blocks`); anything
        // else is not shown.
        let text = resp.text().await.unwrap_or_default();
        let code = text.trim();
        let detail = if !code.is_empty()
            && code.len() <= 64
            && code.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            format!(": {code}")
        } else {
            String::new()
        };
        let reason = format!("HTTP {}{detail}", status.as_u16());
        tracing::debug!(receiver = %self.receiver, status = status.as_u16(), "receiver refused a notification");
        Err(refusal(status.as_u16(), reason, after))
    }
}

/// A receiver's refusal: worth retrying on 5xx, 408 and 429 (after `after`
/// when it said so), permanent otherwise.
pub fn refusal(status: u16, reason: String, after: Option<Duration>) -> SendError {
    if status >= 500 || status == 408 || status == 429 {
        SendError::Retry { reason, after }
    } else {
        SendError::Permanent { reason }
    }
}

/// The error class of a failed request (no URL).
pub fn transport_class(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_request() || e.is_body() {
        "request failed".into()
    } else {
        "transport error".into()
    }
}

/// Parses `Retry-After`: seconds, or an HTTP date.
pub fn retry_after(v: &str, now: DateTime<Utc>) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v.trim()).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// Builds every configured receiver.
pub fn channels(
    receivers: &[ReceiverConfig],
    env: &dyn Fn(&str) -> Option<String>,
    timeout: Duration,
    external_url: Option<String>,
) -> Result<Channels, String> {
    // HTTPS receivers need a process-wide TLS crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    receivers
        .iter()
        .enumerate()
        .map(|(i, rc)| {
            let n = Notifier::new(rc, i, env, client.clone(), external_url.clone())?;
            Ok((rc.name.clone(), Arc::new(n) as Arc<dyn Channel>))
        })
        .collect()
}

/// The delay before retry number `attempt` (1-based): exponential from
/// `initial`, capped at `max`, with jitter (between half and all of it), and
/// never shorter than the receiver's `Retry-After` (itself capped at `max`).
pub fn backoff(policy: &DeliveryConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = policy
        .initial_backoff
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(30)))
        .min(policy.max_backoff);
    let jittered = exp.mul_f64(rand::random_range(0.5..=1.0));
    jittered.max(retry_after.unwrap_or_default().min(policy.max_backoff))
}

/// Sends `n` until it is accepted or fails for good, reporting every change
/// of its status through `report`.
pub async fn deliver(
    channel: Arc<dyn Channel>,
    mut n: NotificationRecord,
    policy: DeliveryConfig,
    report: impl Fn(NotificationRecord) + Send,
) {
    loop {
        channel.ready().await;
        n.attempts += 1;
        let result = channel.send(&n).await;
        n.updated_at = Utc::now();
        let outcome = match &result {
            Ok(()) => "sent",
            Err(SendError::Permanent { .. }) => "failed",
            Err(SendError::Retry { .. }) => "retry",
        };
        metrics::counter!(
            "cairn_notifications_total",
            "receiver" => n.receiver.clone(), "kind" => n.kind.clone(), "outcome" => outcome
        )
        .increment(1);
        match result {
            Ok(()) => {
                n.status = DeliveryStatus::Sent;
                n.sent_at = Some(n.updated_at);
                report(n);
                return;
            }
            Err(SendError::Permanent { reason }) => {
                n.status = DeliveryStatus::Failed;
                n.last_error = Some(reason);
                report(n);
                return;
            }
            Err(SendError::Retry { reason, after }) => {
                if n.attempts >= policy.max_attempts {
                    n.status = DeliveryStatus::Failed;
                    n.last_error =
                        Some(format!("{reason} (gave up after {} attempts)", n.attempts));
                    report(n);
                    return;
                }
                n.status = DeliveryStatus::Retrying;
                n.last_error = Some(reason);
                let wait = backoff(&policy, n.attempts, after);
                report(n.clone());
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Escapes text for Slack mrkdwn.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn severity_of(n: &NotificationRecord) -> String {
    n.message
        .alerts
        .iter()
        .filter_map(|a| a.alert.labels.get(SEVERITY_LABEL))
        .max_by_key(|s| severity_rank(s))
        .cloned()
        .unwrap_or_else(|| "warning".into())
}

fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 4,
        "error" => 3,
        "warning" => 2,
        "info" => 1,
        _ => 0,
    }
}

fn conversation_link(a: &AlertState, ext: Option<&str>) -> Option<(String, String)> {
    let id = a.alert.conversation_id.as_ref()?;
    Some(match ext {
        Some(base) => (
            format!("{}/v1/conversations/{id}", base.trim_end_matches('/')),
            "conversation".into(),
        ),
        None => (String::new(), format!("conversation {id}")),
    })
}

fn title(n: &NotificationRecord) -> String {
    let name = n
        .message
        .group_labels
        .get("alertname")
        .or_else(|| {
            n.message
                .alerts
                .first()
                .and_then(|a| a.alert.labels.get("alertname"))
        })
        .cloned()
        .unwrap_or_else(|| "alerts".into());
    let firing = n
        .message
        .alerts
        .iter()
        .filter(|a| a.status_at(n.created_at) == "firing")
        .count();
    if n.message.status == "firing" {
        format!("[FIRING:{firing}] {name} ({})", n.tenant)
    } else {
        format!("[RESOLVED] {name} ({})", n.tenant)
    }
}

/// The Slack message (Block Kit in a coloured attachment).
pub fn slack_body(n: &NotificationRecord, ext: Option<&str>) -> Value {
    let color = if n.message.status == "resolved" {
        "#2EB67D"
    } else {
        match severity_of(n).as_str() {
            "critical" | "error" => "#E01E5A",
            "warning" => "#ECB22E",
            _ => "#36C5F0",
        }
    };
    let head = title(n);
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": truncate(&head, SLACK_MAX_HEADER), "emoji": false}
    })];
    let shown = n.message.alerts.len().min(SLACK_MAX_ALERTS);
    for a in &n.message.alerts[..shown] {
        let status = a.status_at(n.created_at);
        let summary = a
            .alert
            .annotations
            .get("summary")
            .cloned()
            .unwrap_or_else(|| a.alert.name().to_owned());
        let mut text = format!("*{}* {}", status.to_uppercase(), esc(&summary));
        if let Some(d) = a.alert.annotations.get("description") {
            text.push('\n');
            text.push_str(&esc(d));
        }
        let fields: Vec<Value> = a
            .alert
            .labels
            .iter()
            .take(SLACK_MAX_FIELDS)
            .map(|(k, v)| {
                json!({"type": "mrkdwn", "text": truncate(&format!("*{}*\n{}", esc(k), esc(v)), SLACK_MAX_FIELD)})
            })
            .collect();
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(&text, SLACK_MAX_TEXT)},
            "fields": fields,
        }));
        let mut links: Vec<String> = Vec::new();
        if let Some(r) = a.alert.annotations.get("runbook_url") {
            links.push(format!("<{}|runbook>", esc(r)));
        }
        match conversation_link(a, ext) {
            Some((url, label)) if !url.is_empty() => links.push(format!("<{}|{label}>", esc(&url))),
            Some((_, label)) => links.push(esc(&label)),
            None => {}
        }
        if let Some(g) = &a.alert.generator_url {
            links.push(format!("<{}|source>", esc(g)));
        }
        if !links.is_empty() {
            blocks.push(json!({
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": truncate(&links.join(" · "), SLACK_MAX_TEXT)}]
            }));
        }
    }
    let more = n.message.total.saturating_sub(shown);
    if more > 0 {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("…and {more} more alert{} in this group", if more == 1 { "" } else { "s" })}
        }));
    }
    blocks.truncate(SLACK_MAX_BLOCKS);
    json!({
        "text": truncate(&head, SLACK_MAX_TEXT),
        "attachments": [{"color": color, "blocks": blocks}],
    })
}

fn common(maps: Vec<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let Some((first, rest)) = maps.split_first() else {
        return BTreeMap::new();
    };
    first
        .iter()
        .filter(|(k, v)| rest.iter().all(|m| m.get(*k) == Some(*v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Alertmanager's "zero" time, sent as `endsAt` of alerts without an end.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Alertmanager's webhook body (`version` "4").
pub fn webhook_body(n: &NotificationRecord, ext: Option<&str>) -> Value {
    let alerts: Vec<Value> = n
        .message
        .alerts
        .iter()
        .map(|a| {
            let status = a.status_at(n.created_at);
            let ends = match (status, a.alert.ends_at) {
                ("resolved", Some(e)) => e.to_rfc3339(),
                _ => ZERO_TIME.to_owned(),
            };
            json!({
                "status": status,
                "labels": a.alert.labels,
                "annotations": a.alert.annotations,
                "startsAt": a.alert.starts_at.to_rfc3339(),
                "endsAt": ends,
                "generatorURL": a.alert.generator_url.clone().unwrap_or_default(),
                "fingerprint": a.fingerprint,
                "conversationId": a.alert.conversation_id,
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": n.message.total.saturating_sub(n.message.alerts.len()),
        "status": n.message.status,
        "receiver": n.receiver,
        "groupLabels": n.message.group_labels,
        "commonLabels": common(n.message.alerts.iter().map(|a| &a.alert.labels).collect()),
        "commonAnnotations": common(n.message.alerts.iter().map(|a| &a.alert.annotations).collect()),
        "externalURL": ext.unwrap_or_default(),
        "alerts": alerts,
    })
}

/// PagerDuty's longest `dedup_key`.
const PD_MAX_DEDUP: usize = 255;

/// The PagerDuty Events API v2 event.
pub fn pagerduty_body(n: &NotificationRecord, routing_key: &str, ext: Option<&str>) -> Value {
    let dedup = if n.group_key.len() <= PD_MAX_DEDUP {
        n.group_key.clone()
    } else {
        let labels = BTreeMap::from([("group".to_owned(), n.group_key.clone())]);
        format!(
            "{}/{}",
            n.tenant.chars().take(64).collect::<String>(),
            cairn_core::alerts::fingerprint(&labels)
        )
    };
    if n.message.status == "resolved" {
        return json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup});
    }
    let severity = match severity_of(n).as_str() {
        "critical" => "critical",
        "error" => "error",
        "warning" => "warning",
        _ => "info",
    };
    let summary = n
        .message
        .alerts
        .first()
        .and_then(|a| a.alert.annotations.get("summary"))
        .map(|s| format!("{}: {s}", title(n)))
        .unwrap_or_else(|| title(n));
    let mut links: Vec<Value> = Vec::new();
    for a in n.message.alerts.iter().take(5) {
        if let Some(r) = a.alert.annotations.get("runbook_url") {
            links.push(json!({"href": r, "text": "runbook"}));
        }
        if let Some((url, text)) = conversation_link(a, ext).filter(|(u, _)| !u.is_empty()) {
            links.push(json!({"href": url, "text": text}));
        }
    }
    let firing: Vec<Value> = n
        .message
        .alerts
        .iter()
        .take(50)
        .map(|a| json!({"labels": a.alert.labels, "annotations": a.alert.annotations, "fingerprint": a.fingerprint}))
        .collect();
    let mut payload = json!({
        "summary": truncate(&summary, 1024),
        "source": "cairn",
        "severity": severity,
        "class": n.tenant,
        "custom_details": {"group_labels": n.message.group_labels, "alerts": firing, "total": n.message.total},
    });
    // Optional fields are left out rather than sent as null.
    if let Some(g) = n.message.group_labels.get("alertname") {
        payload["group"] = json!(g);
    }
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup,
        "payload": payload,
        "links": links,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let p = DeliveryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..DeliveryConfig::default()
        };
        let b1 = backoff(&p, 1, None);
        assert!(
            b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100),
            "{b1:?}"
        );
        let b3 = backoff(&p, 3, None);
        assert!(
            b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400),
            "{b3:?}"
        );
        assert!(backoff(&p, 30, None) <= Duration::from_secs(1));
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_millis(900))),
            Duration::from_millis(900)
        );
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_secs(60))),
            Duration::from_secs(1)
        );
    }
}
