//! The alert pipeline on tokio's paused clock, against both stores: grouping,
//! `group_wait` / `group_interval` / `repeat_interval`, resolved notifications,
//! silences (including the resolved notification owed to a receiver that was
//! paged before the silence), inhibition, tenant isolation, and state that
//! survives a restart (no repeat page, unsent notifications resent).
//!
//! The store runs on its own real-time runtime, called through
//! `spawn_blocking`, so that waiting for it never lets the paused clock jump.
//! Redis needs `CAIRN_TEST_REDIS_URL` (set by `scripts/test.sh`).

#![allow(clippy::unwrap_used, missing_docs)]

use async_trait::async_trait;
use cairn_alerts::actor::AlertPipeline;
use cairn_alerts::notify::{Channel, Channels, SendError};
use cairn_alerts::records::{AlertLog, DeliveryStatus, NotificationRecord, Silence};
use cairn_alerts::{AlertDeps, Clock, Settings};
use cairn_core::alerts::{Alert, AlertSource, Matcher};
use cairn_core::alerts_config::AlertsConfig;
use cairn_core::ports::{RecordChange, RecordStore, StoreError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A store living on a real-time runtime; each call blocks a blocking-pool
/// thread, which keeps the paused clock from auto-advancing meanwhile.
struct OnOwnRuntime {
    inner: Arc<dyn RecordStore>,
    rt: tokio::runtime::Handle,
}

impl OnOwnRuntime {
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<dyn RecordStore>) -> futures::future::BoxFuture<'static, T> + Send + 'static,
    ) -> impl std::future::Future<Output = T> {
        let (inner, rt) = (self.inner.clone(), self.rt.clone());
        async move {
            tokio::task::spawn_blocking(move || rt.block_on(f(inner)))
                .await
                .unwrap()
        }
    }
}

#[async_trait]
impl RecordStore for OnOwnRuntime {
    async fn write_records(&self, changes: Vec<RecordChange>) -> Result<(), StoreError> {
        self.call(move |s| Box::pin(async move { s.write_records(changes).await }))
            .await
    }
    async fn replace_record(
        &self,
        change: RecordChange,
        expected: Option<&str>,
    ) -> Result<bool, StoreError> {
        let expected = expected.map(str::to_owned);
        self.call(move |s| {
            Box::pin(async move { s.replace_record(change, expected.as_deref()).await })
        })
        .await
    }
    async fn get_record(&self, c: &str, k: &str) -> Result<Option<String>, StoreError> {
        let (c, k) = (c.to_owned(), k.to_owned());
        self.call(move |s| Box::pin(async move { s.get_record(&c, &k).await }))
            .await
    }
    async fn scan_records(
        &self,
        c: &str,
        p: &str,
        a: Option<&str>,
        l: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let (c, p, a) = (c.to_owned(), p.to_owned(), a.map(str::to_owned));
        self.call(move |s| Box::pin(async move { s.scan_records(&c, &p, a.as_deref(), l).await }))
            .await
    }
}

/// The real-time runtime and the stores made on it.
struct Backend {
    rt: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Embedded,
    Redis,
}

async fn backend(kind: Kind) -> (Backend, Arc<dyn RecordStore>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.redb");
    let (rt, inner) = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let inner: Arc<dyn RecordStore> = rt.block_on(async move {
            match kind {
                Kind::Embedded => Arc::new(
                    cairn_store::EmbeddedStore::open_and_init_with_cache(&path, 50, 8 << 20)
                        .await
                        .unwrap(),
                ) as Arc<dyn RecordStore>,
                Kind::Redis => {
                    let url = std::env::var("CAIRN_TEST_REDIS_URL").expect(
                        "CAIRN_TEST_REDIS_URL is not set: run the tests with scripts/test.sh, which starts redis-server",
                    );
                    let prefix = format!("test-{}", uuid::Uuid::new_v4());
                    Arc::new(cairn_store::RedisStore::connect(&url, &prefix, 50).await.unwrap())
                }
            }
        });
        (rt, inner)
    })
    .await
    .unwrap();
    let handle = rt.handle().clone();
    (
        Backend {
            rt: Some(rt),
            _dir: dir,
        },
        Arc::new(OnOwnRuntime { inner, rt: handle }),
    )
}

