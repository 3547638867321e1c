//! The AlertActor: owns the [`Engine`], feeds it alerts and the clock, writes
//! every change to the [`RecordStore`] (batched: one write in flight, the next
//! one carries everything that changed meanwhile), and hands a notification to
//! its receiver only once the notification and its group's new state are
//! stored. Notifications not yet sent live in the outbox, so a process killed
//! before sending sends them after the restart, with the same id.
//!
//! A small supervisor actor restarts the AlertActor if it fails; the new one
//! reloads the stored state. [`AlertPipeline`] is the handle the bus bridge and
//! the API use.

use crate::engine::{ConversationNotice, Engine, Refused, Settings};
use crate::notify::{Channels, deliver};
use crate::records::{
    ALERTS, AlertState, DeliveryStatus, GROUPS, GroupState, NOTIFICATIONS, NotificationRecord,
    OUTBOX, SILENCES, Silence, scan_all,
};
use cairn_core::TurnEvent;
use cairn_core::alerts::{Alert, AlertSource};
use cairn_core::alerts_config::DeliveryConfig;
use cairn_core::ids::{ConversationId, TenantId, TurnId};
use cairn_core::ports::{EventStream, RecordChange, RecordStore};
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Wall-clock time that follows tokio's clock (so tests can pause and advance it).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_utc: DateTime<Utc>,
    base: tokio::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// Starts now.
    pub fn new() -> Self {
        Self {
            base_utc: Utc::now(),
            base: tokio::time::Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.base);
        self.base_utc + chrono::Duration::from_std(elapsed).unwrap_or_default()
    }

    /// The tokio instant of `t`.
    pub fn instant(&self, t: DateTime<Utc>) -> tokio::time::Instant {
        let d = (t - self.base_utc).to_std().unwrap_or(Duration::ZERO);
        self.base + d
    }
}

/// What the pipeline needs.
#[derive(Clone)]
pub struct AlertDeps {
    /// Where state lives.
    pub store: Arc<dyn RecordStore>,
    /// Conversation streams, for `alert.firing` / `alert.resolved` of escalations.
    pub events: Option<Arc<dyn EventStream>>,
    /// The receivers.
    pub channels: Arc<Channels>,
    /// The compiled configuration.
    pub settings: Arc<Settings>,
    /// Retries.
    pub delivery: DeliveryConfig,
    /// The clock.
    pub clock: Clock,
    /// How long notification log entries are kept.
    pub notification_retention: Duration,
}

/// A snapshot for health checks and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PipelineStatus {
    /// True when this replica runs the pipeline.
    pub active: bool,
    /// Alerts held.
    pub alerts: usize,
    /// Groups held.
    pub groups: usize,
    /// Notifications being delivered.
    pub in_flight: usize,
}

/// Messages of the AlertActor.
pub enum AlertMsg {
    /// Take these alerts; the reply comes once they are stored.
    Raise(Vec<Alert>, RpcReplyPort<Result<(), Refused>>),
    /// Groups may be due.
    Tick,
    /// A store write finished.
    Written(Result<(), String>, Vec<RecordChange>, Vec<After>),
    /// Retry a failed store write.
    RetryWrite,
    /// A delivery changed status.
    Delivered(NotificationRecord),
    /// Housekeeping: drop old alerts and log entries.
    Maintain,
    /// Start (true) or stop (false) running the pipeline on this replica.
    Activate(bool),
    /// Report the status.
    Status(RpcReplyPort<PipelineStatus>),
}

/// What to do once a write is stored.
pub enum After {
    /// Answer a raise.
    Reply(RpcReplyPort<Result<(), Refused>>),
    /// Send a notification.
    Send(Box<NotificationRecord>),
}

/// The AlertActor.
pub struct AlertActor;

/// Its state.
pub struct AlertActorState {
    deps: AlertDeps,
    engine: Option<Engine>,
    writing: bool,
    retry: Vec<RecordChange>,
    pending: Vec<RecordChange>,
    waiters: Vec<After>,
    armed: Option<DateTime<Utc>>,
    in_flight: HashMap<String, NotificationRecord>,
    silences_read: Option<tokio::time::Instant>,
    last_log_sweep: Option<tokio::time::Instant>,
    /// Set when the pipeline was handed over: raises are refused (not taken)
    /// until this replica is made active again.
    standby: bool,
}

/// How often stored silences are re-read (they change through the API on any replica).
const SILENCE_REFRESH: Duration = Duration::from_secs(1);
/// How often alerts past their retention are dropped.
const MAINTAIN_EVERY: Duration = Duration::from_secs(60);
/// How often the notification log is swept.
const LOG_SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// The name of the alert raised when a notification fails for good.
pub const NOTIFICATION_FAILED: &str = "NotificationFailed";

