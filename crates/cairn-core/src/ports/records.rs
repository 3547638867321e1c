//! A small ordered record store for services beside the conversations (the alert
//! pipeline's alerts, groups, silences and notification log): JSON values under
//! string keys, grouped in named collections, read back in key order.

use super::StoreError;
use async_trait::async_trait;

/// One change in a [`RecordStore::write_records`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordChange {
    /// The collection, e.g. `alerts.groups`.
    pub collection: String,
    /// The key inside it.
    pub key: String,
    /// The new value (JSON text), or `None` to delete the record.
    pub value: Option<String>,
}

impl RecordChange {
    /// Writes `value` under `key`.
    pub fn put(collection: &str, key: impl Into<String>, value: String) -> Self {
        Self {
            collection: collection.to_owned(),
            key: key.into(),
            value: Some(value),
        }
    }

    /// Deletes `key`.
    pub fn delete(collection: &str, key: impl Into<String>) -> Self {
        Self {
            collection: collection.to_owned(),
            key: key.into(),
            value: None,
        }
    }
}

/// Keyed JSON records in named collections. Keys sort bytewise, so a key that
/// starts with a tenant and a UUIDv7 reads back per tenant in time order.
#[async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Applies every change at once: after a crash either all of them are
    /// stored or none.
    async fn write_records(&self, changes: Vec<RecordChange>) -> Result<(), StoreError>;

    /// Compare-and-set: writes `change` only if the record under its key is
    /// still `expected` (`None`: absent), all in one step; returns whether it
    /// was written. Two writers that read the same value cannot both move it
    /// on: the second sees `false`, re-reads and decides again.
    async fn replace_record(
        &self,
        change: RecordChange,
        expected: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// One record.
    async fn get_record(&self, collection: &str, key: &str) -> Result<Option<String>, StoreError>;

    /// Records whose key starts with `prefix`, in key order, after the key
    /// `after` (exclusive) when given, at most `limit`.
    async fn scan_records(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError>;
}
