//! The Kafka EventBus, on librdkafka (rdkafka).
//!
//! - **Topics** are created at start-up when missing (admin client) with the
//!   configured partitions, replication factor and `max.message.bytes`.
//! - **Producer**: idempotent (`enable.idempotence`, `acks=all`), Java-compatible
//!   murmur2 partitioning of keys ([`partition_for`](cairn_core::ports::partition_for)
//!   gives the same answer), W3C `traceparent` in a header. `publish` returns
//!   only once the broker acknowledged the record, and fails after
//!   `produce_timeout` when it cannot.
//! - **Consumers** (one per bridge and group): `enable.auto.offset.store=false`,
//!   so offsets are stored only when the bridge says a record's work is done
//!   ([`BusConsumer::commit`]); stored offsets are auto-committed every second and
//!   committed synchronously when partitions are revoked. A dedicated thread per
//!   consumer polls librdkafka all the time and hands records over through a
//!   bounded buffer, pausing the partitions while the buffer is full: slow work
//!   never makes a consumer miss `max.poll.interval.ms` and leave its group, and
//!   librdkafka's blocking calls (the synchronous commit on revoke, closing the
//!   consumer) never hold an async worker — with the broker away they can block
//!   for long, and on a small runtime that would stall every task. Rebalances use the
//!   `cooperative-sticky` protocol, and the current assignment is published on a
//!   watch channel ([`BusConsumer::assignment`]). Every record is decoded and
//!   checked against the event schemas ([`cairn_core::schemas::decode`]); refused
//!   records come out as [`BusError::Undecodable`] for the DLQ.

