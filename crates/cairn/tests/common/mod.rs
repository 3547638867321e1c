//! A real Cairn server on a loopback port, built by the same composition root as
//! `cairn serve`, plus an HTTP/SSE client for the tests.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use cairn::app;
use cairn_actors::ToolCatalog;
use cairn_core::config::Config;
use cairn_core::ports::ChatModel;
use cairn_core::{TenantId, UserId};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct Server {
    pub base: String,
    pub data_dir: std::path::PathBuf,
    /// Only the authenticator: holding the whole state would keep the store open.
    pub auth: Arc<cairn_api::auth::Authenticator>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn config(dir: &Path, redis: Option<String>) -> Config {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cairn.example.toml");
    let mut env: Vec<(String, String)> = vec![
        ("CAIRN_SERVER__DATA_DIR".into(), dir.display().to_string()),
        ("CAIRN_SERVER__LISTEN".into(), "127.0.0.1:0".into()),
        ("CAIRN_SERVER__WAIT_TIMEOUT".into(), "\"20s\"".into()),
        // Tests poll in tight loops; the gateway tests switch limits back on.
        ("CAIRN_RATE_LIMITS__ENABLED".into(), "false".into()),
    ];
    if let Some(url) = redis {
        env.push(("CAIRN_REDIS__URL".into(), format!("\"{url}\"")));
        env.push((
            "CAIRN_REDIS__KEY_PREFIX".into(),
            format!("\"t{}\"", uuid::Uuid::new_v4()),
        ));
    }
    Config::load(Some(&example), env).expect("example config loads")
}

/// Cairn's warnings (or `RUST_LOG`'s choice) go to the test's captured output,
/// so a failing test shows what the server said.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,cairn=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

pub fn redis_url() -> String {
    std::env::var("CAIRN_TEST_REDIS_URL").expect(
        "CAIRN_TEST_REDIS_URL is not set: run the tests with scripts/test.sh, which starts redis-server",
    )
}

impl Server {
    pub async fn start(config: &Config) -> Server {
        Self::start_with(config, ToolCatalog::new(), None).await
    }

    pub async fn start_with(
        config: &Config,
        tools: ToolCatalog,
        model: Option<Arc<dyn ChatModel>>,
    ) -> Server {
        init_logs();
        // A previous server on the same data dir may still be releasing its files.
        let mut built = None;
        for _ in 0..200 {
            match app::build(config, &|_| None, tools.clone(), model.clone()).await {
                Ok(a) => {
                    built = Some(a);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let app = built.expect("server builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let auth = app.state.auth.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.serve(listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            base,
            data_dir: config.server.data_dir.clone(),
            auth,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("server stops in time")
                .unwrap();
        }
    }

    pub fn token(&self, tenant: &str, user: &str) -> String {
        self.auth
            .mint(
                &UserId::parse(user).unwrap(),
                &TenantId::parse(tenant).unwrap(),
                Duration::from_secs(600),
                &[],
            )
            .unwrap()
    }

    pub fn token_with_scopes(&self, tenant: &str, user: &str, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        self.auth
            .mint(
                &UserId::parse(user).unwrap(),
                &TenantId::parse(tenant).unwrap(),
                Duration::from_secs(600),
                &scopes,
            )
            .unwrap()
    }

    pub fn client(&self, token: &str) -> Client {
        Client {
            base: self.base.clone(),
            token: Some(token.to_owned()),
            http: http_client(),
        }
    }
}

/// An HTTP client whose requests give up after a bound above the server's own
/// `server.wait_timeout` (2 min), so a stuck request fails the test with a reason.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(150))
        .build()
        .unwrap()
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Client {
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Reply {
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.req(reqwest::Method::POST, path).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    pub async fn new_conversation(&self) -> String {
        let r = self.post("/v1/conversations", json!({})).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn ask(&self, conv: &str, text: &str) -> Value {
        let r = self
            .post(
                &format!("/v1/conversations/{conv}/messages?wait=true"),
                json!({"content": text}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body
    }

    /// Reads SSE events from `path` (with optional Last-Event-ID) until `stop`
    /// says so or `timeout` passes; returns (id, event, data) triples.
    pub async fn sse(
        &self,
        path: &str,
        last_event_id: Option<&str>,
        timeout: Duration,
        stop: impl Fn(&[(String, String, Value)]) -> bool,
    ) -> Vec<(String, String, Value)> {
        let mut rb = self
            .req(reqwest::Method::GET, path)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            rb = rb.header("last-event-id", id);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        collect_sse(resp, timeout, stop).await
    }
}

pub async fn collect_sse(
    resp: reqwest::Response,
    timeout: Duration,
    stop: impl Fn(&[(String, String, Value)]) -> bool,
) -> Vec<(String, String, Value)> {
    let mut events = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Ok(e))) => {
                let data = serde_json::from_str(&e.data).unwrap_or(Value::Null);
                out.push((e.id, e.event, data));
                if stop(&out) {
                    return out;
                }
            }
            Ok(Some(Err(e))) => panic!("SSE error: {e}"),
            Ok(None) | Err(_) => return out,
        }
    }
}

/// Polls a document until its job is done or failed (at most 30 s).
pub async fn finished(c: &Client, id: &str) -> Value {
    for _ in 0..1500 {
        let r = c.get(&format!("/v1/documents/{id}")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let status = r.body["job"]["status"].as_str().unwrap().to_owned();
        if status == "done" || status == "failed" {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("document {id} did not finish");
}

pub fn is_terminal(kind: &str) -> bool {
    kind == "answer.completed" || kind == "turn.failed" || kind == "turn.cancelled"
}

/// A free loopback port (bound, then released).
/// Serves `app` (a receiver or model server the test plays) on a free
/// loopback port; returns `http://127.0.0.1:PORT`.
pub async fn serve_local(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `base/ready` answers 200 (at most 15 s).
pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/ready")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {base} did not become ready");
}

/// A record read from Kafka: its JSON body and its headers.
pub type Record = (Value, std::collections::HashMap<String, String>);

/// Reads `topic` from the start, as a consumer group of its own, keeping the
/// records for which `keep(body, headers)` holds, until `done(kept)` (at most 30 s).
pub async fn read_topic(
    brokers: &str,
    topic: &str,
    keep: impl Fn(&Value, &std::collections::HashMap<String, String>) -> bool,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out: Vec<Record> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&out) {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("not done reading {topic} within 30 s: {out:?}"))
            .unwrap();
        let body: Value =
            serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(Value::Null);
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let v = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                        (h.key.to_owned(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if keep(&body, &headers) {
            out.push((body, headers));
        }
    }
    out
}

/// The JWT secret [`Binary`] servers run with.
pub const SECRET: &str = "hardening-test-secret-0123456789";

/// The real `cairn serve` binary on a free port, with a config file and a
/// known JWT secret; `restart` kills it (SIGKILL) and starts it again.
pub struct Binary {
    pub child: tokio::process::Child,
    pub base: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub env: Vec<(String, String)>,
    pub auth: cairn_api::auth::Authenticator,
}

impl Binary {
    pub async fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Binary {
        let path = dir.join("cairn.toml");
        std::fs::write(
            &path,
            format!("[auth]\njwt_secret_env = \"CAIRN_JWT_SECRET\"\n{config}"),
        )
        .unwrap();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.push(("CAIRN_JWT_SECRET".into(), SECRET.into()));
        // Tests send bursts and poll; the gateway tests cover the limits.
        if !env.iter().any(|(k, _)| k == "CAIRN_RATE_LIMITS__ENABLED") {
            env.push(("CAIRN_RATE_LIMITS__ENABLED".into(), "false".into()));
        }
        let mut b = Binary {
            child: tokio::process::Command::new("true").spawn().unwrap(),
            base: String::new(),
            dir: dir.join("data"),
            config: path,
            env,
            auth: cairn_api::auth::Authenticator::new(SECRET.as_bytes(), &Default::default()),
        };
        b.restart().await;
        b
    }

    pub async fn restart(&mut self) {
        let _ = self.child.kill().await;
        let port = free_port();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
        for (k, _) in std::env::vars() {
            if k.starts_with("CAIRN_") {
                cmd.env_remove(k);
            }
        }
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(&self.config)
        .arg("--data-dir")
        .arg(&self.dir)
        .envs(self.env.iter().cloned())
        .env("CAIRN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
        self.child = cmd.spawn().unwrap();
        self.base = format!("http://127.0.0.1:{port}");
        let _ = rustls::crypto::ring::default_provider().install_default();
        wait_ready(&reqwest::Client::new(), &self.base).await;
    }

    pub fn token(&self, tenant: &str, user: &str, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        self.auth
            .mint(
                &cairn_core::UserId::parse(user).unwrap(),
                &cairn_core::TenantId::parse(tenant).unwrap(),
                Duration::from_secs(600),
                &scopes,
            )
            .unwrap()
    }

    pub fn client(&self, tenant: &str, user: &str, scopes: &[&str]) -> Client {
        Client {
            base: self.base.clone(),
            token: Some(self.token(tenant, user, scopes)),
            http: http_client(),
        }
    }

    pub async fn alive(&self) -> bool {
        reqwest::get(format!("{}/live", self.base))
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}
