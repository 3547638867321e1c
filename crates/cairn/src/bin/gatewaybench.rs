//! `cairn-gatewaybench`: what the gateway costs.
//!
//! ```text
//! cairn-gatewaybench [--requests 20000] [--sockets 10000]
//! ```
//!
//! 1. Per-request overhead of rate limiting, metrics and tracing: the same
//!    router in process (no network), `GET /v1/conversations/{id}` with a token,
//!    `--requests` sequential requests after a warm-up, first with those three
//!    off, then with them on (rate limits high enough never to refuse, the
//!    Prometheus recorder installed, OTLP spans exported to a receiver run
//!    here). Reported: p50/p99 of each and the difference. Token verification
//!    runs in both (the API cannot run without it); its own cost is measured
//!    beside: HS256 and RS256 `verify` calls.
//! 2. WebSocket fan-out: a `cairn serve` child (the release binary beside this
//!    one), `--sockets` WebSockets opened on one conversation, the server's
//!    resident memory before and after, then one message posted and the time
//!    until every socket has received its `answer.completed`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use cairn::app;
use cairn_actors::ToolCatalog;
use cairn_core::config::Config;
use cairn_core::{TenantId, UserId};
use clap::Parser;
use hdrhistogram::Histogram;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

#[derive(Parser)]
#[command(about = "Cost of Cairn's gateway: middleware overhead and WebSocket fan-out")]
struct Cli {
    /// Requests measured per configuration.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// WebSockets opened in the fan-out phase (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
}

/// Which of the three are on.
#[derive(Clone, Copy)]
struct Parts {
    limits: bool,
    metrics: bool,
    tracing: bool,
}

fn config(dir: &Path, parts: Parts, otlp: &str) -> anyhow::Result<Config> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cairn.example.toml");
    let mut c = Config::load(Some(&example), Vec::<(String, String)>::new())?;
    c.server.data_dir = dir.to_owned();
    c.knowledge.enabled = false;
    c.auth.jwt_secret = Some("gateway-bench-secret-0123456789".into());
    c.rate_limits.enabled = parts.limits;
    for class in [
        &mut c.rate_limits.messages,
        &mut c.rate_limits.uploads,
        &mut c.rate_limits.reads,
    ] {
        class.tenant.per_minute = 100_000_000;
        class.tenant.burst = 100_000_000;
        class.user.per_minute = 100_000_000;
        class.user.burst = 100_000_000;
    }
    c.metrics.enabled = parts.metrics;
    c.telemetry.otlp_endpoint = parts.tracing.then(|| otlp.to_owned());
    Ok(c)
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn overhead(requests: usize, parts: Parts, otlp: &str) -> anyhow::Result<Histogram<u64>> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), parts, otlp)?;
    let app = app::build(&cfg, &|_| None, ToolCatalog::new(), None).await?;
    let token = app.state.auth.mint(
        &UserId::parse("ana")?,
        &TenantId::parse("acme")?,
        Duration::from_secs(3600),
        &[],
    )?;
    let router = cairn_api::router(app.state.clone());
    let create = axum::http::Request::post("/v1/conversations")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("host", "cairn.example.com")
        .body(axum::body::Body::from("{}"))?;
    let resp = router.clone().oneshot(create).await?;
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    let id = serde_json::from_slice::<serde_json::Value>(&body)?["id"]
        .as_str()
        .context("no conversation id")?
        .to_owned();
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..(requests + requests / 10) {
        let req = axum::http::Request::get(format!("/v1/conversations/{id}"))
            .header("authorization", format!("Bearer {token}"))
            .header("host", "cairn.example.com")
            .body(axum::body::Body::empty())?;
        let started = Instant::now();
        let resp = router.clone().oneshot(req).await?;
        let _ = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
        let took = started.elapsed().as_nanos() as u64;
        if i >= requests / 10 {
            h.record(took)?;
        }
    }
    app.stop().await;
    Ok(h)
}

fn verify_cost(n: usize) -> anyhow::Result<(f64, f64)> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cfg = cairn_core::config::AuthConfig::default();
    let hs = cairn_api::auth::Authenticator::new(b"gateway-bench-secret-0123456789", &cfg);
    let token = hs.mint(
        &UserId::parse("ana")?,
        &TenantId::parse("acme")?,
        Duration::from_secs(3600),
        &[],
    )?;
    let started = Instant::now();
    for _ in 0..n {
        rt.block_on(hs.verify(&token))
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let hs_us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    // RS256 with a JWKS held in memory: the same path as identity-provider tokens.
    let pem = include_bytes!("../../tests/fixtures/jwt/rsa_a.pem");
    let key = EncodingKey::from_rsa_pem(pem)?;
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256)?;
    jwk.common.key_id = Some("k".into());
    let jwks = serde_json::json!({"keys": [jwk]}).to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/jwks", listener.local_addr()?);
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().take(4) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: max-age=3600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                jwks.len()
            );
        }
    });
    let jwks_cache = cairn_api::jwks::Jwks::new(
        url,
        Duration::from_secs(5),
        Duration::from_secs(600),
        Duration::from_secs(30),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let rs = cairn_api::auth::Authenticator::without_secret(&cfg).with_jwks(jwks_cache);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k".into());
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({"sub": "ana", "tenant": "acme", "exp": now + 3600});
    let token = jsonwebtoken::encode(&header, &claims, &key)?;
    rt.block_on(rs.verify(&token))
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let started = Instant::now();
    for _ in 0..n {
        rt.block_on(rs.verify(&token))
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let rs_us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    Ok((hs_us, rs_us))
}

/// Opens one WebSocket with a raw handshake; returns the stream after the 101.
async fn open_ws(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
) -> anyhow::Result<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: cairn.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(s.read(&mut byte).await? == 1, "closed during the handshake");
        head.push(byte[0]);
        anyhow::ensure!(head.len() < 8192, "handshake too long");
    }
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 101"),
        "refused: {}",
        String::from_utf8_lossy(&head)
    );
    Ok(s)
}

