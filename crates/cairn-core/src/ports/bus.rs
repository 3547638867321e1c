//! EventBus: durable, ordered topics between the API, the router and the actors.

use crate::envelope::Envelope;
use async_trait::async_trait;

/// A bus failure.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached or refused the write.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// A record could not be decoded.
    #[error("undecodable record at {topic}/{partition}@{offset}: {reason}")]
    Undecodable {
        /// Topic of the record.
        topic: String,
        /// Partition of the record.
        partition: u32,
        /// Offset of the record.
        offset: u64,
        /// Why it could not be decoded.
        reason: String,
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

    /// Writes an event; returns only once it is durable.
    async fn publish(&self, topic: &str, key: &str, envelope: &Envelope) -> Result<(), BusError>;

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
    /// Events emitted by conversations.
    pub conversation_events: String,
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
            dlq: t("dlq"),
        }
    }
}
