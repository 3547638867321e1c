//! The Kafka adapter against librdkafka's own mock cluster (in-process, the real
//! Kafka protocol): round trip, partitioning, offsets kept across consumers, and a
//! rebalance between two consumers of one group.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_bus::{KafkaBus, KafkaSettings};
use cairn_core::TenantId;
use cairn_core::envelope::{Envelope, USER_MESSAGE};
use cairn_core::ports::{Assignment, BusConsumer, EventBus, Topics, partition_for};
use rdkafka::mocking::MockCluster;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const PARTITIONS: i32 = 4;

fn cluster(topics: &Topics) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let c = MockCluster::new(1).expect("mock cluster");
    for t in topics.all() {
        c.create_topic(t, PARTITIONS, 1).unwrap();
    }
    c
}

async fn bus(
    c: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    topics: &Topics,
) -> KafkaBus {
    let mut s = KafkaSettings::new(&c.bootstrap_servers());
    s.produce_timeout = Duration::from_secs(3);
    s.session_timeout = Duration::from_secs(3);
    KafkaBus::connect(s, topics).await.expect("connects")
}

fn message(conv: &str, n: usize) -> Envelope {
    Envelope::new(
        USER_MESSAGE,
        TenantId::parse("acme").unwrap(),
        json!({
            "tenant_id": "acme", "conversation_id": conv, "user_id": "ana",
            "message_id": format!("m{n}"), "turn_id": format!("t{n}"),
            "content": format!("question {n}"), "accepted_at": "2026-11-21T10:00:00Z"
        }),
    )
}

async fn next(c: &mut Box<dyn BusConsumer>) -> cairn_core::ports::BusRecord {
    tokio::time::timeout(Duration::from_secs(20), c.next())
        .await
        .expect("a record within 20 s")
        .unwrap()
}

