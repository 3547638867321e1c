//! The embedded MemoryStore and EventStream: one redb file in the data dir.
//!
//! Keys are prefixed by `tenant \0 conversation`, so no read can cross tenants:
//! an id that exists under another tenant simply is not found. Every write is one
//! redb transaction (batched with others by the group-commit writer), so a crash
//! leaves either all of a change or none of it.

use crate::follow::{EventWaiter, follow};
use async_trait::async_trait;
use cairn_core::ids::*;
use cairn_core::ports::{
    DocumentRecord, DocumentStore, Enqueued, EventStream, MemoryStore, RecordChange, RecordStore,
    StoreError,
};
use cairn_core::*;
use cairn_redb::{Db, DbError};
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("conversation_meta");
/// `tenant \0 owner \0 conversation` → (): lists a user's conversations in id order.
const OWNER_INDEX: TableDefinition<&str, ()> = TableDefinition::new("owner_index");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const SUMMARY: TableDefinition<&str, &[u8]> = TableDefinition::new("summary");
/// Queued turn requests, in acceptance order.
const PENDING: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("pending_turns");
/// `conv \0 message_id` → (): message ids already accepted (dedup).
const SEEN: TableDefinition<&str, ()> = TableDefinition::new("seen_messages");
const CHECKPOINT: TableDefinition<&str, &[u8]> = TableDefinition::new("turn_checkpoint");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
/// Last event id per conversation; kept apart so trimming never resets ids.
const EVENT_SEQ: TableDefinition<&str, u64> = TableDefinition::new("event_seq");
/// `tenant \0 conversation` → the writer lease (JSON [`LeaseRow`]); the row stays
/// after a release or expiry so the fencing token keeps growing.
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// `tenant \0 conversation` → id of the last stream event republished on the bus.
const RELAYED: TableDefinition<&str, u64> = TableDefinition::new("relayed_events");
/// `group \0 event_id` → expiry (ms since the epoch): bus events a consumer finished.
const DONE_EVENTS: TableDefinition<&str, u64> = TableDefinition::new("done_events");
/// (expiry, `group \0 event_id`) → (): [`DONE_EVENTS`] in expiry order, so that
/// pruning finds the expired rows of every consumer group without a scan.
const DONE_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("done_events_expiry");
/// Expired dedup rows removed per write (bounded work per call; the table
/// shrinks faster than it grows as long as rows expire).
const DONE_PRUNE_BATCH: usize = 64;
/// `tenant \0 document` → the document record (JSON), in id order per tenant.
const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");

/// (collection, key) → JSON text: the [`RecordStore`] port.
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");

/// The embedded store. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct EmbeddedStore {
    pub(crate) db: Db,
    event_retention: u64,
    /// Per-conversation fan-out of newly written events to live subscribers, so
    /// that a subscriber that keeps up never reads the store.
    watchers: Arc<Mutex<HashMap<String, broadcast::Sender<StoredEvent>>>>,
}

fn key(tenant: &TenantId, id: &ConversationId) -> String {
    format!("{tenant}\0{id}")
}

fn owner_key(tenant: &TenantId, owner: &UserId, id: &str) -> String {
    format!("{tenant}\0{owner}\0{id}")
}

pub(crate) fn unavailable(e: DbError) -> StoreError {
    StoreError::Unavailable(e.0)
}

pub(crate) fn r<E: Into<redb::Error>>(e: E) -> DbError {
    DbError::from_redb(e)
}

/// Writes one record change (a value, or `None` to delete) into the records table.
fn apply_record(
    t: &mut redb::Table<(&str, &str), &[u8]>,
    change: &RecordChange,
) -> Result<(), DbError> {
    let k = (change.collection.as_str(), change.key.as_str());
    match &change.value {
        Some(v) => t.insert(k, v.as_bytes()).map(drop).map_err(r),
        None => t.remove(k).map(drop).map_err(r),
    }
}

pub(crate) fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, DbError> {
    serde_json::to_vec(v).map_err(|e| DbError(format!("encode: {e}")))
}

pub(crate) fn dec<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DbError> {
    serde_json::from_slice(bytes).map_err(|e| DbError(format!("corrupt record: {e}")))
}

/// Decodes the (JSON) values of a range read, at most `limit` of them.
fn dec_range<K: redb::Key + 'static, T: DeserializeOwned>(
    range: redb::Range<'_, K, &'static [u8]>,
    limit: usize,
) -> Result<Vec<T>, DbError> {
    range
        .take(limit)
        .map(|item| dec(item.map_err(r)?.1.value()))
        .collect()
}