use async_trait::async_trait;
use cairn_core::envelope::Envelope;
use cairn_core::ports::{Assignment, BusConsumer, BusError, BusRecord, EventBus, Topics};
use cairn_core::schemas;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, TopicPartitionList};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How the Kafka bus connects and what it creates (from `[kafka]`).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Prefix of consumer-group names (the topic prefix).
    pub group_prefix: String,
    /// Partitions of topics created at start-up.
    pub partitions: u32,
    /// Replication factor of topics created at start-up.
    pub replication_factor: u16,
    /// Deadline of one publish, broker acknowledgement included.
    pub produce_timeout: Duration,
    /// Consumer group session timeout.
    pub session_timeout: Duration,
    /// Largest record.
    pub max_message_bytes: usize,
    /// Extra librdkafka properties (security settings and the like).
    pub properties: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// Settings for `brokers` with the `[kafka]` defaults.
    pub fn new(brokers: &str) -> Self {
        let d = cairn_core::config::KafkaConfig::default();
        Self::from_config(
            &cairn_core::config::KafkaConfig {
                brokers: brokers.to_owned(),
                ..d
            },
            "",
            None,
        )
    }

    /// The settings of `[kafka]`; `sasl_password` is the value of the variable
    /// named by `kafka.sasl_password_env`.
    pub fn from_config(
        c: &cairn_core::config::KafkaConfig,
        prefix: &str,
        sasl_password: Option<String>,
    ) -> Self {
        let mut properties = c.properties.clone();
        if let Some(p) = sasl_password {
            properties.insert("sasl.password".into(), p);
        }
        Self {
            brokers: c.brokers.clone(),
            group_prefix: prefix.to_owned(),
            partitions: c.partitions,
            replication_factor: c.replication_factor,
            produce_timeout: c.produce_timeout,
            session_timeout: c.session_timeout,
            max_message_bytes: c.max_message_bytes,
            properties,
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "cairn")
            .set("message.max.bytes", self.max_message_bytes.to_string());
        c
    }

    /// Applies the configured properties last, so they can override Cairn's
    /// defaults (security settings, tuning).
    fn finish(&self, c: &mut ClientConfig) -> ClientConfig {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.clone()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// The Kafka bus. Cheap to clone; clones share the producer.
#[derive(Clone)]
pub struct KafkaBus {
    producer: FutureProducer,
    settings: Arc<KafkaSettings>,
}

impl KafkaBus {
    /// Connects, and creates the topics of `topics` that are missing.
    pub async fn connect(settings: KafkaSettings, topics: &Topics) -> Result<Self, BusError> {
        let mut config = settings.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                settings.produce_timeout.as_millis().to_string(),
            );
        let producer: FutureProducer =
            settings.finish(&mut config).create().map_err(unavailable)?;
        let bus = Self {
            producer,
            settings: Arc::new(settings),
        };
        bus.ensure_topics(topics).await?;
        Ok(bus)
    }

    /// Creates the missing topics; an existing topic is left as it is.
    async fn ensure_topics(&self, topics: &Topics) -> Result<(), BusError> {
        let s = &self.settings;
        let admin: AdminClient<DefaultClientContext> = s
            .finish(&mut s.client_config())
            .create()
            .map_err(unavailable)?;
        let names = topics.all();
        let existing = self.topic_names().await?;
        let missing: Vec<&String> = names
            .iter()
            .copied()
            .filter(|n| !existing.contains(n.as_str()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let max_bytes = s.max_message_bytes.to_string();
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|n| {
                NewTopic::new(
                    n.as_str(),
                    i32::try_from(s.partitions).unwrap_or(i32::MAX),
                    TopicReplication::Fixed(i32::from(s.replication_factor)),
                )
                .set("max.message.bytes", &max_bytes)
            })
            .collect();
        let opts = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .request_timeout(Some(Duration::from_secs(15)));
        let results = admin
            .create_topics(new.iter(), &opts)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot create topics: {e}")))?;
        for r in results {
            match r {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BusError::Unavailable(format!(
                        "cannot create topic {name}: {code}"
                    )));
                }
            }
        }
        for n in names {
            self.partition_count(n).await?;
        }
        Ok(())
    }

    /// Fetches the cluster's metadata (of `topic` only, when given) on the
    /// blocking pool and hands it to `read`.
    async fn with_metadata<T: Send + 'static>(
        &self,
        topic: Option<String>,
        timeout: Duration,
        read: impl FnOnce(&Metadata) -> Result<T, BusError> + Send + 'static,
    ) -> Result<T, BusError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(topic.as_deref(), timeout)
                .map_err(unavailable)?;
            read(&md)
        })
        .await
        .map_err(unavailable)?
    }

    /// The names of the cluster's topics.
    async fn topic_names(&self) -> Result<std::collections::HashSet<String>, BusError> {
        self.with_metadata(None, Duration::from_secs(10), |md| {
            Ok(md.topics().iter().map(|t| t.name().to_owned()).collect())
        })
        .await
    }

    /// How many partitions `topic` has.
    pub async fn partition_count(&self, topic: &str) -> Result<u32, BusError> {
        let name = topic.to_owned();
        self.with_metadata(Some(name.clone()), Duration::from_secs(10), move |md| {
            let t = md
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .ok_or_else(|| BusError::Unavailable(format!("topic {name} is missing")))?;
            if let Some(e) = t.error() {
                return Err(BusError::Unavailable(format!(
                    "topic {name}: {}",
                    RDKafkaErrorCode::from(e)
                )));
            }
            match u32::try_from(t.partitions().len()) {
                Ok(0) | Err(_) => Err(BusError::Unavailable(format!(
                    "topic {name} has no partitions"
                ))),
                Ok(n) => Ok(n),
            }
        })
        .await
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    fn backend(&self) -> &'static str {
        "kafka"
    }

    /// A metadata request to the cluster, answered within two seconds.
    async fn ping(&self) -> Result<(), BusError> {
        self.with_metadata(None, Duration::from_secs(2), |_| Ok(()))
            .await
            .map_err(|e| BusError::Unavailable(format!("no broker answers: {e}")))
    }

    async fn publish(&self, topic: &str, key: &str, envelope: &Envelope) -> Result<(), BusError> {
        self.publish_with_headers(topic, key, envelope, &[]).await
    }

    async fn publish_with_headers(
        &self,
        topic: &str,
        key: &str,
        envelope: &Envelope,
        headers: &[(&str, String)],
    ) -> Result<(), BusError> {
        let payload = serde_json::to_vec(envelope).map_err(unavailable)?;
        let mut h = OwnedHeaders::new_with_capacity(headers.len() + 2);
        if let Some(tp) = &envelope.traceparent {
            h = h.insert(Header {
                key: "traceparent",
                value: Some(tp.as_str()),
            });
        }
        h = h.insert(Header {
            key: "cairn.event_type",
            value: Some(envelope.kind.as_str()),
        });
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(&payload)
            .headers(h);
        let deadline = self.settings.produce_timeout;
        // librdkafka fails the delivery after message.timeout.ms; the outer
        // timeout only guards against a lost callback.
        match tokio::time::timeout(
            deadline + Duration::from_secs(1),
            self.producer.send(record, deadline),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(BusError::Unavailable(format!(
                "the broker did not acknowledge the event: {e}"
            ))),
            Err(_) => Err(BusError::Unavailable(format!(
                "no acknowledgement from the broker within {deadline:?}"
            ))),
        }
    }

    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn BusConsumer>, BusError> {
        let partition_count = self.partition_count(topic).await?;
        let s = &self.settings;
        let (tx, rx) = watch::channel(Assignment {
            partitions: Vec::new(),
            partition_count,
        });
        let context = Rebalances {
            topic: topic.to_owned(),
            tx,
        };
        let session = s.session_timeout.as_millis().max(1000);
        let mut config = s.client_config();
        config
            .set("group.id", format!("{}{group}", s.group_prefix))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 4).max(100).to_string())
            .set(
                "fetch.max.bytes",
                s.max_message_bytes.max(52_428_800).to_string(),
            )
            .set("max.partition.fetch.bytes", s.max_message_bytes.to_string())
            .set("queued.max.messages.kbytes", "65536")
            // How long the broker may hold a fetch when there is nothing new.
            // Brokers that answer a fetch as soon as data arrives make this
            // irrelevant; others (tansu) add it to every hop.
            .set("fetch.wait.max.ms", "10");
        let consumer: BaseConsumer<Rebalances> = s
            .finish(&mut config)
            .create_with_context(context)
            .map_err(unavailable)?;
        consumer.subscribe(&[topic]).map_err(unavailable)?;
        let consumer = Arc::new(consumer);
        let (records_tx, records_rx) = mpsc::channel(BUFFER);
        let stop = Arc::new(AtomicBool::new(false));
        let (c, halt) = (consumer.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("kafka-{group}"))
            .spawn(move || poll(&c, &records_tx, &halt))
            .map_err(unavailable)?;
        Ok(Box::new(KafkaConsumer {
            consumer: Some(consumer),
            topic: topic.to_owned(),
            records: records_rx,
            assignment: rx,
            stop,
        }))
    }
}

