//! Cairn's own conditions as alerts (`[alerts.rules]`). Actors emit
//! [`Signal`]s; [`RuleEngine`] counts them per tenant in a sliding window and,
//! every `check_interval`, raises an alert when a condition starts and the
//! resolved alert when it clears:
//!
//! | alertname           | condition (within `window`)                                        | severity |
//! |---------------------|--------------------------------------------------------------------|----------|
//! | `McpBreakerOpen`    | an MCP server's circuit breaker is open (label `server`)           | critical |
//! | `DlqRecords`        | ≥ `dlq_records` records sent to the DLQ (label `topic`)            | warning  |
//! | `TurnFailures`      | ≥ `turn_failure_min` turns ended and ≥ `turn_failure_ratio` failed | warning  |
//! | `ModelFailures`     | ≥ `model_failure_min` model calls and ≥ `model_failure_ratio` failed | critical |
//! | `IngestionFailures` | ≥ `ingestion_failures` ingestion jobs failed                       | warning  |
//! | `TurnCrashLoop`     | ≥ `crash_loop` turns of one conversation abandoned as `turn_crashed` | critical |
//!
//! Conditions of the service itself (breakers) carry the tenant [`SYSTEM_TENANT`],
//! so only operator receivers (`all_tenants = true`) get them.

use async_trait::async_trait;
use cairn_core::alerts::{Alert, AlertSource};
use cairn_core::alerts_config::AlertRulesConfig;
use cairn_core::signals::{Signal, SignalSink};
use chrono::Utc;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The tenant of alerts about the service itself.
pub const SYSTEM_TENANT: &str = "_system";

/// Signals held between evaluations at most (beyond, the oldest are dropped
/// and a warning logged: counts are then a lower bound).
const MAX_SIGNALS: usize = 1_000_000;

/// Publishes alerts onto the `alerts` topic.
#[async_trait]
pub trait AlertPublisher: Send + Sync + 'static {
    /// Publishes until durable.
    async fn publish(&self, alert: Alert);
}

/// Reports which MCP servers have an open breaker.
pub type BreakerProbe = Arc<dyn Fn() -> Vec<(String, bool)> + Send + Sync>;

/// The signal sink and rule evaluator.
pub struct RuleEngine {
    config: AlertRulesConfig,
    signals: Mutex<VecDeque<(Instant, Signal)>>,
}

impl SignalSink for RuleEngine {
    fn emit(&self, signal: Signal) {
        let mut q = self.signals.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_SIGNALS {
            q.pop_front();
        }
        q.push_back((Instant::now(), signal));
    }
}

/// One condition's identity: its labels.
type Key = BTreeMap<String, String>;

#[derive(Default)]
struct Counts {
    turns: HashMap<String, (u32, u32)>,
    model: HashMap<String, (u32, u32)>,
    ingestion: HashMap<String, u32>,
    crashes: HashMap<(String, String), u32>,
    dlq: HashMap<(String, String), u32>,
    waiting: HashMap<(String, String), String>,
}

