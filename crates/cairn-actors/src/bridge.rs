//! Bus bridges: tasks that turn bus records into actor messages.
//!
//! - The router consumes `user_events` and forwards user messages to
//!   `reasoning_tasks` and documents to `ingestion_events`.
//! - The conversation bridge consumes `reasoning_tasks` and delivers each request
//!   to the supervisor.
//! - The ingestion bridge consumes `ingestion_events` and hands each document to
//!   the ingestion actor; its offset is committed once the document is stored or
//!   recorded as failed.
//!
//! Both are at-least-once: an offset is committed only once its record's work is
//! durable (forwarded, persisted in the conversation's queue, or written to the
//! DLQ), and always in offset order, even though up to `max_in_flight` records are
//! worked on at once. Consumers deduplicate downstream (the conversation queue
//! ignores a message id it has seen).

use crate::conversation::DeliveryError;
use crate::ingestion::{IngestMsg, MAX_ATTEMPTS, record_failure, retry_delay, submit};
use crate::supervisor::SupervisorMsg;
use cairn_core::DocumentSubmission;
use cairn_core::TurnRequest;
use cairn_core::envelope::{DOCUMENT_SUBMITTED, Envelope, USER_MESSAGE};
use cairn_core::ports::DocumentStore;
use cairn_core::ports::{BusConsumer, BusError, BusRecord, Enqueued, EventBus, Topics};
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

/// Event type of a DLQ record.
pub const DLQ_RECORD: &str = "dlq.record";

