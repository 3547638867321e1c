//! The composition root: one adapter per port, chosen by config.

use crate::builtin_tools::CurrentTime;
use crate::secret;
use anyhow::Context;
use cairn_actors::bridge::Consuming;
use cairn_actors::ingestion::{IngestDeps, IngestSettings};
use cairn_actors::{AgentDeps, AgentSettings, Relay, Runtime, ToolCatalog};
use cairn_alerts::AlertDeps;
use cairn_alerts::actor::AlertPipeline;
use cairn_alerts::escalate::EscalateTool;
use cairn_alerts::rules::{AlertPublisher, RuleEngine};
use cairn_api::auth::Authenticator;
use cairn_api::{ApiSettings, AppState};
use cairn_bus::{EmbeddedBus, KafkaBus, KafkaSettings};
use cairn_core::config::{Config, ServerRole};
use cairn_core::ports::{
    DenseEmbedder, DocumentStore, EventBus, EventStream, MemoryStore, RecordStore, Topics,
    VectorStore,
};
use cairn_core::signals::Signals;
use cairn_llm::embeddings::OpenAiEmbedder;
use cairn_retrieval::chunk::ChunkSettings;
use cairn_retrieval::formats::ParseLimits;
use cairn_retrieval::isolation::{ChildParser, DocumentParser};
use cairn_retrieval::knowledge::{KnowledgeBase, SearchKnowledgeTool};
use cairn_retrieval::{Bm25Embedder, EdgeVectorStore, MiniLmEmbedder, QdrantServerStore};
use cairn_store::{EmbeddedStore, RedisStore};
use cairn_tools::ToolHub;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Publishes alerts on the `alerts` topic, retrying until the bus holds them
/// (the built-in rules and the `escalate` tool use it).
pub struct BusPublisher {
    /// The bus.
    pub bus: Arc<dyn EventBus>,
    /// The `alerts` topic.
    pub topic: String,
}

#[async_trait::async_trait]
impl AlertPublisher for BusPublisher {
    async fn publish(&self, alert: cairn_core::alerts::Alert) {
        match cairn_actors::runtime::alert_envelope(&alert, None) {
            Ok(envelope) => {
                cairn_actors::bridge::publish_until_durable(
                    self.bus.as_ref(),
                    &self.topic,
                    cairn_actors::bridge::ALERTS_KEY,
                    &envelope,
                    &[],
                )
                .await
            }
            Err(e) => tracing::error!(error = %e, alert = alert.name(), "cannot publish an alert"),
        }
    }
}

