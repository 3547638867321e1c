//! `cairn-chaos`: Cairn's promises under random faults (run by `scripts/chaos.sh`).
//!
//! ```text
//! cairn-chaos --seed 7 --duration 120 --mode embedded|redis
//!   [--cairn target/debug/cairn] [--tickets target/debug/mcp-tickets]
//! ```
//!
//! Starts a `cairn serve` replica (its own data dir; in `redis` mode on a
//! private `redis-server` with AOF `appendfsync always`), an OpenAI-wire model
//! server in this process that answers every question with one call to the
//! `tickets` MCP server's idempotent `update_ticket` (a note naming the
//! message) and then an answer, and keeps conversations busy while a fault
//! injector, driven by the printed seed, repeatedly:
//! - kills the replica with SIGKILL and starts it again;
//! - makes the model server answer 429, 500, or not at all (a timeout);
//! - crashes the MCP server (SIGKILL; Cairn restarts it) or hangs it
//!   (SIGSTOP, then SIGCONT);
//! - in `redis` mode, kills Redis with SIGKILL and restarts it from its AOF.
//!
//! Then it stops the faults, lets the work settle, and checks, printing counts:
//! every message accepted with 202 has exactly one outcome (`answer.completed`,
//! or `turn.failed` with a reason); no note of `update_ticket` (one per
//! message) was applied twice; every SSE client that resumed with
//! `Last-Event-ID` saw the stored ids with no gap and no duplicate; no read by
//! another tenant found a conversation. The last line is `violations: N`.

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Cairn under random faults: counts of invariant violations")]
struct Cli {
    /// Seed of the fault schedule and the load (printed, so a run can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of faults and load.
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// `embedded` (the data dir) or `redis` (memory in a private redis-server).
    #[arg(long, default_value = "embedded")]
    mode: String,
    /// The `cairn` binary (default: next to this one).
    #[arg(long)]
    cairn: Option<PathBuf>,
    /// The `mcp-tickets` binary (default: next to this one).
    #[arg(long)]
    tickets: Option<PathBuf>,
    /// Conversations kept busy.
    #[arg(long, default_value_t = 8)]
    conversations: usize,
    /// Seconds the work may take to settle after the faults stop.
    #[arg(long, default_value_t = 180)]
    settle: u64,
    /// No faults: steady load only (the soak, `scripts/soak.sh`).
    #[arg(long)]
    no_faults: bool,
    /// Append a CSV sample every 10 s: seconds, the replica's RSS (KiB) and open
    /// file descriptors, Redis `used_memory` (bytes), the data dir's size
    /// (bytes), messages accepted, and the p50/p99 of `POST …/messages` (ms)
    /// over the interval.
    #[arg(long)]
    samples: Option<PathBuf>,
}

const SECRET: &str = "chaos-secret-0123456789abcdef0123456789";
const TENANT: &str = "default";

/// The model server's fault, set by the injector.
const MODEL_OK: u8 = 0;
const MODEL_429: u8 = 1;
const MODEL_500: u8 = 2;
const MODEL_HANG: u8 = 3;

#[derive(Clone, Default)]
struct Model {
    fault: Arc<AtomicU8>,
    requests: Arc<AtomicUsize>,
}

/// One call to `update_ticket` noting the message, then an answer.
async fn chat(State(m): State<Model>, Json(body): Json<Value>) -> Response {
    m.requests.fetch_add(1, Ordering::Relaxed);
    match m.fault.load(Ordering::Relaxed) {
        MODEL_429 => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"}})),
            )
                .into_response();
        }
        MODEL_500 => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": {"message": "The server had an error", "type": "server_error"}})),
            )
                .into_response();
        }
        MODEL_HANG => tokio::time::sleep(Duration::from_secs(600)).await,
        _ => {}
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    if last["role"] == "tool" {
        return Json(json!({"choices": [{"message": {"role": "assistant", "content": "The ticket is updated."}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4}}))
        .into_response();
    }
    let user = last["content"].as_str().unwrap_or_default();
    let mark = user.split_whitespace().last().unwrap_or("none");
    let tool = body["tools"]
        .as_array()
        .and_then(|ts| {
            ts.iter()
                .filter_map(|t| t["function"]["name"].as_str())
                .find(|n| n.contains("update_ticket"))
        })
        .unwrap_or("tickets_update_ticket")
        .to_owned();
    let args = json!({"id": 1, "note": format!("chaos:{mark}")});
    Json(json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
        {"id": format!("call_{mark}"), "type": "function", "function": {"name": tool, "arguments": args.to_string()}}
    ]}}], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}))
    .into_response()
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Pids of processes whose command line holds `needle`.
fn pids_of(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

struct Redis {
    proc: Option<Proc>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> anyhow::Result<Redis> {
        let mut r = Redis {
            proc: None,
            port: free_port()?,
            dir: dir.to_owned(),
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server starts")?;
        self.proc = Some(Proc(child));
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("redis-server did not listen")
    }

    fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            signal(p.0.id(), "-KILL");
            let _ = p.0.wait();
        }
        self.proc = None;
    }
}

