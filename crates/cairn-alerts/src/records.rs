//! What the pipeline keeps in the [`RecordStore`]: alerts, groups (with what
//! each receiver was last told), silences and the notification log, plus the
//! reads the API and CLI make of them.
//!
//! Collections and keys:
//! - `alerts.alerts`: `tenant/fingerprint` → [`AlertState`]
//! - `alerts.groups`: group key (starts with `tenant/`) → [`GroupState`]
//! - `alerts.silences`: `tenant/id` → [`Silence`]
//! - `alerts.notifications`: `tenant/inverted-time/id` → [`NotificationRecord`]
//!   (newest first within a tenant)
//! - `alerts.outbox`: notification id → its log key, while it is not yet sent or failed

use cairn_core::alerts::{Alert, Matcher, all_match};
use cairn_core::ports::{RecordChange, RecordStore, StoreError};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Collection of [`AlertState`].
pub const ALERTS: &str = "alerts.alerts";
/// Collection of [`GroupState`].
pub const GROUPS: &str = "alerts.groups";
/// Collection of [`Silence`].
pub const SILENCES: &str = "alerts.silences";
/// Collection of [`NotificationRecord`].
pub const NOTIFICATIONS: &str = "alerts.notifications";
/// Notifications not yet sent or failed: id → key in [`NOTIFICATIONS`].
pub const OUTBOX: &str = "alerts.outbox";

/// An alert as the pipeline holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    /// The alert (its `ends_at` filled in when it times out).
    pub alert: Alert,
    /// Its fingerprint.
    pub fingerprint: String,
    /// First received.
    pub received_at: DateTime<Utc>,
    /// Last raised or changed.
    pub updated_at: DateTime<Utc>,
}

impl AlertState {
    /// The record key.
    pub fn key(&self) -> String {
        alert_key(self.alert.tenant(), &self.fingerprint)
    }

    /// `firing` or `resolved` at `now`.
    pub fn status_at(&self, now: DateTime<Utc>) -> &'static str {
        if self.alert.is_resolved_at(now) {
            "resolved"
        } else {
            "firing"
        }
    }
}

/// `tenant/fingerprint`.
pub fn alert_key(tenant: &str, fingerprint: &str) -> String {
    format!("{tenant}/{fingerprint}")
}

/// Timing of a group, from its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// Milliseconds before the first notification.
    pub group_wait_ms: u64,
    /// Milliseconds between notifications about changes.
    pub group_interval_ms: u64,
    /// Milliseconds before an unchanged group is notified again.
    pub repeat_interval_ms: u64,
}

/// A group of alerts notified together to one receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// `tenant/route/receiver/label-hash`.
    pub key: String,
    /// The tenant (groups never mix tenants).
    pub tenant: String,
    /// The receiver.
    pub receiver: String,
    /// The route that formed it (`root`, `0`, `0.1`, …).
    pub route: String,
    /// The grouping labels and their values.
    pub labels: BTreeMap<String, String>,
    /// Fingerprints of the alerts in it.
    pub alerts: BTreeSet<String>,
    /// Timing.
    pub timing: Timing,
    /// When the group formed.
    pub created_at: DateTime<Utc>,
    /// When it is next evaluated.
    pub next_flush: DateTime<Utc>,
    /// What the receiver was last told is firing (the notification log entry).
    pub notified_firing: BTreeSet<String>,
    /// When the receiver was last notified.
    pub notified_at: Option<DateTime<Utc>>,
}

/// A silence: alerts matching every matcher are not notified between
/// `starts_at` and `ends_at`. A tenant's silence applies to its alerts only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// Id (UUIDv7).
    pub id: String,
    /// The tenant whose alerts it silences.
    pub tenant: String,
    /// Matchers.
    pub matchers: Vec<Matcher>,
    /// Start.
    pub starts_at: DateTime<Utc>,
    /// End (set to the expiry time when expired early).
    pub ends_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
    /// Why.
    pub comment: String,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Silence {
    /// The record key.
    pub fn key(&self) -> String {
        format!("{}/{}", self.tenant, self.id)
    }

    /// `pending`, `active` or `expired` at `now`.
    pub fn state_at(&self, now: DateTime<Utc>) -> &'static str {
        if now < self.starts_at {
            "pending"
        } else if now < self.ends_at {
            "active"
        } else {
            "expired"
        }
    }

    /// True when it silences `alert` at `now`.
    pub fn mutes(&self, alert: &Alert, now: DateTime<Utc>) -> bool {
        self.state_at(now) == "active"
            && alert.tenant() == self.tenant
            && all_match(&self.matchers, &alert.labels)
    }
}

/// Where a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Recorded, not yet attempted.
    Pending,
    /// An attempt failed; another follows.
    Retrying,
    /// The receiver accepted it.
    Sent,
    /// Given up (permanent error or retry budget spent).
    Failed,
}

impl DeliveryStatus {
    /// True once nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(self, DeliveryStatus::Sent | DeliveryStatus::Failed)
    }
}

/// The content of one notification, fixed when it is created so that every
/// retry sends the same thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `firing` (some alert fires) or `resolved` (all resolved).
    pub status: String,
    /// The grouping labels.
    pub group_labels: BTreeMap<String, String>,
    /// The alerts: firing first, then the resolved ones.
    pub alerts: Vec<AlertState>,
    /// How many alerts the group held (the list may be cut for size).
    pub total: usize,
}

