//! The heart of Cairn: domain types, the ports (traits) every adapter implements,
//! and the configuration types. It depends on no adapter.
//!
//! Module map:
//! - [`ids`]: typed identifiers (tenant, user, conversation, turn, message).
//! - [`domain`]: conversations, messages, turns, checkpoints and the events a turn emits.
//! - [`envelope`]: the versioned JSON envelope every bus event travels in.
//! - [`schemas`]: the JSON Schemas of the envelope and of every event type
//!   (`schemas/` at the repository root), checked on consume by every bus adapter.
//! - [`ports`]: the traits adapters implement — [`ports::MemoryStore`],
//!   [`ports::EventStream`], [`ports::EventBus`], [`ports::ChatModel`], [`ports::Tool`].
//! - [`config`]: the one configuration struct, loaded from TOML plus `CAIRN_…`
//!   environment overrides, validated with errors that name the offending key.

pub mod config;
pub mod domain;
pub mod envelope;
pub mod ids;
pub mod ports;
pub mod schemas;

pub use domain::*;
pub use ids::*;
