//! `cairn-eval insights`: the offline analysers on the labelled set
//! `eval/insights.jsonl`, beside Presidio and VADER run on the same set in the
//! same command (through `eval/anchors/insights_anchors.py` in a Python
//! environment that has `presidio-analyzer` and `vaderSentiment`), and, with
//! `--bench`, the analysers' throughput.

use anyhow::Context;
use cairn_core::TenantId;
use cairn_core::insights_config::InsightsConfig;
use cairn_core::ports::{AnalysisInput, Analyzer, DenseEmbedder};
use cairn_insights::OfflineAnalyzer;
use cairn_insights::eval::{self, Item, Span};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Arguments of `cairn-eval insights`.
#[derive(clap::Parser, Debug)]
pub struct InsightsArgs {
    /// The labelled set (JSON lines).
    #[arg(long, default_value = "eval/insights.jsonl")]
    pub set: PathBuf,
    /// MiniLM model folder: intent by sentence embeddings (lexical without it).
    #[arg(long, env = "CAIRN_TEST_MINILM_DIR")]
    pub minilm_dir: Option<PathBuf>,
    /// A Python with presidio-analyzer and vaderSentiment: runs the anchors.
    #[arg(long)]
    pub anchors_python: Option<PathBuf>,
    /// Also measure throughput (messages/s).
    #[arg(long)]
    pub bench: bool,
    /// Print each message whose sentiment, intent or PII differs from its label.
    #[arg(long)]
    pub misses: bool,
}

async fn analyse_all(
    an: &OfflineAnalyzer,
    items: &[Item],
) -> anyhow::Result<Vec<cairn_core::insights::Analysis>> {
    let tenant = TenantId::parse("eval")?;
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(32) {
        let inputs: Vec<AnalysisInput> = chunk
            .iter()
            .map(|i| AnalysisInput::customer(tenant.clone(), i.text.clone()))
            .collect();
        out.extend(an.analyze_batch(&inputs).await?);
    }
    Ok(out)
}

fn pii_table(name: &str, items: &[Item], pred: &[Vec<Span>]) -> BTreeMap<String, eval::Prf> {
    let s = eval::score_pii(items, pred);
    println!("\nPII — {name} (precision / recall / F1, labelled count)");
    for (k, v) in &s {
        println!(
            "  {k:<15} {:.3} / {:.3} / {:.3}  ({} labelled, {} predicted)",
            v.precision(),
            v.recall(),
            v.f1(),
            v.labelled,
            v.predicted
        );
    }
    println!(
        "  PII values visible after redaction: {:.3}",
        eval::visible_after_redaction(items, pred)
    );
    s
}