/// A receiver that records what it is sent; `fail` makes the next sends fail.
struct Recording {
    tx: mpsc::UnboundedSender<NotificationRecord>,
    fail: Mutex<Vec<SendError>>,
}

#[async_trait]
impl Channel for Recording {
    async fn send(&self, n: &NotificationRecord) -> Result<(), SendError> {
        let next = self.fail.lock().unwrap().pop();
        if let Some(e) = next {
            return Err(e);
        }
        self.tx.send(n.clone()).unwrap();
        Ok(())
    }
}

const CONFIG: &str = r#"
receiver = "ops"
group_by = ["alertname"]
group_wait = "30s"
group_interval = "5m"
repeat_interval = "4h"
[[receivers]]
name = "ops"
all_tenants = true
webhook = { url = "http://ops.invalid/hook" }
[[receivers]]
name = "acme-team"
tenant = "acme"
webhook = { url = "http://acme.invalid/hook" }
[[routes]]
matchers = ['team="acme"']
receiver = "acme-team"
[[inhibit_rules]]
source_matchers = ['severity="critical"']
target_matchers = ['severity="warning"']
equal = ["service"]
"#;

struct Harness {
    pipeline: AlertPipeline,
    rx: mpsc::UnboundedReceiver<NotificationRecord>,
    rx_by: std::collections::HashMap<String, mpsc::UnboundedReceiver<NotificationRecord>>,
    store: Arc<dyn RecordStore>,
    fails: Arc<Recording>,
}

async fn start(store: Arc<dyn RecordStore>) -> Harness {
    start_with(store, |_| {}).await
}

async fn start_with(
    store: Arc<dyn RecordStore>,
    change: impl FnOnce(&mut AlertsConfig),
) -> Harness {
    let mut config: AlertsConfig = toml::from_str(CONFIG).unwrap();
    change(&mut config);
    config.validate().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (tx2, rx2) = mpsc::unbounded_channel();
    let ops = Arc::new(Recording {
        tx,
        fail: Mutex::new(Vec::new()),
    });
    let mut channels: Channels = Channels::new();
    channels.insert("ops".into(), ops.clone());
    channels.insert(
        "acme-team".into(),
        Arc::new(Recording {
            tx: tx2,
            fail: Mutex::new(Vec::new()),
        }),
    );
    let deps = AlertDeps {
        store: store.clone(),
        events: None,
        channels: Arc::new(channels),
        settings: Arc::new(Settings::new(&config)),
        delivery: config.delivery.clone(),
        clock: Clock::new(),
        notification_retention: config.notification_retention,
    };
    let pipeline = AlertPipeline::start(deps, true).await.unwrap();
    Harness {
        pipeline,
        rx,
        rx_by: [("acme-team".to_owned(), rx2)].into(),
        store,
        fails: ops,
    }
}

/// Lets actors, spawned tasks and the store's thread run, without moving the clock.
async fn quiet(steps: usize) {
    for _ in 0..steps {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<NotificationRecord>) -> NotificationRecord {
    for _ in 0..5000 {
        if let Ok(n) = rx.try_recv() {
            return n;
        }
        quiet(1).await;
    }
    panic!("no notification arrived");
}

async fn none(rx: &mut mpsc::UnboundedReceiver<NotificationRecord>) {
    quiet(150).await;
    if let Ok(n) = rx.try_recv() {
        panic!(
            "unexpected notification: {} {:?}",
            n.message.status,
            n.message.alerts.len()
        );
    }
}

fn alert(name: &str, instance: &str) -> Alert {
    Alert::firing(name, "acme", "warning", AlertSource::Rule).label("instance", instance)
}

fn resolved(mut a: Alert) -> Alert {
    a.ends_at = Some(chrono::Utc::now() - chrono::Duration::days(365));
    a.starts_at = a.ends_at.unwrap() - chrono::Duration::seconds(1);
    a
}

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
    quiet(20).await;
}