struct Replica {
    /// The running process's pid (0 while down), for the sampler.
    pid: Arc<std::sync::atomic::AtomicU32>,
    proc: Option<Proc>,
    cairn: PathBuf,
    data: PathBuf,
    config: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
}

impl Replica {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.cairn);
        for (k, _) in std::env::vars() {
            if k.starts_with("CAIRN_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .envs(self.env.iter().cloned())
            .env("CAIRN_LOG", "error")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.data.with_extension("log"))?,
            );
        let child = cmd.spawn().context("cairn starts")?;
        self.pid.store(child.id(), Ordering::Relaxed);
        self.proc = Some(Proc(child));
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            signal(p.0.id(), "-KILL");
            let _ = p.0.wait();
        }
        self.proc = None;
    }

    async fn wait_ready(&self, http: &reqwest::Client) -> bool {
        for _ in 0..600 {
            if let Ok(r) = http.get(format!("{}/ready", self.base())).send().await
                && r.status().is_success()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// What the load saw accepted.
#[derive(Default)]
struct Ledger {
    /// conversation → accepted turn ids.
    accepted: Mutex<BTreeMap<String, Vec<String>>>,
    refused: AtomicUsize,
    /// Latencies (µs) of accepted posts since the last sample.
    latencies: Mutex<Vec<u64>>,
    cross_tenant_reads: AtomicUsize,
    cross_tenant_leaks: AtomicUsize,
}

async fn post_json(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
    key: Option<&str>,
) -> Option<(u16, Value)> {
    let mut rb = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .timeout(Duration::from_secs(10));
    if let Some(k) = key {
        rb = rb.header("Idempotency-Key", k);
    }
    let r = rb.send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.unwrap_or(Value::Null)))
}

/// Keeps `conv` busy: one message at a time, each retried with its
/// Idempotency-Key until it is accepted (or the run ends).
async fn load(
    http: reqwest::Client,
    base: String,
    token: String,
    conv: String,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let mark = uuid::Uuid::new_v4().simple().to_string();
        let key = uuid::Uuid::new_v4().to_string();
        let url = format!("{base}/v1/conversations/{conv}/messages");
        let body = json!({"content": format!("please note {mark}")});
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let sent = Instant::now();
            match post_json(&http, &url, &token, &body, Some(&key)).await {
                Some((202, v)) => {
                    ledger
                        .latencies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(sent.elapsed().as_micros() as u64);
                    if let Some(t) = v["turn_id"].as_str() {
                        let mut a = ledger.accepted.lock().unwrap_or_else(|e| e.into_inner());
                        let turns = a.entry(conv.clone()).or_default();
                        if !turns.iter().any(|x| x == t) {
                            turns.push(t.to_owned());
                        }
                    }
                    break;
                }
                Some((s, _)) if s < 500 && s != 429 && s != 409 => {
                    ledger.refused.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn redis_used_memory(port: u16) -> u64 {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "memory"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| {
                    l.strip_prefix("used_memory:")
                        .map(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

/// Writes a CSV row every 10 s until `stop` (see `--samples`).
async fn sampler(
    path: PathBuf,
    pid: Arc<std::sync::atomic::AtomicU32>,
    redis_port: Option<u16>,
    data: PathBuf,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(&path)?;
    writeln!(
        f,
        "seconds,rss_kib,fds,redis_used_memory,data_dir_bytes,accepted,p50_ms,p99_ms"
    )?;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let pid = pid.load(Ordering::Relaxed);
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| {
                        l.strip_prefix("VmRSS:")
                            .map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    })
                    .flatten()
            })
            .unwrap_or(0);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        let redis = redis_port.map(redis_used_memory).unwrap_or(0);
        let mut lat =
            std::mem::take(&mut *ledger.latencies.lock().unwrap_or_else(|e| e.into_inner()));
        lat.sort_unstable();
        let pct = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |v| *v as f64 / 1000.0)
        };
        let accepted: usize = ledger
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(Vec::len)
            .sum();
        writeln!(
            f,
            "{},{rss},{fds},{redis},{},{accepted},{:.2},{:.2}",
            started.elapsed().as_secs(),
            dir_bytes(&data),
            pct(0.5),
            pct(0.99)
        )?;
        f.flush()?;
    }
    Ok(())
}

