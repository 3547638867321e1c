//! `cairn-kbbench`: knowledge benchmarks on the embedded store (Qdrant Edge) or a
//! Qdrant server.
//!
//! ```text
//! # ingestion throughput through the ingestion actors (parse/chunk actor +
//! # embedding pool + Qdrant Edge), BM25 only or with MiniLM
//! cairn-kbbench ingest --documents 2000
//! cairn-kbbench ingest --documents 200 --minilm-dir "$(scripts/minilm-dir.sh)"
//! # hybrid query latency over N chunks (HNSW built first)
//! cairn-kbbench query --chunks 100000 --minilm-dir "$(scripts/minilm-dir.sh)"
//! # the same against a Qdrant server (gRPC URL; a fresh collection, dropped after)
//! cairn-kbbench ingest --documents 2000 --qdrant-url http://127.0.0.1:6334
//! cairn-kbbench query --chunks 100000 --qdrant-url http://127.0.0.1:6334 --minilm-dir …
//! # the MiniLM encoder alone: chunks/s, tokens/s and GFLOP/s at a chunk size
//! cairn-kbbench embed --chunk-tokens 60 --minilm-dir "$(scripts/minilm-dir.sh)"
//! ```
//!
//! Documents are built from the paragraphs of the sample knowledge base (`kb/`),
//! each a different mix, so BM25 sees real support vocabulary. For the query
//! benchmark the chunks' dense vectors are MiniLM embeddings of a pool of real
//! paragraphs plus per-chunk noise (embedding 100,000 chunks with MiniLM first
//! would take most of an hour here and measures nothing about the query); the
//! queries are the evaluation questions, embedded with MiniLM.

use anyhow::Context;
use cairn_actors::ingestion::{
    IngestDeps, IngestMsg, IngestSettings, IngestionActor, start_embed_pool, submit,
};
use cairn_core::ports::{
    ChunkRecord, DenseEmbedder, DocumentRecord, DocumentStore, JobStatus, SearchFilter, SearchMode,
    SearchRequest, SparseEmbedder, VectorPoint, VectorStore,
};
use cairn_core::{DocumentSubmission, TenantId};
use cairn_retrieval::chunk::ChunkSettings;
use cairn_retrieval::knowledge::KnowledgeBase;
use cairn_retrieval::{Bm25Embedder, EdgeVectorStore, MiniLmEmbedder, QdrantServerStore};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Knowledge benchmarks (ingestion throughput, hybrid query latency)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Ingestion throughput in chunks/s.
    Ingest {
        /// Documents to ingest.
        #[arg(long, default_value_t = 2000)]
        documents: usize,
        /// Paragraphs per document.
        #[arg(long, default_value_t = 12)]
        paragraphs: usize,
        /// MiniLM folder; without it, BM25 only.
        #[arg(long)]
        minilm_dir: Option<PathBuf>,
        /// Embedding workers.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Chunks per embedding batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Documents in progress at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// The sample knowledge base.
        #[arg(long, default_value = "kb")]
        kb: PathBuf,
        /// A Qdrant server's gRPC URL; without it, the embedded Qdrant Edge.
        #[arg(long)]
        qdrant_url: Option<String>,
    },
    /// The MiniLM encoder alone (no parsing, no store): chunks/s, WordPiece
    /// tokens/s and the dense layers' GFLOP/s.
    Embed {
        /// MiniLM folder.
        #[arg(long)]
        minilm_dir: PathBuf,
        /// Chunks to embed.
        #[arg(long, default_value_t = 600)]
        chunks: usize,
        /// Chunk size in the chunker's estimated tokens (words × 4/3); chunks
        /// are consecutive words of the sample knowledge base.
        #[arg(long, default_value_t = 60)]
        chunk_tokens: usize,
        /// Threads embedding at once, each taking the next batch.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Chunks per forward pass.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// The sample knowledge base.
        #[arg(long, default_value = "kb")]
        kb: PathBuf,
    },
    /// Hybrid (and dense, sparse) query latency over N chunks.
    Query {
        /// Chunks in the store.
        #[arg(long, default_value_t = 10000)]
        chunks: usize,
        /// Queries to time per mode.
        #[arg(long, default_value_t = 2000)]
        queries: usize,
        /// MiniLM folder (dense vectors for queries and the paragraph pool).
        #[arg(long, env = "CAIRN_TEST_MINILM_DIR")]
        minilm_dir: PathBuf,
        /// The sample knowledge base.
        #[arg(long, default_value = "kb")]
        kb: PathBuf,
        /// The evaluation questions (the queries).
        #[arg(long, default_value = "eval/questions.json")]
        questions: PathBuf,
        /// A Qdrant server's gRPC URL; without it, the embedded Qdrant Edge.
        #[arg(long)]
        qdrant_url: Option<String>,
    },
}