/// A built service: the state the router serves, plus what start-up learned.
pub struct App {
    /// Handler state (owns the runtime).
    pub state: AppState,
    /// The knowledge base, when `knowledge.enabled`.
    pub knowledge: Option<KnowledgeBase>,
    /// True when the JWT secret was generated (development mode).
    pub dev_secret: bool,
    /// The OpenTelemetry exporter, flushed at shutdown.
    telemetry: Option<crate::telemetry::Telemetry>,
    /// The retention sweeper, stopped at shutdown.
    sweeper: Option<tokio::task::JoinHandle<()>>,
    /// Tells open streams that the server is closing.
    closing: tokio::sync::watch::Sender<bool>,
    /// Tells waiting requests that the turn drain is over.
    drained: tokio::sync::watch::Sender<bool>,
    /// `server.shutdown_timeout`.
    shutdown_timeout: Duration,
    /// The MCP tool host, when servers are configured.
    pub tools: Option<Arc<ToolHub>>,
    /// Knowledge-store housekeeping; finishes its current run at shutdown.
    maintainer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The embedded database in the data dir: the memory store's tables and the
/// embedded bus log.
pub const MEMORY_FILE: &str = "memory.redb";
/// Where data dirs written before the bus moved into [`MEMORY_FILE`] keep the bus
/// log; [`open_embedded_bus`] moves it and deletes the file.
pub const BUS_FILE: &str = "bus.redb";

/// The embedded bus in `db` (the data dir's [`MEMORY_FILE`]), after moving in the
/// log of an older data dir's [`BUS_FILE`], so the messages it holds are answered.
pub async fn open_embedded_bus(
    dir: &std::path::Path,
    db: cairn_redb::Db,
) -> anyhow::Result<EmbeddedBus> {
    let bus = EmbeddedBus::sharing(db)
        .await
        .with_context(|| format!("cannot use {}", dir.join(MEMORY_FILE).display()))?;
    let old = dir.join(BUS_FILE);
    let moved = bus
        .adopt_file(&old)
        .await
        .with_context(|| format!("cannot move the bus log of {}", old.display()))?;
    if moved > 0 {
        tracing::info!(
            records = moved,
            "moved the bus log from bus.redb into memory.redb"
        );
    }
    Ok(bus)
}

/// The part of `server.shutdown_timeout` kept for what follows the turn drain
/// (stopping the actors, committing offsets, flushing exporters).
pub const SHUTDOWN_RESERVE: Duration = Duration::from_secs(5);

/// How often the knowledge store's housekeeping (index building) runs after writes.
const MAINTAIN_EVERY: Duration = Duration::from_secs(15);

/// The stores the InsightsActor writes.
struct InsightsStores {
    memory: Arc<dyn MemoryStore>,
    events: Arc<dyn EventStream>,
    records: Arc<dyn RecordStore>,
}

/// What [`analyzers`] builds: for the InsightsActor, the API, tickets and routing.
#[derive(Clone)]
struct InsightsParts {
    analyzer: Arc<dyn cairn_core::ports::Analyzer>,
    scanner: Arc<dyn cairn_core::insights::PiiScanner>,
    offline: Arc<cairn_insights::OfflineAnalyzer>,
    intent_model: String,
}

/// Builds the analysers: offline, with the LLM analyser on top when a part
/// asks for it. Intent uses MiniLM when `knowledge.minilm_dir` is set (the
/// model retrieval loads, shared), and lexical matching otherwise.
fn analyzers(
    config: &Config,
    knowledge: Option<&KnowledgeBase>,
    model: Arc<dyn cairn_core::ports::ChatModel>,
) -> anyhow::Result<InsightsParts> {
    let k = &config.knowledge;
    use cairn_core::insights_config::IntentModel;
    if config.insights.intent_model == IntentModel::Minilm && k.minilm_dir.is_none() {
        anyhow::bail!("insights.intent_model = \"minilm\" needs knowledge.minilm_dir");
    }
    let embedder: Option<Arc<dyn DenseEmbedder>> = match (&k.minilm_dir, knowledge) {
        _ if config.insights.intent_model == IntentModel::Lexical => None,
        (Some(_), Some(kb)) if k.embeddings_base_url.is_none() => kb.dense(),
        (Some(dir), None) => Some(Arc::new(MiniLmEmbedder::load(dir).map_err(|e| {
            anyhow::anyhow!("knowledge.minilm_dir: cannot load the MiniLM model: {e}")
        })?)),
        _ => None,
    };
    let offline = Arc::new(
        cairn_insights::OfflineAnalyzer::new(&config.insights, embedder)
            .map_err(|e| anyhow::anyhow!("insights.taxonomy_file: {e}"))?,
    );
    let intent_model = offline.classifier("").model();
    let analyzer: Arc<dyn cairn_core::ports::Analyzer> = if config.insights.parts.uses_llm() {
        if !model.is_llm() {
            tracing::warn!(
                "insights.parts asks for the LLM but none is configured: analyses stay offline"
            );
        }
        Arc::new(cairn_insights::llm::LlmAnalyzer::new(
            offline.clone(),
            model,
            config.insights.clone(),
        ))
    } else {
        offline.clone()
    };
    let scanner: Arc<dyn cairn_core::insights::PiiScanner> = Arc::new(offline.recognizer().clone());
    Ok(InsightsParts {
        analyzer,
        scanner,
        offline,
        intent_model,
    })
}

/// Starts the InsightsActor and its bridge.
async fn start_insights(
    config: &Config,
    parts: &InsightsParts,
    runtime: &mut Runtime,
    consuming: Consuming,
    stores: InsightsStores,
) -> anyhow::Result<()> {
    let (analyzer, scanner, intent_model) = (&parts.analyzer, &parts.scanner, &parts.intent_model);
    let deps = cairn_actors::insights::InsightsDeps {
        analyzer: analyzer.clone(),
        scanner: scanner.clone(),
        memory: stores.memory,
        events: stores.events,
        records: stores.records,
        bus: consuming.bus.clone(),
        topics: consuming.topics.clone(),
        alerts_enabled: config.alerts.enabled,
        relay_events: !config.kafka.brokers.is_empty(),
        config: Arc::new(config.insights.clone()),
    };
    runtime
        .start_insights(consuming, deps)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    tracing::info!(intent = %intent_model, analyzer = analyzer.name(), "support intelligence on");
    Ok(())
}

/// Opens the knowledge base in the data dir: hybrid with MiniLM when
/// `knowledge.minilm_dir` is set, BM25 only (with a warning) otherwise. The two
/// kinds live in separate folders because a store's vector layout is fixed.
pub async fn open_knowledge(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<KnowledgeBase> {
    let k = &config.knowledge;
    let dense: Option<Arc<dyn DenseEmbedder>> = match (&k.embeddings_base_url, &k.minilm_dir) {
        (Some(url), _) => {
            let key = match &k.embeddings_api_key_env {
                Some(var) => Some(env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    anyhow::anyhow!(
                        "knowledge.embeddings_api_key_env names `{var}`, but that environment variable is not set"
                    )
                })?),
                None => None,
            };
            let model = k.embeddings_model.clone().unwrap_or_default();
            let e = OpenAiEmbedder::connect(url, &model, key, k.embeddings_batch, &config.llm)
                .await
                .map_err(|e| anyhow::anyhow!("knowledge.embeddings_base_url: {e}"))?;
            Some(Arc::new(e))
        }
        (None, Some(dir)) => Some(Arc::new(MiniLmEmbedder::load(dir).map_err(|e| {
            anyhow::anyhow!("knowledge.minilm_dir: cannot load the MiniLM model: {e}")
        })?)),
        (None, None) => {
            tracing::warn!(
                "no dense embedder (knowledge.minilm_dir or knowledge.embeddings_base_url): retrieval is BM25 only"
            );
            None
        }
    };
    // A store's vector layout is fixed, so each embedder has its own folder.
    let folder = match &dense {
        Some(d) => {
            let name: String = d
                .name()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("knowledge-{name}-{}", d.dimension())
        }
        None => "knowledge-bm25".to_owned(),
    };
    let dim = dense.as_ref().map(|d| d.dimension());
    let store: Arc<dyn VectorStore> = match &k.qdrant_url {
        Some(url) => {
            let key = k.qdrant_api_key_env.as_deref().and_then(env);
            let collection = k
                .qdrant_collection
                .clone()
                .unwrap_or_else(|| format!("cairn_{folder}"));
            Arc::new(
                QdrantServerStore::connect(url, key, &collection, dim)
                    .await
                    .map_err(|e| anyhow::anyhow!("knowledge.qdrant_url: {e}"))?
                    .with_fusion(k.fusion_k, k.dense_weight),
            )
        }
        None => Arc::new(
            EdgeVectorStore::open(&config.server.data_dir.join(folder), dim)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot open the knowledge store (is another cairn process using this data dir?): {e}"
                    )
                })?
                .with_fusion(k.fusion_k, k.dense_weight),
        ),
    };
    let sparse = Bm25Embedder::english().map_err(|e| anyhow::anyhow!("BM25: {e}"))?;
    Ok(KnowledgeBase::new(
        store,
        Arc::new(sparse),
        dense,
        ChunkSettings {
            max_tokens: k.chunk_max_tokens,
            overlap_tokens: k.chunk_overlap_tokens,
        },
    ))
}

