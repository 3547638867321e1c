//! The alert pipeline: alerts from the `alerts` topic are routed, grouped,
//! silenced or inhibited, and notified to Slack, signed webhooks or PagerDuty,
//! with retries and a notification log. State lives in the
//! [`RecordStore`](cairn_core::ports::RecordStore) (Redis or embedded), so a
//! restart or a takeover by another replica continues where it stopped.
//!
//! How the modules fit:
//! - [`routing`]: the route tree and inhibition rules compiled from `[alerts]`.
//! - [`engine`]: the state machine (grouping, deduplication against what each
//!   receiver was told, timing); no I/O.
//! - [`records`]: what is stored and the reads the API makes.
//! - [`notify`]: the receivers' wire formats (Slack Block Kit, Alertmanager
//!   webhook JSON signed per Standard Webhooks, PagerDuty Events v2) and the
//!   retrying delivery.
//! - [`actor`]: the AlertActor (ractor) that drives the engine with the clock,
//!   writes its changes, and sends notifications only once they are recorded.
//! - [`escalate`]: the agent's built-in `escalate` tool.
//! - [`rules`]: Cairn's own conditions (breakers, DLQ, failure rates, crash
//!   loops) turned into firing and resolved alerts.

pub mod actor;
pub mod engine;
pub mod escalate;
pub mod notify;
pub mod records;
pub mod routing;
pub mod rules;

pub use actor::{AlertActor, AlertDeps, AlertMsg, Clock};
pub use engine::{Engine, Settings};
pub use records::AlertLog;
