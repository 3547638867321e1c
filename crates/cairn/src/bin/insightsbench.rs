//! `cairn-insightsbench`: `POST /v1/messages` end to end, in-process (the same
//! composition root as `cairn serve`, embedded mode): messages are posted at a
//! fixed rate and the time from the request to the conversation's
//! `insights.updated` event is measured (p50/p99/max).
//!
//! ```text
//! cairn-insightsbench [--rate 100] [--messages 3000] [--conversations 100] [--minilm-dir DIR]
//! ```

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use cairn::app;
use cairn_actors::ToolCatalog;
use cairn_core::config::Config;
use cairn_core::{ConversationId, TenantId, TurnEvent};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "End-to-end latency of support-message analysis")]
struct Cli {
    /// Messages per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Messages in all.
    #[arg(long, default_value_t = 3000)]
    messages: usize,
    /// Conversations they are spread over.
    #[arg(long, default_value_t = 100)]
    conversations: usize,
    /// MiniLM model folder (intent by embeddings; lexical without it).
    #[arg(long)]
    minilm_dir: Option<PathBuf>,
}

const TEXTS: &[&str] = &[
    "Hi, my card 4111 1111 1111 1111 was charged twice, I want a refund",
    "The dashboard won't load since this morning, our whole team is blocked",
    "How do I invite a teammate to my workspace?",
    "Where is my order? It's been ten days. Call me at (415) 555-2671",
    "Thanks, that fixed it!",
    "I can't log in, the reset email never arrives",
    "Great, another outage. Let me speak to a manager.",
    "Please add an export to CSV",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cairn_llm::http::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let mut env: Vec<(String, String)> = vec![
        (
            "CAIRN_SERVER__DATA_DIR".into(),
            format!("\"{}\"", dir.path().display()),
        ),
        (
            "CAIRN_AUTH__JWT_SECRET".into(),
            "cairn-insightsbench-secret-0123456789".into(),
        ),
        ("CAIRN_KNOWLEDGE__ENABLED".into(), "false".into()),
        ("CAIRN_ALERTS__ENABLED".into(), "false".into()),
        (
            "CAIRN_AGENT__MAX_CONVERSATIONS_PER_USER".into(),
            "100000".into(),
        ),
    ];
    if let Some(d) = &cli.minilm_dir {
        env.push((
            "CAIRN_KNOWLEDGE__MINILM_DIR".into(),
            format!("\"{}\"", d.display()),
        ));
    }
    let config = Config::load(None, env)?;
    let app = app::build(&config, &|_| None, ToolCatalog::new(), None).await?;
    let events = app.state.events.clone();
    let tenant = TenantId::parse("bench")?;
    let token = app.state.auth.mint(
        &cairn_core::UserId::parse("bench")?,
        &tenant,
        Duration::from_secs(3600),
        &[],
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async move {
        let _ = stopped.await;
    }));

    // When each message's insights.updated arrived.
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let convs: Vec<String> = (0..cli.conversations)
        .map(|i| format!("bench-{i}"))
        .collect();
    let mut watchers = Vec::new();
    for c in &convs {
        let mut s = events.subscribe(tenant.clone(), ConversationId::parse(c)?, 0);
        let arrived = arrived.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(Ok(e)) = s.next().await {
                if let TurnEvent::InsightsUpdated { message_id, .. } = e.event {
                    arrived
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(message_id.to_string(), Instant::now());
                }
            }
        }));
    }

    let http = reqwest::Client::new();
    let sent: Arc<Mutex<Vec<(String, Instant, Instant)>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / cli.rate.max(1)));
    let mut posts = Vec::with_capacity(cli.messages);
    let started = Instant::now();
    for i in 0..cli.messages {
        tick.tick().await;
        let (http, base, token, sent) = (http.clone(), base.clone(), token.clone(), sent.clone());
        let conv = convs[i % convs.len()].clone();
        let text = TEXTS[i % TEXTS.len()];
        posts.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = http
                .post(format!("{base}/v1/messages"))
                .bearer_auth(&token)
                .json(&json!({"conversation_id": conv, "sender": "customer", "message": text, "channel": "chat"}))
                .send()
                .await?;
            let accepted = Instant::now();
            anyhow::ensure!(r.status().as_u16() == 202, "HTTP {}", r.status());
            let v: serde_json::Value = r.json().await?;
            let id = v["message_id"].as_str().context("message_id")?.to_owned();
            sent.lock().unwrap_or_else(|p| p.into_inner()).push((id, t0, accepted));
            anyhow::Ok(())
        }));
    }
    for p in posts {
        p.await??;
    }
    let offered = cli.messages as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = arrived.lock().unwrap_or_else(|p| p.into_inner()).len();
        if done >= cli.messages || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrived = arrived.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let sent = sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut from_request = Histogram::<u64>::new(3)?;
    let mut from_accept = Histogram::<u64>::new(3)?;
    let mut missing = 0;
    for (id, t0, accepted) in &sent {
        match arrived.get(id) {
            Some(t) => {
                from_request.record(t.duration_since(*t0).as_micros() as u64)?;
                from_accept.record(t.saturating_duration_since(*accepted).as_micros() as u64)?;
            }
            None => missing += 1,
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "messages={} offered={offered:.1}/s conversations={} intent={}",
        cli.messages,
        cli.conversations,
        if cli.minilm_dir.is_some() {
            "minilm"
        } else {
            "lexical"
        }
    );
    println!(
        "request → insights.updated: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(&from_request, 0.5),
        ms(&from_request, 0.99),
        from_request.max() as f64 / 1000.0
    );
    println!(
        "202 → insights.updated:     p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(&from_accept, 0.5),
        ms(&from_accept, 0.99),
        from_accept.max() as f64 / 1000.0
    );
    println!("not analysed within 60 s: {missing}");
    for w in watchers {
        w.abort();
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok(())
}
