//! Ingestion actors: documents from `ingestion_events` become searchable chunks.
//!
//! - [`IngestionActor`] (the parse-and-chunk actor) takes the submissions and
//!   runs each in a task: parse and chunk on the blocking pool, embed through the
//!   pool, store. Two submissions of the same document never overlap: the later
//!   one waits in the actor until the earlier one is finished, so versions are
//!   applied in order.
//! - The embedding pool is a ractor factory of [`EmbedWorker`]s; a document's
//!   chunks go to it in batches of `embed_batch`, at most `embed_workers` batches
//!   of one document in flight.
//! - Queues are bounded: the bridge hands over at most `ingest_concurrency`
//!   documents before one is finished, and each document's batches are sent as
//!   workers free up, so a large upload cannot exhaust memory.
//!
//! Every step is written to the document's record (queued → parsing →
//! embedding → done, or failed with a reason) with a compare-and-set on the job
//! id, so a job that was superseded by a new upload, or whose document was
//! deleted, stops without writing chunks.

use base64::Engine;
use cairn_core::ports::{ChunkRecord, DocumentRecord, DocumentStore, JobStatus, VectorPoint};
use cairn_core::{DocumentSubmission, TenantId};
use cairn_retrieval::isolation::DocumentParser;
use cairn_retrieval::knowledge::{DocumentMeta, KnowledgeBase, Prepared};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use ractor::factory::{
    Factory, FactoryArguments, FactoryMessage, Job, WorkerId, queues, routing, worker_builder,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of the pipeline (from `[knowledge]`).
#[derive(Debug, Clone, Copy)]
pub struct IngestSettings {
    /// Embedding workers in the pool.
    pub embed_workers: usize,
    /// Chunks per embedding batch.
    pub embed_batch: usize,
}

/// What the pipeline needs.
#[derive(Clone)]
pub struct IngestDeps {
    /// Where chunks go.
    pub kb: KnowledgeBase,
    /// Where job status goes.
    pub documents: Arc<dyn DocumentStore>,
    /// How uploads are parsed (in a child process in the service).
    pub parser: DocumentParser,
    /// Settings.
    pub settings: IngestSettings,
    /// Where failed jobs are reported (the `IngestionFailures` alert rule).
    pub signals: cairn_core::signals::Signals,
}

/// A message to the embedding pool.
pub enum EmbedMsg {
    /// Embed these chunks and reply with the points.
    Embed(
        Vec<ChunkRecord>,
        RpcReplyPort<Result<Vec<VectorPoint>, String>>,
    ),
}

/// One embedding worker of the factory.
pub struct EmbedWorker;

impl ractor::factory::Worker for EmbedWorker {
    type Key = ();
    type Message = EmbedMsg;
    type State = KnowledgeBase;
    type Arguments = KnowledgeBase;

    async fn pre_start(
        &self,
        _wid: WorkerId,
        _factory: &ActorRef<FactoryMessage<(), EmbedMsg>>,
        kb: KnowledgeBase,
    ) -> Result<KnowledgeBase, ActorProcessingErr> {
        Ok(kb)
    }

    async fn handle(
        &self,
        _wid: WorkerId,
        _factory: &ActorRef<FactoryMessage<(), EmbedMsg>>,
        Job { msg, key, .. }: Job<(), EmbedMsg>,
        kb: &mut KnowledgeBase,
    ) -> Result<(), ActorProcessingErr> {
        let EmbedMsg::Embed(records, reply) = msg;
        let _ = reply.send(kb.embed(records).await.map_err(|e| e.to_string()));
        Ok(key)
    }
}

type EmbedFactory = ActorRef<FactoryMessage<(), EmbedMsg>>;

/// Starts the embedding pool.
pub async fn start_embed_pool(
    kb: KnowledgeBase,
    workers: usize,
) -> Result<(EmbedFactory, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
    let factory = Factory::<
        (),
        EmbedMsg,
        KnowledgeBase,
        EmbedWorker,
        routing::QueuerRouting<(), EmbedMsg>,
        queues::DefaultQueue<(), EmbedMsg>,
    >::default();
    let args = FactoryArguments::builder()
        .worker_builder(Box::new(worker_builder(move |_wid| {
            (EmbedWorker, kb.clone())
        })))
        .queue(Default::default())
        .router(Default::default())
        .num_initial_workers(workers.max(1))
        .build();
    Actor::spawn(None, factory, args).await
}

/// How a submission ended, for the bridge: `Ok` when it was stored or recorded
/// as failed (the record says which); `Err` for a failure worth a retry.
pub type IngestReply = Result<(), String>;

/// Messages of the [`IngestionActor`].
pub enum IngestMsg {
    /// Ingest a submission of `tenant` and reply when it is finished.
    Ingest(TenantId, Box<DocumentSubmission>, RpcReplyPort<IngestReply>),
    /// A document's embedding task finished (internal).
    Finished(String),
}

/// A submission waiting for an earlier one of the same document.
type Waiting = (TenantId, Box<DocumentSubmission>, RpcReplyPort<IngestReply>);

/// The parse-and-chunk actor.
pub struct IngestionActor;

/// The actor's state.
pub struct IngestionState {
    deps: IngestDeps,
    pool: EmbedFactory,
    /// Documents being ingested (`tenant/document`), with the submissions of the
    /// same document that wait for it.
    busy: HashMap<String, VecDeque<Waiting>>,
}

impl Actor for IngestionActor {
    type Msg = IngestMsg;
    type State = IngestionState;
    type Arguments = (IngestDeps, EmbedFactory);

    async fn pre_start(
        &self,
        _me: ActorRef<IngestMsg>,
        (deps, pool): Self::Arguments,
    ) -> Result<IngestionState, ActorProcessingErr> {
        Ok(IngestionState {
            deps,
            pool,
            busy: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<IngestMsg>,
        msg: IngestMsg,
        state: &mut IngestionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            IngestMsg::Ingest(tenant, sub, reply) => {
                let key = format!("{tenant}/{}", sub.document_id);
                if let Some(waiting) = state.busy.get_mut(&key) {
                    waiting.push_back((tenant, sub, reply));
                    return Ok(());
                }
                state.busy.insert(key.clone(), VecDeque::new());
                start(&me, state, key, tenant, sub, reply).await;
            }
            IngestMsg::Finished(key) => {
                let next = state.busy.get_mut(&key).and_then(VecDeque::pop_front);
                match next {
                    Some((tenant, sub, reply)) => start(&me, state, key, tenant, sub, reply).await,
                    None => {
                        state.busy.remove(&key);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Runs one submission in a task (status writes, parsing on the blocking pool,
/// embedding through the pool, the store write), so the actor's mailbox never
/// waits on I/O; the actor only orders submissions per document.
async fn start(
    me: &ActorRef<IngestMsg>,
    state: &IngestionState,
    key: String,
    tenant: TenantId,
    sub: Box<DocumentSubmission>,
    reply: RpcReplyPort<IngestReply>,
) {
    let (deps, pool, me) = (state.deps.clone(), state.pool.clone(), me.clone());
    tokio::spawn(async move {
        let prepared = match JobWriter::new(
            deps.documents.clone(),
            tenant.clone(),
            &sub,
            deps.signals.clone(),
        )
        .await
        {
            Ok(Some(job)) => prepare(&deps, &tenant, &sub, job).await,
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let result = match prepared {
            Ok(Some((job, work))) => finish(&deps, &pool, &tenant, &sub, job, work).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        let _ = reply.send(result);
        let _ = me.send_message(IngestMsg::Finished(key));
    });
}

/// Writes a job's status to its document record, compare-and-set on the job id.
struct JobWriter {
    documents: Arc<dyn DocumentStore>,
    tenant: TenantId,
    record: DocumentRecord,
    signals: cairn_core::signals::Signals,
}

impl JobWriter {
    /// The writer for `sub`'s job, or `None` when the job is stale (the document
    /// was deleted or uploaded again) or already finished (a redelivery).
    async fn new(
        documents: Arc<dyn DocumentStore>,
        tenant: TenantId,
        sub: &DocumentSubmission,
        signals: cairn_core::signals::Signals,
    ) -> Result<Option<Self>, String> {
        let record = documents
            .get_document(&tenant, &sub.document_id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(match record {
            Some(r) if r.job_id == sub.job_id && !r.status.is_terminal() => Some(Self {
                documents,
                tenant,
                record: r,
                signals,
            }),
            _ => {
                tracing::info!(document = %sub.document_id, job = %sub.job_id, "stale or finished ingestion job skipped");
                None
            }
        })
    }

    /// Sets the status; false when the job went stale meanwhile.
    async fn set(&mut self, status: JobStatus) -> Result<bool, String> {
        self.record.status = status;
        self.record.updated_at = Utc::now();
        self.documents
            .update_job(&self.tenant, &self.record)
            .await
            .map_err(|e| e.to_string())
    }

    async fn fail(mut self, reason: String) -> Result<(), String> {
        tracing::warn!(document = %self.record.document_id, reason = %reason, "ingestion failed");
        self.record.error = Some(reason);
        self.signals
            .emit(cairn_core::signals::Signal::IngestionFailed {
                tenant: self.tenant.to_string(),
            });
        self.set(JobStatus::Failed).await.map(|_| ())
    }
}

/// Chunks ready to embed, or nothing to do.
enum Work {
    Unchanged,
    Chunks {
        records: Vec<ChunkRecord>,
        replace: bool,
    },
}

/// Parses and chunks `sub`. `Ok(None)`: finished here (stale, or recorded as failed).
async fn prepare(
    deps: &IngestDeps,
    tenant: &TenantId,
    sub: &DocumentSubmission,
    mut job: JobWriter,
) -> Result<Option<(JobWriter, Work)>, String> {
    if !job.set(JobStatus::Parsing).await? {
        return Ok(None);
    }
    let fallback_title = sub
        .source
        .as_deref()
        .map(|s| {
            let name = s.rsplit(['/', '\\']).next().unwrap_or(s);
            let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
            stem.replace(['-', '_'], " ")
        })
        .unwrap_or_else(|| sub.document_id.clone());
    let content = sub.content_base64.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        base64::engine::general_purpose::STANDARD
            .decode(content)
            .map_err(|e| format!("the content is not valid base64: {e}"))
    })
    .await
    .unwrap_or_else(|e| Err(format!("decoding stopped: {e}")));
    // A parser failure of any kind (refused, crashed, timed out) is final for
    // this upload: the job is recorded as failed and the record is done.
    let parsed = match bytes {
        Ok(bytes) => deps
            .parser
            .parse(&sub.format, bytes, &fallback_title)
            .await
            .map_err(|e| e.to_string()),
        Err(reason) => Err(reason),
    };
    let doc = match parsed {
        Ok(doc) => doc,
        Err(reason) => return job.fail(reason).await.map(|_| None),
    };
    let meta = DocumentMeta {
        document_id: sub.document_id.clone(),
        source: sub.source.clone(),
        tags: sub.tags.clone(),
        title: sub.title.clone(),
        date: sub.date,
    };
    let work = match deps.kb.prepare(tenant, &meta, &doc).await {
        Ok(Prepared::Unchanged) => Work::Unchanged,
        Ok(Prepared::Chunks { records, replace }) => Work::Chunks { records, replace },
        // The store is down: retry the whole submission later.
        Err(e) => return Err(e.to_string()),
    };
    if job.record.title.is_none() {
        job.record.title = Some(doc.title);
    }
    Ok(Some((job, work)))
}

/// Embeds (through the pool) and stores the chunks, then records the outcome.
async fn finish(
    deps: &IngestDeps,
    pool: &EmbedFactory,
    tenant: &TenantId,
    sub: &DocumentSubmission,
    mut job: JobWriter,
    work: Work,
) -> Result<(), String> {
    let started = Instant::now();
    let (records, replace) = match work {
        Work::Unchanged => {
            job.record.outcome = Some("unchanged".into());
            job.set(JobStatus::Done).await?;
            metrics::counter!("cairn_ingestion_jobs_total", "outcome" => "done").increment(1);
            return Ok(());
        }
        Work::Chunks { records, replace } => (records, replace),
    };
    if !job.set(JobStatus::Embedding).await? {
        return Ok(());
    }
    let n = records.len();
    let batch = deps.settings.embed_batch.max(1);
    let batches: Vec<Vec<ChunkRecord>> = records.chunks(batch).map(<[_]>::to_vec).collect();
    drop(records);
    let embedded: Result<Vec<Vec<VectorPoint>>, String> = futures::stream::iter(batches)
        .map(|b| embed_batch(pool, b))
        .buffered(deps.settings.embed_workers.max(1))
        .try_collect()
        .await;
    let points: Vec<VectorPoint> = match embedded {
        Ok(p) => p.into_iter().flatten().collect(),
        // The embedder is down: retry later (the record stays `embedding`).
        Err(e) => return Err(e),
    };
    // Still the current job? A new upload or a delete wins over this one.
    match deps
        .documents
        .get_document(tenant, &sub.document_id)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(r) if r.job_id == sub.job_id => {}
        _ => return Ok(()),
    }
    deps.kb
        .store(tenant, &sub.document_id, points, replace)
        .await
        .map_err(|e| e.to_string())?;
    job.record.outcome = Some(if replace { "replaced" } else { "added" }.into());
    job.record.chunks = Some(n);
    job.record.error = None;
    metrics::counter!("cairn_ingestion_jobs_total", "outcome" => "done").increment(1);
    if !job.set(JobStatus::Done).await? {
        // Deleted while the chunks were written: take them out again.
        if deps
            .documents
            .get_document(tenant, &sub.document_id)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            deps.kb
                .delete(tenant, &sub.document_id)
                .await
                .map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    tracing::info!(
        document = %sub.document_id,
        chunks = n,
        ms = started.elapsed().as_millis() as u64,
        "document ingested"
    );
    Ok(())
}

async fn embed_batch(
    pool: &EmbedFactory,
    records: Vec<ChunkRecord>,
) -> Result<Vec<VectorPoint>, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool.dispatch((), EmbedMsg::Embed(records, tx.into()))
        .map_err(|_| "the embedding pool is stopped".to_owned())?;
    rx.await
        .map_err(|_| "an embedding worker stopped before replying".to_owned())?
}

/// Sends a submission to the actor and returns the pending reply.
pub fn submit(
    actor: &ActorRef<IngestMsg>,
    tenant: TenantId,
    sub: DocumentSubmission,
) -> tokio::sync::oneshot::Receiver<IngestReply> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _ = actor.send_message(IngestMsg::Ingest(tenant, Box::new(sub), tx.into()));
    rx
}

/// Attempts at a submission whose failure looks transient (store or embedder
/// down) before it is recorded as failed.
pub const MAX_ATTEMPTS: u32 = 5;

/// Delay before attempt `n` (from 1) of a transient failure.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(200 * 2u64.pow(attempt.min(6)))
}

/// Records `sub`'s job as failed after its retries ran out.
pub async fn record_failure(
    documents: &dyn DocumentStore,
    tenant: &TenantId,
    sub: &DocumentSubmission,
    reason: &str,
) -> Result<(), String> {
    let Some(mut r) = documents
        .get_document(tenant, &sub.document_id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    if r.job_id != sub.job_id {
        return Ok(());
    }
    r.status = JobStatus::Failed;
    r.error = Some(reason.to_owned());
    r.updated_at = Utc::now();
    documents
        .update_job(tenant, &r)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