/// Records buffered between the polling thread and the bridge.
const BUFFER: usize = 256;

/// How long one poll waits for a record when nothing is waiting to be handed over.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Keeps polling librdkafka (group membership, heartbeats, rebalances) and hands
/// decoded records over; pauses the assigned partitions while the bridge is
/// behind. Runs on its own thread until the consumer is dropped.
fn poll(
    consumer: &BaseConsumer<Rebalances>,
    tx: &mpsc::Sender<Result<BusRecord, BusError>>,
    stop: &AtomicBool,
) {
    let mut backlog: VecDeque<Result<BusRecord, BusError>> = VecDeque::new();
    let mut paused: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        while !backlog.is_empty() {
            match tx.try_reserve() {
                Ok(permit) => {
                    if let Some(r) = backlog.pop_front() {
                        permit.send(r);
                    }
                }
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => return,
            }
        }
        if tx.is_closed() {
            return;
        }
        if paused.is_some() && backlog.len() <= BUFFER / 4 {
            if let Ok(a) = consumer.assignment()
                && let Err(e) = consumer.resume(&a)
            {
                tracing::warn!(error = %e, "cannot resume partitions");
            }
            paused = None;
        }
        // While records wait for room, poll briefly so they are handed over soon.
        let wait = if backlog.is_empty() {
            IDLE_POLL
        } else {
            Duration::from_millis(5)
        };
        match consumer.poll(wait) {
            Some(Ok(msg)) => {
                backlog.push_back(decode(&msg));
                if backlog.len() >= BUFFER
                    && paused.is_none_or(|t| t.elapsed() > Duration::from_millis(100))
                {
                    if let Ok(a) = consumer.assignment()
                        && let Err(e) = consumer.pause(&a)
                    {
                        tracing::warn!(error = %e, "cannot pause partitions");
                    }
                    paused = Some(Instant::now());
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
            None => {}
        }
    }
}

fn decode(msg: &rdkafka::message::BorrowedMessage<'_>) -> Result<BusRecord, BusError> {
    let topic = msg.topic().to_owned();
    let partition = u32::try_from(msg.partition()).unwrap_or(0);
    let offset = u64::try_from(msg.offset()).unwrap_or(0);
    let key = msg
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let payload = msg.payload().unwrap_or_default();
    match schemas::decode(payload) {
        Ok(mut envelope) => {
            if envelope.traceparent.is_none() {
                envelope.traceparent = msg.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "traceparent")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
            }
            Ok(BusRecord {
                topic,
                partition,
                offset,
                key,
                envelope,
            })
        }
        Err(r) => Err(BusError::Undecodable {
            topic,
            partition,
            offset,
            key,
            class: r.class,
            reason: r.reason,
            payload: String::from_utf8_lossy(payload).into_owned(),
        }),
    }
}

