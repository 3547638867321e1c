//! CounterStore: analytics counters per tenant and time bucket, updated at most
//! once per bus event.

use super::StoreError;
use crate::desk::CounterUpdate;
use crate::ids::TenantId;
use async_trait::async_trait;
use std::collections::HashMap;
use std::time::Duration;

/// Counters in buckets (`h2026120113`, `d20261201`), per tenant.
#[async_trait]
pub trait CounterStore: Send + Sync + 'static {
    /// Applies each update whose `event_id` was not applied before (within
    /// `dedup_ttl`), in order, all at once: after a crash either the whole
    /// batch is applied or none of it. A slot update replaces the slot's
    /// previous contribution when its version is higher, and is ignored
    /// otherwise. Returns how many updates were new.
    async fn apply_counters(
        &self,
        updates: &[CounterUpdate],
        dedup_ttl: Duration,
    ) -> Result<usize, StoreError>;

    /// The counters of each bucket (a missing bucket is empty), in order.
    async fn read_counters(
        &self,
        tenant: &TenantId,
        buckets: &[String],
    ) -> Result<Vec<HashMap<String, i64>>, StoreError>;
}
