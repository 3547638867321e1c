//! The pipeline's state machine, free of I/O and clocks: alerts in, groups
//! formed by route, and at each group's due time the decision whether its
//! receiver is notified (Alertmanager's rules). The [`actor`](crate::actor)
//! drives it with the current time and stores what it changed.
//!
//! A group is notified when it first fires (after `group_wait`), when alerts
//! join it or resolve (after `group_interval`; resolved ones only when the
//! receiver wants them), and otherwise again only after `repeat_interval`.
//! Silenced and inhibited alerts are left out; an alert the receiver was told
//! is firing is still reported resolved to it even if it was silenced since.

use crate::records::{
    ALERTS, AlertState, DeliveryStatus, GROUPS, GroupState, Message, NotificationRecord, Silence,
    alert_key, json,
};
use crate::routing::{InhibitRule, Route, receiver_accepts};
use cairn_core::alerts::{Alert, AlertSource};
use cairn_core::alerts_config::{AlertsConfig, ReceiverConfig};
use cairn_core::ports::RecordChange;
use chrono::{DateTime, Duration, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Most alerts listed in one notification (the count says how many more).
pub const MAX_MESSAGE_ALERTS: usize = 1000;

/// The compiled `[alerts]` configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The route tree.
    pub root: Route,
    /// Receivers by name.
    pub receivers: HashMap<String, ReceiverConfig>,
    /// Inhibition rules.
    pub inhibit: Vec<InhibitRule>,
    /// See [`AlertsConfig::resolve_timeout`].
    pub resolve_timeout: Duration,
    /// See [`AlertsConfig::escalation_timeout`].
    pub escalation_timeout: Duration,
    /// See [`AlertsConfig::retention`].
    pub retention: Duration,
    /// See [`AlertsConfig::max_active_alerts`].
    pub max_active: usize,
    /// See `alerts.delivery.fallback_receiver`.
    pub fallback: Option<String>,
}

fn chrono(d: std::time::Duration) -> Duration {
    Duration::from_std(d).unwrap_or(Duration::MAX)
}

impl Settings {
    /// Compiles a validated configuration.
    pub fn new(c: &AlertsConfig) -> Self {
        Self {
            root: Route::root(c),
            receivers: c
                .receivers
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
            inhibit: c.inhibit_rules.iter().map(InhibitRule::compile).collect(),
            resolve_timeout: chrono(c.resolve_timeout),
            escalation_timeout: chrono(c.escalation_timeout),
            retention: chrono(c.retention),
            max_active: c.max_active_alerts,
            fallback: c.delivery.fallback_receiver.clone(),
        }
    }
}

/// Why an alert was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `alerts.max_active_alerts` reached.
    #[error("the pipeline holds alerts.max_active_alerts alerts already")]
    Full,
    /// No tenant label.
    #[error("the alert has no tenant label")]
    NoTenant,
    /// This replica handed the pipeline over (its partition was revoked); the
    /// new owner reads the alert again.
    #[error("this replica does not run the alert pipeline now")]
    Standby,
}

/// A conversation-stream event the pipeline owes (escalations).
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationNotice {
    /// The alert.
    pub alert: AlertState,
    /// True: it fires; false: it resolved.
    pub firing: bool,
}

/// The pipeline state.
pub struct Engine {
    settings: std::sync::Arc<Settings>,
    alerts: HashMap<String, AlertState>,
    groups: HashMap<String, GroupState>,
    due: BTreeSet<(DateTime<Utc>, String)>,
    silences: Vec<Silence>,
    dirty: HashSet<(&'static str, String)>,
    notices: Vec<ConversationNotice>,
    /// Alerts changed since the inhibition sets were computed.
    changed: bool,
    inhibition: Vec<HashMap<Vec<String>, Vec<String>>>,
    inhibition_until: Option<DateTime<Utc>>,
}

impl Engine {
    /// An empty pipeline.
    pub fn new(settings: std::sync::Arc<Settings>) -> Self {
        Self {
            settings,
            alerts: HashMap::new(),
            groups: HashMap::new(),
            due: BTreeSet::new(),
            silences: Vec::new(),
            dirty: HashSet::new(),
            notices: Vec::new(),
            changed: true,
            inhibition: Vec::new(),
            inhibition_until: None,
        }
    }

    /// Restores stored state (after a restart or a takeover).
    pub fn load(
        &mut self,
        alerts: Vec<AlertState>,
        groups: Vec<GroupState>,
        silences: Vec<Silence>,
    ) {
        for a in alerts {
            self.alerts.insert(a.key(), a);
        }
        for g in groups {
            self.due.insert((g.next_flush, g.key.clone()));
            self.groups.insert(g.key.clone(), g);
        }
        self.silences = silences;
        self.changed = true;
    }

