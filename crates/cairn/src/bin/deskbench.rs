//! `cairn-deskbench`: the support desk's two figures, in-process (the same
//! composition root as `cairn serve`, embedded mode, no LLM):
//!
//! - `tickets`: tickets posted over HTTP (`POST /v1/tickets`) and enriched by
//!   the ticket enricher — analysis, risk, summary and a reply drafted by the
//!   offline planner over a BM25 knowledge base — per second, from the first
//!   post to the last enrichment.
//! - `analytics`: `GET /v1/analytics/overview` latency (p50/p99/max) once the
//!   counters hold `--messages` messages (each with its turn and analysis) and
//!   `--tickets` enriched tickets spread over `--days`, seeded through the
//!   consumer's own path (events folded into counter updates, applied in
//!   batches with dedup); the tickets are stored in the TicketStore too.
//!
//! ```text
//! cairn-deskbench tickets [--tickets 2000] [--concurrency 32]
//! cairn-deskbench analytics [--messages 1000000] [--tickets 100000] [--days 30] [--requests 1000]
//! ```

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cairn::app;
use cairn_actors::ToolCatalog;
use cairn_core::config::Config;
use cairn_core::desk::*;
use cairn_core::envelope::*;
use cairn_core::{TenantId, UserId};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Support desk benchmarks: ticket enrichment rate, analytics latency")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Tickets enriched per second, offline.
    Tickets {
        #[arg(long, default_value_t = 2000)]
        tickets: usize,
        /// Posts in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// `GET /v1/analytics/overview` latency over seeded counters.
    Analytics {
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        #[arg(long, default_value_t = 100_000)]
        tickets: usize,
        #[arg(long, default_value_t = 30)]
        days: i64,
        #[arg(long, default_value_t = 1000)]
        requests: usize,
    },
}

const SECRET: &str = "cairn-deskbench-secret-0123456789";

const TICKETS: &[(&str, &str)] = &[
    (
        "Charged twice",
        "My card was charged twice for the same invoice, please refund the duplicate.",
    ),
    (
        "Cannot log in",
        "The reset email never arrives and I cannot log in since yesterday.",
    ),
    (
        "Export to CSV",
        "Could you add an export of reports to CSV? It would help our team.",
    ),
    (
        "Outage again",
        "The dashboard is down again, the whole team is blocked. This is unacceptable.",
    ),
    (
        "Thanks",
        "Thanks for the quick fix yesterday, everything works now.",
    ),
];

struct Running {
    base: String,
    token: String,
    state: cairn_api::state::AppState,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(extra: &[(&str, &str)]) -> anyhow::Result<Running> {
    cairn_llm::http::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let mut env: Vec<(String, String)> = vec![
        (
            "CAIRN_SERVER__DATA_DIR".into(),
            format!("\"{}\"", dir.path().display()),
        ),
        ("CAIRN_AUTH__JWT_SECRET".into(), SECRET.into()),
        ("CAIRN_ALERTS__ENABLED".into(), "false".into()),
    ];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let config = Config::load(None, env)?;
    let app = app::build(&config, &|_| None, ToolCatalog::new(), None).await?;
    let token = app.state.auth.mint(
        &UserId::parse("bench")?,
        &TenantId::parse("bench")?,
        Duration::from_secs(7200),
        &["ingest".to_owned(), "desk".to_owned()],
    )?;
    let state = app.state.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.serve(listener, async move {
            let _ = stopped.await;
        })
        .await
    });
    Ok(Running {
        base,
        token,
        state,
        stop,
        server,
        _dir: dir,
    })
}

