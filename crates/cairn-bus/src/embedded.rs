//! The embedded, durable, in-process event bus.

use async_trait::async_trait;
use cairn_core::envelope::Envelope;
use cairn_core::ports::{BusConsumer, BusError, BusRecord, EventBus};
use cairn_core::schemas;
use cairn_redb::{Db, DbError};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// (topic, offset) → record JSON.
const RECORDS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("records");
/// topic → next offset to assign.
const NEXT_OFFSET: TableDefinition<&str, u64> = TableDefinition::new("next_offset");
/// `topic \0 group` → next offset the group will read.
const COMMITTED: TableDefinition<&str, u64> = TableDefinition::new("committed");

/// Records read per round trip.
const PAGE: usize = 256;

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    key: String,
    envelope: serde_json::Value,
}

/// The embedded bus. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedBus {
    db: Db,
    /// Per-topic "next offset" signals that wake idle consumers.
    heads: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    /// Keep consumed records instead of trimming them (`bus.keep_consumed`).
    keep_consumed: bool,
}

fn unavailable(e: DbError) -> BusError {
    BusError::Unavailable(e.0)
}

fn r<E: Into<redb::Error>>(e: E) -> DbError {
    DbError::from_redb(e)
}

impl EmbeddedBus {
    /// Opens (or creates) the bus log at `path`.
    pub async fn open(path: &Path) -> Result<Self, BusError> {
        Self::open_with_cache(path, cairn_redb::DEFAULT_CACHE_BYTES).await
    }

    /// Like [`open`](Self::open), with a page cache of `cache_bytes`.
    pub async fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, BusError> {
        let db = Db::open_with_cache(path, cache_bytes).map_err(unavailable)?;
        db.write(|txn| {
            txn.open_table(RECORDS).map_err(r)?;
            txn.open_table(NEXT_OFFSET).map_err(r)?;
            txn.open_table(COMMITTED).map_err(r)?;
            Ok(())
        })
        .await
        .map_err(unavailable)?;
        Ok(Self {
            db,
            heads: Arc::default(),
            keep_consumed: false,
        })
    }

    /// Keeps records every group consumed (`bus.keep_consumed`), for audits
    /// and recounts.
    pub fn keeping_consumed(mut self, keep: bool) -> Self {
        self.keep_consumed = keep;
        self
    }