async fn load(deps: &AlertDeps) -> Result<(Engine, Vec<NotificationRecord>), String> {
    let store = deps.store.as_ref();
    let cap = deps.settings.max_active.saturating_mul(2).max(1000);
    let alerts: Vec<AlertState> = scan_all(store, ALERTS, "", cap)
        .await
        .map_err(|e| e.to_string())?;
    let groups: Vec<GroupState> = scan_all(store, GROUPS, "", cap)
        .await
        .map_err(|e| e.to_string())?;
    let silences: Vec<Silence> = scan_all(store, SILENCES, "", 100_000)
        .await
        .map_err(|e| e.to_string())?;
    let outbox: Vec<String> = scan_all(store, OUTBOX, "", 1_000_000)
        .await
        .map_err(|e| e.to_string())?;
    let mut unsent = Vec::new();
    for key in outbox {
        if let Some(text) = store
            .get_record(NOTIFICATIONS, &key)
            .await
            .map_err(|e| e.to_string())?
            && let Ok(n) = serde_json::from_str::<NotificationRecord>(&text)
            && !n.status.is_final()
        {
            unsent.push(n);
        }
    }
    let mut engine = Engine::new(deps.settings.clone());
    let (na, ng) = (alerts.len(), groups.len());
    engine.load(alerts, groups, silences);
    tracing::info!(
        alerts = na,
        groups = ng,
        unsent = unsent.len(),
        "alert pipeline state loaded"
    );
    Ok((engine, unsent))
}

impl AlertActor {
    async fn activate(
        &self,
        myself: &ActorRef<AlertMsg>,
        st: &mut AlertActorState,
    ) -> Result<(), ActorProcessingErr> {
        if st.engine.is_some() {
            return Ok(());
        }
        let (engine, unsent) = load(&st.deps).await?;
        st.engine = Some(engine);
        st.silences_read = Some(tokio::time::Instant::now());
        for n in unsent {
            tracing::info!(notification = %n.id, receiver = %n.receiver, "resending a notification recorded before a restart");
            self.send(myself, st, n);
        }
        Ok(())
    }

    fn send(&self, myself: &ActorRef<AlertMsg>, st: &mut AlertActorState, n: NotificationRecord) {
        let Some(channel) = st.deps.channels.get(&n.receiver).cloned() else {
            let mut n = n;
            n.status = DeliveryStatus::Failed;
            n.last_error = Some("the receiver is no longer configured".into());
            n.updated_at = st.deps.clock.now();
            st.pending.extend(n.changes());
            return;
        };
        st.in_flight.insert(n.id.clone(), n.clone());
        let me = myself.clone();
        let policy = st.deps.delivery.clone();
        tokio::spawn(deliver(channel, n, policy, move |r| {
            let _ = me.send_message(AlertMsg::Delivered(r));
        }));
    }

