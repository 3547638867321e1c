//! `InsightsActor`: analyses every message (user messages of answered
//! conversations, and `POST /v1/messages` traffic between customers and human
//! agents) beside the ReAct loop, never in its way, and keeps each
//! conversation's aggregate insights.
//!
//! The insights bridge reads `user_events` in its own consumer group
//! (`cairn-insights`), so on Kafka each message is analysed by the one replica
//! that owns its conversation's partition. The bridge hands records to the actor
//! in offset order; the actor sends each text to an analysis pool (a few
//! workers that batch texts for the intent model) and applies the results in
//! order per conversation:
//!
//! 1. a message already analysed (its record exists) is skipped — redelivery
//!    after a crash is normal;
//! 2. a `support.message` is appended to the transcript (the conversation is
//!    created on first use), unless the transcript's tail already holds it;
//! 3. the analysis is folded into the aggregate; escalation conditions met for
//!    the first time raise an alert on `alerts` (its fingerprint names the
//!    conversation and condition, so a redelivery cannot page twice);
//! 4. the analysis and the aggregate are written in one batch;
//! 5. `insights.updated` goes to the conversation's event stream and to
//!    `conversation_events`.

use crate::bridge::{ALERTS_KEY, publish_until_durable};
use cairn_core::alerts::{Alert, AlertSource};
use cairn_core::envelope::{CONVERSATION_EVENT, Envelope};
use cairn_core::insights::{ConversationInsights, MessageAnalysis, PiiReport, PiiScanner, Sender};
use cairn_core::insights_config::InsightsConfig;
use cairn_core::ports::{
    AnalysisInput, Analyzer, EventBus, EventStream, MemoryStore, RecordChange, RecordStore,
    StoreError, Topics,
};
use cairn_core::{
    ConversationEvent, ConversationId, ConversationMeta, Message, MessageId, Role, TenantId,
    TurnEvent, TurnId, UserId,
};
use cairn_insights::aggregate::{self, CONVERSATIONS, FoldInput, MESSAGES};
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Texts analysed together at most (one embedding batch).
const MAX_BATCH: usize = 32;
/// How far back the transcript is checked for a support message already appended.
const TAIL_CHECK: u64 = 16;

/// One message to analyse.
#[derive(Debug, Clone)]
pub struct InsightsJob {
    /// The tenant.
    pub tenant: TenantId,
    /// The conversation.
    pub conversation: ConversationId,
    /// The message.
    pub message_id: MessageId,
    /// The id its events carry in their `turn_id` (the message id: an
    /// analysis belongs to no turn).
    pub turn_id: TurnId,
    /// Who posted it (the conversation's owner when it is created here).
    pub user: UserId,
    /// Customer or human agent.
    pub sender: Sender,
    /// The text as stored.
    pub text: String,
    /// `support.message` only: the channel; the message is appended to the transcript.
    pub support_channel: Option<String>,
    /// PII found before the API redacted the text.
    pub known_pii: Option<PiiReport>,
    /// When the API accepted it.
    pub accepted_at: DateTime<Utc>,
}

/// What the actor needs.
#[derive(Clone)]
pub struct InsightsDeps {
    /// The analyser (offline, or LLM with offline fallback).
    pub analyzer: Arc<dyn Analyzer>,
    /// Finds PII in text kept in the aggregate (the summary), to redact it.
    pub scanner: Arc<dyn PiiScanner>,
    /// Transcripts and rolling summaries.
    pub memory: Arc<dyn MemoryStore>,
    /// Conversations' event streams.
    pub events: Arc<dyn EventStream>,
    /// Analyses and aggregates.
    pub records: Arc<dyn RecordStore>,
    /// The bus, for `conversation_events` and `alerts`.
    pub bus: Arc<dyn EventBus>,
    /// Topic names.
    pub topics: Topics,
    /// True when escalations are published on `alerts`.
    pub alerts_enabled: bool,
    /// True when `insights.updated` is republished on `conversation_events`
    /// (on Kafka; the embedded bus has no downstream consumers).
    pub relay_events: bool,
    /// `[insights]`.
    pub config: Arc<InsightsConfig>,
}

