//! Starts and stops the supervision tree and the bus bridges; the API's entry
//! point for submitting messages.

use crate::bridge::{Consuming, run_conversation_bridge, run_ingestion_bridge, run_router};
use crate::ingestion::{IngestDeps, IngestMsg, IngestionActor, start_embed_pool};
use crate::settings::AgentDeps;
use crate::supervisor::{ConversationSupervisor, SupervisorMsg};
use cairn_core::DocumentSubmission;
use cairn_core::TurnRequest;
use cairn_core::config::ServerRole;
use cairn_core::envelope::{DOCUMENT_SUBMITTED, Envelope, USER_MESSAGE};
use cairn_core::ports::{BusError, EventBus, Topics};
use ractor::{Actor, ActorRef};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The running agent side of Cairn.
pub struct Runtime {
    /// The supervisor and its task; `None` in the API-only role.
    supervisor: Option<(ActorRef<SupervisorMsg>, TaskSlot)>,
    bridges: Vec<JoinHandle<()>>,
    bus: Arc<dyn EventBus>,
    topics: Topics,
    deps: AgentDeps,
    /// The ingestion actor and its embedding pool, when this process runs them.
    ingestion: Option<Ingestion>,
    /// True when documents are ingested (here or by worker replicas).
    ingests: bool,
    role: ServerRole,
    /// The alert pipeline, when this process runs its bridge.
    alerts: Option<cairn_alerts::actor::AlertPipeline>,
    /// The InsightsActor, when this process runs it.
    insights: Option<ActorRef<crate::insights::InsightsMsg>>,
}

/// The envelope of an alert on `alerts`: tenant from the `tenant` label.
pub fn alert_envelope(
    alert: &cairn_core::alerts::Alert,
    traceparent: Option<&str>,
) -> Result<Envelope, BusError> {
    let tenant = cairn_core::TenantId::parse(alert.tenant())
        .map_err(|e| BusError::Unavailable(format!("the alert's tenant label: {e}")))?;
    let data =
        serde_json::to_value(alert).map_err(|e| BusError::Unavailable(format!("encode: {e}")))?;
    let mut envelope = Envelope::new(cairn_core::envelope::ALERT_RAISED, tenant, data);
    envelope.traceparent = traceparent.map(str::to_owned);
    Ok(envelope)
}

/// A task awaited (once) at shutdown.
type TaskSlot = std::sync::Mutex<Option<JoinHandle<()>>>;

struct Ingestion {
    actor: ActorRef<IngestMsg>,
    /// The actor's and the pool's tasks, awaited at shutdown so that nothing
    /// holds the knowledge store afterwards.
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    pool: ActorRef<ractor::factory::FactoryMessage<(), crate::ingestion::EmbedMsg>>,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the conversation supervisor: {0}")]
pub struct StartError(String);

impl Runtime {
    /// Starts the supervisor (which resumes unfinished conversations) and the
    /// bridges, reading the bus with `max_in_flight` records in progress per bridge.
    pub async fn start(
        deps: AgentDeps,
        bus: Arc<dyn EventBus>,
        topics: Topics,
        max_in_flight: usize,
    ) -> Result<Runtime, StartError> {
        let ctx = Consuming {
            bus,
            topics,
            memory: deps.memory.clone(),
            dedup_ttl: cairn_core::config::BusConfig::default().dedup_ttl,
            max_in_flight,
            signals: deps.signals.clone(),
        };
        Self::start_with(deps, ctx, None, ServerRole::All).await
    }