    /// Replaces the silences (they change through the API, on any replica).
    pub fn set_silences(&mut self, silences: Vec<Silence>) {
        self.silences = silences;
    }

    /// Alerts held.
    pub fn alert_count(&self) -> usize {
        self.alerts.len()
    }

    /// Groups held.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// One alert.
    pub fn alert(&self, tenant: &str, fingerprint: &str) -> Option<&AlertState> {
        self.alerts.get(&alert_key(tenant, fingerprint))
    }

    /// One group.
    pub fn group(&self, key: &str) -> Option<&GroupState> {
        self.groups.get(key)
    }

    /// The earliest time a group is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.due.first().map(|(t, _)| *t)
    }

    /// Takes an alert: stores or updates it and puts it in its groups.
    pub fn ingest(&mut self, mut alert: Alert, now: DateTime<Utc>) -> Result<(), Refused> {
        let tenant = alert.tenant().to_owned();
        if tenant.is_empty() {
            return Err(Refused::NoTenant);
        }
        if alert.ends_at.is_none() {
            alert.ends_at = match alert.source {
                AlertSource::Api => Some(now + self.settings.resolve_timeout),
                AlertSource::Agent | AlertSource::Insights | AlertSource::Tickets => {
                    Some(now + self.settings.escalation_timeout)
                }
                AlertSource::Rule | AlertSource::Pipeline => None,
            };
        }
        let fp = alert.fingerprint();
        let key = alert_key(&tenant, &fp);
        let resolved_now = alert.is_resolved_at(now);
        let previous = self.alerts.get(&key);
        let was_firing = previous.is_some_and(|p| !p.alert.is_resolved_at(now));
        if previous.is_none() && self.alerts.len() >= self.settings.max_active {
            return Err(Refused::Full);
        }
        let state = match previous {
            // Still the same incident: keep when it began.
            Some(p) if was_firing => {
                let mut a = alert;
                a.starts_at = a.starts_at.min(p.alert.starts_at);
                AlertState {
                    alert: a,
                    fingerprint: fp.clone(),
                    received_at: p.received_at,
                    updated_at: now,
                }
            }
            _ => AlertState {
                alert,
                fingerprint: fp.clone(),
                received_at: now,
                updated_at: now,
            },
        };
        if state.alert.conversation_id.is_some() && state.alert.turn_id.is_some() {
            if !was_firing && !resolved_now {
                self.notices.push(ConversationNotice {
                    alert: state.clone(),
                    firing: true,
                });
            } else if was_firing && resolved_now {
                self.notices.push(ConversationNotice {
                    alert: state.clone(),
                    firing: false,
                });
            }
        }
        // A resolve for an alert nobody was told about is only recorded.
        let join = !resolved_now || was_firing;
        let labels = state.alert.labels.clone();
        let source = state.alert.source;
        self.alerts.insert(key.clone(), state);
        self.dirty.insert((ALERTS, key));
        self.changed = true;
        if join {
            self.join_groups(&labels, source, &fp, &tenant, now);
        }
        Ok(())
    }

    fn join_groups(
        &mut self,
        labels: &BTreeMap<String, String>,
        source: AlertSource,
        fp: &str,
        tenant: &str,
        now: DateTime<Utc>,
    ) {
        let settings = self.settings.clone();
        let mut targets: Vec<(String, &Route)> = Vec::new();
        if source == AlertSource::Pipeline {
            // Delivery failures go straight to the fallback receiver.
            if let Some(f) = &settings.fallback {
                targets.push((f.clone(), &settings.root));
            }
        } else {
            for route in settings.root.matches(labels) {
                if let Some(r) = &route.receiver {
                    targets.push((r.clone(), route));
                }
            }
        }
        for (receiver, route) in targets {
            let Some(rc) = settings.receivers.get(&receiver) else {
                continue;
            };
            if !receiver_accepts(rc, tenant) {
                tracing::debug!(
                    receiver,
                    tenant,
                    "route skipped: the receiver belongs to another tenant"
                );
                continue;
            }
            let gkey = route.group_key(&receiver, labels);
            let group = self.groups.entry(gkey.clone()).or_insert_with(|| {
                let next = now + Duration::milliseconds(ms_i64(route.timing.group_wait_ms));
                self.due.insert((next, gkey.clone()));
                GroupState {
                    key: gkey.clone(),
                    tenant: tenant.to_owned(),
                    receiver: receiver.clone(),
                    route: route.id.clone(),
                    labels: route.group_labels(labels),
                    alerts: BTreeSet::new(),
                    timing: route.timing,
                    created_at: now,
                    next_flush: next,
                    notified_firing: BTreeSet::new(),
                    notified_at: None,
                }
            });
            if group.alerts.insert(fp.to_owned()) {
                self.dirty.insert((GROUPS, gkey));
            }
        }
    }

