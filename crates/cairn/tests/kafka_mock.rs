//! Cairn on Kafka, against librdkafka's own mock cluster (in-process, the real
//! Kafka protocol): poison events reach the DLQ with their provenance headers, a
//! redelivered message never runs its turn twice, and the API answers 503 while
//! the broker is down and recovers when it is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_core::config::Config;
use cairn_core::ports::Topics;
use common::Server;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

const PARTITIONS: i32 = 4;

type Cluster = MockCluster<'static, DefaultProducerContext>;

/// A mock cluster with Cairn's topics under a fresh prefix, and a config using it.
fn setup(dir: &std::path::Path) -> (Cluster, Config, Topics) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let prefix = format!("k{}.", uuid::Uuid::new_v4().simple());
    let topics = Topics::with_prefix(&prefix);
    for t in topics.all() {
        cluster.create_topic(t, PARTITIONS, 1).unwrap();
    }
    let mut config = common::config(dir, None);
    config.kafka.brokers = cluster.bootstrap_servers();
    config.kafka.topic_prefix = Some(prefix);
    config.kafka.session_timeout = Duration::from_secs(3);
    config.kafka.produce_timeout = Duration::from_secs(1);
    config.knowledge.enabled = false;
    // These tests rewind and inspect the conversation groups on the mock cluster;
    // the alerts and insights consumer groups (covered in kafka_tansu.rs) only
    // add rebalances.
    config.alerts.enabled = false;
    config.insights.enabled = false;
    (cluster, config, topics)
}

fn client_config(cluster: &Cluster) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cluster.bootstrap_servers());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_reach_the_dlq_with_their_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, config, topics) = setup(dir.path());
    let mut server = Server::start(&config).await;
    let api = server.client(&server.token("acme", "ana"));

    // Three kinds of poison, produced by an outside producer.
    let producer: FutureProducer = client_config(&cluster).create().unwrap();
    let conv = "c-poison";
    let good = json!({
        "schema_version": 1, "event_id": uuid::Uuid::now_v7().to_string(), "type": "user.message",
        "tenant_id": "acme", "occurred_at": "2026-11-21T10:00:00Z",
        "data": {"tenant_id": "acme", "conversation_id": conv, "user_id": "ana", "message_id": "m1",
                 "turn_id": "t1", "content": "hi", "accepted_at": "2026-11-21T10:00:00Z"}
    });
    let mut empty = good.clone();
    empty["data"]["content"] = json!("");
    let mut unknown = good.clone();
    unknown["type"] = json!("user.vanished");
    let poison: [(&str, Vec<u8>); 3] = [
        ("undecodable", b"{this is not json".to_vec()),
        ("schema", serde_json::to_vec(&empty).unwrap()),
        ("unknown_type", serde_json::to_vec(&unknown).unwrap()),
    ];
    let mut sent = HashMap::new();
    for (class, payload) in &poison {
        let d = producer
            .send(
                FutureRecord::to(&topics.user_events)
                    .key(conv)
                    .payload(payload),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        sent.insert((*class).to_owned(), (d.partition, d.offset));
    }

    let dlq = common::read_topic(
        &cluster.bootstrap_servers(),
        &topics.dlq,
        |_, _| true,
        |r| r.len() == 3,
    )
    .await;
    for (record, headers) in &dlq {
        let class = headers["cairn.dlq.error_class"].clone();
        let (partition, offset) = sent.remove(&class).expect("one record per kind of poison");
        assert_eq!(headers["cairn.dlq.topic"], topics.user_events);
        assert_eq!(headers["cairn.dlq.partition"], partition.to_string());
        assert_eq!(headers["cairn.dlq.offset"], offset.to_string());
        assert!(
            headers["cairn.dlq.group"].ends_with("cairn-router"),
            "{headers:?}"
        );
        assert_eq!(headers["cairn.dlq.attempts"], "1");
        assert!(!headers["cairn.dlq.reason"].is_empty());
        // The record itself is a dlq.record event carrying the same facts.
        assert_eq!(record["type"], "dlq.record");
        assert_eq!(record["data"]["error_class"], class);
        assert_eq!(record["data"]["offset"], offset);
        cairn_core::schemas::check(record).unwrap();
    }
    assert!(sent.is_empty());
    assert!(
        dlq.iter()
            .any(|(r, _)| r["data"]["payload"] == "{this is not json")
    );

    // The consumers moved past the poison: the service still answers.
    let c = api.new_conversation().await;
    let answer = api.ask(&c, "hello after the poison").await;
    assert!(answer["answer"]["content"].is_string(), "{answer}");
    server.stop().await;
}