/// Runs the evaluation and prints the report.
pub async fn run(args: InsightsArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.set)
        .with_context(|| format!("cannot read {}", args.set.display()))?;
    let items = eval::load(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.set.display()))?;
    println!(
        "set={} messages={} with_pii={} pii_spans={}",
        args.set.display(),
        items.len(),
        items.iter().filter(|i| !i.pii.is_empty()).count(),
        items.iter().map(|i| i.pii.len()).sum::<usize>()
    );
    let config = InsightsConfig::default();
    let lexical = OfflineAnalyzer::new(&config, None).map_err(|e| anyhow::anyhow!(e))?;
    let dense: Option<Arc<dyn DenseEmbedder>> = match &args.minilm_dir {
        Some(d) => Some(Arc::new(cairn_retrieval::MiniLmEmbedder::load(d)?)),
        None => None,
    };
    let minilm = match &dense {
        Some(d) => {
            Some(OfflineAnalyzer::new(&config, Some(d.clone())).map_err(|e| anyhow::anyhow!(e))?)
        }
        None => None,
    };
    let ours = analyse_all(&lexical, &items).await?;
    let pred: Vec<Vec<Span>> = ours.iter().map(eval::spans_of).collect();
    let mine = pii_table("Cairn offline", &items, &pred);

    let gold_s: Vec<String> = items.iter().map(|i| i.sentiment.clone()).collect();
    let our_s: Vec<String> = ours
        .iter()
        .map(|a| a.sentiment.label.as_str().to_owned())
        .collect();
    let (s_acc, s_f1) = eval::accuracy_and_macro_f1(&gold_s, &our_s);
    println!("\nSentiment — Cairn offline: accuracy {s_acc:.3}, macro-F1 {s_f1:.3}");
    let gold_u: Vec<String> = items.iter().map(|i| i.urgency.clone()).collect();
    let gold_i: Vec<String> = items.iter().map(|i| i.intent.clone()).collect();
    let mut variants = vec![("lexical", ours.clone())];
    if let Some(m) = &minilm {
        variants.push(("minilm", analyse_all(m, &items).await?));
    }
    for (name, a) in &variants {
        let i: Vec<String> = a.iter().map(|x| x.intent.clone()).collect();
        let u: Vec<String> = a.iter().map(|x| x.urgency.as_str().to_owned()).collect();
        let (i_acc, i_f1) = eval::accuracy_and_macro_f1(&gold_i, &i);
        let (u_acc, _) = eval::accuracy_and_macro_f1(&gold_u, &u);
        println!(
            "Intent ({name}): accuracy {i_acc:.3}, macro-F1 {i_f1:.3}; urgency accuracy {u_acc:.3}"
        );
    }
    if args.misses {
        let best = &variants.last().map(|v| v.1.clone()).unwrap_or_default();
        for ((it, a), p) in items.iter().zip(best).zip(&pred) {
            let pii_ok = eval::score_pii(std::slice::from_ref(it), std::slice::from_ref(p))["ALL"]
                .f1()
                == 1.0;
            if a.sentiment.label.as_str() != it.sentiment
                || a.intent != it.intent
                || !pii_ok
                || a.urgency.as_str() != it.urgency
            {
                println!(
                    "  {}: sentiment {}→{} ({:.2}) intent {}→{} urgency {}→{} pii {:?}→{:?} | {}",
                    it.id,
                    it.sentiment,
                    a.sentiment.label.as_str(),
                    a.sentiment.score,
                    it.intent,
                    a.intent,
                    it.urgency,
                    a.urgency.as_str(),
                    it.pii.iter().map(|s| &s.kind).collect::<Vec<_>>(),
                    p.iter().map(|s| &s.kind).collect::<Vec<_>>(),
                    it.text
                );
            }
        }
    }

    if let Some(py) = &args.anchors_python {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../eval/anchors/insights_anchors.py");
        let out = std::process::Command::new(py)
            .arg(&script)
            .arg(&args.set)
            .output()
            .with_context(|| format!("cannot run {}", py.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "the anchors failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut presidio: BTreeMap<String, Vec<(Span, f64)>> = BTreeMap::new();
        let mut vader: BTreeMap<String, f64> = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let id = v["id"].as_str().unwrap_or_default().to_owned();
            let found = v["presidio"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    (
                        Span {
                            kind: e["type"].as_str().unwrap_or_default().to_owned(),
                            start: e["start"].as_u64().unwrap_or(0) as usize,
                            end: e["end"].as_u64().unwrap_or(0) as usize,
                        },
                        e["score"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect();
            presidio.insert(id.clone(), found);
            vader.insert(id, v["vader"].as_f64().unwrap_or(0.0));
        }
        for (label, threshold) in [
            ("Presidio (default threshold)", 0.0),
            ("Presidio (score ≥ 0.5)", 0.5),
        ] {
            let pred: Vec<Vec<Span>> = items
                .iter()
                .map(|i| {
                    presidio
                        .get(&i.id)
                        .into_iter()
                        .flatten()
                        .filter(|(_, s)| *s >= threshold)
                        .map(|(sp, _)| sp.clone())
                        .collect()
                })
                .collect();
            let theirs = pii_table(label, &items, &pred);
            println!(
                "  overall F1: Cairn {:.3} vs {label} {:.3}",
                mine["ALL"].f1(),
                theirs["ALL"].f1()
            );
        }
        let v: Vec<String> = items
            .iter()
            .map(|i| eval::vader_label(*vader.get(&i.id).unwrap_or(&0.0)).to_owned())
            .collect();
        let (v_acc, v_f1) = eval::accuracy_and_macro_f1(&gold_s, &v);
        println!(
            "\nSentiment — VADER: accuracy {v_acc:.3}, macro-F1 {v_f1:.3} (Cairn: {s_acc:.3}, {s_f1:.3}; margin {:+.3})",
            s_f1 - v_f1
        );
    }

    if args.bench {
        bench(&lexical, minilm.as_ref(), &items).await?;
        if let Some(d) = &dense {
            let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
            d.embed(&texts).await?;
            let started = Instant::now();
            for _ in 0..3 {
                d.embed(&texts).await?;
            }
            println!(
                "MiniLM embedding alone: {:.0} texts/s",
                (texts.len() * 3) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Messages per second: the analysers without the intent model (lexical
/// intent) on every core, and with MiniLM intent in batches of 32.
async fn bench(
    lexical: &OfflineAnalyzer,
    minilm: Option<&OfflineAnalyzer>,
    items: &[Item],
) -> anyhow::Result<()> {
    let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
    let tenant = TenantId::parse("eval")?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rounds = 20;
    let started = Instant::now();
    std::thread::scope(|s| {
        for w in 0..cores {
            let texts = &texts;
            let tenant = &tenant;
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build();
                let Ok(rt) = rt else { return };
                for r in 0..rounds {
                    for (k, t) in texts.iter().enumerate() {
                        if (k + r) % cores == w {
                            let _ = rt.block_on(
                                lexical
                                    .analyze(&AnalysisInput::customer(tenant.clone(), t.clone())),
                            );
                        }
                    }
                }
            });
        }
    });
    let n = texts.len() * rounds;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "\nThroughput without the intent model ({cores} threads): {:.0} messages/s ({n} messages, mean {} chars)",
        n as f64 / secs,
        texts.iter().map(|t| t.chars().count()).sum::<usize>() / texts.len().max(1)
    );
    if let Some(m) = minilm {
        // Warm up (the taxonomy's examples are embedded once).
        analyse_all(m, &items[..32.min(items.len())]).await?;
        let rounds = 3;
        let started = Instant::now();
        for _ in 0..rounds {
            analyse_all(m, items).await?;
        }
        let n = items.len() * rounds;
        println!(
            "Throughput with MiniLM intent (batches of 32): {:.0} messages/s ({n} messages)",
            n as f64 / started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