/// The store under test: Qdrant Edge in `dir`, or a fresh collection on the
/// Qdrant server at `url` (its handle is kept to wait for the indexes and to
/// drop the collection at the end).
async fn open_store(
    dir: &std::path::Path,
    url: Option<&str>,
    dense_dim: Option<usize>,
) -> anyhow::Result<(Arc<dyn VectorStore>, Option<QdrantServerStore>)> {
    match url {
        None => Ok((Arc::new(EdgeVectorStore::open(dir, dense_dim)?), None)),
        Some(url) => {
            let collection = format!("cairn_bench_{}", uuid::Uuid::new_v4().simple());
            let s = QdrantServerStore::connect(url, None, &collection, dense_dim).await?;
            Ok((Arc::new(s.clone()), Some(s)))
        }
    }
}

/// Every paragraph of the sample knowledge base (Markdown blocks that are not headings).
fn paragraphs(kb: &PathBuf) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (_, file) in cairn::ingest::collect_files(std::slice::from_ref(kb))? {
        let text = std::fs::read_to_string(&file)?;
        for block in text.split("\n\n") {
            let b = block.trim();
            if !b.is_empty() && !b.starts_with('#') {
                out.push(b.replace('\n', " "));
            }
        }
    }
    anyhow::ensure!(!out.is_empty(), "no paragraphs under {}", kb.display());
    Ok(out)
}

