//! One blocking `XREAD` per process for every follower of a Redis event stream.
//!
//! A follower (an SSE subscriber, `?wait=true`, MCP `ask`) waits for new events
//! of one conversation. Giving each a Redis connection of its own for `XREAD
//! BLOCK` lets one token open thousands of connections and exhaust Redis
//! `maxclients` for everyone. Instead, followers register the stream key with the
//! hub; one task holds one extra connection and blocks on all registered keys in
//! a single `XREAD`, then wakes the followers of the keys that moved (a `watch`
//! per key carries the newest event id seen). A follower that registers a key
//! the blocked `XREAD` does not cover interrupts it with `CLIENT UNBLOCK` from
//! the store's shared connection, so the next `XREAD` includes it.
//!
//! Followers never depend on the hub alone: each wait ends after at most
//! [`BLOCK_MS`], and the follower reads the store again (the hub only saves
//! round trips; it can never lose an event).

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Client};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Longest single block of the hub's `XREAD`, and of a follower's wait.
pub(crate) const BLOCK_MS: u64 = 5_000;
/// Stream keys per `XREAD` (followers beyond that are served by the store
/// re-read at the end of each wait; the per-process stream limit keeps the
/// count below it in practice).
const MAX_KEYS_PER_READ: usize = 10_000;

struct Watched {
    /// Newest event id seen on the key (by the hub or a registering follower).
    seen: watch::Sender<u64>,
    /// Followers holding a registration.
    refs: usize,
}

struct HubInner {
    client: Client,
    control: ConnectionManager,
    keys: Mutex<HashMap<String, Watched>>,
    /// A key was added while the hub was idle.
    added: Arc<Notify>,
    /// The Redis client id of the hub's connection while it blocks.
    blocked_id: Mutex<Option<i64>>,
}

impl HubInner {
    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The hub; cheap to clone. Its task starts with it and ends when the last
/// clone is dropped.
#[derive(Clone)]
pub(crate) struct XreadHub {
    inner: Arc<HubInner>,
}

/// A follower's interest in one key; dropping it unregisters.
pub(crate) struct Registration {
    inner: Arc<HubInner>,
    key: String,
    rx: watch::Receiver<u64>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut keys = self.inner.keys();
        if let Some(w) = keys.get_mut(&self.key) {
            w.refs = w.refs.saturating_sub(1);
            if w.refs == 0 {
                keys.remove(&self.key);
            }
        }
    }
}

impl Registration {
    /// Waits until an event newer than `after` may exist, or [`BLOCK_MS`].
    pub(crate) async fn wait(&mut self, after: u64) {
        let _ = tokio::time::timeout(
            Duration::from_millis(BLOCK_MS),
            self.rx.wait_for(|seen| *seen > after),
        )
        .await;
    }
}

impl XreadHub {
    /// A hub over `client` (for its own blocking connection) and `control`
    /// (the store's shared connection, for `CLIENT UNBLOCK`).
    pub(crate) fn start(client: Client, control: ConnectionManager) -> Self {
        let inner = Arc::new(HubInner {
            client,
            control,
            keys: Mutex::new(HashMap::new()),
            added: Arc::new(Notify::new()),
            blocked_id: Mutex::new(None),
        });
        tokio::spawn(run(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Registers interest in `key` from event id `after` on.
    pub(crate) async fn register(&self, key: String, after: u64) -> Registration {
        let (rx, new) = {
            let mut keys = self.inner.keys();
            match keys.get_mut(&key) {
                Some(w) => {
                    w.refs += 1;
                    w.seen.send_if_modified(|seen| {
                        let moved = after > *seen;
                        *seen = (*seen).max(after);
                        moved
                    });
                    (w.seen.subscribe(), false)
                }
                None => {
                    let (tx, rx) = watch::channel(after);
                    keys.insert(key.clone(), Watched { seen: tx, refs: 1 });
                    (rx, true)
                }
            }
        };
        if new {
            self.inner.added.notify_one();
            let blocked = *self
                .inner
                .blocked_id
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(id) = blocked {
                // The blocked XREAD does not cover the new key: interrupt it.
                let mut control = self.inner.control.clone();
                let _: Result<i64, _> = redis::cmd("CLIENT")
                    .arg("UNBLOCK")
                    .arg(id)
                    .query_async(&mut control)
                    .await;
            }
        }
        Registration {
            inner: self.inner.clone(),
            key,
            rx,
        }
    }
}

/// The hub's loop: block on every registered key, wake who moved.
async fn run(hub: Weak<HubInner>) {
    let mut conn: Option<(MultiplexedConnection, i64)> = None;
    let mut failures: u32 = 0;
    loop {
        let Some(inner) = hub.upgrade() else {
            return;
        };
        let streams: Vec<(String, u64)> = inner
            .keys()
            .iter()
            .take(MAX_KEYS_PER_READ)
            .map(|(k, w)| (k.clone(), *w.seen.borrow()))
            .collect();
        if streams.is_empty() {
            // Idle: wake on a registration, or now and then to notice the end.
            let added = inner.added.clone();
            drop(inner);
            let _ = tokio::time::timeout(Duration::from_secs(1), added.notified()).await;
            continue;
        }
        if conn.is_none() {
            match connect(&inner.client).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "event hub cannot connect to Redis; followers poll the store");
                    drop(inner);
                    tokio::time::sleep(backoff(failures)).await;
                    continue;
                }
            }
        }
        let Some((c, id)) = conn.as_mut() else {
            continue;
        };
        *inner.blocked_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(*id);
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("COUNT")
            .arg(64)
            .arg("STREAMS");
        for (k, _) in &streams {
            cmd.arg(k);
        }
        for (_, seen) in &streams {
            cmd.arg(format!("{seen}-1"));
        }
        let mut c = c.clone();
        drop(inner);
        let reply: Result<Option<StreamReadReply>, _> = cmd.query_async(&mut c).await;
        let Some(inner) = hub.upgrade() else {
            return;
        };
        *inner.blocked_id.lock().unwrap_or_else(|p| p.into_inner()) = None;
        match reply {
            Ok(reply) => {
                failures = 0;
                let keys = inner.keys();
                for stream in reply.map(|r| r.keys).unwrap_or_default() {
                    let newest = stream
                        .ids
                        .iter()
                        .filter_map(|e| e.id.split('-').next()?.parse::<u64>().ok())
                        .max();
                    if let (Some(newest), Some(w)) = (newest, keys.get(&stream.key)) {
                        w.seen.send_if_modified(|seen| {
                            let moved = newest > *seen;
                            *seen = (*seen).max(newest);
                            moved
                        });
                    }
                }
            }
            Err(e) => {
                failures += 1;
                conn = None;
                tracing::warn!(error = %e, "event hub XREAD failed; reconnecting");
                drop(inner);
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

async fn connect(client: &Client) -> Result<(MultiplexedConnection, i64), redis::RedisError> {
    let cfg = AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS + 5_000)));
    let mut c = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut c).await?;
    Ok((c, id))
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << failures.min(5))).min(Duration::from_secs(5))
}