fn names(n: &NotificationRecord) -> Vec<(String, String)> {
    n.message
        .alerts
        .iter()
        .map(|a| {
            (
                a.alert.labels["instance"].clone(),
                a.status_at(n.created_at).to_owned(),
            )
        })
        .collect()
}

async fn grouping_and_timing(kind: Kind) {
    let (_b, store) = backend(kind).await;
    let mut h = start(store).await;
    h.pipeline.raise(vec![alert("Disk", "a")]).await.unwrap();
    advance(Duration::from_secs(29)).await;
    none(&mut h.rx).await;
    advance(Duration::from_secs(1)).await;
    let first = next(&mut h.rx).await;
    assert_eq!(first.message.status, "firing");
    assert_eq!(names(&first), [("a".into(), "firing".into())]);
    assert_eq!(first.message.group_labels["alertname"], "Disk");
    assert_eq!(first.message.group_labels["tenant"], "acme");
    // A second alert joins: notified at the next group_interval, not before.
    advance(Duration::from_secs(60)).await;
    h.pipeline.raise(vec![alert("Disk", "b")]).await.unwrap();
    // Re-raising a known alert changes nothing.
    h.pipeline.raise(vec![alert("Disk", "a")]).await.unwrap();
    advance(Duration::from_secs(200)).await;
    none(&mut h.rx).await;
    advance(Duration::from_secs(40)).await;
    let second = next(&mut h.rx).await;
    assert_eq!(names(&second).len(), 2);
    // Nothing new: silence until repeat_interval (4h after the last notification).
    for _ in 0..47 {
        advance(Duration::from_secs(300)).await;
    }
    none(&mut h.rx).await;
    advance(Duration::from_secs(300)).await;
    let repeat = next(&mut h.rx).await;
    assert_eq!(names(&repeat).len(), 2);
    assert_ne!(repeat.id, second.id, "each notification has its own id");
    // One resolves: the receiver hears it at the next interval.
    h.pipeline
        .raise(vec![resolved(alert("Disk", "a"))])
        .await
        .unwrap();
    advance(Duration::from_secs(300)).await;
    let partly = next(&mut h.rx).await;
    assert_eq!(partly.message.status, "firing");
    assert_eq!(
        names(&partly),
        [
            ("b".into(), "firing".into()),
            ("a".into(), "resolved".into())
        ]
    );
    h.pipeline
        .raise(vec![resolved(alert("Disk", "b"))])
        .await
        .unwrap();
    advance(Duration::from_secs(300)).await;
    let done = next(&mut h.rx).await;
    assert_eq!(done.message.status, "resolved");
    assert_eq!(names(&done), [("b".into(), "resolved".into())]);
    assert_eq!(
        h.pipeline.status().await.groups,
        0,
        "an empty group is removed"
    );
    advance(Duration::from_secs(3600)).await;
    none(&mut h.rx).await;
    // The log holds every notification, sent.
    quiet(50).await;
    let log = AlertLog::new(h.store.clone());
    let entries = log.notifications(Some("acme"), 100).await.unwrap();
    assert_eq!(entries.len(), 5);
    assert!(
        entries
            .iter()
            .all(|e| e.status == DeliveryStatus::Sent && e.attempts == 1)
    );
    assert_eq!(entries[0].id, done.id, "newest first");
    h.pipeline.stop();
}