/// Messages of the InsightsActor.
pub enum InsightsMsg {
    /// Analyse a message and fold it in; answers once it is stored.
    Analyze(Box<InsightsJob>, RpcReplyPort<Result<(), String>>),
    /// A conversation's latest job finished (`generation` identifies it).
    Settled(ConversationId, u64),
}

/// The actor's state.
pub struct InsightsState {
    deps: InsightsDeps,
    pool: mpsc::Sender<PoolItem>,
    /// Per conversation: the generation and completion of its latest job.
    tails: HashMap<ConversationId, (u64, watch::Receiver<bool>)>,
    generation: u64,
}

type PoolItem = (
    AnalysisInput,
    oneshot::Sender<Result<cairn_core::insights::Analysis, String>>,
);

/// The InsightsActor.
pub struct InsightsActor;

impl Actor for InsightsActor {
    type Msg = InsightsMsg;
    type State = InsightsState;
    type Arguments = InsightsDeps;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        deps: InsightsDeps,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (tx, rx) = mpsc::channel::<PoolItem>(deps.config.concurrency.max(MAX_BATCH));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        for _ in 0..workers {
            tokio::spawn(analysis_worker(rx.clone(), deps.analyzer.clone()));
        }
        Ok(InsightsState {
            deps,
            pool: tx,
            tails: HashMap::new(),
            generation: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            InsightsMsg::Analyze(job, reply) => {
                state.generation += 1;
                let generation = state.generation;
                let (done_tx, done_rx) = watch::channel(false);
                let previous = state
                    .tails
                    .insert(job.conversation.clone(), (generation, done_rx))
                    .map(|(_, rx)| rx);
                let (deps, pool, me) = (state.deps.clone(), state.pool.clone(), myself.clone());
                tokio::spawn(async move {
                    let conversation = job.conversation.clone();
                    let result = run_job(&deps, &pool, *job, previous).await;
                    let _ = done_tx.send(true);
                    let _ = reply.send(result);
                    let _ = me.send_message(InsightsMsg::Settled(conversation, generation));
                });
            }
            InsightsMsg::Settled(conversation, generation) => {
                if state
                    .tails
                    .get(&conversation)
                    .is_some_and(|(g, _)| *g == generation)
                {
                    state.tails.remove(&conversation);
                }
            }
        }
        Ok(())
    }
}

