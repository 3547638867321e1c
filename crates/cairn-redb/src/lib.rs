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
//! Reads that may touch many pages open their read transaction on a blocking
//! thread ([`Db::read`]), so async workers never wait on a long read; point
//! lookups and small bounded ranges on the hot path run where they are called
//! ([`Db::read_now`]), because the hop would cost more than the read.
//!
//! After an I/O error (a full disk, most often) redb refuses every later read and
//! write until the database is closed and opened again. The writer thread does that
//! itself: it drops the failed handle, answers writes with an error while it waits,
//! and reopens the file (redb repairs it from its last commit) with a growing pause
//! between attempts, so the store serves again once the disk has room, without a
//! restart of the process.

use redb::{
    Database, ReadTransaction, ReadableDatabase, StorageError, TransactionError, WriteTransaction,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
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
/// A write: runs inside the batch's transaction and returns how to answer its caller,
/// or, given the reason there is no transaction, answers its caller with it and
/// returns `None`. It also returns `None` when it failed (its caller has the error).
type WriteOp = Box<dyn FnOnce(Result<&WriteTransaction, &DbError>) -> Option<Finish> + Send>;
/// Opens the database file again (tests open it through a failing backend).
type Opener = Box<dyn Fn() -> Result<Database, DbError> + Send>;

/// What the writer thread is asked to do.
enum Job {
    Write(WriteOp),
    /// A read failed: check whether the handle is still usable.
    Probe,
}

/// Page cache of a database opened with [`Db::open`].
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 1024;

/// First and longest pause between attempts to reopen a failed database.
const REOPEN_FIRST_PAUSE: Duration = Duration::from_millis(50);
const REOPEN_MAX_PAUSE: Duration = Duration::from_secs(2);

/// The handle in use; `None` while the writer thread reopens the file.
type Current = Arc<RwLock<Option<Arc<Database>>>>;

/// A redb database with a group-commit writer thread.
#[derive(Clone)]
pub struct Db {
    current: Current,
    // Dropping the last sender ends the writer thread.
    jobs: mpsc::Sender<Job>,
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
        let path: PathBuf = path.to_owned();
        Self::open_with(Box::new(move || {
            Database::builder()
                .set_cache_size(cache_bytes)
                .create(&path)
                .map_err(DbError::from_redb)
        }))
    }

    /// Opens the database with `opener`, which the writer thread calls again to
    /// reopen it after an I/O error.
    fn open_with(opener: Opener) -> Result<Db, DbError> {
        let current: Current = Arc::new(RwLock::new(Some(Arc::new(opener()?))));
        let (tx, rx) = mpsc::channel::<Job>(MAX_BATCH * 4);
        let writer = Writer {
            current: current.clone(),
            opener,
            jobs: rx,
            last_reopen: None,
        };
        std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| DbError(format!("cannot start writer thread: {e}")))?;
        Ok(Db { current, jobs: tx })
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
        let boxed: WriteOp = Box::new(move |txn| match txn.map_err(DbError::clone).and_then(op) {
            Ok(value) => Some(Box::new(move |committed: Result<(), DbError>| {
                let _ = tx.send(committed.map(|()| value));
            }) as Finish),
            Err(e) => {
                let _ = tx.send(Err(e));
                None
            }
        });
        self.jobs
            .send(Job::Write(boxed))
            .await
            .map_err(|_| DbError("writer thread stopped".into()))?;
        rx.await
            .map_err(|_| DbError("writer thread stopped before commit".into()))?
    }

    /// Queues `op` for the next batch without waiting for it (it is durable once
    /// that batch commits, unless the process dies first). Returns false when the
    /// queue is full or the writer stopped: the write was dropped.
    pub fn write_detached<F>(&self, op: F) -> bool
    where
        F: FnOnce(&WriteTransaction) -> Result<(), DbError> + Send + 'static,
    {
        let boxed: WriteOp = Box::new(move |txn| {
            txn.map_err(DbError::clone)
                .and_then(op)
                .ok()
                .map(|()| Box::new(|_| {}) as Finish)
        });
        self.jobs.try_send(Job::Write(boxed)).is_ok()
    }

    /// Runs `f` on a blocking thread with a read transaction: for reads that may
    /// touch many pages (listings, scans, counts).
    pub async fn read<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, DbError> + Send + 'static,
    {
        let db = self.handle()?;
        let result = tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(DbError::from_redb)?;
            f(&txn)
        })
        .await
        .map_err(|e| DbError(format!("read task failed: {e}")))?;
        self.probe_after(&result);
        result
    }

    /// Runs `f` with a read transaction on the calling thread: for reads of a few
    /// pages (a point lookup, a range bounded by a small limit) on the hot path.
    /// Such a read takes microseconds from the page cache, where a hop to the
    /// blocking pool and back costs two thread switches — more CPU than the read
    /// (moving the hot reads here cut the server's CPU per turn by a fifth to a
    /// third; BENCHMARKS.md, "Speed"). A page in neither redb's cache nor the
    /// OS's holds the caller for one disk read.
    pub fn read_now<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&ReadTransaction) -> Result<T, DbError>,
    {
        let db = self.handle()?;
        let result = db
            .begin_read()
            .map_err(DbError::from_redb)
            .and_then(|txn| f(&txn));
        self.probe_after(&result);
        result
    }

    /// The handle in use, or the error that it is being reopened.
    fn handle(&self) -> Result<Arc<Database>, DbError> {
        self.current
            .read()
            .map_err(|_| DbError("database handle lock poisoned".into()))?
            .clone()
            .ok_or_else(reopening)
    }

    fn probe_after<T>(&self, result: &Result<T, DbError>) {
        if result.is_err() {
            // Most read errors are I/O errors that left the handle unusable; the
            // writer checks, and reopens it if so. A full queue already has work
            // that will find out.
            let _ = self.jobs.try_send(Job::Probe);
        }
    }
}

