//! Cairn's supervision tree (ractor) and the bus bridges that feed it.
//!
//! Module map:
//! - [`settings`]: the agent settings and the dependencies every actor shares
//!   ([`AgentDeps`]: memory, event stream, model, tool catalog).
//! - [`catalog`]: the tools offered to agents ([`ToolCatalog`]).
//! - [`memory`]: the context a turn starts from — rolling summary plus a bounded
//!   window of recent messages — and the incremental summariser.
//! - [`turn`]: one turn of the ReAct loop, checkpointed after every step; with
//!   `[[agents]]` profiles it routes by intent and honours `handoff`.
//! - [`approval`]: the gate in front of each tool call: a call matching an
//!   `[approvals]` rule waits (checkpointed) for a person's decision.
//! - [`cancel`]: cancelling a running turn (`turn.cancel_requested` →
//!   `turn.cancelled`), with every open tool call closed by a synthetic result.
//! - [`conversation`]: `ConversationActor`, one per live conversation; it
//!   serialises turns and runs each in a task so its mailbox stays responsive,
//!   holds the conversation's writer lease (fencing token on every turn write)
//!   and republishes its events on `conversation_events`.
//! - [`supervisor`]: `ConversationSupervisor`: registry, spawn on demand,
//!   passivation of idle actors, respawn after a crash; on Kafka it adopts and
//!   releases conversations as `reasoning_tasks` partitions move between replicas.
//! - [`bridge`]: the bus consumers: the router (`user_events` → `reasoning_tasks`)
//!   and the conversation bridge (`reasoning_tasks` → actors), at-least-once with
//!   ordered offset commits, event-id dedup and a DLQ.
//! - [`ingestion`]: the parse-and-chunk actor and the embedding worker pool (a
//!   ractor factory) that turn `ingestion_events` into stored chunks, with job
//!   status in the DocumentStore.
//! - [`insights`]: `InsightsActor`, which analyses every user and support
//!   message off the turn's path and keeps each conversation's insights.
//! - [`desk`]: the ticket enricher (`tickets` → enriched tickets, risk alerts)
//!   and the analytics consumer (bus events → counters).
//! - [`metered`]: Prometheus metrics of turns, steps, model and tool calls.
//! - [`webhook`]: turn webhooks: the outcome of a turn whose message named a
//!   `webhook`, published on the bus and delivered signed, with retries.
//! - [`trace`]: OpenTelemetry spans of turns, model calls and tool calls.
//! - [`lifecycle`]: whether the process is draining and how many turns run,
//!   which a graceful shutdown waits on.
//! - [`runtime`]: starts and stops all of the above (draining turns first); the
//!   API's entry point.

pub mod approval;
pub mod bridge;
pub mod cancel;
pub mod catalog;
pub mod conversation;
pub mod desk;
pub mod ingestion;
pub mod insights;
pub mod lifecycle;
pub mod memory;
pub mod metered;
pub mod runtime;
pub mod settings;
pub mod supervisor;
pub mod trace;
pub mod turn;
pub mod webhook;

pub use catalog::{ToolCatalog, ToolProvider};
pub use runtime::Runtime;
pub use settings::{AgentDeps, AgentSettings, PiiGuard, Relay, Routing};