async fn wait_for(rx: &mut tokio::sync::watch::Receiver<Assignment>, n: usize) -> Vec<u32> {
    let got = tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|a| a.partitions.len() == n),
    )
    .await
    .map(|r| r.unwrap().partitions.clone());
    got.unwrap_or_else(|_| {
        panic!(
            "assignment of {n} partitions within 30 s: {:?}",
            rx.borrow()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_keyed_like_kafka_with_trace_context() {
    let topics = Topics::with_prefix("rt.");
    let c = cluster(&topics);
    let bus = bus(&c, &topics).await;
    assert_eq!(bus.backend(), "kafka");
    assert_eq!(bus.partition_count(&topics.user_events).await.unwrap(), 4);
    let mut consumer = bus
        .subscribe(&topics.user_events, "rt-group")
        .await
        .unwrap();

    let mut sent = HashMap::new();
    for n in 0..20 {
        let key = format!("conv-{n}");
        let mut e = message(&key, n);
        if n == 0 {
            e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        }
        bus.publish(&topics.user_events, &key, &e).await.unwrap();
        sent.insert(e.event_id.clone(), (key, e));
    }
    for _ in 0..20 {
        let rec = next(&mut consumer).await;
        let (key, e) = sent
            .remove(&rec.envelope.event_id)
            .expect("a record we sent, once");
        assert_eq!(rec.key, key);
        assert_eq!(rec.envelope, e, "the envelope survives the trip");
        // The producer partitions like Kafka's Java clients (murmur2), which is
        // what replicas use to tell which conversations they own.
        assert_eq!(rec.partition, partition_for(&key, 4), "key {key}");
        consumer.commit(rec.partition, rec.offset).await.unwrap();
    }
    assert!(sent.is_empty());
    drop(consumer);

    // The group's offsets were committed when the consumer closed: a new member
    // reads only what comes after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = bus
        .subscribe(&topics.user_events, "rt-group")
        .await
        .unwrap();
    let later = message("conv-later", 99);
    bus.publish(&topics.user_events, "conv-later", &later)
        .await
        .unwrap();
    let rec = next(&mut again).await;
    assert_eq!(rec.envelope.event_id, later.event_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_not_committed_are_delivered_again_to_the_next_consumer() {
    let topics = Topics::with_prefix("rd.");
    let c = cluster(&topics);
    let bus = bus(&c, &topics).await;
    let mut first = bus
        .subscribe(&topics.reasoning_tasks, "rd-group")
        .await
        .unwrap();
    let done = message("conv-a", 1);
    let lost = message("conv-a", 2);
    bus.publish(&topics.reasoning_tasks, "conv-a", &done)
        .await
        .unwrap();
    bus.publish(&topics.reasoning_tasks, "conv-a", &lost)
        .await
        .unwrap();
    let r1 = next(&mut first).await;
    let r2 = next(&mut first).await;
    assert_eq!(r1.envelope.event_id, done.event_id);
    assert_eq!(r2.envelope.event_id, lost.event_id);
    first.commit(r1.partition, r1.offset).await.unwrap();
    // Dies before storing the second record's offset.
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = bus
        .subscribe(&topics.reasoning_tasks, "rd-group")
        .await
        .unwrap();
    let again = next(&mut second).await;
    assert_eq!(
        again.envelope.event_id, lost.event_id,
        "the unfinished record comes back"
    );
    assert_eq!(again.offset, r2.offset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_of_a_group_split_the_partitions_and_one_takes_all_back() {
    let topics = Topics::with_prefix("rb.");
    let c = cluster(&topics);
    let bus = bus(&c, &topics).await;
    let mut a = bus
        .subscribe(&topics.reasoning_tasks, "rb-group")
        .await
        .unwrap();
    let mut a_rx = a.assignment().expect("kafka consumers report assignments");
    assert_eq!(wait_for(&mut a_rx, 4).await, vec![0, 1, 2, 3]);

    let mut b = bus
        .subscribe(&topics.reasoning_tasks, "rb-group")
        .await
        .unwrap();
    let mut b_rx = b.assignment().unwrap();
    let b_parts = wait_for(&mut b_rx, 2).await;
    let a_parts = wait_for(&mut a_rx, 2).await;
    let all: HashSet<u32> = a_parts.iter().chain(&b_parts).copied().collect();
    assert_eq!(all.len(), 4, "a {a_parts:?} b {b_parts:?}");

    // Each consumer gets exactly the records of its own partitions.
    let mut expected: HashMap<String, u32> = HashMap::new();
    for n in 0..40 {
        let key = format!("conv-{n}");
        let e = message(&key, n);
        bus.publish(&topics.reasoning_tasks, &key, &e)
            .await
            .unwrap();
        expected.insert(e.event_id.clone(), partition_for(&key, 4));
    }
    let a_count = expected.values().filter(|p| a_parts.contains(p)).count();
    let mut seen = HashSet::new();
    for (consumer, parts, count) in [
        (&mut a, &a_parts, a_count),
        (&mut b, &b_parts, 40 - a_count),
    ] {
        for _ in 0..count {
            let rec = next(consumer).await;
            assert!(parts.contains(&rec.partition));
            assert_eq!(expected[&rec.envelope.event_id], rec.partition);
            assert!(seen.insert(rec.envelope.event_id.clone()), "delivered once");
            consumer.commit(rec.partition, rec.offset).await.unwrap();
        }
    }
    assert_eq!(seen.len(), 40);

    // B leaves: A owns everything again.
    drop(b);
    assert_eq!(wait_for(&mut a_rx, 4).await, vec![0, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_work_does_not_push_the_consumer_out_of_its_group() {
    let topics = Topics::with_prefix("sw.");
    let c = cluster(&topics);
    let mut s = KafkaSettings::new(&c.bootstrap_servers());
    s.session_timeout = Duration::from_secs(3);
    // A consumer that stops polling for longer than this is thrown out.
    s.properties
        .insert("max.poll.interval.ms".into(), "3000".into());
    let bus = KafkaBus::connect(s, &topics).await.unwrap();
    let mut consumer = bus
        .subscribe(&topics.ingestion_events, "sw-group")
        .await
        .unwrap();
    let mut rx = consumer.assignment().unwrap();
    wait_for(&mut rx, 4).await;
    let first = message("doc-1", 1);
    bus.publish(&topics.ingestion_events, "doc-1", &first)
        .await
        .unwrap();
    let rec = next(&mut consumer).await;
    // The "work" takes three times the poll interval, without calling next().
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        !rx.has_changed().unwrap(),
        "no rebalance: {:?}",
        rx.borrow()
    );
    assert_eq!(rx.borrow().partitions.len(), 4);
    consumer.commit(rec.partition, rec.offset).await.unwrap();
    let second = message("doc-2", 2);
    bus.publish(&topics.ingestion_events, "doc-2", &second)
        .await
        .unwrap();
    assert_eq!(next(&mut consumer).await.envelope.event_id, second.event_id);
}