impl RuleEngine {
    /// A rule engine with these thresholds.
    pub fn new(config: AlertRulesConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            signals: Mutex::new(VecDeque::new()),
        })
    }

    fn counts(&self, now: Instant) -> Counts {
        let mut q = self.signals.lock().unwrap_or_else(|p| p.into_inner());
        while q
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.config.window)
        {
            q.pop_front();
        }
        let mut c = Counts::default();
        for (_, s) in q.iter() {
            match s {
                Signal::TurnEnded { tenant, failed } => {
                    let e = c.turns.entry(tenant.clone()).or_default();
                    e.0 += 1;
                    e.1 += u32::from(*failed);
                }
                Signal::ModelCall { tenant, failed } => {
                    let e = c.model.entry(tenant.clone()).or_default();
                    e.0 += 1;
                    e.1 += u32::from(*failed);
                }
                Signal::IngestionFailed { tenant } => {
                    *c.ingestion.entry(tenant.clone()).or_default() += 1;
                }
                Signal::TurnCrashed {
                    tenant,
                    conversation,
                } => {
                    *c.crashes
                        .entry((tenant.clone(), conversation.clone()))
                        .or_default() += 1;
                }
                Signal::DlqRecord { tenant, topic } => {
                    *c.dlq.entry((tenant.clone(), topic.clone())).or_default() += 1;
                }
                Signal::ApprovalWaiting {
                    tenant,
                    conversation,
                    tool,
                } => {
                    c.waiting
                        .insert((tenant.clone(), conversation.clone()), tool.clone());
                }
            }
        }
        c
    }

    /// The conditions that hold now, each with its alert.
    pub fn evaluate(&self, now: Instant, breakers: &[(String, bool)]) -> Vec<Alert> {
        let cfg = &self.config;
        let c = self.counts(now);
        let window = humantime::format_duration(cfg.window).to_string();
        let mut out = Vec::new();
        for (server, open) in breakers {
            if *open {
                out.push(
                    Alert::firing("McpBreakerOpen", SYSTEM_TENANT, "critical", AlertSource::Rule)
                        .label("server", server.clone())
                        .annotation("summary", format!("MCP server {server} is failing: its circuit breaker is open and its tools are withheld")),
                );
            }
        }
        for (tenant, (n, failed)) in &c.turns {
            if *n >= cfg.turn_failure_min
                && f64::from(*failed) >= cfg.turn_failure_ratio * f64::from(*n)
            {
                out.push(
                    Alert::firing("TurnFailures", tenant, "warning", AlertSource::Rule).annotation(
                        "summary",
                        format!("{failed} of {n} turns failed in the last {window}"),
                    ),
                );
            }
        }
        for (tenant, (n, failed)) in &c.model {
            if *n >= cfg.model_failure_min
                && f64::from(*failed) >= cfg.model_failure_ratio * f64::from(*n)
            {
                out.push(
                    Alert::firing("ModelFailures", tenant, "critical", AlertSource::Rule)
                        .annotation("summary", format!("{failed} of {n} model calls failed or timed out in the last {window}")),
                );
            }
        }
        for (tenant, n) in &c.ingestion {
            if *n >= cfg.ingestion_failures {
                out.push(
                    Alert::firing("IngestionFailures", tenant, "warning", AlertSource::Rule)
                        .annotation(
                            "summary",
                            format!("{n} ingestion jobs failed in the last {window}"),
                        ),
                );
            }
        }
        for ((tenant, conversation), n) in &c.crashes {
            if *n >= cfg.crash_loop {
                let mut a = Alert::firing("TurnCrashLoop", tenant, "critical", AlertSource::Rule)
                    .label("conversation", conversation.clone())
                    .annotation("summary", format!("{n} turns of conversation {conversation} crashed repeatedly and were abandoned in the last {window}"));
                a.conversation_id = Some(conversation.clone());
                out.push(a);
            }
        }
        for ((tenant, conversation), tool) in &c.waiting {
            let mut a = Alert::firing("ApprovalWaiting", tenant, "warning", AlertSource::Rule)
                .label("conversation", conversation.clone())
                .label("tool", tool.clone())
                .annotation("summary", format!("a call to {tool} in conversation {conversation} waits for approval (approvals.alert_after passed)"));
            a.conversation_id = Some(conversation.clone());
            out.push(a);
        }
        for ((tenant, topic), n) in &c.dlq {
            if *n >= cfg.dlq_records {
                out.push(
                    Alert::firing("DlqRecords", tenant, "warning", AlertSource::Rule)
                        .label("topic", topic.clone())
                        .annotation(
                            "summary",
                            format!(
                                "{n} records from {topic} went to the DLQ in the last {window}"
                            ),
                        ),
                );
            }
        }
        out
    }

    /// Evaluates every `check_interval` until `closed`, publishing alerts for
    /// conditions that start and resolved alerts for those that clear.
    pub async fn run(
        self: Arc<Self>,
        publisher: Arc<dyn AlertPublisher>,
        breakers: Option<BreakerProbe>,
        mut closed: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut firing: HashMap<Key, Alert> = HashMap::new();
        let mut tick =
            tokio::time::interval(self.config.check_interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = closed.wait_for(|c| *c) => return,
                _ = tick.tick() => {}
            }
            let probe = breakers.as_ref().map(|b| b()).unwrap_or_default();
            let now_alerts = self.evaluate(Instant::now(), &probe);
            let mut seen: HashMap<Key, Alert> = HashMap::new();
            for a in now_alerts {
                seen.insert(a.labels.clone(), a);
            }
            for (key, a) in &seen {
                if !firing.contains_key(key) {
                    tracing::warn!(alert = a.name(), tenant = a.tenant(), "alert rule firing");
                    publisher.publish(a.clone()).await;
                }
            }
            let cleared: Vec<Key> = firing
                .keys()
                .filter(|k| !seen.contains_key(*k))
                .cloned()
                .collect();
            for key in cleared {
                if let Some(mut a) = firing.remove(&key) {
                    tracing::info!(alert = a.name(), tenant = a.tenant(), "alert rule resolved");
                    a.ends_at = Some(Utc::now());
                    publisher.publish(a).await;
                }
            }
            for (key, a) in seen {
                firing.entry(key).or_insert(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rates_fire_above_their_thresholds_and_old_signals_leave_the_window() {
        let cfg = AlertRulesConfig {
            window: Duration::from_secs(60),
            turn_failure_min: 4,
            turn_failure_ratio: 0.5,
            ..AlertRulesConfig::default()
        };
        let r = RuleEngine::new(cfg);
        for failed in [true, true, false] {
            r.emit(Signal::TurnEnded {
                tenant: "a".into(),
                failed,
            });
        }
        assert!(
            r.evaluate(Instant::now(), &[]).is_empty(),
            "below the minimum count"
        );
        r.emit(Signal::TurnEnded {
            tenant: "a".into(),
            failed: false,
        });
        let fired = r.evaluate(Instant::now(), &[]);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].name(), "TurnFailures");
        assert_eq!(fired[0].tenant(), "a");
        r.emit(Signal::TurnEnded {
            tenant: "b".into(),
            failed: true,
        });
        assert_eq!(
            r.evaluate(Instant::now(), &[]).len(),
            1,
            "tenant b is below the minimum"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            r.evaluate(Instant::now(), &[]).is_empty(),
            "the window moved on"
        );
        let breakers = [("tickets".to_owned(), true), ("calc".to_owned(), false)];
        let fired = r.evaluate(Instant::now(), &breakers);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].labels["server"], "tickets");
        assert_eq!(fired[0].tenant(), SYSTEM_TENANT);
    }

    #[tokio::test(start_paused = true)]
    async fn every_signal_kind_has_its_rule() {
        let cfg = AlertRulesConfig {
            model_failure_min: 2,
            ingestion_failures: 2,
            crash_loop: 1,
            dlq_records: 1,
            ..AlertRulesConfig::default()
        };
        let r = RuleEngine::new(cfg);
        let t = || "acme".to_owned();
        r.emit(Signal::ModelCall {
            tenant: t(),
            failed: true,
        });
        r.emit(Signal::ModelCall {
            tenant: t(),
            failed: false,
        });
        r.emit(Signal::IngestionFailed { tenant: t() });
        r.emit(Signal::IngestionFailed { tenant: t() });
        r.emit(Signal::TurnCrashed {
            tenant: t(),
            conversation: "c1".into(),
        });
        r.emit(Signal::DlqRecord {
            tenant: t(),
            topic: "user_events".into(),
        });
        r.emit(Signal::ApprovalWaiting {
            tenant: t(),
            conversation: "c2".into(),
            tool: "tickets.refund".into(),
        });
        let mut names: Vec<String> = r
            .evaluate(Instant::now(), &[])
            .iter()
            .map(|a| {
                assert_eq!(a.tenant(), "acme");
                a.name().to_owned()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "ApprovalWaiting",
                "DlqRecords",
                "IngestionFailures",
                "ModelFailures",
                "TurnCrashLoop"
            ]
        );
        let crash = r
            .evaluate(Instant::now(), &[])
            .into_iter()
            .find(|a| a.name() == "TurnCrashLoop")
            .unwrap();
        assert_eq!(crash.conversation_id.as_deref(), Some("c1"));
        assert_eq!(crash.labels["conversation"], "c1");
        let waiting = r
            .evaluate(Instant::now(), &[])
            .into_iter()
            .find(|a| a.name() == "ApprovalWaiting")
            .unwrap();
        assert_eq!(waiting.conversation_id.as_deref(), Some("c2"));
        assert_eq!(waiting.labels["tool"], "tickets.refund");
    }
}