    /// Like [`start`](Self::start), plus the ingestion actors (parse/chunk actor,
    /// embedding pool, bridge) with at most `concurrency` documents in progress,
    /// for `role` (the API role starts no actors).
    pub async fn start_with(
        deps: AgentDeps,
        ctx: Consuming,
        ingestion: Option<(IngestDeps, usize)>,
        role: ServerRole,
    ) -> Result<Runtime, StartError> {
        let (bus, topics) = (ctx.bus.clone(), ctx.topics.clone());
        let ingests = ingestion.is_some();
        if !role.runs_actors() {
            return Ok(Runtime {
                supervisor: None,
                bridges: Vec::new(),
                bus,
                topics,
                deps,
                ingestion: None,
                ingests,
                role,
                alerts: None,
                insights: None,
            });
        }
        let (supervisor, supervisor_task) =
            Actor::spawn(None, ConversationSupervisor, deps.clone())
                .await
                .map_err(|e| StartError(e.to_string()))?;
        let mut bridges = vec![
            tokio::spawn(run_router(ctx.clone())),
            tokio::spawn(run_conversation_bridge(ctx.clone(), supervisor.clone())),
        ];
        let ingestion = match ingestion {
            Some((ingest, concurrency)) => {
                let (pool, pool_task) =
                    start_embed_pool(ingest.kb.clone(), ingest.settings.embed_workers)
                        .await
                        .map_err(|e| StartError(format!("embedding pool: {e}")))?;
                let documents = ingest.documents.clone();
                let (actor, actor_task) =
                    Actor::spawn(None, IngestionActor, (ingest, pool.clone()))
                        .await
                        .map_err(|e| StartError(format!("ingestion actor: {e}")))?;
                let ctx = Consuming {
                    max_in_flight: concurrency.max(1),
                    ..ctx.clone()
                };
                bridges.push(tokio::spawn(run_ingestion_bridge(
                    ctx,
                    actor.clone(),
                    documents,
                )));
                Some(Ingestion {
                    actor,
                    tasks: std::sync::Mutex::new(vec![actor_task, pool_task]),
                    pool,
                })
            }
            None => None,
        };
        Ok(Runtime {
            supervisor: Some((supervisor, std::sync::Mutex::new(Some(supervisor_task)))),
            bridges,
            bus,
            topics,
            deps,
            ingestion,
            ingests,
            role,
            alerts: None,
            insights: None,
        })
    }

    /// Starts the InsightsActor and its bridge (a second consumer group on
    /// `user_events`) in this process; nothing in the API role.
    pub async fn start_insights(
        &mut self,
        ctx: Consuming,
        deps: crate::insights::InsightsDeps,
    ) -> Result<(), StartError> {
        if !self.role.runs_actors() {
            return Ok(());
        }
        let ctx = Consuming {
            max_in_flight: deps.config.concurrency.max(1),
            ..ctx
        };
        let (actor, _task) = crate::insights::start_insights_actor(deps)
            .await
            .map_err(|e| StartError(format!("insights actor: {e}")))?;
        self.bridges
            .push(tokio::spawn(crate::bridge::run_insights_bridge(
                ctx,
                actor.clone(),
            )));
        self.insights = Some(actor);
        Ok(())
    }

    /// Runs the alert pipeline's bridge (consumer of `alerts`) in this process.
    pub fn start_alerts(&mut self, ctx: Consuming, pipeline: cairn_alerts::actor::AlertPipeline) {
        self.bridges
            .push(tokio::spawn(crate::bridge::run_alerts_bridge(
                ctx,
                pipeline.clone(),
            )));
        self.alerts = Some(pipeline);
    }

    /// Publishes an alert to `alerts` (key [`ALERTS_KEY`](crate::bridge::ALERTS_KEY));
    /// returns once the bus holds it durably.
    pub async fn publish_alert(
        &self,
        alert: &cairn_core::alerts::Alert,
        traceparent: Option<&str>,
    ) -> Result<(), BusError> {
        let envelope = alert_envelope(alert, traceparent)?;
        self.bus
            .publish(&self.topics.alerts, crate::bridge::ALERTS_KEY, &envelope)
            .await
    }

    /// The alert pipeline, when this process runs it.
    pub fn alerts(&self) -> Option<&cairn_alerts::actor::AlertPipeline> {
        self.alerts.as_ref()
    }