async fn silences_and_inhibition(kind: Kind) {
    let (_b, store) = backend(kind).await;
    let mut h = start(store).await;
    let log = AlertLog::new(h.store.clone());
    h.pipeline.raise(vec![alert("Cpu", "a")]).await.unwrap();
    advance(Duration::from_secs(30)).await;
    assert_eq!(
        names(&next(&mut h.rx).await),
        [("a".into(), "firing".into())]
    );
    // Silence it (and anything else named Cpu) after the page.
    let now = chrono::Utc::now();
    log.put_silence(&Silence {
        id: uuid::Uuid::now_v7().to_string(),
        tenant: "acme".into(),
        matchers: vec![Matcher::parse("alertname=\"Cpu\"").unwrap()],
        starts_at: now - chrono::Duration::days(400),
        ends_at: now + chrono::Duration::days(400),
        created_by: "oncall".into(),
        comment: "maintenance".into(),
        updated_at: now,
    })
    .await
    .unwrap();
    // A new silenced alert joins: no notification for it.
    h.pipeline.raise(vec![alert("Cpu", "b")]).await.unwrap();
    advance(Duration::from_secs(300)).await;
    none(&mut h.rx).await;
    // The paged alert resolves while silenced: the receiver still hears it.
    h.pipeline
        .raise(vec![resolved(alert("Cpu", "a"))])
        .await
        .unwrap();
    advance(Duration::from_secs(300)).await;
    let r = next(&mut h.rx).await;
    assert_eq!(r.message.status, "resolved");
    assert_eq!(names(&r), [("a".into(), "resolved".into())]);
    // Inhibition: a critical alert of the same service mutes warnings.
    let crit = Alert::firing("Down", "acme", "critical", AlertSource::Rule)
        .label("service", "db")
        .label("instance", "x");
    let warn = Alert::firing("Slow", "acme", "warning", AlertSource::Rule)
        .label("service", "db")
        .label("instance", "y");
    let other = Alert::firing("Slow", "acme", "warning", AlertSource::Rule)
        .label("service", "web")
        .label("instance", "z");
    h.pipeline.raise(vec![crit, warn, other]).await.unwrap();
    advance(Duration::from_secs(30)).await;
    let mut got = [next(&mut h.rx).await, next(&mut h.rx).await];
    got.sort_by_key(|n| n.message.group_labels["alertname"].clone());
    assert_eq!(got[0].message.group_labels["alertname"], "Down");
    assert_eq!(
        names(&got[1]),
        [("z".into(), "firing".into())],
        "db's warning is inhibited"
    );
    none(&mut h.rx).await;
    h.pipeline.stop();
}

async fn tenants_stay_apart(kind: Kind) {
    let (_b, store) = backend(kind).await;
    let mut h = start(store).await;
    // Both alerts carry team="acme", but only acme's reaches acme's receiver:
    // the other tenant's goes nowhere on that route.
    let mine = alert("Quota", "1").label("team", "acme");
    let theirs = Alert::firing("Quota", "globex", "warning", AlertSource::Rule)
        .label("instance", "2")
        .label("team", "acme");
    h.pipeline.raise(vec![mine, theirs]).await.unwrap();
    advance(Duration::from_secs(30)).await;
    let acme = h.rx_by.get_mut("acme-team").unwrap();
    let n = next(acme).await;
    assert_eq!(n.tenant, "acme");
    assert!(n.message.alerts.iter().all(|a| a.alert.tenant() == "acme"));
    none(acme).await;
    none(&mut h.rx).await;
    let log = AlertLog::new(h.store.clone());
    let globex = log.alerts(Some("globex"), None, &[], 10).await.unwrap();
    assert_eq!(globex.len(), 1);
    let acme_alerts = log.alerts(Some("acme"), None, &[], 10).await.unwrap();
    assert_eq!(acme_alerts.len(), 1);
    assert_eq!(acme_alerts[0].alert.tenant(), "acme");
    h.pipeline.stop();
}

