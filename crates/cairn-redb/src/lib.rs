//! A group-commit writer over [redb], shared by Cairn's embedded adapters (the
//! memory store and the event bus).
//!
//! redb makes a commit durable with an fsync, which costs a millisecond or more.
//! Committing every write on its own would cap a store at a few hundred writes a
//! second, so [`Db`] runs one writer thread that takes every write queued while the
//! previous commit was syncing, applies them in one transaction, commits once, and
//! only then answers each caller. A caller's write is durable when its future
//! resolves, and writes are applied in the order they were submitted.
//!
//! Reads open a read transaction on a blocking thread ([`Db::read`]), so async
//! workers never wait on the disk.

use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A storage failure from redb, with its message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DbError(pub String);

impl DbError {
    /// Wraps any redb error.
    pub fn from_redb(e: impl Into<redb::Error>) -> Self {
        DbError(e.into().to_string())
    }
}

/// Called once the batch a write belonged to has committed (or failed).
type Finish = Box<dyn FnOnce(Result<(), DbError>) + Send>;
/// A write: runs inside the batch's transaction and returns how to answer its caller.
type WriteOp = Box<dyn FnOnce(&WriteTransaction) -> Result<Finish, DbError> + Send>;

/// Page cache of a database opened with [`Db::open`].
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 1024;

/// A redb database with a group-commit writer thread.
#[derive(Clone)]
pub struct Db {
    db: Arc<Database>,
    // Dropping the last sender ends the writer thread.
    writes: mpsc::Sender<WriteOp>,
}

impl Db {
    /// Opens (or creates) the database file with redb's default page cache and
    /// starts its writer thread.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database file with a page cache of `cache_bytes`
    /// and starts its writer thread.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Db, DbError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DbError(format!("{}: {e}", dir.display())))?;
        }
        let db = Arc::new(
            Database::builder()
                .set_cache_size(cache_bytes)
                .create(path)
                .map_err(DbError::from_redb)?,
        );
        let (tx, rx) = mpsc::channel::<WriteOp>(MAX_BATCH * 4);
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer_loop(&writer_db, rx))
            .map_err(|e| DbError(format!("cannot start writer thread: {e}")))?;
        Ok(Db { db, writes: tx })
    }

    /// Applies `op` in the next batch and resolves once that batch is durable.
    /// `op` must not fail after writing part of its change: return an error only
    /// for storage failures (they abort the whole batch), and report logical
    /// outcomes (e.g. "already exists") in `T`.
    pub async fn write<T, F>(&self, op: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, DbError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let boxed: WriteOp = Box::new(move |txn| {
            let value = op(txn)?;
            Ok(Box::new(move |committed: Result<(), DbError>| {
                let _ = tx.send(committed.map(|()| value));
            }) as Finish)
        });
        self.writes
            .send(boxed)
            .await
            .map_err(|_| DbError("writer thread stopped".into()))?;
        rx.await
            .map_err(|_| DbError("writer thread stopped before commit".into()))?
    }

    /// Runs `f` on a blocking thread with a read transaction.
    pub async fn read<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, DbError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(DbError::from_redb)?;
            f(&txn)
        })
        .await
        .map_err(|e| DbError(format!("read task failed: {e}")))?
    }
}

fn writer_loop(db: &Database, mut rx: mpsc::Receiver<WriteOp>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        commit_batch(db, batch);
    }
    tracing::debug!("redb writer stopped");
}

fn commit_batch(db: &Database, batch: Vec<WriteOp>) {
    let txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            let err = DbError::from_redb(e);
            tracing::error!(error = %err, "cannot begin write transaction");
            for op in batch {
                // The op never ran; answer its caller through a no-op transaction-less path.
                drop(op);
            }
            return;
        }
    };
    let mut finishes = Vec::with_capacity(batch.len());
    let mut failed: Option<DbError> = None;
    for op in batch {
        if failed.is_some() {
            drop(op); // dropping the op drops its sender: the caller sees "writer stopped before commit"
            continue;
        }
        match op(&txn) {
            Ok(f) => finishes.push(f),
            Err(e) => failed = Some(e),
        }
    }
    let outcome = match failed {
        Some(e) => {
            let _ = txn.abort();
            Err(e)
        }
        None => txn.commit().map_err(DbError::from_redb),
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "write batch failed");
    }
    for f in finishes {
        f(outcome.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableTableMetadata, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_all_durable_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            let db = Db::open(&path).unwrap();
            let mut tasks = Vec::new();
            for i in 0..500u64 {
                let db = db.clone();
                tasks.push(tokio::spawn(async move {
                    db.write(move |txn| {
                        let mut t = txn.open_table(T).map_err(DbError::from_redb)?;
                        t.insert(i, i * 2).map_err(DbError::from_redb)?;
                        Ok(i)
                    })
                    .await
                }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        }
        // Give the writer thread time to release the file after the last sender dropped.
        let mut reopened = None;
        for _ in 0..100 {
            match Database::create(&path) {
                Ok(db) => {
                    reopened = Some(db);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        let db = reopened.expect("database reopens");
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 500);
        assert_eq!(t.get(7).unwrap().unwrap().value(), 14);
    }

    #[tokio::test]
    async fn a_failing_op_aborts_its_batch_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.redb")).unwrap();
        let r: Result<(), DbError> = db.write(|_| Err(DbError("boom".into()))).await;
        assert!(r.is_err());
        let n = db
            .read(|txn| match txn.open_table(T) {
                Ok(t) => t.len().map_err(DbError::from_redb),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(DbError::from_redb(e)),
            })
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
}