    fn head(&self, topic: &str) -> watch::Receiver<u64> {
        let mut h = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        h.entry(topic.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn advance(&self, topic: &str, next: u64) {
        let h = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = h.get(topic) {
            tx.send_replace(next);
        }
    }

    /// Up to `limit` raw records of `topic` from offset `from` on, in order.
    async fn read_page(
        &self,
        topic: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, BusError> {
        let topic = topic.to_owned();
        self.db
            .read(move |txn| {
                let t = txn.open_table(RECORDS).map_err(r)?;
                let mut out = Vec::new();
                for item in t
                    .range((topic.as_str(), from)..=(topic.as_str(), u64::MAX))
                    .map_err(r)?
                    .take(limit)
                {
                    let (k, v) = item.map_err(r)?;
                    out.push((k.value().1, v.value().to_vec()));
                }
                Ok(out)
            })
            .await
            .map_err(unavailable)
    }

    /// Up to `limit` records of `topic` from offset `from` on, in order, decoded
    /// as a consumer decodes them (a refused record is an `Err`, as a consumer
    /// would see it): the raw log, for recounts.
    pub async fn read_from(
        &self,
        topic: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Result<BusRecord, BusError>)>, BusError> {
        Ok(self
            .read_page(topic, from, limit)
            .await?
            .into_iter()
            .map(|(offset, bytes)| (offset, decode_record(topic, offset, &bytes)))
            .collect())
    }

    /// Records in `topic` not yet trimmed (for tests and `/health`).
    pub async fn retained(&self, topic: &str) -> Result<u64, BusError> {
        let topic = topic.to_owned();
        self.db
            .read(move |txn| {
                let t = txn.open_table(RECORDS).map_err(r)?;
                let n = t
                    .range((topic.as_str(), 0)..=(topic.as_str(), u64::MAX))
                    .map_err(r)?
                    .count();
                Ok(n as u64)
            })
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl EventBus for EmbeddedBus {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn publish(&self, topic: &str, key: &str, envelope: &Envelope) -> Result<(), BusError> {
        let bytes = serde_json::to_vec(&StoredRecord {
            key: key.to_owned(),
            envelope: serde_json::to_value(envelope)
                .map_err(|e| BusError::Unavailable(format!("encode: {e}")))?,
        })
        .map_err(|e| BusError::Unavailable(format!("encode: {e}")))?;
        let t = topic.to_owned();
        let next = self
            .db
            .write(move |txn| {
                let mut next = txn.open_table(NEXT_OFFSET).map_err(r)?;
                let offset = next.get(t.as_str()).map_err(r)?.map_or(0, |v| v.value());
                next.insert(t.as_str(), offset + 1).map_err(r)?;
                txn.open_table(RECORDS)
                    .map_err(r)?
                    .insert((t.as_str(), offset), bytes.as_slice())
                    .map_err(r)?;
                Ok(offset + 1)
            })
            .await
            .map_err(unavailable)?;
        self.advance(topic, next);
        Ok(())
    }

    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn BusConsumer>, BusError> {
        let head = self.head(topic);
        let ck = format!("{topic}\0{group}");
        // Registering the group (offset 0 when new) keeps records it has not read
        // from being trimmed on behalf of other groups.
        let start = {
            let ck = ck.clone();
            self.db
                .write(move |txn| {
                    let mut t = txn.open_table(COMMITTED).map_err(r)?;
                    let current = t.get(ck.as_str()).map_err(r)?.map(|v| v.value());
                    match current {
                        Some(v) => Ok(v),
                        None => {
                            t.insert(ck.as_str(), 0).map_err(r)?;
                            Ok(0)
                        }
                    }
                })
                .await
                .map_err(unavailable)?
        };
        Ok(Box::new(EmbeddedConsumer {
            bus: self.clone(),
            topic: topic.to_owned(),
            committed_key: ck,
            position: start,
            buffer: std::collections::VecDeque::new(),
            head,
        }))
    }
}

struct EmbeddedConsumer {
    bus: EmbeddedBus,
    topic: String,
    committed_key: String,
    /// Next offset to fetch from the log.
    position: u64,
    buffer: std::collections::VecDeque<(u64, Vec<u8>)>,
    head: watch::Receiver<u64>,
}

impl EmbeddedConsumer {
    async fn fetch(&mut self) -> Result<(), BusError> {
        let page = self.bus.read_page(&self.topic, self.position, PAGE).await?;
        if let Some((last, _)) = page.last() {
            self.position = last + 1;
        }
        self.buffer.extend(page);
        Ok(())
    }

    /// Decodes the next buffered record, if any.
    fn pop_buffered(&mut self) -> Option<Result<BusRecord, BusError>> {
        let (offset, bytes) = self.buffer.pop_front()?;
        Some(decode_record(&self.topic, offset, &bytes))
    }
}

/// A stored record as consumers see it: refused (undecodable, failing its
/// schema) or an envelope.
fn decode_record(topic: &str, offset: u64, bytes: &[u8]) -> Result<BusRecord, BusError> {
    let refused = |key: String, r: schemas::Rejection| BusError::Undecodable {
        topic: topic.to_owned(),
        partition: 0,
        offset,
        key,
        class: r.class,
        reason: r.reason,
        payload: String::from_utf8_lossy(bytes).into_owned(),
    };
    let rejection = |class, e: serde_json::Error| schemas::Rejection {
        class,
        reason: e.to_string(),
    };
    let rec: StoredRecord = serde_json::from_slice(bytes).map_err(|e| {
        refused(
            String::new(),
            rejection(schemas::RejectClass::Undecodable, e),
        )
    })?;
    if let Err(r) = schemas::check(&rec.envelope) {
        return Err(refused(rec.key, r));
    }
    match serde_json::from_value::<Envelope>(rec.envelope) {
        Ok(envelope) => Ok(BusRecord {
            topic: topic.to_owned(),
            partition: 0,
            offset,
            key: rec.key,
            envelope,
        }),
        Err(e) => Err(refused(rec.key, rejection(schemas::RejectClass::Schema, e))),
    }
}

#[async_trait]
impl BusConsumer for EmbeddedConsumer {
    async fn next(&mut self) -> Result<BusRecord, BusError> {
        loop {
            if let Some(r) = self.pop_buffered() {
                return r;
            }
            // Mark the head as seen before reading, so a publish that lands after the
            // read wakes us.
            self.head.borrow_and_update();
            self.fetch().await?;
            if self.buffer.is_empty() {
                self.head.changed().await.map_err(|_| BusError::Closed)?;
            }
        }
    }

    async fn commit(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        if partition != 0 {
            return Err(BusError::Unavailable(format!(
                "the embedded bus has one partition, not {partition}"
            )));
        }
        let ck = self.committed_key.clone();
        let topic = self.topic.clone();
        let keep = self.bus.keep_consumed;
        self.bus
            .db
            .write(move |txn| {
                let mut committed = txn.open_table(COMMITTED).map_err(r)?;
                let current = committed
                    .get(ck.as_str())
                    .map_err(r)?
                    .map_or(0, |v| v.value());
                if offset < current {
                    return Ok(());
                }
                committed.insert(ck.as_str(), offset + 1).map_err(r)?;
                // Trim what every group of this topic has consumed.
                let prefix = format!("{topic}\0");
                let mut min = u64::MAX;
                for item in committed.iter().map_err(r)? {
                    let (k, v) = item.map_err(r)?;
                    if k.value().starts_with(&prefix) {
                        min = min.min(v.value());
                    }
                }
                if min > 0 && min != u64::MAX && !keep {
                    txn.open_table(RECORDS)
                        .map_err(r)?
                        .retain_in((topic.as_str(), 0)..(topic.as_str(), min), |_, _| false)
                        .map_err(r)?;
                }
                Ok(())
            })
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::ids::TenantId;
    use std::time::Duration;

    /// A valid event numbered `n` (in `data.id`).
    fn env(n: u64) -> Envelope {
        Envelope::new(
            cairn_core::envelope::CONVERSATION_EVENT,
            TenantId::parse("acme").unwrap(),
            serde_json::json!({
                "conversation_id": "c1", "id": n + 1, "at": "2026-11-21T10:00:00Z",
                "event": {"type": "turn.started", "turn_id": "t1", "message_id": "m1"}
            }),
        )
    }

    async fn next(c: &mut Box<dyn BusConsumer>) -> BusRecord {
        tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .expect("record arrives")
            .expect("no bus error")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uncommitted_records_are_redelivered_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.redb");
        {
            let bus = EmbeddedBus::open(&path).await.unwrap();
            for n in 0..5 {
                bus.publish("t", "k", &env(n)).await.unwrap();
            }
            let mut c = bus.subscribe("t", "g").await.unwrap();
            for n in 0..3 {
                let rec = next(&mut c).await;
                assert_eq!(rec.offset, n);
                assert_eq!(rec.envelope.data["id"], n + 1);
            }
            c.commit(0, 1).await.unwrap(); // records 0 and 1 are done; 2 was read but not committed
        }
        let mut bus = None;
        for _ in 0..100 {
            if let Ok(b) = EmbeddedBus::open(&path).await {
                bus = Some(b);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let bus = bus.expect("bus reopens");
        let mut c = bus.subscribe("t", "g").await.unwrap();
        assert_eq!(next(&mut c).await.offset, 2);
        // Consumed records are trimmed; the rest stay.
        assert_eq!(bus.retained("t").await.unwrap(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_consumer_wakes_on_publish_and_groups_are_independent() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(&dir.path().join("bus.redb"))
            .await
            .unwrap();
        let mut a = bus.subscribe("t", "a").await.unwrap();
        let mut b = bus.subscribe("t", "b").await.unwrap();
        let publisher = bus.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            publisher.publish("t", "k", &env(7)).await.unwrap();
        });
        assert_eq!(next(&mut a).await.envelope.data["id"], 8);
        assert_eq!(next(&mut b).await.envelope.data["id"], 8);
        a.commit(0, 0).await.unwrap();
        // Group b has not committed: the record is kept for it.
        assert_eq!(bus.retained("t").await.unwrap(), 1);
        b.commit(0, 0).await.unwrap();
        assert_eq!(bus.retained("t").await.unwrap(), 0);
    }
}