async fn fanout(sockets: usize) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let exe = std::env::current_exe()?;
    let cairn = exe.with_file_name("cairn");
    anyhow::ensure!(
        cairn.exists(),
        "{} is missing: cargo build --release --bin cairn",
        cairn.display()
    );
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let file = dir.path().join("cairn.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nmax_streams = 50000\n\
             max_streams_per_user = 50000\nsse_keepalive = \"120s\"\n[auth]\n\
             jwt_secret = \"gateway-bench-secret-0123456789\"\n[knowledge]\nenabled = false\n\
             [rate_limits]\nenabled = false\n",
            dir.path().join("data").display()
        ),
    )?;
    let mut child = tokio::process::Command::new(&cairn)
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .env("CAIRN_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("no pid")?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let auth = cairn_api::auth::Authenticator::new(
        b"gateway-bench-secret-0123456789",
        &Default::default(),
    );
    let token = auth.mint(
        &UserId::parse("ana")?,
        &TenantId::parse("acme")?,
        Duration::from_secs(3600),
        &[],
    )?;
    let conv: serde_json::Value = http
        .post(format!("{base}/v1/conversations"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await?
        .json()
        .await?;
    let id = conv["id"].as_str().context("no id")?.to_owned();
    let before = cairn::rss_mb(Some(pid));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let path = format!("/v1/conversations/{id}/ws");
    let started = Instant::now();
    let mut streams = Vec::with_capacity(sockets);
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..sockets {
        let (path, token) = (path.clone(), token.clone());
        batch.spawn(async move { open_ws(addr, &path, &token).await });
        if batch.len() >= 256 || i + 1 == sockets {
            while let Some(r) = batch.join_next().await {
                streams.push(r??);
            }
        }
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cairn::rss_mb(Some(pid));
    println!(
        "websockets: {sockets} open in {:.1} s; server RSS {before:.0} MB before, {after:.0} MB after ({:.1} KB per socket)",
        opened.as_secs_f64(),
        (after - before) * 1024.0 / sockets as f64
    );
    // Fan-out: one answer reaches every socket.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let posted = Instant::now() + Duration::from_millis(500);
    for mut s in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut tail: Vec<u8> = Vec::new();
            loop {
                let Ok(n) = s.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.windows(16).any(|w| w == b"answer.completed") {
                    let _ = tx.send(posted.elapsed());
                    return;
                }
                if tail.len() > 64 {
                    tail.drain(..tail.len() - 64);
                }
            }
        });
    }
    drop(tx);
    tokio::time::sleep_until(posted.into()).await;
    let r = http
        .post(format!("{base}/v1/conversations/{id}/messages"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"content": "what time is it?"}))
        .send()
        .await?;
    anyhow::ensure!(r.status().as_u16() == 202, "post: {}", r.status());
    let mut h = Histogram::<u64>::new(3)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Ok(Some(d)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        h.record(d.as_micros() as u64)?;
        if h.len() as usize == sockets {
            break;
        }
    }
    println!(
        "fan-out: answer.completed reached {}/{sockets} sockets; after the post p50 {:.0} ms, p99 {:.0} ms, last {:.0} ms; server RSS {:.0} MB",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        cairn::rss_mb(Some(pid))
    );
    let _ = child.kill().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // An OTLP receiver that accepts and drops spans.
    let receiver = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(|| async {
            (
                [("content-type", "application/x-protobuf")],
                Vec::<u8>::new(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let otlp = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let off = Parts {
        limits: false,
        metrics: false,
        tracing: false,
    };
    // The recorder and the tracer provider are process-wide once installed:
    // the runs go from fewer parts to more.
    let runs = [
        ("none", off),
        (
            "rate limits",
            Parts {
                limits: true,
                ..off
            },
        ),
        (
            "+ metrics",
            Parts {
                limits: true,
                metrics: true,
                ..off
            },
        ),
        (
            "+ tracing (all three)",
            Parts {
                limits: true,
                metrics: true,
                tracing: true,
            },
        ),
    ];
    println!(
        "GET /v1/conversations/{{id}} in process, {} requests each:",
        cli.requests
    );
    let mut bare: Option<Histogram<u64>> = None;
    for (name, parts) in runs {
        let h = overhead(cli.requests, parts, &otlp).await?;
        let base = bare.get_or_insert_with(|| h.clone());
        println!(
            "  {name:<24} p50 {:6.1} µs  p99 {:6.1} µs  (added p50 {:+6.1} µs, p99 {:+6.1} µs)",
            pct(&h, 0.5),
            pct(&h, 0.99),
            pct(&h, 0.5) - pct(base, 0.5),
            pct(&h, 0.99) - pct(base, 0.99),
        );
    }
    let (hs, rs) = tokio::task::spawn_blocking(|| verify_cost(5_000)).await??;
    println!(
        "token verification (in both runs): HS256 {hs:.1} µs, RS256 via JWKS {rs:.1} µs per token"
    );
    if cli.sockets > 0 {
        fanout(cli.sockets).await?;
    }
    Ok(())
}