/// Takes texts from the queue, as many as are waiting (up to [`MAX_BATCH`]),
/// and analyses them in one batch.
async fn analysis_worker(
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<PoolItem>>>,
    analyzer: Arc<dyn Analyzer>,
) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        let inputs: Vec<AnalysisInput> = batch.iter().map(|(i, _)| i.clone()).collect();
        match analyzer.analyze_batch(&inputs).await {
            Ok(analyses) => {
                for ((_, reply), a) in batch.into_iter().zip(analyses) {
                    let _ = reply.send(Ok(a));
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

async fn run_job(
    deps: &InsightsDeps,
    pool: &mpsc::Sender<PoolItem>,
    job: InsightsJob,
    previous: Option<watch::Receiver<bool>>,
) -> Result<(), String> {
    let key = aggregate::message_key(job.tenant.as_str(), &job.conversation, &job.message_id);
    // Analyse concurrently with the conversation's earlier jobs…
    let input = AnalysisInput {
        tenant: job.tenant.clone(),
        text: job.text.clone(),
        sender: job.sender,
        known_pii: job.known_pii.clone(),
    };
    let (tx, rx) = oneshot::channel();
    pool.send((input, tx))
        .await
        .map_err(|_| "the analysis pool stopped".to_owned())?;
    let analysis = rx
        .await
        .map_err(|_| "the analysis pool dropped the message".to_owned())??;
    // …but apply in order.
    if let Some(mut prev) = previous {
        let _ = prev.wait_for(|done| *done).await;
    }
    let store = |e: StoreError| e.to_string();
    if deps
        .records
        .get_record(MESSAGES, &key)
        .await
        .map_err(store)?
        .is_some()
    {
        tracing::debug!(conversation = %job.conversation, message = %job.message_id, "message already analysed");
        return Ok(());
    }
    if let Some(channel) = &job.support_channel {
        append_support_message(deps, &job, channel)
            .await
            .map_err(store)?;
    }
    let ckey = aggregate::conversation_key(job.tenant.as_str(), &job.conversation);
    let previous: Option<ConversationInsights> = match deps
        .records
        .get_record(CONVERSATIONS, &ckey)
        .await
        .map_err(store)?
    {
        Some(s) => serde_json::from_str(&s).ok(),
        None => None,
    };
    let rolling = deps
        .memory
        .summary(&job.tenant, &job.conversation)
        .await
        .map_err(store)?;
    let m = MessageAnalysis {
        message_id: job.message_id.clone(),
        sender: job.sender,
        analyzed_at: Utc::now(),
        analysis,
    };
    let folded = aggregate::fold(
        previous,
        &m,
        &FoldInput {
            conversation_id: &job.conversation,
            text: &job.text,
            rolling_summary: Some(rolling.text.as_str()),
            escalate_on: &deps.config.escalate_on,
            scanner: deps.scanner.as_ref(),
        },
    );
    if deps.alerts_enabled {
        for condition in &folded.newly_escalated {
            let alert = escalation_alert(deps, &job, condition, &folded.insights);
            match crate::runtime::alert_envelope(&alert, None) {
                Ok(envelope) => {
                    publish_until_durable(
                        deps.bus.as_ref(),
                        &deps.topics.alerts,
                        ALERTS_KEY,
                        &envelope,
                        &[],
                    )
                    .await;
                    tracing::info!(conversation = %job.conversation, condition, "conversation escalated");
                }
                Err(e) => tracing::error!(error = %e, "cannot build the escalation alert"),
            }
        }
    }
    // The labels go to analytics before the analysis is stored: a crash in
    // between analyses again and republishes the same event id (a duplicate).
    if job.sender == Sender::Customer {
        let labels = cairn_core::desk::AnalysedMessage {
            tenant_id: job.tenant.clone(),
            conversation_id: job.conversation.to_string(),
            message_id: job.message_id.to_string(),
            intent: m.analysis.intent.clone(),
            sentiment: m.analysis.sentiment.label.as_str().to_owned(),
            urgency: m.analysis.urgency.as_str().to_owned(),
            escalate: m.analysis.requires_escalation,
            accepted_at: job.accepted_at,
        };
        if let Ok(data) = serde_json::to_value(&labels) {
            let envelope = Envelope::with_id(
                cairn_core::envelope::derived_event_id(&format!(
                    "message.analysed/{}/{}",
                    job.tenant, job.message_id
                )),
                cairn_core::envelope::MESSAGE_ANALYSED,
                job.tenant.clone(),
                data,
            );
            to_conversation_events(deps, &job, &envelope).await;
        }
    }
    deps.records
        .write_records(vec![
            RecordChange::put(MESSAGES, key, encode(&m)),
            RecordChange::put(CONVERSATIONS, ckey, encode(&folded.insights)),
        ])
        .await
        .map_err(store)?;
    let event = TurnEvent::InsightsUpdated {
        turn_id: job.turn_id.clone(),
        message_id: job.message_id.clone(),
        sender: job.sender,
        analysis: Box::new(m.analysis),
        insights: Box::new(folded.insights),
    };
    let id = deps
        .events
        .append(&job.tenant, &job.conversation, &event)
        .await
        .map_err(store)?;
    let data = ConversationEvent {
        conversation_id: job.conversation.clone(),
        id,
        at: Utc::now(),
        event,
    };
    if !deps.relay_events {
        return Ok(());
    }
    if let Ok(data) = serde_json::to_value(&data) {
        let envelope = Envelope::new(CONVERSATION_EVENT, job.tenant.clone(), data);
        to_conversation_events(deps, &job, &envelope).await;
    }
    Ok(())
}

/// Publishes on `conversation_events`, keyed by the job's conversation.
async fn to_conversation_events(deps: &InsightsDeps, job: &InsightsJob, envelope: &Envelope) {
    publish_until_durable(
        deps.bus.as_ref(),
        &deps.topics.conversation_events,
        job.conversation.as_str(),
        envelope,
        &[],
    )
    .await;
}

/// JSON text of a stored value (the types here always serialise).
fn encode<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn escalation_alert(
    deps: &InsightsDeps,
    job: &InsightsJob,
    condition: &str,
    insights: &ConversationInsights,
) -> Alert {
    let reason = cairn_insights::urgency::reason(&[condition]).unwrap_or_default();
    let mut alert = Alert::firing(
        "ConversationNeedsHuman",
        job.tenant.as_str(),
        &deps.config.escalation_severity,
        AlertSource::Insights,
    )
    .label("conversation", job.conversation.as_str())
    .label("condition", condition)
    .annotation(
        "summary",
        format!("Conversation {} needs a human: {reason}", job.conversation),
    )
    .annotation("description", insights.summary.tldr.clone());
    alert.conversation_id = Some(job.conversation.to_string());
    alert.turn_id = Some(job.turn_id.to_string());
    alert
}

async fn append_support_message(
    deps: &InsightsDeps,
    job: &InsightsJob,
    channel: &str,
) -> Result<(), StoreError> {
    let meta = match deps
        .memory
        .get_conversation(&job.tenant, &job.conversation)
        .await?
    {
        Some(m) => m,
        None => {
            let title: String = job.text.chars().take(60).collect();
            let meta = ConversationMeta::new(
                job.conversation.clone(),
                job.tenant.clone(),
                job.user.clone(),
                Some(title),
            );
            deps.memory.create_conversation(&meta).await?;
            meta
        }
    };
    let from = meta.message_count.saturating_sub(TAIL_CHECK);
    let tail = deps
        .memory
        .messages(&job.tenant, &job.conversation, from, TAIL_CHECK as usize)
        .await?;
    if tail.iter().any(|m| m.id == job.message_id) {
        return Ok(());
    }
    let mut message = Message::new(
        match job.sender {
            Sender::Customer => Role::User,
            Sender::Agent => Role::Assistant,
        },
        job.text.clone(),
    );
    message.id = job.message_id.clone();
    message.created_at = job.accepted_at;
    message.metadata = json!({"sender": job.sender, "channel": channel, "source": "support"});
    deps.memory
        .append_message(&job.tenant, &job.conversation, &message)
        .await?;
    Ok(())
}

/// Starts the InsightsActor.
pub async fn start_insights_actor(
    deps: InsightsDeps,
) -> Result<(ActorRef<InsightsMsg>, tokio::task::JoinHandle<()>), String> {
    Actor::spawn(None, InsightsActor, deps)
        .await
        .map_err(|e| e.to_string())
}

/// Hands a job to the actor; the receiver answers once it is stored.
pub fn submit_job(
    actor: &ActorRef<InsightsMsg>,
    job: InsightsJob,
) -> oneshot::Receiver<Result<(), String>> {
    let (tx, rx) = oneshot::channel();
    // When the actor is gone the message is dropped with its reply port, and
    // the receiver sees the closed channel.
    let _ = actor.send_message(InsightsMsg::Analyze(Box::new(job), tx.into()));
    rx
}
