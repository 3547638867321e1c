//! The support desk around the agent: pure logic, no I/O. The actors and the
//! API call it; the stores are `cairn-core` ports.
//!
//! - [`risk`]: the ticket risk formula (urgency, sentiment, history, PII).
//! - [`summary`]: the extractive ticket summary.
//! - [`routing`]: which agent profile answers a message (intent rules, handoff).
//! - [`analytics`]: bus events folded into counter updates (hour and day
//!   buckets), and the reports (`overview`, `intents`, `satisfaction`,
//!   `tickets`, feedback summary) read back from those counters.

pub mod analytics;
pub mod risk;
pub mod routing;
pub mod summary;