    /// Publishes an accepted document to `user_events` (keyed by document id);
    /// returns once the bus holds it durably.
    /// `traceparent` is the W3C trace context of the request that caused it.
    pub async fn submit_document(
        &self,
        tenant: &cairn_core::TenantId,
        submission: &DocumentSubmission,
        traceparent: Option<&str>,
    ) -> Result<(), BusError> {
        let data = serde_json::to_value(submission)
            .map_err(|e| BusError::Unavailable(format!("encode: {e}")))?;
        let mut envelope = Envelope::new(DOCUMENT_SUBMITTED, tenant.clone(), data);
        envelope.traceparent = traceparent.map(str::to_owned);
        self.bus
            .publish(&self.topics.user_events, &submission.document_id, &envelope)
            .await
    }

    /// True when documents are ingested (by this process or by workers).
    pub fn has_ingestion(&self) -> bool {
        self.ingests
    }

    /// What this process runs.
    pub fn role(&self) -> ServerRole {
        self.role
    }

    /// True when this process runs the actors (roles `worker` and `all`).
    pub fn runs_actors(&self) -> bool {
        self.supervisor.is_some()
    }

    /// Publishes an accepted user message to `user_events`; returns once the bus
    /// holds it durably (the API answers 202 only then). `traceparent` is the W3C
    /// trace context of the request that caused it; it travels with the event.
    pub async fn submit(
        &self,
        request: &TurnRequest,
        traceparent: Option<&str>,
    ) -> Result<(), BusError> {
        let data = serde_json::to_value(request)
            .map_err(|e| BusError::Unavailable(format!("encode: {e}")))?;
        let mut envelope = Envelope::new(USER_MESSAGE, request.tenant_id.clone(), data);
        envelope.traceparent = traceparent.map(str::to_owned);
        // The message id is the dedup key downstream; reuse it as the event id
        // only when it is a UUIDv7, as the envelope schema requires.
        if uuid::Uuid::parse_str(request.message_id.as_str())
            .is_ok_and(|u| u.get_version_num() == 7)
        {
            envelope.event_id = request.message_id.to_string();
        }
        self.bus
            .publish(
                &self.topics.user_events,
                request.conversation_id.as_str(),
                &envelope,
            )
            .await
    }

    /// Publishes a `POST /v1/messages` message to `user_events` (keyed by
    /// conversation); returns once the bus holds it durably.
    pub async fn submit_support(
        &self,
        message: &cairn_core::insights::SupportMessage,
        traceparent: Option<&str>,
    ) -> Result<(), BusError> {
        let data = serde_json::to_value(message)
            .map_err(|e| BusError::Unavailable(format!("encode: {e}")))?;
        let mut envelope = Envelope::new(
            cairn_core::envelope::SUPPORT_MESSAGE,
            message.tenant_id.clone(),
            data,
        );
        envelope.traceparent = traceparent.map(str::to_owned);
        if uuid::Uuid::parse_str(message.message_id.as_str())
            .is_ok_and(|u| u.get_version_num() == 7)
        {
            envelope.event_id = message.message_id.to_string();
        }
        self.bus
            .publish(
                &self.topics.user_events,
                message.conversation_id.as_str(),
                &envelope,
            )
            .await
    }

    /// Publishes a ticket submission (new or edited) on `tickets`; returns the
    /// event id once it is durable.
    pub async fn submit_ticket(
        &self,
        sub: &cairn_core::desk::TicketSubmission,
        traceparent: Option<&str>,
    ) -> Result<String, BusError> {
        let data =
            serde_json::to_value(sub).map_err(|e| BusError::Unavailable(format!("encode: {e}")))?;
        let mut envelope = Envelope::with_id(
            cairn_core::envelope::derived_event_id(&format!(
                "ticket.submitted/{}/{}/{}",
                sub.tenant_id, sub.ticket_id, sub.revision
            )),
            cairn_core::envelope::TICKET_SUBMITTED,
            sub.tenant_id.clone(),
            data,
        );
        envelope.traceparent = traceparent.map(str::to_owned);
        self.bus
            .publish(&self.topics.tickets, &sub.ticket_id, &envelope)
            .await?;
        Ok(envelope.event_id)
    }

