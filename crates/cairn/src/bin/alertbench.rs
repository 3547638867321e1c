//! `cairn-alertbench`: the alert pipeline under load, in-process (the same
//! composition root as `cairn serve`), notifying a webhook receiver run here.
//!
//! ```text
//! cairn-alertbench [--alerts 50000] [--groups 500] [--batch 500] [--redis URL]
//! ```
//!
//! 1. Throughput: `--alerts` alerts in `--groups` groups are posted through
//!    `POST /v1/alerts` (`--batch` per request, 4 clients); reported: accepted/s
//!    (on the bus) and ingested/s (held by the pipeline, stored: "into grouping").
//! 2. Latency: groups raised one at a time (10 alerts each, 20 ms apart) with
//!    `group_wait` = 1 s; reported: how long after `arrival + group_wait` the
//!    receiver got each group's notification (p50/p99/max).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use cairn::app;
use cairn_actors::ToolCatalog;
use cairn_core::config::Config;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Load test of Cairn's alert pipeline")]
struct Cli {
    /// Alerts in the throughput phase.
    #[arg(long, default_value_t = 50_000)]
    alerts: usize,
    /// Groups they fall into.
    #[arg(long, default_value_t = 500)]
    groups: usize,
    /// Alerts per request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Groups in the latency phase.
    #[arg(long, default_value_t = 200)]
    latency_groups: usize,
    /// Back the pipeline with this Redis instead of the embedded store.
    #[arg(long)]
    redis: Option<String>,
}

/// What the receiver saw: per group name, when its first notification arrived;
/// and how many alerts arrived in all.
#[derive(Clone, Default)]
struct Seen {
    first: Arc<Mutex<HashMap<String, Instant>>>,
    alerts: Arc<Mutex<usize>>,
}

async fn receive(State(s): State<Seen>, body: Bytes) -> &'static str {
    let now = Instant::now();
    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
        let name = v["groupLabels"]["alertname"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        s.first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name)
            .or_insert(now);
        *s.alerts.lock().unwrap_or_else(|p| p.into_inner()) +=
            v["alerts"].as_array().map_or(0, Vec::len);
    }
    "ok"
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let seen = Seen::default();
    let app_rx = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app_rx).await });

    let dir = tempfile::tempdir()?;
    let mut env: Vec<(String, String)> = vec![
        (
            "CAIRN_SERVER__DATA_DIR".into(),
            format!("\"{}\"", dir.path().display()),
        ),
        (
            "CAIRN_AUTH__JWT_SECRET".into(),
            "cairn-alertbench-secret-0123456789".into(),
        ),
        ("CAIRN_KNOWLEDGE__ENABLED".into(), "false".into()),
        (
            "CAIRN_SERVER__MAX_BODY_BYTES".into(),
            (64 * 1024 * 1024).to_string(),
        ),
    ];
    if let Some(url) = &cli.redis {
        env.push(("CAIRN_REDIS__URL".into(), format!("\"{url}\"")));
        env.push((
            "CAIRN_REDIS__KEY_PREFIX".into(),
            format!("\"alertbench-{}\"", uuid::Uuid::new_v4()),
        ));
    }
    let mut config = Config::load(None, env)?;
    let alerts: toml::Table = toml::from_str(&format!(
        "receiver = \"bench\"\ngroup_by = [\"alertname\"]\ngroup_wait = \"1s\"\ngroup_interval = \"1s\"\n\
         max_alerts_per_request = {}\nmax_active_alerts = {}\n[rules]\nenabled = false\n\
         [[receivers]]\nname = \"bench\"\ntenant = \"bench\"\nmax_per_second = 10000.0\nwebhook = {{ url = \"{hook}\" }}\n",
        cli.batch.max(10),
        (cli.alerts + cli.latency_groups * 10) * 2
    ))?;
    config.alerts = alerts.try_into()?;
    config.validate()?;
    let app = app::build(&config, &|_| None, ToolCatalog::new(), None).await?;
    let pipeline = app
        .state
        .runtime
        .alerts()
        .context("the pipeline runs")?
        .clone();
    let token = app.state.auth.mint(
        &cairn_core::UserId::parse("bench")?,
        &cairn_core::TenantId::parse("bench")?,
        Duration::from_secs(3600),
        &["alerts".to_owned()],
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let post = move |batch: Vec<Value>| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let r = http
                .post(format!("{base}/v1/alerts"))
                .bearer_auth(&token)
                .json(&batch)
                .send()
                .await?;
            anyhow::ensure!(r.status().as_u16() == 202, "HTTP {}", r.status());
            anyhow::Ok(())
        }
    };

    // 1. Throughput.
    let all: Vec<Value> = (0..cli.alerts)
        .map(|i| json!({"labels": {"alertname": format!("load{}", i % cli.groups.max(1)), "instance": format!("i{i}"), "severity": "warning"},
                        "annotations": {"summary": format!("load alert {i}")}}))
        .collect();
    let batches: Vec<Vec<Value>> = all
        .chunks(cli.batch.max(1))
        .map(<[Value]>::to_vec)
        .collect();
    let started = Instant::now();
    let queue = Arc::new(Mutex::new(batches));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (queue, post) = (queue.clone(), post.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some(b) = next else { return anyhow::Ok(()) };
                post(b).await?;
            }
        }));
    }
    for c in clients {
        c.await??;
    }
    let accepted = started.elapsed();
    loop {
        if pipeline.status().await.alerts >= cli.alerts {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the pipeline did not take every alert"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ingested = started.elapsed();
    loop {
        if *seen.alerts.lock().unwrap_or_else(|p| p.into_inner()) >= cli.alerts {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not every alert was notified"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let notified = started.elapsed();
    let rate = |d: Duration| cli.alerts as f64 / d.as_secs_f64();
    println!(
        "throughput ({}): {} alerts in {} groups, {} per request\n  accepted (on the bus): {:.0} alerts/s ({:.2} s)\n  into grouping (stored by the pipeline): {:.0} alerts/s ({:.2} s)\n  all notified to the webhook: {:.2} s (includes group_wait 1 s)",
        if cli.redis.is_some() {
            "redis"
        } else {
            "embedded"
        },
        cli.alerts,
        cli.groups,
        cli.batch,
        rate(accepted),
        accepted.as_secs_f64(),
        rate(ingested),
        ingested.as_secs_f64(),
        notified.as_secs_f64()
    );

    // 2. Latency beyond group_wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut arrivals: Vec<(String, Instant)> = Vec::new();
    for g in 0..cli.latency_groups {
        let name = format!("lat{g}");
        let batch: Vec<Value> = (0..10)
            .map(|i| json!({"labels": {"alertname": name, "instance": format!("i{i}")}}))
            .collect();
        let t0 = Instant::now();
        post(batch).await?;
        arrivals.push((name, t0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut h = Histogram::<u64>::new(3)?;
    for (name, t0) in &arrivals {
        let at = loop {
            if let Some(t) = seen
                .first
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
            {
                break *t;
            }
            anyhow::ensure!(Instant::now() < deadline, "group {name} was never notified");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let beyond = at.saturating_duration_since(*t0 + Duration::from_secs(1));
        h.record(beyond.as_micros() as u64)?;
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "latency: {} groups, arrival (POST sent) to notification received, beyond group_wait (1 s)\n  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        arrivals.len(),
        ms(0.5),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
    let _ = stop.send(());
    server.await??;
    Ok(())
}
