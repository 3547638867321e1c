//! `cairn alerts …`: the alert surfaces of a running server from the command
//! line (`list`, `notifications`, `silence add|list|expire`, `test RECEIVER`),
//! through its HTTP API. Prints one line per item; `--json` prints the API's body.

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// What to do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Active and recently resolved alerts.
    List {
        /// `firing` or `resolved`.
        state: Option<String>,
        /// Label matchers (`name="value"`).
        filters: Vec<String>,
    },
    /// The notification log.
    Notifications {
        /// Most entries.
        limit: usize,
    },
    /// A new silence.
    SilenceAdd {
        /// Matchers.
        matchers: Vec<String>,
        /// How long, e.g. `2h`.
        duration: String,
        /// Why.
        comment: String,
    },
    /// Silences.
    SilenceList,
    /// Ends a silence now.
    SilenceExpire {
        /// Its id.
        id: String,
    },
    /// One test notification.
    Test {
        /// The receiver.
        receiver: String,
    },
}

/// Runs `action` against `base` with `token`; returns the text to print.
pub async fn run(base: &str, token: &str, action: Action, raw: bool) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()?;
    let (method, path, body) = match &action {
        Action::List { state, filters } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(s) = state {
                q.append_pair("state", s);
            }
            for f in filters {
                q.append_pair("filter", f);
            }
            (
                reqwest::Method::GET,
                format!("/v1/alerts?{}", q.finish()),
                None,
            )
        }
        Action::Notifications { limit } => (
            reqwest::Method::GET,
            format!("/v1/alerts/notifications?limit={limit}"),
            None,
        ),
        Action::SilenceAdd {
            matchers,
            duration,
            comment,
        } => (
            reqwest::Method::POST,
            "/v1/silences".to_owned(),
            Some(json!({"matchers": matchers, "duration": duration, "comment": comment})),
        ),
        Action::SilenceList => (reqwest::Method::GET, "/v1/silences".to_owned(), None),
        Action::SilenceExpire { id } => {
            (reqwest::Method::DELETE, format!("/v1/silences/{id}"), None)
        }
        Action::Test { receiver } => (
            reqwest::Method::POST,
            "/v1/alerts/test".to_owned(),
            Some(json!({ "receiver": receiver })),
        ),
    };
    let mut req = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "HTTP {status}: {} ({})",
            body["error"]["message"].as_str().unwrap_or("no message"),
            body["error"]["code"].as_str().unwrap_or("unknown")
        );
    }
    if raw {
        return Ok(serde_json::to_string_pretty(&body)?);
    }
    Ok(render(&action, &body))
}

fn labels(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "alertname")
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn render(action: &Action, body: &Value) -> String {
    let rows = |key: &str| body[key].as_array().cloned().unwrap_or_default();
    let lines: Vec<String> = match action {
        Action::List { .. } => rows("alerts")
            .iter()
            .map(|a| {
                let silenced = a["silencedBy"].as_array().is_some_and(|s| !s.is_empty());
                format!(
                    "{} {:<8} {:<24} {}{}  {}",
                    a["fingerprint"].as_str().unwrap_or_default(),
                    a["status"].as_str().unwrap_or_default(),
                    a["labels"]["alertname"].as_str().unwrap_or_default(),
                    labels(&a["labels"]),
                    if silenced { " (silenced)" } else { "" },
                    a["annotations"]["summary"].as_str().unwrap_or_default()
                )
            })
            .collect(),
        Action::Notifications { .. } => rows("notifications")
            .iter()
            .map(|n| {
                format!(
                    "{} {:<8} {:<16} {} alert(s) {} attempt(s) {}{}",
                    n["created_at"].as_str().unwrap_or_default(),
                    n["status"].as_str().unwrap_or_default(),
                    n["receiver"].as_str().unwrap_or_default(),
                    n["alerts"],
                    n["attempts"],
                    n["group_status"].as_str().unwrap_or_default(),
                    n["last_error"]
                        .as_str()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )
            })
            .collect(),
        Action::SilenceList => rows("silences").iter().map(silence_line).collect(),
        Action::SilenceAdd { .. } | Action::SilenceExpire { .. } => vec![silence_line(body)],
        Action::Test { receiver } => vec![format!(
            "test notification sent to {receiver} ({})",
            body["notification"]["id"].as_str().unwrap_or_default()
        )],
    };
    if lines.is_empty() {
        "(none)".to_owned()
    } else {
        lines.join("\n")
    }
}

fn silence_line(s: &Value) -> String {
    let matchers: Vec<String> = s["matchers"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    let op = match (m["isRegex"].as_bool(), m["isEqual"].as_bool()) {
                        (Some(true), Some(false)) => "!~",
                        (Some(true), _) => "=~",
                        (_, Some(false)) => "!=",
                        _ => "=",
                    };
                    format!(
                        "{}{op}{:?}",
                        m["name"].as_str().unwrap_or_default(),
                        m["value"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} {:<8} until {}  {}  by {}: {}",
        s["id"].as_str().unwrap_or_default(),
        s["status"]["state"].as_str().unwrap_or_default(),
        s["endsAt"].as_str().unwrap_or_default(),
        matchers.join(","),
        s["createdBy"].as_str().unwrap_or_default(),
        s["comment"].as_str().unwrap_or_default()
    )
}