fn reopening() -> DbError {
    DbError("the database is being reopened after an I/O error".into())
}

/// The writer thread's state.
struct Writer {
    current: Current,
    opener: Opener,
    jobs: mpsc::Receiver<Job>,
    /// When the database was last reopened, and the pause the next attempt then takes.
    last_reopen: Option<(Instant, Duration)>,
}

impl Writer {
    fn run(mut self) {
        while let Some(first) = self.jobs.blocking_recv() {
            let mut batch = Vec::new();
            let mut probe = false;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Write(op) => batch.push(op),
                    Job::Probe => probe = true,
                }
                if batch.len() < MAX_BATCH {
                    next = self.jobs.try_recv().ok();
                }
            }
            let Some(db) = self.handle() else { return };
            let failed = if batch.is_empty() {
                probe
            } else {
                commit_batch(&db, batch).is_err()
            };
            if failed && needs_reopen(&db) {
                drop(db);
                if !self.reopen() {
                    return;
                }
            }
        }
        tracing::debug!("redb writer stopped");
    }

    fn handle(&self) -> Option<Arc<Database>> {
        self.current.read().ok().and_then(|db| db.clone())
    }

    /// Drops the failed handle and opens the file again, answering writes that
    /// arrive meanwhile with an error. Returns false if every [`Db`] was dropped.
    fn reopen(&mut self) -> bool {
        if let Ok(mut current) = self.current.write() {
            *current = None;
        }
        tracing::warn!("the database failed with an I/O error; reopening it");
        let started = Instant::now();
        // A disk that is still full fails the reopened handle at once: keep pausing
        // longer instead of repairing the file in a tight loop.
        let mut pause = match self.last_reopen {
            Some((at, pause)) if at.elapsed() < REOPEN_MAX_PAUSE * 5 => {
                if !self.refuse_writes_for(pause) {
                    return false;
                }
                (pause * 2).min(REOPEN_MAX_PAUSE)
            }
            _ => REOPEN_FIRST_PAUSE,
        };
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            // Fails with "already open" until every read holding the old handle ends.
            match (self.opener)() {
                Ok(db) => {
                    if let Ok(mut current) = self.current.write() {
                        *current = Some(Arc::new(db));
                    }
                    self.last_reopen = Some((Instant::now(), pause));
                    tracing::info!(
                        attempts,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "the database is open again"
                    );
                    return true;
                }
                Err(e) if attempts == 1 || attempts.is_multiple_of(30) => {
                    tracing::warn!(error = %e, attempts, "cannot reopen the database yet")
                }
                Err(_) => {}
            }
            if !self.refuse_writes_for(pause) {
                return false;
            }
            pause = (pause * 2).min(REOPEN_MAX_PAUSE);
        }
    }

    /// Answers every write that arrives within `pause` with an error.
    fn refuse_writes_for(&mut self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        let err = reopening();
        while Instant::now() < until {
            match self.jobs.try_recv() {
                Ok(Job::Write(op)) => {
                    let _ = op(Err(&err));
                }
                Ok(Job::Probe) => {}
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }
}

/// Whether redb latched an I/O error: it then refuses every transaction until the
/// database is opened again.
fn needs_reopen(db: &Database) -> bool {
    matches!(
        db.begin_write(),
        Err(TransactionError::Storage(
            StorageError::PreviousIo | StorageError::Io(_)
        ))
    )
}

fn commit_batch(db: &Database, batch: Vec<WriteOp>) -> Result<(), DbError> {
    let txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            let err = DbError::from_redb(e);
            tracing::error!(error = %err, "cannot begin write transaction");
            for op in batch {
                let _ = op(Err(&err));
            }
            return Err(err);
        }
    };
    let mut finishes = Vec::with_capacity(batch.len());
    let mut ops = batch.into_iter();
    let mut failed = false;
    for op in ops.by_ref() {
        match op(Ok(&txn)) {
            Some(f) => finishes.push(f),
            None => {
                failed = true;
                break;
            }
        }
    }
    let outcome = if failed {
        let _ = txn.abort();
        Err(DbError(
            "another write in the same batch failed; nothing was written".into(),
        ))
    } else {
        txn.commit().map_err(DbError::from_redb)
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "write batch failed");
        for op in ops {
            let _ = op(Err(e));
        }
    }
    for f in finishes {
        f(outcome.clone());
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
    use std::sync::atomic::{AtomicBool, Ordering};

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

    /// Switches for a [`DiskBackend`]: writes fail with ENOSPC while `full` is set
    /// (a data dir on a full disk), reads with EIO while `unreadable` is.
    #[derive(Debug, Default)]
    struct Faults {
        full: AtomicBool,
        unreadable: AtomicBool,
    }

    /// A file backend that fails as its [`Faults`] say.
    #[derive(Debug)]
    struct DiskBackend {
        file: redb::backends::FileBackend,
        faults: Arc<Faults>,
    }

    impl DiskBackend {
        fn check(&self) -> Result<(), std::io::Error> {
            if self.faults.full.load(Ordering::SeqCst) {
                Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
            } else {
                Ok(())
            }
        }
    }

    /// A [`Db`] over `path` whose file fails as `faults` say, reopened the same way.
    fn faulty_db(path: &Path, faults: &Arc<Faults>) -> Db {
        let path = path.to_owned();
        let faults = faults.clone();
        Db::open_with(Box::new(move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| DbError(e.to_string()))?;
            let file = redb::backends::FileBackend::new(file).map_err(DbError::from_redb)?;
            Database::builder()
                .set_cache_size(0)
                .create_with_backend(DiskBackend {
                    file,
                    faults: faults.clone(),
                })
                .map_err(DbError::from_redb)
        }))
        .unwrap()
    }

    impl redb::StorageBackend for DiskBackend {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            if self.faults.unreadable.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(5)); // EIO
            }
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            self.check()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.check()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> Result<(), std::io::Error> {
            self.file.close()
        }
        fn try_lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.try_lock_range(start, end)
        }
        fn try_lock_shared_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.try_lock_shared_range(start, end)
        }
        fn lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.file.lock_range(start, end)
        }
        fn lock_shared_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.file.lock_shared_range(start, end)
        }
        fn unlock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.file.unlock_range(start, end)
        }
        fn query_lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.file.query_lock_range(start, end)
        }
    }

    async fn put(db: &Db, key: u64) -> Result<(), DbError> {
        db.write(move |txn| {
            let mut t = txn.open_table(T).map_err(DbError::from_redb)?;
            t.insert(key, key).map_err(DbError::from_redb)?;
            Ok(())
        })
        .await
    }

    async fn keys(db: &Db) -> Result<Vec<u64>, DbError> {
        db.read(|txn| {
            let t = txn.open_table(T).map_err(DbError::from_redb)?;
            let mut keys = Vec::new();
            for entry in t.iter().map_err(DbError::from_redb)? {
                keys.push(entry.map_err(DbError::from_redb)?.0.value());
            }
            Ok(keys)
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_full_disk_is_freed_the_database_serves_again_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let db = faulty_db(&dir.path().join("db.redb"), &faults);
        put(&db, 1).await.unwrap();

        faults.full.store(true, Ordering::SeqCst);
        let refused = put(&db, 2).await.unwrap_err();
        assert!(refused.0.contains("I/O error"), "{refused}");
        // While the disk stays full, every write is refused with an error (none hangs)
        // and nothing half-written becomes visible.
        for key in 3..6 {
            assert!(put(&db, key).await.is_err());
        }

        faults.full.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match put(&db, 10).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "still failing after the disk was freed: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        assert_eq!(keys(&db).await.unwrap(), vec![1, 10]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_read_in_place_gets_the_handle_reopened_too() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let db = faulty_db(&dir.path().join("db.redb"), &faults);
        put(&db, 7).await.unwrap();
        let count = |db: &Db| {
            db.read_now(|txn| {
                let t = txn.open_table(T).map_err(DbError::from_redb)?;
                t.len().map_err(DbError::from_redb)
            })
        };
        assert_eq!(count(&db).unwrap(), 1);
        faults.unreadable.store(true, Ordering::SeqCst);
        assert!(count(&db).is_err());
        faults.unreadable.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match count(&db) {
                Ok(n) => {
                    assert_eq!(n, 1);
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "reads still fail: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_read_alone_gets_the_handle_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let db = faulty_db(&dir.path().join("db.redb"), &faults);
        put(&db, 1).await.unwrap();
        faults.unreadable.store(true, Ordering::SeqCst);
        assert!(keys(&db).await.is_err());
        faults.unreadable.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match keys(&db).await {
                Ok(keys) => {
                    assert_eq!(keys, vec![1]);
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "reads still fail: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}
