//! The one-tool-call workload against a real `cairn serve` process: the model
//! is an OpenAI-wire server in this process that answers at once (a
//! `calculator_evaluate` call, then an answer quoting the tool's result), the
//! tool is the `mcp-calculator` server over stdio, and every turn is a
//! `POST …/messages?wait=true`. The Cairn process's CPU (user + system, from
//! `/proc/<pid>/stat`) over the measured turns, divided by them, is the CPU a
//! turn costs the server.

use anyhow::Context;
use axum::Json;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub(crate) struct Options {
    pub(crate) concurrency: usize,
    pub(crate) turns: usize,
    pub(crate) redis: Option<String>,
    pub(crate) cairn: Option<PathBuf>,
    pub(crate) calculator: Option<PathBuf>,
}

/// A binary next to this one (the workspace builds them together).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: build it (cargo build --release -p cairn -p mcp-calculator) or pass its path",
        path.display()
    );
    Ok(path)
}

/// The model: a tool call when the turn has no tool result yet, else the answer.
async fn chat(Json(body): Json<Value>) -> Json<Value> {
    let messages = body["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let observation = messages
        .iter()
        .rev()
        .take_while(|m| m["role"] != "user")
        .find(|m| m["role"] == "tool");
    Json(match observation {
        None => json!({
            "id": "chatcmpl-loadgen", "object": "chat.completion", "model": "loadgen",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "calculator_evaluate",
                                 "arguments": "{\"expression\": \"(17.5 * 3) / 4\"}"}}]}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 12}
        }),
        Some(obs) => json!({
            "id": "chatcmpl-loadgen", "object": "chat.completion", "model": "loadgen",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant",
                "content": format!("The result is {}.", obs["content"].as_str().unwrap_or("?"))}}],
            "usage": {"prompt_tokens": 60, "completion_tokens": 6}
        }),
    })
}

/// CPU seconds (user + system) a process has spent, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .context("unexpected /proc stat")?
        .1
        .split_whitespace()
        .collect::<Vec<_>>();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let ticks: f64 = rest[11].parse::<f64>()? + rest[12].parse::<f64>()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture's ABI.
    Ok(ticks / 100.0)
}

/// The children of a process (the MCP server), from `/proc/<pid>/task/*/children`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn config_file(dir: &Path, model: &str, calculator: &Path, redis: Option<&str>) -> String {
    let mut toml = format!(
        r#"[server]
data_dir = "{data}"
# One benchmark user holds every `?wait=true` stream.
max_streams_per_user = 100000

[auth]
jwt_secret = "{secret}"

[llm]
provider = "openai"
base_url = "{model}"
model = "loadgen"
stream = false
max_concurrency = 1024

[rate_limits]
enabled = false

[[mcp.servers]]
name = "calculator"
transport = "stdio"
command = "{calculator}"
allowed_tenants = ["*"]
"#,
        data = dir.join("data").display(),
        secret = super::BENCH_SECRET,
        calculator = calculator.display(),
    );
    if let Some(url) = redis {
        toml.push_str(&format!(
            "\n[redis]\nurl = \"{url}\"\nkey_prefix = \"bench-{}\"\n",
            uuid::Uuid::new_v4()
        ));
    }
    toml
}

pub(crate) async fn run(o: Options) -> anyhow::Result<()> {
    cairn_llm::http::install_crypto_provider();
    let cairn = match o.cairn {
        Some(p) => p,
        None => sibling("cairn")?,
    };
    let calculator = match o.calculator {
        Some(p) => p,
        None => sibling("mcp-calculator")?,
    };
    let model = {
        let app = axum::Router::new().route("/chat/completions", axum::routing::post(chat));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    };
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("cairn.toml");
    std::fs::write(
        &config,
        config_file(dir.path(), &model, &calculator, o.redis.as_deref()),
    )?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut cmd = tokio::process::Command::new(&cairn);
    for (k, _) in std::env::vars() {
        if k.starts_with("CAIRN_") && k != "CAIRN_LOG" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", cairn.display()))?;
    let pid = child.id().context("no pid")?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let auth =
        cairn_api::auth::Authenticator::new(super::BENCH_SECRET.as_bytes(), &Default::default());
    let token = auth.mint(
        &cairn_core::UserId::parse("bench")?,
        &cairn_core::TenantId::parse("bench")?,
        Duration::from_secs(24 * 3600),
        &[],
    )?;
    // Ready once the calculator is connected.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        anyhow::ensure!(child.try_wait()?.is_none(), "cairn exited during start-up");
        anyhow::ensure!(
            Instant::now() < deadline,
            "the calculator never became healthy"
        );
        if let Ok(r) = http
            .get(format!("{base}/v1/tools"))
            .bearer_auth(&token)
            .send()
            .await
            && let Ok(v) = r.json::<Value>().await
            && v["servers"][0]["health"] == "healthy"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = Arc::new(Client { http, base, token });
    let mut convs = Vec::new();
    for _ in 0..o.concurrency {
        convs.push(client.conversation().await?);
    }
    // Warm-up: one turn per conversation (spawns the actors, fills the pools).
    let mut warm = Vec::new();
    for c in &convs {
        let (client, c) = (client.clone(), c.clone());
        warm.push(tokio::spawn(async move { client.turn(&c).await }));
    }
    for w in warm {
        w.await??;
    }
    let mcp = children(pid);
    let cpu_of = |pids: &[u32]| {
        pids.iter()
            .filter_map(|&p| cpu_seconds(p).ok())
            .sum::<f64>()
    };
    let (server_before, mcp_before) = (cpu_seconds(pid)?, cpu_of(&mcp));
    let left = Arc::new(AtomicUsize::new(o.turns));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in convs {
        let (client, left) = (client.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let s = Instant::now();
                client.turn(&c).await?;
                h.record(s.elapsed().as_micros() as u64)?;
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let server = cpu_seconds(pid)? - server_before;
    let tool = cpu_of(&mcp) - mcp_before;
    let n = all.len() as f64;
    println!(
        "backend={} concurrency={} turns={} elapsed={secs:.2}s turns/s={:.0} p50={:.2}ms p99={:.2}ms server_cpu_per_turn={:.3}ms mcp_cpu_per_turn={:.3}ms",
        if o.redis.is_some() {
            "redis"
        } else {
            "embedded"
        },
        o.concurrency,
        all.len(),
        n / secs,
        super::ms(&all, 0.5),
        super::ms(&all, 0.99),
        server * 1000.0 / n,
        tool * 1000.0 / n,
    );
    // SIGTERM: a graceful stop, so the data dir is closed before it is removed.
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        child.kill().await?;
    }
    Ok(())
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn conversation(&self) -> anyhow::Result<String> {
        super::create_conversation(&self.http, &self.base, &self.token).await
    }

    async fn turn(&self, conv: &str) -> anyhow::Result<()> {
        let question = "What is 17.5 times 3, divided by 4?";
        let body = super::ask(&self.http, &self.base, &self.token, conv, question).await?;
        anyhow::ensure!(
            body["answer"]["content"] == "The result is 13.125.",
            "unexpected answer: {body}"
        );
        Ok(())
    }
}
