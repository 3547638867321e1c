//! `cairn-loadgen`: drives N concurrent conversations through the HTTP API of an
//! in-process Cairn (the same composition root as `cairn serve`) and reports
//! turns/s and turn latency. The model is the offline planner, which costs
//! nothing, and every message is `/tool current_time`, so each turn is a full
//! ReAct loop with one tool call: model → tool → model → answer.
//!
//! ```text
//! cairn-loadgen turns  --conversations 64 --turns 20 [--redis redis://127.0.0.1:6379]
//! cairn-loadgen turns  --redis URL --kafka 127.0.0.1:9092 --replicas 2  # through Kafka
//! cairn-loadgen steps  --turns 500                      # per-step orchestration overhead
//! cairn-loadgen idle   --conversations 10000            # memory of idle conversations
//! cairn-loadgen tools  --concurrency 16 --turns 4000    # server CPU per turn, real model wire
//! ```
//!
//! `tools` is the end-to-end one-tool-call workload: a `cairn serve` child
//! process (the binary next to this one, or `--cairn`), an OpenAI-wire model
//! server in this process that answers a turn's first call with a
//! `calculator_evaluate` tool call and its second with the result, and the
//! `mcp-calculator` server over stdio. It reports turns/s, latency and the CPU
//! the Cairn process spent per turn (from `/proc`), apart from the model server
//! and the load generator, which run in this process.
//!
//! `CAIRN_LOADGEN_APPROVAL_RULES=N` adds N `[approvals]` rules on the turn's tool
//! whose predicates never hold: the cost of the approval check on every call.

/// mimalloc: the service allocates many small, short-lived buffers (JSON, events);
/// measured faster than the system allocator in the load generator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use cairn::app;
use cairn_actors::ToolCatalog;
use cairn_core::config::Config;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "loadgen/tools.rs"]
mod tools;

#[derive(Parser)]
#[command(about = "Load generator for Cairn's HTTP API")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Concurrent conversations, each posting turns back to back (`?wait=true`).
    Turns {
        #[arg(long, default_value_t = 64)]
        conversations: usize,
        #[arg(long, default_value_t = 20)]
        turns: usize,
        /// Back memory and event streams with this Redis instead of the embedded store.
        #[arg(long)]
        redis: Option<String>,
        /// Use this Kafka (bootstrap servers) as the bus instead of the embedded one.
        #[arg(long)]
        kafka: Option<String>,
        /// Cairn replicas in this process, sharing the Kafka consumer groups and
        /// Redis (needs both); conversations are spread over their APIs.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// One conversation, sequential turns: the time between a turn's consecutive
    /// events is the orchestration overhead of one step (nothing else runs).
    Steps {
        #[arg(long, default_value_t = 500)]
        turns: usize,
        #[arg(long)]
        redis: Option<String>,
    },
    /// Memory held by this many idle conversations (each answered one turn and
    /// kept its actor alive).
    Idle {
        #[arg(long, default_value_t = 10_000)]
        conversations: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// One-tool-call turns against a `cairn serve` child process with an
    /// OpenAI-wire model and the calculator MCP server over stdio; reports the
    /// server's CPU per turn.
    Tools {
        /// Conversations posting turns back to back (`?wait=true`).
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Measured turns in all (after one warm-up turn per conversation).
        #[arg(long, default_value_t = 4000)]
        turns: usize,
        #[arg(long)]
        redis: Option<String>,
        /// The `cairn` binary (default: next to this one).
        #[arg(long)]
        cairn: Option<std::path::PathBuf>,
        /// The `mcp-calculator` binary (default: next to this one).
        #[arg(long)]
        calculator: Option<std::path::PathBuf>,
    },
}

struct Target {
    base: String,
    token: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(redis: Option<&str>, idle: Duration) -> anyhow::Result<Target> {
    start_replica(redis, None, idle).await
}

/// The Kafka bus of a run: bootstrap servers and a topic prefix of its own.
struct Kafka<'a> {
    brokers: &'a str,
    prefix: &'a str,
}

/// Secret shared by the replicas of a run, so that one token works on all.
const BENCH_SECRET: &str = "cairn-loadgen-shared-secret-0123456789";

async fn start_replica(
    redis: Option<&str>,
    kafka: Option<&Kafka<'_>>,
    idle: Duration,
) -> anyhow::Result<Target> {
    let dir = tempfile::tempdir()?;
    let mut env: Vec<(String, String)> = vec![
        (
            "CAIRN_SERVER__DATA_DIR".into(),
            format!("\"{}\"", dir.path().display()),
        ),
        (
            "CAIRN_AGENT__IDLE_PASSIVATION".into(),
            format!("\"{}s\"", idle.as_secs()),
        ),
        ("CAIRN_MEMORY__RETENTION".into(), "\"0s\"".into()),
        ("CAIRN_AUTH__JWT_SECRET".into(), BENCH_SECRET.into()),
    ];
    if let Some(url) = redis {
        env.push(("CAIRN_REDIS__URL".into(), format!("\"{url}\"")));
        // Replicas of a Kafka run share the store; other runs get a fresh prefix.
        let prefix = match kafka {
            Some(k) => k.prefix.to_owned(),
            None => format!("bench-{}", uuid::Uuid::new_v4()),
        };
        env.push(("CAIRN_REDIS__KEY_PREFIX".into(), format!("\"{prefix}\"")));
    }
    if let Some(k) = kafka {
        env.push(("CAIRN_KAFKA__BROKERS".into(), format!("\"{}\"", k.brokers)));
        env.push((
            "CAIRN_KAFKA__TOPIC_PREFIX".into(),
            format!("\"{}\"", k.prefix),
        ));
        env.push(("CAIRN_KAFKA__PARTITIONS".into(), "12".into()));
        env.push(("CAIRN_KNOWLEDGE__ENABLED".into(), "false".into()));
    }
    // One benchmark user drives every conversation with `?wait=true`, each an
    // open stream: lift the per-user stream bound (default 16) for the run.
    env.push(("CAIRN_SERVER__MAX_STREAMS_PER_USER".into(), "100000".into()));
    // One user sends every message: the request rate limits would measure
    // themselves (the gateway benchmark covers them).
    env.push(("CAIRN_RATE_LIMITS__ENABLED".into(), "false".into()));
    // CAIRN_LOADGEN_APPROVAL_RULES=N: N approval rules on the turn's tool whose
    // predicates never hold, to measure the approval check on every call.
    if let Some(n) = std::env::var("CAIRN_LOADGEN_APPROVAL_RULES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let rules: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "{{tool = \"current_time\", when = {{pointer = \"/never{i}\", op = \"gt\", value = 1}}}}"
                )
            })
            .collect();
        env.push((
            "CAIRN_APPROVALS__RULES".into(),
            format!("[{}]", rules.join(", ")),
        ));
    }
    let config = Config::load(None, env)?;
    let app = app::build(&config, &|_| None, ToolCatalog::new(), None).await?;
    let token = app.state.auth.mint(
        &cairn_core::UserId::parse("bench")?,
        &cairn_core::TenantId::parse("bench")?,
        Duration::from_secs(24 * 3600),
        &[],
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.serve(listener, async move {
        let _ = rx.await;
    }));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    Ok(Target {
        base,
        token,
        http,
        _dir: dir,
        shutdown: tx,
        task,
    })
}