/// One entry of the notification log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationRecord {
    /// Id (UUIDv7): the `webhook-id` every attempt sends.
    pub id: String,
    /// The tenant of the group.
    pub tenant: String,
    /// The group.
    pub group_key: String,
    /// The receiver.
    pub receiver: String,
    /// `slack`, `webhook` or `pagerduty`.
    pub kind: String,
    /// Delivery status.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The last error (status code or transport class; never a URL or secret).
    pub last_error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When the receiver accepted it.
    pub sent_at: Option<DateTime<Utc>>,
    /// What is sent.
    pub message: Message,
}

/// Keys of the log sort newest first within a tenant.
pub fn notification_key(tenant: &str, at: DateTime<Utc>, id: &str) -> String {
    let inverted = u64::MAX - u64::try_from(at.timestamp_millis()).unwrap_or(0);
    format!("{tenant}/{inverted:020}/{id}")
}

impl NotificationRecord {
    /// The record key.
    pub fn key(&self) -> String {
        notification_key(&self.tenant, self.created_at, &self.id)
    }

    /// The changes that store it (and keep it in the outbox until final).
    pub fn changes(&self) -> Vec<RecordChange> {
        let key = self.key();
        let outbox = if self.status.is_final() {
            RecordChange::delete(OUTBOX, &self.id)
        } else {
            RecordChange::put(OUTBOX, &self.id, json(&key))
        };
        vec![RecordChange::put(NOTIFICATIONS, key, json(self)), outbox]
    }
}

/// JSON text of a record (these types always serialize).
pub fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(
    collection: &str,
    (key, text): (String, String),
) -> Result<T, StoreError> {
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("{collection} record {key}: {e}")))
}

/// Reads a whole collection (or a tenant's part of it), page by page.
pub async fn scan_all<T: DeserializeOwned>(
    store: &dyn RecordStore,
    collection: &str,
    prefix: &str,
    cap: usize,
) -> Result<Vec<T>, StoreError> {
    const PAGE: usize = 1000;
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .scan_records(
                collection,
                prefix,
                after.as_deref(),
                PAGE.min(cap - out.len()),
            )
            .await?;
        let n = page.len();
        after = page.last().map(|(k, _)| k.clone());
        for row in page {
            out.push(decode(collection, row)?);
        }
        if n < PAGE || out.len() >= cap {
            return Ok(out);
        }
    }
}

/// The tenant prefix of keys (`""` for operators reading every tenant).
pub fn tenant_prefix(tenant: Option<&str>) -> String {
    tenant.map(|t| format!("{t}/")).unwrap_or_default()
}

/// Reads of the stored pipeline state (the API and CLI use these; any replica
/// can serve them).
#[derive(Clone)]
pub struct AlertLog {
    store: std::sync::Arc<dyn RecordStore>,
}

/// Most records one listing returns.
pub const MAX_LIST: usize = 1000;

impl AlertLog {
    /// Reads `store`.
    pub fn new(store: std::sync::Arc<dyn RecordStore>) -> Self {
        Self { store }
    }

    /// The store.
    pub fn store(&self) -> &std::sync::Arc<dyn RecordStore> {
        &self.store
    }

    /// Alerts of `tenant` (all tenants for `None`), filtered by state
    /// (`firing`/`resolved`) and label matchers.
    pub async fn alerts(
        &self,
        tenant: Option<&str>,
        state: Option<&str>,
        matchers: &[Matcher],
        limit: usize,
    ) -> Result<Vec<AlertState>, StoreError> {
        let now = Utc::now();
        let all: Vec<AlertState> =
            scan_all(self.store.as_ref(), ALERTS, &tenant_prefix(tenant), 100_000).await?;
        Ok(all
            .into_iter()
            .filter(|a| state.is_none_or(|s| a.status_at(now) == s))
            .filter(|a| all_match(matchers, &a.alert.labels))
            .take(limit.min(MAX_LIST))
            .collect())
    }

    /// Silences of `tenant` (all for `None`).
    pub async fn silences(&self, tenant: Option<&str>) -> Result<Vec<Silence>, StoreError> {
        scan_all(
            self.store.as_ref(),
            SILENCES,
            &tenant_prefix(tenant),
            100_000,
        )
        .await
    }

    /// One silence.
    pub async fn silence(&self, tenant: &str, id: &str) -> Result<Option<Silence>, StoreError> {
        let key = format!("{tenant}/{id}");
        match self.store.get_record(SILENCES, &key).await? {
            Some(text) => decode(SILENCES, (key, text)).map(Some),
            None => Ok(None),
        }
    }

    /// Stores a silence (created or expired).
    pub async fn put_silence(&self, s: &Silence) -> Result<(), StoreError> {
        self.store
            .write_records(vec![RecordChange::put(SILENCES, s.key(), json(s))])
            .await
    }

    /// The notification log of `tenant` (all for `None`), newest first.
    pub async fn notifications(
        &self,
        tenant: Option<&str>,
        limit: usize,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        let limit = limit.min(MAX_LIST);
        let mut rows: Vec<NotificationRecord> = match tenant {
            Some(_) => {
                scan_all(
                    self.store.as_ref(),
                    NOTIFICATIONS,
                    &tenant_prefix(tenant),
                    limit,
                )
                .await?
            }
            None => scan_all(self.store.as_ref(), NOTIFICATIONS, "", 100_000).await?,
        };
        rows.sort_by(|a, b| b.id.cmp(&a.id));
        rows.truncate(limit);
        Ok(rows)
    }

    /// Records a notification (the API's test notifications).
    pub async fn put_notification(&self, n: &NotificationRecord) -> Result<(), StoreError> {
        self.store.write_records(n.changes()).await
    }
}
