//! Cairn on a real Kafka-protocol broker process (tansu, in-memory storage, on
//! 127.0.0.1), with the real `cairn serve` binary and a shared Redis: a turn end to
//! end through `user_events` → `reasoning_tasks` → answer, and two replicas where
//! the one hosting a conversation is killed mid-turn and the other finishes it.
//! The model is an OpenAI-compatible server run by the test (its real wire format).
//!
//! `scripts/test.sh` builds tansu once and sets `CAIRN_TEST_TANSU`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A tansu broker on a free loopback port, killed on drop.
struct Broker {
    child: Child,
    addr: String,
}

impl Broker {
    async fn start() -> Broker {
        let bin = std::env::var("CAIRN_TEST_TANSU").expect(
            "CAIRN_TEST_TANSU is not set: run the tests with scripts/test.sh, which builds tansu",
        );
        let port = common::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let broker = Broker {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&broker.addr).await.is_ok() {
                return broker;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tansu did not listen on {}", broker.addr);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The model: while `hang` is set, requests get no answer (the turn is stuck in
/// its model call, checkpointed); otherwise it answers at once.
#[derive(Clone, Default)]
struct Model {
    hang: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

async fn chat(State(m): State<Model>, Json(body): Json<Value>) -> Json<Value> {
    m.requests.fetch_add(1, Ordering::SeqCst);
    while m.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let question = body["messages"]
        .as_array()
        .and_then(|ms| ms.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("?")
        .to_owned();
    Json(json!({"choices": [{"message": {"role": "assistant",
        "content": format!("You asked: {question}")}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3}}))
}

async fn model() -> (Model, String) {
    let m = Model::default();
    let app = axum::Router::new()
        .route("/chat/completions", post(chat))
        .with_state(m.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (m, url)
}

const SECRET: &str = "kafka-test-secret-0123456789abcdef";

/// Everything the replicas share.
struct Cluster {
    brokers: String,
    redis: String,
    prefix: String,
    model_url: String,
    /// More environment for every replica.
    env: Vec<(String, String)>,
}

/// A `cairn serve` replica.
struct Replica {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Replica {
    fn spawn(c: &Cluster) -> Replica {
        Self::spawn_role(c, None)
    }

    fn spawn_role(c: &Cluster, role: Option<&str>) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        for (k, _) in std::env::vars() {
            if k.starts_with("CAIRN_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(role.map(|r| ["--role", r]).into_iter().flatten())
            .env("CAIRN_KAFKA__BROKERS", &c.brokers)
            .env("CAIRN_KAFKA__TOPIC_PREFIX", &c.prefix)
            .env("CAIRN_KAFKA__PARTITIONS", "4")
            .env("CAIRN_KAFKA__SESSION_TIMEOUT", "3s")
            .env("CAIRN_REDIS__URL", &c.redis)
            .env("CAIRN_REDIS__KEY_PREFIX", &c.prefix)
            .env("CAIRN_AGENT__LEASE_TTL", "2s")
            .env("CAIRN_AUTH__JWT_SECRET", SECRET)
            .env("CAIRN_KNOWLEDGE__ENABLED", "false")
            .env("CAIRN_LLM__PROVIDER", "openai")
            .env("CAIRN_LLM__BASE_URL", &c.model_url)
            .env("CAIRN_LLM__MODEL", "test-model")
            .env("CAIRN_LLM__STREAM", "false")
            .env("CAIRN_LOG", "warn")
            .envs(c.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Replica {
            child: cmd.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn token() -> String {
    token_for("acme", "ana", &[])
}

async fn setup() -> (Broker, Model, Cluster) {
    cairn_llm::http::install_crypto_provider();
    let broker = Broker::start().await;
    let (model, model_url) = model().await;
    let cluster = Cluster {
        brokers: broker.addr.clone(),
        redis: common::redis_url(),
        prefix: format!("k{}.", uuid::Uuid::new_v4().simple()),
        model_url,
        env: Vec::new(),
    };
    (broker, model, cluster)
}

async fn get_json(http: &reqwest::Client, url: &str, token: Option<&str>) -> Value {
    let mut rb = http.get(url);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    rb.send().await.unwrap().json().await.unwrap()
}

async fn new_conversation(http: &reqwest::Client, base: &str, token: &str) -> String {
    let r: Value = http
        .post(format!("{base}/v1/conversations"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_runs_end_to_end_through_a_kafka_broker() {
    let (_broker, _model, cluster) = setup().await;
    let replica = Replica::spawn(&cluster);
    let http = reqwest::Client::new();
    common::wait_ready(&http, &replica.base).await;
    let health: Value = get_json(&http, &format!("{}/health", replica.base), None).await;
    assert_eq!(health["components"]["bus"]["backend"], "kafka", "{health}");
    let token = token();
    let conv = new_conversation(&http, &replica.base, &token).await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http
        .post(format!(
            "{}/v1/conversations/{conv}/messages?wait=true",
            replica.base
        ))
        .bearer_auth(&token)
        .header("traceparent", trace)
        .json(&json!({"content": "where is my parcel?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["answer"]["content"], "You asked: where is my parcel?");

    // The message went through reasoning_tasks keyed by conversation, with the
    // request's trace context in a header and in the envelope.
    let topic = format!("{}reasoning_tasks", cluster.prefix);
    let routed = common::read_topic(&cluster.brokers, &topic, |_, _| true, |r| !r.is_empty()).await;
    let (record, headers) = &routed[0];
    assert_eq!(record["type"], "user.message");
    assert_eq!(record["data"]["conversation_id"], conv.as_str());
    assert_eq!(headers["traceparent"], trace);
    assert_eq!(record["traceparent"], trace);

    // Its steps and answer were republished on conversation_events.
    let topic = format!("{}conversation_events", cluster.prefix);
    let events = common::read_topic(
        &cluster.brokers,
        &topic,
        |r, _| r["data"]["event"]["type"] == "answer.completed",
        |r| !r.is_empty(),
    )
    .await;
    let (answer, _) = &events[0];
    assert_eq!(answer["type"], "conversation.event");
    assert_eq!(answer["data"]["conversation_id"], conv.as_str());
    assert_eq!(
        answer["data"]["event"]["content"],
        "You asked: where is my parcel?"
    );
    cairn_core::schemas::check(answer).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_worker_roles_run_apart() {
    let (_broker, _model, cluster) = setup().await;
    let api = Replica::spawn_role(&cluster, Some("api"));
    let worker = Replica::spawn_role(&cluster, Some("worker"));
    let http = reqwest::Client::new();
    common::wait_ready(&http, &api.base).await;
    common::wait_ready(&http, &worker.base).await;
    let token = token();
    // The worker serves only health endpoints; the API runs no actors.
    let r = http
        .post(format!("{}/v1/conversations", worker.base))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let health: Value = get_json(&http, &format!("{}/health", worker.base), None).await;
    assert_eq!(health["components"]["actors"]["status"], "ok");
    let conv = new_conversation(&http, &api.base, &token).await;
    let r = http
        .post(format!(
            "{}/v1/conversations/{conv}/messages?wait=true",
            api.base
        ))
        .bearer_auth(&token)
        .json(&json!({"content": "split roles?"}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["answer"]["content"], "You asked: split roles?",
        "{body}"
    );
    let health: Value = get_json(&http, &format!("{}/health", api.base), None).await;
    assert_eq!(health["components"]["actors"]["live_conversations"], 0);
}

/// Two replicas, a conversation whose turn hangs in its model call, and which
/// replica hosts it.
struct InFlight {
    _broker: Broker,
    model: Model,
    cluster: Cluster,
    replicas: [Replica; 2],
    token: String,
    conv: String,
    host: usize,
}

async fn turn_in_flight(env: &[(&str, &str)]) -> InFlight {
    let (_broker, model, mut cluster) = setup().await;
    cluster
        .env
        .extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let http = reqwest::Client::new();
    let replicas = [Replica::spawn(&cluster), Replica::spawn(&cluster)];
    for r in &replicas {
        common::wait_ready(&http, &r.base).await;
    }
    // Let the group settle (both replicas own partitions of reasoning_tasks).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let token = token();
    let api = replicas[0].base.clone();
    let conv = new_conversation(&http, &api, &token).await;

    model.hang.store(true, Ordering::SeqCst);
    let r = http
        .post(format!("{api}/v1/conversations/{conv}/messages"))
        .bearer_auth(&token)
        .json(&json!({"content": "cancel my order"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // The turn is in its model call on the replica that owns the conversation.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while model.requests.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the turn never reached the model"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut host = None;
    for (i, r) in replicas.iter().enumerate() {
        let h: Value = get_json(&http, &format!("{}/health", r.base), None).await;
        if h["components"]["actors"]["live_conversations"] == 1 {
            host = Some(i);
        }
    }
    let host = host.expect("one replica hosts the conversation");
    InFlight {
        _broker,
        model,
        cluster,
        replicas,
        token,
        conv,
        host,
    }
}

/// Waits (bounded) until `base` shows the conversation answered; returns its
/// transcript, checked to be one question and one answer.
async fn answered_once(base: &str, conv: &str, token: &str) -> Vec<Value> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let messages = loop {
        let r: Value = get_json(
            &http,
            &format!("{base}/v1/conversations/{conv}/messages"),
            Some(token),
        )
        .await;
        let items = r["items"].as_array().cloned().unwrap_or_default();
        if items.iter().any(|m| m["role"] == "assistant") {
            break items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the turn was not finished: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["user", "assistant"]);
    assert_eq!(messages[1]["content"], "You asked: cancel my order");
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_with_sigterm_exits_in_time_and_the_other_resumes_its_turn() {
    let mut f = turn_in_flight(&[("CAIRN_SERVER__SHUTDOWN_TIMEOUT", "3s")]).await;
    let host = f.host;
    let started = std::time::Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &f.replicas[host].child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    // The model never answers the host: the drain ends at its deadline, the
    // consumers leave the group with their offsets committed, the lease is
    // released, and the process exits through the graceful path, in time.
    let status = loop {
        if let Some(s) = f.replicas[host].child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the replica did not exit within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    f.model.hang.store(false, Ordering::SeqCst);
    // The survivor takes the partitions over and resumes the turn: one answer.
    let survivor = f.replicas[1 - host].base.clone();
    answered_once(&survivor, &f.conv, &f.token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_replica_hosting_a_turn_dies_the_other_finishes_it_once() {
    let InFlight {
        _broker,
        model,
        cluster,
        mut replicas,
        token,
        conv,
        host,
    } = turn_in_flight(&[]).await;
    let http = reqwest::Client::new();
    replicas[host].kill();
    model.hang.store(false, Ordering::SeqCst);

    // The survivor takes the partitions over, waits out the dead owner's lease,
    // and resumes the turn from its checkpoint.
    let survivor = replicas[1 - host].base.clone();
    answered_once(&survivor, &conv, &token).await;

    // One answer in the event stream, after a resumed start.
    let r = http
        .get(format!("{survivor}/v1/conversations/{conv}/events?after=0"))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let events = common::collect_sse(r, Duration::from_secs(5), |evs| {
        evs.iter().any(|(_, kind, _)| kind == "answer.completed")
    })
    .await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "answer.completed").count(),
        1,
        "{kinds:?}"
    );
    assert!(
        events
            .iter()
            .any(|(_, k, d)| k == "turn.started" && d["resumed"] == true),
        "{events:?}"
    );

    // Downstream consumers saw the whole turn on conversation_events: the start on
    // the dead replica, the resumption and the answer on the survivor (whose relay
    // went on from where the dead one had recorded its progress).
    let topic = format!("{}conversation_events", cluster.prefix);
    let published = common::read_topic(
        &cluster.brokers,
        &topic,
        |r, _| r["data"]["conversation_id"] == conv.as_str(),
        |r| {
            r.iter()
                .any(|(b, _)| b["data"]["event"]["type"] == "answer.completed")
        },
    )
    .await;
    let mut seen: Vec<(String, bool)> = published
        .iter()
        .map(|(r, _)| {
            let e = &r["data"]["event"];
            (
                e["type"].as_str().unwrap_or("").to_owned(),
                e["resumed"] == true,
            )
        })
        .collect();
    seen.dedup();
    assert!(seen.contains(&("turn.started".into(), false)), "{seen:?}");
    assert!(seen.contains(&("turn.started".into(), true)), "{seen:?}");
    assert!(
        seen.contains(&("answer.completed".into(), false)),
        "{seen:?}"
    );
}

/// Waits (bounded) until `base` shows `kind` for `turn` in the conversation's events.
async fn event_seen(base: &str, conv: &str, token: &str, turn: &str, kind: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/conversations/{conv}/events?after=0"))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let events = common::collect_sse(r, Duration::from_secs(30), |evs| {
        evs.iter()
            .any(|(_, k, d)| k == kind && d["turn_id"] == turn)
    })
    .await;
    events
        .into_iter()
        .find(|(_, k, d)| k == kind && d["turn_id"] == turn)
        .unwrap_or_else(|| panic!("no {kind} for {turn}"))
        .2
}

/// Cancels cross replicas: a cancel posted to the replica that does not host
/// the turn stops it, and a message with `if_busy: interrupt` posted to either
/// replica travels the bus to the host, which cancels the turn before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_interrupt_reach_the_turn_on_the_other_replica() {
    let f = turn_in_flight(&[]).await;
    let http = reqwest::Client::new();
    let other = f.replicas[1 - f.host].base.clone();
    let (conv, token) = (f.conv.clone(), f.token.clone());
    let items = get_json(
        &http,
        &format!("{other}/v1/conversations/{conv}/messages"),
        Some(&token),
    )
    .await;
    let turn = items["items"][0]["turn_id"].as_str().unwrap().to_owned();
    let r: Value = http
        .post(format!(
            "{other}/v1/conversations/{conv}/turns/{turn}/cancel?wait=true"
        ))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "cancelled", "{r}");

    // The model still hangs: a new turn hangs too, and the interrupt (sent to
    // the other replica) cancels it through the host.
    let post = |base: String, content: &'static str, if_busy: Option<&'static str>| {
        let (http, conv, token) = (http.clone(), conv.clone(), token.clone());
        async move {
            let mut body = json!({"content": content});
            if let Some(p) = if_busy {
                body["if_busy"] = json!(p);
            }
            let r = http
                .post(format!("{base}/v1/conversations/{conv}/messages"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            let v: Value = r.json().await.unwrap();
            v["turn_id"].as_str().unwrap().to_owned()
        }
    };
    let first = post(f.replicas[f.host].base.clone(), "first", None).await;
    event_seen(&other, &conv, &token, &first, "turn.started").await;
    let second = post(other.clone(), "second", Some("interrupt")).await;
    let cancelled = event_seen(&other, &conv, &token, &first, "turn.cancelled").await;
    assert_eq!(cancelled["mode"], "interrupt");
    f.model.hang.store(false, Ordering::SeqCst);
    let answer = event_seen(&other, &conv, &token, &second, "answer.completed").await;
    assert_eq!(answer["content"], "You asked: second");
}

/// Both replicas run the scheduler: a schedule firing every second still
/// starts exactly one turn per fire time (each run's conversation holds one
/// message, answered once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_a_schedule_runs_once_per_fire_time() {
    let (_broker, _model, mut cluster) = setup().await;
    cluster
        .env
        .push(("CAIRN_SCHEDULES__TICK".into(), "\"200ms\"".into()));
    let http = reqwest::Client::new();
    let replicas = [Replica::spawn(&cluster), Replica::spawn(&cluster)];
    for r in &replicas {
        common::wait_ready(&http, &r.base).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let token = token();
    let api = replicas[0].base.clone();
    let r = http
        .post(format!("{api}/v1/schedules"))
        .bearer_auth(&token)
        .json(&json!({"cron": "* * * * * *", "content": "tick"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = http
        .post(format!("{}/v1/schedules/{id}/pause", replicas[1].base))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Let the runs already queued finish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = get_json(
        &http,
        &format!("{api}/v1/conversations?limit=100"),
        Some(&token),
    )
    .await;
    let runs: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["title"] == "Scheduled: tick")
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(runs.len() >= 3, "{list}");
    for conv in &runs {
        let messages = get_json(
            &http,
            &format!("{api}/v1/conversations/{conv}/messages"),
            Some(&token),
        )
        .await;
        let roles: Vec<&str> = messages["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, vec!["user", "assistant"], "{conv}: {messages}");
    }
}

/// A webhook receiver: (webhook-id, body) of every request.
async fn webhook_receiver() -> (Arc<std::sync::Mutex<Vec<(String, Value)>>>, String) {
    let seen: Arc<std::sync::Mutex<Vec<(String, Value)>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(
            move |headers: axum::http::HeaderMap, Json(body): Json<Value>| {
                let s = s.clone();
                async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    s.lock().unwrap().push((id, body));
                    "ok"
                }
            },
        ),
    );
    let url = format!("{}/hook", common::serve_local(app).await);
    (seen, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_runs_the_alert_pipeline_and_the_other_takes_over_from_the_stored_state() {
    let (_broker, _model, mut cluster) = setup().await;
    let (seen, url) = webhook_receiver().await;
    cluster.env = vec![
        ("CAIRN_ALERTS__RECEIVER".into(), "ops".into()),
        ("CAIRN_ALERTS__GROUP_WAIT".into(), "300ms".into()),
        ("CAIRN_ALERTS__GROUP_INTERVAL".into(), "500ms".into()),
        (
            "CAIRN_ALERTS__RECEIVERS".into(),
            format!(
                "[{{name = \"ops\", all_tenants = true, max_per_second = 100.0, webhook = {{ url = \"{url}\" }} }}]"
            ),
        ),
    ];
    let http = reqwest::Client::new();
    let mut replicas = [Replica::spawn(&cluster), Replica::spawn(&cluster)];
    for r in &replicas {
        common::wait_ready(&http, &r.base).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let auth = cairn_api::auth::Authenticator::new(SECRET.as_bytes(), &Default::default());
    let token = auth
        .mint(
            &cairn_core::UserId::parse("pager").unwrap(),
            &cairn_core::TenantId::parse("acme").unwrap(),
            Duration::from_secs(600),
            &["alerts".to_owned()],
        )
        .unwrap();
    let raise = |base: String, name: &'static str| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            let r = http
                .post(format!("{base}/v1/alerts"))
                .bearer_auth(&token)
                .json(&json!([{"labels": {"alertname": name}}]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    };
    let count = |name: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| b["groupLabels"]["alertname"] == name)
            .count()
    };
    let wait = |name: &'static str| {
        let count = &count;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while count(name) == 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name} was never notified"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Raised on each replica: each notified once, by whichever runs the pipeline.
    raise(replicas[0].base.clone(), "First").await;
    raise(replicas[1].base.clone(), "Second").await;
    wait("First").await;
    wait("Second").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((count("First"), count("Second")), (1, 1));
    // While a rebalance of any of the replicas' consumer groups settles, the
    // old owner may still report itself active for a moment: read until the
    // ownership has settled (at most 20 s), then require exactly one.
    let mut active = Vec::new();
    for _ in 0..100 {
        active.clear();
        for (i, r) in replicas.iter().enumerate() {
            let h = get_json(&http, &format!("{}/health", r.base), None).await;
            if h["components"]["alerts"]["pipeline"]["active"] == true {
                active.push(i);
            }
        }
        if active.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(active.len(), 1, "exactly one replica runs the pipeline");
    let (dead, survivor) = (active[0], 1 - active[0]);
    replicas[dead].kill();
    // The survivor takes the partition, loads the stored groups (no repeat of
    // First or Second) and notifies a new alert.
    raise(replicas[survivor].base.clone(), "Third").await;
    wait("Third").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((count("First"), count("Second"), count("Third")), (1, 1, 1));
    let h = get_json(&http, &format!("{}/health", replicas[survivor].base), None).await;
    assert_eq!(h["components"]["alerts"]["pipeline"]["active"], true);
    assert!(
        h["components"]["alerts"]["pipeline"]["alerts"]
            .as_u64()
            .unwrap()
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_each_message_is_analysed_once() {
    let (_broker, _model, cluster) = setup().await;
    let http = reqwest::Client::new();
    let replicas = [Replica::spawn(&cluster), Replica::spawn(&cluster)];
    for r in &replicas {
        common::wait_ready(&http, &r.base).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let token = token();
    let convs: Vec<String> = (0..4)
        .map(|i| format!("sup-{i}-{}", uuid::Uuid::new_v4().simple()))
        .collect();
    // Two messages per conversation, posted through alternating replicas.
    for round in 0..2 {
        for (i, conv) in convs.iter().enumerate() {
            let base = &replicas[(i + round) % 2].base;
            let r = http
                .post(format!("{base}/v1/messages"))
                .bearer_auth(&token)
                .json(&json!({"conversation_id": conv, "sender": "customer", "message": format!("My order {round} is late, where is it?"), "channel": "email"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    }
    for conv in &convs {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let v = get_json(
                &http,
                &format!("{}/v1/conversations/{conv}/insights", replicas[0].base),
                Some(&token),
            )
            .await;
            if v["analyzed_messages"] == 2 {
                assert_eq!(v["insights"]["intent"], "order_status", "{v:#}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{conv} not analysed: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for conv in &convs {
        // The stream holds exactly one insights.updated per message.
        let resp = http
            .get(format!(
                "{}/v1/conversations/{conv}/events",
                replicas[1].base
            ))
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .header("last-event-id", "0")
            .send()
            .await
            .unwrap();
        let events = common::collect_sse(resp, Duration::from_secs(2), |_| false).await;
        let mut ids: Vec<String> = events
            .iter()
            .filter(|e| e.1 == "insights.updated")
            .map(|e| e.2["message_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 2, "{conv}: {events:#?}");
        ids.dedup();
        assert_eq!(ids.len(), 2);
        let m = get_json(
            &http,
            &format!("{}/v1/conversations/{conv}/messages", replicas[1].base),
            Some(&token),
        )
        .await;
        assert_eq!(m["items"].as_array().unwrap().len(), 2, "{m:#}");
    }
}

fn token_for(tenant: &str, user: &str, scopes: &[&str]) -> String {
    let auth = cairn_api::auth::Authenticator::new(SECRET.as_bytes(), &Default::default());
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
    auth.mint(
        &cairn_core::UserId::parse(user).unwrap(),
        &cairn_core::TenantId::parse(tenant).unwrap(),
        Duration::from_secs(600),
        &scopes,
    )
    .unwrap()
}

/// A support article in `sections` parts, each carrying `marker`, so that a
/// search hit tells which version it came from.
fn article(marker: &str, sections: usize) -> String {
    let mut text = String::from("# Refund policy\n\n");
    for i in 0..sections {
        text.push_str(&format!(
            "## Rule {i}\n\n{marker} The refund window for item class {i} is {} days from delivery; \
             refunds go back to the original payment method.\n\n",
            14 + i
        ));
    }
    text
}

/// The texts `GET /v1/search` returns for `q`.
async fn search_texts(http: &reqwest::Client, base: &str, token: &str, q: &str) -> Vec<String> {
    let r = http
        .get(format!(
            "{base}/v1/search?limit=10&q={}",
            q.replace(' ', "%20")
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap().to_owned())
        .collect()
}

async fn upload(http: &reqwest::Client, base: &str, token: &str, id: &str, text: &str) {
    let r = http
        .post(format!("{base}/v1/documents"))
        .bearer_auth(token)
        .json(&json!({"document_id": id, "title": "Refund policy", "text": text}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
}

/// Waits until the document's latest job has ended; returns the record.
async fn document_done(http: &reqwest::Client, base: &str, token: &str, id: &str) -> Value {
    for _ in 0..1500 {
        let d = get_json(http, &format!("{base}/v1/documents/{id}"), Some(token)).await;
        if d["job"]["status"] == "done" || d["job"]["status"] == "failed" {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("document {id} did not finish");
}

/// The production shape of the knowledge path: two replicas on the broker and
/// Redis, their chunks on a real Qdrant server (`scripts/test.sh` starts one).
/// A document uploaded through one replica is found and cited through the
/// other; a re-upload replaces it while a reader searching through the other
/// replica never sees two versions at once, nor the old one after the new; a
/// delete removes it; another tenant (with a document of the same id) never
/// sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_qdrant_server_two_replicas_share_documents_and_a_replacement_is_atomic() {
    let qdrant = std::env::var("CAIRN_TEST_QDRANT_URL").expect(
        "CAIRN_TEST_QDRANT_URL is not set: run the tests with scripts/test.sh, which starts a Qdrant server",
    );
    let (_broker, _model, mut cluster) = setup().await;
    let collection = format!("cairn_e2e_{}", uuid::Uuid::new_v4().simple());
    cluster.env = vec![
        ("CAIRN_KNOWLEDGE__ENABLED".into(), "true".into()),
        ("CAIRN_KNOWLEDGE__QDRANT_URL".into(), qdrant),
        ("CAIRN_KNOWLEDGE__QDRANT_COLLECTION".into(), collection),
        ("CAIRN_LLM__PROVIDER".into(), "offline".into()),
    ];
    let a = Replica::spawn(&cluster);
    let b = Replica::spawn(&cluster);
    let http = reqwest::Client::new();
    common::wait_ready(&http, &a.base).await;
    common::wait_ready(&http, &b.base).await;
    let health: Value = get_json(&http, &format!("{}/health", b.base), None).await;
    assert_eq!(
        health["components"]["knowledge"]["backend"], "qdrant",
        "{health}"
    );
    let ops = token_for("acme", "ops", &["ingest"]);
    let q = "refund window item class";

    // Uploaded through A, ingested by whichever replica took the job, found through B.
    upload(&http, &a.base, &ops, "refunds", &article("VERSIONONE", 40)).await;
    let d = document_done(&http, &b.base, &ops, "refunds").await;
    assert_eq!(d["job"]["status"], "done", "{d}");
    let chunks_v1 = d["chunks"].as_u64().unwrap();
    assert!(chunks_v1 > 10, "{d}");
    let hits = search_texts(&http, &b.base, &ops, q).await;
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().all(|t| t.contains("VERSIONONE")), "{hits:?}");

    // An answer through B cites it.
    let token = token();
    let conv = new_conversation(&http, &b.base, &token).await;
    let r: Value = http
        .post(format!(
            "{}/v1/conversations/{conv}/messages?wait=true",
            b.base
        ))
        .bearer_auth(&token)
        .json(&json!({"content": "What is the refund window for item class 3?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["answer"]["citations"][0]["source"], "refunds", "{r}");

    // Another tenant uploads a document with the same id: each sees only its own.
    let other = token_for("globex", "ops", &["ingest"]);
    assert!(search_texts(&http, &b.base, &other, q).await.is_empty());
    let r = http
        .get(format!("{}/v1/documents/refunds", b.base))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    upload(&http, &b.base, &other, "refunds", &article("GLOBEXONLY", 3)).await;
    assert_eq!(
        document_done(&http, &a.base, &other, "refunds").await["job"]["status"],
        "done"
    );
    let theirs = search_texts(&http, &a.base, &other, q).await;
    assert!(
        !theirs.is_empty() && theirs.iter().all(|t| t.contains("GLOBEXONLY")),
        "{theirs:?}"
    );
    let ours = search_texts(&http, &a.base, &ops, q).await;
    assert!(ours.iter().all(|t| t.contains("VERSIONONE")), "{ours:?}");

    // A re-upload through A while a reader searches through B.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (http, base, ops, stop) = (http.clone(), b.base.clone(), ops.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut searches, mut saw_new, mut mixed, mut went_back, mut empty) =
                (0, false, 0, 0, 0);
            while !stop.load(Ordering::SeqCst) {
                let hits = search_texts(&http, &base, &ops, q).await;
                searches += 1;
                let old = hits.iter().filter(|t| t.contains("VERSIONONE")).count();
                let new = hits.iter().filter(|t| t.contains("VERSIONTWO")).count();
                if old > 0 && new > 0 {
                    mixed += 1;
                }
                if saw_new && old > 0 {
                    went_back += 1;
                }
                if hits.is_empty() {
                    empty += 1;
                }
                saw_new |= new > 0;
            }
            (searches, saw_new, mixed, went_back, empty)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    upload(&http, &a.base, &ops, "refunds", &article("VERSIONTWO", 60)).await;
    let d = document_done(&http, &a.base, &ops, "refunds").await;
    assert_eq!(d["job"]["outcome"], "replaced", "{d}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (searches, saw_new, mixed, went_back, empty) = reader.await.unwrap();
    eprintln!("reader: {searches} searches during the replacement");
    assert!(searches >= 5, "the reader searched {searches} times");
    assert!(saw_new, "the reader saw the new version");
    assert_eq!(mixed, 0, "searches holding both versions, of {searches}");
    assert_eq!(
        went_back, 0,
        "searches back on the old version after the new, of {searches}"
    );
    assert_eq!(empty, 0, "searches finding nothing, of {searches}");
    let hits = search_texts(&http, &b.base, &ops, q).await;
    assert!(hits.iter().all(|t| t.contains("VERSIONTWO")), "{hits:?}");
    assert!(d["chunks"].as_u64().unwrap() > chunks_v1, "{d}");

    // A delete through B removes every chunk, and only this tenant's.
    let r = http
        .delete(format!("{}/v1/documents/refunds", b.base))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(search_texts(&http, &a.base, &ops, q).await.is_empty());
    let theirs = search_texts(&http, &a.base, &other, q).await;
    assert!(
        !theirs.is_empty() && theirs.iter().all(|t| t.contains("GLOBEXONLY")),
        "{theirs:?}"
    );
}