/// One consumer of one topic within a group.
pub struct KafkaConsumer {
    /// Shared with the polling thread; `None` once dropped.
    consumer: Option<Arc<BaseConsumer<Rebalances>>>,
    topic: String,
    records: mpsc::Receiver<Result<BusRecord, BusError>>,
    /// The current assignment, kept by the rebalance callbacks.
    assignment: watch::Receiver<Assignment>,
    /// Tells the polling thread to stop.
    stop: Arc<AtomicBool>,
}

impl KafkaConsumer {
    /// False for records buffered before their partition was revoked: they belong
    /// to the next owner, who reads them from the committed offset.
    fn keeps(&self, r: &Result<BusRecord, BusError>) -> bool {
        match r {
            Ok(rec) => self.owns(rec.partition),
            Err(BusError::Undecodable { partition, .. }) => self.owns(*partition),
            Err(_) => true,
        }
    }

    fn owns(&self, partition: u32) -> bool {
        self.assignment.borrow().partitions.contains(&partition)
    }
}

impl Drop for KafkaConsumer {
    /// Stops the polling thread. Closing a librdkafka consumer leaves the group
    /// and commits the stored offsets, which blocks (for long when the broker is
    /// away): it happens on a thread of its own, never on an async worker.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.consumer.take() {
            match std::thread::Builder::new()
                .name("kafka-close".into())
                .spawn(move || drop(c))
            {
                Ok(t) => CLOSING
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(t),
                Err(e) => tracing::warn!(error = %e, "cannot start a thread to close a consumer"),
            }
        }
    }
}

/// Consumers closing (leaving their group, committing offsets) on their threads.
static CLOSING: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Waits until every dropped consumer has closed, or `deadline` passes; true
/// when all have. A graceful shutdown calls it so that offsets are committed
/// before the process exits.
pub async fn wait_closed(deadline: Instant) -> bool {
    loop {
        let open = {
            let mut closing = CLOSING
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            closing.retain(|t| !t.is_finished());
            closing.len()
        };
        if open == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                consumers = open,
                "Kafka consumers still closing at the deadline"
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[async_trait]
impl BusConsumer for KafkaConsumer {
    async fn next(&mut self) -> Result<BusRecord, BusError> {
        loop {
            let r = self.records.recv().await.ok_or(BusError::Closed)?;
            if self.keeps(&r) {
                return r;
            }
        }
    }

    async fn commit(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        let p = i32::try_from(partition).map_err(unavailable)?;
        let o = i64::try_from(offset).map_err(unavailable)?;
        let Some(consumer) = &self.consumer else {
            return Err(BusError::Closed);
        };
        match consumer.store_offset(&self.topic, p, o) {
            Ok(()) => Ok(()),
            // Revoked meanwhile: the next owner redelivers and dedups.
            Err(_) if !self.owns(partition) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    fn assignment(&self) -> Option<watch::Receiver<Assignment>> {
        Some(self.assignment.clone())
    }
}

/// Tracks the assignment and commits stored offsets before partitions are revoked.
struct Rebalances {
    topic: String,
    /// The assignment (ascending partitions), changed in place on every rebalance.
    tx: watch::Sender<Assignment>,
}

impl Rebalances {
    fn update(&self, tpl: &TopicPartitionList, add: bool) {
        self.tx.send_modify(|a| {
            for e in tpl.elements_for_topic(&self.topic) {
                let Ok(p) = u32::try_from(e.partition()) else {
                    continue;
                };
                match (a.partitions.binary_search(&p), add) {
                    (Err(i), true) => a.partitions.insert(i, p),
                    (Ok(i), false) => {
                        a.partitions.remove(i);
                    }
                    _ => {}
                }
            }
            tracing::info!(topic = %self.topic, partitions = ?a.partitions, "kafka assignment changed");
        });
    }
}

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.update(tpl, false);
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!(error = %e, "cannot commit offsets on revoke"),
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.update(tpl, true);
        }
    }
}