    /// Publishes feedback on an answer on `conversation_events`.
    pub async fn publish_feedback(&self, f: &cairn_core::desk::Feedback) -> Result<(), BusError> {
        let data =
            serde_json::to_value(f).map_err(|e| BusError::Unavailable(format!("encode: {e}")))?;
        let envelope = Envelope::new(
            cairn_core::envelope::FEEDBACK_RECORDED,
            f.tenant_id.clone(),
            data,
        );
        self.bus
            .publish(
                &self.topics.conversation_events,
                &f.conversation_id,
                &envelope,
            )
            .await
    }

    /// Runs the turn webhook consumer in this process.
    pub fn start_webhooks(
        &mut self,
        ctx: Consuming,
        config: cairn_core::config::TurnWebhooksConfig,
    ) {
        if !self.role.runs_actors() {
            return;
        }
        self.bridges
            .push(tokio::spawn(crate::webhook::run_webhooks(ctx, config)));
    }

    /// Runs the ticket enricher and the analytics consumers in this process
    /// (either may be absent).
    pub fn start_desk(
        &mut self,
        ctx: Consuming,
        tickets: Option<crate::desk::TicketDeps>,
        analytics: Option<(
            Arc<dyn cairn_core::ports::CounterStore>,
            cairn_core::desk_config::AnalyticsConfig,
        )>,
    ) {
        if !self.role.runs_actors() {
            return;
        }
        if let Some(deps) = tickets {
            let ctx = Consuming {
                max_in_flight: deps.config.concurrency.max(1),
                ..ctx.clone()
            };
            self.bridges
                .push(tokio::spawn(crate::desk::run_ticket_enricher(ctx, deps)));
        }
        if let Some((counters, config)) = analytics {
            for topic in [
                &self.topics.user_events,
                &self.topics.conversation_events,
                &self.topics.tickets,
            ] {
                self.bridges.push(tokio::spawn(crate::desk::run_analytics(
                    ctx.clone(),
                    topic.clone(),
                    counters.clone(),
                    config.batch,
                    config.dedup_ttl,
                )));
            }
        }
    }

    /// Live conversation actors (0 in the API role).
    pub async fn live_conversations(&self) -> usize {
        let Some((supervisor, _)) = &self.supervisor else {
            return 0;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if supervisor
            .send_message(SupervisorMsg::LiveCount(tx.into()))
            .is_err()
        {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// True while the supervisor runs (always, in the API role).
    pub fn is_running(&self) -> bool {
        let Some((_, task)) = &self.supervisor else {
            return true;
        };
        task.lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// The shared dependencies.
    pub fn deps(&self) -> &AgentDeps {
        &self.deps
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// The topic names.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The first step of a graceful shutdown: stops taking records from the bus
    /// (the bridges end; on Kafka the consumers leave their groups on threads of
    /// their own, committing their offsets) and starting turns, then waits up to
    /// `within` for the running turns to finish. Returns the turns still running
    /// then; [`shutdown`](Self::shutdown) leaves them checkpointed.
    pub async fn drain(&self, within: Duration) -> usize {
        self.deps.lifecycle.start_draining();
        for b in &self.bridges {
            b.abort();
        }
        let running = self.deps.lifecycle.running();
        if running > 0 {
            tracing::info!(turns = running, "waiting for running turns to finish");
        }
        self.deps.lifecycle.idle_within(within).await
    }

    /// Stops the bridges, then the supervision tree. Unfinished turns stay
    /// checkpointed and resume at the next start; conversation actors release
    /// their writer leases as they stop.
    pub async fn shutdown(&self) {
        for b in &self.bridges {
            b.abort();
        }
        if let Some(p) = &self.alerts {
            p.stop();
        }
        if let Some(a) = &self.insights {
            a.stop(Some("shutdown".into()));
        }
        if let Some(i) = &self.ingestion {
            i.actor.stop(Some("shutdown".into()));
            i.pool.stop(Some("shutdown".into()));
            let tasks = std::mem::take(&mut *i.tasks.lock().unwrap_or_else(|p| p.into_inner()));
            for t in tasks {
                let _ = t.await;
            }
        }
        let Some((supervisor, task)) = &self.supervisor else {
            return;
        };
        supervisor.stop(Some("shutdown".into()));
        let task = task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}