    /// Starts a write of everything changed, unless one is in flight.
    fn persist(&self, myself: &ActorRef<AlertMsg>, st: &mut AlertActorState) {
        if st.writing {
            return;
        }
        let mut changes = std::mem::take(&mut st.retry);
        if let Some(e) = st.engine.as_mut() {
            changes.extend(e.take_changes());
        }
        changes.append(&mut st.pending);
        if changes.is_empty() && st.waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut st.waiters);
        st.writing = true;
        let store = st.deps.store.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let r = if changes.is_empty() {
                Ok(())
            } else {
                store
                    .write_records(changes.clone())
                    .await
                    .map_err(|e| e.to_string())
            };
            let _ = me.send_message(AlertMsg::Written(r, changes, waiters));
        });
    }

    /// Schedules a tick for the earliest due group.
    fn arm(&self, myself: &ActorRef<AlertMsg>, st: &mut AlertActorState) {
        let Some(due) = st.engine.as_ref().and_then(Engine::next_due) else {
            return;
        };
        if st.armed.is_some_and(|a| a <= due) {
            return;
        }
        st.armed = Some(due);
        let at = st.deps.clock.instant(due);
        let me = myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let _ = me.send_message(AlertMsg::Tick);
        });
    }

    fn notices(&self, st: &mut AlertActorState) {
        let Some(engine) = st.engine.as_mut() else {
            return;
        };
        let notices = engine.take_notices();
        let Some(events) = st.deps.events.clone() else {
            return;
        };
        if notices.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for n in notices {
                append_notice(events.as_ref(), n).await;
            }
        });
    }

    async fn refresh_silences(&self, st: &mut AlertActorState) {
        if st
            .silences_read
            .is_some_and(|t| t.elapsed() < SILENCE_REFRESH)
        {
            return;
        }
        st.silences_read = Some(tokio::time::Instant::now());
        match scan_all::<Silence>(st.deps.store.as_ref(), SILENCES, "", 100_000).await {
            Ok(s) => {
                if let Some(e) = st.engine.as_mut() {
                    e.set_silences(s);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read silences; keeping the previous ones"),
        }
    }

    fn failed_alert(n: &NotificationRecord, firing: bool, now: DateTime<Utc>) -> Alert {
        let mut a = Alert::firing(
            NOTIFICATION_FAILED,
            &n.tenant,
            "warning",
            AlertSource::Pipeline,
        )
        .label("receiver", n.receiver.clone())
        .annotation(
            "summary",
            format!("Notifications to receiver {} are failing", n.receiver),
        )
        .annotation("description", n.last_error.clone().unwrap_or_default());
        a.starts_at = now;
        if !firing {
            a.ends_at = Some(now);
        }
        a
    }
}

async fn append_notice(events: &dyn EventStream, n: ConversationNotice) {
    let a = &n.alert.alert;
    let (Some(conv), Some(turn)) = (&a.conversation_id, &a.turn_id) else {
        return;
    };
    let (Ok(tenant), Ok(conv), Ok(turn)) = (
        TenantId::parse(a.tenant()),
        ConversationId::parse(conv),
        TurnId::parse(turn),
    ) else {
        return;
    };
    let event = if n.firing {
        TurnEvent::AlertFiring {
            turn_id: turn,
            fingerprint: n.alert.fingerprint.clone(),
            alertname: a.name().to_owned(),
            severity: a.labels.get("severity").cloned().unwrap_or_default(),
            summary: a.annotations.get("summary").cloned().unwrap_or_default(),
        }
    } else {
        TurnEvent::AlertResolved {
            turn_id: turn,
            fingerprint: n.alert.fingerprint.clone(),
            alertname: a.name().to_owned(),
        }
    };
    if let Err(e) = events.append(&tenant, &conv, &event).await {
        tracing::warn!(error = %e, "cannot add an alert event to its conversation");
    }
}

impl Actor for AlertActor {
    type Msg = AlertMsg;
    type State = AlertActorState;
    type Arguments = AlertDeps;

    async fn pre_start(
        &self,
        myself: ActorRef<AlertMsg>,
        deps: AlertDeps,
    ) -> Result<AlertActorState, ActorProcessingErr> {
        myself.send_interval(MAINTAIN_EVERY, || AlertMsg::Maintain);
        Ok(AlertActorState {
            deps,
            engine: None,
            writing: false,
            retry: Vec::new(),
            pending: Vec::new(),
            waiters: Vec::new(),
            armed: None,
            in_flight: HashMap::new(),
            silences_read: None,
            last_log_sweep: None,
            standby: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AlertMsg>,
        msg: AlertMsg,
        st: &mut AlertActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AlertMsg::Activate(true) => {
                st.standby = false;
                self.activate(&myself, st).await?;
            }
            AlertMsg::Activate(false) => {
                st.standby = true;
                if st.engine.take().is_some() {
                    tracing::info!("alert pipeline handed over to another replica");
                }
                st.in_flight.clear();
                st.armed = None;
            }
            AlertMsg::Raise(_, reply) if st.standby => {
                let _ = reply.send(Err(Refused::Standby));
            }
            AlertMsg::Raise(alerts, reply) => {
                self.activate(&myself, st).await?;
                let now = st.deps.clock.now();
                let mut refused = None;
                if let Some(engine) = st.engine.as_mut() {
                    for a in alerts {
                        let outcome = match engine.ingest(a, now) {
                            Ok(_) => "accepted",
                            Err(e) => {
                                refused = Some(e);
                                "refused"
                            }
                        };
                        metrics::counter!("cairn_alerts_total", "outcome" => outcome).increment(1);
                    }
                }
                match refused {
                    Some(e) => {
                        // Stored what was taken; the caller records the refusal.
                        let _ = reply.send(Err(e));
                    }
                    None => st.waiters.push(After::Reply(reply)),
                }
                self.notices(st);
            }
            AlertMsg::Tick => {
                st.armed = None;
                if st.engine.is_some() {
                    self.refresh_silences(st).await;
                    let now = st.deps.clock.now();
                    let due = st
                        .engine
                        .as_mut()
                        .map(|e| e.flush_due(now))
                        .unwrap_or_default();
                    for n in due {
                        tracing::info!(receiver = %n.receiver, group = %n.group_key, status = %n.message.status, alerts = n.message.alerts.len(), "notifying");
                        st.pending.extend(n.changes());
                        st.waiters.push(After::Send(Box::new(n)));
                    }
                    self.notices(st);
                }
            }
            AlertMsg::Written(result, changes, waiters) => match result {
                Ok(()) => {
                    st.writing = false;
                    for w in waiters {
                        match w {
                            After::Reply(r) => {
                                let _ = r.send(Ok(()));
                            }
                            After::Send(n) if st.engine.is_some() => self.send(&myself, st, *n),
                            After::Send(_) => {}
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot store the alert pipeline's state; retrying");
                    st.retry = changes;
                    let mut w = waiters;
                    w.append(&mut st.waiters);
                    st.waiters = w;
                    myself.send_after(Duration::from_millis(200), || AlertMsg::RetryWrite);
                }
            },
            AlertMsg::RetryWrite => st.writing = false,
            AlertMsg::Delivered(n) => {
                let now = st.deps.clock.now();
                match n.status {
                    DeliveryStatus::Sent => {
                        tracing::info!(receiver = %n.receiver, notification = %n.id, attempts = n.attempts, "notification sent");
                    }
                    DeliveryStatus::Failed => {
                        tracing::error!(receiver = %n.receiver, notification = %n.id, attempts = n.attempts, error = n.last_error.as_deref().unwrap_or(""), "notification failed");
                    }
                    _ => {
                        tracing::warn!(receiver = %n.receiver, notification = %n.id, attempts = n.attempts, error = n.last_error.as_deref().unwrap_or(""), "notification attempt failed; retrying");
                    }
                }
                st.pending.extend(n.changes());
                if n.status.is_final() {
                    st.in_flight.remove(&n.id);
                } else {
                    st.in_flight.insert(n.id.clone(), n.clone());
                }
                // A failure pages the fallback receiver; a later success there resolves it.
                let is_fallback = st.deps.settings.fallback.as_deref() == Some(n.receiver.as_str());
                if let Some(engine) = st.engine.as_mut()
                    && st.deps.settings.fallback.is_some()
                    && !is_fallback
                {
                    let alert = match n.status {
                        DeliveryStatus::Failed => Some(Self::failed_alert(&n, true, now)),
                        DeliveryStatus::Sent => {
                            let probe = Self::failed_alert(&n, true, now);
                            engine
                                .alert(&n.tenant, &probe.fingerprint())
                                .filter(|a| !a.alert.is_resolved_at(now))
                                .map(|_| Self::failed_alert(&n, false, now))
                        }
                        _ => None,
                    };
                    if let Some(a) = alert
                        && let Err(e) = engine.ingest(a, now)
                    {
                        tracing::error!(error = %e, "cannot raise NotificationFailed");
                    }
                }
            }
            AlertMsg::Maintain => {
                let now = st.deps.clock.now();
                if let Some(e) = st.engine.as_mut() {
                    let n = e.gc(now);
                    if n > 0 {
                        tracing::debug!(
                            dropped = n,
                            "resolved alerts past alerts.retention dropped"
                        );
                    }
                }
                if st.engine.is_some()
                    && st
                        .last_log_sweep
                        .is_none_or(|t| t.elapsed() >= LOG_SWEEP_EVERY)
                {
                    st.last_log_sweep = Some(tokio::time::Instant::now());
                    let store = st.deps.store.clone();
                    let cutoff = now
                        - chrono::Duration::from_std(st.deps.notification_retention)
                            .unwrap_or(chrono::Duration::MAX);
                    tokio::spawn(sweep_log(store, cutoff));
                }
            }
            AlertMsg::Status(reply) => {
                let s = st
                    .engine
                    .as_ref()
                    .map_or(PipelineStatus::default(), |e| PipelineStatus {
                        active: true,
                        alerts: e.alert_count(),
                        groups: e.group_count(),
                        in_flight: st.in_flight.len(),
                    });
                let _ = reply.send(s);
            }
        }
        self.persist(&myself, st);
        self.arm(&myself, st);
        Ok(())
    }
}

/// Deletes finished log entries older than `cutoff`.
async fn sweep_log(store: Arc<dyn RecordStore>, cutoff: DateTime<Utc>) {
    let rows: Vec<NotificationRecord> =
        match scan_all(store.as_ref(), NOTIFICATIONS, "", 1_000_000).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sweep the notification log");
                return;
            }
        };
    let old: Vec<RecordChange> = rows
        .iter()
        .filter(|n| n.status.is_final() && n.created_at < cutoff)
        .map(|n| RecordChange::delete(NOTIFICATIONS, n.key()))
        .collect();
    for chunk in old.chunks(500) {
        if let Err(e) = store.write_records(chunk.to_vec()).await {
            tracing::warn!(error = %e, "cannot sweep the notification log");
            return;
        }
    }
}

/// Restarts the AlertActor when it fails (the new one reloads the state).
struct AlertSupervisor;

struct SupervisorState {
    deps: AlertDeps,
    current: Arc<RwLock<Option<ActorRef<AlertMsg>>>>,
    active: Arc<std::sync::atomic::AtomicBool>,
}

enum SupMsg {
    Spawn,
}

impl Actor for AlertSupervisor {
    type Msg = SupMsg;
    type State = SupervisorState;
    type Arguments = (
        AlertDeps,
        Arc<RwLock<Option<ActorRef<AlertMsg>>>>,
        Arc<std::sync::atomic::AtomicBool>,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<SupMsg>,
        (deps, current, active): Self::Arguments,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let _ = myself.send_message(SupMsg::Spawn);
        Ok(SupervisorState {
            deps,
            current,
            active,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupMsg>,
        SupMsg::Spawn: SupMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (actor, _) =
            Actor::spawn_linked(None, AlertActor, st.deps.clone(), myself.get_cell()).await?;
        if st.active.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = actor.send_message(AlertMsg::Activate(true));
        }
        *st.current.write().unwrap_or_else(|p| p.into_inner()) = Some(actor);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        event: SupervisionEvent,
        _st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, err) = event {
            tracing::error!(error = %err, "alert actor failed; restarting it from the stored state");
            myself.send_after(Duration::from_millis(200), || SupMsg::Spawn);
        }
        Ok(())
    }
}

/// The running pipeline: a handle to the current AlertActor.
#[derive(Clone)]
pub struct AlertPipeline {
    current: Arc<RwLock<Option<ActorRef<AlertMsg>>>>,
    supervisor: ActorRef<SupMsg>,
    active: Arc<std::sync::atomic::AtomicBool>,
}

/// Why a raise did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaiseError {
    /// The pipeline refused an alert (it is full or the alert has no tenant).
    #[error("{0}")]
    Refused(Refused),
    /// The actor stopped before answering (it restarts; try again).
    #[error("the alert pipeline is restarting")]
    Unavailable,
}

impl AlertPipeline {
    /// Starts the pipeline; `active` runs it here at once (the embedded bus,
    /// where this process is the only consumer).
    pub async fn start(deps: AlertDeps, active: bool) -> Result<Self, String> {
        let current = Arc::new(RwLock::new(None));
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(active));
        let (supervisor, _) =
            Actor::spawn(None, AlertSupervisor, (deps, current.clone(), flag.clone()))
                .await
                .map_err(|e| format!("cannot start the alert supervisor: {e}"))?;
        let p = Self {
            current,
            supervisor,
            active: flag,
        };
        for _ in 0..200 {
            if p.actor().is_some() {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err("the alert actor did not start".into())
    }

    fn actor(&self) -> Option<ActorRef<AlertMsg>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes alerts; returns once they are stored.
    pub async fn raise(&self, alerts: Vec<Alert>) -> Result<(), RaiseError> {
        let actor = self.actor().ok_or(RaiseError::Unavailable)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        actor
            .send_message(AlertMsg::Raise(alerts, tx.into()))
            .map_err(|_| RaiseError::Unavailable)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RaiseError::Refused(e)),
            Err(_) => Err(RaiseError::Unavailable),
        }
    }

    /// Runs (or stops running) the pipeline on this replica.
    pub fn set_active(&self, active: bool) {
        self.active
            .store(active, std::sync::atomic::Ordering::SeqCst);
        if let Some(a) = self.actor() {
            let _ = a.send_message(AlertMsg::Activate(active));
        }
    }

    /// The status.
    pub async fn status(&self) -> PipelineStatus {
        let Some(actor) = self.actor() else {
            return PipelineStatus::default();
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if actor.send_message(AlertMsg::Status(tx.into())).is_err() {
            return PipelineStatus::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Stops the actors (unsent notifications stay in the outbox).
    pub fn stop(&self) {
        self.supervisor.stop(None);
        if let Some(a) = self.actor() {
            a.stop(None);
        }
    }
}