impl Target {
    async fn conversation(&self) -> anyhow::Result<String> {
        create_conversation(&self.http, &self.base, &self.token).await
    }

    async fn turn(&self, conv: &str) -> anyhow::Result<Value> {
        let body = ask(
            &self.http,
            &self.base,
            &self.token,
            conv,
            "/tool current_time",
        )
        .await?;
        anyhow::ensure!(
            body["steps"].as_array().map_or(0, Vec::len) == 2,
            "expected one tool call"
        );
        Ok(body)
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.task.await??;
        Ok(())
    }
}

/// A new conversation of the token's user; its id.
async fn create_conversation(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<String> {
    let r: Value = http
        .post(format!("{base}/v1/conversations"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await?
        .json()
        .await?;
    Ok(r["id"].as_str().context("no id")?.to_owned())
}

/// Posts `content` with `?wait=true`; the turn, which must have completed.
async fn ask(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    conv: &str,
    content: &str,
) -> anyhow::Result<Value> {
    let r = http
        .post(format!("{base}/v1/conversations/{conv}/messages?wait=true"))
        .bearer_auth(token)
        .json(&json!({ "content": content }))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "HTTP {}", r.status());
    let body: Value = r.json().await?;
    anyhow::ensure!(body["status"] == "completed", "turn failed: {body}");
    Ok(body)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Quiet unless CAIRN_LOG asks (e.g. CAIRN_LOG=warn).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.mode {
        Mode::Turns {
            conversations,
            turns,
            redis,
            kafka,
            replicas,
        } => {
            anyhow::ensure!(
                replicas == 1 || (kafka.is_some() && redis.is_some()),
                "--replicas > 1 needs --kafka and --redis (the replicas share them)"
            );
            let prefix = format!("bench{}.", uuid::Uuid::new_v4().simple());
            let k = kafka.as_deref().map(|brokers| Kafka {
                brokers,
                prefix: &prefix,
            });
            let mut targets = Vec::new();
            for _ in 0..replicas.max(1) {
                let idle = Duration::from_secs(3600);
                targets.push(Arc::new(
                    start_replica(redis.as_deref(), k.as_ref(), idle).await?,
                ));
            }
            if replicas > 1 {
                // Let the consumer groups settle before measuring.
                tokio::time::sleep(Duration::from_secs(8)).await;
            }
            let mut convs = Vec::new();
            for i in 0..conversations {
                let t = targets[i % targets.len()].clone();
                let c = t.conversation().await?;
                convs.push((t, c));
            }
            // Warm-up: one turn per conversation (spawns the actors).
            let mut warm = Vec::new();
            for (t, c) in &convs {
                let (t, c) = (t.clone(), c.clone());
                warm.push(tokio::spawn(async move { t.turn(&c).await }));
            }
            for w in warm {
                w.await??;
            }
            let started = Instant::now();
            let mut tasks = Vec::new();
            for (t, c) in convs {
                tasks.push(tokio::spawn(async move {
                    let mut h = Histogram::<u64>::new(3)?;
                    for _ in 0..turns {
                        let s = Instant::now();
                        t.turn(&c).await?;
                        h.record(s.elapsed().as_micros() as u64)?;
                    }
                    Ok::<_, anyhow::Error>(h)
                }));
            }
            let mut all = Histogram::<u64>::new(3)?;
            for task in tasks {
                all.add(task.await??)?;
            }
            let secs = started.elapsed().as_secs_f64();
            let total = all.len();
            println!(
                "backend={} bus={} replicas={replicas} conversations={conversations} turns={total} elapsed={secs:.2}s turns/s={:.0} p50={:.2}ms p99={:.2}ms max={:.2}ms",
                if redis.is_some() { "redis" } else { "embedded" },
                if kafka.is_some() { "kafka" } else { "embedded" },
                total as f64 / secs,
                ms(&all, 0.5),
                ms(&all, 0.99),
                all.max() as f64 / 1000.0,
            );
            for t in targets {
                if let Ok(t) = Arc::try_unwrap(t) {
                    t.stop().await?;
                }
            }
        }
        Mode::Steps { turns, redis } => {
            let t = start(redis.as_deref(), Duration::from_secs(3600)).await?;
            let conv = t.conversation().await?;
            t.turn(&conv).await?;
            let mut gaps = Histogram::<u64>::new(3)?;
            for _ in 0..turns {
                t.turn(&conv).await?;
            }
            // Read the stored events back and measure the gaps within each turn.
            let mut per_turn: std::collections::HashMap<
                String,
                Vec<chrono::DateTime<chrono::Utc>>,
            > = Default::default();
            for e in read_events(&t, &conv).await? {
                let turn = e["turn_id"].as_str().unwrap_or_default().to_owned();
                let at: chrono::DateTime<chrono::Utc> = serde_json::from_value(e["at"].clone())?;
                per_turn.entry(turn).or_default().push(at);
            }
            let mut steps = 0;
            for ats in per_turn.values() {
                for w in ats.windows(2) {
                    let d = (w[1] - w[0]).num_microseconds().unwrap_or(0).max(0) as u64;
                    gaps.record(d)?;
                    steps += 1;
                }
            }
            println!(
                "backend={} turns={turns} steps={steps} step_overhead_p50={:.3}ms p99={:.3}ms max={:.3}ms",
                if redis.is_some() { "redis" } else { "embedded" },
                ms(&gaps, 0.5),
                ms(&gaps, 0.99),
                gaps.max() as f64 / 1000.0
            );
            t.stop().await?;
        }
        Mode::Tools {
            concurrency,
            turns,
            redis,
            cairn,
            calculator,
        } => {
            tools::run(tools::Options {
                concurrency,
                turns,
                redis,
                cairn,
                calculator,
            })
            .await?
        }
        Mode::Idle {
            conversations,
            concurrency,
        } => {
            let t = Arc::new(start(None, Duration::from_secs(3600)).await?);
            let before = cairn::rss_mb(None);
            let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
            let mut tasks = Vec::new();
            for _ in 0..conversations {
                let (t, sem) = (t.clone(), sem.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = sem.acquire().await?;
                    let c = t.conversation().await?;
                    t.turn(&c).await?;
                    Ok::<_, anyhow::Error>(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = cairn::rss_mb(None);
            let live: Value = t
                .http
                .get(format!("{}/health", t.base))
                .send()
                .await?
                .json()
                .await?;
            println!(
                "idle conversations={} live_actors={} rss_before={before:.1}MB rss_after={after:.1}MB delta={:.1}MB per_conversation={:.1}KB",
                conversations,
                live["components"]["actors"]["live_conversations"],
                after - before,
                (after - before) * 1024.0 / conversations as f64
            );
            if let Ok(t) = Arc::try_unwrap(t) {
                t.stop().await?;
            }
        }
    }
    Ok(())
}

/// Every stored event of a conversation (the SSE `data`, which carries `at`).
async fn read_events(t: &Target, conv: &str) -> anyhow::Result<Vec<Value>> {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let resp = t
        .http
        .get(format!("{}/v1/conversations/{conv}/events", t.base))
        .bearer_auth(&t.token)
        .send()
        .await?;
    let mut s = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    // The stream stays open; stop once it has been quiet for a moment.
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_millis(500), s.next()).await {
        out.push(serde_json::from_str::<Value>(&e.data)?);
    }
    Ok(out)
}
