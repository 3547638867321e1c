//! Bus bridges: tasks that turn bus records into actor messages.
//!
//! - The router consumes `user_events` and forwards user messages to
//!   `reasoning_tasks` and documents to `ingestion_events`.
//! - The conversation bridge consumes `reasoning_tasks` and delivers each request
//!   to the supervisor.
//! - The ingestion bridge consumes `ingestion_events` and hands each document to
//!   the ingestion actor; its offset is committed once the document is stored or
//!   recorded as failed.
//! - The insights bridge consumes `user_events` too, in its own group, and hands
//!   every user and support message to the InsightsActor; its offset is
//!   committed once the analysis is stored.
//! - The alerts bridge consumes `alerts` and hands each alert to the AlertActor;
//!   its offset is committed once the pipeline stored it. Every alert is keyed
//!   `alerts`, so one partition (one replica) runs the pipeline; on Kafka the
//!   replica assigned that partition activates it and loads the stored state.
//!
//! All are at-least-once: an offset is committed only once its record's work is
//! durable (forwarded, persisted in the conversation's queue, or written to the
//! DLQ), and always in offset order, even though up to `max_in_flight` records are
//! worked on at once. Every consumer deduplicates on `event_id` (remembered in the
//! MemoryStore for `bus.dedup_ttl`), and downstream dedups again (the conversation
//! queue ignores a message id it has seen). Records the adapter refuses
//! (undecodable, failing their schema, of an unknown type) and records that fail
//! permanently go to `dlq` with their provenance.

use crate::conversation::DeliveryError;
use crate::ingestion::{IngestMsg, MAX_ATTEMPTS, record_failure, retry_delay, submit};
use crate::supervisor::SupervisorMsg;
use cairn_core::DocumentSubmission;
use cairn_core::TurnRequest;
use cairn_core::envelope::{
    DLQ_RECORD, DOCUMENT_SUBMITTED, Envelope, SUPPORT_MESSAGE, USER_MESSAGE,
};
use cairn_core::ports::{
    Assignment, BusConsumer, BusError, BusRecord, DocumentStore, Enqueued, EventBus, MemoryStore,
    Topics,
};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use ractor::{ActorRef, RpcReplyPort};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Consumer group of the router.
pub const ROUTER_GROUP: &str = "cairn-router";
/// Consumer group of the conversation bridge.
pub const CONVERSATION_GROUP: &str = "cairn-conversations";
/// Consumer group of the ingestion bridge.
pub const INGESTION_GROUP: &str = "cairn-ingestion";
/// Consumer group of the alerts bridge.
pub const ALERTS_GROUP: &str = "cairn-alerts";
/// Consumer group of the insights bridge (a second reader of `user_events`).
pub const INSIGHTS_GROUP: &str = "cairn-insights";
/// The key of every record on `alerts`: one partition holds them all, so one
/// replica at a time runs the pipeline.
pub const ALERTS_KEY: &str = "alerts";

/// Longest wait between delivery retries.
pub(crate) const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Why a record goes to the DLQ.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// The consumer group that gave up on it.
    pub group: &'a str,
    /// `undecodable`, `schema`, `unknown_type` or `permanent`.
    pub class: &'a str,
    /// What went wrong.
    pub reason: &'a str,
    /// How many times it was tried.
    pub attempts: u32,
}

/// Writes a record that failed permanently to the DLQ, with where it came from
/// and why, in the record (`dlq.record`) and in `cairn.dlq.*` headers. Retries
/// until the DLQ write is durable.
pub async fn to_dlq(
    bus: &dyn EventBus,
    topics: &Topics,
    rec: &DlqSource,
    f: &Failure<'_>,
    signals: &cairn_core::signals::Signals,
) {
    let tenant = rec
        .envelope
        .as_ref()
        .map(|e| e.tenant_id.clone())
        .unwrap_or_else(|| {
            cairn_core::TenantId::parse("unknown")
                .unwrap_or_else(|_| cairn_core::TenantId::generate())
        });
    let mut envelope = Envelope::new(
        DLQ_RECORD,
        tenant,
        json!({
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "group": f.group,
            "error_class": f.class,
            "reason": f.reason,
            "attempts": f.attempts.max(1),
            "envelope": rec.envelope,
            "payload": rec.payload,
        }),
    );
    envelope.traceparent = rec.envelope.as_ref().and_then(|e| e.traceparent.clone());
    let headers = [
        ("cairn.dlq.topic", rec.topic.clone()),
        ("cairn.dlq.partition", rec.partition.to_string()),
        ("cairn.dlq.offset", rec.offset.to_string()),
        ("cairn.dlq.group", f.group.to_owned()),
        ("cairn.dlq.error_class", f.class.to_owned()),
        ("cairn.dlq.reason", f.reason.to_owned()),
        ("cairn.dlq.attempts", f.attempts.max(1).to_string()),
    ];
    publish_until_durable(bus, &topics.dlq, &rec.key, &envelope, &headers).await;
    signals.emit(cairn_core::signals::Signal::DlqRecord {
        tenant: envelope.tenant_id.to_string(),
        topic: rec.topic.clone(),
    });
    tracing::warn!(topic = %rec.topic, offset = rec.offset, class = f.class, reason = f.reason, "record sent to the DLQ");
}