/// Flattens a write's storage and logical outcomes.
fn flat<T>(r: Result<Result<T, StoreError>, DbError>) -> Result<T, StoreError> {
    r.map_err(unavailable)?
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`. `event_retention` bounds the events
    /// kept per conversation.
    pub fn open(path: &Path, event_retention: u64) -> Result<Self, StoreError> {
        Self::open_with_cache(path, event_retention, cairn_redb::DEFAULT_CACHE_BYTES)
    }

    /// Like [`open`](Self::open), with a page cache of `cache_bytes`.
    pub fn open_with_cache(
        path: &Path,
        event_retention: u64,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let db = Db::open_with_cache(path, cache_bytes).map_err(unavailable)?;
        Ok(Self::on(db, event_retention))
    }

    fn on(db: Db, event_retention: u64) -> Self {
        Self {
            db,
            event_retention: event_retention.max(1),
            watchers: Arc::default(),
        }
    }

    /// Keeps the store in `db`, which other tables may share (the embedded bus's:
    /// `cairn serve` keeps both in one file, so a turn's writes to both join one
    /// group commit), and creates its tables.
    pub async fn on_db(db: Db, event_retention: u64) -> Result<Self, StoreError> {
        let s = Self::on(db, event_retention);
        s.init().await?;
        Ok(s)
    }

    /// Creates every table so that read transactions never meet a missing one.
    pub async fn init(&self) -> Result<(), StoreError> {
        self.db
            .write(|txn| {
                txn.open_table(META).map_err(r)?;
                txn.open_table(OWNER_INDEX).map_err(r)?;
                txn.open_table(MESSAGES).map_err(r)?;
                txn.open_table(SUMMARY).map_err(r)?;
                txn.open_table(PENDING).map_err(r)?;
                txn.open_table(SEEN).map_err(r)?;
                txn.open_table(CHECKPOINT).map_err(r)?;
                txn.open_table(EVENTS).map_err(r)?;
                txn.open_table(EVENT_SEQ).map_err(r)?;
                txn.open_table(DOCUMENTS).map_err(r)?;
                txn.open_table(RECORDS).map_err(r)?;
                crate::embedded_desk::create_tables(txn)?;
                txn.open_table(LEASES).map_err(r)?;
                let done = txn.open_table(DONE_EVENTS).map_err(r)?;
                let mut expiry = txn.open_table(DONE_EXPIRY).map_err(r)?;
                // Data dirs written before the expiry index existed: index them once.
                if expiry.is_empty().map_err(r)? && !done.is_empty().map_err(r)? {
                    for row in done.iter().map_err(r)? {
                        let (k, v) = row.map_err(r)?;
                        expiry.insert((v.value(), k.value()), ()).map_err(r)?;
                    }
                }
                drop((done, expiry));
                txn.open_table(RELAYED).map_err(r)?;
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    /// Opens the store and creates its tables.
    pub async fn open_and_init(path: &Path, event_retention: u64) -> Result<Self, StoreError> {
        Self::open_and_init_with_cache(path, event_retention, cairn_redb::DEFAULT_CACHE_BYTES).await
    }

    /// Opens the store with a page cache of `cache_bytes` and creates its tables.
    pub async fn open_and_init_with_cache(
        path: &Path,
        event_retention: u64,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let db = Db::open_with_cache(path, cache_bytes).map_err(unavailable)?;
        Self::on_db(db, event_retention).await
    }

    fn notify(&self, k: &str, events: Vec<StoredEvent>) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = w.get(k) {
            if tx.receiver_count() == 0 {
                w.remove(k);
            } else {
                for e in events {
                    let _ = tx.send(e);
                }
            }
        }
    }

    fn watch(&self, k: &str) -> broadcast::Receiver<StoredEvent> {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(k.to_owned())
            .or_insert_with(|| broadcast::channel(LIVE_BUFFER).0)
            .subscribe()
    }
}

/// Events buffered per conversation for live subscribers; one that falls further
/// behind reads the store instead.
const LIVE_BUFFER: usize = 64;

fn read_meta(txn: &ReadTransaction, k: &str) -> Result<Option<ConversationMeta>, DbError> {
    let t = txn.open_table(META).map_err(r)?;
    match t.get(k).map_err(r)? {
        Some(v) => Ok(Some(dec(v.value())?)),
        None => Ok(None),
    }
}

fn write_meta_get(txn: &WriteTransaction, k: &str) -> Result<Option<ConversationMeta>, DbError> {
    let t = txn.open_table(META).map_err(r)?;
    let v = t.get(k).map_err(r)?;
    match v {
        Some(v) => Ok(Some(dec(v.value())?)),
        None => Ok(None),
    }
}

/// Appends a message inside a write transaction, updating the metadata.
fn append_in(
    txn: &WriteTransaction,
    k: &str,
    message: &Message,
) -> Result<Result<u64, StoreError>, DbError> {
    let Some(mut meta) = write_meta_get(txn, k)? else {
        return Ok(Err(StoreError::NotFound));
    };
    let seq = meta.message_count;
    let mut m = message.clone();
    m.seq = seq;
    txn.open_table(MESSAGES)
        .map_err(r)?
        .insert((k, seq), enc(&m)?.as_slice())
        .map_err(r)?;
    meta.message_count += 1;
    meta.updated_at = Utc::now();
    txn.open_table(META)
        .map_err(r)?
        .insert(k, enc(&meta)?.as_slice())
        .map_err(r)?;
    Ok(Ok(seq))
}

/// Appends an event inside a write transaction, trimming past the retention.
fn append_event_in(
    txn: &WriteTransaction,
    k: &str,
    event: TurnEvent,
    retention: u64,
) -> Result<StoredEvent, DbError> {
    let mut seq = txn.open_table(EVENT_SEQ).map_err(r)?;
    let id = seq.get(k).map_err(r)?.map_or(0, |v| v.value()) + 1;
    seq.insert(k, id).map_err(r)?;
    let stored = StoredEvent {
        id,
        at: Utc::now(),
        event,
    };
    let mut events = txn.open_table(EVENTS).map_err(r)?;
    events
        .insert((k, id), enc(&stored)?.as_slice())
        .map_err(r)?;
    if id > retention {
        events.remove((k, id - retention)).map_err(r)?;
    }
    Ok(stored)
}

/// Writes a checkpoint and appends its events inside a write transaction.
fn checkpoint_in(
    txn: &WriteTransaction,
    k: &str,
    checkpoint: &[u8],
    events: Vec<TurnEvent>,
    retention: u64,
) -> Result<Vec<StoredEvent>, DbError> {
    txn.open_table(CHECKPOINT)
        .map_err(r)?
        .insert(k, checkpoint)
        .map_err(r)?;
    events
        .into_iter()
        .map(|e| append_event_in(txn, k, e, retention))
        .collect()
}

/// Removes every record of a conversation inside a write transaction.
/// A conversation's lease: the latest fencing token and who holds it until when.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct LeaseRow {
    token: u64,
    owner: String,
    expires_ms: i64,
}

fn lease_in(txn: &WriteTransaction, k: &str) -> Result<LeaseRow, DbError> {
    let t = txn.open_table(LEASES).map_err(r)?;
    let row = t.get(k).map_err(r)?.map(|v| dec(v.value())).transpose()?;
    Ok(row.unwrap_or_default())
}

fn put_lease(txn: &WriteTransaction, k: &str, row: &LeaseRow) -> Result<(), DbError> {
    txn.open_table(LEASES)
        .map_err(r)?
        .insert(k, enc(row)?.as_slice())
        .map_err(r)?;
    Ok(())
}

/// True when a write carrying `fence` may go ahead: no fence, or the newest token.
fn fence_ok(txn: &WriteTransaction, k: &str, fence: Option<u64>) -> Result<bool, DbError> {
    Ok(match fence {
        None => true,
        Some(f) => lease_in(txn, k)?.token == f,
    })
}

fn delete_in(txn: &WriteTransaction, k: &str) -> Result<bool, DbError> {
    let Some(meta) = write_meta_get(txn, k)? else {
        return Ok(false);
    };
    txn.open_table(META).map_err(r)?.remove(k).map_err(r)?;
    txn.open_table(OWNER_INDEX)
        .map_err(r)?
        .remove(owner_key(&meta.tenant_id, &meta.owner, meta.id.as_str()).as_str())
        .map_err(r)?;
    for def in [MESSAGES, PENDING, EVENTS] {
        txn.open_table(def)
            .map_err(r)?
            .retain_in((k, 0)..=(k, u64::MAX), |_, _| false)
            .map_err(r)?;
    }
    for def in [SUMMARY, CHECKPOINT] {
        txn.open_table(def).map_err(r)?.remove(k).map_err(r)?;
    }
    txn.open_table(EVENT_SEQ).map_err(r)?.remove(k).map_err(r)?;
    txn.open_table(RELAYED).map_err(r)?.remove(k).map_err(r)?;
    txn.open_table(LEASES).map_err(r)?.remove(k).map_err(r)?;
    let lo = format!("{k}\0");
    let hi = format!("{k}\u{1}");
    txn.open_table(SEEN)
        .map_err(r)?
        .retain_in(lo.as_str()..hi.as_str(), |_, _| false)
        .map_err(r)?;
    Ok(true)
}

#[async_trait]
impl MemoryStore for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .read(|txn| txn.open_table(META).map(|_| ()).map_err(r))
            .await
            .map_err(unavailable)
    }

    async fn create_conversation(&self, meta: &ConversationMeta) -> Result<(), StoreError> {
        let meta = meta.clone();
        flat(
            self.db
                .write(move |txn| {
                    let k = key(&meta.tenant_id, &meta.id);
                    if write_meta_get(txn, &k)?.is_some() {
                        return Ok(Err(StoreError::AlreadyExists));
                    }
                    txn.open_table(META)
                        .map_err(r)?
                        .insert(k.as_str(), enc(&meta)?.as_slice())
                        .map_err(r)?;
                    txn.open_table(OWNER_INDEX)
                        .map_err(r)?
                        .insert(
                            owner_key(&meta.tenant_id, &meta.owner, meta.id.as_str()).as_str(),
                            (),
                        )
                        .map_err(r)?;
                    Ok(Ok(()))
                })
                .await,
        )
    }

    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Option<ConversationMeta>, StoreError> {
        let k = key(tenant, id);
        self.db
            .read_now(move |txn| read_meta(txn, &k))
            .map_err(unavailable)
    }

    async fn list_conversations(
        &self,
        tenant: &TenantId,
        owner: &UserId,
        after: Option<&ConversationId>,
        limit: usize,
    ) -> Result<Vec<ConversationMeta>, StoreError> {
        let lo = match after {
            Some(a) => Bound::Excluded(owner_key(tenant, owner, a.as_str())),
            None => Bound::Included(owner_key(tenant, owner, "")),
        };
        let hi = format!("{tenant}\0{owner}\u{1}");
        let tenant = tenant.clone();
        self.db
            .read(move |txn| {
                let idx = txn.open_table(OWNER_INDEX).map_err(r)?;
                let lo_ref = lo.as_ref().map(String::as_str);
                let mut out = Vec::new();
                for item in idx
                    .range::<&str>((lo_ref, Bound::Excluded(hi.as_str())))
                    .map_err(r)?
                {
                    if out.len() >= limit {
                        break;
                    }
                    let (k, _) = item.map_err(r)?;
                    let Some(conv) = k.value().rsplit('\0').next().map(str::to_owned) else {
                        continue;
                    };
                    let conv = ConversationId::parse(conv)
                        .map_err(|e| DbError(format!("corrupt index: {e}")))?;
                    if let Some(m) = read_meta(txn, &key(&tenant, &conv))? {
                        out.push(m);
                    }
                }
                Ok(out)
            })
            .await
            .map_err(unavailable)
    }

    async fn count_conversations(
        &self,
        tenant: &TenantId,
        owner: &UserId,
    ) -> Result<u64, StoreError> {
        let lo = owner_key(tenant, owner, "");
        let hi = format!("{tenant}\0{owner}\u{1}");
        self.db
            .read(move |txn| {
                let t = txn.open_table(OWNER_INDEX).map_err(r)?;
                let mut n = 0u64;
                for row in t.range(lo.as_str()..hi.as_str()).map_err(r)? {
                    row.map_err(r)?;
                    n += 1;
                }
                Ok(n)
            })
            .await
            .map_err(unavailable)
    }

    async fn delete_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<bool, StoreError> {
        let k = key(tenant, id);
        self.db
            .write(move |txn| delete_in(txn, &k))
            .await
            .map_err(unavailable)
    }

    async fn append_message(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        message: &Message,
    ) -> Result<u64, StoreError> {
        let k = key(tenant, id);
        let message = message.clone();
        flat(self.db.write(move |txn| append_in(txn, &k, &message)).await)
    }

    async fn messages(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let k = key(tenant, id);
        self.db
            .read_now(move |txn| {
                let t = txn.open_table(MESSAGES).map_err(r)?;
                let range = t.range((k.as_str(), from_seq)..=(k.as_str(), u64::MAX));
                dec_range(range.map_err(r)?, limit)
            })
            .map_err(unavailable)
    }

    async fn summary(&self, tenant: &TenantId, id: &ConversationId) -> Result<Summary, StoreError> {
        let k = key(tenant, id);
        self.db
            .read_now(move |txn| {
                let t = txn.open_table(SUMMARY).map_err(r)?;
                match t.get(k.as_str()).map_err(r)? {
                    Some(v) => dec(v.value()),
                    None => Ok(Summary::default()),
                }
            })
            .map_err(unavailable)
    }

    async fn save_summary(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        summary: &Summary,
    ) -> Result<(), StoreError> {
        let k = key(tenant, id);
        let summary = summary.clone();
        flat(
            self.db
                .write(move |txn| {
                    if write_meta_get(txn, &k)?.is_none() {
                        return Ok(Err(StoreError::NotFound));
                    }
                    txn.open_table(SUMMARY)
                        .map_err(r)?
                        .insert(k.as_str(), enc(&summary)?.as_slice())
                        .map_err(r)?;
                    Ok(Ok(()))
                })
                .await,
        )
    }

    async fn enqueue_turn(&self, request: &TurnRequest) -> Result<Enqueued, StoreError> {
        let k = key(&request.tenant_id, &request.conversation_id);
        let request = request.clone();
        flat(
            self.db
                .write(move |txn| {
                    if write_meta_get(txn, &k)?.is_none() {
                        return Ok(Err(StoreError::NotFound));
                    }
                    let seen_key = format!("{k}\0{}", request.message_id);
                    let mut seen = txn.open_table(SEEN).map_err(r)?;
                    if seen.get(seen_key.as_str()).map_err(r)?.is_some() {
                        return Ok(Ok(Enqueued::Duplicate));
                    }
                    seen.insert(seen_key.as_str(), ()).map_err(r)?;
                    let mut pending = txn.open_table(PENDING).map_err(r)?;
                    let next = match pending
                        .range((k.as_str(), 0)..=(k.as_str(), u64::MAX))
                        .map_err(r)?
                        .next_back()
                    {
                        Some(item) => item.map_err(r)?.0.value().1 + 1,
                        None => 0,
                    };
                    pending
                        .insert((k.as_str(), next), enc(&request)?.as_slice())
                        .map_err(r)?;
                    Ok(Ok(Enqueued::New))
                })
                .await,
        )
    }

    async fn pending_turns(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Vec<TurnRequest>, StoreError> {
        let k = key(tenant, id);
        self.db
            .read_now(move |txn| {
                let t = txn.open_table(PENDING).map_err(r)?;
                let range = t.range((k.as_str(), 0)..=(k.as_str(), u64::MAX));
                dec_range(range.map_err(r)?, usize::MAX)
            })
            .map_err(unavailable)
    }

    async fn begin_turn(
        &self,
        checkpoint: &TurnCheckpoint,
        user_message: &Message,
        events: &[TurnEvent],
    ) -> Result<u64, StoreError> {
        let k = key(
            &checkpoint.request.tenant_id,
            &checkpoint.request.conversation_id,
        );
        let bytes = enc(checkpoint).map_err(unavailable)?;
        let fence = checkpoint.fence;
        let message = user_message.clone();
        let events = events.to_vec();
        let retention = self.event_retention;
        let k2 = k.clone();
        let (seq, written) = flat(
            self.db
                .write(move |txn| {
                    if !fence_ok(txn, &k, fence)? {
                        return Ok(Err(StoreError::Fenced));
                    }
                    let seq = match append_in(txn, &k, &message)? {
                        Ok(seq) => seq,
                        Err(e) => return Ok(Err(e)),
                    };
                    let written = checkpoint_in(txn, &k, &bytes, events, retention)?;
                    Ok(Ok((seq, written)))
                })
                .await,
        )?;
        self.notify(&k2, written);
        Ok(seq)
    }

    async fn save_checkpoint(
        &self,
        checkpoint: &TurnCheckpoint,
        events: &[TurnEvent],
    ) -> Result<(), StoreError> {
        let k = key(
            &checkpoint.request.tenant_id,
            &checkpoint.request.conversation_id,
        );
        let bytes = enc(checkpoint).map_err(unavailable)?;
        let fence = checkpoint.fence;
        let events = events.to_vec();
        let retention = self.event_retention;
        let k2 = k.clone();
        let written = flat(
            self.db
                .write(move |txn| {
                    if write_meta_get(txn, &k)?.is_none() {
                        return Ok(Err(StoreError::NotFound));
                    }
                    if !fence_ok(txn, &k, fence)? {
                        return Ok(Err(StoreError::Fenced));
                    }
                    Ok(Ok(checkpoint_in(txn, &k, &bytes, events, retention)?))
                })
                .await,
        )?;
        self.notify(&k2, written);
        Ok(())
    }

    async fn load_checkpoint(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<Option<TurnCheckpoint>, StoreError> {
        let k = key(tenant, id);
        self.db
            .read_now(move |txn| {
                let t = txn.open_table(CHECKPOINT).map_err(r)?;
                match t.get(k.as_str()).map_err(r)? {
                    Some(v) => Ok(Some(dec(v.value())?)),
                    None => Ok(None),
                }
            })
            .map_err(unavailable)
    }

    async fn finish_turn(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        turn: &TurnId,
        answer: Option<&Message>,
        event: &TurnEvent,
        fence: Option<u64>,
    ) -> Result<u64, StoreError> {
        let k = key(tenant, id);
        let turn = turn.clone();
        let answer = answer.cloned();
        let event = event.clone();
        let retention = self.event_retention;
        let k2 = k.clone();
        let event_id = flat(
            self.db
                .write(move |txn| {
                    if write_meta_get(txn, &k)?.is_none() {
                        return Ok(Err(StoreError::NotFound));
                    }
                    if !fence_ok(txn, &k, fence)? {
                        return Ok(Err(StoreError::Fenced));
                    }
                    let mut pending = txn.open_table(PENDING).map_err(r)?;
                    // Turns run in queue order, so the finished one is the head:
                    // O(1) in the queue length. Anything else is searched for.
                    let head = pending
                        .range((k.as_str(), 0)..=(k.as_str(), u64::MAX))
                        .map_err(r)?
                        .next()
                        .transpose()
                        .map_err(r)?
                        .map(|(key, v)| {
                            let seq = key.value().1;
                            let is_turn = serde_json::from_slice::<TurnRequest>(v.value())
                                .is_ok_and(|req| req.turn_id == turn);
                            (seq, is_turn)
                        });
                    let queued = match head {
                        Some((seq, true)) => {
                            pending.remove((k.as_str(), seq)).map_err(r)?;
                            true
                        }
                        Some((_, false)) => {
                            let mut found = false;
                            pending
                                .retain_in((k.as_str(), 0)..=(k.as_str(), u64::MAX), |_, v| {
                                    let this = serde_json::from_slice::<TurnRequest>(v)
                                        .is_ok_and(|req| req.turn_id == turn);
                                    found |= this;
                                    !this
                                })
                                .map_err(r)?;
                            found
                        }
                        None => false,
                    };
                    drop(pending);
                    // A turn no longer queued was finished already: nothing
                    // is written again (the same rule as the Redis store's).
                    if !queued {
                        return Ok(Ok(None));
                    }
                    if let Some(m) = &answer
                        && let Err(e) = append_in(txn, &k, m)?
                    {
                        return Ok(Err(e));
                    }
                    txn.open_table(CHECKPOINT)
                        .map_err(r)?
                        .remove(k.as_str())
                        .map_err(r)?;
                    Ok(Ok(Some(append_event_in(txn, &k, event, retention)?)))
                })
                .await,
        )?;
        let Some(event_id) = event_id else {
            return Ok(0);
        };
        let id = event_id.id;
        self.notify(&k2, vec![event_id]);
        Ok(id)
    }

    async fn active_conversations(&self) -> Result<Vec<(TenantId, ConversationId)>, StoreError> {
        self.db
            .read(|txn| {
                let mut keys = std::collections::BTreeSet::new();
                for item in txn.open_table(PENDING).map_err(r)?.iter().map_err(r)? {
                    keys.insert(item.map_err(r)?.0.value().0.to_owned());
                }
                for item in txn.open_table(CHECKPOINT).map_err(r)?.iter().map_err(r)? {
                    keys.insert(item.map_err(r)?.0.value().to_owned());
                }
                let mut out = Vec::new();
                for k in keys {
                    if let Some((t, c)) = k.split_once('\0')
                        && let (Ok(t), Ok(c)) = (TenantId::parse(t), ConversationId::parse(c))
                    {
                        out.push((t, c));
                    }
                }
                Ok(out)
            })
            .await
            .map_err(unavailable)
    }

    async fn purge_inactive(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<(TenantId, ConversationId)>, StoreError> {
        let stale: Vec<(String, TenantId, ConversationId)> = self
            .db
            .read(move |txn| {
                let mut out = Vec::new();
                for item in txn.open_table(META).map_err(r)?.iter().map_err(r)? {
                    let (k, v) = item.map_err(r)?;
                    let meta: ConversationMeta = dec(v.value())?;
                    if meta.updated_at < before {
                        out.push((k.value().to_owned(), meta.tenant_id, meta.id));
                    }
                }
                Ok(out)
            })
            .await
            .map_err(unavailable)?;
        let mut purged = Vec::new();
        for (k, tenant, id) in stale {
            // Re-check inside the write: the conversation may have been touched since.
            let deleted = self
                .db
                .write(move |txn| match write_meta_get(txn, &k)? {
                    Some(m) if m.updated_at < before => {
                        // A message accepted meanwhile (queued) or a turn in
                        // flight keeps the conversation.
                        let queued = txn
                            .open_table(PENDING)
                            .map_err(r)?
                            .range((k.as_str(), 0)..=(k.as_str(), u64::MAX))
                            .map_err(r)?
                            .next()
                            .is_some();
                        let running = txn
                            .open_table(CHECKPOINT)
                            .map_err(r)?
                            .get(k.as_str())
                            .map_err(r)?
                            .is_some();
                        if queued || running {
                            Ok(false)
                        } else {
                            delete_in(txn, &k)
                        }
                    }
                    _ => Ok(false),
                })
                .await
                .map_err(unavailable)?;
            if deleted {
                purged.push((tenant, id));
            }
        }
        Ok(purged)
    }

    async fn acquire_lease(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, StoreError> {
        self.acquire(key(tenant, id), owner.to_owned(), ttl).await
    }

    async fn renew_lease(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        owner: &str,
        token: u64,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.renew_or_release(key(tenant, id), owner.to_owned(), token, Some(ttl))
            .await
    }

    async fn release_lease(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        owner: &str,
        token: u64,
    ) -> Result<(), StoreError> {
        self.renew_or_release(key(tenant, id), owner.to_owned(), token, None)
            .await
            .map(|_| ())
    }

    async fn message_accepted(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        message_id: &MessageId,
    ) -> Result<bool, StoreError> {
        let seen_key = format!("{}\0{message_id}", key(tenant, id));
        self.db
            .read_now(move |txn| {
                let t = txn.open_table(SEEN).map_err(r)?;
                Ok(t.get(seen_key.as_str()).map_err(r)?.is_some())
            })
            .map_err(unavailable)
    }

    async fn relayed_until(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<u64, StoreError> {
        self.counter(RELAYED, tenant, id).await
    }

    async fn set_relayed_until(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        event_id: u64,
    ) -> Result<(), StoreError> {
        let k = key(tenant, id);
        self.db
            .write(move |txn| {
                let mut t = txn.open_table(RELAYED).map_err(r)?;
                let current = t.get(k.as_str()).map_err(r)?.map_or(0, |v| v.value());
                if event_id > current {
                    t.insert(k.as_str(), event_id).map_err(r)?;
                }
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    async fn event_done(&self, group: &str, event_id: &str) -> Result<bool, StoreError> {
        let k = done_key(group, event_id);
        self.db
            .read_now(move |txn| {
                let t = txn.open_table(DONE_EVENTS).map_err(r)?;
                let expires = t.get(k.as_str()).map_err(r)?.map(|v| v.value());
                Ok(expires.is_some_and(|e| i64::try_from(e).unwrap_or(i64::MAX) > now_ms()))
            })
            .map_err(unavailable)
    }

    async fn mark_event_done(
        &self,
        group: &str,
        event_id: &str,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        let k = done_key(group, event_id);
        self.db
            .write(move |txn| {
                let now = now_ms();
                let mut t = txn.open_table(DONE_EVENTS).map_err(r)?;
                let mut by_expiry = txn.open_table(DONE_EXPIRY).map_err(r)?;
                let expires = u64::try_from(now.saturating_add(ttl_ms(ttl))).unwrap_or(0);
                if let Some(old) = t.insert(k.as_str(), expires).map_err(r)? {
                    by_expiry.remove((old.value(), k.as_str())).map_err(r)?;
                }
                by_expiry.insert((expires, k.as_str()), ()).map_err(r)?;
                // Drop the oldest expired rows, whatever their consumer group.
                let now = u64::try_from(now).unwrap_or(0);
                let expired: Vec<(u64, String)> = by_expiry
                    .range((0, "")..(now.saturating_add(1), ""))
                    .map_err(r)?
                    .take(DONE_PRUNE_BATCH)
                    .filter_map(|e| e.ok())
                    .map(|(k, _)| {
                        let (at, key) = k.value();
                        (at, key.to_owned())
                    })
                    .collect();
                for (at, key) in expired {
                    by_expiry.remove((at, key.as_str())).map_err(r)?;
                    t.remove(key.as_str()).map_err(r)?;
                }
                Ok(())
            })
            .await
            .map_err(unavailable)
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ttl_ms(ttl: std::time::Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

fn done_key(group: &str, event_id: &str) -> String {
    format!("{group}\0{event_id}")
}

impl EmbeddedStore {
    /// Rows of the bus dedup table (all consumer groups); for tests and
    /// diagnostics of its pruning.
    pub async fn dedup_rows(&self) -> Result<u64, StoreError> {
        self.db
            .read(|txn| txn.open_table(DONE_EVENTS).map_err(r)?.len().map_err(r))
            .await
            .map_err(unavailable)
    }

    /// A per-conversation counter of `table` (0 when there is none).
    async fn counter(
        &self,
        table: TableDefinition<'static, &'static str, u64>,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<u64, StoreError> {
        let k = key(tenant, id);
        self.db
            .read_now(move |txn| {
                let t = txn.open_table(table).map_err(r)?;
                Ok(t.get(k.as_str()).map_err(r)?.map_or(0, |v| v.value()))
            })
            .map_err(unavailable)
    }

    pub(crate) async fn acquire(
        &self,
        k: String,
        owner: String,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, StoreError> {
        self.db
            .write(move |txn| {
                let mut row = lease_in(txn, &k)?;
                let now = now_ms();
                if row.owner != owner && row.expires_ms > now {
                    return Ok(None);
                }
                if row.owner != owner || row.expires_ms <= now {
                    row.token += 1;
                    row.owner = owner;
                }
                row.expires_ms = now.saturating_add(ttl_ms(ttl));
                put_lease(txn, &k, &row)?;
                Ok(Some(row.token))
            })
            .await
            .map_err(unavailable)
    }

    pub(crate) async fn renew_or_release(
        &self,
        k: String,
        owner: String,
        token: u64,
        ttl: Option<std::time::Duration>,
    ) -> Result<bool, StoreError> {
        self.db
            .write(move |txn| {
                let mut row = lease_in(txn, &k)?;
                let now = now_ms();
                if row.owner != owner || row.token != token || row.expires_ms <= now {
                    return Ok(false);
                }
                row.expires_ms = match ttl {
                    Some(ttl) => now.saturating_add(ttl_ms(ttl)),
                    None => 0,
                };
                put_lease(txn, &k, &row)?;
                Ok(true)
            })
            .await
            .map_err(unavailable)
    }
}

fn doc_key(tenant: &TenantId, document: &str) -> String {
    format!("{tenant}\0{document}")
}

#[async_trait]
impl DocumentStore for EmbeddedStore {
    async fn put_document(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
    ) -> Result<(), StoreError> {
        let k = doc_key(tenant, &record.document_id);
        let bytes = enc(record).map_err(unavailable)?;
        self.db
            .write(move |txn| {
                txn.open_table(DOCUMENTS)
                    .map_err(r)?
                    .insert(k.as_str(), bytes.as_slice())
                    .map_err(r)?;
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    async fn update_job(
        &self,
        tenant: &TenantId,
        record: &DocumentRecord,
    ) -> Result<bool, StoreError> {
        let k = doc_key(tenant, &record.document_id);
        let bytes = enc(record).map_err(unavailable)?;
        let job = record.job_id.clone();
        self.db
            .write(move |txn| {
                let mut t = txn.open_table(DOCUMENTS).map_err(r)?;
                let current: Option<DocumentRecord> = match t.get(k.as_str()).map_err(r)? {
                    Some(v) => Some(dec(v.value())?),
                    None => None,
                };
                if current.is_none_or(|c| c.job_id != job) {
                    return Ok(false);
                }
                t.insert(k.as_str(), bytes.as_slice()).map_err(r)?;
                Ok(true)
            })
            .await
            .map_err(unavailable)
    }

    async fn get_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<Option<DocumentRecord>, StoreError> {
        let k = doc_key(tenant, document_id);
        self.db
            .read_now(move |txn| {
                let t = txn.open_table(DOCUMENTS).map_err(r)?;
                let v = t.get(k.as_str()).map_err(r)?;
                v.map(|v| dec(v.value())).transpose()
            })
            .map_err(unavailable)
    }

    async fn list_documents(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        let lo = match after {
            Some(a) => Bound::Excluded(doc_key(tenant, a)),
            None => Bound::Included(doc_key(tenant, "")),
        };
        let hi = format!("{tenant}\u{1}");
        self.db
            .read(move |txn| {
                let t = txn.open_table(DOCUMENTS).map_err(r)?;
                let lo_ref = lo.as_ref().map(String::as_str);
                let range = t.range::<&str>((lo_ref, Bound::Excluded(hi.as_str())));
                dec_range(range.map_err(r)?, limit)
            })
            .await
            .map_err(unavailable)
    }

    async fn delete_document(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<bool, StoreError> {
        let k = doc_key(tenant, document_id);
        self.db
            .write(move |txn| {
                let mut t = txn.open_table(DOCUMENTS).map_err(r)?;
                let existed = t.remove(k.as_str()).map_err(r)?.is_some();
                Ok(existed)
            })
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl EventStream for EmbeddedStore {
    async fn append(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        event: &TurnEvent,
    ) -> Result<u64, StoreError> {
        let k = key(tenant, id);
        let event = event.clone();
        let retention = self.event_retention;
        let k2 = k.clone();
        let new_id = flat(
            self.db
                .write(move |txn| {
                    if write_meta_get(txn, &k)?.is_none() {
                        return Ok(Err(StoreError::NotFound));
                    }
                    Ok(Ok(append_event_in(txn, &k, event, retention)?))
                })
                .await,
        )?;
        let id = new_id.id;
        self.notify(&k2, vec![new_id]);
        Ok(id)
    }

    async fn read_after(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let k = key(tenant, id);
        self.db
            .read_now(move |txn| {
                let t = txn.open_table(EVENTS).map_err(r)?;
                if after == u64::MAX {
                    return Ok(Vec::new());
                }
                let range = t.range((k.as_str(), after + 1)..=(k.as_str(), u64::MAX));
                dec_range(range.map_err(r)?, limit)
            })
            .map_err(unavailable)
    }

    async fn last_event_id(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Result<u64, StoreError> {
        self.counter(EVENT_SEQ, tenant, id).await
    }

    fn subscribe(
        &self,
        tenant: TenantId,
        id: ConversationId,
        after: u64,
    ) -> BoxStream<'static, Result<StoredEvent, StoreError>> {
        let k = key(&tenant, &id);
        let rx = self.watch(&k);
        let waiter = LiveWaiter {
            rx: Some(rx),
            key: k,
            watchers: self.watchers.clone(),
        };
        follow(self.clone(), tenant, id, after, waiter)
    }
}

/// Waits on the in-process fan-out and hands over the events it carries.
struct LiveWaiter {
    rx: Option<broadcast::Receiver<StoredEvent>>,
    key: String,
    watchers: Arc<Mutex<HashMap<String, broadcast::Sender<StoredEvent>>>>,
}

impl Drop for LiveWaiter {
    /// The last subscriber of a conversation removes its fan-out channel, so idle
    /// conversations hold no buffers.
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if w.get(&self.key).is_some_and(|tx| tx.receiver_count() == 0) {
            w.remove(&self.key);
        }
    }
}

#[async_trait]
impl EventWaiter for LiveWaiter {
    async fn wait(&mut self, after: u64) -> Result<Vec<StoredEvent>, StoreError> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(StoreError::Unavailable("subscription closed".into()));
        };
        loop {
            match rx.recv().await {
                Ok(e) if e.id > after => {
                    let mut out = vec![e];
                    while let Ok(more) = rx.try_recv() {
                        out.push(more);
                    }
                    return Ok(out);
                }
                Ok(_) => continue,
                // Fell behind: the store has everything.
                Err(broadcast::error::RecvError::Lagged(_)) => return Ok(Vec::new()),
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(StoreError::Unavailable("store closed".into()));
                }
            }
        }
    }
}

#[async_trait]
impl RecordStore for EmbeddedStore {
    async fn write_records(&self, changes: Vec<RecordChange>) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.db
            .write(move |txn| {
                let mut t = txn.open_table(RECORDS).map_err(r)?;
                for c in &changes {
                    apply_record(&mut t, c)?;
                }
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    async fn replace_record(
        &self,
        change: RecordChange,
        expected: Option<&str>,
    ) -> Result<bool, StoreError> {
        let expected = expected.map(str::to_owned);
        self.db
            .write(move |txn| {
                let mut t = txn.open_table(RECORDS).map_err(r)?;
                let k = (change.collection.as_str(), change.key.as_str());
                let same = {
                    let cur = t.get(k).map_err(r)?;
                    cur.as_ref().map(|v| v.value()) == expected.as_deref().map(str::as_bytes)
                };
                if same {
                    apply_record(&mut t, &change)?;
                }
                Ok(same)
            })
            .await
            .map_err(unavailable)
    }

    async fn get_record(&self, collection: &str, key: &str) -> Result<Option<String>, StoreError> {
        let (collection, key) = (collection.to_owned(), key.to_owned());
        let v = self
            .db
            .read_now(move |txn| {
                let t = txn.open_table(RECORDS).map_err(r)?;
                let v = t.get((collection.as_str(), key.as_str())).map_err(r)?;
                Ok(v.map(|v| v.value().to_vec()))
            })
            .map_err(unavailable)?;
        v.map(|b| String::from_utf8(b).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn scan_records(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let (collection, prefix) = (collection.to_owned(), prefix.to_owned());
        let after = after.map(str::to_owned);
        self.db
            .read(move |txn| {
                let t = txn.open_table(RECORDS).map_err(r)?;
                let c = collection.as_str();
                let lo = match &after {
                    Some(a) if a.as_str() >= prefix.as_str() => Bound::Excluded((c, a.as_str())),
                    _ => Bound::Included((c, prefix.as_str())),
                };
                let mut out = Vec::new();
                for row in t.range::<(&str, &str)>((lo, Bound::Unbounded)).map_err(r)? {
                    if out.len() >= limit {
                        break;
                    }
                    let (k, v) = row.map_err(r)?;
                    let (kc, kk) = k.value();
                    if kc != c || !kk.starts_with(prefix.as_str()) {
                        break;
                    }
                    let text = String::from_utf8(v.value().to_vec())
                        .map_err(|e| DbError(format!("corrupt record: {e}")))?;
                    out.push((kk.to_owned(), text));
                }
                Ok(out)
            })
            .await
            .map_err(unavailable)
    }
}
