//! EventBus: durable, ordered topics between the API, the router and the actors.

use crate::envelope::Envelope;
use crate::schemas::RejectClass;
use async_trait::async_trait;

/// A bus failure.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached or refused the write.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// A record could not be decoded or failed its schema ([`crate::schemas::decode`]).
    #[error("refused record at {topic}/{partition}@{offset}: {}: {reason}", class.as_str())]
    Undecodable {
        /// Topic of the record.
        topic: String,
        /// Partition of the record.
        partition: u32,
        /// Offset of the record.
        offset: u64,
        /// The record key.
        key: String,
        /// What kind of problem.
        class: RejectClass,
        /// Why it was refused.
        reason: String,
        /// The record's bytes (lossy UTF-8), for the DLQ.
        payload: String,
    },
    /// The consumer was closed.
    #[error("consumer closed")]
    Closed,
}

/// One record read from a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct BusRecord {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// The record key (conversation id for conversation traffic).
    pub key: String,
    /// The event.
    pub envelope: Envelope,
}

/// A durable, ordered, at-least-once event bus.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// A short name for `/health` (`embedded`, `kafka`).
    fn backend(&self) -> &'static str;

    /// Checks that the bus answers (for `/health` and `/ready`).
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Writes an event; returns only once it is durable.
    async fn publish(&self, topic: &str, key: &str, envelope: &Envelope) -> Result<(), BusError>;

    /// Like [`publish`](Self::publish), with record headers (the DLQ's
    /// provenance). Adapters without headers keep only the envelope.
    async fn publish_with_headers(
        &self,
        topic: &str,
        key: &str,
        envelope: &Envelope,
        headers: &[(&str, String)],
    ) -> Result<(), BusError> {
        let _ = headers;
        self.publish(topic, key, envelope).await
    }

    /// Joins consumer group `group` on `topic`. Reading starts after the group's
    /// last committed offset.
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn BusConsumer>, BusError>;
}

/// A consumer of one topic within a group.
#[async_trait]
pub trait BusConsumer: Send {
    /// The next record; waits until one is available.
    async fn next(&mut self) -> Result<BusRecord, BusError>;

    /// Marks every record up to and including `offset` of `partition` as done.
    /// Call it only after the work (or the DLQ write) is durable.
    async fn commit(&mut self, partition: u32, offset: u64) -> Result<(), BusError>;

    /// The partitions this consumer owns, updated on every rebalance; `None` when
    /// the adapter has no rebalances (the embedded bus: one process owns all).
    fn assignment(&self) -> Option<tokio::sync::watch::Receiver<Assignment>> {
        None
    }
}

/// The partitions of a topic assigned to one consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Owned partitions, ascending.
    pub partitions: Vec<u32>,
    /// How many partitions the topic has.
    pub partition_count: u32,
}

/// The partition Kafka's default (Java, murmur2) partitioner picks for `key`
/// among `partitions`; Cairn's Kafka producer uses the same, so a replica can tell
/// which conversations its partitions own.
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions.max(1)
}

/// Kafka's murmur2 (seed 0x9747b28c), as in `org.apache.kafka.common.utils.Utils`.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if let Some(b) = rest.first() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// Topic names under a configurable prefix (DESIGN.md's seed names).
#[derive(Debug, Clone)]
pub struct Topics {
    /// User messages and documents as accepted by the API.
    pub user_events: String,
    /// User messages routed to the conversation actors.
    pub reasoning_tasks: String,
    /// Documents routed to ingestion.
    pub ingestion_events: String,
    /// Alerts raised for the alert actor.
    pub alerts: String,
    /// Events emitted by conversations (and the desk's analytics events).
    pub conversation_events: String,
    /// Ticket submissions and enrichments.
    pub tickets: String,
    /// Records that failed permanently.
    pub dlq: String,
}

impl Topics {
    /// The topic names with `prefix` in front.
    pub fn with_prefix(prefix: &str) -> Self {
        let t = |n: &str| format!("{prefix}{n}");
        Self {
            user_events: t("user_events"),
            reasoning_tasks: t("reasoning_tasks"),
            ingestion_events: t("ingestion_events"),
            alerts: t("alerts"),
            conversation_events: t("conversation_events"),
            tickets: t("tickets"),
            dlq: t("dlq"),
        }
    }

    /// Every topic name.
    pub fn all(&self) -> [&String; 7] {
        [
            &self.tickets,
            &self.user_events,
            &self.reasoning_tasks,
            &self.ingestion_events,
            &self.alerts,
            &self.conversation_events,
            &self.dlq,
        ]
    }
}