async fn state_survives_a_restart(kind: Kind) {
    let (_b, store) = backend(kind).await;
    let mut h = start(store.clone()).await;
    h.pipeline.raise(vec![alert("Mem", "a")]).await.unwrap();
    advance(Duration::from_secs(30)).await;
    let first = next(&mut h.rx).await;
    h.pipeline.stop();
    quiet(20).await;
    // A new process: the firing group is known, so its next evaluation does
    // not page again (that waits for repeat_interval).
    let mut h = start(store.clone()).await;
    advance(Duration::from_secs(600)).await;
    none(&mut h.rx).await;
    // A notification whose sends keep failing stays in the outbox; the next
    // process sends it, with the same id.
    for _ in 0..10 {
        h.fails.fail.lock().unwrap().push(SendError::Retry {
            reason: "HTTP 503".into(),
            after: None,
        });
    }
    h.pipeline.raise(vec![alert("Mem", "b")]).await.unwrap();
    advance(Duration::from_secs(300)).await;
    quiet(50).await;
    let log = AlertLog::new(store.clone());
    let pending = log.notifications(Some("acme"), 10).await.unwrap();
    let retrying = pending
        .iter()
        .find(|n| n.status == DeliveryStatus::Retrying)
        .expect("a retrying entry");
    assert_eq!(retrying.last_error.as_deref(), Some("HTTP 503"));
    h.pipeline.stop();
    quiet(20).await;
    let mut h = start(store.clone()).await;
    let resent = next(&mut h.rx).await;
    assert_eq!(resent.id, retrying.id);
    assert_eq!(names(&resent).len(), 2);
    assert_ne!(resent.id, first.id);
    quiet(50).await;
    let after = log.notifications(Some("acme"), 10).await.unwrap();
    let entry = after.iter().find(|n| n.id == retrying.id).unwrap();
    assert_eq!(entry.status, DeliveryStatus::Sent);
    h.pipeline.stop();
}

async fn failures_page_the_fallback_receiver(kind: Kind) {
    let (_b, store) = backend(kind).await;
    let mut h = start_with(store, |c| {
        c.delivery.fallback_receiver = Some("acme-team".into());
        c.delivery.max_attempts = 2;
    })
    .await;
    h.fails.fail.lock().unwrap().push(SendError::Permanent {
        reason: "HTTP 404".into(),
    });
    h.pipeline.raise(vec![alert("Net", "a")]).await.unwrap();
    advance(Duration::from_secs(30)).await;
    quiet(50).await;
    // The failure is recorded and pages the fallback (after its own group_wait).
    advance(Duration::from_secs(30)).await;
    let fallback = h.rx_by.get_mut("acme-team").unwrap();
    let page = next(fallback).await;
    assert_eq!(page.message.group_labels["alertname"], "NotificationFailed");
    let a = &page.message.alerts[0].alert;
    assert_eq!(a.labels["receiver"], "ops");
    assert_eq!(a.annotations["description"], "HTTP 404");
    let log = AlertLog::new(h.store.clone());
    let entries = log.notifications(Some("acme"), 10).await.unwrap();
    let failed = entries.iter().find(|n| n.receiver == "ops").unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(failed.attempts, 1, "a permanent error is not retried");
    // The next notification to ops goes through (a new alert joins): the
    // NotificationFailed alert resolves, and the fallback hears it.
    h.pipeline.raise(vec![alert("Net", "b")]).await.unwrap();
    advance(Duration::from_secs(300)).await;
    let sent = next(&mut h.rx).await;
    assert_eq!(names(&sent).len(), 2);
    advance(Duration::from_secs(300)).await;
    let fallback = h.rx_by.get_mut("acme-team").unwrap();
    let resolved = next(fallback).await;
    assert_eq!(resolved.message.status, "resolved");
    h.pipeline.stop();
}

macro_rules! both {
    ($($name:ident),*) => {
        mod embedded {
            $(#[tokio::test(start_paused = true)]
            async fn $name() { super::$name(super::Kind::Embedded).await })*
        }
        mod redis {
            $(#[tokio::test(start_paused = true)]
            async fn $name() { super::$name(super::Kind::Redis).await })*
        }
    };
}

both!(
    grouping_and_timing,
    silences_and_inhibition,
    tenants_stay_apart,
    state_survives_a_restart,
    failures_page_the_fallback_receiver
);