/// A Markdown document of `n` sections, each one paragraph from the pool.
fn document(pool: &[String], rng: &mut StdRng, i: usize, n: usize) -> String {
    let mut s = format!("# Support digest {i}\n\n");
    for p in 0..n {
        let para = &pool[rng.random_range(0..pool.len())];
        s.push_str(&format!("## Topic {p} of digest {i}\n\n{para}\n\n"));
    }
    s
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50={:.2}ms p99={:.2}ms max={:.2}ms",
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

/// Multiply-adds of MiniLM-L6's dense layers per token, ×2 for FLOPs: six
/// layers of Q, K, V and output projections (4·384²) and the feed-forward pair
/// (2·384·1536). Attention scores add 4·384·L per token; not counted.
const DENSE_FLOP_PER_TOKEN: f64 = 2.0 * 6.0 * (4.0 * 384.0 * 384.0 + 2.0 * 384.0 * 1536.0);

fn embed(
    minilm_dir: &std::path::Path,
    chunks: usize,
    chunk_tokens: usize,
    workers: usize,
    batch: usize,
    kb: &PathBuf,
) -> anyhow::Result<()> {
    let words: Vec<String> = paragraphs(kb)?
        .iter()
        .flat_map(|p| p.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let per_chunk = (chunk_tokens * 3 / 4).max(1);
    let texts: Vec<String> = (0..chunks)
        .map(|i| {
            let start = (i * per_chunk) % words.len().saturating_sub(per_chunk).max(1);
            words[start..(start + per_chunk).min(words.len())].join(" ")
        })
        .collect();
    let model = MiniLmEmbedder::load(minilm_dir)?;
    let tokens = model.count_tokens(&texts)?;
    // Warm-up (page in the weights, start the threads).
    model.embed_blocking(&texts[..batch.min(texts.len())])?;
    let batches: Vec<Vec<String>> = texts.chunks(batch.max(1)).map(<[String]>::to_vec).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(b) = batches.get(i) else {
                            return Ok(());
                        };
                        model.embed_blocking(b)?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?)
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "embed chunks={chunks} chunk_tokens={chunk_tokens} wordpiece_tokens={tokens} ({:.1}/chunk) workers={workers} batch={batch} seconds={secs:.2} chunks_per_s={:.1} tokens_per_s={:.0} dense_gflops={:.1}",
        tokens as f64 / chunks as f64,
        chunks as f64 / secs,
        tokens as f64 / secs,
        tokens as f64 * DENSE_FLOP_PER_TOKEN / secs / 1e9,
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn ingest(
    documents: usize,
    paragraphs_per_doc: usize,
    minilm_dir: Option<PathBuf>,
    workers: usize,
    batch: usize,
    concurrency: usize,
    kb_dir: PathBuf,
    qdrant_url: Option<String>,
) -> anyhow::Result<()> {
    let pool = paragraphs(&kb_dir)?;
    let dir = tempfile::tempdir()?;
    let dense: Option<Arc<dyn DenseEmbedder>> = match &minilm_dir {
        Some(d) => Some(Arc::new(MiniLmEmbedder::load(d)?)),
        None => None,
    };
    let (store, server) = open_store(
        &dir.path().join("kb"),
        qdrant_url.as_deref(),
        dense.as_ref().map(|d| d.dimension()),
    )
    .await?;
    let kb = KnowledgeBase::new(
        store,
        Arc::new(Bm25Embedder::english().map_err(|e| anyhow::anyhow!(e))?),
        dense,
        ChunkSettings::default(),
    );
    let records =
        cairn_store::EmbeddedStore::open_and_init(&dir.path().join("memory.redb"), 10).await?;
    let documents_store: Arc<dyn DocumentStore> = Arc::new(records);
    let deps = IngestDeps {
        kb: kb.clone(),
        documents: documents_store.clone(),
        parser: cairn_retrieval::isolation::DocumentParser::InProcess(Default::default()),
        settings: IngestSettings {
            embed_workers: workers,
            embed_batch: batch,
        },
        signals: Default::default(),
    };
    let (pool_ref, pool_task) = start_embed_pool(kb.clone(), workers).await?;
    let (actor, actor_task) =
        ractor::Actor::spawn(None, IngestionActor, (deps, pool_ref.clone())).await?;
    let tenant = TenantId::parse("bench")?;
    let mut rng = StdRng::seed_from_u64(7);
    let docs: Vec<(String, String)> = (0..documents)
        .map(|i| {
            (
                format!("digest-{i}.md"),
                document(&pool, &mut rng, i, paragraphs_per_doc),
            )
        })
        .collect();
    let bytes: usize = docs.iter().map(|(_, d)| d.len()).sum();
    let started = Instant::now();
    run_ingest(&actor, documents_store.as_ref(), &tenant, docs, concurrency).await?;
    let elapsed = started.elapsed();
    let chunks = kb.count_all(&tenant).await?;
    println!(
        "store={} mode={} documents={documents} chunks={chunks} bytes={bytes} workers={workers} batch={batch} concurrency={concurrency} seconds={:.2} chunks_per_s={:.0}",
        if server.is_some() {
            "qdrant-server"
        } else {
            "qdrant-edge"
        },
        if minilm_dir.is_some() {
            "minilm+bm25"
        } else {
            "bm25"
        },
        elapsed.as_secs_f64(),
        chunks as f64 / elapsed.as_secs_f64()
    );
    // Stop the actors and drop the store before its folder goes.
    actor.stop(None);
    pool_ref.stop(None);
    actor_task.await?;
    pool_task.await?;
    drop(kb);
    drop(dir);
    if let Some(s) = server {
        s.drop_collection().await?;
    }
    Ok(())
}

/// Submits every document (at most `concurrency` in flight) and waits for all.
async fn run_ingest(
    actor: &ractor::ActorRef<IngestMsg>,
    documents: &dyn DocumentStore,
    tenant: &TenantId,
    docs: Vec<(String, String)>,
    concurrency: usize,
) -> anyhow::Result<()> {
    use base64::Engine;
    use futures::StreamExt;
    let now = chrono::Utc::now();
    let mut subs = Vec::with_capacity(docs.len());
    for (id, text) in docs {
        let job = uuid::Uuid::now_v7().to_string();
        documents
            .put_document(
                tenant,
                &DocumentRecord {
                    document_id: id.clone(),
                    title: None,
                    source: Some(id.clone()),
                    tags: vec![],
                    date: None,
                    format: "markdown".into(),
                    bytes: text.len() as u64,
                    job_id: job.clone(),
                    status: JobStatus::Queued,
                    outcome: None,
                    error: None,
                    chunks: None,
                    created_at: now,
                    updated_at: now,
                },
            )
            .await?;
        subs.push(DocumentSubmission {
            document_id: id.clone(),
            job_id: job,
            format: "markdown".into(),
            title: None,
            source: Some(id),
            tags: vec![],
            date: None,
            content_base64: base64::engine::general_purpose::STANDARD.encode(text),
        });
    }
    let results: Vec<_> = futures::stream::iter(subs)
        .map(|s| submit(actor, tenant.clone(), s))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for r in results {
        r.context("the ingestion actor stopped")?
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(())
}

async fn query(
    chunks: usize,
    queries: usize,
    minilm_dir: PathBuf,
    kb_dir: PathBuf,
    questions: PathBuf,
    qdrant_url: Option<String>,
) -> anyhow::Result<()> {
    let pool = paragraphs(&kb_dir)?;
    let minilm = MiniLmEmbedder::load(&minilm_dir)?;
    let bm25 = Bm25Embedder::english().map_err(|e| anyhow::anyhow!(e))?;
    let pool_vectors = minilm
        .embed(&pool)
        .await
        .map_err(|e| anyhow::anyhow!(e.0))?;
    let dir = tempfile::tempdir()?;
    let (store, server) = open_store(
        &dir.path().join("kb"),
        qdrant_url.as_deref(),
        Some(minilm.dimension()),
    )
    .await?;
    let tenant = TenantId::parse("bench")?;
    let mut rng = StdRng::seed_from_u64(11);
    let started = Instant::now();
    let mut written = 0;
    while written < chunks {
        let n = (chunks - written).min(2000);
        let points: Vec<VectorPoint> = (written..written + n)
            .map(|i| {
                let p = rng.random_range(0..pool.len());
                let text = format!("{} (note {i})", pool[p]);
                let mut v: Vec<f32> = pool_vectors[p]
                    .iter()
                    .map(|x| x + rng.random_range(-0.02..0.02))
                    .collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                VectorPoint {
                    sparse: bm25.embed_document(&text),
                    dense: Some(v),
                    chunk: ChunkRecord {
                        document_id: format!("doc-{}", i / 10),
                        chunk_index: (i % 10) as u32,
                        title: "Support digest".into(),
                        section_path: vec![],
                        end: text.len(),
                        text,
                        start: 0,
                        source: None,
                        tags: vec![],
                        page: None,
                        version: "v1".into(),
                        date: None,
                    },
                }
            })
            .collect();
        store.upsert(&tenant, points).await?;
        written += n;
    }
    let load = started.elapsed();
    let started = Instant::now();
    store.maintain().await?;
    if let Some(s) = &server {
        s.wait_optimized(std::time::Duration::from_secs(3600))
            .await?;
    }
    let optimize = started.elapsed();
    let backend = if server.is_some() {
        "qdrant-server"
    } else {
        "qdrant-edge"
    };
    println!(
        "store={backend} chunks={chunks} load_s={:.1} optimize_s={:.1}",
        load.as_secs_f64(),
        optimize.as_secs_f64()
    );
    let q: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&questions)?)?;
    let texts: Vec<String> = q["questions"]
        .as_array()
        .context("no questions")?
        .iter()
        .filter_map(|x| x["question"].as_str().map(str::to_owned))
        .collect();
    let dense_q = minilm
        .embed(&texts)
        .await
        .map_err(|e| anyhow::anyhow!(e.0))?;
    let sparse_q: Vec<_> = texts.iter().map(|t| bm25.embed_query(t)).collect();
    for (name, mode) in [
        ("hybrid", SearchMode::Hybrid),
        ("dense", SearchMode::Dense),
        ("sparse", SearchMode::Sparse),
    ] {
        let mut h = Histogram::<u64>::new(3)?;
        for i in 0..queries + 50 {
            let k = i % texts.len();
            let req = SearchRequest {
                tenant: tenant.clone(),
                dense: Some(dense_q[k].clone()),
                sparse: Some(sparse_q[k].clone()),
                mode,
                filter: SearchFilter::default(),
                limit: 5,
            };
            let t = Instant::now();
            let hits = store.search(req).await?;
            let us = t.elapsed().as_micros() as u64;
            anyhow::ensure!(!hits.is_empty(), "no hits");
            if i >= 50 {
                h.record(us.max(1))?;
            }
        }
        println!(
            "store={backend} chunks={chunks} mode={name} queries={queries} {}",
            percentiles(&h)
        );
    }
    // The whole query path: MiniLM embeds the question, then the hybrid search.
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..200.min(queries) {
        let k = i % texts.len();
        let t = Instant::now();
        let v = minilm
            .embed(std::slice::from_ref(&texts[k]))
            .await
            .map_err(|e| anyhow::anyhow!(e.0))?;
        store
            .search(SearchRequest {
                tenant: tenant.clone(),
                dense: v.into_iter().next(),
                sparse: Some(bm25.embed_query(&texts[k])),
                mode: SearchMode::Hybrid,
                filter: SearchFilter::default(),
                limit: 5,
            })
            .await?;
        h.record((t.elapsed().as_micros() as u64).max(1))?;
    }
    println!(
        "store={backend} chunks={chunks} mode=hybrid+embed queries={} {}",
        200.min(queries),
        percentiles(&h)
    );
    drop(store);
    if let Some(s) = server {
        s.drop_collection().await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cairn_llm::http::install_crypto_provider();
    match Cli::parse().mode {
        Mode::Ingest {
            documents,
            paragraphs,
            minilm_dir,
            workers,
            batch,
            concurrency,
            kb,
            qdrant_url,
        } => {
            ingest(
                documents,
                paragraphs,
                minilm_dir,
                workers,
                batch,
                concurrency,
                kb,
                qdrant_url,
            )
            .await
        }
        Mode::Embed {
            minilm_dir,
            chunks,
            chunk_tokens,
            workers,
            batch,
            kb,
        } => embed(&minilm_dir, chunks, chunk_tokens, workers, batch, &kb),
        Mode::Query {
            chunks,
            queries,
            minilm_dir,
            kb,
            questions,
            qdrant_url,
        } => query(chunks, queries, minilm_dir, kb, questions, qdrant_url).await,
    }
}
