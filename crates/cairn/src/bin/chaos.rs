//! `cairn-chaos`: Cairn's promises under random faults (run by `scripts/chaos.sh`).
//!
//! ```text
//! cairn-chaos --seed 7 --duration 120 --mode embedded|redis|kafka [--redis-loss]
//!   [--cairn target/debug/cairn] [--tickets target/debug/mcp-tickets]
//! ```
//!
//! Starts `cairn serve` — one replica with its own data dir (`embedded`), one on
//! a private `redis-server` with AOF `appendfsync always` (`redis`), or two
//! replicas on librdkafka's mock cluster (in this process) and that Redis
//! (`kafka`) — an OpenAI-wire model server in this process that answers every
//! question with one call to the `tickets` MCP server's idempotent
//! `update_ticket` (a note naming the message) and then an answer; keeps
//! conversations busy and uploads documents (new ones, and new versions of
//! earlier ones), spreading requests over the replicas, while a fault injector,
//! driven by the printed seed, repeatedly:
//! - kills a replica with SIGKILL and starts it again;
//! - makes the model server answer 429, 500, or not at all (a timeout);
//! - crashes the MCP server (SIGKILL; Cairn restarts it) or hangs it
//!   (SIGSTOP, then SIGCONT);
//! - with Redis, kills it with SIGKILL and restarts it from its AOF; with
//!   `--redis-loss` (and `appendfsync everysec`), also restarts it from a copy
//!   of the AOF a second or so old: a machine crash losing acknowledged writes;
//! - on Kafka, takes the broker down and brings it back, and publishes
//!   poison records (a known type failing its schema, an unknown type) to
//!   `user_events`;
//! - in `embedded` mode, when it may mount a tmpfs on the data dir, fills that
//!   disk and frees it.
//!
//! Then it stops the faults, lets the work settle, and checks, printing counts:
//! every message accepted with 202 has exactly one outcome (`answer.completed`,
//! or `turn.failed` with a reason); no note of `update_ticket` (one per
//! message) was applied twice; every SSE client that resumed with
//! `Last-Event-ID` saw the stored ids with no gap and no duplicate; no read by
//! another tenant found a conversation; every accepted document is `done`, or
//! `failed` with a reason; on Kafka, every DLQ record names where it came from
//! and why, and every poison record is there. The last line is `violations: N`.

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
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// `embedded` (the data dir), `redis` (memory in a private redis-server)
    /// or `kafka` (two replicas on librdkafka's mock cluster and Redis).
    #[arg(long, default_value = "embedded")]
    mode: String,
    /// Also lose Redis's last second of acknowledged writes now and then (a
    /// machine crash under `appendfsync everysec`): what Cairn cannot promise
    /// then is counted, not hidden (README, "Redis durability").
    #[arg(long)]
    redis_loss: bool,
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
    /// Keep the work dir (data dirs, logs, Redis and broker files) and print
    /// where it is.
    #[arg(long)]
    keep: bool,
    /// The replicas' `CAIRN_LOG` (their logs are `data<N>.log` in the work dir).
    #[arg(long, default_value = "error")]
    log: String,
    /// Move each conversation's load to a new conversation after this many
    /// accepted messages (0: never), so that old ones go idle.
    #[arg(long, default_value_t = 0)]
    rotate: usize,
    /// The replicas' `memory.retention` (e.g. `5m`; swept every 10 s), so that
    /// idle conversations are deleted during the run.
    #[arg(long)]
    retention: Option<String>,
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

/// A child process, killed with SIGKILL and reaped when dropped.
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
    /// `appendfsync everysec` and no AOF rewrites (for `--redis-loss`), else
    /// `always`.
    everysec: bool,
}

/// Where [`Redis::snapshot`] keeps the AOF as it was a moment ago.
const AOF_DIR: &str = "appendonlydir";

