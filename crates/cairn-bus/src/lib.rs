//! Event bus adapters behind `cairn_core::ports::EventBus`.
//!
//! - [`embedded::EmbeddedBus`]: the default, an in-process log that is durable in
//!   the data dir (redb). A message the API acknowledged with 202 is on disk before
//!   the 202 leaves, so it survives a crash before its turn starts. `cairn serve`
//!   keeps it in the memory store's file (`EmbeddedBus::sharing`), so both join one
//!   group commit; `EmbeddedBus::adopt_file` moves in a log kept alone by older
//!   versions. One partition per topic; consumer groups keep committed offsets,
//!   stored at most once a second per consumer (like Kafka's auto-commit); records
//!   every known group has consumed are trimmed.
//!
//! - [`kafka::KafkaBus`]: Kafka through librdkafka, switched on by `kafka.brokers`:
//!   topics created at start-up, idempotent producer, at-least-once consumers
//!   that store offsets only after the work and follow partition assignment.
//!
//! - [`metered::MeteredBus`]: either of them with Prometheus metrics (records
//!   published, consumed and refused; consumer lag).
//!
//! Both decode records with `cairn_core::schemas::decode`, so a record failing its
//! schema is refused the same way on either bus.

pub mod embedded;
pub mod kafka;
pub mod metered;

pub use embedded::EmbeddedBus;
pub use kafka::{KafkaBus, KafkaSettings};