/// The authenticator for `config` (used by `serve` and `token`).
pub fn authenticator(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<(Authenticator, bool)> {
    let a = &config.auth;
    let Some(url) = &a.jwks_url else {
        let s = secret::resolve(a, &config.server.data_dir, env)?;
        return Ok((Authenticator::new(&s.bytes, a), s.generated));
    };
    // With an identity provider, HS256 stays only when a secret is configured:
    // no development secret is generated beside it.
    let base = if a.jwt_secret.is_some() || a.jwt_secret_env.is_some() {
        let s = secret::resolve(a, &config.server.data_dir, env)?;
        Authenticator::new(&s.bytes, a)
    } else {
        Authenticator::without_secret(a)
    };
    let jwks = cairn_api::jwks::Jwks::new(
        url.clone(),
        a.jwks_timeout,
        a.jwks_cache_ttl,
        a.jwks_min_refresh,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    Ok((base.with_jwks(jwks), false))
}

/// How uploads are parsed: in a child `cairn parse-document` process when this
/// process is the `cairn` binary (the service), on the blocking pool otherwise
/// (test binaries and tools that embed the runtime have no such command).
pub fn document_parser(config: &Config) -> DocumentParser {
    let k = &config.knowledge;
    let limits = ParseLimits {
        max_bytes: k.max_document_bytes as u64,
        max_decompressed_bytes: k.max_decompressed_bytes,
    };
    match std::env::current_exe() {
        Ok(program) if program.file_stem().is_some_and(|s| s == "cairn") => {
            DocumentParser::Child(ChildParser {
                program,
                args: vec!["parse-document".into()],
                limits,
                timeout: k.parse_timeout,
                memory_bytes: k.parse_memory_mb.saturating_mul(1024 * 1024),
            })
        }
        _ => DocumentParser::InProcess(limits),
    }
}

/// Opens the stores, the bus and the model, and starts the runtime. `extra_tools`
/// join the built-in ones (tests use it).
pub async fn build(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    extra_tools: ToolCatalog,
    model_override: Option<Arc<dyn cairn_core::ports::ChatModel>>,
) -> anyhow::Result<App> {
    cairn_llm::http::install_crypto_provider();
    let dir = &config.server.data_dir;
    crate::datadir::create_private(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let cache_bytes = config.server.embedded_cache_mb.max(1) * 1024 * 1024;
    let kafka = !config.kafka.brokers.is_empty();
    // The embedded store and the embedded bus share one file, so a turn's writes to
    // both join one group commit (one fsync) instead of two.
    let embedded_db = if config.redis.url.is_none() || !kafka {
        let path = dir.join(MEMORY_FILE);
        Some(
            cairn_redb::Db::open_with_cache(&path, cache_bytes).with_context(|| {
                format!(
                    "cannot open {} (is another cairn process using this data dir?)",
                    path.display()
                )
            })?,
        )
    } else {
        None
    };
    type Stores = (
        Arc<dyn MemoryStore>,
        Arc<dyn EventStream>,
        Arc<dyn DocumentStore>,
        Arc<dyn RecordStore>,
        Arc<dyn cairn_core::ports::TicketStore>,
        Arc<dyn cairn_core::ports::CounterStore>,
        Arc<dyn cairn_core::ports::RateLimiter>,
    );
    let (memory, events, documents, records, ticket_store, counter_store, limiter): Stores =
        match &config.redis.url {
            Some(url) => {
                let s = RedisStore::connect(
                    url,
                    &config.redis.key_prefix,
                    config.memory.event_retention,
                )
                .await
                .with_context(|| "cannot connect to redis.url")?;
                (
                    Arc::new(s.clone()),
                    Arc::new(s.clone()),
                    Arc::new(s.clone()),
                    Arc::new(s.clone()),
                    Arc::new(s.clone()),
                    Arc::new(s.clone()),
                    Arc::new(s.rate_limiter()),
                )
            }
            None => {
                let db = embedded_db
                    .clone()
                    .context("internal: the embedded database was not opened")?;
                let s = EmbeddedStore::on_db(db, config.memory.event_retention)
                    .await
                    .with_context(|| format!("cannot use {}", dir.join(MEMORY_FILE).display()))?;
                let local = cairn_store::limits::LocalRateLimiter::new();
                let sweep = local.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(60));
                    loop {
                        tick.tick().await;
                        sweep.sweep();
                    }
                });
                (
                    Arc::new(s.clone()),
                    Arc::new(s.clone()),
                    Arc::new(s.clone()),
                    Arc::new(s.clone()),
                    Arc::new(s.clone()),
                    Arc::new(s),
                    Arc::new(local),
                )
            }
        };
    let budget: Arc<dyn cairn_core::ports::TokenBudget> = Arc::new(
        cairn_store::limits::CounterBudget::new(counter_store.clone(), config.budgets.clone()),
    );
    let prefix = config
        .kafka
        .topic_prefix
        .clone()
        .unwrap_or_else(|| config.bus.topic_prefix.clone());
    let topics = Topics::with_prefix(&prefix);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    if kafka && config.knowledge.enabled && config.knowledge.qdrant_url.is_none() {
        tracing::warn!(
            "Kafka with the embedded knowledge store: each replica keeps its own knowledge base; \
             set knowledge.qdrant_url when running more than one replica"
        );
    }
    if kafka && config.redis.url.is_none() {
        tracing::warn!(
            "Kafka with the embedded memory store: run one replica only, or set redis.url"
        );
    }
    let bus: Arc<dyn EventBus> = if kafka {
        let password = match &config.kafka.sasl_password_env {
            Some(var) => Some(env(var).with_context(|| {
                format!("kafka.sasl_password_env names {var}, which is not set")
            })?),
            None => None,
        };
        let settings = KafkaSettings::from_config(&config.kafka, &prefix, password);
        Arc::new(
            KafkaBus::connect(settings, &topics)
                .await
                .with_context(|| format!("cannot use kafka.brokers = {}", config.kafka.brokers))?,
        )
    } else {
        let db = embedded_db.context("internal: the embedded database was not opened")?;
        Arc::new(
            open_embedded_bus(dir, db)
                .await?
                .keeping_consumed(config.bus.keep_consumed),
        )
    };
    let bus: Arc<dyn EventBus> = if config.metrics.enabled {
        Arc::new(cairn_bus::metered::MeteredBus(bus))
    } else {
        bus
    };
    let model = match model_override {
        Some(m) => m,
        None => cairn_llm::from_config(&config.llm, env)?,
    };
    if !model.is_llm() {
        tracing::info!("no LLM configured: answers come from the offline planner");
    }
    let mut tools = extra_tools;
    tools = tools.with(Arc::new(CurrentTime::default()));
    let alerts_on = config.alerts.enabled;
    let publisher: Arc<dyn AlertPublisher> = Arc::new(BusPublisher {
        bus: bus.clone(),
        topic: topics.alerts.clone(),
    });
    if alerts_on {
        tools = tools.with(Arc::new(EscalateTool::new(publisher.clone())));
    }
    let channels = Arc::new(
        cairn_alerts::notify::channels(
            &config.alerts.receivers,
            env,
            config.alerts.delivery.timeout,
            config.alerts.external_url.clone(),
        )
        .map_err(|e| anyhow::anyhow!(e))?,
    );
    let rules = (alerts_on && config.alerts.rules.enabled)
        .then(|| RuleEngine::new(config.alerts.rules.clone()));
    let signals = match (config.metrics.enabled, rules.clone()) {
        (true, r) => Signals::new(Arc::new(cairn_api::metrics::SignalMetrics {
            next: r.map(|r| r as Arc<dyn cairn_core::signals::SignalSink>),
        })),
        (false, Some(r)) => Signals::new(r),
        (false, None) => Signals::default(),
    };
    let hub = (!config.mcp.servers.is_empty()).then(|| {
        // Header secrets: read through `env` now; a reload reads the process
        // environment for variables not seen at start.
        let known: std::collections::HashMap<String, String> = config
            .mcp
            .servers
            .iter()
            .flat_map(|s| s.headers.values())
            .filter_map(|var| env(var).map(|v| (var.clone(), v)))
            .collect();
        let env: cairn_tools::Env =
            Arc::new(move |k: &str| known.get(k).cloned().or_else(|| std::env::var(k).ok()));
        ToolHub::start(&config.mcp, env)
    });
    if let Some(h) = &hub {
        tools = tools.with_provider(h.clone());
    }
    let mut extra_health = serde_json::Map::new();
    let knowledge = if config.knowledge.enabled {
        let kb = open_knowledge(config, env).await?;
        extra_health.insert(
            "knowledge".into(),
            serde_json::json!({
                "status": "ok",
                "backend": kb.backend(),
                "retrieval": if kb.has_dense() { "hybrid" } else { "bm25_only" },
                "dense_model": kb.dense_model(),
            }),
        );
        tools = tools.with(Arc::new(SearchKnowledgeTool::new(
            kb.clone(),
            config.knowledge.search_limit,
        )));
        Some(kb)
    } else {
        None
    };
    // One set of analysers for insights, ticket enrichment and routing.
    let needs_analysis =
        config.insights.enabled || config.tickets.enabled || !config.agents.is_empty();
    let parts = match needs_analysis {
        true => Some(analyzers(config, knowledge.as_ref(), model.clone())?),
        false => None,
    };
    let routing =
        cairn_desk::routing::AgentRouter::new(&config.agents, &config.routing).map(|router| {
            Arc::new(cairn_actors::Routing {
                router,
                // Routing reads the offline intent: fast, and no model call
                // before every turn.
                classifier: parts
                    .as_ref()
                    .map(|p| p.offline.clone() as Arc<dyn cairn_core::ports::Analyzer>),
            })
        });
    let drafter = model.provider().to_owned();
    let deps = AgentDeps {
        budget: Some(budget.clone()),
        lifecycle: Default::default(),
        webhooks: (!config.turn_webhooks.allowed_hosts.is_empty()).then(|| Relay {
            bus: bus.clone(),
            topic: topics.conversation_events.clone(),
        }),
        memory: memory.clone(),
        events: events.clone(),
        model,
        tools: Arc::new(tools),
        settings: Arc::new(AgentSettings::from_config(config)),
        // Downstream consumers read turn events from Kafka; the embedded bus has none.
        relay: kafka.then(|| Relay {
            bus: bus.clone(),
            topic: topics.conversation_events.clone(),
        }),
        signals: signals.clone(),
        routing,
        analytics: config.analytics.enabled.then(|| Relay {
            bus: bus.clone(),
            topic: topics.conversation_events.clone(),
        }),
        pii: (config.insights.enabled
            && (config.insights.pii == cairn_core::insights::PiiPolicy::RedactModel
                || config
                    .insights
                    .tenants
                    .values()
                    .any(|t| t.pii == Some(cairn_core::insights::PiiPolicy::RedactModel))))
        .then(|| {
            Arc::new(cairn_actors::PiiGuard {
                scanner: Arc::new(cairn_insights::PiiRecognizer::new(
                    config.insights.pii_threshold,
                )),
                config: Arc::new(config.insights.clone()),
            })
        }),
    };
    let ingestion = knowledge.as_ref().map(|kb| {
        (
            IngestDeps {
                kb: kb.clone(),
                documents: documents.clone(),
                parser: document_parser(config),
                settings: IngestSettings {
                    embed_workers: config.knowledge.embed_workers,
                    embed_batch: config.knowledge.embed_batch,
                },
                signals: signals.clone(),
            },
            config.knowledge.ingest_concurrency,
        )
    });
    let consuming = Consuming {
        bus,
        topics,
        memory: memory.clone(),
        dedup_ttl: config.bus.dedup_ttl,
        max_in_flight: config.bus.max_in_flight,
        signals: signals.clone(),
    };
    let mut runtime =
        Runtime::start_with(deps, consuming.clone(), ingestion, config.server.role).await?;
    if alerts_on && config.server.role.runs_actors() {
        let deps = AlertDeps {
            store: records.clone(),
            events: Some(events.clone()),
            channels: channels.clone(),
            settings: Arc::new(cairn_alerts::Settings::new(&config.alerts)),
            delivery: config.alerts.delivery.clone(),
            clock: cairn_alerts::Clock::new(),
            notification_retention: config.alerts.notification_retention,
        };
        let pipeline = AlertPipeline::start(deps, false)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        runtime.start_alerts(consuming.clone(), pipeline);
    }
    let insights = match (config.insights.enabled, &parts) {
        (true, Some(i)) => {
            start_insights(
                config,
                i,
                &mut runtime,
                consuming.clone(),
                InsightsStores {
                    memory: memory.clone(),
                    events: events.clone(),
                    records: records.clone(),
                },
            )
            .await?;
            extra_health.insert(
                "insights".into(),
                serde_json::json!({
                    "status": "ok",
                    "analyzer": i.analyzer.name(),
                    "intent_model": i.intent_model,
                    "pii_policy": config.insights.pii,
                }),
            );
            Some(Arc::new(cairn_api::insights::InsightsApi {
                analyzer: i.analyzer.clone(),
                scanner: i.scanner.clone(),
                config: Arc::new(config.insights.clone()),
                records: records.clone(),
            }))
        }
        _ => {
            extra_health.insert("insights".into(), serde_json::json!({"status": "disabled"}));
            None
        }
    };
    let ticket_deps = match (config.tickets.enabled, &parts) {
        (true, Some(p)) => Some(cairn_actors::desk::TicketDeps {
            tickets: ticket_store.clone(),
            analyzer: p.analyzer.clone(),
            agent: runtime.deps().clone(),
            config: Arc::new(config.tickets.clone()),
            alerts_enabled: alerts_on,
            drafter,
        }),
        _ => None,
    };
    if !config.turn_webhooks.allowed_hosts.is_empty() {
        runtime.start_webhooks(consuming.clone(), config.turn_webhooks.clone());
    }
    runtime.start_desk(
        consuming,
        ticket_deps,
        config
            .analytics
            .enabled
            .then(|| (counter_store.clone(), config.analytics.clone())),
    );
    extra_health.insert(
        "desk".into(),
        serde_json::json!({
            "status": "ok",
            "tickets": config.tickets.enabled,
            "analytics": config.analytics.enabled,
            "agents": config.agents.iter().map(|a| a.name.clone()).collect::<Vec<_>>(),
        }),
    );
    let desk = {
        let offline = parts.as_ref().map(|p| p.offline.clone());
        let categories: cairn_api::desk::Categories = Arc::new(move |t: &cairn_core::TenantId| {
            offline
                .as_ref()
                .map(|o| {
                    o.classifier(t.as_str())
                        .taxonomy()
                        .intents
                        .iter()
                        .map(|i| (i.label.clone(), i.description.clone()))
                        .collect()
                })
                .unwrap_or_default()
        });
        Arc::new(cairn_api::desk::DeskApi {
            tickets: config.tickets.enabled.then(|| ticket_store.clone()),
            counters: config.analytics.enabled.then(|| counter_store.clone()),
            records: records.clone(),
            categories,
            intent_of: insights.clone(),
            config: config.tickets.clone(),
            analytics: config.analytics.clone(),
        })
    };
    extra_health.insert(
        "alerts".into(),
        serde_json::json!({
            "status": if alerts_on { "ok" } else { "disabled" },
            "receivers": config.alerts.receivers.len(),
            "rules": rules.is_some(),
        }),
    );
    let (auth, dev_secret) = authenticator(config, env)?;
    let sweeper = (!config.memory.retention.is_zero()).then(|| {
        let memory = memory.clone();
        let records = records.clone();
        let retention = config.memory.retention;
        let every = config.memory.retention_sweep.max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Ok(age) = chrono::Duration::from_std(retention) else {
                    return;
                };
                match memory.purge_inactive(chrono::Utc::now() - age).await {
                    Ok(purged) if purged.is_empty() => {}
                    Ok(purged) => {
                        // Their support insights go with them.
                        for (tenant, id) in &purged {
                            if let Err(e) =
                                cairn_api::insights::forget(records.as_ref(), tenant, id).await
                            {
                                tracing::warn!(error = %e, "insights of a purged conversation not deleted");
                            }
                        }
                        tracing::info!(
                            purged = purged.len(),
                            "deleted conversations past memory.retention"
                        )
                    }
                    Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
                }
            }
        })
    });
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let (drained, drained_rx) = tokio::sync::watch::channel(false);
    if let Some(r) = rules.filter(|_| config.server.role.runs_actors()) {
        let probe = hub
            .clone()
            .map(|h| Arc::new(move || h.host().breakers()) as cairn_alerts::rules::BreakerProbe);
        tokio::spawn(r.run(publisher.clone(), probe, closing_rx.clone()));
    }
    let maintainer = knowledge.clone().map(|kb| {
        let mut closed = closing_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = closed.wait_for(|c| *c) => return,
                    () = tokio::time::sleep(MAINTAIN_EVERY) => {}
                }
                if let Err(e) = kb.maintain().await {
                    tracing::warn!(error = %e, "knowledge store housekeeping failed");
                }
            }
        })
    });
    let telemetry = crate::telemetry::install(&config.telemetry, env)?;
    let metrics_token =
        match &config.metrics.bearer_token_env {
            Some(var) => Some(env(var).filter(|v| !v.is_empty()).with_context(|| {
                format!("metrics.bearer_token_env names {var}, which is not set")
            })?),
            None => None,
        };
    if config.metrics.enabled {
        cairn_api::metrics::install();
    }
    let state = AppState {
        closing: closing_rx,
        drained: drained_rx,
        console_token: None,
        extra_health: Arc::new(extra_health),
        documents: knowledge.is_some().then_some(documents),
        tools: hub.clone(),
        tools_source: None,
        knowledge: knowledge.clone(),
        runtime: Arc::new(runtime),
        memory,
        events,
        auth: Arc::new(auth),
        settings: Arc::new(ApiSettings {
            max_body_bytes: config.server.max_body_bytes,
            wait_timeout: config.server.wait_timeout,
            sse_keepalive: config.server.sse_keepalive,
            max_document_bytes: config.knowledge.max_document_bytes,
            ingest_scope: Some(config.auth.ingest_scope.clone()).filter(|s| !s.is_empty()),
            desk_scope: Some(config.auth.desk_scope.clone()).filter(|s| !s.is_empty()),
            max_message_chars: config.agent.max_message_chars,
            max_queued_messages: config.agent.max_queued_messages,
            max_fork_messages: config.agent.max_fork_messages,
            turn_webhooks: config.turn_webhooks.clone(),
            schedules: config.schedules.clone(),
            max_conversations_per_user: config.agent.max_conversations_per_user,
            stream_recheck: config.server.stream_recheck,
            allowed_hosts: config.server.allowed_hosts.clone(),
            metrics: config.metrics.enabled,
            metrics_token,
            cors: config.cors.clone(),
            agent_profiles: config
                .agents
                .iter()
                .map(|a| (a.name.clone(), a.description.clone()))
                .collect(),
        }),
        records: records.clone(),
        limits: Some(Arc::new(cairn_api::limits::RequestLimits {
            config: config.rate_limits.clone(),
            limiter,
        })),
        budget: Some(Arc::new(cairn_api::limits::Budget {
            budget,
            config: config.budgets.clone(),
        })),
        streams: cairn_api::streams::StreamLimiter::new(
            config.server.max_streams_per_user,
            config.server.max_streams,
        ),
        deleted: tokio::sync::broadcast::channel(256).0,
        insights,
        desk: Some(desk),
        alerts: alerts_on.then(|| {
            Arc::new(cairn_api::alerts::AlertsApi {
                log: cairn_alerts::AlertLog::new(records.clone()),
                channels: channels.clone(),
                config: config.alerts.clone(),
                scope: Some(config.auth.alerts_scope.clone()).filter(|s| !s.is_empty()),
            })
        }),
    };
    if config.schedules.enabled && config.server.role.runs_actors() {
        tokio::spawn(cairn_api::schedules::run_scheduler(state.clone()));
    }
    {
        // Expired WebSocket tickets are deleted now and then.
        let st = state.clone();
        let mut closed = st.closing.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = closed.wait_for(|c| *c) => return,
                    () = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
                cairn_api::ws::sweep_tickets(&st).await;
            }
        });
    }
    crate::datadir::restrict(dir)
        .with_context(|| format!("cannot restrict the permissions of {}", dir.display()))?;
    Ok(App {
        telemetry,
        state,
        knowledge,
        dev_secret,
        sweeper,
        closing,
        drained,
        shutdown_timeout: config.server.shutdown_timeout,
        tools: hub,
        maintainer: std::sync::Mutex::new(maintainer),
    })
}