    /// True when a silence or an inhibition rule mutes the alert.
    fn muted(&mut self, a: &AlertState, now: DateTime<Utc>) -> bool {
        if self.silences.iter().any(|s| s.mutes(&a.alert, now)) {
            return true;
        }
        if self.settings.inhibit.is_empty() {
            return false;
        }
        self.refresh_inhibition(now);
        self.settings
            .inhibit
            .iter()
            .zip(&self.inhibition)
            .any(|(rule, sources)| {
                rule.is_target(&a.alert.labels)
                    && sources
                        .get(&rule.equal_values(&a.alert.labels))
                        .is_some_and(|fps| fps.iter().any(|f| *f != a.fingerprint))
            })
    }

    fn refresh_inhibition(&mut self, now: DateTime<Utc>) {
        let expired = self.inhibition_until.is_some_and(|t| now >= t);
        if !self.changed && !expired {
            return;
        }
        let mut until: Option<DateTime<Utc>> = None;
        self.inhibition = self
            .settings
            .inhibit
            .iter()
            .map(|rule| {
                let mut m: HashMap<Vec<String>, Vec<String>> = HashMap::new();
                for a in self.alerts.values() {
                    if a.alert.is_resolved_at(now) || !rule.is_source(&a.alert.labels) {
                        continue;
                    }
                    if let Some(end) = a.alert.ends_at {
                        until = Some(until.map_or(end, |u| u.min(end)));
                    }
                    m.entry(rule.equal_values(&a.alert.labels))
                        .or_default()
                        .push(a.fingerprint.clone());
                }
                m
            })
            .collect();
        self.inhibition_until = until;
        self.changed = false;
    }

    /// Evaluates every group due at `now`; returns the notifications to send
    /// (status `pending`, ids fixed: every retry sends the same `webhook-id`).
    pub fn flush_due(&mut self, now: DateTime<Utc>) -> Vec<NotificationRecord> {
        let mut out = Vec::new();
        while let Some((at, key)) = self.due.first().cloned() {
            if at > now {
                break;
            }
            self.due.remove(&(at, key.clone()));
            if let Some(n) = self.flush_group(&key, now) {
                out.push(n);
            }
        }
        out
    }

