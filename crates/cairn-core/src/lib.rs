//! The heart of Cairn: domain types, the ports (traits) every adapter implements,
//! and the configuration types. It depends on no adapter.
//!
//! Module map:
//! - [`alerts`]: alerts on the `alerts` topic and the label matchers of routes and silences.
//! - [`alerts_config`]: the `[alerts]` section of the configuration.
//! - [`approvals`]: `[approvals]` rules (tool calls that wait for a human) and
//!   the approval a paused turn keeps in its checkpoint.
//! - [`desk`]: tickets, feedback, the analytics events and counter updates.
//! - [`desk_config`]: `[tickets]`, `[analytics]`, `[[agents]]` and `[routing]`.
//! - [`insights`]: the analysis of a message, a conversation's insights, PII
//!   redaction and pseudonyms.
//! - [`insights_config`]: the `[insights]` section of the configuration.
//! - [`ids`]: typed identifiers (tenant, user, conversation, turn, message).
//! - [`domain`]: conversations, messages, turns, checkpoints and the events a turn emits.
//! - [`gateway_config`]: `[rate_limits]`, `[budgets]`, `[metrics]` and `[cors]`.
//! - [`envelope`]: the versioned JSON envelope every bus event travels in.
//! - [`schemas`]: the JSON Schemas of the envelope and of every event type
//!   (`schemas/` at the repository root), checked on consume by every bus adapter.
//! - [`ports`]: the traits adapters implement — [`ports::MemoryStore`],
//!   [`ports::EventStream`], [`ports::EventBus`], [`ports::ChatModel`], [`ports::Tool`],
//!   [`ports::RecordStore`], [`ports::RateLimiter`], [`ports::TokenBudget`].
//! - [`schedules`]: `[schedules]` and scheduled turns (cron or one time, in a
//!   time zone) with per-fire-time ids.
//! - [`signals`]: what the actors report for Cairn's own alert rules.
//! - [`config`]: the one configuration struct, loaded from TOML plus `CAIRN_…`
//!   environment overrides, validated with errors that name the offending key.

pub mod alerts;
pub mod alerts_config;
pub mod approvals;
pub mod config;
pub mod desk;
pub mod desk_config;
pub mod domain;
pub mod envelope;
pub mod gateway_config;
pub mod ids;
pub mod insights;
pub mod insights_config;
pub mod ports;
pub mod schedules;
pub mod schemas;
pub mod signals;

pub use domain::*;
pub use ids::*;