impl App {
    /// Serves the API on `listener` until `shutdown` resolves, then shuts down
    /// gracefully within `server.shutdown_timeout`:
    ///
    /// 1. the listener stops accepting; open SSE and WebSocket streams end with
    ///    a reconnect hint (`server_restarting`, close code 1012);
    /// 2. the bus bridges stop (on Kafka the consumers leave their groups and
    ///    commit their offsets) and no new turn starts; running turns get all but
    ///    the last [`SHUTDOWN_RESERVE`] of the timeout to finish;
    /// 3. requests still waiting for a turn answer 503, the supervision tree
    ///    stops (turns still running stay checkpointed, writer leases are
    ///    released), the tool servers stop and the exporters flush.
    ///
    /// Whatever is left when the timeout passes is abandoned: everything
    /// accepted is durable by then, and the next start resumes it.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = if self.state.runtime.role() == ServerRole::Worker {
            cairn_api::router::health_router(self.state.clone())
        } else {
            cairn_api::router(self.state.clone())
        };
        // Small SSE frames and JSON replies go out at once, not after a delayed ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let closed = self.state.closed();
        let mut http = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(closed)
                .into_future(),
        );
        tokio::select! {
            () = shutdown => {}
            r = &mut http => {
                // The server failed on its own: stop what runs and report it.
                self.stop().await;
                return Ok(r??);
            }
        }
        let timeout = self.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        tracing::info!(?timeout, "shutting down");
        let _ = self.closing.send(true);
        let for_turns = timeout.saturating_sub(SHUTDOWN_RESERVE).max(timeout / 2);
        let left = self.state.runtime.drain(for_turns).await;
        if left > 0 {
            tracing::warn!(
                turns = left,
                "turns still running at the end of the drain stay checkpointed and resume on the next start"
            );
        }
        let _ = self.drained.send(true);
        let rest = async {
            // Requests still open (they answer now that the drain is over).
            if tokio::time::timeout_at(deadline, &mut http).await.is_err() {
                tracing::warn!("HTTP connections still open at the shutdown deadline");
            }
            self.stop().await;
            cairn_bus::kafka::wait_closed(deadline.into_std()).await;
        };
        if tokio::time::timeout_at(deadline, rest).await.is_err() {
            tracing::warn!(
                ?timeout,
                "server.shutdown_timeout passed; exiting with work left"
            );
        } else {
            tracing::info!("shut down");
        }
        Ok(())
    }

    /// Stops the runtime and background tasks.
    pub async fn stop(&self) {
        let _ = self.closing.send(true);
        if let Some(s) = &self.sweeper {
            s.abort();
        }
        self.state.runtime.shutdown().await;
        if let Some(h) = &self.tools {
            h.shutdown();
        }
        let maintainer = self
            .maintainer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(m) = maintainer {
            let _ = m.await;
        }
        if let Some(t) = &self.telemetry {
            // The exporter blocks while it flushes: off the async workers.
            let t = t.clone();
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
    }
}

/// How often the config file is checked for changes to `[mcp]`.
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Reloads the MCP servers when the config file's `[mcp]` section changes
/// (polling its modification time; an invalid file is logged and skipped).
pub async fn watch_tools_config(
    path: std::path::PathBuf,
    source: cairn_api::state::ToolsSource,
    hub: Arc<ToolHub>,
) {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut current = source().ok();
    loop {
        tokio::time::sleep(CONFIG_POLL).await;
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match source() {
            Ok(mcp) if Some(&mcp) != current.as_ref() => {
                tracing::info!(path = %path.display(), "config file changed: reloading MCP servers");
                hub.reload(&mcp);
                current = Some(mcp);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "config file changed but is not valid; MCP servers unchanged")
            }
        }
    }
}
