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
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The bus's tables, under the names of one file layout.
struct Tables {
    /// (topic, offset) → record JSON.
    records: TableDefinition<'static, (&'static str, u64), &'static [u8]>,
    /// topic → next offset to assign.
    next_offset: TableDefinition<'static, &'static str, u64>,
    /// `topic \0 group` → next offset the group will read.
    committed: TableDefinition<'static, &'static str, u64>,
}

/// A bus alone in its file ([`EmbeddedBus::open`]; `bus.redb` in data dirs written
/// before the bus moved into the memory store's file).
const OWN_FILE: Tables = Tables {
    records: TableDefinition::new("records"),
    next_offset: TableDefinition::new("next_offset"),
    committed: TableDefinition::new("committed"),
};

/// A bus in a file it shares with other tables ([`EmbeddedBus::sharing`]).
const SHARED: Tables = Tables {
    records: TableDefinition::new("bus_records"),
    next_offset: TableDefinition::new("bus_next_offset"),
    committed: TableDefinition::new("bus_committed"),
};

/// Records copied per transaction by [`EmbeddedBus::adopt_file`].
const ADOPT_PAGE: usize = 4096;

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
    tables: &'static Tables,
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
        Self::on(db, &OWN_FILE).await
    }

    /// Keeps the bus log in `db`, beside other tables (the memory store's): its
    /// writes then join the same group commits, one fsync for both. The bus's
    /// tables are named `bus_*`.
    pub async fn sharing(db: Db) -> Result<Self, BusError> {
        Self::on(db, &SHARED).await
    }

    async fn on(db: Db, tables: &'static Tables) -> Result<Self, BusError> {
        db.write(move |txn| {
            txn.open_table(tables.records).map_err(r)?;
            txn.open_table(tables.next_offset).map_err(r)?;
            txn.open_table(tables.committed).map_err(r)?;
            Ok(())
        })
        .await
        .map_err(unavailable)?;
        Ok(Self {
            db,
            tables,
            heads: Arc::default(),
            keep_consumed: false,
        })
    }

    /// Moves the log of a bus kept alone in the file `old` (see [`open`](Self::open))
    /// into this bus, then deletes `old`; returns the records moved (0 when there is
    /// no such file). Offsets and every group's committed position are kept, so
    /// nothing accepted is lost or delivered twice. Call it before anything
    /// publishes or subscribes. A move cut short (a crash) is repeated whole at the
    /// next call: copying the same record again is a no-op, and a record already
    /// here with other content stops the move with an error instead of overwriting.
    pub async fn adopt_file(&self, old: &Path) -> Result<u64, BusError> {
        if !old.exists() {
            return Ok(0);
        }
        let source = EmbeddedBus::open(old).await?;
        let mut moved = 0u64;
        let mut from: Option<(String, u64)> = None;
        loop {
            let start = from.clone();
            let page: Vec<(String, u64, Vec<u8>)> = source
                .db
                .read(move |txn| {
                    let t = txn.open_table(OWN_FILE.records).map_err(r)?;
                    let range = match &start {
                        Some((topic, offset)) => t.range((topic.as_str(), *offset)..),
                        None => t.range::<(&str, u64)>(..),
                    }
                    .map_err(r)?;
                    let mut out = Vec::new();
                    for item in range.take(ADOPT_PAGE) {
                        let (k, v) = item.map_err(r)?;
                        let (topic, offset) = k.value();
                        out.push((topic.to_owned(), offset, v.value().to_vec()));
                    }
                    Ok(out)
                })
                .await
                .map_err(unavailable)?;
            let Some((topic, offset, _)) = page.last() else {
                break;
            };
            from = Some((topic.clone(), offset + 1));
            moved += page.len() as u64;
            let tables = self.tables;
            self.db
                .write(move |txn| {
                    let mut t = txn.open_table(tables.records).map_err(r)?;
                    for (topic, offset, bytes) in &page {
                        let key = (topic.as_str(), *offset);
                        if let Some(here) = t.get(key).map_err(r)? {
                            if here.value() != bytes.as_slice() {
                                return Ok(Err(topic.clone()));
                            }
                            continue;
                        }
                        t.insert(key, bytes.as_slice()).map_err(r)?;
                    }
                    Ok(Ok(()))
                })
                .await
                .map_err(unavailable)?
                .map_err(|topic| {
                    BusError::Unavailable(format!(
                        "cannot move the bus log of {} (topic {topic}): this data dir already \
                         holds other records at the same offsets",
                        old.display()
                    ))
                })?;
        }
        let positions = source
            .db
            .read(|txn| {
                let mut out = Vec::new();
                for (which, table) in [(0, OWN_FILE.next_offset), (1, OWN_FILE.committed)] {
                    for item in txn.open_table(table).map_err(r)?.iter().map_err(r)? {
                        let (k, v) = item.map_err(r)?;
                        out.push((which, k.value().to_owned(), v.value()));
                    }
                }
                Ok(out)
            })
            .await
            .map_err(unavailable)?;
        let tables = self.tables;
        self.db
            .write(move |txn| {
                let mut next = txn.open_table(tables.next_offset).map_err(r)?;
                let mut committed = txn.open_table(tables.committed).map_err(r)?;
                for (which, key, value) in &positions {
                    let t = if *which == 0 {
                        &mut next
                    } else {
                        &mut committed
                    };
                    let here = t.get(key.as_str()).map_err(r)?.map_or(0, |v| v.value());
                    t.insert(key.as_str(), here.max(*value)).map_err(r)?;
                }
                Ok(())
            })
            .await
            .map_err(unavailable)?;
        drop(source);
        std::fs::remove_file(old)
            .map_err(|e| BusError::Unavailable(format!("{}: {e}", old.display())))?;
        if let Some(dir) = old.parent() {
            // Make the removal durable, so a crash does not bring the file back
            // (a second move would then find the same records and skip them).
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(moved)
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
        let tables = self.tables;
        self.db
            .read_now(move |txn| {
                let t = txn.open_table(tables.records).map_err(r)?;
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
        let tables = self.tables;
        self.db
            .read(move |txn| {
                let t = txn.open_table(tables.records).map_err(r)?;
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
        let tables = self.tables;
        let next = self
            .db
            .write(move |txn| {
                let mut next = txn.open_table(tables.next_offset).map_err(r)?;
                let offset = next.get(t.as_str()).map_err(r)?.map_or(0, |v| v.value());
                next.insert(t.as_str(), offset + 1).map_err(r)?;
                txn.open_table(tables.records)
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
            let tables = self.tables;
            self.db
                .write(move |txn| {
                    let mut t = txn.open_table(tables.committed).map_err(r)?;
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
            unstored: None,
            stored_at: None,
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
    /// The last offset committed but not yet stored (see [`COMMIT_INTERVAL`]).
    unstored: Option<u64>,
    /// When the group's position was last stored; `None` before the first time.
    stored_at: Option<Instant>,
}

/// How long a committed offset may wait before it is stored. Storing each commit
/// would cost a write (and a share of an fsync) per record per group; like
/// Kafka's auto-commit, commits within this interval are stored together. A
/// crash redelivers at most this interval's records, which every consumer skips
/// by their event ids (at-least-once holds); an idle consumer stores its
/// position when the interval ends, and a dropped one at once.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// The write that stores `offset` as done for the group `ck` of `topic`, and
/// trims what every group of the topic has consumed.
fn store_position(
    tables: &'static Tables,
    topic: String,
    ck: String,
    offset: u64,
    keep: bool,
) -> impl FnOnce(&redb::WriteTransaction) -> Result<(), DbError> + Send + 'static {
    move |txn| {
        let mut committed = txn.open_table(tables.committed).map_err(r)?;
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
            txn.open_table(tables.records)
                .map_err(r)?
                .retain_in((topic.as_str(), 0)..(topic.as_str(), min), |_, _| false)
                .map_err(r)?;
        }
        Ok(())
    }
}

impl EmbeddedConsumer {
    /// Stores the last committed offset, if one waits.
    async fn flush(&mut self) -> Result<(), BusError> {
        let Some(offset) = self.unstored else {
            return Ok(());
        };
        let op = store_position(
            self.bus.tables,
            self.topic.clone(),
            self.committed_key.clone(),
            offset,
            self.bus.keep_consumed,
        );
        self.bus.db.write(op).await.map_err(unavailable)?;
        // Cleared only once stored: a flush cut short (the caller dropped the
        // future) is repeated, and storing the same position twice is harmless.
        if self.unstored == Some(offset) {
            self.unstored = None;
        }
        self.stored_at = Some(Instant::now());
        Ok(())
    }

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
            if !self.buffer.is_empty() {
                continue;
            }
            match (self.unstored, self.stored_at) {
                (Some(_), Some(at)) => {
                    let due = tokio::time::Instant::from_std(at + COMMIT_INTERVAL);
                    tokio::select! {
                        changed = self.head.changed() => changed.map_err(|_| BusError::Closed)?,
                        () = tokio::time::sleep_until(due) => self.flush().await?,
                    }
                }
                (Some(_), None) => self.flush().await?,
                (None, _) => self.head.changed().await.map_err(|_| BusError::Closed)?,
            }
        }
    }

    async fn commit(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        if partition != 0 {
            return Err(BusError::Unavailable(format!(
                "the embedded bus has one partition, not {partition}"
            )));
        }
        self.unstored = Some(self.unstored.map_or(offset, |o| o.max(offset)));
        match self.stored_at {
            Some(at) if at.elapsed() < COMMIT_INTERVAL => Ok(()),
            _ => self.flush().await,
        }
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        if let Some(offset) = self.unstored.take() {
            let op = store_position(
                self.bus.tables,
                std::mem::take(&mut self.topic),
                std::mem::take(&mut self.committed_key),
                offset,
                self.bus.keep_consumed,
            );
            if !self.bus.db.write_detached(op) {
                tracing::warn!(
                    "a consumer's last position was not stored; its records may be redelivered"
                );
            }
        }
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

    /// Opens `path` once the writer thread of an earlier handle has let it go.
    fn reopen_db(path: &Path) -> Db {
        for _ in 0..100 {
            if let Ok(db) = Db::open(path) {
                return db;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} does not reopen", path.display());
    }

    /// [`EmbeddedBus::adopt_file`] once the writer thread of the bus that wrote
    /// `old` has let the file go.
    async fn adopt(bus: &EmbeddedBus, old: &Path) -> Result<u64, BusError> {
        for _ in 0..100 {
            match bus.adopt_file(old).await {
                Err(e) if e.to_string().contains("already open") => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => return other,
            }
        }
        panic!("{} stays open", old.display());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bus_file_of_the_old_layout_moves_into_the_shared_file_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("bus.redb");
        {
            let bus = EmbeddedBus::open(&old).await.unwrap();
            for n in 0..6 {
                bus.publish("t", "k", &env(n)).await.unwrap();
            }
            bus.publish("u", "k", &env(100)).await.unwrap();
            let mut c = bus.subscribe("t", "g").await.unwrap();
            for _ in 0..3 {
                next(&mut c).await;
            }
            c.commit(0, 1).await.unwrap(); // 0 and 1 consumed (and trimmed), 2 read only
            bus.subscribe("u", "g").await.unwrap();
        }
        let shared = dir.path().join("memory.redb");
        let db = Db::open(&shared).unwrap();
        let bus = EmbeddedBus::sharing(db).await.unwrap();
        // Records 2..6 of "t" and the one of "u".
        assert_eq!(adopt(&bus, &old).await.unwrap(), 5);
        assert!(!old.exists(), "the old file is deleted once moved");
        assert_eq!(adopt(&bus, &old).await.unwrap(), 0);

        // The group resumes where it committed; new records follow the old offsets.
        let mut c = bus.subscribe("t", "g").await.unwrap();
        let rec = next(&mut c).await;
        assert_eq!((rec.offset, rec.envelope.data["id"].as_u64()), (2, Some(3)));
        bus.publish("t", "k", &env(6)).await.unwrap();
        for want in 3..7 {
            assert_eq!(next(&mut c).await.offset, want);
        }
        let mut u = bus.subscribe("u", "g").await.unwrap();
        assert_eq!(next(&mut u).await.envelope.data["id"], 101);
        drop((c, u, bus));

        // The moved log is durable in the shared file.
        let bus = EmbeddedBus::sharing(reopen_db(&shared)).await.unwrap();
        assert_eq!(bus.retained("t").await.unwrap(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_move_repeated_after_a_crash_copies_nothing_twice_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("bus.redb");
        let shared = dir.path().join("memory.redb");
        {
            let bus = EmbeddedBus::open(&old).await.unwrap();
            for n in 0..3 {
                bus.publish("t", "k", &env(n)).await.unwrap();
            }
        }
        // A crash after the copy committed but before the old file was deleted:
        // the shared file already holds the same records.
        let copy = std::fs::read(&old).unwrap();
        {
            let bus = EmbeddedBus::sharing(Db::open(&shared).unwrap())
                .await
                .unwrap();
            adopt(&bus, &old).await.unwrap();
        }
        std::fs::write(&old, &copy).unwrap();
        {
            let bus = EmbeddedBus::sharing(reopen_db(&shared)).await.unwrap();
            assert_eq!(adopt(&bus, &old).await.unwrap(), 3);
            assert_eq!(bus.retained("t").await.unwrap(), 3);
            let mut c = bus.subscribe("t", "g").await.unwrap();
            for want in 0..3 {
                assert_eq!(next(&mut c).await.offset, want);
            }
            // The shared log moves on: offset 3 now holds a record the old file lacks.
            bus.publish("t", "k", &env(50)).await.unwrap();
        }
        // An old file whose offset 3 holds something else is refused, and kept.
        {
            let bus = EmbeddedBus::open(&old).await.unwrap();
            for n in 10..14 {
                bus.publish("t", "k", &env(n)).await.unwrap();
            }
        }
        let bus = EmbeddedBus::sharing(reopen_db(&shared)).await.unwrap();
        let refused = adopt(&bus, &old).await.unwrap_err().to_string();
        assert!(
            refused.contains("other records at the same offsets"),
            "{refused}"
        );
        assert!(old.exists());
        let kept = bus.read_from("t", 3, 10).await.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].1.as_ref().unwrap().envelope.data["id"], 51);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_within_the_interval_are_stored_together_when_idle_or_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(&dir.path().join("bus.redb"))
            .await
            .unwrap();
        for n in 0..5 {
            bus.publish("t", "k", &env(n)).await.unwrap();
        }
        let mut c = bus.subscribe("t", "g").await.unwrap();
        next(&mut c).await;
        c.commit(0, 0).await.unwrap(); // the first commit is stored at once
        assert_eq!(bus.retained("t").await.unwrap(), 4);
        for offset in 1..5 {
            assert_eq!(next(&mut c).await.offset, offset);
            c.commit(0, offset).await.unwrap();
        }
        // Within the interval: not stored yet, so a crash now would redeliver 1..5.
        assert_eq!(bus.retained("t").await.unwrap(), 4);
        // Idle, the consumer stores its position once the interval ends.
        let idle =
            tokio::time::timeout(COMMIT_INTERVAL + Duration::from_millis(300), c.next()).await;
        assert!(idle.is_err(), "no record to read");
        assert_eq!(bus.retained("t").await.unwrap(), 0);

        bus.publish("t", "k", &env(5)).await.unwrap();
        assert_eq!(next(&mut c).await.offset, 5);
        c.commit(0, 5).await.unwrap();
        assert_eq!(bus.retained("t").await.unwrap(), 1);
        drop(c); // a dropped consumer stores its last position
        let deadline = Instant::now() + Duration::from_secs(5);
        while bus.retained("t").await.unwrap() != 0 {
            assert!(
                Instant::now() < deadline,
                "the last position was not stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut again = bus.subscribe("t", "g").await.unwrap();
        bus.publish("t", "k", &env(6)).await.unwrap();
        assert_eq!(next(&mut again).await.offset, 6);
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
