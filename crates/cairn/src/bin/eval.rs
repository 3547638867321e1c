//! `cairn-eval`: retrieval quality on a labelled question set. Ingests a
//! knowledge folder into a fresh Qdrant Edge store and reports, per mode
//! (BM25, dense, hybrid), recall@5 and MRR@10 at document level.
//! `cairn-eval insights` scores the support-intelligence analysers instead
//! (see `cairn::insights_eval`).
//!
//! ```text
//! cairn-eval --kb kb --questions eval/questions.json --minilm-dir <model folder>
//! cairn-eval insights --set eval/insights.jsonl [--minilm-dir …] [--anchors-python …] [--bench]
//! ```

use anyhow::Context;
use cairn_core::TenantId;
use cairn_core::ports::{DenseEmbedder, SearchFilter, SearchMode};
use cairn_retrieval::chunk::ChunkSettings;
use cairn_retrieval::knowledge::KnowledgeBase;
use cairn_retrieval::{Bm25Embedder, EdgeVectorStore, MiniLmEmbedder};
use clap::Parser;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
struct Args {
    /// The knowledge folder.
    #[arg(long, default_value = "kb")]
    kb: PathBuf,
    /// Questions: `{"questions": [{"question", "document_id"}]}`.
    #[arg(long, default_value = "eval/questions.json")]
    questions: PathBuf,
    /// MiniLM model folder (dense and hybrid need it).
    #[arg(long, env = "CAIRN_TEST_MINILM_DIR")]
    minilm_dir: PathBuf,
    /// Weight of the dense ranking in hybrid fusion (sparse is 1).
    #[arg(long, default_value_t = cairn_retrieval::edge::DEFAULT_DENSE_WEIGHT)]
    dense_weight: f32,
    /// The `k` of reciprocal rank fusion.
    #[arg(long, default_value_t = cairn_retrieval::edge::DEFAULT_RRF_K)]
    rrf_k: usize,
    /// Also print each question that hybrid ranks below the better single mode.
    #[arg(long)]
    misses: bool,
}

/// recall@k and reciprocal rank for one ranking of document ids.
fn score(ranked: &[String], want: &str) -> (bool, f64) {
    let pos = ranked.iter().position(|d| d == want);
    (
        pos.is_some_and(|p| p < 5),
        pos.filter(|p| *p < 10)
            .map_or(0.0, |p| 1.0 / (p as f64 + 1.0)),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("insights") {
        let args = cairn::insights_eval::InsightsArgs::parse_from(std::env::args().skip(1));
        return cairn::insights_eval::run(args).await;
    }
    let args = Args::parse();
    cairn_llm::http::install_crypto_provider();
    let q: Value =
        serde_json::from_str(&std::fs::read_to_string(&args.questions).context("questions file")?)?;
    let questions: Vec<(String, String)> = q["questions"]
        .as_array()
        .context("no questions")?
        .iter()
        .map(|x| {
            (
                x["question"].as_str().unwrap_or_default().to_owned(),
                x["document_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let dir = tempfile::tempdir()?;
    let dense: Arc<dyn DenseEmbedder> = Arc::new(MiniLmEmbedder::load(&args.minilm_dir)?);
    let store = EdgeVectorStore::open(&dir.path().join("kb"), Some(dense.dimension()))?
        .with_fusion(args.rrf_k, args.dense_weight);
    let kb = KnowledgeBase::new(
        Arc::new(store),
        Arc::new(Bm25Embedder::english().map_err(|e| anyhow::anyhow!(e))?),
        Some(dense),
        ChunkSettings::default(),
    );
    let tenant = TenantId::parse("eval")?;
    let s = cairn::ingest::ingest_paths(&kb, &tenant, std::slice::from_ref(&args.kb)).await?;
    anyhow::ensure!(s.failed.is_empty(), "ingestion failed: {:?}", s.failed);
    println!(
        "documents={} chunks={} questions={}",
        s.added,
        s.chunks,
        questions.len()
    );
    let mut ranks: Vec<Vec<Option<usize>>> = Vec::new();
    for (name, mode) in [
        ("bm25", SearchMode::Sparse),
        ("dense", SearchMode::Dense),
        ("hybrid", SearchMode::Hybrid),
    ] {
        let (mut hits, mut rr) = (0usize, 0.0f64);
        let mut mode_ranks = Vec::new();
        for (question, want) in &questions {
            let results = kb
                .search(&tenant, question, mode, SearchFilter::default(), 20)
                .await?;
            let mut ranked: Vec<String> = Vec::new();
            for r in results {
                if !ranked.contains(&r.chunk.document_id) {
                    ranked.push(r.chunk.document_id);
                }
            }
            mode_ranks.push(ranked.iter().position(|d| d == want));
            let (hit, reciprocal) = score(&ranked, want);
            hits += usize::from(hit);
            rr += reciprocal;
        }
        let n = questions.len() as f64;
        println!(
            "mode={name:<6} recall@5={:.3} mrr@10={:.3}",
            hits as f64 / n,
            rr / n
        );
        ranks.push(mode_ranks);
    }
    if args.misses {
        // Rank 1 is best; "-" is not in the top 20 chunks.
        let show = |r: Option<usize>| r.map_or("-".to_owned(), |p| (p + 1).to_string());
        for (i, (question, want)) in questions.iter().enumerate() {
            let (b, d, h) = (ranks[0][i], ranks[1][i], ranks[2][i]);
            let key = |r: Option<usize>| r.unwrap_or(usize::MAX);
            if key(h) > key(b).min(key(d)) {
                println!(
                    "miss bm25={} dense={} hybrid={} want={want} q={question}",
                    show(b),
                    show(d),
                    show(h)
                );
            }
        }
    }
    Ok(())
}
