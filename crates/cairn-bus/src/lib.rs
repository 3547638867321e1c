//! Event bus adapters behind `cairn_core::ports::EventBus`.
//!
//! - [`embedded::EmbeddedBus`]: the default, an in-process log that is durable in
//!   the data dir (redb). A message the API acknowledged with 202 is on disk before
//!   the 202 leaves, so it survives a crash before its turn starts. One partition
//!   per topic; consumer groups keep committed offsets; records every known group
//!   has consumed are trimmed.
//!
//! The Kafka adapter arrives behind the same port.

pub mod embedded;

pub use embedded::EmbeddedBus;