/// Longest wait between delivery retries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Writes a record that failed permanently to the DLQ, with where it came from
/// and why. Retries until the DLQ write is durable.
pub async fn to_dlq(bus: &dyn EventBus, topics: &Topics, rec: &DlqSource, reason: &str) {
    let tenant = rec
        .envelope
        .as_ref()
        .map(|e| e.tenant_id.clone())
        .unwrap_or_else(|| {
            cairn_core::TenantId::parse("unknown")
                .unwrap_or_else(|_| cairn_core::TenantId::generate())
        });
    let envelope = Envelope::new(
        DLQ_RECORD,
        tenant,
        json!({
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "reason": reason,
            "envelope": rec.envelope,
        }),
    );
    let mut delay = Duration::from_millis(50);
    while let Err(e) = bus.publish(&topics.dlq, &rec.key, &envelope).await {
        tracing::error!(error = %e, "cannot write to the DLQ; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
    tracing::warn!(topic = %rec.topic, offset = rec.offset, reason, "record sent to the DLQ");
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
}

impl From<&BusRecord> for DlqSource {
    fn from(r: &BusRecord) -> Self {
        Self {
            topic: r.topic.clone(),
            partition: r.partition,
            offset: r.offset,
            key: r.key.clone(),
            envelope: Some(r.envelope.clone()),
        }
    }
}

type Done = (u32, u64);

/// Runs `consumer` with at most `max_in_flight` records in progress, committing
/// offsets in order as their work completes. `start` begins a record's work
/// synchronously (so that records start in offset order) and returns its completion.
async fn pump<F>(
    mut consumer: Box<dyn BusConsumer>,
    max_in_flight: usize,
    bus: Arc<dyn EventBus>,
    topics: Topics,
    mut start: F,
) where
    F: FnMut(BusRecord) -> BoxFuture<'static, ()>,
{
    let mut in_flight: FuturesOrdered<BoxFuture<'static, Done>> = FuturesOrdered::new();
    loop {
        tokio::select! {
            rec = consumer.next(), if in_flight.len() < max_in_flight => match rec {
                Ok(rec) => {
                    let at = (rec.partition, rec.offset);
                    let work = start(rec);
                    in_flight.push_back(Box::pin(async move { work.await; at }));
                }
                Err(BusError::Undecodable { topic, partition, offset, reason }) => {
                    let (bus, topics) = (bus.clone(), topics.clone());
                    in_flight.push_back(Box::pin(async move {
                        let src = DlqSource { topic, partition, offset, key: String::new(), envelope: None };
                        to_dlq(bus.as_ref(), &topics, &src, &format!("undecodable record: {reason}")).await;
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
    while let Err(e) = consumer.commit(partition, offset).await {
        tracing::error!(error = %e, "offset commit failed; retrying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The router: `user_events` → `reasoning_tasks`.
pub async fn run_router(bus: Arc<dyn EventBus>, topics: Topics, max_in_flight: usize) {
    let consumer = loop {
        match bus.subscribe(&topics.user_events, ROUTER_GROUP).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "router cannot subscribe; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let (b, t) = (bus.clone(), topics.clone());
    pump(consumer, max_in_flight, bus, topics, move |rec| {
        let (bus, topics) = (b.clone(), t.clone());
        Box::pin(async move {
            let to = match rec.envelope.kind.as_str() {
                USER_MESSAGE => &topics.reasoning_tasks,
                DOCUMENT_SUBMITTED => &topics.ingestion_events,
                other => {
                    let reason = format!("no route for event type `{other}`");
                    to_dlq(bus.as_ref(), &topics, &DlqSource::from(&rec), &reason).await;
                    return;
                }
            };
            let mut delay = Duration::from_millis(50);
            while let Err(e) = bus.publish(to, &rec.key, &rec.envelope).await {
                tracing::error!(error = %e, "router cannot forward; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
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

/// The conversation bridge: `reasoning_tasks` → conversation actors.
pub async fn run_conversation_bridge(
    bus: Arc<dyn EventBus>,
    topics: Topics,
    supervisor: ActorRef<SupervisorMsg>,
    max_in_flight: usize,
) {
    let consumer = loop {
        match bus
            .subscribe(&topics.reasoning_tasks, CONVERSATION_GROUP)
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "conversation bridge cannot subscribe; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let (b, t) = (bus.clone(), topics.clone());
    pump(consumer, max_in_flight, bus, topics, move |rec| {
        let (bus, topics, supervisor) = (b.clone(), t.clone(), supervisor.clone());
        let request: Result<TurnRequest, _> = serde_json::from_value(rec.envelope.data.clone());
        // Deliver now, in offset order; only the wait for the answer is deferred.
        let first = request.as_ref().ok().map(|r| deliver(&supervisor, r.clone()));
        Box::pin(async move {
            let request = match request {
                Ok(r) if r.tenant_id == rec.envelope.tenant_id => r,
                Ok(_) => {
                    let reason = "the request's tenant does not match its envelope";
                    to_dlq(bus.as_ref(), &topics, &DlqSource::from(&rec), reason).await;
                    return;
                }
                Err(e) => {
                    let reason = format!("not a turn request: {e}");
                    to_dlq(bus.as_ref(), &topics, &DlqSource::from(&rec), &reason).await;
                    return;
                }
            };
            let mut pending = first;
            let mut delay = Duration::from_millis(20);
            loop {
                let rx = match pending.take() {
                    Some(rx) => rx,
                    None => deliver(&supervisor, request.clone()),
                };
                match rx.await {
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) if e.permanent => {
                        to_dlq(bus.as_ref(), &topics, &DlqSource::from(&rec), &e.reason).await;
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "delivery failed; retrying");
                    }
                    Err(_) => {
                        tracing::warn!(conversation = %request.conversation_id, "conversation actor stopped before answering; retrying");
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        })
    })
    .await;
}

/// The ingestion bridge: `ingestion_events` → the ingestion actor, at most
/// `max_in_flight` documents at once. A submission that fails transiently (store
/// or embedder down) is retried with backoff, then recorded as failed.
pub async fn run_ingestion_bridge(
    bus: Arc<dyn EventBus>,
    topics: Topics,
    actor: ActorRef<IngestMsg>,
    documents: Arc<dyn DocumentStore>,
    max_in_flight: usize,
) {
    let consumer = loop {
        match bus
            .subscribe(&topics.ingestion_events, INGESTION_GROUP)
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "ingestion bridge cannot subscribe; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let (b, t) = (bus.clone(), topics.clone());
    pump(consumer, max_in_flight, bus, topics, move |rec| {
        let (bus, topics, actor, documents) = (b.clone(), t.clone(), actor.clone(), documents.clone());
        let sub: Result<DocumentSubmission, _> = serde_json::from_value(rec.envelope.data.clone());
        // Hand over now, in offset order; only the wait is deferred.
        let tenant = rec.envelope.tenant_id.clone();
        let first = sub.as_ref().ok().map(|s| submit(&actor, tenant.clone(), s.clone()));
        Box::pin(async move {
            let sub = match sub {
                Ok(s) if rec.envelope.kind == DOCUMENT_SUBMITTED => s,
                Ok(_) => {
                    let reason = format!("no ingestion for event type `{}`", rec.envelope.kind);
                    to_dlq(bus.as_ref(), &topics, &DlqSource::from(&rec), &reason).await;
                    return;
                }
                Err(e) => {
                    let reason = format!("not a document submission: {e}");
                    to_dlq(bus.as_ref(), &topics, &DlqSource::from(&rec), &reason).await;
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
            let mut delay = Duration::from_millis(200);
            while let Err(e) = record_failure(documents.as_ref(), &tenant, &sub, &reason).await {
                tracing::error!(error = %e, "cannot record a failed ingestion; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        })
    })
    .await;
}