/// The committed offset of `group` on every partition of `topic` (-1: none).
fn committed(cluster: &Cluster, group: &str, topic: &str) -> Vec<i64> {
    let c: BaseConsumer = client_config(cluster)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..PARTITIONS)
        .map(|p| match got.find_partition(topic, p).unwrap().offset() {
            Offset::Offset(o) => o,
            _ => -1,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_does_not_run_its_turn_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, config, topics) = setup(dir.path());
    let mut server = Server::start(&config).await;
    let api = server.client(&server.token("acme", "ana"));
    let conv = api.new_conversation().await;
    api.ask(&conv, "what is the refund window?").await;
    let group = format!(
        "{}cairn-conversations",
        config.kafka.topic_prefix.clone().unwrap()
    );
    // The offset is stored after the turn and committed by the consumer shortly
    // after: wait for it (bounded) so that stopping cannot race it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while committed(&cluster, &group, &topics.reasoning_tasks)
        .iter()
        .all(|o| *o <= 0)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;

    let done = committed(&cluster, &group, &topics.reasoning_tasks);
    assert_eq!(
        done.iter().filter(|o| **o > 0).count(),
        1,
        "one record consumed: {done:?}"
    );

    // The worker "died before storing its offset": rewind the group, as if the
    // commit never happened, and start a new process on the same memory.
    // (A member of the group commits offset 0 on every partition.)
    let rewind: StreamConsumer = client_config(&cluster)
        .set("group.id", &group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "3000")
        .create()
        .unwrap();
    rewind.subscribe(&[&topics.reasoning_tasks]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while rewind.assignment().unwrap().count() < PARTITIONS as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rewinding member got no partitions"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), rewind.recv()).await;
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&topics.reasoning_tasks, p, Offset::Offset(0))
            .unwrap();
    }
    rewind.commit(&tpl, CommitMode::Sync).unwrap();
    drop(rewind);
    assert!(
        committed(&cluster, &group, &topics.reasoning_tasks)
            .iter()
            .all(|o| *o <= 0)
    );

    let mut again = Server::start(&config).await;
    let api = again.client(&again.token("acme", "ana"));
    // The record is read again (the group's offset moves back to where it was)…
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let caught_up = |now: Vec<i64>| now.iter().zip(&done).all(|(n, d)| n >= d);
    while !caught_up(committed(&cluster, &group, &topics.reasoning_tasks)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the redelivered record was not consumed: {:?} vs {done:?}",
            committed(&cluster, &group, &topics.reasoning_tasks)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // …and skipped: one question, one answer.
    let history = api.get(&format!("/v1/conversations/{conv}/messages")).await;
    let roles: Vec<&str> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["user", "assistant"], "{:?}", history.body);
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_503_while_the_broker_is_down_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, mut config, _topics) = setup(dir.path());
    config.knowledge.enabled = true;
    let mut server = Server::start(&config).await;
    let api = server.client(&server.token_with_scopes("acme", "ana", &["ingest"]));
    let conv = api.new_conversation().await;
    api.ask(&conv, "first question").await;
    let doc = |id: &str, title: &str| json!({"document_id": id, "title": title, "text": "How to reset a router."});
    assert_eq!(
        api.post("/v1/documents", doc("kept", "First")).await.status,
        202
    );
    let mut first = Value::Null;
    for _ in 0..200 {
        first = api.get("/v1/documents/kept").await.body;
        if first["job"]["status"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(first["job"]["status"], "done", "{first}");

    cluster.broker_down(-1).unwrap();
    // An upload the bus refuses is never left `queued`: a new version of a
    // finished document leaves it as it was, a new document is recorded as
    // failed with the reason.
    let r = api.post("/v1/documents", doc("kept", "Second")).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    let kept = api.get("/v1/documents/kept").await.body;
    assert_eq!(kept["title"], "First", "{kept}");
    assert_eq!(kept["job"]["status"], "done", "{kept}");
    assert_eq!(kept["chunks"], first["chunks"], "{kept}");
    let r = api.post("/v1/documents", doc("fresh", "Fresh")).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    let fresh = api.get("/v1/documents/fresh").await.body;
    assert_eq!(fresh["job"]["status"], "failed", "{fresh}");
    assert!(
        fresh["job"]["error"]
            .as_str()
            .unwrap()
            .contains("not accepted"),
        "{fresh}"
    );
    let started = std::time::Instant::now();
    // The client sends an idempotency key, so it can retry safely.
    let lost = api
        .req(
            reqwest::Method::POST,
            &format!("/v1/conversations/{conv}/messages"),
        )
        .header("idempotency-key", "second-question")
        .json(&json!({"content": "second question"}));
    let r = api.send(lost).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "unavailable", "{:?}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("event bus")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered within the produce deadline"
    );
    let health = api.get("/health").await;
    assert_eq!(health.status, 503);
    assert_eq!(
        health.body["components"]["bus"]["status"], "down",
        "{:?}",
        health.body
    );
    assert_eq!(api.get("/ready").await.status, 503);

    cluster.broker_up(-1).unwrap();
    let mut answered = None;
    for _ in 0..60 {
        let retry = api
            .req(
                reqwest::Method::POST,
                &format!("/v1/conversations/{conv}/messages?wait=true"),
            )
            .header("idempotency-key", "second-question")
            .json(&json!({"content": "second question"}));
        let r = api.send(retry).await;
        if r.status == 200 {
            answered = Some(r.body);
            break;
        }
        assert_eq!(r.status, 503, "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let answered = answered.expect("accepted again once the broker is back");
    let health = api.get("/health").await;
    assert_eq!(
        health.body["components"]["bus"]["status"], "ok",
        "{:?}",
        health.body
    );
    assert_eq!(api.get("/ready").await.status, 200);
    assert!(answered["answer"]["content"].is_string());
    // Nothing of the refused message was kept.
    let history = api.get(&format!("/v1/conversations/{conv}/messages")).await;
    let texts: Vec<&str> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["first question", "second question"]);
    server.stop().await;
}