/// Another tenant tries the conversations now and then: it must find nothing.
async fn intruder(
    http: reqwest::Client,
    base: String,
    token: String,
    convs: Vec<String>,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let conv = &convs[i % convs.len()];
        i += 1;
        for path in ["", "/messages"] {
            if let Ok(r) = http
                .get(format!("{base}/v1/conversations/{conv}{path}"))
                .bearer_auth(&token)
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                ledger.cross_tenant_reads.fetch_add(1, Ordering::Relaxed);
                if r.status().is_success() {
                    ledger.cross_tenant_leaks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An SSE client that reconnects with `Last-Event-ID` whenever its stream
/// breaks; returns every id it received, in order.
async fn follower(
    http: reqwest::Client,
    base: String,
    token: String,
    conv: String,
    stop: Arc<AtomicBool>,
    resumes: Arc<AtomicUsize>,
) -> Vec<u64> {
    let mut seen: Vec<u64> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut rb = http
            .get(format!("{base}/v1/conversations/{conv}/events"))
            .bearer_auth(&token);
        if let Some(last) = seen.last() {
            rb = rb.header("Last-Event-ID", last.to_string());
            resumes.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(r) = rb.send().await
            && r.status().is_success()
        {
            let mut events = r.bytes_stream().eventsource();
            loop {
                let next = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
                match next {
                    // An `error` event (the store failed mid-stream) carries no id
                    // of its own: an SSE parser reports the last one again.
                    Ok(Some(Ok(e))) if e.event == "error" => break,
                    Ok(Some(Ok(e))) => {
                        if let Ok(id) = e.id.parse::<u64>() {
                            seen.push(id);
                        }
                    }
                    Ok(_) => break,
                    Err(_) if stop.load(Ordering::Relaxed) => return seen,
                    Err(_) => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seen
}

/// The conversation's stored events, read from the start until the stream
/// stays quiet: (id, type, data).
async fn read_events(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    conv: &str,
) -> anyhow::Result<Vec<(u64, String, Value)>> {
    let r = http
        .get(format!("{base}/v1/conversations/{conv}/events?after=0"))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "events: {}", r.status());
    let mut events = r.bytes_stream().eventsource();
    let mut out = Vec::new();
    while let Ok(Some(Ok(e))) =
        tokio::time::timeout(Duration::from_millis(800), events.next()).await
    {
        if e.event == "error" {
            anyhow::bail!("the stream failed: {}", e.data);
        }
        if let Ok(id) = e.id.parse::<u64>() {
            out.push((
                id,
                e.event,
                serde_json::from_str(&e.data).unwrap_or(Value::Null),
            ));
        }
    }
    Ok(out)
}

fn is_terminal(kind: &str) -> bool {
    kind == "answer.completed" || kind == "turn.failed" || kind == "turn.cancelled"
}

/// Notes written by `update_ticket`, read from the tickets server's SQLite store
/// with Python's sqlite3 (no SQLite client in this binary).
fn ticket_notes(db: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys,json; c=sqlite3.connect(sys.argv[1]); \
             print(json.dumps([n for (ns,) in c.execute('SELECT notes FROM tickets') for n in json.loads(ns)]))",
        ])
        .arg(db)
        .output()
        .context("python3 reads the tickets store")?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCodeOk> {
    cairn_llm::http::install_crypto_provider();
    let cli = Cli::parse();
    let seed = cli.seed.unwrap_or_else(|| rand::rng().random());
    println!("seed: {seed} (replay: --seed {seed})");
    println!("mode: {} duration: {}s", cli.mode, cli.duration);
    anyhow::ensure!(
        cli.mode == "embedded" || cli.mode == "redis",
        "--mode is embedded or redis"
    );
    let here = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let cairn = cli.cairn.clone().unwrap_or_else(|| here.join("cairn"));
    let tickets = cli
        .tickets
        .clone()
        .unwrap_or_else(|| here.join("mcp-tickets"));
    anyhow::ensure!(cairn.exists(), "no cairn binary at {}", cairn.display());
    anyhow::ensure!(
        tickets.exists(),
        "no mcp-tickets binary at {}",
        tickets.display()
    );
    let work = tempfile::tempdir()?;
    let db = work.path().join("tickets.db");

    // The model server.
    let model = Model::default();
    let app = axum::Router::new()
        .route("/chat/completions", post(chat))
        .with_state(model.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let model_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let mut redis = if cli.mode == "redis" {
        let dir = work.path().join("redis");
        std::fs::create_dir_all(&dir)?;
        Some(Redis::start(&dir)?)
    } else {
        None
    };
    let config = work.path().join("cairn.toml");
    std::fs::write(
        &config,
        format!(
            "[[mcp.servers]]\nname = \"tickets\"\ncommand = \"{}\"\nargs = [\"--db\", \"{}\"]\nallowed_tenants = [\"*\"]\ntimeout = \"5s\"\n",
            tickets.display(),
            db.display()
        ),
    )?;
    let mut env = vec![
        ("CAIRN_AUTH__JWT_SECRET".to_owned(), SECRET.to_owned()),
        ("CAIRN_LLM__PROVIDER".to_owned(), "openai".to_owned()),
        ("CAIRN_LLM__BASE_URL".to_owned(), model_url.clone()),
        ("CAIRN_LLM__MODEL".to_owned(), "chaos-model".to_owned()),
        ("CAIRN_LLM__STREAM".to_owned(), "false".to_owned()),
        ("CAIRN_LLM__REQUEST_TIMEOUT".to_owned(), "3s".to_owned()),
        ("CAIRN_RATE_LIMITS__ENABLED".to_owned(), "false".to_owned()),
        ("CAIRN_KNOWLEDGE__ENABLED".to_owned(), "false".to_owned()),
        ("CAIRN_AGENT__LEASE_TTL".to_owned(), "2s".to_owned()),
    ];
    if let Some(r) = &redis {
        env.push((
            "CAIRN_REDIS__URL".to_owned(),
            format!("redis://127.0.0.1:{}/0", r.port),
        ));
    }
    let data = work.path().join("data");
    let mut replica = Replica {
        pid: Arc::new(std::sync::atomic::AtomicU32::new(0)),
        proc: None,
        cairn,
        data,
        config,
        port: free_port()?,
        env,
    };
    replica.spawn()?;
    let http = reqwest::Client::new();
    if !replica.wait_ready(&http).await {
        let log = std::fs::read_to_string(replica.data.with_extension("log")).unwrap_or_default();
        anyhow::bail!("cairn did not get ready:\n{log}");
    }
    let auth = cairn_api::auth::Authenticator::new(SECRET.as_bytes(), &Default::default());
    let token = auth.mint(
        &cairn_core::UserId::parse("chaos")?,
        &cairn_core::TenantId::parse(TENANT)?,
        Duration::from_secs(24 * 3600),
        &[],
    )?;
    let other = auth.mint(
        &cairn_core::UserId::parse("chaos")?,
        &cairn_core::TenantId::parse("intruder")?,
        Duration::from_secs(24 * 3600),
        &[],
    )?;
    let base = replica.base();
    let mut convs = Vec::new();
    for _ in 0..cli.conversations.max(1) {
        let (s, v) = post_json(
            &http,
            &format!("{base}/v1/conversations"),
            &token,
            &json!({}),
            None,
        )
        .await
        .context("create a conversation")?;
        anyhow::ensure!(s == 201 || s == 200, "create a conversation: {s} {v}");
        convs.push(v["id"].as_str().context("conversation id")?.to_owned());
    }

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let resumes = Arc::new(AtomicUsize::new(0));
    let mut loads = Vec::new();
    for c in &convs {
        loads.push(tokio::spawn(load(
            http.clone(),
            base.clone(),
            token.clone(),
            c.clone(),
            ledger.clone(),
            stop.clone(),
        )));
    }
    let followers: Vec<_> = convs
        .iter()
        .take(3)
        .map(|c| {
            (
                c.clone(),
                tokio::spawn(follower(
                    http.clone(),
                    base.clone(),
                    token.clone(),
                    c.clone(),
                    stop.clone(),
                    resumes.clone(),
                )),
            )
        })
        .collect();
    let intruder = tokio::spawn(intruder(
        http.clone(),
        base.clone(),
        other,
        convs.clone(),
        ledger.clone(),
        stop.clone(),
    ));

    let sampler = cli.samples.clone().map(|path| {
        tokio::spawn(sampler(
            path,
            replica.pid.clone(),
            redis.as_ref().map(|r| r.port),
            replica.data.clone(),
            ledger.clone(),
            stop.clone(),
        ))
    });

    // The fault injector.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    let tickets_needle = db.display().to_string();
    // Replica kills weigh double; Redis restarts (last) only in Redis mode.
    const KINDS: [&str; 8] = [
        "kill_cairn",
        "kill_cairn",
        "model_429",
        "model_500",
        "model_timeout",
        "mcp_crash",
        "mcp_hang",
        "redis_restart",
    ];
    let kinds = if redis.is_some() {
        &KINDS[..]
    } else {
        &KINDS[..7]
    };
    while started.elapsed() < Duration::from_secs(cli.duration) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..4000))).await;
        if cli.no_faults {
            continue;
        }
        let kind = kinds[rng.random_range(0..kinds.len())];
        *faults.entry(kind).or_default() += 1;
        let hold = Duration::from_millis(rng.random_range(300..2500));
        match kind {
            "kill_cairn" => {
                replica.kill();
                tokio::time::sleep(hold).await;
                replica.spawn()?;
                replica.wait_ready(&http).await;
            }
            "model_429" | "model_500" | "model_timeout" => {
                let f = match kind {
                    "model_429" => MODEL_429,
                    "model_500" => MODEL_500,
                    _ => MODEL_HANG,
                };
                model.fault.store(f, Ordering::Relaxed);
                tokio::time::sleep(hold).await;
                model.fault.store(MODEL_OK, Ordering::Relaxed);
            }
            "mcp_crash" => {
                for pid in pids_of(&tickets_needle) {
                    signal(pid, "-KILL");
                }
            }
            "mcp_hang" => {
                let pids = pids_of(&tickets_needle);
                for pid in &pids {
                    signal(*pid, "-STOP");
                }
                tokio::time::sleep(hold).await;
                for pid in &pids {
                    signal(*pid, "-CONT");
                }
            }
            "redis_restart" => {
                if let Some(r) = redis.as_mut() {
                    r.kill();
                    tokio::time::sleep(hold).await;
                    r.spawn()?;
                }
            }
            _ => {}
        }
    }
    model.fault.store(MODEL_OK, Ordering::Relaxed);
    for pid in pids_of(&tickets_needle) {
        signal(pid, "-CONT");
    }
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        let _ = l.await;
    }
    let _ = intruder.await;
    if let Some(s) = sampler {
        s.await??;
    }
    let mut followed = Vec::new();
    for (c, f) in followers {
        followed.push((c, f.await.unwrap_or_default()));
    }
    println!("faults: {faults:?}");

    // Settle: every accepted turn reaches its outcome.
    anyhow::ensure!(replica.wait_ready(&http).await, "cairn did not come back");
    let accepted: BTreeMap<String, Vec<String>> = ledger
        .accepted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let total: usize = accepted.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(cli.settle);
    let mut events: HashMap<String, Vec<(u64, String, Value)>> = HashMap::new();
    loop {
        let mut open = 0;
        for (conv, turns) in &accepted {
            let evs = read_events(&http, &base, &token, conv)
                .await
                .unwrap_or_default();
            open += turns
                .iter()
                .filter(|t| {
                    !evs.iter()
                        .any(|(_, k, d)| is_terminal(k) && d["turn_id"] == t.as_str())
                })
                .count();
            events.insert(conv.clone(), evs);
        }
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Invariants.
    let mut violations = 0usize;
    let (mut answered, mut failed, mut cancelled, mut unanswered, mut twice, mut no_reason) =
        (0, 0, 0, 0, 0, 0);
    let mut failure_codes: BTreeMap<String, usize> = BTreeMap::new();
    for (conv, turns) in &accepted {
        let evs = &events[conv];
        for t in turns {
            let outcomes: Vec<&(u64, String, Value)> = evs
                .iter()
                .filter(|(_, k, d)| is_terminal(k) && d["turn_id"] == t.as_str())
                .collect();
            match outcomes.len() {
                0 => unanswered += 1,
                1 => {}
                _ => {
                    twice += 1;
                    eprintln!(
                        "turn {t} of {conv} has {} outcomes: {outcomes:?}",
                        outcomes.len()
                    );
                }
            }
            for (_, k, d) in &outcomes {
                match k.as_str() {
                    "answer.completed" => answered += 1,
                    "turn.cancelled" => cancelled += 1,
                    _ => {
                        failed += 1;
                        *failure_codes
                            .entry(d["code"].as_str().unwrap_or("?").to_owned())
                            .or_default() += 1;
                        if d["reason"].as_str().is_none_or(str::is_empty) {
                            no_reason += 1;
                        }
                    }
                }
            }
        }
    }
    violations += unanswered + twice + no_reason;
    println!(
        "accepted: {total} answered: {answered} failed: {failed} {failure_codes:?} cancelled: {cancelled} refused_before_202: {}",
        ledger.refused.load(Ordering::Relaxed)
    );
    println!("accepted without an outcome: {unanswered}");
    println!("accepted with more than one outcome: {twice}");
    println!("failures without a reason: {no_reason}");

    let notes = ticket_notes(&db)?;
    let mut per_mark: HashMap<&str, usize> = HashMap::new();
    for n in &notes {
        if let Some(m) = n.strip_prefix("chaos:") {
            *per_mark.entry(m).or_default() += 1;
        }
    }
    let applied_twice = per_mark.values().filter(|n| **n > 1).count();
    violations += applied_twice;
    println!(
        "update_ticket notes: {} for {} messages; applied more than once: {applied_twice}",
        notes.len(),
        per_mark.len()
    );

    let mut gaps = 0;
    for (conv, seen) in &followed {
        let stored: Vec<u64> = events[conv].iter().map(|e| e.0).collect();
        if seen.as_slice() != &stored[..seen.len().min(stored.len())] || seen.len() > stored.len() {
            gaps += 1;
            let at = seen
                .iter()
                .zip(&stored)
                .position(|(a, b)| a != b)
                .unwrap_or(seen.len().min(stored.len()));
            let around = |v: &[u64]| v[at.saturating_sub(3)..(at + 4).min(v.len())].to_vec();
            eprintln!(
                "SSE client of {conv}: saw {} ids, stored {}; first difference at {at}: saw {:?}, stored {:?}",
                seen.len(),
                stored.len(),
                around(seen),
                around(&stored)
            );
        }
    }
    violations += gaps;
    println!(
        "SSE clients: {} (resumed {} times); with a gap or a duplicate: {gaps}",
        followed.len(),
        resumes.load(Ordering::Relaxed)
    );
    let leaks = ledger.cross_tenant_leaks.load(Ordering::Relaxed);
    violations += leaks;
    println!(
        "cross-tenant reads: {}; answered with data: {leaks}",
        ledger.cross_tenant_reads.load(Ordering::Relaxed)
    );
    println!("model requests: {}", model.requests.load(Ordering::Relaxed));
    replica.kill();
    if let Some(r) = redis.as_mut() {
        r.kill();
    }
    println!("violations: {violations}");
    Ok(ExitCodeOk(violations == 0))
}

/// Exit status: 0 without violations, 1 with.
struct ExitCodeOk(bool);

impl std::process::Termination for ExitCodeOk {
    fn report(self) -> std::process::ExitCode {
        if self.0 {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    }
}