/// Publishes `envelope`, retrying with backoff (50 ms doubling to 5 s) until the
/// bus holds it: for work already accepted, which must not be dropped.
pub async fn publish_until_durable(
    bus: &dyn EventBus,
    topic: &str,
    key: &str,
    envelope: &Envelope,
    headers: &[(&str, String)],
) {
    let mut delay = Duration::from_millis(50);
    while let Err(e) = bus
        .publish_with_headers(topic, key, envelope, headers)
        .await
    {
        tracing::error!(error = %e, topic, "cannot publish; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// Where a DLQ record came from.
#[derive(Debug, Clone)]
pub struct DlqSource {
    /// Original topic.
    pub topic: String,
    /// Original partition.
    pub partition: u32,
    /// Original offset.
    pub offset: u64,
    /// Original key.
    pub key: String,
    /// The envelope, when it could be decoded.
    pub envelope: Option<Envelope>,
    /// The raw record (lossy UTF-8), when it could not.
    pub payload: Option<String>,
}

impl From<&BusRecord> for DlqSource {
    fn from(r: &BusRecord) -> Self {
        Self {
            topic: r.topic.clone(),
            partition: r.partition,
            offset: r.offset,
            key: r.key.clone(),
            envelope: Some(r.envelope.clone()),
            payload: None,
        }
    }
}

/// What every bridge shares: the bus, its topics, and the event-id dedup.
#[derive(Clone)]
pub struct Consuming {
    /// The bus.
    pub bus: Arc<dyn EventBus>,
    /// Topic names.
    pub topics: Topics,
    /// Remembers the event ids each group finished.
    pub memory: Arc<dyn MemoryStore>,
    /// How long they are remembered.
    pub dedup_ttl: Duration,
    /// Records in progress at once, per bridge.
    pub max_in_flight: usize,
    /// Where DLQ writes are reported (for the `DlqRecords` alert rule).
    pub signals: cairn_core::signals::Signals,
}

impl Consuming {
    pub(crate) async fn dlq(
        &self,
        rec: &BusRecord,
        group: &str,
        class: &str,
        reason: &str,
        attempts: u32,
    ) {
        let f = Failure {
            group,
            class,
            reason,
            attempts,
        };
        to_dlq(
            self.bus.as_ref(),
            &self.topics,
            &DlqSource::from(rec),
            &f,
            &self.signals,
        )
        .await;
    }

    /// Subscribes, retrying until the bus answers.
    pub(crate) async fn subscribe(&self, topic: &str, group: &str) -> Box<dyn BusConsumer> {
        loop {
            match self.bus.subscribe(topic, group).await {
                Ok(c) => return c,
                Err(e) => {
                    tracing::error!(error = %e, topic, group, "cannot subscribe; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

type Done = (u32, u64);
/// A record read, and whether its group already finished it.
type Looked = (Result<BusRecord, BusError>, bool);

/// Runs `consumer` with at most `max_in_flight` records in progress, committing
/// offsets in order as their work completes. `start` begins a record's work
/// synchronously (so that records start in offset order) and returns its
/// completion. Records refused by the adapter (undecodable, failing their schema,
/// of an unknown type) go to the DLQ; records whose event id the group already
/// finished are skipped; a finished record's event id is remembered before its
/// offset is committed.
pub(crate) async fn pump<F>(
    mut consumer: Box<dyn BusConsumer>,
    ctx: Consuming,
    group: &'static str,
    mut start: F,
) where
    F: FnMut(BusRecord) -> BoxFuture<'static, ()>,
{
    let mut in_flight: FuturesOrdered<BoxFuture<'static, Done>> = FuturesOrdered::new();
    // Records whose dedup lookup runs; they come out in offset order.
    let mut lookups: FuturesOrdered<BoxFuture<'static, Looked>> = FuturesOrdered::new();
    let max_in_flight = ctx.max_in_flight.max(1);
    loop {
        tokio::select! {
            r = consumer.next(), if in_flight.len() + lookups.len() < max_in_flight => {
                let memory = ctx.memory.clone();
                lookups.push_back(Box::pin(async move {
                    let Ok(rec) = &r else { return (r, false) };
                    match memory.event_done(group, &rec.envelope.event_id).await {
                        Ok(done) => (r, done),
                        Err(e) => {
                            tracing::warn!(error = %e, "dedup check failed; working on the record (downstream dedups too)");
                            (r, false)
                        }
                    }
                }));
            }
            Some((r, done)) = lookups.next() => match r {
                Ok(rec) => {
                    let at = (rec.partition, rec.offset);
                    let id = rec.envelope.event_id.clone();
                    if done {
                        tracing::debug!(event_id = %id, group, "duplicate delivery skipped");
                        in_flight.push_back(Box::pin(async move { at }));
                        continue;
                    }
                    let work = start(rec);
                    let ctx = ctx.clone();
                    in_flight.push_back(Box::pin(async move {
                        work.await;
                        if let Err(e) = ctx.memory.mark_event_done(group, &id, ctx.dedup_ttl).await {
                            tracing::warn!(error = %e, event_id = %id, "cannot remember a finished event");
                        }
                        at
                    }));
                }
                Err(BusError::Undecodable { topic, partition, offset, key, class, reason, payload }) => {
                    let ctx = ctx.clone();
                    in_flight.push_back(Box::pin(async move {
                        let src = DlqSource { topic, partition, offset, key, envelope: None, payload: Some(payload) };
                        let f = Failure { group, class: class.as_str(), reason: &reason, attempts: 1 };
                        to_dlq(ctx.bus.as_ref(), &ctx.topics, &src, &f, &ctx.signals).await;
                        (partition, offset)
                    }));
                }
                Err(BusError::Closed) => break,
                Err(e) => {
                    tracing::error!(error = %e, "bus read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            Some((mut partition, mut offset)) = in_flight.next() => {
                // Under load many records finish together: commit once for all
                // that are done (the commit is a low-water mark).
                while let Some(Some((p, o))) = in_flight.next().now_or_never() {
                    if p == partition {
                        offset = o;
                    } else {
                        commit_with_retry(consumer.as_mut(), partition, offset).await;
                        (partition, offset) = (p, o);
                    }
                }
                commit_with_retry(consumer.as_mut(), partition, offset).await;
            }
        }
    }
}

async fn commit_with_retry(consumer: &mut dyn BusConsumer, partition: u32, offset: u64) {
    let mut tries = 0;
    while let Err(e) = consumer.commit(partition, offset).await {
        tries += 1;
        if tries >= 5 {
            // The partition was revoked: its next owner reads the record again
            // and skips it as already done.
            tracing::warn!(error = %e, partition, offset, "offset not stored; the record may be redelivered");
            return;
        }
        tracing::error!(error = %e, "offset commit failed; retrying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The router: `user_events` → `reasoning_tasks` (messages, keyed by
/// conversation) and `ingestion_events` (documents, keyed by document).
pub async fn run_router(ctx: Consuming) {
    let consumer = ctx.subscribe(&ctx.topics.user_events, ROUTER_GROUP).await;
    let c = ctx.clone();
    pump(consumer, ctx, ROUTER_GROUP, move |rec| {
        let ctx = c.clone();
        Box::pin(async move {
            let to = match rec.envelope.kind.as_str() {
                USER_MESSAGE => &ctx.topics.reasoning_tasks,
                DOCUMENT_SUBMITTED => &ctx.topics.ingestion_events,
                // Analysed by the insights bridge, never answered.
                SUPPORT_MESSAGE => return,
                other => {
                    let reason = format!("no route for event type `{other}`");
                    ctx.dlq(&rec, ROUTER_GROUP, "unknown_type", &reason, 1)
                        .await;
                    return;
                }
            };
            publish_until_durable(ctx.bus.as_ref(), to, &rec.key, &rec.envelope, &[]).await;
        })
    })
    .await;
}

/// Sends a request to the supervisor and returns the pending reply.
fn deliver(
    supervisor: &ActorRef<SupervisorMsg>,
    request: TurnRequest,
) -> tokio::sync::oneshot::Receiver<Result<Enqueued, DeliveryError>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let port: RpcReplyPort<Result<Enqueued, DeliveryError>> = tx.into();
    let _ = supervisor.send_message(SupervisorMsg::Deliver(request, port));
    rx
}

/// The conversation bridge: `reasoning_tasks` → conversation actors. On Kafka it
/// also follows the partition assignment: conversations of newly assigned
/// partitions are resumed here, those of revoked partitions stopped.
pub async fn run_conversation_bridge(ctx: Consuming, supervisor: ActorRef<SupervisorMsg>) {
    let consumer = ctx
        .subscribe(&ctx.topics.reasoning_tasks, CONVERSATION_GROUP)
        .await;
    let follow = consumer
        .assignment()
        .map(|rx| tokio::spawn(follow_assignment(rx, supervisor.clone())));
    let c = ctx.clone();
    pump(consumer, ctx, CONVERSATION_GROUP, move |rec| {
        let (ctx, supervisor) = (c.clone(), supervisor.clone());
        let request: Result<TurnRequest, _> = serde_json::from_value(rec.envelope.data.clone())
            .map(|mut r: TurnRequest| {
                // The turn joins the trace of the request that sent it.
                if r.traceparent.is_none() {
                    r.traceparent = rec.envelope.traceparent.clone();
                }
                r
            });
        // Deliver now, in offset order; only the wait for the answer is deferred.
        let first = request.as_ref().ok().map(|r| deliver(&supervisor, r.clone()));
        Box::pin(async move {
            let g = CONVERSATION_GROUP;
            let request = match request {
                Ok(r) if r.tenant_id == rec.envelope.tenant_id => r,
                Ok(_) => {
                    let reason = "the request's tenant does not match its envelope";
                    ctx.dlq(&rec, g, "schema", reason, 1).await;
                    return;
                }
                Err(e) => {
                    let reason = format!("not a turn request: {e}");
                    ctx.dlq(&rec, g, "schema", &reason, 1).await;
                    return;
                }
            };
            let mut pending = first;
            let mut delay = Duration::from_millis(20);
            let mut attempts = 1;
            loop {
                let rx = match pending.take() {
                    Some(rx) => rx,
                    None => deliver(&supervisor, request.clone()),
                };
                match rx.await {
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) if e.permanent => {
                        ctx.dlq(&rec, g, "permanent", &e.reason, attempts).await;
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "delivery failed; retrying");
                    }
                    Err(_) => {
                        tracing::warn!(conversation = %request.conversation_id, "conversation actor stopped before answering; retrying");
                    }
                }
                attempts += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        })
    })
    .await;
    if let Some(f) = follow {
        f.abort();
    }
}

/// Tells the supervisor about every change of the `reasoning_tasks` assignment.
async fn follow_assignment(
    mut rx: tokio::sync::watch::Receiver<Assignment>,
    supervisor: ActorRef<SupervisorMsg>,
) {
    let mut held = Assignment::default();
    loop {
        let now = rx.borrow_and_update().clone();
        let diff = |a: &Assignment, b: &Assignment| Assignment {
            partitions: a
                .partitions
                .iter()
                .filter(|p| !b.partitions.contains(p) || a.partition_count != b.partition_count)
                .copied()
                .collect(),
            partition_count: a.partition_count,
        };
        let (revoked, added) = (diff(&held, &now), diff(&now, &held));
        if !revoked.partitions.is_empty() {
            let _ = supervisor.send_message(SupervisorMsg::Release(revoked));
        }
        if !added.partitions.is_empty() {
            tracing::info!(partitions = ?added.partitions, "reasoning_tasks partitions assigned");
            let _ = supervisor.send_message(SupervisorMsg::Adopt(added));
        }
        held = now;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The ingestion bridge: `ingestion_events` → the ingestion actor, at most
/// `ctx.max_in_flight` documents at once. A submission that fails transiently
/// (store or embedder down) is retried with backoff, then recorded as failed.
pub async fn run_ingestion_bridge(
    ctx: Consuming,
    actor: ActorRef<IngestMsg>,
    documents: Arc<dyn DocumentStore>,
) {
    let consumer = ctx
        .subscribe(&ctx.topics.ingestion_events, INGESTION_GROUP)
        .await;
    let c = ctx.clone();
    pump(consumer, ctx, INGESTION_GROUP, move |rec| {
        let (ctx, actor, documents) = (c.clone(), actor.clone(), documents.clone());
        let sub: Result<DocumentSubmission, _> = serde_json::from_value(rec.envelope.data.clone());
        // Hand over now, in offset order; only the wait is deferred.
        let tenant = rec.envelope.tenant_id.clone();
        let first = sub.as_ref().ok().map(|s| submit(&actor, tenant.clone(), s.clone()));
        Box::pin(async move {
            let g = INGESTION_GROUP;
            let sub = match sub {
                Ok(s) if rec.envelope.kind == DOCUMENT_SUBMITTED => s,
                Ok(_) => {
                    let reason = format!("no ingestion for event type `{}`", rec.envelope.kind);
                    ctx.dlq(&rec, g, "unknown_type", &reason, 1).await;
                    return;
                }
                Err(e) => {
                    let reason = format!("not a document submission: {e}");
                    ctx.dlq(&rec, g, "schema", &reason, 1).await;
                    return;
                }
            };
            let mut pending = first;
            let mut attempt = 1;
            let reason = loop {
                let rx = match pending.take() {
                    Some(rx) => rx,
                    None => submit(&actor, tenant.clone(), sub.clone()),
                };
                let error = match rx.await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e,
                    Err(_) => "the ingestion actor stopped before answering".to_owned(),
                };
                if attempt >= MAX_ATTEMPTS {
                    break error;
                }
                tracing::warn!(document = %sub.document_id, attempt, error = %error, "ingestion failed; retrying");
                tokio::time::sleep(retry_delay(attempt)).await;
                attempt += 1;
            };
            let reason = format!("gave up after {MAX_ATTEMPTS} attempts: {reason}");
            ctx.signals.emit(cairn_core::signals::Signal::IngestionFailed {
                tenant: tenant.to_string(),
            });
            let mut delay = Duration::from_millis(200);
            while let Err(e) = record_failure(documents.as_ref(), &tenant, &sub, &reason).await {
                tracing::error!(error = %e, "cannot record a failed ingestion; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            ctx.dlq(&rec, g, "permanent", &reason, MAX_ATTEMPTS).await;
        })
    })
    .await;
}

/// The alerts bridge: `alerts` → the AlertActor. An alert whose tenant label
/// differs from its envelope's tenant, or that the pipeline refuses (full), goes
/// to the DLQ; while the actor restarts, delivery is retried.
pub async fn run_alerts_bridge(ctx: Consuming, pipeline: cairn_alerts::actor::AlertPipeline) {
    let consumer = ctx.subscribe(&ctx.topics.alerts, ALERTS_GROUP).await;
    let follow = match consumer.assignment() {
        Some(rx) => Some(tokio::spawn(follow_alerts_assignment(rx, pipeline.clone()))),
        None => {
            pipeline.set_active(true);
            None
        }
    };
    let c = ctx.clone();
    pump(consumer, ctx, ALERTS_GROUP, move |rec| {
        let (ctx, pipeline) = (c.clone(), pipeline.clone());
        Box::pin(async move {
            let g = ALERTS_GROUP;
            let alert: cairn_core::alerts::Alert =
                match serde_json::from_value(rec.envelope.data.clone()) {
                    Ok(a) if rec.envelope.kind == cairn_core::envelope::ALERT_RAISED => a,
                    Ok(_) => {
                        let reason =
                            format!("no alert pipeline for event type `{}`", rec.envelope.kind);
                        ctx.dlq(&rec, g, "unknown_type", &reason, 1).await;
                        return;
                    }
                    Err(e) => {
                        ctx.dlq(&rec, g, "schema", &format!("not an alert: {e}"), 1)
                            .await;
                        return;
                    }
                };
            if alert.tenant() != rec.envelope.tenant_id.as_str() {
                let reason = "the alert's tenant label does not match its envelope";
                ctx.dlq(&rec, g, "schema", reason, 1).await;
                return;
            }
            let mut delay = Duration::from_millis(20);
            let mut attempts = 1;
            loop {
                match pipeline.raise(vec![alert.clone()]).await {
                    Ok(()) => return,
                    Err(cairn_alerts::actor::RaiseError::Refused(
                        cairn_alerts::engine::Refused::Standby,
                    )) => tracing::debug!("alert pipeline handed over; waiting"),
                    Err(cairn_alerts::actor::RaiseError::Refused(e)) => {
                        ctx.dlq(&rec, g, "permanent", &e.to_string(), attempts)
                            .await;
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "alert not taken yet; retrying"),
                }
                attempts += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        })
    })
    .await;
    if let Some(f) = follow {
        f.abort();
    }
}

/// Runs the pipeline on this replica while it holds the partition of [`ALERTS_KEY`].
async fn follow_alerts_assignment(
    mut rx: tokio::sync::watch::Receiver<Assignment>,
    pipeline: cairn_alerts::actor::AlertPipeline,
) {
    let mut held = false;
    loop {
        let a = rx.borrow_and_update().clone();
        let owns = a.partition_count > 0
            && a.partitions.contains(&cairn_core::ports::partition_for(
                ALERTS_KEY,
                a.partition_count,
            ));
        if owns != held {
            tracing::info!(active = owns, "alert pipeline ownership changed");
            pipeline.set_active(owns);
            held = owns;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The job of an insights-bridge record; `Ok(None)` for records it ignores
/// (documents), `Err` for records that cannot be analysed.
fn insights_job(rec: &BusRecord) -> Result<Option<crate::insights::InsightsJob>, String> {
    use crate::insights::InsightsJob;
    use cairn_core::insights::{Sender, SupportMessage};
    let e = &rec.envelope;
    let job = match e.kind.as_str() {
        USER_MESSAGE => {
            let r: TurnRequest = serde_json::from_value(e.data.clone())
                .map_err(|err| format!("not a turn request: {err}"))?;
            // The analysis is not part of the turn: its event carries the
            // message id, so a turn's stream (which ends at its answer) does
            // not include it.
            let turn_id = cairn_core::TurnId::parse(r.message_id.as_str())
                .map_err(|err| format!("message id: {err}"))?;
            InsightsJob {
                tenant: r.tenant_id,
                conversation: r.conversation_id,
                message_id: r.message_id,
                turn_id,
                user: r.user_id,
                sender: Sender::Customer,
                text: r.content,
                support_channel: None,
                known_pii: r.redacted_pii,
                accepted_at: r.accepted_at,
            }
        }
        SUPPORT_MESSAGE => {
            let m: SupportMessage = serde_json::from_value(e.data.clone())
                .map_err(|err| format!("not a support message: {err}"))?;
            let turn_id = cairn_core::TurnId::parse(m.message_id.as_str())
                .map_err(|err| format!("message id: {err}"))?;
            InsightsJob {
                tenant: m.tenant_id,
                conversation: m.conversation_id,
                message_id: m.message_id,
                turn_id,
                user: m.user_id,
                sender: m.sender,
                text: m.message,
                support_channel: Some(m.channel),
                known_pii: m.redacted_pii,
                accepted_at: m.accepted_at,
            }
        }
        _ => return Ok(None),
    };
    if job.tenant != e.tenant_id {
        return Err("the message's tenant does not match its envelope".into());
    }
    Ok(Some(job))
}

/// The insights bridge: `user_events` (group `cairn-insights`) → the
/// InsightsActor. Records are handed over in offset order; a failed analysis
/// (a store or model outage) is retried with backoff until it is stored.
pub async fn run_insights_bridge(ctx: Consuming, actor: ActorRef<crate::insights::InsightsMsg>) {
    let consumer = ctx.subscribe(&ctx.topics.user_events, INSIGHTS_GROUP).await;
    let c = ctx.clone();
    pump(consumer, ctx, INSIGHTS_GROUP, move |rec| {
        let (ctx, actor) = (c.clone(), actor.clone());
        let job = insights_job(&rec);
        let first = match &job {
            Ok(Some(j)) => Some(crate::insights::submit_job(&actor, j.clone())),
            _ => None,
        };
        Box::pin(async move {
            let g = INSIGHTS_GROUP;
            let job = match job {
                Ok(Some(j)) => j,
                Ok(None) => return,
                Err(reason) => {
                    ctx.dlq(&rec, g, "schema", &reason, 1).await;
                    return;
                }
            };
            let mut pending = first;
            let mut delay = Duration::from_millis(50);
            loop {
                let rx = match pending.take() {
                    Some(rx) => rx,
                    None => crate::insights::submit_job(&actor, job.clone()),
                };
                match rx.await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => tracing::warn!(error = %e, conversation = %job.conversation, "analysis not stored; retrying"),
                    Err(_) => tracing::warn!("the insights actor stopped before answering; retrying"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        })
    })
    .await;
}