impl Redis {
    fn start(dir: &Path, everysec: bool) -> anyhow::Result<Redis> {
        let mut r = Redis {
            proc: None,
            port: free_port()?,
            dir: dir.to_owned(),
            everysec,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let fsync = if self.everysec { "everysec" } else { "always" };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", fsync, "--save", ""])
            // A rewrite would swap the AOF files under a snapshot being taken.
            .args(if self.everysec {
                &["--auto-aof-rewrite-percentage", "0"][..]
            } else {
                &[]
            })
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

    /// kill -9 (dropping a [`Proc`] kills and reaps it).
    fn kill(&mut self) {
        self.proc = None;
    }

    /// Copies the AOF aside (`snapshot.new`, then renamed over `snapshot`):
    /// what a machine crash under `appendfsync everysec` would leave on disk
    /// about a second later.
    fn snapshot(&self) -> anyhow::Result<()> {
        let tmp = self.dir.join("snapshot.new");
        let _ = std::fs::remove_dir_all(&tmp);
        copy_dir(&self.dir.join(AOF_DIR), &tmp)?;
        let _ = std::fs::remove_dir_all(self.dir.join("snapshot"));
        std::fs::rename(&tmp, self.dir.join("snapshot"))?;
        Ok(())
    }

    /// Kills Redis and starts it from the last snapshot: the writes it
    /// acknowledged since then are gone.
    fn lose_last_writes(&mut self) -> anyhow::Result<()> {
        self.kill();
        let snap = self.dir.join("snapshot");
        if snap.exists() {
            let aof = self.dir.join(AOF_DIR);
            std::fs::remove_dir_all(&aof)?;
            copy_dir(&snap, &aof)?;
        }
        self.spawn()
    }
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// A tmpfs mounted on a replica's data dir: [`fill`](Tmpfs::fill) makes its
/// disk full, [`free`](Tmpfs::free) gives the space back; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn filler(&self) -> PathBuf {
        self.0.join("chaos-filler")
    }

    /// Writes a file until the file system refuses (ENOSPC).
    fn fill(&self) -> anyhow::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler())?;
        let block = vec![0u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        Ok(())
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
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
    log: String,
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
            .env("CAIRN_LOG", &self.log)
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

    /// kill -9 (dropping a [`Proc`] kills and reaps it).
    fn kill(&mut self) {
        self.proc = None;
    }

    /// Waits until the replica answers `/ready`. A replica that exited (it
    /// refuses to start while the broker is down) is started again, as its
    /// supervisor (systemd, Kubernetes) would.
    async fn wait_ready(&mut self, http: &reqwest::Client) -> bool {
        for _ in 0..600 {
            if let Ok(r) = http.get(format!("{}/ready", self.base())).send().await
                && r.status().is_success()
            {
                return true;
            }
            let exited = self
                .proc
                .as_mut()
                .is_some_and(|p| matches!(p.0.try_wait(), Ok(Some(_))));
            if exited && self.spawn().is_err() {
                return false;
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
    /// Documents accepted (202), by id.
    documents: Mutex<BTreeSet<String>>,
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

/// How [`post_until_settled`] ended.
enum Posted {
    /// 202, with the body and how long the accepted attempt took.
    Accepted(Value, Duration),
    /// Refused for good (a 4xx other than 409 and 429).
    Refused(u16, Value),
    /// The run ended first.
    Stopped,
}

/// Posts `body` to `path`, through the next replica on each attempt, until it
/// is accepted or refused for good; 5xx, 409, 429 and lost connections are
/// retried every 200 ms (with the same Idempotency-Key, if any).
#[allow(clippy::too_many_arguments)]
async fn post_until_settled(
    http: &reqwest::Client,
    bases: &[String],
    attempt: &mut usize,
    path: &str,
    token: &str,
    body: &Value,
    key: Option<&str>,
    stop: &AtomicBool,
) -> Posted {
    while !stop.load(Ordering::Relaxed) {
        *attempt += 1;
        let url = format!("{}{path}", bases[*attempt % bases.len()]);
        let sent = Instant::now();
        match post_json(http, &url, token, body, key).await {
            Some((202, v)) => return Posted::Accepted(v, sent.elapsed()),
            Some((s, v)) if s < 500 && s != 429 && s != 409 => return Posted::Refused(s, v),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Posted::Stopped
}

/// Keeps `conv` busy: one message at a time, each retried with its
/// Idempotency-Key (through the next replica) until it is accepted (or the run
/// ends).
async fn load(
    http: reqwest::Client,
    bases: Vec<String>,
    token: String,
    mut conv: String,
    rotate: usize,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    let mut attempt = 0usize;
    let mut sent_here = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if rotate > 0 && sent_here >= rotate {
            let base = &bases[attempt % bases.len()];
            let url = format!("{base}/v1/conversations");
            match post_json(&http, &url, &token, &json!({}), None).await {
                Some((201 | 200, v)) if v["id"].is_string() => {
                    conv = v["id"].as_str().unwrap_or_default().to_owned();
                    sent_here = 0;
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        sent_here += 1;
        let mark = uuid::Uuid::new_v4().simple().to_string();
        let key = uuid::Uuid::new_v4().to_string();
        let body = json!({"content": format!("please note {mark}")});
        let path = format!("/v1/conversations/{conv}/messages");
        match post_until_settled(
            &http,
            &bases,
            &mut attempt,
            &path,
            &token,
            &body,
            Some(&key),
            &stop,
        )
        .await
        {
            Posted::Accepted(v, took) => {
                ledger
                    .latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(took.as_micros() as u64);
                if let Some(t) = v["turn_id"].as_str() {
                    let mut a = ledger.accepted.lock().unwrap_or_else(|e| e.into_inner());
                    let turns = a.entry(conv.clone()).or_default();
                    if !turns.iter().any(|x| x == t) {
                        turns.push(t.to_owned());
                    }
                }
            }
            Posted::Refused(..) => {
                ledger.refused.fetch_add(1, Ordering::Relaxed);
            }
            Posted::Stopped => return,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Uploads a document every second or so (a new one, or now and then a new
/// version of an earlier one), each retried under its id until accepted.
async fn uploader(
    http: reqwest::Client,
    bases: Vec<String>,
    token: String,
    seed: u64,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xd0c5);
    let mut attempt = 0usize;
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = if n > 4 && rng.random_ratio(1, 5) {
            format!("chaos-doc-{}", rng.random_range(1..n))
        } else {
            format!("chaos-doc-{n}")
        };
        let text = (0..rng.random_range(3..12))
            .map(|p| format!("## Part {p}\n\nVersion {n} of {id}: how to reset a router, step {p}, with care and patience."))
            .collect::<Vec<_>>()
            .join("\n\n");
        let body = json!({"document_id": id, "title": format!("Chaos {id}"), "text": text});
        match post_until_settled(
            &http,
            &bases,
            &mut attempt,
            "/v1/documents",
            &token,
            &body,
            None,
            &stop,
        )
        .await
        {
            Posted::Accepted(..) => {
                ledger
                    .documents
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone());
            }
            Posted::Refused(status, v) => {
                eprintln!("document {id} refused: {status} {v}");
                ledger.refused.fetch_add(1, Ordering::Relaxed);
            }
            Posted::Stopped => return,
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
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
    redis_cli(port, &["info", "memory"])
        .lines()
        .find_map(|l| {
            l.strip_prefix("used_memory:")
                .map(|v| v.trim().parse().ok())
        })
        .flatten()
        .unwrap_or(0)
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn redis_dbsize(port: u16) -> u64 {
    redis_cli(port, &["dbsize"]).trim().parse().unwrap_or(0)
}

/// Redis keys grouped by their shape (ids replaced by `*`), with their count and
/// `MEMORY USAGE` summed: what a soak's Redis memory is made of.
fn redis_key_breakdown(port: u16) -> Vec<(String, u64, u64)> {
    let mut groups: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for key in redis_cli(port, &["--scan"]).lines() {
        let shape = key
            .split(':')
            .map(|part| {
                let idlike = part.len() >= 16 && part.chars().any(|c| c.is_ascii_digit());
                if idlike { "*" } else { part }
            })
            .collect::<Vec<_>>()
            .join(":");
        let bytes = redis_cli(port, &["memory", "usage", key])
            .trim()
            .parse()
            .unwrap_or(0);
        let g = groups.entry(shape).or_default();
        g.0 += 1;
        g.1 += bytes;
    }
    let mut v: Vec<_> = groups.into_iter().map(|(k, (n, b))| (k, n, b)).collect();
    v.sort_by_key(|(_, _, b)| std::cmp::Reverse(*b));
    v
}

/// Turns the replica has ended (any outcome), from its `/metrics`.
async fn turns_ended(http: &reqwest::Client, base: &str) -> Option<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("cairn_turns_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

/// Writes a CSV row every 10 s until `stop` (see `--samples`).
#[allow(clippy::too_many_arguments)]
async fn sampler(
    path: PathBuf,
    http: reqwest::Client,
    base: String,
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
        "seconds,rss_kib,fds,redis_used_memory,data_dir_bytes,accepted,p50_ms,p99_ms,backlog,redis_keys"
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
        // Turns accepted but not yet ended: a backlog that grows means the load
        // outruns the server (the end check then finds turns without an outcome).
        let backlog = match turns_ended(&http, &base).await {
            Some(ended) => (accepted as i64 - ended as i64).to_string(),
            None => String::new(),
        };
        let keys = redis_port.map(redis_dbsize).unwrap_or(0);
        writeln!(
            f,
            "{},{rss},{fds},{redis},{},{accepted},{:.2},{:.2},{backlog},{keys}",
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
    bases: Vec<String>,
    token: String,
    convs: Vec<String>,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let conv = &convs[i % convs.len()];
        let base = &bases[i % bases.len()];
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

/// An SSE client that reconnects with `Last-Event-ID` (to the next replica)
/// whenever its stream breaks; returns every id it received, in order.
async fn follower(
    http: reqwest::Client,
    bases: Vec<String>,
    token: String,
    conv: String,
    stop: Arc<AtomicBool>,
    resumes: Arc<AtomicUsize>,
) -> Vec<u64> {
    let mut seen: Vec<u64> = Vec::new();
    let mut attempt = 0usize;
    while !stop.load(Ordering::Relaxed) {
        attempt += 1;
        let base = &bases[attempt % bases.len()];
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
/// stays quiet: (id, type, data); `None` when the conversation is gone
/// (deleted by `--retention`).
async fn read_events(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    conv: &str,
) -> anyhow::Result<Option<Vec<(u64, String, Value)>>> {
    let r = http
        .get(format!("{base}/v1/conversations/{conv}/events?after=0"))
        .bearer_auth(token)
        .send()
        .await?;
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
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
    Ok(Some(out))
}

/// Every accepted document ends `done`, or `failed` with a reason, by
/// `deadline`; prints the counts and returns the violations.
async fn check_documents(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    ledger: &Ledger,
    deadline: Instant,
) -> usize {
    let ids: Vec<String> = ledger
        .documents
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    let mut states: BTreeMap<String, (String, String)> = BTreeMap::new();
    loop {
        for id in &ids {
            let r = http
                .get(format!("{base}/v1/documents/{id}"))
                .bearer_auth(token)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let state = match r {
                Ok(r) if r.status().is_success() => {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    (
                        v["job"]["status"].as_str().unwrap_or("?").to_owned(),
                        v["job"]["error"].as_str().unwrap_or("").to_owned(),
                    )
                }
                Ok(r) => (format!("http {}", r.status().as_u16()), String::new()),
                Err(_) => ("unreachable".to_owned(), String::new()),
            };
            states.insert(id.clone(), state);
        }
        let open = states
            .values()
            .filter(|(s, _)| s != "done" && s != "failed")
            .count();
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let done = states.values().filter(|(s, _)| s == "done").count();
    let failed: Vec<&String> = states
        .values()
        .filter(|(s, _)| s == "failed")
        .map(|(_, e)| e)
        .collect();
    let no_reason = failed.iter().filter(|e| e.is_empty()).count();
    let stuck: Vec<(&String, &String)> = states
        .iter()
        .filter(|(_, (s, _))| s != "done" && s != "failed")
        .map(|(id, (s, _))| (id, s))
        .collect();
    for (id, s) in &stuck {
        eprintln!("document {id} ended {s}");
    }
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &failed {
        *reasons.entry(e.as_str()).or_default() += 1;
    }
    println!(
        "documents accepted: {} done: {done} failed: {} {reasons:?}; neither: {}; failed without a reason: {no_reason}",
        ids.len(),
        failed.len(),
        stuck.len()
    );
    stuck.len() + no_reason
}

/// Attempts at subscribing to (and transient failures reading) the DLQ in its check.
const DLQ_CHECK_ATTEMPTS: usize = 15;

/// Reads the DLQ from the start: every record names where it came from and
/// why (`dlq.record` data: topic, partition, offset, group, error_class,
/// reason), and every poison record published is among them.
async fn check_dlq(
    settings: &cairn_bus::kafka::KafkaSettings,
    topics: &cairn_core::ports::Topics,
    poison: &BTreeSet<String>,
) -> anyhow::Result<usize> {
    use cairn_core::ports::EventBus;
    // A new client, as a process reading the DLQ would be: the injector's own
    // client lived through the broker restarts, and librdkafka's metadata
    // requests on it were seen to time out after them (twice in three 90 s
    // runs) while the replicas' clients served. Retried for a while, so that a
    // slow cluster does not end the run without its counts.
    let mut consumer = None;
    for attempt in 1..=DLQ_CHECK_ATTEMPTS {
        let subscribed = match cairn_bus::kafka::KafkaBus::connect(settings.clone(), topics).await {
            Ok(bus) => bus.subscribe(&topics.dlq, "chaos-dlq-check").await,
            Err(e) => Err(e),
        };
        match subscribed {
            Ok(c) => {
                consumer = Some(c);
                break;
            }
            Err(e) => {
                eprintln!("DLQ check: cannot subscribe yet (attempt {attempt}): {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    let mut consumer = consumer.context("DLQ check: the mock cluster did not answer")?;
    let (mut records, mut without, mut errors) = (0usize, 0usize, 0usize);
    let mut found: BTreeSet<String> = BTreeSet::new();
    loop {
        // The DLQ has been read to its end once nothing arrives for 10 s.
        let rec = match tokio::time::timeout(Duration::from_secs(10), consumer.next()).await {
            Err(_) => break,
            Ok(Ok(rec)) => rec,
            Ok(Err(e)) => {
                errors += 1;
                anyhow::ensure!(
                    errors <= DLQ_CHECK_ATTEMPTS,
                    "DLQ check: reading the DLQ keeps failing: {e}"
                );
                eprintln!("DLQ check: read failed ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        records += 1;
        let d = &rec.envelope.data;
        let named = |k: &str| d[k].as_str().is_some_and(|v| !v.is_empty());
        let complete = named("topic")
            && named("group")
            && named("error_class")
            && named("reason")
            && d["offset"].is_u64()
            && d["partition"].is_u64();
        if !complete {
            without += 1;
            eprintln!("DLQ record without provenance: {d}");
        }
        let original = d["envelope"]["event_id"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| {
                d["payload"]
                    .as_str()
                    .and_then(|p| serde_json::from_str::<Value>(p).ok())
                    .and_then(|v| v["event_id"].as_str().map(str::to_owned))
            });
        if let Some(id) = original {
            found.insert(id);
        }
    }
    let missing = poison.difference(&found).count();
    println!(
        "DLQ records: {records} (poison published: {}); without provenance: {without}; poison not in the DLQ: {missing}",
        poison.len()
    );
    Ok(without + missing)
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
        ["embedded", "redis", "kafka"].contains(&cli.mode.as_str()),
        "--mode is embedded, redis or kafka"
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
    // With --keep the dir outlives the run, failed or not.
    let (work, _cleanup) = if cli.keep {
        let kept = work.keep();
        println!("work dir: {} (kept)", kept.display());
        (kept, None)
    } else {
        (work.path().to_owned(), Some(work))
    };
    let db = work.as_path().join("tickets.db");

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

    let kafka = cli.mode == "kafka";
    let mut redis = if cli.mode == "redis" || kafka {
        let dir = work.as_path().join("redis");
        std::fs::create_dir_all(&dir)?;
        Some(Redis::start(&dir, cli.redis_loss)?)
    } else {
        None
    };
    let prefix = "chaos.";
    // librdkafka's mock cluster, in this process: its brokers go down and come
    // back with what they acknowledged (a broker restart, as the clients see
    // it). tansu cannot stand in: with its in-memory storage a restart loses
    // every topic, and its SQLite storage (0.6.0) panics under this load.
    let broker = if kafka {
        let cluster = rdkafka::mocking::MockCluster::new(1).context("mock cluster")?;
        for t in cairn_core::ports::Topics::with_prefix(prefix).all() {
            cluster
                .create_topic(t, 4, 1)
                .context("create a topic on the mock cluster")?;
        }
        Some(cluster)
    } else {
        None
    };
    let config = work.as_path().join("cairn.toml");
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
    ];
    if !cli.no_faults {
        // A killed replica's turns move on 2 s after its last renewal, not 15 s.
        env.push(("CAIRN_AGENT__LEASE_TTL".to_owned(), "2s".to_owned()));
    }
    if let Some(r) = &cli.retention {
        env.push(("CAIRN_MEMORY__RETENTION".to_owned(), r.clone()));
        env.push(("CAIRN_MEMORY__RETENTION_SWEEP".to_owned(), "10s".to_owned()));
    }
    if let Some(r) = &redis {
        env.push((
            "CAIRN_REDIS__URL".to_owned(),
            format!("redis://127.0.0.1:{}/0", r.port),
        ));
    }
    if let Some(b) = &broker {
        for (k, v) in [
            ("CAIRN_KAFKA__BROKERS", b.bootstrap_servers()),
            ("CAIRN_KAFKA__TOPIC_PREFIX", prefix.to_owned()),
            ("CAIRN_KAFKA__PARTITIONS", "4".to_owned()),
            ("CAIRN_KAFKA__SESSION_TIMEOUT", "3s".to_owned()),
        ] {
            env.push((k.to_owned(), v));
        }
    }
    let mut replicas = Vec::new();
    for i in 0..if kafka { 2 } else { 1 } {
        replicas.push(Replica {
            pid: Arc::new(std::sync::atomic::AtomicU32::new(0)),
            proc: None,
            cairn: cairn.clone(),
            data: work.as_path().join(format!("data{i}")),
            config: config.clone(),
            port: free_port()?,
            env: env.clone(),
            log: cli.log.clone(),
        });
    }
    // The disk-full fault needs the data dir on a small tmpfs of its own.
    let tmpfs = if cli.mode == "embedded" && !cli.no_faults {
        std::fs::create_dir_all(&replicas[0].data)?;
        match Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=384m", "tmpfs"])
            .arg(&replicas[0].data)
            .stderr(Stdio::piped())
            .output()
        {
            Ok(o) if o.status.success() => Some(Tmpfs(replicas[0].data.clone())),
            Ok(o) => {
                println!(
                    "disk_full: not injected (cannot mount a tmpfs: {})",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("disk_full: not injected (cannot mount a tmpfs: {e})");
                None
            }
        }
    } else {
        None
    };
    let http = reqwest::Client::new();
    for r in &mut replicas {
        r.spawn()?;
    }
    for r in &mut replicas {
        if !r.wait_ready(&http).await {
            let log = std::fs::read_to_string(r.data.with_extension("log")).unwrap_or_default();
            anyhow::bail!("cairn did not get ready:\n{log}");
        }
    }
    let auth = cairn_api::auth::Authenticator::new(SECRET.as_bytes(), &Default::default());
    let token = auth.mint(
        &cairn_core::UserId::parse("chaos")?,
        &cairn_core::TenantId::parse(TENANT)?,
        Duration::from_secs(24 * 3600),
        &["ingest".to_owned()],
    )?;
    let other = auth.mint(
        &cairn_core::UserId::parse("chaos")?,
        &cairn_core::TenantId::parse("intruder")?,
        Duration::from_secs(24 * 3600),
        &[],
    )?;
    let bases: Vec<String> = replicas.iter().map(Replica::base).collect();
    let base = bases[0].clone();
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
            bases.clone(),
            token.clone(),
            c.clone(),
            cli.rotate,
            ledger.clone(),
            stop.clone(),
        )));
    }
    if !cli.no_faults {
        loads.push(tokio::spawn(uploader(
            http.clone(),
            bases.clone(),
            token.clone(),
            seed,
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
                    bases.clone(),
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
        bases.clone(),
        other,
        convs.clone(),
        ledger.clone(),
        stop.clone(),
    ));

    let sampler = cli.samples.clone().map(|path| {
        tokio::spawn(sampler(
            path,
            http.clone(),
            replicas[0].base(),
            replicas[0].pid.clone(),
            redis.as_ref().map(|r| r.port),
            replicas[0].data.clone(),
            ledger.clone(),
            stop.clone(),
        ))
    });

    // On Kafka: a client of the bus, to publish poison records and read the DLQ.
    let topics = cairn_core::ports::Topics::with_prefix(prefix);
    let kafka = broker.as_ref().map(|b| {
        let mut settings = cairn_bus::kafka::KafkaSettings::new(&b.bootstrap_servers());
        settings.group_prefix = prefix.to_owned();
        settings
    });
    let bus = match &kafka {
        Some(settings) => {
            Some(cairn_bus::kafka::KafkaBus::connect(settings.clone(), &topics).await?)
        }
        None => None,
    };
    let mut poison: BTreeSet<String> = BTreeSet::new();

    // The fault injector.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    let tickets_needle = db.display().to_string();
    let mut kinds: Vec<&str> = vec![
        "kill_cairn",
        "kill_cairn",
        "model_429",
        "model_500",
        "model_timeout",
        "mcp_crash",
        "mcp_hang",
    ];
    if redis.is_some() {
        kinds.push("redis_restart");
    }
    if cli.redis_loss && redis.is_some() {
        kinds.extend(["redis_loss", "redis_loss"]);
    }
    if broker.is_some() {
        kinds.extend(["broker_restart", "poison"]);
    }
    if tmpfs.is_some() {
        kinds.push("disk_full");
    }
    let mut last_snapshot = Instant::now();
    while started.elapsed() < Duration::from_secs(cli.duration) {
        let pause = Duration::from_millis(rng.random_range(1500..4000));
        if cli.redis_loss
            && let Some(r) = &redis
        {
            // Keep a copy of the AOF a second or so behind the live one.
            let until = Instant::now() + pause;
            while Instant::now() < until {
                if last_snapshot.elapsed() >= Duration::from_secs(1) {
                    r.snapshot()?;
                    last_snapshot = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            tokio::time::sleep(pause).await;
        }
        if cli.no_faults {
            continue;
        }
        let kind = kinds[rng.random_range(0..kinds.len())];
        *faults.entry(kind).or_default() += 1;
        let hold = Duration::from_millis(rng.random_range(300..2500));
        match kind {
            "kill_cairn" => {
                let i = rng.random_range(0..replicas.len());
                let r = &mut replicas[i];
                r.kill();
                tokio::time::sleep(hold).await;
                r.spawn()?;
                r.wait_ready(&http).await;
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
            "redis_loss" => {
                if let Some(r) = redis.as_mut() {
                    r.lose_last_writes()?;
                }
            }
            "broker_restart" => {
                if let Some(b) = &broker {
                    b.broker_down(-1)?;
                    tokio::time::sleep(hold).await;
                    b.broker_up(-1)?;
                }
            }
            "poison" => {
                if let Some(bus) = &bus {
                    use cairn_core::ports::EventBus;
                    // One of a known type failing its schema, or of no known type.
                    let kind = if rng.random_bool(0.5) {
                        "user.message"
                    } else {
                        "chaos.poison"
                    };
                    let envelope = cairn_core::envelope::Envelope::new(
                        kind,
                        cairn_core::TenantId::parse(TENANT)?,
                        json!({"poison": true}),
                    );
                    match bus.publish(&topics.user_events, &convs[0], &envelope).await {
                        Ok(()) => {
                            poison.insert(envelope.event_id.clone());
                        }
                        Err(e) => eprintln!("poison not published: {e}"),
                    }
                }
            }
            "disk_full" => {
                if let Some(t) = &tmpfs {
                    t.fill()?;
                    tokio::time::sleep(hold).await;
                    t.free();
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
    for r in &mut replicas {
        anyhow::ensure!(r.wait_ready(&http).await, "cairn did not come back");
    }
    let accepted: BTreeMap<String, Vec<String>> = ledger
        .accepted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let total: usize = accepted.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(cli.settle);
    let mut events: HashMap<String, Vec<(u64, String, Value)>> = HashMap::new();
    // Conversations deleted by `--retention` (their turns are not checked).
    let mut purged: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut open = 0;
        for (conv, turns) in &accepted {
            let evs = match read_events(&http, &base, &token, conv).await {
                Ok(Some(evs)) => evs,
                Ok(None) => {
                    purged.insert(conv.clone());
                    Vec::new()
                }
                Err(_) => Vec::new(),
            };
            if purged.contains(conv) {
                continue;
            }
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
    for (conv, turns) in accepted.iter().filter(|(c, _)| !purged.contains(*c)) {
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
    if !purged.is_empty() {
        let turns: usize = purged.iter().map(|c| accepted[c].len()).sum();
        println!(
            "deleted by memory.retention before the check: {} conversations ({turns} accepted messages, not checked)",
            purged.len()
        );
    }
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
    for (conv, seen) in followed.iter().filter(|(c, _)| !purged.contains(c)) {
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
    violations += check_documents(&http, &base, &token, &ledger, deadline).await;
    if let Some(settings) = &kafka {
        violations += check_dlq(settings, &topics, &poison).await?;
    }
    for r in &mut replicas {
        r.kill();
    }
    drop(tmpfs);
    if let Some(r) = redis.as_mut() {
        if cli.samples.is_some() {
            println!("redis keys by shape (keys, bytes):");
            for (shape, keys, bytes) in redis_key_breakdown(r.port).iter().take(25) {
                println!("  {shape}: {keys} keys, {bytes} bytes");
            }
        }
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