    fn flush_group(&mut self, key: &str, now: DateTime<Utc>) -> Option<NotificationRecord> {
        let group = self.groups.get(key)?.clone();
        let send_resolved = self
            .settings
            .receivers
            .get(&group.receiver)
            .is_some_and(|r| r.send_resolved);
        let mut firing: Vec<AlertState> = Vec::new();
        let mut resolved: Vec<AlertState> = Vec::new();
        let mut muted_paged: BTreeSet<String> = BTreeSet::new();
        let mut gone: Vec<String> = Vec::new();
        for fp in &group.alerts {
            let Some(a) = self.alerts.get(&alert_key(&group.tenant, fp)).cloned() else {
                gone.push(fp.clone());
                continue;
            };
            if a.alert.is_resolved_at(now) {
                gone.push(fp.clone());
                if group.notified_firing.contains(fp) {
                    resolved.push(a);
                }
            } else if self.muted(&a, now) {
                if group.notified_firing.contains(fp) {
                    muted_paged.insert(fp.clone());
                }
            } else {
                firing.push(a);
            }
        }
        let firing_set: BTreeSet<String> = firing.iter().map(|a| a.fingerprint.clone()).collect();
        let new_alerts = !firing_set.is_subset(&group.notified_firing);
        let repeat_due = !firing.is_empty()
            && group.notified_at.is_none_or(|t| {
                now - t >= Duration::milliseconds(ms_i64(group.timing.repeat_interval_ms))
            });
        let notify = new_alerts || (send_resolved && !resolved.is_empty()) || repeat_due;
        let mut g = group;
        for fp in &gone {
            g.alerts.remove(fp);
        }
        let mut record = None;
        if notify {
            let status = if firing.is_empty() {
                "resolved"
            } else {
                "firing"
            };
            let total = firing.len() + if send_resolved { resolved.len() } else { 0 };
            let mut alerts = firing;
            if send_resolved {
                alerts.extend(resolved);
            }
            alerts.truncate(MAX_MESSAGE_ALERTS);
            let kind = self
                .settings
                .receivers
                .get(&g.receiver)
                .map_or("webhook", receiver_kind);
            record = Some(NotificationRecord {
                id: uuid::Uuid::now_v7().to_string(),
                tenant: g.tenant.clone(),
                group_key: g.key.clone(),
                receiver: g.receiver.clone(),
                kind: kind.to_owned(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                last_error: None,
                created_at: now,
                updated_at: now,
                sent_at: None,
                message: Message {
                    status: status.to_owned(),
                    group_labels: g.labels.clone(),
                    alerts,
                    total,
                },
            });
            g.notified_at = Some(now);
        }
        // What the receiver believes fires: what it was just told, plus alerts
        // it was told about that are muted now (their resolution is owed).
        let before = g.notified_firing.clone();
        if notify || !gone.is_empty() || !muted_paged.is_empty() {
            let mut believed = if notify {
                firing_set
            } else {
                g.notified_firing
                    .difference(&gone.iter().cloned().collect())
                    .cloned()
                    .collect()
            };
            believed.extend(muted_paged);
            g.notified_firing = believed;
        }
        // Stored only when it changed: an unchanged group's evaluation (most of
        // them, every group_interval) writes nothing. After a restart, a group
        // whose stored next evaluation has passed is simply evaluated at once.
        let changed = notify || !gone.is_empty() || g.notified_firing != before;
        if g.alerts.is_empty() {
            self.groups.remove(key);
        } else {
            g.next_flush = now + Duration::milliseconds(ms_i64(g.timing.group_interval_ms));
            self.due.insert((g.next_flush, key.to_owned()));
            self.groups.insert(key.to_owned(), g);
        }
        if changed {
            self.dirty.insert((GROUPS, key.to_owned()));
        }
        // Resolved escalations tell their conversation.
        for fp in &gone {
            if let Some(a) = self.alerts.get(&alert_key(&self.group_tenant(key), fp))
                && a.alert.conversation_id.is_some()
                && a.alert.turn_id.is_some()
                && a.alert.source == AlertSource::Agent
                && !self
                    .notices
                    .iter()
                    .any(|n| n.alert.fingerprint == *fp && !n.firing)
                && a.alert.ends_at.is_some_and(|e| e > a.updated_at)
            {
                // Timed out (not resolved by a raise, which noticed already).
                self.notices.push(ConversationNotice {
                    alert: a.clone(),
                    firing: false,
                });
            }
        }
        record
    }

    fn group_tenant(&self, key: &str) -> String {
        key.split('/').next().unwrap_or_default().to_owned()
    }

    /// Drops resolved alerts older than the retention that no group holds.
    pub fn gc(&mut self, now: DateTime<Utc>) -> usize {
        let held: HashSet<(String, String)> = self
            .groups
            .values()
            .flat_map(|g| g.alerts.iter().map(|f| (g.tenant.clone(), f.clone())))
            .collect();
        let cutoff = now - self.settings.retention;
        let old: Vec<String> = self
            .alerts
            .iter()
            .filter(|(_, a)| a.alert.ends_at.is_some_and(|e| e <= cutoff))
            .filter(|(_, a)| !held.contains(&(a.alert.tenant().to_owned(), a.fingerprint.clone())))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &old {
            self.alerts.remove(k);
            self.dirty.insert((ALERTS, k.clone()));
        }
        if !old.is_empty() {
            self.changed = true;
        }
        old.len()
    }

    /// The changes since the last call, as store writes.
    pub fn take_changes(&mut self) -> Vec<RecordChange> {
        self.dirty
            .drain()
            .map(|(collection, key)| {
                let value = match collection {
                    ALERTS => self.alerts.get(&key).map(json),
                    _ => self.groups.get(&key).map(json),
                };
                RecordChange {
                    collection: collection.to_owned(),
                    key,
                    value,
                }
            })
            .collect()
    }

    /// Conversation events owed since the last call.
    pub fn take_notices(&mut self) -> Vec<ConversationNotice> {
        std::mem::take(&mut self.notices)
    }
}

/// `slack`, `webhook` or `pagerduty`.
pub fn receiver_kind(r: &ReceiverConfig) -> &'static str {
    if r.slack.is_some() {
        "slack"
    } else if r.pagerduty.is_some() {
        "pagerduty"
    } else {
        "webhook"
    }
}

fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX / 2)
}