async fn tickets(n: usize, concurrency: usize) -> anyhow::Result<()> {
    let r = start(&[]).await?;
    let http = reqwest::Client::new();
    for (id, title, text) in [
        (
            "refunds",
            "Refund policy",
            "# Refunds\n\nA duplicate charge is refunded to the original card within five business days.\n",
        ),
        (
            "login",
            "Login help",
            "# Login\n\nIf the reset email does not arrive, check the spam folder or ask support to resend it.\n",
        ),
        (
            "status",
            "Service status",
            "# Outages\n\nDuring an outage the status page shows progress; the team posts updates every 30 minutes.\n",
        ),
    ] {
        let res = http
            .post(format!("{}/v1/documents", r.base))
            .bearer_auth(&r.token)
            .json(&json!({"document_id": id, "title": title, "text": text}))
            .send()
            .await?;
        anyhow::ensure!(
            res.status().as_u16() == 202,
            "document: HTTP {}",
            res.status()
        );
    }
    loop {
        let res: serde_json::Value = http
            .get(format!("{}/v1/documents", r.base))
            .bearer_auth(&r.token)
            .send()
            .await?
            .json()
            .await?;
        let done = res["items"]
            .as_array()
            .is_some_and(|a| a.len() == 3 && a.iter().all(|d| d["job"]["status"] == "done"));
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store = r
        .state
        .desk
        .as_ref()
        .and_then(|d| d.tickets.clone())
        .ok_or_else(|| anyhow::anyhow!("tickets are off"))?;
    let tenant = TenantId::parse("bench")?;
    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut posts = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (http, base, token) = (http.clone(), r.base.clone(), r.token.clone());
        let (subject, body) = TICKETS[i % TICKETS.len()];
        posts.push(tokio::spawn(async move {
            let res = http
                .post(format!("{base}/v1/tickets"))
                .bearer_auth(&token)
                .json(
                    &json!({"ticket_id": format!("bench-{i}"), "subject": subject,
                              "body": format!("{body} (ticket {i})"), "channel": "email",
                              "customer_id": format!("cust-{}", i % 500)}),
                )
                .send()
                .await;
            drop(permit);
            res.map(|r| r.status().as_u16() == 202).unwrap_or(false)
        }));
    }
    let mut accepted = 0;
    for p in posts {
        if p.await? {
            accepted += 1;
        }
    }
    let posted = started.elapsed();
    // Done when no ticket is pending any more.
    let mut q = TicketQuery::new(tenant.clone(), 1);
    q.enrichment = Some(EnrichmentState::Pending);
    q.max_scan = usize::MAX;
    loop {
        if store.list_tickets(&q).await?.items.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = started.elapsed();
    let mut failed = TicketQuery::new(tenant, 10);
    failed.enrichment = Some(EnrichmentState::Failed);
    failed.max_scan = usize::MAX;
    let failures = store.list_tickets(&failed).await?.items.len();
    println!(
        "tickets: {accepted}/{n} accepted in {:.2} s ({:.0}/s); all enriched after {:.2} s: {:.0} tickets/s end to end; {failures} failed",
        posted.as_secs_f64(),
        accepted as f64 / posted.as_secs_f64(),
        all.as_secs_f64(),
        accepted as f64 / all.as_secs_f64(),
    );
    let _ = r.stop.send(());
    r.server.await??;
    Ok(())
}

async fn analytics(
    messages: usize,
    tickets: usize,
    days: i64,
    requests: usize,
) -> anyhow::Result<()> {
    let r = start(&[("CAIRN_KNOWLEDGE__ENABLED", "false")]).await?;
    let desk = r
        .state
        .desk
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the desk is off"))?;
    let counters = desk
        .counters
        .clone()
        .ok_or_else(|| anyhow::anyhow!("analytics are off"))?;
    let store = desk
        .tickets
        .clone()
        .ok_or_else(|| anyhow::anyhow!("tickets are off"))?;
    let tenant = TenantId::parse("bench")?;
    let now = chrono::Utc::now();
    let span = days * 86_400;
    // A deterministic spread over the range (no RNG needed).
    let at = |i: usize| now - chrono::Duration::seconds((i as i64 * 7919) % span);
    let intents = [
        "billing",
        "refund_request",
        "technical_issue",
        "account_access",
        "feature_request",
        "complaint",
        "general_question",
    ];
    let sentiments = ["positive", "neutral", "negative"];
    let seed_started = Instant::now();
    let ttl = Duration::from_secs(90 * 86_400);
    let mut batch = Vec::with_capacity(3000);
    let flush = |batch: &mut Vec<CounterUpdate>| {
        let b = std::mem::take(batch);
        let c = counters.clone();
        async move { c.apply_counters(&b, ttl).await }
    };
    for i in 0..messages {
        let t = at(i);
        let conv = format!("c{}", i / 4);
        let msg = json!({"message_id": format!("m{i}"), "accepted_at": t});
        let turn = TurnSummary {
            tenant_id: tenant.clone(),
            conversation_id: conv.clone(),
            turn_id: format!("t{i}"),
            first_turn: i % 4 == 0,
            outcome: if i % 50 == 0 { "failed" } else { "answered" }.into(),
            latency_ms: 200 + (i as u64 * 37) % 3000,
            agent: None,
            intent: None,
            tools: vec![ToolUse {
                tool: "search_knowledge".into(),
                is_error: i % 40 == 0,
            }],
            usage: cairn_core::Usage {
                input_tokens: 300,
                output_tokens: 80,
            },
            ended_at: t,
        };
        let analysed = AnalysedMessage {
            tenant_id: tenant.clone(),
            conversation_id: conv,
            message_id: format!("m{i}"),
            intent: intents[i % intents.len()].into(),
            sentiment: sentiments[(i / 3) % 3].into(),
            urgency: "medium".into(),
            escalate: i % 97 == 0,
            accepted_at: t,
        };
        for env in [
            Envelope::new(USER_MESSAGE, tenant.clone(), msg),
            Envelope::new(TURN_SUMMARY, tenant.clone(), serde_json::to_value(&turn)?),
            Envelope::new(
                MESSAGE_ANALYSED,
                tenant.clone(),
                serde_json::to_value(&analysed)?,
            ),
        ] {
            batch.extend(cairn_desk::analytics::fold(&env));
        }
        if batch.len() >= 3000 {
            flush(&mut batch).await?;
        }
    }
    for i in 0..tickets {
        let t = at(i * 10 + 3);
        let sub = TicketSubmission {
            ticket_id: format!("T{i}"),
            tenant_id: tenant.clone(),
            subject: TICKETS[i % TICKETS.len()].0.into(),
            body: TICKETS[i % TICKETS.len()].1.into(),
            channel: if i % 3 == 0 { "email" } else { "chat" }.into(),
            priority: Priority::Normal,
            customer_id: format!("cust-{}", i % 5000),
            revision: 1,
            submitted_at: t,
        };
        let mut ticket = Ticket::from_submission(&sub);
        let risk = ((i * 37) % 1000) as f64 / 1000.0;
        ticket.enrichment = EnrichmentState::Enriched;
        ticket.category = Some(intents[i % intents.len()].into());
        ticket.sentiment = Some(sentiments[i % 3].into());
        ticket.risk = Some(risk);
        store.create_ticket(&ticket).await?;
        let enriched = TicketEnriched {
            tenant_id: tenant.clone(),
            ticket_id: sub.ticket_id.clone(),
            revision: 1,
            state: EnrichmentState::Enriched,
            category: ticket.category.clone(),
            sentiment: ticket.sentiment.clone(),
            risk: Some(risk),
            high_risk: risk >= 0.8,
            created_at: t,
        };
        for env in [
            Envelope::new(
                TICKET_SUBMITTED,
                tenant.clone(),
                serde_json::to_value(&sub)?,
            ),
            Envelope::new(
                TICKET_ENRICHED,
                tenant.clone(),
                serde_json::to_value(&enriched)?,
            ),
        ] {
            batch.extend(cairn_desk::analytics::fold(&env));
        }
        if batch.len() >= 3000 {
            flush(&mut batch).await?;
        }
    }
    flush(&mut batch).await?;
    println!(
        "seeded {messages} messages (with turns and analyses) and {tickets} tickets over {days} days in {:.1} s",
        seed_started.elapsed().as_secs_f64()
    );
    let http = reqwest::Client::new();
    for range_days in [7i64, days, 90] {
        let from = (now - chrono::Duration::days(range_days))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let url = format!("{}/v1/analytics/overview?from={from}", r.base);
        let mut hist = Histogram::<u64>::new(3)?;
        let mut body = serde_json::Value::Null;
        for i in 0..requests + 50 {
            let t0 = Instant::now();
            let res = http.get(&url).bearer_auth(&r.token).send().await?;
            anyhow::ensure!(res.status().is_success(), "HTTP {}", res.status());
            body = res.json().await?;
            if i >= 50 {
                hist.record(t0.elapsed().as_micros() as u64)?;
            }
        }
        println!(
            "overview over {range_days} days: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests; messages {}, tickets {})",
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            hist.max() as f64 / 1000.0,
            requests,
            body["messages"],
            body["tickets"]["total_tickets"],
        );
    }
    let _ = r.stop.send(());
    r.server.await??;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().what {
        What::Tickets {
            tickets: n,
            concurrency,
        } => tickets(n, concurrency).await,
        What::Analytics {
            messages,
            tickets: t,
            days,
            requests,
        } => analytics(messages, t, days, requests).await,
    }
}
